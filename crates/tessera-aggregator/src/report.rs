//! The run directory every run leaves behind, daemon and simulator alike:
//! `metrics.jsonl` (one [`RoundRecord`] per line, flushed as each round
//! ends, so a crash loses nothing already reported) and `summary.json`
//! (final values and the configuration used).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tessera_core::RoundRecord;

/// Why the run directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating, writing or renaming a file failed.
    #[error("run directory {path}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record or the summary did not serialise.
    #[error("could not serialise the summary")]
    Json(#[from] serde_json::Error),
}

/// Final values of a run, written to `summary.json`.
///
/// `C` is the configuration as run: `aggregator.toml` for the daemon, the
/// scenario for the simulator.
#[derive(Clone, Debug, Serialize)]
pub struct Summary<C: Serialize> {
    /// The run id, hex.
    pub run_id: String,
    /// Rounds completed and counted toward the run.
    pub completed_rounds: u64,
    /// Round attempts abandoned (and retried).
    pub aborted_rounds: u64,
    /// Why the run stopped.
    pub stop_reason: String,
    /// The last completed round's metrics, if any round completed.
    pub final_round: Option<RoundRecord>,
    /// SHA-256 of the final global model's trainable part, hex.
    pub final_model_sha256: String,
    /// Privacy spent over the whole run, when it ran under DP.
    pub epsilon: Option<f64>,
    /// The delta that `epsilon` is stated at.
    pub delta: Option<f64>,
    /// The configuration the run used.
    pub config: C,
}

/// Appends round records to `<dir>/metrics.jsonl`.
pub struct RunDir {
    dir: PathBuf,
    metrics: BufWriter<File>,
    /// Every record appended (or resumed from), in order.
    pub records: Vec<RoundRecord>,
    /// Round attempts abandoned so far; the observer counts them here for
    /// the summary.
    pub aborted: u64,
}

impl RunDir {
    /// Create (or continue, when resuming) the run directory.
    pub fn open(dir: &Path) -> Result<Self, ReportError> {
        let io = |source| ReportError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("metrics.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        Ok(Self { dir: dir.to_path_buf(), metrics: BufWriter::new(file), records: Vec::new(), aborted: 0 })
    }

    /// Continue a run directory whose completed rounds are `records` (from
    /// the state database): `metrics.jsonl` is rewritten to exactly those
    /// lines first (atomically), so a crash between the database commit and
    /// the file append neither loses nor repeats a round.
    pub(crate) fn resume(dir: &Path, records: &[RoundRecord]) -> Result<Self, ReportError> {
        let io = |source| ReportError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        let tmp = dir.join("metrics.jsonl.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, dir.join("metrics.jsonl")).map_err(io)?;
        let mut run = Self::open(dir)?;
        run.records = records.to_vec();
        Ok(run)
    }

    /// Append one round's line to `metrics.jsonl` and flush it, so a crash
    /// loses nothing already reported.
    pub fn append(&mut self, record: &RoundRecord) -> Result<(), ReportError> {
        let io = |source| ReportError::Io { path: self.dir.join("metrics.jsonl"), source };
        let line = serde_json::to_string(record)?;
        writeln!(self.metrics, "{line}").map_err(io)?;
        self.metrics.flush().map_err(io)?;
        self.records.push(record.clone());
        Ok(())
    }

    /// Write (or replace) `summary.json`.
    pub fn write_summary<C: Serialize>(&self, summary: &Summary<C>) -> Result<(), ReportError> {
        let path = self.dir.join("summary.json");
        let json = serde_json::to_string_pretty(summary)?;
        std::fs::write(&path, json).map_err(|source| ReportError::Io { path, source })
    }

    /// The run directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write an arbitrary file into the run directory (scenario as run, plots).
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Io { path, source })
    }

    /// Write `name` so that a crash leaves the previous file or the new one,
    /// whole, never a torn one or none: `bytes` go to `name.tmp` beside it,
    /// which is fsync'd, renamed over `name`, and the directory fsync'd so
    /// the rename itself survives a power loss. For a file that records
    /// something released and charged (the simulator's `statistics.json`),
    /// where a half-written file would lose a release the ledgers paid for.
    pub fn write_file_durably(&self, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
        write_durably(&self.dir, name, bytes)
    }
}

/// [`RunDir::write_file_durably`] for any directory: `dir/name` replaced
/// whole through a fsync'd `name.tmp` and a fsync'd rename.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(name));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// How a value that was not released (or not measured) prints in round
/// lines, reports and status pages: an en dash, never a stand-in number.
pub const ABSENT: &str = "–";

/// `v` with 4 decimals, or [`ABSENT`].
pub fn value_or_dash(v: Option<f64>) -> String {
    v.map_or_else(|| ABSENT.to_string(), |x| format!("{x:.4}"))
}

/// The one-line-per-round log message both daemon and simulator print.
/// Loss, accuracy and AUC read [`ABSENT`] when the round did not release them.
pub fn round_line(r: &RoundRecord) -> String {
    let eps = r.epsilon.map(|e| format!(" epsilon={e:.3}")).unwrap_or_default();
    format!(
        "round {} participants={} dropped={} loss={} accuracy={} auc={} up={}B down={}B {:.2}s{eps}",
        r.round,
        r.participants,
        r.dropped,
        value_or_dash(r.loss),
        value_or_dash(r.accuracy),
        value_or_dash(r.auc),
        r.bytes_up,
        r.bytes_down,
        r.seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A durable write replaces the file whole, and a write that fails
    /// (here: its temporary file cannot be created) leaves the previous file
    /// as it was, rather than a truncated one.
    #[test]
    fn a_durable_write_replaces_the_file_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        run.write_file_durably("statistics.json", b"{\"round\": 1}").unwrap();
        run.write_file_durably("statistics.json", b"{\"round\": 2}").unwrap();
        let read = || std::fs::read_to_string(dir.path().join("statistics.json")).unwrap();
        assert_eq!(read(), "{\"round\": 2}");
        assert!(!dir.path().join("statistics.json.tmp").exists(), "the temporary file is renamed away");
        std::fs::create_dir(dir.path().join("statistics.json.tmp")).unwrap();
        assert!(run.write_file_durably("statistics.json", b"{\"round\": 3, \"torn").is_err());
        assert_eq!(read(), "{\"round\": 2}", "a failed write left the previous file as it was");
    }

    /// A value the round did not release prints as a dash, one it did as a number.
    #[test]
    fn round_line_prints_a_dash_for_what_was_not_released() {
        let r = RoundRecord { round: 2, loss: None, auc: None, accuracy: Some(0.95), ..Default::default() };
        let line = round_line(&r);
        assert!(line.contains("loss=– accuracy=0.9500 auc=– "), "{line}");
        let nothing = RoundRecord { accuracy: None, ..r.clone() };
        assert!(round_line(&nothing).contains("loss=– accuracy=– auc=– "), "{}", round_line(&nothing));
        let r = RoundRecord { loss: Some(0.25), auc: Some(0.5), ..r };
        assert!(round_line(&r).contains("loss=0.2500 accuracy=0.9500 auc=0.5000 "), "{}", round_line(&r));
    }
}
