//! Record-level DP-SGD's shared half: the validated configuration, the
//! round's random streams and noise, and the loop for models whose
//! per-example gradients need a backward pass each. Models with a cheaper
//! way to clip (the tabular MLP's ghost clipping, the frozen-backbone
//! head's closed form) use the same configuration, sampler and noise.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::{DpSettings, ModelParams, TrainSettings};
use tessera_privacy::{GaussianMechanism, MechanismCache, clip_factor};

use crate::{LocalError, PoissonSampler, fedprox_step};

/// Sampled examples prepared together (e.g. their frozen-prefix outputs
/// held at once), so memory does not grow with `q * N`.
pub const PREPARE_GROUP: usize = 32;

/// DP-SGD parameters for one round.
#[derive(Clone, Debug, PartialEq)]
pub struct DpSgdConfig {
    /// Per-example L2 clip norm C.
    pub clip_norm: f64,
    /// Noise std as a multiple of C; the noise sampler must use `noise_multiplier * clip_norm`.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q per step.
    pub sampling_rate: f64,
    /// Seed of the Poisson sampling, for tests only. `None` (the default)
    /// draws it from the OS: the round seed is known to the aggregator, and
    /// privacy amplification by sampling needs the sample to be secret.
    pub sampling_seed: Option<u64>,
}

impl DpSgdConfig {
    /// The round's record-level settings, sampled from the OS.
    pub fn from_settings(dp: &DpSettings) -> Self {
        Self {
            clip_norm: dp.clip_norm,
            noise_multiplier: dp.noise_multiplier,
            sampling_rate: dp.sampling_rate,
            sampling_seed: None,
        }
    }

    /// Standard deviation the noise sampler must add to each summed coordinate.
    pub fn noise_std(&self) -> f64 {
        self.noise_multiplier * self.clip_norm
    }

    /// The one check every model runs before DP-SGD.
    pub fn validate(&self) -> Result<(), LocalError> {
        let ok = self.clip_norm.is_finite()
            && self.clip_norm > 0.0
            && self.noise_multiplier.is_finite()
            && self.noise_multiplier >= 0.0
            && self.sampling_rate > 0.0
            && self.sampling_rate <= 1.0;
        if ok { Ok(()) } else { Err(LocalError::Settings("DP-SGD needs C > 0, sigma >= 0 and 0 < q <= 1")) }
    }
}

/// A model's DP-SGD noise across rounds: the Gaussian mechanism, built once
/// for the run's settings, and where each round's random streams come from.
#[derive(Default)]
pub struct DpNoise {
    mechanisms: MechanismCache,
    /// Test only: derive sampling and noise from the round seed, the noise
    /// stream salted with this value. Predictable noise protects nothing.
    seeded: Option<u64>,
}

impl DpNoise {
    /// Noise and sampling from the OS.
    pub fn new() -> Self {
        Self::default()
    }

    /// TEST ONLY: derive sampling and noise from the round seed, the noise
    /// stream salted with `stream` (so it differs from the sampling stream),
    /// for simulations and tests that must be bit-reproducible.
    pub fn seeded(stream: u64) -> Self {
        Self { seeded: Some(stream), ..Self::default() }
    }

    /// The streams and mechanism of one round of DP-SGD over `dim` summed
    /// values with settings `dp` (validated here) and round seed `round_seed`.
    pub fn round(&mut self, dp: &DpSettings, round_seed: u64, dim: usize) -> Result<DpRound, LocalError> {
        let mut cfg = DpSgdConfig::from_settings(dp);
        cfg.validate()?;
        let rng = match self.seeded {
            Some(stream) => {
                cfg.sampling_seed = Some(round_seed);
                ChaCha20Rng::seed_from_u64(round_seed ^ stream)
            }
            None => ChaCha20Rng::from_entropy(),
        };
        // The sum of clipped gradients (sensitivity C) over `dim` values,
        // noised at multiplier z, rounding covered.
        let mechanism = self.mechanisms.get(cfg.noise_multiplier, cfg.clip_norm, dim)?.clone();
        let sampler = PoissonSampler::new(cfg.sampling_rate, cfg.sampling_seed);
        Ok(DpRound { cfg, sampler, rng, mechanism, zeroed: 0 })
    }
}

