//! How fast one priority class leaves the queue while it is backlogged: the evidence behind
//! fail-fast.
//!
//! The wait of a new request of class `c` is `(waiting in c + 1) / (rate at which c is
//! granted slots)`. That rate is not the class's service time: higher classes are served
//! first, so a class drains at whatever the slots have left over. It is measured directly:
//! grants to the class are counted against the time the class spent backlogged (waiting
//! requests present) over the last [`WINDOW`]. The gap still open since the last grant
//! counts as exposure too, so a stalled class is seen as slow without waiting for its next
//! grant. This is the arrival check's evidence; trimming requests already queued reads the
//! class's costs instead ([`cost`](super::cost)).
//! This is the maximum-likelihood rate of a Poisson process observed for that time (events /
//! exposure), and unlike an average of the last few intervals it does not jump with each
//! one: a 10 % overestimate turns away 10 % of the hosts that would have made it.
//!
//! The estimate used is pessimistic by half a standard error (`rate x (1 - sqrt(D/n) / 2)`).
//! It was optimistic by one, on the reasoning that a host turned away is lost while one
//! admitted in vain only waits; but that host is lost too, told at its queue timeout instead
//! of at once, and while it waits it lengthens the line every later arrival is judged by
//! (see [`ARRIVAL_ERRORS`]).
//!
//! The standard error is measured, not assumed: `D`, the count's index of dispersion, is 1
//! for a Poisson process but a saturated server's grants are far more regular (16 slots each
//! freed once per service time: measured 0.2-0.4 in the storm model), so a Poisson error
//! keeps hosts that cannot make it queued for seconds after the evidence says so. `D` comes
//! from batch means (the spread of the backlogged time of each `slots` grants) and is shrunk
//! towards 1 while there are few batches; a pace that changes shows up as spread and makes
//! the estimate more lenient, not less.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Grants older than this no longer count.
// why: a registration storm changes pace over tens of seconds; 10 s of grants (about 600 at
// 16 slots and 270 ms per host) keeps the rate within a few percent without hiding a
// slowdown for longer than a fraction of a typical queue timeout.
pub(super) const WINDOW: Duration = Duration::from_secs(10);
/// Weight of the Poisson assumption (dispersion 1) against the measured batches, in batches.
const PRIOR_BATCHES: f64 = 2.0;
/// Most grants remembered per class (a fast class shortens its own window).
const MAX_GRANTS: usize = 4096;
/// Standard errors of optimism of the arrival check's drain rate (negative: pessimism).
// why: a storm that keeps arriving holds the queue at the edge of what can be served, so
// every arrival is judged there. With one error of optimism the line settled that error
// longer than could be served, and the hosts at its end waited the whole queue timeout for
// their 503: benches/storm.sh ramp 3,000 (2026-12-07 06:15-06:45 UTC): +1 error 0.98-0.99
// of the limit with 96.6-96.7% of the refused told within 1 s (3 runs); 0: 0.98-1.00,
// 97.6-99.4% (3); -0.5: 0.98-1.00, 99.0-100% (10); -1: 0.98-0.99, 100% (2). The storm model
// over 12 seeds: told 97.1 / 98.9 / 99.5 / 99.8%, pass 1.014 / 1.016 / 1.015 / 1.011.
// Early in a backlog, when the error is wide, the line is short of the timeout by far.
const ARRIVAL_ERRORS: f64 = -0.5;

/// Drain evidence of one priority class.
#[derive(Debug, Default)]
pub(super) struct DrainRate {
    /// (instant of a grant, backlogged seconds since the previous grant or the backlog's
    /// start), oldest first.
    grants: VecDeque<(Instant, f64)>,
    /// Sum of the seconds in `grants`.
    exposure: f64,
    /// Start of the gap still open: the last grant or the backlog's start; `None` while the
    /// class has no waiter.
    open_since: Option<Instant>,
    /// Whether `open_since` is a grant (not the backlog's start).
    open_from_grant: bool,
}

impl DrainRate {
    /// The class has waiters from `now` (no effect when it already had).
    pub(super) fn backlogged(&mut self, now: Instant) {
        if self.open_since.is_none() {
            // why: grants leave the window only as new ones come; a class quiet for longer
            // than the window would otherwise be judged by its last backlog's pace.
            self.forget_before(now);
            self.open_since = Some(now);
            self.open_from_grant = false;
        }
    }

    /// The class has no waiter any more: the time until it has one again is not exposure.
    pub(super) fn emptied(&mut self) {
        self.open_since = None;
    }

