use tessera_core::{ModelParams, ParamTensor, RoundRecord, RunId};
use tessera_privacy::{GaussianSpend, PrivacyBudget, PrivacyLedger, RdpAccountant};

use super::*;
use tessera_protocol::{AdaptiveConfig, ServerOptimizer, StrategyConfig};

const SPEND: GaussianSpend = GaussianSpend { noise_multiplier: 1.2, sampling_rate: 1.0, steps: 1 };

fn model(x: f32) -> ModelParams {
    ModelParams::new(vec![
        ParamTensor::new("head.weight", vec![2, 2], vec![x, 1.0, -x, 0.5]).unwrap(),
        ParamTensor::new("head.bias", vec![2], vec![0.25, x]).unwrap(),
    ])
}

fn record(round: u64, acc: f64, eps: Option<f64>) -> RoundRecord {
    RoundRecord {
        round,
        participants: 3,
        dropped: 0,
        accepted: true,
        loss: Some(0.5),
        accuracy: Some(acc),
        balanced_accuracy: Some(acc),
        auc: Some(acc),
        f1: Some(acc),
        bytes_up: 10,
        bytes_down: 20,
        seconds: 1.0,
        epsilon: eps,
        delta: eps.map(|_| 1e-5),
        ..Default::default()
    }
}

fn epsilon_of(n: u64) -> f64 {
    let mut acc = RdpAccountant::default();
    acc.compose_poisson_gaussian(SPEND.noise_multiplier, SPEND.sampling_rate, SPEND.steps * n).unwrap();
    acc.epsilon(1e-5).unwrap().0
}

/// A store with `n` completed rounds (wire rounds 1..=n) and their spends.
fn store_with_rounds(dir: &Path, n: u64, keep: u32) -> (StateStore, ServerOptimizer) {
    let mut s = StateStore::open(&dir.join("state/tessera.db")).unwrap();
    s.create_run(RunId([7; 16]), 42, "{\"run\":{\"rounds\":5}}", 1).unwrap();
    let cohort = vec!["a".to_string(), "b".to_string()];
    let mut opt = ServerOptimizer::new(StrategyConfig::FedAdam(AdaptiveConfig::default()));
    let mut g = model(0.0);
    for r in 1..=n {
        s.round_started(r, r, &cohort, 100 + r, 10 * r as i64).unwrap();
        s.privacy_reserved(r, &SPEND, epsilon_of(r), 1e-5, 10 * r as i64 + 1).unwrap();
        opt.step(&mut g, &model(0.1 * r as f32)).unwrap();
        let rec = record(r, 0.5 + 0.1 * r as f64, Some(epsilon_of(r)));
        let fin = FinishedRound {
            round: r,
            logical: r,
            contributors: &cohort,
            dropped: &[],
            record: &rec,
            model: &g,
            optimizer: &opt,
        };
        s.round_finished(&fin, keep, 10 * r as i64 + 5).unwrap();
    }
    (s, opt)
}

#[test]
fn opens_in_wal_mode_with_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let s = StateStore::open(&dir.path().join("a/b/t.db")).unwrap();
    let mode: String = s.connection().pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    let sync: i64 = s.connection().pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
    let version: i64 = s.connection().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!((mode.as_str(), sync, version), ("wal", 2, MIGRATIONS.len() as i64));
    assert!(matches!(StateStore::open_existing(&dir.path().join("nope.db")), Err(StoreError::Missing { .. })));
}

