//! Keeps the Lua policy in step with the script files: a new version is compiled and
//! self-tested in a scratch VM, then published in the next snapshot ([`Change::PolicyReload`]);
//! a broken one is refused (`file:line: message`), counted, and the last good version keeps
//! running.

use super::writer::{Applied, Change, Refused};
use crate::config::{ConfigErrors, PolicyConfig};
use crate::policy::{CompiledPolicy, PolicyEngine};
use crate::state::AppState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

pub use super::inputs::{read_scripts, settings};

/// The policy runtime and generation 1 of a config's scripts (no hooks without a policy).
pub fn load(
    p: Option<&PolicyConfig>,
    file: &str,
) -> Result<(Arc<PolicyEngine>, Arc<CompiledPolicy>), ConfigErrors> {
    let engine = PolicyEngine::new(settings(p).shared_max_keys);
    let compiled = super::writer::compile_policy(&engine, p, file, 1)?;
    Ok((engine, compiled))
}

/// Recompiles the current config's scripts and publishes them; the new generation.
pub fn reload(state: &AppState) -> Result<u64, ConfigErrors> {
    match state.apply(Change::PolicyReload) {
        Ok(Applied::Policy { generation }) => Ok(generation),
        Err(Refused::Policy(e)) => Err(e),
        other => Err(ConfigErrors(vec![crate::config::ConfigError {
            file: state.config_path.display().to_string(),
            path: "policy".into(),
            message: format!("unexpected answer of the writer: {other:?}"),
        }])),
    }
}

fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| m.modified().ok().map(|t| (t, m.len())))
        })
        .collect()
}

/// Watches the script files; reloads the policy when one changes.
pub async fn watch_scripts(
    state: Arc<AppState>,
    files: Arc<super::watch::FileEvents>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let paths = |s: &AppState| {
        s.snapshot()
            .config
            .policy
            .as_ref()
            .map(|p| p.scripts.clone())
            .unwrap_or_default()
    };
    let mut seen = stamp(&paths(&state));
    let mut events = files.subscribe();
    loop {
        let followed = paths(&state);
        files.follow(followed.iter().map(PathBuf::as_path));
        tokio::select! {
            _ = events.next() => {}
            _ = shutdown.changed() => return,
        }
        let now = stamp(&paths(&state));
        if now != seen {
            seen = now;
            let st = state.clone();
            let _ = tokio::task::spawn_blocking(move || reload(&st)).await;
        }
    }
}
