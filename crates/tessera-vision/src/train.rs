//! Training: the head on cached backbone features (the cheap path, used when
//! the backbone is fully frozen and nothing is augmented), and the full
//! transfer model on images otherwise. Adam on cross-entropy, seeded batch
//! order. Loss curves are aggregates; no per-example value is reported.

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tessera_core::EvalMetrics;

use crate::augment::Augmenter;
use crate::dataset::{ImageDataset, Preprocess};
use crate::efficientnet::{EfficientNetLite0, FEATURE_DIM};
use crate::error::{Result, VisionError};
use crate::frozen::{FeatureExtractor, is_host_device};
use crate::metrics::classification_metrics;
use crate::nhwc::tensor_values;
use crate::transfer::TransferModel;
use crate::tune::{HostFineTuner, Tape};

/// Settings of the crate's own Adam training loops (not a federated round's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the data; at least 1.
    pub epochs: usize,
    /// Examples per Adam step; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Adam's step size; positive and finite.
    pub learning_rate: f64,
    /// Seeds the batch order (epoch `e` uses `seed + e`).
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { epochs: 20, batch_size: 64, learning_rate: 1e-3, seed: 0 }
    }
}

impl TrainConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(VisionError::InvalidConfig("epochs, batch_size and learning_rate must be positive".into()));
        }
        Ok(())
    }
}

/// Reads a one-element tensor (a batch loss) back to the host.
pub(crate) fn scalar(t: &Tensor<1>) -> Result<f64> {
    t.clone().try_into_scalar::<f32>().map(f64::from).map_err(|e| VisionError::Tensor(format!("{e:?}")))
}

/// Pooled backbone features of a data set, computed once in eval mode.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureCache {
    features: Vec<f32>,
    labels: Vec<usize>,
    num_classes: usize,
}

impl FeatureCache {
    /// Runs `backbone` (inference mode, no autodiff) over `data` in batches.
    pub fn extract(
        backbone: &EfficientNetLite0,
        data: &ImageDataset,
        preprocess: &Preprocess,
        batch_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(VisionError::InvalidConfig("batch_size must be positive".into()));
        }
        // Batch norms folded into the convolutions; channels-last kernels on a CPU.
        let backbone = FeatureExtractor::new(&backbone.valid(), device)?;
        let mut features = Vec::with_capacity(data.len() * FEATURE_DIM);
        for batch in data.batches(batch_size, None)? {
            let x = preprocess.batch(data, &batch, device)?;
            features.extend(backbone.features(x)?);
        }
        Ok(Self { features, labels: data.labels().to_vec(), num_classes: data.num_classes() })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no example was extracted.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All pooled features, `len() x FEATURE_DIM` row-major.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// The label of every example, in the data set's order.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The features of the examples at `indices`, in that order.
    pub(crate) fn gather(&self, indices: &[usize]) -> Vec<f32> {
        let mut x = Vec::with_capacity(indices.len() * FEATURE_DIM);
        for &i in indices {
            x.extend_from_slice(&self.features[i * FEATURE_DIM..(i + 1) * FEATURE_DIM]);
        }
        x
    }

    fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let mut x = Vec::with_capacity(indices.len() * FEATURE_DIM);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.features[i * FEATURE_DIM..(i + 1) * FEATURE_DIM]);
            y.push(self.labels[i] as i64);
        }
        (
            Tensor::from_data(TensorData::new(x, [indices.len(), FEATURE_DIM]), device),
            Tensor::from_data(TensorData::new(y, [indices.len()]), device),
        )
    }

    fn order(&self, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        order.chunks(batch_size).map(<[usize]>::to_vec).collect()
    }
}

/// Trains `head` on cached features; returns the trained head (on `device`,
/// without autodiff) and the mean training loss of each epoch.
pub fn train_head(
    head: Linear,
    cache: &FeatureCache,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<(Linear, Vec<f64>)> {
    cfg.validate()?;
    if cache.is_empty() {
        return Err(VisionError::EmptyDataset);
    }
    let ad = device.clone().autodiff();
    let mut head = head.fork(&ad).train();
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut curve = Vec::with_capacity(cfg.epochs);
    for epoch in 0..cfg.epochs {
        let mut total = 0.0;
        for batch in cache.order(cfg.batch_size, cfg.seed.wrapping_add(epoch as u64)) {
            let (x, y) = cache.batch(&batch, &ad);
            let loss = loss_fn.forward(head.forward(x), y);
            total += scalar(&loss)? * batch.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(cfg.learning_rate, head, grads);
        }
        curve.push(total / cache.len() as f64);
    }
    Ok((head.valid(), curve))
}

/// Accuracy, loss, balanced accuracy, macro F1/AUC and confusion of `head` on cached features.
pub fn evaluate_head(head: &Linear, cache: &FeatureCache, device: &Device) -> Result<EvalMetrics> {
    if cache.is_empty() {
        return Err(VisionError::EmptyDataset);
    }
    let head = head.valid();
    let mut probs = Vec::with_capacity(cache.len() * cache.num_classes);
    let all: Vec<usize> = (0..cache.len()).collect();
    for batch in all.chunks(512) {
        let (x, _) = cache.batch(batch, device);
        let p = softmax(head.forward(x), 1)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| VisionError::Tensor(format!("{e:?}")))?;
        probs.extend(p);
    }
    classification_metrics(&probs, &cache.labels, cache.num_classes)
}

/// Adam steps on a [`TransferModel`], one batch of images at a time. On a
/// CPU device the trunk's part of each step runs in the crate's own kernels
/// (channels-last, by hand) and burn does the head, the loss and Adam; on
/// any other device the whole step is burn autodiff. Both compute the same
/// gradients (`tune::tests`).
pub struct TransferTrainer {
    /// The model on the autodiff device.
    model: TransferModel,
    optim: ModuleOptimizer,
    loss_fn: CrossEntropyLoss,
    device: Device,
    host: Option<(HostFineTuner, Tape)>,
}

