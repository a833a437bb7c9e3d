//! The hot state: one immutable [`Snapshot`] behind one `ArcSwap` in [`AppState`].
//!
//! A request loads the snapshot once (in `new_ctx`) and keeps the `Arc` until it ends, so a
//! reload mid-request never mixes versions. Writers (config reload, map updates, policy
//! reloads) build a new snapshot off the request path, reusing every unchanged part, and swap
//! it in while holding [`AppState::writer`], so there is one writer at a time.

use crate::config::{Config, ConfigError, ConfigErrors, RouteTarget};
use crate::maps::{load_map_text, MapSource, MapTable};
use crate::metrics::Metrics;
use crate::routing::RouteTable;
use crate::shutdown::Phase;
use crate::upstream::admission::Admission;
use crate::upstream::{queue_settings, Upstream};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Everything a request needs, frozen.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every swap.
    pub version: u64,
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Per-route admission limits, by route name.
    pub route_admission: HashMap<String, Arc<Admission>>,
    pub maps: HashMap<String, Arc<MapTable>>,
    /// Some route has `cache:` (cache fills need Pingora subrequests).
    pub has_cache_routes: bool,
}

impl Snapshot {
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Upstreams in the config's order (by name): position + 1 is the Runtime API's `iid`.
    pub fn upstreams_in_order(&self) -> Vec<Arc<Upstream>> {
        self.config
            .upstreams
            .keys()
            .filter_map(|n| self.upstreams.get(n).cloned())
            .collect()
    }

    /// The values a map may hold: names (or addresses) of servers of every upstream that a
    /// route picks servers from through this map.
    pub fn map_value_allowed(
        config: &Config,
        upstreams: &HashMap<String, Arc<Upstream>>,
        map: &str,
        value: &str,
    ) -> bool {
        for r in &config.routes {
            if let (Some(ps), RouteTarget::Upstream(up)) = (&r.pick_server, &r.target) {
                if ps.map == map {
                    match upstreams.get(up) {
                        Some(u) if u.server_index(value).is_some() => {}
                        _ => return false,
                    }
                }
            }
        }
        true
    }

    /// Builds a snapshot from a validated config, reusing what `prev` already has: unchanged
    /// upstreams (same `Arc`, so queues and in-flight counts carry on), server health of kept
    /// servers, unchanged route limits, and the live content of maps whose file did not change.
    pub fn build(
        config: Config,
        prev: Option<&Snapshot>,
        version: u64,
    ) -> Result<Snapshot, ConfigErrors> {
        let mut errors = Vec::new();
        let mut upstreams = HashMap::new();
        for (name, cfg) in &config.upstreams {
            let old = prev.and_then(|p| p.upstreams.get(name));
            let up = match old {
                Some(o) if o.cfg == *cfg => o.clone(),
                _ => {
                    let old_state = |s: &crate::config::ServerConfig| {
                        old.and_then(|o| {
                            o.servers
                                .iter()
                                .find(|os| os.cfg.name == s.name && os.cfg.addr == s.addr)
                                .map(|os| os.state.clone())
                        })
                    };
                    Arc::new(Upstream::build(cfg, &old_state))
                }
            };
            upstreams.insert(name.clone(), up);
        }
        let mut route_admission = HashMap::new();
        for r in &config.routes {
            if let Some(a) = &r.admission {
                let prev_route = prev.and_then(|p| p.routes.get(&r.name));
                let reuse = prev_route
                    .filter(|pr| pr.admission.as_ref() == Some(a))
                    .and_then(|_| prev.and_then(|p| p.route_admission.get(&r.name)).cloned());
                let adm = reuse.unwrap_or_else(|| {
                    Admission::new(vec![Some(a.max_inflight)], queue_settings(&a.queue))
                });
                route_admission.insert(r.name.clone(), adm);
            }
        }
        let mut maps = HashMap::new();
        for (name, mc) in &config.maps {
            let kept = prev.and_then(|p| {
                let same = p.config.maps.get(name) == Some(mc);
                if same {
                    p.maps.get(name).cloned()
                } else {
                    None
                }
            });
            if let Some(t) = kept {
                maps.insert(name.clone(), t);
                continue;
            }
            let table = match &mc.file {
                None => MapTable::empty(),
                Some(f) => match std::fs::read_to_string(f) {
                    Err(e) if mc.source.is_some() && e.kind() == std::io::ErrorKind::NotFound => {
                        MapTable::empty()
                    }
                    Err(e) => {
                        errors.push(ConfigError {
                            file: config.file.display().to_string(),
                            path: format!("maps.{name}.file"),
                            message: format!("cannot read {}: {e}; create the file (an empty file is a valid map)", f.display()),
                        });
                        continue;
                    }
                    Ok(text) => {
                        let allowed =
                            |v: &str| Snapshot::map_value_allowed(&config, &upstreams, name, v);
                        let origin = f.display().to_string();
                        match load_map_text(&text, &origin, allowed, None, mc.policy) {
                            Ok(loaded) => {
                                crate::mapsync::log_warnings(name, &loaded.warnings);
                                MapTable::from_content(
                                    loaded.content,
                                    1,
                                    MapSource::File(f.clone()),
                                )
                            }
                            Err(errs) => {
                                for e in errs {
                                    errors.push(ConfigError {
                                        file: config.file.display().to_string(),
                                        path: format!("maps.{name}"),
                                        message: e.to_string(),
                                    });
                                }
                                continue;
                            }
                        }
                    }
                },
            };
            maps.insert(name.clone(), Arc::new(table));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Snapshot {
            version,
            has_cache_routes: config.routes.iter().any(|r| r.cache.is_some()),
            routes: RouteTable::new(&config.routes),
            config: Arc::new(config),
            upstreams,
            route_admission,
            maps,
        })
    }

