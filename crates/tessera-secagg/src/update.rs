//! How a member's model update is laid out in the masked vector, and how the
//! aggregator turns the secure sum back into a mean update.
//!
//! The vector is `numel + 1` ring elements: the member's weighted delta
//! `w · Δ` (clipped to `±clip_range`, quantized with [`Quantizer`]) followed
//! by its weight `w ∈ [0, 1]` quantized over `[0, 1]`. The aggregator only
//! learns `Σ w_i Δ_i` and `Σ w_i` over the survivors, and divides. With
//! `w = min(examples, cap) / cap` this is example-weighted FedAvg; with
//! `cap = 0` every member weighs 1 (the right choice under client-level DP,
//! where the weight itself must not depend on one member's data).

use rand_core::CryptoRngCore;
use tessera_core::round::SecAggSettings;
use tessera_core::{ModelParams, ParamLayout};

use crate::error::SecAggError;
use crate::quantize::Quantizer;

/// Ring elements of the masked vector for a model layout.
pub fn vector_len(layout: &ParamLayout) -> u64 {
    layout.numel() as u64 + 1
}

/// FedAvg weight of a member with `examples` training examples.
pub fn example_weight(examples: u64, cap: u64) -> f64 {
    if cap == 0 { 1.0 } else { examples.min(cap) as f64 / cap as f64 }
}

fn quantizers(s: &SecAggSettings, cohort_size: u32) -> Result<(Quantizer, Quantizer), SecAggError> {
    Ok((
        Quantizer::symmetric(s.clip_range, s.modulus_bits, cohort_size)?,
        Quantizer::new(0.0, 1.0, s.modulus_bits, cohort_size)?,
    ))
}

/// Produces the quantized (not yet masked) vector chunk by chunk, so the
/// full ring vector never exists next to the update.
pub struct UpdateEncoder {
    delta: ModelParams,
    weight: f32,
    values: Quantizer,
    weights: Quantizer,
}

impl UpdateEncoder {
    pub fn new(s: &SecAggSettings, cohort_size: u32, delta: &ModelParams, weight: f64) -> Result<Self, SecAggError> {
        if !(0.0..=1.0).contains(&weight) {
            return Err(SecAggError::InvalidQuantizer("weight must lie in [0, 1]"));
        }
        let (values, weights) = quantizers(s, cohort_size)?;
        let mut delta = delta.clone();
        delta.scale(weight as f32);
        Ok(Self { delta, weight: weight as f32, values, weights })
    }

    pub fn len(&self) -> u64 {
        vector_len(&self.delta.layout())
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Fill `out` with the quantized elements `[offset, offset + out.len())`.
    pub fn encode<R: CryptoRngCore + ?Sized>(
        &self,
        offset: u64,
        out: &mut [u32],
        rng: &mut R,
    ) -> Result<(), SecAggError> {
        let numel = self.delta.numel() as u64;
        if offset.checked_add(out.len() as u64).is_none_or(|end| end > numel + 1) {
            return Err(SecAggError::InvalidQuantizer("chunk outside the update vector"));
        }
        let in_values = (numel.saturating_sub(offset) as usize).min(out.len());
        let (head, tail) = out.split_at_mut(in_values);
        if !head.is_empty() {
            let mut buf = vec![0f32; head.len()];
            self.delta
                .read_flat(offset as usize, &mut buf)
                .map_err(|_| SecAggError::InvalidQuantizer("chunk outside the update vector"))?;
            self.values.quantize(&buf, head, rng)?;
        }
        if !tail.is_empty() {
            self.weights.quantize(&[self.weight], tail, rng)?;
        }
        Ok(())
    }
}

/// Mean update `Σ w_i Δ_i / Σ w_i` from the secure sum.
pub fn mean_update(
    layout: &ParamLayout,
    s: &SecAggSettings,
    cohort_size: u32,
    sum: &[u32],
    contributors: u32,
) -> Result<ModelParams, SecAggError> {
    let numel = layout.numel();
    if sum.len() != numel + 1 {
        return Err(SecAggError::InvalidQuantizer("sum length does not match the model"));
    }
    let (values, weights) = quantizers(s, cohort_size)?;
    let mut w = [0f32];
    weights.dequantize_sum(&sum[numel..], contributors, &mut w)?;
    if w[0].is_nan() || w[0] <= 0.0 {
        return Err(SecAggError::InvalidQuantizer("contributors' total weight is zero"));
    }
    let mut flat = vec![0f32; numel];
    values.dequantize_sum(&sum[..numel], contributors, &mut flat)?;
    let inv = 1.0 / w[0];
    flat.iter_mut().for_each(|v| *v *= inv);
    ModelParams::from_flat(layout, &flat)
        .map_err(|_| SecAggError::InvalidQuantizer("sum length does not match the model"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use tessera_core::ParamTensor;

    #[test]
    fn weighted_mean_survives_the_ring() {
        let s =
            SecAggSettings { threshold: 2, modulus_bits: 32, clip_range: 1.0, neighbours: None, graph_seed: [0; 32] };
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let deltas = [vec![0.1f32, -0.2, 0.3], vec![-0.3, 0.4, 0.05], vec![0.0, 0.0, 0.9]];
        let weights = [1.0, 0.5, 0.25];
        let n = 3u32;
        let mut sum = vec![0u32; 4];
        for (d, w) in deltas.iter().zip(weights) {
            let p = ModelParams::new(vec![ParamTensor::new("w", vec![3], d.clone()).unwrap()]);
            let enc = UpdateEncoder::new(&s, n, &p, w).unwrap();
            let mut v = vec![0u32; 4];
            enc.encode(0, &mut v[..2], &mut rng).unwrap();
            enc.encode(2, &mut v[2..], &mut rng).unwrap();
            for (a, b) in sum.iter_mut().zip(&v) {
                *a = a.wrapping_add(*b);
            }
        }
        let layout = ModelParams::new(vec![ParamTensor::new("w", vec![3], vec![0.0; 3]).unwrap()]).layout();
        let mean = mean_update(&layout, &s, n, &sum, n).unwrap();
        let wsum: f64 = weights.iter().sum();
        for j in 0..3 {
            let exact: f64 = deltas.iter().zip(weights).map(|(d, w)| d[j] as f64 * w).sum::<f64>() / wsum;
            assert!((mean.tensors[0].data[j] as f64 - exact).abs() < 1e-6, "{j}");
        }
        assert!(UpdateEncoder::new(&s, n, &mean, 1.5).is_err());
    }
}
