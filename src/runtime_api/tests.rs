//! Unit tests of the Runtime API: parsing, map commands against an in-memory store, server
//! commands against real [`Upstream`]s built from a config, and the socket server.

use super::maps::UNKNOWN_MAP;
use super::*;
use crate::maps::{MapSource, MapTable};
use crate::upstream::Upstream;
use std::collections::HashMap;
use tokio::io::AsyncReadExt;

type Slot = (String, Option<PathBuf>, Arc<MapTable>);

/// In-memory stand-in for the caller's snapshot-backed store.
struct MemStore {
    maps: Mutex<Vec<Slot>>,
    servers: Vec<&'static str>,
}

impl MemStore {
    fn new() -> Arc<Self> {
        let nodes: HashMap<String, String> = [("n1", "master1"), ("n2", "master2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Arc::new(MemStore {
            maps: Mutex::new(vec![
                (
                    "nodes".into(),
                    Some(PathBuf::from("/etc/haproxy/node-master.map")),
                    Arc::new(MapTable::new(nodes, 1, MapSource::Api)),
                ),
                ("other".into(), None, Arc::new(MapTable::empty())),
            ]),
            servers: vec!["master1", "master2", "master3"],
        })
    }
    fn value(&self, map: &str, key: &str) -> Option<String> {
        self.get(map)?.get(key).map(str::to_string)
    }
}

impl MapStore for MemStore {
    fn list(&self) -> Vec<MapInfo> {
        let maps = self.maps.lock();
        maps.iter()
            .map(|(n, f, t)| MapInfo {
                name: n.clone(),
                file: f.clone(),
                entries: t.len(),
            })
            .collect()
    }
    fn resolve(&self, name_or_file: &str) -> Option<String> {
        let maps = self.maps.lock();
        maps.iter()
            .find(|(n, f, _)| n == name_or_file || f.as_deref() == Some(Path::new(name_or_file)))
            .map(|(n, _, _)| n.clone())
    }
    fn get(&self, map: &str) -> Option<Arc<MapTable>> {
        self.maps
            .lock()
            .iter()
            .find(|(n, _, _)| n == map)
            .map(|(_, _, t)| t.clone())
    }
    fn replace(
        &self,
        map: &str,
        entries: HashMap<String, String>,
        source: MapSource,
        _change: Change,
    ) -> Result<u64, String> {
        let errs = crate::maps::validate_values(&entries, |v| self.servers.contains(&v), map);
        if let Some(e) = errs.first() {
            return Err(e.message.clone());
        }
        let mut maps = self.maps.lock();
        let slot = maps
            .iter_mut()
            .find(|(n, _, _)| n == map)
            .ok_or("no such map")?;
        let version = slot.2.version + 1;
        slot.2 = Arc::new(MapTable::new(entries, version, source));
        Ok(version)
    }
}

/// Upstreams built from a config: `u` (round robin, a weight 1, b weight 1) and `v`.
struct MemUpstreams(Vec<Arc<Upstream>>);

impl UpstreamStore for MemUpstreams {
    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.0.clone()
    }
}

fn mem_upstreams() -> Arc<MemUpstreams> {
    let y = "listeners: [{ bind: \"127.0.0.1:0\" }]\nupstreams:\n  u: { servers: [{ name: a, addr: \"127.0.0.1:1\", max_inflight: 4 }, { name: b, addr: \"127.0.0.1:2\", weight: 2 }] }\n  v: { servers: [{ addr: \"127.0.0.1:3\" }] }\nroutes: [{ name: r, upstream: u }]\n";
    let cfg = crate::config::parse_config(y, Path::new("t.yaml")).unwrap();
    Arc::new(MemUpstreams(
        ["u", "v"]
            .iter()
            .map(|n| {
                Arc::new(Upstream::build(
                    &cfg.upstreams[*n],
                    &|_| None,
                    &crate::metrics::Metrics::new(),
                ))
            })
            .collect(),
    ))
}

fn stores(maps: &Arc<MemStore>) -> Stores {
    Stores {
        maps: maps.clone(),
        upstreams: mem_upstreams(),
    }
}

fn run(api: &RuntimeApi, store: &Arc<MemStore>, line: &str) -> String {
    api.handle_line(line, None, &stores(store)).output
}

#[test]
fn parse_command_reads_versions_values_and_escapes() {
    assert_eq!(parse_command("show map").unwrap(), Command::ShowMaps);
    assert_eq!(
        parse_command("add map @3 /m.map k v").unwrap(),
        Command::AddMap {
            map: "/m.map".into(),
            version: Some(3),
            entries: vec![("k".into(), "v".into())]
        }
    );
    assert_eq!(
        parse_command("set map m k two\\ words").unwrap(),
        Command::SetMap {
            map: "m".into(),
            key: "k".into(),
            value: "two words".into()
        }
    );
    assert_eq!(
        parse_command("commit map m").unwrap_err(),
        "Missing version number."
    );
    assert!(
        parse_command("frobnicate")
            .unwrap_err()
            .starts_with("Unknown command"),
        "unknown verb"
    );
    assert!(parse_command("set map m k")
        .unwrap_err()
        .starts_with("'set map' expects three"));
}

