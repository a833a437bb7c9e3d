//! Config reload: parse, validate, build (reusing unchanged parts), swap, as one
//! [`Change::ConfigReload`]. On any failure the running snapshot stays and every error is
//! reported.

use super::writer::{Applied, Change, Refused};
use crate::config::ConfigErrors;
use crate::state::AppState;
use std::sync::Arc;

pub use super::writer::{restart_only_changes, ReloadReport};

/// Reloads the config file the gateway was started with.
pub async fn reload(state: &Arc<AppState>) -> Result<ReloadReport, ConfigErrors> {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || reload_blocking(&st)).await {
        Ok(r) => r,
        Err(e) => Err(ConfigErrors(vec![crate::config::ConfigError {
            file: state.config_path.display().to_string(),
            path: String::new(),
            message: format!("reload task failed: {e}"),
        }])),
    }
}

/// [`reload`] for callers off the async runtime (file I/O and parsing block).
pub fn reload_blocking(state: &AppState) -> Result<ReloadReport, ConfigErrors> {
    match state.apply(Change::ConfigReload) {
        Ok(Applied::Config(report)) => Ok(report),
        Err(Refused::Config(errs)) => Err(errs),
        other => Err(unexpected(state, other)),
    }
}

/// An answer of the writer that does not belong to the change (a bug, reported as an error).
fn unexpected(state: &AppState, r: Result<Applied, Refused>) -> ConfigErrors {
    ConfigErrors(vec![crate::config::ConfigError {
        file: state.config_path.display().to_string(),
        path: String::new(),
        message: format!("unexpected answer of the writer: {r:?}"),
    }])
}

/// Reloads on SIGHUP until shutdown.
pub async fn sighup_loop(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        log::error!("cannot listen for SIGHUP; reload through the admin API instead");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                crate::sdnotify::notify("RELOADING=1");
                let _ = reload(&state).await;
                crate::sdnotify::notify("READY=1");
            }
            _ = shutdown.changed() => return,
        }
    }
}
