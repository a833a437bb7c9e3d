//! The `floodgate` command: run, check, demo.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "floodgate",
    version,
    about = "A programmable edge gateway: routing, admission queues, health checks, caching, Lua policies"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway with a config file.
    Run {
        /// The YAML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and everything it references (maps, scripts, certificates);
    /// print every error and exit non-zero when there is one.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start a bundled app-server simulator and the gateway on conf/demo.yaml.
    Demo {
        /// The demo config (its upstream servers are started by the demo).
        #[arg(short, long, default_value = "conf/demo.yaml")]
        config: PathBuf,
    },
    /// Run a simulated app server (benchmarks): C worker slots whose service time grows when
    /// more than C requests are inside.
    #[command(hide = true)]
    SimOrigin {
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
    },
    /// Run a registration storm against a target (benchmarks).
    #[command(hide = true)]
    SimStorm {
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
    },
    /// Run a bare Pingora reverse proxy to one upstream (benchmarks: the framework baseline).
    #[command(hide = true)]
    SimBareProxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn init_logging() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_core=warn,pingora_proxy=warn"),
    )
    .format_timestamp_millis()
    .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.cmd {
        Cmd::Check { config } => match floodgate::app::check(&config) {
            Ok(cfg) => {
                println!(
                    "{}: OK ({} listeners, {} upstreams, {} routes, {} maps)",
                    config.display(),
                    cfg.listeners.len(),
                    cfg.upstreams.len(),
                    cfg.routes.len(),
                    cfg.maps.len()
                );
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
                eprintln!("{} error(s) in {}", errs.0.len(), config.display());
                ExitCode::from(1)
            }
        },
        Cmd::Run { config } => run(&config),
        Cmd::SimOrigin {
            listen,
            slots,
            base_ms,
            render_ms,
            collapse,
        } => {
            sim(async move {
                use floodgate::sim::origin::{start_origin_at, OriginConfig};
                use std::time::Duration;
                let cfg = OriginConfig {
                    name: "app".into(),
                    slots,
                    base_service: Duration::from_millis(base_ms),
                    render_time: Duration::from_millis(render_ms),
                    collapse,
                    ..OriginConfig::default()
                };
                let h = start_origin_at(cfg, listen)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .map_err(|e| e.to_string())?;
                tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
                let st = h.stats();
                eprintln!(
                    "origin: requests={} renders={} max_concurrent={} served_for_gone={}",
                    st.requests, st.renders, st.max_concurrent, st.served_for_gone
                );
                println!("{{\"requests\":{},\"renders\":{},\"max_concurrent\":{},\"served_for_gone\":{}}}", st.requests, st.renders, st.max_concurrent, st.served_for_gone);
                h.shutdown().await;
                Ok(())
            })
        }
        Cmd::SimStorm {
            target,
            hosts,
            deadline_s,
            ramp_s,
            json,
        } => sim(async move {
            use floodgate::sim::storm::{run_storm, StormConfig};
            use std::time::Duration;
            let mut cfg = StormConfig::new(target);
            cfg.hosts = hosts;
            cfg.deadline = Duration::from_secs_f64(deadline_s);
            cfg.per_request_timeout = cfg.deadline;
            cfg.ramp = Duration::from_secs_f64(ramp_s);
            let report = run_storm(cfg).await;
            if json {
                println!("{}", report.to_json())
            } else {
                println!("{report}")
            }
            Ok(())
        }),
        Cmd::SimBareProxy {
            listen,
            upstream,
            threads,
        } => match floodgate::sim::bare::run_bare_proxy(&listen, &upstream, threads) {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("sim-bare-proxy: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Demo { config } => {
            if let Err(e) = floodgate::sim::demo::start_demo_origins(&config) {
                eprintln!("demo: {e}");
                return ExitCode::from(1);
            }
            run(&config)
        }
    }
}

fn sim(f: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
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
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(config: &std::path::Path) -> ExitCode {
    let state = match floodgate::app::prepare(config) {
        Ok(s) => s,
        Err(errs) => {
            eprintln!("{errs}");
            eprintln!(
                "refusing to start: {} error(s) in {}",
                errs.0.len(),
                config.display()
            );
            return ExitCode::from(1);
        }
    };
    match floodgate::app::run(state, None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floodgate: {e}");
            ExitCode::from(1)
        }
    }
}
