//! Server commands of the Runtime API and the admin API (issue 13): `disable server` drains a
//! server (no new request, the one in flight finishes), `enable server` brings it back, `set
//! weight` changes the split, `show stat` counts what the origins saw, and a reload forgets
//! runtime changes as HAProxy does without a state file. Real gateway, real socket, real
//! origins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TWO: &str = r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
admin: { bind: "127.0.0.1:{ADMIN}", runtime_socket: "{DIR}/rt.sock" }
access_log: { enabled: false }
upstreams:
  u:
    balance: @BALANCE@
    servers: [{ name: a, addr: "@A@", max_inflight: @MAX@ }, { name: b, addr: "@B@", max_inflight: @MAX@ }]
routes: [{ name: all, upstream: u }]
"#;

async fn start(
    a: &OriginHandle,
    b: &OriginHandle,
    balance: &str,
    max: u32,
) -> (TestGateway, PathBuf) {
    let gw = TestGateway::start(
        &TWO.replace("@A@", &a.addr().to_string())
            .replace("@B@", &b.addr().to_string())
            .replace("@BALANCE@", balance)
            .replace("@MAX@", &max.to_string()),
    )
    .await;
    let sock = gw.dir.join("rt.sock");
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::UnixStream::connect(&sock).await.is_ok()
        })
        .await,
        "the runtime socket accepts connections"
    );
    (gw, sock)
}

