//! Transfer learning: a pretrained EfficientNet-Lite0 backbone, frozen, with
//! a new `Linear(1280 -> classes)` head; optionally the last `k` MBConv
//! blocks (and the head convolution) are trainable too, either whole or,
//! with LoRA ([`TransferModel::with_lora`]), through low-rank adapters on
//! their 1x1 convolutions. Only the trainable part crosses the wire, as
//! `ModelParams` named by module path.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tessera_core::{LoraConfig, ModelParams, ParamLayout};

use crate::efficientnet::{EfficientNetLite0, FEATURE_DIM, NUM_BLOCKS, load_pytorch};
use crate::error::{Result, VisionError};
use crate::lora::{attach_adapters, merge_adapters};
use crate::params::{assign_params, collect_params};

/// A fresh classification head, initialised from `seed` (uniform
/// `+-1/sqrt(1280)` weights, zero bias) independently of burn's global RNG.
pub fn seeded_head(num_classes: usize, seed: u64, device: &Device) -> Result<Linear> {
    if num_classes < 2 {
        return Err(VisionError::InvalidConfig("a classifier needs at least two classes".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bound = 1.0 / (FEATURE_DIM as f32).sqrt();
    let w: Vec<f32> = (0..FEATURE_DIM * num_classes).map(|_| rng.gen_range(-bound..bound)).collect();
    let mut head = LinearConfig::new(FEATURE_DIM, num_classes).init(device);
    head.weight = head.weight.map(|t| Tensor::from_data(TensorData::new(w, [FEATURE_DIM, num_classes]), &t.device()));
    head.bias = head.bias.map(|b| b.map(|t| Tensor::zeros([num_classes], &t.device())));
    Ok(head)
}

/// EfficientNet-Lite0 with a new classification head; see the module docs
/// for which tensors train.
#[derive(Module, Debug)]
pub struct TransferModel {
    /// The trunk; frozen except its last `trainable_blocks` blocks.
    pub backbone: EfficientNetLite0,
    /// `Linear(1280 -> classes)`, always trainable.
    pub head: Linear,
    /// How many of the last MBConv blocks are trainable (0: backbone fully frozen).
    pub(crate) trainable_blocks: usize,
    /// With LoRA, those blocks train through adapters only (their weights stay frozen).
    #[module(skip)]
    pub(crate) lora: Option<LoraConfig>,
}

impl TransferModel {
    /// Wraps `backbone`, freezing all of it except the last `trainable_blocks`
    /// blocks plus the head convolution (when `trainable_blocks > 0`).
    /// Batch norm stays in inference mode everywhere: its statistics are
    /// never updated, which keeps small federated batches from skewing them.
    pub fn new(
        backbone: EfficientNetLite0,
        num_classes: usize,
        trainable_blocks: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if trainable_blocks > NUM_BLOCKS {
            return Err(VisionError::InvalidConfig(format!("trainable_blocks {trainable_blocks} > {NUM_BLOCKS}")));
        }
        let mut backbone = backbone.freeze();
        if trainable_blocks > 0 {
            for block in backbone.blocks.iter_mut().skip(NUM_BLOCKS - trainable_blocks) {
                *block = block.clone().set_require_grad(true);
            }
            backbone.conv_head = backbone.conv_head.set_require_grad(true);
            backbone.bn1 = backbone.bn1.set_require_grad(true);
        }
        Ok(Self { backbone, head: seeded_head(num_classes, seed, device)?, trainable_blocks, lora: None })
    }

    /// Trains the last `trainable_blocks` blocks through low-rank adapters
    /// instead: their weights (and the head convolution's, and every batch
    /// norm) freeze again, and adapters seeded from `seed` are added to their
    /// 1x1 convolutions and to the head convolution. `B = 0`, so the model's
    /// output is unchanged. Only the adapters and the linear head then
    /// train and travel.
    pub fn with_lora(self, lora: LoraConfig, seed: u64) -> Result<Self> {
        if self.trainable_blocks == 0 || lora.rank == 0 || !(lora.alpha.is_finite() && lora.alpha > 0.0) {
            return Err(VisionError::InvalidConfig(
                "LoRA needs trainable_blocks >= 1, rank >= 1 and a positive finite alpha".into(),
            ));
        }
        if self.lora.is_some() {
            return Err(VisionError::InvalidConfig("the model already has adapters".into()));
        }
        let backbone = attach_adapters(self.backbone.freeze(), self.trainable_blocks, &lora, seed)?;
        Ok(Self { backbone, lora: Some(lora), ..self })
    }

    /// The same network with every adapter merged into its convolution: a
    /// plain EfficientNet-Lite0 with this model's forward (up to float
    /// rounding), for inference and export. A model without adapters comes
    /// back as it is.
    pub fn merged(&self) -> Self {
        let mut m = self.clone();
        m.backbone = merge_adapters(m.backbone);
        m.lora = None;
        m
    }

    /// The LoRA settings, when the model has adapters.
    pub fn lora(&self) -> Option<LoraConfig> {
        self.lora
    }

    /// Loads the backbone from the PyTorch checkpoint (the ImageNet `_fc`
    /// is ignored); any missing or mis-shaped backbone tensor is an error.
    pub fn from_pretrained(
        weights: &Path,
        num_classes: usize,
        trainable_blocks: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut model = Self::new(EfficientNetLite0::new(device), num_classes, trainable_blocks, seed, device)?;
        load_pytorch(&mut model, weights, &["head."])?;
        Ok(model)
    }

    /// Whether features can be cached: nothing before the head trains.
    pub(crate) fn backbone_frozen(&self) -> bool {
        self.trainable_blocks == 0
    }

    /// The first block that anything trains in (adapters or weights);
    /// everything before it is a fixed function of the image.
    pub(crate) fn first_trained_block(&self) -> usize {
        NUM_BLOCKS - self.trainable_blocks
    }

    /// Logits `[n, classes]` of images `[n, 3, h, w]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.backbone.features(images))
    }

    /// Is the tensor at `path` part of the trainable set? Batch-norm running
    /// statistics never are.
    pub(crate) fn is_trainable(&self, path: &str) -> bool {
        if path.ends_with("running_mean") || path.ends_with("running_var") {
            return false;
        }
        if path.starts_with("head.") {
            return true;
        }
        if self.trainable_blocks == 0 {
            return false;
        }
        if self.lora.is_some() {
            // Adapter paths: `backbone.blocks.15.project_lora.lora_a.weight`, `backbone.head_lora.lora_b.weight`.
            return path.contains("_lora.");
        }
        if path.starts_with("backbone.conv_head.") || path.starts_with("backbone.bn1.") {
            return true;
        }
        path.strip_prefix("backbone.blocks.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= NUM_BLOCKS - self.trainable_blocks)
    }

    /// The trainable tensors, in module order, named by module path.
    pub fn trainable_params(&self) -> Result<ModelParams> {
        collect_params(self, &|p| self.is_trainable(p))
    }

    pub(crate) fn trainable_layout(&self) -> Result<ParamLayout> {
        Ok(self.trainable_params()?.layout())
    }

    /// Every tensor that is *not* trainable (frozen weights and all batch-norm
    /// statistics); what must stay bit-identical through training.
    pub fn frozen_params(&self) -> Result<ModelParams> {
        collect_params(self, &|p| !self.is_trainable(p))
    }

    /// Replaces the trainable tensors. `params` must have exactly the
    /// trainable layout: a missing, unknown, frozen or mis-shaped tensor is an error.
    pub fn with_trainable_params(self, params: &ModelParams) -> Result<Self> {
        let layout = self.trainable_layout()?;
        for t in &params.tensors {
            if !self.is_trainable(&t.name) {
                return Err(VisionError::UnknownParam { name: t.name.clone() });
            }
        }
        if let Some((name, _)) = layout.entries.iter().find(|(n, _)| params.get(n).is_none()) {
            return Err(VisionError::MissingParam { name: name.clone() });
        }
        assign_params(self, params)
    }
}
