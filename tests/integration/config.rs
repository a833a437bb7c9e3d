//! Configuration: broken configs are refused with the key path at fault (all errors at once),
//! every shipped config validates, and the `floodgate` command checks files.

#![allow(clippy::unwrap_used)]

use crate::common::{temp_dir, Scratch};
use floodgate::config::{parse_config, ConfigErrors};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A valid config that each case below breaks in one place.
const BASE: &str = r#"
listeners: [{ bind: "127.0.0.1:8080" }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:3000" }] }
  b: { servers: [{ addr: "127.0.0.1:3001" }] }
routes:
  - { name: r, upstream: a }
"#;

fn refused(yaml: &str) -> ConfigErrors {
    match parse_config(yaml, Path::new("t.yaml")) {
        Ok(_) => panic!("config was accepted but should be refused:\n{yaml}"),
        Err(e) => e,
    }
}

#[test]
fn the_base_config_is_valid() {
    parse_config(BASE, Path::new("t.yaml")).unwrap_or_else(|e| panic!("BASE must be valid: {e}"));
}

#[test]
fn broken_configs_are_refused_naming_the_key_path() {
    // (what is broken, yaml, key path that must be mentioned, text the message must contain)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "unknown top-level key",
            "listners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
            "listners",
            "unknown section",
        ),
        (
            "unknown nested key",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ adr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
            "upstreams.a",
            "servers[0]",
        ),
        (
            "bad duration",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }], timeouts: { read: fast } }\nroutes: [{ name: r, upstream: a }]\n",
            "upstreams.a.timeouts.read",
            "\"fast\" is not a duration",
        ),
        (
            "route to an undefined upstream",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\n  b: { servers: [{ addr: \"127.0.0.1:3001\" }] }\nroutes: [{ name: r, upstream: forman }]\n",
            "routes[0].upstream",
            "(defined: a, b)",
        ),
        (
            "duplicate listener bind",
            "listeners: [{ bind: \"127.0.0.1:8080\" }, { name: two, bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
            "listeners[1].bind",
            "earlier listener",
        ),
        (
            "empty server list",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [] }\nroutes: [{ name: r, upstream: a }]\n",
            "upstreams.a.servers",
            "empty",
        ),
        (
            "bad balance name",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { balance: random, servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
            "upstreams.a.balance",
            "round_robin, least_conn or hash",
        ),
        (
            "hash without hash_key",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { balance: hash, servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
            "upstreams.a.hash_key",
            "header:NAME",
        ),
        (
            "admin on a non-loopback address without token_env",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nadmin: { bind: \"0.0.0.0:9901\" }\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
            "admin.token_env",
            "not on loopback",
        ),
        (
            "weight 0",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\", weight: 0 }] }\nroutes: [{ name: r, upstream: a }]\n",
            "upstreams.a.servers[0].weight",
            "never be chosen",
        ),
        (
            "pick_server naming an undefined map",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes:\n  - { name: r, upstream: a, pick_server: { map: nodes, key: \"header:X-Node\" } }\n",
            "routes[0].pick_server.map",
            "\"nodes\" is not a defined map",
        ),
        (
            "shutdown ceiling shorter than pre_drain + drain",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\nshutdown: { pre_drain: 5s, drain: 30s, ceiling: 20s }\n",
            "shutdown.ceiling",
            "shorter than pre_drain + drain",
        ),
        (
            "upgrade socket path longer than a UNIX socket path",
            &format!("listeners: [{{ bind: \"127.0.0.1:8080\" }}]\nserver: {{ upgrade_sock: /run/{} }}\nupstreams:\n  a: {{ servers: [{{ addr: \"127.0.0.1:3000\" }}] }}\nroutes: [{{ name: r, upstream: a }}]\n", "x".repeat(120)),
            "server.upgrade_sock",
            "longer than a UNIX socket path may be",
        ),
        (
            "bad size",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\ncache: { memory: { max_bytes: \"12 parsecs\" } }\n",
            "cache.memory.max_bytes",
            "unknown size unit",
        ),
        (
            "unknown method",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, match: { methods: [GET, FETCH] }, upstream: a }]\n",
            "routes[0].match.methods",
            "\"FETCH\" is not an HTTP method",
        ),
        (
            "listener bind that is not an address",
            "listeners: [{ bind: \"localhost\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
            "listeners[0].bind",
            "not an IP:port",
        ),
        (
            "route cache entry size that is not a size",
            "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a, cache: { ttl: 5m, max_entry_size: lots } }]\n",
            "routes[0].cache.max_entry_size",
            "not a size",
        ),
    ];
    assert!(cases.len() >= 12);
    let mut problems = Vec::new();
    for (what, yaml, path, text) in cases {
        let errs = match parse_config(yaml, Path::new("t.yaml")) {
            Ok(_) => {
                problems.push(format!("{what}: accepted"));
                continue;
            }
            Err(e) => e,
        };
        let shown = errs.to_string();
        if !errs.mentions(path) {
            problems.push(format!(
                "{what}: no error at key path {path}; got:\n  {shown}"
            ));
        } else if !shown.contains(text) {
            problems.push(format!("{what}: message lacks {text:?}; got:\n  {shown}"));
        } else if !shown.starts_with("t.yaml:") {
            problems.push(format!("{what}: the file is not named; got:\n  {shown}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} broken configs not reported as expected:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}

#[test]
fn unknown_nested_key_names_the_full_path_and_the_field() {
    let errs = refused(
        "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ adr: \"127.0.0.1:3000\" }] }\nroutes: [{ name: r, upstream: a }]\n",
    );
    let shown = errs.to_string();
    assert!(
        shown.contains("upstreams.a") && shown.contains("servers[0]") && shown.contains("adr"),
        "names upstreams.a.servers[0] and the field: {shown}"
    );
    assert!(
        shown.contains("addr"),
        "suggests the expected field: {shown}"
    );
}

#[test]
fn a_config_with_three_errors_reports_all_three() {
    let errs = refused(
        r#"
listeners: [{ bind: "127.0.0.1:8080" }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:3000", weight: 0 }], timeouts: { connect: soon } }
routes:
  - { name: r, upstream: nowhere }
"#,
    );
    let shown = errs.to_string();
    assert_eq!(
        errs.0.len(),
        3,
        "three errors, each on its own line:\n{shown}"
    );
    for path in [
        "upstreams.a.servers[0].weight",
        "upstreams.a.timeouts.connect",
        "routes[0].upstream",
    ] {
        assert!(errs.mentions(path), "{path} reported:\n{shown}");
    }
    assert_eq!(shown.lines().count(), 3, "one line per error:\n{shown}");
}

#[test]
fn a_bare_number_duration_is_reported_at_its_key_path_along_with_other_errors() {
    // `connect: 5` (no unit) is the most likely duration mistake.
    let errs = refused(
        r#"
listeners: [{ bind: "127.0.0.1:8080" }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:3000" }], timeouts: { connect: 5 } }
routes:
  - { name: r, upstream: nowhere }
"#,
    );
    let shown = errs.to_string();
    assert!(
        errs.mentions("upstreams.a.timeouts.connect"),
        "the bare number is reported at its key path:\n{shown}"
    );
    assert!(
        errs.mentions("routes[0].upstream"),
        "and does not hide the other error:\n{shown}"
    );
}

#[test]
fn errors_carry_the_line_of_their_item_and_a_misspelt_header_matcher_names_its_field() {
    // A `header:` matcher takes one matcher or a list; a misspelt key inside it used to come out
    // as "data did not match any variant of untagged enum OneOrMany", with no line.
    let errs = refused(
        r#"listeners: [{ bind: "127.0.0.1:8080" }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:3000" }] }
  b:
    servers: [{ adr: "127.0.0.1:3001" }]
routes:
  - { name: r, upstream: a }
  - name: by-node
    match:
      header: { nam: X-Node-Name }
    upstream: a
"#,
    );
    let shown = errs.to_string();
    assert!(
        !shown.contains("untagged"),
        "serde's untagged-enum message does not reach the operator:
{shown}"
    );
    assert!(
        shown.contains("t.yaml:8:3: routes[1] (by-node): match.header: unknown field `nam`")
            && shown.contains("`name`"),
        "file:line, key path, the field and the expected one:
{shown}"
    );
    assert!(
        shown.contains("t.yaml:4:3: upstreams.b"),
        "a mapping entry is placed at its key's line:
{shown}"
    );
}

#[test]
fn shape_errors_in_several_sections_are_all_reported() {
    let errs = refused(
        r#"
listeners: [{ bind: "127.0.0.1:8080", tls_cert: x }]
upstreams:
  a: { servers: [{ addr: "127.0.0.1:3000" }], retry: 3 }
routes:
  - { name: r, upstream: a, upstrem: b }
"#,
    );
    let shown = errs.to_string();
    for path in ["listeners[0]", "upstreams.a", "routes[0]"] {
        assert!(errs.mentions(path), "{path} reported:\n{shown}");
    }
    assert!(
        shown.contains("tls_cert") && shown.contains("retry") && shown.contains("upstrem"),
        "each unknown key named:\n{shown}"
    );
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_shipped_config_in_conf_passes_check_with_its_maps() {
    let dir = manifest_dir().join("conf");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "conf/ holds at least one config");
    let scratch = Scratch::new("conf-pki");
    for f in &files {
        let f = &with_test_pki(f, &scratch);
        match floodgate::app::check(f) {
            Ok(cfg) => {
                for (name, m) in &cfg.maps {
                    if let Some(file) = &m.file {
                        assert!(
                            file.exists(),
                            "{}: map {name} file {} exists",
                            f.display(),
                            file.display()
                        );
                    }
                }
            }
            Err(e) => panic!("{} does not pass check:\n{e}", f.display()),
        }
    }
}

/// Puppet's ssl dir, which shipped configs name for their certificates.
const PUPPET_SSL: &str = "/etc/puppetlabs/puppet/ssl";

/// `f` itself, or for a config naming Puppet's ssl dir a copy (with its maps) in `scratch`
/// whose ssl dir is a PKI made now: no private key ships in `conf/`.
fn with_test_pki(f: &Path, scratch: &Scratch) -> PathBuf {
    let text = std::fs::read_to_string(f).unwrap();
    if !text.contains(PUPPET_SSL) {
        return f.to_path_buf();
    }
    let ssl = scratch.path("ssl");
    for d in ["certs", "private_keys", "maps"] {
        std::fs::create_dir_all(ssl.join(d)).unwrap();
    }
    crate::tls::make_pki(&ssl);
    let host = "floodgate.example.com";
    std::fs::copy(ssl.join("ca.pem"), ssl.join("certs/ca.pem")).unwrap();
    std::fs::copy(
        ssl.join("server.pem"),
        ssl.join(format!("certs/{host}.pem")),
    )
    .unwrap();
    std::fs::copy(
        ssl.join("server.key"),
        ssl.join(format!("private_keys/{host}.pem")),
    )
    .unwrap();
    let conf = f.parent().unwrap();
    for m in std::fs::read_dir(conf.join("maps")).unwrap() {
        let m = m.unwrap().path();
        std::fs::copy(&m, ssl.join("maps").join(m.file_name().unwrap())).unwrap();
    }
    let copy = ssl.join(f.file_name().unwrap());
    std::fs::write(&copy, text.replace(PUPPET_SSL, &ssl.display().to_string())).unwrap();
    copy
}

pub(crate) fn floodgate_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_floodgate"));
    c.current_dir(manifest_dir()).env("RUST_LOG", "error");
    c
}

#[test]
fn cli_check_fails_on_a_bad_file_naming_the_key_path_and_passes_the_demo() {
    let dir = temp_dir("cli");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: [{ bind: \"127.0.0.1:8080\" }]\nupstreams:\n  a: { servers: [{ addr: \"127.0.0.1:3000\" }], timeouts: { read: fast } }\nroutes: [{ name: r, upstream: forman }]\n",
    )
    .unwrap();
    let out = floodgate_cmd()
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check exits non-zero on a bad file; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("upstreams.a.timeouts.read"),
        "stderr names the bad duration's key path:\n{stderr}"
    );
    assert!(
        stderr.contains("routes[0].upstream") && stderr.contains("forman"),
        "stderr names the bad route:\n{stderr}"
    );
    assert!(
        stderr.contains("2 error(s)"),
        "stderr counts the errors:\n{stderr}"
    );

    let out = floodgate_cmd()
        .args(["check", "-c", "conf/demo.yaml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check passes conf/demo.yaml; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "check says OK: {stdout}");

    let out = floodgate_cmd()
        .args(["check", "-c"])
        .arg(dir.join("missing.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a missing file fails the check");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_help_works_for_run_and_check_and_there_are_no_hidden_commands() {
    for sub in ["run", "check"] {
        let out = floodgate_cmd().args([sub, "--help"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "floodgate {sub} --help exits 0; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("--config"),
            "floodgate {sub} --help documents --config:\n{stdout}"
        );
    }
    let out = floodgate_cmd().arg("--help").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for sub in ["run", "check"] {
        assert!(
            stdout.contains(sub),
            "floodgate --help lists {sub}:\n{stdout}"
        );
    }
    // The simulators live in the test kit, not in the shipped binary.
    for hidden in ["demo", "sim-origin", "sim-storm", "sim-bare-proxy"] {
        let out = floodgate_cmd().args([hidden, "--help"]).output().unwrap();
        assert!(!out.status.success(), "floodgate has no `{hidden}` command");
    }
}
