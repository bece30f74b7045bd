//! Backbone pretraining on a designated public split, and safetensors
//! checkpoints of the backbone (written and read through burn-store).
//!
//! A checkpoint holds `backbone.layers.{i}.weight` (`[in, out]`) and
//! `backbone.layers.{i}.bias`. Files from other tools load through a
//! [`TensorMapping`] table naming, for each model tensor, the file's tensor
//! and whether it is stored transposed (PyTorch's `Linear` keeps `[out, in]`).

use std::path::Path;

use burn::store::{ModuleSnapshot, ModuleStore, SafetensorsStore, bridge};
use tessera_core::{EvalMetrics, TrainSettings};

use crate::Split;
use crate::data::{RawTable, TabularData, TabularSpec, load_csv};
use crate::error::{DataError, LearnError};
use crate::model::{Field, TabularMlp, TrainablePart};
use crate::split::{SplitConfig, SplitIndices, stratified_split};
use crate::train::{ModelSpec, TabularTask};
use tessera_learn::ComputeBackend;

/// Where one model tensor comes from in a checkpoint file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMapping {
    /// Model name, e.g. `backbone.layers.0.weight`.
    pub target: String,
    /// Name in the file, e.g. `encoder.0.weight`.
    pub source: String,
    /// The file stores the matrix as `[out, in]`.
    pub transpose: bool,
}

/// Rows designated public: a stratified, seeded `fraction` of the table.
/// The rest is the private part members train on.
pub fn public_private_rows(table: &RawTable, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let SplitIndices { train, test, .. } =
        stratified_split(&table.labels, table.num_classes(), &SplitConfig { validation: 0.0, test: fraction, seed })?;
    Ok((test, train))
}

/// The rows `rows` of `table`, in that order, as a table of their own with
/// the same columns and classes.
pub fn subset(table: &RawTable, rows: &[usize]) -> RawTable {
    use crate::data::RawColumn;
    let columns = table
        .columns
        .iter()
        .map(|c| match c {
            RawColumn::Numeric { name, values } => {
                RawColumn::Numeric { name: name.clone(), values: rows.iter().map(|&r| values[r]).collect() }
            }
            RawColumn::Categorical { name, values } => {
                RawColumn::Categorical { name: name.clone(), values: rows.iter().map(|&r| values[r].clone()).collect() }
            }
        })
        .collect();
    RawTable {
        file: table.file.clone(),
        columns,
        labels: rows.iter().map(|&r| table.labels[r]).collect(),
        class_names: table.class_names.clone(),
    }
}

/// What the CLI's `pretrain` command reports.
#[derive(Clone, Debug)]
pub struct PretrainReport {
    /// Rows in the public part (training and held-out together).
    pub public_examples: usize,
    /// Metrics of the pretrained model on a held-out part of the public split.
    pub validation: EvalMetrics,
}

/// Pretrain an MLP on the public `public_fraction` of `csv` (every tensor
/// trainable) and save its backbone to `out` as safetensors. The public rows
/// are [`public_private_rows`] with `settings.seed`; the same call gives the
/// private rows that members keep.
pub fn pretrain_backbone(
    csv: &Path,
    spec: &TabularSpec,
    hidden: &[usize],
    public_fraction: f64,
    settings: &TrainSettings,
    backend: ComputeBackend,
    out: &Path,
) -> Result<PretrainReport, LearnError> {
    if hidden.is_empty() {
        return Err(LearnError::Config("a backbone needs at least one hidden layer".into()));
    }
    let table = load_csv(csv, spec)?;
    let (public, _) = public_private_rows(&table, public_fraction, settings.seed)?;
    let public = subset(&table, &public);
    let split = SplitConfig { validation: 0.2, test: 0.0, seed: settings.seed };
    let data = TabularData::from_table(&public, spec, &split)?;
    let model = ModelSpec { hidden: hidden.to_vec(), trainable: TrainablePart::All, init_seed: settings.seed };
    let mut task = TabularTask::new(data, &model, backend)?;
    task.train_round(settings, None)?;
    save_backbone(task.model(), out)?;
    Ok(PretrainReport { public_examples: public.len(), validation: task.evaluate(Split::Validation)? })
}

