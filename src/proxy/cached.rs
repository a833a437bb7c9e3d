//! The response cache in the request path: the key, the lookup, and the answer.
//!
//! A miss joins the key's flight; the one leader fetches through a Pingora subrequest of the
//! client's own request (see [`super::fill`]), so the fetch takes the same path as any
//! proxied request and runs detached from the client. Every waiter, the leader's client
//! included, then gets the flight's answer written locally. Answers that may not be shared
//! with this request (another variant of the origin's `Vary`, or larger than the route's
//! `max_entry_size`, or with no room in the memory cache while it was filled) are not written
//! from the cache: the request is proxied on its own.

use super::ctx::{Ctx, Served};
use super::fill::{FillError, FillPlan};
use super::respond::write_local;
use crate::cache::rules::{fingerprint_names, variant_fingerprint, CREDENTIAL_HEADERS};
use crate::cache::{canonical_key, FetchError, Outcome, ResponseCache, StoreRule, Tier};
use crate::config::RouteConfig;
use crate::error::Failure;
use crate::metrics::handles::CacheResult;
use crate::upstream::Upstream;
use pingora_error::Result;
use pingora_proxy::subrequest::Ctx as SubrequestCtx;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// Pseudo-header name under which the client certificate identity enters the key.
const CLIENT_CERT_KEY: &str = ":client-certificate";

/// Whether this request should go through the cache.
pub fn applies(route: &RouteConfig, session: &Session) -> bool {
    route.cache.as_ref().is_some_and(|c| {
        c.methods
            .iter()
            .any(|m| m == session.req_header().method.as_str())
    })
}

/// How the cache dealt with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAnswer {
    /// An answer was written.
    Answered,
    /// Not from the cache: proxy the request on its own.
    Bypass,
}

