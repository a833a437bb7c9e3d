//! The front door: a thin `ServerApp` around Pingora's HTTP proxy that reads each HTTP/1.x
//! request head itself, strictly, before Pingora parses it.
//!
//! Why a wrapper: Pingora's parser refuses some malformed requests with a bare 400 before any
//! `ProxyHttp` hook runs (invisible to logs and metrics), and accepts others that a front end
//! should refuse (`Content-Length` with `Transfer-Encoding`, bare LF, `5 ` as a chunk size,
//! unbounded headers). The wrapper reads the head (bounded in size and in time), checks it with
//! [`head`] and [`target`], checks the chunk framing of a chunked body ([`chunked`]), and then
//! either refuses (status, `Connection: close`, one access-log line, one count of
//! `floodgate_requests_refused_total`) or hands Pingora a fresh session whose *pipelined
//! prefix* is the bytes already read, so Pingora parses them without reading again and the
//! stream stays Pingora's own (no wrapper, except [`guard::ChunkGuard`] while a chunked body
//! streams). HTTP/2 (TLS ALPN `h2`, or h2c prior knowledge) goes to Pingora untouched.
//!
//! Path normalisation runs later, in the proxy's `request_filter` ([`normalize_target`]), so it
//! also covers HTTP/2; routes with `raw_path: true` get the target as received upstream.

pub mod chunked;
mod conn;
pub mod guard;
pub mod head;
pub mod refusal;
pub mod target;

pub use refusal::{listener_name, report_session, Refusal};
pub use target::{normalize_target, restore_raw_target};

use crate::config::ListenerConfig;
use crate::proxy::Gateway;
use crate::state::AppState;
use async_trait::async_trait;
use head::Limits;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use refusal::RefusalRecord;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One listener as the front door sees it.
pub(crate) struct Door {
    name: String,
    bind: Option<SocketAddr>,
    limits: Limits,
    header_timeout: Duration,
    h2c: bool,
}

/// What the connection tasks share: the state (metrics, access-log settings) and the listeners.
pub(crate) struct Shared {
    state: Arc<AppState>,
    doors: Vec<Door>,
}

impl Shared {
    /// The listener a connection arrived on, by its local address (the first one if unknown).
    fn door_for(&self, local: Option<SocketAddr>) -> usize {
        if self.doors.len() < 2 {
            return 0;
        }
        let Some(local) = local else { return 0 };
        self.doors
            .iter()
            .position(|d| {
                d.bind.is_some_and(|b| {
                    b.port() == local.port() && (b.ip().is_unspecified() || b.ip() == local.ip())
                })
            })
            .unwrap_or(0)
    }

    /// Counts and logs one refusal on listener `door`.
    fn report(
        &self,
        door: usize,
        client: Option<SocketAddr>,
        reason: Refusal,
        status: u16,
        line: &[u8],
    ) {
        let listener = self.doors.get(door).map_or("-", |d| d.name.as_str());
        refusal::report(
            &self.state,
            &RefusalRecord {
                listener,
                client,
                reason,
                status,
                request_line: line,
            },
        );
    }
}

/// The proxy service's application: the front door in front of Pingora's `HttpProxy`.
pub struct FrontDoor {
    proxy: Arc<HttpProxy<Gateway>>,
    shared: Arc<Shared>,
    keepalive_limit: Option<u32>,
}

impl FrontDoor {
    /// Wraps `proxy` (with its server options already set) for `listeners`, and exports the
    /// refusal counter at 0 for every listener and reason.
    pub fn new(
        state: Arc<AppState>,
        proxy: HttpProxy<Gateway>,
        listeners: &[ListenerConfig],
    ) -> Self {
        let doors: Vec<Door> = listeners
            .iter()
            .map(|l| Door {
                name: l.name.clone(),
                bind: l.bind.parse().ok(),
                limits: Limits {
                    max_head: l.front_door.max_header_size,
                    max_fields: l.front_door.max_header_fields,
                    max_request_line: l.front_door.max_request_line,
                    allow_length_with_chunked: l.front_door.allow_length_with_chunked,
                },
                header_timeout: l.front_door.header_timeout,
                h2c: l.h2c,
            })
            .collect();
        for d in &doors {
            for r in Refusal::ALL {
                state
                    .metrics
                    .requests_refused
                    .with_label_values(&[d.name.as_str(), r.reason()]);
            }
        }
        let keepalive_limit = proxy
            .server_options
            .as_ref()
            .and_then(|o| o.keepalive_request_limit);
        FrontDoor {
            proxy: Arc::new(proxy),
            shared: Arc::new(Shared { state, doors }),
            keepalive_limit,
        }
    }
}

