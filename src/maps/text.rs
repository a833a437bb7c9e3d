//! The HAProxy map text parser: `key value` per line, key and value separated by spaces or
//! tabs, value = rest of the line trimmed (may contain spaces). Blank lines and lines whose
//! first non-blank char is `#` are ignored; CRLF and a leading UTF-8 BOM are accepted. Keys
//! are exact (case-sensitive). A key given twice and a value naming no server are handled by
//! the map's [`MapPolicy`] (see `policy.rs`).
//!
//! The text comes as one string (files, poller answers) or as the chunks of a request body,
//! parsed where they lie: only lines that straddle two chunks are copied, so a 30 MiB `PUT`
//! never needs a 30 MiB contiguous buffer.

use std::collections::HashMap;

use bytes::Bytes;

use super::policy::{
    duplicate_warning, skipped_warning, Loaded, MapPolicy, OnDuplicate, OnUnknownValue,
};
use super::{bad_value, InsertError, MapBuilder, MapContent, MapError};

/// Smallest previous map worth reusing the key index of.
const REUSE_MIN_ENTRIES: usize = 1024;

/// Parses map text strictly ([`MapPolicy::STRICT`]). Errors (all collected, in line order):
/// a key without a value, and a duplicate key (naming both lines).
pub fn parse_map_text(text: &str, origin: &str) -> Result<MapContent, Vec<MapError>> {
    parse_map_text_with(text, origin, |_| true)
}

/// [`parse_map_text`] that also checks each value with `allowed` (called once per distinct
/// value), so a bad value is reported with its line number, e.g.
/// `node.map:12: "node7" maps to "master9", which names no server (fix: ...)`.
pub fn parse_map_text_with(
    text: &str,
    origin: &str,
    allowed: impl Fn(&str) -> bool,
) -> Result<MapContent, Vec<MapError>> {
    parse_map_text_after(text, origin, allowed, None)
}

/// [`parse_map_text_with`] for a new version of `previous`: when the text has exactly the
/// previous keys (only values changed), the previous key index is reused and only values
/// are written, which is several times cheaper for a large map. Otherwise it builds anew.
pub fn parse_map_text_after(
    text: &str,
    origin: &str,
    allowed: impl Fn(&str) -> bool,
    previous: Option<&MapContent>,
) -> Result<MapContent, Vec<MapError>> {
    load_map_text(text, origin, allowed, previous, MapPolicy::STRICT).map(|l| l.content)
}

/// [`parse_map_text_after`] with a policy for duplicate keys and unknown values: what the
/// policy tolerates comes back as warnings with their lines.
pub fn load_map_text(
    text: &str,
    origin: &str,
    allowed: impl Fn(&str) -> bool,
    previous: Option<&MapContent>,
    policy: MapPolicy,
) -> Result<Loaded, Vec<MapError>> {
    parse_blocks(&Whole(text), origin, &allowed, previous, policy)
}

/// [`parse_map_text_after`] over the chunks of a body as they were received. Invalid UTF-8
/// is replaced (U+FFFD), as for a whole body.
pub fn parse_map_chunks_after(
    chunks: &[Bytes],
    origin: &str,
    allowed: impl Fn(&str) -> bool,
    previous: Option<&MapContent>,
) -> Result<MapContent, Vec<MapError>> {
    load_map_chunks(chunks, origin, allowed, previous, MapPolicy::STRICT).map(|l| l.content)
}

/// [`load_map_text`] over the chunks of a body as they were received.
pub fn load_map_chunks(
    chunks: &[Bytes],
    origin: &str,
    allowed: impl Fn(&str) -> bool,
    previous: Option<&MapContent>,
    policy: MapPolicy,
) -> Result<Loaded, Vec<MapError>> {
    parse_blocks(&Chunks(chunks), origin, &allowed, previous, policy)
}

/// Map text as a sequence of blocks of whole lines (every block but the last ends in `\n`).
pub(super) trait Blocks {
    fn for_each(&self, f: &mut dyn FnMut(&str));
    /// Total bytes and line breaks, to size a fresh build.
    fn size(&self) -> (usize, usize);
}

struct Whole<'a>(&'a str);

impl Blocks for Whole<'_> {
    fn for_each(&self, f: &mut dyn FnMut(&str)) {
        f(self.0.strip_prefix('\u{feff}').unwrap_or(self.0))
    }
    fn size(&self) -> (usize, usize) {
        (self.0.len(), self.0.bytes().filter(|b| *b == b'\n').count())
    }
}

