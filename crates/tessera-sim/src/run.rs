//! Running a scenario: one coordinator and N members in one process, through
//! the same drivers the daemons use, over the in-memory network or real QUIC
//! on loopback. Local training runs on a worker pool bounded by the cores;
//! members are tasks, not threads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_aggregator::daemon::initial_params;
use tessera_aggregator::{DriverOptions, RunDir, RunEnd, Summary, serve};
use tessera_client::{ClientError, ClientExit, ClientOptions, EgressLedger};
use tessera_core::{EvalMetrics, Limits, ModelParams, RoundRecord, RunId, SettingsDigest};
use tessera_learn::ComputeBackend;
use tessera_protocol::coordinator::{CentralNoise, Coordinator, CoordinatorConfig, Resume};
use tessera_protocol::member::MemberIdentity;
use tessera_protocol::{AdmissionPolicy, Participant, Policy, derive_seed};
use tessera_transport::{AdmitAll, Dialer, MemoryNetwork, QuicDialConfig, QuicListenerConfig};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::faults::{FaultPlan, FaultStats, Faulty};
use crate::members::{Members, SimModel, TabularSource, image_members, member_name, tabular_members};
use crate::observer::SimObserver;
use crate::population::PopulationSetup;
use crate::scenario::Scenario;

/// What carries the frames between the simulated members and the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// The in-memory network: the same frames, no sockets.
    Memory,
    /// QUIC with mutual TLS on loopback, with a temporary PKI.
    Quic,
}

/// How to run a scenario (none of it changes the metrics).
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The run directory (`metrics.jsonl`, `summary.json`, `report.md`).
    pub out: PathBuf,
    /// The network the frames cross.
    pub transport: TransportKind,
    /// Concurrent local-training jobs (default: the machine's cores).
    pub workers: usize,
    /// Draw a progress bar on stderr (round lines go to the log otherwise).
    pub progress: bool,
    /// The compute backend of the members' local training.
    pub backend: ComputeBackend,
    /// Write `report.md` and its plots (benches turn it off).
    pub report: bool,
}

/// What a finished simulation hands back.
pub struct SimResult {
    /// One record per round attempt, aborted ones (`accepted: false`) included.
    pub records: Vec<RoundRecord>,
    /// The global model after the last accepted round.
    pub final_model: ModelParams,
    /// Rounds completed and why the run stopped.
    pub end: RunEnd,
    /// Round attempts aborted (too few members left, a phase timed out).
    pub aborted: u64,
    /// Dropouts and stragglers the fault plan injected.
    pub faults: FaultStats,
    /// The calibrated DP noise multiplier, when the run is private.
    pub noise_multiplier: Option<f64>,
    /// Wall-clock time of the run; kept out of `metrics.jsonl`, which must
    /// not depend on the machine.
    pub wall_seconds: f64,
    /// Examples per class of each member's partition (for the report).
    pub label_counts: Vec<Vec<usize>>,
    /// Class names in class-index order.
    pub class_names: Vec<String>,
    /// Members built over the run (model, certificate, state machine):
    /// `clients` for an ordinary run; for a `[population]` run, the sum of
    /// the cohorts drawn, since an idle member is never built.
    pub members_built: u64,
    /// A `[population]` run's cohort of each round attempt, as member
    /// indices in draw order (empty for an ordinary run).
    pub cohorts: Vec<Vec<usize>>,
    /// The experimenter's measurement of the final model, outside the
    /// protocol: the harness, which holds every member's data, evaluates the
    /// released global model on each member's held-out split itself and
    /// takes the example-weighted mean (the measure `metrics.jsonl` uses
    /// without DP). Nothing leaves a member for it, and it is what the
    /// utility figures report; under DP the protocol's own per-round metrics
    /// are the private (noised) evaluation, or none. Image scenarios and
    /// tabular scenarios without `[population]` (`None` for a population).
    pub harness: Option<EvalMetrics>,
    /// A run whose members live in worker processes: the members whose
    /// connection was lost (their worker died or was cut off), with the
    /// round they were lost in. Empty for an in-process run.
    pub lost: Vec<crate::LostMember>,
}

