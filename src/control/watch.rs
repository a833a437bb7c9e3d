//! The one file watcher: every file the gateway follows (map files, Lua scripts) is noticed
//! through one `notify` (inotify) watcher on the files' directories, so a change is seen at
//! once, whether it was written in place or renamed over (editors, `mv`, configuration
//! management); a slow metadata poll stays as a fallback for file systems that send no events
//! (NFS, some container bind mounts).
//!
//! The watcher only says "something in a followed directory changed"; each follower (the map
//! loop in [`super::maps`], the script loop in [`super::policy`]) then runs its own cheap
//! `stat` comparison and reads only what really changed, so a missed or extra event costs
//! nothing but a `stat`.

use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// How often followers look without an event (file systems that send none).
// why: inotify delivers local changes within milliseconds; the poll only covers mounts that
// send no events, where seconds of delay are what HAProxy-style manual reloads would cost.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// How often followers look when the watcher could not be set up (inotify limits).
pub const POLL_WITHOUT_EVENTS: Duration = Duration::from_millis(500);
/// Events that arrive together are handled together: editors write, rename and chmod.
const SETTLE: Duration = Duration::from_millis(20);

/// The process's one file watcher.
pub struct FileEvents {
    /// `None` when `notify` could not start (followers then poll every
    /// [`POLL_WITHOUT_EVENTS`]).
    watcher: Option<Mutex<notify::RecommendedWatcher>>,
    /// Directories watched so far.
    dirs: Mutex<HashSet<PathBuf>>,
    /// Bumped on every event in a watched directory.
    events: watch::Sender<u64>,
}

impl std::fmt::Debug for FileEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEvents")
            .field("notify", &self.watcher.is_some())
            .field("dirs", &self.dirs.lock().len())
            .finish()
    }
}

impl FileEvents {
    /// Starts the watcher (no directory yet: see [`FileEvents::follow`]).
    pub fn new() -> Self {
        let (events, _) = watch::channel(0u64);
        let tx = events.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(Mutex::new(w)),
            Err(e) => {
                log::warn!(
                    "file watcher unavailable ({e}); map files and scripts are polled every {POLL_WITHOUT_EVENTS:?}"
                );
                None
            }
        };
        FileEvents {
            watcher,
            dirs: Mutex::new(HashSet::new()),
            events,
        }
    }

    /// Makes sure the directory of each of `files` is watched (directories, not files: a
    /// rename over a file replaces its inode, which a watch on the file would lose).
    pub fn follow<'a>(&self, files: impl IntoIterator<Item = &'a Path>) {
        let Some(watcher) = &self.watcher else { return };
        let mut dirs = self.dirs.lock();
        for f in files {
            let dir = match f.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if dirs.contains(&dir) {
                continue;
            }
            match watcher.lock().watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    dirs.insert(dir);
                }
                // A missing directory is retried at the next call (it may appear later);
                // until then the fallback poll covers it.
                Err(e) => log::debug!("cannot watch {}: {e}", dir.display()),
            }
        }
    }

    /// A handle that waits for the next event.
    pub fn subscribe(&self) -> Events {
        Events {
            rx: self.events.subscribe(),
            poll: if self.watcher.is_some() {
                FALLBACK_POLL
            } else {
                POLL_WITHOUT_EVENTS
            },
        }
    }
}

impl Default for FileEvents {
    fn default() -> Self {
        Self::new()
    }
}

/// One follower's view of the watcher.
#[derive(Debug)]
pub struct Events {
    rx: watch::Receiver<u64>,
    poll: Duration,
}

impl Events {
    /// Waits for an event in a watched directory (then lets a burst of events settle), or for
    /// the fallback poll interval, whichever comes first.
    pub async fn next(&mut self) {
        let event = tokio::time::timeout(self.poll, self.rx.changed()).await;
        if matches!(event, Ok(Ok(()))) {
            tokio::time::sleep(SETTLE).await;
            self.rx.borrow_and_update();
        } else if matches!(event, Ok(Err(_))) {
            // The watcher is gone (shutdown): behave as a plain poll.
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_and_a_rename_over_are_seen_long_before_the_fallback_poll() {
        let dir = std::env::temp_dir().join(format!("fg-watch-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("n.map");
        std::fs::write(&file, "a 1\n").unwrap();
        let fe = FileEvents::new();
        assert!(
            fe.watcher.is_some(),
            "inotify available on the test machine"
        );
        fe.follow([file.as_path()]);
        let mut ev = fe.subscribe();
        let waited = tokio::spawn(async move {
            let t = std::time::Instant::now();
            ev.next().await;
            let first = t.elapsed();
            let t = std::time::Instant::now();
            ev.next().await;
            (first, t.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&file, "a 2\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tmp = dir.join(".n.map.tmp");
        std::fs::write(&tmp, "a 3\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let (first, second) = waited.await.unwrap();
        assert!(
            first < FALLBACK_POLL / 2,
            "in-place write seen after {first:?}"
        );
        assert!(
            second < FALLBACK_POLL / 2,
            "rename-over seen after {second:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_events_a_follower_still_looks_at_the_fallback_interval() {
        let fe = FileEvents::new();
        let mut ev = fe.subscribe();
        let t = tokio::time::Instant::now();
        ev.next().await;
        assert_eq!(t.elapsed(), FALLBACK_POLL);
    }

    #[test]
    fn a_directory_is_watched_once_and_a_missing_one_is_retried() {
        let dir = std::env::temp_dir().join(format!("fg-watch-d-{}", rand::random::<u64>()));
        let fe = FileEvents::new();
        fe.follow([dir.join("a.map").as_path()]);
        assert_eq!(fe.dirs.lock().len(), 0, "missing directory not recorded");
        std::fs::create_dir_all(&dir).unwrap();
        fe.follow([dir.join("a.map").as_path(), dir.join("b.lua").as_path()]);
        assert_eq!(fe.dirs.lock().len(), 1, "one directory for both files");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
