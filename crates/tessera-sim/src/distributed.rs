//! Members across processes and machines: the coordinator's side of a run
//! whose members live in worker processes (`tessera-sim worker`, see
//! `crate::worker`), connected over QUIC with mutual TLS.
//!
//! Nothing here is a second implementation of a round. The coordinator is
//! the one [`run_scenario`](crate::run_scenario) builds (same
//! configuration, same reproducible central noise, same observer), served
//! by the aggregator daemon's driver; the workers run the same members
//! through the client daemon's driver. A run spread over processes trains
//! the same model, bit for bit, as one in-process run of the scenario,
//! because nothing the model depends on depends on where a member runs:
//!
//! - each member's randomness is seeded from the scenario seed and its
//!   global index (`derive_seed(seed, k, "member")`), its data and fault
//!   draws likewise, wherever the worker is;
//! - the coordinator draws cohorts from its own seed over the members'
//!   names, and starts the first round only once every member is connected
//!   (`start_quorum = clients`), so no cohort depends on connection order;
//! - the secure sum is exact in Z_2^k, so the order in which masked updates
//!   arrive does not matter; everything else the coordinator folds in
//!   (plaintext research sums, evaluation reports) it orders by party.
//!
//! A worker that dies takes its members with it: the coordinator sees their
//! connections close (or time out) and drops them from the round, exactly
//! as it would real members; the run goes on while the secure-aggregation
//! threshold and `min_clients` hold. The report names the members lost.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressStyle;
use serde::Serialize;
use tessera_aggregator::{DriverOptions, RunEnd, RunObserver, StoreError, serve};
use tessera_core::RoundRecord;
use tessera_protocol::AdmissionRefusal;
use tessera_protocol::coordinator::{Coordinator, Dropout, RoundOutcome};
use tessera_transport::{AdmitAll, QuicListenerConfig, pki};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::members::member_name;
use crate::observer::SimObserver;
use crate::run::{Hosting, SimOptions, SimResult, TransportKind, run_hosted};
use crate::scenario::Scenario;

/// How long workers get to end after the run has (their members are told
/// the run is over), and how long the coordinator waits for a run to end
/// once every worker is gone, before it gives up on them.
const WORKER_GRACE: Duration = Duration::from_secs(60);

/// A member whose connection the coordinator lost during a run spread over
/// processes: its worker died, or the network between them failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostMember {
    /// The member's name (`client-<k>`).
    pub member: String,
    /// The round under way (or about to start) when its connection went.
    pub round: u64,
}

/// Where `tessera-sim coordinator` listens and what it reads its
/// certificates from.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// The UDP address to listen on (`0.0.0.0:4500`; port 0 picks one).
    pub listen: SocketAddr,
    /// The run's PKI directory ([`prepare_pki`]), created when it holds no CA.
    pub pki: PathBuf,
    /// Names the workers reach the coordinator by, added to its certificate
    /// when the PKI is created (`localhost` and `127.0.0.1` always are).
    pub hosts: Vec<String>,
}

/// How `tessera-sim run --processes N` starts its workers.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// Worker processes, each hosting a contiguous range of members.
    pub processes: usize,
    /// The scenario file the workers load (the one the run loaded).
    pub scenario: PathBuf,
    /// Further arguments for every worker (`--backend`, `--log-format`).
    pub worker_args: Vec<String>,
}

/// Write a run's PKI into `dir` unless it already holds one: a consortium CA
/// of its own, the coordinator's certificate (for `localhost`, `127.0.0.1`
/// and `hosts`) and one certificate per member of the scenario, under the
/// member's simulated name. Returns whether it was created. An existing
/// directory must hold every member's certificate.
///
/// The coordinator reads the CA and its own certificate from it; a worker
/// needs `ca.pem` and its members' `<name>.pem` and `<name>.key`, so the
/// operator copies the directory (or those files) to each worker machine.
/// The CA key stays with whoever made the directory.
pub fn prepare_pki(s: &Scenario, dir: &Path, hosts: &[String]) -> anyhow::Result<bool> {
    let names = (0..s.clients).map(|k| member_name(k, s.clients));
    if dir.join(pki::CA_CERT).exists() {
        for n in names {
            let cert = pki::member_files(dir, &n).cert;
            anyhow::ensure!(
                cert.exists(),
                "{} holds a CA but no certificate for {n}: it was made for another scenario \
                 ({} members needed; remove it or point --pki elsewhere)",
                dir.display(),
                s.clients
            );
        }
        return Ok(false);
    }
    let mut aggregator_names = pki::InitOptions::default().aggregator_names;
    for h in hosts {
        if !aggregator_names.contains(h) {
            aggregator_names.push(h.clone());
        }
    }
    let opts = pki::InitOptions { aggregator_names, consortium: format!("Tessera simulation {}", s.name) };
    pki::init(dir, &opts).with_context(|| format!("creating the run's PKI in {}", dir.display()))?;
    for n in names {
        pki::issue(dir, &n).with_context(|| format!("issuing {n}'s certificate in {}", dir.display()))?;
    }
    Ok(true)
}

