//! Scenario files (`simulations/*.toml`): the data set, how it is split
//! across simulated members, and the same `[model]`, `[train]`, `[secure]`
//! and `[strategy]` sections an operator writes for a real consortium.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_aggregator::TrainSection;
use tessera_client::BackendChoice;
use tessera_core::{ModelConfig, ModelSection, SchemaSource, VisionModelConfig};
use tessera_protocol::StrategyConfig;
use tessera_protocol::coordinator::{CohortSelection, PrivacyConfig, RobustRule, SecureConfig};

use crate::faults::{DropoutSection, LatencySection};
use crate::partition::Partitioner;
use crate::population::PopulationDraw;

/// Why a scenario file could not be loaded; both variants name the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}")]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, not the schema, or inconsistent settings ([`Scenario::validate`]).
    #[error("scenario {path}: {message}")]
    Invalid {
        /// The file as given.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What `[data] path` points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// A CSV file with a header row.
    #[default]
    Csv,
    /// The Fashion-MNIST IDX directory, as average-pooled pixel columns.
    FashionMnistPixels,
    /// The Fashion-MNIST IDX directory's training images, for `[vision_model]`.
    FashionMnistImages,
}

/// The data set every simulated member draws its partition from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// What `path` points at (default: a CSV file).
    #[serde(default)]
    pub kind: DataKind,
    /// CSV file (or IDX directory), relative to the scenario file.
    pub path: PathBuf,
    /// Label column (CSV only).
    #[serde(default)]
    pub label: String,
    /// Pixel pooling factor (fashion_mnist_pixels: 4 turns 28x28 into 7x7).
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// Tabular data: the feature encoding every member uses, as a member's
    /// `[data] schema` says it: a schema file (relative to the scenario
    /// file), the schema inline, or `"fit-locally"` (each member fits on
    /// its own training rows; not private, refused with `[privacy]`).
    /// Required: there is no silent default.
    #[serde(default)]
    pub schema: Option<SchemaSource>,
    /// fashion_mnist_pixels: these classes against the rest (binary task).
    #[serde(default)]
    pub positive_classes: Option<Vec<usize>>,
    /// CSV columns to one-hot encode.
    #[serde(default)]
    pub categorical: Vec<String>,
    /// CSV columns never used as features.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Class labels in class-index order (CSV; default: sorted label values).
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Fraction of each member's examples held out for its evaluation.
    #[serde(default = "default_test")]
    pub test: f64,
    /// Fraction of each member's examples held out for validation (default 0).
    #[serde(default = "default_validation")]
    pub validation: f64,
}

fn default_pool() -> usize {
    4
}
fn default_test() -> f64 {
    0.25
}
fn default_validation() -> f64 {
    0.0
}

