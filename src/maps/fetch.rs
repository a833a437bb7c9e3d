//! The map poller's GET for `http://` and `https://` sources, through Pingora's HTTP/1.1
//! connector with an [`HttpPeer`] built by [`PeerTls`], the code that builds upstream peers:
//! the CA bundle, verify on/off, SNI / name to verify and the client certificate behave as
//! for upstreams and their health checks. The host is resolved again on every fetch.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::connectors::http::v1::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

use crate::config::{ServerAddr, UpstreamTls};
use crate::upstream::tls::{server_peer, PeerTls};

/// Largest accepted response body; larger answers are errors.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Scheme, host, port and request target of an `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceUrl {
    pub(crate) https: bool,
    /// Host without IPv6 brackets, for resolving.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Authority as written, for the Host header.
    pub(crate) authority: String,
    /// Path and query, at least "/".
    pub(crate) target: String,
}

/// Parses a source URL with the `http` crate's `Uri`; only `http` and `https`, no credentials.
pub(crate) fn parse_url(url: &str) -> Result<SourceUrl, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not an http:// or https:// URL ({e})"))?;
    let https = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        _ => return Err(format!("{url:?}: only http:// and https:// are supported")),
    };
    let authority = match uri.authority() {
        Some(a) if !a.as_str().contains('@') && !a.host().is_empty() => a,
        _ => {
            return Err(format!(
                "{url:?}: expected http(s)://host[:port]/path without credentials"
            ))
        }
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(SourceUrl {
        https,
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        authority: authority.as_str().to_string(),
        target: if target.starts_with('/') {
            target
        } else {
            format!("/{target}")
        },
    })
}

/// Fetches one source: the shared connector and, for `https://`, the source's TLS options
/// (absent `tls:` block: system CA store, verify the certificate and the URL's host name).
#[derive(Clone)]
pub struct Fetcher {
    connector: Arc<Connector>,
    tls: PeerTls,
}

impl Fetcher {
    /// `label` names the source in logs about its TLS files.
    pub fn new(connector: Arc<Connector>, label: &str, tls: Option<&UpstreamTls>) -> Fetcher {
        let defaults = UpstreamTls {
            ca_pem: None,
            verify: true,
            verify_hostname: true,
            sni: None,
            client: None,
        };
        Fetcher {
            connector,
            tls: PeerTls::new(label, tls.unwrap_or(&defaults)),
        }
    }

    /// GETs `url` with `Connection: close` (the connection is not pooled). Returns
    /// `(status, body)` for any final status (1xx answers are skipped); fails on bodies over
    /// [`MAX_BODY_BYTES`], on transport, TLS and framing errors, and past `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
        let u = parse_url(url)?;
        match tokio::time::timeout(timeout, self.exchange(&u, timeout)).await {
            Ok(r) => r.map_err(|e| format!("GET {url}: {e}")),
            Err(_) => Err(format!("GET {url}: timed out after {timeout:?}")),
        }
    }

    async fn peer(&self, u: &SourceUrl, timeout: Duration) -> Result<HttpPeer, String> {
        let addr = tokio::net::lookup_host((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", u.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", u.host))?;
        let addr = ServerAddr::Inet(addr);
        let mut peer = if u.https {
            self.tls.peer_at(&addr, &u.host)
        } else {
            server_peer(&addr, false, String::new())
        };
        peer.options.connection_timeout = Some(timeout);
        peer.options.total_connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        Ok(peer)
    }

    async fn exchange(&self, u: &SourceUrl, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
        let peer = self.peer(u, timeout).await?;
        let to = format!("{}:{}", u.host, u.port);
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connect to {to}: {e}"))?;
        let req = request(&u.target, &u.authority).map_err(|e| format!("request: {e}"))?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        let status = loop {
            let head = session
                .read_resp_header_parts()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            let code = head.status.as_u16();
            // 1xx (other than 101) precede the real answer.
            if !(100..200).contains(&code) || code == 101 {
                break code;
            }
        };
        let declared = session
            .get_header("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(len) = declared.filter(|l| *l > MAX_BODY_BYTES) {
            return Err(format!(
                "body of {len} bytes exceeds the {MAX_BODY_BYTES}-byte limit"
            ));
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(16 * 1024));
        while let Some(chunk) = session
            .read_body_ref()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(format!("body exceeds the {MAX_BODY_BYTES}-byte limit"));
            }
            body.extend_from_slice(chunk);
        }
        Ok((status, body))
    }
}

fn request(target: &str, host: &str) -> pingora_error::Result<RequestHeader> {
    let mut req = RequestHeader::build("GET", target.as_bytes(), None)?;
    req.insert_header("Host", host)?;
    req.insert_header("User-Agent", "floodgate-map-poller")?;
    req.insert_header("Accept", "*/*")?;
    req.insert_header("Connection", "close")?;
    Ok(req)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;
    use parking_lot::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A fetcher for plain `http://` tests.
    pub(crate) fn fetcher() -> Fetcher {
        Fetcher::new(Arc::new(Connector::new(None)), "test", None)
    }

    /// A tiny HTTP server answering every connection with the current canned
    /// response (raw bytes, sent in two writes), then closing.
    pub(crate) async fn canned_server(
        answer: Arc<Mutex<Vec<u8>>>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let answer = answer.lock().clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let mid = answer.len() / 2;
                    let _ = s.write_all(&answer[..mid]).await;
                    let _ = s.flush().await;
                    let _ = s.write_all(&answer[mid..]).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (format!("http://{addr}/pdb/query?x=1"), task)
    }

    pub(crate) fn ok_answer(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn url_parsing_accepts_http_and_https_only() {
        let u = parse_url("http://[::1]:8080/a?b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 8080, "/a?b")
        );
        let u = parse_url("http://puppetdb").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"), "defaults");
        let u = parse_url("https://puppetdb:8081/pdb").unwrap();
        assert!(u.https && u.port == 8081, "https with a port");
        assert_eq!(
            parse_url("HTTPS://puppetdb/").unwrap().port,
            443,
            "https default port"
        );
        assert!(
            parse_url("ftp://x/").unwrap_err().contains("only http://"),
            "other schemes refused"
        );
        assert!(parse_url("http://u:p@x/").is_err(), "credentials refused");
    }

    #[tokio::test]
    async fn get_reads_length_chunked_and_close_delimited_bodies() {
        let answer = Arc::new(Mutex::new(ok_answer("n1 master1\n")));
        let (url, server) = canned_server(answer.clone()).await;
        let t = Duration::from_secs(5);
        let f = fetcher();
        assert_eq!(
            f.get(&url, t).await.unwrap(),
            (200, b"n1 master1\n".to_vec()),
            "content-length"
        );
        *answer.lock() = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nn1 \r\n8\r\nmaster1\n\r\n0\r\nX-T: y\r\n\r\n".to_vec();
        assert_eq!(
            f.get(&url, t).await.unwrap(),
            (200, b"n1 master1\n".to_vec()),
            "chunked after 100"
        );
        *answer.lock() = b"HTTP/1.0 200 OK\r\n\r\nuntil close".to_vec();
        assert_eq!(
            f.get(&url, t).await.unwrap(),
            (200, b"until close".to_vec()),
            "close-delimited"
        );
        *answer.lock() = b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno".to_vec();
        assert_eq!(
            f.get(&url, t).await.unwrap().0,
            500,
            "status passed through"
        );
        *answer.lock() = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec();
        assert!(f.get(&url, t).await.is_err(), "truncated body is an error");
        server.abort();
    }

    #[tokio::test]
    async fn get_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let err = fetcher()
            .get(&url, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        drop(listener);
    }
}
