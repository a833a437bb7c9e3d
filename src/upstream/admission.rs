//! Admission control: HAProxy-style `maxconn` slots with a bounded, prioritised wait queue.
//!
//! One [`Admission`] owns N slot groups (N >= 1) and one queue shared by all of them:
//! - per upstream, one group per server (group `i` = server `i`, capacity = its `max_inflight`);
//! - per route, a single group whose capacity is the route's `max_inflight`.
//!
//! A request asks for a slot on any of its *eligible* groups (the caller decides eligibility,
//! e.g. healthy servers, or one pinned server). If a group has a free slot the caller's balancer
//! picks one of them; otherwise the request waits in the queue (highest priority class first,
//! FIFO within a class) until a slot on one of its eligible groups frees, the queue timeout
//! passes, or the caller drops the future (client gone). Slots are released by dropping the
//! [`Permit`], and a released slot is handed straight to the best waiting request eligible for
//! that group, so a free slot never coexists with a waiter that could use it.
//!
//! Everything here is plain tokio: no HTTP, no Pingora. The HTTP status (503/429) and the
//! `Retry-After` header are chosen by the caller from [`Rejection`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Default bound on the number of queued requests per [`Admission`].
pub const DEFAULT_QUEUE_MAX: usize = 1000;
/// Default longest time a request waits in the queue before it is rejected.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `Retry-After` advice sent with a rejection.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Lower clamp of the automatic `Retry-After` advice.
pub const AUTO_RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
/// Upper clamp of the automatic `Retry-After` advice.
pub const AUTO_RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// Weight of a new sample in the service-time EWMA.
// why: 1/8 is the TCP SRTT gain; it smooths single slow requests but follows a shift within
// a few dozen requests.
const EWMA_ALPHA: f64 = 0.125;
/// Marks "no service time observed yet" in the lock-free EWMA mirror.
const NO_SAMPLE: u64 = u64::MAX;
/// Completions of a class (at most this many, at least one per slot) before fail-fast trusts
/// its service time.
const FAIL_FAST_MIN_SAMPLES: usize = 8;

/// How the `Retry-After` advice of a rejection is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// Always this duration.
    Fixed(Duration),
    /// `(queue depth + 1) * EWMA service time / total slots`, rounded up to whole seconds and
    /// clamped to [`AUTO_RETRY_AFTER_MIN`, `AUTO_RETRY_AFTER_MAX`]. Before the first permit
    /// has been released (no service time known) it is [`DEFAULT_RETRY_AFTER`].
    Auto,
}

/// Queue behaviour of one [`Admission`] (validated runtime config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most requests waiting at once (all classes). `0` = shed mode: reject at once when no
    /// slot is free. Default [`DEFAULT_QUEUE_MAX`].
    pub max: usize,
    /// Most requests waiting at once in one priority class, so one class cannot take all
    /// the queue. `None` (default) = `max`.
    pub max_per_class: Option<usize>,
    /// Longest wait in the queue; then the request is rejected with
    /// [`RejectReason::QueueTimeout`]. Default [`DEFAULT_QUEUE_TIMEOUT`].
    pub timeout: Duration,
    /// `Retry-After` advice for rejections. Default `Fixed(DEFAULT_RETRY_AFTER)`.
    pub retry_after: RetryAfter,
    /// Reject on arrival ([`RejectReason::FailFast`]) when the estimated wait exceeds
    /// `timeout`, instead of queueing a request that will most likely time out. The estimate
    /// sums the service time of each class's queued requests ahead (per-class EWMA of hold
    /// times) over the eligible slots, and is trusted only once the request's class has seen
    /// min(slots, 8) completions. Default off.
    pub fail_fast: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max: DEFAULT_QUEUE_MAX,
            max_per_class: None,
            timeout: DEFAULT_QUEUE_TIMEOUT,
            retry_after: RetryAfter::Fixed(DEFAULT_RETRY_AFTER),
            fail_fast: false,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No free slot and the queue (or the request's priority class) is full; also every
    /// rejection in shed mode (`max: 0`).
    QueueFull,
    /// Waited `timeout` in the queue without getting a slot.
    QueueTimeout,
    /// `fail_fast` estimated a wait longer than `timeout`.
    FailFast,
    /// The eligible set was empty (or named no existing group): nothing could ever serve it.
    NoEligibleGroup,
}

impl RejectReason {
    /// Stable label for logs and metrics: `full`, `timeout`, `fail_fast`, `no_eligible`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "full",
            Self::QueueTimeout => "timeout",
            Self::FailFast => "fail_fast",
            Self::NoEligibleGroup => "no_eligible",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that was not admitted; the caller turns it into a 503 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("admission rejected ({reason}) after waiting {waited:?}; retry after {retry_after:?}")]
pub struct Rejection {
    pub reason: RejectReason,
    /// Advice for the `Retry-After` header (whole seconds when `RetryAfter::Auto`).
    pub retry_after: Duration,
    /// Time spent in the queue before the rejection (zero for immediate rejections).
    pub waited: Duration,
}

