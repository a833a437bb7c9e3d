//! The cache's fill goes through the same path as any request (issue 12, items 1-3): what the
//! app receives on a cached route (owned headers stripped in every spelling, forwarding
//! headers), balancing and retries of the fill, large answers and many headers, and what a
//! shared cache may store and reuse (credentials in the key, `Cache-Control`, `Vary`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::time::{Duration, Instant};

fn yaml(servers: &str, cache: &str) -> String {
    format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
access_log: {{ enabled: false }}
upstreams:
  app:
    servers: {servers}
    queue: {{ max: 100, timeout: 10s }}
    retries: 2
routes:
  - {{ name: cached, match: {{ path_prefix: [/echo, /big, /register] }}, upstream: app, cache: {cache} }}
  - {{ name: other, match: {{ path_prefix: / }}, upstream: app }}
"#
    )
}

struct Got {
    status: u16,
    x_cache: String,
    body: String,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    /// The header as the echo origin received it (`None` when absent).
    fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
    fn seq(&self) -> u64 {
        self.json()["seq"].as_u64().unwrap()
    }
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let x_cache = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Got {
        status,
        x_cache,
        body: r.text().await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_fill_strips_forged_identity_in_every_spelling_and_adds_forwarding_headers() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(
        &format!("[{{ name: a, addr: \"{}\" }}]", a.addr()),
        "{ ttl: 60s }",
    ))
    .await;
    let forged = [
        ("SSL-CLIENT-VERIFY", "SUCCESS"),
        ("SSL_CLIENT_S_DN", "CN=admin"),
        ("ssl_client_cert", "forged"),
        ("REMOTE-USER", "admin"),
        ("REMOTE_USER", "admin"),
        ("REMOTE_USER-EMAIL", "admin@example.com"),
        ("X_FORWARDED_FOR", "10.6.6.6"),
        ("X-Client-Verify", "SUCCESS"),
        ("X_Request_Id", "forged-id"),
    ];
    let g = get(&gw, "/echo?k=1", &forged).await;
    assert_eq!((g.status, g.x_cache.as_str()), (200, "MISS"));
    let seen = g.json()["headers"].as_object().unwrap().clone();
    for (name, _) in forged {
        let canon = name.to_ascii_lowercase();
        assert!(
            !seen.contains_key(&canon),
            "the fill must not forward the client's {name}: {seen:?}"
        );
    }
    assert_eq!(g.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(g.seen("x-forwarded-proto").as_deref(), Some("http"));
    assert!(
        g.seen("x-request-id").is_some(),
        "the fill carries the request id"
    );
    // The stored answer is the one rendered without the forged identity, for everyone.
    let again = get(&gw, "/echo?k=1", &[]).await;
    assert_eq!((again.x_cache.as_str(), again.seq()), ("HIT", g.seq()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_fill_is_balanced_and_retried_on_another_server_like_any_request() {
    let a = origin("a").await;
    let dead = free_port();
    let gw = TestGateway::start(&yaml(
        &format!(
            "[{{ name: dead, addr: \"127.0.0.1:{dead}\" }}, {{ name: a, addr: \"{}\" }}]",
            a.addr()
        ),
        "{ ttl: 60s }",
    ))
    .await;
    // Round robin sends some fills to the dead server first: each must be retried on `a`.
    for k in 0..6 {
        let g = get(&gw, &format!("/echo?k={k}"), &[]).await;
        assert_eq!(
            (g.status, g.x_cache.as_str()),
            (200, "MISS"),
            "fill {k} reaches the live server: {}",
            g.body
        );
    }
    assert_eq!(a.stats().per_path.get("/echo"), Some(&6));
    let connect_errors = gw
        .metric(
            "floodgate_upstream_requests_total",
            &[("server", "dead"), ("code", "connect_error")],
        )
        .await;
    assert!(
        connect_errors >= 1.0,
        "some fills tried the dead server first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_and_many_headers_pass_through_a_cached_route() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(
        &format!("[{{ name: a, addr: \"{}\" }}]", a.addr()),
        "{ ttl: 60s }",
    ))
    .await;
    // 9 MiB: over the 8 MiB entry limit and what a fill shares, so it is proxied per request.
    let big = get(&gw, "/big?bytes=9437184", &[]).await;
    assert_eq!((big.status, big.body.len()), (200, 9_437_184));
    // 2 MiB: under the default 8 MiB max_entry_size, so stored.
    let mid = get(&gw, "/big?bytes=2097152", &[]).await;
    assert_eq!(
        (mid.status, mid.body.len(), mid.x_cache.as_str()),
        (200, 2_097_152, "MISS")
    );
    let mid2 = get(&gw, "/big?bytes=2097152", &[]).await;
    assert_eq!((mid2.body.len(), mid2.x_cache.as_str()), (2_097_152, "HIT"));
    // 80 request headers reach the origin through the fill.
    let names: Vec<String> = (0..80).map(|i| format!("x-extra-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let g = get(&gw, "/echo?many=1", &headers).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(g.seen("x-extra-79").as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_always_in_the_key_even_when_the_route_varies_on_something_else() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(
        &format!("[{{ name: a, addr: \"{}\" }}]", a.addr()),
        "{ ttl: 60s, vary: [x-org] }",
    ))
    .await;
    let with_cookie = get(&gw, "/echo?p=1", &[("cookie", "session=alice")]).await;
    let without = get(&gw, "/echo?p=1", &[]).await;
    assert_eq!(
        (with_cookie.x_cache.as_str(), without.x_cache.as_str()),
        ("MISS", "MISS"),
        "an answer rendered for a cookie is never served to a request without it"
    );
    assert_ne!(with_cookie.seq(), without.seq());
    let bob = get(&gw, "/echo?p=1", &[("cookie", "session=bob")]).await;
    assert_eq!(bob.x_cache, "MISS", "nor to another cookie");
    let alice = get(&gw, "/echo?p=1", &[("cookie", "session=alice")]).await;
    assert_eq!(
        (alice.x_cache.as_str(), alice.seq()),
        ("HIT", with_cookie.seq())
    );
    let auth = get(&gw, "/echo?p=1", &[("authorization", "Bearer x")]).await;
    assert_eq!(auth.x_cache, "MISS", "nor to other credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_no_store_and_no_cache_answers_are_not_stored_and_max_age_caps_the_ttl() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(
        &format!("[{{ name: a, addr: \"{}\" }}]", a.addr()),
        "{ ttl: 60s }",
    ))
    .await;
    for cc in ["private", "no-store", "no-cache", "max-age%3D0"] {
        let path = format!("/echo?h=Cache-Control:{cc}");
        let first = get(&gw, &path, &[]).await;
        let second = get(&gw, &path, &[]).await;
        assert_eq!(
            (first.x_cache.as_str(), second.x_cache.as_str()),
            ("MISS", "MISS"),
            "Cache-Control: {cc} is not stored"
        );
        assert_ne!(first.seq(), second.seq(), "{cc}: rendered twice");
    }
    // max-age=1 caps the route's 60 s.
    let path = "/echo?h=Cache-Control:max-age%3D1";
    let stored = Instant::now();
    let first = get(&gw, path, &[]).await;
    assert_eq!(get(&gw, path, &[]).await.x_cache, "HIT");
    // Polled until it expires: not before its second, and not long after.
    let later = loop {
        let r = get(&gw, path, &[]).await;
        if r.x_cache == "MISS" {
            break r;
        }
        assert!(
            stored.elapsed() < Duration::from_secs(3),
            "still cached after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stored.elapsed() >= Duration::from_millis(900),
        "expired after {:?}, before max-age=1",
        stored.elapsed()
    );
    assert_ne!(later.seq(), first.seq());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_vary_keeps_variants_apart_and_vary_star_is_not_stored() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(
        &format!("[{{ name: a, addr: \"{}\" }}]", a.addr()),
        "{ ttl: 60s }",
    ))
    .await;
    let path = "/echo?h=Vary:Accept-Language";
    let de = get(&gw, path, &[("accept-language", "de")]).await;
    let de2 = get(&gw, path, &[("accept-language", "de")]).await;
    assert_eq!(
        (de.x_cache.as_str(), de2.x_cache.as_str(), de2.seq()),
        ("MISS", "HIT", de.seq()),
        "the same variant is reused"
    );
    let en = get(&gw, path, &[("accept-language", "en")]).await;
    assert_ne!(
        en.seq(),
        de.seq(),
        "another variant is never given the stored one"
    );
    assert_eq!(en.seen("accept-language").as_deref(), Some("en"));
    let none = get(&gw, path, &[]).await;
    assert_ne!(none.seq(), de.seq(), "absent is another variant");
    let star = "/echo?h=Vary:*";
    let s1 = get(&gw, star, &[]).await;
    let s2 = get(&gw, star, &[]).await;
    assert_ne!(s1.seq(), s2.seq(), "Vary: * is never stored");
}
