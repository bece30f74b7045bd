//! Cumulative distribution table (CDT) sampler for the discrete Gaussian
//! N_Z(0, sigma^2) at one fixed sigma, with a certified distance to the
//! exact distribution.
//!
//! The table holds the magnitude |X|'s distribution function
//! F(m) = P[|X| <= m] as 128-bit fixed-point integers T[m] <= 2^128 F(m),
//! for m < K, where the mass beyond K - 1 is below 2^-(TAIL_BITS). A draw
//! takes a uniform U = (u_hi, u_lo) in [0, 2^128), returns m = #{j : T[j] <= U}
//! (so P[m] = (T[m] - T[m-1]) / 2^128), and a sign bit when m > 0. u_lo is
//! drawn only when u_hi equals a table entry's top word (probability about
//! K 2^-64), so a draw costs one 64-bit word, a guide-table lookup and a
//! short binary search.
//!
//! Building the table uses no floating point: rho(m) = exp(-m^2 / (2 sigma^2))
//! is enclosed by the recurrence rho(m+1) = rho(m) a b^m with
//! a = exp(-1/(2 sigma^2)), b = exp(-1/sigma^2) enclosed by
//! [`crate::exact::exp_neg_enclosure`], in WORK_BITS-bit fixed point with
//! directed rounding (lower ends down, upper ends up); the normalising sum
//! gets a geometric bound for its tail. Each entry's enclosure
//! [2^128 F_lo(m), 2^128 F_hi(m)] gives its error e_m, and
//! [`CdtTable::new`] returns the certified total-variation bound
//!   TV <= ((K + 1) max_m e_m + (2^128 - T[K-1])) / 2^128:
//! each cell m < K moves by at most e_m + e_{m-1} units, and the output K
//! carries the tail mass tau = 1 - F(K-1) <= (2^128 - T[K-1]) / 2^128 that
//! the exact law spreads over m >= K. It refuses a table whose bound exceeds
//! 2^-MIN_TV_BITS (docs/privacy.md, "The noise").
//!
//! Not constant time: which table lines a draw touches depends on the noise
//! value, as the rejection sampler's running time does.

use dashu::base::BitTest;
use dashu::integer::UBig;
use dashu::rational::RBig;
use rand_core::CryptoRngCore;

use crate::exact::exp_neg_enclosure;

/// Fixed-point bits of the enclosure arithmetic: 64 guard bits below the
/// table's 128.
const WORK_BITS: usize = 192;
/// The table ends where the magnitude's remaining mass is <= 2^-TAIL_BITS.
const TAIL_BITS: usize = 96;
/// Refuse to build a table whose certified distance exceeds 2^-MIN_TV_BITS.
pub(crate) const MIN_TV_BITS: f64 = 90.0;

/// A CDT for one sigma. Immutable once built; shared between clones.
pub(crate) struct CdtTable {
    /// Top and bottom 64 bits of T[m], m < K.
    hi: Vec<u64>,
    lo: Vec<u64>,
    /// guide[j] = #{m : hi[m] < j 2^(64 - guide_bits)}, j = 0..=2^guide_bits.
    guide: Vec<u32>,
    guide_bits: u32,
    /// Certified log2 of the total-variation distance to N_Z(0, sigma^2).
    tv_log2: f64,
}

/// The size and bound only, never the entries.
impl std::fmt::Debug for CdtTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdtTable").field("entries", &self.hi.len()).field("tv_log2", &self.tv_log2).finish()
    }
}

/// Interval [lo, hi] in units of 2^-WORK_BITS.
#[derive(Clone)]
struct Enclosure {
    lo: UBig,
    hi: UBig,
}

impl Enclosure {
    fn mul(&self, other: &Enclosure) -> Enclosure {
        let round_up = (UBig::ONE << WORK_BITS) - UBig::ONE;
        Enclosure { lo: (&self.lo * &other.lo) >> WORK_BITS, hi: (&self.hi * &other.hi + round_up) >> WORK_BITS }
    }

    fn exp_neg(r: &RBig) -> Enclosure {
        let (lo, hi) = exp_neg_enclosure(r, WORK_BITS);
        Enclosure { lo, hi }
    }
}

