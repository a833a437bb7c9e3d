//! TLS to the servers in the converters: HAProxy's `server ... ssl verify ca-file crt sni
//! verifyhost` options and Apache's `SSLProxy*` directives (for `https://` targets) become a
//! floodgate `upstreams.NAME.tls` block (`ca`, `verify`, `sni`, `verify_hostname`, `cert`,
//! `key`), with a note for each difference. Pure: the callers own the lines and the upstreams.

use serde_json::{json, Map, Value};

use super::Notes;

/// HAProxy server options that are TLS settings floodgate has no key for (OpenSSL's defaults
/// apply): those taking an argument, then the flags.
const HAPROXY_UNSUPPORTED_ARG: &[&str] = &[
    "ciphers",
    "ciphersuites",
    "alpn",
    "npn",
    "ssl-min-ver",
    "ssl-max-ver",
    "crl-file",
    "check-sni",
    "check-alpn",
    "curves",
    "sigalgs",
    "client-sigalgs",
];
const HAPROXY_UNSUPPORTED_FLAG: &[&str] = &[
    "no-sslv3",
    "no-tlsv10",
    "no-tlsv11",
    "no-tlsv12",
    "no-tlsv13",
    "force-sslv3",
    "force-tlsv10",
    "force-tlsv11",
    "force-tlsv12",
    "force-tlsv13",
    "no-ssl-reuse",
    "ssl-reuse",
    "no-tls-tickets",
    "tls-tickets",
    "allow-0rtt",
];

/// The TLS options of one HAProxy `server` line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HaproxyServerTls {
    pub(crate) ssl: bool,
    pub(crate) verify: Option<String>,
    pub(crate) ca_file: Option<String>,
    pub(crate) crt: Option<String>,
    pub(crate) sni: Option<String>,
    pub(crate) verifyhost: Option<String>,
    pub(crate) check_ssl: bool,
}

impl HaproxyServerTls {
    /// Reads option `o` (its argument `arg`) if it is a TLS option: returns the number of
    /// words it takes (1, or 2 with its argument), 0 when `o` is not a TLS option.
    /// Untranslatable TLS options are noted as not converted.
    pub(crate) fn take(
        &mut self,
        server: &str,
        o: &str,
        arg: Option<&str>,
        ln: usize,
        notes: &mut Notes,
    ) -> usize {
        let value = |slot: &mut Option<String>| match arg {
            Some(a) => {
                *slot = Some(a.to_string());
                2
            }
            None => 1,
        };
        match o {
            "ssl" => {
                self.ssl = true;
                1
            }
            "no-ssl" => {
                self.ssl = false;
                1
            }
            "check-ssl" => {
                self.check_ssl = true;
                1
            }
            "verify" => value(&mut self.verify),
            "ca-file" => value(&mut self.ca_file),
            "crt" => value(&mut self.crt),
            "sni" => value(&mut self.sni),
            "verifyhost" => value(&mut self.verifyhost),
            o if HAPROXY_UNSUPPORTED_ARG.contains(&o) => {
                notes.skip(ln, format!("server {server}: TLS option {o} {}: floodgate has no setting for it (OpenSSL's defaults apply)", arg.unwrap_or("")));
                if arg.is_some() {
                    2
                } else {
                    1
                }
            }
            o if HAPROXY_UNSUPPORTED_FLAG.contains(&o) => {
                notes.skip(ln, format!("server {server}: TLS option {o}: floodgate has no setting for it (OpenSSL's defaults apply)"));
                1
            }
            _ => 0,
        }
    }

