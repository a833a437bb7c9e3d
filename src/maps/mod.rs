//! Named key → value maps in HAProxy map format, used to route a request by a
//! header value (e.g. `X-Node-Name: node1.example.com` → server `master1`).
//!
//! This module owns the pure pieces: the immutable [`MapTable`] the request path
//! reads (O(1) lookups behind the caller's `Arc`), the parsers for map text and
//! JSON, value validation, atomic persistence, and a polling file watcher.
//! The live snapshot and its swap belong to the caller; [`crate::runtime_api`] (HAProxy
//! Runtime API on a UNIX socket) and [`poller`] (periodic HTTP fetch) feed it.

mod persist;
mod policy;
pub mod poller;
mod table;
mod text;

pub use persist::rewrite_map_file;
pub use policy::{Loaded, MapPolicy, OnDuplicate, OnUnknownValue};
pub use table::{idle_priority, reap, run_idle, InsertError, MapBuilder, MapContent};
use text::Blocks;
pub use text::{
    load_map_chunks, load_map_text, parse_map_chunks_after, parse_map_text, parse_map_text_after,
    parse_map_text_with,
};

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Default interval of [`watch_file`] polling.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Where the current content of a map came from (shown by the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapSource {
    /// Loaded from (or re-read from) this file.
    File(PathBuf),
    /// Replaced through the HTTP admin API.
    Api,
    /// Fetched by the built-in poller from this URL.
    Poller(String),
    /// Changed through the HAProxy-compatible Runtime API socket.
    RuntimeApi,
    /// Never loaded: the map is empty.
    Empty,
}

impl MapSource {
    /// Short label: "file", "api", "poller", "runtime_api" or "empty".
    pub fn as_str(&self) -> &'static str {
        match self {
            MapSource::File(_) => "file",
            MapSource::Api => "api",
            MapSource::Poller(_) => "poller",
            MapSource::RuntimeApi => "runtime_api",
            MapSource::Empty => "empty",
        }
    }
}

/// One immutable version of a map. Never mutated after construction: a change
/// builds a new table and the caller swaps its `Arc`.
#[derive(Debug)]
pub struct MapTable {
    content: MapContent,
    /// Monotonic version assigned by the caller (0 = the initial empty table).
    pub version: u64,
    /// Where this content came from.
    pub source: MapSource,
    /// When this version was built.
    pub updated_at: SystemTime,
}

impl MapTable {
    /// A table of `content`, stamped with the current time.
    pub fn from_content(content: MapContent, version: u64, source: MapSource) -> Self {
        MapTable {
            content,
            version,
            source,
            updated_at: SystemTime::now(),
        }
    }

    /// A table of owned pairs (small maps, tests). Panics only past 4 GiB of keys.
    pub fn new(entries: HashMap<String, String>, version: u64, source: MapSource) -> Self {
        let content = MapContent::from_entries(entries).expect("map under 4 GiB");
        Self::from_content(content, version, source)
    }

    /// An empty table, version 0, source [`MapSource::Empty`].
    pub fn empty() -> Self {
        Self::from_content(MapContent::default(), 0, MapSource::Empty)
    }

    /// Exact (case-sensitive) lookup; O(1).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.content.get(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.content.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// The entries.
    pub fn content(&self) -> &MapContent {
        &self.content
    }

    /// Entries sorted by key, for display; O(n log n), not for the request path.
    pub fn sorted(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self.content.iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// HAProxy map text: one `key value` line per entry, sorted by key.
    /// Parses back with [`parse_map_text`] to the same entries.
    pub fn to_map_text(&self) -> String {
        let sorted = self.sorted();
        let size: usize = sorted.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let mut out = String::with_capacity(size);
        for (k, v) in sorted {
            out.push_str(k);
            out.push(' ');
            out.push_str(v);
            out.push('\n');
        }
        out
    }
}

/// One problem found in a map source. `Display`: `origin:line: message (fix: ...)`,
/// or `origin: message (fix: ...)` when no line applies (JSON, API bodies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {message} (fix: {fix})", LineSuffix(*.line))]
pub struct MapError {
    /// File name, URL or "api": whatever the caller passed as origin.
    pub origin: String,
    /// 1-based line number, when the source has lines.
    pub line: Option<usize>,
    /// What is wrong, naming the key and value.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

struct LineSuffix(Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, ":{n}"),
            None => Ok(()),
        }
    }
}

