//! The member's local model for images: a `tessera-vision` network behind
//! `tessera_learn::LocalModel`, trained on the member's own train split and
//! evaluated on its own test split.
//!
//! Two shapes of model: a frozen EfficientNet-Lite0 backbone (pretrained,
//! or seeded-random) with a trainable linear head, optionally with the last
//! `k` blocks unfrozen; or a SmallCnn trained end to end. Only the trainable
//! tensors are exchanged. With the backbone fully frozen and no
//! augmentation, each example's embedding is computed once per site and
//! reused across epochs and rounds; the head then trains by plain SGD on
//! the cached features, and record-level DP-SGD clips each example's head
//! gradient in closed form and adds `tessera_learn`'s DP-SGD noise, exactly
//! as the tabular model does. The SmallCnn's DP-SGD, and that of
//! EfficientNet-Lite0 with unfrozen blocks (on a CPU backend), run
//! `tessera_learn::dp_sgd` (`dp`): the SmallCnn with one backward pass per
//! sampled example, the unfrozen blocks with one batched pass per group of
//! sampled examples, clipped by ghost norms. With LoRA (`[model] lora`), the last `k` blocks train through
//! adapters on their 1x1 convolutions: only the adapters and the head are
//! trained, exchanged and, under DP-SGD, clipped per example.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tessera_core::{DpSettings, EvalMetrics, ModelParams, ParamTensor, TrainSettings, TrainedUpdate};
use tessera_learn::{
    ComputeBackend, DEFAULT_BACKEND, DpNoise, LocalError, LocalModel, fedprox_step, validate_train_settings,
};

use crate::frozen::is_host_device;
use crate::metrics::classification_metrics;
use tessera_core::{BackboneInit, VisionArchitecture, VisionModelConfig};

use crate::spec::{self, VisionNet};
use crate::{
    Augmenter, EfficientNetLite0, FEATURE_DIM, FeatureCache, FeatureExtractor, HeadWeights, ImageDataset, Preprocess,
    TrainConfig, VisionError, evaluate_transfer, train_on_images,
};

/// Separates the seeded noise stream from the sampling stream (test mode only).
const NOISE_STREAM: u64 = 0x6e6f_6973_6500_0002;
const HEAD_WEIGHT: &str = "head.weight";
const HEAD_BIAS: &str = "head.bias";

/// A member's image model over its own split.
pub struct VisionModel {
    cfg: VisionModelConfig,
    net: VisionNet,
    train: ImageDataset,
    test: ImageDataset,
    preprocess: Preprocess,
    device: Device,
    train_cache: Option<FeatureCache>,
    test_cache: Option<FeatureCache>,
    /// The frozen backbone prepared for feature extraction (batch norms
    /// folded in; channels-last on a CPU device), built on the first
    /// augmented batch; head-only training never changes the backbone, so
    /// it stays valid for the model's lifetime.
    folded: Option<FeatureExtractor>,
    extractions: usize,
    /// DP-SGD's noise, built once for the run's settings.
    noise: DpNoise,
    /// Non-finite per-example gradients zeroed so far (local only).
    zeroed_gradients: u64,
}

/// Shows shapes and counts only, never an example.
impl std::fmt::Debug for VisionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionModel")
            .field("kind", &self.cfg.kind)
            .field("train_examples", &self.train.len())
            .field("test_examples", &self.test.len())
            .field("feature_extractions", &self.extractions)
            .finish_non_exhaustive()
    }
}

impl VisionModel {
    /// Wraps `net` (from [`VisionNet::build`] with the same `cfg`, on
    /// `device`) around the member's train and test splits, checking that
    /// their classes are the ones the run expects.
    pub fn new(
        net: VisionNet,
        cfg: &VisionModelConfig,
        train: ImageDataset,
        test: ImageDataset,
        device: Device,
    ) -> Result<Self, VisionError> {
        cfg.validate()?;
        for (split, data) in [("train", &train), ("test", &test)] {
            if data.num_classes() != cfg.num_classes {
                return Err(VisionError::InvalidConfig(format!(
                    "the {split} split has {} classes, the run's model expects {}",
                    data.num_classes(),
                    cfg.num_classes
                )));
            }
        }
        if train.class_names() != test.class_names() {
            return Err(VisionError::InvalidConfig("train and test splits name their classes differently".into()));
        }
        Ok(Self {
            preprocess: spec::preprocess(cfg),
            cfg: cfg.clone(),
            net,
            train,
            test,
            device,
            train_cache: None,
            test_cache: None,
            folded: None,
            extractions: 0,
            noise: DpNoise::new(),
            zeroed_gradients: 0,
        })
    }

