//! The in-memory tier: a byte-bounded LRU of [`CachedResponse`]s, plus the response type
//! itself and its compact binary encoding (used by the Redis tier).
//!
//! Eviction is least-recently-used by bytes: every entry is charged what it holds on the heap
//! ([`MemoryCache::charge`]: each allocation of the key, header names and values, body and
//! variant as the allocator rounds it, plus [`ENTRY_OVERHEAD_BYTES`] for the fixed-size parts),
//! and inserting evicts the least recently read/written entries until the total fits
//! `max_bytes`; answers still being filled reserve their bytes against the same bound
//! ([`super::hold`]). Expired entries are removed when read and by [`MemoryCache::purge_expired`],
//! which the gateway runs every second. One `parking_lot::Mutex` guards a `HashMap` (key -> entry) and a
//! `BTreeMap` (use tick -> key) that orders entries by last use: O(log n) per operation.
//! The key text is stored once per entry (an `Arc<str>` shared by both maps; the path for
//! purges is read back from it), not as a [`CacheKey`] with its own copies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use super::key::{path_of_full, CacheKey};

/// What the allocator really uses for an `n`-byte allocation: an 8-byte chunk header,
/// 16-byte rounding and a 32-byte minimum (glibc; mimalloc's size classes are no larger).
pub const fn heap_cost(n: usize) -> usize {
    let rounded = (n + 8 + 15) & !15;
    if n == 0 {
        0
    } else if rounded < 32 {
        32
    } else {
        rounded
    }
}

/// Fixed bytes charged per entry on top of its variable-size allocations (326 B on x86-64):
/// its `Arc<CachedResponse>`, its slot in the key map (counted twice: a hash map is between
/// half and fully loaded), its node share in the use order (`u64` + `Arc<str>` per key,
/// B-tree nodes about 2/3 full) and the body's shared header. `benches/cache_memory.rs`
/// checks the total charge against the heap an entry really holds (allocator-rounded).
pub const ENTRY_OVERHEAD_BYTES: usize = heap_cost(std::mem::size_of::<CachedResponse>() + 16)
    + 2 * (std::mem::size_of::<(Arc<str>, Entry)>() + 1)
    + 3 * (std::mem::size_of::<(u64, Arc<str>)>()) / 2
    + 32;

/// A stored response: what the client receives on a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers in order (names as sent by the origin; the caller strips
    /// hop-by-hop and per-client headers such as `Set-Cookie` before storing).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body.
    pub body: Bytes,
    /// When the origin response was received.
    pub stored_at: SystemTime,
    /// When the entry stops being served.
    pub expires_at: SystemTime,
    /// For an answer whose origin sent `Vary`: the varied header names and a keyed hash of
    /// the request's values of them ([`super::rules::variant_fingerprint`]); a request with
    /// other values must not receive it.
    pub variant: Option<String>,
}

/// Why bytes read from the shared tier could not be decoded into a [`CachedResponse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cached response encoding is invalid: {reason}")]
pub struct DecodeError {
    reason: &'static str,
}

/// Leading bytes of the binary encoding (format version 2: version 1 plus the variant).
const MAGIC: &[u8; 4] = b"FGC2";

