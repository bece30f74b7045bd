//! The Gaussian mechanism on f32 values: rounding to a power-of-two grid,
//! exact discrete Gaussian noise on it (from tables where the grid allows),
//! and a sigma raised to cover the rounding, so the release is exactly a
//! Gaussian mechanism at the stated noise multiplier.

use rand_core::CryptoRngCore;

use crate::PrivacyError;
use crate::convolved::{ConvolvedGaussian, MAX_CONVOLVED_SIGMA};
use crate::noise::{DiscreteGaussian, GRID_BITS, MAX_TABLE_SIGMA, SignBits, table_draw};

/// The Gaussian mechanism on f32 values, calibrated for the table samplers.
///
/// A fixed grid 2^-20 below sigma (the plain float path of the noise module)
/// forces the (slow) rejection sampler. For a release of `dim` values of
/// L2 sensitivity `sensitivity` at noise multiplier `z`, this picks the
/// coarsest grid for which rounding costs at most about 3 % more noise (at
/// least 2^10 below sigma), and raises sigma until it covers the rounding:
/// `sigma >= z · (sensitivity + g·sqrt(dim))`, the L2 sensitivity of the
/// rounded values. Both neighbouring inputs are rounded, each coordinate of
/// each by up to g/2, so their rounded difference can exceed the raw one by
/// g·sqrt(dim) (g·sqrt(dim)/2 would cover the rounding of one input only).
/// The guarantee is therefore exactly that of multiplier `z` (plus the
/// samplers' certified distance; see docs/privacy.md). The noise on the
/// grid, N_Z(0, (sigma/g)^2), comes from one table while sigma/g <=
/// [`MAX_TABLE_SIGMA`] (z·sqrt(dim) up to about 250: a head, an MLP), from
/// two table draws combined ([`ConvolvedGaussian`]) while sigma/g <=
/// [`MAX_CONVOLVED_SIGMA`] (z·sqrt(dim) up to about 15,000: unfrozen
/// network blocks of a million values), and beyond that on the 2^-20 grid
/// from the exact rejection sampler. Build it once per run: clones share
/// the tables.
#[derive(Clone, Debug)]
pub struct GaussianMechanism {
    sigma: f64,
    grid: f64,
    sampler: Sampler,
}

/// Where a [`GaussianMechanism`]'s draws come from.
#[derive(Clone, Debug)]
enum Sampler {
    /// One table (built on the first draw), or the rejection sampler above its cap.
    Discrete(DiscreteGaussian),
    /// Two table draws, k·Y + R.
    Convolved(ConvolvedGaussian),
}

/// `y.round()` for |y| < 2^52 without the libm call `f64::round` becomes on
/// baseline x86-64: truncate, then correct by the (exact) fractional part.
/// Branch-free: under noise the fractional part is random, and a branch on
/// it would be mispredicted often.
#[inline]
fn round_half_away(y: f64) -> i64 {
    let t = y as i64;
    let frac = y - t as f64;
    t + i64::from(frac >= 0.5) - i64::from(frac <= -0.5)
}

/// L2 sensitivity of a sum after each contribution was rounded coordinate by
/// coordinate with steps below `step` (stochastic rounding into a ring,
/// nearest rounding onto a grid): one contribution of L2 norm at most
/// `sensitivity` becomes a rounded vector within `step · sqrt(dim)` of it,
/// so the rounded sums of two neighbouring inputs lie at most
/// `sensitivity + step · sqrt(dim)` apart. Noise calibrated on a decoded sum
/// (central noise under secure aggregation's offset coding) must use this,
/// as [`GaussianMechanism`] does for its own grid.
pub fn rounded_sensitivity(sensitivity: f64, step: f64, dim: usize) -> f64 {
    sensitivity + step * (dim as f64).sqrt()
}

/// Keeps one [`GaussianMechanism`] while its parameters stay the same (they
/// do for a whole run), so the table is built once, not every round.
#[derive(Clone, Debug, Default)]
pub struct MechanismCache {
    key: Option<(u64, u64, usize)>,
    mechanism: Option<GaussianMechanism>,
}

impl MechanismCache {
    /// The mechanism for these parameters: the kept one if they match the
    /// last call bit for bit, else a new one (see [`GaussianMechanism::new`]).
    pub fn get(&mut self, z: f64, sensitivity: f64, dim: usize) -> Result<&GaussianMechanism, PrivacyError> {
        let key = (z.to_bits(), sensitivity.to_bits(), dim);
        if self.key != Some(key) || self.mechanism.is_none() {
            self.mechanism = Some(GaussianMechanism::new(z, sensitivity, dim)?);
            self.key = Some(key);
        }
        Ok(self.mechanism.as_ref().expect("set above"))
    }
}

/// Most extra noise the grid's rounding may cost [`GaussianMechanism`].
const INFLATION: f64 = 0.03;

/// Coarsest table grid: sigma/g in [2^10, 2^11).
const MECHANISM_MIN_BITS: i32 = 10;
/// Finest grid the two-table sampler still covers: sigma/g < 2^20 =
/// [`MAX_CONVOLVED_SIGMA`] (one table up to 2^14 = [`MAX_TABLE_SIGMA`]).
const MECHANISM_MAX_TABLE_BITS: i32 = 19;

