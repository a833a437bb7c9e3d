//! Criterion micro-benchmarks of floodgate's pure per-request hot paths (no sockets):
//! route resolution, server choice, admission slots, cache keys, the front door's head check.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench hot_paths`
//! (one group: `... --bench hot_paths -- choose`). See `benches/README.md`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use floodgate::config::{parse_config, Config};
use floodgate::routing::{normalize_host, RequestView, RouteTable};
use floodgate::upstream::admission::{Admission, QueueSettings};
use floodgate::upstream::Upstream;
use std::path::Path;

fn config(yaml: &str) -> Config {
    match parse_config(yaml, Path::new("b.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("benchmark config does not validate:\n{e}"),
    }
}

/// 20 routes in the shapes real configs use: header pins first, then hosts, then
/// method + path-prefix routes, exact paths, and a catch-all last.
const ROUTES_20: &str = r#"
listeners: [{ bind: "127.0.0.1:0" }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:1" }] }
routes:
  - { name: r01-node, match: { header: { name: X-Node-Name } }, upstream: a }
  - { name: r02-env, match: { header: { name: X-Env, value: staging } }, upstream: a }
  - { name: r03-canary, match: { header: { name: X-Canary, value: "1" } }, upstream: a }
  - { name: r04-api-host, match: { host: api.example.com }, upstream: a }
  - { name: r05-wild, match: { host: "*.internal.example" }, upstream: a }
  - { name: r06-hosts, match: { host: [a.example.org, b.example.org, c.example.org] }, upstream: a }
  - { name: r07-admin, match: { host: admin.example.com, path_prefix: /admin }, upstream: a }
  - { name: r08-rhsm-post, match: { path_prefix: [/rhsm, /register], methods: [POST, PUT] }, upstream: a }
  - { name: r09-register, match: { path_prefix: /register, methods: [GET, HEAD] }, upstream: a }
  - { name: r10-rhsm, match: { path_prefix: /rhsm }, upstream: a }
  - { name: r11-pulp, match: { path_prefix: [/pulp/api/v3, /pulp/content] }, upstream: a }
  - { name: r12-api-v2, match: { path_prefix: /api/v2 }, upstream: a }
  - { name: r13-api-hosts, match: { path_prefix: /api/hosts, methods: [GET] }, upstream: a }
  - { name: r14-api, match: { path_prefix: /api }, upstream: a }
  - { name: r15-assets, match: { path_prefix: [/assets, /webpack, /images] }, upstream: a }
  - { name: r16-users, match: { path_prefix: /users, methods: [GET, POST] }, upstream: a }
  - { name: r17-status, match: { path: [/status, /api/status] }, upstream: a }
  - { name: r18-ping, match: { path: /ping }, upstream: a }
  - { name: r19-unattended, match: { path_prefix: /unattended }, upstream: a }
  - { name: r20-default, match: { path_prefix: / }, upstream: a }
"#;

/// (label, method, host, path, headers, expected route)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const ROUTE_CASES: &[Case] = &[
    (
        "first",
        "GET",
        "foreman.example.com",
        "/api/hosts",
        &[("x-node-name", "node-7.example.com")],
        "r01-node",
    ),
    (
        "host-wildcard",
        "GET",
        "db.internal.example",
        "/x",
        &[],
        "r05-wild",
    ),
    (
        "prefix-mid",
        "GET",
        "foreman.example.com",
        "/rhsm/consumers/abc",
        &[("accept", "*/*")],
        "r10-rhsm",
    ),
    (
        "exact-path",
        "GET",
        "foreman.example.com",
        "/ping",
        &[],
        "r18-ping",
    ),
    (
        "default-last",
        "GET",
        "foreman.example.com",
        "/hosts/42/edit",
        &[("accept", "text/html")],
        "r20-default",
    ),
];

fn bench_routing(c: &mut Criterion) {
    let cfg = config(ROUTES_20);
    let table = RouteTable::new(&cfg.routes);
    let mut g = c.benchmark_group("route_resolve_20");
    for &(label, method, host, path, headers, want) in ROUTE_CASES {
        let lookup = move |n: &str| -> Option<&str> {
            headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
        };
        let view = RequestView {
            method,
            host,
            path,
            header: &lookup,
        };
        let got = table.resolve(&view).map(|(_, r)| r.name.clone());
        assert_eq!(got.as_deref(), Some(want), "case {label}");
        g.bench_function(label, |b| {
            b.iter(|| {
                let view = RequestView {
                    method: black_box(method),
                    host: black_box(host),
                    path: black_box(path),
                    header: &lookup,
                };
                black_box(table.resolve(&view).map(|(i, _)| i))
            })
        });
    }
    g.finish();
    c.bench_function("normalize_host", |b| {
        b.iter(|| normalize_host(black_box("Foreman.Example.com:8443")))
    });
}

fn upstream(balance: &str, servers: usize) -> Upstream {
    let list: Vec<String> = (0..servers)
        .map(|i| format!("{{ name: s{i}, addr: \"127.0.0.1:{}\" }}", 10001 + i))
        .collect();
    let y = format!(
        "listeners: [{{ bind: \"127.0.0.1:0\" }}]\nupstreams:\n  u: {{ balance: {balance}, hash_key: \"header:x-node-name\", servers: [{}] }}\nroutes: [{{ name: r, upstream: u }}]\n",
        list.join(", ")
    );
    let cfg = config(&y);
    Upstream::build(
        &cfg.upstreams["u"],
        &|_| None,
        &floodgate::metrics::Metrics::new(),
    )
}

fn bench_choose(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstream_choose");
    for servers in [4usize, 16] {
        let free: Vec<usize> = (0..servers).collect();
        for balance in ["round_robin", "least_conn", "hash"] {
            let up = upstream(balance, servers);
            let key: Option<&[u8]> = if balance == "hash" {
                Some(b"node-42.example.com")
            } else {
                None
            };
            g.bench_with_input(BenchmarkId::new(balance, servers), &free, |b, free| {
                b.iter(|| black_box(up.choose(black_box(free), black_box(key))))
            });
        }
    }
    g.finish();
}

fn bench_admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    // Unlimited server (the common case: no max_inflight) and a limited one.
    for (label, cap) in [("unlimited", None), ("max_inflight_100", Some(100usize))] {
        let adm = Admission::new(vec![cap; 4], QueueSettings::default());
        let eligible = [0usize, 1, 2, 3];
        g.bench_function(format!("try_acquire_drop/{label}"), |b| {
            b.iter(|| {
                let p = adm.try_acquire(black_box(&eligible), &mut |free| free[0]);
                black_box(p.as_ref().map(|p| p.group()));
                drop(p);
            })
        });
    }
    // What admit_server does on its fast path: eligible list, slot, balancer under the lock.
    let up = upstream("least_conn", 4);
    g.bench_function("eligible_try_acquire_choose_drop/least_conn_4", |b| {
        b.iter(|| {
            let floodgate::upstream::Eligible::Servers(list) = up.eligible(&[]) else {
                unreachable!("all servers are up")
            };
            let p = up
                .admission
                .try_acquire(&list, &mut |free| up.choose(free, None));
            black_box(p.as_ref().map(|p| p.group()));
            drop(p);
        })
    });
    g.finish();
}

