//! Why the front door refused a request, and how a refusal is made visible: one access-log
//! line and one increment of `floodgate_requests_refused_total{listener,reason}`.
//!
//! The HTTP status of each reason is chosen in [`crate::error::failure_response`] (the one
//! failure-to-status mapping); this module only names the reasons and renders the log line.

use crate::config::ListenerConfig;
use crate::config::LogFormat;
use crate::state::AppState;
use std::net::SocketAddr;
use std::time::SystemTime;

/// One reason to refuse a request before it reaches routing. The `reason()` strings are the
/// `reason` label of `floodgate_requests_refused_total` and the `reason=` field of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The request line is not `METHOD SP target SP HTTP/x.y` (400).
    RequestLine,
    /// A well-formed version other than HTTP/1.0 and HTTP/1.1 (505).
    HttpVersion,
    /// A control byte, space, non-ASCII byte, `#` or invalid percent-escape in the target, or a
    /// target form the method does not allow (400).
    TargetInvalid,
    /// The path climbs above the root after removing dot segments (400).
    TargetAboveRoot,
    /// CONNECT (tunnels are not proxied) (405).
    ConnectMethod,
    /// A line of the header section ends in a bare LF (400).
    BareLf,
    /// An obsolete folded header line (starts with a space or tab) (400).
    ObsFold,
    /// A header line that is not `token ":" value`, or a control byte in a value (400).
    HeaderSyntax,
    /// HTTP/1.1 without `Host` (400).
    HostMissing,
    /// More than one `Host` (400).
    HostDuplicate,
    /// A `Host` (or absolute-form authority) that is not `host[:port]` (400).
    HostInvalid,
    /// `Content-Length` that is not one decimal number (400).
    ContentLengthInvalid,
    /// More than one `Content-Length` line (400).
    ContentLengthDuplicate,
    /// Both `Content-Length` and `Transfer-Encoding` (400) unless the listener allows it.
    LengthAndChunked,
    /// More than one `Transfer-Encoding` line (400).
    TransferEncodingDuplicate,
    /// `Transfer-Encoding` other than exactly `chunked` (501).
    TransferEncodingUnsupported,
    /// `Transfer-Encoding` on an HTTP/1.0 request (400).
    TransferEncodingHttp10,
    /// A chunked body that breaks RFC 9112 §7.1 syntax (400, or a close once streaming).
    ChunkSyntax,
    /// The request line is longer than `max_request_line` (414).
    RequestLineTooLong,
    /// The request head is larger than `max_header_size` (431).
    HeaderTooLarge,
    /// More header fields than `max_header_fields` (431).
    TooManyHeaders,
    /// The head did not arrive within `header_timeout` (408).
    HeaderTimeout,
}

impl Refusal {
    /// Every reason, so the counter can be exported at 0 for each from the start.
    pub const ALL: [Refusal; 22] = [
        Refusal::RequestLine,
        Refusal::HttpVersion,
        Refusal::TargetInvalid,
        Refusal::TargetAboveRoot,
        Refusal::ConnectMethod,
        Refusal::BareLf,
        Refusal::ObsFold,
        Refusal::HeaderSyntax,
        Refusal::HostMissing,
        Refusal::HostDuplicate,
        Refusal::HostInvalid,
        Refusal::ContentLengthInvalid,
        Refusal::ContentLengthDuplicate,
        Refusal::LengthAndChunked,
        Refusal::TransferEncodingDuplicate,
        Refusal::TransferEncodingUnsupported,
        Refusal::TransferEncodingHttp10,
        Refusal::ChunkSyntax,
        Refusal::RequestLineTooLong,
        Refusal::HeaderTooLarge,
        Refusal::TooManyHeaders,
        Refusal::HeaderTimeout,
    ];

