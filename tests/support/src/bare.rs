//! A bare Pingora reverse proxy: the framework's cost floor for `benches/proxy.sh`.
//!
//! This is a benchmark baseline, not a product feature. It is the smallest proxy that
//! Pingora 0.9.1 supports: one [`ProxyHttp`] impl whose `upstream_peer` picks the single
//! upstream through a [`LoadBalancer<RoundRobin>`], and Pingora's defaults for everything
//! else. It adds no headers, keeps no metrics, writes no access log, and uses the default
//! upstream keep-alive pool and read buffers. Only the thread count is set, so it matches
//! the other contenders. The CPU and memory that floodgate uses above this proxy, measured
//! in the same run, are floodgate's own cost.
//!
//! Started by the test kit's `bare-proxy` binary. SIGINT exits at once.
//! SIGTERM is Pingora's graceful stop, which includes its default grace period of 300 s.

use async_trait::async_trait;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_load_balancing::{selection::RoundRobin, LoadBalancer};
use pingora_proxy::{ProxyHttp, Session};
use std::convert::Infallible;
use std::sync::Arc;

/// The proxy logic: every request goes to the one backend of the load balancer.
struct BareProxy(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        // The key does not matter for round robin.
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream backend"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

/// Runs the bare proxy on `listen` (plain HTTP), forwarding to `upstream` (`host:port`) with
/// `threads` worker threads. Blocks until the process exits. It returns only when the
/// arguments are rejected or the server cannot be created.
pub fn run_bare_proxy(listen: &str, upstream: &str, threads: usize) -> Result<Infallible, String> {
    if threads == 0 {
        return Err("threads must be at least 1".into());
    }
    let lb = LoadBalancer::<RoundRobin>::try_from_iter([upstream])
        .map_err(|e| format!("upstream {upstream}: {e}"))?;
    let mut server = Server::new(None).map_err(|e| e.to_string())?;
    server.bootstrap();
    let mut proxy =
        pingora_proxy::http_proxy_service(&server.configuration, BareProxy(Arc::new(lb)));
    proxy.add_tcp(listen);
    // Server::new(None) leaves ServerConf::threads at 1. The thread count set on the service
    // changes only this service's runtime. The upstream keep-alive pool is capped at
    // upstream_keepalive_pool_size (128) x ServerConf::threads, so it stays at 128 connections.
    proxy.threads = Some(threads);
    server.add_service(proxy);
    server.run_forever()
}
