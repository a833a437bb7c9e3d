//! The shared tier: a Redis/Valkey cache that several floodgate nodes read and write, so one
//! warm request on any node serves the whole pool.
//!
//! The tier is strictly optional at run time. Creating it never connects: the first call
//! starts a background task that builds a `redis::aio::ConnectionManager`, retrying with
//! backoff (100 ms doubling to [`MAX_RECONNECT_BACKOFF`]) while Redis is down. Until it is
//! connected every call returns at once as a miss / `Err(Unavailable)`. Each call is bounded
//! by the configured timeout (default [`DEFAULT_SHARED_TIMEOUT`]); errors and timeouts are
//! counted and turn into misses. A connection-level failure (I/O error, dropped connection,
//! or [`TIMEOUTS_BEFORE_RECONNECT`] timeouts in a row) drops the connection and restarts the
//! background connect loop, so the tier recovers by itself when Redis comes back.
//!
//! Logging: one `warn` when the tier goes down (per outage, not per call) and one `info`
//! when it comes back.
//!
//! Redis keys are `key_prefix + CacheKey::full` (e.g.
//! `floodgate:cache:GET capsule.example/register?org_id=1`), so the path is part of the key
//! and purge by path prefix can find entries with `SCAN MATCH`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::key::{path_of_full, truncate_for_log, CacheKey};
use super::memory::CachedResponse;

/// Default bound on one shared-tier call.
pub const DEFAULT_SHARED_TIMEOUT: Duration = Duration::from_millis(50);
/// Default prefix of every Redis key written by the cache.
pub const DEFAULT_KEY_PREFIX: &str = "floodgate:cache:";
/// Longest wait between two connection attempts while Redis is down.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// Bound on one connection attempt (in the background task, never on a request).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive call timeouts after which the connection is considered dead and rebuilt.
pub const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;
/// Bound on a whole purge (SCAN + UNLINK over the keyspace).
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys asked per SCAN step and deleted per UNLINK.
const SCAN_BATCH: usize = 500;
const INITIAL_RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Where and how to reach the shared tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// `redis://[user:password@]host:port/db` (Valkey speaks the same protocol).
    pub url: String,
    /// Bound on each get/set (default [`DEFAULT_SHARED_TIMEOUT`]).
    pub timeout: Duration,
    /// Prefix of every key (default [`DEFAULT_KEY_PREFIX`]); lets nodes of different
    /// pools share one Redis.
    pub key_prefix: String,
}

impl SharedSettings {
    /// Settings for `url` with the default timeout and key prefix.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: DEFAULT_SHARED_TIMEOUT,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
        }
    }
}

/// Why a shared-tier call did not succeed. Request paths treat every variant as a miss.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The URL could not be parsed (a setup error).
    #[error("invalid shared cache URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// Not connected (Redis down or connection still being established).
    #[error("shared cache is not connected")]
    Unavailable,
    /// The call did not finish within its bound.
    #[error("shared cache call timed out after {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or the connection failed.
    #[error("shared cache error: {0}")]
    Redis(#[from] redis::RedisError),
}

const STATE_UNKNOWN: u8 = 0;
const STATE_UP: u8 = 1;
const STATE_DOWN: u8 = 2;

struct Inner {
    client: redis::Client,
    /// URL without credentials, for logs.
    log_target: String,
    timeout: Duration,
    key_prefix: String,
    /// The live connection and its generation (bumped on every new connection, so a
    /// late failure of an old connection cannot tear down a newer one).
    conn: Mutex<Option<(u64, ConnectionManager)>>,
    generation: AtomicU64,
    connecting: AtomicBool,
    state: AtomicU8,
    errors: AtomicU64,
    consecutive_timeouts: AtomicU32,
}

/// Handle on the shared tier. Clones share one connection.
#[derive(Clone)]
pub struct SharedTier {
    inner: Arc<Inner>,
}

