//! A strict reader of HTTP/1.x request heads, on the raw bytes: where the head ends (found
//! incrementally, so a client dripping bytes costs linear time), then one pass over it that
//! checks the request line, every header line and the framing and `Host` rules of RFC 9112.
//!
//! Pingora parses the same bytes again afterwards (with httparse, which accepts bare LF,
//! repeated `Transfer-Encoding` and more); everything here is stricter, so a head that passes
//! means the same thing to both readers.

use super::refusal::Refusal;

/// Per-listener limits (from `listeners[].front_door`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest head in bytes (request line, header lines, blank line).
    pub max_head: usize,
    pub max_fields: usize,
    /// Longest request line in bytes, without its CRLF.
    pub max_request_line: usize,
    /// Let `Transfer-Encoding: chunked` win over `Content-Length` instead of refusing both.
    pub allow_length_with_chunked: bool,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A head that passed every check; ranges are byte offsets into the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head including the blank line.
    pub len: usize,
    pub method: (usize, usize),
    pub target: (usize, usize),
    pub version: (usize, usize),
    pub http10: bool,
    pub framing: Framing,
    /// `Expect: 100-continue` (the client may wait before sending the body).
    pub expect_continue: bool,
    /// The whole `Host` line, CRLF included.
    pub host_line: Option<(usize, usize)>,
    /// Offset of the first header line.
    pub fields_start: usize,
}

/// The end of a head found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    Incomplete,
    /// The head is the first `n` bytes.
    Complete(usize),
    Refused(Refusal),
}

/// Incremental search for the blank line that ends a head, with the size limits applied on the
/// way (so an endless head is refused at the limit, not buffered).
#[derive(Debug, Default)]
pub struct HeadEnd {
    scanned: usize,
    first_lf: Option<usize>,
}

impl HeadEnd {
    /// Nothing of this head scanned yet.
    pub fn is_fresh(&self) -> bool {
        self.scanned == 0 && self.first_lf.is_none()
    }

    /// Looks at `buf` (the bytes received so far, leading blank lines already dropped).
    pub fn advance(&mut self, buf: &[u8], limits: &Limits) -> Progress {
        let mut i = self.scanned;
        while let Some(off) = memchr::memchr(b'\n', &buf[i..]) {
            let lf = i + off;
            if self.first_lf.is_none() {
                self.first_lf = Some(lf);
                if lf > limits.max_request_line + 1 {
                    return Progress::Refused(Refusal::RequestLineTooLong);
                }
            }
            let end = match (buf.get(lf + 1), buf.get(lf + 2)) {
                (Some(b'\n'), _) => Some(lf + 2),
                (Some(b'\r'), Some(b'\n')) => Some(lf + 3),
                (None, _) | (Some(b'\r'), None) => {
                    // why: the byte(s) deciding whether a blank line follows are not here yet
                    self.scanned = lf;
                    return self.incomplete(buf, limits);
                }
                _ => None,
            };
            if let Some(end) = end {
                if end > limits.max_head {
                    return Progress::Refused(Refusal::HeaderTooLarge);
                }
                return Progress::Complete(end);
            }
            i = lf + 1;
        }
        self.scanned = buf.len();
        self.incomplete(buf, limits)
    }

    fn incomplete(&self, buf: &[u8], limits: &Limits) -> Progress {
        if self.first_lf.is_none() && buf.len() > limits.max_request_line + 1 {
            Progress::Refused(Refusal::RequestLineTooLong)
        } else if buf.len() >= limits.max_head {
            Progress::Refused(Refusal::HeaderTooLarge)
        } else {
            Progress::Incomplete
        }
    }
}

const fn tchar_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
}

/// Field-value bytes: HTAB, SP, VCHAR and obs-text (no other control byte, no DEL).
const fn value_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b == 0x09 || (b >= 0x20 && b != 0x7f);
        b += 1;
    }
    t
}

static TCHAR: [bool; 256] = tchar_table();
static VALUE: [bool; 256] = value_table();

