//! A DP statistics release as the operator reads it (issue #18): the JSON
//! the daemon writes to its run directory (beside the state database) and
//! the simulator to its run directory. Counts are the noised sum as
//! released; ranges and quartiles are read from the noised histograms
//! (post-processing, no further privacy cost).
//!
//! The daemon records the release in its state database before it writes
//! the file, and rewrites the file from the database on every start: the
//! database is the record, the file a copy (see `StateStore::statistics_released`).

use std::path::Path;

use serde_json::{Value, json};
use tessera_core::{FeatureSchema, StatisticsReport};
use tessera_protocol::coordinator::StatisticsOutcome;

/// The file a release is written to, in the run directory.
pub const STATISTICS_FILE: &str = "statistics.json";

/// The release as JSON: what was asked (unit, sensitivity, noise), who
/// contributed, what it cost (the ledgers' RDP spend, OpenDP's rho and
/// epsilon for the release alone, the run's epsilon after it) and the
/// values, named by `schema` when there is one.
pub fn statistics_json(outcome: &StatisticsOutcome, schema: Option<&FeatureSchema>) -> Value {
    let r = &outcome.release;
    let released = match schema {
        Some(s) => serde_json::to_value(StatisticsReport::new(s, &outcome.counts)).unwrap_or(Value::Null),
        None => serde_json::to_value(&outcome.counts).unwrap_or(Value::Null),
    };
    json!({
        "round": outcome.round,
        "unit": r.unit,
        "record_sensitivity": r.record_sensitivity(),
        "sensitivity": r.sensitivity(),
        "bound": r.bound,
        "noise_multiplier": r.noise_multiplier,
        "noise_std": r.sigma(),
        "contributors": outcome.contributors,
        "dropped": outcome.dropped,
        "privacy": {
            "ledger_spend": {
                "noise_multiplier": outcome.spend.noise_multiplier,
                "sampling_rate": outcome.spend.sampling_rate,
                "steps": outcome.spend.steps,
            },
            "opendp": { "rho": outcome.opendp.rho, "epsilon": outcome.opendp.epsilon, "delta": outcome.opendp.delta },
            "run_epsilon_after": outcome.run_epsilon,
        },
        "released": released,
    })
}

/// Write `released` (a [`statistics_json`] value) to `dir`/[`STATISTICS_FILE`],
/// creating `dir`; written durably (fsync'd aside, renamed, the directory
/// fsync'd), so a crash leaves the old file or the new one, never half of
/// one. The state database is the record; this file is rewritten from it
/// at every start.
pub(crate) fn write_statistics_file(dir: &Path, released: &Value) -> Result<(), crate::ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| crate::ReportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    crate::report::write_durably(dir, STATISTICS_FILE, &serde_json::to_vec_pretty(released)?)
}

/// The `[statistics]` release for this run, and whether it still has to
/// run. The state database is the record: a release recorded there is done,
/// and its `statistics.json` is rewritten from it (the process that made it
/// may have died before writing the file; releasing again would charge
/// every ledger twice). Without one, a `statistics.json` already in the run
/// directory (written by an aggregator before schema version 3) counts too.
pub(crate) fn statistics_plan(
    cfg: &crate::AggregatorConfig,
    store: &crate::StateStore,
) -> Result<Option<(tessera_core::StatsRelease, bool)>, crate::DaemonError> {
    let Some(release) = cfg.statistics_release().map_err(crate::DaemonError::State)? else { return Ok(None) };
    if let Some((round, released)) = store.statistics_release()? {
        crate::statistics::write_statistics_file(&cfg.server.run_dir, &released)?;
        tracing::info!(
            wire_round = round,
            file = %cfg.server.run_dir.join(crate::STATISTICS_FILE).display(),
            "the DP statistics release is in the state database; its file is rewritten from it"
        );
        return Ok(Some((release, false)));
    }
    let pending = !cfg.server.run_dir.join(crate::STATISTICS_FILE).exists();
    Ok(Some((release, pending)))
}
