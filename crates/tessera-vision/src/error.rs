//! The one error type of the crate. Messages name files, tensors and counts,
//! never a pixel value or a label of a single example.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a valid IDX file: {reason}")]
    BadIdx { path: PathBuf, reason: String },
    #[error("cannot decode image `{path}`: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("image `{path}` is {actual:?} (w, h), expected {expected:?}")]
    WrongImageSize { path: PathBuf, expected: (u32, u32), actual: (u32, u32) },
    #[error("data set is empty")]
    EmptyDataset,
    #[error("class `{class}` has no examples")]
    EmptyClass { class: String },
    #[error("{images} images but {labels} labels")]
    LabelCountMismatch { images: usize, labels: usize },
    #[error("label {label} is outside 0..{num_classes}")]
    LabelOutOfRange { label: usize, num_classes: usize },
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    #[error("invalid [model] section: {0}")]
    Model(#[from] tessera_core::ModelConfigError),
    #[error("weights file `{path}` not found; run scripts/fetch-weights.sh")]
    WeightsMissing { path: PathBuf },
    #[error("weights file `{path}` cannot be read: {reason}")]
    WeightsUnreadable { path: PathBuf, reason: String },
    #[error("pretrained weights lack tensor `{name}`")]
    MissingTensor { name: String },
    #[error("pretrained tensor `{name}` does not fit the model: {reason}")]
    TensorMismatch { name: String, reason: String },
    #[error("parameter `{name}`: expected shape {expected:?}, got {actual:?}")]
    ParamShape { name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("parameter `{name}` is not part of the trainable set")]
    UnknownParam { name: String },
    #[error("trainable parameter `{name}` is missing from the update")]
    MissingParam { name: String },
    #[error("tensor data: {0}")]
    Tensor(String),
    #[error("cannot write `{path}`: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl VisionError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, VisionError>;
