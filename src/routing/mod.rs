//! Route matching: the first route whose every condition holds wins (as nginx `location`
//! order or HAProxy `use_backend` order). Pure: no sockets, unit-tested here.

use crate::config::{HostMatch, RouteConfig, RouteMatch};
use std::sync::Arc;

/// The parts of a request that routes can look at.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Host without port, any case.
    pub host: &'a str,
    pub path: &'a str,
    /// Header lookup by lowercased name.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// What a [`RouteTable`] holds: anything that has a route's config. The snapshot's table
/// holds resolved routes (`state::Route`: the config plus its upstream, admission and metric
/// handles), so matching hands the request everything it needs at once.
pub trait RouteEntry {
    fn config(&self) -> &RouteConfig;
}

impl RouteEntry for Arc<RouteConfig> {
    fn config(&self) -> &RouteConfig {
        self
    }
}

/// Ordered routes, built once per snapshot.
#[derive(Debug)]
pub struct RouteTable<R = Arc<RouteConfig>> {
    routes: Vec<R>,
}

impl<R> Default for RouteTable<R> {
    fn default() -> Self {
        RouteTable { routes: Vec::new() }
    }
}

impl<R: Clone> Clone for RouteTable<R> {
    fn clone(&self) -> Self {
        RouteTable {
            routes: self.routes.clone(),
        }
    }
}

impl RouteTable {
    /// A table of bare configs (matching only).
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self::from_entries(routes.iter().cloned().map(Arc::new).collect())
    }
}

impl<R: RouteEntry> RouteTable<R> {
    /// A table of `routes`, in matching order.
    pub fn from_entries(routes: Vec<R>) -> Self {
        RouteTable { routes }
    }

    /// The first matching route, with its index.
    pub fn resolve(&self, req: &RequestView<'_>) -> Option<(usize, &R)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| matches(&r.config().matcher, req))
    }

    pub fn get(&self, name: &str) -> Option<&R> {
        self.routes.iter().find(|r| r.config().name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.routes.iter()
    }
}

/// Strips a port and lowercases (`Foo.Example:8080` -> `foo.example`). Keeps IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        }
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    h.to_ascii_lowercase()
}

fn matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x.eq_ignore_ascii_case(req.method)) {
        return false;
    }
    if !m.hosts.is_empty() {
        let host = req.host;
        let ok = m.hosts.iter().any(|h| match h {
            HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
            HostMatch::Suffix(s) => {
                host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        });
        if !ok {
            return false;
        }
    }
    let has_path_rules = !m.paths.is_empty() || !m.path_prefixes.is_empty();
    if has_path_rules {
        let exact = m.paths.iter().any(|p| p == req.path);
        let prefix = m.path_prefixes.iter().any(|p| path_has_prefix(req.path, p));
        if !exact && !prefix {
            return false;
        }
    }
    m.headers
        .iter()
        .all(|(name, want)| match ((req.header)(name), want) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(w)) => v == w,
        })
}

/// `/register` matches `/register`, `/register/health` and `/register?x`, not `/registered`;
/// a prefix ending in `/` matches anything below it.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use std::path::Path;

    fn table(yaml: &str) -> RouteTable {
        let cfg = parse_config(yaml, Path::new("t.yaml")).unwrap();
        RouteTable::new(&cfg.routes)
    }

    fn resolve<'a>(
        t: &'a RouteTable,
        method: &str,
        host: &str,
        path: &str,
        hdrs: &[(&str, &str)],
    ) -> Option<&'a str> {
        let owned: Vec<(String, String)> = hdrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let f = |n: &str| -> Option<&str> {
            owned.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str())
        };
        let view = RequestView {
            method,
            host,
            path,
            header: &f,
        };
        t.resolve(&view).map(|(_, r)| r.name.as_str())
    }

    const Y: &str = r#"
listeners: [{ bind: "127.0.0.1:0" }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:1" }] }
routes:
  - { name: by-header, match: { header: { name: X-Node-Name } }, upstream: a }
  - { name: by-header-value, match: { header: { name: X-Env, value: prod } }, upstream: a }
  - { name: wildcard, match: { host: "*.example.com" }, upstream: a }
  - { name: exact-host, match: { host: api.test, path: /v1 }, upstream: a }
  - { name: rhsm-post, match: { path_prefix: [/rhsm, /register], methods: [POST] }, upstream: a }
  - { name: register, match: { path_prefix: /register }, upstream: a }
"#;

    #[test]
    fn first_matching_route_wins_on_each_matcher() {
        let t = table(Y);
        assert_eq!(
            resolve(&t, "GET", "x", "/", &[("x-node-name", "n1")]),
            Some("by-header")
        );
        assert_eq!(
            resolve(&t, "GET", "x", "/", &[("x-env", "prod")]),
            Some("by-header-value")
        );
        assert_eq!(resolve(&t, "GET", "x", "/", &[("x-env", "dev")]), None);
        assert_eq!(
            resolve(&t, "GET", "a.example.com", "/", &[]),
            Some("wildcard")
        );
        assert_eq!(
            resolve(&t, "GET", "example.com", "/", &[]),
            None,
            "wildcard needs a label before the suffix"
        );
        assert_eq!(
            resolve(&t, "GET", "API.test", "/v1", &[]),
            Some("exact-host")
        );
        assert_eq!(
            resolve(&t, "GET", "api.test", "/v1/x", &[]),
            None,
            "path is exact"
        );
        assert_eq!(
            resolve(&t, "POST", "h", "/rhsm/consumers", &[]),
            Some("rhsm-post")
        );
        assert_eq!(resolve(&t, "GET", "h", "/register", &[]), Some("register"));
        assert_eq!(
            resolve(&t, "GET", "h", "/registered", &[]),
            None,
            "prefix stops at a segment boundary"
        );
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Foo.Example:8080"), "foo.example");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("plain"), "plain");
    }
}
