//! The one error type of the crate. Messages name files, tensors and counts,
//! never a pixel value or a label of a single example.

use std::path::PathBuf;

/// Why loading, preprocessing, training or a parameter exchange failed.
/// Each variant says what was wrong with which file, tensor or setting.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// A file or directory could not be read.
    #[error("cannot read `{path}`")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An IDX file is truncated, gzip-corrupt or not unsigned bytes.
    #[error("`{path}` is not a valid IDX file: {reason}")]
    BadIdx {
        /// The file.
        path: PathBuf,
        /// What the header or body got wrong.
        reason: String,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image `{path}`: {reason}")]
    BadImage {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// An image has another size and the folder options forbid resizing.
    #[error("image `{path}` is {actual:?} (w, h), expected {expected:?}")]
    WrongImageSize {
        /// The file.
        path: PathBuf,
        /// Required `(width, height)` in pixels.
        expected: (u32, u32),
        /// The file's `(width, height)` in pixels.
        actual: (u32, u32),
    },
    /// A data set, batch or folder holds no example.
    #[error("data set is empty")]
    EmptyDataset,
    /// A class has no example (every class must have one).
    #[error("class `{class}` has no examples")]
    EmptyClass {
        /// The class's name.
        class: String,
    },
    /// Image and label counts differ.
    #[error("{images} images but {labels} labels")]
    LabelCountMismatch {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label names no class.
    #[error("label {label} is outside 0..{num_classes}")]
    LabelOutOfRange {
        /// The offending label.
        label: usize,
        /// Number of classes; labels lie in `0..num_classes`.
        num_classes: usize,
    },
    /// A setting or an argument is out of range; the message names it.
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    /// The `[model]` section describes no network.
    #[error("invalid [model] section")]
    Model(#[from] tessera_core::ModelConfigError),
    /// The pretrained checkpoint is not where it was expected.
    #[error("weights file `{path}` not found; run scripts/fetch-weights.sh")]
    WeightsMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// No `[model] weights` path was given and the checkpoint is in none of
    /// the places searched (`weights_search_path`).
    #[error(
        "pretrained weights not found; searched: {}. Run scripts/fetch-weights.sh, set TESSERA_WEIGHTS_DIR, or \
         set [model] weights",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    WeightsNotFound {
        /// Every place looked in, in order.
        searched: Vec<PathBuf>,
    },
    /// The checkpoint exists but is not a readable PyTorch file.
    #[error("weights file `{path}` cannot be read: {reason}")]
    WeightsUnreadable {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        reason: String,
    },
    /// The checkpoint lacks a tensor the model needs.
    #[error("pretrained weights lack tensor `{name}`")]
    MissingTensor {
        /// The model's path of the tensor.
        name: String,
    },
    /// A checkpoint tensor has the wrong shape or type for the model.
    #[error("pretrained tensor `{name}` does not fit the model: {reason}")]
    TensorMismatch {
        /// The tensor's name.
        name: String,
        /// The loader's message.
        reason: String,
    },
    /// An exchanged parameter has the wrong shape.
    #[error("parameter `{name}`: expected shape {expected:?}, got {actual:?}")]
    ParamShape {
        /// The parameter's module path.
        name: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The update's shape.
        actual: Vec<usize>,
    },
    /// An update names a tensor that is frozen or does not exist.
    #[error("parameter `{name}` is not part of the trainable set")]
    UnknownParam {
        /// The name in the update.
        name: String,
    },
    /// An update lacks one of the trainable tensors.
    #[error("trainable parameter `{name}` is missing from the update")]
    MissingParam {
        /// The missing tensor's module path.
        name: String,
    },
    /// Tensor data could not be read back, or a computed value was not finite.
    #[error("tensor data: {0}")]
    Tensor(String),
    /// A file could not be written.
    #[error("cannot write `{path}`: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The encoder's or operating system's message.
        reason: String,
    },
}

impl VisionError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub(crate) type Result<T> = std::result::Result<T, VisionError>;
