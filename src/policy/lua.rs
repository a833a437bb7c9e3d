//! One sandboxed Lua 5.4 VM with a set of scripts loaded: built once per worker thread (and
//! generation), and once per reload as the scratch VM that checks scripts before publishing.
//!
//! Owns the time budget hook, the memory limit, the scripts (each in its own environment, see
//! [`super::sandbox`]) and the per-call plumbing: the request, response and [`PolicyHost`] of
//! the running call sit in a [`CallData`] the VM keeps from call to call, and one host function
//! created with the VM answers Lua's questions from it ([`super::host`]). Nothing is converted
//! to Lua values up front: a field becomes a Lua string when a script reads it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::{ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::deadline::{Deadline, BUDGET_EXCEEDED};
use super::host::{host_function, CallData};
use super::sandbox::{install_sandbox, script_env};
use super::shared::SharedDict;
use super::{
    CompiledPolicy, Hook, Outcome, PolicyError, PolicyHost, RequestSource, ResponseSource,
};

/// The time budget hook runs every this many VM instructions. A firing costs about 40 ns (one
/// wall clock read), about a tenth of the time 100 cheap instructions take; fewer instructions
/// between firings bound how far a call with costly instructions (e.g. concatenating large
/// strings) overruns its budget.
const HOOK_EVERY: u32 = 100;

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
        let exports =
            install_sandbox(&lua, shared, &deadline, compiled.memory_limit).map_err(vm_err)?;
        let hook_deadline = Arc::clone(&deadline);
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                if hook_deadline.exceeded() {
                    return Err(mlua::Error::runtime(BUDGET_EXCEEDED));
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
        let load_in = get("load_in")?;
        let mut errors = Vec::new();
        for script in &compiled.scripts {
            match vm.load_script(
                &script.path,
                &script.source,
                mode,
                &checked,
                &log_helper,
                &load_in,
            ) {
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
        load_in: &Function,
    ) -> Result<ScriptVm, PolicyError> {
        let lua = &self.lua;
        let vm_err = |e: mlua::Error| PolicyError::Vm(message(&e));
        // Each script gets its own environment, so two scripts can both define `admit` and
        // neither sees what the other does to its globals.
        let (env, log_table) = script_env(lua, load_in).map_err(vm_err)?;
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
            hooks[hook as usize] = hook_fn(&env, &log_table, path, hook.name())?;
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
            selftest: hook_fn(&env, &log_table, path, "selftest")?,
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

/// The hook `name` a script defined in its environment `env` (whose own `log` helper table,
/// `log_table`, is not a hook).
fn hook_fn(
    env: &Table,
    log_table: &Table,
    path: &str,
    name: &'static str,
) -> Result<Option<Function>, PolicyError> {
    match env.raw_get::<Value>(name) {
        Ok(Value::Function(f)) => Ok(Some(f)),
        Ok(Value::Nil) => Ok(None),
        Ok(Value::Table(t)) if t.to_pointer() == log_table.to_pointer() => Ok(None),
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
