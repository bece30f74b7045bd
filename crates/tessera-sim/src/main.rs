//! `tessera-sim`: run a scenario, or look at its partition first.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_cli::LogArgs;
use tessera_client::BackendChoice;
use tessera_sim::{Scenario, SimOptions, TransportKind, histogram, run_scenario, scenario_partition};

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
    /// The scenario file, as the daemons take their configuration.
    #[arg(long, value_name = "SCENARIO")]
    config: Option<PathBuf>,
}

impl ScenarioArg {
    fn path(self) -> PathBuf {
        self.scenario.or(self.config).expect("clap requires one of the two")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tessera_cli::init_logging(cli.log.log_format, "warn,tessera_sim=info");
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tessera_cli::report_error(cli.log.log_format, e.as_ref());
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { scenario, out, transport, workers, epsilon, no_dp, backend } => {
            let scenario = scenario.path();
            let text = std::fs::read_to_string(&scenario)?;
            let mut s = Scenario::load(&scenario)?;
            if no_dp {
                s.privacy = None;
            }
            if let Some(eps) = epsilon {
                let p = s
                    .privacy
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("--epsilon: the scenario has no [privacy] section"))?;
                p.epsilon = eps;
            }
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&s.name));
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let opts = SimOptions {
                out: out.clone(),
                transport,
                workers,
                progress: std::io::stderr().is_terminal(),
                backend: s.compute_backend(backend)?,
                report: true,
            };
            tracing::info!(
                scenario = %s.name,
                members = s.clients,
                rounds = s.rounds,
                ?transport,
                backend = opts.backend.name(),
                "simulation started"
            );
            let r = run_scenario(&s, &text, &opts)?;
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
                println!(
                    "faults: {} dropouts, {} stragglers; simulated time {:.1} s; wall time {:.1} s",
                    f.dropped.iter().sum::<u64>(),
                    f.stragglers,
                    r.records.iter().map(|x| x.seconds).sum::<f64>(),
                    r.wall_seconds
                );
            }
            println!("run directory: {}", out.display());
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
                workers: workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
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
