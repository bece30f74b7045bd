//! L2 clipping, per-example clip factors and adaptive clipping.
//!
//! Clipping bounds the sensitivity that the noise is calibrated to, so it must
//! never let a non-finite value through: a NaN would make the norm undefined
//! and an Inf would make the clip factor 0 * Inf. Such inputs are rejected
//! with a typed error before anything is modified; the error names no value.

use tessera_core::ModelParams;

use crate::PrivacyError;

/// Clipped vectors are scaled a hair below C so that f32 rounding of each
/// coordinate (relative error <= 2^-24) can never push the norm above C.
/// Every clip in Tessera (whole updates here, per-example gradients in the
/// learning crates) scales by `C · CLIP_SAFETY / norm`.
pub const CLIP_SAFETY: f64 = 1.0 - 1.0 / (1u64 << 20) as f64;

fn check_clip_norm(clip_norm: f64) -> Result<(), PrivacyError> {
    if clip_norm.is_finite() && clip_norm > 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::InvalidParameter("clip norm must be finite and > 0"))
    }
}

/// L2 norm accumulated in f64; errors on any non-finite value.
pub(crate) fn l2_norm<'a>(values: impl IntoIterator<Item = &'a f32>) -> Result<f64, PrivacyError> {
    let mut sum = 0.0f64;
    for v in values {
        if !v.is_finite() {
            return Err(PrivacyError::NonFinite);
        }
        sum += f64::from(*v) * f64::from(*v);
    }
    Ok(sum.sqrt())
}

/// The factor that brings a vector of L2 norm `norm` within `clip_norm`:
/// 1 when it is already within, else `C · CLIP_SAFETY / norm`. A non-finite
/// norm is an error: such a vector must be dropped, not scaled.
pub fn clip_factor(norm: f64, clip_norm: f64) -> Result<f64, PrivacyError> {
    check_clip_norm(clip_norm)?;
    if !norm.is_finite() || norm < 0.0 {
        return Err(PrivacyError::NonFinite);
    }
    Ok(if norm <= clip_norm { 1.0 } else { clip_norm / norm * CLIP_SAFETY })
}

/// Per-example clipping: given each example's gradient norm, the factor to
/// scale that example's gradient by before summing.
pub fn clip_factors(norms: &[f64], clip_norm: f64) -> Result<Vec<f64>, PrivacyError> {
    norms.iter().map(|n| clip_factor(*n, clip_norm)).collect()
}

/// Scale `values` in place so their L2 norm is at most `clip_norm`.
/// Returns the norm before clipping.
pub fn clip_l2(values: &mut [f32], clip_norm: f64) -> Result<f64, PrivacyError> {
    let norm = l2_norm(values.iter())?;
    let factor = clip_factor(norm, clip_norm)?;
    if factor < 1.0 {
        values.iter_mut().for_each(|v| *v = (f64::from(*v) * factor) as f32);
    }
    Ok(norm)
}

/// Clip a whole parameter set as one vector (the client-level update).
/// Returns the norm before clipping.
pub fn clip_params_l2(params: &mut ModelParams, clip_norm: f64) -> Result<f64, PrivacyError> {
    let norm = l2_norm(params.values())?;
    let factor = clip_factor(norm, clip_norm)?;
    if factor < 1.0 {
        params.values_mut().for_each(|v| *v = (f64::from(*v) * factor) as f32);
    }
    Ok(norm)
}

/// Noise multiplier left for the update itself once the clipped-count query
/// of adaptive clipping takes its share (Andrew et al. 2021, Thm. 1):
/// sigma_delta = (sigma^-2 - (2 sigma_b)^-2)^(-1/2). Requires sigma_b > sigma / 2.
pub fn split_noise_multiplier(sigma: f64, sigma_b: f64) -> Result<f64, PrivacyError> {
    if !(sigma.is_finite() && sigma > 0.0 && sigma_b.is_finite() && sigma_b > 0.0) {
        return Err(PrivacyError::InvalidParameter("noise multipliers must be finite and > 0"));
    }
    let inv = sigma.powi(-2) - (2.0 * sigma_b).powi(-2);
    if inv <= 0.0 {
        return Err(PrivacyError::InvalidParameter("count noise too small: need sigma_b > sigma / 2"));
    }
    Ok(inv.powf(-0.5))
}

