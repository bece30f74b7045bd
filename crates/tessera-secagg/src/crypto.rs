//! Thin, named wrappers over vetted primitives: X25519 agreement (AWS-LC,
//! through `aws-lc-rs`), HKDF-SHA256 key derivation, AES-256-GCM for shares
//! (aes-gcm) and the AES-256-CTR keystream (AWS-LC) used as the mask PRG.
//! Nothing here is a primitive of its own; every derived key is bound to
//! the round (see `RoundContext::binding`).

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use hkdf::Hkdf;
use sha2::Sha256;
use tessera_core::PartyId;
use zeroize::Zeroizing;

/// Bytes of the random AES-GCM nonce that prefixes every share ciphertext.
pub(crate) const NONCE_LEN: usize = 12;

/// A 256-bit PRG seed. Zeroized on drop.
pub type Seed = Zeroizing<[u8; 32]>;

/// An X25519 secret key (RFC 7748), held by AWS-LC for agreement and as
/// bytes for Shamir sharing (the mask key is shared so that the aggregator
/// can remove a dropout's pairwise masks).
///
/// Key agreement is most of a SecAgg+ member's work (two per neighbour:
/// 112 a round at 10,000 members). AWS-LC's X25519 (s2n-bignum's
/// assembly on x86-64) takes about half the time of x25519-dalek's serial
/// Montgomery ladder, and its public-key derivation less than half
/// (docs/benchmarks.md, "Protocol scale"); the results are the same
/// function, checked against x25519-dalek in `tests::x25519_matches_dalek`.
/// AWS-LC clears the key's memory when it frees it; the bytes here are
/// zeroized on drop.
pub(crate) struct AgreementSecret {
    key: PrivateKey,
    bytes: Seed,
    public: [u8; 32],
}

impl AgreementSecret {
    /// The key whose scalar is `bytes` (clamped as RFC 7748 says, by AWS-LC).
    pub(crate) fn from_bytes(bytes: Seed) -> Self {
        let key =
            PrivateKey::from_private_key(&X25519, bytes.as_ref()).expect("any 32 bytes are an X25519 private key");
        let public = key.compute_public_key().expect("an X25519 key has a public key");
        let public = public.as_ref().try_into().expect("an X25519 public key is 32 bytes");
        Self { key, bytes, public }
    }

    /// The public key, `X25519(bytes, 9)`.
    pub(crate) fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The secret's bytes, as [`Self::from_bytes`] took them.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// X25519 agreement; `None` when the peer key is low order (AWS-LC
    /// refuses an all-zero shared secret, which everyone would know).
    pub(crate) fn agree(&self, peer_public: &[u8; 32]) -> Option<Seed> {
        let peer = UnparsedPublicKey::new(&X25519, peer_public);
        agreement::agree(&self.key, peer, (), |shared| {
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(shared);
            Ok(out)
        })
        .ok()
    }
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

/// One key's mask stream: AES-256 in counter mode (NIST SP 800-38A, 128-bit
/// big-endian counter from zero), positioned at a block. AWS-LC's CTR code
/// interleaves eight blocks with AES-NI/VAES: 1.4-1.7x the `aes` crate's
/// keystream on this machine (docs/benchmarks.md), bit for bit the same
/// stream (`tests::matches_the_reference_stream_cipher`).
struct MaskStream {
    key: EncryptingKey,
    next_block: u128,
}

impl MaskStream {
    fn new(key: &[u8; 32], first_block: u128) -> Self {
        let key = UnboundCipherKey::new(&AES_256, key)
            .and_then(EncryptingKey::ctr)
            .expect("a 32-byte key is a valid AES-256 key");
        Self { key, next_block: first_block }
    }

    /// Overwrites `out` (a whole number of blocks) with the next keystream
    /// bytes: CTR encryption of zeros.
    fn write_keystream(&mut self, out: &mut [u8]) {
        debug_assert_eq!(out.len() % BLOCK_BYTES, 0);
        out.fill(0);
        let iv = EncryptionContext::Iv128(self.next_block.to_be_bytes().into());
        self.key.less_safe_encrypt(out, iv).expect("AES-CTR accepts any length and a 128-bit counter block");
        self.next_block += (out.len() / BLOCK_BYTES) as u128;
    }
}

const BLOCK_BYTES: usize = 16;

/// Words of keystream generated per key and tile: the tile of values and
/// the keystream buffer (4 KiB each) both stay in L1 while every key's
/// stream is added in.
const TILE_WORDS: usize = 1024;
/// One AES block is four words.
const WORDS_PER_BLOCK: usize = 4;
/// Words combined at once: enough for the compiler to vectorize.
const GROUP_WORDS: usize = 16;

/// How [`apply_prg`] combines the keystream with the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskOp {
    /// `value + keystream` (a member masking its input).
    Add,
    /// `value - keystream` (removing a mask from the sum).
    Subtract,
}