#[test]
fn rounds_checkpoints_and_ledger_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (s, opt) = store_with_rounds(dir.path(), 4, 2);
    drop(s); // no clean shutdown is needed: every write was committed
    let s = StateStore::open_existing(&dir.path().join("state/tessera.db")).unwrap();
    let info = s.run_info().unwrap().unwrap();
    assert_eq!((info.run_id, info.seed), (RunId([7; 16]), 42));
    assert_eq!(s.max_round().unwrap(), 4);
    let records = s.completed_records().unwrap();
    assert_eq!(records.iter().map(|r| r.round).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // Only the newest two checkpoints are kept; the newest restores exactly.
    assert_eq!(s.checkpoints().unwrap().iter().map(|c| c.0).collect::<Vec<_>>(), vec![3, 4]);
    let cp = s.latest_checkpoint().unwrap().unwrap();
    assert_eq!((cp.completed, cp.round), (4, 4));
    assert_eq!(cp.optimizer, opt);
    assert_eq!(cp.model.digest_hex(), cp.model_sha256);
    assert_eq!(s.reserved_spends().unwrap().len(), 4);
    assert_eq!(s.epsilon_spent().unwrap(), Some((epsilon_of(4), 1e-5)));
    assert_eq!(s.verify_audit().unwrap(), Ok(1 + 4 * 3));
}

#[test]
fn ledger_replays_through_the_privacy_crate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = store_with_rounds(dir.path(), 3, 3);
    // A fourth round reserved, then the process died: it counts as spent.
    s.round_started(5, 4, &["a".into(), "b".into()], 9, 100).unwrap();
    s.privacy_reserved(5, &SPEND, epsilon_of(4), 1e-5, 101).unwrap();
    assert_eq!(s.interrupt_open_rounds(102).unwrap(), vec![5]);
    let ledger = PrivacyLedger::open(s, PrivacyBudget { epsilon: 100.0, delta: 1e-5 }).unwrap();
    assert_eq!(ledger.pending_rounds(), vec![5]);
    assert!((ledger.spent().unwrap().epsilon - epsilon_of(4)).abs() < 1e-9 * epsilon_of(4));
    let s = ledger.into_store();
    assert_eq!(s.reserved_spends().unwrap().iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 5]);
    let statuses: Vec<String> = s.rounds().unwrap().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["completed", "completed", "completed", "interrupted"]);
}

#[test]
fn audit_and_ledger_refuse_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = store_with_rounds(dir.path(), 1, 1);
    let c = s.connection();
    for sql in [
        "UPDATE audit SET body = '{}' WHERE seq = 2",
        "DELETE FROM audit WHERE seq = 2",
        "UPDATE ledger SET entry = '{}'",
        "DELETE FROM ledger",
    ] {
        let e = c.execute(sql, []).unwrap_err().to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
}

#[test]
fn tampering_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = store_with_rounds(dir.path(), 3, 1);
    let c = s.connection();
    c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;").unwrap();
    c.execute("UPDATE audit SET body = replace(body, '\"dropped\":[]', '\"dropped\":[\"b\"]') WHERE seq = 4", [])
        .unwrap();
    let err = s.verify_audit().unwrap().unwrap_err();
    assert_eq!(err.seq(), 4, "{err}");
    assert!(err.to_string().contains("entry 4 (round_finished)"), "{err}");
}