/// The coordinator settings of a scenario: generous deadlines, since
/// simulated members never straggle unless a latency model says so.
pub(crate) fn coordinator_config(s: &Scenario, admission: AdmissionPolicy) -> CoordinatorConfig {
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
        // Simulations are reproducible by design, noise included. Private
        // evaluation's confusion matrix is k×k for the model's k, as the
        // daemon fills it in.
        dp: s.privacy.clone().map(|mut p| {
            if let (Some(e), Ok(model)) = (p.evaluation.as_mut(), s.model_section()) {
                let k = match model {
                    tessera_core::ModelSection::Tabular(m) => m.num_classes,
                    tessera_core::ModelSection::Vision(v) => v.num_classes,
                };
                e.classes = e.classes.or(Some(k as u32));
            }
            p
        }),
        strategy: s.strategy.clone(),
        round_deadline_ms: 3_600_000,
        phase_timeout_ms: 3_600_000,
        max_round_retries: s.max_round_retries,
        // Simulated attempts retry at once: their time is compute time.
        retry_backoff_ms: 0,
        retry_backoff_max_ms: 0,
        seed: s.seed,
        chunk_values: Limits::default().chunk_values,
        stream_slots: 1,
        // Simulated time has no idle members: a slow one is only slow.
        stream_idle_ms: 3_600_000,
        unhealthy_after: 3,
        admission: Some(admission),
        robust: s.robust.clone(),
        // Under DP the protocol evaluates privately ([privacy.evaluation])
        // or not at all, as the daemons do; the utility figures come from
        // the harness's own evaluation of the final model (`harness_eval`).
        evaluate_every: 1,
    }
}

/// Run a scenario to completion and write its run directory. `scenario_text`
/// is the file as written, copied into the run directory as `scenario.toml`.
pub fn run_scenario(s: &Scenario, scenario_text: &str, opts: &SimOptions) -> anyhow::Result<SimResult> {
    run_hosted(s, scenario_text, opts, Hosting::InProcess)
}

/// Where a run's members live.
pub(crate) enum Hosting {
    /// Built and run in this process.
    InProcess,
    /// In worker processes that connect over QUIC (`crate::distributed`).
    Remote(crate::distributed::Remote),
}

