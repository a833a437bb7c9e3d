//! Header value templates: literal text with `%{variable}` over the connection facts,
//! parsed once when the config is validated and rendered per request without parsing.

use super::Facts;

/// A connection fact a template can use (README "Header rules" lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// PEM with newlines as spaces (Apache `%{SSL_CLIENT_CERT}s`).
    Cert,
    /// URL-encoded PEM (nginx `$ssl_client_escaped_cert`, puppetserver's `X-Client-Cert`).
    EscapedCert,
    SubjectDn,
    SubjectDnLegacy,
    IssuerDn,
    IssuerDnLegacy,
    Cn,
    Serial,
    /// `SUCCESS`, `NONE` or `FAILED:reason`; empty on a plain-HTTP listener.
    Verify,
    RemoteAddr,
    /// `https` or `http`.
    Scheme,
    Host,
    Path,
    /// Path and query as received.
    RequestUri,
    ServerName,
}

/// Every variable name, with its meaning (used in error messages and docs).
pub const VARS: &[(&str, Var)] = &[
    ("ssl_client_cert", Var::Cert),
    ("ssl_client_escaped_cert", Var::EscapedCert),
    ("ssl_client_s_dn", Var::SubjectDn),
    ("ssl_client_s_dn_legacy", Var::SubjectDnLegacy),
    ("ssl_client_i_dn", Var::IssuerDn),
    ("ssl_client_i_dn_legacy", Var::IssuerDnLegacy),
    ("ssl_client_s_dn_cn", Var::Cn),
    ("ssl_client_serial", Var::Serial),
    ("ssl_client_verify", Var::Verify),
    ("remote_addr", Var::RemoteAddr),
    ("scheme", Var::Scheme),
    ("host", Var::Host),
    ("path", Var::Path),
    ("request_uri", Var::RequestUri),
    ("server_name", Var::ServerName),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`: `%{name}` is a variable, `%%` a literal `%`; any other `%` is an error
    /// (so a typo never reaches a header as text).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('%') {
                lit.push('%');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let Some(end) = r.find('}') else {
                    return Err(format!(
                        "{text:?}: `%{{` is not closed; write `%{{name}}`, or `%%` for a literal %"
                    ));
                };
                let name = &r[..end];
                let Some((_, var)) = VARS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
                    let known: Vec<&str> = VARS.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "{text:?}: unknown variable %{{{name}}}; use one of: {}",
                        known.join(", ")
                    ));
                };
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(*var));
                rest = &r[end + 1..];
            } else {
                return Err(format!(
                    "{text:?}: a lone `%`; write `%{{name}}` for a variable or `%%` for a literal %"
                ));
            }
        }
        lit.push_str(rest);
        if lit.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!(
                "{text:?} holds a control character; header values are one line"
            ));
        }
        if !lit.is_empty() || parts.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// A template of fixed text.
    pub fn fixed(text: &str) -> Template {
        Template {
            parts: vec![Part::Lit(text.to_string())],
        }
    }

    /// The variable when the template is exactly one variable.
    pub fn single_var(&self) -> Option<Var> {
        match self.parts.as_slice() {
            [Part::Var(v)] => Some(*v),
            _ => None,
        }
    }

    /// The text when the template has no variable.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Appends the rendered value to `out`.
    pub fn render_into(&self, f: &Facts, out: &mut String) {
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => push_var(*v, f, out),
            }
        }
    }

    pub fn render(&self, f: &Facts) -> String {
        let mut out = String::new();
        self.render_into(f, &mut out);
        out
    }
}

fn push_var(v: Var, f: &Facts, out: &mut String) {
    let cert = |g: fn(&crate::tlsinfo::ClientCert) -> &str| f.cert.map(g).unwrap_or("");
    match v {
        Var::Cert => out.push_str(cert(|c| &c.pem_flat)),
        Var::EscapedCert => crate::tlsinfo::url_encode(cert(|c| &c.pem), out),
        Var::SubjectDn => out.push_str(cert(|c| &c.subject_dn)),
        Var::SubjectDnLegacy => out.push_str(cert(|c| &c.subject_dn_legacy)),
        Var::IssuerDn => out.push_str(cert(|c| &c.issuer_dn)),
        Var::IssuerDnLegacy => out.push_str(cert(|c| &c.issuer_dn_legacy)),
        Var::Cn => out.push_str(cert(|c| &c.cn)),
        Var::Serial => out.push_str(cert(|c| &c.serial)),
        Var::Verify => out.push_str(cert(|c| &c.verify)),
        Var::RemoteAddr => out.push_str(f.client_ip.unwrap_or("")),
        Var::Scheme => out.push_str(if f.https { "https" } else { "http" }),
        Var::Host => out.push_str(f.host),
        Var::Path => out.push_str(f.path),
        Var::RequestUri => {
            out.push_str(f.path);
            if let Some(q) = f.query {
                out.push('?');
                out.push_str(q);
            }
        }
        Var::ServerName => out.push_str(f.server_name),
    }
}

/// The value of one variable as a header value; the certificate's largest facts come ready
/// made from the connection (no per-request validation of the PEM).
pub fn var_value(v: Var, f: &Facts) -> Option<http::HeaderValue> {
    if let Some(c) = f.cert {
        let ready = match v {
            Var::Cert => c.values.pem_flat.as_ref(),
            Var::SubjectDn => c.values.subject_dn.as_ref(),
            Var::Verify => c.values.verify.as_ref(),
            _ => None,
        };
        if let Some(r) = ready {
            return Some(r.clone());
        }
    }
    let mut s = String::new();
    push_var(v, f, &mut s);
    http::HeaderValue::from_str(&s).ok()
}