/// How many leading bytes of `s` are in `set`: eight at a time while all are, then one by one.
#[inline]
pub(super) fn span(s: &[u8], set: &[bool; 256]) -> usize {
    let mut i = 0;
    for c in s.chunks_exact(8) {
        let all = c.iter().fold(true, |ok, &b| ok & set[b as usize]);
        if !all {
            break;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .position(|&b| !set[b as usize])
        .unwrap_or(s.len() - i)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Checks the request line `line` (without CRLF); returns (method, target, version, http10).
#[allow(clippy::type_complexity)]
fn request_line(
    line: &[u8],
) -> Result<((usize, usize), (usize, usize), (usize, usize), bool), Refusal> {
    let sp1 = memchr::memchr(b' ', line).ok_or(Refusal::RequestLine)?;
    let sp2 = memchr::memrchr(b' ', line).ok_or(Refusal::RequestLine)?;
    if sp1 == 0 || sp2 == sp1 || sp2 == sp1 + 1 {
        return Err(Refusal::RequestLine);
    }
    if !line[..sp1].iter().all(|&b| TCHAR[b as usize]) {
        return Err(Refusal::RequestLine);
    }
    let version = &line[sp2 + 1..];
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            return Err(Refusal::HttpVersion)
        }
        _ => return Err(Refusal::RequestLine),
    };
    Ok(((0, sp1), (sp1 + 1, sp2), (sp2 + 1, line.len()), http10))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Checks a complete head (`head` ends with its blank line; leading blank lines were dropped).
/// Does not look at the target's contents: see [`super::target::check`].
pub fn parse(head: &[u8], limits: &Limits) -> Result<Head, Refusal> {
    parse_prefix(head, limits)?.ok_or(Refusal::BareLf)
}

/// A head that came whole in one read, read and checked in one pass: [`parse_prefix`] with
/// [`HeadEnd`]'s limits. `None` for anything else (a part, a refusal, a head past the limits),
/// which the incremental way then decides as it always did.
pub fn parse_whole(buf: &[u8], limits: &Limits) -> Option<Head> {
    let h = parse_prefix(buf, limits).ok()??;
    (h.len <= limits.max_head && h.version.1 <= limits.max_request_line).then_some(h)
}

/// [`parse`] on the bytes received so far: `Ok(None)` when they end before the head does. The
/// size limits are [`HeadEnd`]'s; a caller that skips it checks them on the result.
pub fn parse_prefix(head: &[u8], limits: &Limits) -> Result<Option<Head>, Refusal> {
    let Some(lf) = memchr::memchr(b'\n', head) else {
        return Ok(None);
    };
    if lf == 0 || head[lf - 1] != b'\r' {
        return Err(Refusal::BareLf);
    }
    let rl_end = lf - 1;
    let (method, target, version, http10) = request_line(&head[..rl_end])?;
    let fields_start = rl_end + 2;
    let mut pos = fields_start;
    let mut fields = 0usize;
    let (mut hosts, mut lengths, mut encodings) = (0u32, 0u32, 0u32);
    let mut host: Option<&[u8]> = None;
    let mut host_line = None;
    let mut length: Option<&[u8]> = None;
    let mut encoding: Option<&[u8]> = None;
    let mut expect_continue = false;
    loop {
        match head.get(pos) {
            Some(b'\r') => match head.get(pos + 1) {
                Some(b'\n') => break,
                None => return Ok(None),
                Some(_) => return Err(Refusal::HeaderSyntax),
            },
            Some(b'\n') => return Err(Refusal::BareLf),
            None => return Ok(None),
            Some(b' ' | b'\t') => return Err(Refusal::ObsFold),
            Some(_) => {}
        }
        fields += 1;
        if fields > limits.max_fields {
            return Err(Refusal::TooManyHeaders);
        }
        // why: slice scans without per-byte bounds checks; this loop runs for every request
        let j = pos + span(&head[pos..], &TCHAR);
        match head.get(j) {
            Some(b':') if j > pos => {}
            None => return Ok(None),
            // a bare LF inside the name
            Some(b'\n') => return Err(Refusal::BareLf),
            // a space before the colon, a missing colon, an empty name
            Some(_) => return Err(Refusal::HeaderSyntax),
        }
        let name = &head[pos..j];
        let vstart = j + 1;
        // the first byte that is not a field-value byte must be the CR of a CRLF
        let k = vstart + span(&head[vstart..], &VALUE);
        let cr = match (head.get(k), head.get(k + 1)) {
            (Some(b'\r'), Some(b'\n')) => k,
            (None, _) | (Some(b'\r'), None) => return Ok(None),
            (Some(b'\n'), _) => return Err(Refusal::BareLf),
            (Some(_), _) => return Err(Refusal::HeaderSyntax),
        };
        let value = trim_ows(&head[vstart..cr]);
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                host = Some(value);
                host_line = Some((pos, cr + 2));
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                length = Some(value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                encodings += 1;
                encoding = Some(value);
            }
            _ => {}
        }
        pos = cr + 2;
    }

    match (hosts, host) {
        (0, _) if !http10 => return Err(Refusal::HostMissing),
        (2.., _) => return Err(Refusal::HostDuplicate),
        (1, Some(h)) if !h.is_empty() && !super::target::valid_host(h) => {
            return Err(Refusal::HostInvalid)
        }
        _ => {}
    }
    if encodings > 0 && lengths > 0 && !limits.allow_length_with_chunked {
        return Err(Refusal::LengthAndChunked);
    }
    if encodings > 1 {
        return Err(Refusal::TransferEncodingDuplicate);
    }
    if encodings == 1 && http10 {
        return Err(Refusal::TransferEncodingHttp10);
    }
    if lengths > 1 {
        return Err(Refusal::ContentLengthDuplicate);
    }
    let length = match length {
        Some(v) => Some(parse_length(v).ok_or(Refusal::ContentLengthInvalid)?),
        None => None,
    };
    let framing = match (encoding, length) {
        (Some(te), _) if te.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (Some(_), _) => return Err(Refusal::TransferEncodingUnsupported),
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::None,
    };
    Ok(Some(Head {
        len: pos + 2,
        method,
        target,
        version,
        http10,
        framing,
        expect_continue,
        host_line,
        fields_start,
    }))
}

/// Rewrites an absolute-form request (`GET http://a.test/x HTTP/1.1`) to origin-form with the
/// target's authority as the only `Host` (RFC 9112 §3.2.2: the authority wins), so routing,
/// the upstream and the logs never see two disagreeing hosts. `buf` starts with the head that
/// `head` describes; bytes after it (body, next request) are kept. `authority` and `rest` are
/// offsets into the target, as [`super::target::Form::Absolute`] gives them.
pub fn to_origin_form(buf: &[u8], head: &Head, authority: (usize, usize), rest: usize) -> Vec<u8> {
    let t = head.target.0;
    let auth = &buf[t + authority.0..t + authority.1];
    let path = &buf[t + rest..head.target.1];
    let mut out = Vec::with_capacity(buf.len() + auth.len() + 8);
    out.extend_from_slice(&buf[head.method.0..head.method.1]);
    out.push(b' ');
    if path.first() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out.push(b' ');
    out.extend_from_slice(&buf[head.version.0..head.version.1]);
    out.extend_from_slice(b"\r\nHost: ");
    out.extend_from_slice(auth);
    out.extend_from_slice(b"\r\n");
    match head.host_line {
        Some((s, e)) => {
            out.extend_from_slice(&buf[head.fields_start..s]);
            out.extend_from_slice(&buf[e..]);
        }
        None => out.extend_from_slice(&buf[head.fields_start..]),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head: 32 * 1024,
            max_fields: 100,
            max_request_line: 8 * 1024,
            allow_length_with_chunked: false,
        }
    }

    fn p(head: &str) -> Result<Head, Refusal> {
        parse(head.as_bytes(), &limits())
    }

    fn refused(head: &str) -> Refusal {
        p(head).expect_err(head)
    }

    #[test]
    fn a_prefix_is_incomplete_until_the_blank_line() {
        let full = b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc";
        let end = full.len() - 3;
        for n in 0..end {
            assert_eq!(parse_prefix(&full[..n], &limits()), Ok(None), "{n} bytes");
        }
        let h = parse_prefix(full, &limits()).unwrap().unwrap();
        assert_eq!(h.len, end);
        assert_eq!(Ok(h), parse(&full[..end], &limits()));
        assert_eq!(
            parse_prefix(b"GET / HTTP/1.1\r\nHost: a\nX", &limits()),
            Err(Refusal::BareLf),
            "a bare LF is refused before the head ends"
        );
        assert!(parse_whole(&full[..end], &limits()).is_some());
        let small = Limits {
            max_request_line: 10,
            ..limits()
        };
        assert!(
            parse_whole(&full[..end], &small).is_none(),
            "past a limit: the slow way"
        );
        let small = Limits {
            max_head: end - 1,
            ..limits()
        };
        assert!(parse_whole(&full[..end], &small).is_none());
    }

    #[test]
    fn a_plain_request_is_read() {
        let h = p("GET /x?y HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::None);
        assert!(!h.http10);
        assert_eq!(h.target, (4, 8));
        assert_eq!(h.method, (0, 3));
        assert_eq!(h.host_line, Some((19, 33)));
        assert_eq!(h.len, 48);
        let h = p("POST / HTTP/1.1\r\nHost: a\r\ncontent-length:  12 \r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(12));
        let h = p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\t\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = p("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(h.http10, "HTTP/1.0 may omit Host");
        let h = p("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert!(h.expect_continue);
        assert!(
            p("GET / HTTP/1.1\r\nHost:\r\n\r\n").is_ok(),
            "an empty Host is valid"
        );
        assert!(parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n",
            &limits()
        )
        .is_ok());
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        use Refusal::*;
        for (head, want) in [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", LengthAndChunked),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", LengthAndChunked),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n", TransferEncodingUnsupported),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", TransferEncodingUnsupported),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", TransferEncodingUnsupported),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingDuplicate),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingHttp10),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", ContentLengthDuplicate),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", ContentLengthInvalid),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", ContentLengthInvalid),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", ContentLengthInvalid),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", ContentLengthInvalid),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\nTransfer-Encoding: chunked\r\n\r\n", BareLf),
        ] {
            assert_eq!(refused(head), want, "{head:?}");
        }
        let mut legacy = limits();
        legacy.allow_length_with_chunked = true;
        let h = parse(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            &legacy,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked, "chunked wins when allowed");
    }

    #[test]
    fn malformed_lines_are_refused() {
        use Refusal::*;
        for (head, want) in [
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", BareLf),
            ("GET / HTTP/1.1\r\nHost: a\n\r\n", BareLf),
            ("GET / HTTP/1.1\r\nHost: a\r\n\n", BareLf),
            ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", ObsFold),
            ("GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n", HeaderSyntax),
            ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", HeaderSyntax),
            ("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", HeaderSyntax),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", HeaderSyntax),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
                HeaderSyntax,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
                HeaderSyntax,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX\x01: y\r\n\r\n",
                HeaderSyntax,
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", HeaderSyntax),
            ("GET /\r\n\r\n", RequestLine),
            (" GET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestLine),
            ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", RequestLine),
            ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", RequestLine),
            ("GET / http/1.1\r\nHost: a\r\n\r\n", RequestLine),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", HttpVersion),
            ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", HttpVersion),
            ("GET / HTTP/1.1\r\n\r\n", HostMissing),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                HostDuplicate,
            ),
            ("GET / HTTP/1.1\r\nHost: a b.test\r\n\r\n", HostInvalid),
            ("GET / HTTP/1.1\r\nHost: a.test/evil\r\n\r\n", HostInvalid),
            ("GET / HTTP/1.1\r\nHost: u@a.test\r\n\r\n", HostInvalid),
        ] {
            assert_eq!(refused(head), want, "{head:?}");
        }
    }

    #[test]
    fn two_spaces_leave_a_space_in_the_target_for_the_target_check() {
        let h = p("GET  /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(h.target, (4, 7), "the target starts with a space");
        let h = p("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(h.target, (4, 8));
    }

    #[test]
    fn field_count_is_limited() {
        let mut l = limits();
        l.max_fields = 3;
        let ok = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(parse(ok.as_bytes(), &l).is_ok());
        let over = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(parse(over.as_bytes(), &l), Err(Refusal::TooManyHeaders));
    }

    fn origin(raw: &str) -> String {
        let h = p(raw.split_inclusive("\r\n\r\n").next().unwrap()).unwrap();
        let t = &raw.as_bytes()[h.target.0..h.target.1];
        let super::super::target::Form::Absolute { authority, rest } =
            super::super::target::check(t, false).unwrap()
        else {
            panic!("not absolute-form: {raw}")
        };
        String::from_utf8(to_origin_form(raw.as_bytes(), &h, authority, rest)).unwrap()
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_the_authority_as_host() {
        assert_eq!(
            origin("GET http://a.test:8080/x?y=1 HTTP/1.1\r\nHost: other.test\r\nAccept: */*\r\n\r\nBODY"),
            "GET /x?y=1 HTTP/1.1\r\nHost: a.test:8080\r\nAccept: */*\r\n\r\nBODY"
        );
        assert_eq!(
            origin("OPTIONS HTTPS://a.test?q HTTP/1.0\r\nX: 1\r\n\r\n"),
            "OPTIONS /?q HTTP/1.0\r\nHost: a.test\r\nX: 1\r\n\r\n"
        );
        assert_eq!(
            origin("GET http://a.test HTTP/1.1\r\nA: 1\r\nHost: a.test\r\nB: 2\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: a.test\r\nA: 1\r\nB: 2\r\n\r\n"
        );
    }

    fn feed(end: &mut HeadEnd, buf: &[u8], l: &Limits) -> Progress {
        end.advance(buf, l)
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let l = limits();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        for split in 1..head.len() {
            let mut end = HeadEnd::default();
            let first = feed(&mut end, &head[..split], &l);
            if split >= 27 {
                assert_eq!(first, Progress::Complete(27), "split {split}");
                continue;
            }
            assert_eq!(first, Progress::Incomplete, "split {split}");
            assert_eq!(
                feed(&mut end, head, &l),
                Progress::Complete(27),
                "split {split}"
            );
        }
        let mut end = HeadEnd::default();
        assert_eq!(
            feed(&mut end, b"GET / HTTP/1.1\nHost: a\n\nX", &l),
            Progress::Complete(24),
            "bare-LF heads end too (and are refused by parse)"
        );
    }

    #[test]
    fn oversized_heads_are_refused_before_they_complete() {
        let l = Limits {
            max_head: 100,
            max_fields: 10,
            max_request_line: 20,
            allow_length_with_chunked: false,
        };
        let mut end = HeadEnd::default();
        assert_eq!(
            feed(&mut end, b"GET /aaaaaaaaaaaaaaaaaaaaa", &l),
            Progress::Refused(Refusal::RequestLineTooLong)
        );
        let mut end = HeadEnd::default();
        assert_eq!(
            feed(
                &mut end,
                b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n",
                &l
            ),
            Progress::Refused(Refusal::RequestLineTooLong)
        );
        let mut end = HeadEnd::default();
        let exact = b"GET /aaaaaa HTTP/1.1\r\n"; // 20 bytes before CRLF
        assert_eq!(feed(&mut end, exact, &l), Progress::Incomplete);
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 100));
        let mut end = HeadEnd::default();
        assert_eq!(
            feed(&mut end, &big, &l),
            Progress::Refused(Refusal::HeaderTooLarge)
        );
        let mut end = HeadEnd::default();
        let mut whole = b"GET / HTTP/1.1\r\nX: ".to_vec();
        whole.extend(std::iter::repeat_n(b'a', 78));
        whole.extend_from_slice(b"\r\n\r\n");
        assert_eq!(whole.len(), 101);
        assert_eq!(
            feed(&mut end, &whole, &l),
            Progress::Refused(Refusal::HeaderTooLarge)
        );
        whole.remove(20);
        let mut end = HeadEnd::default();
        assert_eq!(feed(&mut end, &whole, &l), Progress::Complete(100));
    }
}
