//! The sandbox's replacements for the standard library functions whose C loops run in
//! proportion to an argument (which the instruction-count hook cannot interrupt), and the
//! audit of the rest.
//!
//! Replaced here, in Rust, checking the running call's [`Deadline`]:
//! - `string.find`, `string.match`, `string.gmatch`, `string.gsub` (and so the method forms
//!   `s:find(...)`, which go through the string metatable's `__index`, the same `string`
//!   table): Lua 5.4 patterns by [`super::pattern`], which checks the deadline every few
//!   thousand steps. Stock C backtracks without bound, and even its plain `find` is quadratic.
//!   `gsub` with a function or table replacement calls back into Lua, where the hook fires.
//!   The `gsub` result is bounded by the VM memory limit as it grows.
//! - `string.rep`: the result size is computed first; an empty result (`rep("", 4e9)`) returns
//!   at once (stock C loops `n` times copying nothing), a result over the VM's free memory
//!   raises "not enough memory" before anything is built, and the copy checks the deadline
//!   every MiB.
//!
//! Replaced in the prelude, in Lua (the loop then runs Lua instructions, so the hook fires):
//! - `table.move`, `table.insert`, `table.remove`: their C loops run to `e - f` or to `#t`,
//!   which a `__len` metamethod or an argument can set to 2^62 on an empty table.
//!
//! Checked and left as they are:
//! - `string.byte`, `string.codepoint`-like `utf8.codepoint`, `table.unpack`, `string.char`,
//!   `utf8.char`, `select`: the values they push are bounded by the Lua stack
//!   (`LUAI_MAXSTACK`, one million slots: "string slice too long" / "too many results"), a
//!   few milliseconds at worst; `select('#', ...)` is constant time.
//! - `string.sub`, `string.reverse`, `string.upper`, `string.lower`, `string.len`,
//!   `utf8.len`, `utf8.offset`, `tostring`, `tonumber`: linear in a string that already
//!   exists, so bounded by the memory limit (the same bound as the `..` operator, which is one
//!   VM instruction).
//! - `string.format`: Lua 5.4 refuses widths and precisions over two digits ("invalid
//!   conversion"), so each item is at most ~400 bytes plus its argument; `%s`/`%q` are linear
//!   in the argument. `__tostring` runs Lua code.
//! - `table.concat`: one pass over `i..j`; a missing element stops it at once ("invalid value
//!   (at index 1)"), elements produced by `__index` functions run Lua code, and the result
//!   grows in Lua's memory, so the memory limit stops it.
//! - `table.sort`: "array too big" over 2^31 elements; comparisons go through Lua (a
//!   comparison function, or `__lt`) where the hook fires, and without either, comparing the
//!   `nil`s of a table whose `__len` lies fails at once.
//! - `string.pack`/`string.unpack`: a `c`/`s`/`z` size pads or copies in proportion to the
//!   size in the format (up to 2^31), growing a buffer in Lua's memory: the memory limit stops
//!   it.
//! - `utf8.codes`, `ipairs`, `pairs`, `next`, `gmatch`: iterators, one step per Lua loop
//!   iteration.
//! - `load`: chunks are limited to 64 KiB of source (prelude).
//! - `math.*`, `os.time/clock/date`, `rawlen`, `rawequal`, `type`: constant time or linear in a
//!   short format string.

use std::cell::Cell;
use std::sync::Arc;

use mlua::{Lua, MultiValue, Table, Value};

use super::deadline::{Deadline, BUDGET_EXCEEDED};
use super::helper::helper_error;
use super::pattern::{
    expand_replacement, find_plain, no_specials, posrelat_start, Capture, Matcher, PatternError,
};

/// `string.rep` checks the deadline every this many bytes it copies (about 50 us).
const REP_CHUNK: usize = 1 << 20;
/// Lua's message when an allocation fails; the VM treats it as the memory limit exhausted.
const NOT_ENOUGH_MEMORY: &str = "not enough memory";

