//! Canonical cache keys: one pure function turns a request's method, host, path, query and
//! the configured `Vary` headers into a [`CacheKey`].
//!
//! The key text is built so that:
//! - requests differing only in query-parameter order share a key (parameters are stably
//!   sorted by name; repeated parameters keep their relative order; raw encoding is kept),
//! - credentials never appear in the key: each vary header contributes only a keyed hash of
//!   its value (`sha256(secret || name || 0 || value)`, first 16 bytes, hex), and an absent
//!   header contributes an explicit `-` marker, so a request without credentials can never
//!   match one with credentials,
//! - the path is recoverable, so purge by path prefix works in memory and in Redis.
//!
//! Layout of [`CacheKey::full`]: `METHOD host/path[?sorted-query][ vary:name=hash|name=-...]`,
//! e.g. `GET capsule.example/register?activation_keys=ak&location_id=2 vary:authorization=9f2c...`.
//! A raw HTTP request target contains no spaces, so the space before `vary:` is unambiguous.

use sha2::{Digest, Sha256};

/// Marker written in place of a hash when a vary header is absent from the request.
const ABSENT_MARKER: &str = "-";
/// Length (characters) of [`CacheKey::display`] before it is cut and suffixed with `...`.
pub const DISPLAY_MAX_CHARS: usize = 120;
/// Bytes of the sha256 digest kept per vary header (printed as twice as many hex digits).
const VARY_HASH_BYTES: usize = 16;

/// A canonical cache key. Two requests share a cached response exactly when their keys'
/// `full` strings are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The complete canonical form (also the Redis key after the tier's key prefix).
    /// Contains hashes of vary-header values, never the values themselves.
    pub full: String,
    /// The request path alone (no query), kept for purge by path prefix.
    path: String,
}

impl CacheKey {
    /// The path component (without query) this key was built from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this key's path starts with `path_prefix` (plain byte prefix, so `/reg`
    /// matches `/register`; pass `/register/` to match only below it).
    pub fn has_prefix(&self, path_prefix: &str) -> bool {
        self.path.starts_with(path_prefix)
    }

