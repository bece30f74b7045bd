//! What every local SGD loop shares: the settings check, the Poisson
//! sampler of DP-SGD's steps and the FedProx step (on host slices and on
//! device tensors).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_core::TrainSettings;

use crate::LocalError;

/// Check a round's training settings before any work. Every model calls
/// this one check, so a setting one model refuses no other accepts.
pub fn validate_train_settings(s: &TrainSettings) -> Result<(), LocalError> {
    if s.local_epochs == 0 || s.batch_size == 0 {
        return Err(LocalError::Settings("local epochs and batch size must be positive"));
    }
    if !(s.learning_rate.is_finite() && s.learning_rate > 0.0) {
        return Err(LocalError::Settings("learning rate must be positive and finite"));
    }
    if !(s.proximal_mu.is_finite() && s.proximal_mu >= 0.0) {
        return Err(LocalError::Settings("proximal mu must be non-negative and finite"));
    }
    Ok(())
}

/// `p -= lr * (scale * g + mu * (p - anchor))` for every value: an SGD step
/// along `scale * grad` with FedProx's pull towards the round's starting
/// point (`mu = 0`: plain SGD).
pub fn fedprox_step(params: &mut [f32], anchor: &[f32], grad: &[f32], scale: f32, lr: f32, mu: f32) {
    for ((p, g), a) in params.iter_mut().zip(grad).zip(anchor) {
        *p -= lr * (scale * g + mu * (*p - a));
    }
}

/// [`fedprox_step`] for parameters that stay on their device (no copy to
/// the host): `w - lr * (g + mu * (w - anchor))`, with no anchor meaning
/// plain SGD. The same arithmetic in the same order, so a model may use
/// either form.
pub fn fedprox_tensor_step<const D: usize>(
    w: burn::tensor::Tensor<D>,
    grad: burn::tensor::Tensor<D>,
    anchor: Option<burn::tensor::Tensor<D>>,
    lr: f32,
    mu: f32,
) -> burn::tensor::Tensor<D> {
    let step = match anchor {
        Some(a) => grad + (w.clone() - a).mul_scalar(mu),
        None => grad,
    };
    w - step.mul_scalar(lr)
}

/// Poisson sampling of DP-SGD's steps: every training example joins a step
/// independently with probability `rate`, which the accountant turns into
/// amplification by sampling. The sample must stay secret, so the stream
/// comes from the OS unless a test fixes its seed.
pub struct PoissonSampler {
    rng: ChaCha8Rng,
    rate: f64,
}

impl PoissonSampler {
    /// A sampler at `rate` in (0, 1]; `seed` for reproducible tests only.
    pub fn new(rate: f64, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_entropy(),
        };
        Self { rng, rate }
    }

    /// The rows of one step among `n` examples, in increasing order.
    pub fn sample(&mut self, n: usize) -> Vec<usize> {
        (0..n).filter(|_| self.rng.gen_bool(self.rate)).collect()
    }

    /// Steps per local epoch: `ceil(1 / rate)`, so an epoch sees each
    /// example once in expectation.
    pub fn steps_per_epoch(&self) -> u64 {
        (1.0 / self.rate).ceil() as u64
    }

    /// The Poisson rate q every example joins a step with: the rate the
    /// accountant composes (`DpSettings::sampling_rate`).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// One over the expected batch size `rate * n` of a member with `n`
    /// training examples. This scale is a function of the member's private
    /// row count, so a release scaled by it is not exactly the accounted
    /// mechanism; DP-SGD divides by a public expected batch size instead
    /// (`DpSgdConfig::expected_batch`). Kept for callers that have not moved
    /// to it (tessera-vision's DP-SGD, whose tests pin this scale).
    pub fn inverse_expected_batch(&self, n: usize) -> f32 {
        (1.0 / (self.rate * n as f64).max(f64::MIN_POSITIVE)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TrainSettings {
        TrainSettings {
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 1,
            example_weight_cap: 100,
        }
    }

    /// The device form is the same arithmetic as the host form, bit for
    /// bit: the tabular model (tensors) and the image models (slices) take
    /// the same FedProx step.
    #[test]
    fn the_tensor_step_is_the_slice_step() {
        use burn::tensor::{Tensor, TensorData};
        let device = crate::DEFAULT_BACKEND.device();
        let w: Vec<f32> = (0..12).map(|i| 0.3 * i as f32 - 1.7).collect();
        let g: Vec<f32> = (0..12).map(|i| (i as f32 * 0.77).sin()).collect();
        let a: Vec<f32> = (0..12).map(|i| 0.01 * (i * i) as f32).collect();
        let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [3, 4]), &device);
        for (anchor, mu) in [(Some(&a), 0.25f32), (None, 0.0)] {
            let on_device = fedprox_tensor_step(t(&w), t(&g), anchor.map(|a| t(a)), 0.1, mu);
            let on_device: Vec<f32> = on_device.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            let mut on_host = w.clone();
            fedprox_step(&mut on_host, anchor.unwrap_or(&w), &g, 1.0, 0.1, mu);
            assert_eq!(on_device, on_host, "mu = {mu}");
        }
    }

    #[test]
    fn bad_settings_are_refused_by_the_one_check() {
        assert!(validate_train_settings(&settings()).is_ok());
        for bad in [
            TrainSettings { local_epochs: 0, ..settings() },
            TrainSettings { batch_size: 0, ..settings() },
            TrainSettings { learning_rate: f64::NAN, ..settings() },
            TrainSettings { learning_rate: 0.0, ..settings() },
            TrainSettings { proximal_mu: -1.0, ..settings() },
        ] {
            assert!(matches!(validate_train_settings(&bad), Err(LocalError::Settings(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_fedprox_step_pulls_towards_the_anchor() {
        let mut p = vec![1.0f32, -1.0];
        fedprox_step(&mut p, &[0.0, 0.0], &[2.0, 0.0], 0.5, 0.1, 1.0);
        // 1 - 0.1 * (0.5 * 2 + 1 * 1) = 0.8; -1 - 0.1 * (0 + 1 * -1) = -0.9.
        assert_eq!(p, vec![0.8, -0.9]);
    }

    #[test]
    fn the_sampler_is_seeded_and_covers_each_example_about_once_per_epoch() {
        let (mut a, mut b) = (PoissonSampler::new(0.25, Some(3)), PoissonSampler::new(0.25, Some(3)));
        assert_eq!(a.steps_per_epoch(), 4);
        let mut seen = 0;
        for _ in 0..400 {
            let s = a.sample(100);
            assert_eq!(s, b.sample(100));
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            seen += s.len();
        }
        // 400 steps of q N = 25 expected rows each.
        assert!((9_000..11_000).contains(&seen), "{seen}");
        assert_eq!(a.inverse_expected_batch(100), 1.0 / 25.0);
    }
}
