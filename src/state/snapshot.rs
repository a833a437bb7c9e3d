//! The one immutable [`Snapshot`]: everything a request reads (routes, upstreams, route
//! admissions, maps, the compiled policy), frozen. A request loads it once (in `new_ctx`) and
//! keeps the `Arc` until it ends, so a change mid-request never mixes versions: not of the
//! config, not of a map, not of the policy.
//!
//! [`Snapshot::build`] is pure: the files it needs (map files) are read beforehand by the
//! control plane (`crate::control`) and passed in as [`Inputs`], with the compiled policy.

use super::route::Route;
use crate::config::{Config, ConfigError, ConfigErrors, RouteTarget};
use crate::maps::{load_map_text, MapError, MapSource, MapTable};
use crate::metrics::Metrics;
use crate::policy::CompiledPolicy;
use crate::routing::RouteTable;
use crate::upstream::Upstream;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything a request needs, frozen.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published change.
    pub version: u64,
    pub config: Arc<Config>,
    /// The routes in matching order, each resolved to its upstream (one of `upstreams`),
    /// its admission queue and its metric handles.
    pub routes: RouteTable<Arc<Route>>,
    /// By name: for a policy's choice, health checks, the admin and Runtime APIs.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub maps: HashMap<String, Arc<MapTable>>,
    /// The Lua scripts every hook of a request runs (one generation per request).
    pub policy: Arc<CompiledPolicy>,
    /// Some route has `cache:` (cache fills need Pingora subrequests).
    pub has_cache_routes: bool,
}

/// What reading a map file gave, before the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapFile {
    Text(String),
    /// The read failed; `missing` when the file does not exist (a map with a `source:` then
    /// starts empty and its poller fills it).
    Unreadable {
        missing: bool,
        error: String,
    },
}

/// What [`Snapshot::build`] needs besides the config, read or compiled beforehand.
#[derive(Debug)]
pub struct Inputs {
    /// The files [`Snapshot::map_files_needed`] named, by map name.
    pub map_files: HashMap<String, MapFile>,
    /// The policy the new snapshot runs.
    pub policy: Arc<CompiledPolicy>,
    /// Where the metric handles of routes and upstreams are made.
    pub metrics: Arc<Metrics>,
}

/// A built snapshot and what its maps' policies tolerated (to be logged by the caller).
#[derive(Debug)]
pub struct Built {
    pub snapshot: Snapshot,
    /// `(map, warning)`: duplicate keys kept or dropped, entries skipped.
    pub warnings: Vec<(String, MapError)>,
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

    /// The live table `prev` can lend to a build from `config`: the map's config is unchanged.
    fn kept_map(config: &Config, prev: Option<&Snapshot>, name: &str) -> Option<Arc<MapTable>> {
        let p = prev?;
        if p.config.maps.get(name) == config.maps.get(name) {
            p.maps.get(name).cloned()
        } else {
            None
        }
    }

    /// The map files a build of `config` on top of `prev` reads: those of maps whose config
    /// changed (or all, without `prev`). The caller reads them into [`Inputs::map_files`].
    pub fn map_files_needed(config: &Config, prev: Option<&Snapshot>) -> Vec<(String, PathBuf)> {
        config
            .maps
            .iter()
            .filter(|(name, _)| Self::kept_map(config, prev, name).is_none())
            .filter_map(|(name, mc)| mc.file.clone().map(|f| (name.clone(), f)))
            .collect()
    }

