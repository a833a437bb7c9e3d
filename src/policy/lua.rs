//! One sandboxed Lua 5.4 VM with a set of scripts loaded: built once per worker thread (and
//! generation), and once per reload as the scratch VM that checks scripts before publishing.
//!
//! Owns the sandbox (which globals exist), the time budget hook, the memory limit, the Rust
//! helpers (`log`, `now`, `shared`, restricted `os`) and the per-call plumbing that hands the
//! request and the [`PolicyHost`] to Lua for the duration of one call only (an mlua scope).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mlua::{ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::decision::{parse_decision, parse_edit};
use super::shared::{SharedDict, SharedError, SharedValue};
use super::{
    CompiledPolicy, Hook, Outcome, PolicyError, PolicyHost, PolicyRequest, PolicyResponse,
};

/// The time budget hook runs every this many VM instructions (a few microseconds of Lua).
const HOOK_EVERY: u32 = 1000;
/// Globals a script may see; everything else the standard libraries define is removed.
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

/// The per-call deadline checked by the instruction hook. Shared (Arc) between the VM owner and
/// the hook closure; atomics only so the closure is `Send` when mlua's `send` feature is on.
struct Deadline {
    epoch: Instant,
    /// Nanoseconds since `epoch`; `u64::MAX` = no call running, never fires.
    until_ns: AtomicU64,
    /// Set when the hook raised "budget exceeded" during the current call.
    tripped: AtomicBool,
}

impl Deadline {
    fn arm(&self, budget: Duration) {
        let until = self.epoch.elapsed().saturating_add(budget).as_nanos();
        self.until_ns.store(
            u64::try_from(until).unwrap_or(u64::MAX - 1),
            Ordering::Relaxed,
        );
        self.tripped.store(false, Ordering::Relaxed);
    }
    fn disarm(&self) {
        self.until_ns.store(u64::MAX, Ordering::Relaxed);
    }
    fn expired(&self) -> bool {
        let until = self.until_ns.load(Ordering::Relaxed);
        until != u64::MAX && self.epoch.elapsed().as_nanos() >= u128::from(until)
    }
    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

/// Why a call into Lua failed.
pub(crate) enum Failure {
    /// Time budget or memory limit exhausted.
    Budget,
    Error(String),
}

/// Whether the VM was built to serve requests or to check scripts (selftest wrappers).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Serve,
    Check,
}

struct ScriptVm {
    path: String,
    hooks: [Option<Function>; 4],
    selftest: Option<Function>,
}

/// A VM with the scripts of one [`CompiledPolicy`] loaded.
pub(crate) struct ThreadVm {
    pub(crate) compiled: Arc<CompiledPolicy>,
    scripts: Vec<ScriptVm>,
    ctx: Table,
    new_request: Function,
    new_response: Function,
    fake_host: Function,
    deadline: Arc<Deadline>,
    seq: i64,
    // why: last, so the Lua handles above are dropped before the state itself.
    lua: Lua,
}

