//! A received frame's payload, kept in the buffers it arrived in.
//!
//! A QUIC stream delivers a 4 MiB frame as a few dozen datagram-sized
//! chunks. Gathering them into one allocation before decoding would be a
//! full extra copy of every update the aggregator receives (about a tenth of
//! the transport's time on loopback), so the transport hands the chunks over
//! as they are and the decoder reads across their boundaries.
//!
//! An in-process transport may instead hand over the message itself, as the
//! sender built it ([`Payload::from_value`]): the simulator's members then
//! share the lists every one of them is sent (`SharedList`) instead of each
//! decoding its own copy. Such a payload keeps the frame's length, so
//! traffic counts do not depend on the transport.

use std::any::Any;
use std::sync::Arc;

use bincode::de::read::Reader;
use bincode::error::DecodeError;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::{CodecError, config, decode_payload};

/// One frame's payload (header stripped): the bytes of `chunks()` in order,
/// or a message handed over in process ([`Payload::from_value`]).
#[derive(Clone, Default)]
pub struct Payload {
    chunks: Vec<Bytes>,
    len: usize,
    value: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("chunks", &self.chunks.len())
            .field("len", &self.len)
            .field("value", &self.value.is_some())
            .finish()
    }
}

impl Payload {
    /// A payload made of `chunks` in order; empty chunks are dropped.
    pub fn from_chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: Vec<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let len = chunks.iter().map(Bytes::len).sum();
        Self { chunks, len, value: None }
    }

    /// A message handed over in process instead of its bytes, with the
    /// length its encoded payload has (header excluded). Only a transport
    /// inside one process builds these: the message is the sender's own
    /// value, so there is nothing to check that decoding would check.
    /// [`Payload::decode`] returns a clone of it; [`Payload::chunks`] is empty.
    pub fn from_value(value: Arc<dyn Any + Send + Sync>, len: usize) -> Self {
        Self { chunks: Vec::new(), len, value: Some(value) }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers as received, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The payload gathered into one buffer (a copy; tests and diagnostics).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.chunks.iter().for_each(|c| out.extend_from_slice(c));
        out
    }

    /// Decode the message this payload carries, exactly as
    /// [`decode_payload`](super::decode_payload) would from the gathered
    /// bytes; a message handed over in process is cloned (a value of
    /// another type is [`CodecError::Undecodable`]).
    pub fn decode<T: DeserializeOwned + Clone + 'static>(&self) -> Result<T, CodecError> {
        if let Some(v) = &self.value {
            return v
                .downcast_ref::<T>()
                .cloned()
                .ok_or_else(|| CodecError::Undecodable("a message of another type".into()));
        }
        match self.chunks.as_slice() {
            [] => decode_payload(&[]),
            [one] => decode_payload(one),
            many => {
                let mut reader = ChunkReader { rest: many, current: &[] };
                let msg = bincode::serde::decode_from_reader::<T, _, _>(&mut reader, config())
                    .map_err(|e| CodecError::Undecodable(e.to_string()))?;
                match reader.remaining() {
                    0 => Ok(msg),
                    n => Err(CodecError::TrailingBytes(n)),
                }
            }
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self::from_chunks([Bytes::from(bytes)])
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self::from_chunks([bytes])
    }
}

/// bincode reader over a chunk list. Reads within the current chunk (nearly
/// all of them: values are 4 or 8 bytes, chunks tens of kilobytes) take the
/// same path as bincode's own slice reader.
struct ChunkReader<'a> {
    rest: &'a [Bytes],
    current: &'a [u8],
}

impl ChunkReader<'_> {
    fn remaining(&self) -> usize {
        self.current.len() + self.rest.iter().map(Bytes::len).sum::<usize>()
    }

    #[cold]
    fn read_across(&mut self, mut out: &mut [u8]) -> Result<(), DecodeError> {
        loop {
            let n = out.len().min(self.current.len());
            let (now, later) = self.current.split_at(n);
            out[..n].copy_from_slice(now);
            self.current = later;
            out = &mut out[n..];
            if out.is_empty() {
                return Ok(());
            }
            let Some((next, rest)) = self.rest.split_first() else {
                return Err(DecodeError::UnexpectedEnd { additional: out.len() });
            };
            self.current = next;
            self.rest = rest;
        }
    }
}

