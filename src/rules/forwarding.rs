//! Forwarding headers per listener (`forwarded_headers:`): `X-Forwarded-For`, `-Host`,
//! `-Server` (and `-Proto`), optionally RFC 7239 `Forwarded`.
//!
//! `append` is Apache's `ProxyAddHeaders On` (and HAProxy's `option forwardfor`): each value is
//! appended to what the client sent, as `client value, ours`; `replace` drops the client's and
//! sets ours; `off` adds nothing (a client's values pass as sent). `X-Forwarded-Proto` is
//! always set (not appended) in `append` and `replace`: Apache leaves it to `RequestHeader
//! set`, and a client's claim of https must never reach an app that trusts it.

use super::{Facts, HeaderTarget, WriteName};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardMode {
    #[default]
    Append,
    Replace,
    Off,
}

/// A listener's forwarding settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarding {
    pub mode: ForwardMode,
    /// Also write RFC 7239 `Forwarded: for=...;host=...;proto=...`.
    pub rfc7239: bool,
    /// `X-Forwarded-Server`: the listener's `server_name`, made once per config (`None`
    /// sends none).
    pub server: Option<HeaderValue>,
}

/// Our value of one forwarding header: its text, and the header value when one is already
/// made (shared, not copied, when the client sent no value of its own).
#[derive(Clone, Copy)]
struct Ours<'a> {
    text: &'a str,
    made: Option<&'a HeaderValue>,
}

impl<'a> Ours<'a> {
    fn text(text: &'a str) -> Self {
        Ours { text, made: None }
    }
}

/// A forwarding header's name, `lower` as the `http` crate holds it and `spelled` as Apache's
/// mod_proxy writes it (an HTTP/1 upstream sees that case); made at compile time.
const fn name(lower: &'static str, spelled: &'static str) -> WriteName {
    WriteName {
        name: HeaderName::from_static(lower),
        spelled: Bytes::from_static(spelled.as_bytes()),
    }
}

const X_FORWARDED_FOR: WriteName = name("x-forwarded-for", "X-Forwarded-For");
const X_FORWARDED_HOST: WriteName = name("x-forwarded-host", "X-Forwarded-Host");
const X_FORWARDED_SERVER: WriteName = name("x-forwarded-server", "X-Forwarded-Server");
const X_FORWARDED_PROTO: WriteName = name("x-forwarded-proto", "X-Forwarded-Proto");
const FORWARDED: WriteName = name("forwarded", "Forwarded");

impl Forwarding {
    /// Writes the forwarding headers into the upstream request `h`; `host` is the `Host` the
    /// client sent.
    pub fn apply(&self, f: &Facts, host: Option<&HeaderValue>, h: &mut impl HeaderTarget) {
        if self.mode == ForwardMode::Off {
            return;
        }
        if let Some(ip) = f.client_ip {
            self.put(h, &X_FORWARDED_FOR, Ours::text(ip));
        }
        // why: a `Host` that is not text is not repeated (nor in `Forwarded`)
        let host = host.and_then(|v| Some((v, v.to_str().ok()?)));
        if let Some((v, text)) = host {
            self.put(
                h,
                &X_FORWARDED_HOST,
                Ours {
                    text,
                    made: Some(v),
                },
            );
        }
        if let Some(v) = &self.server {
            let text = f.server_name;
            self.put(
                h,
                &X_FORWARDED_SERVER,
                Ours {
                    text,
                    made: Some(v),
                },
            );
        }
        let proto = if f.https { "https" } else { "http" };
        h.set(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        if self.rfc7239 {
            let mut el = String::new();
            if let Some(ip) = f.client_ip {
                if ip.contains(':') {
                    el.push_str(&format!("for=\"[{ip}]\";"));
                } else {
                    el.push_str(&format!("for={ip};"));
                }
            }
            if let Some((_, host)) = host {
                el.push_str(&format!("host=\"{}\";", host.replace(['"', '\\'], "")));
            }
            el.push_str("proto=");
            el.push_str(proto);
            self.put(h, &FORWARDED, Ours::text(&el));
        }
    }

    /// `append`: the client's lines joined, then ours; `replace`: ours alone.
    fn put(&self, h: &mut impl HeaderTarget, n: &WriteName, ours: Ours) {
        let mut v = String::new();
        if self.mode == ForwardMode::Append {
            for prev in h.map().get_all(&n.name) {
                if let Ok(p) = prev.to_str() {
                    if !p.trim().is_empty() {
                        v.push_str(p.trim());
                        v.push_str(", ");
                    }
                }
            }
        }
        // why: the common case (the client sent none) writes ours without building a string
        // (and a value that already is one, such as the client's `Host`, is shared, not copied)
        let value = match ours.made {
            Some(made) if v.is_empty() => Ok(made.clone()),
            _ if v.is_empty() => HeaderValue::from_str(ours.text),
            _ => {
                v.push_str(ours.text);
                HeaderValue::from_str(&v)
            }
        };
        if let Ok(v) = value {
            h.set(n, v);
        }
    }
}
