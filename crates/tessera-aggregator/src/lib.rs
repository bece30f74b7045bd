//! `tessera-aggregator` is the consortium operator's side of Tessera: it
//! admits members, schedules rounds, runs secure aggregation so that it
//! learns only the sum of the cohort's updates, applies the server
//! optimizer, and writes what happened to the run directory.
//!
//! The protocol lives in `tessera_protocol::coordinator`, a sans-IO state
//! machine with no sockets, clocks or tasks. This crate is what runs it:
//!
//! - [`serve`] is the thin async loop that feeds the coordinator from any
//!   `tessera-transport` listener (QUIC in the daemon, memory in the
//!   simulator) and reports each round to a [`RunObserver`];
//! - [`daemon`] is `tessera-aggregator serve` as a library: the
//!   [`AggregatorConfig`] (`aggregator.toml`) → state database → mTLS
//!   listener → [`serve`], plus the run's starting point
//!   ([`daemon::initial_params`]), which the simulator shares;
//! - [`StateStore`] is the durable state (SQLite): run, rounds, privacy
//!   ledger, checkpoints and the hash-chained audit log ([`AuditEntry`],
//!   [`AuditBreak`]) that crash recovery and the operator tools read;
//! - [`RunDir`] is the run directory every run leaves (`metrics.jsonl`,
//!   `summary.json`), daemon and simulator alike;
//! - [`RevocationList`] is the operator's `revoked.txt` (member names and
//!   certificate fingerprints), which the daemon watches and enforces on
//!   live connections;
//! - [`StatusSnapshot`] is what the status command, page and Prometheus
//!   endpoint show;
//! - [`export_safetensors`] writes the final model for PyTorch users.
//!
//! This crate must never see an individual member's update in the clear
//! outside the simulator's explicitly named research mode, and must never
//! log one.

#![warn(missing_docs)]

mod audit;
mod config;
// A namespace: `daemon::run` and `daemon::listen` would read as a second
// `serve` at the crate root.
pub mod daemon;
mod driver;
mod export;
mod http;
mod instance;
mod observer;
mod quorum;
mod report;
mod revocation;
mod statistics;
mod status;
mod store;

pub use audit::{AuditBreak, AuditEntry};
pub use config::{
    AggregatorConfig, ConfigError, DataSection, RunSection, ServerSection, StateSection, StatusSection, TrainSection,
};
pub use daemon::DaemonError;
pub use driver::{DriverOptions, RunEnd, RunObserver, serve};
pub use export::{
    ExportError, ExportReport, ExportTensor, export_safetensors, full_model, read_safetensors, vision_model,
};
pub use instance::LockError;
pub use observer::{STALL_AFTER_RELEASE_ENV, STALL_BEFORE_COMMIT_ENV, STALL_ENV};
pub use report::{ABSENT, ReportError, RunDir, Summary, round_line, value_or_dash};
pub use revocation::{REVOKED_FILE, RevocationError, RevocationList, RevokedBy};
pub use statistics::{STATISTICS_FILE, statistics_json};
pub use status::{HEARTBEAT_STALE_MS, MemberStatus, RoundPoint, RunState, StatusSnapshot, process_alive};
pub use store::{Checkpoint, LedgerRow, RoundRow, StateStore, StoreError, now_ms, utc};
