//! Lua routing and admission policies: operators' scripts run in a sandboxed Lua 5.4 VM, one
//! VM per worker thread, called synchronously from the proxy's request phases.
//!
//! # Scripts
//! A script may define any of these global functions (hooks); absent hooks cost nothing:
//! - `admit(req)` and `route(req)` return a decision table or `nil` (no opinion):
//!   `{ deny = 429, retry_after = 30, body = "..." }`, `{ upstream = "puppet", server = "m2" }`,
//!   `{ priority = 2 }`, `{ set_headers = { ["X-A"] = "b" } }`, `{ remove_headers = { "X-B*" } }`.
//!   `priority`, `set_headers` and `remove_headers` combine, as do `upstream`, `server` and the
//!   header fields; `deny` stands alone. Unknown
//!   fields, wrong types and other combinations are errors. Both hooks accept every form; the
//!   caller decides what each phase honours (see [`PolicyDecision`]).
//! - `response(req, resp)` returns `nil` or `{ set_headers = {...}, remove_headers = {...} }`.
//! - `log(req, resp)` returns nothing useful. A script defining it still has `log.info`.
//! - `selftest()` runs once when scripts are (re)loaded, in a scratch VM, before publishing. It
//!   may call its own hooks with `fake.request{method=, path=, query=, headers=, client_ip=,
//!   tls=, route=}` / `fake.response{status=, headers=}` and `assert` on the results; decisions
//!   returned to it are validated as at run time. `fake.map(name, {key = value})` and
//!   `fake.upstream(name, {healthy=, total=, inflight=, queued=})` feed `maps` and `upstream`.
//!
//! `req` is a read-only view: `method`, `path`, `query` (name -> first value), `headers`
//! (case-insensitive; repeated headers joined with ", "), `client_ip`, `tls` (nil or
//! `{subject, issuer, serial, verified}`), `route` (route name or nil). `resp` has `status` and
//! `headers`. Every field is fetched from Rust on first access in a call, and `headers`/`query`
//! one name at a time (all at once only for `pairs`), so a script pays for what it reads. A view
//! belongs to its call: reading it from a later call (kept in a global) is an error.
//!
//! Helpers: `maps.NAME[key]`, `upstream.healthy/total/inflight/queued(name)` (counts, `nil`
//! for an unknown upstream, so write `(upstream.healthy("x") or 0) > 0`), `shared.get/set/
//! incr/delete` (see [`SharedDict`]: shared by all threads, survives reloads), `log.info/warn`,
//! `print` (= log.info), `now()` (wall clock seconds, float), `os.time/clock/date`.
//!
//! # Several scripts
//! Scripts run in the order given, each in its own environment (own globals, own copies of the
//! library tables, own `load`; see `sandbox.rs`): nothing one script assigns is seen by another;
//! they share state through `shared` and the maps only. For `admit`/`route` the first script returning non-nil wins and later
//! scripts are not called; `response` edits are merged in order (later `set_headers` of the same
//! name win); every `log` hook runs. One time budget covers the whole call (all scripts).
//! A script that fails is skipped (fail open: no opinion) and the call reports the first failure
//! as its [`Outcome`]; a budget failure stops the remaining scripts.
//!
//! # Sandbox
//! Only `string` (without `dump`), `table`, `math`, `utf8`, a restricted `os` (`time`, `clock`,
//! `date`) and the safe base functions exist. No `io`, `debug`, `require`, `package`,
//! `dofile`, `loadfile`, `coroutine`; `load` takes source text only; `collectgarbage` only
//! "count"; `setmetatable` refuses `__gc`; `pcall`/`xpcall` cannot swallow budget or memory
//! errors.
//!
//! # Budgets, and why Lua 5.4 rather than LuaJIT
//! Each call has a time budget ([`PolicySettings::budget`], default 2 ms) of time the worker
//! thread actually ran: wall clock minus time it waited preempted on a run queue (from
//! `/proc/thread-self/schedstat`; policy code does not block, so this is its CPU time), so a
//! thread preempted on a busy machine is not cut for time it did not run. The wall clock may
//! still run to 10 budgets, to bound the latency a call adds. An instruction-count hook every
//! 100 VM instructions raises "budget exceeded" once the call is out of budget; it reads only
//! the wall clock until a call ran a quarter of its budget. Each VM has a memory limit (default
//! 32 MiB). Both give [`Outcome::Budget`]; the VM is checked afterwards and rebuilt if it cannot
//! recover.
//! LuaJIT is faster, but its count hooks do not fire inside compiled traces, so a hot loop such
//! as `while true do end` would never be interrupted and the budget would not hold. Lua 5.4's
//! hooks fire on every interpreted instruction (tested: `infinite_loops_are_stopped_*`).
//! C functions run no Lua instructions, so the hook cannot stop them: the ones that loop in
//! proportion to an argument are replaced (`strlib.rs`: patterns by `pattern.rs`, which checks
//! the budget as it backtracks; `string.rep`; `table.insert/remove/move` in the prelude), and
//! the rest are bounded by the Lua stack or the memory limit (audit in `strlib.rs`). A single
//! C call on a string near the memory limit (e.g. `upper`) can still overrun by its memcpy time.
//!
//! # Reload
//! [`PolicyEngine::compile`] checks every script in a scratch VM, runs top-level code and
//! `selftest()`, and only then returns a new [`CompiledPolicy`] (new generation); the control
//! plane publishes it in the next snapshot (`crate::control`). On failure the last good version
//! keeps running. Every hook call names the generation it runs (the one in the request's
//! snapshot), so the hooks of one request never mix generations. A worker thread rebuilds its
//! VM when a call names another generation than its VM's (lazily, between calls); while
//! requests of two generations are in flight, a thread alternating between them rebuilds each
//! time, which lasts only as long as the older requests.