impl MapError {
    pub(crate) fn new(origin: &str, line: Option<usize>, message: String, fix: &str) -> Self {
        MapError {
            origin: origin.to_string(),
            line,
            message,
            fix: fix.to_string(),
        }
    }
}

pub(crate) fn bad_value(origin: &str, line: Option<usize>, key: &str, value: &str) -> MapError {
    MapError::new(
        origin,
        line,
        format!("{key:?} maps to {value:?}, which names no server"),
        "use a server defined in the config, or remove the entry",
    )
}

/// Checks a key and value can be stored and written back as map text: key
/// non-empty without whitespace, value non-empty without line breaks.
pub fn check_entry(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("key {key:?} is empty or contains whitespace"));
    }
    if key.starts_with('#') {
        return Err(format!(
            "key {key:?} starts with '#', which map files read as a comment"
        ));
    }
    if value.trim().is_empty() || value.chars().any(|c| c == '\n' || c == '\r') {
        return Err(format!(
            "value {value:?} for key {key:?} is empty or contains a line break"
        ));
    }
    Ok(())
}

/// Parses a JSON map body. Accepted shapes:
/// - an object of strings: `{"node1.example.com": "master1", ...}`;
/// - an array of objects, each with a string `"value"` and a string key in
///   `"key"` or, failing that, `"certname"`; other fields are ignored. This
///   takes PuppetDB fact answers directly, e.g.
///   `/pdb/query/v4/facts/puppet_master` →
///   `[{"certname":"node1","name":"puppet_master","value":"master1",...}]`.
///
/// Errors (all collected): not JSON, another shape, a non-string value, a key
/// or value [`check_entry`] rejects, a duplicate key in an array (naming both
/// indexes).
pub fn parse_map_json(text: &str, origin: &str) -> Result<HashMap<String, String>, Vec<MapError>> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        vec![MapError::new(
            origin,
            None,
            format!("body is not valid JSON: {e}"),
            "send a JSON object {\"key\":\"value\"} or an array of {\"key\":..,\"value\":..}",
        )]
    })?;
    let mut errors = Vec::new();
    let mut entries = HashMap::new();
    match doc {
        serde_json::Value::Object(obj) => {
            entries.reserve(obj.len());
            for (key, value) in obj {
                let serde_json::Value::String(value) = value else {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("value of {key:?} is {value}, not a string"),
                        "quote the server name",
                    ));
                    continue;
                };
                match check_entry(&key, &value) {
                    Ok(()) => {
                        entries.insert(key, value);
                    }
                    Err(m) => errors.push(MapError::new(origin, None, m, "fix the entry")),
                }
            }
        }
        serde_json::Value::Array(items) => {
            entries.reserve(items.len());
            let mut index_of: HashMap<String, usize> = HashMap::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let key = item.get("key").or_else(|| item.get("certname"));
                let value = item.get("value");
                let (Some(serde_json::Value::String(key)), Some(serde_json::Value::String(value))) =
                    (key, value)
                else {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("item [{i}] lacks a string \"key\" (or \"certname\") and a string \"value\""),
                        "give every item {\"key\": \"...\", \"value\": \"...\"}",
                    ));
                    continue;
                };
                if let Err(m) = check_entry(key, value) {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("item [{i}]: {m}"),
                        "fix the item",
                    ));
                    continue;
                }
                if let Some(first) = index_of.get(key.as_str()) {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("item [{i}] repeats key {key:?} of item [{first}]"),
                        "keep one of the two items",
                    ));
                    continue;
                }
                index_of.insert(key.clone(), i);
                entries.insert(key.clone(), value.clone());
            }
        }
        other => errors.push(MapError::new(
            origin,
            None,
            format!(
                "body is a JSON {}, not an object or array",
                json_kind(&other)
            ),
            "send a JSON object {\"key\":\"value\"} or an array of {\"key\":..,\"value\":..}",
        )),
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Reports every entry whose value `allowed` rejects, sorted by key. No line
/// numbers (the map may not come from a file): for files, prefer
/// [`parse_map_text_with`], which reports lines.
pub fn validate_values(
    entries: &HashMap<String, String>,
    allowed: impl Fn(&str) -> bool,
    origin: &str,
) -> Vec<MapError> {
    let mut bad: Vec<(&String, &String)> = entries.iter().filter(|(_, v)| !allowed(v)).collect();
    bad.sort_unstable();
    bad.into_iter()
        .map(|(k, v)| bad_value(origin, None, k, v))
        .collect()
}

