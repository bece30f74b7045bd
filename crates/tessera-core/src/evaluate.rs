//! Classification metrics from predicted class probabilities: the one
//! implementation every model (tabular and image) reports through, since the
//! aggregator averages these numbers across members. Pure functions on
//! plain slices, so they are easy to check by hand; [`eval_metrics`] is the
//! one entry point and states the conventions.

use crate::{EvalMetrics, RoundMetrics};

/// Binary ROC AUC of `scores` against `positive`; `None` without both classes.
fn roc_auc_binary(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of (average, 1-based) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// One-vs-rest macro AUC from row-major `probs` (`labels.len() x num_classes`).
fn roc_auc(probs: &[f32], labels: &[u32], num_classes: usize) -> f64 {
    let scores_of = |c: usize| -> Vec<f64> { probs.chunks(num_classes).map(|r| r[c] as f64).collect() };
    if num_classes == 2 {
        let pos: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
        return roc_auc_binary(&scores_of(1), &pos).unwrap_or(0.5);
    }
    let aucs: Vec<f64> = (0..num_classes)
        .filter_map(|c| {
            let pos: Vec<bool> = labels.iter().map(|&l| l as usize == c).collect();
            roc_auc_binary(&scores_of(c), &pos)
        })
        .collect();
    if aucs.is_empty() { 0.5 } else { aucs.iter().sum::<f64>() / aucs.len() as f64 }
}

/// Row = true class, column = predicted class.
fn confusion_matrix(predicted: &[u32], labels: &[u32], num_classes: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; num_classes]; num_classes];
    for (&p, &t) in predicted.iter().zip(labels) {
        m[t as usize][p as usize] += 1;
    }
    m
}

fn accuracy(confusion: &[Vec<u64>]) -> f64 {
    let total: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..confusion.len()).map(|i| confusion[i][i]).sum();
    if total == 0 { 0.0 } else { correct as f64 / total as f64 }
}

fn balanced_accuracy(confusion: &[Vec<u64>]) -> f64 {
    let recalls: Vec<f64> = confusion
        .iter()
        .enumerate()
        .filter_map(|(i, row)| {
            let n: u64 = row.iter().sum();
            (n > 0).then(|| row[i] as f64 / n as f64)
        })
        .collect();
    if recalls.is_empty() { 0.0 } else { recalls.iter().sum::<f64>() / recalls.len() as f64 }
}

fn macro_f1(confusion: &[Vec<u64>]) -> f64 {
    let k = confusion.len();
    let f1s: Vec<f64> = (0..k)
        .filter_map(|c| {
            let tp = confusion[c][c] as f64;
            let actual: u64 = confusion[c].iter().sum();
            let predicted: u64 = (0..k).map(|r| confusion[r][c]).sum();
            if actual == 0 && predicted == 0 {
                return None;
            }
            Some(2.0 * tp / (actual + predicted) as f64)
        })
        .collect();
    if f1s.is_empty() { 0.0 } else { f1s.iter().sum::<f64>() / f1s.len() as f64 }
}

/// Index of the largest probability per row; ties go to the lower class.
fn argmax_rows(probs: &[f32], num_classes: usize) -> Vec<u32> {
    probs
        .chunks(num_classes)
        .map(|r| {
            let mut best = 0;
            for (c, v) in r.iter().enumerate() {
                if *v > r[best] {
                    best = c;
                }
            }
            best as u32
        })
        .collect()
}

