//! One access-log line and the request metrics per request, written in `logging`.

use super::ctx::{Ctx, Served};
use crate::config::LogFormat;
use crate::metrics::handles::status_label;
use crate::state::AppState;
use pingora_error::Error;
use pingora_proxy::Session;

pub fn record(state: &AppState, session: &mut Session, e: Option<&Error>, ctx: &Ctx) {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let elapsed = ctx.start.elapsed();
    let route = ctx.route_name();
    let upstream = ctx.upstream_name();
    let m = &state.metrics;
    // A cache fill is the upstream side of a client request counted on its own.
    if ctx.served != Served::Fill {
        match ctx.route.as_deref() {
            Some(r) => {
                r.metrics.request(m, upstream, status);
                r.metrics.duration.observe(elapsed);
            }
            None => {
                m.requests
                    .with_label_values(&[route, upstream, status_label(status)])
                    .inc();
                m.request_duration
                    .with_label_values(&[route])
                    .observe(elapsed.as_secs_f64());
            }
        }
    }
    if let (Some(up), Some(i), Some(st)) =
        (ctx.upstream.as_deref(), ctx.server, ctx.upstream_status)
    {
        up.metrics.servers[i].responses.inc(st);
    }
    if let Some(crate::error::Failure::Refused(r)) = &ctx.failure {
        // one refusal line (reason, client, listener) instead of the request line
        crate::frontdoor::refusal::report_session(state, session, *r, status);
        return;
    }
    let cfg = &ctx.snap.config.access_log;
    if !cfg.enabled || !log::log_enabled!(target: crate::logging::ACCESS_TARGET, log::Level::Info) {
        return;
    }
    let req = session.req_header();
    let bytes = session.as_downstream().body_bytes_sent();
    let reason = ctx
        .failure
        .as_ref()
        .map(|f| f.reason())
        .or_else(|| e.map(|_| "error"))
        .unwrap_or("-");
    let served = match ctx.served {
        Served::Upstream => "upstream",
        Served::Local => "local",
        Served::CacheHit => "cache_hit",
        Served::CacheMiss => "cache_miss",
        Served::CacheCoalesced => "cache_coalesced",
        Served::Fill => "fill",
    };
    let client = ctx.client_ip.as_deref().unwrap_or("-");
    let uri = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let hdr = |n: &str| {
        req.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    match cfg.format {
        LogFormat::Combined => log::info!(
            target: crate::logging::ACCESS_TARGET,
            "{client} - - [{}] \"{} {uri} {:?}\" {status} {bytes} \"{}\" \"{}\" route={route} upstream={upstream} server={} served={served} reason={reason} duration_ms={:.3} queue_ms={:.3} rid={}",
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            req.method,
            req.version,
            hdr("referer"),
            hdr("user-agent"),
            ctx.server_name(),
            elapsed.as_secs_f64() * 1000.0,
            ctx.queue_wait.as_secs_f64() * 1000.0,
            ctx.request_id,
        ),
        LogFormat::Json => log::info!(
            target: crate::logging::ACCESS_TARGET,
            "{}",
            serde_json::json!({
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "client": client, "method": req.method.as_str(), "uri": uri, "status": status, "bytes": bytes,
                "route": route, "upstream": upstream, "server": ctx.server_name(), "served": served, "reason": reason,
                "duration_ms": elapsed.as_secs_f64() * 1000.0, "queue_ms": ctx.queue_wait.as_secs_f64() * 1000.0,
                "request_id": ctx.request_id, "user_agent": hdr("user-agent"),
            })
        ),
    }
}
