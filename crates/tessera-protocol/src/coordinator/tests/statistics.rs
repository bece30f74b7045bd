//! DP statistics (issue #18) through real members and a real coordinator:
//! the release runs once before the first training round, through the
//! secure sum with distributed noise, is charged on both sides, and members
//! refuse requests they cannot verify.

use std::sync::{Arc, Mutex};

use tessera_core::{FeatureSchema, LocalStatistics, PrivacyUnit, StatsRelease};
use tessera_privacy::GaussianSpend;

use super::*;
use crate::member::{BudgetRefusal, StatisticsShape};

fn schema() -> FeatureSchema {
    FeatureSchema::from_toml(
        r#"
        [[features]]
        type = "numeric"
        name = "age"
        min = 0.0
        max = 100.0
        center = 50.0
        scale = 10.0
        [[features]]
        type = "categorical"
        name = "colour"
        categories = ["red", "blue"]
        "#,
    )
    .unwrap()
}

/// Member i's exact counts: 10 + i records, i of them missing `age`.
pub(super) fn counts(i: usize, release: &StatsRelease) -> LocalStatistics {
    let n = 10.0 + i as f64;
    let mut age = vec![0.0; release.cells[0] as usize];
    let cell = i % age.len();
    age[cell] = n - i as f64;
    LocalStatistics {
        labels: vec![n - 3.0, 3.0],
        missing: vec![i as f64, 0.0],
        histograms: vec![age, vec![n - 1.0, 1.0, 0.0]],
    }
}

/// What each member's own ledger was asked to charge, and when it was told
/// the charge is final.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Vec<Charge>>>);

/// A charge (`Some`) or its commit (`None`), by wire round.
type Charge = (u64, Option<GaussianSpend>);

/// A malicious aggregator's edit of the round's settings.
type Tamper = fn(&mut tessera_core::RoundSettings);

impl crate::PrivacyGuard for Ledger {
    fn charge(&mut self, round: u64, spend: &GaussianSpend) -> Result<(), BudgetRefusal> {
        self.0.lock().unwrap().push((round, Some(*spend)));
        Ok(())
    }
    fn released(&mut self, round: u64) -> Result<(), BudgetRefusal> {
        self.0.lock().unwrap().push((round, None));
        Ok(())
    }
}

fn release(unit: PrivacyUnit, z: f64) -> StatsRelease {
    StatsRelease::for_schema(&schema(), 2, 4, unit, 100.0 * 3f64.sqrt(), z)
}

/// A harness whose members count statistics (those in `offering`) and
/// keep a ledger each; a private, client-level run with the release.
fn harness(n: usize, offering: &[&str], rel: StatsRelease) -> (Harness, Vec<Ledger>) {
    let mut c = cfg(3, true);
    c.dp = Some(dp_config(PrivacyUnit::Client, None, 2.0));
    c.evaluate_every = 0;
    let mut h = Harness::new(n, c);
    let mut ledgers = Vec::new();
    for i in 0..n {
        let name = format!("m{i}");
        let shape = offering.contains(&name.as_str()).then(|| StatisticsShape { schema: schema(), classes: 2 });
        let ledger = Ledger::default();
        let policy = Policy { chunk_values: 5, statistics: shape, ..Policy::default() };
        *h.member_mut(&name) = Participant::new(name.clone(), policy, ChaCha20Rng::seed_from_u64(i as u64))
            .with_identity(h.pki.identity(&name))
            .with_privacy_guard(Box::new(ledger.clone()));
        ledgers.push(ledger);
    }
    let coord = std::mem::replace(
        &mut h.coord,
        Coordinator::new(cfg(3, true), initial(), None, Resume::default(), CentralNoise::reproducible(1)).unwrap(),
    );
    h.coord = coord.with_statistics(rel, true).unwrap();
    (h, ledgers)
}

#[test]
fn the_release_runs_first_through_the_noised_secure_sum_and_is_charged_on_both_sides() {
    for unit in [PrivacyUnit::Record, PrivacyUnit::Client] {
        // z = 0.5 on Delta = sqrt(3) (record) is sigma 0.87: the sum is near exact.
        let z = if unit == PrivacyUnit::Record { 0.5 } else { 0.005 };
        let rel = release(unit, z);
        let names = ["m0", "m1", "m2", "m3", "m4"];
        let (mut h, ledgers) = harness(5, &names, rel.clone());
        assert!(h.coord.statistics_pending());
        h.connect_all();
        h.run(20);
        assert!(h.coord.is_finished(), "aborted: {:?}", h.aborted);
        let out = h.released.first().expect("a statistics release").clone();
        assert_eq!(h.released.len(), 1, "released once");
        assert_eq!(h.finished.len(), 2, "then both training rounds");
        // It ran before the first training round and counts toward none.
        assert!(out.round < h.finished[0].round);
        assert_eq!(h.coord.completed(), 2);
        assert_eq!(out.contributors.len(), 5);
        // The decoded sum is the members' exact sum plus noise of std sigma.
        let exact: Vec<f32> = (0..5).fold(vec![0f32; rel.len()], |mut acc, i| {
            acc.iter_mut().zip(counts(i, &rel).to_vector()).for_each(|(a, v)| *a += v);
            acc
        });
        let got = out.counts.to_vector();
        let sigma = rel.sigma() * (1.0 + crate::STATISTICS_NOISE_SLACK) * 1.0001;
        for (g, e) in got.iter().zip(&exact) {
            assert!((g - e).abs() < (7.0 * sigma) as f32, "{g} vs {e} (sigma {sigma})");
        }
        assert!(got.iter().zip(&exact).any(|(g, e)| g != e), "noise was added");
        // Charged on the aggregator (RDP, at z, unsampled) and on every member.
        assert!((out.spend.noise_multiplier - z).abs() < 1e-12 && out.spend.sampling_rate == 1.0);
        assert!(out.run_epsilon > 0.0 && out.opendp.epsilon > 0.0);
        for l in &ledgers {
            let entries = l.0.lock().unwrap().clone();
            assert_eq!(entries[0], (out.round, Some(out.spend)), "the member charged the release first");
            assert_eq!(entries[1], (out.round, None), "and committed it before its counts left");
        }
        // No model is streamed for the release (members count, they do not
        // train); every training round streams one to each member.
        let models = |round: u64| h.trace.iter().filter(|t| **t == format!("model:{round}:Train")).count();
        assert_eq!(models(out.round), 0, "a model streamed in the statistics round: {:?}", h.trace);
        assert_eq!(models(h.finished[0].round), 5, "{:?}", h.trace);
        // Nothing in the clear: no plaintext chunk, no exact count as a value.
        assert!(h.sent.values().flatten().all(|m| !matches!(m, ClientMsg::PlainChunk { .. })));
    }
}

