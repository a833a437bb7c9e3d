//! Built-in map poller: fetches a map from an HTTP source (e.g. a PuppetDB
//! query or a file server) every `every`, and hands changed content to the
//! caller, replacing the cron + Runtime API updater of the HAProxy setup.
//!
//! Owns the poll loop, its failure policy (keep the last good map, log once per
//! failure streak, count) and a minimal HTTP/1.1 GET client ([`http_get`]) for
//! plain `http://` URLs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{parse_map_json, parse_map_text_after, MapContent};

/// Default poll period (the HAProxy setup's cron ran every minute).
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);
/// Default limit for one fetch, connect to last body byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted response body; larger answers are errors.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Largest accepted response head (status line + headers).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Body format of the polled source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapFormat {
    /// HAProxy map text, see [`super::parse_map_text`].
    Map,
    /// JSON object or array, see [`super::parse_map_json`].
    Json,
}

/// What to poll and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerSettings {
    /// Source URL (passed to the fetch function as is).
    pub url: String,
    /// Period between fetches; the first fetch happens at once.
    pub every: Duration,
    /// Limit for one fetch; a slower fetch counts as an error.
    pub timeout: Duration,
    /// How to parse the body.
    pub format: MapFormat,
}

/// Counters of one poller, readable by metrics and the admin API.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Fetches whose content was applied.
    pub ok: AtomicU64,
    /// Fetches whose content equalled the last applied one.
    pub unchanged: AtomicU64,
    /// Failed fetches (transport, timeout, non-2xx, parse, rejected by the caller).
    pub errors: AtomicU64,
    /// Failures since the last success (0 = healthy).
    pub consecutive_errors: AtomicU64,
    /// The most recent failure, kept after recovery.
    pub last_error: Mutex<Option<String>>,
    /// When a fetch last succeeded (applied or unchanged).
    pub last_success: Mutex<Option<SystemTime>>,
}

/// The fetch function's future: `(status, body)` or a transport error.
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<(u16, Vec<u8>), String>> + Send>>;

/// Result of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// New content handed to `on_update`, which reported a change.
    Applied,
    /// Same body as last applied, or `on_update` reported no change.
    Unchanged,
    /// Kept the last good map for this reason.
    Failed(String),
}

/// Polls `settings.url` with `fetch` (normally [`http_get`]) right away and then
/// every `settings.every`, until `shutdown` is true or its sender is dropped
/// (an in-flight fetch is abandoned). `on_update` gets the parsed map only when
/// the body differs (SHA-256) from the last applied one; it returns whether the
/// live map changed, or a reason to reject it (e.g. unknown server), in which
/// case the same body is retried next time. Any failure keeps the last good
/// map, is counted, and is logged once per failure streak.
pub async fn run_poller<F, U>(
    settings: PollerSettings,
    fetch: F,
    on_update: U,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<PollerStats>,
) where
    F: Fn(String, Duration) -> FetchFuture + Send + Sync,
    U: Updater,
{
    let mut ticker = tokio::time::interval(settings.every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_hash: Option<[u8; 32]> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            r = shutdown.changed() => {
                if r.is_err() { return; }
                continue;
            }
        }
        let outcome = tokio::select! {
            o = poll_once(&settings, &fetch, &on_update, &mut last_hash) => o,
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { return; }
                continue;
            }
        };
        record(&settings.url, &stats, outcome);
    }
}

fn record(url: &str, stats: &PollerStats, outcome: PollOutcome) {
    match outcome {
        PollOutcome::Applied | PollOutcome::Unchanged => {
            let counter = if outcome == PollOutcome::Applied {
                &stats.ok
            } else {
                &stats.unchanged
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let failed = stats.consecutive_errors.swap(0, Ordering::Relaxed);
            if failed > 0 {
                log::info!("map poller {url}: recovered after {failed} failed fetches");
            }
            *stats.last_success.lock() = Some(SystemTime::now());
        }
        PollOutcome::Failed(reason) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if stats.consecutive_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!("map poller {url}: {reason}; keeping the last good map");
            }
            *stats.last_error.lock() = Some(reason);
        }
    }
}

/// Where a poller's maps go: [`apply`](Updater::apply) takes a parsed map and says whether
/// the live map changed (or why it was refused); [`current`](Updater::current) is the running
/// content, so that a new version with the same keys reuses its key index.
pub trait Updater: Send + Sync {
    fn apply(&self, content: MapContent) -> Result<bool, String>;
    fn current(&self) -> Option<Arc<super::MapTable>> {
        None
    }
}

impl<F: Fn(MapContent) -> Result<bool, String> + Send + Sync> Updater for F {
    fn apply(&self, content: MapContent) -> Result<bool, String> {
        self(content)
    }
}

