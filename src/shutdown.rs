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
pub struct PhasedShutdown {
    pub state: Arc<AppState>,
}

#[async_trait]
impl ShutdownSignalWatch for PhasedShutdown {
    async fn recv(&self) -> ShutdownSignal {
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
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                self.state.set_phase(Phase::Stopping);
                return ShutdownSignal::FastShutdown;
            }
            _ = quit.recv() => {
                log::info!("SIGQUIT: graceful upgrade, handing listeners to the new process");
                self.state.set_phase(Phase::Draining);
                return ShutdownSignal::GracefulUpgrade;
            }
            _ = term.recv() => {}
        }
        let sd = self.state.snapshot().config.shutdown.clone();
        log::info!(
            "SIGTERM: readiness now 503; serving for pre_drain {:?}, then draining up to {:?}",
            sd.pre_drain,
            sd.drain
        );
        self.state.set_phase(Phase::Draining);
        let interrupted = tokio::select! {
            _ = tokio::time::sleep(sd.pre_drain) => false,
            _ = int.recv() => true,
        };
        if interrupted {
            self.state.set_phase(Phase::Stopping);
            return ShutdownSignal::FastShutdown;
        }
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
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = int.recv() => { self.state.set_phase(Phase::Stopping); return ShutdownSignal::FastShutdown; }
            }
        }
        self.state.set_phase(Phase::Stopping);
        ShutdownSignal::GracefulTerminate
    }
}
