//! Gateway core: routing, balancing, failures, forwarding headers, metrics, reload.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use floodgate_testkit::storm::SimpleClient;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Replaces each `{KEY}` placeholder of `yaml` (besides the harness's `{PORT}`/`{ADMIN}`/`{DIR}`).
fn fill(yaml: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(yaml.to_string(), |y, (k, v)| {
        y.replace(&format!("{{{k}}}"), v)
    })
}

/// GET `path` with extra headers; returns (status, x-origin or "-").
async fn get_origin(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut rb = c.get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} {headers:?}: {e}"));
    let origin = r
        .headers()
        .get("x-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    (r.status().as_u16(), origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_to_the_upstream_and_answers_404_without_a_route() {
    let a = origin("a").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
upstreams:
  a: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: a }}
"#,
        a.addr()
    ))
    .await;
    let c = client();
    let r = c.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-origin"], "a");
    let r = c.get(gw.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 404, "no route matches /other");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&rid),
        "the 404 body names the request id: {body}"
    );
    // why: metrics are recorded in the logging phase, after the response is sent
    let counted = eventually(Duration::from_secs(3), || async {
        gw.metric(
            "floodgate_requests_total",
            &[("route", "none"), ("code", "404")],
        )
        .await
            == 1.0
            && gw
                .metric(
                    "floodgate_requests_total",
                    &[("route", "api"), ("code", "200")],
                )
                .await
                == 1.0
    })
    .await;
    assert!(
        counted,
        "the 200 is counted under route api and the local 404 under route none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_matcher_routes_and_the_first_matching_route_wins() {
    let names = [
        "hv", "hp", "wild", "exact", "path", "meth", "first", "second", "prefix",
    ];
    let mut origins = Vec::new();
    for n in names {
        origins.push(origin(n).await);
    }
    let mut vars: Vec<(&str, String)> = Vec::new();
    let mut ups = String::new();
    for (n, o) in names.iter().zip(&origins) {
        ups.push_str(&format!(
            "  {n}: {{ servers: [{{ addr: \"{}\" }}] }}\n",
            o.addr()
        ));
    }
    vars.push(("UPS", ups));
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
{UPS}
routes:
  - { name: header-value, match: { header: { name: X-Env, value: prod } }, upstream: hv }
  - { name: header-present, match: { header: { name: X-Node } }, upstream: hp }
  - { name: wildcard-host, match: { host: "*.example.com" }, upstream: wild }
  - { name: exact-host, match: { host: api.test }, upstream: exact }
  - { name: exact-path, match: { path: /exact }, upstream: path }
  - { name: post-only, match: { path_prefix: /m, methods: [POST] }, upstream: meth }
  - { name: first, match: { path_prefix: /dup }, upstream: first }
  - { name: second, match: { path_prefix: /dup }, upstream: second }
  - { name: prefix, match: { path_prefix: /api }, upstream: prefix }
"#,
        &vars,
    ))
    .await;
    let c = client();
    let u = |p: &str| gw.url(p);
    // (method, path, headers, expected origin or "404")
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/x", &[("X-Env", "prod")], "hv"),
        ("GET", "/x", &[("X-Env", "dev")], "404"),
        ("GET", "/x", &[("X-Node", "n1")], "hp"),
        ("GET", "/x", &[("X-Node", "n1"), ("X-Env", "prod")], "hv"),
        ("GET", "/x", &[("Host", "a.example.com")], "wild"),
        ("GET", "/x", &[("Host", "deep.a.example.com:8080")], "wild"),
        ("GET", "/x", &[("Host", "example.com")], "404"),
        ("GET", "/x", &[("Host", "API.test:8080")], "exact"),
        ("GET", "/x", &[("Host", "other.test")], "404"),
        ("GET", "/exact", &[], "path"),
        ("GET", "/exact/more", &[], "404"),
        ("POST", "/m/x", &[], "meth"),
        ("GET", "/m/x", &[], "404"),
        ("GET", "/dup/x", &[], "first"),
        ("GET", "/dup", &[], "first"),
        ("GET", "/api", &[], "prefix"),
        ("GET", "/api/v1/x", &[], "prefix"),
        ("GET", "/apix", &[], "404"),
    ];
    for (method, path, headers, want) in cases {
        let mut rb = c.request(method.parse().unwrap(), u(path));
        for (k, v) in headers.iter() {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.unwrap();
        let got = if r.status() == 404 && r.headers().get("x-origin").is_none() {
            "404".to_string()
        } else {
            assert_eq!(r.status(), 200, "{method} {path} {headers:?}");
            r.headers()["x-origin"].to_str().unwrap().to_string()
        };
        assert_eq!(
            &got, want,
            "{method} {path} {headers:?} should go to {want}"
        );
    }
    assert_eq!(
        origins[7].stats().requests,
        0,
        "the second of two identical routes never matches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_honours_3_to_1_within_10_percent_over_1000_requests() {
    let a = origin("a").await;
    let b = origin("b").await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  u:
    balance: round_robin
    servers: [{ addr: "{A}", weight: 3 }, { addr: "{B}", weight: 1 }]
routes: [{ name: all, upstream: u }]
"#,
        &[("A", a.addr().to_string()), ("B", b.addr().to_string())],
    ))
    .await;
    let c = client();
    let url = gw.url("/echo");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..125 {
                let (status, o) = get_origin(&c, &url, &[]).await;
                assert_eq!(status, 200);
                *counts.entry(o).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let na = counts.get("a").copied().unwrap_or(0);
    let nb = counts.get("b").copied().unwrap_or(0);
    assert_eq!(na + nb, 1000, "every request served by a or b: {counts:?}");
    assert!(
        (675..=825).contains(&na),
        "a (weight 3) should get 750 +-10%: {counts:?}"
    );
    assert!(
        (225..=275).contains(&nb),
        "b (weight 1) should get 250 +-10%: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_new_requests_to_the_idle_server_while_another_is_busy() {
    let a = origin("a").await;
    let b = origin("b").await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  u: { balance: least_conn, servers: [{ addr: "{A}" }, { addr: "{B}" }] }
routes: [{ name: all, upstream: u }]
"#,
        &[("A", a.addr().to_string()), ("B", b.addr().to_string())],
    ))
    .await;
    let c = client();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow?ms=3000"));
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().current_concurrent + b.stats().current_concurrent == 1
        })
        .await,
        "the slow request reaches an origin"
    );
    let (busy, idle) = if a.stats().current_concurrent == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };
    for i in 0..10 {
        let (status, o) = get_origin(&c, &gw.url("/echo"), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(
            o, idle,
            "quick request {i} goes to the idle server, not {busy} (busy with /slow)"
        );
    }
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_a_header_keeps_each_key_on_one_server() {
    let a = origin("a").await;
    let b = origin("b").await;
    let d = origin("d").await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  u:
    balance: hash
    hash_key: "header:X-Node"
    servers: [{ addr: "{A}" }, { addr: "{B}" }, { addr: "{D}" }]
routes: [{ name: all, upstream: u }]
"#,
        &[
            ("A", a.addr().to_string()),
            ("B", b.addr().to_string()),
            ("D", d.addr().to_string()),
        ],
    ))
    .await;
    let c = client();
    let mut used = HashSet::new();
    for k in 0..12 {
        let key = format!("node-{k}.example.com");
        let (_, first) = get_origin(&c, &gw.url("/echo"), &[("X-Node", &key)]).await;
        for _ in 0..5 {
            let (status, o) = get_origin(&c, &gw.url("/echo"), &[("X-Node", &key)]).await;
            assert_eq!(status, 200);
            assert_eq!(o, first, "key {key} stays on server {first}");
        }
        used.insert(first);
    }
    assert!(
        used.len() >= 2,
        "12 keys spread over more than one server: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_server_and_mark_the_dead_one_down_after_3() {
    let live = origin("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  u: { servers: [{ name: dead, addr: "{DEAD}" }, { name: live, addr: "{LIVE}" }] }
routes: [{ name: all, upstream: u }]
"#,
        &[("DEAD", dead.clone()), ("LIVE", live.addr().to_string())],
    ))
    .await;
    let c = client();
    for i in 0..50 {
        let (status, o) = get_origin(&c, &gw.url("/echo"), &[]).await;
        assert_eq!(status, 200, "request {i} succeeds through retry/redispatch");
        assert_eq!(o, "live", "request {i}");
    }
    let errors = gw
        .metric(
            "floodgate_upstream_requests_total",
            &[
                ("upstream", "u"),
                ("server", "dead"),
                ("code", "connect_error"),
            ],
        )
        .await;
    assert_eq!(
        errors, 3.0,
        "the dead server is tried until observe.failures (3) marks it down, then no more"
    );
    let status = status(&gw).await;
    let servers = status["upstreams"]["u"]["servers"].as_array().unwrap();
    let dead_s = servers.iter().find(|s| s["name"] == "dead").unwrap();
    let live_s = servers.iter().find(|s| s["name"] == "live").unwrap();
    assert_eq!(
        dead_s["healthy"], false,
        "dead server marked down: {status}"
    );
    assert_eq!(live_s["healthy"], true, "live server still up: {status}");
    assert_eq!(
        gw.metric(
            "floodgate_upstream_healthy",
            &[("upstream", "u"), ("server", "dead")]
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_answers_504_and_a_refused_only_server_answers_502_naming_the_request_id() {
    let a = origin("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  slowup: { servers: [{ addr: "{A}" }], timeouts: { read: 200ms } }
  deadup: { servers: [{ addr: "{DEAD}" }] }
routes:
  - { name: slow, match: { path_prefix: /slow }, upstream: slowup }
  - { name: dead, match: { path_prefix: /dead }, upstream: deadup }
"#,
        &[("A", a.addr().to_string()), ("DEAD", dead)],
    ))
    .await;
    let c = client();
    let t = Instant::now();
    let r = c.get(gw.url("/slow?ms=2000")).send().await.unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 504, "read timeout 200ms < 2000ms of work");
    assert!(
        took < Duration::from_millis(1500),
        "504 comes after the 200 ms read timeout, not the work: {took:?}"
    );
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(
        body.contains("504") && body.contains(&rid),
        "504 body names the request id {rid}: {body}"
    );

    let r = c
        .get(gw.url("/dead/x"))
        .header("X-Request-Id", "dead-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "the only server refuses connections");
    assert_eq!(r.headers()["x-request-id"], "dead-req-1");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("502") && body.contains("dead-req-1"),
        "502 body names the request id: {body}"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            gw.metric(
                "floodgate_requests_total",
                &[("route", "slow"), ("code", "504")],
            )
            .await
                == 1.0
                && gw
                    .metric(
                        "floodgate_requests_total",
                        &[("route", "dead"), ("code", "502")],
                    )
                    .await
                    == 1.0
        })
        .await,
        "504 and 502 counted by route"
    );
}

