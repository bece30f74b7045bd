//! `tessera-aggregator serve`: config → state database (resume point) →
//! QUIC listener with mTLS admission → coordinator → database, run
//! directory and status endpoint. Kept in the library so end-to-end tests
//! run the very same code in-process: [`listen`], then [`run`].
//!
//! [`initial_params`] (the run's starting model) and [`coordinator_config`]
//! (what a config means to the coordinator) are the daemon's own
//! derivations, shared so the simulator and the fuzz targets cannot drift
//! from it.
//!
//! Revocation is a plain file, [`REVOKED_FILE`] in the PKI directory (see
//! [`RevocationList`] for its format). Admission re-reads it at every
//! connection, so a revoked certificate or name cannot get in even between
//! two polls. A watcher task polls it every [`REVOCATION_POLL`] (250 ms):
//! a change is handed to the driver, which closes the live connections it
//! now refuses with [`tessera_transport::close_code::REVOKED`] and a reason
//! naming the entry, and is recorded (audited) in the state database. Why
//! polling rather than inotify: it works the same whether the operator
//! runs `pki revoke`, edits the file, or configuration management replaces
//! it (new inode), on any file system; and a 250 ms read of a tiny file is
//! free. Revocation takes effect within about 250 ms plus one round trip.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::RngCore;
use tessera_core::ModelSection;
use tessera_core::{ModelParams, RunId};
use tessera_transport::pki::CertFingerprint;
use tessera_transport::{Admission, Listener, QuicListenerConfig, Refusal};
use tokio::sync::watch;

use crate::config::AggregatorConfig;
use crate::driver::{DriverOptions, RunEnd, serve};
use crate::http::SharedStatus;
use crate::observer::{DaemonObserver, SharedStore, lock, lock_status};
use crate::quorum::{QUORUM_GRACE, QuorumInputs, QuorumWatch, watch_quorum};
use crate::report::{RunDir, Summary};
pub use crate::revocation::REVOKED_FILE;
use crate::revocation::{RevocationError, RevocationList};
use crate::status::RunState;
use crate::store::{StateStore, now_ms};
use tessera_protocol::AdmissionPolicy;
use tessera_protocol::coordinator::{CentralNoise, CohortSelection, Coordinator, CoordinatorConfig, Resume};

mod resume;
mod revocations;

use resume::{check_resumable, initial_status, resume_point};
use revocations::{record_revocations, watch_revocations};

