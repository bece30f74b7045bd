//! The member's local model for tabular data: a `tessera-learn` task behind
//! the driver's [`LocalModel`] interface.

use tessera_core::config::ModelConfig;
use tessera_core::round::TrainSettings;
use tessera_core::{EvalMetrics, ModelParams};
use tessera_learn::{ComputeBackend, LearnError, Split, TabularData, TabularTask};

use crate::driver::LocalModel;
use crate::participant::TrainedUpdate;

pub struct TabularModel {
    task: TabularTask,
}

impl TabularModel {
    /// Build the model the run configured around this member's data, and
    /// check that the data has the shape everyone else assumes.
    pub fn new(data: TabularData, model: &ModelConfig, backend: ComputeBackend) -> Result<Self, LearnError> {
        let features = data.train.num_features;
        let classes = data.class_names.len();
        if features != model.num_features || classes != model.num_classes {
            return Err(LearnError::Config(format!(
                "local data has {features} features and {classes} classes, the run's model expects {} and {}",
                model.num_features, model.num_classes
            )));
        }
        let task = TabularTask::new(data, &tessera_learn::spec::model_spec(model), backend)?;
        Ok(Self { task })
    }

    pub fn task_mut(&mut self) -> &mut TabularTask {
        &mut self.task
    }
}

impl LocalModel for TabularModel {
    fn train(&mut self, model: &ModelParams, settings: &TrainSettings) -> Result<TrainedUpdate, String> {
        self.task.set_trainable_params(model).map_err(|e| e.to_string())?;
        let report = self.task.train_round(settings, None).map_err(|e| e.to_string())?;
        let params = self.task.trainable_params().map_err(|e| e.to_string())?;
        Ok(TrainedUpdate { params, num_examples: self.task.num_train_examples(), mean_loss: report.mean_loss })
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, String> {
        self.task.set_trainable_params(model).map_err(|e| e.to_string())?;
        self.task.evaluate(Split::Test).map_err(|e| e.to_string())
    }
}
