//! `upstreams:`: servers, balancing, timeouts, queues, active and passive health checks.

use super::Validator;
use crate::config::spec::*;
use crate::config::types::*;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

impl Validator {
    pub(super) fn upstreams(
        &mut self,
        s: &ConfigSpec,
        base: &Path,
    ) -> BTreeMap<String, UpstreamConfig> {
        let mut upstreams = BTreeMap::new();
        for (name, u) in &s.upstreams {
            let cfg = self.upstream(name, u, base);
            upstreams.insert(name.clone(), cfg);
        }
        upstreams
    }

    pub(super) fn queue(&mut self, p: &str, q: Option<&QueueSpec>) -> QueueConfig {
        let d = QueueConfig::default();
        let Some(q) = q else { return d };
        QueueConfig {
            max: q.max.unwrap_or(d.max),
            max_per_class: q.max_per_class,
            timeout: self.duration(&format!("{p}.timeout"), q.timeout.as_ref(), d.timeout),
            retry_after: self.retry_after(&format!("{p}.retry_after"), q.retry_after.as_ref()),
            fail_fast: q.fail_fast.unwrap_or(false),
            body: q.body.clone().unwrap_or(d.body),
        }
    }

    pub(super) fn retry_after(&mut self, p: &str, v: Option<&String>) -> RetryAfterSetting {
        match v.map(String::as_str) {
            None => RetryAfterSetting::Fixed(DEFAULT_RETRY_AFTER),
            Some("auto") => RetryAfterSetting::Auto,
            Some(s) => RetryAfterSetting::Fixed(self.duration(
                p,
                Some(&s.to_string()),
                DEFAULT_RETRY_AFTER,
            )),
        }
    }

