//! The admin listener (loopback by default): metrics, liveness, readiness, status, reload,
//! maps, upstream servers (drain, weight). Everything but `/healthz`, `/readyz` and `/metrics` needs the bearer token when one
//! is configured.

use crate::control::maps as mapsync;
use crate::maps::MapSource;
use crate::runtime_api::Change;
use crate::state::AppState;
use crate::upstream::Upstream;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct AdminApp {
    pub state: Arc<AppState>,
}

fn reply(status: u16, ctype: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", ctype)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string() + "\n")
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Largest body of a whole-map `PUT` (a map of a few million entries fits).
const MAX_MAP_BODY_BYTES: usize = 256 << 20;
/// Largest body of every other admin request (entries, shared values).
const MAX_SMALL_BODY_BYTES: usize = 1 << 20;

/// Why an admin request body was not taken.
enum BodyError {
    /// Over the endpoint's limit (`Content-Length` or the bytes received so far).
    TooLarge(usize),
    /// The body did not end cleanly (connection cut, malformed chunking): never applied,
    /// since a cut map would otherwise be applied as if it were whole.
    Incomplete,
}

/// The request body as the chunks were received (no copy), or why not. Stops reading at
/// `limit` (a chunked body over it is refused as soon as it passes the limit) and closes the
/// connection after a refusal, so the rest of the body is never read.
async fn read_body_chunks(
    s: &mut ServerSession,
    limit: usize,
) -> Result<Vec<bytes::Bytes>, BodyError> {
    let r = read_chunks(s, limit).await;
    if r.is_err() {
        s.set_keepalive(None);
    }
    r
}

async fn read_chunks(s: &mut ServerSession, limit: usize) -> Result<Vec<bytes::Bytes>, BodyError> {
    if declared_length(s) > limit {
        return Err(BodyError::TooLarge(limit));
    }
    let mut chunks = Vec::new();
    let mut total = 0usize;
    loop {
        match s.read_request_body().await {
            Ok(Some(chunk)) => {
                total += chunk.len();
                if total > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                chunks.push(chunk);
            }
            Ok(None) => return Ok(chunks),
            Err(_) => return Err(BodyError::Incomplete),
        }
    }
}

/// [`read_body_chunks`] in one buffer, for the small bodies of the other endpoints.
async fn read_body(s: &mut ServerSession) -> Result<Vec<u8>, BodyError> {
    Ok(read_body_chunks(s, MAX_SMALL_BODY_BYTES).await?.concat())
}

/// The request's `Content-Length`, 0 when absent or malformed.
fn declared_length(s: &ServerSession) -> usize {
    s.req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0)
}

fn body_refused(e: BodyError) -> Response<Vec<u8>> {
    match e {
        BodyError::TooLarge(limit) => json(
            413,
            serde_json::json!({ "error": format!("request body over {} KiB for this endpoint; send a smaller body", limit >> 10) }),
        ),
        BodyError::Incomplete => json(
            400,
            serde_json::json!({ "error": "the request body did not end cleanly (connection cut or bad chunking); nothing was applied" }),
        ),
    }
}

