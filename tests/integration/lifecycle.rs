//! Lifecycle promises (issue 13): a drain that stops accepting after `pre_drain` and ends as
//! soon as nothing is in flight, losing nothing; a graceful upgrade (`run --upgrade` +
//! SIGQUIT, or SIGUSR2) and a SIGHUP reload through which a request stream fails zero times.
//! The upgrade needs two processes, so it runs the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use floodgate::lifecycle::Phase;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a request stream saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Answered, but not 200.
    bad_status: AtomicU64,
    /// Refused at connect: the listeners had stopped (expected at the end of a stop).
    refused: AtomicU64,
    /// Lost after the connection was made: reset, cut or timed out.
    lost: AtomicU64,
    /// Responses carrying `Connection: close`.
    closing: AtomicU64,
}

impl Tally {
    fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

/// One client looping `GET url` until `stop` is set, or (with `until_refused`) until a
/// connection is refused.
fn stream(
    url: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    until_refused: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        while !stop.load(Ordering::SeqCst) {
            match c.get(&url).send().await {
                Ok(r) => {
                    if r.headers()
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
                    {
                        tally.closing.fetch_add(1, Ordering::SeqCst);
                    }
                    let status = r.status();
                    match r.bytes().await {
                        Ok(_) if status == 200 => tally.ok.fetch_add(1, Ordering::SeqCst),
                        Ok(_) => tally.bad_status.fetch_add(1, Ordering::SeqCst),
                        Err(_) => tally.lost.fetch_add(1, Ordering::SeqCst),
                    };
                }
                Err(e) if e.is_connect() => {
                    tally.refused.fetch_add(1, Ordering::SeqCst);
                    if until_refused {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    eprintln!("request lost: {e:?}");
                    tally.lost.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_accepting_after_pre_drain_and_ends_when_nothing_is_in_flight() {
    let a = origin("a").await;
    let gw = TestGateway::start(
        &r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  a: { servers: [{ addr: "A" }] }
routes: [{ name: all, upstream: a }]
shutdown: { pre_drain: 300ms, drain: 20s }
"#
        .replace("A", &a.addr().to_string()),
    )
    .await;
    let c = client();
    // A long request in flight when the stop begins, and a steady stream beside it.
    let long = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow?ms=1500"));
        async move {
            let r = c.get(url).send().await.map_err(|e| e.to_string())?;
            let s = r.status().as_u16();
            r.text().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((s, Instant::now()))
        }
    });
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..4)
        .map(|_| stream(gw.url("/slow?ms=40"), tally.clone(), stop.clone(), true))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().current_concurrent >= 2 && tally.get(&tally.ok) >= 4
        })
        .await,
        "the long request and the stream are flowing"
    );

