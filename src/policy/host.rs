//! The running call's data and the host function that answers Lua's questions from it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use mlua::{Function, Lua, Table, Value};

use super::helper::helper_error;
use super::{PolicyHost, RequestSource, ResponseSource, TlsInfo};

/// Host operations, as numbered in the prelude's `OP` table.
mod op {
    pub const MAP: u8 = 1;
    pub const HEALTHY: u8 = 2;
    pub const TOTAL: u8 = 3;
    pub const INFLIGHT: u8 = 4;
    pub const QUEUED: u8 = 5;
    pub const METHOD: u8 = 10;
    pub const PATH: u8 = 11;
    pub const CLIENT_IP: u8 = 12;
    pub const ROUTE: u8 = 13;
    pub const TLS: u8 = 14;
    pub const REQ_HEADER: u8 = 20;
    pub const REQ_HEADERS: u8 = 21;
    pub const QUERY_PARAM: u8 = 22;
    pub const QUERY: u8 = 23;
    pub const STATUS: u8 = 30;
    pub const RESP_HEADER: u8 = 31;
    pub const RESP_HEADERS: u8 = 32;
}

/// A `start..end` range of [`CallData::text`].
#[derive(Clone, Copy, Default)]
struct Span(usize, usize);

/// The running call's request, response and host, copied from the caller's sources into
/// buffers kept from call to call (no allocation once warm) so that the host function, created
/// once per VM, can answer from them. Header names are kept as given and matched ignoring
/// ASCII case.
#[derive(Default)]
pub(crate) struct CallData {
    active: bool,
    text: String,
    method: Span,
    path: Span,
    client_ip: Option<Span>,
    route: Option<Span>,
    tls: Option<TlsInfo>,
    headers: Vec<(Span, Span)>,
    query: Vec<(Span, Span)>,
    status: Option<u16>,
    resp_headers: Vec<(Span, Span)>,
    host: Option<Arc<dyn PolicyHost>>,
}

fn push(text: &mut String, s: &str) -> Span {
    let start = text.len();
    text.push_str(s);
    Span(start, text.len())
}

impl CallData {
    pub(crate) fn begin(
        &mut self,
        req: &dyn RequestSource,
        resp: Option<&dyn ResponseSource>,
        host: Arc<dyn PolicyHost>,
    ) {
        let text = &mut self.text;
        text.clear();
        self.method = push(text, req.method());
        self.path = push(text, req.path());
        self.client_ip = req.client_ip().map(|s| push(text, s));
        self.route = req.route().map(|s| push(text, s));
        self.tls = req.tls().cloned();
        let headers = &mut self.headers;
        headers.clear();
        req.for_each_header(&mut |n, v| {
            let n = push(text, n);
            headers.push((n, push(text, v)));
        });
        let query = &mut self.query;
        query.clear();
        req.for_each_query(&mut |k, v| query.push((push(text, k), push(text, v))));
        self.status = resp.map(|r| r.status());
        let resp_headers = &mut self.resp_headers;
        resp_headers.clear();
        if let Some(r) = resp {
            r.for_each_header(&mut |n, v| {
                let n = push(text, n);
                resp_headers.push((n, push(text, v)));
            });
        }
        self.host = Some(host);
        self.active = true;
    }

    pub(crate) fn end(&mut self) {
        self.active = false;
        // why: do not keep the caller's snapshot alive past its call.
        self.host = None;
        self.tls = None;
    }

    fn str(&self, span: Span) -> &str {
        &self.text[span.0..span.1]
    }

    /// The value of header `name` (any case): repeats joined with ", " (RFC 9110 list
    /// syntax).
    fn header<'a>(&'a self, list: &[(Span, Span)], name: &str) -> Option<Cow<'a, str>> {
        let mut found: Option<Cow<'a, str>> = None;
        for &(n, v) in list {
            if !self.str(n).eq_ignore_ascii_case(name) {
                continue;
            }
            let v = self.str(v);
            found = Some(match found {
                None => Cow::Borrowed(v),
                Some(prev) => Cow::Owned(format!("{prev}, {v}")),
            });
        }
        found
    }

    /// Every header, lowercased names, repeats joined.
    fn header_table(&self, lua: &Lua, list: &[(Span, Span)]) -> mlua::Result<Table> {
        let t = lua.create_table_with_capacity(0, list.len())?;
        for (i, &(n, _)) in list.iter().enumerate() {
            let name = self.str(n);
            // Only at the first occurrence of each name.
            if list[..i]
                .iter()
                .any(|&(m, _)| self.str(m).eq_ignore_ascii_case(name))
            {
                continue;
            }
            if let Some(v) = self.header(list, name) {
                t.raw_set(name.to_ascii_lowercase(), v.as_ref())?;
            }
        }
        Ok(t)
    }
}

