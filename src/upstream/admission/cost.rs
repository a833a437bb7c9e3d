//! How fast a backlogged class can drain, from what its requests cost: the evidence behind
//! trimming requests that queued before there was any.
//!
//! While class `c` has waiters every slot serves `c` or a class above it, so `c` is granted
//! slots at `slots / (h_c + work above per request of c)`: `h_c` is the mean hold time of
//! `c`'s requests and the work above is the hold time of the requests of higher classes that
//! arrived over the same time, per request of `c` that completed (in a registration storm,
//! a POST's cost plus its three follow-ups'). This is the identity behind the grant count of
//! [`DrainRate`](super::drain::DrainRate) (the slots' time is spent on holds), read from the
//! holds instead of from when slots happened to free: in a burst's first second 16 slots
//! started together and the first follow-ups of every host come in waves, so the grant count
//! runs fast, then slow, and a trim that cannot be taken back followed it (benches/storm.sh,
//! bursts at 0.89-0.94 of the limit, 2026-12-07). A mean of holds has no phase; its standard
//! error is the spread of the holds over the square root of their number.
//!
//! A kind's mean hold is a Kaplan-Meier estimate: every hold of the window counts, and each
//! request still holding a slot counts as lasting at least as long as it has so far. While
//! requests are young the ones that completed are the short ones (holds of 100 and 300 ms in
//! turn, 700 ms in: a plain mean of 0.18 s); the running ones say how much longer the rest
//! are. (This replaced a "settled" mean, of only the requests that started before the longest
//! hold seen ended: one long hold froze that evidence for as long as it had lasted, and with
//! it the mean, while trimming kept cutting on it; the storm model with log-normal costs of
//! the same mean: bursts at 0.87 of the limit, 0.92 now; see benches/README.md.)
//!
//! Costs are kept per [`Kind`]: a class and the route its requests came by. A class is not
//! one kind of request: `conf/foreman.yaml` gives both `POST /rhsm/consumers` and cache fills
//! of `GET /register` class 0, and a burst's first second holds one fill per activation key
//! (14 ms each) among some 60 POSTs (200 ms): a class mean 5% short, which told hosts queued
//! at the edge of what the app could serve that they would make it (benches/storm.sh,
//! 2026-12-07, 8 bursts: the first second's mean 0.180-0.209 s, mean 0.195, the whole
//! storm's 0.207). A waiter is priced by its own route's holds; work above it by each route's.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::time::Duration;

use tokio::time::Instant;

use super::drain::WINDOW;

/// Most completions remembered per kind.
// why: the mean's standard error at 1,024 holds is 3 % of their spread, and the holds are
// sorted at each grant while a class has waiters queued without evidence.
const MAX_DONE: usize = 1024;
/// Most arrivals remembered per kind (a kind above may arrive several times per completion
/// of the kind judged, over the same span).
const MAX_ARRIVALS: usize = 8 * MAX_DONE;

/// What costs are kept per: a priority class and a kind of request within it (the route it
/// came by, as a hash of the route's name; 0 for callers that tell none).
// why: the field order is the ordering: a class's kinds are adjacent, classes ascend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind {
    /// The priority class (higher leaves the queue first).
    pub priority: i32,
    /// The kind of request within the class.
    pub route: u64,
}

impl Kind {
    /// Requests of class `priority` that tell no kind.
    pub fn class(priority: i32) -> Self {
        Self { priority, route: 0 }
    }

    /// The first and last kinds of class `priority`.
    pub(super) fn bounds(priority: i32) -> (Self, Self) {
        (
            Self { priority, route: 0 },
            Self {
                priority,
                route: u64::MAX,
            },
        )
    }
}

/// Holds: how many ended (the evidence), and the count, sum and sum of squares (seconds) the
/// mean and its error are read from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Holds {
    evidence: usize,
    n: usize,
    sum: f64,
    sum_sq: f64,
}

