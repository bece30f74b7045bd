//! Typed errors. Messages name files, lines, columns and tensors, never a
//! cell value or a per-example number: they may end up in logs.

use std::path::PathBuf;

/// Problems with a data file or its configuration.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data file {file} not found")]
    FileNotFound { file: PathBuf },
    #[error("cannot read {file}: {source}")]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}: no column `{column}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    MissingColumn { file: PathBuf, column: String, suggestion: Option<String> },
    #[error("{file}: column `{column}` appears more than once in the header")]
    DuplicateColumn { file: PathBuf, column: String },
    #[error("{file}: column `{column}` is both the label and a feature")]
    LabelIsFeature { file: PathBuf, column: String },
    #[error("{file}, line {line}: row has {found} fields, the header has {expected}")]
    RaggedRow { file: PathBuf, line: u64, expected: usize, found: usize },
    #[error("{file}, line {line}: not valid UTF-8")]
    InvalidUtf8 { file: PathBuf, line: u64 },
    #[error("{file}, line {line}: malformed CSV")]
    Malformed { file: PathBuf, line: u64 },
    #[error("{file}, line {line}, column `{column}`: value is not a number")]
    NonNumeric { file: PathBuf, line: u64, column: String },
    #[error("{file}, line {line}: the label is missing")]
    MissingLabel { file: PathBuf, line: u64 },
    #[error("{file}, line {line}: the label is not one of the configured classes")]
    UnknownClass { file: PathBuf, line: u64 },
    #[error("{file}: the data set has no rows")]
    Empty { file: PathBuf },
    #[error("{file}: no feature columns selected")]
    NoFeatures { file: PathBuf },
    #[error("{file}: {found} class(es) found, at least 2 are needed")]
    TooFewClasses { file: PathBuf, found: usize },
    #[error("class `{class}` has no examples{}", split.map(|s| format!(" in the {s} split")).unwrap_or_default())]
    EmptyClass { class: String, split: Option<&'static str> },
    #[error("invalid split fractions: {reason}")]
    InvalidSplit { reason: &'static str },
}

/// Everything that can go wrong while training or exchanging parameters.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("model configuration: {0}")]
    Config(String),
    #[error("parameter set does not match the model: {0}")]
    ParamMismatch(String),
    #[error("tensor `{name}` holds a non-finite value")]
    NonFinite { name: String },
    #[error("training diverged: a non-finite {what} appeared")]
    Diverged { what: &'static str },
    #[error("invalid training settings: {0}")]
    Settings(String),
    #[error("split `{0}` is empty")]
    EmptySplit(&'static str),
    #[error("tensor backend: {0}")]
    Backend(String),
    #[error("checkpoint {file}: {reason}")]
    Checkpoint { file: PathBuf, reason: String },
}

impl LearnError {
    /// A failed check of `tessera_learn` (settings), in this crate's terms.
    pub fn from_local(e: tessera_learn::LocalError) -> Self {
        match e {
            tessera_learn::LocalError::Settings(reason) => LearnError::Settings(reason.into()),
            other => LearnError::Config(other.to_string()),
        }
    }
}
