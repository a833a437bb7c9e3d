//! TLS and mTLS listeners, with certificates made at test time by the openssl CLI.

use crate::common::*;
use std::path::Path;
use std::process::Command;

pub(crate) fn sh(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost, and a client certificate, all signed by the CA.
pub(crate) fn make_pki(dir: &Path) {
    sh(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=floodgate test CA",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for who in ["server", "client"] {
        let cn = format!("/CN={who}.example.com");
        sh(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &cn,
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "",
            "-days",
            "2",
        ];
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        args[3] = &csr;
        args[10] = &pem;
        if who == "server" {
            args.extend(["-extfile", "san.ext"]);
        }
        sh(dir, &args);
    }
}

pub(crate) fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_https_and_mtls_require_refuses_clients_without_a_certificate() {
    let a = origin("a").await;
    let pki = temp_dir("pki");
    make_pki(&pki);
    let p = pki.display().to_string();
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - {{ name: https, bind: "127.0.0.1:{{PORT}}", tls: {{ cert: "{p}/server.pem", key: "{p}/server.key" }} }}
  - {{ name: mtls, bind: "127.0.0.1:{{MTLS}}", tls: {{ cert: "{p}/server.pem", key: "{p}/server.key", client_ca: "{p}/ca.pem", client_auth: require }} }}
upstreams:
  a: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: a }}
"#,
        a.addr()
    )
    .replace("{MTLS}", &free_port().to_string()))
    .await;
    let cfg = gw.state.snapshot().config.clone();
    let https = format!("https://localhost:{}/echo", gw.port);
    let mtls_port = cfg.listeners[1]
        .bind
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let mtls = format!("https://localhost:{mtls_port}/echo");
    let ca = format!("{p}/ca.pem");

    let (ok, body) = curl(&["--cacert", &ca, &https]);
    assert!(ok, "HTTPS request through the TLS listener succeeds");
    assert!(
        body.contains("\"x-forwarded-proto\":\"https\""),
        "the upstream learns the client used https: {body}"
    );

    let (ok, _) = curl(&["--cacert", &ca, &mtls]);
    assert!(
        !ok,
        "client_auth: require refuses a client without a certificate"
    );
    let (ok, body) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &format!("{p}/client.pem"),
        "--key",
        &format!("{p}/client.key"),
        &mtls,
    ]);
    assert!(ok, "a client certificate signed by client_ca is accepted");
    assert!(body.contains("\"origin\":\"a\""), "and proxied: {body}");
    assert!(
        body.contains("\"ssl-client-verify\":\"SUCCESS\""),
        "Apache-style verify header: {body}"
    );
    assert!(
        body.contains("\"ssl-client-s-dn\":\"CN=client.example.com\""),
        "subject DN header: {body}"
    );
    assert!(
        body.contains("\"ssl-client-cert\":\"-----BEGIN CERTIFICATE-----"),
        "flattened PEM header: {body}"
    );

    let (ok, body) = curl(&[
        "--cacert",
        &ca,
        "-H",
        "SSL-Client-Verify: SUCCESS",
        "-H",
        "SSL-Client-S-DN: CN=admin",
        "-H",
        "Remote-User: admin",
        &https,
    ]);
    assert!(ok);
    assert!(
        body.contains("\"ssl-client-verify\":\"NONE\""),
        "a spoofed verify header is replaced: {body}"
    );
    assert!(
        !body.contains("CN=admin") && !body.contains("remote-user"),
        "spoofed identity headers are removed: {body}"
    );
    let _ = std::fs::remove_dir_all(&pki);
}

/// `curl` with the response head on stdout before the body: (x-cache, body).
fn curl_cached(args: &[&str]) -> (String, serde_json::Value) {
    let (ok, out) = curl(&[&["-D", "-"], args].concat());
    assert!(ok, "curl {args:?} succeeds");
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    let x_cache = head
        .lines()
        .find_map(|l| l.strip_prefix("x-cache: ").or(l.strip_prefix("X-Cache: ")))
        .unwrap_or("")
        .trim()
        .to_string();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (x_cache, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_fill_on_an_mtls_listener_carries_the_real_certificate_and_keys_on_it() {
    // Issue 12: the fill goes through the proxy path, so the app sees the certificate headers
    // of the client whose request filled the cache, and a client with another (or no)
    // certificate never gets that answer. curl negotiates HTTP/2 here (ALPN), which Pingora
    // cannot build a subrequest from as is: every fill of an HTTP/2 client used to fail.
    let a = origin("a").await;
    let pki = temp_dir("pki-cache");
    make_pki(&pki);
    let p = pki.display().to_string();
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - {{ name: mtls, bind: "127.0.0.1:{{PORT}}", tls: {{ cert: "{p}/server.pem", key: "{p}/server.key", client_ca: "{p}/ca.pem", client_auth: optional }} }}
access_log: {{ enabled: false }}
upstreams:
  a: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: cached, match: {{ path_prefix: /echo }}, upstream: a, cache: {{ ttl: 60s }} }}
"#,
        a.addr()
    ))
    .await;
    let url = format!("https://localhost:{}/echo?k=1", gw.port);
    let ca = format!("{p}/ca.pem");
    let (cert, key) = (format!("{p}/client.pem"), format!("{p}/client.key"));
    let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key, &url];

    let (x, first) = curl_cached(&with_cert);
    assert_eq!(x, "MISS");
    let seen = &first["headers"];
    assert_eq!(seen["ssl-client-verify"], "SUCCESS", "{first}");
    assert_eq!(seen["ssl-client-s-dn"], "CN=client.example.com", "{first}");
    assert_eq!(seen["x-forwarded-proto"], "https", "{first}");

    let (x, forged) = curl_cached(&[
        "--cacert",
        &ca,
        "-H",
        "SSL-Client-Verify: SUCCESS",
        "-H",
        "SSL-Client-S-DN: CN=client.example.com",
        &url,
    ]);
    assert_eq!(x, "MISS", "no certificate, another key: {forged}");
    assert_eq!(forged["headers"]["ssl-client-verify"], "NONE", "{forged}");
    assert_ne!(
        forged["seq"], first["seq"],
        "not the certificate holder's answer"
    );

    let (x, again) = curl_cached(&with_cert);
    assert_eq!(x, "HIT");
    assert_eq!(
        again["seq"], first["seq"],
        "the holder's answer, from the cache"
    );
    let (x, h1) = curl_cached(&[&["--http1.1"], &with_cert[..]].concat());
    assert_eq!(x, "HIT", "HTTP/1.1 and HTTP/2 clients share the entry");
    assert_eq!(h1["seq"], first["seq"]);
    let _ = std::fs::remove_dir_all(&pki);
}
