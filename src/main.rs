//! The `floodgate` command: run, check.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (value 15 in the mimalloc 3.3 that libmimalloc-sys
/// 0.1.49 builds by default; `mimalloc.h`'s `mi_option_e`).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// How long freed memory is kept before it is returned to the OS, in milliseconds.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

extern "C" {
    // why: libmimalloc-sys declares it only with its `extended` feature; the symbol is in
    // the mimalloc library that the global allocator links anyway.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Returns freed memory to the OS after 10 ms instead of mimalloc's default 1 s, which kept
/// the peak of large answers (1 MiB bodies in flight) resident; an operator's own
/// `MIMALLOC_PURGE_DELAY` (or its older name `MIMALLOC_RESET_DELAY`) wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
        || std::env::var_os("MIMALLOC_RESET_DELAY").is_some()
    {
        return;
    }
    // SAFETY: `mi_option_set` only stores an integer option; it is called before any thread
    // other than main exists.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

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
    /// Convert an HAProxy or Apache config to a floodgate config: print it (or write it to
    /// `-o`), list what could not be converted or was approximated (with source lines), then
    /// run `check` on the result.
    Convert {
        /// The input's kind.
        #[arg(value_enum)]
        from: From,
        /// haproxy.cfg, or an Apache config / vhost file.
        file: PathBuf,
        /// Write the floodgate config here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum From {
    Haproxy,
    Apache,
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    floodgate::logging::init();
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
        Cmd::Convert { from, file, output } => convert(from, &file, output.as_deref()),
    }
}

fn convert(from: From, file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    use floodgate::convert::NoteKind;
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("floodgate convert: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let source = file.display().to_string();
    let done = match from {
        From::Haproxy => floodgate::convert::haproxy::convert(&text, &source),
        From::Apache => floodgate::convert::apache::convert(&text, &source),
    };
    // The check needs the config in a file; relative paths in it are relative to the input's
    // folder, as they were for the input.
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let temp = dir.join(format!(".floodgate-convert-{}.yaml", std::process::id()));
    let target = output.unwrap_or(&temp);
    if let Err(e) = std::fs::write(target, &done.yaml) {
        eprintln!("floodgate convert: cannot write {}: {e}", target.display());
        return ExitCode::from(2);
    }
    if output.is_none() {
        print!("{}", done.yaml);
    }
    eprintln!(
        "{} line(s) not converted, {} approximated:",
        done.count(NoteKind::NotConverted),
        done.count(NoteKind::Approximated)
    );
    for n in &done.notes {
        eprintln!("  {}:{n}", file.display());
    }
    let checked = floodgate::app::check(target);
    if output.is_none() {
        let _ = std::fs::remove_file(&temp);
    }
    match checked {
        Ok(_) => {
            eprintln!("check: OK");
            ExitCode::SUCCESS
        }
        Err(errs) => {
            eprintln!(
                "check: {} error(s) in the converted config:\n{errs}",
                errs.0.len()
            );
            ExitCode::from(1)
        }
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
