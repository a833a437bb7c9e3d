//! Issue 17: header rules, local answers and forwarding modes through the real gateway, seen
//! by a raw-socket origin that records every request head exactly as it arrived; TLS facts
//! with certificates made at test time (a three-part subject, so the DN order shows).

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An origin that records each request head as received (health checks aside) and answers 200 with `X-Origin:
/// raw`, `X-Internal: 1` and a small body.
pub(crate) struct RawOrigin {
    pub(crate) addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawOrigin {
    pub(crate) async fn start() -> RawOrigin {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            h.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            let body = "origin body";
                            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: raw\r\nX-Internal: 1\r\n\r\n{body}", body.len());
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        RawOrigin { addr, heads }
    }

    pub(crate) fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    /// The last head received: its header lines as (name as sent, value), in order.
    pub(crate) fn last(&self) -> Vec<(String, String)> {
        let heads = self.heads.lock().unwrap();
        let head = heads.last().expect("the origin received a request");
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect()
    }
}

/// Every value of header `name` (case-insensitive) in `hs`.
pub(crate) fn values(hs: &[(String, String)], name: &str) -> Vec<String> {
    hs.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

pub(crate) fn names(hs: &[(String, String)]) -> Vec<String> {
    hs.iter().map(|(n, _)| n.to_ascii_lowercase()).collect()
}

pub(crate) async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("the gateway answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rules_set_add_remove_and_conditions_reach_the_origin_as_written() {
    let o = RawOrigin::start().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - bind: "127.0.0.1:{{PORT}}"
    server_name: gw.example.com
    request_headers:
      - {{ remove: "X-Legacy-Auth*" }}
      - {{ remove: X_Custom_Token }}
      - {{ set: X-Env, value: listener }}
      - {{ set: X-Client, value: "%{{remote_addr}} via %{{scheme}} to %{{host}}%{{request_uri}} at %{{server_name}}" }}
access_log: {{ enabled: false }}
upstreams:
  o: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - name: app
    match: {{ path_prefix: / }}
    upstream: o
    request_headers:
      - {{ set: X-Env, value: route }}
      - {{ add: X-Multi, value: ours }}
      - {{ set: X-Has-Auth, value: "yes", if: {{ header: {{ name: Authorization }} }} }}
      - {{ set: X-Bearer, value: "yes", if: {{ header: {{ name: Authorization, matches: "^Bearer [a-z0-9]+$" }} }} }}
      - {{ set: X-Basic, value: "yes", if: {{ header: {{ name: Authorization, prefix: "Basic " }} }} }}
      - {{ set: X-Post, value: "yes", if: {{ method: [POST] }} }}
      - {{ set: X-Api, value: "yes", if: {{ path_prefix: /api }} }}
      - {{ set: X-Not-Api, value: "yes", if: {{ not: {{ path_prefix: /api }} }} }}
"#,
        o.addr
    ))
    .await;