/// [`run_scenario`], with the members in this process or in workers.
pub(crate) fn run_hosted(
    s: &Scenario,
    scenario_text: &str,
    opts: &SimOptions,
    hosting: Hosting,
) -> anyhow::Result<SimResult> {
    let remote = matches!(hosting, Hosting::Remote(_));
    let started = Instant::now();
    let initial = initial_params(&s.model_section()?).context("the initial model")?;
    // A population run keeps its members unbuilt (only their rows) until
    // a round draws them, and a run with remote members never builds them
    // here; every other run builds all of them now.
    let mut images = None;
    let (source, Members { models, examples, label_counts, class_names }) = match (&s.vision_model, &s.population) {
        (Some(cfg), _) => {
            let (members, harness) = image_members(s, cfg, opts)?;
            images = Some(harness);
            (None, members)
        }
        (None, None) if !remote => {
            let src = TabularSource::new(s, opts)?;
            let m = tabular_members(&src)?;
            (Some(src), m)
        }
        (None, _) => {
            let src = TabularSource::new(s, opts)?;
            let m = Members {
                models: Vec::new(),
                examples: src.examples.clone(),
                label_counts: src.label_counts.clone(),
                class_names: src.class_names.clone(),
            };
            (Some(src), m)
        }
    };
    let built = Arc::new(AtomicU64::new(models.len() as u64));
    let plan = Arc::new(FaultPlan::new(
        s.seed,
        s.dropout.clone(),
        s.latency.clone(),
        examples,
        s.train.settings().local_epochs,
    ));
    // Central noise derives from the scenario seed: a simulation reproduces
    // bit for bit, and its noise protects nothing (nor does it need to).
    let noise = CentralNoise::reproducible(s.seed);
    let admission = s.admission_policy()?;
    let coordinator = Coordinator::new(coordinator_config(s, admission), initial, None, Resume::default(), noise)
        .map_err(|e| anyhow::anyhow!("scenario {}: {e}", s.name))?;
    let coordinator = crate::statistics::attach(s, coordinator)?;
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
    let schema = crate::statistics::shape(s).map(|sh| sh.schema);
    let mut observer = SimObserver { run, bar, plan: plan.clone(), cohorts: BTreeMap::new(), failed: None, schema };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let workers = Arc::new(Semaphore::new(opts.workers.max(1)));
    let mut lost = Vec::new();
    let (coordinator, end, cohorts) = match (&s.population, &source, hosting) {
        (_, _, Hosting::Remote(remote)) => {
            let r = rt.block_on(crate::distributed::serve_remote(s, remote, coordinator, &mut observer))?;
            lost = r.lost;
            (r.coordinator, r.end, Vec::new())
        }
        (Some(draw), Some(source), Hosting::InProcess) => {
            anyhow::ensure!(
                opts.transport == TransportKind::Memory,
                "[population] runs over the in-memory network only (--transport memory)"
            );
            let setup =
                PopulationSetup { scenario: s, draw, source, plan: plan.clone(), workers, built: built.clone() };
            let r = rt.block_on(crate::population::run_rounds(setup, coordinator, &mut observer))?;
            (r.coordinator, r.end, r.cohorts)
        }
        _ => {
            let (c, e) = rt.block_on(run_all(s, opts, models, coordinator, &plan, workers, &mut observer))?;
            (c, e, Vec::new())
        }
    };
    if let Some(b) = &observer.bar {
        b.finish_and_clear();
    }
    if let Some(e) = observer.failed.take() {
        anyhow::bail!("could not write the run directory: {e}");
    }
    let final_model = (**coordinator.global()).clone();
    let harness = match (&source, &s.population, &images) {
        (Some(src), None, _) => Some(src.harness_eval(&final_model).context("the harness's evaluation")?),
        (None, _, Some(images)) => Some(images.eval(&final_model).context("the harness's evaluation")?),
        _ => None,
    };
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
            "harness_evaluation": harness,
            "lost_members": lost,
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
        members_built: built.load(Ordering::Relaxed),
        cohorts,
        harness,
        lost,
    };
    if opts.report {
        crate::report::write_report(&opts.out, s, &result, None)?;
    }
    Ok(result)
}