    /// Builds the network and the model in one go (loads the checkpoint),
    /// on the default CPU backend.
    pub fn from_config(cfg: &VisionModelConfig, train: ImageDataset, test: ImageDataset) -> Result<Self, VisionError> {
        Self::from_config_on(cfg, train, test, DEFAULT_BACKEND)
    }

    /// Like [`Self::from_config`], on the given compute backend (the
    /// member's `backend` setting).
    pub fn from_config_on(
        cfg: &VisionModelConfig,
        train: ImageDataset,
        test: ImageDataset,
        backend: ComputeBackend,
    ) -> Result<Self, VisionError> {
        let device = backend.device();
        if cfg.kind == VisionArchitecture::EfficientnetLite0
            && cfg.backbone == BackboneInit::PretrainedIfPresent
            && !spec::weights_path(cfg).is_file()
        {
            // Members on different backbones would federate one head over
            // different features; say so where an operator will see it.
            tracing::warn!(
                weights = %spec::weights_path(cfg).display(),
                "pretrained weights not found: backbone = \"pretrained_if_present\" falls back to the seeded random \
                 backbone; every member of the run must do the same"
            );
        }
        let net = VisionNet::build(cfg, &device)?;
        Self::new(net, cfg, train, test, device)
    }

    /// DP-SGD examples, over every round so far, whose gradient was not
    /// finite and so contributed zero instead of failing the round. For the
    /// member's own report: a statistic of its data, never sent.
    pub fn zeroed_gradients(&self) -> u64 {
        self.zeroed_gradients
    }

    /// TEST ONLY: derive DP-SGD sampling and noise from the round seed, for
    /// simulations and tests that must be bit-reproducible. Predictable
    /// noise protects nothing.
    pub fn with_seeded_noise(mut self, seeded: bool) -> Self {
        self.noise = if seeded { DpNoise::seeded(NOISE_STREAM) } else { DpNoise::new() };
        self
    }

    /// The network, with the trainable tensors last installed.
    pub fn net(&self) -> &VisionNet {
        &self.net
    }

    /// Training examples on this member.
    pub fn num_train_examples(&self) -> u64 {
        self.train.len() as u64
    }

    /// How many times a split's features went through the backbone: with
    /// caching on this stays at one per split however many rounds run.
    #[cfg(test)]
    pub(crate) fn feature_extractions(&self) -> usize {
        self.extractions
    }

    fn install(&mut self, params: &ModelParams) -> Result<(), VisionError> {
        self.net = self.net.clone().with_trainable_params(params)?;
        Ok(())
    }

    fn backbone(&self) -> Result<&EfficientNetLite0, VisionError> {
        match &self.net {
            VisionNet::Transfer(m) => Ok(&m.backbone),
            VisionNet::Cnn(_) => Err(VisionError::InvalidConfig("the SmallCnn has no backbone".into())),
        }
    }

    fn cache(&mut self, test: bool) -> Result<&FeatureCache, VisionError> {
        let slot_empty = if test { self.test_cache.is_none() } else { self.train_cache.is_none() };
        if slot_empty {
            let data = if test { &self.test } else { &self.train };
            let cache =
                FeatureCache::extract(self.backbone()?, data, &self.preprocess, self.cfg.feature_batch, &self.device)?;
            self.extractions += 1;
            *(if test { &mut self.test_cache } else { &mut self.train_cache }) = Some(cache);
        }
        Ok(if test { self.test_cache.as_ref() } else { self.train_cache.as_ref() }.expect("filled above"))
    }

