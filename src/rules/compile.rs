//! Config spec -> compiled rules. Every problem is reported with its key path and a fix; the
//! caller (config validation) turns them into `ConfigError`s.

use super::cond::{Cond, HeaderTest, Pattern};
use super::template::Template;
use super::{fold, Action, HeaderRules, NameMatch, Rule, Value, WriteName};
use crate::config::spec::{ConditionSpec, HeaderRuleSpec};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// (key path, message) pairs.
pub type Problems = Vec<(String, String)>;

/// Headers a rule may not write or remove: the framing of the message is Pingora's.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "connection", "host"];

/// Compiles `specs` found at key path `p` (e.g. `routes[2].request_headers`).
pub fn rules(p: &str, specs: &[HeaderRuleSpec], out: &mut Problems) -> HeaderRules {
    let rules = specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| rule(&format!("{p}[{i}]"), s, out))
        .collect();
    HeaderRules { rules }
}

fn rule(p: &str, s: &HeaderRuleSpec, out: &mut Problems) -> Option<Rule> {
    let given = [&s.set, &s.add, &s.remove]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given != 1 {
        out.push((
            p.to_string(),
            format!("{given} actions given; write exactly one of `set: NAME`, `add: NAME` or `remove: NAME`, e.g. `{{ set: X-Env, value: prod }}`"),
        ));
        return None;
    }
    let when = s.when.as_ref().map(|c| cond(&format!("{p}.if"), c, out));
    let action = if let Some(r) = &s.remove {
        if s.value.is_some() {
            out.push((
                format!("{p}.value"),
                "remove takes no value; drop `value:` (or use `set:`)".into(),
            ));
        }
        let m = remove_name(&format!("{p}.remove"), r, out)?;
        let exact = match &m {
            NameMatch::Exact(folded) => HeaderName::from_bytes(folded.as_bytes()).ok(),
            NameMatch::Prefix(_) => None,
        };
        Action::Remove(m, exact)
    } else {
        let (key, n) = match (&s.set, &s.add) {
            (Some(n), _) => ("set", n),
            (_, Some(n)) => ("add", n),
            _ => return None,
        };
        let name = write_name(&format!("{p}.{key}"), n, out)?;
        let Some(v) = &s.value else {
            out.push((
                format!("{p}.value"),
                format!("missing; `{key}` needs a value, e.g. `value: \"%{{ssl_client_s_dn}}\"` (an empty string is allowed)"),
            ));
            return None;
        };
        let value = match Template::parse(v) {
            Err(m) => {
                out.push((format!("{p}.value"), m));
                return None;
            }
            Ok(t) => match t.literal().map(HeaderValue::from_str) {
                Some(Ok(v)) => Value::Fixed(v),
                Some(Err(_)) => {
                    out.push((
                        format!("{p}.value"),
                        format!("{v:?} is not a valid header value; use visible characters"),
                    ));
                    return None;
                }
                None => match t.single_var() {
                    Some(v) => Value::Var(v),
                    None => Value::Template(t),
                },
            },
        };
        if key == "set" {
            Action::Set(name, value)
        } else {
            Action::Add(name, value)
        }
    };
    Some(Rule { action, when })
}

fn check_name(p: &str, n: &str, out: &mut Problems) -> Option<HeaderName> {
    match HeaderName::from_bytes(n.as_bytes()) {
        Ok(h) if FRAMING.contains(&h.as_str()) => {
            out.push((
                p.to_string(),
                format!(
                    "{n:?} frames the message and is Pingora's to write; choose another header"
                ),
            ));
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            out.push((
                p.to_string(),
                format!("{n:?} is not a header name; use letters, digits, `-` and `_`, e.g. X-Client-Cert"),
            ));
            None
        }
    }
}

fn write_name(p: &str, n: &str, out: &mut Problems) -> Option<WriteName> {
    if n.ends_with('*') {
        out.push((
            p.to_string(),
            format!("{n:?}: a `*` prefix only works with `remove:`"),
        ));
        return None;
    }
    let name = check_name(p, n, out)?;
    Some(WriteName {
        name,
        spelled: Bytes::copy_from_slice(n.as_bytes()),
    })
}

fn remove_name(p: &str, n: &str, out: &mut Problems) -> Option<NameMatch> {
    let (base, prefix) = match n.strip_suffix('*') {
        Some(b) => (b, true),
        None => (n, false),
    };
    if prefix && base.is_empty() {
        out.push((
            p.to_string(),
            "\"*\" alone would remove every header; name a prefix, e.g. \"REMOTE-USER*\"".into(),
        ));
        return None;
    }
    check_name(p, base, out)?;
    let folded = fold(base);
    Some(if prefix {
        NameMatch::Prefix(folded)
    } else {
        NameMatch::Exact(folded)
    })
}

fn cond(p: &str, s: &ConditionSpec, out: &mut Problems) -> Cond {
    let mut all = Vec::new();
    if let Some(cn) = &s.cert_cn {
        all.push(Cond::CertCn(cn.to_vec()));
    }
    if let Some(v) = s.cert_verified {
        all.push(Cond::CertVerified(v));
    }
    if let Some(h) = &s.header {
        let hp = format!("{p}.header");
        let tests = [&h.matches, &h.prefix, &h.equals]
            .iter()
            .filter(|t| t.is_some())
            .count();
        if tests > 1 {
            out.push((
                hp.clone(),
                "give at most one of matches, prefix, equals (none = the header is present)".into(),
            ));
        }
        let test = if let Some(re) = &h.matches {
            match regex::Regex::new(re) {
                Ok(r) => Some(HeaderTest::Matches(Pattern(r))),
                Err(e) => {
                    out.push((
                        format!("{hp}.matches"),
                        format!(
                            "{re:?} is not a regular expression ({e}); write e.g. \"^Bearer \""
                        ),
                    ));
                    None
                }
            }
        } else if let Some(x) = &h.prefix {
            Some(HeaderTest::Prefix(x.clone()))
        } else if let Some(x) = &h.equals {
            Some(HeaderTest::Equals(x.clone()))
        } else {
            Some(HeaderTest::Present)
        };
        if let (Some(n), Some(t)) = (check_name(&format!("{hp}.name"), &h.name, out), test) {
            all.push(Cond::Header(n, t));
        }
    }
    if let Some(ms) = &s.method {
        let ms: Vec<String> = ms.to_vec().iter().map(|m| m.to_ascii_uppercase()).collect();
        for m in &ms {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                out.push((
                    format!("{p}.method"),
                    format!("{m:?} is not an HTTP method; use e.g. GET, POST"),
                ));
            }
        }
        all.push(Cond::Method(ms));
    }
    if let Some(ps) = &s.path_prefix {
        let ps = ps.to_vec();
        for pp in &ps {
            if !pp.starts_with('/') {
                out.push((
                    format!("{p}.path_prefix"),
                    format!("{pp:?} must start with /"),
                ));
            }
        }
        all.push(Cond::PathPrefix(ps));
    }
    if let Some(n) = &s.not {
        all.push(Cond::Not(Box::new(cond(&format!("{p}.not"), n, out))));
    }
    if all.is_empty() {
        out.push((
            p.to_string(),
            "an empty condition; give one of cert_cn, cert_verified, header, method, path_prefix, not (or drop `if:`)".into(),
        ));
    }
    match all.len() {
        1 => all.pop().unwrap_or(Cond::All(Vec::new())),
        _ => Cond::All(all),
    }
}
