//! The response cache for expensive, identical-for-everyone GETs (e.g. `GET /register`,
//! ~100 ms to render, asked for by 1000+ hosts at once).
//!
//! It owns three things: canonical keys ([`key`]), a byte-bounded in-memory LRU ([`memory`])
//! with an optional shared Redis/Valkey tier ([`shared`]), and request coalescing
//! ([`single_flight`]) so a burst of identical misses runs the origin fetch exactly once.
//!
//! [`ResponseCache::get_or_fetch`] looks up, in order:
//! 1. memory;
//! 2. otherwise it joins the key's flight. The one leader runs, in a detached task (so the
//!    leading client's disconnect cannot cancel it): the shared tier (a hit there warms
//!    memory with the remaining TTL), then the caller-supplied fetch. Every caller, the
//!    leader's included, awaits the flight's result for at most `follower_timeout`.
//!
//! Only statuses in `cacheable_statuses` (default `[200]`) are stored, in memory and in
//! Redis with the remaining TTL. Other statuses and fetch errors reach the callers waiting at
//! that moment but are not stored: the next request fetches again.
//!
//! The proxy writes the returned [`CachedResponse`] to the client; it strips hop-by-hop and
//! per-client headers (`Set-Cookie`, `Connection`, ...) in the fetch before returning.

pub mod hold;
pub mod key;
pub mod memory;
pub mod rules;
pub mod shared;
pub mod single_flight;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use hold::{Hold, Room};
pub use key::{canonical_key, CacheKey};
pub use memory::{CachedResponse, MemoryCache};
pub use shared::{SharedError, SharedSettings, SharedTier};
pub use single_flight::{Flight, SingleFlight};

