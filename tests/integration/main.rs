//! One integration-test binary (each file directly under tests/ would link Pingora again).
//! Every module starts real gateways in-process against real origins on 127.0.0.1.

mod common;
mod core;