    /// The upstream's `tls:` block for this server, `None` for plain HTTP. `verify_default`
    /// is the global `ssl-server-verify` (HAProxy's default: required).
    pub(crate) fn block(
        &self,
        server: &str,
        verify_default: bool,
        ln: usize,
        notes: &mut Notes,
    ) -> Option<Value> {
        if !self.ssl {
            if self.check_ssl {
                notes.skip(ln, format!("server {server}: check-ssl without ssl: floodgate checks a server the way requests reach it (plain HTTP here)"));
            }
            for (o, set) in [
                ("verify", self.verify.is_some()),
                ("ca-file", self.ca_file.is_some()),
                ("crt", self.crt.is_some()),
                ("sni", self.sni.is_some()),
                ("verifyhost", self.verifyhost.is_some()),
            ] {
                if set {
                    notes.skip(
                        ln,
                        format!("server {server}: {o} without ssl: the server is reached over plain HTTP"),
                    );
                }
            }
            return None;
        }
        let mut t = Map::new();
        let verify = match self.verify.as_deref() {
            None => verify_default,
            Some("required") => true,
            Some("none") => false,
            Some(v) => {
                notes.skip(ln, format!("server {server}: verify {v}: HAProxy knows none and required; floodgate verifies (as required)"));
                true
            }
        };
        t.insert("verify".into(), json!(verify));
        match (&self.ca_file, verify) {
            (Some(ca), true) => {
                t.insert("ca".into(), json!(ca));
            }
            (Some(ca), false) => notes.approx(
                ln,
                format!("server {server}: ca-file {ca} left out: with verify none HAProxy does not use it, and floodgate refuses a ca with verify: false"),
            ),
            (None, true) => notes.approx(
                ln,
                format!("server {server}: verify without ca-file: HAProxy refuses this unless ca-base or a default CA is set; floodgate verifies against the system CA store"),
            ),
            (None, false) => {}
        }
        let sni = match self.sni.as_deref() {
            None => None,
            Some(expr) => match expr.strip_prefix("str(").and_then(|s| s.strip_suffix(')')) {
                Some(name) => Some(name.to_string()),
                None => {
                    notes.skip(ln, format!("server {server}: sni {expr}: floodgate sends one fixed name per upstream (tls.sni); only sni str(NAME) is converted"));
                    None
                }
            },
        };
        if verify {
            // HAProxy checks the certificate's name against verifyhost, else against the SNI
            // sent; with neither it checks the chain only.
            match (&sni, &self.verifyhost) {
                (Some(s), None) => {
                    t.insert("sni".into(), json!(s));
                }
                (Some(s), Some(h)) if s == h => {
                    t.insert("sni".into(), json!(s));
                }
                (Some(s), Some(h)) => {
                    t.insert("sni".into(), json!(s));
                    notes.skip(ln, format!("server {server}: verifyhost {h} differs from sni {s}: floodgate checks the certificate against the name it sends, {s}"));
                }
                (None, Some(h)) => {
                    t.insert("sni".into(), json!(h));
                    notes.approx(ln, format!("server {server}: verifyhost {h} becomes sni: {h}: floodgate also sends it as SNI"));
                }
                (None, None) => {
                    t.insert("verify_hostname".into(), json!(false));
                }
            }
        } else if let Some(s) = sni {
            t.insert("sni".into(), json!(s));
        }
        if let Some(crt) = &self.crt {
            t.insert("cert".into(), json!(crt));
            t.insert("key".into(), json!(crt));
            notes.approx(ln, format!("server {server}: crt {crt}: HAProxy reads the client certificate and its key from one PEM; the same file is given as cert and key (floodgate reads the certificates from cert and the key from key, so one file serves both; a crt directory or a separate .key file is not read)"));
        }
        Some(Value::Object(t))
    }
}

/// Apache's `SSLProxy*` settings of one scope (the server config or a vhost).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ApacheProxyTls {
    pub(crate) engine: Option<bool>,
    pub(crate) ca: Option<String>,
    pub(crate) verify: Option<String>,
    pub(crate) check_name: Option<bool>,
    pub(crate) machine_cert: Option<String>,
}

impl ApacheProxyTls {
    /// Reads directive `d` (lowercase) with `args`; false when it is not one of ours.
    pub(crate) fn directive(&mut self, d: &str, args: &[&str]) -> bool {
        let on = |v: &str| v.eq_ignore_ascii_case("on");
        let file = |v: &str| v.trim_matches('"').to_string();
        match (d, args) {
            ("sslproxyengine", [v]) => self.engine = Some(on(v)),
            ("sslproxycacertificatefile", [f]) => self.ca = Some(file(f)),
            ("sslproxyverify", [v]) => self.verify = Some(v.to_ascii_lowercase()),
            ("sslproxycheckpeername", [v]) => self.check_name = Some(on(v)),
            ("sslproxymachinecertificatefile", [f]) => self.machine_cert = Some(file(f)),
            // floodgate checks the validity dates whenever it verifies; `off` is listed.
            ("sslproxycheckpeerexpire", [v]) if on(v) => {}
            _ => return false,
        }
        true
    }