/// Writes `text` to `path` atomically: a temp file in the same directory,
/// fsync, rename over `path`, then fsync of the directory (best effort). On
/// failure the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{:08x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // why: the rename is durable only once the directory entry is synced; a
    // failure here does not undo the write, so it is ignored.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Identity of a file version as seen by `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    mtime: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> io::Result<Option<Fingerprint>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Fingerprint {
            mtime: m.modified().ok(),
            len: m.len(),
            inode: inode(&m),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino()
}

#[cfg(not(unix))]
fn inode(_m: &std::fs::Metadata) -> u64 {
    0
}

/// Detects changes of one file by polling its metadata (mtime, length, inode),
/// so both in-place edits and rename-over (editors, `mv`, [`write_atomic`])
/// are seen. A missing file is "no change" (writers may briefly remove it);
/// content identical to the last delivered one (by SHA-256) is not reported.
///
/// An in-place writer caught mid-write may be delivered a partial file; its
/// next write changes mtime and the full file follows. Prefer rename-over.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    last: Option<Fingerprint>,
    last_hash: Option<[u8; 32]>,
}

impl FileWatch {
    /// A watch whose first [`FileWatch::changed`] reports the current content.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileWatch {
            path: path.into(),
            last: None,
            last_hash: None,
        }
    }

    /// Reads the file now and returns a watch that reports only later changes,
    /// with the current content. Fails if the file cannot be read.
    pub fn primed(path: impl Into<PathBuf>) -> io::Result<(Self, String)> {
        let mut w = Self::new(path);
        match w.changed()? {
            Some(text) => Ok((w, text)),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", w.path.display()),
            )),
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the file's metadata (size, mtime, inode) differs from the last content seen:
    /// a cheap `stat`, to decide whether [`changed`](Self::changed) (read and hash) is needed.
    pub fn may_have_changed(&self) -> bool {
        match fingerprint(&self.path) {
            Ok(Some(fp)) => self.last != Some(fp),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// True when the file's metadata is still that of the content last reported (so nothing
    /// rewrote it since [`changed`](Self::changed) read it).
    pub fn is_current(&self) -> bool {
        matches!(fingerprint(&self.path), Ok(Some(fp)) if Some(fp) == self.last)
    }

    /// Checks once: `Ok(Some(text))` when the file changed since the last
    /// report, `Ok(None)` when unchanged, missing or changing under our feet
    /// (the next call retries). Errors are I/O failures other than NotFound,
    /// and content that is not UTF-8.
    pub fn changed(&mut self) -> io::Result<Option<String>> {
        let Some(before) = fingerprint(&self.path)? else {
            return Ok(None);
        };
        if self.last == Some(before) {
            return Ok(None);
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if fingerprint(&self.path)? != Some(before) {
            return Ok(None);
        }
        self.last = Some(before);
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.last_hash == Some(hash) {
            return Ok(None);
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not UTF-8: {e}", self.path.display()),
            )
        })?;
        self.last_hash = Some(hash);
        Ok(Some(text))
    }
}

