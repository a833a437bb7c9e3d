//! Per-request context: everything a request acquires lives here, so dropping the context at
//! the end of the request (on every path, errors included) releases it.

use crate::error::Failure;
use crate::state::{AppState, Route, Snapshot};
use crate::upstream::admission::{Kind, Permit};
use crate::upstream::Upstream;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The client's address as text (`10.0.0.1`, `::1`), as logs, policies and
/// `X-Forwarded-For` show it.
/// why: `IpAddr`'s `Display` goes through the formatting machinery (about 1,300 instructions
/// per request for an IPv4 address); the digits of four octets are written directly.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if o >= 100 {
            out.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            out.push(char::from(b'0' + o / 10 % 10));
        }
        out.push(char::from(b'0' + o % 10));
    }
    out
}

/// Counts the request in [`AppState::inflight`] for as long as it lives.
pub struct InflightGuard(Arc<AppState>);

impl InflightGuard {
    pub fn new(state: &Arc<AppState>) -> Self {
        state.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(state.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the request's answer came from, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Upstream,
    Local,
    CacheHit,
    CacheMiss,
    CacheCoalesced,
    /// A cache fill subrequest (see [`super::fill`]).
    Fill,
}

pub struct Ctx {
    pub snap: Arc<Snapshot>,
    pub start: Instant,
    pub request_id: String,
    /// The client sent `X-Request-Id` itself (it is forwarded as is).
    pub client_request_id: bool,
    /// The matched route, resolved (its upstream, admission and metric handles).
    pub route: Option<Arc<Route>>,
    /// The route's upstream, or the one a policy chose.
    pub upstream: Option<Arc<Upstream>>,
    /// Held from admission until the request ends.
    pub route_permit: Option<Permit>,
    /// Held from server selection until the upstream response ends.
    pub server_permit: Option<Permit>,
    pub server: Option<usize>,
    /// The server a map pinned this request to, and whether another may take it.
    pub pinned: Option<usize>,
    pub redispatch: bool,
    pub tried: Vec<usize>,
    pub priority: i32,
    pub hash_value: Option<Vec<u8>>,
    pub failure: Option<Failure>,
    pub queue_wait: Duration,
    pub upstream_status: Option<u16>,
    /// The upstream response was read to its end.
    pub upstream_done: bool,
    /// Request body bytes received so far (the body deadline grows with them).
    pub body_received: u64,
    pub served: Served,
    pub set_headers: Vec<(String, String)>,
    /// Request headers a policy removes (`NAME` in every spelling, `NAME*` by prefix).
    pub remove_headers: Vec<String>,
    pub client_ip: Option<String>,
    pub host: String,
    /// Set in a cache fill subrequest: collects the answer for the cache.
    pub fill: Option<super::fill::FillSink>,
    /// The target as received, when normalisation changed it (for routes with `raw_path`).
    pub raw_target: Option<http::Uri>,
    /// Index of the listener the request came in on (in the snapshot's config).
    pub listener: usize,
    /// The client certificate as policies see it (`req.tls`), filled when a policy is loaded.
    pub tls: Option<crate::policy::TlsInfo>,
    /// `request_id` as a header value, made once (it goes upstream and back to the client).
    request_id_header: Option<http::HeaderValue>,
    guard: InflightGuard,
}

impl Ctx {
    pub fn new(state: &Arc<AppState>) -> Self {
        Ctx {
            snap: state.snapshot(),
            start: Instant::now(),
            request_id: String::new(),
            client_request_id: false,
            request_id_header: None,
            route: None,
            upstream: None,
            route_permit: None,
            server_permit: None,
            server: None,
            pinned: None,
            redispatch: true,
            tried: Vec::new(),
            priority: 0,
            hash_value: None,
            failure: None,
            queue_wait: Duration::ZERO,
            upstream_status: None,
            upstream_done: false,
            body_received: 0,
            served: Served::Upstream,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            client_ip: None,
            host: String::new(),
            fill: None,
            raw_target: None,
            listener: 0,
            tls: None,
            guard: InflightGuard::new(state),
        }
    }

    /// What this request asks admission for a slot as: its class and its route.
    pub fn admission_kind(&self) -> Kind {
        Kind {
            priority: self.priority,
            route: self.route.as_ref().map_or(0, |r| r.kind),
        }
    }

    /// `request_id` as a header value (validated when it was taken from the request), built
    /// on first use and shared after (a clone is a reference count, not a copy).
    pub fn request_id_value(&mut self) -> http::HeaderValue {
        self.request_id_header
            .get_or_insert_with(|| {
                http::HeaderValue::from_str(&self.request_id)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
            })
            .clone()
    }

    /// The process state (metrics, phase) this request runs under.
    pub fn state(&self) -> &Arc<AppState> {
        &self.guard.0
    }

    pub fn route_name(&self) -> &str {
        self.route
            .as_deref()
            .map(|r| r.name.as_str())
            .unwrap_or("none")
    }

    pub fn upstream_name(&self) -> &str {
        self.upstream.as_deref().map(|u| u.name()).unwrap_or("none")
    }

    pub fn server_name(&self) -> &str {
        match (self.upstream.as_deref(), self.server) {
            (Some(u), Some(i)) => u.servers[i].cfg.name.as_str(),
            _ => "-",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ip_text;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn ip_text_is_the_display_form() {
        for v4 in [
            [0, 0, 0, 0],
            [10, 0, 0, 1],
            [127, 0, 0, 1],
            [9, 99, 100, 255],
            [192, 168, 10, 109],
        ] {
            let ip = IpAddr::V4(Ipv4Addr::from(v4));
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for o in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(o, 1, o, 10));
            assert_eq!(ip_text(ip), ip.to_string());
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(ip_text(v6), "::1");
    }
}
