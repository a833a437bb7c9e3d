//! A registration-storm load generator: N simulated hosts run the
//! `subscription-manager` registration flow against a target over plain
//! HTTP/1.1 and the run is summarised in a [`StormReport`].
//!
//! Each host keeps one keep-alive connection and sends, in order:
//! `GET /register?activation_keys=ak-<k>&location_id=2`, `POST /rhsm/consumers` (where a
//! new host enters; the expensive step), then three follow-ups of a host under way:
//! `GET /rhsm/consumers/<uuid>`, `GET /rhsm/consumers/<uuid>/certificates`,
//! `GET /rhsm/consumers/<uuid>/content_overrides`. Every request carries
//! `X-Storm-Host: <i>` so the app server can tell whose work it did. A host passes when all
//! five answer 2xx within its whole-registration `deadline`; when it fails it gives up its
//! connection at once (like subscription-manager), and [`StormReport::outcomes`] records
//! when, so work the app did after that can be counted as wasted. Like
//! subscription-manager, a 503 fails the host's attempt at once (no retry);
//! such hosts are reported separately, and `told_within_1s` counts those told
//! quickly, which is what a fail-fast gateway is for.
//!
//! Also exports [`SimpleClient`], the minimal HTTP/1.1 client the hosts use,
//! handy in tests that need byte-level control.

use super::{
    body_framing, owned_headers, read_body, wants_keep_alive, BodyFraming, MAX_HEAD_BYTES,
};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A 503 answered within this long after its request was sent counts as
/// "told within 1 s".
pub const TOLD_QUICKLY: Duration = Duration::from_secs(1);

/// Settings of one storm.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Where to send the requests (gateway or origin).
    pub target: SocketAddr,
    /// Number of simulated hosts. Default 100.
    pub hosts: usize,
    /// Host `i` starts at `ramp * i / hosts`; zero (default) = all at once.
    pub ramp: Duration,
    /// Whole-registration deadline per host, from its start. Default 180 s
    /// (subscription-manager's client timeout).
    pub deadline: Duration,
    /// Limit for one request (further capped by the time left before the
    /// deadline). Default 180 s.
    pub per_request_timeout: Duration,
    /// true (default) = one keep-alive connection per host; false = a new
    /// connection per request.
    pub keep_alive: bool,
    /// Distinct activation keys `ak-0..ak-<n>` spread over hosts (so a cache
    /// sees `n` distinct `/register` keys). Default 4; 0 is treated as 1.
    pub activation_keys: usize,
}

impl StormConfig {
    /// Defaults against `target`.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            hosts: 100,
            ramp: Duration::ZERO,
            deadline: Duration::from_secs(180),
            per_request_timeout: Duration::from_secs(180),
            keep_alive: true,
            activation_keys: 4,
        }
    }
}

/// Why a host failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFailure {
    /// The whole-registration deadline passed.
    Deadline,
    /// One request exceeded `per_request_timeout` (before the deadline).
    RequestTimeout,
    /// A 503 answer, `after` its request was sent.
    Rejected { after: Duration },
    /// Another non-2xx status.
    Status(u16),
    /// Connect, read or write failure, or an unparsable response.
    Io(String),
}

/// Summary of a storm.
#[derive(Debug, Clone, Default)]
pub struct StormReport {
    /// Hosts started.
    pub hosts: usize,
    /// Hosts whose four requests all answered 2xx before the deadline.
    pub passed: usize,
    /// `hosts - passed`.
    pub failed: usize,
    /// `passed / hosts` in 0..=1 (0 when `hosts` is 0).
    pub pass_rate: f64,
    /// Median completion time of passed hosts (zero if none passed).
    pub p50: Duration,
    /// 99th percentile completion time of passed hosts (zero if none passed).
    pub p99: Duration,
    /// Slowest passed host.
    pub max_passed: Duration,
    /// Hosts that got a 503 within [`TOLD_QUICKLY`] of the request.
    pub told_within_1s: usize,
    /// Hosts failed by a 503 (quick or not).
    pub rejected_503: usize,
    /// Median time from request to 503 of the hosts failed by one (zero if none).
    pub told_p50: Duration,
    /// 90th percentile of that time.
    pub told_p90: Duration,
    /// Longest such time.
    pub told_max: Duration,
    /// Hosts that ran out of their whole-registration deadline.
    pub deadline_exceeded: usize,
    /// Hosts failed by one request exceeding `per_request_timeout`.
    pub request_timeouts: usize,
    /// Hosts failed by a non-503, non-2xx status.
    pub bad_status: usize,
    /// Hosts failed by connect/read/write errors or unparsable responses.
    pub io_errors: usize,
    /// Requests written to the wire (reconnect retries included).
    pub requests_sent: u64,
    /// Responses received per status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Per host: (index, passed, Unix ms when it finished or gave up).
    pub outcomes: Vec<(usize, bool, u64)>,
}