    /// Head inputs for the training examples `rows`: cached features, or a
    /// fresh augmented view of each example through the frozen backbone.
    fn head_inputs(
        &mut self,
        rows: &[usize],
        augment: Option<&Augmenter>,
        epoch: u64,
    ) -> Result<Vec<f32>, VisionError> {
        let Some(a) = augment else {
            return Ok(self.cache(false)?.gather(rows));
        };
        let shape = self.train.image_shape();
        let views: Vec<Vec<f32>> = rows
            .iter()
            .map(|&i| a.augment(self.train.image(i).ok_or(VisionError::EmptyDataset)?, shape, epoch, i as u64))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[f32]> = views.iter().map(Vec::as_slice).collect();
        let x = self.preprocess.batch_from(&refs, shape, &self.device)?;
        if self.folded.is_none() {
            self.folded = Some(FeatureExtractor::new(self.backbone()?, &self.device)?);
        }
        self.folded.as_ref().expect("filled above").features(x)
    }

    fn labels_of(&self, rows: &[usize]) -> Vec<usize> {
        rows.iter().map(|&i| self.train.labels()[i]).collect()
    }

    /// DP-SGD for models whose per-example gradients need a backward pass
    /// (see [`dp`]): the SmallCnn, EfficientNet-Lite0 with LoRA, and
    /// EfficientNet-Lite0 with unfrozen blocks on a CPU backend.
    fn train_dp_per_example(&mut self, s: &TrainSettings, dp: &DpSettings) -> Result<(), LocalError> {
        let start = self.net.trainable_params().map_err(LocalError::model)?;
        let shape = self.train.image_shape();
        let n = self.train.len();
        match self.net.clone() {
            VisionNet::Cnn(net) => {
                let inner = dp::CnnExamples::new(*net, &self.device, self.preprocess, shape);
                self.net = VisionNet::Cnn(Box::new(self.run_dp_sgd(s, dp, &start, n, inner)?.model));
            }
            VisionNet::Transfer(net) if net.lora().is_some() => {
                let inner = dp::LoraExamples::new(*net, &self.device, self.preprocess, shape);
                self.net = VisionNet::Transfer(Box::new(self.run_dp_sgd(s, dp, &start, n, inner)?.model));
            }
            VisionNet::Transfer(net) => {
                if !is_host_device(&self.device) {
                    return Err(LocalError::Unsupported(
                        "record-level DP-SGD with unfrozen EfficientNet-Lite0 blocks runs on a CPU backend \
                         (flex or ndarray); use trainable_blocks = 0 or client-level DP on this backend"
                            .into(),
                    ));
                }
                let inner = dp::TransferExamples::new(*net, self.preprocess, shape).map_err(LocalError::model)?;
                self.net = VisionNet::Transfer(Box::new(self.run_dp_sgd(s, dp, &start, n, inner)?.model));
            }
        }
        Ok(())
    }

    /// `tessera_learn::dp_sgd` over this member's (augmented) training
    /// images, with `inner` computing each one's gradient; hands `inner`
    /// back holding the trained model.
    fn run_dp_sgd<E: dp::PerImage>(
        &mut self,
        s: &TrainSettings,
        dp: &DpSettings,
        start: &ModelParams,
        n: usize,
        inner: E,
    ) -> Result<E, LocalError> {
        let mut round = self.noise.round_for(dp, s, start.numel())?;
        let augment = spec::augmenter(&self.cfg, s.seed).map_err(LocalError::model)?;
        let mut examples = dp::Sampled::new(&self.train, augment.as_ref(), inner);
        let trained = tessera_learn::dp_sgd(start, s, n, &mut round, &mut examples);
        self.zeroed_gradients += round.zeroed_gradients();
        trained?;
        Ok(examples.into_inner())
    }

