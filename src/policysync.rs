//! Keeps the Lua policy engine in step with the config and the script files: a new version is
//! compiled and self-tested in a scratch VM before it replaces the running one; a broken one
//! is refused (`file:line: message`), counted, and the last good version keeps running.

use crate::config::{ConfigError, ConfigErrors, PolicyConfig};
use crate::policy::{PolicyEngine, PolicySettings};
use crate::state::AppState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub fn settings(p: Option<&PolicyConfig>) -> PolicySettings {
    let mut s = PolicySettings::default();
    if let Some(p) = p {
        s.budget = p.budget;
        s.memory_limit = usize::try_from(p.memory_limit).unwrap_or(usize::MAX);
    }
    s
}

/// Reads the scripts named by the config.
pub fn read_scripts(
    p: Option<&PolicyConfig>,
    file: &str,
) -> Result<Vec<(String, String)>, ConfigErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, path) in p
        .map(|p| p.scripts.as_slice())
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        match std::fs::read_to_string(path) {
            Ok(src) => out.push((path.display().to_string(), src)),
            Err(e) => errors.push(ConfigError {
                file: file.to_string(),
                path: format!("policy.scripts[{i}]"),
                message: format!("cannot read {}: {e}; check the path (relative paths start at the config file's folder)", path.display()),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn to_config_errors(file: &str, errs: Vec<crate::policy::PolicyError>) -> ConfigErrors {
    ConfigErrors(
        errs.into_iter()
            .map(|e| ConfigError {
                file: file.to_string(),
                path: "policy".into(),
                message: e.to_string(),
            })
            .collect(),
    )
}

/// Builds the engine for a config (an engine with no scripts when there is no policy).
pub fn load(p: Option<&PolicyConfig>, file: &str) -> Result<Arc<PolicyEngine>, ConfigErrors> {
    let scripts = read_scripts(p, file)?;
    PolicyEngine::load(scripts, settings(p)).map_err(|e| to_config_errors(file, e))
}

/// Reloads the engine from the current config's scripts.
pub fn reload(state: &AppState) -> Result<u64, ConfigErrors> {
    let snap = state.snapshot();
    let file = snap.config.file.display().to_string();
    let p = snap.config.policy.as_ref();
    let r = read_scripts(p, &file).and_then(|s| {
        state
            .policy
            .reload_with(s, settings(p))
            .map_err(|e| to_config_errors(&file, e))
    });
    match &r {
        Ok(g) => {
            state
                .metrics
                .policy_reloads
                .with_label_values(&["ok"])
                .inc();
            state
                .metrics
                .policy_version
                .set(i64::try_from(*g).unwrap_or(i64::MAX));
            state.preset_metrics();
            log::info!("policy: generation {g} is live");
        }
        Err(e) => {
            state
                .metrics
                .policy_reloads
                .with_label_values(&["error"])
                .inc();
            log::error!("policy reload refused, the last good version keeps running:\n{e}");
        }
    }
    r
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

/// Watches the script files; reloads the engine when one changes.
pub async fn watch_scripts(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let paths = |s: &AppState| {
        s.snapshot()
            .config
            .policy
            .as_ref()
            .map(|p| p.scripts.clone())
            .unwrap_or_default()
    };
    let mut seen = stamp(&paths(&state));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
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
