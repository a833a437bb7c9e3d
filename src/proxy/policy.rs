//! Lua policy glue: builds the request view only when a hook exists, runs the hook, counts
//! the outcome, and turns the decision into plain changes of the request context.

use super::ctx::Ctx;
use crate::config::OnPolicyError;
use crate::error::Failure;
use crate::policy::{
    Hook, Outcome, PolicyDecision, PolicyEngine, PolicyHost, PolicyRequest, PolicyResponse,
    UpstreamState,
};
use crate::state::{AppState, Snapshot};
use pingora_proxy::Session;
use std::time::{Duration, Instant};

/// Maps and upstream state of the request's snapshot, as Lua sees them.
pub struct SnapshotHost<'a>(pub &'a Snapshot);

impl PolicyHost for SnapshotHost<'_> {
    fn map_get(&self, map: &str, key: &str) -> Option<String> {
        self.0
            .maps
            .get(map)
            .and_then(|m| m.get(key))
            .map(str::to_string)
    }

    fn upstream_state(&self, name: &str) -> Option<UpstreamState> {
        self.0.upstream(name).map(|u| UpstreamState {
            healthy: u.healthy_count(),
            total: u.servers.len(),
            inflight: u.admission.total_inflight(),
            queued: u.admission.queue_depth(),
        })
    }
}

pub fn request_view(session: &Session, ctx: &Ctx) -> PolicyRequest {
    let req = session.req_header();
    let query = req
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    PolicyRequest {
        method: req.method.as_str().to_string(),
        path: req.uri.path().to_string(),
        query,
        headers: req
            .headers
            .iter()
            .filter_map(|(n, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (n.as_str().to_string(), v.to_string()))
            })
            .collect(),
        client_ip: ctx.client_ip.clone(),
        tls: None,
        route: ctx.route.as_ref().map(|r| r.name.clone()),
    }
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Deny => "deny",
        Outcome::Error(_) => "error",
        Outcome::Budget => "budget",
    }
}

fn hook_label(h: Hook) -> &'static str {
    match h {
        Hook::Admit => "admit",
        Hook::Route => "route",
        Hook::Response => "response",
        Hook::Log => "log",
    }
}

fn count(state: &AppState, hook: Hook, o: &Outcome, took: Duration) {
    state
        .metrics
        .policy_runs
        .with_label_values(&[hook_label(hook), outcome_label(o)])
        .inc();
    state
        .metrics
        .policy_duration
        .with_label_values(&[hook_label(hook)])
        .observe(took.as_secs_f64());
    if let Outcome::Error(e) = o {
        ::log::warn!("policy {} hook failed: {e}", hook_label(hook));
    }
}

/// What the request path should do after a policy hook.
pub enum Verdict {
    Continue,
    Reject(Failure),
}

/// Runs `admit` or `route` and applies the decision to `ctx`.
pub fn run(
    engine: &PolicyEngine,
    hook: Hook,
    session: &Session,
    ctx: &mut Ctx,
    on_error: &OnPolicyError,
) -> Verdict {
    if !engine.has_hook(hook) {
        return Verdict::Continue;
    }
    let view = request_view(session, ctx);
    let snap = ctx.snap.clone();
    let host = SnapshotHost(&snap);
    let t = Instant::now();
    let (decision, outcome) = match hook {
        Hook::Admit => engine.admit(&view, &host),
        _ => engine.route(&view, &host),
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
        } => {
            if let Some(p) = priority {
                ctx.priority = p;
            }
            ctx.set_headers.extend(set_headers);
            Verdict::Continue
        }
        PolicyDecision::Route {
            upstream,
            server,
            set_headers,
        } => {
            ctx.set_headers.extend(set_headers);
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
pub fn response(
    engine: &PolicyEngine,
    session: &Session,
    ctx: &Ctx,
    resp: &mut pingora_http::ResponseHeader,
) {
    if !engine.has_hook(Hook::Response) {
        return;
    }
    let view = request_view(session, ctx);
    let pr = PolicyResponse {
        status: resp.status.as_u16(),
        headers: resp
            .headers
            .iter()
            .filter_map(|(n, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (n.as_str().to_string(), v.to_string()))
            })
            .collect(),
    };
    let snap = ctx.snap.clone();
    let t = Instant::now();
    let (edit, outcome) = engine.response(&view, &pr, &SnapshotHost(&snap));
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
    if !engine.has_hook(Hook::Log) {
        return;
    }
    let view = request_view(session, ctx);
    let pr = PolicyResponse {
        status: session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0),
        headers: Vec::new(),
    };
    let snap = ctx.snap.clone();
    let t = Instant::now();
    let outcome = engine.log(&view, &pr, &SnapshotHost(&snap));
    count(ctx.state(), Hook::Log, &outcome, t.elapsed());
}
