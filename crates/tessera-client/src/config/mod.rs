//! `client.toml`: what a member's IT configures. Unknown keys are errors and
//! every error names the file. Relative paths are relative to the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use tessera_learn::{BackendUnavailable, ComputeBackend};
use tessera_protocol::member::Policy;
use tessera_tabular::{SplitConfig, TabularSpec};

pub use tessera_core::ModelSection;
use tessera_core::SchemaSource;

/// Why `client.toml` could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (an unknown
    /// key, a missing one, a wrong type); `message` names the section and key.
    #[error("{path}: {message}")]
    Parse {
        /// The file as given.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The file parsed but asks for something this member must not do
    /// (see [`ClientConfig::validate`]).
    #[error("{path}")]
    Invalid {
        /// The file as given.
        path: PathBuf,
        /// Which value is refused and why.
        source: ConfigProblem,
    },
}

/// A `client.toml` that parsed but is refused: a policy weaker than the
/// protocol's safe floor, a test-only switch or a backend that the build
/// does not have.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigProblem {
    /// `[policy]` is below what the member needs to stay safe.
    #[error("[policy]")]
    Policy(#[from] PolicyError),
    /// `[testing] seeded_randomness` in a build without the test-only
    /// `test-seeded-randomness` feature (every release build).
    #[error(
        "[testing] seeded_randomness = true is refused: it derives every masking key and all noise from \
         the member's name, so anyone who knows the name can unmask this member's update; only test builds \
         (tessera-client's `test-seeded-randomness` feature) accept it"
    )]
    SeededRandomnessRefused,
    /// A CSV `[data]` section without `schema`.
    #[error(
        "[data] schema is missing: name the consortium's feature schema file (schema = \"<file>\", e.g. \
         examples/data/wdbc.schema.toml){}",
        if *.0 { "; with [privacy] the encoding must be declared" } else { ", or opt into the non-private schema = \"fit-locally\"" }
    )]
    SchemaMissing(bool),
    /// `schema = "fit-locally"` beside `[privacy]`.
    #[error(
        "[data] schema = \"fit-locally\" is refused with [privacy]: means, scales, vocabularies and missing-value \
         columns fitted on this member's records are not differentially private (one record would move every \
         other record's features and can change the feature count); name the consortium's feature schema file"
    )]
    FitLocallyUnderPrivacy,
    /// `features` or `categorical` beside a declared schema.
    #[error("[data] features and categorical are refused beside a declared schema: the schema names the features")]
    SchemaConflict,
    /// `backend` names a backend this binary was built without.
    #[error("backend")]
    Backend(#[from] BackendUnavailable),
}

/// A `[policy]` value that would weaken what the member accepts below the
/// safe floor, or that no round could ever satisfy.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// Secure aggregation over one member is that member's update.
    #[error("min_cohort = {0} is below 2: the secure sum of one member is its update")]
    MinCohort(u32),
    /// Outside `[2/3, 1)`: a threshold at or below two thirds of a
    /// neighbourhood lets an aggregator that splits the survivors' views
    /// unmask a member, and at 1 or above every threshold is refused.
    #[error(
        "min_threshold_fraction = {0} must be at least 2/3 (a lower threshold lets an aggregator unmask a \
         member by splitting the dropout views) and below 1 (at 1 every threshold is refused)"
    )]
    ThresholdFraction(f64),
    /// A model of no values cannot be received.
    #[error("max_model_values = 0 refuses every model")]
    MaxModelValues,
}

/// `[aggregator]`: where to dial and the member's mutual-TLS identity.
/// The PEM paths are relative to `client.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorSection {
    /// `host:port` of the aggregator (UDP); IPv6 literals in brackets
    /// (`[2001:db8::1]:4433`). Checked when the file is read, so a missing
    /// port is a configuration error pointing at the value, not a name that
    /// never resolves.
    #[serde(deserialize_with = "crate::address::host_port")]
    pub address: String,
    /// Name on the aggregator's certificate; defaults to the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The consortium CA certificate (PEM) the aggregator's certificate must chain to.
    pub ca: PathBuf,
    /// This member's certificate (PEM), issued by the consortium CA for its name.
    pub cert: PathBuf,
    /// This member's private key (PEM); it never leaves the site.
    pub key: PathBuf,
}