/// The `/echo` JSON's headers object.
fn echoed(
    resp: &floodgate_testkit::storm::SimpleResponse,
) -> serde_json::Map<String, serde_json::Value> {
    assert_eq!(resp.status, 200, "echo answered: {}", resp.text());
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["headers"].as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_are_dropped() {
    let a = origin("a").await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  a: { servers: [{ addr: "{A}" }] }
routes: [{ name: all, upstream: a }]
"#,
        &[("A", a.addr().to_string())],
    ))
    .await;
    let mut sc = SimpleClient::new(gw.addr());
    let r = sc
        .request(
            "GET",
            "/echo",
            &[
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Request-Id", "given-id-42"),
                ("Connection", "x-secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("X-Kept", "yes"),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        r.header("x-request-id"),
        Some("given-id-42"),
        "a given request id is returned"
    );
    let h = echoed(&r);
    assert_eq!(
        h["x-forwarded-for"], "1.2.3.4, 127.0.0.1",
        "client address appended: {h:?}"
    );
    assert_eq!(h["x-forwarded-proto"], "http", "{h:?}");
    assert_eq!(
        h["x-forwarded-host"],
        gw.addr().to_string(),
        "the Host the client sent: {h:?}"
    );
    assert_eq!(
        h["x-request-id"], "given-id-42",
        "a given request id is forwarded unchanged: {h:?}"
    );
    assert_eq!(h["x-kept"], "yes", "ordinary headers pass: {h:?}");
    for hop in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(
            !h.contains_key(hop),
            "hop-by-hop header {hop} must not reach the upstream: {h:?}"
        );
    }

    let r = sc.request("GET", "/echo", &[], None).await.unwrap();
    let h = echoed(&r);
    let sent = h["x-request-id"].as_str().unwrap_or("").to_string();
    assert!(
        !sent.is_empty(),
        "a request id is generated when none is given: {h:?}"
    );
    assert_eq!(
        r.header("x-request-id"),
        Some(sent.as_str()),
        "the response carries the id sent upstream"
    );
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "without an incoming XFF, just the client: {h:?}"
    );
    let r2 = sc.request("GET", "/echo", &[], None).await.unwrap();
    assert_ne!(
        r2.header("x-request-id"),
        Some(sent.as_str()),
        "each request gets its own id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_code_upstream_server_and_duration() {
    let a = origin("a").await;
    let server = a.addr().to_string();
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  a: { servers: [{ addr: "{A}" }] }
routes: [{ name: api, match: { path_prefix: / }, upstream: a }]
"#,
        &[("A", server.clone())],
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(
            c.get(gw.url("/status/404")).send().await.unwrap().status(),
            404
        );
    }
    let expect = [
        (
            "floodgate_requests_total",
            vec![("route", "api"), ("upstream", "a"), ("code", "200")],
            3.0,
        ),
        (
            "floodgate_requests_total",
            vec![("route", "api"), ("upstream", "a"), ("code", "404")],
            2.0,
        ),
        (
            "floodgate_upstream_requests_total",
            vec![
                ("upstream", "a"),
                ("server", server.as_str()),
                ("code", "200"),
            ],
            3.0,
        ),
        (
            "floodgate_upstream_requests_total",
            vec![
                ("upstream", "a"),
                ("server", server.as_str()),
                ("code", "404"),
            ],
            2.0,
        ),
        (
            "floodgate_request_duration_seconds_count",
            vec![("route", "api")],
            5.0,
        ),
    ];
    // why: metrics are recorded in the logging phase, after the response is sent
    let ok = eventually(Duration::from_secs(3), || async {
        let text = c
            .get(gw.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        expect.iter().all(|(n, l, v)| metric_in(&text, n, l) == *v)
    })
    .await;
    let text = c
        .get(gw.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (n, l, v) in &expect {
        assert_eq!(metric_in(&text, n, l), *v, "{n}{l:?} (converged: {ok})");
    }
    assert_eq!(
        metric_in(&text, "floodgate_requests_total", &[]),
        5.0,
        "nothing else counted"
    );
}

const RELOAD_V1: &str = r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  main: { servers: [{ addr: "{A}" }] }
routes:
  - { name: main, match: { path_prefix: /echo }, upstream: main }
"#;

const RELOAD_V2: &str = r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  main: { servers: [{ addr: "{B}" }] }
  extra: { servers: [{ addr: "{C}" }] }
routes:
  - { name: extra, match: { header: { name: X-Extra } }, upstream: extra }
  - { name: main, match: { path_prefix: /echo }, upstream: main }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_200_concurrent_clients_swaps_routes_and_upstream_without_a_failed_request() {
    let a = origin("a").await;
    let b = origin("b").await;
    let cc = origin("c").await;
    let vars = [
        ("A", a.addr().to_string()),
        ("B", b.addr().to_string()),
        ("C", cc.addr().to_string()),
    ];
    let gw = TestGateway::start(&fill(RELOAD_V1, &vars)).await;
    let c = client();
    assert_eq!(
        get_origin(&c, &gw.url("/echo"), &[("X-Extra", "1")]).await,
        (200, "a".to_string()),
        "v1 has no extra route"
    );

    // Each client sends until 1.3 s after the reload (at most 20 s in all).
    let start = Instant::now();
    let cap = start + Duration::from_secs(20);
    let reloaded_at: Arc<parking_lot::Mutex<Option<Instant>>> = Arc::default();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (c, url, reloaded_at) = (c.clone(), gw.url("/echo"), reloaded_at.clone());
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            // (ok, failures, origins of requests sent after the reload finished)
            let mut ok = 0usize;
            let mut failures = Vec::new();
            let mut after = BTreeMap::<String, usize>::new();
            let mut seen = BTreeMap::<String, usize>::new();
            loop {
                let reloaded = *reloaded_at.lock();
                if Instant::now() > cap
                    || reloaded.is_some_and(|t| t.elapsed() > Duration::from_millis(1300))
                {
                    break;
                }
                let sent_after_reload = reloaded.is_some();
                let res = c.get(&url).send().await;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match res {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        let o = r
                            .headers()
                            .get("x-origin")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        if sent_after_reload {
                            *after.entry(o.clone()).or_default() += 1;
                        }
                        *seen.entry(o).or_default() += 1;
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok, failures, after, seen)
        }));
    }
    // The reload lands in the middle of the traffic: once every client has had an answer.
    assert!(
        eventually(Duration::from_secs(10), || {
            let n = answered.load(std::sync::atomic::Ordering::Relaxed);
            async move { n >= 400 }
        })
        .await,
        "the clients got no answers before the reload"
    );
    gw.write_config(&fill(RELOAD_V2, &vars));
    let r = c.post(gw.admin("/reload")).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    *reloaded_at.lock() = Some(Instant::now());
    assert_eq!(status, 200, "reload accepted: {body}");

    let (mut ok, mut failures) = (0, Vec::new());
    let (mut after, mut seen) = (
        BTreeMap::<String, usize>::new(),
        BTreeMap::<String, usize>::new(),
    );
    for t in tasks {
        let (o, f, af, se) = t.await.unwrap();
        ok += o;
        failures.extend(f);
        for (k, v) in af {
            *after.entry(k).or_default() += v;
        }
        for (k, v) in se {
            *seen.entry(k).or_default() += v;
        }
    }
    eprintln!(
        "reload under load: {ok} ok requests in {:?}, origins {seen:?}",
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        seen.get("a").copied().unwrap_or(0) > 0,
        "v1 served before the reload: {seen:?}"
    );
    assert!(
        after.get("b").copied().unwrap_or(0) > 0,
        "v2 served after the reload: {after:?}"
    );
    assert_eq!(
        after.get("a"),
        None,
        "no request sent after the reload reached the old upstream: {after:?}"
    );
    assert_eq!(
        get_origin(&c, &gw.url("/echo"), &[("X-Extra", "1")]).await,
        (200, "c".to_string()),
        "the new route serves"
    );
    assert_eq!(
        get_origin(&c, &gw.url("/echo"), &[]).await,
        (200, "b".to_string()),
        "the changed upstream serves"
    );
    assert_eq!(reloads(&gw, "ok").await, 1.0);
    assert_eq!(reloads(&gw, "error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_answers_400_listing_every_error_and_the_old_config_keeps_serving() {
    let a = origin("a").await;
    let b = origin("b").await;
    let vars = [
        ("A", a.addr().to_string()),
        ("B", b.addr().to_string()),
        ("C", b.addr().to_string()),
    ];
    let gw = TestGateway::start(&fill(RELOAD_V1, &vars)).await;
    let c = client();
    let v1 = status(&gw).await;

    gw.write_config(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  main: { servers: [{ addr: "{B}" }], timeouts: { read: soon } }
routes:
  - { name: main, match: { path_prefix: /echo }, upstream: nowhere }
"#,
        &vars,
    ));
    let r = c.post(gw.admin("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 400, "an invalid config is refused");
    let body: serde_json::Value = r.json().await.unwrap();
    let errors: Vec<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 2, "both errors listed: {errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("routes[0].upstream")
            && e.contains("nowhere")
            && e.contains("defined: main")),
        "undefined upstream named with the defined ones: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("upstreams.main.timeouts.read") && e.contains("soon")),
        "bad duration: {errors:?}"
    );
    assert_eq!(
        body["kept_version"], v1["version"],
        "the running version is kept: {body}"
    );
    assert_eq!(
        get_origin(&c, &gw.url("/echo"), &[]).await,
        (200, "a".to_string()),
        "old config keeps serving"
    );
    assert_eq!(reloads(&gw, "error").await, 1.0);
    assert_eq!(reloads(&gw, "ok").await, 0.0);

    gw.write_config(&fill(RELOAD_V2, &vars));
    let r = c.post(gw.admin("/reload")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "a fixed config reloads: {}",
        r.text().await.unwrap()
    );
    assert_eq!(
        get_origin(&c, &gw.url("/echo"), &[]).await,
        (200, "b".to_string()),
        "new config serves"
    );
    assert_eq!(reloads(&gw, "error").await, 1.0);
    assert_eq!(reloads(&gw, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_an_in_flight_request_finish_and_returns_soon_after() {
    let a = origin("a").await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  a: { servers: [{ addr: "{A}" }] }
routes: [{ name: all, upstream: a }]
"#,
        &[("A", a.addr().to_string())],
    ))
    .await;
    let c = client();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow?ms=800"));
        async move {
            let r = c.get(url).send().await;
            let done = Instant::now();
            match r {
                Ok(r) => {
                    let s = r.status().as_u16();
                    (Ok((s, r.text().await.unwrap_or_default())), done)
                }
                Err(e) => (Err(e.to_string()), done),
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().current_concurrent == 1
        })
        .await,
        "slow request in flight"
    );
    let stop = tokio::task::spawn_blocking(move || {
        let d = gw.stop(Stop::Graceful);
        (d, Instant::now())
    });
    let (result, done) = slow.await.unwrap();
    let (took, stopped) = stop.await.unwrap();
    eprintln!("graceful stop with a request in flight took {took:?}; request ended {:?} before the stop returned", stopped.saturating_duration_since(done));
    match result {
        Ok((status, body)) => assert_eq!(status, 200, "the in-flight request completes: {body}"),
        Err(e) => panic!("the in-flight request was cut by the graceful stop: {e}"),
    }
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    assert!(
        stopped.saturating_duration_since(done) < Duration::from_secs(2),
        "stop returns soon after the last request: {:?} later",
        stopped.saturating_duration_since(done)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_gateway_stops_gracefully_in_under_2_seconds() {
    let a = origin("a").await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  a: { servers: [{ addr: "{A}" }] }
routes: [{ name: all, upstream: a }]
"#,
        &[("A", a.addr().to_string())],
    ))
    .await;
    assert_eq!(
        client().get(gw.url("/echo")).send().await.unwrap().status(),
        200
    );
    let addr = gw.addr();
    let took = tokio::task::spawn_blocking(move || gw.stop(Stop::Graceful))
        .await
        .unwrap();
    assert!(
        took < Duration::from_secs(2),
        "idle graceful stop took {took:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after the stop"
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`; returns (status, headers, body).
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, Vec<(String, String)>, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            let status = resp.code.unwrap();
            while buf.len() < n + len {
                let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(k > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..k]);
            }
            return (
                status,
                headers,
                String::from_utf8_lossy(&buf[n..n + len]).to_string(),
            );
        }
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            k > 0,
            "connection closed before a complete response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..k]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_404_keeps_the_client_connection_alive() {
    let a = origin("a").await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  a: { servers: [{ addr: "{A}" }] }
routes: [{ name: api, match: { path_prefix: /api }, upstream: a }]
"#,
        &[("A", a.addr().to_string())],
    ))
    .await;
    let mut sc = SimpleClient::new(gw.addr());
    let r = sc.request("GET", "/nope", &[], None).await.unwrap();
    assert_eq!(r.status, 404);
    assert_ne!(
        r.header("connection"),
        Some("close"),
        "404 does not close: {:?}",
        r.headers
    );
    assert!(
        sc.is_connected(),
        "the client keeps its connection after a local 404"
    );

    // Two requests on one raw connection: the second is only answered if the first kept it open.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    for (i, path) in ["/nope", "/also-nope", "/api/x"].iter().enumerate() {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (status, headers, body) = read_response(&mut s).await;
        let want = if path.starts_with("/api") { 200 } else { 404 };
        assert_eq!(
            status, want,
            "request {i} ({path}) answered on the same connection: {headers:?} {body}"
        );
    }
}

/// `floodgate_reloads_total{kind="config",result}`.
async fn reloads(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(
        "floodgate_reloads_total",
        &[("kind", "config"), ("result", result)],
    )
    .await
}
