//! Host names in server addresses, resolved again while floodgate runs (not only at load):
//! every `resolve_every` (default 30 s) each server whose `addr` names a host is looked up
//! off the request path, and new connections go to the new address. A failed lookup keeps the
//! last address (logged once per failure streak); a result that still contains the current
//! address keeps it, so round-robin DNS does not move servers around.

use crate::state::AppState;
use crate::upstream::Server;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for one lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `server` names a host to resolve again (not an IP, not a Unix socket).
pub fn resolvable(server: &Server) -> bool {
    !server.cfg.host.is_empty() && server.cfg.host.parse::<IpAddr>().is_err()
}

/// The address to use after a lookup gave `found` while `current` is in use: `current` if it is
/// still among them, else the first of the same IP family (a server that listens on IPv4 only
/// is not moved to `::1`), else the first; `None` for an empty answer (keep `current`).
pub fn pick(current: Option<SocketAddr>, found: &[SocketAddr]) -> Option<SocketAddr> {
    let Some(cur) = current else {
        return found.first().copied();
    };
    if found.contains(&cur) {
        return Some(cur);
    }
    found
        .iter()
        .find(|a| a.is_ipv4() == cur.is_ipv4())
        .or(found.first())
        .copied()
}

/// The resolver loop: leaves promptly on shutdown.
pub async fn run(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    // (upstream, server) -> next due; failing ones, so a streak is logged once
    let mut due: HashMap<(String, String), Instant> = HashMap::new();
    let mut failing: HashMap<(String, String), bool> = HashMap::new();
    loop {
        let snap = state.snapshot();
        let now = Instant::now();
        for up in snap.upstreams.values() {
            for s in up.servers.iter().filter(|s| resolvable(s)) {
                let key = (up.name().to_string(), s.cfg.name.clone());
                // why: the first lookup waits one period; the config load just resolved it.
                let next = *due.entry(key.clone()).or_insert(now + up.cfg.resolve_every);
                if next > now {
                    continue;
                }
                due.insert(key.clone(), now + up.cfg.resolve_every);
                let port = match &s.cfg.addr {
                    crate::config::ServerAddr::Inet(a) => a.port(),
                    crate::config::ServerAddr::Unix(_) => continue,
                };
                let target = format!("{}:{port}", s.cfg.host);
                let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(target));
                let found = tokio::select! {
                    r = lookup => r,
                    _ = shutdown.changed() => return,
                };
                let found = found
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|it| it.collect::<Vec<_>>());
                let was_failing = failing.get(&key).copied().unwrap_or(false);
                match found {
                    Ok(found) if !found.is_empty() => {
                        failing.insert(key, false);
                        let current = s.current_addr().parse().ok();
                        if let Some(to) = pick(current, &found) {
                            if let Some(old) = s.set_resolved(to) {
                                log::info!(
                                    "upstream {} server {}: {} now resolves to {to} (was {old})",
                                    up.name(),
                                    s.cfg.name,
                                    s.cfg.host
                                );
                            }
                        }
                    }
                    other => {
                        if !was_failing {
                            let why = other.err().unwrap_or_else(|| "no address".into());
                            log::warn!(
                                "upstream {} server {}: looking up {} failed ({why}); keeping {}",
                                up.name(),
                                s.cfg.name,
                                s.cfg.host,
                                s.current_addr()
                            );
                        }
                        failing.insert(key, true);
                    }
                }
            }
        }
        due.retain(|k, _| {
            snap.upstreams
                .get(&k.0)
                .is_some_and(|u| u.servers.iter().any(|s| s.cfg.name == k.1))
        });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pick;
    use std::net::SocketAddr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_lookup_keeps_the_current_address_while_dns_still_lists_it() {
        let found = [a("10.0.0.2:80"), a("10.0.0.1:80")];
        assert_eq!(pick(Some(a("10.0.0.1:80")), &found), Some(a("10.0.0.1:80")));
    }

    #[test]
    fn a_lookup_moves_to_the_first_new_address_when_the_current_one_is_gone() {
        let found = [a("10.0.0.3:80"), a("10.0.0.4:80")];
        assert_eq!(pick(Some(a("10.0.0.1:80")), &found), Some(a("10.0.0.3:80")));
        assert_eq!(pick(Some(a("10.0.0.1:80")), &[]), None, "empty: keep");
        let found = [a("[::1]:80"), a("127.0.0.1:80")];
        assert_eq!(
            pick(Some(a("127.0.0.1:1")), &found),
            Some(a("127.0.0.1:80")),
            "the same family first"
        );
    }
}
