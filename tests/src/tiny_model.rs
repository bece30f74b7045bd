//! A model for load tests: 6 trainable values, no burn. Training moves
//! every value by the member's `step`, so a round's aggregate is checkable
//! (a lost or doubled member shows); evaluation reports fixed metrics.

use tessera_core::{DpSettings, EvalMetrics, ModelParams, TrainSettings};
use tessera_learn::{LocalError, LocalModel};
use tessera_protocol::TrainedUpdate;

/// See the module docs.
pub struct TinyModel {
    /// What training adds to every value.
    pub step: f32,
}

impl LocalModel for TinyModel {
    fn train(
        &mut self,
        model: &ModelParams,
        _s: &TrainSettings,
        _dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, LocalError> {
        let mut params = model.clone();
        params.values_mut().for_each(|v| *v += self.step);
        Ok(TrainedUpdate { params, num_examples: 10, mean_loss: 0.5 })
    }

    fn evaluate(&mut self, _model: &ModelParams) -> Result<EvalMetrics, LocalError> {
        Ok(EvalMetrics {
            num_examples: 4,
            loss: 0.5,
            accuracy: 0.75,
            balanced_accuracy: 0.75,
            auc: 0.8,
            f1: 0.7,
            confusion: vec![vec![2, 1], vec![0, 1]],
        })
    }
}
