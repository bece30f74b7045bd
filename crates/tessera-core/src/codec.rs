//! The one place that knows how messages become bytes.
//!
//! A frame is `[version: u8][length: u32 little-endian][payload]`, where the
//! payload is a serde value encoded with bincode 2 (fixed-width integers, so
//! a masked u32 costs exactly four bytes). Every frame is bounded by
//! [`Limits::max_frame_bytes`]; a peer that announces more is cut off at the
//! header, before a single payload byte is buffered. Vectors larger than a
//! frame are split by the protocol into chunks of [`Limits::chunk_values`].
//!
//! [`FrameDecoder`] is sans-IO: feed it whatever bytes arrived, pull frames
//! out. It never panics on hostile input; each failure is a [`CodecError`].

use serde::Serialize;
use serde::de::DeserializeOwned;

mod parts;
mod payload;
pub use parts::FrameParts;
pub use payload::Payload;

/// Version byte at the head of every frame. Bumped on any incompatible
/// change to the message enums. Version 2: signed advertisements
/// (`ClientMsg::AdvertiseKeys` and `AggregatorMsg::CohortKeys` carry an
/// [`Advertisement`](crate::Advertisement) with certificate and signature).
/// Version 3: the neighbour graph is drawn by commit and reveal
/// (`GraphRoster`, `RevealGraphSeed`) and the survivor set is signed before
/// any share is revealed (`SurvivorSet`, `SignSurvivors`). Version 4:
/// `Hello` announces the member's [`SettingsDigest`](crate::SettingsDigest).
/// Version 5: the DP statistics release in `RoundSettings` (`stats`).
/// Version 6: no model is streamed in a statistics round (the member starts
/// it at `RoundStart`); no message type changed, but a version-5 peer would
/// wait for, or refuse, a model the other side does not expect.
pub const PROTOCOL_VERSION: u8 = 6;

/// Bytes of frame header: version byte plus u32 length.
pub const HEADER_LEN: usize = 5;

/// Hard ceiling compiled into the bincode config; `Limits` may only be lower.
const BINCODE_LIMIT: usize = 256 << 20;

/// Size limits, agreed by configuration on both sides. Defaults: 8 MiB
/// frames and chunks of 2^20 values (4 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted in one frame, in bytes (header excluded).
    pub max_frame_bytes: usize,
    /// Values per chunk when a vector is streamed. Values take 4 bytes on
    /// the wire, so `4 * chunk_values` must stay below `max_frame_bytes`.
    pub chunk_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // 4 MiB chunks keep per-frame buffers small while amortising framing.
        Self { max_frame_bytes: 8 << 20, chunk_values: 1 << 20 }
    }
}

/// Why bytes could not become a message, or a message bytes. A decoding
/// error ends the stream: after one, a [`FrameDecoder`] cannot resynchronise.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum CodecError {
    /// The frame's version byte is not [`PROTOCOL_VERSION`]: the peer runs an
    /// incompatible build.
    #[error(
        "peer speaks protocol version {found} but this build speaks version {expected}; \
         upgrade the older side so both run the same Tessera protocol version"
    )]
    UnknownVersion {
        /// Version byte the frame carried.
        found: u8,
        /// [`PROTOCOL_VERSION`] of this build.
        expected: u8,
    },
    /// The payload (as a header announced it, or as encoded) is larger than
    /// [`Limits::max_frame_bytes`].
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    Oversize {
        /// Payload length in bytes.
        len: usize,
        /// The limit it exceeds, in bytes.
        limit: usize,
    },
    /// The stream ended with part of a frame buffered.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes left in the buffer, header included.
        buffered: usize,
    },
    /// The payload is not a valid encoding of the expected message; carries
    /// bincode's description.
    #[error("frame payload could not be decoded: {0}")]
    Undecodable(String),
    /// A message decoded but bytes were left over (count given): a frame
    /// holds exactly one message.
    #[error("frame payload has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The value could not be serialised; carries bincode's description.
    #[error("message could not be encoded: {0}")]
    Unencodable(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding().with_little_endian().with_limit::<BINCODE_LIMIT>()
}

/// Encode `msg` as one complete frame.
pub fn encode_frame<T: Serialize>(msg: &T, limits: &Limits) -> Result<Vec<u8>, CodecError> {
    let mut out = encode_unframed(msg)?;
    let len = out.len() - HEADER_LEN;
    out[1..HEADER_LEN].copy_from_slice(&frame_header_len(len, limits)?);
    Ok(out)
}

/// The version byte, a zeroed length and `msg`'s payload: a frame whose
/// length field is still to be written.
fn encode_unframed<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![PROTOCOL_VERSION, 0, 0, 0, 0];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| CodecError::Unencodable(e.to_string()))?;
    Ok(out)
}

