//! Local training and evaluation of one member's tabular task: what
//! `TabularModel` drives each round.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor};
use tessera_core::{EvalMetrics, ModelParams, TrainSettings, eval_metrics};

use crate::data::{Dataset, Split, TabularData};
use crate::error::LearnError;
use crate::model::{Field, MlpConfig, TabularMlp, TrainablePart, export_slots, import_slots, tensor2, to_vec};
use tessera_learn::ComputeBackend;

/// Model choice for a tabular task; input and output sizes come from the data.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Widths of the hidden layers, input side first; empty for logistic regression.
    pub hidden: Vec<usize>,
    /// The part that trains and is exchanged.
    pub trainable: TrainablePart,
    /// Seed of the initial weights; members of one run share it.
    pub init_seed: u64,
}

impl ModelSpec {
    /// Logistic regression: no hidden layers, the head is the whole model.
    pub fn logistic(init_seed: u64) -> Self {
        Self { hidden: Vec::new(), trainable: TrainablePart::All, init_seed }
    }
}

/// Where a round's local training is; for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// 0-based epoch of `epochs`.
    pub epoch: u32,
    /// Epochs in the round.
    pub epochs: u32,
    /// 1-based step within the epoch, of `steps_per_epoch`.
    pub step: u64,
    /// Optimizer steps per epoch (batches, or `ceil(1/q)` Poisson samples under DP-SGD).
    pub steps_per_epoch: u64,
}

/// Called with [`Progress`] after every optimizer step (see
/// [`TabularTask::set_progress`]); `Send` so training can run on a worker thread.
pub type ProgressFn = Box<dyn FnMut(Progress) + Send>;

/// What one round of local training did.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    /// Examples processed, counting each epoch (the FedAvg weight is `num_train_examples`).
    pub num_examples: u64,
    /// Example-weighted mean training loss over the round (without the proximal term).
    pub mean_loss: f64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// DP-SGD only: sampled examples whose gradient was not finite and so
    /// contributed zero. For the member's own report; never sent.
    pub zeroed_gradients: u64,
    /// Epochs whose result the round kept: the round's `local_epochs`, or
    /// fewer when the validation split stopped it early (see
    /// [`TabularTask::train_round`]). `num_examples`, `mean_loss` and
    /// `steps` count every epoch run, the discarded one included.
    pub epochs: u32,
}

/// One member's data, model and device.
pub struct TabularTask {
    pub(crate) data: TabularData,
    pub(crate) model: TabularMlp,
    pub(crate) slots: Vec<(usize, Field)>,
    pub(crate) device: Device,
    pub(crate) progress: Option<ProgressFn>,
}

/// Seed of an epoch's shuffle, derived from the round seed.
pub(crate) fn epoch_seed(seed: u64, epoch: u32) -> u64 {
    seed ^ (u64::from(epoch) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub(crate) fn one_hot(labels: &[u32], num_classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * num_classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * num_classes + l as usize] = 1.0;
    }
    tensor2(v, labels.len(), num_classes, device)
}

/// The shared check of `tessera_learn`, in this crate's error type.
pub(crate) fn check_settings(s: &TrainSettings) -> Result<(), LearnError> {
    tessera_learn::validate_train_settings(s).map_err(LearnError::from_local)
}

impl TabularTask {
    /// Build the network `spec` describes around `data` (input and output
    /// sizes come from the data) on `backend`'s training device.
    pub fn new(data: TabularData, spec: &ModelSpec, backend: ComputeBackend) -> Result<Self, LearnError> {
        let device = backend.training_device();
        let cfg = MlpConfig {
            num_features: data.train.num_features,
            hidden: spec.hidden.clone(),
            num_classes: data.class_names.len(),
            trainable: spec.trainable.clone(),
            init_seed: spec.init_seed,
        };
        let model = TabularMlp::new(&cfg, &device)?;
        let slots = model.trainable_slots(&spec.trainable);
        Ok(Self { data, model, slots, device, progress: None })
    }

    /// Load `path`, split it by `split` and build the model: the usual way a member starts.
    pub fn from_csv(
        path: &std::path::Path,
        spec: &crate::data::TabularSpec,
        split: &crate::split::SplitConfig,
        model: &ModelSpec,
        backend: ComputeBackend,
    ) -> Result<Self, LearnError> {
        Self::new(TabularData::load(path, spec, split)?, model, backend)
    }

    /// Called after every optimizer step; the crate itself never prints.
    pub fn set_progress(&mut self, f: Option<ProgressFn>) {
        self.progress = f;
    }

