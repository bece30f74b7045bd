//! Hostile members against the aggregator daemon's code over real QUIC on
//! loopback. Each test runs one securely aggregated round of three honest
//! members (the real member daemon code) and one member, "mallory", that
//! holds a valid certificate and follows the protocol except for one
//! tampered step. The aggregator must reject the tampered message with a
//! typed protocol violation (the connection is closed with code
//! `close_code::PROTOCOL` and the violation as reason), and the honest
//! members' round must still complete.

use std::time::Duration;

use tessera_aggregator::daemon;
use tessera_core::ClientMsg;
use tessera_e2e::adversary::{AttackOutcome, run_tampering_member};
use tessera_e2e::*;
use tessera_transport::{QuicDialConfig, TransportError, close_code, pki};

const HONEST: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
const MALLORY: &str = "mallory";

/// One round with three honest members and a tampering mallory. Returns
/// mallory's outcome and the run's metrics.
async fn round_with_mallory<F>(tamper: F) -> (AttackOutcome, Vec<tessera_core::RoundRecord>)
where
    F: FnMut(ClientMsg) -> (Vec<ClientMsg>, bool),
{
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    let all = [HONEST[0], HONEST[1], HONEST[2], MALLORY];
    for n in all {
        pki::issue(&pki_dir, n).unwrap();
    }
    let csvs = write_member_csvs(dir.path(), &all);
    let run_dir = dir.path().join("run");
    // Cohort of 4: threshold 3, so the round survives losing mallory.
    let mut cfg = aggregator_config(&pki_dir, &run_dir, &all, 1, 3);
    cfg.run.start_quorum = Some(4);
    cfg.run.phase_timeout_secs = 30.0;
    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));

    let mut honest = Vec::new();
    for (n, csv) in HONEST.iter().zip(&csvs) {
        honest.push(tokio::spawn(run_member(client_config(dir.path(), &pki_dir, n, csv, &addr))));
    }
    let mcfg = client_config(dir.path(), &pki_dir, MALLORY, &csvs[3], &addr);
    let model = tessera_client::tabular_model(&mcfg).unwrap();
    let mut dial = QuicDialConfig::from_pki_dir(&pki_dir, MALLORY, addr.clone()).unwrap();
    dial.server_name = Some("localhost".into());
    let outcome =
        tokio::time::timeout(Duration::from_secs(240), run_tampering_member(&dial, &pki_dir, MALLORY, model, tamper))
            .await
            .expect("mallory's connection ends");

    let end = tokio::time::timeout(Duration::from_secs(240), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert_eq!(end.completed_rounds, 1, "the honest round must complete: {}", end.reason);
    for m in honest {
        let exit = m.await.unwrap().unwrap();
        assert!(matches!(exit, tessera_client::ClientExit::Shutdown { .. }), "{exit:?}");
    }
    (outcome, read_metrics(&run_dir))
}

/// Mallory was cut off with a protocol-violation close whose reason
/// contains one of `expected` (the `Violation`'s text).
fn assert_rejected(outcome: &AttackOutcome, expected: &[&str]) {
    assert!(outcome.tampered > 0, "the attack never happened: {outcome:?}");
    match &outcome.closed_by {
        Some(TransportError::ClosedByPeer { code, reason }) => {
            assert_eq!(*code, u64::from(close_code::PROTOCOL), "{reason}");
            assert!(expected.iter().any(|e| reason.contains(e)), "close reason {reason:?} does not name {expected:?}");
        }
        other => panic!("mallory was not cut off with a protocol violation: {other:?}"),
    }
}

fn assert_honest_round(records: &[tessera_core::RoundRecord]) {
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].participants >= 3, "{records:?}");
    assert!(records[0].accuracy.is_some_and(|a| a > 0.5), "the round's model is usable: {records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_length_masked_vector_is_rejected() {
    let (outcome, records) = round_with_mallory(|m| match m {
        ClientMsg::MaskedStart { round, len } => (vec![ClientMsg::MaskedStart { round, len: len + 7 }], true),
        m => (vec![m], false),
    })
    .await;
    assert_rejected(&outcome, &["update vector: announced"]);
    assert_honest_round(&records);
    assert_eq!(records[0].participants, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_masked_chunk_is_rejected() {
    // The header is right, but the last chunk carries values past the end.
    let (outcome, records) = round_with_mallory(|m| match m {
        ClientMsg::MaskedChunk { round, offset, mut values } => {
            values.extend([0u32; 3]);
            (vec![ClientMsg::MaskedChunk { round, offset, values }], true)
        }
        m => (vec![m], false),
    })
    .await;
    assert_rejected(&outcome, &["lies outside the"]);
    assert_honest_round(&records);
    assert_eq!(records[0].participants, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_vector_for_another_round_is_rejected() {
    let (outcome, records) = round_with_mallory(|m| match m {
        ClientMsg::MaskedStart { round, len } => (vec![ClientMsg::MaskedStart { round: round + 1, len }], true),
        m => (vec![m], false),
    })
    .await;
    assert_rejected(&outcome, &["`masked_start` for round 2"]);
    assert_honest_round(&records);
    assert_eq!(records[0].participants, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_for_a_nonexistent_peer_are_rejected() {
    let (outcome, records) = round_with_mallory(|m| match m {
        ClientMsg::ShareKeys { round, mut shares } => {
            shares[0].to = 99;
            (vec![ClientMsg::ShareKeys { round, shares }], true)
        }
        m => (vec![m], false),
    })
    .await;
    assert_rejected(&outcome, &["secure aggregation: party 99 is not a member of this cohort"]);
    assert_honest_round(&records);
    assert_eq!(records[0].participants, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_update_in_the_same_round_is_rejected() {
    // Mallory sends her masked vector, then the same stream again.
    let mut copy: Vec<ClientMsg> = Vec::new();
    let (outcome, records) = round_with_mallory(move |m| match m {
        ClientMsg::MaskedStart { .. } | ClientMsg::MaskedChunk { .. } => {
            copy.push(m.clone());
            (vec![m], false)
        }
        ClientMsg::MaskedEnd { round } => {
            let mut again = vec![ClientMsg::MaskedEnd { round }];
            again.append(&mut copy);
            again.push(ClientMsg::MaskedEnd { round });
            (again, true)
        }
        m => (vec![m], false),
    })
    .await;
    // A duplicate while the masked phase is open; out of phase if hers was
    // the last vector the phase waited for.
    assert_rejected(
        &outcome,
        &["already submitted this step", "`masked_start` is not expected in phase consistency_check"],
    );
    // Her first vector is in the sum and is unmasked with the others; the
    // second never is.
    assert_honest_round(&records);
}
