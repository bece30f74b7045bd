//! The daemon's [`RunObserver`]: every round event goes to the state
//! database first (durably, in the order crash recovery needs), then to the
//! run directory and the log, and into the live status snapshot.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tessera_core::RoundRecord;
use tessera_privacy::GaussianSpend;

use crate::driver::RunObserver;
use crate::http::SharedStatus;
use crate::report::RunDir;
use crate::status::{RoundPoint, RunState, StatusSnapshot};
use crate::store::{FinishedRound, StateStore, StoreError, now_ms};
use tessera_protocol::AdmissionRefusal;
use tessera_protocol::coordinator::{Coordinator, Dropout, RoundOutcome, StatisticsOutcome};

/// Test-only fault injection: after the completion of this many rounds has
/// been committed, the daemon stops making progress (as if hung), so a test
/// can SIGKILL it at exactly that point. Read only in builds with the
/// `fault-injection` feature, which only the workspace's test crate turns
/// on (as a dev-dependency, so `cargo build --release` leaves it off).
pub const STALL_ENV: &str = "TESSERA_TEST_STALL_AFTER_ROUND";

/// Test-only fault injection, like [`STALL_ENV`]: the daemon stops making
/// progress when this logical round has been summed and its server step
/// applied in memory, before anything of it is committed, so a test can
/// SIGKILL it inside that window. Under DP no member evaluates after the
/// sum (evaluation rides inside the update), so no member can hold the
/// window open from outside.
pub const STALL_BEFORE_COMMIT_ENV: &str = "TESSERA_TEST_STALL_BEFORE_COMMIT";

/// Test-only fault injection, like [`STALL_ENV`] (any number as its value):
/// the daemon stops making progress once a DP statistics release is
/// recorded in the state database and before `statistics.json` is written,
/// so a test can SIGKILL it there and see the restart rewrite the file
/// without a second release.
pub const STALL_AFTER_RELEASE_ENV: &str = "TESSERA_TEST_STALL_AFTER_RELEASE";

pub(crate) type SharedStore = Arc<Mutex<StateStore>>;

