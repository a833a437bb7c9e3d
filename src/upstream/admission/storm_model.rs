//! The registration storm of issue 11 against the real [`Admission`], in paused tokio time.
//!
//! A model, not a benchmark: the gateway's own costs and the network are left out, so what
//! is judged is the queue's policy alone (priority classes, queue timeout, fail-fast),
//! deterministically and in milliseconds. `benches/storm.sh` measures the whole gateway.
//!
//! Hosts as Foreman's: POST /rhsm/consumers (class 0, 200 ms +-50 %, the expensive step),
//! then three follow-ups (class 1, 20 ms each); each host gives up 18 s after its start.
//! `GET /register` is cached: the storm's first hosts fill it, one 10 ms render per activation
//! key in class 0 (as `conf/foreman.yaml` routes cache misses), the rest never reach the app;
//! the app server (16 slots) finishes every request it started, also for a host that has
//! left (the slot is held until then, as the proxy does). A 503 fails a host at once.
#![allow(clippy::unwrap_used)]

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SLOTS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(18);
/// conf/foreman.yaml's 175 s, scaled.
const QUEUE_TIMEOUT: Duration = Duration::from_millis(17_500);
const CONSUMER_MS: f64 = 200.0;
const JITTER: f64 = 0.5;
const FOLLOW_UP_MS: f64 = 20.0;
const FOLLOW_UPS: usize = 3;
const RENDER_MS: f64 = 10.0;
/// Activation keys: one cache fill each at the start of a storm.
const KEYS: usize = 4;
/// The routes, as admission tells kinds of requests apart.
const POST: Kind = Kind {
    priority: 0,
    route: 2,
};
const FOLLOW_UP: Kind = Kind {
    priority: 1,
    route: 3,
};
const FILL: Kind = Kind {
    priority: 0,
    route: 1,
};
/// How the POSTs' costs are drawn (each with a mean of [`CONSUMER_MS`]).
#[derive(Clone, Copy)]
enum Draw {
    /// +-[`JITTER`] around the mean, as the issue states Foreman's cost.
    Uniform,
    /// Log-normal with this sigma of the log: a long tail, as app servers' times have.
    LogNormal(f64),
}

impl Draw {
    fn ms(self, rng: &mut StdRng) -> f64 {
        match self {
            Self::Uniform => CONSUMER_MS * (1.0 + JITTER * rng.gen_range(-1.0..=1.0)),
            Self::LogNormal(sigma) => {
                // Box-Muller; exp(sigma z - sigma^2 / 2) has mean 1
                let (u, v): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
                let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                CONSUMER_MS * (sigma * z - sigma * sigma / 2.0).exp()
            }
        }
    }
}

const BURST_SPREAD: Duration = Duration::from_millis(500);
/// Gateway and network per request.
const HOP: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
struct Outcome {
    hosts: usize,
    passed: usize,
    failed_503: usize,
    told_quickly: usize,
    app_served: usize,
    wasted: usize,
    limit: f64,
}

impl Outcome {
    fn pass_rate(&self) -> f64 {
        self.passed as f64 / self.hosts as f64
    }
}

enum HostEnd {
    Passed,
    Rejected { quick: bool },
    Late,
}

/// One app request: a slot, then `ms` of work that runs to its end whatever the host does.
/// Returns whether the host was still there when the work ended.
async fn app_request(
    adm: &Arc<Admission>,
    kind: Kind,
    ms: f64,
    deadline: Instant,
    served: &Arc<AtomicUsize>,
    wasted: &Arc<AtomicUsize>,
) -> Result<(), Rejection> {
    tokio::time::sleep(HOP).await;
    let permit = adm.acquire_as(kind, &[0], &mut |_| 0).await?;
    let work = Duration::from_secs_f64(ms / 1000.0);
    let (served, wasted) = (Arc::clone(served), Arc::clone(wasted));
    let done = tokio::spawn(async move {
        tokio::time::sleep(work).await;
        served.fetch_add(1, Ordering::Relaxed);
        if Instant::now() > deadline {
            wasted.fetch_add(1, Ordering::Relaxed);
        }
        drop(permit);
    });
    let _ = done.await;
    tokio::time::sleep(HOP).await;
    Ok(())
}

