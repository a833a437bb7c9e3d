//! Header rules (`request_headers:` / `response_headers:` on listeners and routes): set, add or
//! remove a header, with values from the connection, under an optional condition. Apache's
//! `RequestHeader set|append|unset ... expr=` and `Header always`, HAProxy's
//! `http-request|http-response set-header|add-header|del-header ... if`.
//!
//! Rules are compiled once per config ([`compile`]) and applied in order per request by
//! [`HeaderRules::apply`]: pure code over a [`Facts`] value and a header map, no parsing.
//! The proxy glue (`proxy/headers.rs`) builds the facts and calls it.

pub mod compile;
pub mod cond;
pub mod forwarding;
pub mod local;
pub mod template;
#[cfg(test)]
mod tests;

use crate::tlsinfo::ClientCert;
use bytes::Bytes;
use cond::Cond;
use http::{HeaderMap, HeaderName, HeaderValue};
use template::Template;

/// What rules may read about the request and its connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The TLS client-certificate facts (`None` on a plain-HTTP listener).
    pub cert: Option<&'a ClientCert>,
    pub client_ip: Option<&'a str>,
    pub https: bool,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The Host the client asked for, lower-cased, without port.
    pub host: &'a str,
    /// The listener's `server_name`.
    pub server_name: &'a str,
}

/// Which headers a `remove` rule takes away. Names are stored folded (lower case, `_` read as
/// `-`) and compared folded, so `REMOTE_USER`, `remote-user` and `Remote_User` are one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    Exact(String),
    /// `NAME*`: every header whose folded name starts with this.
    Prefix(String),
}

impl NameMatch {
    pub fn matches(&self, name: &str) -> bool {
        let n = name.as_bytes();
        match self {
            NameMatch::Exact(s) => n.len() == s.len() && starts_folded(n, s.as_bytes()),
            NameMatch::Prefix(s) => starts_folded(n, s.as_bytes()),
        }
    }
}

/// Lower case with `_` read as `-` (how Rack and CGI see header names).
pub fn fold(name: &str) -> String {
    name.bytes().map(|c| fold_byte(c) as char).collect()
}

fn fold_byte(c: u8) -> u8 {
    match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    }
}

fn starts_folded(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(a, b)| fold_byte(*a) == *b)
}

/// A header name to write: the validated name and the spelling the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteName {
    pub name: HeaderName,
    /// As written in the config (HTTP/1 upstreams see this case).
    pub spelled: Bytes,
}

/// A value to write: fixed when the template has no variable, else rendered per request.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Fixed(HeaderValue),
    /// Exactly one variable (the common case: no string is built).
    Var(template::Var),
    Template(Template),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Set(WriteName, Value),
    Add(WriteName, Value),
    /// The name to remove, and for an exact name the header name to drop in one lookup.
    Remove(NameMatch, Option<HeaderName>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub action: Action,
    pub when: Option<Cond>,
}

/// An ordered list of compiled rules (empty = nothing to do).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderRules {
    pub rules: Vec<Rule>,
}

/// A header map rules can change: `http::HeaderMap` (tests) and Pingora's request and
/// response headers (which also keep the written case).
pub trait HeaderTarget {
    fn map(&self) -> &HeaderMap;
    fn set(&mut self, name: &WriteName, value: HeaderValue);
    fn add(&mut self, name: &WriteName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
}

impl HeaderTarget for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }
    fn set(&mut self, name: &WriteName, value: HeaderValue) {
        self.insert(name.name.clone(), value);
    }
    fn add(&mut self, name: &WriteName, value: HeaderValue) {
        self.append(name.name.clone(), value);
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

macro_rules! pingora_target {
    ($t:ty) => {
        impl HeaderTarget for $t {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }
            fn set(&mut self, name: &WriteName, value: HeaderValue) {
                // why: cannot fail: the name was validated and the value is a HeaderValue
                let _ = self.insert_header(name.spelled.clone(), value);
            }
            fn add(&mut self, name: &WriteName, value: HeaderValue) {
                let _ = self.append_header(name.spelled.clone(), value);
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
pingora_target!(pingora_http::RequestHeader);
pingora_target!(pingora_http::ResponseHeader);

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the rules in order: a rule's condition sees the headers as the rules before it
    /// left them. A rendered value that is not a valid header value is not written.
    pub fn apply(&self, f: &Facts, h: &mut impl HeaderTarget) {
        for r in &self.rules {
            if let Some(c) = &r.when {
                if !c.holds(f, h.map()) {
                    continue;
                }
            }
            match &r.action {
                Action::Set(n, v) => {
                    if let Some(v) = value(v, f) {
                        h.set(n, v);
                    }
                }
                Action::Add(n, v) => {
                    if let Some(v) = value(v, f) {
                        h.add(n, v);
                    }
                }
                Action::Remove(m, exact) => remove_matching(m, exact.as_ref(), h),
            }
        }
    }
}

fn value(v: &Value, f: &Facts) -> Option<HeaderValue> {
    match v {
        Value::Fixed(v) => Some(v.clone()),
        Value::Var(v) => template::var_value(*v, f),
        Value::Template(t) => HeaderValue::from_str(&t.render(f)).ok(),
    }
}

/// Removes `name` as a `remove:` rule would (every `-`/`_` spelling and case; `NAME*` by
/// prefix), for names that come at run time (Lua `remove_headers`). An empty name or a lone
/// `*` removes nothing.
pub fn remove_by_name(name: &str, h: &mut impl HeaderTarget) {
    if name.is_empty() || name == "*" {
        return;
    }
    let m = match name.strip_suffix('*') {
        Some(p) => NameMatch::Prefix(fold(p)),
        None => NameMatch::Exact(fold(name)),
    };
    remove_matching(&m, None, h);
}

fn remove_matching(m: &NameMatch, exact: Option<&HeaderName>, h: &mut impl HeaderTarget) {
    if let Some(n) = exact {
        // why: the folded spelling itself is one hashed lookup
        if h.map().contains_key(n) {
            h.remove(n);
        }
    }
    if !h.map().keys().any(|k| m.matches(k.as_str())) {
        return;
    }
    // why: collect first; the map cannot change while its keys are borrowed
    let doomed: Vec<HeaderName> = h
        .map()
        .keys()
        .filter(|k| m.matches(k.as_str()))
        .cloned()
        .collect();
    for n in &doomed {
        h.remove(n);
    }
}