/// Adds (or subtracts) the PRG stream of `key`, starting at word `offset`, into
/// `values`, wrapping mod 2^32. Reducing mod 2^k afterwards gives the same
/// result as working mod 2^k throughout, because 2^k divides 2^32; and the low
/// k bits of a uniform word are uniform mod 2^k.
///
/// The PRG is AES-256-CTR keyed with the full 256-bit seed, counter block
/// starting at zero (every key is derived for one round and one purpose, so
/// no key/counter pair ever repeats); word `i` of the stream is keystream
/// bytes `4i..4i+4` read little endian, so any chunk can be masked on its
/// own. With AES-NI it is about twice as fast as ChaCha20 (AVX2) on x86-64,
/// and AWS-LC's CTR code 1.4-1.7x the `aes` crate's; see
/// `docs/benchmarks.md`. Panics if the stream would run past 2^36 words,
/// the longest vector a round may mask.
pub fn apply_prg(key: &[u8; 32], offset: u64, values: &mut [u32], op: MaskOp) {
    apply_prgs(&[(key, op)], offset, values);
}

/// [`apply_prg`] for several keys at once, in one pass over `values`: each
/// tile of `values` gets every key's keystream while it sits in cache, and
/// the keystream is written straight into a small buffer (no zeroing, no
/// XOR, no intermediate vector).
pub(crate) fn apply_prgs(keys: &[(&[u8; 32], MaskOp)], offset: u64, values: &mut [u32]) {
    let end = offset.checked_add(values.len() as u64);
    assert!(end.is_some_and(|e| e <= crate::context::MAX_VECTOR_LEN), "PRG stream beyond 2^36 words");
    if values.is_empty() {
        return;
    }
    let first_block = u128::from(offset / WORDS_PER_BLOCK as u64);
    let mut prgs: Vec<(MaskStream, MaskOp)> =
        keys.iter().map(|(key, op)| (MaskStream::new(key, first_block), *op)).collect();
    let mut buf = Zeroizing::new([0u8; 4 * TILE_WORDS]);
    // A partly used first block: its words from `skip` on.
    let skip = (offset % WORDS_PER_BLOCK as u64) as usize;
    let head_len = if skip == 0 { 0 } else { (WORDS_PER_BLOCK - skip).min(values.len()) };
    let (head, rest) = values.split_at_mut(head_len);
    if !head.is_empty() {
        for (stream, op) in &mut prgs {
            stream.write_keystream(&mut buf[..BLOCK_BYTES]);
            combine(head, &buf[4 * skip..4 * (skip + head.len())], *op);
        }
    }
    for tile in rest.chunks_mut(TILE_WORDS) {
        let bytes = &mut buf[..tile.len().div_ceil(WORDS_PER_BLOCK) * BLOCK_BYTES];
        for (stream, op) in &mut prgs {
            stream.write_keystream(bytes);
            match op {
                MaskOp::Add => combine_tile::<true>(tile, bytes),
                MaskOp::Subtract => combine_tile::<false>(tile, bytes),
            }
        }
    }
}

/// Words below which another worker does not pay for itself: spawning and
/// joining a scoped thread costs tens of microseconds, about what one key's
/// keystream for 2^15 words takes.
pub(crate) const MIN_WORDS_PER_WORKER: usize = 1 << 15;

