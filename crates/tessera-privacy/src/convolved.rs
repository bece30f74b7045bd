//! Discrete Gaussian noise beyond the table's range from two small tables:
//! X = k·Y + R with Y ~ N_Z(0, s1^2) and R ~ N_Z(0, s2^2), both table draws.
//!
//! Why: [`GaussianMechanism`](crate::GaussianMechanism) on a million values
//! needs sigma/g ≈ 2^16 for its rounding to cost at most 3 % more noise,
//! four times the one-table cap ([`MAX_TABLE_SIGMA`]), where only the exact
//! rejection sampler (~100 ns a draw) was left. Two table draws from tables
//! of ~2,000 sigma (in cache) cost about a quarter of that.
//!
//! Why the law is (certifiably) the discrete Gaussian. With
//! rho_s(x) = exp(-x^2 / (2 s^2)), completing the square in y gives, for
//! every integer x,
//!
//!   sum_y rho_s1(y) rho_s2(x - k y) = rho_sigma(x) · theta(mu(x)),
//!
//! with sigma^2 = k^2 s1^2 + s2^2, s3 = s1 s2 / sigma, mu(x) = k s1^2 x / sigma^2
//! and theta(c) = sum_y rho_s3(y - c), a 1-periodic function. By Poisson
//! summation theta(c) = s3 sqrt(2 pi) (1 + 2 sum_{j>=1} exp(-2 pi^2 s3^2 j^2)
//! cos(2 pi j c)), so theta stays within a factor 1 ± eta of its mean, with
//! eta = 2 sum_{j>=1} exp(-2 pi^2 s3^2 j^2). The law of k·Y + R is therefore
//! N_Z(0, sigma^2) reweighted pointwise by a factor in
//! [(1 - eta)/(1 + eta), (1 + eta)/(1 - eta)], so its total-variation distance
//! to N_Z(0, sigma^2) is at most eta / (1 - eta). Here s3 ≈ 3, so eta is
//! about 2^-255; with the two tables' certified distances (about 2^-96
//! each, by coupling) one draw is within [`ConvolvedGaussian::tv_log2`]
//! (about 2^-95) of N_Z(0, sigma^2), under the same 2^-90 refusal bound as
//! a single table, and enters delta the same way (docs/privacy.md).
//! (Micciancio and Walter 2017, "Gaussian sampling over the integers",
//! combine samples the same way with a smoothing-parameter bound.)

use rand_core::CryptoRngCore;

use crate::PrivacyError;
use crate::cdt::{CdtTable, MIN_TV_BITS};
use crate::noise::{DiscreteGaussian, MAX_TABLE_SIGMA, SignBits, table_draw};

/// Largest sigma [`ConvolvedGaussian`] takes: its two tables then have
/// sigma about 1,800 (about 20,000 entries, 320 KiB each).
pub const MAX_CONVOLVED_SIGMA: f64 = (1u64 << 20) as f64;

/// Smallest sigma it takes; below, one table is cheaper anyway.
const MIN_CONVOLVED_SIGMA: f64 = 64.0;

/// s2 = FINE_RATIO · k, which makes s3 = s1 s2 / sigma about FINE_RATIO.
const FINE_RATIO: f64 = 3.0;

/// Refuse parameters whose s3 falls below this (eta would exceed 2^-175).
const MIN_S3: f64 = 2.5;

/// A sampler of N_Z(0, sigma^2) for sigma in [64, 2^20] from two table draws,
/// X = k·Y + R (module docs: why this is the discrete Gaussian to a
/// certified total-variation distance below 2^-90). Both tables are built
/// by [`ConvolvedGaussian::new`]; clones share them.
#[derive(Clone, Debug)]
pub struct ConvolvedGaussian {
    sigma: f64,
    k: i64,
    coarse: DiscreteGaussian,
    fine: DiscreteGaussian,
    tv_log2: f64,
}

impl ConvolvedGaussian {
    /// The sampler for `sigma` in [64, [`MAX_CONVOLVED_SIGMA`]]. The law's
    /// parameter, sqrt(k^2 s1^2 + s2^2) for the exact f64 values of s1 and
    /// s2, is at least `sigma` and exceeds it by a relative 2^-47 at most.
    pub fn new(sigma: f64) -> Result<Self, PrivacyError> {
        if !(sigma.is_finite() && (MIN_CONVOLVED_SIGMA..=MAX_CONVOLVED_SIGMA).contains(&sigma)) {
            return Err(PrivacyError::InvalidParameter("convolved sigma must be in [64, 2^20]"));
        }
        // Balance the tables: s1 ≈ sigma / k ≈ s2 = 3k when k ≈ sqrt(sigma / 3).
        let k = (sigma / FINE_RATIO).sqrt().floor();
        let s2 = FINE_RATIO * k; // exact: a small integer
        // k^2 s1^2 >= sigma^2 - s2^2: the few roundings of this line are
        // below 2^-51 relative, the factor adds 2^-48.
        let s1 = (sigma * sigma - s2 * s2).sqrt() / k * (1.0 + 2f64.powi(-48));
        // s3 = s1 s2 / sigma_eff, taken a little low (sigma_eff <= sigma (1 + 2^-47)).
        let s3 = s1 * s2 / (sigma * (1.0 + 2f64.powi(-40)));
        if !(s3 >= MIN_S3 && s1 <= MAX_TABLE_SIGMA && s2 <= MAX_TABLE_SIGMA) {
            return Err(PrivacyError::InvalidParameter("no table pair covers this sigma"));
        }
        let coarse = DiscreteGaussian::new(s1)?;
        let fine = DiscreteGaussian::new(s2)?;
        let (Some(tv1), Some(tv2)) = (coarse.table_tv_log2(), fine.table_tv_log2()) else {
            return Err(PrivacyError::InvalidParameter("a table for the convolved sampler was refused"));
        };
        let tv_log2 = log2_sum(log2_sum(tv1, tv2), smoothing_log2(s3));
        if tv_log2 > -MIN_TV_BITS {
            return Err(PrivacyError::InvalidParameter("convolved sampler's distance above 2^-90"));
        }
        Ok(Self { sigma, k: k as i64, coarse, fine, tv_log2 })
    }

