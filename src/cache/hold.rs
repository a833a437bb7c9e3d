//! Memory held by answers being filled, charged against the memory tier's `max_bytes`.
//!
//! A fill buffers the origin's whole body (up to the route's entry size) before it becomes an
//! entry. Without a charge, many fills of large answers at once grow the process far beyond
//! `max_bytes` (1 MiB answers under 16 MiB: +86..96 MiB of RSS). A [`Hold`] reserves the bytes
//! a fill's buffer holds, growing as the buffer grows and evicting least recently used entries
//! to make room like an insert does. It is released when dropped; stored through
//! [`super::Fetched::hold`], it becomes the entry's charge under the same lock as the insert.
//! When even an empty cache has no room (other fills hold it), [`Hold::grow_to`] answers
//! [`Room::Full`] and the fill passes its answer through uncached.
//!
//! `floodgate_cache_bytes` is entries plus holds ([`MemoryCache::bytes`]).

use std::sync::Arc;

use super::Inner;

/// Whether a hold could grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// The bytes are reserved (entries may have been evicted for them).
    Reserved,
    /// Not even evicting every entry makes room: the caller must not buffer more.
    Full,
}

/// Bytes reserved in the memory tier for one fill; released on drop.
pub struct Hold {
    cache: Arc<Inner>,
    bytes: usize,
}

impl Hold {
    pub(super) fn new(cache: Arc<Inner>) -> Self {
        Self { cache, bytes: 0 }
    }

    /// Grows the reservation to `total` bytes (never shrinks it).
    pub fn grow_to(&mut self, total: usize) -> Room {
        if total <= self.bytes {
            return Room::Reserved;
        }
        if self.cache.memory.reserve(total - self.bytes) {
            self.bytes = total;
            Room::Reserved
        } else {
            Room::Full
        }
    }

    /// Bytes reserved now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Hands the reserved bytes over (to an entry's charge); the hold then releases nothing.
    pub(super) fn take(&mut self) -> usize {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.cache.memory.release(self.bytes);
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").field("bytes", &self.bytes).finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{canonical_key, CacheSettings, CachedResponse, ResponseCache};
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn cache(max_bytes: usize) -> ResponseCache {
        ResponseCache::new(CacheSettings {
            max_bytes,
            ..CacheSettings::default()
        })
        .unwrap()
    }

    fn put(c: &ResponseCache, i: usize, body: usize) {
        let key = canonical_key("GET", "h", "/r", Some(&format!("n={i}")), &[], b"s");
        let resp = CachedResponse::new(
            200,
            vec![],
            Bytes::from(vec![b'x'; body]),
            Duration::from_secs(60),
        );
        assert!(c.inner.memory.put(key, Arc::new(resp)), "entry {i} stored");
    }

    #[test]
    fn a_hold_is_charged_as_it_grows_and_released_on_drop() {
        let c = cache(1 << 20);
        let mut h = c.hold();
        assert_eq!(h.grow_to(1000), Room::Reserved, "room");
        assert_eq!(c.stats().bytes, 1000, "charged");
        assert_eq!(h.grow_to(5000), Room::Reserved, "grows");
        assert_eq!(h.grow_to(10), Room::Reserved, "never shrinks");
        assert_eq!(h.bytes(), 5000, "held");
        assert_eq!(c.stats().bytes, 5000, "charged the growth only");
        drop(h);
        assert_eq!(c.stats().bytes, 0, "released on drop");
    }

    #[test]
    fn a_hold_evicts_entries_like_an_insert() {
        let c = cache(64 << 10);
        for i in 0..9 {
            put(&c, i, 6000);
        }
        let before = c.stats();
        assert_eq!(before.entries, 9, "filled");
        let mut h = c.hold();
        assert_eq!(h.grow_to(30 << 10), Room::Reserved, "room by eviction");
        let after = c.stats();
        assert!(after.entries < 9, "entries evicted: {}", after.entries);
        assert!(after.bytes <= 64 << 10, "bound kept: {}", after.bytes);
        // An insert must now evict around the hold too.
        for i in 10..20 {
            put(&c, i, 6000);
            assert!(c.stats().bytes <= 64 << 10, "bound kept with a hold");
        }
    }

    #[test]
    fn no_room_when_other_holds_fill_the_bound() {
        let c = cache(64 << 10);
        put(&c, 0, 6000);
        let mut a = c.hold();
        assert_eq!(a.grow_to(60 << 10), Room::Reserved, "first fill");
        assert_eq!(c.stats().entries, 0, "the entry made room");
        let mut b = c.hold();
        assert_eq!(b.grow_to(8 << 10), Room::Full, "no room left");
        assert_eq!(b.bytes(), 0, "nothing reserved");
        assert_eq!(c.stats().bytes, 60 << 10, "only the first hold");
        drop(a);
        assert_eq!(b.grow_to(8 << 10), Room::Reserved, "room once it is gone");
    }

    #[test]
    fn a_stored_hold_becomes_the_entry_charge() {
        let c = cache(1 << 20);
        let key = canonical_key("GET", "h", "/r", None, &[], b"s");
        let resp = Arc::new(CachedResponse::new(
            200,
            vec![],
            Bytes::from(vec![b'x'; 4000]),
            Duration::from_secs(60),
        ));
        let charge = super::super::MemoryCache::charge(&key, &resp);
        let mut h = c.hold();
        assert_eq!(h.grow_to(4096), Room::Reserved, "room");
        assert!(c.inner.memory.put_held(key, resp, h.take()), "stored");
        drop(h);
        assert_eq!(c.stats().bytes, charge, "the entry's charge, the hold gone");
    }
}
