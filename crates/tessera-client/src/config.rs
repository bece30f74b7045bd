//! `client.toml`: what a member's IT configures. Unknown keys are errors and
//! every error names the file. Relative paths are relative to the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_core::config::ModelConfig;
use tessera_learn::{ComputeBackend, SplitConfig, TabularSpec};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorSection {
    /// `host:port` of the aggregator (UDP).
    pub address: String,
    /// Name on the aggregator's certificate; defaults to the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A local CSV data set and how to read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub path: PathBuf,
    pub label: String,
    /// Feature columns; all but the label and `ignore` when absent.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Class labels in class-index order (must agree across members).
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    #[serde(default = "default_validation")]
    pub validation: f64,
    #[serde(default = "default_test")]
    pub test: f64,
    #[serde(default)]
    pub split_seed: u64,
}

fn default_validation() -> f64 {
    0.15
}
fn default_test() -> f64 {
    0.2
}

impl DataSection {
    pub fn spec(&self) -> TabularSpec {
        TabularSpec {
            label: self.label.clone(),
            features: self.features.clone(),
            ignore: self.ignore.clone(),
            categorical: self.categorical.clone(),
            classes: self.classes.clone(),
            missing_indicators: true,
        }
    }

    pub fn split(&self) -> SplitConfig {
        SplitConfig { validation: self.validation, test: self.test, seed: self.split_seed }
    }
}

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

/// CPU backend for local training.
/// The institution's own privacy budget. With it, the member refuses every
/// round whose release is not differentially private, every round that
/// would take its spend over the budget, and central noise (which trusts
/// the operator). The ledger is written before any training (write-ahead).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    pub epsilon: f64,
    #[serde(default = "default_delta")]
    pub delta: f64,
    #[serde(default = "default_ledger")]
    pub ledger: PathBuf,
}

fn default_delta() -> f64 {
    1e-5
}

fn default_ledger() -> PathBuf {
    PathBuf::from("state/privacy-ledger.jsonl")
}

/// Knobs for tests only; the daemon warns loudly when any is on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingSection {
    /// Derive all of the member's randomness (masking keys, rounding, DP
    /// noise) from its name and the run's seeds, so runs are bit-reproducible.
    /// Predictable noise and keys protect nothing.
    #[serde(default)]
    pub seeded_randomness: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Flex,
    Ndarray,
}

impl From<BackendChoice> for ComputeBackend {
    fn from(b: BackendChoice) -> Self {
        match b {
            BackendChoice::Flex => ComputeBackend::Flex,
            BackendChoice::Ndarray => ComputeBackend::NdArray,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// This member's name; must match its certificate.
    pub member: String,
    pub aggregator: AggregatorSection,
    pub data: DataSection,
    pub model: ModelConfig,
    #[serde(default)]
    pub state: StateSection,
    #[serde(default)]
    pub backend: BackendChoice,
    #[serde(default)]
    pub privacy: Option<PrivacySection>,
    #[serde(default)]
    pub testing: TestingSection,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut c: Self =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.aggregator.ca,
            &mut c.aggregator.cert,
            &mut c.aggregator.key,
            &mut c.data.path,
            &mut c.state.egress_ledger,
        ] {
            *p = base.join(&*p);
        }
        if let Some(p) = c.privacy.as_mut() {
            p.ledger = base.join(&p.ledger);
        }
        if let Some(p) = c.model.pretrained.as_mut() {
            *p = base.join(&*p);
        }
        Ok(c)
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
[model]
num_features = 30
num_classes = 2
"#,
        )
        .unwrap();
        let c = ClientConfig::load(&p).unwrap();
        assert_eq!(c.data.path, dir.path().join("data.csv"));
        assert_eq!(c.state.egress_ledger, dir.path().join("state/egress.jsonl"));
        std::fs::write(&p, "member = 3").unwrap();
        assert!(ClientConfig::load(&p).unwrap_err().to_string().contains("client.toml"));
    }
}
