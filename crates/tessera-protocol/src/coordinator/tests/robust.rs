//! Robust rules in the research plaintext mode, through whole rounds, and
//! their refusal wherever individual updates are hidden or privatized.

use super::*;

/// Members move every coordinate by 0.1, 0.2, ..., 0.5 (weights differ, but
/// robust rules use the unweighted updates): the median, the 20 % trimmed
/// mean and multi-Krum (f = 1, the 3 best: the three inner members, whose
/// scores tie up to rounding) all give the middle member's 0.3.
#[test]
fn robust_rules_combine_unweighted_plaintext_updates() {
    for rule in
        [RobustRule::Median, RobustRule::TrimmedMean { trim: 0.2 }, RobustRule::Krum { byzantine: 1, select: 3 }]
    {
        let mut c = cfg(5, false);
        c.rounds = 1;
        c.robust = Some(rule.clone());
        let mut h = Harness::new(5, c);
        h.connect_all();
        h.run(10);
        assert_eq!(h.finished.len(), 1, "{rule:?}: aborted {:?}", h.aborted);
        for v in h.coord.global().values() {
            assert!((v - 0.3).abs() < 1e-6, "{rule:?}: {v}");
        }
    }
    // The plain (weighted) mean differs: the rules really ran.
    assert!((expected_mean(&[0, 1, 2, 3, 4]) - 0.3).abs() > 0.01);
}

#[test]
fn robust_rules_are_refused_under_secure_aggregation_or_dp() {
    let mut c = cfg(3, true);
    c.robust = Some(RobustRule::Median);
    let why = Coordinator::new(c, initial(), None, Resume::default(), CentralNoise::reproducible(7)).err().unwrap();
    assert!(matches!(why, ConfigError::RobustUnderSecureAggregation { .. }), "{why}");
    assert!(why.to_string().contains("secure aggregation"), "{why}");
    let mut c = cfg(3, false);
    c.robust = Some(RobustRule::Median);
    c.dp = Some(PrivacyConfig {
        unit: tessera_core::PrivacyUnit::Client,
        noise: None,
        epsilon: 1.0,
        delta: 1e-5,
        clip_norm: 1.0,
        noise_multiplier: None,
        sampling_rate: None,
        adaptive_clipping: None,
        evaluation: None,
    });
    assert!(Coordinator::new(c, initial(), None, Resume::default(), CentralNoise::reproducible(7)).is_err());
    // Too few updates for Krum's assumption: the round aborts, nothing panics.
    let mut c = cfg(3, false);
    c.rounds = 1;
    c.max_round_retries = 0;
    c.robust = Some(RobustRule::Krum { byzantine: 1, select: 1 });
    let mut h = Harness::new(3, c);
    h.connect_all();
    h.run(10);
    assert!(h.finished.is_empty());
    assert!(h.aborted.iter().any(|(_, why)| why.contains("Krum")), "{:?}", h.aborted);
}
