//! Federated rounds end to end over real QUIC with mutual TLS on loopback:
//! the aggregator daemon's code and three member daemons' code, real
//! certificates, real training on the shipped WDBC data.

use std::time::Duration;

use tessera_aggregator::daemon;
use tessera_core::{ClientMsg, Limits, PROTOCOL_VERSION, encode_frame};
use tessera_e2e::*;
use tessera_transport::{QuicDialConfig, TransportError, connect, pki};

/// The accuracy bar the federated WDBC model must clear on the members'
/// held-out splits (a logistic regression reaches ~0.96 centrally).
const ACCURACY_BAR: f64 = 0.90;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_train_over_quic_and_outsiders_are_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    for n in names.iter().chain(&["outsider"]) {
        pki::issue(&pki_dir, n).unwrap();
    }
    // A second consortium whose member claims a valid name.
    let rogue_pki = dir.path().join("rogue-pki");
    pki::init(&rogue_pki, &Default::default()).unwrap();
    pki::issue(&rogue_pki, "hospital-a").unwrap();

    let csvs = write_member_csvs(dir.path(), &names);
    let run_dir = dir.path().join("run");
    let cfg = aggregator_config(&pki_dir, &run_dir, &names, 3, 3);
    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));

    // Outsiders first: both must be refused while the aggregator keeps serving.
    let foreign = QuicDialConfig::from_pki_dir(&rogue_pki, "hospital-a", addr.clone()).unwrap();
    let foreign = with_name(foreign);
    let err = connect(&foreign).await.err().expect("a certificate from another CA must be refused");
    assert!(
        matches!(
            err,
            TransportError::CertificateRefusedByPeer { .. }
                | TransportError::PeerCertificateRejected { .. }
                | TransportError::Refused { .. }
                | TransportError::ClosedByPeer { .. }
        ),
        "{err}"
    );
    let outsider = with_name(QuicDialConfig::from_pki_dir(&pki_dir, "outsider", addr.clone()).unwrap());
    let err = connect(&outsider).await.err().expect("a non-member must be refused");
    assert!(err.to_string().contains("not a member"), "{err}");

    let mut members = Vec::new();
    for (n, csv) in names.iter().zip(&csvs) {
        members.push(tokio::spawn(run_member(client_config(dir.path(), &pki_dir, n, csv, &addr))));
    }
    let end = tokio::time::timeout(Duration::from_secs(240), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert_eq!(end.completed_rounds, 3, "{}", end.reason);
    for m in members {
        let exit = m.await.unwrap().unwrap();
        assert!(matches!(exit, tessera_client::ClientExit::Shutdown { .. }), "{exit:?}");
    }

    let records = read_metrics(&run_dir);
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.participants == 3 && r.bytes_up > 0 && r.bytes_down > 0));
    let last = records.last().unwrap();
    let accuracy = |r: &tessera_core::RoundRecord| r.accuracy.expect("an accuracy reported in the clear");
    assert!(accuracy(last) >= ACCURACY_BAR, "federated accuracy {} below {ACCURACY_BAR}", accuracy(last));
    // Without DP the members report in the clear: the loss is released.
    let loss = |r: &tessera_core::RoundRecord| r.loss.expect("a loss reported in the clear");
    assert!(
        loss(last) < loss(&records[0]) + 1e-9 || accuracy(&records[0]) >= ACCURACY_BAR,
        "the model did not learn: {records:?}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["completed_rounds"], 3);

    // Each member's egress ledger shows only protocol messages: no plaintext update left.
    for n in names {
        let entries = tessera_client::EgressLedger::read(&dir.path().join(format!("{n}-egress.jsonl"))).unwrap();
        assert!(entries.iter().any(|e| e.kind == "masked_chunk"));
        assert!(entries.iter().all(|e| !e.kind.starts_with("plain")));
    }
}

