//! Decoded shared lists, interned per process.
//!
//! Over QUIC every member decodes the round's lists (the cohort, the graph
//! roster, the graph reveals, the survivor set) from its own frames. A
//! process that hosts many members (a load test, a simulation worker) would
//! then hold one O(n) copy per member, O(n²) in all: 17.8 GiB for 10,000
//! members (docs/benchmarks.md, "Load: the aggregator daemon at 10,000
//! members"). So decoding interns each list: a list whose items equal those
//! of a list decoded earlier in this process and still alive becomes that
//! same list (one `Arc`), and with it shares the memo, so what members
//! compute from the list (its checks, its digest, the neighbour graph) is
//! computed once per process. A process with one member pays one SHA-256
//! over each list it decodes.
//!
//! Lists are the same only if their items are equal: the SHA-256 of the
//! list's encoding finds the candidate, and the items are then compared in
//! full, so no input can make two different lists alias (at worst, equal
//! lists are not shared). Lists of different item types never alias: the
//! type is part of the key. The table holds weak references: a list is
//! freed when its last holder drops it, and dead entries are pruned as the
//! table grows (amortized O(1) per decode), so the table stays within about
//! twice the lists alive plus [`PRUNE_FLOOR`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use serde::Serialize;

use super::Inner;
use crate::codec::seq_digest;

/// The table is pruned of dead entries no sooner than at this size.
const PRUNE_FLOOR: usize = 64;

/// A list's item type and the SHA-256 of its encoding.
type Key = (TypeId, [u8; 32]);

/// The lists decoded in this process, by key, held weakly.
struct Table {
    entries: HashMap<Key, Weak<dyn Any + Send + Sync>>,
    /// Dead entries are dropped when the table grows past this.
    prune_at: usize,
}

impl Table {
    fn insert(&mut self, key: Key, list: Weak<dyn Any + Send + Sync>) {
        self.entries.insert(key, list);
        if self.entries.len() > self.prune_at {
            self.entries.retain(|_, l| l.strong_count() > 0);
            self.prune_at = (2 * self.entries.len()).max(PRUNE_FLOOR);
        }
    }
}

static TABLE: LazyLock<Mutex<Table>> =
    LazyLock::new(|| Mutex::new(Table { entries: HashMap::new(), prune_at: PRUNE_FLOOR }));

fn table() -> MutexGuard<'static, Table> {
    // The table is consistent between statements: a panic elsewhere while
    // it was locked leaves nothing half-done.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `items` as a shared list: the live list of this process with equal
/// items if there is one, else a new one, entered in the table. The
/// table's lock is held for a lookup and an insert only; hashing and the
/// comparison of items happen outside it.
pub(super) fn intern<T>(items: Vec<T>) -> Arc<Inner<T>>
where
    T: Serialize + PartialEq + Send + Sync + 'static,
{
    let fresh = Arc::new(Inner::new(items));
    if fresh.items.is_empty() {
        return fresh;
    }
    // A list that does not encode (none that decoded) is simply not shared.
    let Ok(digest) = seq_digest(&fresh.items) else {
        return fresh;
    };
    let key = (TypeId::of::<T>(), digest);
    let existing = {
        let mut t = table();
        let existing = t.entries.get(&key).and_then(Weak::upgrade);
        if existing.is_none() {
            let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(&fresh) as Weak<dyn Any + Send + Sync>;
            t.insert(key, weak);
        }
        existing
    };
    match existing.map(|e| e.downcast::<Inner<T>>()) {
        Some(Ok(same)) if same.items == fresh.items => same,
        _ => fresh,
    }
}

#[cfg(test)]
fn table_len() -> usize {
    table().entries.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{HEADER_LEN, Limits, Payload, decode_payload, encode_frame, to_bytes};
    use crate::message::AggregatorMsg;
    use crate::round::plain_settings;
    use crate::shared::SharedList;
    use bytes::Bytes;

    fn round_start(cohort: SharedList<String>) -> Vec<u8> {
        let msg = AggregatorMsg::RoundStart { round: 3, settings: plain_settings(), cohort, party: 1 };
        encode_frame(&msg, &Limits::default()).unwrap()[HEADER_LEN..].to_vec()
    }

    fn cohort_of(payload: &Payload) -> SharedList<String> {
        match payload.decode::<AggregatorMsg>().unwrap() {
            AggregatorMsg::RoundStart { cohort, .. } => cohort,
            other => panic!("not a RoundStart: {:?}", other.kind()),
        }
    }

    #[test]
    fn two_decodes_of_the_same_frame_share_one_list() {
        let names: SharedList<String> = (0..500).map(|i| format!("intern-share-{i:04}")).collect();
        let bytes = round_start(names.clone());
        let one = cohort_of(&Payload::from(bytes.clone()));
        // The second arrives cut into pieces, as QUIC delivers it.
        let (a, b) = bytes.split_at(bytes.len() / 3);
        let two = cohort_of(&Payload::from_chunks([Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)]));
        assert!(SharedList::ptr_eq(&one, &two), "two members' decodes hold two copies");
        assert_eq!(one, names);
        // What is memoized on one is there for the other.
        let _ = one.memo([9; 32], |items| items.len());
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let _ = two.memo([9; 32], |items| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            items.len()
        });
        assert_eq!(calls.into_inner(), 0);
    }

    #[test]
    fn different_lists_never_alias() {
        let names = |last: &str| -> SharedList<String> {
            (0..200).map(|i| format!("intern-differ-{i:04}")).chain([last.to_string()]).collect()
        };
        let a = cohort_of(&Payload::from(round_start(names("zz-a"))));
        let b = cohort_of(&Payload::from(round_start(names("zz-b"))));
        assert!(!SharedList::ptr_eq(&a, &b));
        assert_eq!((a.last().unwrap().as_str(), b.last().unwrap().as_str()), ("zz-a", "zz-b"));
        // The same bytes read as another item type are another list.
        let bytes = to_bytes(&vec![0x0102_0304_u32, 0x0506_0708]).unwrap();
        let words: SharedList<u32> = decode_payload(&bytes).unwrap();
        let quads: SharedList<[u8; 4]> = decode_payload(&bytes).unwrap();
        let words_again: SharedList<u32> = decode_payload(&bytes).unwrap();
        assert_eq!(quads.as_slice(), &[[4, 3, 2, 1], [8, 7, 6, 5]]);
        assert!(SharedList::ptr_eq(&words, &words_again));
        assert_ne!(Arc::as_ptr(&words.0) as *const u8, Arc::as_ptr(&quads.0) as *const u8);
    }

    #[test]
    fn a_dropped_list_is_freed_and_the_table_stays_bounded() {
        let bytes = to_bytes(&(0..100u32).map(|i| i + 7_000_000).collect::<Vec<_>>()).unwrap();
        let list: SharedList<u32> = decode_payload(&bytes).unwrap();
        let weak = Arc::downgrade(&list.0);
        drop(list);
        assert!(weak.upgrade().is_none(), "the table keeps a dropped list alive");
        // Thousands of distinct lists, each dropped after its decode: the
        // table holds their dead entries only until the next prune.
        for n in 0..5_000u32 {
            let bytes = to_bytes(&vec![n, 8_000_000]).unwrap();
            let _: SharedList<u32> = decode_payload(&bytes).unwrap();
        }
        // Other tests may hold a few lists at the same time.
        assert!(table_len() <= 4 * PRUNE_FLOOR, "{} entries for no live list", table_len());
    }
}
