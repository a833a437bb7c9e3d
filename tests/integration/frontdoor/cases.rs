//! The hostile table of the front-door tests: (name, request bytes, status, reason).

pub const H: &str = "Host: fd.test\r\n";

/// Every hostile input, by kind: framing, targets, request line, Host, limits, chunk syntax.
pub fn hostile() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let post = |extra: &str, body: &str| -> Vec<u8> {
        format!("POST /p HTTP/1.1\r\n{H}{extra}\r\n{body}").into_bytes()
    };
    let get =
        |target: &str| -> Vec<u8> { format!("GET {target} HTTP/1.1\r\n{H}\r\n").into_bytes() };
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    let smuggled = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: fd.test\r\n\r\n";
    let mut many_fields = format!("GET /many HTTP/1.1\r\n{H}");
    for i in 0..199 {
        many_fields.push_str(&format!("X-F{i}: v\r\n"));
    }
    many_fields.push_str("\r\n");
    let mut fields_101 = format!("GET /many HTTP/1.1\r\n{H}");
    for i in 0..100 {
        fields_101.push_str(&format!("X-F{i}: v\r\n"));
    }
    fields_101.push_str("\r\n");
    let huge = format!(
        "GET /huge HTTP/1.1\r\n{H}X-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let long_line = format!("GET /{} HTTP/1.1\r\n{H}\r\n", "a".repeat(9 * 1024));
    vec![
        // framing ambiguity
        ("CL then TE", post("Content-Length: 40\r\nTransfer-Encoding: chunked\r\n", smuggled), 400, "length_and_chunked"),
        ("TE then CL", post("Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", smuggled), 400, "length_and_chunked"),
        ("CL with TE CHUNKED", post("Content-Length: 40\r\nTransfer-Encoding: CHUNKED\r\n", smuggled), 400, "length_and_chunked"),
        ("CL with TE chunked<TAB>", post("Content-Length: 40\r\nTransfer-Encoding: chunked\t\r\n", smuggled), 400, "length_and_chunked"),
        ("CL with TE <TAB>chunked", post("Content-Length: 40\r\nTransfer-Encoding:\tchunked\r\n", smuggled), 400, "length_and_chunked"),
        ("TE identity, chunked", chunked(smuggled).replace_te("identity, chunked"), 501, "transfer_encoding_unsupported"),
        ("TE chunked, chunked", chunked(smuggled).replace_te("chunked, chunked"), 501, "transfer_encoding_unsupported"),
        ("TE gzip, chunked", chunked(smuggled).replace_te("gzip, chunked"), 501, "transfer_encoding_unsupported"),
        ("TE xchunked", chunked(smuggled).replace_te("xchunked"), 501, "transfer_encoding_unsupported"),
        ("TE twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", smuggled), 400, "transfer_encoding_duplicate"),
        ("TE on HTTP/1.0", format!("POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n{smuggled}").into_bytes(), 400, "transfer_encoding_http10"),
        ("bare LF hides TE", format!("POST /p HTTP/1.1\r\nHost: fd.test\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n{smuggled}").into_bytes(), 400, "bare_lf"),
        ("bare LF request line", b"GET / HTTP/1.1\nHost: fd.test\r\n\r\n".to_vec(), 400, "bare_lf"),
        ("bare LF everywhere", b"GET / HTTP/1.1\nHost: fd.test\n\n".to_vec(), 400, "bare_lf"),
        ("CL twice", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), 400, "content_length_duplicate"),
        ("CL list", post("Content-Length: 5, 5\r\n", "hello"), 400, "content_length_invalid"),
        ("CL negative", post("Content-Length: -1\r\n", ""), 400, "content_length_invalid"),
        ("CL hex", post("Content-Length: 0x5\r\n", "hello"), 400, "content_length_invalid"),
        ("CL with space inside", post("Content-Length: 1 0\r\n", "hello"), 400, "content_length_invalid"),
        ("TE folded", post("Transfer-Encoding: chunked\r\n , identity\r\n", smuggled), 400, "obs_fold"),
        ("space before colon", post("Transfer-Encoding : chunked\r\n", smuggled), 400, "header_syntax"),
        ("bare CR in a value", post("X-A: a\rTransfer-Encoding: chunked\r\n", smuggled), 400, "header_syntax"),
        ("NUL in a value", post("X-A: a\0b\r\n", ""), 400, "header_syntax"),
        ("control byte in a name", post("X-\x01A: b\r\n", ""), 400, "header_syntax"),
        // targets
        ("control byte in target", get("/a\x01b"), 400, "target_invalid"),
        ("space in target", get("/a b"), 400, "target_invalid"),
        ("two spaces in request line", format!("GET  /x HTTP/1.1\r\n{H}\r\n").into_bytes(), 400, "target_invalid"),
        ("tab in target", get("/a\tb"), 400, "target_invalid"),
        ("dot-dot climb", get("/../../etc/passwd"), 400, "target_above_root"),
        ("encoded climb", get("/%2e%2e/%2e%2e/etc/passwd"), 400, "target_above_root"),
        ("climb after a segment", get("/a/../../b"), 400, "target_above_root"),
        ("mixed encoded climb", get("/.%2E/x"), 400, "target_above_root"),
        ("bad escape", get("/a%zz"), 400, "target_invalid"),
        ("cut escape", get("/a%2"), 400, "target_invalid"),
        ("fragment", get("/a#frag"), 400, "target_invalid"),
        ("raw UTF-8", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: fd.test\r\n\r\n".to_vec(), 400, "target_invalid"),
        ("angle brackets", get("/a<b>"), 400, "target_invalid"),
        ("relative target", get("x/relative"), 400, "target_invalid"),
        ("asterisk with GET", get("*"), 400, "target_invalid"),
        ("ftp absolute-form", get("ftp://fd.test/x"), 400, "target_invalid"),
        ("userinfo", get("http://user@fd.test/x"), 400, "target_invalid"),
        ("absolute-form bad host", get("http://a!b/x"), 400, "host_invalid"),
        ("absolute-form climb", get("http://fd.test/../x"), 400, "target_above_root"),
        ("CONNECT", format!("CONNECT fd.test:443 HTTP/1.1\r\n{H}\r\n").into_bytes(), 405, "connect_method"),
        // request line
        ("HTTP/1.2", format!("GET / HTTP/1.2\r\n{H}\r\n").into_bytes(), 505, "http_version"),
        ("HTTP/2.0 over h1", format!("GET / HTTP/2.0\r\n{H}\r\n").into_bytes(), 505, "http_version"),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), 400, "request_line"),
        ("bad method", format!("G@T / HTTP/1.1\r\n{H}\r\n").into_bytes(), 400, "request_line"),
        ("lowercase version", format!("GET / http/1.1\r\n{H}\r\n").into_bytes(), 400, "request_line"),
        // Host
        ("no Host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n".to_vec(), 400, "host_missing"),
        ("two Hosts", format!("GET / HTTP/1.1\r\n{H}Host: other.test\r\n\r\n").into_bytes(), 400, "host_duplicate"),
        ("Host with space", b"GET / HTTP/1.1\r\nHost: a b.test\r\n\r\n".to_vec(), 400, "host_invalid"),
        ("Host with path", b"GET / HTTP/1.1\r\nHost: a.test/evil\r\n\r\n".to_vec(), 400, "host_invalid"),
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a.test\r\n\r\n".to_vec(), 400, "host_invalid"),
        ("Host with bad port", b"GET / HTTP/1.1\r\nHost: a.test:99999\r\n\r\n".to_vec(), 400, "host_invalid"),
        // limits
        ("100 KiB header", huge.into_bytes(), 431, "header_too_large"),
        ("200 header fields", many_fields.into_bytes(), 431, "too_many_headers"),
        ("101 header fields", fields_101.into_bytes(), 431, "too_many_headers"),
        ("9 KiB request line", long_line.into_bytes(), 414, "request_line_too_long"),
        ("head one byte over 32 KiB", head_of_size(32 * 1024 + 1), 431, "header_too_large"),
        // chunk syntax
        ("chunk size with trailing space", chunked("5 \r\nhello\r\n0\r\n\r\n"), 400, "chunk_syntax"),
        ("chunk size with leading space", chunked(" 5\r\nhello\r\n0\r\n\r\n"), 400, "chunk_syntax"),
        ("chunk size bare LF", chunked("5\nhello\r\n0\r\n\r\n"), 400, "chunk_syntax"),
        ("chunk size 0x prefix", chunked("0x5\r\nhello\r\n0\r\n\r\n"), 400, "chunk_syntax"),
        ("chunk data without CRLF", chunked("5\r\nhelloXX0\r\n\r\n"), 400, "chunk_syntax"),
        ("chunk extension with space", chunked("5;a b\r\nhello\r\n0\r\n\r\n"), 400, "chunk_syntax"),
        ("chunk size overflow", chunked("fffffffffffffffff\r\nx\r\n0\r\n\r\n"), 400, "chunk_syntax"),
        ("trailer without colon", chunked("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"), 400, "chunk_syntax"),
    ]
}

trait ReplaceTe {
    fn replace_te(self, with: &str) -> Vec<u8>;
}

impl ReplaceTe for Vec<u8> {
    fn replace_te(self, with: &str) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replacen(
                "Transfer-Encoding: chunked",
                &format!("Transfer-Encoding: {with}"),
                1,
            )
            .into_bytes()
    }
}

/// A GET whose head (request line to blank line) is exactly `size` bytes.
pub fn head_of_size(size: usize) -> Vec<u8> {
    let fixed = format!("GET /big HTTP/1.1\r\n{H}X-Big: \r\n\r\n").len();
    format!(
        "GET /big HTTP/1.1\r\n{H}X-Big: {}\r\n\r\n",
        "a".repeat(size - fixed)
    )
    .into_bytes()
}
