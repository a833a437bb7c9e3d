//! Apache vhost (mod_proxy, mod_proxy_balancer, mod_ssl) → floodgate config. Read: `Listen`,
//! `<VirtualHost>`, `<Proxy balancer://NAME>` with `BalancerMember URL max= acquire= timeout=`
//! and `ProxySet lbmethod=`, `ProxyPass`/`ProxyPassReverse` (also inside `<Location>`, and
//! `ProxyPass /path !`), `SSLEngine`, `SSLCertificateFile`, `SSLCertificateKeyFile`,
//! `SSLCACertificateFile`, `SSLVerifyClient`, `RequestHeader set SSL-CLIENT-* / unset`.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use super::{ident, render, Converted, Notes};

fn unquote(s: &str) -> &str {
    s.trim_matches('"')
}

/// `http://localhost:3000/x` → (`localhost:3000`, `/x`).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Some((host, path.to_string()))
}

/// Apache worker parameters on a member or a ProxyPass: the ones floodgate has.
fn worker_params(
    params: &[&str],
    ln: usize,
    notes: &mut Notes,
    server: &mut Map<String, Value>,
    up: &mut Map<String, Value>,
) {
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        match k {
            "max" => {
                server.insert("max_inflight".into(), json!(v.parse::<u64>().unwrap_or(0)));
                notes.approx(ln, format!("max={v}: Apache's limit is per child process; max_inflight={v} is one limit for the whole gateway, with a real FIFO queue"));
            }
            "acquire" => {
                up.insert("queue".into(), json!({ "timeout": format!("{v}ms") }));
            }
            "timeout" => {
                up.insert("timeouts".into(), json!({ "read": format!("{v}s"), "write": format!("{v}s") }));
            }
            "connectiontimeout" => {
                up.insert("timeouts".into(), json!({ "connect": format!("{v}s") }));
            }
            "loadfactor" => {
                server.insert("weight".into(), json!(v.parse::<u32>().unwrap_or(1)));
            }
            "status" if v.starts_with('+') && v.contains('H') => {
                server.insert("backup".into(), json!(true));
            }
            "retry" => notes.approx(ln, format!("retry={v}: floodgate retries a down server after its health check (or observe:) says it is up")),
            _ => notes.skip(ln, format!("worker parameter {k}={v}")),
        }
    }
}