/// One round of adaptive clipping expressed as a single Gaussian release.
///
/// Members clip their update to `update_clip` (C) and append the bit as
/// `bit_scale · (b - 1/2)`; the vector's L2 bound is then
/// `vector_clip = sqrt(C^2 + bit_scale^2 / 4)`. With noise `sigma · vector_clip`
/// per coordinate (sigma the accounted noise multiplier) the update sees
/// noise multiplier sigma_delta = [`split_noise_multiplier`]`(sigma, sigma_b)`
/// relative to C, and the count sees standard deviation sigma_b, exactly the
/// split of Andrew et al. (Thm. 1); the accountant composes one release at
/// multiplier sigma. Returns `(bit_scale, vector_clip)`.
pub fn adaptive_release(sigma: f64, update_clip: f64, sigma_b: f64) -> Result<(f64, f64), PrivacyError> {
    check_clip_norm(update_clip)?;
    let sigma_delta = split_noise_multiplier(sigma, sigma_b)?;
    let noise_std = sigma_delta * update_clip;
    let bit_scale = noise_std / sigma_b;
    Ok((bit_scale, update_clip.hypot(bit_scale / 2.0)))
}

/// Adaptive clipping state (Andrew, Thakkar, McMahan, Ramaswamy 2021,
/// "Differentially Private Learning with Adaptive Clipping"): the clip norm
/// tracks a target quantile of update norms with the geometric update
/// C <- C * exp(-eta * (b - gamma)), b the noisy fraction of unclipped updates.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveClip {
    clip_norm: f64,
    target_quantile: f64,
    learning_rate: f64,
}

impl AdaptiveClip {
    /// Start at `initial_clip` (> 0), tracking the `target_quantile` (gamma,
    /// in [0, 1]) of update norms with step `learning_rate` (eta, >= 0).
    pub fn new(initial_clip: f64, target_quantile: f64, learning_rate: f64) -> Result<Self, PrivacyError> {
        check_clip_norm(initial_clip)?;
        if !((0.0..=1.0).contains(&target_quantile) && learning_rate.is_finite() && learning_rate >= 0.0) {
            return Err(PrivacyError::InvalidParameter("quantile must lie in [0, 1] and learning rate be >= 0"));
        }
        Ok(Self { clip_norm: initial_clip, target_quantile, learning_rate })
    }

    /// The current clip norm C.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// Each client's bit: 1 if its update needed no clipping.
    pub fn unclipped_bit(&self, update_norm: f64) -> bool {
        update_norm <= self.clip_norm
    }

    /// Fold in one round: `noisy_unclipped_count` is the sum of the clients'
    /// bits plus the count noise (N(0, sigma_b^2), e.g. a discrete Gaussian),
    /// over `expected_clients` contributions. The noisy fraction may leave
    /// [0, 1]; that is fine for the update rule.
    pub fn update(&mut self, noisy_unclipped_count: f64, expected_clients: f64) -> Result<f64, PrivacyError> {
        if !(noisy_unclipped_count.is_finite() && expected_clients.is_finite() && expected_clients > 0.0) {
            return Err(PrivacyError::InvalidParameter("noisy count must be finite and clients > 0"));
        }
        let b = noisy_unclipped_count / expected_clients;
        self.clip_norm *= (-self.learning_rate * (b - self.target_quantile)).exp();
        Ok(self.clip_norm)
    }
}

