//! `tessera-protocol` is Tessera's protocol as deterministic state machines
//! that do no I/O: the member's side ([`member::Participant`]), the
//! aggregator's side ([`coordinator::Coordinator`]), the server optimizers
//! and robust rules, and every value both sides must derive alike (the
//! round's secure-aggregation context, the coding of update values, the
//! decoding of the sum, sub-seeds), one function each.
//!
//! Time comes in as `now_ms` and randomness as an injected CSPRNG, so a run
//! is a pure function of its inputs. The daemons (`tessera-client`,
//! `tessera-aggregator`) and the simulator are thin drivers over this
//! crate. It must never reach tokio, burn, SQLite or hyper, never train,
//! and never read a clock or the OS's randomness; a test over `cargo
//! metadata` (tests/tests/dependency_edges.rs) enforces the first.
//!
//! The joint harness that drives real members against a real coordinator
//! lives in this crate's unit tests (`coordinator::tests`). The `arbitrary`
//! feature adds `fuzzing`: whole inputs for both machines, for fuzz targets.

#![warn(missing_docs)]

mod admission;
pub mod coordinator;
mod derive;
#[cfg(feature = "arbitrary")]
pub mod fuzzing;
pub mod member;
mod statistics;
mod strategy;

pub use admission::{AdmissionPolicy, AdmissionRefusal, SettingsPart, settings_digest};
pub use coordinator::Coordinator;
pub use derive::{
    DeriveError, UpdateCoding, derive_seed, mean_from_plain, mean_from_secure, round_context, update_coding,
    update_rounding_step, update_vector_len,
};
pub use member::{Participant, Policy, PrivacyGuard, Refusal, TrainedUpdate};
pub use statistics::{
    MAX_STATISTICS_VALUES, STATISTICS_NOISE_SLACK, StatisticsRefusal, check_statistics, statistics_dp,
    statistics_parts, statistics_spend,
};
pub use strategy::{AdaptiveConfig, ServerOptimizer, StrategyConfig};