/// Default in-memory bound: 64 MiB.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// How often expired memory entries are freed ([`ResponseCache::sweep_expired`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound on how long a caller waits for a flight's result.
pub const DEFAULT_FOLLOWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Runtime settings of a [`ResponseCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// In-memory bound in bytes (default [`DEFAULT_MAX_BYTES`]).
    pub max_bytes: usize,
    /// Largest single entry kept in memory; `None` means `max_bytes / 8`.
    pub max_entry_bytes: Option<usize>,
    /// The shared Redis/Valkey tier, if any (default none).
    pub shared: Option<SharedSettings>,
    /// How long any caller (leader's included) waits for the fetch result before
    /// [`FetchError::WaitTimeout`]; the fetch itself continues and still stores
    /// (default [`DEFAULT_FOLLOWER_TIMEOUT`]).
    pub follower_timeout: Duration,
    /// Statuses that are stored (default `[200]`).
    pub cacheable_statuses: Vec<u16>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entry_bytes: None,
            shared: None,
            follower_timeout: DEFAULT_FOLLOWER_TIMEOUT,
            cacheable_statuses: vec![200],
        }
    }
}

/// Which tier answered a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This process's memory.
    Memory,
    /// The shared Redis/Valkey tier.
    Shared,
}

/// What may be stored from one fetch: the route's TTL, its statuses (`None` = the cache-wide
/// `cacheable_statuses`) and its largest entry in bytes (`None` = the memory tier's bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRule {
    pub ttl: Duration,
    pub statuses: Option<Vec<u16>>,
    pub max_entry_bytes: Option<usize>,
}

/// An origin answer as a fetch hands it over: the response, and what the origin said about
/// storing it (`None`: only the route's rule applies).
#[derive(Debug)]
pub struct Fetched {
    pub resp: CachedResponse,
    pub store: Option<rules::StoreDecision>,
    /// The bytes the fill reserved for the answer ([`ResponseCache::hold`]): they become the
    /// entry's charge when it is stored and are released otherwise.
    pub hold: Option<Hold>,
}

impl From<CachedResponse> for Fetched {
    fn from(resp: CachedResponse) -> Self {
        Fetched {
            resp,
            store: None,
            hold: None,
        }
    }
}

/// How a [`ResponseCache::get_or_fetch`] call was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from a cache tier; `age` is the time since the origin response was stored.
    Hit { tier: Tier, age: Duration },
    /// This caller led the flight and the origin was fetched.
    Miss,
    /// Another caller led the flight; this one received its result.
    Coalesced,
}

/// Why no response could be produced. Clonable because one result reaches every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The caller-supplied fetch failed (connect error, upstream timeout, queue full...).
    #[error("origin fetch failed: {0}")]
    Upstream(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The flight's result did not arrive within `follower_timeout`.
    #[error("no response from the origin fetch within {0:?}")]
    WaitTimeout(Duration),
    /// The fetch task ended without a result (it panicked or the runtime shut down).
    #[error("origin fetch ended without a result")]
    Aborted,
}

impl FetchError {
    /// Wraps any error as [`FetchError::Upstream`].
    pub fn upstream(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Upstream(Arc::from(e.into()))
    }
}

/// What to remove from the cache, and how much was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// Entries removed from memory.
    pub memory: usize,
    /// Keys removed from the shared tier; `None` when there is no shared tier or it failed.
    pub shared: Option<usize>,
}

impl PurgeReport {
    /// Memory entries plus shared keys removed.
    pub fn total(&self) -> usize {
        self.memory + self.shared.unwrap_or(0)
    }
}

/// Counters since creation plus the current memory occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits_memory: u64,
    pub hits_shared: u64,
    /// Flights that fetched from the origin.
    pub misses: u64,
    /// Callers served by another caller's flight.
    pub coalesced: u64,
    /// Shared-tier calls that failed (not connected, timed out or errored).
    pub shared_errors: u64,
    /// Responses accepted for storing (cacheable status, non-zero TTL).
    pub stores: u64,
}

/// Where a flight's response came from (internal to the flight protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Memory,
    Shared,
    Origin,
}

type FlightValue = Result<(Arc<CachedResponse>, Source), FetchError>;

#[derive(Default)]
struct Counters {
    hits_memory: AtomicU64,
    hits_shared: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    stores: AtomicU64,
}

struct Inner {
    memory: MemoryCache,
    shared: Option<SharedTier>,
    flights: SingleFlight<String, FlightValue>,
    follower_timeout: Duration,
    cacheable_statuses: Vec<u16>,
    counters: Counters,
}

/// The two-tier, coalescing response cache. Clones share everything.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

impl ResponseCache {
    /// Builds the cache. Never connects or blocks: the shared tier connects in the
    /// background on first use. Fails only on a malformed shared-tier URL.
    pub fn new(settings: CacheSettings) -> Result<Self, SharedError> {
        let memory = match settings.max_entry_bytes {
            Some(max_entry) => MemoryCache::with_max_entry_bytes(settings.max_bytes, max_entry),
            None => MemoryCache::new(settings.max_bytes),
        };
        let shared = settings.shared.as_ref().map(SharedTier::new).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                memory,
                shared,
                flights: SingleFlight::new(),
                follower_timeout: settings.follower_timeout,
                cacheable_statuses: settings.cacheable_statuses,
                counters: Counters::default(),
            }),
        })
    }

    /// Returns the cached response for `key` or fetches it once for all concurrent callers.
    ///
    /// `fetch` is called only by the flight's leader; the future it returns runs in a
    /// detached task (dropping this call's future does not cancel it) after a shared-tier
    /// miss, and is dropped unpolled on a shared-tier hit. A fetched response's
    /// `stored_at`/`expires_at` are set here from `ttl`. Must be called within a tokio
    /// runtime. Waits at most `follower_timeout` for the flight.
    pub async fn get_or_fetch<F, Fut, R>(
        &self,
        key: CacheKey,
        ttl: Duration,
        fetch: F,
    ) -> Result<(Arc<CachedResponse>, Outcome), FetchError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<R, FetchError>> + Send + 'static,
        R: Into<Fetched> + Send + 'static,
    {
        self.get_or_fetch_with(
            key,
            StoreRule {
                ttl,
                statuses: None,
                max_entry_bytes: None,
            },
            fetch,
        )
        .await
    }

    /// [`get_or_fetch`](Self::get_or_fetch) with a per-call storage rule (a route's own
    /// statuses and entry size limit; the memory tier's global bounds still apply).
    pub async fn get_or_fetch_with<F, Fut, R>(
        &self,
        key: CacheKey,
        rule: StoreRule,
        fetch: F,
    ) -> Result<(Arc<CachedResponse>, Outcome), FetchError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<R, FetchError>> + Send + 'static,
        R: Into<Fetched> + Send + 'static,
    {
        let result = self.get_or_fetch_inner(&key, rule, fetch).await;
        log_lookup(&key, &result);
        result
    }

    async fn get_or_fetch_inner<F, Fut, R>(
        &self,
        key: &CacheKey,
        rule: StoreRule,
        fetch: F,
    ) -> Result<(Arc<CachedResponse>, Outcome), FetchError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<R, FetchError>> + Send + 'static,
        R: Into<Fetched> + Send + 'static,
    {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.follower_timeout;
        let mut fetch = Some(fetch);
        loop {
            if let Some(hit) = inner.memory.get(key) {
                return Ok(inner.memory_hit(hit));
            }
            let (waiter, leading) = match inner.flights.join(key.full.clone()) {
                Flight::Leader(guard) => {
                    // why: a flight may have stored and finished between our memory miss
                    // and the join; re-check so we do not fetch a fresh entry again.
                    if let Some(hit) = inner.memory.get(key) {
                        guard.publish(Ok((hit.clone(), Source::Memory)));
                        return Ok(inner.memory_hit(hit));
                    }
                    // why: a caller leads at most once; if its flight vanished (runtime
                    // shutdown) there is no fetch left to run.
                    let Some(fetch) = fetch.take() else {
                        return Err(FetchError::Aborted);
                    };
                    let waiter = guard.waiter();
                    let fut = fetch();
                    tokio::spawn(Inner::lead(
                        inner.clone(),
                        guard,
                        key.clone(),
                        rule.clone(),
                        fut,
                    ));
                    (waiter, true)
                }
                Flight::Follower(waiter) => (waiter, false),
            };
            match tokio::time::timeout_at(deadline, waiter.wait()).await {
                Err(_) => return Err(FetchError::WaitTimeout(inner.follower_timeout)),
                // The leader vanished without a result: try again (one of us leads).
                Ok(None) => continue,
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok((resp, source)))) => {
                    let outcome = if !leading {
                        inner.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                        Outcome::Coalesced
                    } else {
                        match source {
                            Source::Origin => Outcome::Miss,
                            Source::Shared => Outcome::Hit {
                                tier: Tier::Shared,
                                age: resp.age(),
                            },
                            Source::Memory => Outcome::Hit {
                                tier: Tier::Memory,
                                age: resp.age(),
                            },
                        }
                    };
                    return Ok((resp, outcome));
                }
            }
        }
    }

    /// Looks `key` up in memory, then in the shared tier (warming memory), without
    /// fetching or joining a flight; for HEAD requests and debugging.
    pub async fn lookup_only(&self, key: &CacheKey) -> Option<(Arc<CachedResponse>, Tier)> {
        let inner = &self.inner;
        let found = if let Some(hit) = inner.memory.get(key) {
            inner.counters.hits_memory.fetch_add(1, Ordering::Relaxed);
            Some((hit, Tier::Memory))
        } else {
            inner.shared_get(key).await.map(|resp| (resp, Tier::Shared))
        };
        if log::log_enabled!(log::Level::Debug) {
            match &found {
                Some((resp, tier)) => log::debug!(
                    "cache=HIT age={}s source={} key={} lookup_only",
                    resp.age().as_secs(),
                    tier_label(*tier),
                    key.display()
                ),
                None => log::debug!("cache=MISS key={} lookup_only", key.display()),
            }
        }
        found
    }

    /// Removes entries whose path starts with `path_prefix` (all entries when `None`)
    /// from memory and from the shared tier. A flight in progress still stores its
    /// result afterwards.
    pub async fn purge(&self, path_prefix: Option<&str>) -> PurgeReport {
        let inner = &self.inner;
        let memory = match path_prefix {
            Some(p) => inner.memory.purge_prefix(p),
            None => inner.memory.purge_all(),
        };
        let shared = match &inner.shared {
            None => None,
            Some(tier) => {
                let r = match path_prefix {
                    Some(p) => tier.purge_prefix(p).await,
                    None => tier.purge_all().await,
                };
                match r {
                    Ok(n) => Some(n),
                    Err(e) => {
                        log::warn!("cache purge skipped the shared tier: {e}");
                        None
                    }
                }
            }
        };
        log::info!(
            "cache purge prefix={} memory={memory} shared={shared:?}",
            path_prefix.unwrap_or("*")
        );
        PurgeReport { memory, shared }
    }

    /// Current counters and memory occupancy.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        CacheStats {
            entries: self.inner.memory.entries(),
            bytes: self.inner.memory.bytes(),
            hits_memory: c.hits_memory.load(Ordering::Relaxed),
            hits_shared: c.hits_shared.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            shared_errors: self.inner.shared.as_ref().map_or(0, SharedTier::errors),
            stores: c.stores.load(Ordering::Relaxed),
        }
    }

    /// Frees expired memory entries every [`SWEEP_INTERVAL`] until `shutdown` changes, so an
    /// expired entry that is never read again does not hold memory until it is evicted.
    pub async fn sweep_expired(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let n = self.inner.memory.purge_expired();
                    if n > 0 {
                        log::debug!("cache: swept {n} expired entries");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// A reservation in the memory tier for an answer a fill is about to buffer (see
    /// [`hold`]); empty until it grows.
    pub fn hold(&self) -> Hold {
        Hold::new(self.inner.clone())
    }

    /// Keys currently being fetched.
    pub fn in_flight(&self) -> usize {
        self.inner.flights.in_flight()
    }

    /// Connects the shared tier (if any), waiting at most `within`; true when there is no
    /// shared tier or it is connected.
    pub async fn connect_shared(&self, within: Duration) -> bool {
        match &self.inner.shared {
            None => true,
            Some(tier) => tier.connect(within).await,
        }
    }

    /// Whether the shared tier is configured and its last call succeeded.
    pub fn shared_is_up(&self) -> bool {
        self.inner.shared.as_ref().is_some_and(SharedTier::is_up)
    }
}

impl Inner {
    fn memory_hit(&self, hit: Arc<CachedResponse>) -> (Arc<CachedResponse>, Outcome) {
        self.counters.hits_memory.fetch_add(1, Ordering::Relaxed);
        let age = hit.age();
        (
            hit,
            Outcome::Hit {
                tier: Tier::Memory,
                age,
            },
        )
    }

    /// Shared-tier lookup that warms memory on a hit.
    async fn shared_get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let resp = Arc::new(self.shared.as_ref()?.get(key).await?);
        self.counters.hits_shared.fetch_add(1, Ordering::Relaxed);
        self.memory.put(key.clone(), resp.clone());
        Some(resp)
    }

    /// The leader's detached work: shared tier, then origin; store; publish.
    async fn lead<Fut, R>(
        this: Arc<Self>,
        guard: single_flight::LeaderGuard<String, FlightValue>,
        key: CacheKey,
        rule: StoreRule,
        fetch: Fut,
    ) where
        Fut: Future<Output = Result<R, FetchError>> + Send + 'static,
        R: Into<Fetched> + Send + 'static,
    {
        if let Some(resp) = this.shared_get(&key).await {
            guard.publish(Ok((resp, Source::Shared)));
            return;
        }
        this.counters.misses.fetch_add(1, Ordering::Relaxed);
        // why: a nested task turns a panic in the caller's fetch into `Aborted` for all
        // waiters instead of tearing down this task and leaving them to retry.
        let fetched = tokio::spawn(fetch)
            .await
            .unwrap_or(Err(FetchError::Aborted));
        let Fetched {
            mut resp,
            store,
            mut hold,
        } = match fetched {
            Ok(f) => f.into(),
            Err(e) => {
                guard.publish(Err(e));
                return;
            }
        };
        let now = SystemTime::now();
        let ttl = match store {
            None => rule.ttl,
            Some(rules::StoreDecision::Store { ttl }) => ttl.min(rule.ttl),
            Some(rules::StoreDecision::DoNotStore(why)) => {
                log::debug!("cache: not storing {} ({})", key.display(), why.as_str());
                Duration::ZERO
            }
        };
        resp.stored_at = now;
        resp.expires_at = now + ttl;
        let resp = Arc::new(resp);
        let status_ok = match &rule.statuses {
            Some(list) => list.contains(&resp.status),
            None => this.cacheable_statuses.contains(&resp.status),
        };
        let size = resp.body.len()
            + resp
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        let size_ok = rule.max_entry_bytes.is_none_or(|m| size <= m);
        let store = !ttl.is_zero() && status_ok && size_ok;
        if store {
            this.counters.stores.fetch_add(1, Ordering::Relaxed);
            let held = hold.as_mut().map_or(0, Hold::take);
            this.memory.put_held(key.clone(), resp.clone(), held);
        }
        drop(hold);
        // why: publish before the Redis write so no client waits on the shared tier.
        guard.publish(Ok((resp.clone(), Source::Origin)));
        if store {
            if let Some(tier) = &this.shared {
                // Errors are counted and logged by the tier; memory already has it.
                let _ = tier.set(&key, &resp).await;
            }
        }
    }
}

fn tier_label(tier: Tier) -> &'static str {
    match tier {
        Tier::Memory => "local",
        Tier::Shared => "shared",
    }
}

/// One debug line per lookup, e.g. `cache=HIT age=42s source=local key=GET h/register?...`.
fn log_lookup(key: &CacheKey, result: &Result<(Arc<CachedResponse>, Outcome), FetchError>) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let key = key.display();
    match result {
        Ok((_, Outcome::Hit { tier, age })) => log::debug!(
            "cache=HIT age={}s source={} key={key}",
            age.as_secs(),
            tier_label(*tier)
        ),
        Ok((resp, Outcome::Miss)) => {
            log::debug!("cache=MISS status={} key={key}", resp.status)
        }
        Ok((resp, Outcome::Coalesced)) => {
            log::debug!("cache=COALESCED status={} key={key}", resp.status)
        }
        Err(e) => log::debug!("cache=ERROR error=\"{e}\" key={key}"),
    }
}
