//! One HTTP/1.x connection through the front door: read a head (bounded in size and time),
//! check it, refuse or hand it to Pingora as the session's pipelined prefix, and take the stream
//! back for the next request on the connection (the loop Pingora's own `ServerApp` runs).

use super::chunked::ChunkValidator;
use super::guard::ChunkGuard;
use super::head::{self, Framing, HeadEnd, Progress};
use super::target::{self, Form};
use super::{FrontDoor, Refusal, Shared};
use crate::error::{failure_response, Failure};
use crate::lifecycle::Phase;
use bytes::{Buf, BytesMut};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a kept-alive connection may sit idle before its next request: Pingora's default,
/// which floodgate does not change (it only turns keep-alive off while draining).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// First allocation for a head; most heads fit.
const HEAD_BUF: usize = 4096;
/// A chunked body is read ahead (and checked) up to this many bytes before the request goes on,
/// so that a short body with bad framing is refused before anything reaches the origin.
const CHUNK_PREREAD: usize = 16 * 1024;
/// After a refusal: how long and how much to keep reading (and dropping) what the client still
/// sends, so the kernel does not answer it with a reset that would destroy our answer.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

enum Next {
    /// Bytes for Pingora (head, and whatever body came with it), and the chunk check to carry
    /// on with while the rest of a chunked body streams.
    Request(BytesMut, Option<ChunkValidator>),
    /// The client left, or stayed idle past its time: close without an answer.
    Closed,
    /// Refuse with this reason; the bytes are what was read (for the log line).
    Refuse(Refusal, BytesMut),
}

fn peer(stream: &Stream) -> Option<SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

pub(super) async fn serve(
    fd: &Arc<FrontDoor>,
    mut stream: Stream,
    door: usize,
    shutdown: &ShutdownWatch,
) {
    let accepted = Instant::now();
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut first = true;
    // made at the first keep-alive wait (a connection with one request never needs it)
    let mut idle: Option<IdleWait> = None;
    loop {
        let (buf, check) =
            match read_request(&fd.shared, &mut stream, &mut idle, door, first, accepted).await {
                Next::Request(buf, check) => (buf, check),
                Next::Closed => return,
                Next::Refuse(reason, seen) => {
                    refuse(&fd.shared, stream, door, reason, &seen).await;
                    return;
                }
            };
        let stream_in = match check {
            Some(check) => {
                let shared = fd.shared.clone();
                let client = peer(&stream);
                let line = super::refusal::printable_line(&buf).into_bytes();
                ChunkGuard::wrap(
                    stream,
                    check,
                    Box::new(move |what| {
                        log::debug!("chunked body refused while streaming: {what}");
                        // status 0: Pingora closes the connection without an answer
                        shared.report(door, client, Refusal::ChunkSyntax, 0, &line);
                    }),
                )
            }
            None => stream,
        };
        let mut session = ServerSession::new_http1(stream_in);
        match settings.take() {
            Some(s) => s.apply_to_session(&mut session),
            None => {
                // as Pingora's own HTTP/1 loop does for a new connection
                session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                session.set_keepalive_reuses_remaining(fd.keepalive_limit);
            }
        }
        // why: Pingora parses the head from this prefix instead of reading the socket again;
        // it never enables pipelining, so the previous session left no prefix of its own
        session.set_pipelined_prefix(buf);
        let Some(reused) = fd.proxy.process_new_http(session, shutdown).await else {
            return;
        };
        let (s, next_settings) = reused.consume();
        stream = ChunkGuard::unwrap(s);
        settings = next_settings;
        first = false;
    }
}

