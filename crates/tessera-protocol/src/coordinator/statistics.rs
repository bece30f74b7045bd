//! The coordinator's side of a DP statistics release (issue #18): the
//! `[statistics]` section, the release run once before the first training
//! round (or alone, by the operator's command), its charge to the run's
//! budget, and the decoded noisy counts.
//!
//! The release is a secure round whose purpose is statistics (see
//! `crate::statistics`): every member online is asked (statistics do not
//! sample members, so their spend is unamplified), each uploads its bounded
//! counts through distributed noise and masking, and the coordinator emits
//! [`Event::StatisticsReleased`] with the noised sum instead of stepping the
//! model. It counts toward no training round. An attempt that aborts is
//! retried like a round (refunded when no member's counts arrived).

use serde::{Deserialize, Serialize};
use tessera_core::{
    AggregatorMsg, FeatureSchema, LocalStatistics, ModelParams, PrivacyUnit, RoundMetrics, RoundSettings, STATS_TENSOR,
    SecAggSettings, StatsRelease,
};
use tessera_privacy::{GaussianSpend, RdpAccountant, StatisticsPrivacy, calibrate_noise_multiplier};

use super::round::RoundState;
use super::{ConfigError, Coordinator, Event, Output, PrivacyConfigError, secagg_shape};
use crate::statistics::{check_statistics, statistics_dp, statistics_parts, statistics_spend};

/// The `[statistics]` section: release the consortium's label histogram,
/// missing-value rates and per-feature histograms (ranges, quartiles) once,
/// under DP, before the first training round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatisticsConfig {
    /// The release's own epsilon at the run's delta. Its noise multiplier is
    /// calibrated to it with the RDP accountant (what every ledger charges);
    /// the run's `[privacy] epsilon` covers the release and the rounds.
    pub epsilon: f64,
    /// Equal-width bins per numeric feature, within the schema's bounds
    /// (default 10, at most 4096).
    #[serde(default = "default_bins")]
    pub bins: u32,
    /// M: a member's count vector is projected onto the L2 ball of radius
    /// `M · sqrt(1 + F)`, the largest vector M records can make, so the
    /// counts of a member with at most M records pass exactly. Under the
    /// client unit this bound is the sensitivity: keep it near the largest
    /// member's size.
    pub max_records: u64,
}

fn default_bins() -> u32 {
    10
}

impl StatisticsConfig {
    /// The release this section asks for, for `schema`, `classes` and the
    /// run's unit and delta.
    pub fn release(
        &self,
        schema: &FeatureSchema,
        classes: u32,
        unit: PrivacyUnit,
        delta: f64,
    ) -> Result<StatsRelease, PrivacyConfigError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(PrivacyConfigError::Invalid("statistics.epsilon must be finite and > 0"));
        }
        if !(1..=tessera_core::MAX_STATS_BINS).contains(&self.bins) || self.max_records == 0 {
            return Err(PrivacyConfigError::Invalid("statistics.bins in 1..=4096 and statistics.max_records >= 1"));
        }
        let z = calibrate_noise_multiplier(self.epsilon, delta, 1.0, 1).map_err(PrivacyConfigError::Calibration)?;
        let features = schema.features.len() as f64;
        let bound = self.max_records as f64 * (1.0 + features).sqrt();
        Ok(StatsRelease::for_schema(schema, classes, self.bins, unit, bound, z))
    }
}

/// A release waiting to run, with its privacy map by OpenDP.
#[derive(Clone, Debug)]
pub(super) struct PendingStatistics {
    release: StatsRelease,
    privacy: StatisticsPrivacy,
}

/// What a statistics release gave the consortium.
#[derive(Clone, Debug, PartialEq)]
pub struct StatisticsOutcome {
    /// The wire round number it ran under.
    pub round: u64,
    /// What was released (layout, unit, bound, noise multiplier).
    pub release: StatsRelease,
    /// The noised sum of the contributors' counts, decoded.
    pub counts: LocalStatistics,
    /// Members whose counts are in the sum.
    pub contributors: Vec<String>,
    /// Cohort members that dropped out.
    pub dropped: Vec<String>,
    /// What the ledgers charged for it (RDP).
    pub spend: GaussianSpend,
    /// The release alone by OpenDP: rho and epsilon at the run's delta.
    pub opendp: StatisticsPrivacy,
    /// The run's epsilon spent so far, the release included (RDP ledger).
    pub run_epsilon: f64,
}