impl SharedTier {
    /// Prepares the tier without connecting (connection starts on first use, in the
    /// background). Fails only when the URL is malformed.
    pub fn new(settings: &SharedSettings) -> Result<Self, SharedError> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|source| {
            SharedError::InvalidUrl {
                url: redact_url(&settings.url),
                source,
            }
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                log_target: redact_url(&settings.url),
                timeout: settings.timeout,
                key_prefix: settings.key_prefix.clone(),
                conn: Mutex::new(None),
                generation: AtomicU64::new(0),
                connecting: AtomicBool::new(false),
                state: AtomicU8::new(STATE_UNKNOWN),
                errors: AtomicU64::new(0),
                consecutive_timeouts: AtomicU32::new(0),
            }),
        })
    }

    /// Calls that failed (not connected, timed out or errored) since creation.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Whether the last call or connection attempt succeeded.
    pub fn is_up(&self) -> bool {
        self.inner.state.load(Ordering::Relaxed) == STATE_UP
    }

    /// The Redis key used for `key`.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.inner.key_prefix, key.full)
    }

    /// Starts connecting in the background if not connected; returns immediately.
    /// Called implicitly by every operation; does nothing outside a tokio runtime.
    pub fn connect_in_background(&self) {
        Inner::ensure_connecting(&self.inner);
    }

    /// Starts connecting and waits until connected or `within` passed; true when connected.
    /// The gateway calls it before it reports ready, so the first requests after a restart
    /// find what the other gateways stored instead of rendering it again.
    pub async fn connect(&self, within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        loop {
            if self.inner.conn.lock().is_some() {
                return true;
            }
            Inner::ensure_connecting(&self.inner);
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The stored response for `key`, or `None` on miss, expiry, decode failure, error,
    /// timeout or while disconnected (never waits longer than the timeout).
    pub async fn get(&self, key: &CacheKey) -> Option<CachedResponse> {
        let rkey = self.redis_key(key);
        let cmd = redis::cmd("GET").arg(&rkey).clone();
        let raw: Option<Vec<u8>> = self.run(&cmd).await.ok()?;
        let raw = raw?;
        match CachedResponse::from_bytes(&raw) {
            Ok(resp) if resp.remaining_ttl() > Duration::ZERO => Some(resp),
            Ok(_) => None,
            Err(e) => {
                log::debug!(
                    "shared cache entry {} ignored: {e}",
                    truncate_for_log(&rkey, 120)
                );
                None
            }
        }
    }

    /// Stores `resp` with `SET key value PX remaining_ms`. An already expired response is
    /// skipped (`Ok`). Errors are already counted; callers may ignore them.
    pub async fn set(&self, key: &CacheKey, resp: &CachedResponse) -> Result<(), SharedError> {
        let remaining_ms = u64::try_from(resp.remaining_ttl().as_millis()).unwrap_or(u64::MAX);
        if remaining_ms == 0 {
            return Ok(());
        }
        let cmd = redis::cmd("SET")
            .arg(self.redis_key(key))
            .arg(resp.to_bytes())
            .arg("PX")
            .arg(remaining_ms)
            .clone();
        self.run::<()>(&cmd).await
    }

    /// Deletes every key under this tier's prefix; returns how many were deleted.
    pub async fn purge_all(&self) -> Result<usize, SharedError> {
        self.purge_matching(None).await
    }

    /// Deletes keys whose path starts with `path_prefix` (all hosts and methods).
    pub async fn purge_prefix(&self, path_prefix: &str) -> Result<usize, SharedError> {
        self.purge_matching(Some(path_prefix)).await
    }

    async fn purge_matching(&self, path_prefix: Option<&str>) -> Result<usize, SharedError> {
        let Some((generation, mut conn)) = self.connection() else {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
            return Err(SharedError::Unavailable);
        };
        let prefix = &self.inner.key_prefix;
        // why: the glob narrows the scan; the exact path check below removes keys where
        // the text matched inside the query instead of the path.
        let pattern = match path_prefix {
            Some(p) => format!("{}*{}*", glob_escape(prefix), glob_escape(p)),
            None => format!("{}*", glob_escape(prefix)),
        };
        let work = async {
            let mut cursor: u64 = 0;
            let mut deleted = 0usize;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH)
                    .query_async(&mut conn)
                    .await?;
                let doomed: Vec<&String> = keys
                    .iter()
                    .filter(|k| match path_prefix {
                        None => true,
                        Some(p) => k
                            .strip_prefix(prefix.as_str())
                            .and_then(path_of_full)
                            .is_some_and(|path| path.starts_with(p)),
                    })
                    .collect();
                for chunk in doomed.chunks(SCAN_BATCH) {
                    let n: usize = redis::cmd("UNLINK")
                        .arg(chunk)
                        .query_async(&mut conn)
                        .await?;
                    deleted += n;
                }
                if next == 0 {
                    return Ok::<usize, redis::RedisError>(deleted);
                }
                cursor = next;
            }
        };
        match tokio::time::timeout(PURGE_TIMEOUT, work).await {
            Ok(Ok(n)) => {
                Inner::note_success(&self.inner);
                Ok(n)
            }
            Ok(Err(e)) => {
                Inner::note_failure(&self.inner, generation, &e);
                Err(SharedError::Redis(e))
            }
            Err(_) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                Err(SharedError::Timeout(PURGE_TIMEOUT))
            }
        }
    }

    fn connection(&self) -> Option<(u64, ConnectionManager)> {
        let conn = self.inner.conn.lock().clone();
        if conn.is_none() {
            Inner::ensure_connecting(&self.inner);
        }
        conn
    }

    /// Runs one command within the timeout, keeping the up/down state and counters.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, SharedError> {
        let Some((generation, mut conn)) = self.connection() else {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
            return Err(SharedError::Unavailable);
        };
        match tokio::time::timeout(self.inner.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                Inner::note_success(&self.inner);
                Ok(v)
            }
            Ok(Err(e)) => {
                Inner::note_failure(&self.inner, generation, &e);
                Err(SharedError::Redis(e))
            }
            Err(_) => {
                Inner::note_timeout(&self.inner, generation);
                Err(SharedError::Timeout(self.inner.timeout))
            }
        }
    }
}

