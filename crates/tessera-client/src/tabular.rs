//! The member's local model for tabular data: a `tessera-learn` task behind
//! the driver's [`LocalModel`] interface.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::config::ModelConfig;
use tessera_core::round::{DpSettings, TrainSettings};
use tessera_learn::dpsgd::DpSgdConfig;

/// Separates the seeded noise stream from the sampling stream.
const NOISE_STREAM: u64 = 0x6e6f_6973_6500_0001;
use tessera_core::{EvalMetrics, ModelParams};
use tessera_learn::{ComputeBackend, LearnError, Split, TabularData, TabularTask};

use crate::driver::LocalModel;
use tessera_protocol::member::TrainedUpdate;

pub struct TabularModel {
    task: TabularTask,
    /// TEST ONLY: derive DP-SGD sampling and noise from the round seed so
    /// runs are reproducible. Predictable noise protects nothing.
    seeded_noise: bool,
    /// DP-SGD's noise mechanism, built once for the run's settings.
    noise: tessera_privacy::MechanismCache,
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
        Ok(Self { task, seeded_noise: false, noise: Default::default() })
    }

    /// See the field: for simulations and tests that must be bit-reproducible.
    pub fn with_seeded_noise(mut self, seeded: bool) -> Self {
        self.seeded_noise = seeded;
        self
    }

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
    ) -> Result<TrainedUpdate, String> {
        self.task.set_trainable_params(model).map_err(|e| e.to_string())?;
        let report = match dp {
            None => self.task.train_round(settings, None).map_err(|e| e.to_string())?,
            Some(dp) => {
                let mut cfg = DpSgdConfig::from_settings(dp);
                let mut rng = if self.seeded_noise {
                    cfg.sampling_seed = Some(settings.seed);
                    ChaCha20Rng::seed_from_u64(settings.seed ^ NOISE_STREAM)
                } else {
                    ChaCha20Rng::from_entropy()
                };
                // The sum of clipped gradients (sensitivity C) over every
                // trainable value, noised at multiplier z, rounding covered.
                let mechanism = self
                    .noise
                    .get(cfg.noise_multiplier, cfg.clip_norm, model.numel())
                    .map_err(|e| format!("DP-SGD noise: {e}"))?
                    .clone();
                let mut failed = None;
                let mut noise = |v: &mut [f32]| {
                    if let Err(e) = mechanism.add_to(v, &mut rng) {
                        failed.get_or_insert(e);
                    }
                };
                let report = self.task.train_round_dp(settings, &cfg, &mut noise, None).map_err(|e| e.to_string())?;
                // A step whose noise failed must not be released.
                if let Some(e) = failed {
                    return Err(format!("DP-SGD noise: {e}"));
                }
                report
            }
        };
        let params = self.task.trainable_params().map_err(|e| e.to_string())?;
        Ok(TrainedUpdate { params, num_examples: self.task.num_train_examples(), mean_loss: report.mean_loss })
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, String> {
        self.task.set_trainable_params(model).map_err(|e| e.to_string())?;
        self.task.evaluate(Split::Test).map_err(|e| e.to_string())
    }
}
