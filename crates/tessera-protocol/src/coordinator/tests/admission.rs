//! An operator's bad day in the state machine (issue #21): a member whose
//! settings differ is refused at admission and never costs a round; aborted
//! attempts back off, name each dropout's cause, and refund their privacy
//! reservation when nothing of them can be released; a run that cannot go
//! on says so as a failure.

use tessera_core::{NoisePlacement, PrivacyUnit, SettingsDigest};

use super::*;
use crate::AdmissionPolicy;

fn digest(b: u8) -> SettingsDigest {
    SettingsDigest { model: [b; 32], schema: [7; 32] }
}

#[test]
fn a_member_with_other_settings_is_refused_at_admission_and_never_in_a_cohort() {
    let mut c = cfg(3, true);
    c.rounds = 2;
    c.admission = Some(AdmissionPolicy { expected: digest(1), check_schema: true });
    c.dp = Some(dp_config(PrivacyUnit::Client, Some(NoisePlacement::Distributed), 0.8));
    let mut h = Harness::new(4, c);
    for m in ["m0", "m1", "m2"] {
        let p = h.members.remove(m).unwrap().with_settings(digest(1));
        h.members.insert(m.to_string(), p);
    }
    let p = h.members.remove("m3").unwrap().with_settings(digest(2));
    h.members.insert("m3".to_string(), p);
    // The start quorum waits for all four; the refused one never counts.
    h.coord.cfg.start_quorum = 3;
    h.connect_all();
    h.run(20);

    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert!(h.aborted.is_empty(), "{:?}", h.aborted);
    for o in &h.finished {
        assert!(!o.cohort.contains(&"m3".to_string()), "{:?}", o.cohort);
    }
    let (who, why) = h.violations.iter().find(|(m, _)| m == "m3").expect("m3 refused");
    assert_eq!(who, "m3");
    assert!(why.contains("member m3's [model] section differs"), "{why}");
    assert!(why.contains(&digest(2).short()) && why.contains(&digest(1).short()), "{why}");
    // Budget: one reservation per completed round, none for a refused member.
    let reserved = h.trace.iter().filter(|t| t.starts_with("event:privacy_reserved")).count();
    assert_eq!(reserved, 2);
    // Nothing the refused member sends afterwards is taken.
    assert!(!h.coord.online().any(|m| m == "m3"));
}

#[test]
fn round_messages_before_the_hello_are_violations() {
    let mut c = cfg(2, true);
    c.admission = Some(AdmissionPolicy { expected: digest(1), check_schema: false });
    let mut h = Harness::new(2, c);
    h.coord.member_connected(0, "m0");
    let err = h.coord.handle(0, "m0", ClientMsg::Decline { round: 1, reason: "x".into() }).unwrap_err();
    assert!(matches!(err, Violation::BeforeHello { .. }), "{err:?}");
}

#[test]
fn aborted_attempts_back_off_name_each_cause_and_refund_what_released_nothing() {
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.max_round_retries = 3;
    c.retry_backoff_ms = 1_000;
    c.retry_backoff_max_ms = 3_000;
    c.dp = Some(dp_config(PrivacyUnit::Client, Some(NoisePlacement::Distributed), 0.8));
    let mut h = Harness::new(4, c);
    let nothing_spent = h.coord.privacy_status().unwrap().epsilon_spent;
    // Two of four go silent (still connected) before their shares: every
    // attempt aborts before any update arrives.
    h.stall_before.insert("m0".into(), "share_keys");
    h.stall_before.insert("m1".into(), "share_keys");
    h.connect_all();
    h.run(200);
    assert!(h.coord.is_finished());
    let failure = h.coord.failure().expect("the run failed").to_string();
    assert!(failure.contains("4 consecutive round attempts aborted"), "{failure}");
    assert_eq!(h.abort_events.len(), 4, "the first attempt and 3 retries");

    let mut last_at = None;
    let mut waits = vec![];
    for (at, e) in &h.abort_events {
        let Event::RoundAborted { dropped, refunded, retry_in_ms, .. } = e else { unreachable!() };
        waits.push(*retry_in_ms);
        // Nothing arrived from anyone: the reservation is given back.
        assert_eq!(*refunded, Some(nothing_spent), "{e:?}");
        if let Some(prev) = last_at {
            // Each retry started no earlier than its backoff.
            assert!(*at >= prev, "{at} < {prev}");
        }
        last_at = Some(*at + *retry_in_ms);
        assert_eq!(dropped.len(), 4, "an aborted attempt has no contributors: {dropped:?}");
    }
    assert_eq!(waits, [1_000, 2_000, 3_000, 3_000]);
    // The first attempt's dropouts, each with its cause.
    let Event::RoundAborted { dropped, .. } = &h.abort_events[0].1 else { unreachable!() };
    let causes: BTreeMap<_, _> = dropped.iter().map(|d| (d.member.as_str(), d.cause.as_str())).collect();
    assert!(causes["m0"].contains("no answer in phase"), "{causes:?}");
    assert!(causes["m1"].contains("no answer in phase share_keys"), "{causes:?}");
    assert!(causes["m2"].contains("was still taking part"), "{causes:?}");
    assert_eq!(h.coord.privacy_status().unwrap().epsilon_spent, nothing_spent);
}

