//! `tessera-sim` lets a researcher run a whole consortium on one machine:
//! one coordinator and many members, through exactly the protocol code and
//! drivers the daemons use (secure aggregation included), over an in-memory
//! network or real QUIC on loopback.
//!
//! It owns scenarios, partitioners and run orchestration. It must not
//! re-implement any protocol step: a result here is a result the daemons
//! would produce. Plaintext aggregation exists only as the explicitly named
//! `insecure_plaintext` research option.

pub mod partition;
pub mod run;
pub mod scenario;

pub use run::{SimOptions, SimResult, TransportKind, run_scenario};
pub use scenario::Scenario;
