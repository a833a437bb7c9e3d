//! One logging path (issue 13): the real binary's stderr with `server.log_format: json` is
//! JSON lines only (process records and the JSON access log alike), and a multi-line error (a
//! reload refused with two errors) is one record in JSON and one line in text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A floodgate process with stderr in a file; killed by PID if the test ends first.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(config: &Path, log: PathBuf) -> Proc {
        let child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("floodgate starts");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit (the drain ends at once when idle).
    async fn stop(&mut self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        for _ in 0..250 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no exit within 5 s after SIGTERM: {}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a gateway with `log_format`, sends two requests, has a reload refused with two
/// errors, stops it, and returns its stderr.
async fn run_and_log(log_format: &str) -> String {
    let a = origin("a").await;
    let dir = Scratch::new("logging");
    let (port, admin) = (free_port(), free_port());
    let head = format!(
        "server: {{ log_format: {log_format}, upgrade_sock: {} }}\nlisteners: [{{ bind: \"127.0.0.1:{port}\" }}]\nadmin: {{ bind: \"127.0.0.1:{admin}\" }}\naccess_log: {{ format: json }}\nupstreams:\n  a: {{ servers: [{{ addr: \"{}\" }}] }}\n",
        dir.path("upgrade.sock").display(),
        a.addr()
    );
    let config = dir.write(
        "floodgate.yaml",
        &format!("{head}routes: [{{ name: all, upstream: a }}]\n"),
    );
    let mut p = Proc::start(Path::new(&config), dir.path("stderr.log"));
    let ready = || async {
        client()
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    };
    assert!(
        eventually(Duration::from_secs(15), ready).await,
        "ready: {}",
        p.log()
    );
    let c = client();
    for _ in 0..2 {
        let r = c
            .get(format!("http://127.0.0.1:{port}/echo"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    dir.write(
        "floodgate.yaml",
        &format!(
            "{head}routes: [{{ name: x, upstream: nope1 }}, {{ name: y, upstream: nope2 }}]\n"
        ),
    );
    let r = c
        .post(format!("http://127.0.0.1:{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the broken config is refused");
    p.stop().await;
    p.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_makes_stderr_json_lines_only_with_a_multi_line_error_as_one_record() {
    let log = run_and_log("json").await;
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    let access: Vec<&serde_json::Value> = records.iter().filter(|r| r["uri"] == "/echo").collect();
    assert_eq!(access.len(), 2, "two access records:\n{log}");
    assert_eq!(access[0]["status"], 200);
    assert!(
        access[0].get("level").is_none(),
        "an access record is the access log's own object, not wrapped"
    );
    let refused: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("reload refused"))
        })
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "one record for the refused reload:\n{log}"
    );
    let m = refused[0]["message"].as_str().unwrap();
    assert!(
        m.contains("nope1") && m.contains("nope2") && m.contains('\n'),
        "both errors in one message: {m:?}"
    );
    assert_eq!(refused[0]["level"], "ERROR");
    assert_eq!(refused[0]["target"], "floodgate::control::writer");
    assert!(
        records
            .iter()
            .any(|r| r["level"] == "INFO" && r["time"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "process records carry level and time:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_format_writes_a_multi_line_error_on_one_line_and_access_json_bare() {
    let log = run_and_log("text").await;
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refused.len(), 1, "one line:\n{log}");
    let line = refused[0];
    assert!(
        line.starts_with('[')
            && line.contains(" ERROR ")
            && line.contains("floodgate::control::writer]"),
        "{line}"
    );
    assert!(
        line.contains("nope1") && line.contains("nope2") && line.contains("\\n"),
        "both errors on the line, the break written as \\n: {line}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("nope2") && !l.contains("reload refused")),
        "no continuation line:\n{log}"
    );
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        access.iter().filter(|r| r["uri"] == "/echo").count(),
        2,
        "the JSON access log is pure JSON lines even with text process logs:\n{log}"
    );
}
