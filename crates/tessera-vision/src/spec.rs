//! The model half of an image member's configuration: which network, how
//! it is initialised (pretrained checkpoint or seeded), and building it.
//! Members and the aggregator both use it: the aggregator builds the same
//! network only to take its initial trainable tensors, and never sees an image.

use std::path::PathBuf;

use burn::tensor::Device;
use serde::{Deserialize, Deserializer, Serialize};
use tessera_core::{ModelConfig, ModelParams};

use crate::{
    AugmentConfig, Augmenter, EfficientNetLite0, Normalization, Preprocess, SmallCnn, TransferModel, VisionError,
    default_weights_path,
};

/// Which network a member trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionArchitecture {
    /// EfficientNet-Lite0 backbone (frozen but for `trainable_blocks`) plus a linear head.
    EfficientnetLite0,
    /// The small CNN, every tensor trainable.
    SmallCnn,
}

/// Where the EfficientNet-Lite0 backbone's weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneInit {
    /// The ImageNet checkpoint; a missing file is an error.
    #[default]
    Pretrained,
    /// Seeded He-uniform weights from `init_seed` (the same on every member).
    Random,
    /// The checkpoint when the file exists, else `Random` (tests, demos).
    PretrainedIfPresent,
}

/// The `[model]` section for images. Every member of a run must use the
/// same values (they define the exchanged tensors and the starting point).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionModelConfig {
    pub kind: VisionArchitecture,
    pub num_classes: usize,
    /// Side of the square model input, in pixels; stored images are resized to it.
    pub image_size: usize,
    /// Channels the network sees (EfficientNet-Lite0 needs 3; gray is replicated).
    #[serde(default = "default_channels")]
    pub input_channels: usize,
    /// EfficientNet-Lite0 only: how many of the last MBConv blocks train (0: head only).
    #[serde(default)]
    pub trainable_blocks: usize,
    #[serde(default)]
    pub backbone: BackboneInit,
    /// The PyTorch checkpoint; defaults to `tessera_vision::default_weights_path()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// Seeds the head (and a random backbone, and the SmallCnn).
    #[serde(default = "default_init_seed")]
    pub init_seed: u64,
    /// Seeded augmentation of the training images; turns feature caching off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentConfig>,
    /// Batch size of the backbone's inference passes (feature extraction, evaluation).
    #[serde(default = "default_feature_batch")]
    pub feature_batch: usize,
}

fn default_channels() -> usize {
    3
}
fn default_init_seed() -> u64 {
    1
}
fn default_feature_batch() -> usize {
    64
}

impl VisionModelConfig {
    /// EfficientNet-Lite0 with a trainable head only, pretrained weights.
    pub fn efficientnet_head(num_classes: usize, image_size: usize) -> Self {
        Self {
            kind: VisionArchitecture::EfficientnetLite0,
            num_classes,
            image_size,
            input_channels: 3,
            trainable_blocks: 0,
            backbone: BackboneInit::Pretrained,
            weights: None,
            init_seed: 1,
            augment: None,
            feature_batch: 64,
        }
    }

    /// The input pipeline every member applies before the network.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess::new((self.image_size, self.image_size), self.input_channels, Normalization::LITE)
    }

    /// The checkpoint this configuration reads.
    pub fn weights_path(&self) -> PathBuf {
        self.weights.clone().unwrap_or_else(default_weights_path)
    }

    /// The augmenter for one round, or `None` when augmentation is off.
    pub fn augmenter(&self, seed: u64) -> Result<Option<Augmenter>, VisionError> {
        match &self.augment {
            Some(a) if !a.is_identity() => Augmenter::new(a.clone(), seed).map(Some),
            Some(a) => Augmenter::new(a.clone(), seed).map(|_| None),
            None => Ok(None),
        }
    }

    pub fn validate(&self) -> Result<(), VisionError> {
        let bad = |m: String| Err(VisionError::InvalidConfig(m));
        if self.num_classes < 2 || self.image_size == 0 || self.feature_batch == 0 {
            return bad("num_classes >= 2, image_size > 0 and feature_batch > 0 are required".into());
        }
        match self.kind {
            VisionArchitecture::EfficientnetLite0 if self.input_channels != 3 => {
                bad("EfficientNet-Lite0 takes 3 input channels".into())
            }
            VisionArchitecture::SmallCnn if self.trainable_blocks != 0 => {
                bad("trainable_blocks applies to EfficientNet-Lite0 only".into())
            }
            VisionArchitecture::SmallCnn if !matches!(self.input_channels, 1 | 3) => {
                bad("SmallCnn takes 1 or 3 input channels".into())
            }
            _ => self.augmenter(0).map(|_| ()),
        }
    }
}

/// The network itself; cheap to clone (tensors are shared), so a simulator
/// can load the checkpoint once and hand a clone to every member.
#[derive(Clone, Debug)]
pub enum VisionNet {
    Transfer(Box<TransferModel>),
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
                let path = cfg.weights_path();
                let pretrained = match cfg.backbone {
                    BackboneInit::Pretrained => true,
                    BackboneInit::Random => false,
                    BackboneInit::PretrainedIfPresent => path.is_file(),
                };
                let model = if pretrained {
                    TransferModel::from_pretrained(&path, cfg.num_classes, cfg.trainable_blocks, cfg.init_seed, device)?
                } else {
                    let backbone = EfficientNetLite0::random(device, cfg.init_seed);
                    TransferModel::new(backbone, cfg.num_classes, cfg.trainable_blocks, cfg.init_seed, device)?
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

    /// A fully frozen backbone: only the linear head trains.
    pub fn head_only(&self) -> bool {
        matches!(self, Self::Transfer(m) if m.backbone_frozen())
    }
}

/// `[model]`: the tabular MLP (no `kind`) or an image model (`kind =
/// "efficientnet_lite0"` or `"small_cnn"`, see [`VisionModelConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ModelSection {
    Tabular(ModelConfig),
    Vision(VisionModelConfig),
}

impl<'de> Deserialize<'de> for ModelSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Table::deserialize(d)?;
        if v.contains_key("kind") { v.try_into().map(Self::Vision) } else { v.try_into().map(Self::Tabular) }
            .map_err(|e| serde::de::Error::custom(format!("[model]: {}", e.message())))
    }
}

impl ModelSection {
    pub fn tabular(&self) -> Result<&ModelConfig, VisionError> {
        match self {
            Self::Tabular(m) => Ok(m),
            Self::Vision(_) => Err(VisionError::InvalidConfig("[model] is an image model, not the tabular MLP".into())),
        }
    }
}
