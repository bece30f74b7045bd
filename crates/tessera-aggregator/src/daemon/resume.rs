//! Where a restarted run picks up, from the state database: the newest
//! checkpoint checked against the configuration (the model and the
//! strategy cannot change within a run), the spends already reserved, and
//! the status a restarted daemon shows before its first round.

use tessera_core::{ModelParams, RunId};
use tessera_privacy::GaussianSpend;
use tessera_protocol::ServerOptimizer;
use tessera_protocol::coordinator::Coordinator;

use super::DaemonError;
use super::revocations::member_revoked;
use crate::config::AggregatorConfig;
use crate::observer::point;
use crate::revocation::RevocationList;
use crate::status::{MemberStatus, RunState, StatusSnapshot};
use crate::store::{StateStore, now_ms};

/// Where a restarted run picks up, from the state database.
pub(super) struct ResumePoint {
    pub global: ModelParams,
    pub optimizer: Option<ServerOptimizer>,
    pub completed: u64,
    pub next_round: u64,
    pub spent: Vec<GaussianSpend>,
}

pub(super) fn resume_point(
    cfg: &AggregatorConfig,
    store: &StateStore,
    initial: ModelParams,
) -> Result<ResumePoint, DaemonError> {
    let completed_rows = store.completed_records()?.len() as u64;
    let (global, optimizer, completed) = match store.latest_checkpoint()? {
        Some(cp) => {
            if cp.model.layout() != initial.layout() {
                return Err(DaemonError::State(
                    "the checkpointed model does not match [model]: the model cannot change within a run".into(),
                ));
            }
            if std::mem::discriminant(&cp.optimizer.config) != std::mem::discriminant(&cfg.strategy) {
                return Err(DaemonError::State(
                    "[strategy] kind differs from the run's: start a new run (new state path) to change it".into(),
                ));
            }
            let (m, v) = cp.optimizer.moments();
            let optimizer = ServerOptimizer::from_moments(cfg.strategy.clone(), m.to_vec(), v.to_vec())
                .map_err(|e| DaemonError::State(e.to_string()))?;
            (cp.model, Some(optimizer), cp.completed)
        }
        None => (initial, None, 0),
    };
    if completed != completed_rows {
        return Err(DaemonError::State(format!(
            "the newest checkpoint is after {completed} rounds but {completed_rows} rounds are recorded complete"
        )));
    }
    let spent = store.reserved_spends()?.into_iter().map(|(_, s)| s).collect();
    Ok(ResumePoint { global, optimizer, completed, next_round: store.max_round()? + 1, spent })
}

/// A restart may change operational settings, not what the run is.
pub(super) fn check_resumable(cfg: &AggregatorConfig, store: &StateStore, seed: u64) -> Result<(), DaemonError> {
    if cfg.run.seed.is_some_and(|s| s != seed) {
        return Err(DaemonError::State(format!(
            "run.seed differs from the seed of the run in {} ({seed})",
            store.path().display()
        )));
    }
    if let Some(prev) = store.latest_config()? {
        let prev: serde_json::Value = serde_json::from_str(&prev).map_err(|e| DaemonError::State(e.to_string()))?;
        let model = serde_json::to_value(&cfg.model).map_err(|e| DaemonError::State(e.to_string()))?;
        if prev.get("model") != Some(&model) {
            return Err(DaemonError::State(format!(
                "[model] differs from the run in {}: start a new run (new state path) to change the model",
                store.path().display()
            )));
        }
    }
    Ok(())
}

pub(super) fn initial_status(
    cfg: &AggregatorConfig,
    store: &StateStore,
    coordinator: &Coordinator,
    run_id: RunId,
    records: &[tessera_core::RoundRecord],
    revoked: &RevocationList,
) -> Result<StatusSnapshot, DaemonError> {
    let members = cfg
        .server
        .members
        .iter()
        .map(|m| MemberStatus {
            name: m.clone(),
            online: false,
            revoked: member_revoked(revoked, &cfg.server.pki_dir, m),
        })
        .collect();
    let aborted = store.rounds()?.iter().filter(|r| r.status == "aborted" || r.status == "interrupted").count();
    let privacy = coordinator.privacy_status();
    Ok(StatusSnapshot {
        run_id: run_id.to_hex(),
        pid: std::process::id(),
        updated_ms: now_ms(),
        state: RunState::Waiting,
        stop_reason: None,
        rounds_planned: cfg.run.rounds,
        completed_rounds: records.len() as u64,
        aborted_rounds: aborted as u64,
        current_round: None,
        phase: None,
        members,
        epsilon_spent: privacy.as_ref().map(|p| p.epsilon_spent),
        epsilon_budget: privacy.as_ref().map(|p| p.epsilon_budget),
        delta: privacy.as_ref().map(|p| p.delta),
        history: records.iter().enumerate().map(|(i, r)| point(i as u64 + 1, r)).collect(),
    })
}