/// The host function of a serving VM: `HOST(op, a, b)` in the prelude, answered from the
/// running call's [`CallData`]. Created once per VM.
pub(crate) fn host_function(lua: &Lua, call: Rc<RefCell<CallData>>) -> mlua::Result<Function> {
    lua.create_function(
        move |lua, (op, a, b): (u8, Option<mlua::String>, Option<mlua::String>)| {
            let call = call
                .try_borrow()
                .map_err(|_| helper_error(lua, "policy call data is busy"))?;
            if !call.active {
                // Only reachable from code running outside a hook call, which serving VMs do
                // not run; answer like the fakes do for an empty host.
                return Ok(Value::Nil);
            }
            let a = a.as_ref().map(|s| s.to_str()).transpose()?;
            let b = b.as_ref().map(|s| s.to_str()).transpose()?;
            host_call(lua, &call, op, a.as_deref(), b.as_deref())
        },
    )
}

/// What `HOST(op, a, b)` answers during a real call.
fn host_call(
    lua: &Lua,
    call: &CallData,
    op: u8,
    a: Option<&str>,
    b: Option<&str>,
) -> mlua::Result<Value> {
    let string = |s: &str| lua.create_string(s).map(Value::String);
    let opt_string = |s: Option<Span>| s.map_or(Ok(Value::Nil), |s| string(call.str(s)));
    match op {
        op::METHOD => string(call.str(call.method)),
        op::PATH => string(call.str(call.path)),
        op::CLIENT_IP => opt_string(call.client_ip),
        op::ROUTE => opt_string(call.route),
        op::REQ_HEADER => match a.and_then(|name| call.header(&call.headers, name)) {
            Some(v) => string(&v),
            None => Ok(Value::Nil),
        },
        op::REQ_HEADERS => call.header_table(lua, &call.headers).map(Value::Table),
        op::RESP_HEADER => match a.and_then(|name| call.header(&call.resp_headers, name)) {
            Some(v) => string(&v),
            None => Ok(Value::Nil),
        },
        op::RESP_HEADERS => call.header_table(lua, &call.resp_headers).map(Value::Table),
        // First value wins, as documented on `PolicyRequest::query`.
        op::QUERY_PARAM => {
            match a.and_then(|k| call.query.iter().find(|&&(n, _)| call.str(n) == k)) {
                Some(&(_, v)) => string(call.str(v)),
                None => Ok(Value::Nil),
            }
        }
        op::QUERY => {
            let t = lua.create_table_with_capacity(0, call.query.len())?;
            for &(k, v) in call.query.iter().rev() {
                t.raw_set(call.str(k), call.str(v))?;
            }
            Ok(Value::Table(t))
        }
        op::TLS => match &call.tls {
            Some(tls) => {
                let t = lua.create_table_with_capacity(0, 4)?;
                t.raw_set("subject", tls.subject.as_deref())?;
                t.raw_set("issuer", tls.issuer.as_deref())?;
                t.raw_set("serial", tls.serial.as_deref())?;
                t.raw_set("verified", tls.verified)?;
                Ok(Value::Table(t))
            }
            None => Ok(Value::Nil),
        },
        op::STATUS => Ok(call
            .status
            .map_or(Value::Nil, |s| Value::Integer(i64::from(s)))),
        op::MAP => match (&call.host, a, b) {
            (Some(host), Some(map), Some(key)) => host
                .map_get(map, key)
                .map_or(Ok(Value::Nil), |v| string(&v)),
            _ => Ok(Value::Nil),
        },
        op::HEALTHY | op::TOTAL | op::INFLIGHT | op::QUEUED => {
            let state = match (&call.host, a) {
                (Some(host), Some(name)) => host.upstream_state(name),
                _ => None,
            };
            let Some(state) = state else {
                return Ok(Value::Nil);
            };
            let n = match op {
                op::HEALTHY => state.healthy,
                op::TOTAL => state.total,
                op::INFLIGHT => state.inflight,
                _ => state.queued,
            };
            Ok(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
        }
        other => Err(helper_error(lua, format!("unknown host operation {other}"))),
    }
}
