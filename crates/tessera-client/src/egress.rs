//! The egress ledger: one line for every message that leaves the site
//! (time, round, kind, byte count, SHA-256 of the frame). It is the evidence
//! a compliance officer reads to see that only masked updates, keys, shares
//! and aggregate metrics left — never a record. The ledger holds digests,
//! not payloads, so it is itself safe to hand over.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One outgoing message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EgressEntry {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The round the message belongs to; none for messages outside a round (`Hello`).
    pub round: Option<u64>,
    /// The message kind in snake case (`masked_chunk`), or `refusal`.
    pub kind: String,
    /// Size of the encoded frame, header included; 0 for a refusal.
    pub bytes: u64,
    /// SHA-256 of the encoded frame, hex; empty for a refusal.
    pub sha256: String,
    /// Set when the member refused an aggregator request (the refusal is
    /// recorded in the same ledger so the evidence is in one place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why the ledger could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Creating, writing, flushing or reading the file failed.
    #[error("egress ledger {path}")]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not an [`EgressEntry`].
    #[error("egress ledger {path}, line {line}: not a ledger entry")]
    Corrupt {
        /// The ledger file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
    },
}

/// Append-only ledger file (JSON lines). Each entry is flushed before the
/// frame it describes is handed to the transport.
pub struct EgressLedger {
    path: PathBuf,
    file: Option<File>,
    /// Entries kept in memory too when asked (tests, simulator).
    keep: Option<Vec<EgressEntry>>,
}

impl EgressLedger {
    /// Open `path` for appending (creating it and its folders); entries
    /// already there stay.
    pub fn open(path: &Path) -> Result<Self, EgressError> {
        let io = |source| EgressError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), file: Some(file), keep: None })
    }

    /// A ledger that only keeps entries in memory (simulated members).
    pub fn in_memory() -> Self {
        Self { path: PathBuf::from("<memory>"), file: None, keep: Some(Vec::new()) }
    }

    /// The entries recorded through this ledger, when it keeps them in
    /// memory ([`EgressLedger::in_memory`]); `None` for a file ledger.
    pub fn entries(&self) -> Option<&[EgressEntry]> {
        self.keep.as_deref()
    }

    /// Record a frame about to leave.
    pub fn record(&mut self, round: Option<u64>, kind: &str, frame: &[u8]) -> Result<(), EgressError> {
        let entry = EgressEntry {
            time_ms: now_ms(),
            round,
            kind: kind.to_string(),
            bytes: frame.len() as u64,
            sha256: hex::encode(Sha256::digest(frame)),
            note: None,
        };
        self.write(entry)
    }

    /// Record that the member refused something (nothing left the site).
    pub fn record_refusal(&mut self, round: Option<u64>, reason: &str) -> Result<(), EgressError> {
        let entry = EgressEntry {
            time_ms: now_ms(),
            round,
            kind: "refusal".into(),
            bytes: 0,
            sha256: String::new(),
            note: Some(reason.to_string()),
        };
        self.write(entry)
    }

    fn write(&mut self, entry: EgressEntry) -> Result<(), EgressError> {
        if let Some(f) = self.file.as_mut() {
            let line = serde_json::to_string(&entry).expect("entry serialises");
            let io = |source| EgressError::Io { path: self.path.clone(), source };
            writeln!(f, "{line}").map_err(io)?;
            f.flush().map_err(io)?;
        }
        if let Some(k) = self.keep.as_mut() {
            k.push(entry);
        }
        Ok(())
    }

    /// Read a ledger file back.
    pub fn read(path: &Path) -> Result<Vec<EgressEntry>, EgressError> {
        let file = File::open(path).map_err(|source| EgressError::Io { path: path.to_path_buf(), source })?;
        let mut out = Vec::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| EgressError::Io { path: path.to_path_buf(), source })?;
            if line.trim().is_empty() {
                continue;
            }
            let e = serde_json::from_str(&line)
                .map_err(|_| EgressError::Corrupt { path: path.to_path_buf(), line: i + 1 })?;
            out.push(e);
        }
        Ok(out)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Render the ledger as a table for `tessera-client egress`; times are
/// RFC 3339 UTC with milliseconds.
pub fn render(entries: &[EgressEntry]) -> String {
    let mut s = format!("{:<24} {:>6} {:<16} {:>12} {}\n", "time (UTC)", "round", "kind", "bytes", "sha256 / note");
    let mut total = 0u64;
    for e in entries {
        total += e.bytes;
        let round = e.round.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        let tail = e.note.clone().unwrap_or_else(|| e.sha256.clone());
        let time = tessera_cli::rfc3339_ms(e.time_ms as i64);
        s.push_str(&format!("{time:<24} {round:>6} {:<16} {:>12} {tail}\n", e.kind, e.bytes));
    }
    s.push_str(&format!("{} messages, {} bytes in total\n", entries.len(), total));
    s
}

/// The ledger as `tessera-client egress --json` prints it: one object per
/// entry with `time` (RFC 3339 UTC) beside the ledger's own fields
/// (`time_ms`, `round`, `kind`, `bytes`, `sha256`, `note`).
pub fn to_json(entries: &[EgressEntry]) -> serde_json::Value {
    entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "time": tessera_cli::rfc3339_ms(e.time_ms as i64),
                "time_ms": e.time_ms,
                "round": e.round,
                "kind": e.kind,
                "bytes": e.bytes,
                "sha256": e.sha256,
                "note": e.note,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.jsonl");
        let mut l = EgressLedger::open(&path).unwrap();
        l.record(Some(1), "masked_chunk", b"abc").unwrap();
        l.record_refusal(Some(2), "replay").unwrap();
        drop(l);
        let e = EgressLedger::read(&path).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].bytes, 3);
        assert_eq!(e[0].sha256, hex::encode(Sha256::digest(b"abc")));
        assert_eq!(e[1].note.as_deref(), Some("replay"));
        assert!(render(&e).contains("2 messages, 3 bytes"));
        std::fs::write(&path, "not json\n").unwrap();
        assert!(matches!(EgressLedger::read(&path), Err(EgressError::Corrupt { line: 1, .. })));
    }
}
