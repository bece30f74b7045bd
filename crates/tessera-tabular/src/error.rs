//! Typed errors. Messages name files, lines, columns and tensors, never a
//! cell value or a per-example number: they may end up in logs.

use std::path::PathBuf;

/// Problems with a data file or its configuration. Messages name the file,
/// line and column where they apply, never a cell's value.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file does not exist.
    #[error("data file {file} not found")]
    FileNotFound {
        /// The path as configured.
        file: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read {file}")]
    Io {
        /// The file being read.
        file: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A configured column is not in the header.
    #[error("{file}: no column `{column}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    MissingColumn {
        /// The file whose header lacks it.
        file: PathBuf,
        /// The configured name.
        column: String,
        /// The closest header name by edit distance, if one is close enough to be a likely typo.
        suggestion: Option<String>,
    },
    /// Two header cells share a name, so a column reference would be ambiguous.
    #[error("{file}: column `{column}` appears more than once in the header")]
    DuplicateColumn {
        /// The file.
        file: PathBuf,
        /// The repeated name.
        column: String,
    },
    /// The feature list names the label column.
    #[error("{file}: column `{column}` is both the label and a feature")]
    LabelIsFeature {
        /// The file.
        file: PathBuf,
        /// The label column.
        column: String,
    },
    /// A row's field count differs from the header's.
    #[error("{file}, line {line}: row has {found} fields, the header has {expected}")]
    RaggedRow {
        /// The file.
        file: PathBuf,
        /// 1-based line of the row.
        line: u64,
        /// Fields in the header.
        expected: usize,
        /// Fields in the row.
        found: usize,
    },
    /// A row is not valid UTF-8.
    #[error("{file}, line {line}: not valid UTF-8")]
    InvalidUtf8 {
        /// The file.
        file: PathBuf,
        /// 1-based line of the row.
        line: u64,
    },
    /// Any other CSV syntax error.
    #[error("{file}, line {line}: malformed CSV")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// 1-based line where the reader gave up (0 if unknown).
        line: u64,
    },
    /// A numeric column holds something that is neither a finite number nor a missing-value marker.
    #[error("{file}, line {line}, column `{column}`: value is not a number")]
    NonNumeric {
        /// The file.
        file: PathBuf,
        /// 1-based line of the row.
        line: u64,
        /// The column's name.
        column: String,
    },
    /// A row has no label (labels are never imputed).
    #[error("{file}, line {line}: the label is missing")]
    MissingLabel {
        /// The file.
        file: PathBuf,
        /// 1-based line of the row.
        line: u64,
    },
    /// A label is not among the configured classes (the label itself is not named: it is data).
    #[error("{file}, line {line}: the label is not one of the configured classes")]
    UnknownClass {
        /// The file.
        file: PathBuf,
        /// 1-based line of the row.
        line: u64,
    },
    /// The file has a header but no rows.
    #[error("{file}: the data set has no rows")]
    Empty {
        /// The file.
        file: PathBuf,
    },
    /// The configuration leaves no feature column.
    #[error("{file}: no feature columns selected")]
    NoFeatures {
        /// The file.
        file: PathBuf,
    },
    /// Fewer than two classes, configured or found, so there is nothing to classify.
    #[error("{file}: {found} class(es) found, at least 2 are needed")]
    TooFewClasses {
        /// The file.
        file: PathBuf,
        /// How many classes there are.
        found: usize,
    },
    /// A class has no examples, in the whole file or in one split.
    #[error("class `{class}` has no examples{}", split.map(|s| format!(" in the {s} split")).unwrap_or_default())]
    EmptyClass {
        /// The class's configured name, or `#index` when the name came from the file.
        class: String,
        /// The split that lacks it (`"train"`), or `None` for the whole file.
        split: Option<&'static str>,
    },
    /// A schema file does not parse or is refused.
    #[error("{file}: {source}")]
    Schema {
        /// The schema file.
        file: PathBuf,
        /// Which key or feature is wrong.
        source: tessera_core::SchemaError,
    },
    /// The table's columns disagree with the declared schema, or the
    /// configuration names features beside it.
    #[error("{file}: {reason}")]
    SchemaMismatch {
        /// The data file.
        file: PathBuf,
        /// Which column or key disagrees.
        reason: String,
    },
    /// The split fractions are out of range.
    #[error("invalid split fractions: {reason}")]
    InvalidSplit {
        /// Which rule they break.
        reason: &'static str,
    },
}

/// Everything that can go wrong while training or exchanging parameters.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    /// Loading or preparing the data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model's shape or trainable part is invalid, or does not fit the data.
    #[error("model configuration: {0}")]
    Config(String),
    /// A received parameter set differs from the model's exchanged tensors in count, names, order or shapes.
    #[error("parameter set does not match the model: {0}")]
    ParamMismatch(String),
    /// A received tensor holds NaN or an infinity; nothing was loaded.
    #[error("tensor `{name}` holds a non-finite value")]
    NonFinite {
        /// The tensor's wire name.
        name: String,
    },
    /// Training produced a NaN or an infinity; the round's result must not be sent.
    #[error("training diverged: a non-finite {what} appeared")]
    Diverged {
        /// Where it appeared (loss, parameter, prediction, gradient).
        what: &'static str,
    },
    /// The round's training or DP-SGD settings fail `tessera_learn`'s checks.
    #[error("invalid training settings: {0}")]
    Settings(String),
    /// The named split (`"train"`, `"validation"`, `"test"`) has no rows.
    #[error("split `{0}` is empty")]
    EmptySplit(&'static str),
    /// The tensor backend failed to hand back a tensor's values.
    #[error("tensor backend: {0}")]
    Backend(String),
    /// A backbone checkpoint could not be written, read or matched to the model.
    #[error("checkpoint {file}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        file: PathBuf,
        /// What is wrong, naming the tensor where one is at fault.
        reason: String,
    },
}

impl LearnError {
    /// A failed check of `tessera_learn` (settings), in this crate's terms.
    pub(crate) fn from_local(e: tessera_learn::LocalError) -> Self {
        match e {
            tessera_learn::LocalError::Settings(reason) => LearnError::Settings(reason.into()),
            other => LearnError::Config(other.to_string()),
        }
    }
}
