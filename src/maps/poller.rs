//! Built-in map poller: fetches a map from an HTTP source (e.g. a PuppetDB
//! query or a file server) every `every`, and hands changed content to the
//! caller, replacing the cron + Runtime API updater of the HAProxy setup.
//!
//! Owns the poll loop, its failure policy (keep the last good map, log once per
//! failure streak, count); the HTTP(S) GET is [`super::fetch`] (Pingora's connector).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub(crate) use super::fetch::parse_url;
pub use super::fetch::{Fetcher, MAX_BODY_BYTES};
use super::{parse_map_json, parse_map_text_after, MapContent};

/// Default poll period (the HAProxy setup's cron ran every minute).
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);
/// Default limit for one fetch, connect to last body byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Body format of the polled source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapFormat {
    /// HAProxy map text, see [`super::parse_map_text`].
    Map,
    /// JSON object or array, see [`super::parse_map_json`].
    Json,
}

/// What to poll and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerSettings {
    /// Source URL (passed to the fetch function as is).
    pub url: String,
    /// Period between fetches; the first fetch happens at once.
    pub every: Duration,
    /// Limit for one fetch; a slower fetch counts as an error.
    pub timeout: Duration,
    /// How to parse the body.
    pub format: MapFormat,
}

/// Counters of one poller, readable by metrics and the admin API.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Fetches whose content was applied.
    pub ok: AtomicU64,
    /// Fetches whose content equalled the last applied one.
    pub unchanged: AtomicU64,
    /// Failed fetches (transport, timeout, non-2xx, parse, rejected by the caller).
    pub errors: AtomicU64,
    /// Failures since the last success (0 = healthy).
    pub consecutive_errors: AtomicU64,
    /// The most recent failure, kept after recovery.
    pub last_error: Mutex<Option<String>>,
    /// When a fetch last succeeded (applied or unchanged).
    pub last_success: Mutex<Option<SystemTime>>,
}

/// The fetch function's future: `(status, body)` or a transport error.
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<(u16, Vec<u8>), String>> + Send>>;

/// Result of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// New content handed to `on_update`, which reported a change.
    Applied,
    /// Same body as last applied, or `on_update` reported no change.
    Unchanged,
    /// Kept the last good map for this reason.
    Failed(String),
}

/// Polls `settings.url` with `fetch` (normally [`Fetcher::get`]) right away and then
/// every `settings.every`, until `shutdown` is true or its sender is dropped
/// (an in-flight fetch is abandoned). `on_update` gets the parsed map only when
/// the body differs (SHA-256) from the last applied one; it returns whether the
/// live map changed, or a reason to reject it (e.g. unknown server), in which
/// case the same body is retried next time. Any failure keeps the last good
/// map, is counted, and is logged once per failure streak.
pub async fn run_poller<F, U>(
    settings: PollerSettings,
    fetch: F,
    on_update: U,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<PollerStats>,
) where
    F: Fn(String, Duration) -> FetchFuture + Send + Sync,
    U: Updater,
{
    let mut ticker = tokio::time::interval(settings.every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_hash: Option<[u8; 32]> = None;
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
        let outcome = tokio::select! {
            o = poll_once(&settings, &fetch, &on_update, &mut last_hash) => o,
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { return; }
                continue;
            }
        };
        if let PollOutcome::Failed(reason) = &outcome {
            if !reason.starts_with(REJECTED) {
                on_update.fetch_failed(reason);
            }
        }
        record(&settings.url, &stats, outcome);
    }
}

fn record(url: &str, stats: &PollerStats, outcome: PollOutcome) {
    match outcome {
        PollOutcome::Applied | PollOutcome::Unchanged => {
            let counter = if outcome == PollOutcome::Applied {
                &stats.ok
            } else {
                &stats.unchanged
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let failed = stats.consecutive_errors.swap(0, Ordering::Relaxed);
            if failed > 0 {
                log::info!("map poller {url}: recovered after {failed} failed fetches");
            }
            *stats.last_success.lock() = Some(SystemTime::now());
        }
        PollOutcome::Failed(reason) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if stats.consecutive_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!("map poller {url}: {reason}; keeping the last good map");
            }
            *stats.last_error.lock() = Some(reason);
        }
    }
}

