//! The compact, immutable content of one map version: [`MapContent`].
//!
//! Sized for maps of millions of entries that are replaced every second:
//! - all keys live in one `String`, indexed by one open-addressing table of 12-byte slots
//!   (a [`KeyIndex`], shared between versions with the same keys);
//! - each entry's value is a 4-byte index into the distinct values, stored once (a node map
//!   has a handful of masters).
//!
//! Building one is a single pass with one hash per line and no allocation per entry. When a
//! new version has exactly the keys of the previous one (nodes moved between masters, the
//! common PuppetDB case), [`MapBuilder::reusing`] keeps the previous key index and only
//! writes the 4-byte values. Dropping a large map frees a few large blocks on a background
//! thread (see [`reap`]), so the request that holds the last reference never pays for it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, OnceLock};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

/// Up to this many distinct values are found by comparison instead of hashing.
const SCAN_VALUES: usize = 8;

/// Maps with more entries than this are freed on the reaper thread.
const REAP_ABOVE: usize = 4096;

/// No value assigned yet (reuse mode).
const UNSET: u32 = u32::MAX;

/// One key: bytes `keys[key_off..key_off + key_len]`, its value at `vals[ord]`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key_off: u32,
    key_len: u32,
    ord: u32,
}

/// Why an entry could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The key is already present (the caller reports both places).
    #[error("duplicate key")]
    Duplicate,
    /// Keys or values beyond 4 GiB in all (offsets are 32-bit).
    #[error("the map's keys exceed 4 GiB")]
    TooLarge,
    /// Reuse mode only: the key is not one of the previous version's keys.
    #[error("a key the previous version lacks")]
    NewKey,
}

// why: one randomly keyed SipHash for every table of the process. Keys come from remote
// sources (headers, PuppetDB) so the hash must not be predictable, and sharing the key lets
// two versions of a map be compared by their fingerprints without rehashing either.
fn hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

fn hash_bytes(b: &[u8]) -> u64 {
    hasher().hash_one(b)
}

/// Order-independent contribution of one entry to a map's fingerprint.
fn entry_mix(key_hash: u64, value_hash: u64) -> u64 {
    // splitmix64 finaliser over the pair, so that sums of different pairs do not cancel.
    let mut z = key_hash
        ^ value_hash
            .rotate_left(32)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The keys of a map and where each one's value sits; shared by versions with equal keys.
#[derive(Default)]
struct KeyIndex {
    /// Every key followed by `\n`, in `ord` order (keys hold no whitespace), so a new version
    /// listing the same keys in the same order is matched by one sequential walk.
    keys: String,
    /// Hash of each key, by `ord`: fingerprints and rehashing without hashing keys again.
    hashes: Vec<u64>,
    index: HashTable<Slot>,
}

impl KeyIndex {
    fn key_of(&self, s: &Slot) -> &str {
        // Slices at offsets recorded when whole `&str` keys were appended: always on char
        // boundaries, so this never panics.
        &self.keys[s.key_off as usize..(s.key_off + s.key_len) as usize]
    }

    fn find(&self, hash: u64, key: &str) -> Option<&Slot> {
        self.index
            .find(hash, |s| self.key_of(s).as_bytes() == key.as_bytes())
    }
}

impl Drop for KeyIndex {
    fn drop(&mut self) {
        if self.index.len() > REAP_ABOVE {
            let garbage = (
                std::mem::take(&mut self.keys),
                std::mem::take(&mut self.index),
            );
            reap(Box::new(garbage));
        }
    }
}

/// The entries of one map version. Immutable once built (see [`MapBuilder`]).
#[derive(Default)]
pub struct MapContent {
    keys: Arc<KeyIndex>,
    /// Value index of each key, by the key's `ord`.
    vals: Vec<u32>,
    values: Vec<Box<str>>,
    /// Wrapping sum of [`entry_mix`] over all entries: equal content, equal fingerprint.
    fingerprint: u64,
}

impl std::fmt::Debug for MapContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapContent")
            .field("entries", &self.len())
            .field("values", &self.values.len())
            .finish()
    }
}

