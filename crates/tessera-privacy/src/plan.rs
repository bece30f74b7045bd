//! What a round's [`DpSettings`] mean in numbers, computed the same way on
//! both sides of the wire: the aggregator charges its budget with
//! [`round_spend`], and a member charges its own budget with the same
//! function before anything it trained leaves the site. For distributed
//! noise, [`DistributedPlan`] fixes the quantization grid and each member's
//! discrete Gaussian share from public parameters only, so the aggregator
//! can decode the sum and a member can check the noise it is asked to add.

use tessera_core::{DpSettings, NoisePlacement, PrivacyUnit, RoundSettings, TrainSettings};

use crate::PrivacyError;
use crate::budget::GaussianSpend;
use crate::distributed::{KLS21_MAX_EXCESS, discrete_gaussian_variance, distributed_share_sigma, kls21_rdp_excess};

/// Check that settings describe a mechanism Tessera can account for.
pub fn validate(dp: &DpSettings) -> Result<(), PrivacyError> {
    if !(dp.clip_norm.is_finite() && dp.clip_norm > 0.0) {
        return Err(PrivacyError::InvalidParameter("clip_norm must be finite and > 0"));
    }
    if !(dp.noise_multiplier.is_finite() && dp.noise_multiplier > 0.0) {
        return Err(PrivacyError::InvalidParameter("noise_multiplier must be finite and > 0"));
    }
    if !(dp.sampling_rate > 0.0 && dp.sampling_rate <= 1.0) {
        return Err(PrivacyError::InvalidParameter("sampling_rate must lie in (0, 1]"));
    }
    if !(dp.delta > 0.0 && dp.delta < 1.0) {
        return Err(PrivacyError::InvalidParameter("delta must lie in (0, 1)"));
    }
    if dp.min_contributors == 0 {
        return Err(PrivacyError::InvalidParameter("min_contributors must be >= 1"));
    }
    // DP-SGD adds noise at every local step (`local`), or takes one step a
    // round whose noise the members' shares add inside the secure sum
    // (`distributed`); central noise would trust the aggregator with every
    // member's exact clipped sum.
    if dp.unit == PrivacyUnit::Record && dp.noise == NoisePlacement::Central {
        return Err(PrivacyError::InvalidParameter(
            "the record unit (DP-SGD) needs noise = \"local\" or \"distributed\"",
        ));
    }
    if let Some(a) = &dp.adaptive {
        if dp.unit != PrivacyUnit::Client {
            return Err(PrivacyError::InvalidParameter("adaptive clipping applies to the client unit only"));
        }
        if !(a.update_clip.is_finite() && a.update_clip > 0.0 && a.bit_scale.is_finite() && a.bit_scale > 0.0) {
            return Err(PrivacyError::InvalidParameter("adaptive update_clip and bit_scale must be finite and > 0"));
        }
        // The noise is calibrated to clip_norm: it must bound the update
        // (norm <= update_clip) and the bit (magnitude bit_scale / 2) together.
        let needed = a.update_clip.hypot(a.bit_scale / 2.0);
        if dp.clip_norm < needed * (1.0 - 1e-12) {
            return Err(PrivacyError::InvalidParameter(
                "clip_norm does not bound the clipped update and the unclipped bit together",
            ));
        }
    }
    Ok(())
}

/// What a member charges its own budget for a round: [`round_spend`],
/// except that under the client unit it takes no amplification from cohort
/// sampling. A member cannot verify that the aggregator sampled it at
/// random, and it knows it was chosen, so it accounts at rate 1.
pub fn member_spend(dp: &DpSettings, train: &TrainSettings) -> GaussianSpend {
    let mut s = round_spend(dp, train);
    if dp.unit == PrivacyUnit::Client {
        s.sampling_rate = 1.0;
    }
    s
}