/// A scenario file: a consortium to simulate. Unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Names the default run directory (`runs/<name>`).
    pub name: String,
    /// Free text for the report.
    #[serde(default)]
    pub description: String,
    /// The one seed every draw derives from (partition, members' streams,
    /// cohorts, faults, DP noise): same seed, same metrics.
    pub seed: u64,
    /// Number of simulated members, at least 2.
    pub clients: usize,
    /// Rounds to complete.
    pub rounds: u64,
    /// Where the members train: `"flex"` (default), `"ndarray"` or
    /// `"wgpu"` (a binary built with `tessera-learn/wgpu`);
    /// `tessera-sim run --backend` overrides it.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Fewest contributions a round accepts (default: 2/3 of the members).
    #[serde(default)]
    pub min_clients: Option<u32>,
    /// Research only: aggregate in plaintext (no secure aggregation). The
    /// daemons refuse this; robust aggregation rules need it.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// `[data]`.
    pub data: DataSection,
    /// `[partition]` (default: IID).
    #[serde(default = "default_partition")]
    pub partition: Partitioner,
    /// The tabular model (`[model]`); exactly one of it and `[vision_model]`.
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// An image model (`tessera_vision::VisionModel`), with `kind = "fashion_mnist_images"` data.
    #[serde(default)]
    pub vision_model: Option<VisionModelConfig>,
    /// `[train]`, as in the aggregator's config.
    #[serde(default)]
    pub train: TrainSection,
    /// `[secure]`: secure aggregation settings (ignored with `insecure_plaintext`).
    #[serde(default)]
    pub secure: SecureConfig,
    /// `[strategy]`: the server optimizer.
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// `[cohort]`: which members each round asks (default: all).
    #[serde(default = "default_cohort")]
    pub cohort: CohortSelection,
    /// Differential privacy, as in the aggregator's `[privacy]` section.
    /// Simulated noise is seeded from the scenario seed (reproducible runs).
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// Dropout model: probability of leaving before each protocol phase.
    #[serde(default)]
    pub dropout: Option<DropoutSection>,
    /// Latency model: simulated compute and network time, stragglers.
    #[serde(default)]
    pub latency: Option<LatencySection>,
    /// Consecutive aborted rounds before the run gives up.
    #[serde(default = "default_retries")]
    pub max_round_retries: u32,
    /// Research only: a Byzantine-robust rule instead of the mean
    /// (`rule = "median" | "trimmed_mean" | "krum"`); needs
    /// `insecure_plaintext = true` and no `[privacy]`.
    #[serde(default)]
    pub robust: Option<RobustRule>,
    /// `[population]`: `clients` is a population, and the simulator draws
    /// each round's cohort from it (by count or Poisson), building only the
    /// members drawn (docs/simulation.md, "Populations").
    #[serde(default)]
    pub population: Option<PopulationDraw>,
    /// `[statistics]`: a DP statistics release before the first round, as in
    /// the aggregator's section (needs `[privacy]` and a declared schema).
    #[serde(default)]
    pub statistics: Option<tessera_protocol::coordinator::StatisticsConfig>,
}

fn default_retries() -> u32 {
    3
}

fn default_partition() -> Partitioner {
    Partitioner::Iid
}
fn default_cohort() -> CohortSelection {
    CohortSelection::All
}

