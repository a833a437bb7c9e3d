//! Typed metric handles, resolved once per snapshot and kept beside what they count (a route,
//! an upstream, a server), so the request path increments a counter it already holds instead
//! of hashing label strings and taking the metric family's lock (`with_label_values`) several
//! times per request.
//!
//! A handle is the labelled child of a family in [`Metrics`]' registry: the same series the
//! label strings would name. Creating a child makes its series appear (at 0), so:
//! - series the config implies and that are shown at 0 before their first event (admission
//!   refusals, connect errors, map lookups, cache results, clients gone) are created when the
//!   handles are built: building them is the preset, done once per config, not per change;
//! - series that appear with their first event (by status code, durations) are created on
//!   first use ([`ByStatus`], [`LazyHistogram`]), as before.

use super::{Metrics, CACHE_RESULTS, HEALTH_RESULTS};
use crate::upstream::admission::RejectReason;
use crate::upstream::health::Probe;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

/// The `code` label values of the request path: common statuses by value, others by class.
pub const STATUS_LABELS: [&str; 20] = [
    "0", "200", "201", "204", "301", "302", "304", "400", "401", "403", "404", "429", "500", "502",
    "503", "504", "2xx", "3xx", "4xx", "5xx",
];

/// Index of `code`'s label in [`STATUS_LABELS`].
pub fn status_slot(code: u16) -> usize {
    match code {
        0 => 0,
        200 => 1,
        201 => 2,
        204 => 3,
        301 => 4,
        302 => 5,
        304 => 6,
        400 => 7,
        401 => 8,
        403 => 9,
        404 => 10,
        429 => 11,
        500 => 12,
        502 => 13,
        503 => 14,
        504 => 15,
        c if c < 300 => 16,
        c if c < 400 => 17,
        c if c < 500 => 18,
        _ => 19,
    }
}

/// The `code` label of a status (a static string: no allocation per request).
pub fn status_label(code: u16) -> &'static str {
    STATUS_LABELS[status_slot(code)]
}

/// A counter family's children by status code under two fixed leading labels, each made at
/// its code's first event (codes are open: their series appear with their first answer).
pub struct ByStatus {
    vec: IntCounterVec,
    labels: [String; 2],
    slots: [OnceLock<IntCounter>; STATUS_LABELS.len()],
}

impl ByStatus {
    fn new(vec: &IntCounterVec, first: &str, second: &str) -> Self {
        ByStatus {
            vec: vec.clone(),
            labels: [first.to_string(), second.to_string()],
            slots: Default::default(),
        }
    }

    /// The leading labels (`route, upstream` or `upstream, server`).
    pub fn labels(&self) -> [&str; 2] {
        [&self.labels[0], &self.labels[1]]
    }

    pub fn inc(&self, code: u16) {
        let i = status_slot(code);
        self.slots[i]
            .get_or_init(|| {
                self.vec
                    .with_label_values(&[&self.labels[0], &self.labels[1], STATUS_LABELS[i]])
            })
            .inc();
    }
}

/// A histogram child made at its first observation.
pub struct LazyHistogram {
    vec: HistogramVec,
    labels: Vec<String>,
    cell: OnceLock<Histogram>,
}

