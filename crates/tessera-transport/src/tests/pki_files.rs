//! PKI files: permissions, refusals to overwrite, name rules, loader errors.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_are_private_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let agg = pki::init(dir.path(), &InitOptions::default()).unwrap();
    assert_eq!(mode(&dir.path().join(pki::CA_KEY)), 0o600);
    assert_eq!(mode(&agg.key), 0o600);
    let alice = pki::issue(dir.path(), "alice").unwrap();
    assert_eq!(mode(&alice.key), 0o600);
    assert_eq!(pki::member_name(&pki::load_certs(&alice.cert).unwrap()[0]).unwrap(), "alice");

    let ca_before = std::fs::read(dir.path().join(pki::CA_CERT)).unwrap();
    assert!(matches!(pki::init(dir.path(), &InitOptions::default()), Err(pki::PkiError::CaExists(_))));
    assert_eq!(std::fs::read(dir.path().join(pki::CA_CERT)).unwrap(), ca_before);
    assert!(matches!(pki::issue(dir.path(), "alice"), Err(pki::PkiError::AlreadyExists(_))));
}

#[test]
fn member_names_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &InitOptions::default()).unwrap();
    for bad in ["", "Alice", "a b", "../x", "-x", ".x", "ca", "aggregator", &"x".repeat(65), "é"] {
        assert!(matches!(pki::issue(dir.path(), bad), Err(pki::PkiError::InvalidName { .. })), "{bad:?}");
    }
    for good in ["hospital-7", "bank_2.eu", &"x".repeat(64)] {
        pki::issue(dir.path(), good).unwrap();
    }
}

#[test]
fn issue_needs_a_ca_and_loaders_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(pki::issue(dir.path(), "alice"), Err(pki::PkiError::Missing(_))));
    pki::init(dir.path(), &InitOptions::default()).unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    assert!(matches!(pki::load_certs(&junk), Err(pki::PkiError::NotPem { .. })));
    assert!(matches!(pki::load_key(&junk), Err(pki::PkiError::NotPem { .. })));
    // A certificate is not a key, and a key is not a certificate.
    assert!(matches!(pki::load_key(&dir.path().join(pki::CA_CERT)), Err(pki::PkiError::NotPem { .. })));
    assert!(matches!(pki::load_certs(&dir.path().join(pki::CA_KEY)), Err(pki::PkiError::NotPem { .. })));
    assert!(matches!(pki::load_certs(&dir.path().join("nope.pem")), Err(pki::PkiError::Missing(_))));
    let err = QuicDialConfig::from_pki_dir(dir.path(), "zed", "localhost:1").err().unwrap();
    assert!(err.to_string().contains("zed.pem"), "{err}");
}

#[test]
fn aggregator_names_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        aggregator_names: vec!["agg.consortium.example".into(), "10.1.2.3".into()],
        ..Default::default()
    };
    pki::init(dir.path(), &opts).unwrap();
    let bad = tempfile::tempdir().unwrap();
    let opts = InitOptions { aggregator_names: vec!["not a host".into()], ..Default::default() };
    assert!(matches!(pki::init(bad.path(), &opts), Err(pki::PkiError::InvalidHostname(_))));
}

#[test]
fn fingerprints_name_one_certificate_and_parse_as_operators_copy_them() {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &InitOptions::default()).unwrap();
    let files = pki::issue(dir.path(), "alice").unwrap();
    let fp = pki::CertFingerprint::of_pem_file(&files.cert).unwrap();
    let der = pki::load_certs(&files.cert).unwrap().remove(0);
    assert_eq!(fp, pki::CertFingerprint::of_der(der.as_ref()));
    let hex = fp.to_string();
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // As printed here, with a prefix, or as openssl prints it (colons, upper case).
    let openssl: Vec<String> = hex.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).to_uppercase()).collect();
    for form in [hex.clone(), format!("sha256:{hex}"), openssl.join(":"), format!("  {hex}\n")] {
        assert_eq!(form.parse::<pki::CertFingerprint>().unwrap(), fp, "{form}");
    }
    for bad in ["", "abcd", &hex[..63], &format!("{hex}00"), &hex.replace(&hex[..1], "g")] {
        assert!(matches!(bad.parse::<pki::CertFingerprint>(), Err(pki::PkiError::InvalidFingerprint(_))), "{bad:?}");
    }
    // Re-issuing the same name gives another key, hence another fingerprint.
    std::fs::remove_file(&files.cert).unwrap();
    std::fs::remove_file(&files.key).unwrap();
    pki::issue(dir.path(), "alice").unwrap();
    assert_ne!(pki::CertFingerprint::of_pem_file(&files.cert).unwrap(), fp);
}
