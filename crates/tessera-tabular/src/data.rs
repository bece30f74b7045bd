//! Tabular data: CSV loading, a member's splits and their encoding
//! (`split.rs`, `encode.rs`), and seeded batching.
//!
//! Policies, stated once:
//! - Missing values are empty cells and the markers `NA`, `N/A`, `NaN`, `?`
//!   (case-insensitive, surrounding spaces ignored).
//! - The feature columns and their kinds come from the declared schema
//!   ([`TabularSpec::schema`]) or, when fitting locally, from `features`,
//!   `ignore` and `categorical`.
//! - Classes are the configured [`TabularSpec::classes`] in that order, or
//!   the sorted distinct labels of the file.
//! - A member's rows are split by [`crate::hashed_split`]: each row's side
//!   depends on its own content only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tessera_core::{FeatureDecl, FeatureSchema, SchemaSource};

use crate::encode::Preprocessor;
use crate::error::DataError;
use crate::split::{SplitConfig, SplitIndices, hashed_split};

/// Which columns of a CSV file to use and how.
#[derive(Clone, Debug, PartialEq)]
pub struct TabularSpec {
    /// The label column.
    pub label: String,
    /// Feature columns; `None` means every column except the label and `ignore`.
    pub features: Option<Vec<String>>,
    /// Columns left out when `features` is `None` (identifiers, leakage).
    pub ignore: Vec<String>,
    /// Columns to one-hot encode; every other feature must be numeric.
    pub categorical: Vec<String>,
    /// Expected class labels, in class-index order.
    pub classes: Option<Vec<String>>,
    /// Fitting locally only: append a 0/1 "was missing" feature to each
    /// numeric column that has a missing value in the training split.
    pub missing_indicators: bool,
    /// Where the encoding comes from. A declared schema also names the
    /// feature columns and their kinds; `features` and `categorical` must
    /// then be left empty.
    pub schema: SchemaSource,
}

impl TabularSpec {
    /// Defaults around the label column `label`: every other column a
    /// numeric feature, classes read from the file, the encoding fitted
    /// locally with missing-value indicators (not private; see [`SchemaSource`]).
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            features: None,
            ignore: Vec::new(),
            categorical: Vec::new(),
            classes: None,
            missing_indicators: true,
            schema: SchemaSource::FitLocally,
        }
    }

    /// The declared schema (read from its file if it names one), or `None`
    /// when the encoding is fitted locally.
    pub fn declared_schema(&self) -> Result<Option<FeatureSchema>, DataError> {
        match &self.schema {
            SchemaSource::FitLocally => Ok(None),
            SchemaSource::Declared(s) => Ok(Some(s.clone())),
            SchemaSource::File(path) => load_schema(path).map(Some),
        }
    }

    /// The shipped `examples/data/wdbc.csv`: 30 numeric features.
    pub fn wdbc() -> Self {
        Self { classes: Some(vec!["benign".into(), "malignant".into()]), ..Self::new("diagnosis") }
    }

    /// The shipped `examples/data/germancredit.csv`: 7 numeric and 13
    /// categorical features; class 0 is `bad`, class 1 is `good`.
    pub fn german_credit() -> Self {
        let categorical = [
            "status_of_existing_checking_account",
            "credit_history",
            "purpose",
            "savings_account_and_bonds",
            "present_employment_since",
            "personal_status_and_sex",
            "other_debtors_or_guarantors",
            "property",
            "other_installment_plans",
            "housing",
            "job",
            "telephone",
            "foreign_worker",
        ];
        Self {
            categorical: categorical.iter().map(|s| s.to_string()).collect(),
            classes: Some(vec!["bad".into(), "good".into()]),
            ..Self::new("creditability")
        }
    }
}

/// Read and check a schema file (`[[features]]` tables, see
/// [`FeatureSchema`]); errors name the file.
pub fn load_schema(path: &Path) -> Result<FeatureSchema, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::FileNotFound { file: path.to_path_buf() },
        _ => DataError::Io { file: path.to_path_buf(), source },
    })?;
    FeatureSchema::from_toml(&text).map_err(|source| DataError::Schema { file: path.to_path_buf(), source })
}

/// One loaded feature column, before any encoding.
#[derive(Clone, Debug)]
pub enum RawColumn {
    /// A numeric column; `None` is a missing value.
    Numeric {
        /// The header name.
        name: String,
        /// One value per row, finite.
        values: Vec<Option<f64>>,
    },
    /// A categorical column; `None` is a missing value.
    Categorical {
        /// The header name.
        name: String,
        /// One category per row, trimmed.
        values: Vec<Option<String>>,
    },
}

impl RawColumn {
    /// The column's header name.
    pub fn name(&self) -> &str {
        match self {
            RawColumn::Numeric { name, .. } | RawColumn::Categorical { name, .. } => name,
        }
    }
}

/// A parsed CSV file: typed feature columns and class indices.
#[derive(Clone, Debug)]
pub struct RawTable {
    /// The file it was read from, for error messages.
    pub file: PathBuf,
    /// The feature columns, in configured (or header) order.
    pub columns: Vec<RawColumn>,
    /// Each row's class index into `class_names`.
    pub labels: Vec<u32>,
    /// Class names in class-index order.
    pub class_names: Vec<String>,
}

