//! `tessera-sim` lets a researcher run a whole consortium on one machine:
//! one coordinator and many members, through exactly the protocol code and
//! drivers the daemons use (secure aggregation included), over an in-memory
//! network or real QUIC on loopback.
//!
//! What it holds:
//!
//! - [`Scenario`]: a scenario file (`simulations/*.toml`): the data set, the
//!   [`Partitioner`] that splits it across members, the dropout and latency
//!   models ([`DropoutSection`], [`LatencySection`]) and the same model,
//!   training, secure-aggregation and strategy sections an operator writes.
//! - [`run_scenario`]: one run, returning a [`SimResult`] and writing
//!   `metrics.jsonl`, `summary.json` and (optionally) `report.md` with its
//!   plots ([`PLOTS`]).
//! - [`load_table`], [`scenario_partition`], [`member_splits`],
//!   [`partition_images`] and [`histogram`]: the partition on its own, to
//!   look at it before a run or hand it to another framework.
//! - [`compare`]: the centralized, local-only and federated baselines.
//! - Members across processes and machines: [`run_processes`] (the
//!   coordinator here, workers started as child processes), or the two
//!   pieces started by hand, [`run_coordinator`] and [`run_worker`] (each
//!   hosting a [`MemberRange`]), connected over QUIC with the run's own PKI
//!   ([`prepare_pki`]). The same scenario gives the same model, bit for
//!   bit, in one process or spread over many; [`LostMember`]s are members
//!   whose worker died (dropouts).
//!
//! Faults enter only through a wrapper around each member's state machine
//! (`faults::Faulty`, driven by the client driver like any
//! `MemberMachine`); the client driver and the participant have no fault
//! switch. This crate must not re-implement any protocol step: a result here
//! is a result the daemons would produce. Runs are reproducible: metrics
//! depend on the scenario and seed only, never on timing or worker count.
//! Plaintext aggregation exists only as the explicitly named
//! `insecure_plaintext` research option.

#![warn(missing_docs)]

// Public as a namespace: `compare::compare`, `compare::table` and
// `compare::Row` say what they are only under it.
pub mod compare;
mod data;
mod distributed;
mod faults;
mod members;
mod memory;
mod observer;
mod partition;
mod plots;
mod population;
mod report;
mod run;
mod scenario;
mod statistics;
mod worker;

pub use data::{load_table, member_splits, scenario_partition};
pub use distributed::{CoordinatorOptions, LostMember, ProcessOptions, prepare_pki, run_coordinator, run_processes};
pub use faults::{DropoutSection, FaultStats, LatencySection};
pub use members::partition_images;
pub use memory::small_pages;
pub use partition::{Partitioner, histogram};
pub use population::PopulationDraw;
pub use report::PLOTS;
pub use run::{SimOptions, SimResult, TransportKind, run_scenario};
pub use scenario::{DataKind, DataSection, Scenario, ScenarioError};
pub use worker::{MemberRange, WorkerOptions, WorkerReport, run_worker};