/// Sets `find`, `match`, `gmatch`, `gsub` and `rep` of `string` (the VM's own string table,
/// which is also the string metatable's `__index`).
pub(crate) fn install(
    lua: &Lua,
    string: &Table,
    deadline: &Arc<Deadline>,
    memory_limit: usize,
) -> mlua::Result<()> {
    let d = Arc::clone(deadline);
    string.raw_set(
        "find",
        lua.create_function(move |lua, args: Args4| find_aux(lua, &d, args, true))?,
    )?;
    let d = Arc::clone(deadline);
    string.raw_set(
        "match",
        lua.create_function(move |lua, args: Args4| find_aux(lua, &d, args, false))?,
    )?;
    let d = Arc::clone(deadline);
    string.raw_set(
        "gmatch",
        lua.create_function(move |lua, (s, p, init): (Value, Value, Value)| {
            gmatch(lua, &d, s, p, init)
        })?,
    )?;
    let d = Arc::clone(deadline);
    string.raw_set(
        "gsub",
        lua.create_function(move |lua, args: Args4| gsub(lua, &d, args, memory_limit))?,
    )?;
    let d = Arc::clone(deadline);
    string.raw_set(
        "rep",
        lua.create_function(move |lua, (s, n, sep): (Value, Value, Value)| {
            rep(lua, &d, s, n, sep, memory_limit)
        })?,
    )?;
    Ok(())
}

type Args4 = (Value, Value, Value, Value);

fn arg_error(lua: &Lua, n: usize, name: &str, msg: impl std::fmt::Display) -> mlua::Error {
    helper_error(lua, format!("bad argument #{n} to '{name}' ({msg})"))
}

/// `luaL_checklstring`: a string, or a number converted to one.
fn str_arg(lua: &Lua, v: &Value, n: usize, name: &str) -> mlua::Result<mlua::String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(_) | Value::Number(_) => lua
            .coerce_string(v.clone())?
            .ok_or_else(|| arg_error(lua, n, name, "string expected, got number")),
        other => Err(arg_error(
            lua,
            n,
            name,
            format!("string expected, got {}", other.type_name()),
        )),
    }
}

/// `luaL_optinteger`.
fn int_arg(lua: &Lua, v: &Value, n: usize, name: &str, default: i64) -> mlua::Result<i64> {
    match v {
        Value::Nil => Ok(default),
        Value::Integer(i) => Ok(*i),
        Value::Number(f) => {
            // why: 2^63 as f64 is exact; every f64 below it with no fraction fits an i64.
            if f.fract() == 0.0 && *f >= -9.223_372_036_854_776e18 && *f < 9.223_372_036_854_776e18
            {
                Ok(*f as i64)
            } else {
                Err(arg_error(
                    lua,
                    n,
                    name,
                    "number has no integer representation",
                ))
            }
        }
        Value::String(_) => lua
            .coerce_integer(v.clone())?
            .ok_or_else(|| arg_error(lua, n, name, "number expected, got string")),
        other => Err(arg_error(
            lua,
            n,
            name,
            format!("number expected, got {}", other.type_name()),
        )),
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Nil | Value::Boolean(false))
}

fn pattern_error(lua: &Lua, e: PatternError) -> mlua::Error {
    match e {
        PatternError::Bad(msg) => helper_error(lua, msg),
        PatternError::Budget => mlua::Error::runtime(BUDGET_EXCEEDED),
    }
}

fn capture_value(lua: &Lua, src: &[u8], c: Capture) -> mlua::Result<Value> {
    match c {
        Capture::Str(a, b) => lua.create_string(&src[a..b]).map(Value::String),
        Capture::Pos(n) => Ok(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))),
    }
}

/// Appends the captures of the match `s..e` (C: `push_captures`; `whole`: the whole match
/// when there are no captures).
fn push_captures(
    lua: &Lua,
    m: &Matcher<'_>,
    s: usize,
    e: usize,
    whole: bool,
    out: &mut MultiValue,
) -> mlua::Result<()> {
    for i in 0..m.capture_count(whole) {
        let c = m.capture(i, s, e).map_err(|e| pattern_error(lua, e))?;
        out.push_back(capture_value(lua, m.subject(), c)?);
    }
    Ok(())
}

