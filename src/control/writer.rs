//! The one writer: the only code that publishes a [`Snapshot`]. Every trigger (SIGHUP, the
//! admin API, the Runtime API socket, map file watchers, map pollers, the script watcher)
//! becomes one [`Change`], applied under one lock: read the files it needs, build (pure,
//! reusing unchanged parts), swap. On failure the running snapshot stays and the caller gets
//! every error. A change reads the current snapshot under the lock, so concurrent changes
//! compose (none is lost) and each publishes exactly one new version.

use super::inputs::{read_map_files, read_scripts, settings, to_config_errors};
use crate::config::{load_config, Config, ConfigErrors, PolicyConfig};
use crate::maps::{
    rewrite_map_file, write_atomic, MapContent, MapError, MapSource, MapTable, OnUnknownValue,
};
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, PolicyEngine};
use crate::state::snapshot::{Inputs, Snapshot};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// One change of the hot state.
pub enum Change<'a> {
    /// Re-read the config file and everything it names (map files whose config changed, the
    /// Lua scripts), rebuild, swap. Socket-bound sections keep their running values.
    ConfigReload,
    /// New content for one map, or entries set and removed.
    MapEdit {
        map: String,
        edit: MapEdit,
        /// Who asked (counted and logged; API sources are persisted with `persist: true`).
        source: MapSource,
        /// Checked under the lock: when it says the input is stale (a map file rewritten
        /// since it was read), nothing is applied and the running version is returned.
        still_current: Option<&'a dyn Fn() -> bool>,
    },
    /// Re-read and recompile the running config's Lua scripts.
    PolicyReload,
}

/// What a [`Change::MapEdit`] does to the map.
pub enum MapEdit {
    /// Replace the whole content. Entries whose value names no server follow `unknown`
    /// (`None`: the map's `on_unknown_value`).
    Replace {
        content: MapContent,
        unknown: Option<OnUnknownValue>,
    },
    /// Set `set` and remove `delete` on the live content (strict: values must name servers).
    Entries {
        set: HashMap<String, String>,
        delete: Vec<String>,
    },
}

/// What a successful config reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadReport {
    pub version: u64,
    /// Settings that changed in the file but only take effect after a restart.
    pub needs_restart: Vec<String>,
    /// Errors of the Lua scripts, which were refused (the last good policy keeps running).
    pub policy_errors: Vec<String>,
}

/// What an applied change did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Config(ReloadReport),
    /// The map's version now (unchanged when the content was the same).
    Map {
        version: u64,
    },
    /// The policy generation now live.
    Policy {
        generation: u64,
    },
}

/// Why a change was refused; the running snapshot stays.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{0}")]
    Map(String),
    #[error("{0}")]
    Policy(ConfigErrors),
}

/// Settings bound to sockets and threads; they are not changed by a reload.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    if old.listeners != new.listeners {
        v.push("listeners".to_string());
    }
    if old.server != new.server {
        v.push("server".to_string());
    }
    if old.admin != new.admin {
        v.push("admin".to_string());
    }
    if old.cache != new.cache {
        v.push("cache".to_string());
    }
    v
}

/// Most policy warnings logged for one map load (the rest are counted in one line).
const MAX_LOGGED_WARNINGS: usize = 20;

/// Logs what a map's policy tolerated (duplicate keys, skipped entries), one line each.
pub fn log_warnings(map: &str, warnings: &[MapError]) {
    for w in warnings.iter().take(MAX_LOGGED_WARNINGS) {
        log::warn!("map {map}: {w}");
    }
    if warnings.len() > MAX_LOGGED_WARNINGS {
        log::warn!(
            "map {map}: {} more warning(s) not shown",
            warnings.len() - MAX_LOGGED_WARNINGS
        );
    }
}

/// Reads the scripts of `p` and compiles them as `generation`.
pub fn compile_policy(
    engine: &PolicyEngine,
    p: Option<&PolicyConfig>,
    file: &str,
    generation: u64,
) -> Result<Arc<CompiledPolicy>, ConfigErrors> {
    let scripts = read_scripts(p, file)?;
    engine
        .compile(generation, scripts, &settings(p))
        .map_err(|e| to_config_errors(file, e))
}