/// One fetch + parse + apply. `last_hash` is the body hash last applied.
pub async fn poll_once<F, U>(
    settings: &PollerSettings,
    fetch: &F,
    on_update: &U,
    last_hash: &mut Option<[u8; 32]>,
) -> PollOutcome
where
    F: Fn(String, Duration) -> FetchFuture,
    U: Updater,
{
    let url = settings.url.clone();
    let fetched =
        tokio::time::timeout(settings.timeout, fetch(url.clone(), settings.timeout)).await;
    let (status, body) = match fetched {
        Err(_) => return PollOutcome::Failed(format!("timed out after {:?}", settings.timeout)),
        Ok(Err(e)) => return PollOutcome::Failed(e),
        Ok(Ok(answer)) => answer,
    };
    if !(200..300).contains(&status) {
        return PollOutcome::Failed(format!("HTTP status {status}"));
    }
    let hash: [u8; 32] = Sha256::digest(&body).into();
    if *last_hash == Some(hash) {
        return PollOutcome::Unchanged;
    }
    let format = settings.format;
    let origin = url.clone();
    // why: parsing a large map is CPU-bound (60-250 ms for 1M entries); keep it off the
    // async workers and behind the request threads.
    let current = on_update.current();
    let parsed = super::run_idle(move || {
        let text = String::from_utf8(body).map_err(|_| format!("{origin}: body is not UTF-8"))?;
        let previous = current.as_ref().map(|t| t.content());
        let result = match format {
            MapFormat::Map => parse_map_text_after(&text, &origin, |_| true, previous),
            MapFormat::Json => parse_map_json(&text, &origin).and_then(|m| {
                MapContent::from_entries(m).map_err(|e| {
                    vec![super::MapError::new(
                        &origin,
                        None,
                        e.to_string(),
                        "split the map",
                    )]
                })
            }),
        };
        result.map_err(|errs| {
            let first = errs.first().map(ToString::to_string).unwrap_or_default();
            format!("malformed body, {} error(s), first: {first}", errs.len())
        })
    })
    .await;
    let map = match parsed {
        Ok(Ok(map)) => map,
        Ok(Err(e)) => return PollOutcome::Failed(e),
        Err(e) => return PollOutcome::Failed(format!("parse task failed: {e}")),
    };
    match on_update.apply(map) {
        Ok(changed) => {
            *last_hash = Some(hash);
            if changed {
                PollOutcome::Applied
            } else {
                PollOutcome::Unchanged
            }
        }
        Err(e) => PollOutcome::Failed(format!("rejected: {e}")),
    }
}

/// Host, port and request target of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpUrl {
    /// Host without IPv6 brackets, for connecting.
    host: String,
    port: u16,
    /// Authority as written, for the Host header.
    authority: String,
    /// Path and query, at least "/".
    target: String,
}

fn parse_url(url: &str) -> Result<HttpUrl, String> {
    let scheme_end = url
        .find("://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    if !url[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(format!(
            "{url:?}: only http:// is supported by the built-in client (use a local TLS-terminating proxy)"
        ));
    }
    let rest = &url[scheme_end + 3..];
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..split];
    let mut target = rest[split..].split('#').next().unwrap_or("").to_string();
    if !target.starts_with('/') {
        target.insert(0, '/');
    }
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{url:?}: expected http://host[:port]/path without credentials"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        None => 80,
    };
    Ok(HttpUrl {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        target,
    })
}

/// GETs a plain `http://host[:port]/path` URL with HTTP/1.1 and
/// `Connection: close`. Handles Content-Length, chunked and close-delimited
/// bodies, skips 1xx answers; fails on bodies over [`MAX_BODY_BYTES`], on
/// malformed answers, and when the whole exchange exceeds `timeout`.
/// Returns `(status, body)` for any status: the caller judges non-2xx.
pub async fn http_get(url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let u = parse_url(url)?;
    match tokio::time::timeout(timeout, get(&u)).await {
        Ok(r) => r.map_err(|e| format!("GET {url}: {e}")),
        Err(_) => Err(format!("GET {url}: timed out after {timeout:?}")),
    }
}

/// Buffered reader over the response stream.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes; Ok(0) at EOF.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn need(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err("connection closed before the end of the body".to_string());
            }
        }
        Ok(())
    }

    /// One CRLF-terminated line, consumed, without the CRLF.
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err("chunk header line too long".to_string());
            }
            if self.fill().await? == 0 {
                return Err("connection closed inside a chunk header".to_string());
            }
        }
    }
}

/// Response head fields the body reader needs.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