/// A local CSV data set and how to read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The CSV file (with a header row), relative to `client.toml`.
    pub path: PathBuf,
    /// The label column.
    pub label: String,
    /// Feature columns; all but the label and `ignore` when absent.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Columns never used as features (ids, free text).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Columns one-hot encoded rather than read as numbers.
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Class labels in class-index order (must agree across members).
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Fraction held out for validation (default 0): when above 0, local
    /// training stops early once an epoch no longer lowers the loss on it
    /// (rounds without record-level DP-SGD only; DP-SGD's step count is
    /// fixed in advance for the accountant, so there it is not used).
    #[serde(default)]
    pub validation: f64,
    /// Fraction of each class held out as the test split that global models are evaluated on (default 0.2).
    #[serde(default = "default_test")]
    pub test: f64,
    /// The key of the split: a row's side is a keyed hash of its content,
    /// so the split is the same every run and one record never moves another.
    #[serde(default)]
    pub split_seed: u64,
    /// The feature encoding: the consortium's schema file (relative to
    /// `client.toml`), the schema inline, or `"fit-locally"` (not private;
    /// refused with `[privacy]`). Required.
    #[serde(default)]
    pub schema: Option<SchemaSource>,
}

fn default_test() -> f64 {
    0.2
}

impl DataSection {
    /// How `tessera-tabular` reads the file: these columns, with missing-value indicators.
    pub fn spec(&self) -> TabularSpec {
        TabularSpec {
            label: self.label.clone(),
            features: self.features.clone(),
            ignore: self.ignore.clone(),
            categorical: self.categorical.clone(),
            classes: self.classes.clone(),
            missing_indicators: true,
            // `ClientConfig::validate` refuses a section without one.
            schema: self.schema.clone().unwrap_or(SchemaSource::FitLocally),
        }
    }

    /// Refuse a missing schema, a locally fitted one under `[privacy]`, and
    /// feature lists beside a declared one.
    fn validate(&self, private: bool) -> Result<(), ConfigProblem> {
        match &self.schema {
            None => Err(ConfigProblem::SchemaMissing(private)),
            Some(SchemaSource::FitLocally) if private => Err(ConfigProblem::FitLocallyUnderPrivacy),
            Some(s) if s.is_declared() && (self.features.is_some() || !self.categorical.is_empty()) => {
                Err(ConfigProblem::SchemaConflict)
            }
            Some(_) => Ok(()),
        }
    }

    /// The train/validation/test split these fractions and seed describe.
    pub fn split(&self) -> SplitConfig {
        SplitConfig { validation: self.validation, test: self.test, seed: self.split_seed }
    }
}

/// How an image data set is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageDataKind {
    /// An IDX image file plus an IDX label file (MNIST, Fashion-MNIST), raw or gzipped.
    Idx,
    /// One subfolder of PNG/JPEG images per class.
    ImageFolder,
}

/// A local image data set (`[data]` with `kind = "idx"` or `"image_folder"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDataSection {
    /// How the images are stored.
    pub kind: ImageDataKind,
    /// `idx`: the images file; `image_folder`: the root folder.
    pub path: PathBuf,
    /// `idx` only: the labels file.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Class names in class-index order; must agree across members. For
    /// `image_folder` they must be exactly the subfolder names.
    pub classes: Vec<String>,
    /// `image_folder` only: `[height, width]` images are stored at (resized on load).
    #[serde(default)]
    pub image_size: Option<[usize; 2]>,
    /// `image_folder` only: 1 (luma) or 3 (RGB).
    #[serde(default = "default_image_channels")]
    pub channels: usize,
    /// Keep at most this many examples of each class (stratified, by `split_seed`).
    #[serde(default)]
    pub per_class: Option<usize>,
    /// Fraction of each class held out as the test split that global models are evaluated on (default 0.2).
    #[serde(default = "default_test")]
    pub test: f64,
    /// Seed of the stratified sample and split.
    #[serde(default)]
    pub split_seed: u64,
}

fn default_image_channels() -> usize {
    3
}

/// `[data]`: a CSV table (no `kind`, or `kind = "csv"`) or images.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DataConfig {
    /// A CSV table.
    Csv(DataSection),
    /// Images (IDX files or class folders).
    Images(ImageDataSection),
}

impl<'de> Deserialize<'de> for DataConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = toml::Table::deserialize(d)?;
        match v.get("kind").and_then(toml::Value::as_str) {
            None => v.try_into().map(Self::Csv),
            Some("csv") => {
                v.remove("kind");
                v.try_into().map(Self::Csv)
            }
            Some(_) => v.try_into().map(Self::Images),
        }
        .map_err(|e| serde::de::Error::custom(format!("[data]: {}", e.message())))
    }
}

