//! What one cache entry costs: inserts N entries of the shape a `GET /register` fill stores
//! (a ~60-byte key, the origin's 5 headers, a small or large body) into the memory tier and
//! reports, per entry, the heap bytes still allocated, the allocations made per insert, the
//! bytes charged (`floodgate_cache_bytes`) and the resident growth (`VmRSS`).
//!
//! Run: `cargo bench --bench cache_memory` (`-- 200000 30` for 200,000 entries of 30-byte
//! bodies). The counting allocator wraps the system allocator (glibc), so "heap bytes" are the
//! bytes asked for; the malloc chunk overhead (8 bytes, 16-byte rounding) is in the RSS column.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floodgate::cache::memory::heap_cost;
use floodgate::cache::{canonical_key, CachedResponse, MemoryCache};

struct Counting;

/// Live bytes as the allocator uses them ([`heap_cost`]: chunk header and rounding).
static LIVE_REAL: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        LIVE_REAL.fetch_add(heap_cost(l.size()), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        LIVE_REAL.fetch_sub(heap_cost(l.size()), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        LIVE_REAL.fetch_add(heap_cost(new), Ordering::Relaxed);
        LIVE_REAL.fetch_sub(heap_cost(l.size()), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The headers a fill of `/register` from the test origin stores.
fn headers(body_len: usize) -> Vec<(String, Vec<u8>)> {
    vec![
        ("content-type".into(), b"text/x-shellscript".to_vec()),
        ("content-length".into(), body_len.to_string().into_bytes()),
        ("date".into(), b"Sun, 06 Dec 2026 00:00:00 GMT".to_vec()),
        ("server".into(), b"sim-origin".to_vec()),
        ("x-origin".into(), b"app".to_vec()),
    ]
}

fn run(n: usize, body_len: usize) {
    let cache = MemoryCache::new(usize::MAX / 2);
    let body = vec![b'x'; body_len];
    // Built before counting: the fill path makes these, the store keeps them.
    let items: Vec<_> = (0..n)
        .map(|i| {
            let key = canonical_key(
                "GET",
                "127.0.0.1:18101",
                "/register",
                Some(&format!("activation_keys=ak-{i}&org=1")),
                &[],
                b"secret",
            );
            let resp = CachedResponse::new(
                200,
                headers(body_len),
                Bytes::copy_from_slice(&body),
                Duration::from_secs(600),
            );
            (key, resp)
        })
        .collect();
    let (allocs0, rss0) = (ALLOCS.load(Ordering::Relaxed), rss_bytes());
    for (key, resp) in items {
        cache.put(key, Arc::new(resp));
    }
    let (live1, allocs1, rss1) = (
        LIVE.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
        rss_bytes(),
    );
    // The inputs were moved into the store (or copied and dropped) and their Vec is freed:
    // everything live now beyond what was live before `run` is held by the store.
    let per = |a: usize, b: usize| b.saturating_sub(a) as f64 / n as f64;
    let held = live1 - BASE.load(Ordering::Relaxed);
    let held_real = LIVE_REAL.load(Ordering::Relaxed) - BASE_REAL.load(Ordering::Relaxed);
    println!(
        "entries {n:>7} body {body_len:>7} B | heap held/entry {:>9.0} B (allocator-rounded {:>9.0} B) | allocs/insert {:>5.1} | charged/entry {:>9.0} B | RSS growth/entry {:>9.0} B",
        held as f64 / n as f64,
        held_real as f64 / n as f64,
        per(allocs0, allocs1),
        cache.bytes() as f64 / n as f64,
        per(rss0, rss1),
    );
    drop(cache);
}

static BASE: AtomicUsize = AtomicUsize::new(0);
static BASE_REAL: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let cases: Vec<(usize, usize)> = match (args.first(), args.get(1)) {
        (Some(n), Some(b)) => vec![(n.parse().unwrap_or(100_000), b.parse().unwrap_or(30))],
        _ => vec![(100_000, 30), (100_000, 1024), (2_000, 256 * 1024)],
    };
    println!(
        "ENTRY_OVERHEAD_BYTES = {} (fixed part of every charge)",
        floodgate::cache::memory::ENTRY_OVERHEAD_BYTES
    );
    for (n, body) in cases {
        BASE.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
        BASE_REAL.store(LIVE_REAL.load(Ordering::Relaxed), Ordering::Relaxed);
        run(n, body);
    }
}
