//! Tabular data: CSV loading, stratified splits, preprocessing fitted on the
//! local training split only, and seeded batching.
//!
//! Policies, stated once:
//! - Missing values are empty cells and the markers `NA`, `N/A`, `NaN`, `?`
//!   (case-insensitive, surrounding spaces ignored).
//! - Numeric columns: a missing value is imputed with the training mean; if
//!   the training split has any missing value in that column (and
//!   [`TabularSpec::missing_indicators`] is on) a 0/1 "was missing" feature
//!   is appended. Standardization (z-score) uses training mean and standard
//!   deviation; a constant column is centred but not scaled.
//! - Categorical columns are one-hot encoded over the categories seen in the
//!   training split, sorted; "missing" is a category of its own. A category
//!   never seen in training encodes as the all-zero vector.
//! - Classes are the configured [`TabularSpec::classes`] in that order, or
//!   the sorted distinct labels of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::DataError;

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
    /// Append a 0/1 "was missing" feature to each numeric column that has a
    /// missing value in the training split.
    pub missing_indicators: bool,
}

impl TabularSpec {
    /// Defaults around the label column `label`: every other column a
    /// numeric feature, classes read from the file, missing-value indicators on.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            features: None,
            ignore: Vec::new(),
            categorical: Vec::new(),
            classes: None,
            missing_indicators: true,
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

/// One loaded feature column, before any fitting.
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
    for name in spec.ignore.iter().chain(&spec.categorical) {
        find(name)?;
    }
    let feature_names: Vec<String> = match &spec.features {
        Some(list) => list.clone(),
        None => header.iter().filter(|h| **h != spec.label && !spec.ignore.contains(h)).cloned().collect(),
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
            if spec.categorical.contains(name) {
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

/// Fractions of each class that go to validation and test; the rest trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitConfig {
    /// Fraction for validation, in `[0, 1)`.
    pub validation: f64,
    /// Fraction for test, in `[0, 1)`; with `validation`, below 1.
    pub test: f64,
    /// Seed of the per-class shuffle.
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { validation: 0.15, test: 0.2, seed: 0 }
    }
}

/// Row indices of the three splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitIndices {
    /// Training rows, ascending.
    pub train: Vec<usize>,
    /// Validation rows, ascending.
    pub validation: Vec<usize>,
    /// Test rows, ascending.
    pub test: Vec<usize>,
}

/// Stratified split: each class is shuffled by `seed` and cut by the
/// fractions, so every split keeps the class proportions.
pub fn stratified_split(labels: &[u32], num_classes: usize, cfg: &SplitConfig) -> Result<SplitIndices, DataError> {
    let ok = |f: f64| (0.0..1.0).contains(&f);
    if !ok(cfg.validation) || !ok(cfg.test) || cfg.validation + cfg.test >= 1.0 {
        return Err(DataError::InvalidSplit { reason: "validation and test must be in [0, 1) and sum below 1" });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out = SplitIndices { train: Vec::new(), validation: Vec::new(), test: Vec::new() };
    for class in 0..num_classes as u32 {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        rows.shuffle(&mut rng);
        let n = rows.len() as f64;
        let n_test = (n * cfg.test).round() as usize;
        let n_val = ((n * cfg.validation).round() as usize).min(rows.len() - n_test);
        out.test.extend_from_slice(&rows[..n_test]);
        out.validation.extend_from_slice(&rows[n_test..n_test + n_val]);
        out.train.extend_from_slice(&rows[n_test + n_val..]);
    }
    for v in [&mut out.train, &mut out.validation, &mut out.test] {
        v.sort_unstable();
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq)]
enum ColumnEncoder {
    Numeric {
        mean: f64,
        scale: f64,
        indicator: bool,
    },
    /// Sorted training categories; `None` is the "missing" category.
    Categorical {
        categories: Vec<Option<String>>,
    },
}

/// Imputation, standardization and one-hot encoding, fitted on one split.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessor {
    encoders: Vec<ColumnEncoder>,
    num_features: usize,
}

