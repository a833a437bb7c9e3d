//! Map commands of the Runtime API: `show|get|set|add|del|clear|prepare|commit map`, the
//! staged versions of `prepare map` / `add map @N` / `commit map @N`, and the [`MapStore`]
//! the caller implements over its live snapshot.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use super::command::{help_list, Command};
use super::RuntimeApi;
use crate::maps::{check_entry, MapSource, MapTable};

/// Most staged (prepared, uncommitted) versions kept; preparing one more drops
/// the oldest, so an abandoned script cannot pile them up.
pub const MAX_STAGED_VERSIONS: usize = 16;

pub(super) const UNKNOWN_MAP: &str = "Unknown map identifier. Please use #<id> or <file>.";

/// One map as listed by `show map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// Map name from the config.
    pub name: String,
    /// File the map is loaded from, if any (HAProxy scripts address maps by it).
    pub file: Option<PathBuf>,
    /// Current number of entries.
    pub entries: usize,
}

/// What a [`MapStore::replace`] stands for, which decides how strictly values are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Entries named by an operator (`set map`, `add map`, `del map`): a value naming no
    /// server refuses the change.
    Edit,
    /// A whole new map (`commit map`, `clear map`): the map's `on_unknown_value` applies.
    Whole,
}

/// The live maps, implemented by the caller over its snapshot.
pub trait MapStore: Send + Sync {
    /// All maps in a stable order (the position is the `#<id>`).
    fn list(&self) -> Vec<MapInfo>;
    /// The map name for a name or a file path; None when unknown.
    fn resolve(&self, name_or_file: &str) -> Option<String>;
    /// The current table of a map (by name).
    fn get(&self, map: &str) -> Option<Arc<MapTable>>;
    /// Validates and atomically swaps in new content; returns the new version,
    /// or a one-line reason (e.g. a value that names no server) and changes nothing.
    fn replace(
        &self,
        map: &str,
        entries: HashMap<String, String>,
        source: MapSource,
        change: Change,
    ) -> Result<u64, String>;
}

#[derive(Debug, Default)]
pub(super) struct Staging {
    pub(super) versions: BTreeMap<(String, u64), HashMap<String, String>>,
    last_prepared: HashMap<String, u64>,
    /// Order of preparation, for evicting the oldest.
    order: Vec<(String, u64)>,
}

impl RuntimeApi {
    /// Executes a map command; answers an unknown command otherwise.
    pub(super) fn execute_map(&self, cmd: Command, store: &dyn MapStore) -> String {
        match cmd {
            Command::ShowMaps => show_maps(store),
            Command::ShowMap { map, version } => self.with_map(store, &map, |name| match version {
                None => match store.get(name) {
                    Some(t) => dump(t.sorted().into_iter()),
                    None => String::new(),
                },
                Some(v) => match self.staging.lock().versions.get(&(name.to_string(), v)) {
                    Some(entries) => {
                        let mut sorted: Vec<(&str, &str)> =
                            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        sorted.sort_unstable();
                        dump(sorted.into_iter())
                    }
                    None => String::new(),
                },
            }),
            Command::GetMap { map, key } => self.with_map(store, &map, |name| {
                match store.get(name).as_deref().and_then(|t| t.get(&key)) {
                    Some(v) => format!(
                        "type=str, case=sensitive, found=yes, idx=tree, key=\"{key}\", value=\"{v}\", type=\"str\""
                    ),
                    None => "type=str, case=sensitive, found=no".to_string(),
                }
            }),
            Command::SetMap { map, key, value } => self.with_map(store, &map, |name| {
                if let Err(e) = check_entry(&key, &value) {
                    return format!("{e}.");
                }
                self.modify(store, name, |m| match m.get_mut(&key) {
                    Some(slot) => {
                        *slot = value.clone();
                        Ok(())
                    }
                    None => Err("entry not found.".to_string()),
                })
            }),
            Command::AddMap { map, version, entries } => self.with_map(store, &map, |name| {
                if let Some(e) = entries.iter().find_map(|(k, v)| check_entry(k, v).err()) {
                    return format!("{e}.");
                }
                match version {
                    None => self.modify(store, name, |m| {
                        m.extend(entries.iter().cloned());
                        Ok(())
                    }),
                    Some(v) => self.with_staged(name, v, |m| m.extend(entries.iter().cloned())),
                }
            }),
            Command::DelMap { map, key } => self.with_map(store, &map, |name| {
                self.modify(store, name, |m| match m.remove(&key) {
                    Some(_) => Ok(()),
                    None => Err("Key not found.".to_string()),
                })
            }),
            Command::ClearMap { map, version } => self.with_map(store, &map, |name| match version {
                None => {
                    let _w = self.write_lock.lock();
                    match store.replace(name, HashMap::new(), MapSource::RuntimeApi, Change::Whole) {
                        Ok(_) => String::new(),
                        Err(e) => format!("{e}."),
                    }
                }
                Some(v) => self.with_staged(name, v, HashMap::clear),
            }),
            Command::PrepareMap { map } => {
                self.with_map(store, &map, |name| format!("New version created: {}", self.prepare(store, name)))
            }
            Command::CommitMap { map, version } => self.with_map(store, &map, |name| self.commit(store, name, version)),
            _ => help_list("Unknown command."),
        }
    }

