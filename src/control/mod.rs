//! The control plane: the one way to change the hot state.
//!
//! [`writer::Writer`] holds the current [`crate::state::Snapshot`] and is the only code that
//! publishes one; every trigger becomes one [`Change`] applied under its lock (see
//! [`writer`]). The files a change needs are read before the build ([`inputs`]), so
//! `Snapshot::build` is pure. The triggers:
//! - [`reload`]: the config file (SIGHUP, `POST /reload`);
//! - [`maps`]: map edits from the admin API, the Runtime API socket, map file watchers and
//!   pollers ([`pollers`] starts and stops them as reloads change the maps);
//! - [`policy`]: the Lua scripts (`POST /policy/reload`, the script file watcher).
//!
//! Map files and scripts are noticed by one file watcher ([`watch::FileEvents`]).

pub mod inputs;
pub mod maps;
pub mod policy;
pub mod pollers;
pub mod reload;
pub mod watch;
pub mod writer;

pub use writer::{Applied, Change, MapEdit, Refused, ReloadReport, Writer};
