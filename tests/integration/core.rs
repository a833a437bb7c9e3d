//! Gateway core: routing, balancing, failures, forwarding headers, metrics, reload.

use crate::common::*;

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
    assert!(body.contains(&rid), "the 404 body names the request id: {body}");
    assert_eq!(gw.metric("floodgate_requests_total", &[("route", "api"), ("code", "200")]).await, 1.0);
    assert_eq!(gw.metric("floodgate_requests_total", &[("route", "none"), ("code", "404")]).await, 1.0);
}
