//! `tessera-sim`: run a scenario, or look at its partition first.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_cli::{LogArgs, LogFormat};
use tessera_client::BackendChoice;
use tessera_sim::{
    CoordinatorOptions, MemberRange, ProcessOptions, Scenario, SimOptions, SimResult, TransportKind, WorkerOptions,
    histogram, run_scenario, scenario_partition,
};

/// mimalloc instead of glibc's allocator: large frames and datagram buffers
/// are allocated and freed continuously, and glibc trims and regrows its
/// heap under that pattern, paying a page fault and a page clear for every
/// 4 KiB it hands back out (a fifth of the QUIC receive path's time, see
/// docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tessera-sim", version, about = "Simulate a Tessera consortium on one machine")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write metrics.jsonl and summary.json.
    Run {
        #[command(flatten)]
        scenario: ScenarioArg,
        /// Run directory (default: runs/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// How the simulated members reach the aggregator: in memory, or
        /// real QUIC with mutual TLS on loopback.
        #[arg(long, value_enum, default_value = "memory")]
        transport: TransportKind,
        /// Concurrent local-training jobs (default: available cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Override the scenario's privacy target epsilon (needs a [privacy] section).
        #[arg(long)]
        epsilon: Option<f64>,
        /// Run without differential privacy, whatever the scenario says.
        #[arg(long, conflicts_with = "epsilon")]
        no_dp: bool,
        /// Where the members train, over the scenario's `backend`: flex,
        /// ndarray or wgpu (a build with --features tessera-learn/wgpu).
        #[arg(long, value_name = "BACKEND")]
        backend: Option<BackendChoice>,
        /// Spread the members over N worker processes (this binary), each
        /// hosting a contiguous range, connected over QUIC on loopback with
        /// a PKI made for the run; the model is the same as in one process.
        /// `--transport` does not apply then.
        #[arg(long, value_name = "N")]
        processes: Option<usize>,
    },
    /// The coordinator alone, for members in `tessera-sim worker` processes
    /// started by hand, here or on other machines (docs/simulation.md).
    Coordinator {
        #[command(flatten)]
        scenario: ScenarioArg,
        /// The UDP address to listen on for the workers' members.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:4500")]
        listen: SocketAddr,
        /// The run's PKI directory (default: <out>/pki). When it holds no CA,
        /// one is made, with a certificate per member: copy the directory to
        /// every worker machine.
        #[arg(long, value_name = "DIR")]
        pki: Option<PathBuf>,
        /// A name workers reach this machine by (DNS name or IP address),
        /// put on the coordinator's certificate when the PKI is made; repeatable.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Run directory (default: runs/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the scenario's privacy target epsilon (needs a [privacy] section).
        #[arg(long)]
        epsilon: Option<f64>,
        /// Run without differential privacy, whatever the scenario says.
        #[arg(long, conflicts_with = "epsilon")]
        no_dp: bool,
    },
    /// Host a contiguous range of a scenario's members and connect them to
    /// a `tessera-sim coordinator` (or a `run --processes` parent).
    Worker {
        #[command(flatten)]
        scenario: ScenarioArg,
        /// The coordinator's host:port; the host must be a name on its
        /// certificate (`--host` where the PKI was made).
        #[arg(long, value_name = "ADDR")]
        connect: String,
        /// The members to host: A..B is member A up to, not including, B.
        #[arg(long, value_name = "A..B")]
        members: MemberRange,
        /// The run's PKI directory, copied from the coordinator: ca.pem and
        /// the hosted members' certificates and keys.
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// Concurrent local-training jobs (default: available cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Where the members train, over the scenario's `backend`.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<BackendChoice>,
        /// Dial attempts per member before giving up, up to 5 s apart, so a
        /// worker may start before its coordinator.
        #[arg(long, value_name = "N", default_value_t = 30)]
        connect_attempts: u32,
    },
    /// Make a run's PKI for `coordinator --pki` and `worker --pki`: a CA of
    /// its own, the coordinator's certificate and one per member.
    Pki {
        #[command(flatten)]
        scenario: ScenarioArg,
        /// The directory to write (it must not hold a CA yet).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A name workers reach the coordinator by, put on its certificate; repeatable.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Print each member's label histogram for a scenario's partition.
    Partition {
        #[command(flatten)]
        scenario: ScenarioArg,
        /// Also write each member's train/validation/test row numbers (0 =
        /// first data row) as JSON, for running other frameworks on the
        /// same split (benches/flower_sim.py).
        #[arg(long)]
        indices: Option<PathBuf>,
    },
    /// Centralized, local-only, federated and federated-with-DP on the
    /// scenario's data: one table, printed and written to the run directory.
    Compare {
        #[command(flatten)]
        scenario: ScenarioArg,
        /// Output directory (default: runs/<scenario name>-compare).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Concurrent local-training jobs (default: available cores).
        #[arg(long)]
        workers: Option<usize>,
    },
}

