//! Admission control end to end (issue 3): server `max_inflight` slots, the bounded priority
//! queue, route limits, rejections (503 + Retry-After), client disconnects while queued, and
//! permit release after failures. Origins record their own concurrency, so every limit is
//! checked where it matters: at the app server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

/// Fills `@NAME@` placeholders of a config template (the harness fills `{PORT}` etc.).
fn conf(template: &str, subs: &[(&str, String)]) -> String {
    subs.iter()
        .fold(template.to_string(), |t, (k, v)| t.replace(k, v))
}

/// What a client saw.
#[derive(Debug)]
struct Seen {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: String,
    elapsed: Duration,
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Seen {
    let t = Instant::now();
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (status, retry_after, content_type) =
        (r.status().as_u16(), h("retry-after"), h("content-type"));
    let body = r.text().await.unwrap();
    Seen {
        status,
        retry_after,
        content_type,
        body,
        elapsed: t.elapsed(),
    }
}

/// Starts a GET in the background.
fn spawn_get(
    url: String,
    headers: Vec<(&'static str, &'static str)>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move { get(&client(), &url, &headers).await })
}

async fn queue_depth(gw: &TestGateway, upstream: &str) -> u64 {
    status(gw).await["upstreams"][upstream]["queue_depth"]
        .as_u64()
        .unwrap()
}

/// Waits until the admission queue of `upstream` holds exactly `n` requests.
async fn wait_depth(gw: &TestGateway, upstream: &str, n: u64) {
    let ok = eventually(Duration::from_secs(10), || async {
        queue_depth(gw, upstream).await == n
    })
    .await;
    assert!(
        ok,
        "queue of {upstream} never reached depth {n} (now {})",
        queue_depth(gw, upstream).await
    );
}

/// Waits until the origin has `n` requests inside its app.
async fn wait_inside(o: &OriginHandle, n: u64) {
    let ok = eventually(Duration::from_secs(10), || async {
        o.stats().current_concurrent == n
    })
    .await;
    assert!(
        ok,
        "origin {} never had {n} requests inside (stats {:?})",
        o.name(),
        o.stats()
    );
}

const ONE_SLOT: &str = r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 1 }]
    queue: { max: 100, timeout: 10s }
