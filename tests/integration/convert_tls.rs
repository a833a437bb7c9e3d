//! `floodgate convert` of upstream TLS (issue 14): HAProxy's `server ... ssl verify ca-file crt
//! sni` and Apache's `SSLProxy*` with `https://` members become the upstream's `tls:`; the
//! converted configs pass `check` and, on a real gateway, reach HTTPS origins that require a
//! client certificate (HAProxy's and Apache's one-PEM certificate + key files included).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::convert::{fixture, run_convert};
use crate::tls::make_pki;
use crate::upstream_tls::tls_origin;
use std::path::Path;

/// The test PKI, plus `bundle.pem`: the client certificate and its key in one file.
fn pki(tag: &str) -> Scratch {
    let dir = Scratch::new(tag);
    make_pki(&dir.0);
    let one = [
        std::fs::read_to_string(dir.path("client.pem")).unwrap(),
        std::fs::read_to_string(dir.path("client.key")).unwrap(),
    ]
    .concat();
    dir.write("bundle.pem", &one);
    dir
}

/// GETs `/catalog` through a gateway on the converted `yaml` (its listener moved to a free
/// port); the origin's body, which names the client certificate it saw.
async fn through(yaml: &str, bind: &str) -> String {
    let gw = TestGateway::start(&yaml.replace(bind, "127.0.0.1:{PORT}")).await;
    let c = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let last = match c.get(gw.url("/catalog")).send().await {
            Ok(r) if r.status() == 200 => return r.text().await.unwrap_or_default(),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "the converted config reaches the HTTPS origin: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_server_ssl_options_convert_to_tls_that_reaches_an_mtls_origin() {
    let pki = pki("convert-tls-haproxy");
    let o = tls_origin(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .await;
    let cfg = fixture("puppet-tls-haproxy.cfg")
        .replace(
            "/etc/haproxy/puppet-ca.pem",
            &pki.path("ca.pem").display().to_string(),
        )
        .replace(
            "/etc/haproxy/floodgate.pem",
            &pki.path("bundle.pem").display().to_string(),
        )
        .replace("127.0.0.1:18140", &o.addr.to_string())
        .replace("127.0.0.1:18141", &o.addr.to_string())
        .replace("/status/v1/simple", "/health");
    let file = pki.write("haproxy.cfg", &cfg);
    let (ok, stderr, yaml) = run_convert("haproxy", Path::new(&file));
    assert!(ok, "convert + check succeed:\n{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    for note in [
        "line 18: approximated: server master1: crt ",
        "line 19: not converted: server master2: TLS option alpn http/1.1",
    ] {
        assert!(stderr.contains(note), "{note:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("differ from"),
        "same TLS on both: {stderr}"
    );
    let y: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let tls = &y["upstreams"]["masters"]["tls"];
    assert_eq!(tls["verify"], true);
    assert_eq!(tls["sni"], "localhost");
    assert_eq!(tls["cert"], tls["key"], "one PEM for both: {tls:?}");
    let body = through(&yaml, "0.0.0.0:8140").await;
    assert!(
        body.contains("client=CN=client.example.com"),
        "the origin saw the certificate from the one-PEM crt: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_sslproxy_directives_convert_to_tls_that_reaches_an_mtls_origin() {
    let pki = pki("convert-tls-apache");
    let o = tls_origin(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .await;
    let conf = fixture("foreman-https-balancer.conf")
        .replace(
            "/etc/pki/katello/certs/katello-default-ca.crt",
            &pki.path("ca.pem").display().to_string(),
        )
        .replace(
            "/etc/httpd/foreman-client.pem",
            &pki.path("bundle.pem").display().to_string(),
        )
        .replace("localhost:13000", &format!("localhost:{}", o.addr.port()));
    let file = pki.write("foreman-https.conf", &conf);
    let (ok, stderr, yaml) = run_convert("apache", Path::new(&file));
    assert!(ok, "convert + check succeed:\n{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    assert!(
        stderr.contains("line 13: approximated: SSLProxyMachineCertificateFile"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("SSLProxyEngine"),
        "all SSLProxy lines converted: {stderr}"
    );
    assert!(!stderr.contains("SSLProxyCheckPeerExpire"), "{stderr}");
    let y: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let tls = &y["upstreams"]["foreman"]["tls"];
    assert_eq!(tls["verify"], true, "SSLProxyVerify require: {tls:?}");
    assert!(
        tls.get("verify_hostname").is_none(),
        "the name is checked: {tls:?}"
    );
    assert_eq!(tls["cert"], tls["key"], "{tls:?}");
    let body = through(&yaml, "0.0.0.0:443").await;
    assert!(
        body.contains("client=CN=client.example.com"),
        "the origin saw Apache's machine certificate: {body}"
    );
}
