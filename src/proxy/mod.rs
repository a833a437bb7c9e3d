//! The Pingora `ProxyHttp` implementation: each phase is a short dispatcher over the pure
//! modules (routing, admission, upstream selection, error mapping).

pub mod admit;
pub mod cached;
pub mod ctx;
pub mod fill;
pub mod headers;
pub mod log;
pub mod owned;
pub mod policy;
pub mod respond;

use crate::config::OnMiss;
use crate::error::Failure;
use crate::metrics::handles::GoneOutcome;
use crate::policy::Hook;
use crate::routing::{normalize_host, RequestView};
use crate::state::{AppState, Route, Target};
use crate::upstream::Upstream;
use admit::Admit;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::{Ctx, Served};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Looked up on every request: a name made once, not parsed per lookup.
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The gateway's proxy logic.
pub struct Gateway {
    pub state: Arc<AppState>,
    id_prefix: u64,
    id_seq: AtomicU64,
}

impl Gateway {
    pub fn new(state: Arc<AppState>) -> Self {
        Gateway {
            state,
            id_prefix: rand::random::<u64>(),
            id_seq: AtomicU64::new(0),
        }
    }

    /// 24 hex digits: a random per-process prefix and a counter.
    fn new_request_id(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.id_seq.fetch_add(1, Ordering::Relaxed);
        let mut out = String::with_capacity(24);
        for shift in (0..16).rev() {
            out.push(HEX[((self.id_prefix >> (shift * 4)) & 0xf) as usize] as char);
        }
        for shift in (0..8).rev() {
            out.push(HEX[((n >> (shift * 4)) & 0xf) as usize] as char);
        }
        out
    }
}

impl Gateway {
    /// Route limit, then a server slot; `Ok(false)` lets Pingora proxy the request.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx, route: &Route) -> Result<bool> {
        let Some(up) = ctx.upstream.clone() else {
            return reject(session, ctx, Failure::NoRoute).await;
        };
        // why: a slot is never taken before the body a retry needs is in; a client that
        // trickles its body gets 408 instead of holding a slot.
        let limits = ctx.snap.config.server.client_body;
        match admit::read_body_ahead(session, limits, ctx.start).await {
            admit::BodyAhead::Ready | admit::BodyAhead::Streaming => {}
            admit::BodyAhead::TimedOut => {
                session.set_keepalive(None);
                return reject(session, ctx, Failure::ClientBodyTimeout).await;
            }
            admit::BodyAhead::Broken => return client_gone(ctx),
        }
        if let Some(limit) = &route.admission {
            let body = route.cfg.admission.as_ref().map_or("", |a| &a.queue.body);
            match admit::admit_route(session, ctx, &limit.queue, &limit.metrics, body).await {
                Admit::Granted(p) => ctx.route_permit = Some(p),
                Admit::Rejected(f) => return reject(session, ctx, f).await,
                Admit::ClientGone => return client_gone(ctx),
            }
        }
        match admit::admit_server(session, ctx, &up).await {
            Admit::Granted(p) => ctx.server_permit = Some(p),
            Admit::Rejected(f) => return reject(session, ctx, f).await,
            Admit::ClientGone => return client_gone(ctx),
        }
        // why: a slot stands for work the app server is doing, and Puma/Rails never cancel a
        // request whose client left. With Pingora's default abort-on-close a client's FIN
        // drops the upstream connection and frees the slot while the app still works, so the
        // next request makes it max_inflight + 1. From here on a client that leaves no longer
        // aborts: the answer is read to its end (bounded by the upstream read timeout) and the
        // slot is freed then. While queued (above) a leaving client is still dropped at once.
        session.as_downstream_mut().set_abort_on_close(false);
        Ok(false)
    }

    /// A cache fill subrequest (see [`fill`]): takes over its parent's decisions, then goes
    /// through admission and the proxy path like any request.
    async fn start_fill(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        plan: fill::FillPlan,
    ) -> Result<bool> {
        fill::prepare_request(session.req_header_mut());
        ctx.request_id = plan.request_id;
        ctx.listener = headers::listener_index(session, &ctx.snap.config.listeners);
        ctx.client_request_id = plan.client_request_id;
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| ctx::ip_text(a.ip()));
        ctx.priority = plan.priority;
        ctx.pinned = plan.pinned;
        ctx.redispatch = plan.redispatch;
        ctx.hash_value = plan.hash_value;
        ctx.set_headers = plan.set_headers;
        ctx.remove_headers = plan.remove_headers;
        ctx.served = Served::Fill;
        ctx.fill = Some(fill::FillSink::new(
            &plan.route,
            plan.secret,
            plan.hold,
            plan.reply,
        ));
        ctx.upstream = Some(plan.upstream);
        ctx.route = Some(plan.route.clone());
        self.admit(session, ctx, &plan.route).await
    }
}

