//! `routes:`: matchers, targets (upstream, local answer, redirect), per-route admission, cache
//! rules, server picking through maps, and header rules; cross-checked against upstreams and maps.

use super::Validator;
use crate::config::spec::*;
use crate::config::types::*;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

impl Validator {
    pub(super) fn routes(
        &mut self,
        s: &ConfigSpec,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        maps: &BTreeMap<String, MapConfig>,
    ) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for (i, r) in s.routes.iter().enumerate() {
            if !route_names.insert(r.name.clone()) {
                self.err(
                    format!("routes[{i}].name"),
                    format!(
                        "{:?} is used by an earlier route; route names must be unique",
                        r.name
                    ),
                );
            }
            if let Some(rc) = self.route(i, r, upstreams, maps) {
                routes.push(rc);
            }
        }
        if routes.is_empty() && s.routes.is_empty() {
            self.err(
                "routes",
                "no route is defined; add one, e.g. `routes: [{ name: all, upstream: app }]`",
            );
        }
        routes
    }

    pub(super) fn route(
        &mut self,
        i: usize,
        r: &RouteSpec,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        maps: &BTreeMap<String, MapConfig>,
    ) -> Option<RouteConfig> {
        let p = format!("routes[{i}]");
        let defined = || upstreams.keys().cloned().collect::<Vec<_>>().join(", ");
        let check_up = |v: &mut Validator, key: &str, name: &str| -> bool {
            if upstreams.contains_key(name) {
                true
            } else {
                v.err(
                    format!("{p}.{key}"),
                    format!(
                        "{name:?} is not a defined upstream (defined: {})",
                        defined()
                    ),
                );
                false
            }
        };
        let mut problems = Vec::new();
        let named = match &r.respond {
            Some(RespondSpec::Named(n)) => Some(n.as_str()),
            _ => None,
        };
        let local = match (&r.respond, &r.redirect) {
            (Some(RespondSpec::Answer(a)), None) => Some(crate::rules::local::fixed(
                &format!("{p}.respond"),
                a,
                &mut problems,
            )),
            (None, Some(rd)) => Some(crate::rules::local::redirect(
                &format!("{p}.redirect"),
                rd,
                &mut problems,
            )),
            (Some(_), Some(_)) => {
                self.err(
                    format!("{p}.redirect"),
                    "a route answers with respond: or redirect:, not both; keep one",
                );
                return None;
            }
            _ => None,
        };
        let target = match (named, r.upstream.as_deref()) {
            _ if local.is_some() => {
                if let Some(up) = &r.upstream {
                    self.err(
                        format!("{p}.upstream"),
                        format!("{up:?}: a route that answers locally has no upstream; remove upstream: (or respond:/redirect:)"),
                    );
                }
                for key in ["admission", "cache", "pick_server"] {
                    let given = match key {
                        "admission" => r.admission.is_some(),
                        "cache" => r.cache.is_some(),
                        _ => r.pick_server.is_some(),
                    };
                    if given {
                        self.err(
                            format!("{p}.{key}"),
                            format!("a route that answers locally never reaches an upstream, so {key}: has no effect; remove it"),
                        );
                    }
                }
                RouteTarget::Local(local.clone()?)
            }
            (Some("upstream_health"), up) => {
                let of = r.health_of.as_deref().or(up);
                match of {
                    Some(n) if check_up(self, "health_of", n) => {
                        RouteTarget::UpstreamHealth(n.to_string())
                    }
                    Some(_) => return None,
                    None => {
                        self.err(format!("{p}.health_of"), "respond: upstream_health needs health_of: (or upstream:) naming the upstream to report on");
                        return None;
                    }
                }
            }
            (Some(o), _) => {
                self.err(
                    format!("{p}.respond"),
                    format!("{o:?} is not a choice; use upstream_health, or a local answer such as `{{ status: 404, body: \"Not found\" }}`"),
                );
                return None;
            }
            (None, Some(up)) => {
                if !check_up(self, "upstream", up) {
                    return None;
                }
                RouteTarget::Upstream(up.to_string())
            }
            (None, None) => {
                self.err(
                    format!("{p}.upstream"),
                    format!(
                        "missing; name the upstream that serves this route (defined: {})",
                        defined()
                    ),
                );
                return None;
            }
        };
        let m = &r.matcher;
        let mut matcher = RouteMatch::default();
        for h in m.host.as_ref().map(|h| h.to_vec()).unwrap_or_default() {
            let h = h.to_ascii_lowercase();
            matcher.hosts.push(match h.strip_prefix("*.") {
                Some(sfx) => HostMatch::Suffix(format!(".{sfx}")),
                None => HostMatch::Exact(h),
            });
        }
        for (key, list, out) in [
            ("path_prefix", &m.path_prefix, &mut matcher.path_prefixes),
            ("path", &m.path, &mut matcher.paths),
        ] {
            for pp in list.as_ref().map(|l| l.to_vec()).unwrap_or_default() {
                if !pp.starts_with('/') {
                    self.err(
                        format!("{p}.match.{key}"),
                        format!("{pp:?} must start with /"),
                    );
                }
                out.push(pp);
            }
        }
        for meth in m.methods.clone().unwrap_or_default() {
            let up = meth.to_ascii_uppercase();
            if ![
                "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
            ]
            .contains(&up.as_str())
            {
                self.err(
                    format!("{p}.match.methods"),
                    format!("{meth:?} is not an HTTP method; use e.g. GET, POST"),
                );
            }
            matcher.methods.push(up);
        }
        for h in m.header.as_ref().map(|h| h.to_vec()).unwrap_or_default() {
            matcher
                .headers
                .push((h.name.to_ascii_lowercase(), h.value.clone()));
        }
        let admission = r.admission.as_ref().map(|a| {
            let ap = format!("{p}.admission");
            if a.max_inflight == 0 {
                self.err(
                    format!("{ap}.max_inflight"),
                    "0 would never admit a request; use 1 or more",
                );
            }
            let spec = QueueSpec {
                max: a.queue,
                max_per_class: a.max_per_class,
                timeout: a.queue_timeout.clone(),
                retry_after: a.retry_after.clone(),
                fail_fast: a.fail_fast,
                body: a.body.clone(),
            };
            RouteAdmission {
                max_inflight: a.max_inflight,
                queue: self.queue(&ap, Some(&spec)),
            }
        });
        let cache = r.cache.as_ref().map(|c| {
            let cp = format!("{p}.cache");
            let ttl = self.duration(&format!("{cp}.ttl"), Some(&c.ttl), Duration::from_secs(300));
            let methods: Vec<String> = c
                .methods
                .clone()
                .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()])
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            if methods.iter().any(|m| m != "GET" && m != "HEAD") {
                self.err(
                    format!("{cp}.methods"),
                    "only GET and HEAD responses can be cached",
                );
            }
            RouteCacheConfig {
                ttl,
                methods,
                statuses: c.statuses.clone().unwrap_or_else(|| vec![200]),
                vary: c
                    .vary
                    .clone()
                    .unwrap_or_else(|| vec!["authorization".into()])
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                max_entry_size: self.size(
                    &format!("{cp}.max_entry_size"),
                    c.max_entry_size.as_ref(),
                    DEFAULT_CACHE_ENTRY_MAX,
                ),
            }
        });
        let pick_server = r.pick_server.as_ref().and_then(|ps| {
            let pp = format!("{p}.pick_server");
            if !maps.contains_key(&ps.map) {
                let names = maps.keys().cloned().collect::<Vec<_>>().join(", ");
                self.err(format!("{pp}.map"), format!("{:?} is not a defined map (defined: {names})", ps.map));
            }
            let header = match ps.key.strip_prefix("header:") {
                Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
                _ => {
                    self.err(format!("{pp}.key"), format!("{:?}: write the lookup key as \"header:NAME\", e.g. \"header:X-Node-Name\"", ps.key));
                    return None;
                }
            };
            let on_miss = match ps.on_miss.as_deref() {
                None | Some("balance") => OnMiss::Balance,
                Some("reject") => OnMiss::Reject(ps.reject_status.unwrap_or(404)),
                Some(o) => match o.strip_prefix("server:") {
                    Some(s) => {
                        if let RouteTarget::Upstream(up) = &target {
                            if let Some(u) = upstreams.get(up) {
                                if !u.servers.iter().any(|sv| sv.name == s || sv.addr.to_string() == s) {
                                    self.err(format!("{pp}.on_miss"), format!("{s:?} is not a server of upstream {up}"));
                                }
                            }
                        }
                        OnMiss::Server(s.to_string())
                    }
                    None => {
                        self.err(format!("{pp}.on_miss"), format!("{o:?} is not a choice; use balance, reject or server:NAME"));
                        OnMiss::Balance
                    }
                },
            };
            Some(PickServer { map: ps.map.clone(), header, on_miss, redispatch: ps.redispatch.unwrap_or(true) })
        });
        let request_headers = crate::rules::compile::rules(
            &format!("{p}.request_headers"),
            r.request_headers.as_deref().unwrap_or_default(),
            &mut problems,
        );
        let response_headers = crate::rules::compile::rules(
            &format!("{p}.response_headers"),
            r.response_headers.as_deref().unwrap_or_default(),
            &mut problems,
        );
        for (path, m) in problems {
            self.err(path, m);
        }
        Some(RouteConfig {
            request_headers,
            response_headers,
            name: r.name.clone(),
            matcher,
            target,
            priority: r.priority.unwrap_or(0),
            admission,
            cache,
            pick_server,
            raw_path: r.raw_path,
        })
    }
}
