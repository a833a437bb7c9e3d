//! Rule conditions (`if:`), compiled from the config and tested per request without parsing.

use super::Facts;
use http::{HeaderMap, HeaderName};

/// A regular expression compared by its source (configs compare equal when their text does).
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// What a header condition asks of the header's value (any of its lines may satisfy it).
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    Present,
    Equals(String),
    Prefix(String),
    Matches(Pattern),
}

/// A condition; `All` of an empty list holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// The client certificate verified and its CN is one of these (exact, case-sensitive).
    CertCn(Vec<String>),
    /// The client certificate verified (`true`), or there is none or it did not (`false`).
    CertVerified(bool),
    Header(HeaderName, HeaderTest),
    /// Upper-case method names.
    Method(Vec<String>),
    PathPrefix(Vec<String>),
    Not(Box<Cond>),
    All(Vec<Cond>),
}

impl Cond {
    /// Whether the condition holds for this request, reading header conditions from
    /// `headers` (the request on its way upstream, or the answer on its way out).
    pub fn holds(&self, f: &Facts, headers: &HeaderMap) -> bool {
        match self {
            Cond::CertCn(names) => f
                .cert
                .is_some_and(|c| c.verified() && names.contains(&c.cn)),
            Cond::CertVerified(want) => f.cert.is_some_and(|c| c.verified()) == *want,
            Cond::Header(name, test) => {
                let mut values = headers.get_all(name).iter();
                match test {
                    HeaderTest::Present => values.next().is_some(),
                    HeaderTest::Equals(s) => values.any(|v| v.as_bytes() == s.as_bytes()),
                    HeaderTest::Prefix(s) => values.any(|v| v.as_bytes().starts_with(s.as_bytes())),
                    HeaderTest::Matches(p) => {
                        values.any(|v| v.to_str().is_ok_and(|v| p.0.is_match(v)))
                    }
                }
            }
            Cond::Method(ms) => ms.iter().any(|m| m == f.method),
            Cond::PathPrefix(ps) => ps.iter().any(|p| f.path.starts_with(p.as_str())),
            Cond::Not(c) => !c.holds(f, headers),
            Cond::All(cs) => cs.iter().all(|c| c.holds(f, headers)),
        }
    }
}
