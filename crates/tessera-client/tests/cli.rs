//! The `tessera-client` binary as an IT department meets it: a bad config
//! path is a clear error and a failed exit, and `egress` prints what left
//! the site, message by message. (Building this test also builds the
//! binary, which `tests/tests/netns.rs` runs inside network namespaces.)

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use tessera_client::EgressLedger;

fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera-client"))
}

#[test]
fn a_missing_config_is_a_clear_error_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let out = client().args(["run", "--config"]).arg(&missing).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere.toml"), "the error names the file: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn egress_prints_every_recorded_message_with_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("egress.jsonl");
    let config = dir.path().join("member.toml");
    write_config(&config, &ledger);

    let frames: [&[u8]; 2] = [b"hello frame", b"masked update frame bytes"];
    let mut l = EgressLedger::open(&ledger).unwrap();
    l.record(None, "hello", frames[0]).unwrap();
    l.record(Some(3), "masked_end", frames[1]).unwrap();
    l.record_refusal(Some(4), "cohort below threshold").unwrap();
    drop(l);

    let out = client().args(["egress", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "egress failed: {err}");
    let text = String::from_utf8(out.stdout).unwrap();
    for f in frames {
        assert!(text.contains(&hex::encode(Sha256::digest(f))), "digest of each frame listed:\n{text}");
    }
    assert!(text.contains("masked_end") && text.contains("cohort below threshold"), "{text}");
    let total = frames.iter().map(|f| f.len()).sum::<usize>();
    assert!(text.contains(&format!("3 messages, {total} bytes in total")), "{text}");
}

/// The release daemon refuses the test-only seeded mode before it reads any
/// data or dials anything, and says why. Runs where this package is built
/// without its `test-seeded-randomness` feature (`cargo test -p
/// tessera-client`); `cargo test --workspace` turns the feature on for the
/// whole build, and `tests/tests/dependency_edges.rs` checks that only the
/// test crate does.
#[cfg(not(feature = "test-seeded-randomness"))]
#[test]
fn the_release_daemon_refuses_seeded_randomness() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("member.toml");
    write_config(&config, &dir.path().join("egress.jsonl"));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[testing]\nseeded_randomness = true\n");
    std::fs::write(&config, text).unwrap();
    let out = client().args(["run", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("member.toml") && err.contains("seeded_randomness = true is refused"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn write_config(path: &Path, ledger: &Path) {
    let text = format!(
        "member = \"hospital-a\"\n\n[aggregator]\naddress = \"127.0.0.1:4433\"\nserver_name = \"localhost\"\n\
         ca = \"pki/ca.pem\"\ncert = \"pki/hospital-a.pem\"\nkey = \"pki/hospital-a.key\"\n\n\
         [data]\npath = \"data/hospital-a.csv\"\nlabel = \"diagnosis\"\nclasses = [\"benign\", \"malignant\"]\n\
         schema = \"{}\"\n\n\
         [model]\nnum_features = 30\nnum_classes = 2\nhidden = [16]\n\n[state]\negress_ledger = \"{}\"\n",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/wdbc.schema.toml").display(),
        ledger.display()
    );
    std::fs::write(path, text).unwrap();
}
