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
use tessera_core::{ModelParams, ParamLayout, SecAggSettings};

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

/// How the update's values become ring elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueCoding {
    /// Clip to `±clip_range` and quantize with [`Quantizer`] (offset form).
    Offset,
    /// Signed integers `round(v / gamma)`, clamped to `±max_level`, in two's
    /// complement mod 2^k; the sum is read back by centred lifting. Used when
    /// members add integer noise (distributed DP), which an offset form could
    /// push below zero.
    Centered {
        /// Grid step: one integer unit is `gamma` in update units.
        gamma: f64,
        /// Largest magnitude a coordinate may take, in grid units.
        max_level: i64,
    },
}

/// Produces the quantized (not yet masked) vector chunk by chunk, so the
/// full ring vector never exists next to the update.
pub struct UpdateEncoder {
    delta: ModelParams,
    weight: f32,
    coding: ValueCoding,
    modulus_bits: u32,
    values: Quantizer,
    weights: Quantizer,
}

impl UpdateEncoder {
    /// An encoder in the [`ValueCoding::Offset`] form: `delta` scaled by
    /// `weight` (in [0, 1]), then the weight itself.
    pub fn new(s: &SecAggSettings, cohort_size: u32, delta: &ModelParams, weight: f64) -> Result<Self, SecAggError> {
        Self::with_coding(s, cohort_size, delta, weight, ValueCoding::Offset)
    }

    /// [`Self::new`] with an explicit value coding.
    pub fn with_coding(
        s: &SecAggSettings,
        cohort_size: u32,
        delta: &ModelParams,
        weight: f64,
        coding: ValueCoding,
    ) -> Result<Self, SecAggError> {
        if !(0.0..=1.0).contains(&weight) {
            return Err(SecAggError::InvalidQuantizer("weight must lie in [0, 1]"));
        }
        check_coding(&coding, s.modulus_bits, cohort_size)?;
        let (values, weights) = quantizers(s, cohort_size)?;
        let mut delta = delta.clone();
        delta.scale(weight as f32);
        Ok(Self { delta, weight: weight as f32, coding, modulus_bits: s.modulus_bits, values, weights })
    }

    /// Ring elements in the whole vector ([`vector_len`]).
    pub fn len(&self) -> u64 {
        vector_len(&self.delta.layout())
    }

    /// Never true: the weight element is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Elements that carry update values (the rest is the weight).
    pub fn value_len(&self) -> u64 {
        self.delta.numel() as u64
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
            match self.coding {
                ValueCoding::Offset => self.values.quantize(&buf, head, rng)?,
                ValueCoding::Centered { gamma, max_level } => {
                    quantize_centered(&buf, head, gamma, max_level, self.modulus_bits, rng)?
                }
            }
        }
        if !tail.is_empty() {
            self.weights.quantize(&[self.weight], tail, rng)?;
        }
        Ok(())
    }
}

fn check_coding(coding: &ValueCoding, modulus_bits: u32, cohort_size: u32) -> Result<(), SecAggError> {
    if let ValueCoding::Centered { gamma, max_level } = *coding {
        let half = 1i128 << (modulus_bits.clamp(1, 32) - 1);
        if !(gamma.is_finite() && gamma > 0.0)
            || max_level < 1
            || i128::from(max_level) * i128::from(cohort_size) >= half
        {
            return Err(SecAggError::InvalidQuantizer("centred coding: the cohort sum would not fit the ring"));
        }
    }
    Ok(())
}

fn ring_mask(modulus_bits: u32) -> u64 {
    if modulus_bits >= 32 { u64::from(u32::MAX) } else { (1u64 << modulus_bits) - 1 }
}

/// `round_stochastic(v / gamma)` clamped to `±max_level`, as ring elements.
fn quantize_centered<R: CryptoRngCore + ?Sized>(
    values: &[f32],
    out: &mut [u32],
    gamma: f64,
    max_level: i64,
    modulus_bits: u32,
    rng: &mut R,
) -> Result<(), SecAggError> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(SecAggError::InvalidQuantizer("input holds a non-finite value"));
    }
    let (top, mask) = (max_level as f64, ring_mask(modulus_bits));
    for (v, o) in values.iter().zip(out.iter_mut()) {
        let q = (f64::from(*v) / gamma).clamp(-top, top);
        let floor = q.floor();
        let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let level = if u < q - floor { floor + 1.0 } else { floor };
        *o = ((level.clamp(-top, top) as i64) as u64 & mask) as u32;
    }
    Ok(())
}

/// Add signed integer noise to centred-coded ring elements (mod 2^k).
pub fn add_ring_noise(values: &mut [u32], noise: &[i64], modulus_bits: u32) -> Result<(), SecAggError> {
    if values.len() != noise.len() {
        return Err(SecAggError::InvalidQuantizer("noise and values differ in length"));
    }
    let mask = ring_mask(modulus_bits);
    for (v, n) in values.iter_mut().zip(noise) {
        *v = ((u64::from(*v)).wrapping_add(*n as u64) & mask) as u32;
    }
    Ok(())
}