    let r = get(
        &gw.url("/api/hosts?per_page=5"),
        &[
            ("X-Legacy-Auth", "forged"),
            ("x_legacy_auth-user", "forged"),
            ("X-LEGACY_AUTH_GROUPS", "forged"),
            ("x-custom-token", "forged"),
            ("X_CUSTOM-TOKEN", "forged"),
            ("X-Legacyauth", "kept: not in the family"),
            ("X-Env", "client"),
            ("X-Multi", "client"),
            ("Authorization", "Bearer abc123"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "origin body");
    let h = o.last();
    let n = names(&h);
    for gone in [
        "x-legacy-auth",
        "x_legacy_auth-user",
        "x-legacy_auth_groups",
        "x-custom-token",
        "x_custom-token",
    ] {
        assert!(!n.contains(&gone.to_string()), "{gone} removed: {h:?}");
    }
    assert_eq!(values(&h, "x-legacyauth"), ["kept: not in the family"]);
    assert_eq!(
        values(&h, "x-env"),
        ["route"],
        "route rules run after the listener's: {h:?}"
    );
    assert_eq!(
        values(&h, "x-multi"),
        ["client", "ours"],
        "add appends a line: {h:?}"
    );
    assert_eq!(
        values(&h, "x-client"),
        ["127.0.0.1 via http to 127.0.0.1/api/hosts?per_page=5 at gw.example.com"],
        "{h:?}"
    );
    assert!(
        h.iter().any(|(n, _)| n == "X-Client"),
        "the written case reaches HTTP/1 upstreams: {h:?}"
    );
    assert_eq!(values(&h, "x-has-auth"), ["yes"]);
    assert_eq!(values(&h, "x-bearer"), ["yes"]);
    assert!(values(&h, "x-basic").is_empty(), "{h:?}");
    assert!(values(&h, "x-post").is_empty(), "{h:?}");
    assert_eq!(values(&h, "x-api"), ["yes"]);
    assert!(values(&h, "x-not-api").is_empty(), "{h:?}");

    let r = client()
        .post(gw.url("/ui"))
        .header("Authorization", "Basic Zm9vOmJhcg==")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = o.last();
    assert_eq!(values(&h, "x-post"), ["yes"], "{h:?}");
    assert_eq!(values(&h, "x-basic"), ["yes"], "{h:?}");
    assert!(values(&h, "x-bearer").is_empty(), "{h:?}");
    assert!(values(&h, "x-api").is_empty(), "{h:?}");
    assert_eq!(values(&h, "x-not-api"), ["yes"], "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_never_reach_the_origin_and_response_rules_apply_to_every_answer() {
    let o = RawOrigin::start().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - bind: "127.0.0.1:{{PORT}}"
    response_headers:
      - {{ set: X-Frame-Options, value: DENY }}
access_log: {{ enabled: false }}
upstreams:
  o: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: pub, match: {{ path_prefix: /pub }}, respond: {{ status: 404, headers: {{ Content-Type: text/plain, X-Local: "yes" }}, body: "Not here\n" }} }}
  - {{ name: maint, match: {{ path_prefix: /maint }}, respond: {{ status: 503, body: "maintenance" }} }}
  - {{ name: old, match: {{ path_prefix: /old }}, redirect: {{ location: "https://%{{host}}/new%{{request_uri}}", status: 301 }} }}
  - name: app
    match: {{ path_prefix: /app }}
    upstream: o
    response_headers:
      - {{ remove: X-Internal }}
      - {{ add: X-Route, value: app }}
"#,
        o.addr
    ))
    .await;

    let r = get(&gw.url("/pub/file.txt"), &[]).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-local"], "yes");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(
        r.headers()["x-frame-options"],
        "DENY",
        "listener response rules on a local answer"
    );
    assert_eq!(r.text().await.unwrap(), "Not here\n");
    let r = get(&gw.url("/maint"), &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "maintenance");
    let r = get(&gw.url("/old/page?x=1"), &[]).await;
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"],
        "https://127.0.0.1/new/old/page?x=1"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(o.count(), 0, "no local answer reached the origin");

    let r = get(&gw.url("/app/x"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(o.count(), 1);
    assert_eq!(r.headers()["x-origin"], "raw");
    assert!(
        r.headers().get("x-internal").is_none(),
        "route response rule removed it"
    );
    assert_eq!(r.headers()["x-route"], "app");
    assert_eq!(
        r.headers()["x-frame-options"],
        "DENY",
        "proxied answers too"
    );

    let r = get(&gw.url("/nowhere"), &[]).await;
    assert_eq!(r.status(), 404, "no route");
    assert_eq!(
        r.headers()["x-frame-options"],
        "DENY",
        "error answers too (Header always)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_modes_append_replace_off_and_rfc7239() {
    let o = RawOrigin::start().await;
    let (p2, p3) = (free_port(), free_port());
    let gw = TestGateway::start(
        &format!(
            r#"
listeners:
  - {{ name: append, bind: "127.0.0.1:{{PORT}}", server_name: gw.example.com }}
  - {{ name: replace, bind: "127.0.0.1:{{P2}}", server_name: gw.example.com, forwarded_headers: replace, forwarded_rfc7239: true }}
  - {{ name: off, bind: "127.0.0.1:{{P3}}", forwarded_headers: off }}
access_log: {{ enabled: false }}
upstreams:
  o: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: app, match: {{ path_prefix: / }}, upstream: o }}
"#,
            o.addr
        )
        .replace("{P2}", &p2.to_string())
        .replace("{P3}", &p3.to_string()),
    )
    .await;
    let forged = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Server", "evil-gw"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=6.6.6.6"),
    ];
    let host = format!("127.0.0.1:{}", gw.port);
    get(&gw.url("/a"), &forged).await;
    let h = o.last();
    assert_eq!(
        values(&h, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.1"],
        "{h:?}"
    );
    assert_eq!(
        values(&h, "x-forwarded-host"),
        [format!("evil.example, {host}")],
        "{h:?}"
    );
    assert_eq!(
        values(&h, "x-forwarded-server"),
        ["evil-gw, gw.example.com"],
        "{h:?}"
    );
    assert_eq!(
        values(&h, "x-forwarded-proto"),
        ["http"],
        "never the client's claim: {h:?}"
    );
    assert_eq!(
        values(&h, "forwarded"),
        ["for=6.6.6.6"],
        "RFC 7239 is off by default: {h:?}"
    );

    get(&format!("http://127.0.0.1:{p2}/a"), &forged).await;
    let h = o.last();
    assert_eq!(values(&h, "x-forwarded-for"), ["127.0.0.1"], "{h:?}");
    assert_eq!(
        values(&h, "x-forwarded-host"),
        [format!("127.0.0.1:{p2}")],
        "{h:?}"
    );
    assert_eq!(
        values(&h, "x-forwarded-server"),
        ["gw.example.com"],
        "{h:?}"
    );
    assert_eq!(
        values(&h, "forwarded"),
        [format!("for=127.0.0.1;host=\"127.0.0.1:{p2}\";proto=http")],
        "{h:?}"
    );

    get(&format!("http://127.0.0.1:{p3}/a"), &forged).await;
    let h = o.last();
    for (k, v) in forged {
        assert_eq!(values(&h, k), [v], "off passes the client's {k}: {h:?}");
    }

    // spelled as Apache's mod_proxy spells them (HTTP/1 upstreams see the case)
    get(&format!("http://127.0.0.1:{p2}/b"), &[]).await;
    let h = o.last();
    for k in [
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Server",
        "X-Forwarded-Proto",
        "Forwarded",
    ] {
        assert!(
            h.iter().any(|(n, _)| n == k),
            "{k} as Apache writes it: {h:?}"
        );
    }
}

