//! floodgate's test kit: tools for the demo, the integration tests and the benchmarks,
//! kept out of the gateway crate (the shipped binary has none of this). An HTTP/1.1
//! app-server simulator that collapses like Puma under load ([`origin`]), a
//! registration-storm load generator ([`storm`]), and a bare Pingora reverse proxy that
//! gives `benches/proxy.sh` the framework's cost floor ([`bare`]).
//!
//! The origin and the storm speak plain HTTP/1.1 over loopback TCP and share the
//! small framing helpers in this file (request/response bodies by `Content-Length`
//! or `chunked`).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bare;
pub mod origin;
pub mod storm;

pub use origin::{start_origin, start_origin_at, OriginConfig, OriginHandle, OriginStats};
pub use storm::{run_storm, HostFailure, SimpleClient, SimpleResponse, StormConfig, StormReport};

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest header block either side accepts; larger heads fail with `InvalidData`.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest body either side accepts; larger bodies fail with `InvalidData`.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Reads more bytes from `stream` into `buf`. Returns `UnexpectedEof` when the
/// peer closed, so callers in the middle of a message see an error.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<()> {
    buf.reserve(4096);
    let n = stream.read_buf(buf).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed mid-message",
        ));
    }
    Ok(())
}

/// Reads exactly `len` body bytes, first from `buf` (bytes already received
/// after the head), then from `stream`.
async fn read_sized_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    len: usize,
) -> io::Result<Bytes> {
    if len > MAX_BODY_BYTES {
        return Err(invalid("body too large"));
    }
    while buf.len() < len {
        read_more(stream, buf).await?;
    }
    Ok(buf.split_to(len).freeze())
}

/// Reads one CRLF-terminated line (without the CRLF).
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<Bytes> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(pos).freeze();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(invalid("line too long"));
        }
        read_more(stream, buf).await?;
    }
}

/// Decodes a `Transfer-Encoding: chunked` body; trailers are read and dropped.
async fn read_chunked_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> io::Result<Bytes> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(stream, buf).await?;
        let text = std::str::from_utf8(&line).map_err(|_| invalid("bad chunk size"))?;
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailers end with an empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(body.freeze());
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(invalid("body too large"));
        }
        let chunk = read_sized_body(stream, buf, size).await?;
        body.extend_from_slice(&chunk);
        if !read_line(stream, buf).await?.is_empty() {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// How the body of a message is framed, from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    None,
    Sized(usize),
    Chunked,
    /// Response body runs until the peer closes (no length, not chunked).
    UntilClose,
}

/// Picks the framing from lowercase-named headers; `default` applies when
/// neither `transfer-encoding: chunked` nor `content-length` is present.
fn body_framing(headers: &[(String, String)], default: BodyFraming) -> io::Result<BodyFraming> {
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return Ok(BodyFraming::Chunked);
    }
    match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, v)) => v
            .trim()
            .parse::<usize>()
            .map(BodyFraming::Sized)
            .map_err(|_| invalid("bad content-length")),
        None => Ok(default),
    }
}

/// Reads the body described by `framing`.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    framing: BodyFraming,
) -> io::Result<Bytes> {
    match framing {
        BodyFraming::None => Ok(Bytes::new()),
        BodyFraming::Sized(n) => read_sized_body(stream, buf, n).await,
        BodyFraming::Chunked => read_chunked_body(stream, buf).await,
        BodyFraming::UntilClose => {
            loop {
                if buf.len() > MAX_BODY_BYTES {
                    return Err(invalid("body too large"));
                }
                buf.reserve(4096);
                if stream.read_buf(buf).await? == 0 {
                    break;
                }
            }
            Ok(buf.split().freeze())
        }
    }
}

/// Whether the connection stays open after this message, per HTTP/1.x rules.
fn wants_keep_alive(version: u8, headers: &[(String, String)]) -> bool {
    let conn = headers
        .iter()
        .find(|(n, _)| n == "connection")
        .map(|(_, v)| v.to_ascii_lowercase());
    match conn {
        Some(v) if v.contains("close") => false,
        Some(v) if v.contains("keep-alive") => true,
        _ => version >= 1,
    }
}

/// Copies httparse headers into owned pairs with lowercase names.
fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn chunked_body_is_decoded_and_trailers_dropped() {
        let wire: &[u8] = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut stream = wire;
        let mut buf = BytesMut::new();
        let body = read_chunked_body(&mut stream, &mut buf).await.unwrap();
        assert_eq!(&body[..], b"Wikipedia", "chunks must be joined");
        assert_eq!(&buf[..], b"NEXT", "bytes after the body must stay buffered");
    }

    #[test]
    fn framing_prefers_chunked_over_content_length() {
        let h = vec![
            ("content-length".to_string(), "3".to_string()),
            ("transfer-encoding".to_string(), "chunked".to_string()),
        ];
        assert_eq!(
            body_framing(&h, BodyFraming::None).unwrap(),
            BodyFraming::Chunked,
            "chunked wins per RFC 9112"
        );
    }
}