impl MapContent {
    /// Builds content from owned pairs (keys are unique by construction).
    pub fn from_entries(entries: HashMap<String, String>) -> Result<Self, InsertError> {
        let mut b = MapBuilder::with_capacity(entries.len(), 0);
        for (k, v) in &entries {
            b.insert(k, v)?;
        }
        b.finish()
    }

    /// Exact lookup; one hash and usually one key comparison.
    pub fn get(&self, key: &str) -> Option<&str> {
        let h = hash_bytes(key.as_bytes());
        let slot = self.keys.find(h, key)?;
        Some(&*self.values[self.vals[slot.ord as usize] as usize])
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.keys.index.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.keys.index.is_empty()
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.keys.index.iter().map(|s| {
            (
                self.keys.key_of(s),
                &*self.values[self.vals[s.ord as usize] as usize],
            )
        })
    }

    /// The distinct values (each once), e.g. to validate them against the servers.
    pub fn distinct_values(&self) -> impl Iterator<Item = &str> + '_ {
        self.values.iter().map(|v| &**v)
    }

    /// Owned copy of the entries, for callers that edit a map as a `HashMap`.
    pub fn to_entries(&self) -> HashMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// True when both hold exactly the same entries. Different content is almost always told
    /// apart by the fingerprint in O(1); equal fingerprints are confirmed entry by entry.
    pub fn same_as(&self, other: &MapContent) -> bool {
        if self.len() != other.len() || self.fingerprint != other.fingerprint {
            return false;
        }
        if self.shares_keys_with(other) {
            // Same keys at the same ords: one sequential pass over the value indexes, each
            // pair of distinct values compared as strings once.
            let mut seen: Vec<Option<u32>> = vec![None; self.values.len()];
            return self
                .vals
                .iter()
                .zip(&other.vals)
                .all(|(&a, &b)| match seen[a as usize] {
                    Some(x) => x == b,
                    None => {
                        let same = self.values[a as usize] == other.values[b as usize];
                        seen[a as usize] = Some(b);
                        same
                    }
                });
        }
        self.iter().all(|(k, v)| other.get(k) == Some(v))
    }

    /// Heap memory held by this version (a key index shared with another version is
    /// counted in both).
    pub fn heap_bytes(&self) -> usize {
        let k = &self.keys;
        k.keys.capacity()
            + k.hashes.capacity() * 8
            // hashbrown: a slot and a control byte per bucket; capacity is 7/8 of buckets.
            + k.index.capacity() * 8 / 7 * (std::mem::size_of::<Slot>() + 1)
            + self.vals.capacity() * 4
            + self.values.iter().map(|v| v.len() + 16).sum::<usize>()
    }

    /// True when both versions share one key index (built with [`MapBuilder::reusing`]).
    pub fn shares_keys_with(&self, other: &MapContent) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }

    /// A copy with `set` added or replaced and `delete` removed; O(entries).
    pub fn edited(
        &self,
        set: &HashMap<String, String>,
        delete: &[&str],
    ) -> Result<Self, InsertError> {
        let mut b = MapBuilder::with_capacity(self.len() + set.len(), self.keys.keys.len());
        for (k, v) in self.iter() {
            if !set.contains_key(k) && !delete.contains(&k) {
                b.insert(k, v)?;
            }
        }
        for (k, v) in set {
            if !delete.contains(&k.as_str()) {
                b.insert(k, v)?;
            }
        }
        b.finish()
    }
}

impl Drop for MapContent {
    fn drop(&mut self) {
        if self.vals.len() > REAP_ABOVE {
            let garbage = (
                std::mem::take(&mut self.keys),
                std::mem::take(&mut self.vals),
                std::mem::take(&mut self.values),
            );
            reap(Box::new(garbage));
        }
    }
}