    /// Resolves `<map>` (name, file or `#id`) and runs `f` with the name.
    fn with_map(&self, store: &dyn MapStore, map: &str, f: impl FnOnce(&str) -> String) -> String {
        match resolve(store, map) {
            Some(name) => f(&name),
            None => UNKNOWN_MAP.to_string(),
        }
    }

    /// Copy, change, replace the live map; empty answer on success.
    fn modify(
        &self,
        store: &dyn MapStore,
        name: &str,
        change: impl FnOnce(&mut HashMap<String, String>) -> Result<(), String>,
    ) -> String {
        let _w = self.write_lock.lock();
        let mut entries = store
            .get(name)
            .map(|t| t.content().to_entries())
            .unwrap_or_default();
        if let Err(e) = change(&mut entries) {
            return e;
        }
        match store.replace(name, entries, MapSource::RuntimeApi, Change::Edit) {
            Ok(_) => String::new(),
            Err(e) => format!("{e}."),
        }
    }

    fn with_staged(
        &self,
        name: &str,
        version: u64,
        change: impl FnOnce(&mut HashMap<String, String>),
    ) -> String {
        let mut st = self.staging.lock();
        let last = st.last_prepared.get(name).copied().unwrap_or(0);
        match st.versions.get_mut(&(name.to_string(), version)) {
            Some(m) => {
                change(m);
                String::new()
            }
            None if version > last => {
                "Version number in the future, please use 'prepare map' before.".to_string()
            }
            None => "Version number out of range.".to_string(),
        }
    }

    fn prepare(&self, store: &dyn MapStore, name: &str) -> u64 {
        let live = store.get(name).map(|t| t.version).unwrap_or(0);
        let mut st = self.staging.lock();
        let next = st.last_prepared.get(name).copied().unwrap_or(0).max(live) + 1;
        st.last_prepared.insert(name.to_string(), next);
        st.versions.insert((name.to_string(), next), HashMap::new());
        st.order.push((name.to_string(), next));
        while st.versions.len() > MAX_STAGED_VERSIONS {
            let oldest = st.order.remove(0);
            if st.versions.remove(&oldest).is_some() {
                log::warn!(
                    "runtime API: dropped uncommitted version @{} of map {}",
                    oldest.1,
                    oldest.0
                );
            }
        }
        let Staging {
            order, versions, ..
        } = &mut *st;
        order.retain(|k| versions.contains_key(k));
        next
    }

    fn commit(&self, store: &dyn MapStore, name: &str, version: u64) -> String {
        let key = (name.to_string(), version);
        let Some(entries) = self.staging.lock().versions.remove(&key) else {
            return "Version number out of range.".to_string();
        };
        let _w = self.write_lock.lock();
        match store.replace(name, entries.clone(), MapSource::RuntimeApi, Change::Whole) {
            Ok(_) => {
                // HAProxy purges all versions up to the committed one.
                let mut st = self.staging.lock();
                st.versions.retain(|(m, v), _| m != name || *v > version);
                let Staging {
                    order, versions, ..
                } = &mut *st;
                order.retain(|k| versions.contains_key(k));
                String::new()
            }
            Err(e) => {
                // Keep the staged version so the operator can fix and retry.
                self.staging.lock().versions.insert(key, entries);
                format!("{e}.")
            }
        }
    }
}

fn resolve(store: &dyn MapStore, map: &str) -> Option<String> {
    if let Some(id) = map.strip_prefix('#') {
        let id: usize = id.parse().ok()?;
        return store.list().into_iter().nth(id).map(|i| i.name);
    }
    store.resolve(map)
}

fn show_maps(store: &dyn MapStore) -> String {
    let mut out = String::from("# id (file) description");
    for (id, info) in store.list().into_iter().enumerate() {
        let shown = info
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| info.name.clone());
        let (ver, source) = store
            .get(&info.name)
            .map(|t| (t.version, t.source.as_str()))
            .unwrap_or((0, "empty"));
        let _ = write!(
            out,
            "\n{id} ({shown}) map '{}' source={source} entries:{}. curr_ver={ver} entry_cnt={}",
            info.name, info.entries, info.entries
        );
    }
    out
}

/// `0x<id> key value` lines; ids are positions in key order (display only).
fn dump<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in entries.enumerate() {
        let _ = writeln!(out, "0x{:012x} {k} {v}", i + 1);
    }
    out
}
