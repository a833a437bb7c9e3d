//! The cache's `max_bytes` bounds the resident memory it adds (issue 19): 100,000 distinct
//! `GET /register` fills through the real gateway under a 16 MiB bound, and the test process's
//! `VmRSS` may grow at most 1.25 x `max_bytes` + 32 MiB after warm-up.

use crate::common::*;
use tokio::task::JoinSet;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// `n` distinct keys from `from`, over `conns` kept-alive clients in parallel.
async fn fill(gw: &TestGateway, from: usize, n: usize, conns: usize) {
    let mut set = JoinSet::new();
    for c in 0..conns {
        let client = client();
        let urls: Vec<String> = (from + c..from + n)
            .step_by(conns)
            .map(|i| gw.url(&format!("/register?activation_keys=ak-{i}&org=1")))
            .collect();
        set.spawn(async move {
            for url in urls {
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200, "every fill is answered");
                r.bytes().await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_small_entries_stay_within_the_resident_bound() {
    let origin = start_origin(OriginConfig {
        name: "app".into(),
        render_time: std::time::Duration::ZERO,
        ..OriginConfig::default()
    })
    .await
    .unwrap();
    let max_bytes: u64 = 16 << 20;
    let gw = TestGateway::start(&format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
upstreams:
  foreman: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: register, match: {{ path_prefix: /register }}, upstream: foreman, cache: {{ ttl: 600s }} }}
cache: {{ memory: {{ max_bytes: 16MiB }} }}
"#,
        origin.addr()
    ))
    .await;
    let conns = 8;
    // Warm-up: every thread, connection and pool the fill path uses exists before the baseline.
    fill(&gw, 1_000_000, 5_000, conns).await;
    let base = rss_bytes();
    fill(&gw, 0, 100_000, conns).await;
    let grown = rss_bytes().saturating_sub(base);
    let charged = gw.metric("floodgate_cache_bytes", &[]).await as u64;
    let entries = gw.metric("floodgate_cache_entries", &[]).await;
    let allowed = max_bytes + max_bytes / 4 + (32 << 20);
    eprintln!(
        "cache memory: 100000 fills, {entries} entries kept, {charged} B charged, RSS grew {} MiB (allowed {} MiB)",
        grown >> 20,
        allowed >> 20
    );
    assert!(charged <= max_bytes, "the charge stays within max_bytes");
    assert!(
        grown <= allowed,
        "resident growth {grown} B over 1.25 x max_bytes + 32 MiB = {allowed} B ({entries} entries)"
    );
}