    /// The sigma asked for (the law's parameter is at least this; see [`Self::new`]).
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Certified log2 of the total-variation distance between one draw and
    /// N_Z(0, sigma^2): both tables' distances and the smoothing term eta / (1 - eta).
    pub fn tv_log2(&self) -> f64 {
        self.tv_log2
    }

    /// Fill `out` with independent draws.
    pub fn fill<R: CryptoRngCore + ?Sized>(&self, out: &mut [i64], rng: &mut R) {
        let mut signs = SignBits::default();
        out.iter_mut().for_each(|o| *o = self.draw(rng, &mut signs));
    }

    /// One draw, k·Y + R.
    #[inline]
    pub(crate) fn draw<R: CryptoRngCore + ?Sized>(&self, rng: &mut R, signs: &mut SignBits) -> i64 {
        let (coarse, fine) = self.tables();
        self.k * table_draw(coarse, rng, signs) + table_draw(fine, rng, signs)
    }

    /// k and the two tables, for a loop of draws ([`Self::draw`] without the lookups).
    pub(crate) fn tables(&self) -> (&CdtTable, &CdtTable) {
        match (self.coarse.table(), self.fine.table()) {
            (Some(coarse), Some(fine)) => (coarse, fine),
            _ => unreachable!("both tables were built by new"),
        }
    }

    /// The step k between the coarse draws.
    pub(crate) fn k(&self) -> i64 {
        self.k
    }

    /// The decomposition (k, s1, s2), for the tests.
    #[cfg(test)]
    fn parts(&self) -> (i64, f64, f64) {
        (self.k, self.coarse.sigma(), self.fine.sigma())
    }
}

/// log2(2^a + 2^b).
fn log2_sum(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    hi + (1.0 + (lo - hi).exp2()).log2()
}

