//! `sim-origin`: one simulated app server (benchmarks). Stops on SIGTERM or SIGINT and
//! prints its counters as one JSON line.

use clap::Parser;
use floodgate_testkit::origin::{start_origin_at, OriginConfig};
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A simulated app server: C worker slots whose service time grows when more than C requests
/// are inside.
#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 8)]
    slots: usize,
    #[arg(long, default_value_t = 20)]
    base_ms: u64,
    #[arg(long, default_value_t = 100)]
    render_ms: u64,
    #[arg(long, default_value_t = 1.0)]
    collapse: f64,
    /// Base service time of `POST /rhsm/consumers` (default: --base-ms).
    #[arg(long)]
    consumer_ms: Option<u64>,
    /// Spread of the consumer time (0.5 = ±50%).
    #[arg(long, default_value_t = 0.0)]
    jitter: f64,
    /// Write one line per finished app request (`host<TAB>path<TAB>unix_ms`) here on exit.
    #[arg(long)]
    completions: Option<std::path::PathBuf>,
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
    let r: Result<(), String> = rt.block_on(async move {
        let cfg = OriginConfig {
            name: "app".into(),
            slots: a.slots,
            base_service: Duration::from_millis(a.base_ms),
            render_time: Duration::from_millis(a.render_ms),
            collapse: a.collapse,
            consumer_time: a.consumer_ms.map(Duration::from_millis),
            consumer_jitter: a.jitter,
            record_completions: a.completions.is_some(),
            ..OriginConfig::default()
        };
        let h = start_origin_at(cfg, a.listen)
            .await
            .map_err(|e| e.to_string())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        let st = h.stats();
        eprintln!(
            "origin: requests={} renders={} max_concurrent={} served_for_gone={}",
            st.requests, st.renders, st.max_concurrent, st.served_for_gone
        );
        println!(
            "{{\"requests\":{},\"renders\":{},\"max_concurrent\":{},\"served_for_gone\":{}}}",
            st.requests, st.renders, st.max_concurrent, st.served_for_gone
        );
        if let Some(path) = &a.completions {
            let mut out = String::new();
            for c in h.completions() {
                let host = c.host.map_or("-".to_string(), |h| h.to_string());
                out.push_str(&format!(
                    "{host}\t{}\t{}\t{}\n",
                    c.path, c.finished_ms, c.inside_us
                ));
            }
            std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        h.shutdown().await;
        Ok(())
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sim-origin: {e}");
            ExitCode::from(1)
        }
    }
}
