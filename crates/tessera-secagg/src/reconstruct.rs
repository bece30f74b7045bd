//! Robust reconstruction: rebuild a secret from revealed shares when some of
//! them may be bad, and name the holders whose share was bad.
//!
//! Every secret the aggregator rebuilds can be checked: a self-mask seed
//! against the commitment its owner signed, a mask secret key against the
//! public key its owner signed. So a bad share is never silent. When the
//! first `t` shares fail the check, other `t`-subsets are tried, leaving out
//! first the holders already found bad in this round (a saboteur usually
//! corrupts every share it reveals), then every set of one, two, ...
//! holders, up to [`MAX_ATTEMPTS`] recombinations per secret. A subset that
//! passes the check fixes the polynomial, and every other share is compared
//! with what the polynomial predicts for its holder: those that differ are
//! named. So a round completes despite up to (held shares − t) bad shares of
//! one secret as long as the search reaches a clean subset within the cap,
//! which it always does for up to two bad shares at the default
//! neighbourhoods (n = 1000: 41 holders, t = 28; C(41, 2) = 820 subsets).

use std::collections::{BTreeSet, HashMap, HashSet};

use tessera_core::PartyId;
use zeroize::Zeroizing;

use crate::field::Fe;
use crate::shamir::{self, SecretShare};

/// Recombinations tried per secret before giving up (each is O(t²) field
/// operations: about 0.1 ms at t = 28).
pub(crate) const MAX_ATTEMPTS: usize = 4096;

/// Lagrange coefficients at zero per holder set of the fast path: in the
/// complete graph every secret has the same first `t` holders, so they are
/// computed once per round, not once per secret.
pub(crate) type LagrangeCache = HashMap<Vec<PartyId>, Vec<Fe>>;

/// A rebuilt secret and the holders whose share contradicted it.
pub(crate) struct Rebuilt {
    pub(crate) secret: Zeroizing<[u8; 32]>,
    pub(crate) bad_holders: Vec<PartyId>,
}

/// Rebuilds the secret behind `shares` (one per holder, `t` needed) that
/// passes `check`. `suspects` are tried last. `None` when no subset within
/// [`MAX_ATTEMPTS`] passes (or fewer than `t` shares are given).
pub(crate) fn rebuild(
    shares: &[(PartyId, SecretShare)],
    t: usize,
    suspects: &BTreeSet<PartyId>,
    lagrange: &mut LagrangeCache,
    check: impl Fn(&[u8; 32]) -> bool,
) -> Option<Rebuilt> {
    if t == 0 || shares.len() < t {
        return None;
    }
    // Clean holders first, suspects at the end: the first t are then most
    // likely clean, and leaving out a suffix costs nothing extra.
    let mut order: Vec<usize> = (0..shares.len()).filter(|i| !suspects.contains(&shares[*i].0)).collect();
    order.extend((0..shares.len()).filter(|i| suspects.contains(&shares[*i].0)));
    let combine = |picked: &[usize], coefficients: &[Fe]| -> Option<Zeroizing<[u8; 32]>> {
        let refs: Vec<&SecretShare> = picked.iter().map(|i| &shares[*i].1).collect();
        let secret = shamir::combine(coefficients, &refs)?;
        check(&secret).then_some(secret)
    };
    let ids = |picked: &[usize]| -> Vec<PartyId> { picked.iter().map(|i| shares[*i].0).collect() };
    let try_subset = |picked: &[usize]| combine(picked, &shamir::lagrange_at_zero(&ids(picked)));
    let first: Vec<usize> = order[..t].to_vec();
    let coefficients = lagrange.entry(ids(&first)).or_insert_with_key(|ids| shamir::lagrange_at_zero(ids));
    if let Some(secret) = combine(&first, coefficients) {
        // The fast path names nobody: shares it did not use are not checked.
        return Some(Rebuilt { secret, bad_holders: Vec::new() });
    }
    let mut tried: HashSet<Vec<usize>> = HashSet::from([first]);
    let mut attempts = 1;
    for leave_out in 1..=order.len() - t {
        for excluded in Combinations::new(order.len(), leave_out) {
            let picked: Vec<usize> =
                (0..order.len()).filter(|k| !excluded.contains(k)).take(t).map(|k| order[k]).collect();
            if !tried.insert(picked.clone()) {
                continue;
            }
            attempts += 1;
            if let Some(secret) = try_subset(&picked) {
                return Some(Rebuilt { secret, bad_holders: contradicting(shares, &picked) });
            }
            if attempts >= MAX_ATTEMPTS {
                return None;
            }
        }
    }
    None
}

