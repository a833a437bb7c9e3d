//! The `GET /register` response cache end to end (issue 6): coalescing of identical requests,
//! canonical keys (parameter order, `Authorization` vary), what is and is not stored (error
//! statuses, POST), TTL expiry, the memory bound, admin purge, HEAD from the GET entry, the
//! `floodgate_cache_requests_total` metric, and a shared tier on a real `redis-server` that
//! the tests start on a free port and kill by PID (including an outage mid-run).
//! The origin counts its renders, so "one render" is checked where it matters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

/// The Host every request sends: gateways sharing Redis must see the same host to share keys
/// (as nodes behind one DNS name do); the harness's per-gateway `127.0.0.1:PORT` would not.
const HOST: &str = "capsule.example";
const REDIS_BIN: &str = "/usr/bin/redis-server";

/// A `redis-server` child process on its own port; killed by PID on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    async fn start() -> RedisServer {
        Self::start_on(free_port()).await
    }

    /// Starts `redis-server` on `port` (no persistence) and waits until it answers PING.
    async fn start_on(port: u16) -> RedisServer {
        let child = Command::new(REDIS_BIN)
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REDIS_BIN}: {e}"));
        let server = RedisServer {
            port,
            child: Some(child),
        };
        let up = eventually(Duration::from_secs(5), || async move { ping(port).await }).await;
        assert!(
            up,
            "redis-server on port {port} did not answer PING within 5 s"
        );
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the process (SIGKILL by PID) and reaps it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Keys currently stored (KEYS is fine on a test instance).
    async fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something on `port` answers a RESP PING with +PONG.
async fn ping(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
}

/// Fills `@NAME@` placeholders (the harness fills `{PORT}` etc.).
fn conf(template: &str, subs: &[(&str, String)]) -> String {
    subs.iter()
        .fold(template.to_string(), |t, (k, v)| t.replace(k, v))
}

/// A gateway with a cached `/register` route (`@ROUTE_CACHE@`), a cached `/echo` route
/// (echoes request headers, so a leaked response is visible), an uncached default route,
/// and the top-level `@CACHE@` section.
fn gateway_yaml(origin: SocketAddr, route_cache: &str, cache: &str) -> String {
    conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  foreman: { servers: [{ addr: "@ORIGIN@" }] }
routes:
  - name: register
    match: { path_prefix: /register }
    upstream: foreman
    cache: @ROUTE_CACHE@
  - { name: echo, match: { path_prefix: /echo }, upstream: foreman, cache: { ttl: 60s } }
  - { name: default, match: { path_prefix: / }, upstream: foreman }
@CACHE@
"#,
        &[
            ("@ORIGIN@", origin.to_string()),
            ("@ROUTE_CACHE@", route_cache.to_string()),
            ("@CACHE@", cache.to_string()),
        ],
    )
}

/// What a client saw.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    x_cache: Option<String>,
    age: Option<String>,
    content_length: Option<usize>,
    body: String,
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut rb = c.request(method.clone(), url).header("host", HOST);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url} {headers:?}: {e}"));
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (x_cache, age) = (h("x-cache"), h("age"));
    let content_length = h("content-length").and_then(|v| v.parse().ok());
    let status = r.status().as_u16();
    let body = r
        .text()
        .await
        .unwrap_or_else(|e| panic!("{method} {url} body: {e}"));
    Got {
        status,
        x_cache,
        age,
        content_length,
        body,
    }
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    send(c, reqwest::Method::GET, url, headers).await
}

fn x_cache(g: &Got) -> &str {
    g.x_cache.as_deref().unwrap_or("-")
}

/// Requests the origin received for `path` (renders and overridden answers alike).
fn origin_hits(o: &OriginHandle, path: &str) -> u64 {
    o.stats().per_path.get(path).copied().unwrap_or(0)
}

async fn cache_metric(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(
        "floodgate_cache_requests_total",
        &[("route", "register"), ("result", result)],
    )
    .await
}

/// The admin `/status` view of the cache.
async fn cache_status(gw: &TestGateway) -> serde_json::Value {
    let v = status(gw).await;
    v["cache"].clone()
}

