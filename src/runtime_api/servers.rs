//! Server commands of the Runtime API, as HAProxy admins type them: `show stat` (CSV with
//! HAProxy's first 33 columns in HAProxy's order, so `cut -d, -f...` scripts keep working),
//! `show servers state`, `disable server`, `enable server`, `set server ... state
//! ready|drain|maint`, `set server ... weight`, `set weight`, `get weight`.
//!
//! The changes act on the live [`Upstream`] (see `upstream::runtime`): the next balancing
//! decision sees them, no request waits for them, and a config reload forgets them (HAProxy
//! without a `server-state-file`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::command::{help_list, Command, ServerRef, StatFilter};
use crate::upstream::runtime::{parse_weight, AdminState};
use crate::upstream::Upstream;

/// The live upstreams, implemented by the caller over its snapshot.
pub trait UpstreamStore: Send + Sync {
    /// Every upstream in a stable order (the config's, by name); `iid` is the position + 1.
    fn upstreams(&self) -> Vec<Arc<Upstream>>;
}

/// HAProxy's first 33 `show stat` columns; those floodgate has no value for stay empty.
pub const STAT_COLUMNS: &str = "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,";

const SERVERS_STATE_COLUMNS: &str = "be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port";

fn server_ref(word: &str) -> Result<ServerRef, String> {
    match word.split_once('/') {
        Some((u, s)) if !u.is_empty() && !s.is_empty() => Ok(ServerRef {
            upstream: u.to_string(),
            server: s.to_string(),
        }),
        _ => Err("Require 'backend/server'.".to_string()),
    }
}