    /// A copy with one map replaced (everything else shared).
    pub fn with_map(&self, name: &str, table: Arc<MapTable>, version: u64) -> Snapshot {
        let mut maps = self.maps.clone();
        maps.insert(name.to_string(), table);
        Snapshot {
            version,
            config: self.config.clone(),
            routes: RouteTable::new(&self.config.routes),
            upstreams: self.upstreams.clone(),
            route_admission: self.route_admission.clone(),
            maps,
            has_cache_routes: self.has_cache_routes,
        }
    }
}

/// Process-wide state shared by the proxy, the admin API and background tasks.
pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub config_path: PathBuf,
    /// One writer at a time for snapshot changes.
    pub writer: parking_lot::Mutex<()>,
    pub phase: tokio::sync::watch::Sender<Phase>,
    /// Requests being handled now (for draining).
    pub inflight: AtomicUsize,
    next_version: AtomicU64,
    /// Bearer token for the admin API (read from the environment at start).
    pub admin_token: Option<String>,
    /// Last reload outcome, for `/status`.
    pub last_reload: parking_lot::Mutex<Option<String>>,
    /// The Lua policy engine (no hooks when no scripts are configured).
    pub policy: Arc<crate::policy::PolicyEngine>,
    /// The response cache (memory, and Redis/Valkey when configured).
    pub cache: crate::cache::ResponseCache,
    /// Key for hashing credentials into cache keys (same on every gateway sharing a Redis).
    pub cache_secret: Vec<u8>,
}

impl AppState {
    pub fn new(
        snapshot: Snapshot,
        config_path: PathBuf,
        policy: Arc<crate::policy::PolicyEngine>,
        cache: crate::cache::ResponseCache,
    ) -> Arc<AppState> {
        let admin_token = snapshot
            .config
            .admin
            .token_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .filter(|t| !t.is_empty());
        let (phase, _) = tokio::sync::watch::channel(Phase::Starting);
        let v = snapshot.version;
        let state = Arc::new(AppState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics: Metrics::new(),
            config_path,
            writer: parking_lot::Mutex::new(()),
            phase,
            inflight: AtomicUsize::new(0),
            next_version: AtomicU64::new(v + 1),
            admin_token,
            last_reload: parking_lot::Mutex::new(None),
            policy,
            cache,
            cache_secret: std::env::var("FLOODGATE_CACHE_SECRET")
                .unwrap_or_else(|_| "floodgate-default-cache-key".into())
                .into_bytes(),
        });
        state.preset_metrics();
        state
    }

    /// The current snapshot (one atomic load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Hands out the next snapshot version.
    pub fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    /// Swaps in a new snapshot. Callers hold [`AppState::writer`].
    pub fn publish(&self, s: Snapshot) {
        self.snapshot.store(Arc::new(s));
    }

    /// Creates the counter series the current config and policy imply, at 0
    /// ([`Metrics::preset`]).
    pub fn preset_metrics(&self) {
        let policy = &self.policy;
        self.metrics
            .preset(&self.snapshot(), &|h| policy.has_hook(h));
    }

    pub fn current_phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
        for ph in Phase::ALL {
            self.metrics
                .phase
                .with_label_values(&[ph.as_str()])
                .set(i64::from(ph == p));
        }
    }
}

impl crate::runtime_api::UpstreamStore for AppState {
    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.snapshot().upstreams_in_order()
    }
}
