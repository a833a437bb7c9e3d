//! Header routing through live maps (issue 5): `pick_server` sends a request to the server its
//! `X-Node-Name` maps to, and every update path (file rewrite and rename, admin API, poller,
//! HAProxy Runtime API socket) re-routes without a restart. Bad updates keep the running map
//! and are reported; `persist: true` writes API changes to the file; redispatch and the admin
//! token are checked against real origins named master1..3 (their `x-origin` header says who
//! served).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a file change may take to re-route (the brief's bound; inotify sees it at once).
const FILE_CHANGE_BOUND: Duration = Duration::from_secs(2);
/// How long a refused file may take to show in the error counter: not a promised bound (the
/// routing bound above is), so generous for a loaded CI machine.
const ERROR_SEEN_BOUND: Duration = Duration::from_secs(10);

/// Replaces each `{KEY}` placeholder of `yaml` (besides the harness's `{PORT}`/`{ADMIN}`/`{DIR}`).
fn fill(yaml: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(yaml.to_string(), |y, (k, v)| {
        y.replace(&format!("{{{k}}}"), v)
    })
}

/// Replaces `path` the way deploy tools do: write a temp file in the same directory, rename over.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Rewrites `path` in place (same inode): truncate and write.
fn rewrite_in_place(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

/// The three origins master1, master2, master3.
pub(crate) async fn masters() -> Vec<OriginHandle> {
    let mut v = Vec::new();
    for n in ["master1", "master2", "master3"] {
        v.push(origin(n).await);
    }
    v
}

/// `{ name: master1, addr: "..." }, ...` for an upstream's `servers: [...]`.
pub(crate) fn servers(ms: &[OriginHandle]) -> String {
    ms.iter()
        .map(|o| format!("{{ name: {}, addr: \"{}\" }}", o.name(), o.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// GET /echo with `X-Node-Name: node` (and extra headers); the serving origin's name on 200,
/// otherwise the status code as text (e.g. "404").
async fn who(
    c: &reqwest::Client,
    gw: &TestGateway,
    node: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let mut rb = c.get(gw.url("/echo"));
    if let Some(n) = node {
        rb = rb.header("X-Node-Name", n);
    }
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /echo for {node:?}: {e}"));
    if r.status() == 200 {
        r.headers()
            .get("x-origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    } else {
        r.status().as_u16().to_string()
    }
}

pub(crate) async fn node(c: &reqwest::Client, gw: &TestGateway, n: &str) -> String {
    who(c, gw, Some(n), &[]).await
}

/// Polls until `n` is served as `want` or `within` passes; returns how long it took.
async fn routes_within(
    c: &reqwest::Client,
    gw: &TestGateway,
    n: &str,
    want: &str,
    within: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    eventually(within, || async { node(c, gw, n).await == want })
        .await
        .then(|| t.elapsed())
}

async fn updates(gw: &TestGateway, source: &str, result: &str) -> f64 {
    gw.metric(
        "floodgate_map_updates_total",
        &[("map", "nodes"), ("source", source), ("result", result)],
    )
    .await
}

/// The live entries of a map as the admin API shows them.
async fn admin_entries(
    c: &reqwest::Client,
    gw: &TestGateway,
    map: &str,
) -> (serde_json::Value, BTreeMap<String, String>) {
    let r = c
        .get(gw.admin(&format!("/maps/{map}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET /maps/{map}");
    let v: serde_json::Value = r.json().await.unwrap();
    let entries = v["entries"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    (v, entries)
}

/// Parses a map file back into entries (ignores blank and comment lines).
fn file_entries(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .trim()
                .split_once([' ', '\t'])
                .unwrap_or_else(|| panic!("map line without value: {l:?}"));
            (k.to_string(), v.trim().to_string())
        })
        .collect()
}

fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A tiny HTTP server the map poller fetches from: answers every GET with the current body.
pub(crate) struct MapServer {
    addr: SocketAddr,
    body: Arc<parking_lot::Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MapServer {
    pub(crate) async fn start(body: &str) -> MapServer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let body = Arc::new(parking_lot::Mutex::new(body.to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let text = b.lock().clone();
                    h.fetch_add(1, Ordering::SeqCst);
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        MapServer {
            addr,
            body,
            hits,
            task,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn set(&self, body: &str) {
        *self.body.lock() = body.to_string();
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for MapServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway with upstream `puppet` = master1..3 and one map `nodes`; `{SERVERS}`, `{MAP}` and
/// `{ON_MISS}` are filled in.
const ONE_ROUTE: &str = r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}] }
maps:
  nodes: { file: "{MAP}"{POLICY} }
routes:
  - { name: puppet, match: { path_prefix: / }, upstream: puppet, pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: {ON_MISS} } }
"#;

pub(crate) async fn one_route_gateway(
    ms: &[OriginHandle],
    map: &str,
    on_miss: &str,
) -> TestGateway {
    one_route_gateway_with(ms, map, on_miss, "").await
}

/// The map policy keys that make every tolerated line an error.
const STRICT: &str = ", on_duplicate: error, on_unknown_value: error";

/// [`one_route_gateway`] with extra keys for the map (`policy` starts with a comma).
pub(crate) async fn one_route_gateway_with(
    ms: &[OriginHandle],
    map: &str,
    on_miss: &str,
    policy: &str,
) -> TestGateway {
    TestGateway::start(&fill(
        ONE_ROUTE,
        &[
            ("SERVERS", servers(ms)),
            ("MAP", map.to_string()),
            ("ON_MISS", on_miss.to_string()),
            ("POLICY", policy.to_string()),
        ],
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_nodes_reach_their_servers_and_each_on_miss_choice_applies() {
    let ms = masters().await;
    let dir = Scratch::new("maps-route");
    let map = dir.write("nodes.map", "# node -> master\nnode1.example.com master1\nnode2.example.com master2\nnode3.example.com\tmaster3\n");
    let route = |name: &str, on_miss: &str| {
        format!("  - {{ name: {name}, match: {{ header: {{ name: X-Route, value: {name} }} }}, upstream: puppet, pick_server: {{ map: nodes, key: \"header:X-Node-Name\"{on_miss} }} }}\n")
    };
    let routes = [
        route("balance", ""),
        route("reject", ", on_miss: reject"),
        route("gone", ", on_miss: reject, reject_status: 410"),
        route("pinned", ", on_miss: \"server:master3\""),
    ]
    .concat();
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}] }
maps:
  nodes: { file: "{MAP}" }
routes:
{ROUTES}"#,
        &[("SERVERS", servers(&ms)), ("MAP", map), ("ROUTES", routes)],
    ))
    .await;
    let c = client();
    let via = |r: &'static str| [("X-Route", r)];

    for (n, want) in [
        ("node1.example.com", "master1"),
        ("node2.example.com", "master2"),
        ("node3.example.com", "master3"),
    ] {
        for _ in 0..3 {
            assert_eq!(
                who(&c, &gw, Some(n), &via("reject")).await,
                want,
                "{n} is pinned to its mapped server every time"
            );
        }
    }
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let got = who(&c, &gw, Some("unknown.example.com"), &via("balance")).await;
        assert!(
            got.starts_with("master"),
            "on_miss balance serves an unmapped node: got {got}"
        );
        seen.insert(got);
    }
    assert!(
        seen.len() >= 2,
        "on_miss balance spreads unmapped nodes over the servers: {seen:?}"
    );
    assert!(
        who(&c, &gw, None, &via("balance"))
            .await
            .starts_with("master"),
        "a request without the header is balanced too"
    );
    assert_eq!(
        who(&c, &gw, Some("unknown.example.com"), &via("reject")).await,
        "404",
        "on_miss reject answers 404 by default"
    );
    assert_eq!(
        who(&c, &gw, Some("NODE1.example.com"), &via("reject")).await,
        "404",
        "keys are case-sensitive, like HAProxy str maps"
    );
    assert_eq!(
        who(&c, &gw, Some("unknown.example.com"), &via("gone")).await,
        "410",
        "on_miss reject uses reject_status"
    );
    for _ in 0..3 {
        assert_eq!(
            who(&c, &gw, Some("unknown.example.com"), &via("pinned")).await,
            "master3",
            "on_miss server:master3 pins unmapped nodes"
        );
    }
    assert_eq!(
        who(&c, &gw, Some("node1.example.com"), &via("pinned")).await,
        "master1",
        "a hit wins over on_miss server:NAME"
    );

    assert_eq!(
        gw.metric("floodgate_map_entries", &[("map", "nodes")])
            .await,
        3.0,
        "entries gauge"
    );
    assert_eq!(
        gw.metric(
            "floodgate_map_lookups_total",
            &[("map", "nodes"), ("result", "hit")]
        )
        .await,
        10.0,
        "9 pinned + 1 pinned-route hit"
    );
    // 6 balance + 1 headerless + 2 reject + 1 gone + 3 pinned
    assert_eq!(
        gw.metric(
            "floodgate_map_lookups_total",
            &[("map", "nodes"), ("result", "miss")]
        )
        .await,
        13.0,
        "misses counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_file_rewritten_in_place_or_renamed_over_reroutes_within_2s() {
    let ms = masters().await;
    let dir = Scratch::new("maps-file");
    let map = dir.write("nodes.map", "node1 master1\nnode2 master2\n");
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let c = client();
    assert_eq!(node(&c, &gw, "node1").await, "master1");
    let path = dir.path("nodes.map");

    rewrite_in_place(&path, "node1 master2\nnode2 master2\n");
    let took = routes_within(&c, &gw, "node1", "master2", FILE_CHANGE_BOUND).await;
    assert!(
        took.is_some(),
        "an in-place rewrite re-routes node1 to master2 within {FILE_CHANGE_BOUND:?}"
    );
    eprintln!("in-place rewrite applied after {:?}", took.unwrap());

    rename_over(&path, "node1 master3\n");
    let took = routes_within(&c, &gw, "node1", "master3", FILE_CHANGE_BOUND).await;
    assert!(
        took.is_some(),
        "a rename over the file re-routes node1 to master3 within {FILE_CHANGE_BOUND:?}"
    );
    eprintln!("rename-over applied after {:?}", took.unwrap());
    assert_eq!(
        node(&c, &gw, "node2").await,
        "404",
        "node2 left the map with the renamed file"
    );

    assert!(
        updates(&gw, "file", "ok").await >= 2.0,
        "both file updates counted under source=file,result=ok"
    );
    assert_eq!(
        updates(&gw, "file", "error").await,
        0.0,
        "no file update failed"
    );
    assert_eq!(
        gw.metric("floodgate_map_entries", &[("map", "nodes")])
            .await,
        1.0,
        "entries gauge follows the file"
    );
    let (v, _) = admin_entries(&c, &gw, "nodes").await;
    assert_eq!(v["source"], "file", "the admin API names the source: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_put_text_and_json_post_entries_and_delete_entry_each_reroute_at_once() {
    let ms = masters().await;
    let dir = Scratch::new("maps-api");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let c = client();
    let (v, e) = admin_entries(&c, &gw, "nodes").await;
    assert_eq!(
        e,
        entries(&[("node1", "master1")]),
        "GET shows the file content: {v}"
    );
    assert_eq!(v["source"], "file");

    let url = gw.admin("/maps/nodes");
    let ok = |r: reqwest::Response, what: &'static str| async move {
        let s = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(s, 200, "{what}: {body}");
    };
    // why: the answer comes after the swap, so the very next request must see the change.
    ok(
        c.put(&url)
            .body("node1 master2\nnode2 master3\n")
            .send()
            .await
            .unwrap(),
        "PUT text",
    )
    .await;
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "PUT text re-routes node1"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "master3",
        "PUT text adds node2"
    );

    ok(
        c.put(&url)
            .body(r#"{"node1": "master3", "node4": "master1"}"#)
            .send()
            .await
            .unwrap(),
        "PUT JSON object",
    )
    .await;
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master3",
        "PUT JSON re-routes node1"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "404",
        "PUT replaces the whole map: node2 is gone"
    );
    assert_eq!(node(&c, &gw, "node4").await, "master1");

    let pdb = r#"[{"certname":"node1","name":"puppet_master","value":"master1"},{"certname":"node5","name":"puppet_master","value":"master2"}]"#;
    ok(
        c.put(&url).body(pdb).send().await.unwrap(),
        "PUT PuppetDB fact array",
    )
    .await;
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master1",
        "PuppetDB array: certname -> value"
    );
    assert_eq!(node(&c, &gw, "node5").await, "master2");

    ok(
        c.post(gw.admin("/maps/nodes/entries"))
            .body("node6 master3\nnode1 master2\n")
            .send()
            .await
            .unwrap(),
        "POST entries text",
    )
    .await;
    assert_eq!(node(&c, &gw, "node6").await, "master3", "POST adds node6");
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "POST replaces node1's value"
    );
    assert_eq!(
        node(&c, &gw, "node5").await,
        "master2",
        "POST keeps the other entries"
    );

    ok(
        c.post(gw.admin("/maps/nodes/entries"))
            .body(r#"{"node7": "master1"}"#)
            .send()
            .await
            .unwrap(),
        "POST entries JSON",
    )
    .await;
    assert_eq!(
        node(&c, &gw, "node7").await,
        "master1",
        "POST JSON adds node7"
    );

    ok(
        c.delete(gw.admin("/maps/nodes/entries/node6"))
            .send()
            .await
            .unwrap(),
        "DELETE entry",
    )
    .await;
    assert_eq!(
        node(&c, &gw, "node6").await,
        "404",
        "DELETE removes node6 (on_miss reject)"
    );
    let r = c
        .delete(gw.admin("/maps/nodes/entries/node6"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "deleting a missing key answers 404");

    let (v, e) = admin_entries(&c, &gw, "nodes").await;
    assert_eq!(
        e,
        entries(&[
            ("node1", "master2"),
            ("node5", "master2"),
            ("node7", "master1")
        ]),
        "GET shows the live map: {v}"
    );
    assert_eq!(v["source"], "api", "{v}");
    assert_eq!(
        updates(&gw, "api", "ok").await,
        6.0,
        "3 PUTs + 2 POSTs + 1 DELETE counted under source=api"
    );
    assert_eq!(
        gw.metric("floodgate_map_entries", &[("map", "nodes")])
            .await,
        3.0,
        "entries gauge"
    );
    let r = c.get(gw.admin("/maps/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404, "an unknown map answers 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_updates_reroute_and_a_bad_answer_keeps_the_last_good_map() {
    let ms = masters().await;
    let text = MapServer::start("node1 master1\n").await;
    let json =
        MapServer::start(r#"[{"certname":"node7","name":"puppet_master","value":"master3"}]"#)
            .await;
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}] }
maps:
  nodes: { source: { url: "{TEXT}", every: 200ms, timeout: 1s }, on_unknown_value: error }
  pdb: { source: { url: "{JSON}", every: 200ms, timeout: 1s, format: json } }
routes:
  - { name: pdb, match: { header: { name: X-Route, value: pdb } }, upstream: puppet, pick_server: { map: pdb, key: "header:X-Node-Name", on_miss: reject } }
  - { name: puppet, match: { path_prefix: / }, upstream: puppet, pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: reject } }
"#,
        &[("SERVERS", servers(&ms)), ("TEXT", text.url("/nodes.map")), ("JSON", json.url("/pdb/query/v4/facts/puppet_master"))],
    ))
    .await;
    let c = client();
    let bound = Duration::from_secs(2);
    assert!(
        routes_within(&c, &gw, "node1", "master1", bound)
            .await
            .is_some(),
        "the first poll fills the map"
    );
    let pdb = eventually(bound, || async {
        who(&c, &gw, Some("node7"), &[("X-Route", "pdb")]).await == "master3"
    })
    .await;
    assert!(pdb, "a JSON (PuppetDB) poller fills its map");

    text.set("node1 master2\nnode2 master3\n");
    let took = routes_within(&c, &gw, "node1", "master2", bound).await;
    assert!(
        took.is_some(),
        "a changed poller answer re-routes node1 within {bound:?}"
    );
    eprintln!("poller change applied after {:?}", took.unwrap());
    assert_eq!(node(&c, &gw, "node2").await, "master3");

    text.set("node1 master9\nnode2 master1\n");
    let seen = text.hits();
    assert!(
        eventually(bound, || async { text.hits() >= seen + 2 }).await,
        "the poller keeps fetching every 200ms"
    );
    assert!(
        eventually(bound, || async {
            updates(&gw, "poller", "error").await >= 1.0
        })
        .await,
        "a value naming no server is counted as a poller error"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "the bad answer is refused whole: node1 keeps master2"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "master3",
        "the bad answer is refused whole: node2 keeps master3"
    );

    text.set("node1 master3\n");
    assert!(
        routes_within(&c, &gw, "node1", "master3", bound)
            .await
            .is_some(),
        "a good answer after a bad one applies"
    );
    assert!(
        updates(&gw, "poller", "ok").await >= 3.0,
        "three good poller updates counted"
    );
    let (v, _) = admin_entries(&c, &gw, "nodes").await;
    assert_eq!(v["source"], "poller", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_socket_commands_reroute_like_haproxy_with_socat() {
    let ms = masters().await;
    let dir = Scratch::new("maps-rt");
    let map = dir.write("nodes.map", "node1 master1\nnode2 master2\n");
    let sock = dir.path("rt.sock");
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
admin: { bind: "127.0.0.1:{ADMIN}", runtime_socket: "{SOCK}" }
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}] }
maps:
  nodes: { file: "{MAP}" }
routes:
  - { name: puppet, match: { path_prefix: / }, upstream: puppet, pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: reject } }
"#,
        &[("SERVERS", servers(&ms)), ("MAP", map.clone()), ("SOCK", sock.display().to_string())],
    ))
    .await;
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::UnixStream::connect(&sock).await.is_ok()
        })
        .await,
        "the runtime socket accepts connections"
    );

    let out = runtime(&sock, "show map\n").await;
    assert!(
        out.contains("map 'nodes'") && out.contains(&map) && out.contains("entries:2"),
        "show map lists the map, its file and size: {out}"
    );
    let out = runtime(&sock, "get map nodes node1\n").await;
    assert!(
        out.contains("found=yes") && out.contains("value=\"master1\""),
        "get map: {out}"
    );

    // HAProxy scripts address maps by file path.
    assert_eq!(
        runtime(&sock, &format!("set map {map} node1 master2\n")).await,
        "\n",
        "set map answers an empty line"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "set map re-routes node1"
    );
    assert_eq!(
        runtime(&sock, "add map nodes node3 master3\n").await,
        "\n",
        "add map"
    );
    assert_eq!(
        node(&c, &gw, "node3").await,
        "master3",
        "add map adds node3"
    );
    assert_eq!(
        runtime(&sock, "del map nodes node2\n").await,
        "\n",
        "del map"
    );
    assert_eq!(node(&c, &gw, "node2").await, "404", "del map removes node2");
    let out = runtime(&sock, "show map nodes\n").await;
    assert!(
        out.contains("node1 master2") && out.contains("node3 master3") && !out.contains("node2"),
        "show map nodes dumps the live entries: {out}"
    );

    let out = runtime(&sock, "set map nodes node1 master9\n").await;
    assert!(
        out.contains("master9"),
        "set to a value naming no server is refused with a reason: {out}"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "the refused set changed nothing"
    );
    assert!(
        updates(&gw, "runtime_api", "error").await >= 1.0,
        "the refused set is counted as an error"
    );

    // Atomic bulk replacement: prepare, fill the new version with a payload, commit.
    let out = runtime(&sock, "prepare map nodes\n").await;
    let ver: u64 = out
        .trim()
        .strip_prefix("New version created: ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("prepare map answers the new version: {out:?}"));
    assert_eq!(
        runtime(
            &sock,
            &format!("add map @{ver} nodes <<\nnode8 master3\nnode9 master1\n\n")
        )
        .await,
        "\n",
        "add map @N with a payload"
    );
    let out = runtime(&sock, &format!("show map @{ver} nodes\n")).await;
    assert!(
        out.contains("node8 master3") && out.contains("node9 master1"),
        "show map @N shows the staged version: {out}"
    );
    assert_eq!(
        node(&c, &gw, "node8").await,
        "404",
        "a staged version does not route before commit"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "the live map is unchanged before commit"
    );
    assert_eq!(
        runtime(&sock, &format!("commit map @{ver} nodes\n")).await,
        "\n",
        "commit map @N"
    );
    assert_eq!(
        node(&c, &gw, "node8").await,
        "master3",
        "commit swaps the staged version in"
    );
    assert_eq!(node(&c, &gw, "node9").await, "master1");
    assert_eq!(
        node(&c, &gw, "node1").await,
        "404",
        "commit replaces the whole map"
    );

    assert_eq!(
        updates(&gw, "runtime_api", "ok").await,
        4.0,
        "set, add, del, commit counted under source=runtime_api"
    );
    assert_eq!(
        gw.metric("floodgate_map_entries", &[("map", "nodes")])
            .await,
        2.0,
        "entries gauge after commit"
    );
    let out = runtime(&sock, "get map nodes node1\n").await;
    assert!(out.contains("found=no"), "get map of a removed key: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_map_file_keeps_the_old_routing_and_is_logged_and_counted() {
    let logs = logcap::install();
    let ms = masters().await;
    let dir = Scratch::new("maps-badfile");
    let map = dir.write("nodes.map", "node1 master1\nnode2 master2\n");
    let gw = one_route_gateway_with(&ms, &map, "reject", STRICT).await;
    let c = client();
    let path = dir.path("nodes.map");

    rename_over(&path, "node1 master2\nlonely\nnode2 master3\n");
    assert!(
        eventually(ERROR_SEEN_BOUND, || async { updates(&gw, "file", "error").await == 1.0 }).await,
        "a line without a value is counted as floodgate_map_updates_total{{result=\"error\"}} within {FILE_CHANGE_BOUND:?}"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master1",
        "no part of the bad file is applied (node1)"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "master2",
        "no part of the bad file is applied (node2)"
    );

    rewrite_in_place(&path, "node1 master2\nnode2 master9\n");
    assert!(
        eventually(ERROR_SEEN_BOUND, || async {
            updates(&gw, "file", "error").await >= 2.0
        })
        .await,
        "a value naming no server is counted as an error"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master1",
        "the old routing stays (node1)"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "master2",
        "the old routing stays (node2)"
    );
    assert_eq!(updates(&gw, "file", "ok").await, 0.0, "nothing was applied");

    if logs {
        // why: the counter moves before the watcher logs the refusal
        let logged = |needle: &'static str| {
            let map = map.clone();
            move || {
                let map = map.clone();
                async move { !logcap::matching(&[&map, ":2:", needle]).is_empty() }
            }
        };
        assert!(
            eventually(Duration::from_secs(2), logged("lonely")).await,
            "the refusal is logged with file, line and key"
        );
        assert!(
            eventually(Duration::from_secs(2), logged("master9")).await,
            "the unknown server is logged with its line"
        );
    } else {
        eprintln!("another logger is installed; log lines not checked");
    }

    rename_over(&path, "node1 master3\n");
    assert!(
        routes_within(&c, &gw, "node1", "master3", FILE_CHANGE_BOUND)
            .await
            .is_some(),
        "a good file after bad ones still applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_put_body_answers_400_with_the_line_number_and_keeps_the_map() {
    let ms = masters().await;
    let dir = Scratch::new("maps-badput");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = one_route_gateway_with(&ms, &map, "reject", STRICT).await;
    let c = client();
    let url = gw.admin("/maps/nodes");
    let (before, _) = admin_entries(&c, &gw, "nodes").await;

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "line without value",
            "node1 master2\nlonely\n",
            &[":2:", "lonely"],
        ),
        (
            "value naming no server",
            "node1 master2\nnode2 master2\nnode3 master9\n",
            &[":3:", "master9"],
        ),
        (
            "duplicate key",
            "node1 master2\nnode1 master3\n",
            &[":2:", "duplicate"],
        ),
        (
            "JSON value naming no server",
            r#"{"node1": "master9"}"#,
            &["master9"],
        ),
        ("JSON that does not parse", r#"{"node1": "#, &["JSON"]),
    ];
    for (what, body, needles) in cases {
        let r = c.put(&url).body(*body).send().await.unwrap();
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        let err = v["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{what}: answered {status} {v}");
        for n in needles.iter() {
            assert!(err.contains(n), "{what}: the error names {n:?}: {err}");
        }
        assert_eq!(
            node(&c, &gw, "node1").await,
            "master1",
            "{what}: the old map keeps routing"
        );
    }
    let (after, e) = admin_entries(&c, &gw, "nodes").await;
    assert_eq!(e, entries(&[("node1", "master1")]), "the map is unchanged");
    assert_eq!(
        after["version"], before["version"],
        "the map version is unchanged"
    );
    assert_eq!(
        updates(&gw, "api", "ok").await,
        0.0,
        "no API update applied"
    );
    assert!(
        updates(&gw, "api", "error").await >= 3.0,
        "refused API updates are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_post_entries_body_answers_400_with_the_line_number_and_keeps_the_map() {
    let ms = masters().await;
    let dir = Scratch::new("maps-badpost");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let c = client();
    let url = gw.admin("/maps/nodes/entries");
    for (what, body, needles) in [
        (
            "line without value",
            "node2 master2\nlonely\n",
            [":2:", "lonely"],
        ),
        (
            "value naming no server",
            "node2 master2\nnode3 master9\n",
            [":2:", "master9"],
        ),
    ] {
        let r = c.post(&url).body(body).send().await.unwrap();
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        let err = v["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{what}: answered {status} {v}");
        for n in needles {
            assert!(err.contains(n), "POST {what}: the error names {n:?}: {err}");
        }
        assert_eq!(
            node(&c, &gw, "node2").await,
            "404",
            "POST {what}: no entry of the bad body is added"
        );
    }
    let (_, e) = admin_entries(&c, &gw, "nodes").await;
    assert_eq!(e, entries(&[("node1", "master1")]), "the map is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_api_changes_are_written_to_the_file_and_survive_a_config_reload() {
    let ms = masters().await;
    let dir = Scratch::new("maps-persist");
    let map = dir.write("nodes.map", "node1 master1\n");
    let path = dir.path("nodes.map");
    let sock = dir.path("rt.sock");
    let yaml = |persist: bool| {
        fill(
            r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
admin: { bind: "127.0.0.1:{ADMIN}", runtime_socket: "{SOCK}" }
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}] }
maps:
  nodes: { file: "{MAP}", persist: {PERSIST} }
routes:
  - { name: puppet, match: { path_prefix: / }, upstream: puppet, pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: reject } }
"#,
            &[
                ("SERVERS", servers(&ms)),
                ("MAP", map.clone()),
                ("SOCK", sock.display().to_string()),
                ("PERSIST", persist.to_string()),
            ],
        )
    };
    let gw = TestGateway::start(&yaml(true)).await;
    let c = client();

    let r = c
        .put(gw.admin("/maps/nodes"))
        .body("node1 master2\nnode2 master3\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "PUT");
    assert_eq!(
        file_entries(&path),
        entries(&[("node1", "master2"), ("node2", "master3")]),
        "PUT is written to the map file"
    );
    let r = c
        .post(gw.admin("/maps/nodes/entries"))
        .body("node3 master1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "POST");
    let r = c
        .delete(gw.admin("/maps/nodes/entries/node2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "DELETE");
    assert_eq!(
        file_entries(&path),
        entries(&[("node1", "master2"), ("node3", "master1")]),
        "POST and DELETE are written to the map file"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::UnixStream::connect(&sock).await.is_ok()
        })
        .await,
        "runtime socket up"
    );
    assert_eq!(
        runtime(&sock, "set map nodes node3 master3\n").await,
        "\n",
        "runtime set map"
    );
    assert_eq!(
        file_entries(&path),
        entries(&[("node1", "master2"), ("node3", "master3")]),
        "a Runtime API change is written too"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temp files left next to the map: {leftovers:?}"
    );

    let r = c.post(gw.admin("/reload")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "reload with the same config: {}",
        r.text().await.unwrap()
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "the API change survives a reload"
    );
    assert_eq!(node(&c, &gw, "node3").await, "master3");

    // A changed map config makes the reload read the file again: the persisted content comes back.
    gw.write_config(&yaml(false));
    let r = c.post(gw.admin("/reload")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "reload with persist: false: {}",
        r.text().await.unwrap()
    );
    let (v, e) = admin_entries(&c, &gw, "nodes").await;
    assert_eq!(
        e,
        entries(&[("node1", "master2"), ("node3", "master3")]),
        "the map re-read from the file holds the API changes: {v}"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "routing after the re-read follows the persisted change"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "404",
        "the deleted entry stays deleted"
    );

    let r = c
        .put(gw.admin("/maps/nodes"))
        .body("node1 master1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        file_entries(&path),
        entries(&[("node1", "master2"), ("node3", "master3")]),
        "with persist: false the file is left alone"
    );
}

/// Config for the redispatch tests: master1..3, nodes node1->master1, node2->master2.
fn redispatch_yaml(ms: &[OriginHandle], map: &str, redispatch: bool, health: bool) -> String {
    let health = if health {
        ", health: { path: /api/status, interval: 100ms, timeout: 500ms, rise: 1, fall: 1 }"
    } else {
        ""
    };
    fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}], timeouts: { connect: 1s }{HEALTH} }
