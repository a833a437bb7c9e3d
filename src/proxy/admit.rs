//! Admission glue: route limits, then server selection through the upstream's queue, each
//! raced against the client going away (a queued request whose client left is never sent).

use super::ctx::Ctx;
use crate::error::Failure;
use crate::upstream::admission::{Admission, Permit, RejectReason, Rejection};
use crate::upstream::{Eligible, Upstream};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// How an admission attempt ended.
pub enum Admit {
    Granted(Permit),
    Rejected(Failure),
    /// The client disconnected while waiting; nothing was sent upstream.
    ClientGone,
}

/// Request bodies up to this size are read before queueing (Pingora's retry buffer keeps them
/// for the upstream), so the wait can watch the connection for a client that leaves.
pub const BODY_BUFFER_MAX: u64 = 64 * 1024;

/// Reads a small request body ahead (so the connection can be watched while queued).
/// Returns true when the request has no body left to read.
async fn buffer_small_body(session: &mut Session) -> bool {
    let h = session.req_header();
    if h.headers.contains_key("transfer-encoding") {
        return false;
    }
    let len = match h
        .headers
        .get("content-length")
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
    {
        None => return true,
        Some(None) => return false,
        Some(Some(n)) => n,
    };
    if len == 0 {
        return true;
    }
    if len > BODY_BUFFER_MAX {
        return false;
    }
    let ds = session.as_downstream_mut();
    ds.enable_retry_buffering();
    let read_all = async {
        loop {
            match ds.read_request_body().await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    // why: a client that sends its headers but trickles its body must not hold the request
    // here forever; past this it is queued without watching
    tokio::time::timeout(std::time::Duration::from_secs(30), read_all)
        .await
        .unwrap_or(false)
}

/// Waits for `fut`, unless the downstream closes first. A request with a body larger than
/// [`BODY_BUFFER_MAX`] (or chunked) is not watched: reading it to detect a close would consume
/// it; the queue timeout bounds it.
async fn race_client<F>(session: &mut Session, fut: F) -> Option<Result<Permit, Rejection>>
where
    F: std::future::Future<Output = Result<Permit, Rejection>>,
{
    if session.subrequest_ctx.is_some() {
        // A cache fill: its in-memory downstream never leaves.
        return Some(fut.await);
    }
    let watch = session.as_downstream_mut().is_body_done() || buffer_small_body(session).await;
    if !watch {
        return Some(fut.await);
    }
    tokio::pin!(fut);
    tokio::select! {
        biased;
        r = &mut fut => return Some(r),
        closed = session.as_downstream_mut().read_body_or_idle(true) => {
            if closed.is_err() {
                return None;
            }
        }
    }
    // Bytes arrived (a pipelined request) rather than a close: keep waiting without probing.
    Some(fut.await)
}

fn rejection_failure(r: &Rejection, body: &str) -> Failure {
    let body = body.to_string();
    match r.reason {
        RejectReason::QueueFull => Failure::QueueFull {
            retry_after: r.retry_after,
            body,
        },
        RejectReason::QueueTimeout => Failure::QueueTimeout {
            retry_after: r.retry_after,
            body,
        },
        RejectReason::FailFast => Failure::FailFast {
            retry_after: r.retry_after,
            body,
        },
        RejectReason::NoEligibleGroup => Failure::NoHealthyServer {
            retry_after: r.retry_after,
        },
    }
}

fn record(ctx: &Ctx, scope: &str, name: &str, res: &Result<Permit, Rejection>, gone: bool) {
    let m = &ctx.state().metrics;
    match (res, gone) {
        (_, true) => m
            .admission_abandoned
            .with_label_values(&[scope, name])
            .inc(),
        (Ok(p), _) => m
            .queue_wait
            .with_label_values(&[scope, name])
            .observe(p.waited().as_secs_f64()),
        (Err(r), _) => {
            m.admission_rejected
                .with_label_values(&[scope, name, r.reason.as_str()])
                .inc();
            m.queue_wait
                .with_label_values(&[scope, name])
                .observe(r.waited.as_secs_f64());
        }
    }
}

/// Applies the route's own limit (if any).
pub async fn admit_route(
    session: &mut Session,
    ctx: &mut Ctx,
    adm: &Arc<Admission>,
    body: &str,
) -> Admit {
    let route = ctx.route_name().to_string();
    let fut = adm.acquire(ctx.priority, &[0], &mut |free| free[0]);
    let res = race_client(session, fut).await;
    finish(ctx, "route", &route, res, body)
}

fn finish(
    ctx: &mut Ctx,
    scope: &str,
    name: &str,
    res: Option<Result<Permit, Rejection>>,
    body: &str,
) -> Admit {
    match res {
        None => {
            record(
                ctx,
                scope,
                name,
                &Err(Rejection {
                    reason: RejectReason::QueueTimeout,
                    retry_after: Duration::ZERO,
                    waited: Duration::ZERO,
                }),
                true,
            );
            Admit::ClientGone
        }
        Some(r) => {
            record(ctx, scope, name, &r, false);
            match r {
                Ok(p) => {
                    ctx.queue_wait += p.waited();
                    Admit::Granted(p)
                }
                Err(rej) => {
                    ctx.queue_wait += rej.waited;
                    Admit::Rejected(rejection_failure(&rej, body))
                }
            }
        }
    }
}

/// Picks a server of `up` for this request and takes one of its slots, queueing when every
/// eligible server is at its limit. Honours a map pin (with or without redispatch).
pub async fn admit_server(session: &mut Session, ctx: &mut Ctx, up: &Arc<Upstream>) -> Admit {
    let eligible = match ctx.pinned {
        Some(i) if up.is_usable(i) && !ctx.tried.contains(&i) => Eligible::Servers(vec![i]),
        Some(_) if !ctx.redispatch => Eligible::None,
        _ => up.eligible(&ctx.tried),
    };
    let Eligible::Servers(list) = eligible else {
        return Admit::Rejected(Failure::NoHealthyServer {
            retry_after: up.retry_after(),
        });
    };
    let fut = {
        let hash = ctx.hash_value.as_deref();
        up.admission
            .acquire(ctx.priority, &list, &mut |free| up.choose(free, hash))
    };
    let res = race_client(session, fut).await;
    let out = finish(ctx, "upstream", up.name(), res, &up.cfg.queue.body);
    if let Admit::Granted(p) = &out {
        ctx.server = Some(p.group());
    }
    out
}