impl Reader for ChunkReader<'_> {
    #[inline(always)]
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), DecodeError> {
        if let Some((now, later)) = self.current.split_at_checked(bytes.len()) {
            bytes.copy_from_slice(now);
            self.current = later;
            Ok(())
        } else {
            self.read_across(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{HEADER_LEN, Limits, encode_frame};
    use crate::message::ClientMsg;
    use proptest::prelude::*;

    fn payload_of(msg: &ClientMsg) -> Vec<u8> {
        encode_frame(msg, &Limits::default()).unwrap()[HEADER_LEN..].to_vec()
    }

    /// `bytes` cut at the given (sorted, deduplicated) positions.
    fn split(bytes: &[u8], cuts: &[usize]) -> Payload {
        let mut at = 0;
        let mut chunks = Vec::new();
        for &c in cuts.iter().chain([&bytes.len()]) {
            chunks.push(Bytes::copy_from_slice(&bytes[at..c]));
            at = c;
        }
        Payload::from_chunks(chunks)
    }

    #[test]
    fn a_value_payload_decodes_to_the_value_with_the_frame_length() {
        let msg = ClientMsg::PlainChunk { round: 1, offset: 0, values: vec![0.5; 10] };
        let len = payload_of(&msg).len();
        let p = Payload::from_value(Arc::new(msg.clone()), len);
        assert_eq!((p.len(), p.chunks().len()), (len, 0));
        assert_eq!(p.decode::<ClientMsg>().unwrap(), msg);
        assert!(matches!(p.decode::<crate::message::AggregatorMsg>(), Err(CodecError::Undecodable(_))));
    }

    #[test]
    fn empty_payload_is_undecodable_not_a_panic() {
        assert!(matches!(Payload::default().decode::<ClientMsg>(), Err(CodecError::Undecodable(_))));
    }

    #[test]
    fn trailing_bytes_across_chunks_are_refused() {
        let mut bytes = payload_of(&ClientMsg::PlainChunk { round: 1, offset: 0, values: vec![0.5; 10] });
        bytes.extend_from_slice(&[0, 0, 0]);
        let cut = bytes.len() / 2;
        assert_eq!(split(&bytes, &[cut, bytes.len() - 1]).decode::<ClientMsg>(), Err(CodecError::TrailingBytes(3)));
    }

    #[test]
    fn truncation_inside_a_value_across_chunks_is_undecodable() {
        let bytes = payload_of(&ClientMsg::PlainChunk { round: 1, offset: 0, values: vec![0.5; 10] });
        let short = &bytes[..bytes.len() - 2];
        assert!(matches!(split(short, &[7, 13]).decode::<ClientMsg>(), Err(CodecError::Undecodable(_))));
    }

    proptest! {
        /// However the bytes are cut, the chunked decode equals the contiguous one.
        #[test]
        fn any_chunking_decodes_like_the_whole(
            values in proptest::collection::vec(any::<f32>().prop_filter("comparable", |v| !v.is_nan()), 0..64),
            cuts in proptest::collection::vec(0usize..300, 0..8),
        ) {
            let msg = ClientMsg::PlainChunk { round: 7, offset: 3, values };
            let bytes = payload_of(&msg);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let payload = split(&bytes, &cuts);
            prop_assert_eq!(payload.len(), bytes.len());
            prop_assert_eq!(payload.to_vec(), bytes.clone());
            prop_assert_eq!(payload.decode::<ClientMsg>().unwrap(), msg);
        }

        #[test]
        fn arbitrary_chunks_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        ) {
            let payload = Payload::from_chunks(chunks.into_iter().map(Bytes::from));
            let _ = payload.decode::<ClientMsg>();
            let _ = payload.decode::<crate::message::AggregatorMsg>();
        }
    }
}