/// An upper bound on log2(eta / (1 - eta)), eta = 2 sum_{j>=1} exp(-2 pi^2 s^2 j^2):
/// the sum is at most its first term over 1 - exp(-6 pi^2 s^2) (a geometric
/// bound on the ratios of later terms), and 1 - eta >= 1/2 for s >= 1. One
/// bit of slack covers the f64 evaluation.
fn smoothing_log2(s: f64) -> f64 {
    let a = 2.0 * std::f64::consts::PI * std::f64::consts::PI * s * s;
    let first = 1.0 - a / std::f64::consts::LN_2; // log2(2 exp(-a))
    let geometric = -(1.0 - (-3.0 * a).exp()).log2();
    first + geometric + 1.0 + 1.0
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    /// The identity the sampler rests on, checked by direct summation where
    /// eta is large enough to see: the law of k·Y + R against N_Z(0, sigma^2)
    /// stays within the ratio bound (1 ± eta)/(1 ∓ eta), and the bound is not
    /// vacuous (the deviation reaches a good part of it).
    #[test]
    fn convolution_law_is_the_discrete_gaussian_within_the_smoothing_bound() {
        for &(k, s1, s2) in &[(3i64, 5.0f64, 2.0f64), (4, 6.0, 3.5), (2, 9.0, 1.6)] {
            let sigma2 = (k * k) as f64 * s1 * s1 + s2 * s2;
            let s3 = s1 * s2 / sigma2.sqrt();
            let rho = |x: f64, s: f64| (-x * x / (2.0 * s * s)).exp();
            let span = (12.0 * sigma2.sqrt()) as i64;
            let ys = (12.0 * s1) as i64;
            let conv: Vec<f64> = (-span..=span)
                .map(|x| (-ys..=ys).map(|y| rho(y as f64, s1) * rho((x - k * y) as f64, s2)).sum())
                .collect();
            let exact: Vec<f64> = (-span..=span).map(|x| rho(x as f64, sigma2.sqrt())).collect();
            let (zc, ze): (f64, f64) = (conv.iter().sum(), exact.iter().sum());
            let eta: f64 = 2.0
                * (1..20).map(|j| (-2.0 * std::f64::consts::PI.powi(2) * s3 * s3 * (j * j) as f64).exp()).sum::<f64>();
            let hi = (1.0 + eta) / (1.0 - eta);
            let worst = conv
                .iter()
                .zip(&exact)
                .filter(|(_, e)| **e / ze > 1e-12)
                .map(|(c, e)| ((c / zc) / (e / ze)).ln().abs())
                .fold(0.0f64, f64::max);
            assert!(worst <= hi.ln() * (1.0 + 1e-6) + 1e-12, "k {k} s1 {s1} s2 {s2}: {worst} > {}", hi.ln());
            assert!(worst >= 0.25 * hi.ln(), "k {k} s1 {s1} s2 {s2}: bound {} far above {worst}", hi.ln());
            // And the certified bound the sampler uses is above eta / (1 - eta).
            assert!(smoothing_log2(s3) >= (eta / (1.0 - eta)).log2(), "s3 {s3}");
        }
    }

    #[test]
    fn parameters_cover_sigma_and_certify_the_distance() {
        for &sigma in &[64.0, 1000.5, MAX_TABLE_SIGMA * 4.3, 123_456.7, MAX_CONVOLVED_SIGMA] {
            let c = ConvolvedGaussian::new(sigma).unwrap();
            let (k, s1, s2) = c.parts();
            let eff = ((k * k) as f64 * s1 * s1 + s2 * s2).sqrt();
            assert!(eff >= sigma && eff <= sigma * (1.0 + 1e-13), "sigma {sigma}: {eff}");
            assert!(s1 * s2 / eff >= MIN_S3 && s1 <= 2048.0 && s2 <= 2048.0, "sigma {sigma}: {k} {s1} {s2}");
            assert!(c.tv_log2() < -MIN_TV_BITS, "sigma {sigma}: 2^{}", c.tv_log2());
        }
        for bad in [63.9, MAX_CONVOLVED_SIGMA * 1.01, f64::NAN] {
            assert!(ConvolvedGaussian::new(bad).is_err(), "{bad}");
        }
    }

    /// Draws at sigma beyond the one-table cap: mean, variance, the 2-sigma
    /// tail, a chi-square over bins of sigma/4, and the residues mod k, which
    /// are uniform only when the fine draws R smooth over the coarse steps
    /// of k (a fine sigma too small for k shows up here first).
    #[test]
    fn draws_beyond_the_table_have_the_discrete_gaussian_law() {
        for &(sigma, seed) in &[(40_000.0, 1u64), (131_072.0, 2), (MAX_CONVOLVED_SIGMA, 3)] {
            let c = ConvolvedGaussian::new(sigma).unwrap();
            let mut out = vec![0i64; 400_000];
            c.fill(&mut out, &mut ChaCha20Rng::seed_from_u64(seed));
            let n = out.len() as f64;
            let mean = out.iter().map(|v| *v as f64).sum::<f64>() / n;
            let var = out.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
            assert!(mean.abs() < 5.0 * sigma / n.sqrt(), "sigma {sigma}: mean {mean}");
            assert!(
                (var / (sigma * sigma) - 1.0).abs() < 5.0 * (2.0 / n).sqrt(),
                "sigma {sigma}: var ratio {}",
                var / (sigma * sigma)
            );
            let tail = out.iter().filter(|v| (**v as f64).abs() > 2.0 * sigma).count() as f64 / n;
            assert!((tail - 0.0455).abs() < 0.002, "sigma {sigma}: tail {tail}");
            // Bins of width sigma/4 over [-3 sigma, 3 sigma) against the Gaussian's mass.
            let cdf = |t: f64| 0.5 * (1.0 + erf(t / std::f64::consts::SQRT_2));
            let (mut chi2, mut cells) = (0.0, 0);
            for b in -12..12 {
                let (lo, hi) = (b as f64 * sigma / 4.0, (b + 1) as f64 * sigma / 4.0);
                let obs = out.iter().filter(|v| (**v as f64) >= lo && (**v as f64) < hi).count() as f64;
                let exp = n * (cdf(hi / sigma) - cdf(lo / sigma));
                chi2 += (obs - exp).powi(2) / exp;
                cells += 1;
            }
            let df = (cells - 1) as f64;
            assert!(chi2 < df + 6.0 * (2.0 * df).sqrt(), "sigma {sigma}: chi2 {chi2} on {df} df");
            let k = c.parts().0;
            let mut residues = vec![0f64; k as usize];
            out.iter().for_each(|v| residues[v.rem_euclid(k) as usize] += 1.0);
            let e = n / k as f64;
            let chi2: f64 = residues.iter().map(|o| (o - e).powi(2) / e).sum();
            let df = (k - 1) as f64;
            assert!(chi2 < df + 6.0 * (2.0 * df).sqrt(), "sigma {sigma}: residues mod {k}: chi2 {chi2} on {df} df");
        }
    }

    /// erf by Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7), enough for the bins above.
    fn erf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let y = 1.0
            - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t + 0.254_829_592)
                * t
                * (-x * x).exp();
        y.copysign(x)
    }
}
