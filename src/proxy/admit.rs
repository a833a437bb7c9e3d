//! Admission glue: route limits, then server selection through the upstream's queue, each
//! raced against the client going away (a queued request whose client left is never sent).

use super::ctx::Ctx;
use crate::config::BodyTimeout;
use crate::error::Failure;
use crate::metrics::handles::AdmissionHandles;
use crate::upstream::admission::{Admission, Permit, RejectReason, Rejection};
use crate::upstream::{Eligible, Upstream};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// How an admission attempt ended.
pub enum Admit {
    Granted(Permit),
    Rejected(Failure),
    /// The client disconnected while waiting; nothing was sent upstream.
    ClientGone,
}

/// Request bodies up to this size are read before queueing (Pingora's retry buffer keeps them
/// for the upstream), so the wait can watch the connection for a client that leaves and no slot
/// is taken before the body a retry needs is in.
pub const BODY_BUFFER_MAX: u64 = 64 * 1024;

/// What reading the request body ahead found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAhead {
    /// No body, or all of it is in (kept in Pingora's retry buffer).
    Ready,
    /// Too large or chunked: it is streamed to the upstream, under the body deadline.
    Streaming,
    /// The body did not arrive within `server.client_body_timeout` (408, no slot taken).
    TimedOut,
    /// The client closed or broke the connection while sending it.
    Broken,
}

/// Reads a small request body before admission, within the client body deadline (counted
/// from the start of the request). Larger or chunked bodies are left to stream, with the
/// connection's read timeout set to what remains of the deadline.
pub async fn read_body_ahead(
    session: &mut Session,
    limits: BodyTimeout,
    start: Instant,
) -> BodyAhead {
    if session.as_downstream_mut().is_body_done() {
        return BodyAhead::Ready;
    }
    let h = session.req_header();
    let len = if h.headers.contains_key("transfer-encoding") {
        None
    } else {
        match h
            .headers
            .get("content-length")
            .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
        {
            None | Some(Some(0)) => return BodyAhead::Ready,
            Some(n) => n,
        }
    };
    let Some(len) = len.filter(|&n| n <= BODY_BUFFER_MAX) else {
        return if stream_deadline(session, limits, start, 0) {
            BodyAhead::Streaming
        } else {
            BodyAhead::TimedOut
        };
    };
    let deadline = tokio::time::Instant::from_std(start + limits.allowed(len));
    let ds = session.as_downstream_mut();
    ds.enable_retry_buffering();
    let read_all = async {
        loop {
            match ds.read_request_body().await {
                Ok(Some(_)) => continue,
                Ok(None) => return BodyAhead::Ready,
                Err(_) => return BodyAhead::Broken,
            }
        }
    };
    tokio::time::timeout_at(deadline, read_all)
        .await
        .unwrap_or(BodyAhead::TimedOut)
}

/// Sets the connection's read timeout to what remains of the body deadline after `received`
/// bytes; false when the deadline has passed.
pub fn stream_deadline(
    session: &mut Session,
    limits: BodyTimeout,
    start: Instant,
    received: u64,
) -> bool {
    let allowed = limits.allowed(received);
    let elapsed = start.elapsed();
    if elapsed >= allowed {
        return false;
    }
    session
        .as_downstream_mut()
        .set_read_timeout(Some(allowed - elapsed));
    true
}

