//! The run's differential-privacy policy and its accounting, inside the
//! sans-IO coordinator. The coordinator charges each round's spend before
//! the round's first message leaves (the driver persists the charge first:
//! see `Event::PrivacyReserved`), refuses a round the budget cannot afford,
//! and, for the `central` placement only, adds the noise to the aggregate.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use tessera_core::{
    AdaptiveClipSettings, DpSettings, EvalRelease, ModelParams, NoisePlacement, PrivacyUnit, TrainSettings,
};
use tessera_privacy::{
    AdaptiveClip, GaussianSpend, PrivacyBudget, PrivacyError, RdpAccountant, adaptive_release,
    calibrate_noise_multiplier, round_spend,
};

/// The `[privacy]` section of a run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Who is protected: each `record` (DP-SGD on every member) or each
    /// `client` (DP-FedAvg on whole updates).
    #[serde(default = "default_unit")]
    pub unit: PrivacyUnit,
    /// Where noise is added. Default: `local` for the record unit;
    /// `distributed` for the client unit under secure aggregation, else
    /// `central` (which trusts the operator).
    #[serde(default)]
    pub noise: Option<NoisePlacement>,
    /// Target (epsilon, delta) for the whole run.
    pub epsilon: f64,
    /// Target delta (default 1e-5).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// L2 clip norm: per example (record) or per update (client).
    pub clip_norm: f64,
    /// Noise multiplier z. When absent it is calibrated so that `rounds`
    /// rounds spend exactly the target epsilon.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// Poisson sampling rate of records per DP-SGD step (record unit only;
    /// the client unit takes its rate from `[cohort] kind = "poisson"`).
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    /// Adaptive clipping (client unit only): `clip_norm` is the initial clip.
    #[serde(default)]
    pub adaptive_clipping: Option<AdaptiveClipConfig>,
    /// Private evaluation (under secure aggregation). Without it a private
    /// run evaluates nothing: no member reports in the clear.
    #[serde(default)]
    pub evaluation: Option<PrivateEvaluationConfig>,
}

/// `[privacy.evaluation]`: members' evaluations travel inside their updates,
/// noised and securely summed with them (issue #18; see
/// [`tessera_core::EvalRelease`]).
///
/// Client unit: the bounds fix the sensitivity. A member's counts are
/// scaled to total at most `max_examples`, its mean loss is clipped to `[0,
/// loss_bound]`, and the encoded evaluation has L2 norm at most `share ·
/// clip_norm`. The round's clip becomes `hypot(clip_norm, share ·
/// clip_norm)`, so the round stays one Gaussian release at the same
/// multiplier (the same epsilon); the price is `sqrt(1 + share²)` times the
/// noise on the update.
///
/// Record unit: one held-out record moves one confusion count by 1. Each
/// member adds its own Gaussian noise to its raw counts at the multiplier
/// [`tessera_privacy::dominated_multiplier`] of the round's spend; a record
/// is in the training split or the held-out split, never both, so the two
/// releases compose in parallel and the round charges nothing more. The
/// loss is not released, `share` and `loss_bound` are not used, and
/// `max_examples` only scales the counts into the secure sum's value range
/// (a cell above it saturates).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateEvaluationConfig {
    /// M: the most held-out examples one member's evaluation counts.
    pub max_examples: u64,
    /// L: the bound on a member's mean loss (default 10).
    #[serde(default = "default_loss_bound")]
    pub loss_bound: f64,
    /// The evaluation's share of the clip norm, in (0, 1] (default 0.5).
    #[serde(default = "default_eval_share")]
    pub share: f64,
    /// Classes k of the confusion matrix; the aggregator daemon fills it in
    /// from `[model] num_classes`.
    #[serde(default)]
    pub classes: Option<u32>,
}

fn default_loss_bound() -> f64 {
    10.0
}

fn default_eval_share() -> f64 {
    0.5
}

/// Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021): the clip
/// follows a target quantile of the members' update norms, learned from a
/// noisy count of unclipped updates that travels inside the secure sum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveClipConfig {
    /// Quantile of update norms the clip tracks (the paper's gamma).
    #[serde(default = "default_quantile")]
    pub target_quantile: f64,
    /// Geometric learning rate eta_C: C <- C exp(-eta_C (b - gamma)).
    #[serde(default = "default_clip_lr")]
    pub learning_rate: f64,
    /// Standard deviation sigma_b of the count noise, in members. Default:
    /// the paper's cohort / 20, raised to the noise multiplier where that is
    /// smaller (sigma_b must exceed z / 2; at z the update keeps z_delta <=
    /// 1.155 z).
    #[serde(default)]
    pub count_noise: Option<f64>,
}

fn default_quantile() -> f64 {
    0.5
}

fn default_clip_lr() -> f64 {
    0.2
}

fn default_unit() -> PrivacyUnit {
    PrivacyUnit::Record
}

fn default_delta() -> f64 {
    1e-5
}

/// A [`PrivacyConfig`] checked against the run and made concrete.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyPlan {
    /// What members are told (min_contributors is filled in per round).
    pub settings: DpSettings,
    /// The run's (epsilon, delta) budget.
    pub budget: PrivacyBudget,
    /// What one round charges.
    pub spend: GaussianSpend,
    /// Adaptive clipping, when configured.
    pub adaptive: Option<AdaptiveClipConfig>,
    /// Private evaluation, when configured (checked: client unit, classes set).
    pub evaluation: Option<PrivateEvaluationConfig>,
}

impl PrivacyConfig {
    /// Resolve defaults and calibrate the noise for `rounds` rounds.
    /// `cohort_rate` is the Poisson cohort-sampling rate, when cohorts are
    /// Poisson-sampled: the client unit's amplification by sampling.
    pub fn plan(
        &self,
        rounds: u64,
        train: &TrainSettings,
        secure: bool,
        cohort_rate: Option<f64>,
    ) -> Result<PrivacyPlan, PrivacyConfigError> {
        let bad = |rule| Err(PrivacyConfigError::Invalid(rule));
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad("privacy.epsilon must be finite and > 0");
        }
        let noise = self.noise.unwrap_or(match (self.unit, secure) {
            (PrivacyUnit::Record, _) => NoisePlacement::Local,
            (PrivacyUnit::Client, true) => NoisePlacement::Distributed,
            (PrivacyUnit::Client, false) => NoisePlacement::Central,
        });
        if noise == NoisePlacement::Distributed && !secure {
            return bad("privacy.noise = \"distributed\" needs secure aggregation");
        }
        // Record unit, distributed noise: one DP-SGD step a round, so that
        // the secure sum is one central step over the members' union. A
        // config asking for more local epochs would not get them.
        if self.unit == PrivacyUnit::Record && noise == NoisePlacement::Distributed && train.local_epochs != 1 {
            return Err(PrivacyConfigError::OneStepRounds { local_epochs: train.local_epochs });
        }
        let sampling_rate = match (self.unit, self.sampling_rate) {
            (PrivacyUnit::Record, Some(q)) => q,
            (PrivacyUnit::Record, None) => {
                return bad("privacy.sampling_rate (Poisson rate per DP-SGD step) is required for unit = \"record\"");
            }
            (PrivacyUnit::Client, None) => cohort_rate.unwrap_or(1.0),
            (PrivacyUnit::Client, Some(_)) => {
                return bad("privacy.sampling_rate applies to the record unit only; for the client unit, \
                     sample cohorts with [cohort] kind = \"poisson\", rate = q");
            }
        };
        if let Some(a) = &self.adaptive_clipping {
            if self.unit != PrivacyUnit::Client {
                return bad("privacy.adaptive_clipping applies to unit = \"client\" only");
            }
            if !((0.0..=1.0).contains(&a.target_quantile) && a.learning_rate.is_finite() && a.learning_rate >= 0.0) {
                return bad("privacy.adaptive_clipping: target_quantile in [0, 1], learning_rate >= 0");
            }
            if a.count_noise.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
                return bad("privacy.adaptive_clipping.count_noise must be finite and > 0");
            }
        }
        if let Some(e) = &self.evaluation {
            if !secure {
                return bad("privacy.evaluation needs secure aggregation");
            }
            let ok = e.max_examples >= 1
                && e.loss_bound.is_finite()
                && e.loss_bound > 0.0
                && e.share > 0.0
                && e.share <= 1.0
                && e.classes.is_some_and(|k| (2..=1024).contains(&k));
            if !ok {
                return bad(
                    "privacy.evaluation: max_examples >= 1, loss_bound > 0, share in (0, 1], classes in 2..=1024",
                );
            }
        }
        let mut settings = DpSettings {
            unit: self.unit,
            noise,
            clip_norm: self.clip_norm,
            noise_multiplier: self.noise_multiplier.unwrap_or(1.0),
            sampling_rate,
            min_contributors: 1,
            delta: self.delta,
            adaptive: None,
        };
        tessera_privacy::validate(&settings).map_err(PrivacyConfigError::Settings)?;
        let per_round = round_spend(&settings, train);
        if self.noise_multiplier.is_none() {
            let steps = per_round.steps.saturating_mul(rounds.max(1));
            settings.noise_multiplier = calibrate_noise_multiplier(self.epsilon, self.delta, sampling_rate, steps)
                .map_err(PrivacyConfigError::Calibration)?;
        }
        Ok(PrivacyPlan {
            spend: round_spend(&settings, train),
            settings,
            budget: PrivacyBudget { epsilon: self.epsilon, delta: self.delta },
            adaptive: self.adaptive_clipping.clone(),
            evaluation: self.evaluation.clone(),
        })
    }
}

