//! `floodgate convert haproxy|apache FILE`: pure functions from an existing proxy's config text
//! to a floodgate config (YAML) plus notes on what could not be converted or was approximated,
//! each with its source line. Nothing here reads files or the network: the command does that.

pub mod apache;
mod apache_headers;
pub mod haproxy;
mod upstream_tls;

use std::fmt;

/// How faithfully one source line was carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// floodgate has no equivalent (yet); the line is left out.
    NotConverted,
    /// Converted to something close but not identical; the note says how it differs.
    Approximated,
}

/// One remark about a source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub kind: NoteKind,
    pub text: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            NoteKind::NotConverted => "not converted",
            NoteKind::Approximated => "approximated",
        };
        write!(f, "line {}: {kind}: {}", self.line, self.text)
    }
}

/// The result of a conversion: the YAML text and the notes, in line order.
#[derive(Debug, Clone)]
pub struct Converted {
    pub yaml: String,
    pub notes: Vec<Note>,
}

impl Converted {
    /// The result for the config `doc` (YAML rendered under a header comment) and its notes
    /// sorted by line.
    pub(crate) fn from_doc(
        source: &str,
        doc: serde_json::Map<String, serde_json::Value>,
        notes: Notes,
    ) -> Converted {
        let notes = notes.finish();
        Converted {
            yaml: render(source, &serde_json::Value::Object(doc), &notes),
            notes,
        }
    }

    pub fn count(&self, kind: NoteKind) -> usize {
        self.notes.iter().filter(|n| n.kind == kind).count()
    }
}

/// Collects notes while a converter walks the source.
#[derive(Default)]
pub(crate) struct Notes(Vec<Note>);

impl Notes {
    pub(crate) fn skip(&mut self, line: usize, text: impl Into<String>) {
        self.0.push(Note {
            line,
            kind: NoteKind::NotConverted,
            text: text.into(),
        });
    }
    pub(crate) fn approx(&mut self, line: usize, text: impl Into<String>) {
        self.0.push(Note {
            line,
            kind: NoteKind::Approximated,
            text: text.into(),
        });
    }
    /// The notes by line, each once (a `default-server` option is read for every server).
    pub(crate) fn finish(mut self) -> Vec<Note> {
        let mut seen = std::collections::HashSet::new();
        self.0.retain(|n| seen.insert((n.line, n.text.clone())));
        self.0.sort_by_key(|n| n.line);
        self.0
    }
}

/// A header comment and the YAML of `doc`.
fn render(source: &str, doc: &serde_json::Value, notes: &[Note]) -> String {
    let mut out = format!(
        "# Converted by `floodgate convert` from {source}.\n# {} line(s) not converted, {} approximated: see the notes printed with it.\n",
        notes.iter().filter(|n| n.kind == NoteKind::NotConverted).count(),
        notes.iter().filter(|n| n.kind == NoteKind::Approximated).count()
    );
    out.push_str(&serde_yaml::to_string(doc).unwrap_or_default());
    out
}

/// A name usable as a floodgate upstream/route name: `[A-Za-z0-9_-]`, others become `_`.
pub(crate) fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
