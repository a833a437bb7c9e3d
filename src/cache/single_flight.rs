//! Request coalescing: at most one leader per key does the work; everyone else waits for
//! the leader's published value.
//!
//! A key is "in flight" from the moment a caller becomes leader until its [`LeaderGuard`]
//! publishes or is dropped; the map holds no entry otherwise (it is empty at steady state).
//! A dropped leader wakes its followers with `None`, and the next `join` elects a new
//! leader. Waiting has no built-in bound: callers wrap [`Waiter::wait`] in their timeout.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

struct Slot<V> {
    generation: u64,
    rx: watch::Receiver<Option<V>>,
}

struct Flights<K, V> {
    slots: HashMap<K, Slot<V>>,
    next_generation: u64,
}

/// Per-key coalescing of concurrent work. Clones share the same flights.
pub struct SingleFlight<K, V> {
    inner: Arc<Mutex<Flights<K, V>>>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// The result of [`SingleFlight::join`]: decisions as an enum, not a bool.
pub enum Flight<K: Hash + Eq + Clone, V: Clone> {
    /// This caller does the work and must publish (or drop the guard to give up).
    Leader(LeaderGuard<K, V>),
    /// Another caller is doing the work; wait for its value.
    Follower(Waiter<V>),
}

/// Leadership of one key. Publishing or dropping ends the flight.
pub struct LeaderGuard<K: Hash + Eq + Clone, V: Clone> {
    flights: Arc<Mutex<Flights<K, V>>>,
    key: K,
    generation: u64,
    tx: watch::Sender<Option<V>>,
}

/// A subscription to one flight's result.
pub struct Waiter<V> {
    rx: watch::Receiver<Option<V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// An empty set of flights.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Flights {
                slots: HashMap::new(),
                next_generation: 0,
            })),
        }
    }

    /// Becomes leader of `key` if nobody is, else follows the current leader.
    pub fn join(&self, key: K) -> Flight<K, V> {
        let mut flights = self.inner.lock();
        if let Some(slot) = flights.slots.get(&key) {
            return Flight::Follower(Waiter {
                rx: slot.rx.clone(),
            });
        }
        flights.next_generation += 1;
        let generation = flights.next_generation;
        let (tx, rx) = watch::channel(None);
        flights.slots.insert(key.clone(), Slot { generation, rx });
        Flight::Leader(LeaderGuard {
            flights: self.inner.clone(),
            key,
            generation,
            tx,
        })
    }

    /// Number of keys currently in flight.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().slots.len()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> LeaderGuard<K, V> {
    /// A waiter on this leader's own result (for a leader that hands the work to a task
    /// and then waits like everyone else).
    pub fn waiter(&self) -> Waiter<V> {
        Waiter {
            rx: self.tx.subscribe(),
        }
    }

    /// The key this guard leads.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Ends the flight: current waiters receive `value`; later `join`s start a new flight.
    pub fn publish(self, value: V) {
        // why: remove the slot before sending so a caller that joins after this point
        // starts fresh (and finds the stored value in the cache) rather than following a
        // finished flight; receivers already handed out still see the value because a
        // watch channel keeps its last value.
        self.remove_slot();
        self.tx.send_replace(Some(value));
        // Drop runs next and finds the slot already gone.
    }

    fn remove_slot(&self) {
        let mut flights = self.flights.lock();
        if flights
            .slots
            .get(&self.key)
            .is_some_and(|s| s.generation == self.generation)
        {
            flights.slots.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for LeaderGuard<K, V> {
    fn drop(&mut self) {
        // A leader dropped without publishing frees its followers: the sender goes away
        // with the guard and their `wait` returns `None`.
        self.remove_slot();
    }
}

impl<V: Clone> Waiter<V> {
    /// The leader's value, or `None` if the leader was dropped without publishing (the
    /// caller may then `join` again; one caller becomes the new leader).
    pub async fn wait(mut self) -> Option<V> {
        // why: `wait_for` checks the current value before reporting a closed channel, so
        // a value published just before the guard was dropped is still received.
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn followers_receive_the_published_value_and_slot_is_freed() {
        let sf: SingleFlight<&str, u32> = SingleFlight::new();
        let Flight::Leader(guard) = sf.join("k") else {
            panic!("first join must lead")
        };
        let mut waiters = Vec::new();
        for _ in 0..10 {
            match sf.join("k") {
                Flight::Follower(w) => waiters.push(tokio::spawn(w.wait())),
                Flight::Leader(_) => panic!("second join must follow"),
            }
        }
        let own = guard.waiter();
        guard.publish(7);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(7), "follower gets the value");
        }
        assert_eq!(
            own.wait().await,
            Some(7),
            "leader's own waiter gets the value"
        );
        assert_eq!(sf.in_flight(), 0, "no slot left after publish");
        assert!(
            matches!(sf.join("k"), Flight::Leader(_)),
            "new flight after publish"
        );
    }

    #[tokio::test]
    async fn dropped_leader_frees_followers_and_a_new_leader_is_elected() {
        let sf: SingleFlight<&str, u32> = SingleFlight::new();
        let guard = sf.join("k");
        let Flight::Follower(w) = sf.join("k") else {
            panic!("must follow")
        };
        let waiting = tokio::spawn(w.wait());
        tokio::task::yield_now().await;
        drop(guard);
        let got = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("follower must wake when the leader is dropped")
            .unwrap();
        assert_eq!(got, None, "no value from a dropped leader");
        assert!(
            matches!(sf.join("k"), Flight::Leader(_)),
            "retry becomes leader"
        );
    }

    #[tokio::test]
    async fn different_keys_fly_independently() {
        let sf: SingleFlight<u32, u32> = SingleFlight::new();
        let a = sf.join(1);
        let b = sf.join(2);
        assert!(matches!(a, Flight::Leader(_)), "key 1 leads");
        assert!(matches!(b, Flight::Leader(_)), "key 2 leads");
        assert_eq!(sf.in_flight(), 2, "two flights");
    }

    #[tokio::test]
    async fn concurrent_joins_elect_exactly_one_leader() {
        let sf: SingleFlight<&str, usize> = SingleFlight::new();
        let leaders = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let sf = sf.clone();
            let leaders = leaders.clone();
            tasks.push(tokio::spawn(async move {
                match sf.join("k") {
                    Flight::Leader(g) => {
                        leaders.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let w = g.waiter();
                        g.publish(1);
                        w.wait().await
                    }
                    Flight::Follower(w) => w.wait().await,
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(1), "everyone gets the value");
        }
        assert_eq!(leaders.load(Ordering::SeqCst), 1, "exactly one leader");
    }
}