/// The secret behind the coordinator's random draws, the central DP noise
/// and the cohorts ([`CentralNoise::cohort_seed`]), taken as an input so the
/// state machine stays deterministic. Each
/// round's noise comes from ChaCha20 keyed by it, on a stream derived from
/// the round, so a resumed run never repeats a round's noise by accident.
/// Whoever knows the key can subtract the noise: the daemon draws it from
/// the OS at start and never stores or logs it; a simulator derives it from
/// its scenario seed to reproduce a run bit for bit.
#[derive(Clone)]
pub struct CentralNoise {
    key: [u8; 32],
}

impl CentralNoise {
    /// A secret key (the daemon's, from the OS).
    pub fn secret(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A key anyone with `seed` can recompute: reproducible simulations only,
    /// since predictable noise protects nothing.
    pub fn reproducible(seed: u64) -> Self {
        let mut key = [0u8; 32];
        ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut key);
        Self { key }
    }

    /// The seed of wire round `round`'s cohort draw: SHA-256 of the key, a
    /// label and the round, so it is as unpredictable as the key and fresh
    /// for every attempt. It is recorded with the round after the draw.
    pub fn cohort_seed(&self, round: u64) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(b"tessera cohort draw");
        h.update(round.to_le_bytes());
        u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    fn round_rng(&self, stream: u64) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::from_seed(self.key);
        rng.set_stream(stream);
        rng
    }
}

impl std::fmt::Debug for CentralNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CentralNoise(..)")
    }
}

/// Epsilon spent and the budget, for status displays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrivacyStatus {
    /// Epsilon charged so far, aborted attempts included.
    pub epsilon_spent: f64,
    /// The run's delta.
    pub delta: f64,
    /// The run's epsilon budget.
    pub epsilon_budget: f64,
    /// The noise multiplier z every round uses.
    pub noise_multiplier: f64,
    /// The adaptive clip the next round uses, when clipping is adaptive.
    pub adaptive_clip: Option<f64>,
}

/// The plan plus everything charged so far.
pub(super) struct PrivacyState {
    pub plan: PrivacyPlan,
    accountant: RdpAccountant,
    spent_epsilon: f64,
    /// The adaptive clip's state, when the plan adapts it.
    clip: Option<AdaptiveClip>,
    /// The accountant and epsilon before the last charge, until the round
    /// it paid for releases something or is refunded.
    last_charge: Option<(RdpAccountant, f64)>,
}

/// What adaptive clipping learned in one round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipStep {
    /// The update clip the round used.
    pub clip_norm: f64,
    /// Noisy fraction of contributors whose update needed no clipping.
    pub unclipped_fraction: f64,
    /// The clip the next round uses.
    pub next_clip_norm: f64,
}

/// Slack for comparing a calibrated spend with its target: calibration
/// lands within 1e-5 relative below the target, never above.
const BUDGET_TOLERANCE: f64 = 1e-9;

