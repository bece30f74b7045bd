//! What the aggregator receives from one member looks uniform: a chi-square
//! goodness-of-fit test over 256 buckets on the masked vector of a constant
//! input, at significance level alpha = 0.001.

mod common;

use tessera_core::{RunId, SecAggSettings};
use tessera_secagg::RoundContext;

/// Upper 0.1% quantile of chi-square with 255 degrees of freedom
/// (Wilson-Hilferty: 255 * (1 - 2/2295 + 3.0902 * sqrt(2/2295))^3 = 330.5).
const CHI2_255_ALPHA_0_001: f64 = 330.5;
const BUCKETS: usize = 256;

fn chi_square(values: &[u32], bucket_of: impl Fn(u32) -> usize) -> f64 {
    let mut counts = [0u64; BUCKETS];
    for v in values {
        counts[bucket_of(*v)] += 1;
    }
    let expected = values.len() as f64 / BUCKETS as f64;
    counts.iter().map(|c| (*c as f64 - expected).powi(2) / expected).sum()
}

/// Member 0's masked vector of the constant `input`, cohort of five.
fn masked_constant(modulus_bits: u32, d: usize, input: u32, seed: u64) -> Vec<u32> {
    let n = 5;
    let cohort: Vec<String> = (0..n).map(|i| format!("bank-{i}")).collect();
    let s = SecAggSettings { threshold: 4, modulus_bits, clip_range: 1.0, neighbours: None };
    let ctx = RoundContext::new(RunId([4; 16]), 1, &cohort, s, d as u64).unwrap();
    let clients = common::up_to_masking(&ctx, seed).clients;
    let mut values = vec![input; d];
    // Masked chunk by chunk, as it would stream.
    for (i, chunk) in values.chunks_mut(4096).enumerate() {
        clients[0].mask_chunk((i * 4096) as u64, chunk).unwrap();
    }
    values
}

#[test]
fn masked_vector_is_uniform_mod_2_8() {
    let d = BUCKETS * 100;
    let masked = masked_constant(8, d, 7, 1);
    let stat = chi_square(&masked, |v| v as usize);
    assert!(stat < CHI2_255_ALPHA_0_001, "chi-square {stat} rejects uniformity");
    // Differs from the input: about d / 2^8 positions equal 7 by chance, not d.
    let same = masked.iter().filter(|v| **v == 7).count();
    assert!(same < 2 * d / BUCKETS, "{same} of {d} elements still equal the input");
    // Negative control: the unmasked input fails the same test.
    assert!(chi_square(&vec![7; d], |v| v as usize) > CHI2_255_ALPHA_0_001);
}

#[test]
fn masked_vector_is_uniform_mod_2_16_bucketed() {
    let d = BUCKETS * 100;
    let masked = masked_constant(16, d, 40_000, 2);
    assert!(masked.iter().all(|v| *v < 1 << 16));
    // Bucket by the top 8 of the 16 bits.
    let stat = chi_square(&masked, |v| (v >> 8) as usize);
    assert!(stat < CHI2_255_ALPHA_0_001, "chi-square {stat} rejects uniformity");
    // And by the low 8 bits, so neither half carries structure.
    let stat_low = chi_square(&masked, |v| (v & 0xff) as usize);
    assert!(stat_low < CHI2_255_ALPHA_0_001, "chi-square {stat_low} rejects uniformity");
    let same = masked.iter().filter(|v| **v == 40_000).count();
    assert!(same < 10, "{same} elements still equal the input");
}
