//! Evaluation metrics a member reports on its own held-out split, and the
//! per-round record written to `metrics.jsonl`. Only aggregates: never a
//! record or a per-example value.

use serde::{Deserialize, Serialize};

/// Metrics of one model on one member's held-out split.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Held-out examples evaluated; the weight in [`Self::weighted_mean`].
    pub num_examples: u64,
    /// Mean loss per held-out example, as the model computes it.
    pub loss: f64,
    /// Fraction of examples classified correctly, in [0, 1].
    pub accuracy: f64,
    /// Mean recall over the classes present in the labels, in [0, 1].
    pub balanced_accuracy: f64,
    /// ROC AUC (one-vs-rest macro average for more than two classes).
    pub auc: f64,
    /// Macro F1.
    pub f1: f64,
    /// Row = true class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

impl EvalMetrics {
    /// Example-weighted mean across members; confusion matrices are summed.
    pub fn weighted_mean(reports: &[EvalMetrics]) -> EvalMetrics {
        let total: u64 = reports.iter().map(|m| m.num_examples).sum();
        if total == 0 {
            return EvalMetrics::default();
        }
        let w = |f: fn(&EvalMetrics) -> f64| {
            reports.iter().map(|m| f(m) * m.num_examples as f64).sum::<f64>() / total as f64
        };
        let classes = reports.iter().map(|m| m.confusion.len()).max().unwrap_or(0);
        let mut confusion = vec![vec![0u64; classes]; classes];
        for m in reports {
            for (i, row) in m.confusion.iter().enumerate() {
                for (j, c) in row.iter().enumerate() {
                    if j < classes {
                        confusion[i][j] += c;
                    }
                }
            }
        }
        EvalMetrics {
            num_examples: total,
            loss: w(|m| m.loss),
            accuracy: w(|m| m.accuracy),
            balanced_accuracy: w(|m| m.balanced_accuracy),
            auc: w(|m| m.auc),
            f1: w(|m| m.f1),
            confusion,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The round number, as on the wire.
    pub round: u64,
    /// Members whose contribution is in the aggregate.
    pub participants: u32,
    /// Members selected into the cohort that did not finish.
    pub dropped: u32,
    /// Whether an aggregate was produced (false: aborted below threshold).
    pub accepted: bool,
    /// The new global model's [`EvalMetrics::loss`] over the evaluating
    /// members, example-weighted (0 when the round was aborted).
    pub loss: f64,
    /// Example-weighted [`EvalMetrics::accuracy`], as `loss`.
    pub accuracy: f64,
    /// Example-weighted [`EvalMetrics::balanced_accuracy`], as `loss`.
    pub balanced_accuracy: f64,
    /// Example-weighted [`EvalMetrics::auc`], as `loss`.
    pub auc: f64,
    /// Example-weighted [`EvalMetrics::f1`], as `loss`.
    pub f1: f64,
    /// Frame bytes (header included) of this round's messages from members,
    /// counted from the messages, so independent of transport and timing;
    /// QUIC/TLS overhead is not included.
    pub bytes_up: u64,
    /// Frame bytes of this round's messages to members, counted the same way.
    pub bytes_down: u64,
    /// Duration of the round in seconds, start to end (the simulator's
    /// modelled duration in a simulation).
    pub seconds: f64,
    /// Cumulative epsilon spent once this round is counted, at `delta`;
    /// `None` when the run is not private.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// The run's delta; `None` when the run is not private.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Adaptive clipping: the update clip (L2) this round used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f64>,
    /// Adaptive clipping: the noisy estimate of the fraction of
    /// contributors whose update needed no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclipped_fraction: Option<f64>,
    /// Adaptive clipping: the update clip the next round uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_clip_norm: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_mean_weights_by_examples() {
        let a = EvalMetrics {
            num_examples: 10,
            accuracy: 1.0,
            confusion: vec![vec![5, 0], vec![0, 5]],
            ..Default::default()
        };
        let b = EvalMetrics {
            num_examples: 30,
            accuracy: 0.5,
            confusion: vec![vec![10, 5], vec![10, 5]],
            ..Default::default()
        };
        let m = EvalMetrics::weighted_mean(&[a, b]);
        assert_eq!(m.num_examples, 40);
        assert!((m.accuracy - 0.625).abs() < 1e-12);
        assert_eq!(m.confusion, vec![vec![15, 5], vec![10, 10]]);
        assert_eq!(EvalMetrics::weighted_mean(&[]).num_examples, 0);
    }
}