/// Point-in-time counters of one [`Admission`]; counters are monotonic since creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Requests waiting now.
    pub depth: usize,
    /// Slots held now, per group.
    pub inflight: Vec<usize>,
    /// Permits handed out (immediately or after queueing).
    pub granted: u64,
    /// Requests that had to enter the queue.
    pub queued: u64,
    pub rejected_full: u64,
    pub rejected_timeout: u64,
    pub rejected_fail_fast: u64,
    pub rejected_no_eligible: u64,
    /// Waiters whose future was dropped while queued (client disconnected).
    pub abandoned: u64,
    /// EWMA of permit hold times; `None` until the first permit is released.
    pub ewma_service_time: Option<Duration>,
}

/// One queued request.
struct Waiter {
    id: u64,
    eligible: Box<[usize]>,
    /// Receives the group whose slot was handed over (the slot is already counted).
    tx: oneshot::Sender<usize>,
}

/// Everything the lock guards.
struct State {
    /// Waiters per class, highest priority first; ids increase within a deque (FIFO).
    classes: BTreeMap<Reverse<i32>, VecDeque<Waiter>>,
    depth: usize,
    next_id: u64,
    ewma_secs: Option<f64>,
    /// Per priority class: (EWMA of hold times, samples). Classes often differ in cost (a
    /// 100 ms `/register` render vs a 20 ms `/rhsm` call), so fail-fast estimates use them.
    class_service: BTreeMap<i32, (f64, u64)>,
    /// Reused buffer of free eligible groups for the balancer callback.
    free: Vec<usize>,
}

/// Slot groups plus one bounded priority queue; share it as `Arc<Admission>`.
///
/// Observers ([`inflight`](Self::inflight), [`queue_depth`](Self::queue_depth),
/// [`stats`](Self::stats), [`retry_after`](Self::retry_after)) read atomics and never take
/// the lock, so a balancer callback may call them.
pub struct Admission {
    capacities: Box<[Option<usize>]>,
    settings: QueueSettings,
    state: Mutex<State>,
    // Lock-free mirrors, written only while holding `state`.
    inflight: Box<[AtomicUsize]>,
    depth: AtomicUsize,
    ewma_nanos: AtomicU64,
    granted: AtomicU64,
    queued: AtomicU64,
    rejected_full: AtomicU64,
    rejected_timeout: AtomicU64,
    rejected_fail_fast: AtomicU64,
    rejected_no_eligible: AtomicU64,
    abandoned: AtomicU64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("capacities", &self.capacities)
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish()
    }
}

/// What the synchronous part of [`Admission::acquire`] decided.
enum Start {
    Done(Result<Permit, Rejection>),
    Queued(Waiting),
}

impl Admission {
    /// One slot group per entry of `capacities` (`None` = unlimited, `Some(0)` = never
    /// grants). Group indices are positions in this vector.
    pub fn new(capacities: Vec<Option<usize>>, settings: QueueSettings) -> Arc<Self> {
        let inflight = capacities.iter().map(|_| AtomicUsize::new(0)).collect();
        Arc::new(Self {
            capacities: capacities.into_boxed_slice(),
            settings,
            state: Mutex::new(State {
                classes: BTreeMap::new(),
                depth: 0,
                next_id: 0,
                ewma_secs: None,
                class_service: BTreeMap::new(),
                free: Vec::new(),
            }),
            inflight,
            depth: AtomicUsize::new(0),
            ewma_nanos: AtomicU64::new(NO_SAMPLE),
            granted: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            rejected_timeout: AtomicU64::new(0),
            rejected_fail_fast: AtomicU64::new(0),
            rejected_no_eligible: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        })
    }

    /// The settings this admission was built with.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Number of slot groups.
    pub fn groups(&self) -> usize {
        self.capacities.len()
    }

