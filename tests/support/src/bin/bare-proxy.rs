//! `bare-proxy`: a bare Pingora reverse proxy to one upstream (the framework's cost floor in
//! `benches/proxy.sh`).

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    upstream: String,
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let a = Args::parse();
    match floodgate_testkit::bare::run_bare_proxy(&a.listen, &a.upstream, a.threads) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("bare-proxy: {e}");
            ExitCode::from(1)
        }
    }
}
