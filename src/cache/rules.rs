//! What a shared cache may store and reuse (RFC 9111), as pure functions over header lists.
//!
//! - **Credentials are always part of the key**: `Authorization`, `Cookie` and the client
//!   certificate identity (see [`CREDENTIAL_HEADERS`]) are added to the configured `vary`
//!   headers, never replaced by them, so a stored answer is only ever reused for the same
//!   credentials. (RFC 9111 §3.5 lets a shared cache reuse an answer to a request with
//!   `Authorization` only when the origin marks it `public`, `s-maxage` or
//!   `must-revalidate`; keying on the credential is the stricter alternative an operator's
//!   explicit `cache:` on a route asks for.)
//! - **The origin decides what may be stored** ([`store_decision`]): `Cache-Control:
//!   no-store`, `private` or `no-cache` (a stored copy would need revalidation on every use)
//!   and `Vary: *` are never stored; `s-maxage`, else `max-age`, caps the route's TTL.
//! - **The origin's `Vary`** adds request headers to the key of that answer: their values (as a
//!   keyed hash, see [`variant_fingerprint`]) are stored with the answer, and a request whose
//!   values differ never receives it.

use std::time::Duration;

/// Request headers that identify a user; always part of a cache key.
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// Why an origin answer is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`.
    Private,
    /// `Cache-Control: no-cache` (every reuse would need revalidation).
    NoCache,
    /// `Vary: *`: no request can be shown to match.
    VaryStar,
    /// `Cache-Control: max-age=0` / `s-maxage=0`.
    ZeroLifetime,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::NoCache => "no-cache",
            NotStored::VaryStar => "vary-star",
            NotStored::ZeroLifetime => "max-age=0",
        }
    }
}

/// May this answer be stored, and for how long at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDecision {
    /// Store with this TTL (the route's TTL capped by the origin's lifetime).
    Store { ttl: Duration },
    /// Hand it to the requests waiting now, store nothing.
    DoNotStore(NotStored),
}

/// Applies the origin's `Cache-Control` and `Vary` to the route's TTL. Header names are
/// compared case-insensitively; several header lines and comma-separated lists are merged.
pub fn store_decision<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    route_ttl: Duration,
) -> StoreDecision {
    let mut s_maxage = None;
    let mut max_age = None;
    for d in list_values(headers.clone(), "cache-control") {
        let (name, arg) = match d.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (d, None),
        };
        let secs = || arg.and_then(|a| a.parse::<u64>().ok());
        match name.to_ascii_lowercase().as_str() {
            "no-store" => return StoreDecision::DoNotStore(NotStored::NoStore),
            "private" => return StoreDecision::DoNotStore(NotStored::Private),
            "no-cache" => return StoreDecision::DoNotStore(NotStored::NoCache),
            "s-maxage" => s_maxage = secs().or(s_maxage),
            "max-age" => max_age = secs().or(max_age),
            _ => {}
        }
    }
    if list_values(headers, "vary").any(|v| v == "*") {
        return StoreDecision::DoNotStore(NotStored::VaryStar);
    }
    let ttl = match s_maxage.or(max_age) {
        Some(0) => return StoreDecision::DoNotStore(NotStored::ZeroLifetime),
        Some(s) => route_ttl.min(Duration::from_secs(s)),
        None => route_ttl,
    };
    StoreDecision::Store { ttl }
}

