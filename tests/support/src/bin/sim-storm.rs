//! `sim-storm`: runs a registration storm against a target and prints the report.

use clap::Parser;
use floodgate_testkit::storm::{run_storm, StormConfig};
use std::process::ExitCode;
use std::time::Duration;

/// A registration storm: N hosts run the subscription-manager flow against a target.
#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: std::net::SocketAddr,
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    #[arg(long, default_value_t = 180.0)]
    deadline_s: f64,
    #[arg(long, default_value_t = 0.0)]
    ramp_s: f64,
    #[arg(long)]
    json: bool,
    /// Write one line per host (`host<TAB>passed 0|1<TAB>unix_ms it finished or gave up`).
    #[arg(long)]
    outcomes: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let report = rt.block_on(async move {
        let mut cfg = StormConfig::new(a.target);
        cfg.hosts = a.hosts;
        cfg.deadline = Duration::from_secs_f64(a.deadline_s);
        cfg.per_request_timeout = cfg.deadline;
        cfg.ramp = Duration::from_secs_f64(a.ramp_s);
        run_storm(cfg).await
    });
    if let Some(path) = &a.outcomes {
        let out: String = report
            .outcomes
            .iter()
            .map(|(h, ok, ms)| format!("{h}\t{}\t{ms}\n", u8::from(*ok)))
            .collect();
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("sim-storm: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if a.json {
        println!("{}", report.to_json())
    } else {
        println!("{report}")
    }
    ExitCode::SUCCESS
}
