//! Active health checks end to end (issue 4): rise/fall against origins that stop, answer
//! 500 or come back; `expect`; backups; the `upstream_health` endpoint; health across a
//! reload; health metrics; readiness after the first round.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use floodgate_testkit::origin::start_origin_at;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Probe settings shared by most tests: a probe every 200 ms, down after 2 failures, up
/// after 2 passes. Passive detection is off so only active checks move health.
const TWO_SERVERS: &str = r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@" }, { name: b, addr: "@B@" }]
    health: { path: /api/status, interval: 200ms, timeout: 200ms, rise: 2, fall: 2, expect: 2xx }
    observe: { failures: 0 }
    timeouts: { read: @READ@ }
routes:
  - { name: hc, match: { path: /register/health }, respond: upstream_health, health_of: u }
  - { name: extra, match: { path_prefix: @EXTRA@ }, upstream: u }
  - { name: all, match: { path_prefix: / }, upstream: u }
"#;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(200);
const FALL: u32 = 2;
const RISE: f64 = 2.0;

/// Fills `@NAME@` placeholders of a config template (the harness fills `{PORT}` etc.).
fn conf(template: &str, subs: &[(&str, String)]) -> String {
    subs.iter()
        .fold(template.to_string(), |t, (k, v)| t.replace(k, v))
}

fn two_servers(a: &OriginHandle, b: &OriginHandle) -> String {
    conf(
        TWO_SERVERS,
        &[
            ("@A@", a.addr().to_string()),
            ("@B@", b.addr().to_string()),
            ("@READ@", "30s".into()),
            ("@EXTRA@", "/extra".into()),
        ],
    )
}

/// `healthy` of one server in the admin `/status` JSON.
async fn healthy(gw: &TestGateway, upstream: &str, server: &str) -> bool {
    let st = status(gw).await;
    let servers = st["upstreams"][upstream]["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no upstream {upstream}: {st}"));
    let s = servers
        .iter()
        .find(|s| s["name"] == server)
        .unwrap_or_else(|| panic!("no server {server}: {st}"));
    s["healthy"].as_bool().unwrap()
}

async fn wait_health(gw: &TestGateway, upstream: &str, server: &str, want: bool) {
    let ok = eventually(Duration::from_secs(3), || async {
        healthy(gw, upstream, server).await == want
    })
    .await;
    assert!(
        ok,
        "{upstream}/{server} never became healthy={want}: {}",
        status(gw).await
    );
}

/// Sends `n` GETs to `path` one after another; returns (status, X-Origin or "-") of each.
async fn send(gw: &TestGateway, n: usize, path: &str) -> Vec<(u16, String)> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c.get(gw.url(path)).send().await.unwrap();
        let origin = r
            .headers()
            .get("x-origin")
            .map_or("-".to_string(), |v| v.to_str().unwrap().to_string());
        out.push((r.status().as_u16(), origin));
    }
    out
}

