//! HTTPS to upstream servers: turns a validated [`UpstreamTls`] into the options of Pingora's
//! own connector on the server's [`HttpPeer`], so requests and health checks share one TLS
//! setup (CA store, verification, SNI, client certificate).

use crate::config::{ServerConfig, UpstreamTls};
use pingora_core::tls::pkey::PKey;
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use std::sync::Arc;

/// The parsed form of an upstream's `tls:` block, shared by its servers' peers.
#[derive(Clone)]
pub struct PeerTls {
    cfg: UpstreamTls,
    ca: Option<Arc<Box<[X509]>>>,
    client: Option<Arc<CertKey>>,
}

impl PeerTls {
    /// Parses the PEM the validator already read and checked; a file that no longer parses
    /// (it cannot, the bytes are the validated ones) leaves that part out and logs.
    pub fn new(upstream: &str, cfg: &UpstreamTls) -> PeerTls {
        let ca = cfg
            .ca_pem
            .as_ref()
            .and_then(|pem| match X509::stack_from_pem(pem) {
                Ok(certs) => Some(Arc::new(certs.into_boxed_slice())),
                Err(e) => {
                    log::error!("upstream {upstream}: tls.ca does not parse: {e}");
                    None
                }
            });
        let client = cfg.client.as_ref().and_then(|(cert, key)| {
            match (X509::stack_from_pem(cert), PKey::private_key_from_pem(key)) {
                (Ok(certs), Ok(key)) if !certs.is_empty() => {
                    Some(Arc::new(CertKey::new(certs, key)))
                }
                _ => {
                    log::error!("upstream {upstream}: tls.cert/tls.key do not parse");
                    None
                }
            }
        });
        PeerTls {
            cfg: cfg.clone(),
            ca,
            client,
        }
    }

    /// A TLS peer for `server` (its address, SNI and our TLS options).
    pub fn peer(&self, server: &ServerConfig) -> HttpPeer {
        // why: Pingora turns verification off when the SNI is empty, so with verify on
        // the SNI is always set (validation refuses an IP addr without `sni:`).
        let sni = self.cfg.sni.clone().unwrap_or_else(|| server.host.clone());
        let mut peer = HttpPeer::new(server.addr, true, sni);
        peer.options.verify_cert = self.cfg.verify;
        peer.options.verify_hostname = self.cfg.verify && self.cfg.verify_hostname;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer
    }
}
