//! Differential privacy wired through whole rounds: the noise the secure sum
//! carries, the budget stop, the write-ahead order of the charge, and the
//! member's own budget.

use crate::member::{BudgetRefusal, PrivacyGuard, PrivacyRefusal};
use tessera_core::{DpSettings, NoisePlacement, PrivacyUnit};
use tessera_privacy::{DistributedPlan, GaussianSpend, RdpAccountant};

use super::*;

fn zeros(d: usize) -> ModelParams {
    ModelParams::new(vec![ParamTensor::new("w", vec![d], vec![0.0; d]).unwrap()])
}

/// Mean and standard deviation of `global - expected` over all coordinates.
fn residual_stats(h: &Harness, expected: f64) -> (f64, f64) {
    let r: Vec<f64> = h.coord.global().values().map(|v| f64::from(*v) - expected).collect();
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r.len() - 1) as f64;
    (mean, var.sqrt())
}

/// Every member's delta is clipped to C, so each coordinate of the clipped
/// delta is C / sqrt(d); what remains in the global model is noise of the
/// planned size: the sum of 5 discrete Gaussian shares decoded from the ring.
#[test]
fn distributed_noise_in_the_secure_sum_has_the_planned_size() {
    let d = 4000;
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.dp = Some(dp_config(PrivacyUnit::Client, None, 0.8));
    let mut h = Harness::new(5, c).with_initial(zeros(d));
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    let o = &h.finished[0];
    assert_eq!(o.contributors.len(), 5);
    assert!(o.epsilon.is_some_and(|e| e > 0.0));

    let dp = h.coord.privacy_plan().unwrap().settings.clone();
    assert_eq!(dp.noise, NoisePlacement::Distributed);
    // Rebuild the plan the round used (threshold of a cohort of 5 is 4).
    let settings = RoundSettings {
        train: c_train(),
        secagg: Some(SecAggSettings { threshold: 4, modulus_bits: 32, clip_range: 1.0, neighbours: None }),
        dp: Some(DpSettings { min_contributors: 4, ..dp }),
        eval: None,
        stats: None,
    };
    let plan = DistributedPlan::for_round(&settings, d as u64, 5).unwrap().unwrap();
    let per_coord = 0.5 / (d as f64).sqrt();
    let (mean, std) = residual_stats(&h, per_coord);
    let want = plan.sum_noise_std(5) / 5.0;
    // Any 4 shares carry at least z·C on the sum: the mean's noise is >= z·C/5 · sqrt(5/4)... at least z·C/5.
    assert!(want >= 0.8 * 0.5 / 5.0, "planned {want}");
    assert!((std / want - 1.0).abs() < 0.08, "noise std {std}, planned {want}");
    assert!(mean.abs() < 5.0 * want / (d as f64).sqrt(), "noise is biased: {mean}");
}

/// One round of five members under `dp`, m4 lost before its masked input,
/// with the aggregator's `RoundStart` optionally tampered: the noise-floor
/// tests' run.
fn noise_floor_round(dp: PrivacyConfig, tamper: Option<fn(&mut RoundSettings)>) -> Harness {
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.max_round_retries = 0;
    c.dp = Some(dp);
    let mut h = Harness::new(5, c).with_initial(zeros(40));
    h.tamper_round_start = tamper;
    h.kill_before.insert("m4".into(), "masked_start");
    h.connect_all();
    h.run(20);
    h
}

