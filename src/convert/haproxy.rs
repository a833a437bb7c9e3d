//! haproxy.cfg → floodgate config. Read: `global` (`stats socket` → the Runtime API socket),
//! `defaults`, `frontend`, `backend`, `listen`; `bind` (with `ssl crt ca-file verify`),
//! `server NAME ADDR maxconn maxqueue check inter rise fall backup weight` (and the same options
//! on `default-server` in `defaults` or a backend; `unix@/path` and `/path` addresses), `balance`,
//! `use-server %[req.hdr(H),map(FILE)]`, `use_backend`/`default_backend`,
//! `http-request set-priority-class`, `option httpchk`, `http-check expect status`, server TLS
//! (`ssl verify ca-file crt sni verifyhost`, see [`super::upstream_tls`]),
//! `option redispatch`, `retries`, `timeout queue/connect/server/client`.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use super::upstream_tls::HaproxyServerTls;
use super::{ident, Converted, Notes};

#[derive(Default, Clone)]
struct Settings {
    balance: Option<(String, usize)>,
    timeouts: BTreeMap<String, (String, usize)>,
    httpchk: Option<String>,
    expect: Option<Value>,
    redispatch: bool,
    retries: Option<u32>,
    /// `default-server` options in order (defaults' first, then the backend's), each with its
    /// line: read before a `server` line's own options, so later ones override earlier ones.
    default_server: Vec<(String, usize)>,
}

#[derive(Default)]
struct Backend {
    settings: Settings,
    servers: Vec<Value>,
    maxqueue: usize,
    check: Option<(Option<String>, Option<u32>, Option<u32>)>,
    pick: Option<(String, String)>, // (header, map file)
    /// The first server's `tls:` block (`None`: plain HTTP), its name and line.
    tls: Option<(Option<Value>, String, usize)>,
}

#[derive(Default)]
struct Frontend {
    name: String,
    binds: Vec<Value>,
    rules: Vec<(Value, String)>, // (match, backend)
    default_backend: Option<String>,
    priority: Option<i64>,
    pick: Option<(String, String)>,
}

/// HAProxy time (`5000` = ms, `5s`, `1m`, `2h`, `100ms`, `30us`) as a floodgate duration.
fn duration(s: &str) -> Option<String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "" | "ms" => Some(format!("{n}ms")),
        "s" | "m" | "h" | "d" => Some(format!("{n}{unit}")),
        "us" => Some(format!("{}ms", n.div_ceil(1000))),
        _ => None,
    }
}

/// `*:80`, `:80`, `0.0.0.0:80`, `ipv4@1.2.3.4:80` → `host:port`.
fn bind_addr(s: &str) -> Option<String> {
    let s = s.strip_prefix("ipv4@").unwrap_or(s);
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = if host.is_empty() || host == "*" {
        "0.0.0.0"
    } else {
        host
    };
    Some(format!("{host}:{port}"))
}

/// A server address: HAProxy's Unix-socket forms `unix@/path` and `/path` become floodgate's
/// `unix:/path`; others are kept.
fn server_addr(s: &str) -> String {
    match s.strip_prefix("unix@") {
        Some(path) => format!("unix:{path}"),
        None if s.starts_with('/') => format!("unix:{s}"),
        None => s.to_string(),
    }
}

/// `%[req.hdr(X-Node-Name),map(/etc/haproxy/n.map)]` (or `hdr(..)`, `map_str(..)`, with a
/// default) → (header, map file).
fn header_map(expr: &str) -> Option<(String, String)> {
    let inner = expr.strip_prefix("%[")?.strip_suffix(']')?;
    let (fetch, conv) = inner.split_once(',')?;
    let header = fetch
        .strip_prefix("req.hdr(")
        .or_else(|| fetch.strip_prefix("hdr("))
        .or_else(|| fetch.strip_prefix("req.fhdr("))?
        .strip_suffix(')')?;
    let args = conv
        .strip_prefix("map(")
        .or_else(|| conv.strip_prefix("map_str("))?
        .strip_suffix(')')?;
    let file = args.split(',').next()?.trim();
    Some((header.to_string(), file.to_string()))
}