impl StormReport {
    /// The report as JSON, durations in milliseconds, for benchmark scripts.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        serde_json::json!({
            "hosts": self.hosts, "passed": self.passed, "failed": self.failed,
            "pass_rate": self.pass_rate, "p50_ms": ms(self.p50), "p99_ms": ms(self.p99),
            "max_passed_ms": ms(self.max_passed), "told_within_1s": self.told_within_1s,
            "told_p50_ms": ms(self.told_p50), "told_p90_ms": ms(self.told_p90),
            "told_max_ms": ms(self.told_max),
            "rejected_503": self.rejected_503, "deadline_exceeded": self.deadline_exceeded,
            "request_timeouts": self.request_timeouts, "bad_status": self.bad_status,
            "io_errors": self.io_errors, "requests_sent": self.requests_sent,
            "by_status": self.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "wall_ms": ms(self.wall),
        })
    }
}

impl fmt::Display for StormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "hosts {} passed {} failed {} pass_rate {:.1}% wall {:.1}s",
            self.hosts,
            self.passed,
            self.failed,
            self.pass_rate * 100.0,
            self.wall.as_secs_f64()
        )?;
        writeln!(
            f,
            "passed completion p50 {:.2}s p99 {:.2}s max {:.2}s",
            self.p50.as_secs_f64(),
            self.p99.as_secs_f64(),
            self.max_passed.as_secs_f64()
        )?;
        writeln!(
            f,
            "failures: deadline {} request_timeout {} 503 {} (told within 1s {}) other_status {} io {}",
            self.deadline_exceeded,
            self.request_timeouts,
            self.rejected_503,
            self.told_within_1s,
            self.bad_status,
            self.io_errors
        )?;
        write!(
            f,
            "requests_sent {} by_status {:?}",
            self.requests_sent, self.by_status
        )
    }
}

/// Runs the storm to completion: every host passes or fails within its
/// deadline (plus connection teardown), so this returns after about
/// `ramp + deadline` at most. Never fails; problems are counted per host.
pub async fn run_storm(cfg: StormConfig) -> StormReport {
    let started = Instant::now();
    let mut hosts = JoinSet::new();
    for i in 0..cfg.hosts {
        let cfg = cfg.clone();
        let offset = if cfg.hosts == 0 {
            Duration::ZERO
        } else {
            cfg.ramp.mul_f64(i as f64 / cfg.hosts as f64)
        };
        hosts.spawn(async move {
            tokio::time::sleep_until(started + offset).await;
            run_host(i, &cfg).await
        });
    }
    let mut report = StormReport {
        hosts: cfg.hosts,
        ..StormReport::default()
    };
    let mut completions = Vec::with_capacity(cfg.hosts);
    let mut told = Vec::new();
    while let Some(joined) = hosts.join_next().await {
        let run = match joined {
            Ok(run) => run,
            Err(e) => HostRun::new(
                usize::MAX,
                Err(HostFailure::Io(format!("host task failed: {e}"))),
            ),
        };
        report
            .outcomes
            .push((run.host, run.result.is_ok(), run.end_ms));
        report.requests_sent += run.requests_sent;
        for status in run.statuses {
            *report.by_status.entry(status).or_insert(0) += 1;
        }
        match run.result {
            Ok(took) => completions.push(took),
            Err(failure) => match failure {
                HostFailure::Deadline => report.deadline_exceeded += 1,
                HostFailure::RequestTimeout => report.request_timeouts += 1,
                HostFailure::Rejected { after } => told.push(after),
                HostFailure::Status(_) => report.bad_status += 1,
                HostFailure::Io(_) => report.io_errors += 1,
            },
        }
    }
    completions.sort_unstable();
    told.sort_unstable();
    report.rejected_503 = told.len();
    report.told_within_1s = told.partition_point(|&after| after <= TOLD_QUICKLY);
    report.told_p50 = percentile(&told, 0.50);
    report.told_p90 = percentile(&told, 0.90);
    report.told_max = told.last().copied().unwrap_or_default();
    report.passed = completions.len();
    report.failed = cfg.hosts - report.passed;
    report.pass_rate = if cfg.hosts == 0 {
        0.0
    } else {
        report.passed as f64 / cfg.hosts as f64
    };
    report.p50 = percentile(&completions, 0.50);
    report.p99 = percentile(&completions, 0.99);
    report.max_passed = completions.last().copied().unwrap_or_default();
    report.wall = started.elapsed();
    report
}

