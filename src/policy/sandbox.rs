//! The sandbox: which globals exist, the Rust helpers (`log`, `now`, `shared`, restricted
//! `os`), the prelude, and one environment per script.
//!
//! # How scripts share state
//! Each script runs in its own environment ([`script_env`]): its own globals table (`_G` is
//! that table), holding its own shallow copies of the library tables (`string`, `table`,
//! `math`, `utf8`, `os`, `log`, `shared`, `maps`, `upstream`, `fake`) and its own `load`, whose
//! chunks default to the script's environment. Whatever a script does to its globals or to
//! those tables (`x = 1`, `rawset(_G, ...)`, `setmetatable(_G, ...)`, `string.find = nil`)
//! is seen by that script only; the string metatable's `__index` is the VM's own `string`
//! table, which no script can reach (`getmetatable("")` is `false`). The metatables the
//! copies share (`maps`, the request views) are protected (`__metatable`), and `rawset` refuses
//! a view, so one script cannot plant a field in the `req` a later script of the same call
//! reads. Scripts share state only through the `shared` dictionary (one per engine, across
//! threads and reloads) and the maps; globals also do not carry from one worker thread's VM to
//! another's.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mlua::{Function, Lua, Table, Value};

use super::deadline::Deadline;
use super::decision::{parse_decision, parse_edit};
use super::helper::helper_error;
use super::shared::{SharedDict, SharedError, SharedValue};
use super::strlib;

const ALLOWED_GLOBALS: &[&str] = &[
    "_G",
    "_VERSION",
    "assert",
    "error",
    "getmetatable",
    "ipairs",
    "next",
    "pairs",
    "pcall",
    "print",
    "rawequal",
    "rawget",
    "rawlen",
    "rawset",
    "select",
    "setmetatable",
    "tonumber",
    "tostring",
    "type",
    "xpcall",
    "load",
    "collectgarbage",
    "string",
    "table",
    "math",
    "utf8",
    "os",
    "log",
    "now",
    "shared",
    "maps",
    "upstream",
    "fake",
];
const PRELUDE: &str = include_str!("prelude.lua");

/// Installs the Rust helpers, runs the prelude and strips every global not allowed.
/// Returns the prelude's exports table.
pub(crate) fn install_sandbox(
    lua: &Lua,
    shared: Arc<SharedDict>,
    deadline: &Arc<Deadline>,
    memory_limit: usize,
) -> mlua::Result<Table> {
    let g = lua.globals();
    strlib::install(lua, &g.raw_get("string")?, deadline, memory_limit)?;

    let log = lua.create_table()?;
    log.raw_set(
        "info",
        lua.create_function(|_, msg: mlua::String| {
            log::info!(target: "floodgate::policy", "{}", msg.to_string_lossy());
            Ok(())
        })?,
    )?;
    log.raw_set(
        "warn",
        lua.create_function(|_, msg: mlua::String| {
            log::warn!(target: "floodgate::policy", "{}", msg.to_string_lossy());
            Ok(())
        })?,
    )?;
    g.raw_set("log", log)?;
    g.raw_set(
        "now",
        lua.create_function(|_, ()| {
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()))
        })?,
    )?;

    let os: Table = g.raw_get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date"] {
        safe_os.raw_set(name, os.raw_get::<Function>(name)?)?;
    }
    g.raw_set("os", safe_os)?;
    g.raw_set("shared", shared_table(lua, shared)?)?;

    let d = Arc::clone(deadline);
    let tripped = lua.create_function(move |_, ()| Ok(d.tripped()))?;
    let validate = lua.create_function(|_, (kind, v): (mlua::String, Value)| {
        let checked = if kind.as_bytes().as_ref() == b"edit" {
            parse_edit(&v).map(|_| ())
        } else {
            parse_decision(&v).map(|_| ())
        };
        Ok(checked.err())
    })?;
    // why: getmetatable stops at `__metatable`; the prelude's rawset needs the real one to
    // tell a read-only view (see prelude.lua).
    let metatable_of = lua.create_function(|_, v: Value| {
        Ok(match v {
            Value::Table(t) => t.metatable(),
            _ => None,
        })
    })?;
    let exports: Table =
        lua.load(PRELUDE)
            .set_name("=floodgate-prelude")
            .call((tripped, validate, metatable_of))?;

    let mut remove = Vec::new();
    for pair in g.pairs::<Value, Value>() {
        let (k, _) = pair?;
        let allowed = match &k {
            Value::String(s) => ALLOWED_GLOBALS.contains(&s.to_string_lossy().as_str()),
            _ => false,
        };
        if !allowed {
            remove.push(k);
        }
    }
    for k in remove {
        g.raw_set(k, Value::Nil)?;
    }
    Ok(exports)
}

