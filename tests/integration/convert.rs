//! `floodgate convert` (issue 14) on the seed configs: the Sasori haproxy.cfg with its map and
//! Foreman's SSL vhost from foremanctl PR #495 (copies in tests/fixtures/convert/). The real
//! binary converts them and its check passes; a gateway on the converted Sasori config routes
//! each X-Node-Name through the converted map, and, when HAProxy is installed, to the same
//! master as the real HAProxy on the original config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::config::floodgate_cmd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/convert")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs `floodgate convert FROM FILE -o OUT`; returns (success, stderr, OUT's text).
pub(crate) fn run_convert(from: &str, file: &Path) -> (bool, String, String) {
    let out = file.with_extension("floodgate.yaml");
    let o = floodgate_cmd()
        .args(["convert", from])
        .arg(file)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("floodgate runs");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let yaml = std::fs::read_to_string(&out).unwrap_or_default();
    (o.status.success(), stderr, yaml)
}

#[test]
fn the_sasori_haproxy_cfg_converts_and_passes_check() {
    let dir = Scratch::new("convert-sasori");
    let cfg = dir.write("haproxy.cfg", &fixture("sasori-haproxy.cfg"));
    dir.write("node-master.map", &fixture("node-master.map"));
    let (ok, stderr, yaml) = run_convert("haproxy", Path::new(&cfg));
    assert!(ok, "convert + check succeed:\n{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    assert!(
        stderr.contains("line 22: not converted: conditional priority"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 30: approximated: maxqueue 500"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 35: not converted: `stats enable`"),
        "{stderr}"
    );
    let y: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(y["upstreams"]["puppet"]["servers"][0]["max_inflight"], 1000);
    assert_eq!(y["upstreams"]["puppet"]["queue"]["max"], 500);
    assert_eq!(y["routes"][0]["pick_server"]["map"], "node-master");
    assert_eq!(y["admin"]["runtime_socket"], "/var/run/haproxy/admin.sock");
    eprintln!("{}", stderr.lines().next().unwrap_or_default());
}

