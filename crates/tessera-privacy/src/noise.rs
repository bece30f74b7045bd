//! Exact discrete Gaussian noise (Canonne, Kamath, Steinke 2020, "The
//! Discrete Gaussian for Differential Privacy", Algorithms 2 and 3), fast.
//!
//! No floating-point Gaussian is ever sampled: textbook float samplers leak
//! through the gaps of the float grid (Mironov 2012). The sampler draws
//! Y ~ discrete Laplace with scale t = floor(sigma) + 1 and accepts it with
//! probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)) (CKS20 Alg. 3), which
//! yields exactly N_Z(0, sigma^2) for the exact rational value of the f64
//! `sigma`.
//!
//! Exactness with speed. Every random decision in the sampler is of the form
//! "U < exp(-r)" for a uniform real U in [0, 1) and an exact rational r:
//! - |Y|'s magnitude X is geometric with P[X >= k] = exp(-k/t), so X is the
//!   number of k >= 1 with U < exp(-k/t): inversion, one U per draw;
//! - acceptance is U' < exp(-gamma) with gamma the rational above.
//!
//! We draw the first 64 bits of U and evaluate the threshold with f64
//! `libm::log` / `libm::exp` (musl's, documented ULP error < 1), then widen
//! the result by a relative margin of 2^-44 (plus 2^-46 absolute): at least
//! 100x the worst rounding of the handful of f64 operations involved. If the
//! 64-bit prefix of U lies outside the widened interval the comparison is
//! decided, and correctly, since U's remaining bits cannot cross it. If not
//! (probability about t * 2^-43 for the inversion and 2^-43 for acceptance),
//! the private `exact` module decides the same comparison with arbitrary-precision
//! integers and more bits of U. The output distribution is therefore the
//! exact discrete Gaussian, provided the margin bounds the f64 error; the
//! margin's slack is documented in docs/privacy.md.
//!
//! Batches use a table when sigma allows. [`DiscreteGaussian::fill`] builds,
//! on first use and once per sampler (clones share it), the cumulative
//! distribution table of the private `cdt` module: entries computed with the
//! same exact enclosures of exp, rounded so that one draw's total-variation
//! distance to N_Z(0, sigma^2) is certified below 2^-90 (about 2^-96 in
//! practice; [`DiscreteGaussian::table_tv_log2`]), at one 64-bit word and a
//! short table search per draw. Above [`MAX_TABLE_SIGMA`] the table would be
//! too large (about 11.3 sigma entries of 16 bytes) and `fill` uses the exact
//! rejection sampler below. The distance enters delta: see docs/privacy.md.
//!
//! Rejection sampler cost per sample: about 1.3 iterations of (2 x 64-bit
//! draws + 1 sign bit + one log); acceptance is mostly settled by the
//! alternating Taylor bounds
//! 1 - g + g^2/2 - g^3/6 <= exp(-g) <= 1 - g + g^2/2, and calls exp only for
//! g >= 1 or a draw that falls between them. Fast when sigma <= 2^30; larger
//! sigma stays exact but falls to the slow path more often. sigma is capped
//! at 2^40.

use std::sync::{Arc, OnceLock};

use dashu::integer::{IBig, UBig};
use dashu::rational::RBig;
use rand_core::CryptoRngCore;

use crate::PrivacyError;
use crate::cdt::CdtTable;
use crate::exact::LazyUniform;

/// Largest sigma accepted: keeps every candidate within i64 and the f64
/// fast path meaningful.
pub(crate) const MAX_SIGMA: f64 = (1u64 << 40) as f64;

/// Largest sigma that gets a table: about 185,000 entries (2.8 MiB), built
/// once per sampler (see `benches/noise.rs` for the time).
pub const MAX_TABLE_SIGMA: f64 = 16_384.0;

const REL_MARGIN: f64 = 1.0 / (1u64 << 44) as f64;
const ABS_MARGIN: f64 = 1.0 / (1u64 << 46) as f64;
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
/// Covers `u as f64` (2^-53 relative) and one more rounding, with room to spare.
const U_SLACK: f64 = 1.0 / (1u64 << 50) as f64;
const TWO_POW_NEG_64: f64 = 1.0 / TWO_POW_64;

