//! Slow request bodies (issue 12 item 6): a body must arrive within the client body deadline
//! (total, extended by the bytes received at the minimum rate), a small body is all in before
//! a slot is taken, and a client that trickles its body gets 408 instead of holding a slot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

fn yaml(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
server: {{ client_body_timeout: 2s, client_body_min_rate: 500 }}
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
access_log: {{ enabled: false }}
upstreams:
  u:
    servers: [{{ name: a, addr: "{addr}", max_inflight: 2 }}]
    queue: {{ max: 100, timeout: 30s }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}
"#
    )
}

/// Sends a POST head declaring `len` bytes, then the body one byte every `gap` until the
/// answer arrives; returns (status line, elapsed).
async fn trickle(addr: std::net::SocketAddr, len: usize, gap: Duration) -> (String, Duration) {
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    for _ in 0..len {
        tokio::select! {
            n = s.read(&mut buf) => {
                let n = n.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string();
                return (head, t.elapsed());
            }
            _ = tokio::time::sleep(gap) => {
                if s.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
    }
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (head, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_trickled_at_one_byte_a_second_get_408_and_never_hold_a_slot() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(a.addr())).await;
    let mut slow = JoinSet::new();
    for _ in 0..4 {
        let addr = gw.addr();
        slow.spawn(async move { trickle(addr, 100, Duration::from_millis(500)).await });
    }
    // While the four trickle, normal requests pass at once: no slot is held by them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = client()
        .post(gw.url("/echo"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "not queued behind trickling clients"
    );
    while let Some(r) = slow.join_next().await {
        let (head, took) = r.unwrap();
        assert!(head.contains(" 408 "), "a trickled body gets 408: {head:?}");
        assert!(
            took < Duration::from_secs(5),
            "within the 2 s deadline (and some slack): {took:?}"
        );
    }
    assert_eq!(
        a.stats().per_path.get("/echo"),
        Some(&1),
        "only the normal request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streamed_too_slowly_gets_408_and_its_slot_is_freed() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(a.addr())).await;
    // 200 KiB declared (streamed, over the read-ahead size), 1 byte per 200 ms.
    let (head, took) = trickle(gw.addr(), 200 * 1024, Duration::from_millis(200)).await;
    // The allowance is 2 s + received/500 s; at 5 bytes/s it is spent after about 2 s.
    assert!(head.contains(" 408 "), "refused with 408: {head:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    let freed = eventually(Duration::from_secs(5), || async {
        gw.metric("floodgate_upstream_inflight", &[("upstream", "u")])
            .await
            == 0.0
    })
    .await;
    assert!(freed, "the slot is released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_at_a_sane_rate_may_take_longer_than_the_base_deadline() {
    let a = origin("a").await;
    let gw = TestGateway::start(&yaml(a.addr())).await;
    // 600 KiB at ~200 KiB/s: 3 s, over the 2 s base but far above 500 bytes/s.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let len = 600 * 1024;
    s.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'y'; 20 * 1024];
    for _ in 0..30 {
        s.write_all(&chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
}
