//! A DP statistics release as the operator reads it (issue #18): the JSON
//! the daemon writes to its run directory (beside the state database) and
//! the simulator to its run directory. Counts are the noised sum as
//! released; ranges and quartiles are read from the noised histograms
//! (post-processing, no further privacy cost).

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
