//! The control plane (issue 15): one snapshot per request, including its policy generation,
//! and one writer through which concurrent map edits, policy reloads and config reloads all
//! land, each exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use floodgate::policy::SharedValue;
use serde_json::Value;
use std::time::Duration;
use tokio::task::JoinSet;

/// A script whose hooks record the generation `generation` they belong to: `admit` and
/// `route` in the shared dictionary (by the request's `id`), `response` in headers.
fn marker_script(generation: &str) -> String {
    format!(
        r#"
local GEN = "{generation}"
function admit(req) shared.set("admit:" .. req.query.id, GEN) end
function route(req) shared.set("route:" .. req.query.id, GEN) end
function response(req, resp)
  local id = req.query.id
  return {{ set_headers = {{
    ["X-Admit-Gen"] = shared.get("admit:" .. id) or "none",
    ["X-Route-Gen"] = shared.get("route:" .. id) or "none",
    ["X-Response-Gen"] = GEN,
  }} }}
end
"#
    )
}

/// The three generation markers a response carries.
fn generations(r: &reqwest::Response) -> [String; 3] {
    ["x-admit-gen", "x-route-gen", "x-response-gen"].map(|h| {
        r.headers()
            .get(h)
            .map_or("missing", |v| v.to_str().unwrap())
            .to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_runs_one_policy_generation_across_its_hooks_when_a_reload_lands_mid_request() {
    let a = origin("a").await;
    let dir = Scratch::new("control-gen");
    let script = dir.replace("gen.lua", &marker_script("1"));
    let gw = TestGateway::start(&format!(
        r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
access_log: {{ enabled: false }}
upstreams:
  app: {{ servers: [{{ addr: "{}" }}] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: app }}
policy: {{ scripts: ["{}"] }}
"#,
        a.addr(),
        script.display()
    ))
    .await;
    let c = client();
    let held = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow?ms=1500&id=held"));
        async move { c.get(url).send().await.unwrap() }
    });
    let shared = gw.state.policy.shared().clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let seen = shared.get("route:held");
            async move { seen == Some(SharedValue::Str("1".into())) }
        })
        .await,
        "the held request ran admit and route of generation 1"
    );

    dir.replace("gen.lua", &marker_script("2"));
    let r = c.post(gw.admin("/policy/reload")).send().await.unwrap();
    let code = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(code, 200, "generation 2 loads: {body}");
    assert!(
        body["generation"].as_u64() >= Some(2),
        "a new generation is live: {body}"
    );

    let held = held.await.unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(
        generations(&held),
        ["1", "1", "1"].map(String::from),
        "admit, route and response of the held request all ran the generation it started with"
    );
    let fresh = c.get(gw.url("/slow?ms=1&id=fresh")).send().await.unwrap();
    assert_eq!(
        generations(&fresh),
        ["2", "2", "2"].map(String::from),
        "a request that starts after the reload runs the new generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_map_edits_policy_reloads_and_config_reloads_lose_no_update() {
    const EDITS: usize = 40;
    const POLICY_RELOADS: u64 = 10;
    const CONFIG_RELOADS: u64 = 5;
    let a = origin("m1").await;
    let dir = Scratch::new("control-concurrent");
    let map = dir.write("nodes.map", "seed m1\n");
    let script = dir.write("p.lua", "function admit(req) end\n");
    let config = |extra_route: &str| {
        format!(
            r#"
listeners: [{{ bind: "127.0.0.1:{{PORT}}" }}]
access_log: {{ enabled: false }}
upstreams:
  puppet: {{ servers: [{{ name: m1, addr: "{}" }}] }}
maps:
  nodes: {{ file: "{map}" }}
routes:
{extra_route}  - {{ name: puppet, match: {{ path_prefix: / }}, upstream: puppet, pick_server: {{ map: nodes, key: "header:X-Node-Name", on_miss: balance }} }}
policy: {{ scripts: ["{script}"] }}
"#,
            a.addr()
        )
    };
    let gw = TestGateway::start(&config("")).await;
    let before = status(&gw).await;
    assert_eq!(before["version"], 1, "{before}");
    assert_eq!(before["policy"]["generation"], 1, "{before}");
    gw.write_config(&config(
        "  - { name: added, match: { path: /added }, respond: { status: 200, body: \"added\\n\" } }\n",
    ));

    let c = client();
    let mut tasks = JoinSet::new();
    let post = |path: String, body: String| {
        let (c, url) = (c.clone(), gw.admin(&path));
        async move {
            let r = c.post(url).body(body).send().await.unwrap();
            let code = r.status().as_u16();
            (path, code, r.text().await.unwrap())
        }
    };
    // interleaved, so each kind of change races the others
    for i in 0..EDITS {
        tasks.spawn(post("/maps/nodes/entries".into(), format!("node{i} m1\n")));
        if i % 4 == 0 && (i / 4) < POLICY_RELOADS as usize {
            tasks.spawn(post("/policy/reload".into(), String::new()));
        }
        if i % 8 == 0 && (i / 8) < CONFIG_RELOADS as usize {
            tasks.spawn(post("/reload".into(), String::new()));
        }
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        let (path, code, body) = done.unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        answered += 1;
    }
    assert_eq!(answered, EDITS + (POLICY_RELOADS + CONFIG_RELOADS) as usize);

    let nodes: Value = admin_json(&gw, "/maps/nodes").await;
    let entries = nodes["entries"].as_object().unwrap();
    let missing: Vec<String> = (0..EDITS)
        .map(|i| format!("node{i}"))
        .filter(|k| !entries.contains_key(k))
        .collect();
    assert!(
        missing.is_empty(),
        "every map edit survived: missing {missing:?}"
    );
    assert!(entries.contains_key("seed"), "the file's entry too");
    let added = c.get(gw.url("/added")).send().await.unwrap();
    assert_eq!(added.status(), 200, "the reloaded config is live");
    let after = status(&gw).await;
    assert_eq!(
        after["policy"]["generation"].as_u64(),
        Some(1 + POLICY_RELOADS + CONFIG_RELOADS),
        "every policy compile (reloads, and each config reload's) was published once: {after}"
    );
    assert_eq!(
        after["version"].as_u64(),
        Some(1 + EDITS as u64 + POLICY_RELOADS + CONFIG_RELOADS),
        "each change published exactly one version: {after}"
    );
}