impl Holds {
    fn one(hold: f64) -> Self {
        Self {
            evidence: 1,
            n: 1,
            sum: hold,
            sum_sq: hold * hold,
        }
    }

    fn add(&mut self, other: Holds) {
        self.evidence += other.evidence;
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }

    /// The same holds and spread around `mean`.
    fn with_mean(self, mean: f64) -> Self {
        let n = self.n as f64;
        let old = self.mean();
        Self {
            sum: n * mean,
            sum_sq: self.sum_sq - n * old * old + n * mean * mean,
            ..self
        }
    }

    /// The standard error of the mean (0 below two holds).
    fn error(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let (n, mean) = (self.n as f64, self.mean());
        let var = ((self.sum_sq - n * mean * mean) / (n - 1.0)).max(0.0);
        (var / n).sqrt()
    }
}

/// Hold times and arrivals of one [`Kind`] over the last [`WINDOW`].
#[derive(Debug, Default)]
pub(super) struct KindCost {
    /// (instant of the end, hold seconds), oldest first.
    done: VecDeque<(Instant, f64)>,
    /// Instants of arrival (every request that asked, queued or not), oldest first.
    arrivals: VecDeque<Instant>,
    /// When the holds still running started, and how many started then.
    running: BTreeMap<Instant, u32>,
}

impl KindCost {
    /// A request of the kind asked for a slot at `now`.
    pub(super) fn arrived(&mut self, now: Instant) {
        self.arrivals.push_back(now);
        keep_window(&mut self.arrivals, MAX_ARRIVALS, now, |at| *at);
    }

    /// A request of the kind was given a slot at `at`.
    pub(super) fn started(&mut self, at: Instant) {
        // why: a hold is forgotten when it ends, or here once older than the window (a slot
        // given to a request that never took it is ended where it is passed on; this bounds
        // what a path that forgets to could leave).
        while let Some(entry) = self.running.first_entry() {
            if at.saturating_duration_since(*entry.key()) <= WINDOW {
                break;
            }
            entry.remove();
        }
        *self.running.entry(at).or_default() += 1;
    }

    /// The hold that started at `at` ended (or its slot was never taken).
    pub(super) fn ended(&mut self, at: Instant) {
        if let Some(n) = self.running.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(&at);
            }
        }
    }

    /// How many holds are running.
    #[cfg(test)]
    pub(super) fn running(&self) -> u32 {
        self.running.values().sum()
    }

    /// A request of the kind released its slot at `now` after holding it for `held`.
    pub(super) fn completed(&mut self, now: Instant, held: Duration) {
        self.done.push_back((now, held.as_secs_f64()));
        keep_window(&mut self.done, MAX_DONE, now, |(at, _)| *at);
    }

    /// Whether no request of the kind arrived or completed in the last [`WINDOW`] at `now`:
    /// nothing of it is read any more.
    pub(super) fn idle(&self, now: Instant) -> bool {
        let old = |at: Instant| now.saturating_duration_since(at) > WINDOW;
        self.done.back().is_none_or(|(at, _)| old(*at))
            && self.arrivals.back().is_none_or(|at| old(*at))
    }

    /// The completions of the last [`WINDOW`] at `now`, oldest first.
    // why: the deque is pruned only when the kind completes a request, so a kind quiet for a
    // while still holds older ones; read against arrivals of the last window they would price
    // the kinds above wrong.
    fn recent(&self, now: Instant) -> std::collections::vec_deque::Iter<'_, (Instant, f64)> {
        let from = self
            .done
            .partition_point(|(end, _)| now.saturating_duration_since(*end) > WINDOW);
        self.done.range(from..)
    }

    /// The holds at `now`: their number (the evidence) and spread, and the Kaplan-Meier mean
    /// that also reads the holds still running (see the module docs).
    fn holds(&self, now: Instant) -> Holds {
        let mut done = Holds::default();
        let mut seen: Vec<(f64, bool)> = Vec::with_capacity(self.done.len() + self.running.len());
        for &(_, h) in self.recent(now) {
            done.add(Holds::one(h));
            seen.push((h, true));
        }
        if done.n < 2 {
            return done;
        }
        for (&at, &n) in &self.running {
            let age = now.saturating_duration_since(at);
            if age <= WINDOW {
                seen.extend((0..n).map(|_| (age.as_secs_f64(), false)));
            }
        }
        done.with_mean(kaplan_meier_mean(&mut seen))
    }

    fn arrivals_since(&self, since: Instant) -> usize {
        self.arrivals.len() - self.arrivals.partition_point(|at| *at < since)
    }
}

