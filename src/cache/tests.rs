//! Behaviour tests of [`ResponseCache`] with real concurrency, real timers and a real
//! `redis-server` started on a free loopback port (killed by PID when the test ends).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

const REDIS_BIN: &str = "/usr/bin/redis-server";

/// A redis-server child process on a fixed loopback port.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self { port, child: None };
        s.restart();
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new(REDIS_BIN)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`) to the server we started, by PID.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn key(query: &str) -> CacheKey {
    canonical_key(
        "GET",
        "capsule.example",
        "/register",
        Some(query),
        &[("authorization", None)],
        b"secret",
    )
}

fn settings(shared: Option<SharedSettings>) -> CacheSettings {
    CacheSettings {
        max_bytes: 1 << 20,
        shared,
        follower_timeout: Duration::from_secs(5),
        ..CacheSettings::default()
    }
}

fn shared_settings(url: String) -> SharedSettings {
    SharedSettings {
        url,
        timeout: Duration::from_millis(50),
        key_prefix: "floodgate-test:".into(),
    }
}

fn ok_response(status: u16, body: &'static str) -> CachedResponse {
    CachedResponse::new(
        status,
        vec![("content-type".into(), b"text/plain".to_vec())],
        Bytes::from_static(body.as_bytes()),
        Duration::ZERO,
    )
}

/// A fetch that counts its runs and answers `status` with `body` after `delay`.
fn counting_fetch(
    counter: &Arc<AtomicUsize>,
    status: u16,
    body: &'static str,
    delay: Duration,
) -> impl FnOnce() -> std::pin::Pin<
    Box<dyn Future<Output = Result<CachedResponse, FetchError>> + Send + 'static>,
> {
    let counter = counter.clone();
    move || {
        Box::pin(async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            Ok(ok_response(status, body))
        })
    }
}

const TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_identical_calls_fetch_once() {
    let cache = ResponseCache::new(settings(None)).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let cache = cache.clone();
        let fetches = fetches.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch(
                    key("org_id=1"),
                    TTL,
                    counting_fetch(&fetches, 200, "script", Duration::from_millis(100)),
                )
                .await
        }));
    }
    let mut misses = 0;
    for t in tasks {
        let (resp, outcome) = t.await.unwrap().expect("every caller gets the response");
        assert_eq!(&resp.body[..], b"script", "body delivered to every caller");
        misses += usize::from(outcome == Outcome::Miss);
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "origin fetched exactly once"
    );
    assert_eq!(misses, 1, "exactly one caller reports the miss");
    let stats = cache.stats();
    assert_eq!(
        stats.coalesced + stats.hits_memory,
        499,
        "the rest coalesced or hit: {stats:?}"
    );
    assert_eq!(cache.in_flight(), 0, "no flight left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_cacheable_status_reaches_current_waiters_but_is_not_stored() {
    let cache = ResponseCache::new(settings(None)).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = cache.clone();
        let fetches = fetches.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch(
                    key("a=1"),
                    TTL,
                    counting_fetch(&fetches, 500, "boom", Duration::from_millis(100)),
                )
                .await
        }));
    }
    for t in tasks {
        let (resp, _) = t.await.unwrap().unwrap();
        assert_eq!(resp.status, 500, "waiters receive the 500");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for the burst");
    assert_eq!(cache.stats().entries, 0, "500 not stored");
    let (_, outcome) = cache
        .get_or_fetch(
            key("a=1"),
            TTL,
            counting_fetch(&fetches, 200, "ok", Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Miss, "next request fetches again");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "second fetch after the 500"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_error_and_panic_reach_waiters_and_are_not_stored() {
    let cache = ResponseCache::new(settings(None)).unwrap();
    let err = cache
        .get_or_fetch(key("e=1"), TTL, || async {
            Err::<CachedResponse, _>(FetchError::upstream("connection refused"))
        })
        .await
        .expect_err("error is passed through");
    assert!(
        err.to_string().contains("connection refused"),
        "error kept: {err}"
    );
    let err = cache
        .get_or_fetch(key("e=1"), TTL, || async {
            #[allow(unreachable_code)]
            {
                panic!("fetch panicked on purpose");
                Ok::<CachedResponse, FetchError>(ok_response(200, ""))
            }
        })
        .await
        .expect_err("a panicking fetch is an error, not a hang");
    assert!(
        matches!(err, FetchError::Aborted),
        "panic -> Aborted: {err}"
    );
    assert_eq!(cache.in_flight(), 0, "flight released after the panic");
    let fetches = Arc::new(AtomicUsize::new(0));
    cache
        .get_or_fetch(
            key("e=1"),
            TTL,
            counting_fetch(&fetches, 200, "ok", Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched after errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entry_causes_exactly_one_new_fetch() {
    let cache = ResponseCache::new(settings(None)).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let ttl = Duration::from_millis(200);
    let fetch = || counting_fetch(&fetches, 200, "v", Duration::from_millis(50));
    cache.get_or_fetch(key("t=1"), ttl, fetch()).await.unwrap();
    let (_, outcome) = cache.get_or_fetch(key("t=1"), ttl, fetch()).await.unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Hit {
                tier: Tier::Memory,
                ..
            }
        ),
        "fresh entry hits: {outcome:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let cache = cache.clone();
        let f = fetch();
        tasks.push(tokio::spawn(async move {
            cache.get_or_fetch(key("t=1"), ttl, f).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "one fetch after expiry for the whole burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_whose_caller_is_dropped_still_completes_and_stores() {
    let cache = ResponseCache::new(settings(None)).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let leader = {
        let cache = cache.clone();
        let f = counting_fetch(&fetches, 200, "detached", Duration::from_millis(150));
        tokio::spawn(async move { cache.get_or_fetch(key("d=1"), TTL, f).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(cache.in_flight(), 1, "fetch in progress");
    leader.abort();
    assert!(
        leader.await.unwrap_err().is_cancelled(),
        "caller future dropped"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (resp, outcome) = cache
        .get_or_fetch(
            key("d=1"),
            TTL,
            counting_fetch(&fetches, 200, "second", Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(
        &resp.body[..],
        b"detached",
        "detached fetch stored its result"
    );
    assert!(
        matches!(outcome, Outcome::Hit { .. }),
        "served from memory: {outcome:?}"
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "no second fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_longer_than_follower_timeout_fails_but_fetch_still_stores() {
    let cache = ResponseCache::new(CacheSettings {
        follower_timeout: Duration::from_millis(100),
        ..settings(None)
    })
    .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let err = cache
        .get_or_fetch(
            key("slow=1"),
            TTL,
            counting_fetch(&fetches, 200, "slow", Duration::from_millis(300)),
        )
        .await
        .expect_err("wait is bounded");
    assert!(matches!(err, FetchError::WaitTimeout(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "returned at the timeout"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (resp, _) = cache
        .get_or_fetch(
            key("slow=1"),
            TTL,
            counting_fetch(&fetches, 200, "x", Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(&resp.body[..], b"slow", "slow fetch was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_fetch_once_between_them() {
    let redis = RedisServer::start();
    let a = ResponseCache::new(settings(Some(shared_settings(redis.url())))).unwrap();
    let b = ResponseCache::new(settings(Some(shared_settings(redis.url())))).unwrap();
    wait_shared_up(&a).await;
    wait_shared_up(&b).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = || counting_fetch(&fetches, 200, "pool", Duration::from_millis(20));
    let (_, outcome) = a.get_or_fetch(key("s=1"), TTL, f()).await.unwrap();
    assert_eq!(outcome, Outcome::Miss, "A fetches");
    wait_until("A's write reaches Redis", || async {
        b.lookup_only(&key("s=1")).await.is_some()
    })
    .await;
    b.purge_memory_only();
    let (resp, outcome) = b.get_or_fetch(key("s=1"), TTL, f()).await.unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Hit {
                tier: Tier::Shared,
                ..
            }
        ),
        "B hits the shared tier: {outcome:?}"
    );
    assert_eq!(&resp.body[..], b"pool", "shared body");
    assert!(
        resp.remaining_ttl() <= TTL && resp.remaining_ttl() > TTL - Duration::from_secs(5),
        "remaining TTL carried over"
    );
    let (_, outcome) = b.get_or_fetch(key("s=1"), TTL, f()).await.unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Hit {
                tier: Tier::Memory,
                ..
            }
        ),
        "shared hit warmed memory: {outcome:?}"
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for the pool");

    let report = a.purge(Some("/register")).await;
    assert_eq!(report.memory, 1, "A's memory entry purged");
    assert_eq!(report.shared, Some(1), "the Redis key purged");
    assert!(
        a.lookup_only(&key("s=1")).await.is_none(),
        "gone from both tiers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_loses_no_call_and_restarting_resumes_sharing() {
    let mut redis = RedisServer::start();
    let a = ResponseCache::new(settings(Some(shared_settings(redis.url())))).unwrap();
    let b = ResponseCache::new(settings(Some(shared_settings(redis.url())))).unwrap();
    wait_shared_up(&a).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let workload = |cache: ResponseCache, round: usize| {
        let fetches = fetches.clone();
        async move {
            for i in 0..40 {
                let q = format!("round={round}&i={}", i % 10);
                let started = Instant::now();
                let r = cache
                    .get_or_fetch(
                        key(&q),
                        TTL,
                        counting_fetch(&fetches, 200, "w", Duration::from_millis(2)),
                    )
                    .await;
                assert!(r.is_ok(), "call {i} of round {round} failed: {r:?}");
                assert!(
                    started.elapsed() < Duration::from_millis(500),
                    "call {i} of round {round} took {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let running = tokio::spawn(workload(a.clone(), 1));
    tokio::time::sleep(Duration::from_millis(60)).await;
    redis.kill();
    running.await.expect("no call lost while Redis died");
    workload(a.clone(), 2).await;
    assert!(!a.shared_is_up(), "A noticed the outage");
    assert!(a.stats().shared_errors > 0, "errors counted");

    redis.restart();
    let fetches_before = fetches.load(Ordering::SeqCst);
    wait_until("sharing resumes after restart", || async {
        let _ = a
            .get_or_fetch(
                key("after=1"),
                TTL,
                counting_fetch(&fetches, 200, "back", Duration::ZERO),
            )
            .await;
        // Evict A's memory copy so its next call re-writes Redis if the write failed.
        if b.lookup_only(&key("after=1")).await.is_some() {
            return true;
        }
        a.purge_memory_only();
        false
    })
    .await;
    assert!(a.shared_is_up(), "A reconnected");
    assert!(b.shared_is_up(), "B reconnected");
    assert!(
        fetches.load(Ordering::SeqCst) > fetches_before,
        "A fetched after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_on_a_closed_port_adds_at_most_the_timeout() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = ResponseCache::new(settings(Some(shared_settings(format!(
        "redis://127.0.0.1:{closed_port}/0"
    )))))
    .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    for i in 0..20 {
        let started = Instant::now();
        let (resp, outcome) = cache
            .get_or_fetch(
                key(&format!("c={i}")),
                TTL,
                counting_fetch(&fetches, 200, "mem", Duration::ZERO),
            )
            .await
            .expect("served without Redis");
        assert_eq!(outcome, Outcome::Miss, "fetched");
        assert_eq!(&resp.body[..], b"mem", "body");
        assert!(
            started.elapsed() < Duration::from_millis(50 + 40),
            "call {i} took {:?}, more than the 50 ms shared timeout",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, outcome) = cache
        .get_or_fetch(
            key("c=0"),
            TTL,
            counting_fetch(&fetches, 200, "mem", Duration::ZERO),
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Hit { .. }),
        "memory still serves: {outcome:?}"
    );
    assert!(!cache.shared_is_up(), "tier reported down");
    assert!(
        cache.stats().shared_errors >= 20,
        "misses counted as errors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_stops_answering_adds_at_most_the_timeout_per_call() {
    let redis = RedisServer::start();
    let cache = ResponseCache::new(settings(Some(shared_settings(redis.url())))).unwrap();
    wait_shared_up(&cache).await;
    redis.signal("-STOP");
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        let (_, outcome) = cache
            .get_or_fetch(
                key(&format!("hung={i}")),
                TTL,
                counting_fetch(&fetches, 200, "m", Duration::ZERO),
            )
            .await
            .expect("served while Redis hangs");
        assert_eq!(outcome, Outcome::Miss, "fetched from origin");
        slowest = slowest.max(started.elapsed());
    }
    redis.signal("-CONT");
    assert!(
        slowest < Duration::from_millis(50 + 60),
        "slowest call {slowest:?} exceeds the 50 ms shared timeout by too much"
    );
    assert!(cache.stats().shared_errors > 0, "timeouts counted");
}

impl ResponseCache {
    /// Test helper: forget memory, keep Redis.
    fn purge_memory_only(&self) {
        self.inner.memory.purge_all();
    }
}

async fn wait_shared_up(cache: &ResponseCache) {
    wait_until("shared tier connects", || async {
        cache.lookup_only(&key("probe")).await;
        cache.shared_is_up()
    })
    .await;
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