/// A sampler of N_Z(0, sigma^2), the discrete Gaussian on the integers.
/// Build once per sigma; sampling borrows any CSPRNG.
#[derive(Clone, Debug)]
pub struct DiscreteGaussian {
    sigma: f64,
    t: u64,
    /// sigma^2 / t and 1 / (2 sigma^2) in f64, for the fast path.
    shift: f64,
    inv_two_var: f64,
    /// Exact rationals for the slow path: sigma^2 and t.
    sigma2: RBig,
    t_big: RBig,
    /// The CDT, built by the first `fill` (`None`: sigma is 0 or too large).
    table: Arc<OnceLock<Option<CdtTable>>>,
}

impl DiscreteGaussian {
    /// A sampler for standard deviation `sigma` in [0, 2^40]; 0 always draws 0.
    pub fn new(sigma: f64) -> Result<Self, PrivacyError> {
        if !(sigma.is_finite() && (0.0..=MAX_SIGMA).contains(&sigma)) {
            return Err(PrivacyError::InvalidParameter("sigma must be finite and in [0, 2^40]"));
        }
        let t = sigma.floor() as u64 + 1;
        let exact_sigma =
            RBig::try_from(sigma).map_err(|_| PrivacyError::InvalidParameter("sigma not representable"))?;
        let sigma2 = &exact_sigma * &exact_sigma;
        Ok(Self {
            sigma,
            t,
            shift: sigma * sigma / t as f64,
            inv_two_var: 1.0 / (2.0 * sigma * sigma),
            sigma2,
            t_big: RBig::from(t),
            table: Arc::default(),
        })
    }

    /// The standard deviation asked for (that of the continuous Gaussian the
    /// discrete one is built from).
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// One draw: from the table if a `fill` has built it, else by rejection.
    pub fn sample<R: CryptoRngCore + ?Sized>(&self, rng: &mut R) -> i64 {
        let mut signs = SignBits::default();
        match self.table.get() {
            Some(Some(table)) => table_draw(table, rng, &mut signs),
            _ => self.sample_with(rng, &mut signs),
        }
    }

    /// Fill `out` with independent draws; the batch API. Uses the table
    /// (built here on first use) when sigma <= [`MAX_TABLE_SIGMA`].
    pub fn fill<R: CryptoRngCore + ?Sized>(&self, out: &mut [i64], rng: &mut R) {
        let mut signs = SignBits::default();
        match self.table() {
            Some(table) => out.iter_mut().for_each(|o| *o = table_draw(table, rng, &mut signs)),
            None => out.iter_mut().for_each(|o| *o = self.sample_with(rng, &mut signs)),
        }
    }

    /// [`Self::fill`] with the exact rejection sampler only, never the table.
    pub fn fill_rejection<R: CryptoRngCore + ?Sized>(&self, out: &mut [i64], rng: &mut R) {
        let mut signs = SignBits::default();
        out.iter_mut().for_each(|o| *o = self.sample_with(rng, &mut signs));
    }

    /// Certified log2 of the total-variation distance between one table
    /// draw and N_Z(0, sigma^2) (builds the table); `None` when `fill` uses
    /// the exact rejection sampler, i.e. the distance is 0.
    pub fn table_tv_log2(&self) -> Option<f64> {
        self.table().map(CdtTable::tv_log2)
    }

    pub(crate) fn table(&self) -> Option<&CdtTable> {
        self.table
            .get_or_init(|| {
                // The build walks ~13.7 sigma terms (to 2^-136) and keeps ~11.3 sigma.
                let cap = (15.0 * MAX_TABLE_SIGMA) as usize;
                (self.sigma > 0.0 && self.sigma <= MAX_TABLE_SIGMA).then(|| CdtTable::new(&self.sigma2, cap)).flatten()
            })
            .as_ref()
    }

    pub(crate) fn sample_with<R: CryptoRngCore + ?Sized>(&self, rng: &mut R, signs: &mut SignBits) -> i64 {
        if self.sigma == 0.0 {
            return 0;
        }
        loop {
            let magnitude = self.geometric(rng);
            let negative = signs.next(rng);
            if negative && magnitude == 0 {
                continue; // CKS20 Alg. 2: reject (-, 0) so that 0 is not counted twice.
            }
            if self.accept(magnitude, rng) {
                let m = magnitude as i64;
                return if negative { -m } else { m };
            }
        }
    }