struct Chunks<'a>(&'a [Bytes]);

impl Blocks for Chunks<'_> {
    fn for_each(&self, f: &mut dyn FnMut(&str)) {
        let mut first = true;
        let mut emit = |bytes: &[u8]| {
            if bytes.is_empty() {
                return;
            }
            // A block ends at '\n' (ASCII), so it never splits a UTF-8 sequence.
            let text = String::from_utf8_lossy(bytes);
            let text: &str = &text;
            let text = if std::mem::take(&mut first) {
                text.strip_prefix('\u{feff}').unwrap_or(text)
            } else {
                text
            };
            f(text)
        };
        // The line that straddles chunks, copied; everything else is parsed in place.
        let mut carry: Vec<u8> = Vec::new();
        for chunk in self.0 {
            let mut rest: &[u8] = chunk;
            if !carry.is_empty() {
                match rest.iter().position(|b| *b == b'\n') {
                    None => {
                        carry.extend_from_slice(rest);
                        continue;
                    }
                    Some(i) => {
                        carry.extend_from_slice(&rest[..=i]);
                        emit(&carry);
                        carry.clear();
                        rest = &rest[i + 1..];
                    }
                }
            }
            match rest.iter().rposition(|b| *b == b'\n') {
                Some(last) => {
                    emit(&rest[..=last]);
                    carry.extend_from_slice(&rest[last + 1..]);
                }
                None => carry.extend_from_slice(rest),
            }
        }
        emit(&carry);
    }
    fn size(&self) -> (usize, usize) {
        self.0.iter().fold((0, 0), |(b, n), c| {
            (b + c.len(), n + c.iter().filter(|x| **x == b'\n').count())
        })
    }
}

fn parse_blocks(
    src: &dyn Blocks,
    origin: &str,
    allowed: &dyn Fn(&str) -> bool,
    previous: Option<&MapContent>,
    policy: MapPolicy,
) -> Result<Loaded, Vec<MapError>> {
    if let Some(prev) = previous.filter(|p| p.len() >= REUSE_MIN_ENTRIES) {
        match parse_into(MapBuilder::reusing(prev), src, origin, allowed, policy) {
            Ok((b, warnings)) => {
                // An error here means fewer keys than before: build anew.
                if let Ok(content) = b.finish() {
                    return Ok(Loaded { content, warnings });
                }
            }
            Err(Parsed::NewKey) => {} // a key that was not there before: build anew
            Err(Parsed::Resolve) => return resolve(src, origin, allowed, policy),
            Err(Parsed::Errors(e)) => return Err(e),
        }
    }
    let (bytes, lines) = src.size();
    let builder = MapBuilder::with_capacity(lines + 1, bytes);
    let internal = |what: &str| {
        vec![MapError::new(
            origin,
            None,
            format!("internal: {what}"),
            "report a bug",
        )]
    };
    match parse_into(builder, src, origin, allowed, policy) {
        Ok((b, warnings)) => b
            .finish()
            .map(|content| Loaded { content, warnings })
            .map_err(|_| internal("key index")),
        Err(Parsed::Errors(e)) => Err(e),
        Err(Parsed::Resolve) => resolve(src, origin, allowed, policy),
        Err(Parsed::NewKey) => Err(internal("new key in a fresh build")),
    }
}

/// Why [`parse_into`] stopped.
enum Parsed {
    /// Problems with line numbers, all collected.
    Errors(Vec<MapError>),
    /// A reusing builder met a key the base lacks.
    NewKey,
    /// The policy tolerates what was found but the one-pass build cannot apply it (a later
    /// duplicate wins, or entries are to be left out): resolve line by line.
    Resolve,
}

/// State of one pass over the lines.
struct LineParser<'a> {
    builder: MapBuilder,
    origin: &'a str,
    allowed: &'a dyn Fn(&str) -> bool,
    value_ok: Vec<bool>,
    errors: Vec<MapError>,
    duplicates: Vec<(usize, String)>,
    /// (line, key, value) of entries whose value `allowed` rejects.
    unknown: Vec<(usize, String, String)>,
    line: usize,
    new_key: bool,
    too_large: bool,
}

