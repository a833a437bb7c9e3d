//! Routes that answer by themselves (`respond: { status, headers, body }`, `redirect:`),
//! without an upstream: Apache's `ProxyPass /pub !`, HAProxy's `http-request
//! return|deny|redirect`.

use super::compile::Problems;
use super::template::Template;
use super::Facts;
use crate::config::spec::{LocalAnswerSpec, RedirectSpec};
use bytes::Bytes;

#[derive(Debug, Clone, PartialEq)]
pub enum LocalAnswer {
    Fixed {
        status: u16,
        /// (name, value), validated.
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    Redirect {
        status: u16,
        location: Template,
    },
}

/// Statuses a redirect may use.
pub const REDIRECT_STATUSES: &[u16] = &[301, 302, 303, 307, 308];
pub const DEFAULT_REDIRECT_STATUS: u16 = 302;

impl LocalAnswer {
    pub fn status(&self) -> u16 {
        match self {
            LocalAnswer::Fixed { status, .. } | LocalAnswer::Redirect { status, .. } => *status,
        }
    }

    /// The `Location` of a redirect, rendered for this request.
    pub fn location(&self, f: &Facts) -> Option<String> {
        match self {
            LocalAnswer::Redirect { location, .. } => Some(location.render(f)),
            LocalAnswer::Fixed { .. } => None,
        }
    }
}

pub fn fixed(p: &str, s: &LocalAnswerSpec, out: &mut Problems) -> LocalAnswer {
    if !(200..=599).contains(&s.status) {
        out.push((
            format!("{p}.status"),
            format!(
                "{} is not a final HTTP status; use 200 to 599, e.g. 404",
                s.status
            ),
        ));
    }
    for (k, v) in &s.headers {
        let hp = format!("{p}.headers.{k}");
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            out.push((hp.clone(), format!("{k:?} is not a header name")));
        }
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            out.push((hp.clone(), "set from the body; remove this header".into()));
        }
        if http::HeaderValue::from_str(v).is_err() {
            out.push((
                hp,
                format!("{v:?} is not a valid header value; use one line of visible characters"),
            ));
        }
    }
    LocalAnswer::Fixed {
        status: s.status,
        headers: s
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: Bytes::from(s.body.clone()),
    }
}

pub fn redirect(p: &str, s: &RedirectSpec, out: &mut Problems) -> LocalAnswer {
    let status = s.status.unwrap_or(DEFAULT_REDIRECT_STATUS);
    if !REDIRECT_STATUSES.contains(&status) {
        out.push((
            format!("{p}.status"),
            format!("{status} is not a redirect status; use 301, 302, 303, 307 or 308"),
        ));
    }
    let location = Template::parse(&s.location).unwrap_or_else(|m| {
        out.push((format!("{p}.location"), m));
        Template::fixed("/")
    });
    if s.location.is_empty() {
        out.push((
            format!("{p}.location"),
            "empty; write where to send the client, e.g. \"https://%{host}%{request_uri}\"".into(),
        ));
    }
    LocalAnswer::Redirect { status, location }
}