impl ThreadVm {
    /// Builds a sandboxed VM and runs every script's top-level code (each under
    /// `compiled.load_budget`). Errors are per script, in script order.
    pub(crate) fn build(
        compiled: Arc<CompiledPolicy>,
        shared: Arc<SharedDict>,
        mode: Mode,
    ) -> Result<Self, Vec<PolicyError>> {
        let vm_err = |e: mlua::Error| vec![PolicyError::Vm(message(&e))];
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::new()).map_err(vm_err)?;
        lua.set_memory_limit(compiled.memory_limit)
            .map_err(vm_err)?;
        let deadline = Arc::new(Deadline {
            epoch: Instant::now(),
            until_ns: AtomicU64::new(u64::MAX),
            tripped: AtomicBool::new(false),
        });
        let exports = install_sandbox(&lua, shared, &deadline).map_err(vm_err)?;
        let hook_deadline = Arc::clone(&deadline);
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                if hook_deadline.expired() {
                    hook_deadline.tripped.store(true, Ordering::Relaxed);
                    return Err(mlua::Error::runtime("budget exceeded"));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(vm_err)?;
        let get = |k: &str| exports.raw_get::<Function>(k).map_err(vm_err);
        let mut vm = ThreadVm {
            ctx: exports.raw_get::<Table>("ctx").map_err(vm_err)?,
            new_request: get("new_request")?,
            new_response: get("new_response")?,
            fake_host: get("fake_host")?,
            scripts: Vec::new(),
            deadline,
            seq: 0,
            compiled: Arc::clone(&compiled),
            lua,
        };
        let checked = get("checked")?;
        let log_helper = get("log_helper")?;
        let mut errors = Vec::new();
        for script in &compiled.scripts {
            match vm.load_script(&script.path, &script.source, mode, &checked, &log_helper) {
                Ok(s) => vm.scripts.push(s),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(vm)
        } else {
            Err(errors)
        }
    }

    fn load_script(
        &self,
        path: &str,
        source: &str,
        mode: Mode,
        checked: &Function,
        log_helper: &Function,
    ) -> Result<ScriptVm, PolicyError> {
        let lua = &self.lua;
        let vm_err = |e: mlua::Error| PolicyError::Vm(message(&e));
        // Each script gets its own globals table falling back to the shared sandbox globals, so
        // two scripts can both define `admit`.
        let env = lua.create_table().map_err(vm_err)?;
        let env_mt = lua.create_table().map_err(vm_err)?;
        env_mt.raw_set("__index", lua.globals()).map_err(vm_err)?;
        env.set_metatable(Some(env_mt)).map_err(vm_err)?;
        let chunk = lua
            .load(source)
            .set_name(format!("@{path}"))
            .set_mode(ChunkMode::Text)
            .set_environment(env.clone())
            .into_function()
            .map_err(|e| PolicyError::Syntax {
                path: path.to_owned(),
                message: message(&e),
            })?;
        self.deadline.arm(self.compiled.load_budget);
        let ran = chunk.call::<()>(());
        self.deadline.disarm();
        if let Err(e) = ran {
            return Err(match self.classify(&e) {
                Failure::Budget => PolicyError::Budget {
                    path: path.to_owned(),
                    phase: "top-level code",
                },
                Failure::Error(message) => PolicyError::Load {
                    path: path.to_owned(),
                    message,
                },
            });
        }
        let mut hooks: [Option<Function>; 4] = Default::default();
        for hook in Hook::ALL {
            hooks[hook as usize] = hook_fn(&env, path, hook.name())?;
        }
        if let Some(f) = &hooks[Hook::Log as usize] {
            let helper: Value = log_helper.call(f).map_err(vm_err)?;
            env.raw_set("log", helper).map_err(vm_err)?;
        }
        if mode == Mode::Check {
            for (hook, kind) in [(Hook::Admit, "decision"), (Hook::Route, "decision")]
                .into_iter()
                .chain([(Hook::Response, "edit")])
            {
                if let Some(f) = &hooks[hook as usize] {
                    let wrapped: Function = checked.call((kind, hook.name(), f)).map_err(vm_err)?;
                    env.raw_set(hook.name(), wrapped).map_err(vm_err)?;
                }
            }
        }
        Ok(ScriptVm {
            path: path.to_owned(),
            hooks,
            selftest: hook_fn(&env, path, "selftest")?,
        })
    }

    /// Runs each script's `selftest()` (if defined) under `budget`; one error per failing script.
    pub(crate) fn run_selftests(&self, budget: Duration) -> Vec<PolicyError> {
        let mut errors = Vec::new();
        for s in &self.scripts {
            let Some(f) = &s.selftest else { continue };
            self.deadline.arm(budget);
            let ran = f.call::<()>(());
            self.deadline.disarm();
            if let Err(e) = ran {
                errors.push(match self.classify(&e) {
                    Failure::Budget => PolicyError::Budget {
                        path: s.path.clone(),
                        phase: "selftest",
                    },
                    Failure::Error(message) => PolicyError::Selftest {
                        path: s.path.clone(),
                        message,
                    },
                });
            }
        }
        errors
    }

    /// Hooks defined by any loaded script, indexed by `Hook as usize`.
    pub(crate) fn hook_set(&self) -> [bool; 4] {
        let mut set = [false; 4];
        for s in &self.scripts {
            for hook in Hook::ALL {
                set[hook as usize] |= s.hooks[hook as usize].is_some();
            }
        }
        set
    }

    /// Calls `hook` of each script in order under one time budget. `on_result` gets each
    /// script's return value and says whether to stop (`Ok(true)`) or names what is wrong with
    /// it. Returns the outcome (first failure wins) and whether this VM is still fit to serve.
    pub(crate) fn call_hook(
        &mut self,
        hook: Hook,
        req: &PolicyRequest,
        resp: Option<&PolicyResponse>,
        host: &dyn PolicyHost,
        mut on_result: impl FnMut(&Value) -> Result<bool, String>,
    ) -> (Outcome, bool) {
        self.seq += 1;
        let seq = self.seq;
        self.deadline.arm(self.compiled.budget);
        let this = &*self;
        let result =
            this.lua.scope(|scope| {
                let host_fn = scope.create_function(
                |lua, (op, a, b): (mlua::String, Option<mlua::String>, Option<mlua::String>)| {
                    let a = a.as_ref().map(|s| s.to_str()).transpose()?;
                    let b = b.as_ref().map(|s| s.to_str()).transpose()?;
                    host_call(lua, &op.to_str()?, a.as_deref(), b.as_deref(), req, resp, host)
                },
            )?;
                this.ctx.raw_set("host", host_fn)?;
                this.ctx.raw_set("seq", seq)?;
                let req_view: Table = this.new_request.call((
                    req.method.as_str(),
                    req.path.as_str(),
                    req.client_ip.as_deref(),
                    req.route.as_deref(),
                ))?;
                let resp_view: Option<Table> = match resp {
                    Some(r) => Some(this.new_response.call(r.status)?),
                    None => None,
                };
                let mut outcome = Outcome::Ok;
                for s in &this.scripts {
                    let Some(f) = &s.hooks[hook as usize] else {
                        continue;
                    };
                    let called = match &resp_view {
                        Some(rv) => f.call::<Value>((&req_view, rv)),
                        None => f.call::<Value>(&req_view),
                    };
                    let failure = match called {
                        Ok(v) => match on_result(&v) {
                            Ok(true) => break,
                            Ok(false) => continue,
                            Err(msg) => Failure::Error(format!(
                                "{}: {} returned an invalid value: {msg}",
                                s.path,
                                hook.name()
                            )),
                        },
                        Err(e) => this.classify(&e),
                    };
                    let budget = matches!(failure, Failure::Budget);
                    if matches!(outcome, Outcome::Ok) {
                        outcome = match failure {
                            Failure::Budget => Outcome::Budget,
                            Failure::Error(m) => Outcome::Error(m),
                        };
                    }
                    if budget {
                        break;
                    }
                }
                Ok(outcome)
            });
        self.deadline.disarm();
        let outcome = match result {
            Ok(o) => o,
            Err(e) => match self.classify(&e) {
                Failure::Budget => Outcome::Budget,
                Failure::Error(m) => Outcome::Error(m),
            },
        };
        let restored = self.ctx.raw_set("host", &self.fake_host).is_ok();
        let fit = restored && (!matches!(outcome, Outcome::Budget) || self.recovered());
        (outcome, fit)
    }

    /// After a budget or memory error: collect garbage and check the VM has room to work.
    fn recovered(&self) -> bool {
        self.lua.gc_collect().is_ok()
            && self.lua.gc_collect().is_ok()
            && self.lua.used_memory() < self.compiled.memory_limit / 2
            && self.lua.create_table().is_ok()
    }

    fn classify(&self, e: &mlua::Error) -> Failure {
        if self.deadline.tripped() || is_memory_error(e) {
            Failure::Budget
        } else {
            Failure::Error(message(e))
        }
    }
}

fn hook_fn(env: &Table, path: &str, name: &'static str) -> Result<Option<Function>, PolicyError> {
    match env.raw_get::<Value>(name) {
        Ok(Value::Function(f)) => Ok(Some(f)),
        Ok(Value::Nil) => Ok(None),
        // why: `log` inherited from the sandbox is the helper table, not a hook; raw_get only
        // sees what the script itself assigned.
        Ok(other) => Err(PolicyError::HookType {
            path: path.to_owned(),
            hook: name,
            found: other.type_name(),
        }),
        Err(e) => Err(PolicyError::Vm(message(&e))),
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::RuntimeError(m) => m.starts_with("not enough memory"),
        _ => false,
    }
}

/// The message of a Lua error without mlua's traceback: `path:line: message` for errors raised
/// by script code.
pub(crate) fn message(e: &mlua::Error) -> String {
    let full = match e {
        mlua::Error::CallbackError { cause, .. } => return message(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    match full.find("\nstack traceback:") {
        Some(i) => full[..i].to_owned(),
        None => full,
    }
}

/// `path:line: ` of the Lua code calling the current Rust function, for helper errors.
fn caller(lua: &Lua) -> String {
    lua.inspect_stack(1, |d| {
        let src = d
            .source()
            .short_src
            .map(|s| s.into_owned())
            .unwrap_or_default();
        match d.current_line() {
            Some(line) => format!("{src}:{line}: "),
            None => String::new(),
        }
    })
    .unwrap_or_default()
}

fn helper_error(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{}{msg}", caller(lua)))
}

/// What `CTX.host(op, a, b)` answers during a real call.
fn host_call(
    lua: &Lua,
    op: &str,
    a: Option<&str>,
    b: Option<&str>,
    req: &PolicyRequest,
    resp: Option<&PolicyResponse>,
    host: &dyn PolicyHost,
) -> mlua::Result<Value> {
    let string = |s: &str| lua.create_string(s).map(Value::String);
    match op {
        "map" => match (a, b) {
            (Some(map), Some(key)) => host
                .map_get(map, key)
                .map_or(Ok(Value::Nil), |v| string(&v)),
            _ => Ok(Value::Nil),
        },
        "healthy" | "total" | "inflight" | "queued" => {
            let Some(state) = a.and_then(|name| host.upstream_state(name)) else {
                return Ok(Value::Nil);
            };
            let n = match op {
                "healthy" => state.healthy,
                "total" => state.total,
                "inflight" => state.inflight,
                _ => state.queued,
            };
            Ok(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
        }
        "req_headers" => header_table(lua, &req.headers).map(Value::Table),
        "resp_headers" => match resp {
            Some(r) => header_table(lua, &r.headers).map(Value::Table),
            None => Ok(Value::Nil),
        },
        "req_query" => {
            let t = lua.create_table_with_capacity(0, req.query.len())?;
            for (k, v) in &req.query {
                // First value wins, as documented on `PolicyRequest::query`.
                if !t.contains_key(k.as_str())? {
                    t.raw_set(k.as_str(), v.as_str())?;
                }
            }
            Ok(Value::Table(t))
        }
        "req_tls" => match &req.tls {
            Some(tls) => {
                let t = lua.create_table_with_capacity(0, 4)?;
                t.raw_set("subject", tls.subject.as_deref())?;
                t.raw_set("issuer", tls.issuer.as_deref())?;
                t.raw_set("serial", tls.serial.as_deref())?;
                t.raw_set("verified", tls.verified)?;
                Ok(Value::Table(t))
            }
            None => Ok(Value::Nil),
        },
        other => Err(helper_error(
            lua,
            format!("unknown host operation {other:?}"),
        )),
    }
}

/// Header names lowercased; repeated headers joined with ", " (RFC 9110 list syntax).
fn header_table(lua: &Lua, headers: &[(String, String)]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, headers.len())?;
    for (name, value) in headers {
        let key = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name.as_str())
        };
        match t.raw_get::<Option<mlua::String>>(key.as_ref())? {
            Some(prev) => {
                let joined = format!("{}, {value}", prev.to_str()?);
                t.raw_set(key.as_ref(), joined)?;
            }
            None => t.raw_set(key.as_ref(), value.as_str())?,
        }
    }
    Ok(t)
}

/// Installs the Rust helpers, runs the prelude and strips every global not allowed.
/// Returns the prelude's exports table.
fn install_sandbox(
    lua: &Lua,
    shared: Arc<SharedDict>,
    deadline: &Arc<Deadline>,
) -> mlua::Result<Table> {
    let g = lua.globals();

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
    let exports: Table = lua
        .load(PRELUDE)
        .set_name("=floodgate-prelude")
        .call((tripped, validate))?;

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
