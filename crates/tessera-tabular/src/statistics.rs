//! A member's exact counts for a DP statistics release (issue #18), from
//! its raw rows and the declared schema: the label histogram, each
//! feature's missing count, and each feature's histogram over the public
//! grid (equal-width bins within a numeric feature's declared bounds, the
//! declared vocabulary plus `other`). Each record adds 1 to its label's
//! cell and 1 per feature, to the missing count or to one cell, which is
//! the bound the release's sensitivity rests on. The counts never leave the
//! member except through the noised secure sum.

use tessera_core::{FeatureDecl, FeatureSchema, LocalStatistics, StatsRelease, bin_of};

use crate::{DataError, RawColumn, RawTable};

/// What a member counts over: its raw table, its rows and the schema.
#[derive(Clone, Debug)]
pub struct StatisticsSource {
    /// The member's table as loaded (before any encoding).
    pub table: std::sync::Arc<RawTable>,
    /// The member's rows in it (every split: statistics describe all its records).
    pub rows: Vec<usize>,
    /// The declared schema the columns follow.
    pub schema: FeatureSchema,
    /// Where the member's exact report goes (JSON, the counts named by the
    /// schema); it stays on the member. `None`: no report.
    pub report: Option<std::path::PathBuf>,
}

impl StatisticsSource {
    /// Count as `release` asks and write the exact report, if one is set.
    pub fn count(&self, release: &StatsRelease) -> Result<LocalStatistics, DataError> {
        let counts = count_statistics(&self.table, &self.rows, &self.schema, release)?;
        if let Some(path) = &self.report {
            let report = serde_json::json!({
                "note": "exact counts of this member's records; never sent (the consortium sees only the noised sum)",
                "release": release,
                "exact": tessera_core::StatisticsReport::new(&self.schema, &counts),
            });
            let text = serde_json::to_string_pretty(&report).expect("a report serializes");
            std::fs::write(path, text).map_err(|source| DataError::Io { file: path.clone(), source })?;
        }
        Ok(counts)
    }
}

/// Count `rows` of `table` as `release` asks. The columns must be the
/// schema's (as [`crate::load_csv`] reads them under a declared schema).
pub fn count_statistics(
    table: &RawTable,
    rows: &[usize],
    schema: &FeatureSchema,
    release: &StatsRelease,
) -> Result<LocalStatistics, DataError> {
    let mismatch = |reason: &str| DataError::SchemaMismatch { file: table.file.clone(), reason: reason.into() };
    if !release.matches_schema(schema) || table.columns.len() != schema.features.len() {
        return Err(mismatch("the statistics request does not fit the schema's features"));
    }
    let mut labels = vec![0.0; release.classes as usize];
    for &r in rows {
        let l = table.labels[r] as usize;
        *labels.get_mut(l).ok_or_else(|| mismatch("a label outside the release's classes"))? += 1.0;
    }
    let mut missing = Vec::with_capacity(schema.features.len());
    let mut histograms = Vec::with_capacity(schema.features.len());
    for ((decl, col), cells) in schema.features.iter().zip(&table.columns).zip(&release.cells) {
        let mut hist = vec![0.0; *cells as usize];
        let mut absent = 0.0;
        match (decl, col) {
            (FeatureDecl::Numeric { min, max, .. }, RawColumn::Numeric { values, .. }) => {
                for &r in rows {
                    match values[r] {
                        Some(v) => hist[bin_of(v, *min, *max, *cells)] += 1.0,
                        None => absent += 1.0,
                    }
                }
            }
            (FeatureDecl::Categorical { categories, .. }, RawColumn::Categorical { values, .. }) => {
                for &r in rows {
                    match &values[r] {
                        Some(v) => hist[categories.iter().position(|c| c == v).unwrap_or(categories.len())] += 1.0,
                        None => absent += 1.0,
                    }
                }
            }
            _ => return Err(mismatch("a column was not read as the schema's type")),
        }
        missing.push(absent);
        histograms.push(hist);
    }
    Ok(LocalStatistics { labels, missing, histograms })
}