#[test]
fn get_set_add_del_change_the_live_map_by_name_file_or_id() {
    let (api, store) = (RuntimeApi::new(), MemStore::new());
    assert_eq!(
            run(&api, &store, "get map /etc/haproxy/node-master.map n1"),
            "type=str, case=sensitive, found=yes, idx=tree, key=\"n1\", value=\"master1\", type=\"str\"\n\n"
        );
    assert_eq!(
        run(&api, &store, "set map #0 n1 master3"),
        "\n",
        "silent success + empty line"
    );
    assert_eq!(store.value("nodes", "n1").as_deref(), Some("master3"));
    assert_eq!(
        run(&api, &store, "set map nodes n9 master1"),
        "entry not found.\n\n"
    );
    assert_eq!(
        run(&api, &store, "add map nodes n9 master1; del map nodes n2"),
        "\n\n",
        "two answers"
    );
    assert_eq!(store.value("nodes", "n9").as_deref(), Some("master1"));
    assert_eq!(store.value("nodes", "n2"), None, "deleted");
    assert_eq!(run(&api, &store, "del map nodes n2"), "Key not found.\n\n");
    assert_eq!(
        run(&api, &store, "get map nodes n2"),
        "type=str, case=sensitive, found=no\n\n"
    );
    assert_eq!(
        run(&api, &store, "get map nope n2"),
        format!("{UNKNOWN_MAP}\n\n")
    );
}

#[test]
fn set_to_unknown_server_is_refused_and_map_unchanged() {
    let (api, store) = (RuntimeApi::new(), MemStore::new());
    let out = run(&api, &store, "set map nodes n1 master9");
    assert!(out.contains("master9"), "store's reason is shown: {out}");
    assert_eq!(
        store.value("nodes", "n1").as_deref(),
        Some("master1"),
        "unchanged"
    );
}

#[test]
fn show_lists_maps_and_dumps_sorted_entries() {
    let (api, store) = (RuntimeApi::new(), MemStore::new());
    let list = run(&api, &store, "show map");
    assert!(
        list.starts_with("# id (file) description\n0 (/etc/haproxy/node-master.map) map 'nodes'"),
        "{list}"
    );
    assert!(list.contains("\n1 (other) map 'other'"), "{list}");
    assert_eq!(
        run(&api, &store, "show map nodes"),
        "0x000000000001 n1 master1\n0x000000000002 n2 master2\n\n"
    );
}

#[test]
fn prepare_add_commit_swaps_whole_map_once() {
    let (api, store) = (RuntimeApi::new(), MemStore::new());
    let out = run(&api, &store, "prepare map nodes");
    assert_eq!(
        out, "New version created: 2\n\n",
        "next after live version 1"
    );
    let out = api
        .handle_line(
            "add map @2 nodes",
            Some("a master1\nb master2\n"),
            &stores(&store),
        )
        .output;
    assert_eq!(out, "\n", "payload add");
    run(&api, &store, "add map @2 nodes c master3");
    assert_eq!(store.value("nodes", "a"), None, "staged only");
    assert!(
        run(&api, &store, "show map @2 nodes").contains(" c master3\n"),
        "staged dump"
    );
    assert_eq!(
        run(&api, &store, "add map @7 nodes x master1"),
        "Version number in the future, please use 'prepare map' before.\n\n"
    );
    assert_eq!(run(&api, &store, "commit map @2 nodes"), "\n");
    let t = store.get("nodes").unwrap();
    assert_eq!(t.len(), 3, "whole map replaced");
    assert_eq!(t.source, MapSource::RuntimeApi);
    assert_eq!(
        run(&api, &store, "commit map @2 nodes"),
        "Version number out of range.\n\n",
        "consumed"
    );
}

#[test]
fn failed_commit_keeps_staged_version_and_clear_at_version_empties_it() {
    let (api, store) = (RuntimeApi::new(), MemStore::new());
    run(&api, &store, "prepare map nodes");
    run(&api, &store, "add map @2 nodes a master9");
    assert!(
        run(&api, &store, "commit map @2 nodes").contains("master9"),
        "refused"
    );
    assert_eq!(
        run(&api, &store, "clear map @2 nodes"),
        "\n",
        "still staged"
    );
    assert_eq!(run(&api, &store, "commit map @2 nodes"), "\n");
    assert!(
        store.get("nodes").unwrap().is_empty(),
        "empty map committed"
    );
}