/// An inline condition `{ path_beg /x }`, `{ hdr(host) -i h }`, `{ req.hdr(X) -m found }`.
fn condition(words: &[&str]) -> Option<Value> {
    let w: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| *w != "{" && *w != "}")
        .collect();
    match w.as_slice() {
        ["TRUE"] => Some(json!({})),
        ["path_beg", rest @ ..] if !rest.is_empty() => Some(json!({ "path_prefix": rest })),
        ["path", rest @ ..] if !rest.is_empty() => Some(json!({ "path": rest })),
        ["hdr(host)", "-i", rest @ ..] | ["req.hdr(host)", "-i", rest @ ..] if !rest.is_empty() => {
            Some(json!({ "host": rest }))
        }
        [h, "-m", "found"] => {
            let name = h
                .strip_prefix("req.hdr(")
                .or_else(|| h.strip_prefix("hdr("))?;
            Some(json!({ "header": { "name": name.strip_suffix(')')? } }))
        }
        _ => None,
    }
}

/// Converts haproxy.cfg text. `source` names it in the output's header comment.
pub fn convert(text: &str, source: &str) -> Converted {
    let mut notes = Notes::default();
    let mut defaults = Settings::default();
    let mut backends: BTreeMap<String, Backend> = BTreeMap::new();
    let mut frontends: Vec<Frontend> = Vec::new();
    let mut runtime_socket: Option<String> = None;
    // `ssl-server-verify` in global: whether servers are verified without `verify`.
    let mut verify_servers = true;
    // Current section: kind and name.
    let mut section: (String, String) = (String::new(), String::new());

    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let line = raw.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if !raw.starts_with(char::is_whitespace) {
            match w[0] {
                "global" | "defaults" => {
                    section = (w[0].to_string(), String::new());
                    if w.len() > 1 {
                        notes.approx(ln, "named defaults sections are read as the one defaults");
                    }
                    continue;
                }
                "frontend" | "backend" | "listen" if w.len() > 1 => {
                    section = (w[0].to_string(), w[1].to_string());
                    if w[0] != "backend" {
                        frontends.push(Frontend {
                            name: w[1].to_string(),
                            ..Default::default()
                        });
                    }
                    if w[0] != "frontend" {
                        backends.insert(
                            w[1].to_string(),
                            Backend {
                                settings: defaults.clone(),
                                ..Default::default()
                            },
                        );
                    }
                    continue;
                }
                other => {
                    section = ("other".into(), other.into());
                    notes.skip(ln, format!("section `{other}` has no floodgate equivalent"));
                    continue;
                }
            }
        }
        let (kind, name) = (section.0.as_str(), section.1.clone());
        if kind == "other" {
            continue;
        }
        let is_fe = kind == "frontend" || kind == "listen";
        let is_be = kind == "backend" || kind == "listen";
        // Settings shared by defaults and backends.
        let handled = {
            let s: Option<&mut Settings> = match kind {
                "defaults" => Some(&mut defaults),
                "backend" | "listen" => backends.get_mut(&name).map(|b| &mut b.settings),
                _ => None,
            };
            match (s, w.as_slice()) {
                (Some(s), ["balance", algo, ..]) => {
                    s.balance = Some((algo.to_string(), ln));
                    true
                }
                (Some(s), ["timeout", what @ ("queue" | "connect" | "server"), t]) => {
                    s.timeouts.insert(what.to_string(), (t.to_string(), ln));
                    true
                }
                (Some(s), ["option", "httpchk", rest @ ..]) => {
                    let uri = match rest {
                        [] => "/",
                        [uri] => uri,
                        [_method, uri, ..] => uri,
                    };
                    if rest.len() >= 2 && rest[0] != "GET" {
                        notes.approx(ln, format!("health checks use GET, not {}", rest[0]));
                    }
                    s.httpchk = Some(uri.to_string());
                    true
                }
                (Some(s), ["http-check", "expect", "status", code]) => match code.parse::<u16>() {
                    Ok(c) => {
                        s.expect = Some(json!([c]));
                        true
                    }
                    Err(_) => false,
                },
                (Some(s), ["option", "redispatch", ..]) => {
                    s.redispatch = true;
                    true
                }
                (Some(s), ["default-server", opts @ ..]) => {
                    s.default_server
                        .extend(opts.iter().map(|o| (o.to_string(), ln)));
                    true
                }
                (Some(s), ["retries", n]) => match n.parse() {
                    Ok(n) => {
                        s.retries = Some(n);
                        true
                    }
                    Err(_) => false,
                },
                _ => false,
            }
        };
        if handled {
            continue;
        }
        match (kind, w.as_slice()) {
            ("global", ["stats", "socket", path, rest @ ..]) => {
                if !rest.contains(&"admin") {
                    notes.approx(ln, "the Runtime API socket accepts map commands whatever the level");
                }
                runtime_socket = Some(path.to_string());
            }
            ("global", ["ssl-server-verify", v]) => verify_servers = *v != "none",
            (_, ["mode", "http"]) => {}
            (_, ["mode", m]) => notes.skip(ln, format!("mode {m}: floodgate proxies HTTP only")),
            (_, ["timeout", "client", t]) => notes.approx(
                ln,
                format!("timeout client {t}: floodgate bounds a request head by listeners[].front_door.header_timeout and a body by server.client_body_timeout; left at their defaults"),
            ),
            (_, ["timeout", "http-request", t]) if is_fe || kind == "defaults" => notes.approx(
                ln,
                format!("timeout http-request {t}: set listeners[].front_door.header_timeout by hand"),
            ),
            (_, ["bind", addr, opts @ ..]) if is_fe => {
                let fe = frontends.last_mut().expect("frontend pushed");
                let Some(bind) = bind_addr(addr) else {
                    notes.skip(ln, format!("bind {addr}: not an address:port"));
                    continue;
                };
                let mut l = json!({ "name": ident(&format!("{}-{}", fe.name, fe.binds.len())), "bind": bind });
                if fe.binds.is_empty() {
                    l["name"] = json!(ident(&fe.name));
                }
                if opts.contains(&"ssl") {
                    let opt = |k: &str| opts.iter().position(|o| *o == k).and_then(|p| opts.get(p + 1));
                    match opt("crt") {
                        Some(crt) => {
                            let mut tls = json!({ "cert": crt, "key": crt });
                            notes.approx(ln, format!("crt {crt}: HAProxy reads certificate and key from one PEM; the same file is given as cert and key (split it if floodgate refuses it; a crt directory is not supported)"));
                            if let Some(ca) = opt("ca-file") {
                                tls["client_ca"] = json!(ca);
                            }
                            match opt("verify").map(|s| &**s) {
                                Some("required") => tls["client_auth"] = json!("require"),
                                Some("optional") => tls["client_auth"] = json!("optional"),
                                Some("none") | None => {
                                    if opt("ca-file").is_some() {
                                        tls["client_auth"] = json!("optional");
                                        notes.approx(ln, "ca-file without verify: HAProxy verifies (required); floodgate asks for an optional client certificate");
                                    }
                                }
                                Some(v) => notes.skip(ln, format!("verify {v}")),
                            }
                            l["tls"] = tls;
                        }
                        None => notes.skip(ln, "ssl without crt"),
                    }
                    for o in opts.iter().filter(|o| ["alpn", "ciphers", "ssl-min-ver", "crl-file", "strict-sni", "ciphersuites"].contains(o)) {
                        notes.skip(ln, format!("bind option {o}: floodgate uses its TLS defaults"));
                    }
                }
                fe.binds.push(l);
            }
            (_, ["default_backend", b]) if is_fe => {
                frontends.last_mut().expect("frontend").default_backend = Some(b.to_string());
            }
            (_, ["use_backend", b, cond @ ..]) if is_fe => {
                if b.starts_with("%[") {
                    notes.skip(ln, "use_backend with a dynamic name: floodgate's maps pick a server of one upstream (pick_server), not an upstream; merge the backends into one and use use-server, or write a route per backend");
                    continue;
                }
                let m = match cond {
                    ["if", rest @ ..] => condition(rest),
                    [] => Some(json!({})),
                    _ => None,
                };
                match m {
                    Some(m) => frontends.last_mut().expect("frontend").rules.push((m, b.to_string())),
                    None => notes.skip(ln, format!("use_backend {b} {}: only inline conditions path_beg, path, hdr(host) -i, req.hdr(X) -m found are converted; write a route match by hand", cond.join(" "))),
                }
            }
            (_, ["use-server", expr, cond @ ..]) if is_be || is_fe => match header_map(expr) {
                Some((h, file)) => {
                    if !cond.is_empty() && condition(&cond[1..]).is_none() {
                        notes.approx(ln, format!("condition `{}` dropped: the map is consulted for every request with the header", cond.join(" ")));
                    }
                    if is_be {
                        backends.get_mut(&name).expect("backend").pick = Some((h, file));
                    } else {
                        frontends.last_mut().expect("frontend").pick = Some((h, file));
                    }
                }
                None => notes.skip(ln, format!("use-server {expr}: only %[req.hdr(H),map(FILE)] is converted (pick_server)")),
            },
            (_, ["http-request", "set-priority-class", class, rest @ ..]) if is_fe || is_be => {
                let constant = class.strip_prefix("int(").and_then(|c| c.strip_suffix(')')).unwrap_or(class);
                let Ok(c) = constant.parse::<i64>() else {
                    notes.skip(ln, format!("set-priority-class {class}: only a constant is converted; use a Lua admit() policy"));
                    continue;
                };
                if !rest.is_empty() {
                    notes.skip(ln, format!("conditional priority ({}): use a route with a match and priority:, or a Lua admit() policy", rest.join(" ")));
                    continue;
                }
                if let Some(fe) = frontends.iter_mut().rev().find(|f| f.name == name) {
                    fe.priority = Some(-c);
                    notes.approx(ln, format!("priority class {c} becomes route priority {}: HAProxy serves lower classes first, floodgate higher priorities", -c));
                } else {
                    notes.skip(ln, "set-priority-class in a backend: put priority: on the routes to it");
                }
            }
            (_, ["server", sname, addr, own @ ..]) if is_be => {
                let b = backends.get_mut(&name).expect("backend");
                let mut s = Map::new();
                s.insert("name".into(), json!(sname));
                s.insert("addr".into(), json!(server_addr(addr)));
                // The default-server options, then the line's own: a later option overrides.
                let mut opts: Vec<(&str, usize)> = b
                    .settings
                    .default_server
                    .iter()
                    .map(|(o, at)| (o.as_str(), *at))
                    .collect();
                opts.extend(own.iter().map(|o| (*o, ln)));
                let mut i = 0;
                let mut check = false;
                let mut maxqueue = 0;
                let (mut inter, mut rise, mut fall) = (None, None, None);
                let mut tls = HaproxyServerTls::default();
                while i < opts.len() {
                    // An option's argument is on the same line as the option.
                    let (o, ln) = opts[i];
                    let next = opts.get(i + 1).filter(|(_, at)| *at == ln).map(|(n, _)| *n);
                    let taken = tls.take(sname, o, next, ln, &mut notes);
                    if taken > 0 {
                        i += taken;
                        continue;
                    }
                    match (o, next) {
                        ("maxconn", Some(n)) => {
                            s.insert("max_inflight".into(), json!(n.parse::<u64>().unwrap_or(0)));
                            i += 1;
                        }
                        ("maxqueue", Some(n)) => {
                            maxqueue = n.parse::<usize>().unwrap_or(0);
                            notes.approx(ln, format!("maxqueue {n}: floodgate queues per upstream (queue.max = the sum over its servers), binding the server late"));
                            i += 1;
                        }
                        ("weight", Some(n)) => {
                            s.insert("weight".into(), json!(n.parse::<u32>().unwrap_or(1)));
                            i += 1;
                        }
                        ("inter", Some(t)) => {
                            inter = duration(t);
                            i += 1;
                        }
                        ("rise", Some(n)) => {
                            rise = n.parse().ok();
                            i += 1;
                        }
                        ("fall", Some(n)) => {
                            fall = n.parse().ok();
                            i += 1;
                        }
                        ("check", _) => check = true,
                        ("no-check", _) => check = false,
                        ("backup", _) => {
                            s.insert("backup".into(), json!(true));
                        }
                        ("no-backup", _) => {
                            s.remove("backup");
                        }
                        (o @ ("resolvers" | "cookie" | "slowstart" | "fastinter" | "downinter" | "init-addr" | "send-proxy" | "send-proxy-v2" | "agent-check" | "observe" | "on-error" | "error-limit" | "port" | "addr" | "id" | "maxconn-queue" | "minconn"), n) => {
                            notes.skip(ln, format!("server {sname}: option {o}"));
                            if n.is_some() && !matches!(o, "send-proxy" | "send-proxy-v2" | "agent-check") {
                                i += 1;
                            }
                        }
                        (o, _) => notes.skip(ln, format!("server {sname}: option {o}")),
                    }
                    i += 1;
                }
                b.maxqueue += maxqueue;
                if check {
                    b.check = Some((inter, rise, fall));
                }
                let block = tls.block(sname, verify_servers, ln, &mut notes);
                match &b.tls {
                    None => b.tls = Some((block, sname.to_string(), ln)),
                    Some((first, name, at)) if *first != block => notes.skip(
                        ln,
                        format!("server {sname}: its TLS settings differ from server {name}'s (line {at}); floodgate sets tls: per upstream, so {sname} gets {name}'s"),
                    ),
                    Some(_) => {}
                }
                b.servers.push(Value::Object(s));
            }
            (_, ["option", o, ..]) if ["httplog", "dontlognull", "forwardfor", "http-server-close", "http-keep-alive", "tcplog"].contains(o) => {
                notes.skip(ln, format!("option {o}: floodgate logs every request (access_log) and always sends X-Forwarded-For"));
            }
            _ => notes.skip(ln, format!("`{line}`")),
        }
    }

    // Upstreams.
    let mut upstreams = Map::new();
    let mut maps = Map::new();
    for (bname, b) in &backends {
        if b.servers.is_empty() {
            continue;
        }
        let s = &b.settings;
        let mut u = Map::new();
        if let Some((algo, ln)) = &s.balance {
            let (bal, exact) = match algo.as_str() {
                "roundrobin" | "static-rr" => ("round_robin", algo == "roundrobin"),
                "leastconn" => ("least_conn", true),
                _ => ("round_robin", false),
            };
            if algo.starts_with("hdr(") {
                u.insert("balance".into(), json!("hash"));
                let h = algo.trim_start_matches("hdr(").trim_end_matches(')');
                u.insert("hash_key".into(), json!(format!("header:{h}")));
            } else {
                u.insert("balance".into(), json!(bal));
                if !exact {
                    notes.approx(*ln, format!("balance {algo} becomes {bal}"));
                }
            }
        }
        u.insert("servers".into(), Value::Array(b.servers.clone()));
        if let Some((Some(tls), _, _)) = &b.tls {
            u.insert("tls".into(), tls.clone());
        }
        let mut timeouts = Map::new();
        let mut queue = Map::new();
        for (what, (t, ln)) in &s.timeouts {
            let Some(d) = duration(t) else {
                notes.skip(*ln, format!("timeout {what} {t}: not a duration"));
                continue;
            };
            match what.as_str() {
                "queue" => {
                    queue.insert("timeout".into(), json!(d));
                }
                "connect" => {
                    timeouts.insert("connect".into(), json!(d));
                }
                _ => {
                    timeouts.insert("read".into(), json!(d.clone()));
                    timeouts.insert("write".into(), json!(d));
                }
            }
        }
        if !s.timeouts.contains_key("queue") {
            if let Some((t, _)) = s.timeouts.get("connect") {
                // HAProxy: timeout queue defaults to timeout connect.
                if let Some(d) = duration(t) {
                    queue.insert("timeout".into(), json!(d));
                }
            }
        }
        if b.maxqueue > 0 {
            queue.insert("max".into(), json!(b.maxqueue));
        }
        if !timeouts.is_empty() {
            u.insert("timeouts".into(), Value::Object(timeouts));
        }
        if !queue.is_empty() {
            u.insert("queue".into(), Value::Object(queue));
        }
        if let Some(r) = s.retries {
            u.insert("retries".into(), json!(r));
        }
        if let Some((inter, rise, fall)) = &b.check {
            let mut h = Map::new();
            h.insert(
                "path".into(),
                json!(s.httpchk.clone().unwrap_or_else(|| "/".into())),
            );
            h.insert(
                "interval".into(),
                json!(inter.clone().unwrap_or_else(|| "2s".into())),
            );
            h.insert("rise".into(), json!(rise.unwrap_or(2)));
            h.insert("fall".into(), json!(fall.unwrap_or(3)));
            if let Some(e) = &s.expect {
                h.insert("expect".into(), e.clone());
            } else {
                // HAProxy passes 2xx and 3xx.
                h.insert(
                    "expect".into(),
                    json!((200..400)
                        .filter(|c| [200, 201, 202, 204, 301, 302, 303, 304, 307, 308].contains(c))
                        .collect::<Vec<u16>>()),
                );
            }
            u.insert("health".into(), Value::Object(h));
        }
        upstreams.insert(ident(bname), Value::Object(u));
    }

    // Routes, frontend by frontend.
    let mut routes = Vec::new();
    let mut listeners = Vec::new();
    for fe in &frontends {
        let before = routes.len();
        let mut targets: Vec<(Value, String)> = fe.rules.clone();
        if let Some(d) = &fe.default_backend {
            targets.push((json!({}), d.clone()));
        } else if backends.contains_key(&fe.name) {
            targets.push((json!({}), fe.name.clone())); // a listen section serves itself
        }
        for (m, bname) in targets {
            let Some(b) = backends.get(&bname) else {
                continue;
            };
            if b.servers.is_empty() {
                continue;
            }
            let mut r = Map::new();
            r.insert(
                "name".into(),
                json!(ident(&format!("{}-{}-{}", fe.name, bname, routes.len()))),
            );
            let mut m = m;
            if m.as_object().is_some_and(|o| o.is_empty()) {
                m = json!({ "path_prefix": "/" });
            }
            r.insert("match".into(), m);
            r.insert("upstream".into(), json!(ident(&bname)));
            if let Some(p) = fe.priority {
                r.insert("priority".into(), json!(p));
            }
            if let Some((h, file)) = b.pick.clone().or_else(|| fe.pick.clone()) {
                let map_name = ident(
                    std::path::Path::new(&file)
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or("map"),
                );
                maps.insert(
                    map_name.clone(),
                    json!({ "file": file, "on_duplicate": "first", "on_unknown_value": "skip" }),
                );
                r.insert(
                    "pick_server".into(),
                    json!({ "map": map_name, "key": format!("header:{h}"), "on_miss": "balance", "redispatch": b.settings.redispatch }),
                );
            }
            routes.push(Value::Object(r));
        }
        // A section without a route to a server (e.g. `listen stats`) gets no listener.
        if routes.len() > before {
            listeners.extend(fe.binds.iter().cloned());
        }
    }
    let mut doc = Map::new();
    doc.insert("listeners".into(), Value::Array(listeners));
    if let Some(sock) = runtime_socket {
        doc.insert("admin".into(), json!({ "runtime_socket": sock }));
    }
    doc.insert("upstreams".into(), Value::Object(upstreams));
    if !maps.is_empty() {
        doc.insert("maps".into(), Value::Object(maps));
    }
    doc.insert("routes".into(), Value::Array(routes));
    Converted::from_doc(source, doc, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::NoteKind;

    fn yaml(c: &Converted) -> serde_yaml::Value {
        serde_yaml::from_str(&c.yaml).unwrap()
    }

    #[test]
    fn server_options_become_limits_queue_and_health() {
        let c = convert(
            "defaults\n  timeout connect 5000\n  timeout server 1m\nbackend b\n  option httpchk GET /status\n  server m1 10.0.0.1:3001 check inter 5s rise 1 fall 4 maxconn 10 maxqueue 20\n  server m2 10.0.0.2:3001 backup weight 3\nfrontend f\n  bind :8080\n  default_backend b\n",
            "t",
        );
        let y = yaml(&c);
        let u = &y["upstreams"]["b"];
        assert_eq!(u["servers"][0]["max_inflight"], 10);
        assert_eq!(u["servers"][1]["backup"], true);
        assert_eq!(u["servers"][1]["weight"], 3);
        assert_eq!(u["queue"]["max"], 20);
        assert_eq!(
            u["queue"]["timeout"], "5000ms",
            "timeout queue defaults to timeout connect"
        );
        assert_eq!(u["timeouts"]["read"], "1m");
        assert_eq!(u["health"]["path"], "/status");
        assert_eq!(u["health"]["interval"], "5s");
        assert_eq!(u["health"]["fall"], 4);
        assert_eq!(y["listeners"][0]["bind"], "0.0.0.0:8080");
        assert_eq!(y["routes"][0]["upstream"], "b");
        assert_eq!(c.count(NoteKind::Approximated), 1, "{:?}", c.notes);
    }

    #[test]
    fn use_server_with_a_header_map_becomes_pick_server_and_a_map() {
        let c = convert(
            "frontend f\n  bind 127.0.0.1:80\n  default_backend p\nbackend p\n  option redispatch\n  use-server %[req.hdr(X-Node-Name),map(/etc/haproxy/n.map)] if { req.hdr(X-Node-Name) -m found }\n  server master1 h:1\n",
            "t",
        );
        let y = yaml(&c);
        let ps = &y["routes"][0]["pick_server"];
        assert_eq!(ps["map"], "n");
        assert_eq!(ps["key"], "header:X-Node-Name");
        assert_eq!(ps["redispatch"], true);
        assert_eq!(y["maps"]["n"]["file"], "/etc/haproxy/n.map");
        assert_eq!(y["maps"]["n"]["on_duplicate"], "first");
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }

    #[test]
    fn bind_ssl_priority_and_use_backend_conditions() {
        let c = convert(
            "global\n  stats socket /run/h.sock level admin\nfrontend f\n  bind *:443 ssl crt /c.pem ca-file /ca.pem verify optional\n  http-request set-priority-class int(-2)\n  use_backend api if { path_beg /api }\n  use_backend x if is_x\n  default_backend web\nbackend api\n  server a h:1\nbackend web\n  balance source\n  server w h:2\n",
            "t",
        );
        let y = yaml(&c);
        let tls = &y["listeners"][0]["tls"];
        assert_eq!(tls["cert"], "/c.pem");
        assert_eq!(tls["client_auth"], "optional");
        assert_eq!(tls["client_ca"], "/ca.pem");
        assert_eq!(y["admin"]["runtime_socket"], "/run/h.sock");
        assert_eq!(y["routes"][0]["match"]["path_prefix"][0], "/api");
        assert_eq!(
            y["routes"][0]["priority"], 2,
            "class -2 leaves first: priority 2"
        );
        assert_eq!(y["routes"][1]["upstream"], "web");
        let lines: Vec<(usize, NoteKind)> = c.notes.iter().map(|n| (n.line, n.kind)).collect();
        assert!(
            lines.contains(&(7, NoteKind::NotConverted)),
            "named ACL: {:?}",
            c.notes
        );
        assert!(
            lines.contains(&(12, NoteKind::Approximated)),
            "balance source: {:?}",
            c.notes
        );
    }

    #[test]
    fn server_ssl_options_become_the_upstreams_tls_and_a_differing_server_is_listed() {
        let c = convert(
            "global\n  ssl-server-verify required\nbackend p\n  server m1 10.0.0.1:8140 ssl verify required ca-file /ca.pem crt /fg.pem sni str(puppet.example.com) check\n  server m2 10.0.0.2:8140 ssl verify required ca-file /ca.pem crt /fg.pem sni str(puppet.example.com)\n  server m3 10.0.0.3:8140 check\nfrontend f\n  bind :8140\n  default_backend p\n",
            "t",
        );
        let y = yaml(&c);
        let tls: serde_yaml::Value = serde_yaml::from_str(
            "{ verify: true, ca: /ca.pem, sni: puppet.example.com, cert: /fg.pem, key: /fg.pem }",
        )
        .unwrap();
        assert_eq!(y["upstreams"]["p"]["tls"], tls);
        let notes: Vec<(usize, NoteKind)> = c.notes.iter().map(|n| (n.line, n.kind)).collect();
        assert_eq!(
            notes,
            [
                (4, NoteKind::Approximated),
                (5, NoteKind::Approximated),
                (6, NoteKind::NotConverted)
            ],
            "the one-PEM crt twice, then m3 without ssl: {:?}",
            c.notes
        );
        assert!(
            c.notes[2].text.contains("differ from server m1"),
            "{}",
            c.notes[2]
        );
    }

    #[test]
    fn default_server_sets_every_later_server_and_the_line_overrides_it() {
        let c = convert(
            "defaults\n  default-server inter 3s fall 5 maxconn 100 maxqueue 7\nbackend b\n  default-server check maxconn 200 ssl verify none\n  server m1 10.0.0.1:1\n  server m2 10.0.0.2:1 maxconn 50 no-ssl\n  server m3 10.0.0.3:1 backup\nbackend u\n  server s1 unix@/run/a.sock\n  server s2 /run/b.sock\nfrontend f\n  bind :80\n  use_backend u if { path_beg /u }\n  default_backend b\n",
            "t",
        );
        let y = yaml(&c);
        let b = &y["upstreams"]["b"];
        assert_eq!(
            b["servers"][0]["max_inflight"], 200,
            "backend over defaults"
        );
        assert_eq!(b["servers"][1]["max_inflight"], 50, "the line over both");
        assert_eq!(b["servers"][2]["max_inflight"], 200);
        assert_eq!(b["servers"][2]["backup"], true);
        assert_eq!(b["queue"]["max"], 21, "7 per server from defaults");
        assert_eq!(b["health"]["interval"], "3s");
        assert_eq!(b["health"]["fall"], 5);
        assert_eq!(b["tls"]["verify"], false);
        let u = &y["upstreams"]["u"];
        assert_eq!(u["servers"][0]["addr"], "unix:/run/a.sock");
        assert_eq!(u["servers"][1]["addr"], "unix:/run/b.sock");
        assert_eq!(
            u["servers"][1]["max_inflight"], 100,
            "the defaults section's"
        );
        assert!(u.get("health").is_none(), "check was the backend b's only");
        let notes: Vec<(usize, NoteKind, &str)> = c
            .notes
            .iter()
            .map(|n| (n.line, n.kind, n.text.as_str()))
            .collect();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert_eq!(
            (notes[0].0, notes[0].1),
            (2, NoteKind::Approximated),
            "maxqueue, once: {notes:?}"
        );
        assert!(
            notes[1].2.contains("server m2: verify without ssl"),
            "m2's no-ssl drops the default verify: {notes:?}"
        );
        assert!(
            notes[2].2.contains("server m2") && notes[2].2.contains("differ"),
            "m2's no-ssl: {notes:?}"
        );
    }

    #[test]
    fn times_and_addresses() {
        assert_eq!(duration("5000").as_deref(), Some("5000ms"));
        assert_eq!(duration("30s").as_deref(), Some("30s"));
        assert_eq!(duration("5x"), None);
        assert_eq!(bind_addr("*:80").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(bind_addr("/run/sock"), None);
        assert_eq!(server_addr("unix@/run/s.sock"), "unix:/run/s.sock");
        assert_eq!(server_addr("/run/s.sock"), "unix:/run/s.sock");
        assert_eq!(server_addr("10.0.0.1:80"), "10.0.0.1:80");
    }
}
