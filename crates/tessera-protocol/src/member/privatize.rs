//! What the member does to its update before it leaves, under DP: the
//! client unit's clip and (local) noise, the record unit's private
//! evaluation, and the record unit's clamp under distributed noise.

use rand_core::{CryptoRng, RngCore};
use tessera_core::{
    DpSettings, EVAL_TENSOR, EvalMetrics, EvalRelease, ModelParams, NoisePlacement, ParamTensor, UNCLIPPED_TENSOR,
};
use tessera_privacy::GaussianSpend;

use super::{PrivacyRefusal, Refusal, UpdateError};

/// The mechanism of [`append_record_evaluation`] and what it was built for.
pub(super) struct RecordEvalNoise {
    spend: GaussianSpend,
    weight: u64,
    len: usize,
    mechanism: tessera_privacy::GaussianMechanism,
}

/// Client-level DP on the member's side: clip the whole update to C and,
/// for local noise, add N_Z noise of std >= z C on a fine grid to every
/// value (`GaussianMechanism`: exact discrete Gaussian, rounding covered).
/// Under adaptive clipping the update is clipped to this round's
/// `update_clip` and the scaled unclipped bit is appended as one more
/// coordinate before any noise, so the bit is privatized with the update.
///
/// Under private evaluation the encoded evaluation (norm at most
/// `eval.norm`) is appended last, and the update is clipped so that the
/// whole vector stays within `clip_norm`.
pub(super) fn privatize_update<R: RngCore + CryptoRng>(
    delta: &mut ModelParams,
    dp: &DpSettings,
    eval: Option<(&EvalRelease, &EvalMetrics)>,
    rng: &mut R,
) -> Result<(), Refusal> {
    let privacy = |e: tessera_privacy::PrivacyError| Refusal::Privacy(PrivacyRefusal::Settings(e));
    let eval_norm = eval.map_or(0.0, |(e, _)| e.norm);
    match &dp.adaptive {
        None => {
            let clip = (dp.clip_norm.powi(2) - eval_norm.powi(2)).max(0.0).sqrt();
            tessera_privacy::clip_params_l2(delta, clip).map_err(privacy)?;
        }
        Some(a) => {
            let norm = tessera_privacy::clip_params_l2(delta, a.update_clip).map_err(privacy)?;
            let bit = if norm <= a.update_clip { 0.5 } else { -0.5 };
            let t = ParamTensor::new(UNCLIPPED_TENSOR, vec![1], vec![(a.bit_scale * bit) as f32])
                .map_err(UpdateError::Params)?;
            delta.tensors.push(t);
        }
    }
    if let Some((release, metrics)) = eval {
        let values = release.encode(metrics);
        let t = ParamTensor::new(EVAL_TENSOR, vec![values.len()], values).map_err(UpdateError::Params)?;
        delta.tensors.push(t);
    }
    if dp.noise == NoisePlacement::Local {
        // One release of the whole vector (sensitivity C), rounding covered.
        let m = tessera_privacy::GaussianMechanism::new(dp.noise_multiplier, dp.clip_norm, delta.numel())
            .map_err(privacy)?;
        for t in &mut delta.tensors {
            m.add_to(&mut t.data, rng).map_err(privacy)?;
        }
    }
    Ok(())
}

/// Record-level private evaluation: the member's raw counts
/// ([`EvalRelease::encode_records`], sensitivity one weight per record) with
/// its own Gaussian noise at [`tessera_privacy::dominated_multiplier`] of the
/// round's spend, appended after the DP-SGD update. The member derives the
/// multiplier from the round's public settings itself, so an aggregator
/// cannot talk it into less noise. `cache` keeps the mechanism while the
/// spend and the block stay the same.
pub(super) fn append_record_evaluation<R: RngCore + CryptoRng>(
    delta: &mut ModelParams,
    dp: &DpSettings,
    train: &tessera_core::TrainSettings,
    release: &EvalRelease,
    metrics: &EvalMetrics,
    cache: &mut Option<RecordEvalNoise>,
    rng: &mut R,
) -> Result<(), Refusal> {
    let privacy = |e: tessera_privacy::PrivacyError| Refusal::Privacy(PrivacyRefusal::Settings(e));
    let spend = tessera_privacy::round_spend(dp, train);
    let mut values = release.encode_records(metrics);
    let (weight, len) = (release.record_weight(), values.len());
    let fresh = cache.as_ref().is_some_and(|c| c.spend == spend && c.weight == weight.to_bits() && c.len == len);
    if !fresh {
        let z = tessera_privacy::dominated_multiplier(&spend).map_err(privacy)?;
        let mechanism = tessera_privacy::GaussianMechanism::new(z, weight, len).map_err(privacy)?;
        *cache = Some(RecordEvalNoise { spend, weight: weight.to_bits(), len, mechanism });
    }
    let m = &cache.as_ref().expect("set above").mechanism;
    m.add_to(&mut values, rng).map_err(privacy)?;
    let t = ParamTensor::new(EVAL_TENSOR, vec![values.len()], values).map_err(UpdateError::Params)?;
    delta.tensors.push(t);
    Ok(())
}

/// Record unit under distributed noise: clamp every coordinate of the
/// update to the secure aggregation's public `[-range, range]`. A
/// per-coordinate clamp is 1-Lipschitz, so it cannot raise the step's L2
/// sensitivity (lr·C/B); it bounds each value for the ring
/// ([`tessera_privacy::DistributedPlan::for_round`] sizes the grid from
/// `range`).
pub(super) fn clamp_to_range(delta: &mut ModelParams, range: f32) {
    for t in &mut delta.tensors {
        t.data.iter_mut().for_each(|v| *v = v.clamp(-range, range));
    }
}