/// Lock the store; a panic elsewhere while holding it leaves it usable
/// (every write is a transaction).
pub(crate) fn lock(store: &SharedStore) -> MutexGuard<'_, StateStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn lock_status(status: &SharedStatus) -> std::sync::RwLockWriteGuard<'_, StatusSnapshot> {
    status.write().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct DaemonObserver {
    store: SharedStore,
    pub(crate) run: RunDir,
    status: SharedStatus,
    /// Checkpoints kept.
    keep: u32,
    /// Completed rounds so far (the next round is the `completed + 1`-th).
    completed: u64,
    /// Attempts at the logical round `completed + 1` started by this
    /// process (the wire round number counts every attempt of the run).
    attempt: u64,
    /// The first failed database write; the run stops before the next round.
    failed: Option<String>,
    stall_after: Option<u64>,
    stall_before_commit: Option<u64>,
    stall_after_release: Option<u64>,
    last_status_write: i64,
    /// Names the features of a statistics release.
    pub(crate) schema: Option<tessera_core::FeatureSchema>,
}

/// A test-only knob's round, in builds with the `fault-injection` feature.
fn stall_knob(name: &str) -> Option<u64> {
    cfg!(feature = "fault-injection").then(|| std::env::var(name).ok()?.parse().ok()).flatten()
}

/// Stop making progress until killed (test-only fault injection).
fn stall_forever(knob: &str, logical: u64) -> ! {
    tracing::warn!("{knob}={logical}: stalling here until killed (test-only fault injection)");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

impl DaemonObserver {
    pub(crate) fn new(store: SharedStore, run: RunDir, status: SharedStatus, keep: u32, completed: u64) -> Self {
        Self {
            store,
            run,
            status,
            keep,
            completed,
            attempt: 0,
            failed: None,
            stall_after: stall_knob(STALL_ENV),
            stall_before_commit: stall_knob(STALL_BEFORE_COMMIT_ENV),
            stall_after_release: stall_knob(STALL_AFTER_RELEASE_ENV),
            last_status_write: 0,
            schema: None,
        }
    }

    fn fail(&mut self, what: &str, e: &(dyn std::error::Error + 'static)) {
        let e = tessera_cli::ErrorChain(e);
        tracing::error!(error = %e, "state database: {what} failed; the run stops before the next round");
        self.failed.get_or_insert_with(|| format!("{what}: {e}"));
    }

    /// Update the live snapshot from the coordinator and store it (at most
    /// once a second unless `force`).
    pub(crate) fn refresh(&mut self, coordinator: &Coordinator, force: bool) {
        let now = now_ms();
        {
            let mut s = lock_status(&self.status);
            s.updated_ms = now;
            // Called on every state change: linear in the members, never
            // quadratic (at 10,000 members a scan per member was most of
            // the daemon's CPU; docs/benchmarks.md, "Load: the aggregator
            // daemon at 10,000 members").
            let online: HashSet<&str> = coordinator.online().map(String::as_str).collect();
            let mut listed = 0;
            for m in &mut s.members {
                m.online = online.contains(m.name.as_str());
                listed += usize::from(m.online);
            }
            // Rare: someone online who is not listed yet.
            if listed != online.len() {
                let known: HashSet<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
                let new: Vec<String> = coordinator.online().filter(|n| !known.contains(n.as_str())).cloned().collect();
                for name in new {
                    s.members.push(crate::status::MemberStatus { name, online: true, revoked: false });
                }
            }
            match coordinator.progress() {
                Some((round, phase)) => {
                    s.state = RunState::Running;
                    s.current_round = Some(round);
                    s.phase = Some(phase.to_string());
                }
                None => {
                    s.current_round = None;
                    s.phase = None;
                    if s.state != RunState::Finished {
                        s.state = RunState::Waiting;
                    }
                }
            }
            if let Some(p) = coordinator.privacy_status() {
                s.epsilon_spent = Some(p.epsilon_spent);
                s.epsilon_budget = Some(p.epsilon_budget);
                s.delta = Some(p.delta);
            }
        }
        if force || now - self.last_status_write >= 1000 {
            self.write_status();
        }
    }

    /// Persist the snapshot for `tessera-aggregator status`.
    pub(crate) fn write_status(&mut self) {
        let (json, now) = {
            let s = self.status.read().unwrap_or_else(|p| p.into_inner());
            (serde_json::to_string(&*s).unwrap_or_default(), s.updated_ms)
        };
        self.last_status_write = now;
        if let Err(e) = lock(&self.store).write_status(&json, now) {
            tracing::warn!(error = %tessera_cli::ErrorChain(&e), "could not write the status row");
        }
    }
}

impl RunObserver for DaemonObserver {
    fn round_started(&mut self, round: u64, cohort: &[String], cohort_seed: u64) -> Result<(), StoreError> {
        let logical = self.completed + 1;
        self.attempt += 1;
        tracing::info!(
            round = logical,
            attempt = self.attempt,
            wire_round = round,
            cohort = cohort.len(),
            "round started"
        );
        let now = now_ms();
        let mut store = lock(&self.store);
        if let Err(e) = store.round_started(round, logical, cohort, cohort_seed, now) {
            drop(store);
            self.fail("recording a round start", &e);
            return Err(e);
        }
        match store.members_seen(cohort, now) {
            Ok(first) => {
                for m in first {
                    tracing::info!(member = %m, "first admission recorded in the audit log");
                }
            }
            Err(e) => tracing::warn!(error = %tessera_cli::ErrorChain(&e), "could not record members seen"),
        }
        drop(store);
        let mut s = lock_status(&self.status);
        s.state = RunState::Running;
        s.current_round = Some(round);
        s.updated_ms = now;
        let cohort: HashSet<&str> = cohort.iter().map(String::as_str).collect();
        for m in &mut s.members {
            if cohort.contains(m.name.as_str()) {
                m.online = true;
            }
        }
        Ok(())
    }

    fn state_changed(&mut self, coordinator: &Coordinator) {
        self.refresh(coordinator, false);
    }

    fn privacy_reserved(
        &mut self,
        round: u64,
        spend: &GaussianSpend,
        epsilon: f64,
        delta: f64,
    ) -> Result<(), StoreError> {
        lock(&self.store).privacy_reserved(round, spend, epsilon, delta, now_ms())?;
        let logical = self.completed + 1;
        tracing::info!(round = logical, wire_round = round, epsilon, delta, "privacy spend reserved in the ledger");
        let mut s = lock_status(&self.status);
        s.epsilon_spent = Some(epsilon);
        s.delta = Some(delta);
        Ok(())
    }

    fn round_finished(&mut self, outcome: &RoundOutcome, record: &RoundRecord, coordinator: &Coordinator) {
        let logical = self.completed + 1;
        if self.stall_before_commit == Some(logical) {
            stall_forever(STALL_BEFORE_COMMIT_ENV, logical);
        }
        let finished = FinishedRound {
            round: outcome.round,
            logical,
            contributors: &outcome.contributors,
            dropped: &outcome.dropped,
            record,
            model: coordinator.global(),
            optimizer: coordinator.optimizer(),
        };
        let res = lock(&self.store).round_finished(&finished, self.keep, now_ms());
        if let Err(e) = res {
            return self.fail("recording a completed round", &e);
        }
        self.completed = logical;
        let r = record;
        tracing::info!(
            round = logical,
            attempt = std::mem::take(&mut self.attempt),
            wire_round = r.round,
            participants = r.participants,
            dropped = r.dropped,
            loss = r.loss,
            accuracy = r.accuracy,
            auc = r.auc,
            bytes_up = r.bytes_up,
            bytes_down = r.bytes_down,
            seconds = r.seconds,
            epsilon = r.epsilon,
            "round completed"
        );
        if let Err(e) = self.run.append(record) {
            tracing::error!(error = %tessera_cli::ErrorChain(&e), "could not write metrics.jsonl");
        }
        {
            let mut s = lock_status(&self.status);
            s.completed_rounds = logical;
            s.history.push(point(logical, record));
        }
        self.refresh(coordinator, true);
        if self.stall_after == Some(logical) {
            stall_forever(STALL_ENV, logical);
        }
    }

    fn round_aborted(&mut self, round: u64, reason: &str, dropped: &[Dropout], refunded: Option<f64>) {
        let causes: Vec<String> = dropped.iter().map(Dropout::to_string).collect();
        tracing::warn!(
            round = self.completed + 1,
            attempt = self.attempt,
            wire_round = round,
            reason,
            dropped = causes.join("; "),
            "round attempt abandoned"
        );
        if let Some(epsilon) = refunded {
            tracing::info!(
                wire_round = round,
                epsilon,
                "no member handed in an update: the attempt's privacy reservation is refunded"
            );
        }
        self.run.aborted += 1;
        let res = lock(&self.store).round_aborted(round, reason, dropped, refunded, now_ms());
        if let Err(e) = res {
            self.fail("recording an aborted round", &e);
        }
        let mut s = lock_status(&self.status);
        s.aborted_rounds += 1;
        s.current_round = None;
        s.phase = None;
    }

    fn admission_refused(&mut self, refusal: &AdmissionRefusal) {
        tracing::error!(member = refusal.member(), reason = %refusal, "member refused at admission");
        let res = lock(&self.store).admission_refused(refusal, now_ms());
        if let Err(e) = res {
            self.fail("recording an admission refusal", &e);
        }
    }

    fn bad_shares(&mut self, round: u64, members: &[String]) {
        tracing::warn!(round, ?members, "revealed shares failed their check and were left out");
        let res = lock(&self.store).bad_shares(round, members, now_ms());
        if let Err(e) = res {
            self.fail("recording bad shares", &e);
        }
    }

    fn statistics_released(&mut self, outcome: &StatisticsOutcome) {
        let released = crate::statistics_json(outcome, self.schema.as_ref());
        let body = serde_json::json!({
            "round": outcome.round,
            "file": crate::STATISTICS_FILE,
            "contributors": outcome.contributors,
            "noise_multiplier": outcome.release.noise_multiplier,
            "epsilon_opendp": outcome.opendp.epsilon,
            "delta": outcome.opendp.delta,
            "run_epsilon_after": outcome.run_epsilon,
        });
        // The database first: once this returns, a restart rewrites the
        // file from it and never releases (and charges) a second time.
        let res = lock(&self.store).statistics_released(outcome.round, &released, &body, now_ms());
        if let Err(e) = res {
            return self.fail("recording the statistics release", &e);
        }
        if self.stall_after_release.is_some() {
            stall_forever(STALL_AFTER_RELEASE_ENV, 1);
        }
        if let Err(e) = crate::statistics::write_statistics_file(self.run.dir(), &released) {
            tracing::error!(error = %tessera_cli::ErrorChain(&e), "could not write the statistics release");
            self.failed.get_or_insert_with(|| format!("writing {}: {e}", crate::STATISTICS_FILE));
        }
        self.attempt = 0;
        tracing::info!(
            wire_round = outcome.round,
            contributors = outcome.contributors.len(),
            epsilon_opendp = outcome.opendp.epsilon,
            run_epsilon = outcome.run_epsilon,
            file = crate::STATISTICS_FILE,
            "DP statistics released"
        );
    }

    fn veto_next_round(&mut self, _coordinator: &Coordinator) -> Option<String> {
        self.failed.as_ref().map(|f| format!("state database write failed ({f}); stopping"))
    }
}

/// A completed round as a chart point.
pub(crate) fn point(logical: u64, r: &RoundRecord) -> RoundPoint {
    RoundPoint {
        logical,
        round: r.round,
        accuracy: r.accuracy,
        loss: r.loss,
        participants: r.participants,
        dropped: r.dropped,
        epsilon: r.epsilon,
    }
}
