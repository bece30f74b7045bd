//! Everything the aggregator must not forget, in one embedded SQLite
//! database: the run (id, seed), every configuration it ran under, members
//! and revocations, round history and metrics, the privacy ledger, the last
//! K checkpoints of the global model and optimizer, the hash-chained audit
//! log, and the daemon's latest status row.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a write that
//! returned is on disk. Each state change that belongs together (a round's
//! completion, its checkpoint and its audit entry) is one transaction, so a
//! SIGKILL at any instant leaves either all of it or none. The audit and
//! ledger tables refuse UPDATE and DELETE through triggers.

mod migrations;
mod rounds;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tessera_core::RunId;

use crate::audit::{self, AuditBreak, AuditEntry};
use migrations::MIGRATIONS;

pub(crate) use rounds::FinishedRound;
pub use rounds::{Checkpoint, LedgerRow, RoundRow};

/// Why the state database failed; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused a statement (I/O, lock timeout, a trigger).
    #[error("state database {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The contents are not what this aggregator wrote or understands (a
    /// newer schema, a checkpoint that fails its digest, unreadable JSON).
    #[error("state database {path}: {message}")]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An operator tool was pointed at a file that does not exist.
    #[error("state database {path}: no such file (has the aggregator run with this state path?)")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// What identifies a run across restarts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RunInfo {
    pub run_id: RunId,
    pub seed: u64,
    pub created_ms: i64,
    pub finished: Option<String>,
}

/// One member as the database knows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct MemberRow {
    pub name: String,
    pub first_admitted_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// The aggregator's state database. The daemon is its only writer;
/// outside this crate it is opened with [`StateStore::open_existing`] and
/// read (operator tools, tests), or handed to `tessera_privacy`'s
/// `PrivacyLedger`, which replays the ledger through `LedgerStore`.
pub struct StateStore {
    conn: Connection,
    path: PathBuf,
}

