//! Crash recovery of the real `tessera-aggregator serve` process.
//!
//! Two runs of the same 3-round, client-level-DP federation with the same
//! seed and seeded member randomness: a reference run left alone, and a run
//! whose aggregator is SIGKILLed four times and restarted each time while
//! the members reconnect:
//!
//! 1. between rounds: right after round 1's completion is committed and
//!    before round 2 starts (the daemon is stalled there by the test-only
//!    `TESSERA_TEST_STALL_AFTER_ROUND`);
//! 2. mid-round, in training: round 2 has started, its privacy spend is
//!    reserved, and all members are held inside local training;
//! 3. mid-round, in private evaluation: the retried round 2 has started and
//!    all members are held inside the evaluation of the round's starting
//!    model, which rides inside their masked updates;
//! 4. mid-round, after aggregation: the retried round 2 has been securely
//!    summed and the server step applied in memory, and nothing of it is
//!    committed (the daemon is stalled there by the test-only
//!    `TESSERA_TEST_STALL_BEFORE_COMMIT`: under DP no member evaluates after
//!    the sum, issue #18, so no member can hold this window open).
//!
//! What must hold, and what "equals" means:
//! - the final global model of the killed run is bit-for-bit equal to the
//!   reference's (`ModelParams` compared value by value), and so are the
//!   per-round evaluation metrics of each of the 3 completed rounds;
//! - exactly 3 rounds are completed, logical rounds 1..=3 each once, in the
//!   database and in `metrics.jsonl` (no round lost, none counted twice);
//! - the privacy ledger holds exactly one reservation per round attempt that
//!   started (completed or interrupted) and no other; the epsilon it reports
//!   equals the RDP composition of that many spends, which is more than the
//!   reference spent: an interrupted release is never forgotten;
//! - the audit chains of both runs verify.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tessera_aggregator::StateStore;
use tessera_privacy::{LedgerEntry, PrivacyBudget, PrivacyLedger, RdpAccountant};

