//! Criterion benchmark of header rules (issue 17): the cost of ten rules on one request, over
//! none. Every case clones the same request head (what Pingora hands the upstream filter), so
//! the difference is the rules alone. `removes`/`sets`/`conds`/`add` split the ten by kind;
//! `pingora_*` make writes by hand through Pingora's own header API, the floor any rule engine
//! on `RequestHeader` pays.
//!
//! Run: `cargo bench --bench header_rules`. See `benches/README.md`.

#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use floodgate::config::{parse_config, RouteConfig};
use floodgate::rules::{Facts, HeaderRules};
use floodgate::tlsinfo::ClientCert;
use pingora_http::RequestHeader;
use std::path::Path;

/// Ten rules in the shapes Foreman's vhost needs: removals (one by prefix), certificate
/// templates, conditional sets, an append.
const TEN_RULES: &str = r#"
listeners: [{ bind: "127.0.0.1:0" }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:1" }] }
routes:
  - name: pulp
    match: { path_prefix: / }
    upstream: a
    request_headers:
      - { remove: "REMOTE-USER*" }
      - { remove: X_Legacy_Token }
      - { remove: X-Debug }
      - { set: SSL-CLIENT-S-DN, value: "%{ssl_client_s_dn}" }
      - { set: SSL-CLIENT-CERT, value: "%{ssl_client_cert}" }
      - { set: SSL-CLIENT-VERIFY, value: "%{ssl_client_verify}" }
      - { set: REMOTE-USER, value: admin, if: { cert_cn: foreman.example.com, path_prefix: /pulp/api/v3 } }
      - { set: X-Env, value: production }
      - { set: X-Api, value: "yes", if: { header: { name: Accept, prefix: application/json } } }
      - { add: Via, value: "1.1 floodgate" }
"#;

fn route(yaml: &str) -> RouteConfig {
    match parse_config(yaml, Path::new("b.yaml")) {
        Ok(c) => c.routes[0].clone(),
        Err(e) => panic!("benchmark config does not validate:\n{e}"),
    }
}

fn request() -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/pulp/api/v3/tasks/?limit=10", None).unwrap();
    for (k, v) in [
        ("Host", "foreman.example.com"),
        ("User-Agent", "subscription-manager/1.29.40"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Authorization", "Basic YWRtaW46Y2hhbmdlbWU="),
        ("X-Correlation-Id", "0f3e9f8a-1b2c-4d5e-8f90-123456789abc"),
        ("Cookie", "_session_id=abcdef0123456789"),
        ("X-Forwarded-For", "10.0.0.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Request-Id", "0123456789abcdef01234567"),
    ] {
        r.append_header(k, v).unwrap();
    }
    r
}

fn cert() -> ClientCert {
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        ["MIIDazCCAlOgAwIBAgIUJ6Q0example0base64line0of0sixty0four0characters"; 20].join("\n")
    );
    ClientCert {
        subject_dn: "CN=host1.example.com,O=Example Org,C=US".into(),
        subject_dn_legacy: "/C=US/O=Example Org/CN=host1.example.com".into(),
        issuer_dn: "CN=Katello CA,O=Example Org,C=US".into(),
        issuer_dn_legacy: "/C=US/O=Example Org/CN=Katello CA".into(),
        cn: "host1.example.com".into(),
        serial: "4F2A9C".into(),
        pem_flat: pem.trim().replace('\n', " "),
        pem,
        verify: "SUCCESS".into(),
        values: Default::default(),
    }
    .with_values()
}

fn bench(c: &mut Criterion) {
    let ten = route(TEN_RULES).request_headers;
    assert_eq!(ten.rules.len(), 10);
    let none = HeaderRules::default();
    let req = request();
    let cc = cert();
    let facts = Facts {
        cert: Some(&cc),
        client_ip: Some("10.0.0.7"),
        https: true,
        method: "GET",
        path: "/pulp/api/v3/tasks/",
        query: Some("limit=10"),
        host: "foreman.example.com",
        server_name: "gw1.example.com",
    };
    let pick = |idx: &[usize]| HeaderRules {
        rules: idx.iter().map(|i| ten.rules[*i].clone()).collect(),
    };
    let removes = pick(&[0, 1, 2]);
    let sets = pick(&[3, 4, 5, 7]);
    let conds = pick(&[6, 8]);
    let add = pick(&[9]);
    let mut g = c.benchmark_group("header_rules");
    for (label, rules) in [
        ("none", &none),
        ("ten", &ten),
        ("removes", &removes),
        ("sets", &sets),
        ("conds", &conds),
        ("add", &add),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let mut r = req.clone();
                black_box(rules).apply(black_box(&facts), &mut r);
                black_box(r)
            })
        });
    }
    // Floor: the same writes made by hand through Pingora's own API (no rule engine).
    let pem = cc.values.pem_flat.clone().unwrap();
    g.bench_function("pingora_4_inserts", |b| {
        b.iter(|| {
            let mut r = req.clone();
            r.insert_header("SSL-CLIENT-S-DN", "CN=host1.example.com,O=Example Org,C=US")
                .unwrap();
            r.insert_header("SSL-CLIENT-CERT", pem.clone()).unwrap();
            r.insert_header("SSL-CLIENT-VERIFY", "SUCCESS").unwrap();
            r.insert_header("X-Env", "production").unwrap();
            black_box(r)
        })
    });
    // The floor of `ten` itself: the six writes its rules make on this request (four sets,
    // the `Accept` conditional set, the append), names as the config spells them and values
    // made beforehand, so this is Pingora's header API alone.
    let writes: Vec<(bytes::Bytes, http::HeaderValue)> = [
        ("SSL-CLIENT-S-DN", cc.subject_dn.as_str()),
        ("SSL-CLIENT-CERT", pem.to_str().unwrap()),
        ("SSL-CLIENT-VERIFY", "SUCCESS"),
        ("X-Env", "production"),
        ("X-Api", "yes"),
    ]
    .iter()
    .map(|(n, v)| {
        (
            bytes::Bytes::from_static(n.as_bytes()),
            http::HeaderValue::from_str(v).unwrap(),
        )
    })
    .collect();
    let via = http::HeaderValue::from_static("1.1 floodgate");
    g.bench_function("pingora_6_writes", |b| {
        b.iter(|| {
            let mut r = req.clone();
            for (n, v) in black_box(&writes) {
                r.insert_header(n.clone(), v.clone()).unwrap();
            }
            r.append_header(bytes::Bytes::from_static(b"Via"), via.clone())
                .unwrap();
            black_box(r)
        })
    });
    g.bench_function("pingora_1_insert", |b| {
        b.iter(|| {
            let mut r = req.clone();
            r.insert_header("X-Env", "production").unwrap();
            black_box(r)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