/// Scenarios without `[population]` can spread their members over
/// processes (a worker builds its range of members from the scenario's
/// data, tabular or images, exactly as one process would).
pub(crate) fn check_distributable(s: &Scenario) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.population.is_none(),
        "scenario {}: a [population] run builds each round's cohort in one process; it cannot use workers",
        s.name
    );
    Ok(())
}

/// `tessera-sim coordinator`: the coordinator alone, waiting on `c.listen`
/// for workers started by hand (`tessera-sim worker`), here or on other
/// machines. Prints the address it listens on to stdout.
pub fn run_coordinator(
    s: &Scenario,
    scenario_text: &str,
    opts: &SimOptions,
    c: &CoordinatorOptions,
) -> anyhow::Result<SimResult> {
    check_distributable(s)?;
    if prepare_pki(s, &c.pki, &c.hosts)? {
        tracing::info!(dir = %c.pki.display(), "wrote the run's PKI; copy it to every worker machine (--pki)");
    }
    let remote = Remote { listen: c.listen, pki: c.pki.clone(), spawn: None, announce: true };
    run_hosted(
        s,
        scenario_text,
        &SimOptions { transport: TransportKind::Quic, ..opts.clone() },
        Hosting::Remote(remote),
    )
}

/// `tessera-sim run --processes N`: the coordinator in this process and
/// `N` workers (this same binary) on loopback, with a PKI made for the run
/// in a temporary directory.
pub fn run_processes(
    s: &Scenario,
    scenario_text: &str,
    opts: &SimOptions,
    p: &ProcessOptions,
) -> anyhow::Result<SimResult> {
    check_distributable(s)?;
    anyhow::ensure!(
        (1..=s.clients).contains(&p.processes),
        "--processes {}: between 1 and the scenario's {} members",
        p.processes,
        s.clients
    );
    let dir = tempfile::tempdir()?;
    prepare_pki(s, dir.path(), &[])?;
    let exe = std::env::current_exe().context("finding the tessera-sim binary to start the workers")?;
    let scenario = p.scenario.canonicalize().with_context(|| format!("the scenario file {}", p.scenario.display()))?;
    let mut args = p.worker_args.clone();
    // The training slots are shared out; none of it changes the metrics.
    args.extend(["--workers".into(), (opts.workers / p.processes).max(1).to_string()]);
    let spawn = Spawn { exe, scenario, processes: p.processes, args };
    let remote = Remote {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        pki: dir.path().to_path_buf(),
        spawn: Some(spawn),
        announce: false,
    };
    run_hosted(
        s,
        scenario_text,
        &SimOptions { transport: TransportKind::Quic, ..opts.clone() },
        Hosting::Remote(remote),
    )
}

/// A coordinator whose members connect from worker processes.
pub(crate) struct Remote {
    listen: SocketAddr,
    pki: PathBuf,
    /// Workers to start once listening (`run --processes`); `None`: they
    /// are started by hand.
    spawn: Option<Spawn>,
    /// Print the address listened on to stdout.
    announce: bool,
}

/// The worker processes `run --processes` starts.
struct Spawn {
    exe: PathBuf,
    scenario: PathBuf,
    processes: usize,
    args: Vec<String>,
}

/// What [`serve_remote`] hands back to `run_hosted`.
pub(crate) struct Served {
    pub(crate) coordinator: Coordinator,
    pub(crate) end: RunEnd,
    pub(crate) lost: Vec<LostMember>,
}

