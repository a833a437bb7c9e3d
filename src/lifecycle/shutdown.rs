//! The lifecycle as an observable phase machine, and the stop and upgrade sequences.
//!
//! - SIGTERM: readiness turns 503 at once (`Draining`) while the gateway keeps serving for
//!   `shutdown.pre_drain` so outer load balancers notice; then the listeners stop accepting
//!   and every response says `Connection: close` (`Closing`); the process ends as soon as no
//!   request is in flight, at most `shutdown.drain` later (`Stopping`).
//! - SIGQUIT: the listening sockets (proxy and admin) go to a new process started with
//!   `floodgate run --upgrade` through the UNIX socket `server.upgrade_sock`
//!   (`Upgrading`); both serve for [`UPGRADE_OVERLAP`] while the new one gets ready, then this
//!   one closes and drains as above. If no new process takes the sockets, nothing changes.
//! - SIGUSR2: starts that new process itself (same binary path, same config, `--upgrade`),
//!   then does what SIGQUIT does: the way to upgrade under systemd, where the new process
//!   must be a child of the service.
//! - SIGINT: stops at once (also during a drain).
//!
//! `shutdown.ceiling` bounds the whole sequence: past it the process exits with status 1
//! whatever is still running. Pingora's own grace period (an unconditional 300 s sleep by
//! default) is set to zero: the sequence has drained before it hands control back.

use super::handoff::Intake;
use super::phase::Phase;
use crate::state::AppState;
use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an upgrading process keeps accepting after it sent its sockets, while the new
/// process runs its first health round (Pingora's `CLOSE_TIMEOUT` is the same 5 s).
pub const UPGRADE_OVERLAP: Duration = Duration::from_secs(5);

/// How long no request may have been in flight before the drain counts as done: a request on
/// a kept-alive connection may be on its way at the moment the count reaches zero.
const QUIET: Duration = Duration::from_millis(50);

/// Left for Pingora to stop its runtimes after the drain (`graceful_shutdown_timeout_seconds`).
pub const RUNTIME_EXIT: Duration = Duration::from_secs(1);

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Fast,
    Terminate,
    /// Hand the sockets to a process the operator started with `--upgrade`.
    Upgrade,
    /// Start the successor ourselves, then hand over.
    Successor,
}

/// Replaces Pingora's signal watcher to make shutdown readiness-first, bounded, and free of
/// accepts during the drain; and performs the socket hand-off of an upgrade itself.
///
/// With `inner: None` it listens to the process signals (and enforces `shutdown.ceiling` by
/// exiting); with `Some(watcher)` (tests, embedders) it waits for that watcher instead, and a
/// `GracefulTerminate` from it goes through the same sequence as SIGTERM.
pub struct PhasedShutdown {
    pub state: Arc<AppState>,
    pub intake: Arc<Intake>,
    pub inner: Option<Box<dyn ShutdownSignalWatch + Send + Sync>>,
}