impl PrivacyState {
    /// `clip_norm`: the adaptive clip to resume from (else the configured one).
    pub fn new(
        plan: PrivacyPlan,
        already: &[GaussianSpend],
        clip_norm: Option<f64>,
    ) -> Result<Self, PrivacyConfigError> {
        let mut accountant = RdpAccountant::default();
        for s in already {
            accountant
                .compose_poisson_gaussian(s.noise_multiplier, s.sampling_rate, s.steps)
                .map_err(PrivacyConfigError::Ledger)?;
        }
        let spent_epsilon = epsilon_of(&accountant, plan.budget.delta).map_err(PrivacyConfigError::Ledger)?;
        let clip = match &plan.adaptive {
            Some(a) => Some(
                AdaptiveClip::new(clip_norm.unwrap_or(plan.settings.clip_norm), a.target_quantile, a.learning_rate)
                    .map_err(PrivacyConfigError::AdaptiveClipping)?,
            ),
            None => None,
        };
        Ok(Self { plan, accountant, spent_epsilon, clip, last_charge: None })
    }

    /// The mechanism members apply in a round of `cohort` members. Under
    /// adaptive clipping the update clip is the current adaptive one and
    /// `clip_norm` bounds update and bit together (see
    /// [`tessera_privacy::adaptive_release`]).
    pub fn round_settings(&self, cohort: u32) -> Result<DpSettings, String> {
        let mut dp = self.plan.settings.clone();
        if let (Some(clip), Some(a)) = (&self.clip, &self.plan.adaptive) {
            let z = dp.noise_multiplier;
            let sigma_b = a.count_noise.unwrap_or_else(|| (f64::from(cohort) / 20.0).max(z));
            let (bit_scale, vector_clip) = adaptive_release(z, clip.clip_norm(), sigma_b)
                .map_err(|e| format!("privacy.adaptive_clipping: {e}"))?;
            // A hair of slack so the member's f32 bit never exceeds the bound.
            dp.clip_norm = vector_clip * (1.0 + 1e-6);
            dp.adaptive = Some(AdaptiveClipSettings { update_clip: clip.clip_norm(), bit_scale });
        }
        Ok(dp)
    }

    /// Private evaluation for a round: the release members append. Client
    /// unit: the round's settings get `clip_norm` raised to bound update and
    /// evaluation together (one Gaussian release, as with the adaptive bit).
    /// Record unit: counts up to `max_examples` fill half of `value_range`
    /// (the secure sum's), leaving the rest to the members' noise.
    pub fn evaluation(&self, dp: &mut DpSettings, value_range: f64) -> Option<EvalRelease> {
        let e = self.plan.evaluation.as_ref()?;
        let norm = match dp.unit {
            PrivacyUnit::Record => value_range / 2.0,
            PrivacyUnit::Client => {
                let norm = e.share * self.plan.settings.clip_norm;
                // A hair of slack so the member's f32 values never exceed the bound.
                dp.clip_norm = dp.clip_norm.hypot(norm) * (1.0 + 1e-6);
                norm
            }
        };
        Some(EvalRelease {
            classes: e.classes.unwrap_or(2),
            max_examples: e.max_examples,
            loss_bound: e.loss_bound,
            norm,
        })
    }

    /// Fold a round's aggregated bit (the mean of the contributors' scaled
    /// bits, noise included) into the adaptive clip.
    pub fn observe_unclipped(
        &mut self,
        mean_bit: f64,
        settings: &DpSettings,
        contributors: usize,
    ) -> Result<Option<ClipStep>, String> {
        let (Some(clip), Some(a)) = (self.clip.as_mut(), settings.adaptive.as_ref()) else { return Ok(None) };
        let n = contributors.max(1) as f64;
        let unclipped_fraction = mean_bit / a.bit_scale + 0.5;
        let clip_norm = clip.clip_norm();
        let next_clip_norm = clip.update(unclipped_fraction * n, n).map_err(|e| e.to_string())?;
        Ok(Some(ClipStep { clip_norm, unclipped_fraction, next_clip_norm }))
    }

    /// The adaptive clip the next round uses.
    fn adaptive_clip(&self) -> Option<f64> {
        self.clip.as_ref().map(|c| c.clip_norm())
    }

