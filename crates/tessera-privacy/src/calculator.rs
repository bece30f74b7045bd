//! The privacy calculator operators run before a consortium starts (the
//! role of Opacus's `get_noise_multiplier` and TF Privacy's
//! `compute_dp_sgd_privacy`): from the unit, the sampling rate, the noise
//! multiplier or a target epsilon, the rounds and delta, what a run spends
//! and what it can afford.
//!
//! It composes exactly what a run's ledger composes ([`crate::round_spend`]:
//! per round, `steps` Poisson-subsampled Gaussian releases at rate q) with
//! the RDP accountant, and shows OpenDP's zCDP figure beside it. zCDP does
//! not amplify by sampling, so for q < 1 that figure is the unamplified
//! bound (what a member charges against an operator it cannot check); at
//! q = 1 the two agree to within the RDP order grid.

use std::fmt;

use tessera_core::{NoisePlacement, PrivacyUnit};

use crate::accountant::epsilon_from_rdp;
use crate::plan::local_noise_steps;
use crate::{PrivacyError, RdpAccountant, ZcdpAccountant, calibrate_noise_multiplier};

/// What the operator asks.
#[derive(Clone, Debug, PartialEq)]
pub struct CalculatorQuery {
    /// Whom the guarantee protects: one record, or one whole member.
    pub unit: PrivacyUnit,
    /// Poisson sampling rate q per step (record: batch / local examples;
    /// client: the cohort rate, 1 with full participation).
    pub sampling_rate: f64,
    /// Gaussian releases per round: record unit `local_epochs · ceil(1/q)`
    /// DP-SGD steps, client unit 1.
    pub steps_per_round: u64,
    /// The noise multiplier z; `None` calibrates it to `target_epsilon` over `rounds`.
    pub noise_multiplier: Option<f64>,
    /// The budget: with `noise_multiplier`, the rounds it affords are shown.
    pub target_epsilon: Option<f64>,
    /// Rounds to run; needed unless both z and the target are given.
    pub rounds: Option<u64>,
    /// The delta every epsilon is stated at.
    pub delta: f64,
}

/// What a query costs, by both accountants.
#[derive(Clone, Debug, PartialEq)]
pub struct CalculatorReport {
    /// The query answered.
    pub query: CalculatorQuery,
    /// The noise multiplier z, given or calibrated.
    pub noise_multiplier: f64,
    /// Whether z was calibrated to the target.
    pub calibrated: bool,
    /// Epsilon after `query.rounds` rounds: RDP accountant (the ledger's
    /// figure) and the order that achieves it.
    pub rdp_epsilon: Option<(f64, f64)>,
    /// Epsilon after `query.rounds` rounds by OpenDP's zCDP conversion,
    /// without amplification by sampling.
    pub zcdp_epsilon: Option<f64>,
    /// Most rounds whose RDP epsilon stays within the target at z.
    pub affordable_rounds: Option<u64>,
}

/// Gaussian releases per round that a run with these settings composes on
/// its ledgers (the count [`crate::dpsgd_steps`] gives the trainers):
/// - record unit, local noise: `local_epochs · ceil(1/q)` DP-SGD steps;
/// - record unit, distributed noise: exactly one step a round, so
///   `local_epochs` must be 1 (the coordinator refuses anything else);
/// - record unit, central noise: refused, as the coordinator refuses it;
/// - client unit: one release a round, whatever the placement.
pub fn releases_per_round(
    unit: PrivacyUnit,
    noise: NoisePlacement,
    sampling_rate: f64,
    local_epochs: u64,
) -> Result<u64, CalculatorError> {
    check("--sampling-rate", sampling_rate, sampling_rate > 0.0 && sampling_rate <= 1.0, "0 < q <= 1")?;
    check("--local-epochs", local_epochs as f64, local_epochs > 0, "at least 1")?;
    match (unit, noise) {
        (PrivacyUnit::Client, _) => Ok(1),
        (PrivacyUnit::Record, NoisePlacement::Local) => Ok(local_noise_steps(sampling_rate, local_epochs)),
        (PrivacyUnit::Record, NoisePlacement::Distributed) => {
            check(
                "--local-epochs",
                local_epochs as f64,
                local_epochs == 1,
                "exactly 1 under --noise distributed (one DP-SGD step a round)",
            )?;
            Ok(1)
        }
        (PrivacyUnit::Record, NoisePlacement::Central) => Err(CalculatorError::Unsupported(
            "--noise central with --unit record: a member's DP-SGD steps are noised at the member (local) or inside the secure sum (distributed), never by the aggregator",
        )),
    }
}

