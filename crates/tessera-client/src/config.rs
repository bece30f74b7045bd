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
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        std::fs::write(
            &p,
            r#"
member = "hospital-a"
[aggregator]
address = "127.0.0.1:4433"
ca = "pki/ca.pem"
cert = "pki/hospital-a.pem"
key = "pki/hospital-a.key"
[data]
path = "data.csv"
label = "diagnosis"
schema = "wdbc.schema.toml"
[model]
num_features = 30
num_classes = 2
"#,
        )
        .unwrap();
        let c = ClientConfig::load(&p).unwrap();
        assert_eq!(c.data.csv().unwrap().path, dir.path().join("data.csv"));
        assert_eq!(c.data.csv().unwrap().schema, Some(SchemaSource::File(dir.path().join("wdbc.schema.toml"))));
        assert_eq!(c.model.tabular().unwrap().num_features, 30);
        assert_eq!(c.state.egress_ledger, dir.path().join("state/egress.jsonl"));
        std::fs::write(&p, "member = 3").unwrap();
        assert!(ClientConfig::load(&p).unwrap_err().to_string().contains("client.toml"));
    }

    #[test]
    fn a_relative_config_path_resolves_to_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("client.toml"),
            format!(
                "{PKI}[data]\npath = \"data/d.csv\"\nlabel = \"y\"\nschema = \"fit-locally\"\n\
                 [model]\nnum_features = 3\nnum_classes = 2\n"
            ),
        )
        .unwrap();
        // The same file named relative to the working directory.
        let cwd = std::env::current_dir().unwrap();
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let relative = up.join(dir.path().strip_prefix("/").unwrap()).join("client.toml");
        assert!(relative.is_relative());
        let c = ClientConfig::load(&relative).unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(c.aggregator.cert, real.join("pki/hospital-b.pem"));
        assert_eq!(c.data.csv().unwrap().path, real.join("data/d.csv"));
        assert_eq!(c.state.egress_ledger, real.join("state/egress.jsonl"));
    }

    #[test]
    fn an_address_without_a_port_is_a_config_error_at_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        let text = PKI.replace("127.0.0.1:4433", "aggregator.example.org");
        std::fs::write(
            &p,
            format!("{text}[data]\npath = \"d.csv\"\nlabel = \"y\"\n[model]\nnum_features = 3\nnum_classes = 2\n"),
        )
        .unwrap();
        let err = ClientConfig::load(&p);
        let Err(ConfigError::Parse { message, .. }) = err else { panic!("expected a parse error, got {err:?}") };
        assert!(message.contains("has no port") && message.contains("aggregator.example.org:4433"), "{message}");
        // The parser points at the value: its line, and a caret under it.
        assert!(message.contains("line 4") && message.contains('^'), "{message}");
    }

    /// A minimal valid `client.toml` followed by `extra`, loaded.
    fn load_with(extra: &str) -> Result<ClientConfig, ConfigError> {
        load_with_data("schema = \"s.toml\"\n", extra)
    }

    /// As [`load_with`], with `data` appended to the `[data]` section (in place of its schema).
    fn load_with_data(data: &str, extra: &str) -> Result<ClientConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        let text = format!(
            "{PKI}[data]\npath = \"d.csv\"\nlabel = \"y\"\n{data}[model]\nnum_features = 3\nnum_classes = 2\n{extra}"
        );
        std::fs::write(&p, text).unwrap();
        ClientConfig::load(&p)
    }

    fn invalid(extra: &str) -> ConfigProblem {
        match load_with(extra) {
            Err(ConfigError::Invalid { path, source }) => {
                assert!(path.ends_with("client.toml"), "the error names the file: {}", path.display());
                source
            }
            other => panic!("expected a refused value for {extra:?}, got {other:?}"),
        }
    }

    #[test]
    fn policy_defaults_are_the_protocol_defaults() {
        let c = load_with("").unwrap();
        assert_eq!(c.policy, PolicySection::default());
        let (ours, protocol) = (c.policy.policy(), Policy::default());
        assert_eq!(
            (ours.min_cohort, ours.min_threshold_fraction, ours.max_model_values, ours.require_dp),
            (protocol.min_cohort, protocol.min_threshold_fraction, protocol.max_model_values, protocol.require_dp)
        );
        assert!(!ours.allow_plaintext, "the daemon never accepts plaintext rounds");
        // An empty section is the defaults too.
        assert_eq!(load_with("[policy]\n").unwrap().policy, PolicySection::default());
    }

    #[test]
    fn policy_keys_set_the_participants_policy() {
        let c = load_with(
            "[policy]\nmin_cohort = 10\nmin_threshold_fraction = 0.75\nmax_model_values = 1000\nrequire_dp = true\n",
        )
        .unwrap();
        let p = c.policy.policy();
        assert_eq!((p.min_cohort, p.min_threshold_fraction, p.max_model_values, p.require_dp), (10, 0.75, 1000, true));
        // Exactly two thirds (the default, spelled out) is accepted.
        assert!(load_with("[policy]\nmin_threshold_fraction = 0.6666666666666666\n").is_ok());
        // The section takes no other keys.
        let err = load_with("[policy]\nallow_plaintext = true\n").unwrap_err();
        assert!(matches!(&err, ConfigError::Parse { message, .. } if message.contains("allow_plaintext")), "{err}");
    }

    #[test]
    fn policy_below_the_safe_floor_is_refused_with_a_typed_error() {
        use PolicyError::*;
        for (extra, expected) in [
            ("min_cohort = 1", MinCohort(1)),
            ("min_cohort = 0", MinCohort(0)),
            ("min_threshold_fraction = 0.5", ThresholdFraction(0.5)),
            ("min_threshold_fraction = 0.666", ThresholdFraction(0.666)),
            ("min_threshold_fraction = 1.0", ThresholdFraction(1.0)),
            ("min_threshold_fraction = 1.5", ThresholdFraction(1.5)),
            ("max_model_values = 0", MaxModelValues),
        ] {
            assert_eq!(invalid(&format!("[policy]\n{extra}\n")), ConfigProblem::Policy(expected), "{extra}");
        }
        // NaN compares false with everything; it is refused all the same.
        let nan = invalid("[policy]\nmin_threshold_fraction = nan\n");
        assert!(matches!(nan, ConfigProblem::Policy(ThresholdFraction(f)) if f.is_nan()), "{nan:?}");
        // The message says which key and why.
        let msg = tessera_cli::ErrorChain(&load_with("[policy]\nmin_cohort = 1\n").unwrap_err()).to_string();
        assert!(msg.contains("client.toml") && msg.contains("[policy]") && msg.contains("min_cohort = 1"), "{msg}");
    }

    #[test]
    fn a_configuration_built_in_code_is_checked_by_the_daemons_builders() {
        let mut c = load_with("").unwrap();
        c.policy.min_cohort = 1;
        assert_eq!(c.validate(), Err(ConfigProblem::Policy(PolicyError::MinCohort(1))));
        let err = crate::daemon::participant(&c).err().expect("participant refuses");
        let err = tessera_cli::ErrorChain(err.as_ref()).to_string();
        assert!(err.contains("min_cohort"), "{err}");
        assert!(crate::daemon::tabular_model(&c).is_err());
    }

    #[test]
    fn a_tabular_member_names_its_schema_and_fits_locally_only_without_privacy() {
        let problem = |data: &str, extra: &str| match load_with_data(data, extra) {
            Err(ConfigError::Invalid { source, .. }) => Some(source),
            Ok(_) => None,
            Err(other) => panic!("{}", tessera_cli::ErrorChain(&other)),
        };
        let privacy = "[privacy]\nepsilon = 1.0\n";
        // No schema at all: refused either way, and the message names the key.
        assert_eq!(problem("", ""), Some(ConfigProblem::SchemaMissing(false)));
        assert_eq!(problem("", privacy), Some(ConfigProblem::SchemaMissing(true)));
        let why = tessera_cli::ErrorChain(&load_with_data("", privacy).unwrap_err()).to_string();
        assert!(why.contains("[data] schema") && why.contains("[privacy]"), "{why}");
        assert!(ConfigProblem::SchemaMissing(false).to_string().contains("fit-locally"));
        // Fitting locally is an explicit opt-in, and never under [privacy].
        let fit = "schema = \"fit-locally\"\n";
        assert_eq!(problem(fit, ""), None);
        assert_eq!(problem(fit, privacy), Some(ConfigProblem::FitLocallyUnderPrivacy));
        // A declared schema (file or inline) is fine under [privacy] ...
        assert_eq!(problem("schema = \"s.toml\"\n", privacy), None);
        let inline = "[data.schema]\nfeatures = [{ type = \"numeric\", name = \"x\", min = 0.0, max = 1.0, \
                      center = 0.5, scale = 0.5 }]\n";
        let c = load_with_data("", &format!("{inline}{privacy}")).unwrap();
        assert!(matches!(&c.data.csv().unwrap().schema, Some(SchemaSource::Declared(s)) if s.width() == 1));
        // ... but not beside feature lists that could contradict it.
        let both = "schema = \"s.toml\"\ncategorical = [\"city\"]\n";
        assert_eq!(problem(both, ""), Some(ConfigProblem::SchemaConflict));
        // A configuration built in code is held to the same rules.
        let mut c = load_with(privacy).unwrap();
        if let DataConfig::Csv(d) = &mut c.data {
            d.schema = Some(SchemaSource::FitLocally);
        }
        assert_eq!(c.validate(), Err(ConfigProblem::FitLocallyUnderPrivacy));
        assert!(crate::daemon::tabular_model(&c).is_err());
    }

    /// `backend = "wgpu"` loads in a build with the GPU backend and is
    /// refused, naming the feature and the command, in one without; the
    /// CPU backends load in every build and anything else is a parse error.
    #[test]
    fn backend_key_chooses_the_backend_and_wgpu_needs_the_feature() {
        let load = |backend: &str| {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("client.toml");
            let text = format!(
                "backend = \"{backend}\"\n{PKI}[data]\npath = \"d.csv\"\nlabel = \"y\"\nschema = \"s.toml\"\n\
                 [model]\nnum_features = 3\nnum_classes = 2\n"
            );
            std::fs::write(&p, text).unwrap();
            ClientConfig::load(&p)
        };
        assert_eq!(load("flex").unwrap().backend.compute(), Ok(ComputeBackend::Flex));
        assert_eq!(load("ndarray").unwrap().backend.compute(), Ok(ComputeBackend::NdArray));
        let built = std::hint::black_box(tessera_learn::WGPU_BUILT);
        match load("wgpu") {
            Ok(c) => {
                assert!(built);
                assert_eq!(c.backend, BackendChoice::Wgpu);
            }
            Err(ConfigError::Invalid { source: ConfigProblem::Backend(e), .. }) => {
                assert!(!built);
                let why = tessera_cli::ErrorChain(&ConfigProblem::Backend(e)).to_string();
                assert!(why.contains("tessera-learn/wgpu") && why.contains("cargo build"), "{why}");
            }
            Err(other) => panic!("{other}"),
        }
        let err = load("cuda").unwrap_err();
        assert!(matches!(&err, ConfigError::Parse { message, .. } if message.contains("backend")), "{err}");
        for b in [BackendChoice::Flex, BackendChoice::Ndarray, BackendChoice::Wgpu] {
            assert_eq!(b.name().parse::<BackendChoice>(), Ok(b));
        }
        assert!("gpu".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn seeded_randomness_is_refused_unless_the_build_allows_it() {
        let seeded = TestingSection { seeded_randomness: true };
        assert_eq!(seeded.validate(false), Err(ConfigProblem::SeededRandomnessRefused));
        assert_eq!(seeded.validate(true), Ok(()));
        assert_eq!(TestingSection::default().validate(false), Ok(()));
        let why = ConfigProblem::SeededRandomnessRefused.to_string();
        assert!(why.contains("seeded_randomness") && why.contains("test-seeded-randomness"), "{why}");
    }

    /// The release daemon (no test-only feature) refuses the key when it
    /// loads the file. `cargo test --workspace` builds this crate with the
    /// feature (the test crate's dev-dependency turns it on for the whole
    /// build), so this runs under `cargo test -p tessera-client`; the
    /// parameterised check above runs in every build, and
    /// `tests/tests/dependency_edges.rs` checks that nothing else turns the
    /// feature on.
    #[cfg(not(feature = "test-seeded-randomness"))]
    #[test]
    fn release_build_refuses_seeded_randomness() {
        assert_eq!(invalid("[testing]\nseeded_randomness = true\n"), ConfigProblem::SeededRandomnessRefused);
        let mut c = load_with("").unwrap();
        c.testing.seeded_randomness = true;
        assert!(crate::daemon::participant(&c).is_err(), "a configuration built in code is refused too");
        assert!(load_with("[testing]\nseeded_randomness = false\n").is_ok());
    }

    /// A test build (the workspace's test crate) accepts the key.
    #[cfg(feature = "test-seeded-randomness")]
    #[test]
    fn test_build_accepts_seeded_randomness() {
        assert!(load_with("[testing]\nseeded_randomness = true\n").unwrap().testing.seeded_randomness);
    }

    const PKI: &str = r#"
member = "hospital-b"
[aggregator]
address = "127.0.0.1:4433"
ca = "pki/ca.pem"
cert = "pki/hospital-b.pem"
key = "pki/hospital-b.key"
"#;

    #[test]
    fn image_data_and_model_sections_parse_and_build_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let fashion = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/fashion-mnist");
        let p = dir.path().join("client.toml");
        let text = format!(
            r#"{PKI}
[data]
kind = "idx"
path = "{images}"
labels = "{labels}"
classes = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
per_class = 6
test = 0.5
split_seed = 3
[model]
kind = "efficientnet_lite0"
num_classes = 10
image_size = 32
backbone = "pretrained_if_present"
weights = "no-such-dir/weights.pth"
[model.augment]
horizontal_flip = true
"#,
            images = fashion.join("t10k-images-idx3-ubyte.gz").display(),
            labels = fashion.join("t10k-labels-idx1-ubyte.gz").display(),
        );
        std::fs::write(&p, &text).unwrap();
        let c = ClientConfig::load(&p).unwrap();
        let DataConfig::Images(d) = &c.data else { panic!("expected image data") };
        assert_eq!((d.kind, d.per_class, d.classes.len()), (ImageDataKind::Idx, Some(6), 10));
        let ModelSection::Vision(m) = &c.model else { panic!("expected an image model") };
        assert_eq!(m.weights.as_deref(), Some(dir.path().join("no-such-dir/weights.pth").as_path()));
        assert!(m.augment.as_ref().is_some_and(|a| a.horizontal_flip && a.rotation_degrees == 0.0));
        assert!(c.data.csv().is_err() && c.model.tabular().is_err());
        // The daemon's builder: a missing checkpoint falls back to the seeded random backbone here.
        let model = crate::daemon::vision_model(&c).unwrap();
        assert_eq!(model.num_train_examples(), 30);
        let layout = model.net().trainable_params().unwrap().layout();
        assert_eq!(layout.entries[0], ("head.weight".to_string(), vec![1280, 10]));
        // A tabular builder refuses image sections, and vice versa.
        assert!(crate::daemon::tabular_model(&c).is_err());

        // Folder data: class folders must match the configured classes.
        let root = dir.path().join("images");
        for (class, shade) in [("benign", 40u8), ("malignant", 200u8)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..4u8 {
                let img = image::GrayImage::from_pixel(12, 10, image::Luma([shade + i]));
                img.save(root.join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        let folder = format!(
            "{PKI}\n[data]\nkind = \"image_folder\"\npath = \"images\"\nclasses = [\"benign\", \"malignant\"]\n\
             image_size = [8, 8]\nchannels = 1\n[model]\nkind = \"small_cnn\"\nnum_classes = 2\nimage_size = 8\n\
             input_channels = 1\n"
        );
        std::fs::write(&p, &folder).unwrap();
        let c = ClientConfig::load(&p).unwrap();
        let model = crate::daemon::vision_model(&c).unwrap();
        assert_eq!(model.num_train_examples(), 6);
        std::fs::write(&p, folder.replace("\"benign\", ", "\"healthy\", ")).unwrap();
        let err = crate::daemon::vision_model(&ClientConfig::load(&p).unwrap()).unwrap_err().to_string();
        assert!(err.contains("differ from the configured classes"), "{err}");

        // Mistakes name the section and the key.
        std::fs::write(&p, text.replace("kind = \"idx\"", "kind = \"tiff\"")).unwrap();
        let err = ClientConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("client.toml") && err.contains("[data]") && err.contains("tiff"), "{err}");
        std::fs::write(&p, text.replace("image_size = 32", "image_sise = 32")).unwrap();
        let err = ClientConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("[model]") && err.contains("image_sise"), "{err}");
        // `kind = "csv"` is the CSV section, spelled out.
        std::fs::write(
            &p,
            format!(
                "{PKI}[data]\nkind = \"csv\"\npath = \"d.csv\"\nlabel = \"y\"\nschema = \"fit-locally\"\n\
                 [model]\nnum_features = 3\nnum_classes = 2\n"
            ),
        )
        .unwrap();
        assert_eq!(ClientConfig::load(&p).unwrap().data.csv().unwrap().label, "y");
    }
}