fn bench_cache_key(c: &mut Criterion) {
    use floodgate::cache::canonical_key;
    let mut g = c.benchmark_group("cache_canonical_key");
    let secret = b"bench-secret-0123456789";
    let query =
        Some("org_id=1&location_id=2&activation_keys=ak-prod,ak-base&update_packages=false");
    g.bench_function("no_vary", |b| {
        b.iter(|| {
            black_box(canonical_key(
                black_box("GET"),
                black_box("Capsule.Example:443"),
                black_box("/register"),
                black_box(query),
                &[],
                secret,
            ))
        })
    });
    let auth: &[u8] = b"Basic YWRtaW46Y2hhbmdlbWUtbm90LWEtcmVhbC1wYXNzd29yZA==";
    let vary: [(&str, Option<&[u8]>); 2] = [("authorization", Some(auth)), ("accept", None)];
    g.bench_function("vary_authorization", |b| {
        b.iter(|| {
            black_box(canonical_key(
                black_box("GET"),
                black_box("capsule.example"),
                black_box("/register"),
                black_box(query),
                black_box(&vary),
                secret,
            ))
        })
    });
    g.finish();
}

/// Lua policy string functions: the sandbox's Rust pattern matcher against stock Lua's C, on
/// typical policy patterns; each iteration runs the expression 100 times in a Lua loop.
fn bench_lua_patterns(c: &mut Criterion) {
    let cases = [
        ("prefix_find", r#"string.find(p, "^/api/v1/")"#),
        ("plain_find", r#"string.find(p, "/nodes/", 1, true)"#),
        (
            "path_match",
            r#"string.match(p, "^/api/v(%d+)/nodes/([%w%.%-]+)")"#,
        ),
        (
            "header_parse",
            r#"string.match(h, "^%s*(%w+)%s*=%s*([^;]*)")"#,
        ),
        ("gsub_escape", r#"string.gsub(p, "[^%w/]", "_")"#),
        (
            "gmatch_list",
            r#"for v in string.gmatch(l, "[^,%s]+") do end"#,
        ),
    ];
    let mut group = c.benchmark_group("lua_patterns");
    for (name, expr) in cases {
        for (side, stock) in [("stock", true), ("rust", false)] {
            let lua = floodgate::policy::bench_string_vm(stock).expect("vm");
            let f: mlua::Function = lua
                .load(format!(
                    "local p, h, l = '/api/v1/nodes/web-01.example.com/facts', \
                     ' session = abc123; Path=/', 'gzip, deflate, br, zstd' \
                     return function() for _ = 1, 100 do {expr} end end"
                ))
                .eval()
                .expect("chunk");
            group.bench_function(BenchmarkId::new(name, side), |b| {
                b.iter(|| f.call::<()>(()).expect("call"))
            });
        }
    }
    group.finish();
}

/// The front door's one-pass read and check of a head that came whole (`head::parse_prefix`):
/// ApacheBench's four-header request, and a subscription-manager call with ten headers.
fn bench_frontdoor_head(c: &mut Criterion) {
    use floodgate::frontdoor::head::{parse_prefix, Limits};
    let limits = Limits {
        max_head: 32 * 1024,
        max_fields: 100,
        max_request_line: 8 * 1024,
        allow_length_with_chunked: false,
    };
    let ab: &[u8] = b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: 127.0.0.1:8080\r\n\
User-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n";
    let rhsm: &[u8] = b"GET /rhsm/consumers/0f3e9f8a-1b2c-4d5e-8f90-123456789abc/certificates?serials=1 HTTP/1.1\r\n\
Host: foreman.example.com\r\nAccept-Encoding: identity\r\nUser-Agent: RHSM/1.0 (cmd=rhsmcertd-worker) \
subscription-manager/1.29.40\r\nAccept: application/json\r\nX-Subman-Version: 1.29.40\r\n\
X-Correlation-Id: 0f3e9f8a1b2c4d5e8f90123456789abc\r\nAuthorization: Basic YWRtaW46Y2hhbmdlbWU=\r\n\
Accept-Language: en-us\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n\r\n";
    let mut g = c.benchmark_group("frontdoor_head");
    for (label, head) in [("ab_4_fields", ab), ("rhsm_10_fields", rhsm)] {
        assert!(
            matches!(parse_prefix(head, &limits), Ok(Some(_))),
            "{label}"
        );
        g.bench_function(label, |b| {
            b.iter(|| parse_prefix(black_box(head), black_box(&limits)))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_frontdoor_head,
    bench_routing,
    bench_choose,
    bench_admission,
    bench_cache_key,
    bench_lua_patterns
);
criterion_main!(benches);
