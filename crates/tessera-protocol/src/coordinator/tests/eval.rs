//! Evaluation under DP (issue #18): members never report in the clear;
//! with `[privacy.evaluation]` their evaluations ride inside the noised
//! secure sum and only the noised sum is decoded.

use crate::member::{BudgetRefusal, PrivacyGuard, PrivacyRefusal, Refusal};
use tessera_core::{DpSettings, NoisePlacement, PrivacyUnit};
use tessera_privacy::GaussianSpend;

use super::*;

fn client_dp(z: f64, evaluation: Option<PrivateEvaluationConfig>) -> PrivacyConfig {
    PrivacyConfig { evaluation, ..dp_config(PrivacyUnit::Client, None, z) }
}

fn eval_reports(h: &Harness) -> usize {
    h.sent.values().flatten().filter(|m| matches!(m, ClientMsg::EvalReport { .. })).count()
}

/// Without `[privacy.evaluation]` a private run asks nobody to evaluate and
/// no member sends a report; without DP the same run evaluates as before.
#[test]
fn a_private_run_sends_no_evaluation_report_in_the_clear() {
    let mut c = cfg(3, true);
    c.dp = Some(client_dp(1.0, None));
    let mut h = Harness::new(4, c);
    h.connect_all();
    h.run(20);
    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert_eq!(eval_reports(&h), 0, "no member reported in the clear");
    assert!(h.finished.iter().all(|o| o.evaluators == 0 && o.metrics.num_examples == 0));
    let absent = |m: &tessera_core::RoundMetrics| {
        [m.loss, m.auc, m.accuracy, m.balanced_accuracy, m.f1].iter().all(Option::is_none)
    };
    assert!(h.finished.iter().all(|o| absent(&o.metrics)), "nothing measured");

    let mut h = Harness::new(4, cfg(3, true));
    h.connect_all();
    h.run(20);
    assert_eq!(eval_reports(&h), 8, "without DP every member reports every round");
    // evaluate_every = 0 turns it off.
    let mut c = cfg(3, true);
    c.evaluate_every = 0;
    let mut h = Harness::new(4, c);
    h.connect_all();
    h.run(20);
    assert_eq!((h.finished.len(), eval_reports(&h)), (2, 0));
}

struct Unlimited;

impl PrivacyGuard for Unlimited {
    fn charge(&mut self, _round: u64, _spend: &GaussianSpend) -> Result<(), BudgetRefusal> {
        Ok(())
    }
}

/// A member that enforces DP refuses a model sent for evaluation in the
/// clear, whatever the aggregator says.
#[test]
fn a_member_requiring_dp_refuses_an_evaluation_in_the_clear() {
    let mut p = Participant::new("m0", Policy::default(), ChaCha20Rng::seed_from_u64(1))
        .with_privacy_guard(Box::new(Unlimited));
    let layout = initial().layout();
    let got = p.handle(AggregatorMsg::ModelStart { round: 1, purpose: ModelPurpose::Evaluate, layout });
    assert!(matches!(got, Err(Refusal::Privacy(PrivacyRefusal::EvaluationInTheClear))), "{got:?}");
}

/// Private evaluation: every member's evaluation (the harness reports the
/// confusion [[5, 0], [1, 4]] and loss 0.1·(i+1) on 10 examples) is encoded
/// into its update and summed under secure aggregation with distributed
/// noise; the aggregator decodes the noised sum. No report travels apart,
/// the round's clip covers update and evaluation, and the spend per round
/// is the one Gaussian release at z.
#[test]
fn private_evaluation_rides_inside_the_noised_secure_sum() {
    let z = 0.01;
    let evaluation = PrivateEvaluationConfig { max_examples: 10, loss_bound: 1.0, share: 0.5, classes: Some(2) };
    let mut c = cfg(3, true);
    c.dp = Some(client_dp(z, Some(evaluation)));
    let mut h = Harness::new(5, c);
    h.connect_all();
    h.run(20);
    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert_eq!(eval_reports(&h), 0, "nothing is reported in the clear");
    let plan = h.coord.privacy_plan().unwrap();
    assert_eq!(plan.spend.noise_multiplier, z, "one release per round, at the same z");
    let dp: Vec<&DpSettings> = h.train_dp.iter().flatten().collect();
    assert!(dp.is_empty(), "client-unit DP is the participant's");
    for o in &h.finished {
        assert_eq!(o.evaluators, 5);
        let m = &o.metrics;
        let want = [[25i64, 0], [5, 20]];
        for (i, row) in want.iter().enumerate() {
            for (j, w) in row.iter().enumerate() {
                let got = m.confusion[i][j] as i64;
                assert!((got - w).abs() <= 2, "cell ({i}, {j}): {got} vs {w}; {m:?}");
            }
        }
        // Loss sum 10·(0.1 + ... + 0.5) = 15 over 50 examples.
        assert!(m.loss.is_some_and(|l| (l - 0.3).abs() < 0.05), "{m:?}");
        assert_eq!(m.auc, None, "no AUC is released: {m:?}");
        assert!(m.accuracy.is_some_and(|a| (a - 0.9).abs() < 0.05), "{m:?}");
    }
    // The noise is there: at a larger z the decoded counts move.
    let evaluation = PrivateEvaluationConfig { max_examples: 10, loss_bound: 1.0, share: 0.5, classes: Some(2) };
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.dp = Some(client_dp(2.0, Some(evaluation)));
    let mut h = Harness::new(5, c);
    h.connect_all();
    h.run(20);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    assert_ne!(h.finished[0].metrics.confusion, vec![vec![25, 0], vec![5, 20]], "exact counts at z = 2");
    assert_eq!(h.coord.privacy_plan().unwrap().settings.noise, NoisePlacement::Distributed);
}

