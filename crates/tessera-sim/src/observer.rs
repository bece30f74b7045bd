//! What the simulator records of a run: each round's line in
//! `metrics.jsonl` (simulated time from the latency model, never wall
//! time), aborted attempts, and the progress bar.

use std::collections::BTreeMap;
use std::sync::Arc;

use indicatif::ProgressBar;
use tessera_aggregator::{RunDir, RunObserver, StoreError, round_line};
use tessera_core::RoundRecord;
use tessera_protocol::coordinator::{Coordinator, Dropout, RoundOutcome, StatisticsOutcome};

use crate::faults::FaultPlan;

/// The simulator's [`RunObserver`].
pub(crate) struct SimObserver {
    pub(crate) run: RunDir,
    pub(crate) bar: Option<ProgressBar>,
    pub(crate) plan: Arc<FaultPlan>,
    pub(crate) cohorts: BTreeMap<u64, Vec<usize>>,
    pub(crate) failed: Option<String>,
    /// Names a statistics release's features.
    pub(crate) schema: Option<tessera_core::FeatureSchema>,
}

impl SimObserver {
    /// Member indices from names (`crate::members::member_name`): parsed,
    /// not looked up, so a population costs no name table.
    fn members(&self, names: &[String]) -> Vec<usize> {
        names.iter().filter_map(|n| crate::members::member_index(n)).collect()
    }

    fn write(&mut self, record: &RoundRecord) {
        if let Err(e) = self.run.append(record) {
            tracing::error!(error = %tessera_cli::ErrorChain(&e), "could not write metrics.jsonl");
            self.failed = Some(e.to_string());
        }
    }
}

impl RunObserver for SimObserver {
    fn round_started(&mut self, round: u64, cohort: &[String], _seed: u64) -> Result<(), StoreError> {
        let members = self.members(cohort);
        self.cohorts.insert(round, members);
        Ok(())
    }

    fn round_finished(&mut self, outcome: &RoundOutcome, record: &RoundRecord, _c: &Coordinator) {
        // Simulated time from the latency model, never wall time: metrics
        // must not depend on the machine or the number of workers.
        let mut record = record.clone();
        record.seconds = self.plan.round_seconds(&self.members(&outcome.contributors), outcome.round);
        self.cohorts.remove(&outcome.round);
        let line = round_line(&record);
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.println(line);
            }
            None => tracing::info!("{line}"),
        }
        self.write(&record);
    }

    fn statistics_released(&mut self, outcome: &StatisticsOutcome) {
        let json = tessera_aggregator::statistics_json(outcome, self.schema.as_ref());
        let text = serde_json::to_vec_pretty(&json).unwrap_or_default();
        // Durably: the release is charged, and the simulator keeps no
        // database to rewrite the file from after a crash.
        if let Err(e) = self.run.write_file_durably(tessera_aggregator::STATISTICS_FILE, &text) {
            tracing::error!(error = %tessera_cli::ErrorChain(&e), "could not write statistics.json");
            self.failed = Some(e.to_string());
        }
        let line = format!(
            "DP statistics released by {} members (epsilon {:.4} by OpenDP; run epsilon {:.4})",
            outcome.contributors.len(),
            outcome.opendp.epsilon,
            outcome.run_epsilon
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => tracing::info!("{line}"),
        }
    }

    fn round_aborted(&mut self, round: u64, reason: &str, dropped: &[Dropout], _refunded: Option<f64>) {
        self.run.aborted += 1;
        // Reported in metrics.jsonl too, as a record that produced nothing.
        let cohort = self.cohorts.remove(&round).unwrap_or_default();
        let record = RoundRecord {
            round,
            participants: 0,
            dropped: dropped.len() as u32,
            accepted: false,
            seconds: self.plan.round_seconds(&cohort, round),
            epsilon: self.run.records.iter().rev().find_map(|r| r.epsilon),
            delta: self.run.records.iter().rev().find_map(|r| r.delta),
            ..RoundRecord::default()
        };
        self.write(&record);
        let line = format!("round {round} aborted: {reason}");
        match &self.bar {
            Some(b) => b.println(line),
            None => tracing::warn!("{line}"),
        }
    }
}