/// [`apply_prgs`] on up to `workers` scoped threads, each over its own
/// contiguous slice of `values` (this thread takes the last slice), then
/// `finish` on each slice while it is still in cache. The stream is seekable,
/// so the result is bit-identical to one pass over the whole vector; slices
/// are whole tiles, so each worker starts on a block boundary whenever
/// `offset` does. Slices stay at least `min_words` long.
pub(crate) fn apply_prgs_parallel(
    keys: &[(&[u8; 32], MaskOp)],
    offset: u64,
    values: &mut [u32],
    workers: usize,
    min_words: usize,
    finish: &(dyn Fn(&mut [u32]) + Sync),
) {
    let end = offset.checked_add(values.len() as u64);
    assert!(end.is_some_and(|e| e <= crate::context::MAX_VECTOR_LEN), "PRG stream beyond 2^36 words");
    let workers = workers.min(values.len() / min_words.max(1)).max(1);
    if workers == 1 {
        apply_prgs(keys, offset, values);
        finish(values);
        return;
    }
    let per = values.len().div_ceil(workers).next_multiple_of(TILE_WORDS);
    std::thread::scope(|scope| {
        let mut parts = values.chunks_mut(per).enumerate().peekable();
        while let Some((i, part)) = parts.next() {
            let at = offset + (i * per) as u64;
            let mut job = move || {
                apply_prgs(keys, at, part);
                finish(part);
            };
            if parts.peek().is_some() {
                scope.spawn(job);
            } else {
                job();
            }
        }
    });
}

/// `tile[i] (+|-)= keystream word i`, 16 words at a time through
/// fixed-size arrays so that the compiler vectorizes it.
#[inline(always)]
fn combine_tile<const ADD: bool>(tile: &mut [u32], bytes: &[u8]) {
    let full = tile.len() / GROUP_WORDS;
    let (whole, tail) = tile.split_at_mut(full * GROUP_WORDS);
    let (keystream, tail_bytes) = bytes.split_at(full * GROUP_WORDS * 4);
    for (values, group) in whole.chunks_exact_mut(GROUP_WORDS).zip(keystream.chunks_exact(GROUP_WORDS * 4)) {
        let (Ok(values), Ok(group)) =
            (<&mut [u32; GROUP_WORDS]>::try_from(values), <&[u8; GROUP_WORDS * 4]>::try_from(group))
        else {
            unreachable!("chunks_exact yields whole groups");
        };
        let words: [u32; GROUP_WORDS] = std::array::from_fn(|i| {
            let j = 4 * i;
            u32::from_le_bytes([group[j], group[j + 1], group[j + 2], group[j + 3]])
        });
        if ADD {
            values.iter_mut().zip(words).for_each(|(v, k)| *v = v.wrapping_add(k));
        } else {
            values.iter_mut().zip(words).for_each(|(v, k)| *v = v.wrapping_sub(k));
        }
    }
    // The vector's last, short group.
    combine(tail, tail_bytes, if ADD { MaskOp::Add } else { MaskOp::Subtract });
}

/// `values[i] (+|-)= keystream word i`, wrapping; `bytes` holds at least
/// `4 * values.len()` keystream bytes.
fn combine(values: &mut [u32], bytes: &[u8], op: MaskOp) {
    let words = bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    match op {
        MaskOp::Add => values.iter_mut().zip(words).for_each(|(v, k)| *v = v.wrapping_add(k)),
        MaskOp::Subtract => values.iter_mut().zip(words).for_each(|(v, k)| *v = v.wrapping_sub(k)),
    }
}

