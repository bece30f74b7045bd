//! `tessera-sim`: run a scenario, or look at its partition first.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_learn::data::load_csv;
use tessera_sim::partition::{histogram, partition};
use tessera_sim::run::table_spec;
use tessera_sim::{Scenario, SimOptions, TransportKind, run_scenario};

#[derive(Parser)]
#[command(name = "tessera-sim", version, about = "Simulate a Tessera consortium on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write metrics.jsonl and summary.json.
    Run {
        scenario: PathBuf,
        /// Run directory (default: runs/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
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
    },
    /// Print each member's label histogram for a scenario's partition.
    Partition { scenario: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,tessera_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { scenario, out, transport, workers, epsilon, no_dp } => {
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
                backend: tessera_learn::DEFAULT_BACKEND,
            };
            eprintln!("{}: {} members, {} rounds, {:?} transport", s.name, s.clients, s.rounds, transport);
            let r = run_scenario(&s, &text, &opts)?;
            if let Some(last) = r.records.last() {
                println!("final: {}", tessera_aggregator::report::round_line(last));
            }
            println!("{} rounds completed ({} aborted): {}", r.end.completed_rounds, r.aborted, r.end.reason);
            if let Some(p) = &s.privacy {
                let spent = r.records.last().and_then(|l| l.epsilon).unwrap_or(0.0);
                println!(
                    "privacy: epsilon {spent:.3} of {} spent at delta {:e} ({:?} unit)",
                    p.epsilon, p.delta, p.unit
                );
            }
            println!("run directory: {}", out.display());
            Ok(())
        }
        Command::Partition { scenario } => {
            let s = Scenario::load(&scenario)?;
            let table = load_csv(&s.data.path, &table_spec(&s))?;
            let parts = partition(&s.partition, &table.labels, table.num_classes(), s.clients, s.seed)?;
            print!("{}", histogram(&parts, &table.labels, &table.class_names));
            Ok(())
        }
    }
}
