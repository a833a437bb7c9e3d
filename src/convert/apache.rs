//! Apache vhost (mod_proxy, mod_proxy_balancer, mod_ssl) → floodgate config. Read: `Listen`,
//! `<VirtualHost>`, `<Proxy balancer://NAME>` with `BalancerMember URL max= acquire= timeout=`
//! and `ProxySet lbmethod=`, `ProxyPass`/`ProxyPassReverse` (also inside `<Location>`, and
//! `ProxyPass /path !`), `SSLEngine`, `SSLCertificateFile`, `SSLCertificateKeyFile`,
//! `SSLCACertificateFile`, `SSLVerifyClient`, `https://` targets with `SSLProxyEngine`,
//! `SSLProxyVerify`, `SSLProxyCACertificateFile`, `SSLProxyCheckPeerName` and
//! `SSLProxyMachineCertificateFile` (as the upstream's `tls:`, see [`super::upstream_tls`]),
//! `unix:/path|http://name/` targets and members (as `unix:` servers),
//! and `RequestHeader`/`Header` lines (as header
//! rules, see [`super::apache_headers`]). `ProxyPass /path !` becomes a route answering 404.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use super::apache_headers::{words, Rules, Side};
use super::upstream_tls::{ip_host, ApacheProxyTls};
use super::{ident, Converted, Notes};

/// The `<VirtualHost>` being read.
struct VHost {
    bind: String,
    line: usize,
    tls: Map<String, Value>,
    ssl_on: bool,
    server_name: Option<String>,
    rules: Rules,
    /// Its `SSLProxy*` lines, for the `https://` targets it names.
    proxy_tls: ApacheProxyTls,
}

/// An upstream reached over `https://`: where it was first named and in which vhost (its index
/// among the vhosts; `None`: outside any), and whether a member's host is an IP literal.
struct HttpsUpstream {
    line: usize,
    vhost: Option<usize>,
    ip_host: bool,
}

fn unquote(s: &str) -> &str {
    s.trim_matches('"')
}

/// `http://localhost:3000/x` → (false, `localhost:3000`, `/x`); `https://h/` → (true,
/// `h:443`, `/`).
/// mod_proxy's Unix-socket form `unix:/run/foreman.sock|http://foreman/x` → (false,
/// `unix:/run/foreman.sock`, `/x`); `unix:...|https://` is not converted (`None`).
fn split_url(url: &str) -> Option<(bool, String, String)> {
    if let Some(rest) = url.strip_prefix("unix:") {
        let (sock, url) = rest.split_once('|')?;
        let (https, _, path) = split_url(url)?;
        if https || !sock.starts_with('/') || url.starts_with("unix:") {
            return None;
        }
        return Some((false, format!("unix:{sock}"), path));
    }
    let (https, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:{}", if https { 443 } else { 80 })
    };
    Some((https, host, path.to_string()))
}