/// The first snapshot of a config (version 1): reads its map files and builds on `policy`,
/// with the metric handles of its routes and upstreams made in `metrics`.
pub fn first_snapshot(
    config: Config,
    policy: Arc<CompiledPolicy>,
    metrics: &Arc<Metrics>,
) -> Result<Snapshot, ConfigErrors> {
    let map_files = read_map_files(&config, None);
    let inputs = Inputs {
        map_files,
        policy,
        metrics: metrics.clone(),
    };
    let built = Snapshot::build(config, inputs, None, 1)?;
    log_all_warnings(built.warnings);
    Ok(built.snapshot)
}

fn log_all_warnings(warnings: Vec<(String, MapError)>) {
    let mut by_map: HashMap<String, Vec<MapError>> = HashMap::new();
    for (m, w) in warnings {
        by_map.entry(m).or_default().push(w);
    }
    for (m, ws) in by_map {
        log_warnings(&m, &ws);
    }
}

/// What a published snapshot changed, for [`Writer::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    /// A config reload: everything may have changed (the policy too).
    Config,
    /// Another policy generation, on the same config.
    Policy,
    /// One map's content, on the same config and policy.
    Map,
}

/// The current snapshot and the only way to replace it. See the module docs.
pub struct Writer {
    current: ArcSwap<Snapshot>,
    /// Held for the whole of a change: reads, build, swap.
    lock: Mutex<()>,
    config_path: PathBuf,
    engine: Arc<PolicyEngine>,
    metrics: Arc<Metrics>,
    /// Last config reload outcome, for `/status`.
    last_reload: Mutex<Option<String>>,
}

impl Writer {
    pub fn new(
        first: Snapshot,
        config_path: PathBuf,
        engine: Arc<PolicyEngine>,
        metrics: Arc<Metrics>,
    ) -> Writer {
        Writer {
            current: ArcSwap::from_pointee(first),
            lock: Mutex::new(()),
            config_path,
            engine,
            metrics,
            last_reload: Mutex::new(None),
        }
    }

    /// The current snapshot (one atomic load).
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The last config reload's outcome (`ok: version N` or `error: N`).
    pub fn last_reload(&self) -> Option<String> {
        self.last_reload.lock().clone()
    }

    /// Applies `change` under the writer lock. Blocking (file reads, Lua compilation):
    /// callers on the async runtime use `spawn_blocking` or the idle pool.
    pub fn apply(&self, change: Change<'_>) -> Result<Applied, Refused> {
        let _one_writer = self.lock.lock();
        let prev = self.current.load_full();
        match change {
            Change::ConfigReload => self
                .reload_config(&prev)
                .map(Applied::Config)
                .map_err(Refused::Config),
            Change::PolicyReload => self
                .reload_policy(&prev)
                .map(|generation| Applied::Policy { generation })
                .map_err(Refused::Policy),
            Change::MapEdit {
                map,
                edit,
                source,
                still_current,
            } => {
                if still_current.is_some_and(|current| !current()) {
                    log::debug!(
                        "map {map}: the file changed while it was read; the next poll reads it"
                    );
                    return Ok(Applied::Map {
                        version: prev.maps.get(&map).map_or(0, |t| t.version),
                    });
                }
                self.edit_map(&prev, &map, edit, source)
                    .map(|version| Applied::Map { version })
                    .map_err(Refused::Map)
            }
        }
    }

    /// Called only from [`Self::apply`], under the lock.
    /// Swaps the snapshot in and creates at 0 the counter series that changed with it implies:
    /// those of its routes and upstreams were made with their handles when it was built;
    /// map update series follow a new config ([`Metrics::preset_config`]), policy run series a
    /// new policy ([`Metrics::preset_policy`]). A map edit changes neither, so it presets
    /// nothing: its cost does not grow with the config.
    fn publish(&self, next: Snapshot, changed: Published) {
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        if changed == Published::Config {
            self.metrics.preset_config(&next.config);
        }
        if changed != Published::Map {
            self.metrics.preset_policy(&|h| next.policy.has_hook(h));
        }
    }

