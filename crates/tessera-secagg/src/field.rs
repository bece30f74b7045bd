//! Arithmetic in the scalar field of curve25519 (integers mod the group
//! order ℓ) for Shamir sharing, in the Montgomery domain through
//! fiat-crypto's generated, formally verified code (`curve25519_scalar_64`,
//! the same code curve25519-dalek's `fiat` backend uses for its field).
//!
//! Why not `curve25519_dalek::Scalar` for everything: its `*` unpacks both
//! operands from bytes, multiplies with two Montgomery reductions and packs
//! the result to bytes again. A SecAgg+ member evaluates two polynomials
//! of degree t − 1 at each of its k + 1 holders (about 4,300
//! multiplications at 10,000 members) and the aggregator computes Lagrange
//! coefficients for every survivor's neighbourhood (O(t²) each); with
//! dalek's `Scalar` that was about a fifth of a 10,000-member round's CPU
//! time (docs/benchmarks.md, "Protocol scale"). Here an element stays in
//! the Montgomery domain and a product costs one reduction. Values,
//! encodings and shares are exactly those of `Scalar` (`tests` check it
//! against dalek); the one inversion per coefficient set is dalek's
//! `Scalar::batch_invert`.

use curve25519_dalek::Scalar;
use fiat_crypto::curve25519_scalar_64::{
    fiat_25519_scalar_add, fiat_25519_scalar_from_bytes, fiat_25519_scalar_from_montgomery,
    fiat_25519_scalar_montgomery_domain_field_element as Montgomery, fiat_25519_scalar_mul,
    fiat_25519_scalar_non_montgomery_domain_field_element as Plain, fiat_25519_scalar_sub, fiat_25519_scalar_to_bytes,
    fiat_25519_scalar_to_montgomery,
};
use zeroize::Zeroize;

/// An integer mod ℓ, in the Montgomery domain (`a·2^256 mod ℓ`, fully
/// reduced, so equal elements have equal limbs).
#[derive(Clone, Copy)]
pub(crate) struct Fe(Montgomery);

impl Fe {
    pub(crate) const ZERO: Fe = Fe(Montgomery([0; 4]));

    /// `a` for a canonical `a < ℓ` (little endian); `None` otherwise.
    pub(crate) fn from_canonical_bytes(bytes: [u8; 32]) -> Option<Fe> {
        let scalar: Option<Scalar> = Scalar::from_canonical_bytes(bytes).into();
        scalar.map(|s| Fe::from_scalar(&s))
    }

    /// The element `s` is.
    pub(crate) fn from_scalar(s: &Scalar) -> Fe {
        let mut limbs = [0u64; 4];
        // `Scalar`'s bytes are canonical (below ℓ), fiat's precondition.
        fiat_25519_scalar_from_bytes(&mut limbs, s.as_bytes());
        let mut out = Montgomery([0; 4]);
        fiat_25519_scalar_to_montgomery(&mut out, &Plain(limbs));
        limbs.zeroize();
        Fe(out)
    }

    /// The small integer `n`.
    pub(crate) fn from_u64(n: u64) -> Fe {
        let mut out = Montgomery([0; 4]);
        fiat_25519_scalar_to_montgomery(&mut out, &Plain([n, 0, 0, 0]));
        Fe(out)
    }

    /// The canonical encoding (little endian, below ℓ), as `Scalar::to_bytes`.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut plain = Plain([0; 4]);
        fiat_25519_scalar_from_montgomery(&mut plain, &self.0);
        let mut out = [0u8; 32];
        fiat_25519_scalar_to_bytes(&mut out, &plain.0);
        plain.0.zeroize();
        out
    }

    /// The same element as a dalek `Scalar`.
    pub(crate) fn to_scalar(self) -> Scalar {
        let mut bytes = self.to_bytes();
        let s = Scalar::from_bytes_mod_order(bytes); // canonical: no reduction happens
        bytes.zeroize();
        s
    }

    #[inline]
    pub(crate) fn add(self, other: Fe) -> Fe {
        let mut out = Montgomery([0; 4]);
        fiat_25519_scalar_add(&mut out, &self.0, &other.0);
        Fe(out)
    }

    #[inline]
    pub(crate) fn sub(self, other: Fe) -> Fe {
        let mut out = Montgomery([0; 4]);
        fiat_25519_scalar_sub(&mut out, &self.0, &other.0);
        Fe(out)
    }

    #[inline]
    pub(crate) fn mul(self, other: Fe) -> Fe {
        let mut out = Montgomery([0; 4]);
        fiat_25519_scalar_mul(&mut out, &self.0, &other.0);
        Fe(out)
    }

    /// `1 / xᵢ` for every element (each nonzero), with one inversion.
    pub(crate) fn batch_invert(elements: &mut [Fe]) {
        let mut scalars: Vec<Scalar> = elements.iter().map(|e| e.to_scalar()).collect();
        Scalar::batch_invert(&mut scalars);
        for (e, s) in elements.iter_mut().zip(&scalars) {
            *e = Fe::from_scalar(s);
        }
    }
}

impl PartialEq for Fe {
    /// Limbs are fully reduced, so this is equality mod ℓ. Not constant
    /// time; used only to compare rebuilt values against shares.
    fn eq(&self, other: &Fe) -> bool {
        self.0.0 == other.0.0
    }
}

impl Zeroize for Fe {
    fn zeroize(&mut self) {
        self.0.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Every operation gives what dalek's `Scalar` gives, encodings included.
    #[test]
    fn matches_dalek_scalar_arithmetic() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut values: Vec<Scalar> = (0..40).map(|_| Scalar::random(&mut rng)).collect();
        values.extend([Scalar::ZERO, Scalar::ONE, -Scalar::ONE, Scalar::from(u64::MAX)]);
        for a in &values {
            let fa = Fe::from_scalar(a);
            assert_eq!(fa.to_bytes(), a.to_bytes());
            assert_eq!(fa.to_scalar(), *a);
            assert!(Fe::from_canonical_bytes(a.to_bytes()) == Some(fa));
            for b in values.iter().step_by(3) {
                let fb = Fe::from_scalar(b);
                assert_eq!(fa.mul(fb).to_bytes(), (a * b).to_bytes());
                assert_eq!(fa.add(fb).to_bytes(), (a + b).to_bytes());
                assert_eq!(fa.sub(fb).to_bytes(), (a - b).to_bytes());
            }
        }
        assert_eq!(Fe::from_u64(123_456).to_bytes(), Scalar::from(123_456u64).to_bytes());
        let mut inv: Vec<Fe> = values[..10].iter().map(Fe::from_scalar).collect();
        Fe::batch_invert(&mut inv);
        for (x, a) in inv.iter().zip(&values[..10]) {
            assert_eq!(x.to_bytes(), a.invert().to_bytes());
        }
        // ℓ itself and anything above is not canonical.
        assert!(Fe::from_canonical_bytes((-Scalar::ONE).to_bytes()).is_some());
        let mut l = (-Scalar::ONE).to_bytes();
        l[0] += 1;
        assert!(Fe::from_canonical_bytes(l).is_none());
        assert!(Fe::from_canonical_bytes([0xff; 32]).is_none());
    }
}
