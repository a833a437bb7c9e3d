//! What operators change and read on a running upstream: per-server weights and the
//! disable/enable (drain) flag, and the counters behind `show stat`.
//!
//! Changes take effect on the next balancing decision without blocking requests: the weights
//! and everything derived from them (the weighted round-robin sequence, the hash ring) sit in
//! one [`Balancer`] behind an `ArcSwap` that a weight change replaces whole; the disable flag
//! is an atomic in the server's [`ServerState`](super::ServerState). Requests already sent to
//! a disabled server finish; a queued request handed a slot on it is put back (see
//! `proxy::admit`).
//!
//! As in HAProxy without a `server-state-file`, a config reload puts every server back to its
//! configured weight and enabled ([`Upstream::reset_runtime`]); so does a restart or upgrade.

use super::Upstream;
use crate::config::{Balance, UpstreamConfig};
use pingora_load_balancing::selection::consistent::KetamaHashing;
use pingora_load_balancing::selection::BackendSelection;
use pingora_load_balancing::Backend;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Highest weight `set weight` accepts (HAProxy's limit).
pub const MAX_WEIGHT: u32 = 256;

/// Per-server counters since the server appeared in the config (kept across reloads while
/// the server stays, like its health).
#[derive(Debug)]
pub struct ServerCounters {
    /// Requests given a slot on this server (HAProxy `stot`, `lbtot`).
    pub total: AtomicU64,
    /// Most requests in flight at once (`smax`).
    pub max_inflight: AtomicUsize,
    /// Requests waiting now that only this server may take (pinned by a map; `qcur`).
    pub queued: AtomicUsize,
    /// Most such requests at once (`qmax`).
    pub max_queued: AtomicUsize,
    /// Connections to this server that failed (`econ`).
    pub connect_errors: AtomicU64,
    /// Last change of health or of the disable flag (`lastchg`).
    last_change: parking_lot::Mutex<Instant>,
}

impl Default for ServerCounters {
    fn default() -> Self {
        ServerCounters {
            total: AtomicU64::new(0),
            max_inflight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            max_queued: AtomicUsize::new(0),
            connect_errors: AtomicU64::new(0),
            last_change: parking_lot::Mutex::new(Instant::now()),
        }
    }
}

impl ServerCounters {
    /// Records a state change now.
    pub fn touch(&self) {
        *self.last_change.lock() = Instant::now();
    }

    /// Whole seconds since the last state change.
    pub fn seconds_since_change(&self) -> u64 {
        self.last_change.lock().elapsed().as_secs()
    }
}

/// A request counted in `queued` while it waits; dropping it uncounts it.
#[derive(Debug)]
pub struct QueuedGuard<'a>(&'a ServerCounters);