/// The keep-alive wait's two wake-ups besides the socket, made once per connection rather than
/// once per request: the process reaching [`Phase::Stopping`], and an idle timer that may run
/// early (it is only moved when it fires, so a busy connection does not re-arm a timer for
/// every request).
struct IdleWait {
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleWait {
    fn new(mut phase: watch::Receiver<Phase>, first_deadline: Instant) -> Self {
        IdleWait {
            stop: Box::pin(async move {
                // a closed channel (the process state gone) also ends the wait
                let _ = phase.wait_for(|p| *p == Phase::Stopping).await;
            }),
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
        }
    }
}

/// Waits for the next request's first bytes on a kept-alive connection: `None` when the
/// process is stopping or the connection stayed idle until `idle_until`.
async fn wait_read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    idle: &mut IdleWait,
    idle_until: Instant,
) -> Option<std::io::Result<usize>> {
    // why: an idle kept-alive connection stays open through the drain (its next request is
    // answered with `Connection: close`) and closes when the process stops; closing it at the
    // shutdown broadcast races a client that is just sending its next request, which then sees
    // a reset (src/lifecycle/handoff.rs).
    loop {
        tokio::select! {
            biased;
            r = stream.read_buf(buf) => return Some(r),
            _ = idle.stop.as_mut() => return None,
            _ = idle.timer.as_mut() => {
                // the timer was set for an earlier request's idle time: move it on
                if Instant::now() >= idle_until {
                    return None;
                }
                idle.timer.as_mut().reset(idle_until);
            }
        }
    }
}

/// Reads and checks one request head (and the start of a chunked body).
async fn read_request(
    shared: &Shared,
    stream: &mut Stream,
    idle: &mut Option<IdleWait>,
    door: usize,
    first: bool,
    accepted: Instant,
) -> Next {
    let Some(d) = shared.doors.get(door) else {
        return Next::Closed;
    };
    let mut buf = BytesMut::with_capacity(HEAD_BUF);
    let mut end = HeadEnd::default();
    // why: on a new connection the head timeout runs from the accept (as HAProxy's
    // `timeout http-request`); on a kept-alive one, from the first byte of the request
    let idle_until = if first {
        accepted + d.header_timeout
    } else {
        Instant::now() + KEEPALIVE_IDLE
    };
    let mut deadline = first.then_some(idle_until);
    let (head_len, parsed) = loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(HEAD_BUF);
        }
        match deadline {
            None => {
                let idle = idle.get_or_insert_with(|| {
                    IdleWait::new(shared.state.phase.subscribe(), idle_until)
                });
                let read = match wait_read(stream, &mut buf, idle, idle_until).await {
                    Some(r) => r,
                    None => return Next::Closed,
                };
                match read {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => deadline = Some(Instant::now() + d.header_timeout),
                }
            }
            Some(dl) if buf.is_empty() && first => {
                // a new connection that has sent nothing yet: close quietly at the deadline
                match tokio::time::timeout_at(dl, stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Next::Closed,
                }
            }
            Some(dl) => match tokio::time::timeout_at(dl, stream.read_buf(&mut buf)).await {
                Err(_) => return Next::Refuse(Refusal::HeaderTimeout, buf),
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
                Ok(Ok(_)) => {}
            },
        }
        // RFC 9112 §2.2: ignore empty lines before the request line
        if buf.starts_with(b"\r\n") {
            while buf.starts_with(b"\r\n") {
                buf.advance(2);
            }
            end = HeadEnd::default();
            if buf.is_empty() && !first {
                deadline = None;
            }
        }
        // why: a head usually comes whole in its first read: one pass reads and checks it.
        // Anything else (a part, a refusal, a head past the limits) goes the incremental way,
        // which decides as before; a client dripping bytes is scanned once, not once per read.
        if end.is_fresh() {
            if let Some(h) = head::parse_whole(&buf, &d.limits) {
                break (h.len, Some(h));
            }
        }
        match end.advance(&buf, &d.limits) {
            Progress::Incomplete => {}
            Progress::Complete(n) => break (n, None),
            Progress::Refused(r) => return Next::Refuse(r, buf),
        }
    };

    let head = match parsed {
        Some(h) => h,
        None => match head::parse(&buf[..head_len], &d.limits) {
            Ok(h) => h,
            Err(r) => return Next::Refuse(r, buf),
        },
    };
    let method = &buf[head.method.0..head.method.1];
    if method == b"CONNECT" {
        return Next::Refuse(Refusal::ConnectMethod, buf);
    }
    let form = match target::check(&buf[head.target.0..head.target.1], method == b"OPTIONS") {
        Ok(f) => f,
        Err(r) => return Next::Refuse(r, buf),
    };
    let check = if head.framing == Framing::Chunked {
        let mut v = ChunkValidator::new();
        let mut fed = head_len;
        loop {
            match v.feed(&buf[fed..]) {
                Err(what) => {
                    log::debug!("chunked body refused: {what}");
                    return Next::Refuse(Refusal::ChunkSyntax, buf);
                }
                Ok(Some(_)) => break None,
                Ok(None) => fed = buf.len(),
            }
            // why: a client that sent `Expect: 100-continue` waits for us before the body
            if head.expect_continue || buf.len() - head_len >= CHUNK_PREREAD {
                break Some(v);
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(HEAD_BUF);
            }
            let dl = deadline.unwrap_or(idle_until);
            match tokio::time::timeout_at(dl, stream.read_buf(&mut buf)).await {
                // a slow body streams on under the guard rather than waiting here
                Err(_) => break Some(v),
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
                Ok(Ok(_)) => {}
            }
        }
    } else {
        None
    };
    if let Form::Absolute { authority, rest } = form {
        let rewritten = head::to_origin_form(&buf, &head, authority, rest);
        buf = BytesMut::from(&rewritten[..]);
    }
    Next::Request(buf, check)
}

