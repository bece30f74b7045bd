//! Classification metrics of an image model: the checks and the loss here,
//! every metric from `tessera_core::evaluate`, the one implementation the
//! tabular models report through too. Only aggregates leave this module.

use tessera_core::{EvalMetrics, eval_metrics};

use crate::error::{Result, VisionError};

/// `probs` is `n x k` row-major (rows sum to one), `labels` in `0..k`.
pub(crate) fn classification_metrics(probs: &[f32], labels: &[usize], num_classes: usize) -> Result<EvalMetrics> {
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
    let mut loss = 0.0f64;
    for (row, &y) in probs.chunks_exact(k).zip(labels) {
        loss -= f64::from(row[y].max(1e-12)).ln();
    }
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    Ok(eval_metrics(probs, &labels, k, loss / n as f64))
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

    #[test]
    fn a_single_class_split_reports_the_same_metrics_as_a_tabular_model() {
        // Image and tabular members are averaged together by the aggregator,
        // so their conventions must agree: chance-level AUC without a
        // scorable class, macro F1 over the classes present.
        let probs = [0.7, 0.2, 0.1, 0.4, 0.5, 0.1];
        let m = classification_metrics(&probs, &[0, 0], 3).unwrap();
        assert_eq!(m.auc, 0.5);
        assert_eq!(m, eval_metrics(&probs, &[0, 0], 3, m.loss));
        assert!((m.f1 - (2.0 / 3.0 + 0.0) / 2.0).abs() < 1e-12, "{}", m.f1);
    }
}