impl CachedResponse {
    /// A response stored now that expires after `ttl`.
    pub fn new(status: u16, headers: Vec<(String, Vec<u8>)>, body: Bytes, ttl: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            status,
            headers,
            body,
            stored_at: now,
            expires_at: now + ttl,
            variant: None,
        }
    }

    /// Time since the response was stored (zero if the clock went backwards).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.stored_at)
            .unwrap_or_default()
    }

    /// Time left before expiry; zero once expired.
    pub fn remaining_ttl(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// Whether the entry has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at <= now
    }

    /// Bytes of payload (body + header names and values).
    pub fn payload_len(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    /// Compact binary encoding: `FGC2`, status u16, stored_at and expires_at as u64
    /// milliseconds since the Unix epoch, header count u32, then each name and value, the
    /// body and the variant (empty when none) as u32-length-prefixed bytes (all big-endian).
    /// Entries written by an older version do not decode and are treated as misses.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload_len() + 32 + 8 * self.headers.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.extend_from_slice(&epoch_millis(self.stored_at).to_be_bytes());
        out.extend_from_slice(&epoch_millis(self.expires_at).to_be_bytes());
        out.extend_from_slice(&len_u32(self.headers.len()).to_be_bytes());
        for (name, value) in &self.headers {
            put_chunk(&mut out, name.as_bytes());
            put_chunk(&mut out, value);
        }
        put_chunk(&mut out, &self.body);
        put_chunk(&mut out, self.variant.as_deref().unwrap_or("").as_bytes());
        out
    }

    /// Decodes [`CachedResponse::to_bytes`] output; any truncation, trailing garbage, bad
    /// magic or non-UTF-8 header name is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: bytes };
        if r.take(4)? != MAGIC {
            return Err(DecodeError {
                reason: "bad magic",
            });
        }
        let status = u16::from_be_bytes(r.array()?);
        let stored_at = UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(r.array()?));
        let expires_at = UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(r.array()?));
        let count = u32::from_be_bytes(r.array()?) as usize;
        // why: each header needs at least 8 bytes, so a huge count in corrupt data fails
        // here instead of allocating.
        if count > r.buf.len() / 8 {
            return Err(DecodeError {
                reason: "header count exceeds data",
            });
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = std::str::from_utf8(r.chunk()?)
                .map_err(|_| DecodeError {
                    reason: "header name is not UTF-8",
                })?
                .to_string();
            let value = r.chunk()?.to_vec();
            headers.push((name, value));
        }
        let body = Bytes::copy_from_slice(r.chunk()?);
        let variant = std::str::from_utf8(r.chunk()?)
            .map_err(|_| DecodeError {
                reason: "variant is not UTF-8",
            })?
            .to_string();
        let variant = (!variant.is_empty()).then_some(variant);
        if !r.buf.is_empty() {
            return Err(DecodeError {
                reason: "trailing bytes",
            });
        }
        Ok(Self {
            status,
            headers,
            body,
            stored_at,
            expires_at,
            variant,
        })
    }
}

fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn len_u32(len: usize) -> u32 {
    // why: responses over 4 GiB are never cached (far above any entry size limit).
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
    out.extend_from_slice(data);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError {
                reason: "truncated",
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn chunk(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        self.take(len)
    }
}

struct Entry {
    /// The same allocation as the map key (a reference count, not a copy).
    full: Arc<str>,
    resp: Arc<CachedResponse>,
    charge: usize,
    tick: u64,
}

#[derive(Default)]
struct Lru {
    /// Key text (`CacheKey::full`, one allocation shared with `order`) -> entry.
    map: HashMap<Arc<str>, Entry>,
    /// Use order: smallest tick = least recently used.
    order: BTreeMap<u64, Arc<str>>,
    next_tick: u64,
    bytes: usize,
    /// Bytes reserved by fills still buffering their answers ([`super::hold::Hold`]).
    reserved: usize,
}

impl Lru {
    fn remove(&mut self, full: &str) -> Option<Entry> {
        let entry = self.map.remove(full)?;
        self.order.remove(&entry.tick);
        self.bytes -= entry.charge;
        Some(entry)
    }

    fn bump(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn retain(&mut self, mut keep: impl FnMut(&str, &Entry) -> bool) -> usize {
        let doomed: Vec<Arc<str>> = self
            .map
            .iter()
            .filter(|(k, e)| !keep(k, e))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            self.remove(k);
        }
        doomed.len()
    }
}

/// Byte-bounded LRU store of responses. Cheap to share behind an `Arc`.
pub struct MemoryCache {
    max_bytes: usize,
    max_entry_bytes: usize,
    inner: Mutex<Lru>,
}

impl MemoryCache {
    /// A store holding at most `max_bytes` (charged as described in the module docs);
    /// entries charged more than `max_bytes / 8` are not stored.
    pub fn new(max_bytes: usize) -> Self {
        Self::with_max_entry_bytes(max_bytes, max_bytes / 8)
    }

    /// Like [`MemoryCache::new`] with an explicit per-entry limit (capped at `max_bytes`).
    pub fn with_max_entry_bytes(max_bytes: usize, max_entry_bytes: usize) -> Self {
        Self {
            max_bytes,
            max_entry_bytes: max_entry_bytes.min(max_bytes),
            inner: Mutex::new(Lru::default()),
        }
    }

    /// Bytes charged for storing `resp` under `key`: what the entry holds on the heap. The
    /// key text is one `Arc<str>` (shared by the key map and the use order); every header
    /// name and value, the body and the variant are one allocation each.
    pub fn charge(key: &CacheKey, resp: &CachedResponse) -> usize {
        // `Arc<str>`: two counts, then the text, padded to 8 bytes.
        let key_bytes = heap_cost((key.full.len() + 16 + 7) & !7);
        let headers = heap_cost(resp.headers.capacity() * std::mem::size_of::<(String, Vec<u8>)>())
            + resp
                .headers
                .iter()
                .map(|(n, v)| heap_cost(n.capacity()) + heap_cost(v.capacity()))
                .sum::<usize>();
        let variant = resp.variant.as_ref().map_or(0, |v| heap_cost(v.capacity()));
        key_bytes + headers + heap_cost(resp.body.len()) + variant + ENTRY_OVERHEAD_BYTES
    }

    /// The live entry for `key`, marking it most recently used. An expired entry is
    /// removed and reported as a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let now = SystemTime::now();
        let mut lru = self.inner.lock();
        let tick = lru.bump();
        let lru = &mut *lru;
        let entry = lru.map.get_mut(key.full.as_str())?;
        if entry.resp.is_expired_at(now) {
            lru.remove(&key.full);
            return None;
        }
        lru.order.remove(&entry.tick);
        entry.tick = tick;
        lru.order.insert(tick, entry.full.clone());
        Some(entry.resp.clone())
    }

    /// Stores `resp` under `key` (replacing any previous entry) and evicts least recently
    /// used entries until the total (entries and fills' reservations) fits. Returns `false`
    /// (and stores nothing) when the entry alone exceeds the per-entry limit or is already
    /// expired.
    pub fn put(&self, key: CacheKey, resp: Arc<CachedResponse>) -> bool {
        self.put_held(key, resp, 0)
    }

    /// [`MemoryCache::put`] for a fill that reserved `held` bytes for its answer: the
    /// reservation is released under the same lock as the insert (it becomes the entry's
    /// charge), also when nothing is stored: when other fills' reservations leave no room
    /// for the entry even with every entry evicted, it is not stored.
    pub fn put_held(&self, key: CacheKey, resp: Arc<CachedResponse>, held: usize) -> bool {
        let charge = Self::charge(&key, &resp);
        if charge > self.max_entry_bytes || resp.is_expired_at(SystemTime::now()) {
            self.release(held);
            return false;
        }
        let mut lru = self.inner.lock();
        lru.reserved -= held.min(lru.reserved);
        lru.remove(&key.full);
        while lru.bytes + lru.reserved + charge > self.max_bytes {
            // why: with every entry gone, only other fills' reservations hold the rest;
            // storing would grow the cache beyond its bound.
            let Some((_, oldest)) = lru.order.pop_first() else {
                return false;
            };
            if let Some(e) = lru.map.remove(&oldest) {
                lru.bytes -= e.charge;
            }
        }
        let tick = lru.bump();
        let full: Arc<str> = Arc::from(key.full.as_str());
        lru.order.insert(tick, full.clone());
        lru.bytes += charge;
        lru.map.insert(
            full.clone(),
            Entry {
                full,
                resp,
                charge,
                tick,
            },
        );
        true
    }

    /// Reserves `n` bytes for an answer being filled, evicting least recently used entries
    /// to make room; `false` (nothing reserved) when even an empty cache has no room.
    pub(super) fn reserve(&self, n: usize) -> bool {
        let mut lru = self.inner.lock();
        while lru.bytes + lru.reserved + n > self.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                return false;
            };
            if let Some(e) = lru.map.remove(&oldest) {
                lru.bytes -= e.charge;
            }
        }
        lru.reserved += n;
        true
    }

    /// Releases `n` reserved bytes.
    pub(super) fn release(&self, n: usize) {
        if n > 0 {
            let mut lru = self.inner.lock();
            lru.reserved -= n.min(lru.reserved);
        }
    }

    /// Removes every entry; returns how many were removed.
    pub fn purge_all(&self) -> usize {
        let mut lru = self.inner.lock();
        let n = lru.map.len();
        *lru = Lru {
            next_tick: lru.next_tick,
            reserved: lru.reserved,
            ..Lru::default()
        };
        n
    }

    /// Removes entries whose path starts with `path_prefix`; returns how many.
    pub fn purge_prefix(&self, path_prefix: &str) -> usize {
        self.inner
            .lock()
            .retain(|full, _| !path_of_full(full).unwrap_or("").starts_with(path_prefix))
    }

    /// Removes expired entries; returns how many (reads also drop them lazily).
    pub fn purge_expired(&self) -> usize {
        let now = SystemTime::now();
        self.inner.lock().retain(|_, e| !e.resp.is_expired_at(now))
    }

    /// Bytes currently charged: entries plus the reservations of fills in progress.
    pub fn bytes(&self) -> usize {
        let lru = self.inner.lock();
        lru.bytes + lru.reserved
    }

    /// Number of entries (including expired ones not yet read).
    pub fn entries(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// The configured byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::key::canonical_key;
    use super::*;

    fn key(i: usize) -> CacheKey {
        canonical_key("GET", "h", "/register", Some(&format!("n={i}")), &[], b"s")
    }

    fn resp(body_len: usize, ttl: Duration) -> Arc<CachedResponse> {
        Arc::new(CachedResponse::new(
            200,
            vec![("content-type".into(), b"text/x-shellscript".to_vec())],
            Bytes::from(vec![b'x'; body_len]),
            ttl,
        ))
    }

    #[test]
    fn binary_encoding_round_trips() {
        let r = CachedResponse {
            status: 200,
            headers: vec![("a".into(), b"1".to_vec()), ("b".into(), vec![0, 255])],
            body: Bytes::from_static(b"#!/bin/sh\necho hi\n"),
            stored_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            expires_at: UNIX_EPOCH + Duration::from_millis(1_700_000_300_123),
            variant: Some("accept-language=00ff".into()),
        };
        let back = CachedResponse::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(
            back, r,
            "round trip must be lossless at millisecond precision"
        );
    }

    #[test]
    fn corrupt_encoding_is_rejected() {
        let bytes = resp(10, Duration::from_secs(1)).to_bytes();
        assert!(
            CachedResponse::from_bytes(&bytes[..bytes.len() - 1]).is_err(),
            "truncated"
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(CachedResponse::from_bytes(&extra).is_err(), "trailing");
        assert!(CachedResponse::from_bytes(b"XXXX").is_err(), "magic");
    }

    #[test]
    fn memory_bound_is_honoured_under_many_inserts() {
        let cache = MemoryCache::new(64 * 1024);
        for i in 0..2000 {
            assert!(
                cache.put(key(i), resp(1000, Duration::from_secs(60))),
                "fits"
            );
            assert!(
                cache.bytes() <= 64 * 1024,
                "bytes {} over bound after insert {i}",
                cache.bytes()
            );
        }
        let per = MemoryCache::charge(&key(1999), &resp(1000, Duration::from_secs(60)));
        assert_eq!(
            cache.entries(),
            64 * 1024 / per,
            "cache is filled to the bound"
        );
        assert_eq!(cache.bytes(), cache.entries() * per, "charge accounting");
        assert!(cache.get(&key(1999)).is_some(), "newest entry kept");
        assert!(cache.get(&key(0)).is_none(), "oldest entry evicted");
    }

    #[test]
    fn least_recently_used_entry_is_evicted_first() {
        let per = MemoryCache::charge(&key(0), &resp(100, Duration::from_secs(60)));
        let cache = MemoryCache::with_max_entry_bytes(per * 3, per);
        for i in 0..3 {
            cache.put(key(i), resp(100, Duration::from_secs(60)));
        }
        assert!(cache.get(&key(0)).is_some(), "touch 0 so 1 becomes the LRU");
        cache.put(key(3), resp(100, Duration::from_secs(60)));
        assert!(cache.get(&key(1)).is_none(), "LRU entry 1 evicted");
        for i in [0, 2, 3] {
            assert!(cache.get(&key(i)).is_some(), "entry {i} kept");
        }
        assert_eq!(cache.entries(), 3, "three entries fit");
    }

    #[test]
    fn oversized_entry_is_not_stored() {
        let cache = MemoryCache::new(8 * 1024);
        assert!(
            !cache.put(key(0), resp(2000, Duration::from_secs(60))),
            "over max/8"
        );
        assert_eq!(cache.entries(), 0, "nothing stored");
        assert!(
            cache.put(key(0), resp(100, Duration::from_secs(60))),
            "small fits"
        );
    }

    #[test]
    fn expired_entry_is_a_miss_and_removed() {
        let cache = MemoryCache::new(1 << 20);
        let mut r = (*resp(10, Duration::from_secs(60))).clone();
        cache.put(key(0), Arc::new(r.clone()));
        r.expires_at = SystemTime::now() - Duration::from_millis(1);
        // Replace through the map to simulate time passing.
        cache
            .inner
            .lock()
            .map
            .get_mut(key(0).full.as_str())
            .unwrap()
            .resp = Arc::new(r);
        assert!(cache.get(&key(0)).is_none(), "expired is a miss");
        assert_eq!(cache.entries(), 0, "expired entry removed on read");
        assert_eq!(cache.bytes(), 0, "bytes released");
    }

    #[test]
    fn purge_expired_frees_entries_nobody_reads_again() {
        let cache = MemoryCache::new(1 << 20);
        cache.put(key(0), resp(10, Duration::from_secs(60)));
        cache.put(key(1), resp(10, Duration::from_secs(60)));
        let mut r = (*resp(10, Duration::from_secs(60))).clone();
        r.expires_at = SystemTime::now() - Duration::from_millis(1);
        cache
            .inner
            .lock()
            .map
            .get_mut(key(0).full.as_str())
            .unwrap()
            .resp = Arc::new(r);
        let live = MemoryCache::charge(&key(1), &resp(10, Duration::from_secs(60)));
        assert_eq!(cache.purge_expired(), 1, "the expired entry is swept");
        assert_eq!(cache.entries(), 1, "the live entry stays");
        assert_eq!(cache.bytes(), live, "its charge is released");
    }

    #[test]
    fn charge_counts_every_allocation_of_the_entry() {
        let k = key(7);
        let r = resp(1000, Duration::from_secs(60));
        let headers: usize = r
            .headers
            .iter()
            .map(|(n, v)| heap_cost(n.len()) + heap_cost(v.len()))
            .sum();
        let at_least = k.full.len() + 16 + 1000 + headers + ENTRY_OVERHEAD_BYTES;
        assert!(
            MemoryCache::charge(&k, &r) >= at_least,
            "charge {} covers the key, headers, body and the fixed part ({at_least})",
            MemoryCache::charge(&k, &r)
        );
        assert_eq!(heap_cost(0), 0, "no allocation");
        assert_eq!(heap_cost(1), 32, "minimum chunk");
        assert_eq!(heap_cost(100), 112, "header + rounding");
    }

    #[test]
    fn replacing_a_key_does_not_double_charge() {
        let cache = MemoryCache::new(1 << 20);
        cache.put(key(0), resp(10, Duration::from_secs(60)));
        let once = cache.bytes();
        cache.put(key(0), resp(10, Duration::from_secs(60)));
        assert_eq!(cache.bytes(), once, "replace keeps one charge");
        assert_eq!(cache.entries(), 1, "one entry");
    }

    #[test]
    fn purge_by_prefix_and_all() {
        let cache = MemoryCache::new(1 << 20);
        cache.put(key(0), resp(10, Duration::from_secs(60)));
        cache.put(key(1), resp(10, Duration::from_secs(60)));
        let other = canonical_key("GET", "h", "/other", None, &[], b"s");
        cache.put(other.clone(), resp(10, Duration::from_secs(60)));
        assert_eq!(cache.purge_prefix("/register"), 2, "two under /register");
        assert!(cache.get(&other).is_some(), "other path kept");
        assert_eq!(cache.purge_all(), 1, "one left");
        assert_eq!(cache.bytes(), 0, "empty");
    }
}
