//! Running a scenario: one coordinator and N members in one process, through
//! the same drivers the daemons use, over the in-memory network or real QUIC
//! on loopback. Local training runs on a worker pool bounded by the cores;
//! members are tasks, not threads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_aggregator::coordinator::{
    Coordinator, CoordinatorConfig, PrivacyConfig, Resume, RoundOutcome, derive_seed,
};
use tessera_aggregator::driver::{DriverOptions, RunEnd, RunObserver, serve};
use tessera_aggregator::report::{RunDir, Summary, round_line};
use tessera_client::tabular::TabularModel;
use tessera_client::{ClientOptions, EgressLedger, Participant, Policy};
use tessera_core::codec::Limits;
use tessera_core::{ModelParams, RoundRecord, RunId};
use tessera_learn::data::{RawTable, SplitConfig, SplitIndices, load_csv, stratified_split};
use tessera_learn::{ComputeBackend, TabularData, TabularSpec};
use tessera_transport::{AdmitAll, Dialer, MemoryNetwork, QuicDialConfig, QuicListenerConfig};
use tokio::sync::Semaphore;

use crate::partition::partition;
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
}

/// What a finished simulation hands back.
pub struct SimResult {
    pub records: Vec<RoundRecord>,
    pub final_model: ModelParams,
    pub end: RunEnd,
    pub aborted: u64,
}

/// The table spec a scenario's data section describes.
pub fn table_spec(s: &Scenario) -> TabularSpec {
    TabularSpec {
        label: s.data.label.clone(),
        features: None,
        ignore: s.data.ignore.clone(),
        categorical: s.data.categorical.clone(),
        classes: s.data.classes.clone(),
        missing_indicators: true,
    }
}

/// Each simulated member's local splits, from its partition of the table.
pub fn member_data(s: &Scenario, table: &RawTable) -> anyhow::Result<Vec<TabularData>> {
    let spec = table_spec(s);
    let parts = partition(&s.partition, &table.labels, table.num_classes(), s.clients, s.seed)?;
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
        let idx =
            SplitIndices { train: global(&idx.train), validation: global(&idx.validation), test: global(&idx.test) };
        out.push(TabularData::from_indices(table, &spec, &idx).with_context(|| format!("client {k}"))?);
    }
    Ok(out)
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
        max_round_retries: 3,
        seed: s.seed,
        chunk_values: Limits::default().chunk_values,
        stream_slots: 1,
        unhealthy_after: 3,
    }
}

struct SimObserver {
    run: RunDir,
    bar: Option<ProgressBar>,
}

impl RunObserver for SimObserver {
    fn round_finished(&mut self, _o: &RoundOutcome, record: &RoundRecord, _c: &Coordinator) {
        let line = round_line(record);
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.println(line);
            }
            None => tracing::info!("{line}"),
        }
        if let Err(e) = self.run.append(record) {
            tracing::error!(error = %e, "could not write metrics.jsonl");
        }
    }

    fn round_aborted(&mut self, round: u64, reason: &str, _dropped: &[String]) {
        self.run.aborted += 1;
        let line = format!("round {round} aborted: {reason}");
        match &self.bar {
            Some(b) => b.println(line),
            None => tracing::warn!("{line}"),
        }
    }
}

/// Run a scenario to completion and write its run directory.
pub fn run_scenario(s: &Scenario, scenario_text: &str, opts: &SimOptions) -> anyhow::Result<SimResult> {
    let started = Instant::now();
    let table = load_csv(&s.data.path, &table_spec(s)).with_context(|| format!("loading {}", s.data.path.display()))?;
    let datas = member_data(s, &table)?;
    let mut models = Vec::with_capacity(datas.len());
    for (k, d) in datas.into_iter().enumerate() {
        let model = TabularModel::new(d, &s.model, opts.backend).with_context(|| format!("client {k}"))?;
        models.push(model.with_seeded_noise(true));
    }
    let initial = tessera_learn::spec::initial_trainable_params(&s.model)?;
    let coordinator = Coordinator::new(coordinator_config(s), initial, None, Resume::default())
        .map_err(|e| anyhow::anyhow!("scenario {}: {e}", s.name))?;
    let run = RunDir::open(&opts.out)?;
    run.write_file("scenario.toml", scenario_text.as_bytes())?;
    let bar = opts.progress.then(|| {
        let b = ProgressBar::new(s.rounds);
        b.set_style(ProgressStyle::with_template("{bar:30} round {pos}/{len} {elapsed_precise}").expect("template"));
        b
    });
    let mut observer = SimObserver { run, bar };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (coordinator, end) = rt.block_on(async {
        let workers = Arc::new(Semaphore::new(opts.workers.max(1)));
        let names: Vec<String> = (0..s.clients).map(|k| member_name(k, s.clients)).collect();
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
            let policy = Policy { allow_plaintext: s.insecure_plaintext, ..Policy::default() };
            let rng = ChaCha20Rng::seed_from_u64(derive_seed(s.seed, k as u64, b"member"));
            let opts = ClientOptions { reconnect: false, workers: workers.clone(), ..ClientOptions::default() };
            clients.push(tokio::spawn(async move {
                let mut p = Participant::new(name, policy, rng);
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
    let final_model = (**coordinator.global()).clone();
    let summary = Summary {
        run_id: coordinator.config().run_id.to_hex(),
        completed_rounds: end.completed_rounds,
        aborted_rounds: observer.run.aborted,
        stop_reason: end.reason.clone(),
        final_round: observer.run.records.last().cloned(),
        final_model_sha256: final_model.digest_hex(),
        epsilon: coordinator.privacy_status().map(|p| p.epsilon_spent),
        delta: coordinator.privacy_status().map(|p| p.delta),
        config: serde_json::json!({
            "scenario": s,
            "transport": format!("{:?}", opts.transport).to_lowercase(),
            "workers": opts.workers,
            "backend": opts.backend.name(),
            "wall_seconds": started.elapsed().as_secs_f64(),
        }),
    };
    observer.run.write_summary(&summary)?;
    Ok(SimResult { records: observer.run.records.clone(), final_model, end, aborted: observer.run.aborted })
}
