//! Map bodies in JSON: an object of strings, or an array of `{key|certname, value}` objects
//! (PuppetDB fact answers).

use super::{check_entry, MapError};
use std::collections::HashMap;

/// Parses a JSON map body. Accepted shapes:
/// - an object of strings: `{"node1.example.com": "master1", ...}`;
/// - an array of objects, each with a string `"value"` and a string key in
///   `"key"` or, failing that, `"certname"`; other fields are ignored. This
///   takes PuppetDB fact answers directly, e.g.
///   `/pdb/query/v4/facts/puppet_master` →
///   `[{"certname":"node1","name":"puppet_master","value":"master1",...}]`.
///
/// Errors (all collected): not JSON, another shape, a non-string value, a key
/// or value [`check_entry`] rejects, a duplicate key in an array (naming both
/// indexes).
pub fn parse_map_json(text: &str, origin: &str) -> Result<HashMap<String, String>, Vec<MapError>> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        vec![MapError::new(
            origin,
            None,
            format!("body is not valid JSON: {e}"),
            "send a JSON object {\"key\":\"value\"} or an array of {\"key\":..,\"value\":..}",
        )]
    })?;
    let mut errors = Vec::new();
    let mut entries = HashMap::new();
    match doc {
        serde_json::Value::Object(obj) => {
            entries.reserve(obj.len());
            for (key, value) in obj {
                let serde_json::Value::String(value) = value else {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("value of {key:?} is {value}, not a string"),
                        "quote the server name",
                    ));
                    continue;
                };
                match check_entry(&key, &value) {
                    Ok(()) => {
                        entries.insert(key, value);
                    }
                    Err(m) => errors.push(MapError::new(origin, None, m, "fix the entry")),
                }
            }
        }
        serde_json::Value::Array(items) => {
            entries.reserve(items.len());
            let mut index_of: HashMap<String, usize> = HashMap::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let key = item.get("key").or_else(|| item.get("certname"));
                let value = item.get("value");
                let (Some(serde_json::Value::String(key)), Some(serde_json::Value::String(value))) =
                    (key, value)
                else {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("item [{i}] lacks a string \"key\" (or \"certname\") and a string \"value\""),
                        "give every item {\"key\": \"...\", \"value\": \"...\"}",
                    ));
                    continue;
                };
                if let Err(m) = check_entry(key, value) {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("item [{i}]: {m}"),
                        "fix the item",
                    ));
                    continue;
                }
                if let Some(first) = index_of.get(key.as_str()) {
                    errors.push(MapError::new(
                        origin,
                        None,
                        format!("item [{i}] repeats key {key:?} of item [{first}]"),
                        "keep one of the two items",
                    ));
                    continue;
                }
                index_of.insert(key.clone(), i);
                entries.insert(key.clone(), value.clone());
            }
        }
        other => errors.push(MapError::new(
            origin,
            None,
            format!(
                "body is a JSON {}, not an object or array",
                json_kind(&other)
            ),
            "send a JSON object {\"key\":\"value\"} or an array of {\"key\":..,\"value\":..}",
        )),
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_accepts_object_and_puppetdb_array() {
        let o = parse_map_json(r#"{"n1":"master1","n2":"master2"}"#, "u").unwrap();
        assert_eq!(o.len(), 2);
        let a = parse_map_json(
            r#"[{"certname":"n1","name":"puppet_master","value":"master1"},{"key":"n2","value":"master2"}]"#,
            "u",
        )
        .unwrap();
        assert_eq!(a["n1"], "master1", "certname is the key");
        assert_eq!(a["n2"], "master2");
    }

    #[test]
    fn json_rejects_bad_shapes_and_duplicates() {
        assert!(parse_map_json("[1]", "u").is_err(), "array of numbers");
        assert!(parse_map_json("\"x\"", "u").is_err(), "string");
        assert!(
            parse_map_json("{\"a\": 1}", "u").is_err(),
            "non-string value"
        );
        assert!(
            parse_map_json("{\"a b\": \"x\"}", "u").is_err(),
            "key with space"
        );
        let errs = parse_map_json(r#"[{"key":"a","value":"x"},{"key":"a","value":"y"}]"#, "u")
            .unwrap_err();
        assert!(
            errs[0]
                .message
                .contains("[1] repeats key \"a\" of item [0]"),
            "{}",
            errs[0]
        );
    }
}
