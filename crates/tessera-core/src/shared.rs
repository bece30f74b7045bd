//! Lists that every member of a round receives in the same form (the
//! cohort, the graph roster, the graph reveals, the survivor set), held
//! once and shared.
//!
//! In one process (the simulator, or many members over QUIC in a load
//! test), n members of a cohort of n would otherwise each decode, check and
//! keep a copy of an O(n) list: O(n²) time and memory for the process
//! (docs/benchmarks.md, "Protocol scale"). A [`SharedList`] is one
//! immutable list behind an `Arc`, so the in-memory transport can hand
//! every member the same one, and it memoizes what is computed from its
//! contents ([`SharedList::memo`]): a check or digest is then done once per
//! list instead of once per member, and each member still gets exactly the
//! result it would have computed itself, because the list cannot change
//! after it is built. Decoding interns lists per process (`intern`): a
//! member that decodes a list equal to one another member of the process
//! still holds gets that same list, memo included.
//!
//! On the wire a `SharedList<T>` is exactly a `Vec<T>`: the codec sees a
//! sequence either way, so the format does not change.

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::PartyId;
use crate::codec::{CodecError, frame_len, seq_len};
use crate::message::AggregatorMsg;

mod intern;
mod value;

pub use value::Shared;

/// Memoized results kept per list, at most; a caller that asks for more
/// distinct keys gets its result computed but not kept, so a list that
/// hostile input reaches cannot grow without bound.
const MEMO_ENTRIES: usize = 16;

type MemoEntry = (TypeId, [u8; 32], Arc<dyn Any + Send + Sync>);

/// An immutable list shared by reference: cloning it is one reference
/// count, and results computed from its contents are memoized with it. It
/// encodes as a `Vec<T>` would. See the module documentation.
pub struct SharedList<T>(Arc<Inner<T>>);

struct Inner<T> {
    items: Box<[T]>,
    memo: Mutex<Vec<MemoEntry>>,
}

impl<T> Inner<T> {
    fn new(items: Vec<T>) -> Self {
        Self { items: items.into_boxed_slice(), memo: Mutex::new(Vec::new()) }
    }
}

impl<T> SharedList<T> {
    /// The list's items.
    pub fn as_slice(&self) -> &[T] {
        &self.0.items
    }

    /// Whether `a` and `b` are the same shared list (not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// `compute(items)`, computed once per list for each `key` and result
    /// type `V`, and returned from the memo afterwards. `key` must name
    /// every input of `compute` besides the items (a digest of them, with
    /// a domain tag), since every later caller with the same key and type
    /// gets the first result. The memo is locked while `compute` runs:
    /// concurrent callers wait for the one result rather than repeat the
    /// work, and `compute` must not call `memo` on this same list.
    ///
    /// The memo is shared by every member of a process. Decoding interns
    /// lists (`shared/intern.rs`), so members that decoded equal lists hold
    /// one list and read the first caller's result. That is safe because a
    /// result is a function of `key` and the items alone, both of which
    /// every caller supplies itself: it gets exactly what it would have
    /// computed. So nothing private to one member (its secrets, its view of
    /// the round) may be an input of `compute` unless it is in `key`, and
    /// results must not be mutated through interior mutability. An
    /// aggregator that equivocates, sending members different lists,
    /// makes different lists (items are compared in full before interning)
    /// and so different memos; it cannot make one member's check stand in
    /// for another's on different data.
    pub fn memo<V: Any + Send + Sync>(&self, key: [u8; 32], compute: impl FnOnce(&[T]) -> V) -> Arc<V> {
        let mut memo = self.0.memo.lock().unwrap_or_else(PoisonError::into_inner);
        let ty = TypeId::of::<V>();
        if let Some((_, _, v)) = memo.iter().find(|(t, k, _)| *t == ty && *k == key)
            && let Ok(v) = v.clone().downcast::<V>()
        {
            return v;
        }
        let v = Arc::new(compute(&self.0.items));
        if memo.len() < MEMO_ENTRIES {
            memo.push((ty, key, v.clone()));
        }
        v
    }
}