    /// A slot was granted to a waiter of the class at `now` (call before [`emptied`] when
    /// that grant emptied the class).
    ///
    /// [`emptied`]: Self::emptied
    pub(super) fn granted(&mut self, now: Instant) {
        let Some(since) = self.open_since else {
            return;
        };
        self.open_since = Some(now);
        // why: the first grant of a backlog ends a gap that began mid-service (at a cold start
        // all slots began together, so no grant can come before the shortest service time):
        // counting it reads a burst's first second as a slow drain. From here gaps are
        // grant-to-grant.
        if !std::mem::replace(&mut self.open_from_grant, true) {
            return;
        }
        let gap = now.saturating_duration_since(since).as_secs_f64();
        self.grants.push_back((now, gap));
        self.exposure += gap;
        while self.grants.len() > MAX_GRANTS {
            self.pop_oldest();
        }
        self.forget_before(now);
    }

    /// Whether the class has no waiter and no grant of the last [`WINDOW`] at `now`:
    /// nothing of it is remembered any more.
    pub(super) fn idle(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        self.open_since.is_none() && self.grants.is_empty()
    }

    /// Drops the grants older than [`WINDOW`] at `now`.
    fn forget_before(&mut self, now: Instant) {
        while self
            .grants
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.pop_oldest();
        }
        if self.grants.is_empty() {
            self.exposure = 0.0;
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, old)) = self.grants.pop_front() {
            self.exposure -= old;
        }
    }

    /// Seconds a request joining the class behind `ahead` waiters can expect to wait,
    /// pessimistic by half a standard error, or `None` without enough evidence: fewer than
    /// `needed` grants in the window, or the class is not backlogged now.
    pub(super) fn expected_wait(&self, now: Instant, ahead: usize, needed: usize) -> Option<f64> {
        let since = self.open_since?;
        let n = self.grants.len();
        if n < needed.max(1) {
            return None;
        }
        let open = if self.open_from_grant {
            now.saturating_duration_since(since).as_secs_f64()
        } else {
            0.0
        };
        let exposure = self.exposure + open;
        if exposure <= 0.0 {
            return None;
        }
        let rate = n as f64 / exposure;
        let dispersion = self.dispersion((needed / 2).max(2));
        let rate = rate * (1.0 + ARRIVAL_ERRORS * (dispersion / n as f64).sqrt());
        Some((ahead + 1) as f64 / rate.max(f64::MIN_POSITIVE))
    }
}

impl DrainRate {
    /// The index of dispersion of the grant count (its variance over its mean; 1 for a
    /// Poisson process), from batch means: the newest grants in batches of `batch`, the
    /// spread of the batches' backlogged durations against what a Poisson process would
    /// give, shrunk towards 1 by [`PRIOR_BATCHES`] so two or three batches cannot claim
    /// certainty.
    fn dispersion(&self, batch: usize) -> f64 {
        let batch = batch.max(2);
        let mut sum = 0.0;
        let mut sum_sq = 0.0;
        let mut m = 0usize;
        let mut acc = 0.0;
        for (i, (_, gap)) in self.grants.iter().rev().enumerate() {
            acc += gap;
            if (i + 1) % batch == 0 {
                sum += acc;
                sum_sq += acc * acc;
                m += 1;
                acc = 0.0;
            }
        }
        if m < 2 || sum <= 0.0 {
            return 1.0;
        }
        let mean = sum / m as f64;
        let var = ((sum_sq - m as f64 * mean * mean) / (m - 1) as f64).max(0.0);
        let observed = batch as f64 * var / (mean * mean);
        let dof = (m - 1) as f64;
        (PRIOR_BATCHES + dof * observed) / (PRIOR_BATCHES + dof)
    }
}

impl DrainRate {
    /// For debug logs: the evidence behind an estimate.
    pub(super) fn describe(&self, now: Instant) -> String {
        let open = self
            .open_since
            .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        format!(
            "{} grants over {:.2}s backlogged, {open:.2}s since the last",
            self.grants.len(),
            self.exposure + open
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn no_estimate_without_enough_grants_or_backlog() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        assert_eq!(d.expected_wait(t0, 10, 8), None, "never backlogged");
        d.backlogged(t0);
        // The first grant ends the gap that began with the backlog: not a sample.
        for i in 1..=8 {
            d.granted(at(t0, i * 100));
        }
        assert_eq!(d.expected_wait(at(t0, 800), 10, 8), None, "7 < 8 gaps");
        d.granted(at(t0, 900));
        assert!(d.expected_wait(at(t0, 900), 10, 8).is_some());
        d.emptied();
        assert_eq!(d.expected_wait(at(t0, 900), 10, 8), None, "not backlogged");
    }

    #[test]
    fn steady_grants_give_the_rate_with_a_small_margin() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        d.backlogged(t0);
        // 400 grants, one every 25 ms: 40 per second.
        for i in 1..=400 {
            d.granted(at(t0, i * 25));
        }
        let wait = d.expected_wait(at(t0, 10_000), 399, 8).expect("evidence");
        // 400 ahead-and-self at 40/s is 10 s; half a standard error pessimistic.
        assert!((10.0..=10.3).contains(&wait), "{wait}");
    }

