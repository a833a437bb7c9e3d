//! The compact, immutable content of one map version: [`MapContent`].
//!
//! Sized for maps of millions of entries that are replaced every second: all keys live in one
//! `String`, distinct values are stored once (a node map has a handful of masters), and the
//! index is one open-addressing table of 12-byte slots. Building one is a single pass with one
//! hash per line and no allocation per entry; dropping one frees a few large blocks, and does
//! so on a background thread (see [`reap`]), so the request that happens to hold the last
//! reference to an old map never pays for freeing it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

/// Up to this many distinct values are found by comparison instead of hashing.
const SCAN_VALUES: usize = 8;

/// Maps with more entries than this are freed on the reaper thread.
const REAP_ABOVE: usize = 4096;

/// One entry: key bytes `keys[key_off..key_off + key_len]`, value `values[value]`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key_off: u32,
    key_len: u32,
    value: u32,
}

/// Why an entry could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The key is already present (the caller reports both places).
    Duplicate,
    /// Keys or values beyond 4 GiB in all (offsets are 32-bit).
    TooLarge,
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

/// The entries of one map version. Immutable once built (see [`MapBuilder`]).
#[derive(Default)]
pub struct MapContent {
    keys: String,
    values: Vec<Box<str>>,
    value_hashes: Vec<u64>,
    index: HashTable<Slot>,
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
        Ok(b.finish())
    }

    /// Exact lookup; one hash and usually one key comparison.
    pub fn get(&self, key: &str) -> Option<&str> {
        let h = hash_bytes(key.as_bytes());
        self.index
            .find(h, |s| self.key_of(s).as_bytes() == key.as_bytes())
            .map(|s| &*self.values[s.value as usize])
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.index
            .iter()
            .map(|s| (self.key_of(s), &*self.values[s.value as usize]))
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
        self.iter().all(|(k, v)| other.get(k) == Some(v))
    }

    /// A copy with `set` added or replaced and `delete` removed; O(entries).
    pub fn edited(
        &self,
        set: &HashMap<String, String>,
        delete: &[&str],
    ) -> Result<Self, InsertError> {
        let mut b = MapBuilder::with_capacity(self.len() + set.len(), self.keys.len());
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
        Ok(b.finish())
    }

    fn key_of(&self, s: &Slot) -> &str {
        // Slices at offsets recorded when whole `&str` keys were appended: always on char
        // boundaries, so this never panics.
        &self.keys[s.key_off as usize..(s.key_off + s.key_len) as usize]
    }
}

impl Drop for MapContent {
    fn drop(&mut self) {
        if self.index.len() > REAP_ABOVE {
            let garbage = (
                std::mem::take(&mut self.keys),
                std::mem::take(&mut self.values),
                std::mem::take(&mut self.index),
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
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = tx {
        // A send error hands the value back, dropped here: only if the thread died.
        let _ = tx.send(garbage);
    }
}

/// Builds a [`MapContent`] one entry at a time.
pub struct MapBuilder {
    content: MapContent,
    /// Index of each distinct value in `content.values`, by its hash.
    value_index: HashTable<u32>,
}

impl MapBuilder {
    /// `entries` and `key_bytes` are estimates (0 is fine); sizing up front avoids rehashing
    /// a large table several times.
    pub fn with_capacity(entries: usize, key_bytes: usize) -> Self {
        MapBuilder {
            content: MapContent {
                keys: String::with_capacity(key_bytes),
                values: Vec::new(),
                value_hashes: Vec::new(),
                index: HashTable::with_capacity(entries),
                fingerprint: 0,
            },
            value_index: HashTable::new(),
        }
    }

    /// Adds one entry. Returns the value's index among the distinct values and whether it is
    /// new (so callers can validate each distinct value once).
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(u32, bool), InsertError> {
        let c = &mut self.content;
        let kh = hash_bytes(key.as_bytes());
        let keys = &c.keys;
        let entry = c.index.entry(
            kh,
            |s| &keys[s.key_off as usize..(s.key_off + s.key_len) as usize] == key,
            |s| hash_bytes(&keys.as_bytes()[s.key_off as usize..(s.key_off + s.key_len) as usize]),
        );
        let Entry::Vacant(slot) = entry else {
            return Err(InsertError::Duplicate);
        };
        let key_off = u32::try_from(c.keys.len()).map_err(|_| InsertError::TooLarge)?;
        let key_len = u32::try_from(key.len()).map_err(|_| InsertError::TooLarge)?;
        key_off.checked_add(key_len).ok_or(InsertError::TooLarge)?;
        let values = &c.values;
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
        let (vi, fresh) = match known {
            Some(i) => (i, false),
            None => {
                let i = u32::try_from(values.len()).map_err(|_| InsertError::TooLarge)?;
                (i, true)
            }
        };
        // `keys` is borrowed by the entry's hasher until here; append after the slot is set.
        slot.insert(Slot {
            key_off,
            key_len,
            value: vi,
        });
        c.keys.push_str(key);
        if fresh {
            let vh = hash_bytes(value.as_bytes());
            c.values.push(value.into());
            c.value_hashes.push(vh);
            let hashes = &c.value_hashes;
            self.value_index
                .insert_unique(vh, vi, |&i| hashes[i as usize]);
        }
        c.fingerprint = c
            .fingerprint
            .wrapping_add(entry_mix(kh, c.value_hashes[vi as usize]));
        Ok((vi, fresh))
    }

    /// Entries added so far.
    pub fn len(&self) -> usize {
        self.content.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// The finished content.
    pub fn finish(mut self) -> MapContent {
        self.content.keys.shrink_to_fit();
        std::mem::take(&mut self.content)
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
        b.finish()
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
        let c = b.finish();
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
        let c = b.finish();
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
}
