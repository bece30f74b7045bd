//! The member's local model for tabular data: a [`TabularTask`] behind
//! `tessera_learn::LocalModel`, trained on the member's own train split and
//! evaluated on its own test split.

use tessera_core::{
    DpSettings, EvalMetrics, LocalStatistics, ModelConfig, ModelParams, StatsRelease, TrainSettings, TrainedUpdate,
};
use tessera_learn::{ComputeBackend, DpNoise, LocalError, LocalModel};

use crate::{LearnError, Split, StatisticsSource, TabularData, TabularTask};

/// Separates the seeded noise stream from the sampling stream (test mode only).
const NOISE_STREAM: u64 = 0x6e6f_6973_6500_0001;

/// A member's tabular model over its own splits.
pub struct TabularModel {
    task: TabularTask,
    /// DP-SGD's noise, built once for the run's settings.
    noise: DpNoise,
    /// Non-finite per-example gradients zeroed so far (local only).
    zeroed_gradients: u64,
    /// The raw rows DP statistics are counted over, when the member offers them.
    statistics: Option<StatisticsSource>,
}

impl TabularModel {
    /// Build the model the run configured around this member's data (with
    /// the `pretrained` backbone loaded where `[model]` names one), and
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
        let mut task = TabularTask::new(data, &crate::spec::model_spec(model), backend)?;
        if let Some(path) = &model.pretrained {
            task.load_backbone(path, &[])?;
        }
        Ok(Self { task, noise: DpNoise::new(), zeroed_gradients: 0, statistics: None })
    }

    /// TEST ONLY: derive DP-SGD sampling and noise from the round seed, for
    /// simulations and tests that must be bit-reproducible. Predictable
    /// noise protects nothing.
    pub fn with_seeded_noise(mut self, seeded: bool) -> Self {
        self.noise = if seeded { DpNoise::seeded(NOISE_STREAM) } else { DpNoise::new() };
        self
    }

    /// DP-SGD examples, over every round so far, whose gradient was not
    /// finite and so contributed zero instead of failing the round. For the
    /// member's own report: a statistic of its data, never sent.
    pub fn zeroed_gradients(&self) -> u64 {
        self.zeroed_gradients
    }

    /// Count DP statistics over `source` (the member's raw rows under the
    /// declared schema) when a statistics round asks.
    pub fn with_statistics_source(mut self, source: StatisticsSource) -> Self {
        self.statistics = Some(source);
        self
    }

    /// The training task, for progress reporting and tests.
    pub fn task_mut(&mut self) -> &mut TabularTask {
        &mut self.task
    }
}

impl LocalModel for TabularModel {
    fn train(
        &mut self,
        model: &ModelParams,
        settings: &TrainSettings,
        dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, LocalError> {
        self.task.set_trainable_params(model).map_err(LocalError::model)?;
        let report = match dp {
            None => self.task.train_round(settings, None).map_err(LocalError::model)?,
            Some(dp) => {
                // The round's batch size is DP-SGD's public expected batch
                // size: the step never scales with this member's row count.
                let mut round = self.noise.round_for(dp, settings, model.numel())?;
                let mut failed = None;
                let cfg = round.cfg.clone();
                let mut noise = |v: &mut [f32]| {
                    if let Err(e) = round.add_noise(v) {
                        failed.get_or_insert(e);
                    }
                };
                let report = self.task.train_round_dp(settings, &cfg, &mut noise, None);
                // A step whose noise failed must not be released.
                if let Some(e) = failed {
                    return Err(e);
                }
                let report = report.map_err(LocalError::model)?;
                self.zeroed_gradients += report.zeroed_gradients;
                report
            }
        };
        let params = self.task.trainable_params().map_err(LocalError::model)?;
        Ok(TrainedUpdate { params, num_examples: self.task.num_train_examples(), mean_loss: report.mean_loss })
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, LocalError> {
        self.task.set_trainable_params(model).map_err(LocalError::model)?;
        self.task.evaluate(Split::Test).map_err(LocalError::model)
    }

    fn statistics(&mut self, release: &StatsRelease) -> Result<LocalStatistics, LocalError> {
        let s = self.statistics.as_ref().ok_or_else(|| {
            LocalError::Unsupported("this member counts no statistics (no declared schema)".to_string())
        })?;
        s.count(release).map_err(LocalError::model)
    }
}