    let mut phase = gw.state.phase.subscribe();
    let signalled = Instant::now();
    gw.signal(Stop::Graceful);
    tokio::time::timeout(
        Duration::from_secs(5),
        phase.wait_for(|p| *p == Phase::Closing),
    )
    .await
    .expect("the drain reaches Closing")
    .unwrap();
    let closing_after = signalled.elapsed();
    assert!(
        closing_after >= Duration::from_millis(290),
        "the listeners keep accepting for pre_drain (closed after {closing_after:?})"
    );
    let served_in_pre_drain = tally.get(&tally.ok);
    // The listeners stop while the long request is still in flight.
    let addr = gw.addr();
    assert!(
        eventually(Duration::from_secs(2), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "new connections are refused once the listeners stopped"
    );
    assert!(
        !long.is_finished(),
        "the listeners stopped before the long request ended"
    );

    let ended = tokio::task::spawn_blocking(move || {
        gw.join();
        Instant::now()
    })
    .await
    .unwrap();
    let (status, long_done) = long
        .await
        .unwrap()
        .expect("the long in-flight request is not cut by the drain");
    for s in streams {
        tokio::time::timeout(Duration::from_secs(5), s)
            .await
            .expect("every stream ends at a refused connect")
            .unwrap();
    }
    let took = ended - signalled;
    let after_last = ended.saturating_duration_since(long_done);
    eprintln!(
        "drain: closed after {closing_after:?}, ended {took:?} after the signal, {after_last:?} after the last request; stream ok {} (before close {served_in_pre_drain}), connection-close answers {}, refused {}, lost {}",
        tally.get(&tally.ok), tally.get(&tally.closing), tally.get(&tally.refused), tally.get(&tally.lost)
    );
    assert_eq!(status, 200, "the long request completes");
    assert_eq!(
        tally.get(&tally.lost),
        0,
        "no request of the stream was lost"
    );
    assert_eq!(tally.get(&tally.bad_status), 0, "every answer was a 200");
    assert!(
        tally.get(&tally.closing) >= 1,
        "answers after the listeners stopped say Connection: close"
    );
    assert!(
        after_last < Duration::from_secs(2),
        "the process ends soon after the last request ({after_last:?}), not at the 20 s drain limit"
    );
}

// ---------------------------------------------------------------------------------------
// The real binary: upgrade and reload under a request stream.

/// A floodgate process, killed by PID if the test ends before it exits.
struct Proc {
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn start(config: &std::path::Path, extra: &[&str], log: std::path::PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .args(["run", "-c"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info,access=off")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("floodgate starts");
        Proc { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (polling, off the runtime's threads) for the exit; its status code.
    async fn exited_within(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s.code().unwrap_or(-1));
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes `yaml` as `dir`'s floodgate.yaml; its path.
fn write_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let config = dir.join("floodgate.yaml");
    std::fs::write(&config, yaml).unwrap();
    config
}

fn kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

async fn status_of(admin: u16) -> Option<serde_json::Value> {
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/status"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

async fn ready(admin: u16) -> bool {
    match client()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
    {
        Ok(r) => r.status() == 200,
        Err(_) => false,
    }
}

/// The PID that answers `/status` on `admin`, once it is `pid_not` (a new process).
async fn answering_pid(admin: u16, pid_not: u32, within: Duration) -> Option<u64> {
    let end = Instant::now() + within;
    loop {
        if let Some(s) = status_of(admin).await {
            if let Some(p) = s["pid"].as_u64() {
                if p != u64::from(pid_not) {
                    return Some(p);
                }
            }
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills a process that is not our child (the successor started by SIGUSR2) by PID if the
/// test ends while it runs.
struct PidGuard(u64);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if pid_alive(self.0) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.0.to_string())
                .status();
        }
    }
}

fn pid_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_reload_under_a_request_stream_fail_zero_requests() {
    let a = origin("a").await;
    let dir = temp_dir("upgrade");
    let (port, admin) = (free_port(), free_port());
    let sock = dir.join("upgrade.sock");
    let config = write_config(
        &dir,
        &format!(
            "listeners: [{{ bind: \"127.0.0.1:{port}\" }}]\nadmin: {{ bind: \"127.0.0.1:{admin}\" }}\nserver: {{ upgrade_sock: {} }}\nupstreams:\n  a: {{ servers: [{{ addr: \"{}\" }}] }}\nroutes: [{{ name: all, upstream: a }}]\nshutdown: {{ drain: 10s }}\n",
            sock.display(),
            a.addr()
        ),
    );
    let mut old = Proc::start(&config, &[], dir.join("old.log"));
    assert!(
        eventually(Duration::from_secs(15), || ready(admin)).await,
        "the first process gets ready: {}",
        old.log()
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://127.0.0.1:{port}/slow?ms=20");
    let streams: Vec<_> = (0..6)
        .map(|_| stream(url.clone(), tally.clone(), stop.clone(), false))
        .collect();
    let served = |n: u64| {
        let t = tally.clone();
        async move {
            let start = t.get(&t.ok);
            eventually(Duration::from_secs(10), || {
                let t = t.clone();
                async move { t.get(&t.ok) >= start + n }
            })
            .await
        }
    };
    assert!(served(20).await, "the stream flows");

    // SIGHUP: a reload under the stream.
    kill("HUP", old.pid());
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(admin).await.is_some_and(|s| s["version"] == 2)
        })
        .await,
        "SIGHUP reloads (config version 2): {}",
        old.log()
    );
    assert!(served(20).await, "the stream flows after the reload");

    // SIGQUIT with no new process waiting: nothing changes.
    kill("QUIT", old.pid());
    assert!(
        eventually(Duration::from_secs(15), || async {
            old.log().contains("no new process took them")
        })
        .await,
        "the refused hand-over is logged: {}",
        old.log()
    );
    assert!(
        old.child.try_wait().unwrap().is_none() && ready(admin).await,
        "the gateway keeps running and ready"
    );
    assert!(
        served(20).await,
        "the stream flows after the refused upgrade"
    );

    // `run --upgrade` + SIGQUIT: the new process takes the sockets.
    let mut new = Proc::start(&config, &["-u"], dir.join("new.log"));
    assert!(
        eventually(Duration::from_secs(10), || async { sock.exists() }).await,
        "the new process waits on server.upgrade_sock: {}",
        new.log()
    );
    let handed = Instant::now();
    kill("QUIT", old.pid());
    let new_pid = answering_pid(admin, old.pid(), Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("the new process answers: {}", new.log()));
    assert_eq!(new_pid, u64::from(new.pid()));
    let code = old.exited_within(Duration::from_secs(20)).await;
    eprintln!(
        "upgrade: old process exited {:?} after SIGQUIT",
        handed.elapsed()
    );
    assert_eq!(
        code,
        Some(0),
        "the old process drains and exits: {}",
        old.log()
    );
    assert!(served(20).await, "the new process serves the stream");

    // SIGUSR2: the running process starts its successor itself.
    kill("USR2", new.pid());
    let third = answering_pid(admin, new.pid(), Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the successor answers: {}", new.log()));
    let _successor = PidGuard(third);
    let code = new.exited_within(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "the upgraded process exits: {}", new.log());
    assert!(served(20).await, "the successor serves the stream");

    stop.store(true, Ordering::SeqCst);
    for s in streams {
        tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .expect("stream ends")
            .unwrap();
    }
    eprintln!(
        "stream through SIGHUP, a refused SIGQUIT, run --upgrade + SIGQUIT and SIGUSR2: ok {}, refused {}, lost {}, non-200 {}",
        tally.get(&tally.ok),
        tally.get(&tally.refused),
        tally.get(&tally.lost),
        tally.get(&tally.bad_status)
    );

    // SIGTERM on the successor (not our child: stopped by PID, and checked through /proc).
    assert!(pid_alive(third), "the successor runs");
    let t = Instant::now();
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(third.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {third}");
    let gone = eventually(Duration::from_secs(15), || async { !pid_alive(third) }).await;
    assert!(gone, "the successor stops on SIGTERM");
    eprintln!("idle SIGTERM took {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "an idle drain ends at once, not after the 10 s drain ({:?})",
        t.elapsed()
    );

    assert_eq!(tally.get(&tally.refused), 0, "no connection was refused");
    assert_eq!(tally.get(&tally.lost), 0, "no request was lost");
    assert_eq!(tally.get(&tally.bad_status), 0, "every answer was a 200");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_and_stopping_on_notify_socket() {
    let a = origin("a").await;
    let dir = temp_dir("sdnotify");
    let (port, admin) = (free_port(), free_port());
    let config = write_config(
        &dir,
        &format!(
            "listeners: [{{ bind: \"127.0.0.1:{port}\" }}]\nadmin: {{ bind: \"127.0.0.1:{admin}\" }}\nupstreams:\n  a: {{ servers: [{{ addr: \"{}\" }}] }}\nroutes: [{{ name: all, upstream: a }}]\n",
            a.addr()
        ),
    );
    let notify = dir.join("notify.sock");
    let rx = tokio::net::UnixDatagram::bind(&notify).unwrap();
    let out = std::fs::File::create(dir.join("out.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        log: dir.join("out.log"),
    };
    let next = || async {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(15), rx.recv(&mut buf))
            .await
            .expect("a notification within 15 s")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert_eq!(
        next().await,
        format!("READY=1\nMAINPID={}", p.pid()),
        "READY=1 with the main PID once the first health round is done"
    );
    assert!(ready(admin).await, "ready when systemd is told so");
    let status = status_of(admin).await.unwrap();
    assert_eq!(status["software"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["pid"], p.pid());
    kill("HUP", p.pid());
    assert_eq!(next().await, "RELOADING=1", "SIGHUP: reloading");
    assert_eq!(next().await, "READY=1", "reload done: ready again");
    kill("TERM", p.pid());
    assert_eq!(next().await, "STOPPING=1", "SIGTERM: stopping");
    assert_eq!(
        p.exited_within(Duration::from_secs(10)).await,
        Some(0),
        "stops: {}",
        p.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_shipped_systemd_unit_verifies_and_outlasts_the_default_shutdown_ceiling() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/floodgate.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= in {}", path.display()))
            .trim()
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(
        value("NotifyAccess"),
        "all",
        "an upgraded process reports READY"
    );
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(
        value("RuntimeDirectory"),
        "floodgate",
        "holds the default upgrade socket {}",
        floodgate::config::DEFAULT_UPGRADE_SOCK
    );
    assert!(floodgate::config::DEFAULT_UPGRADE_SOCK.starts_with("/run/floodgate/"));
    let stop = humantime::parse_duration(&value("TimeoutStopSec")).unwrap();
    let ceiling = floodgate::config::DEFAULT_DRAIN + floodgate::config::DEFAULT_CEILING_MARGIN;
    assert!(
        stop > ceiling,
        "TimeoutStopSec {stop:?} must exceed the default shutdown.ceiling {ceiling:?}"
    );
    // systemd's own check, with the binary path pointing at the one just built
    let bin = env!("CARGO_BIN_EXE_floodgate");
    let dir = temp_dir("unit");
    let copy = dir.join("floodgate.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/floodgate", bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd) is installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
    // the commands the unit runs are ones the binary accepts
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.yaml");
    let check = Command::new(bin)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(check.status.success(), "ExecStartPre's `check -c` runs");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_200_only_once_every_listener_accepts() {
    // why: the proxy listeners start after the admin service (they depend on it), and
    // /readyz turned 200 before they did: a request sent on the first 200 was refused when the
    // whole suite loaded the machine. Forty listeners widen that window and /readyz is polled
    // as fast as it answers: with six busy loops on two cores the old order failed 2 of 3
    // runs here (idle, it passed), the new one passed 3 of 3.
    for round in 0..3 {
        let dir = temp_dir(&format!("ready-listening-{round}"));
        let ports: Vec<u16> = (0..40).map(|_| free_port()).collect();
        let admin = free_port();
        let listeners: String = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("  - {{ name: l{i}, bind: \"127.0.0.1:{port}\" }}\n"))
            .collect();
        let config = write_config(
            &dir,
            &format!(
                "listeners:\n{listeners}admin: {{ bind: \"127.0.0.1:{admin}\" }}\nupstreams:\n  u: {{ servers: [{{ addr: \"127.0.0.1:9\" }}] }}\nroutes: [{{ name: all, upstream: u }}]\n"
            ),
        );
        let mut p = Proc::start(&config, &[], dir.join("out.log"));
        let t = Instant::now();
        while !ready(admin).await {
            assert!(t.elapsed() < Duration::from_secs(15), "ready: {}", p.log());
        }
        let refused: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&port| std::net::TcpStream::connect(("127.0.0.1", port)).is_err())
            .collect();
        kill("INT", p.pid());
        let _ = p.exited_within(Duration::from_secs(10)).await;
        assert!(
            refused.is_empty(),
            "listeners refused connections after the first 200 of /readyz: {refused:?}: {}",
            p.log()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_drain_stops_at_once() {
    let dir = temp_dir("sigint");
    let (port, admin) = (free_port(), free_port());
    let config = write_config(
        &dir,
        &format!(
            "listeners: [{{ bind: \"127.0.0.1:{port}\" }}]\nadmin: {{ bind: \"127.0.0.1:{admin}\" }}\nupstreams:\n  a: {{ servers: [{{ addr: \"127.0.0.1:9\" }}] }}\nroutes: [{{ name: all, upstream: a }}]\nshutdown: {{ pre_drain: 30s }}\n"
        ),
    );
    let mut p = Proc::start(&config, &[], dir.join("out.log"));
    assert!(
        eventually(Duration::from_secs(15), || ready(admin)).await,
        "ready: {}",
        p.log()
    );
    kill("TERM", p.pid());
    assert!(
        eventually(Duration::from_secs(5), || async {
            status_of(admin)
                .await
                .is_some_and(|s| s["phase"] == "draining")
        })
        .await,
        "SIGTERM starts the 30 s pre_drain: {}",
        p.log()
    );
    let t = Instant::now();
    kill("INT", p.pid());
    let code = p.exited_within(Duration::from_secs(10)).await;
    assert!(code.is_some(), "SIGINT ends the drain: {}", p.log());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "at once, not after pre_drain ({:?})",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_check_with_build_info_and_error_series_at_zero() {
    let a = origin("a").await;
    // Every feature whose counters carry config names: a map with a file pinning servers, a
    // policy with an admit hook, active health checks, a cache route, a route limit.
    let files = Scratch::new("metrics-zero");
    let map = files.write("nodes.map", "n1 a1\n");
    let script = files.write("p.lua", "function admit(req) return nil end\n");
    let gw = TestGateway::start(
        &r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  a:
    servers: [{ name: a1, addr: "@A@" }]
    health: { path: /api/status, interval: 1s }
maps:
  nodes: { file: "@MAP@" }
policy: { scripts: ["@SCRIPT@"] }
routes:
  - { name: pinned, match: { header: { name: X-Node } }, upstream: a, pick_server: { map: nodes, key: "header:X-Node" } }
  - { name: reg, match: { path_prefix: /register }, upstream: a, cache: { ttl: 10s } }
  - { name: all, upstream: a, admission: { max_inflight: 10 } }
"#
        .replace("@A@", &a.addr().to_string())
        .replace("@MAP@", &map)
        .replace("@SCRIPT@", &script),
    )
    .await;
    for _ in 0..3 {
        let r = client().get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = client()
        .get(gw.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    assert_eq!(
        metric_in(
            &text,
            "floodgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0,
        "floodgate_build_info{{version}} is 1"
    );
    assert!(
        text.contains("# TYPE floodgate_cache_shared_errors_total counter"),
        "a _total is a counter"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
    ] {
        assert!(
            metric_in(&text, name, &[]) > 0.0,
            "{name} is exposed and positive"
        );
    }
    for (name, labels) in [
        ("floodgate_reloads_total", vec![("result", "error")]),
        ("floodgate_policy_reloads_total", vec![("result", "error")]),
        (
            "floodgate_map_updates_total",
            vec![("map", "nodes"), ("source", "file"), ("result", "error")],
        ),
        (
            "floodgate_map_updates_total",
            vec![
                ("map", "nodes"),
                ("source", "runtime_api"),
                ("result", "error"),
            ],
        ),
        (
            "floodgate_map_updates_total",
            vec![("map", "nodes"), ("source", "api"), ("result", "error")],
        ),
        (
            "floodgate_map_lookups_total",
            vec![("map", "nodes"), ("result", "miss")],
        ),
        (
            "floodgate_policy_runs_total",
            vec![("hook", "admit"), ("outcome", "error")],
        ),
        (
            "floodgate_policy_runs_total",
            vec![("hook", "admit"), ("outcome", "budget")],
        ),
        (
            "floodgate_admission_rejected_total",
            vec![("scope", "upstream"), ("name", "a"), ("reason", "full")],
        ),
        (
            "floodgate_admission_rejected_total",
            vec![("scope", "route"), ("name", "all"), ("reason", "timeout")],
        ),
        (
            "floodgate_admission_abandoned_total",
            vec![("scope", "upstream"), ("name", "a")],
        ),
        (
            "floodgate_health_checks_total",
            vec![("upstream", "a"), ("server", "a1"), ("result", "refused")],
        ),
        (
            "floodgate_cache_requests_total",
            vec![("route", "reg"), ("result", "error")],
        ),
        (
            "floodgate_upstream_requests_total",
            vec![("server", "a1"), ("code", "connect_error")],
        ),
        (
            "floodgate_upstream_client_gone_total",
            vec![("upstream", "a"), ("outcome", "timeout")],
        ),
    ] {
        let line = format!("{name}{{");
        assert!(
            text.lines().any(|l| l.starts_with(&line)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                && l.ends_with(" 0")),
            "{name} {labels:?} exists at 0 before the first error"
        );
    }
}
