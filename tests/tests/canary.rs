//! Canary: unique marker values planted in one member's private CSV never
//! appear in any byte that member sends. Three members run two secure rounds
//! through the real daemon code over real QUIC; a frame tap between them and
//! the aggregator keeps every frame exactly as the member's codec produced it
//! (before TLS). The test first proves the tap saw exactly what the member's
//! egress ledger recorded (same count, same SHA-256, same kinds), then
//! searches every byte for the markers as f32 and f64 (little- and
//! big-endian) and as decimal text; the logs are searched for the text too.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tessera_aggregator::daemon;
use tessera_client::PrivacySection;
use tessera_core::{ClientMsg, HEADER_LEN, Limits, PrivacyUnit, RoundRecord, decode_payload, encode_frame};
use tessera_e2e::log_capture::{capture_logs, captured_logs};
use tessera_e2e::tap::start_tap;
use tessera_e2e::*;
use tessera_protocol::coordinator::{PrivacyConfig, PrivateEvaluationConfig};
use tessera_transport::pki;

const NAMES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// Marker values as written into the CSV, and the column they replace.
/// Exactly representable and not, small and large, so no encoding hides them.
const MARKERS: [(&str, usize); 3] = [("73519.8125", 0), ("0.000918273645", 9), ("4242.4242", 23)];

