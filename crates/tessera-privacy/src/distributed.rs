//! Sizing distributed discrete Gaussian noise under secure aggregation
//! (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism
//! for Federated Learning with Secure Aggregation", ICML).
//!
//! Each client adds its own share of integer noise to its quantized update;
//! the server only sees the sum, whose noise is the sum of the survivors'
//! shares. Shares are sized for the worst case the round allows: only
//! `min_contributors` survivors.

use crate::PrivacyError;

/// Exact variance of N_Z(0, s^2) by direct summation; it is slightly below
/// s^2 for small s (CKS20, Sec. 2.3) and indistinguishable from it in f64
/// once s >= 2.
pub(crate) fn discrete_gaussian_variance(s: f64) -> f64 {
    if s <= 0.0 {
        return 0.0;
    }
    if s > 64.0 {
        return s * s;
    }
    let bound = (s * 40.0) as i64 + 10;
    let (mut z, mut m2) = (1.0f64, 0.0f64);
    for k in 1..=bound {
        let w = (-((k * k) as f64) / (2.0 * s * s)).exp();
        z += 2.0 * w;
        m2 += 2.0 * (k * k) as f64 * w;
    }
    m2 / z
}

/// Per-client discrete Gaussian sigma such that the sum of any
/// `min_contributors` independent shares has variance >= `target_sigma^2`.
pub(crate) fn distributed_share_sigma(target_sigma: f64, min_contributors: u32) -> Result<f64, PrivacyError> {
    if !(target_sigma.is_finite() && target_sigma >= 0.0) {
        return Err(PrivacyError::InvalidParameter("target sigma must be finite and >= 0"));
    }
    if min_contributors == 0 {
        return Err(PrivacyError::InvalidParameter("min_contributors must be >= 1"));
    }
    if target_sigma == 0.0 {
        return Ok(0.0);
    }
    let need = target_sigma * target_sigma / f64::from(min_contributors);
    // Start at the continuous answer and grow until the discrete variance,
    // with a 1e-9 relative margin for rounding, covers the need.
    let mut s = need.sqrt();
    while discrete_gaussian_variance(s) < need * (1.0 + 1e-9) {
        s *= 1.0 + 1e-6;
    }
    Ok(s)
}

/// The τ of Kairouz, Liu and Steinke 2021 (Theorem 1, Proposition 14) for
/// the sum of `n` independent N_Z(0, `sigma`²) shares, `sigma` in grid units:
///
///   τ = 10 · Σ_{k=1}^{n-1} exp(-2π²σ² · k/(k+1)).
///
/// The sum is not exactly a discrete Gaussian of variance nσ², but for an
/// integer query of L2 sensitivity Δ in `d` coordinates it satisfies, at
/// every Rényi order α, RDP of at most `α·Δ²/(2nσ²) + τ·d`: the Gaussian's
/// RDP plus the excess `τ·d` ([`kls21_rdp_excess`]).
pub fn kls21_tau(sigma: f64, n: u32) -> f64 {
    let two_pi2_s2 = 2.0 * std::f64::consts::PI.powi(2) * sigma * sigma;
    (1..n).map(|k| (-two_pi2_s2 * f64::from(k) / f64::from(k + 1)).exp()).sum::<f64>() * 10.0
}

/// KLS21's excess over the Gaussian's RDP, `τ·d`, for `n` shares of
/// `sigma` (grid units) in `dim` coordinates. It does not depend on the
/// order, so it adds to every order's RDP.
pub fn kls21_rdp_excess(sigma: f64, n: u32, dim: u64) -> f64 {
    kls21_tau(sigma, n) * dim as f64
}

/// The floor on each member's share: [`crate::DistributedPlan`] refuses a
/// plan whose KLS21 excess `τ·d` exceeds this fraction of the smallest RDP
/// the accountant charges a Gaussian at multiplier z (order 1 + ε,
/// `1/(2z²)`), so accounting the sum as a Gaussian is off by at most one
/// part in a million. τ falls like exp(-π²σ²): shares of a few grid units
/// already pass, and Tessera's shares are millions of grid units wide.
pub const KLS21_MAX_EXCESS: f64 = 1e-6;