    /// Plain SGD (non-private) or DP-SGD on the head. Returns the mean loss
    /// (0 under DP: it would be an unprivatized statistic).
    fn train_head(&mut self, s: &TrainSettings, dp: Option<&DpSettings>) -> Result<f64, LocalError> {
        let err = |e: VisionError| LocalError::model(e);
        let start = self.net.trainable_params().map_err(err)?;
        let mut head = head_weights(&start)?;
        let anchor = head.clone();
        let augment = spec::augmenter(&self.cfg, s.seed).map_err(err)?;
        let n = self.train.len();
        let mut mean_loss = 0.0;
        match dp {
            None => {
                let (mut loss_sum, mut seen) = (0.0, 0usize);
                for epoch in 0..u64::from(s.local_epochs) {
                    let mut order: Vec<usize> = (0..n).collect();
                    order.shuffle(&mut ChaCha8Rng::seed_from_u64(s.seed.wrapping_add(epoch)));
                    for rows in order.chunks(s.batch_size as usize) {
                        let x = self.head_inputs(rows, augment.as_ref(), epoch).map_err(err)?;
                        let g = head.gradient_sum(&x, &self.labels_of(rows), None, &self.device).map_err(err)?;
                        loss_sum += g.loss_sum;
                        seen += rows.len();
                        sgd_step(&mut head, &anchor, &g.weight, &g.bias, 1.0 / rows.len() as f32, s);
                    }
                }
                mean_loss = loss_sum / seen.max(1) as f64;
            }
            Some(dp) => {
                let mut round = self.noise.round_for(dp, s, start.numel())?;
                let inv_expected = round.inverse_batch(n);
                // The accountant's step count (one step under distributed noise).
                let (epochs, steps) = (round.cfg.epochs(s.local_epochs), round.cfg.steps_per_epoch());
                let split = head.weight.len();
                for epoch in 0..u64::from(epochs) {
                    for _ in 0..steps {
                        let rows = round.sampler.sample(n);
                        let mut flat = vec![0.0f32; split + head.bias.len()];
                        if !rows.is_empty() {
                            let x = self.head_inputs(&rows, augment.as_ref(), epoch).map_err(err)?;
                            let labels = self.labels_of(&rows);
                            let g = head.gradient_sum(&x, &labels, Some(round.cfg.clip_norm), &self.device);
                            let g = g.map_err(err)?;
                            round.count_zeroed(g.zeroed);
                            flat[..split].copy_from_slice(&g.weight);
                            flat[split..].copy_from_slice(&g.bias);
                        }
                        round.add_noise(&mut flat)?;
                        let (w, b) = flat.split_at(split);
                        sgd_step(&mut head, &anchor, w, b, inv_expected, s);
                    }
                }
                self.zeroed_gradients += round.zeroed_gradients();
            }
        }
        let params = head_params(&start, head);
        params.check_finite().map_err(|_| LocalError::Diverged("head parameter"))?;
        self.install(&params).map_err(err)?;
        Ok(mean_loss)
    }

    /// End-to-end training (trainable backbone blocks or the SmallCnn) with
    /// the crate's Adam trainers; no DP and no FedProx on this path.
    fn train_end_to_end(&mut self, s: &TrainSettings) -> Result<f64, LocalError> {
        let err = |e: VisionError| LocalError::model(e);
        let augment = spec::augmenter(&self.cfg, s.seed).map_err(err)?;
        let mut tc = TrainConfig {
            epochs: s.local_epochs as usize,
            batch_size: s.batch_size as usize,
            learning_rate: s.learning_rate,
            seed: s.seed,
        };
        let curve = match self.net.clone() {
            VisionNet::Transfer(m) => {
                let (m, curve) =
                    train_on_images(*m, &self.train, &self.preprocess, augment.as_ref(), &tc, &self.device)
                        .map_err(err)?;
                self.net = VisionNet::Transfer(Box::new(m));
                curve
            }
            VisionNet::Cnn(m) => {
                let mut m = *m;
                // SmallCnn::fit takes no augmenter: one epoch per fresh view.
                let mut curve = Vec::new();
                match &augment {
                    None => (m, curve) = m.fit(&self.train, &self.preprocess, &tc, &self.device).map_err(err)?,
                    Some(a) => {
                        let epochs = tc.epochs;
                        tc.epochs = 1;
                        for epoch in 0..epochs as u64 {
                            let view = a.augment_dataset(&self.train, epoch).map_err(err)?;
                            tc.seed = s.seed.wrapping_add(epoch);
                            let (next, c) = m.fit(&view, &self.preprocess, &tc, &self.device).map_err(err)?;
                            m = next;
                            curve.extend(c);
                        }
                    }
                }
                self.net = VisionNet::Cnn(Box::new(m));
                curve
            }
        };
        Ok(curve.iter().sum::<f64>() / curve.len().max(1) as f64)
    }
}

