//! Map pollers follow config reloads (issue 14): a reload that points a map's `source` at
//! another origin stops the old poller and starts one on the new origin (the old origin is no
//! longer asked), reloads that leave the map alone keep one poller (no duplicates after N
//! reloads), and a reload that removes the source stops polling. Real map servers on
//! 127.0.0.1 count the GETs they answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::maps::{masters, node, servers, MapServer};
use std::time::{Duration, Instant};

/// Poll period of the sources in these tests.
const EVERY: Duration = Duration::from_millis(100);

fn config(ms: &[OriginHandle], map: &str) -> String {
    format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
access_log: {{ enabled: false }}
upstreams:
  puppet: {{ servers: [{}] }}
maps:
  nodes: {map}
routes:
  - {{ name: puppet, match: {{ path_prefix: / }}, upstream: puppet, pick_server: {{ map: nodes, key: "header:X-Node-Name", on_miss: reject }} }}
"#,
        servers(ms)
    )
}

fn polled(url: &str) -> String {
    format!(
        "{{ source: {{ url: \"{url}\", every: {}ms, timeout: 1s }} }}",
        EVERY.as_millis()
    )
}

async fn reload(c: &reqwest::Client, gw: &TestGateway, yaml: &str) {
    gw.write_config(yaml);
    let r = c.post(gw.admin("/reload")).send().await.unwrap();
    let status = r.status();
    assert_eq!(
        status,
        200,
        "reload: {}",
        r.text().await.unwrap_or_default()
    );
}

/// Waits until `server` has answered `n` more GETs than now (so its poller is running).
async fn polled_again(server: &MapServer, n: usize) -> bool {
    let from = server.hits();
    eventually(Duration::from_secs(5), || async {
        server.hits() >= from + n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_poller_to_the_new_source_and_stops_the_old_one() {
    let ms = masters().await;
    let a = MapServer::start("node1 master1\n").await;
    let b = MapServer::start("node1 master2\n").await;
    let (url_a, url_b) = (a.url("/map"), b.url("/map"));
    let c = client();
    let bound = Duration::from_secs(5);
    let gw = TestGateway::start(&config(&ms, &polled(&url_a))).await;
    assert!(
        eventually(bound, || async {
            node(&c, &gw, "node1").await == "master1"
        })
        .await,
        "origin A's map applies"
    );

    // Switch to B: the map follows B, and A is asked no more.
    reload(&c, &gw, &config(&ms, &polled(&url_b))).await;
    assert!(
        eventually(bound, || async {
            node(&c, &gw, "node1").await == "master2"
        })
        .await,
        "after the reload the map follows origin B"
    );
    let a_hits = a.hits();
    assert!(polled_again(&b, 5).await, "B is polled every {EVERY:?}");
    assert_eq!(a.hits(), a_hits, "A is no longer polled after the reload");

    // Back and forth, then reloads that leave the map alone: one poller of B, not several.
    reload(&c, &gw, &config(&ms, &polled(&url_a))).await;
    assert!(
        eventually(bound, || async {
            node(&c, &gw, "node1").await == "master1"
        })
        .await,
        "back to A"
    );
    reload(&c, &gw, &config(&ms, &polled(&url_b))).await;
    assert!(
        eventually(bound, || async {
            node(&c, &gw, "node1").await == "master2"
        })
        .await,
        "B again"
    );
    for _ in 0..3 {
        reload(&c, &gw, &config(&ms, &polled(&url_b))).await;
    }
    b.set("node1 master3\n");
    assert!(
        eventually(bound, || async {
            node(&c, &gw, "node1").await == "master3"
        })
        .await,
        "the kept poller still applies B's changes"
    );
    let window = Duration::from_secs(1);
    let (from, t0) = (b.hits(), Instant::now());
    tokio::time::sleep(window).await;
    let per_window = (b.hits() - from) as f64 * window.as_secs_f64() / t0.elapsed().as_secs_f64();
    let one_poller = window.as_secs_f64() / EVERY.as_secs_f64();
    assert!(
        per_window <= one_poller + 3.0,
        "{per_window:.0} GETs to B in {window:?}: one poller makes at most {one_poller:.0}"
    );

    // A reload that removes the source stops polling B; the map now comes from its file.
    let dir = Scratch::new("map-pollers");
    let file = dir.write("nodes.map", "node1 master1\n");
    reload(&c, &gw, &config(&ms, &format!("{{ file: \"{file}\" }}"))).await;
    assert!(
        eventually(bound, || async {
            node(&c, &gw, "node1").await == "master1"
        })
        .await,
        "the file's map applies"
    );
    // why: the poller is stopped within one reconcile period (200 ms) of the reload; the rest
    // is margin for a loaded machine
    tokio::time::sleep(Duration::from_millis(600)).await;
    let b_hits = b.hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        b.hits(),
        b_hits,
        "B is no longer polled once the source is removed"
    );
}
