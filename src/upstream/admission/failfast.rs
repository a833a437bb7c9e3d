//! Who may wait: the queue bounds, displacement of a lower class, and fail-fast: on arrival
//! from the class's measured drain ([`DrainRate`](super::drain::DrainRate)), and for requests
//! queued before there was such evidence, while they wait, from the class's costs
//! ([`cost`](super::cost)).

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::cost::{self, CostDrain};
use super::drain::WINDOW;
use super::{Admission, Grant, Kind, RejectReason, State};

/// Most grants (or completions) of a class fail-fast waits for before it trusts what it saw.
const FAIL_FAST_MAX_EVIDENCE: usize = 32;

/// Grants (or completions) of a class before fail-fast trusts its drain (or service time):
/// two per slot, at least 2, at most [`FAIL_FAST_MAX_EVIDENCE`].
// why: measured in a 1,500-host burst on 16 slots: after 8 grants the class had drained at
// 20/s, a third of its pace a second later (the first follow-ups of every host take the
// slots first), and fail-fast turned away 680 hosts that would have made it.
pub(super) fn needed_grants(slots: usize) -> usize {
    (2 * slots).clamp(2, FAIL_FAST_MAX_EVIDENCE)
}

/// Trimming a waiter that already queued needs this many times the evidence of the arrival
/// check (as settled holds of its kind, see [`cost`](super::cost))...
pub(super) const TRIM_EVIDENCE: usize = 1;
/// ...and is optimistic by this many standard errors while the waiter judged has waited less
/// than [`TRUST_FROM`] (the first settled holds of a burst are few)...
const TRIM_ERRORS: f64 = 1.0;
/// From this much waiting, trimming trusts its estimate more...
const TRUST_FROM: Duration = Duration::from_millis(300);
/// ...until, at this much waiting, it keeps only [`TRUSTED_ERRORS`]: a host that cannot make
/// it should hear so within a second, while the evidence of a burst's first second is what
/// there is.
const TRUST_BY: Duration = Duration::from_millis(800);
/// Standard errors of optimism from [`TRUST_BY`].
// why: a cut cannot be taken back, and a burst's first cut reads few holds. benches/storm.sh
// burst 1,500 (2026-12-07 04:00-04:59 UTC, every route
// priced by its own costs): none from 0.8 s cut some bursts too deep (0.93 and 0.95 of the
// limit in 5 runs, the first cut reading a mean POST hold of 0.215-0.227 s where the storm
// averaged 0.20 s); half an error: 0.95-0.99 in 14 runs, 87-100% of the refused hosts told
// within 1 s (with the settled mean of then; with the Kaplan-Meier mean since, cost.rs:
// 0.94-1.00 in 12 runs, 86-100%). More margin from 0.8 s does not
// save a first cut that read long holds (one error: 0.93-1.00 in 6 runs alternating with it),
// as the first cut comes before then.
const TRUSTED_ERRORS: f64 = 0.5;

/// The standard errors of optimism for trimming a waiter that has waited `waited`:
/// [`TRIM_ERRORS`] at first, falling linearly to [`TRUSTED_ERRORS`] between [`TRUST_FROM`]
/// and [`TRUST_BY`].
pub(super) fn trim_errors(waited: Duration) -> f64 {
    if waited < TRUST_FROM {
        return TRIM_ERRORS;
    }
    let span = (TRUST_BY - TRUST_FROM).as_secs_f64();
    let f = ((waited - TRUST_FROM).as_secs_f64() / span).min(1.0);
    TRIM_ERRORS + (TRUSTED_ERRORS - TRIM_ERRORS) * f
}

impl State {
    /// Drops the evidence of the kinds and classes that have been quiet for a whole
    /// [`WINDOW`] (none of it is read any more), at most once per window.
    // why: priorities come from policies too, and a policy may derive them from a request:
    // every priority ever seen would otherwise stay in these maps for good.
    pub(super) fn forget_idle(&mut self, now: Instant) {
        if self
            .forgot_at
            .is_some_and(|at| now.saturating_duration_since(at) < WINDOW)
        {
            return;
        }
        self.forgot_at = Some(now);
        self.cost.retain(|_, c| !c.idle(now));
        self.drain.retain(|_, d| !d.idle(now));
        let (cost, classes) = (&self.cost, &self.classes);
        self.class_service.retain(|&priority, _| {
            let (first, last) = Kind::bounds(priority);
            classes.contains_key(&Reverse(priority)) || cost.range(first..=last).next().is_some()
        });
    }

    /// How many holds fail-fast counts as still running, over all kinds.
    #[cfg(test)]
    pub(super) fn running_holds(&self) -> u32 {
        self.cost.values().map(cost::KindCost::running).sum()
    }