impl RawTable {
    /// Rows in the table.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}

fn is_missing(cell: &str) -> bool {
    let t = cell.trim();
    t.is_empty() || ["na", "n/a", "nan", "?"].iter().any(|m| t.eq_ignore_ascii_case(m))
}

/// Edit distance, to suggest the intended column for a misspelled one.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn closest<'a>(name: &str, header: &'a [String]) -> Option<&'a String> {
    let lower = name.to_lowercase();
    header
        .iter()
        .map(|h| (levenshtein(&lower, &h.to_lowercase()), h))
        .filter(|(d, h)| *d <= (h.chars().count() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, h)| h)
}

fn csv_error(file: &Path, e: csv::Error, expected: usize) -> DataError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.into_kind() {
        csv::ErrorKind::Io(source) => DataError::Io { file: file.to_path_buf(), source },
        csv::ErrorKind::Utf8 { .. } => DataError::InvalidUtf8 { file: file.to_path_buf(), line },
        csv::ErrorKind::UnequalLengths { len, .. } => {
            DataError::RaggedRow { file: file.to_path_buf(), line, expected, found: len as usize }
        }
        _ => DataError::Malformed { file: file.to_path_buf(), line },
    }
}

/// Read and type-check a CSV file with a header row: columns are resolved
/// by name (a misspelled one gets a suggestion), numeric cells parsed,
/// labels mapped to class indices. Errors name the line and column, never
/// the value.
pub fn load_csv(path: &Path, spec: &TabularSpec) -> Result<RawTable, DataError> {
    let file = path.to_path_buf();
    let handle = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::FileNotFound { file: file.clone() },
        _ => DataError::Io { file: file.clone(), source },
    })?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::Headers).from_reader(handle);
    let header: Vec<String> =
        reader.headers().map_err(|e| csv_error(path, e, 0))?.iter().map(|h| h.to_string()).collect();
    let mut seen = BTreeSet::new();
    for h in &header {
        if !seen.insert(h.as_str()) {
            return Err(DataError::DuplicateColumn { file, column: h.clone() });
        }
    }
    let find = |name: &str| -> Result<usize, DataError> {
        header.iter().position(|h| h == name).ok_or_else(|| DataError::MissingColumn {
            file: file.clone(),
            column: name.to_string(),
            suggestion: closest(name, &header).cloned(),
        })
    };
    let label_idx = find(&spec.label)?;
    let schema = spec.declared_schema()?;
    if schema.is_some() && (spec.features.is_some() || !spec.categorical.is_empty()) {
        return Err(DataError::SchemaMismatch {
            file,
            reason: "with a declared schema, the features and their kinds come from the schema alone \
                     (leave `features` and `categorical` out)"
                .into(),
        });
    }
    let categorical: Vec<String> = match &schema {
        Some(s) => s
            .features
            .iter()
            .filter(|f| matches!(f, FeatureDecl::Categorical { .. }))
            .map(|f| f.name().to_string())
            .collect(),
        None => spec.categorical.clone(),
    };
    for name in spec.ignore.iter().chain(&categorical) {
        find(name)?;
    }
    let feature_names: Vec<String> = match (&schema, &spec.features) {
        (Some(s), _) => s.names().map(str::to_string).collect(),
        (None, Some(list)) => list.clone(),
        (None, None) => header.iter().filter(|h| **h != spec.label && !spec.ignore.contains(h)).cloned().collect(),
    };
    if feature_names.is_empty() {
        return Err(DataError::NoFeatures { file });
    }
    let mut feature_idx = Vec::with_capacity(feature_names.len());
    for name in &feature_names {
        if *name == spec.label {
            return Err(DataError::LabelIsFeature { file, column: name.clone() });
        }
        feature_idx.push(find(name)?);
    }

    let mut columns: Vec<RawColumn> = feature_names
        .iter()
        .map(|name| {
            if categorical.contains(name) {
                RawColumn::Categorical { name: name.clone(), values: Vec::new() }
            } else {
                RawColumn::Numeric { name: name.clone(), values: Vec::new() }
            }
        })
        .collect();
    let mut raw_labels: Vec<(String, u64)> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e, header.len()))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let label = &record[label_idx];
        if is_missing(label) {
            return Err(DataError::MissingLabel { file, line });
        }
        raw_labels.push((label.trim().to_string(), line));
        for (col, &idx) in columns.iter_mut().zip(&feature_idx) {
            let cell = &record[idx];
            match col {
                RawColumn::Numeric { name, values } => {
                    if is_missing(cell) {
                        values.push(None);
                    } else {
                        let v: f64 = cell.trim().parse().map_err(|_| DataError::NonNumeric {
                            file: file.clone(),
                            line,
                            column: name.clone(),
                        })?;
                        if !v.is_finite() {
                            return Err(DataError::NonNumeric { file, line, column: name.clone() });
                        }
                        values.push(Some(v));
                    }
                }
                RawColumn::Categorical { values, .. } => {
                    values.push((!is_missing(cell)).then(|| cell.trim().to_string()));
                }
            }
        }
    }
    if raw_labels.is_empty() {
        return Err(DataError::Empty { file });
    }

    let class_names: Vec<String> = match &spec.classes {
        Some(c) => c.clone(),
        None => raw_labels.iter().map(|(l, _)| l.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
    };
    if class_names.len() < 2 {
        return Err(DataError::TooFewClasses { file, found: class_names.len() });
    }
    let index: BTreeMap<&str, u32> = class_names.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
    let mut labels = Vec::with_capacity(raw_labels.len());
    let mut counts = vec![0usize; class_names.len()];
    for (label, line) in &raw_labels {
        let c = *index.get(label.as_str()).ok_or(DataError::UnknownClass { file: file.clone(), line: *line })?;
        counts[c as usize] += 1;
        labels.push(c);
    }
    if let Some(c) = counts.iter().position(|&n| n == 0) {
        return Err(DataError::EmptyClass { class: class_names[c].clone(), split: None });
    }
    Ok(RawTable { file, columns, labels, class_names })
}

