//! A small convolutional classifier for low-resolution images (MNIST-sized
//! and up), trained from scratch: two conv-ReLU-maxpool stages, a 4x4
//! adaptive average pool and a two-layer MLP. About 45k parameters for
//! 10 classes, all of them trainable and shared as `ModelParams`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_core::{EvalMetrics, ModelParams};

use crate::dataset::{ImageDataset, Preprocess};
use crate::efficientnet::seeded_he_uniform;
use crate::error::{Result, VisionError};
use crate::metrics::classification_metrics;
use crate::params::{assign_params, collect_params};
use crate::train::{TrainConfig, scalar};

/// The from-scratch image classifier; every tensor is trainable and exchanged.
#[derive(Module, Debug)]
pub struct SmallCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    gap: AdaptiveAvgPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl SmallCnn {
    /// `in_channels` (1 or 3) images into `num_classes` logits; weights from `seed`.
    pub fn new(in_channels: usize, num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        if in_channels == 0 || num_classes < 2 {
            return Err(VisionError::InvalidConfig("SmallCnn needs input channels and at least two classes".into()));
        }
        let conv = |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Same).init(device);
        let model = Self {
            conv1: conv(in_channels, 16),
            conv2: conv(16, 32),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            gap: AdaptiveAvgPool2dConfig::new([4, 4]).init(),
            fc1: LinearConfig::new(32 * 16, 64).init(device),
            fc2: LinearConfig::new(64, num_classes).init(device),
        };
        Ok(seeded_he_uniform(model, &mut ChaCha8Rng::seed_from_u64(seed), true))
    }

    /// Logits `[n, classes]` of images `[n, c, h, w]`.
    pub(crate) fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(relu(self.conv1.forward(images)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x = self.gap.forward(x);
        let [n, c, h, w] = x.dims();
        let x = relu(self.fc1.forward(x.reshape([n, c * h * w])));
        self.fc2.forward(x)
    }

    /// All parameters, named by module path (`conv1.weight`, `fc2.bias`, ...).
    pub fn params(&self) -> Result<ModelParams> {
        collect_params(self, &|_| true)
    }

    /// Installs `params`, which must have exactly [`Self::params`]' layout.
    pub fn with_params(self, params: &ModelParams) -> Result<Self> {
        if params.layout() != self.params()?.layout() {
            return Err(VisionError::InvalidConfig("parameter layout differs from SmallCnn's".into()));
        }
        assign_params(self, params)
    }

    /// Adam on cross-entropy over `data`; returns the model (no autodiff) and the per-epoch mean loss.
    pub fn fit(
        self,
        data: &ImageDataset,
        preprocess: &Preprocess,
        cfg: &TrainConfig,
        device: &Device,
    ) -> Result<(Self, Vec<f64>)> {
        cfg.validate()?;
        let ad = device.clone().autodiff();
        let mut model = self.fork(&ad).train();
        let mut optim = AdamConfig::new().init();
        let loss_fn = CrossEntropyLossConfig::new().init(&ad);
        let mut curve = Vec::with_capacity(cfg.epochs);
        for epoch in 0..cfg.epochs {
            let mut total = 0.0;
            for batch in data.batches(cfg.batch_size, Some(cfg.seed.wrapping_add(epoch as u64)))? {
                let x = preprocess.batch(data, &batch, &ad)?;
                let labels: Vec<i64> = batch.iter().map(|&i| data.labels()[i] as i64).collect();
                let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch.len()]), &ad);
                let loss = loss_fn.forward(model.forward(x), y);
                total += scalar(&loss)? * batch.len() as f64;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(cfg.learning_rate, model, grads);
            }
            curve.push(total / data.len() as f64);
        }
        Ok((model.valid(), curve))
    }

    /// Loss and classification metrics over `data` (inference mode, batches of 256).
    pub fn evaluate(&self, data: &ImageDataset, preprocess: &Preprocess, device: &Device) -> Result<EvalMetrics> {
        let model = self.valid();
        let mut probs = Vec::with_capacity(data.len() * data.num_classes());
        for batch in data.batches(256, None)? {
            let x = preprocess.batch(data, &batch, device)?;
            let p = softmax(model.forward(x), 1)
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| VisionError::Tensor(format!("{e:?}")))?;
            probs.extend(p);
        }
        classification_metrics(&probs, data.labels(), data.num_classes())
    }
}
