//! Revocation by certificate, through the real daemon binaries: the
//! `tessera-aggregator` binary serves the run and runs the `pki` commands,
//! hospital-c is the real `tessera-client` binary, and hospital-a and
//! hospital-b run in this process through the client library.
//!
//! - A certificate revoked by fingerprint while its member is connected in
//!   the middle of a run: the aggregator closes that connection within a
//!   second (measured here against a generous bound), the member stops
//!   with a clear error instead of reconnecting, and the run goes on with
//!   the others.
//! - A member whose key was stolen: revoked by name, re-keyed, reinstated
//!   by name. The stolen certificate is still refused; the new one is
//!   admitted and the run completes with it.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tessera_aggregator::StateStore;
use tessera_client::{ClientConfig, ClientExit, LocalModel};
use tessera_core::{DpSettings, EvalMetrics, ModelParams, TrainSettings};
use tessera_protocol::TrainedUpdate;

const MINUTE: Duration = Duration::from_secs(60);

/// The fingerprint `pki fingerprint` prints for a certificate file.
fn fingerprint(cert: &Path) -> String {
    let (ok, text) = cli(&["pki", "fingerprint", cert.to_str().unwrap()]);
    assert!(ok, "{text}");
    let fp = text.split_whitespace().next().unwrap().to_owned();
    assert_eq!(fp.len(), 64, "{text}");
    fp
}

/// A child process killed (and reaped) when the test ends, passing or not.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds members at their second training (whatever the timing: the first
/// round completes with everyone, the second stays open) until opened.
/// Opens on drop, so a failing test never leaves members stuck in a
/// blocking thread (which would hang the runtime's shutdown).
#[derive(Default)]
struct SecondTraining {
    open: AtomicBool,
    held: AtomicUsize,
}

