//! A statistics round (issue #18), as both sides derive it. The round is a
//! secure round whose purpose is statistics instead of training: each member
//! uploads its bounded counts ([`tessera_core::StatsRelease`]) instead of a
//! model delta, through the same clipping, distributed discrete Gaussian
//! shares, masking and unmasking (and the member's noise-floor check at the
//! survivor set), and the coordinator reads the noised counts back instead
//! of stepping the model.
//!
//! How the release maps onto the update path: the round's `DpSettings` say
//! "client unit, distributed noise, clip to B" (the vector's bound), with the
//! noise multiplier `z · Delta / B · (1 + STATISTICS_NOISE_SLACK)`, so the
//! shares sum to a Gaussian of standard deviation at least `z · Delta` on the
//! rounded counts, Delta the release's sensitivity for its unit (record:
//! `sqrt(1 + F)`, client: B). [`check_statistics`] verifies exactly that
//! from the round's distributed plan, so the aggregator cannot ask for less
//! noise than the release (and every ledger) assumes.

use tessera_core::{DpSettings, MAX_STATS_CLASSES, NoisePlacement, PrivacyUnit, RoundSettings, StatsRelease};
use tessera_privacy::{GaussianSpend, StatisticsPart};

use crate::derive;

/// Relative head-room on the noise multiplier of a statistics round, which
/// covers the grid's rounding: the release needs `z · (Delta/gamma + sqrt d)`
/// in grid units, and the plan gives `z' · (B/gamma + sqrt d)`.
pub const STATISTICS_NOISE_SLACK: f64 = 1e-3;

/// The most counts a statistics release may hold.
pub const MAX_STATISTICS_VALUES: usize = 1 << 20;

