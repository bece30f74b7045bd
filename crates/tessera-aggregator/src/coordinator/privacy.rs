//! The run's differential-privacy policy and its accounting, inside the
//! sans-IO coordinator. The coordinator charges each round's spend before
//! the round's first message leaves (the driver persists the charge first:
//! see `Event::PrivacyReserved`), refuses a round the budget cannot afford,
//! and, for the `central` placement only, adds the noise to the aggregate.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use tessera_core::ModelParams;
use tessera_core::round::{DpSettings, NoisePlacement, PrivacyUnit, TrainSettings};
use tessera_privacy::{GaussianSpend, PrivacyBudget, RdpAccountant, calibrate_noise_multiplier, round_spend};

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
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// L2 clip norm: per example (record) or per update (client).
    pub clip_norm: f64,
    /// Noise multiplier z. When absent it is calibrated so that `rounds`
    /// rounds spend exactly the target epsilon.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// Poisson sampling rate of records per DP-SGD step (record unit only).
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    /// TEST ONLY: derive central noise from the run seed so that runs are
    /// bit-reproducible. Predictable noise protects nothing.
    #[serde(default)]
    pub test_seeded_noise: bool,
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
    pub budget: PrivacyBudget,
    /// What one round charges.
    pub spend: GaussianSpend,
    pub test_seeded_noise: bool,
}

impl PrivacyConfig {
    /// Resolve defaults and calibrate the noise for `rounds` rounds.
    pub fn plan(&self, rounds: u64, train: &TrainSettings, secure: bool) -> Result<PrivacyPlan, String> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err("privacy.epsilon must be finite and > 0".into());
        }
        let noise = self.noise.unwrap_or(match (self.unit, secure) {
            (PrivacyUnit::Record, _) => NoisePlacement::Local,
            (PrivacyUnit::Client, true) => NoisePlacement::Distributed,
            (PrivacyUnit::Client, false) => NoisePlacement::Central,
        });
        if noise == NoisePlacement::Distributed && !secure {
            return Err("privacy.noise = \"distributed\" needs secure aggregation".into());
        }
        let sampling_rate = match (self.unit, self.sampling_rate) {
            (PrivacyUnit::Record, Some(q)) => q,
            (PrivacyUnit::Record, None) => {
                return Err(
                    "privacy.sampling_rate (Poisson rate per DP-SGD step) is required for unit = \"record\"".into()
                );
            }
            (PrivacyUnit::Client, None | Some(1.0)) => 1.0,
            (PrivacyUnit::Client, Some(_)) => {
                return Err("privacy.sampling_rate applies to the record unit only; client cohorts are not Poisson-sampled, so the client unit accounts with rate 1".into());
            }
        };
        let mut settings = DpSettings {
            unit: self.unit,
            noise,
            clip_norm: self.clip_norm,
            noise_multiplier: self.noise_multiplier.unwrap_or(1.0),
            sampling_rate,
            min_contributors: 1,
            delta: self.delta,
        };
        tessera_privacy::plan::validate(&settings).map_err(|e| format!("privacy: {e}"))?;
        let per_round = round_spend(&settings, train);
        if self.noise_multiplier.is_none() {
            let steps = per_round.steps.saturating_mul(rounds.max(1));
            settings.noise_multiplier = calibrate_noise_multiplier(self.epsilon, self.delta, sampling_rate, steps)
                .map_err(|e| format!("privacy: cannot calibrate the noise: {e}"))?;
        }
        Ok(PrivacyPlan {
            spend: round_spend(&settings, train),
            settings,
            budget: PrivacyBudget { epsilon: self.epsilon, delta: self.delta },
            test_seeded_noise: self.test_seeded_noise,
        })
    }
}

/// Epsilon spent and the budget, for status displays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrivacyStatus {
    pub epsilon_spent: f64,
    pub delta: f64,
    pub epsilon_budget: f64,
    pub noise_multiplier: f64,
}

/// The plan plus everything charged so far.
pub(super) struct PrivacyState {
    pub plan: PrivacyPlan,
    accountant: RdpAccountant,
    spent_epsilon: f64,
}

/// Slack for comparing a calibrated spend with its target: calibration
/// lands within 1e-5 relative below the target, never above.
const BUDGET_TOLERANCE: f64 = 1e-9;

