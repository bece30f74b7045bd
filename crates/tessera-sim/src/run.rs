//! Running a scenario: one coordinator and N members in one process, through
//! the same drivers the daemons use, over the in-memory network or real QUIC
//! on loopback. Local training runs on a worker pool bounded by the cores;
//! members are tasks, not threads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_aggregator::driver::{DriverOptions, RunEnd, RunObserver, serve};
use tessera_aggregator::report::{RunDir, Summary, round_line};
use tessera_client::{ClientOptions, EgressLedger, LocalModel};
use tessera_core::EvalMetrics;
use tessera_core::codec::Limits;
use tessera_core::round::{DpSettings, TrainSettings};
use tessera_core::{ModelParams, RoundRecord, RunId};
use tessera_learn::ComputeBackend;
use tessera_protocol::coordinator::{Coordinator, CoordinatorConfig, PrivacyConfig, Resume, RoundOutcome};
use tessera_protocol::{Participant, Policy, TrainedUpdate, derive_seed};
use tessera_tabular::TabularModel;
use tessera_tabular::data::Split;
use tessera_tabular::data::{Preprocessor, RawTable, SplitConfig, SplitIndices, load_csv, stratified_split};
use tessera_tabular::{TabularData, TabularSpec};
use tessera_transport::{AdmitAll, Dialer, MemoryNetwork, QuicDialConfig, QuicListenerConfig};
use tessera_vision::VisionModel;
use tokio::sync::Semaphore;

use crate::faults::{FaultPlan, FaultStats, Faulty};
use crate::partition::{Partitioner, partition, partition_by_groups};
use crate::scenario::Scenario;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    Memory,
    Quic,
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub out: PathBuf,
    pub transport: TransportKind,
    /// Concurrent local-training jobs (default: the machine's cores).
    pub workers: usize,
    pub progress: bool,
    pub backend: ComputeBackend,
    /// Write `report.md` and its plots (benches turn it off).
    pub report: bool,
}

/// What a finished simulation hands back.
pub struct SimResult {
    /// One record per round attempt, aborted ones (`accepted: false`) included.
    pub records: Vec<RoundRecord>,
    pub final_model: ModelParams,
    pub end: RunEnd,
    pub aborted: u64,
    /// Dropouts and stragglers the fault plan injected.
    pub faults: FaultStats,
    /// The calibrated DP noise multiplier, when the run is private.
    pub noise_multiplier: Option<f64>,
    pub wall_seconds: f64,
    /// Examples per class of each member's partition (for the report).
    pub label_counts: Vec<Vec<usize>>,
    pub class_names: Vec<String>,
}

/// The table spec a scenario's data section describes. A natural id
/// column is never a feature (a member's own id says nothing).
pub fn table_spec(s: &Scenario) -> TabularSpec {
    let mut ignore = s.data.ignore.clone();
    if let Partitioner::Column { column } = &s.partition
        && !ignore.contains(column)
    {
        ignore.push(column.clone());
    }
    TabularSpec {
        label: s.data.label.clone(),
        features: None,
        ignore,
        categorical: s.data.categorical.clone(),
        classes: s.data.classes.clone(),
        missing_indicators: true,
    }
}

/// Example indices of each member's partition of `table`.
pub fn scenario_partition(s: &Scenario, table: &RawTable) -> anyhow::Result<Vec<Vec<usize>>> {
    match &s.partition {
        Partitioner::Column { column } => {
            // Read the id column as if it were the label: its distinct
            // values, sorted, are the members.
            let spec = TabularSpec {
                label: column.clone(),
                features: Some(vec![s.data.label.clone()]),
                ignore: vec![],
                categorical: vec![s.data.label.clone()],
                classes: None,
                missing_indicators: false,
            };
            let ids = load_csv(&s.data.path, &spec).with_context(|| format!("reading id column `{column}`"))?;
            Ok(partition_by_groups(column, &ids.labels, ids.num_classes(), s.clients)?)
        }
        how => Ok(partition(how, &table.labels, table.num_classes(), s.clients, s.seed)?),
    }
}

/// Each member's train/validation/test rows (indices into the table).
pub fn member_splits(s: &Scenario, table: &RawTable, parts: &[Vec<usize>]) -> anyhow::Result<Vec<SplitIndices>> {
    let mut out = Vec::with_capacity(parts.len());
    for (k, rows) in parts.iter().enumerate() {
        let local: Vec<u32> = rows.iter().map(|i| table.labels[*i]).collect();
        let cfg = SplitConfig {
            validation: s.data.validation,
            test: s.data.test,
            seed: derive_seed(s.seed, k as u64, b"split"),
        };
        let idx = stratified_split(&local, table.num_classes(), &cfg).with_context(|| format!("client {k}"))?;
        let global = |v: &[usize]| v.iter().map(|i| rows[*i]).collect::<Vec<_>>();
        out.push(SplitIndices {
            train: global(&idx.train),
            validation: global(&idx.validation),
            test: global(&idx.test),
        });
    }
    Ok(out)
}