    /// These settings, where unset taken from `outer` (a vhost inherits the server config's).
    pub(crate) fn within(&self, outer: &ApacheProxyTls) -> ApacheProxyTls {
        ApacheProxyTls {
            engine: self.engine.or(outer.engine),
            ca: self.ca.clone().or_else(|| outer.ca.clone()),
            verify: self.verify.clone().or_else(|| outer.verify.clone()),
            check_name: self.check_name.or(outer.check_name),
            machine_cert: self
                .machine_cert
                .clone()
                .or_else(|| outer.machine_cert.clone()),
        }
    }

    /// The `tls:` block of an upstream reached by `https://` from this scope, first named on
    /// line `ln` (`ip_host`: its host is an IP literal).
    pub(crate) fn block(&self, ip_host: bool, ln: usize, notes: &mut Notes) -> Value {
        let mut t = Map::new();
        if self.engine != Some(true) {
            notes.approx(ln, "https:// target without SSLProxyEngine on: Apache refuses to proxy to it; floodgate speaks HTTPS to it");
        }
        // Apache's default is SSLProxyVerify none.
        let verify = match self.verify.as_deref() {
            None | Some("none") | Some("optional_no_ca") => false,
            Some("require") => true,
            Some(v) => {
                notes.approx(ln, format!("SSLProxyVerify {v}: floodgate verifies the server certificate (as require)"));
                true
            }
        };
        t.insert("verify".into(), json!(verify));
        let check_name = self.check_name.unwrap_or(true);
        if verify {
            if let Some(ca) = &self.ca {
                t.insert("ca".into(), json!(ca));
            } else {
                notes.approx(ln, "SSLProxyVerify require without SSLProxyCACertificateFile: floodgate verifies against the system CA store");
            }
            if !check_name {
                t.insert("verify_hostname".into(), json!(false));
            } else if ip_host {
                t.insert("verify_hostname".into(), json!(false));
                notes.approx(ln, "the target's host is an IP address: Apache checks it against the certificate's IP names, floodgate checks the chain only (set tls.sni to a name in the certificate to check a name)");
            }
        } else {
            if let Some(ca) = &self.ca {
                notes.approx(ln, format!("SSLProxyCACertificateFile {ca} left out: SSLProxyVerify is none (Apache's default), so the chain is not checked; set SSLProxyVerify require to use it"));
            }
            if check_name {
                notes.approx(ln, "SSLProxyVerify none: floodgate checks neither the chain nor the name (Apache still checks the name, SSLProxyCheckPeerName on by default)");
            }
        }
        if let Some(pem) = &self.machine_cert {
            t.insert("cert".into(), json!(pem));
            t.insert("key".into(), json!(pem));
            notes.approx(ln, format!("SSLProxyMachineCertificateFile {pem}: one PEM with the client certificate and its key, given as both cert and key; with several certificates in it floodgate presents the first"));
        }
        Value::Object(t)
    }
}

