//! The map poller's HTTP/1.1 GET client for `http://` and `https://` URLs. HTTPS goes through
//! OpenSSL (the library Pingora links) with the options of a validated `tls:` block
//! ([`UpstreamTls`]): CA bundle, verify on/off, SNI / name to verify, client certificate.

use std::pin::Pin;
use std::time::Duration;

use pingora_core::tls::pkey::PKey;
use pingora_core::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
use pingora_core::tls::tokio_ssl::SslStream;
use pingora_core::tls::x509::store::X509StoreBuilder;
use pingora_core::tls::x509::X509;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::UpstreamTls;

/// Largest accepted response body; larger answers are errors.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Largest accepted response head (status line + headers).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// TLS settings of one source, built once from its `tls:` block (or the defaults: system CA
/// store, verify the certificate and the URL's host name).
pub struct ClientTls {
    connector: SslConnector,
    verify_hostname: bool,
    sni: Option<String>,
}

impl ClientTls {
    /// Builds the OpenSSL context; the PEM was parsed at validation, so errors here are rare.
    pub fn new(t: &UpstreamTls) -> Result<ClientTls, String> {
        let e = |what: &str, err: pingora_core::tls::error::ErrorStack| format!("{what}: {err}");
        let mut b =
            SslConnector::builder(SslMethod::tls_client()).map_err(|x| e("TLS setup", x))?;
        if let Some(ca) = &t.ca_pem {
            let mut store = X509StoreBuilder::new().map_err(|x| e("CA store", x))?;
            for cert in X509::stack_from_pem(ca).map_err(|x| e("CA bundle", x))? {
                store.add_cert(cert).map_err(|x| e("CA bundle", x))?;
            }
            b.set_cert_store(store.build());
        }
        if !t.verify {
            b.set_verify(SslVerifyMode::NONE);
        }
        if let Some((cert, key)) = &t.client {
            let mut chain = X509::stack_from_pem(cert)
                .map_err(|x| e("client cert", x))?
                .into_iter();
            let leaf = chain.next().ok_or("client cert: no certificate")?;
            b.set_certificate(&leaf).map_err(|x| e("client cert", x))?;
            for extra in chain {
                b.add_extra_chain_cert(extra)
                    .map_err(|x| e("client cert chain", x))?;
            }
            let key = PKey::private_key_from_pem(key).map_err(|x| e("client key", x))?;
            b.set_private_key(&key).map_err(|x| e("client key", x))?;
            b.check_private_key()
                .map_err(|x| e("client key does not match cert", x))?;
        }
        Ok(ClientTls {
            connector: b.build(),
            verify_hostname: t.verify && t.verify_hostname,
            sni: t.sni.clone(),
        })
    }

    async fn connect(&self, host: &str, tcp: TcpStream) -> Result<SslStream<TcpStream>, String> {
        let name = self.sni.as_deref().unwrap_or(host);
        let mut cfg = self
            .connector
            .configure()
            .map_err(|x| format!("TLS setup: {x}"))?;
        cfg.set_verify_hostname(self.verify_hostname);
        let ssl = cfg
            .into_ssl(name)
            .map_err(|x| format!("TLS setup for {name:?}: {x}"))?;
        let mut s = SslStream::new(ssl, tcp).map_err(|x| format!("TLS setup: {x}"))?;
        Pin::new(&mut s).connect().await.map_err(|x| {
            let verify = s.ssl().verify_result();
            if verify.as_raw() != 0 {
                format!(
                    "TLS handshake with {name:?} failed: certificate verify failed ({verify}): {x}"
                )
            } else {
                format!("TLS handshake with {name:?} failed: {x}")
            }
        })?;
        Ok(s)
    }
}

/// The connection's byte stream: plain TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Scheme, host, port and request target of an `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    pub(crate) https: bool,
    /// Host without IPv6 brackets, for connecting.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Authority as written, for the Host header.
    pub(crate) authority: String,
    /// Path and query, at least "/".
    pub(crate) target: String,
}

pub(crate) fn parse_url(url: &str) -> Result<HttpUrl, String> {
    let scheme_end = url
        .find("://")
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let scheme = &url[..scheme_end];
    let https = scheme.eq_ignore_ascii_case("https");
    if !https && !scheme.eq_ignore_ascii_case("http") {
        return Err(format!("{url:?}: only http:// and https:// are supported"));
    }
    let rest = &url[scheme_end + 3..];
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..split];
    let mut target = rest[split..].split('#').next().unwrap_or("").to_string();
    if !target.starts_with('/') {
        target.insert(0, '/');
    }
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{url:?}: expected http(s)://host[:port]/path without credentials"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        None if https => 443,
        None => 80,
    };
    Ok(HttpUrl {
        https,
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        target,
    })
}