impl<T: Serialize> SharedList<T> {
    /// Bytes the list takes in an encoded message (its length prefix
    /// included), memoized.
    pub fn encoded_len(&self) -> Result<usize, CodecError> {
        struct EncodedLen(Result<usize, CodecError>);
        self.memo([0; 32], |items| EncodedLen(seq_len(items))).0.clone()
    }
}

impl<T> std::ops::Deref for SharedList<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0.items
    }
}

impl<T> From<Vec<T>> for SharedList<T> {
    fn from(items: Vec<T>) -> Self {
        Self(Arc::new(Inner::new(items)))
    }
}

impl<T> FromIterator<T> for SharedList<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<T>>().into()
    }
}

impl<T> Clone for SharedList<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for SharedList<T> {
    fn default() -> Self {
        Vec::new().into()
    }
}

impl<T: PartialEq> PartialEq for SharedList<T> {
    fn eq(&self, other: &Self) -> bool {
        Self::ptr_eq(self, other) || self.0.items == other.0.items
    }
}

impl<T: Eq> Eq for SharedList<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for SharedList<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.items.iter()).finish()
    }
}

/// A sequence, exactly as `Vec<T>` encodes.
impl<T: Serialize> Serialize for SharedList<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.items.iter())
    }
}

/// A sequence, exactly as `Vec<T>` decodes, interned: equal to a list
/// still alive in this process, it is that list (see the module docs).
impl<'de, T> Deserialize<'de> for SharedList<T>
where
    T: Deserialize<'de> + Serialize + PartialEq + Send + Sync + 'static,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(deserializer).map(|items| Self(intern::intern(items)))
    }
}

#[cfg(feature = "arbitrary")]
impl<'a, T: arbitrary::Arbitrary<'a>> arbitrary::Arbitrary<'a> for SharedList<T> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Vec::<T>::arbitrary(u).map(Self::from)
    }
}

impl AggregatorMsg {
    /// The length [`encode_frame`](crate::encode_frame) would give this
    /// message, as [`frame_len`] computes it, but with each shared list's
    /// encoded length taken from its memo: the aggregator counts every
    /// member's traffic, and the lists every member gets would otherwise
    /// be measured again for each of them.
    pub fn frame_len(&self) -> Result<usize, CodecError> {
        let empty = |l: usize| l.checked_sub(seq_len::<u8>(&[]).unwrap_or(0));
        let with = |stripped: AggregatorMsg, list: Result<usize, CodecError>| -> Result<usize, CodecError> {
            let extra = empty(list?).ok_or_else(|| CodecError::Unencodable("list length".into()))?;
            Ok(frame_len(&stripped)? + extra)
        };
        match self {
            AggregatorMsg::RoundStart { round, settings, cohort, party } => with(
                AggregatorMsg::RoundStart {
                    round: *round,
                    settings: settings.clone(),
                    cohort: SharedList::default(),
                    party: *party,
                },
                cohort.encoded_len(),
            ),
            AggregatorMsg::GraphRoster { round, commitments } => with(
                AggregatorMsg::GraphRoster { round: *round, commitments: SharedList::default() },
                commitments.encoded_len(),
            ),
            // Each advertisement's length is memoized with it; a pair
            // encodes as its party, then its advertisement.
            AggregatorMsg::CohortKeys { round, adverts, reveals } => {
                let parties: Vec<PartyId> = adverts.iter().map(|(p, _)| *p).collect();
                let adverts_len = adverts.iter().try_fold(seq_len(&parties)?, |n, (_, a)| Ok(n + a.encoded_len()?))?;
                let extra = empty(adverts_len).ok_or_else(|| CodecError::Unencodable("list length".into()))?;
                let stripped =
                    AggregatorMsg::CohortKeys { round: *round, adverts: Vec::new(), reveals: SharedList::default() };
                Ok(with(stripped, reveals.encoded_len())? + extra)
            }
            AggregatorMsg::SurvivorSet { round, survivors } => with(
                AggregatorMsg::SurvivorSet { round: *round, survivors: SharedList::default() },
                survivors.encoded_len(),
            ),
            other => frame_len(other),
        }
    }