#[test]
fn the_foreman_ssl_vhost_converts_and_passes_check_with_its_certificates() {
    let dir = Scratch::new("convert-foreman");
    let pki = dir.path("pki");
    std::fs::create_dir_all(pki.join("certs")).unwrap();
    std::fs::create_dir_all(pki.join("private")).unwrap();
    crate::tls::make_pki(&pki);
    for (from, to) in [
        ("server.pem", "certs/katello-apache.crt"),
        ("server.key", "private/katello-apache.key"),
        ("ca.pem", "certs/katello-default-ca.crt"),
        ("ca.pem", "certs/katello-server-ca.crt"),
    ] {
        std::fs::copy(pki.join(from), pki.join(to)).unwrap();
    }
    // The vhost as deployed, its certificate folder pointing at the test PKI.
    let vhost =
        fixture("foreman-ssl-vhost.conf").replace("/etc/pki/httpd", &pki.display().to_string());
    let file = dir.write("foreman-ssl.conf", &vhost);
    let (ok, stderr, yaml) = run_convert("apache", Path::new(&file));
    assert!(ok, "convert + check succeed:\n{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    assert!(
        stderr.contains("line 99: approximated: ProxyPass /pub !"),
        "the local answer is listed: {stderr}"
    );
    assert!(stderr.contains("max=600"), "{stderr}");
    let y: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let reg = &y["upstreams"]["foreman-registration"];
    assert_eq!(reg["servers"][0]["max_inflight"], 600);
    assert_eq!(reg["timeouts"]["read"], "900s");
    assert_eq!(y["listeners"][0]["tls"]["client_auth"], "optional");
    let rules = y["listeners"][0]["request_headers"].as_sequence().unwrap();
    let admin: serde_yaml::Value = serde_yaml::from_str(
        "{ set: REMOTE-USER, value: admin, if: { cert_cn: foreman.example.com, path_prefix: /pulp/api/v3 } }",
    )
    .unwrap();
    assert!(
        rules.contains(&admin),
        "the /pulp/api/v3 Location's expr= line: {rules:?}"
    );
    assert_eq!(
        rules.iter().filter(|r| r.get("remove").is_some()).count(),
        8,
        "16 unsets fold to 5 names, plus one per Location: {rules:?}"
    );
    let prefixes: Vec<&str> = y["routes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["match"]["path_prefix"].as_str().unwrap())
        .collect();
    let at = |p: &str| prefixes.iter().position(|x| *x == p).unwrap();
    assert!(
        at("/pulp/assets") < at("/pulp"),
        "source order: {prefixes:?}"
    );
    assert!(
        at("/rhsm") < at("/"),
        "registration routes come before the catch-all: {prefixes:?}"
    );
    eprintln!("{}", stderr.lines().next().unwrap_or_default());
}

/// Node names asked in the routing comparison (node4 names a master the gateway lacks).
const NODES: &[&str] = &[
    "node1.example.com",
    "node2.example.com",
    "node3.example.com",
    "node4.example.com",
    "stranger.example.com",
];

async fn served_by(c: &reqwest::Client, base: &str, node: &str) -> String {
    let r = c
        .get(format!("{base}/echo"))
        .header("X-Node-Name", node)
        .send()
        .await
        .unwrap();
    let s = r.status();
    r.headers()
        .get("x-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| s.as_u16().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_converted_sasori_config_routes_by_the_converted_map_like_real_haproxy() {
    let m1 = origin("master1").await;
    let m2 = origin("master2").await;
    let dir = Scratch::new("convert-route");
    let map = dir.write("node-master.map", &fixture("node-master.map"));
    // The seed config with its masters on the test origins and a health path they answer.
    let cfg = fixture("sasori-haproxy.cfg")
        .replace("127.0.0.1:3001", &m1.addr().to_string())
        .replace("127.0.0.1:3002", &m2.addr().to_string())
        .replace("GET /status", "GET /api/status");
    let for_floodgate = cfg
        .replace("map(node-master.map)", &format!("map({map})"))
        .replace(
            "    stats socket /var/run/haproxy/admin.sock mode 660 level admin\n",
            "",
        );
    let done = floodgate::convert::haproxy::convert(&for_floodgate, "sasori");
    let yaml = done.yaml.replace("0.0.0.0:8080", "127.0.0.1:{PORT}");
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let mut floodgate_says = Vec::new();
    for n in NODES {
        floodgate_says.push(served_by(&c, &gw.url(""), n).await);
    }
    assert_eq!(
        floodgate_says,
        ["master1", "master2", "master1", "master1", "master1"],
        "node1's first map line wins; node4 (master3) and an unmapped node are balanced (master2 is a backup)"
    );

    let haproxy = Path::new("/usr/sbin/haproxy");
    if !haproxy.exists() {
        eprintln!("SKIP the HAProxy cross-check: /usr/sbin/haproxy is not installed");
        return;
    }
    let port = free_port();
    let hcfg = cfg
        .replace("bind *:8080", &format!("bind 127.0.0.1:{port}"))
        .replace("bind *:8081", &format!("bind 127.0.0.1:{}", free_port()))
        .replace(
            "/var/run/haproxy/admin.sock",
            &dir.path("admin.sock").display().to_string(),
        );
    let hfile = dir.write("haproxy.cfg", &hcfg);
    let mut child = Command::new(haproxy)
        .args(["-db", "-f", &hfile])
        .current_dir(&dir.0) // the map path in the config is relative to the working folder
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haproxy starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "haproxy did not listen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = format!("http://127.0.0.1:{port}");
    let mut haproxy_says = Vec::new();
    for n in NODES {
        haproxy_says.push(served_by(&c, &base, n).await);
    }
    // Stop the process we started, by its PID.
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        haproxy_says, floodgate_says,
        "each X-Node-Name reaches the same master through HAProxy and through floodgate"
    );
    eprintln!("HAProxy and floodgate agree: {haproxy_says:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_header_lines_and_exclusions_act_like_the_vhost_on_a_real_gateway() {
    use crate::header_rules::{get, names, values, RawOrigin};
    let dir = Scratch::new("convert-headers");
    let file = dir.write(
        "foreman-headers.conf",
        &fixture("foreman-headers-vhost.conf"),
    );
    let (ok, stderr, yaml) = run_convert("apache", Path::new(&file));
    assert!(ok, "convert + check succeed:\n{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    for note in [
        "line 14: approximated: RequestHeader unset REMOTE-USER: already removed by the rule of line 13",
        "line 17: approximated: RequestHeader append X-Trace: added as one more X-Trace line",
        "line 20: not converted: RequestHeader set X-Bad: the value uses %{HTTP_COOKIE}e",
        "line 23: approximated: Header set X-Served-By: floodgate's response rules apply to every answer",
        "line 34: approximated: ProxyPass /pub !: a route answering 404",
    ] {
        assert!(stderr.contains(note), "{note:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("ServerName"),
        "ServerName is the listener's server_name: {stderr}"
    );

    let o = RawOrigin::start().await;
    let at = o.addr.to_string();
    let yaml = yaml
        .replace("0.0.0.0:8080", "127.0.0.1:{PORT}")
        .replace("localhost:3000", &at)
        .replace("localhost:24817", &at);
    let gw = TestGateway::start(&yaml).await;

    let r = get(
        &gw.url("/hosts"),
        &[
            ("Remote_User-Email", "forged"),
            ("REMOTE-USER", "forged"),
            ("X-Trace", "client"),
            ("User-Agent", "subscription-manager/1.29"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["x-served-by"], "floodgate");
    assert!(
        r.headers().get("x-internal").is_none(),
        "Header always unset X-Internal"
    );
    let hs = o.last();
    let forged: Vec<String> = names(&hs)
        .into_iter()
        .filter(|n| n.replace('_', "-").starts_with("remote-user"))
        .collect();
    assert!(
        forged.is_empty(),
        "forged identity reached the app: {forged:?}"
    );
    assert_eq!(
        values(&hs, "X-Trace"),
        ["client", "gateway"],
        "append: after the client's"
    );
    assert_eq!(values(&hs, "X-Gateway-Client"), ["127.0.0.1"]);
    assert_eq!(
        values(&hs, "X-Api-Client"),
        ["rhsm"],
        "expr on User-Agent holds"
    );
    assert_eq!(
        values(&hs, "SSL_CLIENT_S_DN"),
        [""],
        "set empty, as Foreman's vhost"
    );
    assert!(values(&hs, "X-Pulp").is_empty(), "outside the Location");

    let r = get(&gw.url("/pulp/api/v3/status/"), &[("User-Agent", "curl/8")]).await;
    assert_eq!(r.status(), 200);
    let hs = o.last();
    assert_eq!(
        values(&hs, "X-Pulp"),
        ["api"],
        "inside <Location /pulp/api/v3>"
    );
    assert!(
        values(&hs, "REMOTE-USER").is_empty(),
        "REMOTE-USER admin needs the server's own certificate"
    );
    assert!(
        values(&hs, "X-Api-Client").is_empty(),
        "expr on User-Agent fails"
    );

    let seen = o.count();
    let r = get(&gw.url("/pub/katello-ca-consumer-latest.noarch.rpm"), &[]).await;
    assert_eq!(r.status(), 404, "ProxyPass /pub ! answers here");
    assert_eq!(
        r.headers()["x-content-type-options"],
        "nosniff",
        "response rules on the local answer"
    );
    assert_eq!(
        get(&gw.url("/server-status"), &[]).await.status(),
        404,
        "ProxyPass /server-status !"
    );
    assert_eq!(o.count(), seen, "no excluded path reached the origin");
}
