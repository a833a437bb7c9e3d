//! [`ChunkGuard`]: the downstream stream, wrapped while a chunked request body streams past the
//! front door, so that bad chunk syntax arriving after the head becomes a read error (Pingora
//! then aborts the request and closes both connections) instead of Pingora's lenient reading.
//!
//! Only requests whose chunked body did not arrive whole with the head get a guard; the front
//! door takes it off again (`into_any`) before reading the next request, so guards never nest.

use super::chunked::ChunkValidator;
use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Called once when the guard refuses the body (counts and logs the refusal).
pub type OnRefuse = Box<dyn FnOnce(&'static str) + Send + Sync>;

pub struct ChunkGuard {
    inner: Stream,
    check: ChunkValidator,
    failed: bool,
    on_refuse: Option<OnRefuse>,
}

impl ChunkGuard {
    /// Wraps `inner`; `check` has already seen the body bytes that came with the head.
    pub fn wrap(inner: Stream, check: ChunkValidator, on_refuse: OnRefuse) -> Stream {
        Box::new(ChunkGuard {
            inner,
            check,
            failed: false,
            on_refuse: Some(on_refuse),
        })
    }

    /// The stream without its guard (if it has one).
    pub fn unwrap(stream: Stream) -> Stream {
        if !stream.as_any().is::<ChunkGuard>() {
            return stream;
        }
        match stream.into_any().downcast::<ChunkGuard>() {
            Ok(g) => g.inner,
            // why: `is` said it is a guard, so this arm cannot run; there is no stream to return
            Err(_) => unreachable!("downcast after a positive type check"),
        }
    }
}

impl fmt::Debug for ChunkGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkGuard")
            .field("inner", &self.inner)
            .field("done", &self.check.is_done())
            .field("failed", &self.failed)
            .finish()
    }
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "invalid chunked request body")
}

impl AsyncRead for ChunkGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(Err(refused()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if !this.check.is_done() {
            if let Err(what) = this.check.feed(&buf.filled()[before..]) {
                this.failed = true;
                if let Some(f) = this.on_refuse.take() {
                    f(what);
                }
                return Poll::Ready(Err(refused()));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChunkGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for ChunkGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ChunkGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ChunkGuard {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ChunkGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ChunkGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ChunkGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for ChunkGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded(counter: Arc<AtomicUsize>) -> (Stream, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1024);
        let s = ChunkGuard::wrap(
            Box::new(a),
            ChunkValidator::new(),
            Box::new(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (s, b)
    }

    #[tokio::test]
    async fn good_chunks_pass_and_the_guard_comes_off() {
        let n = Arc::new(AtomicUsize::new(0));
        let (mut s, mut peer) = guarded(n.clone());
        peer.write_all(b"3\r\nabc\r\n0\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 64];
        let got = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..got], b"3\r\nabc\r\n0\r\n\r\n");
        let mut s = ChunkGuard::unwrap(s);
        assert!(!s.as_any().is::<ChunkGuard>());
        peer.write_all(b"next").await.unwrap();
        let got = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..got], b"next");
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bad_chunk_syntax_becomes_a_read_error_reported_once() {
        let n = Arc::new(AtomicUsize::new(0));
        let (mut s, mut peer) = guarded(n.clone());
        peer.write_all(b"3\r\nabc\r\n5 \r\nhello").await.unwrap();
        let mut buf = vec![0u8; 64];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(s.read(&mut buf).await.is_err(), "stays failed");
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unwrapping_a_plain_stream_returns_it() {
        let (a, _b) = tokio::io::duplex(16);
        let s: Stream = Box::new(a);
        let s = ChunkGuard::unwrap(s);
        assert!(s.as_any().is::<tokio::io::DuplexStream>());
    }
}