impl PrivacyState {
    pub fn new(plan: PrivacyPlan, already: &[GaussianSpend]) -> Result<Self, String> {
        let mut accountant = RdpAccountant::default();
        for s in already {
            accountant
                .compose_poisson_gaussian(s.noise_multiplier, s.sampling_rate, s.steps)
                .map_err(|e| e.to_string())?;
        }
        let spent_epsilon = epsilon_of(&accountant, plan.budget.delta)?;
        Ok(Self { plan, accountant, spent_epsilon })
    }

    /// Charge one round, or say why the budget cannot afford it.
    pub fn charge(&mut self) -> Result<f64, String> {
        let s = self.plan.spend;
        let mut next = self.accountant.clone();
        next.compose_poisson_gaussian(s.noise_multiplier, s.sampling_rate, s.steps).map_err(|e| e.to_string())?;
        let eps = epsilon_of(&next, self.plan.budget.delta)?;
        if eps > self.plan.budget.epsilon * (1.0 + BUDGET_TOLERANCE) {
            return Err(format!(
                "privacy budget exhausted: epsilon {:.4} of {} spent (delta {:e}); one more round would reach {eps:.4}",
                self.spent_epsilon, self.plan.budget.epsilon, self.plan.budget.delta
            ));
        }
        self.accountant = next;
        self.spent_epsilon = eps;
        Ok(eps)
    }

    pub fn status(&self) -> PrivacyStatus {
        PrivacyStatus {
            epsilon_spent: self.spent_epsilon,
            delta: self.plan.budget.delta,
            epsilon_budget: self.plan.budget.epsilon,
            noise_multiplier: self.plan.settings.noise_multiplier,
        }
    }

    /// Central placement: add N(0, (z C / contributors)^2) to the mean of
    /// `contributors` clipped updates (the sum has sensitivity C).
    pub fn add_central_noise(&self, mean: &mut ModelParams, contributors: usize, seed: u64) -> Result<(), String> {
        let dp = &self.plan.settings;
        let sigma = dp.noise_multiplier * dp.clip_norm / contributors.max(1) as f64;
        let mut os;
        let mut seeded;
        let rng: &mut dyn rand_core::CryptoRngCore = if self.plan.test_seeded_noise {
            seeded = ChaCha20Rng::seed_from_u64(seed);
            &mut seeded
        } else {
            os = rand::rngs::OsRng;
            &mut os
        };
        for t in &mut mean.tensors {
            tessera_privacy::add_gaussian_noise_f32(&mut t.data, sigma, rng).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn epsilon_of(acc: &RdpAccountant, delta: f64) -> Result<f64, String> {
    if acc.rdp().iter().all(|r| *r == 0.0) {
        return Ok(0.0);
    }
    acc.epsilon(delta).map(|(e, _)| e).map_err(|e| e.to_string())
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
            test_seeded_noise: false,
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let p = cfg(PrivacyUnit::Record).plan(5, &train(), true).unwrap();
        assert_eq!(p.settings.noise, NoisePlacement::Local);
        assert_eq!(p.spend.steps, 20);
        let p = cfg(PrivacyUnit::Client).plan(5, &train(), true).unwrap();
        assert_eq!(p.settings.noise, NoisePlacement::Distributed);
        assert_eq!(cfg(PrivacyUnit::Client).plan(5, &train(), false).unwrap().settings.noise, NoisePlacement::Central);
        let mut c = cfg(PrivacyUnit::Client);
        c.noise = Some(NoisePlacement::Distributed);
        assert!(c.plan(5, &train(), false).unwrap_err().contains("secure aggregation"));
        let mut r = cfg(PrivacyUnit::Record);
        r.sampling_rate = None;
        assert!(r.plan(5, &train(), true).unwrap_err().contains("sampling_rate"));
        r.sampling_rate = Some(0.1);
        r.noise = Some(NoisePlacement::Central);
        assert!(r.plan(5, &train(), true).is_err());
    }

    /// Calibrated for 5 rounds: exactly 5 charges fit, the 6th is refused,
    /// and epsilon grows monotonically up to (not over) the target.
    #[test]
    fn calibrated_budget_stops_at_the_right_round() {
        for unit in [PrivacyUnit::Record, PrivacyUnit::Client] {
            let plan = cfg(unit).plan(5, &train(), true).unwrap();
            let mut st = PrivacyState::new(plan, &[]).unwrap();
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
    fn resumed_spend_counts() {
        let plan = cfg(PrivacyUnit::Client).plan(5, &train(), true).unwrap();
        let spent = vec![plan.spend; 4];
        let mut st = PrivacyState::new(plan, &spent).unwrap();
        assert!(st.status().epsilon_spent > 1.5);
        st.charge().unwrap();
        assert!(st.charge().is_err());
    }
}