/// The encoding fitted on the pooled data, when the scenario shares its schema.
pub fn shared_schema(s: &Scenario, table: &RawTable) -> Option<Preprocessor> {
    s.data.shared_schema.then(|| Preprocessor::fit(table, &(0..table.len()).collect::<Vec<_>>(), true))
}

/// Rows `idx` of `table` as a member's data: encoded with `shared` or, by
/// default, with statistics of its own training rows.
pub fn encode(
    table: &RawTable,
    spec: &TabularSpec,
    idx: &SplitIndices,
    shared: Option<&Preprocessor>,
) -> anyhow::Result<TabularData> {
    Ok(match shared {
        None => TabularData::from_indices(table, spec, idx)?,
        Some(pre) => TabularData {
            train: pre.transform(table, &idx.train),
            validation: pre.transform(table, &idx.validation),
            test: pre.transform(table, &idx.test),
            preprocessor: pre.clone(),
            class_names: table.class_names.clone(),
        },
    })
}

/// Each simulated member's local splits, from its partition `parts` of the table.
pub fn member_data(s: &Scenario, table: &RawTable, parts: &[Vec<usize>]) -> anyhow::Result<Vec<TabularData>> {
    let spec = table_spec(s);
    let shared = shared_schema(s, table);
    member_splits(s, table, parts)?
        .iter()
        .enumerate()
        .map(|(k, idx)| encode(table, &spec, idx, shared.as_ref()).with_context(|| format!("client {k}")))
        .collect()
}

pub fn member_name(k: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len();
    format!("client-{k:0width$}")
}

/// The coordinator settings of a scenario: generous deadlines, since
/// simulated members never straggle unless a latency model says so.
pub fn coordinator_config(s: &Scenario) -> CoordinatorConfig {
    let mut run_id = [0u8; 16];
    run_id[..8].copy_from_slice(&derive_seed(s.seed, 0, b"run-id").to_le_bytes());
    CoordinatorConfig {
        run_id: RunId(run_id),
        rounds: s.rounds,
        min_clients: s.min_clients().unwrap_or(2),
        start_quorum: s.clients as u32,
        cohort: s.cohort.clone(),
        train: s.train.settings(),
        secure: (!s.insecure_plaintext).then(|| s.secure.clone()),
        // Simulations are reproducible by design, noise included.
        dp: s.privacy.clone().map(|p| PrivacyConfig { test_seeded_noise: true, ..p }),
        strategy: s.strategy.clone(),
        round_deadline_ms: 3_600_000,
        phase_timeout_ms: 3_600_000,
        max_round_retries: s.max_round_retries,
        seed: s.seed,
        chunk_values: Limits::default().chunk_values,
        stream_slots: 1,
        unhealthy_after: 3,
        robust: s.robust.clone(),
    }
}

struct SimObserver {
    run: RunDir,
    bar: Option<ProgressBar>,
    plan: Arc<FaultPlan>,
    index: BTreeMap<String, usize>,
    cohorts: BTreeMap<u64, Vec<usize>>,
    failed: Option<String>,
}

impl SimObserver {
    fn members(&self, names: &[String]) -> Vec<usize> {
        names.iter().filter_map(|n| self.index.get(n).copied()).collect()
    }

    fn write(&mut self, record: &RoundRecord) {
        if let Err(e) = self.run.append(record) {
            tracing::error!(error = %e, "could not write metrics.jsonl");
            self.failed = Some(e.to_string());
        }
    }
}

impl RunObserver for SimObserver {
    fn round_started(&mut self, round: u64, cohort: &[String], _seed: u64) -> Result<(), String> {
        let members = self.members(cohort);
        self.cohorts.insert(round, members);
        Ok(())
    }