/// Nearest-rank percentile of sorted samples; zero when empty.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Debug)]
struct HostRun {
    host: usize,
    result: Result<Duration, HostFailure>,
    requests_sent: u64,
    statuses: Vec<u16>,
    end_ms: u64,
}

impl HostRun {
    fn new(host: usize, result: Result<Duration, HostFailure>) -> Self {
        Self {
            host,
            result,
            requests_sent: 0,
            statuses: Vec::new(),
            end_ms: 0,
        }
    }
}

/// One host's connection and progress.
struct Flow<'a> {
    cfg: &'a StormConfig,
    client: SimpleClient,
    run: HostRun,
    deadline_at: Instant,
    host: String,
}

impl Flow<'_> {
    async fn step(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Bytes, HostFailure> {
        step(
            self.cfg,
            &mut self.client,
            &mut self.run,
            self.deadline_at,
            &self.host,
            method,
            path,
            body,
        )
        .await
    }
}

async fn run_host(i: usize, cfg: &StormConfig) -> HostRun {
    let started = Instant::now();
    let mut flow = Flow {
        cfg,
        client: SimpleClient::new(cfg.target),
        run: HostRun::new(i, Err(HostFailure::Deadline)),
        deadline_at: started + cfg.deadline,
        host: i.to_string(),
    };
    let key = i % cfg.activation_keys.max(1);
    let register = format!("/register?activation_keys=ak-{key}&location_id=2");
    let consumer = format!(
        "{{\"name\":\"host-{i}.example.com\",\"type\":\"system\",\"facts\":{{\"cpu.cpu_socket(s)\":\"1\",\"network.fqdn\":\"host-{i}.example.com\"}}}}"
    );
    let result = async {
        flow.step("GET", &register, None).await?;
        let body = flow
            .step("POST", "/rhsm/consumers", Some(consumer.as_bytes()))
            .await?;
        let uuid = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("uuid").and_then(|u| u.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("host-{i}"));
        for tail in ["", "/certificates", "/content_overrides"] {
            flow.step("GET", &format!("/rhsm/consumers/{uuid}{tail}"), None)
                .await?;
        }
        Ok(started.elapsed())
    }
    .await;
    // A host that failed gives up now: its connection closes (like subscription-manager).
    flow.client.close();
    let mut run = flow.run;
    run.result = result;
    run.end_ms = crate::origin::epoch_ms();
    run
}