/// One round of DP-SGD: its settings, its secret sample and its noise.
pub struct DpRound {
    /// The round's validated settings.
    pub cfg: DpSgdConfig,
    /// The steps' Poisson sample.
    pub sampler: PoissonSampler,
    rng: ChaCha20Rng,
    mechanism: GaussianMechanism,
    zeroed: u64,
}

impl DpRound {
    /// Per-example gradients this round replaced by zero because they held
    /// a NaN or an infinity. For the member's own log only: the count is a
    /// statistic of its data and is never sent.
    pub fn zeroed_gradients(&self) -> u64 {
        self.zeroed
    }

    /// Count `k` more zeroed per-example gradients (models that clip on
    /// their own, like ghost clipping, report theirs here).
    pub fn count_zeroed(&mut self, k: u64) {
        self.zeroed += k;
    }

    /// The factor that clips one example's gradient of L2 norm `norm` to
    /// C (with `tessera_privacy::CLIP_SAFETY`'s f32 margin), or `None` when
    /// the norm is not finite: that example then contributes zero and is
    /// counted. Declining the round instead would release whether some
    /// record makes training diverge, unnoised.
    pub fn example_clip(&mut self, norm: f64) -> Option<f32> {
        match clip_factor(norm, self.cfg.clip_norm) {
            Ok(c) => Some(c as f32),
            Err(_) => {
                self.zeroed += 1;
                None
            }
        }
    }

    /// Add DP-SGD's noise to a clipped gradient sum. An error (a failed
    /// draw, a non-finite result) means the step must not be applied, let
    /// alone released.
    pub fn add_noise(&mut self, sum: &mut [f32]) -> Result<(), LocalError> {
        self.mechanism.add_to(sum, &mut self.rng)?;
        if sum.iter().any(|v| !v.is_finite()) {
            return Err(LocalError::Diverged("noised gradient"));
        }
        Ok(())
    }
}

/// One sampled example's gradient at a time, flat in the layout of the
/// exchanged tensors, for [`dp_sgd`].
pub trait PerExampleGradients {
    /// Make `params` the model's exchanged tensors for the next step.
    fn set_params(&mut self, params: &ModelParams) -> Result<(), LocalError>;
    /// See a group of a step's sampled training rows (at most
    /// [`PREPARE_GROUP`]) before their gradients are asked for; work shared
    /// by all of them goes here. `epoch` seeds per-epoch augmentation.
    fn prepare(&mut self, rows: &[usize], epoch: u64) -> Result<(), LocalError>;
    /// The loss gradient of the group's `index`-th row.
    fn gradient(&mut self, index: usize) -> Result<Vec<f32>, LocalError>;
}

