//! What a member signs (its advertisement, and later the survivor set), the
//! commitments that go with the advertisement, and the neighbour-graph seed
//! the members draw together. Signatures are made and checked outside this
//! crate (with the member's consortium certificate key, which this crate
//! never sees): here are only the bytes, built one way for both sides so
//! that signer and verifier cannot disagree about them.

use sha2::{Digest, Sha256};
use tessera_core::{PartyId, PublicKeys};

/// Domain tag of the signed advertisement message.
const ADVERT_TAG: &[u8] = b"tessera-secagg/v2/advertisement";
/// Domain tag of the self-mask seed commitment.
const COMMITMENT_TAG: &[u8] = b"tessera-secagg/v2/self-mask-commitment";
/// Domain tag of the graph-seed contribution commitment.
const GRAPH_COMMITMENT_TAG: &[u8] = b"tessera-secagg/v3/graph-commitment";
/// Domain tag of the graph seed.
const GRAPH_SEED_TAG: &[u8] = b"tessera-secagg/v3/graph-seed";
/// Domain tag of the signed survivor set.
const SURVIVORS_TAG: &[u8] = b"tessera-secagg/v3/survivor-set";

/// SHA-256 commitment to a self-mask seed: domain tag, round binding, party
/// and the seed. The seed is 256 uniformly random bits, so the commitment
/// hides it; SHA-256's collision resistance makes it binding, so the
/// aggregator can check a seed it rebuilt from shares against it.
pub fn seed_commitment(binding: &[u8; 32], party: PartyId, seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMITMENT_TAG);
    h.update(binding);
    h.update(party.to_le_bytes());
    h.update(seed);
    h.finalize().into()
}

/// SHA-256 commitment to a member's graph-seed contribution (see
/// [`graph_seed`]); hiding and binding for the same reasons as
/// [`seed_commitment`].
pub fn graph_commitment(binding: &[u8; 32], party: PartyId, reveal: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GRAPH_COMMITMENT_TAG);
    h.update(binding);
    h.update(party.to_le_bytes());
    h.update(reveal);
    h.finalize().into()
}

/// The round's neighbour-graph seed: SHA-256 over the round binding and every
/// `(party, commitment, reveal)` of the roster, in roster order.
///
/// Why commit and reveal: a seed the aggregator picks (or a hash of the
/// advertisements, which colluding members can re-sign at will) can be
/// ground until colluders surround a target. Here every commitment is fixed
/// in the roster before any member reveals, and each honest member reveals
/// only after it has seen the roster, so the seed is uniform to anyone who
/// lacks one honest member's 256 random bits. What is left to an operator is
/// aborting a round and starting another: one fresh draw per aborted round
/// (docs/secure-aggregation.md, "The neighbour graph").
pub fn graph_seed(binding: &[u8; 32], roster: &[(PartyId, [u8; 32], [u8; 32])]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GRAPH_SEED_TAG);
    h.update(binding);
    h.update((roster.len() as u64).to_le_bytes());
    for (party, commitment, reveal) in roster {
        h.update(party.to_le_bytes());
        h.update(commitment);
        h.update(reveal);
    }
    h.finalize().into()
}

/// The exact bytes a member signs for its advertisement:
/// `tag ‖ binding ‖ party ‖ cipher_pk ‖ mask_pk ‖ seed_commitment ‖
/// graph_commitment`, all fixed length, so no two different advertisements
/// share an encoding. The round binding covers run, round, sorted cohort and
/// settings, so a signature cannot be replayed into another round, run or
/// party index.
pub fn advert_message(
    binding: &[u8; 32],
    party: PartyId,
    keys: &PublicKeys,
    seed_commitment: &[u8; 32],
    graph_commitment: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(ADVERT_TAG.len() + 32 + 4 + 4 * 32);
    m.extend_from_slice(ADVERT_TAG);
    m.extend_from_slice(binding);
    m.extend_from_slice(&party.to_le_bytes());
    m.extend_from_slice(&keys.cipher_pk);
    m.extend_from_slice(&keys.mask_pk);
    m.extend_from_slice(seed_commitment);
    m.extend_from_slice(graph_commitment);
    m
}

/// The exact bytes every survivor signs in the consistency check:
/// `tag ‖ binding ‖ SHA-256(count ‖ sorted survivors)`. Signing one set per
/// round is what stops an aggregator from showing two groups of share
/// holders two different survivor sets (see [`crate::min_threshold`]).
pub fn survivor_message(binding: &[u8; 32], survivors: &[PartyId]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update((survivors.len() as u64).to_le_bytes());
    for p in survivors {
        h.update(p.to_le_bytes());
    }
    let digest: [u8; 32] = h.finalize().into();
    let mut m = Vec::with_capacity(SURVIVORS_TAG.len() + 64);
    m.extend_from_slice(SURVIVORS_TAG);
    m.extend_from_slice(binding);
    m.extend_from_slice(&digest);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_covers_every_field() {
        let keys = PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] };
        let base = advert_message(&[0; 32], 3, &keys, &[4; 32], &[6; 32]);
        let swapped = PublicKeys { cipher_pk: [2; 32], mask_pk: [1; 32] };
        for other in [
            advert_message(&[1; 32], 3, &keys, &[4; 32], &[6; 32]),
            advert_message(&[0; 32], 4, &keys, &[4; 32], &[6; 32]),
            advert_message(&[0; 32], 3, &swapped, &[4; 32], &[6; 32]),
            advert_message(&[0; 32], 3, &keys, &[5; 32], &[6; 32]),
            advert_message(&[0; 32], 3, &keys, &[4; 32], &[7; 32]),
        ] {
            assert_ne!(other, base);
        }
        assert_ne!(seed_commitment(&[0; 32], 1, &[9; 32]), seed_commitment(&[0; 32], 2, &[9; 32]));
        assert_ne!(graph_commitment(&[0; 32], 1, &[9; 32]), seed_commitment(&[0; 32], 1, &[9; 32]));
        assert_ne!(survivor_message(&[0; 32], &[1, 2]), survivor_message(&[0; 32], &[1, 2, 3]));
        assert_ne!(survivor_message(&[0; 32], &[1, 2]), survivor_message(&[1; 32], &[1, 2]));
        let roster = [(0, [1; 32], [2; 32]), (3, [4; 32], [5; 32])];
        assert_ne!(graph_seed(&[0; 32], &roster), graph_seed(&[0; 32], &roster[..1]));
        assert_ne!(graph_seed(&[0; 32], &roster), graph_seed(&[1; 32], &roster));
    }
}
