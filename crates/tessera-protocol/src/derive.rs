//! Every value the member and the coordinator must derive alike, one
//! function each. If the two sides computed these separately, a change on
//! one side would make rounds stop unmasking; here both call the same code.

use tessera_core::{ModelParams, ParamLayout, ParamsError, RoundSettings, RunId, SecAggSettings, SharedList};
use tessera_privacy::{DistributedPlan, PrivacyError};
use tessera_secagg::{AggregateSum, RoundContext, SecAggError, ValueCoding};

/// Why an agreed value could not be derived, or an aggregate not decoded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DeriveError {
    /// A secure sum arrived for a round whose settings have no secure aggregation.
    #[error("secure sum in a plaintext round")]
    NotSecure,
    /// The round's distributed-noise plan could not be made.
    #[error("privacy plan: {0}")]
    Plan(#[from] PrivacyError),
    /// Secure aggregation rejected the context or the sum.
    #[error(transparent)]
    SecAgg(#[from] SecAggError),
    /// Research mode: the contributors' total weight is zero.
    #[error("contributors' total weight is zero")]
    ZeroWeight,
    /// The decoded values do not fit the update layout.
    #[error(transparent)]
    Params(#[from] ParamsError),
}

/// Length of the masked vector for an update of `layout`: every value plus
/// the weight coordinate.
pub fn update_vector_len(layout: &ParamLayout) -> u64 {
    tessera_secagg::vector_len(layout)
}

/// The secure-aggregation context of one round. `update_layout` is what
/// members upload ([`RoundSettings::update_layout`] of the global model).
pub fn round_context(
    run_id: RunId,
    round: u64,
    cohort: &[String],
    s: &SecAggSettings,
    update_layout: &ParamLayout,
) -> Result<RoundContext, SecAggError> {
    RoundContext::new(run_id, round, cohort, s.clone(), update_vector_len(update_layout))
}

/// [`round_context`] for a cohort shared by the members of one process:
/// its sort check and digest are computed once per list
/// ([`tessera_secagg::shared_cohort_digest`]).
pub fn shared_round_context(
    run_id: RunId,
    round: u64,
    cohort: &SharedList<String>,
    s: &SecAggSettings,
    update_layout: &ParamLayout,
) -> Result<RoundContext, SecAggError> {
    RoundContext::for_shared_cohort(run_id, round, cohort, s.clone(), update_vector_len(update_layout))
}

/// How a round's update values become ring elements, and the distributed
/// noise plan that fixes the grid when members add noise shares.
#[derive(Clone, Debug)]
pub struct UpdateCoding {
    /// The coding of values into the masked vector.
    pub coding: ValueCoding,
    /// The distributed-DP plan, when the round has one.
    pub plan: Option<DistributedPlan>,
}

/// The round's [`UpdateCoding`] for an update of `update_values` values in
/// a cohort of `cohort_size`: centred on the plan's grid under distributed
/// DP, the offset form otherwise.
pub fn update_coding(
    settings: &RoundSettings,
    update_values: u64,
    cohort_size: u32,
) -> Result<UpdateCoding, PrivacyError> {
    let plan = DistributedPlan::for_round(settings, update_values, cohort_size)?;
    let coding = match &plan {
        Some(p) => ValueCoding::Centered { gamma: p.gamma, max_level: p.max_level },
        None => ValueCoding::Offset,
    };
    Ok(UpdateCoding { coding, plan })
}

/// How far rounding can move one update value on its way into the masked
/// vector: the offset coding's quantizer step, the grid step `gamma` of the
/// centred coding, and 0 in a plaintext research round. One member's rounded
/// update then lies within `step · sqrt(d)` (L2) of its clipped update, so
/// noise calibrated on the decoded sum must use the sensitivity
/// `C + step · sqrt(d)` ([`tessera_privacy::rounded_sensitivity`]).
pub fn update_rounding_step(
    settings: &RoundSettings,
    update_values: u64,
    cohort_size: u32,
) -> Result<f64, DeriveError> {
    let Some(s) = settings.secagg.as_ref() else { return Ok(0.0) };
    Ok(match update_coding(settings, update_values, cohort_size)?.coding {
        ValueCoding::Offset => tessera_secagg::Quantizer::symmetric(s.clip_range, s.modulus_bits, cohort_size)?.step(),
        ValueCoding::Centered { gamma, .. } => gamma,
    })
}

/// Mean update from the secure sum, decoded with the round's [`update_coding`].
pub fn mean_from_secure(
    layout: &ParamLayout,
    settings: &RoundSettings,
    cohort_size: u32,
    sum: &AggregateSum,
) -> Result<ModelParams, DeriveError> {
    let s = settings.secagg.as_ref().ok_or(DeriveError::NotSecure)?;
    let coding = update_coding(settings, layout.numel() as u64, cohort_size)?.coding;
    let contributors = sum.survivors.len() as u32;
    Ok(tessera_secagg::mean_update_with(layout, s, cohort_size, &sum.sum, contributors, coding)?)
}

/// Research mode: `sums` holds `Σ w_i Δ_i` in f64, `weight` is `Σ w_i`.
pub fn mean_from_plain(layout: &ParamLayout, sums: &[f64], weight: f64) -> Result<ModelParams, DeriveError> {
    if weight <= 0.0 {
        return Err(DeriveError::ZeroWeight);
    }
    let flat: Vec<f32> = sums.iter().map(|s| (s / weight) as f32).collect();
    Ok(ModelParams::from_flat(layout, &flat)?)
}

/// Derive a sub-seed from the run seed, a round and a purpose label.
pub fn derive_seed(seed: u64, round: u64, label: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(round.to_le_bytes());
    h.update(label);
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}
