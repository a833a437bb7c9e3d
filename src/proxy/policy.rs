//! Lua policy glue: lets the engine read the request straight from the session (nothing is
//! copied here; the engine reads what it needs per call), runs the hook, counts the outcome,
//! and turns the decision into plain changes of the request context.

use super::ctx::Ctx;
use crate::config::OnPolicyError;
use crate::error::Failure;
use crate::policy::{
    Hook, Outcome, PolicyDecision, PolicyEngine, PolicyHost, RequestSource, ResponseSource,
    TlsInfo, UpstreamState,
};
use crate::state::{AppState, Snapshot};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use prometheus::{Histogram, IntCounter};
use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Maps and upstream state of the request's snapshot, as Lua sees them.
impl PolicyHost for Snapshot {
    fn map_get(&self, map: &str, key: &str) -> Option<String> {
        self.maps
            .get(map)
            .and_then(|m| m.get(key))
            .map(str::to_string)
    }

    fn upstream_state(&self, name: &str) -> Option<UpstreamState> {
        self.upstream(name).map(|u| UpstreamState {
            healthy: u.healthy_count(),
            total: u.servers.len(),
            inflight: u.admission.total_inflight(),
            queued: u.admission.queue_depth(),
        })
    }
}

/// The request of `session` as policies see it; header values that are not visible ASCII
/// are left out.
pub struct SessionRequest<'a> {
    req: &'a RequestHeader,
    ctx: &'a Ctx,
}

impl<'a> SessionRequest<'a> {
    pub fn new(session: &'a Session, ctx: &'a Ctx) -> Self {
        Self {
            req: session.req_header(),
            ctx,
        }
    }
}

impl RequestSource for SessionRequest<'_> {
    fn method(&self) -> &str {
        self.req.method.as_str()
    }
    fn path(&self) -> &str {
        self.req.uri.path()
    }
    fn client_ip(&self) -> Option<&str> {
        self.ctx.client_ip.as_deref()
    }
    fn route(&self) -> Option<&str> {
        self.ctx.route.as_deref().map(|r| r.name.as_str())
    }
    fn tls(&self) -> Option<&TlsInfo> {
        self.ctx.tls.as_ref()
    }
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        for (n, v) in &self.req.headers {
            if let Ok(v) = v.to_str() {
                f(n.as_str(), v);
            }
        }
    }
    fn for_each_query(&self, f: &mut dyn FnMut(&str, &str)) {
        let Some(q) = self.req.uri.query() else {
            return;
        };
        for p in q.split('&').filter(|p| !p.is_empty()) {
            match p.split_once('=') {
                Some((k, v)) => f(k, v),
                None => f(p, ""),
            }
        }
    }
}

/// A response as `response`/`log` hooks see it: the upstream response header, or only the
/// status (`log`, where headers are not offered).
enum SessionResponse<'a> {
    Header(&'a ResponseHeader),
    Status(u16),
}

impl ResponseSource for SessionResponse<'_> {
    fn status(&self) -> u16 {
        match self {
            SessionResponse::Header(r) => r.status.as_u16(),
            SessionResponse::Status(s) => *s,
        }
    }
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        if let SessionResponse::Header(r) = self {
            for (n, v) in &r.headers {
                if let Ok(v) = v.to_str() {
                    f(n.as_str(), v);
                }
            }
        }
    }
}

/// The request's snapshot as the engine's host.
fn host(ctx: &Ctx) -> Arc<dyn PolicyHost> {
    ctx.snap.clone()
}

fn outcome_index(o: &Outcome) -> usize {
    match o {
        Outcome::Ok => 0,
        Outcome::Deny => 1,
        Outcome::Error(_) => 2,
        Outcome::Budget => 3,
    }
}

const OUTCOME_LABELS: [&str; 4] = crate::metrics::POLICY_OUTCOMES;

fn hook_label(h: Hook) -> &'static str {
    match h {
        Hook::Admit => "admit",
        Hook::Route => "route",
        Hook::Response => "response",
        Hook::Log => "log",
    }
}

/// This thread's handles on the policy metrics of one [`AppState`], by hook (and outcome).
/// why: `with_label_values` hashes the labels and takes a lock on every call, twice per hook
/// call; the handles share the counters, so caching them changes nothing else.
struct Handles {
    /// Whose metrics; a `Weak` keeps the address from being reused while it is cached.
    state: Weak<AppState>,
    runs: [[Option<IntCounter>; 4]; 4],
    duration: [Option<Histogram>; 4],
}

thread_local! {
    static HANDLES: RefCell<Option<Handles>> = const { RefCell::new(None) };
}

