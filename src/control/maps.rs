//! Live map updates: every source (file change, admin API, poller, Runtime API) becomes one
//! [`Change::MapEdit`] for the writer, which validates the new content, publishes a snapshot
//! that differs only in that map (one new version), counts the update and, with
//! `persist: true`, writes API changes to the file.
//!
//! Which source wins: the last update wins, whatever its source. A file change is applied
//! when the file changes (so an API edit persists until the file is edited, or forever with
//! `persist: true`, which writes it to the file); a poller applies only when its answer
//! changes. A config reload keeps the live content of maps whose config did not change.

use super::writer::{Applied, Change, MapEdit, Refused, Writer};
use crate::maps::{
    load_map_text, FileWatch, Loaded, MapContent, MapError, MapSource, MapTable, OnUnknownValue,
};
use crate::runtime_api::{self, MapInfo, MapStore};
use crate::state::{AppState, Snapshot};
use std::collections::HashMap;
use std::sync::Arc;

pub use super::writer::log_warnings;

/// Applies one map change through the writer; the map's version or why not.
fn apply(
    state: &AppState,
    map: &str,
    edit: MapEdit,
    source: MapSource,
    still_current: Option<&dyn Fn() -> bool>,
) -> Result<u64, String> {
    let change = Change::MapEdit {
        map: map.to_string(),
        edit,
        source,
        still_current,
    };
    match state.apply(change) {
        Ok(Applied::Map { version }) => Ok(version),
        Err(Refused::Map(e)) => Err(e),
        other => Err(format!("unexpected answer of the writer: {other:?}")),
    }
}

/// Validates and swaps in new content for `name`. Returns the new map version. A
/// [`runtime_api::Change::Whole`] map follows the map's `on_unknown_value`; a
/// [`runtime_api::Change::Edit`] is strict.
pub fn replace_map(
    state: &AppState,
    name: &str,
    entries: HashMap<String, String>,
    source: MapSource,
    change: runtime_api::Change,
) -> Result<u64, String> {
    match MapContent::from_entries(entries) {
        Ok(content) => {
            let unknown = match change {
                runtime_api::Change::Whole => None,
                runtime_api::Change::Edit => Some(OnUnknownValue::Error),
            };
            apply(
                state,
                name,
                MapEdit::Replace { content, unknown },
                source,
                None,
            )
        }
        Err(e) => {
            Writer::count_map(&state.metrics, name, &source, "error");
            Err(format!("refused: {e}"))
        }
    }
}

/// Validates a whole new `content` against the running config (each distinct value once,
/// following the map's `on_unknown_value`), then swaps a snapshot that differs only in this
/// map. Unchanged content keeps the current version.
pub fn replace_content(
    state: &AppState,
    name: &str,
    content: MapContent,
    source: MapSource,
) -> Result<u64, String> {
    let edit = MapEdit::Replace {
        content,
        unknown: None,
    };
    apply(state, name, edit, source, None)
}

/// Sets `set` and removes `delete` in the live map, as one new version (the current content
/// is read under the writer lock, so concurrent edits are not lost). O(entries).
pub fn edit_entries(
    state: &AppState,
    name: &str,
    set: &HashMap<String, String>,
    delete: &[&str],
    source: MapSource,
) -> Result<u64, String> {
    let edit = MapEdit::Entries {
        set: set.clone(),
        delete: delete.iter().map(|d| d.to_string()).collect(),
    };
    apply(state, name, edit, source, None)
}

/// Parses map text and applies it, with line-numbered errors.
pub fn replace_map_text(
    state: &AppState,
    name: &str,
    text: &str,
    origin: &str,
    source: MapSource,
) -> Result<u64, String> {
    replace_parsed(
        state,
        name,
        text.len(),
        source,
        None,
        |allowed, previous, policy| load_map_text(text, origin, allowed, previous, policy),
    )
}

/// [`replace_map_text`] for content read from the map file: applied only if `still_current`
/// (checked under the writer lock) says the file is still what was read. Why: with
/// `persist: true` an API edit rewrites the file between the watcher's read and its apply, and
/// the stale read would undo that edit (the next poll reads the new file instead).
pub fn replace_map_text_from_file(
    state: &AppState,
    name: &str,
    text: &str,
    origin: &str,
    source: MapSource,
    still_current: &dyn Fn() -> bool,
) -> Result<u64, String> {
    replace_parsed(
        state,
        name,
        text.len(),
        source,
        Some(still_current),
        |allowed, previous, policy| load_map_text(text, origin, allowed, previous, policy),
    )
}

/// [`replace_map_text`] for a request body as received, chunk by chunk (no contiguous copy).
pub fn replace_map_chunks(
    state: &AppState,
    name: &str,
    chunks: &[bytes::Bytes],
    origin: &str,
    source: MapSource,
) -> Result<u64, String> {
    let len = chunks.iter().map(|c| c.len()).sum();
    replace_parsed(
        state,
        name,
        len,
        source,
        None,
        |allowed, previous, policy| {
            crate::maps::load_map_chunks(chunks, origin, allowed, previous, policy)
        },
    )
}

