//! What a member signs when it advertises its keys, and the commitment to its
//! self-mask seed that goes with them. The signature itself is made and
//! checked outside this crate (with the member's consortium certificate key,
//! which this crate never sees): here are only the bytes, built one way for
//! both sides so that signer and verifier cannot disagree about them.

use sha2::{Digest, Sha256};
use tessera_core::{PartyId, PublicKeys};

/// Domain tag of the signed advertisement message.
const ADVERT_TAG: &[u8] = b"tessera-secagg/v2/advertisement";
/// Domain tag of the self-mask seed commitment.
const COMMITMENT_TAG: &[u8] = b"tessera-secagg/v2/self-mask-commitment";

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

/// The exact bytes a member signs for its advertisement:
/// `tag ‖ binding ‖ party ‖ cipher_pk ‖ mask_pk ‖ seed_commitment`, all fixed
/// length, so no two different advertisements share an encoding. The round
/// binding covers run, round, sorted cohort and settings, so a signature
/// cannot be replayed into another round, run or party index.
pub fn advert_message(binding: &[u8; 32], party: PartyId, keys: &PublicKeys, seed_commitment: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ADVERT_TAG.len() + 32 + 4 + 3 * 32);
    m.extend_from_slice(ADVERT_TAG);
    m.extend_from_slice(binding);
    m.extend_from_slice(&party.to_le_bytes());
    m.extend_from_slice(&keys.cipher_pk);
    m.extend_from_slice(&keys.mask_pk);
    m.extend_from_slice(seed_commitment);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_covers_every_field() {
        let keys = PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] };
        let base = advert_message(&[0; 32], 3, &keys, &[4; 32]);
        let swapped = PublicKeys { cipher_pk: [2; 32], mask_pk: [1; 32] };
        for other in [
            advert_message(&[1; 32], 3, &keys, &[4; 32]),
            advert_message(&[0; 32], 4, &keys, &[4; 32]),
            advert_message(&[0; 32], 3, &swapped, &[4; 32]),
            advert_message(&[0; 32], 3, &keys, &[5; 32]),
        ] {
            assert_ne!(other, base);
        }
        assert_ne!(seed_commitment(&[0; 32], 1, &[9; 32]), seed_commitment(&[0; 32], 2, &[9; 32]));
    }
}
