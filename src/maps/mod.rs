//! Named key → value maps in HAProxy map format, used to route a request by a
//! header value (e.g. `X-Node-Name: node1.example.com` → server `master1`).
//!
//! This module owns the pure pieces: the immutable [`MapTable`] the request path
//! reads (O(1) lookups behind the caller's `Arc`), the parsers for map text and
//! JSON, value validation, atomic persistence, and a polling file watcher.
//! The live snapshot and its swap belong to the caller; [`crate::runtime_api`] (HAProxy
//! Runtime API on a UNIX socket) and [`poller`] (periodic HTTP fetch) feed it.

mod fetch;
mod json;
mod persist;
mod policy;
pub mod poller;
mod table;
mod text;
mod watch;

pub use json::parse_map_json;
pub use persist::{rewrite_map_file, write_atomic};
pub use policy::{Loaded, MapPolicy, OnDuplicate, OnUnknownValue};
pub use table::{idle_priority, reap, run_idle, InsertError, MapBuilder, MapContent};
pub use text::{
    load_map_chunks, load_map_text, parse_map_chunks_after, parse_map_text, parse_map_text_after,
    parse_map_text_with,
};

pub use watch::FileWatch;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

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