    fn round_finished(&mut self, outcome: &RoundOutcome, record: &RoundRecord, _c: &Coordinator) {
        // Simulated time from the latency model, never wall time: metrics
        // must not depend on the machine or the number of workers.
        let mut record = record.clone();
        record.seconds = self.plan.round_seconds(&self.members(&outcome.contributors), outcome.round);
        self.cohorts.remove(&outcome.round);
        let line = round_line(&record);
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.println(line);
            }
            None => tracing::info!("{line}"),
        }
        self.write(&record);
    }

    fn round_aborted(&mut self, round: u64, reason: &str, dropped: &[String]) {
        self.run.aborted += 1;
        // Reported in metrics.jsonl too, as a record that produced nothing.
        let cohort = self.cohorts.remove(&round).unwrap_or_default();
        let record = RoundRecord {
            round,
            participants: 0,
            dropped: dropped.len() as u32,
            accepted: false,
            seconds: self.plan.round_seconds(&cohort, round),
            epsilon: self.run.records.iter().rev().find_map(|r| r.epsilon),
            delta: self.run.records.iter().rev().find_map(|r| r.delta),
            ..RoundRecord::default()
        };
        self.write(&record);
        let line = format!("round {round} aborted: {reason}");
        match &self.bar {
            Some(b) => b.println(line),
            None => tracing::warn!("{line}"),
        }
    }
}

/// A simulated member's model: tabular, or an image model.
pub enum SimModel {
    Tabular(Box<TabularModel>),
    Vision(Box<VisionModel>),
}