impl DataConfig {
    /// The CSV section, or a message saying that this member has images.
    pub fn csv(&self) -> anyhow::Result<&DataSection> {
        match self {
            Self::Csv(d) => Ok(d),
            Self::Images(_) => anyhow::bail!("this member's [data] holds images, not a CSV table"),
        }
    }
}

/// `[state]`: where the member keeps what it must remember across restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Append-only record of every message that left the site.
    #[serde(default = "default_egress")]
    pub egress_ledger: PathBuf,
}

fn default_egress() -> PathBuf {
    PathBuf::from("state/egress.jsonl")
}

impl Default for StateSection {
    fn default() -> Self {
        Self { egress_ledger: default_egress() }
    }
}

/// `[privacy]`: the institution's own privacy budget. With it, the member refuses every
/// round whose release is not differentially private, every round that
/// would take its spend over the budget, and central noise (which trusts
/// the operator). The ledger is written before any training (write-ahead).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// Total epsilon this member will spend, over all runs.
    pub epsilon: f64,
    /// The delta the epsilon is stated at (default 1e-5).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// The write-ahead spend ledger (JSON lines), relative to `client.toml`.
    #[serde(default = "default_ledger")]
    pub ledger: PathBuf,
}

fn default_delta() -> f64 {
    1e-5
}

fn default_ledger() -> PathBuf {
    PathBuf::from("state/privacy-ledger.jsonl")
}

/// `[policy]`: what this member accepts, whatever the aggregator announces.
/// The protocol's own floor (a threshold above two thirds of the
/// neighbourhood, a logarithmic SecAgg+ degree) holds whatever is set here;
/// these keys can only make the member stricter. Absent keys take
/// [`Policy::default`]'s values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// Smallest cohort the member masks its update in (at least 2). Against
    /// an aggregator that fills a cohort with members it controls, a larger
    /// cohort needs more of them (docs/threat-model.md).
    pub min_cohort: u32,
    /// Refuse a Shamir threshold at or below this fraction of the
    /// neighbourhood, in `[2/3, 1)`.
    pub min_threshold_fraction: f64,
    /// Largest model, in values, the member agrees to receive (at least 1);
    /// it bounds the memory a malicious aggregator can make the member allocate.
    pub max_model_values: u64,
    /// Refuse rounds whose release is not differentially private. A
    /// `[privacy]` section turns this on whatever it says here.
    pub require_dp: bool,
}

impl Default for PolicySection {
    fn default() -> Self {
        let p = Policy::default();
        Self {
            min_cohort: p.min_cohort,
            min_threshold_fraction: p.min_threshold_fraction,
            max_model_values: p.max_model_values,
            require_dp: p.require_dp,
        }
    }
}

impl PolicySection {
    /// Refuse values below the protocol's safe defaults and values no round
    /// could satisfy.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min_cohort < 2 {
            return Err(PolicyError::MinCohort(self.min_cohort));
        }
        // Written so that NaN fails too.
        if !(self.min_threshold_fraction >= 2.0 / 3.0 && self.min_threshold_fraction < 1.0) {
            return Err(PolicyError::ThresholdFraction(self.min_threshold_fraction));
        }
        if self.max_model_values == 0 {
            return Err(PolicyError::MaxModelValues);
        }
        Ok(())
    }

    /// The participant's policy: these keys over [`Policy::default`] (the
    /// daemon never accepts plaintext rounds). `[privacy]` still forces
    /// `require_dp` when the participant gets its budget guard.
    pub fn policy(&self) -> Policy {
        Policy {
            min_cohort: self.min_cohort,
            min_threshold_fraction: self.min_threshold_fraction,
            max_model_values: self.max_model_values,
            require_dp: self.require_dp,
            ..Policy::default()
        }
    }
}

/// Whether this build accepts `[testing] seeded_randomness`: only with the
/// test-only `test-seeded-randomness` feature, which the workspace's test
/// crate turns on as a dev-dependency and no release build has.
const SEEDED_RANDOMNESS_BUILD: bool = cfg!(feature = "test-seeded-randomness");

/// `[testing]`: knobs for tests only. A release build refuses them; a test
/// build (feature `test-seeded-randomness`) warns loudly when one is on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingSection {
    /// Derive all of the member's randomness (masking keys, rounding, DP
    /// noise) from its name and the run's seeds, so runs are bit-reproducible.
    /// Predictable noise and keys protect nothing.
    #[serde(default)]
    pub seeded_randomness: bool,
}

