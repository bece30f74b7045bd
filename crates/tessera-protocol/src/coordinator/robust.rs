//! Byzantine-robust aggregation rules for research: coordinate-wise median,
//! coordinate-wise trimmed mean (Yin et al. 2018) and (multi-)Krum
//! (Blanchard et al. 2017).
//!
//! Each rule needs every member's individual update, which is exactly what
//! secure aggregation hides. They therefore exist only for the simulator's
//! `insecure_plaintext` mode, and the coordinator refuses them otherwise
//! (and under differential privacy, whose accounting assumes a clipped sum).

use serde::{Deserialize, Serialize};

/// How the plaintext updates of a round are combined instead of the mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum RobustRule {
    /// Coordinate-wise median (the mean of the two middle values for an
    /// even count).
    Median,
    /// Coordinate-wise mean after dropping the `trim` fraction of largest
    /// and of smallest values (rounded down) at each coordinate.
    TrimmedMean {
        /// Fraction trimmed at each end, in [0, 0.5).
        trim: f64,
    },
    /// Krum with at most `byzantine` faulty members: the update whose
    /// `n - byzantine - 2` nearest neighbours are closest (squared L2);
    /// with `select = m > 1`, the mean of the m best-scoring updates
    /// (multi-Krum).
    Krum {
        /// Faulty members tolerated.
        byzantine: u32,
        /// Updates averaged (1: plain Krum).
        #[serde(default = "one")]
        select: u32,
    },
}

fn one() -> u32 {
    1
}

/// Why a robust rule cannot be configured or cannot run on a round's updates.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RobustError {
    /// `robust.trim` outside `[0, 0.5)`.
    #[error("robust.trim must lie in [0, 0.5)")]
    Trim,
    /// `robust.select = 0`.
    #[error("robust.select must be at least 1")]
    SelectNone,
    /// No update arrived.
    #[error("no updates to aggregate")]
    NoUpdates,
    /// The updates are not all of one length.
    #[error("updates differ in length")]
    Lengths,
    /// The trim leaves no update.
    #[error("trimmed mean: trimming {trimmed} of {updates} updates from each side leaves none")]
    TrimmedAll {
        /// Updates trimmed from each side.
        trimmed: usize,
        /// Updates received.
        updates: usize,
    },
    /// Krum needs `2f + 3` updates.
    #[error("Krum with {byzantine} Byzantine members needs at least 2f + 3 updates, got {updates}")]
    KrumTooFew {
        /// The configured `f`.
        byzantine: usize,
        /// Updates received.
        updates: usize,
    },
    /// Multi-Krum cannot select more than `n - f` updates.
    #[error("multi-Krum cannot select {select} of {updates} updates with {byzantine} Byzantine")]
    KrumSelect {
        /// The configured selection.
        select: usize,
        /// Updates received.
        updates: usize,
        /// The configured `f`.
        byzantine: usize,
    },
}

impl RobustRule {
    /// Whether the rule's parameters are usable.
    pub fn validate(&self) -> Result<(), RobustError> {
        match *self {
            RobustRule::TrimmedMean { trim } if !(0.0..0.5).contains(&trim) => Err(RobustError::Trim),
            RobustRule::Krum { select: 0, .. } => Err(RobustError::SelectNone),
            _ => Ok(()),
        }
    }

    /// The rule's name in configs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            RobustRule::Median => "median",
            RobustRule::TrimmedMean { .. } => "trimmed_mean",
            RobustRule::Krum { .. } => "krum",
        }
    }

    /// Combine equally long update vectors into one. Errors (never panics)
    /// when the rule cannot run on this many updates.
    pub fn aggregate(&self, updates: &[Vec<f32>]) -> Result<Vec<f32>, RobustError> {
        let n = updates.len();
        let d = updates.first().map_or(0, Vec::len);
        if n == 0 {
            return Err(RobustError::NoUpdates);
        }
        if updates.iter().any(|u| u.len() != d) {
            return Err(RobustError::Lengths);
        }
        match *self {
            RobustRule::Median => Ok(per_coordinate(updates, |col| {
                let m = col.len() / 2;
                if col.len() % 2 == 1 { col[m] } else { (col[m - 1] + col[m]) / 2.0 }
            })),
            RobustRule::TrimmedMean { trim } => {
                let k = (trim * n as f64).floor() as usize;
                if 2 * k >= n {
                    return Err(RobustError::TrimmedAll { trimmed: k, updates: n });
                }
                Ok(per_coordinate(updates, |col| {
                    let kept = &col[k..col.len() - k];
                    kept.iter().sum::<f64>() / kept.len() as f64
                }))
            }
            RobustRule::Krum { byzantine, select } => krum(updates, byzantine as usize, select as usize),
        }
    }
}