/// Why a statistics request cannot be run as asked. A member refuses the
/// round with it (as a [`crate::member::PrivacyRefusal::Statistics`]); the
/// coordinator refuses to start such a release.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StatisticsRefusal {
    /// The member declares no schema for statistics (an image member, or a
    /// driver that counts nothing).
    #[error("this member computes no statistics")]
    NotOffered,
    /// The request's classes or cells are not what the member's schema
    /// allows (a vocabulary it does not declare, more bins than
    /// `MAX_STATS_BINS`, another number of features or classes).
    #[error("the statistics request does not match this member's schema (features, classes or bins)")]
    Schema,
    /// The request itself is malformed; the text names the rule.
    #[error("statistics request: {0}")]
    Malformed(&'static str),
    /// The round's DP settings are not the ones the release implies
    /// (distributed noise under secure aggregation, clip to the bound).
    #[error("statistics round: {0}")]
    Settings(&'static str),
    /// The planned shares would sum to less noise than the release states.
    #[error("the planned noise ({planned:.6e} grid units) is below what the release needs ({needed:.6e})")]
    NoiseBelowRelease {
        /// Standard deviation the shares of `min_contributors` survivors sum to.
        planned: f64,
        /// `z · (Delta/gamma + sqrt d)`.
        needed: f64,
    },
}

/// The release's parts, for OpenDP's composition.
pub fn statistics_parts(release: &StatsRelease) -> Vec<StatisticsPart> {
    release.parts().into_iter().map(|(name, len, sensitivity)| StatisticsPart { name, len, sensitivity }).collect()
}

/// What every ledger charges for the release (RDP: one unsampled Gaussian
/// at multiplier z).
pub fn statistics_spend(release: &StatsRelease) -> GaussianSpend {
    tessera_privacy::statistics_spend(&statistics_parts(release), release.sigma())
}

/// The DP settings a statistics round travels under (see the module docs).
pub fn statistics_dp(release: &StatsRelease, delta: f64, min_contributors: u32) -> DpSettings {
    DpSettings {
        unit: PrivacyUnit::Client,
        noise: NoisePlacement::Distributed,
        clip_norm: release.bound,
        noise_multiplier: release.sigma() / release.bound * (1.0 + STATISTICS_NOISE_SLACK),
        sampling_rate: 1.0,
        min_contributors,
        delta,
        adaptive: None,
    }
}

/// Check a statistics round's settings for a cohort of `cohort` members:
/// the request is well formed, the DP settings are the ones it implies, and
/// the distributed plan's shares cover the release's noise. Returns the
/// spend to charge.
pub fn check_statistics(settings: &RoundSettings, cohort: u32) -> Result<GaussianSpend, StatisticsRefusal> {
    let Some(release) = &settings.stats else { return Err(StatisticsRefusal::Malformed("no release")) };
    let finite = |x: f64| x.is_finite() && x > 0.0;
    if release.classes == 0 || release.classes > MAX_STATS_CLASSES || release.cells.is_empty() {
        return Err(StatisticsRefusal::Malformed("classes in 1..=1024 and at least one feature"));
    }
    if release.cells.contains(&0) || release.len() > MAX_STATISTICS_VALUES {
        return Err(StatisticsRefusal::Malformed("every feature has cells, at most 2^20 counts in all"));
    }
    if !finite(release.bound) || !finite(release.noise_multiplier) || release.bound < release.record_sensitivity() {
        return Err(StatisticsRefusal::Malformed("bound >= sqrt(1 + features) and noise_multiplier > 0, finite"));
    }
    let (Some(s), Some(dp)) = (&settings.secagg, &settings.dp) else {
        return Err(StatisticsRefusal::Settings("statistics need secure aggregation and DP settings"));
    };
    let _ = s;
    if dp.unit != PrivacyUnit::Client
        || dp.noise != NoisePlacement::Distributed
        || dp.adaptive.is_some()
        || settings.eval.is_some()
        || dp.clip_norm != release.bound
    {
        return Err(StatisticsRefusal::Settings("distributed noise on the vector clipped to the release's bound"));
    }
    let d = release.len() as u64;
    let plan = derive::update_coding(settings, d, cohort)
        .map_err(|_| StatisticsRefusal::Settings("no distributed noise plan for these settings"))?
        .plan
        .ok_or(StatisticsRefusal::Settings("no distributed noise plan for these settings"))?;
    // The shares of the fewest survivors the member reveals for (its noise
    // floor) sum to at least `noise_multiplier · sensitivity` grid units.
    let planned = dp.noise_multiplier * plan.sensitivity;
    let needed = release.noise_multiplier * (release.sensitivity() / plan.gamma + (d as f64).sqrt());
    if planned < needed {
        return Err(StatisticsRefusal::NoiseBelowRelease { planned, needed });
    }
    Ok(statistics_spend(release))
}

#[cfg(test)]
mod tests {
    use tessera_core::{SecAggSettings, TrainSettings};

    use super::*;

    pub(crate) fn release(unit: PrivacyUnit) -> StatsRelease {
        StatsRelease { unit, classes: 2, cells: vec![4, 3], bound: 100.0 * 3f64.sqrt(), noise_multiplier: 2.0 }
    }

    fn settings(release: StatsRelease) -> RoundSettings {
        RoundSettings {
            train: TrainSettings {
                local_epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                proximal_mu: 0.0,
                seed: 0,
                example_weight_cap: 0,
            },
            secagg: Some(SecAggSettings { threshold: 3, modulus_bits: 32, clip_range: 1.0, neighbours: None }),
            dp: Some(statistics_dp(&release, 1e-5, 3)),
            eval: None,
            stats: Some(Box::new(release)),
        }
    }

    #[test]
    fn the_derived_settings_cover_the_release_and_less_noise_is_refused() {
        for unit in [PrivacyUnit::Record, PrivacyUnit::Client] {
            let s = settings(release(unit));
            let spend = check_statistics(&s, 4).unwrap();
            assert!((spend.noise_multiplier - 2.0).abs() < 1e-12, "charged at z");
            let mut weak = s.clone();
            weak.dp.as_mut().unwrap().noise_multiplier *= 0.99;
            assert!(matches!(check_statistics(&weak, 4), Err(StatisticsRefusal::NoiseBelowRelease { .. })));
            let mut loose = s.clone();
            loose.dp.as_mut().unwrap().clip_norm *= 2.0;
            assert!(matches!(check_statistics(&loose, 4), Err(StatisticsRefusal::Settings(_))));
        }
        let mut tiny = release(PrivacyUnit::Record);
        tiny.bound = 1.0;
        assert!(matches!(check_statistics(&settings(tiny), 4), Err(StatisticsRefusal::Malformed(_))));
    }
}
