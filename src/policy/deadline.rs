//! The per-call time budget: how long the running hook call may still run, read by the
//! instruction-count hook and by the Rust string functions ([`super::strlib`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The budget counts the time the thread ran; the wall clock may run to this many budgets (a
/// call preempted for that long is cut anyway, to bound the latency it adds).
const WALL_CAP: u64 = 10;
/// A call is looked at more closely (the thread's scheduler statistics read) once it ran for
/// this fraction of its budget by the wall clock; shorter calls never pay for that read.
const LEAD_DIVISOR: u64 = 4;

/// How long this thread has waited on a run queue (runnable, not running: preempted) in
/// nanoseconds, `None` where Linux does not report it.
///
/// why run_delay from /proc rather than `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`: the crate
/// forbids unsafe code. The CPU time in the same file is only updated at scheduler ticks and
/// context switches (it lags up to a tick, 4 ms at HZ=250), while run_delay is updated when
/// the thread gets the CPU back, so it is current whenever the thread reads it. A read costs a
/// few microseconds; only calls that already ran a while pay for one.
pub(crate) fn thread_run_delay_ns() -> Option<u64> {
    thread_local! {
        // why: /proc/thread-self names the thread that opens it, so one file per thread.
        static SCHEDSTAT: Option<File> = File::open("/proc/thread-self/schedstat").ok();
    }
    SCHEDSTAT
        .try_with(|f| {
            let f = f.as_ref()?;
            let mut buf = [0u8; 96];
            let n = f.read_at(&mut buf, 0).ok()?;
            // "<cpu ns> <run_delay ns> <timeslices>"
            let text = std::str::from_utf8(&buf[..n]).ok()?;
            text.split_ascii_whitespace().nth(1)?.parse().ok()
        })
        .ok()
        .flatten()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// The error message raised when the budget runs out.
pub(crate) const BUDGET_EXCEEDED: &str = "budget exceeded";

/// The per-call time budget checked by the instruction hook (and the Rust string functions). It counts the time the thread
/// ran: wall clock minus the time it waited preempted (which, as policy code does not block,
/// is its CPU time), with a wall clock cap of [`WALL_CAP`] budgets. Shared (Arc) between the
/// VM owner and the hook closure; atomics only so the closure is `Send` when mlua's `send`
/// feature is on.
///
/// The hook only reads the (cheap) wall clock until the call ran `budget / LEAD_DIVISOR` of
/// wall time; then it reads the thread's run-queue wait once as a baseline and counts that lead
/// as run (a call preempted earlier is charged a little more than it ran; one busy in a long C
/// function earlier, a little less). Run time cannot advance faster than the wall clock, so
/// after each look the next one is due no earlier than the unspent budget later.
pub(crate) struct Deadline {
    epoch: Instant,
    /// Wall clock at `arm`, nanoseconds since `epoch`.
    start_ns: AtomicU64,
    budget_ns: AtomicU64,
    /// Wall clock of the next closer look; `u64::MAX` = no call running, never fires.
    next_ns: AtomicU64,
    /// Wall clock and run-queue wait at the first closer look; `u64::MAX` = not taken yet.
    base_wall_ns: AtomicU64,
    base_wait_ns: AtomicU64,
    /// Set when the hook raised "budget exceeded" during the current call.
    tripped: AtomicBool,
}

impl Deadline {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            start_ns: AtomicU64::new(0),
            budget_ns: AtomicU64::new(0),
            next_ns: AtomicU64::new(u64::MAX),
            base_wall_ns: AtomicU64::new(u64::MAX),
            base_wait_ns: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        }
    }
    fn now_ns(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }
    pub(crate) fn arm(&self, budget: Duration) {
        self.arm_at(self.now_ns(), nanos(budget));
    }
    fn arm_at(&self, now: u64, budget: u64) {
        self.start_ns.store(now, Ordering::Relaxed);
        self.budget_ns.store(budget, Ordering::Relaxed);
        self.base_wall_ns.store(u64::MAX, Ordering::Relaxed);
        self.tripped.store(false, Ordering::Relaxed);
        self.next_ns.store(
            now.saturating_add(budget / LEAD_DIVISOR).min(u64::MAX - 1),
            Ordering::Relaxed,
        );
    }
    pub(crate) fn disarm(&self) {
        self.next_ns.store(u64::MAX, Ordering::Relaxed);
    }
    /// Whether the running call is out of budget. Cheap (one wall clock read) until a closer
    /// look is due.
    pub(crate) fn expired(&self) -> bool {
        let next = self.next_ns.load(Ordering::Relaxed);
        if next == u64::MAX {
            return false;
        }
        let now = self.now_ns();
        now >= next && self.look_closer(now, thread_run_delay_ns())
    }
    /// `wait`: the thread's run-queue wait now (`None`: unknown, count the wall clock).
    #[cold]
    fn look_closer(&self, now: u64, wait: Option<u64>) -> bool {
        let start = self.start_ns.load(Ordering::Relaxed);
        let budget = self.budget_ns.load(Ordering::Relaxed);
        let wall = now.saturating_sub(start);
        let cap = budget.saturating_mul(WALL_CAP);
        if wall >= cap {
            return true;
        }
        let lead = budget / LEAD_DIVISOR;
        let ran = match wait {
            None => wall,
            Some(wait) => match self.base_wall_ns.load(Ordering::Relaxed) {
                u64::MAX => {
                    self.base_wall_ns.store(now, Ordering::Relaxed);
                    self.base_wait_ns.store(wait, Ordering::Relaxed);
                    lead
                }
                base_wall => {
                    let waited = wait.saturating_sub(self.base_wait_ns.load(Ordering::Relaxed));
                    lead.saturating_add(now.saturating_sub(base_wall).saturating_sub(waited))
                }
            },
        };
        if ran >= budget {
            return true;
        }
        let next = now
            .saturating_add(budget - ran)
            .min(start.saturating_add(cap));
        self.next_ns
            .store(next.min(u64::MAX - 1), Ordering::Relaxed);
        false
    }
    /// Whether the running call is out of budget; if so, records that the budget stopped it
    /// (see [`Deadline::tripped`]). Called by the instruction hook and the Rust string
    /// functions, which then raise [`BUDGET_EXCEEDED`].
    pub(crate) fn exceeded(&self) -> bool {
        if self.expired() {
            self.tripped.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
    /// Whether the budget stopped the current call.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A 2 ms budget armed at t = 0 (wall clock in ms; run-queue wait in ms, None = unknown).
    fn armed() -> Deadline {
        let d = Deadline::new();
        d.arm_at(0, 2 * MS);
        d
    }

    #[test]
    fn short_calls_never_look_closer() {
        let d = armed();
        assert_eq!(
            d.next_ns.load(Ordering::Relaxed),
            MS / 2,
            "lead is a quarter budget"
        );
    }

    #[test]
    fn time_spent_preempted_is_not_counted() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, Some(100 * MS)), "baseline");
        // 8 ms later, 7.9 of them waiting on the run queue: ran 0.5 + 0.1 ms.
        assert!(!d.look_closer(17 * MS / 2, Some(100 * MS + 79 * MS / 10)));
        // Then it runs on without being preempted: out at 2 ms of running (wall 9.9 ms).
        let waited = Some(100 * MS + 79 * MS / 10);
        assert!(!d.look_closer(98 * MS / 10, waited));
        assert!(d.look_closer(99 * MS / 10, waited));
    }

    #[test]
    fn a_runaway_is_cut_at_its_budget() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, Some(5 * MS)));
        assert_eq!(
            d.next_ns.load(Ordering::Relaxed),
            2 * MS,
            "next look at the budget"
        );
        assert!(d.look_closer(2 * MS, Some(5 * MS)));
    }

    #[test]
    fn the_wall_clock_caps_a_call_at_ten_budgets() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, Some(0)));
        assert!(!d.look_closer(19 * MS, Some(18 * MS)), "ran 1.5 ms in 19");
        assert_eq!(
            d.next_ns.load(Ordering::Relaxed),
            20 * MS,
            "next look at the cap"
        );
        assert!(
            d.look_closer(20 * MS, Some(19 * MS)),
            "ran 1.5 ms in 20: cap"
        );
    }

    #[test]
    fn without_scheduler_statistics_the_wall_clock_counts() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, None));
        assert_eq!(d.next_ns.load(Ordering::Relaxed), 2 * MS);
        assert!(d.look_closer(2 * MS, None));
    }

    #[test]
    fn this_thread_reports_its_run_queue_wait() {
        // Linux with scheduler statistics, as the gateway runs on; elsewhere the wall clock
        // counts (tested above).
        if std::path::Path::new("/proc/thread-self/schedstat").exists() {
            assert!(thread_run_delay_ns().is_some());
        }
    }
}