/// The noise floor (issue #18): a malicious aggregator tells the members to
/// size their distributed-noise shares for all 5 (`min_contributors = 5`)
/// and then unmasks with 4 survivors, which would release the sum with 4/5
/// of the planned variance while every ledger charged the full epsilon. The
/// members refuse to sign a survivor set below their plan, so nothing is
/// revealed; the honest plan (`min_contributors = 4`) completes with the
/// same dropout.
#[test]
fn members_refuse_to_reveal_below_their_noise_floor() {
    let run = |tamper| noise_floor_round(dp_config(PrivacyUnit::Client, None, 0.8), tamper);
    let honest = run(None);
    assert_eq!(honest.finished.len(), 1, "aborted: {:?}", honest.aborted);
    assert_eq!(honest.finished[0].contributors.len(), 4);

    let h = run(Some(|s| s.dp.as_mut().unwrap().min_contributors = 5));
    assert!(h.finished.is_empty(), "a round released below its noise floor");
    let sent: Vec<&ClientMsg> = h.sent.values().flatten().collect();
    assert!(sent.iter().all(|m| !matches!(m, ClientMsg::UnmaskShares { .. } | ClientMsg::SignSurvivors { .. })));
    let refused = sent
        .iter()
        .filter(|m| matches!(m, ClientMsg::Decline { reason, .. } if reason.contains("sized for at least 5")))
        .count();
    assert_eq!(refused, 4, "every survivor declines, naming its plan");
}

/// Record unit, distributed noise: the same noise floor. The members'
/// one-step DP-SGD updates carry no noise of their own, so a sum released
/// with fewer survivors than the shares were sized for would hold less than
/// z·lr·C/B; a tampered `RoundStart` (`min_contributors = 5`, 4 survivors)
/// gets every survivor's refusal (`PrivacyRefusal::NoiseFloor`) and nothing
/// signed or revealed, while the honest plan completes with the same
/// dropout.
#[test]
fn record_distributed_members_refuse_to_reveal_below_their_noise_floor() {
    let run =
        |tamper| noise_floor_round(dp_config(PrivacyUnit::Record, Some(NoisePlacement::Distributed), 0.8), tamper);
    let honest = run(None);
    assert_eq!(honest.finished.len(), 1, "aborted: {:?}", honest.aborted);
    assert_eq!(honest.finished[0].contributors.len(), 4);
    assert!(honest.train_dp.iter().flatten().all(|d| d.noise == NoisePlacement::Distributed));

    let h = run(Some(|s| s.dp.as_mut().unwrap().min_contributors = 5));
    assert!(h.finished.is_empty(), "a round released below its noise floor");
    let sent: Vec<&ClientMsg> = h.sent.values().flatten().collect();
    assert!(sent.iter().all(|m| !matches!(m, ClientMsg::UnmaskShares { .. } | ClientMsg::SignSurvivors { .. })));
    let floor = PrivacyRefusal::NoiseFloor { survivors: 4, planned: 5 }.to_string();
    let refused =
        sent.iter().filter(|m| matches!(m, ClientMsg::Decline { reason, .. } if reason.contains(&floor))).count();
    assert_eq!(refused, 4, "every survivor declines with the noise-floor refusal");
}

/// Record unit, distributed noise, through whole rounds: each member's
/// one-step update (here member i moves every coordinate by (i+1)/10, which
/// the ring's range 1 leaves as it is) is summed securely, and what remains
/// in the global model besides the mean of the updates is the sum of the 5
/// members' shares, of the planned size, sized for z·lr·C/B (no member adds
/// noise of its own).
#[test]
fn record_distributed_noise_in_the_secure_sum_has_the_planned_size() {
    let d = 4000;
    let mut c = cfg(3, true);
    c.rounds = 1;
    // A small batch makes the step's sensitivity large enough to measure.
    c.train.batch_size = 1;
    c.dp = Some(dp_config(PrivacyUnit::Record, Some(NoisePlacement::Distributed), 2.0));
    let mut h = Harness::new(5, c.clone()).with_initial(zeros(d));
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    assert_eq!(h.finished[0].contributors.len(), 5);
    let dp = h.coord.privacy_plan().unwrap().settings.clone();
    assert_eq!((dp.unit, dp.noise), (PrivacyUnit::Record, NoisePlacement::Distributed));
    let settings = RoundSettings {
        train: TrainSettings { example_weight_cap: 0, ..c.train.clone() },
        secagg: Some(SecAggSettings { threshold: 4, modulus_bits: 32, clip_range: 1.0, neighbours: None }),
        dp: Some(DpSettings { min_contributors: 4, ..dp }),
        eval: None,
        stats: None,
    };
    let plan = DistributedPlan::for_round(&settings, d as u64, 5).unwrap().unwrap();
    let step = tessera_privacy::record_step_sensitivity(settings.dp.as_ref().unwrap(), &settings.train).unwrap();
    assert_eq!(step, 0.1 * 0.5 / 1.0);
    let want = plan.sum_noise_std(5) / 5.0;
    // Any 4 shares carry z·lr·C/B on the sum; 5 carry sqrt(5/4) of it.
    let floor = 2.0 * step * (5.0f64 / 4.0).sqrt() / 5.0;
    assert!(want >= floor && want < 1.01 * floor, "planned {want}, floor {floor}");
    let (mean, std) = residual_stats(&h, 0.3);
    assert!((std / want - 1.0).abs() < 0.08, "noise std {std}, planned {want}");
    assert!(mean.abs() < 5.0 * want / (d as f64).sqrt(), "noise is biased: {mean}");
}