impl Coordinator {
    /// A run with a statistics release: with `pending`, run it before the
    /// next training round (or, when no round is left, only the release);
    /// without, it ran before (a resumed run). Needs secure aggregation and
    /// a `[privacy]` policy. Either way a calibrated noise multiplier is
    /// re-calibrated so that the release and all `rounds` fit the run's
    /// epsilon (the same plan before and after the release).
    pub fn with_statistics(mut self, release: StatsRelease, pending: bool) -> Result<Self, ConfigError> {
        let invalid = |rule| ConfigError::Privacy(PrivacyConfigError::Invalid(rule));
        if self.cfg.secure.is_none() {
            return Err(invalid("[statistics] needs secure aggregation"));
        }
        let Some(p) = self.privacy.as_ref() else { return Err(invalid("[statistics] needs a [privacy] section")) };
        let delta = p.plan.budget.delta;
        let privacy = tessera_privacy::statistics_privacy(&statistics_parts(&release), release.sigma(), delta)
            .map_err(|e| ConfigError::Privacy(PrivacyConfigError::Settings(e)))?;
        self.leave_room(statistics_spend(&release))?;
        if pending {
            self.statistics = Some(PendingStatistics { release, privacy });
        }
        Ok(self)
    }

    /// Whether a statistics release is still to run.
    pub fn statistics_pending(&self) -> bool {
        self.statistics.is_some()
    }

    /// Re-calibrate a calibrated training plan so that `spend` plus every
    /// round fits the budget (an explicit noise multiplier stays as set;
    /// the budget then ends the run where it must).
    fn leave_room(&mut self, spend: GaussianSpend) -> Result<(), ConfigError> {
        let Some(cfg) = self.cfg.dp.clone().filter(|c| c.noise_multiplier.is_none()) else { return Ok(()) };
        let rounds = self.cfg.rounds;
        if rounds == 0 {
            return Ok(());
        }
        let (train, secure, rate) = (self.cfg.train.clone(), self.cfg.secure.is_some(), self.cfg.cohort.poisson_rate());
        let plan_at = |z: f64| {
            let mut c = cfg.clone();
            c.noise_multiplier = Some(z);
            c.plan(self.cfg.rounds, &train, secure, rate).map_err(ConfigError::Privacy)
        };
        let fits = |z: f64| -> Result<bool, ConfigError> {
            let plan = plan_at(z)?;
            let mut acc = RdpAccountant::default();
            let s = plan.spend;
            let composed = acc
                .compose_poisson_gaussian(spend.noise_multiplier, spend.sampling_rate, spend.steps)
                .and_then(|()| acc.compose_poisson_gaussian(s.noise_multiplier, s.sampling_rate, s.steps * rounds))
                .and_then(|()| acc.epsilon(plan.budget.delta));
            Ok(composed.is_ok_and(|(e, _)| e <= plan.budget.epsilon))
        };
        let current = self.privacy.as_ref().map_or(1.0, |p| p.plan.settings.noise_multiplier);
        let (mut lo, mut hi) = (current, current * 1.5);
        while !fits(hi)? {
            (lo, hi) = (hi, hi * 1.5);
            if hi > 1e6 {
                return Err(ConfigError::Privacy(PrivacyConfigError::Invalid(
                    "[statistics] leaves no room for the rounds in [privacy] epsilon",
                )));
            }
        }
        for _ in 0..40 {
            let mid = 0.5 * (lo + hi);
            if fits(mid)? { hi = mid } else { lo = mid }
        }
        let plan = plan_at(hi)?;
        if let Some(p) = self.privacy.as_mut() {
            p.plan = plan;
        }
        Ok(())
    }