    /// Charge one round, or say why the budget cannot afford it.
    pub fn charge(&mut self) -> Result<f64, String> {
        self.charge_spend(self.plan.spend)
    }

    /// Charge `s` (a round's spend, or a statistics release's), or say why
    /// the budget cannot afford it.
    pub fn charge_spend(&mut self, s: GaussianSpend) -> Result<f64, String> {
        let mut next = self.accountant.clone();
        next.compose_poisson_gaussian(s.noise_multiplier, s.sampling_rate, s.steps).map_err(|e| e.to_string())?;
        let eps = epsilon_of(&next, self.plan.budget.delta).map_err(|e| e.to_string())?;
        if eps > self.plan.budget.epsilon * (1.0 + BUDGET_TOLERANCE) {
            return Err(format!(
                "privacy budget exhausted: epsilon {:.4} of {} spent (delta {:e}); one more round would reach {eps:.4}",
                self.spent_epsilon, self.plan.budget.epsilon, self.plan.budget.delta
            ));
        }
        let before = std::mem::replace(&mut self.accountant, next);
        self.last_charge = Some((before, self.spent_epsilon));
        self.spent_epsilon = eps;
        Ok(eps)
    }

    /// How many more rounds the remaining budget affords, counting up to
    /// `limit` (each charge composes the plan's per-round spend).
    pub fn affordable_rounds(&self, limit: u64) -> u64 {
        let s = self.plan.spend;
        let mut next = self.accountant.clone();
        for k in 0..limit {
            if next.compose_poisson_gaussian(s.noise_multiplier, s.sampling_rate, s.steps).is_err() {
                return k;
            }
            match epsilon_of(&next, self.plan.budget.delta) {
                Ok(eps) if eps <= self.plan.budget.epsilon * (1.0 + BUDGET_TOLERANCE) => {}
                _ => return k,
            }
        }
        limit
    }

    /// Take back the last charge, once: its attempt released nothing.
    /// Returns whether there was a charge to take back.
    pub fn refund_last(&mut self) -> bool {
        let Some((accountant, epsilon)) = self.last_charge.take() else { return false };
        self.accountant = accountant;
        self.spent_epsilon = epsilon;
        true
    }

    pub fn status(&self) -> PrivacyStatus {
        PrivacyStatus {
            epsilon_spent: self.spent_epsilon,
            delta: self.plan.budget.delta,
            epsilon_budget: self.plan.budget.epsilon,
            noise_multiplier: self.plan.settings.noise_multiplier,
            adaptive_clip: self.adaptive_clip(),
        }
    }