impl AdminApp {
    /// JSON view of the live state, also used by `floodgate status`.
    pub fn status_json(state: &AppState) -> serde_json::Value {
        let snap = state.snapshot();
        let upstreams: serde_json::Map<String, serde_json::Value> = snap
            .upstreams
            .iter()
            .map(|(name, u)| {
                let servers: Vec<serde_json::Value> = u
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        serde_json::json!({
                            "name": s.cfg.name, "addr": s.cfg.addr.to_string(), "backup": s.cfg.backup,
                            "healthy": s.state.is_healthy(), "drained": s.state.is_drained(),
                            "status": u.status(i).as_str(), "weight": u.weight(i),
                            "inflight": u.admission.inflight(i), "max_inflight": s.cfg.max_inflight,
                        })
                    })
                    .collect();
                (name.clone(), serde_json::json!({ "servers": servers, "queue_depth": u.admission.queue_depth() }))
            })
            .collect();
        let maps: serde_json::Map<String, serde_json::Value> = snap
            .maps
            .iter()
            .map(|(n, m)| (n.clone(), serde_json::json!({ "entries": m.len(), "bytes": m.content().heap_bytes(), "version": m.version, "source": m.source.as_str() })))
            .collect();
        serde_json::json!({
            "version": snap.version,
            "software": crate::VERSION,
            "pid": std::process::id(),
            "phase": state.current_phase().as_str(),
            "inflight": state.inflight.load(std::sync::atomic::Ordering::Relaxed),
            "upstreams": upstreams,
            "maps": maps,
            "last_reload": state.last_reload(),
            "policy": { "generation": snap.policy.generation, "last_error": state.policy.last_error() },
            "cache": { "entries": state.cache.stats().entries, "bytes": state.cache.stats().bytes, "shared_up": state.cache.shared_is_up() },
        })
    }

    /// Copies live state into the gauges right before a scrape.
    fn refresh_gauges(&self) {
        let st = &self.state;
        let snap = st.snapshot();
        let m = &st.metrics;
        for (name, u) in &snap.upstreams {
            m.queue_depth
                .with_label_values(&["upstream", name])
                .set(u.admission.queue_depth() as i64);
            for (i, s) in u.servers.iter().enumerate() {
                let labels = [name.as_str(), s.cfg.name.as_str()];
                m.upstream_inflight
                    .with_label_values(&labels)
                    .set(u.admission.inflight(i) as i64);
                m.upstream_healthy
                    .with_label_values(&labels)
                    .set(i64::from(u.is_usable(i)));
            }
        }
        for r in snap.routes.iter() {
            if let Some(limit) = &r.admission {
                m.queue_depth
                    .with_label_values(&["route", &r.name])
                    .set(limit.queue.queue_depth() as i64);
            }
        }
        let cs = st.cache.stats();
        m.cache_bytes
            .set(i64::try_from(cs.bytes).unwrap_or(i64::MAX));
        m.cache_entries
            .set(i64::try_from(cs.entries).unwrap_or(i64::MAX));
        // the cache counts its errors itself; the counter catches up at each scrape
        let seen = m.cache_shared_errors.get();
        m.cache_shared_errors
            .inc_by(cs.shared_errors.saturating_sub(seen));
        m.inflight_requests
            .set(st.inflight.load(std::sync::atomic::Ordering::Relaxed) as i64);
        mapsync::refresh_gauges(st);
    }

    /// `GET /upstreams[/NAME]`, `POST /upstreams/NAME/servers/SERVER/{disable,enable}`,
    /// `PUT /upstreams/NAME/servers/SERVER/weight` (body `N` or `N%`): the Runtime API's
    /// `show stat`, `disable|enable server` and `set weight`, in JSON.
    async fn upstreams(
        &self,
        s: &mut ServerSession,
        method: &str,
        rest: &str,
    ) -> Response<Vec<u8>> {
        let ups = self.state.snapshot().upstreams_in_order();
        let parts: Vec<String> = rest
            .split('/')
            .filter(|p| !p.is_empty())
            .map(percent_decode)
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        if let (&"GET", []) = (&method, parts.as_slice()) {
            let all: Vec<serde_json::Value> = ups.iter().map(|u| upstream_json(u)).collect();
            return json(200, serde_json::json!({ "upstreams": all }));
        }
        let Some(up) = parts
            .first()
            .and_then(|n| ups.iter().find(|u| u.name() == *n))
        else {
            let known: Vec<&str> = ups.iter().map(|u| u.name()).collect();
            return json(
                404,
                serde_json::json!({ "error": format!("no upstream named {:?}", parts.first().unwrap_or(&"")), "upstreams": known }),
            );
        };
        let server = match parts.get(1..3) {
            Some(["servers", name]) => match up.server_index(name) {
                Some(i) => Some(i),
                None => {
                    let known: Vec<&str> = up.servers.iter().map(|s| s.cfg.name.as_str()).collect();
                    return json(
                        404,
                        serde_json::json!({ "error": format!("upstream {} has no server {name:?}", up.name()), "servers": known }),
                    );
                }
            },
            _ => None,
        };
        let done = |i: usize| json(200, server_json(up, i));
        match (method, server, parts.get(3).copied(), parts.len()) {
            ("GET", None, None, 1) => json(200, upstream_json(up)),
            ("GET", Some(i), None, 3) => done(i),
            ("POST", Some(i), Some(op @ ("disable" | "enable")), 4) => {
                let disable = op == "disable";
                if up.set_disabled(i, disable) {
                    log::info!(
                        "admin: upstream {} server {} {op}d{}",
                        up.name(),
                        up.servers[i].cfg.name,
                        if disable {
                            " (MAINT): no new requests, those in flight finish"
                        } else {
                            ""
                        }
                    );
                }
                done(i)
            }
            ("PUT", Some(i), Some("state"), 4) => {
                let body = match read_body(s).await {
                    Ok(b) => b,
                    Err(e) => return body_refused(e),
                };
                let text = String::from_utf8_lossy(&body).trim().to_string();
                match crate::upstream::runtime::AdminState::parse(&text) {
                    Some(st) => {
                        if up.set_admin_state(i, st) {
                            log::info!(
                                "admin: upstream {} server {} is now {}",
                                up.name(),
                                up.servers[i].cfg.name,
                                up.status(i).as_str()
                            );
                        }
                        done(i)
                    }
                    None => json(
                        400,
                        serde_json::json!({ "error": format!("state {text:?}: send ready, drain or maint") }),
                    ),
                }
            }
            ("PUT", Some(i), Some("weight"), 4) => {
                let body = match read_body(s).await {
                    Ok(b) => b,
                    Err(e) => return body_refused(e),
                };
                let text = String::from_utf8_lossy(&body).trim().to_string();
                match crate::upstream::runtime::parse_weight(&text, up.servers[i].cfg.weight) {
                    Ok(w) => {
                        let old = up.set_weight(i, w);
                        if old != w {
                            log::info!(
                                "admin: upstream {} server {} weight {old} -> {w}",
                                up.name(),
                                up.servers[i].cfg.name
                            );
                        }
                        done(i)
                    }
                    Err(e) => json(
                        400,
                        serde_json::json!({ "error": format!("weight {text:?}: {e} Send N (0-256) or N% of the configured weight.") }),
                    ),
                }
            }
            _ => json(
                405,
                serde_json::json!({ "error": "use GET /upstreams[/NAME[/servers/SERVER]], POST /upstreams/NAME/servers/SERVER/disable|enable, PUT /upstreams/NAME/servers/SERVER/weight|state" }),
            ),
        }
    }

    async fn maps(&self, s: &mut ServerSession, method: &str, rest: &str) -> Response<Vec<u8>> {
        let mut parts = rest.splitn(3, '/');
        let name = parts.next().unwrap_or("").to_string();
        let sub = parts.next();
        let key = parts.next().map(percent_decode);
        let snap = self.state.snapshot();
        let Some(table) = snap.maps.get(&name).cloned() else {
            let known: Vec<&String> = snap.maps.keys().collect();
            return json(
                404,
                serde_json::json!({ "error": format!("no map named {name:?}"), "maps": known }),
            );
        };
        let done = |r: Result<u64, String>| match r {
            Ok(v) => json(200, serde_json::json!({ "map": name, "version": v })),
            Err(e) => json(400, serde_json::json!({ "error": e })),
        };
        match (method, sub, key) {
            ("GET", None, _) => {
                let entries: serde_json::Map<String, serde_json::Value> = table
                    .sorted()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                    .collect();
                let src = match &table.source {
                    MapSource::File(p) => p.display().to_string(),
                    MapSource::Poller(u) => u.clone(),
                    o => o.as_str().to_string(),
                };
                json(
                    200,
                    serde_json::json!({
                        "map": name, "version": table.version, "source": table.source.as_str(), "origin": src,
                        "updated_at": humantime::format_rfc3339_seconds(table.updated_at).to_string(),
                        "entries": entries,
                    }),
                )
            }
            ("PUT", None, _) => {
                let chunks = match read_body_chunks(s, MAX_MAP_BODY_BYTES).await {
                    Ok(c) => c,
                    Err(e) => return body_refused(e),
                };
                if chunks.iter().all(|c| {
                    c.split(|b| *b == b'\n').all(|line| {
                        line.trim_ascii().is_empty() || line.trim_ascii().starts_with(b"#")
                    })
                }) {
                    // why: an empty body (or one of comments only) is far more often a failed
                    // export than a wish to route nothing: emptying needs its own request.
                    return json(
                        400,
                        serde_json::json!({ "error": format!("the body has no entries, which would empty map {name}; to empty it on purpose send DELETE /maps/{name}/entries") }),
                    );
                }
                let st = self.state.clone();
                let n = name.clone();
                // why: parsing and indexing a large map is CPU work: keep it off the async
                // workers, in the idle CPU class; map text is parsed in the chunks as they
                // arrived (a 1M-entry map is ~30 MiB: no contiguous copy).
                let r = crate::maps::run_idle(move || {
                    let first = chunks
                        .iter()
                        .flat_map(|c| c.iter())
                        .find(|b| !b.is_ascii_whitespace());
                    let r = if matches!(first, Some(b'{') | Some(b'[')) {
                        let text = String::from_utf8_lossy(&chunks.concat()).into_owned();
                        crate::maps::parse_map_json(&text, "PUT body")
                            .map_err(|e| {
                                e.iter()
                                    .map(|x| x.to_string())
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .and_then(|m| {
                                mapsync::replace_map(&st, &n, m, MapSource::Api, Change::Whole)
                            })
                    } else {
                        mapsync::replace_map_chunks(&st, &n, &chunks, "PUT body", MapSource::Api)
                    };
                    crate::maps::reap(Box::new(chunks));
                    r
                })
                .await
                .unwrap_or_else(Err);
                done(r)
            }
            ("POST", Some("entries"), None) => {
                let body = match read_body(s).await {
                    Ok(b) => b,
                    Err(e) => return body_refused(e),
                };
                let text = String::from_utf8_lossy(&body).to_string();
                let errs = |e: Vec<crate::maps::MapError>| {
                    e.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let add =
                    if text.trim_start().starts_with('{') || text.trim_start().starts_with('[') {
                        crate::maps::parse_map_json(&text, "POST body").map_err(errs)
                    } else {
                        let allowed = |v: &str| {
                            crate::state::Snapshot::map_value_allowed(
                                &snap.config,
                                &snap.upstreams,
                                &name,
                                v,
                            )
                        };
                        crate::maps::parse_map_text_with(&text, "POST body", allowed)
                            .map(|c| c.to_entries())
                            .map_err(errs)
                    };
                match add {
                    Err(e) => json(400, serde_json::json!({ "error": e })),
                    Ok(add) => done(edit_map(&self.state, &name, add, None).await),
                }
            }
            ("DELETE", Some("entries"), Some(k)) => {
                if table.get(&k).is_none() {
                    return json(
                        404,
                        serde_json::json!({ "error": format!("no key {k:?} in map {name}") }),
                    );
                }
                done(edit_map(&self.state, &name, HashMap::new(), Some(k)).await)
            }
            ("DELETE", Some("entries"), None) => {
                let st = self.state.clone();
                let n = name.clone();
                let r = crate::maps::run_idle(move || {
                    mapsync::replace_map(&st, &n, HashMap::new(), MapSource::Api, Change::Whole)
                })
                .await
                .unwrap_or_else(Err);
                done(r)
            }
            _ => json(
                405,
                serde_json::json!({ "error": "use GET or PUT /maps/NAME, POST /maps/NAME/entries, DELETE /maps/NAME/entries/KEY, DELETE /maps/NAME/entries (empty the map)" }),
            ),
        }
    }
}

/// Applies an entry change (set `add`, remove `delete`) as a new version of the map, off the
/// async workers: copying a large map is O(entries).
async fn edit_map(
    state: &Arc<AppState>,
    name: &str,
    add: HashMap<String, String>,
    delete: Option<String>,
) -> Result<u64, String> {
    let (st, n) = (state.clone(), name.to_string());
    crate::maps::run_idle(move || {
        let del: Vec<&str> = delete.iter().map(String::as_str).collect();
        mapsync::edit_entries(&st, &n, &add, &del, MapSource::Api)
    })
    .await
    .unwrap_or_else(Err)
}

/// One server as `GET /upstreams` shows it (the `show stat` counters, named).
fn server_json(up: &Upstream, i: usize) -> serde_json::Value {
    let s = &up.servers[i];
    let c = &s.state.counters;
    let n = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
    serde_json::json!({
        "upstream": up.name(), "name": s.cfg.name, "addr": s.cfg.addr.to_string(), "backup": s.cfg.backup,
        "status": up.status(i).as_str(), "disabled": s.state.is_drained(), "healthy": s.state.is_healthy(),
        "weight": up.weight(i), "configured_weight": s.cfg.weight,
        "draining": up.is_draining(i), "effective_weight": up.effective_weight(i),
        "inflight": up.admission.inflight(i), "max_inflight_seen": n(&c.max_inflight), "max_inflight": s.cfg.max_inflight,
        "queued": n(&c.queued), "max_queued": n(&c.max_queued),
        "requests": c.total.load(Ordering::Relaxed), "connect_errors": c.connect_errors.load(Ordering::Relaxed),
        "seconds_since_change": c.seconds_since_change(),
    })
}

fn upstream_json(up: &Upstream) -> serde_json::Value {
    let servers: Vec<serde_json::Value> =
        (0..up.servers.len()).map(|i| server_json(up, i)).collect();
    serde_json::json!({
        "name": up.name(), "queue_depth": up.admission.queue_depth(), "inflight": up.admission.total_inflight(),
        "max_inflight_seen": up.max_inflight_seen.load(Ordering::Relaxed), "servers": servers,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.as_str().to_string();
        let path = s.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => return reply(200, "text/plain", "ok\n"),
            ("GET", "/readyz") => {
                let phase = self.state.current_phase();
                return if phase.is_ready() {
                    reply(200, "text/plain", "ready\n")
                } else {
                    reply(
                        503,
                        "text/plain",
                        format!("not ready: {}\n", phase.as_str()),
                    )
                };
            }
            ("GET", "/metrics") => {
                self.refresh_gauges();
                return reply(
                    200,
                    "text/plain; version=0.0.4",
                    self.state.metrics.encode(),
                );
            }
            _ => {}
        }
        if let Some(token) = &self.state.admin_token {
            let given = s
                .req_header()
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                self.state.metrics.admin_auth_failures.inc();
                let client = s.client_addr().map(|a| a.to_string()).unwrap_or_default();
                log::warn!(
                    "admin: refused {method} {path} from {client}: missing or wrong bearer token"
                );
                return json(
                    401,
                    serde_json::json!({ "error": "this endpoint needs Authorization: Bearer <token>" }),
                );
            }
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/status") => json(200, Self::status_json(&self.state)),
            ("POST", "/reload") => match crate::control::reload::reload(&self.state).await {
                Ok(r) => json(
                    200,
                    serde_json::json!({
                        "result": if r.policy_errors.is_empty() { "ok" } else { "ok_policy_refused" },
                        "version": r.version, "needs_restart": r.needs_restart, "policy_errors": r.policy_errors,
                    }),
                ),
                Err(errs) => json(
                    400,
                    serde_json::json!({ "result": "error", "kept_version": self.state.snapshot().version, "errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>() }),
                ),
            },
            (m, "/upstreams") => self.upstreams(s, m, "").await,
            (m, p) if p.starts_with("/upstreams/") => {
                let rest = p.trim_start_matches("/upstreams/").to_string();
                self.upstreams(s, m, &rest).await
            }
            (m, p) if p.starts_with("/maps/") => {
                let rest = p.trim_start_matches("/maps/").to_string();
                self.maps(s, m, &rest).await
            }
            ("DELETE", "/cache") => {
                let q = s.req_header().uri.query().unwrap_or("").to_string();
                let prefix = q
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("prefix="))
                    .map(percent_decode);
                let r = self.state.cache.purge(prefix.as_deref()).await;
                json(
                    200,
                    serde_json::json!({ "purged_memory": r.memory, "purged_shared": r.shared }),
                )
            }
            ("POST", "/policy/reload") => {
                let st = self.state.clone();
                match tokio::task::spawn_blocking(move || crate::control::policy::reload(&st)).await
                {
                    Ok(Ok(g)) => json(200, serde_json::json!({ "result": "ok", "generation": g })),
                    Ok(Err(e)) => json(
                        400,
                        serde_json::json!({ "result": "error", "generation": self.state.snapshot().policy.generation, "errors": e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>() }),
                    ),
                    Err(e) => json(500, serde_json::json!({ "error": e.to_string() })),
                }
            }
            (m @ ("PUT" | "DELETE" | "GET"), p) if p.starts_with("/policy/shared/") => {
                use crate::policy::SharedValue;
                let key = percent_decode(p.trim_start_matches("/policy/shared/"));
                let dict = self.state.policy.shared();
                match m {
                    "GET" => json(
                        200,
                        serde_json::json!({ "key": key, "value": format!("{:?}", dict.get(&key)) }),
                    ),
                    "DELETE" => {
                        dict.delete(&key);
                        json(200, serde_json::json!({ "key": key, "deleted": true }))
                    }
                    _ => {
                        let body = match read_body(s).await {
                            Ok(b) => b,
                            Err(e) => return body_refused(e),
                        };
                        let body = String::from_utf8_lossy(&body).trim().to_string();
                        let v = match body.as_str() {
                            "true" => SharedValue::Bool(true),
                            "false" => SharedValue::Bool(false),
                            b => match (b.parse::<i64>(), b.parse::<f64>()) {
                                (Ok(i), _) => SharedValue::Int(i),
                                (_, Ok(f)) => SharedValue::Num(f),
                                _ => SharedValue::Str(b.to_string()),
                            },
                        };
                        match dict.set(&key, v, None) {
                            Ok(()) => json(200, serde_json::json!({ "key": key, "set": body })),
                            Err(e) => json(409, serde_json::json!({ "error": e.to_string() })),
                        }
                    }
                }
            }
            ("GET", "/maps") => {
                let snap = self.state.snapshot();
                json(
                    200,
                    serde_json::json!({ "maps": snap.maps.keys().collect::<Vec<_>>() }),
                )
            }
            _ => json(
                404,
                serde_json::json!({ "error": format!("no admin endpoint {method} {path}"), "endpoints": ["GET /healthz", "GET /readyz", "GET /metrics", "GET /status", "POST /reload", "POST /policy/reload", "GET /upstreams[/NAME[/servers/SERVER]]", "POST /upstreams/NAME/servers/SERVER/disable|enable", "PUT /upstreams/NAME/servers/SERVER/weight|state", "GET|PUT /maps/NAME", "POST /maps/NAME/entries", "DELETE /maps/NAME/entries/KEY", "DELETE /maps/NAME/entries", "DELETE /cache[?prefix=]", "GET|PUT|DELETE /policy/shared/KEY"] }),
            ),
        }
    }
}
