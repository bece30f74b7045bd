//! `client.toml`: what a member's IT configures. Unknown keys are errors and
//! every error names the file. Relative paths are relative to the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use tessera_learn::ComputeBackend;
use tessera_tabular::{SplitConfig, TabularSpec};

pub use tessera_core::ModelSection;

/// Why `client.toml` could not be loaded; both variants name the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
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
}

/// `[aggregator]`: where to dial and the member's mutual-TLS identity.
/// The PEM paths are relative to `client.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorSection {
    /// `host:port` of the aggregator (UDP).
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
    /// Fraction of each class held out for validation (default 0.15).
    #[serde(default = "default_validation")]
    pub validation: f64,
    /// Fraction of each class held out as the test split that global models are evaluated on (default 0.2).
    #[serde(default = "default_test")]
    pub test: f64,
    /// Seed of the stratified split; fixed, so the split is the same every run.
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
    /// How `tessera-tabular` reads the file: these columns, with missing-value indicators.
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

/// `[testing]`: knobs for tests only; the daemon warns loudly when any is on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingSection {
    /// Derive all of the member's randomness (masking keys, rounding, DP
    /// noise) from its name and the run's seeds, so runs are bit-reproducible.
    /// Predictable noise and keys protect nothing.
    #[serde(default)]
    pub seeded_randomness: bool,
}

/// `backend`: the CPU backend for local training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// burn-flex (the default).
    #[default]
    Flex,
    /// burn's ndarray backend.
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
    /// `[testing]`.
    #[serde(default)]
    pub testing: TestingSection,
}

impl ClientConfig {
    /// Read and check `path`, and resolve every relative path in it
    /// against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut c: Self =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.aggregator.ca, &mut c.aggregator.cert, &mut c.aggregator.key, &mut c.state.egress_ledger] {
            *p = base.join(&*p);
        }
        match &mut c.data {
            DataConfig::Csv(d) => d.path = base.join(&d.path),
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
        assert_eq!(c.data.csv().unwrap().path, dir.path().join("data.csv"));
        assert_eq!(c.model.tabular().unwrap().num_features, 30);
        assert_eq!(c.state.egress_ledger, dir.path().join("state/egress.jsonl"));
        std::fs::write(&p, "member = 3").unwrap();
        assert!(ClientConfig::load(&p).unwrap_err().to_string().contains("client.toml"));
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
            format!("{PKI}[data]\nkind = \"csv\"\npath = \"d.csv\"\nlabel = \"y\"\n[model]\nnum_features = 3\nnum_classes = 2\n"),
        )
        .unwrap();
        assert_eq!(ClientConfig::load(&p).unwrap().data.csv().unwrap().label, "y");
    }
}
