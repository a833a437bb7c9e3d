//! HTTPS upstreams through Pingora's connector: CA bundle, verification, SNI and a client
//! certificate for floodgate itself, for requests and for active health checks. The origins
//! are real TLS servers on 127.0.0.1 with certificates made at test time by the openssl CLI.

use crate::common::*;
use crate::tls::{make_pki, sh};
use pingora_core::tls::ssl::{NameType, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use pingora_core::tls::tokio_ssl::SslStream;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// An HTTPS origin: answers every request `200` with a body naming the client certificate's
/// subject (`client=CN=...` or `client=none`) and the path. With `client_ca` it requires a
/// client certificate signed by that CA.
pub(crate) struct TlsOrigin {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn tls_origin(cert: &Path, key: &Path, client_ca: Option<&Path>) -> TlsOrigin {
    tls_origin_with(cert, key, client_ca, false).await
}

/// With `sni_host_check`, a request whose `Host` (port left out) is not the SNI gets `400`,
/// as Jetty (puppetserver, PuppetDB) answers `400 Host does not match SNI`.
async fn tls_origin_with(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    sni_host_check: bool,
) -> TlsOrigin {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate_chain_file(cert).unwrap();
    b.set_private_key_file(key, SslFiletype::PEM).unwrap();
    if let Some(ca) = client_ca {
        b.set_ca_file(ca).unwrap();
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    let acceptor = Arc::new(b.build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let ssl = pingora_core::tls::ssl::Ssl::new(acceptor.context()).unwrap();
                let mut s = SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                let Some(buf) = crate::common::read_head(&mut s).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let host = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let host_name = host.rsplit_once(':').map_or(host.as_str(), |(n, _)| n);
                let sni = s.ssl().servername(NameType::HOST_NAME).unwrap_or("");
                if sni_host_check && host_name != sni {
                    let body = "Host does not match SNI\n";
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                    return;
                }
                let client = s
                    .ssl()
                    .peer_certificate()
                    .and_then(|c| {
                        c.subject_name()
                            .entries()
                            .next()
                            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
                    })
                    .map(|cn| format!("CN={cn}"))
                    .unwrap_or_else(|| "none".into());
                let body = format!("tls-origin path={path} client={client}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    TlsOrigin { addr, hits, task }
}

fn gateway_yaml(addr: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
upstreams:
  secure:
    servers: [{{ name: s1, addr: "{addr}" }}]
    tls: {tls}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: secure }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_with_the_right_ca_and_client_certificate_is_reached_over_mtls_and_health_checked()
{
    let pki = Scratch::new("up-mtls");
    make_pki(&pki.0);
    let o = tls_origin(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .await;
    let p = pki.0.display();
    let tls = format!(
        r#"{{ ca: "{p}/ca.pem", sni: localhost, cert: "{p}/client.pem", key: "{p}/client.key" }}
    health: {{ path: /health, interval: 200ms, timeout: 2s }}"#
    );
    let gw = TestGateway::start(&gateway_yaml(o.addr, &tls)).await;
    // why: an actively checked server starts down; a 200 needs a passed check over mTLS.
    let r = client().get(gw.url("/catalog")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the mTLS upstream answers through floodgate"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("path=/catalog") && body.contains("client=CN=client.example.com"),
        "the origin saw floodgate's client certificate: {body}"
    );
    assert!(
        gw.metric(
            "floodgate_health_checks_total",
            &[("upstream", "secure"), ("result", "pass")]
        )
        .await
            >= 1.0,
        "the health check passed over TLS with the client certificate"
    );
    assert!(
        o.hits.load(Ordering::SeqCst) >= 2,
        "check and request hit the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_checks_send_the_sni_as_host_so_a_jetty_style_server_answers_200() {
    let pki = Scratch::new("up-snihost");
    make_pki(&pki.0);
    let o = tls_origin_with(&pki.path("server.pem"), &pki.path("server.key"), None, true).await;
    let tls = format!(
        r#"{{ ca: "{}/ca.pem", sni: localhost }}
    health: {{ path: /status/v1/simple, interval: 100ms, timeout: 2s, expect: 2xx }}"#,
        pki.0.display()
    );
    let gw = TestGateway::start(&gateway_yaml(o.addr, &tls)).await;
    let pass = [("upstream", "secure"), ("result", "pass")];
    let bad = [("upstream", "secure"), ("result", "bad_status")];
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            gw.metric("floodgate_health_checks_total", &pass).await >= 2.0
        })
        .await,
        "checks with Host = SNI pass (Host = the address would get 400)"
    );
    assert_eq!(
        gw.metric("floodgate_health_checks_total", &bad).await,
        0.0,
        "no check was answered 400"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_with_the_wrong_ca_gets_502_and_a_log_naming_the_tls_failure() {
    let logs = logcap::install();
    let pki = Scratch::new("up-wrongca");
    make_pki(&pki.0);
    let other = Scratch::new("up-otherca");
    make_pki(&other.0);
    let o = tls_origin(&pki.path("server.pem"), &pki.path("server.key"), None).await;
    let tls = format!(
        r#"{{ ca: "{}/ca.pem", sni: localhost }}"#,
        other.0.display()
    );
    let gw = TestGateway::start(&gateway_yaml(o.addr, &tls).replace("secure", "wrongca")).await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "a server certificate from another CA is refused"
    );
    assert_eq!(o.hits.load(Ordering::SeqCst), 0, "no request reached it");
    if logs {
        assert!(
            eventually(std::time::Duration::from_secs(2), || async {
                !logcap::matching(&["upstream wrongca", "TLS handshake failed", "InvalidCert"])
                    .is_empty()
            })
            .await,
            "the log names the upstream and the certificate failure"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requiring_a_client_certificate_refuses_floodgate_without_one() {
    let pki = Scratch::new("up-nocert");
    make_pki(&pki.0);
    let o = tls_origin(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .await;
    let tls = format!(r#"{{ ca: "{}/ca.pem", sni: localhost }}"#, pki.0.display());
    let gw = TestGateway::start(&gateway_yaml(o.addr, &tls)).await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502, "no client certificate: the origin refuses");
    assert_eq!(o.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_false_reaches_a_self_signed_origin_that_verify_true_refuses() {
    let d = Scratch::new("up-selfsigned");
    sh(
        &d.0,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ],
    );
    let o = tls_origin(&d.path("self.pem"), &d.path("self.key"), None).await;
    let off = TestGateway::start(&gateway_yaml(o.addr, "{ verify: false }")).await;
    let r = client().get(off.url("/plain")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "verify: false accepts a self-signed certificate"
    );
    assert!(r.text().await.unwrap().contains("client=none"));
    drop(off);
    let on = TestGateway::start(&gateway_yaml(o.addr, "{ sni: localhost }")).await;
    let r = client().get(on.url("/plain")).send().await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "verification on refuses the self-signed certificate"
    );
}

#[test]
fn tls_config_errors_name_the_key_the_value_and_the_fix() {
    let d = Scratch::new("up-tlscfg");
    let junk = d.write("junk.pem", "not a certificate\n");
    let yaml = format!(
        r#"
listeners: [{{ bind: "127.0.0.1:8080" }}]
upstreams:
  a: {{ servers: [{{ addr: "127.0.0.1:1" }}], tls: {{ ca: "{junk}", cert: "{junk}" }} }}
  b: {{ servers: [{{ addr: "127.0.0.1:2" }}], tls: {{ key: missing.key, cert: missing.pem, verify: false }} }}
routes: [{{ name: r, upstream: a }}]
"#
    );
    let err = floodgate::config::parse_config(&yaml, &d.path("floodgate.yaml"))
        .expect_err("bad tls blocks are refused")
        .to_string();
    for needle in [
        "upstreams.a.tls.ca",
        "holds no PEM certificate",
        "upstreams.a.tls.key",
        "cert is set without key",
        "upstreams.a.tls.sni",
        "set sni:",
        "upstreams.b.tls.cert",
        "\"missing.pem\" cannot be read",
    ] {
        assert!(err.contains(needle), "error mentions {needle:?}: {err}");
    }
    assert!(
        !err.contains("upstreams.b.tls.sni"),
        "verify: false needs no sni: {err}"
    );
}
