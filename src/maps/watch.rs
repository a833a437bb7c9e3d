//! Noticing that a map file changed: a metadata poll (mtime, length, inode) plus a content
//! hash, for in-place edits and rename-over alike. When to look is the one file watcher's
//! business ([`crate::control::watch`]).

use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
/// so both in-place edits and rename-over (editors, `mv`, [`super::write_atomic`])
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::persist::write_atomic;
    use super::*;

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
}
