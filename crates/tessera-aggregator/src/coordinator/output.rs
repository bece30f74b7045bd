//! What the coordinator hands its driver: messages, model streams,
//! disconnections and events, and the protocol violations it reports.

use std::sync::Arc;

use tessera_core::message::ModelPurpose;
use tessera_core::{AggregatorMsg, ModelParams};
use tessera_privacy::GaussianSpend;

use super::RoundOutcome;

/// What the driver must do.
#[derive(Clone, Debug)]
pub enum Output {
    Send {
        to: String,
        msg: AggregatorMsg,
    },
    /// Stream `model` to `to` (ModelStart, chunks, ModelEnd) lazily, so the
    /// model is shared rather than copied per member.
    SendModel {
        to: String,
        round: u64,
        purpose: ModelPurpose,
        model: Arc<ModelParams>,
    },
    /// Close the member's connection; it violated the protocol.
    Disconnect {
        member: String,
        reason: String,
    },
    Event(Event),
}

/// Things worth logging or persisting.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    RoundStarted {
        round: u64,
        cohort: Vec<String>,
        cohort_seed: u64,
    },
    /// The round's privacy spend, charged before any of its messages is
    /// sent. Drivers must make it durable before sending anything further
    /// (write-ahead): a crash then never forgets a release.
    PrivacyReserved {
        round: u64,
        spend: GaussianSpend,
        /// Cumulative epsilon at `delta` once this round is counted.
        epsilon: f64,
        delta: f64,
    },
    RoundFinished(Box<RoundOutcome>),
    RoundAborted {
        round: u64,
        reason: String,
        dropped: Vec<String>,
    },
    /// A member misbehaved; the message was rejected.
    Rejected {
        member: String,
        error: String,
    },
    MemberUnhealthy {
        member: String,
        failed_rounds: u32,
    },
    RunFinished {
        reason: String,
    },
}

/// Protocol violations by one member. The member is disconnected; the
/// round goes on with the others.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Violation {
    #[error("message `{kind}` for round {got} during round {expected:?}")]
    WrongRound { kind: &'static str, got: u64, expected: Option<u64> },
    #[error("member is not in this round's cohort")]
    NotInCohort,
    #[error("message `{kind}` is not expected in phase {phase}")]
    UnexpectedMessage { kind: &'static str, phase: &'static str },
    #[error("second `{kind}` in the same round")]
    Duplicate { kind: &'static str },
    #[error("update vector: {0}")]
    BadVector(String),
    #[error("secure aggregation: {0}")]
    SecAgg(String),
    #[error("evaluation report is inconsistent: {0}")]
    BadReport(String),
    #[error("plaintext updates are refused: this run uses secure aggregation")]
    PlaintextRefused,
}