fn c_train() -> TrainSettings {
    TrainSettings { example_weight_cap: 0, ..cfg(3, true).train }
}

/// Central noise: the aggregator adds N(0, (zC/n)^2) to the mean of n
/// clipped updates (research plaintext mode here, so nothing else is noisy).
#[test]
fn central_noise_on_the_mean() {
    let d = 4000;
    let mut c = cfg(3, false);
    c.rounds = 1;
    c.dp = Some(dp_config(PrivacyUnit::Client, None, 2.0));
    let mut h = Harness::new(5, c).with_initial(zeros(d));
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    assert_eq!(h.coord.privacy_plan().unwrap().settings.noise, NoisePlacement::Central);
    let (_, std) = residual_stats(&h, 0.5 / (d as f64).sqrt());
    let want = 2.0 * 0.5 / 5.0;
    assert!((std / want - 1.0).abs() < 0.08, "noise std {std}, want {want}");
}

/// Central noise under secure aggregation's offset coding (issue #18): the
/// members' clipped updates are rounded into the ring with step g, so one
/// member moves the decoded sum by up to C + g·sqrt(d), and that is what the
/// noise is calibrated on. A 12-bit ring makes g·sqrt(d) half of C, so the
/// noise std must be z·(C + g·sqrt(d))/n, not z·C/n.
#[test]
fn central_noise_under_offset_coding_counts_the_rounding_step() {
    let d = 4000;
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.secure = Some(SecureConfig { modulus_bits: 12, ..SecureConfig::default() });
    c.dp = Some(dp_config(PrivacyUnit::Client, Some(NoisePlacement::Central), 2.0));
    let mut h = Harness::new(5, c).with_initial(zeros(d));
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    // 12 bits, cohort of 5: 9 bits per member, step 2·clip_range / 511.
    let g = tessera_secagg::Quantizer::symmetric(1.0, 12, 5).unwrap().step();
    assert!(g * (d as f64).sqrt() > 0.2, "the rounding must matter here: {g}");
    let (_, std) = residual_stats(&h, 0.5 / (d as f64).sqrt());
    let want = 2.0 * tessera_privacy::rounded_sensitivity(0.5, g, d) / 5.0;
    assert!((std / want - 1.0).abs() < 0.08, "noise std {std}, want z·(C + g·sqrt(d))/n = {want}");
}

