//! Prometheus metrics on a registry we own (no global statics), as typed handles.
//!
//! Labels come from config names (route, upstream, server), never from raw request data, so
//! cardinality is bounded by the config. Gauges that mirror live state (queue depth, in-flight,
//! health, map sizes) are refreshed from the current snapshot when `/metrics` is scraped, which
//! keeps the request path free of gauge updates.

pub mod handles;

use crate::config::Config;
use crate::policy::Hook;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub requests_refused: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_inflight: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub queue_wait: HistogramVec,
    pub admission_rejected: IntCounterVec,
    pub admission_abandoned: IntCounterVec,
    pub client_gone_at_upstream: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub health_checks: IntCounterVec,
    pub health_check_duration: Histogram,
    pub reloads: IntCounterVec,
    pub map_entries: IntGaugeVec,
    pub map_updates: IntCounterVec,
    pub map_last_update: IntGaugeVec,
    pub map_lookups: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_shared_errors: IntCounter,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    pub policy_runs: IntCounterVec,
    pub policy_duration: HistogramVec,
    pub policy_reloads: IntCounterVec,
    pub policy_version: IntGauge,
    pub admin_auth_failures: IntCounter,
    pub phase: IntGaugeVec,
    pub inflight_requests: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

fn hist(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    h
}

/// `floodgate_cache_requests_total{result}` values (`proxy::cached`).
const CACHE_RESULTS: [&str; 8] = [
    "hit",
    "hit_shared",
    "miss",
    "coalesced",
    "variant_miss",
    "too_large",
    "no_room",
    "error",
];
/// `floodgate_health_checks_total{result}` values (`upstream::health::Probe::label`).
const HEALTH_RESULTS: [&str; 5] = ["pass", "bad_status", "refused", "timeout", "error"];
/// `floodgate_policy_runs_total{outcome}` values (`proxy::policy`).
pub const POLICY_OUTCOMES: [&str; 4] = ["ok", "deny", "error", "budget"];

const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0,
];

