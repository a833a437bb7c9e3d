//! Lua 5.4 pattern matching in Rust, ported from `lstrlib.c` (Lua 5.4.8) so that the time
//! budget holds inside `string.find/match/gmatch/gsub`.
//!
//! The stock C matcher backtracks without bound (`("a"):rep(30000):find(("a-"):rep(30).."b")`
//! runs for hours) and runs no Lua instructions, so the instruction-count hook never fires
//! inside it. This port keeps the C code's structure, semantics and error messages, and counts
//! its steps: every [`CHECK_EVERY`] steps it asks the caller's `check` (the running call's
//! deadline) whether to go on, and stops with [`PatternError::Budget`] if not. A match that
//! takes fewer steps (every ordinary policy pattern) never reads a clock.
//!
//! What counts as a step: entering `match` (every pattern item tried at a position), each
//! character a repetition (`*`, `+`, `-`) looks at, and each character `%b` scans. Plain
//! searches use `memchr::memmem` (linear; the C `lmemfind` is quadratic at worst).
//!
//! Positions are byte offsets into the subject; the C code's `'\0'` past the end of the
//! subject and the pattern is reproduced by [`at`].

/// Ask the caller whether to go on every this many steps (a few microseconds of matching).
pub(crate) const CHECK_EVERY: u32 = 4096;
/// Maximum recursion depth of `match` (C: `MAXCCALLS`).
const MAX_DEPTH: u32 = 200;
/// Maximum number of captures (C: `LUA_MAXCAPTURES`).
pub(crate) const MAX_CAPTURES: usize = 32;
const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";
const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;

/// Why a match stopped without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatternError {
    /// A malformed pattern or replacement; the message is stock Lua's.
    Bad(String),
    /// `check` said the running call is out of time.
    Budget,
}

fn bad<T>(msg: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError::Bad(msg.into()))
}

/// The byte at `i`, or `0` past the end (C reads the terminating `'\0'`).
#[inline]
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// One capture as Lua sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capture {
    /// `start..end` of the subject.
    Str(usize, usize),
    /// A position capture `()`: a 1-based position.
    Pos(usize),
}

/// Whether `p` has none of the pattern special characters (then `find` searches plainly).
pub(crate) fn no_specials(p: &[u8]) -> bool {
    !p.iter().any(|b| SPECIALS.contains(b))
}

/// Plain search of `needle` in `hay` from byte `from`; the start offset of the first hit.
pub(crate) fn find_plain(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let rest = hay.get(from..)?;
    memchr::memmem::find(rest, needle).map(|i| i + from)
}

/// Lua's `posrelatI`: a relative start position (negative = from the end) as 1-based, clipped
/// to `[1, inf)`.
pub(crate) fn posrelat_start(pos: i64, len: usize) -> usize {
    if pos > 0 {
        usize::try_from(pos).unwrap_or(usize::MAX)
    } else if pos == 0 || pos.unsigned_abs() > len as u64 {
        1
    } else {
        len - usize::try_from(pos.unsigned_abs()).unwrap_or(len) + 1
    }
}

/// C's `isspace` etc. in the "C" locale (Rust's `is_ascii_whitespace` lacks `\v`).
fn class_matches(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0,
        _ => return cl == c,
    };
    if cl.is_ascii_lowercase() {
        res
    } else {
        !res
    }
}

/// The matcher over one subject and one pattern (anchor `^` already removed).
pub(crate) struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [(usize, isize); MAX_CAPTURES],
    depth: u32,
    fuel: u32,
    check: &'a mut dyn FnMut() -> bool,
}

impl<'a> Matcher<'a> {
    /// `check` is called every [`CHECK_EVERY`] steps; `false` stops the match with
    /// [`PatternError::Budget`].
    pub(crate) fn new(src: &'a [u8], pat: &'a [u8], check: &'a mut dyn FnMut() -> bool) -> Self {
        Self {
            src,
            pat,
            level: 0,
            capture: [(0, 0); MAX_CAPTURES],
            depth: MAX_DEPTH,
            fuel: CHECK_EVERY,
            check,
        }
    }