/// Record-level DP-SGD over full batches (q = 1): the evaluation's
/// multiplier is then z/sqrt(steps), small enough at z = 0.01 to read the
/// counts back almost exactly.
fn record_dp(z: f64, evaluation: Option<PrivateEvaluationConfig>) -> PrivacyConfig {
    PrivacyConfig { evaluation, sampling_rate: Some(1.0), ..dp_config(PrivacyUnit::Record, None, z) }
}

/// Record-level private evaluation: each member adds its own Gaussian noise
/// to its raw counts, at `dominated_multiplier` of the round's spend (one
/// held-out record moves one count by 1; the held-out and training splits
/// are disjoint, so the two releases compose in parallel). The block rides
/// in the secure sum, nothing is reported apart, the DP-SGD settings and the
/// round's charge are those of a run without evaluation, and no loss is
/// released.
#[test]
fn record_level_private_evaluation_is_noised_by_each_member_and_costs_no_more() {
    let evaluation = PrivateEvaluationConfig { max_examples: 10, loss_bound: 1.0, share: 0.5, classes: Some(2) };
    let mut c = cfg(3, true);
    c.dp = Some(record_dp(0.01, Some(evaluation.clone())));
    let mut h = Harness::new(5, c);
    h.connect_all();
    h.run(20);
    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert_eq!(eval_reports(&h), 0, "nothing is reported in the clear");
    let mut plain = cfg(3, true);
    plain.dp = Some(record_dp(0.01, None));
    let without = Harness::new(5, plain);
    let (with, without) = (h.coord.privacy_plan().unwrap(), without.coord.privacy_plan().unwrap());
    assert_eq!(with.spend, without.spend, "the evaluation charges nothing more");
    let dp: Vec<&DpSettings> = h.train_dp.iter().flatten().collect();
    assert_eq!(dp.len(), 10, "DP-SGD runs in every member's training");
    let same = |d: &DpSettings| DpSettings { min_contributors: 1, ..d.clone() } == without.settings;
    assert!(dp.iter().all(|d| same(d)), "the DP-SGD settings are untouched: {dp:?}");
    for o in &h.finished {
        assert_eq!(o.evaluators, 5);
        let m = &o.metrics;
        for (i, row) in [[25i64, 0], [5, 20]].iter().enumerate() {
            for (j, w) in row.iter().enumerate() {
                let got = m.confusion[i][j] as i64;
                assert!((got - w).abs() <= 1, "cell ({i}, {j}): {got} vs {w}; {m:?}");
            }
        }
        assert_eq!((m.loss, m.auc), (None, None), "no loss or AUC is released under the record unit");
    }
    // The noise is there, and each member's: at z = 2 the counts move.
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.dp = Some(record_dp(2.0, Some(evaluation)));
    let mut h = Harness::new(5, c);
    h.connect_all();
    h.run(20);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    assert_ne!(h.finished[0].metrics.confusion, vec![vec![25, 0], vec![5, 20]], "exact counts at z = 2");
}

/// A member holds the aggregator to the record-level bounds: a block that
/// does not fit the secure sum's value range is refused before training,
/// and the member says why in its `Decline`.
#[test]
fn a_member_refuses_a_record_level_evaluation_outside_the_value_range() {
    let evaluation = PrivateEvaluationConfig { max_examples: 10, loss_bound: 1.0, share: 0.5, classes: Some(2) };
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.max_round_retries = 0;
    c.dp = Some(record_dp(1.0, Some(evaluation)));
    let mut h = Harness::new(3, c);
    h.tamper_round_start = Some(|s| s.eval.as_mut().unwrap().norm *= 4.0);
    h.connect_all();
    h.run(20);
    assert!(h.finished.is_empty(), "no round completes when every member refuses");
    let declined = h
        .sent
        .values()
        .flatten()
        .filter(|m| matches!(m, ClientMsg::Decline { reason, .. } if reason.contains("private evaluation")))
        .count();
    assert_eq!(declined, 3, "every member declines, naming the evaluation: {:?}", h.sent);
}
