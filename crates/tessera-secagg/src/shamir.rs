//! Shamir t-of-m secret sharing over the scalar field of curve25519, with
//! `curve25519_dalek::Scalar` doing all field arithmetic (no hand-rolled
//! field). A 32-byte secret is split into two 16-byte halves, each below the
//! group order, and each half is shared on its own polynomial. The share of
//! party `p` is the evaluation at `x = p + 1` (never 0, where the secret is).

use curve25519_dalek::Scalar;
use rand_core::CryptoRngCore;
use tessera_core::PartyId;
use zeroize::{Zeroize, Zeroizing};

/// Wire size of one share: two canonical scalars, low half then high half.
pub(crate) const SHARE_BYTES: usize = 64;

/// One party's share of a 32-byte secret.
#[derive(Clone)]
pub(crate) struct SecretShare {
    lo: Scalar,
    hi: Scalar,
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
        out[..32].copy_from_slice(self.lo.as_bytes());
        out[32..].copy_from_slice(self.hi.as_bytes());
        out
    }

    /// `None` unless both halves are canonical scalars.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; SHARE_BYTES] = bytes.try_into().ok()?;
        let half = |b: &[u8]| -> Option<Scalar> {
            let mut a = [0u8; 32];
            a.copy_from_slice(b);
            Option::from(Scalar::from_canonical_bytes(a))
        };
        Some(Self { lo: half(&bytes[..32])?, hi: half(&bytes[32..])? })
    }
}

fn x_of(p: PartyId) -> Scalar {
    Scalar::from(u64::from(p) + 1)
}

fn half_to_scalar(half: &[u8]) -> Scalar {
    let mut b = Zeroizing::new([0u8; 32]);
    b[..16].copy_from_slice(half);
    Scalar::from_bytes_mod_order(*b) // below 2^128, so no reduction happens
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
    let mut poly = |half: &[u8]| -> Vec<Scalar> {
        let mut c = Vec::with_capacity(degree + 1);
        c.push(half_to_scalar(half));
        c.extend((0..degree).map(|_| Scalar::random(rng)));
        c
    };
    let mut lo = poly(&secret[..16]);
    let mut hi = poly(&secret[16..]);
    let eval = |c: &[Scalar], x: Scalar| c.iter().rev().fold(Scalar::ZERO, |acc, a| acc * x + a);
    let shares = holders
        .iter()
        .map(|&p| {
            let x = x_of(p);
            (p, SecretShare { lo: eval(&lo, x), hi: eval(&hi, x) })
        })
        .collect();
    lo.zeroize();
    hi.zeroize();
    shares
}

/// Lagrange coefficients that evaluate at 0 the polynomial through the
/// points of `parties` (distinct). Computed once per set and reused for every
/// secret those parties hold shares of.
pub(crate) fn lagrange_at_zero(parties: &[PartyId]) -> Vec<Scalar> {
    lagrange_at(parties, Scalar::ZERO)
}

/// Lagrange coefficients that evaluate at party `target`'s point the
/// polynomial through the points of `parties`: what `target`'s share must be
/// if `parties`' shares are right. Used to name a holder whose share is bad.
pub(crate) fn lagrange_at_party(parties: &[PartyId], target: PartyId) -> Vec<Scalar> {
    lagrange_at(parties, x_of(target))
}

fn lagrange_at(parties: &[PartyId], at: Scalar) -> Vec<Scalar> {
    let xs: Vec<Scalar> = parties.iter().map(|p| x_of(*p)).collect();
    let mut numerators = Vec::with_capacity(xs.len());
    let mut denominators = Vec::with_capacity(xs.len());
    for (i, xi) in xs.iter().enumerate() {
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, xj) in xs.iter().enumerate() {
            if i != j {
                num *= xj - at;
                den *= xj - xi;
            }
        }
        numerators.push(num);
        denominators.push(den);
    }
    Scalar::batch_invert(&mut denominators);
    numerators.iter().zip(&denominators).map(|(n, d)| n * d).collect()
}

/// Whether `share` is what the polynomial through `shares` (with
/// coefficients from [`lagrange_at_party`] for the share's holder) gives.
pub(crate) fn share_matches(coefficients: &[Scalar], shares: &[&SecretShare], share: &SecretShare) -> bool {
    let mut lo = Scalar::ZERO;
    let mut hi = Scalar::ZERO;
    for (l, s) in coefficients.iter().zip(shares) {
        lo += l * s.lo;
        hi += l * s.hi;
    }
    lo == share.lo && hi == share.hi
}

/// Recombines shares with coefficients from [`lagrange_at_zero`] for the same
/// parties in the same order. `None` when the result is not a 32-byte secret
/// split by [`split`] (a corrupted share).
pub(crate) fn combine(coefficients: &[Scalar], shares: &[&SecretShare]) -> Option<Zeroizing<[u8; 32]>> {
    let mut lo = Scalar::ZERO;
    let mut hi = Scalar::ZERO;
    for (l, s) in coefficients.iter().zip(shares) {
        lo += l * s.lo;
        hi += l * s.hi;
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
