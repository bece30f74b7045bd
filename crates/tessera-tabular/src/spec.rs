//! From the shared `[model]` configuration (`tessera_core::config`) to this
//! crate's model types. The aggregator uses [`initial_trainable_params`] to
//! seed the global model; members build the same architecture around their
//! data and check that it agrees.
//!
//! `[model] pretrained` names a backbone checkpoint (`pretrain`'s format).
//! Every party that builds the network loads it: the aggregator's initial
//! model (so the trainable backbone tensors start from the file), each
//! member's model (so its frozen backbone is the file's) and the export
//! (so the exported model is the one members trained). A party that skipped
//! it would train a head on a random backbone that nobody exports.

use tessera_core::{ModelConfig, ModelParams, TrainableConfig};

use crate::error::LearnError;
use crate::model::{MlpConfig, TabularMlp, TrainablePart, export_slots};
use crate::pretrain::load_backbone;
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

/// The network a `[model]` section describes, on `device`: initial weights
/// from `init_seed`, then the `pretrained` backbone's weights and biases
/// over them where the section names a file.
pub fn configured_mlp(m: &ModelConfig, device: &burn::tensor::Device) -> Result<TabularMlp, LearnError> {
    let mut model = TabularMlp::new(&mlp_config(m), device)?;
    if let Some(path) = &m.pretrained {
        load_backbone(&mut model, path, &[])?;
    }
    Ok(model)
}

/// The trainable parameters every party starts from: [`configured_mlp`]'s
/// (seeded, so every party that calls this gets the same values; from the
/// pretrained file where it provides them).
pub fn initial_trainable_params(m: &ModelConfig) -> Result<ModelParams, LearnError> {
    let model = configured_mlp(m, &DEFAULT_BACKEND.training_device())?;
    let slots = model.trainable_slots(&(&m.trainable).into());
    export_slots(&model, &slots)
}
