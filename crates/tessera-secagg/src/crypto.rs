//! Thin, named wrappers over vetted primitives: X25519 agreement
//! (x25519-dalek), HKDF-SHA256 key derivation, AES-256-GCM for shares and the
//! ChaCha20 keystream used as the mask PRG. Nothing here is a primitive of
//! its own; every derived key is bound to the round (see `RoundContext::binding`).

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use hkdf::Hkdf;
use sha2::Sha256;
use tessera_core::PartyId;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Bytes of the random AES-GCM nonce that prefixes every share ciphertext.
pub(crate) const NONCE_LEN: usize = 12;

/// A 256-bit PRG seed. Zeroized on drop.
pub type Seed = Zeroizing<[u8; 32]>;

/// X25519 agreement; `None` when the peer key is low order (the shared
/// secret would be all zeros and known to everyone).
pub(crate) fn agree(secret: &StaticSecret, peer_public: &[u8; 32]) -> Option<Seed> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_public));
    shared.was_contributory().then(|| Zeroizing::new(*shared.as_bytes()))
}

fn derive(ikm: &[u8], label: &[u8], binding: &[u8; 32], parties: &[PartyId]) -> Seed {
    let mut info = Vec::with_capacity(label.len() + 32 + 4 * parties.len());
    info.extend_from_slice(label);
    info.extend_from_slice(binding);
    for p in parties {
        info.extend_from_slice(&p.to_le_bytes());
    }
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    if Hkdf::<Sha256>::new(None, ikm).expand(&info, okm.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 output of 32 bytes is always valid");
    }
    okm
}

/// AES-256-GCM key for the share bundle `from -> to` (one key per direction).
pub(crate) fn share_key(shared: &[u8; 32], binding: &[u8; 32], from: PartyId, to: PartyId) -> Seed {
    derive(shared, b"tessera-secagg/v1/share-key", binding, &[from, to])
}

/// Pairwise mask seed s_uv; symmetric in the two parties.
pub(crate) fn pairwise_seed(shared: &[u8; 32], binding: &[u8; 32], a: PartyId, b: PartyId) -> Seed {
    derive(shared, b"tessera-secagg/v1/pairwise-mask", binding, &[a.min(b), a.max(b)])
}

/// PRG key of the self mask of `party`, from its seed b_u.
pub(crate) fn self_mask_key(b_seed: &[u8; 32], binding: &[u8; 32], party: PartyId) -> Seed {
    derive(b_seed, b"tessera-secagg/v1/self-mask", binding, &[party])
}

pub(crate) fn share_aad(binding: &[u8; 32], from: PartyId, to: PartyId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(48);
    aad.extend_from_slice(b"tessera-secagg/v1/share");
    aad.extend_from_slice(binding);
    aad.extend_from_slice(&from.to_le_bytes());
    aad.extend_from_slice(&to.to_le_bytes());
    aad
}

/// `nonce || AES-256-GCM(plaintext, aad)`.
pub(crate) fn seal(key: &[u8; 32], nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let Ok(ct) = cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad }) else {
        unreachable!("AES-GCM encryption of a share bundle cannot exceed the length limit");
    };
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Inverse of [`seal`]; `None` for any tampering, wrong key or wrong binding.
pub(crate) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(key.into());
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).ok().map(Zeroizing::new)
}

/// Words of keystream produced per ChaCha20 call; bounds stack use.
const BLOCK_WORDS: usize = 1024;

/// How [`apply_prg`] combines the keystream with the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskOp {
    Add,
    Subtract,
}

/// Adds (or subtracts) the PRG stream of `key`, starting at word `offset`, into
/// `values`, wrapping mod 2^32. Reducing mod 2^k afterwards gives the same
/// result as working mod 2^k throughout, because 2^k divides 2^32; and the low
/// k bits of a uniform word are uniform mod 2^k.
///
/// The PRG is ChaCha20 keyed with the full 256-bit seed and a zero nonce
/// (every key is derived for one round and one purpose, so it never repeats),
/// seeked to byte `4 * offset`: any chunk can be masked on its own.
pub fn apply_prg(key: &[u8; 32], offset: u64, values: &mut [u32], op: MaskOp) {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    cipher.seek(offset * 4);
    let mut buf = [0u8; BLOCK_WORDS * 4];
    for chunk in values.chunks_mut(BLOCK_WORDS) {
        let bytes = &mut buf[..chunk.len() * 4];
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        for (v, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            *v = match op {
                MaskOp::Add => v.wrapping_add(word),
                MaskOp::Subtract => v.wrapping_sub(word),
            };
        }
    }
}

/// The PRG stream itself, for benches and tests: `out[i]` = word `offset + i`.
pub fn keystream_u32(key: &[u8; 32], offset: u64, out: &mut [u32]) {
    out.fill(0);
    apply_prg(key, offset, out, MaskOp::Add);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystream_is_seekable() {
        let key = [9u8; 32];
        let mut whole = vec![0u32; 5000];
        keystream_u32(&key, 0, &mut whole);
        for (start, len) in [(0usize, 1usize), (1, 1030), (1023, 3), (2047, 2000), (4999, 1)] {
            let mut part = vec![0u32; len];
            keystream_u32(&key, start as u64, &mut part);
            assert_eq!(part, whole[start..start + len]);
        }
        let mut other = vec![0u32; 16];
        keystream_u32(&[8u8; 32], 0, &mut other);
        assert_ne!(other, whole[..16]);
    }

    #[test]
    fn add_then_subtract_is_identity() {
        let key = [1u8; 32];
        let original: Vec<u32> = (0..3000).collect();
        let mut v = original.clone();
        apply_prg(&key, 17, &mut v, MaskOp::Add);
        assert_ne!(v, original);
        apply_prg(&key, 17, &mut v, MaskOp::Subtract);
        assert_eq!(v, original);
    }

    #[test]
    fn seal_open_checks_key_and_aad() {
        let key = [5u8; 32];
        let sealed = seal(&key, [1; NONCE_LEN], b"aad", b"secret");
        assert_eq!(open(&key, b"aad", &sealed).as_deref().map(Vec::as_slice), Some(&b"secret"[..]));
        assert!(open(&key, b"other", &sealed).is_none());
        assert!(open(&[6u8; 32], b"aad", &sealed).is_none());
        let mut bad = sealed.clone();
        bad[NONCE_LEN + 2] ^= 1;
        assert!(open(&key, b"aad", &bad).is_none());
        assert!(open(&key, b"aad", &sealed[..5]).is_none());
    }

    #[test]
    fn low_order_key_is_refused() {
        let secret = StaticSecret::from([3u8; 32]);
        assert!(agree(&secret, &[0u8; 32]).is_none());
        let peer = StaticSecret::from([4u8; 32]);
        let a = agree(&secret, PublicKey::from(&peer).as_bytes()).unwrap();
        let b = agree(&peer, PublicKey::from(&secret).as_bytes()).unwrap();
        assert_eq!(*a, *b);
    }
}
