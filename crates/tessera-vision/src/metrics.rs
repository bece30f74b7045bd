//! Classification metrics from predicted class probabilities: only
//! aggregates leave this module.

use tessera_core::EvalMetrics;

use crate::error::{Result, VisionError};

/// `probs` is `n x k` row-major (rows sum to one), `labels` in `0..k`.
pub fn classification_metrics(probs: &[f32], labels: &[usize], num_classes: usize) -> Result<EvalMetrics> {
    let n = labels.len();
    let k = num_classes;
    if n == 0 {
        return Err(VisionError::EmptyDataset);
    }
    if k < 2 || probs.len() != n * k {
        return Err(VisionError::InvalidConfig(format!(
            "{} probabilities for {n} examples of {k} classes",
            probs.len()
        )));
    }
    if let Some(&label) = labels.iter().find(|&&l| l >= k) {
        return Err(VisionError::LabelOutOfRange { label, num_classes: k });
    }
    let mut confusion = vec![vec![0u64; k]; k];
    let mut loss = 0.0f64;
    for (row, &y) in probs.chunks_exact(k).zip(labels) {
        let pred = row.iter().enumerate().fold(0, |best, (j, &p)| if p > row[best] { j } else { best });
        confusion[y][pred] += 1;
        loss -= f64::from(row[y].max(1e-12)).ln();
    }
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let (mut recall_sum, mut present, mut f1_sum) = (0.0, 0usize, 0.0);
    for c in 0..k {
        let actual: u64 = confusion[c].iter().sum();
        let predicted: u64 = confusion.iter().map(|r| r[c]).sum();
        let tp = confusion[c][c] as f64;
        if actual > 0 {
            recall_sum += tp / actual as f64;
            present += 1;
        }
        if actual + predicted > 0 {
            f1_sum += 2.0 * tp / (actual + predicted) as f64;
        }
    }
    Ok(EvalMetrics {
        num_examples: n as u64,
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        balanced_accuracy: recall_sum / present.max(1) as f64,
        auc: macro_auc(probs, labels, k),
        f1: f1_sum / k as f64,
        confusion,
    })
}

/// One-vs-rest ROC AUC averaged over classes that have both positives and
/// negatives (Mann-Whitney statistic, ties counted as one half).
fn macro_auc(probs: &[f32], labels: &[usize], k: usize) -> f64 {
    let mut total = 0.0;
    let mut counted = 0;
    for c in 0..k {
        let mut scored: Vec<(f32, bool)> = probs.chunks_exact(k).zip(labels).map(|(r, &y)| (r[c], y == c)).collect();
        let pos = scored.iter().filter(|s| s.1).count();
        let neg = scored.len() - pos;
        if pos == 0 || neg == 0 {
            continue;
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Sum of positive ranks with average ranks for ties.
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < scored.len() {
            let mut j = i;
            while j + 1 < scored.len() && scored[j + 1].0 == scored[i].0 {
                j += 1;
            }
            let avg_rank = (i + j) as f64 / 2.0 + 1.0;
            rank_sum += avg_rank * scored[i..=j].iter().filter(|s| s.1).count() as f64;
            i = j + 1;
        }
        total += (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64;
        counted += 1;
    }
    if counted == 0 { 0.0 } else { total / counted as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_example() {
        // Three classes, four examples; the last one is misclassified as class 0.
        let probs = [0.7, 0.2, 0.1, 0.1, 0.8, 0.1, 0.2, 0.2, 0.6, 0.5, 0.3, 0.2];
        let labels = [0, 1, 2, 2];
        let m = classification_metrics(&probs, &labels, 3).unwrap();
        assert_eq!(m.confusion, vec![vec![1, 0, 0], vec![0, 1, 0], vec![1, 0, 1]]);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert!((m.balanced_accuracy - (1.0 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
        // F1: class 0 = 2/3, class 1 = 1, class 2 = 2/3.
        assert!((m.f1 - (2.0 / 3.0 + 1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        let loss = -((0.7f64).ln() + (0.8f64).ln() + (0.6f64).ln() + (0.2f64).ln()) / 4.0;
        assert!((m.loss - loss).abs() < 1e-6);
        // Class 0 AUC: positive 0.7 beats negatives 0.1, 0.2 but not 0.5 ... it does: 0.7 > 0.5 -> 1.
        // Class 1: 0.8 vs 0.2, 0.2, 0.3 -> 1. Class 2: positives 0.6, 0.2 vs negatives 0.1, 0.1 -> 1.
        assert!((m.auc - 1.0).abs() < 1e-12);
        assert!(classification_metrics(&probs, &[0, 1, 3, 2], 3).is_err());
        assert!(classification_metrics(&[], &[], 3).is_err());
    }

    #[test]
    fn auc_with_ties_is_one_half() {
        let probs = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
        let m = classification_metrics(&probs, &[0, 1, 0, 1], 2).unwrap();
        assert!((m.auc - 0.5).abs() < 1e-12);
    }
}
