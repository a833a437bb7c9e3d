//! Fail closed at start (issue 12 items 4 and 8): a security setting that cannot take effect
//! or a listener that cannot bind stops the start with one clear line, through the real
//! binary and through `check`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn floodgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_floodgate"));
    c.env("RUST_LOG", "error");
    c
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("floodgate.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn config(port: u16, admin: u16, extra_admin: &str) -> String {
    format!(
        "listeners: [{{ bind: \"127.0.0.1:{port}\" }}]\nadmin: {{ bind: \"127.0.0.1:{admin}\"{extra_admin} }}\nupstreams:\n  u: {{ servers: [{{ addr: \"127.0.0.1:9\" }}] }}\nroutes: [{{ name: r, upstream: u }}]\n"
    )
}

/// Runs the binary until it exits (at most 20 s; killed by PID otherwise).
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String, Duration) {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("floodgate runs");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err, t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("floodgate did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_unset_or_empty_admin_token_variable_fails_check_and_run() {
    let dir = temp_dir("token");
    let var = "FLOODGATE_TEST_TOKEN_NEVER_SET";
    let cfg = write_config(
        &dir,
        &config(free_port(), free_port(), &format!(", token_env: {var}")),
    );
    for (value, word) in [(None, "not set"), (Some(""), "empty")] {
        for sub in ["check", "run"] {
            let mut cmd = floodgate();
            cmd.args([sub, "-c"]).arg(&cfg).env_remove(var);
            if let Some(v) = value {
                cmd.env(var, v);
            }
            let (code, err, _) = run_to_exit(cmd);
            assert_eq!(code, Some(1), "{sub} with {var} {word} must fail: {err}");
            assert!(
                err.contains("admin.token_env") && err.contains(var) && err.contains(word),
                "{sub} names the key, the variable and why: {err}"
            );
        }
    }
    // With the variable set, check passes.
    let out = floodgate()
        .args(["check", "-c"])
        .arg(&cfg)
        .env(var, "s3cret-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listener_address_in_use_stops_the_start_with_one_clear_line() {
    let dir = temp_dir("bind");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    for (port, admin) in [(taken, free_port()), (free_port(), taken)] {
        let cfg = write_config(&dir, &config(port, admin, ""));
        let mut cmd = floodgate();
        cmd.args(["run", "-c"]).arg(&cfg);
        let (code, err, took) = run_to_exit(cmd);
        assert_eq!(code, Some(1), "the start fails: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].contains(&format!("127.0.0.1:{taken}")) && lines[0].contains("cannot listen"),
            "the line names the address: {err}"
        );
        assert!(
            took < Duration::from_secs(10),
            "it fails at once ({took:?})"
        );
    }
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}