impl PhasedShutdown {
    async fn next_request(&self) -> Request {
        if let Some(w) = &self.inner {
            return match w.recv().await {
                ShutdownSignal::FastShutdown => Request::Fast,
                ShutdownSignal::GracefulTerminate => Request::Terminate,
                ShutdownSignal::GracefulUpgrade => Request::Upgrade,
            };
        }
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::user_defined2()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return Request::Fast;
        };
        tokio::select! {
            _ = int.recv() => Request::Fast,
            _ = quit.recv() => Request::Upgrade,
            _ = usr2.recv() => Request::Successor,
            _ = term.recv() => Request::Terminate,
        }
    }

    /// Resolves on SIGINT (process signals only): a second, impatient stop.
    async fn interrupted(&self) {
        if self.inner.is_none() {
            if let Ok(mut int) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            {
                int.recv().await;
                return;
            }
        }
        std::future::pending::<()>().await
    }

    /// Exits the process once `ceiling` has passed since `since`, whatever still runs
    /// (process signals only: an embedder's process is not ours to end).
    fn arm_ceiling(&self, ceiling: Duration) {
        if self.inner.is_some() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("shutdown-ceiling".into())
            .spawn(move || {
                std::thread::sleep(ceiling);
                log::error!(
                    "shutdown.ceiling {} reached; exiting now",
                    humantime::format_duration(ceiling)
                );
                std::process::exit(1);
            });
        if let Err(e) = spawned {
            log::warn!("cannot arm the shutdown ceiling: {e}");
        }
    }

    /// SIGTERM: readiness 503 and serve for `pre_drain`, then close and drain.
    async fn terminate(&self, started: Instant) {
        let sd = self.state.snapshot().config.shutdown.clone();
        log::info!(
            "graceful stop: readiness now 503; serving for pre_drain {}, then closing the listeners and draining for at most {}",
            humantime::format_duration(sd.pre_drain),
            humantime::format_duration(sd.drain)
        );
        crate::sdnotify::notify("STOPPING=1");
        self.state.set_phase(Phase::Draining);
        tokio::time::sleep(sd.pre_drain).await;
        self.close_and_drain(started).await;
    }

    /// The path the new process listens on: the one in the config file now (the new process
    /// reads that file), else the running one.
    fn upgrade_sock(&self) -> String {
        crate::config::load_config(&self.state.config_path)
            .map(|c| c.server.upgrade_sock)
            .unwrap_or_else(|_| self.state.snapshot().config.server.upgrade_sock.clone())
    }

    /// Sends the listening sockets to the new process; false when nobody took them (the
    /// gateway then keeps running as before).
    async fn hand_over(&self, successor: bool) -> bool {
        if self.state.current_phase() != Phase::Running {
            log::warn!(
                "upgrade refused: the gateway is {}, not running",
                self.state.current_phase().as_str()
            );
            return false;
        }
        let path = self.upgrade_sock();
        if successor {
            if let Err(e) = spawn_successor(&self.state.config_path) {
                log::error!("upgrade: cannot start the new process: {e}; still running");
                return false;
            }
        }
        log::info!("upgrade: handing the listening sockets to the new process on {path}");
        let intake = self.intake.clone();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || intake.hand_over(&p)).await {
            Ok(Ok(n)) => {
                log::info!(
                    "upgrade: {n} listening sockets handed over on {path}; serving beside the new process for {}, then draining",
                    humantime::format_duration(UPGRADE_OVERLAP)
                );
                self.state.set_phase(Phase::Upgrading);
                true
            }
            Ok(Err(e)) => {
                log::error!("upgrade: {e}; still running (start `floodgate run -c FILE --upgrade` first, then send SIGQUIT)");
                false
            }
            Err(e) => {
                log::error!("upgrade: hand-over task failed: {e}; still running");
                false
            }
        }
    }

    /// Stops accepting, then waits until no request has been in flight for [`QUIET`], at most
    /// `shutdown.drain` (and never past the ceiling).
    async fn close_and_drain(&self, started: Instant) {
        let sd = self.state.snapshot().config.shutdown.clone();
        let left = sd
            .ceiling
            .saturating_sub(started.elapsed())
            .saturating_sub(RUNTIME_EXIT);
        let budget = sd.drain.min(left);
        self.state.set_phase(Phase::Closing);
        self.intake.close();
        let start = Instant::now();
        let mut last_busy = start;
        loop {
            let n = self.state.inflight.load(Ordering::Acquire);
            let now = Instant::now();
            if n > 0 {
                last_busy = now;
            } else if now.duration_since(last_busy) >= QUIET {
                log::info!("drained after {:?}", start.elapsed());
                return;
            }
            if start.elapsed() >= budget {
                log::warn!(
                    "drain budget {} spent with {n} requests still in flight; stopping",
                    humantime::format_duration(budget)
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `sequence` unless SIGINT comes first.
    async fn unless_interrupted(&self, sequence: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = sequence => {}
            _ = self.interrupted() => log::warn!("SIGINT during the drain: stopping now"),
        }
    }
}

/// Starts `floodgate run -c CONFIG --upgrade` from the binary file this process was started
/// from (its current version on disk: the point of an upgrade).
fn spawn_successor(config: &std::path::Path) -> std::io::Result<u32> {
    let exe = std::env::current_exe()?;
    // why: after the package manager replaced the binary, /proc/self/exe names the old,
    // deleted file; the new one is at the same path without the suffix
    let exe = std::path::PathBuf::from(
        exe.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
    );
    let child = std::process::Command::new(&exe)
        .arg("run")
        .arg("-c")
        .arg(config)
        .arg("--upgrade")
        .stdin(std::process::Stdio::null())
        .spawn()?;
    log::info!(
        "upgrade: started {} (pid {}) to take over",
        exe.display(),
        child.id()
    );
    Ok(child.id())
}

#[async_trait]
impl ShutdownSignalWatch for PhasedShutdown {
    async fn recv(&self) -> ShutdownSignal {
        loop {
            let req = self.next_request().await;
            let started = Instant::now();
            match req {
                Request::Fast => {
                    log::info!("fast shutdown: stopping now");
                    self.state.set_phase(Phase::Stopping);
                    return ShutdownSignal::FastShutdown;
                }
                Request::Terminate => {
                    self.arm_ceiling(self.state.snapshot().config.shutdown.ceiling);
                    self.unless_interrupted(self.terminate(started)).await;
                }
                Request::Upgrade | Request::Successor => {
                    if !self.hand_over(req == Request::Successor).await {
                        if self.inner.is_none() {
                            continue;
                        }
                        // an embedder's watcher would repeat the same answer: stop instead
                        self.unless_interrupted(self.terminate(started)).await;
                    } else {
                        self.arm_ceiling(self.state.snapshot().config.shutdown.ceiling);
                        self.unless_interrupted(async {
                            tokio::time::sleep(UPGRADE_OVERLAP).await;
                            self.close_and_drain(started).await;
                        })
                        .await;
                    }
                }
            }
            self.state.set_phase(Phase::Stopping);
            // why: the drain is done, so Pingora's graceful path (listeners already closed,
            // grace period 0) only has to stop the runtimes; its own upgrade path would send
            // the sockets a second time
            return ShutdownSignal::GracefulTerminate;
        }
    }
}
