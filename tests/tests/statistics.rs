//! DP statistics (issue #18) through the real daemon binaries:
//! `tessera-aggregator statistics` runs only the `[statistics]` release with
//! three `tessera-client` members, over QUIC on loopback. The release lands
//! in the run directory and the audit log, both sides' ledgers are charged,
//! each member's exact report stays beside its data, and what left a member
//! was only the masked secure-aggregation traffic. An aggregator SIGKILLed
//! after the release and before its file is written releases nothing twice.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tessera_aggregator::StateStore;

fn json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `<site>/<name>/aggregator.toml` with the WDBC schema and a `[statistics]` section.
fn statistics_config(site: &Site, name: &str, rounds: u64, port: u16) -> std::path::PathBuf {
    let config = aggregator_toml(site, name, &RunOptions { rounds, quic_port: port, http_port: None, dp: true });
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[data]\nschema = \"{}\"\n\n[statistics]\nepsilon = 2.0\nbins = 5\nmax_records = 400\n",
        tessera_e2e::wdbc_schema().display()
    ));
    std::fs::write(&config, text).unwrap();
    config
}

/// The three `tessera-client` members of run `name`, as shipped (OS
/// randomness), each with its own privacy ledger.
fn spawn_members(site: &Site, name: &str, port: u16) -> Vec<std::process::Child> {
    let client = client_binary();
    let mut members = Vec::new();
    for (i, member) in NAMES.iter().enumerate() {
        member_config(site, name, i, port);
        let path = site.path().join(name).join(format!("{member}.toml"));
        let mut t = std::fs::read_to_string(&path).unwrap().replace("[testing]\nseeded_randomness = true\n", "");
        t.push_str(&format!("[privacy]\nepsilon = 100.0\ndelta = 1e-5\nledger = \"{member}-privacy.jsonl\"\n"));
        std::fs::write(&path, t).unwrap();
        members.push(spawn_client(&client, &path, &format!("{member}.log")));
    }
    members
}