/// Makes the gateway's shared tier connect (a purge of a path nothing uses is the one
/// call that touches Redis without rendering) and waits until `/status` says it is up.
async fn connect_shared_tier(gw: &TestGateway) {
    let c = client();
    let up = eventually(Duration::from_secs(5), || {
        let c = c.clone();
        async move {
            let _ = c
                .delete(gw.admin("/cache?prefix=/nothing-lives-here"))
                .send()
                .await;
            cache_status(gw).await["shared_up"] == serde_json::json!(true)
        }
    })
    .await;
    assert!(
        up,
        "the shared tier did not connect within 5 s: {}",
        cache_status(gw).await
    );
}

/// Stops the origin accepting connections (the accept loop watches the pause flag, so it takes
/// effect on its next wake-up; a short yield lets it see the change).
async fn pause_origin(origin: &OriginHandle) {
    origin.pause_accepting();
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Starts `n` GETs of `path` at once while the origin does not accept, waits until all are
/// inside the gateway with one flight open, then lets the origin accept. Returns what each
/// client saw. The origin's pause makes coalescing deterministic: nobody can finish early.
async fn burst_through_one_flight(
    gw: &TestGateway,
    origin: &OriginHandle,
    path: &str,
    n: usize,
) -> Vec<Got> {
    pause_origin(origin).await;
    let base = gw.state.inflight.load(Ordering::SeqCst);
    let c = client();
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (c, url) = (c.clone(), gw.url(path));
        set.spawn(async move { get(&c, &url, &[]).await });
    }
    let joined = eventually(Duration::from_secs(10), || async {
        // n clients plus the one cache fill (a subrequest, counted as in flight too)
        gw.state.inflight.load(Ordering::SeqCst) > base + n && gw.state.cache.in_flight() == 1
    })
    .await;
    let inside = gw.state.inflight.load(Ordering::SeqCst);
    origin.resume_accepting();
    assert!(joined, "all {n} requests should be inside the gateway waiting on one flight (inflight {inside}, flights {})", gw.state.cache.in_flight());
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_500_identical_gets_renders_once_and_every_client_gets_the_same_body() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", "")).await;
    let path = "/register?activation_keys=ak-1&location_id=2&organization_id=1";
    let t = Instant::now();
    let seen = burst_through_one_flight(&gw, &origin, path, 500).await;
    let burst_time = t.elapsed();

    assert_eq!(
        origin.stats().renders,
        1,
        "500 identical GETs must cause exactly one render"
    );
    assert!(
        seen.iter().all(|g| g.status == 200),
        "every client gets 200: {:?}",
        seen.iter()
            .map(|g| g.status)
            .collect::<std::collections::BTreeSet<_>>()
    );
    let body = &seen[0].body;
    assert!(
        body.starts_with("#!/bin/sh"),
        "the rendered script is served: {body:?}"
    );
    assert!(
        seen.iter().all(|g| &g.body == body),
        "every client gets the same body"
    );
    let miss = seen.iter().filter(|g| x_cache(g) == "MISS").count();
    let hit = seen.iter().filter(|g| x_cache(g) == "HIT").count();
    assert_eq!(
        miss + hit,
        500,
        "every response carries x-cache MISS or HIT"
    );
    assert!(miss >= 2, "the fetching request and its coalesced waiters answer x-cache: MISS (saw {miss} MISS, {hit} HIT)");

    // Metrics: exactly one miss, the rest coalesced (or a memory hit if one slipped in late).
    let counted = eventually(Duration::from_secs(3), || async {
        cache_metric(&gw, "miss").await
            + cache_metric(&gw, "coalesced").await
            + cache_metric(&gw, "hit").await
            == 500.0
    })
    .await;
    assert!(counted, "500 cache lookups are counted");
    assert_eq!(
        cache_metric(&gw, "miss").await,
        1.0,
        "floodgate_cache_requests_total{{result=miss}} counts the one fetch"
    );
    assert_eq!(
        cache_metric(&gw, "coalesced").await as usize,
        miss - 1,
        "result=coalesced counts the waiters that answered MISS"
    );
    assert_eq!(
        cache_metric(&gw, "hit").await as usize,
        hit,
        "result=hit counts the x-cache: HIT answers"
    );

    // Later requests are hits with an Age.
    let later = get(&client(), &gw.url(path), &[]).await;
    assert_eq!(
        (later.status, x_cache(&later)),
        (200, "HIT"),
        "a later identical GET is a hit"
    );
    let age: u64 = later
        .age
        .as_deref()
        .expect("a hit carries an age header")
        .parse()
        .expect("age is whole seconds");
    assert!(age <= 60, "age is within the TTL: {age}");
    assert_eq!(&later.body, body, "the hit serves the stored body");
    assert_eq!(origin.stats().renders, 1, "the hit does not render");
    assert_eq!(
        cache_metric(&gw, "hit").await as usize,
        hit + 1,
        "result=hit counts the later hit"
    );
    eprintln!(
        "cache burst: 500 clients, 1 render, {miss} MISS ({} coalesced), {hit} HIT, {burst_time:?}",
        miss - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameter_order_does_not_split_the_cache() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", "")).await;
    let c = client();
    let first = get(&c, &gw.url("/register?a=1&b=2"), &[]).await;
    let second = get(&c, &gw.url("/register?b=2&a=1"), &[]).await;
    assert_eq!(
        (first.status, x_cache(&first)),
        (200, "MISS"),
        "first order fetches"
    );
    assert_eq!(
        (second.status, x_cache(&second)),
        (200, "HIT"),
        "the same parameters in another order are a hit"
    );
    assert_eq!(second.body, first.body, "same body");
    assert_eq!(origin.stats().renders, 1, "one render for both orders");
    let other = get(&c, &gw.url("/register?a=1&b=3"), &[]).await;
    assert_eq!(
        x_cache(&other),
        "MISS",
        "a different value is a different entry"
    );
    assert_eq!(origin.stats().renders, 2, "and renders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_authorization_values_never_share_an_entry() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", "")).await;
    let c = client();
    let url = gw.url("/register?org=1");
    let alice = [("authorization", "Basic YWxpY2U6cHc=")];
    let bob = [("authorization", "Basic Ym9iOnB3")];

    let a1 = get(&c, &url, &alice).await;
    let b1 = get(&c, &url, &bob).await;
    assert_eq!(
        (x_cache(&a1), x_cache(&b1)),
        ("MISS", "MISS"),
        "two credentials, two fetches"
    );
    assert_eq!(
        origin.stats().renders,
        2,
        "different Authorization values render separately"
    );
    let a2 = get(&c, &url, &alice).await;
    assert_eq!(
        x_cache(&a2),
        "HIT",
        "the same credentials hit their own entry"
    );
    let anon = get(&c, &url, &[]).await;
    assert_eq!(
        x_cache(&anon),
        "MISS",
        "a request without Authorization never gets an entry rendered with one"
    );
    assert_eq!(
        origin.stats().renders,
        3,
        "the anonymous request renders its own"
    );
    let anon2 = get(&c, &url, &[]).await;
    assert_eq!(
        x_cache(&anon2),
        "HIT",
        "anonymous requests share the anonymous entry"
    );
    let empty = get(&c, &url, &[("authorization", "")]).await;
    assert_eq!(
        x_cache(&empty),
        "MISS",
        "an empty Authorization header is not the absent one"
    );

    // The content check: /echo returns the request headers the origin saw, so a shared entry
    // would show another client's credentials.
    let e_alice = get(&c, &gw.url("/echo"), &alice).await;
    let e_anon = get(&c, &gw.url("/echo"), &[]).await;
    let e_bob = get(&c, &gw.url("/echo"), &bob).await;
    assert_eq!(
        (x_cache(&e_alice), x_cache(&e_anon), x_cache(&e_bob)),
        ("MISS", "MISS", "MISS"),
        "each credential fetches /echo"
    );
    assert!(
        e_alice.body.contains("YWxpY2U6cHc="),
        "the fetch forwards the client's Authorization: {}",
        e_alice.body
    );
    assert!(
        !e_anon.body.contains("YWxpY2U6cHc="),
        "the anonymous client never sees alice's response: {}",
        e_anon.body
    );
    assert!(
        !e_bob.body.contains("YWxpY2U6cHc="),
        "bob never sees alice's response: {}",
        e_bob.body
    );
    assert_eq!(origin_hits(&origin, "/echo"), 3, "three /echo fetches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_500_reaches_current_waiters_but_is_not_stored() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", "")).await;
    let path = "/register?org=5";
    origin.set_status_override("/register", Some(500));
    let seen = burst_through_one_flight(&gw, &origin, path, 20).await;
    assert!(
        seen.iter().all(|g| g.status == 500),
        "every waiter gets the origin's 500: {:?}",
        seen.iter().map(|g| g.status).collect::<Vec<_>>()
    );
    assert!(
        seen.iter().all(|g| x_cache(g) == "MISS"),
        "the 500 is a MISS for all: {:?}",
        seen.iter().map(x_cache).collect::<Vec<_>>()
    );
    assert!(
        seen.iter().all(|g| g.body.contains("\"overridden\":500")),
        "the waiters get the origin's body"
    );
    assert_eq!(
        origin_hits(&origin, "/register"),
        1,
        "20 concurrent requests reach the origin once"
    );
    assert_eq!(gw.state.cache.stats().entries, 0, "the 500 is not stored");

    let again = get(&client(), &gw.url(path), &[]).await;
    assert_eq!(
        (again.status, x_cache(&again)),
        (500, "MISS"),
        "the next request fetches again (the 500 was not stored)"
    );
    assert_eq!(origin_hits(&origin, "/register"), 2, "second fetch");

    origin.set_status_override("/register", None);
    let ok = get(&client(), &gw.url(path), &[]).await;
    assert_eq!(
        (ok.status, x_cache(&ok)),
        (200, "MISS"),
        "once the origin recovers the request renders"
    );
    assert_eq!(origin.stats().renders, 1, "one real render");
    let hit = get(&client(), &gw.url(path), &[]).await;
    assert_eq!(
        (hit.status, x_cache(&hit)),
        (200, "HIT"),
        "and the 200 is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_expires_after_the_route_ttl_and_is_rendered_exactly_once_more() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 1s }", "")).await;
    let c = client();
    let url = gw.url("/register?org=7");
    let t0 = Instant::now();
    assert_eq!(
        x_cache(&get(&c, &url, &[]).await),
        "MISS",
        "first request fetches"
    );
    assert_eq!(
        x_cache(&get(&c, &url, &[]).await),
        "HIT",
        "second is a hit within the TTL"
    );
    // Poll with requests: each is a hit until the entry expires, then the first one after
    // expiry fetches.
    let mut first_miss = None;
    while t0.elapsed() < Duration::from_secs(4) {
        let g = get(&c, &url, &[]).await;
        assert_eq!(g.status, 200);
        if x_cache(&g) == "MISS" {
            first_miss = Some(t0.elapsed());
            break;
        }
        assert!(
            g.age.as_deref().is_some_and(|a| a == "0" || a == "1"),
            "age of a 1 s entry is 0 or 1: {:?}",
            g.age
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired_after = first_miss.expect("the entry never expired within 4 s");
    assert!(
        expired_after >= Duration::from_millis(900),
        "the entry lived its 1 s TTL (expired after {expired_after:?})"
    );
    assert_eq!(
        origin.stats().renders,
        2,
        "expiry causes exactly one new render"
    );
    // A burst right after the refresh is served by the new entry.
    let mut set = JoinSet::new();
    for _ in 0..50 {
        let (c, url) = (c.clone(), url.clone());
        set.spawn(async move { get(&c, &url, &[]).await });
    }
    while let Some(g) = set.join_next().await {
        let g = g.unwrap();
        assert_eq!(g.status, 200, "burst after refresh");
    }
    assert!(
        origin.stats().renders <= 3,
        "at most the refreshed entry expiring once more: {}",
        origin.stats().renders
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_render_once_between_them() {
    let redis = RedisServer::start().await;
    let origin = origin("app").await;
    let cache = format!(
        "cache: {{ shared: {{ url: \"{}\", timeout: 200ms }} }}",
        redis.url()
    );
    let a = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", &cache)).await;
    let b = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", &cache)).await;
    connect_shared_tier(&a).await;
    connect_shared_tier(&b).await;
    let c = client();
    let path = "/register?activation_keys=shared&org=1";

    let from_a = get(&c, &a.url(path), &[]).await;
    assert_eq!(
        (from_a.status, x_cache(&from_a)),
        (200, "MISS"),
        "A fetches"
    );
    let stored = eventually(Duration::from_secs(3), || async {
        redis
            .keys()
            .await
            .iter()
            .any(|k| k.contains("/register?activation_keys=shared"))
    })
    .await;
    assert!(
        stored,
        "A writes the entry to Redis: {:?}",
        redis.keys().await
    );
    let keys = redis.keys().await;
    assert!(
        keys.iter().all(|k| k.starts_with("floodgate:")),
        "keys carry the default prefix: {keys:?}"
    );

    let from_b = get(&c, &b.url(path), &[]).await;
    assert_eq!(
        (from_b.status, x_cache(&from_b)),
        (200, "HIT"),
        "B hits the shared tier"
    );
    assert!(from_b.age.is_some(), "a shared hit carries an age");
    assert_eq!(from_b.body, from_a.body, "B serves A's rendering");
    assert_eq!(
        origin.stats().renders,
        1,
        "one render between the two gateways"
    );
    let again_b = get(&c, &b.url(path), &[]).await;
    assert_eq!(
        x_cache(&again_b),
        "HIT",
        "B's next request is a hit (memory warmed from Redis)"
    );
    assert_eq!(origin.stats().renders, 1, "still one render");
    let counted = eventually(Duration::from_secs(3), || async {
        cache_metric(&b, "hit_shared").await == 1.0 && cache_metric(&b, "hit").await == 1.0
    })
    .await;
    assert!(
        counted,
        "B counts one hit_shared and one memory hit (hit_shared {}, hit {})",
        cache_metric(&b, "hit_shared").await,
        cache_metric(&b, "hit").await
    );
    assert_eq!(cache_metric(&a, "miss").await, 1.0, "A counts the miss");

    // A purge on A removes the entry from Redis too.
    let r: serde_json::Value = c
        .delete(a.admin("/cache"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["purged_shared"],
        serde_json::json!(1),
        "the purge reports the Redis key: {r}"
    );
    assert!(
        redis.keys().await.is_empty(),
        "Redis is empty after the purge: {:?}",
        redis.keys().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_no_request_and_sharing_resumes_after_restart() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let origin = start_origin(OriginConfig {
        name: "app".into(),
        render_time: Duration::from_millis(20),
        ..OriginConfig::default()
    })
    .await
    .unwrap();
    let cache = format!(
        "cache: {{ shared: {{ url: \"{}\", timeout: 100ms }} }}",
        redis.url()
    );
    let a =
        Arc::new(TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", &cache)).await);
    let b =
        Arc::new(TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", &cache)).await);
    connect_shared_tier(&a).await;
    connect_shared_tier(&b).await;
    let c = client();
    let warm = "/register?org=warm";
    assert_eq!(
        x_cache(&get(&c, &a.url(warm), &[]).await),
        "MISS",
        "A fetches the warm key"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            !redis.keys().await.is_empty()
        })
        .await,
        "A stored the warm key in Redis"
    );
    assert_eq!(
        x_cache(&get(&c, &b.url(warm), &[]).await),
        "HIT",
        "B hits it through Redis before the outage"
    );

    // Background traffic on both gateways through the whole outage: the warm key (hits)
    // and fresh keys (misses that must go upstream).
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = JoinSet::new();
    for (w, gw) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (stop, failures, sent, c) = (stop.clone(), failures.clone(), sent.clone(), c.clone());
        load.spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let path = if i.is_multiple_of(2) {
                    warm.to_string()
                } else {
                    format!("/register?org=load-{w}-{i}")
                };
                let g = get(&c, &gw.url(&path), &[]).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if g.status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{path}: {} {:?}", g.status, g.body));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    redis.kill();
    assert!(!ping(port).await, "redis-server is gone");
    let noticed = eventually(Duration::from_secs(5), || async {
        cache_status(&a).await["shared_up"] == serde_json::json!(false)
            && cache_status(&b).await["shared_up"] == serde_json::json!(false)
    })
    .await;
    assert!(noticed, "both gateways notice the outage");

    // During the outage: memory still serves hits, misses go upstream.
    let renders = origin.stats().renders;
    for gw in [&a, &b] {
        let g = get(&c, &gw.url(warm), &[]).await;
        assert_eq!(
            (g.status, x_cache(&g)),
            (200, "HIT"),
            "the warm key is served from memory during the outage"
        );
    }
    let fresh = get(&c, &a.url("/register?org=during-outage"), &[]).await;
    assert_eq!(
        (fresh.status, x_cache(&fresh)),
        (200, "MISS"),
        "a miss during the outage goes upstream"
    );
    assert!(origin.stats().renders > renders, "and renders");

    let restarted_at = Instant::now();
    let _redis2 = RedisServer::start_on(port).await;
    // Sharing resumes: a new key fetched by A becomes a hit for B.
    let mut attempt = 0u32;
    let resumed = eventually(Duration::from_secs(8), || {
        attempt += 1;
        let path = format!("/register?org=after-restart-{attempt}");
        let (a, b, c) = (a.clone(), b.clone(), c.clone());
        async move {
            let g = get(&c, &a.url(&path), &[]).await;
            assert_eq!(g.status, 200, "request after restart");
            // the Redis write follows the answer; give it a moment
            let end = Instant::now() + Duration::from_millis(300);
            loop {
                let k = path.trim_start_matches("/register?");
                let stored = match redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                {
                    Ok(mut conn) => redis::cmd("KEYS")
                        .arg(format!("*{k}*"))
                        .query_async::<Vec<String>>(&mut conn)
                        .await
                        .map(|v| !v.is_empty())
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if stored || Instant::now() > end {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            x_cache(&get(&c, &b.url(&path), &[]).await) == "HIT"
        }
    })
    .await;
    let resume_time = restarted_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = load.join_next().await {
        r.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "no request fails during the outage: {failures:?}"
    );
    assert!(
        sent.load(Ordering::SeqCst) > 20,
        "the background load ran ({} requests)",
        sent.load(Ordering::SeqCst)
    );
    assert!(
        resumed,
        "sharing did not resume within 8 s of restarting redis-server (a: {}, b: {})",
        cache_status(&a).await,
        cache_status(&b).await
    );
    assert!(
        cache_metric(&a, "hit").await >= 1.0,
        "memory hits counted during the outage"
    );
    eprintln!("redis outage: {} background requests, 0 failed; sharing resumed {resume_time:?} after restart ({attempt} attempts)", sent.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cache_stays_within_max_bytes() {
    let origin = start_origin(OriginConfig {
        name: "app".into(),
        render_time: Duration::from_millis(5),
        ..OriginConfig::default()
    })
    .await
    .unwrap();
    let bound = 16 * 1024;
    let gw = TestGateway::start(&gateway_yaml(
        origin.addr(),
        "{ ttl: 60s }",
        "cache: { memory: { max_bytes: 16KiB } }",
    ))
    .await;
    let c = client();
    let n = 150;
    let mut max_seen = 0.0f64;
    for batch in 0..(n / 10) {
        let mut set = JoinSet::new();
        for j in 0..10 {
            let (c, url) = (
                c.clone(),
                gw.url(&format!(
                    "/register?activation_keys=ak-{}&org=1",
                    batch * 10 + j
                )),
            );
            set.spawn(async move { get(&c, &url, &[]).await });
        }
        while let Some(g) = set.join_next().await {
            assert_eq!(g.unwrap().status, 200, "every request is answered");
        }
        let bytes = gw.metric("floodgate_cache_bytes", &[]).await;
        max_seen = max_seen.max(bytes);
        assert!(
            bytes <= bound as f64,
            "floodgate_cache_bytes {bytes} exceeds max_bytes {bound} after {} keys",
            (batch + 1) * 10
        );
    }
    assert_eq!(
        origin.stats().renders,
        n as u64,
        "each distinct key renders once"
    );
    let entries = gw.metric("floodgate_cache_entries", &[]).await;
    assert!(
        max_seen > 0.0 && entries >= 1.0,
        "the cache stores something (bytes {max_seen}, entries {entries})"
    );
    assert!(
        entries < n as f64,
        "the bound forced evictions ({entries} entries of {n})"
    );
    // LRU: the newest key is still there, the oldest was evicted.
    let newest = get(
        &c,
        &gw.url(&format!("/register?activation_keys=ak-{}&org=1", n - 1)),
        &[],
    )
    .await;
    assert_eq!(x_cache(&newest), "HIT", "the most recent key survives");
    let oldest = get(&c, &gw.url("/register?activation_keys=ak-0&org=1"), &[]).await;
    assert_eq!(x_cache(&oldest), "MISS", "the oldest key was evicted");
    assert!(
        gw.state.cache.stats().bytes <= bound,
        "still within the bound"
    );
    eprintln!("memory bound: {n} keys, max_bytes {bound}, peak floodgate_cache_bytes {max_seen}, {entries} entries kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_cache_purges_all_or_by_path_prefix() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", "")).await;
    let c = client();
    let url = gw.url("/register?org=9");
    let purge = |q: &'static str| {
        let c = c.clone();
        let u = gw.admin(&format!("/cache{q}"));
        async move {
            let r = c.delete(u).send().await.unwrap();
            assert_eq!(r.status(), 200, "DELETE /cache{q}");
            r.json::<serde_json::Value>().await.unwrap()
        }
    };

    assert_eq!(x_cache(&get(&c, &url, &[]).await), "MISS");
    assert_eq!(x_cache(&get(&c, &url, &[]).await), "HIT");
    let r = purge("").await;
    assert_eq!(
        r["purged_memory"],
        serde_json::json!(1),
        "DELETE /cache removes the entry: {r}"
    );
    assert_eq!(
        x_cache(&get(&c, &url, &[]).await),
        "MISS",
        "after a purge the next request fetches"
    );
    assert_eq!(origin.stats().renders, 2, "and renders again");

    let r = purge("?prefix=/api").await;
    assert_eq!(
        r["purged_memory"],
        serde_json::json!(0),
        "a non-matching prefix removes nothing: {r}"
    );
    assert_eq!(
        x_cache(&get(&c, &url, &[]).await),
        "HIT",
        "entry survives a purge of another prefix"
    );

    let r = purge("?prefix=/register").await;
    assert_eq!(
        r["purged_memory"],
        serde_json::json!(1),
        "DELETE /cache?prefix=/register removes it: {r}"
    );
    assert_eq!(
        x_cache(&get(&c, &url, &[]).await),
        "MISS",
        "after the prefix purge the next request fetches"
    );
    assert_eq!(origin.stats().renders, 3, "and renders again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_served_from_the_get_entry_and_post_is_not_cached() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", "")).await;
    let c = client();
    let url = gw.url("/register?org=11");

    let g = get(&c, &url, &[]).await;
    assert_eq!((g.status, x_cache(&g)), (200, "MISS"));
    let h = send(&c, reqwest::Method::HEAD, &url, &[]).await;
    assert_eq!(
        (h.status, x_cache(&h)),
        (200, "HIT"),
        "HEAD is answered from the GET entry"
    );
    assert_eq!(
        h.content_length,
        Some(g.body.len()),
        "HEAD announces the GET body's length"
    );
    assert!(h.body.is_empty(), "HEAD has no body");
    assert_eq!(
        origin_hits(&origin, "/register"),
        1,
        "HEAD does not reach the origin"
    );

    for _ in 0..2 {
        let p = send(&c, reqwest::Method::POST, &url, &[]).await;
        assert_eq!(p.status, 200, "POST is proxied");
        assert_eq!(p.x_cache, None, "POST does not go through the cache");
        assert!(
            !p.body.starts_with("#!/bin/sh"),
            "POST does not get the cached GET body: {:?}",
            p.body
        );
    }
    assert_eq!(
        origin_hits(&origin, "/register"),
        3,
        "both POSTs reach the origin"
    );
    assert_eq!(
        x_cache(&get(&c, &url, &[]).await),
        "HIT",
        "the GET entry is untouched by POSTs"
    );

    // HEAD first on a fresh key fetches with GET, so a following GET gets the full body.
    let url2 = gw.url("/register?org=12");
    let h2 = send(&c, reqwest::Method::HEAD, &url2, &[]).await;
    assert_eq!(
        (h2.status, x_cache(&h2)),
        (200, "MISS"),
        "HEAD on a fresh key fetches"
    );
    let g2 = get(&c, &url2, &[]).await;
    assert_eq!(
        (g2.status, x_cache(&g2)),
        (200, "HIT"),
        "the GET after it is a hit"
    );
    assert!(
        g2.body.starts_with("#!/bin/sh") && g2.body.contains("org=12"),
        "with the full rendered body: {:?}",
        g2.body
    );
    assert_eq!(
        h2.content_length,
        Some(g2.body.len()),
        "HEAD's content-length matches the body"
    );
    assert_eq!(origin.stats().renders, 2, "one render per key");
}

/// Two cached routes with their own settings: `/register` (`@REGISTER@`) and `/status`
/// (`@STATUS@`), to check that one route's cache settings do not leak into another's.
fn two_route_yaml(origin: SocketAddr, register: &str, status: &str) -> String {
    conf(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
upstreams:
  foreman: { servers: [{ addr: "@ORIGIN@" }] }
routes:
  - { name: register, match: { path_prefix: /register }, upstream: foreman, cache: @REGISTER@ }
  - { name: status, match: { path_prefix: /status }, upstream: foreman, cache: @STATUS@ }
"#,
        &[
            ("@ORIGIN@", origin.to_string()),
            ("@REGISTER@", register.to_string()),
            ("@STATUS@", status.to_string()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_statuses_apply_only_to_their_own_route() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&two_route_yaml(
        origin.addr(),
        "{ ttl: 60s }",
        "{ ttl: 60s, statuses: [200, 404] }",
    ))
    .await;
    let c = client();
    // Control: the route that lists 404 stores it.
    let s1 = get(&c, &gw.url("/status/404"), &[]).await;
    let s2 = get(&c, &gw.url("/status/404"), &[]).await;
    assert_eq!(
        (s1.status, x_cache(&s1), s2.status, x_cache(&s2)),
        (404, "MISS", 404, "HIT"),
        "route status lists 404, so its 404 is stored"
    );
    // The register route keeps the default statuses [200]: its 404 must not be stored.
    origin.set_status_override("/register", Some(404));
    let r1 = get(&c, &gw.url("/register?org=1"), &[]).await;
    let r2 = get(&c, &gw.url("/register?org=1"), &[]).await;
    assert_eq!((r1.status, r2.status), (404, 404), "the origin answers 404");
    assert_eq!(
        x_cache(&r2),
        "MISS",
        "route register has statuses [200] (the default), so its 404 must not be stored; another route's `statuses: [200, 404]` must not apply to it"
    );
    assert_eq!(
        origin_hits(&origin, "/register"),
        2,
        "both /register requests reach the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_max_entry_size_applies_to_its_own_route() {
    let origin = origin("app").await;
    let gw = TestGateway::start(&two_route_yaml(
        origin.addr(),
        "{ ttl: 60s, max_entry_size: 64B }",
        "{ ttl: 60s }",
    ))
    .await;
    let c = client();
    // Control: the route with the default 8 MiB limit stores its small response.
    let s1 = get(&c, &gw.url("/status/200"), &[]).await;
    let s2 = get(&c, &gw.url("/status/200"), &[]).await;
    assert_eq!(
        (x_cache(&s1), x_cache(&s2)),
        ("MISS", "HIT"),
        "a small /status response is stored"
    );
    let r1 = get(&c, &gw.url("/register?org=1"), &[]).await;
    assert!(
        r1.body.len() > 64,
        "the rendered script is larger than 64 bytes ({} bytes)",
        r1.body.len()
    );
    let r2 = get(&c, &gw.url("/register?org=1"), &[]).await;
    assert_eq!((r1.status, r2.status), (200, 200), "both answered");
    assert_eq!(
        x_cache(&r2),
        "MISS",
        "route register has max_entry_size 64B, so its {}-byte script must not be stored; another route's larger limit must not apply to it",
        r1.body.len()
    );
    assert_eq!(origin.stats().renders, 2, "each /register request renders");
}

/// Issue 12 item 9: a gateway (re)started during a storm reports ready only once its shared
/// tier is connected, so its very first request finds what the other gateways stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_is_connected_to_redis_before_it_is_ready() {
    let redis = RedisServer::start().await;
    let origin = origin("app").await;
    let cache = format!(
        "cache: {{ shared: {{ url: \"{}\", timeout: 200ms }} }}",
        redis.url()
    );
    let a = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", &cache)).await;
    let c = client();
    let path = "/register?activation_keys=restart&org=1";
    assert_eq!(x_cache(&get(&c, &a.url(path), &[]).await), "MISS");
    let stored = eventually(Duration::from_secs(3), || async {
        redis
            .keys()
            .await
            .iter()
            .any(|k| k.contains("activation_keys=restart"))
    })
    .await;
    assert!(stored, "A stored the entry in Redis");
    // No warm-up call: the first request right after readiness.
    let b = TestGateway::start(&gateway_yaml(origin.addr(), "{ ttl: 60s }", &cache)).await;
    let first = get(&c, &b.url(path), &[]).await;
    assert_eq!(
        (first.status, x_cache(&first)),
        (200, "HIT"),
        "the first request of a fresh gateway is served from Redis"
    );
    assert_eq!(origin.stats().renders, 1, "no second render");
}
