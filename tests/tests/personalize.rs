//! `tessera-client personalize` through the real binary, after a real run
//! of the `tessera-aggregator` binary on the shipped WDBC data: the member
//! fine-tunes the run's final model (`run_dir/model.json`) on its own train
//! split, writes the personalized model and its before/after metrics next
//! to its data, and sends nothing.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tessera_client::{ClientConfig, LocalModel};
use tessera_core::ModelParams;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn personalize_fine_tunes_the_final_model_at_home_and_sends_nothing() {
    let site = Site::new();
    let gates = Arc::new(Gates::default());
    let port = free_udp_port();
    let opts = RunOptions { rounds: 2, quic_port: port, http_port: None, dp: false };
    let config = aggregator_toml(&site, "pers", &opts);
    let members = start_members(&site, "pers", port, &gates);
    let mut agg = spawn_aggregator(&config, None);
    assert!(wait_exit(&mut agg, Duration::from_secs(120)), "run failed: see {}", config.parent().unwrap().display());
    join_members(members).await;
    let global_file = config.parent().unwrap().join("out/model.json");
    let global: ModelParams = serde_json::from_slice(&std::fs::read(&global_file).unwrap()).unwrap();

    // hospital-a's own configuration, as its operator runs it (the
    // in-process members' seeded test mode is not needed here).
    let text = std::fs::read_to_string(site.path().join("pers/hospital-a.toml")).unwrap();
    let member_toml = site.path().join("pers/hospital-a-site.toml");
    std::fs::write(&member_toml, text.replace("[testing]\nseeded_randomness = true\n", "")).unwrap();
    let egress = site.path().join("pers/hospital-a-egress.jsonl");
    let sent_before = std::fs::read(&egress).unwrap();

    let out = Command::new(client_binary())
        .args(["personalize", "--config"])
        .arg(&member_toml)
        .arg("--model")
        .arg(&global_file)
        .args(["--epochs", "10", "--learning-rate", "0.1", "--batch-size", "16"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "personalize failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("nothing was sent"), "{stdout}");

    // Written next to the member's data.
    let dir = site.csvs[0].parent().unwrap().join("personalized/hospital-a");
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    let personal: ModelParams = serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(personal.layout(), global.layout());
    assert_ne!(personal, global, "the model was fine-tuned");
    assert_eq!(metrics["member"], "hospital-a");
    assert_eq!(metrics["local_epochs"], 10);

    // The figures are the member's own test split under each model,
    // recomputed here in-process from the two files.
    let cfg = ClientConfig::load(&member_toml).unwrap();
    let mut model = tessera_client::tabular_model(&cfg).unwrap();
    let before = serde_json::to_value(model.evaluate(&global).unwrap()).unwrap();
    let after = serde_json::to_value(model.evaluate(&personal).unwrap()).unwrap();
    assert_same_metrics(&metrics["before"], &before);
    assert_same_metrics(&metrics["after"], &after);
    assert_ne!(metrics["before"]["loss"], metrics["after"]["loss"]);
    assert!(metrics["after"]["accuracy"].as_f64().unwrap() > 0.8, "{metrics}");

    // Nothing left the site: the egress ledger is as the run left it.
    assert_eq!(std::fs::read(&egress).unwrap(), sent_before, "personalize wrote to the egress ledger");

    // A file that is not a model is refused, and nothing is written for it.
    let bad = Command::new(client_binary())
        .args(["personalize", "--config"])
        .arg(&member_toml)
        .arg("--model")
        .arg(&member_toml)
        .arg("--out")
        .arg(site.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("model.json"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(!site.path().join("nowhere").exists());
}

/// Equal up to the last digit serde_json's float parsing may change.
fn assert_same_metrics(file: &serde_json::Value, here: &serde_json::Value) {
    assert_eq!(file["confusion"], here["confusion"]);
    assert_eq!(file["num_examples"], here["num_examples"]);
    for key in ["loss", "accuracy", "balanced_accuracy", "auc", "f1"] {
        let (a, b) = (file[key].as_f64().unwrap(), here[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{key}: {a} in the file, {b} recomputed");
    }
}
