//! Line numbers for configuration errors.
//!
//! The validator checks each section item on its own (so one typo does not hide the errors
//! after it) and names what it found by key path (`routes[2] (rhsm).match.header`). serde_yaml's
//! `Value` keeps no positions, so this module finds the line where the named section item
//! starts in the original text: a small scanner over block-style YAML by indentation, good for
//! the first two levels of a path (the section, then a list index or a mapping key). Anything it
//! cannot place (flow style on one line, odd indentation) gives the closest enclosing line or
//! nothing; the key path stays the precise part of the message.

/// The first two steps of a key path as the validator writes them.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Index(usize),
    Key(&'a str),
    None,
}

/// Splits `routes[2] (rhsm).match` into (`routes`, Index(2)) and `upstreams.app.servers[0]`
/// into (`upstreams`, Key(`app`)).
fn split(path: &str) -> (&str, Step<'_>) {
    let end = path.find(['[', '.', ' ', ':']).unwrap_or(path.len());
    let section = &path[..end];
    let rest = &path[end..];
    if let Some(r) = rest.strip_prefix('[') {
        if let Some(close) = r.find(']') {
            if let Ok(i) = r[..close].parse() {
                return (section, Step::Index(i));
            }
        }
    } else if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(['[', '.', ' ', ':']).unwrap_or(r.len());
        if end > 0 {
            return (section, Step::Key(&r[..end]));
        }
    }
    (section, Step::None)
}

/// A line with its indentation and its content without a trailing comment; `None` for blank
/// and comment-only lines.
fn content(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start_matches(' ');
    let indent = line.len() - trimmed.len();
    let body = match trimmed.find(" #") {
        Some(i) => &trimmed[..i],
        None => trimmed,
    };
    let body = body.trim_end();
    if body.is_empty() || body.starts_with('#') {
        return None;
    }
    Some((indent, body))
}

/// Whether `body` opens the mapping key `key` (`key:`, `"key":`, `'key':`).
fn opens_key(body: &str, key: &str) -> bool {
    [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ]
    .iter()
    .any(|k| body == k || body.starts_with(&format!("{k} ")))
}

/// The 1-based line where the item named by the key path starts in `text`, if it can be found.
#[cfg(test)]
fn line_of(text: &str, path: &str) -> Option<usize> {
    position_of(text, path).map(|(line, _)| line)
}

/// The 1-based line and column where the item named by the key path starts in `text` (the
/// column of its key, or of the `-` of a list item), if it can be found.
pub fn position_of(text: &str, path: &str) -> Option<(usize, usize)> {
    let (section, step) = split(path);
    if section.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let head = lines
        .iter()
        .position(|l| matches!(content(l), Some((0, body)) if opens_key(body, section)))?;
    // the section's children: every line after it up to the next top-level key (a block
    // sequence may sit at indent 0 under its key)
    let mut children = Vec::new();
    for (n, line) in lines.iter().enumerate().skip(head + 1) {
        match content(line) {
            Some((0, body)) if !body.starts_with('-') => break,
            Some((indent, body)) => children.push((n, indent, body)),
            None => {}
        }
    }
    let top = children.iter().map(|&(_, indent, _)| indent).min();
    let found = match (step, top) {
        (Step::Index(i), Some(top)) => children
            .iter()
            .filter(|&&(_, indent, body)| indent == top && body.starts_with('-'))
            .nth(i)
            .map(|&(n, indent, _)| (n, indent)),
        (Step::Key(key), Some(top)) => children
            .iter()
            .find(|&&(_, indent, body)| indent == top && opens_key(body, key))
            .map(|&(n, indent, _)| (n, indent)),
        _ => None,
    };
    let (n, indent) = found.unwrap_or((head, 0));
    Some((n + 1, indent + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment
listeners:
  - { name: web, bind: \"127.0.0.1:8080\" }   # one line
upstreams:
  app:
    servers:
      - addr: 127.0.0.1:9000
  \"puppet\":
    servers: []
routes:
- name: first
  upstream: app

- name: second
  match:
    header: { nam: X }
server: { threads: 2 }
";

    #[test]
    fn list_items_are_found_by_index_at_any_indentation() {
        assert_eq!(line_of(TEXT, "listeners[0]"), Some(3));
        assert_eq!(
            line_of(TEXT, "routes[1] (second): match.header: unknown"),
            Some(14)
        );
        assert_eq!(line_of(TEXT, "routes[0]"), Some(11));
    }

    #[test]
    fn mapping_entries_are_found_by_key_quoted_or_not() {
        assert_eq!(line_of(TEXT, "upstreams.app.servers[0].addr"), Some(5));
        assert_eq!(line_of(TEXT, "upstreams.puppet"), Some(8));
    }

    #[test]
    fn columns_are_those_of_the_key_or_the_dash() {
        assert_eq!(position_of(TEXT, "listeners[0]"), Some((3, 3)));
        assert_eq!(position_of(TEXT, "routes[1] (second)"), Some((14, 1)));
        assert_eq!(position_of(TEXT, "upstreams.puppet"), Some((8, 3)));
        assert_eq!(position_of(TEXT, "routes[7]"), Some((10, 1)), "the section");
    }

    #[test]
    fn what_cannot_be_placed_falls_back_to_the_section_or_nothing() {
        assert_eq!(line_of(TEXT, "routes[7]"), Some(10));
        assert_eq!(line_of(TEXT, "server.threads"), Some(17));
        assert_eq!(line_of(TEXT, "cache.memory"), None);
        assert_eq!(line_of(TEXT, ""), None);
    }
}