/// Converts an Apache config with one or more vhosts.
pub fn convert(text: &str, source: &str) -> Converted {
    let mut notes = Notes::default();
    let mut listens: Vec<String> = Vec::new();
    let mut listeners: Vec<Value> = Vec::new();
    let mut upstreams: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut routes: Vec<Value> = Vec::new();
    let mut balancer: Option<String> = None;
    let mut location: Option<String> = None;
    let mut vhost: Option<(String, usize, Map<String, Value>, bool)> = None; // bind, line, tls, ssl on

    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let d = w[0].to_ascii_lowercase();
        match (d.as_str(), &w[1..]) {
            ("listen", [addr, ..]) => listens.push(if addr.contains(':') { addr.to_string() } else { format!("0.0.0.0:{addr}") }),
            ("<virtualhost", [addr, ..]) => {
                let a = addr.trim_end_matches('>');
                let bind = match a.rsplit_once(':') {
                    Some((h, p)) => format!("{}:{p}", if h == "*" || h == "_default_" { "0.0.0.0" } else { h }),
                    None => listens.first().cloned().unwrap_or_else(|| "0.0.0.0:80".into()),
                };
                vhost = Some((bind, ln, Map::new(), false));
            }
            ("</virtualhost>", _) => {
                if let Some((bind, vln, tls, on)) = vhost.take() {
                    let mut l = json!({ "name": format!("vhost-{vln}"), "bind": bind });
                    if on {
                        if tls.contains_key("cert") && tls.contains_key("key") {
                            l["tls"] = Value::Object(tls);
                        } else {
                            notes.skip(vln, "SSLEngine on without SSLCertificateFile and SSLCertificateKeyFile");
                        }
                    }
                    listeners.push(l);
                }
            }
            ("<proxy", [url, ..]) if url.starts_with("balancer://") => {
                let name = ident(url.trim_start_matches("balancer://").trim_end_matches('>').trim_end_matches('/'));
                upstreams.entry(name.clone()).or_default();
                balancer = Some(name);
            }
            ("</proxy>", _) => balancer = None,
            ("balancermember", [url, params @ ..]) => {
                let Some(b) = balancer.clone() else {
                    notes.skip(ln, "BalancerMember outside <Proxy balancer://...>");
                    continue;
                };
                let Some((addr, path)) = split_url(url) else {
                    notes.skip(ln, format!("BalancerMember {url}: only http:// members are converted (https and unix: upstreams are another part of issue 14)"));
                    continue;
                };
                if path != "/" {
                    notes.approx(ln, format!("member path {path} dropped: floodgate sends the request path as received"));
                }
                let up = upstreams.get_mut(&b).expect("balancer");
                let mut s = Map::new();
                s.insert("addr".into(), json!(addr));
                worker_params(params, ln, &mut notes, &mut s, up);
                let list = up.entry("servers").or_insert_with(|| json!([]));
                list.as_array_mut().expect("array").push(Value::Object(s));
            }
            ("proxyset", params) if balancer.is_some() => {
                let up = upstreams.get_mut(balancer.as_ref().expect("balancer")).expect("balancer");
                for p in params {
                    match p.split_once('=') {
                        Some(("lbmethod", "byrequests")) => {
                            up.insert("balance".into(), json!("round_robin"));
                        }
                        Some(("lbmethod", "bybusyness")) => {
                            up.insert("balance".into(), json!("least_conn"));
                        }
                        _ => {
                            let mut s = Map::new();
                            worker_params(&[p], ln, &mut notes, &mut s, up);
                        }
                    }
                }
            }
            ("<location", [path, ..]) => location = Some(unquote(path.trim_end_matches('>')).to_string()),
            ("</location>", _) => location = None,
            ("proxypass", args) => {
                let (path, target, params) = match (&location, args) {
                    (Some(loc), [t, rest @ ..]) => (loc.clone(), *t, rest),
                    (None, [p, t, rest @ ..]) => (p.to_string(), *t, rest),
                    _ => {
                        notes.skip(ln, "ProxyPass without a path and a target");
                        continue;
                    }
                };
                if target == "!" {
                    notes.skip(ln, format!("ProxyPass {path} !: Apache serves {path} itself; floodgate cannot answer locally yet (being added by another engineer), so such requests would reach the next matching route"));
                    continue;
                }
                let trimmed = path.trim_end_matches('/');
                let (upstream, tpath) = if let Some(rest) = target.strip_prefix("balancer://") {
                    let (b, p) = rest.split_once('/').map_or((rest, "/".to_string()), |(b, p)| (b, format!("/{p}")));
                    (ident(b), p)
                } else if let Some((addr, p)) = split_url(target) {
                    let name = ident(&addr.replace(':', "_"));
                    let up = upstreams.entry(name.clone()).or_default();
                    if !up.contains_key("servers") {
                        up.insert("servers".into(), json!([{ "addr": addr }]));
                    }
                    (name, p)
                } else {
                    notes.skip(ln, format!("ProxyPass to {target}: only http:// and balancer:// targets are converted (https and unix: upstreams are another part of issue 14)"));
                    continue;
                };
                if tpath.trim_end_matches('/') != trimmed {
                    notes.skip(ln, format!("ProxyPass {path} {target}: the path is rewritten to {tpath}; floodgate sends the path as received, so this route is left out"));
                    continue;
                }
                if let Some(up) = upstreams.get_mut(&upstream) {
                    let mut unused = Map::new();
                    worker_params(params, ln, &mut notes, &mut unused, up);
                }
                let prefix = if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() };
                routes.push(json!({ "name": ident(&format!("line{ln}{}", prefix.replace('/', "-"))), "match": { "path_prefix": prefix }, "upstream": upstream }));
            }
            ("proxypassreverse", _) => notes.approx(ln, "ProxyPassReverse: floodgate does not rewrite Location headers; not needed when the paths are equal and ProxyPreserveHost is On"),
            ("proxyrequests", [v]) if v.eq_ignore_ascii_case("off") => {}
            ("proxypreservehost", [v]) if v.eq_ignore_ascii_case("on") => {}
            ("proxyaddheaders", [v]) if v.eq_ignore_ascii_case("on") => {}
            ("sslengine", [v]) => {
                if let Some(vh) = vhost.as_mut() {
                    vh.3 = v.eq_ignore_ascii_case("on");
                }
            }
            ("sslcertificatefile", [f]) | ("sslcertificatekeyfile", [f]) | ("sslcacertificatefile", [f]) => {
                let key = match d.as_str() {
                    "sslcertificatefile" => "cert",
                    "sslcertificatekeyfile" => "key",
                    _ => "client_ca",
                };
                if let Some(vh) = vhost.as_mut() {
                    vh.2.insert(key.into(), json!(unquote(f)));
                }
            }
            ("sslverifyclient", [v]) => {
                let mode = match *v {
                    "require" => "require",
                    "optional" | "optional_no_ca" => "optional",
                    _ => "none",
                };
                if let Some(vh) = vhost.as_mut() {
                    vh.2.insert("client_auth".into(), json!(mode));
                }
            }
            ("sslcertificatechainfile", [f]) => notes.approx(ln, format!("SSLCertificateChainFile {}: append it to the SSLCertificateFile PEM (floodgate sends the chain in cert:)", unquote(f))),
            ("requestheader", [op, name, ..]) => {
                let n = name.to_ascii_uppercase().replace('_', "-");
                if op.eq_ignore_ascii_case("set") && (n.starts_with("SSL-CLIENT-") || n == "X-FORWARDED-PROTO") {
                    notes.approx(ln, format!("RequestHeader set {name}: floodgate sets SSL-CLIENT-S-DN, SSL-CLIENT-CERT (PEM flattened), SSL-CLIENT-VERIFY and X-Forwarded-Proto itself on every listener"));
                } else if op.eq_ignore_ascii_case("unset") && (n.starts_with("REMOTE-USER") || n.starts_with("SSL-CLIENT-")) {
                    notes.approx(ln, format!("RequestHeader unset {name}: floodgate always removes client-sent REMOTE-USER* and SSL-CLIENT-* headers"));
                } else {
                    notes.skip(ln, format!("RequestHeader {op} {name}: header rules are being added (issue 17)"));
                }
            }
            _ => notes.skip(ln, format!("`{line}`")),
        }
    }
    if listeners.is_empty() {
        for (i, l) in listens.iter().enumerate() {
            listeners.push(json!({ "name": format!("listen-{i}"), "bind": l }));
        }
    }
    let mut doc = Map::new();
    doc.insert("listeners".into(), Value::Array(listeners));
    let ups: Map<String, Value> = upstreams
        .into_iter()
        .filter(|(_, u)| u.contains_key("servers"))
        .map(|(k, v)| (k, Value::Object(v)))
        .collect();
    doc.insert("upstreams".into(), Value::Object(ups));
    doc.insert("routes".into(), Value::Array(routes));
    let notes = notes.finish();
    Converted {
        yaml: render(source, &Value::Object(doc), &notes),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::NoteKind;

    fn yaml(c: &Converted) -> serde_yaml::Value {
        serde_yaml::from_str(&c.yaml).unwrap()
    }

    #[test]
    fn a_balancer_with_max_and_acquire_becomes_a_limited_queued_upstream() {
        let c = convert(
            "Listen 8080\n<VirtualHost *:8080>\n<Proxy balancer://reg>\n  BalancerMember http://127.0.0.1:3000 max=600 acquire=3000 timeout=900\n  ProxySet lbmethod=bybusyness\n</Proxy>\nProxyPass /rhsm balancer://reg/rhsm\nProxyPass /pub !\nProxyPass / http://127.0.0.1:3000/\n</VirtualHost>\n",
            "t",
        );
        let y = yaml(&c);
        let u = &y["upstreams"]["reg"];
        assert_eq!(u["servers"][0]["max_inflight"], 600);
        assert_eq!(u["queue"]["timeout"], "3000ms");
        assert_eq!(u["timeouts"]["read"], "900s");
        assert_eq!(u["balance"], "least_conn");
        assert_eq!(y["routes"][0]["match"]["path_prefix"], "/rhsm");
        assert_eq!(y["routes"][0]["upstream"], "reg");
        assert_eq!(y["routes"][1]["match"]["path_prefix"], "/");
        assert_eq!(y["listeners"][0]["bind"], "0.0.0.0:8080");
        let pub_note = c
            .notes
            .iter()
            .find(|n| n.line == 8)
            .expect("ProxyPass /pub ! noted");
        assert_eq!(pub_note.kind, NoteKind::NotConverted);
    }

    #[test]
    fn ssl_directives_make_a_tls_listener_and_header_lines_are_noted() {
        let c = convert(
            "<VirtualHost *:443>\nSSLEngine on\nSSLCertificateFile \"/c.crt\"\nSSLCertificateKeyFile /c.key\nSSLCACertificateFile /ca.crt\nSSLVerifyClient optional\nRequestHeader set SSL-CLIENT-S-DN \"%{SSL_CLIENT_S_DN}s\"\nRequestHeader set X-Custom 1\n<Location \"/app\">\nProxyPass http://h:1/app\n</Location>\n</VirtualHost>\n",
            "t",
        );
        let y = yaml(&c);
        let tls = &y["listeners"][0]["tls"];
        assert_eq!(tls["cert"], "/c.crt");
        assert_eq!(tls["key"], "/c.key");
        assert_eq!(tls["client_auth"], "optional");
        assert_eq!(
            y["routes"][0]["match"]["path_prefix"], "/app",
            "Location path"
        );
        let kinds: Vec<(usize, NoteKind)> = c.notes.iter().map(|n| (n.line, n.kind)).collect();
        assert_eq!(
            kinds,
            vec![(7, NoteKind::Approximated), (8, NoteKind::NotConverted)]
        );
    }

    #[test]
    fn a_rewritten_path_is_not_converted() {
        let c = convert("ProxyPass /registry/v2/ http://h:1/v2/\n", "t");
        assert!(yaml(&c)["routes"].as_sequence().unwrap().is_empty());
        assert_eq!(c.count(NoteKind::NotConverted), 1);
    }
}
