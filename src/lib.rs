//! floodgate: a programmable edge gateway on Pingora.
//!
//! See `README.md` for the operator's view and `../shared/ARCHITECTURE.md` for the module map.
//! In short: [`config`] parses and validates, [`state`] holds the one hot [`state::Snapshot`],
//! [`proxy`] is the thin `ProxyHttp` glue over [`routing`], [`upstream`] (balancing,
//! admission, health) and [`error`] (the one failure-to-status mapping).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod convert;
pub mod error;
pub mod frontdoor;
pub mod handoff;
pub mod logging;
pub mod maps;
pub mod mapsync;
pub mod metrics;
pub mod policy;
pub mod policysync;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod rules;
pub mod runtime_api;
pub mod sdnotify;
pub mod shutdown;
pub mod state;
pub mod tlsinfo;
pub mod upstream;

/// The gateway's version (`/status`, `floodgate_build_info`, the start-up line).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
