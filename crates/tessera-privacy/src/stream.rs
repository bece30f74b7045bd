//! The noise's random stream: AES-256 in counter mode through AWS-LC, a
//! CSPRNG for the samplers' 64-bit words.
//!
//! Why not ChaCha20: DP-SGD through unfrozen network blocks draws two table
//! samples (two words and a sign bit) for each of about a million values
//! every step, and refilling ChaCha20 was 17 % of such an epoch's profile
//! (docs/benchmarks.md). AWS-LC's CTR code runs eight AES-NI/VAES blocks
//! interleaved, as the secure-aggregation mask PRG does (the same
//! construction, `tessera_secagg::apply_prg`); docs/benchmarks.md has the
//! measured difference.
//!
//! Security: the keystream of AES-256-CTR under a uniformly random key is
//! indistinguishable from uniform bytes (AES as a pseudo-random
//! permutation) far beyond the 2^64 blocks one stream could ever produce
//! here. Each stream's key is 256 bits drawn from a CSPRNG (the round's
//! OS-seeded stream), used for this stream only, counter from zero, so no
//! key and counter pair repeats. The keystream buffer is zeroed on drop:
//! the noise is as secret as the data it hides.

use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroize;

/// Keystream generated per refill: 4 KiB, 256 AES blocks (L1-resident).
const BUFFER_BYTES: usize = 4096;
const BLOCK_BYTES: usize = 16;

/// A CSPRNG over AES-256-CTR (see the module docs). Build one per stream
/// with a fresh key; it never reseeds.
pub struct NoiseStream {
    key: EncryptingKey,
    next_block: u128,
    buffer: Box<[u8; BUFFER_BYTES]>,
    /// Bytes of `buffer` already handed out.
    used: usize,
}

/// Never prints the key or the keystream.
impl std::fmt::Debug for NoiseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream").field("next_block", &self.next_block).finish_non_exhaustive()
    }
}

impl NoiseStream {
    /// A stream keyed by `key`, which must be uniformly random, secret and
    /// used for no other stream.
    pub fn from_key(key: [u8; 32]) -> Self {
        let key = UnboundCipherKey::new(&AES_256, &key)
            .and_then(EncryptingKey::ctr)
            .expect("a 32-byte key is a valid AES-256 key");
        Self { key, next_block: 0, buffer: Box::new([0; BUFFER_BYTES]), used: BUFFER_BYTES }
    }

    /// The next 4 KiB of keystream: CTR encryption of zeros.
    fn refill(&mut self) {
        self.buffer.fill(0);
        let iv = EncryptionContext::Iv128(self.next_block.to_be_bytes().into());
        self.key
            .less_safe_encrypt(&mut self.buffer[..], iv)
            .expect("AES-CTR accepts any length and a 128-bit counter block");
        self.next_block += (BUFFER_BYTES / BLOCK_BYTES) as u128;
        self.used = 0;
    }

    /// The next `N` keystream bytes (refilling first if fewer are left).
    #[inline]
    fn take<const N: usize>(&mut self) -> [u8; N] {
        if self.used + N > BUFFER_BYTES {
            self.refill();
        }
        let bytes = self.buffer[self.used..self.used + N].try_into().expect("N bytes");
        self.used += N;
        bytes
    }
}

impl RngCore for NoiseStream {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn fill_bytes(&mut self, mut dest: &mut [u8]) {
        while !dest.is_empty() {
            if self.used == BUFFER_BYTES {
                self.refill();
            }
            let n = dest.len().min(BUFFER_BYTES - self.used);
            dest[..n].copy_from_slice(&self.buffer[self.used..self.used + n]);
            self.used += n;
            dest = &mut dest[n..];
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for NoiseStream {}

impl Drop for NoiseStream {
    fn drop(&mut self) {
        self.buffer.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 / SP 800-38A F.5.5 (CTR-AES256.Encrypt) with the counter
    /// block from zero: the first keystream block is AES_k(0^128), checked
    /// against an independent single-block encryption through AWS-LC's ECB.
    #[test]
    fn the_stream_is_aes_256_ctr_from_counter_zero() {
        use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey};
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut stream = NoiseStream::from_key(key);
        let mut first = [0u8; 48];
        stream.fill_bytes(&mut first);
        let ecb = EncryptingKey::ecb(UnboundCipherKey::new(&AES_256, &key).unwrap()).unwrap();
        for (i, block) in first.chunks(16).enumerate() {
            let mut expected = (i as u128).to_be_bytes();
            ecb.less_safe_encrypt(&mut expected, EncryptionContext::None).unwrap();
            assert_eq!(block, expected, "block {i}");
        }
        // FIPS-197 C.3: AES-256 of 00112233..ff under key 00..1f.
        let mut block: [u8; 16] = std::array::from_fn(|i| (i as u8) * 0x11);
        ecb.less_safe_encrypt(&mut block, EncryptionContext::None).unwrap();
        assert_eq!(
            block,
            [0x8e, 0xa2, 0xb7, 0xca, 0x51, 0x67, 0x45, 0xbf, 0xea, 0xfc, 0x49, 0x90, 0x4b, 0x49, 0x60, 0x89]
        );
    }

    /// Words, bytes and refills read one continuous keystream: the same
    /// bytes whichever call takes them, across buffer boundaries.
    #[test]
    fn words_and_bytes_read_one_continuous_stream() {
        let key = [7u8; 32];
        let mut bytes = vec![0u8; 3 * BUFFER_BYTES + 24];
        NoiseStream::from_key(key).fill_bytes(&mut bytes);
        let mut words = NoiseStream::from_key(key);
        let mut at = 0;
        while at + 8 <= bytes.len() {
            if at % 24 == 16 {
                assert_eq!(words.next_u32(), u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
                assert_eq!(words.next_u32(), u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()));
            } else {
                assert_eq!(words.next_u64(), u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()), "at {at}");
            }
            at += 8;
        }
        // Different keys, different streams; the output is not all zeros.
        let mut other = vec![0u8; 64];
        NoiseStream::from_key([8u8; 32]).fill_bytes(&mut other);
        assert_ne!(other, bytes[..64]);
        assert!(bytes.iter().any(|b| *b != 0));
    }

    /// Each bit of the words is balanced (a coarse check that no word is
    /// read from the zeroed part of the buffer).
    #[test]
    fn word_bits_are_balanced() {
        let mut s = NoiseStream::from_key([3u8; 32]);
        let n = 200_000u32;
        let mut ones = [0u32; 64];
        for _ in 0..n {
            let w = s.next_u64();
            for (b, c) in ones.iter_mut().enumerate() {
                *c += ((w >> b) & 1) as u32;
            }
        }
        for (b, c) in ones.iter().enumerate() {
            let dev = (f64::from(*c) - f64::from(n) / 2.0).abs() / (f64::from(n) / 4.0).sqrt();
            assert!(dev < 6.0, "bit {b}: {c} of {n}");
        }
    }
}