fn int(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `string.find` (`find`) and `string.match`.
fn find_aux(lua: &Lua, d: &Deadline, args: Args4, find: bool) -> mlua::Result<MultiValue> {
    let name = if find { "find" } else { "match" };
    let s = str_arg(lua, &args.0, 1, name)?;
    let p = str_arg(lua, &args.1, 2, name)?;
    let (sb, pb) = (s.as_bytes(), p.as_bytes());
    let init = posrelat_start(int_arg(lua, &args.2, 3, name, 1)?, sb.len()) - 1;
    let mut out = MultiValue::new();
    if init > sb.len() {
        out.push_back(Value::Nil);
        return Ok(out);
    }
    if find && (truthy(&args.3) || no_specials(&pb)) {
        match find_plain(&sb, &pb, init) {
            Some(i) => {
                out.push_back(int(i + 1));
                out.push_back(int(i + pb.len()));
            }
            None => out.push_back(Value::Nil),
        }
        return Ok(out);
    }
    let (anchor, pat) = Matcher::anchor(&pb);
    let mut check = || !d.exceeded();
    let mut m = Matcher::new(&sb, pat, &mut check);
    let mut s1 = init;
    loop {
        if let Some(e) = m.match_at(s1).map_err(|e| pattern_error(lua, e))? {
            if find {
                out.push_back(int(s1 + 1));
                out.push_back(int(e));
                push_captures(lua, &m, 0, 0, false, &mut out)?;
            } else {
                push_captures(lua, &m, s1, e, true, &mut out)?;
            }
            return Ok(out);
        }
        if s1 < sb.len() && !anchor {
            s1 += 1;
        } else {
            break;
        }
    }
    out.push_back(Value::Nil);
    Ok(out)
}

/// `string.gmatch(s, pattern [, init])`: an iterator closure over the matches.
fn gmatch(lua: &Lua, d: &Arc<Deadline>, s: Value, p: Value, init: Value) -> mlua::Result<Value> {
    let s = str_arg(lua, &s, 1, "gmatch")?;
    let p = str_arg(lua, &p, 2, "gmatch")?;
    let len = s.as_bytes().len();
    let init = posrelat_start(int_arg(lua, &init, 3, "gmatch", 1)?, len) - 1;
    // C: an init past the end becomes `len + 1`, where nothing matches.
    let pos = Cell::new(init.min(len + 1));
    let last: Cell<Option<usize>> = Cell::new(None);
    let d = Arc::clone(d);
    let f = lua.create_function(move |lua, ()| {
        let (sb, pb) = (s.as_bytes(), p.as_bytes());
        let mut check = || !d.exceeded();
        let mut m = Matcher::new(&sb, &pb, &mut check);
        let mut out = MultiValue::new();
        let mut src = pos.get();
        while src <= sb.len() {
            let e = m.match_at(src).map_err(|e| pattern_error(lua, e))?;
            if let Some(e) = e.filter(|&e| Some(e) != last.get()) {
                pos.set(e);
                last.set(Some(e));
                push_captures(lua, &m, src, e, true, &mut out)?;
                return Ok(out);
            }
            src += 1;
        }
        Ok(out)
    })?;
    Ok(Value::Function(f))
}

/// What `gsub` replaces each match with.
enum Repl {
    Str(mlua::String),
    Table(Table),
    Func(mlua::Function),
}

fn memory_error() -> mlua::Error {
    mlua::Error::runtime(NOT_ENOUGH_MEMORY)
}

/// `string.gsub(s, pattern, repl [, n])`.
fn gsub(lua: &Lua, d: &Deadline, args: Args4, memory_limit: usize) -> mlua::Result<MultiValue> {
    let s = str_arg(lua, &args.0, 1, "gsub")?;
    let p = str_arg(lua, &args.1, 2, "gsub")?;
    let repl = match &args.2 {
        Value::String(r) => Repl::Str(r.clone()),
        v @ (Value::Integer(_) | Value::Number(_)) => Repl::Str(str_arg(lua, v, 3, "gsub")?),
        Value::Table(t) => Repl::Table(t.clone()),
        Value::Function(f) => Repl::Func(f.clone()),
        other => {
            return Err(arg_error(
                lua,
                3,
                "gsub",
                format!("string/function/table expected, got {}", other.type_name()),
            ))
        }
    };
    let (sb, pb) = (s.as_bytes(), p.as_bytes());
    let default_max = i64::try_from(sb.len())
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let max_s = int_arg(lua, &args.3, 4, "gsub", default_max)?;
    let repl_bytes = match &repl {
        Repl::Str(r) => Some(r.as_bytes()),
        _ => None,
    };
    let (anchor, pat) = Matcher::anchor(&pb);
    let mut check = || !d.exceeded();
    let mut m = Matcher::new(&sb, pat, &mut check);
    let mut out: Vec<u8> = Vec::new();
    let mut src = 0usize;
    let mut last: Option<usize> = None;
    let mut n: i64 = 0;
    let mut changed = false;
    while n < max_s {
        let e = m.match_at(src).map_err(|e| pattern_error(lua, e))?;
        if let Some(e) = e.filter(|&e| Some(e) != last) {
            n += 1;
            changed |= add_value(lua, &m, &repl, repl_bytes.as_deref(), src, e, &mut out)?;
            src = e;
            last = Some(e);
            if out.len() > memory_limit {
                return Err(memory_error());
            }
        } else if src < sb.len() {
            out.push(sb[src]);
            src += 1;
        } else {
            break;
        }
        if anchor {
            break;
        }
    }
    let mut ret = MultiValue::new();
    if changed {
        out.extend_from_slice(&sb[src..]);
        ret.push_back(Value::String(lua.create_string(&out)?));
    } else {
        // C returns argument 1 as `luaL_checklstring` left it: a number converted to a string.
        ret.push_back(Value::String(s.clone()));
    }
    ret.push_back(Value::Integer(n));
    Ok(ret)
}

/// Appends the replacement of the match `s..e` (C: `add_value`); whether it changed anything.
fn add_value(
    lua: &Lua,
    m: &Matcher<'_>,
    repl: &Repl,
    repl_bytes: Option<&[u8]>,
    s: usize,
    e: usize,
    out: &mut Vec<u8>,
) -> mlua::Result<bool> {
    let value = match (repl, repl_bytes) {
        (_, Some(r)) => {
            expand_replacement(m, r, s, e, out).map_err(|e| pattern_error(lua, e))?;
            return Ok(true);
        }
        (Repl::Func(f), _) => {
            let mut args = MultiValue::new();
            push_captures(lua, m, s, e, true, &mut args)?;
            f.call::<Value>(args)?
        }
        (Repl::Table(t), _) => {
            let key = m.capture(0, s, e).map_err(|e| pattern_error(lua, e))?;
            t.get::<Value>(capture_value(lua, m.subject(), key)?)?
        }
        (Repl::Str(_), None) => unreachable!("string replacements have their bytes"),
    };
    match &value {
        v if !truthy(v) => {
            out.extend_from_slice(&m.subject()[s..e]);
            Ok(false)
        }
        Value::String(r) => {
            out.extend_from_slice(&r.as_bytes());
            Ok(true)
        }
        v @ (Value::Integer(_) | Value::Number(_)) => {
            if let Some(r) = lua.coerce_string(v.clone())? {
                out.extend_from_slice(&r.as_bytes());
            }
            Ok(true)
        }
        other => Err(helper_error(
            lua,
            format!("invalid replacement value (a {})", other.type_name()),
        )),
    }
}

/// `string.rep(s, n [, sep])`, bounded: see the module doc.
fn rep(
    lua: &Lua,
    d: &Deadline,
    s: Value,
    n: Value,
    sep: Value,
    memory_limit: usize,
) -> mlua::Result<mlua::String> {
    let s = str_arg(lua, &s, 1, "rep")?;
    if n.is_nil() {
        return Err(arg_error(lua, 2, "rep", "number expected, got no value"));
    }
    let n = int_arg(lua, &n, 2, "rep", 0)?;
    let sep = match sep {
        Value::Nil => None,
        v => Some(str_arg(lua, &v, 3, "rep")?),
    };
    let sb = s.as_bytes();
    let sepb = sep.as_ref().map(|s| s.as_bytes());
    let sepb: &[u8] = sepb.as_deref().unwrap_or(b"");
    if n <= 0 {
        return lua.create_string("");
    }
    let n = u64::try_from(n).unwrap_or(0);
    let total = (sb.len() as u64)
        .checked_mul(n)
        .and_then(|a| (sepb.len() as u64).checked_mul(n - 1).map(|b| (a, b)))
        .and_then(|(a, b)| a.checked_add(b))
        .filter(|&t| t < i64::MAX as u64);
    let Some(total) = total else {
        return Err(helper_error(lua, "resulting string too large"));
    };
    if total == 0 {
        return lua.create_string("");
    }
    let free = memory_limit.saturating_sub(lua.used_memory()) as u64;
    if total > free {
        return Err(memory_error());
    }
    let total = usize::try_from(total).map_err(|_| memory_error())?;
    // Copies of `s .. sep` doubling what is there, a chunk at a time, then the last `sep` cut.
    let unit = sb.len() + sepb.len();
    let full = total + sepb.len();
    let chunk = (REP_CHUNK / unit).max(1) * unit;
    let mut out = Vec::with_capacity(full);
    out.extend_from_slice(&sb);
    out.extend_from_slice(sepb);
    while out.len() < full {
        let take = out.len().min(full - out.len()).min(chunk);
        out.extend_from_within(..take);
        if d.exceeded() {
            return Err(mlua::Error::runtime(BUDGET_EXCEEDED));
        }
    }
    out.truncate(total);
    lua.create_string(&out)
}
