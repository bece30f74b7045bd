//! What the coordinator hands its driver: messages, model streams,
//! disconnections and events, and the protocol violations it reports.

use std::sync::Arc;

use tessera_core::{AggregatorMsg, ClientMsgKind, ModelParams, ModelPurpose};
use tessera_privacy::GaussianSpend;

use super::RoundOutcome;
use crate::AdmissionRefusal;

/// What the driver must do.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send `msg` to member `to`.
    Send {
        /// The member's name.
        to: String,
        /// The message.
        msg: AggregatorMsg,
    },
    /// Stream `model` to `to` (ModelStart, chunks, ModelEnd) lazily, so the
    /// model is shared rather than copied per member.
    SendModel {
        /// The member's name.
        to: String,
        /// The round the model belongs to.
        round: u64,
        /// Train on it, or evaluate it.
        purpose: ModelPurpose,
        /// The trainable tensors, shared by every member's stream.
        model: Arc<ModelParams>,
    },
    /// Close the member's connection; it violated the protocol.
    Disconnect {
        /// The member's name.
        member: String,
        /// Why, for the log and the audit trail.
        reason: String,
    },
    /// Refuse the member at admission: close its connection as a refusal
    /// (the member stops rather than dial again), log and audit it.
    RefuseAdmission {
        /// The member's name.
        member: String,
        /// Why, naming the member and both digests.
        refusal: AdmissionRefusal,
    },
    /// Log or persist this.
    Event(Event),
}

/// A cohort member that did not complete an aborted attempt, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropout {
    /// The member's name.
    pub member: String,
    /// What the coordinator saw: a decline with the member's reason, a
    /// disconnect, a protocol violation, or a phase it did not answer.
    pub cause: String,
}

impl std::fmt::Display for Dropout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.member, self.cause)
    }
}

/// Things worth logging or persisting.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A round started with this cohort.
    RoundStarted {
        /// The wire round number (fresh for every attempt).
        round: u64,
        /// The cohort, sorted.
        cohort: Vec<String>,
        /// The seed the cohort was drawn with.
        cohort_seed: u64,
    },
    /// The round's privacy spend, charged before any of its messages is
    /// sent. Drivers must make it durable before sending anything further
    /// (write-ahead): a crash then never forgets a release.
    PrivacyReserved {
        /// The wire round number.
        round: u64,
        /// What the round releases.
        spend: GaussianSpend,
        /// Cumulative epsilon at `delta` once this round is counted.
        epsilon: f64,
        /// The run's delta.
        delta: f64,
    },
    /// A round completed: the new global model and its metrics.
    RoundFinished(Box<RoundOutcome>),
    /// A round was abandoned; it is retried under a new round number.
    RoundAborted {
        /// The wire round number.
        round: u64,
        /// Why.
        reason: String,
        /// The members that dropped out of it, each with its cause.
        dropped: Vec<Dropout>,
        /// The attempt's privacy reservation was taken back (no member had
        /// handed in an update, so nothing of it can be released): the
        /// cumulative epsilon after the refund. Drivers record the refund
        /// in their ledger.
        refunded: Option<f64>,
        /// The next attempt starts no earlier than this many milliseconds
        /// from now (exponential, capped; [`CoordinatorConfig::retry_backoff_ms`](super::CoordinatorConfig::retry_backoff_ms)).
        retry_in_ms: u64,
    },
    /// Members whose revealed Shamir share failed the check against what
    /// its owner signed (seed commitment or mask public key). The round
    /// completed without those shares; drivers write this to the audit log.
    BadShares {
        /// The wire round number.
        round: u64,
        /// The share holders named, sorted.
        members: Vec<String>,
    },
    /// A member misbehaved; the message was rejected.
    Rejected {
        /// The member's name.
        member: String,
        /// What was wrong with the message.
        error: String,
    },
    /// A member failed `failed_rounds` rounds in a row and is left out of
    /// cohorts until it completes one.
    MemberUnhealthy {
        /// The member's name.
        member: String,
        /// Consecutive rounds it dropped out of.
        failed_rounds: u32,
    },
    /// A DP statistics release completed (issue #18): the noised counts.
    StatisticsReleased(Box<super::StatisticsOutcome>),
    /// The run is over.
    RunFinished {
        /// Why it ended.
        reason: String,
    },
}