/// DP-SGD steps one member takes in a round: `ceil(1/q)` per local epoch
/// under local noise; exactly one under distributed noise, whatever
/// `local_epochs` says. With one step the released update is linear in the
/// member's clipped sum, so the secure sum of the members' updates is one
/// central DP-SGD step over the union of their records and the members'
/// noise shares add up to its noise (docs/privacy.md, "Record-level DP
/// with distributed noise"). Trainers take their step count from here.
pub fn dpsgd_steps(dp: &DpSettings, train: &TrainSettings) -> u64 {
    if dp.noise == NoisePlacement::Distributed {
        return 1;
    }
    local_noise_steps(dp.sampling_rate, u64::from(train.local_epochs))
}

/// Steps a round of DP-SGD with local noise takes: `ceil(1/q)` per local
/// epoch (the privacy calculator's count too).
pub(crate) fn local_noise_steps(sampling_rate: f64, local_epochs: u64) -> u64 {
    local_epochs.saturating_mul((1.0 / sampling_rate).ceil() as u64)
}

/// The L2 sensitivity, to one record, of a member's update under the record
/// unit with distributed noise: one DP-SGD step without local noise,
/// `-(lr / B) · Σ clip_C(grad_i)`, moves by at most `lr · C / B` when one
/// record joins or leaves the sample (B the round's public `batch_size`).
pub fn record_step_sensitivity(dp: &DpSettings, train: &TrainSettings) -> Result<f64, PrivacyError> {
    let lr = train.learning_rate;
    if !(lr.is_finite() && lr > 0.0) || train.batch_size == 0 {
        return Err(PrivacyError::InvalidParameter("a DP-SGD step needs learning_rate > 0 and batch_size >= 1"));
    }
    Ok(lr * dp.clip_norm / f64::from(train.batch_size))
}

/// The release one round makes, as the accountant composes it.
/// - record unit: `steps` Poisson-subsampled Gaussian steps per member; each
///   record lives at one member, so this is also the per-record spend.
/// - client unit: one Gaussian release of the clipped update sum, with the
///   cohort sampling rate (1 unless cohorts are Poisson-sampled).
pub fn round_spend(dp: &DpSettings, train: &TrainSettings) -> GaussianSpend {
    match dp.unit {
        PrivacyUnit::Record => GaussianSpend {
            noise_multiplier: dp.noise_multiplier,
            sampling_rate: dp.sampling_rate,
            steps: dpsgd_steps(dp, train),
        },
        PrivacyUnit::Client => {
            GaussianSpend { noise_multiplier: dp.noise_multiplier, sampling_rate: dp.sampling_rate, steps: 1 }
        }
    }
}

/// Tail bound, in standard deviations, that the ring must hold for the
/// summed noise: `P(|N(0,1)| > 14) < 1e-44` per coordinate.
const TAIL_SIGMAS: f64 = 14.0;

/// Distributed discrete Gaussian noise for one round under secure
/// aggregation (Kairouz, Liu, Steinke 2021), for the client unit and for the
/// record unit's one-step DP-SGD.
///
/// Two public numbers size it: the per-coordinate range `R` of a member's
/// value (the ring must hold `n` of them) and its L2 sensitivity `Δ` to one
/// protected unit (the noise must cover it). Client unit: `R = Δ = C`, the
/// update's L2 clip ([`new`](Self::new)). Record unit: `R` is the secure
/// aggregation's `clip_range` (each coordinate is clamped to it) and
/// `Δ = lr · C / B` ([`record_step_sensitivity`]). Below, the client unit's
/// case.
///
/// Each member clips its update to L2 norm `C`, divides by the grid step
/// `gamma`, rounds stochastically to integers and adds N_Z(0, s^2) with `s`
/// sized so that any `t = min_contributors` shares sum to variance at least
/// `(z · Delta)^2`, where `Delta` is the L2 sensitivity in grid units
/// including the rounding inflation (`C/gamma + sqrt(d)`, the deterministic
/// bound, so no failure probability enters the guarantee). The sum of
/// the shares is accounted as a Gaussian at z; a plan whose shares are so
/// narrow that KLS21's excess `τ·d` exceeds [`crate::KLS21_MAX_EXCESS`] of
/// the Gaussian's RDP is refused, on both sides of the wire. Values are
/// stored in two's complement mod 2^k, and `gamma` is the smallest step for
/// which the centred sum of `n` members, noise included to 14 sigma, fits in
/// `(-2^(k-1), 2^(k-1))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistributedPlan {
    /// Grid step: one integer unit is `gamma` in update units.
    pub gamma: f64,
    /// Each member's discrete Gaussian sigma, in grid units.
    pub share_sigma: f64,
    /// L2 sensitivity in grid units, rounding included.
    pub sensitivity: f64,
    /// Largest magnitude any member's quantized coordinate may take.
    pub max_level: i64,
}