/// A client certificate with subject `subj`, signed by the CA of `tls::make_pki`.
fn client_cert(dir: &Path, who: &str, subj: &str) {
    crate::tls::sh(
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
            subj,
        ],
    );
    crate::tls::sh(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.pem"),
            "-days",
            "2",
        ],
    );
}

/// (response head, body) of a curl request.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "--http1.1", "-D", "-"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").expect("a head");
    (h.to_string(), b.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_facts_cn_condition_and_dn_formats_with_a_three_part_subject() {
    let o = RawOrigin::start().await;
    let pki = temp_dir("pki-rules");
    crate::tls::make_pki(&pki);
    client_cert(&pki, "host1", "/C=US/O=Example Org/CN=host1.example.com");
    client_cert(&pki, "own", "/C=US/O=Example Org/CN=foreman.example.com");
    let p = pki.display().to_string();
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: mtls
    bind: "127.0.0.1:{{PORT}}"
    tls: {{ cert: "{p}/server.pem", key: "{p}/server.key", client_ca: "{p}/ca.pem", client_auth: optional }}
    request_headers:
      - {{ set: X-S-DN-Legacy, value: "%{{ssl_client_s_dn_legacy}}" }}
      - {{ set: X-I-DN, value: "%{{ssl_client_i_dn}}" }}
      - {{ set: X-Serial, value: "%{{ssl_client_serial}}" }}
      - {{ set: X-CN, value: "%{{ssl_client_s_dn_cn}}" }}
      - {{ set: X-Verify, value: "%{{ssl_client_verify}}" }}
access_log: {{ enabled: false }}
upstreams:
  o: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - name: pulp-api
    match: {{ path_prefix: /pulp/api/v3 }}
    upstream: o
    request_headers:
      - {{ set: REMOTE-USER, value: admin, if: {{ cert_cn: foreman.example.com }} }}
  - name: pulp-content
    match: {{ path_prefix: /pulp/content }}
    upstream: o
    request_headers:
      - {{ set: X-CLIENT-CERT, value: "%{{ssl_client_escaped_cert}}" }}
  - {{ name: app, match: {{ path_prefix: / }}, upstream: o }}
"#,
        o.addr
    ))
    .await;
    let url = |path: &str| format!("https://localhost:{}{path}", gw.port);
    let ca = format!("{p}/ca.pem");
    let with = |who: &str, path: &str, extra: &[&str]| {
        let (c, k) = (format!("{p}/{who}.pem"), format!("{p}/{who}.key"));
        let mut args = vec!["--cacert", &ca, "--cert", &c, "--key", &k];
        args.extend_from_slice(extra);
        let u = url(path);
        args.push(&u);
        curl(&args)
    };

    with(
        "host1",
        "/pulp/api/v3/status",
        &["-H", "REMOTE_USER: admin", "-H", "Remote-User-Email: x@y"],
    );
    let h = o.last();
    assert_eq!(
        values(&h, "ssl-client-s-dn"),
        ["CN=host1.example.com,O=Example Org,C=US"],
        "RFC 2253 order: {h:?}"
    );
    assert_eq!(
        values(&h, "x-s-dn-legacy"),
        ["/C=US/O=Example Org/CN=host1.example.com"],
        "{h:?}"
    );
    assert_eq!(values(&h, "x-i-dn"), ["CN=floodgate test CA"], "{h:?}");
    assert_eq!(values(&h, "x-cn"), ["host1.example.com"], "{h:?}");
    assert_eq!(values(&h, "x-verify"), ["SUCCESS"], "{h:?}");
    let serial = values(&h, "x-serial");
    assert!(
        serial.len() == 1
            && !serial[0].is_empty()
            && serial[0].chars().all(|c| c.is_ascii_hexdigit()),
        "{h:?}"
    );
    assert!(
        !names(&h)
            .iter()
            .any(|n| n.replace('_', "-").starts_with("remote-user")),
        "another host's certificate is not admin, and forged REMOTE-USER* is gone: {h:?}"
    );

    with("own", "/pulp/api/v3/status", &[]);
    let h = o.last();
    assert_eq!(
        values(&h, "remote-user"),
        ["admin"],
        "the server's own certificate is admin: {h:?}"
    );
    with("own", "/api/v2/hosts", &[]);
    assert!(
        values(&o.last(), "remote-user").is_empty(),
        "only under /pulp/api/v3"
    );

    let (_, _) = curl(&[
        "--cacert",
        &ca,
        "-H",
        "SSL-Client-Verify: SUCCESS",
        &url("/pulp/api/v3/status"),
    ]);
    let h = o.last();
    assert!(
        values(&h, "remote-user").is_empty(),
        "no certificate, no admin: {h:?}"
    );
    assert_eq!(values(&h, "ssl-client-verify"), ["NONE"], "{h:?}");
    assert_eq!(values(&h, "x-verify"), ["NONE"], "{h:?}");

    with("host1", "/pulp/content/org/repo", &[]);
    let h = o.last();
    let cert = values(&h, "x-client-cert");
    assert_eq!(cert.len(), 1, "{h:?}");
    assert!(
        cert[0].starts_with("-----BEGIN%20CERTIFICATE-----%0A")
            && cert[0].ends_with("-----END%20CERTIFICATE-----%0A"),
        "URL-encoded PEM: {}",
        cert[0]
    );
    let pem = std::fs::read_to_string(format!("{p}/host1.pem")).unwrap();
    let mut decoded = String::new();
    let b = cert[0].as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            decoded.push(u8::from_str_radix(&cert[0][i + 1..i + 3], 16).unwrap() as char);
            i += 3;
        } else {
            decoded.push(b[i] as char);
            i += 1;
        }
    }
    assert_eq!(
        decoded.trim(),
        pem.trim(),
        "the presented certificate, exactly"
    );
    let _ = std::fs::remove_dir_all(&pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_policies_see_req_tls_and_remove_headers_in_every_spelling() {
    let o = RawOrigin::start().await;
    let pki = temp_dir("pki-lua");
    crate::tls::make_pki(&pki);
    client_cert(&pki, "host1", "/C=US/O=Example Org/CN=host1.example.com");
    let p = pki.display().to_string();
    let script = pki.join("tls.lua");
    std::fs::write(
        &script,
        r#"
function admit(req)
  if req.tls == nil then return { deny = 403, body = "no certificate" } end
  return { set_headers = { ["X-Lua-Subject"] = req.tls.subject, ["X-Lua-Issuer"] = req.tls.issuer,
    ["X-Lua-Verified"] = tostring(req.tls.verified), ["X-Lua-Serial"] = req.tls.serial },
    remove_headers = { "X-Debug*", "x_trace" } }
end
"#,
    )
    .unwrap();
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - {{ bind: "127.0.0.1:{{PORT}}", tls: {{ cert: "{p}/server.pem", key: "{p}/server.key", client_ca: "{p}/ca.pem", client_auth: optional }} }}
access_log: {{ enabled: false }}
upstreams:
  o: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: app, match: {{ path_prefix: / }}, upstream: o }}
