//! `tessera-aggregator` is the consortium operator's side of Tessera: it
//! admits members, schedules rounds, runs secure aggregation so that it
//! learns only the sum of the cohort's updates, applies the server
//! optimizer, and writes what happened to the run directory.
//!
//! The protocol lives in `tessera_protocol::coordinator`, a sans-IO state
//! machine with no sockets, clocks or tasks; [`driver`] is the thin async
//! loop that feeds it from any `tessera-transport` listener (QUIC in the
//! daemon, memory in the simulator). This crate must never see an individual member's update in
//! the clear outside the simulator's explicitly named research mode, and
//! must never log one.

pub mod audit;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod export;
pub mod http;
pub mod observer;
pub mod report;
pub mod status;
pub mod store;

pub use driver::{DriverOptions, RunEnd, RunObserver, serve};