    #[test]
    fn a_stall_counts_before_the_next_grant() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        d.backlogged(t0);
        for i in 1..=100 {
            d.granted(at(t0, i * 10));
        }
        let before = d.expected_wait(at(t0, 1_000), 99, 8).expect("evidence");
        let stalled = d.expected_wait(at(t0, 4_000), 99, 8).expect("evidence");
        assert!(stalled > 3.0 * before, "{before} -> {stalled}");
    }

    #[test]
    fn time_without_waiters_is_not_counted_as_slow_draining() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        d.backlogged(t0);
        for i in 1..=50 {
            d.granted(at(t0, i * 20));
        }
        d.emptied();
        // 3 s with nobody waiting, then a new backlog drained at the same pace.
        d.backlogged(at(t0, 4_000));
        for i in 1..=50 {
            d.granted(at(t0, 4_000 + i * 20));
        }
        let wait = d.expected_wait(at(t0, 5_000), 49, 8).expect("evidence");
        // 50 requests at 50/s: 1 s, plus the margin of 100 grants.
        assert!((1.0..=1.08).contains(&wait), "{wait}");
    }

    #[test]
    fn a_class_back_from_quiet_is_not_judged_by_its_last_backlog() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        d.backlogged(t0);
        for i in 1..=100 {
            d.granted(at(t0, i * 10));
        }
        d.emptied();
        assert!(!d.idle(at(t0, 1_500)), "its grants are still evidence");
        let back = at(t0, 1_000) + WINDOW + Duration::from_secs(5);
        assert!(d.idle(back), "no waiter, no grant of the last window");
        d.backlogged(back);
        assert_eq!(
            d.expected_wait(back + Duration::from_millis(10), 10, 8),
            None,
            "the grants of 15 s ago are no evidence"
        );
        assert!(!d.idle(back), "backlogged again");
    }

    #[test]
    fn old_grants_leave_the_window() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        d.backlogged(t0);
        // Fast at first (100/s for 5 s), then slow (10/s for 11 s): only the slow pace is
        // left in the window.
        for i in 1..=500 {
            d.granted(at(t0, i * 10));
        }
        for i in 1..=110 {
            d.granted(at(t0, 5_000 + i * 100));
        }
        let wait = d.expected_wait(at(t0, 16_000), 9, 8).expect("evidence");
        assert!((1.0..=1.1).contains(&wait), "10 at 10/s: {wait}");
    }

    fn grants_with_gaps(gaps_ms: impl IntoIterator<Item = f64>) -> DrainRate {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        d.backlogged(t0);
        let mut t = 0.0;
        d.granted(t0);
        for g in gaps_ms {
            t += g;
            d.granted(t0 + Duration::from_secs_f64(t / 1000.0));
        }
        d
    }

    #[test]
    fn regular_grants_are_less_dispersed_than_poisson() {
        // 400 grants 25 ms apart: batches of 16 all last 400 ms, no spread; the prior keeps
        // it above 0 (2 of 26 batches' weight).
        let d = grants_with_gaps((0..400).map(|_| 25.0)).dispersion(16);
        assert!((0.05..0.1).contains(&d), "{d}");
    }

    #[test]
    fn poisson_grants_measure_a_dispersion_near_one() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Exponential gaps, mean 25 ms: a Poisson process.
        let gaps: Vec<f64> = (0..2000)
            .map(|_| -25.0 * (1.0 - rng.gen::<f64>()).ln())
            .collect();
        let d = grants_with_gaps(gaps).dispersion(16);
        assert!((0.7..1.3).contains(&d), "{d}");
    }

    #[test]
    fn a_changing_pace_is_more_dispersed_than_poisson() {
        // 10 ms gaps, then 40 ms gaps: the batches disagree far beyond Poisson noise.
        let gaps = (0..160).map(|_| 10.0).chain((0..160).map(|_| 40.0));
        let d = grants_with_gaps(gaps).dispersion(16);
        assert!(d > 2.0, "{d}");
    }

    #[test]
    fn few_batches_stay_close_to_poisson() {
        // Two perfectly regular batches: one degree of freedom against two of prior.
        let d = grants_with_gaps((0..32).map(|_| 25.0)).dispersion(16);
        assert!((0.6..=0.7).contains(&d), "{d}");
        let none = grants_with_gaps((0..20).map(|_| 25.0)).dispersion(16);
        assert!((none - 1.0).abs() < f64::EPSILON, "one batch: {none}");
    }

    #[test]
    fn measured_regularity_narrows_the_margin() {
        // The same 400 steady grants as above, 16 slots (32 grants of evidence, batches of
        // 16): with the measured dispersion the margin is about 0.7 % (half of
        // sqrt(0.077 / 400)), not the 2.5 % a Poisson count would claim.
        let d = grants_with_gaps((0..400).map(|_| 25.0));
        let now = Instant::now() + Duration::from_secs(10);
        let wait = d.expected_wait(now, 399, 32).expect("evidence");
        assert!((10.05..=10.1).contains(&wait), "{wait}");
    }
}
