//! Active health checks: one loop over the CURRENT snapshot, so checks follow reloads (a new
//! server is checked, a removed one stops) while a kept server keeps its state.
//!
//! A server flips only after `rise` passes or `fall` failures in a row, except that its very
//! first check decides at once (a server that never passed takes no traffic; a healthy one
//! should not wait `rise x interval` after start-up).

use crate::config::HealthConfig;
use crate::config::ServerAddr;
use crate::state::AppState;
use crate::upstream::ServerState;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::ErrorType;
use pingora_http::RequestHeader;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// One HTTP/1.1 probe through Pingora's connector with the server's own peer (so TLS,
/// its CA, SNI and client certificate are the ones requests use): `GET path` and read the
/// status line (the body is not needed). The connection is not reused.
pub async fn probe(connector: &Connector, peer: &HttpPeer, hc: &HealthConfig) -> Probe {
    let work = async {
        let mut session = match connector.get_http_session(peer).await {
            Ok((s, _)) => s,
            Err(e) if e.etype() == &ErrorType::ConnectRefused => return Probe::Refused,
            Err(e) => return Probe::Error(format!("connect: {e}")),
        };
        let host = probe_host(hc.host.as_deref(), peer);
        let req = match request(&hc.path, &host) {
            Ok(r) => r,
            Err(e) => return Probe::Error(format!("request: {e}")),
        };
        if let Err(e) = session.write_request_header(Box::new(req)).await {
            return Probe::Error(format!("write: {e}"));
        }
        match session.read_resp_header_parts().await {
            Ok(resp) => {
                let code = resp.status.as_u16();
                if hc.expect.accepts(code) {
                    Probe::Pass(code)
                } else {
                    Probe::BadStatus(code)
                }
            }
            Err(e) => Probe::Error(format!("read: {e}")),
        }
    };
    match tokio::time::timeout(hc.timeout, work).await {
        Ok(p) => p,
        Err(_) => Probe::Timeout,
    }
}

/// The `Host` of a probe: `health.host`, else for HTTPS the SNI (a name the server's
/// certificate carries), else the address.
///
/// why: Jetty (puppetserver, PuppetDB) answers `400 Host does not match SNI` when the Host
/// is not a name of its certificate, so `Host: 10.0.0.1:8140` with SNI `puppet` fails
/// every check; a Unix socket has no authority to name, and app servers behind one (Puma)
/// accept any Host.
pub fn probe_host(configured: Option<&str>, peer: &HttpPeer) -> String {
    if let Some(h) = configured {
        return h.to_string();
    }
    if peer.is_tls() && !peer.sni().is_empty() {
        return peer.sni().to_string();
    }
    match peer.address() {
        SocketAddr::Inet(a) => a.to_string(),
        SocketAddr::Unix(_) => "localhost".to_string(),
    }
}

fn request(path: &str, host: &str) -> pingora_error::Result<RequestHeader> {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
    req.insert_header("Host", host)?;
    req.insert_header("User-Agent", "floodgate-health")?;
    req.insert_header("Connection", "close")?;
    req.insert_header("Accept", "*/*")?;
    Ok(req)
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
    let mut due: HashMap<(String, String, ServerAddr), Instant> = HashMap::new();
    let mut running: HashMap<(String, String, ServerAddr), tokio::task::JoinHandle<()>> =
        HashMap::new();
    // why: built off this runtime's thread when a check first needs it: making its TLS
    // context loads the system CA store, which blocked the runtime socket and the map
    // watcher that share this thread; a config without checks never pays.
    let mut connector: Option<Arc<Connector>> = None;
    loop {
        let snap = state.snapshot();
        let now = Instant::now();
        let mut live = std::collections::HashSet::new();
        for up in snap.upstreams.values() {
            let Some(hc) = up.cfg.health.clone() else {
                continue;
            };
            if connector.is_none() {
                let made = tokio::task::spawn_blocking(|| Connector::new(None)).await;
                connector = Some(Arc::new(made.unwrap_or_else(|_| Connector::new(None))));
            }
            for (i, s) in up.servers.iter().enumerate() {
                let key = (
                    up.name().to_string(),
                    s.cfg.name.clone(),
                    s.cfg.addr.clone(),
                );
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
                let counted = up.clone();
                let (upname, sname, addr) = key.clone();
                let hc = hc.clone();
                let mut peer = s.peer();
                // why: a probe answers within the check's timeout, whatever the
                // upstream's own request timeouts are.
                peer.options.connection_timeout = Some(hc.timeout);
                peer.options.read_timeout = Some(hc.timeout);
                peer.options.write_timeout = Some(hc.timeout);
                let Some(connector) = connector.clone() else {
                    continue;
                };
                running.insert(
                    key,
                    tokio::spawn(async move {
                        let t0 = Instant::now();
                        let p = probe(&connector, &peer, &hc).await;
                        st.metrics
                            .health_check_duration
                            .observe(t0.elapsed().as_secs_f64());
                        counted.metrics.servers[i].health_check(&p);
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
    fn probe_host_is_the_setting_then_the_sni_of_tls_then_the_address() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 8140));
        let tls = HttpPeer::new(addr, true, "puppet".into());
        assert_eq!(probe_host(None, &tls), "puppet");
        assert_eq!(probe_host(Some("master1"), &tls), "master1");
        let plain = HttpPeer::new(addr, false, String::new());
        assert_eq!(probe_host(None, &plain), "127.0.0.1:8140");
        let uds = HttpPeer::new_uds("/run/foreman.sock", false, String::new()).unwrap();
        assert_eq!(probe_host(None, &uds), "localhost");
    }

    #[test]
    fn expect_any_accepts_500_but_2xx_does_not() {
        assert!(Expect::Any.accepts(500));
        assert!(!Expect::Success.accepts(500));
        assert!(Expect::Statuses(vec![200, 204]).accepts(204));
    }
}