/// Origin behaviour through its public API over real sockets.
#[cfg(test)]
mod origin_tests {
    #![allow(clippy::unwrap_used)]
    use super::origin::{start_origin, start_origin_at, OriginConfig, OriginHandle};
    use super::storm::{SimpleClient, SimpleResponse};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinSet;

    fn fast(name: &str) -> OriginConfig {
        OriginConfig {
            name: name.to_string(),
            slots: 64,
            base_service: Duration::from_millis(1),
            collapse: 0.0,
            render_time: Duration::from_millis(1),
            work_for_gone_clients: true,
            ..OriginConfig::default()
        }
    }

    async fn get(origin: &OriginHandle, path: &str) -> SimpleResponse {
        let mut c = SimpleClient::new(origin.addr());
        c.request("GET", path, &[], None).await.unwrap()
    }

    #[tokio::test]
    async fn origin_answers_each_endpoint_with_x_origin() {
        let o = start_origin(fast("o1")).await.unwrap();
        let r = get(&o, "/api/status").await;
        assert_eq!(r.status, 200, "status endpoint");
        assert_eq!(
            r.header("x-origin"),
            Some("o1"),
            "X-Origin on every response"
        );
        assert!(
            r.text().contains("\"origin\":\"o1\""),
            "status body names origin: {}",
            r.text()
        );

        let r = get(&o, "/register?location_id=2&activation_keys=ak-1").await;
        assert_eq!(r.status, 200, "register");
        assert!(
            r.text().starts_with(
                "#!/bin/sh\n# rendered by o1 for activation_keys=ak-1&location_id=2\n"
            ),
            "script with sorted query: {}",
            r.text()
        );

        let mut c = SimpleClient::new(o.addr());
        let r = c
            .request("POST", "/rhsm/consumers", &[], Some(b"{\"name\":\"h\"}"))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["uuid"].as_str().map(str::len),
            Some(36),
            "uuid-ish id: {v}"
        );
        assert_eq!(v["received_bytes"], 12, "body was read: {v}");

        let r = get(&o, "/rhsm/status").await;
        assert!(
            r.status == 200 && r.text().contains("\"result\":\"ok\""),
            "rhsm json: {}",
            r.text()
        );
        assert_eq!(get(&o, "/slow?ms=20").await.status, 200, "slow");
        assert_eq!(
            get(&o, "/status/502").await.status,
            502,
            "status/NNN answers NNN"
        );
        assert_eq!(
            get(&o, "/anything").await.text(),
            "origin o1 path /anything\n",
            "fallback body"
        );

