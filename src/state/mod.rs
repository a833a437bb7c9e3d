//! Process-wide state: [`AppState`] holds the one hot [`Snapshot`] (through the control
//! plane's [`Writer`], the only way to publish one) and what is not hot-swapped: metrics, the
//! lifecycle phase, the in-flight count, the policy runtime and the response cache.

pub mod route;
pub mod snapshot;

pub use route::{Route, RouteLimit, Target};
pub use snapshot::{Built, Inputs, MapFile, Snapshot};

use crate::control::writer::{Applied, Change, Refused, Writer};
use crate::lifecycle::Phase;
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Process-wide state shared by the proxy, the admin API and background tasks.
pub struct AppState {
    /// The current snapshot and the one writer that replaces it.
    writer: Writer,
    pub metrics: Arc<Metrics>,
    pub config_path: PathBuf,
    pub phase: tokio::sync::watch::Sender<Phase>,
    /// Requests being handled now (for draining).
    pub inflight: AtomicUsize,
    /// Bearer token for the admin API (read from the environment at start).
    pub admin_token: Option<String>,
    /// The Lua policy runtime (shared dictionary, per-thread VMs); the generation a request
    /// runs is in its snapshot.
    pub policy: Arc<crate::policy::PolicyEngine>,
    /// The response cache (memory, and Redis/Valkey when configured).
    pub cache: crate::cache::ResponseCache,
    /// Key for hashing credentials into cache keys (same on every gateway sharing a Redis).
    pub cache_secret: Vec<u8>,
}

impl AppState {
    /// `metrics`: the registry whose handles `snapshot` holds (see [`first_snapshot`]).
    ///
    /// [`first_snapshot`]: crate::control::writer::first_snapshot
    pub fn new(
        snapshot: Snapshot,
        config_path: PathBuf,
        policy: Arc<crate::policy::PolicyEngine>,
        cache: crate::cache::ResponseCache,
        metrics: Arc<Metrics>,
    ) -> Arc<AppState> {
        let admin_token = snapshot
            .config
            .admin
            .token_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .filter(|t| !t.is_empty());
        let (phase, _) = tokio::sync::watch::channel(Phase::Starting);
        let state = Arc::new(AppState {
            writer: Writer::new(
                snapshot,
                config_path.clone(),
                policy.clone(),
                metrics.clone(),
            ),
            metrics,
            config_path,
            phase,
            inflight: AtomicUsize::new(0),
            admin_token,
            policy,
            cache,
            cache_secret: std::env::var("FLOODGATE_CACHE_SECRET")
                .unwrap_or_else(|_| "floodgate-default-cache-key".into())
                .into_bytes(),
        });
        // (the snapshot's handles made the series of its routes and upstreams)
        let snap = state.snapshot();
        state.metrics.preset_config(&snap.config);
        state.metrics.preset_policy(&|h| snap.policy.has_hook(h));
        state
    }

    /// The current snapshot (one atomic load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.writer.current()
    }

    /// Applies one change through the one writer (blocking: it may read files and compile
    /// Lua; call it off the async workers). See [`crate::control`].
    pub fn apply(&self, change: Change<'_>) -> Result<Applied, Refused> {
        self.writer.apply(change)
    }

    /// The last config reload's outcome, for `/status`.
    pub fn last_reload(&self) -> Option<String> {
        self.writer.last_reload()
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
    fn upstreams(&self) -> Vec<Arc<crate::upstream::Upstream>> {
        self.snapshot().upstreams_in_order()
    }
}