routes:
  - { name: urgent, match: { header: { name: X-Class, value: urgent } }, upstream: u, priority: 1 }
  - { name: all, match: { path_prefix: / }, upstream: u }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_never_sees_more_than_max_inflight_under_500_concurrent_clients() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 4 }]
    queue: { max: 1000, timeout: 30s }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string())],
    ))
    .await;
    let c = client();
    let mut set = JoinSet::new();
    for _ in 0..500 {
        let (c, url) = (c.clone(), gw.url("/slow?ms=20"));
        set.spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(200) => ok += 1,
            other => panic!("a client got {other:?}; the queue is big enough for everyone"),
        }
    }
    let stats = a.stats();
    assert_eq!(ok, 500, "all 500 clients answered 200");
    assert_eq!(
        stats.per_path.get("/slow"),
        Some(&500),
        "the origin served each request once: {stats:?}"
    );
    assert!(
        stats.max_concurrent <= 4,
        "origin saw {} concurrent requests with max_inflight 4",
        stats.max_concurrent
    );
    assert_eq!(
        stats.max_concurrent, 4,
        "the limit was reached, so the queue was exercised"
    );
    assert_eq!(
        gw.metric("floodgate_upstream_inflight", &[("upstream", "u")])
            .await,
        0.0,
        "all slots released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_of_one_class_are_served_in_arrival_order() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(ONE_SLOT, &[("@A@", a.addr().to_string())])).await;
    let blocker = spawn_get(gw.url("/slow?ms=2000"), vec![]);
    wait_inside(&a, 1).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for k in 0..6u64 {
        let (url, order) = (gw.url("/slow?ms=30"), order.clone());
        tasks.push(tokio::spawn(async move {
            let s = get(&client(), &url, &[]).await;
            order.lock().unwrap().push(k);
            s.status
        }));
        // why: wait until request k is queued before sending k+1, so arrival order is known
        wait_depth(&gw, "u", k + 1).await;
    }
    assert_eq!(
        blocker.await.unwrap().status,
        200,
        "the blocking request is served"
    );
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "every queued request is served");
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![0, 1, 2, 3, 4, 5],
        "FIFO within one priority class"
    );
    assert!(a.stats().max_concurrent <= 1, "one slot: {:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_route_overtakes_queued_lower_priority_requests() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(ONE_SLOT, &[("@A@", a.addr().to_string())])).await;
    let blocker = spawn_get(gw.url("/slow?ms=2000"), vec![]);
    wait_inside(&a, 1).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let arrivals = [
        ("bulk", 0),
        ("bulk", 1),
        ("bulk", 2),
        ("urgent", 0),
        ("urgent", 1),
        ("urgent", 2),
    ];
    for (depth, (class, k)) in arrivals.into_iter().enumerate() {
        let (url, order) = (gw.url("/slow?ms=30"), order.clone());
        let headers: Vec<(&'static str, &'static str)> = if class == "urgent" {
            vec![("x-class", "urgent")]
        } else {
            vec![]
        };
        tasks.push(tokio::spawn(async move {
            let s = get(&client(), &url, &headers).await;
            order.lock().unwrap().push(format!("{class}{k}"));
            s.status
        }));
        wait_depth(&gw, "u", depth as u64 + 1).await;
    }
    assert_eq!(blocker.await.unwrap().status, 200);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "every queued request is served");
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec!["urgent0", "urgent1", "urgent2", "bulk0", "bulk1", "bulk2"],
        "priority 1 (queued last) completes before the queued priority 0 requests, FIFO within each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeout_answers_503_with_retry_after_and_the_configured_json_body() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 1 }]
    queue: { max: 10, timeout: 200ms, retry_after: 7s, body: '{"displayMessage": "busy, come back later"}' }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string())],
    ))
    .await;
    let blocker = spawn_get(gw.url("/slow?ms=2000"), vec![]);
    wait_inside(&a, 1).await;
    let s = get(&client(), &gw.url("/slow?ms=1"), &[]).await;
    assert_eq!(s.status, 503, "queue timeout: {s:?}");
    assert_eq!(
        s.retry_after.as_deref(),
        Some("7"),
        "configured Retry-After: {s:?}"
    );
    assert_eq!(
        s.content_type.as_deref(),
        Some("application/json"),
        "JSON body is labelled as such: {s:?}"
    );
    assert_eq!(
        s.body, r#"{"displayMessage": "busy, come back later"}"#,
        "configured body"
    );
    assert!(
        s.elapsed >= Duration::from_millis(190),
        "waited the queue timeout first: {:?}",
        s.elapsed
    );
    assert!(
        s.elapsed < Duration::from_millis(900),
        "rejected at the timeout, not when the slot freed: {:?}",
        s.elapsed
    );
    let labels = [("scope", "upstream"), ("name", "u"), ("reason", "timeout")];
    assert_eq!(
        gw.metric("floodgate_admission_rejected_total", &labels)
            .await,
        1.0,
        "timeout rejection counted"
    );
    assert_eq!(
        blocker.await.unwrap().status,
        200,
        "the slot holder is unaffected"
    );
    assert_eq!(
        a.stats().per_path.get("/slow"),
        Some(&1),
        "the timed-out request never reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_and_zero_length_queue_reject_at_once_with_retry_after() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 1 }]
    queue: { max: 2, timeout: 10s }
  shed:
    servers: [{ name: a, addr: "@A@", max_inflight: 1 }]
    queue: { max: 0 }
routes:
  - { name: shed, match: { header: { name: X-Up, value: shed } }, upstream: shed }
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string())],
    ))
    .await;
    let c = client();
    let blocker = spawn_get(gw.url("/slow?ms=800"), vec![]);
    wait_inside(&a, 1).await;
    let queued: Vec<_> = (0..2)
        .map(|_| spawn_get(gw.url("/slow?ms=1"), vec![]))
        .collect();
    wait_depth(&gw, "u", 2).await;
    let s = get(&c, &gw.url("/slow?ms=1"), &[]).await;
    assert_eq!(s.status, 503, "queue full: {s:?}");
    assert!(
        s.retry_after.is_some(),
        "Retry-After on a full queue: {s:?}"
    );
    assert!(
        s.elapsed < Duration::from_millis(100),
        "rejected at once, took {:?}",
        s.elapsed
    );
    let full = |name: &'static str| [("scope", "upstream"), ("name", name), ("reason", "full")];
    assert_eq!(
        gw.metric("floodgate_admission_rejected_total", &full("u"))
            .await,
        1.0,
        "counted as full"
    );

    let shed_blocker = spawn_get(gw.url("/slow?ms=800"), vec![("x-up", "shed")]);
    wait_inside(&a, 2).await;
    let s = get(&c, &gw.url("/slow?ms=1"), &[("x-up", "shed")]).await;
    assert_eq!(s.status, 503, "queue max 0 sheds: {s:?}");
    assert!(s.retry_after.is_some(), "Retry-After when shedding: {s:?}");
    assert!(
        s.elapsed < Duration::from_millis(100),
        "shed at once, took {:?}",
        s.elapsed
    );
    assert_eq!(
        gw.metric("floodgate_admission_rejected_total", &full("shed"))
            .await,
        1.0,
        "shedding counted as full"
    );

    assert_eq!(blocker.await.unwrap().status, 200);
    assert_eq!(shed_blocker.await.unwrap().status, 200);
    for q in queued {
        assert_eq!(
            q.await.unwrap().status,
            200,
            "requests admitted to the queue are served"
        );
    }
    assert_eq!(
        a.stats().per_path.get("/slow"),
        Some(&4),
        "rejected requests never reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_is_dropped_when_client_disconnects() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(ONE_SLOT, &[("@A@", a.addr().to_string())])).await;
    let blocker = spawn_get(gw.url("/slow?ms=2000"), vec![]);
    wait_inside(&a, 1).await;
    let mut streams = Vec::new();
    for k in 0..3u64 {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(b"GET /abandoned HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        streams.push(s);
        wait_depth(&gw, "u", k + 1).await;
    }
    drop(streams); // the clients leave while queued
    wait_depth(&gw, "u", 0).await;
    let abandoned = || {
        gw.metric(
            "floodgate_admission_abandoned_total",
            &[("scope", "upstream"), ("name", "u")],
        )
    };
    let counted = eventually(Duration::from_secs(2), || async {
        abandoned().await == 3.0
    })
    .await;
    assert!(
        counted,
        "3 abandonments counted, metric says {}",
        abandoned().await
    );
    assert_eq!(blocker.await.unwrap().status, 200);
    // A request queued after the abandoned ones: once it is served, they would have been too.
    assert_eq!(get(&client(), &gw.url("/slow?ms=1"), &[]).await.status, 200);
    let stats = a.stats();
    assert_eq!(
        stats.per_path.get("/abandoned"),
        None,
        "the origin never saw an abandoned request: {stats:?}"
    );
    assert_eq!(
        stats.per_path.get("/slow"),
        Some(&2),
        "only the two live requests reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_post_with_a_small_body_is_dropped_when_its_client_leaves_and_delivered_intact_otherwise(
) {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(ONE_SLOT, &[("@A@", a.addr().to_string())])).await;
    let blocker = spawn_get(gw.url("/slow?ms=800"), vec![]);
    wait_inside(&a, 1).await;
    // A POST whose client leaves while queued: its body was read ahead, so the close is seen.
    let mut gone = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    gone.write_all(
        b"POST /rhsm/consumers HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\n{\"gone\":1}\n",
    )
    .await
    .unwrap();
    wait_depth(&gw, "u", 1).await;
    drop(gone);
    wait_depth(&gw, "u", 0).await;
    // A queued POST that stays: the upstream gets its body intact.
    let body = "{\"name\":\"host1.example.com\",\"facts\":{\"cpu\":4}}";
    let r = client()
        .post(gw.url("/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        echoed["body"], body,
        "the buffered body reaches the upstream unchanged"
    );
    assert_eq!(blocker.await.unwrap().status, 200);
    assert_eq!(
        a.stats().per_path.get("/rhsm/consumers"),
        None,
        "the abandoned POST never reached the origin"
    );
    assert_eq!(
        gw.metric(
            "floodgate_admission_abandoned_total",
            &[("scope", "upstream"), ("name", "u")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_limit_queues_its_own_requests_while_other_routes_to_the_same_upstream_pass() {
    let a = start_origin(OriginConfig {
        name: "a".into(),
        base_service: Duration::from_millis(200),
        collapse: 0.0,
        ..OriginConfig::default()
    })
    .await
    .unwrap();
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u: { servers: [{ name: a, addr: "@A@" }] }
routes:
  - name: rhsm
    match: { path_prefix: /rhsm }
    upstream: u
    admission: { max_inflight: 1, queue: 10, queue_timeout: 10s }
  - { name: other, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string())],
    ))
    .await;
    let rhsm: Vec<_> = (0..3)
        .map(|k| spawn_get(gw.url(&format!("/rhsm/r{k}")), vec![]))
        .collect();
    let other: Vec<_> = (0..3)
        .map(|k| spawn_get(gw.url(&format!("/other/o{k}")), vec![]))
        .collect();
    let mut rhsm_times = Vec::new();
    for t in rhsm {
        let s = t.await.unwrap();
        assert_eq!(s.status, 200, "{s:?}");
        rhsm_times.push(s.elapsed);
    }
    for t in other {
        let s = t.await.unwrap();
        assert_eq!(s.status, 200, "{s:?}");
        assert!(
            s.elapsed < Duration::from_millis(450),
            "other routes are not held by the /rhsm limit: {:?}",
            s.elapsed
        );
    }
    rhsm_times.sort();
    assert!(
        rhsm_times[2] >= Duration::from_millis(560),
        "three 200 ms /rhsm requests through one route slot take ~600 ms: {rhsm_times:?}"
    );
    let waits = gw
        .metric(
            "floodgate_queue_wait_seconds_count",
            &[("scope", "route"), ("name", "rhsm")],
        )
        .await;
    assert_eq!(
        waits, 3.0,
        "all /rhsm requests went through the route's admission"
    );
    let other_waits = gw
        .metric(
            "floodgate_queue_wait_seconds_count",
            &[("scope", "route"), ("name", "other")],
        )
        .await;
    assert_eq!(other_waits, 0.0, "the other route has no route admission");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_failing_requests_leave_no_permit_held() {
    let a = origin("a").await;
    let b = origin("b").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 48 }, { name: b, addr: "@B@", max_inflight: 48 }]
    timeouts: { read: 250ms }
    queue: { max: 1000, timeout: 10s }
    observe: { failures: 0 }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string()), ("@B@", b.addr().to_string())],
    ))
    .await;
    let c = client(); // keep-alive: connections are reused after failure answers too
    let gate = Arc::new(tokio::sync::Semaphore::new(150));
    let mut set = JoinSet::new();
    for i in 0..1000usize {
        let (c, gate) = (c.clone(), gate.clone());
        let (kind, url) = match i % 3 {
            0 => ("reset", gw.url("/reset")),
            1 => ("read_timeout", gw.url("/slow?ms=800")),
            _ => ("client_abort", gw.url("/slow?ms=800")),
        };
        set.spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let mut req = c.get(url);
            if kind == "client_abort" {
                req = req.timeout(Duration::from_millis(50));
            }
            (
                kind,
                req.send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.is_timeout()),
            )
        });
    }
    let mut wrong = Vec::new();
    while let Some(r) = set.join_next().await {
        let (kind, got) = r.unwrap();
        let expected = match kind {
            // why: 504 too: on a loaded 2-core box the origin may not get to close within
            // the read timeout; either way it is an upstream failure holding a permit.
            "reset" => got == Ok(502) || got == Ok(504),
            "read_timeout" => got == Ok(504),
            _ => got == Err(true),
        };
        if !expected {
            wrong.push((kind, got));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} requests ended unexpectedly, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    let drained = eventually(Duration::from_secs(5), || async {
        let st = status(&gw).await;
        let servers = st["upstreams"]["u"]["servers"].as_array().unwrap().clone();
        st["inflight"] == 0
            && st["upstreams"]["u"]["queue_depth"] == 0
            && servers.iter().all(|s| s["inflight"] == 0)
    })
    .await;
    assert!(
        drained,
        "permits still held after the failures: {}",
        status(&gw).await
    );
    for server in ["a", "b"] {
        let held = gw
            .metric(
                "floodgate_upstream_inflight",
                &[("upstream", "u"), ("server", server)],
            )
            .await;
        assert_eq!(held, 0.0, "in-flight gauge of {server} back to 0");
    }
    assert_eq!(
        gw.metric(
            "floodgate_queue_depth",
            &[("scope", "upstream"), ("name", "u")]
        )
        .await,
        0.0
    );
    assert_eq!(
        get(&c, &gw.url("/echo"), &[]).await.status,
        200,
        "the upstream still serves afterwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_rejects_at_once_when_the_estimated_wait_exceeds_the_queue_timeout() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 1 }]
    queue: { max: 100, timeout: 300ms, fail_fast: true }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string())],
    ))
    .await;
    let c = client();
    let reason = |r: &'static str| [("scope", "upstream"), ("name", "u"), ("reason", r)];

    // No service-time history yet: the request queues, and times out.
    let first = spawn_get(gw.url("/slow?ms=600"), vec![]);
    wait_inside(&a, 1).await;
    let s = get(&c, &gw.url("/slow?ms=1"), &[]).await;
    assert_eq!(s.status, 503, "{s:?}");
    assert!(
        s.elapsed >= Duration::from_millis(290),
        "without history it queued for the timeout: {:?}",
        s.elapsed
    );
    assert_eq!(
        gw.metric("floodgate_admission_rejected_total", &reason("timeout"))
            .await,
        1.0
    );
    assert_eq!(
        first.await.unwrap().status,
        200,
        "history: one ~600 ms service time"
    );
    // Fail-fast trusts service times after two completions per slot.
    assert_eq!(
        get(&c, &gw.url("/slow?ms=600"), &[]).await.status,
        200,
        "history: a second ~600 ms service time"
    );

    // Now the estimate (~600 ms for one slot) exceeds the 300 ms timeout: rejected on arrival.
    let blocker = spawn_get(gw.url("/slow?ms=2000"), vec![]);
    wait_inside(&a, 1).await;
    let s = get(&c, &gw.url("/slow?ms=1"), &[]).await;
    assert_eq!(s.status, 503, "{s:?}");
    assert!(s.retry_after.is_some(), "Retry-After on fail-fast: {s:?}");
    assert!(
        s.elapsed < Duration::from_millis(100),
        "rejected at once, took {:?}",
        s.elapsed
    );
    assert_eq!(
        gw.metric("floodgate_admission_rejected_total", &reason("fail_fast"))
            .await,
        1.0,
        "counted as fail_fast"
    );
    assert_eq!(blocker.await.unwrap().status, 200);
    assert_eq!(
        get(&c, &gw.url("/slow?ms=1"), &[]).await.status,
        200,
        "a free slot is still granted"
    );
}