/// Every byte pattern a marker could take in a message.
fn patterns(text: &str) -> Vec<(String, Vec<u8>)> {
    let v: f64 = text.parse().unwrap();
    vec![
        (format!("{text} as text"), text.as_bytes().to_vec()),
        (format!("{text} as f32 LE"), (v as f32).to_le_bytes().to_vec()),
        (format!("{text} as f32 BE"), (v as f32).to_be_bytes().to_vec()),
        (format!("{text} as f64 LE"), v.to_le_bytes().to_vec()),
        (format!("{text} as f64 BE"), v.to_be_bytes().to_vec()),
    ]
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Plant the markers in every 7th row of hospital-a's file.
fn plant(csv: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut out = String::new();
    let mut planted = 0;
    for (i, line) in text.lines().enumerate() {
        if i > 0 && i % 7 == 0 {
            let mut cells: Vec<String> = line.split(',').map(String::from).collect();
            for (marker, col) in MARKERS {
                cells[col] = marker.to_string();
            }
            out.push_str(&cells.join(","));
            planted += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    std::fs::write(csv, out).unwrap();
    planted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_markers_never_leave_the_member() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    for n in NAMES {
        pki::issue(&pki_dir, n).unwrap();
    }
    let csvs = write_member_csvs(dir.path(), &NAMES);
    let planted = plant(&csvs[0]);
    assert!(planted >= 10);
    let all_patterns: Vec<_> = MARKERS.iter().flat_map(|(m, _)| patterns(m)).collect();

    // The detector works: it finds the markers in the private file itself
    // and in a message that would carry a raw value.
    let private = std::fs::read(&csvs[0]).unwrap();
    for (marker, _) in MARKERS {
        assert!(find(&private, marker.as_bytes()));
        let leak = ClientMsg::PlainChunk { round: 1, offset: 0, values: vec![0.5, marker.parse::<f32>().unwrap()] };
        let frame = encode_frame(&leak, &Limits::default()).unwrap();
        assert!(patterns(marker).iter().any(|(_, p)| find(&frame, p)), "the detector misses {marker}");
    }

    let run_dir = dir.path().join("run");
    let cfg = aggregator_config(&pki_dir, &run_dir, &NAMES, 2, 3);
    let listener = daemon::listen(&cfg).unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));
    let tap = start_tap(&pki_dir, upstream);
    let mut members = Vec::new();
    for (n, csv) in NAMES.iter().zip(&csvs) {
        members.push(tokio::spawn(run_member(client_config(dir.path(), &pki_dir, n, csv, &tap.addr))));
    }
    let end = tokio::time::timeout(Duration::from_secs(240), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert_eq!(end.completed_rounds, 2, "{}", end.reason);
    for m in members {
        m.await.unwrap().unwrap();
    }

    // The tap saw exactly what hospital-a's ledger says left the site.
    let frames = tap.tapped.frames_of(NAMES[0]);
    let ledger = tessera_client::EgressLedger::read(&dir.path().join("hospital-a-egress.jsonl")).unwrap();
    let sent: Vec<_> = ledger.iter().filter(|e| e.kind != "refusal").collect();
    assert_eq!(frames.len(), sent.len(), "every frame that left is in the ledger, and only those");
    for (frame, entry) in frames.iter().zip(&sent) {
        assert_eq!(hex::encode(Sha256::digest(frame)), entry.sha256);
        assert_eq!(frame.len() as u64, entry.bytes);
        let msg: ClientMsg = decode_payload(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(msg.kind().as_str(), entry.kind);
    }
    let kinds: std::collections::BTreeSet<_> = sent.iter().map(|e| e.kind.as_str()).collect();
    for k in ["hello", "advertise_keys", "share_keys", "masked_chunk", "unmask_shares", "eval_report"] {
        assert!(kinds.contains(k), "hospital-a never sent {k}: the canary saw too little");
    }

    for (i, frame) in frames.iter().enumerate() {
        for (what, p) in &all_patterns {
            assert!(!find(frame, p), "frame {i} ({}) carries the marker {what}", sent[i].kind);
        }
    }
    let logs = captured_logs();
    for (marker, _) in MARKERS {
        assert!(!logs.contains(marker), "the log carries the marker {marker}");
    }
}

/// With DP on (client unit, distributed noise, private evaluation), no frame
/// from a member carries an un-noised count: hospital-a sends no evaluation
/// report at all (checked on every frame the tap saw, decoded, against its
/// egress ledger), its evaluation leaves only inside the masked vector, and
/// the aggregator's records still show the decoded, noised evaluation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dp_no_frame_carries_an_unnoised_count() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    for n in NAMES {
        pki::issue(&pki_dir, n).unwrap();
    }
    let csvs = write_member_csvs(dir.path(), &NAMES);
    let run_dir = dir.path().join("run");
    let mut cfg = aggregator_config(&pki_dir, &run_dir, &NAMES, 2, 3);
    cfg.privacy = Some(PrivacyConfig {
        unit: PrivacyUnit::Client,
        noise: None,
        epsilon: 1e6,
        delta: 1e-5,
        clip_norm: 1.0,
        // Little noise: this test is about what travels, not about utility.
        noise_multiplier: Some(0.005),
        sampling_rate: None,
        adaptive_clipping: None,
        evaluation: Some(PrivateEvaluationConfig { max_examples: 100, loss_bound: 2.0, share: 0.5, classes: None }),
    });
    let listener = daemon::listen(&cfg).unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));
    let tap = start_tap(&pki_dir, upstream);
    let mut members = Vec::new();
    for (n, csv) in NAMES.iter().zip(&csvs) {
        let mut c = client_config(dir.path(), &pki_dir, n, csv, &tap.addr);
        c.privacy =
            Some(PrivacySection { epsilon: 1e6, delta: 1e-5, ledger: dir.path().join(format!("{n}-dp.jsonl")) });
        members.push(tokio::spawn(run_member(c)));
    }
    let end = tokio::time::timeout(Duration::from_secs(240), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert_eq!(end.completed_rounds, 2, "{}", end.reason);
    for m in members {
        m.await.unwrap().unwrap();
    }

    let frames = tap.tapped.frames_of(NAMES[0]);
    let ledger = tessera_client::EgressLedger::read(&dir.path().join("hospital-a-egress.jsonl")).unwrap();
    let sent: Vec<_> = ledger.iter().filter(|e| e.kind != "refusal").collect();
    assert_eq!(frames.len(), sent.len(), "every frame that left is in the ledger, and only those");
    for frame in &frames {
        let msg: ClientMsg = decode_payload(&frame[HEADER_LEN..]).unwrap();
        assert!(!matches!(msg, ClientMsg::EvalReport { .. } | ClientMsg::PlainStart { .. }), "{:?}", msg.kind());
    }
    let kinds: std::collections::BTreeSet<_> = sent.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains("masked_chunk") && !kinds.contains("eval_report"), "{kinds:?}");
    // The evaluation happened, inside the secure sum: the records carry it.
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let records: Vec<RoundRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2);
    // Client unit: the noised loss sum is released, per-example scores (AUC) are not.
    let released =
        |r: &RoundRecord| r.accuracy.is_some_and(|a| a > 0.0) && r.loss.is_some_and(|l| l > 0.0) && r.auc.is_none();
    assert!(records.iter().all(released), "{records:?}");
    assert!(text.lines().all(|l| l.contains("\"auc\":null")), "{text}");
}
