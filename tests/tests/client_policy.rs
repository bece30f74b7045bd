//! The member's `[policy]` in `client.toml` reaches the participant of the
//! real `tessera-client run` daemon: a member whose `min_cohort` exceeds the
//! run's cohort declines the round at once, says why in its egress ledger,
//! and sends nothing of the round but its `Decline`.
//!
//! The aggregator is the real `tessera-aggregator` binary; hospital-a and
//! hospital-b run in this process through the client library, hospital-c is
//! the real `tessera-client` binary, which `cargo test --workspace` builds
//! (the client package has integration tests of its binary). hospital-c runs
//! without `[testing]`, as a release daemon would.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tessera_client::{EgressEntry, EgressLedger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_min_cohort_exceeds_the_cohort_declines_the_round() {
    let client_bin = client_binary();
    let site = Site::new();
    let gates = Arc::new(Gates::default());
    let port = free_udp_port();
    let config =
        aggregator_toml(&site, "policy", &RunOptions { rounds: 1, quic_port: port, http_port: None, dp: false });
    let agg = spawn_aggregator(&config, None);

    let members: Vec<_> =
        (0..2).map(|i| tokio::spawn(run_member(member_config(&site, "policy", i, port), gates.clone()))).collect();
    let cfg = member_config(&site, "policy", 2, port);
    let member_toml = site.path().join("policy/hospital-c.toml");
    let text = std::fs::read_to_string(&member_toml).unwrap();
    let text = text.replace("[testing]\nseeded_randomness = true\n", "");
    assert!(!text.contains("[testing]"), "hospital-c runs as a release daemon would");
    // All four keys, so the real daemon is shown to accept the whole section;
    // min_cohort is the one this cohort breaks (the model has a few hundred
    // values, and a three-member threshold of 3 is above 0.7 of 3).
    let policy =
        "[policy]\nmin_cohort = 4\nmin_threshold_fraction = 0.7\nmax_model_values = 100000\nrequire_dp = false\n";
    std::fs::write(&member_toml, text + policy).unwrap();
    let mut child = spawn_client(&client_bin, &member_toml, "hospital-c.log");

    // The cohort is all three members: hospital-c refuses it at RoundStart.
    let t0 = Instant::now();
    let egress: Vec<EgressEntry> = loop {
        let entries = if cfg.state.egress_ledger.exists() {
            EgressLedger::read(&cfg.state.egress_ledger).unwrap()
        } else {
            vec![]
        };
        let refused = entries.iter().find(|e| e.kind == "refusal").map(|e| e.round);
        if refused.is_some_and(|r| entries.iter().any(|e| e.kind == "decline" && e.round == r)) {
            break entries;
        }
        let log = std::fs::read_to_string(site.path().join("policy/hospital-c.log")).unwrap_or_default();
        assert!(t0.elapsed() < Duration::from_secs(60), "hospital-c never refused a round; its log:\n{log}");
        assert!(child.try_wait().unwrap().is_none(), "hospital-c exited early; its log:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sigkill(agg);
    child.kill().unwrap();
    child.wait().unwrap();
    for m in members {
        m.abort();
    }

    let refusal = egress.iter().find(|e| e.kind == "refusal").unwrap();
    let note = refusal.note.as_deref().unwrap_or_default();
    assert!(note.contains("3 members, policy minimum 4"), "the refusal names the policy's minimum: {note}");
    let round = refusal.round.expect("the refusal names its round");
    // The only message of that round that left the site is its Decline (the
    // round's model stream, which follows, is refused and recorded too).
    let sent: Vec<&str> =
        egress.iter().filter(|e| e.round == Some(round) && e.kind != "refusal").map(|e| e.kind.as_str()).collect();
    assert_eq!(sent, ["decline"], "hospital-c's egress for round {round}: {egress:#?}");
    assert!(!egress.iter().any(|e| e.kind.starts_with("masked") || e.kind == "advertise_keys"), "{egress:#?}");
}