    pub(super) fn upstream(&mut self, name: &str, u: &UpstreamSpec, base: &Path) -> UpstreamConfig {
        let p = format!("upstreams.{name}");
        let balance = match u.balance.as_deref() {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("least_conn") => Balance::LeastConn,
            Some("hash") => match u
                .hash_key
                .as_deref()
                .and_then(|k| k.strip_prefix("header:"))
            {
                Some(h) if !h.is_empty() => Balance::Hash {
                    header: h.to_ascii_lowercase(),
                },
                _ => {
                    self.err(
                        format!("{p}.hash_key"),
                        format!(
                            "{:?}: balance: hash needs hash_key: \"header:NAME\"",
                            u.hash_key.clone().unwrap_or_default()
                        ),
                    );
                    Balance::RoundRobin
                }
            },
            Some(o) => {
                self.err(
                    format!("{p}.balance"),
                    format!("{o:?} is not a balancing method; use round_robin, least_conn or hash"),
                );
                Balance::RoundRobin
            }
        };
        if u.servers.is_empty() {
            self.err(format!("{p}.servers"), "the list is empty; an upstream needs at least one server, e.g. `- { addr: \"127.0.0.1:3000\" }`");
        }
        let mut servers = Vec::new();
        let mut seen = HashSet::new();
        for (i, sv) in u.servers.iter().enumerate() {
            let sp = format!("{p}.servers[{i}]");
            let addr = self.server_addr(&format!("{sp}.addr"), &sv.addr);
            let sname = sv.name.clone().unwrap_or_else(|| sv.addr.clone());
            if !seen.insert(sname.clone()) {
                self.err(format!("{sp}.name"), format!("{sname:?} names an earlier server of this upstream; server names must be unique"));
            }
            if sv.weight == Some(0) {
                self.err(
                    format!("{sp}.weight"),
                    "0 would never be chosen; use 1 or more, or remove the server",
                );
            }
            if sv.max_inflight == Some(0) {
                self.err(
                    format!("{sp}.max_inflight"),
                    "0 would never admit a request; use 1 or more, or leave it out for no limit",
                );
            }
            if let Some(addr) = addr {
                let host = match addr {
                    ServerAddr::Unix(_) => String::new(),
                    ServerAddr::Inet(_) => addr_host(&sv.addr).to_string(),
                };
                servers.push(ServerConfig {
                    name: sname,
                    host,
                    addr,
                    weight: sv.weight.unwrap_or(1),
                    backup: sv.backup,
                    max_inflight: sv.max_inflight,
                });
            }
        }
        if !u.servers.is_empty() && u.servers.iter().all(|s| s.backup) {
            self.err(
                format!("{p}.servers"),
                "every server is a backup; mark at least one as a primary (backup: false)",
            );
        }
        let t = &u.timeouts;
        let timeouts = Timeouts {
            connect: self.duration(
                &format!("{p}.timeouts.connect"),
                t.connect.as_ref(),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            read: self.duration(
                &format!("{p}.timeouts.read"),
                t.read.as_ref(),
                DEFAULT_READ_TIMEOUT,
            ),
            write: self.duration(
                &format!("{p}.timeouts.write"),
                t.write.as_ref(),
                DEFAULT_WRITE_TIMEOUT,
            ),
            idle: self.duration(
                &format!("{p}.timeouts.idle"),
                t.idle.as_ref(),
                DEFAULT_IDLE_TIMEOUT,
            ),
        };
        let health = u.health.as_ref().map(|h| {
            let hp = format!("{p}.health");
            let expect = match &h.expect {
                None => Expect::Any,
                Some(serde_yaml::Value::String(s)) if s == "any" => Expect::Any,
                Some(serde_yaml::Value::String(s)) if s == "2xx" => Expect::Success,
                Some(serde_yaml::Value::Sequence(list)) => {
                    let codes: Vec<u16> = list
                        .iter()
                        .filter_map(|v| v.as_u64())
                        .filter(|c| (100..600).contains(c))
                        .map(|c| c as u16)
                        .collect();
                    if codes.len() != list.len() || codes.is_empty() {
                        self.err(
                            format!("{hp}.expect"),
                            "the list must hold HTTP status codes, e.g. [200, 204]",
                        );
                    }
                    Expect::Statuses(codes)
                }
                Some(o) => {
                    self.err(
                        format!("{hp}.expect"),
                        format!("{o:?} is not a choice; use any, 2xx or a list of statuses"),
                    );
                    Expect::Any
                }
            };
            let path = h
                .path
                .clone()
                .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_string());
            if !path.starts_with('/') {
                self.err(format!("{hp}.path"), format!("{path:?} must start with /"));
            }
            let rise = h.rise.unwrap_or(DEFAULT_RISE);
            let fall = h.fall.unwrap_or(DEFAULT_FALL);
            if rise == 0 || fall == 0 {
                self.err(hp.clone(), "rise and fall must be 1 or more");
            }
            HealthConfig {
                path,
                interval: self.duration(
                    &format!("{hp}.interval"),
                    h.interval.as_ref(),
                    DEFAULT_HEALTH_INTERVAL,
                ),
                timeout: self.duration(
                    &format!("{hp}.timeout"),
                    h.timeout.as_ref(),
                    DEFAULT_HEALTH_TIMEOUT,
                ),
                rise: rise.max(1),
                fall: fall.max(1),
                expect,
                host: h.host.clone(),
            }
        });
        let observe = u
            .observe
            .as_ref()
            .map(|o| ObserveConfig {
                failures: o.failures.unwrap_or(DEFAULT_OBSERVE_FAILURES),
                statuses: o.statuses.clone().unwrap_or_default(),
            })
            .unwrap_or(ObserveConfig {
                failures: DEFAULT_OBSERVE_FAILURES,
                statuses: Vec::new(),
            });
        // A server without a host name (an IP or a Unix socket) gives no SNI to verify.
        let ip_hosts = u
            .servers
            .iter()
            .any(|s| s.addr.starts_with("unix:") || addr_host(&s.addr).parse::<IpAddr>().is_ok());
        if matches!(balance, Balance::Hash { .. }) {
            if let Some(i) = u.servers.iter().position(|s| s.addr.starts_with("unix:")) {
                self.err(
                    format!("{p}.servers[{i}].addr"),
                    format!(
                        "{:?}: balance: hash places servers by IP address and cannot place a unix: socket; use round_robin or least_conn, or an ip:port address",
                        u.servers[i].addr
                    ),
                );
            }
        }
        let tls = u
            .tls
            .as_ref()
            .map(|t| self.upstream_tls(&format!("{p}.tls"), t, base, ip_hosts));
        let resolve_every = self.duration(
            &format!("{p}.resolve_every"),
            u.resolve_every.as_ref(),
            DEFAULT_RESOLVE_EVERY,
        );
        if resolve_every.is_zero() {
            self.err(
                format!("{p}.resolve_every"),
                "0s would look the host up without pause; use e.g. 30s",
            );
        }
        UpstreamConfig {
            name: name.to_string(),
            tls,
            resolve_every,
            balance,
            servers,
            timeouts,
            retries: u.retries.unwrap_or(DEFAULT_RETRIES),
            queue: self.queue(&format!("{p}.queue"), u.queue.as_ref()),
            health,
            observe,
        }
    }
}

impl Validator {
    /// `unix:/abs/path`, `ip:port` or `host:port` (resolved now; see README "Upstreams").
    fn server_addr(&mut self, key: &str, addr: &str) -> Option<ServerAddr> {
        if let Some(path) = addr.strip_prefix("unix:") {
            if !path.starts_with('/') {
                self.err(
                    key.to_string(),
                    format!("{addr:?}: a Unix socket needs an absolute path; write e.g. \"unix:/run/foreman.sock\""),
                );
                return None;
            }
            if std::os::unix::net::SocketAddr::from_pathname(path).is_err() {
                self.err(
                    key.to_string(),
                    format!("{addr:?}: the path is too long for a Unix socket (at most 107 bytes); use a shorter path"),
                );
                return None;
            }
            return Some(ServerAddr::Unix(path.into()));
        }
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return Some(ServerAddr::Inet(a));
        }
        match addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(a) => Some(ServerAddr::Inet(a)),
            None => {
                self.err(
                    key.to_string(),
                    format!("{addr:?} is not a host:port address or a unix: socket; write e.g. \"127.0.0.1:3000\" or \"unix:/run/foreman.sock\""),
                );
                None
            }
        }
    }
}

/// The host part of a `host:port` address as written (`[::1]:80` gives `::1`).
fn addr_host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
