//! The audit log's hash chain. Each entry stores the SHA-256 of the entry
//! before it and its own hash over (previous hash, sequence number, time,
//! kind, body), so altering, deleting or reordering any stored entry breaks
//! the chain at a nameable place. A separate head record (last sequence
//! number and hash) makes deleting the newest entries visible too.
//!
//! Storage lives in [`crate::StateStore`]; this module only computes and
//! checks.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The "previous hash" of the first entry.
pub(crate) const GENESIS: [u8; 32] = [0; 32];

/// One stored audit entry, as read back from the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1 with no gaps.
    pub seq: u64,
    /// When it was written, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What happened, e.g. `round_finished`, `member_revoked`.
    pub kind: String,
    /// JSON object; hashed byte for byte as stored.
    pub body: String,
    /// The previous entry's `hash` (all zeros for the first), hex.
    pub prev_hash: String,
    /// SHA-256 over (previous hash, seq, time, kind, body), hex.
    pub hash: String,
}

/// The hash of an entry, binding it to its predecessor.
pub(crate) fn entry_hash(prev: &[u8; 32], seq: u64, at_ms: i64, kind: &str, body: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tessera-audit-v1");
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(at_ms.to_le_bytes());
    h.update((kind.len() as u64).to_le_bytes());
    h.update(kind.as_bytes());
    h.update((body.len() as u64).to_le_bytes());
    h.update(body.as_bytes());
    h.finalize().into()
}

/// Where the chain is broken; the first problem found, in chain order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditBreak {
    /// A sequence number is skipped: an entry was deleted.
    #[error("audit entry {seq} is missing (the next stored entry is {next})")]
    Missing {
        /// The missing entry.
        seq: u64,
        /// The entry stored where it should be.
        next: u64,
    },
    /// An entry's contents no longer hash to its stored hash.
    #[error("audit entry {seq} ({kind}) was altered: its contents do not match its stored hash")]
    Altered {
        /// The altered entry.
        seq: u64,
        /// Its kind.
        kind: String,
    },
    /// Entry `next` links to a hash other than entry `seq`'s: one of the
    /// two was altered and re-hashed.
    #[error(
        "audit entry {seq} ({kind}) does not match the hash entry {next} recorded for it: one of the two was altered"
    )]
    Unlinked {
        /// The entry whose hash its successor does not record.
        seq: u64,
        /// Its kind.
        kind: String,
        /// The successor.
        next: u64,
    },
    /// The newest entries were deleted: the head counts more than remain.
    #[error("audit entry {seq} is missing: the head records {head} entries but only {stored} are stored")]
    Truncated {
        /// The first missing entry.
        seq: u64,
        /// Entries the head record counts.
        head: u64,
        /// Entries stored.
        stored: u64,
    },
    /// The newest entry is not the one the head record names (altered and
    /// re-hashed, or the head itself edited).
    #[error("audit entry {seq} ({kind}) is not the entry the head records as the newest")]
    HeadMismatch {
        /// The entry the head disagrees with.
        seq: u64,
        /// Its kind.
        kind: String,
    },
}

impl AuditBreak {
    /// The sequence number of the first broken entry.
    pub fn seq(&self) -> u64 {
        match self {
            AuditBreak::Missing { seq, .. }
            | AuditBreak::Altered { seq, .. }
            | AuditBreak::Unlinked { seq, .. }
            | AuditBreak::Truncated { seq, .. }
            | AuditBreak::HeadMismatch { seq, .. } => *seq,
        }
    }
}

/// Check a chain read in sequence order against its head `(seq, hash)`.
/// Returns the number of entries on success.
pub(crate) fn verify(entries: &[AuditEntry], head: Option<(u64, String)>) -> Result<u64, AuditBreak> {
    let mut prev_hash = GENESIS;
    let mut prev: Option<&AuditEntry> = None;
    for (i, e) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        if e.seq != expected {
            return Err(AuditBreak::Missing { seq: expected, next: e.seq });
        }
        if e.prev_hash != hex::encode(prev_hash) {
            return Err(match prev {
                Some(p) => AuditBreak::Unlinked { seq: p.seq, kind: p.kind.clone(), next: e.seq },
                // The first entry must link to GENESIS: it was edited itself.
                None => AuditBreak::Altered { seq: e.seq, kind: e.kind.clone() },
            });
        }
        let hash = entry_hash(&prev_hash, e.seq, e.at_ms, &e.kind, &e.body);
        if e.hash != hex::encode(hash) {
            return Err(AuditBreak::Altered { seq: e.seq, kind: e.kind.clone() });
        }
        prev_hash = hash;
        prev = Some(e);
    }
    let stored = entries.len() as u64;
    if let Some((head_seq, head_hash)) = head {
        if head_seq > stored {
            return Err(AuditBreak::Truncated { seq: stored + 1, head: head_seq, stored });
        }
        if head_seq < stored || head_hash != hex::encode(prev_hash) {
            let e = &entries[head_seq.max(1) as usize - 1];
            return Err(AuditBreak::HeadMismatch { seq: e.seq, kind: e.kind.clone() });
        }
    } else if stored > 0 {
        let e = &entries[stored as usize - 1];
        return Err(AuditBreak::HeadMismatch { seq: e.seq, kind: e.kind.clone() });
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (Vec<AuditEntry>, (u64, String)) {
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for seq in 1..=n {
            let body = format!("{{\"round\":{seq}}}");
            let hash = entry_hash(&prev, seq, 1000 + seq as i64, "round_started", &body);
            out.push(AuditEntry {
                seq,
                at_ms: 1000 + seq as i64,
                kind: "round_started".into(),
                body,
                prev_hash: hex::encode(prev),
                hash: hex::encode(hash),
            });
            prev = hash;
        }
        (out, (n, hex::encode(prev)))
    }

    #[test]
    fn intact_chain_verifies() {
        let (c, head) = chain(5);
        assert_eq!(verify(&c, Some(head)), Ok(5));
        assert_eq!(verify(&[], None), Ok(0));
    }

    #[test]
    fn each_kind_of_tampering_names_the_entry() {
        let (c, head) = chain(5);
        let mut altered = c.clone();
        altered[2].body = "{\"round\":99}".into();
        assert_eq!(verify(&altered, Some(head.clone())).unwrap_err().seq(), 3);

        let mut deleted = c.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted, Some(head.clone())), Err(AuditBreak::Missing { seq: 2, next: 3 }));

        let mut tail = c.clone();
        tail.pop();
        assert_eq!(verify(&tail, Some(head.clone())).unwrap_err().seq(), 5);

        // Altered and re-hashed: the successor's link names it.
        let mut rehashed = c.clone();
        rehashed[1].body = "{\"round\":42}".into();
        let prev: [u8; 32] = hex::decode(&rehashed[1].prev_hash).unwrap().try_into().unwrap();
        rehashed[1].hash = hex::encode(entry_hash(&prev, 2, rehashed[1].at_ms, "round_started", &rehashed[1].body));
        assert_eq!(verify(&rehashed, Some(head.clone())).unwrap_err().seq(), 2);

        // The newest entry re-hashed: only the head can tell.
        let mut last = c.clone();
        last[4].body = "{}".into();
        let prev: [u8; 32] = hex::decode(&last[4].prev_hash).unwrap().try_into().unwrap();
        last[4].hash = hex::encode(entry_hash(&prev, 5, last[4].at_ms, "round_started", "{}"));
        assert_eq!(verify(&last, Some(head)).unwrap_err().seq(), 5);
    }
}
