//! Cache fills through Pingora's own proxy path.
//!
//! When a cached route misses, the flight's leader does not fetch by itself: it spawns a
//! Pingora background subrequest of the client's request (`SubrequestSpawner`), which runs
//! through the same [`super::Gateway`] hooks as any request: admission (route and server
//! slots), `upstream_peer` (balancing, map pins, redispatch, retries, upstream TLS),
//! `upstream_request_filter` (owned-header stripping, forwarding and client-certificate
//! headers from the client's own connection, which the subrequest inherits), timeouts and
//! passive health. The subrequest's downstream is an in-memory pipe that never leaves, so
//! the fetch is detached from the client and its slot is held until the answer has ended.
//!
//! The parent hands the subrequest a [`FillPlan`] (its routing decisions and a reply
//! channel); the subrequest's context holds a [`FillSink`] that collects the origin's answer
//! (status, headers without per-hop and per-user ones, body up to the route's entry size)
//! and sends it back once, as a [`Fetched`] with the RFC 9111 storing decision. Dropping the
//! sink without a result (any early end) closes the channel, which the cache reports as an
//! aborted fetch to every waiter.
//!
//! The body being collected is charged to the memory cache as it grows (a [`Hold`]: the
//! buffer's capacity, evicting entries for room); stored, that becomes the entry's charge.
//! When the cache has no room even after evicting every entry (other fills hold it), the fill
//! stops collecting and answers [`FillError::NoRoom`] at once: every waiter is proxied on its
//! own, uncached, and the cache never grows beyond `max_bytes` for answers in flight.

use crate::cache::rules::{store_decision, variant_fingerprint, vary_names};
use crate::cache::{CachedResponse, Fetched, Hold, Room};
use crate::config::RouteConfig;
use crate::error::Failure;
use crate::state::Route;
use crate::upstream::Upstream;
use bytes::{Bytes, BytesMut};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

/// Response headers never stored or replayed (per hop, or per user).
pub const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "set-cookie",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Largest answer a fill hands to its waiters. An answer over the route's `max_entry_size`
/// but under this is shared with the requests waiting now and not stored; over both, every
/// waiter is proxied on its own.
pub const SHARE_MAX: usize = 8 << 20;

/// Request headers removed from a fill: the stored answer must be the full 200 every
/// waiter can use, not a 304 or a range of one client's conditional request.
const CONDITIONAL: &[&str] = &[
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
];

/// Why a fill produced no answer for the cache.
#[derive(Debug, Clone)]
pub enum FillError {
    /// The request failed like any proxied request would (queue, connect, timeout...).
    Failed(Failure),
    /// The answer was larger than the route's `max_entry_size` and [`SHARE_MAX`]: callers
    /// proxy on their own.
    TooLarge,
    /// The memory cache had no room for the answer while it was collected, even after
    /// evicting every entry (other fills' answers hold it): callers proxy on their own.
    NoRoom,
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::Failed(x) => f.write_str(x.reason()),
            FillError::TooLarge => f.write_str("answer too large to share"),
            FillError::NoRoom => f.write_str("no room in the memory cache for the answer"),
        }
    }
}

impl std::error::Error for FillError {}

pub type FillResult = Result<Fetched, FillError>;

/// What the parent request decided, handed to its fill subrequest.
pub struct FillPlan {
    pub route: Arc<Route>,
    pub upstream: Arc<Upstream>,
    pub priority: i32,
    pub pinned: Option<usize>,
    pub redispatch: bool,
    pub hash_value: Option<Vec<u8>>,
    pub set_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    pub request_id: String,
    pub client_request_id: bool,
    /// Key for hashing the values of the origin's `Vary` headers.
    pub secret: Vec<u8>,
    /// The memory cache's reservation for the answer's bytes.
    pub hold: Hold,
    pub reply: oneshot::Sender<FillResult>,
}

/// Takes the fill plan a parent put into this subrequest, if this is a cache fill.
pub fn take_plan(session: &mut Session) -> Option<FillPlan> {
    session
        .subrequest_ctx
        .as_mut()?
        .user_ctx_mut()?
        .downcast_mut::<Option<FillPlan>>()?
        .take()
}

/// Makes the subrequest's request the plain GET every waiter can share.
pub fn prepare_request(req: &mut RequestHeader) {
    req.set_method(http::Method::GET);
    for h in CONDITIONAL {
        req.remove_header(*h);
    }
}

/// Rewrites an HTTP/2 request head into the HTTP/1.1 form a subrequest can be built from
/// (version 1.1, origin-form target, `Host` from the authority) and returns the original, to be
/// put back once the subrequest is created. `None` (nothing changed) for HTTP/1.x.
///
/// Why: Pingora 0.9.1 creates a subrequest by parsing the parent's head again as HTTP/1; an
/// HTTP/2 head serialises as `GET https://host/path HTTP/2` without `Host`, which that parser
/// refuses, so every cache fill of an HTTP/2 client failed.
pub fn h1_head_for_subrequest(req: &mut RequestHeader) -> Option<RequestHeader> {
    if matches!(
        req.version,
        http::Version::HTTP_10 | http::Version::HTTP_11 | http::Version::HTTP_09
    ) {
        return None;
    }
    let original = req.clone();
    req.set_version(http::Version::HTTP_11);
    if req.headers.get(http::header::HOST).is_none() {
        if let Some(a) = req.uri.authority().map(|a| a.as_str().to_string()) {
            // A valid authority is a valid header value.
            let _ = req.insert_header(http::header::HOST, a);
        }
    }
    if let Some(pq) = req.uri.path_and_query().cloned() {
        if let Ok(uri) = http::Uri::builder().path_and_query(pq).build() {
            req.set_uri(uri);
        }
    }
    Some(original)
}