    /// Whether the message carries a [`SharedList`] every member of the
    /// round receives alike; an in-process transport hands such messages
    /// over as values ([`Payload::from_value`](crate::Payload::from_value)).
    pub fn carries_shared_list(&self) -> bool {
        matches!(
            self,
            AggregatorMsg::RoundStart { .. }
                | AggregatorMsg::GraphRoster { .. }
                | AggregatorMsg::CohortKeys { .. }
                | AggregatorMsg::SurvivorSet { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{HEADER_LEN, Limits, decode_payload, encode_frame};
    use crate::round::plain_settings as settings;

    fn advert(i: u8) -> Shared<crate::Advertisement> {
        Shared::new(crate::Advertisement {
            keys: crate::PublicKeys { cipher_pk: [i; 32], mask_pk: [i + 1; 32] },
            seed_commitment: [2; 32],
            graph_commitment: [4; 32],
            certificate: vec![i; 300 + usize::from(i)],
            signature: vec![5; 64],
        })
    }

    fn messages() -> Vec<AggregatorMsg> {
        let cohort: SharedList<String> = (0..300).map(|i| format!("member-{i:04}")).collect();
        let pairs: SharedList<(u32, [u8; 32])> = (0..300).map(|i| (i, [i as u8; 32])).collect();
        vec![
            AggregatorMsg::RoundStart { round: 7, settings: settings(), cohort, party: 299 },
            AggregatorMsg::GraphRoster { round: 7, commitments: pairs.clone() },
            AggregatorMsg::CohortKeys { round: 7, adverts: Vec::new(), reveals: pairs.clone() },
            // Two advertisements of different lengths, each after its party index
            // (the codec writes fixed-width integers: four bytes a party).
            AggregatorMsg::CohortKeys { round: 7, adverts: vec![(3, advert(3)), (300, advert(9))], reveals: pairs },
            AggregatorMsg::SurvivorSet { round: 7, survivors: (0..300).collect() },
            AggregatorMsg::SurvivorSet { round: 7, survivors: SharedList::default() },
        ]
    }

    #[test]
    fn a_shared_list_encodes_as_a_vec() {
        let list: SharedList<String> = vec!["a".to_string(), "bc".to_string()].into();
        let as_vec = vec!["a".to_string(), "bc".to_string()];
        assert_eq!(crate::to_bytes(&list).unwrap(), crate::to_bytes(&as_vec).unwrap());
        let back: SharedList<String> = decode_payload(&crate::to_bytes(&as_vec).unwrap()).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn the_memoized_frame_length_is_the_encoded_one() {
        for msg in messages() {
            let encoded = encode_frame(&msg, &Limits::default()).unwrap();
            assert_eq!(msg.frame_len().unwrap(), encoded.len(), "{:?}", msg.kind());
            assert_eq!(msg.frame_len().unwrap(), frame_len(&msg).unwrap());
            // Twice: the second comes from the memo.
            assert_eq!(msg.frame_len().unwrap(), encoded.len());
            let back: AggregatorMsg = decode_payload(&encoded[HEADER_LEN..]).unwrap();
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn memo_computes_once_per_key_and_type() {
        let list: SharedList<u32> = vec![3, 1, 2].into();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let sum = |items: &[u32]| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            items.iter().sum::<u32>()
        };
        let copy = list.clone();
        assert_eq!(*list.memo([1; 32], sum), 6);
        assert_eq!(*copy.memo([1; 32], sum), 6);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Another key is another computation; so is another result type.
        assert_eq!(*list.memo([2; 32], sum), 6);
        assert_eq!(*list.memo([1; 32], |items| items.len()), 3);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
        // A list built equal but apart shares nothing.
        let other: SharedList<u32> = vec![3, 1, 2].into();
        assert!(!SharedList::ptr_eq(&list, &other) && list == other);
        assert_eq!(*other.memo([1; 32], sum), 6);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn the_memo_is_bounded() {
        let list: SharedList<u32> = vec![1].into();
        for k in 0..(MEMO_ENTRIES as u8 + 4) {
            assert_eq!(*list.memo([k; 32], |items| items[0] + u32::from(k)), 1 + u32::from(k));
        }
        assert_eq!(list.0.memo.lock().unwrap().len(), MEMO_ENTRIES);
    }
}