/// One request of the flow; returns the 2xx body or why the host failed.
#[allow(clippy::too_many_arguments)]
async fn step(
    cfg: &StormConfig,
    client: &mut SimpleClient,
    run: &mut HostRun,
    deadline_at: Instant,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Bytes, HostFailure> {
    let now = Instant::now();
    if now >= deadline_at {
        return Err(HostFailure::Deadline);
    }
    let left = deadline_at - now;
    let limit = cfg.per_request_timeout.min(left);
    if !cfg.keep_alive {
        client.close();
    }
    let sent_at = Instant::now();
    let json = [("X-Storm-Host", host), ("Content-Type", "application/json")];
    let headers: &[(&str, &str)] = if body.is_some() { &json } else { &json[..1] };
    let outcome = tokio::time::timeout(limit, client.request(method, path, headers, body)).await;
    run.requests_sent += client.take_sent();
    let resp = match outcome {
        Err(_) if limit < cfg.per_request_timeout => return Err(HostFailure::Deadline),
        Err(_) => return Err(HostFailure::RequestTimeout),
        Ok(Err(e)) => return Err(HostFailure::Io(e.to_string())),
        Ok(Ok(resp)) => resp,
    };
    run.statuses.push(resp.status);
    match resp.status {
        200..=299 => Ok(resp.body),
        503 => Err(HostFailure::Rejected {
            after: sent_at.elapsed(),
        }),
        other => Err(HostFailure::Status(other)),
    }
}

/// A response read by [`SimpleClient`].
#[derive(Debug, Clone)]
pub struct SimpleResponse {
    /// Status code.
    pub status: u16,
    /// Header pairs with lowercase names, in wire order.
    pub headers: Vec<(String, String)>,
    /// Decoded body (de-chunked).
    pub body: Bytes,
}

impl SimpleResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 client over one reusable connection: `Content-Length`
/// request bodies, `Content-Length`/chunked/until-close response bodies.
/// Connects lazily; if a reused connection turns out closed before any
/// response byte arrives, it reconnects and resends once.
pub struct SimpleClient {
    target: SocketAddr,
    conn: Option<(TcpStream, BytesMut)>,
    sent: u64,
}

impl SimpleClient {
    /// A client for `target`; nothing is connected yet.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            conn: None,
            sent: 0,
        }
    }

    /// Drops the current connection, if any.
    pub fn close(&mut self) {
        self.conn = None;
    }

    /// Whether a connection is open (kept alive by the last response).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Requests written since the last call.
    fn take_sent(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
    }

    /// Sends one request and reads its response. `headers` are added after
    /// `Host`; `Content-Length` is set when `body` is given. Fails on
    /// connect/IO errors or an unparsable response; no timeout of its own.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<SimpleResponse> {
        let mut wire = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            wire.push_str(&format!("Host: {}\r\n", self.target));
        }
        for (n, v) in headers {
            wire.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(body) = body {
            wire.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        wire.push_str("\r\n");
        let mut bytes = wire.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());

        let reused = self.conn.is_some();
        match self.exchange(method, &bytes).await {
            Ok(resp) => Ok(resp),
            Err((e, got_bytes)) if reused && !got_bytes => {
                log::debug!("storm client: reused connection failed ({e}), reconnecting");
                self.conn = None;
                self.exchange(method, &bytes).await.map_err(|(e, _)| e)
            }
            Err((e, _)) => Err(e),
        }
    }

    /// Writes `wire` and reads one response; the error carries whether any
    /// response byte had arrived (if not, a retry on a new connection is safe).
    async fn exchange(
        &mut self,
        method: &str,
        wire: &[u8],
    ) -> Result<SimpleResponse, (io::Error, bool)> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.target)
                .await
                .map_err(|e| (e, false))?;
            let _ = stream.set_nodelay(true);
            self.conn = Some((stream, BytesMut::with_capacity(4096)));
        }
        let Some((stream, buf)) = self.conn.as_mut() else {
            return Err((io::Error::other("no connection"), false));
        };
        buf.clear();
        stream.write_all(wire).await.map_err(|e| (e, false))?;
        self.sent += 1;
        let result = read_response(stream, buf, method == "HEAD").await;
        match result {
            Ok((resp, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Reads one response (skipping 1xx); returns it and whether the connection
/// may be reused.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<(SimpleResponse, bool), (io::Error, bool)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = parsed.code.unwrap_or(0);
                let version = parsed.version.unwrap_or(1);
                let headers = owned_headers(parsed.headers);
                buf.advance(head_len);
                if (100..200).contains(&status) {
                    continue;
                }
                let no_body = head_request || status == 204 || status == 304;
                let framing = if no_body {
                    BodyFraming::None
                } else {
                    body_framing(&headers, BodyFraming::UntilClose).map_err(|e| (e, true))?
                };
                let keep =
                    framing != BodyFraming::UntilClose && wants_keep_alive(version, &headers);
                let body = read_body(stream, buf, framing)
                    .await
                    .map_err(|e| (e, true))?;
                return Ok((
                    SimpleResponse {
                        status,
                        headers,
                        body,
                    },
                    keep,
                ));
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err((super::invalid("unparsable response head"), true)),
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err((super::invalid("response head too large"), true));
        }
        buf.reserve(4096);
        let got_any = !buf.is_empty();
        match stream.read_buf(buf).await {
            Ok(0) => {
                return Err((
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a full response",
                    ),
                    got_any,
                ))
            }
            Ok(_) => {}
            Err(e) => return Err((e, got_any)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::origin::{start_origin, OriginConfig};
    use super::*;

    fn origin_cfg(slots: usize, base_ms: u64, collapse: f64) -> OriginConfig {
        OriginConfig {
            name: "app".to_string(),
            slots,
            base_service: Duration::from_millis(base_ms),
            collapse,
            render_time: Duration::from_millis(base_ms),
            work_for_gone_clients: true,
            ..OriginConfig::default()
        }
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(
            percentile(&v, 0.5),
            Duration::from_millis(50),
            "p50 of 1..=100"
        );
        assert_eq!(
            percentile(&v, 0.99),
            Duration::from_millis(99),
            "p99 of 1..=100"
        );
        assert_eq!(percentile(&[], 0.5), Duration::ZERO, "empty is zero");
    }

    #[tokio::test]
    async fn storm_against_roomy_origin_passes_every_host_on_one_connection_each() {
        let origin = start_origin(origin_cfg(64, 2, 0.0)).await.unwrap();
        let cfg = StormConfig {
            hosts: 60,
            ramp: Duration::from_millis(200),
            deadline: Duration::from_secs(10),
            ..StormConfig::new(origin.addr())
        };
        let report = run_storm(cfg).await;
        assert_eq!(report.passed, 60, "all hosts pass: {report}");
        assert_eq!(report.pass_rate, 1.0, "pass rate 1: {report}");
        assert_eq!(
            report.requests_sent, 300,
            "five requests per host: {report}"
        );
        assert_eq!(report.by_status.get(&200), Some(&300), "all 200: {report}");
        assert_eq!(report.outcomes.len(), 60, "one outcome per host");
        assert!(report.outcomes.iter().all(|(_, ok, ms)| *ok && *ms > 0));
        let stats = origin.stats();
        assert_eq!(
            stats.connections, 60,
            "one keep-alive connection per host: {stats:?}"
        );
        assert_eq!(stats.renders, 60, "one render per host");
        assert!(
            report.p50 > Duration::ZERO && report.p99 >= report.p50,
            "percentiles set: {report}"
        );
    }

    #[tokio::test]
    async fn storm_against_tiny_origin_with_short_deadline_fails_some() {
        // 2 workers, 20 ms per request: 4 requests per host need 80 ms of one
        // worker, so 80 hosts need 3.2 s even without collapse; collapse makes it worse.
        let origin = start_origin(origin_cfg(2, 20, 1.0)).await.unwrap();
        let cfg = StormConfig {
            hosts: 80,
            deadline: Duration::from_millis(1500),
            ..StormConfig::new(origin.addr())
        };
        let report = run_storm(cfg).await;
        assert!(report.failed > 0, "collapse must fail some hosts: {report}");
        assert_eq!(
            report.deadline_exceeded, report.failed,
            "failures are deadline misses: {report}"
        );
        assert!(
            report.wall < Duration::from_secs(3),
            "run bounded by the deadline: {report}"
        );
        assert!(
            origin.stats().max_concurrent >= 40,
            "the crowd reached the app: {:?}",
            origin.stats()
        );
    }

    #[tokio::test]
    async fn storm_counts_quick_503_rejections_separately() {
        let origin = start_origin(origin_cfg(8, 1, 0.0)).await.unwrap();
        origin.set_status_override("/rhsm/consumers", Some(503));
        let report = run_storm(StormConfig {
            hosts: 20,
            ..StormConfig::new(origin.addr())
        })
        .await;
        assert_eq!(
            report.rejected_503, 20,
            "every host rejected at POST: {report}"
        );
        assert_eq!(report.told_within_1s, 20, "rejections were quick: {report}");
        assert_eq!(
            report.by_status.get(&503),
            Some(&20),
            "503 counted: {report}"
        );
        assert_eq!(
            report.by_status.get(&200),
            Some(&20),
            "register answered first: {report}"
        );
        assert_eq!(report.passed, 0, "none pass: {report}");
    }

    #[tokio::test]
    async fn storm_without_keep_alive_opens_a_connection_per_request() {
        let origin = start_origin(origin_cfg(8, 1, 0.0)).await.unwrap();
        let cfg = StormConfig {
            hosts: 5,
            keep_alive: false,
            ..StormConfig::new(origin.addr())
        };
        let report = run_storm(cfg).await;
        assert_eq!(report.passed, 5, "all pass: {report}");
        assert_eq!(origin.stats().connections, 25, "one connection per request");
    }

    #[tokio::test]
    async fn unreachable_target_counts_io_errors() {
        let origin = start_origin(origin_cfg(1, 1, 0.0)).await.unwrap();
        let addr = origin.addr();
        origin.shutdown().await;
        let report = run_storm(StormConfig {
            hosts: 3,
            ..StormConfig::new(addr)
        })
        .await;
        assert_eq!(
            report.io_errors, 3,
            "connect refused is an io error: {report}"
        );
    }
}