/// GETs an `http://host[:port]/path` URL (or `https://` with default TLS) with HTTP/1.1 and
/// `Connection: close`. Handles Content-Length, chunked and close-delimited
/// bodies, skips 1xx answers; fails on bodies over [`MAX_BODY_BYTES`], on
/// malformed answers, and when the whole exchange exceeds `timeout`.
/// Returns `(status, body)` for any status: the caller judges non-2xx.
pub async fn http_get(url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    fetch_url(url, timeout, None).await
}

/// [`http_get`] with the TLS settings of the source for `https://` URLs (`None`: system CA
/// store, verify the certificate and host name, no client certificate).
pub async fn fetch_url(
    url: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<(u16, Vec<u8>), String> {
    let u = parse_url(url)?;
    match tokio::time::timeout(timeout, get(&u, tls)).await {
        Ok(r) => r.map_err(|e| format!("GET {url}: {e}")),
        Err(_) => Err(format!("GET {url}: timed out after {timeout:?}")),
    }
}

/// Buffered reader over the response stream.
struct Conn {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes; Ok(0) at EOF.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn need(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err("connection closed before the end of the body".to_string());
            }
        }
        Ok(())
    }

    /// One CRLF-terminated line, consumed, without the CRLF.
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err("chunk header line too long".to_string());
            }
            if self.fill().await? == 0 {
                return Err("connection closed inside a chunk header".to_string());
            }
        }
    }
}

/// Response head fields the body reader needs.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

async fn get(u: &HttpUrl, tls: Option<&ClientTls>) -> Result<(u16, Vec<u8>), String> {
    let tcp = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("connect to {}:{} failed: {e}", u.host, u.port))?;
    let stream: Box<dyn Io> = match (u.https, tls) {
        (false, _) => Box::new(tcp),
        (true, Some(tls)) => Box::new(tls.connect(&u.host, tcp).await?),
        (true, None) => {
            let tls = ClientTls::new(&UpstreamTls {
                ca_pem: None,
                verify: true,
                verify_hostname: true,
                sni: None,
                client: None,
            })?;
            Box::new(tls.connect(&u.host, tcp).await?)
        }
    };
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(16 * 1024),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: floodgate-map-poller\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        u.target, u.authority
    );
    conn.stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let head = loop {
        let head = read_head(&mut conn).await?;
        // 1xx (other than 101) precede the real answer.
        if !(100..200).contains(&head.status) || head.status == 101 {
            break head;
        }
    };
    let body = if head.status == 204 || head.status == 304 {
        Vec::new()
    } else if head.chunked {
        read_chunked(&mut conn).await?
    } else if let Some(len) = head.content_length {
        if len > MAX_BODY_BYTES {
            return Err(format!(
                "body of {len} bytes exceeds the {MAX_BODY_BYTES}-byte limit"
            ));
        }
        conn.need(len).await?;
        conn.buf.truncate(len);
        conn.buf
    } else {
        while conn.fill().await? > 0 {
            if conn.buf.len() > MAX_BODY_BYTES {
                return Err(format!("body exceeds the {MAX_BODY_BYTES}-byte limit"));
            }
        }
        conn.buf
    };
    Ok((head.status, body))
}

async fn read_head(conn: &mut Conn) -> Result<Head, String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&conn.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let mut head = Head {
                    status,
                    content_length: None,
                    chunked: false,
                };
                for h in resp.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let len = value
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad Content-Length {value:?}"))?;
                        head.content_length = Some(len);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        head.chunked = value.to_ascii_lowercase().contains("chunked");
                    }
                }
                conn.buf.drain(..n);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) => {
                if conn.buf.len() > MAX_HEAD_BYTES {
                    return Err("response head too large".to_string());
                }
                if conn.fill().await? == 0 {
                    return Err("connection closed before a complete response head".to_string());
                }
            }
            Err(e) => return Err(format!("malformed response head: {e}")),
        }
    }
}

async fn read_chunked(conn: &mut Conn) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = conn.line().await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            // Trailers end with an empty line; a server closing right after
            // the last chunk is tolerated.
            while !conn.line().await.unwrap_or_default().is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(format!("body exceeds the {MAX_BODY_BYTES}-byte limit"));
        }
        conn.need(size + 2).await?;
        body.extend_from_slice(&conn.buf[..size]);
        if &conn.buf[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_string());
        }
        conn.buf.drain(..size + 2);
    }
}
