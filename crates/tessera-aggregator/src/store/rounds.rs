//! Rounds, the privacy ledger and checkpoints: the part of the state that
//! crash recovery rests on.
//!
//! Write order within a round, each step one fsync'd transaction:
//! 1. `round_started` (wire round number, cohort, seed) before any message;
//! 2. `privacy_reserved` (write-ahead spend) before any noisy release;
//! 3. `round_finished`: status, metrics, model checkpoint, ledger commit
//!    and audit entry together.
//!
//! Wire round numbers are attempt ids and never reused; a round started
//! but never finished is marked `interrupted` on restart and its spend
//! stays counted.

use rusqlite::{OptionalExtension, params};
use tessera_core::{ModelParams, ParamLayout, RoundRecord};
use tessera_privacy::{GaussianSpend, LedgerEntry, LedgerError, LedgerStore};

use super::{Result, StateStore, append_audit};
use tessera_protocol::coordinator::Dropout;
use tessera_protocol::{AdmissionRefusal, ServerOptimizer, StrategyConfig};

/// One round attempt as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoundRow {
    /// Wire round number (attempt id).
    pub round: u64,
    /// Index of the completed round this attempt would become (1-based).
    pub logical: u64,
    /// `started`, `completed`, `aborted`, `interrupted` (started before a
    /// crash and never finished) or `statistics` (a DP statistics release,
    /// no training round: [`StateStore::statistics_release`] holds what it
    /// released).
    pub status: String,
    /// Start time, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// End time (completed, aborted or found interrupted), same clock.
    pub finished_ms: Option<i64>,
    /// The members drawn for the round, sorted.
    pub cohort: Vec<String>,
    /// The seed the cohort was drawn with.
    pub cohort_seed: u64,
    /// Members whose update is in the sum (completed rounds).
    pub contributors: Option<Vec<String>>,
    /// Members that dropped out.
    pub dropped: Option<Vec<String>>,
    /// Why the attempt was aborted or interrupted.
    pub reason: Option<String>,
    /// SHA-256 of the global model after the round (completed rounds), hex.
    pub model_sha256: Option<String>,
    /// The `metrics.jsonl` line (completed rounds).
    pub record: Option<RoundRecord>,
    /// Cumulative epsilon after the round, under DP.
    pub epsilon: Option<f64>,
    /// The delta `epsilon` is stated at.
    pub delta: Option<f64>,
}

/// The global model and optimizer after `completed` rounds.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Completed rounds it follows.
    pub completed: u64,
    /// Wire number of the round that produced it.
    pub round: u64,
    /// When it was written, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The global model's trainable part.
    pub model: ModelParams,
    /// SHA-256 of `model` (checked on load), hex.
    pub model_sha256: String,
    /// The server optimizer with its moments, so a resumed run continues
    /// bit for bit.
    pub optimizer: ServerOptimizer,
}

/// One privacy-ledger record.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LedgerRow {
    /// Position in the ledger, increasing.
    pub seq: u64,
    /// When it was written, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The wire round it concerns.
    pub round: u64,
    /// Reserved, committed or aborted, as `tessera_privacy` replays it.
    pub entry: LedgerEntry,
    /// Cumulative epsilon after this reservation (reservations only).
    pub epsilon_after: Option<f64>,
    /// The delta `epsilon_after` is stated at.
    pub delta: Option<f64>,
}

/// What a completed round leaves behind.
pub(crate) struct FinishedRound<'a> {
    pub round: u64,
    pub logical: u64,
    pub contributors: &'a [String],
    pub dropped: &'a [String],
    pub record: &'a RoundRecord,
    pub model: &'a ModelParams,
    pub optimizer: &'a ServerOptimizer,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Option<Vec<f32>> {
    b.len()
        .is_multiple_of(4)
        .then(|| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
}

fn parse<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