fn with_name(mut c: QuicDialConfig) -> QuicDialConfig {
    c.server_name = Some("localhost".into());
    c.connect_timeout = Duration::from_secs(5);
    c
}

/// A member that sends garbage is cut off; the round completes with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_the_offender() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    let names = ["hospital-a", "hospital-b", "hospital-c", "mallory"];
    for n in names {
        pki::issue(&pki_dir, n).unwrap();
    }
    let honest = &names[..3];
    let csvs = write_member_csvs(dir.path(), honest);
    let run_dir = dir.path().join("run");
    let mut cfg = aggregator_config(&pki_dir, &run_dir, &names, 2, 3);
    cfg.run.start_quorum = Some(3);
    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));

    // Mallory connects with a valid certificate and sends frames that are
    // well-framed but undecodable, then a wrong-version frame, each on a new connection.
    let mallory = with_name(QuicDialConfig::from_pki_dir(&pki_dir, "mallory", addr.clone()).unwrap());
    let limits = Limits::default();
    let garbage = vec![PROTOCOL_VERSION, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    let mut conn = connect(&mallory).await.unwrap();
    conn.send(garbage).await.unwrap();
    // The aggregator closes the connection: after any Welcome, reading ends in an error or EOF.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.recv().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the offender is cut off promptly");
    assert!(!matches!(closed, Ok(Some(_))));
    // A valid frame from a member that then goes silent must not block anyone.
    let mut conn2 = connect(&mallory).await.unwrap();
    conn2
        .send(
            encode_frame(
                &ClientMsg::Hello {
                    member: "mallory".into(),
                    protocol_version: PROTOCOL_VERSION,
                    settings: Default::default(),
                },
                &limits,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    drop(conn2);

    let mut members = Vec::new();
    for (n, csv) in honest.iter().zip(&csvs) {
        members.push(tokio::spawn(run_member(client_config(dir.path(), &pki_dir, n, csv, &addr))));
    }
    let end = tokio::time::timeout(Duration::from_secs(240), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert_eq!(end.completed_rounds, 2, "{}", end.reason);
    let records = read_metrics(&run_dir);
    assert!(records.iter().all(|r| r.participants == 3), "{records:?}");
    for m in members {
        m.await.unwrap().unwrap();
    }
}

/// A member that dies mid-round is dropped; the round completes with the rest
/// because enough members remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_lost_mid_round_does_not_sink_the_round() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    let names = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];
    for n in names {
        pki::issue(&pki_dir, n).unwrap();
    }
    let csvs = write_member_csvs(dir.path(), &names);
    let run_dir = dir.path().join("run");
    let mut cfg = aggregator_config(&pki_dir, &run_dir, &names, 2, 3);
    cfg.run.start_quorum = Some(4);
    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));
    let mut members = Vec::new();
    for (n, csv) in names[..3].iter().zip(&csvs) {
        members.push(tokio::spawn(run_member(client_config(dir.path(), &pki_dir, n, csv, &addr))));
    }
    // hospital-d's training waits on a gate we never open: it joins round 1,
    // advertises its keys, and is killed while "training".
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let d_cfg = client_config(dir.path(), &pki_dir, names[3], &csvs[3], &addr);
    let doomed = tokio::spawn(run_member_with(d_cfg, move |m| GatedModel { inner: m, gate: gate_rx }));
    let ledger = dir.path().join("hospital-d-egress.jsonl");
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let sent = std::fs::read_to_string(&ledger).unwrap_or_default();
            if sent.contains("\"share_keys\"") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("hospital-d joined round 1");
    doomed.abort();
    drop(gate_tx);

    let end = tokio::time::timeout(Duration::from_secs(240), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert_eq!(end.completed_rounds, 2, "{}", end.reason);
    let records = read_metrics(&run_dir);
    assert_eq!(records[0].participants, 3, "{records:?}");
    assert_eq!(records[0].dropped, 1);
    for m in members {
        m.await.unwrap().unwrap();
    }
}
