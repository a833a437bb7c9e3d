//! The lifecycle as an observable phase machine, and the shutdown sequence.
//!
//! SIGTERM: readiness turns 503 at once (`Draining`), the gateway keeps serving for
//! `shutdown.pre_drain` so outer load balancers notice, then waits for in-flight requests to
//! finish (at most `shutdown.drain`), then closes listeners and exits. Pingora's own grace
//! period (an unconditional 300 s sleep by default) is set to zero: we drain before handing
//! control back. SIGINT stops at once.

use crate::state::AppState;
use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Config loaded, first health round not finished: not ready.
    Starting,
    Running,
    /// Readiness answers 503; requests are still served.
    Draining,
    /// Listeners closing; the process is about to exit.
    Stopping,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Starting,
        Phase::Running,
        Phase::Draining,
        Phase::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
        }
    }
}

/// Replaces Pingora's signal watcher to make shutdown readiness-first and bounded.
///
/// With `inner: None` it listens to the process signals; with `Some(watcher)` (tests, embedders)
/// it waits for that watcher instead, and a `GracefulTerminate` from it goes through the same
/// drain as SIGTERM.
pub struct PhasedShutdown {
    pub state: Arc<AppState>,
    pub inner: Option<Box<dyn ShutdownSignalWatch + Send + Sync>>,
}

impl PhasedShutdown {
    async fn unix_signal(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
        }
    }

    /// Readiness 503, serve for `pre_drain`, wait for in-flight requests (at most `drain`).
    async fn drain(&self) {
        let sd = self.state.snapshot().config.shutdown.clone();
        log::info!(
            "graceful stop: readiness now 503; serving for pre_drain {:?}, then draining up to {:?}",
            sd.pre_drain, sd.drain
        );
        self.state.set_phase(Phase::Draining);
        tokio::time::sleep(sd.pre_drain).await;
        let start = Instant::now();
        loop {
            let n = self.state.inflight.load(Ordering::Acquire);
            if n == 0 {
                log::info!("drained after {:?}", start.elapsed());
                break;
            }
            if start.elapsed() >= sd.drain {
                log::warn!(
                    "drain budget {:?} spent with {n} requests still in flight; stopping",
                    sd.drain
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for PhasedShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let sig = match &self.inner {
            Some(w) => w.recv().await,
            None => self.unix_signal().await,
        };
        match sig {
            ShutdownSignal::FastShutdown => {
                log::info!("fast shutdown: stopping now");
                self.state.set_phase(Phase::Stopping);
                ShutdownSignal::FastShutdown
            }
            ShutdownSignal::GracefulUpgrade => {
                log::info!("graceful upgrade: handing listeners to the new process");
                self.state.set_phase(Phase::Draining);
                ShutdownSignal::GracefulUpgrade
            }
            ShutdownSignal::GracefulTerminate => {
                // A second SIGINT during the drain still stops at once.
                let fast = async {
                    match &self.inner {
                        Some(_) => std::future::pending::<()>().await,
                        None => {
                            if let Ok(mut int) = tokio::signal::unix::signal(
                                tokio::signal::unix::SignalKind::interrupt(),
                            ) {
                                int.recv().await;
                            } else {
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = self.drain() => {}
                    _ = fast => {}
                }
                self.state.set_phase(Phase::Stopping);
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}