/// True when `addr` (`host:port`, `[v6]:port`) has an IP literal as host.
pub(crate) fn ip_host(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::convert::NoteKind;

    fn haproxy(opts: &[&str]) -> (Option<Value>, Vec<crate::convert::Note>) {
        let mut notes = Notes::default();
        let mut t = HaproxyServerTls::default();
        let mut i = 0;
        while i < opts.len() {
            let n = t.take("m1", opts[i], opts.get(i + 1).copied(), 1, &mut notes);
            assert!(n > 0, "{} is a TLS option", opts[i]);
            i += n;
        }
        (t.block("m1", true, 1, &mut notes), notes.finish())
    }

    #[test]
    fn haproxy_ssl_verify_ca_crt_and_sni_become_tls() {
        let (t, notes) = haproxy(&[
            "ssl",
            "verify",
            "required",
            "ca-file",
            "/ca.pem",
            "crt",
            "/c.pem",
            "sni",
            "str(puppet.example.com)",
        ]);
        assert_eq!(
            t.unwrap(),
            json!({ "verify": true, "ca": "/ca.pem", "sni": "puppet.example.com", "cert": "/c.pem", "key": "/c.pem" })
        );
        assert_eq!(notes.len(), 1, "the one-PEM crt: {notes:?}");
        assert!(notes[0].text.contains("cert and key"), "{}", notes[0]);
    }

    #[test]
    fn haproxy_without_sni_checks_the_chain_only_and_verify_none_drops_the_ca() {
        let (t, notes) = haproxy(&["ssl", "verify", "required", "ca-file", "/ca.pem"]);
        assert_eq!(
            t.unwrap(),
            json!({ "verify": true, "ca": "/ca.pem", "verify_hostname": false })
        );
        assert!(notes.is_empty(), "{notes:?}");
        let (t, notes) = haproxy(&["ssl", "verify", "none", "ca-file", "/ca.pem"]);
        assert_eq!(t.unwrap(), json!({ "verify": false }));
        assert_eq!(notes[0].kind, NoteKind::Approximated, "{notes:?}");
        let (t, _) = haproxy(&["ssl", "verify", "required", "verifyhost", "pm.example.com"]);
        assert_eq!(t.unwrap()["sni"], "pm.example.com");
    }

    #[test]
    fn haproxy_untranslatable_tls_options_are_listed() {
        let (t, notes) = haproxy(&[
            "ssl",
            "verify",
            "none",
            "sni",
            "req.hdr(host)",
            "alpn",
            "h2",
            "no-sslv3",
        ]);
        assert_eq!(t.unwrap(), json!({ "verify": false }));
        let skipped: Vec<&str> = notes
            .iter()
            .filter(|n| n.kind == NoteKind::NotConverted)
            .map(|n| n.text.as_str())
            .collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        let (t, notes) = haproxy(&["check-ssl", "verify", "required"]);
        assert_eq!(t, None, "no ssl: plain HTTP");
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn apache_defaults_do_not_verify_and_require_uses_the_ca_and_machine_cert() {
        let mut notes = Notes::default();
        let server = ApacheProxyTls {
            engine: Some(true),
            ..Default::default()
        };
        let t = ApacheProxyTls::default()
            .within(&server)
            .block(false, 3, &mut notes);
        assert_eq!(t, json!({ "verify": false }), "Apache's default is none");
        let n = notes.finish();
        assert_eq!(n.len(), 1, "the name check Apache still does: {n:?}");

        let mut notes = Notes::default();
        let mut vh = ApacheProxyTls::default();
        for (d, a) in [
            ("sslproxyverify", "require"),
            ("sslproxycacertificatefile", "\"/ca.pem\""),
            ("sslproxycheckpeername", "off"),
            ("sslproxymachinecertificatefile", "/fm.pem"),
        ] {
            assert!(vh.directive(d, &[a]));
        }
        assert!(!vh.directive("sslproxyprotocol", &["all"]));
        let t = vh.within(&server).block(false, 3, &mut notes);
        assert_eq!(
            t,
            json!({ "verify": true, "ca": "/ca.pem", "verify_hostname": false, "cert": "/fm.pem", "key": "/fm.pem" })
        );
        let n = notes.finish();
        assert_eq!(n.len(), 1, "the machine cert note: {n:?}");
    }

    #[test]
    fn apache_without_the_engine_and_with_an_ip_host_says_so() {
        let mut notes = Notes::default();
        let vh = ApacheProxyTls {
            verify: Some("require".into()),
            ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        let t = vh.block(true, 9, &mut notes);
        assert_eq!(t["verify_hostname"], false, "no name for an IP");
        let n = notes.finish();
        assert_eq!(n.len(), 2, "engine off and the IP: {n:?}");
        assert!(ip_host("127.0.0.1:443") && ip_host("[::1]:443") && !ip_host("h:443"));
    }
}