mod deadline;
mod decision;
mod helper;
mod host;
mod lua;
mod pattern;
#[cfg(test)]
mod pattern_tests;
mod sandbox;
#[cfg(test)]
mod sandbox_tests;
mod shared;
mod strlib;
#[cfg(test)]
mod test_engine;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::decision::{parse_decision, parse_edit};
use self::lua::{Mode, ThreadVm};
pub use self::shared::{SharedDict, SharedError, SharedValue};

/// How long a thread waits before rebuilding a VM whose build failed.
const BROKEN_RETRY: Duration = Duration::from_secs(5);
/// Default per-call time budget.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(2);
/// Default memory limit per Lua VM.
pub const DEFAULT_MEMORY_LIMIT: usize = 32 * 1024 * 1024;
/// Default time allowed for a script's top-level code and for its `selftest()`.
pub const DEFAULT_LOAD_BUDGET: Duration = Duration::from_secs(1);

/// What `admit`/`route` decided. `Pass` = no script had an opinion (or all failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    Pass,
    /// Change admission priority and/or set or remove request headers.
    Adjust {
        priority: Option<i32>,
        set_headers: Vec<(String, String)>,
        /// Removed in every `-`/`_` spelling and case; `NAME*` by prefix.
        remove_headers: Vec<String>,
    },
    /// Send to this upstream (optionally pinned to one server), changing request headers.
    Route {
        upstream: String,
        server: Option<String>,
        set_headers: Vec<(String, String)>,
        remove_headers: Vec<String>,
    },
    /// Answer with `status` (400..=599) without proxying.
    Deny {
        status: u16,
        retry_after: Option<u32>,
        body: Option<String>,
    },
}

/// How a policy call went, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A script denied the request.
    Deny,
    /// A script raised an error or returned an invalid value (message: `path:line: ...`).
    Error(String),
    /// The time budget or the memory limit was exhausted.
    Budget,
}

/// Header edits the `response` hooks asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseEdit {
    pub set_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
}

/// The hooks a script may define (besides `selftest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Admit = 0,
    Route = 1,
    Response = 2,
    Log = 3,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::Admit, Hook::Route, Hook::Response, Hook::Log];

    /// The Lua function name.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Admit => "admit",
            Hook::Route => "route",
            Hook::Response => "response",
            Hook::Log => "log",
        }
    }
}

/// Client certificate details, when the client presented one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub serial: Option<String>,
    pub verified: bool,
}

/// The request as policies see it, as plain data (tests, tools). The gateway implements
/// [`RequestSource`] over its session instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    pub method: String,
    pub path: String,
    /// Query parameters in order; Lua sees the first value of each name.
    pub query: Vec<(String, String)>,
    /// Header names in any case; Lua sees them lowercased, repeats joined with ", ".
    pub headers: Vec<(String, String)>,
    pub client_ip: Option<String>,
    pub tls: Option<TlsInfo>,
    /// Name of the matched route, if any.
    pub route: Option<String>,
}

