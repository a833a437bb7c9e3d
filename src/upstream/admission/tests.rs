//! Unit tests of the admission queue, under paused tokio time.
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
    // Class 0 is the lowest waiting: nothing below it can make room.
    let rejection = adm.acquire(0, &[0], &mut first).await.unwrap_err();
    assert_eq!(rejection.reason, RejectReason::QueueFull, "{rejection}");
    assert_eq!(rejection.retry_after, DEFAULT_RETRY_AFTER, "default advice");
    assert_eq!(rejection.waited, Duration::ZERO, "no wait");
    assert_eq!(Instant::now(), before, "rejected without any time passing");
    assert_eq!(adm.queue_depth(), 2, "queued waiters untouched");
    assert_eq!(adm.stats().rejected_full, 1, "counted as full");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_makes_room_for_a_higher_class_by_answering_the_newest_lower_waiter() {
    let adm = Admission::new(vec![Some(1)], settings(2, 60));
    let held = hold(&adm, &[0]);
    let older = tokio::spawn(adm.acquire(0, &[0], &mut first));
    let newer = tokio::spawn(adm.acquire(0, &[0], &mut first));
    tokio::task::yield_now().await;
    assert_eq!(adm.queue_depth(), 2);
    // A host under way (class 1) arrives at a full queue: the newest new host leaves.
    let under_way = tokio::spawn(adm.acquire(1, &[0], &mut first));
    let displaced = newer.await.unwrap().unwrap_err();
    assert_eq!(displaced.reason, RejectReason::QueueFull);
    assert_eq!(displaced.waited, Duration::ZERO, "answered at once");
    assert_eq!(
        adm.queue_depth(),
        2,
        "the older new host and the host under way"
    );
    assert_eq!(adm.stats().rejected_full, 1);
    drop(held);
    let first_in = under_way
        .await
        .unwrap()
        .expect("the higher class goes first");
    drop(first_in);
    older
        .await
        .unwrap()
        .expect("then the older lower-class waiter");
    // The same class never displaces its own.
    let held = hold(&adm, &[0]);
    let _a = adm.acquire(1, &[0], &mut first);
    let _b = adm.acquire(1, &[0], &mut first);
    let refused = adm.acquire(1, &[0], &mut first).await.unwrap_err();
    assert_eq!(refused.reason, RejectReason::QueueFull);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_uses_how_fast_a_backlogged_class_drains() {
    let s = QueueSettings {
        fail_fast: true,
        ..settings(1000, 30)
    };
    let adm = Admission::new(vec![Some(1)], s);
    // Class 0 backlogged; a grant every 2 s: its own 1 s of work plus 1 s of a higher
    // class served in between, which its service time alone would not show.
    let mut held = hold(&adm, &[0]);
    let mut waiters = Vec::new();
    for _ in 0..12 {
        waiters.push(tokio::spawn(adm.acquire(0, &[0], &mut first)));
    }
    tokio::task::yield_now().await;
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let hi = tokio::spawn(adm.acquire(5, &[0], &mut first));
        tokio::task::yield_now().await;
        drop(held);
        let p = hi.await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(p);
        held = waiters.remove(0).await.unwrap().unwrap();
    }
    // 2 class-0 waiters left; 6 grants (t = 10, 12, ..., 20 s) inside the 10 s window,
    // over 12 s of backlog, perfectly regular: 3 batches of 2 without spread, dispersion
    // 2 / (2 + 2) = 0.5 (the prior's weight). Fill the class to 12 waiting: the drain
    // predicts (12 + 1) x 2 s, half a standard error pessimistic, 26 s / (1 - sqrt(0.5 / 6)
    // / 2) = 30.4 s > 30 s for the next one, which is told at once. (Service times alone
    // would say 12 x 1 s + 1 s = 13 s and queue it to time out.)
    let mut more = Vec::new();
    for _ in 0..10 {
        more.push(adm.acquire(0, &[0], &mut first));
    }
    assert_eq!(adm.queue_depth(), 12);
    let told = adm.acquire(0, &[0], &mut first).await.unwrap_err();
    assert_eq!(told.reason, RejectReason::FailFast, "{told}");
    assert_eq!(adm.queue_depth(), 12, "nothing queued for it");
    // One fewer waiting: 24 s / 0.856 = 28.0 s < 30 s, queued.
    drop(more.pop());
    assert_eq!(adm.queue_depth(), 11);
    let queued = adm.acquire(0, &[0], &mut first);
    assert_eq!(adm.queue_depth(), 12, "28.0 s < 30 s: queued");
    drop(queued);
    drop((more, held, waiters));
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
    let s = QueueSettings {
        fail_fast: true,
        ..settings(10, 60)
    };
    let adm = Admission::new(vec![Some(1)], s);
    let held = hold(&adm, &[0]);
    let raced = adm.acquire(0, &[0], &mut first);
    let next = adm.acquire(0, &[0], &mut first);
    drop(held); // slot handed to `raced`, which never polls it
    assert_eq!(
        adm.queue_depth(),
        1,
        "`raced` left the queue with the grant"
    );
    assert_eq!(
        adm.state.lock().running_holds(),
        1,
        "the hold given to `raced`"
    );
    drop(raced); // client gone after the grant
    assert_eq!(adm.queue_depth(), 0, "slot passed on to `next`");
    assert_eq!(adm.inflight(0), 1, "slot neither leaked nor duplicated");
    assert_eq!(
        adm.state.lock().running_holds(),
        1,
        "`raced`'s ended, `next`'s runs"
    );
    drop(next.await.expect("next waiter got the slot"));
    assert_eq!(adm.total_inflight(), 0, "all released");
    assert_eq!(
        adm.state.lock().running_holds(),
        0,
        "fail-fast counts none as running"
    );
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
        fail_fast: true,
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
    assert_eq!(
        adm.state.lock().running_holds(),
        0,
        "no hold counted as running"
    );
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
    // Two completions: the evidence fail-fast needs for one slot.
    observe_service_time(&adm, 0, 10).await;
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

#[tokio::test(start_paused = true)]
async fn a_slot_is_held_from_its_hand_over_not_from_when_the_waiter_wakes() {
    let adm = Admission::new(vec![Some(1)], settings(10, 60));
    let held = hold(&adm, &[0]);
    let queued = adm.acquire(0, &[0], &mut first);
    tokio::time::advance(Duration::from_secs(3)).await;
    let handed_over = Instant::now();
    drop(held);
    // The waiter only runs two seconds later (a busy runtime): the slot was its all along.
    tokio::time::advance(Duration::from_secs(2)).await;
    let permit = queued.await.unwrap();
    assert_eq!(permit.acquired_at(), handed_over);
    assert_eq!(permit.waited(), Duration::from_secs(3));
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(permit);
    assert_eq!(
        adm.ewma_service_time(),
        Some(Duration::from_secs(3)),
        "both holds 3 s: the second from its hand-over (1 s from its wake would give 2.75 s)"
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

#[tokio::test(start_paused = true)]
async fn fail_fast_forgets_the_classes_and_kinds_it_no_longer_sees() {
    let s = QueueSettings {
        fail_fast: true,
        ..settings(100, 30)
    };
    let adm = Admission::new(vec![Some(1)], s);
    // A policy that derives the priority from the request: 1,000 classes, each seen once,
    // each backlogged for a moment (so each has drain evidence too).
    for p in 0..1000 {
        let held = adm.acquire(p, &[0], &mut first).await.unwrap();
        let queued = adm.acquire(p, &[0], &mut first);
        tokio::time::advance(Duration::from_millis(1)).await;
        drop(held);
        let p = queued.await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
        drop(p);
    }
    let (kinds, drains, services) = adm.state.lock().remembered();
    assert!(
        kinds >= 1000 && drains >= 1000 && services >= 1000,
        "{kinds} {drains} {services}"
    );
    // 10.5 s on (the last of them 10.5 s old, the first 12.5 s), class 7 comes back: what
    // is older than the window is dropped as it arrives.
    tokio::time::advance(Duration::from_millis(10_500)).await;
    drop(adm.acquire(7, &[0], &mut first).await.unwrap());
    assert_eq!(adm.state.lock().remembered(), (1, 0, 1), "class 7 alone");
    tokio::time::advance(Duration::from_secs(1)).await;
    let newcomer = adm.acquire(5000, &[0], &mut first).await.unwrap();
    drop(newcomer);
    assert_eq!(
        adm.state.lock().remembered(),
        (2, 0, 2),
        "class 7 and the newcomer"
    );
    // Once a window later, they are forgotten in turn.
    tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
    let last = adm.acquire(1, &[0], &mut first).await.unwrap();
    assert_eq!(
        adm.state.lock().remembered(),
        (1, 0, 0),
        "only the last arrival"
    );
    drop(last);

    // Without fail-fast nothing of the kind is kept at all.
    let adm = Admission::new(vec![Some(1)], settings(100, 30));
    for p in 0..100 {
        let held = adm.acquire(p, &[0], &mut first).await.unwrap();
        let queued = adm.acquire(p, &[0], &mut first);
        drop(held);
        drop(queued.await.unwrap());
    }
    assert_eq!(adm.state.lock().remembered(), (0, 0, 0));
}