    /// X with P[X >= k] = exp(-k/t): X = #{k >= 1 : U < exp(-k/t)} = ceil(t * -ln U) - 1.
    fn geometric<R: CryptoRngCore + ?Sized>(&self, rng: &mut R) -> u64 {
        let u = rng.next_u64();
        let t = self.t as f64;
        // -ln U lies in (-ln((u+1) 2^-64), -ln(u 2^-64)]; u = 0 leaves it unbounded above.
        // One log: the two ends differ by ln(1 + 1/u) <= 1/u.
        let (e_lo, e_hi) = if u == 0 {
            (64.0 * std::f64::consts::LN_2, f64::INFINITY)
        } else {
            let e_hi = -libm::log(u as f64 * TWO_POW_NEG_64);
            (e_hi - 1.0 / u as f64, e_hi)
        };
        let a_lo = t * e_lo;
        let a_hi = t * e_hi;
        let c_lo = ceil_small(a_lo - a_lo.abs() * REL_MARGIN - t * ABS_MARGIN);
        let c_hi = ceil_small(a_hi + a_hi.abs() * REL_MARGIN + t * ABS_MARGIN);
        if c_lo == c_hi && c_lo >= 1.0 && c_lo < (1u64 << 53) as f64 {
            return c_lo as u64 - 1;
        }
        // Slow path: from the certified lower bound, walk k upward with exact
        // comparisons on the same U until U >= exp(-(x+1)/t).
        let mut x = if c_lo >= 1.0 && c_lo < (1u64 << 53) as f64 { c_lo as u64 - 1 } else { 0 };
        let mut lazy = LazyUniform::new(u);
        loop {
            let r = RBig::from_parts(IBig::from(x + 1), UBig::from(self.t));
            if lazy.less_than_exp_neg(&r, rng) {
                x += 1;
            } else {
                return x;
            }
        }
    }

    /// Bernoulli(exp(-(x - sigma^2/t)^2 / (2 sigma^2))).
    fn accept<R: CryptoRngCore + ?Sized>(&self, x: u64, rng: &mut R) -> bool {
        let u = rng.next_u64();
        let d = x as f64 - self.shift;
        let gamma = d * d * self.inv_two_var;
        // U lies in [u, u + 1) * 2^-64; widen for the rounding of `u as f64` and of the product.
        let uf = u as f64 * TWO_POW_NEG_64;
        let (u_lo, u_hi) = (uf * (1.0 - U_SLACK), uf * (1.0 + U_SLACK) + TWO_POW_NEG_64);
        let tol = REL_MARGIN * (1.0 + gamma) + ABS_MARGIN;
        if gamma < 1.0 {
            // Alternating Taylor bounds, valid for every gamma >= 0:
            // 1 - g + g^2/2 - g^3/6 <= exp(-g) <= 1 - g + g^2/2. Most draws stop here, without exp.
            let upper = 1.0 - gamma * (1.0 - 0.5 * gamma);
            let lower = upper - gamma * gamma * gamma / 6.0;
            if u_hi < lower - tol {
                return true;
            }
            if u_lo > upper + tol {
                return false;
            }
        }
        let p = libm::exp(-gamma);
        let margin = p * tol;
        if u_hi < p - margin {
            return true;
        }
        // The smallest normal is added so that an underflowed p never rejects u = 0 unexamined.
        if u_lo > p + margin + f64::MIN_POSITIVE {
            return false;
        }
        let bias = {
            let y = RBig::from(x) - &self.sigma2 / &self.t_big;
            &y * &y / (RBig::from(2u8) * &self.sigma2)
        };
        LazyUniform::new(u).less_than_exp_neg(&bias, rng)
    }
}

/// A signed draw from the table: |X| from the CDT, then a fair sign for |X| > 0.
pub(crate) fn table_draw<R: CryptoRngCore + ?Sized>(table: &CdtTable, rng: &mut R, signs: &mut SignBits) -> i64 {
    let m = table.magnitude(rng) as i64;
    signs.apply(m, rng)
}