/// Where a poller's maps go: [`apply`](Updater::apply) takes a parsed map and says whether
/// the live map changed (or why it was refused); [`current`](Updater::current) is the running
/// content, so that a new version with the same keys reuses its key index.
pub trait Updater: Send + Sync {
    fn apply(&self, content: MapContent) -> Result<bool, String>;
    fn current(&self) -> Option<Arc<super::MapTable>> {
        None
    }
    /// A fetch failed before [`apply`](Updater::apply) (transport, TLS, timeout, status,
    /// parse); the live map is kept. Refusals by `apply` are the updater's own to count.
    fn fetch_failed(&self, _reason: &str) {}
}

/// Start of a [`PollOutcome::Failed`] reason given when [`Updater::apply`] refused the map.
const REJECTED: &str = "rejected: ";

impl<F: Fn(MapContent) -> Result<bool, String> + Send + Sync> Updater for F {
    fn apply(&self, content: MapContent) -> Result<bool, String> {
        self(content)
    }
}

/// One fetch + parse + apply. `last_hash` is the body hash last applied.
pub async fn poll_once<F, U>(
    settings: &PollerSettings,
    fetch: &F,
    on_update: &U,
    last_hash: &mut Option<[u8; 32]>,
) -> PollOutcome
where
    F: Fn(String, Duration) -> FetchFuture,
    U: Updater,
{
    let url = settings.url.clone();
    let fetched =
        tokio::time::timeout(settings.timeout, fetch(url.clone(), settings.timeout)).await;
    let (status, body) = match fetched {
        Err(_) => return PollOutcome::Failed(format!("timed out after {:?}", settings.timeout)),
        Ok(Err(e)) => return PollOutcome::Failed(e),
        Ok(Ok(answer)) => answer,
    };
    if !(200..300).contains(&status) {
        return PollOutcome::Failed(format!("HTTP status {status}"));
    }
    let hash: [u8; 32] = Sha256::digest(&body).into();
    if *last_hash == Some(hash) {
        return PollOutcome::Unchanged;
    }
    let format = settings.format;
    let origin = url.clone();
    // why: parsing a large map is CPU-bound (60-250 ms for 1M entries); keep it off the
    // async workers and behind the request threads.
    let current = on_update.current();
    let parsed = super::run_idle(move || {
        let text = String::from_utf8(body).map_err(|_| format!("{origin}: body is not UTF-8"))?;
        let previous = current.as_ref().map(|t| t.content());
        let result = match format {
            MapFormat::Map => parse_map_text_after(&text, &origin, |_| true, previous),
            MapFormat::Json => parse_map_json(&text, &origin).and_then(|m| {
                MapContent::from_entries(m).map_err(|e| {
                    vec![super::MapError::new(
                        &origin,
                        None,
                        e.to_string(),
                        "split the map",
                    )]
                })
            }),
        };
        result.map_err(|errs| {
            let first = errs.first().map(ToString::to_string).unwrap_or_default();
            format!("malformed body, {} error(s), first: {first}", errs.len())
        })
    })
    .await;
    let map = match parsed {
        Ok(Ok(map)) => map,
        Ok(Err(e)) => return PollOutcome::Failed(e),
        Err(e) => return PollOutcome::Failed(format!("parse task failed: {e}")),
    };
    match on_update.apply(map) {
        Ok(changed) => {
            *last_hash = Some(hash);
            if changed {
                PollOutcome::Applied
            } else {
                PollOutcome::Unchanged
            }
        }
        Err(e) => PollOutcome::Failed(format!("{REJECTED}{e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::maps::fetch::tests::{canned_server, fetcher, ok_answer};

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn poller_applies_changes_and_keeps_last_map_on_500_and_malformed_body() {
        let answer = Arc::new(Mutex::new(ok_answer("n1 master1\n")));
        let (url, server) = canned_server(answer.clone()).await;
        let settings = PollerSettings {
            url,
            every: Duration::from_millis(30),
            timeout: Duration::from_secs(2),
            format: MapFormat::Map,
        };
        let stats = Arc::new(PollerStats::default());
        let fetcher = fetcher();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let poller = tokio::spawn(run_poller(
            settings,
            move |url, t| {
                let f = fetcher.clone();
                Box::pin(async move { f.get(&url, t).await }) as FetchFuture
            },
            move |m| {
                tx.send(m).map_err(|e| e.to_string())?;
                Ok(true)
            },
            stop_rx,
            stats.clone(),
        ));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.get("n1"), Some("master1"), "first map applied");
        wait_for("unchanged polls", || {
            stats.unchanged.load(Ordering::Relaxed) >= 2
        })
        .await;

        *answer.lock() =
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec();
        wait_for("500 counted", || stats.errors.load(Ordering::Relaxed) >= 2).await;
        assert!(
            stats
                .last_error
                .lock()
                .as_deref()
                .unwrap_or("")
                .contains("500"),
            "reason kept"
        );

        *answer.lock() = ok_answer("lonely\n");
        let before = stats.errors.load(Ordering::Relaxed);
        wait_for("malformed counted", || {
            stats.errors.load(Ordering::Relaxed) >= before + 2
        })
        .await;
        assert!(
            stats
                .last_error
                .lock()
                .as_deref()
                .unwrap_or("")
                .contains("malformed"),
            "parse error kept"
        );
        assert!(
            rx.try_recv().is_err(),
            "no update while failing: last good map kept"
        );
        assert!(
            stats.consecutive_errors.load(Ordering::Relaxed) >= 4,
            "one streak"
        );

        *answer.lock() = ok_answer("n1 master2\nn2 master1\n");
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.get("n1"), Some("master2"), "recovered with new map");
        assert_eq!(
            stats.consecutive_errors.load(Ordering::Relaxed),
            0,
            "streak reset"
        );
        assert_eq!(stats.ok.load(Ordering::Relaxed), 2, "two applied versions");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), poller)
            .await
            .expect("poller stops")
            .unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn poll_once_parses_json_and_retries_body_the_caller_rejected() {
        let settings = PollerSettings {
            url: "http://unused/".into(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
            format: MapFormat::Json,
        };
        let fetch = |_u: String, _t: Duration| {
            Box::pin(async { Ok((200u16, br#"[{"certname":"n1","value":"master1"}]"#.to_vec())) })
                as FetchFuture
        };
        let accept = std::sync::atomic::AtomicBool::new(false);
        let on_update = |m: MapContent| {
            assert_eq!(m.len(), 1, "json parsed");
            if accept.load(Ordering::Relaxed) {
                Ok(true)
            } else {
                Err("master1 is not a server".to_string())
            }
        };
        let mut last = None;
        let o = poll_once(&settings, &fetch, &on_update, &mut last).await;
        assert!(
            matches!(o, PollOutcome::Failed(ref e) if e.contains("rejected")),
            "{o:?}"
        );
        accept.store(true, Ordering::Relaxed);
        assert_eq!(
            poll_once(&settings, &fetch, &on_update, &mut last).await,
            PollOutcome::Applied,
            "retried"
        );
        assert_eq!(
            poll_once(&settings, &fetch, &on_update, &mut last).await,
            PollOutcome::Unchanged
        );
    }

    #[tokio::test]
    async fn a_polled_map_with_the_running_keys_reuses_their_index() {
        let text = |shift: usize| -> String {
            (0..3000)
                .map(|i| format!("n{i} master{}\n", (i + shift) % 2 + 1))
                .collect()
        };
        let running = Arc::new(crate::maps::MapTable::from_content(
            crate::maps::parse_map_text(&text(0), "t").unwrap(),
            1,
            crate::maps::MapSource::Api,
        ));
        struct Keep {
            running: Arc<crate::maps::MapTable>,
            shared: std::sync::atomic::AtomicBool,
        }
        impl Updater for Keep {
            fn apply(&self, c: MapContent) -> Result<bool, String> {
                assert_eq!(c.get("n0"), Some("master2"), "the new values");
                self.shared.store(
                    c.shares_keys_with(self.running.content()),
                    Ordering::Relaxed,
                );
                Ok(true)
            }
            fn current(&self) -> Option<Arc<crate::maps::MapTable>> {
                Some(self.running.clone())
            }
        }
        let keep = Keep {
            running,
            shared: false.into(),
        };
        let body = text(1).into_bytes();
        let fetch = move |_u: String, _t: Duration| {
            let b = body.clone();
            Box::pin(async move { Ok((200u16, b)) }) as FetchFuture
        };
        let settings = PollerSettings {
            url: "http://unused/".into(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
            format: MapFormat::Map,
        };
        let o = poll_once(&settings, &fetch, &keep, &mut None).await;
        assert_eq!(o, PollOutcome::Applied);
        assert!(keep.shared.load(Ordering::Relaxed), "key index reused");
    }
}
