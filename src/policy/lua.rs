//! One sandboxed Lua 5.4 VM with a set of scripts loaded: built once per worker thread (and
//! generation), and once per reload as the scratch VM that checks scripts before publishing.
//!
//! Owns the sandbox (which globals exist), the time budget hook, the memory limit, the Rust
//! helpers (`log`, `now`, `shared`, restricted `os`) and the per-call plumbing: the request,
//! response and [`PolicyHost`] of the running call sit in a [`CallData`] the VM keeps from call
//! to call, and one host function created with the VM answers Lua's questions from it. Nothing
//! is converted to Lua values up front: a field becomes a Lua string when a script reads it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mlua::{ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::decision::{parse_decision, parse_edit};
use super::shared::{SharedDict, SharedError, SharedValue};
use super::{
    CompiledPolicy, Hook, Outcome, PolicyError, PolicyHost, RequestSource, ResponseSource, TlsInfo,
};

/// The time budget hook runs every this many VM instructions. A firing costs about 40 ns (one
/// wall clock read), about a tenth of the time 100 cheap instructions take; fewer instructions
/// between firings bound how far a call with costly instructions (e.g. concatenating large
/// strings) overruns its budget.
const HOOK_EVERY: u32 = 100;
/// The budget counts the time the thread ran; the wall clock may run to this many budgets (a
/// call preempted for that long is cut anyway, to bound the latency it adds).
const WALL_CAP: u64 = 10;
/// A call is looked at more closely (the thread's scheduler statistics read) once it ran for
/// this fraction of its budget by the wall clock; shorter calls never pay for that read.
const LEAD_DIVISOR: u64 = 4;
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

/// Host operations, as numbered in the prelude's `OP` table.
mod op {
    pub const MAP: u8 = 1;
    pub const HEALTHY: u8 = 2;
    pub const TOTAL: u8 = 3;
    pub const INFLIGHT: u8 = 4;
    pub const QUEUED: u8 = 5;
    pub const METHOD: u8 = 10;
    pub const PATH: u8 = 11;
    pub const CLIENT_IP: u8 = 12;
    pub const ROUTE: u8 = 13;
    pub const TLS: u8 = 14;
    pub const REQ_HEADER: u8 = 20;
    pub const REQ_HEADERS: u8 = 21;
    pub const QUERY_PARAM: u8 = 22;
    pub const QUERY: u8 = 23;
    pub const STATUS: u8 = 30;
    pub const RESP_HEADER: u8 = 31;
    pub const RESP_HEADERS: u8 = 32;
}