/// L2 sensitivity, in grid units, of an update with L2 norm <= `clip_norm`
/// after scaling by 1/`granularity` and conditional randomized rounding in
/// `dim` coordinates (retrying until the bound below holds, which fails with
/// probability <= `beta` per attempt). KLS21 Sec. 4 (conditional rounding):
///   Delta_2^2 = min( c^2/g^2 + d/4 + sqrt(2 ln(1/beta)) (c/g + sqrt(d)/2),  (c/g + sqrt(d))^2 ).
/// The second term is the deterministic worst case (every coordinate moves
/// by < 1); the first holds with probability >= 1 - beta.
pub fn quantized_l2_sensitivity(clip_norm: f64, granularity: f64, dim: u64, beta: f64) -> Result<f64, PrivacyError> {
    if !(clip_norm.is_finite() && clip_norm >= 0.0 && granularity.is_finite() && granularity > 0.0) {
        return Err(PrivacyError::InvalidParameter("clip norm must be >= 0 and granularity > 0"));
    }
    if !(beta > 0.0 && beta < 1.0) {
        return Err(PrivacyError::InvalidParameter("beta must lie in (0, 1)"));
    }
    let (c, d) = (clip_norm / granularity, dim as f64);
    let probabilistic = c * c + d / 4.0 + (2.0 * (1.0 / beta).ln()).sqrt() * (c + d.sqrt() / 2.0);
    let worst_case = (c + d.sqrt()).powi(2);
    Ok(probabilistic.min(worst_case).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::DiscreteGaussian;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn shares_sum_to_at_least_the_target_variance() {
        for &(target, t) in &[(10.0, 4u32), (1.0, 10), (0.5, 3), (1000.0, 100)] {
            let s = distributed_share_sigma(target, t).unwrap();
            assert!(f64::from(t) * discrete_gaussian_variance(s) >= target * target, "target {target}, t {t}");
            // Not wastefully large either, once shares are at least one grid step wide.
            let continuous = target / f64::from(t).sqrt();
            if continuous >= 1.0 {
                assert!(s < continuous * 1.001, "target {target}, t {t}: {s}");
            }
        }
        // Small shares: the discrete variance deficit is real and compensated.
        let s = distributed_share_sigma(0.5, 3).unwrap();
        assert!(s > 0.5 / 3f64.sqrt());
    }

    #[test]
    fn empirical_variance_of_summed_shares() {
        let (target, t) = (6.0, 9u32);
        let dg = DiscreteGaussian::new(distributed_share_sigma(target, t).unwrap()).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let n = 40_000;
        let sums: Vec<f64> = (0..n).map(|_| (0..t).map(|_| dg.sample(&mut rng) as f64).sum()).collect();
        let var = sums.iter().map(|x| x * x).sum::<f64>() / n as f64;
        // Sample variance within 5 standard errors of >= target^2.
        assert!(var > target * target * (1.0 - 5.0 * (2.0 / n as f64).sqrt()), "{var}");
    }

    /// τ by hand for two shares, then the bound itself against a direct
    /// computation: the Rényi divergence between S + 1 and S, S the exact
    /// sum (by convolution) of n discrete Gaussians, stays below KLS21's
    /// `α/(2nσ²) + τ` where τ matters (σ below one grid step) and at its
    /// Gaussian value where τ vanishes.
    #[test]
    fn kls21_bound_holds_for_exact_sums_of_discrete_gaussians() {
        let pi2 = std::f64::consts::PI.powi(2);
        assert!((kls21_tau(1.0, 2) - 10.0 * (-pi2).exp()).abs() < 1e-18);
        let three = 10.0 * ((-pi2).exp() + (-2.0 * pi2 * 2.0 / 3.0).exp());
        assert!((kls21_tau(1.0, 3) - three).abs() < 1e-18);
        assert_eq!(kls21_tau(5.0, 1), 0.0, "one share is a discrete Gaussian");
        assert!(kls21_tau(4.0, 1000) < 1e-60 && kls21_rdp_excess(1e6, 1000, 1 << 30) == 0.0);
        for &(sigma, n) in &[(0.4, 2u32), (0.5, 3), (0.7, 2), (1.0, 4), (2.0, 3)] {
            let pmf = sum_pmf(sigma, n);
            for &alpha in &[1.5, 2.0, 4.0, 8.0] {
                let exact = renyi_shift(&pmf, alpha);
                let gaussian = alpha / (2.0 * f64::from(n) * sigma * sigma);
                let bound = gaussian + kls21_rdp_excess(sigma, n, 1);
                assert!(exact <= bound * (1.0 + 1e-9), "sigma {sigma}, n {n}, alpha {alpha}: {exact} > {bound}");
            }
        }
        // Where tau matters, the plain Gaussian figure alone is exceeded: the
        // excess is needed, not decoration.
        let pmf = sum_pmf(0.4, 2);
        assert!(renyi_shift(&pmf, 4.0) > 4.0 / (2.0 * 2.0 * 0.16) * 1.05);
    }

    /// The pmf of the sum of `n` independent N_Z(0, sigma²) on [-K, K].
    fn sum_pmf(sigma: f64, n: u32) -> Vec<f64> {
        let k = (12.0 * sigma * f64::from(n).sqrt()) as i64 + 12;
        let one: Vec<f64> = (-k..=k).map(|x| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp()).collect();
        let z: f64 = one.iter().sum();
        let one: Vec<f64> = one.iter().map(|p| p / z).collect();
        let mut acc = vec![1.0];
        for _ in 0..n {
            let mut next = vec![0.0; acc.len() + one.len() - 1];
            for (i, a) in acc.iter().enumerate() {
                for (j, b) in one.iter().enumerate() {
                    next[i + j] += a * b;
                }
            }
            acc = next;
        }
        acc
    }

    /// D_alpha(S + 1 || S) for a pmf on consecutive integers.
    fn renyi_shift(pmf: &[f64], alpha: f64) -> f64 {
        let mut total = 0.0;
        for w in pmf.windows(2) {
            let (p, q) = (w[0], w[1]);
            if p > 0.0 && q > 0.0 {
                // In logs: q^(1 - alpha) alone overflows in the tails.
                total += (alpha * p.ln() + (1.0 - alpha) * q.ln()).exp();
            }
        }
        total.ln() / (alpha - 1.0)
    }

    #[test]
    fn sensitivity_inflation() {
        // d = 0: no rounding, sensitivity is c/g (first branch: c^2 + sqrt(2 ln 1/beta) c > c^2,
        // second: c^2, min is c^2).
        assert!((quantized_l2_sensitivity(2.0, 0.5, 0, 1e-9).unwrap() - 4.0).abs() < 1e-12);
        // Small d: probabilistic bound by hand. c/g = 100, d = 16, beta = e^-2.
        let got = quantized_l2_sensitivity(1.0, 0.01, 16, (-2.0f64).exp()).unwrap();
        let by_hand = (10_000.0f64 + 4.0 + 2.0 * (100.0 + 2.0)).sqrt();
        assert!((got - by_hand).abs() < 1e-9);
        // Huge d relative to c/g: the deterministic bound (c/g + sqrt d) can win.
        let got = quantized_l2_sensitivity(1.0, 1.0, 4, 1e-300).unwrap();
        assert!((got - 3.0).abs() < 1e-12);
        // Inflation is always >= c/g and grows with d.
        let a = quantized_l2_sensitivity(1.0, 1e-3, 1_000, 1e-9).unwrap();
        let b = quantized_l2_sensitivity(1.0, 1e-3, 1_000_000, 1e-9).unwrap();
        assert!(a >= 1000.0 && b > a);
        assert!(quantized_l2_sensitivity(1.0, 0.0, 1, 0.1).is_err());
    }
}