/// DP-SGD from `start` over `n` training examples: each of `local_epochs *
/// ceil(1/q)` steps Poisson-samples its rows, clips each sampled example's
/// gradient to C on its own (a non-finite one becomes zero, see
/// [`DpRound::example_clip`]), adds the round's noise to the sum and takes an
/// SGD step scaled by one over the expected batch size (with FedProx's
/// proximal term when asked). Returns the trained exchanged tensors.
pub fn dp_sgd(
    start: &ModelParams,
    s: &TrainSettings,
    n: usize,
    dp: &mut DpRound,
    examples: &mut dyn PerExampleGradients,
) -> Result<ModelParams, LocalError> {
    let (layout, anchor) = (start.layout(), start.to_flat());
    let mut flat = anchor.clone();
    let inv_expected = dp.sampler.inverse_expected_batch(n);
    let steps = dp.sampler.steps_per_epoch();
    let (lr, mu) = (s.learning_rate as f32, s.proximal_mu as f32);
    let params = |flat: &[f32]| ModelParams::from_flat(&layout, flat).map_err(LocalError::model);
    for epoch in 0..u64::from(s.local_epochs) {
        for _ in 0..steps {
            let mut sum = vec![0.0f32; flat.len()];
            let sampled = dp.sampler.sample(n);
            for group in sampled.chunks(PREPARE_GROUP) {
                examples.prepare(group, epoch)?;
                for j in 0..group.len() {
                    let g = examples.gradient(j)?;
                    if g.len() != sum.len() {
                        return Err(LocalError::Unsupported(format!(
                            "DP-SGD: a gradient of {} values for {} parameters",
                            g.len(),
                            sum.len()
                        )));
                    }
                    let norm = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                    // A non-finite gradient contributes zero (counted, never sent).
                    if let Some(c) = dp.example_clip(norm) {
                        sum.iter_mut().zip(&g).for_each(|(a, v)| *a += c * v);
                    }
                }
            }
            dp.add_noise(&mut sum)?;
            fedprox_step(&mut flat, &anchor, &sum, inv_expected, lr, mu);
            examples.set_params(&params(&flat)?)?;
        }
    }
    params(&flat)
}

#[cfg(test)]
mod tests {
    use tessera_core::{NoisePlacement, ParamTensor, PrivacyUnit};
    use tessera_privacy::CLIP_SAFETY;

    use super::*;

    fn settings(clip_norm: f64) -> DpSettings {
        DpSettings {
            unit: PrivacyUnit::Record,
            noise: NoisePlacement::Local,
            clip_norm,
            noise_multiplier: 1.0,
            sampling_rate: 1.0,
            min_contributors: 1,
            delta: 1e-5,
            adaptive: None,
        }
    }

    /// Example 1's gradient is NaN; the others are finite and large.
    struct OneBad {
        rows: Vec<usize>,
    }

    impl PerExampleGradients for OneBad {
        fn set_params(&mut self, _: &ModelParams) -> Result<(), LocalError> {
            Ok(())
        }
        fn prepare(&mut self, rows: &[usize], _: u64) -> Result<(), LocalError> {
            self.rows = rows.to_vec();
            Ok(())
        }
        fn gradient(&mut self, index: usize) -> Result<Vec<f32>, LocalError> {
            Ok(if self.rows[index] == 1 { vec![f32::NAN, 1.0] } else { vec![30.0, 40.0] })
        }
    }

    #[test]
    fn a_non_finite_example_gradient_is_zeroed_and_counted_not_fatal() {
        let start = ModelParams::new(vec![ParamTensor::new("w", vec![2], vec![0.0, 0.0]).unwrap()]);
        let s = TrainSettings {
            local_epochs: 2,
            batch_size: 4,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 5,
            example_weight_cap: 0,
        };
        let mut round = DpNoise::seeded(3).round(&settings(1.0), 9, 2).unwrap();
        let out = dp_sgd(&start, &s, 4, &mut round, &mut OneBad { rows: vec![] }).unwrap();
        assert!(out.check_finite().is_ok());
        // q = 1: every step samples every example, so the bad one once per step.
        assert_eq!(round.zeroed_gradients(), 2 * round.sampler.steps_per_epoch());
    }

    #[test]
    fn per_example_clipping_keeps_the_same_f32_margin_as_whole_updates() {
        let mut round = DpNoise::seeded(1).round(&settings(1.0), 1, 2).unwrap();
        let c = round.example_clip(50.0).unwrap();
        let clipped = [30.0f32 * c, 40.0f32 * c];
        let norm = clipped.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        // Without the margin the clipped norm would be 1 (to f32 rounding).
        assert!(norm <= CLIP_SAFETY * (1.0 + 2e-7), "{norm}");
        assert_eq!(round.example_clip(0.5), Some(1.0));
        assert_eq!(round.example_clip(f64::INFINITY), None);
        assert_eq!(round.zeroed_gradients(), 1);
    }
}