policy: {{ scripts: ["{}"] }}
"#,
        o.addr,
        script.display()
    ))
    .await;
    let url = format!("https://localhost:{}/x", gw.port);
    let ca = format!("{p}/ca.pem");
    let (head, body) = curl(&["--cacert", &ca, &url]);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(body, "no certificate");
    assert_eq!(o.count(), 0);
    let (c, k) = (format!("{p}/host1.pem"), format!("{p}/host1.key"));
    let (head, _) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &c,
        "--key",
        &k,
        "-H",
        "X_Debug_Token: 1",
        "-H",
        "X-Debug: 2",
        "-H",
        "X-Trace: 3",
        "-H",
        "X-Kept: 4",
        &url,
    ]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let h = o.last();
    assert_eq!(
        values(&h, "x-lua-subject"),
        ["CN=host1.example.com,O=Example Org,C=US"],
        "{h:?}"
    );
    assert_eq!(
        values(&h, "x-lua-issuer"),
        ["CN=floodgate test CA"],
        "{h:?}"
    );
    assert_eq!(values(&h, "x-lua-verified"), ["true"], "{h:?}");
    assert!(!values(&h, "x-lua-serial")[0].is_empty());
    for gone in ["x_debug_token", "x-debug", "x-trace"] {
        assert!(
            !names(&h).contains(&gone.to_string()),
            "Lua removed {gone}: {h:?}"
        );
    }
    assert_eq!(values(&h, "x-kept"), ["4"], "{h:?}");
    let _ = std::fs::remove_dir_all(&pki);
}

