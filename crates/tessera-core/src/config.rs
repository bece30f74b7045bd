//! Configuration shared by the aggregator, the member daemon and the
//! simulator. The model section must agree between all parties: the
//! aggregator builds the initial trainable parameters from it, and every
//! member builds the same architecture around its own data.

use serde::{Deserialize, Serialize};

/// Which part of the model trains and is exchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TrainableConfig {
    /// Only the head; the backbone is a frozen feature extractor.
    HeadOnly,
    /// The head plus the last `layers` backbone layers.
    LastLayers {
        /// Backbone layers, counted back from the head, that train too.
        layers: usize,
    },
    /// Every tensor (no frozen backbone).
    All,
    /// Low-rank adapters on the backbone's linear layers, plus the head.
    Lora {
        /// Rank r of each adapter's two factors.
        rank: usize,
        /// Scale of the adapter's output is `alpha / rank`.
        alpha: f32,
    },
}

/// The model every party builds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden layer widths of the tabular MLP; empty = logistic regression.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Input features after preprocessing (one-hot columns included).
    pub num_features: usize,
    /// Output classes of the classifier.
    pub num_classes: usize,
    /// What trains and is exchanged; default [`TrainableConfig::All`].
    #[serde(default = "default_trainable")]
    pub trainable: TrainableConfig,
    /// Seed of the initial weights (all parties must share it); default 1.
    #[serde(default = "default_init_seed")]
    pub init_seed: u64,
    /// Pretrained backbone (safetensors), for transfer learning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<std::path::PathBuf>,
}

fn default_trainable() -> TrainableConfig {
    TrainableConfig::All
}

fn default_init_seed() -> u64 {
    1
}
