//! The `[model]` section as plain data: which network a run trains and how
//! it starts. Every party reads the same section (the aggregator to build the
//! initial parameters, each member to build the network around its data), so
//! it lives here and parsing a configuration never links a training backend.
//! Building the network from it is `tessera-tabular`'s and `tessera-vision`'s.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::ModelConfig;

/// `[model]`: the tabular MLP (no `kind`) or an image model (`kind =
/// "efficientnet_lite0"` or `"small_cnn"`, see [`VisionModelConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ModelSection {
    /// The tabular MLP over preprocessed feature columns.
    Tabular(ModelConfig),
    /// An image network.
    Vision(VisionModelConfig),
}

impl<'de> Deserialize<'de> for ModelSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Dispatch on `kind` by hand: serde's untagged enums would hide the
        // real mistake ("unknown field `hiden`") behind "no variant matched".
        let v = toml::Table::deserialize(d)?;
        if v.contains_key("kind") { v.try_into().map(Self::Vision) } else { v.try_into().map(Self::Tabular) }
            .map_err(|e| serde::de::Error::custom(format!("[model]: {}", e.message())))
    }
}

impl ModelSection {
    /// The tabular MLP's section, or an error naming the mismatch.
    pub fn tabular(&self) -> Result<&ModelConfig, ModelConfigError> {
        match self {
            Self::Tabular(m) => Ok(m),
            Self::Vision(_) => Err(ModelConfigError::NotTabular),
        }
    }
}

/// Which network an image member trains.
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
/// same values: they define the exchanged tensors and the starting point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionModelConfig {
    /// The network.
    pub kind: VisionArchitecture,
    /// Classes of the labels; at least 2.
    pub num_classes: usize,
    /// Side of the square model input, in pixels; stored images are resized to it.
    pub image_size: usize,
    /// Channels the network sees (EfficientNet-Lite0 needs 3; gray is replicated).
    #[serde(default = "default_channels")]
    pub input_channels: usize,
    /// EfficientNet-Lite0 only: how many of the last MBConv blocks train (0: head only).
    #[serde(default)]
    pub trainable_blocks: usize,
    /// Where the backbone's weights come from.
    #[serde(default)]
    pub backbone: BackboneInit,
    /// The PyTorch checkpoint; `None` means `tessera_vision`'s default path.
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
    /// EfficientNet-Lite0 only: train the last `trainable_blocks` blocks
    /// through low-rank adapters on their 1x1 convolutions (and on the head
    /// convolution) instead of their full weights; `None`: full weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

/// Low-rank adapters (`[model] lora = { rank = 4, alpha = 8.0 }`), the same
/// keys as the tabular `trainable = { kind = "lora", rank, alpha }`: each
/// adapted weight `W` becomes `W + (alpha / rank) B A` with `A` `[rank, in]`
/// and `B` `[out, rank]`, `B` zero at the start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of each adapter's two factors; at least 1.
    pub rank: usize,
    /// The adapter's output is scaled by `alpha / rank`; positive and finite.
    pub alpha: f32,
}

impl LoraConfig {
    /// `alpha / rank`, the factor on `B A`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
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
            lora: None,
        }
    }

    /// Checks what can be checked without building the network.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        if self.num_classes < 2 || self.image_size == 0 || self.feature_batch == 0 {
            return Err(ModelConfigError::Shape);
        }
        match self.kind {
            VisionArchitecture::EfficientnetLite0 if self.input_channels != 3 => {
                Err(ModelConfigError::Channels { kind: self.kind, channels: self.input_channels })
            }
            VisionArchitecture::SmallCnn if self.trainable_blocks != 0 => Err(ModelConfigError::TrainableBlocksOnCnn),
            _ if self.lora.is_some_and(|l| {
                self.kind != VisionArchitecture::EfficientnetLite0
                    || self.trainable_blocks == 0
                    || l.rank == 0
                    || !(l.alpha.is_finite() && l.alpha > 0.0)
            }) =>
            {
                Err(ModelConfigError::Lora)
            }
            VisionArchitecture::SmallCnn if !matches!(self.input_channels, 1 | 3) => {
                Err(ModelConfigError::Channels { kind: self.kind, channels: self.input_channels })
            }
            _ => self.augment.as_ref().map_or(Ok(()), AugmentConfig::validate),
        }
    }
}