async fn checks(gw: &TestGateway, upstream: &str, server: &str, result: &str) -> f64 {
    gw.metric(
        "floodgate_health_checks_total",
        &[
            ("upstream", upstream),
            ("server", server),
            ("result", result),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_stops_listening_is_marked_down_within_fall_intervals_and_returns_after_rise_passes(
) {
    let a = origin("a").await;
    let b = origin("b").await;
    let gw = TestGateway::start(&two_servers(&a, &b)).await;
    let before = send(&gw, 10, "/x").await;
    assert!(before.iter().all(|(s, _)| *s == 200), "{before:?}");
    assert!(
        before.iter().any(|(_, o)| o == "a") && before.iter().any(|(_, o)| o == "b"),
        "both serve: {before:?}"
    );

    let addr = a.addr();
    a.shutdown().await;
    let t0 = Instant::now();
    wait_health(&gw, "u", "a", false).await;
    let took = t0.elapsed();
    // why: + 100 ms for the health loop's 50 ms tick (twice) and this test's 20 ms polling
    let bound = INTERVAL * FALL + TIMEOUT + Duration::from_millis(100);
    assert!(
        took <= bound,
        "marked down after {took:?}; fall x interval + timeout is {bound:?}"
    );
    let during = send(&gw, 20, "/x").await;
    assert!(
        during.iter().all(|(s, o)| *s == 200 && o == "b"),
        "every request served by b while a is down: {during:?}"
    );

    let passes_before = checks(&gw, "u", "a", "pass").await;
    let a2 = start_origin_at(
        OriginConfig {
            name: "a".into(),
            ..OriginConfig::default()
        },
        addr,
    )
    .await
    .unwrap();
    wait_health(&gw, "u", "a", true).await;
    let passes = checks(&gw, "u", "a", "pass").await - passes_before;
    assert!(
        passes >= RISE,
        "a came back after {passes} passing checks; rise is {RISE}"
    );
    let after = send(&gw, 20, "/x").await;
    assert!(after.iter().all(|(s, _)| *s == 200), "{after:?}");
    assert!(
        after.iter().any(|(_, o)| o == "a"),
        "traffic returns to a: {after:?}"
    );
    assert!(
        a2.stats().per_path.get("/x").is_some_and(|n| *n > 0),
        "the restarted origin serves: {:?}",
        a2.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_any_treats_a_500_as_reachable_and_expect_2xx_does_not() {
    let x = origin("x").await;
    x.set_status_override("/api/status", Some(500));
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  lenient:
    servers: [{ name: x, addr: "@X@" }]
    health: { interval: 200ms, timeout: 200ms, rise: 2, fall: 2, expect: any }
  strict:
    servers: [{ name: x, addr: "@X@" }]
    health: { interval: 200ms, timeout: 200ms, rise: 2, fall: 2, expect: 2xx }
routes:
  - { name: lenient, match: { path_prefix: /lenient }, upstream: lenient }
  - { name: strict, match: { path_prefix: /strict }, upstream: strict }
"#,
        &[("@X@", x.addr().to_string())],
    ))
    .await;
    // Let a few more probes run, so this is not just the first check.
    let probed = eventually(Duration::from_secs(3), || async {
        checks(&gw, "strict", "x", "bad_status").await >= 3.0
    })
    .await;
    assert!(probed, "strict probes counted as bad_status");
    assert!(
        healthy(&gw, "lenient", "x").await,
        "expect: any accepts a 500 answer"
    );
    assert!(
        !healthy(&gw, "strict", "x").await,
        "expect: 2xx refuses a 500 answer"
    );
    assert!(
        checks(&gw, "lenient", "x", "pass").await >= 3.0,
        "lenient probes of the same 500 pass"
    );
    let lenient = send(&gw, 3, "/lenient/page").await;
    assert!(
        lenient.iter().all(|(s, o)| *s == 200 && o == "x"),
        "lenient upstream serves: {lenient:?}"
    );
    let strict = send(&gw, 3, "/strict/page").await;
    assert!(
        strict.iter().all(|(s, _)| *s == 503),
        "strict upstream has no healthy server: {strict:?}"
    );
    assert_eq!(
        x.stats().per_path.get("/strict/page"),
        None,
        "nothing sent through the strict upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_never_passed_a_check_gets_no_traffic() {
    let a = origin("a").await;
    let b = origin("b").await;
    a.set_status_override("/api/status", Some(500));
    let gw = TestGateway::start(&two_servers(&a, &b)).await;
    let got = send(&gw, 30, "/x").await;
    assert!(
        got.iter().all(|(s, o)| *s == 200 && o == "b"),
        "every request goes to b: {got:?}"
    );
    let stats = a.stats();
    assert_eq!(
        stats.per_path.get("/x"),
        None,
        "a never got a request: {stats:?}"
    );
    assert!(
        stats.per_path.get("/api/status").is_some_and(|n| *n >= 1),
        "a was probed: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_when_all_primaries_are_down_and_nothing_up_answers_503_at_once() {
    let p1 = origin("p1").await;
    let p2 = origin("p2").await;
    let bk = origin("bk").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers:
      - { name: p1, addr: "@P1@" }
      - { name: p2, addr: "@P2@" }
      - { name: bk, addr: "@BK@", backup: true }
    health: { interval: 200ms, timeout: 200ms, rise: 2, fall: 1, expect: 2xx }
    observe: { failures: 0 }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[
            ("@P1@", p1.addr().to_string()),
            ("@P2@", p2.addr().to_string()),
            ("@BK@", bk.addr().to_string()),
        ],
    ))
    .await;
    let got = send(&gw, 10, "/x").await;
    assert!(
        got.iter()
            .all(|(s, o)| *s == 200 && (o == "p1" || o == "p2")),
        "primaries serve: {got:?}"
    );
    assert_eq!(
        bk.stats().per_path.get("/x"),
        None,
        "the backup idles while a primary is up"
    );

    p1.set_status_override("/api/status", Some(500));
    p2.set_status_override("/api/status", Some(500));
    wait_health(&gw, "u", "p1", false).await;
    wait_health(&gw, "u", "p2", false).await;
    let got = send(&gw, 10, "/x").await;
    assert!(
        got.iter().all(|(s, o)| *s == 200 && o == "bk"),
        "the backup serves when all primaries are down: {got:?}"
    );

    bk.set_status_override("/api/status", Some(500));
    wait_health(&gw, "u", "bk", false).await;
    let c = client();
    for _ in 0..5 {
        let t = Instant::now();
        let r = c.get(gw.url("/x")).send().await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.status(), 503, "nothing is up");
        assert!(
            r.headers().get("retry-after").is_some(),
            "503 carries Retry-After"
        );
        assert!(
            took < Duration::from_millis(50),
            "answered without waiting: {took:?}"
        );
    }
    assert_eq!(
        bk.stats().per_path.get("/x"),
        Some(&10),
        "nothing more reached the backup once it was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_health_route_answers_200_or_503_naming_the_healthy_servers() {
    let a = origin("a").await;
    let b = origin("b").await;
    let gw = TestGateway::start(&two_servers(&a, &b)).await;
    let c = client();
    let report = || async {
        let r = c.get(gw.url("/register/health")).send().await.unwrap();
        let code = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").is_some();
        let body: Value = r.json().await.unwrap();
        (code, retry_after, body)
    };
    let (code, _, body) = report().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["healthy"], serde_json::json!(["a", "b"]), "{body}");
    assert_eq!(body["total"], 2, "{body}");

    a.set_status_override("/api/status", Some(503));
    let one_left = eventually(Duration::from_secs(3), || async {
        report().await.2["healthy"] == serde_json::json!(["b"])
    })
    .await;
    assert!(one_left, "report drops a: {:?}", report().await);
    assert_eq!(report().await.0, 200, "one healthy server is still 200");

    b.set_status_override("/api/status", Some(503));
    let none = eventually(Duration::from_secs(3), || async { report().await.0 == 503 }).await;
    assert!(none, "503 once no server is healthy: {:?}", report().await);
    let (_, retry_after, body) = report().await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["healthy"], serde_json::json!([]), "{body}");
    assert!(retry_after, "the 503 carries Retry-After");

    a.set_status_override("/api/status", None);
    b.set_status_override("/api/status", None);
    let back = eventually(Duration::from_secs(3), || async {
        report().await.2["healthy"] == serde_json::json!(["a", "b"])
    })
    .await;
    assert!(back, "both back: {:?}", report().await);
    assert_eq!(report().await.0, 200);
    assert_eq!(
        a.stats().per_path.get("/register/health"),
        None,
        "the report is answered by the gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_config_reload() {
    let a = origin("a").await;
    let b = origin("b").await;
    let gw = TestGateway::start(&two_servers(&a, &b)).await;
    a.set_status_override("/api/status", Some(500));
    wait_health(&gw, "u", "a", false).await;
    let a_served = a.stats().per_path.get("/x").copied();
    let c = client();

    // 1) an unrelated route changes: the upstream is kept as is
    // 2) the upstream itself changes (read timeout): it is rebuilt, its servers keep their state
    for (read, extra) in [("30s", "/extra2"), ("31s", "/extra2")] {
        let subs = [
            ("@A@", a.addr().to_string()),
            ("@B@", b.addr().to_string()),
            ("@READ@", read.into()),
            ("@EXTRA@", extra.into()),
        ];
        gw.write_config(&conf(TWO_SERVERS, &subs));
        let r = c.post(gw.admin("/reload")).send().await.unwrap();
        let code = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (code.as_u16(), &body["result"]),
            (200, &Value::from("ok")),
            "reload accepted: {body}"
        );
        let right_after = send(&gw, 20, "/x").await;
        assert!(
            right_after.iter().all(|(s, o)| *s == 200 && o == "b"),
            "right after reload (read {read}): healthy b keeps serving, down a gets nothing: {right_after:?}"
        );
        assert!(
            !healthy(&gw, "u", "a").await,
            "a is still down after reload (read {read})"
        );
    }
    assert_eq!(
        a.stats().per_path.get("/x").copied(),
        a_served,
        "no traffic reached the down server"
    );
    assert_eq!(
        send(&gw, 1, "/extra2/y").await[0],
        (200, "b".to_string()),
        "the reloaded route is live"
    );

    // Kept state means a comes back after `rise` passes, not on its first one as a new server would.
    let passes_before = checks(&gw, "u", "a", "pass").await;
    a.set_status_override("/api/status", None);
    wait_health(&gw, "u", "a", true).await;
    let passes = checks(&gw, "u", "a", "pass").await - passes_before;
    assert!(
        passes >= RISE,
        "a came back after {passes} passes; rise is {RISE}"
    );
}

async fn healthy_gauge(gw: &TestGateway, server: &str) -> f64 {
    gw.metric(
        "floodgate_upstream_healthy",
        &[("upstream", "u"), ("server", server)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_follow_the_checks() {
    let a = origin("a").await;
    let b = origin("b").await;
    let gw = TestGateway::start(&two_servers(&a, &b)).await;
    let gauge = |server: &'static str| healthy_gauge(&gw, server);
    assert_eq!(gauge("a").await, 1.0, "a healthy after the first round");
    assert_eq!(gauge("b").await, 1.0, "b healthy after the first round");
    assert!(
        checks(&gw, "u", "a", "pass").await >= 1.0,
        "a's passing check counted"
    );

    a.set_status_override("/api/status", Some(500));
    let down = eventually(Duration::from_secs(3), || async { gauge("a").await == 0.0 }).await;
    assert!(down, "floodgate_upstream_healthy{{server=a}} drops to 0");
    assert!(
        checks(&gw, "u", "a", "bad_status").await >= f64::from(FALL),
        "fall x bad_status counted"
    );

    b.shutdown().await;
    let refused = eventually(Duration::from_secs(3), || async { gauge("b").await == 0.0 }).await;
    assert!(refused, "floodgate_upstream_healthy{{server=b}} drops to 0");
    let failed = checks(&gw, "u", "b", "refused").await + checks(&gw, "u", "b", "error").await;
    assert!(
        failed >= f64::from(FALL),
        "b's failed probes counted as refused/error: {failed}"
    );
    let total = gw
        .metric("floodgate_health_checks_total", &[("upstream", "u")])
        .await;
    let timed = gw
        .metric("floodgate_health_check_duration_seconds_count", &[])
        .await;
    assert!(
        timed >= total && total > 0.0,
        "every check is timed: {timed} timings for {total} checks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_once_the_first_health_round_is_done_even_with_a_dead_server() {
    let live = origin("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let t = Instant::now();
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: live, addr: "@LIVE@" }, { name: dead, addr: "@DEAD@" }]
    health: { interval: 5s, timeout: 1s, rise: 2, fall: 2 }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@LIVE@", live.addr().to_string()), ("@DEAD@", dead)],
    ))
    .await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "ready after the first round, not the 10 s fallback: {took:?}"
    );
    let r = client().get(gw.admin("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "/readyz");
    // Both servers were checked once before readiness (a 5 s interval allows no second round).
    assert_eq!(
        checks(&gw, "u", "live", "pass").await,
        1.0,
        "live checked once"
    );
    assert_eq!(
        checks(&gw, "u", "dead", "refused").await,
        1.0,
        "dead checked once"
    );
    assert!(
        healthy(&gw, "u", "live").await,
        "first pass decides at once"
    );
    assert!(
        !healthy(&gw, "u", "dead").await,
        "first failure decides at once"
    );
    let got = send(&gw, 5, "/x").await;
    assert!(got.iter().all(|(s, o)| *s == 200 && o == "live"), "{got:?}");
}