/// Sends `GET path` on `s` and reads one response (Content-Length framed) or what came
/// before EOF / error / 2 s of silence.
async fn raw_exchange(s: &mut tokio::net::TcpStream, path: &str) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16384];
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf[n..])).await {
            Ok(Ok(0)) => return Err(format!("connection closed after {n} bytes")),
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) => return Err(format!("read error {e} after {n} bytes")),
            Err(_) => return Err(format!("no complete answer within 2 s ({n} bytes)")),
        }
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if n >= end + 4 + len {
                return Ok(text);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_is_not_closed_after_a_failure_answer_that_says_keep_alive() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@" }]
    timeouts: { read: 100ms }
    observe: { failures: 0 }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string())],
    ))
    .await;
    for (path, code) in [("/reset", "502"), ("/slow?ms=400", "504")] {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        let first = raw_exchange(&mut s, path).await.unwrap();
        assert!(
            first.starts_with(&format!("HTTP/1.1 {code}")),
            "GET {path}: {first}"
        );
        if first.to_ascii_lowercase().contains("connection: close") {
            continue; // the gateway announced the close: clients will not reuse it
        }
        let second = raw_exchange(&mut s, "/echo").await;
        assert!(
            second.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
            "after a {code} sent without `Connection: close`, the next request on the connection failed: {second:?}"
        );
    }
}

