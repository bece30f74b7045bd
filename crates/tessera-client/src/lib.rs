//! `tessera-client` is the member's side of Tessera: the daemon that runs
//! inside an institution next to its private data. It trains locally when
//! the aggregator asks, and releases only a clipped, privatized, securely
//! masked update and aggregate evaluation metrics.
//!
//! What it holds, in the order a member meets it:
//!
//! - [`ClientConfig`]: `client.toml` and its sections (unknown keys are
//!   errors that name the file), among them the member's own
//!   [`PolicySection`], checked against the protocol's safe floor.
//! - [`run_daemon`]: everything `tessera-client run` does; [`participant`]
//!   and [`tabular_model`] are its steps, shared with the end-to-end tests
//!   so they run exactly what the daemon runs.
//! - [`run`]: the async driver around a member state machine
//!   (`tessera_protocol::member::Participant`, which has no sockets, clocks
//!   or training, or any `MemberMachine` wrapping one, as the simulator's
//!   fault injection does): it dials out, moves frames, runs local work on
//!   a bounded worker pool and reconnects; [`stop_on_signals`] turns
//!   SIGTERM and SIGINT into a graceful close of its connection.
//! - [`EgressLedger`]: a record of every byte that leaves, written before
//!   the frame is sent; [`egress::render`] prints it.
//! - [`LedgerGuard`]: the member's own privacy budget, charged before any
//!   training (write-ahead).
//! - [`personalize`]: after the run, fine-tune the final global model on
//!   the member's own data and keep it and its before/after metrics at home
//!   (`tessera-client personalize`); nothing is sent.
//!
//! Models are reached only through [`LocalModel`] (`tessera-learn`); this
//! crate does not depend on burn. It must never send, log or return a
//! record or a per-example value, and never accept a round without secure
//! aggregation unless its policy is the simulator's explicit research mode.

#![warn(missing_docs)]

mod address;
mod config;
mod daemon;
mod driver;
mod identity;
mod personalize;
// Public as a namespace: `egress::render` says what it renders; a bare
// `tessera_client::render` would not.
pub mod egress;
mod images;
mod privacy;
mod progress;
mod signals;

pub use config::{
    AggregatorSection, BackendChoice, ClientConfig, ConfigError, ConfigProblem, DataConfig, DataSection, ImageDataKind,
    ImageDataSection, ModelSection, PolicyError, PolicySection, PrivacySection, StateSection, TestingSection,
};
pub use daemon::{MemberRandomness, participant, run_daemon, tabular_model};
pub use driver::{CLOSE_FLUSH, ClientError, ClientExit, ClientOptions, run};
pub use egress::{EgressEntry, EgressError, EgressLedger};
pub use identity::{EcdsaSigner, load_member_identity, member_identity};
pub use personalize::{PersonalizeOptions, PersonalizeReport, default_personalized_dir, personalize};
pub use privacy::LedgerGuard;
pub use signals::{StopRequest, stop_on_signals};
/// The driver's contract with the member's model (`tessera-learn`).
pub use tessera_learn::LocalModel;