    /// Start the release with every member online, once the start quorum is.
    pub(super) fn start_statistics(&mut self, now_ms: u64) {
        let needed = self.cfg.min_clients.max(self.cfg.start_quorum).max(2);
        let (Some(pending), Some(secure)) = (self.statistics.as_ref(), self.cfg.secure.as_ref()) else { return };
        if (self.online.len() as u32) < needed {
            return;
        }
        let release = pending.release.clone();
        let round = self.next_round;
        let cohort: Vec<String> = self.online.iter().cloned().collect();
        let n = cohort.len() as u32;
        let minimum = self.cfg.min_clients.max(2).min(n);
        let (neighbours, threshold) = secagg_shape(secure, n, minimum);
        let secagg =
            SecAggSettings { threshold, modulus_bits: secure.modulus_bits, clip_range: secure.clip_range, neighbours };
        let min_contributors = if neighbours.is_none() { threshold.max(minimum) } else { minimum };
        let delta = self.privacy.as_ref().map_or(1e-5, |p| p.plan.budget.delta);
        let mut train = self.cfg.train.clone();
        train.example_weight_cap = 0;
        let dp = statistics_dp(&release, delta, min_contributors.max(1));
        let settings =
            RoundSettings { train, secagg: Some(secagg), dp: Some(dp), eval: None, stats: Some(Box::new(release)) };
        let spend = match check_statistics(&settings, n) {
            Ok(s) => s,
            Err(e) => return self.finish_run_failed(format!("the statistics release cannot run: {e}")),
        };
        let charged = match self.privacy.as_mut().map(|p| p.charge_spend(spend)) {
            Some(Ok(e)) => e,
            Some(Err(reason)) => return self.finish_run(reason),
            None => return,
        };
        self.started_any = true;
        let cohort_seed = self.noise.cohort_seed(round);
        self.out.push_back(Output::Event(Event::RoundStarted { round, cohort: cohort.clone(), cohort_seed }));
        self.out.push_back(Output::Event(Event::PrivacyReserved { round, spend, epsilon: charged, delta }));
        match RoundState::start(now_ms, round, cohort, settings, &self.cfg, &self.global, &mut self.out) {
            Ok(mut state) => {
                state.minimum = minimum;
                self.current = Some(state);
            }
            Err(reason) => {
                let refunded = self.refund();
                let reason = format!("cannot start the statistics release: {reason}");
                self.attempt_failed(now_ms, round, reason, vec![], refunded);
            }
        }
    }

    /// The secure sum of a statistics round is in: decode the noised counts,
    /// close the round and go on to training (or end a release-only run).
    pub(super) fn statistics_aggregated(&mut self, now_ms: u64, mean: Result<ModelParams, String>) {
        let r = self.current.take().expect("round in progress");
        let n = r.contributor_count() as f32;
        let sum = mean.and_then(|m| {
            let t = m.tensors.into_iter().find(|t| t.name == STATS_TENSOR).ok_or("the statistics tensor is missing")?;
            Ok(t.data.iter().map(|v| v * n).collect::<Vec<f32>>())
        });
        let (Ok(sum), Some(pending)) = (sum.clone(), self.statistics.clone()) else {
            self.current = Some(r);
            return self.abort_round(now_ms, sum.err().unwrap_or_else(|| "no statistics release".into()));
        };
        let outcome = r.outcome(now_ms, RoundMetrics::default(), &self.global);
        for m in &r.cohort {
            let msg = AggregatorMsg::RoundEnd { round: r.round, accepted: true, reason: String::new() };
            self.out.push_back(Output::Send { to: m.clone(), msg });
        }
        let released = StatisticsOutcome {
            round: r.round,
            counts: pending.release.decode(&sum),
            spend: statistics_spend(&pending.release),
            release: pending.release,
            contributors: outcome.contributors,
            dropped: outcome.dropped,
            opendp: pending.privacy,
            run_epsilon: self.privacy.as_ref().map_or(0.0, |p| p.status().epsilon_spent),
        };
        self.out.push_back(Output::Event(Event::StatisticsReleased(Box::new(released))));
        self.statistics = None;
        self.retries = 0;
        self.next_round += 1;
        self.maybe_start_round(now_ms);
    }
}