/// Dense, encoded examples: `features` is row-major `len() x num_features`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Encoded features, row-major.
    pub features: Vec<f32>,
    /// Class index of each row.
    pub labels: Vec<u32>,
    /// Width of a row.
    pub num_features: usize,
    /// Number of classes, including any absent from this split.
    pub num_classes: usize,
}

impl Dataset {
    /// Examples in the split.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The encoded features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.num_features..(i + 1) * self.num_features]
    }

    /// Examples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// A shuffled partition of the row indices into batches of at most
    /// `batch_size` (the last one may be smaller); the order depends only on `seed`.
    pub(crate) fn batches(&self, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        order.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect()
    }

    /// Gather rows into a contiguous feature buffer and label list.
    pub fn gather(&self, rows: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(rows.len() * self.num_features);
        for &r in rows {
            x.extend_from_slice(self.row(r));
        }
        (x, rows.iter().map(|&r| self.labels[r]).collect())
    }
}

/// A member's three splits of a loaded table, encoded.
#[derive(Clone, Debug)]
pub struct TabularData {
    /// The local training split (when fitting locally, the encoding was fitted on it alone).
    pub train: Dataset,
    /// The validation split: early stopping in `TabularTask::train_round` (never leaves the member).
    pub validation: Dataset,
    /// The test split, on which a member reports its metrics.
    pub test: Dataset,
    /// The encoding, to encode further rows the same way.
    pub preprocessor: Preprocessor,
    /// Class names in class-index order.
    pub class_names: Vec<String>,
}

/// The three local splits of a member's data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The rows local training uses.
    Train,
    /// Rows held out for model selection.
    Validation,
    /// Rows held out for the reported metrics.
    Test,
}

impl TabularData {
    /// Load, split and preprocess `path`; every class must appear in the training split.
    pub fn load(path: &Path, spec: &TabularSpec, split: &SplitConfig) -> Result<Self, DataError> {
        let table = load_csv(path, spec)?;
        Self::from_table(&table, spec, split)
    }

    /// Split an already loaded table by a keyed hash of each row
    /// ([`hashed_split`], keyed by `split.seed`) and encode it.
    pub fn from_table(table: &RawTable, spec: &TabularSpec, split: &SplitConfig) -> Result<Self, DataError> {
        let idx = hashed_split(table, &(0..table.len()).collect::<Vec<_>>(), split)?;
        Self::from_indices(table, spec, &idx)
    }

    /// Encode a table split by given row indices (a simulator's
    /// partition) as `spec.schema` says: the declared schema, or statistics
    /// of the training rows when fitting locally. Every class must appear
    /// in the training rows when fitting locally.
    pub fn from_indices(table: &RawTable, spec: &TabularSpec, idx: &SplitIndices) -> Result<Self, DataError> {
        let pre = match spec.declared_schema()? {
            Some(schema) => Preprocessor::from_schema(&schema, table)?,
            None => Preprocessor::fit(table, &idx.train, spec.missing_indicators),
        };
        let train = pre.transform(table, &idx.train);
        // Only when fitting locally: under a declared schema a member whose
        // training rows lack a class still trains (refusing would make
        // joining a function of its data).
        if let (false, Some(c)) = (spec.schema.is_declared(), train.class_counts().iter().position(|&n| n == 0)) {
            // Name the class only when it came from the configuration: a
            // label read from the file is a data value.
            let class = if spec.classes.is_some() { table.class_names[c].clone() } else { format!("#{c}") };
            return Err(DataError::EmptyClass { class, split: Some("train") });
        }
        Ok(Self {
            validation: pre.transform(table, &idx.validation),
            test: pre.transform(table, &idx.test),
            train,
            preprocessor: pre,
            class_names: table.class_names.clone(),
        })
    }

    /// One of the three splits.
    pub fn split(&self, split: Split) -> &Dataset {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

/// Path of a data set shipped in the repository's `examples/data/`.
pub fn shipped_data_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data").join(file)
}