/// Listen, start the workers if this run starts them, and serve the
/// coordinator until the run ends.
pub(crate) async fn serve_remote(
    s: &Scenario,
    remote: Remote,
    coordinator: Coordinator,
    observer: &mut SimObserver,
) -> anyhow::Result<Served> {
    let mut cfg = QuicListenerConfig::from_pki_dir(&remote.pki, remote.listen)
        .with_context(|| format!("the coordinator's certificate in {}", remote.pki.display()))?;
    cfg.max_connections = cfg.max_connections.max(s.clients + 64);
    let listener = cfg.listen(Arc::new(AdmitAll)).with_context(|| format!("listening on {}", remote.listen))?;
    let addr = listener.local_addr().context("the QUIC listener has no address")?;
    if remote.announce {
        println!("coordinator listening on {addr}; waiting for {} members", s.clients);
        let _ = std::io::stdout().flush();
    }
    tracing::info!(%addr, members = s.clients, "coordinator listening; waiting for every member");
    let started = Arc::new(AtomicBool::new(false));
    let mut watch = Watch::new(observer, s.clients, s.rounds, started.clone());
    let (coordinator, end) = match &remote.spawn {
        None => serve(listener, coordinator, &mut watch, DriverOptions::default()).await,
        Some(spawn) => {
            let mut workers = Workers::start(spawn, s.clients, &remote.pki, addr)?;
            let out = tokio::select! {
                out = serve(listener, coordinator, &mut watch, DriverOptions::default()) => out,
                e = workers.watch(&started) => return Err(e),
            };
            workers.finish().await;
            out
        }
    };
    let lost = std::mem::take(&mut watch.lost);
    Ok(Served { coordinator, end, lost })
}

/// Worker `i` of `n`'s members: `[i * clients / n, (i + 1) * clients / n)`.
fn range_of(i: usize, n: usize, clients: usize) -> std::ops::Range<usize> {
    i * clients / n..(i + 1) * clients / n
}

/// The running worker processes of `run --processes`.
struct Workers {
    ranges: Vec<std::ops::Range<usize>>,
    exits: mpsc::UnboundedReceiver<(usize, std::io::Result<ExitStatus>)>,
    /// One task per worker, owning its child (killed when the task is dropped).
    tasks: Vec<JoinHandle<()>>,
    running: usize,
}

impl Workers {
    fn start(spawn: &Spawn, clients: usize, pki: &Path, addr: SocketAddr) -> anyhow::Result<Self> {
        let (tx, exits) = mpsc::unbounded_channel();
        let ranges: Vec<_> = (0..spawn.processes).map(|i| range_of(i, spawn.processes, clients)).collect();
        let mut tasks = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let mut child = tokio::process::Command::new(&spawn.exe)
                .arg("worker")
                .arg(&spawn.scenario)
                .args(["--connect", &addr.to_string(), "--members", &format!("{}..{}", r.start, r.end)])
                .arg("--pki")
                .arg(pki)
                .args(&spawn.args)
                // stdout and stderr are this process's: the workers' logs
                // and their closing lines show with the coordinator's.
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {i} ({})", spawn.exe.display()))?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let status = child.wait().await;
                let _ = tx.send((i, status));
            }));
        }
        tracing::info!(workers = ranges.len(), %addr, "worker processes started");
        Ok(Self { running: ranges.len(), ranges, exits, tasks })
    }

    /// Resolves only with a reason to give up on the run: a worker failed
    /// before every member had connected (the first round would wait for
    /// it forever), or every worker ended and the run still did not.
    async fn watch(&mut self, started: &AtomicBool) -> anyhow::Error {
        loop {
            let Some((i, status)) = self.exits.recv().await else { return std::future::pending().await };
            self.running -= 1;
            let r = &self.ranges[i];
            let how = match &status {
                Ok(s) if s.success() => None,
                Ok(s) => Some(s.to_string()),
                Err(e) => Some(format!("could not be waited for: {e}")),
            };
            if let Some(how) = &how {
                if !started.load(Ordering::Acquire) {
                    return anyhow::anyhow!(
                        "worker {i} (members {}..{}) ended before the run started ({how}); see its error above",
                        r.start,
                        r.end
                    );
                }
                tracing::warn!(worker = i, members = %format!("{}..{}", r.start, r.end), status = %how,
                    "a worker process ended during the run: its members are dropouts");
            }
            if self.running == 0 {
                tokio::time::sleep(WORKER_GRACE).await;
                return anyhow::anyhow!("every worker process has ended, but the run did not finish");
            }
        }
    }

    /// After the run: give the workers time to end, then stop the rest.
    async fn finish(mut self) {
        let all = async {
            while self.running > 0 && self.exits.recv().await.is_some() {
                self.running -= 1;
            }
        };
        if tokio::time::timeout(WORKER_GRACE, all).await.is_err() {
            tracing::warn!(left = self.running, "workers still running after the run ended; stopping them");
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The simulator's observer, plus what a run over processes needs: the
/// progress bar counts members connecting until the first round, and
/// members whose connection goes during the run are recorded as lost.
struct Watch<'a> {
    inner: &'a mut SimObserver,
    expected: usize,
    rounds: u64,
    online: BTreeSet<String>,
    lost: Vec<LostMember>,
    started: Arc<AtomicBool>,
}

impl<'a> Watch<'a> {
    fn new(inner: &'a mut SimObserver, expected: usize, rounds: u64, started: Arc<AtomicBool>) -> Self {
        if let Some(b) = &inner.bar {
            // The round bar counts members connecting until the run starts.
            b.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} members connected {elapsed_precise}")
                    .expect("template"),
            );
            b.set_length(expected as u64);
        }
        Self { inner, expected, rounds, online: BTreeSet::new(), lost: Vec::new(), started }
    }
}

