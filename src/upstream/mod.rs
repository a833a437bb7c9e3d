//! Upstream pools at run time: servers with their health and in-flight counts, the balancer
//! that picks one, and the admission queue in front of them.
//!
//! An [`Upstream`] is immutable once built; what changes while it serves (health, in-flight
//! counts, the queue) lives behind atomics and the [`admission::Admission`] lock. A reload that
//! leaves an upstream's config unchanged keeps the same `Arc<Upstream>` (so its queue and
//! connection pool survive); a changed upstream is rebuilt but keeps each unchanged server's
//! [`ServerState`] (so health survives).

pub mod admission;
pub mod health;
pub mod resolve;
pub mod runtime;
pub mod tls;

use crate::config::{Balance, RetryAfterSetting, ServerConfig, UpstreamConfig};
use crate::metrics::handles::UpstreamHandles;
use crate::metrics::Metrics;
use admission::{Admission, QueueSettings, RetryAfter};
use arc_swap::ArcSwap;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use runtime::{Balancer, ServerCounters};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a server marked down by passive detection stays out when no active check exists
/// to bring it back.
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// Health and drain state of one server; survives reloads while the server stays configured
/// (a reload clears `drained`, see [`Upstream::reset_runtime`]).
#[derive(Debug)]
pub struct ServerState {
    healthy: AtomicBool,
    /// Set after the first active check of this server finished (pass or fail).
    checked: AtomicBool,
    /// Disabled by an operator (`disable server`, HAProxy MAINT): takes no new request.
    drained: AtomicBool,
    /// Counters for `show stat` (requests, peaks, connect errors, last change).
    pub counters: ServerCounters,
    pub consecutive_ok: AtomicU32,
    pub consecutive_fail: AtomicU32,
    passive_fail: AtomicU32,
    /// With no active check: when a passively downed server may be tried again.
    down_until: parking_lot::Mutex<Option<Instant>>,
}

impl ServerState {
    /// `actively_checked`: a server with active checks starts down and must pass first.
    pub fn new(actively_checked: bool) -> Self {
        ServerState {
            healthy: AtomicBool::new(!actively_checked),
            checked: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            consecutive_ok: AtomicU32::new(0),
            consecutive_fail: AtomicU32::new(0),
            passive_fail: AtomicU32::new(0),
            down_until: parking_lot::Mutex::new(None),
            counters: ServerCounters::default(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        if self.healthy.load(Ordering::Acquire) {
            return true;
        }
        let mut du = self.down_until.lock();
        match *du {
            Some(t) if Instant::now() >= t => {
                *du = None;
                self.healthy.store(true, Ordering::Release);
                self.counters.touch();
                true
            }
            _ => false,
        }
    }

    /// Sets health; returns true when it changed.
    pub fn set_healthy(&self, up: bool) -> bool {
        if up {
            *self.down_until.lock() = None;
            self.passive_fail.store(0, Ordering::Relaxed);
        }
        let changed = self.healthy.swap(up, Ordering::AcqRel) != up;
        if changed {
            self.counters.touch();
        }
        changed
    }

    pub fn mark_checked(&self) {
        self.checked.store(true, Ordering::Release);
    }

    pub fn was_checked(&self) -> bool {
        self.checked.load(Ordering::Acquire)
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// Sets the operator's drain flag; returns true when it changed.
    pub fn set_drained(&self, d: bool) -> bool {
        let changed = self.drained.swap(d, Ordering::AcqRel) != d;
        if changed {
            self.counters.touch();
        }
        changed
    }
}

/// One configured server.
#[derive(Debug)]
pub struct Server {
    pub cfg: ServerConfig,
    pub state: Arc<ServerState>,
    /// Replaced whole when a host name in `addr` resolves to another address
    /// ([`resolve`]); requests and checks load it without a lock.
    peer: ArcSwap<HttpPeer>,
}

impl Server {
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(HttpPeer::clone(&self.peer.load()))
    }

    /// The address connections go to now (`addr` as resolved last).
    pub fn current_addr(&self) -> String {
        self.peer.load()._address.to_string()
    }

    /// Points new connections at `to` (pooled ones to the old address idle out); returns the
    /// previous address when it changed.
    pub fn set_resolved(&self, to: std::net::SocketAddr) -> Option<String> {
        let cur = self.peer.load();
        if cur._address.as_inet() == Some(&to) {
            return None;
        }
        let mut next = HttpPeer::clone(&cur);
        next._address = pingora_core::protocols::l4::socket::SocketAddr::Inet(to);
        self.peer.store(Arc::new(next));
        Some(cur._address.to_string())
    }
}

/// What the balancer should consider for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Eligible {
    /// These servers (indexes), all currently usable.
    Servers(Vec<usize>),
    /// Nothing usable: answer 503 now.
    None,
}

/// An upstream pool, built from its config.
pub struct Upstream {
    pub cfg: UpstreamConfig,
    pub servers: Vec<Server>,
    pub admission: Arc<Admission>,
    rr: AtomicUsize,
    /// Current weights and what the balancer derives from them; replaced whole by
    /// `set weight` (requests load it without a lock).
    balancer: ArcSwap<Balancer>,
    /// One writer of `balancer` at a time.
    weight_writer: parking_lot::Mutex<()>,
    /// Most requests in flight on the whole upstream at once (`show stat` BACKEND smax).
    pub max_inflight_seen: AtomicUsize,
    by_name: HashMap<String, usize>,
    /// Its metric series (queue, clients gone, each server's), resolved when it is built.
    pub metrics: UpstreamHandles,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.cfg.name)
            .finish()
    }
}

