//! Why a member refuses: one typed reason per check, so a driver, a test or
//! an adversarial harness can tell a refused threshold from a refused budget
//! without parsing text. The display strings are what the member logs,
//! records and sends in its `Decline`.

use tessera_core::ParamsError;
use tessera_core::PartyId;
use tessera_core::StreamError;
use tessera_privacy::PrivacyError;
use tessera_secagg::SecAggError;

use super::identity::{AdvertProblem, SignError};

/// Why the member refused a message. Each is logged and recorded; the
/// member does not take part in the affected round.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Refusal {
    /// A round number not above the last one seen: a replay, or a confused aggregator.
    #[error("round {got} is not newer than round {last} already seen (replay?)")]
    Replay {
        /// The round number received.
        got: u64,
        /// The last round number seen.
        last: u64,
    },
    /// A message (or a step of one) out of order.
    #[error("message `{kind}` is not expected now")]
    Unexpected {
        /// What arrived.
        kind: &'static str,
    },
    /// A plaintext round, which this member's policy refuses.
    #[error("round is not securely aggregated and this member requires it")]
    PlaintextRefused,
    /// The cohort breaks the member's policy.
    #[error("cohort is unusable: {0}")]
    BadCohort(#[from] CohortProblem),
    /// The model stream was malformed, too large or failed its digest.
    #[error("model stream: {0}")]
    Model(#[from] StreamError),
    /// Secure aggregation refused a step (keys, shares, an unmask request).
    #[error("secure aggregation: {0}")]
    SecAgg(#[from] SecAggError),
    /// Local training failed or produced an unusable update.
    #[error("local update: {0}")]
    Update(#[from] UpdateError),
    /// A round message before the run's Welcome.
    #[error("message before Welcome")]
    NotWelcomed,
    /// The round's privacy settings break the member's policy or budget.
    #[error("differential privacy: {0}")]
    Privacy(#[from] PrivacyRefusal),
    /// A forwarded advertisement failed its certificate or signature check:
    /// the aggregator (or someone on its behalf) substituted keys.
    #[error("advertisement of party {party}: {problem}")]
    Advertisement {
        /// The cohort party index whose advertisement was refused.
        party: PartyId,
        /// What was wrong with it.
        problem: AdvertProblem,
    },
    /// A forwarded signature on the survivor set does not verify under the
    /// neighbour's certificate key: the aggregator forged or mixed up the
    /// consistency check.
    #[error("the survivor-set signature of party {party} does not verify")]
    SurvivorSignature {
        /// The neighbour whose signature was refused.
        party: PartyId,
    },
    /// A securely aggregated round, but the member has no consortium
    /// identity to sign its keys and check its neighbours' with.
    #[error("secure aggregation needs the member's certificate identity (none configured)")]
    NoIdentity,
    /// The member's own signer failed.
    #[error("{0}")]
    Sign(#[from] SignError),
}

/// What is wrong with an announced cohort.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CohortProblem {
    /// The cohort entry at the member's announced party index is another name.
    #[error("this member is not at its announced position")]
    Misplaced,
    /// The member list is not sorted and duplicate-free, so party indices
    /// would not be the same on every side.
    #[error("member list is not sorted and unique")]
    NotSortedUnique,
    /// Fewer members than the member's policy masks its update among.
    #[error("{members} members, policy minimum {minimum}")]
    TooSmall {
        /// Members in the cohort.
        members: u32,
        /// The policy's `min_cohort`.
        minimum: u32,
    },
    /// A reconstruction threshold at or below two thirds of the
    /// neighbourhood (or the member's stricter policy), or above it.
    #[error("threshold {threshold} is unsafe for a neighbourhood of {neighbourhood} (it must exceed two thirds)")]
    UnsafeThreshold {
        /// The announced threshold.
        threshold: u32,
        /// Members whose shares the member holds or hands out (itself included).
        neighbourhood: u32,
    },
    /// A SecAgg+ degree below what the cohort size needs.
    #[error("{neighbours} neighbours is below the {minimum} a cohort of this size needs")]
    DegreeTooLow {
        /// The announced neighbour count.
        neighbours: u32,
        /// `tessera_secagg::min_neighbours` of the cohort size.
        minimum: u32,
    },
}

/// Why the member's update could not be produced or streamed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum UpdateError {
    /// The driver's local training failed.
    #[error("{0}")]
    Training(LocalFailure),
    /// The trained tensors do not fit the round's model, or are not finite.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// The update could not be coded into ring elements.
    #[error(transparent)]
    Encoding(#[from] SecAggError),
}

/// Why the member's privacy policy refuses a round.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PrivacyRefusal {
    /// The release would not be DP and the member requires DP.
    #[error("the round is not differentially private and this member requires it")]
    NotPrivate,
    /// Central noise trusts the operator with the exact sum.
    #[error("central noise trusts the aggregator; this member requires local or distributed noise")]
    CentralNoise,
    /// Distributed noise sums to a DP release only under secure aggregation.
    #[error("distributed noise without secure aggregation")]
    DistributedWithoutSecAgg,
    /// Fewer survivors than this member's distributed-noise share was sized
    /// for: the sum would carry less noise than every ledger charged for.
    #[error(
        "only {survivors} survivors, but this member's noise share was sized for at least {planned}: \
         revealing would release the sum with less noise than charged"
    )]
    NoiseFloor {
        /// Members in the signed survivor set.
        survivors: u32,
        /// `min_contributors` the round's noise plan assumed (capped at the cohort).
        planned: u32,
    },
    /// The aggregator asked for an evaluation report in the clear (exact
    /// example count, loss and confusion matrix) in a private run: under DP
    /// evaluation leaves only inside the noised secure sum, or not at all.
    #[error("an evaluation report in the clear would release exact counts of this member's data under DP")]
    EvaluationInTheClear,
    /// A round asks for private evaluation outside a DP round under secure
    /// aggregation, or with bounds its release does not cover (client unit:
    /// the round's `clip_norm`; record unit: local noise, and a block that
    /// fits the secure sum's value range).
    #[error("private evaluation is only sent inside a DP, securely summed release that bounds it")]
    EvaluationOutsideTheRelease,
    /// The DP settings are out of range, or the mechanism cannot run.
    #[error(transparent)]
    Settings(#[from] PrivacyError),
    /// The member's own budget refuses the spend.
    #[error(transparent)]
    Budget(#[from] BudgetRefusal),
    /// A statistics request the member cannot verify (issue #18).
    #[error(transparent)]
    Statistics(#[from] crate::statistics::StatisticsRefusal),
}

/// Why a [`PrivacyGuard`](super::PrivacyGuard) refuses to charge a round.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BudgetRefusal {
    /// The spend would take the member past its budget.
    #[error(
        "this member's privacy budget (epsilon {epsilon}, delta {delta:e}) cannot afford the round; \
         {spent_epsilon:.4} spent"
    )]
    Exhausted {
        /// The budget's epsilon.
        epsilon: f64,
        /// The budget's delta.
        delta: f64,
        /// Epsilon spent so far, at the budget's delta.
        spent_epsilon: f64,
    },
    /// The ledger could not make the spend durable, so nothing may be released.
    /// Carries the store's error as display text: I/O errors are not `Clone`.
    #[error("privacy ledger: {0}")]
    Ledger(String),
}

/// Local work (training or evaluation) failed. The driver's error arrives
/// rendered: the learning crates' error types would bring a training backend
/// into a crate that must not link one, and the participant only reports it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct LocalFailure(String);

impl LocalFailure {
    /// A failure described by `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// A failure from an error and its chain of sources, joined by `": "`.
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut reason = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let text = s.to_string();
            // thiserror's `{0}` plus `#[source]` often repeats the source.
            if !reason.ends_with(&text) {
                reason = format!("{reason}: {text}");
            }
            source = s.source();
        }
        Self(reason)
    }
}