/// Collects the origin's answer inside the fill subrequest and sends it back once.
pub struct FillSink {
    reply: Option<oneshot::Sender<FillResult>>,
    route_ttl: Duration,
    /// Headers already in the key (the route's `vary`): not repeated in a variant.
    keyed: Vec<String>,
    secret: Vec<u8>,
    limit: usize,
    head: Option<Head>,
    body: BytesMut,
    collect: Collect,
    /// The body's bytes reserved in the memory cache; `None` once not collecting.
    hold: Option<Hold>,
}

/// Whether the sink is still collecting the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collect {
    Body,
    /// Over the limit: the answer goes to nobody from here.
    TooLarge,
    /// No room in the memory cache: already answered [`FillError::NoRoom`].
    NoRoom,
}

struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    store: crate::cache::rules::StoreDecision,
    variant: Option<String>,
}

impl FillSink {
    pub fn new(
        route: &RouteConfig,
        secret: Vec<u8>,
        hold: Hold,
        reply: oneshot::Sender<FillResult>,
    ) -> FillSink {
        let rc = route.cache.as_ref();
        FillSink {
            reply: Some(reply),
            route_ttl: rc.map_or(Duration::ZERO, |c| c.ttl),
            keyed: rc.map(|c| c.vary.clone()).unwrap_or_default(),
            secret,
            limit: rc.map_or(SHARE_MAX, |c| {
                usize::try_from(c.max_entry_size)
                    .unwrap_or(usize::MAX)
                    .max(SHARE_MAX)
            }),
            head: None,
            body: BytesMut::new(),
            collect: Collect::Body,
            hold: Some(hold),
        }
    }

    /// The origin's response header (before floodgate's own response changes).
    pub fn on_head(&mut self, resp: &ResponseHeader, req: &RequestHeader) {
        let all: Vec<(&str, &[u8])> = resp
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let store = store_decision(all.iter().copied(), self.route_ttl);
        let names = vary_names(all.iter().copied(), &self.keyed);
        let value = |n: &str| req.headers.get(n).map(|v| v.as_bytes().to_vec());
        let variant = variant_fingerprint(&names, &value, &self.secret);
        let headers = resp
            .headers
            .iter()
            .filter(|(n, _)| !NOT_STORED.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        if let Some(len) = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > self.limit {
                self.stop(Collect::TooLarge);
            } else if self.charge(len) == Room::Reserved {
                self.body.reserve(len);
            }
        }
        self.head = Some(Head {
            status: resp.status.as_u16(),
            headers,
            store,
            variant,
        });
    }

    /// A chunk of the origin's body; at the end of the body the answer is sent back.
    pub fn on_body(&mut self, chunk: Option<&Bytes>, end: bool) {
        if let Some(c) = chunk {
            if self.collect == Collect::Body {
                let needed = self.body.len() + c.len();
                if needed > self.limit {
                    self.stop(Collect::TooLarge);
                } else if needed <= self.body.capacity() {
                    self.body.extend_from_slice(c);
                } else {
                    // Grow as a `Vec` would (doubling), charged before it is allocated.
                    let target = needed.max(2 * self.body.capacity()).min(self.limit);
                    if self.charge(target) == Room::Reserved {
                        self.body.reserve(target - self.body.len());
                        self.body.extend_from_slice(c);
                        let _ = self.charge(self.body.capacity());
                    }
                }
            }
        }
        if end {
            self.complete();
        }
    }

    /// Whether the sink gave up for want of room in the memory cache: the subrequest should
    /// end now rather than read an answer nobody takes (its waiters fetch on their own).
    pub fn abandoned(&self) -> bool {
        self.collect == Collect::NoRoom
    }

    /// The end of the subrequest: sends what it has (or the failure) if not sent yet.
    pub fn finish(&mut self, failure: Option<&Failure>) {
        match failure {
            Some(f) if self.reply.is_some() => self.send(Err(FillError::Failed(f.clone()))),
            _ => self.complete(),
        }
    }

    /// Charges the body's buffer at `bytes` to the memory cache; without room the sink stops
    /// collecting and answers [`FillError::NoRoom`].
    fn charge(&mut self, bytes: usize) -> Room {
        let room = self.hold.as_mut().map_or(Room::Full, |h| h.grow_to(bytes));
        if room == Room::Full {
            self.stop(Collect::NoRoom);
            self.send(Err(FillError::NoRoom));
        }
        room
    }

    /// Stops collecting: the buffer and its reservation are freed.
    fn stop(&mut self, why: Collect) {
        self.collect = why;
        self.body = BytesMut::new();
        self.hold = None;
    }

    fn complete(&mut self) {
        if self.reply.is_none() {
            return;
        }
        match self.collect {
            Collect::Body => {}
            Collect::TooLarge => return self.send(Err(FillError::TooLarge)),
            Collect::NoRoom => return self.send(Err(FillError::NoRoom)),
        }
        let Some(head) = self.head.take() else {
            return self.send(Err(FillError::Failed(Failure::UpstreamProtocol)));
        };
        let now = SystemTime::now();
        let resp = CachedResponse {
            status: head.status,
            headers: head.headers,
            body: std::mem::take(&mut self.body).freeze(),
            stored_at: now,
            expires_at: now,
            variant: head.variant,
        };
        let hold = self.hold.take();
        self.send(Ok(Fetched {
            resp,
            store: Some(head.store),
            hold,
        }));
    }

    fn send(&mut self, r: FillResult) {
        if let Some(tx) = self.reply.take() {
            // A closed receiver means every waiter left; nothing to do.
            let _ = tx.send(r);
        }
    }
}
