//! The `GET /register` response cache in the request path: lookup, single-flight fetch
//! (detached from the client, through the upstream's admission queue), and the answer.

use super::ctx::{Ctx, Served};
use super::respond::write_local;
use crate::cache::{
    canonical_key, CachedResponse, FetchError, Outcome, ResponseCache, StoreRule, Tier,
};
use crate::config::RouteConfig;
use crate::error::Failure;
use crate::sim::storm::SimpleClient;
use crate::upstream::{Eligible, Upstream};
use pingora_error::Result;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A failure of the detached fetch, carried through the cache to every waiter.
#[derive(Debug)]
pub struct FetchFailure(pub Failure);

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.reason())
    }
}

impl std::error::Error for FetchFailure {}

/// Response headers never stored or replayed (per hop, or per user).
const NOT_STORED: &[&str] = &[
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
/// Request headers not sent on the fetch.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Whether this request should go through the cache.
pub fn applies(route: &RouteConfig, session: &Session) -> bool {
    route.cache.as_ref().is_some_and(|c| {
        c.methods
            .iter()
            .any(|m| m == session.req_header().method.as_str())
    })
}

/// Serves the request from the cache (hit, or the shared result of one fetch). Returns
/// `Ok(true)` when an answer was written.
pub async fn serve(
    session: &mut Session,
    ctx: &mut Ctx,
    cache: &ResponseCache,
    secret: &[u8],
    up: Arc<Upstream>,
) -> Result<bool> {
    let Some(route) = ctx.route.clone() else {
        return Ok(false);
    };
    let Some(rc) = route.cache.clone() else {
        return Ok(false);
    };
    let req = session.req_header();
    let vary_vals: Vec<(String, Option<Vec<u8>>)> = rc
        .vary
        .iter()
        .map(|h| {
            (
                h.clone(),
                req.headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
            )
        })
        .collect();
    let vary: Vec<(&str, Option<&[u8]>)> = vary_vals
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_deref()))
        .collect();
    // HEAD is answered from the GET entry.
    let key = canonical_key(
        "GET",
        &ctx.host,
        req.uri.path(),
        req.uri.query(),
        &vary,
        secret,
    );
    let path_q = req
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, _)| !NOT_FORWARDED.contains(&n.as_str()))
        .filter_map(|(n, v)| {
            v.to_str()
                .ok()
                .map(|v| (n.as_str().to_string(), v.to_string()))
        })
        .collect();
    if let Some(ip) = &ctx.client_ip {
        headers.push(("x-forwarded-for".into(), ip.clone()));
    }
    headers.push(("x-forwarded-proto".into(), "http".into()));
    headers.push(("x-request-id".into(), ctx.request_id.clone()));
    let route_adm = ctx.snap.route_admission.get(&route.name).cloned();
    let priority = ctx.priority;
    let pinned = ctx.pinned;
    let state = ctx.state().clone();
    let fetch = move || fetch(up, route_adm, priority, pinned, path_q, headers, state);
    let rule = StoreRule {
        ttl: rc.ttl,
        statuses: Some(rc.statuses.clone()),
        max_entry_bytes: Some(usize::try_from(rc.max_entry_size).unwrap_or(usize::MAX)),
    };
    let result = cache.get_or_fetch_with(key, rule, fetch).await;
    let st = ctx.state().clone();
    let m = &st.metrics.cache_requests;
    let (resp, x_cache, age) = match result {
        Ok((resp, Outcome::Hit { tier, age })) => {
            ctx.served = Served::CacheHit;
            m.with_label_values(&[
                route.name.as_str(),
                if tier == Tier::Memory {
                    "hit"
                } else {
                    "hit_shared"
                },
            ])
            .inc();
            (resp, "HIT", age)
        }
        Ok((resp, Outcome::Miss)) => {
            ctx.served = Served::CacheMiss;
            m.with_label_values(&[route.name.as_str(), "miss"]).inc();
            (resp, "MISS", Duration::ZERO)
        }
        Ok((resp, Outcome::Coalesced)) => {
            ctx.served = Served::CacheCoalesced;
            m.with_label_values(&[route.name.as_str(), "coalesced"])
                .inc();
            (resp, "MISS", Duration::ZERO)
        }
        Err(FetchError::Upstream(e)) => {
            m.with_label_values(&[route.name.as_str(), "error"]).inc();
            let f = e
                .downcast_ref::<FetchFailure>()
                .map(|f| f.0.clone())
                .unwrap_or(Failure::UpstreamUnreachable);
            super::respond::write_failure(session, &f, &ctx.request_id).await?;
            ctx.served = Served::Local;
            ctx.failure = Some(f);
            return Ok(true);
        }
        Err(e) => {
            m.with_label_values(&[route.name.as_str(), "error"]).inc();
            ::log::warn!("cache: {e}");
            let f = Failure::UpstreamTimeout;
            super::respond::write_failure(session, &f, &ctx.request_id).await?;
            ctx.served = Served::Local;
            ctx.failure = Some(f);
            return Ok(true);
        }
    };
    ctx.upstream_status = None;
    let age_s = age.as_secs().to_string();
    let mut hdrs: Vec<(&str, &str)> = resp
        .headers
        .iter()
        .filter_map(|(n, v)| std::str::from_utf8(v).ok().map(|v| (n.as_str(), v)))
        .collect();
    hdrs.push(("x-cache", x_cache));
    hdrs.push(("age", &age_s));
    hdrs.push(("x-request-id", &ctx.request_id));
    write_local(session, resp.status, &hdrs, resp.body.clone()).await?;
    Ok(true)
}

