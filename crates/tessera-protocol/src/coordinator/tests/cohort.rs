//! Cohorts that match the accounting (issue #18): Poisson draws are never
//! redrawn because of their size, a Poisson round's mean divides by the
//! fixed `q·N`, and every draw's seed comes from the coordinator's key, not
//! from `run.seed`, and is recorded so the draw can be replayed.

use tessera_core::PrivacyUnit;
use tessera_privacy::RdpAccountant;

use super::*;

fn zeros(d: usize) -> ModelParams {
    ModelParams::new(vec![ParamTensor::new("w", vec![d], vec![0.0; d]).unwrap()])
}

fn charged(h: &Harness, z: f64, q: f64, rounds: u64) -> (f64, f64) {
    let mut acc = RdpAccountant::default();
    acc.compose_poisson_gaussian(z, q, rounds).unwrap();
    (h.coord.privacy_status().unwrap().epsilon_spent, acc.epsilon(1e-5).unwrap().0)
}

/// Every online member joins independently at rate q; each round is one
/// draw, charged once at rate q: a draw below `min_clients` runs with the
/// members it has instead of being redrawn (the accountant assumes the
/// unconditioned draw).
#[test]
fn poisson_cohorts_run_as_drawn_and_are_charged_once_per_round() {
    let mut c = cfg(3, true);
    c.rounds = 20;
    c.cohort = CohortSelection::Poisson { rate: 0.15, population: Some(20) };
    c.max_round_retries = 0;
    c.dp = Some(dp_config(PrivacyUnit::Client, None, 1.0));
    let mut h = Harness::new(20, c);
    h.connect_all();
    h.run(20 * 12);
    assert!(h.aborted.is_empty(), "no draw is aborted or redrawn: {:?}", h.aborted);
    assert_eq!(h.finished.len(), 20);
    assert_eq!(h.started.len(), 20, "one draw per round");
    let sizes: Vec<usize> = h.finished.iter().map(|o| o.cohort.len()).collect();
    assert!(sizes.contains(&2), "a draw below min_clients ran: {sizes:?}");
    for o in &h.finished {
        let runnable = o.cohort.len() >= 2;
        assert_eq!(o.contributors.len(), if runnable { o.cohort.len() } else { 0 }, "{o:?}");
    }
    let (eps, want) = charged(&h, 1.0, 0.15, 20);
    assert!((eps - want).abs() < 1e-9, "every round charged once at q: {eps} vs {want}");
}

/// A draw too small for a secure sum (0 or 1 member) is a skipped round: it
/// counts toward `rounds`, stays charged, leaves the model as it was and is
/// not redrawn.
#[test]
fn a_poisson_draw_too_small_for_a_secure_sum_is_skipped_and_charged() {
    let mut c = cfg(3, true);
    c.rounds = 4;
    c.cohort = CohortSelection::Poisson { rate: 0.05, population: Some(10) };
    c.max_round_retries = 0;
    c.dp = Some(dp_config(PrivacyUnit::Client, None, 1.0));
    let mut h = Harness::new(10, c);
    let before = h.coord.global().digest_hex();
    h.connect_all();
    h.run(60);
    assert!(h.aborted.is_empty(), "{:?}", h.aborted);
    assert_eq!(h.finished.len(), 4, "skipped rounds count");
    assert_eq!(h.started.len(), 4, "and are not redrawn");
    let skipped: Vec<&RoundOutcome> = h.finished.iter().filter(|o| o.cohort.len() < 2).collect();
    assert!(!skipped.is_empty(), "expected at least one draw of 0 or 1 member");
    for o in skipped {
        assert!(o.contributors.is_empty() && o.evaluators == 0, "{o:?}");
        if h.finished.iter().all(|o| o.cohort.len() < 2) {
            assert_eq!(o.model_digest, before, "a skipped round leaves the model as it was");
        }
    }
    let (eps, want) = charged(&h, 1.0, 0.05, 4);
    assert!((eps - want).abs() < 1e-9, "skipped rounds stay charged: {eps} vs {want}");
}

/// Under DP a Poisson round's mean is the (noised) sum divided by q·N, not
/// by the realized cohort: central noise here (plaintext research mode, so
/// nothing else rounds or adds noise) has std z·C/(q·N), and the signal is
/// n·C/(q·N) per unit of clipped update.
#[test]
fn a_poisson_round_divides_by_the_fixed_denominator() {
    let d = 4000;
    // N = 80 members in the consortium, 40 of them online: q·N = 20 while
    // the draw picks about 10, so the two denominators are far apart.
    let (z, qn) = (0.1, 20.0);
    let mut c = cfg(2, false);
    c.rounds = 1;
    c.cohort = CohortSelection::Poisson { rate: 0.25, population: Some(80) };
    c.dp = Some(dp_config(PrivacyUnit::Client, None, z));
    let mut h = Harness::new(40, c).with_initial(zeros(d));
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    let n = h.finished[0].contributors.len() as f64;
    assert!((n - qn).abs() >= 4.0, "the draw must differ from q·N to tell the two apart: {n}");
    let per_coord = 0.5 / (d as f64).sqrt();
    let r: Vec<f64> = h.coord.global().values().map(|v| f64::from(*v)).collect();
    let mean = r.iter().sum::<f64>() / d as f64;
    let std = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (d - 1) as f64).sqrt();
    let want_std = z * 0.5 / qn;
    assert!((std / want_std - 1.0).abs() < 0.08, "noise std {std}, want z·C/(q·N) = {want_std}");
    let want_mean = n * per_coord / qn;
    assert!((mean - want_mean).abs() < 5.0 * want_std / (d as f64).sqrt(), "mean {mean}, want n·C/(q·N) {want_mean}");
    // Without N the mean would divide by the realized size: refused.
    let mut bad = cfg(2, false);
    bad.cohort = CohortSelection::Poisson { rate: 0.25, population: None };
    bad.dp = Some(dp_config(PrivacyUnit::Client, None, z));
    let err = Coordinator::new(bad, initial(), None, Resume::default(), CentralNoise::reproducible(7)).err();
    assert!(err.is_some_and(|e| e.to_string().contains("population")));
    // Bad rates are refused up front.
    let mut bad = cfg(3, true);
    bad.cohort = CohortSelection::Poisson { rate: 1.5, population: Some(10) };
    assert!(Coordinator::new(bad, initial(), None, Resume::default(), CentralNoise::reproducible(7)).is_err());
}

/// Cohorts come from the coordinator's key (from the OS in the daemon), not
/// from `run.seed`: the same run seed with another key draws other cohorts.
/// The recorded seed replays each draw.
#[test]
fn cohort_draws_come_from_the_key_and_replay_from_the_record() {
    let draws = |key: u64| {
        let mut c = cfg(3, true);
        c.rounds = 4;
        c.cohort = CohortSelection::Count { count: 4 };
        let mut h = Harness::new(12, c).with_start(initial(), CentralNoise::reproducible(key));
        h.connect_all();
        h.run(60);
        assert_eq!(h.finished.len(), 4, "aborted: {:?}", h.aborted);
        h.started.clone()
    };
    let (a, again, b) = (draws(7), draws(7), draws(8));
    assert_eq!(a, again, "the same key replays the same draws");
    assert_ne!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>(),
        "the run seed alone does not fix the cohorts"
    );
    let online: BTreeSet<String> = (0..12).map(|i| format!("m{i}")).collect();
    for (cohort, seed) in a.iter().chain(&b) {
        let how = CohortSelection::Count { count: 4 };
        assert_eq!(&select_cohort(&online, &how, 3, *seed), cohort, "the recorded seed replays the draw");
    }
}
