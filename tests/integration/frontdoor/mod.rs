//! The front door: hostile HTTP/1.x requests over raw sockets against a real gateway, in front
//! of a raw-socket origin that records every byte it receives. Each refused input must get its
//! status (or a close), leave nothing at the origin, and be counted and logged; the positive
//! controls must reach the origin as expected.

use crate::common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod cases;
use cases::{head_of_size, hostile, H};

/// What the recording origin received: every byte, and each complete request it answered.
#[derive(Default)]
struct Record {
    bytes: parking_lot::Mutex<Vec<u8>>,
    /// (head, decoded body) of every complete request.
    requests: parking_lot::Mutex<Vec<(String, Vec<u8>)>>,
}

impl Record {
    fn len(&self) -> usize {
        self.bytes.lock().len()
    }

    fn last(&self) -> (String, Vec<u8>) {
        self.requests.lock().last().cloned().expect("a request")
    }

    fn heads_with(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .iter()
            .filter(|(h, _)| h.contains(needle))
            .count()
    }
}

/// Decodes a canonical chunked body; `None` when incomplete. Returns (body, bytes used).
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut i = 0;
    loop {
        let lf = i + b[i..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&b[i..lf]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        i = lf + 2;
        if size == 0 {
            // trailers end with an empty line
            let end = i + b[i..].windows(2).position(|w| w == b"\r\n")?;
            if end == i {
                return Some((body, i + 2));
            }
            let fin = i + b[i..].windows(4).position(|w| w == b"\r\n\r\n")?;
            return Some((body, fin + 4));
        }
        if b.len() < i + size + 2 {
            return None;
        }
        body.extend_from_slice(&b[i..i + size]);
        i += size + 2;
    }
}

/// Takes one complete request off the front of `buf`, if there is one.
fn take_request(buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let lower = head.to_ascii_lowercase();
    let (body, used) = if lower.contains("\r\ntransfer-encoding: chunked") {
        let (body, n) = dechunk(&buf[end..])?;
        (body, end + n)
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if buf.len() < end + cl {
            return None;
        }
        (buf[end..end + cl].to_vec(), end + cl)
    } else {
        (Vec::new(), end)
    };
    buf.drain(..used);
    Some((head, body))
}

/// A raw-socket origin: stores every byte received and answers each request `200 ok`.
async fn recording_origin() -> (SocketAddr, Arc<Record>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Arc::new(Record::default());
    let r = rec.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    r.bytes.lock().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(req) = take_request(&mut buf) {
                        r.requests.lock().push(req);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-recorder: 1\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rec, task)
}

/// One response read off a client connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
}

