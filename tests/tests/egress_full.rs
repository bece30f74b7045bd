//! A member whose egress ledger cannot be written stops with a clear error:
//! nothing may leave unrecorded, and reconnecting would not make the disk
//! any less full. Before the driver's errors were typed, this failure was
//! taken for a lost connection and the member reconnected forever.

use std::path::Path;
use std::time::Duration;

use tessera_aggregator::daemon;
use tessera_client::ClientError;
use tessera_e2e::*;
use tessera_transport::pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_egress_disk_stops_the_member_with_a_clear_error() {
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("SKIPPED: no /dev/full on this system");
        return;
    }
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    let names = ["hospital-a", "hospital-b"];
    for n in names {
        pki::issue(&pki_dir, n).unwrap();
    }
    let csvs = write_member_csvs(dir.path(), &names);
    let cfg = aggregator_config(&pki_dir, &dir.path().join("run"), &names, 1, 2);
    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));

    let mut member = client_config(dir.path(), &pki_dir, names[0], &csvs[0], &addr);
    member.state.egress_ledger = full.to_path_buf();
    let exit = tokio::time::timeout(Duration::from_secs(20), run_member(member))
        .await
        .expect("the member stops instead of reconnecting forever");
    let err = exit.expect_err("an unwritable egress ledger is an error, not a clean exit");
    let typed = err.downcast_ref::<ClientError>().expect("the driver's typed error");
    assert!(matches!(typed, ClientError::Egress(_)), "{typed:?}");
    assert!(err.to_string().contains("egress ledger"), "the message says what failed: {err}");
    aggregator.abort();
}