    fn reload_config(&self, prev: &Snapshot) -> Result<ReloadReport, ConfigErrors> {
        let outcome = load_config(&self.config_path).and_then(|mut cfg| {
            let needs_restart = restart_only_changes(&prev.config, &cfg);
            // why: socket-bound settings keep their running values, so the snapshot always
            // describes what the process really does
            cfg.listeners = prev.config.listeners.clone();
            cfg.server = prev.config.server.clone();
            cfg.admin = prev.config.admin.clone();
            cfg.cache = prev.config.cache.clone();
            let file = cfg.file.display().to_string();
            // A broken script keeps the running policy; the config itself is still applied.
            let compiled = (prev.config.policy != cfg.policy || cfg.policy.is_some()).then(|| {
                compile_policy(
                    &self.engine,
                    cfg.policy.as_ref(),
                    &file,
                    prev.policy.generation + 1,
                )
            });
            let policy = match &compiled {
                Some(Ok(p)) => p.clone(),
                _ => prev.policy.clone(),
            };
            let map_files = read_map_files(&cfg, Some(prev));
            let inputs = Inputs {
                map_files,
                policy,
                metrics: self.metrics.clone(),
            };
            let built = Snapshot::build(cfg, inputs, Some(prev), prev.version + 1)?;
            Ok((built, needs_restart, compiled))
        });
        match outcome {
            Ok((built, needs_restart, compiled)) => {
                let version = built.snapshot.version;
                log_all_warnings(built.warnings);
                // why: as HAProxy without a server-state-file, a reload forgets runtime
                // changes (disable server, set weight): the file says what the servers are
                for up in built.snapshot.upstreams.values() {
                    up.reset_runtime();
                }
                self.publish(built.snapshot, Published::Config);
                let policy_errors = match compiled {
                    Some(Err(e)) => {
                        self.count_policy(Err(&e));
                        e.0.iter().map(|x| x.to_string()).collect()
                    }
                    Some(Ok(p)) => {
                        self.count_policy(Ok(p.generation));
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                self.metrics
                    .reloads
                    .with_label_values(&["config", "ok"])
                    .inc();
                if needs_restart.is_empty() {
                    log::info!("reload: config version {version} is live");
                } else {
                    log::warn!("reload: config version {version} is live; changes to {} need a restart to take effect", needs_restart.join(", "));
                }
                *self.last_reload.lock() = Some(format!("ok: version {version}"));
                Ok(ReloadReport {
                    version,
                    needs_restart,
                    policy_errors,
                })
            }
            Err(errs) => {
                self.metrics
                    .reloads
                    .with_label_values(&["config", "error"])
                    .inc();
                log::error!("reload refused, keeping version {}:\n{errs}", prev.version);
                *self.last_reload.lock() = Some(format!("error: {}", errs.0.len()));
                Err(errs)
            }
        }
    }

    fn reload_policy(&self, prev: &Snapshot) -> Result<u64, ConfigErrors> {
        let file = prev.config.file.display().to_string();
        let r = compile_policy(
            &self.engine,
            prev.config.policy.as_ref(),
            &file,
            prev.policy.generation + 1,
        );
        match r {
            Ok(compiled) => {
                let generation = compiled.generation;
                self.publish(
                    prev.with_policy(compiled, prev.version + 1),
                    Published::Policy,
                );
                self.count_policy(Ok(generation));
                Ok(generation)
            }
            Err(e) => {
                self.count_policy(Err(&e));
                Err(e)
            }
        }
    }

    fn count_policy(&self, r: Result<u64, &ConfigErrors>) {
        let m = &self.metrics;
        match r {
            Ok(g) => {
                m.policy_reloads.with_label_values(&["ok"]).inc();
                m.policy_version.set(i64::try_from(g).unwrap_or(i64::MAX));
                log::info!("policy: generation {g} is live");
            }
            Err(e) => {
                m.policy_reloads.with_label_values(&["error"]).inc();
                log::error!("policy reload refused, the last good version keeps running:\n{e}");
            }
        }
    }

    /// Counts one map update by source and result.
    pub(super) fn count_map(metrics: &Metrics, name: &str, source: &MapSource, result: &str) {
        metrics
            .map_updates
            .with_label_values(&[name, source.as_str(), result])
            .inc();
    }

    /// Validates the new content of `name` against `prev` (each distinct value once), then
    /// publishes a snapshot that differs only in this map, as one new version. With unknown
    /// values `Skip` entries naming no server are left out (logged); with `Error` the content
    /// is refused. Unchanged content keeps the current version.
    fn edit_map(
        &self,
        prev: &Snapshot,
        name: &str,
        edit: MapEdit,
        source: MapSource,
    ) -> Result<u64, String> {
        let Some(mc) = prev.config.maps.get(name) else {
            return Err(format!("no map named {name:?}"));
        };
        let count = |result: &str| Self::count_map(&self.metrics, name, &source, result);
        let (mut content, unknown) = match edit {
            MapEdit::Replace { content, unknown } => {
                (content, unknown.unwrap_or(mc.policy.on_unknown_value))
            }
            MapEdit::Entries { set, delete } => {
                let Some(cur) = prev.maps.get(name) else {
                    return Err(format!("no map named {name:?}"));
                };
                let del: Vec<&str> = delete.iter().map(String::as_str).collect();
                let content = cur.content().edited(&set, &del).map_err(|e| {
                    count("error");
                    format!("refused: {e}")
                })?;
                (content, OnUnknownValue::Error)
            }
        };
        let allowed = |v: &str| Snapshot::map_value_allowed(&prev.config, &prev.upstreams, name, v);
        if unknown == OnUnknownValue::Skip && content.distinct_values().any(|v| !allowed(v)) {
            // Rare path: copy the valid entries; name the skipped ones (sorted, a few).
            let mut skipped: Vec<String> = Vec::new();
            let kept: HashMap<String, String> = content
                .iter()
                .filter(|(k, v)| {
                    let ok = allowed(v);
                    if !ok {
                        skipped.push(format!("{k:?} -> {v:?}"));
                    }
                    ok
                })
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            skipped.sort();
            log::warn!(
                "map {name}: {} entr(ies) from {} name no server and are skipped (on_unknown_value: skip): {}",
                skipped.len(),
                source.as_str(),
                skipped.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
            content = MapContent::from_entries(kept).map_err(|e| format!("refused: {e}"))?;
        }
        if content.distinct_values().any(|v| !allowed(v)) {
            // Rare path: name the entries (a few, sorted) so the caller can fix them.
            let mut bad: Vec<String> = content
                .iter()
                .filter(|(_, v)| !allowed(v))
                .map(|(k, v)| format!("{k:?} -> {v:?}"))
                .collect();
            bad.sort();
            bad.truncate(5);
            count("error");
            return Err(format!(
                "refused: these values name no server of the routed upstream: {}",
                bad.join(", ")
            ));
        }
        if let Some(cur) = prev.maps.get(name) {
            if cur.content().same_as(&content) {
                return Ok(cur.version);
            }
        }
        // why: the map's version is the snapshot's, so one edit is one version
        let version = prev.version + 1;
        let persist_api =
            mc.persist && !matches!(source, MapSource::File(_) | MapSource::Poller(_));
        let table = Arc::new(MapTable::from_content(content, version, source.clone()));
        if persist_api {
            if let Some(f) = &mc.file {
                // Rewrite only the lines this change touched: the file's comments and layout stay.
                let text = match std::fs::read_to_string(f) {
                    Ok(old) => rewrite_map_file(
                        &old,
                        prev.maps.get(name).map(|t| t.content()),
                        table.content(),
                        mc.policy.on_duplicate,
                    ),
                    Err(_) => table.to_map_text(),
                };
                if let Err(e) = write_atomic(f, &text) {
                    count("error");
                    return Err(format!(
                        "could not persist to {}: {e}; the map was not changed",
                        f.display()
                    ));
                }
            }
        }
        self.publish(prev.with_map(name, table.clone(), version), Published::Map);
        count("ok");
        let m = &self.metrics;
        m.map_entries
            .with_label_values(&[name])
            .set(table.len() as i64);
        let ts = table
            .updated_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        m.map_last_update.with_label_values(&[name]).set(ts);
        log::info!(
            "map {name}: version {version} from {} ({} entries)",
            source.as_str(),
            table.len()
        );
        Ok(version)
    }
}
