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
//! Only settled requests count towards a mean: those that started before the longest hold
//! seen ended. While requests are young the ones that completed are the short ones (holds of
//! 100 and 300 ms in turn, 700 ms in: a plain mean of 0.18 s, a settled one of 0.20 s).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::time::Duration;

use tokio::time::Instant;

use super::drain::WINDOW;

/// Most completions remembered per class.
// why: the mean's standard error at 1,024 holds is 3 % of their spread, and the settled
// holds are scanned at each grant while a class has waiters queued without evidence.
const MAX_DONE: usize = 1024;
/// Most arrivals remembered per class (a class above may arrive several times per
/// completion of the class judged, over the same span).
const MAX_ARRIVALS: usize = 8 * MAX_DONE;

/// Hold times and arrivals of one priority class over the last [`WINDOW`].
#[derive(Debug, Default)]
pub(super) struct ClassCost {
    /// (instant of the end, hold seconds), oldest first.
    done: VecDeque<(Instant, f64)>,
    /// Instants of arrival (every request that asked, queued or not), oldest first.
    arrivals: VecDeque<Instant>,
}

impl ClassCost {
    /// A request of the class asked for a slot at `now`.
    pub(super) fn arrived(&mut self, now: Instant) {
        self.arrivals.push_back(now);
        keep_window(&mut self.arrivals, MAX_ARRIVALS, now, |at| *at);
    }

    /// A request of the class released its slot at `now` after holding it for `held`.
    pub(super) fn completed(&mut self, now: Instant, held: Duration) {
        self.done.push_back((now, held.as_secs_f64()));
        keep_window(&mut self.done, MAX_DONE, now, |(at, _)| *at);
    }

    /// The completions of the last [`WINDOW`] at `now`, oldest first.
    // why: the deque is pruned only when the class completes a request, so a class quiet for a
    // while still holds older ones; read against arrivals of the last window they would price
    // the classes above wrong.
    fn recent(&self, now: Instant) -> std::collections::vec_deque::Iter<'_, (Instant, f64)> {
        let from = self
            .done
            .partition_point(|(end, _)| now.saturating_duration_since(*end) > WINDOW);
        self.done.range(from..)
    }

    /// (count, mean, variance) of the settled holds at `now` (see the module docs), `None`
    /// with fewer than two.
    fn settled(&self, now: Instant) -> Option<(usize, f64, f64)> {
        let longest = self.recent(now).map(|(_, h)| *h).fold(0.0, f64::max);
        let cutoff = now.checked_sub(Duration::from_secs_f64(longest))?;
        let (mut n, mut sum, mut sum_sq) = (0usize, 0.0, 0.0);
        for &(end, h) in self.recent(now) {
            let started = end.checked_sub(Duration::from_secs_f64(h));
            if started.is_some_and(|s| s < cutoff) {
                n += 1;
                sum += h;
                sum_sq += h * h;
            }
        }
        if n < 2 {
            return None;
        }
        let mean = sum / n as f64;
        let var = ((sum_sq - n as f64 * mean * mean) / (n - 1) as f64).max(0.0);
        Some((n, mean, var))
    }

    fn arrivals_since(&self, since: Instant) -> usize {
        self.arrivals.len() - self.arrivals.partition_point(|at| *at < since)
    }
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

/// A class's drain read from its costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CostDrain {
    /// Mean settled hold of the class, seconds.
    own: f64,
    /// Hold seconds of higher classes per completion of the class.
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
            "{:.1}/s from {:.3}s held per request + {:.3}s above it, {} settled holds, error {:.1}%",
            self.rate,
            self.own,
            self.above,
            self.n,
            100.0 * self.error
        )
    }
}

