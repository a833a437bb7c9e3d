//! A strict validator of the chunked transfer coding (RFC 9112 §7.1), fed the body bytes in
//! order as they arrive, in pieces of any size.
//!
//! Accepted: `1*HEXDIG` sizes (at most 16 digits), extensions `*( BWS ";" BWS name [ BWS "="
//! BWS ( token / quoted-string ) ] )`, data followed by exactly CRLF, and a trailer section of
//! `name: value` lines ended by CRLF. Refused: whitespace that is not before `;`/`=` (so `5 `
//! as a size line), bare LF or CR, control bytes, over-long size lines, over-long trailers.
//! Pingora re-frames the body towards the origin, so an extension or trailer never reaches it
//! verbatim; this check exists so that a lenient reading is refused rather than guessed at.

/// Longest accepted chunk-size line (size and extensions, without CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest accepted trailer section.
pub const MAX_TRAILER: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Expecting the first hex digit of a size.
    SizeStart,
    Size,
    /// Whitespace after the size or an extension value: only `;` (or more whitespace) may follow.
    WsBeforeSemi,
    /// After `;`: optional whitespace, then a name.
    NameStart,
    Name,
    /// Whitespace after a name: `;`, `=` or more whitespace.
    WsAfterName,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ValueStart,
    Token,
    Quoted,
    QuotedEscape,
    /// After the closing quote of a value: `;`, whitespace or the end of the line.
    AfterQuoted,
    /// CR of the size line seen.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

/// Validation state between pieces of the body.
#[derive(Debug, Clone)]
pub struct ChunkValidator {
    st: St,
    size: u64,
    digits: u8,
    line: usize,
    remaining: u64,
    trailer: usize,
}

impl Default for ChunkValidator {
    fn default() -> Self {
        Self::new()
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Bytes allowed in a trailer value and in quoted strings: HTAB, SP, VCHAR, obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b >= 0x20 && b != 0x7f
}

impl ChunkValidator {
    pub fn new() -> Self {
        ChunkValidator {
            st: St::SizeStart,
            size: 0,
            digits: 0,
            line: 0,
            remaining: 0,
            trailer: 0,
        }
    }

    /// True once the last chunk and the trailer section were read.
    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// Feeds the next bytes of the body. `Ok(Some(n))`: the body ended after `n` of them (the
    /// rest belongs to whatever follows); `Ok(None)`: all consumed, more expected; `Err`: the
    /// syntax is broken (what, for the debug log). Feeding after the end consumes nothing.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, &'static str> {
        if self.st == St::Done {
            return Ok(Some(0));
        }
        let mut i = 0;
        while i < buf.len() {
            if self.st == St::Data {
                // why: skip the payload in one step; only the framing is inspected byte by byte
                let take =
                    (buf.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                i += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.st = St::DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            if self.in_size_line() {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err("chunk-size line too long");
                }
            } else if self.in_trailer() {
                self.trailer += 1;
                if self.trailer > MAX_TRAILER {
                    return Err("trailer section too large");
                }
            }
            self.st = match (self.st, b) {
                (St::SizeStart | St::Size, h) if h.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > 16 {
                        return Err("chunk size too large");
                    }
                    let d = (h as char).to_digit(16).unwrap_or(0);
                    self.size = (self.size << 4) | u64::from(d);
                    St::Size
                }
                (St::SizeStart, _) => return Err("chunk size must start with a hex digit"),
                (St::Size | St::WsBeforeSemi, w) if is_ws(w) => St::WsBeforeSemi,
                (
                    St::Size
                    | St::WsBeforeSemi
                    | St::WsAfterName
                    | St::Name
                    | St::Token
                    | St::AfterQuoted,
                    b';',
                ) => St::NameStart,
                (St::Size | St::Name | St::Token | St::AfterQuoted, b'\r') => St::SizeLf,
                (St::NameStart, w) if is_ws(w) => St::NameStart,
                (St::NameStart | St::Name, t) if is_tchar(t) => St::Name,
                (St::Name | St::WsAfterName, w) if is_ws(w) => St::WsAfterName,
                (St::Name | St::WsAfterName, b'=') => St::ValueStart,
                (St::ValueStart, w) if is_ws(w) => St::ValueStart,
                (St::ValueStart, b'"') => St::Quoted,
                (St::ValueStart | St::Token, t) if is_tchar(t) => St::Token,
                (St::Token | St::AfterQuoted, w) if is_ws(w) => St::WsBeforeSemi,
                (St::Quoted, b'"') => St::AfterQuoted,
                (St::Quoted, b'\\') => St::QuotedEscape,
                (St::Quoted | St::QuotedEscape, q) if is_field_byte(q) => St::Quoted,
                (St::SizeLf, b'\n') => {
                    self.line = 0;
                    self.digits = 0;
                    if self.size == 0 {
                        St::TrailerStart
                    } else {
                        self.remaining = self.size;
                        self.size = 0;
                        St::Data
                    }
                }
                (St::DataCr, b'\r') => St::DataLf,
                (St::DataLf, b'\n') => St::SizeStart,
                (St::TrailerStart, b'\r') => St::FinalLf,
                (St::TrailerStart | St::TrailerName, t) if is_tchar(t) => St::TrailerName,
                (St::TrailerName, b':') => St::TrailerValue,
                (St::TrailerValue, b'\r') => St::TrailerLf,
                (St::TrailerValue, v) if is_field_byte(v) => St::TrailerValue,
                (St::TrailerLf, b'\n') => St::TrailerStart,
                (St::FinalLf, b'\n') => {
                    self.st = St::Done;
                    return Ok(Some(i));
                }
                (_, b'\n') => return Err("bare LF in chunked framing"),
                _ => return Err("invalid byte in chunked framing"),
            };
        }
        Ok(None)
    }