/// Apply `f` to each coordinate's values, sorted ascending (in f64).
fn per_coordinate(updates: &[Vec<f32>], f: impl Fn(&[f64]) -> f64) -> Vec<f32> {
    let d = updates[0].len();
    let mut col = vec![0f64; updates.len()];
    (0..d)
        .map(|j| {
            for (c, u) in col.iter_mut().zip(updates) {
                *c = f64::from(u[j]);
            }
            col.sort_by(f64::total_cmp);
            f(&col) as f32
        })
        .collect()
}

fn krum(updates: &[Vec<f32>], f: usize, select: usize) -> Result<Vec<f32>, RobustError> {
    let n = updates.len();
    if n < 2 * f + 3 {
        return Err(RobustError::KrumTooFew { byzantine: f, updates: n });
    }
    if select > n - f {
        return Err(RobustError::KrumSelect { select, updates: n, byzantine: f });
    }
    let dist =
        |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>();
    let mut d2 = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let v = dist(&updates[i], &updates[j]);
            d2[i][j] = v;
            d2[j][i] = v;
        }
    }
    let mut scores: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n).filter(|j| *j != i).map(|j| d2[i][j]).collect();
            row.sort_by(f64::total_cmp);
            (row[..n - f - 2].iter().sum(), i)
        })
        .collect();
    // Ties go to the lower party index, so the result is deterministic.
    scores.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let d = updates[0].len();
    let mut out = vec![0f64; d];
    for &(_, i) in &scores[..select] {
        for (o, v) in out.iter_mut().zip(&updates[i]) {
            *o += f64::from(*v);
        }
    }
    Ok(out.into_iter().map(|v| (v / select as f64) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups(rows: &[&[f32]]) -> Vec<Vec<f32>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn median_by_hand() {
        let u = ups(&[&[1.0, -4.0], &[3.0, 100.0], &[2.0, 0.0]]);
        assert_eq!(RobustRule::Median.aggregate(&u).unwrap(), vec![2.0, 0.0]);
        let u = ups(&[&[1.0], &[3.0], &[2.0], &[10.0]]);
        assert_eq!(RobustRule::Median.aggregate(&u).unwrap(), vec![2.5]);
    }

    #[test]
    fn trimmed_mean_by_hand() {
        // 5 updates, trim 0.2: drop one from each end per coordinate.
        let u = ups(&[&[1.0, 5.0], &[2.0, 4.0], &[3.0, 3.0], &[4.0, 2.0], &[1000.0, -1000.0]]);
        let r = RobustRule::TrimmedMean { trim: 0.2 }.aggregate(&u).unwrap();
        assert_eq!(r, vec![3.0, 3.0]); // (2+3+4)/3 and (4+3+2)/3
        assert_eq!(RobustRule::TrimmedMean { trim: 0.0 }.aggregate(&u).unwrap()[0], 202.0);
        assert!(RobustRule::TrimmedMean { trim: 0.5 }.validate().is_err());
        // Unvalidated, trimming half of each side leaves nothing: an error, not a panic.
        assert!(RobustRule::TrimmedMean { trim: 0.5 }.aggregate(&u[..2]).is_err());
    }

    #[test]
    fn krum_by_hand_ignores_an_outlier() {
        // n = 5, f = 1: score = sum of the 2 smallest squared distances.
        // Points 0, 1, 2, 3 on a line and an attacker at 100.
        let u = ups(&[&[0.0], &[1.0], &[2.0], &[3.0], &[100.0]]);
        // Scores: p0: 1+4=5, p1: 1+1=2, p2: 1+1=2, p3: 1+4=5, p4: 97^2+98^2.
        // p1 and p2 tie at 2; the lower index wins.
        assert_eq!(RobustRule::Krum { byzantine: 1, select: 1 }.aggregate(&u).unwrap(), vec![1.0]);
        // Multi-Krum of the 2 best: mean of p1 and p2.
        assert_eq!(RobustRule::Krum { byzantine: 1, select: 2 }.aggregate(&u).unwrap(), vec![1.5]);
        // Too few updates for the assumed attackers.
        assert!(RobustRule::Krum { byzantine: 2, select: 1 }.aggregate(&u).is_err());
        assert!(RobustRule::Krum { byzantine: 0, select: 0 }.validate().is_err());
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        assert!(RobustRule::Median.aggregate(&[]).is_err());
        assert!(RobustRule::Median.aggregate(&ups(&[&[1.0], &[1.0, 2.0]])).is_err());
    }
}
