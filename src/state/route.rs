//! A route as the snapshot holds it: its config resolved to the objects a request uses (the
//! upstream, the route's own admission queue, its metric handles), so the request path takes
//! them from the matched route instead of looking them up by name. Names stay for logs and
//! metric labels only.

use crate::config::{RouteConfig, RouteTarget};
use crate::metrics::handles::{AdmissionHandles, RouteHandles};
use crate::metrics::Metrics;
use crate::routing::RouteEntry;
use crate::rules::local::LocalAnswer;
use crate::upstream::admission::Admission;
use crate::upstream::{queue_settings, Upstream};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

/// Where a matched request goes.
#[derive(Debug)]
pub enum Target {
    /// Proxied to this upstream (a policy's `route` hook may choose another).
    Upstream(Arc<Upstream>),
    /// Answered 200/503 with this upstream's health.
    UpstreamHealth(Arc<Upstream>),
    /// Answered by the gateway; never admitted, queued or sent upstream.
    Local(LocalAnswer),
}

/// One route of a snapshot. Derefs to its config (`route.name`, `route.cache`, ...).
#[derive(Debug)]
pub struct Route {
    pub cfg: RouteConfig,
    pub target: Target,
    /// The route's own limit (`admission:`), if any.
    pub admission: Option<RouteLimit>,
    pub metrics: RouteHandles,
    /// The route as a kind of request to admission (a hash of its name, the same across
    /// reloads), so fail-fast prices its requests by their own costs.
    pub kind: u64,
}

/// A route's own admission queue and its series.
#[derive(Debug)]
pub struct RouteLimit {
    /// Shared with the previous snapshot's route of the same name while its settings are
    /// unchanged (so its queue carries on).
    pub queue: Arc<Admission>,
    pub metrics: AdmissionHandles,
}

/// A route names an upstream the snapshot does not have. Validation refuses such a config
/// first; this is the build's own guard (no route is ever left pointing nowhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownUpstream {
    /// The config key (`routes[2].upstream`).
    pub path: String,
    pub upstream: String,
}

impl Route {
    /// Resolves route `index` of a config against the snapshot's `upstreams`; `prev` is the
    /// running snapshot's route of the same name, whose admission queue is kept when the
    /// route's `admission:` is unchanged.
    pub fn resolve(
        index: usize,
        cfg: &RouteConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
        prev: Option<&Route>,
        metrics: &Metrics,
    ) -> Result<Route, UnknownUpstream> {
        let upstream = |name: &String, key: &str| {
            upstreams.get(name).cloned().ok_or_else(|| UnknownUpstream {
                path: format!("routes[{index}].{key}"),
                upstream: name.clone(),
            })
        };
        // (the `upstream` label of the route's requests: `none` when answered locally)
        let (target, label) = match &cfg.target {
            RouteTarget::Upstream(name) => {
                (Target::Upstream(upstream(name, "upstream")?), name.as_str())
            }
            RouteTarget::UpstreamHealth(name) => {
                (Target::UpstreamHealth(upstream(name, "health_of")?), "none")
            }
            RouteTarget::Local(answer) => (Target::Local(answer.clone()), "none"),
        };
        let admission = cfg.admission.as_ref().map(|a| RouteLimit {
            queue: prev
                .filter(|p| p.cfg.admission.as_ref() == Some(a))
                .and_then(|p| p.admission.as_ref())
                .map(|l| l.queue.clone())
                .unwrap_or_else(|| {
                    Admission::new(vec![Some(a.max_inflight)], queue_settings(&a.queue))
                }),
            metrics: AdmissionHandles::new(metrics, "route", &cfg.name),
        });
        let metrics = RouteHandles::new(
            metrics,
            &cfg.name,
            label,
            cfg.pick_server.as_ref().map(|p| p.map.as_str()),
            cfg.cache.is_some(),
        );
        Ok(Route {
            cfg: cfg.clone(),
            target,
            admission,
            metrics,
            kind: kind_of(&cfg.name),
        })
    }

    /// The upstream a proxied request of this route starts with.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.target {
            Target::Upstream(u) => Some(u),
            _ => None,
        }
    }
}

