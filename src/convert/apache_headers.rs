//! Apache mod_headers lines → floodgate header rules: `RequestHeader set|append|add|unset` and
//! `Header [always|onsuccess] set|append|add|unset`, their values (`%{VAR}s` format strings
//! and `expr=` strings) and their conditions (`env=[!]VAR`, `expr=` with `==`, `!=`, `in`,
//! `=~`, `!~`, `-n`, `-z`, `!` and `&&` over the certificate, the method, the path and the
//! headers: the request's in `RequestHeader`, the answer's in `Header`). What cannot be translated leaves the whole line out with a note: a rule without
//! its condition would apply where Apache's does not.

use serde_json::{json, Map, Value};

use super::Notes;

/// Which side of the exchange a line edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// `RequestHeader` → `request_headers:`.
    Request,
    /// `Header` → `response_headers:`.
    Response,
}

/// Headers floodgate does not let rules write or remove (`rules/compile.rs`).
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "connection", "host"];

/// Certificate and connection variables: Apache name → floodgate template variable.
const VARS: &[(&str, &str)] = &[
    ("SSL_CLIENT_CERT", "ssl_client_cert"),
    ("SSL_CLIENT_S_DN", "ssl_client_s_dn"),
    ("SSL_CLIENT_I_DN", "ssl_client_i_dn"),
    ("SSL_CLIENT_S_DN_CN", "ssl_client_s_dn_cn"),
    ("SSL_CLIENT_M_SERIAL", "ssl_client_serial"),
    ("SSL_CLIENT_VERIFY", "ssl_client_verify"),
    ("REMOTE_ADDR", "remote_addr"),
    ("REQUEST_SCHEME", "scheme"),
    ("SERVER_NAME", "server_name"),
    ("REQUEST_URI", "path"),
];

fn var(name: &str) -> Option<&'static str> {
    VARS.iter().find(|(a, _)| *a == name).map(|(_, f)| *f)
}

/// Splits a config line into words as Apache does: whitespace separates, `"..."` and `'...'`
/// quote (the quotes are dropped), a backslash escapes the quote character inside quotes.
pub(super) fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return out;
        };
        let mut w = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&first) {
                    w.push(first);
                    chars.next();
                } else if c == first {
                    break;
                } else {
                    w.push(c);
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
        }
        out.push(w);
    }
}

/// The rules of one scope (the server, or one vhost), in the order Apache applies them: its
/// own lines first, then the `<Location>` lines (Apache merges those sections after the vhost).
#[derive(Default, Clone)]
pub(super) struct Rules {
    request: Vec<Value>,
    response: Vec<Value>,
    location_request: Vec<Value>,
    location_response: Vec<Value>,
    /// Removals already emitted: (side, in a location, folded name, condition) → line.
    removed: Vec<(Side, Option<String>, String, Value, usize)>,
}

impl Rules {
    /// The `request_headers` and `response_headers` of a listener: `server`'s rules (lines
    /// outside any vhost), then these.
    pub(super) fn lists(&self, server: &Rules) -> (Vec<Value>, Vec<Value>) {
        let cat = |a: [&Vec<Value>; 4]| a.into_iter().flatten().cloned().collect::<Vec<_>>();
        (
            cat([
                &server.request,
                &server.location_request,
                &self.request,
                &self.location_request,
            ]),
            cat([
                &server.response,
                &server.location_response,
                &self.response,
                &self.location_response,
            ]),
        )
    }