fn checkpoint_err(path: &Path, reason: impl Into<String>) -> LearnError {
    LearnError::Checkpoint { file: path.to_path_buf(), reason: reason.into() }
}

/// Save the backbone's weights and biases (not adapters, not the head).
pub fn save_backbone(model: &TabularMlp, path: &Path) -> Result<(), LearnError> {
    let mut store = SafetensorsStore::from_file(path)
        .with_regex(r"^backbone\.layers\.[0-9]+\.(weight|bias)$")
        .metadata("tessera", "tabular backbone, weight [in, out]")
        .overwrite(true);
    model.save_into(&mut store).map_err(|e| checkpoint_err(path, format!("cannot write: {e}")))
}

/// Load backbone weights and biases from a safetensors file. Names not in
/// `mapping` are looked up under the model's own name, untransposed. Every
/// backbone weight and bias must be found with the right shape, or nothing
/// changes and the error names the tensor.
pub fn load_backbone(model: &mut TabularMlp, path: &Path, mapping: &[TensorMapping]) -> Result<(), LearnError> {
    if !path.exists() {
        return Err(checkpoint_err(path, "file not found"));
    }
    let mut store = SafetensorsStore::from_file(path);
    let tensors = store.get_all_tensors().map_err(|e| checkpoint_err(path, format!("cannot read: {e}")))?;
    let mut staged = Vec::new();
    for layer in 0..model.num_backbone_layers() {
        let dense = model.layer(layer);
        let (d_in, d_out) = (dense.d_in(), dense.d_out());
        for field in [Field::Weight, Field::Bias] {
            let target = model.slot_name(layer, field);
            let (source, transpose) = mapping
                .iter()
                .find(|m| m.target == target)
                .map(|m| (m.source.clone(), m.transpose))
                .unwrap_or_else(|| (target.clone(), false));
            let t = tensors
                .get(&source)
                .ok_or_else(|| checkpoint_err(path, format!("tensor `{source}` (for `{target}`) is missing")))?;
            let shape: Vec<usize> = t.shape.to_vec();
            let ok = match field {
                Field::Bias => shape == [d_out] || shape == [1, d_out],
                _ if transpose => shape == [d_out, d_in],
                _ => shape == [d_in, d_out],
            };
            if !ok {
                let want = match field {
                    Field::Bias => vec![d_out],
                    _ if transpose => vec![d_out, d_in],
                    _ => vec![d_in, d_out],
                };
                return Err(checkpoint_err(
                    path,
                    format!("tensor `{source}` (for `{target}`) has shape {shape:?}, expected {want:?}"),
                ));
            }
            let data = bridge::to_data(t)
                .map_err(|e| checkpoint_err(path, format!("tensor `{source}`: {e}")))?
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| checkpoint_err(path, format!("tensor `{source}`: {e:?}")))?;
            if data.iter().any(|v| !v.is_finite()) {
                return Err(checkpoint_err(path, format!("tensor `{source}` holds a non-finite value")));
            }
            let data = if transpose {
                // [out, in] -> [in, out]
                let mut out = vec![0f32; data.len()];
                for o in 0..d_out {
                    for i in 0..d_in {
                        out[i * d_out + o] = data[o * d_in + i];
                    }
                }
                out
            } else {
                data
            };
            staged.push((layer, field, data));
        }
    }
    for (layer, field, data) in staged {
        model.write_slot(layer, field, data)?;
    }
    Ok(())
}

impl TabularTask {
    /// Replace the backbone with a pretrained one (see [`load_backbone`]).
    pub fn load_backbone(&mut self, path: &Path, mapping: &[TensorMapping]) -> Result<(), LearnError> {
        load_backbone(&mut self.model, path, mapping)
    }
}