/// Why the daemon could not start or finish a run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Binding the QUIC endpoint or loading the PKI failed.
    #[error(transparent)]
    Transport(#[from] tessera_transport::TransportError),
    /// The tabular `[model]` could not be built.
    #[error("model")]
    Model(#[from] tessera_tabular::LearnError),
    /// The image `[model]` could not be built (or its weights loaded).
    #[error("image model")]
    Vision(#[from] tessera_vision::VisionError),
    /// The run directory could not be written.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// The revocation list exists but could not be read or parsed.
    #[error(transparent)]
    Revocations(#[from] RevocationError),
    /// The coordinator refused the settings the config implies.
    #[error("run configuration")]
    Config(#[from] tessera_protocol::coordinator::ConfigError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Another daemon serves the same state database (or its lock file
    /// could not be taken).
    #[error(transparent)]
    Lock(#[from] crate::instance::LockError),
    /// The stored run cannot be resumed under this config (model, seed or
    /// strategy changed, checkpoint inconsistent), or the status endpoint
    /// could not bind.
    #[error("state: {0}")]
    State(String),
}

/// The run's starting point: the trainable tensors of the network `[model]`
/// describes. For an image network this builds it (loading the public
/// pretrained checkpoint where configured) only to read those tensors. The
/// daemon and the simulator both start from this one function.
pub fn initial_params(model: &ModelSection) -> Result<ModelParams, DaemonError> {
    Ok(match model {
        ModelSection::Tabular(m) => tessera_tabular::initial_trainable_params(m)?,
        ModelSection::Vision(m) => {
            let device = tessera_learn::DEFAULT_BACKEND.training_device();
            tessera_vision::VisionNet::build(m, &device)?.trainable_params()?
        }
    })
}

/// How often the daemon re-reads the revocation list for changes that
/// must reach live connections.
pub const REVOCATION_POLL: Duration = Duration::from_millis(250);

/// Members admitted by the config's member list minus the revocation list,
/// re-read at every connection so `pki revoke` takes effect immediately.
struct ConsortiumAdmission {
    members: Vec<String>,
    revoked_path: PathBuf,
}

impl ConsortiumAdmission {
    fn new(members: Vec<String>, pki_dir: &Path) -> Self {
        Self { members, revoked_path: pki_dir.join(REVOKED_FILE) }
    }

    fn judge(&self, member: &str, certificate: Option<&CertFingerprint>) -> Result<(), Refusal> {
        // Fail closed: an unreadable or malformed revocation list admits nobody.
        let revoked = RevocationList::read(&self.revoked_path).map_err(|e| {
            tracing::error!(member = %member, error = %tessera_cli::ErrorChain(&e), "refused: the revocation list cannot be read");
            Refusal::Other("revocation list unreadable".into())
        })?;
        if let Some(by) = revoked.refuses(member, certificate) {
            tracing::warn!(member = %member, reason = %by, "refused");
            return Err(Refusal::Revoked);
        }
        if !self.members.iter().any(|m| m == member) {
            tracing::warn!(member = %member, "refused: valid certificate but not a member of the consortium");
            return Err(Refusal::NotMember);
        }
        Ok(())
    }
}

impl Admission for ConsortiumAdmission {
    fn admit(&self, member: &str) -> Result<(), Refusal> {
        self.judge(member, None)
    }

    fn admit_certificate(&self, member: &str, fingerprint: &CertFingerprint) -> Result<(), Refusal> {
        self.judge(member, Some(fingerprint))
    }
}

/// The coordinator settings an aggregator config implies.
pub fn coordinator_config(
    cfg: &AggregatorConfig,
    run_id: RunId,
    seed: u64,
    admission: AdmissionPolicy,
) -> CoordinatorConfig {
    CoordinatorConfig {
        run_id,
        rounds: cfg.run.rounds,
        min_clients: cfg.run.min_clients,
        start_quorum: cfg.run.start_quorum.unwrap_or(cfg.run.min_clients),
        cohort: match cfg.run.cohort.clone() {
            // Poisson cohorts' fixed denominator q·N: N defaults to the
            // admitted roster, the consortium's public size.
            CohortSelection::Poisson { rate, population: None } => {
                CohortSelection::Poisson { rate, population: Some(cfg.server.members.len() as u32) }
            }
            other => other,
        },
        train: cfg.train.settings(),
        secure: Some(cfg.secure.clone()),
        dp: cfg.privacy.clone().map(|mut p| {
            // Private evaluation's confusion matrix is k×k for the model's k.
            if let Some(e) = p.evaluation.as_mut() {
                let k = match &cfg.model {
                    tessera_core::ModelSection::Tabular(m) => m.num_classes,
                    tessera_core::ModelSection::Vision(v) => v.num_classes,
                };
                e.classes = e.classes.or(Some(k as u32));
            }
            p
        }),
        strategy: cfg.strategy.clone(),
        round_deadline_ms: (cfg.run.round_deadline_secs * 1000.0) as u64,
        phase_timeout_ms: (cfg.run.phase_timeout_secs * 1000.0) as u64,
        max_round_retries: cfg.run.max_round_retries,
        retry_backoff_ms: (cfg.run.retry_backoff_secs * 1000.0) as u64,
        retry_backoff_max_ms: (cfg.run.retry_backoff_max_secs * 1000.0) as u64,
        seed,
        chunk_values: tessera_core::Limits::default().chunk_values,
        stream_slots: 1,
        stream_idle_ms: (cfg.run.stream_idle_secs * 1000.0) as u64,
        unhealthy_after: cfg.run.unhealthy_after,
        admission: Some(admission),
        robust: None,
        evaluate_every: cfg.run.evaluate_every,
    }
}

/// Refuse to start when another daemon serves the config's state database
/// (its lock file names the holder's PID); `serve` asks this before it
/// binds its port. [`run`] takes the lock itself and holds it until it
/// returns, so this check is a courtesy, not the exclusion.
pub fn check_single_instance(cfg: &AggregatorConfig) -> Result<(), DaemonError> {
    Ok(crate::instance::check_unlocked(&cfg.state_path())?)
}

/// Bind the QUIC endpoint the config names. The endpoint holds at most
/// [`connection_limit`] connections (handshaking or admitted) at once.
pub fn listen(cfg: &AggregatorConfig) -> Result<Listener, DaemonError> {
    let mut qcfg = QuicListenerConfig::from_pki_dir(&cfg.server.pki_dir, cfg.server.listen)?;
    qcfg.max_connections = connection_limit(qcfg.max_connections, cfg.server.members.len());
    if let Some(n) = cfg.server.max_handshakes {
        qcfg.max_handshakes = n;
    }
    let admission = ConsortiumAdmission::new(cfg.server.members.clone(), &cfg.server.pki_dir);
    Ok(qcfg.listen(Arc::new(admission))?)
}

/// The endpoint's connection limit for a consortium of `members`: the
/// transport's `default` (1024), or every member plus 64 when that is more.
/// A fixed 1024 would turn the 1,025th member of a larger consortium away
/// for good; the 64 leave room for reconnects that briefly overlap the
/// connection they replace and for handshakes that will be refused. The
/// limit still bounds what unauthenticated peers can hold
/// (`docs/threat-model.md`, "Handshake capacity").
pub fn connection_limit(default: usize, members: usize) -> usize {
    default.max(members.saturating_add(64))
}

/// Run (or resume) the federated run on `listener`: state database first,
/// then the run directory and, when configured, the status endpoint.
pub async fn run(cfg: AggregatorConfig, listener: Listener) -> Result<RunEnd, DaemonError> {
    run_with(cfg, listener, false).await
}

/// `tessera-aggregator statistics`: run only the `[statistics]` release
/// with the members that connect, then end (telling members the run is
/// over) without marking the run finished, so `serve` then trains from
/// where it is. Refused when the config has no `[statistics]` or the
/// release is already in the run directory.
pub async fn run_statistics(cfg: AggregatorConfig, listener: Listener) -> Result<RunEnd, DaemonError> {
    run_with(cfg, listener, true).await
}

async fn run_with(cfg: AggregatorConfig, listener: Listener, only_statistics: bool) -> Result<RunEnd, DaemonError> {
    let state_path = cfg.state_path();
    // Held until this function returns: one daemon per state database.
    let _instance = crate::instance::lock_state(&state_path)?;
    let mut store = StateStore::open(&state_path)?;
    let now = now_ms();
    let config_json = serde_json::to_string(&cfg).map_err(|e| DaemonError::State(e.to_string()))?;
    let initial = initial_params(&cfg.model)?;
    let (run_id, seed) = match store.run_info()? {
        Some(info) => {
            check_resumable(&cfg, &store, info.seed)?;
            if let Some(changed) = store.record_config(&config_json, now)? {
                tracing::warn!(sections = ?changed, "configuration changed since the last start (audited)");
            }
            (info.run_id, info.seed)
        }
        None => {
            let seed = cfg.run.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
            let mut id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            store.create_run(RunId(id), seed, &config_json, now)?;
            (RunId(id), seed)
        }
    };
    if cfg.privacy.as_ref().is_some_and(|p| p.evaluation.is_none()) && cfg.run.evaluate_every > 0 {
        tracing::warn!(
            "evaluation is off under [privacy]: an evaluation report (example count, loss, confusion matrix) \
             is an exact statistic of a member's data, so no member is asked for one in the clear, and \
             [privacy.evaluation] (private evaluation inside the noised secure sum) is not configured; \
             metrics.jsonl records no accuracy or loss for this run (issue #18)"
        );
    }
    let interrupted = store.interrupt_open_rounds(now)?;
    let resume = resume_point(&cfg, &store, initial)?;
    let revoked_path = cfg.server.pki_dir.join(REVOKED_FILE);
    let revoked = RevocationList::read(&revoked_path)?;
    record_revocations(&mut store, &revoked, now)?;
    store.record_start(resume.completed, resume.next_round, now)?;
    let records = store.completed_records()?;
    tracing::info!(
        run_id = %run_id,
        state = %state_path.display(),
        completed = resume.completed,
        next_round = resume.next_round,
        interrupted = interrupted.len(),
        trainable_values = resume.global.numel(),
        "aggregator ready; waiting for {} members",
        cfg.run.min_clients
    );
    let admission = cfg.admission_policy().map_err(DaemonError::State)?;
    if admission.check_schema {
        tracing::info!(settings = %admission.expected, "members must announce these settings to be admitted");
    } else {
        tracing::warn!(
            settings = %admission.expected,
            "no [data] schema: members' [model] is checked at admission, their feature schemas are not"
        );
    }
    let spent = resume.spent.clone();
    let statistics = crate::statistics::statistics_plan(&cfg, &store)?;
    if only_statistics && !statistics.as_ref().is_some_and(|(_, pending)| *pending) {
        return Err(DaemonError::State(match statistics {
            None => "the configuration has no [statistics] section".into(),
            Some(_) => format!("the statistics release is already in {}", cfg.server.run_dir.display()),
        }));
    }
    let mut coordinator_cfg = coordinator_config(&cfg, run_id, seed, admission);
    if only_statistics {
        // No training round after the release.
        coordinator_cfg.rounds = resume.completed;
    }
    let coordinator = Coordinator::new(
        coordinator_cfg,
        resume.global,
        resume.optimizer,
        Resume {
            next_round: resume.next_round,
            completed_rounds: resume.completed,
            spent,
            clip_norm: records.last().and_then(|r| r.next_clip_norm),
        },
        central_noise_key(),
    )?;
    let coordinator = match statistics {
        Some((release, pending)) => coordinator.with_statistics(release, pending)?,
        None => coordinator,
    };
    let remaining = cfg.run.rounds.saturating_sub(resume.completed);
    if let Some(affordable) = coordinator.affordable_rounds().filter(|a| *a < remaining) {
        tracing::warn!(
            remaining,
            affordable,
            "the remaining privacy budget affords {affordable} of the {remaining} rounds still to run (an \
             interrupted or aborted attempt's spend stays charged): the run will end after {} rounds",
            resume.completed + affordable
        );
    }

    let status: SharedStatus =
        Arc::new(RwLock::new(initial_status(&cfg, &store, &coordinator, run_id, &records, &revoked)?));
    let store: SharedStore = Arc::new(Mutex::new(store));
    let server = match cfg.status.listen {
        Some(addr) => {
            let (bound, task) = crate::http::spawn(addr, status.clone())
                .map_err(|e| DaemonError::State(format!("status endpoint {addr}: {e}")))?;
            tracing::info!("status page on http://{bound}/ (Prometheus: /metrics)");
            Some(task)
        }
        None => None,
    };
    let heartbeat = tokio::spawn(heartbeat(store.clone(), status.clone()));
    let quorum = tokio::spawn(watch_quorum(
        QuorumInputs {
            members: cfg.server.members.clone(),
            pki_dir: cfg.server.pki_dir.clone(),
            revoked_path: revoked_path.clone(),
            status: status.clone(),
        },
        QuorumWatch::new(cfg.run.min_clients, Duration::from_secs_f64(cfg.run.quorum_warning_secs), QUORUM_GRACE),
    ));
    let (revocations_tx, revocations) = watch::channel(Arc::new(revoked.clone()));
    let watcher = tokio::spawn(watch_revocations(
        revoked_path,
        cfg.server.pki_dir.clone(),
        revoked,
        store.clone(),
        status.clone(),
        revocations_tx,
    ));
    let run_dir = RunDir::resume(&cfg.server.run_dir, &records)?;
    let mut observer =
        DaemonObserver::new(store.clone(), run_dir, status.clone(), cfg.state.keep_checkpoints, resume.completed);
    observer.refresh(&coordinator, true);
    observer.schema = cfg.schema().ok().flatten();
    let already_done = resume.completed >= cfg.run.rounds && !only_statistics;
    let (coordinator, end) = if already_done {
        // Nothing left to run (e.g. the last process died after the last
        // round): record the end and rewrite the outputs.
        let reason = format!("completed {} rounds", cfg.run.rounds);
        tracing::info!("{reason}; the run in the state database is already complete");
        drop(listener);
        (coordinator, RunEnd { reason, completed_rounds: resume.completed, failed: None })
    } else {
        let opts = DriverOptions { revocations: Some(revocations), ..DriverOptions::default() };
        serve(listener, coordinator, &mut observer, opts).await
    };
    heartbeat.abort();
    quorum.abort();
    watcher.abort();

    let digest = coordinator.global().digest_hex();
    // A run that could not make progress is not over: a restart (after
    // the operator fixed the cause) resumes it.
    let finished = ((coordinator.is_finished() && end.failed.is_none()) || already_done) && !only_statistics;
    if finished && lock(&store).run_info()?.is_some_and(|r| r.finished.is_none()) {
        lock(&store).finish_run(&end.reason, end.completed_rounds, &digest, now_ms())?;
    }
    let aborted_rounds = {
        let mut s = lock_status(&status);
        s.state = if finished { RunState::Finished } else { RunState::Waiting };
        s.stop_reason = Some(end.reason.clone());
        s.current_round = None;
        s.phase = None;
        s.updated_ms = now_ms();
        s.aborted_rounds
    };
    observer.write_status();
    let privacy = coordinator.privacy_status();
    let summary = Summary {
        run_id: run_id.to_hex(),
        completed_rounds: end.completed_rounds,
        aborted_rounds,
        stop_reason: end.reason.clone(),
        final_round: observer.run.records.last().cloned(),
        final_model_sha256: digest,
        epsilon: privacy.as_ref().map(|p| p.epsilon_spent),
        delta: privacy.as_ref().map(|p| p.delta),
        config: &cfg,
    };
    observer.run.write_summary(&summary)?;
    observer
        .run
        .write_file("model.json", serde_json::to_vec(&**coordinator.global()).unwrap_or_default().as_slice())?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Some(task) = server {
        task.abort();
    }
    Ok(end)
}

/// Every two seconds: refresh the stored status row, so `status` can tell
/// a live daemon from a dead one.
async fn heartbeat(store: SharedStore, status: SharedStatus) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = now_ms();
        let json = {
            let mut s = lock_status(&status);
            s.updated_ms = now;
            serde_json::to_string(&*s).unwrap_or_default()
        };
        if let Err(e) = lock(&store).write_status(&json, now) {
            tracing::warn!(error = %tessera_cli::ErrorChain(&e), "could not write the status row");
        }
    }
}

/// The coordinator's key (central DP noise and cohort draws), fresh from
/// the OS for every process: it is never stored, so not even the operator's
/// disk can subtract the noise, and nobody can predict a cohort; each
/// round's cohort seed is recorded in the audit store once drawn.
fn central_noise_key() -> CentralNoise {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    CentralNoise::secret(key)
}
