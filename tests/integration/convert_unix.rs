//! `floodgate convert` (issue 14, rest): HAProxy's `default-server` (in `defaults` and in a
//! backend) reaches every later `server` line, HAProxy's `unix@/path` and `/path` servers and
//! Apache's `unix:/path|http://name/` targets become `unix:` servers; the converted configs pass
//! `check`, and a gateway on the converted Foreman vhost reaches an origin on a Unix socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::convert::{fixture, run_convert};
use std::path::Path;
use tokio::io::AsyncWriteExt;

#[test]
fn haproxy_default_server_lines_reach_every_server_and_the_result_passes_check() {
    let dir = Scratch::new("convert-default-server");
    let cfg = dir.write("haproxy.cfg", &fixture("default-server-haproxy.cfg"));
    let (ok, stderr, yaml) = run_convert("haproxy", Path::new(&cfg));
    assert!(ok, "convert + check succeed:\n{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    assert!(
        !stderr.contains("`default-server"),
        "default-server is read, not listed: {stderr}"
    );
    assert!(
        stderr.contains("line 10: not converted: server puma: option init-addr"),
        "an option floodgate lacks is listed at its default-server line: {stderr}"
    );
    let y: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let p = &y["upstreams"]["puppet"];
    let max: Vec<u64> = (0..3)
        .map(|i| p["servers"][i]["max_inflight"].as_u64().unwrap())
        .collect();
    assert_eq!(
        max,
        [200, 50, 200],
        "the backend's default-server over the defaults', the line over both"
    );
    assert_eq!(p["servers"][2]["backup"], true);
    assert_eq!(p["queue"]["max"], 150, "maxqueue 50 on each of 3 servers");
    assert_eq!(p["health"]["path"], "/status/v1/simple");
    assert_eq!(p["health"]["interval"], "3s", "inter from the defaults");
    assert_eq!(p["health"]["fall"], 3);
    assert_eq!(p["tls"]["verify"], false);
    assert_eq!(p["tls"]["sni"], "puppet.example.com");
    let f = &y["upstreams"]["foreman"];
    assert_eq!(f["servers"][0]["addr"], "unix:/run/foreman.sock");
    assert_eq!(
        f["servers"][0]["max_inflight"], 100,
        "the defaults' maxconn"
    );
    assert_eq!(f["servers"][1]["addr"], "unix:/run/foreman2.sock");
    assert_eq!(f["servers"][1]["max_inflight"], 10);
    assert_eq!(f["servers"][1]["weight"], 2);
    assert!(f.get("health").is_none(), "check was backend puppet's only");
}

/// An HTTP/1.1 origin on a Unix socket answering `host=HOST path=PATH`.
fn echo_origin(path: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Some(buf) = crate::common::read_head(&mut s).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("");
                let host = head
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
                    })
                    .map_or("", |(_, v)| v.trim());
                let body = format!("host={host} path={path}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_apache_vhost_with_a_unix_target_reaches_puma_on_its_socket() {
    let dir = Scratch::new("convert-unix");
    let sock = dir.path("foreman.sock");
    let origin = echo_origin(&sock);
    let cfg = fixture("foreman-unix-vhost.conf")
        .replace("/run/foreman.sock", &sock.display().to_string());
    let file = dir.write("foreman.conf", &cfg);
    let (ok, stderr, yaml) = run_convert("apache", Path::new(&file));
    assert!(ok, "convert + check succeed:\n{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    for skipped in [
        "not converted: ProxyPass to",
        "not converted: BalancerMember",
    ] {
        assert!(
            !stderr.contains(skipped),
            "the unix: targets are converted: {stderr}"
        );
    }
    let gw = TestGateway::start(&yaml.replace("0.0.0.0:8443", "127.0.0.1:{PORT}")).await;
    let c = client();
    for (path, via) in [
        ("/hosts", "ProxyPass /"),
        ("/rhsm/consumers", "the balancer"),
    ] {
        let r = c
            .get(gw.url(path))
            .header("Host", "foreman.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} through {via}");
        assert_eq!(
            r.text().await.unwrap(),
            format!("host=foreman.example.com path={path}\n"),
            "{via}: the socket's origin, with the client's Host (ProxyPreserveHost On)"
        );
    }
    origin.abort();
}