/// How long this thread has waited on a run queue (runnable, not running: preempted) in
/// nanoseconds, `None` where Linux does not report it.
///
/// why run_delay from /proc rather than `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`: the crate
/// forbids unsafe code. The CPU time in the same file is only updated at scheduler ticks and
/// context switches (it lags up to a tick, 4 ms at HZ=250), while run_delay is updated when
/// the thread gets the CPU back, so it is current whenever the thread reads it. A read costs a
/// few microseconds; only calls that already ran a while pay for one.
fn thread_run_delay_ns() -> Option<u64> {
    thread_local! {
        // why: /proc/thread-self names the thread that opens it, so one file per thread.
        static SCHEDSTAT: Option<File> = File::open("/proc/thread-self/schedstat").ok();
    }
    SCHEDSTAT
        .try_with(|f| {
            let f = f.as_ref()?;
            let mut buf = [0u8; 96];
            let n = f.read_at(&mut buf, 0).ok()?;
            // "<cpu ns> <run_delay ns> <timeslices>"
            let text = std::str::from_utf8(&buf[..n]).ok()?;
            text.split_ascii_whitespace().nth(1)?.parse().ok()
        })
        .ok()
        .flatten()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// The per-call time budget checked by the instruction hook. It counts the time the thread
/// ran: wall clock minus the time it waited preempted (which, as policy code does not block,
/// is its CPU time), with a wall clock cap of [`WALL_CAP`] budgets. Shared (Arc) between the
/// VM owner and the hook closure; atomics only so the closure is `Send` when mlua's `send`
/// feature is on.
///
/// The hook only reads the (cheap) wall clock until the call ran `budget / LEAD_DIVISOR` of
/// wall time; then it reads the thread's run-queue wait once as a baseline and counts that lead
/// as run (a call preempted earlier is charged a little more than it ran; one busy in a long C
/// function earlier, a little less). Run time cannot advance faster than the wall clock, so
/// after each look the next one is due no earlier than the unspent budget later.
struct Deadline {
    epoch: Instant,
    /// Wall clock at `arm`, nanoseconds since `epoch`.
    start_ns: AtomicU64,
    budget_ns: AtomicU64,
    /// Wall clock of the next closer look; `u64::MAX` = no call running, never fires.
    next_ns: AtomicU64,
    /// Wall clock and run-queue wait at the first closer look; `u64::MAX` = not taken yet.
    base_wall_ns: AtomicU64,
    base_wait_ns: AtomicU64,
    /// Set when the hook raised "budget exceeded" during the current call.
    tripped: AtomicBool,
}

impl Deadline {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            start_ns: AtomicU64::new(0),
            budget_ns: AtomicU64::new(0),
            next_ns: AtomicU64::new(u64::MAX),
            base_wall_ns: AtomicU64::new(u64::MAX),
            base_wait_ns: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        }
    }
    fn now_ns(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }
    fn arm(&self, budget: Duration) {
        self.arm_at(self.now_ns(), nanos(budget));
    }
    fn arm_at(&self, now: u64, budget: u64) {
        self.start_ns.store(now, Ordering::Relaxed);
        self.budget_ns.store(budget, Ordering::Relaxed);
        self.base_wall_ns.store(u64::MAX, Ordering::Relaxed);
        self.tripped.store(false, Ordering::Relaxed);
        self.next_ns.store(
            now.saturating_add(budget / LEAD_DIVISOR).min(u64::MAX - 1),
            Ordering::Relaxed,
        );
    }
    fn disarm(&self) {
        self.next_ns.store(u64::MAX, Ordering::Relaxed);
    }
    /// Whether the running call is out of budget. Cheap (one wall clock read) until a closer
    /// look is due.
    fn expired(&self) -> bool {
        let next = self.next_ns.load(Ordering::Relaxed);
        if next == u64::MAX {
            return false;
        }
        let now = self.now_ns();
        now >= next && self.look_closer(now, thread_run_delay_ns())
    }
    /// `wait`: the thread's run-queue wait now (`None`: unknown, count the wall clock).
    #[cold]
    fn look_closer(&self, now: u64, wait: Option<u64>) -> bool {
        let start = self.start_ns.load(Ordering::Relaxed);
        let budget = self.budget_ns.load(Ordering::Relaxed);
        let wall = now.saturating_sub(start);
        let cap = budget.saturating_mul(WALL_CAP);
        if wall >= cap {
            return true;
        }
        let lead = budget / LEAD_DIVISOR;
        let ran = match wait {
            None => wall,
            Some(wait) => match self.base_wall_ns.load(Ordering::Relaxed) {
                u64::MAX => {
                    self.base_wall_ns.store(now, Ordering::Relaxed);
                    self.base_wait_ns.store(wait, Ordering::Relaxed);
                    lead
                }
                base_wall => {
                    let waited = wait.saturating_sub(self.base_wait_ns.load(Ordering::Relaxed));
                    lead.saturating_add(now.saturating_sub(base_wall).saturating_sub(waited))
                }
            },
        };
        if ran >= budget {
            return true;
        }
        let next = now
            .saturating_add(budget - ran)
            .min(start.saturating_add(cap));
        self.next_ns
            .store(next.min(u64::MAX - 1), Ordering::Relaxed);
        false
    }
    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