/// ceil for |a| < 2^63 through integer truncation: `f64::ceil` is a libm call
/// on baseline x86-64. Out-of-range inputs saturate, which callers treat as
/// "undecided".
fn ceil_small(a: f64) -> f64 {
    let i = a as i64 as f64;
    if i < a { i + 1.0 } else { i }
}

/// Sign bits taken 64 at a time from one draw.
#[derive(Default)]
pub(crate) struct SignBits {
    word: u64,
    left: u32,
}

impl SignBits {
    fn next<R: CryptoRngCore + ?Sized>(&mut self, rng: &mut R) -> bool {
        if self.left == 0 {
            self.word = rng.next_u64();
            self.left = 64;
        }
        let bit = self.word & 1 == 1;
        self.word >>= 1;
        self.left -= 1;
        bit
    }

    /// `m` with a random sign when `m != 0`, else 0: the same words and
    /// the same result as `if m != 0 && self.next(rng) { -m } else { m }`,
    /// without the branch on the sign, which a random bit mispredicts half
    /// the time (docs/benchmarks.md).
    #[inline]
    fn apply<R: CryptoRngCore + ?Sized>(&mut self, m: i64, rng: &mut R) -> i64 {
        let take = m != 0;
        if (self.left == 0) & take {
            self.word = rng.next_u64();
            self.left = 64;
        }
        let take = u64::from(take);
        let negative = (self.word & take) as i64;
        self.word >>= take;
        self.left -= take as u32;
        // m when `negative` is 0, -m when it is 1 (two's complement).
        (m ^ -negative) + negative
    }
}

/// Fill `out` with i.i.d. N_Z(0, sigma^2) draws. A one-off call builds a
/// table only when the batch repays it (about 2 us per entry, 11.3 sigma
/// entries, against ~90 ns saved per draw: at least 256 sigma draws); keep a
/// [`DiscreteGaussian`] to reuse one across calls.
pub fn fill_discrete_gaussian<R: CryptoRngCore + ?Sized>(
    out: &mut [i64],
    sigma: f64,
    rng: &mut R,
) -> Result<(), PrivacyError> {
    let dg = DiscreteGaussian::new(sigma)?;
    if out.len() as f64 >= 256.0 * sigma.max(1.0) {
        dg.fill(out, rng)
    } else {
        dg.fill_rejection(out, rng)
    }
    Ok(())
}

/// Bits of grid resolution below sigma for float noise: the grid step is
/// sigma * 2^-GRID_BITS rounded down to a power of two.
pub(crate) const GRID_BITS: i32 = 20;