/// The upstream response as `response`/`log` hooks see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// Where a call reads the request from: the gateway implements it over the live session, so
/// that nothing is copied into owned strings per call; [`PolicyRequest`] implements it over
/// plain data. The engine reads everything once at the start of a call, into buffers its VM
/// reuses, and hands a field to Lua only when a script reads it.
pub trait RequestSource {
    fn method(&self) -> &str;
    fn path(&self) -> &str;
    fn client_ip(&self) -> Option<&str>;
    /// Name of the matched route, if any.
    fn route(&self) -> Option<&str>;
    fn tls(&self) -> Option<&TlsInfo>;
    /// Calls `f(name, value)` for each header, in order; names in any case, repeats allowed.
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str));
    /// Calls `f(name, value)` for each query parameter, in order.
    fn for_each_query(&self, f: &mut dyn FnMut(&str, &str));
}

impl RequestSource for PolicyRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn client_ip(&self) -> Option<&str> {
        self.client_ip.as_deref()
    }
    fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }
    fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        for (n, v) in &self.headers {
            f(n, v);
        }
    }
    fn for_each_query(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in &self.query {
            f(k, v);
        }
    }
}

/// Where `response`/`log` calls read the response from (see [`RequestSource`]).
pub trait ResponseSource {
    fn status(&self) -> u16;
    /// Calls `f(name, value)` for each header, in order; names in any case, repeats allowed.
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str));
}

impl ResponseSource for PolicyResponse {
    fn status(&self) -> u16 {
        self.status
    }
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        for (n, v) in &self.headers {
            f(n, v);
        }
    }
}

/// Live state of an upstream, as `upstream.*` helpers report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamState {
    pub healthy: usize,
    pub total: usize,
    pub inflight: usize,
    pub queued: usize,
}

/// What policies may ask the gateway during a call (the caller implements it over its live
/// snapshot). Called synchronously on the request path: keep it cheap and non-blocking. Passed
/// as an `Arc` the VM holds for the duration of a call and drops at its end.
pub trait PolicyHost {
    /// `maps.NAME[key]` in Lua.
    fn map_get(&self, map: &str, key: &str) -> Option<String>;
    /// `upstream.*(name)` in Lua; `None` for an unknown upstream.
    fn upstream_state(&self, name: &str) -> Option<UpstreamState>;
}

/// Engine settings (from the `policy` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// Time budget per call (all scripts of one hook). Default [`DEFAULT_BUDGET`].
    pub budget: Duration,
    /// Memory limit per Lua VM (one per worker thread). Default [`DEFAULT_MEMORY_LIMIT`].
    pub memory_limit: usize,
    /// Time allowed for top-level code and `selftest()` at load. Default [`DEFAULT_LOAD_BUDGET`].
    pub load_budget: Duration,
    /// Bound on `shared` keys; fixed when the engine is created. Default 10,000.
    pub shared_max_keys: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            budget: DEFAULT_BUDGET,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            load_budget: DEFAULT_LOAD_BUDGET,
            shared_max_keys: shared::DEFAULT_MAX_KEYS,
        }
    }
}

/// Why scripts could not be loaded. `Display` starts with `path:line:` where Lua knows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{message}")]
    Syntax { path: String, message: String },
    /// The script's top-level code raised an error.
    #[error("{message}")]
    Load { path: String, message: String },
    #[error("{message} (in selftest)")]
    Selftest { path: String, message: String },
    #[error("{path}: {phase} exceeded its time budget or memory limit")]
    Budget { path: String, phase: &'static str },
    #[error("{path}: `{hook}` must be a function, found {found}")]
    HookType {
        path: String,
        hook: &'static str,
        found: &'static str,
    },
    #[error("cannot set up the Lua VM: {0}")]
    Vm(String),
}

/// One script: where it came from (used in error messages) and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSource {
    pub path: String,
    pub source: String,
}

/// An immutable, checked set of scripts: what worker VMs are built from.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub generation: u64,
    pub scripts: Vec<ScriptSource>,
    pub budget: Duration,
    pub memory_limit: usize,
    pub load_budget: Duration,
    hooks: [bool; 4],
}

impl CompiledPolicy {
    /// Whether any script defines `hook`: when false the call is a no-op and the caller can
    /// skip preparing the request.
    pub fn has_hook(&self, hook: Hook) -> bool {
        self.hooks[hook as usize]
    }
}

/// The policy runtime: what outlives every generation of the scripts (the `shared`
/// dictionary, the last error, one VM per worker thread). Shared (`Arc`) by all worker threads.
/// It publishes nothing: the generation a request runs is the [`CompiledPolicy`] in the
/// request's snapshot, so every hook of one request runs the same generation. See the module
/// docs.
pub struct PolicyEngine {
    shared: Arc<SharedDict>,
    shared_max_keys: usize,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("shared_max_keys", &self.shared_max_keys)
            .finish_non_exhaustive()
    }
}