/// The header's length field for a payload of `len` bytes, or why no
/// frame may carry it.
fn frame_header_len(len: usize, limits: &Limits) -> Result<[u8; 4], CodecError> {
    if len > limits.max_frame_bytes || len > u32::MAX as usize {
        return Err(CodecError::Oversize { len, limit: limits.max_frame_bytes });
    }
    Ok((len as u32).to_le_bytes())
}

/// The length `encode_frame` would produce, without building the frame:
/// traffic accounting counts messages this way, so byte counts depend only
/// on what was said, not on transport timing.
pub fn frame_len<T: Serialize>(msg: &T) -> Result<usize, CodecError> {
    Ok(HEADER_LEN + value_len(msg)?)
}

/// Bytes `value` takes inside an encoded message.
pub(crate) fn value_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    let mut counter = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut counter, config())
        .map_err(|e| CodecError::Unencodable(e.to_string()))?;
    Ok(counter.bytes_written)
}

/// Bytes `items` take inside an encoded message: the sequence's length
/// prefix and every item, as a `Vec` of them encodes.
pub(crate) fn seq_len<T: Serialize>(items: &[T]) -> Result<usize, CodecError> {
    value_len(&items)
}

/// SHA-256 of the bytes `items` take inside an encoded message (what
/// [`seq_len`] counts), streamed into the hash without buffering them.
pub(crate) fn seq_digest<T: Serialize>(items: &[T]) -> Result<[u8; 32], CodecError> {
    struct HashWriter(sha2::Sha256);
    impl bincode::enc::write::Writer for HashWriter {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            sha2::Digest::update(&mut self.0, bytes);
            Ok(())
        }
    }
    let mut w = HashWriter(<sha2::Sha256 as sha2::Digest>::new());
    bincode::serde::encode_into_writer(items, &mut w, config()).map_err(|e| CodecError::Unencodable(e.to_string()))?;
    Ok(sha2::Digest::finalize(w.0).into())
}

/// Decode one frame's payload (the bytes after the header). A payload
/// received from a transport is a [`Payload`]; see [`Payload::decode`].
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice::<T, _>(payload, config())
        .map_err(|e| CodecError::Undecodable(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Encode a value with the wire encoding but no frame header: the payload
/// a frame would carry, which [`decode_payload`] reads back (the fuzz
/// corpus is written this way).
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Unencodable(e.to_string()))
}

/// Incremental frame decoder. Buffers at most one frame.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    buf: Vec<u8>,
    failed: Option<CodecError>,
}

impl FrameDecoder {
    /// An empty decoder that refuses any frame larger than `limits` allows.
    pub fn new(limits: Limits) -> Self {
        Self { limits, buf: Vec::new(), failed: None }
    }

    /// Append bytes as they arrived from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes still needed before the next frame can complete, if the header
    /// is known; lets a driver read exactly one frame at a time.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        (HEADER_LEN + len).saturating_sub(self.buf.len()).max(1)
    }

    /// Next complete raw payload, `Ok(None)` if more bytes are needed. After
    /// an error the decoder stays failed: the stream cannot be resynchronised.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf[0] != PROTOCOL_VERSION {
            return self.fail(CodecError::UnknownVersion { found: self.buf[0], expected: PROTOCOL_VERSION });
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.limits.max_frame_bytes {
            return self.fail(CodecError::Oversize { len, limit: self.limits.max_frame_bytes });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let rest = self.buf.split_off(HEADER_LEN + len);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        frame.drain(..HEADER_LEN);
        Ok(Some(frame))
    }

    /// Next complete message, decoded as `T`; `Ok(None)` if more bytes are
    /// needed. A payload that does not decode fails the decoder too.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        match self.next_payload()? {
            None => Ok(None),
            Some(p) => match decode_payload(&p) {
                Ok(m) => Ok(Some(m)),
                Err(e) => self.fail(e),
            },
        }
    }

    /// Call at end of stream: an incomplete frame is an error.
    pub fn finish(&self) -> Result<(), CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() { Ok(()) } else { Err(CodecError::Truncated { buffered: self.buf.len() }) }
    }

    fn fail<T>(&mut self, e: CodecError) -> Result<T, CodecError> {
        self.buf = Vec::new();
        self.failed = Some(e.clone());
        Err(e)
    }
}