/// The note for a `unix:` target: without `ProxyPreserveHost On` Apache sends `Host: NAME`
/// (the name after `|http://`), floodgate always sends the client's.
fn unix_host_note(url: &str, preserve_host: bool, ln: usize, notes: &mut Notes) {
    if preserve_host || !url.starts_with("unix:") {
        return;
    }
    let name = url
        .split_once("|http://")
        .map_or("", |(_, u)| u.split(['/', ':']).next().unwrap_or(""));
    notes.approx(ln, format!("{url}: without ProxyPreserveHost On Apache sends Host: {name}; floodgate always sends the client's Host (it cannot set Host), so the app must accept the names clients use"));
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
    // Sections whose condition floodgate cannot carry (`<If>`, `<Directory>`, `<LocationMatch>`,
    // ...), innermost last: a header or ProxyPass line inside one is left out, as converting it
    // without its section would apply it everywhere.
    let mut enclosing: Vec<String> = Vec::new();
    let mut vhost: Option<VHost> = None;
    // Header lines outside any vhost apply to every vhost.
    let mut server_rules = Rules::default();
    // `SSLProxy*` outside any vhost, then each closed vhost's (in order).
    let mut server_tls = ApacheProxyTls::default();
    let mut vhost_tls: Vec<ApacheProxyTls> = Vec::new();
    // Whether each upstream's targets are https://, and the https ones.
    let mut schemes: BTreeMap<String, bool> = BTreeMap::new();
    let mut https_ups: BTreeMap<String, HttpsUpstream> = BTreeMap::new();
    // `ProxyPreserveHost On` anywhere in the file (read as applying to every vhost).
    let preserve_host = text.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        matches!(w.as_slice(), [d, v] if d.eq_ignore_ascii_case("proxypreservehost") && v.eq_ignore_ascii_case("on"))
    });

    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let d = w[0].to_ascii_lowercase();
        if d.starts_with("sslproxy") {
            let scope = vhost.as_mut().map_or(&mut server_tls, |v| &mut v.proxy_tls);
            if scope.directive(&d, &w[1..]) {
                continue;
            }
        }
        // A target's scheme: the first one of an upstream wins, another is left out.
        let mut scheme = |up: &str,
                          https: bool,
                          addr: &str,
                          ln: usize,
                          notes: &mut Notes|
         -> bool {
            match schemes.get(up) {
                Some(was) if *was != https => {
                    notes.skip(ln, format!("{addr}: upstream {up} is reached over {} elsewhere; floodgate sets TLS per upstream, so this target is left out", if *was { "https://" } else { "http://" }));
                    return false;
                }
                _ => {
                    schemes.insert(up.to_string(), https);
                }
            }
            if https {
                let at = https_ups.entry(up.to_string()).or_insert(HttpsUpstream {
                    line: ln,
                    vhost: vhost.as_ref().map(|_| vhost_tls.len()),
                    ip_host: false,
                });
                at.ip_host |= ip_host(addr);
            }
            true
        };
        match (d.as_str(), &w[1..]) {
            ("listen", [addr, ..]) => listens.push(if addr.contains(':') { addr.to_string() } else { format!("0.0.0.0:{addr}") }),
            ("<virtualhost", [addr, ..]) => {
                let a = addr.trim_end_matches('>');
                let bind = match a.rsplit_once(':') {
                    Some((h, p)) => format!("{}:{p}", if h == "*" || h == "_default_" { "0.0.0.0" } else { h }),
                    None => listens.first().cloned().unwrap_or_else(|| "0.0.0.0:80".into()),
                };
                vhost = Some(VHost { bind, line: ln, tls: Map::new(), ssl_on: false, server_name: None, rules: Rules::default(), proxy_tls: ApacheProxyTls::default() });
            }
            ("</virtualhost>", _) => {
                if let Some(vh) = vhost.take() {
                    vhost_tls.push(vh.proxy_tls.clone());
                    let mut l = json!({ "name": format!("vhost-{}", vh.line), "bind": vh.bind });
                    if vh.ssl_on {
                        if vh.tls.contains_key("cert") && vh.tls.contains_key("key") {
                            l["tls"] = Value::Object(vh.tls);
                        } else {
                            notes.skip(vh.line, "SSLEngine on without SSLCertificateFile and SSLCertificateKeyFile");
                        }
                    }
                    if let Some(n) = vh.server_name {
                        l["server_name"] = json!(n);
                    }
                    with_rules(&mut l, &vh.rules, &server_rules);
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
                let Some((https, addr, path)) = split_url(url) else {
                    notes.skip(ln, format!("BalancerMember {url}: only http://, https:// and unix:/path|http:// members are converted"));
                    continue;
                };
                unix_host_note(url, preserve_host, ln, &mut notes);
                if !scheme(&b, https, &addr, ln, &mut notes) {
                    continue;
                }
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
            ("<ifmodule", _) | ("</ifmodule>", _) => {}
            ("<location", ["~", ..]) => {
                notes.skip(ln, "<Location ~ regex>: floodgate has no regex path match; the lines inside are left out");
                enclosing.push("location".into());
            }
            ("</location>", _) if enclosing.last().is_some_and(|s| s == "location") => {
                enclosing.pop();
            }
            ("<location", [path, ..]) => location = Some(unquote(path.trim_end_matches('>')).to_string()),
            ("</location>", _) => location = None,
            (open, _) if open.starts_with('<') && !open.starts_with("</") && !matches!(open, "<virtualhost" | "<proxy") => {
                notes.skip(ln, format!("`{line}`: floodgate cannot carry this section's condition; the header and ProxyPass lines inside are left out"));
                enclosing.push(open[1..].trim_end_matches('>').to_string());
            }
            (close, _) if close.starts_with("</") && enclosing.last().is_some_and(|s| close[2..].trim_end_matches('>') == s) => {
                enclosing.pop();
            }
            ("proxypass" | "requestheader" | "header", _) if !enclosing.is_empty() => {
                notes.skip(ln, format!("`{line}`: inside <{}>", enclosing.last().map_or("", String::as_str)));
            }
            ("proxypass", args) => {
                let (path, target, params) = match (&location, args) {
                    (Some(loc), [t, rest @ ..]) => (loc.clone(), *t, rest),
                    (None, [p, t, rest @ ..]) => (p.to_string(), *t, rest),
                    _ => {
                        notes.skip(ln, "ProxyPass without a path and a target");
                        continue;
                    }
                };
                let trimmed = path.trim_end_matches('/');
                let prefix = if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() };
                let name = ident(&format!("line{ln}{}", prefix.replace('/', "-")));
                if target == "!" {
                    notes.approx(ln, format!("ProxyPass {path} !: a route answering 404 Not Found here; Apache serves {path} itself (files, Alias, a handler), so serve those from elsewhere if they matter"));
                    routes.push(json!({ "name": name, "match": { "path_prefix": prefix }, "respond": { "status": 404, "headers": { "Content-Type": "text/plain" }, "body": "Not Found\n" } }));
                    continue;
                }
                let (upstream, tpath) = if let Some(rest) = target.strip_prefix("balancer://") {
                    let (b, p) = rest.split_once('/').map_or((rest, "/".to_string()), |(b, p)| (b, format!("/{p}")));
                    (ident(b), p)
                } else if let Some((https, addr, p)) = split_url(target) {
                    unix_host_note(target, preserve_host, ln, &mut notes);
                    let name = ident(&addr.replace(':', "_"));
                    if !scheme(&name, https, &addr, ln, &mut notes) {
                        continue;
                    }
                    let up = upstreams.entry(name.clone()).or_default();
                    if !up.contains_key("servers") {
                        up.insert("servers".into(), json!([{ "addr": addr }]));
                    }
                    (name, p)
                } else {
                    notes.skip(ln, format!("ProxyPass to {target}: only http://, https://, unix:/path|http:// and balancer:// targets are converted"));
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
                routes.push(json!({ "name": name, "match": { "path_prefix": prefix }, "upstream": upstream }));
            }
            ("proxypassreverse", _) => notes.approx(ln, "ProxyPassReverse: floodgate does not rewrite Location headers; not needed when the paths are equal and ProxyPreserveHost is On"),
            ("servername", [n]) if vhost.is_some() => {
                if let Some(vh) = vhost.as_mut() {
                    vh.server_name = Some(unquote(n).to_string());
                }
            }
            ("proxyrequests", [v]) if v.eq_ignore_ascii_case("off") => {}
            ("proxypreservehost", [v]) if v.eq_ignore_ascii_case("on") => {}
            ("proxyaddheaders", [v]) if v.eq_ignore_ascii_case("on") => {}
            ("sslengine", [v]) => {
                if let Some(vh) = vhost.as_mut() {
                    vh.ssl_on = v.eq_ignore_ascii_case("on");
                }
            }
            ("sslcertificatefile", [f]) | ("sslcertificatekeyfile", [f]) | ("sslcacertificatefile", [f]) => {
                let key = match d.as_str() {
                    "sslcertificatefile" => "cert",
                    "sslcertificatekeyfile" => "key",
                    _ => "client_ca",
                };
                if let Some(vh) = vhost.as_mut() {
                    vh.tls.insert(key.into(), json!(unquote(f)));
                }
            }
            ("sslverifyclient", [v]) => {
                let mode = match *v {
                    "require" => "require",
                    "optional" | "optional_no_ca" => "optional",
                    _ => "none",
                };
                if let Some(vh) = vhost.as_mut() {
                    vh.tls.insert("client_auth".into(), json!(mode));
                }
            }
            ("sslcertificatechainfile", [f]) => notes.approx(ln, format!("SSLCertificateChainFile {}: append it to the SSLCertificateFile PEM (floodgate sends the chain in cert:)", unquote(f))),
            ("requestheader" | "header", _) => {
                let side = if d == "header" { Side::Response } else { Side::Request };
                let rules = vhost.as_mut().map_or(&mut server_rules, |vh| &mut vh.rules);
                rules.add_line(side, &words(line)[1..], location.as_deref(), ln, &mut notes);
            }
            _ => notes.skip(ln, format!("`{line}`")),
        }
    }
    if listeners.is_empty() {
        for (i, l) in listens.iter().enumerate() {
            let mut l = json!({ "name": format!("listen-{i}"), "bind": l });
            with_rules(&mut l, &Rules::default(), &server_rules);
            listeners.push(l);
        }
    }
    for (name, at) in &https_ups {
        let scope = at
            .vhost
            .and_then(|i| vhost_tls.get(i))
            .map_or(server_tls.clone(), |v| v.within(&server_tls));
        if let Some(up) = upstreams.get_mut(name) {
            up.insert("tls".into(), scope.block(at.ip_host, at.line, &mut notes));
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
    Converted::from_doc(source, doc, notes)
}

/// Puts a vhost's header rules (after the server-wide ones) on its listener.
fn with_rules(listener: &mut Value, rules: &Rules, server: &Rules) {
    let (request, response) = rules.lists(server);
    if !request.is_empty() {
        listener["request_headers"] = Value::Array(request);
    }
    if !response.is_empty() {
        listener["response_headers"] = Value::Array(response);
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
        assert_eq!(y["routes"][1]["match"]["path_prefix"], "/pub");
        assert_eq!(
            y["routes"][1]["respond"]["status"], 404,
            "ProxyPass /pub ! answers locally"
        );
        assert!(y["routes"][1].get("upstream").is_none());
        assert_eq!(
            y["routes"][2]["match"]["path_prefix"], "/",
            "in source order, after the exclusion"
        );
        assert_eq!(y["listeners"][0]["bind"], "0.0.0.0:8080");
        let pub_note = c
            .notes
            .iter()
            .find(|n| n.line == 8)
            .expect("ProxyPass /pub ! noted");
        assert_eq!(pub_note.kind, NoteKind::Approximated, "{pub_note}");
    }

    #[test]
    fn ssl_directives_make_a_tls_listener_and_header_lines_become_rules() {
        let c = convert(
            "<VirtualHost *:443>\nSSLEngine on\nSSLCertificateFile \"/c.crt\"\nSSLCertificateKeyFile /c.key\nSSLCACertificateFile /ca.crt\nSSLVerifyClient optional\nRequestHeader set SSL-CLIENT-S-DN \"%{SSL_CLIENT_S_DN}s\"\nRequestHeader set X-Custom 1\n<Location \"/app\">\nProxyPass http://h:1/app\nRequestHeader set REMOTE-USER admin \"expr=%{SSL_CLIENT_S_DN_CN} == 'h.example.com'\"\n</Location>\nHeader always set Strict-Transport-Security \"max-age=31536000\"\nRequestHeader edit X-A a b\n</VirtualHost>\n",
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
        let rules = &y["listeners"][0]["request_headers"];
        let expect: serde_yaml::Value = serde_yaml::from_str(
            r#"
            - { set: SSL-CLIENT-S-DN, value: "%{ssl_client_s_dn}" }
            - { set: X-Custom, value: "1" }
            - { set: REMOTE-USER, value: admin, if: { cert_cn: h.example.com, path_prefix: /app } }
            "#,
        )
        .unwrap();
        assert_eq!(
            rules, &expect,
            "vhost lines, then the Location's under its path"
        );
        let expect: serde_yaml::Value = serde_yaml::from_str(
            r#"[{ set: Strict-Transport-Security, value: "max-age=31536000" }]"#,
        )
        .unwrap();
        assert_eq!(y["listeners"][0]["response_headers"], expect);
        let kinds: Vec<(usize, NoteKind)> = c.notes.iter().map(|n| (n.line, n.kind)).collect();
        assert_eq!(
            kinds,
            vec![(7, NoteKind::Approximated), (14, NoteKind::NotConverted)],
            "the empty-certificate note and the edit line: {:?}",
            c.notes
        );
    }

    #[test]
    fn lines_inside_a_section_floodgate_cannot_express_are_left_out() {
        let c = convert(
            "<VirtualHost *:80>\n<If \"%{HTTP_HOST} == 'a'\">\nRequestHeader set X-A 1\n</If>\n<LocationMatch \"^/x\">\nHeader always set X-B 1\nProxyPass http://h:1/x\n</LocationMatch>\n<Location ~ \"/y\">\nRequestHeader unset X-C\n</Location>\n<IfModule mod_headers.c>\nRequestHeader set X-D 1\n</IfModule>\n</VirtualHost>\n",
            "t",
        );
        let y = yaml(&c);
        let expect: serde_yaml::Value =
            serde_yaml::from_str(r#"[{ set: X-D, value: "1" }]"#).unwrap();
        assert_eq!(
            y["listeners"][0]["request_headers"], expect,
            "only the IfModule line applies everywhere"
        );
        assert!(y["listeners"][0].get("response_headers").is_none());
        assert!(y["routes"].as_sequence().unwrap().is_empty());
        let skipped: Vec<usize> = c
            .notes
            .iter()
            .filter(|n| n.kind == NoteKind::NotConverted)
            .map(|n| n.line)
            .collect();
        assert_eq!(skipped, [2, 3, 5, 6, 7, 9, 10], "{:?}", c.notes);
    }

    #[test]
    fn https_targets_take_the_vhosts_sslproxy_settings_as_tls() {
        let c = convert(
            "SSLProxyMachineCertificateFile /fm.pem\n<VirtualHost *:443>\nSSLProxyEngine on\nSSLProxyVerify require\nSSLProxyCACertificateFile \"/ca.pem\"\nSSLProxyCheckPeerName on\n<Proxy balancer://app>\n  BalancerMember https://app1.example.com:8443 max=10\n  BalancerMember http://app2.example.com:3000\n</Proxy>\nProxyPass / balancer://app/\nProxyPass /plain https://127.0.0.1\nSSLProxyProtocol all\n</VirtualHost>\n",
            "t",
        );
        let y = yaml(&c);
        let tls: serde_yaml::Value =
            serde_yaml::from_str("{ verify: true, ca: /ca.pem, cert: /fm.pem, key: /fm.pem }")
                .unwrap();
        let app = &y["upstreams"]["app"];
        assert_eq!(app["tls"], tls, "the vhost's settings over the server's");
        assert_eq!(app["servers"][0]["addr"], "app1.example.com:8443");
        assert_eq!(
            app["servers"].as_sequence().unwrap().len(),
            1,
            "the http:// member is left out"
        );
        let direct = &y["upstreams"]["127_0_0_1_443"];
        assert_eq!(
            direct["servers"][0]["addr"], "127.0.0.1:443",
            "https default port"
        );
        assert_eq!(direct["tls"]["verify_hostname"], false, "an IP host");
        let notes: Vec<(usize, NoteKind)> = c.notes.iter().map(|n| (n.line, n.kind)).collect();
        assert!(
            notes.contains(&(9, NoteKind::NotConverted)),
            "mixed member: {:?}",
            c.notes
        );
        assert!(
            notes.contains(&(13, NoteKind::NotConverted)),
            "SSLProxyProtocol: {:?}",
            c.notes
        );
        assert!(
            notes.contains(&(12, NoteKind::Approximated)),
            "IP host: {:?}",
            c.notes
        );
    }

    #[test]
    fn unix_socket_targets_become_unix_servers() {
        let c = convert(
            "<VirtualHost *:80>\n<Proxy balancer://puma>\n  BalancerMember unix:/run/foreman.sock|http://foreman max=5\n</Proxy>\nProxyPass /rhsm balancer://puma/rhsm\nProxyPass / unix:/run/foreman.sock|http://foreman/\nProxyPass /x unix:/run/x.sock|https://x/x\n</VirtualHost>\n",
            "t",
        );
        let y = yaml(&c);
        assert_eq!(
            y["upstreams"]["puma"]["servers"][0]["addr"],
            "unix:/run/foreman.sock"
        );
        let direct = &y["upstreams"]["unix__run_foreman_sock"];
        assert_eq!(direct["servers"][0]["addr"], "unix:/run/foreman.sock");
        assert_eq!(y["routes"][1]["upstream"], "unix__run_foreman_sock");
        assert_eq!(y["routes"][1]["match"]["path_prefix"], "/");
        assert_eq!(y["routes"].as_sequence().unwrap().len(), 2);
        let notes: Vec<(usize, NoteKind)> = c.notes.iter().map(|n| (n.line, n.kind)).collect();
        assert_eq!(
            notes,
            [
                (3, NoteKind::Approximated), // Host: foreman (no ProxyPreserveHost On)
                (3, NoteKind::Approximated), // max=
                (6, NoteKind::Approximated), // Host: foreman
                (7, NoteKind::NotConverted)  // https over a socket
            ],
            "{:?}",
            c.notes
        );
        assert!(c.notes[0].text.contains("Host: foreman;"), "{}", c.notes[0]);
        let preserved = convert(
            "ProxyPreserveHost On\nProxyPass / unix:/run/foreman.sock|http://foreman/\n",
            "t",
        );
        assert!(preserved.notes.is_empty(), "{:?}", preserved.notes);
    }

    #[test]
    fn a_rewritten_path_is_not_converted() {
        let c = convert("ProxyPass /registry/v2/ http://h:1/v2/\n", "t");
        assert!(yaml(&c)["routes"].as_sequence().unwrap().is_empty());
        assert_eq!(c.count(NoteKind::NotConverted), 1);
    }
}
