//! `tessera-client personalize`: after federation, fine-tune the final
//! global model on this member's own data and keep the result at home.
//!
//! The member starts from the run's final global model (the aggregator's
//! `run_dir/model.json`, which the operator hands to members; see
//! docs/operator-guide.md), trains its trainable part as the run's
//! `[model]` defines it (the head, the LoRA adapters and head, or every
//! tensor) on its own train split, and evaluates the model before and after
//! on its own test split. It writes the personalized model and both
//! evaluations next to its data. Nothing is sent and no socket is opened:
//! the personalized model stays local, which is why it needs no DP (see
//! docs/privacy.md), and it must never be released as it is.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tessera_core::{EvalMetrics, ModelParams, TrainSettings};
use tessera_learn::LocalModel;

use crate::config::{ClientConfig, DataConfig, ModelSection};

/// The directory `personalize` writes to when not told:
/// `personalized/<member>/` in the directory that holds the member's data
/// (its CSV file, or its image folder or IDX files).
pub fn default_personalized_dir(cfg: &ClientConfig) -> PathBuf {
    let data = match &cfg.data {
        DataConfig::Csv(s) => &s.path,
        DataConfig::Images(s) => &s.path,
    };
    data.parent().unwrap_or(Path::new(".")).join("personalized").join(&cfg.member)
}

/// How to fine-tune; defaults suit a small head.
#[derive(Clone, Debug)]
pub struct PersonalizeOptions {
    /// The final global model: `ModelParams` JSON (the aggregator's `model.json`).
    pub global_model: PathBuf,
    /// Where `model.json` and `metrics.json` go.
    pub out_dir: PathBuf,
    /// Local training: epochs, batch size, learning rate, seed (no FedProx).
    pub settings: TrainSettings,
}

/// What `personalize` found, also written as `metrics.json`.
#[derive(Clone, Debug, Serialize)]
pub struct PersonalizeReport {
    /// The member that ran it.
    pub member: String,
    /// SHA-256 of the global model file it started from, hex.
    pub global_model_sha256: String,
    /// The global model on this member's test split.
    pub before: EvalMetrics,
    /// The personalized model on the same split.
    pub after: EvalMetrics,
    /// Training examples used (this member's train split).
    pub train_examples: u64,
    /// Local epochs, batch size and learning rate used.
    pub local_epochs: u32,
    /// Examples per step.
    pub batch_size: u32,
    /// Step size.
    pub learning_rate: f64,
    /// The personalized model file.
    pub model: PathBuf,
}

/// Fine-tunes the global model on this member's data and writes
/// `model.json` (the personalized trainable part, `ModelParams` JSON) and
/// `metrics.json` ([`PersonalizeReport`]) under `opts.out_dir`.
pub fn personalize(cfg: &ClientConfig, opts: &PersonalizeOptions) -> anyhow::Result<PersonalizeReport> {
    let bytes = std::fs::read(&opts.global_model)
        .with_context(|| format!("reading the global model {}", opts.global_model.display()))?;
    let global: ModelParams = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a model.json (ModelParams JSON)", opts.global_model.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let (before, after, trained, train_examples) = match &cfg.model {
        ModelSection::Tabular(_) => fine_tune(crate::daemon::tabular_model(cfg)?, &global, &opts.settings)?,
        ModelSection::Vision(_) => fine_tune(crate::daemon::vision_model(cfg)?, &global, &opts.settings)?,
    };
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let model = opts.out_dir.join("model.json");
    std::fs::write(&model, serde_json::to_vec(&trained)?).with_context(|| format!("writing {}", model.display()))?;
    let report = PersonalizeReport {
        member: cfg.member.clone(),
        global_model_sha256: sha,
        before,
        after,
        train_examples,
        local_epochs: opts.settings.local_epochs,
        batch_size: opts.settings.batch_size,
        learning_rate: opts.settings.learning_rate,
        model,
    };
    let metrics = opts.out_dir.join("metrics.json");
    std::fs::write(&metrics, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", metrics.display()))?;
    Ok(report)
}

/// Evaluate `global`, train from it without DP, evaluate the result.
fn fine_tune<M: LocalModel>(
    mut model: M,
    global: &ModelParams,
    settings: &TrainSettings,
) -> anyhow::Result<(EvalMetrics, EvalMetrics, ModelParams, u64)> {
    let before = model.evaluate(global).context("evaluating the global model")?;
    let update = model.train(global, settings, None).context("fine-tuning")?;
    let after = model.evaluate(&update.params).context("evaluating the personalized model")?;
    Ok((before, after, update.params, update.num_examples))
}