/// The one upstream request of a flight; runs detached, so the leading client leaving does
/// not cancel it. Admission applies here (and not to hits).
async fn fetch(
    up: Arc<Upstream>,
    route_adm: Option<Arc<crate::upstream::admission::Admission>>,
    priority: i32,
    pinned: Option<usize>,
    path_q: String,
    headers: Vec<(String, String)>,
    state: Arc<crate::state::AppState>,
) -> std::result::Result<CachedResponse, FetchError> {
    let fail = |f: Failure| FetchError::upstream(FetchFailure(f));
    let _route_permit = match &route_adm {
        Some(a) => Some(
            a.acquire(priority, &[0], &mut |f| f[0])
                .await
                .map_err(|r| {
                    fail(Failure::QueueTimeout {
                        retry_after: r.retry_after,
                        body: up.cfg.queue.body.clone(),
                    })
                })?,
        ),
        None => None,
    };
    let mut tried = Vec::new();
    loop {
        let list = match pinned {
            Some(i) if up.is_usable(i) && !tried.contains(&i) => vec![i],
            _ => match up.eligible(&tried) {
                Eligible::Servers(l) => l,
                Eligible::None if tried.is_empty() => {
                    return Err(fail(Failure::NoHealthyServer {
                        retry_after: up.retry_after(),
                    }))
                }
                Eligible::None => return Err(fail(Failure::UpstreamUnreachable)),
            },
        };
        let upc = up.clone();
        let permit = up
            .admission
            .acquire(priority, &list, &mut |free| upc.choose(free, None))
            .await
            .map_err(|r| {
                let body = up.cfg.queue.body.clone();
                fail(match r.reason {
                    crate::upstream::admission::RejectReason::QueueFull => Failure::QueueFull {
                        retry_after: r.retry_after,
                        body,
                    },
                    crate::upstream::admission::RejectReason::FailFast => Failure::FailFast {
                        retry_after: r.retry_after,
                        body,
                    },
                    _ => Failure::QueueTimeout {
                        retry_after: r.retry_after,
                        body,
                    },
                })
            })?;
        let i = permit.group();
        let server = &up.servers[i];
        let hdrs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut client = SimpleClient::new(server.cfg.addr);
        let t = &up.cfg.timeouts;
        match tokio::time::timeout(
            t.connect + t.read,
            client.request("GET", &path_q, &hdrs, None),
        )
        .await
        {
            Ok(Ok(resp)) => {
                drop(permit);
                let _ = up.observe_status(i, resp.status);
                state
                    .metrics
                    .upstream_requests
                    .with_label_values(&[
                        up.name(),
                        server.cfg.name.as_str(),
                        &resp.status.to_string(),
                    ])
                    .inc();
                let headers = resp
                    .headers
                    .into_iter()
                    .filter(|(n, _)| !NOT_STORED.contains(&n.as_str()))
                    .map(|(n, v)| (n, v.into_bytes()))
                    .collect();
                let now = SystemTime::now();
                return Ok(CachedResponse {
                    status: resp.status,
                    headers,
                    body: resp.body,
                    stored_at: now,
                    expires_at: now,
                });
            }
            Ok(Err(e))
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    || e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                let _ = up.observe_failure(i);
                tried.push(i);
                if tried.len() as u32 > up.cfg.retries {
                    return Err(fail(Failure::UpstreamUnreachable));
                }
            }
            Ok(Err(_)) => return Err(fail(Failure::UpstreamProtocol)),
            Err(_) => return Err(fail(Failure::UpstreamTimeout)),
        }
    }
}