#[test]
fn config_changes_and_membership_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = StateStore::open(&dir.path().join("t.db")).unwrap();
    s.create_run(RunId([1; 16]), 1, r#"{"run":{"rounds":3},"train":{"lr":0.1}}"#, 1).unwrap();
    assert_eq!(s.record_config(r#"{"run":{"rounds":3},"train":{"lr":0.1}}"#, 2).unwrap(), None);
    let changed = s.record_config(r#"{"run":{"rounds":5},"train":{"lr":0.1}}"#, 3).unwrap();
    assert_eq!(changed, Some(vec!["run".to_string()]));
    let names = vec!["a".to_string(), "b".to_string()];
    assert_eq!(s.members_seen(&names, 4).unwrap(), names);
    assert!(s.members_seen(&names, 5).unwrap().is_empty(), "only the first admission is audited");
    assert_eq!(s.sync_revocations(&["b".into()], 6).unwrap(), (vec!["b".to_string()], vec![]));
    assert_eq!(s.sync_revocations(&["b".into()], 7).unwrap(), (vec![], vec![]));
    assert_eq!(s.sync_revocations(&[], 8).unwrap(), (vec![], vec!["b".to_string()]));
    let fp = ("ab".repeat(32), Some("b".to_string()));
    assert_eq!(s.sync_revoked_certificates(std::slice::from_ref(&fp), 9).unwrap(), (vec![fp.0.clone()], vec![]));
    assert_eq!(s.sync_revoked_certificates(std::slice::from_ref(&fp), 10).unwrap(), (vec![], vec![]));
    assert_eq!(s.sync_revoked_certificates(&[], 11).unwrap(), (vec![], vec![fp.0.clone()]));
    let kinds: Vec<String> = s.audit_entries().unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            "run_created",
            "config_changed",
            "member_admitted",
            "member_admitted",
            "member_revoked",
            "member_reinstated",
            "certificate_revoked",
            "certificate_reinstated"
        ]
    );
    assert_eq!(s.members().unwrap()[1].last_seen_ms, Some(5));
    assert_eq!(s.verify_audit().unwrap(), Ok(8));
}

#[test]
fn utc_formats_known_instants() {
    assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
    assert_eq!(utc(1_767_225_599_000), "2025-12-31T23:59:59Z");
}

/// A state database written before schema version 3 opens: a statistics
/// release it recorded as an `aborted` round gets its own status, other
/// rows and their stored records (numbers where a value was a stand-in
/// then) read as before; a new release is kept in full and is final.
#[test]
fn a_version_2_database_opens_and_releases_get_their_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(MIGRATIONS[1]).unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        let old_record = r#"{"round":2,"participants":3,"dropped":0,"accepted":true,"loss":0.0,"accuracy":0.9,
            "balanced_accuracy":0.9,"auc":0.5,"f1":0.9,"bytes_up":1,"bytes_down":2,"seconds":0.1}"#;
        let row = "INSERT INTO rounds (round, logical, status, started_ms, cohort, cohort_seed, reason, record)
                   VALUES (?1, ?2, ?3, 0, '[]', 0, ?4, ?5)";
        let stats_reason = "a DP statistics release, not a training round";
        c.execute(row, rusqlite::params![1, 1, "aborted", stats_reason, None::<String>]).unwrap();
        c.execute(row, rusqlite::params![2, 1, "completed", None::<String>, old_record]).unwrap();
        c.execute(row, rusqlite::params![3, 2, "aborted", "too few survivors", None::<String>]).unwrap();
    }
    let mut s = StateStore::open_existing(&path).unwrap();
    let rows = s.rounds().unwrap();
    let got: Vec<(&str, Option<&str>)> = rows.iter().map(|r| (r.status.as_str(), r.reason.as_deref())).collect();
    assert_eq!(got, [("statistics", None), ("completed", None), ("aborted", Some("too few survivors"))]);
    let old = &s.completed_records().unwrap()[0];
    assert_eq!((old.loss, old.auc, old.accuracy), (Some(0.0), Some(0.5), Some(0.9)));
    assert_eq!(s.statistics_release().unwrap(), None, "before version 3 only the file held the values");

    s.round_started(4, 2, &["a".into(), "b".into()], 9, 100).unwrap();
    s.privacy_reserved(4, &SPEND, 1.0, 1e-5, 101).unwrap();
    let released = serde_json::json!({ "round": 4, "released": { "labels": [10.5, 20.25] } });
    s.statistics_released(4, &released, &serde_json::json!({ "round": 4 }), 102).unwrap();
    assert_eq!(s.statistics_release().unwrap(), Some((4, released)));
    assert_eq!(s.rounds().unwrap()[3].status, "statistics");
    assert_eq!(s.completed_records().unwrap().len(), 1, "a release is no completed round");
    assert!(matches!(s.ledger().unwrap().last().unwrap().entry, tessera_privacy::LedgerEntry::Committed { round: 4 }));
    let e = s.connection().execute("UPDATE statistics_releases SET json = '{}'", []).unwrap_err().to_string();
    assert!(e.contains("final"), "{e}");
    let e = s.connection().execute("UPDATE rounds SET status = 'released' WHERE round = 4", []).unwrap_err();
    assert!(e.to_string().contains("CHECK"), "{e}");
}