async fn get(u: &HttpUrl) -> Result<(u16, Vec<u8>), String> {
    let stream = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("connect to {}:{} failed: {e}", u.host, u.port))?;
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(16 * 1024),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: floodgate-map-poller\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        u.target, u.authority
    );
    conn.stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let head = loop {
        let head = read_head(&mut conn).await?;
        // 1xx (other than 101) precede the real answer.
        if !(100..200).contains(&head.status) || head.status == 101 {
            break head;
        }
    };
    let body = if head.status == 204 || head.status == 304 {
        Vec::new()
    } else if head.chunked {
        read_chunked(&mut conn).await?
    } else if let Some(len) = head.content_length {
        if len > MAX_BODY_BYTES {
            return Err(format!(
                "body of {len} bytes exceeds the {MAX_BODY_BYTES}-byte limit"
            ));
        }
        conn.need(len).await?;
        conn.buf.truncate(len);
        conn.buf
    } else {
        while conn.fill().await? > 0 {
            if conn.buf.len() > MAX_BODY_BYTES {
                return Err(format!("body exceeds the {MAX_BODY_BYTES}-byte limit"));
            }
        }
        conn.buf
    };
    Ok((head.status, body))
}

async fn read_head(conn: &mut Conn) -> Result<Head, String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&conn.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let mut head = Head {
                    status,
                    content_length: None,
                    chunked: false,
                };
                for h in resp.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let len = value
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad Content-Length {value:?}"))?;
                        head.content_length = Some(len);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        head.chunked = value.to_ascii_lowercase().contains("chunked");
                    }
                }
                conn.buf.drain(..n);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) => {
                if conn.buf.len() > MAX_HEAD_BYTES {
                    return Err("response head too large".to_string());
                }
                if conn.fill().await? == 0 {
                    return Err("connection closed before a complete response head".to_string());
                }
            }
            Err(e) => return Err(format!("malformed response head: {e}")),
        }
    }
}

