//! The coordinator's configuration, and where a resumed run picks up.

use serde::{Deserialize, Serialize};
use tessera_core::{RunId, TrainSettings};
use tessera_privacy::GaussianSpend;

use super::{CohortSelection, PrivacyConfig, RobustRule};
use crate::AdmissionPolicy;
use crate::strategy::StrategyConfig;

/// Secure-aggregation parameters of a run; per-round values derive from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecureConfig {
    /// Bits of the ring the masked vector lives in.
    pub modulus_bits: u32,
    /// Update coordinates are clipped to ±clip_range before quantizing.
    pub clip_range: f32,
    /// Threshold as a fraction of the neighbourhood (the cohort under the
    /// complete graph). It only raises the threshold: members refuse one at
    /// or below two thirds, so the coordinator never announces one.
    pub threshold_fraction: f64,
    /// Cohorts larger than this use SecAgg+ (sparse neighbour graph).
    pub secagg_plus_above: u32,
}

impl Default for SecureConfig {
    fn default() -> Self {
        Self { modulus_bits: 32, clip_range: 1.0, threshold_fraction: 2.0 / 3.0, secagg_plus_above: 64 }
    }
}

/// Everything the coordinator needs to run rounds.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// The run's identity, bound into every round's secure-aggregation context.
    pub run_id: RunId,
    /// Rounds to complete.
    pub rounds: u64,
    /// No round starts with fewer members online, and no round is accepted
    /// with fewer contributions.
    pub min_clients: u32,
    /// Members that must be online before a round starts (at least
    /// `min_clients`); lets an operator wait for the whole consortium.
    pub start_quorum: u32,
    /// How each round's cohort is drawn.
    pub cohort: CohortSelection,
    /// Local training settings sent with every round (its seed is set per round).
    pub train: TrainSettings,
    /// `None` is the simulator's research-only `insecure_plaintext` mode.
    pub secure: Option<SecureConfig>,
    /// Differential privacy of the run; `None` releases updates without DP
    /// (secure aggregation still hides individual updates).
    pub dp: Option<PrivacyConfig>,
    /// The server optimizer.
    pub strategy: StrategyConfig,
    /// Deadline for the training + masked-input phase, from round start.
    pub round_deadline_ms: u64,
    /// Deadline for each short phase (keys, shares, unmasking, evaluation).
    pub phase_timeout_ms: u64,
    /// Consecutive aborted attempts before the run gives up.
    pub max_round_retries: u32,
    /// Wait after the first aborted attempt before the next; it doubles
    /// with every further consecutive abort, up to `retry_backoff_max_ms`.
    /// A fault that aborts attempts back to back then cannot burn through
    /// `max_round_retries` (and their reservations) in a second.
    pub retry_backoff_ms: u64,
    /// The cap of the retry wait.
    pub retry_backoff_max_ms: u64,
    /// Seed for cohort sampling, graph seeds and per-member training seeds.
    pub seed: u64,
    /// Values per streamed model chunk.
    pub chunk_values: usize,
    /// Masked streams staged at once (each a vector-sized buffer); more
    /// members wait, with transport backpressure, for a free slot.
    pub stream_slots: u32,
    /// A staged masked stream with no new chunk for this long is abandoned:
    /// its member counts as dropped and is disconnected, and the slot goes
    /// to the next upload. Without it one member that sends `MaskedStart`
    /// and stops would hold a slot until the round's deadline.
    pub stream_idle_ms: u64,
    /// Members failing this many rounds in a row are reported unhealthy.
    pub unhealthy_after: u32,
    /// What members must announce in `Hello` to be admitted; `None` admits
    /// every connected member at once (harnesses that check nothing).
    pub admission: Option<AdmissionPolicy>,
    /// Research only: a Byzantine-robust rule instead of the mean. Needs the
    /// individual updates, so only with `secure: None` and without DP.
    pub robust: Option<RobustRule>,
    /// Members evaluate the new global model on their held-out splits after
    /// every `evaluate_every`-th completed round; 0 turns evaluation off.
    /// Under DP no member is asked for a report in the clear: an exact
    /// example count, loss and confusion matrix are statistics of its data
    /// that no noise covers, so a private run evaluates privately
    /// (`[privacy.evaluation]`) or not at all (issue #18). There is no
    /// switch around this, not even for research: a simulator that owns
    /// every member's data measures its models itself, outside the protocol.
    pub evaluate_every: u64,
}

/// Where a run picks up: a fresh run is `Resume::default()`.
///
/// Round numbers on the wire identify attempts and are never reused
/// (`next_round` must exceed every number a previous process started), while
/// seeds derive from the logical round `completed_rounds + 1`, so a resumed
/// run repeats the rounds an uninterrupted run would have run.
#[derive(Clone, Debug, PartialEq)]
pub struct Resume {
    /// The first wire round number this process may use.
    pub next_round: u64,
    /// Rounds already completed.
    pub completed_rounds: u64,
    /// Every privacy spend charged so far, aborted attempts included.
    pub spent: Vec<GaussianSpend>,
    /// The adaptive clip the next round uses (the last completed round's
    /// `next_clip_norm`), when clipping is adaptive.
    pub clip_norm: Option<f64>,
}

impl Default for Resume {
    fn default() -> Self {
        Self { next_round: 1, completed_rounds: 0, spent: Vec::new(), clip_norm: None }
    }
}
