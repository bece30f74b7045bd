//! Train/validation/test splits.
//!
//! A member's splits come from [`hashed_split`]: each record's side is a
//! keyed hash of that record's own content, so adding or removing one
//! record never moves another (a seeded shuffle would reshuffle every row of
//! its class, and under DP the set of rows that train must not depend on a
//! neighbour). [`stratified_split`] remains for cutting a public table
//! (pretraining), where class proportions matter and privacy does not.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::data::{RawColumn, RawTable};
use crate::error::DataError;

/// Fractions of the rows that go to validation and test; the rest trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitConfig {
    /// Fraction for validation, in `[0, 1)`.
    pub validation: f64,
    /// Fraction for test, in `[0, 1)`; with `validation`, below 1.
    pub test: f64,
    /// The split's key: [`hashed_split`] hashes it with each row,
    /// [`stratified_split`] seeds its shuffle with it.
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { validation: 0.0, test: 0.2, seed: 0 }
    }
}

impl SplitConfig {
    fn check(&self) -> Result<(), DataError> {
        let ok = |f: f64| (0.0..1.0).contains(&f);
        if !ok(self.validation) || !ok(self.test) || self.validation + self.test >= 1.0 {
            return Err(DataError::InvalidSplit { reason: "validation and test must be in [0, 1) and sum below 1" });
        }
        Ok(())
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

/// A point in `[0, 1)` that depends only on the key and row `r`'s content
/// (its label and every feature cell, missing ones included).
fn row_point(table: &RawTable, r: usize, key: u64) -> f64 {
    let mut h = Sha256::new();
    h.update(b"tessera.split.v1");
    h.update(key.to_le_bytes());
    h.update(table.labels[r].to_le_bytes());
    for col in &table.columns {
        match col {
            RawColumn::Numeric { values, .. } => match values[r] {
                None => h.update([0u8]),
                Some(v) => {
                    h.update([1u8]);
                    h.update(v.to_bits().to_le_bytes());
                }
            },
            RawColumn::Categorical { values, .. } => match &values[r] {
                None => h.update([0u8]),
                Some(s) => {
                    h.update([2u8]);
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            },
        }
    }
    let digest = h.finalize();
    let word = u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
    // The top 53 bits, exactly representable: uniform on a grid in [0, 1).
    (word >> 11) as f64 / (1u64 << 53) as f64
}

/// Split `rows` of `table` by a keyed hash of each row's content: a row
/// whose point is below `test` tests, below `test + validation` validates,
/// and trains otherwise. The fractions hold in expectation (not exactly, and
/// not per class); two identical rows always land together.
pub fn hashed_split(table: &RawTable, rows: &[usize], cfg: &SplitConfig) -> Result<SplitIndices, DataError> {
    cfg.check()?;
    let mut out = SplitIndices { train: Vec::new(), validation: Vec::new(), test: Vec::new() };
    for &r in rows {
        let u = row_point(table, r, cfg.seed);
        if u < cfg.test {
            out.test.push(r);
        } else if u < cfg.test + cfg.validation {
            out.validation.push(r);
        } else {
            out.train.push(r);
        }
    }
    for v in [&mut out.train, &mut out.validation, &mut out.test] {
        v.sort_unstable();
    }
    Ok(out)
}

/// Stratified split: each class is shuffled by `seed` and cut by the
/// fractions, so every split keeps the class proportions. For public data
/// only: one row added to a class reshuffles that whole class.
pub fn stratified_split(labels: &[u32], num_classes: usize, cfg: &SplitConfig) -> Result<SplitIndices, DataError> {
    cfg.check()?;
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