/// Waits for `fut`, unless the downstream closes first. Only a request whose body is all in
/// (see [`read_body_ahead`]) is watched: reading a streaming body to detect a close would
/// consume it; the queue timeout bounds those.
async fn race_client<F>(session: &mut Session, fut: F) -> Option<Result<Permit, Rejection>>
where
    F: std::future::Future<Output = Result<Permit, Rejection>>,
{
    if session.subrequest_ctx.is_some() {
        // A cache fill: its in-memory downstream never leaves.
        return Some(fut.await);
    }
    if !session.as_downstream_mut().is_body_done() {
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

/// Applies the route's own limit `adm` (`m`: its metric handles).
pub async fn admit_route(
    session: &mut Session,
    ctx: &mut Ctx,
    adm: &Arc<Admission>,
    m: &AdmissionHandles,
    body: &str,
) -> Admit {
    let fut = adm.acquire_as(ctx.admission_kind(), &[0], &mut |free| free[0]);
    let res = race_client(session, fut).await;
    finish(ctx, m, res, body)
}

/// Counts the outcome of an admission in `m` and turns it into an [`Admit`].
fn finish(
    ctx: &mut Ctx,
    m: &AdmissionHandles,
    res: Option<Result<Permit, Rejection>>,
    body: &str,
) -> Admit {
    match res {
        None => {
            m.abandoned();
            Admit::ClientGone
        }
        Some(Ok(p)) => {
            m.granted(p.waited());
            ctx.queue_wait += p.waited();
            Admit::Granted(p)
        }
        Some(Err(rej)) => {
            m.rejected(rej.reason, rej.waited);
            ctx.queue_wait += rej.waited;
            Admit::Rejected(rejection_failure(&rej, body))
        }
    }
}

/// Most times a request handed a slot on a server disabled (or drained, or set to weight 0)
/// while it waited goes back for another; past it the request is answered as if no server
/// were up.
const MAX_REPICKS: usize = 8;

/// Picks a server of `up` for this request and takes one of its slots, queueing when every
/// eligible server is at its limit. Honours a map pin (with or without redispatch).
///
/// The queue hands a freed slot to a waiter chosen when it queued; if that server was disabled
/// (or, for a balanced request, set to weight 0) in the meantime, the slot is given back and
/// the request picks again among the servers usable now, so a disabled server takes no new
/// request (HAProxy redispatches the queue of a server put in maintenance).
pub async fn admit_server(session: &mut Session, ctx: &mut Ctx, up: &Arc<Upstream>) -> Admit {
    for _ in 0..MAX_REPICKS {
        let (eligible, pinned) = match ctx.pinned {
            Some(i) if up.is_usable(i) && !ctx.tried.contains(&i) => {
                (Eligible::Servers(vec![i]), true)
            }
            Some(_) if !ctx.redispatch => (Eligible::None, true),
            _ => (up.eligible(&ctx.tried), false),
        };
        let Eligible::Servers(list) = eligible else {
            return Admit::Rejected(Failure::NoHealthyServer {
                retry_after: up.retry_after(),
            });
        };
        let fut = {
            let hash = ctx.hash_value.as_deref();
            up.admission
                .acquire_as(ctx.admission_kind(), &list, &mut |free| {
                    up.choose(free, hash)
                })
        };
        // A request only one server may take waits in that server's queue (`show stat` qcur).
        let only = (list.len() == 1).then(|| &up.servers[list[0]].state.counters);
        let res = race_client(session, count_queued(fut, only)).await;
        let out = finish(ctx, &up.metrics.admission, res, &up.cfg.queue.body);
        let Admit::Granted(p) = out else {
            return out;
        };
        let i = p.group();
        if !changed_by_operator(up, i, pinned) {
            up.note_granted(i);
            ctx.server = Some(i);
            return Admit::Granted(p);
        }
        drop(p);
    }
    Admit::Rejected(Failure::NoHealthyServer {
        retry_after: up.retry_after(),
    })
}

/// Whether server `i` stopped taking this kind of request because of an operator (disabled,
/// or weight 0 / drain mode for a balanced request). A server that went down by health keeps
/// the request, as before (its connect failure is retried elsewhere).
fn changed_by_operator(up: &Upstream, i: usize, pinned: bool) -> bool {
    up.servers[i].state.is_drained() || (!pinned && up.effective_weight(i) == 0)
}

/// Awaits `fut`, counting it in `counters.queued` while it waits (not when it completes on
/// its first poll, so an immediate grant is never seen as queued).
async fn count_queued<F>(
    fut: F,
    counters: Option<&crate::upstream::runtime::ServerCounters>,
) -> F::Output
where
    F: std::future::Future,
{
    let mut fut = std::pin::pin!(fut);
    let mut guard = None;
    std::future::poll_fn(|cx| {
        let r = fut.as_mut().poll(cx);
        if r.is_pending() && guard.is_none() {
            guard = counters.map(crate::upstream::runtime::QueuedGuard::new);
        }
        r
    })
    .await
}
