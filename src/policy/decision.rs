//! Turning what a hook returned (a Lua value) into a typed [`PolicyDecision`] or
//! [`ResponseEdit`]. Strict on purpose: an unknown field, a wrong type or a nonsensical
//! combination is an error, so a typo (`prority = 1`) is reported instead of silently ignored.

use mlua::{Table, Value};

use super::{PolicyDecision, ResponseEdit};

/// Fields accepted in an `admit`/`route` decision table.
const DECISION_FIELDS: &str =
    "deny, retry_after, body, upstream, server, priority, set_headers, remove_headers";
/// Fields accepted in a `response` edit table.
const EDIT_FIELDS: &str = "set_headers, remove_headers";
/// Longest accepted deny body, in bytes.
const MAX_BODY_LEN: usize = 64 * 1024;

#[derive(Default)]
struct Fields {
    deny: Option<u16>,
    retry_after: Option<u32>,
    body: Option<String>,
    upstream: Option<String>,
    server: Option<String>,
    priority: Option<i32>,
    set_headers: Option<Vec<(String, String)>>,
    remove_headers: Option<Vec<String>>,
}

/// `nil` means no opinion (`Ok(None)`); a table becomes a decision; anything else is an error.
pub(crate) fn parse_decision(value: &Value) -> Result<Option<PolicyDecision>, String> {
    let table = match value {
        Value::Nil => return Ok(None),
        Value::Table(t) => t,
        other => {
            return Err(format!(
                "a decision must be a table or nil, got {}",
                other.type_name()
            ))
        }
    };
    let mut f = Fields::default();
    for pair in table.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let key = field_name(&k)?;
        match key.as_str() {
            "deny" => {
                let s = integer(&v, "deny")?;
                if !(400..=599).contains(&s) {
                    return Err(format!("deny must be an HTTP status 400..599, got {s}"));
                }
                f.deny = Some(s as u16);
            }
            "retry_after" => {
                let s = integer(&v, "retry_after")?;
                f.retry_after = Some(u32::try_from(s).map_err(|_| {
                    format!("retry_after must be 0..{} seconds, got {s}", u32::MAX)
                })?);
            }
            "body" => {
                let b = string(&v, "body")?;
                if b.len() > MAX_BODY_LEN {
                    return Err(format!("body is longer than {MAX_BODY_LEN} bytes"));
                }
                f.body = Some(b);
            }
            "upstream" => f.upstream = Some(string(&v, "upstream")?),
            "server" => f.server = Some(string(&v, "server")?),
            "priority" => {
                let p = integer(&v, "priority")?;
                f.priority =
                    Some(i32::try_from(p).map_err(|_| format!("priority out of range: {p}"))?);
            }
            "set_headers" => f.set_headers = Some(header_map(&v)?),
            "remove_headers" => f.remove_headers = Some(header_list(&v)?),
            other => {
                return Err(format!(
                    "unknown field `{other}` in decision (allowed: {DECISION_FIELDS})"
                ))
            }
        }
    }
    combine(f)
}

fn combine(f: Fields) -> Result<Option<PolicyDecision>, String> {
    if let Some(status) = f.deny {
        if f.upstream.is_some()
            || f.server.is_some()
            || f.priority.is_some()
            || f.set_headers.is_some()
            || f.remove_headers.is_some()
        {
            return Err(
                "deny cannot be combined with upstream, server, priority, set_headers or remove_headers".to_owned(),
            );
        }
        return Ok(Some(PolicyDecision::Deny {
            status,
            retry_after: f.retry_after,
            body: f.body,
        }));
    }
    if f.retry_after.is_some() || f.body.is_some() {
        return Err("retry_after and body are only allowed with deny".to_owned());
    }
    let set_headers = f.set_headers.unwrap_or_default();
    let remove_headers = f.remove_headers.unwrap_or_default();
    if let Some(upstream) = f.upstream {
        if f.priority.is_some() {
            return Err(
                "priority cannot be combined with upstream (return priority from admit)".to_owned(),
            );
        }
        return Ok(Some(PolicyDecision::Route {
            upstream,
            server: f.server,
            set_headers,
            remove_headers,
        }));
    }
    if f.server.is_some() {
        return Err("server requires upstream".to_owned());
    }
    if f.priority.is_none() && set_headers.is_empty() && remove_headers.is_empty() {
        // why: `{}` carries no opinion; treat it like nil rather than as an error.
        return Ok(None);
    }
    Ok(Some(PolicyDecision::Adjust {
        priority: f.priority,
        set_headers,
        remove_headers,
    }))
}

/// `nil` means no edit; otherwise `{ set_headers = {..}, remove_headers = {..} }`.
pub(crate) fn parse_edit(value: &Value) -> Result<Option<ResponseEdit>, String> {
    let table = match value {
        Value::Nil => return Ok(None),
        Value::Table(t) => t,
        other => {
            return Err(format!(
                "a response edit must be a table or nil, got {}",
                other.type_name()
            ))
        }
    };
    let mut edit = ResponseEdit::default();
    for pair in table.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        match field_name(&k)?.as_str() {
            "set_headers" => edit.set_headers = header_map(&v)?,
            "remove_headers" => edit.remove_headers = header_list(&v)?,
            other => {
                return Err(format!(
                    "unknown field `{other}` in response edit (allowed: {EDIT_FIELDS})"
                ))
            }
        }
    }
    Ok(Some(edit))
}