impl DistributedPlan {
    /// The client unit's plan: `dim` update coordinates, `cohort` members,
    /// ring Z_{2^modulus_bits}, range and sensitivity both the clip `C`.
    pub fn new(dp: &DpSettings, dim: u64, cohort: u32, modulus_bits: u32) -> Result<Self, PrivacyError> {
        Self::with_bounds(dp, dp.clip_norm, dp.clip_norm, dim, cohort, modulus_bits)
    }

    /// The plan for values whose coordinates lie in `[-range, range]` and
    /// whose L2 sensitivity to one protected unit is `sensitivity` (both in
    /// update units): the grid is sized from the range (the ring must hold
    /// the cohort's sum), each share from `z · (sensitivity/gamma + sqrt d)`.
    pub fn with_bounds(
        dp: &DpSettings,
        range: f64,
        sensitivity: f64,
        dim: u64,
        cohort: u32,
        modulus_bits: u32,
    ) -> Result<Self, PrivacyError> {
        validate(dp)?;
        if !(2..=32).contains(&modulus_bits) || cohort == 0 || dim == 0 {
            return Err(PrivacyError::InvalidParameter("modulus bits in 2..=32, cohort and dimension > 0"));
        }
        if !(range.is_finite() && range > 0.0 && sensitivity.is_finite() && sensitivity > 0.0) {
            return Err(PrivacyError::InvalidParameter("the value range and sensitivity must be finite and > 0"));
        }
        let t = dp.min_contributors.min(cohort);
        let (n, z, r) = (f64::from(cohort), dp.noise_multiplier, range);
        let half = (1u64 << (modulus_bits - 1)) as f64 - 1.0;
        // Summed noise std <= sqrt(n / t) · z · Delta · (1 + slack), with
        // Delta = S/gamma + sqrt(d) (S the sensitivity); solve
        // n (R/gamma + 1) + tail <= half. (S / R is exactly 1 for the client
        // unit, so its grid is the one it always was.)
        let spread = TAIL_SIGMAS * (n / f64::from(t)).sqrt() * z * 1.01;
        let room = half - n - spread * (dim as f64).sqrt() - spread;
        if room <= 0.0 {
            return Err(PrivacyError::Unreachable("the ring is too small for this cohort, dimension and noise"));
        }
        let mut gamma = r * (n + spread * (sensitivity / r)) / room;
        loop {
            let delta = sensitivity / gamma + (dim as f64).sqrt();
            let share_sigma = distributed_share_sigma(z * delta, t)?;
            let max_level = (r / gamma).ceil() as i64 + 1;
            let sum_std = (n * discrete_gaussian_variance(share_sigma)).sqrt();
            if n * max_level as f64 + TAIL_SIGMAS * sum_std + 1.0 <= half {
                // The accountant treats the sum of shares as a Gaussian at z;
                // KLS21 bound what that misses (τ·d, for at most `cohort`
                // shares), and the plan holds it below the floor.
                if kls21_rdp_excess(share_sigma, cohort, dim) > KLS21_MAX_EXCESS / (2.0 * z * z) {
                    return Err(PrivacyError::Unreachable(
                        "the noise shares are too narrow for the sum to be accounted as a Gaussian (KLS21)",
                    ));
                }
                return Ok(Self { gamma, share_sigma, sensitivity: delta, max_level });
            }
            gamma *= 1.01;
            if !gamma.is_finite() {
                return Err(PrivacyError::Unreachable("no grid step fits the ring"));
            }
        }
    }