/// The mean of `seen` (seconds, and whether the hold ended; one that has not lasts at least
/// that long), restricted to the longest hold that ended. Sorts `seen`.
fn kaplan_meier_mean(seen: &mut [(f64, bool)]) -> f64 {
    // why: at equal times an end comes before a running hold, which was still at risk then
    seen.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let longest = seen
        .iter()
        .filter(|(_, ended)| *ended)
        .map(|(h, _)| *h)
        .fold(0.0, f64::max);
    let (mut at_risk, mut survival, mut last, mut mean) = (seen.len() as f64, 1.0, 0.0, 0.0);
    for &(h, ended) in seen.iter().take_while(|(h, _)| *h <= longest) {
        mean += survival * (h - last);
        last = h;
        if ended {
            survival *= 1.0 - 1.0 / at_risk;
        }
        at_risk -= 1.0;
    }
    mean
}

/// Drops the oldest events of `events` (oldest first, `at` gives their instant) beyond `max`
/// or older than [`WINDOW`] at `now`.
fn keep_window<T>(events: &mut VecDeque<T>, max: usize, now: Instant, at: impl Fn(&T) -> Instant) {
    while events.len() > max
        || events
            .front()
            .is_some_and(|e| now.saturating_duration_since(at(e)) > WINDOW)
    {
        events.pop_front();
    }
}

/// A kind's drain read from the costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CostDrain {
    /// Mean hold of the kind (or of its class's kinds together), seconds.
    own: f64,
    /// Hold seconds of higher classes per completion of the kind.
    above: f64,
    /// Slots granted per second.
    rate: f64,
    /// Relative standard error of `rate`.
    error: f64,
    /// Settled holds behind `own`.
    n: usize,
}

impl CostDrain {
    /// Seconds a request behind `ahead` waiters can expect to wait, optimistic by `errors`
    /// standard errors.
    pub(super) fn expected_wait(&self, ahead: usize, errors: f64) -> f64 {
        (ahead + 1) as f64 / (self.rate * (1.0 + errors * self.error))
    }
}

impl fmt::Display for CostDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1}/s from {:.3}s held per request + {:.3}s above it, {} holds, error {:.1}%",
            self.rate,
            self.own,
            self.above,
            self.n,
            100.0 * self.error
        )
    }
}

/// The drain of requests of `kind` on `slots` slots at `now`, or `None` until `needed` of its
/// holds have ended (or while a class above has arrived with no ended hold to price it).
/// A kind with too few holds of its own is priced by its class's kinds together.
pub(super) fn drain(
    costs: &BTreeMap<Kind, KindCost>,
    kind: Kind,
    now: Instant,
    slots: usize,
    needed: usize,
) -> Option<CostDrain> {
    if slots == 0 {
        return None;
    }
    let own = costs
        .get(&kind)
        .map(|c| (c.holds(now), c.recent(now)))
        .filter(|(holds, _)| holds.evidence >= needed);
    let (holds, completed, since) = match own {
        Some((holds, mut recent)) => (holds, recent.len(), recent.next()?.0),
        None => class_holds(costs, kind.priority, now)?,
    };
    if holds.evidence < needed.max(2) || holds.n < 2 {
        return None;
    }
    let mut above = 0.0;
    let (_, last_of_class) = Kind::bounds(kind.priority);
    for (k, c) in costs.range((Bound::Excluded(last_of_class), Bound::Unbounded)) {
        let arrived = c.arrivals_since(since);
        if arrived > 0 {
            above += arrived as f64 * price(costs, *k, now)?;
        }
    }
    let above = above / completed as f64;
    let mean = holds.mean();
    let cost = mean + above;
    if cost <= 0.0 {
        return None;
    }
    Some(CostDrain {
        own: mean,
        above,
        rate: slots as f64 / cost,
        error: holds.error() / cost,
        n: holds.evidence,
    })
}