fn shared_table(lua: &Lua, dict: Arc<SharedDict>) -> mlua::Result<Table> {
    fn value(lua: &Lua, v: &Value) -> mlua::Result<SharedValue> {
        Ok(match v {
            Value::Boolean(b) => SharedValue::Bool(*b),
            Value::Integer(i) => SharedValue::Int(*i),
            Value::Number(n) => SharedValue::Num(*n),
            Value::String(s) => SharedValue::Str(s.to_str()?.to_owned()),
            other => {
                return Err(helper_error(
                    lua,
                    format!(
                        "shared values must be strings, numbers or booleans, got {}",
                        other.type_name()
                    ),
                ))
            }
        })
    }
    fn number(lua: &Lua, v: &Value, what: &str) -> mlua::Result<SharedValue> {
        match v {
            Value::Integer(_) | Value::Number(_) => value(lua, v),
            other => Err(helper_error(
                lua,
                format!("{what} must be a number, got {}", other.type_name()),
            )),
        }
    }
    fn ttl(lua: &Lua, t: Option<f64>) -> mlua::Result<Option<Duration>> {
        t.map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| helper_error(lua, format!("invalid ttl {s}")))
        })
        .transpose()
    }
    fn back(lua: &Lua, v: SharedValue) -> mlua::Result<Value> {
        Ok(match v {
            SharedValue::Bool(b) => Value::Boolean(b),
            SharedValue::Int(i) => Value::Integer(i),
            SharedValue::Num(n) => Value::Number(n),
            SharedValue::Str(s) => Value::String(lua.create_string(s)?),
        })
    }

    let t = lua.create_table()?;
    let d = Arc::clone(&dict);
    t.raw_set(
        "get",
        lua.create_function(move |lua, key: mlua::String| match d.get(&key.to_str()?) {
            Some(v) => back(lua, v),
            None => Ok(Value::Nil),
        })?,
    )?;
    let d = Arc::clone(&dict);
    t.raw_set(
        "set",
        lua.create_function(
            move |lua, (key, v, t): (mlua::String, Value, Option<f64>)| {
                let key = key.to_str()?;
                if v.is_nil() {
                    d.delete(&key);
                    return Ok((true, None));
                }
                match d.set(&key, value(lua, &v)?, ttl(lua, t)?) {
                    Ok(()) => Ok((true, None)),
                    Err(e) => Ok((false, Some(e.to_string()))),
                }
            },
        )?,
    )?;
    let d = Arc::clone(&dict);
    t.raw_set(
        "incr",
        lua.create_function(
            move |lua, (key, by, init, t): (mlua::String, Value, Option<Value>, Option<f64>)| {
                let by = number(lua, &by, "incr step")?;
                let init = init.map(|i| number(lua, &i, "incr init")).transpose()?;
                match d.incr(&key.to_str()?, by, init, ttl(lua, t)?) {
                    Ok(v) => Ok((back(lua, v)?, None)),
                    Err(e @ (SharedError::Full | SharedError::NotFound)) => {
                        Ok((Value::Nil, Some(e.to_string())))
                    }
                    Err(e) => Err(helper_error(lua, format!("shared.incr: {e}"))),
                }
            },
        )?,
    )?;
    t.raw_set(
        "delete",
        lua.create_function(move |_, key: mlua::String| {
            dict.delete(&key.to_str()?);
            Ok(())
        })?,
    )?;
    Ok(t)
}

/// A new environment for one script, from the sandbox globals (see the module doc); `load_in`
/// is the prelude's. Returns the environment and its `log` table (a script's own `log` hook
/// replaces it).
pub(crate) fn script_env(lua: &Lua, load_in: &Function) -> mlua::Result<(Table, Table)> {
    let env = lua.create_table()?;
    for pair in lua.globals().pairs::<Value, Value>() {
        let (k, v) = pair?;
        let v = match v {
            Value::Table(t) if !matches!(&k, Value::String(s) if s.as_bytes().as_ref() == b"_G") => {
                let copy = lua.create_table()?;
                for pair in t.pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    copy.raw_set(k, v)?;
                }
                copy.set_metatable(t.metatable())?;
                Value::Table(copy)
            }
            v => v,
        };
        env.raw_set(k, v)?;
    }
    env.raw_set("_G", &env)?;
    env.raw_set("load", load_in.call::<Function>(&env)?)?;
    let log: Table = env.raw_get("log")?;
    Ok((env, log))
}