/// Holders whose share differs from what the (checked) shares at `picked`
/// predict for them.
fn contradicting(shares: &[(PartyId, SecretShare)], picked: &[usize]) -> Vec<PartyId> {
    let ids: Vec<PartyId> = picked.iter().map(|i| shares[*i].0).collect();
    let refs: Vec<&SecretShare> = picked.iter().map(|i| &shares[*i].1).collect();
    let mut bad: Vec<PartyId> = (0..shares.len())
        .filter(|i| !picked.contains(i))
        .filter(|i| !shamir::share_matches(&shamir::lagrange_at_party(&ids, shares[*i].0), &refs, &shares[*i].1))
        .map(|i| shares[i].0)
        .collect();
    bad.sort_unstable();
    bad
}

/// The `k`-element subsets of `0..n` in lexicographic order.
struct Combinations {
    n: usize,
    current: Option<Vec<usize>>,
}

impl Combinations {
    fn new(n: usize, k: usize) -> Self {
        Self { n, current: (k <= n).then(|| (0..k).collect()) }
    }
}

impl Iterator for Combinations {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let out = self.current.clone()?;
        let k = out.len();
        let mut next = out.clone();
        // The rightmost index that can still move right.
        match (0..k).rev().find(|&i| next[i] < self.n - k + i) {
            Some(i) => {
                next[i] += 1;
                for j in i + 1..k {
                    next[j] = next[j - 1] + 1;
                }
                self.current = Some(next);
            }
            None => self.current = None,
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn shares_of(secret: &[u8; 32], t: u32, holders: u32, seed: u64) -> Vec<(PartyId, SecretShare)> {
        let ids: Vec<PartyId> = (0..holders).collect();
        shamir::split(secret, t, &ids, &mut ChaCha20Rng::seed_from_u64(seed))
    }

    fn corrupt(shares: &mut [(PartyId, SecretShare)], holder: PartyId, donor: &SecretShare) {
        let at = shares.iter().position(|(p, _)| *p == holder).unwrap();
        shares[at].1 = donor.clone();
    }

    #[test]
    fn combinations_are_complete_and_ordered() {
        let all: Vec<Vec<usize>> = Combinations::new(5, 2).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], vec![0, 1]);
        assert_eq!(all[9], vec![3, 4]);
        assert_eq!(Combinations::new(3, 0).count(), 1);
        assert_eq!(Combinations::new(2, 3).count(), 0);
    }

    #[test]
    fn bad_shares_are_skipped_and_named() {
        let secret = [0x5Au8; 32];
        let mut shares = shares_of(&secret, 5, 9, 1);
        let donor = shares_of(&[1u8; 32], 5, 9, 2);
        // Holders 1 and 3 (inside the first t) and 8 (outside) reveal junk.
        for h in [1, 3, 8] {
            corrupt(&mut shares, h, &donor[h as usize].1);
        }
        let got = rebuild(&shares, 5, &BTreeSet::new(), &mut LagrangeCache::new(), |s| *s == secret).unwrap();
        assert_eq!(*got.secret, secret);
        assert_eq!(got.bad_holders, vec![1, 3, 8]);
        // Up to (held - t) = 4 bad shares are survivable.
        corrupt(&mut shares, 0, &donor[0].1);
        let got = rebuild(&shares, 5, &BTreeSet::new(), &mut LagrangeCache::new(), |s| *s == secret).unwrap();
        assert_eq!(got.bad_holders, vec![0, 1, 3, 8]);
        // One more and no clean subset is left.
        corrupt(&mut shares, 2, &donor[2].1);
        assert!(rebuild(&shares, 5, &BTreeSet::new(), &mut LagrangeCache::new(), |s| *s == secret).is_none());
    }

    #[test]
    fn known_suspects_go_last_and_clean_rounds_name_nobody() {
        let secret = [7u8; 32];
        let mut shares = shares_of(&secret, 3, 6, 3);
        let got = rebuild(&shares, 3, &BTreeSet::new(), &mut LagrangeCache::new(), |s| *s == secret).unwrap();
        assert!(got.bad_holders.is_empty());
        let donor = shares_of(&[9u8; 32], 3, 6, 4);
        corrupt(&mut shares, 0, &donor[0].1);
        // With holder 0 suspected, the first subset already passes.
        let got = rebuild(&shares, 3, &BTreeSet::from([0]), &mut LagrangeCache::new(), |s| *s == secret).unwrap();
        assert_eq!(*got.secret, secret);
        assert!(rebuild(&shares[..2], 3, &BTreeSet::new(), &mut LagrangeCache::new(), |_| true).is_none());
    }
}
