//! Shamir t-of-m secret sharing over the scalar field of curve25519 (the
//! integers mod its group order ℓ). Field arithmetic is fiat-crypto's
//! verified code through [`Fe`] (no hand-rolled field); random
//! coefficients and the one inversion per Lagrange set are
//! `curve25519_dalek::Scalar`'s. A 32-byte secret is split into two
//! 16-byte halves, each below the group order, and each half is shared on
//! its own polynomial. The share of party `p` is the evaluation at
//! `x = p + 1` (never 0, where the secret is).

use curve25519_dalek::Scalar;
use rand_core::CryptoRngCore;
use tessera_core::PartyId;
use zeroize::{Zeroize, Zeroizing};

use crate::field::Fe;

/// Wire size of one share: two canonical scalars, low half then high half.
pub(crate) const SHARE_BYTES: usize = 64;

/// One party's share of a 32-byte secret.
#[derive(Clone)]
pub(crate) struct SecretShare {
    lo: Fe,
    hi: Fe,
}

impl Drop for SecretShare {
    fn drop(&mut self) {
        self.lo.zeroize();
        self.hi.zeroize();
    }
}

impl SecretShare {
    pub(crate) fn to_bytes(&self) -> Zeroizing<[u8; SHARE_BYTES]> {
        let mut out = Zeroizing::new([0u8; SHARE_BYTES]);
        out[..32].copy_from_slice(Zeroizing::new(self.lo.to_bytes()).as_ref());
        out[32..].copy_from_slice(Zeroizing::new(self.hi.to_bytes()).as_ref());
        out
    }

    /// `None` unless both halves are canonical scalars.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; SHARE_BYTES] = bytes.try_into().ok()?;
        let half = |b: &[u8]| -> Option<Fe> {
            let mut a = Zeroizing::new([0u8; 32]);
            a.copy_from_slice(b);
            Fe::from_canonical_bytes(*a)
        };
        Some(Self { lo: half(&bytes[..32])?, hi: half(&bytes[32..])? })
    }
}

fn x_of(p: PartyId) -> Fe {
    Fe::from_u64(u64::from(p) + 1)
}

fn half_to_field(half: &[u8]) -> Fe {
    let mut b = Zeroizing::new([0u8; 32]);
    b[..16].copy_from_slice(half);
    Fe::from_canonical_bytes(*b).expect("below 2^128, so below the group order")
}

/// Shares `secret` among `holders` (distinct ids) so that any `threshold` of
/// them recover it and fewer learn nothing.
pub(crate) fn split<R: CryptoRngCore + ?Sized>(
    secret: &[u8; 32],
    threshold: u32,
    holders: &[PartyId],
    rng: &mut R,
) -> Vec<(PartyId, SecretShare)> {
    let degree = threshold.saturating_sub(1) as usize;
    let mut poly = |half: &[u8]| -> Vec<Fe> {
        let mut c = Vec::with_capacity(degree + 1);
        c.push(half_to_field(half));
        c.extend((0..degree).map(|_| {
            let mut r = Scalar::random(rng);
            let coefficient = Fe::from_scalar(&r);
            r.zeroize();
            coefficient
        }));
        c
    };
    let mut lo = poly(&secret[..16]);
    let mut hi = poly(&secret[16..]);
    let mut shares = Vec::with_capacity(holders.len());
    for group in holders.chunks(LANES) {
        let mut x = [Fe::ZERO; LANES];
        x.iter_mut().zip(group).for_each(|(x, p)| *x = x_of(*p));
        let (mut at_lo, mut at_hi) = (horner(&lo, &x), horner(&hi, &x));
        shares.extend(group.iter().enumerate().map(|(l, &p)| (p, SecretShare { lo: at_lo[l], hi: at_hi[l] })));
        at_lo.zeroize();
        at_hi.zeroize();
    }
    lo.zeroize();
    hi.zeroize();
    shares
}

/// Points evaluated side by side in [`horner`] and rows of Lagrange
/// denominators computed side by side in [`lagrange_at`].
const LANES: usize = 4;