/// The PRG stream itself, for the tests: `out[i]` = word `offset + i`.
#[cfg(test)]
pub(crate) fn keystream_u32(key: &[u8; 32], offset: u64, out: &mut [u32]) {
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

    /// The tiled PRG (AWS-LC) is exactly AES-256-CTR's keystream as an
    /// independent implementation produces it (RustCrypto's `ctr` + `aes`,
    /// checked against the NIST SP 800-38A F.5.5 vector below), for any
    /// offset and length, with several keys in one pass.
    #[test]
    fn matches_the_reference_stream_cipher() {
        use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
        type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
        let reference = |key: &[u8; 32], offset: u64, len: usize| -> Vec<u32> {
            let mut c = Aes256Ctr::new(key.into(), &Default::default());
            c.seek(offset * 4);
            let mut bytes = vec![0u8; len * 4];
            c.apply_keystream(&mut bytes);
            bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
        };
        let keys = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let cases =
            [(0u64, 0usize), (0, 1), (0, 13), (0, 16), (0, 29), (3, 13), (5, 2), (15, 1), (2, 1037), (17, 3000)];
        for (offset, len) in cases.into_iter().chain([(1000, 2048), (1023, 3)]) {
            let base: Vec<u32> = (0..len as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
            let mut got = base.clone();
            let masks = [(&keys[0], MaskOp::Add), (&keys[1], MaskOp::Subtract), (&keys[2], MaskOp::Add)];
            apply_prgs(&masks, offset, &mut got);
            let [a, b, c] = keys.map(|k| reference(&k, offset, len));
            let want: Vec<u32> =
                (0..len).map(|i| base[i].wrapping_add(a[i]).wrapping_sub(b[i]).wrapping_add(c[i])).collect();
            assert_eq!(got, want, "offset {offset}, len {len}");
        }
        // NIST SP 800-38A F.5.5 (CTR-AES256), first block: keystream = plaintext XOR ciphertext.
        let h = |s: &str| -> Vec<u8> {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let key: [u8; 32] = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4").try_into().unwrap();
        let iv: [u8; 16] = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let mut block = h("6bc1bee22e409f96e93d7e117393172a");
        Aes256Ctr::new(&key.into(), &iv.into()).apply_keystream(&mut block);
        assert_eq!(block, h("601ec313775789a5b7a7f504bbf3d228"));
        let near_end = crate::context::MAX_VECTOR_LEN - 100;
        let mut got = vec![0u32; 100];
        keystream_u32(&keys[0], near_end, &mut got);
        assert_eq!(got, reference(&keys[0], near_end, 100));
        let past =
            std::panic::catch_unwind(|| keystream_u32(&keys[0], crate::context::MAX_VECTOR_LEN - 16, &mut [0u32; 17]));
        assert!(past.is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

        /// Masking on several threads is bit-identical to the single pass,
        /// for any offset, length, key set and worker count.
        #[test]
        fn parallel_masking_is_bit_identical(
            offset in 0u64..5000,
            len in 0usize..20_000,
            workers in 1usize..=7,
            min_words in 1usize..3000,
            n_keys in 1usize..=4,
            seed in proptest::prelude::any::<u8>(),
        ) {
            let keys: Vec<[u8; 32]> = (0..n_keys).map(|i| [seed.wrapping_add(i as u8); 32]).collect();
            let masks: Vec<(&[u8; 32], MaskOp)> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k, if i % 2 == 0 { MaskOp::Add } else { MaskOp::Subtract }))
                .collect();
            let base: Vec<u32> = (0..len as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
            let mut single = base.clone();
            apply_prgs(&masks, offset, &mut single);
            single.iter_mut().for_each(|v| *v &= 0x00ff_ffff);
            let mut parallel = base;
            apply_prgs_parallel(&masks, offset, &mut parallel, workers, min_words, &|part: &mut [u32]| {
                part.iter_mut().for_each(|v| *v &= 0x00ff_ffff)
            });
            proptest::prop_assert_eq!(single, parallel);
        }
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
        let secret = AgreementSecret::from_bytes(Zeroizing::new([3u8; 32]));
        // The all-zero point and the other small-order points of RFC 7748's list.
        assert!(secret.agree(&[0u8; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(secret.agree(&one).is_none());
        let peer = AgreementSecret::from_bytes(Zeroizing::new([4u8; 32]));
        let a = secret.agree(&peer.public()).unwrap();
        let b = peer.agree(&secret.public()).unwrap();
        assert_eq!(*a, *b);
    }

    /// AWS-LC's X25519 is the same function as an independent
    /// implementation's (x25519-dalek): public keys and shared secrets,
    /// unclamped bytes included, and RFC 7748's section 5.2 vector.
    #[test]
    fn x25519_matches_dalek() {
        use x25519_dalek::{PublicKey, StaticSecret};
        for seed in 0u8..16 {
            let bytes: [u8; 32] =
                std::array::from_fn(|i| seed.wrapping_mul(37).wrapping_add((i as u8).wrapping_mul(11)) | 0x80);
            let peer_bytes: [u8; 32] = std::array::from_fn(|i| seed.wrapping_add(i as u8).wrapping_mul(29));
            let ours = AgreementSecret::from_bytes(Zeroizing::new(bytes));
            let theirs = StaticSecret::from(bytes);
            assert_eq!(ours.public(), PublicKey::from(&theirs).to_bytes());
            assert_eq!(ours.bytes(), &bytes);
            let peer = PublicKey::from(&StaticSecret::from(peer_bytes)).to_bytes();
            let want = theirs.diffie_hellman(&PublicKey::from(peer)).to_bytes();
            assert_eq!(*ours.agree(&peer).unwrap(), want, "seed {seed}");
        }
        let h = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
            v.try_into().unwrap()
        };
        let scalar = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        let out = h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
        assert_eq!(*AgreementSecret::from_bytes(Zeroizing::new(scalar)).agree(&u).unwrap(), out);
    }
}
