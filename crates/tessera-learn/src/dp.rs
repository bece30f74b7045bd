//! Record-level DP-SGD's shared half: the validated configuration, the
//! round's random streams and noise, and the loop for models whose
//! per-example gradients come from a backward pass (one per example, or
//! one per group with ghost norms, see [`PerExampleGradients::add_clipped`]).
//! Models with a cheaper
//! way to clip (the tabular MLP's ghost clipping, the frozen-backbone
//! head's closed form) use the same configuration, sampler and noise.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use tessera_core::{DpSettings, ModelParams, NoisePlacement, TrainSettings};
use tessera_privacy::{GaussianMechanism, MechanismCache, NoiseStream, clip_factor};

use crate::{LocalError, PoissonSampler, fedprox_step};

/// Sampled examples prepared together (e.g. their frozen-prefix outputs
/// held at once), so memory does not grow with `q * N`.
pub const PREPARE_GROUP: usize = 32;

/// Values of a noise release drawn on one stream; larger releases are
/// drawn in parallel chunks of this size (see [`DpRound::add_noise`]).
pub const NOISE_CHUNK: usize = 1 << 16;

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
    /// The public expected batch size B that divides each step's noised
    /// sum (the round's `TrainSettings::batch_size`, the same for every
    /// member). The release is then the accounted mechanism (Poisson
    /// sampling at q, the clipped sum, noise of std z·C) times a constant
    /// fixed before any data is seen, which is post-processing. `None`
    /// divides by the member's own q·N instead, a function of its private
    /// row count: no model in this repository trains that way (every
    /// round starts from [`DpNoise::round_for`]); kept for direct callers
    /// of [`dp_sgd`] that state it.
    pub expected_batch: Option<f64>,
    /// Who adds the noise. `Local`: each step's clipped sum is noised here
    /// at z·C, and a round is `local_epochs · ceil(1/q)` steps.
    /// `Distributed` (the record unit under secure aggregation): a round is
    /// exactly one step and adds no noise here; the members' discrete
    /// Gaussian shares, added to the securely summed update, carry it
    /// (`tessera_privacy::dpsgd_steps`, `DistributedPlan::for_round`).
    pub placement: NoisePlacement,
}

impl DpSgdConfig {
    /// The round's record-level settings, sampled from the OS, dividing by
    /// q·N (the data-dependent form; prefer [`from_round`](Self::from_round)).
    pub fn from_settings(dp: &DpSettings) -> Self {
        Self {
            clip_norm: dp.clip_norm,
            noise_multiplier: dp.noise_multiplier,
            sampling_rate: dp.sampling_rate,
            sampling_seed: None,
            expected_batch: None,
            placement: dp.noise,
        }
    }

    /// The round's record-level settings with the public expected batch
    /// size `train.batch_size`, sampled from the OS.
    pub fn from_round(dp: &DpSettings, train: &TrainSettings) -> Self {
        Self { expected_batch: Some(f64::from(train.batch_size)), ..Self::from_settings(dp) }
    }

    /// What one step's noised sum is divided by for a member with `n`
    /// training examples: B when public, else q·n.
    pub fn denominator(&self, n: usize) -> f64 {
        self.expected_batch.unwrap_or(self.sampling_rate * n as f64).max(f64::MIN_POSITIVE)
    }

    /// Standard deviation the noise sampler must add to each summed coordinate.
    pub fn noise_std(&self) -> f64 {
        self.noise_multiplier * self.clip_norm
    }

    /// Whether each step's sum is noised here (local placement).
    pub fn adds_noise(&self) -> bool {
        self.placement != NoisePlacement::Distributed
    }

    /// The round's local epochs: one under distributed noise (one step a
    /// round), `local_epochs` otherwise.
    pub fn epochs(&self, local_epochs: u32) -> u32 {
        if self.adds_noise() { local_epochs } else { 1 }
    }

    /// Steps per local epoch: one under distributed noise, `ceil(1/q)`
    /// otherwise. With [`epochs`](Self::epochs) this is
    /// `tessera_privacy::dpsgd_steps`, what the accountant composes.
    pub fn steps_per_epoch(&self) -> u64 {
        if self.adds_noise() { (1.0 / self.sampling_rate).ceil() as u64 } else { 1 }
    }