/// The request headers an answer varies on (its `Vary` list, lowercased, sorted, without
/// duplicates and without the ones already in the key).
pub fn vary_names<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    keyed: &[String],
) -> Vec<String> {
    let mut names: Vec<String> = list_values(headers, "vary")
        .map(|v| v.to_ascii_lowercase())
        .filter(|v| v != "*" && !keyed.iter().any(|k| k == v) && !is_credential(v))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether `name` (lowercased) is one of [`CREDENTIAL_HEADERS`].
pub fn is_credential(name: &str) -> bool {
    CREDENTIAL_HEADERS.contains(&name)
}

/// A keyed hash of the request's values of `names` (absent and present differ), stored with
/// an answer that carries `Vary`; `None` when `names` is empty.
pub fn variant_fingerprint(
    names: &[String],
    request_value: &dyn Fn(&str) -> Option<Vec<u8>>,
    secret: &[u8],
) -> Option<String> {
    use sha2::{Digest, Sha256};
    if names.is_empty() {
        return None;
    }
    let mut h = Sha256::new();
    h.update(secret);
    for n in names {
        h.update(n.as_bytes());
        match request_value(n) {
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
            }
            None => h.update([0u8]),
        }
    }
    let names = names.join(",");
    Some(format!("{names}={}", hex::encode(&h.finalize()[..16])))
}

/// The names part of a stored fingerprint (`accept-language,x-foo=hash`).
pub fn fingerprint_names(fp: &str) -> Vec<String> {
    fp.split_once('=')
        .map(|(n, _)| n.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

/// Comma-separated values of every line of header `name`, trimmed, empty ones dropped.
fn list_values<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(list: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
        list.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    fn decide(list: &[(&'static str, &'static str)]) -> StoreDecision {
        let v = h(list);
        store_decision(v.iter().copied(), Duration::from_secs(300))
    }

    #[test]
    fn no_store_private_no_cache_and_vary_star_are_not_stored() {
        for (hdrs, why) in [
            (vec![("Cache-Control", "no-store")], NotStored::NoStore),
            (
                vec![("cache-control", "max-age=60, private")],
                NotStored::Private,
            ),
            (
                vec![("Cache-Control", "public"), ("Cache-Control", "no-cache")],
                NotStored::NoCache,
            ),
            (vec![("Vary", "Accept, *")], NotStored::VaryStar),
            (
                vec![("Cache-Control", "s-maxage=0")],
                NotStored::ZeroLifetime,
            ),
        ] {
            assert_eq!(decide(&hdrs), StoreDecision::DoNotStore(why), "{hdrs:?}");
        }
    }

    #[test]
    fn s_maxage_then_max_age_cap_the_route_ttl() {
        assert_eq!(
            decide(&[("Cache-Control", "max-age=60, s-maxage=30")]),
            StoreDecision::Store {
                ttl: Duration::from_secs(30)
            }
        );
        assert_eq!(
            decide(&[("Cache-Control", "max-age=60")]),
            StoreDecision::Store {
                ttl: Duration::from_secs(60)
            }
        );
        assert_eq!(
            decide(&[("Cache-Control", "max-age=3600")]),
            StoreDecision::Store {
                ttl: Duration::from_secs(300)
            },
            "never longer than the route's ttl"
        );
        assert_eq!(
            decide(&[("Content-Type", "text/plain")]),
            StoreDecision::Store {
                ttl: Duration::from_secs(300)
            }
        );
    }

    #[test]
    fn vary_names_skip_keyed_and_credential_headers() {
        let v = h(&[
            ("Vary", "Accept-Language, Authorization"),
            ("vary", "x-foo, accept-language"),
        ]);
        assert_eq!(
            vary_names(v.iter().copied(), &["x-foo".to_string()]),
            vec!["accept-language".to_string()]
        );
    }

    #[test]
    fn fingerprints_differ_by_value_and_by_absence() {
        let names = vec!["accept-language".to_string()];
        let fp = |v: Option<&'static str>| {
            variant_fingerprint(&names, &|_| v.map(|s| s.as_bytes().to_vec()), b"k")
        };
        assert_ne!(fp(Some("de")), fp(Some("en")));
        assert_ne!(fp(Some("")), fp(None), "empty is not absent");
        assert_eq!(fp(Some("de")), fp(Some("de")));
        let f = fp(Some("de")).unwrap();
        assert_eq!(fingerprint_names(&f), names);
        assert!(!f.contains("de="), "values are hashed: {f}");
        assert_eq!(variant_fingerprint(&[], &|_| None, b"k"), None);
    }
}
