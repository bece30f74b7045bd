//! A member on burn's GPU backend through the real daemon (issue #19):
//! hospital-c runs the real `tessera-client` binary with `backend = "wgpu"`
//! in its `client.toml`, the two other members run in this process on the
//! CPU default, and the real `tessera-aggregator` binary completes every
//! round with all three. On a CI machine without a GPU the device is
//! lavapipe (Debian's `mesa-vulkan-drivers`, a software Vulkan device), as
//! for tests/tests/wgpu_backend.rs.
//!
//! The test skips, saying why, only where this process cannot create a
//! wgpu device at all. A client binary built without the `wgpu` feature
//! does not skip: it refuses the configuration (naming the missing
//! feature) and the test fails, since test builds must carry the backend
//! (tests/Cargo.toml turns `tessera-learn/wgpu` on for the whole build,
//! daemons included).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tessera_learn::{BackendUnavailable, ComputeBackend};

const ROUNDS: u64 = 2;

/// Whether a wgpu device can be created here; says why not when it cannot.
fn vulkan_device() -> bool {
    match ComputeBackend::wgpu().and_then(ComputeBackend::check) {
        Ok(_) => true,
        Err(e @ BackendUnavailable::NoDevice { .. }) => {
            eprintln!("SKIPPED: {e}; install a Vulkan driver (Debian: apt-get install mesa-vulkan-drivers)");
            false
        }
        Err(e) => panic!("{e}: the workspace's tests build the wgpu backend (tests/Cargo.toml)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_on_wgpu_trains_through_the_client_binary_and_every_round_completes() {
    if !vulkan_device() {
        return;
    }
    let client_bin = client_binary();
    let site = Site::new();
    let gates = Arc::new(Gates::default());
    let port = free_udp_port();
    let opts = RunOptions { rounds: ROUNDS, quic_port: port, http_port: None, dp: false };
    let config = aggregator_toml(&site, "wgpu", &opts);
    // A software device compiles its kernels on first use: room for that
    // (a liveness bound, not a speed test).
    let toml = std::fs::read_to_string(&config).unwrap();
    assert!(toml.contains("round_deadline_secs = 60\n") && toml.contains("phase_timeout_secs = 20\n"), "{toml}");
    let toml = toml.replace("round_deadline_secs = 60\n", "round_deadline_secs = 300\n");
    std::fs::write(&config, toml.replace("phase_timeout_secs = 20\n", "phase_timeout_secs = 120\n")).unwrap();
    let db = state_db(&config);
    let mut agg = spawn_aggregator(&config, None);
    let members: Vec<_> =
        (0..2).map(|i| tokio::spawn(run_member(member_config(&site, "wgpu", i, port), gates.clone()))).collect();

    // hospital-c's own client.toml, with the GPU backend chosen.
    let cfg = member_config(&site, "wgpu", 2, port);
    let toml = site.path().join("wgpu/hospital-c.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    assert!(text.starts_with("member = \"hospital-c\"\n"), "{text}");
    std::fs::write(&toml, text.replacen('\n', "\nbackend = \"wgpu\"\n", 1)).unwrap();
    let mut client = spawn_client(&client_bin, &toml, "hospital-c.log");
    let log = || std::fs::read_to_string(toml.with_file_name("hospital-c.log")).unwrap_or_default();

    // min_clients = 3: no round completes without hospital-c's update.
    let ok = wait_child(&mut agg, Duration::from_secs(300), "the aggregator");
    assert!(ok, "run failed: see {}\nhospital-c:\n{}", config.parent().unwrap().display(), log());
    join_members(members).await;
    assert!(wait_child(&mut client, Duration::from_secs(60), "hospital-c's tessera-client"), "{}", log());

    // The binary trained on wgpu, not on a CPU fallback.
    let text = log();
    let line = text.lines().find(|l| l.contains("local training backend")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("wgpu"), "hospital-c trained on another backend: {line}");

    // Every round completed, and hospital-c released its masked update in each.
    let c = rusqlite::Connection::open(&db).unwrap();
    let mut q = c.prepare("SELECT round FROM rounds WHERE status = 'completed'").unwrap();
    let done: BTreeSet<u64> = q.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(|r| r.unwrap() as u64).collect();
    assert_eq!(done.len() as u64, ROUNDS, "completed rounds: {done:?}");
    let egress = tessera_client::EgressLedger::read(&cfg.state.egress_ledger).unwrap();
    let released: BTreeSet<u64> = egress.iter().filter(|e| e.kind == "masked_end").filter_map(|e| e.round).collect();
    assert!(done.is_subset(&released), "completed rounds {done:?}, hospital-c released in {released:?}");
}