impl LazyHistogram {
    fn new(vec: &HistogramVec, labels: &[&str]) -> Self {
        LazyHistogram {
            vec: vec.clone(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            cell: OnceLock::new(),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.cell
            .get_or_init(|| self.vec.with_label_values(&self.labels))
            .observe(d.as_secs_f64());
    }
}

/// `reason` label values of `floodgate_admission_rejected_total`, in [`reason_slot`] order.
const REJECT_REASONS: [RejectReason; 4] = [
    RejectReason::QueueFull,
    RejectReason::QueueTimeout,
    RejectReason::FailFast,
    RejectReason::NoEligibleGroup,
];

fn reason_slot(r: RejectReason) -> usize {
    match r {
        RejectReason::QueueFull => 0,
        RejectReason::QueueTimeout => 1,
        RejectReason::FailFast => 2,
        RejectReason::NoEligibleGroup => 3,
    }
}

/// One admission queue's series (`scope` is `route` or `upstream`): refusals by reason and
/// abandons at 0 from the start, the wait histogram from its first admission.
pub struct AdmissionHandles {
    wait: LazyHistogram,
    rejected: [IntCounter; 4],
    abandoned: IntCounter,
}

impl AdmissionHandles {
    pub fn new(m: &Metrics, scope: &str, name: &str) -> Self {
        AdmissionHandles {
            wait: LazyHistogram::new(&m.queue_wait, &[scope, name]),
            rejected: REJECT_REASONS.map(|r| {
                m.admission_rejected
                    .with_label_values(&[scope, name, r.as_str()])
            }),
            abandoned: m.admission_abandoned.with_label_values(&[scope, name]),
        }
    }

    /// A slot was granted after `waited`.
    pub fn granted(&self, waited: Duration) {
        self.wait.observe(waited);
    }

    /// The queue refused the request after `waited`.
    pub fn rejected(&self, reason: RejectReason, waited: Duration) {
        self.rejected[reason_slot(reason)].inc();
        self.wait.observe(waited);
    }

    /// The client left while queued.
    pub fn abandoned(&self) {
        self.abandoned.inc();
    }
}

/// How a request whose client left after it went upstream ended
/// (`floodgate_upstream_client_gone_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneOutcome {
    Completed,
    Timeout,
    Error,
}

impl GoneOutcome {
    const ALL: [GoneOutcome; 3] = [Self::Completed, Self::Timeout, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// One server's series.
pub struct ServerHandles {
    /// `floodgate_upstream_requests_total{upstream, server, code}` by answer status.
    pub responses: ByStatus,
    /// The same family's `code="connect_error"` (at 0 from the start).
    pub connect_errors: IntCounter,
    /// `floodgate_health_checks_total{upstream, server, result}` by probe result, in
    /// [`HEALTH_RESULTS`] order; empty without active checks.
    health: Vec<IntCounter>,
}

impl ServerHandles {
    /// Counts one active check by its result.
    pub fn health_check(&self, p: &Probe) {
        if let Some(c) = self.health.get(probe_slot(p)) {
            c.inc();
        }
    }
}

/// Index of a probe's result label in [`HEALTH_RESULTS`].
fn probe_slot(p: &Probe) -> usize {
    match p {
        Probe::Pass(_) => 0,
        Probe::BadStatus(_) => 1,
        Probe::Refused => 2,
        Probe::Timeout => 3,
        Probe::Error(_) => 4,
    }
}

/// One upstream's series: its queue, clients gone, and each server's.
pub struct UpstreamHandles {
    pub admission: AdmissionHandles,
    client_gone: [IntCounter; 3],
    /// By server index.
    pub servers: Vec<ServerHandles>,
}

impl UpstreamHandles {
    /// `servers` are the server names in index order; `health`: the upstream has active checks.
    pub fn new<'a>(
        m: &Metrics,
        name: &str,
        servers: impl Iterator<Item = &'a str>,
        health: bool,
    ) -> Self {
        UpstreamHandles {
            admission: AdmissionHandles::new(m, "upstream", name),
            client_gone: GoneOutcome::ALL.map(|o| {
                m.client_gone_at_upstream
                    .with_label_values(&[name, o.as_str()])
            }),
            servers: servers
                .map(|s| ServerHandles {
                    responses: ByStatus::new(&m.upstream_requests, name, s),
                    connect_errors: m.upstream_requests.with_label_values(&[
                        name,
                        s,
                        "connect_error",
                    ]),
                    health: if health {
                        HEALTH_RESULTS
                            .iter()
                            .map(|r| m.health_checks.with_label_values(&[name, s, r]))
                            .collect()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }
    }

    pub fn client_gone(&self, o: GoneOutcome) {
        self.client_gone[o as usize].inc();
    }
}

/// `floodgate_cache_requests_total{result}` values, as the cache path names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    HitShared,
    Miss,
    Coalesced,
    VariantMiss,
    TooLarge,
    NoRoom,
    Error,
}

impl CacheResult {
    /// Its label, one of [`CACHE_RESULTS`] (at the same index).
    pub fn as_str(self) -> &'static str {
        CACHE_RESULTS[self as usize]
    }
}

/// One route's series.
pub struct RouteHandles {
    /// `floodgate_request_duration_seconds{route}`.
    pub duration: LazyHistogram,
    /// `floodgate_requests_total{route, upstream, code}` for the route's own upstream (or
    /// `none` for a route answered locally); another upstream (chosen by a policy) is
    /// counted through the family.
    requests: ByStatus,
    /// `floodgate_map_lookups_total{map, result}` (`hit`, `miss`) with `pick_server`.
    map_lookups: Option<[IntCounter; 2]>,
    /// `floodgate_cache_requests_total{route, result}` with `cache:`, by [`CacheResult`].
    cache: Option<[IntCounter; 8]>,
}

impl RouteHandles {
    /// `upstream`: the label of the route's own target (`none` without one). (The series of
    /// the route's own limit are its [`AdmissionHandles`], kept with its queue.)
    pub fn new(
        m: &Metrics,
        route: &str,
        upstream: &str,
        pick_map: Option<&str>,
        cached: bool,
    ) -> Self {
        RouteHandles {
            duration: LazyHistogram::new(&m.request_duration, &[route]),
            requests: ByStatus::new(&m.requests, route, upstream),
            map_lookups: pick_map
                .map(|map| ["hit", "miss"].map(|r| m.map_lookups.with_label_values(&[map, r]))),
            cache: cached
                .then(|| CACHE_RESULTS.map(|r| m.cache_requests.with_label_values(&[route, r]))),
        }
    }

    /// Counts one answer of this route sent through `upstream` (its label).
    pub fn request(&self, m: &Metrics, upstream: &str, code: u16) {
        let [route, own] = self.requests.labels();
        if upstream == own {
            self.requests.inc(code);
        } else {
            m.requests
                .with_label_values(&[route, upstream, status_label(code)])
                .inc();
        }
    }

    /// Counts one `pick_server` map lookup (nothing for a route without one).
    pub fn map_lookup(&self, hit: bool) {
        if let Some(l) = &self.map_lookups {
            l[usize::from(!hit)].inc();
        }
    }

    /// Counts one cache lookup (nothing for a route without `cache:`).
    pub fn cache(&self, r: CacheResult) {
        if let Some(c) = &self.cache {
            c[r as usize].inc();
        }
    }
}

impl fmt::Debug for RouteHandles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteHandles")
            .field("labels", &self.requests.labels())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AdmissionHandles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionHandles")
            .field("labels", &self.wait.labels)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for UpstreamHandles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamHandles")
            .field("servers", &self.servers.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap()
    }

    #[test]
    fn status_labels_match_their_slots() {
        for (code, label) in [
            (0, "0"),
            (200, "200"),
            (204, "204"),
            (206, "2xx"),
            (304, "304"),
            (307, "3xx"),
            (404, "404"),
            (418, "4xx"),
            (503, "503"),
            (599, "5xx"),
        ] {
            assert_eq!(status_label(code), label, "{code}");
        }
        assert_eq!(CacheResult::VariantMiss.as_str(), "variant_miss");
        assert_eq!(CacheResult::Error.as_str(), "error");
        for (i, r) in REJECT_REASONS.iter().enumerate() {
            assert_eq!(reason_slot(*r), i);
        }
        for (i, o) in GoneOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        for p in [
            Probe::Pass(200),
            Probe::BadStatus(500),
            Probe::Refused,
            Probe::Timeout,
            Probe::Error("x".into()),
        ] {
            assert_eq!(HEALTH_RESULTS[probe_slot(&p)], p.label());
        }
    }

    #[test]
    fn handles_count_into_the_labelled_series() {
        let m = Metrics::new();
        let r = RouteHandles::new(&m, "api", "app", Some("nodes"), true);
        AdmissionHandles::new(&m, "route", "api");
        r.request(&m, "app", 200);
        r.request(&m, "app", 200);
        r.request(&m, "other", 503);
        r.duration.observe(Duration::from_millis(3));
        r.map_lookup(false);
        r.cache(CacheResult::HitShared);
        let u = UpstreamHandles::new(&m, "app", ["s1"].into_iter(), false);
        u.servers[0].responses.inc(404);
        u.servers[0].connect_errors.inc();
        u.client_gone(GoneOutcome::Timeout);
        u.admission.rejected(RejectReason::FailFast, Duration::ZERO);
        let text = exposition(&m);
        for line in [
            r#"floodgate_requests_total{code="200",route="api",upstream="app"} 2"#,
            r#"floodgate_requests_total{code="503",route="api",upstream="other"} 1"#,
            r#"floodgate_request_duration_seconds_count{route="api"} 1"#,
            r#"floodgate_map_lookups_total{map="nodes",result="miss"} 1"#,
            r#"floodgate_map_lookups_total{map="nodes",result="hit"} 0"#,
            r#"floodgate_cache_requests_total{result="hit_shared",route="api"} 1"#,
            r#"floodgate_upstream_requests_total{code="404",server="s1",upstream="app"} 1"#,
            r#"floodgate_upstream_requests_total{code="connect_error",server="s1",upstream="app"} 1"#,
            r#"floodgate_upstream_client_gone_total{outcome="timeout",upstream="app"} 1"#,
            r#"floodgate_admission_rejected_total{name="app",reason="fail_fast",scope="upstream"} 1"#,
            r#"floodgate_queue_wait_seconds_count{name="app",scope="upstream"} 1"#,
            r#"floodgate_admission_abandoned_total{name="api",scope="route"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn series_by_code_and_durations_appear_with_their_first_event() {
        let m = Metrics::new();
        let r = RouteHandles::new(&m, "api", "app", None, false);
        let u = UpstreamHandles::new(&m, "app", ["s1"].into_iter(), false);
        let text = exposition(&m);
        assert!(!text.contains("floodgate_requests_total{"), "{text}");
        assert!(!text.contains(r#"route="api""#), "{text}");
        assert!(!text.contains(r#"code="200""#), "{text}");
        assert!(
            text.contains(
                r#"floodgate_upstream_client_gone_total{outcome="completed",upstream="app"} 0"#
            ),
            "config-implied series are shown at 0: {text}"
        );
        assert!(
            !text.contains("floodgate_health_checks_total{"),
            "no checks: {text}"
        );
        r.request(&m, "app", 200);
        u.servers[0].responses.inc(200);
        let text = exposition(&m);
        assert!(
            text.contains(r#"floodgate_requests_total{code="200",route="api",upstream="app"} 1"#)
        );
        assert!(!text.contains(r#"code="404""#), "{text}");
    }
}