    /// Central placement: add noise of std `z · (C + step·sqrt(d)) /
    /// denominator` to a mean that is a sum of clipped updates divided by
    /// `denominator` (the contributors, or a Poisson round's fixed `q·N`).
    /// Each update has L2 norm at most C (the round's `dp.clip_norm`) before
    /// it was rounded into the ring with steps below `step`, so one member
    /// moves the decoded sum by at most `C + step·sqrt(d)`
    /// ([`tessera_privacy::rounded_sensitivity`]).
    pub fn add_central_noise(
        &self,
        mean: &mut ModelParams,
        denominator: f64,
        step: f64,
        noise: &CentralNoise,
        stream: u64,
        dp: &DpSettings,
    ) -> Result<(), String> {
        let d = mean.numel();
        let sensitivity = tessera_privacy::rounded_sensitivity(dp.clip_norm, step, d) / denominator.max(1e-300);
        let m =
            tessera_privacy::GaussianMechanism::new(dp.noise_multiplier, sensitivity, d).map_err(|e| e.to_string())?;
        let mut rng = noise.round_rng(stream);
        for t in &mut mean.tensors {
            m.add_to(&mut t.data, &mut rng).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn epsilon_of(acc: &RdpAccountant, delta: f64) -> Result<f64, PrivacyError> {
    if acc.rdp().iter().all(|r| *r == 0.0) {
        return Ok(0.0);
    }
    acc.epsilon(delta).map(|(e, _)| e)
}

/// Why a `[privacy]` section cannot be planned, or a run's privacy state
/// not resumed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PrivacyConfigError {
    /// A key breaks its rule; the text names both.
    #[error("{0}")]
    Invalid(&'static str),
    /// The resolved per-round settings are out of range.
    #[error("privacy: {0}")]
    Settings(PrivacyError),
    /// No noise multiplier reaches the target budget.
    #[error("privacy: cannot calibrate the noise: {0}")]
    Calibration(PrivacyError),
    /// The adaptive clip cannot start from these values.
    #[error("privacy.adaptive_clipping: {0}")]
    AdaptiveClipping(PrivacyError),
    /// The spends already recorded cannot be composed.
    #[error("privacy ledger: {0}")]
    Ledger(PrivacyError),
    /// Record unit with distributed noise: a round is one DP-SGD step.
    #[error(
        "privacy: unit = \"record\" with noise = \"distributed\" takes exactly one DP-SGD step a round \
         (the secure sum is then one step over all members' records); set [train] local_epochs = 1, \
         not {local_epochs}, and use rounds for steps"
    )]
    OneStepRounds {
        /// The `local_epochs` the run asked for.
        local_epochs: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train() -> TrainSettings {
        TrainSettings {
            local_epochs: 2,
            batch_size: 16,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 0,
            example_weight_cap: 0,
        }
    }

    fn cfg(unit: PrivacyUnit) -> PrivacyConfig {
        PrivacyConfig {
            unit,
            noise: None,
            epsilon: 2.0,
            delta: 1e-5,
            clip_norm: 1.0,
            noise_multiplier: None,
            sampling_rate: if unit == PrivacyUnit::Record { Some(0.1) } else { None },
            adaptive_clipping: None,
            evaluation: None,
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let p = cfg(PrivacyUnit::Record).plan(5, &train(), true, None).unwrap();
        assert_eq!(p.settings.noise, NoisePlacement::Local);
        assert_eq!(p.spend.steps, 20);
        let p = cfg(PrivacyUnit::Client).plan(5, &train(), true, None).unwrap();
        assert_eq!(p.settings.noise, NoisePlacement::Distributed);
        assert_eq!(
            cfg(PrivacyUnit::Client).plan(5, &train(), false, None).unwrap().settings.noise,
            NoisePlacement::Central
        );
        let mut c = cfg(PrivacyUnit::Client);
        c.noise = Some(NoisePlacement::Distributed);
        assert!(c.plan(5, &train(), false, None).unwrap_err().to_string().contains("secure aggregation"));
        let mut r = cfg(PrivacyUnit::Record);
        r.sampling_rate = None;
        assert!(r.plan(5, &train(), true, None).unwrap_err().to_string().contains("sampling_rate"));
        r.sampling_rate = Some(0.1);
        r.noise = Some(NoisePlacement::Central);
        assert!(r.plan(5, &train(), true, None).is_err());
    }

    /// Record unit, distributed noise: opt-in, one Poisson-subsampled step
    /// at q a round (the calibration composes `rounds` of them), and a run
    /// that asks for more local epochs is refused by name.
    #[test]
    fn record_distributed_is_one_step_a_round() {
        let mut r = cfg(PrivacyUnit::Record);
        r.noise = Some(NoisePlacement::Distributed);
        let one = TrainSettings { local_epochs: 1, ..train() };
        let p = r.plan(40, &one, true, None).unwrap();
        assert_eq!(p.settings.noise, NoisePlacement::Distributed);
        assert_eq!(
            p.spend,
            GaussianSpend { noise_multiplier: p.settings.noise_multiplier, sampling_rate: 0.1, steps: 1 }
        );
        assert_eq!(tessera_privacy::member_spend(&p.settings, &one), p.spend);
        // Calibrated on 40 steps at q = 0.1, as a 40-step central DP-SGD run.
        let z = calibrate_noise_multiplier(2.0, 1e-5, 0.1, 40).unwrap();
        assert_eq!(p.settings.noise_multiplier, z);
        let err = r.plan(40, &train(), true, None).unwrap_err();
        assert_eq!(err, PrivacyConfigError::OneStepRounds { local_epochs: 2 });
        assert!(err.to_string().contains("local_epochs = 1"), "{err}");
        assert!(r.plan(40, &one, false, None).unwrap_err().to_string().contains("secure aggregation"));
    }

    /// Calibrated for 5 rounds: exactly 5 charges fit, the 6th is refused,
    /// and epsilon grows monotonically up to (not over) the target.
    #[test]
    fn calibrated_budget_stops_at_the_right_round() {
        for unit in [PrivacyUnit::Record, PrivacyUnit::Client] {
            let plan = cfg(unit).plan(5, &train(), true, None).unwrap();
            let mut st = PrivacyState::new(plan, &[], None).unwrap();
            let mut last = 0.0;
            for _ in 0..5 {
                let e = st.charge().unwrap();
                assert!(e > last && e <= 2.0 * (1.0 + 1e-9), "{e}");
                last = e;
            }
            assert!(last > 2.0 * 0.99, "calibration should use the budget: {last}");
            let why = st.charge().unwrap_err();
            assert!(why.contains("budget exhausted"), "{why}");
            assert_eq!(st.status().epsilon_spent, last);
        }
    }

    #[test]
    fn poisson_cohorts_amplify_the_client_unit_only() {
        let full = cfg(PrivacyUnit::Client).plan(5, &train(), true, None).unwrap();
        let sampled = cfg(PrivacyUnit::Client).plan(5, &train(), true, Some(0.1)).unwrap();
        assert_eq!(sampled.spend.sampling_rate, 0.1);
        assert!(sampled.settings.noise_multiplier < full.settings.noise_multiplier, "amplification buys less noise");
        let record = cfg(PrivacyUnit::Record).plan(5, &train(), true, Some(0.1)).unwrap();
        assert_eq!(record.spend.sampling_rate, 0.1, "the record unit keeps its DP-SGD rate");
    }

    #[test]
    fn adaptive_clip_settings_and_updates() {
        let mut c = cfg(PrivacyUnit::Client);
        c.adaptive_clipping = Some(AdaptiveClipConfig { target_quantile: 0.5, learning_rate: 0.2, count_noise: None });
        let plan = c.plan(5, &train(), true, None).unwrap();
        let z = plan.settings.noise_multiplier;
        let mut st = PrivacyState::new(plan.clone(), &[], None).unwrap();
        let dp = st.round_settings(40).unwrap();
        tessera_privacy::validate(&dp).unwrap();
        let a = dp.adaptive.clone().unwrap();
        assert_eq!(a.update_clip, 1.0);
        // sigma_b = max(40 / 20, z); the update's own multiplier is z_delta.
        let sb = 2.0f64.max(z);
        let zd = tessera_privacy::split_noise_multiplier(z, sb).unwrap();
        assert!((z * dp.clip_norm / a.update_clip - zd).abs() < 1e-5 * zd);
        // Every contributor unclipped (mean bit = +scale/2): the clip shrinks
        // by exp(-0.2 * 0.5); none unclipped: it grows by exp(0.2 * 0.5).
        let step = st.observe_unclipped(a.bit_scale / 2.0, &dp, 10).unwrap().unwrap();
        assert!((step.unclipped_fraction - 1.0).abs() < 1e-12);
        assert!((step.next_clip_norm - (-0.1f64).exp()).abs() < 1e-12);
        let dp2 = st.round_settings(40).unwrap();
        st.observe_unclipped(-dp2.adaptive.as_ref().unwrap().bit_scale / 2.0, &dp2, 10).unwrap();
        assert!((st.status().adaptive_clip.unwrap() - 1.0).abs() < 1e-12);
        // Resumed with a learned clip.
        let resumed = PrivacyState::new(plan, &[], Some(0.25)).unwrap();
        assert_eq!(resumed.round_settings(40).unwrap().adaptive.unwrap().update_clip, 0.25);
        // Record unit refuses it.
        let mut r = cfg(PrivacyUnit::Record);
        r.adaptive_clipping = c.adaptive_clipping.clone();
        assert!(r.plan(5, &train(), true, None).is_err());
    }

    #[test]
    fn resumed_spend_counts() {
        let plan = cfg(PrivacyUnit::Client).plan(5, &train(), true, None).unwrap();
        let spent = vec![plan.spend; 4];
        let mut st = PrivacyState::new(plan, &spent, None).unwrap();
        assert!(st.status().epsilon_spent > 1.5);
        st.charge().unwrap();
        assert!(st.charge().is_err());
    }
}