/// Every member built at once, over the memory network or QUIC on loopback.
async fn run_all(
    s: &Scenario,
    opts: &SimOptions,
    models: Vec<SimModel>,
    coordinator: Coordinator,
    plan: &Arc<FaultPlan>,
    workers: Arc<Semaphore>,
    observer: &mut SimObserver,
) -> anyhow::Result<(Coordinator, RunEnd)> {
    let names: Vec<String> = (0..s.clients).map(|k| member_name(k, s.clients)).collect();
    let settings = coordinator.config().admission.map_or_else(SettingsDigest::default, |a| a.expected);
    let _pki_dir; // keeps the temporary PKI alive for the QUIC run
    // Every member signs its key advertisements for real: with a
    // certificate of an in-memory consortium PKI, or of the QUIC run's.
    let mut identities = Vec::with_capacity(names.len());
    let (listener, dialers): (_, Vec<Dialer>) = match opts.transport {
        TransportKind::Memory => {
            let pki = tessera_transport::pki::MemoryPki::new("Tessera simulated consortium")?;
            for n in &names {
                let c = pki.issue(n)?;
                identities.push(tessera_client::member_identity(c.cert, &c.key, pki.ca_cert().to_vec())?);
            }
            let net = MemoryNetwork::new();
            let l = net.listen(Arc::new(AdmitAll), Limits::default())?;
            (l, names.iter().map(|n| Dialer::Memory { network: net.clone(), member: n.clone() }).collect())
        }
        TransportKind::Quic => {
            let dir = tempfile::tempdir()?;
            tessera_transport::pki::init(dir.path(), &Default::default())?;
            for n in &names {
                let files = tessera_transport::pki::issue(dir.path(), n)?;
                let ca = dir.path().join(tessera_transport::pki::CA_CERT);
                identities.push(tessera_client::load_member_identity(&files.cert, &files.key, &ca)?);
            }
            let l = QuicListenerConfig::from_pki_dir(dir.path(), "127.0.0.1:0".parse()?)?.listen(Arc::new(AdmitAll))?;
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
    let names = (0..s.clients).map(|k| member_name(k, s.clients));
    let mut clients = Vec::new();
    for (((k, model), dialer), (name, identity)) in
        models.into_iter().enumerate().zip(dialers).zip(names.zip(identities))
    {
        let rng_seed = derive_seed(s.seed, k as u64, b"member");
        clients.push(spawn_member(s, k, name, model, dialer, identity, rng_seed, plan, &workers, settings));
    }
    let out = serve(listener, coordinator, observer, DriverOptions::default()).await;
    join_members(clients).await;
    Ok(out)
}

/// Certificates validated by any member this process runs, shared so that
/// each is validated once per process rather than by every member that
/// neighbours it (issue #20). Entries are keyed by CA and certificate, so
/// runs with different PKIs in one process never share a validation.
static CERTIFICATES: std::sync::LazyLock<tessera_protocol::member::CertificateCache> =
    std::sync::LazyLock::new(Default::default);

/// Start member `k` as the daemon runs one: its participant (wrapped by
/// the fault plan) under the client driver, over `dialer`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_member(
    s: &Scenario,
    k: usize,
    name: String,
    model: SimModel,
    dialer: Dialer,
    identity: MemberIdentity,
    rng_seed: u64,
    plan: &Arc<FaultPlan>,
    workers: &Arc<Semaphore>,
    settings: SettingsDigest,
) -> JoinHandle<Result<ClientExit, ClientError>> {
    let opts = ClientOptions { reconnect: false, workers: workers.clone(), ..ClientOptions::default() };
    spawn_member_with(s, k, name, model, dialer, identity, rng_seed, plan, settings, opts)
}

/// [`spawn_member`] with the client driver's options spelled out (a
/// worker process bounds its dial attempts).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_member_with(
    s: &Scenario,
    k: usize,
    name: String,
    model: SimModel,
    dialer: Dialer,
    identity: MemberIdentity,
    rng_seed: u64,
    plan: &Arc<FaultPlan>,
    settings: SettingsDigest,
    opts: ClientOptions,
) -> JoinHandle<Result<ClientExit, ClientError>> {
    // Many members share the cores (and the worker pool): mask on one thread each.
    let policy = Policy {
        allow_plaintext: s.insecure_plaintext,
        mask_threads: std::num::NonZeroUsize::MIN,
        statistics: crate::statistics::shape(s),
        ..Policy::default()
    };
    let rng = ChaCha20Rng::seed_from_u64(rng_seed);
    let plan = plan.active().then(|| plan.clone());
    tokio::spawn(async move {
        let p = Participant::new(name, policy, rng)
            .with_identity(identity)
            .with_settings(settings)
            .with_certificate_cache(CERTIFICATES.clone());
        let mut p = Faulty::new(p, plan, k);
        let mut egress = EgressLedger::in_memory();
        tessera_client::run(dialer, &mut p, Arc::new(Mutex::new(model)), &mut egress, opts).await
    })
}

/// Wait for members to end, logging those that ended badly.
pub(crate) async fn join_members(members: Vec<JoinHandle<Result<ClientExit, ClientError>>>) {
    for c in members {
        match c.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %tessera_cli::ErrorChain(&e), "a simulated member ended with an error")
            }
            Err(e) => tracing::warn!(error = %e, "a simulated member panicked"),
        }
    }
}
