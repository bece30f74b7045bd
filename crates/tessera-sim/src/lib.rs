//! `tessera-sim` lets a researcher run a whole consortium on one machine:
//! one coordinator and many members, through exactly the protocol code and
//! drivers the daemons use (secure aggregation included), over an in-memory
//! network or real QUIC on loopback.
//!
//! It owns scenarios, partitioners, the dropout and latency models (faults
//! enter only through `faults::Faulty`, a wrapper around each member's state
//! machine; the client driver and the participant have no fault switch), run orchestration,
//! reports with plots and the `compare` baselines. It must not re-implement
//! any protocol step: a result here is a result the daemons would produce.
//! Runs are reproducible: metrics depend on the scenario and seed only,
//! never on timing or worker count. Plaintext aggregation exists only as the
//! explicitly named `insecure_plaintext` research option.

pub mod compare;
pub mod data;
pub mod faults;
pub mod members;
mod observer;
pub mod partition;
pub mod plots;
pub mod report;
pub mod run;
pub mod scenario;

pub use run::{SimOptions, SimResult, TransportKind, run_scenario};
pub use scenario::Scenario;