    /// Builds a snapshot from a validated config and its [`Inputs`], reusing what `prev`
    /// already has: unchanged upstreams (same `Arc`, so queues and in-flight counts carry on),
    /// server health of kept servers, unchanged route limits, and the live content of maps
    /// whose config did not change. Routes are resolved to this snapshot's upstreams. Pure:
    /// no I/O (the files were read into `inputs`); it makes the metric handles of new routes
    /// and upstreams (which shows their config-implied series at 0).
    pub fn build(
        config: Config,
        inputs: Inputs,
        prev: Option<&Snapshot>,
        version: u64,
    ) -> Result<Built, ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
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
                    Arc::new(Upstream::build(cfg, &old_state, &inputs.metrics))
                }
            };
            upstreams.insert(name.clone(), up);
        }
        let file = config.file.display().to_string();
        let mut maps = HashMap::new();
        for (name, mc) in &config.maps {
            if let Some(t) = Self::kept_map(&config, prev, name) {
                maps.insert(name.clone(), t);
                continue;
            }
            let Some(f) = &mc.file else {
                maps.insert(name.clone(), Arc::new(MapTable::empty()));
                continue;
            };
            let unread = MapFile::Unreadable {
                missing: false,
                error: "not read before the build".into(),
            };
            match inputs.map_files.get(name).unwrap_or(&unread) {
                MapFile::Unreadable { missing: true, .. } if mc.source.is_some() => {
                    maps.insert(name.clone(), Arc::new(MapTable::empty()));
                }
                MapFile::Unreadable { error, .. } => errors.push(ConfigError {
                    file: file.clone(),
                    path: format!("maps.{name}.file"),
                    message: format!(
                        "cannot read {}: {error}; create the file (an empty file is a valid map)",
                        f.display()
                    ),
                }),
                MapFile::Text(text) => {
                    let allowed = |v: &str| Self::map_value_allowed(&config, &upstreams, name, v);
                    let origin = f.display().to_string();
                    match load_map_text(text, &origin, allowed, None, mc.policy) {
                        Ok(loaded) => {
                            warnings.extend(loaded.warnings.into_iter().map(|w| (name.clone(), w)));
                            let table = MapTable::from_content(
                                loaded.content,
                                version,
                                MapSource::File(f.clone()),
                            );
                            maps.insert(name.clone(), Arc::new(table));
                        }
                        Err(errs) => errors.extend(errs.into_iter().map(|e| ConfigError {
                            file: file.clone(),
                            path: format!("maps.{name}"),
                            message: e.to_string(),
                        })),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // (after the maps: a refused build makes no route handles, so no series)
        let prev_routes: HashMap<&str, &Route> = prev
            .map(|p| p.routes.iter().map(|r| (r.name.as_str(), &**r)).collect())
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let prev_route = prev_routes.get(r.name.as_str()).copied();
            match Route::resolve(i, r, &upstreams, prev_route, &inputs.metrics) {
                Ok(route) => routes.push(Arc::new(route)),
                Err(e) => errors.push(ConfigError {
                    file: file.clone(),
                    path: e.path,
                    message: format!(
                        "{:?} is not a defined upstream (defined: {})",
                        e.upstream,
                        config
                            .upstreams
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let snapshot = Snapshot {
            version,
            has_cache_routes: config.routes.iter().any(|r| r.cache.is_some()),
            routes: RouteTable::from_entries(routes),
            config: Arc::new(config),
            upstreams,
            maps,
            policy: inputs.policy,
        };
        Ok(Built { snapshot, warnings })
    }

    /// A copy with one map replaced (everything else shared).
    pub fn with_map(&self, name: &str, table: Arc<MapTable>, version: u64) -> Snapshot {
        let mut maps = self.maps.clone();
        maps.insert(name.to_string(), table);
        Snapshot {
            maps,
            ..self.copy(version)
        }
    }

    /// A copy running another policy generation (everything else shared).
    pub fn with_policy(&self, policy: Arc<CompiledPolicy>, version: u64) -> Snapshot {
        Snapshot {
            policy,
            ..self.copy(version)
        }
    }

    fn copy(&self, version: u64) -> Snapshot {
        Snapshot {
            version,
            config: self.config.clone(),
            routes: self.routes.clone(),
            upstreams: self.upstreams.clone(),
            maps: self.maps.clone(),
            policy: self.policy.clone(),
            has_cache_routes: self.has_cache_routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::policy::{PolicyEngine, PolicySettings};
    use std::path::Path;

    /// A config whose map file does not exist: a build that read files would fail.
    fn config(map_extra: &str) -> Config {
        let yaml = format!(
            r#"
listeners: [{{ bind: "127.0.0.1:8080" }}]
upstreams:
  puppet: {{ servers: [{{ name: m1, addr: "127.0.0.1:9001" }}, {{ name: m2, addr: "127.0.0.1:9002" }}] }}
maps:
  nodes: {{ file: /nonexistent/floodgate/nodes.map{map_extra} }}
routes:
  - {{ name: puppet, match: {{ path_prefix: / }}, upstream: puppet, admission: {{ max_inflight: 4 }}, pick_server: {{ map: nodes, key: "header:X-Node-Name", on_miss: balance }} }}
"#
        );
        parse_config(&yaml, Path::new("/nonexistent/floodgate/t.yaml")).unwrap()
    }

    fn policy(generation: u64) -> Arc<CompiledPolicy> {
        PolicyEngine::new(100)
            .compile(generation, Vec::new(), &PolicySettings::default())
            .unwrap()
    }

    fn inputs(map_files: &[(&str, MapFile)], generation: u64) -> Inputs {
        Inputs {
            map_files: map_files
                .iter()
                .map(|(n, f)| (n.to_string(), f.clone()))
                .collect(),
            policy: policy(generation),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn text(t: &str) -> MapFile {
        MapFile::Text(t.to_string())
    }

    #[test]
    fn map_contents_come_from_the_inputs_not_the_disk() {
        let cfg = config("");
        assert_eq!(
            Snapshot::map_files_needed(&cfg, None),
            vec![(
                "nodes".to_string(),
                PathBuf::from("/nonexistent/floodgate/nodes.map")
            )],
            "a first build needs every map file"
        );
        let built = Snapshot::build(cfg, inputs(&[("nodes", text("n1 m1\n"))], 1), None, 7)
            .expect("builds from the given text although the file does not exist");
        let s = built.snapshot;
        assert_eq!(s.version, 7);
        assert_eq!(s.maps["nodes"].get("n1"), Some("m1"));
        assert_eq!(
            s.maps["nodes"].version, 7,
            "a built map has the snapshot's version"
        );
        assert!(s.routes.get("puppet").unwrap().admission.is_some());
    }

    #[test]
    fn map_values_are_checked_against_the_routed_upstream_with_the_key_named() {
        let strict = config(", on_unknown_value: error");
        let err = Snapshot::build(strict, inputs(&[("nodes", text("n1 m9\n"))], 1), None, 1)
            .expect_err("m9 is no server of puppet");
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].path, "maps.nodes");
        assert!(err.0[0].message.contains("m9"), "{err}");
        let skip = Snapshot::build(
            config(""),
            inputs(&[("nodes", text("n1 m9\n"))], 1),
            None,
            1,
        )
        .expect("skip (the default) leaves the entry out");
        assert_eq!(skip.snapshot.maps["nodes"].get("n1"), None);
        assert_eq!(skip.warnings.len(), 1, "and says so: {:?}", skip.warnings);
    }

    #[test]
    fn an_unreadable_map_file_is_an_error_unless_missing_with_a_source() {
        let missing = MapFile::Unreadable {
            missing: true,
            error: "No such file or directory (os error 2)".into(),
        };
        let err = Snapshot::build(
            config(""),
            inputs(&[("nodes", missing.clone())], 1),
            None,
            1,
        )
        .expect_err("no source fills it");
        assert_eq!(err.0[0].path, "maps.nodes.file");
        assert!(
            err.0[0].message.contains("create the file"),
            "the fix is named: {err}"
        );
        let polled = config(r#", source: { url: "http://127.0.0.1:1/nodes" }"#);
        let s = Snapshot::build(polled, inputs(&[("nodes", missing)], 1), None, 1)
            .expect("a polled map starts empty")
            .snapshot;
        assert!(s.maps["nodes"].is_empty());
    }

    #[test]
    fn duplicate_keys_are_warnings_returned_to_the_caller() {
        let built = Snapshot::build(
            config(""),
            inputs(&[("nodes", text("n1 m1\nn1 m2\n"))], 1),
            None,
            1,
        )
        .unwrap();
        assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
        assert_eq!(built.warnings[0].0, "nodes");
        assert_eq!(
            built.snapshot.maps["nodes"].get("n1"),
            Some("m1"),
            "first wins"
        );
    }

    #[test]
    fn a_rebuild_reuses_unchanged_parts_and_reads_only_changed_maps() {
        let first = Snapshot::build(
            config(""),
            inputs(&[("nodes", text("n1 m1\n"))], 1),
            None,
            1,
        )
        .unwrap()
        .snapshot;
        let same = config("");
        assert!(
            Snapshot::map_files_needed(&same, Some(&first)).is_empty(),
            "an unchanged map is taken from the running snapshot"
        );
        let second = Snapshot::build(same, inputs(&[], 2), Some(&first), 2)
            .unwrap()
            .snapshot;
        assert!(Arc::ptr_eq(
            &first.upstreams["puppet"],
            &second.upstreams["puppet"]
        ));
        assert!(Arc::ptr_eq(&first.maps["nodes"], &second.maps["nodes"]));
        let admission = |s: &Snapshot| {
            let limit = s.routes.get("puppet").unwrap().admission.as_ref().unwrap();
            limit.queue.clone()
        };
        assert!(Arc::ptr_eq(&admission(&first), &admission(&second)));
        assert_eq!(
            second.policy.generation, 2,
            "the policy given is the one published"
        );

        let changed = config(", on_duplicate: last");
        assert_eq!(
            Snapshot::map_files_needed(&changed, Some(&second)).len(),
            1,
            "a map whose config changed is read again"
        );
        let third = Snapshot::build(
            changed,
            inputs(&[("nodes", text("n1 m1\nn1 m2\n"))], 2),
            Some(&second),
            3,
        )
        .unwrap()
        .snapshot;
        assert_eq!(third.maps["nodes"].get("n1"), Some("m2"), "last wins now");
        assert!(Arc::ptr_eq(
            &second.upstreams["puppet"],
            &third.upstreams["puppet"]
        ));
    }

    #[test]
    fn copies_share_everything_but_what_they_replace() {
        let s = Snapshot::build(
            config(""),
            inputs(&[("nodes", text("n1 m1\n"))], 1),
            None,
            1,
        )
        .unwrap()
        .snapshot;
        let p = s.with_policy(policy(2), 2);
        assert_eq!((p.version, p.policy.generation), (2, 2));
        assert!(Arc::ptr_eq(&s.maps["nodes"], &p.maps["nodes"]));
        let m = p.with_map("nodes", Arc::new(MapTable::empty()), 3);
        assert_eq!(m.version, 3);
        assert!(m.maps["nodes"].is_empty());
        assert!(
            Arc::ptr_eq(&p.policy, &m.policy),
            "a map edit keeps the policy"
        );
    }
}