/// Why a query cannot be answered; each names the option at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CalculatorError {
    /// Neither a noise multiplier nor a target epsilon.
    #[error("give --noise-multiplier, --epsilon or both (with only a target, sigma is calibrated to it)")]
    NothingToCompute,
    /// A figure over rounds was asked for without `--rounds`.
    #[error("--rounds is needed {0}")]
    MissingRounds(&'static str),
    /// A value out of its domain.
    #[error("{option} = {value} is out of range: {rule}")]
    OutOfRange {
        /// The command-line option.
        option: &'static str,
        /// The value given.
        value: f64,
        /// What it must satisfy.
        rule: &'static str,
    },
    /// A combination of settings no run accepts.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The accountants refused (e.g. no noise multiplier reaches the target).
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
}

fn check(option: &'static str, value: f64, ok: bool, rule: &'static str) -> Result<(), CalculatorError> {
    if ok { Ok(()) } else { Err(CalculatorError::OutOfRange { option, value, rule }) }
}

impl CalculatorQuery {
    fn validate(&self) -> Result<(), CalculatorError> {
        let q = self.sampling_rate;
        check("--sampling-rate", q, q > 0.0 && q <= 1.0, "0 < q <= 1")?;
        check("--delta", self.delta, self.delta > 0.0 && self.delta < 1.0, "0 < delta < 1")?;
        let steps = self.steps_per_round as f64;
        check("--steps-per-round", steps, self.steps_per_round > 0, "at least 1")?;
        if let Some(z) = self.noise_multiplier {
            check("--noise-multiplier", z, z.is_finite() && z > 0.0, "finite and > 0")?;
        }
        if let Some(e) = self.target_epsilon {
            check("--epsilon", e, e.is_finite() && e > 0.0, "finite and > 0")?;
        }
        if let Some(r) = self.rounds {
            check("--rounds", r as f64, r > 0, "at least 1")?;
        }
        match (self.noise_multiplier, self.target_epsilon, self.rounds) {
            (None, None, _) => Err(CalculatorError::NothingToCompute),
            (None, Some(_), None) => Err(CalculatorError::MissingRounds("to calibrate sigma to a target epsilon")),
            (Some(_), None, None) => Err(CalculatorError::MissingRounds("to compute epsilon at a given sigma")),
            _ => Ok(()),
        }
    }
}

/// RDP per round at z, composed once; a run of R rounds is R times it.
fn per_round_rdp(q: &CalculatorQuery, z: f64) -> Result<RdpAccountant, PrivacyError> {
    let mut acc = RdpAccountant::default();
    acc.compose_poisson_gaussian(z, q.sampling_rate, q.steps_per_round)?;
    Ok(acc)
}

fn rdp_epsilon_after(per_round: &RdpAccountant, rounds: u64, delta: f64) -> Result<(f64, f64), PrivacyError> {
    let rdp: Vec<f64> = per_round.rdp().iter().map(|r| r * rounds as f64).collect();
    epsilon_from_rdp(per_round.orders(), &rdp, delta)
}

