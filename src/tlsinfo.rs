//! Client-certificate identity from TLS listeners, forwarded to upstreams the way Foreman's
//! Apache vhost does (`SSL-CLIENT-S-DN`, `SSL-CLIENT-CERT`, `SSL-CLIENT-VERIFY`), so an app
//! behind floodgate sees the same headers it saw behind Apache.

use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use std::any::Any;
use std::sync::Arc;

/// What the handshake told us about the client's certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCert {
    /// Subject as `CN=host.example.com,O=Org` (Apache's `SSL_CLIENT_S_DN` order, comma-joined).
    pub subject_dn: String,
    /// The certificate as PEM with its newlines turned into spaces (header-safe; Foreman's
    /// parser accepts PEM with any whitespace).
    pub pem_flat: String,
    /// `SUCCESS`, `NONE` or `FAILED:reason` (as Apache's `SSL_CLIENT_VERIFY`).
    pub verify: String,
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
                subject_dn: String::new(),
                pem_flat: String::new(),
                verify: "NONE".into(),
            },
            Some(cert) => {
                let subject_dn = cert
                    .subject_name()
                    .entries()
                    .map(|e| {
                        let key = e.object().nid().short_name().unwrap_or("?");
                        let val = String::from_utf8_lossy(e.data().as_slice()).into_owned();
                        format!("{key}={val}")
                    })
                    .collect::<Vec<_>>()
                    .join(",");
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
                ClientCert {
                    subject_dn,
                    pem_flat: pem.trim().replace('\n', " "),
                    verify,
                }
            }
        };
        Some(Arc::new(info))
    }
}
