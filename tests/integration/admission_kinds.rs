//! Each route's requests are their own kind of cost (issue 11): fail-fast prices a queued
//! request by what requests of its own route held the slots for, not by the class's mean.
//! Two routes share one upstream and one priority class; one is cheap, one is expensive.
//! A burst of the expensive one is told at once which of it cannot be served before the
//! queue timeout. Priced by the class's mean (the cheap route's many short holds among a few
//! long ones), the burst would look fast, wait, and hear at its timeout instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const SLOW_MS: u64 = 300;

fn config(origin: std::net::SocketAddr) -> String {
    r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  u:
    servers: [{ name: a, addr: "@A@", max_inflight: 2 }]
    queue: { max: 100, timeout: 3s, fail_fast: true }
routes:
  - { name: cheap, match: { header: { name: X-Kind, value: cheap } }, upstream: u }
  - { name: costly, match: { path_prefix: / }, upstream: u }
"#
    .replace("@A@", &origin.to_string())
}

/// Status and time to answer of one GET.
async fn timed_get(c: &reqwest::Client, url: &str, cheap: bool) -> (u16, Duration) {
    let t = Instant::now();
    let mut req = c.get(url);
    if cheap {
        req = req.header("X-Kind", "cheap");
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    (status, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_costly_route_is_priced_by_its_own_holds_not_its_class_mean() {
    let a = origin("a").await;
    let gw = TestGateway::start(&config(a.addr())).await;
    let c = client();
    let slow = gw.url(&format!("/slow?ms={SLOW_MS}"));
    // One at a time, so the class is never backlogged and no arrival check judges the
    // burst: what answers it early is trimming, which reads the costs.
    for _ in 0..6 {
        assert_eq!(timed_get(&c, &slow, false).await.0, 200);
    }
    // The cheap route last: the class's mean is now ~6 x 300 ms among 100 x ~1 ms (< 30 ms).
    for _ in 0..100 {
        assert_eq!(timed_get(&c, &gw.url("/slow?ms=1"), true).await.0, 200);
    }

    // 40 costly requests at once on 2 slots: about (3 s - 0.3 s) x 2 / 0.3 s = 18 can be
    // served before their queue timeout; the rest cannot.
    let mut burst = JoinSet::new();
    for _ in 0..40 {
        let (c, url) = (c.clone(), slow.clone());
        burst.spawn(async move { timed_get(&c, &url, false).await });
    }
    let mut seen = Vec::new();
    while let Some(r) = burst.join_next().await {
        seen.push(r.unwrap());
    }
    let served = seen.iter().filter(|(s, _)| *s == 200).count();
    let told_early: Vec<Duration> = seen
        .iter()
        .filter(|(s, d)| *s == 503 && *d < Duration::from_millis(1_500))
        .map(|(_, d)| *d)
        .collect();
    let refused = seen.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(served + refused, 40, "only 200s and 503s: {seen:?}");
    assert!(
        told_early.len() >= 12,
        "the costly route's own holds (300 ms) say most of the tail cannot make it: \
         {} of {refused} refused within 1.5 s ({seen:?})",
        told_early.len()
    );
    assert!(
        served >= 12,
        "the head of the burst is still served: {served} ({seen:?})"
    );
    let reason = [
        ("scope", "upstream"),
        ("name", "u"),
        ("reason", "fail_fast"),
    ];
    assert!(
        gw.metric("floodgate_admission_rejected_total", &reason)
            .await
            >= told_early.len() as f64,
        "counted as fail_fast"
    );
    assert!(
        a.stats().max_concurrent <= 2,
        "the app never saw more than max_inflight: {:?}",
        a.stats()
    );
}
