//! A member daemon SIGKILLed between charging its own privacy budget and
//! releasing its update, then restarted: its ledger (written before any
//! training, fsync'd) still holds every charge, shows the interrupted round
//! as spent although nothing of it left the site, and covers every update
//! that did leave (its egress ledger). The run completes all its rounds.
//!
//! The aggregator is the real `tessera-aggregator` binary; hospital-c is the
//! real `tessera-client` binary, which `cargo test --workspace` builds (the
//! client package has integration tests of its binary). Run alone, this test
//! skips with a message when that binary is missing.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tessera_aggregator::StateStore;
use tessera_privacy::{FileLedgerStore, LedgerEntry, LedgerStore};

const ROUNDS: u64 = 5;

fn ledger(path: &Path) -> Vec<LedgerEntry> {
    if !path.exists() {
        return vec![];
    }
    FileLedgerStore::open(path).unwrap().load().unwrap()
}

fn reserved_rounds(entries: &[LedgerEntry]) -> BTreeSet<u64> {
    entries
        .iter()
        .filter_map(|e| match e {
            LedgerEntry::Reserved { round, .. } => Some(*round),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_between_charge_and_release_forgets_no_spend() {
    let client_bin = client_binary();
    let site = Site::new();
    let gates = Arc::new(Gates::default());
    let port = free_udp_port();
    let config = aggregator_toml(
        &site,
        "member-kill",
        &RunOptions { rounds: ROUNDS, quic_port: port, http_port: None, dp: true },
    );
    // Long enough local training (about a second) that the kill below lands
    // between the member's charge and its release.
    let toml = std::fs::read_to_string(&config).unwrap().replace("local_epochs = 1\n", "local_epochs = 150\n");
    std::fs::write(&config, toml).unwrap();
    let mut agg = spawn_aggregator(&config, None);

    // hospital-a and hospital-b in this process; hospital-c as its own
    // process, with its own privacy budget and write-ahead ledger.
    let members: Vec<_> =
        (0..2).map(|i| tokio::spawn(run_member(member_config(&site, "member-kill", i, port), gates.clone()))).collect();
    let cfg = member_config(&site, "member-kill", 2, port);
    let member_toml = site.path().join("member-kill/hospital-c.toml");
    let ledger_path = site.path().join("member-kill/hospital-c-privacy.jsonl");
    let mut text = std::fs::read_to_string(&member_toml).unwrap();
    text.push_str(&format!("[privacy]\nepsilon = 1000.0\ndelta = 1e-5\nledger = \"{}\"\n", ledger_path.display()));
    std::fs::write(&member_toml, text).unwrap();
    let mut child = spawn_client(&client_bin, &member_toml, "hospital-c-1.log");

    // Kill it the moment its second charge is durable: it is then about to
    // train (or training) on that round, and has released nothing of it.
    let t0 = Instant::now();
    let at_kill = loop {
        let entries = ledger(&ledger_path);
        if reserved_rounds(&entries).len() >= 2 {
            child.kill().unwrap();
            child.wait().unwrap();
            break ledger(&ledger_path);
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "hospital-c never charged two rounds");
        assert!(child.try_wait().unwrap().is_none(), "hospital-c exited early");
        std::thread::sleep(Duration::from_millis(2));
    };
    let killed_round = *reserved_rounds(&at_kill).iter().next_back().unwrap();

    let mut child = spawn_client(&client_bin, &member_toml, "hospital-c-2.log");
    assert!(wait_exit(&mut agg, Duration::from_secs(120)), "the run failed: see {}", config.display());
    for m in members {
        tokio::time::timeout(Duration::from_secs(30), m).await.expect("member exits").unwrap().unwrap();
    }
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "hospital-c did not stop after the run");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Every charge made before the kill survived it, in order.
    let after = ledger(&ledger_path);
    assert!(after.len() > at_kill.len() && after[..at_kill.len()] == at_kill[..], "charges lost across the kill");
    // Everything that left the site was charged first; the killed round was
    // charged although nothing of it left.
    let egress = tessera_client::EgressLedger::read(&cfg.state.egress_ledger).unwrap();
    let released: BTreeSet<u64> = egress.iter().filter(|e| e.kind == "masked_end").filter_map(|e| e.round).collect();
    let charged = reserved_rounds(&after);
    assert!(released.is_subset(&charged), "released {released:?}, charged {charged:?}");
    assert!(!released.contains(&killed_round), "round {killed_round} was killed before its release");
    assert!(charged.contains(&killed_round));
    assert!(charged.len() > released.len());

    // The run itself completed every round, hospital-c in the later ones.
    let store = StateStore::open_existing(&state_db(&config)).unwrap();
    let done: Vec<u64> = store.rounds().unwrap().iter().filter(|r| r.status == "completed").map(|r| r.round).collect();
    assert_eq!(done.len() as u64, ROUNDS);
    assert!(released.iter().any(|r| *r > killed_round), "the restarted member took part again");
    assert!(done.iter().all(|r| released.contains(r)), "min_clients = 3: every completed round has hospital-c");
}
