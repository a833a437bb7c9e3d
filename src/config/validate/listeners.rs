//! `listeners:`: addresses, TLS files, the front door limits, header rules and forwarding.

use super::{resolve, Validator};
use crate::config::spec::*;
use crate::config::types::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

impl Validator {
    pub(super) fn listeners(
        &mut self,
        s: &ConfigSpec,
        base: &Path,
    ) -> (Vec<ListenerConfig>, HashSet<String>) {
        let rel = |p: &str| resolve(base, p);
        // Listeners
        if s.listeners.is_empty() {
            self.err(
                "listeners",
                "no listener is defined; add one, e.g. `listeners: [{ bind: \"0.0.0.0:8080\" }]`",
            );
        }
        let mut binds = HashSet::new();
        let mut names = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in s.listeners.iter().enumerate() {
            let p = format!("listeners[{i}]");
            if l.bind.parse::<SocketAddr>().is_err() {
                self.err(
                    format!("{p}.bind"),
                    format!(
                        "{:?} is not an IP:port address; write e.g. \"0.0.0.0:8080\"",
                        l.bind
                    ),
                );
            }
            if !binds.insert(l.bind.clone()) {
                self.err(
                    format!("{p}.bind"),
                    format!(
                        "{:?} is bound by an earlier listener; give each listener its own address",
                        l.bind
                    ),
                );
            }
            let name = l.name.clone().unwrap_or_else(|| l.bind.clone());
            if !names.insert(name.clone()) {
                self.err(
                    format!("{p}.name"),
                    format!("{name:?} is used by an earlier listener; names must be unique"),
                );
            }
            let tls = l.tls.as_ref().map(|t| {
                let client_auth = match t.client_auth.as_deref() {
                    None | Some("none") => ClientAuth::None,
                    Some("optional") => ClientAuth::Optional,
                    Some("require") => ClientAuth::Require,
                    Some(o) => {
                        self.err(
                            format!("{p}.tls.client_auth"),
                            format!("{o:?} is not a choice; use none, optional or require"),
                        );
                        ClientAuth::None
                    }
                };
                if client_auth != ClientAuth::None && t.client_ca.is_none() {
                    self.err(
                        format!("{p}.tls.client_ca"),
                        "client_auth needs a client_ca file to verify client certificates against",
                    );
                }
                for (k, f) in [
                    ("cert", Some(&t.cert)),
                    ("key", Some(&t.key)),
                    ("client_ca", t.client_ca.as_ref()),
                ] {
                    if let Some(f) = f {
                        if !rel(f).exists() {
                            self.err(
                                format!("{p}.tls.{k}"),
                                format!("{f:?} does not exist; give the path of a PEM file"),
                            );
                        }
                    }
                }
                TlsConfig {
                    cert: rel(&t.cert),
                    key: rel(&t.key),
                    client_ca: t.client_ca.as_deref().map(rel),
                    client_auth,
                }
            });
            let front_door = self.front_door(&format!("{p}.front_door"), l.front_door.as_ref());
            let mut problems = Vec::new();
            let request_headers = crate::rules::compile::rules(
                &format!("{p}.request_headers"),
                l.request_headers.as_deref().unwrap_or_default(),
                &mut problems,
            );
            let response_headers = crate::rules::compile::rules(
                &format!("{p}.response_headers"),
                l.response_headers.as_deref().unwrap_or_default(),
                &mut problems,
            );
            for (path, m) in problems {
                self.err(path, m);
            }
            use crate::rules::forwarding::{ForwardMode, Forwarding};
            let mode = match l.forwarded_headers.as_deref() {
                None | Some("append") => ForwardMode::Append,
                Some("replace") => ForwardMode::Replace,
                Some("off") => ForwardMode::Off,
                Some(o) => {
                    self.err(
                        format!("{p}.forwarded_headers"),
                        format!("{o:?} is not a choice; use append (Apache ProxyAddHeaders On, the default), replace or off"),
                    );
                    ForwardMode::Append
                }
            };
            let server_name = l.server_name.clone().unwrap_or_else(default_server_name);
            if http::HeaderValue::from_str(&server_name).is_err() {
                self.err(
                    format!("{p}.server_name"),
                    format!("{server_name:?} is not a valid header value; use a host name"),
                );
            }
            listeners.push(ListenerConfig {
                name,
                bind: l.bind.clone(),
                h2c: l.h2c,
                tls,
                front_door,
                request_headers,
                response_headers,
                forwarding: Forwarding {
                    mode,
                    rfc7239: l.forwarded_rfc7239.unwrap_or(false),
                    server: Some(server_name.as_str())
                        .filter(|n| !n.is_empty())
                        .and_then(|n| http::HeaderValue::from_str(n).ok()),
                },
                server_name,
                client_cert_headers: self.cert_headers(
                    &format!("{p}.client_cert_headers"),
                    l.client_cert_headers.as_ref(),
                ),
            });
        }
        (listeners, binds)
    }

    pub(super) fn front_door(&mut self, p: &str, s: Option<&FrontDoorSpec>) -> FrontDoorConfig {
        let d = FrontDoorConfig::default();
        let Some(s) = s else { return d };
        let header_timeout = self.duration(
            &format!("{p}.header_timeout"),
            s.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        );
        if header_timeout.is_zero() {
            self.err(
                format!("{p}.header_timeout"),
                "0s would refuse every request; use e.g. \"30s\"",
            );
        }
        let max_header_size = self.size(
            &format!("{p}.max_header_size"),
            s.max_header_size.as_ref(),
            DEFAULT_MAX_HEADER_SIZE,
        );
        if !(1024..=MAX_HEADER_SIZE_CAP).contains(&max_header_size) {
            self.err(
                format!("{p}.max_header_size"),
                format!(
                    "{max_header_size} bytes is out of range; use 1KiB to 1MiB (default 32KiB)"
                ),
            );
        }
        let max_request_line = self.size(
            &format!("{p}.max_request_line"),
            s.max_request_line.as_ref(),
            DEFAULT_MAX_REQUEST_LINE,
        );
        if max_request_line < 64 || max_request_line > max_header_size {
            self.err(
                format!("{p}.max_request_line"),
                format!("{max_request_line} bytes is out of range; use 64 bytes up to max_header_size ({max_header_size})"),
            );
        }
        let max_header_fields = s.max_header_fields.unwrap_or(DEFAULT_MAX_HEADER_FIELDS);
        if !(1..=MAX_HEADER_FIELDS_CAP).contains(&max_header_fields) {
            self.err(
                format!("{p}.max_header_fields"),
                format!("{max_header_fields} is out of range; use 1 to {MAX_HEADER_FIELDS_CAP} (Pingora's parser stops at {MAX_HEADER_FIELDS_CAP}; default {DEFAULT_MAX_HEADER_FIELDS})"),
            );
        }
        FrontDoorConfig {
            header_timeout,
            max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
            max_header_fields,
            max_request_line: usize::try_from(max_request_line).unwrap_or(usize::MAX),
            allow_length_with_chunked: s.allow_length_with_chunked.unwrap_or(false),
        }
    }
}

/// Apache's default `ServerName`: this machine's host name (`localhost` if unknown).
fn default_server_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