/// A client connection that reads complete responses (Content-Length framed) or the close.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // a refusal may close before everything is written; what matters is the answer
        let _ = self.s.write_all(bytes).await;
    }

    /// The next response, or `None` when the connection closed first (10 s at most).
    async fn reply(&mut self) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).to_string();
                let cl = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + cl {
                    self.buf.drain(..end + 4 + cl);
                    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                    return Some(Reply { status, head });
                }
            }
            let mut chunk = vec![0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return None,
                Err(_) => panic!("no answer and no close within 10 s"),
            }
        }
    }

    /// True when the gateway closes the connection (after any answer), within 10 s.
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn gateway_yaml(listener: &str, origin: SocketAddr, front_door: &str) -> String {
    format!(
        r#"
listeners: [{{ name: {listener}, bind: "127.0.0.1:{{PORT}}"{front_door} }}]
upstreams:
  rec: {{ servers: [{{ addr: "{origin}" }}] }}
routes:
  - {{ name: raw, match: {{ path_prefix: /raw }}, upstream: rec, raw_path: true }}
  - {{ name: all, match: {{ path_prefix: / }}, upstream: rec }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_counted_and_logged_and_never_reach_the_origin() {
    let logs = logcap::install();
    let (origin, rec, task) = recording_origin().await;
    let gw = TestGateway::start(&gateway_yaml("fd-table", origin, "")).await;
    let table = hostile();
    assert!(table.len() >= 50, "{} inputs", table.len());
    let reasons: std::collections::BTreeSet<&str> = table.iter().map(|c| c.3).collect();
    for r in &reasons {
        let labels = [("listener", "fd-table"), ("reason", *r)];
        let text = client()
            .get(gw.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with("floodgate_requests_refused_total{")
                    && l.contains("listener=\"fd-table\"")
                    && l.contains(&format!("reason=\"{r}\""))
                    && l.ends_with(" 0")),
            "the counter for {r} is exported at 0 from the start"
        );
        assert_eq!(
            gw.metric("floodgate_requests_refused_total", &labels).await,
            0.0
        );
    }

    for (name, bytes, status, reason) in &table {
        let labels = [("listener", "fd-table"), ("reason", *reason)];
        let before = gw.metric("floodgate_requests_refused_total", &labels).await;
        let seen = rec.len();
        let mut c = Conn::open(gw.addr()).await;
        c.send(bytes).await;
        let reply = c.reply().await;
        let got = reply.as_ref().map(|r| r.status);
        assert_eq!(got, Some(*status), "{name}: status ({reply:?})");
        let head = reply
            .map(|r| r.head.to_ascii_lowercase())
            .unwrap_or_default();
        assert!(
            head.contains("connection: close"),
            "{name}: refusals close: {head}"
        );
        assert!(
            c.closed().await,
            "{name}: the connection is closed after the refusal"
        );
        assert_eq!(rec.len(), seen, "{name}: nothing reached the origin");
        let after = gw.metric("floodgate_requests_refused_total", &labels).await;
        assert_eq!(after, before + 1.0, "{name}: counted once as {reason}");
    }
    if logs {
        for r in &reasons {
            let want = table.iter().filter(|c| c.3 == *r).count();
            let lines = logcap::refusals(&["listener=fd-table", &format!("reason={r} ")]);
            assert_eq!(
                lines.len(),
                want,
                "{r}: one access-log line per refusal: {lines:?}"
            );
            assert!(
                lines.iter().all(|l| l.starts_with("127.0.0.1 - - [")),
                "{lines:?}"
            );
        }
    } else {
        panic!("the log capture could not be installed");
    }
    // Anything forwarded late would show up now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rec.len(),
        0,
        "the origin never received a byte of the hostile table"
    );
    assert_eq!(rec.heads_with("/smuggled"), 0);
    task.abort();
}

/// Sends `bytes` on a fresh connection and returns the reply and what the origin got.
async fn pass(gw: &TestGateway, rec: &Record, name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let n = rec.requests.lock().len();
    let mut c = Conn::open(gw.addr()).await;
    c.send(bytes).await;
    let r = c
        .reply()
        .await
        .unwrap_or_else(|| panic!("{name}: closed without an answer"));
    assert_eq!(r.status, 200, "{name}: {}", r.head);
    assert!(
        r.head.contains("x-recorder: 1"),
        "{name}: answered by the origin"
    );
    assert_eq!(
        rec.requests.lock().len(),
        n + 1,
        "{name}: one request at the origin"
    );
    rec.last()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legal_requests_pass_untouched_or_normalised() {
    let (origin, rec, task) = recording_origin().await;
    let gw = TestGateway::start(&gateway_yaml("fd-pass", origin, "")).await;

    let (head, _) = pass(
        &gw,
        &rec,
        "absolute-form",
        b"GET http://fd.test/abs?q=1 HTTP/1.1\r\nHost: fd.test\r\n\r\n",
    )
    .await;
    assert!(
        head.starts_with("GET /abs?q=1 HTTP/1.1\r\n"),
        "origin-form upstream: {head}"
    );
    let (head, _) = pass(
        &gw,
        &rec,
        "absolute-form wins over Host",
        b"GET http://fd.test:81/w HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    let hosts: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
        .collect();
    assert_eq!(
        hosts,
        vec!["Host: fd.test:81"],
        "one Host, the authority: {head}"
    );
    assert!(!head.contains("other.test"), "{head}");

    let (head, _) = pass(
        &gw,
        &rec,
        "%2F kept",
        format!("GET /a%2Fb/c%2f HTTP/1.1\r\n{H}\r\n").as_bytes(),
    )
    .await;
    assert!(head.starts_with("GET /a%2Fb/c%2f HTTP/1.1\r\n"), "{head}");

    let exact = head_of_size(32 * 1024);
    assert_eq!(exact.len(), 32 * 1024);
    let (head, _) = pass(&gw, &rec, "head at the limit", &exact).await;
    assert!(
        head.contains(&"a".repeat(32 * 1024 - 60)),
        "the big header arrived whole"
    );

    let mut fields = format!("GET /fields HTTP/1.1\r\n{H}");
    for i in 0..99 {
        fields.push_str(&format!("X-F{i}: v\r\n"));
    }
    fields.push_str("\r\n");
    let (head, _) = pass(&gw, &rec, "100 fields", fields.as_bytes()).await;
    assert!(head.contains("X-F98: v"), "{head}");

    let (_, body) = pass(&gw, &rec, "chunk extension", format!("POST /ext HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n5;name=\"v a\"\r\nhello\r\n6;x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n").as_bytes()).await;
    assert_eq!(body, b"hello world");

    let (_, body) = pass(
        &gw,
        &rec,
        "mixed-case chunked",
        format!("POST /mc HTTP/1.1\r\n{H}Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(body, b"abc");

    let query = format!("/q?{}", "k=v&".repeat(1750));
    let (head, _) = pass(
        &gw,
        &rec,
        "long query",
        format!("GET {query} HTTP/1.1\r\n{H}\r\n").as_bytes(),
    )
    .await;
    assert!(
        head.starts_with(&format!("GET {query} HTTP/1.1\r\n")),
        "query untouched"
    );

    let (head, _) = pass(
        &gw,
        &rec,
        "dot segments",
        format!("GET /a/./b/../c%2e/%2E/d?x=/../y HTTP/1.1\r\n{H}\r\n").as_bytes(),
    )
    .await;
    assert!(
        head.starts_with("GET /a/c%2e/d?x=/../y HTTP/1.1\r\n"),
        "normalised path: {head}"
    );

    let (head, _) = pass(
        &gw,
        &rec,
        "HTTP/1.0 without Host",
        b"GET /old HTTP/1.0\r\n\r\n",
    )
    .await;
    // (Pingora speaks HTTP/1.1 to the upstream whatever the client spoke)
    assert!(head.starts_with("GET /old HTTP/1."), "{head}");

    let (head, _) = pass(
        &gw,
        &rec,
        "leading blank line",
        format!("\r\nGET /lead HTTP/1.1\r\n{H}\r\n").as_bytes(),
    )
    .await;
    assert!(head.starts_with("GET /lead HTTP/1.1\r\n"), "{head}");

    let (_, body) = pass(
        &gw,
        &rec,
        "content-length body",
        format!("POST /cl HTTP/1.1\r\n{H}Content-Length: 5\r\n\r\nhello").as_bytes(),
    )
    .await;
    assert_eq!(body, b"hello");

    // several requests on one kept-alive connection, then a bad one on the same connection
    let mut c = Conn::open(gw.addr()).await;
    for i in 0..3 {
        c.send(format!("GET /ka{i} HTTP/1.1\r\n{H}\r\n").as_bytes())
            .await;
        let r = c.reply().await.expect("kept alive");
        assert_eq!(r.status, 200);
        assert_eq!(rec.heads_with(&format!("GET /ka{i} ")), 1);
    }
    let seen = rec.len();
    c.send(format!("GET /ka HTTP/1.1\r\n{H}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes()).await;
    assert_eq!(c.reply().await.map(|r| r.status), Some(400));
    assert!(c.closed().await);
    assert_eq!(
        rec.len(),
        seen,
        "the refused request on a reused connection stayed out"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_path_routes_send_the_target_as_received() {
    let (origin, rec, task) = recording_origin().await;
    let gw = TestGateway::start(&gateway_yaml("fd-raw", origin, "")).await;
    let (head, _) = pass(
        &gw,
        &rec,
        "raw route",
        format!("GET /raw/./x/../y%2e HTTP/1.1\r\n{H}\r\n").as_bytes(),
    )
    .await;
    assert!(
        head.starts_with("GET /raw/./x/../y%2e HTTP/1.1\r\n"),
        "{head}"
    );
    // routed on the normalised path (/raw/z), sent as received
    let (head, _) = pass(
        &gw,
        &rec,
        "raw route by normalised path",
        format!("GET /a/../raw/z HTTP/1.1\r\n{H}\r\n").as_bytes(),
    )
    .await;
    assert!(head.starts_with("GET /a/../raw/z HTTP/1.1\r\n"), "{head}");
    let (head, _) = pass(
        &gw,
        &rec,
        "other route",
        format!("GET /x/./y HTTP/1.1\r\n{H}\r\n").as_bytes(),
    )
    .await;
    assert!(head.starts_with("GET /x/y HTTP/1.1\r\n"), "{head}");
    let mut c = Conn::open(gw.addr()).await;
    c.send(format!("GET /raw/../../x HTTP/1.1\r\n{H}\r\n").as_bytes())
        .await;
    assert_eq!(
        c.reply().await.map(|r| r.status),
        Some(400),
        "a climb is refused on raw routes too"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_gets_408_and_a_silent_connection_is_closed_quietly() {
    let (origin, rec, task) = recording_origin().await;
    let gw = TestGateway::start(&gateway_yaml(
        "fd-slow",
        origin,
        ", front_door: { header_timeout: 1s }",
    ))
    .await;
    let labels = [("listener", "fd-slow"), ("reason", "header_timeout")];
    let started = std::time::Instant::now();
    let mut c = Conn::open(gw.addr()).await;
    c.send(b"GET /slow HTTP/1.1\r\nHost: fd").await;
    assert_eq!(c.reply().await.map(|r| r.status), Some(408));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    assert!(c.closed().await);
    assert_eq!(
        gw.metric("floodgate_requests_refused_total", &labels).await,
        1.0
    );

    // Dripping bytes does not extend the time: the timeout is for the whole head.
    let started = std::time::Instant::now();
    let mut c = Conn::open(gw.addr()).await;
    let drip = tokio::spawn(async move {
        for b in b"GET /drip HTTP/1.1\r\nHost: fd.test\r\nX-Slow: aaaaaaaaaa" {
            c.send(&[*b]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c
    });
    let mut c = drip.await.unwrap();
    assert_eq!(c.reply().await.map(|r| r.status), Some(408));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        gw.metric("floodgate_requests_refused_total", &labels).await,
        2.0
    );

    let mut quiet = Conn::open(gw.addr()).await;
    assert!(quiet.reply().await.is_none(), "closed without an answer");
    assert_eq!(
        gw.metric("floodgate_requests_refused_total", &labels).await,
        2.0,
        "a connection that never sent a byte is not a refused request"
    );
    assert_eq!(rec.len(), 0);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_listener_lets_chunked_win_over_content_length() {
    let (origin, rec, task) = recording_origin().await;
    let gw = TestGateway::start(&gateway_yaml(
        "fd-legacy",
        origin,
        ", front_door: { allow_length_with_chunked: true }",
    ))
    .await;
    let req = format!("POST /legacy HTTP/1.1\r\n{H}Content-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let (head, body) = pass(&gw, &rec, "CL+TE allowed", req.as_bytes()).await;
    assert_eq!(body, b"hello");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "Pingora drops the Content-Length: {head}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_syntax_after_the_preread_aborts_the_request() {
    let (origin, rec, task) = recording_origin().await;
    let gw = TestGateway::start(&gateway_yaml("fd-stream", origin, "")).await;
    let labels = [("listener", "fd-stream"), ("reason", "chunk_syntax")];
    let mut c = Conn::open(gw.addr()).await;
    let mut first = format!("POST /stream HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n");
    for _ in 0..5 {
        first.push_str(&format!("1000\r\n{}\r\n", "b".repeat(4096)));
    }
    c.send(first.as_bytes()).await;
    // the first 20 KiB passed the preread and were forwarded; wait until the origin has them
    assert!(
        eventually(Duration::from_secs(10), || async { rec.len() > 16 * 1024 }).await,
        "the start of the body was streamed to the origin"
    );
    c.send(b"5 \r\nhello\r\n0\r\n\r\n").await;
    let reply = c.reply().await;
    assert!(reply.as_ref().is_none_or(|r| r.status != 200), "{reply:?}");
    assert!(c.closed().await, "the connection is closed");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric("floodgate_requests_refused_total", &labels).await == 1.0
        })
        .await,
        "counted as chunk_syntax"
    );
    assert_eq!(
        rec.heads_with("/stream"),
        0,
        "the origin never got a complete request"
    );
    let upstream = String::from_utf8_lossy(&rec.bytes.lock()).to_string();
    assert!(
        !upstream.contains("hello"),
        "the bad chunk was not forwarded"
    );
    task.abort();
}

/// `curl ARGS URL` printing "status http-version" (h2 is only spoken by curl in these tests).
async fn curl_status(args: &[&str], url: &str) -> String {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "--path-as-is",
    ])
    .args(args)
    .arg(url);
    let out = cmd.output().await.expect("curl runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_passes_the_front_door_and_its_paths_are_normalised_by_the_proxy() {
    let logs = logcap::install();
    let (origin, rec, task) = recording_origin().await;
    let yaml = gateway_yaml("fd-h2c", origin, ", h2c: true");
    let gw = TestGateway::start(&yaml).await;
    let h2 = ["--http2-prior-knowledge"];
    assert_eq!(curl_status(&h2, &gw.url("/h2/./a/../b")).await, "200 2");
    assert!(
        rec.last().0.starts_with("GET /h2/b HTTP/1.1\r\n"),
        "normalised"
    );
    assert_eq!(
        curl_status(&[], &gw.url("/h1/./c")).await,
        "200 1.1",
        "HTTP/1.1 on an h2c listener"
    );
    assert!(rec.last().0.starts_with("GET /h1/c HTTP/1.1\r\n"));
    let seen = rec.len();
    assert_eq!(curl_status(&h2, &gw.url("/../etc/passwd")).await, "400 2");
    assert_eq!(rec.len(), seen, "refused before the origin");
    let labels = [("listener", "fd-h2c"), ("reason", "target_above_root")];
    assert_eq!(
        gw.metric("floodgate_requests_refused_total", &labels).await,
        1.0
    );
    if logs {
        let lines = logcap::refusals(&["listener=fd-h2c", "reason=target_above_root"]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("\"GET /../etc/passwd HTTP/2.0\" 400"),
            "{lines:?}"
        );
    }
    task.abort();
}

#[test]
fn front_door_settings_are_read_and_bad_ones_named_by_key_path() {
    use floodgate::config::parse_config;
    use std::path::Path;
    let yaml = |fd: &str| {
        format!(
            "listeners: [{{ bind: \"127.0.0.1:8080\" }}, {{ name: b, bind: \"127.0.0.1:8081\", front_door: {fd} }}]\n\
             upstreams:\n  a: {{ servers: [{{ addr: \"127.0.0.1:3000\" }}] }}\n\
             routes: [{{ name: r, upstream: a, raw_path: true }}]\n"
        )
    };
    let cfg = parse_config(
        &yaml("{ header_timeout: 5s, max_header_size: 64KiB, max_header_fields: 50, max_request_line: 16KiB, allow_length_with_chunked: true }"),
        Path::new("t.yaml"),
    )
    .unwrap();
    let d = &cfg.listeners[0].front_door;
    assert_eq!(
        (
            d.header_timeout,
            d.max_header_size,
            d.max_header_fields,
            d.max_request_line,
            d.allow_length_with_chunked
        ),
        (Duration::from_secs(30), 32 * 1024, 100, 8 * 1024, false),
        "defaults"
    );
    let b = &cfg.listeners[1].front_door;
    assert_eq!(
        (
            b.header_timeout,
            b.max_header_size,
            b.max_header_fields,
            b.max_request_line,
            b.allow_length_with_chunked
        ),
        (Duration::from_secs(5), 64 * 1024, 50, 16 * 1024, true)
    );
    assert!(cfg.routes[0].raw_path);

    for (fd, path, text) in [
        (
            "{ header_timeout: soon }",
            "listeners[1].front_door.header_timeout",
            "not a duration",
        ),
        (
            "{ header_timeout: 0s }",
            "listeners[1].front_door.header_timeout",
            "use e.g.",
        ),
        (
            "{ max_header_size: 2MiB }",
            "listeners[1].front_door.max_header_size",
            "use 1KiB to 1MiB",
        ),
        (
            "{ max_header_fields: 300 }",
            "listeners[1].front_door.max_header_fields",
            "use 1 to 256",
        ),
        (
            "{ max_request_line: 64KiB }",
            "listeners[1].front_door.max_request_line",
            "up to max_header_size",
        ),
        ("{ max_headers: 10 }", "listeners[1]", "unknown field"),
    ] {
        let errs = parse_config(&yaml(fd), Path::new("t.yaml")).expect_err(fd);
        let shown = errs.to_string();
        assert!(errs.mentions(path), "{fd}: no error at {path}: {shown}");
        assert!(shown.contains(text), "{fd}: {shown}");
    }
}