/// Answers a refusal with `Connection: close`, counts and logs it, and closes the connection
/// after draining what the client still sends (bounded).
async fn refuse(shared: &Shared, mut stream: Stream, door: usize, reason: Refusal, seen: &[u8]) {
    let r = failure_response(&Failure::Refused(reason), "-");
    let phrase = http::StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    shared.report(door, peer(&stream), reason, r.status, seen);
    let answer = format!(
        "HTTP/1.1 {} {phrase}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        r.status,
        r.content_type,
        r.body.len(),
        r.body
    );
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    pingora_core::protocols::Shutdown::shutdown(&mut *stream).await;
    let until = Instant::now() + LINGER_TIME;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4;
    use tokio::net::{TcpListener, TcpStream};

    /// A kept-alive connection between requests: our end, the client's socket, the process
    /// phase, and the wait armed for an earlier request's deadline `first` from the start.
    struct Waiting {
        ours: Stream,
        client: TcpStream,
        phase: watch::Sender<Phase>,
        idle: IdleWait,
        buf: BytesMut,
        start: Instant,
    }

    impl Waiting {
        async fn new(first: Duration) -> Self {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (ours, _) = l.accept().await.unwrap();
            let (phase, rx) = watch::channel(Phase::Running);
            let start = Instant::now();
            Waiting {
                ours: Box::new(L4::from(ours)),
                client,
                phase,
                idle: IdleWait::new(rx, start + first),
                buf: BytesMut::with_capacity(64),
                start,
            }
        }

        /// One wait, this request's idle deadline `until` from the start.
        async fn wait(&mut self, until: Duration) -> Option<std::io::Result<usize>> {
            let until = self.start + until;
            wait_read(&mut self.ours, &mut self.buf, &mut self.idle, until).await
        }

        fn secs(&self) -> u64 {
            self.start.elapsed().as_secs()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_wait_ends_at_the_requests_deadline_not_the_timers_first_one() {
        // armed for an earlier request's deadline, 1 s away; this request's is 3 s away
        let mut w = Waiting::new(Duration::from_secs(1)).await;
        assert!(
            w.wait(Duration::from_secs(3)).await.is_none(),
            "idle past the deadline closes"
        );
        assert_eq!(w.secs(), 3, "at the request's deadline");
        // the same timer serves the next wait, moved on again
        assert!(w.wait(Duration::from_secs(8)).await.is_none());
        assert_eq!(w.secs(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_wait_returns_bytes_and_ends_when_the_process_stops() {
        let mut w = Waiting::new(Duration::from_secs(60)).await;
        w.client.write_all(b"GET").await.unwrap();
        let r = w.wait(Duration::from_secs(60)).await;
        assert!(matches!(r, Some(Ok(3))), "{r:?}");
        assert_eq!(&w.buf[..], b"GET");
        // draining keeps an idle connection waiting; stopping ends the wait
        let phase = w.phase.clone();
        tokio::spawn(async move {
            phase.send_replace(Phase::Draining);
            tokio::time::sleep(Duration::from_secs(2)).await;
            phase.send_replace(Phase::Stopping);
            tokio::time::sleep(Duration::from_secs(600)).await;
        });
        assert!(w.wait(Duration::from_secs(60)).await.is_none());
        assert_eq!(w.secs(), 2, "at the stop, not the idle deadline");
    }
}
