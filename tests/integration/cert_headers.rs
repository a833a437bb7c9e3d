//! `listeners[].client_cert_headers`: the Puppet style (`X-Client-Verify`, `X-Client-DN`,
//! `X-Client-Cert` URL-encoded, as puppetserver reads them with `allow-header-cert-info`) and
//! explicit names, on mTLS listeners in front of an origin that echoes the headers it got.
//! Client copies of every style's names are removed in every spelling.

use crate::common::*;
use crate::tls::{curl, make_pki};

fn port_of(gw: &TestGateway, i: usize) -> String {
    let cfg = gw.state.snapshot().config.clone();
    cfg.listeners[i]
        .bind
        .rsplit(':')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppet_and_explicit_styles_send_the_certificate_under_their_names_and_strip_forgeries() {
    let a = origin("a").await;
    let pki = Scratch::new("certhdr");
    make_pki(&pki.0);
    let p = pki.0.display().to_string();
    let gw = TestGateway::start(
        &format!(
            r#"
listeners:
  - {{ name: puppet, bind: "127.0.0.1:{{PORT}}", client_cert_headers: puppet, tls: {{ cert: "{p}/server.pem", key: "{p}/server.key", client_ca: "{p}/ca.pem", client_auth: optional }} }}
  - {{ name: custom, bind: "127.0.0.1:{{CUSTOM}}", tls: {{ cert: "{p}/server.pem", key: "{p}/server.key", client_ca: "{p}/ca.pem", client_auth: optional }},
       client_cert_headers: {{ verify: X-SSL-Verify, dn: X-SSL-Subject, cert: X-SSL-Cert, cert_format: urlencoded }} }}
upstreams:
  a: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: a }}
"#,
            a.addr()
        )
        .replace("{CUSTOM}", &free_port().to_string()),
    )
    .await;
    let ca = format!("{p}/ca.pem");
    let cert = format!("{p}/client.pem");
    let key = format!("{p}/client.key");
    let puppet = format!("https://localhost:{}/echo", port_of(&gw, 0));
    let custom = format!("https://localhost:{}/echo", port_of(&gw, 1));

    let (ok, body) = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &puppet]);
    assert!(ok, "mTLS request through the puppet-style listener");
    let j: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    let h = &j["headers"];
    assert_eq!(h["x-client-verify"], "SUCCESS", "verify header: {body}");
    assert_eq!(
        h["x-client-dn"], "CN=client.example.com",
        "RFC 2253 DN: {body}"
    );
    let pem = std::fs::read_to_string(&cert).unwrap();
    let mut encoded = String::new();
    floodgate::tlsinfo::url_encode(&pem, &mut encoded);
    assert_eq!(
        h["x-client-cert"],
        encoded.as_str(),
        "URL-encoded PEM: {body}"
    );
    assert!(
        h.get("ssl-client-verify").is_none() && h.get("ssl-client-cert").is_none(),
        "the foreman names are not sent in the puppet style: {body}"
    );

    // A client without a certificate forges every style, in odd spellings.
    let (ok, body) = curl(&[
        "--cacert",
        &ca,
        "-H",
        "X_Client_Verify: SUCCESS",
        "-H",
        "x-client_dn: CN=admin",
        "-H",
        "SSL_CLIENT_S_DN: CN=admin",
        "-H",
        "X_SSL_Subject: CN=admin",
        &puppet,
    ]);
    assert!(ok);
    let j: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(
        j["headers"]["x-client-verify"], "NONE",
        "without a certificate the verify header says NONE: {body}"
    );
    assert!(
        !body.contains("CN=admin"),
        "forged identities are removed: {body}"
    );

    let (ok, body) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-H",
        "x_ssl_subject: CN=admin",
        "-H",
        "X-SSL-VERIFY: SUCCESS",
        &custom,
    ]);
    assert!(ok, "mTLS request through the explicit-style listener");
    let j: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    let h = &j["headers"];
    assert_eq!(h["x-ssl-verify"], "SUCCESS", "{body}");
    assert_eq!(h["x-ssl-subject"], "CN=client.example.com", "{body}");
    assert_eq!(h["x-ssl-cert"], encoded.as_str(), "{body}");
    assert!(
        !body.contains("CN=admin"),
        "a forged explicit name is removed: {body}"
    );
    assert!(
        h.get("x-client-verify").is_none() && h.get("ssl-client-s-dn").is_none(),
        "only the listener's own names are sent: {body}"
    );
}

#[test]
fn client_cert_headers_errors_name_the_key_the_value_and_the_fix() {
    let yaml = r#"
listeners:
  - { bind: "127.0.0.1:8080", client_cert_headers: apache }
  - { bind: "127.0.0.1:8081", client_cert_headers: { verify: "bad name", cert_format: base64, issuer: X-I } }
upstreams: { a: { servers: [{ addr: "127.0.0.1:1" }] } }
routes: [{ name: r, upstream: a }]
"#;
    let err = floodgate::config::parse_config(yaml, std::path::Path::new("/tmp/f.yaml"))
        .expect_err("refused")
        .to_string();
    for needle in [
        "listeners[0].client_cert_headers: String(\"apache\") is not a choice; use foreman, puppet",
        "listeners[1].client_cert_headers.verify",
        "is not a header name",
        "listeners[1].client_cert_headers.cert_format",
        "use flat (newlines as spaces) or urlencoded",
        "listeners[1].client_cert_headers.issuer",
    ] {
        assert!(err.contains(needle), "error mentions {needle:?}: {err}");
    }
}
