//! The listening sockets: when they stop accepting, and how they are handed to a new process.
//!
//! Pingora stops accepting only when its own shutdown watch flips, which happens after the
//! shutdown watcher ([`crate::lifecycle::PhasedShutdown`]) has returned, so the drain would run
//! while the listeners still accept. [`Intake`] is a second watch that the gateway's services
//! get instead (through [`Gated`]): the shutdown sequence closes it after `pre_drain`, the
//! listeners stop, and the process stays up until nothing is in flight. It also keeps the
//! listening sockets table so a graceful upgrade can send the sockets to the new process
//! itself (Pingora's `transfer_fd`), before the drain, instead of after it.
//!
//! [`Draining`] keeps kept-alive connections open until the drain has ended: a request that
//! arrives on one after the listeners stopped is still answered (with `Connection: close`),
//! where Pingora would drop the idle connection at once and the client would see a reset.

use crate::lifecycle::Phase;
use crate::state::AppState;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Whether the gateway's listeners accept new connections, and the sockets they listen on.
pub struct Intake {
    closed: watch::Sender<bool>,
    fds: parking_lot::Mutex<Option<ListenFds>>,
}

impl Intake {
    pub fn new() -> Arc<Intake> {
        Arc::new(Intake {
            closed: watch::channel(false).0,
            fds: parking_lot::Mutex::new(None),
        })
    }

    /// Stops every gated listener from accepting (idempotent). Connections already accepted
    /// go on.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// A watch that turns true when the listeners stop accepting.
    pub fn watch(&self) -> ShutdownWatch {
        self.closed.subscribe()
    }

    fn keep_fds(&self, fds: &ListenFds) {
        let mut slot = self.fds.lock();
        if slot.is_none() {
            *slot = Some(fds.clone());
        }
    }

    /// How many listening sockets the process holds (0 before the services have started).
    pub fn socket_count(&self) -> usize {
        self.fds
            .lock()
            .as_ref()
            .map(|f| f.lock().serialize().0.len())
            .unwrap_or(0)
    }

    /// Sends every listening socket over the UNIX socket at `path`, where a new process
    /// started with `run --upgrade` waits for them (blocking: Pingora retries the connection
    /// for about 5 s). Returns how many sockets were sent.
    pub fn hand_over(&self, path: &str) -> Result<usize, String> {
        let Some(fds) = self.fds.lock().clone() else {
            return Err("the listeners have not started yet".into());
        };
        let fds = fds.lock();
        if fds.is_empty() {
            return Err("there are no listening sockets to hand over".into());
        }
        let n = fds.serialize().0.len();
        fds.send_to_sock(path)
            .map(|_| n)
            .map_err(|e| format!("no new process took them at {path}: {e}"))
    }
}

/// A Pingora service whose listeners stop when the [`Intake`] closes (or when Pingora shuts
/// down, whichever comes first).
pub struct Gated<S> {
    pub inner: S,
    pub intake: Arc<Intake>,
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Gated<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        if let Some(f) = &fds {
            self.intake.keep_fds(f);
        }
        let intake = self.intake.clone();
        let mut pingora = shutdown;
        tokio::spawn(async move {
            while pingora.changed().await.is_ok() {
                if *pingora.borrow() {
                    intake.close();
                    return;
                }
            }
        });
        let watch = self.intake.watch();
        self.inner
            .start_service(fds, watch, listeners_per_fd, ready_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// An app whose kept-alive connections are dropped only when the process stops
/// ([`Phase::Stopping`]), not as soon as its listeners stop accepting.
pub struct Draining<A> {
    pub inner: Arc<A>,
    pub state: Arc<AppState>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Draining<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        // why: Pingora's cleanup wakes every connection parked between two requests and drops
        // it; a client that sent its next request at that moment sees a reset. Until the
        // drain ends those connections stay, and a request on one is answered with
        // `Connection: close` (the listeners have stopped, so Pingora marks it so).
        let mut phase = self.state.phase.subscribe();
        let _ = phase.wait_for(|p| *p == Phase::Stopping).await;
        self.inner.cleanup().await;
    }
}