    /// Converts one `RequestHeader` (`side` Request) or `Header` (Response) line, whose
    /// arguments are `args` (after the directive), inside `location` if any.
    pub(super) fn add_line(
        &mut self,
        side: Side,
        args: &[String],
        location: Option<&str>,
        ln: usize,
        notes: &mut Notes,
    ) {
        let directive = match side {
            Side::Request => "RequestHeader",
            Side::Response => "Header",
        };
        let mut args = args;
        let mut always = false;
        if side == Side::Response {
            match args.first().map(|a| a.to_ascii_lowercase()).as_deref() {
                Some("always") => {
                    always = true;
                    args = &args[1..];
                }
                Some("onsuccess") => args = &args[1..],
                _ => {}
            }
        }
        let (op, name) = match args {
            [op, name, ..] => (op.to_ascii_lowercase(), name.as_str()),
            _ => {
                notes.skip(
                    ln,
                    format!("{directive} without an action and a header name"),
                );
                return;
            }
        };
        let what = format!("{directive} {op} {name}");
        let (kind, value, cond) = match (op.as_str(), &args[2..]) {
            ("set" | "append" | "add", [value, cond @ ..]) if cond.len() <= 1 => {
                let kind = if op == "set" { "set" } else { "add" };
                (kind, Some(value.as_str()), cond.first())
            }
            ("unset", cond) if cond.len() <= 1 => ("remove", None, cond.first()),
            ("set" | "append" | "add" | "unset", _) => {
                notes.skip(ln, format!("{what}: unexpected arguments"));
                return;
            }
            _ => {
                notes.skip(
                    ln,
                    format!("{what}: floodgate header rules set, add and remove only"),
                );
                return;
            }
        };
        if FRAMING.contains(&name.to_ascii_lowercase().as_str()) {
            notes.skip(
                ln,
                format!("{what}: floodgate leaves {name} to the proxy (rules cannot write it)"),
            );
            return;
        }
        let template = match value.map(template).transpose() {
            Ok(t) => t,
            Err(e) => {
                notes.skip(ln, format!("{what}: the value {e}"));
                return;
            }
        };
        let mut when = match cond.map(|c| condition(c, side)).transpose() {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                notes.skip(ln, format!("{what}: the condition {e}"));
                return;
            }
        };
        if cond.is_some_and(|c| c.starts_with("env=")) {
            notes.approx(ln, format!("{what}: env={} read as \"a verified client certificate\" (with SSLVerifyClient optional, the certificate Apache exports is a verified one)", &cond.map_or("", |c| &c[4..])));
        }
        if let Some(loc) = location {
            if let Err(e) = within(&mut when, loc) {
                notes.skip(ln, format!("{what}: {e}"));
                return;
            }
        }
        let when = Value::Object(when);
        if kind == "remove" {
            let key = (side, location.map(str::to_owned), crate::rules::fold(name));
            if let Some((.., first)) = self
                .removed
                .iter()
                .find(|(s, l, n, c, _)| (*s, l, n) == (key.0, &key.1, &key.2) && *c == when)
            {
                notes.approx(ln, format!("{what}: already removed by the rule of line {first} (floodgate's remove takes every `-`/`_` spelling and case)"));
                return;
            }
            self.removed.push((key.0, key.1, key.2, when.clone(), ln));
        }
        if kind == "add" && op == "append" {
            notes.approx(ln, format!("{what}: added as one more {name} line, where Apache appends \", value\" to the existing line (the same to a list-valued header)"));
        }
        if side == Side::Response && !always {
            notes.approx(ln, format!("{what}: floodgate's response rules apply to every answer, as `Header always` (Apache's default table skips its own error answers)"));
        }
        // why: SSL_CLIENT_VERIFY is NONE without a certificate in both.
        let certificate = |t: &str| {
            t.replace("%{ssl_client_verify}", "")
                .contains("%{ssl_client_")
        };
        if template.as_deref().is_some_and(certificate) {
            notes.approx(ln, format!("{what}: without a client certificate floodgate sends an empty value where Apache sends \"(null)\""));
        }
        let mut rule = Map::new();
        rule.insert(kind.into(), json!(name));
        if let Some(t) = template {
            rule.insert("value".into(), json!(t));
        }
        if when.as_object().is_some_and(|m| !m.is_empty()) {
            rule.insert("if".into(), when);
        }
        let list = match (side, location.is_some()) {
            (Side::Request, false) => &mut self.request,
            (Side::Request, true) => &mut self.location_request,
            (Side::Response, false) => &mut self.response,
            (Side::Response, true) => &mut self.location_response,
        };
        list.push(Value::Object(rule));
    }
}

/// Adds "inside `<Location loc>`" to a condition: `path_prefix: loc` (Apache's `<Location>` is
/// a plain prefix, as floodgate's `path_prefix` is).
fn within(when: &mut Map<String, Value>, loc: &str) -> Result<(), String> {
    match when.get("path_prefix").and_then(Value::as_str) {
        None if when.contains_key("path_prefix") => {
            Err("a path condition with several prefixes inside <Location>".into())
        }
        None => {
            when.insert("path_prefix".into(), json!(loc));
            Ok(())
        }
        Some(p) if p.starts_with(loc) => Ok(()),
        Some(p) if loc.starts_with(p) => {
            when.insert("path_prefix".into(), json!(loc));
            Ok(())
        }
        Some(p) => Err(format!(
            "the condition's path {p} is outside <Location {loc}>: never applies"
        )),
    }
}

