//! The `shared` dictionary: a small key/value store shared by every worker thread's Lua VM,
//! with per-key TTL and atomic increment (the model is OpenResty's `ngx.shared.DICT`).
//!
//! One `parking_lot::Mutex<HashMap>` owned by the [`super::PolicyEngine`]; it survives reloads.
//! Bounded: at most `max_keys` keys, keys up to [`MAX_KEY_LEN`] bytes and string values up to
//! [`MAX_VALUE_LEN`] bytes, so the worst case is about `max_keys * 4.3 KiB`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest accepted string value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;
/// Default bound on the number of keys.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// A full dictionary sweeps expired keys at most this often (the sweep is O(keys)).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A value stored in the dictionary: what Lua may put in (strings, numbers, booleans).
#[derive(Debug, Clone, PartialEq)]
pub enum SharedValue {
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The dictionary holds `max_keys` live keys; the write was dropped (no eviction of live keys,
    /// so a flood of new keys cannot reset existing counters).
    #[error("shared dictionary is full")]
    Full,
    /// `incr` on an absent key without an `init` value.
    #[error("not found")]
    NotFound,
    /// `incr` on a key holding a non-number.
    #[error("not a number")]
    NotANumber,
    /// Key or value longer than [`MAX_KEY_LEN`] / [`MAX_VALUE_LEN`].
    #[error("key or value too long")]
    TooLong,
}

struct Entry {
    value: SharedValue,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

struct Inner {
    map: HashMap<String, Entry>,
    last_sweep: Instant,
}

/// The dictionary. Cheap to share behind an `Arc`; every operation takes the lock once.
pub struct SharedDict {
    inner: Mutex<Inner>,
    max_keys: usize,
}

impl std::fmt::Debug for SharedDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDict")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

fn expiry(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    // why: as in OpenResty, a ttl of 0 means "never expires".
    ttl.filter(|t| !t.is_zero()).map(|t| now + t)
}

fn check_len(key: &str, value: Option<&SharedValue>) -> Result<(), SharedError> {
    let long_value = matches!(value, Some(SharedValue::Str(s)) if s.len() > MAX_VALUE_LEN);
    if key.len() > MAX_KEY_LEN || long_value {
        return Err(SharedError::TooLong);
    }
    Ok(())
}

impl SharedDict {
    /// An empty dictionary holding at most `max_keys` keys (at least 1).
    pub fn new(max_keys: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            max_keys: max_keys.max(1),
        }
    }

    /// The live value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<SharedValue> {
        self.get_at(key, Instant::now())
    }

    /// Sets `key` (with `ttl`, `None` or zero = no expiry). Fails with `Full` when the key is new
    /// and the dictionary holds `max_keys` live keys.
    pub fn set(
        &self,
        key: &str,
        value: SharedValue,
        ttl: Option<Duration>,
    ) -> Result<(), SharedError> {
        self.set_at(key, value, ttl, Instant::now())
    }

    /// Adds `by` to the number at `key` and returns the new value. An absent (or expired) key is
    /// created as `init + by` with `ttl` when `init` is given, else `NotFound`; the ttl of an
    /// existing key is kept (so `incr(k, 1, 0, 1)` counts in fixed one-second windows).
    pub fn incr(
        &self,
        key: &str,
        by: SharedValue,
        init: Option<SharedValue>,
        ttl: Option<Duration>,
    ) -> Result<SharedValue, SharedError> {
        self.incr_at(key, by, init, ttl, Instant::now())
    }

    /// Removes `key`; absent keys are fine.
    pub fn delete(&self, key: &str) {
        self.inner.lock().map.remove(key);
    }

