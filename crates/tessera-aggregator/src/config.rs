//! `aggregator.toml`: what the operator configures. Unknown keys are errors
//! (a typo must not silently fall back to a default), and every error names
//! the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_core::{FeatureSchema, ModelSection, SchemaSource, TrainSettings};

use tessera_protocol::coordinator::{CohortSelection, PrivacyConfig, SecureConfig, StatisticsConfig};
use tessera_protocol::{AdmissionPolicy, StrategyConfig, settings_digest};

/// Why `aggregator.toml` was refused; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML for [`AggregatorConfig`] (unknown keys included).
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with the offending key or line.
        message: String,
    },
    /// Well-formed but unusable values (see [`AggregatorConfig::validate`]).
    #[error("{path}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Which value is wrong and why.
        message: String,
    },
}

/// `[data]`: all the aggregator knows of its members' data, the
/// consortium's declared feature schema. Members announce a digest of
/// theirs at admission, and one that differs is refused by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The schema file (relative to `aggregator.toml`), or the schema inline.
    pub schema: SchemaSource,
}

/// `[server]`: where the aggregator listens and whom it admits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Directory with ca.pem, aggregator.pem and aggregator.key.
    pub pki_dir: PathBuf,
    /// Member names admitted (certificate CN/SAN must match one of them).
    pub members: Vec<String>,
    /// Where metrics.jsonl and summary.json go.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Handshakes (TLS, admission, stream setup) under way at once;
    /// further dials wait their turn for up to 5 s, then are refused and
    /// retried by their members. Default: the transport's
    /// [`DEFAULT_MAX_HANDSHAKES`](tessera_transport::DEFAULT_MAX_HANDSHAKES)
    /// (128). Without a cap a burst of thousands of dials shares the CPU
    /// among all their handshakes and most time out (docs/benchmarks.md,
    /// "Load: the aggregator daemon at 10,000 members").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_handshakes: Option<usize>,
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("runs/aggregator")
}

/// `[run]`: how many rounds, with how many members, under which deadlines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Rounds to complete (at least 1).
    pub rounds: u64,
    /// No round starts with fewer members online, and none is accepted with
    /// fewer contributions; at least 2, since the secure sum of one member
    /// is its update.
    pub min_clients: u32,
    /// Members online before the first round starts (default: min_clients).
    #[serde(default)]
    pub start_quorum: Option<u32>,
    /// Fixed seed for reproducible cohorts and graph seeds; random if absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// How each round's cohort is drawn (default: every member online).
    #[serde(default = "default_cohort")]
    pub cohort: CohortSelection,
    /// Seconds from round start for training and the masked upload
    /// (default 600).
    #[serde(default = "default_round_deadline")]
    pub round_deadline_secs: f64,
    /// Seconds allowed for each short phase: keys, shares, unmasking,
    /// evaluation (default 60).
    #[serde(default = "default_phase_timeout")]
    pub phase_timeout_secs: f64,
    /// A masked stream with no progress for this long is abandoned and its
    /// member dropped from the round, so one stalled upload cannot hold the
    /// daemon's single stream slot until the deadline.
    #[serde(default = "default_stream_idle")]
    pub stream_idle_secs: f64,
    /// Members evaluate the new global model on their held-out splits after
    /// every this many completed rounds (default 1; 0 turns evaluation off).
    /// Under `[privacy]` no member reports in the clear, so evaluation is
    /// off and the daemon says so at start (issue #18).
    #[serde(default = "default_evaluate_every")]
    pub evaluate_every: u64,
    /// Consecutive aborted attempts before the run gives up (default 3).
    #[serde(default = "default_retries")]
    pub max_round_retries: u32,
    /// Rounds a member may fail in a row before it is reported unhealthy
    /// (default 3).
    #[serde(default = "default_unhealthy")]
    pub unhealthy_after: u32,
    /// Seconds between two quorum warnings (default 60): while the admitted
    /// or the connected members cannot make up `min_clients`, the daemon
    /// logs who is missing, the first time at once.
    #[serde(default = "default_quorum_warning")]
    pub quorum_warning_secs: f64,
    /// Seconds to wait after an aborted attempt before the next (default
    /// 2); the wait doubles with each further consecutive abort.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff_secs: f64,
    /// The longest wait between attempts (default 60).
    #[serde(default = "default_retry_backoff_max")]
    pub retry_backoff_max_secs: f64,
}

