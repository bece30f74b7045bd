//! Exact comparison of a uniform real U in [0, 1) with exp(-r), r rational.
//!
//! U is materialised lazily, 64 bits at a time, from the CSPRNG; exp(-r) is
//! enclosed in a rational interval of width a few units of 2^-n by integer
//! fixed-point arithmetic with directed rounding (every lower bound rounded
//! down, every upper bound up). When U's prefix is inside the enclosure we
//! draw 64 more bits of U and tighten. exp(-r) is irrational for rational
//! r > 0 (Lindemann), so the loop ends with probability 1 and
//! P[U < exp(-r)] = exp(-r) exactly. No floating point is involved here; the
//! sampler reaches this path only when its certified f64 fast path cannot
//! decide (probability well below 2^-20 per draw).

use dashu::base::{BitTest, UnsignedAbs};
use dashu::integer::{IBig, UBig};
use dashu::rational::RBig;
use rand_core::CryptoRngCore;

/// The bits of U drawn so far, most significant word first.
pub(crate) struct LazyUniform {
    words: Vec<u64>,
}

impl LazyUniform {
    pub(crate) fn new(first: u64) -> Self {
        Self { words: vec![first] }
    }

    /// The prefix as an integer V: U lies in [V, V + 1) * 2^-(64 * len).
    fn prefix(&self) -> UBig {
        self.words.iter().fold(UBig::ZERO, |acc, w| (acc << 64) + UBig::from(*w))
    }

    /// Exactly decide U < exp(-r) for rational r >= 0.
    pub(crate) fn less_than_exp_neg<R: CryptoRngCore + ?Sized>(&mut self, r: &RBig, rng: &mut R) -> bool {
        if *r == RBig::ZERO {
            return true; // exp(0) = 1 > U always.
        }
        loop {
            let bits = 64 * self.words.len();
            let v = self.prefix();
            let (lo, hi) = exp_neg_enclosure(r, bits);
            // U in [v, v + 1) units; exp(-r) in [lo, hi] units.
            if &v + UBig::ONE <= lo {
                return true;
            }
            if v >= hi {
                return false;
            }
            self.words.push(rng.next_u64());
        }
    }
}

/// Integers (lo, hi) with lo <= exp(-r) * 2^p <= hi and hi - lo <= 2 for
/// r >= 0: range-reduce r by 2^j so the alternating Taylor series of
/// exp(-x), x <= 1, brackets the value, then square j times.
pub(crate) fn exp_neg_enclosure(r: &RBig, p: usize) -> (UBig, UBig) {
    let num = r.numerator().unsigned_abs();
    let den = r.denominator().clone();
    // Smallest j with num <= den * 2^j, i.e. x = r / 2^j <= 1.
    let mut j = 0usize;
    while num > (&den << j) {
        j += 1;
    }
    let xden = &den << j;
    // Guard bits absorb the <= K+2 units of series rounding, doubled by each squaring.
    let w = p + j + 24;
    let one = UBig::ONE << w;
    let (mut sum_lo, mut sum_hi) = (IBig::ZERO, IBig::ZERO);
    let (mut t_lo, mut t_hi) = (one.clone(), one);
    let mut k = 0u64;
    loop {
        // Term k of sum (-x)^k / k!: even terms add, odd subtract.
        if k.is_multiple_of(2) {
            sum_lo += IBig::from(t_lo.clone());
            sum_hi += IBig::from(t_hi.clone());
        } else {
            sum_lo -= IBig::from(t_hi.clone());
            sum_hi -= IBig::from(t_lo.clone());
        }
        k += 1;
        let d = &xden * UBig::from(k);
        t_lo = (&t_lo * &num) / &d;
        t_hi = (&t_hi * &num + &d - UBig::ONE) / &d;
        if t_hi <= UBig::ONE {
            // Alternating, decreasing terms: the tail is bounded by the next term.
            sum_lo -= IBig::from(t_hi.clone());
            sum_hi += IBig::from(t_hi);
            break;
        }
    }
    let mut lo = if sum_lo > IBig::ZERO { sum_lo.unsigned_abs() } else { UBig::ZERO };
    let mut hi = sum_hi.unsigned_abs();
    for _ in 0..j {
        lo = (&lo * &lo) >> w;
        hi = (&hi * &hi + (UBig::ONE << w) - UBig::ONE) >> w;
    }
    let shift = w - p;
    let lo_p = lo >> shift;
    let hi_p = (hi + (UBig::ONE << shift) - UBig::ONE) >> shift;
    debug_assert!(lo_p <= hi_p && hi_p.bit_len() <= p + 1);
    (lo_p, hi_p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn to_f64(x: &UBig, p: usize) -> f64 {
        // Exact enough for a test: top 60 bits.
        let shift = x.bit_len().saturating_sub(60);
        let top: u64 = (x >> shift).try_into().unwrap();
        top as f64 * 2f64.powi(shift as i32 - p as i32)
    }

    #[test]
    fn enclosure_is_tight_and_contains_exp() {
        for (n, d) in [(1i64, 3u64), (7, 2), (0, 1), (1, 1), (1234, 10), (5, 100_000)] {
            let r = RBig::from_parts(IBig::from(n), UBig::from(d));
            for p in [64usize, 128, 256] {
                let (lo, hi) = exp_neg_enclosure(&r, p);
                assert!(&hi - &lo <= UBig::from(2u8), "r={n}/{d} p={p}");
                let truth = (-(n as f64) / d as f64).exp();
                if truth > 1e-300 {
                    let (l, h) = (to_f64(&lo, p), to_f64(&hi, p));
                    // f64 exp of a rounded argument is itself only good to ~|r| * 2^-52.
                    assert!(l <= truth * (1.0 + 1e-13) && h >= truth * (1.0 - 1e-13), "r={n}/{d}: {l} {truth} {h}");
                }
            }
        }
    }

    #[test]
    fn enclosures_nest_across_precisions() {
        let r = RBig::from_parts(IBig::from(22), UBig::from(7u8));
        let (lo64, hi64) = exp_neg_enclosure(&r, 64);
        let (lo128, hi128) = exp_neg_enclosure(&r, 128);
        assert!((lo64 << 64) <= hi128 && lo128 <= (hi64 << 64));
    }

    #[test]
    fn bernoulli_frequency_matches() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let r = RBig::from_parts(IBig::from(1), UBig::from(2u8));
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| LazyUniform::new(rand_core::RngCore::next_u64(&mut rng)).less_than_exp_neg(&r, &mut rng))
            .count();
        let p = (-0.5f64).exp();
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!((hits as f64 / n as f64 - p).abs() < 5.0 * sd);
    }

    #[test]
    fn extends_u_when_prefix_is_ambiguous() {
        // A prefix equal to floor(exp(-1/2) * 2^64) forces extra words.
        let r = RBig::from_parts(IBig::from(1), UBig::from(2u8));
        let (lo, _) = exp_neg_enclosure(&r, 64);
        let first: u64 = lo.try_into().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut u = LazyUniform::new(first);
        let _ = u.less_than_exp_neg(&r, &mut rng);
        assert!(u.words.len() > 1);
    }
}