        let r = c
            .request(
                "PUT",
                "/echo?x=1",
                &[("X-Forwarded-For", "10.0.0.1")],
                Some(b"hi"),
            )
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["method"], "PUT", "echo method: {v}");
        assert_eq!(v["query"], "x=1", "echo query: {v}");
        assert_eq!(
            v["headers"]["x-forwarded-for"], "10.0.0.1",
            "echo headers lowercased: {v}"
        );
        assert_eq!(v["body"], "hi", "echo body: {v}");

        let s = o.stats();
        assert_eq!(s.renders, 1, "one render");
        assert_eq!(
            s.per_path.get("/register"),
            Some(&1),
            "per-path counts strip the query: {s:?}"
        );
        assert_eq!(s.current_concurrent, 0, "nothing left inside");
    }

    #[tokio::test]
    async fn chunked_request_body_is_read() {
        let o = start_origin(fast("o")).await.unwrap();
        let mut s = TcpStream::connect(o.addr()).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.contains("\"body\":\"abc\""),
            "chunked body echoed: {out}"
        );
    }

    #[tokio::test]
    async fn max_concurrent_is_exact_under_100_concurrent_clients() {
        let o = Arc::new(start_origin(fast("o")).await.unwrap());
        let mut set = JoinSet::new();
        for _ in 0..100 {
            let addr = o.addr();
            set.spawn(async move {
                SimpleClient::new(addr)
                    .request("GET", "/slow?ms=600", &[], None)
                    .await
                    .unwrap()
                    .status
            });
        }
        while let Some(status) = set.join_next().await {
            assert_eq!(status.unwrap(), 200, "every slow request answered");
        }
        let s = o.stats();
        assert_eq!(s.max_concurrent, 100, "all 100 were inside at once");
        assert_eq!(s.current_concurrent, 0, "all left");
        assert_eq!(s.per_path.get("/slow"), Some(&100), "100 counted");
    }

    #[tokio::test]
    async fn keep_alive_serves_100_sequential_requests_on_one_connection() {
        let o = start_origin(fast("o")).await.unwrap();
        let mut c = SimpleClient::new(o.addr());
        for i in 0..100 {
            let r = c
                .request("GET", &format!("/p{i}"), &[], None)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "request {i}");
        }
        assert_eq!(o.stats().connections, 1, "one connection for all requests");
        assert_eq!(o.stats().requests, 100, "all requests seen");
    }

    #[tokio::test]
    async fn shutdown_makes_port_refuse_and_closes_open_connections() {
        let o = start_origin(fast("o")).await.unwrap();
        let addr = o.addr();
        let mut open = TcpStream::connect(addr).await.unwrap();
        open.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(
            open.read(&mut buf).await.unwrap() > 0,
            "answered before shutdown"
        );
        o.shutdown().await;
        let refused = TcpStream::connect(addr).await;
        assert!(refused.is_err(), "port must refuse after shutdown");
        let n = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "open connection closed: {n:?}");
        // It can come back on the same address.
        let back = start_origin_at(fast("o"), addr).await.unwrap();
        assert_eq!(
            get(&back, "/api/status").await.status,
            200,
            "restarted origin answers"
        );
    }

    #[tokio::test]
    async fn reset_closes_without_answering() {
        let o = start_origin(fast("o")).await.unwrap();
        let err = SimpleClient::new(o.addr())
            .request("GET", "/reset", &[], None)
            .await;
        assert!(err.is_err(), "no response to /reset: {err:?}");
    }

    #[tokio::test]
    async fn status_override_applies_by_prefix_and_clears() {
        let o = start_origin(fast("o")).await.unwrap();
        o.set_status_override("/api/status", Some(503));
        assert_eq!(get(&o, "/api/status").await.status, 503, "override applies");
        assert_eq!(
            get(&o, "/rhsm/status").await.status,
            200,
            "other paths untouched"
        );
        o.set_status_override("/api/status", Some(500));
        assert_eq!(
            get(&o, "/api/status").await.status,
            500,
            "override replaced"
        );
        o.set_status_override("/api/status", None);
        assert_eq!(get(&o, "/api/status").await.status, 200, "override cleared");
    }

    #[tokio::test]
    async fn workers_are_fifo_slots_and_collapse_slows_service() {
        let cfg = OriginConfig {
            slots: 1,
            base_service: Duration::from_millis(40),
            ..fast("o")
        };
        let o = start_origin(cfg).await.unwrap();
        let t = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..4 {
            let addr = o.addr();
            set.spawn(async move {
                SimpleClient::new(addr)
                    .request("GET", "/x", &[], None)
                    .await
                    .unwrap()
            });
        }
        while set.join_next().await.is_some() {}
        let plain = t.elapsed();
        assert!(
            plain >= Duration::from_millis(160),
            "one slot serialises 4 x 40 ms: {plain:?}"
        );

        let cfg = OriginConfig {
            slots: 1,
            base_service: Duration::from_millis(40),
            collapse: 1.0,
            ..fast("o")
        };
        let o = start_origin(cfg).await.unwrap();
        let t = Instant::now();
        for _ in 0..4 {
            let addr = o.addr();
            set.spawn(async move {
                SimpleClient::new(addr)
                    .request("GET", "/x", &[], None)
                    .await
                    .unwrap()
            });
        }
        while set.join_next().await.is_some() {}
        let collapsed = t.elapsed();
        // Factors 4,3,2,1 would give 10 x 40 ms; the first request may start
        // before the others arrive, so allow it to run at factor 1: 7 x 40 ms.
        assert!(
            collapsed >= Duration::from_millis(270),
            "crowd multiplies service time: {collapsed:?}"
        );
    }

    #[tokio::test]
    async fn rails_like_origin_serves_requests_of_gone_clients() {
        let o = start_origin(fast("o")).await.unwrap();
        let mut s = TcpStream::connect(o.addr()).await.unwrap();
        s.write_all(b"GET /slow?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let st = o.stats();
        assert_eq!(
            st.served_for_gone, 1,
            "work finished for a gone client: {st:?}"
        );
        assert_eq!(st.aborted_for_gone, 0, "nothing aborted");
    }

    #[tokio::test]
    async fn careful_origin_aborts_work_when_client_leaves() {
        let o = start_origin(OriginConfig {
            work_for_gone_clients: false,
            ..fast("o")
        })
        .await
        .unwrap();
        let mut s = TcpStream::connect(o.addr()).await.unwrap();
        s.write_all(b"GET /slow?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(o.stats().current_concurrent, 1, "request is inside");
        drop(s);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = o.stats();
        assert_eq!(st.aborted_for_gone, 1, "work abandoned: {st:?}");
        assert_eq!(st.current_concurrent, 0, "slot released at once");
        assert_eq!(st.served_for_gone, 0, "nothing served");
    }
}