    fn in_size_line(&self) -> bool {
        matches!(
            self.st,
            St::SizeStart
                | St::Size
                | St::WsBeforeSemi
                | St::NameStart
                | St::Name
                | St::WsAfterName
                | St::ValueStart
                | St::Token
                | St::Quoted
                | St::QuotedEscape
                | St::AfterQuoted
                | St::SizeLf
        )
    }

    fn in_trailer(&self) -> bool {
        matches!(
            self.st,
            St::TrailerStart | St::TrailerName | St::TrailerValue | St::TrailerLf | St::FinalLf
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` whole, then again one byte at a time, and checks both agree.
    fn run(body: &[u8]) -> Result<Option<usize>, &'static str> {
        let whole = ChunkValidator::new().feed(body);
        let mut v = ChunkValidator::new();
        let mut bytewise = Ok(None);
        for (i, b) in body.iter().enumerate() {
            match v.feed(std::slice::from_ref(b)) {
                Ok(Some(_)) => {
                    bytewise = Ok(Some(i + 1));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    bytewise = Err(e);
                    break;
                }
            }
        }
        assert_eq!(whole.is_err(), bytewise.is_err(), "{body:?}");
        if let (Ok(a), Ok(b)) = (whole, bytewise) {
            assert_eq!(a, b, "{body:?}");
        }
        whole
    }

    #[test]
    fn well_formed_bodies_end_where_they_end() {
        for body in [
            &b"0\r\n\r\n"[..],
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5;ext=1\r\nhello\r\n0\r\n\r\n",
            b"5 ; a = \"q\\\"x\" ; b\r\nhello\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n000\r\n\r\n",
            b"5\r\nhello\r\n0\r\nChecksum: abc\r\nX: y z\r\n\r\n",
            b"0;last\r\n\r\n",
        ] {
            assert_eq!(
                run(body),
                Ok(Some(body.len())),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bytes_after_the_last_chunk_are_not_consumed() {
        let body = b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(run(body), Ok(Some(11)));
        let mut v = ChunkValidator::new();
        assert_eq!(v.feed(&body[..11]), Ok(Some(11)));
        assert!(v.is_done());
        assert_eq!(v.feed(b"more"), Ok(Some(0)));
    }

    #[test]
    fn incomplete_bodies_ask_for_more() {
        for body in [
            &b"5\r\nhel"[..],
            b"5",
            b"5\r\nhello\r\n",
            b"0\r\n",
            b"0\r\nX: y\r\n",
        ] {
            assert_eq!(run(body), Ok(None), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn lenient_framing_is_refused() {
        for body in [
            &b"5 \r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"\r\n5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"0\r\nbad header\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(
                run(body).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn size_lines_and_trailers_are_bounded() {
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        line.extend_from_slice(b"\r\n");
        assert_eq!(run(&line), Err("chunk-size line too long"));
        let mut t = b"0\r\nX: ".to_vec();
        t.extend(std::iter::repeat_n(b'a', MAX_TRAILER));
        assert_eq!(run(&t), Err("trailer section too large"));
        assert_eq!(
            run(b"ffffffffffffffff\r\n"),
            Ok(None),
            "16 digits fit a u64"
        );
    }
}
