//! `tessera-sim worker`: a process hosting a contiguous range of a
//! scenario's members, each connected to the coordinator over QUIC with its
//! own certificate from the run's PKI (`crate::distributed`).
//!
//! A worker is a thin driver: member `k` is built and started exactly as
//! in an in-process run (the same data rows, model, seeds and fault plan,
//! keyed by `k`, through the client daemon's driver and the protocol's
//! participant), only its frames cross a real network.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_client::{ClientError, ClientExit, ClientOptions};
use tessera_learn::ComputeBackend;
use tessera_protocol::derive_seed;
use tessera_transport::{BackoffPolicy, Dialer, QuicDialConfig, pki};
use tokio::sync::Semaphore;

use crate::distributed::check_distributable;
use crate::faults::{FaultPlan, FaultStats};
use crate::members::{MemberSource, member_name};
use crate::run::{MemberStart, SimOptions, TransportKind, spawn_member};
use crate::scenario::Scenario;

/// The members a worker hosts, `A..B`: member `A` up to, not including, `B`
/// (members are numbered from 0 in the scenario, as their names
/// `client-<k>` are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberRange {
    /// The first member hosted.
    pub start: usize,
    /// One past the last member hosted.
    pub end: usize,
}

impl FromStr for MemberRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once("..").ok_or_else(|| format!("{s:?} is not A..B (e.g. 0..250)"))?;
        let number = |x: &str| x.trim().parse::<usize>().map_err(|_| format!("{s:?}: {x:?} is not a member number"));
        let (start, end) = (number(a)?, number(b)?);
        if start >= end {
            return Err(format!("{s:?} is empty: A..B hosts members A up to, not including, B"));
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for MemberRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The coordinator's `host:port`. The host must be a name on the
    /// coordinator's certificate (`--host` where the PKI was made).
    pub connect: String,
    /// The members this worker hosts.
    pub members: MemberRange,
    /// The run's PKI directory: `ca.pem` and each hosted member's
    /// `<name>.pem` and `<name>.key`.
    pub pki: PathBuf,
    /// Concurrent local-training jobs in this worker.
    pub workers: usize,
    /// Where the members train.
    pub backend: ComputeBackend,
    /// Dial attempts per member before giving up (with backoff up to 5 s
    /// between them), so workers may start before the coordinator.
    pub connect_attempts: u32,
}

/// How a worker's members ended.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    /// Members the coordinator told that the run is over.
    pub finished: usize,
    /// Members whose connection closed before that, with what closed it.
    pub disconnected: Vec<(String, String)>,
    /// Dropouts and stragglers the fault plan injected into these members.
    pub faults: FaultStats,
}

/// Run a worker until all its members have ended. Fails when a member
/// cannot reach the coordinator (naming the address and the cause) or its
/// certificate is missing.
pub fn run_worker(s: &Scenario, w: &WorkerOptions) -> anyhow::Result<WorkerReport> {
    check_distributable(s)?;
    anyhow::ensure!(
        w.members.end <= s.clients,
        "--members {}: scenario {} has {} members (0..{})",
        w.members,
        s.name,
        s.clients,
        s.clients
    );
    let sim = SimOptions {
        out: PathBuf::new(),
        transport: TransportKind::Quic,
        workers: w.workers,
        progress: false,
        backend: w.backend,
        report: false,
    };
    let source = MemberSource::new(s, &sim)?;
    let plan = Arc::new(FaultPlan::new(
        s.seed,
        s.dropout.clone(),
        s.latency.clone(),
        source.examples().to_vec(),
        s.train.settings().local_epochs,
    ));
    let settings = s.admission_policy()?.expected;
    let ca = w.pki.join(pki::CA_CERT);
    // Certificates and models first: a missing file fails before anything
    // connects (the coordinator would otherwise wait for the others).
    let mut members = Vec::with_capacity(w.members.end - w.members.start);
    for k in w.members.start..w.members.end {
        let name = member_name(k, s.clients);
        let files = pki::member_files(&w.pki, &name);
        let identity = tessera_client::load_member_identity(&files.cert, &files.key, &ca).with_context(|| {
            format!("{name}'s certificate in {} (copy the coordinator's PKI directory here)", w.pki.display())
        })?;
        let mut dial = QuicDialConfig::new(w.connect.clone(), &ca, &files.cert, &files.key)
            .with_context(|| format!("{name}'s QUIC configuration"))?;
        dial.connect_timeout = Duration::from_secs(10);
        members.push((k, name, identity, Dialer::Quic(Arc::new(dial)), source.model(k)?));
    }
    tracing::info!(members = %w.members, coordinator = %w.connect, "worker started");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = rt.block_on(async {
        let workers = Arc::new(Semaphore::new(w.workers.max(1)));
        let backoff = BackoffPolicy {
            max: Duration::from_secs(5),
            max_attempts: Some(w.connect_attempts.max(1)),
            ..BackoffPolicy::default()
        };
        let mut handles = Vec::with_capacity(members.len());
        for (k, name, identity, dialer, model) in members {
            let opts = ClientOptions {
                reconnect: false,
                workers: workers.clone(),
                backoff: backoff.clone(),
                ..ClientOptions::default()
            };
            let rng_seed = derive_seed(s.seed, k as u64, b"member");
            let m = MemberStart { k, name: name.clone(), model, dialer, identity, rng_seed };
            let h = spawn_member(s, m, &plan, settings, opts);
            handles.push((name, h));
        }
        let mut out = Vec::with_capacity(handles.len());
        for (name, h) in handles {
            out.push((name, h.await));
        }
        out
    });
    let mut report = WorkerReport { faults: plan.stats(), ..WorkerReport::default() };
    for (name, r) in results {
        match r.with_context(|| format!("member {name} panicked"))? {
            Ok(ClientExit::Shutdown { .. }) => report.finished += 1,
            Ok(ClientExit::Disconnected { reason } | ClientExit::Stopped { reason }) => {
                tracing::warn!(member = %name, %reason, "connection to the coordinator lost");
                report.disconnected.push((name, reason));
            }
            Err(e @ ClientError::Transport(_)) => {
                let why = format!("member {name} cannot connect to the coordinator at {}", w.connect);
                return Err(anyhow::Error::new(e).context(why));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("member {name} failed"))),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::MemberRange;

    #[test]
    fn member_ranges_parse_as_half_open_a_to_b() {
        assert_eq!("0..250".parse(), Ok(MemberRange { start: 0, end: 250 }));
        assert_eq!("750..1000".parse::<MemberRange>().unwrap().to_string(), "750..1000");
        assert!("5..5".parse::<MemberRange>().unwrap_err().contains("empty"));
        assert!("9..3".parse::<MemberRange>().is_err());
        assert!("0-250".parse::<MemberRange>().unwrap_err().contains("A..B"));
        assert!("a..3".parse::<MemberRange>().unwrap_err().contains("not a member number"));
    }
}
