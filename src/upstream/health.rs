//! Active health checks: one loop over the CURRENT snapshot, so checks follow reloads (a new
//! server is checked, a removed one stops) while a kept server keeps its state.
//!
//! A server flips only after `rise` passes or `fall` failures in a row, except that its very
//! first check decides at once (a server that never passed takes no traffic; a healthy one
//! should not wait `rise x interval` after start-up).

use crate::config::HealthConfig;
use crate::state::AppState;
use crate::upstream::ServerState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Pass(u16),
    /// The server answered, but with a status `expect` does not accept.
    BadStatus(u16),
    Refused,
    Timeout,
    Error(String),
}

impl Probe {
    pub fn passed(&self) -> bool {
        matches!(self, Probe::Pass(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Probe::Pass(_) => "pass",
            Probe::BadStatus(_) => "bad_status",
            Probe::Refused => "refused",
            Probe::Timeout => "timeout",
            Probe::Error(_) => "error",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Probe::Pass(s) => format!("answered {s}"),
            Probe::BadStatus(s) => format!("status {s}"),
            Probe::Refused => "connection refused".into(),
            Probe::Timeout => "timeout".into(),
            Probe::Error(e) => e.clone(),
        }
    }
}

/// What applying a probe result did to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Up,
    Down,
}

/// Applies one result with rise/fall thresholds (pure: unit-tested below).
pub fn apply(state: &ServerState, passed: bool, rise: u32, fall: u32) -> Transition {
    let first = !state.was_checked();
    state.mark_checked();
    if passed {
        state.consecutive_fail.store(0, Ordering::Relaxed);
        let ok = state.consecutive_ok.fetch_add(1, Ordering::Relaxed) + 1;
        if (first || ok >= rise) && state.set_healthy(true) {
            return Transition::Up;
        }
    } else {
        state.consecutive_ok.store(0, Ordering::Relaxed);
        let bad = state.consecutive_fail.fetch_add(1, Ordering::Relaxed) + 1;
        if (first || bad >= fall) && state.set_healthy(false) {
            return Transition::Down;
        }
    }
    Transition::None
}

/// One HTTP/1.1 probe: `GET path` and read the status line (the body is not needed).
pub async fn probe(addr: SocketAddr, hc: &HealthConfig) -> Probe {
    let work = async {
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
            Err(e) => return Probe::Error(format!("connect: {e}")),
        };
        let host = hc.host.clone().unwrap_or_else(|| addr.to_string());
        let req = format!("GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: floodgate-health\r\nConnection: close\r\nAccept: */*\r\n\r\n", hc.path);
        if let Err(e) = s.write_all(req.as_bytes()).await {
            return Probe::Error(format!("write: {e}"));
        }
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        loop {
            match s.read(&mut buf[n..]).await {
                Ok(0) => return Probe::Error("closed before answering".into()),
                Ok(k) => n += k,
                Err(e) => return Probe::Error(format!("read: {e}")),
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf[..n]) {
                Ok(_) if resp.code.is_some() => {
                    let code = resp.code.unwrap_or(0);
                    return if hc.expect.accepts(code) {
                        Probe::Pass(code)
                    } else {
                        Probe::BadStatus(code)
                    };
                }
                Ok(_) if n < buf.len() => continue,
                Ok(_) => return Probe::Error("status line too long".into()),
                Err(e) => return Probe::Error(format!("not HTTP: {e}")),
            }
        }
    };
    match tokio::time::timeout(hc.timeout, work).await {
        Ok(p) => p,
        Err(_) => Probe::Timeout,
    }
}

/// True when every actively checked server of the snapshot has been checked once.
pub fn first_round_done(state: &AppState) -> bool {
    let snap = state.snapshot();
    snap.upstreams
        .values()
        .all(|u| u.cfg.health.is_none() || u.servers.iter().all(|s| s.state.was_checked()))
}

/// The health loop: checks each server when due; leaves promptly on shutdown.
pub async fn run(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    // (upstream, server name, addr) -> next due time
    let mut due: HashMap<(String, String, SocketAddr), Instant> = HashMap::new();
    let mut running: HashMap<(String, String, SocketAddr), tokio::task::JoinHandle<()>> =
        HashMap::new();
    loop {
        let snap = state.snapshot();
        let now = Instant::now();
        let mut live = std::collections::HashSet::new();
        for up in snap.upstreams.values() {
            let Some(hc) = up.cfg.health.clone() else {
                continue;
            };
            for s in &up.servers {
                let key = (up.name().to_string(), s.cfg.name.clone(), s.cfg.addr);
                live.insert(key.clone());
                if running.get(&key).is_some_and(|h| !h.is_finished()) {
                    continue;
                }
                let next = *due.get(&key).unwrap_or(&now);
                if next > now {
                    continue;
                }
                due.insert(key.clone(), now + hc.interval);
                let st = state.clone();
                let sstate = s.state.clone();
                let (upname, sname, addr) = key.clone();
                let hc = hc.clone();
                running.insert(
                    key,
                    tokio::spawn(async move {
                        let t0 = Instant::now();
                        let p = probe(addr, &hc).await;
                        st.metrics
                            .health_check_duration
                            .observe(t0.elapsed().as_secs_f64());
                        st.metrics
                            .health_checks
                            .with_label_values(&[&upname, &sname, p.label()])
                            .inc();
                        match apply(&sstate, p.passed(), hc.rise, hc.fall) {
                            Transition::Up => log::info!(
                                "health: upstream {upname} server {sname} ({addr}) is UP: {}",
                                p.describe()
                            ),
                            Transition::Down => log::warn!(
                                "health: upstream {upname} server {sname} ({addr}) is DOWN: {}",
                                p.describe()
                            ),
                            Transition::None => {}
                        }
                    }),
                );
            }
        }
        due.retain(|k, _| live.contains(k));
        running.retain(|k, h| live.contains(k) || !h.is_finished());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Expect;

    #[test]
    fn first_check_decides_then_rise_and_fall_apply() {
        let s = ServerState::new(true);
        assert!(!s.is_healthy(), "an actively checked server starts down");
        assert_eq!(
            apply(&s, true, 2, 3),
            Transition::Up,
            "the first pass brings it up at once"
        );
        assert_eq!(apply(&s, false, 2, 3), Transition::None);
        assert_eq!(apply(&s, false, 2, 3), Transition::None);
        assert_eq!(
            apply(&s, false, 2, 3),
            Transition::Down,
            "down after fall=3"
        );
        assert_eq!(apply(&s, true, 2, 3), Transition::None);
        assert_eq!(apply(&s, true, 2, 3), Transition::Up, "up after rise=2");
    }

    #[test]
    fn a_server_that_never_passed_stays_down() {
        let s = ServerState::new(true);
        assert_eq!(apply(&s, false, 2, 3), Transition::None);
        assert!(!s.is_healthy());
    }

    #[test]
    fn expect_any_accepts_500_but_2xx_does_not() {
        assert!(Expect::Any.accepts(500));
        assert!(!Expect::Success.accepts(500));
        assert!(Expect::Statuses(vec![200, 204]).accepts(204));
    }
}