maps:
  nodes: { file: "{MAP}" }
routes:
  - { name: puppet, match: { path_prefix: / }, upstream: puppet, pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: reject, redispatch: {REDISPATCH} } }
"#,
        &[
            ("SERVERS", servers(ms)),
            ("MAP", map.to_string()),
            ("HEALTH", health.to_string()),
            ("REDISPATCH", redispatch.to_string()),
        ],
    )
}

async fn server_healthy(c: &reqwest::Client, gw: &TestGateway, server: &str) -> Option<bool> {
    let v: serde_json::Value = c
        .get(gw.admin("/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["upstreams"]["puppet"]["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == server)
        .and_then(|s| s["healthy"].as_bool())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redispatch_a_node_whose_server_is_down_is_served_by_another_healthy_server() {
    let ms = masters().await;
    let dir = Scratch::new("maps-redis");
    let map = dir.write("nodes.map", "node1 master1\nnode2 master2\n");
    // No active health check: the first requests find master1 down by a refused connect.
    let gw = TestGateway::start(&redispatch_yaml(&ms, &map, true, false)).await;
    let c = client();
    assert_eq!(node(&c, &gw, "node1").await, "master1");
    ms[0].shutdown().await;
    let mut served = BTreeSet::new();
    for i in 0..6 {
        let got = node(&c, &gw, "node1").await;
        assert!(
            got == "master2" || got == "master3",
            "request {i} for node1 (master1 down) is redispatched to a healthy server, got {got}"
        );
        served.insert(got);
    }
    eprintln!("node1 redispatched to {served:?}");
    assert_eq!(
        node(&c, &gw, "node2").await,
        "master2",
        "other nodes keep their server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redispatch_a_node_whose_server_is_marked_down_gets_503_with_retry_after() {
    let ms = masters().await;
    let dir = Scratch::new("maps-noredis");
    let map = dir.write("nodes.map", "node1 master1\nnode2 master2\n");
    let gw = TestGateway::start(&redispatch_yaml(&ms, &map, false, true)).await;
    let c = client();
    assert_eq!(node(&c, &gw, "node1").await, "master1");
    ms[0].shutdown().await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            server_healthy(&c, &gw, "master1").await == Some(false)
        })
        .await,
        "the health check marks master1 down"
    );
    for i in 0..3 {
        let r = c
            .get(gw.url("/echo"))
            .header("X-Node-Name", "node1")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            503,
            "request {i} for node1 with redispatch: false and master1 down"
        );
        let ra = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            ra.is_some_and(|s| s >= 1),
            "the 503 carries Retry-After in seconds: {:?}",
            r.headers().get("retry-after")
        );
    }
    assert_eq!(
        node(&c, &gw, "node2").await,
        "master2",
        "other nodes keep their server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redispatch_a_refused_connect_to_the_mapped_server_also_gets_503_with_retry_after()
{
    let ms = masters().await;
    let dir = Scratch::new("maps-noredis-connect");
    let map = dir.write("nodes.map", "node1 master1\nnode2 master2\n");
    // No health check: the gateway learns master1 is down from the refused connect itself.
    let gw = TestGateway::start(&redispatch_yaml(&ms, &map, false, false)).await;
    let c = client();
    assert_eq!(node(&c, &gw, "node1").await, "master1");
    ms[0].shutdown().await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        // why: a fresh client per request, so a connection the gateway dropped cannot leak
        // into the next request.
        let answer = match client()
            .get(gw.url("/echo"))
            .header("X-Node-Name", "node1")
            .send()
            .await
        {
            Ok(r) => {
                let origin = r
                    .headers()
                    .get("x-origin")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                assert_eq!(
                    origin, None,
                    "with redispatch: false node1 is never served by another server"
                );
                let ra = if r.headers().contains_key("retry-after") {
                    " + Retry-After"
                } else {
                    ""
                };
                format!("{}{ra}", r.status().as_u16())
            }
            Err(e) => format!("no answer ({e:?})"),
        };
        answers.push(answer);
    }
    assert!(
        answers.iter().all(|a| a == "503 + Retry-After"),
        "every request for node1 answers 503 with Retry-After, before and after the server is marked down by observed failures; got {answers:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_bearer_token_but_health_readiness_and_metrics_do_not() {
    let var = format!("FLOODGATE_MAPS_TEST_TOKEN_{}", std::process::id());
    let token = format!("maps-secret-{}", std::process::id());
    std::env::set_var(&var, &token);
    let ms = masters().await;
    let dir = Scratch::new("maps-token");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
admin: { bind: "127.0.0.1:{ADMIN}", token_env: {VAR} }
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}] }
maps:
  nodes: { file: "{MAP}" }
