//! Evaluation metrics a member reports on its own held-out split, what a
//! round's evaluation released, and the per-round record written to
//! `metrics.jsonl`. Only aggregates: never a record or a per-example value.
//!
//! A value a round did not release is absent (`None`), never a stand-in:
//! private evaluation releases no AUC (it needs per-example scores) and,
//! under the record unit, no loss; a round in which nothing was evaluated
//! releases no accuracy, balanced accuracy or F1 either. A `0.0` or `0.5`
//! there would read as measured.

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

/// A round's evaluation as released: [`EvalMetrics`] with the values the
/// round did not release absent. Never on the wire: the coordinator builds
/// it from members' plaintext reports or from the noised sum of a private
/// evaluation ([`crate::EvalRelease::decode`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// Held-out examples counted (noised under private evaluation).
    pub num_examples: u64,
    /// Mean loss per example; `None` when not released (record-level
    /// private evaluation) or when no member evaluated.
    pub loss: Option<f64>,
    /// Fraction classified correctly, in [0, 1]; `None` when no member
    /// evaluated (or a private evaluation's noised count is below 1/2).
    pub accuracy: Option<f64>,
    /// Mean recall over the classes present, in [0, 1]; `None` as `accuracy`.
    pub balanced_accuracy: Option<f64>,
    /// ROC AUC; `None` when not released (private evaluation releases
    /// counts, not the per-example scores AUC needs) or when no member
    /// evaluated.
    pub auc: Option<f64>,
    /// Macro F1; `None` as `accuracy`.
    pub f1: Option<f64>,
    /// Row = true class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

impl RoundMetrics {
    /// The example-weighted mean of members' plaintext reports
    /// ([`EvalMetrics::weighted_mean`]): every value is released, unless no
    /// member evaluated, when all of them are absent.
    pub fn from_reports(reports: &[EvalMetrics]) -> Self {
        let m = EvalMetrics::weighted_mean(reports);
        let measured = m.num_examples > 0;
        RoundMetrics {
            num_examples: m.num_examples,
            loss: measured.then_some(m.loss),
            accuracy: measured.then_some(m.accuracy),
            balanced_accuracy: measured.then_some(m.balanced_accuracy),
            auc: measured.then_some(m.auc),
            f1: measured.then_some(m.f1),
            confusion: m.confusion,
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
    /// The round's [`RoundMetrics::loss`]: the evaluating members'
    /// example-weighted mean loss. `null` when it was not released (record-level
    /// private evaluation), no member evaluated, or the round was aborted.
    pub loss: Option<f64>,
    /// The round's [`RoundMetrics::accuracy`]: the example-weighted
    /// [`EvalMetrics::accuracy`], or the one decoded from a private
    /// evaluation's noised counts. `null` when no member evaluated (no
    /// evaluation was due, a private run without `[privacy.evaluation]`) or
    /// the round was aborted. Lines written before it could be absent read
    /// as they were (a number, `0` for such rounds).
    pub accuracy: Option<f64>,
    /// The round's [`RoundMetrics::balanced_accuracy`], as `accuracy`.
    pub balanced_accuracy: Option<f64>,
    /// The round's [`RoundMetrics::auc`]; `null` under private evaluation
    /// (not released), without evaluation, or when aborted.
    pub auc: Option<f64>,
    /// The round's [`RoundMetrics::f1`] (macro F1), as `accuracy`.
    pub f1: Option<f64>,
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

    /// Plaintext reports release every value; no report releases nothing,
    /// so none reads as a measured 0.
    #[test]
    fn round_metrics_from_reports_mark_the_unmeasured_absent() {
        let a = EvalMetrics { num_examples: 4, loss: 0.25, auc: 0.75, accuracy: 0.5, f1: 0.4, ..Default::default() };
        let m = RoundMetrics::from_reports(&[a]);
        assert_eq!((m.loss, m.auc, m.accuracy, m.f1), (Some(0.25), Some(0.75), Some(0.5), Some(0.4)));
        assert_eq!(m.balanced_accuracy, Some(0.0));
        let none = RoundMetrics::from_reports(&[]);
        assert_eq!((none.loss, none.auc, none.num_examples), (None, None, 0));
        assert_eq!((none.accuracy, none.balanced_accuracy, none.f1), (None, None, None));
    }

    /// `metrics.jsonl` writes an absent value as `null`, and lines written
    /// before (with numbers, or without the key) still read.
    #[test]
    fn round_record_writes_absent_values_as_null_and_reads_old_lines() {
        let r = RoundRecord { round: 3, loss: None, auc: None, accuracy: Some(0.9), ..Default::default() };
        let line = serde_json::to_value(&r).unwrap();
        assert_eq!((&line["loss"], &line["auc"]), (&serde_json::Value::Null, &serde_json::Value::Null));
        assert_eq!(line["accuracy"], 0.9);
        let nothing = serde_json::to_value(RoundRecord { round: 4, ..Default::default() }).unwrap();
        for key in ["accuracy", "balanced_accuracy", "f1"] {
            assert_eq!(nothing[key], serde_json::Value::Null, "{key} of a round that evaluated nothing");
        }
        let old: RoundRecord = serde_json::from_str(
            r#"{"round":1,"participants":3,"dropped":0,"accepted":true,"loss":0.5,"accuracy":0.9,
                "balanced_accuracy":0.8,"auc":0.5,"f1":0.7,"bytes_up":1,"bytes_down":2,"seconds":0.1}"#,
        )
        .unwrap();
        assert_eq!((old.loss, old.auc), (Some(0.5), Some(0.5)));
        assert_eq!((old.accuracy, old.balanced_accuracy, old.f1), (Some(0.9), Some(0.8), Some(0.7)));
        let older: RoundRecord = serde_json::from_str(
            r#"{"round":1,"participants":3,"dropped":0,"accepted":false,"bytes_up":1,"bytes_down":2,"seconds":0.1}"#,
        )
        .unwrap();
        assert_eq!((older.accuracy, older.f1), (None, None), "a line without the keys reads them absent");
    }
}
