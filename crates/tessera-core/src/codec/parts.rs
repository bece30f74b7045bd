//! Frames whose O(n) part is encoded once and shared between connections.
//!
//! Four aggregator messages carry a list every member of the round is sent
//! alike ([`SharedList`]: the cohort, the graph roster, the graph reveals,
//! the survivor set). Encoded per connection, each of n members gets its
//! own O(n) buffer, and QUIC keeps every buffer until the member
//! acknowledges it: O(n²) bytes held by the aggregator in each such phase
//! (8.45 GiB at 10,000 members; docs/benchmarks.md, "Load: the aggregator
//! daemon at 10,000 members"). [`AggregatorMsg::encode_frame_parts`]
//! instead encodes the list once, memoized in the list itself, and returns
//! the frame as reference-counted [`Bytes`] pieces: the few bytes before
//! and after the list are the member's own, the list's bytes are the same
//! allocation for every member. A transport that writes the pieces in
//! order (quinn's `write_all_chunks` queues them without copying) sends
//! exactly the bytes [`encode_frame`] would have given; the wire format
//! does not change.
//!
//! The encoded list lives as long as the list: once the round moves on and
//! every queued message of it has been sent, the last reference goes and
//! the bytes with it. Nothing needs to be cleared.

use bytes::Bytes;
use serde::Serialize;

use super::{CodecError, HEADER_LEN, Limits, encode_frame, encode_unframed, frame_header_len, to_bytes};
use crate::message::AggregatorMsg;
use crate::shared::SharedList;

/// One complete frame as pieces whose concatenation is exactly what
/// [`encode_frame`] gives for the same message. Cloning it clones
/// reference counts, not bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameParts {
    parts: Vec<Bytes>,
    len: usize,
}

impl FrameParts {
    /// A frame from pieces in wire order. The codec builds frames itself;
    /// this is for callers that hold pieces already (tests of a transport
    /// that checks them). Nothing is validated here.
    pub fn from_parts(parts: Vec<Bytes>) -> Self {
        let len = parts.iter().map(Bytes::len).sum();
        Self { parts, len }
    }

    /// The frame's length in bytes, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no bytes (never, for a frame the codec built).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in wire order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The pieces, in wire order, to hand to a transport.
    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }

    /// The frame in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for p in &self.parts {
            out.extend_from_slice(p);
        }
        out
    }
}

impl From<Vec<u8>> for FrameParts {
    fn from(frame: Vec<u8>) -> Self {
        let len = frame.len();
        Self { parts: vec![Bytes::from(frame)], len }
    }
}

/// The memo key of a list's encoded bytes (see [`SharedList::memo`]): the
/// encoding has no input besides the items, so a domain tag names it.
const SEQ_KEY: [u8; 32] = *b"tessera codec: sequence bytes v1";

/// A list's bytes inside an encoded message, as memoized with the list.
struct EncodedSeq(Result<Bytes, CodecError>);

/// `list` encoded as a sequence (its length prefix, then each item), once
/// per list: later calls, for any member, return the same allocation.
fn encoded_seq<T: Serialize>(list: &SharedList<T>) -> Result<Bytes, CodecError> {
    list.memo(SEQ_KEY, |items| EncodedSeq(to_bytes(&items).map(Bytes::from))).0.clone()
}

impl AggregatorMsg {
    /// This message as one frame in pieces: for the four messages that
    /// carry a [`SharedList`], the list's bytes are encoded once per list
    /// and shared by every member's frame (module documentation); any other
    /// message is one piece, [`encode_frame`]'s buffer. The bytes, and the
    /// errors (an oversize frame included), are [`encode_frame`]'s.
    pub fn encode_frame_parts(&self, limits: &Limits) -> Result<FrameParts, CodecError> {
        // The message with its list emptied, the list's bytes, and the
        // length of what the message encodes after the list.
        let (stripped, list, after) = match self {
            AggregatorMsg::RoundStart { round, settings, cohort, party } => (
                AggregatorMsg::RoundStart {
                    round: *round,
                    settings: settings.clone(),
                    cohort: SharedList::default(),
                    party: *party,
                },
                encoded_seq(cohort)?,
                to_bytes(party)?.len(),
            ),
            AggregatorMsg::GraphRoster { round, commitments } => (
                AggregatorMsg::GraphRoster { round: *round, commitments: SharedList::default() },
                encoded_seq(commitments)?,
                0,
            ),
            AggregatorMsg::CohortKeys { round, adverts, reveals } => (
                AggregatorMsg::CohortKeys { round: *round, adverts: adverts.clone(), reveals: SharedList::default() },
                encoded_seq(reveals)?,
                0,
            ),
            AggregatorMsg::SurvivorSet { round, survivors } => (
                AggregatorMsg::SurvivorSet { round: *round, survivors: SharedList::default() },
                encoded_seq(survivors)?,
                0,
            ),
            other => return encode_frame(other, limits).map(FrameParts::from),
        };
        splice(&encode_unframed(&stripped)?, list, after, limits)
    }
}