impl RunObserver for Watch<'_> {
    fn round_started(&mut self, round: u64, cohort: &[String], cohort_seed: u64) -> Result<(), StoreError> {
        if !self.started.swap(true, Ordering::AcqRel) {
            tracing::info!(members = self.expected, "every member connected; the run starts");
            if let Some(b) = &self.inner.bar {
                b.set_style(
                    ProgressStyle::with_template("{bar:30} round {pos}/{len} {elapsed_precise}").expect("template"),
                );
                b.set_length(self.rounds);
                b.set_position(0);
            }
        }
        self.inner.round_started(round, cohort, cohort_seed)
    }

    fn state_changed(&mut self, c: &Coordinator) {
        let n = c.online().count();
        // Members never reconnect in a simulation, so an unchanged count
        // is an unchanged set.
        if n != self.online.len() && !c.is_finished() {
            let now: BTreeSet<String> = c.online().cloned().collect();
            let round = c.progress().map_or(c.next_round(), |(r, _)| r);
            for gone in self.online.difference(&now) {
                if self.started.load(Ordering::Acquire) {
                    tracing::warn!(member = %gone, round, "lost a member's connection: a dropout from now on");
                    self.lost.push(LostMember { member: gone.clone(), round });
                } else {
                    tracing::warn!(member = %gone, "a member left before the run started; waiting for it again");
                }
            }
            self.online = now;
            if !self.started.load(Ordering::Acquire)
                && let Some(b) = &self.inner.bar
            {
                b.set_position(n as u64);
            }
        }
        self.inner.state_changed(c)
    }

    fn round_finished(&mut self, outcome: &RoundOutcome, record: &RoundRecord, coordinator: &Coordinator) {
        self.inner.round_finished(outcome, record, coordinator)
    }

    fn round_aborted(&mut self, round: u64, reason: &str, dropped: &[Dropout], refunded: Option<f64>) {
        self.inner.round_aborted(round, reason, dropped, refunded)
    }

    fn rejected(&mut self, member: &str, error: &str) {
        self.inner.rejected(member, error)
    }

    fn admission_refused(&mut self, refusal: &AdmissionRefusal) {
        self.inner.admission_refused(refusal)
    }

    fn bad_shares(&mut self, round: u64, members: &[String]) {
        self.inner.bad_shares(round, members)
    }

    fn veto_next_round(&mut self, coordinator: &Coordinator) -> Option<String> {
        self.inner.veto_next_round(coordinator)
    }
}

#[cfg(test)]
mod tests {
    use super::range_of;

    #[test]
    fn worker_ranges_tile_the_members_without_gap_or_overlap() {
        for (n, clients) in [(1, 5), (3, 10), (4, 4), (7, 1000)] {
            let mut next = 0;
            for i in 0..n {
                let r = range_of(i, n, clients);
                assert_eq!(r.start, next, "{n} workers over {clients}");
                assert!(!r.is_empty(), "{n} workers over {clients}: worker {i} hosts nobody");
                next = r.end;
            }
            assert_eq!(next, clients);
        }
    }
}