impl Inner {
    fn ensure_connecting(this: &Arc<Self>) {
        if this.conn.lock().is_some() || this.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.connecting.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(connect_loop(Arc::downgrade(this)));
    }

    fn note_success(this: &Arc<Self>) {
        this.consecutive_timeouts.store(0, Ordering::Relaxed);
        this.mark_up();
    }

    fn note_failure(this: &Arc<Self>, generation: u64, e: &redis::RedisError) {
        this.errors.fetch_add(1, Ordering::Relaxed);
        if e.is_io_error() || e.is_unrecoverable_error() || e.is_connection_dropped() {
            this.mark_down(&e.to_string());
            Self::reconnect(this, generation);
        } else {
            // A server-side error (e.g. OOM) is not an outage: count it, log quietly.
            log::debug!(
                "shared cache {} answered with an error: {e}",
                this.log_target
            );
        }
    }

    fn note_timeout(this: &Arc<Self>, generation: u64) {
        this.errors.fetch_add(1, Ordering::Relaxed);
        let n = this.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= TIMEOUTS_BEFORE_RECONNECT {
            this.mark_down(&format!(
                "{n} calls in a row timed out after {:?}",
                this.timeout
            ));
            this.consecutive_timeouts.store(0, Ordering::Relaxed);
            Self::reconnect(this, generation);
        }
    }

    /// Drops connection `generation` (if still current) and starts the connect loop.
    fn reconnect(this: &Arc<Self>, generation: u64) {
        {
            let mut conn = this.conn.lock();
            if conn.as_ref().is_some_and(|(g, _)| *g == generation) {
                *conn = None;
            }
        }
        Self::ensure_connecting(this);
    }

    fn mark_up(&self) {
        match self.state.swap(STATE_UP, Ordering::AcqRel) {
            STATE_DOWN => log::info!("shared cache {} is reachable again", self.log_target),
            STATE_UNKNOWN => log::info!("shared cache {} connected", self.log_target),
            _ => {}
        }
    }

    fn mark_down(&self, reason: &str) {
        if self.state.swap(STATE_DOWN, Ordering::AcqRel) != STATE_DOWN {
            log::warn!(
                "shared cache {} is unreachable ({reason}); serving from memory until it recovers",
                self.log_target
            );
        }
    }
}

/// Background task: connect with backoff until connected or until the tier is dropped.
async fn connect_loop(weak: Weak<Inner>) {
    let mut backoff = INITIAL_RECONNECT_BACKOFF;
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let client = inner.client.clone();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_number_of_retries(1)
            .set_factor(50)
            .set_max_delay(500);
        // why: do not keep the tier alive while waiting on the network.
        drop(inner);
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT * 3,
            ConnectionManager::new_with_config(client, config),
        )
        .await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        match attempt {
            Ok(Ok(manager)) => {
                let generation = inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *inner.conn.lock() = Some((generation, manager));
                inner.connecting.store(false, Ordering::Release);
                inner.consecutive_timeouts.store(0, Ordering::Relaxed);
                inner.mark_up();
                return;
            }
            Ok(Err(e)) => inner.mark_down(&e.to_string()),
            Err(_) => inner.mark_down("connection attempt timed out"),
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
    }
}

/// Escapes Redis glob metacharacters so `s` matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `redis://user:secret@host:6379/0` -> `redis://host:6379/0` (no credentials in logs).
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_removed_from_logged_urls() {
        assert_eq!(
            redact_url("redis://u:p@h:6379/0"),
            "redis://h:6379/0",
            "user and password dropped"
        );
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0", "no change");
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\", "escaped");
    }

    #[test]
    fn malformed_url_is_a_setup_error() {
        let r = SharedTier::new(&SharedSettings::new("not a url"));
        assert!(
            matches!(r, Err(SharedError::InvalidUrl { .. })),
            "bad URL rejected"
        );
    }

    #[test]
    fn creation_outside_a_runtime_does_not_connect_or_fail() {
        let tier =
            SharedTier::new(&SharedSettings::new("redis://127.0.0.1:1/0")).expect("valid URL");
        tier.connect_in_background();
        assert!(!tier.is_up(), "not connected yet");
    }
}
