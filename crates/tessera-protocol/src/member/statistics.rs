//! The member's side of a statistics round (issue #18): check the request
//! against its own schema and the round's noise plan before anything is
//! charged, hand the counting to the driver ([`Output::Statistics`]), and
//! upload the counts as the round's one tensor, projected onto the release's
//! bound, through the same distributed noise and masking as an update. No
//! model travels: the round starts at `RoundStart` (protocol version 6).

use tessera_core::{
    FeatureSchema, LocalStatistics, ModelParams, ParamLayout, RoundSettings, STATS_TENSOR, StatsRelease, TrainedUpdate,
};

use super::{Event, LocalFailure, MemberRng, Output, Participant, PrivacyRefusal, Refusal, UpdateError};
use crate::statistics::{StatisticsRefusal, check_statistics};
use tessera_core::ClientMsg;

/// What a member counts statistics over: its declared schema and the run's
/// classes. A member without one (an image member) refuses statistics
/// rounds ([`StatisticsRefusal::NotOffered`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StatisticsShape {
    /// The consortium's feature schema, as this member declared it.
    pub schema: FeatureSchema,
    /// `[model] num_classes`.
    pub classes: u32,
}

impl<R: MemberRng> Participant<R> {
    /// A statistics round: the request must fit the member's schema, and
    /// the planned noise must cover the release. Nothing is charged before.
    pub(super) fn check_statistics_request(&self, settings: &RoundSettings, cohort: u32) -> Result<(), Refusal> {
        let Some(release) = &settings.stats else { return Ok(()) };
        let shape = self.policy.statistics.as_ref().ok_or(StatisticsRefusal::NotOffered).map_err(stats)?;
        if release.classes != shape.classes || !release.matches_schema(&shape.schema) {
            return Err(stats(StatisticsRefusal::Schema));
        }
        check_statistics(settings, cohort).map_err(stats)?;
        Ok(())
    }

    /// A statistics round starts at once: its upload is the counts alone
    /// (its layout does not depend on the model), so the aggregator streams
    /// no model and the round proceeds as if an empty one had arrived. A
    /// training model sent anyway is refused as a second model.
    pub(super) fn statistics_round_started(&mut self, round: u64) -> Result<(), Refusal> {
        self.model_ready(round, ModelParams::zeros(&ParamLayout { entries: Vec::new() }))
    }

    /// The driver counted the member's records for `round`'s statistics.
    /// The counts are uploaded as the round's only tensor; a failure
    /// declines the round.
    pub fn statistics_done(&mut self, round: u64, result: Result<LocalStatistics, LocalFailure>) {
        let current = self.round.as_ref().filter(|r| r.round == round && !r.sent);
        let Some(release) = current.and_then(|r| r.settings.stats.clone()) else { return };
        let outcome = result
            .map_err(|e| Refusal::from(UpdateError::Training(e)))
            .and_then(|s| counts_tensor(&release, &s))
            .and_then(|(base, params)| {
                if let Some(r) = self.round.as_mut() {
                    r.base = Some(base);
                    r.trained = Some(TrainedUpdate { params, num_examples: 0, mean_loss: 0.0 });
                }
                self.maybe_send_update()
            });
        if let Err(e) = outcome {
            self.out.push_back(Output::Event(Event::Refused { round: Some(round), reason: e.to_string() }));
            if let Some(r) = self.round.take() {
                self.out.push_back(Output::Send(ClientMsg::Decline { round: r.round, reason: e.to_string() }));
            }
        }
    }
}

fn stats(e: StatisticsRefusal) -> Refusal {
    Refusal::Privacy(PrivacyRefusal::Statistics(e))
}

/// The counts as the round's upload: a zero base and the counts, so the
/// "delta" the update path clips and noises is the count vector itself.
fn counts_tensor(release: &StatsRelease, s: &LocalStatistics) -> Result<(ModelParams, ModelParams), Refusal> {
    if !s.fits(release) {
        return Err(stats(StatisticsRefusal::Schema));
    }
    let layout = ParamLayout { entries: vec![(STATS_TENSOR.to_string(), vec![release.len()])] };
    let params = ModelParams::from_flat(&layout, &s.to_vector()).map_err(UpdateError::Params)?;
    Ok((ModelParams::zeros(&layout), params))
}