impl CdtTable {
    /// Builds the table for N_Z(0, sigma2) (sigma2 > 0, the exact square of
    /// sigma), with at most `max_entries` entries; `None` if it would need
    /// more or its certified distance is not below 2^-MIN_TV_BITS.
    pub(crate) fn new(sigma2: &RBig, max_entries: usize) -> Option<CdtTable> {
        let two_var = RBig::from(2u8) * sigma2;
        let a = Enclosure::exp_neg(&(RBig::ONE / &two_var));
        let b = Enclosure::exp_neg(&(RBig::ONE / sigma2));
        let one = UBig::ONE << WORK_BITS;
        // Partial sums C(m) = rho(0) + 2 sum_{j=1..m} rho(j), as enclosures.
        let mut cum = vec![Enclosure { lo: one.clone(), hi: one.clone() }];
        let mut rho = Enclosure { lo: one.clone(), hi: one.clone() };
        let mut ratio = a; // a b^m = rho(m+1) / rho(m)
        // Walk until rho is below 2^-(TAIL_BITS + 40) relative to rho(0) and
        // decreasing: what is left is bounded geometrically below.
        let stop = UBig::ONE << (WORK_BITS - TAIL_BITS - 40);
        loop {
            rho = rho.mul(&ratio);
            ratio = ratio.mul(&b);
            let last = cum.last()?;
            cum.push(Enclosure { lo: &last.lo + (&rho.lo << 1), hi: &last.hi + (&rho.hi << 1) });
            if rho.hi <= stop {
                break;
            }
            if cum.len() > max_entries + 1 {
                return None;
            }
        }
        // Tail beyond the last m: sum_{j >= 1} rho(m) ratio^j <= rho(m) ratio / (1 - ratio).
        if ratio.hi >= one {
            return None;
        }
        let gap = &one - &ratio.hi;
        let tail_hi = (&rho.hi * &ratio.hi + &gap - UBig::ONE) / &gap + UBig::ONE;
        let last = cum.last()?;
        let (s_lo, s_hi) = (last.lo.clone(), &last.hi + (tail_hi << 1));

        // T[m] = floor(2^128 C_lo(m) / S_hi) <= 2^128 F(m) <= ceil(2^128 C_hi(m) / S_lo).
        let tail_units = UBig::ONE << (128 - TAIL_BITS);
        let full = UBig::ONE << 128;
        let (mut hi, mut lo) = (Vec::new(), Vec::new());
        let mut max_err = UBig::ZERO;
        let mut last_t = UBig::ZERO;
        for c in &cum {
            let t = (&c.lo << 128) / &s_hi;
            let upper = ((&c.hi << 128) + &s_lo - UBig::ONE) / &s_lo;
            let err = &upper - &t;
            if err > max_err {
                max_err = err;
            }
            hi.push(u64::try_from(&t >> 64).ok()?);
            lo.push(u64::try_from(&t & UBig::from(u64::MAX)).ok()?);
            last_t = t;
            if &full - &last_t <= tail_units {
                break;
            }
        }
        if &full - &last_t > tail_units {
            return None; // The walk stopped before the tail was small enough.
        }
        let k = hi.len();
        let bound = UBig::from(k + 1) * &max_err + (&full - &last_t);
        let tv_log2 = log2_ceil(&bound) - 128.0;
        if tv_log2 > -MIN_TV_BITS {
            return None;
        }
        let guide_bits = (usize::BITS - k.leading_zeros()).clamp(8, 16);
        let shift = 64 - guide_bits;
        let guide = (0..=1u64 << guide_bits)
            .map(|j| {
                let start = u128::from(j) << shift;
                hi.partition_point(|t| u128::from(*t) < start) as u32
            })
            .collect();
        Some(CdtTable { hi, lo, guide, guide_bits, tv_log2 })
    }

    /// Certified log2 of the total-variation distance between one draw and
    /// N_Z(0, sigma^2).
    pub(crate) fn tv_log2(&self) -> f64 {
        self.tv_log2
    }

    /// Entries K.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hi.len()
    }

    /// The magnitude |X| = #{m : T[m] <= U}.
    pub(crate) fn magnitude<R: CryptoRngCore + ?Sized>(&self, rng: &mut R) -> u64 {
        let u_hi = rng.next_u64();
        let j = (u_hi >> (64 - self.guide_bits)) as usize;
        let (start, end) = (self.guide[j] as usize, self.guide[j + 1] as usize);
        if start == end {
            // No entry's top word falls in this cell, so none equals u_hi
            // (no tie) and `start` entries lie below it: the answer, without
            // touching `hi` (most draws near the mode end here).
            return start as u64;
        }
        let mut m = start + self.hi[start..end].partition_point(|t| *t < u_hi);
        if m < self.hi.len() && self.hi[m] == u_hi {
            // Ties on the top word: compare the full 128 bits.
            let u_lo = rng.next_u64();
            while m < self.hi.len() && self.hi[m] == u_hi && self.lo[m] <= u_lo {
                m += 1;
            }
        }
        m as u64
    }

    /// T[m] as a 128-bit integer, for tests.
    #[cfg(test)]
    pub(crate) fn entry(&self, m: usize) -> u128 {
        (u128::from(self.hi[m]) << 64) | u128::from(self.lo[m])
    }
}