/// The polynomial with coefficients `c` (lowest first) at each of the
/// `LANES` points `x`, by Horner's rule (highest coefficient first).
///
/// Why the points go side by side: each Horner step multiplies the result
/// of the step before, so evaluating one point at a time leaves the
/// multiplier waiting on its own last product; with `LANES` independent
/// points per step the products overlap. A SecAgg+ member evaluates two
/// polynomials of degree t − 1 at each of its k + 1 holders, the largest
/// share of a round's CPU time after key agreement (docs/benchmarks.md,
/// "Protocol scale"). The values are exactly those of one point at a time:
/// field arithmetic is exact, and the order of operations per point is
/// unchanged.
#[inline]
fn horner(c: &[Fe], x: &[Fe; LANES]) -> [Fe; LANES] {
    let mut acc = [Fe::ZERO; LANES];
    for a in c.iter().rev() {
        for (acc, x) in acc.iter_mut().zip(x) {
            *acc = acc.mul(*x).add(*a);
        }
    }
    acc
}

/// Lagrange coefficients that evaluate at 0 the polynomial through the
/// points of `parties` (distinct). Computed once per set and reused for every
/// secret those parties hold shares of.
pub(crate) fn lagrange_at_zero(parties: &[PartyId]) -> Vec<Fe> {
    lagrange_at(parties, Fe::ZERO)
}

/// Lagrange coefficients that evaluate at party `target`'s point the
/// polynomial through the points of `parties`: what `target`'s share must be
/// if `parties`' shares are right. Used to name a holder whose share is bad.
pub(crate) fn lagrange_at_party(parties: &[PartyId], target: PartyId) -> Vec<Fe> {
    lagrange_at(parties, x_of(target))
}

/// `λᵢ = Πⱼ≠ᵢ (xⱼ − at) / Πⱼ≠ᵢ (xⱼ − xᵢ)`. The numerators come from prefix
/// and suffix products (O(t)); the denominators are O(t²) products and
/// one batch inversion.
fn lagrange_at(parties: &[PartyId], at: Fe) -> Vec<Fe> {
    let xs: Vec<Fe> = parties.iter().map(|p| x_of(*p)).collect();
    let one = Fe::from_u64(1);
    let factors: Vec<Fe> = xs.iter().map(|x| x.sub(at)).collect();
    // suffix[i] = Πⱼ>ᵢ factors[j]
    let mut suffix = vec![one; xs.len() + 1];
    for i in (0..xs.len()).rev() {
        suffix[i] = suffix[i + 1].mul(factors[i]);
    }
    let mut prefix = one;
    let mut numerators = Vec::with_capacity(xs.len());
    for i in 0..xs.len() {
        numerators.push(prefix.mul(suffix[i + 1]));
        prefix = prefix.mul(factors[i]);
    }
    // The O(t²) part, `LANES` rows at a time so that their products overlap
    // (see `horner`); the rows past the end of the last group are dropped.
    let mut denominators = Vec::with_capacity(xs.len() + LANES);
    for first in (0..xs.len()).step_by(LANES) {
        let mut xi = [Fe::ZERO; LANES];
        xi.iter_mut().zip(&xs[first..]).for_each(|(a, b)| *a = *b);
        let mut den = [one; LANES];
        for (j, xj) in xs.iter().enumerate() {
            for (l, (d, xi)) in den.iter_mut().zip(&xi).enumerate() {
                if j != first + l {
                    *d = d.mul(xj.sub(*xi));
                }
            }
        }
        denominators.extend(den);
    }
    denominators.truncate(xs.len());
    Fe::batch_invert(&mut denominators);
    numerators.iter().zip(&denominators).map(|(n, d)| n.mul(*d)).collect()
}

/// Whether `share` is what the polynomial through `shares` (with
/// coefficients from [`lagrange_at_party`] for the share's holder) gives.
pub(crate) fn share_matches(coefficients: &[Fe], shares: &[&SecretShare], share: &SecretShare) -> bool {
    let mut lo = Fe::ZERO;
    let mut hi = Fe::ZERO;
    for (l, s) in coefficients.iter().zip(shares) {
        lo = lo.add(l.mul(s.lo));
        hi = hi.add(l.mul(s.hi));
    }
    lo == share.lo && hi == share.hi
}

