//! Encoding a table's rows as dense features: from a declared
//! [`FeatureSchema`] (the private path) or fitted on local rows (the
//! explicit, non-private `fit-locally` opt-in).
//!
//! Declared schema, stated once:
//! - Numeric: the value is clamped to `[min, max]`, then encoded as
//!   `(v - center) / scale`; a missing value encodes as the centre (0). With
//!   `missing_indicator`, a 0/1 "was missing" column follows.
//! - Categorical: one-hot over the declared vocabulary plus a last `other`
//!   column for every unseen value and for a missing cell.
//!
//! So every record's encoding depends on that record and the schema alone,
//! and every encoded value is bounded by the schema.
//!
//! Fitted locally (non-private): a missing value is imputed with the
//! training mean; if the training rows have a missing value in that column
//! (and indicators are on) a 0/1 "was missing" feature is appended;
//! z-scores use the training mean and standard deviation (a constant column
//! is centred, not scaled); categories are the sorted training categories,
//! "missing" one of them, and an unseen category encodes as all zeros.

use std::collections::BTreeSet;

use tessera_core::{FeatureDecl, FeatureSchema};

use crate::data::{Dataset, RawColumn, RawTable};
use crate::error::DataError;

#[derive(Clone, Debug, PartialEq)]
enum ColumnEncoder {
    Numeric {
        center: f64,
        scale: f64,
        indicator: bool,
        /// Declared bounds the value is clamped to (none when fitted).
        bounds: Option<(f64, f64)>,
    },
    /// The vocabulary; `None` is the "missing" category (fitted only).
    Categorical {
        categories: Vec<Option<String>>,
        /// A last column for unseen and missing values (declared only).
        other: bool,
    },
}

impl ColumnEncoder {
    fn width(&self) -> usize {
        match self {
            Self::Numeric { indicator, .. } => 1 + usize::from(*indicator),
            Self::Categorical { categories, other } => categories.len() + usize::from(*other),
        }
    }
}

/// Imputation, scaling and one-hot encoding: declared, or fitted on one split.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessor {
    encoders: Vec<ColumnEncoder>,
    num_features: usize,
}

impl Preprocessor {
    /// The encoding `schema` declares. `table`'s columns must be the
    /// schema's features, in order and of the declared kinds ([`crate::load_csv`]
    /// reads them so); nothing about the rows is used.
    pub fn from_schema(schema: &FeatureSchema, table: &RawTable) -> Result<Self, DataError> {
        let names: Vec<&str> = table.columns.iter().map(RawColumn::name).collect();
        if names != schema.names().collect::<Vec<_>>() {
            return Err(DataError::SchemaMismatch {
                file: table.file.clone(),
                reason: "the table's feature columns are not the schema's, in the schema's order".into(),
            });
        }
        let mut encoders = Vec::with_capacity(schema.features.len());
        for (decl, col) in schema.features.iter().zip(&table.columns) {
            let enc = match (decl, col) {
                (
                    FeatureDecl::Numeric { min, max, center, scale, missing_indicator, .. },
                    RawColumn::Numeric { .. },
                ) => ColumnEncoder::Numeric {
                    center: *center,
                    scale: *scale,
                    indicator: *missing_indicator,
                    bounds: Some((*min, *max)),
                },
                (FeatureDecl::Categorical { categories, .. }, RawColumn::Categorical { .. }) => {
                    ColumnEncoder::Categorical {
                        categories: categories.iter().cloned().map(Some).collect(),
                        other: true,
                    }
                }
                _ => {
                    return Err(DataError::SchemaMismatch {
                        file: table.file.clone(),
                        reason: format!("column `{}` was not read as the schema's type", decl.name()),
                    });
                }
            };
            encoders.push(enc);
        }
        Ok(Self::with(encoders))
    }

    /// Fit on the rows `fit_rows` of `table` (the local training split).
    /// Not differentially private: every statistic here is a function of
    /// the member's records, and so is the feature count.
    pub fn fit(table: &RawTable, fit_rows: &[usize], missing_indicators: bool) -> Self {
        let encoders = table
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
                    ColumnEncoder::Numeric {
                        center: mean,
                        scale,
                        indicator: missing_indicators && any_missing,
                        bounds: None,
                    }
                }
                RawColumn::Categorical { values, .. } => {
                    let set: BTreeSet<Option<String>> = fit_rows.iter().map(|&r| values[r].clone()).collect();
                    ColumnEncoder::Categorical { categories: set.into_iter().collect(), other: false }
                }
            })
            .collect();
        Self::with(encoders)
    }

    fn with(encoders: Vec<ColumnEncoder>) -> Self {
        let num_features = encoders.iter().map(ColumnEncoder::width).sum();
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
                    (
                        ColumnEncoder::Numeric { center, scale, indicator, bounds },
                        RawColumn::Numeric { values, .. },
                    ) => {
                        let v = values[r].map(|v| bounds.map_or(v, |(lo, hi)| v.clamp(lo, hi)));
                        out_row[k] = ((v.unwrap_or(*center) - center) / scale) as f32;
                        if *indicator {
                            out_row[k + 1] = if v.is_none() { 1.0 } else { 0.0 };
                        }
                    }
                    (ColumnEncoder::Categorical { categories, other }, RawColumn::Categorical { values, .. }) => {
                        match categories.iter().position(|c| *c == values[r]) {
                            Some(pos) => out_row[k + pos] = 1.0,
                            None if *other => out_row[k + categories.len()] = 1.0,
                            None => {}
                        }
                    }
                    // Encoders are built from the same table's columns, in order.
                    _ => unreachable!("encoder kind always matches its column"),
                }
                k += enc.width();
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