/// A header value → a floodgate template. `expr=STRING` is an ap_expr string (`%{VAR}`),
/// anything else a mod_headers format string (`%%`, `%{VAR}s`).
fn template(value: &str) -> Result<String, String> {
    let (expr, text) = match value.strip_prefix("expr=") {
        Some(t) => (true, t),
        None => (false, value),
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%').filter(|_| !expr) {
            out.push_str("%%");
            rest = r;
            continue;
        }
        let Some(inner) = rest.strip_prefix('{') else {
            if expr {
                out.push_str("%%");
                continue;
            }
            let code = rest.chars().next().map_or(String::new(), String::from);
            return Err(format!("uses %{code}, which floodgate has no variable for"));
        };
        let Some(end) = inner.find('}') else {
            return Err(format!("{value:?} has an unclosed %{{"));
        };
        let name = &inner[..end];
        rest = &inner[end + 1..];
        if !expr {
            // mod_headers: %{VAR}s is an SSL variable; %{VAR}e an environment variable.
            match rest.chars().next() {
                Some('s') => rest = &rest[1..],
                Some(c) => {
                    return Err(format!(
                        "uses %{{{name}}}{c}, which floodgate has no variable for"
                    ))
                }
                None => return Err(format!("uses %{{{name}}} without its kind letter")),
            }
        }
        match var(name) {
            Some(v) => out.push_str(&format!("%{{{v}}}")),
            None => {
                return Err(format!(
                    "uses %{{{name}}}, which floodgate has no variable for"
                ))
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A line's trailing condition (`env=[!]VAR`, `expr=EXPR`, `early`) → a floodgate `if:`.
fn condition(c: &str, side: Side) -> Result<Map<String, Value>, String> {
    if let Some(v) = c.strip_prefix("env=") {
        let (neg, v) = match v.strip_prefix('!') {
            Some(v) => (true, v),
            None => (false, v),
        };
        if !matches!(
            v,
            "SSL_CLIENT_CERT" | "SSL_CLIENT_S_DN" | "SSL_CLIENT_S_DN_CN"
        ) {
            return Err(format!(
                "env={v} reads an environment variable floodgate does not have"
            ));
        }
        let mut m = Map::new();
        m.insert("cert_verified".into(), json!(!neg));
        return Ok(m);
    }
    if let Some(e) = c.strip_prefix("expr=") {
        return expr(e, side).map_err(|e| format!("expr: {e}"));
    }
    Err(format!(
        "{c:?} (early or unknown) has no floodgate equivalent"
    ))
}

/// An ap_expr condition → a floodgate `if:` (all keys must hold). Supported: `&&` of
/// comparisons, each maybe under `!`; `||` and nested groups are refused.
fn expr(e: &str, side: Side) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for part in split_and(e)? {
        let (neg, atom) = negation(part);
        let m = comparison(atom, side)?;
        let m = if neg {
            let mut n = Map::new();
            n.insert("not".into(), Value::Object(m));
            n
        } else {
            m
        };
        for (k, v) in m {
            if out.contains_key(&k) {
                return Err(format!("two conditions on {k} in one line"));
            }
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// Top-level `&&` parts of `e`, outside quotes; `||` is refused.
fn split_and(e: &str) -> Result<Vec<&str>, String> {
    let b = e.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut quote, mut i) = (0, None, 0);
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, q @ (b'\'' | b'"')) => quote = Some(q),
            (None, b'&') if b.get(i + 1) == Some(&b'&') => {
                parts.push(e[start..i].trim());
                start = i + 2;
                i += 1;
            }
            (None, b'|') if b.get(i + 1) == Some(&b'|') => {
                return Err("`||` (floodgate conditions are all-of)".into())
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(e[start..].trim());
    Ok(parts)
}

/// `!X`, `!(X)` → (true, X); `(X)` → (false, X).
fn negation(s: &str) -> (bool, &str) {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('!') {
        Some(r) if !r.starts_with('=') => (true, r.trim()),
        _ => (false, s),
    };
    let s = s
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map_or(s, str::trim);
    (neg, s)
}

/// What a comparison reads.
enum Operand {
    Var(String),
    Header(String),
}

/// A header condition reads the request in a request rule and the answer in a response rule,
/// so a `Header` line can test `resp('X')` and a `RequestHeader` line `req('X')`.
fn operand(s: &str, side: Side) -> Result<Operand, String> {
    let s = s.trim();
    let header = |name: String, of: Side| {
        if of == side {
            Ok(Operand::Header(name))
        } else if of == Side::Request {
            Err(format!(
                "{s}: floodgate's response rules test the answer's headers, not the request's"
            ))
        } else {
            Err(format!("{s}: a request rule has no answer yet"))
        }
    };
    if let Some(v) = s.strip_prefix("%{").and_then(|r| r.strip_suffix('}')) {
        return match v.split_once(':') {
            Some((k, h)) if k.eq_ignore_ascii_case("HTTP") => header(h.to_owned(), Side::Request),
            _ => Ok(Operand::Var(v.to_owned())),
        };
    }
    for (f, of) in [
        ("req(", Side::Request),
        ("http(", Side::Request),
        ("req_novary(", Side::Request),
        ("resp(", Side::Response),
    ] {
        if let Some(arg) = s.strip_prefix(f).and_then(|r| r.strip_suffix(')')) {
            return header(string(arg)?, of);
        }
    }
    Err(format!("{s:?} is not a variable floodgate can test"))
}

/// A quoted string `'x'` or `"x"`.
fn string(s: &str) -> Result<String, String> {
    let s = s.trim();
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"');
    match q.and_then(|q| s[1..].strip_suffix(q)) {
        Some(inner) => Ok(inner.to_owned()),
        None => Err(format!("{s:?} is not a quoted string")),
    }
}

/// `{'a', 'b'}` → [a, b].
fn list(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| format!("{s:?} is not a list {{'a', 'b'}}"))?;
    inner.split(',').map(string).collect()
}

/// `/re/` or `m#re#` → re.
fn regex(s: &str) -> Result<String, String> {
    let s = s.trim();
    let body = if let Some(r) = s.strip_prefix('/') {
        r.strip_suffix('/')
    } else if let Some(r) = s.strip_prefix('m') {
        let d = r.chars().next().unwrap_or(' ');
        r.get(d.len_utf8()..).and_then(|r| r.strip_suffix(d))
    } else {
        None
    };
    body.map(|b| b.replace("\\/", "/"))
        .ok_or_else(|| format!("{s:?} is not a regex /.../ (flags are not converted)"))
}

/// One comparison → condition keys.
fn comparison(s: &str, side: Side) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    if let Some(rest) = s.strip_prefix("-n ").or_else(|| s.strip_prefix("-z ")) {
        let Operand::Header(h) = operand(rest, side)? else {
            return Err(format!("{s:?}: -n/-z only on a request header"));
        };
        let present = json!({ "header": { "name": h } });
        if s.starts_with("-n") {
            return Ok(present.as_object().cloned().unwrap_or_default());
        }
        m.insert("not".into(), present);
        return Ok(m);
    }
    let ops = [" == ", " != ", " =~ ", " !~ ", " in ", " -in "];
    let Some((at, op)) = ops
        .iter()
        .filter_map(|op| s.find(op).map(|i| (i, op.trim())))
        .min_by_key(|(i, _)| *i)
    else {
        return Err(format!("{s:?} is not a comparison floodgate can translate"));
    };
    let lhs = operand(&s[..at], side)?;
    let rhs = s[at + op.len() + 2..].trim();
    let (keys, negate) = match (lhs, op) {
        (Operand::Var(v), "==" | "!=" | "in" | "-in") => {
            let values = if op.ends_with("in") {
                list(rhs)?
            } else {
                vec![string(rhs)?]
            };
            (var_equals(&v, &values)?, op == "!=")
        }
        (Operand::Var(v), "=~" | "!~") if v == "REQUEST_URI" => {
            let re = regex(rhs)?;
            let prefix = re
                .strip_prefix('^')
                .filter(|p| !p.contains(|c: char| "\\.[]()*+?{}|^$".contains(c)))
                .ok_or_else(|| {
                    format!("REQUEST_URI =~ {rhs}: only a literal ^/prefix is translated")
                })?;
            (json!({ "path_prefix": prefix }), op == "!~")
        }
        (Operand::Header(h), "==" | "!=") => (
            json!({ "header": { "name": h, "equals": string(rhs)? } }),
            op == "!=",
        ),
        (Operand::Header(h), "=~" | "!~") => (
            json!({ "header": { "name": h, "matches": regex(rhs)? } }),
            op == "!~",
        ),
        (Operand::Header(h), _) => {
            return Err(format!(
                "{op} on the header {h} has no floodgate equivalent"
            ))
        }
        (Operand::Var(v), _) => {
            return Err(format!("{op} on %{{{v}}} has no floodgate equivalent"))
        }
    };
    let keys = keys.as_object().cloned().unwrap_or_default();
    if negate {
        m.insert("not".into(), Value::Object(keys));
        Ok(m)
    } else {
        Ok(keys)
    }
}

/// `%{VAR} == 'x'` / `in {...}` for the variables a condition can test.
fn var_equals(v: &str, values: &[String]) -> Result<Value, String> {
    let one_or_many = |vals: &[String]| match vals {
        [one] => json!(one),
        many => json!(many),
    };
    match v {
        "SSL_CLIENT_S_DN_CN" => Ok(json!({ "cert_cn": one_or_many(values) })),
        "REQUEST_METHOD" => Ok(json!({ "method": values })),
        "SSL_CLIENT_VERIFY" if values == ["SUCCESS"] => Ok(json!({ "cert_verified": true })),
        _ => Err(format!(
            "%{{{v}}} == {values:?} has no floodgate equivalent (conditions test the certificate CN, SSL_CLIENT_VERIFY == 'SUCCESS', REQUEST_METHOD, REQUEST_URI =~ /^prefix/ and request headers)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quoted_text_together() {
        assert_eq!(
            words(r#"RequestHeader set REMOTE-USER "admin" "expr=%{SSL_CLIENT_S_DN_CN} == 'a b'""#),
            [
                "RequestHeader",
                "set",
                "REMOTE-USER",
                "admin",
                "expr=%{SSL_CLIENT_S_DN_CN} == 'a b'"
            ]
        );
    }

    #[test]
    fn values_become_templates() {
        assert_eq!(
            template("%{SSL_CLIENT_CERT}s").unwrap(),
            "%{ssl_client_cert}"
        );
        assert_eq!(template("100%% sure").unwrap(), "100%% sure");
        assert_eq!(
            template("expr=%{REMOTE_ADDR} via %{REQUEST_SCHEME}").unwrap(),
            "%{remote_addr} via %{scheme}"
        );
        assert!(template("%{FOO}e").is_err(), "environment variables");
        assert!(template("%t").is_err(), "request time");
        assert!(template("%{SSL_CIPHER}s")
            .unwrap_err()
            .contains("SSL_CIPHER"));
    }

    #[test]
    fn conditions_translate_or_say_why_not() {
        let expr_req = |e: &str| expr(e, Side::Request);
        let c = |e: &str| Value::Object(expr(e, Side::Request).unwrap());
        assert_eq!(
            c("%{SSL_CLIENT_S_DN_CN} == 'foreman.example.com'"),
            json!({ "cert_cn": "foreman.example.com" })
        );
        assert_eq!(
            c("%{SSL_CLIENT_S_DN_CN} in {'a', 'b'} && %{REQUEST_METHOD} != 'GET'"),
            json!({ "cert_cn": ["a", "b"], "not": { "method": ["GET"] } })
        );
        assert_eq!(
            c("%{HTTP:User-Agent} =~ /^curl\\//"),
            json!({ "header": { "name": "User-Agent", "matches": "^curl/" } })
        );
        assert_eq!(
            c("-z req('X-Api')"),
            json!({ "not": { "header": { "name": "X-Api" } } })
        );
        assert!(
            expr_req("-n req('X-Api') && %{HTTP:User-Agent} =~ /^curl/").is_err(),
            "two header tests in one line"
        );
        assert_eq!(
            c("!(%{REQUEST_URI} =~ m#^/pub#)"),
            json!({ "not": { "path_prefix": "/pub" } })
        );
        assert_eq!(
            c("%{SSL_CLIENT_VERIFY} != 'SUCCESS'"),
            json!({ "not": { "cert_verified": true } })
        );
        assert!(expr_req("%{A} == 'x' || %{B} == 'y'")
            .unwrap_err()
            .contains("||"));
        assert_eq!(
            Value::Object(expr("resp('Content-Type') =~ /^text\\//", Side::Response).unwrap()),
            json!({ "header": { "name": "Content-Type", "matches": "^text/" } }),
            "a Header line tests the answer"
        );
        assert!(
            expr("req('X-A') == 'b'", Side::Response).is_err(),
            "response rules cannot test request headers"
        );
        assert!(expr("resp('X-A') == 'b'", Side::Request).is_err());
        assert!(expr_req("%{TIME_HOUR} == '12'")
            .unwrap_err()
            .contains("TIME_HOUR"));
    }
}
