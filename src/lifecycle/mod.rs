//! The process lifecycle: the observable [`Phase`] (a leaf module), the listening sockets and
//! their hand-over ([`handoff`]), and the stop and upgrade sequences ([`shutdown`]).

pub mod handoff;
pub mod phase;
pub mod shutdown;

pub use phase::Phase;