enum Slot {
    Empty,
    Ready(Box<ThreadVm>),
    /// Building this generation's VM failed on this thread (e.g. top-level code out of budget
    /// on a busy machine); retried after [`BROKEN_RETRY`], not on every call.
    Broken(Arc<CompiledPolicy>, String, Instant),
}

thread_local! {
    // why: one VM per worker thread, never per request; a thread-local rather than a pool
    // because calls are synchronous and never cross an await.
    static VM: RefCell<Slot> = const { RefCell::new(Slot::Empty) };
}

impl PolicyEngine {
    /// An engine whose `shared` dictionary holds at most `shared_max_keys` keys (fixed for
    /// its life: the dictionary survives every reload).
    pub fn new(shared_max_keys: usize) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(SharedDict::new(shared_max_keys)),
            shared_max_keys,
            last_error: Mutex::new(None),
        })
    }

    /// Checks `scripts` (`(path, source)`, run in this order) in a scratch VM, runs their
    /// `selftest()`, and returns them as generation `generation`. An empty list is valid: every
    /// hook is absent. On failure the errors are returned and kept for [`Self::last_error`];
    /// on success the last error is cleared. Publishing is the caller's (the control plane's).
    pub fn compile(
        &self,
        generation: u64,
        scripts: Vec<(String, String)>,
        settings: &PolicySettings,
    ) -> Result<Arc<CompiledPolicy>, Vec<PolicyError>> {
        match compile(generation, scripts, settings, self.shared_max_keys) {
            Ok(compiled) => {
                *self.last_error.lock() = None;
                Ok(Arc::new(compiled))
            }
            Err(errors) => {
                let text = errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                log::warn!(target: "floodgate::policy", "policy reload rejected: {text}");
                *self.last_error.lock() = Some(text);
                Err(errors)
            }
        }
    }

    /// The last rejected reload or runtime script error (cleared by a successful reload).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// The `shared` dictionary scripts see (e.g. for an admin endpoint setting a maintenance
    /// flag).
    pub fn shared(&self) -> &Arc<SharedDict> {
        &self.shared
    }

    /// Runs `admit(req)` hooks. Outcome `Deny` when the decision is `Deny`.
    pub fn admit(
        &self,
        policy: &Arc<CompiledPolicy>,
        req: &dyn RequestSource,
        host: Arc<dyn PolicyHost>,
    ) -> (PolicyDecision, Outcome) {
        self.decide(policy, Hook::Admit, req, host)
    }

    /// Runs `route(req)` hooks. Outcome `Deny` when the decision is `Deny`.
    pub fn route(
        &self,
        policy: &Arc<CompiledPolicy>,
        req: &dyn RequestSource,
        host: Arc<dyn PolicyHost>,
    ) -> (PolicyDecision, Outcome) {
        self.decide(policy, Hook::Route, req, host)
    }

    /// Runs `response(req, resp)` hooks and merges their edits.
    pub fn response(
        &self,
        policy: &Arc<CompiledPolicy>,
        req: &dyn RequestSource,
        resp: &dyn ResponseSource,
        host: Arc<dyn PolicyHost>,
    ) -> (ResponseEdit, Outcome) {
        let mut edit = ResponseEdit::default();
        if !policy.has_hook(Hook::Response) {
            return (edit, Outcome::Ok);
        }
        let outcome = self.run(policy, Hook::Response, req, Some(resp), host, |v| {
            if let Some(e) = parse_edit(v)? {
                for (name, value) in e.set_headers {
                    edit.set_headers
                        .retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                    edit.set_headers.push((name, value));
                }
                edit.remove_headers.extend(e.remove_headers);
            }
            Ok(false)
        });
        (edit, outcome)
    }

    /// Runs every `log(req, resp)` hook; return values are ignored.
    pub fn log(
        &self,
        policy: &Arc<CompiledPolicy>,
        req: &dyn RequestSource,
        resp: &dyn ResponseSource,
        host: Arc<dyn PolicyHost>,
    ) -> Outcome {
        if !policy.has_hook(Hook::Log) {
            return Outcome::Ok;
        }
        self.run(policy, Hook::Log, req, Some(resp), host, |_| Ok(false))
    }

    fn decide(
        &self,
        policy: &Arc<CompiledPolicy>,
        hook: Hook,
        req: &dyn RequestSource,
        host: Arc<dyn PolicyHost>,
    ) -> (PolicyDecision, Outcome) {
        if !policy.has_hook(hook) {
            return (PolicyDecision::Pass, Outcome::Ok);
        }
        let mut decision = None;
        let outcome = self.run(policy, hook, req, None, host, |v| {
            decision = parse_decision(v)?;
            Ok(decision.is_some())
        });
        match (decision, outcome) {
            (Some(d @ PolicyDecision::Deny { .. }), Outcome::Ok) => (d, Outcome::Deny),
            (Some(d), o) => (d, o),
            (None, o) => (PolicyDecision::Pass, o),
        }
    }

    /// Runs `hook` of `policy` on this thread's VM, (re)building the VM when the thread last ran
    /// another generation.
    fn run(
        &self,
        policy: &Arc<CompiledPolicy>,
        hook: Hook,
        req: &dyn RequestSource,
        resp: Option<&dyn ResponseSource>,
        host: Arc<dyn PolicyHost>,
        on_result: impl FnMut(&mlua::Value) -> Result<bool, String>,
    ) -> Outcome {
        let ran = VM.try_with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return Outcome::Error("policy hook called re-entrantly".to_owned());
            };
            let fresh = match &*slot {
                Slot::Ready(vm) => Arc::ptr_eq(&vm.compiled, policy),
                Slot::Broken(c, _, at) => Arc::ptr_eq(c, policy) && at.elapsed() < BROKEN_RETRY,
                Slot::Empty => false,
            };
            if !fresh {
                // why: drop the old VM before building the new one, to not hold two at once.
                *slot = Slot::Empty;
                let built =
                    ThreadVm::build(Arc::clone(policy), Arc::clone(&self.shared), Mode::Serve);
                *slot = match built {
                    Ok(vm) => Slot::Ready(Box::new(vm)),
                    Err(errors) => {
                        let text = errors
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("; ");
                        Slot::Broken(Arc::clone(policy), text, Instant::now())
                    }
                };
            }
            match &mut *slot {
                Slot::Ready(vm) => {
                    let (outcome, fit) = vm.call_hook(hook, req, resp, host, on_result);
                    if !fit {
                        *slot = Slot::Empty;
                    }
                    outcome
                }
                Slot::Broken(_, text, _) => Outcome::Error(text.clone()),
                Slot::Empty => Outcome::Error("policy VM unavailable".to_owned()),
            }
        });
        let outcome = ran.unwrap_or_else(|_| Outcome::Error("thread is shutting down".to_owned()));
        if let Outcome::Error(msg) = &outcome {
            *self.last_error.lock() = Some(msg.clone());
        }
        outcome
    }
}