    /// Short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::RequestLine => "request_line",
            Refusal::HttpVersion => "http_version",
            Refusal::TargetInvalid => "target_invalid",
            Refusal::TargetAboveRoot => "target_above_root",
            Refusal::ConnectMethod => "connect_method",
            Refusal::BareLf => "bare_lf",
            Refusal::ObsFold => "obs_fold",
            Refusal::HeaderSyntax => "header_syntax",
            Refusal::HostMissing => "host_missing",
            Refusal::HostDuplicate => "host_duplicate",
            Refusal::HostInvalid => "host_invalid",
            Refusal::ContentLengthInvalid => "content_length_invalid",
            Refusal::ContentLengthDuplicate => "content_length_duplicate",
            Refusal::LengthAndChunked => "length_and_chunked",
            Refusal::TransferEncodingDuplicate => "transfer_encoding_duplicate",
            Refusal::TransferEncodingUnsupported => "transfer_encoding_unsupported",
            Refusal::TransferEncodingHttp10 => "transfer_encoding_http10",
            Refusal::ChunkSyntax => "chunk_syntax",
            Refusal::RequestLineTooLong => "request_line_too_long",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::HeaderTimeout => "header_timeout",
        }
    }

    /// One sentence for the body of the refusal.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::RequestLine => "malformed request line",
            Refusal::HttpVersion => "HTTP version not supported",
            Refusal::TargetInvalid => "invalid request target",
            Refusal::TargetAboveRoot => "the path climbs above the root",
            Refusal::ConnectMethod => "CONNECT is not supported",
            Refusal::BareLf => "header lines must end in CRLF",
            Refusal::ObsFold => "folded header lines are not accepted",
            Refusal::HeaderSyntax => "malformed header field",
            Refusal::HostMissing => "HTTP/1.1 requests need a Host header",
            Refusal::HostDuplicate => "more than one Host header",
            Refusal::HostInvalid => "invalid Host",
            Refusal::ContentLengthInvalid => "invalid Content-Length",
            Refusal::ContentLengthDuplicate => "more than one Content-Length",
            Refusal::LengthAndChunked => "Content-Length together with Transfer-Encoding",
            Refusal::TransferEncodingDuplicate => "more than one Transfer-Encoding",
            Refusal::TransferEncodingUnsupported => "only Transfer-Encoding: chunked is supported",
            Refusal::TransferEncodingHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            Refusal::ChunkSyntax => "malformed chunked body",
            Refusal::RequestLineTooLong => "request line too long",
            Refusal::HeaderTooLarge => "request header section too large",
            Refusal::TooManyHeaders => "too many header fields",
            Refusal::HeaderTimeout => "the request head did not arrive in time",
        }
    }
}

/// What the access log says about one refusal.
#[derive(Debug, Clone)]
pub struct RefusalRecord<'a> {
    pub listener: &'a str,
    pub client: Option<SocketAddr>,
    pub reason: Refusal,
    /// The status sent, or 0 when the connection was closed without an answer.
    pub status: u16,
    /// The start of the request as received (escaped and cut when rendered).
    pub request_line: &'a [u8],
}

/// Longest part of a refused request line that is written to the log.
const LOGGED_LINE: usize = 200;

/// The request line as printable ASCII: up to the first CR/LF, at most [`LOGGED_LINE`] bytes
/// of it, every other byte escaped (`\x00`, `\t`), quotes escaped so the field stays one token.
pub fn printable_line(raw: &[u8]) -> String {
    let end = raw
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(raw.len());
    let cut = end.min(LOGGED_LINE);
    let mut s = String::with_capacity(cut + 8);
    for &b in &raw[..cut] {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if end > cut {
        s.push_str("...");
    }
    s
}

/// Renders the access-log line of a refusal in the configured format. Combined keeps the
/// layout of the request lines (`client - - [time] "line" status bytes ...`) with
/// `served=refused`, the reason and the listener.
pub fn render(format: LogFormat, rec: &RefusalRecord<'_>, now: SystemTime) -> String {
    let time = humantime::format_rfc3339_millis(now);
    let client = rec
        .client
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "-".into());
    let line = printable_line(rec.request_line);
    match format {
        LogFormat::Combined => format!(
            "{client} - - [{time}] \"{line}\" {} 0 \"-\" \"-\" route=- upstream=- server=- served=refused reason={} listener={}",
            rec.status,
            rec.reason.reason(),
            rec.listener,
        ),
        LogFormat::Json => serde_json::json!({
            "time": time.to_string(),
            "client": client,
            "request": line,
            "status": rec.status,
            "bytes": 0,
            "served": "refused",
            "reason": rec.reason.reason(),
            "listener": rec.listener,
        })
        .to_string(),
    }
}