impl Scenario {
    /// Read, parse and [`validate`](Scenario::validate) `path`; relative
    /// paths in it are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: path.into(), source })?;
        let mut s: Self =
            toml::from_str(&text).map_err(|e| ScenarioError::Invalid { path: path.into(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        s.data.path = base.join(&s.data.path);
        if let Some(SchemaSource::File(p)) = s.data.schema.as_mut() {
            *p = base.join(&*p);
        }
        if let Some(p) = s.model.as_mut().and_then(|m| m.pretrained.as_mut()) {
            *p = base.join(&*p);
        }
        s.validate().map_err(|message| ScenarioError::Invalid { path: path.into(), message })?;
        Ok(s)
    }

    /// Check the settings against each other (member counts, fractions, one
    /// model for the data kind, research-only combinations, fault models).
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
        let images = self.data.kind == DataKind::FashionMnistImages;
        match (&self.model, &self.vision_model) {
            (Some(_), None) if !images => {}
            (None, Some(_)) if images => {}
            _ => {
                return Err(
                    "use [model] with tabular data, or [vision_model] with kind = \"fashion_mnist_images\"".into()
                );
            }
        }
        if self.data.kind == DataKind::Csv && self.data.label.is_empty() {
            return Err("data.label is required for CSV data".into());
        }
        if !images {
            self.check_schema()?;
        }
        if let Some(rule) = &self.robust {
            rule.validate().map_err(|e| e.to_string())?;
            if !self.insecure_plaintext {
                return Err(format!(
                    "robust rule {} needs the individual updates: set insecure_plaintext = true (research only)",
                    rule.name()
                ));
            }
            if self.privacy.is_some() {
                return Err(format!("robust rule {} is not covered by the privacy accounting", rule.name()));
            }
        }
        if let Some(d) = &self.dropout {
            d.validate()?;
        }
        if let Some(l) = &self.latency {
            l.validate()?;
        }
        if let Some(p) = &self.population {
            self.check_population(p)?;
        }
        Ok(())
    }

    /// What a population run supports: the simulator draws the cohort (so
    /// `[cohort]` stays at its default), tabular members only, and no
    /// `[privacy]` yet (its accountant would have to know the population's
    /// sampling rate, which the per-round coordinator does not see).
    fn check_population(&self, p: &PopulationDraw) -> Result<(), String> {
        p.validate(self.clients)?;
        if self.cohort != CohortSelection::All {
            return Err("[population] draws each round's cohort: leave [cohort] out".into());
        }
        if self.privacy.is_some() {
            return Err("[population] with [privacy] is not supported: the accountant would need the \
                        population's sampling rate"
                .into());
        }
        if self.vision_model.is_some() {
            return Err("[population] needs tabular members ([model]), not [vision_model]".into());
        }
        if let (PopulationDraw::Count { count }, Some(min)) = (p, self.min_clients)
            && min > *count
        {
            return Err("min_clients exceeds the population's cohort count".into());
        }
        Ok(())
    }

    /// A tabular scenario names its encoding; under `[privacy]` it must be
    /// declared, since an encoding fitted on a member's rows is not private.
    fn check_schema(&self) -> Result<(), String> {
        match &self.data.schema {
            None => Err(format!(
                "data.schema is missing: name a feature schema file (schema = \"<file>\", see \
                 examples/data/*.schema.toml){}",
                if self.privacy.is_some() {
                    "; with [privacy] the encoding must be declared, not fitted on members' data"
                } else {
                    ", or opt into the non-private schema = \"fit-locally\""
                }
            )),
            Some(SchemaSource::FitLocally) if self.privacy.is_some() => {
                Err("data.schema = \"fit-locally\" is refused with [privacy]: imputation, scaling and vocabularies \
                 fitted on a member's rows are not differentially private; name a feature schema file"
                    .into())
            }
            Some(s) if s.is_declared() && !self.data.categorical.is_empty() => Err(
                "data.categorical is refused beside a declared schema: the schema says which features are categorical"
                    .into(),
            ),
            Some(_) => Ok(()),
        }
    }

    /// The tabular `[model]` (an error for image scenarios).
    pub fn tabular_model(&self) -> anyhow::Result<&ModelConfig> {
        self.model.as_ref().ok_or_else(|| anyhow::anyhow!("scenario {}: this needs a tabular [model]", self.name))
    }

    /// The scenario's model as the daemons' shared `[model]` section.
    pub fn model_section(&self) -> anyhow::Result<ModelSection> {
        Ok(match &self.vision_model {
            Some(cfg) => ModelSection::Vision(cfg.clone()),
            None => ModelSection::Tabular(self.tabular_model()?.clone()),
        })
    }

    /// What every simulated member announces at admission, and what the
    /// coordinator expects: the scenario's `[model]` and declared schema.
    pub fn admission_policy(&self) -> anyhow::Result<tessera_protocol::AdmissionPolicy> {
        let schema = match (&self.vision_model, &self.data.schema) {
            (None, Some(SchemaSource::Declared(schema))) => Some(schema.clone()),
            (None, Some(SchemaSource::File(path))) => Some(tessera_tabular::load_schema(path)?),
            _ => None,
        };
        Ok(tessera_protocol::AdmissionPolicy {
            expected: tessera_protocol::settings_digest(&self.model_section()?, schema.as_ref()),
            check_schema: schema.is_some(),
        })
    }

    /// The members' compute backend: `flag` (`--backend`) over the
    /// scenario's `backend`, its device created now, so a binary without
    /// the GPU backend, or a machine without a device, fails before the run.
    pub fn compute_backend(&self, flag: Option<BackendChoice>) -> anyhow::Result<tessera_learn::ComputeBackend> {
        use anyhow::Context;
        let choice = flag.unwrap_or(self.backend);
        choice.compute().and_then(|b| b.check()).with_context(|| format!("scenario {}: backend", self.name))
    }

    /// The effective minimum number of contributions.
    pub fn min_clients(&self) -> Option<u32> {
        Some(self.min_clients.unwrap_or_else(|| ((2 * self.clients).div_ceil(3)).max(2) as u32))
    }
}