/// Protocol violations by one member. The member is disconnected; the
/// round goes on with the others.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Violation {
    /// A message for another round than the one running.
    #[error("message `{kind}` for round {got} during round {expected:?}")]
    WrongRound {
        /// The message's kind.
        kind: ClientMsgKind,
        /// The round it names.
        got: u64,
        /// The round running, if any.
        expected: Option<u64>,
    },
    /// The sender is not in the running round's cohort.
    #[error("member is not in this round's cohort")]
    NotInCohort,
    /// A message the round's phase does not take.
    #[error("message `{kind}` is not expected in phase {phase}")]
    UnexpectedMessage {
        /// The message's kind.
        kind: ClientMsgKind,
        /// The round's phase.
        phase: &'static str,
    },
    /// A message the member already sent this round.
    #[error("second `{kind}` in the same round")]
    Duplicate {
        /// The message's kind.
        kind: ClientMsgKind,
    },
    /// An update stream of the wrong length or shape.
    #[error("update vector: {0}")]
    BadVector(#[from] VectorProblem),
    /// Secure aggregation rejected what the member sent.
    #[error("secure aggregation: {0}")]
    SecAgg(#[from] tessera_secagg::SecAggError),
    /// An evaluation report that does not add up.
    #[error("evaluation report is inconsistent: {0}")]
    BadReport(#[from] ReportProblem),
    /// A round message before the member's `Hello` was checked.
    #[error("message `{kind}` before the member's hello was checked")]
    BeforeHello {
        /// The message's kind.
        kind: ClientMsgKind,
    },
    /// A plaintext update in a securely aggregated run.
    #[error("plaintext updates are refused: this run uses secure aggregation")]
    PlaintextRefused,
}

/// What is wrong with an uploaded update stream.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VectorProblem {
    /// The announced length is not the round's.
    #[error("announced {announced} values, the round needs {expected}")]
    Length {
        /// Values announced.
        announced: u64,
        /// Values the round's layout needs.
        expected: u64,
    },
    /// A research-mode weight that is not a finite number in `[0, 1]`.
    #[error("weight must be a finite number in [0, 1]")]
    Weight,
    /// A chunk out of order, or running past the announced length.
    #[error("chunk at offset {offset} out of order or too long")]
    Chunk {
        /// The chunk's offset.
        offset: u64,
    },
    /// A NaN or an infinity.
    #[error("non-finite value")]
    NonFinite,
    /// The stream ended early.
    #[error("{received} of {expected} values received")]
    Incomplete {
        /// Values received.
        received: u64,
        /// Values announced.
        expected: u64,
    },
}

/// What is wrong with an evaluation report.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReportProblem {
    /// A negative or non-finite loss.
    #[error("loss")]
    Loss,
    /// A rate outside `[0, 1]`.
    #[error("a rate outside [0, 1]")]
    Rate,
    /// A confusion matrix that is not square or too large.
    #[error("confusion matrix shape")]
    ConfusionShape,
    /// A confusion matrix whose total is not `num_examples`.
    #[error("confusion matrix does not add up to num_examples")]
    ConfusionTotal,
}

/// A coordinator configuration no run can use.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConfigError {
    /// The cohort selection's parameters are out of range.
    #[error("cohort.{key} must {rule}")]
    Cohort {
        /// The `[cohort]` key.
        key: &'static str,
        /// What it must satisfy.
        rule: &'static str,
    },
    /// The robust rule's parameters are out of range.
    #[error(transparent)]
    Robust(#[from] super::RobustError),
    /// A robust rule needs the individual updates secure aggregation hides.
    #[error(
        "the robust rule {rule} needs individual updates, which secure aggregation hides: \
         only the simulator's insecure_plaintext research mode offers it"
    )]
    RobustUnderSecureAggregation {
        /// The rule's name.
        rule: &'static str,
    },
    /// A robust rule is not a clipped sum, so DP accounting does not cover it.
    #[error("the robust rule {rule} is not covered by the privacy accounting (it is not a clipped sum)")]
    RobustUnderPrivacy {
        /// The rule's name.
        rule: &'static str,
    },
    /// The privacy policy cannot be planned or resumed.
    #[error(transparent)]
    Privacy(#[from] super::PrivacyConfigError),
}
