//! What a map load does with lines HAProxy accepts but that are likely mistakes: a key given
//! twice, and a value that names no server of the upstream the map pins for.
//!
//! HAProxy loads both without a word: for a duplicated key "only the first key in the file
//! [is] considered" (`src/pattern.c`, `pat_ref_load`), and a `use-server` whose value names
//! no server falls back to load balancing (`src/stream.c`, `process_server_rules`). The
//! defaults here do the same ([`OnDuplicate::First`], [`OnUnknownValue::Skip`]) so an
//! existing map migrates as is, but each case is reported as a warning with its line; either
//! can be made an error per map (`on_duplicate: error`, `on_unknown_value: error`).
//!
//! The policy applies to whole-map loads from map text: the file (at start, on reload, when it
//! changes), a whole-map `PUT`, a Runtime API `commit map`. Single-entry edits through an API
//! (`set map`, `POST /maps/NAME/entries`) are always checked strictly: an operator naming a
//! server that does not exist wants to hear so at once.

use super::{bad_value, MapContent, MapError};

/// Which line of a key given more than once is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDuplicate {
    /// The first line (HAProxy); later lines are warnings.
    #[default]
    First,
    /// The last line; earlier lines are warnings.
    Last,
    /// The map is refused, naming both lines.
    Error,
}

impl OnDuplicate {
    /// Parses a config value: `first`, `last` or `error`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "first" => Some(Self::First),
            "last" => Some(Self::Last),
            "error" => Some(Self::Error),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Last => "last",
            Self::Error => "error",
        }
    }
}

/// What happens to an entry whose value names no server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnknownValue {
    /// The entry is left out with a warning, so the key is routed as a miss (`on_miss`),
    /// as HAProxy falls back to load balancing.
    #[default]
    Skip,
    /// The map is refused, naming the line.
    Error,
}

impl OnUnknownValue {
    /// Parses a config value: `skip` or `error`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "skip" => Some(Self::Skip),
            "error" => Some(Self::Error),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Error => "error",
        }
    }
}

/// The policy of one map (`maps.NAME.on_duplicate` / `on_unknown_value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapPolicy {
    pub on_duplicate: OnDuplicate,
    pub on_unknown_value: OnUnknownValue,
}

impl MapPolicy {
    /// Both cases are errors (single-entry edits, and the behaviour before policies).
    pub const STRICT: MapPolicy = MapPolicy {
        on_duplicate: OnDuplicate::Error,
        on_unknown_value: OnUnknownValue::Error,
    };
}

/// A map that was loaded, with what was tolerated on the way (sorted by line).
#[derive(Debug)]
pub struct Loaded {
    pub content: MapContent,
    pub warnings: Vec<MapError>,
}

pub(super) fn duplicate_warning(
    origin: &str,
    line: usize,
    key: &str,
    other: usize,
    policy: OnDuplicate,
) -> MapError {
    let (message, fix) = match policy {
        OnDuplicate::Last => (
            format!("duplicate key {key:?} (also on line {other}); this line's value is used (on_duplicate: last)"),
            "remove one of the lines, or set on_duplicate: first or error",
        ),
        _ => (
            format!("duplicate key {key:?} (first defined on line {other}); line {other}'s value is used, as HAProxy does (on_duplicate: first)"),
            "remove one of the lines, or set on_duplicate: last or error",
        ),
    };
    MapError::new(origin, Some(line), message, fix)
}

