//! Differential privacy end to end over real QUIC: record-level DP-SGD on
//! every member, the aggregator's budget ending the run at the right round,
//! each member's own write-ahead ledger, and that ledger surviving a member
//! crash and restart.

use std::time::Duration;

use tessera_aggregator::daemon;
use tessera_client::PrivacySection;
use tessera_core::PrivacyUnit;
use tessera_e2e::*;
use tessera_privacy::{FileLedgerStore, LedgerEntry, LedgerStore, RdpAccountant};
use tessera_protocol::coordinator::PrivacyConfig;
use tessera_transport::pki;

/// Rounds a fixed-noise policy affords, by the accountant directly.
fn affordable_rounds(z: f64, q: f64, steps: u64, epsilon: f64, delta: f64) -> usize {
    let mut acc = RdpAccountant::default();
    let mut n = 0;
    loop {
        acc.compose_poisson_gaussian(z, q, steps).unwrap();
        if acc.epsilon(delta).unwrap().0 > epsilon {
            return n;
        }
        n += 1;
    }
}

fn reserved(path: &std::path::Path) -> usize {
    let entries = FileLedgerStore::open(path).unwrap().load().unwrap();
    entries.iter().filter(|e| matches!(e, LedgerEntry::Reserved { .. })).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_level_dp_over_quic_stops_at_the_budget_and_members_keep_ledgers() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    for n in names {
        pki::issue(&pki_dir, n).unwrap();
    }
    let csvs = write_member_csvs(dir.path(), &names);
    let run_dir = dir.path().join("run");
    let mut cfg = aggregator_config(&pki_dir, &run_dir, &names, 20, 2);
    cfg.train.local_epochs = 1;
    // A budget that affords exactly 4 rounds of 4 DP-SGD steps (1 local
    // epoch at q = 1/4), by the accountant itself.
    let (z, q) = (2.0, 0.25);
    let mut acc = RdpAccountant::default();
    acc.compose_poisson_gaussian(z, q, 16).unwrap();
    let epsilon = acc.epsilon(1e-5).unwrap().0 * 1.0001;
    cfg.privacy = Some(PrivacyConfig {
        unit: PrivacyUnit::Record,
        noise: None,
        epsilon,
        delta: 1e-5,
        clip_norm: 1.0,
        noise_multiplier: Some(z),
        sampling_rate: Some(q),
        adaptive_clipping: None,
        evaluation: None,
    });
    let expected = affordable_rounds(z, q, 4, epsilon, 1e-5);
    assert_eq!(expected, 4);

    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));

    let ledger = |n: &str| dir.path().join(format!("{n}-privacy.jsonl"));
    let member_cfg = |n: &str, csv: &std::path::Path| {
        let mut c = client_config(dir.path(), &pki_dir, n, csv, &addr);
        // Each member's own budget is looser than the consortium's.
        c.privacy = Some(PrivacySection { epsilon: 10.0, delta: 1e-5, ledger: ledger(n) });
        c
    };
    let mut members = Vec::new();
    for (n, csv) in names.iter().zip(&csvs).skip(1) {
        members.push(tokio::spawn(run_member(member_cfg(n, csv))));
    }
    // hospital-a crashes once it has released an update, then restarts.
    let a_cfg = member_cfg(names[0], &csvs[0]);
    let egress_a = a_cfg.state.egress_ledger.clone();
    let first = tokio::spawn(run_member(a_cfg.clone()));
    let released = |p: &std::path::Path| {
        tessera_client::EgressLedger::read(p)
            .map(|es| es.iter().filter(|e| e.kind == "masked_end").count())
            .unwrap_or(0)
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        while released(&egress_a) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("hospital-a releases an update");
    first.abort();
    let _ = first.await;
    // Every release so far was charged first.
    assert!(reserved(&ledger(names[0])) >= released(&egress_a));
    members.push(tokio::spawn(run_member(a_cfg)));

    let end = tokio::time::timeout(Duration::from_secs(300), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert!(end.reason.contains("privacy budget exhausted"), "{}", end.reason);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    // Every started attempt was charged, aborted ones included, except
    // those refunded because no update had arrived (issue #21).
    let aborted = summary["aborted_rounds"].as_u64().unwrap_or(0);
    let db = rusqlite::Connection::open(run_dir.join("tessera.db")).unwrap();
    let refunded: u64 =
        db.query_row("SELECT COUNT(*) FROM audit WHERE kind = 'privacy_refunded'", [], |r| r.get(0)).unwrap();
    assert!(refunded <= aborted);
    assert_eq!(end.completed_rounds + aborted - refunded, expected as u64, "{summary}");
    for m in members {
        let _ = m.await.unwrap();
    }

    let records = read_metrics(&run_dir);
    let eps: Vec<f64> = records.iter().map(|r| r.epsilon.expect("epsilon in metrics.jsonl")).collect();
    assert!(eps.windows(2).all(|w| w[1] > w[0]) && *eps.last().unwrap() <= epsilon, "{eps:?}");
    assert!(records.iter().all(|r| r.delta == Some(1e-5)));
    assert!(summary["epsilon"].as_f64().is_some_and(|e| e > 0.0 && e <= epsilon), "{summary}");

    for n in names {
        let egress = dir.path().join(format!("{n}-egress.jsonl"));
        let (charged, out) = (reserved(&ledger(n)), released(&egress));
        assert!(out > 0 && charged >= out, "{n}: {charged} charges for {out} releases");
    }
}