impl<'a> QueuedGuard<'a> {
    pub fn new(c: &'a ServerCounters) -> Self {
        let now = c.queued.fetch_add(1, Ordering::AcqRel) + 1;
        c.max_queued.fetch_max(now, Ordering::AcqRel);
        QueuedGuard(c)
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

type Ring = (
    Arc<KetamaHashing>,
    HashMap<pingora_core::protocols::l4::socket::SocketAddr, usize>,
);

/// The current weights of an upstream's servers and what the balancer derives from them.
pub struct Balancer {
    /// Weight per server as set (config or `set weight`; index as in `Upstream::servers`).
    pub weights: Vec<u32>,
    /// Servers in drain mode (`set server ... state drain`): weight 0 for balancing while
    /// keeping the weight set, which `state ready` gives back.
    pub draining: Vec<bool>,
    /// What balancing uses: `weights`, 0 for a draining server.
    pub effective: Vec<u32>,
    /// Weighted round robin: each server appears `weight` times, interleaved so that
    /// consecutive picks spread out (1,2,1,2,1 rather than 1,1,1,2,2).
    pub rr_seq: Vec<usize>,
    /// The consistent-hash ring (balance `hash`), servers of weight 0 left out.
    pub ketama: Option<Ring>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("weights", &self.weights)
            .field("draining", &self.draining)
            .field("ring", &self.ketama.is_some())
            .finish()
    }
}

impl Balancer {
    pub fn build(cfg: &UpstreamConfig, weights: Vec<u32>, draining: Vec<bool>) -> Balancer {
        let effective: Vec<u32> = weights
            .iter()
            .zip(&draining)
            .map(|(w, d)| if *d { 0 } else { *w })
            .collect();
        let max_w = effective.iter().copied().max().unwrap_or(0);
        let mut rr_seq = Vec::new();
        for round in 0..max_w {
            for (i, w) in effective.iter().enumerate() {
                if *w > round {
                    rr_seq.push(i);
                }
            }
        }
        let ketama = match cfg.balance {
            Balance::Hash { .. } => {
                let mut set = BTreeSet::new();
                let mut idx = HashMap::new();
                for (i, s) in cfg.servers.iter().enumerate() {
                    if effective[i] == 0 {
                        continue;
                    }
                    if let Ok(b) =
                        Backend::new_with_weight(&s.addr.to_string(), effective[i] as usize)
                    {
                        idx.insert(b.addr.clone(), i);
                        set.insert(b);
                    }
                }
                Some((Arc::new(KetamaHashing::build(&set)), idx))
            }
            _ => None,
        };
        Balancer {
            weights,
            draining,
            effective,
            rr_seq,
            ketama,
        }
    }
}

/// A server's state as `show stat` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStatus {
    /// Passing its health checks (or passively up) and taking traffic.
    Up,
    /// Up, but without active health checks (HAProxy `no check`).
    NoCheck,
    /// Out of health (failed checks or passive detection).
    Down,
    /// Disabled by an operator (`disable server`).
    Maint,
    /// Up in drain mode or with weight 0: takes only requests pinned to it.
    Drain,
}

impl ServerStatus {
    /// HAProxy's spelling in `show stat`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Up => "UP",
            ServerStatus::NoCheck => "no check",
            ServerStatus::Down => "DOWN",
            ServerStatus::Maint => "MAINT",
            ServerStatus::Drain => "DRAIN",
        }
    }
}

/// `set server ... state`: HAProxy's administrative states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Neither in maintenance nor draining.
    Ready,
    /// Drain mode: no balanced request (pinned ones still); leaves maintenance.
    Drain,
    /// Maintenance (`disable server`): no new request at all; drain mode is kept.
    Maint,
}

impl AdminState {
    /// `ready`, `drain` or `maint`.
    pub fn parse(s: &str) -> Option<AdminState> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }
}

/// Why a runtime change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("Absolute weight can only be between 0 and {MAX_WEIGHT} inclusive.")]
    OutOfRange,
    #[error("Relative weight must be positive.")]
    NegativePercent,
    #[error("Require <weight> or <weight%>.")]
    Malformed,
}

/// Parses `N` (absolute) or `N%` (of the configured weight), HAProxy's `set weight` syntax.
pub fn parse_weight(arg: &str, initial: u32) -> Result<u32, WeightError> {
    let w = if let Some(p) = arg.strip_suffix('%') {
        let p: i64 = p.parse().map_err(|_| WeightError::Malformed)?;
        if p < 0 {
            return Err(WeightError::NegativePercent);
        }
        // HAProxy rounds up so that a non-zero percentage of a non-zero weight stays non-zero.
        (i64::from(initial) * p + 99) / 100
    } else {
        arg.parse::<i64>().map_err(|_| WeightError::Malformed)?
    };
    match u32::try_from(w) {
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        _ => Err(WeightError::OutOfRange),
    }
}

impl Upstream {
    /// Weight of server `i` as set (config or `set weight`), drain mode aside.
    pub fn weight(&self, i: usize) -> u32 {
        self.balancer.load().weights.get(i).copied().unwrap_or(0)
    }