/// Every parameter's gradient in module order (the order of
/// `ModelParams::to_flat` for the same module), zeros where there is none.
pub(crate) fn flat_grads<M: Module>(module: &M, grads: &Gradients) -> Result<Vec<f32>, String> {
    struct Collect<'a> {
        grads: &'a Gradients,
        out: Vec<f32>,
        error: Option<String>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let n = t.shape().num_elements();
            match t.grad(self.grads).map(|g| g.into_data().try_into_vec::<f32>()) {
                Some(Ok(v)) if v.len() == n => self.out.extend(v),
                Some(_) => {
                    self.error.get_or_insert_with(|| "unreadable parameter gradient".into());
                }
                None => self.out.extend(std::iter::repeat_n(0.0, n)),
            }
        }
    }
    let mut c = Collect { grads, out: Vec::new(), error: None };
    module.visit(&mut c);
    match c.error {
        Some(e) => Err(e),
        None => Ok(c.out),
    }
}

/// The head tensors of an exchanged model.
fn head_weights(params: &ModelParams) -> Result<HeadWeights, LocalError> {
    let (Some(w), Some(b)) = (params.get(HEAD_WEIGHT), params.get(HEAD_BIAS)) else {
        return Err(LocalError::Unsupported("the model has no `head.weight`/`head.bias`".into()));
    };
    let classes = b.data.len();
    HeadWeights::new(w.data.len() / classes.max(1), classes, w.data.clone(), b.data.clone()).map_err(LocalError::model)
}

fn head_params(like: &ModelParams, head: HeadWeights) -> ModelParams {
    let shape = |name: &str| like.get(name).map(|t| t.shape.clone()).unwrap_or_default();
    ModelParams::new(vec![
        ParamTensor { name: HEAD_WEIGHT.into(), shape: shape(HEAD_WEIGHT), data: head.weight },
        ParamTensor { name: HEAD_BIAS.into(), shape: shape(HEAD_BIAS), data: head.bias },
    ])
}

/// The shared FedProx step on the head's weight and bias.
fn sgd_step(head: &mut HeadWeights, anchor: &HeadWeights, gw: &[f32], gb: &[f32], scale: f32, s: &TrainSettings) {
    let (lr, mu) = (s.learning_rate as f32, s.proximal_mu as f32);
    fedprox_step(&mut head.weight, &anchor.weight, gw, scale, lr, mu);
    fedprox_step(&mut head.bias, &anchor.bias, gb, scale, lr, mu);
}

impl LocalModel for VisionModel {
    fn train(
        &mut self,
        model: &ModelParams,
        settings: &TrainSettings,
        dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, LocalError> {
        validate_train_settings(settings)?;
        self.install(model).map_err(LocalError::model)?;
        let mean_loss = if self.net.head_only() {
            self.train_head(settings, dp)?
        } else if let Some(dp) = dp {
            self.train_dp_per_example(settings, dp)?;
            0.0
        } else if settings.proximal_mu > 0.0 {
            return Err(LocalError::Unsupported(
                "FedProx (proximal_mu > 0) is supported for the head-only image model only".into(),
            ));
        } else {
            self.train_end_to_end(settings)?
        };
        let params = self.net.trainable_params().map_err(LocalError::model)?;
        params.check_finite().map_err(|_| LocalError::Diverged("parameter"))?;
        Ok(TrainedUpdate { params, num_examples: self.num_train_examples(), mean_loss })
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, LocalError> {
        self.install(model).map_err(LocalError::model)?;
        let err = |e: VisionError| LocalError::model(e);
        if self.net.head_only() {
            let head = head_weights(model)?;
            if head.dim != FEATURE_DIM {
                return Err(LocalError::Unsupported(format!(
                    "head takes {} features, the backbone gives {FEATURE_DIM}",
                    head.dim
                )));
            }
            let device = self.device.clone();
            let cache = self.cache(true).map_err(err)?;
            let probs = head.probabilities(cache.features(), &device).map_err(err)?;
            return classification_metrics(&probs, cache.labels(), head.classes).map_err(err);
        }
        match &self.net {
            VisionNet::Transfer(m) => {
                evaluate_transfer(m, &self.test, &self.preprocess, self.cfg.feature_batch, &self.device).map_err(err)
            }
            VisionNet::Cnn(m) => m.evaluate(&self.test, &self.preprocess, &self.device).map_err(err),
        }
    }
}

mod dp;
#[cfg(test)]
mod lora_tests;
#[cfg(test)]
mod tests;
