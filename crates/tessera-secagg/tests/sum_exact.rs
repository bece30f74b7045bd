//! The unmasked aggregate equals the survivors' plain sum mod 2^k, for random
//! cohorts, widths, neighbour graphs and dropouts at every step.

mod common;

use common::{Dropouts, context, run_round, settings};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_secagg::{NeighbourGraph, min_threshold};

/// Picks a threshold in [min, m] and at most `m - t` dropouts spread over
/// the four steps: every neighbourhood keeps at least t responders.
fn scenario(n: u32, neighbours: Option<u32>, seed: u64) -> (u32, Dropouts) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let m = NeighbourGraph::new(n, neighbours, [42; 32]).neighbourhood_size();
    let t = rng.gen_range(min_threshold(m)..=m);
    let budget = rng.gen_range(0..=m - t);
    let mut parties: Vec<u32> = (0..n).collect();
    parties.shuffle(&mut rng);
    let mut drops = Dropouts::default();
    for &p in &parties[..budget as usize] {
        let set = match rng.gen_range(0..4) {
            0 => &mut drops.before_advertise,
            1 => &mut drops.before_shares,
            2 => &mut drops.before_masked,
            _ => &mut drops.before_unmask,
        };
        set.insert(p);
    }
    (t, drops)
}

fn check(n: u32, d: u64, k: u32, neighbours: Option<u32>, chunk: usize, slots: u32, seed: u64) {
    let (t, drops) = scenario(n, neighbours, seed);
    let ctx = context(n, settings(t, k, neighbours), d);
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xfeed);
    let ring = if k == 32 { u32::MAX } else { (1u32 << k) - 1 };
    let inputs: Vec<Vec<u32>> = (0..n).map(|_| (0..d).map(|_| rng.r#gen::<u32>() & ring).collect()).collect();
    let out = run_round(&ctx, &inputs, &drops, chunk, slots, seed);
    let agg = out.result.unwrap_or_else(|e| panic!("round failed: {e} (t={t}, drops={drops:?})"));
    assert_eq!(agg.survivors, drops.contributors(n));
    assert_eq!(agg.sum, out.expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn full_secagg_sum_is_exact(
        n in 3u32..=50, d in 1u64..=40, k in 8u32..=32, chunk in 1usize..=16, slots in 1u32..=5, seed in any::<u64>()
    ) {
        check(n, d, k, None, chunk, slots, seed);
    }

    #[test]
    fn secagg_plus_sum_is_exact(
        n in 3u32..=50, degree in 2u32..=12, d in 1u64..=40, k in 8u32..=32, chunk in 1usize..=16, slots in 1u32..=5,
        seed in any::<u64>()
    ) {
        check(n, d, k, Some(degree), chunk, slots, seed);
    }
}

#[test]
fn large_vector_in_many_chunks() {
    check(10, 20_000, 20, None, 1500, 3, 1);
    check(40, 5_000, 32, Some(8), 999, 2, 2);
}

/// Minutes in the test profile: the default plan at a few hundred members.
#[test]
#[ignore]
fn default_plan_at_scale() {
    let n = 300;
    let plan = tessera_secagg::default_plan(n);
    assert!(plan.neighbours.is_some());
    for seed in 0..3 {
        check(n, 50_000, 32, plan.neighbours, 8192, 4, seed);
    }
}

#[test]
fn unfinished_streams_leave_the_sum_exact() {
    let n = 8;
    let ctx = context(n, settings(6, 24, None), 100);
    let inputs: Vec<Vec<u32>> = (0..n).map(|p| (0..100).map(|i| (p * 1000 + i) << 4).collect()).collect();
    // Parties 2 and 3 send their first 30-element chunk and vanish; 2 is
    // abandoned by the daemon, 3 is still open at close_masked.
    let drops = Dropouts { before_masked: [2, 3].into(), ..Default::default() };
    let out = common::run_round(&ctx, &inputs, &drops, 30, 8, 4);
    let agg = out.result.unwrap();
    assert_eq!(agg.survivors, vec![0, 1, 4, 5, 6, 7]);
    assert_eq!(agg.sum, out.expected);
}