/// Most rounds within `target` (RDP); epsilon grows with the rounds, so a
/// doubling search and then bisection. Capped at 2^40 rounds.
fn affordable(per_round: &RdpAccountant, target: f64, delta: f64) -> Result<u64, PrivacyError> {
    let within = |r: u64| -> Result<bool, PrivacyError> { Ok(rdp_epsilon_after(per_round, r, delta)?.0 <= target) };
    if !within(1)? {
        return Ok(0);
    }
    let (mut lo, mut hi) = (1u64, 2u64);
    while within(hi)? {
        lo = hi;
        if hi >= 1 << 40 {
            return Ok(hi);
        }
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if within(mid)? { lo = mid } else { hi = mid }
    }
    Ok(lo)
}

/// Answer `query`: the noise multiplier (given or calibrated), epsilon
/// after the rounds by RDP and by OpenDP's zCDP, and the affordable rounds.
pub fn privacy_calculator(query: &CalculatorQuery) -> Result<CalculatorReport, CalculatorError> {
    query.validate()?;
    let (z, calibrated) = match (query.noise_multiplier, query.target_epsilon, query.rounds) {
        (Some(z), _, _) => (z, false),
        (None, Some(eps), Some(rounds)) => {
            let steps = rounds.saturating_mul(query.steps_per_round);
            (calibrate_noise_multiplier(eps, query.delta, query.sampling_rate, steps)?, true)
        }
        _ => unreachable!("validate refuses a query without z or a target and rounds"),
    };
    let per_round = per_round_rdp(query, z)?;
    let (mut rdp_epsilon, mut zcdp_epsilon) = (None, None);
    if let Some(rounds) = query.rounds {
        rdp_epsilon = Some(rdp_epsilon_after(&per_round, rounds, query.delta)?);
        let mut zc = ZcdpAccountant::default();
        zc.compose_gaussian(z, rounds.saturating_mul(query.steps_per_round))?;
        zcdp_epsilon = Some(zc.epsilon(query.delta)?);
    }
    let affordable_rounds = match query.target_epsilon {
        Some(target) => Some(affordable(&per_round, target, query.delta)?),
        None => None,
    };
    Ok(CalculatorReport {
        query: query.clone(),
        noise_multiplier: z,
        calibrated,
        rdp_epsilon,
        zcdp_epsilon,
        affordable_rounds,
    })
}