/// Fill [`EvalMetrics`] from probabilities, labels and an already computed
/// mean loss. `probs` is row-major, `labels.len() x num_classes`; labels are
/// class indices below `num_classes`. The predicted class is the most
/// probable one (ties go to the lower class).
///
/// Conventions: AUC is the exact rank statistic (Mann-Whitney U) with ties
/// counted as one half; for more than two classes it is the macro average of
/// one-vs-rest AUCs over the classes that have both positives and negatives.
/// When no class qualifies (a single-class split) AUC is reported as 0.5,
/// chance level, so aggregates stay finite. Balanced accuracy averages recall
/// over classes present in the labels; macro F1 averages over classes present
/// in the labels or the predictions.
pub fn eval_metrics(probs: &[f32], labels: &[u32], num_classes: usize, mean_loss: f64) -> EvalMetrics {
    let predicted = argmax_rows(probs, num_classes);
    let confusion = confusion_matrix(&predicted, labels, num_classes);
    EvalMetrics {
        num_examples: labels.len() as u64,
        loss: mean_loss,
        accuracy: accuracy(&confusion),
        balanced_accuracy: balanced_accuracy(&confusion),
        auc: roc_auc(probs, labels, num_classes),
        f1: macro_f1(&confusion),
        confusion,
    }
}