impl TransferTrainer {
    /// Moves `model` to the autodiff device and prepares Adam; on a CPU
    /// device also the channels-last kernels that compute the trunk's part.
    pub fn new(model: TransferModel, device: &Device) -> Result<Self> {
        // The channels-last trunk has no adapters: LoRA runs through burn's autodiff.
        let host = if is_host_device(device) && model.lora().is_none() {
            Some((HostFineTuner::new(&model)?, Tape::default()))
        } else {
            None
        };
        let ad = device.clone().autodiff();
        Ok(Self {
            model: model.fork(&ad).train(),
            optim: AdamConfig::new().init(),
            loss_fn: CrossEntropyLossConfig::new().init(&ad),
            device: device.clone(),
            host,
        })
    }

    /// One Adam step on `images` (`[n, c, h, w]`, on the trainer's device)
    /// with `labels`; returns the batch's mean loss.
    pub fn step(&mut self, images: Tensor<4>, labels: &[usize], learning_rate: f64) -> Result<f64> {
        let n = labels.len();
        if images.dims()[0] != n || n == 0 {
            return Err(VisionError::InvalidConfig(format!("{} images with {n} labels", images.dims()[0])));
        }
        let ad = self.device.clone().autodiff();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect(), [n]), &ad);
        let model = self.model.clone();
        let (loss, grads) = match &mut self.host {
            Some((tuner, tape)) => {
                let dims = images.dims();
                let features = tuner.forward(&tensor_values(images)?, dims, tape)?;
                let f = Tensor::<2>::from_data(TensorData::new(features, [n, FEATURE_DIM]), &ad).require_grad();
                let loss = self.loss_fn.forward(model.head.forward(f.clone()), y);
                let mut grads = loss.backward();
                let df = f
                    .grad_remove(&mut grads)
                    .ok_or_else(|| VisionError::Tensor("no gradient at the pooled features".into()))?;
                let mut params = GradientsParams::from_grads(grads, &model.head);
                tuner.backward(tape, &tensor_values(df)?)?.register(&mut params, &self.device);
                (loss, params)
            }
            None => {
                let loss = self.loss_fn.forward(model.forward(images.autodiff()), y);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                (loss, grads)
            }
        };
        let mean = scalar(&loss)?;
        self.model = self.optim.step(learning_rate, model, grads);
        if let Some((tuner, _)) = &mut self.host {
            tuner.refresh(&self.model)?;
        }
        Ok(mean)
    }

    /// The trained model, on the trainer's device, without autodiff.
    pub fn into_model(self) -> TransferModel {
        self.model.valid()
    }
}

/// Trains a transfer model on images, end to end through its trainable
/// blocks; `augment` (when given) draws a fresh view of every example each
/// epoch. Without trainable blocks and without augmentation prefer
/// [`fit_transfer`], which caches features instead.
pub fn train_on_images(
    model: TransferModel,
    data: &ImageDataset,
    preprocess: &Preprocess,
    augment: Option<&Augmenter>,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<(TransferModel, Vec<f64>)> {
    cfg.validate()?;
    let mut trainer = TransferTrainer::new(model, device)?;
    let shape = data.image_shape();
    let mut curve = Vec::with_capacity(cfg.epochs);
    for epoch in 0..cfg.epochs {
        let mut total = 0.0;
        for batch in data.batches(cfg.batch_size, Some(cfg.seed.wrapping_add(epoch as u64)))? {
            let images: Vec<Vec<f32>> = batch
                .iter()
                .map(|&i| {
                    let img = data.image(i).ok_or(VisionError::EmptyDataset)?;
                    match augment {
                        Some(a) => a.augment(img, shape, epoch as u64, i as u64),
                        None => Ok(img.to_vec()),
                    }
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
            let x = preprocess.batch_from(&refs, shape, device)?;
            let labels: Vec<usize> = batch.iter().map(|&i| data.labels()[i]).collect();
            total += trainer.step(x, &labels, cfg.learning_rate)? * batch.len() as f64;
        }
        curve.push(total / data.len() as f64);
    }
    Ok((trainer.into_model(), curve))
}

/// Trains the trainable part of `model`, choosing the path: cached features
/// when the backbone is fully frozen and there is no augmentation (features
/// are computed once, not per epoch), images otherwise.
pub fn fit_transfer(
    model: TransferModel,
    data: &ImageDataset,
    preprocess: &Preprocess,
    augment: Option<&Augmenter>,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<(TransferModel, Vec<f64>)> {
    let augmenting = augment.is_some_and(|a| !a.config().is_identity());
    if model.backbone_frozen() && !augmenting {
        let cache = FeatureCache::extract(&model.backbone, data, preprocess, cfg.batch_size, device)?;
        let TransferModel { backbone, head, trainable_blocks, lora } = model;
        let (head, curve) = train_head(head, &cache, cfg, device)?;
        Ok((TransferModel { backbone, head, trainable_blocks, lora }, curve))
    } else {
        train_on_images(model, data, preprocess, augment, cfg, device)
    }
}

/// Evaluates a transfer model on images (inference mode).
pub fn evaluate_transfer(
    model: &TransferModel,
    data: &ImageDataset,
    preprocess: &Preprocess,
    batch_size: usize,
    device: &Device,
) -> Result<EvalMetrics> {
    // (The feature extractor merges LoRA adapters into their convolutions.)
    let cache = FeatureCache::extract(&model.backbone, data, preprocess, batch_size, device)?;
    evaluate_head(&model.head, &cache, device)
}