#[test]
fn the_statistics_command_releases_noised_counts_and_charges_every_ledger() {
    let site = Site::new();
    let port = free_udp_port();
    let config = statistics_config(&site, "stats", 2, port);

    let mut aggregator = {
        let dir = config.parent().unwrap();
        let log = std::fs::File::create(dir.join("statistics.log")).unwrap();
        std::process::Command::new(&*BIN)
            .args(["statistics", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,quinn=warn,rustls=warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let members = spawn_members(&site, "stats", port);
    assert!(wait_exit(&mut aggregator, Duration::from_secs(120)), "the statistics command failed");
    for mut m in members {
        assert!(wait_child(&mut m, Duration::from_secs(30), "a member"), "a member failed");
    }

    // The release: noised counts named by the schema, its cost by OpenDP and RDP.
    let run_dir = config.parent().unwrap().join("out");
    let released = json(&run_dir.join(tessera_aggregator::STATISTICS_FILE));
    assert_eq!(released["contributors"].as_array().unwrap().len(), 3);
    let sigma = released["noise_std"].as_f64().unwrap();
    assert!(sigma > 1.0, "noise of the stated size: {sigma}");
    assert!(released["privacy"]["opendp"]["epsilon"].as_f64().unwrap() > 0.0);
    let features = released["released"]["features"].as_array().unwrap();
    assert_eq!(features.len(), 30);
    assert_eq!(features[0]["counts"].as_array().unwrap().len(), 5);

    // Each member's exact report stays beside its data; the release is
    // their sum plus noise of std sigma (7 sigma bound).
    let mut exact = [0.0f64; 2];
    for (i, name) in NAMES.iter().enumerate() {
        let dir = site.csvs[i].parent().unwrap().join("statistics");
        let report = json(&dir.join(format!("{name}.json")));
        let rows = std::fs::read_to_string(&site.csvs[i]).unwrap().lines().skip(1).filter(|l| !l.is_empty()).count();
        assert_eq!(report["exact"]["records"].as_f64().unwrap(), rows as f64, "{name}: every record counted once");
        for (k, e) in exact.iter_mut().enumerate() {
            *e += report["exact"]["labels"][k].as_f64().unwrap();
        }
    }
    for (k, e) in exact.iter().enumerate() {
        let noisy = released["released"]["labels"][k].as_f64().unwrap();
        assert!((noisy - e).abs() < 7.0 * sigma, "label {k}: {noisy} vs exact {e} (sigma {sigma})");
    }

    // The aggregator's ledger and audit log.
    let store = StateStore::open_existing(&state_db(&config)).unwrap();
    let ledger = store.ledger().unwrap();
    assert_eq!(ledger.len(), 2, "one reservation and its commit: {ledger:?}");
    assert!(store.audit_entries().unwrap().iter().any(|e| e.kind == "statistics_released"));
    // The run is not finished: `serve` trains next, and a second release is refused.
    let db = rusqlite::Connection::open(state_db(&config)).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM run WHERE stop_reason IS NULL"), Some(1));
    let (ok, out) = cli(&["statistics", "--config", config.to_str().unwrap()]);
    assert!(!ok && out.contains("already"), "{out}");

    // Every member charged its own ledger and committed before its counts left;
    // what left was only secure-aggregation traffic (no plaintext, no report).
    for name in NAMES {
        let dir = site.path().join("stats");
        let lines = std::fs::read_to_string(dir.join(format!("{name}-privacy.jsonl"))).unwrap();
        let kinds: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(kinds.len(), 2, "{name}: {lines}");
        assert_eq!(kinds[0]["kind"], "reserved");
        assert_eq!(kinds[1]["kind"], "committed");
        let egress = tessera_client::EgressLedger::read(&dir.join(format!("{name}-egress.jsonl"))).unwrap();
        let allowed = [
            "hello",
            "advertise_keys",
            "reveal_graph_seed",
            "share_keys",
            "masked_start",
            "masked_chunk",
            "masked_end",
            "sign_survivors",
            "unmask_shares",
        ];
        assert!(egress.iter().any(|e| e.kind == "masked_chunk"), "{name} sent its counts masked");
        for e in &egress {
            assert!(allowed.contains(&e.kind.as_str()), "{name} sent a {}", e.kind);
        }
    }
}

/// The release is recorded in the state database before `statistics.json`
/// is written. An aggregator SIGKILLed in between (held there by the
/// test-only `TESSERA_TEST_STALL_AFTER_RELEASE`) restarts, rewrites the file
/// from the database and trains: one release, one charge for it, its row
/// `statistics` (not an aborted round), and the file equal to the record.
#[test]
fn a_crash_between_the_release_and_its_file_releases_nothing_twice() {
    let site = Site::new();
    let port = free_udp_port();
    let config = statistics_config(&site, "crash", 1, port);
    let db = state_db(&config);
    let file = config.parent().unwrap().join("out").join(tessera_aggregator::STATISTICS_FILE);
    let stalled = spawn_aggregator_stalled(&config, Some((tessera_aggregator::STALL_AFTER_RELEASE_ENV, 1)));
    let members = spawn_members(&site, "crash", port);
    let t0 = std::time::Instant::now();
    while !db.exists() || count(&rusqlite::Connection::open(&db).unwrap(), RELEASES) != Some(1) {
        assert!(t0.elapsed() < Duration::from_secs(120), "no release recorded: see {}", db.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(stalled);
    assert!(!file.exists(), "the knob stalls before the file is written");

    let mut aggregator = spawn_aggregator(&config, None);
    assert!(wait_exit(&mut aggregator, Duration::from_secs(180)), "the resumed run failed: see {}", db.display());
    for mut m in members {
        assert!(wait_child(&mut m, Duration::from_secs(30), "a member"), "a member failed");
    }
    let store = StateStore::open_existing(&db).unwrap();
    let (round, released) = store.statistics_release().unwrap().expect("the release is recorded");
    assert_eq!(json(&file), released, "statistics.json is rewritten from the database");
    let rows = store.rounds().unwrap();
    let status = |s: &str| rows.iter().filter(|r| r.status == s).map(|r| r.round).collect::<Vec<_>>();
    assert_eq!(status("statistics"), vec![round], "one release, under its own status: {rows:?}");
    assert!(status("interrupted").is_empty(), "the release was not left open: {rows:?}");
    assert_eq!(status("completed").len(), 1, "then the training round: {rows:?}");
    let audit = store.audit_entries().unwrap();
    assert_eq!(audit.iter().filter(|e| e.kind == "statistics_released").count(), 1);
    // One reservation per round attempt: the release was charged once.
    let reserved: Vec<u64> = store
        .ledger()
        .unwrap()
        .iter()
        .filter_map(|r| match r.entry {
            tessera_privacy::LedgerEntry::Reserved { round, .. } => Some(round),
            _ => None,
        })
        .collect();
    assert_eq!(reserved, rows.iter().map(|r| r.round).collect::<Vec<_>>(), "{rows:?}");
}

const RELEASES: &str = "SELECT count(*) FROM statistics_releases";