/// The admission kind of the route named `name`: a hash of the name, never 0 (the kind of
/// requests that tell none).
fn kind_of(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // why: DefaultHasher::new() has fixed keys, so a route keeps its kind across reloads
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish().max(1)
}

impl Deref for Route {
    type Target = RouteConfig;

    fn deref(&self) -> &RouteConfig {
        &self.cfg
    }
}

impl RouteEntry for Arc<Route> {
    fn config(&self) -> &RouteConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_config, Config};
    use crate::policy::{PolicyEngine, PolicySettings};
    use crate::state::{Inputs, Snapshot};
    use std::path::Path;

    fn config(app_servers: &str, api_limit: usize) -> Config {
        let yaml = format!(
            r#"
listeners: [{{ bind: "127.0.0.1:8080" }}]
upstreams:
  app: {{ servers: [{app_servers}] }}
  reg: {{ servers: [{{ name: r1, addr: "127.0.0.1:9101" }}] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: app, admission: {{ max_inflight: {api_limit} }} }}
  - {{ name: health, match: {{ path: /health }}, respond: upstream_health, health_of: reg }}
  - {{ name: gone, match: {{ path: /gone }}, respond: {{ status: 410 }} }}
  - {{ name: reg, match: {{ path_prefix: / }}, upstream: reg }}
"#
        );
        parse_config(&yaml, Path::new("/nonexistent/floodgate/t.yaml")).unwrap()
    }

    const ONE: &str = r#"{ name: a1, addr: "127.0.0.1:9001" }"#;
    const TWO: &str =
        r#"{ name: a1, addr: "127.0.0.1:9001" }, { name: a2, addr: "127.0.0.1:9002" }"#;

    fn build(cfg: Config, prev: Option<&Snapshot>, metrics: &Arc<Metrics>) -> Snapshot {
        try_build(cfg, prev, metrics).unwrap()
    }

    fn try_build(
        cfg: Config,
        prev: Option<&Snapshot>,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, crate::config::ConfigErrors> {
        let policy = PolicyEngine::new(100)
            .compile(1, Vec::new(), &PolicySettings::default())
            .unwrap();
        let inputs = Inputs {
            map_files: HashMap::new(),
            policy,
            metrics: metrics.clone(),
        };
        let version = prev.map_or(1, |p| p.version + 1);
        Snapshot::build(cfg, inputs, prev, version).map(|b| b.snapshot)
    }

    fn route<'a>(s: &'a Snapshot, name: &str) -> &'a Route {
        s.routes.get(name).unwrap()
    }

    fn exposition(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap()
    }

    #[test]
    fn a_snapshots_routes_point_at_its_own_upstream_objects() {
        let m = Arc::new(Metrics::new());
        let s = build(config(ONE, 4), None, &m);
        let api = route(&s, "api");
        assert!(Arc::ptr_eq(api.upstream().unwrap(), &s.upstreams["app"]));
        assert!(Arc::ptr_eq(
            route(&s, "reg").upstream().unwrap(),
            &s.upstreams["reg"]
        ));
        match &route(&s, "health").target {
            Target::UpstreamHealth(u) => assert!(Arc::ptr_eq(u, &s.upstreams["reg"])),
            other => panic!("health route resolved to {other:?}"),
        }
        assert!(matches!(route(&s, "gone").target, Target::Local(_)));
        assert!(route(&s, "gone").upstream().is_none());
        assert_eq!(api.name, "api", "a route derefs to its config");

        // A reload that changes `app` rebuilds it: the route follows the new object, and the
        // unchanged `reg` stays the same object.
        let next = build(config(TWO, 4), Some(&s), &m);
        let api2 = route(&next, "api").upstream().unwrap();
        assert!(Arc::ptr_eq(api2, &next.upstreams["app"]));
        assert!(!Arc::ptr_eq(api2, &s.upstreams["app"]));
        assert_eq!(api2.servers.len(), 2);
        assert!(Arc::ptr_eq(&next.upstreams["reg"], &s.upstreams["reg"]));
        assert!(Arc::ptr_eq(
            route(&next, "reg").upstream().unwrap(),
            &s.upstreams["reg"]
        ));
    }

    #[test]
    fn a_routes_admission_is_kept_while_its_settings_are_unchanged() {
        let m = Arc::new(Metrics::new());
        let s = build(config(ONE, 4), None, &m);
        let adm = |s: &Snapshot| route(s, "api").admission.as_ref().unwrap().queue.clone();
        let same = build(config(TWO, 4), Some(&s), &m);
        assert!(
            Arc::ptr_eq(&adm(&s), &adm(&same)),
            "the queue carries on across a reload that leaves the limit alone"
        );
        let changed = build(config(TWO, 8), Some(&same), &m);
        assert!(!Arc::ptr_eq(&adm(&same), &adm(&changed)));
        assert!(route(&s, "reg").admission.is_none());
        // A map edit or policy reload shares the routes themselves.
        let copy = changed.with_policy(changed.policy.clone(), changed.version + 1);
        assert!(Arc::ptr_eq(
            changed.routes.get("api").unwrap(),
            copy.routes.get("api").unwrap()
        ));
    }

    #[test]
    fn a_route_whose_upstream_is_renamed_or_removed_is_refused() {
        let renamed = r#"
listeners: [{ bind: "127.0.0.1:8080" }]
upstreams:
  application: { servers: [{ name: a1, addr: "127.0.0.1:9001" }] }
routes:
  - { name: api, match: { path_prefix: / }, upstream: app }
"#;
        let err = parse_config(renamed, Path::new("t.yaml")).expect_err("validation refuses it");
        assert!(
            err.0.iter().any(|e| e.path == "routes[0].upstream"),
            "{err}"
        );
        // The build's own guard, for a config that skipped validation: an error, never a
        // route pointing nowhere.
        let m = Arc::new(Metrics::new());
        let mut cfg = config(ONE, 4);
        cfg.upstreams.remove("reg");
        let err = try_build(cfg, None, &m).expect_err("reg is gone");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["routes[1].health_of", "routes[3].upstream"],
            "{err}"
        );
        assert!(
            err.0[1]
                .message
                .contains(r#""reg" is not a defined upstream"#),
            "{err}"
        );
        assert!(
            !exposition(&m).contains(r#"route="api""#),
            "a refused build leaves no route series"
        );
    }

    #[test]
    fn building_a_snapshot_makes_the_series_its_config_implies() {
        let m = Arc::new(Metrics::new());
        let s = build(config(ONE, 4), None, &m);
        let text = exposition(&m);
        for line in [
            r#"floodgate_admission_rejected_total{name="api",reason="full",scope="route"} 0"#,
            r#"floodgate_admission_abandoned_total{name="app",scope="upstream"} 0"#,
            r#"floodgate_upstream_requests_total{code="connect_error",server="r1",upstream="reg"} 0"#,
            r#"floodgate_upstream_client_gone_total{outcome="error",upstream="app"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(
            !text.contains(r#"name="reg",reason="full",scope="route""#),
            "a route without admission: has no route queue series"
        );
        // The handles count into the same series the labels name.
        let api = route(&s, "api");
        api.metrics.request(&m, "app", 200);
        api.upstream().unwrap().metrics.servers[0]
            .responses
            .inc(200);
        route(&s, "gone").metrics.request(&m, "none", 410);
        let text = exposition(&m);
        for line in [
            r#"floodgate_requests_total{code="200",route="api",upstream="app"} 1"#,
            r#"floodgate_upstream_requests_total{code="200",server="a1",upstream="app"} 1"#,
            r#"floodgate_requests_total{code="4xx",route="gone",upstream="none"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn a_route_is_one_admission_kind_across_reloads_and_never_the_kind_of_none() {
        assert_eq!(
            kind_of("new-host"),
            kind_of("new-host"),
            "the same on every reload"
        );
        assert_ne!(kind_of("new-host"), kind_of("register-script"));
        assert_ne!(kind_of(""), 0, "0 is for callers that tell no kind");
    }
}