fn count(state: &Arc<AppState>, hook: Hook, o: &Outcome, took: Duration) {
    let (h, oi) = (hook as usize, outcome_index(o));
    let counted = HANDLES.try_with(|cell| {
        let mut cell = cell.borrow_mut();
        let handles = match &mut *cell {
            Some(c) if std::ptr::eq(c.state.as_ptr(), Arc::as_ptr(state)) => c,
            other => other.insert(Handles {
                state: Arc::downgrade(state),
                runs: Default::default(),
                duration: Default::default(),
            }),
        };
        let m = &state.metrics;
        handles.runs[h][oi]
            .get_or_insert_with(|| {
                m.policy_runs
                    .with_label_values(&[hook_label(hook), OUTCOME_LABELS[oi]])
            })
            .inc();
        handles.duration[h]
            .get_or_insert_with(|| m.policy_duration.with_label_values(&[hook_label(hook)]))
            .observe(took.as_secs_f64());
    });
    if counted.is_err() {
        // Thread shutting down: count the slow way.
        let m = &state.metrics;
        m.policy_runs
            .with_label_values(&[hook_label(hook), OUTCOME_LABELS[oi]])
            .inc();
        m.policy_duration
            .with_label_values(&[hook_label(hook)])
            .observe(took.as_secs_f64());
    }
    if let Outcome::Error(e) = o {
        ::log::warn!("policy {} hook failed: {e}", hook_label(hook));
    }
}

/// What the request path should do after a policy hook.
pub enum Verdict {
    Continue,
    Reject(Failure),
}

/// Runs `admit` or `route` of the request's policy generation and applies the decision to `ctx`.
pub fn run(
    engine: &PolicyEngine,
    hook: Hook,
    session: &Session,
    ctx: &mut Ctx,
    on_error: &OnPolicyError,
) -> Verdict {
    // why: the request's snapshot names the generation, so admit, route, response and log
    // of one request run the same scripts even when a reload lands in between
    let policy = &ctx.snap.policy;
    if !policy.has_hook(hook) {
        return Verdict::Continue;
    }
    let view = SessionRequest::new(session, ctx);
    let t = Instant::now();
    let (decision, outcome) = match hook {
        Hook::Admit => engine.admit(policy, &view, host(ctx)),
        _ => engine.route(policy, &view, host(ctx)),
    };
    count(ctx.state(), hook, &outcome, t.elapsed());
    if matches!(outcome, Outcome::Error(_) | Outcome::Budget) {
        if let OnPolicyError::Status(s) = on_error {
            return Verdict::Reject(Failure::PolicyError { status: *s });
        }
    }
    match decision {
        PolicyDecision::Pass => Verdict::Continue,
        PolicyDecision::Deny {
            status,
            retry_after,
            body,
        } => Verdict::Reject(Failure::PolicyDeny {
            status,
            retry_after: retry_after.map(|s| Duration::from_secs(u64::from(s))),
            body,
        }),
        PolicyDecision::Adjust {
            priority,
            set_headers,
            remove_headers,
        } => {
            if let Some(p) = priority {
                ctx.priority = p;
            }
            ctx.set_headers.extend(set_headers);
            ctx.remove_headers.extend(remove_headers);
            Verdict::Continue
        }
        PolicyDecision::Route {
            upstream,
            server,
            set_headers,
            remove_headers,
        } => {
            ctx.set_headers.extend(set_headers);
            ctx.remove_headers.extend(remove_headers);
            match ctx.snap.upstream(&upstream).cloned() {
                Some(up) => {
                    ctx.pinned = server.as_deref().and_then(|s| up.server_index(s));
                    if server.is_some() && ctx.pinned.is_none() {
                        ::log::warn!("policy routed to unknown server {server:?} of upstream {upstream}; balancing instead");
                    }
                    ctx.upstream = Some(up);
                    Verdict::Continue
                }
                None => {
                    count(
                        ctx.state(),
                        hook,
                        &Outcome::Error(format!("unknown upstream {upstream:?}")),
                        Duration::ZERO,
                    );
                    Verdict::Continue
                }
            }
        }
    }
}

/// Runs the `response` hook and applies its header edits.
pub fn response(engine: &PolicyEngine, session: &Session, ctx: &Ctx, resp: &mut ResponseHeader) {
    let policy = &ctx.snap.policy;
    if !policy.has_hook(Hook::Response) {
        return;
    }
    let t = Instant::now();
    let (edit, outcome) = engine.response(
        policy,
        &SessionRequest::new(session, ctx),
        &SessionResponse::Header(resp),
        host(ctx),
    );
    count(ctx.state(), Hook::Response, &outcome, t.elapsed());
    for h in edit.remove_headers {
        resp.remove_header(&h);
    }
    for (k, v) in edit.set_headers {
        let _ = resp.insert_header(k, v);
    }
}

/// Runs the `log` hook.
pub fn log(engine: &PolicyEngine, session: &Session, ctx: &Ctx) {
    let policy = &ctx.snap.policy;
    if !policy.has_hook(Hook::Log) {
        return;
    }
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let t = Instant::now();
    let outcome = engine.log(
        policy,
        &SessionRequest::new(session, ctx),
        &SessionResponse::Status(status),
        host(ctx),
    );
    count(ctx.state(), Hook::Log, &outcome, t.elapsed());
}
