//! Shared helpers for Tessera's cross-crate end-to-end tests: a consortium
//! in a temporary directory (PKI, per-member CSV files, configs) and members
//! run as tasks through the real daemon code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tessera_aggregator::{AggregatorConfig, RunSection, ServerSection, TrainSection};
use tessera_client::{
    AggregatorSection, BackendChoice, ClientConfig, ClientExit, ClientOptions, DataConfig, DataSection, EgressLedger,
    LocalModel, ModelSection, StateSection,
};
use tessera_core::{ModelConfig, SchemaSource, TrainableConfig};
use tessera_protocol::StrategyConfig;
use tessera_protocol::coordinator::{CohortSelection, SecureConfig};
use tessera_tabular::TabularModel;
use tessera_transport::{BackoffPolicy, Dialer, QuicDialConfig};

/// The shipped WDBC file.
pub fn wdbc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/wdbc.csv")
}

/// The shipped WDBC feature schema, which every test member declares.
pub fn wdbc_schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/wdbc.schema.toml")
}

/// Split WDBC into `n` member files (row i goes to member i mod n).
pub fn write_member_csvs(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(wdbc()).expect("shipped WDBC");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    let mut bodies = vec![String::from(header) + "\n"; names.len()];
    for (i, l) in lines.enumerate() {
        bodies[i % names.len()].push_str(l);
        bodies[i % names.len()].push('\n');
    }
    names
        .iter()
        .zip(bodies)
        .map(|(n, b)| {
            let p = dir.join(format!("{n}.csv"));
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect()
}

pub fn wdbc_model() -> ModelConfig {
    ModelConfig {
        hidden: vec![16],
        num_features: 30,
        num_classes: 2,
        trainable: TrainableConfig::All,
        init_seed: 3,
        pretrained: None,
    }
}

/// The settings digest members of [`aggregator_config`]'s consortium
/// announce at admission: [`wdbc_model`] and the WDBC schema.
pub fn consortium_settings() -> tessera_core::SettingsDigest {
    let schema = tessera_tabular::load_schema(&wdbc_schema()).expect("the shipped WDBC schema");
    tessera_protocol::settings_digest(&ModelSection::Tabular(wdbc_model()), Some(&schema))
}

pub fn aggregator_config(pki: &Path, run_dir: &Path, members: &[&str], rounds: u64, min: u32) -> AggregatorConfig {
    AggregatorConfig {
        server: ServerSection {
            listen: "127.0.0.1:0".parse().unwrap(),
            pki_dir: pki.to_path_buf(),
            members: members.iter().map(|s| s.to_string()).collect(),
            run_dir: run_dir.to_path_buf(),
            max_handshakes: None,
        },
        run: RunSection {
            rounds,
            min_clients: min,
            start_quorum: None,
            seed: Some(11),
            cohort: CohortSelection::All,
            round_deadline_secs: 60.0,
            phase_timeout_secs: 20.0,
            stream_idle_secs: 5.0,
            evaluate_every: 1,
            max_round_retries: 3,
            unhealthy_after: 3,
            quorum_warning_secs: 60.0,
            retry_backoff_secs: 0.5,
            retry_backoff_max_secs: 2.0,
        },
        model: ModelSection::Tabular(wdbc_model()),
        train: TrainSection {
            local_epochs: 3,
            batch_size: 16,
            learning_rate: 0.05,
            proximal_mu: 0.0,
            example_weight_cap: 200,
        },
        secure: SecureConfig::default(),
        strategy: StrategyConfig::FedAvg { server_lr: 1.0, average_last: None },
        privacy: None,
        state: Default::default(),
        status: Default::default(),
        data: Some(tessera_aggregator::DataSection { schema: SchemaSource::File(wdbc_schema()) }),
        statistics: None,
    }
}

pub fn client_config(dir: &Path, pki: &Path, name: &str, csv: &Path, addr: &str) -> ClientConfig {
    ClientConfig {
        member: name.into(),
        aggregator: AggregatorSection {
            address: addr.into(),
            server_name: Some("localhost".into()),
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{name}.pem")),
            key: pki.join(format!("{name}.key")),
        },
        data: DataConfig::Csv(DataSection {
            path: csv.to_path_buf(),
            label: "diagnosis".into(),
            features: None,
            ignore: vec![],
            categorical: vec![],
            classes: Some(vec!["benign".into(), "malignant".into()]),
            validation: 0.0,
            test: 0.25,
            split_seed: 1,
            schema: Some(SchemaSource::File(wdbc_schema())),
        }),
        model: ModelSection::Tabular(wdbc_model()),
        state: StateSection { egress_ledger: dir.join(format!("{name}-egress.jsonl")) },
        backend: BackendChoice::Flex,
        privacy: None,
        policy: Default::default(),
        testing: Default::default(),
    }
}

/// Run a member exactly as `tessera-client run` does, with a short backoff.
pub async fn run_member(cfg: ClientConfig) -> anyhow::Result<ClientExit> {
    run_member_with(cfg, |m| m).await
}

/// Like [`run_member`], with the local model wrapped (e.g. to stall it).
pub async fn run_member_with<M: LocalModel>(
    cfg: ClientConfig,
    wrap: impl FnOnce(TabularModel) -> M,
) -> anyhow::Result<ClientExit> {
    let model = wrap(tessera_client::tabular_model(&cfg)?);
    let mut dial =
        QuicDialConfig::new(&cfg.aggregator.address, &cfg.aggregator.ca, &cfg.aggregator.cert, &cfg.aggregator.key)?;
    dial.server_name = cfg.aggregator.server_name.clone();
    let mut egress = EgressLedger::open(&cfg.state.egress_ledger)?;
    let mut p = tessera_client::participant(&cfg)?;
    let opts = ClientOptions {
        backoff: BackoffPolicy {
            initial: std::time::Duration::from_millis(50),
            max: std::time::Duration::from_millis(500),
            multiplier: 2.0,
            max_attempts: Some(40),
        },
        ..ClientOptions::default()
    };
    Ok(tessera_client::run(Dialer::Quic(Arc::new(dial)), &mut p, Arc::new(Mutex::new(model)), &mut egress, opts)
        .await?)
}

/// Read `metrics.jsonl` of a run directory.
pub fn read_metrics(run_dir: &Path) -> Vec<tessera_core::RoundRecord> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("metrics line"))
        .collect()
}

/// Log to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A local model whose training waits until its gate is opened or dropped:
/// lets a test hold a member inside a round deterministically.
pub struct GatedModel<M> {
    pub inner: M,
    pub gate: std::sync::mpsc::Receiver<()>,
}

impl<M: LocalModel> LocalModel for GatedModel<M> {
    fn train(
        &mut self,
        model: &tessera_core::ModelParams,
        settings: &tessera_core::TrainSettings,
        dp: Option<&tessera_core::DpSettings>,
    ) -> Result<tessera_protocol::TrainedUpdate, tessera_learn::LocalError> {
        self.gate.recv().map_err(|_| tessera_learn::LocalError::Unsupported("training stopped".into()))?;
        self.inner.train(model, settings, dp)
    }

    fn evaluate(
        &mut self,
        model: &tessera_core::ModelParams,
    ) -> Result<tessera_core::EvalMetrics, tessera_learn::LocalError> {
        self.inner.evaluate(model)
    }
}

pub mod adversary;
pub mod fake_aggregator;
pub mod log_capture;
pub mod proc_stats;
pub mod raw_quic;
pub mod tap;
pub mod tiny_model;