impl StateStore {
    /// A round attempt starts; called before any of its messages is sent.
    pub(crate) fn round_started(
        &mut self,
        round: u64,
        logical: u64,
        cohort: &[String],
        cohort_seed: u64,
        at_ms: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO rounds (round, logical, status, started_ms, cohort, cohort_seed)
                 VALUES (?1, ?2, 'started', ?3, ?4, ?5)",
                params![round as i64, logical as i64, at_ms, json(&cohort), cohort_seed as i64],
            )?;
            let body = serde_json::json!({
                "round": round, "logical_round": logical, "cohort": cohort, "cohort_seed": cohort_seed,
            });
            append_audit(tx, at_ms, "round_started", &body)
        })
    }

    /// A DP statistics release completed in wire round `round`, recorded
    /// before anything else is written (`statistics.json` included): its row
    /// is closed with its own status (`statistics`: it counts as no training
    /// round), `released` (the `statistics.json` contents) is kept, its ledger
    /// reservation is committed and the audit log records what was released
    /// and what it cost, all in one transaction. A restart finds the release
    /// here and rewrites the file from it instead of releasing again.
    pub(crate) fn statistics_released(
        &mut self,
        round: u64,
        released: &serde_json::Value,
        body: &serde_json::Value,
        at_ms: i64,
    ) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE rounds SET status = 'statistics', finished_ms = ?2 WHERE round = ?1 AND status = 'started'",
                params![round as i64, at_ms],
            )?;
            if n != 1 {
                return Err(rusqlite::Error::StatementChangedRows(n));
            }
            tx.execute(
                "INSERT INTO statistics_releases (round, at_ms, json) VALUES (?1, ?2, ?3)",
                params![round as i64, at_ms, json(released)],
            )?;
            // The release went out: its reservation is final.
            insert_ledger(tx, at_ms, round, &LedgerEntry::Committed { round }, None)?;
            append_audit(tx, at_ms, "statistics_released", body)
        })
    }

    /// The run's DP statistics release, as recorded by
    /// [`Self::statistics_released`]: its wire round and the `statistics.json`
    /// contents. `None` before the release (or for a release recorded by an
    /// aggregator before schema version 3, which kept only the file).
    pub fn statistics_release(&self) -> Result<Option<(u64, serde_json::Value)>> {
        let row: Option<(i64, String)> = self
            .conn
            .query_row("SELECT round, json FROM statistics_releases ORDER BY round DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((round, text)) = row else { return Ok(None) };
        let value = serde_json::from_str(&text)
            .map_err(|_| self.invalid(format!("the statistics release of round {round} is unreadable")))?;
        Ok(Some((round as u64, value)))
    }

    /// Durably reserve a round's privacy spend (write-ahead: before release).
    pub(crate) fn privacy_reserved(
        &mut self,
        round: u64,
        spend: &GaussianSpend,
        epsilon_after: f64,
        delta: f64,
        at_ms: i64,
    ) -> Result<()> {
        let entry = LedgerEntry::Reserved { round, spend: *spend };
        self.write(|tx| {
            insert_ledger(tx, at_ms, round, &entry, Some((epsilon_after, delta)))?;
            let body = serde_json::json!({
                "round": round, "spend": spend, "epsilon_after": epsilon_after, "delta": delta,
            });
            append_audit(tx, at_ms, "privacy_reserved", &body)
        })
    }

    /// A round completed: its row, checkpoint (keeping the newest `keep`),
    /// ledger commit and audit entry in one transaction.
    pub(crate) fn round_finished(&mut self, f: &FinishedRound<'_>, keep: u32, at_ms: i64) -> Result<()> {
        let model_sha = f.model.digest_hex();
        let (m, v) = f.optimizer.moments();
        let reserved = self.open_reservation(f.round)?;
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE rounds SET status = 'completed', finished_ms = ?2, contributors = ?3, dropped = ?4,
                 model_sha256 = ?5, record = ?6, epsilon = ?7, delta = ?8 WHERE round = ?1 AND status = 'started'",
                params![
                    f.round as i64,
                    at_ms,
                    json(&f.contributors),
                    json(&f.dropped),
                    model_sha,
                    json(f.record),
                    f.record.epsilon,
                    f.record.delta
                ],
            )?;
            if n != 1 {
                return Err(rusqlite::Error::StatementChangedRows(n));
            }
            if reserved {
                insert_ledger(tx, at_ms, f.round, &LedgerEntry::Committed { round: f.round }, None)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints
                 (completed, round, at_ms, layout, model, model_sha256, strategy, moment1, moment2)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    f.logical as i64,
                    f.round as i64,
                    at_ms,
                    json(&f.model.layout()),
                    f32_bytes(&f.model.to_flat()),
                    model_sha,
                    json(&f.optimizer.config),
                    f32_bytes(m),
                    f32_bytes(v)
                ],
            )?;
            tx.execute("DELETE FROM checkpoints WHERE completed <= ?1", [f.logical as i64 - keep.max(1) as i64])?;
            let body = serde_json::json!({
                "round": f.round,
                "logical_round": f.logical,
                "contributors": f.contributors,
                "dropped": f.dropped,
                "model_sha256": model_sha,
                "epsilon": f.record.epsilon,
                "delta": f.record.delta,
                "accuracy": f.record.accuracy,
                "loss": f.record.loss,
            });
            append_audit(tx, at_ms, "round_finished", &body)
        })
    }

    /// A round attempt was abandoned. Its spend stays counted unless
    /// `refunded` (the cumulative epsilon after the refund): then an
    /// `Aborted` ledger entry returns it, audited as `privacy_refunded`.
    pub(crate) fn round_aborted(
        &mut self,
        round: u64,
        reason: &str,
        dropped: &[Dropout],
        refunded: Option<f64>,
        at_ms: i64,
    ) -> Result<()> {
        let names: Vec<&str> = dropped.iter().map(|d| d.member.as_str()).collect();
        let causes: serde_json::Map<String, serde_json::Value> =
            dropped.iter().map(|d| (d.member.clone(), d.cause.clone().into())).collect();
        let delta = match refunded {
            Some(_) => self.epsilon_spent()?.map(|(_, d)| d),
            None => None,
        };
        self.write(|tx| {
            tx.execute(
                "UPDATE rounds SET status = 'aborted', finished_ms = ?2, reason = ?3, dropped = ?4
                 WHERE round = ?1 AND status = 'started'",
                params![round as i64, at_ms, reason, json(&names)],
            )?;
            let body = serde_json::json!({ "round": round, "reason": reason, "dropped": names, "causes": causes });
            append_audit(tx, at_ms, "round_aborted", &body)?;
            if let (Some(epsilon_after), Some(delta)) = (refunded, delta) {
                insert_ledger(tx, at_ms, round, &LedgerEntry::Aborted { round }, Some((epsilon_after, delta)))?;
                let body = serde_json::json!({ "round": round, "epsilon_after": epsilon_after, "delta": delta });
                append_audit(tx, at_ms, "privacy_refunded", &body)?;
            }
            Ok(())
        })
    }

    /// A member refused at admission, with both settings digests in full.
    pub(crate) fn admission_refused(&mut self, refusal: &AdmissionRefusal, at_ms: i64) -> Result<()> {
        let hex = |b: &[u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let body = match refusal {
            AdmissionRefusal::Settings { member, part, announced, expected } => serde_json::json!({
                "member": member,
                "differs": part.to_string(),
                "member_model": hex(&announced.model),
                "member_schema": hex(&announced.schema),
                "expected_model": hex(&expected.model),
                "expected_schema": hex(&expected.schema),
            }),
            AdmissionRefusal::ProtocolVersion { member, announced, expected } => serde_json::json!({
                "member": member,
                "differs": "protocol version",
                "member_protocol": announced,
                "expected_protocol": expected,
            }),
        };
        self.write(|tx| append_audit(tx, at_ms, "admission_refused", &body))
    }

    /// Share holders whose revealed share failed its check (robust
    /// reconstruction left them out): named in the audit log.
    pub(crate) fn bad_shares(&mut self, round: u64, members: &[String], at_ms: i64) -> Result<()> {
        self.write(|tx| {
            let body = serde_json::json!({ "round": round, "members": members });
            append_audit(tx, at_ms, "bad_shares", &body)
        })
    }

    /// After a restart: rounds that started but never finished were cut
    /// short by the crash. Returns their numbers.
    pub(crate) fn interrupt_open_rounds(&mut self, at_ms: i64) -> Result<Vec<u64>> {
        let open: Vec<u64> = self.rounds()?.into_iter().filter(|r| r.status == "started").map(|r| r.round).collect();
        if open.is_empty() {
            return Ok(open);
        }
        self.write(|tx| {
            for r in &open {
                tx.execute(
                    "UPDATE rounds SET status = 'interrupted', finished_ms = ?2, reason = 'aggregator restarted'
                     WHERE round = ?1",
                    params![*r as i64, at_ms],
                )?;
                let body = serde_json::json!({ "round": r, "reason": "aggregator restarted mid-round" });
                append_audit(tx, at_ms, "round_interrupted", &body)?;
            }
            Ok(())
        })?;
        Ok(open)
    }

    /// The largest wire round number ever started (0 if none).
    pub(crate) fn max_round(&self) -> Result<u64> {
        let m: Option<i64> =
            self.conn.query_row("SELECT MAX(round) FROM rounds", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        Ok(m.unwrap_or(0) as u64)
    }

    /// Every round attempt, by wire round number.
    pub fn rounds(&self) -> Result<Vec<RoundRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT round, logical, status, started_ms, finished_ms, cohort, cohort_seed, contributors,
                 dropped, reason, model_sha256, record, epsilon, delta FROM rounds ORDER BY round",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(RoundRow {
                    round: r.get::<_, i64>(0)? as u64,
                    logical: r.get::<_, i64>(1)? as u64,
                    status: r.get(2)?,
                    started_ms: r.get(3)?,
                    finished_ms: r.get(4)?,
                    cohort: parse(r.get(5)?).unwrap_or_default(),
                    cohort_seed: r.get::<_, i64>(6)? as u64,
                    contributors: parse(r.get(7)?),
                    dropped: parse(r.get(8)?),
                    reason: r.get(9)?,
                    model_sha256: r.get(10)?,
                    record: parse(r.get(11)?),
                    epsilon: r.get(12)?,
                    delta: r.get(13)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// Metrics of the completed rounds, in order.
    pub fn completed_records(&self) -> Result<Vec<RoundRecord>> {
        Ok(self.rounds()?.into_iter().filter(|r| r.status == "completed").filter_map(|r| r.record).collect())
    }

    /// The newest checkpoint, checked against its stored digest.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let row = self
            .conn
            .query_row(
                "SELECT completed, round, at_ms, layout, model, model_sha256, strategy, moment1, moment2
                 FROM checkpoints ORDER BY completed DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, Vec<u8>>(7)?,
                        r.get::<_, Vec<u8>>(8)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((completed, round, at_ms, layout, model, sha, strategy, m1, m2)) = row else { return Ok(None) };
        let bad = |what: &str| self.invalid(format!("checkpoint after {completed} rounds: {what}"));
        let layout: ParamLayout = serde_json::from_str(&layout).map_err(|_| bad("layout unreadable"))?;
        let flat = f32s(&model).ok_or_else(|| bad("model blob length"))?;
        let model = ModelParams::from_flat(&layout, &flat).map_err(|e| bad(&e.to_string()))?;
        if model.digest_hex() != sha {
            return Err(bad("model does not match its SHA-256"));
        }
        let strategy: StrategyConfig = serde_json::from_str(&strategy).map_err(|_| bad("strategy unreadable"))?;
        let (m1, m2) = (f32s(&m1).ok_or_else(|| bad("moment blob"))?, f32s(&m2).ok_or_else(|| bad("moment blob"))?);
        let optimizer = ServerOptimizer::from_moments(strategy, m1, m2).map_err(|e| bad(&e.to_string()))?;
        Ok(Some(Checkpoint {
            completed: completed as u64,
            round: round as u64,
            at_ms,
            model,
            model_sha256: sha,
            optimizer,
        }))
    }

    /// `(completed rounds, model SHA-256)` of every checkpoint kept.
    #[cfg(test)]
    pub(crate) fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT completed, model_sha256 FROM checkpoints ORDER BY completed")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// The privacy ledger, in write order.
    pub fn ledger(&self) -> Result<Vec<LedgerRow>> {
        let mut st = self
            .conn
            .prepare("SELECT seq, at_ms, round, entry, epsilon_after, delta FROM ledger ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<f64>>(4)?,
                    r.get::<_, Option<f64>>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at_ms, round, entry, epsilon_after, delta) = row.map_err(|e| self.err(e))?;
            let entry: LedgerEntry =
                serde_json::from_str(&entry).map_err(|_| self.invalid(format!("ledger record {seq} unreadable")))?;
            out.push(LedgerRow { seq: seq as u64, at_ms, round: round as u64, entry, epsilon_after, delta });
        }
        Ok(out)
    }

    /// Every spend reserved and not given back, in reservation order: what
    /// the accountant must count after a restart (pending ones included).
    pub fn reserved_spends(&self) -> Result<Vec<(u64, GaussianSpend)>> {
        let rows = self.ledger()?;
        let aborted: Vec<u64> = rows
            .iter()
            .filter_map(|r| match r.entry {
                LedgerEntry::Aborted { round } => Some(round),
                _ => None,
            })
            .collect();
        Ok(rows
            .into_iter()
            .filter_map(|r| match r.entry {
                LedgerEntry::Reserved { round, spend } if !aborted.contains(&round) => Some((round, spend)),
                _ => None,
            })
            .collect())
    }

    /// Cumulative epsilon and delta after the newest reservation.
    pub fn epsilon_spent(&self) -> Result<Option<(f64, f64)>> {
        self.conn
            .query_row(
                "SELECT epsilon_after, delta FROM ledger WHERE epsilon_after IS NOT NULL ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn open_reservation(&self, round: u64) -> Result<bool> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM ledger WHERE round = ?1", [round as i64], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }
}

fn insert_ledger(
    tx: &rusqlite::Transaction<'_>,
    at_ms: i64,
    round: u64,
    entry: &LedgerEntry,
    eps: Option<(f64, f64)>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO ledger (at_ms, round, entry, epsilon_after, delta) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at_ms, round as i64, json(entry), eps.map(|e| e.0), eps.map(|e| e.1)],
    )?;
    Ok(())
}

/// The ledger table speaks `tessera_privacy`'s write-ahead protocol too, so
/// a [`tessera_privacy::PrivacyLedger`] can replay it (as the tests do).
impl LedgerStore for StateStore {
    fn append(&mut self, entry: &LedgerEntry) -> std::result::Result<(), LedgerError> {
        let round = match entry {
            LedgerEntry::Reserved { round, .. } | LedgerEntry::Committed { round } | LedgerEntry::Aborted { round } => {
                *round
            }
        };
        let at = super::now_ms();
        self.write(|tx| insert_ledger(tx, at, round, entry, None))
            .map_err(|e| LedgerError::Io(std::io::Error::other(e)))
    }

    fn load(&mut self) -> std::result::Result<Vec<LedgerEntry>, LedgerError> {
        Ok(self.ledger().map_err(|e| LedgerError::Io(std::io::Error::other(e)))?.into_iter().map(|r| r.entry).collect())
    }
}
