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

mod cost;
mod drain;
mod failfast;
pub use cost::Kind;
use drain::DrainRate;
#[cfg(test)]
use drain::WINDOW;

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
    /// 2 completions per slot (at most 32). Default off.
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

/// What a queued request is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    /// The slot of this group is handed over (already counted in flight) at this instant:
    /// the slot is held from here, however long the waiter takes to wake.
    Slot(usize, Instant),
    /// Answered from the queue, already counted: `QueueFull` when a request of a higher
    /// class took this one's place, `FailFast` when the drain showed it cannot be served
    /// within its queue timeout.
    Refused(RejectReason),
}

/// One queued request.
struct Waiter {
    id: u64,
    kind: Kind,
    arrived: Instant,
    /// Queued without drain evidence (so before fail-fast could judge it).
    unjudged: bool,
    eligible: Box<[usize]>,
    tx: oneshot::Sender<Grant>,
}

/// Everything the lock guards.
struct State {
    /// Waiters per class, highest priority first; ids increase within a deque (FIFO).
    classes: BTreeMap<Reverse<i32>, VecDeque<Waiter>>,
    depth: usize,
    next_id: u64,
    ewma_secs: Option<f64>,
    /// Per priority class: (EWMA of hold times, samples). Classes often differ in cost (a
    /// 100 ms `/register` render vs a 20 ms `/rhsm` call), so fail-fast estimates use them
    /// (kept only with fail-fast on).
    class_service: BTreeMap<i32, (f64, u64)>,
    /// Per priority class: how fast it drains while backlogged (fail-fast estimates; kept
    /// only with fail-fast on).
    drain: BTreeMap<i32, DrainRate>,
    /// Per kind of request: hold times and arrivals (fail-fast's trimming; kept only with
    /// fail-fast on).
    cost: BTreeMap<Kind, cost::KindCost>,
    /// When the evidence of quiet kinds and classes was last dropped.
    forgot_at: Option<Instant>,
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
                drain: BTreeMap::new(),
                cost: BTreeMap::new(),
                forgot_at: None,
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
        self.acquire_as(Kind::class(priority), eligible, choose)
    }

    /// [`acquire`](Self::acquire) for a request of `kind`: its class, and the route it came
    /// by, so fail-fast prices it by what requests of that route cost (see [`Kind`]).
    pub fn acquire_as(
        self: &Arc<Self>,
        kind: Kind,
        eligible: &[usize],
        choose: &mut dyn FnMut(&[usize]) -> usize,
    ) -> impl Future<Output = Result<Permit, Rejection>> + Send + 'static {
        let start = self.start(kind, eligible, choose);
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
        let mut st = self.state.lock();
        let group = self.take_free(&mut st, eligible, choose)?;
        self.started(&mut st, Kind::class(0), now);
        drop(st);
        Some(Permit::new(
            self,
            group,
            Kind::class(0),
            now,
            Duration::ZERO,
        ))
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
        kind: Kind,
        eligible: &[usize],
        choose: &mut dyn FnMut(&[usize]) -> usize,
    ) -> Start {
        let priority = kind.priority;
        let arrived = Instant::now();
        let mut st = self.state.lock();
        if self.settings.fail_fast {
            st.forget_idle(arrived);
            st.cost.entry(kind).or_default().arrived(arrived);
        }
        if let Some(group) = self.take_free(&mut st, eligible, choose) {
            self.started(&mut st, kind, arrived);
            drop(st);
            return Start::Done(Ok(Permit::new(self, group, kind, arrived, Duration::ZERO)));
        }
        let slots = self.eligible_slots(eligible);
        let drain = if self.settings.fail_fast {
            let in_class = st.classes.get(&Reverse(priority)).map_or(0, VecDeque::len);
            self.drain_estimate(&st, priority, in_class, slots)
        } else {
            None
        };
        match self.check_queue(&st, priority, slots, drain) {
            Ok(()) => {}
            Err(RejectReason::QueueFull)
                if self.room_by_displacing(&st, priority)
                    && self.displace_lower(&mut st, priority) => {}
            Err(reason) => {
                drop(st);
                return Start::Done(Err(self.reject(reason, Duration::ZERO)));
            }
        }
        let unjudged = self.settings.fail_fast && drain.is_none();
        let id = st.next_id;
        st.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            id,
            kind,
            arrived,
            unjudged,
            eligible: eligible.into(),
            tx,
        };
        st.classes
            .entry(Reverse(priority))
            .or_default()
            .push_back(waiter);
        if self.settings.fail_fast {
            st.drain.entry(priority).or_default().backlogged(arrived);
        }
        st.depth += 1;
        self.depth.store(st.depth, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::Relaxed);
        drop(st);
        Start::Queued(Waiting {
            admission: Arc::clone(self),
            id,
            kind,
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

    /// Counts a rejection and attaches the current advice.
    fn reject(&self, reason: RejectReason, waited: Duration) -> Rejection {
        let counter = match reason {
            RejectReason::QueueFull => &self.rejected_full,
            RejectReason::QueueTimeout => &self.rejected_timeout,
            RejectReason::FailFast => &self.rejected_fail_fast,
            RejectReason::NoEligibleGroup => &self.rejected_no_eligible,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.rejection(reason, waited)
    }

    /// A rejection with the current advice (not counted: see [`Self::reject`]).
    fn rejection(&self, reason: RejectReason, waited: Duration) -> Rejection {
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
            let now = Instant::now();
            if waiter.tx.send(Grant::Slot(group, now)).is_ok() {
                self.granted.fetch_add(1, Ordering::Relaxed);
                self.started(st, waiter.kind, now);
                if self.settings.fail_fast {
                    self.trim_tails(st);
                }
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
        // why: before remove_at, which tells the drain when this grant empties the class
        if let Some(d) = st.drain.get_mut(&class.0) {
            d.granted(Instant::now());
        }
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
            if let Some(d) = st.drain.get_mut(&class.0) {
                d.emptied();
            }
        }
        st.depth -= 1;
        self.depth.store(st.depth, Ordering::Relaxed);
        Some(waiter)
    }

    /// A slot of a request of `kind` was given at `at` (fail-fast reads the holds still
    /// running, see [`cost`]).
    fn started(&self, st: &mut State, kind: Kind, at: Instant) {
        if self.settings.fail_fast {
            st.cost.entry(kind).or_default().started(at);
        }
    }

    /// Records a permit hold time and releases its slot.
    fn finish(&self, group: usize, kind: Kind, acquired_at: Instant) {
        let mut st = self.state.lock();
        let now = Instant::now();
        let held = now.saturating_duration_since(acquired_at);
        let sample = held.as_secs_f64();
        if self.settings.fail_fast {
            let cost = st.cost.entry(kind).or_default();
            cost.completed(now, held);
            cost.ended(acquired_at);
            let entry = st.class_service.entry(kind.priority).or_insert((sample, 0));
            entry.0 += EWMA_ALPHA * (sample - entry.0);
            entry.1 += 1;
        }
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
    kind: Kind,
    arrived: Instant,
    rx: oneshot::Receiver<Grant>,
    /// Set once the outcome is decided and no cleanup is left for `Drop`.
    settled: bool,
}

impl Waiting {
    async fn wait(mut self) -> Result<Permit, Rejection> {
        let deadline = self.arrived + self.admission.settings.timeout;
        match tokio::time::timeout_at(deadline, &mut self.rx).await {
            Ok(Ok(Grant::Slot(group, at))) => {
                self.settled = true;
                return Ok(self.permit(group, at));
            }
            Ok(Ok(Grant::Refused(reason))) => {
                self.settled = true;
                return Err(self.admission.rejection(reason, self.arrived.elapsed()));
            }
            _ => {}
        }
        // Timed out (or the sender vanished): leave the queue, unless a grant won the race.
        let granted = {
            let admission = Arc::clone(&self.admission);
            let mut st = admission.state.lock();
            self.settled = true;
            if admission.remove_waiter(&mut st, self.kind.priority, self.id) {
                None
            } else {
                self.rx.try_recv().ok()
            }
        };
        match granted {
            Some(Grant::Slot(group, at)) => Ok(self.permit(group, at)),
            Some(Grant::Refused(reason)) => {
                Err(self.admission.rejection(reason, self.arrived.elapsed()))
            }
            None => Err(self
                .admission
                .reject(RejectReason::QueueTimeout, self.arrived.elapsed())),
        }
    }

    fn permit(&self, group: usize, granted: Instant) -> Permit {
        Permit::new(
            &self.admission,
            group,
            self.kind,
            granted,
            granted.saturating_duration_since(self.arrived),
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
        if !admission.remove_waiter(&mut st, self.kind.priority, self.id) {
            // Granted but never taken: the slot was sent to us under the same lock that
            // removed us, so it is in the channel. Pass it on.
            match self.rx.try_recv() {
                Ok(Grant::Slot(group, at)) => {
                    if let Some(cost) = st.cost.get_mut(&self.kind) {
                        cost.ended(at);
                    }
                    admission.release_locked(&mut st, group);
                }
                Ok(Grant::Refused(_)) | Err(_) => return,
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
    kind: Kind,
    acquired_at: Instant,
    queued_for: Duration,
}

impl Permit {
    fn new(
        admission: &Arc<Admission>,
        group: usize,
        kind: Kind,
        acquired_at: Instant,
        queued_for: Duration,
    ) -> Self {
        Self {
            admission: Arc::clone(admission),
            group,
            kind,
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
            .finish(self.group, self.kind, self.acquired_at);
    }
}

#[cfg(test)]
mod storm_model;
#[cfg(test)]
mod tests;