/// Mean update `Σ w_i Δ_i / Σ w_i` from the secure sum.
pub fn mean_update(
    layout: &ParamLayout,
    s: &SecAggSettings,
    cohort_size: u32,
    sum: &[u32],
    contributors: u32,
) -> Result<ModelParams, SecAggError> {
    mean_update_with(layout, s, cohort_size, sum, contributors, ValueCoding::Offset)
}

/// [`mean_update`] for either coding.
pub fn mean_update_with(
    layout: &ParamLayout,
    s: &SecAggSettings,
    cohort_size: u32,
    sum: &[u32],
    contributors: u32,
    coding: ValueCoding,
) -> Result<ModelParams, SecAggError> {
    let numel = layout.numel();
    if sum.len() != numel + 1 {
        return Err(SecAggError::InvalidQuantizer("sum length does not match the model"));
    }
    check_coding(&coding, s.modulus_bits, cohort_size)?;
    let (values, weights) = quantizers(s, cohort_size)?;
    let mut w = [0f32];
    weights.dequantize_sum(&sum[numel..], contributors, &mut w)?;
    if w[0].is_nan() || w[0] <= 0.0 {
        return Err(SecAggError::InvalidQuantizer("contributors' total weight is zero"));
    }
    // Dequantize tile by tile straight into the result, so the only
    // vector-sized buffers are the sum and the mean (peak memory at round end).
    const TILE: usize = 1 << 16;
    let inv = 1.0 / w[0];
    let mut mean = ModelParams::zeros(layout);
    let mut buf = vec![0f32; TILE.min(numel)];
    let (bits, mask) = (s.modulus_bits, ring_mask(s.modulus_bits));
    for start in (0..numel).step_by(TILE) {
        let end = (start + TILE).min(numel);
        let out = &mut buf[..end - start];
        match coding {
            ValueCoding::Offset => values.dequantize_sum(&sum[start..end], contributors, out)?,
            ValueCoding::Centered { gamma, .. } => {
                let half = 1i64 << (bits - 1);
                for (o, v) in out.iter_mut().zip(&sum[start..end]) {
                    let x = (u64::from(*v) & mask) as i64;
                    let lifted = if x >= half { x - (half << 1) } else { x };
                    *o = (lifted as f64 * gamma) as f32;
                }
            }
        }
        out.iter_mut().for_each(|v| *v *= inv);
        mean.write_flat(start, out)
            .map_err(|_| SecAggError::InvalidQuantizer("sum length does not match the model"))?;
    }
    Ok(mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use tessera_core::ParamTensor;

    #[test]
    fn weighted_mean_survives_the_ring() {
        let s = SecAggSettings { threshold: 2, modulus_bits: 32, clip_range: 1.0, neighbours: None };
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

    #[test]
    fn centred_coding_carries_signed_noise_through_the_ring() {
        let s = SecAggSettings { threshold: 2, modulus_bits: 20, clip_range: 1.0, neighbours: None };
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let gamma = 1e-3;
        let coding = ValueCoding::Centered { gamma, max_level: 1000 };
        let deltas = [vec![0.25f32, -0.5, 0.0], vec![-0.125, -0.375, 0.5]];
        // Noise that drives partial sums negative and back.
        let noise = [[-7i64, 3, -900], [5, -2, 400]];
        let mut sum = vec![0u32; 4];
        for (d, z) in deltas.iter().zip(noise) {
            let p = ModelParams::new(vec![ParamTensor::new("w", vec![3], d.clone()).unwrap()]);
            let enc = UpdateEncoder::with_coding(&s, 2, &p, 1.0, coding).unwrap();
            let mut v = vec![0u32; 4];
            enc.encode(0, &mut v, &mut rng).unwrap();
            add_ring_noise(&mut v[..3], &z, 20).unwrap();
            for (a, b) in sum.iter_mut().zip(&v) {
                *a = (a.wrapping_add(*b)) & ((1 << 20) - 1);
            }
        }
        let layout = ModelParams::new(vec![ParamTensor::new("w", vec![3], vec![0.0; 3]).unwrap()]).layout();
        let mean = mean_update_with(&layout, &s, 2, &sum, 2, coding).unwrap();
        // Values are multiples of gamma, so rounding is exact here.
        for j in 0..3 {
            let exact = (deltas[0][j] as f64 + deltas[1][j] as f64 + (noise[0][j] + noise[1][j]) as f64 * gamma) / 2.0;
            assert!(
                (mean.tensors[0].data[j] as f64 - exact).abs() < 1e-6,
                "{j}: {} vs {exact}",
                mean.tensors[0].data[j]
            );
        }
        // A cohort whose sum cannot fit is refused.
        let too_big = ValueCoding::Centered { gamma, max_level: 1 << 19 };
        let p = ModelParams::new(vec![ParamTensor::new("w", vec![3], vec![0.0; 3]).unwrap()]);
        assert!(UpdateEncoder::with_coding(&s, 2, &p, 1.0, too_big).is_err());
    }
}