async fn host(
    adm: Arc<Admission>,
    consumer_ms: f64,
    served: Arc<AtomicUsize>,
    wasted: Arc<AtomicUsize>,
) -> HostEnd {
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let run = async {
        let asked = Instant::now();
        if let Err(_rejection) =
            app_request(&adm, POST, consumer_ms, deadline, &served, &wasted).await
        {
            return HostEnd::Rejected {
                quick: asked.elapsed() <= Duration::from_secs(1),
            };
        }
        for _ in 0..FOLLOW_UPS {
            let asked = Instant::now();
            if app_request(&adm, FOLLOW_UP, FOLLOW_UP_MS, deadline, &served, &wasted)
                .await
                .is_err()
            {
                return HostEnd::Rejected {
                    quick: asked.elapsed() <= Duration::from_secs(1),
                };
            }
        }
        HostEnd::Passed
    };
    tokio::time::timeout_at(deadline, run)
        .await
        .unwrap_or(HostEnd::Late)
}

/// `ramp` = the time over which the hosts start (zero: all at once).
async fn storm(hosts: usize, ramp: Duration, seed: u64, draw: Draw) -> Outcome {
    let settings = QueueSettings {
        max: 5000,
        timeout: QUEUE_TIMEOUT,
        fail_fast: true,
        ..QueueSettings::default()
    };
    let adm = Admission::new(vec![Some(SLOTS)], settings);
    let served = Arc::new(AtomicUsize::new(0));
    let wasted = Arc::new(AtomicUsize::new(0));
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(hosts);
    for _ in 0..KEYS {
        let (adm, served, wasted) = (Arc::clone(&adm), Arc::clone(&served), Arc::clone(&wasted));
        let deadline = t0 + DEADLINE;
        tokio::spawn(async move {
            let _ = app_request(&adm, FILL, RENDER_MS, deadline, &served, &wasted).await;
        });
    }
    for i in 0..hosts {
        // why: a burst's hosts do not arrive in one instant: the storm generator's 1,500
        // connections and GET /register reach the queue over about half a second (measured)
        let spread = if ramp.is_zero() { BURST_SPREAD } else { ramp };
        let start = t0 + spread.mul_f64(i as f64 / hosts as f64);
        let consumer_ms = draw.ms(&mut rng);
        let (adm, served, wasted) = (Arc::clone(&adm), Arc::clone(&served), Arc::clone(&wasted));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            host(adm, consumer_ms, served, wasted).await
        }));
    }
    let mut out = Outcome {
        hosts,
        ..Outcome::default()
    };
    for t in tasks {
        match t.await.unwrap() {
            HostEnd::Passed => out.passed += 1,
            HostEnd::Rejected { quick } => {
                out.failed_503 += 1;
                out.told_quickly += usize::from(quick);
            }
            HostEnd::Late => {}
        }
    }
    // Let the app finish what it started for hosts that left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.app_served = served.load(Ordering::Relaxed);
    out.wasted = wasted.load(Ordering::Relaxed);
    // why: S as benches/storm.sh and the issue count it, with the 10 ms `/register` render
    // although the gateway caches it (so a cell can pass 1.0 by a few percent).
    let per_host = (CONSUMER_MS + FOLLOW_UPS as f64 * FOLLOW_UP_MS + RENDER_MS) / 1000.0;
    let window = DEADLINE.as_secs_f64() + ramp.as_secs_f64();
    out.limit = (window * SLOTS as f64 / per_host / hosts as f64).min(1.0);
    out
}