impl LocalModel for SimModel {
    fn train(
        &mut self,
        model: &ModelParams,
        settings: &TrainSettings,
        dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, tessera_learn::LocalError> {
        match self {
            SimModel::Tabular(m) => m.train(model, settings, dp),
            SimModel::Vision(m) => m.train(model, settings, dp),
        }
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, tessera_learn::LocalError> {
        match self {
            SimModel::Tabular(m) => m.evaluate(model),
            SimModel::Vision(m) => m.evaluate(model),
        }
    }
}

/// Everything the run needs about its members, whatever the data kind.
pub struct Members {
    pub models: Vec<SimModel>,
    pub initial: ModelParams,
    /// Training examples per member (latency model).
    pub examples: Vec<u64>,
    pub label_counts: Vec<Vec<usize>>,
    pub class_names: Vec<String>,
}

/// Examples per class in each part.
pub fn label_counts(parts: &[Vec<usize>], labels: &[u32], classes: usize) -> Vec<Vec<usize>> {
    parts
        .iter()
        .map(|p| {
            let mut c = vec![0usize; classes];
            p.iter().for_each(|i| c[labels[*i] as usize] += 1);
            c
        })
        .collect()
}

fn tabular_members(s: &Scenario, opts: &SimOptions) -> anyhow::Result<Members> {
    let table = crate::data::load_table(s)?;
    let parts = scenario_partition(s, &table)?;
    let datas = member_data(s, &table, &parts)?;
    let examples = datas.iter().map(|d| d.split(Split::Train).len() as u64).collect();
    let mut models = Vec::with_capacity(datas.len());
    for (k, d) in datas.into_iter().enumerate() {
        let model = TabularModel::new(d, s.tabular_model()?, opts.backend).with_context(|| format!("client {k}"))?;
        models.push(SimModel::Tabular(Box::new(model.with_seeded_noise(true))));
    }
    Ok(Members {
        models,
        initial: tessera_tabular::spec::initial_trainable_params(s.tabular_model()?)?,
        examples,
        label_counts: label_counts(&parts, &table.labels, table.num_classes()),
        class_names: table.class_names.clone(),
    })
}

/// Run a scenario to completion and write its run directory.
pub fn run_scenario(s: &Scenario, scenario_text: &str, opts: &SimOptions) -> anyhow::Result<SimResult> {
    let started = Instant::now();
    let Members { models, initial, examples, label_counts, class_names } = match &s.vision_model {
        Some(cfg) => crate::vision::members(s, cfg)?,
        None => tabular_members(s, opts)?,
    };
    let plan = Arc::new(FaultPlan::new(
        s.seed,
        s.dropout.clone(),
        s.latency.clone(),
        examples,
        s.train.settings().local_epochs,
    ));
    let coordinator = Coordinator::new(coordinator_config(s), initial, None, Resume::default())
        .map_err(|e| anyhow::anyhow!("scenario {}: {e}", s.name))?;
    // A simulation starts afresh (RunDir appends, for resumed daemon runs).
    match std::fs::remove_file(opts.out.join("metrics.jsonl")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let run = RunDir::open(&opts.out)?;
    run.write_file("scenario.toml", scenario_text.as_bytes())?;
    let bar = opts.progress.then(|| {
        let b = ProgressBar::new(s.rounds);
        b.set_style(ProgressStyle::with_template("{bar:30} round {pos}/{len} {elapsed_precise}").expect("template"));
        b
    });
    let names: Vec<String> = (0..s.clients).map(|k| member_name(k, s.clients)).collect();
    let index = names.iter().enumerate().map(|(k, n)| (n.clone(), k)).collect();
    let mut observer = SimObserver { run, bar, plan: plan.clone(), index, cohorts: BTreeMap::new(), failed: None };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (coordinator, end) = rt.block_on(async {
        let workers = Arc::new(Semaphore::new(opts.workers.max(1)));
        let _pki_dir; // keeps the temporary PKI alive for the QUIC run
        let (listener, dialers): (_, Vec<Dialer>) = match opts.transport {
            TransportKind::Memory => {
                let net = MemoryNetwork::new();
                let l = net.listen(Arc::new(AdmitAll), Limits::default())?;
                (l, names.iter().map(|n| Dialer::Memory { network: net.clone(), member: n.clone() }).collect())
            }
            TransportKind::Quic => {
                let dir = tempfile::tempdir()?;
                tessera_transport::pki::init(dir.path(), &Default::default())?;
                for n in &names {
                    tessera_transport::pki::issue(dir.path(), n)?;
                }
                let l =
                    QuicListenerConfig::from_pki_dir(dir.path(), "127.0.0.1:0".parse()?)?.listen(Arc::new(AdmitAll))?;
                let addr = l.local_addr().context("QUIC listener has no address")?;
                let mut d = Vec::new();
                for n in &names {
                    let mut cfg = QuicDialConfig::from_pki_dir(dir.path(), n, addr.to_string())?;
                    cfg.server_name = Some("localhost".into());
                    d.push(Dialer::Quic(Arc::new(cfg)));
                }
                _pki_dir = dir;
                (l, d)
            }
        };
        let mut clients = Vec::new();
        for ((k, model), dialer) in models.into_iter().enumerate().zip(dialers) {
            let name = names[k].clone();
            // Many members share the cores (and the worker pool): mask on one thread each.
            let policy = Policy {
                allow_plaintext: s.insecure_plaintext,
                mask_threads: std::num::NonZeroUsize::MIN,
                ..Policy::default()
            };
            let rng = ChaCha20Rng::seed_from_u64(derive_seed(s.seed, k as u64, b"member"));
            let plan = plan.active().then(|| plan.clone());
            let opts = ClientOptions { reconnect: false, workers: workers.clone(), ..ClientOptions::default() };
            clients.push(tokio::spawn(async move {
                let mut p = Faulty::new(Participant::new(name, policy, rng), plan, k);
                let mut egress = EgressLedger::in_memory();
                tessera_client::run(dialer, &mut p, Arc::new(Mutex::new(model)), &mut egress, opts).await
            }));
        }
        let out = serve(listener, coordinator, &mut observer, DriverOptions::default()).await;
        for c in clients {
            match c.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "a simulated member ended with an error"),
                Err(e) => tracing::warn!(error = %e, "a simulated member panicked"),
            }
        }
        anyhow::Ok(out)
    })?;
    if let Some(b) = &observer.bar {
        b.finish_and_clear();
    }
    if let Some(e) = observer.failed.take() {
        anyhow::bail!("could not write the run directory: {e}");
    }
    let final_model = (**coordinator.global()).clone();
    let wall_seconds = started.elapsed().as_secs_f64();
    let noise_multiplier = coordinator.privacy_plan().map(|p| p.settings.noise_multiplier);
    let faults = plan.stats();
    let summary = Summary {
        run_id: coordinator.config().run_id.to_hex(),
        completed_rounds: end.completed_rounds,
        aborted_rounds: observer.run.aborted,
        stop_reason: end.reason.clone(),
        final_round: observer.run.records.iter().rev().find(|r| r.accepted).cloned(),
        final_model_sha256: final_model.digest_hex(),
        epsilon: coordinator.privacy_status().map(|p| p.epsilon_spent),
        delta: coordinator.privacy_status().map(|p| p.delta),
        config: serde_json::json!({
            "scenario": s,
            "transport": format!("{:?}", opts.transport).to_lowercase(),
            "workers": opts.workers,
            "backend": opts.backend.name(),
            "wall_seconds": wall_seconds,
            "noise_multiplier": noise_multiplier,
            "faults": faults,
        }),
    };
    observer.run.write_summary(&summary)?;
    let result = SimResult {
        records: observer.run.records.clone(),
        final_model,
        end,
        aborted: observer.run.aborted,
        faults,
        noise_multiplier,
        wall_seconds,
        label_counts,
        class_names,
    };
    if opts.report {
        crate::report::write_report(&opts.out, s, &result, None)?;
    }
    Ok(result)
}