    /// How many kinds and classes fail-fast remembers evidence of.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> (usize, usize, usize) {
        (self.cost.len(), self.drain.len(), self.class_service.len())
    }
}

impl Admission {
    /// Slots of the `eligible` groups (unknown and unlimited groups count 0).
    pub(super) fn eligible_slots(&self, eligible: &[usize]) -> usize {
        eligible
            .iter()
            .filter_map(|&g| self.capacities.get(g).copied().flatten())
            .sum()
    }

    /// Whether a request with no free slot may enter the queue. `drain` is
    /// [`Self::drain_estimate`] for it, computed once by the caller (`None` without evidence
    /// or without fail-fast).
    pub(super) fn check_queue(
        &self,
        st: &State,
        priority: i32,
        slots: usize,
        drain: Option<f64>,
    ) -> Result<(), RejectReason> {
        if slots == 0 {
            // Only unknown groups or groups of capacity 0: waiting cannot help.
            return Err(RejectReason::NoEligibleGroup);
        }
        let s = &self.settings;
        let in_class = st.classes.get(&Reverse(priority)).map_or(0, VecDeque::len);
        if in_class >= s.max_per_class.unwrap_or(s.max) || s.max == 0 {
            return Err(RejectReason::QueueFull);
        }
        if s.fail_fast {
            if let Some(estimate) = drain {
                if estimate > s.timeout.as_secs_f64() {
                    log::debug!(
                        "fail_fast on arrival: class {priority}, {in_class} ahead, expected wait {estimate:.2}s > {:?} ({})",
                        s.timeout,
                        st.drain.get(&priority).map_or_else(String::new, |d| d.describe(Instant::now()))
                    );
                    return Err(RejectReason::FailFast);
                }
                return self.total_bound(st);
            }
            if let Some(estimate) = Self::service_wait(st, priority, slots, 1) {
                if estimate > s.timeout.as_secs_f64() {
                    return Err(RejectReason::FailFast);
                }
            }
        }
        self.total_bound(st)
    }

    /// The wait from service times alone: everyone queued in this or a higher class (whatever
    /// groups they wait for) costs its class's average hold time, plus `newcomers` of this
    /// class; the slots serve the queue in parallel. `None` until this class has seen enough
    /// completions (two per slot, up to 32) for its service time to mean something.
    fn service_wait(st: &State, priority: i32, slots: usize, newcomers: usize) -> Option<f64> {
        let needed = needed_grants(slots) as u64;
        let &(own_secs, n) = st.class_service.get(&priority)?;
        let global = st.ewma_secs?;
        if n < needed || slots == 0 {
            return None;
        }
        let ahead: f64 = st
            .classes
            .range(..=Reverse(priority))
            .map(|(Reverse(c), q)| q.len() as f64 * st.class_service.get(c).map_or(global, |e| e.0))
            .sum();
        Some((ahead + newcomers as f64 * own_secs) / slots as f64)
    }

    /// Whether a request refused as `QueueFull` was refused only by the total bound (not by
    /// its class's own cap or shed mode), so displacing a lower class makes room for it.
    pub(super) fn room_by_displacing(&self, st: &State, priority: i32) -> bool {
        let s = &self.settings;
        let in_class = st.classes.get(&Reverse(priority)).map_or(0, VecDeque::len);
        s.max > 0 && st.depth >= s.max && in_class < s.max_per_class.unwrap_or(s.max)
    }

    /// The queue's total bound: full means `QueueFull`, which a request may still pass by
    /// displacing a lower class (see [`Self::displace_lower`]).
    pub(super) fn total_bound(&self, st: &State) -> Result<(), RejectReason> {
        if st.depth >= self.settings.max {
            Err(RejectReason::QueueFull)
        } else {
            Ok(())
        }
    }

    /// The expected wait of a new request of class `priority` from how fast that class has
    /// been leaving the queue (see [`DrainRate`]), or `None` when there is no such evidence
    /// yet (the class is not backlogged, or has seen fewer grants than [`needed_grants`]).
    pub(super) fn drain_estimate(
        &self,
        st: &State,
        priority: i32,
        in_class: usize,
        slots: usize,
    ) -> Option<f64> {
        let needed = needed_grants(slots);
        if in_class == 0 {
            return None;
        }
        st.drain
            .get(&priority)?
            .expected_wait(Instant::now(), in_class, needed)
    }