/// Put `list` where the empty list sits in `unframed` (a frame without its
/// length, whose last `after` bytes follow the list) and write the length.
fn splice(unframed: &[u8], list: Bytes, after: usize, limits: &Limits) -> Result<FrameParts, CodecError> {
    let empty = to_bytes(&Vec::<u8>::new())?;
    let at = unframed.len().checked_sub(after + empty.len()).filter(|&at| at >= HEADER_LEN);
    let Some(at) = at.filter(|&at| unframed[at..at + empty.len()] == empty[..]) else {
        // The message's layout is not the one assumed above: a bug here,
        // never a wrong frame on the wire.
        return Err(CodecError::Unencodable("spliced frame: the empty list is not where expected".into()));
    };
    let tail = &unframed[at + empty.len()..];
    let payload = at - HEADER_LEN + list.len() + tail.len();
    let mut head = unframed[..at].to_vec();
    head[1..HEADER_LEN].copy_from_slice(&frame_header_len(payload, limits)?);
    let mut parts = vec![Bytes::from(head), list];
    if !tail.is_empty() {
        parts.push(Bytes::copy_from_slice(tail));
    }
    Ok(FrameParts { parts, len: HEADER_LEN + payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Advertisement, PublicKeys};
    use crate::round::plain_settings as settings;

    fn advert(i: u8) -> crate::Shared<Advertisement> {
        crate::Shared::new(Advertisement {
            keys: PublicKeys { cipher_pk: [i; 32], mask_pk: [i + 1; 32] },
            seed_commitment: [3; 32],
            graph_commitment: [6; 32],
            certificate: vec![i; 300],
            signature: vec![5; 72],
        })
    }

    /// Two members' messages of each kind that carries a shared list (the
    /// per-member fields differ, the lists are the same ones), and one that
    /// carries none.
    fn pairs() -> Vec<(AggregatorMsg, AggregatorMsg)> {
        let cohort: SharedList<String> = (0..300).map(|i| format!("member-{i:04}")).collect();
        let pairs: SharedList<(u32, [u8; 32])> = (0..300).map(|i| (i, [i as u8; 32])).collect();
        let survivors: SharedList<u32> = (0..300).collect();
        let none = SharedList::default();
        let start = |party| AggregatorMsg::RoundStart { round: 7, settings: settings(), cohort: cohort.clone(), party };
        let keys = |adverts| AggregatorMsg::CohortKeys { round: 7, adverts, reveals: pairs.clone() };
        vec![
            (start(0), start(299)),
            (
                AggregatorMsg::GraphRoster { round: 7, commitments: pairs.clone() },
                AggregatorMsg::GraphRoster { round: 7, commitments: pairs.clone() },
            ),
            (keys(vec![(1, advert(1)), (2, advert(2))]), keys(vec![(0, advert(9))])),
            (
                AggregatorMsg::SurvivorSet { round: 7, survivors: survivors.clone() },
                AggregatorMsg::SurvivorSet { round: 8, survivors },
            ),
            (
                AggregatorMsg::SurvivorSet { round: 7, survivors: none.clone() },
                AggregatorMsg::SurvivorSet { round: 7, survivors: none },
            ),
        ]
    }

    /// The spliced frame is byte for byte `encode_frame`'s, for every
    /// member, and the list's bytes are one allocation shared by all.
    #[test]
    fn the_spliced_frame_is_the_encoded_frame_and_shares_the_list() {
        let l = Limits::default();
        for (a, b) in pairs() {
            let (fa, fb) = (a.encode_frame_parts(&l).unwrap(), b.encode_frame_parts(&l).unwrap());
            for (msg, f) in [(&a, &fa), (&b, &fb)] {
                let plain = encode_frame(msg, &l).unwrap();
                assert_eq!(f.to_vec(), plain, "{:?}", msg.kind());
                assert_eq!(f.len(), plain.len());
                assert!(f.parts().len() >= 2, "{:?} was not spliced", msg.kind());
            }
            let (la, lb) = (&fa.parts()[1], &fb.parts()[1]);
            assert_eq!(la.as_ptr(), lb.as_ptr(), "{:?}: each member got its own copy of the list", a.kind());
        }
    }

    #[test]
    fn a_message_without_a_shared_list_is_one_piece() {
        let l = Limits::default();
        let msg = AggregatorMsg::UnmaskRequest { round: 3, signatures: vec![(1, vec![2; 70])] };
        let f = msg.encode_frame_parts(&l).unwrap();
        assert_eq!(f.parts().len(), 1);
        assert_eq!(f.to_vec(), encode_frame(&msg, &l).unwrap());
    }

    #[test]
    fn an_oversize_spliced_frame_is_refused_as_encode_frame_refuses_it() {
        let l = Limits { max_frame_bytes: 1000, chunk_values: 16 };
        for (msg, _) in pairs().into_iter().take(4) {
            assert!(matches!(encode_frame(&msg, &l), Err(CodecError::Oversize { .. })));
            assert_eq!(msg.encode_frame_parts(&l), Err(encode_frame(&msg, &l).unwrap_err()));
        }
    }
}