/// Recombines shares with coefficients from [`lagrange_at_zero`] for the same
/// parties in the same order. `None` when the result is not a 32-byte secret
/// split by [`split`] (a corrupted share).
pub(crate) fn combine(coefficients: &[Fe], shares: &[&SecretShare]) -> Option<Zeroizing<[u8; 32]>> {
    let mut lo = Fe::ZERO;
    let mut hi = Fe::ZERO;
    for (l, s) in coefficients.iter().zip(shares) {
        lo = lo.add(l.mul(s.lo));
        hi = hi.add(l.mul(s.hi));
    }
    let (lo_bytes, hi_bytes) = (Zeroizing::new(lo.to_bytes()), Zeroizing::new(hi.to_bytes()));
    lo.zeroize();
    hi.zeroize();
    if lo_bytes[16..].iter().chain(&hi_bytes[16..]).any(|b| *b != 0) {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out[..16].copy_from_slice(&lo_bytes[..16]);
    out[16..].copy_from_slice(&hi_bytes[..16]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn any_t_shares_recover_the_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret = [0xABu8; 32];
        let holders: Vec<PartyId> = (0..300).collect(); // more than 255 shares
        let shares = split(&secret, 201, &holders, &mut rng);
        for _ in 0..3 {
            let mut pick: Vec<&(PartyId, SecretShare)> = shares.iter().collect();
            pick.shuffle(&mut rng);
            pick.truncate(201);
            let ids: Vec<PartyId> = pick.iter().map(|(p, _)| *p).collect();
            let coeffs = lagrange_at_zero(&ids);
            let got = combine(&coeffs, &pick.iter().map(|(_, s)| s).collect::<Vec<_>>()).unwrap();
            assert_eq!(*got, secret);
        }
    }

    /// The shares are exactly those of the plain `Scalar` evaluation the
    /// previous releases used (same random coefficients, same bytes), so
    /// members of either build can hold each other's shares.
    #[test]
    fn shares_are_those_of_scalar_arithmetic() {
        let secret: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(73) ^ 0x5a);
        let holders: Vec<PartyId> = vec![0, 3, 17, 255, 9_999, u32::MAX - 1];
        let shares = split(&secret, 4, &holders, &mut ChaCha20Rng::seed_from_u64(11));
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let poly = |half: &[u8], rng: &mut ChaCha20Rng| -> Vec<Scalar> {
            let mut b = [0u8; 32];
            b[..16].copy_from_slice(half);
            let mut c = vec![Scalar::from_bytes_mod_order(b)];
            c.extend((0..3).map(|_| Scalar::random(rng)));
            c
        };
        let lo = poly(&secret[..16], &mut rng);
        let hi = poly(&secret[16..], &mut rng);
        let eval = |c: &[Scalar], x: Scalar| c.iter().rev().fold(Scalar::ZERO, |acc, a| acc * x + a);
        for (p, share) in &shares {
            let x = Scalar::from(u64::from(*p) + 1);
            let bytes = share.to_bytes();
            assert_eq!(bytes[..32], eval(&lo, x).to_bytes(), "party {p}");
            assert_eq!(bytes[32..], eval(&hi, x).to_bytes(), "party {p}");
        }
        let ids: Vec<PartyId> = holders[..4].to_vec();
        let refs: Vec<&SecretShare> = shares[..4].iter().map(|(_, s)| s).collect();
        assert_eq!(*combine(&lagrange_at_zero(&ids), &refs).unwrap(), secret);
    }

    #[test]
    fn a_share_is_predicted_by_any_t_others() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let shares = split(&[5u8; 32], 3, &[0, 2, 4, 6, 8], &mut rng);
        let base: Vec<&SecretShare> = shares[..3].iter().map(|(_, s)| s).collect();
        for (p, s) in &shares[3..] {
            let c = lagrange_at_party(&[0, 2, 4], *p);
            assert!(share_matches(&c, &base, s));
            assert!(!share_matches(&c, &base, &shares[0].1));
        }
    }

    #[test]
    fn fewer_than_t_shares_give_garbage_and_bytes_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let secret = [7u8; 32];
        let shares = split(&secret, 3, &[4, 9, 11, 20], &mut rng);
        let two: Vec<&SecretShare> = shares[..2].iter().map(|(_, s)| s).collect();
        let coeffs = lagrange_at_zero(&[4, 9]);
        assert_ne!(combine(&coeffs, &two).map(|s| *s), Some(secret));
        let bytes = shares[0].1.to_bytes();
        let back = SecretShare::from_bytes(bytes.as_ref()).unwrap();
        assert_eq!(back.to_bytes().as_ref(), bytes.as_ref());
        assert!(SecretShare::from_bytes(&bytes[..63]).is_none());
        assert!(SecretShare::from_bytes(&[0xff; 64]).is_none());
    }
}