/// With a fixed noise multiplier, the run stops at the first round the
/// budget cannot afford (computed independently with the accountant), and
/// each round's charge is emitted before any of its messages.
#[test]
fn budget_stops_the_run_at_the_right_round_and_charges_first() {
    let mut c = cfg(3, true);
    c.rounds = 50;
    let mut p = dp_config(PrivacyUnit::Client, None, 2.0);
    p.epsilon = 6.0;
    c.dp = Some(p);
    let mut acc = RdpAccountant::default();
    let mut affordable = 0;
    loop {
        acc.compose_poisson_gaussian(2.0, 1.0, 1).unwrap();
        if acc.epsilon(1e-5).unwrap().0 > 6.0 {
            break;
        }
        affordable += 1;
    }
    assert!((2..50).contains(&affordable), "{affordable}");

    let mut h = Harness::new(4, c);
    h.connect_all();
    h.run(400);
    assert!(h.coord.is_finished());
    assert_eq!(h.finished.len(), affordable, "aborted: {:?}", h.aborted);
    let last = h.trace.last().unwrap();
    assert!(last.starts_with("event:run_finished:privacy budget exhausted"), "{last}");
    let eps: Vec<f64> = h.finished.iter().map(|o| o.epsilon.unwrap()).collect();
    assert!(eps.windows(2).all(|w| w[1] > w[0]), "epsilon must grow: {eps:?}");
    assert!(*eps.last().unwrap() <= 6.0);
    // Write-ahead order: round_started, privacy_reserved, then the round's first send.
    for (i, t) in h.trace.iter().enumerate() {
        if t == "event:round_started" {
            assert!(h.trace[i + 1].starts_with("event:privacy_reserved:"), "{:?}", &h.trace[i..i + 3]);
            assert!(h.trace[i + 2].starts_with("send:"), "{:?}", &h.trace[i..i + 3]);
        }
    }
}

/// A budget resumed from the ledger counts what was spent before.
#[test]
fn resumed_spend_shortens_the_run() {
    let mut c = cfg(3, true);
    c.rounds = 50;
    let mut p = dp_config(PrivacyUnit::Client, None, 2.0);
    p.epsilon = 6.0;
    c.dp = Some(p);
    let fresh = {
        let mut h = Harness::new(4, c.clone());
        h.connect_all();
        h.run(400);
        h.finished.len()
    };
    let spend = GaussianSpend { noise_multiplier: 2.0, sampling_rate: 1.0, steps: 1 };
    let resume = Resume { next_round: 100, completed_rounds: 2, spent: vec![spend; 2], clip_norm: None };
    let mut h = Harness::new(4, c.clone());
    h.coord = Coordinator::new(c, initial(), None, resume, CentralNoise::reproducible(7)).unwrap();
    h.connect_all();
    h.run(400);
    assert_eq!(h.finished.len(), fresh - 2);
    assert!(h.finished.iter().all(|o| o.round >= 100), "wire rounds are never reused");
}

/// Record-level DP: members are asked to train with DP-SGD, every member
/// weighs 1, and the charge per round is the DP-SGD steps.
#[test]
fn record_unit_asks_members_for_dpsgd() {
    let mut c = cfg(3, true);
    c.dp = Some(dp_config(PrivacyUnit::Record, None, 1.1));
    let mut h = Harness::new(4, c);
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert_eq!(h.train_dp.len(), 8);
    for dp in &h.train_dp {
        let dp = dp.as_ref().expect("DP-SGD settings");
        assert_eq!((dp.unit, dp.noise, dp.sampling_rate), (PrivacyUnit::Record, NoisePlacement::Local, 0.25));
    }
    let plan = h.coord.privacy_plan().unwrap();
    assert_eq!(plan.spend.steps, 4, "1 local epoch at q = 1/4");
    // Uniform weights: the mean of member deltas 0.1..0.4 is 0.25 per round.
    assert!(h.coord.global().values().all(|v| (v - 0.5).abs() < 1e-4));
}

struct Stingy {
    left: u32,
}

impl PrivacyGuard for Stingy {
    fn charge(&mut self, _round: u64, _spend: &GaussianSpend) -> Result<(), BudgetRefusal> {
        if self.left == 0 {
            return Err(BudgetRefusal::Exhausted { epsilon: 1.0, delta: 1e-5, spent_epsilon: 1.0 });
        }
        self.left -= 1;
        Ok(())
    }
}