    /// Take a slot on one of the `eligible` groups, waiting in the queue if none is free.
    ///
    /// The decision is made when this function is called, not when the future is first
    /// polled: a free slot is taken (or the request is queued or rejected) right away, and
    /// `choose` is called at most once, here, with the eligible groups that have a free slot;
    /// it returns one of them (an index not in the slice falls back to the first).
    /// `choose` runs under the admission lock: it may call the observers but must not
    /// acquire or drop a [`Permit`] of this admission (deadlock).
    ///
    /// The returned future is `Send + 'static` and cancel-safe: dropping it while queued
    /// removes the waiter (counted as abandoned); a slot granted concurrently with the drop
    /// is passed on to the next waiter, never leaked. If a slot arrives at the same instant
    /// as the timeout, the request is admitted.
    pub fn acquire(
        self: &Arc<Self>,
        priority: i32,
        eligible: &[usize],
        choose: &mut dyn FnMut(&[usize]) -> usize,
    ) -> impl Future<Output = Result<Permit, Rejection>> + Send + 'static {
        let start = self.start(priority, eligible, choose);
        async move {
            match start {
                Start::Done(result) => result,
                Start::Queued(waiting) => waiting.wait().await,
            }
        }
    }

    /// Take a free slot on one of the `eligible` groups now, or `None`; never queues and
    /// counts nothing as rejected. `choose` as in [`acquire`](Self::acquire).
    pub fn try_acquire(
        self: &Arc<Self>,
        eligible: &[usize],
        choose: &mut dyn FnMut(&[usize]) -> usize,
    ) -> Option<Permit> {
        let now = Instant::now();
        let group = self.take_free(&mut self.state.lock(), eligible, choose)?;
        Some(Permit::new(self, group, 0, now, Duration::ZERO))
    }

    /// Slots held now on `group` (0 for an unknown group).
    pub fn inflight(&self, group: usize) -> usize {
        self.inflight
            .get(group)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Slots held now on all groups.
    pub fn total_inflight(&self) -> usize {
        self.inflight
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// EWMA of permit hold times; `None` until the first permit is released.
    pub fn ewma_service_time(&self) -> Option<Duration> {
        match self.ewma_nanos.load(Ordering::Relaxed) {
            NO_SAMPLE => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Snapshot of the counters (lock-free; fields may be mutually off by in-flight updates).
    pub fn stats(&self) -> AdmissionStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AdmissionStats {
            depth: self.queue_depth(),
            inflight: (0..self.groups()).map(|g| self.inflight(g)).collect(),
            granted: load(&self.granted),
            queued: load(&self.queued),
            rejected_full: load(&self.rejected_full),
            rejected_timeout: load(&self.rejected_timeout),
            rejected_fail_fast: load(&self.rejected_fail_fast),
            rejected_no_eligible: load(&self.rejected_no_eligible),
            abandoned: load(&self.abandoned),
            ewma_service_time: self.ewma_service_time(),
        }
    }

    /// Current `Retry-After` advice (see [`RetryAfter`]).
    pub fn retry_after(&self) -> Duration {
        match self.settings.retry_after {
            RetryAfter::Fixed(d) => d,
            RetryAfter::Auto => {
                let Some(service) = self.ewma_service_time() else {
                    return DEFAULT_RETRY_AFTER;
                };
                // why: unlimited groups never queue, so only finite slots drain the queue.
                let slots: usize = self.capacities.iter().flatten().sum();
                let drain =
                    service.as_secs_f64() * (self.queue_depth() + 1) as f64 / slots.max(1) as f64;
                let secs = drain.ceil().clamp(
                    AUTO_RETRY_AFTER_MIN.as_secs_f64(),
                    AUTO_RETRY_AFTER_MAX.as_secs_f64(),
                );
                Duration::from_secs_f64(secs)
            }
        }
    }

    /// The synchronous part of `acquire`: fast path, admission checks, enqueue.
    fn start(
        self: &Arc<Self>,
        priority: i32,
        eligible: &[usize],
        choose: &mut dyn FnMut(&[usize]) -> usize,
    ) -> Start {
        let arrived = Instant::now();
        let mut st = self.state.lock();
        if let Some(group) = self.take_free(&mut st, eligible, choose) {
            drop(st);
            return Start::Done(Ok(Permit::new(
                self,
                group,
                priority,
                arrived,
                Duration::ZERO,
            )));
        }
        if let Err(reason) = self.check_queue(&st, priority, eligible) {
            drop(st);
            return Start::Done(Err(self.reject(reason, Duration::ZERO)));
        }
        let id = st.next_id;
        st.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            id,
            eligible: eligible.into(),
            tx,
        };
        st.classes
            .entry(Reverse(priority))
            .or_default()
            .push_back(waiter);
        st.depth += 1;
        self.depth.store(st.depth, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::Relaxed);
        drop(st);
        Start::Queued(Waiting {
            admission: Arc::clone(self),
            id,
            priority,
            arrived,
            rx,
            settled: false,
        })
    }

    /// Takes a free slot among `eligible` (picked by `choose`) and counts it.
    fn take_free(
        &self,
        st: &mut State,
        eligible: &[usize],
        choose: &mut dyn FnMut(&[usize]) -> usize,
    ) -> Option<usize> {
        let mut free = std::mem::take(&mut st.free);
        free.clear();
        free.extend(eligible.iter().copied().filter(|&g| self.has_free_slot(g)));
        let picked = match free.as_slice() {
            [] => None,
            [only] => Some(*only),
            many => {
                let choice = choose(many);
                Some(if many.contains(&choice) {
                    choice
                } else {
                    many[0]
                })
            }
        };
        st.free = free;
        let group = picked?;
        self.inflight[group].fetch_add(1, Ordering::Relaxed);
        self.granted.fetch_add(1, Ordering::Relaxed);
        Some(group)
    }

    fn has_free_slot(&self, group: usize) -> bool {
        match self.capacities.get(group) {
            Some(Some(cap)) => self.inflight[group].load(Ordering::Relaxed) < *cap,
            Some(None) => true,
            None => false,
        }
    }

    /// Whether a request with no free slot may enter the queue.
    fn check_queue(
        &self,
        st: &State,
        priority: i32,
        eligible: &[usize],
    ) -> Result<(), RejectReason> {
        let slots: usize = eligible
            .iter()
            .filter_map(|&g| self.capacities.get(g).copied().flatten())
            .sum();
        if slots == 0 {
            // Only unknown groups or groups of capacity 0: waiting cannot help.
            return Err(RejectReason::NoEligibleGroup);
        }
        let s = &self.settings;
        let in_class = st.classes.get(&Reverse(priority)).map_or(0, VecDeque::len);
        if st.depth >= s.max || in_class >= s.max_per_class.unwrap_or(s.max) {
            return Err(RejectReason::QueueFull);
        }
        if s.fail_fast {
            // Act only on evidence: this class must have seen enough completions (one per
            // slot, up to 8) for its service time to mean something; otherwise queue.
            let needed = slots.clamp(1, FAIL_FAST_MIN_SAMPLES);
            let own = st
                .class_service
                .get(&priority)
                .filter(|(_, n)| *n >= needed as u64);
            if let (Some(&(own_secs, _)), Some(global)) = (own, st.ewma_secs) {
                // Everyone of this or a higher class is ahead (whatever groups they wait
                // for), each costing its class's service time; the eligible slots serve the
                // queue in parallel.
                let ahead: f64 = st
                    .classes
                    .range(..=Reverse(priority))
                    .map(|(Reverse(c), q)| {
                        q.len() as f64 * st.class_service.get(c).map_or(global, |e| e.0)
                    })
                    .sum();
                let estimate = (ahead + own_secs) / slots as f64;
                if estimate > s.timeout.as_secs_f64() {
                    return Err(RejectReason::FailFast);
                }
            }
        }
        Ok(())
    }

    /// Counts a rejection and attaches the current advice.
    fn reject(&self, reason: RejectReason, waited: Duration) -> Rejection {
        let counter = match reason {
            RejectReason::QueueFull => &self.rejected_full,
            RejectReason::QueueTimeout => &self.rejected_timeout,
            RejectReason::FailFast => &self.rejected_fail_fast,
            RejectReason::NoEligibleGroup => &self.rejected_no_eligible,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Rejection {
            reason,
            retry_after: self.retry_after(),
            waited,
        }
    }

    /// Gives the slot of `group` to the best waiter eligible for it (priority, then FIFO),
    /// or frees it. Never constructs or drops a `Permit`, so it is safe under the lock.
    fn release_locked(&self, st: &mut State, group: usize) {
        loop {
            let Some(waiter) = self.pop_waiter_for(st, group) else {
                self.inflight[group].fetch_sub(1, Ordering::Relaxed);
                return;
            };
            // The slot moves to the waiter: the in-flight count stays as it is.
            if waiter.tx.send(group).is_ok() {
                self.granted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // why: unreachable in practice (a waiter's receiver outlives its queue entry),
            // but if it happens the slot simply goes to the next waiter.
        }
    }

    /// Removes and returns the first waiter (highest class, oldest) eligible for `group`.
    // why: linear in the queue length when many waiters are pinned elsewhere; the queue is
    // bounded (`max`) so the worst case is bounded too.
    fn pop_waiter_for(&self, st: &mut State, group: usize) -> Option<Waiter> {
        let (class, pos) = st.classes.iter().find_map(|(class, queue)| {
            let pos = queue.iter().position(|w| w.eligible.contains(&group))?;
            Some((*class, pos))
        })?;
        self.remove_at(st, class, pos)
    }

    /// Removes the waiter `id` if it is still queued.
    fn remove_waiter(&self, st: &mut State, priority: i32, id: u64) -> bool {
        let class = Reverse(priority);
        let Some(queue) = st.classes.get(&class) else {
            return false;
        };
        // Ids only grow and removals keep order, so each class deque is sorted by id.
        match queue.binary_search_by_key(&id, |w| w.id) {
            Ok(pos) => self.remove_at(st, class, pos).is_some(),
            Err(_) => false,
        }
    }

    /// Removes the waiter at `pos` of `class`, dropping the class when it empties.
    fn remove_at(&self, st: &mut State, class: Reverse<i32>, pos: usize) -> Option<Waiter> {
        let queue = st.classes.get_mut(&class)?;
        let waiter = queue.remove(pos)?;
        if queue.is_empty() {
            st.classes.remove(&class);
        }
        st.depth -= 1;
        self.depth.store(st.depth, Ordering::Relaxed);
        Some(waiter)
    }

    /// Records a permit hold time and releases its slot.
    fn finish(&self, group: usize, priority: i32, held: Duration) {
        let mut st = self.state.lock();
        let sample = held.as_secs_f64();
        let entry = st.class_service.entry(priority).or_insert((sample, 0));
        entry.0 += EWMA_ALPHA * (sample - entry.0);
        entry.1 += 1;
        let ewma = match st.ewma_secs {
            Some(prev) => prev + EWMA_ALPHA * (sample - prev),
            None => sample,
        };
        st.ewma_secs = Some(ewma);
        // why: saturate below the NO_SAMPLE sentinel (needs ~584 years of hold time anyway).
        let nanos = Duration::try_from_secs_f64(ewma).map_or(u128::MAX, |d| d.as_nanos());
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX).min(NO_SAMPLE - 1);
        self.ewma_nanos.store(nanos, Ordering::Relaxed);
        self.release_locked(&mut st, group);
    }
}

/// The waiting side of a queued request; its `Drop` keeps cancellation leak-free.
struct Waiting {
    admission: Arc<Admission>,
    id: u64,
    priority: i32,
    arrived: Instant,
    rx: oneshot::Receiver<usize>,
    /// Set once the outcome is decided and no cleanup is left for `Drop`.
    settled: bool,
}

impl Waiting {
    async fn wait(mut self) -> Result<Permit, Rejection> {
        let deadline = self.arrived + self.admission.settings.timeout;
        if let Ok(Ok(group)) = tokio::time::timeout_at(deadline, &mut self.rx).await {
            self.settled = true;
            return Ok(self.permit(group));
        }
        // Timed out (or the sender vanished): leave the queue, unless a grant won the race.
        let granted = {
            let admission = Arc::clone(&self.admission);
            let mut st = admission.state.lock();
            self.settled = true;
            if admission.remove_waiter(&mut st, self.priority, self.id) {
                None
            } else {
                self.rx.try_recv().ok()
            }
        };
        match granted {
            Some(group) => Ok(self.permit(group)),
            None => Err(self
                .admission
                .reject(RejectReason::QueueTimeout, self.arrived.elapsed())),
        }
    }

    fn permit(&self, group: usize) -> Permit {
        let now = Instant::now();
        Permit::new(
            &self.admission,
            group,
            self.priority,
            now,
            now - self.arrived,
        )
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let admission = &self.admission;
        let mut st = admission.state.lock();
        if !admission.remove_waiter(&mut st, self.priority, self.id) {
            // Granted but never taken: the slot was sent to us under the same lock that
            // removed us, so it is in the channel. Pass it on.
            match self.rx.try_recv() {
                Ok(group) => admission.release_locked(&mut st, group),
                Err(_) => return,
            }
        }
        admission.abandoned.fetch_add(1, Ordering::Relaxed);
    }
}

/// One held slot; dropping it releases the slot to the next eligible waiter (or frees it)
/// and feeds the hold time into the service-time EWMA.
pub struct Permit {
    admission: Arc<Admission>,
    group: usize,
    priority: i32,
    acquired_at: Instant,
    queued_for: Duration,
}

impl Permit {
    fn new(
        admission: &Arc<Admission>,
        group: usize,
        priority: i32,
        acquired_at: Instant,
        queued_for: Duration,
    ) -> Self {
        Self {
            admission: Arc::clone(admission),
            group,
            priority,
            acquired_at,
            queued_for,
        }
    }

    /// The slot group (server index, or 0 for a route limit) this permit holds.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Time spent in the queue before the slot was granted (zero on the fast path).
    pub fn waited(&self) -> Duration {
        self.queued_for
    }

    /// When the slot was granted.
    pub fn acquired_at(&self) -> Instant {
        self.acquired_at
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("group", &self.group)
            .field("waited", &self.queued_for)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission
            .finish(self.group, self.priority, self.acquired_at.elapsed());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn first(free: &[usize]) -> usize {
        free[0]
    }

    fn settings(max: usize, timeout_secs: u64) -> QueueSettings {
        QueueSettings {
            max,
            timeout: Duration::from_secs(timeout_secs),
            ..QueueSettings::default()
        }
    }

    fn hold(adm: &Arc<Admission>, eligible: &[usize]) -> Permit {
        adm.try_acquire(eligible, &mut first).expect("a free slot")
    }

    /// Gives the admission an EWMA service time of exactly `secs` (needs paused time).
    async fn observe_service_time(adm: &Arc<Admission>, group: usize, secs: u64) {
        let p = hold(adm, &[group]);
        tokio::time::advance(Duration::from_secs(secs)).await;
        drop(p);
    }

    /// Queues `n` acquisitions at `priority`, each recording `tag` in `order` when granted.
    fn spawn_recording(
        adm: &Arc<Admission>,
        priority: i32,
        tag: usize,
        order: &Arc<Mutex<Vec<usize>>>,
    ) -> tokio::task::JoinHandle<()> {
        let fut = adm.acquire(priority, &[0], &mut first);
        let order = Arc::clone(order);
        tokio::spawn(async move {
            let permit = fut.await.expect("granted");
            order.lock().push(tag);
            drop(permit);
        })
    }

    #[test]
    fn acquire_future_is_send_and_static() {
        fn assert_send_static<T: Send + 'static>(_: &T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let adm = Admission::new(vec![Some(1)], QueueSettings::default());
        let eligible = vec![0];
        let fut = adm.acquire(0, &eligible, &mut first);
        drop(eligible);
        assert_send_static(&fut);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_capacity_in_flight_under_500_concurrent_tasks() {
        let caps = [3usize, 5];
        let adm = Admission::new(caps.iter().map(|&c| Some(c)).collect(), settings(1000, 60));
        let current: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
        let peak: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
        let mut tasks = Vec::new();
        for i in 0..500i32 {
            // Every fifth request is pinned to group 1; the rest may use either group.
            let eligible: &[usize] = if i % 5 == 0 { &[1] } else { &[0, 1] };
            let fut = adm.acquire(i % 3, eligible, &mut first);
            let (current, peak) = (Arc::clone(&current), Arc::clone(&peak));
            tasks.push(tokio::spawn(async move {
                let permit = fut.await.expect("queue is large enough to admit everyone");
                let g = permit.group();
                let now = current[g].fetch_add(1, Ordering::SeqCst) + 1;
                peak[g].fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                current[g].fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for (g, cap) in caps.iter().enumerate() {
            let seen = peak[g].load(Ordering::SeqCst);
            assert!(
                seen <= *cap,
                "group {g}: {seen} in flight exceeds cap {cap}"
            );
        }
        let stats = adm.stats();
        assert!(
            stats.queued > 0,
            "the test should exercise the queue: {stats:?}"
        );
        assert_eq!(
            stats.granted, 500,
            "every request granted exactly once: {stats:?}"
        );
        assert_eq!(adm.total_inflight(), 0, "all slots released");
        assert_eq!(adm.queue_depth(), 0, "queue drained");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_of_one_class_are_served_fifo() {
        let adm = Admission::new(vec![Some(1)], settings(100, 60));
        let held = hold(&adm, &[0]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..5)
            .map(|i| spawn_recording(&adm, 0, i, &order))
            .collect();
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4], "FIFO within a class");
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_class_overtakes_queued_lower_ones() {
        let adm = Admission::new(vec![Some(1)], settings(100, 60));
        let held = hold(&adm, &[0]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = [(0, 0), (0, 1), (5, 2), (0, 3), (5, 4), (-1, 5)]
            .into_iter()
            .map(|(prio, tag)| spawn_recording(&adm, prio, tag, &order))
            .collect();
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock(),
            vec![2, 4, 0, 1, 3, 5],
            "priority desc, then FIFO"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_timeout_rejects_with_retry_after() {
        let s = QueueSettings {
            retry_after: RetryAfter::Fixed(Duration::from_secs(7)),
            ..settings(10, 5)
        };
        let adm = Admission::new(vec![Some(1)], s);
        let _held = hold(&adm, &[0]);
        let rejection = adm.acquire(0, &[0], &mut first).await.unwrap_err();
        assert_eq!(rejection.reason, RejectReason::QueueTimeout, "{rejection}");
        assert_eq!(
            rejection.retry_after,
            Duration::from_secs(7),
            "fixed advice"
        );
        assert_eq!(
            rejection.waited,
            Duration::from_secs(5),
            "waited the whole timeout"
        );
        assert_eq!(adm.queue_depth(), 0, "timed-out waiter left the queue");
        assert_eq!(adm.stats().rejected_timeout, 1, "counted as timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_rejects_at_once() {
        let adm = Admission::new(vec![Some(1)], settings(2, 60));
        let _held = hold(&adm, &[0]);
        let _queued = [
            adm.acquire(0, &[0], &mut first),
            adm.acquire(9, &[0], &mut first),
        ];
        let before = Instant::now();
        let rejection = adm.acquire(9, &[0], &mut first).await.unwrap_err();
        assert_eq!(rejection.reason, RejectReason::QueueFull, "{rejection}");
        assert_eq!(rejection.retry_after, DEFAULT_RETRY_AFTER, "default advice");
        assert_eq!(rejection.waited, Duration::ZERO, "no wait");
        assert_eq!(Instant::now(), before, "rejected without any time passing");
        assert_eq!(adm.queue_depth(), 2, "queued waiters untouched");
        assert_eq!(adm.stats().rejected_full, 1, "counted as full");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_queue_max_sheds_at_once_but_admits_free_slots() {
        let adm = Admission::new(vec![Some(1)], settings(0, 60));
        let held = adm
            .acquire(0, &[0], &mut first)
            .await
            .expect("free slot admitted");
        let rejection = adm.acquire(0, &[0], &mut first).await.unwrap_err();
        assert_eq!(
            rejection.reason,
            RejectReason::QueueFull,
            "shed mode rejects"
        );
        assert_eq!(rejection.reason.as_str(), "full", "metric label");
        drop(held);
        assert!(
            adm.acquire(0, &[0], &mut first).await.is_ok(),
            "slot free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_is_never_granted_and_slot_goes_to_next() {
        let adm = Admission::new(vec![Some(1)], settings(10, 60));
        let held = hold(&adm, &[0]);
        let got_slot = Arc::new(AtomicBool::new(false));
        let fut = adm.acquire(0, &[0], &mut first);
        let flag = Arc::clone(&got_slot);
        let cancelled = tokio::spawn(async move {
            let _permit = fut.await;
            flag.store(true, Ordering::SeqCst);
        });
        tokio::task::yield_now().await; // the task is now parked in the queue
        let next = adm.acquire(0, &[0], &mut first);
        cancelled.abort();
        assert!(
            cancelled.await.unwrap_err().is_cancelled(),
            "task was aborted"
        );
        assert_eq!(adm.queue_depth(), 1, "only the live waiter remains");
        drop(held);
        let permit = next.await.expect("next waiter gets the slot");
        assert_eq!(permit.group(), 0, "slot 0 handed over");
        assert!(
            !got_slot.load(Ordering::SeqCst),
            "cancelled waiter never granted"
        );
        assert_eq!(adm.stats().abandoned, 1, "abandonment counted");
        assert_eq!(adm.inflight(0), 1, "exactly one slot held");
    }

    #[tokio::test(start_paused = true)]
    async fn grant_racing_cancel_passes_the_slot_on() {
        let adm = Admission::new(vec![Some(1)], settings(10, 60));
        let held = hold(&adm, &[0]);
        let raced = adm.acquire(0, &[0], &mut first);
        let next = adm.acquire(0, &[0], &mut first);
        drop(held); // slot handed to `raced`, which never polls it
        assert_eq!(
            adm.queue_depth(),
            1,
            "`raced` left the queue with the grant"
        );
        drop(raced); // client gone after the grant
        assert_eq!(adm.queue_depth(), 0, "slot passed on to `next`");
        assert_eq!(adm.inflight(0), 1, "slot neither leaked nor duplicated");
        drop(next.await.expect("next waiter got the slot"));
        assert_eq!(adm.total_inflight(), 0, "all released");
        assert_eq!(
            adm.stats().abandoned,
            1,
            "raced waiter counted as abandoned"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mixed_acquire_cancel_timeout_operations_leak_nothing() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let s = QueueSettings {
            max_per_class: Some(20),
            timeout: Duration::from_millis(3),
            ..settings(40, 0)
        };
        let adm = Admission::new(vec![Some(1), Some(2), Some(1)], s);
        let mut rng = StdRng::seed_from_u64(7);
        let subsets: [&[usize]; 4] = [&[0], &[1], &[0, 1, 2], &[2, 0]];
        let mut tasks = Vec::new();
        for op in 0..1000 {
            if op % 10 == 0 {
                // why: spread arrivals so the queue keeps draining and refilling.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let eligible = subsets[rng.gen_range(0..subsets.len())];
            let fut = adm.acquire(rng.gen_range(0..3), eligible, &mut first);
            let pause = Duration::from_micros(rng.gen_range(0..2000));
            match rng.gen_range(0..4) {
                0 => drop(fut), // abandoned before its first poll
                1 => tasks.push(tokio::spawn(async move {
                    // client disconnects after `pause` (may race a grant)
                    tokio::select! {
                        r = fut => drop(r),
                        _ = tokio::time::sleep(pause) => {}
                    }
                })),
                2 => {
                    let t = tokio::spawn(async move { drop(fut.await) });
                    tokio::task::yield_now().await;
                    t.abort();
                    tasks.push(t);
                }
                _ => tasks.push(tokio::spawn(async move {
                    if let Ok(permit) = fut.await {
                        tokio::time::sleep(pause).await;
                        drop(permit);
                    }
                })),
            }
        }
        for t in tasks {
            let _ = t.await; // aborted tasks report cancellation
        }
        let stats = adm.stats();
        assert_eq!(adm.total_inflight(), 0, "no slot leaked: {stats:?}");
        assert_eq!(adm.queue_depth(), 0, "no waiter left behind: {stats:?}");
        assert!(stats.abandoned > 0, "cancellations exercised: {stats:?}");
        assert!(
            stats.rejected_timeout + stats.rejected_full > 0,
            "rejections exercised: {stats:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_waiter_waits_only_for_its_group() {
        let adm = Admission::new(vec![Some(1), Some(1)], settings(10, 60));
        let p0 = hold(&adm, &[0]);
        let p1 = hold(&adm, &[1]);
        let pinned = tokio::spawn(adm.acquire(0, &[1], &mut first));
        let any = adm.acquire(0, &[0, 1], &mut first);
        drop(p0);
        let got = any.await.expect("unpinned waiter admitted");
        assert_eq!(
            got.group(),
            0,
            "unpinned waiter takes group 0 though queued later"
        );
        tokio::task::yield_now().await;
        assert!(
            !pinned.is_finished(),
            "pinned waiter still waits for group 1"
        );
        assert_eq!(adm.queue_depth(), 1, "pinned waiter still queued");
        drop(p1);
        let permit = pinned.await.unwrap().expect("pinned waiter admitted");
        assert_eq!(permit.group(), 1, "pinned waiter gets group 1");
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_rejects_when_estimated_wait_exceeds_timeout() {
        let s = QueueSettings {
            fail_fast: true,
            ..settings(100, 25)
        };
        let adm = Admission::new(vec![Some(1)], s);
        observe_service_time(&adm, 0, 10).await;
        let _held = hold(&adm, &[0]);
        // Estimates: 10s, 20s (<= 25s, queued), then 30s (> 25s, rejected).
        let _queued = [
            adm.acquire(0, &[0], &mut first),
            adm.acquire(0, &[0], &mut first),
        ];
        let rejection = adm.acquire(0, &[0], &mut first).await.unwrap_err();
        assert_eq!(rejection.reason, RejectReason::FailFast, "{rejection}");
        assert_eq!(rejection.waited, Duration::ZERO, "rejected on arrival");
        // A higher class has nobody ahead of it: estimate 10s, so it queues.
        let _urgent = adm.acquire(1, &[0], &mut first);
        assert_eq!(adm.queue_depth(), 3, "higher class admitted to the queue");
        assert_eq!(adm.stats().rejected_fail_fast, 1, "counted as fail_fast");
    }

    #[tokio::test(start_paused = true)]
    async fn per_class_cap_rejects_one_class_while_others_still_queue() {
        let s = QueueSettings {
            max_per_class: Some(2),
            ..settings(10, 60)
        };
        let adm = Admission::new(vec![Some(1)], s);
        let _held = hold(&adm, &[0]);
        let _low = [
            adm.acquire(0, &[0], &mut first),
            adm.acquire(0, &[0], &mut first),
        ];
        let rejection = adm.acquire(0, &[0], &mut first).await.unwrap_err();
        assert_eq!(rejection.reason, RejectReason::QueueFull, "class 0 is full");
        let _high = adm.acquire(1, &[0], &mut first);
        assert_eq!(adm.queue_depth(), 3, "class 1 still queues");
    }

    #[tokio::test(start_paused = true)]
    async fn auto_retry_after_grows_with_depth_and_is_clamped() {
        let s = QueueSettings {
            retry_after: RetryAfter::Auto,
            ..settings(1000, 60)
        };
        let adm = Admission::new(vec![Some(1), Some(1)], s.clone());
        assert_eq!(
            adm.retry_after(),
            DEFAULT_RETRY_AFTER,
            "no sample yet: default"
        );
        observe_service_time(&adm, 0, 10).await;
        assert_eq!(
            adm.retry_after(),
            Duration::from_secs(5),
            "(0+1) * 10s / 2 slots"
        );
        let _held = [hold(&adm, &[0]), hold(&adm, &[1])];
        let mut queued: Vec<_> = (0..3)
            .map(|_| adm.acquire(0, &[0, 1], &mut first))
            .collect();
        assert_eq!(
            adm.retry_after(),
            Duration::from_secs(20),
            "(3+1) * 10s / 2 slots"
        );
        queued.extend((0..100).map(|_| adm.acquire(0, &[0, 1], &mut first)));
        assert_eq!(adm.retry_after(), AUTO_RETRY_AFTER_MAX, "clamped to 300s");

        let quick = Admission::new(vec![Some(4)], s);
        let p = hold(&quick, &[0]);
        tokio::time::advance(Duration::from_millis(5)).await;
        drop(p);
        assert_eq!(quick.retry_after(), AUTO_RETRY_AFTER_MIN, "clamped to 1s");
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_tracks_hold_times_and_permit_reports_queue_wait() {
        let adm = Admission::new(vec![Some(1)], settings(10, 60));
        observe_service_time(&adm, 0, 10).await;
        observe_service_time(&adm, 0, 2).await;
        assert_eq!(
            adm.ewma_service_time(),
            Some(Duration::from_secs(9)),
            "10 + (2-10)/8"
        );
        let held = hold(&adm, &[0]);
        let waiter = tokio::spawn(adm.acquire(0, &[0], &mut first));
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(held);
        let permit = waiter.await.unwrap().unwrap();
        assert_eq!(
            permit.waited(),
            Duration::from_secs(3),
            "queue wait reported"
        );
    }

    #[tokio::test]
    async fn balancer_chooses_among_free_groups_and_unlimited_never_queues() {
        let adm = Admission::new(vec![Some(1), Some(1), None], settings(0, 60));
        let mut offered = Vec::new();
        let p = adm
            .acquire(0, &[0, 1], &mut |free: &[usize]| {
                offered = free.to_vec();
                1
            })
            .await
            .unwrap();
        assert_eq!(
            (offered.as_slice(), p.group()),
            (&[0, 1][..], 1),
            "choice honoured"
        );
        let fallback = adm.try_acquire(&[0, 1], &mut |_: &[usize]| 99).unwrap();
        assert_eq!(
            fallback.group(),
            0,
            "invalid choice falls back to the first free group"
        );
        let many: Vec<_> = (0..100)
            .map(|_| adm.try_acquire(&[2], &mut first).unwrap())
            .collect();
        assert_eq!(
            adm.inflight(2),
            many.len(),
            "unlimited group admits everyone"
        );
        assert_eq!(adm.total_inflight(), 102, "total counts all groups");
    }

    #[tokio::test]
    async fn empty_or_unknown_eligible_set_is_rejected() {
        let adm = Admission::new(vec![Some(1), Some(0)], settings(10, 60));
        for eligible in [&[][..], &[7], &[1]] {
            let rejection = adm.acquire(0, eligible, &mut first).await.unwrap_err();
            assert_eq!(
                rejection.reason,
                RejectReason::NoEligibleGroup,
                "{eligible:?}"
            );
        }
        assert_eq!(adm.queue_depth(), 0, "nothing queued");
    }
}
