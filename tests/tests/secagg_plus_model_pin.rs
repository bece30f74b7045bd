//! The global model one SecAgg+ round of 100 in-process members produces,
//! pinned to its SHA-256 (issue #20). The members run the daemons' code
//! (`tessera_client::run` over `Participant`, `tessera_aggregator::serve`
//! over the coordinator, the in-memory network), with a synthetic model
//! that moves every value by a member-specific step: no burn, no float
//! reductions whose order depends on threads, so the model depends only on
//! the protocol (stochastic quantization from each member's seeded stream,
//! masks that cancel, dequantization, FedAvg) and is the same on every
//! machine. Any change to how in-process members receive or share the
//! cohort, the roster or the graph must leave this hash as it is; the pin
//! was computed on main at 3b3046a, before any such change.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_aggregator::{DriverOptions, RunObserver, serve};
use tessera_client::{ClientExit, ClientOptions, EgressLedger, LocalModel};
use tessera_core::{DpSettings, EvalMetrics, Limits, ModelParams, ParamTensor, RoundRecord, RunId, TrainSettings};
use tessera_protocol::coordinator::{
    CentralNoise, CohortSelection, Coordinator, CoordinatorConfig, Dropout, Resume, RoundOutcome, SecureConfig,
};
use tessera_protocol::{Participant, Policy, StrategyConfig, TrainedUpdate};
use tessera_transport::{AdmitAll, Dialer, MemoryNetwork};

/// SHA-256 of the global model after the round (`ModelParams::digest_hex`).
const PINNED: &str = "58c887c63e11ea3a1e4706a919c447fd2784e6378a031e967e14f6e5fd81d135";

const MEMBERS: usize = 100;
const VALUES: usize = 1000;

/// Moves every value by `step`; reports fixed metrics.
struct Synthetic {
    step: f32,
}

impl LocalModel for Synthetic {
    fn train(
        &mut self,
        m: &ModelParams,
        _s: &TrainSettings,
        _dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, tessera_learn::LocalError> {
        let mut params = m.clone();
        params.values_mut().for_each(|v| *v += self.step);
        Ok(TrainedUpdate { params, num_examples: 10, mean_loss: 0.5 })
    }

    fn evaluate(&mut self, _m: &ModelParams) -> Result<EvalMetrics, tessera_learn::LocalError> {
        Ok(EvalMetrics {
            num_examples: 4,
            accuracy: 0.75,
            confusion: vec![vec![2, 1], vec![0, 1]],
            ..Default::default()
        })
    }
}

#[derive(Default)]
struct Finished(Option<RoundOutcome>);

impl RunObserver for Finished {
    fn round_finished(&mut self, o: &RoundOutcome, _r: &RoundRecord, _c: &Coordinator) {
        self.0 = Some(o.clone());
    }

    fn round_aborted(&mut self, round: u64, reason: &str, _dropped: &[Dropout], _refunded: Option<f64>) {
        panic!("round {round} aborted: {reason}");
    }
}

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        run_id: RunId([20; 16]),
        rounds: 1,
        min_clients: MEMBERS as u32,
        start_quorum: MEMBERS as u32,
        cohort: CohortSelection::All,
        train: TrainSettings {
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 0,
            example_weight_cap: 10,
        },
        secure: Some(SecureConfig::default()),
        dp: None,
        strategy: StrategyConfig::FedAvg { server_lr: 1.0, average_last: None },
        round_deadline_ms: 3_600_000,
        phase_timeout_ms: 3_600_000,
        max_round_retries: 0,
        retry_backoff_ms: 0,
        retry_backoff_max_ms: 0,
        seed: 20,
        chunk_values: Limits::default().chunk_values,
        stream_slots: 1,
        stream_idle_ms: 3_600_000,
        unhealthy_after: 3,
        admission: None,
        robust: None,
        evaluate_every: 1,
    }
}