// https://datatracker.ietf.org/doc/html/rfc9113#section-3.4
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// True when a cleartext connection starts with the HTTP/2 preface (h2c prior knowledge).
async fn starts_h2c(stream: &mut Stream, within: Duration) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    match tokio::time::timeout(within, stream.try_peek(&mut buf)).await {
        Ok(Ok(true)) => Some(buf == H2_PREFACE),
        Ok(Ok(false)) => Some(false),
        Ok(Err(_)) | Err(_) => None,
    }
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let door = self.shared.door_for(local);
        let h2 = match stream.selected_alpn_proto() {
            Some(ALPN::H2) | Some(ALPN::Custom(_)) => true,
            _ if stream.get_ssl_digest().is_none() && self.shared.doors.get(door)?.h2c => {
                let within = self.shared.doors.get(door)?.header_timeout;
                starts_h2c(&mut stream, within).await?
            }
            _ => false,
        };
        if h2 {
            // why: HTTP/2 framing has no Content-Length/Transfer-Encoding ambiguity and no
            // request line; Pingora's h2 server (and the proxy's target normalisation) cover it
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        conn::serve(self, stream, door, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn req(target: &str) -> RequestHeader {
        RequestHeader::build("GET", target.as_bytes(), None).unwrap()
    }

    #[test]
    fn targets_are_normalised_once_and_the_raw_one_kept() {
        let mut r = req("/a/./b/../c%2Fd?x=/../y");
        let raw = normalize_target(&mut r).unwrap();
        assert_eq!(
            r.uri.to_string(),
            "/a/c%2Fd?x=/../y",
            "the query is not touched"
        );
        assert_eq!(raw.unwrap().to_string(), "/a/./b/../c%2Fd?x=/../y");
        let mut up = r.clone();
        restore_raw_target(&mut up, true, Some(&"/a/./b".parse().unwrap()));
        assert_eq!(up.raw_path(), b"/a/./b");
        let mut up = r.clone();
        restore_raw_target(&mut up, false, Some(&"/a/./b".parse().unwrap()));
        assert_eq!(up.raw_path(), b"/a/c%2Fd?x=/../y");

        let mut plain = req("/register?a=1");
        assert_eq!(normalize_target(&mut plain), Ok(None));
        assert_eq!(plain.raw_path(), b"/register?a=1");

        let mut climb = req("/%2e%2e/%2e%2e/etc/passwd");
        assert_eq!(normalize_target(&mut climb), Err(Refusal::TargetAboveRoot));
    }

    #[test]
    fn listeners_are_found_by_local_address() {
        let l = |name: &str, bind: &str| ListenerConfig {
            name: name.into(),
            bind: bind.into(),
            h2c: false,
            tls: None,
            front_door: Default::default(),
            request_headers: Default::default(),
            response_headers: Default::default(),
            forwarding: Default::default(),
            server_name: String::new(),
            client_cert_headers: crate::config::CertHeaders::foreman(),
        };
        let ls = vec![l("a", "127.0.0.1:8080"), l("b", "0.0.0.0:8443")];
        assert_eq!(listener_name(&ls, "127.0.0.1:8080".parse().ok()), "a");
        assert_eq!(listener_name(&ls, "10.1.2.3:8443".parse().ok()), "b");
        assert_eq!(listener_name(&ls, "10.1.2.3:9999".parse().ok()), "a");
        assert_eq!(listener_name(&ls, None), "a");
        assert_eq!(listener_name(&[], None), "-");
    }
}