impl fmt::Display for CalculatorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = &self.query;
        let unit = match q.unit {
            PrivacyUnit::Record => "record (adding or removing one training example at one member)",
            PrivacyUnit::Client => "client (adding or removing one whole member)",
        };
        writeln!(f, "unit:              {unit}")?;
        writeln!(f, "sampling rate q:   {}", q.sampling_rate)?;
        writeln!(f, "steps per round:   {}", q.steps_per_round)?;
        writeln!(f, "delta:             {:e}", q.delta)?;
        match (self.calibrated, q.target_epsilon, q.rounds) {
            (true, Some(eps), Some(r)) => writeln!(
                f,
                "noise multiplier:  {:.4} (calibrated: epsilon {eps} over {r} rounds)",
                self.noise_multiplier
            )?,
            _ => writeln!(f, "noise multiplier:  {}", self.noise_multiplier)?,
        }
        if let (Some(r), Some((eps, order)), Some(zc)) = (q.rounds, self.rdp_epsilon, self.zcdp_epsilon) {
            writeln!(f, "after {r} rounds ({} Gaussian releases):", r.saturating_mul(q.steps_per_round))?;
            writeln!(f, "  epsilon, RDP accountant (the ledger's figure):   {eps:.4} (order {order})")?;
            let note = if q.sampling_rate < 1.0 { ", no amplification by sampling" } else { "" };
            writeln!(f, "  epsilon, OpenDP zCDP{note}: {zc:.4}")?;
        }
        if let (Some(target), Some(r)) = (q.target_epsilon, self.affordable_rounds) {
            writeln!(f, "affordable rounds: {r} within epsilon {target} (RDP)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> CalculatorQuery {
        // TF Privacy's compute_dp_sgd_privacy example (see accountant.rs):
        // n 60,000, batch 150, sigma 1.3, 15 epochs of 400 steps, delta 1e-5 -> 0.7242.
        CalculatorQuery {
            unit: PrivacyUnit::Record,
            sampling_rate: 150.0 / 60_000.0,
            steps_per_round: 400,
            noise_multiplier: Some(1.3),
            target_epsilon: None,
            rounds: Some(15),
            delta: 1e-5,
        }
    }

    #[test]
    fn reproduces_the_tf_privacy_figure_and_calibrates_back() {
        let r = privacy_calculator(&query()).unwrap();
        let (eps, _) = r.rdp_epsilon.unwrap();
        assert!((eps - 0.7242234026109595).abs() < 1e-3, "{eps}");
        // Unamplified zCDP is far larger at q = 0.0025.
        assert!(r.zcdp_epsilon.unwrap() > 10.0 * eps);
        let back =
            privacy_calculator(&CalculatorQuery { noise_multiplier: None, target_epsilon: Some(eps), ..query() })
                .unwrap();
        assert!((back.noise_multiplier - 1.3).abs() < 1e-3, "{}", back.noise_multiplier);
        let rounds =
            privacy_calculator(&CalculatorQuery { target_epsilon: Some(eps * 1.0001), rounds: None, ..query() })
                .unwrap();
        assert_eq!(rounds.affordable_rounds, Some(15));
    }

    /// The step count per round is the trainers' (`dpsgd_steps`) for every
    /// unit and placement a run accepts, and the others are refused.
    #[test]
    fn releases_per_round_follow_the_unit_and_the_placement() {
        use NoisePlacement::*;
        use PrivacyUnit::*;
        assert_eq!(releases_per_round(Record, Local, 0.1, 2).unwrap(), 20);
        assert_eq!(releases_per_round(Record, Local, 0.3, 1).unwrap(), 4);
        assert_eq!(releases_per_round(Record, Distributed, 0.5, 1).unwrap(), 1);
        assert_eq!(releases_per_round(Client, Central, 0.5, 5).unwrap(), 1);
        let e = releases_per_round(Record, Distributed, 0.5, 2).unwrap_err().to_string();
        assert!(e.contains("--local-epochs") && e.contains("distributed"), "{e}");
        assert!(matches!(releases_per_round(Record, Central, 0.5, 1), Err(CalculatorError::Unsupported(_))));
        assert!(releases_per_round(Record, Local, 0.0, 1).unwrap_err().to_string().contains("--sampling-rate"));
        // The same counts as the trainers'.
        let mut dp = tessera_core::DpSettings {
            unit: Record,
            noise: Local,
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            sampling_rate: 0.1,
            min_contributors: 3,
            delta: 1e-5,
            adaptive: None,
        };
        let train = tessera_core::TrainSettings {
            local_epochs: 2,
            batch_size: 32,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 0,
            example_weight_cap: 0,
        };
        assert_eq!(crate::dpsgd_steps(&dp, &train), releases_per_round(Record, Local, 0.1, 2).unwrap());
        dp.noise = Distributed;
        let train = tessera_core::TrainSettings { local_epochs: 1, ..train };
        assert_eq!(crate::dpsgd_steps(&dp, &train), releases_per_round(Record, Distributed, 0.1, 1).unwrap());
    }

    #[test]
    fn bad_queries_name_the_option() {
        let e = |q: CalculatorQuery| privacy_calculator(&q).unwrap_err().to_string();
        assert!(e(CalculatorQuery { sampling_rate: 1.5, ..query() }).contains("--sampling-rate"));
        assert!(e(CalculatorQuery { delta: 0.0, ..query() }).contains("--delta"));
        assert!(e(CalculatorQuery { noise_multiplier: Some(-1.0), ..query() }).contains("--noise-multiplier"));
        assert!(e(CalculatorQuery { noise_multiplier: None, ..query() }).contains("--epsilon"));
        assert!(e(CalculatorQuery { rounds: None, ..query() }).contains("--rounds"));
    }
}
