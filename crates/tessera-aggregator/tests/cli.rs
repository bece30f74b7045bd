//! The `tessera-aggregator` binary as an operator first meets it: a bad
//! config path is a clear error and a failed exit, and `pki init` writes a
//! CA and refuses to overwrite it. (Building this test also builds the
//! binary, which the daemons' process-level tests in `tests/tests/` run
//! with the client binary beside it.)

use std::process::Command;

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera-aggregator"))
}

#[test]
fn a_missing_config_is_a_clear_error_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let out = aggregator().args(["serve", "--config"]).arg(&missing).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere.toml"), "the error names the file: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn pki_init_writes_a_ca_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = aggregator().args(["pki", "init", "--dir"]).arg(&pki).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"));

    let again = aggregator().args(["pki", "init", "--dir"]).arg(&pki).output().unwrap();
    assert!(!again.status.success(), "a second init must not replace the consortium's CA");
    assert!(!String::from_utf8_lossy(&again.stderr).contains("panicked"));
    assert_eq!(std::fs::read(pki.join("ca.pem")).unwrap(), ca, "the CA is unchanged");
}
