//! What the participant hands its driver: outputs to act on and events to record.

use tessera_core::{ClientMsg, DpSettings, TrainSettings};
use tessera_core::{ModelParams, RunId};

/// What the participant asks its driver to do.
#[derive(Clone, Debug)]
pub enum Output {
    /// Record `msg` in the egress ledger, then send it.
    Send(ClientMsg),
    /// Train on `model` with `settings` and call `training_done`.
    Train {
        /// The round the result belongs to.
        round: u64,
        /// The starting point: the global model's trainable tensors.
        model: ModelParams,
        /// The round's training settings.
        settings: TrainSettings,
        /// Record-level DP: train with DP-SGD under these settings.
        dp: Option<DpSettings>,
    },
    /// Evaluate `model` on the held-out split and call `evaluation_done`.
    Evaluate {
        /// The round the report belongs to.
        round: u64,
        /// The model to evaluate.
        model: ModelParams,
    },
    /// Count the member's records as `release` says (exactly; the counts
    /// never leave except through the noised secure sum) and call
    /// `statistics_done`. The driver may write the exact counts to the
    /// member's own report.
    Statistics {
        /// The round the counts belong to.
        round: u64,
        /// What to count.
        release: tessera_core::StatsRelease,
    },
    /// Log or record this.
    Event(Event),
}

/// What happened, for the member's log and egress ledger.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The aggregator admitted the member to a run.
    Welcomed {
        /// The run.
        run_id: RunId,
    },
    /// The member joined a round.
    RoundJoined {
        /// The wire round number.
        round: u64,
        /// Members in the round's cohort.
        cohort_size: usize,
    },
    /// The member's whole (masked) update has been handed out.
    UpdateSent {
        /// The wire round number.
        round: u64,
        /// Values in the uploaded vector.
        values: u64,
    },
    /// The member refused something the aggregator asked; see `Refusal`.
    Refused {
        /// The round concerned, if any.
        round: Option<u64>,
        /// Why, as the member logs and records it.
        reason: String,
    },
    /// The round ended before this member's update began to leave, and
    /// its privacy guard took the round's charge back.
    PrivacyRefunded {
        /// The wire round number.
        round: u64,
        /// Epsilon the guard gave back.
        epsilon: f64,
    },
    /// The aggregator closed a round.
    RoundEnded {
        /// The wire round number.
        round: u64,
        /// Whether the round's aggregate was accepted.
        accepted: bool,
        /// The aggregator's reason.
        reason: String,
    },
    /// The aggregator ended the run.
    Shutdown {
        /// The aggregator's reason.
        reason: String,
    },
}