/// A `start..end` range of [`CallData::text`].
#[derive(Clone, Copy, Default)]
struct Span(usize, usize);

/// The running call's request, response and host, copied from the caller's sources into
/// buffers kept from call to call (no allocation once warm) so that the host function, created
/// once per VM, can answer from them. Header names are kept as given and matched ignoring
/// ASCII case.
#[derive(Default)]
pub(crate) struct CallData {
    active: bool,
    text: String,
    method: Span,
    path: Span,
    client_ip: Option<Span>,
    route: Option<Span>,
    tls: Option<TlsInfo>,
    headers: Vec<(Span, Span)>,
    query: Vec<(Span, Span)>,
    status: Option<u16>,
    resp_headers: Vec<(Span, Span)>,
    host: Option<Arc<dyn PolicyHost>>,
}

fn push(text: &mut String, s: &str) -> Span {
    let start = text.len();
    text.push_str(s);
    Span(start, text.len())
}

impl CallData {
    fn begin(
        &mut self,
        req: &dyn RequestSource,
        resp: Option<&dyn ResponseSource>,
        host: Arc<dyn PolicyHost>,
    ) {
        let text = &mut self.text;
        text.clear();
        self.method = push(text, req.method());
        self.path = push(text, req.path());
        self.client_ip = req.client_ip().map(|s| push(text, s));
        self.route = req.route().map(|s| push(text, s));
        self.tls = req.tls().cloned();
        let headers = &mut self.headers;
        headers.clear();
        req.for_each_header(&mut |n, v| {
            let n = push(text, n);
            headers.push((n, push(text, v)));
        });
        let query = &mut self.query;
        query.clear();
        req.for_each_query(&mut |k, v| query.push((push(text, k), push(text, v))));
        self.status = resp.map(|r| r.status());
        let resp_headers = &mut self.resp_headers;
        resp_headers.clear();
        if let Some(r) = resp {
            r.for_each_header(&mut |n, v| {
                let n = push(text, n);
                resp_headers.push((n, push(text, v)));
            });
        }
        self.host = Some(host);
        self.active = true;
    }

    fn end(&mut self) {
        self.active = false;
        // why: do not keep the caller's snapshot alive past its call.
        self.host = None;
        self.tls = None;
    }

    fn str(&self, span: Span) -> &str {
        &self.text[span.0..span.1]
    }