#[test]
fn members_refuse_statistics_they_cannot_verify() {
    let cases: [(&str, Tamper, &str); 3] = [
        ("less noise", |s| s.dp.as_mut().unwrap().noise_multiplier *= 0.5, "below what the release needs"),
        ("another bin count", |s| s.stats.as_mut().unwrap().cells[0] = 5000, "does not match this member's schema"),
        ("clip above the bound", |s| s.dp.as_mut().unwrap().clip_norm *= 2.0, "clipped to the release's bound"),
    ];
    for (what, tamper, why) in cases {
        let (mut h, ledgers) = harness(4, &["m0", "m1", "m2", "m3"], release(PrivacyUnit::Record, 0.5));
        h.tamper_round_start = Some(tamper);
        h.connect_all();
        h.run(10);
        assert!(h.released.is_empty(), "{what}");
        let declines: Vec<&ClientMsg> =
            h.sent.values().flatten().filter(|m| matches!(m, ClientMsg::Decline { .. })).collect();
        assert!(!declines.is_empty(), "{what}: nobody declined");
        assert!(
            declines.iter().all(|m| matches!(m, ClientMsg::Decline { reason, .. } if reason.contains(why))),
            "{what}: {declines:?}"
        );
        assert!(ledgers.iter().all(|l| l.0.lock().unwrap().is_empty()), "{what}: nothing charged");
    }
    // A member that offers no statistics (no schema) refuses by name.
    let (mut h, _) = harness(4, &["m0", "m1", "m2"], release(PrivacyUnit::Record, 0.5));
    h.connect_all();
    h.run(10);
    let m3: Vec<&ClientMsg> = h.sent.get("m3").map(|v| v.iter().collect()).unwrap_or_default();
    assert!(
        m3.iter().any(|m| matches!(m, ClientMsg::Decline { reason, .. } if reason.contains("computes no statistics"))),
        "{m3:?}"
    );
}

/// The OpenDP map and the coordinator's charge describe the same release:
/// a calibrated plan leaves room for it, and the run's epsilon stays within
/// the budget with the release and every round charged.
#[test]
fn a_calibrated_plan_leaves_room_for_the_release() {
    let mut c = cfg(3, true);
    let mut p = dp_config(PrivacyUnit::Client, None, 1.0);
    p.epsilon = 4.0;
    p.noise_multiplier = None;
    c.dp = Some(p);
    c.evaluate_every = 0;
    let plain = Coordinator::new(c.clone(), initial(), None, Resume::default(), CentralNoise::reproducible(1)).unwrap();
    let z_plain = plain.privacy_plan().unwrap().settings.noise_multiplier;
    let cfg = StatisticsConfig { epsilon: 1.0, bins: 4, max_records: 100 };
    let rel = cfg.release(&schema(), 2, PrivacyUnit::Client, 1e-5).unwrap();
    let with = plain.with_statistics(rel.clone(), true).unwrap();
    let z_with = with.privacy_plan().unwrap().settings.noise_multiplier;
    assert!(z_with > z_plain, "the rounds get more noise to leave room: {z_with} vs {z_plain}");
    let mut acc = tessera_privacy::RdpAccountant::default();
    let s = crate::statistics_spend(&rel);
    acc.compose_poisson_gaussian(s.noise_multiplier, 1.0, 1).unwrap();
    let stats_alone = acc.epsilon(1e-5).unwrap().0;
    assert!((stats_alone - 1.0).abs() < 1e-3, "the release alone spends its epsilon: {stats_alone}");
    let r = with.privacy_plan().unwrap().spend;
    acc.compose_poisson_gaussian(r.noise_multiplier, r.sampling_rate, r.steps * 2).unwrap();
    let total = acc.epsilon(1e-5).unwrap().0;
    assert!(total <= 4.0 && total > 3.99, "release and rounds fill the budget: {total}");
}
