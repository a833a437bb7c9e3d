//! Test harness: a real gateway in-process on ephemeral ports, real origins, a real HTTP client.

#![allow(dead_code)]

use async_trait::async_trait;
use floodgate::state::AppState;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use floodgate_testkit::origin::{start_origin, OriginConfig, OriginHandle};

/// A free TCP port on 127.0.0.1 (bound and released). Never hands out the same port twice in
/// one test process: the kernel may return a just-released port to the next bind, which made
/// two "free" ports of one gateway collide.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "floodgate-test-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Which signal the test sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Graceful,
    Fast,
}

struct TestSignal(tokio::sync::watch::Receiver<Option<Stop>>);

#[async_trait]
impl ShutdownSignalWatch for TestSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        loop {
            if let Some(s) = *rx.borrow() {
                return match s {
                    Stop::Graceful => ShutdownSignal::GracefulTerminate,
                    Stop::Fast => ShutdownSignal::FastShutdown,
                };
            }
            if rx.changed().await.is_err() {
                return ShutdownSignal::FastShutdown;
            }
        }
    }
}

pub struct TestGateway {
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub state: Arc<AppState>,
    stop: tokio::sync::watch::Sender<Option<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway on `yaml`, in which `{PORT}` and `{ADMIN}` are replaced by free ports
    /// and `{DIR}` by a fresh temp dir. Waits until `/readyz` answers 200.
    pub async fn start(yaml: &str) -> TestGateway {
        Self::try_start(yaml)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    pub async fn try_start(yaml: &str) -> Result<TestGateway, String> {
        let dir = temp_dir("gw");
        let port = free_port();
        let admin_port = free_port();
        let text = yaml
            .replace("{PORT}", &port.to_string())
            .replace("{ADMIN}", &admin_port.to_string())
            .replace("{DIR}", &dir.display().to_string());
        let text = if text.contains("admin:") {
            text
        } else {
            format!("{text}\nadmin: {{ bind: \"127.0.0.1:{admin_port}\" }}\n")
        };
        let config_path = dir.join("floodgate.yaml");
        std::fs::write(&config_path, text).map_err(|e| e.to_string())?;
        let state = floodgate::app::prepare(&config_path).map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::watch::channel(None);
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            if let Err(e) = floodgate::app::run(st, Some(Box::new(TestSignal(rx)))) {
                eprintln!("gateway run failed: {e}");
            }
        });
        let gw = TestGateway {
            port,
            admin_port,
            dir,
            config_path,
            state,
            stop: tx,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = client();
        loop {
            if let Ok(r) = client.get(gw.admin("/readyz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err("not ready within 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // the proxy listener starts with the admin one, but make sure it accepts
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("proxy listener not accepting".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(gw)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Rewrites the config file (same placeholders) without reloading.
    pub fn write_config(&self, yaml: &str) {
        let text = yaml
            .replace("{PORT}", &self.port.to_string())
            .replace("{ADMIN}", &self.admin_port.to_string())
            .replace("{DIR}", &self.dir.display().to_string());
        let text = if text.contains("admin:") {
            text
        } else {
            format!(
                "{text}\nadmin: {{ bind: \"127.0.0.1:{}\" }}\n",
                self.admin_port
            )
        };
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// Reads one metric sample's value from `/metrics` (sum over samples whose labels contain
    /// every `label="value"` pair given).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = client()
            .get(self.admin("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        metric_in(&text, name, labels)
    }

    /// Sends the stop signal and waits for the gateway thread to end.
    pub fn stop(mut self, how: Stop) -> Duration {
        let t = Instant::now();
        let _ = self.stop.send(Some(how));
        if let Some(th) = self.thread.take() {
            let _ = th.join();
        }
        t.elapsed()
    }

    /// Starts the stop without waiting; `join` waits.
    pub fn signal(&self, how: Stop) {
        let _ = self.stop.send(Some(how));
    }

    pub fn join(mut self) {
        if let Some(th) = self.thread.take() {
            let _ = th.join();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(th) = self.thread.take() {
            let _ = self.stop.send(Some(Stop::Fast));
            let _ = th.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A client that does not pool idle connections across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Starts an origin with default settings (8 slots, 20 ms service) named `name`.
pub async fn origin(name: &str) -> OriginHandle {
    start_origin(OriginConfig {
        name: name.to_string(),
        ..OriginConfig::default()
    })
    .await
    .expect("origin")
}

/// Reads one request head (up to and including its blank line) from a raw origin's
/// connection; `None` when the peer closes or fails first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf)
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A folder of maps, scripts and sockets for one test, outliving gateway restarts; removed on
/// drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch(temp_dir(tag))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` (plain write) and returns the path as a YAML-ready string.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Writes `name` atomically (temp file + rename, as editors and config managers do), so a
    /// watcher never reads half a file. Returns the path.
    pub fn replace(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The admin `/status` JSON of a gateway.
pub async fn status(gw: &TestGateway) -> serde_json::Value {
    admin_json(gw, "/status").await
}

/// The JSON answer of `GET <admin>path`.
pub async fn admin_json(gw: &TestGateway, path: &str) -> serde_json::Value {
    client()
        .get(gw.admin(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
}

/// One Runtime API exchange as `echo "$input" | socat stdio unix:$sock` does it: connect, send,
/// half-close, read the answer until the server closes.
pub async fn runtime(sock: &std::path::Path, input: &str) -> String {
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(sock).await?;
        tokio::io::AsyncWriteExt::write_all(&mut s, input.as_bytes()).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut s).await?;
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("runtime API {input:?}: no answer within 5 s"))
        .unwrap_or_else(|e| panic!("runtime API {input:?}: {e}"))
}

/// Captures floodgate's warnings and errors, and the access-log lines of refused requests, so
/// tests can check what was reported (one logger per process, shared by every module).
pub mod logcap {
    use std::collections::VecDeque;

    pub struct Capture {
        lines: parking_lot::Mutex<VecDeque<String>>,
        refusals: parking_lot::Mutex<VecDeque<String>>,
    }

    fn push(ring: &parking_lot::Mutex<VecDeque<String>>, line: String) {
        let mut l = ring.lock();
        if l.len() >= 2000 {
            l.pop_front();
        }
        l.push_back(line);
    }

    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            (m.level() <= log::Level::Warn && m.target().starts_with("floodgate"))
                || (m.level() <= log::Level::Info && m.target() == "access")
        }

        fn log(&self, r: &log::Record) {
            if !self.enabled(r.metadata()) {
                return;
            }
            if r.target() == "access" {
                // why: only refusals; other tests' request lines would crowd them out
                let line = r.args().to_string();
                if line.contains("served=refused") || line.contains("\"served\":\"refused\"") {
                    push(&self.refusals, line);
                }
            } else {
                push(&self.lines, format!("{} {}", r.level(), r.args()));
            }
        }

        fn flush(&self) {}
    }

    // why: the `log` facade only accepts a 'static logger, installed once per process.
    static CAPTURE: Capture = Capture {
        lines: parking_lot::const_mutex(VecDeque::new()),
        refusals: parking_lot::const_mutex(VecDeque::new()),
    };
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

    /// Installs the capture; false when another logger was installed first (then logs cannot be
    /// checked and callers skip that assertion).
    pub fn install() -> bool {
        *INSTALLED.get_or_init(|| {
            let ok = log::set_logger(&CAPTURE).is_ok();
            if ok {
                log::set_max_level(log::LevelFilter::Info);
            }
            ok
        })
    }

    /// Captured warnings and errors containing every needle.
    pub fn matching(needles: &[&str]) -> Vec<String> {
        CAPTURE
            .lines
            .lock()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    /// Captured refusal access-log lines containing every needle.
    pub fn refusals(needles: &[&str]) -> Vec<String> {
        CAPTURE
            .refusals
            .lock()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }
}
