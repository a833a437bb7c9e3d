//! Request targets and hosts as pure functions: which bytes a target may hold, its form
//! (RFC 9112 §3.2), the syntax of `host[:port]`, and path normalisation (removal of dot
//! segments, RFC 3986 §5.2.4, with `%2e` counted as a dot) that refuses a climb above the root.
//!
//! Nothing is decoded except the dots of dot segments: `%2F` stays `%2F` (a slash inside a
//! segment is not a separator), and the query is never touched.

use super::refusal::Refusal;
use pingora_http::RequestHeader;
use std::net::Ipv6Addr;

/// The form of a request target that passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// `/path?query`.
    Origin,
    /// `*` (OPTIONS only).
    Asterisk,
    /// `http://authority/path?query`: the authority's byte range in the target and where the
    /// path (or query) starts.
    Absolute {
        authority: (usize, usize),
        rest: usize,
    },
}

/// Visible ASCII except `#` (a fragment is never sent) and `"`, `<`, `>`, `` ` `` (never valid
/// in a URI, and refused by the URI parser Pingora uses, which would answer a bare 400 without
/// a hook); `%` is checked apart. `{`, `}`, `|`, `\\`, `^`, `[`, `]` stay allowed: clients send
/// them unencoded in queries (`a[]=1`) and the URI parser keeps them as they are.
const fn target_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        t[b] = !matches!(b as u8, b'#' | b'"' | b'<' | b'>' | b'`');
        b += 1;
    }
    t
}
static TARGET_OK: [bool; 256] = target_table();

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// Refuses control bytes, spaces, non-ASCII bytes, `#` and `%` not followed by two hex digits.
pub fn check_bytes(t: &[u8]) -> Result<(), Refusal> {
    let mut i = 0;
    while i < t.len() {
        let b = t[i];
        if !TARGET_OK[b as usize] {
            return Err(Refusal::TargetInvalid);
        }
        if b == b'%' {
            match (t.get(i + 1), t.get(i + 2)) {
                (Some(&h), Some(&l)) if is_hex(h) && is_hex(l) => i += 3,
                _ => return Err(Refusal::TargetInvalid),
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Classifies and checks a request target. `options`: the method is OPTIONS (the only one that
/// may use `*`). The path of an origin- or absolute-form target must not climb above the root.
pub fn check(t: &[u8], options: bool) -> Result<Form, Refusal> {
    check_bytes(t)?;
    match t.first() {
        Some(b'/') => {
            check_climb(path_of(t))?;
            Ok(Form::Origin)
        }
        Some(b'*') if t.len() == 1 && options => Ok(Form::Asterisk),
        _ => {
            let after_scheme = if starts_with_ci(t, b"http://") {
                7
            } else if starts_with_ci(t, b"https://") {
                8
            } else {
                return Err(Refusal::TargetInvalid);
            };
            let rest = t[after_scheme..]
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .map_or(t.len(), |p| after_scheme + p);
            let authority = &t[after_scheme..rest];
            if authority.is_empty() || authority.contains(&b'@') {
                return Err(Refusal::TargetInvalid);
            }
            if !valid_host(authority) {
                return Err(Refusal::HostInvalid);
            }
            if t.get(rest) == Some(&b'/') {
                check_climb(path_of(&t[rest..]))?;
            }
            Ok(Form::Absolute {
                authority: (after_scheme, rest),
                rest,
            })
        }
    }
}

fn starts_with_ci(t: &[u8], prefix: &[u8]) -> bool {
    t.len() >= prefix.len() && t[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The path part of an origin-form target (everything before `?`).
pub fn path_of(t: &[u8]) -> &[u8] {
    t.iter().position(|&b| b == b'?').map_or(t, |q| &t[..q])
}

const fn host_name_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    t
}

/// Bytes of a host name in `Host` or an absolute-form authority.
static HOST_NAME: [bool; 256] = host_name_table();

/// `host[:port]` where host is a name of letters, digits, `-`, `.`, `_`, `~` or a bracketed
/// IPv6 address, and port is 1 to 5 digits up to 65535. An empty value is not a host.
pub fn valid_host(v: &[u8]) -> bool {
    let (host_ok, rest) = if v.first() == Some(&b'[') {
        let Some(close) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = std::str::from_utf8(&v[1..close]).ok();
        (
            inner.is_some_and(|s| s.parse::<Ipv6Addr>().is_ok()),
            &v[close + 1..],
        )
    } else {
        // the name ends at its first byte that is not a name byte: `:` (a port follows) or
        // a byte that makes the whole value invalid (`rest` then starts with it)
        let end = super::head::span(v, &HOST_NAME);
        (end > 0 && end <= 253, &v[end..])
    };
    if !host_ok {
        return false;
    }
    match rest.split_first() {
        None => true,
        Some((b':', port)) => {
            !port.is_empty()
                && port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        Some(_) => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    No,
    One,
    Two,
}

fn dot_kind(seg: &[u8]) -> Dot {
    match seg.len() {
        1 if seg == b"." => Dot::One,
        2 if seg == b".." => Dot::Two,
        3 if seg.eq_ignore_ascii_case(b"%2e") => Dot::One,
        4 if seg.eq_ignore_ascii_case(b".%2e") || seg.eq_ignore_ascii_case(b"%2e.") => Dot::Two,
        6 if seg.eq_ignore_ascii_case(b"%2e%2e") => Dot::Two,
        _ => Dot::No,
    }
}

/// True when some segment of `path` is a dot segment (`.`, `..`, or either spelled with `%2e`).
fn has_dot_segment(path: &[u8]) -> bool {
    // why: most paths have neither `.` nor `%`; skip the segment walk for them
    if !path.iter().any(|&b| b == b'.' || b == b'%') {
        return false;
    }
    path.split(|&b| b == b'/').any(|s| dot_kind(s) != Dot::No)
}

fn check_climb(path: &[u8]) -> Result<(), Refusal> {
    if has_dot_segment(path) {
        remove_dot_segments(path).map(|_| ())
    } else {
        Ok(())
    }
}

/// Removes dot segments from an absolute path (`/a/./b/../c` -> `/a/c`, `/a/..` -> `/`),
/// counting `%2e` as `.`. Returns `Ok(None)` when the path has no dot segment (the common case,
/// no allocation) and refuses a path that climbs above the root (`/../x`, `/a/../../x`).
pub fn remove_dot_segments(path: &[u8]) -> Result<Option<Vec<u8>>, Refusal> {
    if !has_dot_segment(path) {
        return Ok(None);
    }
    let body = path.strip_prefix(b"/").unwrap_or(path);
    let segs: Vec<&[u8]> = body.split(|&b| b == b'/').collect();
    let last = segs.len().saturating_sub(1);
    let mut out: Vec<&[u8]> = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        match dot_kind(seg) {
            Dot::No => out.push(seg),
            Dot::One => {
                if i == last {
                    out.push(b"");
                }
            }
            Dot::Two => {
                if out.pop().is_none() {
                    return Err(Refusal::TargetAboveRoot);
                }
                if i == last {
                    out.push(b"");
                }
            }
        }
    }
    let mut p = Vec::with_capacity(path.len());
    for s in &out {
        p.push(b'/');
        p.extend_from_slice(s);
    }
    if p.is_empty() {
        p.push(b'/');
    }
    Ok(Some(p))
}

/// Normalises the request target before routing (dot segments removed, `%2e` counted as a
/// dot, `%2F` kept): routing, cache keys, map lookups and Lua all see the result. Returns the
/// target as received when it changed (for routes with `raw_path`). Refuses a path that climbs
/// above the root or holds bytes a target may not (HTTP/2 requests were not seen by the door).
pub fn normalize_target(req: &mut RequestHeader) -> Result<Option<http::Uri>, Refusal> {
    let path = req.uri.path().as_bytes();
    check_bytes(path)?;
    let Some(mut pq) = remove_dot_segments(path)? else {
        return Ok(None);
    };
    if let Some(q) = req.uri.query() {
        pq.push(b'?');
        pq.extend_from_slice(q.as_bytes());
    }
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(pq).map_err(|_| Refusal::TargetInvalid)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| Refusal::TargetInvalid)?;
    let raw = req.uri.clone();
    req.set_uri(uri);
    Ok(Some(raw))
}

/// For a route with `raw_path: true`: puts the target as received back into the upstream
/// request (only there; everything else keeps the normalised one).
pub fn restore_raw_target(upstream: &mut RequestHeader, raw_path: bool, raw: Option<&http::Uri>) {
    if let (true, Some(u)) = (raw_path, raw) {
        upstream.set_uri(u.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, Refusal> {
        remove_dot_segments(p.as_bytes())
            .map(|o| String::from_utf8(o.unwrap_or_else(|| p.as_bytes().to_vec())).unwrap())
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (raw, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a//../b", "/a/b"),
            ("/a/%2e/b", "/a/b"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2e./b", "/b"),
            ("/a/b/", "/a/b/"),
            ("/", "/"),
            ("/a.b/c..d/...", "/a.b/c..d/..."),
            ("/a/%2e%2e%2fetc", "/a/%2e%2e%2fetc"),
        ] {
            assert_eq!(norm(raw), Ok(want.to_string()), "{raw}");
        }
    }

    #[test]
    fn paths_without_dot_segments_are_not_copied() {
        assert_eq!(remove_dot_segments(b"/register?x=1.2"), Ok(None));
        assert_eq!(remove_dot_segments(b"/a%2Fb/c"), Ok(None));
        assert_eq!(remove_dot_segments(b"/v1.2/x"), Ok(None));
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/a/../../b",
            "/a/./../..",
            "/.%2E/x",
        ] {
            assert_eq!(norm(raw), Err(Refusal::TargetAboveRoot), "{raw}");
        }
    }

    #[test]
    fn targets_with_control_bytes_spaces_or_bad_escapes_are_refused() {
        for raw in [
            &b"/a b"[..],
            b"/a\x01",
            b"/a\x7f",
            b"/a\tb",
            b"/caf\xc3\xa9",
            b"/a#frag",
            b"/a%2",
            b"/a%zz",
            b"/a%",
            b" /x",
            b"",
        ] {
            assert!(
                check(raw, false).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn target_forms_are_classified() {
        assert_eq!(check(b"/a?b=%2F", false), Ok(Form::Origin));
        assert_eq!(check(b"*", true), Ok(Form::Asterisk));
        assert_eq!(check(b"*", false), Err(Refusal::TargetInvalid));
        assert_eq!(
            check(b"http://a.test:8080/x?y", false),
            Ok(Form::Absolute {
                authority: (7, 18),
                rest: 18
            })
        );
        assert_eq!(
            check(b"HTTPS://a.test", false),
            Ok(Form::Absolute {
                authority: (8, 14),
                rest: 14
            })
        );
        assert_eq!(
            check(b"http://u@a.test/", false),
            Err(Refusal::TargetInvalid)
        );
        assert_eq!(check(b"http:///x", false), Err(Refusal::TargetInvalid));
        assert_eq!(check(b"ftp://a.test/x", false), Err(Refusal::TargetInvalid));
        assert_eq!(check(b"a.test:443", false), Err(Refusal::TargetInvalid));
        assert_eq!(
            check(b"http://a.test/../x", false),
            Err(Refusal::TargetAboveRoot)
        );
        assert_eq!(check(b"http://a b/", false), Err(Refusal::TargetInvalid));
        assert_eq!(check(b"http://a!b/", false), Err(Refusal::HostInvalid));
    }

    #[test]
    fn hosts_are_host_and_optional_port() {
        for ok in [
            &b"a.test"[..],
            b"a.test:8080",
            b"localhost",
            b"127.0.0.1:65535",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"under_score.test",
        ] {
            assert!(valid_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"a b.test",
            b"a.test/evil",
            b"a.test:",
            b"a.test:65536",
            b"a.test:8x",
            b"a.test:123456",
            b"[::1",
            b"[zz::1]",
            b"[::1]x",
            b":80",
            b"a@b",
            b"a.test:80:80",
            b"a\tb",
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn every_accepted_target_byte_survives_pingora_request_parsing() {
        // What reaches the origin is Pingora's serialisation of the target it parsed: every byte
        // the front door lets through must parse and come back out unchanged.
        let mut t = b"/".to_vec();
        t.extend((0x21u8..=0x7e).filter(|&b| TARGET_OK[b as usize] && b != b'%'));
        t.extend_from_slice(b"%2F%2e?");
        t.extend((0x21u8..=0x7e).filter(|&b| TARGET_OK[b as usize] && b != b'%'));
        check(&t, false).unwrap();
        let req = pingora_http::RequestHeader::build("GET", &t, None).unwrap();
        assert_eq!(req.raw_path(), &t[..]);
        assert_eq!(
            req.uri.path_and_query().unwrap().as_str().as_bytes(),
            &t[..]
        );
        for b in [b'"', b'<', b'>', b'`', b'#'] {
            assert_eq!(check(&[b'/', b], false), Err(Refusal::TargetInvalid));
        }
    }
}