/// `floor`: the least pass rate over the physical limit; `told`: the least share of the
/// refused hosts that must hear so within 1 s.
fn judge(name: &str, out: &Outcome, floor: f64, told: f64) {
    let share = out.pass_rate() / out.limit;
    eprintln!(
        "{name}: pass {:.1}% of limit {:.1}% = {share:.3}; 503 {} (told <= 1 s {}); app {} wasted {}",
        100.0 * out.pass_rate(),
        100.0 * out.limit,
        out.failed_503,
        out.told_quickly,
        out.app_served,
        out.wasted
    );
    assert!(
        share >= floor,
        "{name}: pass / limit {share:.3} < {floor}: {out:?}"
    );
    assert!(
        out.told_quickly as f64 >= told * out.failed_503 as f64,
        "{name}: fewer than {told} of the refused hosts told within 1 s: {out:?}"
    );
    assert!(
        out.wasted * 100 <= out.app_served,
        "{name}: wasted work above 1 %: {out:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn ramp_1000_hosts_reach_the_physical_limit() {
    judge(
        "ramp 1000",
        &storm(1000, Duration::from_secs(10), 1, Draw::Uniform).await,
        0.95,
        0.9,
    );
}

#[tokio::test(start_paused = true)]
async fn ramp_1500_hosts_reach_the_physical_limit() {
    judge(
        "ramp 1500",
        &storm(1500, Duration::from_secs(10), 2, Draw::Uniform).await,
        0.95,
        0.9,
    );
}

#[tokio::test(start_paused = true)]
async fn ramp_3000_hosts_reach_95_percent_of_the_physical_limit() {
    // why: a storm that keeps arriving holds the queue at the edge of what can be served, so
    // the arrival check's margin decides who hears at once and who waits the queue timeout
    // for a 503 (drain.rs, ARRIVAL_ERRORS): over these seeds 0.977-1.00 are told within 1 s
    // (with one error of optimism, seeds 30-41: 0.95 at least, 0.97 on average).
    for seed in [3, 30, 31, 32, 33, 34] {
        judge(
            &format!("ramp 3000 (seed {seed})"),
            &storm(3000, Duration::from_secs(10), seed, Draw::Uniform).await,
            0.95,
            0.97,
        );
    }
}

#[tokio::test(start_paused = true)]
async fn burst_1500_hosts_reach_95_percent_of_the_physical_limit() {
    // why: in a burst the evidence needs about half a second to form (32 ended holds), and
    // the hosts that arrived before it are told from the back of the queue as it does. The
    // margin trimming keeps (half an error from 0.8 s, failfast.rs; a Kaplan-Meier mean,
    // cost.rs) was set on benches/storm.sh's runs; over these seeds it tells
    // 0.86-1.00 within 1 s (mean 0.96) at 0.97-1.04 of the limit. Several seeds, as the share
    // turns on how close the first second's holds come to the later ones.
    for seed in 4..=19 {
        judge(
            &format!("burst 1500 (seed {seed})"),
            &storm(1500, Duration::ZERO, seed, Draw::Uniform).await,
            0.95,
            0.8,
        );
    }
}

#[tokio::test(start_paused = true)]
#[ignore = "prints the pass and told shares of a cell over many seeds; FG_CELL=burst:1500 (or ramp:N), FG_SIGMA (log-normal costs), FG_SEEDS"]
async fn sweep() {
    let var = |k: &str| std::env::var(k).ok();
    let cell = var("FG_CELL").unwrap_or_else(|| "burst:1500".into());
    let (mode, hosts) = cell.split_once(':').expect("FG_CELL=mode:hosts");
    let hosts: usize = hosts.parse().expect("hosts");
    let ramp = if mode == "burst" {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    let draw = var("FG_SIGMA")
        .and_then(|v| v.parse().ok())
        .map_or(Draw::Uniform, Draw::LogNormal);
    let seeds: u64 = var("FG_SEEDS").and_then(|v| v.parse().ok()).unwrap_or(32);
    let (mut shares, mut told) = (Vec::new(), Vec::new());
    for seed in 100..100 + seeds {
        let out = storm(hosts, ramp, seed, draw).await;
        shares.push(out.pass_rate() / out.limit);
        told.push(out.told_quickly as f64 / out.failed_503.max(1) as f64);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "{cell} over {seeds} seeds: pass / limit {:.3} at least, {:.3} on average; told within 1 s {:.3} at least, {:.3} on average",
        min(&shares), mean(&shares), min(&told), mean(&told)
    );
}

#[tokio::test(start_paused = true)]
async fn burst_1500_hosts_with_long_tailed_costs() {
    // why: an app server's times have a long tail; log-normal costs of the same mean (sigma
    // 0.5: a spread of 53% against the uniform draw's 29%) make the first second's mean much
    // less certain, so a cut taken on it more often goes too deep. Reading the holds still
    // running (cost.rs) keeps this cell at 0.92 of the limit at least over these 32 seeds
    // (0.87 with the settled mean it replaced, which one long hold could freeze); 0.95 would
    // need evidence the first second does not have.
    for seed in 100..=131 {
        judge(
            &format!("burst 1500, log-normal costs (seed {seed})"),
            &storm(1500, Duration::ZERO, seed, Draw::LogNormal(0.5)).await,
            0.9,
            0.5,
        );
    }
}