    /// The plan a round's settings imply for a model of `numel` values and a
    /// cohort of `cohort`: `Some` only for distributed noise under secure
    /// aggregation. Both sides call this, so they agree on the grid, and a
    /// member checks the noise it adds against it. Record unit: range the
    /// secure aggregation's `clip_range`, sensitivity
    /// [`record_step_sensitivity`].
    pub fn for_round(settings: &RoundSettings, numel: u64, cohort: u32) -> Result<Option<Self>, PrivacyError> {
        match (&settings.dp, &settings.secagg) {
            (Some(dp), Some(s)) if dp.noise == NoisePlacement::Distributed => match dp.unit {
                PrivacyUnit::Client => Self::new(dp, numel, cohort, s.modulus_bits).map(Some),
                PrivacyUnit::Record => {
                    let sensitivity = record_step_sensitivity(dp, &settings.train)?;
                    let range = f64::from(s.clip_range);
                    Self::with_bounds(dp, range, sensitivity, numel, cohort, s.modulus_bits).map(Some)
                }
            },
            (Some(dp), None) if dp.noise == NoisePlacement::Distributed => {
                Err(PrivacyError::InvalidParameter("distributed noise needs secure aggregation"))
            }
            _ => Ok(None),
        }
    }

    /// Noise standard deviation of the sum of `contributors` shares, in update units.
    pub fn sum_noise_std(&self, contributors: u32) -> f64 {
        (f64::from(contributors) * discrete_gaussian_variance(self.share_sigma)).sqrt() * self.gamma
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(unit: PrivacyUnit, noise: NoisePlacement) -> DpSettings {
        DpSettings {
            unit,
            noise,
            clip_norm: 0.5,
            noise_multiplier: 1.2,
            sampling_rate: 0.1,
            min_contributors: 3,
            delta: 1e-5,
            adaptive: None,
        }
    }

    fn train(epochs: u32) -> TrainSettings {
        TrainSettings {
            local_epochs: epochs,
            batch_size: 32,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 0,
            example_weight_cap: 0,
        }
    }

    #[test]
    fn spend_per_unit() {
        let r = round_spend(&dp(PrivacyUnit::Record, NoisePlacement::Local), &train(3));
        assert_eq!(r, GaussianSpend { noise_multiplier: 1.2, sampling_rate: 0.1, steps: 30 });
        let mut c = dp(PrivacyUnit::Client, NoisePlacement::Distributed);
        c.sampling_rate = 1.0;
        assert_eq!(round_spend(&c, &train(3)).steps, 1);
    }

    /// Record unit, distributed noise: one Poisson-subsampled Gaussian step
    /// at q per round whatever `local_epochs` says, charged alike by the
    /// aggregator and the member.
    #[test]
    fn record_distributed_spends_one_step_a_round() {
        let d = dp(PrivacyUnit::Record, NoisePlacement::Distributed);
        for epochs in [1, 3] {
            let want = GaussianSpend { noise_multiplier: 1.2, sampling_rate: 0.1, steps: 1 };
            assert_eq!(round_spend(&d, &train(epochs)), want);
            assert_eq!(member_spend(&d, &train(epochs)), want);
            assert_eq!(dpsgd_steps(&d, &train(epochs)), 1);
        }
    }

    #[test]
    fn members_take_no_cohort_amplification() {
        let mut c = dp(PrivacyUnit::Client, NoisePlacement::Distributed);
        c.sampling_rate = 0.05;
        assert_eq!(round_spend(&c, &train(1)).sampling_rate, 0.05);
        assert_eq!(member_spend(&c, &train(1)).sampling_rate, 1.0);
        let r = dp(PrivacyUnit::Record, NoisePlacement::Local);
        assert_eq!(member_spend(&r, &train(2)), round_spend(&r, &train(2)));
    }

    #[test]
    fn adaptive_clip_must_fit_the_vector_bound() {
        use tessera_core::AdaptiveClipSettings;
        let mut c = dp(PrivacyUnit::Client, NoisePlacement::Distributed);
        c.adaptive = Some(AdaptiveClipSettings { update_clip: 0.4, bit_scale: 0.6 });
        c.clip_norm = 0.5; // = hypot(0.4, 0.3)
        assert!(validate(&c).is_ok());
        c.clip_norm = 0.45;
        assert!(validate(&c).is_err(), "an understated bound would under-noise the release");
        let mut r = dp(PrivacyUnit::Record, NoisePlacement::Local);
        r.adaptive = Some(AdaptiveClipSettings { update_clip: 0.4, bit_scale: 0.6 });
        assert!(validate(&r).is_err());
    }

    #[test]
    fn record_unit_needs_local_or_distributed_noise() {
        assert!(validate(&dp(PrivacyUnit::Record, NoisePlacement::Central)).is_err());
        assert!(validate(&dp(PrivacyUnit::Record, NoisePlacement::Distributed)).is_ok());
        assert!(validate(&dp(PrivacyUnit::Record, NoisePlacement::Local)).is_ok());
        let mut bad = dp(PrivacyUnit::Client, NoisePlacement::Central);
        bad.noise_multiplier = f64::NAN;
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn distributed_plan_fits_the_ring_and_the_noise_target() {
        let d = dp(PrivacyUnit::Client, NoisePlacement::Distributed);
        for &(dim, n) in &[(530u64, 5u32), (1_000_000, 100), (10, 3)] {
            let p = DistributedPlan::new(&d, dim, n, 32).unwrap();
            let half = (1u64 << 31) as f64;
            let worst = f64::from(n) * p.max_level as f64 + TAIL_SIGMAS * p.sum_noise_std(n) / p.gamma;
            assert!(worst < half, "dim {dim}, n {n}");
            // t = min(3, n) survivors carry at least the target noise.
            let t = d.min_contributors.min(n);
            let target = d.noise_multiplier * p.sensitivity;
            assert!(f64::from(t) * discrete_gaussian_variance(p.share_sigma) >= target * target * (1.0 - 1e-12));
            // The rounding inflation is counted: sensitivity >= C / gamma.
            assert!(p.sensitivity >= d.clip_norm / p.gamma);
            // KLS21: the shares are wide enough that the sum is a Gaussian
            // for the accountant (the excess is below the floor, here zero).
            let excess = crate::kls21_rdp_excess(p.share_sigma, n, dim);
            assert!(excess <= KLS21_MAX_EXCESS / (2.0 * d.noise_multiplier.powi(2)), "dim {dim}, n {n}: {excess}");
        }
        // A tiny ring cannot hold a big cohort's noise.
        assert!(DistributedPlan::new(&d, 1_000_000, 100, 12).is_err());
    }

    /// The plan as it was computed before the range and the sensitivity
    /// were separate numbers (client unit, R = Delta = C), kept verbatim.
    fn client_plan_before(dp: &DpSettings, dim: u64, cohort: u32, bits: u32) -> DistributedPlan {
        let t = dp.min_contributors.min(cohort);
        let (n, z, c) = (f64::from(cohort), dp.noise_multiplier, dp.clip_norm);
        let half = (1u64 << (bits - 1)) as f64 - 1.0;
        let spread = TAIL_SIGMAS * (n / f64::from(t)).sqrt() * z * 1.01;
        let room = half - n - spread * (dim as f64).sqrt() - spread;
        let mut gamma = c * (n + spread) / room;
        loop {
            let sensitivity = c / gamma + (dim as f64).sqrt();
            let share_sigma = distributed_share_sigma(z * sensitivity, t).unwrap();
            let max_level = (c / gamma).ceil() as i64 + 1;
            let sum_std = (n * discrete_gaussian_variance(share_sigma)).sqrt();
            if n * max_level as f64 + TAIL_SIGMAS * sum_std + 1.0 <= half {
                return DistributedPlan { gamma, share_sigma, sensitivity, max_level };
            }
            gamma *= 1.01;
        }
    }

    #[test]
    fn the_client_units_plan_is_unchanged() {
        let mut d = dp(PrivacyUnit::Client, NoisePlacement::Distributed);
        for &(dim, n, bits, c, z) in &[
            (530u64, 5u32, 32u32, 0.5, 1.2),
            (1_000_000, 100, 32, 1.0, 0.8),
            (10, 3, 20, 0.3, 4.0),
            (31, 5, 32, 2.0, 13.0),
        ] {
            d.clip_norm = c;
            d.noise_multiplier = z;
            let before = client_plan_before(&d, dim, n, bits);
            let now = DistributedPlan::new(&d, dim, n, bits).unwrap();
            assert_eq!(now, before, "dim {dim}, n {n}");
            assert_eq!(now.gamma.to_bits(), before.gamma.to_bits());
            assert_eq!(now.share_sigma.to_bits(), before.share_sigma.to_bits());
            let settings = RoundSettings {
                train: train(1),
                secagg: Some(tessera_core::SecAggSettings {
                    threshold: n,
                    modulus_bits: bits,
                    clip_range: 0.25,
                    neighbours: None,
                }),
                dp: Some(d.clone()),
                eval: None,
                stats: None,
            };
            assert_eq!(DistributedPlan::for_round(&settings, dim, n).unwrap(), Some(before));
        }
    }

    /// Record unit, distributed noise: the grid holds n values of range
    /// `clip_range`, and any t shares cover z·(lr·C/B / gamma + sqrt d).
    #[test]
    fn the_record_units_shares_cover_one_steps_sensitivity() {
        let mut d = dp(PrivacyUnit::Record, NoisePlacement::Distributed);
        d.noise_multiplier = 13.0;
        d.clip_norm = 1.0;
        d.min_contributors = 4;
        let mut tr = train(1);
        tr.learning_rate = 0.5;
        tr.batch_size = 85;
        let range = 0.5f32;
        let settings = RoundSettings {
            train: tr.clone(),
            secagg: Some(tessera_core::SecAggSettings {
                threshold: 4,
                modulus_bits: 32,
                clip_range: range,
                neighbours: None,
            }),
            dp: Some(d.clone()),
            eval: None,
            stats: None,
        };
        let (dim, n) = (31u64, 5u32);
        let p = DistributedPlan::for_round(&settings, dim, n).unwrap().unwrap();
        let step = 0.5 * 1.0 / 85.0;
        assert_eq!(record_step_sensitivity(&d, &tr).unwrap(), step);
        let need = 13.0 * (step / p.gamma + (dim as f64).sqrt());
        assert!(p.sensitivity >= step / p.gamma + (dim as f64).sqrt());
        assert!(4.0 * discrete_gaussian_variance(p.share_sigma) >= need * need * (1.0 - 1e-12));
        // The range sizes the grid: n clamped values and the noise fit.
        assert!(p.max_level as f64 >= f64::from(range) / p.gamma);
        let worst = f64::from(n) * p.max_level as f64 + TAIL_SIGMAS * p.sum_noise_std(n) / p.gamma;
        assert!(worst < (1u64 << 31) as f64);
        // Sized from the step's sensitivity, not the range: the noise on the
        // sum is z·lr·C/B (plus rounding), far below z·clip_range.
        let sum_std = p.sum_noise_std(4);
        assert!(sum_std >= 13.0 * step && sum_std < 13.0 * step * 1.01, "{sum_std}");
        // A step needs a positive learning rate and batch size.
        let mut bad = settings.clone();
        bad.train.batch_size = 0;
        assert!(DistributedPlan::for_round(&bad, dim, n).is_err());
    }
}
