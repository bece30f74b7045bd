//! `tessera-client`: the member daemon. A thin shell over the library; it
//! dials out only, and everything it sends is recorded in the egress ledger.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_cli::LogArgs;
use tessera_client::{ClientConfig, ClientExit, ClientOptions, EgressLedger, egress};

/// mimalloc instead of glibc's allocator: large frames and datagram buffers
/// are allocated and freed continuously, and glibc trims and regrows its
/// heap under that pattern, paying a page fault and a page clear for every
/// 4 KiB it hands back out (a fifth of the QUIC receive path's time, see
/// docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tessera-client", version, about = "Tessera member daemon: local training, masked updates")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the federation and take part in rounds until the run ends.
    Run {
        /// The member's configuration (`client.toml`); relative paths in it
        /// are relative to the file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Fine-tune the final global model on this member's own data, locally:
    /// writes the personalized model and before/after metrics; sends nothing.
    Personalize {
        /// The member's configuration (`client.toml`): its data and `[model]`.
        #[arg(long)]
        config: PathBuf,
        /// The final global model, the aggregator's `run_dir/model.json`.
        #[arg(long)]
        model: PathBuf,
        /// Output directory (default: `personalized/<member>/` beside the member's data).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Local epochs over the member's train split.
        #[arg(long, default_value_t = 5)]
        epochs: u32,
        /// Examples per step.
        #[arg(long, default_value_t = 32)]
        batch_size: u32,
        /// Step size.
        #[arg(long, default_value_t = 0.05)]
        learning_rate: f64,
        /// Seed of the batch order.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Print the egress ledger: every message that left this site.
    Egress {
        /// The member's configuration; its `[state] egress_ledger` is read.
        #[arg(long)]
        config: PathBuf,
        /// Print a JSON array of entries: `time` (RFC 3339), `time_ms`,
        /// `round` (null outside a round), `kind`, `bytes`, `sha256`, `note`.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tessera_cli::init_logging(cli.log.log_format, "info,quinn=warn,rustls=warn");
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
        Command::Personalize { config, model, out, epochs, batch_size, learning_rate, seed } => {
            let cfg = ClientConfig::load(&config)?;
            let settings = tessera_core::TrainSettings {
                local_epochs: epochs,
                batch_size,
                learning_rate,
                proximal_mu: 0.0,
                seed,
                example_weight_cap: 0,
            };
            let out_dir = out.unwrap_or_else(|| tessera_client::default_personalized_dir(&cfg));
            let opts = tessera_client::PersonalizeOptions { global_model: model, out_dir, settings };
            let r = tessera_client::personalize(&cfg, &opts)?;
            println!(
                "accuracy on this member's test split: {:.4} (global) -> {:.4} (personalized); written to {} (nothing \
                 was sent)",
                r.before.accuracy,
                r.after.accuracy,
                opts.out_dir.display()
            );
            Ok(())
        }
        Command::Egress { config, json } => {
            let cfg = ClientConfig::load(&config)?;
            let entries = EgressLedger::read(&cfg.state.egress_ledger)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&egress::to_json(&entries))?);
            } else {
                print!("{}", egress::render(&entries));
            }
            Ok(())
        }
        Command::Run { config } => {
            let cfg = ClientConfig::load(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            let exit = rt.block_on(async {
                let opts = ClientOptions { stop: Some(tessera_client::stop_on_signals()?), ..ClientOptions::default() };
                tessera_client::run_daemon(&cfg, opts).await
            })?;
            // A training task a stop interrupted is not waited for.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            // The driver has logged how a run ended ("run finished" or
            // "connection lost"); a stop is this process's own doing.
            if let ClientExit::Stopped { reason } = exit {
                tracing::info!("stopped by {reason}; connection closed");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_subcommand_has_a_help_line() {
        tessera_cli::assert_complete_help(&super::Cli::command());
    }
}
