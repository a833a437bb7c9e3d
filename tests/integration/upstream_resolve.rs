//! Host names in server addresses are resolved again while the gateway runs
//! (`resolve_every`), so a server that moved is reached without a reload.

use crate::common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_given_by_host_name_is_resolved_again_and_reached_at_its_new_address() {
    let o = origin("named").await;
    let port = o.addr().port();
    let gw = TestGateway::start(&format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
upstreams:
  app:
    resolve_every: 200ms
    retries: 0
    servers: [{{ name: web, addr: "localhost:{port}" }}]
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: app }}
"#
    ))
    .await;
    let r = client().get(gw.url("/a")).send().await.unwrap();
    assert_eq!(r.status(), 200, "reached through the name resolved at load");
    // Point the server somewhere dead, as if the name had resolved there before.
    let snap = gw.state.snapshot();
    let server = &snap.upstreams["app"].servers[0];
    assert!(server
        .set_resolved("127.0.0.1:1".parse().unwrap())
        .is_some());
    assert_eq!(server.current_addr(), "127.0.0.1:1");
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.current_addr() == format!("127.0.0.1:{port}")
        })
        .await,
        "the next lookup of localhost moves the server back: {}",
        server.current_addr()
    );
    let r = client().get(gw.url("/b")).send().await.unwrap();
    assert_eq!(r.status(), 200, "and requests reach it there");
}
