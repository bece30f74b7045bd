//! `tessera-aggregator serve`: config → QUIC listener with mTLS admission →
//! coordinator → run directory. Kept in the library so end-to-end tests run
//! the very same code in-process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tessera_core::{RoundRecord, RunId};
use tessera_transport::{Admission, Listener, QuicListenerConfig, Refusal};

use crate::config::AggregatorConfig;
use crate::coordinator::{Coordinator, CoordinatorConfig, Resume, RoundOutcome};
use crate::driver::{DriverOptions, RunEnd, RunObserver, serve};
use crate::report::{RunDir, Summary, round_line};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("transport: {0}")]
    Transport(#[from] tessera_transport::TransportError),
    #[error("model: {0}")]
    Model(#[from] tessera_learn::LearnError),
    #[error("run directory: {0}")]
    Report(#[from] crate::report::ReportError),
    #[error("revocation list {path}: {source}")]
    Revocations { path: PathBuf, source: std::io::Error },
}

/// Name of the revocation list inside the PKI directory: one member per line.
pub const REVOKED_FILE: &str = "revoked.txt";

/// Members admitted by the config's member list minus the revocation list,
/// re-read at every connection so `pki revoke` takes effect immediately.
pub struct ConsortiumAdmission {
    members: Vec<String>,
    revoked_path: PathBuf,
}

impl ConsortiumAdmission {
    pub fn new(members: Vec<String>, pki_dir: &Path) -> Self {
        Self { members, revoked_path: pki_dir.join(REVOKED_FILE) }
    }
}

/// Read the revocation list; a missing file means nobody is revoked.
pub fn read_revoked(path: &Path) -> Result<Vec<String>, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

impl Admission for ConsortiumAdmission {
    fn admit(&self, member: &str) -> Result<(), Refusal> {
        // Fail closed: an unreadable revocation list admits nobody.
        let revoked =
            read_revoked(&self.revoked_path).map_err(|_| Refusal::Other("revocation list unreadable".into()))?;
        if revoked.iter().any(|r| r == member) {
            tracing::warn!(member, "refused: certificate revoked");
            return Err(Refusal::Revoked);
        }
        if !self.members.iter().any(|m| m == member) {
            tracing::warn!(member, "refused: valid certificate but not a member of the consortium");
            return Err(Refusal::NotMember);
        }
        Ok(())
    }
}

/// Writes each round to the run directory and the log.
pub struct FileObserver {
    pub run: RunDir,
}

impl RunObserver for FileObserver {
    fn round_finished(&mut self, _outcome: &RoundOutcome, record: &RoundRecord, _c: &Coordinator) {
        tracing::info!("{}", round_line(record));
        if let Err(e) = self.run.append(record) {
            tracing::error!(error = %e, "could not write metrics.jsonl");
        }
    }

    fn round_aborted(&mut self, round: u64, reason: &str, dropped: &[String]) {
        tracing::warn!(round, reason, dropped = dropped.len(), "round abandoned; it will be retried");
        self.run.aborted += 1;
    }
}

/// The coordinator settings an aggregator config implies.
pub fn coordinator_config(cfg: &AggregatorConfig, run_id: RunId, seed: u64) -> CoordinatorConfig {
    CoordinatorConfig {
        run_id,
        rounds: cfg.run.rounds,
        min_clients: cfg.run.min_clients,
        start_quorum: cfg.run.start_quorum.unwrap_or(cfg.run.min_clients),
        cohort: cfg.run.cohort.clone(),
        train: cfg.train.settings(),
        secure: Some(cfg.secure.clone()),
        dp: None,
        strategy: cfg.strategy.clone(),
        round_deadline_ms: (cfg.run.round_deadline_secs * 1000.0) as u64,
        phase_timeout_ms: (cfg.run.phase_timeout_secs * 1000.0) as u64,
        max_round_retries: cfg.run.max_round_retries,
        seed,
        chunk_values: tessera_core::Limits::default().chunk_values,
        stream_slots: 1,
        unhealthy_after: cfg.run.unhealthy_after,
    }
}

/// Bind the QUIC endpoint the config names.
pub fn listen(cfg: &AggregatorConfig) -> Result<Listener, DaemonError> {
    let qcfg = QuicListenerConfig::from_pki_dir(&cfg.server.pki_dir, cfg.server.listen)?;
    let admission = ConsortiumAdmission::new(cfg.server.members.clone(), &cfg.server.pki_dir);
    Ok(qcfg.listen(Arc::new(admission))?)
}

/// Run a whole federated run on `listener` and write the run directory.
pub async fn run(cfg: AggregatorConfig, listener: Listener) -> Result<RunEnd, DaemonError> {
    let seed = cfg.run.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let run_id = RunId(id);
    let initial = tessera_learn::spec::initial_trainable_params(&cfg.model)?;
    tracing::info!(
        run_id = %run_id,
        trainable_values = initial.numel(),
        members = cfg.server.members.len(),
        "aggregator ready; waiting for {} members",
        cfg.run.min_clients
    );
    let coordinator = Coordinator::new(coordinator_config(&cfg, run_id, seed), initial, None, Resume::default());
    let mut observer = FileObserver { run: RunDir::open(&cfg.server.run_dir)? };
    let (coordinator, end) = serve(listener, coordinator, &mut observer, DriverOptions::default()).await;
    let final_round = observer.run.records.last().cloned();
    let summary = Summary {
        run_id: run_id.to_hex(),
        completed_rounds: end.completed_rounds,
        aborted_rounds: observer.run.aborted,
        stop_reason: end.reason.clone(),
        final_round,
        final_model_sha256: coordinator.global().digest_hex(),
        epsilon: None,
        delta: None,
        config: &cfg,
    };
    observer.run.write_summary(&summary)?;
    observer
        .run
        .write_file("model.json", serde_json::to_vec(&**coordinator.global()).unwrap_or_default().as_slice())?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(end)
}
