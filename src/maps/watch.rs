//! Noticing that a map file changed: a metadata poll (mtime, length, inode) plus a content
//! hash, for in-place edits and rename-over alike.

use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Default interval of [`watch_file`] polling.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

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
    use super::super::persist::write_atomic;
    use super::*;
    use std::io::Write;

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
}
