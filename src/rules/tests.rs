use super::compile::rules;
use super::forwarding::{ForwardMode, Forwarding};
use super::template::Template;
use super::*;
use crate::config::spec::HeaderRuleSpec;
use crate::tlsinfo::ClientCert;

fn compile(yaml: &str) -> Result<HeaderRules, compile::Problems> {
    let specs: Vec<HeaderRuleSpec> = serde_yaml::from_str(yaml).expect("yaml");
    let mut out = Vec::new();
    let r = rules("routes[0].request_headers", &specs, &mut out);
    if out.is_empty() {
        Ok(r)
    } else {
        Err(out)
    }
}

fn cert(cn: &str) -> ClientCert {
    ClientCert {
        subject_dn: format!("CN={cn},O=Example Org,C=US"),
        subject_dn_legacy: format!("/C=US/O=Example Org/CN={cn}"),
        issuer_dn: "CN=Test CA".into(),
        issuer_dn_legacy: "/CN=Test CA".into(),
        cn: cn.into(),
        serial: "1A2B".into(),
        pem: "-----BEGIN CERTIFICATE-----\nAB+/=\n-----END CERTIFICATE-----\n".into(),
        pem_flat: "-----BEGIN CERTIFICATE----- AB+/= -----END CERTIFICATE-----".into(),
        verify: "SUCCESS".into(),
        values: Default::default(),
    }
    .with_values()
}

fn facts<'a>(c: Option<&'a ClientCert>) -> Facts<'a> {
    Facts {
        cert: c,
        client_ip: Some("10.0.0.7"),
        https: c.is_some(),
        method: "GET",
        path: "/pulp/api/v3/status",
        query: Some("a=1"),
        host: "foreman.example.com",
        server_name: "gw1.example.com",
    }
}

fn map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut m = http::HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    m
}

#[test]
fn templates_render_every_connection_fact() {
    let c = cert("host1.example.com");
    let t = Template::parse(
        "%{ssl_client_s_dn}|%{ssl_client_s_dn_legacy}|%{ssl_client_i_dn}|%{ssl_client_s_dn_cn}|%{ssl_client_serial}|%{ssl_client_verify}|%{remote_addr}|%{scheme}|%{host}%{request_uri}|%{server_name}|100%%",
    )
    .unwrap();
    assert_eq!(
        t.render(&facts(Some(&c))),
        "CN=host1.example.com,O=Example Org,C=US|/C=US/O=Example Org/CN=host1.example.com|CN=Test CA|host1.example.com|1A2B|SUCCESS|10.0.0.7|https|foreman.example.com/pulp/api/v3/status?a=1|gw1.example.com|100%"
    );
    let esc = Template::parse("%{ssl_client_escaped_cert}").unwrap();
    assert_eq!(
        esc.render(&facts(Some(&c))),
        "-----BEGIN%20CERTIFICATE-----%0AAB%2B%2F%3D%0A-----END%20CERTIFICATE-----%0A"
    );
    let raw = Template::parse("%{ssl_client_cert}").unwrap();
    assert!(!raw.render(&facts(Some(&c))).contains('\n'));
    assert_eq!(raw.render(&facts(None)), "", "no certificate: empty");
}