    /// A full queue makes room for a higher class: the newest waiter of the lowest class
    /// below `priority` is answered 503 at once. New registrations wait below hosts already
    /// under way, so a host that started is never turned away because new ones filled the
    /// queue. Returns false when no lower class waits.
    pub(super) fn displace_lower(&self, st: &mut State, priority: i32) -> bool {
        let Some((&Reverse(lowest), _)) = st.classes.iter().next_back() else {
            return false;
        };
        if lowest >= priority {
            return false;
        }
        let class = Reverse(lowest);
        let last = st
            .classes
            .get(&class)
            .map_or(0, |q| q.len().saturating_sub(1));
        let Some(victim) = self.remove_at(st, class, last) else {
            return false;
        };
        self.rejected_full.fetch_add(1, Ordering::Relaxed);
        // A waiter that is already gone needs no answer.
        let _ = victim.tx.send(Grant::Refused(RejectReason::QueueFull));
        true
    }

    /// Fail-fast for requests already waiting: while the newest waiter of a class cannot be
    /// served within what is left of its queue timeout at the drain its class's costs allow,
    /// it is answered 503 now instead of at its timeout. The arrival check decides on the
    /// evidence of its moment, thin at the start of a burst; this one revisits the decision
    /// as evidence grows, from the back of the queue, so no request ahead is ever passed over.
    pub(super) fn trim_tails(&self, st: &mut State) {
        let now = Instant::now();
        let slots: usize = self.capacities.iter().map(|c| c.unwrap_or(0)).sum();
        let needed = needed_grants(slots) * TRIM_EVIDENCE;
        // why: the costs do not change while trimming (only waiters leave), and a first cut
        // may answer hundreds of waiters: each kind's drain is read once per pass
        let mut drains = Vec::new();
        let mut next = st.classes.keys().next().copied();
        while let Some(class) = next {
            while self.trim_tail(st, class, now, needed, &mut drains) {}
            next = st
                .classes
                .range((Bound::Excluded(class), Bound::Unbounded))
                .next()
                .map(|(c, _)| *c);
        }
    }

    /// Answers the newest waiter of `class` 503 if it cannot make it (see
    /// [`Self::trim_tails`]); returns whether it did. `drains` keeps the drains read at
    /// `now` per kind and slots.
    fn trim_tail(
        &self,
        st: &mut State,
        class: Reverse<i32>,
        now: Instant,
        needed: usize,
        drains: &mut Vec<(Kind, usize, Option<CostDrain>)>,
    ) -> bool {
        let Some(tail) = st.classes.get(&class).and_then(VecDeque::back) else {
            return false;
        };
        // why: a waiter judged on arrival stays: the arrival check already used the drain,
        // and waiters ahead of it that time out make it faster than the drain says.
        if !tail.unjudged {
            return false;
        }
        let ahead = st.classes.get(&class).map_or(0, VecDeque::len) - 1;
        let waited = now.saturating_duration_since(tail.arrived);
        let left = self.settings.timeout.saturating_sub(waited);
        let slots = self.eligible_slots(&tail.eligible);
        let read = drains
            .iter()
            .find(|(kind, s, _)| *kind == tail.kind && *s == slots)
            .map(|&(_, _, drain)| drain);
        let drain = read.unwrap_or_else(|| {
            let drain = cost::drain(&st.cost, tail.kind, now, slots, needed);
            drains.push((tail.kind, slots, drain));
            drain
        });
        let Some(drain) = drain else {
            return false;
        };
        let wait = drain.expected_wait(ahead, trim_errors(waited));
        if wait <= left.as_secs_f64() {
            return false;
        }
        log::debug!(
            "fail_fast while queued: class {}, {ahead} ahead, expected wait {wait:.2}s > {:.2}s left ({drain})",
            class.0,
            left.as_secs_f64(),
        );
        let Some(victim) = self.remove_at(st, class, ahead) else {
            return false;
        };
        self.rejected_fail_fast.fetch_add(1, Ordering::Relaxed);
        // A waiter that is already gone needs no answer.
        let _ = victim.tx.send(Grant::Refused(RejectReason::FailFast));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_trusts_its_estimate_more_as_the_one_second_promise_nears() {
        assert!((trim_errors(Duration::ZERO) - TRIM_ERRORS).abs() < 1e-9);
        assert!((trim_errors(Duration::from_millis(299)) - TRIM_ERRORS).abs() < 1e-9);
        let mid = trim_errors(Duration::from_millis(550));
        assert!(
            (mid - (TRIM_ERRORS + TRUSTED_ERRORS) / 2.0).abs() < 1e-9,
            "{mid}"
        );
        assert!((trim_errors(TRUST_BY) - TRUSTED_ERRORS).abs() < 1e-9);
        assert!((trim_errors(Duration::from_secs(30)) - TRUSTED_ERRORS).abs() < 1e-9);
    }
}