/// Issue 11: a slot stands for work the app server is doing. Against an origin that, like
/// Rails, finishes the work of clients that left, clients that give up after 1 s on a 2.5 s
/// request must not let more than `max_inflight` requests into the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_stays_taken_until_the_app_answers_when_the_client_has_left() {
    let a = origin("a").await;
    let gw = TestGateway::start(&conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 2 }]
    queue: { max: 100, timeout: 30s }
routes:
  - { name: all, match: { path_prefix: / }, upstream: u }
"#,
        &[("@A@", a.addr().to_string())],
    ))
    .await;
    let mut clients = JoinSet::new();
    for i in 0..10u64 {
        let addr = gw.addr();
        clients.spawn(async move {
            tokio::time::sleep(Duration::from_millis(250 * i)).await;
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /slow?ms=2500 HTTP/1.1\r\nHost: test\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(s); // the client gives up (FIN), the app keeps working
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    let settled = eventually(Duration::from_secs(20), || async {
        a.stats().current_concurrent == 0 && queue_depth(&gw, "u").await == 0
    })
    .await;
    assert!(settled, "origin and queue drain: {:?}", a.stats());
    let stats = a.stats();
    assert!(
        stats.max_concurrent <= 2,
        "the origin saw {} requests at once with max_inflight 2: {stats:?}",
        stats.max_concurrent
    );
    let served = stats.per_path.get("/slow").copied().unwrap_or(0);
    assert!(served >= 2, "the first two were sent: {stats:?}");
    assert!(
        stats.connections < served,
        "answers read for gone clients leave the upstream connection reusable: {stats:?}"
    );
    let completed = eventually(Duration::from_secs(5), || async {
        gw.metric(
            "floodgate_upstream_client_gone_total",
            &[("upstream", "u"), ("outcome", "completed")],
        )
        .await
            == served as f64
    })
    .await;
    assert!(
        completed,
        "every request sent for a client that left was read to its end ({} of {served})",
        gw.metric(
            "floodgate_upstream_client_gone_total",
            &[("upstream", "u"), ("outcome", "completed")]
        )
        .await
    );
    assert_eq!(
        gw.metric("floodgate_upstream_inflight", &[("upstream", "u")])
            .await,
        0.0,
        "all slots released"
    );
}

/// Issue 11: the shipped `conf/foreman.yaml`, only its addresses rewritten: hosts under way
/// (follow-up `/rhsm` calls, class 1) leave the queue before queued new hosts
/// (`POST /rhsm/consumers`, class 0), and a full queue makes room for a host under way by
/// answering the newest new host at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_foreman_config_serves_hosts_under_way_before_new_hosts() {
    let app = origin("puma1").await;
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/foreman.yaml"),
    )
    .unwrap();
    assert!(shipped.contains("max_inflight: 16") && shipped.contains("max: 5000"));
    let yaml = shipped
        .replace("127.0.0.1:3000", &app.addr().to_string())
        .replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:9901", "127.0.0.1:{ADMIN}")
        .replace("max: 5000", "max: 5")
        .replace(
            "access_log: { format: combined }",
            "access_log: { enabled: false }",
        );
    let gw = TestGateway::start(&yaml).await;
    // 16 UI requests fill Puma's 16 slots; they end 300 ms apart, so queued requests are
    // granted (and, at 20 ms each, finished) one at a time, in grant order.
    let blockers: Vec<_> = (0..16)
        .map(|i| spawn_get(gw.url(&format!("/slow?ms={}", 1500 + 300 * i)), vec![]))
        .collect();
    wait_inside(&app, 16).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let arrivals = ["new0", "new1", "new2", "new3", "new4", "under-way"];
    for (i, name) in arrivals.into_iter().enumerate() {
        let order = order.clone();
        let req = if name == "under-way" {
            client().get(gw.url("/rhsm/consumers/abc/certificates"))
        } else {
            client().post(gw.url("/rhsm/consumers")).body("{}")
        };
        tasks.push(tokio::spawn(async move {
            let status = req.send().await.unwrap().status().as_u16();
            order.lock().unwrap().push((name, status));
        }));
        if i < 5 {
            wait_depth(&gw, "foreman", i as u64 + 1).await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for b in blockers {
        assert_eq!(b.await.unwrap().status, 200);
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order[0],
        ("new4", 503),
        "the queue (max 5) was full of new hosts: the newest one made room at once: {order:?}"
    );
    let served: Vec<&str> = order
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        served,
        vec!["under-way", "new0", "new1", "new2", "new3"],
        "the host under way went first, then new hosts in arrival order"
    );
    assert!(app.stats().max_concurrent <= 16, "{:?}", app.stats());
}