/// Frees `garbage` on a background thread ("floodgate-reaper"), or here if that thread cannot
/// be started. Freeing a million-entry map unmaps tens of MiB; that work belongs nowhere near
/// a request.
pub fn reap(garbage: Box<dyn Send>) {
    static REAPER: OnceLock<Option<Sender<Box<dyn Send>>>> = OnceLock::new();
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Box<dyn Send>>();
        std::thread::Builder::new()
            .name("floodgate-reaper".into())
            .spawn(move || {
                idle_priority();
                rx.into_iter().for_each(drop)
            })
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = tx {
        // A send error hands the value back, dropped here: only if the thread died.
        let _ = tx.send(garbage);
    }
}

/// Puts the calling thread in the idle scheduling class (Linux `SCHED_IDLE`): it runs when
/// a core has nothing else to do and yields at once when a request thread wakes up. Used for
/// map builds and the reaper. Best effort: where that fails the thread keeps its priority.
pub fn idle_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        log::debug!("thread keeps its CPU priority: {e:?}");
    }
}

/// Runs `f` (parse, index and swap a map) on its own thread in the idle CPU class and awaits
/// its result. A million-entry map takes 60-250 ms of CPU to build; on a busy machine that
/// work should wait for the request path, not delay it.
pub async fn run_idle<T, F>(f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("floodgate-mapbuild".into())
        .spawn(move || {
            idle_priority();
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a map build thread: {e}"))?;
    rx.await
        .map_err(|_| "the map build thread panicked".to_string())
}

/// Where a [`MapBuilder`] puts keys.
enum Keys {
    /// A new index, filled as entries arrive.
    Fresh(KeyIndex),
    /// The previous version's index; every key must be one of it, each once.
    Reused {
        base: Arc<KeyIndex>,
        filled: usize,
        /// While keys arrive in the base's order: byte offset of the next base key.
        cursor: Option<usize>,
    },
}

/// Builds a [`MapContent`] one entry at a time.
pub struct MapBuilder {
    keys: Keys,
    vals: Vec<u32>,
    values: Vec<Box<str>>,
    value_hashes: Vec<u64>,
    /// Index of each distinct value in `values`, by its hash.
    value_index: HashTable<u32>,
    fingerprint: u64,
}

impl MapBuilder {
    /// `entries` and `key_bytes` are estimates (0 is fine); sizing up front avoids rehashing
    /// a large table several times.
    pub fn with_capacity(entries: usize, key_bytes: usize) -> Self {
        Self::new(
            Keys::Fresh(KeyIndex {
                keys: String::with_capacity(key_bytes),
                hashes: Vec::with_capacity(entries),
                index: HashTable::with_capacity(entries),
            }),
            Vec::with_capacity(entries),
        )
    }

    /// A builder for a version with exactly the keys of `base` (values may differ): it keeps
    /// `base`'s key index and writes only values. [`insert`](Self::insert) fails with
    /// [`InsertError::NewKey`] and [`finish`](Self::finish) with `NewKey` when the keys turn
    /// out to differ; build from scratch then.
    pub fn reusing(base: &MapContent) -> Self {
        Self::new(
            Keys::Reused {
                base: base.keys.clone(),
                filled: 0,
                cursor: Some(0),
            },
            vec![UNSET; base.vals.len()],
        )
    }

    fn new(keys: Keys, vals: Vec<u32>) -> Self {
        MapBuilder {
            keys,
            vals,
            values: Vec::new(),
            value_hashes: Vec::new(),
            value_index: HashTable::new(),
            fingerprint: 0,
        }
    }

    /// Adds one entry. Returns the value's index among the distinct values and whether it is
    /// new (so callers can validate each distinct value once).
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(u32, bool), InsertError> {
        // Where the value goes: a reused key's existing ord, or a new slot's.
        let (ord, kh) = match &mut self.keys {
            Keys::Reused {
                base,
                filled,
                cursor,
            } => {
                // why: maps regenerated by the same tool list their keys in the same order;
                // matching them in sequence avoids a random memory access per line.
                let next = cursor.and_then(|at| {
                    let rest = base.keys.as_bytes().get(at..)?;
                    let hit = rest.len() > key.len()
                        && rest[key.len()] == b'\n'
                        && rest.starts_with(key.as_bytes());
                    hit.then_some(at)
                });
                let ord = match next {
                    Some(at) => {
                        *cursor = Some(at + key.len() + 1);
                        *filled as u32 // in sequence: the n-th key has ord n
                    }
                    None => {
                        *cursor = None;
                        let kh = hash_bytes(key.as_bytes());
                        base.find(kh, key).ok_or(InsertError::NewKey)?.ord
                    }
                };
                if self.vals[ord as usize] != UNSET {
                    return Err(InsertError::Duplicate);
                }
                *filled += 1;
                (ord, base.hashes[ord as usize])
            }
            Keys::Fresh(ix) => {
                let kh = hash_bytes(key.as_bytes());
                let (keys, hashes) = (&ix.keys, &ix.hashes);
                let entry = ix.index.entry(
                    kh,
                    |s| &keys[s.key_off as usize..(s.key_off + s.key_len) as usize] == key,
                    |s| hashes[s.ord as usize],
                );
                let Entry::Vacant(slot) = entry else {
                    return Err(InsertError::Duplicate);
                };
                let key_off = u32::try_from(keys.len()).map_err(|_| InsertError::TooLarge)?;
                let key_len = u32::try_from(key.len()).map_err(|_| InsertError::TooLarge)?;
                key_off.checked_add(key_len).ok_or(InsertError::TooLarge)?;
                let ord = u32::try_from(self.vals.len()).map_err(|_| InsertError::TooLarge)?;
                // `keys` is borrowed by the entry's hasher until here; append after.
                slot.insert(Slot {
                    key_off,
                    key_len,
                    ord,
                });
                ix.keys.push_str(key);
                ix.keys.push('\n');
                ix.hashes.push(kh);
                self.vals.push(UNSET);
                (ord, kh)
            }
        };
        let (vi, fresh) = self.intern(value)?;
        self.vals[ord as usize] = vi;
        self.fingerprint = self
            .fingerprint
            .wrapping_add(entry_mix(kh, self.value_hashes[vi as usize]));
        Ok((vi, fresh))
    }

    /// Index of `value` among the distinct values, adding it if new.
    fn intern(&mut self, value: &str) -> Result<(u32, bool), InsertError> {
        let values = &self.values;
        // why: a routing map has a handful of distinct values; comparing against them is
        // cheaper than hashing every line's value. Larger sets go through the hash index.
        let known = if values.len() <= SCAN_VALUES {
            values.iter().position(|v| **v == *value).map(|i| i as u32)
        } else {
            let vh = hash_bytes(value.as_bytes());
            self.value_index
                .find(vh, |&i| &*values[i as usize] == value)
                .copied()
        };
        if let Some(i) = known {
            return Ok((i, false));
        }
        let i = u32::try_from(values.len()).map_err(|_| InsertError::TooLarge)?;
        let vh = hash_bytes(value.as_bytes());
        self.values.push(value.into());
        self.value_hashes.push(vh);
        let hashes = &self.value_hashes;
        self.value_index
            .insert_unique(vh, i, |&j| hashes[j as usize]);
        Ok((i, true))
    }

    /// Entries added so far.
    pub fn len(&self) -> usize {
        match &self.keys {
            Keys::Fresh(ix) => ix.index.len(),
            Keys::Reused { filled, .. } => *filled,
        }
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The finished content; `NewKey` when a reusing builder did not see every base key.
    pub fn finish(mut self) -> Result<MapContent, InsertError> {
        let keys = match std::mem::replace(&mut self.keys, Keys::Fresh(KeyIndex::default())) {
            Keys::Fresh(mut ix) => {
                ix.keys.shrink_to_fit();
                Arc::new(ix)
            }
            Keys::Reused { base, filled, .. } => {
                if filled != self.vals.len() {
                    return Err(InsertError::NewKey);
                }
                base
            }
        };
        Ok(MapContent {
            keys,
            vals: std::mem::take(&mut self.vals),
            values: std::mem::take(&mut self.values),
            fingerprint: self.fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(pairs: &[(&str, &str)]) -> MapContent {
        let mut b = MapBuilder::with_capacity(0, 0);
        for (k, v) in pairs {
            b.insert(k, v).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn lookups_hit_exact_keys_and_share_values() {
        let c = build(&[
            ("n1", "master1"),
            ("n2", "master2"),
            ("n3", "master1"),
            ("ñ", "m é"),
        ]);
        assert_eq!(c.get("n1"), Some("master1"));
        assert_eq!(c.get("n3"), Some("master1"));
        assert_eq!(c.get("ñ"), Some("m é"));
        assert_eq!(c.get("N1"), None, "keys are case-sensitive");
        assert_eq!(c.get("n"), None, "no prefix match");
        assert_eq!(c.len(), 4);
        let mut vals: Vec<&str> = c.distinct_values().collect();
        vals.sort();
        assert_eq!(vals, ["m é", "master1", "master2"], "values stored once");
    }

    #[test]
    fn duplicate_keys_are_refused_and_values_reported_fresh_once() {
        let mut b = MapBuilder::with_capacity(2, 0);
        assert_eq!(b.insert("a", "x"), Ok((0, true)));
        assert_eq!(b.insert("b", "x"), Ok((0, false)));
        assert_eq!(b.insert("a", "y"), Err(InsertError::Duplicate));
        assert_eq!(b.insert("c", "y"), Ok((1, true)));
        let c = b.finish().unwrap();
        assert_eq!(c.get("a"), Some("x"), "the refused insert changed nothing");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn same_as_compares_content_not_order_or_history() {
        let a = build(&[("a", "1"), ("b", "2"), ("c", "1")]);
        let b = build(&[("c", "1"), ("a", "1"), ("b", "2")]);
        assert!(a.same_as(&b) && b.same_as(&a), "order does not matter");
        // Swapping two values keeps the multiset of keys and of values, not the pairs.
        let swapped = build(&[("a", "2"), ("b", "1"), ("c", "1")]);
        assert!(!a.same_as(&swapped));
        assert!(
            !a.same_as(&build(&[("a", "1"), ("b", "2")])),
            "fewer entries"
        );
        assert!(MapContent::default().same_as(&build(&[])));
    }

    #[test]
    fn edited_sets_replaces_and_deletes() {
        let a = build(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let set: HashMap<String, String> = [
            ("b".to_string(), "9".to_string()),
            ("d".to_string(), "4".to_string()),
        ]
        .into();
        let e = a.edited(&set, &["c", "zz"]).unwrap();
        let mut got: Vec<(&str, &str)> = e.iter().collect();
        got.sort();
        assert_eq!(got, [("a", "1"), ("b", "9"), ("d", "4")]);
        assert_eq!(a.get("b"), Some("2"), "the original is untouched");
        assert!(e.same_as(&build(&[("d", "4"), ("b", "9"), ("a", "1")])));
    }

    #[test]
    fn large_content_round_trips_and_is_freed_off_thread() {
        let n = 50_000;
        let mut b = MapBuilder::with_capacity(0, 0); // grows through several rehashes
        for i in 0..n {
            b.insert(
                &format!("node-{i}.example.com"),
                if i % 2 == 0 { "m1" } else { "m2" },
            )
            .unwrap();
        }
        let c = b.finish().unwrap();
        assert_eq!(c.len(), n);
        for i in (0..n).step_by(997) {
            let want = if i % 2 == 0 { "m1" } else { "m2" };
            assert_eq!(c.get(&format!("node-{i}.example.com")), Some(want));
        }
        let copy = MapContent::from_entries(c.to_entries()).unwrap();
        assert!(copy.same_as(&c));
        drop(c); // handed to the reaper thread; must not hang or leak into this thread
        assert_eq!(copy.get("node-1.example.com"), Some("m2"));
    }

    #[test]
    fn reusing_builder_keeps_the_key_index_when_only_values_change() {
        let base = build(&[("a", "1"), ("b", "2"), ("c", "1")]);
        let mut b = MapBuilder::reusing(&base);
        for (k, v) in [("c", "2"), ("a", "2"), ("b", "3")] {
            b.insert(k, v).unwrap();
        }
        let next = b.finish().unwrap();
        assert!(next.shares_keys_with(&base));
        assert_eq!(
            (next.get("a"), next.get("b"), next.get("c")),
            (Some("2"), Some("3"), Some("2"))
        );
        assert_eq!(base.get("a"), Some("1"), "the base keeps its values");
        assert!(next.same_as(&build(&[("a", "2"), ("b", "3"), ("c", "2")])));
        drop(base);
        assert_eq!(
            next.get("c"),
            Some("2"),
            "the shared index outlives the base"
        );
    }

    #[test]
    fn reusing_builder_refuses_new_duplicate_and_missing_keys() {
        let base = build(&[("a", "1"), ("b", "2")]);
        let mut b = MapBuilder::reusing(&base);
        assert_eq!(b.insert("zz", "1"), Err(InsertError::NewKey));
        b.insert("a", "1").unwrap();
        assert_eq!(b.insert("a", "2"), Err(InsertError::Duplicate));
        assert_eq!(b.len(), 1);
        assert_eq!(
            b.finish().err(),
            Some(InsertError::NewKey),
            "b was never set"
        );
    }

    #[test]
    fn reusing_builder_matches_keys_in_order_then_by_hash_after_a_deviation() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let mut b = MapBuilder::with_capacity(0, 0);
        for k in &keys {
            b.insert(k, "v0").unwrap();
        }
        let base = b.finish().unwrap();
        // Same order for the first 50, then reversed: both halves must land right.
        let mut order: Vec<&String> = keys[..50].iter().collect();
        order.extend(keys[50..].iter().rev());
        let mut r = MapBuilder::reusing(&base);
        for (i, k) in order.iter().enumerate() {
            r.insert(k, &format!("v{}", i % 3)).unwrap();
        }
        assert_eq!(
            r.insert("k0", "v9"),
            Err(InsertError::Duplicate),
            "k0 seen in sequence"
        );
        let next = r.finish().unwrap();
        assert!(next.shares_keys_with(&base));
        for (i, k) in order.iter().enumerate() {
            assert_eq!(next.get(k), Some(format!("v{}", i % 3).as_str()), "{k}");
        }
        let fresh = MapContent::from_entries(next.to_entries()).unwrap();
        assert!(
            fresh.same_as(&next),
            "fingerprints agree across build modes"
        );
    }

    #[test]
    fn same_as_on_a_shared_key_index_compares_values_in_order() {
        let base = build(&[("a", "x"), ("b", "y"), ("c", "x")]);
        let again = |pairs: &[(&str, &str)]| {
            let mut r = MapBuilder::reusing(&base);
            for (k, v) in pairs {
                r.insert(k, v).unwrap();
            }
            r.finish().unwrap()
        };
        // Values first seen in another order get other indexes: still the same content.
        let same = again(&[("b", "y"), ("a", "x"), ("c", "x")]);
        assert!(same.shares_keys_with(&base) && same.same_as(&base) && base.same_as(&same));
        let moved = again(&[("a", "y"), ("b", "x"), ("c", "x")]);
        assert!(!moved.same_as(&base) && !base.same_as(&moved));
    }
}