/// Polls `watch` every `interval` (see [`DEFAULT_WATCH_INTERVAL`]) and calls
/// `on_change` with the new content. Reads run on the blocking pool. I/O
/// errors are logged once per failure streak and retried. Returns when
/// `shutdown` becomes true or its sender is dropped.
pub async fn watch_file(
    watch: FileWatch,
    interval: Duration,
    mut on_change: impl FnMut(String) + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slot = Some(watch);
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            r = shutdown.changed() => {
                if r.is_err() { return; }
                continue;
            }
        }
        let Some(mut w) = slot.take() else { return };
        let joined = tokio::task::spawn_blocking(move || {
            let r = w.changed();
            (w, r)
        })
        .await;
        let (w, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                log::error!("map file watcher task failed: {e}");
                return;
            }
        };
        match result {
            Ok(Some(text)) => {
                if failing {
                    log::info!("map file {} readable again", w.path().display());
                    failing = false;
                }
                on_change(text);
            }
            Ok(None) => {}
            Err(e) => {
                if !failing {
                    log::warn!(
                        "cannot read map file {}: {e}; keeping the last map",
                        w.path().display()
                    );
                    failing = true;
                }
            }
        }
        slot = Some(w);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn servers(v: &str) -> bool {
        v == "master1" || v == "master2"
    }

    #[test]
    fn map_text_parses_values_with_spaces_comments_and_crlf() {
        let text = "\u{feff}# comment\r\n\n  node1.example.com   master1\r\nnode2\tmaster two  \n   # indented comment\n";
        let m = parse_map_text(text, "n.map").unwrap();
        assert_eq!(m.len(), 2, "two entries expected: {m:?}");
        assert_eq!(m.get("node1.example.com"), Some("master1"));
        assert_eq!(
            m.get("node2"),
            Some("master two"),
            "value is the rest of the line, trimmed"
        );
    }

    #[test]
    fn map_text_reports_missing_value_and_duplicate_with_both_lines() {
        let text = "a x\nlonely\nb y\na z\n";
        let errs = parse_map_text(text, "n.map").unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 2, "both errors collected: {shown:?}");
        assert!(
            shown[0].starts_with("n.map:2: key \"lonely\" has no value (fix: "),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].starts_with("n.map:4: duplicate key \"a\" (first defined on line 1)"),
            "{}",
            shown[1]
        );
    }

    #[test]
    fn map_text_validation_reports_bad_value_line() {
        let errs = parse_map_text_with("n1 master1\nn2 master9\n", "n.map", servers).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(2), "line of the bad value");
        assert!(errs[0].message.contains("master9"), "{}", errs[0]);
    }

    #[test]
    fn validate_values_lists_bad_entries_sorted_without_lines() {
        let m: HashMap<String, String> = [("b", "nope"), ("a", "master1"), ("c", "bad")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let errs = validate_values(&m, servers, "api");
        let keys: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 2, "{keys:?}");
        assert!(
            errs[0].message.starts_with("\"b\""),
            "sorted by key: {keys:?}"
        );
        assert!(
            errs[0].to_string().starts_with("api: "),
            "no line: {}",
            errs[0]
        );
    }

    #[test]
    fn parse_after_reuses_equal_keys_and_rebuilds_when_keys_change() {
        let text = |n: usize, shift: usize| -> String {
            (0..n)
                .map(|i| format!("node-{i} master{}\n", (i + shift) % 2 + 1))
                .collect()
        };
        let v1 = parse_map_text(&text(2000, 0), "v1").unwrap();
        let v2 = parse_map_text_after(&text(2000, 1), "v2", servers, Some(&v1)).unwrap();
        assert!(v2.shares_keys_with(&v1), "same keys: index reused");
        assert!(v2.same_as(&parse_map_text(&text(2000, 1), "fresh").unwrap()));
        assert_eq!(v2.get("node-0"), Some("master2"));
        let fewer = parse_map_text_after(&text(1999, 1), "f", servers, Some(&v1)).unwrap();
        assert!(
            !fewer.shares_keys_with(&v1) && fewer.len() == 1999,
            "a key removed"
        );
        let more = parse_map_text_after(&text(2001, 1), "m", servers, Some(&v1)).unwrap();
        assert!(
            !more.shares_keys_with(&v1) && more.get("node-2000").is_some(),
            "a key added"
        );
        let mut bad = text(2000, 0);
        bad.push_str("node-7 master9\n");
        let errs = parse_map_text_after(&bad, "b", servers, Some(&v1)).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with("b:2001: duplicate key \"node-7\" (first defined on line 8)"),
            "{}",
            shown[0]
        );
    }

    #[test]
    fn table_text_round_trips_sorted() {
        let m = parse_map_text("z 1\na two words\nm 3\n", "t").unwrap();
        let t = MapTable::new(m.to_entries(), 7, MapSource::Api);
        assert_eq!(
            t.to_map_text(),
            "a two words\nm 3\nz 1\n",
            "sorted HAProxy text"
        );
        assert!(
            parse_map_text(&t.to_map_text(), "t").unwrap().same_as(&m),
            "round trip"
        );
        assert_eq!(t.get("m"), Some("3"));
        assert_eq!(t.get("M"), None, "keys are case-sensitive");
        assert_eq!(t.source.as_str(), "api");
    }

    #[test]
    fn json_accepts_object_and_puppetdb_array() {
        let o = parse_map_json(r#"{"n1":"master1","n2":"master2"}"#, "u").unwrap();
        assert_eq!(o.len(), 2);
        let a = parse_map_json(
            r#"[{"certname":"n1","name":"puppet_master","value":"master1"},{"key":"n2","value":"master2"}]"#,
            "u",
        )
        .unwrap();
        assert_eq!(a["n1"], "master1", "certname is the key");
        assert_eq!(a["n2"], "master2");
    }

    #[test]
    fn json_rejects_bad_shapes_and_duplicates() {
        assert!(parse_map_json("[1]", "u").is_err(), "array of numbers");
        assert!(parse_map_json("\"x\"", "u").is_err(), "string");
        assert!(
            parse_map_json("{\"a\": 1}", "u").is_err(),
            "non-string value"
        );
        assert!(
            parse_map_json("{\"a b\": \"x\"}", "u").is_err(),
            "key with space"
        );
        let errs = parse_map_json(r#"[{"key":"a","value":"x"},{"key":"a","value":"y"}]"#, "u")
            .unwrap_err();
        assert!(
            errs[0]
                .message
                .contains("[1] repeats key \"a\" of item [0]"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn write_atomic_replaces_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("maps-wa-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("n.map");
        write_atomic(&p, "a 1\n").unwrap();
        write_atomic(&p, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b 2\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the map remains: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_watch_ignores_missing_file_and_same_content() {
        let dir = std::env::temp_dir().join(format!("maps-fw-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("n.map");
        let mut w = FileWatch::new(&p);
        assert_eq!(w.changed().unwrap(), None, "missing file is no change");
        std::fs::write(&p, "a 1\n").unwrap();
        assert_eq!(
            w.changed().unwrap().as_deref(),
            Some("a 1\n"),
            "first content reported"
        );
        assert_eq!(w.changed().unwrap(), None, "unchanged");
        std::fs::remove_file(&p).unwrap();
        assert_eq!(w.changed().unwrap(), None, "briefly missing");
        write_atomic(&p, "a 1\n").unwrap();
        assert_eq!(w.changed().unwrap(), None, "same content under a new inode");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_read_is_no_longer_current_once_the_file_is_rewritten() {
        // The watcher applies a read only while it is current: a persisted API edit written
        // between its read and its apply must win (this raced in the integration suite).
        let dir = std::env::temp_dir().join(format!("maps-cur-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("n.map");
        std::fs::write(&p, "a 1\nb 2\n").unwrap();
        let (w, _) = FileWatch::primed(&p).unwrap();
        assert!(w.is_current(), "nothing rewrote it yet");
        write_atomic(&p, "a 1\n").unwrap();
        assert!(!w.is_current(), "rename-over by a persisted edit");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn watch_file_detects_in_place_rewrite_and_rename_over_within_2s() {
        let dir = std::env::temp_dir().join(format!("maps-wf-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("n.map");
        std::fs::write(&p, "a 1\n").unwrap();
        let (w, first) = FileWatch::primed(&p).unwrap();
        assert_eq!(first, "a 1\n");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_file(
            w,
            Duration::from_millis(100),
            move |t| {
                let _ = tx.send(t);
            },
            stop_rx,
        ));
        let wait = Duration::from_secs(2);
        // In-place rewrite: same inode, new content.
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p)
                .unwrap();
            f.write_all(b"a 2\n").unwrap();
        }
        let got = tokio::time::timeout(wait, rx.recv())
            .await
            .expect("in-place edit seen in 2s");
        assert_eq!(got.as_deref(), Some("a 2\n"));
        // Rename-over.
        let tmp = dir.join("n.map.new");
        std::fs::write(&tmp, "a 3\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let got = tokio::time::timeout(wait, rx.recv())
            .await
            .expect("rename-over seen in 2s");
        assert_eq!(got.as_deref(), Some("a 3\n"));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(wait, task)
            .await
            .expect("watcher stops on shutdown")
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[ignore = "timing report; run with --release -- --ignored --nocapture"]
    fn parse_one_million_entries_timing() {
        let mut text = String::with_capacity(40_000_000);
        for i in 0..1_000_000 {
            text.push_str(&format!("node{i}.example.com master{}\n", i % 7));
        }
        let start = std::time::Instant::now();
        let m = parse_map_text(&text, "gen").unwrap();
        let took = start.elapsed();
        println!(
            "parsed {} entries ({} bytes) in {took:?}",
            m.len(),
            text.len()
        );
        assert_eq!(m.len(), 1_000_000);
        assert!(
            took < Duration::from_secs(1),
            "1M entries parse in under 1s, took {took:?}"
        );
    }
}