/// The clipped-count query of adaptive clipping, privatised: the number of
/// unclipped updates plus exact discrete Gaussian noise of std `sigma_b`
/// (the count has sensitivity 1, so sigma_b is also its noise multiplier).
/// In the distributed placement each client instead adds its share of this
/// noise to its own bit, sized with `distributed_share_sigma`.
pub fn noisy_unclipped_count<R: rand_core::CryptoRngCore + ?Sized>(
    unclipped: u64,
    sigma_b: f64,
    rng: &mut R,
) -> Result<f64, PrivacyError> {
    let noise = crate::noise::DiscreteGaussian::new(sigma_b)?.sample(rng);
    Ok(unclipped as f64 + noise as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ParamTensor;

    #[test]
    fn clips_to_norm_and_reports_pre_clip_norm() {
        let mut v = vec![3.0f32, 4.0];
        let n = clip_l2(&mut v, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-12);
        let after = l2_norm(v.iter()).unwrap();
        assert!(after <= 1.0 && after > 1.0 - 1e-5, "{after}");
        assert!((v[0] / v[1] - 0.75).abs() < 1e-6);
        // Under the bound: untouched.
        let mut w = vec![0.3f32, 0.4];
        assert!((clip_l2(&mut w, 1.0).unwrap() - 0.5).abs() < 1e-7);
        assert_eq!(w, vec![0.3, 0.4]);
    }

    #[test]
    fn clipped_norm_never_exceeds_bound_under_rounding() {
        // Many awkward magnitudes: the f32 result must stay within C.
        for k in 1..200u32 {
            let mut v: Vec<f32> = (0..1000).map(|i| ((i * 7919 + k * 104729) % 1000) as f32 * 1.37e3 + 0.1).collect();
            clip_l2(&mut v, 0.731).unwrap();
            assert!(l2_norm(v.iter()).unwrap() <= 0.731);
        }
    }

    #[test]
    fn zero_and_non_finite() {
        let mut z = vec![0.0f32; 8];
        assert_eq!(clip_l2(&mut z, 1.0).unwrap(), 0.0);
        assert_eq!(z, vec![0.0; 8]);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = vec![1.0f32, bad, 2.0];
            assert_eq!(clip_l2(&mut v, 1.0), Err(PrivacyError::NonFinite));
            assert_eq!(v[0], 1.0, "input must be untouched on error");
        }
        assert!(clip_l2(&mut [1.0], 0.0).is_err());
        assert!(clip_l2(&mut [1.0], f64::NAN).is_err());
    }

    #[test]
    fn clips_model_params_as_one_vector() {
        let mut p = ModelParams::new(vec![
            ParamTensor::new("a", vec![2], vec![3.0, 0.0]).unwrap(),
            ParamTensor::new("b", vec![1], vec![4.0]).unwrap(),
        ]);
        let n = clip_params_l2(&mut p, 2.5).unwrap();
        assert!((n - 5.0).abs() < 1e-12);
        let after = l2_norm(p.values()).unwrap();
        assert!(after <= 2.5 && after > 2.5 - 1e-5);
        let mut bad = ModelParams::new(vec![ParamTensor::new("a", vec![1], vec![f32::NAN]).unwrap()]);
        assert_eq!(clip_params_l2(&mut bad, 1.0), Err(PrivacyError::NonFinite));
    }

    #[test]
    fn per_example_factors() {
        let f = clip_factors(&[0.0, 0.5, 1.0, 4.0], 1.0).unwrap();
        assert_eq!(&f[..3], &[1.0, 1.0, 1.0]);
        assert!((f[3] - 0.25).abs() < 1e-6 && f[3] <= 0.25);
        assert!(clip_factors(&[f64::NAN], 1.0).is_err());
    }

    #[test]
    fn noise_split_matches_formula() {
        // sigma = 1, sigma_b = 1: (1 - 1/4)^(-1/2) = 2 / sqrt(3).
        let s = split_noise_multiplier(1.0, 1.0).unwrap();
        assert!((s - 2.0 / 3f64.sqrt()).abs() < 1e-12);
        // The split always costs noise: sigma_delta > sigma.
        assert!(split_noise_multiplier(1.3, 10.0).unwrap() > 1.3);
        assert!(split_noise_multiplier(1.0, 0.5).is_err());
    }

    #[test]
    fn adaptive_release_is_one_gaussian_release_at_sigma() {
        for &(sigma, c, sb) in &[(1.0, 0.5, 5.0), (0.8, 2.0, 0.6), (3.0, 0.1, 50.0)] {
            let (scale, vclip) = adaptive_release(sigma, c, sb).unwrap();
            let noise_std = sigma * vclip;
            // Update noise relative to C is sigma_delta; count noise in bit units is sigma_b.
            let sd = split_noise_multiplier(sigma, sb).unwrap();
            assert!((noise_std / c - sd).abs() < 1e-12 * sd, "{sigma} {c} {sb}");
            assert!((noise_std / scale - sb).abs() < 1e-12 * sb);
            assert!(vclip > c);
        }
        assert!(adaptive_release(1.0, 1.0, 0.4).is_err(), "sigma_b must exceed sigma / 2");
    }

    #[test]
    fn adaptive_clip_tracks_quantile() {
        // Norms uniform on (0, 10): the median is 5. Noise-free bits, 100 clients.
        let norms: Vec<f64> = (0..100).map(|i| (i as f64 + 0.5) / 10.0).collect();
        let mut ac = AdaptiveClip::new(0.1, 0.5, 0.2).unwrap();
        for _ in 0..500 {
            let count = norms.iter().filter(|n| ac.unclipped_bit(**n)).count() as f64;
            ac.update(count, 100.0).unwrap();
        }
        assert!((ac.clip_norm() - 5.0).abs() < 0.3, "{}", ac.clip_norm());
        // With a noisy count the clip still settles near the median.
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(3);
        let mut noisy = AdaptiveClip::new(0.1, 0.5, 0.2).unwrap();
        for _ in 0..500 {
            let count = norms.iter().filter(|n| noisy.unclipped_bit(**n)).count() as u64;
            noisy.update(noisy_unclipped_count(count, 5.0, &mut rng).unwrap(), 100.0).unwrap();
        }
        assert!((noisy.clip_norm() - 5.0).abs() < 1.0, "{}", noisy.clip_norm());
        // Geometric step: all clipped (b = 0) multiplies C by exp(eta * gamma).
        let mut ac = AdaptiveClip::new(1.0, 0.5, 0.2).unwrap();
        assert!((ac.update(0.0, 10.0).unwrap() - 0.1f64.exp()).abs() < 1e-12);
    }
}