impl TestingSection {
    /// Refuse seeded randomness unless `build_allows_seeded` (the build's
    /// test-only feature; a parameter so the refusal is tested in every build).
    fn validate(&self, build_allows_seeded: bool) -> Result<(), ConfigProblem> {
        if self.seeded_randomness && !build_allows_seeded {
            return Err(ConfigProblem::SeededRandomnessRefused);
        }
        Ok(())
    }
}

/// `backend`: where local training runs. `wgpu` needs a binary built with
/// the `tessera-learn/wgpu` feature; without it the choice is refused when
/// the file is read ([`ConfigProblem::Backend`]), not replaced by the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// burn-flex on the CPU (the default).
    #[default]
    Flex,
    /// burn's ndarray backend on the CPU.
    Ndarray,
    /// burn-wgpu: a GPU through Vulkan, Metal or DX12.
    Wgpu,
}

impl BackendChoice {
    /// The compute backend, or why this binary has none by that name.
    pub fn compute(self) -> Result<ComputeBackend, BackendUnavailable> {
        match self {
            BackendChoice::Flex => Ok(ComputeBackend::Flex),
            BackendChoice::Ndarray => Ok(ComputeBackend::NdArray),
            BackendChoice::Wgpu => ComputeBackend::wgpu(),
        }
    }

    /// The name in `client.toml` and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Flex => "flex",
            BackendChoice::Ndarray => "ndarray",
            BackendChoice::Wgpu => "wgpu",
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flex" => Ok(BackendChoice::Flex),
            "ndarray" => Ok(BackendChoice::Ndarray),
            "wgpu" => Ok(BackendChoice::Wgpu),
            other => Err(format!("unknown backend `{other}`: expected flex, ndarray or wgpu")),
        }
    }
}

/// A member's `client.toml`: who it is, where the aggregator is, its data
/// and the model the consortium agreed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// This member's name; must match its certificate.
    pub member: String,
    /// `[aggregator]`.
    pub aggregator: AggregatorSection,
    /// `[data]`.
    pub data: DataConfig,
    /// `[model]`, the same section the aggregator reads.
    pub model: ModelSection,
    /// `[state]`.
    #[serde(default)]
    pub state: StateSection,
    /// `backend`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// `[privacy]`: the member's own budget; none when absent.
    #[serde(default)]
    pub privacy: Option<PrivacySection>,
    /// `[policy]`: what the member accepts from the aggregator.
    #[serde(default)]
    pub policy: PolicySection,
    /// `[testing]`.
    #[serde(default)]
    pub testing: TestingSection,
}

impl ClientConfig {
    /// Read and check `path` ([`ClientConfig::validate`]), and resolve every
    /// relative path in it against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut c: Self =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        c.validate().map_err(|source| ConfigError::Invalid { path: path.into(), source })?;
        // Absolute, so every path in a later message or log names the file
        // the member actually read, whatever directory it was started in.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = &std::fs::canonicalize(parent)
            .or_else(|_| std::path::absolute(parent))
            .unwrap_or_else(|_| parent.to_path_buf());
        for p in [&mut c.aggregator.ca, &mut c.aggregator.cert, &mut c.aggregator.key, &mut c.state.egress_ledger] {
            *p = base.join(&*p);
        }
        match &mut c.data {
            DataConfig::Csv(d) => {
                d.path = base.join(&d.path);
                if let Some(SchemaSource::File(p)) = d.schema.as_mut() {
                    *p = base.join(&*p);
                }
            }
            DataConfig::Images(d) => {
                d.path = base.join(&d.path);
                if let Some(l) = d.labels.as_mut() {
                    *l = base.join(&*l);
                }
            }
        }
        if let Some(p) = c.privacy.as_mut() {
            p.ledger = base.join(&p.ledger);
        }
        match &mut c.model {
            ModelSection::Tabular(m) => {
                if let Some(p) = m.pretrained.as_mut() {
                    *p = base.join(&*p);
                }
            }
            ModelSection::Vision(m) => {
                if let Some(p) = m.weights.as_mut() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(c)
    }

    /// Refuse what parses but must not run: a `[policy]` below the safe
    /// floor, a CSV `[data]` without a schema (or fitted locally under
    /// `[privacy]`), and `[testing] seeded_randomness` outside a test build.
    /// The daemon's builders check this again, so a configuration assembled
    /// in code cannot skip it.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        self.policy.validate()?;
        if let DataConfig::Csv(d) = &self.data {
            d.validate(self.privacy.is_some())?;
        }
        self.backend.compute()?;
        self.testing.validate(SEEDED_RANDOMNESS_BUILD)
    }
}

#[cfg(test)]
mod tests;