#[test]
fn check_names_the_key_path_of_bad_rules_and_local_answers() {
    let e = floodgate::config::parse_config(
        r#"
listeners:
  - { bind: "127.0.0.1:1", forwarded_headers: sometimes, request_headers: [ { set: X-A, value: "%{nope}" } ] }
upstreams:
  o: { servers: [ { addr: "127.0.0.1:2" } ] }
routes:
  - { name: a, match: { path_prefix: /a }, upstream: o, respond: { status: 404 } }
  - { name: b, match: { path_prefix: /b }, redirect: { location: "/x", status: 200 } }
  - { name: c, match: { path_prefix: /c }, respond: { status: 404 }, redirect: { location: "/x" } }
  - { name: d, match: { path_prefix: /d }, upstream: o, response_headers: [ { remove: "*" } ] }
"#,
        Path::new("t.yaml"),
    )
    .unwrap_err();
    let text = e.to_string();
    for path in [
        "listeners[0].forwarded_headers",
        "listeners[0].request_headers[0].value",
        "routes[0].upstream",
        "routes[1].redirect.status",
        "routes[2].redirect",
        "routes[3].response_headers[0].remove",
    ] {
        assert!(e.mentions(path), "{path} reported:\n{text}");
    }
    assert!(text.contains("use append"), "a fix is given:\n{text}");
}