    /// Weight of server `i` as balancing uses it: 0 in drain mode.
    pub fn effective_weight(&self, i: usize) -> u32 {
        self.balancer.load().effective.get(i).copied().unwrap_or(0)
    }

    /// Whether server `i` is in drain mode (`set server ... state drain`).
    pub fn is_draining(&self, i: usize) -> bool {
        self.balancer
            .load()
            .draining
            .get(i)
            .copied()
            .unwrap_or(false)
    }

    /// Sets server `i`'s weight for the next balancing decisions; returns the old weight.
    pub fn set_weight(&self, i: usize, weight: u32) -> u32 {
        let _w = self.weight_writer.lock();
        let cur = self.balancer.load();
        let mut weights = cur.weights.clone();
        let old = std::mem::replace(&mut weights[i], weight);
        if old != weight {
            self.balancer.store(Arc::new(Balancer::build(
                &self.cfg,
                weights,
                cur.draining.clone(),
            )));
            self.servers[i].state.counters.touch();
        }
        old
    }

    /// Puts server `i` in drain mode (no balanced request, pinned ones still) or out of it;
    /// returns true when that changed something.
    pub fn set_draining(&self, i: usize, draining: bool) -> bool {
        let _w = self.weight_writer.lock();
        let cur = self.balancer.load();
        if cur.draining[i] == draining {
            return false;
        }
        let mut d = cur.draining.clone();
        d[i] = draining;
        self.balancer
            .store(Arc::new(Balancer::build(&self.cfg, cur.weights.clone(), d)));
        self.servers[i].state.counters.touch();
        true
    }

    /// Disables (`true`, maintenance) or enables server `i`; returns true when that changed
    /// something.
    pub fn set_disabled(&self, i: usize, disabled: bool) -> bool {
        self.servers[i].state.set_drained(disabled)
    }

    /// Sets server `i`'s administrative state as HAProxy's `set server ... state` does;
    /// returns true when that changed something.
    pub fn set_admin_state(&self, i: usize, state: AdminState) -> bool {
        match state {
            AdminState::Ready => self.set_disabled(i, false) | self.set_draining(i, false),
            AdminState::Drain => self.set_disabled(i, false) | self.set_draining(i, true),
            AdminState::Maint => self.set_disabled(i, true),
        }
    }

    /// Back to the config: every server enabled at its configured weight. A config reload
    /// calls this on every upstream, as HAProxy forgets runtime changes on reload.
    pub fn reset_runtime(&self) {
        let _w = self.weight_writer.lock();
        let weights: Vec<u32> = self.cfg.servers.iter().map(|s| s.weight).collect();
        let draining = vec![false; weights.len()];
        let cur = self.balancer.load();
        if cur.weights != weights || cur.draining != draining {
            self.balancer
                .store(Arc::new(Balancer::build(&self.cfg, weights, draining)));
        }
        for s in &self.servers {
            s.state.set_drained(false);
        }
    }

    /// Counts a slot given on server `i` (after the permit was granted).
    pub fn note_granted(&self, i: usize) {
        let c = &self.servers[i].state.counters;
        c.total.fetch_add(1, Ordering::Relaxed);
        c.max_inflight
            .fetch_max(self.admission.inflight(i), Ordering::Relaxed);
        self.max_inflight_seen
            .fetch_max(self.admission.total_inflight(), Ordering::Relaxed);
    }