    /// Splits a leading `^` off a pattern: `(anchored, rest)`.
    pub(crate) fn anchor(pat: &[u8]) -> (bool, &[u8]) {
        match pat.first() {
            Some(b'^') => (true, &pat[1..]),
            _ => (false, pat),
        }
    }

    pub(crate) fn subject(&self) -> &'a [u8] {
        self.src
    }

    /// Tries to match the whole pattern at subject offset `s`; the end offset of the match.
    pub(crate) fn match_at(&mut self, s: usize) -> Result<Option<usize>, PatternError> {
        self.level = 0;
        self.depth = MAX_DEPTH;
        self.do_match(s, 0)
    }

    #[inline]
    fn step(&mut self, n: u32) -> Result<(), PatternError> {
        match self.fuel.checked_sub(n) {
            Some(left) if left > 0 => {
                self.fuel = left;
                Ok(())
            }
            _ => {
                self.fuel = CHECK_EVERY;
                if (self.check)() {
                    Ok(())
                } else {
                    Err(PatternError::Budget)
                }
            }
        }
    }

    /// Capture `i` of the last match `s..e` (C: `get_onecapture`): with no captures, `0` is
    /// the whole match.
    pub(crate) fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture, PatternError> {
        if i >= self.level {
            if i != 0 {
                return bad(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Capture::Str(s, e));
        }
        let (init, len) = self.capture[i];
        match len {
            CAP_UNFINISHED => bad("unfinished capture"),
            CAP_POSITION => Ok(Capture::Pos(init + 1)),
            len => Ok(Capture::Str(init, init + len.unsigned_abs())),
        }
    }

    /// How many values `push_captures` pushes: all captures, or the whole match when there are
    /// none and `whole` is set.
    pub(crate) fn capture_count(&self, whole: bool) -> usize {
        if self.level == 0 && whole {
            1
        } else {
            self.level
        }
    }

    fn class_end(&self, mut p: usize) -> Result<usize, PatternError> {
        let c = at(self.pat, p);
        p += 1;
        match c {
            ESC => {
                if p >= self.pat.len() {
                    return bad("malformed pattern (ends with '%')");
                }
                Ok(p + 1)
            }
            b'[' => {
                if at(self.pat, p) == b'^' {
                    p += 1;
                }
                loop {
                    // look for a ']'
                    if p >= self.pat.len() {
                        return bad("malformed pattern (missing ']')");
                    }
                    let c = self.pat[p];
                    p += 1;
                    if c == ESC && p < self.pat.len() {
                        p += 1; // skip escapes (e.g. '%]')
                    }
                    if at(self.pat, p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    /// `p` at the `[`, `ec` at the closing `]`.
    fn bracket_class(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let pat = self.pat;
        let mut sig = true;
        if at(pat, p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if pat[p] == ESC {
                p += 1;
                if class_matches(c, at(pat, p)) {
                    return sig;
                }
            } else if at(pat, p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if pat[p - 2] <= c && c <= pat[p] {
                    return sig;
                }
            } else if pat[p] == c {
                return sig;
            }
        }
        !sig
    }

    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            ESC => class_matches(c, at(self.pat, p + 1)),
            b'[' => self.bracket_class(c, p, ep - 1),
            pc => pc == c,
        }
    }

    fn balance(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if p + 1 >= self.pat.len() {
            return bad("malformed pattern (missing arguments to '%b')");
        }
        if at(self.src, s) != self.pat[p] || s >= self.src.len() {
            return Ok(None);
        }
        let (b, e) = (self.pat[p], self.pat[p + 1]);
        let mut cont = 1u32;
        let mut i = s + 1;
        while i < self.src.len() {
            self.step(1)?;
            let c = self.src[i];
            if c == e {
                cont -= 1;
                if cont == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == b {
                cont += 1;
            }
            i += 1;
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, PatternError> {
        let mut i = 0usize;
        while self.single(s + i, p, ep) {
            self.step(1)?;
            i += 1;
        }
        loop {
            if let Some(res) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(res));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(
        &mut self,
        mut s: usize,
        p: usize,
        ep: usize,
    ) -> Result<Option<usize>, PatternError> {
        loop {
            if let Some(res) = self.do_match(s, ep + 1)? {
                return Ok(Some(res));
            }
            if self.single(s, p, ep) {
                self.step(1)?;
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(
        &mut self,
        s: usize,
        p: usize,
        what: isize,
    ) -> Result<Option<usize>, PatternError> {
        let level = self.level;
        if level >= MAX_CAPTURES {
            return bad("too many captures");
        }
        self.capture[level] = (s, what);
        self.level = level + 1;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.level -= 1;
        }
        Ok(res)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CAP_UNFINISHED)
        else {
            return bad("invalid pattern capture");
        };
        self.capture[l].1 = (s - self.capture[l].0) as isize;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.capture[l].1 = CAP_UNFINISHED;
        }
        Ok(res)
    }

    fn match_capture(&self, s: usize, l: u8) -> Result<Option<usize>, PatternError> {
        let l = i32::from(l) - i32::from(b'1');
        let idx = usize::try_from(l).ok().filter(|&i| i < self.level);
        let Some(i) = idx.filter(|&i| self.capture[i].1 != CAP_UNFINISHED) else {
            return bad(format!("invalid capture index %{}", l + 1));
        };
        let (init, len) = self.capture[i];
        // why: a position capture has length -2, as in C (`(size_t)len` huge: never matches).
        let Ok(len) = usize::try_from(len) else {
            return Ok(None);
        };
        let src = self.src;
        if src.len() - s >= len && src[init..init + len] == src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if self.depth == 0 {
            return bad("pattern too complex");
        }
        self.depth -= 1;
        let res = self.match_body(s, p);
        self.depth += 1;
        res
    }

    fn match_body(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, PatternError> {
        let plen = self.pat.len();
        loop {
            self.step(1)?;
            if p == plen {
                return Ok(Some(s));
            }
            let pat = self.pat;
            match pat[p] {
                b'(' => {
                    return if at(pat, p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == plen => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                ESC if at(pat, p + 1) == b'b' => match self.balance(s, p + 2)? {
                    Some(e) => {
                        s = e;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                ESC if at(pat, p + 1) == b'f' => {
                    p += 2;
                    if at(pat, p) != b'[' {
                        return bad("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    if !self.bracket_class(previous, p, ep - 1)
                        && self.bracket_class(at(self.src, s), p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                ESC if at(pat, p + 1).is_ascii_digit() => {
                    match self.match_capture(s, at(pat, p + 1))? {
                        Some(e) => {
                            s = e;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = at(pat, ep);
                    if !self.single(s, p, ep) {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match suffix {
                        b'?' => {
                            if let Some(res) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(res));
                            }
                            p = ep + 1;
                        }
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }
}

/// Expands a `gsub` replacement string for the match `s..e` (C: `add_s`): `%0` the whole match,
/// `%1`-`%9` captures, `%%` a percent sign.
pub(crate) fn expand_replacement(
    m: &Matcher<'_>,
    repl: &[u8],
    s: usize,
    e: usize,
    out: &mut Vec<u8>,
) -> Result<(), PatternError> {
    let mut rest = repl;
    while let Some(i) = memchr::memchr(ESC, rest) {
        out.extend_from_slice(&rest[..i]);
        let c = at(rest, i + 1);
        if c == ESC {
            out.push(ESC);
        } else if c == b'0' {
            out.extend_from_slice(&m.subject()[s..e]);
        } else if c.is_ascii_digit() && i + 1 < rest.len() {
            match m.capture(usize::from(c - b'1'), s, e)? {
                Capture::Str(a, b) => out.extend_from_slice(&m.subject()[a..b]),
                Capture::Pos(n) => out.extend_from_slice(n.to_string().as_bytes()),
            }
        } else {
            return bad("invalid use of '%' in replacement string");
        }
        rest = &rest[(i + 2).min(rest.len())..];
    }
    out.extend_from_slice(rest);
    Ok(())
}