    /// The member's preprocessed splits.
    pub fn data(&self) -> &TabularData {
        &self.data
    }

    /// The network, trainable and frozen parts.
    pub fn model(&self) -> &TabularMlp {
        &self.model
    }

    /// Size of the local training split: the member's FedAvg weight.
    pub fn num_train_examples(&self) -> u64 {
        self.data.train.len() as u64
    }

    /// Names of the exchanged tensors, in order.
    pub fn trainable_names(&self) -> Vec<String> {
        self.slots.iter().map(|&(l, f)| self.model.slot_name(l, f)).collect()
    }

    /// The exchanged part of the model.
    pub fn trainable_params(&self) -> Result<ModelParams, LearnError> {
        export_slots(&self.model, &self.slots)
    }

    /// Load the exchanged part; names, order and shapes must match and every
    /// value must be finite, or nothing is changed.
    pub fn set_trainable_params(&mut self, p: &ModelParams) -> Result<(), LearnError> {
        import_slots(&mut self.model, &self.slots, p)
    }

    pub(crate) fn prox_anchor_tensors(&self, anchor: Option<&ModelParams>) -> Result<Vec<Tensor<2>>, LearnError> {
        let owned;
        let anchor = match anchor {
            Some(a) => a,
            None => {
                owned = self.trainable_params()?;
                &owned
            }
        };
        let mut scratch = self.model.clone();
        import_slots(&mut scratch, &self.slots, anchor)?;
        Ok(self
            .slots
            .iter()
            .map(|&(l, f)| scratch.param(l, f).map(|p| p.val().inner()).expect("slot exists"))
            .collect())
    }

    /// One round of local SGD: up to `local_epochs` passes over the training
    /// split in seeded batches. With `proximal_mu > 0` the FedProx term
    /// `mu/2 ||w - anchor||^2` is added; the anchor defaults to the parameters
    /// at the start of the round (the global model just received).
    ///
    /// With a non-empty validation split and more than one epoch the round
    /// stops early: after each epoch the model's loss on the validation
    /// split is measured, and when an epoch does not lower it, training
    /// stops and the previous epoch's parameters are kept
    /// ([`TrainReport::epochs`]). The validation rows never leave the
    /// member; only the trained parameters do, as in any round. DP-SGD
    /// ([`train_round_dp`](Self::train_round_dp)) never does this: its step
    /// count must be fixed before the round for the privacy accounting.
    pub fn train_round(
        &mut self,
        s: &TrainSettings,
        prox_anchor: Option<&ModelParams>,
    ) -> Result<TrainReport, LearnError> {
        check_settings(s)?;
        if self.data.train.is_empty() {
            return Err(LearnError::EmptySplit("train"));
        }
        let anchor = if s.proximal_mu > 0.0 { Some(self.prox_anchor_tensors(prox_anchor)?) } else { None };
        let early_stop = !self.data.validation.is_empty() && s.local_epochs > 1;
        // The validation loss of the last kept epoch, and its parameters.
        let mut best: Option<(f64, ModelParams)> = None;
        let (mut loss_sum, mut seen, mut steps, mut epochs) = (0.0f64, 0u64, 0u64, 0u32);
        for epoch in 0..s.local_epochs {
            let (l, n, k) = self.train_epoch(s, epoch, anchor.as_deref())?;
            (loss_sum, seen, steps) = (loss_sum + l, seen + n, steps + k);
            if early_stop {
                let loss = evaluate_model(&self.model, &self.data.validation, &self.device)?.loss;
                if let Some((_, kept)) = best.take_if(|(prev, _)| loss >= *prev) {
                    self.set_trainable_params(&kept)?;
                    break;
                }
                best = Some((loss, self.trainable_params()?));
            }
            epochs = epoch + 1;
        }
        self.trainable_params()?.check_finite().map_err(|_| LearnError::Diverged { what: "parameter" })?;
        let mean_loss = if seen == 0 { 0.0 } else { loss_sum / seen as f64 };
        Ok(TrainReport { num_examples: seen, mean_loss, steps, zeroed_gradients: 0, epochs })
    }

    /// One pass over the training split: summed batch loss (example
    /// weighted), examples seen and steps taken.
    fn train_epoch(
        &mut self,
        s: &TrainSettings,
        epoch: u32,
        anchor: Option<&[Tensor<2>]>,
    ) -> Result<(f64, u64, u64), LearnError> {
        let batch = s.batch_size as usize;
        let steps_per_epoch = self.data.train.len().div_ceil(batch) as u64;
        let (mut loss_sum, mut seen, mut steps) = (0.0f64, 0u64, 0u64);
        for (i, rows) in self.data.train.batches(batch, epoch_seed(s.seed, epoch)).iter().enumerate() {
            let (x, y) = self.data.train.gather(rows);
            let loss = self.sgd_step(&x, &y, s, anchor)?;
            loss_sum += loss * rows.len() as f64;
            seen += rows.len() as u64;
            steps += 1;
            if let Some(cb) = self.progress.as_mut() {
                cb(Progress { epoch, epochs: s.local_epochs, step: i as u64 + 1, steps_per_epoch });
            }
        }
        Ok((loss_sum, seen, steps))
    }