/// One round of the `MEMBERS` in-process members under `opts`: the
/// coordinator after it, the observed outcome, and how each member ended.
async fn one_round(
    opts: DriverOptions,
) -> (Coordinator, Option<RoundOutcome>, String, Vec<Result<ClientExit, String>>) {
    let initial = ModelParams::new(vec![ParamTensor::new("w", vec![VALUES], vec![0.0; VALUES]).unwrap()]);
    let coordinator =
        Coordinator::new(config(), initial, None, Resume::default(), CentralNoise::reproducible(0)).unwrap();
    let net = MemoryNetwork::new();
    let listener = net.listen(Arc::new(AdmitAll), Limits::default()).unwrap();
    let pki = tessera_transport::pki::MemoryPki::new("pin consortium").unwrap();
    let workers = Arc::new(tokio::sync::Semaphore::new(2));
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let name = format!("member-{i:03}");
        let creds = pki.issue(&name).unwrap();
        let identity = tessera_client::member_identity(creds.cert, &creds.key, pki.ca_cert().to_vec()).unwrap();
        let dialer = Dialer::Memory { network: net.clone(), member: name.clone() };
        let policy = Policy { mask_threads: std::num::NonZeroUsize::MIN, ..Policy::default() };
        let opts = ClientOptions { reconnect: false, workers: workers.clone(), ..ClientOptions::default() };
        members.push(tokio::spawn(async move {
            let mut p = Participant::new(name, policy, ChaCha20Rng::seed_from_u64(i as u64)).with_identity(identity);
            let model = Arc::new(Mutex::new(Synthetic { step: 0.001 * (i % 7) as f32 }));
            tessera_client::run(dialer, &mut p, model, &mut EgressLedger::in_memory(), opts).await
        }));
    }
    let mut observer = Finished::default();
    let (coordinator, end) = serve(listener, coordinator, &mut observer, opts).await;
    let mut exits = Vec::new();
    for m in members {
        exits.push(match tokio::time::timeout(Duration::from_secs(60), m).await {
            Ok(Ok(Ok(exit))) => Ok(exit),
            other => Err(format!("{other:?}")),
        });
    }
    (coordinator, observer.0, end.reason, exits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secagg_plus_round_of_in_process_members_gives_the_pinned_model() {
    let (coordinator, outcome, reason, _) = one_round(DriverOptions::default()).await;
    let outcome = outcome.unwrap_or_else(|| panic!("the round did not complete: {reason}"));
    assert_eq!(outcome.contributors.len(), MEMBERS);
    // The mean step, about 0.00297 (k mod 7 thousandths over k < 100), up to quantization.
    let mean = (0..MEMBERS).map(|i| 0.001 * (i % 7) as f64).sum::<f64>() / MEMBERS as f64;
    let global = coordinator.global();
    assert!(global.values().all(|v| (f64::from(*v) - mean).abs() < 1e-4), "the round did not average the steps");
    assert_eq!(global.digest_hex(), PINNED, "the in-process SecAgg+ round no longer gives the pinned model");
}

/// The driver's linger is a bound, not a wait: once every connection's
/// writer has flushed its final `Shutdown`, `serve` returns (it used to
/// sleep the whole linger, 200 ms of every simulated run), and every member
/// has heard that the run is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_once_every_shutdown_is_flushed() {
    let opts = DriverOptions { linger: Duration::from_secs(3600), ..DriverOptions::default() };
    let (_, outcome, reason, exits) = tokio::time::timeout(Duration::from_secs(180), one_round(opts))
        .await
        .expect("serve waited out its hour of linger instead of returning once the writers flushed");
    assert!(outcome.is_some(), "the round did not complete: {reason}");
    assert_eq!(exits.len(), MEMBERS);
    for (i, exit) in exits.iter().enumerate() {
        assert!(matches!(exit, Ok(ClientExit::Shutdown { .. })), "member {i} ended with {exit:?}, not the shutdown");
    }
}
