//! HTTPS to upstream servers: turns a validated [`UpstreamTls`] into the options of Pingora's
//! own connector on the server's [`HttpPeer`], so requests and health checks share one TLS
//! setup (CA store, verification, SNI, client certificate).

use crate::config::{ServerAddr, ServerConfig, UpstreamTls};
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
        self.peer_at(&server.addr, &server.host)
    }

    /// A TLS peer for `addr`, whose name is `host` (the default SNI and name to verify).
    /// Also the map poller's peer for an `https://` source, so it speaks TLS as upstreams do.
    pub fn peer_at(&self, addr: &ServerAddr, host: &str) -> HttpPeer {
        // why: Pingora turns verification off when the SNI is empty, so with verify on
        // the SNI is always set (validation refuses an IP addr without `sni:`).
        let sni = self.cfg.sni.clone().unwrap_or_else(|| host.to_string());
        let mut peer = server_peer(addr, true, sni);
        peer.options.verify_cert = self.cfg.verify;
        peer.options.verify_hostname = self.cfg.verify && self.cfg.verify_hostname;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer
    }
}

/// A peer for `addr`: TCP or a Unix socket (Pingora's `HttpPeer::new_uds`).
pub fn server_peer(addr: &ServerAddr, tls: bool, sni: String) -> HttpPeer {
    match addr {
        ServerAddr::Inet(a) => HttpPeer::new(*a, tls, sni),
        ServerAddr::Unix(path) => {
            let path = path.to_string_lossy();
            HttpPeer::new_uds(&path, tls, sni.clone()).unwrap_or_else(|e| {
                // why: only a path longer than sun_path (108 bytes) fails here; validation
                // refuses such paths, so this peer is never used.
                log::error!("unix socket {path}: {e}");
                HttpPeer::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), tls, sni)
            })
        }
    }
}