impl Metrics {
    // why: metric definitions are static and valid; a failure here is a programming error
    // caught by every test, so panicking at start-up is the honest outcome.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let r = Registry::new();
        // The standard process_* series (resident and virtual memory, open and max fds,
        // threads, CPU seconds, start time) read from /proc at scrape time.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap_or_else(|e| panic!("register process collector: {e}"));
        let single = |name: &str, help: &str| -> IntGauge {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            r.register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            g
        };
        let health_check_duration = {
            let h = Histogram::with_opts(
                HistogramOpts::new(
                    "floodgate_health_check_duration_seconds",
                    "Duration of active health checks",
                )
                .buckets(LATENCY.to_vec()),
            )
            .unwrap_or_else(|e| panic!("metric: {e}"));
            r.register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("register: {e}"));
            h
        };
        let auth = IntCounter::new(
            "floodgate_admin_auth_failures_total",
            "Admin API requests refused for a missing or wrong token",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        r.register(Box::new(auth.clone()))
            .unwrap_or_else(|e| panic!("register: {e}"));
        let build_info = gauge(
            &r,
            "floodgate_build_info",
            "1, labelled with the version and the commit it was built from (FLOODGATE_COMMIT at build time, else unknown)",
            &["version", "commit"],
        );
        build_info
            .with_label_values(&[
                crate::VERSION,
                option_env!("FLOODGATE_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        let m = Metrics {
            requests: counter(
                &r,
                "floodgate_requests_total",
                "Requests answered, by route, upstream and status",
                &["route", "upstream", "code"],
            ),
            requests_refused: counter(
                &r,
                "floodgate_requests_refused_total",
                "Requests refused before routing (malformed, ambiguous or over a limit), by listener and reason",
                &["listener", "reason"],
            ),
            request_duration: hist(
                &r,
                "floodgate_request_duration_seconds",
                "Time from request to the end of the response",
                &["route"],
                LATENCY.to_vec(),
            ),
            upstream_requests: counter(
                &r,
                "floodgate_upstream_requests_total",
                "Requests sent to each server, by status",
                &["upstream", "server", "code"],
            ),
            upstream_inflight: gauge(
                &r,
                "floodgate_upstream_inflight",
                "Requests in flight to each server",
                &["upstream", "server"],
            ),
            queue_depth: gauge(
                &r,
                "floodgate_queue_depth",
                "Requests waiting in an admission queue",
                &["scope", "name"],
            ),
            queue_wait: hist(
                &r,
                "floodgate_queue_wait_seconds",
                "Time requests waited for admission",
                &["scope", "name"],
                LATENCY.to_vec(),
            ),
            admission_rejected: counter(
                &r,
                "floodgate_admission_rejected_total",
                "Requests refused by admission control",
                &["scope", "name", "reason"],
            ),
            admission_abandoned: counter(
                &r,
                "floodgate_admission_abandoned_total",
                "Queued requests whose client left before admission",
                &["scope", "name"],
            ),
            client_gone_at_upstream: counter(
                &r,
                "floodgate_upstream_client_gone_total",
                "Requests whose client left after they were sent upstream; the slot is kept until the upstream answer ends (completed) or the upstream read timeout closes the connection (timeout)",
                &["upstream", "outcome"],
            ),
            upstream_healthy: gauge(
                &r,
                "floodgate_upstream_healthy",
                "1 when the server takes traffic",
                &["upstream", "server"],
            ),
            health_checks: counter(
                &r,
                "floodgate_health_checks_total",
                "Active health checks by result",
                &["upstream", "server", "result"],
            ),
            health_check_duration,
            reloads: counter(
                &r,
                "floodgate_reloads_total",
                "Configuration reloads by result",
                &["kind", "result"],
            ),
            map_entries: gauge(&r, "floodgate_map_entries", "Entries in each map", &["map"]),
            map_updates: counter(
                &r,
                "floodgate_map_updates_total",
                "Map updates by source and result",
                &["map", "source", "result"],
            ),
            map_last_update: gauge(
                &r,
                "floodgate_map_last_update_timestamp_seconds",
                "Unix time of the last map change",
                &["map"],
            ),
            map_lookups: counter(
                &r,
                "floodgate_map_lookups_total",
                "Map lookups on the request path",
                &["map", "result"],
            ),
            cache_requests: counter(
                &r,
                "floodgate_cache_requests_total",
                "Cache lookups by result",
                &["route", "result"],
            ),
            cache_shared_errors: {
                let c = IntCounter::new(
                    "floodgate_cache_shared_errors_total",
                    "Errors talking to the shared (Redis/Valkey) cache tier",
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("register: {e}"));
                c
            },
            cache_bytes: single("floodgate_cache_bytes", "Bytes charged to the memory cache: entries plus answers being filled"),
            cache_entries: single(
                "floodgate_cache_entries",
                "Entries held by the memory cache",
            ),
            policy_runs: counter(
                &r,
                "floodgate_policy_runs_total",
                "Lua policy hook runs by outcome",
                &["hook", "outcome"],
            ),
            policy_duration: hist(
                &r,
                "floodgate_policy_duration_seconds",
                "Time spent in Lua policy hooks",
                &["hook"],
                vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01],
            ),
            policy_reloads: counter(
                &r,
                "floodgate_policy_reloads_total",
                "Lua policy reloads by result",
                &["result"],
            ),
            policy_version: single(
                "floodgate_policy_version",
                "Generation of the running Lua policy",
            ),
            admin_auth_failures: auth,
            phase: gauge(
                &r,
                "floodgate_phase",
                "1 for the current lifecycle phase",
                &["phase"],
            ),
            inflight_requests: single(
                "floodgate_inflight_requests",
                "Requests being handled by the gateway",
            ),
            registry: r,
        };
        // why: an alert on `rate(..{result="error"}[5m])` needs the series before the first
        // error; series whose labels come from config names appear with their first event
        for kind_result in [["config", "ok"], ["config", "error"]] {
            m.reloads.with_label_values(&kind_result);
        }
        for result in ["ok", "error"] {
            m.policy_reloads.with_label_values(&[result]);
        }
        m
    }

    /// Creates at 0 the labelled counter series a config implies that no snapshot handle
    /// creates ([`handles`] make those of routes, upstreams and servers when a config is
    /// built), so a `rate()` or `increase()` alert has data before the first event: map
    /// updates by source and result. Called when a config is published (start, reload), not
    /// on map edits or policy reloads, which change no name.
    pub fn preset_config(&self, config: &Config) {
        for (name, m) in &config.maps {
            let mut sources = vec!["api", "runtime_api"];
            if m.file.is_some() {
                sources.push("file");
            }
            if m.source.is_some() {
                sources.push("poller");
            }
            for source in sources {
                for result in ["ok", "error"] {
                    self.map_updates.with_label_values(&[name, source, result]);
                }
            }
        }
    }

    /// Creates at 0 the policy run series of the hooks the running scripts define. Called
    /// when a policy generation is published (start, reload, policy reload).
    pub fn preset_policy(&self, has_hook: &dyn Fn(Hook) -> bool) {
        for hook in Hook::ALL {
            if has_hook(hook) {
                for outcome in POLICY_OUTCOMES {
                    self.policy_runs.with_label_values(&[hook.name(), outcome]);
                }
            }
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            log::error!("encoding metrics failed: {e}");
        }
        buf
    }
}