    /// Mean cross-entropy of a batch, with autodiff gradients applied by SGD.
    fn sgd_step(
        &mut self,
        x: &[f32],
        y: &[u32],
        s: &TrainSettings,
        anchor: Option<&[Tensor<2>]>,
    ) -> Result<f64, LearnError> {
        let n = y.len();
        let d = self.data.train.num_features;
        let xs = tensor2(x.to_vec(), n, d, &self.device);
        let target = one_hot(y, self.data.class_names.len(), &self.device);
        let logits = self.model.forward(xs);
        let loss = (log_softmax(logits, 1) * target).sum().neg().div_scalar(n as f32);
        let loss_value = to_vec(loss.clone().inner())?[0] as f64;
        if !loss_value.is_finite() {
            return Err(LearnError::Diverged { what: "loss" });
        }
        let grads = loss.backward();
        let mut updates = Vec::with_capacity(self.slots.len());
        for &(l, f) in &self.slots {
            let p = self.model.param(l, f).expect("slot exists");
            let w = p.val();
            // A tensor the loss does not depend on (an untouched LoRA factor) has no gradient.
            let g = w.grad(&grads).unwrap_or_else(|| w.clone().inner().zeros_like());
            updates.push(g);
        }
        apply_sgd(&mut self.model, &self.slots, updates, s, anchor);
        Ok(loss_value)
    }

    /// Metrics of the current model on one local split. An empty split
    /// (the keyed-hash split can leave a member with a handful of rows
    /// without test rows) gives a report of zero examples, which weighs
    /// nothing in the consortium's mean; an error here would leave the
    /// aggregator waiting for this member's report.
    pub fn evaluate(&self, split: Split) -> Result<EvalMetrics, LearnError> {
        let ds = self.data.split(split);
        if ds.is_empty() {
            return Ok(eval_metrics(&[], &[], ds.num_classes, 0.0));
        }
        evaluate_model(&self.model, ds, &self.device)
    }
}

/// The shared FedProx SGD step (`tessera_learn::fedprox_tensor_step`) on
/// every trainable slot, on the device.
pub(crate) fn apply_sgd(
    model: &mut TabularMlp,
    slots: &[(usize, Field)],
    grads: Vec<Tensor<2>>,
    s: &TrainSettings,
    anchor: Option<&[Tensor<2>]>,
) {
    let (lr, mu) = (s.learning_rate as f32, s.proximal_mu as f32);
    for (k, (&(l, f), g)) in slots.iter().zip(grads).enumerate() {
        let p = model.param_mut(l, f).expect("slot exists");
        let w = p.val().inner();
        let next = tessera_learn::fedprox_tensor_step(w, g, anchor.map(|a| a[k].clone()), lr, mu);
        let updated = Tensor::from_inner(next).require_grad();
        *p = burn::module::Param::initialized(p.id, updated).set_require_grad(true);
    }
}

/// Forward a whole split in chunks and compute metrics; no gradients kept.
pub(crate) fn evaluate_model(model: &TabularMlp, ds: &Dataset, device: &Device) -> Result<EvalMetrics, LearnError> {
    const CHUNK: usize = 4096;
    let c = ds.num_classes;
    let mut probs = Vec::with_capacity(ds.len() * c);
    let mut nll = 0.0f64;
    let rows: Vec<usize> = (0..ds.len()).collect();
    for chunk in rows.chunks(CHUNK) {
        let (x, y) = ds.gather(chunk);
        let logits = model.forward(tensor2(x, chunk.len(), ds.num_features, device)).detach();
        let logp = to_vec(log_softmax(logits.clone(), 1).inner())?;
        for (row, &label) in logp.chunks(c).zip(&y) {
            nll -= row[label as usize] as f64;
        }
        probs.extend(to_vec(softmax(logits, 1).inner())?);
    }
    if probs.iter().any(|p| !p.is_finite()) {
        return Err(LearnError::Diverged { what: "prediction" });
    }
    Ok(eval_metrics(&probs, &ds.labels, c, nll / ds.len() as f64))
}
