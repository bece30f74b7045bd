//! `ClientSession::mask_chunk` on several threads: the same masked vector as
//! on one, so the secure sum is exact whatever each member's thread count.

mod common;

use std::num::NonZeroUsize;

use common::{Dropouts, context, run_round, settings, up_to_masking};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_secagg::{ClientSession, default_mask_threads};

/// Member 0 of a 4-member round, keys agreed, ready to mask.
fn masking_member(d: u64) -> ClientSession {
    up_to_masking(&context(4, settings(3, 24, None), d), 5).clients.swap_remove(0)
}

#[test]
fn thread_count_does_not_change_the_masked_vector() {
    let d = 300_001u64;
    let mut member = masking_member(d);
    assert_eq!(member.mask_threads(), default_mask_threads());
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let input: Vec<u32> = (0..d).map(|_| rng.r#gen::<u32>() & 0x00ff_ffff).collect();
    let masked_with = |member: &mut ClientSession, threads: usize, offset: usize, len: usize| {
        member.set_mask_threads(NonZeroUsize::new(threads).unwrap());
        let mut v = input[offset..offset + len].to_vec();
        member.mask_chunk(offset as u64, &mut v).unwrap();
        v
    };
    // Whole vector, and a chunk starting mid-block.
    for (offset, len) in [(0usize, d as usize), (3, 200_000)] {
        let one = masked_with(&mut member, 1, offset, len);
        assert_ne!(one, input[offset..offset + len]);
        assert!(one.iter().all(|v| *v < 1 << 24), "reduced mod 2^k");
        for threads in [2, 3, 8] {
            assert_eq!(masked_with(&mut member, threads, offset, len), one, "{threads} threads at {offset}");
        }
    }
    // A value outside the ring is refused before anything is masked.
    let mut bad = input[..100_000].to_vec();
    bad[70_000] = 1 << 24;
    let before = bad.clone();
    member.set_mask_threads(NonZeroUsize::new(4).unwrap());
    assert!(member.mask_chunk(0, &mut bad).is_err());
    assert_eq!(bad, before);
}

#[test]
fn secure_sum_is_exact_with_parallel_masking() {
    // Long enough for every member to mask on several threads.
    let (n, d) = (4u32, 150_000u64);
    let ctx = context(n, settings(3, 20, None), d);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let inputs: Vec<Vec<u32>> = (0..n).map(|_| (0..d).map(|_| rng.r#gen::<u32>() & 0xf_ffff).collect()).collect();
    let mut drops = Dropouts::default();
    drops.before_unmask.insert(2);
    let out = run_round(&ctx, &inputs, &drops, 1 << 20, 2, 9);
    assert_eq!(out.result.unwrap().sum, out.expected);
}
