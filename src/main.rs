//! The `floodgate` command: run, check.

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
        /// Take the listening sockets over from the running gateway instead of binding them
        /// (graceful upgrade): start this, then send the running one SIGQUIT within 5 s. The
        /// path is `server.upgrade_sock` of the config.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config file and everything it references (maps, scripts, certificates);
    /// print every error and exit non-zero when there is one.
    Check {
        #[arg(short, long)]
        config: PathBuf,
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
        Cmd::Run { config, upgrade } => run(&config, upgrade),
    }
}

fn run(config: &std::path::Path, upgrade: bool) -> ExitCode {
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
    if upgrade {
        log::info!(
            "upgrade: waiting for the running gateway's sockets on {} (send it SIGQUIT)",
            state.snapshot().config.server.upgrade_sock
        );
    } else if let Err(m) = floodgate::app::check_binds(&state.snapshot().config) {
        eprintln!("refusing to start: {m}");
        return ExitCode::from(1);
    }
    match floodgate::app::run_with(state, None, upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floodgate: {e}");
            ExitCode::from(1)
        }
    }
}