/// The server command these words make, or `None` when they are not a server command.
pub(super) fn parse_server_words(w: &[String]) -> Option<Result<Command, String>> {
    let arg = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let cmd = match (arg(0), arg(1)) {
        ("show", "stat") => {
            if matches!(arg(2), "typed" | "json") || matches!(arg(5), "typed" | "json") {
                return Some(Err(
                    "show stat typed|json is not supported; GET /upstreams on the admin API answers JSON."
                        .to_string(),
                ));
            }
            let num = |i: usize| -> Result<i32, String> {
                match arg(i) {
                    "" => Ok(-1),
                    a => a
                        .parse()
                        .map_err(|_| format!("'{a}' is not a number; use -1 for all.")),
                }
            };
            let proxy = match arg(2) {
                "" | "-1" => None,
                p => Some(p.to_string()),
            };
            match (num(3), num(4)) {
                (Ok(types), Ok(sid)) => Ok(Command::ShowStat {
                    filter: StatFilter { proxy, types, sid },
                }),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        ("show", "servers") if arg(2) == "state" => Ok(Command::ShowServersState {
            upstream: Some(arg(3)).filter(|a| !a.is_empty()).map(str::to_string),
        }),
        ("disable", "server") => server_ref(arg(2)).map(|target| Command::DisableServer { target }),
        ("enable", "server") => server_ref(arg(2)).map(|target| Command::EnableServer { target }),
        ("set", "server") => match (server_ref(arg(2)), arg(3), arg(4)) {
            (Err(e), _, _) => Err(e),
            (Ok(target), "weight", w) if !w.is_empty() => Ok(Command::SetWeight {
                target,
                weight: w.to_string(),
            }),
            (Ok(_), "weight", _) => Err("Require <weight> or <weight%>.".to_string()),
            (Ok(target), "state", s) => match AdminState::parse(s) {
                Some(state) => Ok(Command::SetState { target, state }),
                None => Err(
                    "'set server <srv> state' expects 'ready', 'drain' and 'maint'.".to_string(),
                ),
            },
            (Ok(_), other, _) => Err(format!(
                "'set server <upstream>/<server>' supports 'weight' and 'state' here, not '{other}'."
            )),
        },
        ("set", "weight") => match (server_ref(arg(2)), arg(3)) {
            (Err(e), _) => Err(e),
            (Ok(_), "") => Err("Require <weight> or <weight%>.".to_string()),
            (Ok(target), w) => Ok(Command::SetWeight {
                target,
                weight: w.to_string(),
            }),
        },
        ("get", "weight") => server_ref(arg(2)).map(|target| Command::GetWeight { target }),
        _ => return None,
    };
    Some(cmd)
}

/// Runs one server command; the answer body (empty on a silent success, as HAProxy).
pub(super) fn execute(cmd: Command, store: &dyn UpstreamStore) -> String {
    let ups = store.upstreams();
    match cmd {
        Command::ShowStat { filter } => show_stat(&ups, &filter),
        Command::ShowServersState { upstream } => match upstream {
            Some(u) if !ups.iter().any(|x| x.name() == u) => "Can't find backend.".to_string(),
            u => show_servers_state(&ups, u.as_deref()),
        },
        Command::DisableServer { target } => with_server(&ups, &target, |up, i| {
            if up.set_disabled(i, true) {
                log::info!(
                    "runtime API: upstream {} server {} disabled (MAINT): no new requests, {} in flight finish",
                    up.name(),
                    up.servers[i].cfg.name,
                    up.admission.inflight(i)
                );
            }
            String::new()
        }),
        Command::EnableServer { target } => with_server(&ups, &target, |up, i| {
            if up.set_disabled(i, false) {
                log::info!(
                    "runtime API: upstream {} server {} enabled",
                    up.name(),
                    up.servers[i].cfg.name
                );
            }
            String::new()
        }),
        Command::SetState { target, state } => with_server(&ups, &target, |up, i| {
            if up.set_admin_state(i, state) {
                log::info!(
                    "runtime API: upstream {} server {} is now {}",
                    up.name(),
                    up.servers[i].cfg.name,
                    up.status(i).as_str()
                );
            }
            String::new()
        }),
        Command::SetWeight { target, weight } => with_server(&ups, &target, |up, i| {
            match parse_weight(&weight, up.servers[i].cfg.weight) {
                Ok(w) => {
                    let old = up.set_weight(i, w);
                    if old != w {
                        log::info!(
                            "runtime API: upstream {} server {} weight {old} -> {w}",
                            up.name(),
                            up.servers[i].cfg.name
                        );
                    }
                    String::new()
                }
                Err(e) => e.to_string(),
            }
        }),
        Command::GetWeight { target } => with_server(&ups, &target, |up, i| {
            format!("{} (initial {})", up.weight(i), up.servers[i].cfg.weight)
        }),
        _ => help_list("Unknown command."),
    }
}

/// Finds `<upstream>/<server>` and runs `f` on it, or answers HAProxy's error.
fn with_server(
    ups: &[Arc<Upstream>],
    target: &ServerRef,
    f: impl FnOnce(&Upstream, usize) -> String,
) -> String {
    let Some(up) = ups.iter().find(|u| u.name() == target.upstream) else {
        return "No such backend.".to_string();
    };
    match up.server_index(&target.server) {
        Some(i) => f(up, i),
        None => "No such server.".to_string(),
    }
}

fn show_stat(ups: &[Arc<Upstream>], filter: &StatFilter) -> String {
    let mut out = format!("# {STAT_COLUMNS}\n");
    let want = |bit: i32| filter.types == -1 || filter.types & bit != 0;
    for (pos, up) in ups.iter().enumerate() {
        let iid = pos + 1;
        if let Some(p) = &filter.proxy {
            if p != up.name() && p != &iid.to_string() {
                continue;
            }
        }
        let (mut stot, mut econ, mut weight, mut act, mut bck) = (0u64, 0u64, 0u32, 0, 0);
        for (i, s) in up.servers.iter().enumerate() {
            let c = &s.state.counters;
            let total = c.total.load(Ordering::Relaxed);
            let errors = c.connect_errors.load(Ordering::Relaxed);
            stot += total;
            econ += errors;
            if up.balanceable(i) {
                weight += up.effective_weight(i);
                if s.cfg.backup {
                    bck += 1;
                } else {
                    act += 1;
                }
            }
            let sid = i + 1;
            if !want(4) || (filter.sid != -1 && filter.sid != sid as i32) {
                continue;
            }
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{total},,,,,,{errors},,,,{},{},{},{},,,{},,,1,{iid},{sid},,{total},,2,",
                up.name(),
                s.cfg.name,
                c.queued.load(Ordering::Relaxed),
                c.max_queued.load(Ordering::Relaxed),
                up.admission.inflight(i),
                c.max_inflight.load(Ordering::Relaxed),
                s.cfg.max_inflight.map(|m| m.to_string()).unwrap_or_default(),
                up.status(i).as_str(),
                up.effective_weight(i),
                u8::from(!s.cfg.backup),
                u8::from(s.cfg.backup),
                c.seconds_since_change(),
            );
        }
        if want(2) && (filter.sid == -1 || filter.sid == 0) {
            let status = if act + bck > 0 { "UP" } else { "DOWN" };
            let _ = writeln!(
                out,
                "{},BACKEND,{},,{},{},,{stot},,,,,,{econ},,,,{status},{weight},{act},{bck},,,,,,1,{iid},0,,{stot},,1,",
                up.name(),
                up.admission.queue_depth(),
                up.admission.total_inflight(),
                up.max_inflight_seen.load(Ordering::Relaxed),
            );
        }
    }
    out
}

fn show_servers_state(ups: &[Arc<Upstream>], only: Option<&str>) -> String {
    let mut out = format!("1\n# {SERVERS_STATE_COLUMNS}\n");
    for (pos, up) in ups.iter().enumerate() {
        if only.is_some_and(|u| u != up.name()) {
            continue;
        }
        for (i, s) in up.servers.iter().enumerate() {
            let st = &s.state;
            // HAProxy: op_state 0 stopped, 2 running; admin_state bits 0x01 forced
            // maintenance, 0x08 forced drain; check_result 0 unknown, 2 failed, 3 passed.
            let op = if st.is_healthy() { 2 } else { 0 };
            let admin = u8::from(st.is_drained()) | (u8::from(up.is_draining(i)) << 3);
            let check = match (up.cfg.health.is_some() && st.was_checked(), st.is_healthy()) {
                (false, _) => 0,
                (true, true) => 3,
                (true, false) => 2,
            };
            // why: HAProxy has no port for a Unix socket server; it shows the path and 0.
            let (addr_ip, addr_port) = match &s.cfg.addr {
                crate::config::ServerAddr::Inet(a) => (a.ip().to_string(), a.port()),
                crate::config::ServerAddr::Unix(p) => (p.display().to_string(), 0),
            };
            let _ = writeln!(
                out,
                "{} {} {} {} {} {op} {admin} {} {} {} - {check} - - - 0 0 - {}",
                pos + 1,
                up.name(),
                i + 1,
                s.cfg.name,
                addr_ip,
                up.weight(i),
                s.cfg.weight,
                st.counters.seconds_since_change(),
                addr_port,
            );
        }
    }
    out
}
