//! The bundled demo (`cargo run --example demo [-- -c conf/demo.yaml]`): starts simulated app
//! servers at the addresses the demo config names, prints what to try, then runs the real
//! gateway on that config in this process (Ctrl-C stops it).

use floodgate_testkit::origin::{start_origin_at, OriginConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config = PathBuf::from("conf/demo.yaml");
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" | "--config" => match args.next() {
                Some(p) => config = PathBuf::from(p),
                None => {
                    eprintln!("demo: -c needs a config file");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("demo: unknown argument {other:?}; usage: demo [-c conf/demo.yaml]");
                return ExitCode::from(2);
            }
        }
    }
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_core=warn,pingora_proxy=warn"),
    )
    .format_timestamp_millis()
    .init();
    if let Err(e) = start_demo_origins(&config) {
        eprintln!("demo: {e}");
        return ExitCode::from(1);
    }
    let state = match floodgate::app::prepare(&config) {
        Ok(s) => s,
        Err(errs) => {
            eprintln!("{errs}");
            return ExitCode::from(1);
        }
    };
    match floodgate::app::run(state, None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// Starts one simulated app server for every upstream server of the demo config, on a
/// background thread, and prints what to try.
fn start_demo_origins(config: &Path) -> Result<(), String> {
    let cfg = floodgate::config::load_config(config).map_err(|e| e.to_string())?;
    let mut addrs = Vec::new();
    for u in cfg.upstreams.values() {
        for s in &u.servers {
            // why: the demo simulates TCP app servers; a socket server is left to the user.
            if let floodgate::config::ServerAddr::Inet(a) = s.addr {
                addrs.push((s.name.clone(), a));
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let mut handles = Vec::new();
            for (name, addr) in addrs {
                let oc = OriginConfig {
                    name: name.clone(),
                    slots: 4,
                    base_service: Duration::from_millis(20),
                    ..OriginConfig::default()
                };
                match start_origin_at(oc, addr).await {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        let _ = tx.send(Err(format!(
                            "cannot start the simulated server {name} on {addr}: {e}"
                        )));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(()));
            std::future::pending::<()>().await;
            drop(handles);
        });
    });
    rx.recv().map_err(|e| e.to_string())??;
    let listen = cfg
        .listeners
        .first()
        .map(|l| l.bind.clone())
        .unwrap_or_default();
    let admin = cfg.admin.bind.clone();
    println!(
        "floodgate demo: simulated app servers are up; the gateway listens on http://{listen}, admin on http://{admin}\n\
         Try:\n  \
         curl -i 'http://{listen}/register?activation_keys=ak1&location_id=2'  # MISS, then HIT (cached, single-flight)\n  \
         curl -i http://{listen}/register/health                                # 200 while an app server is healthy\n  \
         curl -i -X POST http://{listen}/rhsm/consumers -d '{{}}'                # queued behind max_inflight, priority 1\n  \
         curl -i -H 'X-Node-Name: node1.example.com' http://{listen}/echo        # routed through the node map\n  \
         for i in $(seq 200); do curl -s -o /dev/null -w '%{{http_code}}\\n' 'http://{listen}/slow?ms=500' & done | sort | uniq -c   # queueing and 503s\n  \
         curl -s http://{admin}/metrics | grep floodgate_                        # metrics\n  \
         curl -s http://{admin}/status                                          # live state\n"
    );
    Ok(())
}