/// Checks scripts in a scratch VM (with a scratch `shared` dictionary) and runs selftests.
fn compile(
    generation: u64,
    scripts: Vec<(String, String)>,
    settings: &PolicySettings,
    shared_max_keys: usize,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let scripts: Vec<ScriptSource> = scripts
        .into_iter()
        .map(|(path, source)| ScriptSource { path, source })
        .collect();
    let make = |scripts: Vec<ScriptSource>, hooks: [bool; 4]| CompiledPolicy {
        generation,
        scripts,
        budget: settings.budget,
        memory_limit: settings.memory_limit,
        load_budget: settings.load_budget,
        hooks,
    };
    if scripts.is_empty() {
        return Ok(make(scripts, [false; 4]));
    }
    let probe = Arc::new(make(scripts.clone(), [false; 4]));
    let scratch = Arc::new(SharedDict::new(shared_max_keys));
    let vm = ThreadVm::build(probe, scratch, Mode::Check)?;
    let errors = vm.run_selftests(settings.load_budget);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(make(scripts, vm.hook_set()))
}

/// A plain Lua 5.4 VM (string, table, math) whose `string.find/match/gmatch/gsub/rep` are the
/// sandbox's Rust versions, with no budget armed: for `benches/hot_paths.rs`, to compare them
/// with stock Lua on the same patterns.
#[doc(hidden)]
pub fn bench_string_vm(stock: bool) -> mlua::Result<mlua::Lua> {
    let lua = mlua::Lua::new_with(
        mlua::StdLib::STRING | mlua::StdLib::TABLE | mlua::StdLib::MATH,
        mlua::LuaOptions::new(),
    )?;
    if !stock {
        let string = lua.globals().get("string")?;
        strlib::install(
            &lua,
            &string,
            &Arc::new(deadline::Deadline::new()),
            64 << 20,
        )?;
    }
    Ok(lua)
}
