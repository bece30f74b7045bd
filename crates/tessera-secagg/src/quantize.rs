//! From f32 updates to the ring Z_{2^k} that secure aggregation sums in, and
//! back from the sum.
//!
//! A value is clipped to `[lo, hi]` (symmetric: `[-clip_range, clip_range]`),
//! shifted to `[0, hi - lo]` and divided by the step `Δ = (hi - lo) / L`, with
//! `L = 2^b - 1` levels. The fractional part is rounded *stochastically* with
//! a CSPRNG: up with probability equal to the fraction, so the rounded level
//! `r` satisfies `E[r] = q` exactly (unbiased) and `|r - q| < 1`.
//!
//! Each client uses `b = k - ceil(log2 n)` bits for a cohort of `n`, so the
//! sum of up to `n` inputs is at most `n * (2^b - 1) < 2^k` and never wraps.
//!
//! # Error bound
//! For `c` contributors, [`Quantizer::dequantize_sum`] returns
//! `Δ * S + c * lo` where `S` is the integer sum. Against the exact sum of the
//! *clipped* values, its error per element is
//! - at most `c * Δ` in absolute value (each client's rounding is below one step),
//! - zero in expectation, with standard deviation at most `sqrt(c) * Δ / 2`,
//!
//! plus the f32 rounding of the result. Clipping itself is not undone: values
//! outside the range are biased towards it, which is why DP clipping should
//! already keep updates inside `clip_range`.
//!
//! A weight (e.g. an example count for weighted averaging) travels as one
//! extra element of the vector, quantized with its own `Quantizer` over
//! `[0, max_weight]`; since quantization is element-wise, each slice of the
//! vector can use the quantizer that fits it.

use rand_core::CryptoRngCore;

use crate::context::RoundContext;
use crate::error::SecAggError;

/// Fixed-point coding of f32 values over `[lo, hi]` into levels that `n`
/// members can sum in Z_{2^k} without wrapping (stochastic, unbiased rounding).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantizer {
    lo: f64,
    hi: f64,
    step: f64,
    levels: u32,
    client_bits: u32,
    cohort_size: u32,
}

