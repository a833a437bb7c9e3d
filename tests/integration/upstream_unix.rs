//! Unix-socket upstreams (`addr: unix:/path`): requests and active health checks reach a real
//! origin listening on a socket in a temp dir, through Pingora's `HttpPeer::new_uds`.

use crate::common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// An HTTP/1.1 origin on a Unix socket: `200 unix-origin path=...` to every request.
struct UnixOrigin {
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UnixOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_origin(path: &std::path::Path) -> UnixOrigin {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let Some(buf) = crate::common::read_head(&mut s).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let body = format!("unix-origin path={path}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    UnixOrigin { hits, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_upstream_serves_requests_and_its_health_check_follows_the_socket() {
    let d = Scratch::new("up-unix");
    let sock = d.path("app.sock");
    let origin = unix_origin(&sock);
    let gw = TestGateway::start(&format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
upstreams:
  foreman:
    servers: [{{ name: puma, addr: "unix:{}" }}]
    health: {{ path: /api/status, interval: 100ms, timeout: 1s, rise: 1, fall: 1 }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: foreman }}
"#,
        sock.display()
    ))
    .await;
    // why: the server starts down; a 200 needs a health check that passed over the socket.
    let r = client().get(gw.url("/hosts")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the Unix-socket upstream answers");
    assert_eq!(r.text().await.unwrap(), "unix-origin path=/hosts\n");
    let checks = gw
        .metric(
            "floodgate_health_checks_total",
            &[
                ("upstream", "foreman"),
                ("server", "puma"),
                ("result", "pass"),
            ],
        )
        .await;
    assert!(
        checks >= 1.0,
        "health checks pass over the socket: {checks}"
    );
    assert!(origin.hits.load(Ordering::SeqCst) >= 2);

    drop(origin);
    std::fs::remove_file(&sock).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            client()
                .get(gw.url("/hosts"))
                .send()
                .await
                .map(|r| r.status() == 503)
                .unwrap_or(false)
        })
        .await,
        "with the socket gone the check marks the server down: 503 at once"
    );
}

#[test]
fn unix_addr_errors_name_the_key_the_value_and_the_fix() {
    let yaml = r#"
listeners: [{ bind: "127.0.0.1:8080" }]
upstreams:
  a: { servers: [{ addr: "unix:run/foreman.sock" }] }
  h: { balance: hash, hash_key: "header:x-k", servers: [{ addr: "unix:/run/a.sock" }] }
  t: { servers: [{ addr: "unix:/run/b.sock" }], tls: { ca: /nonexistent/ca.pem } }
routes: [{ name: r, upstream: a }]
"#;
    let err = floodgate::config::parse_config(yaml, std::path::Path::new("/tmp/floodgate.yaml"))
        .expect_err("refused")
        .to_string();
    for needle in [
        "upstreams.a.servers[0].addr",
        "needs an absolute path",
        "upstreams.h.servers[0].addr",
        "cannot place a unix: socket",
        "upstreams.t.tls.sni",
    ] {
        assert!(err.contains(needle), "error mentions {needle:?}: {err}");
    }
}