/// Ranges of the random image transforms; zero (or `false`) disables one.
/// Unset keys default to "off" when read from a configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Rotation drawn from `[-d, d]` degrees.
    pub rotation_degrees: f32,
    /// Horizontal shift drawn from `[-f, f]` of the width.
    pub width_shift: f32,
    /// Vertical shift drawn from `[-f, f]` of the height.
    pub height_shift: f32,
    /// Shear angle drawn from `[-d, d]` degrees.
    pub shear_degrees: f32,
    /// Scale drawn independently per axis from `[1 - z, 1 + z]`.
    pub zoom: f32,
    /// Mirror left-right with probability 1/2.
    pub horizontal_flip: bool,
    /// Mirror top-bottom with probability 1/2.
    pub vertical_flip: bool,
    /// Brightness factor drawn from `[1 - b, 1 + b]`; results are clipped to `[0, 1]`.
    pub brightness: f32,
    /// Value of pixels that come from outside the source image.
    pub fill: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::none()
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            rotation_degrees: 0.0,
            width_shift: 0.0,
            height_shift: 0.0,
            shear_degrees: 0.0,
            zoom: 0.0,
            horizontal_flip: false,
            vertical_flip: false,
            brightness: 0.0,
            fill: 0.0,
        }
    }

    /// A moderate setting suited to small natural or product images.
    pub fn light() -> Self {
        Self {
            rotation_degrees: 15.0,
            width_shift: 0.1,
            height_shift: 0.1,
            shear_degrees: 10.0,
            zoom: 0.1,
            horizontal_flip: true,
            vertical_flip: false,
            brightness: 0.2,
            fill: 0.0,
        }
    }

    /// True when every transform is off, so an augmented epoch equals the data.
    pub fn is_identity(&self) -> bool {
        self.rotation_degrees == 0.0
            && self.width_shift == 0.0
            && self.height_shift == 0.0
            && self.shear_degrees == 0.0
            && self.zoom == 0.0
            && !self.horizontal_flip
            && !self.vertical_flip
            && self.brightness == 0.0
    }

    /// Every range is finite and within the bound past which the transform
    /// stops making sense (a zoom of 1 would scale to zero).
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        let checks = [
            ("rotation_degrees", self.rotation_degrees, 180.0),
            ("width_shift", self.width_shift, 1.0),
            ("height_shift", self.height_shift, 1.0),
            ("shear_degrees", self.shear_degrees, 80.0),
            ("zoom", self.zoom, 0.99),
            ("brightness", self.brightness, 1.0),
            ("fill", self.fill, 1.0),
        ];
        for (field, v, max) in checks {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return Err(ModelConfigError::AugmentRange { field, max });
            }
        }
        Ok(())
    }
}

/// Why a `[model]` section cannot describe a network.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelConfigError {
    /// A degenerate shape.
    #[error("num_classes >= 2, image_size > 0 and feature_batch > 0 are required")]
    Shape,
    /// The architecture cannot take this many input channels.
    #[error("{kind:?} cannot take {channels} input channels (EfficientNet-Lite0 takes 3, SmallCnn 1 or 3)")]
    Channels {
        /// The configured network.
        kind: VisionArchitecture,
        /// The configured channel count.
        channels: usize,
    },
    /// `trainable_blocks` is set for a network without blocks.
    #[error("trainable_blocks applies to EfficientNet-Lite0 only")]
    TrainableBlocksOnCnn,
    /// An augmentation range is negative, not finite, or past its bound.
    #[error("augmentation `{field}` must lie in [0, {max}]")]
    AugmentRange {
        /// The `[model.augment]` key.
        field: &'static str,
        /// Its upper bound.
        max: f32,
    },
    /// `lora` is set where it cannot apply, or with a bad rank or alpha.
    #[error(
        "lora needs kind = \"efficientnet_lite0\" with trainable_blocks >= 1 (the blocks it adapts), rank >= 1 and a \
         positive finite alpha"
    )]
    Lora,
    /// The run trains an image model where the tabular MLP was required.
    #[error("[model] is an image model, not the tabular MLP")]
    NotTabular,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_by_kind_and_names_the_bad_key() {
        let tab: ModelSection = toml::from_str("num_features = 4\nnum_classes = 2").unwrap();
        assert!(matches!(tab, ModelSection::Tabular(_)));
        let vis: ModelSection = toml::from_str("kind = \"small_cnn\"\nnum_classes = 10\nimage_size = 28").unwrap();
        let ModelSection::Vision(v) = &vis else { panic!("expected an image model") };
        assert_eq!((v.input_channels, v.init_seed, v.feature_batch), (3, 1, 64));
        assert_eq!(vis.tabular(), Err(ModelConfigError::NotTabular));
        let err = toml::from_str::<ModelSection>("kind = \"small_cnn\"\nnum_classes = 10\nimage_size = 28\nsize = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[model]") && err.contains("size"), "{err}");
    }

    #[test]
    fn validation_refuses_what_no_network_can_take() {
        let ok = VisionModelConfig::efficientnet_head(10, 32);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(VisionModelConfig { num_classes: 1, ..ok.clone() }.validate(), Err(ModelConfigError::Shape));
        let gray = VisionModelConfig { input_channels: 1, ..ok.clone() };
        assert!(matches!(gray.validate(), Err(ModelConfigError::Channels { channels: 1, .. })));
        let cnn = VisionModelConfig { kind: VisionArchitecture::SmallCnn, trainable_blocks: 2, ..ok.clone() };
        assert_eq!(cnn.validate(), Err(ModelConfigError::TrainableBlocksOnCnn));
        let zoom = AugmentConfig { zoom: 1.0, ..AugmentConfig::light() };
        let aug = VisionModelConfig { augment: Some(zoom), ..ok.clone() };
        assert_eq!(aug.validate(), Err(ModelConfigError::AugmentRange { field: "zoom", max: 0.99 }));
        let nan = AugmentConfig { fill: f32::NAN, ..AugmentConfig::none() };
        assert!(matches!(nan.validate(), Err(ModelConfigError::AugmentRange { field: "fill", .. })));
        assert!(AugmentConfig::none().is_identity() && !AugmentConfig::light().is_identity());
    }
}