/// Add Gaussian-shaped noise of standard deviation ~`sigma` to f32 values
/// without a float Gaussian: each value is rounded to the grid
/// g = 2^(floor(log2 sigma) - GRID_BITS), exact integer discrete Gaussian
/// noise N_Z(0, (sigma/g)^2) is added on the grid, and the sum is converted
/// back (exact in f64, then rounded to f32 as post-processing). This is
/// OpenDP's approach for floats. Rounding to the grid moves each coordinate
/// by at most g/2; both neighbouring inputs are rounded, so the L2
/// sensitivity to budget for is Delta + g sqrt(d).
/// Returns the grid step g. [`GaussianMechanism`](crate::GaussianMechanism)
/// is the released path; this plain form backs the tests.
pub fn add_gaussian_noise_f32<R: CryptoRngCore + ?Sized>(
    values: &mut [f32],
    sigma: f64,
    rng: &mut R,
) -> Result<f64, PrivacyError> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(PrivacyError::InvalidParameter("sigma must be finite and > 0"));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(PrivacyError::NonFinite);
    }
    let grid = 2f64.powi(sigma.log2().floor() as i32 - GRID_BITS);
    let dg = DiscreteGaussian::new(sigma / grid)?;
    let mut signs = SignBits::default();
    for v in values.iter_mut() {
        let on_grid = (f64::from(*v) / grid).round();
        if on_grid.abs() >= (1u64 << 52) as f64 {
            return Err(PrivacyError::InvalidParameter("value too large for the noise grid"));
        }
        let noisy = on_grid as i64 + dg.sample_with(rng, &mut signs);
        *v = (noisy as f64 * grid) as f32;
    }
    Ok(grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    /// Exact N_Z(0, s^2) mass function by direct summation (independent of the sampler).
    fn pmf(s: f64, y: i64) -> f64 {
        let w = |k: i64| (-(k as f64).powi(2) / (2.0 * s * s)).exp();
        let bound = (s * 40.0) as i64 + 10;
        let z: f64 = (-bound..=bound).map(w).sum();
        w(y) / z
    }

    fn exact_variance(s: f64) -> f64 {
        let bound = (s * 40.0) as i64 + 10;
        (-bound..=bound).map(|k| (k as f64).powi(2) * pmf(s, k)).sum()
    }

    /// Both samplers: the table (`fill`) and exact rejection.
    fn fill_both(dg: &DiscreteGaussian, out: &mut [i64], rng: &mut ChaCha20Rng, table: bool) {
        if table { dg.fill(out, rng) } else { dg.fill_rejection(out, rng) }
    }

    #[test]
    fn small_sigma_matches_exact_pmf() {
        // Chi-square goodness of fit against the exact mass function.
        for (&s, table) in [0.3, 1.0, 2.5].iter().flat_map(|s| [(s, true), (s, false)]) {
            let dg = DiscreteGaussian::new(s).unwrap();
            assert!(dg.table_tv_log2().is_some());
            let mut rng = ChaCha20Rng::seed_from_u64(42);
            let n = 200_000usize;
            let mut out = vec![0i64; n];
            fill_both(&dg, &mut out, &mut rng, table);
            let r = (4.0 * s).ceil() as i64 + 1;
            let mut chi2 = 0.0;
            let mut cells = 0;
            for y in -r..=r {
                let obs = out.iter().filter(|v| **v == y).count() as f64;
                let exp = pmf(s, y) * n as f64;
                if exp > 20.0 {
                    chi2 += (obs - exp).powi(2) / exp;
                    cells += 1;
                }
            }
            // Generous critical value: mean cells-1, sd sqrt(2 (cells-1)).
            let df = (cells - 1) as f64;
            assert!(chi2 < df + 6.0 * (2.0 * df).sqrt(), "sigma {s} (table {table}): chi2 {chi2} on {df} df");
        }
    }

    #[test]
    fn moments_and_tails_for_large_sigma() {
        for (&s, table) in [7.3, 1000.0, MAX_TABLE_SIGMA, 123_456.7].iter().flat_map(|s| [(s, true), (s, false)]) {
            let dg = DiscreteGaussian::new(s).unwrap();
            // The table covers sigma up to the cap; its certified distance is below 2^-90.
            let tv = dg.table_tv_log2();
            assert_eq!(tv.is_some(), s <= MAX_TABLE_SIGMA, "sigma {s}");
            assert!(tv.is_none_or(|b| b < -90.0), "sigma {s}: 2^{tv:?}");
            let mut rng = ChaCha20Rng::seed_from_u64(9);
            let n = 200_000usize;
            let mut out = vec![0i64; n];
            fill_both(&dg, &mut out, &mut rng, table);
            let mean = out.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
            let var = out.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            assert!(mean.abs() < 5.0 * s / (n as f64).sqrt(), "sigma {s}: mean {mean}");
            // Var of the sample variance ~ 2 s^4 / n.
            assert!((var - s * s).abs() < 5.0 * s * s * (2.0 / n as f64).sqrt(), "sigma {s}: var {var}");
            // Two-sided tail beyond 2 sigma: 4.55% for the Gaussian.
            let tail = out.iter().filter(|v| (**v as f64).abs() > 2.0 * s).count() as f64 / n as f64;
            assert!((tail - 0.0455).abs() < 0.003, "sigma {s}: tail {tail}");
        }
    }

    #[test]
    fn variance_matches_exact_for_moderate_sigma() {
        let s = 3.7;
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut out = vec![0i64; 300_000];
        fill_discrete_gaussian(&mut out, s, &mut rng).unwrap();
        let var = out.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / out.len() as f64;
        let v = exact_variance(s);
        assert!((var - v).abs() < 5.0 * v * (2.0 / out.len() as f64).sqrt());
    }

    #[test]
    fn clones_share_the_table_and_single_draws_use_it_once_built() {
        let dg = DiscreteGaussian::new(3.0).unwrap();
        let copy = dg.clone();
        assert!(copy.table.get().is_none(), "no table before the first fill");
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        dg.fill(&mut [0i64; 4], &mut rng);
        assert!(Arc::ptr_eq(&dg.table, &copy.table));
        // The clone's single draws now come from the shared table: the same
        // words give the same value as a one-element `fill`.
        for seed in 0..64 {
            let mut one = [0i64; 1];
            dg.fill(&mut one, &mut ChaCha20Rng::seed_from_u64(seed));
            assert_eq!(copy.sample(&mut ChaCha20Rng::seed_from_u64(seed)), one[0]);
        }
    }

    #[test]
    fn seeded_rng_is_reproducible_and_zero_sigma_is_zero() {
        let dg = DiscreteGaussian::new(10.0).unwrap();
        let (mut a, mut b) = (ChaCha20Rng::seed_from_u64(1), ChaCha20Rng::seed_from_u64(1));
        let (mut x, mut y) = (vec![0i64; 100], vec![0i64; 100]);
        dg.fill(&mut x, &mut a);
        dg.fill(&mut y, &mut b);
        assert_eq!(x, y);
        let mut z = vec![5i64; 10];
        fill_discrete_gaussian(&mut z, 0.0, &mut a).unwrap();
        assert_eq!(z, vec![0; 10]);
        assert!(DiscreteGaussian::new(-1.0).is_err());
        assert!(DiscreteGaussian::new(f64::NAN).is_err());
        assert!(DiscreteGaussian::new(MAX_SIGMA * 2.0).is_err());
    }

    #[test]
    fn float_noise_on_grid() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let n = 100_000;
        let mut v = vec![1.5f32; n];
        let grid = add_gaussian_noise_f32(&mut v, 0.1, &mut rng).unwrap();
        assert!(grid <= 0.1 / (1u64 << GRID_BITS) as f64 && grid * 2.0 > 0.1 / (1u64 << GRID_BITS) as f64);
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (f64::from(*x) - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 1.5).abs() < 5.0 * 0.1 / (n as f64).sqrt());
        assert!((var - 0.01).abs() < 5.0 * 0.01 * (2.0 / n as f64).sqrt());
        assert_eq!(add_gaussian_noise_f32(&mut [f32::NAN], 1.0, &mut rng), Err(PrivacyError::NonFinite));
    }

    /// The branch-free sign reads the same words and gives the same values
    /// as the branching form it replaced, zeros included (they take no bit).
    #[test]
    fn branch_free_signs_match_the_branching_form() {
        let (mut a, mut b) = (ChaCha20Rng::seed_from_u64(8), ChaCha20Rng::seed_from_u64(8));
        let (mut sa, mut sb) = (SignBits::default(), SignBits::default());
        let mut mags = ChaCha20Rng::seed_from_u64(9);
        let mut negatives = 0;
        for _ in 0..10_000 {
            let m = (mags.next_u64() % 4) as i64; // a quarter zeros
            let old = if m != 0 && sa.next(&mut a) { -m } else { m };
            let new = sb.apply(m, &mut b);
            assert_eq!(old, new);
            negatives += i32::from(new < 0);
        }
        assert_eq!(a.next_u64(), b.next_u64(), "the same words consumed");
        assert!((3_500..4_000).contains(&negatives), "{negatives}");
    }

    /// Replays scripted words, then a seeded ChaCha: drives the sampler into its edge cases.
    struct Scripted {
        script: Vec<u64>,
        rest: ChaCha20Rng,
    }

    impl rand_core::RngCore for Scripted {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            if self.script.is_empty() { self.rest.next_u64() } else { self.script.remove(0) }
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            self.rest.fill_bytes(dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.rest.try_fill_bytes(dest)
        }
    }
    impl rand_core::CryptoRng for Scripted {}

    fn scripted(script: Vec<u64>) -> Scripted {
        Scripted { script, rest: ChaCha20Rng::seed_from_u64(99) }
    }

    #[test]
    fn geometric_edges_take_the_exact_path() {
        let dg = DiscreteGaussian::new(2.0).unwrap(); // t = 3
        // U < 2^-64: -ln U > 44.36, so X >= ceil(3 * 44.36) - 1 = 133.
        let x = dg.geometric(&mut scripted(vec![0]));
        assert!(x >= 133, "{x}");
        // U >= 1 - 2^-64: -ln U < 2^-63, so X = 0.
        assert_eq!(dg.geometric(&mut scripted(vec![u64::MAX])), 0);
        // U's prefix right at exp(-1/3): the exact path decides X in {0, 1}, both possible.
        let (lo, _) = crate::exact::exp_neg_enclosure(&RBig::from_parts(IBig::from(1), UBig::from(3u8)), 64);
        let at: u64 = lo.try_into().unwrap();
        let seen: std::collections::BTreeSet<u64> = (0..64)
            .map(|i| {
                let mut r = Scripted { script: vec![at], rest: ChaCha20Rng::seed_from_u64(i) };
                dg.geometric(&mut r)
            })
            .collect();
        assert_eq!(seen, [0u64, 1].into_iter().collect());
    }

    #[test]
    fn acceptance_edges() {
        let dg = DiscreteGaussian::new(2.0).unwrap();
        // gamma for x = 100 is about 1200: exp(-gamma) ~ 0 yet u = 0 must reach the exact path,
        // which (almost surely) rejects.
        assert!(!dg.accept(100, &mut scripted(vec![0])));
        // sigma = 3, t = 4: x = 2 gives gamma = (2 - 9/4)^2 / 18, p = exp(-gamma) ~ 0.99653.
        let dg = DiscreteGaussian::new(3.0).unwrap();
        assert!(dg.accept(2, &mut scripted(vec![1 << 62]))); // U = 1/4 < p
        assert!(!dg.accept(2, &mut scripted(vec![u64::MAX]))); // U > 1 - 2^-64 > p
        assert!(!dg.accept(2, &mut scripted(vec![(0.9966 * TWO_POW_64) as u64]))); // just above p
        assert!(dg.accept(2, &mut scripted(vec![(0.9965 * TWO_POW_64) as u64]))); // just below p
    }

    #[test]
    fn huge_sigma_uses_slow_path_often_and_stays_right() {
        let s = (1u64 << 36) as f64 + 0.5;
        let dg = DiscreteGaussian::new(s).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let n = 20_000;
        let mut out = vec![0i64; n];
        dg.fill(&mut out, &mut rng);
        let var = out.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
        assert!((var / (s * s) - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(), "{}", var / (s * s));
    }

    #[test]
    fn two_sample_against_opendp_sampler() {
        // OpenDP's exact big-rational CKS20 sampler (public, no feature needed) as the reference.
        use dashu::rational::RBig;
        let s = 3.5;
        let n = 20_000usize;
        let reference: Vec<i64> = (0..n)
            .map(|_| {
                let v = opendp::traits::samplers::sample_discrete_gaussian(RBig::try_from(s).unwrap()).unwrap();
                i64::try_from(v).unwrap()
            })
            .collect();
        let mut ours = vec![0i64; n];
        DiscreteGaussian::new(s).unwrap().fill(&mut ours, &mut ChaCha20Rng::seed_from_u64(77));
        // Two-sample chi-square over bins -9..=9 with both tails pooled.
        let bin = |v: i64| v.clamp(-10, 10);
        let (mut a, mut b) = ([0f64; 21], [0f64; 21]);
        reference.iter().for_each(|v| a[(bin(*v) + 10) as usize] += 1.0);
        ours.iter().for_each(|v| b[(bin(*v) + 10) as usize] += 1.0);
        let (mut chi2, mut cells) = (0.0, 0);
        for (x, y) in a.iter().zip(&b) {
            if x + y > 0.0 {
                chi2 += (x - y).powi(2) / (x + y);
                cells += 1;
            }
        }
        let df = (cells - 1) as f64;
        assert!(chi2 < df + 6.0 * (2.0 * df).sqrt(), "chi2 {chi2} on {df} df");
        let var = |v: &[i64]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var(&reference) - var(&ours)).abs() < 6.0 * s * s * (4.0 / n as f64).sqrt());
    }
}