const ROUNDS: u64 = 3;
const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_point_loses_nothing_and_counts_nothing_twice() {
    let site = Site::new();
    let gates = Arc::new(Gates::default());

    // Reference: no kills.
    let port = free_udp_port();
    let reference =
        aggregator_toml(&site, "reference", &RunOptions { rounds: ROUNDS, quic_port: port, http_port: None, dp: true });
    let mut agg = spawn_aggregator(&reference, None);
    let members = start_members(&site, "reference", port, &gates);
    assert!(wait_exit(&mut agg, MINUTE), "reference run failed: see {}", reference.parent().unwrap().display());
    join_members(members).await;

    // The same run, killed three times.
    let port = free_udp_port();
    let killed =
        aggregator_toml(&site, "killed", &RunOptions { rounds: ROUNDS, quic_port: port, http_port: None, dp: true });
    let db = state_db(&killed);
    let members = start_members(&site, "killed", port, &gates);

    // 1. Between rounds.
    let agg = spawn_aggregator(&killed, Some(1));
    wait_db(&db, MINUTE, "round 1 to complete", |c| {
        (count(c, "SELECT COUNT(*) FROM rounds WHERE status = 'completed'")? == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = wait_db(&db, MINUTE, "round table", |c| count(c, "SELECT COUNT(*) FROM rounds WHERE logical = 2")).await;
    assert_eq!(open, 0, "the stalled daemon must not have started round 2");
    sigkill(agg);

    // 2. Mid-round, members held in training.
    gates.train.store(true, Ordering::SeqCst);
    let evaluated = gates.evaluated();
    let agg = spawn_aggregator(&killed, None);
    let first_attempt = reserved_for(&db, 2).await;
    gates.wait_held(NAMES.len()).await;
    sigkill(agg);
    gates.release(&gates.train).await;
    // Each member was asked to evaluate this attempt's starting model too,
    // on the same local model: where training took the model first, that
    // evaluation runs only now. Let it finish before the evaluation gate
    // closes, or it would be held there and pass for the next attempt's.
    gates.wait_evaluated(evaluated + NAMES.len()).await;

    // 3. Mid-round, members held in the private evaluation of the round's model.
    gates.evaluate.store(true, Ordering::SeqCst);
    let agg = spawn_aggregator(&killed, None);
    gates.wait_held(NAMES.len()).await;
    let open = wait_db(&db, MINUTE, "round table", |c| {
        let rows = c.prepare("SELECT round FROM rounds WHERE logical = 2 AND status = 'started'").ok()?;
        Some(rows_of(rows))
    })
    .await;
    assert!(
        matches!(open[..], [r] if r > first_attempt),
        "the retried round 2 (after wire round {first_attempt}) is in evaluation, not yet complete: {open:?}"
    );
    sigkill(agg);
    gates.release(&gates.evaluate).await;

    // 4. Mid-round, after the secure sum and the server step, before the commit.
    let agg = spawn_aggregator_stalled(&killed, Some((tessera_aggregator::STALL_BEFORE_COMMIT_ENV, 2)));
    wait_for_log(killed.parent().unwrap(), "TESSERA_TEST_STALL_BEFORE_COMMIT=2: stalling", MINUTE).await;
    let (open, done) = wait_db(&db, MINUTE, "round table", |c| {
        let open = count(c, "SELECT COUNT(*) FROM rounds WHERE logical = 2 AND status = 'started'")?;
        Some((open, count(c, "SELECT COUNT(*) FROM rounds WHERE status = 'completed'")?))
    })
    .await;
    assert_eq!((open, done), (1, 1), "round 2 was summed and stepped, but nothing of it is committed");
    sigkill(agg);

    // Restart and let it finish.
    let mut agg = spawn_aggregator(&killed, None);
    assert!(wait_exit(&mut agg, MINUTE), "resumed run failed: see {}", killed.parent().unwrap().display());
    join_members(members).await;

    let want = StateStore::open_existing(&state_db(&reference)).unwrap();
    let got = StateStore::open_existing(&db).unwrap();

    // The same model, bit for bit, and the same metrics round by round.
    let (w, g) = (want.latest_checkpoint().unwrap().unwrap(), got.latest_checkpoint().unwrap().unwrap());
    assert_eq!((w.completed, g.completed), (ROUNDS, ROUNDS));
    assert_eq!(g.model, w.model, "the resumed run's final model differs from the uninterrupted run's");
    let (wr, gr) = (want.completed_records().unwrap(), got.completed_records().unwrap());
    assert_eq!(gr.len() as u64, ROUNDS);
    for (a, b) in wr.iter().zip(&gr) {
        assert_eq!((a.loss, a.accuracy, a.participants), (b.loss, b.accuracy, b.participants));
    }

    // Each logical round completed exactly once; metrics.jsonl agrees.
    let rows = got.rounds().unwrap();
    let completed: Vec<u64> = rows.iter().filter(|r| r.status == "completed").map(|r| r.logical).collect();
    assert_eq!(completed, (1..=ROUNDS).collect::<Vec<_>>());
    let interrupted = rows.iter().filter(|r| r.status == "interrupted").count();
    assert_eq!(interrupted, 3, "kills 2, 3 and 4 each cut an attempt at round 2 short: {rows:?}");
    let lines = std::fs::read_to_string(killed.parent().unwrap().join("out/metrics.jsonl")).unwrap();
    let wire: Vec<u64> =
        lines.lines().map(|l| serde_json::from_str::<tessera_core::RoundRecord>(l).unwrap().round).collect();
    let completed_wire: Vec<u64> = rows.iter().filter(|r| r.status == "completed").map(|r| r.round).collect();
    assert_eq!(wire, completed_wire);

    // One reservation per started attempt, and its epsilon is their sum.
    let started: Vec<u64> = rows.iter().map(|r| r.round).collect();
    let ledger = got.ledger().unwrap();
    let mut reserved: Vec<u64> = ledger
        .iter()
        .filter_map(|l| match l.entry {
            LedgerEntry::Reserved { round, .. } => Some(round),
            _ => None,
        })
        .collect();
    reserved.sort();
    assert_eq!(reserved, started, "ledger reservations must match the round attempts that started");
    let spends = got.reserved_spends().unwrap();
    let spend = spends[0].1;
    assert!(spends.iter().all(|s| s.1 == spend));
    let mut acc = RdpAccountant::default();
    acc.compose_poisson_gaussian(spend.noise_multiplier, spend.sampling_rate, spend.steps * started.len() as u64)
        .unwrap();
    let expected = acc.epsilon(1e-5).unwrap().0;
    let (eps, _) = got.epsilon_spent().unwrap().unwrap();
    assert!((eps - expected).abs() <= 1e-9 * expected, "ledger epsilon {eps} vs {expected}");
    let (ref_eps, _) = want.epsilon_spent().unwrap().unwrap();
    assert!(eps > ref_eps, "interrupted releases must count: {eps} <= {ref_eps}");
    let replay = PrivacyLedger::open(got, PrivacyBudget { epsilon: 1000.0, delta: 1e-5 }).unwrap();
    assert!((replay.spent().unwrap().epsilon - expected).abs() <= 1e-9 * expected);
    let got = replay.into_store();

    assert!(want.verify_audit().unwrap().is_ok());
    assert!(got.verify_audit().unwrap().is_ok());
    let kinds: Vec<String> = got.audit_entries().unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "aggregator_started").count(), 5);
    assert_eq!(kinds.iter().filter(|k| *k == "round_interrupted").count(), interrupted);
}

/// Wait until the `logical`-th round has started and its spend is durably
/// reserved; its wire round.
async fn reserved_for(db: &std::path::Path, logical: i64) -> i64 {
    wait_db(db, MINUTE, "a reserved round", |c| {
        let round: i64 = c
            .query_row("SELECT round FROM rounds WHERE logical = ?1 AND status = 'started'", [logical], |r| r.get(0))
            .ok()?;
        let n: i64 = c.query_row("SELECT COUNT(*) FROM ledger WHERE round = ?1", [round], |r| r.get(0)).ok()?;
        (n == 1).then_some(round)
    })
    .await
}

/// The first column of every row of `stmt`.
fn rows_of(mut stmt: rusqlite::Statement<'_>) -> Vec<i64> {
    stmt.query_map([], |r| r.get(0)).map(|rows| rows.flatten().collect()).unwrap_or_default()
}

/// Wait until a `serve-N.log` in `dir` contains `needle`.
async fn wait_for_log(dir: &std::path::Path, needle: &str, limit: Duration) {
    let until = std::time::Instant::now() + limit;
    loop {
        let found = std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("serve-")
                && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle))
        });
        if found {
            return;
        }
        assert!(std::time::Instant::now() < until, "no `{needle}` in {}'s logs", dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
