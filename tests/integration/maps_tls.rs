//! HTTPS map sources (issue 14): the poller fetches a map from an HTTPS server on 127.0.0.1
//! that requires a client certificate (as PuppetDB on 8081 does), with the `tls:` block of
//! upstreams (`ca`, `verify`, `sni`, `cert`, `key`), and routing follows the polled map. With
//! the wrong CA the fetch fails, is counted and logged, and the last good map stays.
//! Certificates are made at test time by the openssl CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::maps::{masters, node};
use crate::tls::make_pki;
use pingora_core::tls::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use pingora_core::tls::tokio_ssl::SslStream;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// An HTTPS map server requiring a client certificate signed by `client_ca`; answers every
/// GET with the current body. `served` counts answers (completed handshakes only).
struct TlsMapServer {
    addr: std::net::SocketAddr,
    body: Arc<parking_lot::Mutex<String>>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsMapServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsMapServer {
    async fn start(cert: &Path, key: &Path, client_ca: &Path, body: &str) -> TlsMapServer {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        b.set_certificate_chain_file(cert).unwrap();
        b.set_private_key_file(key, SslFiletype::PEM).unwrap();
        b.set_ca_file(client_ca).unwrap();
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        let acceptor = Arc::new(b.build());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(parking_lot::Mutex::new(body.to_string()));
        let served = Arc::new(AtomicUsize::new(0));
        let (bd, sv) = (body.clone(), served.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, bd, sv) = (acceptor.clone(), bd.clone(), sv.clone());
                tokio::spawn(async move {
                    let ssl = Ssl::new(acceptor.context()).unwrap();
                    let mut s = SslStream::new(ssl, tcp).unwrap();
                    if Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    if crate::common::read_head(&mut s).await.is_none() {
                        return;
                    }
                    let text = bd.lock().clone();
                    sv.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        TlsMapServer {
            addr,
            body,
            served,
            task,
        }
    }
}

/// A gateway routing by the map `nodes`, polled from `url` every 200ms with the given `tls:`
/// block, and `extra` map keys (e.g. a `file:` holding the starting map).
async fn gateway(ms: &[OriginHandle], url: &str, tls: &str, extra: &str) -> TestGateway {
    let servers = ms
        .iter()
        .map(|o| format!("{{ name: {}, addr: \"{}\" }}", o.name(), o.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    TestGateway::start(&format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
access_log: {{ enabled: false }}
upstreams:
  puppet: {{ servers: [{servers}] }}
maps:
  nodes: {{ {extra}source: {{ url: "{url}", every: 200ms, timeout: 2s, tls: {tls} }} }}
routes:
  - {{ name: puppet, match: {{ path_prefix: / }}, upstream: puppet, pick_server: {{ map: nodes, key: "header:X-Node-Name", on_miss: reject }} }}
"#
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_map_source_with_a_client_certificate_routes_and_a_wrong_ca_keeps_the_old_map() {
    let logs = logcap::install();
    let pki = Scratch::new("maps-tls");
    make_pki(&pki.0);
    let other = Scratch::new("maps-tls-other");
    make_pki(&other.0);
    let ms = masters().await;
    let src = TlsMapServer::start(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.path("ca.pem"),
        "node1 master1\n",
    )
    .await;
    let url = format!("https://{}/pdb/query/v4", src.addr);
    let p = pki.0.display();
    let good = format!(
        r#"{{ ca: "{p}/ca.pem", sni: localhost, cert: "{p}/client.pem", key: "{p}/client.key" }}"#
    );
    let c = client();
    let bound = Duration::from_secs(3);
    {
        let gw = gateway(&ms, &url, &good, "").await;
        assert!(
            eventually(bound, || async {
                node(&c, &gw, "node1").await == "master1"
            })
            .await,
            "the first HTTPS poll (client certificate accepted) fills the map"
        );
        *src.body.lock() = "node1 master2\nnode2 master3\n".to_string();
        assert!(
            eventually(bound, || async {
                node(&c, &gw, "node1").await == "master2"
            })
            .await,
            "a changed HTTPS answer re-routes node1"
        );
        assert_eq!(node(&c, &gw, "node2").await, "master3");
        let errors = gw
            .metric(
                "floodgate_map_updates_total",
                &[("map", "nodes"), ("source", "poller"), ("result", "error")],
            )
            .await;
        assert_eq!(errors, 0.0, "no poll failed with the right CA");
    }

    // The wrong CA: the server's certificate does not verify, so no poll gets through; the
    // map from the file stays, and the failures are counted and logged.
    let dir = Scratch::new("maps-tls-file");
    let file = dir.write("nodes.map", "node1 master3\n");
    let o = other.0.display();
    let wrong = format!(
        r#"{{ ca: "{o}/ca.pem", sni: localhost, cert: "{p}/client.pem", key: "{p}/client.key" }}"#
    );
    let served = src.served.load(Ordering::SeqCst);
    let gw = gateway(&ms, &url, &wrong, &format!("file: \"{file}\", ")).await;
    let counted = eventually(bound, || async {
        gw.metric(
            "floodgate_map_updates_total",
            &[("map", "nodes"), ("source", "poller"), ("result", "error")],
        )
        .await
            >= 2.0
    })
    .await;
    assert!(counted, "failed HTTPS polls are counted as poller errors");
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master3",
        "the map from the file stays"
    );
    assert_eq!(
        src.served.load(Ordering::SeqCst),
        served,
        "no answer was served through a failed handshake"
    );
    if logs {
        let needle = format!("map poller {url}");
        assert!(
            !logcap::matching(&[&needle, "certificate verify failed"]).is_empty(),
            "the failure is logged with its cause"
        );
    }
}

#[test]
fn map_source_tls_mistakes_are_refused_naming_the_key() {
    let yaml = |source: &str| {
        format!(
            "listeners: [{{ bind: \"127.0.0.1:8080\" }}]\nupstreams:\n  a: {{ servers: [{{ addr: \"127.0.0.1:3000\" }}] }}\nmaps:\n  nodes: {{ source: {source} }}\nroutes: [{{ name: r, upstream: a }}]\n"
        )
    };
    let cases = [
        (
            r#"{ url: "ftp://pdb/x" }"#,
            "maps.nodes.source.url",
            "https://",
        ),
        (
            r#"{ url: "http://pdb/x", tls: { verify: false } }"#,
            "maps.nodes.source.tls",
            "plain http://",
        ),
        (
            r#"{ url: "https://127.0.0.1:8081/x" }"#,
            "maps.nodes.source.tls",
            "sni",
        ),
        (
            r#"{ url: "https://pdb:8081/x", tls: { ca: /nonexistent/ca.pem } }"#,
            "maps.nodes.source.tls.ca",
            "cannot be read",
        ),
        (
            r#"{ url: "https://pdb:8081/x", tls: { cert: /nonexistent/c.pem } }"#,
            "maps.nodes.source.tls.key",
            "cert is set without key",
        ),
    ];
    for (source, key, text) in cases {
        let y = yaml(source);
        let e = match floodgate::config::parse_config(&y, Path::new("t.yaml")) {
            Ok(_) => panic!("accepted but should be refused:\n{y}"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(key) && e.contains(text),
            "{source}: expected {key} and {text:?} in:\n{e}"
        );
    }
    let ok = yaml(r#"{ url: "https://pdb:8081/x", tls: { verify: false } }"#);
    floodgate::config::parse_config(&ok, Path::new("t.yaml"))
        .unwrap_or_else(|e| panic!("an https source with verify: false is valid: {e}"));
}
