//! One integration-test binary (each file directly under tests/ would link Pingora again).
//! Every module starts real gateways in-process against real origins on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_bodies;
mod admission;
mod admission_kinds;
mod cache;
mod cache_memory;
mod cache_rules;
mod cert_headers;
mod common;
mod config;
mod control;
mod convert;
mod convert_tls;
mod convert_unix;
mod core;
mod frontdoor;
mod header_rules;
mod health;
mod lifecycle;
mod logging;
mod map_pollers;
mod maps;
mod maps_tls;
mod policy;
mod runtime_servers;
mod slow_clients;
mod startup;
mod tls;
mod upstream_resolve;
mod upstream_tls;
mod upstream_unix;