/// `show stat` as (pxname, svname) -> column -> value.
async fn show_stat(sock: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let out = runtime(sock, "show stat\n").await;
    let mut lines = out.lines().filter(|l| !l.is_empty());
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

async fn stat(sock: &Path, sv: &str, col: &str) -> String {
    show_stat(sock)
        .await
        .into_iter()
        .find(|r| r["pxname"] == "u" && r["svname"] == sv)
        .unwrap_or_else(|| panic!("no show stat line for u/{sv}"))[col]
        .clone()
}

/// Sends `n` requests one after the other; all must succeed.
async fn send(gw: &TestGateway, n: usize) {
    let c = client();
    for _ in 0..n {
        let r = c.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request through the gateway");
    }
}

fn served(o: &OriginHandle) -> u64 {
    o.stats().requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_server_sends_no_new_request_there_while_its_request_in_flight_finishes() {
    let (a, b) = (origin("a").await, origin("b").await);
    let (gw, sock) = start(&a, &b, "round_robin", 100).await;
    send(&gw, 10).await;
    assert_eq!((served(&a), served(&b)), (5, 5), "round robin before");

    // A slow request in flight on a, then a is disabled.
    let c = client();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow?ms=1500"));
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let on = loop {
        if a.stats().current_concurrent == 1 {
            break "a";
        }
        if b.stats().current_concurrent == 1 {
            break "b";
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (busy, other) = if on == "a" { (&a, &b) } else { (&b, &a) };
    assert_eq!(
        runtime(&sock, &format!("disable server u/{on}\n")).await,
        "\n"
    );
    assert_eq!(stat(&sock, on, "status").await, "MAINT");
    assert_eq!(
        stat(&sock, on, "scur").await,
        "1",
        "its request is still in flight"
    );
    let (busy_before, other_before) = (served(busy), served(other));
    send(&gw, 20).await;
    assert_eq!(
        served(busy),
        busy_before,
        "the disabled server gets no new request"
    );
    assert_eq!(
        served(other),
        other_before + 20,
        "the other one gets them all"
    );
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the request in flight on the disabled server finishes"
    );

    assert_eq!(
        runtime(&sock, &format!("enable server u/{on}\n")).await,
        "\n"
    );
    send(&gw, 10).await;
    assert_eq!(
        served(busy),
        busy_before + 5,
        "enabled: back in the rotation"
    );
    let text = runtime(&sock, "show servers state u\n").await;
    assert!(
        text.starts_with("1\n# be_id be_name srv_id srv_name"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_weight_changes_the_split_and_show_stat_counts_what_the_origins_saw() {
    let (a, b) = (origin("a").await, origin("b").await);
    let (gw, sock) = start(&a, &b, "round_robin", 100).await;
    assert_eq!(runtime(&sock, "set server u/a weight 3\n").await, "\n");
    assert_eq!(
        runtime(&sock, "get weight u/a\n").await,
        "3 (initial 1)\n\n"
    );
    send(&gw, 40).await;
    assert_eq!((served(&a), served(&b)), (30, 10), "weights 3:1");
    assert_eq!(runtime(&sock, "set weight u/b 0\n").await, "\n");
    assert_eq!(stat(&sock, "b", "status").await, "DRAIN", "weight 0");
    send(&gw, 20).await;
    assert_eq!((served(&a), served(&b)), (50, 10), "weight 0 takes nothing");

    for (sv, o) in [("a", &a), ("b", &b)] {
        assert_eq!(
            stat(&sock, sv, "stot").await,
            served(o).to_string(),
            "show stat stot of {sv} = requests its origin saw"
        );
        assert_eq!(stat(&sock, sv, "scur").await, "0", "nothing in flight");
        assert_eq!(stat(&sock, sv, "smax").await, "1", "one at a time");
        assert_eq!(stat(&sock, sv, "qcur").await, "0");
    }
    assert_eq!(stat(&sock, "a", "weight").await, "3");
    assert_eq!(stat(&sock, "BACKEND", "stot").await, "60");
    assert_eq!(
        stat(&sock, "BACKEND", "weight").await,
        "3",
        "only a balances"
    );
    assert_eq!(
        runtime(&sock, "set weight u/a 257\n").await,
        "Absolute weight can only be between 0 and 256 inclusive.\n\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_handed_a_slot_on_a_server_disabled_meanwhile_goes_to_another() {
    let (a, b) = (origin("a").await, origin("b").await);
    // One slot per server: a third request waits in the queue for either.
    let (gw, sock) = start(&a, &b, "round_robin", 1).await;
    let c = client();
    let get = |path: &str| {
        let (c, url) = (c.clone(), gw.url(path));
        tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            let origin = r.headers()["x-origin"].to_str().unwrap().to_string();
            (r.status().as_u16(), origin, Instant::now())
        })
    };
    let short = get("/slow?ms=400");
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().current_concurrent + b.stats().current_concurrent == 1
        })
        .await
    );
    let (x, y) = if a.stats().current_concurrent == 1 {
        ("a", &b)
    } else {
        ("b", &a)
    };
    let long = get("/slow?ms=2500");
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().current_concurrent + b.stats().current_concurrent == 2
        })
        .await
    );
    let t0 = Instant::now();
    let queued = get("/echo");
    assert!(
        eventually(Duration::from_secs(5), || async {
            stat(&sock, "BACKEND", "qcur").await == "1"
        })
        .await,
        "the third request waits in the queue"
    );
    assert_eq!(
        runtime(&sock, &format!("disable server u/{x}\n")).await,
        "\n"
    );
    let (status, origin, done) = queued.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        origin,
        y.name(),
        "the slot freed on the disabled server {x} was not used"
    );
    assert!(
        done - t0 > Duration::from_millis(1500),
        "it waited for the other server's slot ({:?})",
        done - t0
    );
    assert_eq!(short.await.unwrap().0, 200);
    assert_eq!(long.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_disables_enables_and_weighs_servers_and_a_reload_forgets_it() {
    let (a, b) = (origin("a").await, origin("b").await);
    let (gw, _sock) = start(&a, &b, "least_conn", 100).await;
    let c = client();
    let r = c
        .post(gw.admin("/upstreams/u/servers/a/disable"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["status"].as_str(), v["disabled"].as_bool()),
        (Some("MAINT"), Some(true))
    );
    send(&gw, 10).await;
    assert_eq!(
        (served(&a), served(&b)),
        (0, 10),
        "least_conn skips the disabled server"
    );

    let all: serde_json::Value = admin_json(&gw, "/upstreams").await;
    assert_eq!(all["upstreams"][0]["servers"][1]["requests"], 10, "{all}");
    let st = status(&gw).await;
    assert_eq!(st["upstreams"]["u"]["servers"][0]["status"], "MAINT");
    assert_eq!(
        st["software"],
        env!("CARGO_PKG_VERSION"),
        "/status has the version"
    );

    // A reload puts the server back in service (HAProxy without server-state-file).
    let r = c.post(gw.admin("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = admin_json(&gw, "/upstreams/u/servers/a").await;
    assert_eq!(
        v["disabled"], false,
        "reload forgot the runtime change: {v}"
    );

    let r = c
        .put(gw.admin("/upstreams/u/servers/b/weight"))
        .body("0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = served(&b);
    send(&gw, 10).await;
    assert_eq!(served(&b), before, "weight 0 via the admin API");
    let r = c
        .put(gw.admin("/upstreams/u/servers/b/weight"))
        .body("heavy")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a bad weight is refused");
    let r = c
        .post(gw.admin("/upstreams/u/servers/zz/enable"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["servers"],
        serde_json::json!(["a", "b"]),
        "lists the servers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_server_state_drain_keeps_balanced_requests_away_and_ready_restores_the_weight() {
    let (a, b) = (origin("a").await, origin("b").await);
    let (gw, sock) = start(&a, &b, "round_robin", 100).await;
    assert_eq!(runtime(&sock, "set weight u/a 3\n").await, "\n");
    assert_eq!(runtime(&sock, "set server u/a state drain\n").await, "\n");
    assert_eq!(stat(&sock, "a", "status").await, "DRAIN");
    send(&gw, 8).await;
    assert_eq!(
        (served(&a), served(&b)),
        (0, 8),
        "drain: no balanced request"
    );
    assert_eq!(runtime(&sock, "set server u/a state ready\n").await, "\n");
    send(&gw, 8).await;
    assert_eq!(
        (served(&a), served(&b)),
        (6, 10),
        "ready: weight 3 again (3:1 over 8)"
    );
    let c = client();
    let r = c
        .put(gw.admin("/upstreams/u/servers/b/state"))
        .body("maint")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "MAINT", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stat_qcur_counts_requests_waiting_for_the_server_a_map_pins_them_to() {
    let (a, b) = (origin("a").await, origin("b").await);
    let files = Scratch::new("rt-pinned");
    let map = files.write("nodes.map", "node1 a\n");
    let gw = TestGateway::start(
        &r#"
listeners: [{ bind: "127.0.0.1:{PORT}" }]
admin: { bind: "127.0.0.1:{ADMIN}", runtime_socket: "{DIR}/rt.sock" }
access_log: { enabled: false }
upstreams:
  u: { servers: [{ name: a, addr: "@A@", max_inflight: 1 }, { name: b, addr: "@B@" }] }
maps:
  nodes: { file: "@MAP@" }
routes:
  - { name: pinned, upstream: u, pick_server: { map: nodes, key: "header:X-Node-Name" } }
"#
        .replace("@A@", &a.addr().to_string())
        .replace("@B@", &b.addr().to_string())
        .replace("@MAP@", &map),
    )
    .await;
    let sock = gw.dir.join("rt.sock");
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::UnixStream::connect(&sock).await.is_ok()
        })
        .await
    );
    let c = client();
    let pinned = |path: &str| {
        let (c, url) = (c.clone(), gw.url(path));
        tokio::spawn(async move {
            c.get(url)
                .header("X-Node-Name", "node1")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let first = pinned("/slow?ms=1000");
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().current_concurrent == 1
        })
        .await
    );
    let second = pinned("/echo");
    assert!(
        eventually(Duration::from_secs(5), || async {
            stat(&sock, "a", "qcur").await == "1"
        })
        .await,
        "the second request waits for a, its pinned server"
    );
    assert_eq!(stat(&sock, "b", "qcur").await, "0");
    assert_eq!(stat(&sock, "BACKEND", "qcur").await, "1");
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (200, 200));
    assert_eq!(stat(&sock, "a", "qcur").await, "0", "served");
    assert_eq!(stat(&sock, "a", "qmax").await, "1");
    assert_eq!(stat(&sock, "a", "stot").await, "2");
    assert_eq!(b.stats().requests, 0, "pinned requests never went to b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_socket_answers_as_soon_as_readyz_says_ready() {
    let a = origin("a").await;
    let b = origin("b").await;
    // TestGateway::start returns at the first /readyz 200: the socket must be there already,
    // so a deploy script that waits for readiness can drive the socket at once.
    let gw = TestGateway::start(
        &TWO.replace("@A@", &a.addr().to_string())
            .replace("@B@", &b.addr().to_string())
            .replace("@BALANCE@", "round_robin")
            .replace("@MAX@", "4"),
    )
    .await;
    let sock = gw.dir.join("rt.sock");
    let conn = tokio::net::UnixStream::connect(&sock).await;
    assert!(conn.is_ok(), "socket not bound at readiness: {conn:?}");
}