fn default_retry_backoff() -> f64 {
    2.0
}
fn default_retry_backoff_max() -> f64 {
    60.0
}

fn default_cohort() -> CohortSelection {
    CohortSelection::All
}
fn default_round_deadline() -> f64 {
    600.0
}
fn default_stream_idle() -> f64 {
    5.0
}

fn default_phase_timeout() -> f64 {
    60.0
}
fn default_evaluate_every() -> u64 {
    1
}
fn default_retries() -> u32 {
    3
}
fn default_quorum_warning() -> f64 {
    60.0
}
fn default_unhealthy() -> u32 {
    3
}

/// `[train]`: the local training every member runs each round (sent to
/// them in `RoundStart`; members refuse settings outside their policy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Passes over the member's training split per round (default 1).
    #[serde(default = "default_epochs")]
    pub local_epochs: u32,
    /// Examples per SGD step (default 32).
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Local SGD step size (default 0.05).
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// FedProx proximal term; 0 (the default) is plain FedAvg training.
    #[serde(default)]
    pub proximal_mu: f64,
    /// FedAvg weight cap (examples); 0 weighs every member equally.
    #[serde(default = "default_weight_cap")]
    pub example_weight_cap: u64,
}

fn default_epochs() -> u32 {
    1
}
fn default_batch() -> u32 {
    32
}
fn default_lr() -> f64 {
    0.05
}
fn default_weight_cap() -> u64 {
    10_000
}

impl TrainSection {
    /// The round's training settings; the per-member `seed` is left 0 for
    /// the coordinator to derive.
    pub fn settings(&self) -> TrainSettings {
        TrainSettings {
            local_epochs: self.local_epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            proximal_mu: self.proximal_mu,
            seed: 0,
            example_weight_cap: self.example_weight_cap,
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            local_epochs: default_epochs(),
            batch_size: default_batch(),
            learning_rate: default_lr(),
            proximal_mu: 0.0,
            example_weight_cap: default_weight_cap(),
        }
    }
}

/// `[state]`: the aggregator's durable state (see [`crate::StateStore`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// The SQLite database; `<run_dir>/tessera.db` when absent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Global-model checkpoints kept (the newest K completed rounds).
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: u32,
}

fn default_keep_checkpoints() -> u32 {
    3
}

impl Default for StateSection {
    fn default() -> Self {
        Self { path: None, keep_checkpoints: default_keep_checkpoints() }
    }
}

/// `[status]`: the read-only status page and Prometheus endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// Local TCP address serving `/` (status page), `/metrics` and
    /// `/status.json`; off when absent. Bind to loopback (or put a reverse
    /// proxy with authentication in front): the page has no login.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// The whole of `aggregator.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// `[server]`: listener, PKI and members.
    pub server: ServerSection,
    /// `[run]`: rounds, quorum, deadlines.
    pub run: RunSection,
    /// The tabular MLP (no `kind`) or an image network (`kind = "small_cnn"`
    /// or `"efficientnet_lite0"`): the same section every member has.
    pub model: ModelSection,
    /// `[train]`: members' local training.
    #[serde(default)]
    pub train: TrainSection,
    /// `[secure]`: secure-aggregation parameters (modulus, clip range,
    /// threshold).
    #[serde(default)]
    pub secure: SecureConfig,
    /// `[strategy]`: the server optimizer (default FedAvg, server_lr 1).
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// Differential privacy of the run; absent: no DP (secure aggregation
    /// still hides each member's update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyConfig>,
    /// `[state]`: the state database.
    #[serde(default)]
    pub state: StateSection,
    /// `[status]`: the optional status endpoint.
    #[serde(default)]
    pub status: StatusSection,
    /// `[data]`: the consortium's feature schema; without it members'
    /// schemas are not compared at admission (their `[model]` still is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSection>,
    /// `[statistics]`: a DP statistics release (label histogram, missing
    /// rates, per-feature histograms) before the first round; needs
    /// `[privacy]`, `[data] schema` and a tabular `[model]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<StatisticsConfig>,
}

