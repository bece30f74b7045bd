//! `tessera-vision` gives a Tessera member what it needs to learn from
//! images on its own site: loaders (IDX files such as Fashion-MNIST, image
//! folders), stratified splits and batching, seeded augmentation, a small CNN,
//! and an EfficientNet-Lite0 backbone that loads the PyTorch ImageNet
//! checkpoint for transfer learning, with feature caching and a head
//! training loop, and [`VisionModel`], the member's image model behind
//! `tessera_learn::LocalModel`. The trainable part of a model converts to
//! and from [`tessera_core::ModelParams`] under stable, module-path names.
//! What every model shares (backend, settings checks, the Poisson sampler,
//! DP-SGD's configuration, noise and loop) comes from `tessera-learn`.
//!
//! It must NOT talk to the network, aggregate or know about rounds beyond
//! the settings it is handed, and draws DP-SGD noise only through
//! `tessera-learn`: it turns local images into parameters and metrics,
//! nothing more. It must never log, return in an error or otherwise expose a single
//! example (pixels, a label, a per-example loss); only aggregates leave it.
//! Bad input yields a typed [`VisionError`], never a panic.

pub mod augment;
pub mod cnn;
pub mod dataset;
pub mod efficientnet;
pub mod error;
pub mod folded;
pub mod folder;
pub mod frozen;
pub mod head;
pub mod idx;
mod local;
pub mod metrics;
mod nhwc;
pub mod params;
mod simd;
pub mod spec;
pub mod train;
pub mod transfer;
pub mod tune;

pub use augment::{Augmenter, write_png_grid};
pub use cnn::SmallCnn;
pub use dataset::{ImageDataset, Normalization, Preprocess};
pub use efficientnet::{EfficientNetLite0, FEATURE_DIM, ImagenetClassifier};
pub use error::VisionError;
pub use folded::FoldedEfficientNet;
pub use folder::{FolderOptions, load_image_folder};
pub use frozen::{FeatureExtractor, FrozenEfficientNet};
pub use head::{HeadGradSum, HeadWeights};
pub use idx::{FASHION_MNIST_CLASSES, load_fashion_mnist, load_idx_dataset};
pub use local::VisionModel;
pub use spec::{VisionNet, augmenter, preprocess, weights_path};
pub use train::{
    FeatureCache, TrainConfig, TransferTrainer, evaluate_head, evaluate_transfer, fit_transfer, train_head,
    train_on_images,
};
pub use transfer::TransferModel;
pub use tune::{ExampleGradients, HostFineTuner};

/// File name of the pretrained weights installed by `scripts/fetch-weights.sh`.
pub const WEIGHTS_FILE: &str = "efficientnet-lite0-57934424.pth";

/// Where the pretrained weights are expected: `$TESSERA_WEIGHTS_DIR`, else
/// `.weights/` at the workspace root.
pub fn default_weights_path() -> std::path::PathBuf {
    match std::env::var_os("TESSERA_WEIGHTS_DIR") {
        Some(dir) => std::path::PathBuf::from(dir).join(WEIGHTS_FILE),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weights").join(WEIGHTS_FILE),
    }
}
