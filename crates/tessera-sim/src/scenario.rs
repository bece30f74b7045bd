//! Scenario files (`simulations/*.toml`): the data set, how it is split
//! across simulated members, and the same `[model]`, `[train]`, `[secure]`
//! and `[strategy]` sections an operator writes for a real consortium.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_aggregator::config::TrainSection;
use tessera_aggregator::coordinator::{CohortSelection, PrivacyConfig, SecureConfig};
use tessera_aggregator::strategy::StrategyConfig;
use tessera_core::config::ModelConfig;

use crate::partition::Partitioner;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("scenario {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The data set every simulated member draws its partition from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// CSV file, relative to the scenario file.
    pub path: PathBuf,
    pub label: String,
    #[serde(default)]
    pub categorical: Vec<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Fraction of each member's examples held out for its evaluation.
    #[serde(default = "default_test")]
    pub test: f64,
    #[serde(default = "default_validation")]
    pub validation: f64,
}

fn default_test() -> f64 {
    0.25
}
fn default_validation() -> f64 {
    0.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub seed: u64,
    pub clients: usize,
    pub rounds: u64,
    /// Fewest contributions a round accepts (default: 2/3 of the members).
    #[serde(default)]
    pub min_clients: Option<u32>,
    /// Research only: aggregate in plaintext (no secure aggregation). The
    /// daemons refuse this; robust aggregation rules need it.
    #[serde(default)]
    pub insecure_plaintext: bool,
    pub data: DataSection,
    #[serde(default = "default_partition")]
    pub partition: Partitioner,
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub secure: SecureConfig,
    #[serde(default)]
    pub strategy: StrategyConfig,
    #[serde(default = "default_cohort")]
    pub cohort: CohortSelection,
    /// Differential privacy, as in the aggregator's `[privacy]` section.
    /// Simulated noise is seeded from the scenario seed (reproducible runs).
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
}

fn default_partition() -> Partitioner {
    Partitioner::Iid
}
fn default_cohort() -> CohortSelection {
    CohortSelection::All
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: path.into(), source })?;
        let mut s: Self =
            toml::from_str(&text).map_err(|e| ScenarioError::Invalid { path: path.into(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        s.data.path = base.join(&s.data.path);
        if let Some(p) = s.model.pretrained.as_mut() {
            *p = base.join(&*p);
        }
        s.validate().map_err(|message| ScenarioError::Invalid { path: path.into(), message })?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.clients < 2 {
            return Err("clients must be at least 2".into());
        }
        if self.rounds == 0 {
            return Err("rounds must be at least 1".into());
        }
        if self.min_clients().unwrap_or(0) as usize > self.clients {
            return Err("min_clients exceeds clients".into());
        }
        if !(0.0..1.0).contains(&self.data.test) || !(0.0..1.0).contains(&self.data.validation) {
            return Err("data.test and data.validation must lie in [0, 1)".into());
        }
        Ok(())
    }

    /// The effective minimum number of contributions.
    pub fn min_clients(&self) -> Option<u32> {
        Some(self.min_clients.unwrap_or_else(|| ((2 * self.clients).div_ceil(3)).max(2) as u32))
    }
}
