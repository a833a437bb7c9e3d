//! Writing an API change back to a map file (`persist: true`) without losing what the file's
//! owner wrote in it: comments, blank lines, line order, spacing, lines the policy tolerated
//! (a shadowed duplicate, an entry skipped for naming no server). Only the lines of keys the
//! change touched are rewritten; new keys are appended at the end, sorted.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::text::split_map_line;
use super::{MapContent, OnDuplicate};

/// The new text of a map file after a change from `before` (the running content, None for
/// none) to `after`, applied to the file's current text `old_text`:
/// - a key removed by the change loses every line it has;
/// - a key whose value changed gets its value rewritten on the line that is in effect (the
///   first one, or the last one with [`OnDuplicate::Last`]), keeping the key and spacing;
/// - a key the file lacks is appended as `key value`;
/// - every other line is kept byte for byte.
pub fn rewrite_map_file(
    old_text: &str,
    before: Option<&MapContent>,
    after: &MapContent,
    on_duplicate: OnDuplicate,
) -> String {
    let lines: Vec<&str> = old_text.split_inclusive('\n').collect();
    // The line in effect for each key of the file.
    let mut effective: HashMap<&str, usize> = HashMap::new();
    for (i, raw) in lines.iter().enumerate() {
        if let Some((key, _)) = split_map_line(raw) {
            match on_duplicate {
                OnDuplicate::Last => {
                    effective.insert(key, i);
                }
                OnDuplicate::First | OnDuplicate::Error => {
                    effective.entry(key).or_insert(i);
                }
            }
        }
    }
    let old = |k: &str| before.and_then(|b| b.get(k));
    let mut out = String::with_capacity(old_text.len() + 64);
    for (i, raw) in lines.iter().enumerate() {
        let Some((key, value)) = split_map_line(raw) else {
            out.push_str(raw);
            continue;
        };
        match after.get(key) {
            None if old(key).is_some() => {} // removed by this change: drop every line
            Some(new)
                if effective.get(key) == Some(&i) && old(key) != Some(new) && value != new =>
            {
                // `value` is a slice of `raw`: keep everything before it and the line ending.
                let start = value.as_ptr() as usize - raw.as_ptr() as usize;
                let body = raw.trim_end_matches(['\n', '\r']);
                out.push_str(&raw[..start]);
                out.push_str(new);
                out.push_str(&raw[body.len()..]);
            }
            _ => out.push_str(raw),
        }
    }
    let present: HashSet<&str> = effective.keys().copied().collect();
    let mut added: Vec<(&str, &str)> = after.iter().filter(|(k, _)| !present.contains(k)).collect();
    if !added.is_empty() {
        added.sort_unstable();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for (k, v) in added {
            out.push_str(k);
            out.push(' ');
            out.push_str(v);
            out.push('\n');
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::parse_map_text;

    fn content(text: &str) -> MapContent {
        parse_map_text(text, "t").unwrap()
    }

    #[test]
    fn comments_blank_lines_order_and_spacing_survive_an_edit() {
        let file =
            "# nodes -> masters, written by hand\n\nnode2\tmaster1\nnode1   master1\r\n# end\n";
        let before = content("node1 master1\nnode2 master1\n");
        let after = content("node1 master2\nnode2 master1\nnode0 master1\n");
        let out = rewrite_map_file(file, Some(&before), &after, OnDuplicate::First);
        assert_eq!(
            out,
            "# nodes -> masters, written by hand\n\nnode2\tmaster1\nnode1   master2\r\n# end\nnode0 master1\n"
        );
        assert!(content(&out).same_as(&after), "reads back as the new map");
    }

    #[test]
    fn a_removed_key_loses_all_its_lines_and_others_stay() {
        let file = "a 1\n# c\nb 2\na 3\n";
        let before = content("a 1\nb 2\n");
        let after = content("b 2\n");
        let out = rewrite_map_file(file, Some(&before), &after, OnDuplicate::First);
        assert_eq!(out, "# c\nb 2\n");
    }

    #[test]
    fn the_line_in_effect_is_the_one_rewritten_under_each_policy() {
        let file = "a 1\na 2\n";
        let after = content("a 9\n");
        let first = rewrite_map_file(file, Some(&content("a 1\n")), &after, OnDuplicate::First);
        assert_eq!(first, "a 9\na 2\n", "the first line is in effect");
        let last = rewrite_map_file(file, Some(&content("a 2\n")), &after, OnDuplicate::Last);
        assert_eq!(last, "a 1\na 9\n", "the last line is in effect");
    }

    #[test]
    fn a_skipped_line_the_change_did_not_touch_is_kept() {
        // "ghost" named no server, so the running map lacks it; an edit of another key keeps it.
        let file = "ghost master9\nn1 master1\n";
        let before = content("n1 master1\n");
        let after = content("n1 master2\n");
        let out = rewrite_map_file(file, Some(&before), &after, OnDuplicate::First);
        assert_eq!(out, "ghost master9\nn1 master2\n");
    }

    #[test]
    fn a_file_without_a_final_newline_gets_one_before_an_appended_key() {
        let out = rewrite_map_file("a 1", None, &content("a 1\nb 2\n"), OnDuplicate::First);
        assert_eq!(out, "a 1\nb 2\n");
        let fresh = rewrite_map_file("", None, &content("b 2\na 1\n"), OnDuplicate::First);
        assert_eq!(
            fresh, "a 1\nb 2\n",
            "an empty or missing file gets sorted lines"
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
}
