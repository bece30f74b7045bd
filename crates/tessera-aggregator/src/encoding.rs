//! From what arrived (a secure sum, or research-mode plaintext sums) to the
//! mean update the server optimizer steps along.

use tessera_core::round::{RoundSettings, SecAggSettings};
use tessera_core::{ModelParams, ParamLayout, RunId};
use tessera_privacy::DistributedPlan;
use tessera_secagg::update::ValueCoding;
use tessera_secagg::{AggregateSum, RoundContext, SecAggError};

/// The secure-aggregation context of one round, as both sides derive it.
pub fn secagg_context(
    run_id: RunId,
    round: u64,
    cohort: &[String],
    s: &SecAggSettings,
    layout: &ParamLayout,
) -> Result<RoundContext, SecAggError> {
    RoundContext::new(run_id, round, cohort, s.clone(), vector_len(layout))
}

pub fn vector_len(layout: &ParamLayout) -> u64 {
    tessera_secagg::update::vector_len(layout)
}

/// Mean update from the secure sum; under distributed DP the values were
/// centred-coded on the grid the round's privacy plan fixes.
pub fn mean_from_secure(
    layout: &ParamLayout,
    settings: &RoundSettings,
    cohort_size: u32,
    sum: &AggregateSum,
) -> Result<ModelParams, String> {
    let s = settings.secagg.as_ref().ok_or("secure sum in a plaintext round")?;
    let coding = match DistributedPlan::for_round(settings, layout.numel() as u64, cohort_size)
        .map_err(|e| format!("privacy plan: {e}"))?
    {
        Some(p) => ValueCoding::Centered { gamma: p.gamma, max_level: p.max_level },
        None => ValueCoding::Offset,
    };
    tessera_secagg::update::mean_update_with(layout, s, cohort_size, &sum.sum, sum.survivors.len() as u32, coding)
        .map_err(|e| e.to_string())
}

/// Research mode: `sums` holds `Σ w_i Δ_i` in f64, `weight` is `Σ w_i`.
pub fn mean_from_plain(layout: &ParamLayout, sums: &[f64], weight: f64) -> Result<ModelParams, String> {
    if weight <= 0.0 {
        return Err("contributors' total weight is zero".into());
    }
    let flat: Vec<f32> = sums.iter().map(|s| (s / weight) as f32).collect();
    ModelParams::from_flat(layout, &flat).map_err(|e| e.to_string())
}