    /// Number of stored keys, counting expired keys not yet swept.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get_at(&self, key: &str, now: Instant) -> Option<SharedValue> {
        let mut inner = self.inner.lock();
        match inner.map.get(key) {
            Some(e) if e.live(now) => Some(e.value.clone()),
            Some(_) => {
                inner.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn set_at(
        &self,
        key: &str,
        value: SharedValue,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<(), SharedError> {
        check_len(key, Some(&value))?;
        let mut inner = self.inner.lock();
        let entry = Entry {
            value,
            expires: expiry(now, ttl),
        };
        if let Some(slot) = inner.map.get_mut(key) {
            *slot = entry;
            return Ok(());
        }
        self.make_room(&mut inner, now)?;
        inner.map.insert(key.to_owned(), entry);
        Ok(())
    }

    pub(crate) fn incr_at(
        &self,
        key: &str,
        by: SharedValue,
        init: Option<SharedValue>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<SharedValue, SharedError> {
        check_len(key, None)?;
        let mut inner = self.inner.lock();
        if let Some(e) = inner.map.get_mut(key) {
            if e.live(now) {
                let sum = add(&e.value, &by).ok_or(SharedError::NotANumber)?;
                e.value = sum.clone();
                return Ok(sum);
            }
            inner.map.remove(key);
        }
        let init = init.ok_or(SharedError::NotFound)?;
        let sum = add(&init, &by).ok_or(SharedError::NotANumber)?;
        self.make_room(&mut inner, now)?;
        inner.map.insert(
            key.to_owned(),
            Entry {
                value: sum.clone(),
                expires: expiry(now, ttl),
            },
        );
        Ok(sum)
    }

    /// Ensures there is room for one new key: sweeps expired keys (at most once per
    /// [`SWEEP_INTERVAL`]) when full.
    fn make_room(&self, inner: &mut Inner, now: Instant) -> Result<(), SharedError> {
        if inner.map.len() < self.max_keys {
            return Ok(());
        }
        if now.saturating_duration_since(inner.last_sweep) >= SWEEP_INTERVAL {
            inner.last_sweep = now;
            inner.map.retain(|_, e| e.live(now));
        }
        if inner.map.len() < self.max_keys {
            Ok(())
        } else {
            Err(SharedError::Full)
        }
    }
}

fn add(a: &SharedValue, b: &SharedValue) -> Option<SharedValue> {
    use SharedValue::{Int, Num};
    Some(match (a, b) {
        (Int(x), Int(y)) => match x.checked_add(*y) {
            Some(s) => Int(s),
            None => Num(*x as f64 + *y as f64),
        },
        (Int(x), Num(y)) => Num(*x as f64 + y),
        (Num(x), Int(y)) => Num(x + *y as f64),
        (Num(x), Num(y)) => Num(x + y),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn expired_keys_read_as_absent_and_incr_restarts_the_window() {
        let d = SharedDict::new(10);
        let t0 = Instant::now();
        let ttl = Some(Duration::from_secs(1));
        let one = SharedValue::Int(1);
        let zero = Some(SharedValue::Int(0));
        assert_eq!(
            d.incr_at("k", one.clone(), zero.clone(), ttl, t0),
            Ok(SharedValue::Int(1))
        );
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            d.incr_at("k", one.clone(), zero.clone(), ttl, later),
            Ok(SharedValue::Int(2))
        );
        let after = t0 + Duration::from_millis(1001);
        assert_eq!(d.get_at("k", after), None, "key must expire after its ttl");
        assert_eq!(
            d.incr_at("k", one, zero, ttl, after),
            Ok(SharedValue::Int(1)),
            "incr after expiry starts again from init"
        );
    }

    #[test]
    fn full_dictionary_refuses_new_keys_until_expired_ones_are_swept() {
        let d = SharedDict::new(2);
        let t0 = Instant::now();
        let ttl = Some(Duration::from_millis(100));
        d.set_at("a", SharedValue::Bool(true), ttl, t0).unwrap();
        d.set_at("b", SharedValue::Bool(true), None, t0).unwrap();
        assert_eq!(
            d.set_at("c", SharedValue::Bool(true), None, t0),
            Err(SharedError::Full),
            "third key must be refused while two are live"
        );
        assert!(
            d.set_at("b", SharedValue::Int(3), None, t0).is_ok(),
            "overwrite is fine"
        );
        let later = t0 + SWEEP_INTERVAL + Duration::from_millis(1);
        assert!(
            d.set_at("c", SharedValue::Bool(true), None, later).is_ok(),
            "sweep frees `a`"
        );
    }

    #[test]
    fn incr_rejects_missing_keys_without_init_and_non_numbers() {
        let d = SharedDict::new(10);
        assert_eq!(
            d.incr("x", SharedValue::Int(1), None, None),
            Err(SharedError::NotFound)
        );
        d.set("s", SharedValue::Str("a".into()), None).unwrap();
        assert_eq!(
            d.incr("s", SharedValue::Int(1), None, None),
            Err(SharedError::NotANumber)
        );
        assert_eq!(
            d.incr("f", SharedValue::Num(0.5), Some(SharedValue::Int(1)), None),
            Ok(SharedValue::Num(1.5))
        );
    }
}