#[test]
fn prepared_versions_are_bounded() {
    let (api, store) = (RuntimeApi::new(), MemStore::new());
    for _ in 0..MAX_STAGED_VERSIONS + 5 {
        run(&api, &store, "prepare map other");
    }
    assert_eq!(
        api.staging.lock().versions.len(),
        MAX_STAGED_VERSIONS,
        "oldest evicted"
    );
    assert_eq!(
        run(&api, &store, "clear map @1 other"),
        "Version number out of range.\n\n"
    );
}

async fn ask(path: &Path, input: &str) -> String {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(input.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap(); // like socat at the end of stdin
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn serve_unix_refuses_to_remove_a_regular_file() {
    let dir = std::env::temp_dir().join(format!("maps-rf-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fg.sock");
    std::fs::write(&path, "not a socket").unwrap();
    let (_tx, rx) = watch::channel(false);
    let task = tokio::spawn(serve_unix(
        path.clone(),
        Arc::new(RuntimeApi::new()),
        stores(&MemStore::new()),
        rx,
    ));
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "not a socket",
        "file untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn socket_answers_socat_style_commands_and_prompt_mode() {
    let dir = std::env::temp_dir().join(format!("maps-rt-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fg.sock");
    // A stale socket file from a dead process is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let store = MemStore::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sock = bind_unix(&path).await.unwrap();
    assert!(
        bind_unix(&path).await.is_err(),
        "a live socket is not stolen"
    );
    let server = tokio::spawn(serve(
        sock,
        Arc::new(RuntimeApi::new()),
        stores(&store),
        stop_rx,
    ));

    assert_eq!(
        ask(&path, "set map /etc/haproxy/node-master.map n1 master2\n").await,
        "\n"
    );
    assert_eq!(
        store.value("nodes", "n1").as_deref(),
        Some("master2"),
        "changed via socket"
    );
    let out = ask(&path, "get map nodes n1").await;
    assert!(
        out.contains("value=\"master2\""),
        "answer without trailing newline in request: {out}"
    );
    let out = ask(
        &path,
        "prepare map nodes\nadd map @3 nodes <<\nz master1\n\n",
    )
    .await;
    assert_eq!(
        out, "New version created: 3\n\n",
        "non-interactive answers one line then closes"
    );
    let out = ask(
        &path,
        "prompt\nprepare map nodes\nadd map @4 nodes <<\nz master1\n\ncommit map @4 nodes\nquit\n",
    )
    .await;
    assert_eq!(
        out, "\n> New version created: 4\n\n> \n> \n> ",
        "interactive mode with prompts"
    );
    assert_eq!(store.value("nodes", "z").as_deref(), Some("master1"));
    assert_eq!(
        store.get("nodes").unwrap().len(),
        1,
        "payload commit replaced the map"
    );
    let out = ask(&path, "bogus\n").await;
    assert!(out.starts_with("Unknown command, but maybe"), "{out}");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(!path.exists(), "socket file removed on shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn upstream_of(stores: &Stores, name: &str) -> Arc<Upstream> {
    stores
        .upstreams
        .upstreams()
        .into_iter()
        .find(|u| u.name() == name)
        .unwrap()
}

#[test]
fn server_commands_parse_as_haproxy_spells_them() {
    let r = |u: &str, s: &str| super::command::ServerRef {
        upstream: u.into(),
        server: s.into(),
    };
    assert_eq!(
        parse_command("disable server u/a").unwrap(),
        Command::DisableServer {
            target: r("u", "a")
        }
    );
    assert_eq!(
        parse_command("set server u/127.0.0.1:2 weight 50%").unwrap(),
        Command::SetWeight {
            target: r("u", "127.0.0.1:2"),
            weight: "50%".into()
        }
    );
    assert_eq!(
        parse_command("set weight u/a 3").unwrap(),
        Command::SetWeight {
            target: r("u", "a"),
            weight: "3".into()
        }
    );
    assert_eq!(
        parse_command("enable server u").unwrap_err(),
        "Require 'backend/server'."
    );
    assert_eq!(
        parse_command("show stat u 4 -1").unwrap(),
        Command::ShowStat {
            filter: super::command::StatFilter {
                proxy: Some("u".into()),
                types: 4,
                sid: -1
            }
        }
    );
    assert!(parse_command("show stat json").is_err(), "json refused");
    assert!(
        help_list("x").contains("disable server <upstream>/<server>"),
        "help lists server commands"
    );
}

#[test]
fn disable_enable_and_weight_change_the_live_upstream() {
    let (api, maps) = (RuntimeApi::new(), MemStore::new());
    let st = stores(&maps);
    let u = upstream_of(&st, "u");
    let run = |line: &str| api.handle_line(line, None, &st).output;
    assert_eq!(run("disable server u/a"), "\n", "silent success");
    assert!(!u.is_usable(0), "a is disabled");
    assert_eq!(run("enable server u/a"), "\n");
    assert!(u.is_usable(0), "a is enabled again");
    assert_eq!(run("set server u/b weight 0"), "\n");
    assert_eq!(u.weight(1), 0);
    assert_eq!(run("get weight u/b"), "0 (initial 2)\n\n");
    assert_eq!(
        run("set weight u/b 50%"),
        "\n",
        "percent of the configured 2"
    );
    assert_eq!(u.weight(1), 1);
    assert_eq!(
        run("set weight u/b 300"),
        "Absolute weight can only be between 0 and 256 inclusive.\n\n"
    );
    assert_eq!(run("disable server nope/a"), "No such backend.\n\n");
    assert_eq!(run("disable server u/zz"), "No such server.\n\n");
}

#[test]
fn show_stat_prints_haproxy_columns_in_haproxy_order() {
    let (api, maps) = (RuntimeApi::new(), MemStore::new());
    let st = stores(&maps);
    upstream_of(&st, "u").set_disabled(0, true);
    let out = api.handle_line("show stat", None, &st).output;
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], format!("# {}", super::servers::STAT_COLUMNS));
    let cols: Vec<&str> = lines[0][2..].split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name).unwrap();
    assert_eq!(
        (
            col("pxname"),
            col("scur"),
            col("status"),
            col("weight"),
            col("type")
        ),
        (0, 4, 17, 18, 32),
        "HAProxy's positions"
    );
    assert_eq!(lines.len(), 1 + 3 + 2, "header, 3 servers, 2 BACKEND lines");
    for l in &lines[1..] {
        assert_eq!(
            l.split(',').count(),
            cols.len(),
            "every line has every column: {l}"
        );
    }
    let a: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(
        (a[0], a[1], a[col("status")], a[col("slim")], a[col("type")]),
        ("u", "a", "MAINT", "4", "2")
    );
    let b: Vec<&str> = lines[2].split(',').collect();
    assert_eq!((b[col("status")], b[col("weight")]), ("no check", "2"));
    let backend: Vec<&str> = lines[3].split(',').collect();
    assert_eq!(
        (
            backend[0],
            backend[1],
            backend[col("status")],
            backend[col("weight")],
            backend[col("act")]
        ),
        ("u", "BACKEND", "UP", "2", "1"),
        "BACKEND: weight and count of the servers taking traffic"
    );
    let only_servers = api.handle_line("show stat v 4 -1", None, &st).output;
    assert_eq!(
        only_servers.lines().filter(|l| l.starts_with("v,")).count(),
        1
    );
    assert!(!only_servers.contains("u,"), "filtered to v");
}

#[test]
fn show_servers_state_reports_weights_and_maintenance() {
    let (api, maps) = (RuntimeApi::new(), MemStore::new());
    let st = stores(&maps);
    api.handle_line("disable server u/a; set weight u/b 5", None, &st);
    let out = api.handle_line("show servers state u", None, &st).output;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "format version");
    assert!(lines[1].starts_with("# be_id be_name srv_id srv_name"));
    let a: Vec<&str> = lines[2].split(' ').collect();
    assert_eq!(
        &a[..9],
        ["1", "u", "1", "a", "127.0.0.1", "2", "1", "1", "1"]
    );
    let b: Vec<&str> = lines[3].split(' ').collect();
    assert_eq!(
        &b[5..9],
        ["2", "0", "5", "2"],
        "running, not in maintenance, weight 5 of 2"
    );
    assert_eq!(
        api.handle_line("show servers state nope", None, &st).output,
        "Can't find backend.\n\n"
    );
}

#[test]
fn set_server_state_ready_drain_maint_as_haproxy() {
    let (api, maps) = (RuntimeApi::new(), MemStore::new());
    let st = stores(&maps);
    let u = upstream_of(&st, "u");
    let run = |line: &str| api.handle_line(line, None, &st).output;
    assert_eq!(run("set server u/b state drain"), "\n");
    assert_eq!((u.weight(1), u.effective_weight(1)), (2, 0));
    let state = run("show servers state u");
    let b: Vec<&str> = state.lines().nth(3).unwrap().split(' ').collect();
    assert_eq!(b[6], "8", "admin state: forced drain bit");
    assert_eq!(run("set server u/b state maint"), "\n");
    assert!(!u.is_usable(1));
    assert_eq!(run("set server u/b state ready"), "\n");
    assert!(u.balanceable(1), "ready clears maintenance and drain");
    assert_eq!(
        run("set server u/b state sleepy"),
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
    );
}
