//! Image members: the shipped Fashion-MNIST training images split across
//! members by the scenario's partitioner, each member a
//! `tessera_vision::VisionModel` (e.g. EfficientNet-Lite0 transfer
//! learning: a frozen pretrained backbone and a trained head).

use anyhow::Context;
use tessera_protocol::derive_seed;
use tessera_vision::ImageDataset;
use tessera_vision::{VisionModel, VisionModelConfig};

use crate::partition::partition;
use crate::run::{Members, SimModel, label_counts};
use crate::scenario::Scenario;

/// The images, their labels and each member's image indices.
pub fn partition_images(s: &Scenario) -> anyhow::Result<(ImageDataset, Vec<u32>, Vec<Vec<usize>>)> {
    let data = tessera_vision::load_fashion_mnist(&s.data.path, "train")
        .with_context(|| format!("loading {}", s.data.path.display()))?;
    let labels: Vec<u32> = data.labels().iter().map(|l| *l as u32).collect();
    let parts = partition(&s.partition, &labels, data.num_classes(), s.clients, s.seed)?;
    Ok((data, labels, parts))
}

/// Build the members of an image scenario (`[data] kind = "fashion_mnist_images"`).
pub fn members(s: &Scenario, cfg: &VisionModelConfig) -> anyhow::Result<Members> {
    let (data, labels, parts) = partition_images(s)?;
    let mut models = Vec::with_capacity(parts.len());
    let mut examples = Vec::with_capacity(parts.len());
    let mut initial = None;
    for (k, rows) in parts.iter().enumerate() {
        let local = data.select(rows).with_context(|| format!("client {k}"))?;
        let (train, test) = local
            .stratified_split(s.data.test, derive_seed(s.seed, k as u64, b"split"))
            .with_context(|| format!("client {k}: every member needs examples of every class"))?;
        examples.push(train.len() as u64);
        let model = VisionModel::from_config(cfg, train, test).with_context(|| format!("client {k}"))?;
        if initial.is_none() {
            initial = Some(model.net().trainable_params().context("initial model")?);
        }
        models.push(SimModel::Vision(Box::new(model.with_seeded_noise(true))));
    }
    Ok(Members {
        models,
        initial: initial.context("no members")?,
        examples,
        label_counts: label_counts(&parts, &labels, data.num_classes()),
        class_names: data.class_names().to_vec(),
    })
}