/// Issue 17: the shipped `conf/foreman.yaml`, behind a TLS listener (its addresses rewritten,
/// certificates made here), reproduces Foreman's vhost: SSL-CLIENT-* headers, every
/// REMOTE[-_]USER[-_]* spelling unset, REMOTE-USER admin on /pulp/api/v3 only for the server's
/// own certificate, X-CLIENT-CERT on /pulp/content, `ProxyPass /pub !`, `ProxyAddHeaders On`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_foreman_config_reproduces_the_foreman_vhost() {
    let o = RawOrigin::start().await;
    let pki = temp_dir("pki-foreman");
    crate::tls::make_pki(&pki);
    client_cert(&pki, "host1", "/C=US/O=Example Org/CN=host1.example.com");
    client_cert(&pki, "own", "/C=US/O=Example Org/CN=foreman.example.com");
    let p = pki.display().to_string();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/foreman.yaml"))
            .unwrap();
    let origin = o.addr.to_string();
    let yaml = shipped
        .replace("127.0.0.1:3000", &origin)
        .replace("127.0.0.1:24817", &origin)
        .replace("127.0.0.1:24816", &origin)
        .replace("127.0.0.1:9901", "127.0.0.1:{ADMIN}")
        .replace(
            "    bind: \"127.0.0.1:8080\"\n",
            &format!("    bind: \"127.0.0.1:{{PORT}}\"\n    tls: {{ cert: \"{p}/server.pem\", key: \"{p}/server.key\", client_ca: \"{p}/ca.pem\", client_auth: optional }}\n"),
        )
        .replace("access_log: { format: combined }", "access_log: { enabled: false }");
    assert!(
        yaml.contains("client_auth: optional"),
        "the listener was rewritten"
    );
    let gw = TestGateway::start(&yaml).await;
    let url = |path: &str| format!("https://localhost:{}{path}", gw.port);
    let ca = format!("{p}/ca.pem");
    let with = |who: &str, path: &str, extra: &[&str]| {
        let (c, k) = (format!("{p}/{who}.pem"), format!("{p}/{who}.key"));
        let mut args = vec!["--cacert", &ca, "--cert", &c, "--key", &k];
        args.extend_from_slice(extra);
        let u = url(path);
        args.push(&u);
        curl(&args)
    };
    let forged = [
        "-H",
        "REMOTE_USER: admin",
        "-H",
        "REMOTE-USER-EMAIL: a@b",
        "-H",
        "REMOTE_USER_GROUPS: admins",
        "-H",
        "Remote-User_Firstname: x",
        "-H",
        "X-Forwarded-Host: evil.example",
    ];
    with("host1", "/api/v2/hosts", &forged);
    let h = o.last();
    assert!(
        !names(&h)
            .iter()
            .any(|n| n.replace('_', "-").starts_with("remote-user")),
        "every REMOTE[-_]USER[-_]* spelling unset: {h:?}"
    );
    assert_eq!(
        values(&h, "ssl-client-s-dn"),
        ["CN=host1.example.com,O=Example Org,C=US"],
        "{h:?}"
    );
    assert_eq!(values(&h, "ssl-client-verify"), ["SUCCESS"], "{h:?}");
    assert!(
        values(&h, "ssl-client-cert")[0].starts_with("-----BEGIN CERTIFICATE----- "),
        "{h:?}"
    );
    assert_eq!(values(&h, "x-forwarded-proto"), ["https"], "{h:?}");
    assert_eq!(
        values(&h, "x-forwarded-server"),
        ["foreman.example.com"],
        "{h:?}"
    );
    assert_eq!(
        values(&h, "x-forwarded-host"),
        [format!("evil.example, localhost:{}", gw.port)],
        "ProxyAddHeaders On appends: {h:?}"
    );

    with("host1", "/pulp/api/v3/tasks/", &forged);
    assert!(
        values(&o.last(), "remote-user").is_empty(),
        "a host's certificate is not admin"
    );
    with("own", "/pulp/api/v3/tasks/", &[]);
    assert_eq!(
        values(&o.last(), "remote-user"),
        ["admin"],
        "the server's own certificate is"
    );
    with("host1", "/pulp/content/org/Library/repo/", &[]);
    let h = o.last();
    assert_eq!(
        values(&h, "x-client-cert"),
        values(&h, "ssl-client-cert"),
        "{h:?}"
    );

    let before = o.count();
    let (head, body) = with("host1", "/pub/katello-ca-consumer-latest.noarch.rpm", &[]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(body, "Not Found\n");
    assert_eq!(o.count(), before, "/pub never reaches the app");
    let _ = std::fs::remove_dir_all(&pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules_apply_to_cache_hits_and_are_not_stored_with_the_entry() {
    let o = RawOrigin::start().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - {{ bind: "127.0.0.1:{{PORT}}", response_headers: [ {{ set: X-Served-By, value: "%{{server_name}}" }} ], server_name: gw1 }}
access_log: {{ enabled: false }}
upstreams:
  o: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - name: cached
    match: {{ path_prefix: /register }}
    upstream: o
    cache: {{ ttl: 60s }}
    response_headers:
      - {{ add: X-Route-Rule, value: "once" }}
      - {{ remove: X-Internal }}
"#,
        o.addr
    ))
    .await;
    for (i, want) in ["MISS", "HIT"].into_iter().enumerate() {
        let r = get(&gw.url("/register?org=1"), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-cache"], want, "request {i}");
        assert_eq!(r.headers()["x-served-by"], "gw1", "{want}: listener rule");
        let added: Vec<_> = r.headers().get_all("x-route-rule").iter().collect();
        assert_eq!(
            added.len(),
            1,
            "{want}: added once, not stored and added again: {added:?}"
        );
        assert!(r.headers().get("x-internal").is_none(), "{want}");
    }
    assert_eq!(o.count(), 1, "the hit came from the cache");
}
