//! Building an image network from the `[model]` section
//! ([`tessera_core::VisionModelConfig`], plain data): the input pipeline, the
//! checkpoint path, the augmenter, and the network itself. Members and the
//! aggregator both use it: the aggregator builds the same network only to
//! take its initial trainable tensors, and never sees an image.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use tessera_core::{BackboneInit, ModelParams, VisionArchitecture, VisionModelConfig};

use crate::{
    Augmenter, EfficientNetLite0, Normalization, Preprocess, SmallCnn, TransferModel, VisionError,
    default_weights_path, find_weights,
};

/// The input pipeline every member applies before the network.
pub fn preprocess(cfg: &VisionModelConfig) -> Preprocess {
    Preprocess::new((cfg.image_size, cfg.image_size), cfg.input_channels, Normalization::LITE)
}

/// The checkpoint `cfg` reads: its `weights`, else the first place of the
/// run-time search that holds it ([`default_weights_path`]).
pub fn weights_path(cfg: &VisionModelConfig) -> PathBuf {
    cfg.weights.clone().unwrap_or_else(default_weights_path)
}

/// The checkpoint `cfg` must load: its `weights`, else the search's find;
/// the error lists every place searched.
fn required_weights(cfg: &VisionModelConfig) -> Result<PathBuf, VisionError> {
    match &cfg.weights {
        Some(p) => Ok(p.clone()),
        None => find_weights(),
    }
}

/// The augmenter for one round, or `None` when augmentation is off.
pub fn augmenter(cfg: &VisionModelConfig, seed: u64) -> Result<Option<Augmenter>, VisionError> {
    match &cfg.augment {
        Some(a) if !a.is_identity() => Augmenter::new(a.clone(), seed).map(Some),
        Some(a) => Augmenter::new(a.clone(), seed).map(|_| None),
        None => Ok(None),
    }
}

/// The network itself; cheap to clone (tensors are shared), so a simulator
/// can load the checkpoint once and hand a clone to every member.
#[derive(Clone, Debug)]
pub enum VisionNet {
    /// EfficientNet-Lite0 backbone plus a linear head.
    Transfer(Box<TransferModel>),
    /// The small CNN.
    Cnn(Box<SmallCnn>),
}

impl VisionNet {
    /// Builds the network `cfg` describes, loading pretrained weights as configured.
    pub fn build(cfg: &VisionModelConfig, device: &Device) -> Result<Self, VisionError> {
        cfg.validate()?;
        match cfg.kind {
            VisionArchitecture::SmallCnn => {
                Ok(Self::Cnn(Box::new(SmallCnn::new(cfg.input_channels, cfg.num_classes, cfg.init_seed, device)?)))
            }
            VisionArchitecture::EfficientnetLite0 => {
                let path = weights_path(cfg);
                let pretrained = match cfg.backbone {
                    BackboneInit::Pretrained => true,
                    BackboneInit::Random => false,
                    BackboneInit::PretrainedIfPresent => path.is_file(),
                };
                let model = if pretrained {
                    let path = required_weights(cfg)?;
                    TransferModel::from_pretrained(&path, cfg.num_classes, cfg.trainable_blocks, cfg.init_seed, device)?
                } else {
                    let backbone = EfficientNetLite0::random(device, cfg.init_seed);
                    TransferModel::new(backbone, cfg.num_classes, cfg.trainable_blocks, cfg.init_seed, device)?
                };
                let model = match cfg.lora {
                    Some(lora) => model.with_lora(lora, cfg.init_seed)?,
                    None => model,
                };
                Ok(Self::Transfer(Box::new(model)))
            }
        }
    }

    /// The exchanged tensors, named by module path; also the run's initial model.
    pub fn trainable_params(&self) -> Result<ModelParams, VisionError> {
        match self {
            Self::Transfer(m) => m.trainable_params(),
            Self::Cnn(m) => m.params(),
        }
    }

    /// Tensors that never change locally (empty for the SmallCnn).
    pub fn frozen_params(&self) -> Result<ModelParams, VisionError> {
        match self {
            Self::Transfer(m) => m.frozen_params(),
            Self::Cnn(_) => Ok(ModelParams::new(Vec::new())),
        }
    }

    /// Replaces the trainable tensors; the layout must match exactly.
    pub fn with_trainable_params(self, params: &ModelParams) -> Result<Self, VisionError> {
        Ok(match self {
            Self::Transfer(m) => Self::Transfer(Box::new(m.with_trainable_params(params)?)),
            Self::Cnn(m) => Self::Cnn(Box::new(m.with_params(params)?)),
        })
    }

    /// The logits of a batch of preprocessed images (`[n, c, h, w]`).
    pub fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Transfer(m) => m.forward(images),
            Self::Cnn(m) => m.forward(images),
        }
    }

    /// A fully frozen backbone: only the linear head trains.
    pub fn head_only(&self) -> bool {
        matches!(self, Self::Transfer(m) if m.backbone_frozen())
    }
}
