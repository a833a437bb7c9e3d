//! floodgate: a programmable edge gateway on Pingora.
//!
//! See `README.md` for the operator's view and `../shared/ARCHITECTURE.md` for the module map.
//! In short: [`config`] parses and validates, [`state`] holds the one hot [`state::Snapshot`]
//! (which only [`control`]'s writer replaces), [`lifecycle`] owns the phase and the stop sequence,
//! [`proxy`] is the thin `ProxyHttp` glue over [`routing`], [`upstream`] (balancing,
//! admission, health) and [`error`] (the one failure-to-status mapping).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod control;
pub mod convert;
pub mod error;
pub mod frontdoor;
pub mod lifecycle;
pub mod logging;
pub mod maps;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod routing;
pub mod rules;
pub mod runtime_api;
pub mod sdnotify;
pub mod state;
pub mod tlsinfo;
pub mod upstream;

/// The gateway's version (`/status`, `floodgate_build_info`, the start-up line).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