impl LineParser<'_> {
    fn feed(&mut self, block: &str) {
        for raw in block.lines() {
            if self.new_key || self.too_large {
                return;
            }
            self.line += 1;
            let lineno = self.line;
            let Some((key, value)) = split_map_line(raw) else {
                continue;
            };
            if value.is_empty() {
                self.errors.push(MapError::new(
                    self.origin,
                    Some(lineno),
                    format!("key {key:?} has no value"),
                    "write `key value` on one line, or remove the line",
                ));
                continue;
            }
            match self.builder.insert(key, value) {
                Ok((vi, fresh)) => {
                    if fresh {
                        self.value_ok.push((self.allowed)(value));
                    }
                    if !self.value_ok[vi as usize] {
                        self.unknown
                            .push((lineno, key.to_string(), value.to_string()));
                    }
                }
                Err(InsertError::Duplicate) => self.duplicates.push((lineno, key.to_string())),
                Err(InsertError::NewKey) => self.new_key = true,
                Err(InsertError::TooLarge) => {
                    self.errors.push(MapError::new(
                        self.origin,
                        Some(lineno),
                        InsertError::TooLarge.to_string(),
                        "split the map",
                    ));
                    self.too_large = true;
                }
            }
        }
    }
}

fn parse_into(
    builder: MapBuilder,
    src: &dyn Blocks,
    origin: &str,
    allowed: &dyn Fn(&str) -> bool,
    policy: MapPolicy,
) -> Result<(MapBuilder, Vec<MapError>), Parsed> {
    let mut p = LineParser {
        builder,
        origin,
        allowed,
        value_ok: Vec::new(),
        errors: Vec::new(),
        duplicates: Vec::new(),
        unknown: Vec::new(),
        line: 0,
        new_key: false,
        too_large: false,
    };
    src.for_each(&mut |block| p.feed(block));
    if p.new_key {
        return Err(Parsed::NewKey);
    }
    let mut errors = p.errors;
    let mut warnings = Vec::new();
    let strict_unknown = policy.on_unknown_value == OnUnknownValue::Error;
    if strict_unknown {
        for (line, key, value) in &p.unknown {
            errors.push(bad_value(origin, Some(*line), key, value));
        }
    }
    if !p.duplicates.is_empty() {
        // Rare path: rescan once to find where each duplicated key first appears,
        // instead of keeping a key→line index for every entry.
        let mut first: HashMap<&str, usize> =
            p.duplicates.iter().map(|(_, k)| (k.as_str(), 0)).collect();
        let mut line = 0;
        src.for_each(&mut |block| {
            for raw in block.lines() {
                line += 1;
                if let Some((key, _)) = split_map_line(raw) {
                    if let Some(slot) = first.get_mut(key) {
                        if *slot == 0 {
                            *slot = line;
                        }
                    }
                }
            }
        });
        for (lineno, key) in &p.duplicates {
            let earlier = first.get(key.as_str()).copied().unwrap_or(0);
            if policy.on_duplicate == OnDuplicate::Error {
                errors.push(MapError::new(
                    origin,
                    Some(*lineno),
                    format!("duplicate key {key:?} (first defined on line {earlier})"),
                    "keep one of the two lines, or set on_duplicate: first or last",
                ));
            } else {
                warnings.push(duplicate_warning(
                    origin,
                    *lineno,
                    key,
                    earlier,
                    policy.on_duplicate,
                ));
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return Err(Parsed::Errors(errors));
    }
    let later_wins = policy.on_duplicate == OnDuplicate::Last && !p.duplicates.is_empty();
    if later_wins || !p.unknown.is_empty() {
        return Err(Parsed::Resolve);
    }
    // First wins: the one-pass build already kept each key's first line.
    Ok((p.builder, warnings))
}

/// The slow path, taken only when a load met duplicates it must resolve by the last line, or
/// values to skip: re-reads every line, keeps the chosen line per key (HAProxy order: the
/// duplicate is resolved first, then the chosen value is checked), and builds anew.
pub(super) fn resolve(
    src: &dyn Blocks,
    origin: &str,
    allowed: &dyn Fn(&str) -> bool,
    policy: MapPolicy,
) -> Result<Loaded, Vec<MapError>> {
    // (key, value, line) of the chosen line, in first-seen order.
    let mut chosen: Vec<(String, String, usize)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut warnings = Vec::new();
    let mut line = 0;
    src.for_each(&mut |block| {
        for raw in block.lines() {
            line += 1;
            let Some((key, value)) = split_map_line(raw) else {
                continue;
            };
            match at.get(key) {
                Some(&i) => {
                    let earlier = chosen[i].2;
                    warnings.push(duplicate_warning(
                        origin,
                        line,
                        key,
                        earlier,
                        policy.on_duplicate,
                    ));
                    if policy.on_duplicate == OnDuplicate::Last {
                        chosen[i] = (key.to_string(), value.to_string(), line);
                    }
                }
                None => {
                    at.insert(key.to_string(), chosen.len());
                    chosen.push((key.to_string(), value.to_string(), line));
                }
            }
        }
    });
    let mut builder = MapBuilder::with_capacity(chosen.len(), 0);
    let mut verdict: HashMap<&str, bool> = HashMap::new();
    for (key, value, line) in &chosen {
        let ok = *verdict
            .entry(value.as_str())
            .or_insert_with(|| allowed(value));
        if !ok {
            warnings.push(skipped_warning(origin, *line, key, value));
            continue;
        }
        if let Err(e) = builder.insert(key, value) {
            return Err(vec![MapError::new(
                origin,
                Some(*line),
                e.to_string(),
                "split the map",
            )]);
        }
    }
    warnings.sort_by_key(|w| w.line);
    let content = builder.finish().map_err(|e| {
        vec![MapError::new(
            origin,
            None,
            format!("internal: {e}"),
            "report a bug",
        )]
    })?;
    Ok(Loaded { content, warnings })
}

/// Splits one map line into (key, value); None for blank and comment lines.
/// The value is "" when the line holds only a key.
pub(super) fn split_map_line(raw: &str) -> Option<(&str, &str)> {
    // Byte scanning: every delimiter is ASCII, so each cut is on a char boundary.
    let b = raw.as_bytes();
    let blank = |c: u8| c == b' ' || c == b'\t' || c == b'\r';
    let mut start = 0;
    while start < b.len() && blank(b[start]) {
        start += 1;
    }
    let mut end = b.len();
    while end > start && blank(b[end - 1]) {
        end -= 1;
    }
    if start == end || b[start] == b'#' {
        return None;
    }
    let mut key_end = start;
    while key_end < end && b[key_end] != b' ' && b[key_end] != b'\t' {
        key_end += 1;
    }
    let mut value_start = key_end;
    while value_start < end && (b[value_start] == b' ' || b[value_start] == b'\t') {
        value_start += 1;
    }
    Some((&raw[start..key_end], &raw[value_start..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts `text` into chunks at the given byte positions.
    fn chunks(text: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&text.len())) {
            out.push(Bytes::copy_from_slice(&text[at..c]));
            at = c;
        }
        out
    }

    #[test]
    fn chunked_bodies_parse_like_the_whole_text_wherever_they_are_cut() {
        let text = "\u{feff}# c\r\nnode1 master1\r\n\nnode2\tmaster two  \nlong-node-name-3 master1\nnode4 master2";
        let whole = parse_map_text(text, "w").unwrap();
        let b = text.as_bytes();
        for step in 1..b.len() {
            let cuts: Vec<usize> = (step..b.len()).step_by(step).collect();
            let c = parse_map_chunks_after(&chunks(b, &cuts), "c", |_| true, None).unwrap();
            assert!(
                c.same_as(&whole),
                "cut every {step} bytes: {:?}",
                c.to_entries()
            );
        }
        let empty = parse_map_chunks_after(&[], "c", |_| true, None).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn chunked_errors_keep_their_line_numbers_across_chunks() {
        let text = b"a x\nlonely\nb y\na z\nc bad\n";
        // cut inside line 2 and inside line 4
        let errs = parse_map_chunks_after(&chunks(text, &[6, 16]), "body", |v| v != "bad", None)
            .unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[0].starts_with("body:2: key \"lonely\" has no value"),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].starts_with("body:4: duplicate key \"a\" (first defined on line 1)"),
            "{}",
            shown[1]
        );
        assert!(
            shown[2].starts_with("body:5: \"c\" maps to \"bad\""),
            "{}",
            shown[2]
        );
    }

    #[test]
    fn chunked_invalid_utf8_is_replaced_not_fatal() {
        let text = b"n1 m\xff1\nn2 m2\n";
        let c = parse_map_chunks_after(&chunks(text, &[4]), "c", |_| true, None).unwrap();
        assert_eq!(c.get("n1"), Some("m\u{fffd}1"));
        assert_eq!(c.get("n2"), Some("m2"));
    }
}