    /// Counts a failed connection to server `i`.
    pub fn note_connect_error(&self, i: usize) {
        self.servers[i]
            .state
            .counters
            .connect_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether server `i` may take a request the balancer picks (usable, effective weight
    /// above 0).
    pub fn balanceable(&self, i: usize) -> bool {
        self.is_usable(i) && self.effective_weight(i) > 0
    }

    /// Server `i`'s state for `show stat`.
    pub fn status(&self, i: usize) -> ServerStatus {
        let st = &self.servers[i].state;
        if st.is_drained() {
            ServerStatus::Maint
        } else if !st.is_healthy() {
            ServerStatus::Down
        } else if self.effective_weight(i) == 0 {
            ServerStatus::Drain
        } else if self.cfg.health.is_some() {
            ServerStatus::Up
        } else {
            ServerStatus::NoCheck
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use std::path::Path;

    fn upstream(balance: &str) -> Upstream {
        let y = format!(
            "listeners: [{{ bind: \"127.0.0.1:0\" }}]\nupstreams:\n  u: {{ balance: {balance}, hash_key: \"header:x-k\", servers: [{{ name: a, addr: \"127.0.0.1:1\" }}, {{ name: b, addr: \"127.0.0.1:2\" }}] }}\nroutes: [{{ name: r, upstream: u }}]\n"
        );
        let cfg = parse_config(&y, Path::new("t.yaml")).unwrap();
        Upstream::build(
            &cfg.upstreams["u"],
            &|_| None,
            &crate::metrics::Metrics::new(),
        )
    }

    #[test]
    fn weights_parse_as_haproxy_does() {
        assert_eq!(parse_weight("3", 1), Ok(3));
        assert_eq!(parse_weight("50%", 3), Ok(2), "rounded up");
        assert_eq!(parse_weight("0%", 3), Ok(0));
        assert_eq!(parse_weight("257", 1), Err(WeightError::OutOfRange));
        assert_eq!(parse_weight("-1", 1), Err(WeightError::OutOfRange));
        assert_eq!(parse_weight("x", 1), Err(WeightError::Malformed));
    }

    #[test]
    fn a_weight_change_reshapes_round_robin_and_weight_0_leaves_balancing() {
        let u = upstream("round_robin");
        assert_eq!(u.set_weight(0, 3), 1, "old weight");
        let mut counts = [0usize; 2];
        for _ in 0..400 {
            counts[u.choose(&[0, 1], None)] += 1;
        }
        assert_eq!(counts, [300, 100], "3:1 after set weight");
        u.set_weight(1, 0);
        assert_eq!(u.eligible(&[]), super::super::Eligible::Servers(vec![0]));
        assert_eq!(u.status(1), ServerStatus::Drain);
        assert!(u.is_usable(1), "a pinned request may still use it");
        u.reset_runtime();
        assert_eq!((u.weight(0), u.weight(1)), (1, 1), "reload restores config");
    }

    #[test]
    fn a_disabled_server_is_not_eligible_nor_usable_until_enabled() {
        let u = upstream("least_conn");
        assert!(u.set_disabled(0, true));
        assert!(!u.set_disabled(0, true), "no change the second time");
        assert_eq!(u.eligible(&[]), super::super::Eligible::Servers(vec![1]));
        assert!(!u.is_usable(0));
        assert_eq!(u.status(0), ServerStatus::Maint);
        u.reset_runtime();
        assert_eq!(u.status(0), ServerStatus::NoCheck);
    }

    #[test]
    fn drain_mode_takes_the_server_out_of_balancing_and_ready_gives_its_weight_back() {
        let u = upstream("round_robin");
        u.set_weight(0, 4);
        assert!(u.set_admin_state(0, AdminState::Drain));
        assert_eq!((u.weight(0), u.effective_weight(0)), (4, 0));
        assert_eq!(u.eligible(&[]), super::super::Eligible::Servers(vec![1]));
        assert_eq!(u.status(0), ServerStatus::Drain);
        assert!(u.set_admin_state(0, AdminState::Maint));
        assert_eq!(u.status(0), ServerStatus::Maint);
        assert!(u.set_admin_state(0, AdminState::Ready));
        assert_eq!(u.effective_weight(0), 4, "the weight set before draining");
        assert!(!u.set_admin_state(0, AdminState::Ready), "no change");
    }

    #[test]
    fn a_weight_0_server_leaves_the_hash_ring() {
        let u = upstream("hash");
        u.set_weight(0, 0);
        for k in 0..50 {
            let key = format!("node-{k}");
            assert_eq!(u.choose(&[0, 1], Some(key.as_bytes())), 1, "{key}");
        }
    }
}