    /// Log-safe form: the full key cut to [`DISPLAY_MAX_CHARS`] characters with `...`
    /// appended when cut. Safe to log because the key holds only hashes of vary values.
    pub fn display(&self) -> String {
        truncate_for_log(&self.full, DISPLAY_MAX_CHARS)
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// Extracts the path from a [`CacheKey::full`] string (used by the Redis tier to filter
/// scanned keys). Returns `None` when the text is not in canonical layout.
pub(crate) fn path_of_full(full: &str) -> Option<&str> {
    // why: host never contains '/', so the first '/' after "METHOD " starts the path.
    let after_method = full.split_once(' ')?.1;
    let start = after_method.find('/')?;
    let rest = &after_method[start..];
    let end = rest.find(['?', ' ']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Builds the canonical key of a request.
///
/// - `method` is used as given (callers pass the uppercase HTTP method).
/// - `host` is lowercased and a trailing default port (`:80` or `:443`) is removed.
/// - `query` parameters (split on `&`, empty segments dropped) are stably sorted by name;
///   values keep their raw percent-encoding (no decoding, so `a=%41` and `a=A` differ).
///   `None` and `Some("")` give the same key.
/// - `vary` lists `(lowercased header name, value)`; entries are sorted by name and each
///   contributes `name=<32 hex digits>` or `name=-` when the value is `None`.
/// - `secret` keys the vary hashes so that key text (logs, Redis) cannot be brute-forced
///   back into credentials without the secret.
pub fn canonical_key(
    method: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    vary: &[(&str, Option<&[u8]>)],
    secret: &[u8],
) -> CacheKey {
    let host = normalize_host(host);
    let mut full = String::with_capacity(
        method.len() + host.len() + path.len() + query.map_or(0, str::len) + 48 * vary.len() + 8,
    );
    full.push_str(method);
    full.push(' ');
    full.push_str(&host);
    full.push_str(path);

    if let Some(q) = query {
        let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
        // why: `sort_by_key` is stable, so repeated names keep their relative order.
        params.sort_by_key(|p| p.split_once('=').map_or(*p, |(name, _)| name));
        if !params.is_empty() {
            full.push('?');
            full.push_str(&params.join("&"));
        }
    }

    if !vary.is_empty() {
        let mut headers: Vec<&(&str, Option<&[u8]>)> = vary.iter().collect();
        headers.sort_by_key(|(name, _)| *name);
        full.push_str(" vary:");
        for (i, (name, value)) in headers.into_iter().enumerate() {
            if i > 0 {
                full.push('|');
            }
            full.push_str(name);
            full.push('=');
            match value {
                Some(v) => full.push_str(&keyed_hash(secret, name, v)),
                None => full.push_str(ABSENT_MARKER),
            }
        }
    }

    CacheKey {
        full,
        path: path.to_string(),
    }
}

/// `hex(sha256(secret || name || 0 || value)[..16])`.
fn keyed_hash(secret: &[u8], name: &str, value: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(value);
    hex::encode(&h.finalize()[..VARY_HASH_BYTES])
}

/// Lowercases the host and drops a default port (`:80`, `:443`).
fn normalize_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    for default_port in [":80", ":443"] {
        if let Some(stripped) = lower.strip_suffix(default_port) {
            // why: "[::1]:80" becomes "[::1]"; an IPv6 literal such as "[::80]" ends in
            // ']' so it is never cut; a bare ":80" is kept as given.
            if !stripped.is_empty() {
                return stripped.to_string();
            }
        }
    }
    lower
}

/// Cuts `s` to at most `max` characters (on a char boundary), appending `...` if cut.
pub(crate) fn truncate_for_log(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((idx, _)) => format!("{}...", &s[..idx]),
        None => s.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn key(query: Option<&str>) -> CacheKey {
        canonical_key("GET", "capsule.example", "/register", query, &[], SECRET)
    }

    #[test]
    fn parameter_order_does_not_change_the_key() {
        let a = key(Some("org_id=1&location_id=2&activation_keys=ak"));
        let b = key(Some("activation_keys=ak&org_id=1&location_id=2"));
        assert_eq!(a, b, "reordered parameters must give the same key");
        assert_eq!(
            a.full, "GET capsule.example/register?activation_keys=ak&location_id=2&org_id=1",
            "canonical layout"
        );
    }

    #[test]
    fn repeated_parameters_keep_their_relative_order() {
        let a = key(Some("b=1&a=x&a=y"));
        let b = key(Some("a=y&b=1&a=x"));
        assert!(a.full.ends_with("?a=x&a=y&b=1"), "stable sort: {}", a.full);
        assert!(b.full.ends_with("?a=y&a=x&b=1"), "stable sort: {}", b.full);
        assert_ne!(
            a, b,
            "different order of repeated values is a different request"
        );
    }

    #[test]
    fn raw_encoding_is_kept_and_empty_segments_dropped() {
        assert_ne!(key(Some("a=%41")), key(Some("a=A")), "no decoding");
        assert_eq!(
            key(Some("a=1&&b=2&")),
            key(Some("b=2&a=1")),
            "empty segments"
        );
        assert_eq!(key(None), key(Some("")), "no query equals empty query");
    }

    #[test]
    fn host_is_lowercased_and_default_port_dropped() {
        let a = canonical_key("GET", "Capsule.Example:443", "/r", None, &[], SECRET);
        let b = canonical_key("GET", "capsule.example", "/r", None, &[], SECRET);
        let c = canonical_key("GET", "capsule.example:8443", "/r", None, &[], SECRET);
        assert_eq!(a, b, "default port and case are ignored");
        assert_ne!(a, c, "non-default port is part of the key");
    }

    #[test]
    fn different_authorization_values_give_different_keys() {
        let k = |v: Option<&[u8]>| {
            canonical_key(
                "GET",
                "h",
                "/register",
                None,
                &[("authorization", v)],
                SECRET,
            )
        };
        let alice = k(Some(b"Basic YWxpY2U6cHc="));
        let bob = k(Some(b"Basic Ym9iOnB3"));
        let none = k(None);
        let empty = k(Some(b""));
        assert_ne!(alice, bob, "distinct credentials must not share an entry");
        assert_ne!(
            none, alice,
            "absent credentials must not match present ones"
        );
        assert_ne!(none, empty, "absent header differs from an empty header");
        assert!(
            none.full.ends_with(" vary:authorization=-"),
            "{}",
            none.full
        );
        assert!(
            !alice.full.contains("YWxpY2U"),
            "credential value must not appear in the key: {}",
            alice.full
        );
    }

    #[test]
    fn vary_hash_depends_on_the_secret() {
        let v: &[(&str, Option<&[u8]>)] = &[("authorization", Some(b"x"))];
        let a = canonical_key("GET", "h", "/r", None, v, b"one");
        let b = canonical_key("GET", "h", "/r", None, v, b"two");
        assert_ne!(a, b, "keyed hash must change with the secret");
    }

    #[test]
    fn vary_order_given_by_caller_does_not_matter() {
        let a = canonical_key(
            "GET",
            "h",
            "/r",
            None,
            &[("authorization", Some(b"x")), ("cookie", None)],
            SECRET,
        );
        let b = canonical_key(
            "GET",
            "h",
            "/r",
            None,
            &[("cookie", None), ("authorization", Some(b"x"))],
            SECRET,
        );
        assert_eq!(a, b, "vary headers are sorted by name");
    }

    #[test]
    fn display_is_truncated_and_prefix_matching_uses_the_path() {
        let long = "p=".to_string() + &"x".repeat(500);
        let k = key(Some(&long));
        let d = k.display();
        assert!(d.ends_with("..."), "long key is cut: {d}");
        assert_eq!(d.chars().count(), DISPLAY_MAX_CHARS + 3, "cut length");
        assert!(k.has_prefix("/reg"), "path prefix matches");
        assert!(!k.has_prefix("/p="), "query is not part of the path");
        assert_eq!(key(None).display(), key(None).full, "short key is not cut");
    }

    #[test]
    fn path_can_be_recovered_from_the_full_key() {
        let k = canonical_key(
            "GET",
            "h:8080",
            "/register/x",
            Some("a=/b"),
            &[("authorization", None)],
            SECRET,
        );
        assert_eq!(path_of_full(&k.full), Some("/register/x"), "{}", k.full);
        let k = canonical_key("GET", "h", "/r", None, &[("cookie", None)], SECRET);
        assert_eq!(path_of_full(&k.full), Some("/r"), "{}", k.full);
    }
}
