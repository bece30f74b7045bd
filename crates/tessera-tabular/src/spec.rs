//! From the shared `[model]` configuration (`tessera_core::config`) to this
//! crate's model types. The aggregator uses [`initial_trainable_params`] to
//! seed the global model; members build the same architecture around their
//! data and check that it agrees.

use tessera_core::{ModelConfig, ModelParams, TrainableConfig};

use crate::error::LearnError;
use crate::model::{MlpConfig, TabularMlp, TrainablePart, export_slots};
use crate::train::ModelSpec;
use tessera_learn::DEFAULT_BACKEND;

impl From<&TrainableConfig> for TrainablePart {
    fn from(t: &TrainableConfig) -> Self {
        match t {
            TrainableConfig::HeadOnly => TrainablePart::HeadOnly,
            TrainableConfig::LastLayers { layers } => TrainablePart::LastLayers(*layers),
            TrainableConfig::All => TrainablePart::All,
            TrainableConfig::Lora { rank, alpha } => TrainablePart::Lora { rank: *rank, alpha: *alpha },
        }
    }
}

/// The MLP shape a `[model]` section describes; the aggregator builds the
/// same network from it for export.
pub fn mlp_config(m: &ModelConfig) -> MlpConfig {
    MlpConfig {
        num_features: m.num_features,
        hidden: m.hidden.clone(),
        num_classes: m.num_classes,
        trainable: (&m.trainable).into(),
        init_seed: m.init_seed,
    }
}

/// The per-member model choice (sizes come from the member's data).
pub(crate) fn model_spec(m: &ModelConfig) -> ModelSpec {
    ModelSpec { hidden: m.hidden.clone(), trainable: (&m.trainable).into(), init_seed: m.init_seed }
}

/// The trainable parameters every party starts from. The initial weights
/// are drawn from the section's `init_seed`, so every party that calls this
/// gets the same values.
pub fn initial_trainable_params(m: &ModelConfig) -> Result<ModelParams, LearnError> {
    let cfg = mlp_config(m);
    let device = DEFAULT_BACKEND.training_device();
    let model = TabularMlp::new(&cfg, &device)?;
    let slots = model.trainable_slots(&cfg.trainable);
    export_slots(&model, &slots)
}