impl Preprocessor {
    /// Fit on the rows `fit_rows` of `table` (the local training split).
    pub fn fit(table: &RawTable, fit_rows: &[usize], missing_indicators: bool) -> Self {
        let encoders: Vec<ColumnEncoder> = table
            .columns
            .iter()
            .map(|col| match col {
                RawColumn::Numeric { values, .. } => {
                    let present: Vec<f64> = fit_rows.iter().filter_map(|&r| values[r]).collect();
                    let any_missing = present.len() < fit_rows.len();
                    let n = present.len().max(1) as f64;
                    let mean = present.iter().sum::<f64>() / n;
                    let var = present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    let std = var.sqrt();
                    let scale = if std > 1e-12 { std } else { 1.0 };
                    ColumnEncoder::Numeric { mean, scale, indicator: missing_indicators && any_missing }
                }
                RawColumn::Categorical { values, .. } => {
                    let set: BTreeSet<Option<String>> = fit_rows.iter().map(|&r| values[r].clone()).collect();
                    ColumnEncoder::Categorical { categories: set.into_iter().collect() }
                }
            })
            .collect();
        let num_features = encoders
            .iter()
            .map(|e| match e {
                ColumnEncoder::Numeric { indicator, .. } => 1 + usize::from(*indicator),
                ColumnEncoder::Categorical { categories } => categories.len(),
            })
            .sum();
        Self { encoders, num_features }
    }

    /// Width of an encoded row (numeric columns, indicators, one-hot blocks).
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// Encode the rows `rows` of `table` into a dense data set.
    pub fn transform(&self, table: &RawTable, rows: &[usize]) -> Dataset {
        let d = self.num_features;
        let mut features = vec![0f32; rows.len() * d];
        for (out_row, &r) in features.chunks_mut(d.max(1)).zip(rows) {
            let mut k = 0;
            for (enc, col) in self.encoders.iter().zip(&table.columns) {
                match (enc, col) {
                    (ColumnEncoder::Numeric { mean, scale, indicator }, RawColumn::Numeric { values, .. }) => {
                        let v = values[r];
                        out_row[k] = ((v.unwrap_or(*mean) - mean) / scale) as f32;
                        k += 1;
                        if *indicator {
                            out_row[k] = if v.is_none() { 1.0 } else { 0.0 };
                            k += 1;
                        }
                    }
                    (ColumnEncoder::Categorical { categories }, RawColumn::Categorical { values, .. }) => {
                        if let Ok(pos) = categories.binary_search(&values[r]) {
                            out_row[k + pos] = 1.0;
                        }
                        k += categories.len();
                    }
                    // Encoders are fitted from the same table's columns, in order.
                    _ => unreachable!("encoder kind always matches its column"),
                }
            }
        }
        Dataset {
            features,
            labels: rows.iter().map(|&r| table.labels[r]).collect(),
            num_features: d,
            num_classes: table.num_classes(),
        }
    }
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

/// A split of a loaded table, preprocessed with the training split's statistics.
#[derive(Clone, Debug)]
pub struct TabularData {
    /// The local training split; the preprocessing was fitted on it alone.
    pub train: Dataset,
    /// The validation split.
    pub validation: Dataset,
    /// The test split, on which a member reports its metrics.
    pub test: Dataset,
    /// The fitted preprocessing, to encode further rows the same way.
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

impl Split {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl TabularData {
    /// Load, split and preprocess `path`; every class must appear in the training split.
    pub fn load(path: &Path, spec: &TabularSpec, split: &SplitConfig) -> Result<Self, DataError> {
        let table = load_csv(path, spec)?;
        Self::from_table(&table, spec, split)
    }

    /// Split an already loaded table by `split` and preprocess it.
    pub fn from_table(table: &RawTable, spec: &TabularSpec, split: &SplitConfig) -> Result<Self, DataError> {
        let idx = stratified_split(&table.labels, table.num_classes(), split)?;
        Self::from_indices(table, spec, &idx)
    }

    /// Preprocess a table split by given row indices (a simulator's
    /// partition); every class must appear in the training rows.
    pub fn from_indices(table: &RawTable, spec: &TabularSpec, idx: &SplitIndices) -> Result<Self, DataError> {
        let pre = Preprocessor::fit(table, &idx.train, spec.missing_indicators);
        let train = pre.transform(table, &idx.train);
        if let Some(c) = train.class_counts().iter().position(|&n| n == 0) {
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