impl AggregatorConfig {
    /// Read, parse and validate `path`. Relative paths inside it (PKI,
    /// run directory, pretrained weights, state database) are resolved
    /// against the file's directory, not the working directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg: Self =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        // Relative paths are relative to the config file, not the cwd.
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.server.pki_dir = base.join(&cfg.server.pki_dir);
        cfg.server.run_dir = base.join(&cfg.server.run_dir);
        let pretrained = match &mut cfg.model {
            ModelSection::Tabular(m) => m.pretrained.as_mut(),
            ModelSection::Vision(m) => m.weights.as_mut(),
        };
        if let Some(p) = pretrained {
            *p = base.join(&*p);
        }
        if let Some(p) = cfg.state.path.as_mut() {
            *p = base.join(&*p);
        }
        if let Some(DataSection { schema: SchemaSource::File(p) }) = cfg.data.as_mut() {
            *p = base.join(&*p);
        }
        cfg.validate().map_err(|message| ConfigError::Invalid { path: path.into(), message })?;
        cfg.admission_policy().map_err(|message| ConfigError::Invalid { path: path.into(), message })?;
        Ok(cfg)
    }

    /// The consortium's declared feature schema, read from its file.
    pub fn schema(&self) -> Result<Option<FeatureSchema>, String> {
        match self.data.as_ref().map(|d| &d.schema) {
            None => Ok(None),
            Some(SchemaSource::FitLocally) => Err(format!(
                "data.schema = \"{}\" names no schema to compare members' with; leave [data] out instead",
                tessera_core::FIT_LOCALLY
            )),
            Some(SchemaSource::Declared(s)) => Ok(Some(s.clone())),
            Some(SchemaSource::File(p)) => {
                tessera_tabular::load_schema(p).map(Some).map_err(|e| format!("data.schema: {e}"))
            }
        }
    }

    /// What members must announce to be admitted: the digest of this
    /// `[model]` and, when `[data]` declares one, the schema.
    pub fn admission_policy(&self) -> Result<AdmissionPolicy, String> {
        let schema = self.schema()?;
        Ok(AdmissionPolicy { expected: settings_digest(&self.model, schema.as_ref()), check_schema: schema.is_some() })
    }

    /// The `[statistics]` release, for the consortium's schema and the
    /// model's classes at the run's unit and delta; `None` without the section.
    pub fn statistics_release(&self) -> Result<Option<tessera_core::StatsRelease>, String> {
        let Some(st) = &self.statistics else { return Ok(None) };
        let (Some(p), Some(schema), ModelSection::Tabular(m)) = (&self.privacy, self.schema()?, &self.model) else {
            return Err("[statistics] needs [privacy], a [data] schema and a tabular [model]".into());
        };
        st.release(&schema, m.num_classes as u32, p.unit, p.delta).map(Some).map_err(|e| format!("statistics: {e}"))
    }

    /// Check values TOML cannot express (ranges, member names, a quorum the
    /// member list can meet); the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.run.rounds == 0 {
            return Err("run.rounds must be at least 1".into());
        }
        if self.run.min_clients < 2 {
            return Err("run.min_clients must be at least 2: secure aggregation of one member is its update".into());
        }
        if self.server.max_handshakes == Some(0) {
            return Err("server.max_handshakes must be at least 1".into());
        }
        if self.server.members.len() < self.run.min_clients as usize {
            return Err(format!(
                "server.members lists {} members but run.min_clients is {}",
                self.server.members.len(),
                self.run.min_clients
            ));
        }
        for m in &self.server.members {
            tessera_transport::pki::validate_member_name(m).map_err(|e| format!("server.members: {e}"))?;
        }
        if !(self.run.round_deadline_secs > 0.0 && self.run.phase_timeout_secs > 0.0 && self.run.stream_idle_secs > 0.0)
        {
            return Err("run deadlines must be positive".into());
        }
        let (b, cap) = (self.run.retry_backoff_secs, self.run.retry_backoff_max_secs);
        if !(b >= 0.0 && cap >= b && cap.is_finite()) {
            return Err("run.retry_backoff_secs must be at least 0 and at most run.retry_backoff_max_secs".into());
        }
        if !(self.run.quorum_warning_secs > 0.0 && self.run.quorum_warning_secs.is_finite()) {
            return Err("run.quorum_warning_secs must be a positive number of seconds".into());
        }
        if !(1..=32).contains(&self.secure.modulus_bits) {
            return Err("secure.modulus_bits must lie in 1..=32".into());
        }
        if !(self.secure.clip_range.is_finite() && self.secure.clip_range > 0.0) {
            return Err("secure.clip_range must be positive".into());
        }
        if !(self.secure.threshold_fraction > 0.0 && self.secure.threshold_fraction <= 1.0) {
            return Err("secure.threshold_fraction must lie in (0, 1]".into());
        }
        if self.train.local_epochs == 0 || self.train.batch_size == 0 {
            return Err("train.local_epochs and train.batch_size must be at least 1".into());
        }
        if !(self.train.learning_rate.is_finite() && self.train.learning_rate > 0.0) {
            return Err("train.learning_rate must be positive".into());
        }
        if self.statistics.is_some() {
            self.statistics_release()?;
        }
        if self.state.keep_checkpoints == 0 {
            return Err("state.keep_checkpoints must be at least 1: resuming needs the last checkpoint".into());
        }
        Ok(())
    }

    /// Where the state database lives.
    pub fn state_path(&self) -> PathBuf {
        self.state.path.clone().unwrap_or_else(|| self.server.run_dir.join("tessera.db"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[server]
listen = "127.0.0.1:4433"
pki_dir = "pki"
members = ["hospital-a", "hospital-b", "hospital-c"]

[run]
rounds = 3
min_clients = 3

[model]
num_features = 30
num_classes = 2
hidden = [16]
"#;

    #[test]
    fn parses_with_defaults_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aggregator.toml");
        std::fs::write(&p, SAMPLE).unwrap();
        let c = AggregatorConfig::load(&p).unwrap();
        assert_eq!(c.server.pki_dir, dir.path().join("pki"));
        assert_eq!(c.strategy, StrategyConfig::FedAvg { server_lr: 1.0, average_last: None });
        assert_eq!(c.secure.modulus_bits, 32);
        assert_eq!(c.state_path(), dir.path().join("runs/aggregator/tessera.db"));
        assert_eq!(c.status.listen, None);
        let with_state = SAMPLE.to_string()
            + "[state]\npath = \"state/t.db\"\nkeep_checkpoints = 5\n[status]\nlisten = \"127.0.0.1:9464\"\n";
        std::fs::write(&p, with_state).unwrap();
        let c = AggregatorConfig::load(&p).unwrap();
        assert_eq!(c.state_path(), dir.path().join("state/t.db"));
        assert_eq!(c.state.keep_checkpoints, 5);
        assert_eq!(c.status.listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn the_shipped_example_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/consortium/aggregator.toml");
        let c = AggregatorConfig::load(&p).unwrap();
        assert_eq!(c.state_path(), p.parent().unwrap().join("state/tessera.db"));
        assert_eq!(c.status.listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aggregator.toml");
        std::fs::write(&p, SAMPLE.replace("rounds = 3", "roundz = 3")).unwrap();
        let e = AggregatorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("roundz") && e.contains("aggregator.toml"), "{e}");
        std::fs::write(&p, SAMPLE.replace("min_clients = 3", "min_clients = 1")).unwrap();
        assert!(AggregatorConfig::load(&p).unwrap_err().to_string().contains("min_clients"));
        assert!(matches!(AggregatorConfig::load(&dir.path().join("nope.toml")), Err(ConfigError::Read { .. })));
    }

    /// `max_handshakes` is optional, at least 1, and a config without it
    /// serialises as before (the stored config of a running run does not
    /// read as changed after an upgrade).
    #[test]
    fn max_handshakes_is_optional_and_positive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aggregator.toml");
        std::fs::write(&p, SAMPLE).unwrap();
        let c = AggregatorConfig::load(&p).unwrap();
        assert_eq!(c.server.max_handshakes, None);
        assert!(!serde_json::to_string(&c).unwrap().contains("max_handshakes"));
        let with = |n: &str| SAMPLE.replace("pki_dir = \"pki\"", &format!("pki_dir = \"pki\"\nmax_handshakes = {n}"));
        std::fs::write(&p, with("32")).unwrap();
        assert_eq!(AggregatorConfig::load(&p).unwrap().server.max_handshakes, Some(32));
        std::fs::write(&p, with("0")).unwrap();
        let e = AggregatorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("server.max_handshakes"), "{e}");
    }
}