/// The holds of all kinds of class `priority` together, how many of its requests
/// completed in the window and the end of the first of them.
fn class_holds(
    costs: &BTreeMap<Kind, KindCost>,
    priority: i32,
    now: Instant,
) -> Option<(Holds, usize, Instant)> {
    let (first, last) = Kind::bounds(priority);
    let mut holds = Holds::default();
    let (mut completed, mut since) = (0, None::<Instant>);
    for c in costs.range(first..=last).map(|(_, c)| c) {
        holds.add(c.holds(now));
        let mut recent = c.recent(now);
        completed += recent.len();
        if let Some(&(end, _)) = recent.next() {
            since = Some(since.map_or(end, |s| s.min(end)));
        }
    }
    Some((holds, completed, since?))
}

/// The mean hold of `kind`, or while it has fewer than two, of its class's kinds
/// together; `None` when neither has two.
fn price(costs: &BTreeMap<Kind, KindCost>, kind: Kind, now: Instant) -> Option<f64> {
    let own = costs.get(&kind).map(|c| c.holds(now)).unwrap_or_default();
    if own.n >= 2 {
        return Some(own.mean());
    }
    let (holds, _, _) = class_holds(costs, kind.priority, now)?;
    (holds.n >= 2).then(|| holds.mean())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// `slots` slots each serving POSTs of `post_ms` then three follow-ups of 20 ms, for
    /// `ms`; returns the costs at the end.
    fn storm(t0: Instant, slots: u64, post_ms: &[u64], ms: u64) -> BTreeMap<Kind, KindCost> {
        let mut costs: BTreeMap<Kind, KindCost> = BTreeMap::new();
        let mut events = Vec::new();
        for slot in 0..slots {
            let mut t = slot; // slots start a millisecond apart
            let mut i = slot as usize;
            while t < ms {
                // why: each slot goes through the list in turn, so every request costs the
                // list's mean on average (a slot bound to one cost would weight the means)
                let post = post_ms[i % post_ms.len()];
                i += 1;
                events.push((t, 10, 0)); // a POST is given a slot
                events.push((t + post, 0, post));
                t += post;
                for _ in 0..3 {
                    events.push((t, -1, 0)); // a follow-up arrives
                    events.push((t, 11, 0));
                    events.push((t + 20, 1, 20));
                    t += 20;
                }
            }
        }
        events.sort_unstable();
        for (t, kind, held) in events.into_iter().filter(|e| e.0 <= ms) {
            match kind {
                -1 => costs.entry(Kind::class(1)).or_default().arrived(at(t0, t)),
                10 | 11 => costs
                    .entry(Kind::class(kind - 10))
                    .or_default()
                    .started(at(t0, t)),
                class => {
                    let c = costs.entry(Kind::class(class)).or_default();
                    c.completed(at(t0, t), Duration::from_millis(held));
                    c.ended(at(t0, t - held));
                }
            }
        }
        costs
    }

    #[test]
    fn the_drain_is_the_slots_over_the_work_each_request_brings() {
        let t0 = Instant::now();
        let costs = storm(t0, 16, &[200], 5_000);
        let d = drain(&costs, Kind::class(0), at(t0, 5_000), 16, 32).expect("enough holds");
        // 16 slots over 200 ms + 3 x 20 ms per host.
        assert!((d.rate - 16.0 / 0.26).abs() < 0.02 * 16.0 / 0.26, "{d}");
        assert!(d.error < 1e-6, "equal holds have no spread: {d}");
        // The class above drains on all the slots: nothing is above it.
        let up = drain(&costs, Kind::class(1), at(t0, 5_000), 16, 32).expect("enough holds");
        assert!((up.rate - 16.0 / 0.02).abs() < 1.0, "{up}");
    }

    #[test]
    fn young_requests_do_not_make_the_mean_short() {
        // Holds of 100 and 300 ms alternate on every slot; 700 ms in, the 300 ms ones that
        // started late have not ended, so the plain mean of what completed runs short.
        let t0 = Instant::now();
        let costs = storm(t0, 16, &[100, 300], 700);
        let holds = costs[&Kind::class(0)].holds(at(t0, 700));
        let done = &costs[&Kind::class(0)].done;
        let plain = done.iter().map(|(_, h)| h).sum::<f64>() / done.len() as f64;
        assert!(plain < 0.19, "the plain mean runs short: {plain}");
        assert!((holds.mean() - 0.2).abs() < 0.02, "{holds:?}");
        assert_eq!(holds.evidence, done.len(), "every ended hold is evidence");
    }

    #[test]
    fn no_drain_without_enough_settled_holds_or_a_priced_class_above() {
        let t0 = Instant::now();
        let mut costs: BTreeMap<Kind, KindCost> = BTreeMap::new();
        for i in 1..=40 {
            costs
                .entry(Kind::class(0))
                .or_default()
                .completed(at(t0, i * 10), Duration::from_millis(5));
        }
        let now = at(t0, 400);
        assert!(
            drain(&costs, Kind::class(0), now, 16, 41).is_none(),
            "39 settled < 41"
        );
        assert!(
            drain(&costs, Kind::class(0), now, 0, 32).is_none(),
            "no slots"
        );
        assert!(drain(&costs, Kind::class(0), now, 16, 32).is_some());
        // A class above arrives but none of its requests has ended: its cost is unknown.
        costs
            .entry(Kind::class(1))
            .or_default()
            .arrived(at(t0, 390));
        assert!(drain(&costs, Kind::class(0), now, 16, 32).is_none());
    }

    #[test]
    fn holds_older_than_the_window_are_not_read() {
        let t0 = Instant::now();
        let mut costs = storm(t0, 16, &[200], 2_000);
        let later = at(t0, 2_000) + WINDOW + Duration::from_secs(1);
        assert!(drain(&costs, Kind::class(0), at(t0, 2_000), 16, 32).is_some());
        assert!(
            drain(&costs, Kind::class(0), later, 16, 32).is_none(),
            "a quiet class has no evidence"
        );
        // New follow-ups arrive: they are not priced against the old POSTs.
        for i in 0..100 {
            costs
                .entry(Kind::class(1))
                .or_default()
                .arrived(later - Duration::from_millis(i));
        }
        assert!(drain(&costs, Kind::class(0), later, 16, 32).is_none());
    }

    #[test]
    fn spread_holds_give_a_wider_error_that_shrinks_with_evidence() {
        let t0 = Instant::now();
        let short = storm(t0, 16, &[100, 300, 150, 250], 1_000);
        let long = storm(t0, 16, &[100, 300, 150, 250], 8_000);
        let a = drain(&short, Kind::class(0), at(t0, 1_000), 16, 16).expect("a second of holds");
        let b =
            drain(&long, Kind::class(0), at(t0, 8_000), 16, 16).expect("eight seconds of holds");
        assert!(a.error > 0.01 && b.error < a.error / 2.0, "{a} / {b}");
        let wait = a.expected_wait(99, 1.0);
        assert!(wait < a.expected_wait(99, 0.0) && wait > 0.0);
    }

    #[test]
    fn a_cheap_kind_in_the_class_does_not_shorten_another_kinds_price() {
        // A burst's first second: POSTs of 200 ms (the storm's kind-0 requests) and, in the
        // same class, four cache fills of 14 ms, one per activation key, at the start.
        let t0 = Instant::now();
        let mut costs = storm(t0, 16, &[200], 1_000);
        let alone = drain(&costs, Kind::class(0), at(t0, 1_000), 16, 32).expect("holds");
        let fill = Kind {
            priority: 0,
            route: 7,
        };
        for i in 0..4 {
            costs.entry(fill).or_default().arrived(at(t0, i));
            costs
                .entry(fill)
                .or_default()
                .completed(at(t0, 14 + i), Duration::from_millis(14));
        }
        let post = drain(&costs, Kind::class(0), at(t0, 1_000), 16, 32).expect("holds");
        assert_eq!(post, alone, "the fills are not POSTs");
        let (pooled, _, _) = class_holds(&costs, 0, at(t0, 1_000)).expect("holds");
        assert!(
            pooled.mean() < 0.95 * 0.2,
            "one class mean runs short: {pooled:?}"
        );
        // A kind with too few holds of its own is priced by its class's kinds together.
        let rare = drain(&costs, fill, at(t0, 1_000), 16, 32).expect("priced by the class");
        assert!((rare.own - pooled.mean()).abs() < 1e-9, "{rare}");
    }

    #[test]
    fn the_mean_reads_the_holds_still_running_up_to_the_longest_that_ended() {
        let mean = |seen: &[(f64, bool)]| kaplan_meier_mean(&mut seen.to_vec());
        // Nothing running: the plain mean.
        assert!((mean(&[(0.3, true), (0.1, true), (0.2, true)]) - 0.2).abs() < 1e-12);
        // One running for 0.25 s outlived the 0.1 s hold: after it, 2 of 3 remain, so the
        // mean is 0.1 + 2/3 x 0.2 (a plain mean of the ended ones says 0.2).
        let m = mean(&[(0.3, true), (0.25, false), (0.1, true)]);
        assert!((m - (0.1 + 0.2 * 2.0 / 3.0)).abs() < 1e-12, "{m}");
        // A hold running longer than any that ended adds no length the holds do not show
        // (one left behind cannot make the mean grow without bound).
        let m = mean(&[(0.1, true), (0.2, true), (600.0, false)]);
        assert!((m - (0.1 + 0.1 * 2.0 / 3.0)).abs() < 1e-12, "{m}");
    }

    #[test]
    fn one_long_hold_does_not_hold_the_evidence_back() {
        // A 1.2 s hold among the first, then 200 ms holds on 16 slots for 1.6 s: every ended
        // hold counts (the settled mean this replaced counted only those started before
        // 0.4 s and read 0.26 s).
        let t0 = Instant::now();
        let mut c = KindCost::default();
        c.started(t0);
        for slot in 0..15u64 {
            for k in 0..8u64 {
                let start = at(t0, slot + k * 200);
                c.started(start);
                c.completed(
                    start + Duration::from_millis(200),
                    Duration::from_millis(200),
                );
                c.ended(start);
            }
        }
        c.completed(at(t0, 1_200), Duration::from_millis(1_200));
        c.ended(t0);
        let holds = c.holds(at(t0, 1_650));
        assert_eq!(holds.evidence, 121);
        let plain = (120.0 * 0.2 + 1.2) / 121.0;
        assert!((holds.mean() - plain).abs() < 1e-9, "{holds:?}");
        assert!(c.running.is_empty(), "every hold that ended was forgotten");
    }

    #[test]
    fn running_holds_are_counted_once_and_forgotten_past_the_window() {
        let t0 = Instant::now();
        let mut c = KindCost::default();
        c.started(t0);
        c.started(t0);
        c.ended(t0);
        assert_eq!(
            c.running.get(&t0),
            Some(&1),
            "two started together, one ended"
        );
        c.ended(at(t0, 5)); // never started: nothing to end
        assert_eq!(c.running.len(), 1);
        // A slot given at t0 and never ended is dropped once older than the window.
        c.started(t0 + WINDOW + Duration::from_millis(1));
        assert_eq!(c.running.len(), 1, "{:?}", c.running);
    }
}