fn field_name(k: &Value) -> Result<String, String> {
    match k {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(format!(
            "decision keys must be field names, got a {} key",
            other.type_name()
        )),
    }
}

fn integer(v: &Value, field: &str) -> Result<i64, String> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(*n as i64),
        other => Err(format!(
            "{field} must be an integer, got {}",
            other.type_name()
        )),
    }
}

fn string(v: &Value, field: &str) -> Result<String, String> {
    match v {
        Value::String(s) => s
            .to_str()
            .map(|s| s.to_owned())
            .map_err(|_| format!("{field} must be valid UTF-8")),
        other => Err(format!(
            "{field} must be a string, got {}",
            other.type_name()
        )),
    }
}

fn header_name(v: &Value) -> Result<String, String> {
    let name = string(v, "header name")?;
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    Ok(name)
}

/// `{ ["X-A"] = "b" }` -> sorted `(name, value)` pairs (sorted so the result does not depend on
/// Lua's table iteration order). Values may be strings or numbers.
fn header_map(v: &Value) -> Result<Vec<(String, String)>, String> {
    let Value::Table(t) = v else {
        return Err(format!(
            "set_headers must be a table, got {}",
            v.type_name()
        ));
    };
    let mut out = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, val) = pair.map_err(|e| e.to_string())?;
        let name = header_name(&k)?;
        let value = match &val {
            Value::Integer(i) => i.to_string(),
            Value::Number(n) => n.to_string(),
            _ => string(&val, "header value")?,
        };
        http::HeaderValue::from_str(&value)
            .map_err(|_| format!("invalid value for header {name}: {value:?}"))?;
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

fn header_list(v: &Value) -> Result<Vec<String>, String> {
    let Value::Table(t) = v else {
        return Err(format!(
            "remove_headers must be a list, got {}",
            v.type_name()
        ));
    };
    let list: &Table = t;
    let mut out = Vec::new();
    for item in list.sequence_values::<Value>() {
        out.push(header_name(&item.map_err(|e| e.to_string())?)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mlua::Lua;

    fn decide(src: &str) -> Result<Option<PolicyDecision>, String> {
        let lua = Lua::new();
        let v: Value = lua.load(src).eval().unwrap();
        parse_decision(&v)
    }

    #[test]
    fn decisions_parse_into_typed_variants() {
        assert_eq!(decide("return nil"), Ok(None));
        assert_eq!(decide("return {}"), Ok(None), "empty table is no opinion");
        assert_eq!(
            decide("return { deny = 429, retry_after = 30, body = 'slow' }"),
            Ok(Some(PolicyDecision::Deny {
                status: 429,
                retry_after: Some(30),
                body: Some("slow".into())
            }))
        );
        assert_eq!(
            decide("return { upstream = 'puppet', server = 'master2', set_headers = { ['X-B'] = 1, ['X-A'] = 'b' } }"),
            Ok(Some(PolicyDecision::Route {
                upstream: "puppet".into(),
                server: Some("master2".into()),
                set_headers: vec![("X-A".into(), "b".into()), ("X-B".into(), "1".into())],
                remove_headers: vec![]
            }))
        );
        assert_eq!(
            decide("return { priority = 2.0 }"),
            Ok(Some(PolicyDecision::Adjust {
                priority: Some(2),
                set_headers: vec![],
                remove_headers: vec![]
            }))
        );
        assert_eq!(
            decide("return { remove_headers = { 'REMOTE-USER*', 'X_Debug' } }"),
            Ok(Some(PolicyDecision::Adjust {
                priority: None,
                set_headers: vec![],
                remove_headers: vec!["REMOTE-USER*".into(), "X_Debug".into()]
            })),
            "removal alone is a decision"
        );
    }

    #[test]
    fn bad_decisions_are_errors_naming_the_problem() {
        let unknown = decide("return { prority = 1 }").unwrap_err();
        assert!(unknown.contains("unknown field `prority`"), "{unknown}");
        assert!(
            decide("return { deny = 200 }").is_err(),
            "2xx is not a deny"
        );
        assert!(decide("return { deny = 429, upstream = 'x' }").is_err());
        assert!(decide("return { upstream = 'x', priority = 1 }").is_err());
        assert!(
            decide("return { server = 'x' }").is_err(),
            "server needs upstream"
        );
        assert!(
            decide("return 'deny'").is_err(),
            "strings are not decisions"
        );
        let crlf = decide("return { set_headers = { ['X-A'] = 'a\\r\\nInjected: 1' } }");
        assert!(crlf.is_err(), "header values with CRLF are rejected");
    }

    #[test]
    fn response_edits_parse_and_reject_unknown_fields() {
        let lua = Lua::new();
        let v: Value = lua
            .load("return { set_headers = { ['X-Cache'] = 'hit' }, remove_headers = { 'Server' } }")
            .eval()
            .unwrap();
        let e = parse_edit(&v).unwrap().unwrap();
        assert_eq!(
            e.set_headers,
            vec![("X-Cache".to_owned(), "hit".to_owned())]
        );
        assert_eq!(e.remove_headers, vec!["Server".to_owned()]);
        let bad: Value = lua.load("return { deny = 403 }").eval().unwrap();
        assert!(parse_edit(&bad).is_err(), "deny is not a response edit");
    }
}
