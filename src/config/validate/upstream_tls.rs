//! `upstreams.NAME.tls`: HTTPS to an upstream's servers. Reads and parses the PEM files here,
//! so `check` names a missing or broken file and the runtime only converts parsed PEM.

use super::{resolve, Validator};
use crate::config::spec::UpstreamTlsSpec;
use crate::config::types::UpstreamTls;
use pingora_core::tls::pkey::PKey;
use pingora_core::tls::x509::X509;
use std::path::Path;

impl Validator {
    /// `p` is the key path of the `tls` block; `ip_hosts` tells whether any server's `addr`
    /// is an IP literal (then the name to verify cannot come from `addr`).
    pub(super) fn upstream_tls(
        &mut self,
        p: &str,
        t: &UpstreamTlsSpec,
        base: &Path,
        ip_hosts: bool,
    ) -> UpstreamTls {
        let verify = t.verify.unwrap_or(true);
        let verify_hostname = t.verify_hostname.unwrap_or(true);
        if let Some(sni) = &t.sni {
            if sni.is_empty() || sni.contains(|c: char| c.is_whitespace() || c == '/') {
                self.err(
                    format!("{p}.sni"),
                    format!("{sni:?} is not a host name; write the name in the server's certificate, e.g. \"puppet.example.com\""),
                );
            }
        }
        if verify && verify_hostname && t.sni.is_none() && ip_hosts {
            self.err(
                format!("{p}.sni"),
                "a server addr is an IP address, so there is no host name to send and verify; set sni: to the name in the servers' certificate (e.g. sni: puppet.example.com), or verify_hostname: false",
            );
        }
        let ca_pem = t.ca.as_ref().and_then(|f| {
            let pem = self.read_pem(&format!("{p}.ca"), f, base)?;
            match X509::stack_from_pem(&pem) {
                Ok(certs) if !certs.is_empty() => Some(pem),
                _ => {
                    self.err(
                        format!("{p}.ca"),
                        format!("{f:?} holds no PEM certificate; give a bundle of -----BEGIN CERTIFICATE----- blocks"),
                    );
                    None
                }
            }
        });
        if t.ca.is_some() && !verify {
            self.err(
                format!("{p}.ca"),
                "is set but verify: false ignores it; remove ca or set verify: true",
            );
        }
        let client = match (&t.cert, &t.key) {
            (None, None) => None,
            (Some(_), None) => {
                self.err(
                    format!("{p}.key"),
                    "cert is set without key; add key: with the PEM private key of the client certificate",
                );
                None
            }
            (None, Some(_)) => {
                self.err(
                    format!("{p}.cert"),
                    "key is set without cert; add cert: with the PEM client certificate",
                );
                None
            }
            (Some(c), Some(k)) => {
                let cert = self.read_pem(&format!("{p}.cert"), c, base);
                let key = self.read_pem(&format!("{p}.key"), k, base);
                let cert = cert.filter(|pem| match X509::stack_from_pem(pem) {
                    Ok(v) if !v.is_empty() => true,
                    _ => {
                        self.err(
                            format!("{p}.cert"),
                            format!("{c:?} holds no PEM certificate; give the client certificate (then its intermediates) in PEM"),
                        );
                        false
                    }
                });
                let key = key.filter(|pem| {
                    if PKey::private_key_from_pem(pem).is_ok() {
                        true
                    } else {
                        self.err(
                            format!("{p}.key"),
                            format!("{k:?} holds no unencrypted PEM private key; give the key of cert in PEM without a passphrase"),
                        );
                        false
                    }
                });
                cert.zip(key)
            }
        };
        UpstreamTls {
            ca_pem,
            verify,
            verify_hostname,
            sni: t.sni.clone(),
            client,
        }
    }

    fn read_pem(&mut self, key: &str, file: &str, base: &Path) -> Option<Vec<u8>> {
        let path = resolve(base, file);
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                self.err(
                    key.to_string(),
                    format!(
                        "{file:?} cannot be read ({}: {e}); give the path of a PEM file (relative to the config file's folder)",
                        path.display()
                    ),
                );
                None
            }
        }
    }
}
