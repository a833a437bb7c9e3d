//! The files a change reads, read before the build: the config's map files and its Lua
//! scripts. Nothing here publishes; [`super::writer`] calls these under its lock, so what was
//! read belongs to the config being applied.

use crate::config::{Config, ConfigError, ConfigErrors, PolicyConfig};
use crate::policy::{PolicyError, PolicySettings};
use crate::state::snapshot::{MapFile, Snapshot};
use std::collections::HashMap;

/// The engine settings of a `policy:` section (defaults without one).
pub fn settings(p: Option<&PolicyConfig>) -> PolicySettings {
    let mut s = PolicySettings::default();
    if let Some(p) = p {
        s.budget = p.budget;
        s.memory_limit = usize::try_from(p.memory_limit).unwrap_or(usize::MAX);
    }
    s
}

/// Reads the scripts named by the config, as `(path, source)` in order.
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

/// Script errors as config errors under the `policy` key.
pub fn to_config_errors(file: &str, errs: Vec<PolicyError>) -> ConfigErrors {
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

/// Reads the map files a build of `config` on top of `prev` needs
/// ([`Snapshot::map_files_needed`]).
pub fn read_map_files(config: &Config, prev: Option<&Snapshot>) -> HashMap<String, MapFile> {
    Snapshot::map_files_needed(config, prev)
        .into_iter()
        .map(|(name, path)| {
            let read = match std::fs::read_to_string(&path) {
                Ok(text) => MapFile::Text(text),
                Err(e) => MapFile::Unreadable {
                    missing: e.kind() == std::io::ErrorKind::NotFound,
                    error: e.to_string(),
                },
            };
            (name, read)
        })
        .collect()
}