pub(super) fn skipped_warning(origin: &str, line: usize, key: &str, value: &str) -> MapError {
    let mut w = bad_value(origin, Some(line), key, value);
    w.message.push_str(
        "; the entry is skipped and the key is routed as a miss (on_unknown_value: skip)",
    );
    w.fix = "use a server defined in the config, remove the line, or set on_unknown_value: error"
        .to_string();
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{load_map_chunks, load_map_text, parse_map_text};

    fn servers(v: &str) -> bool {
        v == "master1" || v == "master2"
    }

    fn policy(d: OnDuplicate, u: OnUnknownValue) -> MapPolicy {
        MapPolicy {
            on_duplicate: d,
            on_unknown_value: u,
        }
    }

    const HAPROXY_MAP: &str =
        "# as HAProxy takes it\nn1 master1\nn2 master9\nn1 master2\nn3 master2\nn2 master1\n";

    #[test]
    fn the_default_is_haproxy_first_line_wins_then_an_unknown_value_is_skipped() {
        let l = load_map_text(HAPROXY_MAP, "m.map", servers, None, MapPolicy::default()).unwrap();
        assert_eq!(
            l.content.get("n1"),
            Some("master1"),
            "first line of n1 wins"
        );
        assert_eq!(
            l.content.get("n2"),
            None,
            "n2's first line names no server: skipped, its later line does not take over"
        );
        assert_eq!(l.content.get("n3"), Some("master2"));
        let shown: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[0].starts_with(
                "m.map:3: \"n2\" maps to \"master9\", which names no server; the entry is skipped"
            ),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].starts_with(
                "m.map:4: duplicate key \"n1\" (first defined on line 2); line 2's value is used"
            ),
            "{}",
            shown[1]
        );
        assert!(
            shown[2].starts_with("m.map:6: duplicate key \"n2\" (first defined on line 3)"),
            "{}",
            shown[2]
        );
    }

    #[test]
    fn last_takes_the_last_line_and_checks_its_value() {
        let p = policy(OnDuplicate::Last, OnUnknownValue::Skip);
        let l = load_map_text(HAPROXY_MAP, "m.map", servers, None, p).unwrap();
        assert_eq!(l.content.get("n1"), Some("master2"));
        assert_eq!(
            l.content.get("n2"),
            Some("master1"),
            "the last line of n2 is valid"
        );
        assert_eq!(l.content.len(), 3);
        assert_eq!(
            l.warnings.len(),
            2,
            "two duplicates, nothing skipped: {:?}",
            l.warnings
        );
        assert!(l.warnings[0]
            .message
            .contains("(also on line 2); this line's value is used"));
    }

    #[test]
    fn error_policies_refuse_with_every_line() {
        let errs =
            load_map_text(HAPROXY_MAP, "m.map", servers, None, MapPolicy::STRICT).unwrap_err();
        let lines: Vec<Option<usize>> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(3), Some(4), Some(6)]);
        let dup_only = policy(OnDuplicate::Error, OnUnknownValue::Skip);
        let errs = load_map_text(HAPROXY_MAP, "m.map", servers, None, dup_only).unwrap_err();
        assert_eq!(errs.len(), 2, "only the duplicates: {errs:?}");
        let unknown_only = policy(OnDuplicate::First, OnUnknownValue::Error);
        let errs = load_map_text(HAPROXY_MAP, "m.map", servers, None, unknown_only).unwrap_err();
        assert_eq!(errs.len(), 1, "only the unknown value: {errs:?}");
        assert_eq!(errs[0].line, Some(3));
    }

    #[test]
    fn a_clean_map_has_no_warnings_and_a_missing_value_stays_an_error() {
        let l = load_map_text(
            "a master1\nb master2\n",
            "m",
            servers,
            None,
            MapPolicy::default(),
        )
        .unwrap();
        assert!(l.warnings.is_empty());
        assert_eq!(l.content.len(), 2);
        let errs = load_map_text(
            "a master1\nlonely\n",
            "m",
            servers,
            None,
            MapPolicy::default(),
        )
        .unwrap_err();
        assert_eq!(
            errs[0].line,
            Some(2),
            "a key without a value is never tolerated"
        );
    }

    #[test]
    fn chunks_and_a_reused_key_index_resolve_the_same_way() {
        let text: String = (0..2000)
            .map(|i| format!("node-{i} master{}\n", i % 2 + 1))
            .collect();
        let base = parse_map_text(&text, "b").unwrap();
        let mut next = text.clone();
        next.push_str("node-5 master1\nnode-6 master7\n");
        for p in [
            MapPolicy::default(),
            policy(OnDuplicate::Last, OnUnknownValue::Skip),
        ] {
            let whole = load_map_text(&next, "n", servers, Some(&base), p).unwrap();
            let chunks: Vec<bytes::Bytes> = next
                .as_bytes()
                .chunks(777)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            let chunked = load_map_chunks(&chunks, "n", servers, Some(&base), p).unwrap();
            assert!(whole.content.same_as(&chunked.content));
            assert_eq!(whole.warnings, chunked.warnings);
            let last = p.on_duplicate == OnDuplicate::Last;
            assert_eq!(whole.content.len(), if last { 1999 } else { 2000 }, "{p:?}");
            let n5 = if p.on_duplicate == OnDuplicate::Last {
                "master1"
            } else {
                "master2"
            };
            assert_eq!(whole.content.get("node-5"), Some(n5), "{p:?}");
            let n6 = if p.on_duplicate == OnDuplicate::Last {
                None
            } else {
                Some("master1")
            };
            assert_eq!(whole.content.get("node-6"), n6, "{p:?}");
        }
    }

    #[test]
    fn config_words_parse() {
        assert_eq!(OnDuplicate::parse("last"), Some(OnDuplicate::Last));
        assert_eq!(OnDuplicate::parse("Last"), None);
        assert_eq!(OnUnknownValue::parse("skip"), Some(OnUnknownValue::Skip));
        assert_eq!(MapPolicy::default().on_duplicate.as_str(), "first");
    }
}