impl StateStore {
    /// Open the database at `path`, creating it (and its directory) if needed
    /// and applying any pending schema migrations.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Invalid {
                path: path.to_path_buf(),
                message: format!("cannot create its directory: {e}"),
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Sqlite { path: path.into(), source })?;
        let mut store = Self { conn, path: path.to_path_buf() };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Open a database that must already exist (operator tools, tests);
    /// [`StoreError::Missing`] otherwise, instead of creating an empty one.
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        Self::open(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }

    fn invalid(&self, message: impl Into<String>) -> StoreError {
        StoreError::Invalid { path: self.path.clone(), message: message.into() }
    }

    fn configure(&mut self) -> Result<()> {
        let mode: String =
            self.conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(self.invalid(format!("could not switch to WAL mode (journal mode is {mode})")));
        }
        self.conn.pragma_update(None, "synchronous", "FULL").map_err(|e| self.err(e))?;
        self.conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| self.err(e))?;
        self.conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| self.err(e))?;
        if version as usize > MIGRATIONS.len() {
            return Err(self.invalid(format!(
                "schema version {version} is newer than this aggregator understands ({}): upgrade the aggregator",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })?;
            tx.execute_batch(sql).map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })?;
            tx.commit().map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })?;
        }
        Ok(())
    }

    /// Run `f` in one transaction: all of its writes land, or none.
    fn write<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>) -> Result<T> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(wrap)?;
        let out = f(&tx).map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        Ok(out)
    }

    // ---- the run -------------------------------------------------------

    pub(crate) fn run_info(&self) -> Result<Option<RunInfo>> {
        let row = self
            .conn
            .query_row("SELECT run_id, seed, created_ms, stop_reason FROM run WHERE id = 1", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<String>>(3)?))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((id, seed, created_ms, finished)) = row else { return Ok(None) };
        let bytes: [u8; 16] = hex::decode(&id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.invalid("run id is not 16 hex bytes"))?;
        Ok(Some(RunInfo { run_id: RunId(bytes), seed: seed as u64, created_ms, finished }))
    }

    /// Record a new run and the configuration it starts with.
    pub(crate) fn create_run(&mut self, run_id: RunId, seed: u64, config_json: &str, at_ms: i64) -> Result<()> {
        let sha = sha256_hex(config_json.as_bytes());
        self.write(|tx| {
            tx.execute(
                "INSERT INTO run (id, run_id, seed, created_ms) VALUES (1, ?1, ?2, ?3)",
                params![run_id.to_hex(), seed as i64, at_ms],
            )?;
            tx.execute(
                "INSERT INTO config_history (at_ms, sha256, json) VALUES (?1, ?2, ?3)",
                params![at_ms, sha, config_json],
            )?;
            let body = serde_json::json!({ "run_id": run_id.to_hex(), "config_sha256": sha });
            append_audit(tx, at_ms, "run_created", &body)
        })
    }

    /// The configuration the run last started with.
    pub fn latest_config(&self) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT json FROM config_history ORDER BY seq DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Record the configuration a restart runs under. When it differs from
    /// the last one, returns the top-level sections that changed (also
    /// written to the audit log).
    pub(crate) fn record_config(&mut self, config_json: &str, at_ms: i64) -> Result<Option<Vec<String>>> {
        let previous = self.latest_config()?;
        if previous.as_deref() == Some(config_json) {
            return Ok(None);
        }
        let changed = match &previous {
            Some(p) => changed_sections(p, config_json),
            None => vec!["(all)".to_string()],
        };
        let sha = sha256_hex(config_json.as_bytes());
        let prev_sha = previous.as_deref().map(|p| sha256_hex(p.as_bytes()));
        let c = changed.clone();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO config_history (at_ms, sha256, json) VALUES (?1, ?2, ?3)",
                params![at_ms, sha, config_json],
            )?;
            let body = serde_json::json!({ "changed": c, "config_sha256": sha, "previous_sha256": prev_sha });
            append_audit(tx, at_ms, "config_changed", &body)
        })?;
        Ok(Some(changed))
    }

    /// The run ended (all rounds done, budget exhausted, or given up).
    pub(crate) fn finish_run(&mut self, reason: &str, completed: u64, model_sha256: &str, at_ms: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("UPDATE run SET finished_ms = ?1, stop_reason = ?2 WHERE id = 1", params![at_ms, reason])?;
            let body =
                serde_json::json!({ "reason": reason, "completed_rounds": completed, "model_sha256": model_sha256 });
            append_audit(tx, at_ms, "run_finished", &body)
        })
    }

    /// A process started serving this run (first start or a restart).
    pub(crate) fn record_start(&mut self, resumed_from: u64, next_round: u64, at_ms: i64) -> Result<()> {
        self.write(|tx| {
            let body = serde_json::json!({
                "completed_rounds": resumed_from,
                "next_round": next_round,
                "pid": std::process::id(),
            });
            append_audit(tx, at_ms, "aggregator_started", &body)
        })
    }

    // ---- members --------------------------------------------------------

    pub(crate) fn members(&self) -> Result<Vec<MemberRow>> {
        let mut st = self
            .conn
            .prepare("SELECT name, first_admitted_ms, last_seen_ms, revoked_ms FROM members ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(MemberRow {
                    name: r.get(0)?,
                    first_admitted_ms: r.get(1)?,
                    last_seen_ms: r.get(2)?,
                    revoked_ms: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// Members seen online now. A member's first admission is audited.
    /// Returns the names admitted for the first time.
    pub(crate) fn members_seen(&mut self, names: &[String], at_ms: i64) -> Result<Vec<String>> {
        self.write(|tx| {
            let mut first = Vec::new();
            for name in names {
                let known: Option<Option<i64>> = tx
                    .query_row("SELECT first_admitted_ms FROM members WHERE name = ?1", [name], |r| r.get(0))
                    .optional()?;
                if known.flatten().is_none() {
                    tx.execute(
                        "INSERT INTO members (name, first_admitted_ms, last_seen_ms) VALUES (?1, ?2, ?2)
                         ON CONFLICT(name) DO UPDATE SET first_admitted_ms = ?2, last_seen_ms = ?2",
                        params![name, at_ms],
                    )?;
                    append_audit(tx, at_ms, "member_admitted", &serde_json::json!({ "member": name }))?;
                    first.push(name.clone());
                } else {
                    tx.execute("UPDATE members SET last_seen_ms = ?2 WHERE name = ?1", params![name, at_ms])?;
                }
            }
            Ok(first)
        })
    }

    /// Bring the recorded revocations in line with the operator's list.
    /// Returns (newly revoked, reinstated); each change is audited.
    pub(crate) fn sync_revocations(&mut self, revoked: &[String], at_ms: i64) -> Result<(Vec<String>, Vec<String>)> {
        let recorded: Vec<String> =
            self.members()?.into_iter().filter(|m| m.revoked_ms.is_some()).map(|m| m.name).collect();
        let new: Vec<String> = revoked.iter().filter(|r| !recorded.contains(r)).cloned().collect();
        let back: Vec<String> = recorded.iter().filter(|r| !revoked.contains(r)).cloned().collect();
        if new.is_empty() && back.is_empty() {
            return Ok((new, back));
        }
        self.write(|tx| {
            for name in &new {
                tx.execute(
                    "INSERT INTO members (name, revoked_ms) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET revoked_ms = ?2",
                    params![name, at_ms],
                )?;
                append_audit(tx, at_ms, "member_revoked", &serde_json::json!({ "member": name }))?;
            }
            for name in &back {
                tx.execute("UPDATE members SET revoked_ms = NULL WHERE name = ?1", [name])?;
                append_audit(tx, at_ms, "member_reinstated", &serde_json::json!({ "member": name }))?;
            }
            Ok(())
        })?;
        Ok((new, back))
    }

    /// Bring the recorded certificate revocations (lowercase hex SHA-256,
    /// with the member each was issued to where known) in line with the
    /// operator's list. Returns (newly revoked, reinstated) fingerprints;
    /// each change is audited (`certificate_revoked`, `certificate_reinstated`).
    pub(crate) fn sync_revoked_certificates(
        &mut self,
        revoked: &[(String, Option<String>)],
        at_ms: i64,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let recorded: Vec<String> = {
            let mut st = self.conn.prepare("SELECT fingerprint FROM revoked_certificates").map_err(|e| self.err(e))?;
            let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))?
        };
        let new: Vec<&(String, Option<String>)> = revoked.iter().filter(|(fp, _)| !recorded.contains(fp)).collect();
        let back: Vec<String> = recorded.iter().filter(|r| !revoked.iter().any(|(fp, _)| fp == *r)).cloned().collect();
        if new.is_empty() && back.is_empty() {
            return Ok((vec![], back));
        }
        self.write(|tx| {
            for (fp, member) in &new {
                tx.execute(
                    "INSERT INTO revoked_certificates (fingerprint, member, revoked_ms) VALUES (?1, ?2, ?3)",
                    params![fp, member, at_ms],
                )?;
                let body = serde_json::json!({ "fingerprint": fp, "member": member });
                append_audit(tx, at_ms, "certificate_revoked", &body)?;
            }
            for fp in &back {
                tx.execute("DELETE FROM revoked_certificates WHERE fingerprint = ?1", [fp])?;
                append_audit(tx, at_ms, "certificate_reinstated", &serde_json::json!({ "fingerprint": fp }))?;
            }
            Ok(())
        })?;
        Ok((new.into_iter().map(|(fp, _)| fp.clone()).collect(), back))
    }

    // ---- status ---------------------------------------------------------

    pub(crate) fn write_status(&mut self, json: &str, at_ms: i64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO status (id, updated_ms, json) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET updated_ms = ?1, json = ?2",
                params![at_ms, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The daemon's latest status row: `(updated_ms, StatusSnapshot as
    /// JSON)`; `None` before the first start.
    pub fn read_status(&self) -> Result<Option<(i64, String)>> {
        self.conn
            .query_row("SELECT updated_ms, json FROM status WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| self.err(e))
    }

    // ---- audit ------------------------------------------------------------

    /// The whole audit log, in chain order.
    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>> {
        let mut st = self
            .conn
            .prepare("SELECT seq, at_ms, kind, body, prev_hash, hash FROM audit ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(AuditEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get(1)?,
                    kind: r.get(2)?,
                    body: r.get(3)?,
                    prev_hash: r.get(4)?,
                    hash: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// The recorded head of the audit chain: the last entry's sequence
    /// number and hash (hex), which an operator copies somewhere the
    /// aggregator cannot write (`audit head`); `None` before the first entry.
    pub fn audit_head(&self) -> Result<Option<(u64, String)>> {
        let head: Option<(i64, String)> = self
            .conn
            .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(head.map(|(s, h)| (s as u64, h)))
    }

    /// Check the whole chain; `Ok(n)` is the number of intact entries.
    pub fn verify_audit(&self) -> Result<std::result::Result<u64, AuditBreak>> {
        let entries = self.audit_entries()?;
        Ok(audit::verify(&entries, self.audit_head()?))
    }

    /// Direct access for tests (e.g. simulating tampering).
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Append one entry to the audit chain inside `tx`.
pub(crate) fn append_audit(tx: &Transaction<'_>, at_ms: i64, kind: &str, body: &Value) -> rusqlite::Result<()> {
    let head: Option<(i64, String)> =
        tx.query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let (seq, prev) = match head {
        Some((seq, hash)) => {
            let prev: [u8; 32] = hex::decode(&hash)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| rusqlite::Error::InvalidColumnType(1, "hash".into(), rusqlite::types::Type::Text))?;
            (seq as u64 + 1, prev)
        }
        None => (1, audit::GENESIS),
    };
    let body = body.to_string();
    let hash = hex::encode(audit::entry_hash(&prev, seq, at_ms, kind, &body));
    tx.execute(
        "INSERT INTO audit (seq, at_ms, kind, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![seq as i64, at_ms, kind, body, hex::encode(prev), hash],
    )?;
    tx.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET seq = ?1, hash = ?2",
        params![seq as i64, hash],
    )?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Top-level keys whose values differ between two JSON objects.
fn changed_sections(a: &str, b: &str) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) = (serde_json::from_str(a), serde_json::from_str(b)) else {
        return vec!["(all)".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time in milliseconds (proleptic
/// Gregorian, after Howard Hinnant's `civil_from_days`).
pub fn utc(ms: i64) -> String {
    // RFC 3339 to the second: drop tessera-cli's milliseconds.
    let t = tessera_cli::rfc3339_ms(ms.div_euclid(1000) * 1000);
    format!("{}Z", &t[..19])
}

#[cfg(test)]
mod tests;
