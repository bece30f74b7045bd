//! The run directory every run leaves behind, daemon and simulator alike:
//! `metrics.jsonl` (one [`RoundRecord`] per line, flushed as each round
//! ends, so a crash loses nothing already reported) and `summary.json`
//! (final values and the configuration used).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tessera_core::RoundRecord;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("run directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("could not serialise the summary: {0}")]
    Json(#[from] serde_json::Error),
}

/// Final values of a run, written to `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary<C: Serialize> {
    pub run_id: String,
    pub completed_rounds: u64,
    pub aborted_rounds: u64,
    pub stop_reason: String,
    pub final_round: Option<RoundRecord>,
    pub final_model_sha256: String,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub config: C,
}

/// Appends round records to `<dir>/metrics.jsonl`.
pub struct RunDir {
    dir: PathBuf,
    metrics: BufWriter<File>,
    pub records: Vec<RoundRecord>,
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
    pub fn resume(dir: &Path, records: &[RoundRecord]) -> Result<Self, ReportError> {
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

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn append(&mut self, record: &RoundRecord) -> Result<(), ReportError> {
        let io = |source| ReportError::Io { path: self.dir.join("metrics.jsonl"), source };
        let line = serde_json::to_string(record)?;
        writeln!(self.metrics, "{line}").map_err(io)?;
        self.metrics.flush().map_err(io)?;
        self.records.push(record.clone());
        Ok(())
    }

    pub fn write_summary<C: Serialize>(&self, summary: &Summary<C>) -> Result<(), ReportError> {
        let path = self.dir.join("summary.json");
        let json = serde_json::to_string_pretty(summary)?;
        std::fs::write(&path, json).map_err(|source| ReportError::Io { path, source })
    }

    /// Write an arbitrary file into the run directory (scenario as run, plots).
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Io { path, source })
    }
}

/// The one-line-per-round log message both daemon and simulator print.
pub fn round_line(r: &RoundRecord) -> String {
    let eps = r.epsilon.map(|e| format!(" epsilon={e:.3}")).unwrap_or_default();
    format!(
        "round {} participants={} dropped={} loss={:.4} accuracy={:.4} auc={:.4} up={}B down={}B {:.2}s{eps}",
        r.round, r.participants, r.dropped, r.loss, r.accuracy, r.auc, r.bytes_up, r.bytes_down, r.seconds
    )
}