/// Serves the request from the cache (a hit, or the shared answer of one fill).
pub async fn serve(
    session: &mut Session,
    ctx: &mut Ctx,
    cache: &ResponseCache,
    secret: &[u8],
    up: Arc<Upstream>,
) -> Result<CacheAnswer> {
    let Some(route) = ctx.route.clone() else {
        return Ok(CacheAnswer::Bypass);
    };
    let Some(rc) = route.cache.clone() else {
        return Ok(CacheAnswer::Bypass);
    };
    let req = session.req_header();
    // The route's `vary` plus, always, the credentials and the client certificate: a stored
    // answer is only ever reused for the same user.
    let mut vary_vals: Vec<(&str, Option<Vec<u8>>)> = rc
        .vary
        .iter()
        .map(|h| h.as_str())
        .chain(CREDENTIAL_HEADERS.iter().copied())
        .map(|h| (h, req.headers.get(h).map(|v| v.as_bytes().to_vec())))
        .collect();
    vary_vals.sort_by_key(|(n, _)| *n);
    vary_vals.dedup_by_key(|(n, _)| *n);
    let cert = session
        .digest()
        .and_then(|d| d.ssl_digest.as_deref())
        .and_then(|d| d.extension.get::<crate::tlsinfo::ClientCert>())
        .map(|c| format!("{}\n{}", c.verify, c.pem_flat).into_bytes());
    if cert.is_some() {
        vary_vals.push((CLIENT_CERT_KEY, cert));
    }
    let vary: Vec<(&str, Option<&[u8]>)> =
        vary_vals.iter().map(|(n, v)| (*n, v.as_deref())).collect();
    // HEAD is answered from the GET entry.
    let key = canonical_key(
        "GET",
        &ctx.host,
        req.uri.path(),
        req.uri.query(),
        &vary,
        secret,
    );
    let rule = StoreRule {
        ttl: rc.ttl,
        statuses: Some(rc.statuses.clone()),
        max_entry_bytes: Some(usize::try_from(rc.max_entry_size).unwrap_or(usize::MAX)),
    };
    if session.subrequest_spawner.is_none() {
        return Ok(CacheAnswer::Bypass);
    }
    let h2_head = super::fill::h1_head_for_subrequest(session.req_header_mut());
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Ok(CacheAnswer::Bypass);
    };
    let downstream = session.as_downstream();
    let (priority, pinned, redispatch) = (ctx.priority, ctx.pinned, ctx.redispatch);
    let (hash_value, set_headers) = (ctx.hash_value.clone(), ctx.set_headers.clone());
    let remove_headers = ctx.remove_headers.clone();
    let (request_id, client_request_id) = (ctx.request_id.clone(), ctx.client_request_id);
    let (fill_route, secret_owned) = (route.clone(), secret.to_vec());
    let fill_cache = cache.clone();
    let fetch = move || {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let plan = Some(FillPlan {
            route: fill_route,
            upstream: up,
            priority,
            pinned,
            redispatch,
            hash_value,
            set_headers,
            remove_headers,
            request_id,
            client_request_id,
            secret: secret_owned,
            hold: fill_cache.hold(),
            reply,
        });
        let sub_ctx = SubrequestCtx::builder().user_ctx(Box::new(plan)).build();
        let (prepared, handle) = spawner.create_subrequest(downstream, sub_ctx);
        async move {
            handle.drain_tasks();
            tokio::spawn(prepared.run());
            match rx.await {
                Ok(Ok(fetched)) => Ok(fetched),
                Ok(Err(e)) => Err(FetchError::upstream(e)),
                Err(_) => Err(FetchError::Aborted),
            }
        }
    };
    let result = cache.get_or_fetch_with(key, rule, fetch).await;
    if let Some(original) = h2_head {
        *session.req_header_mut() = original;
    }
    let label = |r: CacheResult| route.metrics.cache(r);
    let (resp, x_cache, age) = match result {
        Ok((resp, outcome)) => {
            if !variant_matches(session, resp.variant.as_deref(), secret) {
                label(CacheResult::VariantMiss);
                return Ok(CacheAnswer::Bypass);
            }
            match outcome {
                Outcome::Hit { tier, age } => {
                    ctx.served = Served::CacheHit;
                    label(if tier == Tier::Memory {
                        CacheResult::Hit
                    } else {
                        CacheResult::HitShared
                    });
                    (resp, "HIT", age)
                }
                Outcome::Miss => {
                    ctx.served = Served::CacheMiss;
                    label(CacheResult::Miss);
                    (resp, "MISS", Duration::ZERO)
                }
                Outcome::Coalesced => {
                    ctx.served = Served::CacheCoalesced;
                    label(CacheResult::Coalesced);
                    (resp, "MISS", Duration::ZERO)
                }
            }
        }
        Err(FetchError::Upstream(e)) => match e.downcast_ref::<FillError>() {
            Some(FillError::TooLarge) => {
                label(CacheResult::TooLarge);
                return Ok(CacheAnswer::Bypass);
            }
            Some(FillError::NoRoom) => {
                label(CacheResult::NoRoom);
                return Ok(CacheAnswer::Bypass);
            }
            Some(FillError::Failed(f)) => {
                label(CacheResult::Error);
                return answer_failure(session, ctx, f.clone()).await;
            }
            None => {
                label(CacheResult::Error);
                return answer_failure(session, ctx, Failure::UpstreamUnreachable).await;
            }
        },
        Err(e) => {
            label(CacheResult::Error);
            ::log::warn!("cache: {e}");
            return answer_failure(session, ctx, Failure::UpstreamTimeout).await;
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
    write_local(session, ctx, resp.status, &hdrs, resp.body.clone()).await?;
    Ok(CacheAnswer::Answered)
}

async fn answer_failure(session: &mut Session, ctx: &mut Ctx, f: Failure) -> Result<CacheAnswer> {
    super::respond::write_failure(session, ctx, &f).await?;
    ctx.served = Served::Local;
    ctx.failure = Some(f);
    Ok(CacheAnswer::Answered)
}

/// Whether this request has the values of the origin's `Vary` headers that the answer was
/// rendered for.
fn variant_matches(session: &Session, variant: Option<&str>, secret: &[u8]) -> bool {
    let Some(stored) = variant else {
        return true;
    };
    let names = fingerprint_names(stored);
    let req = session.req_header();
    let value = |n: &str| req.headers.get(n).map(|v| v.as_bytes().to_vec());
    variant_fingerprint(&names, &value, secret).as_deref() == Some(stored)
}