impl GaussianMechanism {
    /// The mechanism for `dim` values of L2 sensitivity `sensitivity` at
    /// noise multiplier `z` (all > 0). A single noise table is built by the
    /// first [`GaussianMechanism::add_to`], the two-table sampler's here.
    pub fn new(z: f64, sensitivity: f64, dim: usize) -> Result<Self, PrivacyError> {
        if !(z.is_finite() && z > 0.0 && sensitivity.is_finite() && sensitivity > 0.0 && dim > 0) {
            return Err(PrivacyError::InvalidParameter("z and sensitivity must be finite and > 0, dim > 0"));
        }
        let root_d = (dim as f64).sqrt();
        // Rounding inflation z·g·sqrt(d) <= 3 % of sigma, with g <= sigma·2^-bits:
        // 2^bits >= z·sqrt(d)/0.03. Coarser grids keep the table small
        // (it must stay in cache: a table draw is then ~12 ns).
        let want = ((z * root_d / INFLATION).log2().ceil() as i32).max(MECHANISM_MIN_BITS);
        let bits = if want <= MECHANISM_MAX_TABLE_BITS { want } else { GRID_BITS };
        debug_assert!(2f64.powi(MECHANISM_MAX_TABLE_BITS + 1) <= MAX_CONVOLVED_SIGMA);
        let mut sigma = z * sensitivity;
        for _ in 0..64 {
            let grid = 2f64.powi(sigma.log2().floor() as i32 - bits);
            // Both neighbours are rounded: the rounded difference grows by up to g·sqrt(d).
            let needed = z * (sensitivity + grid * root_d);
            if needed <= sigma {
                let on_grid = sigma / grid;
                let sampler = if on_grid > MAX_TABLE_SIGMA && on_grid <= MAX_CONVOLVED_SIGMA {
                    Sampler::Convolved(ConvolvedGaussian::new(on_grid)?)
                } else {
                    Sampler::Discrete(DiscreteGaussian::new(on_grid)?)
                };
                return Ok(Self { sigma, grid, sampler });
            }
            sigma = needed;
        }
        Err(PrivacyError::Unreachable("rounding to the noise grid outgrows the noise"))
    }

    /// The noise standard deviation actually added (>= z · sensitivity).
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The rounding grid g, a power of two, in value units.
    pub fn grid(&self) -> f64 {
        self.grid
    }