    /// The value of header `name` (any case): repeats joined with ", " (RFC 9110 list
    /// syntax).
    fn header<'a>(&'a self, list: &[(Span, Span)], name: &str) -> Option<Cow<'a, str>> {
        let mut found: Option<Cow<'a, str>> = None;
        for &(n, v) in list {
            if !self.str(n).eq_ignore_ascii_case(name) {
                continue;
            }
            let v = self.str(v);
            found = Some(match found {
                None => Cow::Borrowed(v),
                Some(prev) => Cow::Owned(format!("{prev}, {v}")),
            });
        }
        found
    }

    /// Every header, lowercased names, repeats joined.
    fn header_table(&self, lua: &Lua, list: &[(Span, Span)]) -> mlua::Result<Table> {
        let t = lua.create_table_with_capacity(0, list.len())?;
        for (i, &(n, _)) in list.iter().enumerate() {
            let name = self.str(n);
            // Only at the first occurrence of each name.
            if list[..i]
                .iter()
                .any(|&(m, _)| self.str(m).eq_ignore_ascii_case(name))
            {
                continue;
            }
            if let Some(v) = self.header(list, name) {
                t.raw_set(name.to_ascii_lowercase(), v.as_ref())?;
            }
        }
        Ok(t)
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
    /// The prelude's `dispatch(f, fresh, with_resp)`.
    dispatch: Function,
    call: Rc<RefCell<CallData>>,
    deadline: Arc<Deadline>,
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
        let deadline = Arc::new(Deadline::new());
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
            dispatch: get("dispatch")?,
            call: Rc::new(RefCell::new(CallData::default())),
            scripts: Vec::new(),
            deadline,
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
        if !errors.is_empty() {
            return Err(errors);
        }
        if mode == Mode::Serve {
            // why: after the scripts' top-level code, which (like selftest) sees the fakes.
            let host = host_function(&vm.lua, Rc::clone(&vm.call)).map_err(vm_err)?;
            get("set_host")?.call::<()>(host).map_err(vm_err)?;
        }
        Ok(vm)
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
        req: &dyn RequestSource,
        resp: Option<&dyn ResponseSource>,
        host: Arc<dyn PolicyHost>,
        mut on_result: impl FnMut(&Value) -> Result<bool, String>,
    ) -> (Outcome, bool) {
        match self.call.try_borrow_mut() {
            Ok(mut call) => call.begin(req, resp, host),
            Err(_) => {
                return (
                    Outcome::Error("policy hook called re-entrantly".to_owned()),
                    true,
                )
            }
        }
        self.deadline.arm(self.compiled.budget);
        let mut outcome = Outcome::Ok;
        let mut fresh = true;
        for s in &self.scripts {
            let Some(f) = &s.hooks[hook as usize] else {
                continue;
            };
            let called = self.dispatch.call::<Value>((f, fresh, resp.is_some()));
            fresh = false;
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
                Err(e) => self.classify(&e),
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
        self.deadline.disarm();
        let ended = match self.call.try_borrow_mut() {
            Ok(mut call) => {
                call.end();
                true
            }
            Err(_) => false,
        };
        let fit = ended && (!matches!(outcome, Outcome::Budget) || self.recovered());
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

/// The host function of a serving VM: `HOST(op, a, b)` in the prelude, answered from the
/// running call's [`CallData`]. Created once per VM.
fn host_function(lua: &Lua, call: Rc<RefCell<CallData>>) -> mlua::Result<Function> {
    lua.create_function(
        move |lua, (op, a, b): (u8, Option<mlua::String>, Option<mlua::String>)| {
            let call = call
                .try_borrow()
                .map_err(|_| helper_error(lua, "policy call data is busy"))?;
            if !call.active {
                // Only reachable from code running outside a hook call, which serving VMs do
                // not run; answer like the fakes do for an empty host.
                return Ok(Value::Nil);
            }
            let a = a.as_ref().map(|s| s.to_str()).transpose()?;
            let b = b.as_ref().map(|s| s.to_str()).transpose()?;
            host_call(lua, &call, op, a.as_deref(), b.as_deref())
        },
    )
}

/// What `HOST(op, a, b)` answers during a real call.
fn host_call(
    lua: &Lua,
    call: &CallData,
    op: u8,
    a: Option<&str>,
    b: Option<&str>,
) -> mlua::Result<Value> {
    let string = |s: &str| lua.create_string(s).map(Value::String);
    let opt_string = |s: Option<Span>| s.map_or(Ok(Value::Nil), |s| string(call.str(s)));
    match op {
        op::METHOD => string(call.str(call.method)),
        op::PATH => string(call.str(call.path)),
        op::CLIENT_IP => opt_string(call.client_ip),
        op::ROUTE => opt_string(call.route),
        op::REQ_HEADER => match a.and_then(|name| call.header(&call.headers, name)) {
            Some(v) => string(&v),
            None => Ok(Value::Nil),
        },
        op::REQ_HEADERS => call.header_table(lua, &call.headers).map(Value::Table),
        op::RESP_HEADER => match a.and_then(|name| call.header(&call.resp_headers, name)) {
            Some(v) => string(&v),
            None => Ok(Value::Nil),
        },
        op::RESP_HEADERS => call.header_table(lua, &call.resp_headers).map(Value::Table),
        // First value wins, as documented on `PolicyRequest::query`.
        op::QUERY_PARAM => {
            match a.and_then(|k| call.query.iter().find(|&&(n, _)| call.str(n) == k)) {
                Some(&(_, v)) => string(call.str(v)),
                None => Ok(Value::Nil),
            }
        }
        op::QUERY => {
            let t = lua.create_table_with_capacity(0, call.query.len())?;
            for &(k, v) in call.query.iter().rev() {
                t.raw_set(call.str(k), call.str(v))?;
            }
            Ok(Value::Table(t))
        }
        op::TLS => match &call.tls {
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
        op::STATUS => Ok(call
            .status
            .map_or(Value::Nil, |s| Value::Integer(i64::from(s)))),
        op::MAP => match (&call.host, a, b) {
            (Some(host), Some(map), Some(key)) => host
                .map_get(map, key)
                .map_or(Ok(Value::Nil), |v| string(&v)),
            _ => Ok(Value::Nil),
        },
        op::HEALTHY | op::TOTAL | op::INFLIGHT | op::QUEUED => {
            let state = match (&call.host, a) {
                (Some(host), Some(name)) => host.upstream_state(name),
                _ => None,
            };
            let Some(state) = state else {
                return Ok(Value::Nil);
            };
            let n = match op {
                op::HEALTHY => state.healthy,
                op::TOTAL => state.total,
                op::INFLIGHT => state.inflight,
                _ => state.queued,
            };
            Ok(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
        }
        other => Err(helper_error(lua, format!("unknown host operation {other}"))),
    }
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

#[cfg(test)]
mod deadline_tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A 2 ms budget armed at t = 0 (wall clock in ms; run-queue wait in ms, None = unknown).
    fn armed() -> Deadline {
        let d = Deadline::new();
        d.arm_at(0, 2 * MS);
        d
    }

    #[test]
    fn short_calls_never_look_closer() {
        let d = armed();
        assert_eq!(
            d.next_ns.load(Ordering::Relaxed),
            MS / 2,
            "lead is a quarter budget"
        );
    }

    #[test]
    fn time_spent_preempted_is_not_counted() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, Some(100 * MS)), "baseline");
        // 8 ms later, 7.9 of them waiting on the run queue: ran 0.5 + 0.1 ms.
        assert!(!d.look_closer(17 * MS / 2, Some(100 * MS + 79 * MS / 10)));
        // Then it runs on without being preempted: out at 2 ms of running (wall 9.9 ms).
        let waited = Some(100 * MS + 79 * MS / 10);
        assert!(!d.look_closer(98 * MS / 10, waited));
        assert!(d.look_closer(99 * MS / 10, waited));
    }

    #[test]
    fn a_runaway_is_cut_at_its_budget() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, Some(5 * MS)));
        assert_eq!(
            d.next_ns.load(Ordering::Relaxed),
            2 * MS,
            "next look at the budget"
        );
        assert!(d.look_closer(2 * MS, Some(5 * MS)));
    }

    #[test]
    fn the_wall_clock_caps_a_call_at_ten_budgets() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, Some(0)));
        assert!(!d.look_closer(19 * MS, Some(18 * MS)), "ran 1.5 ms in 19");
        assert_eq!(
            d.next_ns.load(Ordering::Relaxed),
            20 * MS,
            "next look at the cap"
        );
        assert!(
            d.look_closer(20 * MS, Some(19 * MS)),
            "ran 1.5 ms in 20: cap"
        );
    }

    #[test]
    fn without_scheduler_statistics_the_wall_clock_counts() {
        let d = armed();
        assert!(!d.look_closer(MS / 2, None));
        assert_eq!(d.next_ns.load(Ordering::Relaxed), 2 * MS);
        assert!(d.look_closer(2 * MS, None));
    }

    #[test]
    fn this_thread_reports_its_run_queue_wait() {
        // Linux with scheduler statistics, as the gateway runs on; elsewhere the wall clock
        // counts (tested above).
        if std::path::Path::new("/proc/thread-self/schedstat").exists() {
            assert!(thread_run_delay_ns().is_some());
        }
    }
}