routes:
  - { name: puppet, match: { path_prefix: / }, upstream: puppet, pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: reject } }
"#,
        &[("SERVERS", servers(&ms)), ("MAP", map), ("VAR", var.clone())],
    ))
    .await;
    let c = client();
    let bearer = format!("Bearer {token}");

    let refused = [
        (
            "GET /maps/nodes without token",
            c.get(gw.admin("/maps/nodes")),
        ),
        (
            "GET /maps/nodes with a wrong token",
            c.get(gw.admin("/maps/nodes"))
                .header("authorization", format!("Bearer {token}x")),
        ),
        (
            "GET /maps/nodes with the token as Basic",
            c.get(gw.admin("/maps/nodes"))
                .header("authorization", format!("Basic {token}")),
        ),
        (
            "PUT /maps/nodes without token",
            c.put(gw.admin("/maps/nodes")).body("node1 master2\n"),
        ),
        (
            "POST /maps/nodes/entries without token",
            c.post(gw.admin("/maps/nodes/entries"))
                .body("node2 master2\n"),
        ),
        (
            "DELETE /maps/nodes/entries/node1 without token",
            c.delete(gw.admin("/maps/nodes/entries/node1")),
        ),
        ("POST /reload without token", c.post(gw.admin("/reload"))),
        ("GET /status without token", c.get(gw.admin("/status"))),
    ];
    let n_refused = refused.len();
    for (what, rb) in refused {
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
    }
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master1",
        "refused calls changed nothing"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "404",
        "refused POST added nothing"
    );

    for p in ["/healthz", "/readyz", "/metrics"] {
        let r = c.get(gw.admin(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p} needs no token");
    }

    let r = c
        .get(gw.admin("/maps/nodes"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET with the token");
    let r = c
        .put(gw.admin("/maps/nodes"))
        .header("authorization", &bearer)
        .body("node1 master2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "PUT with the token");
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "the authorised PUT re-routes"
    );
    let r = c
        .post(gw.admin("/reload"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "POST /reload with the token");

    assert_eq!(
        gw.metric("floodgate_admin_auth_failures_total", &[]).await,
        n_refused as f64,
        "every refused call is counted"
    );
    assert_eq!(
        updates(&gw, "api", "ok").await,
        1.0,
        "only the authorised PUT updated the map"
    );
    std::env::remove_var(&var);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_during_admin_swaps_never_fail_and_follow_the_new_map() {
    let ms = masters().await;
    let dir = Scratch::new("maps-swap");
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!("node{i} master{}\n", i % 3 + 1));
    }
    let map = dir.write("nodes.map", &text);
    let gw = Arc::new(one_route_gateway(&ms, &map, "reject").await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (gw, stop) = (gw.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut bad) = (0u32, Vec::new());
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let got = node(&c, &gw, &format!("node{}", i % 2000)).await;
                if got.starts_with("master") {
                    ok += 1;
                } else {
                    bad.push(got);
                }
                i += 7;
            }
            (ok, bad)
        }));
    }
    let c = client();
    for round in 0..6 {
        let shift = round % 3;
        let body: String = (0..2000)
            .map(|i| format!("node{i} master{}\n", (i + shift + 1) % 3 + 1))
            .collect();
        let r = c
            .put(gw.admin("/maps/nodes"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "swap {round}");
        let want = format!("master{}", (5 + shift + 1) % 3 + 1);
        assert_eq!(
            node(&c, &gw, "node5").await,
            want,
            "after swap {round} node5 follows the new map"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad) = (0, Vec::new());
    for t in tasks {
        let (o, b) = t.await.unwrap();
        ok += o;
        bad.extend(b);
    }
    let kinds: HashSet<&String> = bad.iter().collect();
    assert!(
        bad.is_empty(),
        "no request failed during 6 swaps ({ok} ok, {} failed: {kinds:?})",
        bad.len()
    );
    assert!(ok > 50, "the load ran during the swaps: {ok} requests");
}

/// Reads one HTTP/1.1 response (head and Content-Length body) from `s`; None on EOF or reset
/// before a status line, or after 3 s.
async fn read_response(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<(String, String)>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let status = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    Some((status, headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_after_a_refused_connect_does_not_promise_keep_alive_on_a_connection_it_closes(
) {
    let ms = masters().await;
    let dir = Scratch::new("maps-keepalive");
    let map = dir.write("nodes.map", "node1 master1\nnode2 master2\n");
    let gw = TestGateway::start(&redispatch_yaml(&ms, &map, false, false)).await;
    ms[0].shutdown().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let req = "GET /echo HTTP/1.1\r\nHost: gw\r\nX-Node-Name: node1\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, headers) = read_response(&mut s)
        .await
        .expect("the first request (mapped server down) gets an answer");
    assert!(
        !status.contains(" 200 "),
        "master1 is down and redispatch is off: {status}"
    );
    let close = headers
        .iter()
        .any(|(k, v)| k == "connection" && v.contains("close"));
    if !close {
        // The answer promised keep-alive, so the connection must take the next request.
        let second = "GET /echo HTTP/1.1\r\nHost: gw\r\nX-Node-Name: node2\r\n\r\n";
        let wrote = s.write_all(second.as_bytes()).await;
        let next = match wrote {
            Ok(()) => read_response(&mut s).await,
            Err(_) => None,
        };
        assert!(
            next.is_some(),
            "the error answer ({status}, headers {headers:?}) did not say Connection: close, yet the gateway closed the connection: the next request on it got no answer"
        );
    }
}

/// A large map replaced with the same keys in the same order (the reused key index), then in
/// another order, then with a key removed: every version routes exactly as its text says.
#[tokio::test]
async fn large_map_put_with_moved_nodes_reroutes_whatever_the_key_order() {
    let ms = masters().await;
    let dir = Scratch::new("maps-large");
    let n = 5000;
    let text = |shift: usize, order_rev: bool, skip: Option<usize>| -> String {
        let mut lines: Vec<String> = (0..n)
            .filter(|i| Some(*i) != skip)
            .map(|i| format!("node{i} master{}\n", (i + shift) % 3 + 1))
            .collect();
        if order_rev {
            lines.reverse();
        }
        lines.concat()
    };
    let map = dir.write("nodes.map", &text(0, false, None));
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let c = client();
    let url = gw.admin("/maps/nodes");
    let samples = [0usize, 1, 2, 1234, 4999];
    for (shift, rev, skip) in [(1, false, None), (2, true, None), (0, false, Some(1234))] {
        let r = c
            .put(&url)
            .body(text(shift, rev, skip))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        for i in samples {
            let want = if Some(i) == skip {
                "404".to_string()
            } else {
                format!("master{}", (i + shift) % 3 + 1)
            };
            assert_eq!(
                node(&c, &gw, &format!("node{i}")).await,
                want,
                "node{i} after PUT shift={shift} reversed={rev} skip={skip:?}"
            );
        }
    }
    let status = status(&gw).await;
    let m = &status["maps"]["nodes"];
    assert_eq!(m["entries"], n - 1, "{m}");
    let bytes = m["bytes"].as_u64().unwrap();
    assert!(
        bytes > 5000 * 20 && bytes < 5000 * 200,
        "table heap reported: {m}"
    );
}

/// A body announced past the 256 MiB limit is refused with 413 before it is read, and the map
/// is untouched (it used to be cut at the limit and applied).
#[tokio::test]
async fn an_oversized_map_body_gets_413_and_the_map_stays() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ms = masters().await;
    let dir = Scratch::new("maps-413");
    let map = dir.write("nodes.map", "node1 master1\n");
    let gw = one_route_gateway(&ms, &map, "reject").await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", gw.admin_port))
        .await
        .unwrap();
    conn.write_all(
        b"PUT /maps/nodes HTTP/1.1\r\nHost: admin\r\nContent-Length: 300000000\r\n\r\nnode1 master2\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("answered before the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(node(&client(), &gw, "node1").await, "master1");
}

/// A map as HAProxy takes it: node1 twice (HAProxy uses the first line), node2 naming a server
/// the upstream lacks (HAProxy's `use-server` falls back to load balancing), a comment.
const HAPROXY_STYLE_MAP: &str =
    "# node -> master\nnode1 master1\nnode2 master9\nnode1 master2\nnode3 master3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_haproxy_map_with_duplicates_and_unknown_values_loads_with_warnings_as_haproxy_reads_it()
{
    let logs = logcap::install();
    let ms = masters().await;
    let dir = Scratch::new("maps-policy");
    let map = dir.write("nodes.map", HAPROXY_STYLE_MAP);
    let c = client();

    let gw = one_route_gateway(&ms, &map, "reject").await;
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master1",
        "the first line of node1 wins"
    );
    assert_eq!(
        node(&c, &gw, "node2").await,
        "404",
        "node2's entry is skipped, so it is a miss (on_miss: reject)"
    );
    assert_eq!(node(&c, &gw, "node3").await, "master3");
    if logs {
        assert!(
            !logcap::matching(&[
                &map,
                ":4:",
                "duplicate key \"node1\"",
                "line 2's value is used"
            ])
            .is_empty(),
            "the duplicate is a warning with both lines"
        );
        assert!(
            !logcap::matching(&[&map, ":3:", "master9", "skipped"]).is_empty(),
            "the skipped entry is a warning with its line"
        );
    }
    // A file change follows the same policy (and is applied, not refused).
    rename_over(
        &dir.path("nodes.map"),
        "node1 master3\nnode1 master1\nnode2 master9\n",
    );
    assert!(
        routes_within(&c, &gw, "node1", "master3", FILE_CHANGE_BOUND)
            .await
            .is_some(),
        "a rewritten file with a duplicate and an unknown value still applies"
    );
    drop(gw);

    let last = one_route_gateway_with(&ms, &map, "balance", ", on_duplicate: last").await;
    assert_eq!(
        node(&c, &last, "node1").await,
        "master1",
        "on_duplicate: last takes line 2"
    );
    let other = node(&c, &last, "node2").await;
    assert!(
        other.starts_with("master"),
        "a skipped key with on_miss: balance is load-balanced, as HAProxy does: {other}"
    );
    drop(last);

    // Either case can be made an error: `check` (and start) refuse with the line.
    let strict = dir.write(
        "strict.yaml",
        &format!(
            "listeners: [{{ bind: \"127.0.0.1:18080\" }}]\nupstreams:\n  puppet: {{ servers: [{}] }}\nmaps:\n  nodes: {{ file: \"{map}\", on_duplicate: error, on_unknown_value: error }}\nroutes:\n  - {{ name: p, match: {{ path_prefix: / }}, upstream: puppet, pick_server: {{ map: nodes, key: \"header:X-Node-Name\" }} }}\n",
            servers(&ms)
        ),
    );
    let errs = floodgate::app::check(Path::new(&strict)).unwrap_err();
    let shown = errs.to_string();
    assert!(
        shown.contains(":3:") && shown.contains("master9"),
        "{shown}"
    );
    assert!(
        shown.contains("duplicate key \"node1\" (first defined on line 1)"),
        "{shown}"
    );
    let bad_word = dir.write(
        "word.yaml",
        &format!(
            "upstreams:\n  puppet: {{ servers: [{}] }}\nmaps:\n  nodes: {{ file: \"{map}\", on_duplicate: newest }}\n",
            servers(&ms)
        ),
    );
    let errs = floodgate::app::check(Path::new(&bad_word)).unwrap_err();
    assert!(errs.mentions("maps.nodes.on_duplicate"), "{errs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_api_commit_of_a_whole_map_skips_unknown_values_but_a_set_map_is_refused() {
    // The Sasori updater: prepare, clear, add every PuppetDB row, commit. A row naming a master
    // the gateway lacks must not stop every other node's update.
    let ms = masters().await;
    let dir = Scratch::new("maps-policy-rt");
    let map = dir.write("nodes.map", "node1 master1\n");
    let sock = dir.path("rt.sock");
    let gw = TestGateway::start(&fill(
        r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
admin: { bind: "127.0.0.1:{ADMIN}", runtime_socket: "{SOCK}" }
access_log: { enabled: false }
upstreams:
  puppet: { servers: [{SERVERS}] }
maps:
  nodes: { file: "{MAP}" }
routes:
  - { name: puppet, match: { path_prefix: / }, upstream: puppet, pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: reject } }
"#,
        &[
            ("SERVERS", servers(&ms)),
            ("MAP", map.clone()),
            ("SOCK", sock.display().to_string()),
        ],
    ))
    .await;
    let c = client();
    let out = runtime(&sock, "prepare map nodes\n").await;
    let ver = out.trim().rsplit(' ').next().unwrap().to_string();
    let out = runtime(
        &sock,
        &format!("clear map @{ver} nodes; add map @{ver} nodes node1 master2; add map @{ver} nodes node2 master9; add map @{ver} nodes node3 master3; commit map @{ver} nodes\n"),
    )
    .await;
    assert!(!out.contains("master9"), "the commit is not refused: {out}");
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "the commit applied"
    );
    assert_eq!(node(&c, &gw, "node3").await, "master3");
    assert_eq!(
        node(&c, &gw, "node2").await,
        "404",
        "the unknown row was skipped"
    );
    let out = runtime(&sock, "set map nodes node1 master9\n").await;
    assert!(
        out.contains("master9"),
        "a single-entry edit stays strict: {out}"
    );
    assert_eq!(
        node(&c, &gw, "node1").await,
        "master2",
        "the refused set changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_api_edit_keeps_the_files_comments_layout_and_untouched_lines() {
    let ms = masters().await;
    let dir = Scratch::new("maps-persist-comments");
    let original = "# Puppet nodes -> masters (owner: ops)\n\n# rack A\nnode1   master1\nnode2\tmaster2\nghost master9\n# rack B\nnode3 master3\nnode3 master1\n";
    let map = dir.write("nodes.map", original);
    let path = dir.path("nodes.map");
    let gw = one_route_gateway_with(&ms, &map, "reject", ", persist: true").await;
    let c = client();
    let r = c
        .post(gw.admin("/maps/nodes/entries"))
        .body("node1 master3\nnode4 master2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "POST");
    let r = c
        .delete(gw.admin("/maps/nodes/entries/node2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "DELETE");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "# Puppet nodes -> masters (owner: ops)\n\n# rack A\nnode1   master3\nghost master9\n# rack B\nnode3 master3\nnode3 master1\nnode4 master2\n",
        "comments, blank lines, spacing, the skipped line and the shadowed duplicate stay; only touched lines change"
    );
    assert_eq!(node(&c, &gw, "node1").await, "master3");
    assert_eq!(node(&c, &gw, "node4").await, "master2");
    assert_eq!(
        node(&c, &gw, "node3").await,
        "master3",
        "the first node3 line is still in effect"
    );
}