/// The scenario file: positional or `--config`, exactly one of them.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ScenarioArg {
    /// The scenario file (docs/simulation.md), e.g. simulations/hospitals-wdbc.toml.
    #[arg(value_name = "SCENARIO")]
    scenario: Option<PathBuf>,
    /// The scenario file, as the daemons take their configuration
    /// (`--scenario` is the same flag).
    #[arg(long, value_name = "SCENARIO", alias = "scenario")]
    config: Option<PathBuf>,
}

impl ScenarioArg {
    fn path(self) -> PathBuf {
        self.scenario.or(self.config).expect("clap requires one of the two")
    }
}

fn main() -> ExitCode {
    tessera_sim::small_pages();
    let cli = Cli::parse();
    tessera_cli::init_logging(cli.log.log_format, "warn,tessera_sim=info");
    match run(cli.command, cli.log.log_format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tessera_cli::report_error(cli.log.log_format, e.as_ref());
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, log_format: LogFormat) -> anyhow::Result<()> {
    match command {
        Command::Run { scenario, out, transport, workers, epsilon, no_dp, backend, processes } => {
            let path = scenario.path();
            let (s, text) = load(&path, epsilon, no_dp)?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&s.name));
            let opts = SimOptions {
                out: out.clone(),
                transport: if processes.is_some() { TransportKind::Quic } else { transport },
                workers: workers.unwrap_or_else(cores),
                progress: std::io::stderr().is_terminal(),
                backend: s.compute_backend(backend)?,
                report: true,
            };
            tracing::info!(
                scenario = %s.name,
                members = s.clients,
                rounds = s.rounds,
                transport = ?opts.transport,
                processes,
                backend = opts.backend.name(),
                "simulation started"
            );
            let r = match processes {
                None => run_scenario(&s, &text, &opts)?,
                Some(n) => {
                    let mut worker_args = vec!["--backend".to_owned(), opts.backend.name().to_owned()];
                    if log_format == LogFormat::Json {
                        worker_args.extend(["--log-format".to_owned(), "json".to_owned()]);
                    }
                    let p = ProcessOptions { processes: n, scenario: path, worker_args };
                    tessera_sim::run_processes(&s, &text, &opts, &p)?
                }
            };
            print_result(&s, &r, &out, processes.is_some());
            Ok(())
        }
        Command::Coordinator { scenario, listen, pki, hosts, out, epsilon, no_dp } => {
            let (s, text) = load(&scenario.path(), epsilon, no_dp)?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&s.name));
            let opts = SimOptions {
                out: out.clone(),
                transport: TransportKind::Quic,
                workers: 1,
                progress: std::io::stderr().is_terminal(),
                backend: s.compute_backend(None)?,
                report: true,
            };
            let c = CoordinatorOptions { listen, pki: pki.unwrap_or_else(|| out.join("pki")), hosts };
            let r = tessera_sim::run_coordinator(&s, &text, &opts, &c)?;
            print_result(&s, &r, &out, true);
            Ok(())
        }
        Command::Worker { scenario, connect, members, pki, workers, backend, connect_attempts } => {
            let s = Scenario::load(&scenario.path())?;
            let w = WorkerOptions {
                connect,
                members,
                pki,
                workers: workers.unwrap_or_else(cores),
                backend: s.compute_backend(backend)?,
                connect_attempts,
            };
            let r = tessera_sim::run_worker(&s, &w)?;
            let dropped: u64 = r.faults.dropped.iter().sum();
            println!(
                "worker {members}: {} members finished, {} lost their connection; {dropped} simulated dropouts, {} stragglers",
                r.finished,
                r.disconnected.len(),
                r.faults.stragglers
            );
            Ok(())
        }
        Command::Pki { scenario, dir, hosts } => {
            let s = Scenario::load(&scenario.path())?;
            anyhow::ensure!(
                !dir.join(tessera_transport::pki::CA_CERT).exists(),
                "{} already holds a CA; a run's PKI is made once",
                dir.display()
            );
            tessera_sim::prepare_pki(&s, &dir, &hosts)?;
            println!(
                "wrote a CA, the coordinator's certificate and {} member certificates to {}",
                s.clients,
                dir.display()
            );
            Ok(())
        }
        Command::Compare { scenario, out, workers } => {
            let scenario = scenario.path();
            let text = std::fs::read_to_string(&scenario)?;
            let s = Scenario::load(&scenario)?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-compare", s.name)));
            let opts = SimOptions {
                out: out.clone(),
                transport: TransportKind::Memory,
                workers: workers.unwrap_or_else(cores),
                progress: std::io::stderr().is_terminal(),
                backend: s.compute_backend(None)?,
                report: true,
            };
            let rows = tessera_sim::compare::compare(&s, &text, &opts)?;
            print!("{}", tessera_sim::compare::table(&rows));
            println!("written to {}", out.join("compare.md").display());
            Ok(())
        }
        Command::Partition { scenario, indices } => {
            let scenario = scenario.path();
            let s = Scenario::load(&scenario)?;
            if s.vision_model.is_some() {
                let (data, labels, parts) = tessera_sim::partition_images(&s)?;
                print!("{}", histogram(&parts, &labels, data.class_names()));
                return Ok(());
            }
            let table = tessera_sim::load_table(&s)?;
            let parts = scenario_partition(&s, &table)?;
            if let Some(path) = indices {
                let splits = tessera_sim::member_splits(&s, &table, &parts)?;
                let json: Vec<_> = splits
                    .iter()
                    .map(|x| serde_json::json!({"train": x.train, "validation": x.validation, "test": x.test}))
                    .collect();
                std::fs::write(&path, serde_json::to_string(&json)?)?;
            }
            print!("{}", histogram(&parts, &table.labels, &table.class_names));
            Ok(())
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The scenario and its text, with the command line's privacy overrides.
fn load(path: &Path, epsilon: Option<f64>, no_dp: bool) -> anyhow::Result<(Scenario, String)> {
    let text = std::fs::read_to_string(path)?;
    let mut s = Scenario::load(path)?;
    if no_dp {
        s.privacy = None;
    }
    if let Some(eps) = epsilon {
        let p =
            s.privacy.as_mut().ok_or_else(|| anyhow::anyhow!("--epsilon: the scenario has no [privacy] section"))?;
        p.epsilon = eps;
    }
    Ok((s, text))
}

/// The end of a run: final round, privacy, faults, members lost.
fn print_result(s: &Scenario, r: &SimResult, out: &Path, remote: bool) {
    if let Some(last) = r.records.last() {
        println!("final: {}", tessera_aggregator::round_line(last));
    }
    if let Some(m) = &r.harness {
        // The experimenter's measurement, outside the protocol.
        println!(
            "harness evaluation of the final model (every member's test split): accuracy {:.4}, AUC {:.4}, loss {:.4}",
            m.accuracy, m.auc, m.loss
        );
    }
    println!("{} rounds completed ({} aborted): {}", r.end.completed_rounds, r.aborted, r.end.reason);
    if let Some(p) = &s.privacy {
        let spent = r.records.last().and_then(|l| l.epsilon).unwrap_or(0.0);
        println!(
            "privacy: epsilon {spent:.3} of {} spent at delta {:e} ({:?} unit), noise multiplier {:.4}",
            p.epsilon,
            p.delta,
            p.unit,
            r.noise_multiplier.unwrap_or(0.0)
        );
    }
    if s.dropout.is_some() || s.latency.is_some() {
        let f = &r.faults;
        // Remote members' faults are drawn, and counted, in their workers.
        let dropouts = if remote {
            "dropouts counted by each worker".to_owned()
        } else {
            format!("{} dropouts, {} stragglers", f.dropped.iter().sum::<u64>(), f.stragglers)
        };
        println!(
            "faults: {dropouts}; simulated time {:.1} s; wall time {:.1} s",
            r.records.iter().map(|x| x.seconds).sum::<f64>(),
            r.wall_seconds
        );
    }
    if !r.lost.is_empty() {
        let names: Vec<String> = r.lost.iter().map(|l| format!("{} (round {})", l.member, l.round)).collect();
        println!("lost {} members whose connection ended (dropouts): {}", r.lost.len(), names.join(", "));
    }
    println!("run directory: {}", out.display());
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn every_flag_and_subcommand_has_a_help_line() {
        tessera_cli::assert_complete_help(&Cli::command());
    }

    #[test]
    fn the_scenario_is_positional_or_config_exactly_once() {
        for args in [&["tessera-sim", "run", "s.toml"][..], &["tessera-sim", "run", "--config", "s.toml"]] {
            let Command::Run { scenario, .. } = Cli::try_parse_from(args).unwrap().command else { panic!() };
            assert_eq!(scenario.path(), std::path::Path::new("s.toml"), "{args:?}");
        }
        assert!(Cli::try_parse_from(["tessera-sim", "run"]).is_err(), "one is required");
        assert!(Cli::try_parse_from(["tessera-sim", "run", "a.toml", "--config", "b.toml"]).is_err(), "not both");
    }

    #[test]
    fn coordinator_and_worker_take_the_designed_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["tessera-sim"][..], args].concat()).map(|c| c.command);
        let w = ["worker", "s.toml", "--connect", "h:4500", "--members", "250..500", "--pki", "pki"];
        let Ok(Command::Worker { members, connect, connect_attempts, .. }) = parse(&w) else { panic!() };
        assert_eq!((members.start, members.end, connect.as_str(), connect_attempts), (250, 500, "h:4500", 30));
        let mut bad = w;
        bad[5] = "500..250";
        assert!(parse(&bad).err().unwrap().to_string().contains("is empty"));
        let c = ["coordinator", "--scenario", "s.toml", "--host", "a.example", "--host", "10.0.0.2"];
        let Ok(Command::Coordinator { scenario, listen, pki, hosts, .. }) = parse(&c) else { panic!() };
        assert_eq!(scenario.path(), std::path::Path::new("s.toml"));
        assert_eq!(
            (listen.to_string(), pki, hosts),
            ("0.0.0.0:4500".to_owned(), None, vec!["a.example".into(), "10.0.0.2".into()])
        );
        let Ok(Command::Run { processes, .. }) = parse(&["run", "s.toml", "--processes", "3"]) else { panic!() };
        assert_eq!(processes, Some(3));
    }

    #[test]
    fn backend_flag_parses_the_three_names() {
        let parse = |b: &str| match Cli::try_parse_from(["tessera-sim", "run", "s.toml", "--backend", b]) {
            Ok(Cli { command: Command::Run { backend, .. }, .. }) => Ok(backend),
            Ok(_) => panic!(),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(parse("wgpu"), Ok(Some(tessera_client::BackendChoice::Wgpu)));
        assert_eq!(parse("ndarray"), Ok(Some(tessera_client::BackendChoice::Ndarray)));
        assert!(parse("gpu").unwrap_err().contains("flex, ndarray or wgpu"));
    }
}