#[test]
fn template_errors_name_the_fix() {
    for (bad, want) in [
        ("%{ssl_client_dn}", "unknown variable"),
        ("%{host", "not closed"),
        ("50% off", "lone `%`"),
    ] {
        let e = Template::parse(bad).unwrap_err();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn set_add_and_remove_in_every_spelling_and_by_prefix() {
    let r = compile(
        r#"
- { remove: "REMOTE-USER*" }
- { remove: SSL_CLIENT_VERIFY }
- { set: X-Env, value: prod }
- { add: X-Multi, value: two }
- { set: SSL-CLIENT-S-DN, value: "%{ssl_client_s_dn}" }
"#,
    )
    .unwrap();
    let mut h = map(&[
        ("remote_user", "x"),
        ("remote-user_email", "x"),
        ("REMOTE_USER-GROUPS", "x"),
        ("remoteuser", "kept: not the family"),
        ("ssl-client-verify", "forged"),
        ("x-env", "dev"),
        ("x-env", "dev2"),
        ("x-multi", "one"),
    ]);
    let c = cert("h");
    r.apply(&facts(Some(&c)), &mut h);
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    for gone in [
        "remote_user",
        "remote-user_email",
        "remote_user-groups",
        "ssl-client-verify",
    ] {
        assert!(!names.contains(&gone), "{gone} removed: {names:?}");
    }
    assert!(names.contains(&"remoteuser"));
    let all = |n: &str| -> Vec<&str> { h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
    assert_eq!(all("x-env"), ["prod"], "set replaces every value");
    assert_eq!(all("x-multi"), ["one", "two"], "add appends");
    assert_eq!(all("ssl-client-s-dn"), ["CN=h,O=Example Org,C=US"]);
}

#[test]
fn conditions_cert_cn_header_method_path_and_not() {
    let r = compile(
        r#"
- { set: REMOTE-USER, value: admin, if: { cert_cn: foreman.example.com, path_prefix: /pulp/api/v3 } }
- { set: X-One-Of, value: "y", if: { cert_cn: [a.example.com, b.example.com] } }
- { set: X-Has-Auth, value: "y", if: { header: { name: Authorization } } }
- { set: X-Bearer, value: "y", if: { header: { name: Authorization, matches: "^Bearer [a-z]+$" } } }
- { set: X-Basic, value: "y", if: { header: { name: Authorization, prefix: "Basic " } } }
- { set: X-Post, value: "y", if: { method: [post, PUT] } }
- { set: X-Not-Pulp, value: "y", if: { not: { path_prefix: /pulp } } }
- { set: X-Unverified, value: "y", if: { cert_verified: false } }
"#,
    )
    .unwrap();
    let get = |c: Option<&ClientCert>, f: &dyn Fn(&mut Facts), h: &[(&str, &str)]| {
        let mut m = map(h);
        let mut fa = facts(c);
        f(&mut fa);
        r.apply(&fa, &mut m);
        let mut names: Vec<String> = m
            .keys()
            .map(|k| k.to_string())
            .filter(|k| k.starts_with("x-") || k == "remote-user")
            .collect();
        names.sort();
        names
    };
    let own = cert("foreman.example.com");
    assert_eq!(get(Some(&own), &|_| {}, &[]), ["remote-user"]);
    let mut unverified = own.clone();
    unverified.verify = "FAILED:expired".into();
    assert_eq!(
        get(Some(&unverified), &|_| {}, &[]),
        ["x-unverified"],
        "an unverified CN counts for nothing"
    );
    assert_eq!(
        get(Some(&own), &|f| f.path = "/pulp/content/x", &[]),
        Vec::<String>::new()
    );
    assert_eq!(
        get(Some(&cert("host1")), &|_| {}, &[]),
        Vec::<String>::new(),
        "another CN"
    );
    assert_eq!(
        get(Some(&cert("b.example.com")), &|_| {}, &[]),
        ["x-one-of"]
    );
    assert_eq!(
        get(None, &|_| {}, &[("authorization", "Bearer abc")]),
        ["x-bearer", "x-has-auth", "x-unverified"]
    );
    assert_eq!(
        get(None, &|_| {}, &[("authorization", "Basic Zm9v")]),
        ["x-basic", "x-has-auth", "x-unverified"]
    );
    assert_eq!(
        get(
            Some(&own),
            &|f| {
                f.method = "PUT";
                f.path = "/api"
            },
            &[]
        ),
        ["x-not-pulp", "x-post"]
    );
}

#[test]
fn a_condition_sees_the_headers_earlier_rules_left() {
    let r = compile(
        r#"
- { remove: X-Flag }
- { set: X-Seen, value: "y", if: { header: { name: X-Flag } } }
"#,
    )
    .unwrap();
    let mut m = map(&[("x-flag", "1")]);
    r.apply(&facts(None), &mut m);
    assert!(m.get("x-seen").is_none());
}

#[test]
fn check_reports_each_bad_rule_with_its_key_path() {
    let e = compile(
        r#"
- { set: X-A }
- { set: X-B, add: X-C, value: v }
- { remove: "*" }
- { remove: X-D, value: v }
- { set: "bad name", value: v }
- { set: Content-Length, value: "1" }
- { set: X-E, value: "%{nope}" }
- { set: X-F, value: v, if: { header: { name: X, matches: "(" } } }
- { set: X-G, value: v, if: { method: "GE T" } }
- { set: X-H, value: v, if: {} }
- { add: "X-I*", value: v }
"#,
    )
    .unwrap_err();
    let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
    for want in [
        "routes[0].request_headers[0].value",
        "routes[0].request_headers[1]",
        "routes[0].request_headers[2].remove",
        "routes[0].request_headers[3].value",
        "routes[0].request_headers[4].set",
        "routes[0].request_headers[5].set",
        "routes[0].request_headers[6].value",
        "routes[0].request_headers[7].if.header.matches",
        "routes[0].request_headers[8].if.method",
        "routes[0].request_headers[9].if",
        "routes[0].request_headers[10].add",
    ] {
        assert!(paths.contains(&want), "{want} reported: {e:?}");
    }
    assert!(
        e.iter().all(|(_, m)| m.len() > 20),
        "every message explains: {e:?}"
    );
}

#[test]
fn forwarding_append_replace_off_and_rfc7239() {
    let f = facts(None);
    let client = [
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
    ];
    let fw = |mode, rfc7239| Forwarding {
        mode,
        rfc7239,
        server: Some(HeaderValue::from_static("gw1.example.com")),
    };
    let hv = HeaderValue::from_static;
    let mut m = map(&client);
    fw(ForwardMode::Append, false).apply(&f, Some(&hv("foreman.example.com:8443")), &mut m);
    assert_eq!(m["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
    assert_eq!(
        m["x-forwarded-host"],
        "evil.example, foreman.example.com:8443"
    );
    assert_eq!(m["x-forwarded-server"], "gw1.example.com");
    assert_eq!(m["x-forwarded-proto"], "http", "never the client's claim");
    assert!(m.get("forwarded").is_none());

    let mut m = map(&client);
    fw(ForwardMode::Replace, true).apply(&f, Some(&hv("h")), &mut m);
    assert_eq!(m["x-forwarded-for"], "10.0.0.7");
    assert_eq!(m["x-forwarded-host"], "h");
    assert_eq!(m["forwarded"], "for=10.0.0.7;host=\"h\";proto=http");

    let mut m = map(&[("forwarded", "for=1.2.3.4")]);
    let mut f6 = f;
    f6.client_ip = Some("::1");
    fw(ForwardMode::Append, true).apply(&f6, None, &mut m);
    assert_eq!(m["forwarded"], "for=1.2.3.4, for=\"[::1]\";proto=http");

    let mut m = map(&client);
    fw(ForwardMode::Off, true).apply(&f, Some(&hv("h")), &mut m);
    assert_eq!(m, map(&client), "off: the client's values pass as sent");
}

#[test]
fn run_time_removal_folds_spellings_and_takes_prefixes() {
    let mut m = map(&[
        ("x_debug", "1"),
        ("X-DEBUG", "2"),
        ("remote-user_email", "x"),
        ("accept", "*/*"),
    ]);
    remove_by_name("X-Debug", &mut m);
    remove_by_name("REMOTE_USER*", &mut m);
    remove_by_name("*", &mut m);
    remove_by_name("", &mut m);
    let names: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["accept"]);
}