/// A member whose own budget is spent declines before training; the round
/// goes on without it. A member that requires DP refuses a non-DP run.
#[test]
fn member_budget_and_dp_requirement_are_enforced_by_the_member() {
    let mut c = cfg(3, true);
    c.dp = Some(dp_config(PrivacyUnit::Client, None, 1.0));
    let mut h = Harness::new(5, c);
    *h.member_mut("m4") =
        Participant::new("m4", Policy { chunk_values: 5, ..Policy::default() }, ChaCha20Rng::seed_from_u64(4))
            .with_identity(h.pki.identity("m4"))
            .with_privacy_guard(Box::new(Stingy { left: 1 }));
    h.connect_all();
    h.run(20);
    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert_eq!(h.finished[0].contributors.len(), 5);
    assert!(!h.finished[1].contributors.contains(&"m4".to_string()));
    let declines = h.sent["m4"].iter().filter(|m| matches!(m, ClientMsg::Decline { .. })).count();
    assert_eq!(declines, 1);

    // The same member in a run without DP refuses every round.
    let mut h = Harness::new(4, cfg(3, true));
    *h.member_mut("m3") =
        Participant::new("m3", Policy { chunk_values: 5, ..Policy::default() }, ChaCha20Rng::seed_from_u64(3))
            .with_identity(h.pki.identity("m3"))
            .with_privacy_guard(Box::new(Stingy { left: 9 }));
    h.connect_all();
    h.run(20);
    assert_eq!(h.finished.len(), 2);
    assert!(h.finished.iter().all(|o| !o.contributors.contains(&"m3".to_string())));
    assert!(h.sent["m3"].iter().all(|m| !matches!(m, ClientMsg::MaskedStart { .. })));
}

/// Adaptive clipping through whole secure rounds with distributed noise:
/// member i's update has norm 0.1·(i+1)·sqrt(12), so the median norm of 10
/// members lies between members 4 and 5 (1.73 and 2.08). From a clip of 0.2
/// the clip climbs geometrically, each round's noisy unclipped fraction
/// tracks the true one, and the clip settles around the median.
#[test]
fn adaptive_clip_learns_the_median_update_norm_inside_the_secure_sum() {
    let mut c = cfg(6, true);
    c.rounds = 60;
    let mut p = dp_config(PrivacyUnit::Client, None, 0.1);
    p.clip_norm = 0.2;
    p.adaptive_clipping = Some(AdaptiveClipConfig { target_quantile: 0.5, learning_rate: 0.2, count_noise: Some(0.3) });
    c.dp = Some(p);
    let mut h = Harness::new(10, c);
    h.connect_all();
    h.run(60 * 12);
    assert_eq!(h.finished.len(), 60, "aborted: {:?}", h.aborted);
    let norm = |i: usize| 0.1 * (i as f64 + 1.0) * 12f64.sqrt();
    let mut clip = 0.2;
    for o in &h.finished {
        let used = o.clip_norm.expect("adaptive rounds report their clip");
        assert!((used - clip).abs() < 1e-12, "each round uses the previous round's next clip");
        let truth = (0..10).filter(|i| norm(*i) <= used).count() as f64 / 10.0;
        let got = o.unclipped_fraction.unwrap();
        // Count noise sigma_b = 0.3 members over 10: 5 sigma = 0.15.
        assert!((got - truth).abs() < 0.15, "round {}: unclipped {got}, truly {truth}", o.round);
        clip = o.next_clip_norm.unwrap();
    }
    // While every update is clipped the clip grows by exp(0.2 · 0.5) ≈ 1.105
    // per round: 0.54 after ten rounds without noise. The count noise moves
    // each step; 0.4 leaves room for it and still fails a clip that stalls.
    let clips: Vec<f64> = h.finished[..11].iter().map(|o| o.clip_norm.unwrap()).collect();
    assert!(clips[10] > 0.4, "the clip grows while every update is clipped: {clips:?}");
    let last: Vec<f64> = h.finished[40..].iter().map(|o| o.clip_norm.unwrap()).collect();
    assert!(last.iter().all(|c| (1.2..2.8).contains(c)), "settles near the median norm: {last:?}");
    // Members saw the adapted clip, and the bound covering update and bit.
    let dp = h.train_dp.iter().flatten().count();
    assert_eq!(dp, 0, "client-unit DP is applied by the participant, not in training");
}
