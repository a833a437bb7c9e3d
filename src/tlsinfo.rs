//! Client-certificate identity from TLS listeners, forwarded to upstreams the way Foreman's
//! Apache vhost does (`SSL-CLIENT-S-DN`, `SSL-CLIENT-CERT`, `SSL-CLIENT-VERIFY`), so an app
//! behind floodgate sees the same headers it saw behind Apache.

use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use std::any::Any;
use std::sync::Arc;

/// What the handshake told us about the client's certificate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientCert {
    /// Subject in RFC 2253 order and escaping, as Apache 2.4's `SSL_CLIENT_S_DN`:
    /// `CN=host1.example.com,O=Example Org,C=US` (empty without a certificate).
    pub subject_dn: String,
    /// Subject in OpenSSL's legacy one-line form, as Apache with `SSLOptions
    /// +LegacyDNStringFormat`: `/C=US/O=Example Org/CN=host1.example.com`.
    pub subject_dn_legacy: String,
    /// Issuer, RFC 2253 (`SSL_CLIENT_I_DN`).
    pub issuer_dn: String,
    /// Issuer, legacy one-line form.
    pub issuer_dn_legacy: String,
    /// The subject's (last) common name (`SSL_CLIENT_S_DN_CN`).
    pub cn: String,
    /// Serial number in upper-case hex (`SSL_CLIENT_M_SERIAL`).
    pub serial: String,
    /// The certificate as PEM, with its newlines (and the final one).
    pub pem: String,
    /// The certificate as PEM with its newlines turned into spaces (header-safe; Foreman's
    /// parser accepts PEM with any whitespace).
    pub pem_flat: String,
    /// `SUCCESS`, `NONE` or `FAILED:reason` (as Apache's `SSL_CLIENT_VERIFY`).
    pub verify: String,
    /// Header values made once per connection (see [`ClientCert::with_values`]).
    pub values: CertValues,
}

/// The largest certificate facts as ready header values, so header rules copy a reference
/// per request instead of re-validating a 2 KB PEM.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CertValues {
    pub pem_flat: Option<http::HeaderValue>,
    /// The PEM URL-encoded (puppetserver's `X-Client-Cert`).
    pub pem_url: Option<http::HeaderValue>,
    pub subject_dn: Option<http::HeaderValue>,
    pub verify: Option<http::HeaderValue>,
}

impl ClientCert {
    /// Fills [`ClientCert::values`] from the text fields.
    pub fn with_values(mut self) -> Self {
        let v = |s: &str| http::HeaderValue::from_str(s).ok();
        let mut pem_url = String::new();
        url_encode(&self.pem, &mut pem_url);
        self.values = CertValues {
            pem_flat: v(&self.pem_flat),
            pem_url: v(&pem_url),
            subject_dn: v(&self.subject_dn),
            verify: v(&self.verify),
        };
        self
    }

    /// The client presented a certificate and it verified.
    pub fn verified(&self) -> bool {
        self.verify == "SUCCESS"
    }
}

/// One `key=value` pair of a distinguished name, in certificate order.
pub type DnEntry = (String, String);

/// RFC 2253: the last RDN first, joined by `,`, with `,+"\<>;` (and a leading `#` or
/// space, or a trailing space) escaped by a backslash, as OpenSSL's `XN_FLAG_RFC2253`.
pub fn dn_rfc2253(entries: &[DnEntry]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in entries.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        let last = v.chars().count().saturating_sub(1);
        for (j, c) in v.chars().enumerate() {
            let edge = (j == 0 && (c == '#' || c == ' ')) || (j == last && c == ' ');
            if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// OpenSSL's legacy one-line form: certificate order, each RDN as `/key=value`.
pub fn dn_legacy(entries: &[DnEntry]) -> String {
    entries.iter().map(|(k, v)| format!("/{k}={v}")).collect()
}

fn dn_entries(name: &pingora_core::tls::x509::X509NameRef) -> Vec<DnEntry> {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?").to_string();
            let val = String::from_utf8_lossy(e.data().as_slice()).into_owned();
            (key, val)
        })
        .collect()
}

/// Request headers floodgate owns: client-sent copies are always removed (anti-spoofing).
pub const OWNED_HEADERS: &[&str] = &[
    "ssl-client-s-dn",
    "ssl-client-cert",
    "ssl-client-verify",
    "remote-user",
    "remote_user",
];

/// TLS callbacks that capture the client certificate after the handshake.
pub struct CaptureClientCert;

#[async_trait]
impl TlsAccept for CaptureClientCert {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let info = match tls.peer_certificate() {
            None => ClientCert {
                verify: "NONE".into(),
                ..ClientCert::default()
            },
            Some(cert) => {
                let subject = dn_entries(cert.subject_name());
                let issuer = dn_entries(cert.issuer_name());
                let pem = cert
                    .to_pem()
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_default();
                let vr = tls.verify_result();
                let verify = if vr == pingora_core::tls::x509::X509VerifyResult::OK {
                    "SUCCESS".to_string()
                } else {
                    format!("FAILED:{}", vr.error_string())
                };
                let serial = cert
                    .serial_number()
                    .to_bn()
                    .ok()
                    .and_then(|b| b.to_hex_str().ok().map(|h| h.to_string()))
                    .unwrap_or_default();
                ClientCert {
                    subject_dn: dn_rfc2253(&subject),
                    subject_dn_legacy: dn_legacy(&subject),
                    issuer_dn: dn_rfc2253(&issuer),
                    issuer_dn_legacy: dn_legacy(&issuer),
                    cn: subject
                        .iter()
                        .rev()
                        .find(|(k, _)| k == "CN")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                    serial,
                    pem_flat: pem.trim().replace('\n', " "),
                    pem,
                    verify,
                    values: CertValues::default(),
                }
            }
        };
        Some(Arc::new(info.with_values()))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (newline becomes `%0A`).
pub fn url_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: &str) -> DnEntry {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn rfc2253_reverses_certificate_order_and_legacy_keeps_it() {
        let dn = [
            e("C", "US"),
            e("O", "Example Org"),
            e("CN", "host1.example.com"),
        ];
        assert_eq!(dn_rfc2253(&dn), "CN=host1.example.com,O=Example Org,C=US");
        assert_eq!(dn_legacy(&dn), "/C=US/O=Example Org/CN=host1.example.com");
    }

    #[test]
    fn rfc2253_escapes_specials_and_edge_spaces() {
        let dn = [e("O", "Acme, Inc."), e("CN", " #a+b ")];
        assert_eq!(dn_rfc2253(&dn), "CN=\\ #a\\+b\\ ,O=Acme\\, Inc.");
    }
}