/// The drain of class `priority` on `slots` slots at `now`, or `None` until `needed` of its
/// holds have settled (or while a class above has arrived with no settled hold to price it).
pub(super) fn drain(
    costs: &BTreeMap<i32, ClassCost>,
    priority: i32,
    now: Instant,
    slots: usize,
    needed: usize,
) -> Option<CostDrain> {
    let own = costs.get(&priority)?;
    let (n, mean, var) = own.settled(now)?;
    if n < needed || slots == 0 {
        return None;
    }
    let mut recent = own.recent(now);
    let completed = recent.len();
    let since = recent.next()?.0;
    let mut above = 0.0;
    for (_, class) in costs.range((Bound::Excluded(priority), Bound::Unbounded)) {
        let arrived = class.arrivals_since(since);
        if arrived > 0 {
            above += arrived as f64 * class.settled(now)?.1;
        }
    }
    let above = above / completed as f64;
    let cost = mean + above;
    if cost <= 0.0 {
        return None;
    }
    Some(CostDrain {
        own: mean,
        above,
        rate: slots as f64 / cost,
        error: (var / n as f64).sqrt() / cost,
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// `slots` slots each serving POSTs of `post_ms` then three follow-ups of 20 ms, for
    /// `ms`; returns the costs at the end.
    fn storm(t0: Instant, slots: u64, post_ms: &[u64], ms: u64) -> BTreeMap<i32, ClassCost> {
        let mut costs: BTreeMap<i32, ClassCost> = BTreeMap::new();
        let mut events = Vec::new();
        for slot in 0..slots {
            let mut t = slot; // slots start a millisecond apart
            let mut i = slot as usize;
            while t < ms {
                // why: each slot goes through the list in turn, so every request costs the
                // list's mean on average (a slot bound to one cost would weight the means)
                let post = post_ms[i % post_ms.len()];
                i += 1;
                events.push((t + post, 0, post));
                t += post;
                for _ in 0..3 {
                    events.push((t, -1, 0)); // a follow-up arrives
                    events.push((t + 20, 1, 20));
                    t += 20;
                }
            }
        }
        events.sort_unstable();
        for (t, kind, held) in events.into_iter().filter(|e| e.0 <= ms) {
            match kind {
                -1 => costs.entry(1).or_default().arrived(at(t0, t)),
                class => costs
                    .entry(class)
                    .or_default()
                    .completed(at(t0, t), Duration::from_millis(held)),
            }
        }
        costs
    }

    #[test]
    fn the_drain_is_the_slots_over_the_work_each_request_brings() {
        let t0 = Instant::now();
        let costs = storm(t0, 16, &[200], 5_000);
        let d = drain(&costs, 0, at(t0, 5_000), 16, 32).expect("enough holds");
        // 16 slots over 200 ms + 3 x 20 ms per host.
        assert!((d.rate - 16.0 / 0.26).abs() < 0.02 * 16.0 / 0.26, "{d}");
        assert!(d.error < 1e-6, "equal holds have no spread: {d}");
        // The class above drains on all the slots: nothing is above it.
        let up = drain(&costs, 1, at(t0, 5_000), 16, 32).expect("enough holds");
        assert!((up.rate - 16.0 / 0.02).abs() < 1.0, "{up}");
    }

    #[test]
    fn young_requests_do_not_make_the_mean_short() {
        // Holds of 100 and 300 ms alternate on every slot; 700 ms in, the 300 ms ones that
        // started late have not ended, so the plain mean of what completed runs short.
        let t0 = Instant::now();
        let costs = storm(t0, 16, &[100, 300], 700);
        let (_, settled, _) = costs[&0].settled(at(t0, 700)).expect("settled holds");
        let done = &costs[&0].done;
        let plain = done.iter().map(|(_, h)| h).sum::<f64>() / done.len() as f64;
        assert!(plain < 0.19, "the plain mean runs short: {plain}");
        assert!((settled - 0.2).abs() < 0.02, "settled mean {settled}");
    }

    #[test]
    fn no_drain_without_enough_settled_holds_or_a_priced_class_above() {
        let t0 = Instant::now();
        let mut costs: BTreeMap<i32, ClassCost> = BTreeMap::new();
        for i in 1..=40 {
            costs
                .entry(0)
                .or_default()
                .completed(at(t0, i * 10), Duration::from_millis(5));
        }
        let now = at(t0, 400);
        assert!(drain(&costs, 0, now, 16, 41).is_none(), "39 settled < 41");
        assert!(drain(&costs, 0, now, 0, 32).is_none(), "no slots");
        assert!(drain(&costs, 0, now, 16, 32).is_some());
        // A class above arrives but none of its requests has ended: its cost is unknown.
        costs.entry(1).or_default().arrived(at(t0, 390));
        assert!(drain(&costs, 0, now, 16, 32).is_none());
    }

    #[test]
    fn holds_older_than_the_window_are_not_read() {
        let t0 = Instant::now();
        let mut costs = storm(t0, 16, &[200], 2_000);
        let later = at(t0, 2_000) + WINDOW + Duration::from_secs(1);
        assert!(drain(&costs, 0, at(t0, 2_000), 16, 32).is_some());
        assert!(
            drain(&costs, 0, later, 16, 32).is_none(),
            "a quiet class has no evidence"
        );
        // New follow-ups arrive: they are not priced against the old POSTs.
        for i in 0..100 {
            costs
                .entry(1)
                .or_default()
                .arrived(later - Duration::from_millis(i));
        }
        assert!(drain(&costs, 0, later, 16, 32).is_none());
    }

    #[test]
    fn spread_holds_give_a_wider_error_that_shrinks_with_evidence() {
        let t0 = Instant::now();
        let short = storm(t0, 16, &[100, 300, 150, 250], 1_000);
        let long = storm(t0, 16, &[100, 300, 150, 250], 8_000);
        let a = drain(&short, 0, at(t0, 1_000), 16, 16).expect("a second of holds");
        let b = drain(&long, 0, at(t0, 8_000), 16, 16).expect("eight seconds of holds");
        assert!(a.error > 0.01 && b.error < a.error / 2.0, "{a} / {b}");
        let wait = a.expected_wait(99, 1.0);
        assert!(wait < a.expected_wait(99, 0.0) && wait > 0.0);
    }
}
