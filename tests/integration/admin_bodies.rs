//! Admin request bodies (issue 12 items 7 and 10): a body that does not end cleanly is never
//! applied, an empty map body is refused (emptying is its own request), and a body over an
//! endpoint's limit is refused as soon as it passes the limit, on a connection that is closed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::maps::{masters, node, one_route_gateway};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn admin_conn(gw: &TestGateway) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", gw.admin_port))
        .await
        .unwrap()
}

/// Reads until the peer closes or 5 s pass; returns what arrived.
async fn read_all(conn: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn thousand_entries() -> String {
    (0..1000).map(|i| format!("node{i} master2\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_put_cut_mid_body_is_never_applied() {
    let ms = masters().await;
    let dir = Scratch::new("cut-put");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let body = thousand_entries();
    // Content-Length: half of the body sent, then the client goes away.
    let mut conn = admin_conn(&gw).await;
    let head = format!(
        "PUT /maps/nodes HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    drop(conn);
    // Chunked: two chunks, no terminating chunk, then the client goes away.
    let mut conn = admin_conn(&gw).await;
    conn.write_all(
        b"PUT /maps/nodes HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    for part in [&body[..3000], &body[3000..6000]] {
        conn.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
            .await
            .unwrap();
    }
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    assert_eq!(node(&c, &gw, "node1").await, "master1", "map unchanged");
    assert_eq!(
        std::fs::read_to_string(&map).unwrap(),
        "node1 master1\n",
        "nothing persisted"
    );
    let updates = gw
        .metric(
            "floodgate_map_updates_total",
            &[("map", "nodes"), ("result", "ok")],
        )
        .await;
    assert_eq!(updates, 0.0, "no update was applied");
    // The whole body, sent cleanly, is applied.
    let r = c
        .put(gw.admin("/maps/nodes"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(node(&c, &gw, "node999").await, "master2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_map_body_is_refused_and_emptying_is_an_explicit_request() {
    let ms = masters().await;
    let dir = Scratch::new("empty-put");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let c = client();
    for body in ["", "\n\n", "# only a comment\n"] {
        let r = c
            .put(gw.admin("/maps/nodes"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "body {body:?}: {text}");
        assert!(
            text.contains("DELETE /maps/nodes/entries"),
            "names the way: {text}"
        );
        assert_eq!(node(&c, &gw, "node1").await, "master1");
    }
    let r = c
        .delete(gw.admin("/maps/nodes/entries"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let st = status(&gw).await;
    assert_eq!(
        st["maps"]["nodes"]["entries"], 0,
        "emptied on request: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_endpoint_limit_is_refused_once_past_it_and_the_connection_closes()
{
    let ms = masters().await;
    let dir = Scratch::new("big-post");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let mut conn = admin_conn(&gw).await;
    conn.write_all(
        b"POST /maps/nodes/entries HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    // 2 MiB in 64 KiB chunks, more than the 1 MiB limit of this endpoint; keep the stream
    // open (no terminating chunk) to see that the answer does not wait for the end.
    let line: String = "nodeX master2\n".repeat(64 * 1024 / 14);
    let mut sent = 0usize;
    let mut refused = false;
    while sent < (2 << 20) {
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            refused = true;
            break;
        }
        sent += line.len();
    }
    let answer = read_all(&mut conn).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "413 after the limit (sent {sent} bytes, write refused: {refused}): {answer:?}"
    );
    assert_eq!(node(&client(), &gw, "node1").await, "master1");
}