    /// The one check every model runs before DP-SGD.
    pub fn validate(&self) -> Result<(), LocalError> {
        let ok = self.clip_norm.is_finite()
            && self.clip_norm > 0.0
            && self.noise_multiplier.is_finite()
            && self.noise_multiplier >= 0.0
            && self.sampling_rate > 0.0
            && self.sampling_rate <= 1.0
            && self.expected_batch.is_none_or(|b| b.is_finite() && b >= 1.0);
        if ok { Ok(()) } else { Err(LocalError::Settings("DP-SGD needs C > 0, sigma >= 0, 0 < q <= 1 and B >= 1")) }
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
    /// values with settings `dp` and the round's training settings `train`
    /// (both validated here): the Poisson rate and the step count are the
    /// accountant's (`tessera_privacy::round_spend`), and each step's noised
    /// sum is divided by the public expected batch size `train.batch_size`.
    pub fn round_for(&mut self, dp: &DpSettings, train: &TrainSettings, dim: usize) -> Result<DpRound, LocalError> {
        crate::validate_train_settings(train)?;
        self.start(DpSgdConfig::from_round(dp, train), train.seed, dim)
    }

    fn start(&mut self, mut cfg: DpSgdConfig, round_seed: u64, dim: usize) -> Result<DpRound, LocalError> {
        cfg.validate()?;
        let rng = match self.seeded {
            Some(stream) => {
                cfg.sampling_seed = Some(round_seed);
                ChaCha20Rng::seed_from_u64(round_seed ^ stream)
            }
            None => ChaCha20Rng::from_entropy(),
        };
        // The sum of clipped gradients (sensitivity C) over `dim` values,
        // noised at multiplier z, rounding covered; none under distributed
        // noise, whose shares the member adds to the update it uploads.
        let mechanism = if cfg.adds_noise() {
            Some(self.mechanisms.get(cfg.noise_multiplier, cfg.clip_norm, dim)?.clone())
        } else {
            None
        };
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
    mechanism: Option<GaussianMechanism>,
    zeroed: u64,
}

impl DpRound {
    /// Per-example gradients this round replaced by zero because they held
    /// a NaN or an infinity. For the member's own log only: the count is a
    /// statistic of its data and is never sent.
    pub fn zeroed_gradients(&self) -> u64 {
        self.zeroed
    }

    /// The factor each step's noised sum is scaled by for a member with `n`
    /// training examples: one over [`DpSgdConfig::denominator`].
    pub fn inverse_batch(&self, n: usize) -> f32 {
        (1.0 / self.cfg.denominator(n)) as f32
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
    /// alone released. Under distributed noise it adds nothing (the round's
    /// one step is noised by the shares inside the secure sum) and only
    /// checks that the sum is finite.
    ///
    /// Above [`NOISE_CHUNK`] values the draws run in parallel, a chunk of
    /// `NOISE_CHUNK` values each, every chunk on its own AES-256-CTR
    /// stream ([`NoiseStream`]) keyed by 256 bits drawn in order from the
    /// round's: as secret and as independent as one stream's output, and a
    /// seeded (test) run stays reproducible whatever the thread count. One
    /// release in parts is what `GaussianMechanism::add_to` allows.
    /// (Unfrozen EfficientNet blocks carry ~1M values, two table draws
    /// each: one stream would make the noise alone a large part of a
    /// non-private step, and AES-NI's keystream is cheaper than ChaCha20's;
    /// docs/benchmarks.md.)
    pub fn add_noise(&mut self, sum: &mut [f32]) -> Result<(), LocalError> {
        let Some(mechanism) = &self.mechanism else {
            if sum.iter().any(|v| !v.is_finite()) {
                return Err(LocalError::Diverged("clipped gradient"));
            }
            return Ok(());
        };
        if sum.len() <= NOISE_CHUNK {
            mechanism.add_to(sum, &mut self.rng)?;
        } else {
            let keys: Vec<[u8; 32]> = sum
                .chunks(NOISE_CHUNK)
                .map(|_| {
                    let mut key = [0u8; 32];
                    self.rng.fill_bytes(&mut key);
                    key
                })
                .collect();
            sum.par_chunks_mut(NOISE_CHUNK)
                .zip(keys)
                .try_for_each(|(chunk, key)| mechanism.add_to(chunk, &mut NoiseStream::from_key(key)))?;
        }
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
    /// [`gradient`](Self::gradient) written over `out` (exactly one value
    /// per parameter). [`add_clipped`](Self::add_clipped) calls this one with
    /// a buffer [`dp_sgd`] reuses for every example; models whose gradient can go straight into it (no
    /// allocation of the model's size per example) override it.
    fn gradient_into(&mut self, index: usize, out: &mut [f32]) -> Result<(), LocalError> {
        let g = self.gradient(index)?;
        if g.len() != out.len() {
            return Err(LocalError::Unsupported(format!(
                "DP-SGD: a gradient of {} values for {} parameters",
                g.len(),
                out.len()
            )));
        }
        out.copy_from_slice(&g);
        Ok(())
    }

    /// Adds the group's clipped gradients to `sum`: the `j`-th row's
    /// gradient `g_j` times `clip(‖g_j‖₂)`, or nothing where `clip` gives
    /// `None` (a non-finite norm). [`dp_sgd`] calls this once per prepared
    /// group of `group` rows with `clip` = [`DpRound::example_clip`], so the
    /// bound and its margin are the round's whatever the model does here.
    ///
    /// The default materializes one gradient at a time into `scratch` (one
    /// value per parameter, reused) with [`gradient_into`](Self::gradient_into).
    /// A model that can get each row's gradient norm without materializing
    /// it (ghost clipping: from activations and output gradients) overrides
    /// this and computes the clipped sum in one batched backward pass; it
    /// must give the same sum up to f32 rounding.
    fn add_clipped(
        &mut self,
        group: usize,
        clip: &mut dyn FnMut(f64) -> Option<f32>,
        scratch: &mut [f32],
        sum: &mut [f32],
    ) -> Result<(), LocalError> {
        add_clipped_each(self, group, clip, scratch, sum)
    }
}

/// [`PerExampleGradients::add_clipped`]'s default: one example's gradient
/// at a time into `scratch`, its norm, its clip factor, added to `sum`. For
/// models that override `add_clipped` only in some configurations.
pub fn add_clipped_each<E: PerExampleGradients + ?Sized>(
    examples: &mut E,
    group: usize,
    clip: &mut dyn FnMut(f64) -> Option<f32>,
    scratch: &mut [f32],
    sum: &mut [f32],
) -> Result<(), LocalError> {
    for j in 0..group {
        examples.gradient_into(j, scratch)?;
        let norm = squared_norm(scratch).sqrt();
        // A non-finite gradient contributes zero (counted, never sent).
        if let Some(c) = clip(norm) {
            sum.iter_mut().zip(&*scratch).for_each(|(a, v)| *a += c * v);
        }
    }
    Ok(())
}

/// Squared L2 norm accumulated in f64 (exact enough for the clip:
/// CLIP_SAFETY's margin is for f32 rounding), over eight independent lanes
/// so that the compiler vectorizes it; a NaN or infinity makes it
/// non-finite.
fn squared_norm(v: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
    for c in chunks {
        for (acc, x) in lanes.iter_mut().zip(c) {
            *acc += f64::from(*x) * f64::from(*x);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// DP-SGD from `start` over `n` training examples: each of `local_epochs *
/// ceil(1/q)` steps (one under distributed noise: [`DpSgdConfig::epochs`],
/// [`DpSgdConfig::steps_per_epoch`]) Poisson-samples its rows, clips each sampled example's
/// gradient to C on its own and sums ([`PerExampleGradients::add_clipped`];
/// a non-finite one becomes zero, see [`DpRound::example_clip`]), adds the round's noise to the sum and takes an
/// SGD step scaled by [`DpRound::inverse_batch`] (one over the public
/// expected batch size for a round from [`DpNoise::round_for`]), with
/// FedProx's proximal term when asked. Returns the trained exchanged tensors.
pub fn dp_sgd(
    start: &ModelParams,
    s: &TrainSettings,
    n: usize,
    dp: &mut DpRound,
    examples: &mut dyn PerExampleGradients,
) -> Result<ModelParams, LocalError> {
    let (layout, anchor) = (start.layout(), start.to_flat());
    let mut flat = anchor.clone();
    let inv_expected = dp.inverse_batch(n);
    let (epochs, steps) = (dp.cfg.epochs(s.local_epochs), dp.cfg.steps_per_epoch());
    let (lr, mu) = (s.learning_rate as f32, s.proximal_mu as f32);
    let params = |flat: &[f32]| ModelParams::from_flat(&layout, flat).map_err(LocalError::model);
    // One gradient buffer and one sum for the whole run, overwritten per
    // example and per step.
    let (mut sum, mut g) = (vec![0.0f32; flat.len()], vec![0.0f32; flat.len()]);
    for epoch in 0..u64::from(epochs) {
        for _ in 0..steps {
            sum.iter_mut().for_each(|v| *v = 0.0);
            let sampled = dp.sampler.sample(n);
            for group in sampled.chunks(PREPARE_GROUP) {
                examples.prepare(group, epoch)?;
                examples.add_clipped(group.len(), &mut |norm| dp.example_clip(norm), &mut g, &mut sum)?;
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

    /// Every example's gradient is `grad`; counts the steps (one
    /// `set_params` per step) and the rows sampled.
    struct Constant {
        grad: Vec<f32>,
        steps: u64,
        sampled: u64,
    }

    impl PerExampleGradients for Constant {
        fn set_params(&mut self, _: &ModelParams) -> Result<(), LocalError> {
            self.steps += 1;
            Ok(())
        }
        fn prepare(&mut self, rows: &[usize], _: u64) -> Result<(), LocalError> {
            self.sampled += rows.len() as u64;
            Ok(())
        }
        fn gradient(&mut self, _: usize) -> Result<Vec<f32>, LocalError> {
            Ok(self.grad.clone())
        }
    }

    fn train(epochs: u32, batch_size: u32) -> TrainSettings {
        TrainSettings {
            local_epochs: epochs,
            batch_size,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 11,
            example_weight_cap: 0,
        }
    }

    /// DP-SGD from zero over `n` examples whose gradients are all zero, so
    /// the update is the scaled noise alone; `public`: the round from
    /// `round_for` (else the old q·N form).
    fn noise_only(n: usize, public: bool) -> Vec<f32> {
        let start = ModelParams::new(vec![ParamTensor::new("w", vec![3], vec![0.0; 3]).unwrap()]);
        let (dp, s) = (DpSettings { sampling_rate: 0.5, ..settings(1.0) }, train(2, 20));
        let mut noise = DpNoise::seeded(3);
        let mut round =
            if public { noise.round_for(&dp, &s, 3) } else { noise.start(DpSgdConfig::from_settings(&dp), s.seed, 3) }
                .unwrap();
        let mut zero = Constant { grad: vec![0.0; 3], steps: 0, sampled: 0 };
        dp_sgd(&start, &s, n, &mut round, &mut zero).unwrap().to_flat()
    }

    /// The release's scale is the public B, not the member's private row
    /// count: members with 10 and 10,000 rows draw the same noise (seeded)
    /// and release it at the same scale, where q·N scaled it by 1,000.
    #[test]
    fn the_step_scale_is_the_public_batch_not_the_row_count() {
        let (small, large) = (noise_only(10, true), noise_only(10_000, true));
        assert!(small.iter().any(|v| *v != 0.0), "the noise moved the model");
        assert_eq!(small, large, "the scale depends on the member's row count");
        // The old form divided by q·N: the same noise, 1,000 times smaller.
        let (old_small, old_large) = (noise_only(10, false), noise_only(10_000, false));
        assert_ne!(old_small, old_large);
        // Its scale 1 / (0.5 · 10) against the public 1 / 20: four times B's.
        for (old, public) in old_small.iter().zip(&small) {
            assert!((old / 4.0 - public).abs() <= 1e-5 * public.abs(), "{old} against {public}");
        }
        let mut round = DpNoise::seeded(3).round_for(&settings(1.0), &train(1, 20), 3).unwrap();
        assert_eq!((round.inverse_batch(10), round.inverse_batch(10_000)), (0.05, 0.05));
        assert!(round.example_clip(1.0).is_some());
        // B travels as the round's batch size, which the one check bounds.
        assert!(DpNoise::new().round_for(&settings(1.0), &train(1, 0), 3).is_err());
    }

    /// The rate and the step count the member's sampler runs are the ones
    /// the accountant composes (`round_spend`, which the aggregator charges
    /// and the member's ledger checks): q from the round's settings, never
    /// B / N, and `local_epochs · ceil(1/q)` steps, whatever B and N are.
    #[test]
    fn the_accountants_rate_and_steps_are_the_samplers() {
        for (q, epochs, batch, n) in [(1.0, 3, 40, 12), (0.5, 2, 20, 400), (0.3, 1, 64, 1000), (0.07, 4, 8, 50)] {
            let (dp, s) = (DpSettings { sampling_rate: q, ..settings(1.0) }, train(epochs, batch));
            let spend = tessera_privacy::round_spend(&dp, &s);
            let mut round = DpNoise::seeded(5).round_for(&dp, &s, 2).unwrap();
            assert_eq!(round.sampler.rate(), spend.sampling_rate, "q = {q}");
            let start = ModelParams::new(vec![ParamTensor::new("w", vec![2], vec![0.0; 2]).unwrap()]);
            let mut model = Constant { grad: vec![0.3, 0.4], steps: 0, sampled: 0 };
            dp_sgd(&start, &s, n, &mut round, &mut model).unwrap();
            assert_eq!(model.steps, spend.steps, "q = {q}, {epochs} epochs");
            // Each row joins each step with probability q: the sampled
            // count is Binomial(steps · n, q), within 5 standard deviations.
            let trials = (spend.steps * n as u64) as f64;
            let (mean, sd) = (trials * q, (trials * q * (1.0 - q)).sqrt());
            assert!((model.sampled as f64 - mean).abs() <= 5.0 * sd + 1e-9, "{} rows against {mean}", model.sampled);
        }
    }

    /// Distributed noise (the record unit under secure aggregation): one
    /// step a round whatever `local_epochs` says, the step count the
    /// accountant composes, and no local noise: the update is exactly
    /// `-(lr / B) · Σ clip_C(grad_i)` over the sample (here q = 1, all 10).
    #[test]
    fn distributed_noise_takes_one_unnoised_step() {
        let dp = DpSettings { noise: NoisePlacement::Distributed, ..settings(0.5) };
        let s = train(3, 4);
        assert_eq!(tessera_privacy::round_spend(&dp, &s).steps, 1);
        let mut round = DpNoise::new().round_for(&dp, &s, 2).unwrap();
        let start = ModelParams::new(vec![ParamTensor::new("w", vec![2], vec![0.0; 2]).unwrap()]);
        let mut model = Constant { grad: vec![0.3, 0.4], steps: 0, sampled: 0 };
        let out = dp_sgd(&start, &s, 10, &mut round, &mut model).unwrap().to_flat();
        assert_eq!((model.steps, model.sampled), (1, 10));
        // Each gradient has norm 0.5 = C: clipped by the f32 margin alone.
        for (o, g) in out.iter().zip([0.3f64, 0.4]) {
            let want = -0.1 / 4.0 * 10.0 * g * CLIP_SAFETY;
            assert!((f64::from(*o) - want).abs() <= 1e-6 * want.abs(), "{o} against {want}");
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
        let mut round = DpNoise::seeded(3).round_for(&settings(1.0), &TrainSettings { seed: 9, ..s }, 2).unwrap();
        let out = dp_sgd(&start, &s, 4, &mut round, &mut OneBad { rows: vec![] }).unwrap();
        assert!(out.check_finite().is_ok());
        // q = 1: every step samples every example, so the bad one once per step.
        assert_eq!(round.zeroed_gradients(), 2 * round.sampler.steps_per_epoch());
    }

    /// A release above one chunk: reproducible under a seed, fresh noise in
    /// every chunk (not one chunk's repeated), at the mechanism's sigma.
    #[test]
    fn large_releases_are_noised_in_parallel_chunks_of_fresh_noise() {
        let d = 3 * NOISE_CHUNK + 5;
        let draw = || {
            let mut round = DpNoise::seeded(3).round_for(&settings(1.0), &train(1, 4), d).unwrap();
            let mut v = vec![0.0f32; d];
            round.add_noise(&mut v).unwrap();
            (v, round.mechanism.as_ref().expect("local noise").sigma())
        };
        let ((a, sigma), (b, _)) = (draw(), draw());
        assert_eq!(a, b, "seeded runs are reproducible");
        let chunks: Vec<&[f32]> = a.chunks(NOISE_CHUNK).collect();
        assert_eq!(chunks.len(), 4);
        for pair in chunks.windows(2) {
            let same = pair[0].iter().zip(pair[1]).filter(|(x, y)| x == y).count();
            assert!(same < NOISE_CHUNK / 100, "two chunks share {same} values: the same stream twice");
        }
        let var = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / d as f64;
        assert!((var.sqrt() / sigma - 1.0).abs() < 0.01, "std {} against sigma {sigma}", var.sqrt());
    }

    #[test]
    fn squared_norm_is_the_f64_sum_of_squares() {
        for len in [0usize, 1, 7, 8, 9, 1001] {
            let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let scalar: f64 = v.iter().map(|x| f64::from(*x).powi(2)).sum();
            assert!((squared_norm(&v) - scalar).abs() <= 1e-12 * scalar.max(1.0), "{len}");
        }
        assert!(squared_norm(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(squared_norm(&[0.0; 20].iter().chain(&[f32::INFINITY]).copied().collect::<Vec<_>>()), f64::INFINITY);
    }

    #[test]
    fn per_example_clipping_keeps_the_same_f32_margin_as_whole_updates() {
        let mut round = DpNoise::seeded(1).round_for(&settings(1.0), &train(1, 4), 2).unwrap();
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