#[test]
fn an_attempt_that_received_an_update_keeps_its_charge() {
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.max_round_retries = 0;
    c.dp = Some(dp_config(PrivacyUnit::Client, Some(NoisePlacement::Distributed), 0.8));
    let mut h = Harness::new(4, c);
    // Everyone uploads; then two die before unmasking.
    h.kill_before.insert("m0".into(), "sign_survivors");
    h.kill_before.insert("m1".into(), "sign_survivors");
    h.connect_all();
    h.run(50);
    assert_eq!(h.abort_events.len(), 1);
    let Event::RoundAborted { refunded, dropped, .. } = &h.abort_events[0].1 else { unreachable!() };
    assert_eq!(*refunded, None);
    assert!(dropped.iter().any(|d| d.member == "m0"), "{dropped:?}");
    let fresh = Harness::new(4, h.coord.config().clone()).coord.privacy_status().unwrap().epsilon_spent;
    assert!(h.coord.privacy_status().unwrap().epsilon_spent > fresh);
    assert!(h.coord.failure().is_some());
}

/// A member's guard that writes down what the participant asked of it.
#[derive(Clone, Default)]
struct Tally(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl crate::PrivacyGuard for Tally {
    fn charge(&mut self, round: u64, _: &tessera_privacy::GaussianSpend) -> Result<(), crate::member::BudgetRefusal> {
        self.0.lock().unwrap().push(format!("charge:{round}"));
        Ok(())
    }
    fn released(&mut self, round: u64) -> Result<(), crate::member::BudgetRefusal> {
        self.0.lock().unwrap().push(format!("released:{round}"));
        Ok(())
    }
    fn refund(&mut self, round: u64) -> Result<Option<f64>, crate::member::BudgetRefusal> {
        self.0.lock().unwrap().push(format!("refund:{round}"));
        Ok(Some(1.0))
    }
}

fn tallied(h: &mut Harness, name: &str) -> Tally {
    let tally = Tally::default();
    let i: u64 = name[1..].parse().unwrap();
    *h.member_mut(name) =
        Participant::new(name, Policy { chunk_values: 5, ..Policy::default() }, ChaCha20Rng::seed_from_u64(i))
            .with_identity(h.pki.identity(name))
            .with_privacy_guard(Box::new(tally.clone()));
    tally
}

/// The member's own ledger: an attempt that ends before its update began
/// to leave gives its charge back; one whose update left keeps it.
#[test]
fn a_member_is_refunded_only_when_its_update_never_left() {
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.max_round_retries = 1;
    c.dp = Some(dp_config(PrivacyUnit::Client, Some(NoisePlacement::Distributed), 0.8));
    let mut h = Harness::new(4, c.clone());
    let tally = tallied(&mut h, "m2");
    h.stall_before.insert("m0".into(), "share_keys");
    h.stall_before.insert("m1".into(), "share_keys");
    h.connect_all();
    h.run(100);
    assert_eq!(h.abort_events.len(), 2);
    assert_eq!(*tally.0.lock().unwrap(), ["charge:1", "refund:1", "charge:2", "refund:2"]);

    let mut h = Harness::new(4, c);
    let tally = tallied(&mut h, "m2");
    h.connect_all();
    h.run(100);
    assert_eq!(h.finished.len(), 1);
    assert_eq!(*tally.0.lock().unwrap(), ["charge:1", "released:1"]);
}
