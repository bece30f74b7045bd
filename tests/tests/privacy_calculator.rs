//! `tessera-aggregator privacy`, the calculator, through the real binary:
//! its figures cross-checked against published values (TF Privacy's
//! compute_dp_sgd_privacy, dp_accounting's plain Gaussian), the RDP and
//! OpenDP zCDP figures side by side, calibration, affordable rounds, and
//! clear errors for bad input.

mod common;

use std::process::Output;

fn privacy(args: &[&str]) -> Output {
    std::process::Command::new(&*common::BIN).arg("privacy").args(args).output().expect("run tessera-aggregator")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = privacy(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The number after `label` on its line.
fn figure(text: &str, label: &str) -> f64 {
    let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no `{label}` in:\n{text}"));
    let rest = &line[line.find(label).unwrap() + label.len()..];
    let num: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-')
        .collect();
    num.parse().unwrap_or_else(|_| panic!("`{label}`: no number in {line:?}"))
}

#[test]
fn record_level_dp_sgd_matches_tf_privacy() {
    // TF Privacy compute_dp_sgd_privacy_test.py (commit 03035d5): n 60,000,
    // batch 150, sigma 1.3, 15 epochs, delta 1e-5 -> epsilon 0.7242 (order 19).
    // One epoch per round: ceil(1/q) = 400 steps a round.
    let args = ["--unit", "record", "--sampling-rate", "0.0025", "--noise-multiplier", "1.3", "--rounds", "15"];
    let text = stdout_ok(&args);
    assert!(text.contains("steps per round:   400"), "{text}");
    let rdp = figure(&text, "RDP accountant (the ledger's figure):");
    assert!((rdp - 0.7242234026109595).abs() < 1e-3, "{rdp}\n{text}");
    // OpenDP's zCDP, shown beside it, does not amplify by sampling: all
    // 6,000 releases at full weight, rho = 6000 / (2 * 1.3^2).
    let zcdp = figure(&text, "OpenDP zCDP, no amplification by sampling:");
    let expected = tessera_privacy::zcdp_to_epsilon(6000.0 / (2.0 * 1.3 * 1.3), 1e-5).unwrap();
    assert!((zcdp - expected).abs() < 1e-3 * expected && zcdp > 10.0 * rdp, "{zcdp} vs {expected}\n{text}");

    // A target instead of sigma: sigma is calibrated back to 1.3.
    let text = stdout_ok(&["--unit", "record", "--sampling-rate", "0.0025", "--epsilon", "0.7242", "--rounds", "15"]);
    let sigma = figure(&text, "noise multiplier:");
    assert!((sigma - 1.3).abs() < 2e-3, "{sigma}\n{text}");
    assert!((figure(&text, "RDP accountant (the ledger's figure):") - 0.7242).abs() < 1e-3, "{text}");

    // Both sigma and a budget: the rounds it affords (15 spend 0.7242, 16 more than 0.73).
    let text =
        stdout_ok(&["--unit", "record", "--sampling-rate", "0.0025", "--noise-multiplier", "1.3", "--epsilon", "0.73"]);
    assert_eq!(figure(&text, "affordable rounds:"), 15.0, "{text}");
}

/// Record unit with distributed noise (simulations/hospitals-wdbc-eps1.toml:
/// q = 0.5, 40 rounds, epsilon 1): one DP-SGD step a round, as the ledgers
/// charge it, where local noise takes ceil(1/q) = 2 steps a round.
#[test]
fn record_level_distributed_noise_is_one_step_a_round() {
    let args =
        ["--unit", "record", "--noise", "distributed", "--sampling-rate", "0.5", "--epsilon", "1", "--rounds", "40"];
    let text = stdout_ok(&args);
    assert!(text.contains("steps per round:   1\n"), "{text}");
    assert!(text.contains("after 40 rounds (40 Gaussian releases)"), "{text}");
    let distributed = figure(&text, "noise multiplier:");
    assert!((figure(&text, "RDP accountant (the ledger's figure):") - 1.0).abs() < 1e-3, "{text}");
    // The scenario's own calibration (docs/privacy.md): z = 12.96.
    assert!((distributed - 12.96).abs() < 0.01, "{distributed}\n{text}");
    let local = stdout_ok(&["--unit", "record", "--sampling-rate", "0.5", "--epsilon", "1", "--rounds", "40"]);
    assert!(local.contains("steps per round:   2\n"), "{local}");
    assert!(figure(&local, "noise multiplier:") > distributed * 1.3, "{local}");
}

#[test]
fn unsampled_gaussian_rdp_and_zcdp_agree() {
    // dp_accounting rdp_privacy_accountant_test.py (test_compute_epsilon_delta_gaussian):
    // sigma 4.530877117, one release, is (1, 1e-6)-DP. Client unit, full participation.
    let args = ["--unit", "client", "--sampling-rate", "1", "--noise-multiplier", "4.530877117", "--rounds", "1"];
    let text = stdout_ok(&[&args[..], &["--delta", "1e-6"]].concat());
    let rdp = figure(&text, "RDP accountant (the ledger's figure):");
    let zcdp = figure(&text, "OpenDP zCDP:");
    // OpenDP's conversion is exact for the Gaussian; the RDP grid is a little coarser.
    assert!((zcdp - 1.0).abs() < 2e-3, "{zcdp}\n{text}");
    assert!(rdp >= zcdp - 1e-3 && rdp < 1.02, "{rdp}\n{text}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    for (args, expected) in [
        (
            &["--unit", "record", "--sampling-rate", "1.5", "--noise-multiplier", "1", "--rounds", "3"][..],
            "--sampling-rate = 1.5",
        ),
        (&["--unit", "record", "--sampling-rate", "0.1", "--rounds", "3"][..], "--noise-multiplier, --epsilon"),
        (&["--unit", "client", "--sampling-rate", "1", "--noise-multiplier", "1"][..], "--rounds is needed"),
        (
            &["--unit", "client", "--sampling-rate", "1", "--noise-multiplier", "0", "--rounds", "2"][..],
            "--noise-multiplier = 0",
        ),
        (
            &["--unit", "client", "--sampling-rate", "1", "--epsilon", "1", "--rounds", "2", "--delta", "2"][..],
            "--delta = 2",
        ),
        (&["--unit", "person", "--sampling-rate", "1"][..], "person"),
        (
            &[
                "--unit",
                "record",
                "--noise",
                "distributed",
                "--local-epochs",
                "2",
                "--sampling-rate",
                "0.5",
                "--epsilon",
                "1",
                "--rounds",
                "40",
            ][..],
            "--local-epochs = 2 is out of range: exactly 1 under --noise distributed",
        ),
        (
            &["--unit", "record", "--noise", "central", "--sampling-rate", "0.5", "--epsilon", "1", "--rounds", "40"][..],
            "--noise central with --unit record",
        ),
    ] {
        let out = privacy(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
