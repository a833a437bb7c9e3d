//! Glue between the session and the header rules ([`crate::rules`]): builds the [`Facts`] of
//! a request and applies the listener's, then the route's, rules and forwarding headers.

use super::ctx::Ctx;
use crate::config::{CertFormat, CertHeaders, ListenerConfig};
use crate::rules::Facts;
use crate::tlsinfo::ClientCert;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::SocketAddr;

/// Index of the listener the request came in on (by local address; 0 if none matches).
pub fn listener_index(session: &Session, listeners: &[ListenerConfig]) -> usize {
    if listeners.len() < 2 {
        return 0;
    }
    let local = session
        .digest()
        .and_then(|d| d.socket_digest.as_ref())
        .and_then(|s| s.local_addr().and_then(|a| a.as_inet()).copied());
    let Some(local) = local else { return 0 };
    listeners
        .iter()
        .position(|l| {
            l.bind.parse::<SocketAddr>().is_ok_and(|b| {
                b.port() == local.port() && (b.ip().is_unspecified() || b.ip() == local.ip())
            })
        })
        .unwrap_or(0)
}

fn listener(ctx: &Ctx) -> Option<&ListenerConfig> {
    ctx.snap.config.listeners.get(ctx.listener)
}

/// The connection facts of this request.
pub fn facts<'a>(session: &'a Session, ctx: &'a Ctx) -> Facts<'a> {
    let ssl = session.digest().and_then(|d| d.ssl_digest.as_deref());
    let req = session.req_header();
    Facts {
        cert: ssl.and_then(|d| d.extension.get::<ClientCert>()),
        client_ip: ctx.client_ip.as_deref(),
        https: ssl.is_some(),
        method: req.method.as_str(),
        path: req.uri.path(),
        query: req.uri.query(),
        host: &ctx.host,
        server_name: listener(ctx).map_or("", |l| l.server_name.as_str()),
    }
}

/// Forwarding headers of the listener (into the upstream request `req`).
pub fn forwarding(session: &Session, ctx: &Ctx, req: &mut RequestHeader) {
    let Some(l) = listener(ctx) else { return };
    let f = facts(session, ctx);
    let host = session.req_header().headers.get(http::header::HOST);
    l.forwarding.apply(&f, host, req);
}

/// Listener, then route, request rules (into the upstream request `req`).
pub fn request_rules(session: &Session, ctx: &Ctx, req: &mut RequestHeader) {
    let listener_rules = listener(ctx).map(|l| &l.request_headers);
    let route_rules = ctx.route.as_deref().map(|r| &r.request_headers);
    if listener_rules.is_none_or(|r| r.is_empty()) && route_rules.is_none_or(|r| r.is_empty()) {
        return;
    }
    let f = facts(session, ctx);
    for rules in [listener_rules, route_rules].into_iter().flatten() {
        rules.apply(&f, req);
    }
}

/// Listener, then route, response rules, on any answer (proxied, cached or local).
pub fn response_rules(session: &Session, ctx: &Ctx, resp: &mut ResponseHeader) {
    if ctx.fill.is_some() {
        // why: a fill's answer is stored, and rules apply when it is written to a client
        return;
    }
    let listener_rules = listener(ctx).map(|l| &l.response_headers);
    let route_rules = ctx.route.as_deref().map(|r| &r.response_headers);
    if listener_rules.is_none_or(|r| r.is_empty()) && route_rules.is_none_or(|r| r.is_empty()) {
        return;
    }
    let f = facts(session, ctx);
    for rules in [listener_rules, route_rules].into_iter().flatten() {
        rules.apply(&f, resp);
    }
}

/// The listener's client-certificate headers (into the upstream request `req`): verify
/// always on a TLS listener; subject and certificate when one was presented. Values were made
/// once per connection ([`ClientCert::values`]).
pub fn client_cert(
    cc: &ClientCert,
    style: &CertHeaders,
    req: &mut RequestHeader,
) -> pingora_error::Result<()> {
    if let (Some(h), Some(v)) = (&style.verify, &cc.values.verify) {
        req.insert_header(h.clone(), v.clone())?;
    }
    if cc.subject_dn.is_empty() {
        return Ok(());
    }
    if let (Some(h), Some(v)) = (&style.dn, &cc.values.subject_dn) {
        req.insert_header(h.clone(), v.clone())?;
    }
    let cert = match style.cert_format {
        CertFormat::Flat => &cc.values.pem_flat,
        CertFormat::UrlEncoded => &cc.values.pem_url,
    };
    if let (Some(h), Some(v)) = (&style.cert, cert) {
        req.insert_header(h.clone(), v.clone())?;
    }
    Ok(())
}

/// `req.tls` for policies: the presented client certificate (subject and issuer in RFC 2253),
/// or `None` without one (or on a plain-HTTP listener).
pub fn policy_tls(session: &Session) -> Option<crate::policy::TlsInfo> {
    let c = session
        .digest()
        .and_then(|d| d.ssl_digest.as_deref())
        .and_then(|d| d.extension.get::<ClientCert>())?;
    if c.subject_dn.is_empty() && c.pem.is_empty() {
        return None;
    }
    Some(crate::policy::TlsInfo {
        subject: Some(c.subject_dn.clone()),
        issuer: Some(c.issuer_dn.clone()),
        serial: Some(c.serial.clone()),
        verified: c.verified(),
    })
}
