//! `tessera-vision` gives a Tessera member what it needs to learn from
//! images on its own site (and the aggregator the network's initial
//! tensors):
//!
//! - data: [`ImageDataset`] with stratified splits, from IDX files
//!   ([`load_fashion_mnist`], [`load_idx_dataset`]; [`read_idx`],
//!   [`parse_idx`], [`encode_idx`] underneath) or image folders
//!   ([`load_image_folder`], [`load_image`], [`FolderOptions`]);
//! - input: [`Preprocess`] (resize, channels, [`Normalization`]) and seeded
//!   augmentation ([`Augmenter`] over an [`AugmentConfig`]);
//! - networks: [`SmallCnn`], trained from scratch, and [`EfficientNetLite0`],
//!   which loads the PyTorch ImageNet checkpoint ([`ImagenetClassifier`],
//!   [`default_weights_path`]) and becomes a [`TransferModel`]: a new head
//!   ([`seeded_head`]) and, optionally, some of its [`NUM_BLOCKS`] blocks
//!   (the last ones) trainable;
//! - frozen features, the cost of a head-only round: [`FeatureExtractor`]
//!   runs [`FrozenEfficientNet`] (channels-last CPU kernels) or
//!   [`FoldedEfficientNet`] (batch norms folded, any device), and
//!   [`FeatureCache`] keeps a split's [`FEATURE_DIM`]-wide features;
//! - training: [`fit_transfer`], [`train_head`], [`train_on_images`] and
//!   [`TransferTrainer`] under a [`TrainConfig`], [`evaluate_head`] and
//!   [`evaluate_transfer`]; [`HeadWeights`] gives the linear head's summed,
//!   clipped per-example gradients in closed form ([`HeadGradSum`]), for
//!   record-level DP-SGD;
//! - the member's model: [`VisionModel`], behind
//!   `tessera_learn::LocalModel`, over a [`VisionNet`] built from the
//!   `[model]` section's `tessera_core::VisionModelConfig` (plain data) with
//!   [`preprocess`], [`weights_path`] and [`augmenter`].
//!
//! The trainable part of a model converts to and from
//! [`tessera_core::ModelParams`] under stable, module-path names;
//! [`pytorch_tensors`] gives it in PyTorch's layout (LoRA adapters merged);
//! [`pytorch_model`] gives the whole network, described by
//! [`network_metadata`], for export. What every
//! model shares (backend, settings checks, the Poisson sampler, DP-SGD's
//! configuration, noise and loop) comes from `tessera-learn`.
//!
//! It must NOT talk to the network, aggregate or know about rounds beyond
//! the settings it is handed, and draws DP-SGD noise only through
//! `tessera-learn`: it turns local images into parameters and metrics,
//! nothing more. It must never log, return in an error or otherwise expose
//! a single example (pixels, a label, a per-example loss); only aggregates
//! leave it. Bad input yields a typed [`VisionError`], never a panic.

#![warn(missing_docs)]

mod augment;
mod cnn;
mod dataset;
mod efficientnet;
mod error;
mod export;
mod folded;
mod folder;
mod frozen;
mod head;
mod idx;
mod local;
mod lora;
mod metrics;
mod nhwc;
mod params;
mod simd;
mod spec;
mod train;
mod transfer;
mod tune;
mod weights;

pub use augment::Augmenter;
pub use cnn::SmallCnn;
pub use dataset::{ImageDataset, Normalization, Preprocess};
pub use efficientnet::{EfficientNetLite0, FEATURE_DIM, ImagenetClassifier, NUM_BLOCKS};
pub use error::VisionError;
pub use export::{network_metadata, pytorch_model, pytorch_tensors};
pub use folded::FoldedEfficientNet;
pub use folder::{FolderOptions, load_image, load_image_folder};
pub use frozen::{FeatureExtractor, FrozenEfficientNet};
pub use head::{HeadGradSum, HeadWeights};
pub use idx::{FASHION_MNIST_CLASSES, IdxArray, encode_idx, load_fashion_mnist, load_idx_dataset, parse_idx, read_idx};
pub use local::VisionModel;
pub use spec::{VisionNet, augmenter, preprocess, weights_path};
pub use train::{
    FeatureCache, TrainConfig, TransferTrainer, evaluate_head, evaluate_transfer, fit_transfer, train_head,
    train_on_images,
};
pub use transfer::{TransferModel, seeded_head};

pub use weights::{WEIGHTS_FILE, default_weights_path, find_weights, weights_search_path};
