//! Request headers only floodgate may set: a client's copy is removed in every spelling.
//!
//! Rack (Puma, Passenger) and CGI fold `_` and `-` and ignore case (`SSL_CLIENT_VERIFY` and
//! `ssl-client-verify` both become `HTTP_SSL_CLIENT_VERIFY`), so removing one spelling is not
//! enough: a forged `SSL_CLIENT_S_DN` or `REMOTE_USER-EMAIL` would reach the app as the real
//! thing. Two groups:
//! - identity families ([`OWNED_PREFIXES`]): every header whose name, with `_` read as `-`,
//!   starts with one of them (client-certificate headers in Foreman's and Puppet's styles, and
//!   the `REMOTE-USER*` family Foreman's Apache vhost unsets);
//! - forwarding headers floodgate sets itself ([`SET_BY_FLOODGATE`]): their underscore
//!   spellings (the dash spelling is the one floodgate appends to or replaces).

/// Header name prefixes (lowercase, `-` form) that identify a client to the app.
pub const OWNED_PREFIXES: &[&str] = &[
    "ssl-client-",
    "remote-user",
    "x-client-verify",
    "x-client-dn",
    "x-client-cert",
];

/// Headers floodgate sets (lowercase, `-` form); a client's underscore spelling is removed.
pub const SET_BY_FLOODGATE: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
];

/// Whether a client-sent header named `name` (lowercase, as `http` stores it) must not
/// reach the upstream.
pub fn must_strip(name: &str) -> bool {
    let b = name.as_bytes();
    // why: nearly every request has only ordinary headers; one byte test skips them.
    if !matches!(b.first(), Some(b's' | b'r' | b'x')) {
        return false;
    }
    if OWNED_PREFIXES
        .iter()
        .any(|p| starts_with_folded(b, p.as_bytes()))
    {
        return true;
    }
    b.contains(&b'_') && SET_BY_FLOODGATE.iter().any(|h| eq_folded(b, h.as_bytes()))
}

fn fold(c: u8) -> u8 {
    match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    }
}

fn starts_with_folded(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(a, b)| fold(*a) == *b)
}

/// `name` equals `other` (lowercase, `-` form) with `_` read as `-` and case ignored.
pub fn eq_folded(name: &[u8], other: &[u8]) -> bool {
    name.len() == other.len() && starts_with_folded(name, other)
}

#[cfg(test)]
mod tests {
    use super::must_strip;

    #[test]
    fn every_spelling_of_identity_headers_is_stripped() {
        for h in [
            "ssl-client-verify",
            "ssl_client_verify",
            "ssl_client-s-dn",
            "ssl-client-cert",
            "remote-user",
            "remote_user",
            "remote_user-email",
            "remote-user_groups",
            "x-client-verify",
            "x_client_dn",
            "x-client-cert",
        ] {
            assert!(must_strip(h), "{h} must be stripped");
        }
    }

    #[test]
    fn underscore_spellings_of_forwarding_headers_are_stripped_but_not_the_real_ones() {
        for h in [
            "x_forwarded_for",
            "x_forwarded-proto",
            "x_request_id",
            "x-forwarded_host",
        ] {
            assert!(must_strip(h), "{h} must be stripped");
        }
        for h in [
            "x-forwarded-for",
            "x-request-id",
            "accept",
            "x-node-name",
            "remote-addr-x",
            "sslclientverify",
            "x_custom_header",
        ] {
            assert!(!must_strip(h), "{h} is kept");
        }
    }
}