impl Quantizer {
    /// Quantizer over `[lo, hi]` for `cohort_size` summed inputs in Z_{2^modulus_bits}.
    pub fn new(lo: f32, hi: f32, modulus_bits: u32, cohort_size: u32) -> Result<Self, SecAggError> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(SecAggError::InvalidQuantizer("range must be finite with lo < hi"));
        }
        if !(1..=32).contains(&modulus_bits) || cohort_size == 0 {
            return Err(SecAggError::InvalidQuantizer("modulus_bits must lie in 1..=32 and the cohort be non-empty"));
        }
        let headroom = u32::BITS - (cohort_size - 1).leading_zeros(); // ceil(log2 n), 0 for n = 1
        let client_bits = modulus_bits
            .checked_sub(headroom)
            .filter(|b| *b >= 1)
            .ok_or(SecAggError::InvalidQuantizer("modulus too small: the cohort sum would leave no bit per client"))?;
        let levels = u32::MAX >> (32 - client_bits);
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        Ok(Self { lo, hi, step: (hi - lo) / f64::from(levels), levels, client_bits, cohort_size })
    }

    /// `[-clip_range, clip_range]`.
    pub fn symmetric(clip_range: f32, modulus_bits: u32, cohort_size: u32) -> Result<Self, SecAggError> {
        Self::new(-clip_range, clip_range, modulus_bits, cohort_size)
    }

    /// The quantizer a round's settings imply for the update values.
    pub fn for_round(ctx: &RoundContext) -> Result<Self, SecAggError> {
        let s = ctx.settings();
        Self::symmetric(s.clip_range, s.modulus_bits, ctx.cohort_size())
    }

    /// Bits `b` each client's values occupy.
    pub fn client_bits(&self) -> u32 {
        self.client_bits
    }

    /// The step Δ between two levels.
    pub fn step(&self) -> f64 {
        self.step
    }

    /// Worst-case absolute error per element of a dequantized sum of `contributors` inputs.
    pub fn max_sum_error(&self, contributors: u32) -> f64 {
        f64::from(contributors) * self.step
    }

    /// Clips, scales and stochastically rounds `values` into `out`, which must
    /// be as long. NaN is refused (typed error, no value in it).
    pub fn quantize<R: CryptoRngCore + ?Sized>(
        &self,
        values: &[f32],
        out: &mut [u32],
        rng: &mut R,
    ) -> Result<(), SecAggError> {
        if values.len() != out.len() {
            return Err(SecAggError::InvalidQuantizer("input and output lengths differ"));
        }
        if values.iter().any(|v| v.is_nan()) {
            return Err(SecAggError::InvalidQuantizer("input holds NaN"));
        }
        let top = f64::from(self.levels);
        for (v, o) in values.iter().zip(out.iter_mut()) {
            let q = ((f64::from(*v).clamp(self.lo, self.hi) - self.lo) / self.step).clamp(0.0, top);
            let floor = q.floor();
            // A uniform draw in [0, 1) with 53 random bits.
            let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let level = if u < q - floor { floor + 1.0 } else { floor };
            *o = level.min(top) as u32;
        }
        Ok(())
    }

    /// Turns the sum of `contributors` quantized vectors back into the f32
    /// sum of their (clipped) values.
    pub fn dequantize_sum(&self, sum: &[u32], contributors: u32, out: &mut [f32]) -> Result<(), SecAggError> {
        if sum.len() != out.len() {
            return Err(SecAggError::InvalidQuantizer("input and output lengths differ"));
        }
        if contributors == 0 || contributors > self.cohort_size {
            return Err(SecAggError::InvalidQuantizer("contributors must lie in 1..=cohort_size"));
        }
        let offset = f64::from(contributors) * self.lo;
        for (s, o) in sum.iter().zip(out.iter_mut()) {
            *o = (f64::from(*s) * self.step + offset) as f32;
        }
        Ok(())
    }

    /// The clipping range `(lo, hi)`.
    pub fn range(&self) -> (f64, f64) {
        (self.lo, self.hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn widths_leave_room_for_the_cohort_sum() {
        for n in [1u32, 2, 3, 7, 8, 9, 50, 1000, 65_536] {
            for k in 1..=32u32 {
                let Ok(q) = Quantizer::symmetric(1.0, k, n) else {
                    assert!(k <= u32::BITS - (n - 1).leading_zeros(), "k={k} n={n} should fit");
                    continue;
                };
                // Every client at the top level still does not wrap.
                let top = u64::from(q.levels);
                assert!(u64::from(n) * top < 1u64 << k, "k={k} n={n} wraps");
                assert_eq!(top, (1u64 << q.client_bits()) - 1);
            }
        }
    }

    #[test]
    fn round_trip_error_within_bound_and_unbiased() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (n, d) = (20u32, 500usize);
        let q = Quantizer::symmetric(0.5, 16, n).unwrap();
        assert_eq!(q.client_bits(), 11);
        let inputs: Vec<Vec<f32>> = (0..n).map(|_| (0..d).map(|_| rng.gen_range(-0.7f32..0.7)).collect()).collect();
        let exact: Vec<f64> =
            (0..d).map(|j| inputs.iter().map(|x| f64::from(x[j].clamp(-0.5, 0.5))).sum::<f64>()).collect();
        let trials = 200;
        let mut mean_err = vec![0f64; d];
        for _ in 0..trials {
            let mut sum = vec![0u32; d];
            let mut buf = vec![0u32; d];
            for x in &inputs {
                q.quantize(x, &mut buf, &mut rng).unwrap();
                sum.iter_mut().zip(&buf).for_each(|(s, b)| *s += *b);
            }
            assert!(sum.iter().all(|s| *s < 1 << 16));
            let mut out = vec![0f32; d];
            q.dequantize_sum(&sum, n, &mut out).unwrap();
            for j in 0..d {
                let err = f64::from(out[j]) - exact[j];
                assert!(err.abs() <= q.max_sum_error(n) + 1e-5, "error {err} exceeds the bound");
                mean_err[j] += err / f64::from(trials);
            }
        }
        // Unbiased: the mean error over trials shrinks like sd / sqrt(trials);
        // sd <= sqrt(n) * step / 2, allow 5 standard errors.
        let sd = f64::from(n).sqrt() * q.step() / 2.0;
        let tol = 5.0 * sd / f64::from(trials).sqrt() + 1e-6;
        let grand_mean = mean_err.iter().sum::<f64>() / d as f64;
        assert!(grand_mean.abs() < 5.0 * sd / (f64::from(trials) * d as f64).sqrt(), "bias {grand_mean}");
        assert!(mean_err.iter().all(|e| e.abs() < tol), "per-element bias above tolerance");
    }

    #[test]
    fn refuses_bad_input() {
        let q = Quantizer::symmetric(1.0, 8, 4).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert!(q.quantize(&[f32::NAN], &mut [0], &mut rng).is_err());
        assert!(q.quantize(&[0.0, 1.0], &mut [0], &mut rng).is_err());
        let mut out = [0u32; 2];
        q.quantize(&[f32::INFINITY, f32::NEG_INFINITY], &mut out, &mut rng).unwrap();
        assert_eq!(out, [63, 0]);
        assert!(q.dequantize_sum(&[0], 5, &mut [0.0]).is_err());
        assert!(Quantizer::symmetric(1.0, 2, 4).is_err());
        assert!(Quantizer::new(1.0, 1.0, 8, 4).is_err());
    }
}