/// Split `total` values into `(offset, len)` chunks of at most `chunk` values.
pub fn chunk_ranges(total: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..total.div_ceil(chunk)).map(move |i| {
        let off = i * chunk;
        (off, chunk.min(total - off))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Advertisement, AggregatorMsg, ClientMsg, PublicKeys};
    use proptest::prelude::*;

    fn sample() -> ClientMsg {
        ClientMsg::MaskedChunk { round: 3, offset: 10, values: vec![1, 2, u32::MAX] }
    }

    #[test]
    fn roundtrip_in_pieces() {
        let l = Limits::default();
        let a = encode_frame(&sample(), &l).unwrap();
        let advert = Advertisement {
            keys: PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] },
            seed_commitment: [3; 32],
            graph_commitment: [6; 32],
            certificate: vec![4; 300],
            signature: vec![5; 72],
        };
        let b = encode_frame(&ClientMsg::AdvertiseKeys { round: 1, advert }, &l).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut d = FrameDecoder::new(l);
        let mut got = Vec::new();
        for byte in &all {
            d.push(std::slice::from_ref(byte));
            while let Some(m) = d.next_message::<ClientMsg>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], sample());
        d.finish().unwrap();
    }

    #[test]
    fn masked_u32_costs_four_bytes() {
        let l = Limits::default();
        let small = encode_frame(&ClientMsg::MaskedChunk { round: 0, offset: 0, values: vec![0; 1000] }, &l).unwrap();
        let big =
            encode_frame(&ClientMsg::MaskedChunk { round: 0, offset: 0, values: vec![u32::MAX; 1000] }, &l).unwrap();
        assert_eq!(small.len(), big.len());
        assert!(small.len() < 4000 + 64);
    }

    /// A member built for version 5 (which still streams the model in a
    /// statistics round) is told both versions, whichever side reads the
    /// other's frame.
    #[test]
    fn previous_version_names_both_versions() {
        assert_eq!(PROTOCOL_VERSION, 6);
        let l = Limits::default();
        let mut f = encode_frame(
            &ClientMsg::Hello { member: "m".into(), protocol_version: 5, settings: Default::default() },
            &l,
        )
        .unwrap();
        f[0] = 5;
        let mut d = FrameDecoder::new(l);
        d.push(&f);
        let err = d.next_message::<ClientMsg>().unwrap_err();
        assert_eq!(err, CodecError::UnknownVersion { found: 5, expected: 6 });
        let text = err.to_string();
        assert!(text.contains("version 5") && text.contains("version 6"), "{text}");
    }

    #[test]
    fn wrong_version_truncated_oversize_garbage() {
        let l = Limits { max_frame_bytes: 64, chunk_values: 8 };
        let mut f = encode_frame(&sample(), &l).unwrap();
        f[0] = 9;
        let mut d = FrameDecoder::new(l);
        d.push(&f);
        assert_eq!(
            d.next_message::<ClientMsg>(),
            Err(CodecError::UnknownVersion { found: 9, expected: PROTOCOL_VERSION })
        );
        assert!(d.next_message::<ClientMsg>().is_err(), "decoder stays failed");

        let f = encode_frame(&sample(), &l).unwrap();
        let mut d = FrameDecoder::new(l);
        d.push(&f[..f.len() - 1]);
        assert_eq!(d.next_message::<ClientMsg>(), Ok(None));
        assert!(matches!(d.finish(), Err(CodecError::Truncated { .. })));

        let mut d = FrameDecoder::new(l);
        d.push(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(d.next_message::<ClientMsg>(), Err(CodecError::Oversize { .. })));

        let mut d = FrameDecoder::new(l);
        d.push(&[PROTOCOL_VERSION, 3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_message::<ClientMsg>(), Err(CodecError::Undecodable(_))));

        let big = ClientMsg::MaskedChunk { round: 0, offset: 0, values: vec![0; 100] };
        assert!(matches!(encode_frame(&big, &l), Err(CodecError::Oversize { .. })));
    }

    #[test]
    fn chunking_covers_everything_once() {
        let r: Vec<_> = chunk_ranges(10, 4).collect();
        assert_eq!(r, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(chunk_ranges(0, 4).count(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new(Limits { max_frame_bytes: 256, chunk_values: 16 });
            d.push(&bytes);
            for _ in 0..8 {
                let _ = d.next_message::<ClientMsg>();
                let _ = d.next_message::<AggregatorMsg>();
            }
            let _ = d.finish();
        }

        #[test]
        fn arbitrary_payload_after_valid_header_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut frame = vec![PROTOCOL_VERSION];
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(&payload);
            let mut d = FrameDecoder::new(Limits::default());
            d.push(&frame);
            let _ = d.next_message::<AggregatorMsg>();
        }
    }

    #[test]
    fn frame_len_matches_the_encoded_frame() {
        let msg = crate::message::ClientMsg::MaskedChunk { round: 3, offset: 10, values: vec![7; 1000] };
        assert_eq!(frame_len(&msg).unwrap(), encode_frame(&msg, &Limits::default()).unwrap().len());
    }
}