/// Counts a refusal and writes its access-log line (when the access log is on).
pub fn report(state: &AppState, rec: &RefusalRecord<'_>) {
    state
        .metrics
        .requests_refused
        .with_label_values(&[rec.listener, rec.reason.reason()])
        .inc();
    let snap = state.snapshot();
    let cfg = &snap.config.access_log;
    if cfg.enabled && log::log_enabled!(target: crate::logging::ACCESS_TARGET, log::Level::Info) {
        log::info!(target: crate::logging::ACCESS_TARGET, "{}", render(cfg.format, rec, SystemTime::now()));
    }
}

/// The name of the listener whose address is `local` (the first listener if none matches).
pub fn listener_name(listeners: &[ListenerConfig], local: Option<SocketAddr>) -> &str {
    let matches = |l: &&ListenerConfig| {
        let (Some(local), Ok(b)) = (local, l.bind.parse::<SocketAddr>()) else {
            return false;
        };
        b.port() == local.port() && (b.ip().is_unspecified() || b.ip() == local.ip())
    };
    listeners
        .iter()
        .find(matches)
        .or(listeners.first())
        .map_or("-", |l| l.name.as_str())
}

/// Counts and logs a refusal decided inside the proxy (after Pingora parsed the request).
pub fn report_session(
    state: &AppState,
    session: &pingora_proxy::Session,
    reason: Refusal,
    status: u16,
) {
    let sock = session.digest().and_then(|d| d.socket_digest.clone());
    let local = sock
        .as_ref()
        .and_then(|s| s.local_addr().and_then(|a| a.as_inet()).copied());
    let client = sock
        .as_ref()
        .and_then(|s| s.peer_addr().and_then(|a| a.as_inet()).copied());
    let snap = state.snapshot();
    let req = session.req_header();
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let line = format!("{} {target} {:?}", req.method, req.version);
    report(
        state,
        &RefusalRecord {
            listener: listener_name(&snap.config.listeners, local),
            client,
            reason,
            status,
            request_line: line.as_bytes(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: &[u8]) -> RefusalRecord<'_> {
        RefusalRecord {
            listener: "public",
            client: Some("192.0.2.7:51000".parse().unwrap()),
            reason: Refusal::LengthAndChunked,
            status: 400,
            request_line: line,
        }
    }

    #[test]
    fn reasons_are_distinct_snake_case_labels() {
        let mut seen = std::collections::HashSet::new();
        for r in Refusal::ALL {
            let s = r.reason();
            assert!(seen.insert(s), "duplicate label {s}");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
                "{s} is not snake_case"
            );
            assert!(!r.message().is_empty());
        }
    }

    #[test]
    fn combined_line_names_reason_client_and_listener() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let line = render(
            LogFormat::Combined,
            &rec(b"POST /x HTTP/1.1\r\nHost: a\r\n"),
            t,
        );
        assert_eq!(
            line,
            "192.0.2.7 - - [2023-11-14T22:13:20.000Z] \"POST /x HTTP/1.1\" 400 0 \"-\" \"-\" \
             route=- upstream=- server=- served=refused reason=length_and_chunked listener=public"
        );
    }

    #[test]
    fn json_line_carries_the_same_fields() {
        let line = render(
            LogFormat::Json,
            &rec(b"GET /\x01 HTTP/1.1"),
            SystemTime::UNIX_EPOCH,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["reason"], "length_and_chunked");
        assert_eq!(v["listener"], "public");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["status"], 400);
        assert_eq!(v["served"], "refused");
        assert_eq!(v["request"], "GET /\\x01 HTTP/1.1");
    }

    #[test]
    fn hostile_request_lines_are_escaped_and_cut() {
        assert_eq!(printable_line(b"GET /\"a\\ b\tc"), "GET /\\\"a\\\\ b\\x09c");
        let long = vec![b'a'; 5000];
        let p = printable_line(&long);
        assert_eq!(p.len(), LOGGED_LINE + 3);
        assert!(p.ends_with("..."));
        assert_eq!(printable_line(b""), "");
        let unknown = RefusalRecord {
            client: None,
            status: 0,
            ..rec(b"\xff\xfe")
        };
        let line = render(LogFormat::Combined, &unknown, SystemTime::UNIX_EPOCH);
        assert!(line.starts_with("- - - ["), "{line}");
        assert!(line.contains("\"\\xff\\xfe\" 0 0"), "{line}");
    }
}