/// Converts the config's queue settings to the admission module's.
pub fn queue_settings(q: &crate::config::QueueConfig) -> QueueSettings {
    QueueSettings {
        max: q.max,
        max_per_class: q.max_per_class,
        timeout: q.timeout,
        retry_after: match q.retry_after {
            RetryAfterSetting::Fixed(d) => RetryAfter::Fixed(d),
            RetryAfterSetting::Auto => RetryAfter::Auto,
        },
        fail_fast: q.fail_fast,
    }
}

impl Upstream {
    /// Builds a pool; `old_state` supplies the state of servers that already existed
    /// (looked up by server name and address). Its metric handles are made in `metrics`
    /// (which creates the series the config implies at 0).
    pub fn build(
        cfg: &UpstreamConfig,
        old_state: &dyn Fn(&ServerConfig) -> Option<Arc<ServerState>>,
        metrics: &Metrics,
    ) -> Upstream {
        let tls = cfg.tls.as_ref().map(|t| tls::PeerTls::new(&cfg.name, t));
        let servers: Vec<Server> = cfg
            .servers
            .iter()
            .map(|s| {
                let mut peer = match &tls {
                    Some(t) => t.peer(s),
                    None => tls::server_peer(&s.addr, false, String::new()),
                };
                peer.options.connection_timeout = Some(cfg.timeouts.connect);
                peer.options.read_timeout = Some(cfg.timeouts.read);
                peer.options.write_timeout = Some(cfg.timeouts.write);
                peer.options.idle_timeout = Some(cfg.timeouts.idle);
                Server {
                    cfg: s.clone(),
                    state: old_state(s)
                        .unwrap_or_else(|| Arc::new(ServerState::new(cfg.health.is_some()))),
                    peer: ArcSwap::from_pointee(peer),
                }
            })
            .collect();
        let admission = Admission::new(
            servers.iter().map(|s| s.cfg.max_inflight).collect(),
            queue_settings(&cfg.queue),
        );
        let weights: Vec<u32> = cfg.servers.iter().map(|s| s.weight).collect();
        let balancer = Balancer::build(cfg, weights, vec![false; cfg.servers.len()]);
        let by_name = servers
            .iter()
            .enumerate()
            .flat_map(|(i, s)| [(s.cfg.name.clone(), i), (s.cfg.addr.to_string(), i)])
            .collect();
        Upstream {
            cfg: cfg.clone(),
            servers,
            admission,
            rr: AtomicUsize::new(0),
            balancer: ArcSwap::from_pointee(balancer),
            weight_writer: parking_lot::Mutex::new(()),
            max_inflight_seen: AtomicUsize::new(0),
            by_name,
            metrics: UpstreamHandles::new(
                metrics,
                &cfg.name,
                cfg.servers.iter().map(|s| s.name.as_str()),
                cfg.health.is_some(),
            ),
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// A server by name or by `ip:port`.
    pub fn server_index(&self, name_or_addr: &str) -> Option<usize> {
        self.by_name.get(name_or_addr).copied()
    }

    fn usable(&self, i: usize) -> bool {
        let s = &self.servers[i];
        !s.state.is_drained() && s.state.is_healthy()
    }

    /// Healthy primaries; when none, healthy backups; when none, [`Eligible::None`].
    /// `exclude` removes servers already tried by this request. A server of weight 0 takes
    /// no balanced request (HAProxy: it still takes the ones pinned to it).
    pub fn eligible(&self, exclude: &[usize]) -> Eligible {
        let bal = self.balancer.load();
        let pick = |backup: bool| -> Vec<usize> {
            (0..self.servers.len())
                .filter(|&i| {
                    self.servers[i].cfg.backup == backup
                        && !exclude.contains(&i)
                        && bal.effective[i] > 0
                        && self.usable(i)
                })
                .collect()
        };
        let primaries = pick(false);
        if !primaries.is_empty() {
            return Eligible::Servers(primaries);
        }
        let backups = pick(true);
        if !backups.is_empty() {
            return Eligible::Servers(backups);
        }
        Eligible::None
    }

    /// Whether one specific server can take traffic now.
    pub fn is_usable(&self, i: usize) -> bool {
        i < self.servers.len() && self.usable(i)
    }

    pub fn healthy_count(&self) -> usize {
        (0..self.servers.len()).filter(|&i| self.usable(i)).count()
    }

    /// Picks among `free` (servers with a free slot, never empty) by the configured method.
    pub fn choose(&self, free: &[usize], hash_value: Option<&[u8]>) -> usize {
        debug_assert!(!free.is_empty());
        if free.len() == 1 {
            return free[0];
        }
        let bal = self.balancer.load();
        match (&self.cfg.balance, &bal.ketama, hash_value) {
            (Balance::LeastConn, _, _) => {
                // Fewest in flight per unit of weight; ties rotate so idle servers share work.
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                let n = free.len();
                let mut best = free[start % n];
                let mut best_load = f64::MAX;
                for k in 0..n {
                    let i = free[(start + k) % n];
                    let load = self.admission.inflight(i) as f64 / bal.effective[i].max(1) as f64;
                    if load < best_load {
                        best_load = load;
                        best = i;
                    }
                }
                best
            }
            (Balance::Hash { .. }, Some((ring, idx)), Some(key)) => {
                let mut it = ring.iter(key);
                // why: walk the ring past servers without a free slot or out of health, so a
                // key keeps its server while it is up and moves to the next one otherwise
                for _ in 0..(self.servers.len() * 2 + 1) {
                    match it.next() {
                        Some(b) => {
                            if let Some(&i) = idx.get(&b.addr) {
                                if free.contains(&i) {
                                    return i;
                                }
                            }
                        }
                        None => break,
                    }
                }
                free[0]
            }
            _ => {
                let n = bal.rr_seq.len();
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                for k in 0..n {
                    let i = bal.rr_seq[(start + k) % n];
                    if free.contains(&i) {
                        return i;
                    }
                }
                free[start % free.len()]
            }
        }
    }

    /// Passive observation of a connect failure on real traffic. Returns true when it marked
    /// the server down.
    pub fn observe_failure(&self, i: usize) -> bool {
        let limit = self.cfg.observe.failures;
        if limit == 0 {
            return false;
        }
        let s = &self.servers[i].state;
        let n = s.passive_fail.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= limit && s.set_healthy(false) {
            s.consecutive_ok.store(0, Ordering::Relaxed);
            if self.cfg.health.is_none() {
                *s.down_until.lock() = Some(Instant::now() + PASSIVE_COOLDOWN);
            }
            return true;
        }
        false
    }

    /// Passive observation of an answer; configured statuses count as failures.
    /// Returns true when it marked the server down.
    pub fn observe_status(&self, i: usize, status: u16) -> bool {
        if self.cfg.observe.statuses.contains(&status) {
            self.observe_failure(i)
        } else {
            self.servers[i]
                .state
                .passive_fail
                .store(0, Ordering::Relaxed);
            false
        }
    }

    /// Current Retry-After advice for this upstream's queue.
    pub fn retry_after(&self) -> Duration {
        self.admission.retry_after()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use std::path::Path;

    fn upstream(yaml_servers: &str, balance: &str) -> Upstream {
        let y = format!(
            "listeners: [{{ bind: \"127.0.0.1:0\" }}]\nupstreams:\n  u: {{ balance: {balance}, hash_key: \"header:x-k\", servers: {yaml_servers} }}\nroutes: [{{ name: r, upstream: u }}]\n"
        );
        let cfg = parse_config(&y, Path::new("t.yaml")).unwrap();
        Upstream::build(
            &cfg.upstreams["u"],
            &|_| None,
            &crate::metrics::Metrics::new(),
        )
    }

    #[test]
    fn a_host_name_resolved_again_moves_new_connections_and_keeps_the_options() {
        let u = upstream("[{ name: h, addr: \"localhost:8140\" }]", "round_robin");
        let s = &u.servers[0];
        assert!(resolve::resolvable(s), "a host name is resolved again");
        let before = s.peer();
        assert_eq!(
            s.set_resolved(before._address.as_inet().copied().unwrap()),
            None
        );
        let to: std::net::SocketAddr = "127.0.0.9:8140".parse().unwrap();
        assert!(
            s.set_resolved(to).is_some(),
            "a new address replaces the old"
        );
        let after = s.peer();
        assert_eq!(after._address.to_string(), "127.0.0.9:8140");
        assert_eq!(
            after.options.connection_timeout, before.options.connection_timeout,
            "timeouts and TLS options stay"
        );
        let ip = upstream("[{ addr: \"127.0.0.1:1\" }]", "round_robin");
        assert!(
            !resolve::resolvable(&ip.servers[0]),
            "an IP is not looked up"
        );
    }

    #[test]
    fn weighted_round_robin_honours_weights() {
        let u = upstream(
            "[{ addr: \"127.0.0.1:1\", weight: 3 }, { addr: \"127.0.0.1:2\", weight: 1 }]",
            "round_robin",
        );
        let mut counts = [0usize; 2];
        for _ in 0..1000 {
            counts[u.choose(&[0, 1], None)] += 1;
        }
        assert_eq!(counts, [750, 250], "3:1 weights over 1000 picks");
    }

    #[test]
    fn hash_keeps_a_key_on_one_server_and_moves_it_when_that_server_is_not_free() {
        let u = upstream(
            "[{ addr: \"127.0.0.1:1\" }, { addr: \"127.0.0.1:2\" }, { addr: \"127.0.0.1:3\" }]",
            "hash",
        );
        let first = u.choose(&[0, 1, 2], Some(b"node-7"));
        for _ in 0..20 {
            assert_eq!(
                u.choose(&[0, 1, 2], Some(b"node-7")),
                first,
                "same key, same server"
            );
        }
        let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
        let moved = u.choose(&others, Some(b"node-7"));
        assert_ne!(moved, first, "a key moves when its server cannot take it");
    }

    #[test]
    fn backups_serve_only_when_no_primary_is_usable_and_passive_failures_mark_down() {
        let u = upstream(
            "[{ addr: \"127.0.0.1:1\" }, { addr: \"127.0.0.1:2\", backup: true }]",
            "round_robin",
        );
        assert_eq!(u.eligible(&[]), Eligible::Servers(vec![0]));
        for _ in 0..3 {
            u.observe_failure(0);
        }
        assert_eq!(
            u.eligible(&[]),
            Eligible::Servers(vec![1]),
            "default observe.failures is 3"
        );
        assert_eq!(u.eligible(&[1]), Eligible::None);
    }
}