async fn read_chunked(conn: &mut Conn) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = conn.line().await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            // Trailers end with an empty line; a server closing right after
            // the last chunk is tolerated.
            while !conn.line().await.unwrap_or_default().is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(format!("body exceeds the {MAX_BODY_BYTES}-byte limit"));
        }
        conn.need(size + 2).await?;
        body.extend_from_slice(&conn.buf[..size]);
        if &conn.buf[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_string());
        }
        conn.buf.drain(..size + 2);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A tiny HTTP server answering every connection with the current canned
    /// response (raw bytes, sent in two writes), then closing.
    async fn canned_server(answer: Arc<Mutex<Vec<u8>>>) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let answer = answer.lock().clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let mid = answer.len() / 2;
                    let _ = s.write_all(&answer[..mid]).await;
                    let _ = s.flush().await;
                    let _ = s.write_all(&answer[mid..]).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (format!("http://{addr}/pdb/query?x=1"), task)
    }

    fn ok_answer(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn url_parsing_accepts_http_only() {
        let u = parse_url("http://[::1]:8080/a?b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 8080, "/a?b")
        );
        let u = parse_url("http://puppetdb").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"), "defaults");
        assert!(
            parse_url("https://x/")
                .unwrap_err()
                .contains("only http://"),
            "https refused"
        );
        assert!(parse_url("http://u:p@x/").is_err(), "credentials refused");
    }

    #[tokio::test]
    async fn http_get_reads_length_chunked_and_close_delimited_bodies() {
        let answer = Arc::new(Mutex::new(ok_answer("n1 master1\n")));
        let (url, server) = canned_server(answer.clone()).await;
        let t = Duration::from_secs(5);
        assert_eq!(
            http_get(&url, t).await.unwrap(),
            (200, b"n1 master1\n".to_vec()),
            "content-length"
        );
        *answer.lock() = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nn1 \r\n8\r\nmaster1\n\r\n0\r\nX-T: y\r\n\r\n".to_vec();
        assert_eq!(
            http_get(&url, t).await.unwrap(),
            (200, b"n1 master1\n".to_vec()),
            "chunked after 100"
        );
        *answer.lock() = b"HTTP/1.0 200 OK\r\n\r\nuntil close".to_vec();
        assert_eq!(
            http_get(&url, t).await.unwrap(),
            (200, b"until close".to_vec()),
            "close-delimited"
        );
        *answer.lock() = b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno".to_vec();
        assert_eq!(
            http_get(&url, t).await.unwrap().0,
            500,
            "status passed through"
        );
        *answer.lock() = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec();
        assert!(
            http_get(&url, t).await.is_err(),
            "truncated body is an error"
        );
        server.abort();
    }

    #[tokio::test]
    async fn http_get_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let err = http_get(&url, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        drop(listener);
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn poller_applies_changes_and_keeps_last_map_on_500_and_malformed_body() {
        let answer = Arc::new(Mutex::new(ok_answer("n1 master1\n")));
        let (url, server) = canned_server(answer.clone()).await;
        let settings = PollerSettings {
            url,
            every: Duration::from_millis(30),
            timeout: Duration::from_secs(2),
            format: MapFormat::Map,
        };
        let stats = Arc::new(PollerStats::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let poller = tokio::spawn(run_poller(
            settings,
            |url, t| Box::pin(async move { http_get(&url, t).await }) as FetchFuture,
            move |m| {
                tx.send(m).map_err(|e| e.to_string())?;
                Ok(true)
            },
            stop_rx,
            stats.clone(),
        ));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.get("n1"), Some("master1"), "first map applied");
        wait_for("unchanged polls", || {
            stats.unchanged.load(Ordering::Relaxed) >= 2
        })
        .await;

        *answer.lock() =
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec();
        wait_for("500 counted", || stats.errors.load(Ordering::Relaxed) >= 2).await;
        assert!(
            stats
                .last_error
                .lock()
                .as_deref()
                .unwrap_or("")
                .contains("500"),
            "reason kept"
        );

        *answer.lock() = ok_answer("lonely\n");
        let before = stats.errors.load(Ordering::Relaxed);
        wait_for("malformed counted", || {
            stats.errors.load(Ordering::Relaxed) >= before + 2
        })
        .await;
        assert!(
            stats
                .last_error
                .lock()
                .as_deref()
                .unwrap_or("")
                .contains("malformed"),
            "parse error kept"
        );
        assert!(
            rx.try_recv().is_err(),
            "no update while failing: last good map kept"
        );
        assert!(
            stats.consecutive_errors.load(Ordering::Relaxed) >= 4,
            "one streak"
        );

        *answer.lock() = ok_answer("n1 master2\nn2 master1\n");
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.get("n1"), Some("master2"), "recovered with new map");
        assert_eq!(
            stats.consecutive_errors.load(Ordering::Relaxed),
            0,
            "streak reset"
        );
        assert_eq!(stats.ok.load(Ordering::Relaxed), 2, "two applied versions");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), poller)
            .await
            .expect("poller stops")
            .unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn poll_once_parses_json_and_retries_body_the_caller_rejected() {
        let settings = PollerSettings {
            url: "http://unused/".into(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
            format: MapFormat::Json,
        };
        let fetch = |_u: String, _t: Duration| {
            Box::pin(async { Ok((200u16, br#"[{"certname":"n1","value":"master1"}]"#.to_vec())) })
                as FetchFuture
        };
        let accept = std::sync::atomic::AtomicBool::new(false);
        let on_update = |m: MapContent| {
            assert_eq!(m.len(), 1, "json parsed");
            if accept.load(Ordering::Relaxed) {
                Ok(true)
            } else {
                Err("master1 is not a server".to_string())
            }
        };
        let mut last = None;
        let o = poll_once(&settings, &fetch, &on_update, &mut last).await;
        assert!(
            matches!(o, PollOutcome::Failed(ref e) if e.contains("rejected")),
            "{o:?}"
        );
        accept.store(true, Ordering::Relaxed);
        assert_eq!(
            poll_once(&settings, &fetch, &on_update, &mut last).await,
            PollOutcome::Applied,
            "retried"
        );
        assert_eq!(
            poll_once(&settings, &fetch, &on_update, &mut last).await,
            PollOutcome::Unchanged
        );
    }

    #[tokio::test]
    async fn a_polled_map_with_the_running_keys_reuses_their_index() {
        let text = |shift: usize| -> String {
            (0..3000)
                .map(|i| format!("n{i} master{}\n", (i + shift) % 2 + 1))
                .collect()
        };
        let running = Arc::new(crate::maps::MapTable::from_content(
            crate::maps::parse_map_text(&text(0), "t").unwrap(),
            1,
            crate::maps::MapSource::Api,
        ));
        struct Keep {
            running: Arc<crate::maps::MapTable>,
            shared: std::sync::atomic::AtomicBool,
        }
        impl Updater for Keep {
            fn apply(&self, c: MapContent) -> Result<bool, String> {
                assert_eq!(c.get("n0"), Some("master2"), "the new values");
                self.shared.store(
                    c.shares_keys_with(self.running.content()),
                    Ordering::Relaxed,
                );
                Ok(true)
            }
            fn current(&self) -> Option<Arc<crate::maps::MapTable>> {
                Some(self.running.clone())
            }
        }
        let keep = Keep {
            running,
            shared: false.into(),
        };
        let body = text(1).into_bytes();
        let fetch = move |_u: String, _t: Duration| {
            let b = body.clone();
            Box::pin(async move { Ok((200u16, b)) }) as FetchFuture
        };
        let settings = PollerSettings {
            url: "http://unused/".into(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
            format: MapFormat::Map,
        };
        let o = poll_once(&settings, &fetch, &keep, &mut None).await;
        assert_eq!(o, PollOutcome::Applied);
        assert!(keep.shared.load(Ordering::Relaxed), "key index reused");
    }
}