impl SecondTraining {
    async fn wait_held(&self, n: usize) {
        let t0 = Instant::now();
        while self.held.load(Ordering::SeqCst) < n {
            assert!(t0.elapsed() < MINUTE, "members never reached their second training");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct OpenOnDrop(Arc<SecondTraining>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open.store(true, Ordering::SeqCst);
    }
}

struct HeldAtSecond<M> {
    inner: M,
    trained: usize,
    gate: Arc<SecondTraining>,
}

impl<M: LocalModel> LocalModel for HeldAtSecond<M> {
    fn train(
        &mut self,
        model: &ModelParams,
        settings: &TrainSettings,
        dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, tessera_learn::LocalError> {
        self.trained += 1;
        if self.trained == 2 {
            self.gate.held.fetch_add(1, Ordering::SeqCst);
            while !self.gate.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.gate.held.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.train(model, settings, dp)
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, tessera_learn::LocalError> {
        self.inner.evaluate(model)
    }
}

/// `common::run_member`, with the member held at its second training.
async fn run_held_member(cfg: ClientConfig, gate: Arc<SecondTraining>) -> anyhow::Result<ClientExit> {
    let model = HeldAtSecond { inner: tessera_client::tabular_model(&cfg)?, trained: 0, gate };
    run_member_with(&cfg, model).await
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_certificate_closes_the_live_connection_within_a_second() {
    const ROUNDS: u64 = 5;
    let client_bin = client_binary();
    let site = Site::new();
    let gate = Arc::new(SecondTraining::default());
    let _open = OpenOnDrop(gate.clone());
    let port = free_udp_port();
    let config = aggregator_toml(
        &site,
        "revoke-live",
        &RunOptions { rounds: ROUNDS, quic_port: port, http_port: None, dp: false },
    );
    // All three start the run; two are enough to carry it on.
    let toml = read(&config).replace("min_clients = 3\n", "min_clients = 2\nstart_quorum = 3\n");
    std::fs::write(&config, toml).unwrap();
    let db = state_db(&config);
    let mut agg = Proc(spawn_aggregator(&config, None));

    let members: Vec<_> = (0..2)
        .map(|i| tokio::spawn(run_held_member(member_config(&site, "revoke-live", i, port), gate.clone())))
        .collect();
    member_config(&site, "revoke-live", 2, port);
    let member_toml = site.path().join("revoke-live/hospital-c.toml");
    let mut child = Proc(spawn_client(&client_bin, &member_toml, "hospital-c.log"));

    // Mid-run: the first round completed with all three, the second is
    // open with hospital-a and hospital-b held in training, hospital-c
    // connected (it trains and waits for the others).
    gate.wait_held(2).await;
    wait_db(&db, MINUTE, "a completed round", |c| {
        (count(c, "SELECT COUNT(*) FROM rounds WHERE status = 'completed'")? == 1).then_some(())
    })
    .await;
    assert!(child.0.try_wait().unwrap().is_none(), "hospital-c exited before its revocation");

    let fp = fingerprint(&site.pki.join("hospital-c.pem"));
    let (ok, text) = cli(&["pki", "revoke", "--dir", site.pki.to_str().unwrap(), "--fingerprint", &fp]);
    assert!(ok, "{text}");
    assert!(text.contains("issued to hospital-c"), "{text}");
    let t0 = Instant::now();
    // The member's daemon stops for good, with an error, instead of retrying.
    let exit = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(3) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let closed_after = t0.elapsed();
    // (On failure the guards kill the daemons and open the gate.)
    assert!(exit.is_some(), "hospital-c was still connected {closed_after:?} after its certificate was revoked");
    eprintln!("hospital-c's connection closed and its daemon exited {closed_after:?} after the revocation");
    assert!(!exit.unwrap().success(), "a revoked member must exit with an error");
    let member_log = read(&site.path().join("revoke-live/hospital-c.log"));
    assert!(
        member_log.contains("refused by the aggregator")
            && member_log.contains(&format!("certificate sha256:{}", &fp[..16])),
        "hospital-c's log does not say it was revoked:\n{member_log}"
    );
    assert!(member_log.contains("not reconnecting"), "{member_log}");
    assert_eq!(member_log.matches("connected to the aggregator").count(), 1, "it must not reconnect:\n{member_log}");

    // The run goes on with the other two.
    gate.open.store(true, Ordering::SeqCst);
    assert!(wait_exit(&mut agg.0, 2 * MINUTE), "the run failed: see {}", config.display());
    join_members(members).await;
    let serve_log = read(&config.with_file_name("serve-0.log"));
    assert!(serve_log.contains("revoked: closing the member's live connection"), "{serve_log}");

    let store = StateStore::open_existing(&db).unwrap();
    let rounds = store.rounds().unwrap();
    let done: Vec<_> = rounds.iter().filter(|r| r.status == "completed").collect();
    assert_eq!(done.len() as u64, ROUNDS);
    assert!(done[0].cohort.iter().any(|m| m == "hospital-c"), "hospital-c took part before its revocation");
    assert!(!done.last().unwrap().cohort.iter().any(|m| m == "hospital-c"), "a revoked member was drawn again");
    let audited = store.audit_entries().unwrap();
    assert!(audited.iter().any(|e| e.kind == "certificate_revoked" && e.body.contains(&fp)), "revocation not audited");

    // The status counts the revocation.
    let (ok, text) = cli(&["status", "--state", db.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains(" of 2 "), "the revoked member is not counted: {text}");
    assert!(text.contains("revoked: hospital-c"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekeyed_member_is_admitted_while_its_stolen_certificate_stays_revoked() {
    let client_bin = client_binary();
    let site = Site::new();
    let gates = Arc::new(Gates::default());
    let port = free_udp_port();
    let config =
        aggregator_toml(&site, "rekey", &RunOptions { rounds: 2, quic_port: port, http_port: None, dp: false });
    let pki_dir = site.pki.to_str().unwrap();

    // hospital-c's key is stolen: the operator revokes the member by name,
    // which also revokes the certificate the PKI directory holds for it.
    let stolen = site.path().join("stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    let old_fp = fingerprint(&site.pki.join("hospital-c.pem"));
    let (ok, text) = cli(&["pki", "revoke", "--dir", pki_dir, "--name", "hospital-c"]);
    assert!(ok, "{text}");
    assert!(text.contains(&old_fp), "{text}");
    // Revoking a name nobody was issued is an error.
    let (ok, text) = cli(&["pki", "revoke", "--dir", pki_dir, "--name", "hospital-z"]);
    assert!(!ok && text.contains("no certificate was issued to hospital-z"), "{text}");

    // Re-key: the old files go (the thief keeps a copy), a new certificate
    // is issued for the same name, and the name is reinstated.
    for f in ["hospital-c.pem", "hospital-c.key"] {
        std::fs::rename(site.pki.join(f), stolen.join(f)).unwrap();
    }
    let (ok, text) = cli(&["pki", "issue", "--dir", pki_dir, "--name", "hospital-c"]);
    assert!(ok, "{text}");
    let new_fp = fingerprint(&site.pki.join("hospital-c.pem"));
    assert_ne!(new_fp, old_fp);
    assert!(text.contains(&new_fp), "`pki issue` shows the fingerprint: {text}");
    let (ok, text) = cli(&["pki", "reinstate", "--dir", pki_dir, "--name", "hospital-c"]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("still revoked, issued to hospital-c: {old_fp}")), "{text}");
    let (ok, text) = cli(&["pki", "list", "--dir", pki_dir]);
    assert!(ok && text.contains(&format!("{new_fp}  admitted")) && text.contains(&old_fp), "{text}");
    // Each certificate's expiry, in RFC 3339, in the future.
    let line = text.lines().find(|l| l.contains(&new_fp)).unwrap();
    let expires = line.split("expires ").nth(1).expect("an expiry column").trim();
    let year: i32 = expires[..4].parse().unwrap_or_else(|_| panic!("{line}"));
    assert!(expires.ends_with('Z') && expires.contains('T') && year >= 2026, "{line}");
    let (ok, json) = cli(&["pki", "list", "--dir", pki_dir, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|_| panic!("{ok} {json}"));
    assert!(v["members"].as_array().unwrap().iter().all(|m| m["expires"].as_str().is_some_and(|e| e.ends_with('Z'))));

    let mut agg = Proc(spawn_aggregator(&config, None));

    // The thief, with the stolen certificate and key, is refused and stops.
    member_config(&site, "rekey", 2, port);
    let own = site.path().join("rekey/hospital-c.toml");
    let thief_toml = site.path().join("rekey/thief.toml");
    let text = read(&own)
        .replace("../pki/hospital-c.", "../stolen/hospital-c.")
        .replace("hospital-c-egress.jsonl", "thief-egress.jsonl");
    std::fs::write(&thief_toml, text).unwrap();
    let mut thief = Proc(spawn_client(&client_bin, &thief_toml, "thief.log"));
    assert!(!wait_child(&mut thief.0, MINUTE, "the thief's client"), "the stolen certificate was admitted");
    let thief_log = read(&site.path().join("rekey/thief.log"));
    assert!(thief_log.contains("refused by the aggregator: revoked"), "{thief_log}");

    // The re-keyed member, with its new certificate, is admitted and the
    // run completes with all three.
    let members: Vec<_> =
        (0..2).map(|i| tokio::spawn(run_member(member_config(&site, "rekey", i, port), gates.clone()))).collect();
    let mut member = Proc(spawn_client(&client_bin, &own, "hospital-c.log"));
    assert!(wait_exit(&mut agg.0, 2 * MINUTE), "the run failed: see {}", config.display());
    join_members(members).await;
    assert!(
        wait_child(&mut member.0, MINUTE, "the re-keyed hospital-c"),
        "see {}",
        own.with_file_name("hospital-c.log").display()
    );

    let store = StateStore::open_existing(&state_db(&config)).unwrap();
    let done: Vec<_> = store.rounds().unwrap().into_iter().filter(|r| r.status == "completed").collect();
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|r| r.cohort.iter().any(|m| m == "hospital-c")), "the re-keyed member took part");
    let serve_log = read(&config.with_file_name("serve-0.log"));
    assert!(serve_log.contains(&format!("certificate sha256:{} withdrawn", &old_fp[..16])), "{serve_log}");
}
