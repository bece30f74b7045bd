//! `tessera-client` is the member's side of Tessera: the daemon that runs
//! inside an institution next to its private data. It trains locally when
//! the aggregator asks, and releases only a clipped, privatized, securely
//! masked update and aggregate evaluation metrics.
//!
//! The protocol state machine is `tessera_protocol::member::Participant`
//! (no sockets, no clocks, no training); [`driver`] dials out, moves frames and runs local
//! work; [`egress`] records every byte that leaves. This crate must never
//! send, log or return a record or a per-example value, and never accept a
//! round without secure aggregation unless its policy is the simulator's
//! explicit research mode.

pub mod config;
pub mod daemon;
pub mod driver;
pub mod egress;
pub mod images;
pub mod privacy;
pub mod progress;

pub use driver::{ClientExit, ClientOptions, run};
pub use egress::EgressLedger;
pub use privacy::LedgerGuard;
/// The driver's contract with the member's model (`tessera-learn`).
pub use tessera_learn::LocalModel;
