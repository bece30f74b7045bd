//! The aggregator daemon's code under load: hundreds of members, each on
//! its own QUIC connection over loopback (its own UDP socket and TLS
//! handshake) in this one process, run one securely aggregated round
//! (SecAgg+ above 64 members) with a tiny model, through the real member
//! driver. Nothing may crash, the round must include everyone, and the
//! process's memory and file descriptors must stay bounded and return to
//! their baseline afterwards.
//!
//! The default test runs 100 members; 500 is ignored by default (it takes
//! longer than the rest of the suite on two cores):
//!
//! ```sh
//! cargo test -p tessera-e2e --test load -- --ignored --nocapture
//! ```
//!
//! Times are recorded in docs/benchmarks.md ("Load: 500 connections").

use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_aggregator::daemon;
use tessera_client::{ClientExit, ClientOptions, EgressLedger};
use tessera_core::{ModelConfig, TrainableConfig};
use tessera_e2e::proc_stats::{MIB, open_fds, peak_rss_bytes, rss_bytes};
use tessera_e2e::tiny_model::TinyModel;
use tessera_e2e::*;
use tessera_protocol::{Participant, Policy};
use tessera_transport::{BackoffPolicy, Dialer, QuicDialConfig, pki};

fn tiny_model_config() -> ModelConfig {
    ModelConfig {
        hidden: vec![],
        num_features: 2,
        num_classes: 2,
        trainable: TrainableConfig::All,
        init_seed: 1,
        pretrained: None,
    }
}

/// Run one round with `n` members; returns the seconds from the first dial
/// to the end of the run.
async fn one_round(n: usize) -> f64 {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("member-{i:03}")).collect();
    for m in &names {
        pki::issue(&pki_dir, m).unwrap();
    }
    let run_dir = dir.path().join("run");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut cfg = aggregator_config(&pki_dir, &run_dir, &refs, 1, (n * 2 / 3) as u32);
    cfg.model = tessera_client::ModelSection::Tabular(tiny_model_config());
    cfg.run.start_quorum = Some(n as u32);
    cfg.run.phase_timeout_secs = 120.0;
    cfg.run.round_deadline_secs = 120.0;
    let settings = cfg.admission_policy().unwrap().expected;
    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Dial configurations (certificate files parsed) before the baseline.
    let dials: Vec<QuicDialConfig> = names
        .iter()
        .map(|m| {
            let mut d = QuicDialConfig::from_pki_dir(&pki_dir, m, addr.clone()).unwrap();
            d.server_name = Some("localhost".into());
            d.connect_timeout = Duration::from_secs(60);
            d
        })
        .collect();
    let (rss0, fds0) = (rss_bytes(), open_fds());
    let started = Instant::now();
    let max_fds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let max_fds = max_fds.clone();
        tokio::spawn(async move {
            loop {
                if let Some(f) = open_fds() {
                    max_fds.fetch_max(f, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let aggregator = tokio::spawn(daemon::run(cfg, listener));
    let mut members = Vec::with_capacity(n);
    for (i, (name, dial)) in names.iter().zip(dials).enumerate() {
        let name = name.clone();
        let files = pki::member_files(&pki_dir, &name);
        let identity =
            tessera_client::load_member_identity(&files.cert, &files.key, &pki_dir.join(pki::CA_CERT)).unwrap();
        members.push(tokio::spawn(async move {
            let mut p = Participant::new(name, Policy::default(), rand_chacha::ChaCha20Rng::seed_from_u64(i as u64))
                .with_identity(identity)
                .with_settings(settings);
            let mut egress = EgressLedger::in_memory();
            let model = Arc::new(Mutex::new(TinyModel { step: 0.001 * (i % 7) as f32 }));
            let opts = ClientOptions {
                backoff: BackoffPolicy {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(2),
                    multiplier: 2.0,
                    max_attempts: Some(30),
                },
                ..ClientOptions::default()
            };
            let exit = tessera_client::run(Dialer::Quic(Arc::new(dial)), &mut p, model, &mut egress, opts).await;
            (exit, egress.entries().map(|e| e.iter().filter(|e| e.kind == "masked_end").count()).unwrap_or(0))
        }));
    }
    let end = tokio::time::timeout(Duration::from_secs(600), aggregator).await.expect("run finishes").unwrap().unwrap();
    let mut masked = 0;
    for m in members {
        let (exit, sent) = m.await.expect("no member task panicked");
        assert!(matches!(exit, Ok(ClientExit::Shutdown { .. })), "{exit:?}");
        masked += sent;
    }
    let seconds = started.elapsed().as_secs_f64();
    sampler.abort();
    let max_fds = max_fds.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(end.completed_rounds, 1, "{}", end.reason);
    let records = read_metrics(&run_dir);
    assert_eq!(records[0].participants as usize, n, "{records:?}");
    assert_eq!(masked, n, "every member sent one masked update");

    for _ in 0..100 {
        if open_fds().zip(fds0).is_none_or(|(now, before)| now <= before + 16) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match (rss0, fds0, peak_rss_bytes(), rss_bytes(), open_fds()) {
        (Some(rss0), Some(fds0), Some(peak), Some(rss1), Some(fds1)) => {
            eprintln!(
                "{n} members: {seconds:.1} s; rss {} MiB before, peak {} MiB, {} MiB after; fds {fds0}, at most {max_fds}, then {fds1}",
                rss0 / MIB,
                peak / MIB,
                rss1 / MIB
            );
            // Each member holds a socket, TLS state and a tiny model: well
            // under 2 MiB apiece in this process, aggregator included.
            assert!(peak.saturating_sub(rss0) < 64 * MIB + 2 * MIB * n as u64, "peak memory grew too much");
            // One UDP socket per member (they are all in this process) and
            // the aggregator's one, plus a few for files.
            assert!(max_fds <= fds0 + n + 32, "{max_fds} descriptors open at once for {n} members");
            assert!(fds1 <= fds0 + 16, "descriptors leaked: {fds0} -> {fds1}");
        }
        _ => eprintln!("note: /proc/self is unavailable; memory and descriptor bounds not checked"),
    }
    seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_members_one_round_over_quic() {
    one_round(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "500 connections take long on two cores; see the module docs"]
async fn five_hundred_members_one_round_over_quic() {
    one_round(500).await;
}