    /// Round `values` to the grid and add the noise (on the grid, then scaled back).
    /// Calls for parts of one release must together cover at most `dim` values.
    pub fn add_to<R: CryptoRngCore + ?Sized>(&self, values: &mut [f32], rng: &mut R) -> Result<(), PrivacyError> {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(PrivacyError::NonFinite);
        }
        // One loop per sampler, each with its draw inlined.
        match &self.sampler {
            Sampler::Discrete(dg) => match dg.table() {
                Some(t) => self.noise(values, rng, |rng, signs| table_draw(t, rng, signs)),
                None => self.noise(values, rng, |rng, signs| dg.sample_with(rng, signs)),
            },
            Sampler::Convolved(c) => {
                let ((coarse, fine), k) = (c.tables(), c.k());
                self.noise(values, rng, |rng, signs| k * table_draw(coarse, rng, signs) + table_draw(fine, rng, signs))
            }
        }
    }

    fn noise<R, F>(&self, values: &mut [f32], rng: &mut R, mut draw: F) -> Result<(), PrivacyError>
    where
        R: CryptoRngCore + ?Sized,
        F: FnMut(&mut R, &mut SignBits) -> i64,
    {
        let mut signs = SignBits::default();
        // The grid is a power of two: scaling by its inverse is exact.
        let inv_grid = 1.0 / self.grid;
        for v in values.iter_mut() {
            let y = f64::from(*v) * inv_grid;
            if y.abs() >= (1u64 << 52) as f64 {
                return Err(PrivacyError::InvalidParameter("value too large for the noise grid"));
            }
            let z = draw(rng, &mut signs);
            *v = ((round_half_away(y) + z) as f64 * self.grid) as f32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    impl GaussianMechanism {
        /// "table", "convolved" or "rejection": where the draws come from.
        fn sampler_kind(&self) -> &'static str {
            match &self.sampler {
                Sampler::Discrete(dg) if dg.table_tv_log2().is_some() => "table",
                Sampler::Discrete(_) => "rejection",
                Sampler::Convolved(_) => "convolved",
            }
        }
    }

    #[test]
    fn mechanism_covers_rounding_and_uses_the_table() {
        // WDBC's MLP, an EfficientNet head, a scalar.
        for &(z, c, d) in &[(1.1, 1.0, 530usize), (0.8, 0.5, 12_810), (1.0, 1.0, 1)] {
            let m = GaussianMechanism::new(z, c, d).unwrap();
            // The rounded values' sensitivity, Δ + g·sqrt(d) (both neighbours
            // rounded), is covered at multiplier z ...
            assert!(m.sigma() >= z * (c + m.grid() * (d as f64).sqrt()) * (1.0 - 1e-12));
            // ... at a cost of at most about 3 % more noise, from the table.
            assert!(m.sigma() <= z * c * 1.031, "{z} {c} {d}: {}", m.sigma() / (z * c));
            assert!(m.sigma() / m.grid() <= MAX_TABLE_SIGMA && m.sampler_kind() == "table");
        }
        // Unfrozen network blocks (~1M values, and 25M at z = 3): sigma/g
        // beyond one table, still within 3 %, from the two-table sampler.
        for &(z, d) in &[(1.0, 1_000_000usize), (2.0, 1_000_000), (3.0, 25_000_000)] {
            let m = GaussianMechanism::new(z, 1.0, d).unwrap();
            assert!(m.sigma() / m.grid() > MAX_TABLE_SIGMA && m.sigma() / m.grid() <= MAX_CONVOLVED_SIGMA);
            assert_eq!(m.sampler_kind(), "convolved", "{z} {d}");
            assert!(m.sigma() >= z * (1.0 + m.grid() * (d as f64).sqrt()) * (1.0 - 1e-12));
            assert!(m.sigma() <= z * 1.031, "{z} {d}: {}", m.sigma() / z);
        }
        // Huge z·sqrt(d): the fine grid and the exact rejection sampler, still covered.
        for &(z, d) in &[(20.0, 1_000_000usize), (50.0, 100_000_000)] {
            let m = GaussianMechanism::new(z, 1.0, d).unwrap();
            assert!(m.sigma() / m.grid() > MAX_CONVOLVED_SIGMA);
            assert_eq!(m.sampler_kind(), "rejection");
            assert!(m.sigma() >= z * (1.0 + m.grid() * (d as f64).sqrt()) * (1.0 - 1e-12));
        }
        assert!(GaussianMechanism::new(0.0, 1.0, 3).is_err());
    }

    /// Two neighbouring inputs exactly Δ apart whose rounded values lie
    /// Δ + g·sqrt(d) apart: every coordinate of x sits on the half step
    /// +g/2 (rounded up, away from zero) and x' = x − Δ/sqrt(d) on a half
    /// step below zero (rounded down). sigma must cover that distance at
    /// multiplier z; Δ + g·sqrt(d)/2 (the old bound) does not.
    #[test]
    fn sigma_covers_the_rounded_distance_of_two_neighbours() {
        // Powers of two, so Δ/sqrt(d) is a whole number of grid steps.
        for &(z, c, d) in &[(1.0, 1.0, 1usize), (1.1, 1.0, 4), (0.8, 0.5, 16), (2.0, 0.25, 64)] {
            let m = GaussianMechanism::new(z, c, d).unwrap();
            let g = m.grid();
            let per = c / (d as f64).sqrt();
            assert_eq!((per / g).fract(), 0.0, "the construction needs Δ/sqrt(d) on the grid");
            let (x, x2) = (0.5 * g, 0.5 * g - per);
            assert!(((x - x2) * (d as f64).sqrt() - c).abs() <= 1e-12 * c, "neighbours at distance Δ");
            let gap = (round_half_away(x / g) - round_half_away(x2 / g)) as f64 * g;
            let rounded = gap * (d as f64).sqrt();
            assert!((rounded - (c + g * (d as f64).sqrt())).abs() <= 1e-9 * c, "rounding stretches Δ by g·sqrt(d)");
            assert!(m.sigma() >= z * rounded * (1.0 - 1e-12), "{z} {c} {d}: sigma {} < z·{rounded}", m.sigma());
        }
    }

    #[test]
    fn fast_rounding_matches_round() {
        use rand_core::RngCore;
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let specials = [0.5, -0.5, 1.5, -1.5, 2.4999999999999996, -0.49999999999999994, 4503599627370495.5, 0.0, -0.0];
        for y in specials.into_iter().chain((0..100_000).map(|_| {
            let u = rng.next_u64();
            (u as i64 as f64) / 2f64.powi((u % 60) as i32)
        })) {
            if y.abs() < (1u64 << 52) as f64 {
                assert_eq!(round_half_away(y), y.round() as i64, "{y}");
            }
        }
    }

    #[test]
    fn mechanism_noise_has_the_stated_moments() {
        // z·sqrt(d) ≈ 581: sigma/g ≈ 2^15, the two-table sampler's range.
        let m = GaussianMechanism::new(1.3, 0.7, 200_000).unwrap();
        assert_eq!(m.sampler_kind(), "convolved");
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let mut v = vec![0.25f32; 200_000];
        m.add_to(&mut v, &mut rng).unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|x| f64::from(*x) - 0.25).sum::<f64>() / n;
        let var = v.iter().map(|x| (f64::from(*x) - 0.25 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let sd = m.sigma();
        assert!(mean.abs() < 5.0 * sd / n.sqrt(), "mean {mean}");
        assert!((var.sqrt() / sd - 1.0).abs() < 0.01, "std {} vs {sd}", var.sqrt());
        let mut bad = vec![f32::NAN];
        assert!(m.add_to(&mut bad, &mut rng).is_err());
    }
}