/// An upper bound on log2(x) for x >= 1 (0 maps to -inf).
fn log2_ceil(x: &UBig) -> f64 {
    if *x == UBig::ZERO {
        return f64::NEG_INFINITY;
    }
    let bits = x.bit_len();
    let shift = bits.saturating_sub(53);
    let top = match u64::try_from(x >> shift) {
        Ok(v) => v as f64 + 1.0,
        Err(_) => return f64::INFINITY,
    };
    top.log2() + shift as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    /// The exact magnitude CDF F(m), m < count, enclosed from term-by-term
    /// enclosures of exp (no recurrence), in units of 2^-WORK_BITS; the
    /// normalising sum runs to `terms` (far into the tail) plus 2^-100.
    fn direct_cdf(sigma2: &RBig, count: usize, terms: usize) -> Vec<(UBig, UBig)> {
        let two_var = RBig::from(2u8) * sigma2;
        let one = UBig::ONE << WORK_BITS;
        let (mut c_lo, mut c_hi) = (one.clone(), one.clone());
        let mut cum = vec![(c_lo.clone(), c_hi.clone())];
        for j in 1..=terms {
            let e = Enclosure::exp_neg(&(RBig::from(UBig::from(j * j)) / &two_var));
            c_lo += &e.lo << 1;
            c_hi += &e.hi << 1;
            cum.push((c_lo.clone(), c_hi.clone()));
        }
        let (s_lo, s_hi) = (c_lo, c_hi + (UBig::ONE << (WORK_BITS - 100)));
        cum.truncate(count);
        cum.into_iter()
            .map(|(lo, hi)| ((lo << WORK_BITS) / &s_hi, ((hi << WORK_BITS) + &s_lo - UBig::ONE) / &s_lo))
            .collect()
    }

    #[test]
    fn table_cdf_matches_the_exact_cdf() {
        for sigma in [0.3f64, 1.0, 3.7, 42.25] {
            let s = RBig::try_from(sigma).unwrap();
            let sigma2 = &s * &s;
            let table = CdtTable::new(&sigma2, 10_000).unwrap();
            assert!(table.tv_log2() < -MIN_TV_BITS, "sigma {sigma}: 2^{}", table.tv_log2());
            let k = table.len();
            // The table stops where the tail drops below 2^-96: about 11.3 sigma.
            assert!((k as f64) < 12.0 * sigma + 8.0 && (k as f64) > 10.5 * sigma, "sigma {sigma}: {k} entries");
            let exact = direct_cdf(&sigma2, k, k + (40.0 * sigma) as usize + 40);
            let slack = UBig::from(4u8) << (WORK_BITS - 128);
            for (m, (lo, hi)) in exact.iter().enumerate() {
                let t = UBig::from(table.entry(m)) << (WORK_BITS - 128);
                assert!(t <= *hi, "sigma {sigma}, m {m}: entry above the exact CDF");
                assert!(*lo <= &t + &slack, "sigma {sigma}, m {m}: entry more than 4 * 2^-128 below");
            }
            // The last entry leaves at most 2^-96 of tail.
            let last = table.entry(k - 1);
            assert!(u128::MAX - last < 1u128 << 32);
        }
    }

    /// Replays fixed words.
    struct Words(Vec<u64>);
    impl rand_core::RngCore for Words {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0.remove(0)
        }
        fn fill_bytes(&mut self, _: &mut [u8]) {
            unreachable!()
        }
        fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), rand_core::Error> {
            unreachable!()
        }
    }
    impl rand_core::CryptoRng for Words {}

    #[test]
    fn draws_invert_the_table_on_all_128_bits() {
        let s = RBig::try_from(2.5f64).unwrap();
        let table = CdtTable::new(&(&s * &s), 1000).unwrap();
        for m in 0..table.len() {
            let t = table.entry(m);
            let (hi, lo) = ((t >> 64) as u64, t as u64);
            // U = T[m] is counted (T[m] <= U); U just below is not; only a tie reads u_lo.
            assert_eq!(table.magnitude(&mut Words(vec![hi, lo])), m as u64 + 1);
            if lo > 0 {
                assert_eq!(table.magnitude(&mut Words(vec![hi, lo - 1])), m as u64);
            }
            if hi > 0 && (m == 0 || table.entry(m - 1) >> 64 < u128::from(hi - 1)) {
                let mut one_word = Words(vec![hi - 1]);
                assert_eq!(table.magnitude(&mut one_word), m as u64);
                assert!(one_word.0.is_empty());
            }
        }
        assert_eq!(table.magnitude(&mut Words(vec![0, 0])), 0);
        assert_eq!(table.magnitude(&mut Words(vec![u64::MAX, u64::MAX])), table.len() as u64);
    }

    #[test]
    fn refuses_tables_over_the_entry_cap() {
        let s = RBig::try_from(100.0f64).unwrap();
        assert!(CdtTable::new(&(&s * &s), 500).is_none());
        let t = CdtTable::new(&(&s * &s), 2000).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let n = 100_000;
        let var = (0..n).map(|_| (t.magnitude(&mut rng) as f64).powi(2)).sum::<f64>() / n as f64;
        // E|X|^2 = sigma^2.
        assert!((var / 1e4 - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(), "{var}");
    }
}
