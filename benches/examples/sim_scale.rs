//! How the simulator's protocol cost grows with the number of members: one
//! securely aggregated round (SecAgg+ above 64 members, as the simulator
//! plans it) of N members over the in-memory network, through the same
//! drivers `tessera-sim` runs (`tessera_client::run`, `driver::serve`), with
//! a synthetic model of `D` values and no training, so that what is measured
//! is masking, key agreement, share relay, unmasking and evaluation, not
//! burn. Members are tasks, not threads. Prints the setup time (the
//! consortium's certificates and the members' identities, made before the
//! round as `tessera-sim` makes them before its first round), then the
//! round's wall time and the CPU time the process spent in it (user +
//! system, all threads: on a machine shared with other work the wall time
//! overstates), and the process's peak RSS (`VmHWM`); run one N per
//! process so the peak is that N's. The "total" figure (setup and round)
//! is what the bench printed as its only time before issue #20's third
//! pass.
//!
//! ```sh
//! cargo build --workspace --examples --profile dev
//! for n in 10 100 1000 10000; do target/debug/examples/sim_scale $n 100; done
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_aggregator::{DriverOptions, RunObserver, serve};
use tessera_client::{ClientOptions, EgressLedger, LocalModel};
use tessera_core::{DpSettings, EvalMetrics, Limits, ModelParams, ParamTensor, RoundRecord, RunId, TrainSettings};
use tessera_protocol::StrategyConfig;
use tessera_protocol::coordinator::{
    CohortSelection, Coordinator, CoordinatorConfig, Dropout, Resume, RoundOutcome, SecureConfig,
};
use tessera_protocol::{Participant, Policy, TrainedUpdate};
use tessera_transport::{AdmitAll, MemoryNetwork};

/// The simulator's allocator (see `tessera-sim`'s main.rs), so the bench
/// measures what `tessera-sim run` does; before issue #20's second pass the
/// bench ran on glibc's allocator (docs/benchmarks.md, "Protocol scale").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Moves every value by a member-specific step; reports fixed metrics.
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

struct Quiet {
    finished: Option<RoundOutcome>,
}

impl RunObserver for Quiet {
    fn round_finished(&mut self, o: &RoundOutcome, _r: &RoundRecord, _c: &Coordinator) {
        self.finished = Some(o.clone());
    }

    fn round_aborted(&mut self, round: u64, reason: &str, _dropped: &[Dropout], _refunded: Option<f64>) {
        eprintln!("round {round} aborted: {reason}");
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time (user + system) of the whole process so far, in seconds:
/// fields 14 and 15 of `/proc/self/stat`, in clock ticks (`USER_HZ`, 100
/// on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // `rest` starts at field 3, so fields 14 and 15 are at 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// One member, ready to connect: its name and signed identity.
struct Prepared {
    name: String,
    identity: tessera_protocol::member::MemberIdentity,
}

/// The consortium's certificates and one identity per member: what a
/// simulator sets up once, before its first round.
fn prepare(n: usize) -> Vec<Prepared> {
    let pki = tessera_transport::pki::MemoryPki::new("sim-scale consortium").unwrap();
    let mut members: Vec<Prepared> = (0..n)
        .map(|i| {
            let name = format!("member-{i:05}");
            let creds = pki.issue(&name).unwrap();
            let identity = tessera_client::member_identity(creds.cert, &creds.key, pki.ca_cert().to_vec()).unwrap();
            Prepared { name, identity }
        })
        .collect();
    // AWS-LC seeds its random generator (CPU jitter entropy) on the
    // process's first signature: a once-per-process cost, paid here so
    // that the round's figure is a round's.
    if let Some(first) = members.first_mut() {
        first.identity.sign(b"sim-scale: first signature of the process").unwrap();
    }
    members
}

fn main() {
    // As `tessera-sim` does (see `tessera_sim::small_pages`).
    tessera_sim::small_pages();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let d: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let setup_started = Instant::now();
    let prepared = prepare(n);
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    let outcome = rt.block_on(async move {
        let initial = ModelParams::new(vec![ParamTensor::new("w", vec![d], vec![0.0; d]).unwrap()]);
        let cfg = CoordinatorConfig {
            run_id: RunId([9; 16]),
            rounds: 1,
            min_clients: (n * 2 / 3).max(2) as u32,
            start_quorum: n as u32,
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
            seed: 5,
            chunk_values: Limits::default().chunk_values,
            stream_slots: 1,
            stream_idle_ms: 3_600_000,
            unhealthy_after: 3,
            admission: None,
            robust: None,
            evaluate_every: 1,
        };
        let coordinator = Coordinator::new(
            cfg,
            initial,
            None,
            Resume::default(),
            tessera_protocol::coordinator::CentralNoise::reproducible(0),
        )
        .unwrap();
        let net = MemoryNetwork::new();
        let listener = net.listen(Arc::new(AdmitAll), Limits::default()).unwrap();
        let workers = Arc::new(tokio::sync::Semaphore::new(2));
        let mut members = Vec::with_capacity(n);
        // One cache of validated certificates for the process, as the simulator's.
        let certificates = tessera_protocol::member::CertificateCache::default();
        // Every member signs its key advertisements, as in a deployment.
        for (i, Prepared { name, identity }) in prepared.into_iter().enumerate() {
            let dialer = tessera_transport::Dialer::Memory { network: net.clone(), member: name.clone() };
            let policy = Policy { mask_threads: std::num::NonZeroUsize::MIN, ..Policy::default() };
            let certificates = certificates.clone();
            let opts = ClientOptions { reconnect: false, workers: workers.clone(), ..ClientOptions::default() };
            members.push(tokio::spawn(async move {
                let mut p = Participant::new(name, policy, ChaCha20Rng::seed_from_u64(i as u64))
                    .with_identity(identity)
                    .with_certificate_cache(certificates);
                let mut egress = EgressLedger::in_memory();
                let model = Arc::new(Mutex::new(Synthetic { step: 0.001 * (i % 7) as f32 }));
                tessera_client::run(dialer, &mut p, model, &mut egress, opts).await
            }));
        }
        let mut observer = Quiet { finished: None };
        let (_c, end) = serve(listener, coordinator, &mut observer, DriverOptions::default()).await;
        for m in members {
            let _ = tokio::time::timeout(Duration::from_secs(60), m).await;
        }
        (observer.finished, end)
    });
    let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_started);
    let (finished, end) = outcome;
    let o = finished.unwrap_or_else(|| panic!("the round did not complete: {}", end.reason));
    println!(
        "members {n}, values {d}: setup {setup_secs:.2} s; round with {} contributors in {secs:.2} s \
         ({cpu:.2} CPU-s); total {:.2} s; peak RSS {:.0} MiB",
        o.contributors.len(),
        setup_secs + secs,
        peak_rss_mib()
    );
}