/// Runs `parse` with the running config's value check and the running content (to reuse its
/// key index), then applies the result; errors are counted and joined one per line.
fn replace_parsed(
    state: &AppState,
    name: &str,
    len: usize,
    source: MapSource,
    still_current: Option<&dyn Fn() -> bool>,
    parse: impl FnOnce(
        &dyn Fn(&str) -> bool,
        Option<&MapContent>,
        crate::maps::MapPolicy,
    ) -> Result<Loaded, Vec<MapError>>,
) -> Result<u64, String> {
    let started = std::time::Instant::now();
    let snap = state.snapshot();
    let allowed = |v: &str| Snapshot::map_value_allowed(&snap.config, &snap.upstreams, name, v);
    let previous = snap.maps.get(name).map(|t| t.content());
    let policy = snap
        .config
        .maps
        .get(name)
        .map_or(crate::maps::MapPolicy::STRICT, |m| m.policy);
    match parse(&allowed, previous, policy) {
        Ok(Loaded { content, warnings }) => {
            log_warnings(name, &warnings);
            let parsed = started.elapsed();
            // The parse already applied the policy; what is left would be a race with a reload.
            let edit = MapEdit::Replace {
                content,
                unknown: Some(OnUnknownValue::Error),
            };
            let r = apply(state, name, edit, source, still_current);
            log::debug!(
                "map {name}: {len} bytes parsed in {parsed:?}, applied in {:?}",
                started.elapsed()
            );
            r
        }
        Err(errs) => {
            Writer::count_map(&state.metrics, name, &source, "error");
            Err(errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}

/// The live maps as seen by the HAProxy-compatible Runtime API.
pub struct LiveMaps(pub Arc<AppState>);

impl MapStore for LiveMaps {
    fn list(&self) -> Vec<MapInfo> {
        let snap = self.0.snapshot();
        snap.config
            .maps
            .values()
            .map(|mc| MapInfo {
                name: mc.name.clone(),
                file: mc.file.clone(),
                entries: snap.maps.get(&mc.name).map(|m| m.len()).unwrap_or(0),
            })
            .collect()
    }

    fn resolve(&self, name_or_file: &str) -> Option<String> {
        let snap = self.0.snapshot();
        snap.config
            .maps
            .values()
            .find(|mc| {
                mc.name == name_or_file
                    || mc.file.as_ref().is_some_and(|f| {
                        f.to_str() == Some(name_or_file)
                            || f.canonicalize()
                                .ok()
                                .and_then(|c| c.to_str().map(|s| s == name_or_file))
                                .unwrap_or(false)
                    })
            })
            .map(|mc| mc.name.clone())
    }

    fn get(&self, map: &str) -> Option<Arc<MapTable>> {
        self.0.snapshot().maps.get(map).cloned()
    }

    fn replace(
        &self,
        map: &str,
        entries: HashMap<String, String>,
        source: MapSource,
        change: runtime_api::Change,
    ) -> Result<u64, String> {
        replace_map(&self.0, map, entries, source, change)
    }
}

/// Watches every map file of the current config and applies changes (in-place writes and
/// renames over the file alike).
pub async fn watch_files(
    state: Arc<AppState>,
    files: Arc<super::watch::FileEvents>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut watches: HashMap<String, FileWatch> = HashMap::new();
    let mut shutdown = shutdown;
    let mut events = files.subscribe();
    loop {
        let snap = state.snapshot();
        files.follow(
            snap.config
                .maps
                .values()
                .filter_map(|mc| mc.file.as_deref()),
        );
        for (name, mc) in &snap.config.maps {
            let Some(f) = &mc.file else { continue };
            let w =
                watches
                    .entry(name.clone())
                    .or_insert_with(|| match FileWatch::primed(f.clone()) {
                        Ok((w, _)) => w,
                        Err(_) => FileWatch::new(f.clone()),
                    });
            if w.path() != f.as_path() {
                *w = FileWatch::new(f.clone());
            }
            if !w.may_have_changed() {
                continue;
            }
            // Reading, hashing, parsing and swapping a large file is CPU work: all of it runs
            // on an idle-class thread, which takes the watch along and hands it back.
            let mut w = watches.remove(name).expect("inserted above");
            let origin = f.display().to_string();
            let (st, n, o, src) = (
                state.clone(),
                name.clone(),
                origin.clone(),
                MapSource::File(f.clone()),
            );
            let done = crate::maps::run_idle(move || {
                let r = match w.changed() {
                    Ok(Some(text)) => {
                        let current = || w.is_current();
                        let r =
                            replace_map_text_from_file(&st, &n, &text, &o, src, &current).map(Some);
                        crate::maps::reap(Box::new(text));
                        r
                    }
                    Ok(None) => Ok(None),
                    Err(e) => {
                        log::debug!("map {n}: cannot read {o}: {e}");
                        Ok(None)
                    }
                };
                (w, r)
            })
            .await;
            match done {
                Ok((w, r)) => {
                    watches.insert(name.clone(), w);
                    if let Err(e) = r {
                        log::error!("map {name}: the new content of {origin} was refused, keeping the running map:\n{e}");
                    }
                }
                Err(e) => log::error!("map {name}: {e}"),
            }
        }
        watches.retain(|n, _| snap.config.maps.contains_key(n));
        tokio::select! {
            _ = events.next() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Refreshes the `floodgate_map_entries` gauge (also done on every update).
pub fn refresh_gauges(state: &AppState) {
    let snap = state.snapshot();
    for (name, t) in &snap.maps {
        state
            .metrics
            .map_entries
            .with_label_values(&[name])
            .set(t.len() as i64);
    }
}