/// [`RoundMetrics`] from a summed confusion matrix whose cells may carry
/// noise (private evaluation releases only these and, under the client unit,
/// a loss sum, securely summed with each member's discrete Gaussian noise;
/// exact counts are the noise-free case). Row = true class.
///
/// The estimator works on the signed, unrounded cells, because the noise is
/// symmetric: each cell is unbiased, and so are the trace, the row and column
/// sums and the total. Accuracy is trace / total, balanced accuracy the mean
/// of diagonal / row sum over the rows whose noised sum is at least 1/2 (a
/// class present), macro F1 the mean of 2·diagonal / (row + column sum) over
/// the classes where that sum is at least 1/2, each ratio clamped to [0, 1];
/// loss is the loss sum over the total, at least 0. A ratio of unbiased sums
/// is consistent, with a bias of second order in (noise on the total) /
/// total. Rounding or clamping the cells first is not: a cell whose true
/// count is 0 (most cells off the diagonal) then reads as
/// `E[max(0, noise)]`, about 0.4 noise standard deviations, in the
/// denominator only, so accuracy reads low by as much as the noise is large
/// against the counts (docs/privacy.md, "Decoding the noised counts").
///
/// When the noised total is below 1/2 nothing was measured: accuracy,
/// balanced accuracy, F1 and loss are absent and `num_examples` is 0. The
/// returned `confusion` is for display only: the cells rounded, negatives
/// read as 0. AUC is always absent, since it needs per-example scores.
pub fn metrics_from_noised_counts(counts: &[Vec<f64>], loss_sum: Option<f64>) -> RoundMetrics {
    let k = counts.len();
    let cell = |i: usize, j: usize| counts[i].get(j).copied().unwrap_or(0.0);
    let confusion: Vec<Vec<u64>> =
        (0..k).map(|i| (0..k).map(|j| cell(i, j).round().max(0.0) as u64).collect()).collect();
    let total: f64 = (0..k).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| cell(i, j)).sum();
    // NaN (a poisoned sum) counts as nothing measured, as a total below 1/2.
    if total.is_nan() || total < 0.5 {
        return RoundMetrics { confusion, ..RoundMetrics::default() };
    }
    let row = |i: usize| (0..k).map(|j| cell(i, j)).sum::<f64>();
    let col = |j: usize| (0..k).map(|i| cell(i, j)).sum::<f64>();
    let ratio = |x: f64, y: f64| (x / y).clamp(0.0, 1.0);
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let trace: f64 = (0..k).map(|i| cell(i, i)).sum();
    let recalls: Vec<f64> = (0..k).filter(|&i| row(i) >= 0.5).map(|i| ratio(cell(i, i), row(i))).collect();
    let f1s: Vec<f64> =
        (0..k).filter(|&c| row(c) + col(c) >= 0.5).map(|c| ratio(2.0 * cell(c, c), row(c) + col(c))).collect();
    RoundMetrics {
        num_examples: total.round() as u64,
        loss: loss_sum.map(|s| (s / total).max(0.0)),
        accuracy: Some(ratio(trace, total)),
        balanced_accuracy: mean(recalls),
        auc: None,
        f1: mean(f1s),
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_auc_with_ties_matches_hand_count() {
        // Positives: 0.8, 0.4, 0.4; negatives: 0.4, 0.1.
        // Pairs (pos > neg = 1, tie = 0.5): 0.8: 1+1; 0.4: 0.5+1; 0.4: 0.5+1 => 5 of 6.
        let scores = [0.8, 0.4, 0.4, 0.4, 0.1];
        let pos = [true, true, true, false, false];
        let auc = roc_auc_binary(&scores, &pos).unwrap();
        assert!((auc - 5.0 / 6.0).abs() < 1e-12, "{auc}");
        assert_eq!(roc_auc_binary(&[0.1, 0.2], &[true, true]), None);
        // Perfect ranking, and its reverse.
        assert_eq!(roc_auc_binary(&[0.1, 0.9], &[false, true]), Some(1.0));
        assert_eq!(roc_auc_binary(&[0.9, 0.1], &[false, true]), Some(0.0));
        // All tied: one half.
        assert_eq!(roc_auc_binary(&[0.3; 4], &[true, false, true, false]), Some(0.5));
    }

    #[test]
    fn multiclass_auc_is_one_vs_rest_macro() {
        // Class 0 perfectly separated, class 1 reversed, class 2 perfectly separated.
        let probs = [
            0.8, 0.1, 0.1, // label 0
            0.1, 0.1, 0.8, // label 2
            0.3, 0.0, 0.7, // label 2
            0.5, 0.0, 0.5, // label 1
        ];
        let labels = [0, 2, 2, 1];
        // OvR class 0: pos 0.8 vs neg {0.1,0.3,0.5} -> 1.
        // class 1: pos 0.0 vs neg {0.1,0.1,0.0} -> (0 + 0 + 0.5)/3.
        // class 2: pos {0.8,0.7} vs neg {0.1,0.5} -> 1.
        let expected = (1.0 + 0.5 / 3.0 + 1.0) / 3.0;
        assert!((roc_auc(&probs, &labels, 3) - expected).abs() < 1e-12);
    }

    #[test]
    fn confusion_based_metrics_match_hand_values() {
        // truth:     0 0 0 1 1 2
        // predicted: 0 0 1 1 2 2
        let labels = [0, 0, 0, 1, 1, 2];
        let pred = [0, 0, 1, 1, 2, 2];
        let m = confusion_matrix(&pred, &labels, 3);
        assert_eq!(m, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        assert!((accuracy(&m) - 4.0 / 6.0).abs() < 1e-12);
        assert!((balanced_accuracy(&m) - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
        // F1 per class: c0 2*2/(3+2)=0.8, c1 2*1/(2+2)=0.5, c2 2*1/(1+2)=2/3.
        assert!((macro_f1(&m) - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn eval_metrics_fills_every_field() {
        let probs = [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7];
        let labels = [0, 1, 1, 1];
        let m = eval_metrics(&probs, &labels, 2, 0.25);
        assert_eq!(m.num_examples, 4);
        assert_eq!(m.confusion, vec![vec![1, 0], vec![1, 2]]);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert!((m.balanced_accuracy - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((m.auc - 1.0).abs() < 1e-12);
        assert_eq!(m.loss, 0.25);
    }

    #[test]
    fn auc_without_a_scorable_class_is_chance_level() {
        // One class only: no positive/negative pair exists for any class.
        assert_eq!(roc_auc(&[0.2, 0.8, 0.6, 0.4], &[1, 1], 2), 0.5);
        assert_eq!(roc_auc(&[0.2, 0.5, 0.3, 0.1, 0.1, 0.8], &[2, 2], 3), 0.5);
    }

    #[test]
    fn macro_f1_averages_over_classes_in_labels_or_predictions() {
        // Class 2 appears in neither the labels nor the predictions: it is
        // left out of the average (as scikit-learn's macro F1 does), not
        // counted as a zero.
        let m = confusion_matrix(&[0, 1, 1], &[0, 1, 0], 3);
        let (f0, f1) = (2.0 * 1.0 / (2.0 + 1.0), 2.0 * 1.0 / (1.0 + 2.0));
        assert!((macro_f1(&m) - (f0 + f1) / 2.0).abs() < 1e-12);
        // A class predicted but never true counts, with F1 = 0.
        let m = confusion_matrix(&[2, 1], &[0, 1], 3);
        assert!((macro_f1(&m) - (0.0 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
    }

    /// Private evaluation's encoding: the L2 norm stays within `norm` for
    /// any member (the sensitivity the noise is sized for), and summing the
    /// encoded tensors decodes to the summed confusion and loss.
    #[test]
    fn private_evaluation_encoding_is_bounded_and_sums() {
        use crate::EvalRelease;
        let rel = EvalRelease { classes: 2, max_examples: 100, loss_bound: 4.0, norm: 0.5 };
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        // Worst cases: every example in one cell with the largest loss, and
        // far more examples than M (scaled down), and a huge loss (clipped).
        let one_cell = EvalMetrics { loss: 1e9, confusion: vec![vec![5000, 0], vec![0, 0]], ..Default::default() };
        assert!(norm(&rel.encode(&one_cell)) <= 0.5, "{}", norm(&rel.encode(&one_cell)));
        let a = EvalMetrics { loss: 0.5, confusion: vec![vec![40, 2], vec![3, 35]], ..Default::default() };
        let b = EvalMetrics { loss: 1.5, confusion: vec![vec![10, 0], vec![5, 5]], ..Default::default() };
        let sum: Vec<f32> = rel.encode(&a).iter().zip(rel.encode(&b)).map(|(x, y)| x + y).collect();
        let m = rel.decode(&sum);
        assert_eq!(m.confusion, vec![vec![50, 2], vec![8, 40]]);
        assert_eq!(m.num_examples, 100);
        let loss = m.loss.expect("the client-level form releases the loss");
        assert!((loss - (0.5 * 80.0 + 1.5 * 20.0) / 100.0).abs() < 1e-4, "{loss}");
        assert!(m.accuracy.is_some_and(|a| (a - 0.9).abs() < 1e-6), "{m:?}");
        assert_eq!(m.auc, None, "no per-example scores, no AUC");
        let nothing = rel.decode(&[-1.0; 5]);
        assert_eq!(nothing.num_examples, 0, "noise below zero counts nothing");
        assert_eq!((nothing.accuracy, nothing.f1, nothing.loss), (None, None, None), "and measures nothing");
    }

    /// The record-level form: one record more moves exactly one encoded
    /// value, by one weight (the sensitivity its noise is sized for), and
    /// the encoded blocks sum to the summed counts. No loss is released.
    #[test]
    fn record_level_evaluation_moves_one_count_per_record() {
        use crate::EvalRelease;
        let rel = EvalRelease { classes: 2, max_examples: 100, loss_bound: 4.0, norm: 0.5 };
        let w = rel.record_weight();
        let a = EvalMetrics { loss: 0.5, confusion: vec![vec![40, 2], vec![3, 35]], ..Default::default() };
        let plus = EvalMetrics { loss: 1e9, confusion: vec![vec![40, 2], vec![4, 35]], ..Default::default() };
        let (ea, ep) = (rel.encode_records(&a), rel.encode_records(&plus));
        let diff: Vec<f64> = ea.iter().zip(&ep).map(|(x, y)| f64::from(*y) - f64::from(*x)).collect();
        let moved: f64 = diff.iter().map(|d| d * d).sum::<f64>().sqrt();
        assert!((moved - w).abs() < 1e-6, "one record moved the block by {moved}, not {w}");
        assert_eq!(ep[4], 0.0, "no loss in the record-level block");
        let sum: Vec<f32> = ea.iter().zip(&ep).map(|(x, y)| x + y).collect();
        let m = rel.decode_records(&sum);
        assert_eq!(m.confusion, vec![vec![80, 4], vec![7, 70]]);
        assert!(m.accuracy.is_some_and(|a| (a - 150.0 / 161.0).abs() < 1e-6), "{m:?}");
        assert_eq!((m.loss, m.auc), (None, None), "neither loss nor AUC is released");
    }

    /// Standard normal draws from a seeded SplitMix64 and Box-Muller: the
    /// decoder's input only needs symmetric noise of a known size.
    fn normals(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        move || {
            let (u, v) = (uniform().max(f64::MIN_POSITIVE), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    /// Members' confusion counts, each block noised by its member (std
    /// `sigma` counts per cell, as record-level private evaluation does),
    /// summed and decoded, `trials` times: the mean decoded accuracy and
    /// balanced accuracy.
    fn mean_decoded(members: &[Vec<Vec<u64>>], sigma: f64, trials: usize) -> (f64, f64) {
        use crate::EvalRelease;
        let k = members[0].len() as u32;
        let rel = EvalRelease { classes: k, max_examples: 1000, loss_bound: 1.0, norm: 1.0 };
        let w = rel.record_weight();
        let mut noise = normals(7);
        let (mut acc, mut bal) = (0.0, 0.0);
        for _ in 0..trials {
            let mut sum = vec![0f64; rel.len()];
            for c in members {
                let block = rel.encode_records(&EvalMetrics { confusion: c.clone(), ..Default::default() });
                for (s, v) in sum.iter_mut().zip(block).take(rel.len() - 1) {
                    *s += f64::from(v) + noise() * sigma * w;
                }
            }
            let m = rel.decode_records(&sum.iter().map(|v| *v as f32).collect::<Vec<_>>());
            acc += m.accuracy.expect("hundreds of examples were counted");
            bal += m.balanced_accuracy.expect("every class is present");
        }
        (acc / trials as f64, bal / trials as f64)
    }

    /// A confusion matrix of `n` examples over `k` balanced classes, `right`
    /// of each class on the diagonal and the rest spread over the next two
    /// classes: most off-diagonal cells are 0, as in a good classifier's.
    fn confusion(k: usize, per_class: u64, right: u64) -> Vec<Vec<u64>> {
        let mut m = vec![vec![0u64; k]; k];
        for (i, row) in m.iter_mut().enumerate() {
            row[i] = right;
            row[(i + 1) % k] = (per_class - right).div_ceil(2);
            row[(i + 2) % k] += (per_class - right) / 2;
        }
        m
    }

    /// Private evaluation's decode is unbiased on average: a known
    /// confusion matrix plus each member's symmetric noise decodes, over
    /// many draws, to the true accuracy. The shape is the small-split image
    /// run that read 0.63 against the harness's 0.84 (10 classes, 10 sites
    /// of 60 test images, about 6.4 counts of summed noise per cell): when
    /// the decode rounded the noised cells and read negatives as 0, each
    /// of the 90 off-diagonal zeros gained about 0.4 noise standard
    /// deviations in the denominator, and accuracy read 0.61. WDBC's shape
    /// (2 classes, 5 hospitals of about 28 test rows) is checked too.
    #[test]
    fn noised_counts_decode_to_an_unbiased_accuracy() {
        let site = confusion(10, 6, 5);
        let members = vec![site; 10];
        let truth = 500.0 / 600.0;
        let (acc, bal) = mean_decoded(&members, 2.02, 4000);
        // The ratio's own bias is second order: (k²·a − k)·s²/n² ≈ 0.008 here.
        assert!((acc - truth).abs() < 0.015, "mean decoded accuracy {acc:.4}, true {truth:.4}");
        assert!((bal - truth).abs() < 0.02, "mean decoded balanced accuracy {bal:.4}, true {truth:.4}");
        let wdbc = vec![vec![vec![17, 1], vec![1, 9]]; 5];
        let truth = 26.0 / 28.0;
        let (acc, _) = mean_decoded(&wdbc, 2.85, 4000);
        assert!((acc - truth).abs() < 0.01, "WDBC shape: mean decoded accuracy {acc:.4}, true {truth:.4}");
    }
}