/// Ends the request with a local failure answer; `Ok(true)` tells Pingora the response is sent.
async fn reject(session: &mut Session, ctx: &mut Ctx, f: Failure) -> Result<bool> {
    ctx.served = Served::Local;
    respond::write_failure(session, ctx, &f).await?;
    ctx.failure = Some(f);
    Ok(true)
}

/// Writes `/register/health`-style answers: 200 with the healthy servers, 503 without.
async fn upstream_health(session: &mut Session, ctx: &mut Ctx, up: &Upstream) -> Result<bool> {
    ctx.served = Served::Local;
    let healthy: Vec<&str> = (0..up.servers.len())
        .filter(|&i| up.is_usable(i))
        .map(|i| up.servers[i].cfg.name.as_str())
        .collect();
    let ok = !healthy.is_empty();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "upstream": up.name(),
        "healthy": healthy,
        "total": up.servers.len(),
    })
    .to_string();
    let status = if ok { 200 } else { 503 };
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    if !ok {
        headers.push(("retry-after", "5"));
    }
    respond::write_local(session, ctx, status, &headers, Bytes::from(body)).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Gateway {
    // why: boxed, so that Pingora's per-request future (which holds the context inline, and
    // which `process_new_http` copies twice) stays small
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx::new(&self.state))
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // why: Pingora adds a (disabled) compression module by default, which still costs an
        // allocation and three boxed filter calls per request; floodgate never compresses.
    }

    fn allow_spawning_subrequest(&self, session: &Session, ctx: &Self::CTX) -> bool {
        // Only cached routes fill through subrequests (GET, and HEAD answered from GET).
        ctx.snap.has_cache_routes
            && session.subrequest_ctx.is_none()
            && matches!(
                session.req_header().method,
                http::Method::GET | http::Method::HEAD
            )
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        if let Some(plan) = fill::take_plan(session) {
            return self.start_fill(session, ctx, plan).await;
        }
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
            Some(id) if !id.is_empty() && id.len() <= 128 => {
                ctx.client_request_id = true;
                id.to_string()
            }
            _ => self.new_request_id(),
        };
        let host_raw = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        ctx.host = normalize_host(host_raw);
        ctx.listener = headers::listener_index(session, &ctx.snap.config.listeners);
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| ctx::ip_text(a.ip()));
        match crate::frontdoor::target::normalize_target(session.req_header_mut()) {
            Ok(raw) => ctx.raw_target = raw,
            Err(r) => return reject(session, ctx, Failure::Refused(r)).await,
        }

        let on_error = ctx
            .snap
            .config
            .policy
            .as_ref()
            .map(|p| p.on_error.clone())
            .unwrap_or(crate::config::OnPolicyError::Continue);
        if ctx.snap.config.policy.is_some() {
            ctx.tls = headers::policy_tls(session);
        }
        let engine = self.state.policy.clone();
        if let policy::Verdict::Reject(f) =
            policy::run(&engine, Hook::Admit, session, ctx, &on_error)
        {
            return reject(session, ctx, f).await;
        }
        let route = {
            let req = session.req_header();
            let headers = &req.headers;
            let lookup = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
            let view = RequestView {
                method: req.method.as_str(),
                host: &ctx.host,
                path: req.uri.path(),
                header: &lookup,
            };
            ctx.snap.routes.resolve(&view).map(|(_, r)| r.clone())
        };
        let Some(route) = route else {
            return reject(session, ctx, Failure::NoRoute).await;
        };
        if ctx.priority == 0 {
            ctx.priority = route.priority;
        }
        ctx.route = Some(route.clone());
        // The matched route carries its upstream: no lookup by name.
        let up = match &route.target {
            Target::UpstreamHealth(up) => return upstream_health(session, ctx, up).await,
            Target::Upstream(up) => up.clone(),
            Target::Local(answer) => {
                // never admitted, queued or sent upstream
                ctx.served = Served::Local;
                respond::write_answer(session, ctx, answer).await?;
                return Ok(true);
            }
        };
        ctx.upstream = Some(up);
        if let policy::Verdict::Reject(f) =
            policy::run(&engine, Hook::Route, session, ctx, &on_error)
        {
            return reject(session, ctx, f).await;
        }
        // The route hook may have chosen another upstream (and server).
        let Some(up) = ctx.upstream.clone() else {
            return reject(session, ctx, Failure::NoRoute).await;
        };

        if let crate::config::Balance::Hash { header } = &up.cfg.balance {
            ctx.hash_value = session
                .req_header()
                .headers
                .get(header.as_str())
                .map(|v| v.as_bytes().to_vec());
        }
        if let (Some(ps), None) = (&route.pick_server, ctx.pinned) {
            let key = session
                .req_header()
                .headers
                .get(ps.header.as_str())
                .and_then(|v| v.to_str().ok());
            let map = ctx.snap.maps.get(&ps.map);
            let hit = key.and_then(|k| map.and_then(|m| m.get(k)));
            route.metrics.map_lookup(hit.is_some());
            ctx.redispatch = ps.redispatch;
            match (hit, &ps.on_miss) {
                (Some(server), _) => ctx.pinned = up.server_index(server),
                (None, OnMiss::Balance) => {}
                (None, OnMiss::Reject(status)) => {
                    return reject(session, ctx, Failure::MapMiss { status: *status }).await
                }
                (None, OnMiss::Server(s)) => ctx.pinned = up.server_index(s),
            }
        }

        if cached::applies(&route, session) {
            let secret = self.state.cache_secret.clone();
            let answer = cached::serve(session, ctx, &self.state.cache, &secret, up).await?;
            if answer == cached::CacheAnswer::Answered {
                return Ok(true);
            }
        }
        self.admit(session, ctx, &route).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_received += b.len() as u64;
        }
        if !end_of_stream
            && !admit::stream_deadline(
                session,
                ctx.snap.config.server.client_body,
                ctx.start,
                ctx.body_received,
            )
        {
            ctx.failure = Some(Failure::ClientBodyTimeout);
            return Error::e_explain(ErrorType::HTTPStatus(408), "request body too slow");
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(up) = ctx.upstream.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        if ctx.server_permit.is_none() {
            // A retry after a connect failure: pick again among the servers not tried yet.
            match admit::admit_server(session, ctx, &up).await {
                Admit::Granted(p) => ctx.server_permit = Some(p),
                Admit::Rejected(f) => {
                    // Tried servers exhausted: report the connect failure that got us here.
                    let f = if matches!(f, Failure::NoHealthyServer { .. }) && !ctx.tried.is_empty()
                    {
                        Failure::UpstreamUnreachable
                    } else {
                        f
                    };
                    ctx.failure = Some(f);
                    return Error::e_explain(ErrorType::HTTPStatus(503), "no server for retry");
                }
                Admit::ClientGone => {
                    return Error::e_explain(
                        ErrorType::ConnectionClosed,
                        "client left while queued",
                    );
                }
            }
        }
        let i = ctx.server.unwrap_or(0);
        Ok(up.servers[i].peer())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(up), Some(i)) = (ctx.upstream.clone(), ctx.server) {
            up.note_connect_error(i);
            if matches!(
                e.etype(),
                ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert
            ) {
                // why: a CA, SNI or client-certificate mistake otherwise shows only as 502s
                ::log::warn!(
                    "upstream {} server {} ({}): TLS handshake failed ({}): {}; check the upstream's tls: ca, sni, verify, cert and key",
                    up.name(),
                    up.servers[i].cfg.name,
                    up.servers[i].cfg.addr,
                    e.etype().as_str(),
                    e.context.as_ref().map(|c| c.as_str()).unwrap_or("")
                );
            }
            if up.observe_failure(i) {
                ::log::warn!(
                    "upstream {} server {} marked down: {} consecutive connect failures ({})",
                    up.name(),
                    up.servers[i].cfg.name,
                    up.cfg.observe.failures,
                    e.etype().as_str()
                );
            }
            up.metrics.servers[i].connect_errors.inc();
            ctx.tried.push(i);
            ctx.server_permit = None;
            ctx.server = None;
            // Connect failures never reached the upstream, so any method may be retried.
            if ctx.pinned.is_some() && !ctx.redispatch {
                // A pinned request may not move (HAProxy without `option redispatch`).
                ctx.failure = Some(Failure::NoHealthyServer {
                    retry_after: up.retry_after(),
                });
                e.set_retry(false);
                return e;
            }
            let retries_left = (ctx.tried.len() as u32) <= up.cfg.retries;
            e.set_retry(retries_left);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let raw_path = ctx.route.as_ref().is_some_and(|r| r.raw_path);
        crate::frontdoor::target::restore_raw_target(req, raw_path, ctx.raw_target.as_ref());
        // Pingora already dropped hop-by-hop headers and those named in `Connection` (its
        // default upstream request policy). Drop headers only floodgate may set, in every
        // spelling (see `owned`); a request rarely carries one, so the common case is one
        // pass and no allocation.
        let snap = ctx.snap.clone();
        let style = snap
            .config
            .listeners
            .get(ctx.listener)
            .map(|l| &l.client_cert_headers);
        // why: every listener's certificate header names, not only this one's: an app behind
        // two listeners trusts the names of both, so a forgery through either must not pass.
        let owned = |k: &http::HeaderName| {
            owned::must_strip(k.as_str())
                || snap.config.listeners.iter().any(|l| {
                    l.client_cert_headers
                        .names()
                        .any(|n| owned::eq_folded(k.as_str().as_bytes(), n.as_str().as_bytes()))
                })
        };
        if req.headers.keys().any(owned) {
            let doomed: Vec<http::HeaderName> =
                req.headers.keys().filter(|k| owned(k)).cloned().collect();
            for h in &doomed {
                req.remove_header(h);
            }
        }
        headers::forwarding(session, ctx, req);
        let ssl = session.digest().and_then(|d| d.ssl_digest.as_deref());
        if let (Some(cc), Some(style)) = (
            ssl.and_then(|d| d.extension.get::<crate::tlsinfo::ClientCert>()),
            style,
        ) {
            headers::client_cert(cc, style, req)?;
        }
        if !ctx.client_request_id {
            // (a client's own id is already in the copied request)
            req.insert_header("x-request-id", ctx.request_id_value())?;
        }
        headers::request_rules(session, ctx, req);
        for name in &ctx.remove_headers {
            crate::rules::remove_by_name(name, req);
        }
        for (k, v) in &ctx.set_headers {
            req.insert_header(k.clone(), v.as_str())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        if let Some(sink) = ctx.fill.as_mut() {
            sink.on_head(resp, _session.req_header());
            if sink.abandoned() {
                return Err(fill_abandoned());
            }
        }
        if let (Some(up), Some(i)) = (ctx.upstream.as_deref(), ctx.server) {
            if up.observe_status(i, resp.status.as_u16()) {
                ::log::warn!(
                    "upstream {} server {} marked down: answered {}",
                    up.name(),
                    up.servers[i].cfg.name,
                    resp.status
                );
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id_value())?;
        headers::response_rules(session, ctx, resp);
        if ctx.fill.is_none() {
            policy::response(&self.state.policy, session, ctx, resp);
        }
        if self.state.current_phase().closes_connections() {
            // why: the listeners have stopped accepting; a client that reused this connection
            // after the drain would find it gone, so tell it to reconnect (to the new process
            // during an upgrade, elsewhere during a stop)
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(sink) = ctx.fill.as_mut() {
            sink.on_body(_body.as_ref(), end_of_stream);
            if sink.abandoned() {
                return Err(fill_abandoned());
            }
        }
        if end_of_stream {
            // The upstream is done with this request: free its slot now, not when a slow
            // client finishes reading.
            ctx.server_permit = None;
            ctx.upstream_done = true;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        if ctx.fill.as_ref().is_some_and(fill::FillSink::abandoned) {
            // Nobody reads a fill's own answer; its waiters were told already.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let failure = ctx.failure.clone().or_else(|| classify(e));
        // why: Pingora keeps the downstream connection only for errors before an upstream was
        // chosen; say so to the client instead of letting it reuse a connection we close
        let reusable = ctx.failure.is_some() && ctx.server.is_none() && ctx.tried.is_empty();
        if !reusable {
            session.set_keepalive(None);
        }
        let code = match &failure {
            Some(f) => {
                ctx.served = Served::Local;
                respond::write_failure(session, ctx, f)
                    .await
                    .unwrap_or_else(|err| {
                        ::log::debug!("could not write the error answer: {err}");
                        0
                    })
            }
            None => 0,
        };
        ctx.failure = failure;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: reusable && code != 0 && code != 400,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _e: &Error) -> bool {
        // our access log already records every failure with its reason
        ctx.failure.is_some() || ctx.fill.as_ref().is_some_and(fill::FillSink::abandoned)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        if let (Some(up), Some(_)) = (&ctx.upstream, ctx.server) {
            if client_left(session) {
                up.metrics.client_gone(if ctx.upstream_done {
                    GoneOutcome::Completed
                } else if matches!(ctx.failure, Some(Failure::UpstreamTimeout)) {
                    GoneOutcome::Timeout
                } else {
                    GoneOutcome::Error
                });
            }
        }
        ctx.server_permit = None;
        ctx.route_permit = None;
        if let Some(sink) = ctx.fill.as_mut() {
            let failure = ctx
                .failure
                .clone()
                .or_else(|| e.map(|_| Failure::UpstreamProtocol));
            sink.finish(failure.as_ref());
        }
        log::record(&self.state, session, e, ctx);
        if ctx.fill.is_none() {
            policy::log(&self.state.policy, session, ctx);
        }
    }
}

/// Ends a fill subrequest whose sink gave up for want of room in the memory cache (its
/// waiters proxy on their own), so the origin's answer is not read twice.
fn fill_abandoned() -> Box<Error> {
    Error::explain(
        ErrorType::InternalError,
        "cache fill abandoned: no room in the memory cache",
    )
}

/// Whether the client closed its side of an HTTP/1 connection during the request.
fn client_left(session: &Session) -> bool {
    session
        .as_downstream()
        .as_http1()
        .is_some_and(|s| s.is_half_closed())
}

fn client_gone(ctx: &mut Ctx) -> Result<bool> {
    ctx.served = Served::Local;
    Error::e_explain(ErrorType::ConnectionClosed, "client left while queued")
}

/// Maps a Pingora error that we did not cause ourselves to a failure, or `None` when the
/// client is gone and nothing can be written.
fn classify(e: &Error) -> Option<Failure> {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
        | TLSHandshakeFailure | InvalidCert | SocketError | BindError => {
            Some(Failure::UpstreamUnreachable)
        }
        ReadTimedout | WriteTimedout if *e.esource() == ErrorSource::Upstream => {
            Some(Failure::UpstreamTimeout)
        }
        HTTPStatus(503) => Some(Failure::NoHealthyServer {
            retry_after: std::time::Duration::from_secs(5),
        }),
        InvalidHTTPHeader | H1Error | H2Error if *e.esource() == ErrorSource::Upstream => {
            Some(Failure::UpstreamProtocol)
        }
        ConnectionClosed | ReadError | WriteError if *e.esource() == ErrorSource::Upstream => {
            Some(Failure::UpstreamProtocol)
        }
        // The only downstream reads with a timeout are request body reads (the body deadline).
        ReadTimedout => Some(Failure::ClientBodyTimeout),
        ReadError | WriteError | ConnectionClosed | WriteTimedout => None,
        _ if *e.esource() == ErrorSource::Downstream => Some(Failure::BadRequest),
        _ => Some(Failure::UpstreamUnreachable),
    }
}
