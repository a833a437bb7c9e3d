//! Config reload: parse, validate, build (reusing unchanged parts), swap. On any failure the
//! running snapshot stays and every error is reported. One writer at a time.

use crate::config::{load_config, Config, ConfigErrors};
use crate::state::{AppState, Snapshot};
use std::sync::Arc;

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadReport {
    pub version: u64,
    /// Settings that changed in the file but only take effect after a restart.
    pub needs_restart: Vec<String>,
    /// Errors of the Lua scripts, which were refused (the last good policy keeps running).
    pub policy_errors: Vec<String>,
}

/// Settings bound to sockets and threads; they are not changed by a reload.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    if old.listeners != new.listeners {
        v.push("listeners".to_string());
    }
    if old.server != new.server {
        v.push("server".to_string());
    }
    if old.admin != new.admin {
        v.push("admin".to_string());
    }
    if old.cache != new.cache {
        v.push("cache".to_string());
    }
    v
}

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
pub fn reload_blocking(state: &Arc<AppState>) -> Result<ReloadReport, ConfigErrors> {
    let _w = state.writer.lock();
    let result = load_config(&state.config_path);
    let prev = state.snapshot();
    let outcome = result.and_then(|mut cfg| {
        let needs_restart = restart_only_changes(&prev.config, &cfg);
        // why: socket-bound settings keep their running values, so the snapshot always
        // describes what the process really does
        cfg.listeners = prev.config.listeners.clone();
        cfg.server = prev.config.server.clone();
        cfg.admin = prev.config.admin.clone();
        cfg.cache = prev.config.cache.clone();
        let version = state.next_version();
        Snapshot::build(cfg, Some(&prev), version).map(|s| (s, needs_restart))
    });
    match outcome {
        Ok((snap, needs_restart)) => {
            let version = snap.version;
            let policy_changed =
                prev.config.policy != snap.config.policy || snap.config.policy.is_some();
            // why: as HAProxy without a server-state-file, a reload forgets runtime changes
            // (disable server, set weight): the file says what the servers are
            for up in snap.upstreams.values() {
                up.reset_runtime();
            }
            state.publish(snap);
            // A broken script keeps the running policy; the config itself is still applied.
            let policy_errors = match policy_changed.then(|| crate::policysync::reload(state)) {
                Some(Err(e)) => e.0.iter().map(|x| x.to_string()).collect(),
                _ => Vec::new(),
            };
            state.preset_metrics();
            state
                .metrics
                .reloads
                .with_label_values(&["config", "ok"])
                .inc();
            if needs_restart.is_empty() {
                log::info!("reload: config version {version} is live");
            } else {
                log::warn!("reload: config version {version} is live; changes to {} need a restart to take effect", needs_restart.join(", "));
            }
            *state.last_reload.lock() = Some(format!("ok: version {version}"));
            Ok(ReloadReport {
                version,
                needs_restart,
                policy_errors,
            })
        }
        Err(errs) => {
            state
                .metrics
                .reloads
                .with_label_values(&["config", "error"])
                .inc();
            log::error!("reload refused, keeping version {}:\n{errs}", prev.version);
            *state.last_reload.lock() = Some(format!("error: {}", errs.0.len()));
            Err(errs)
        }
    }
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
