//! `tessera-client`: the member daemon. A thin shell over the library; it
//! dials out only, and everything it sends is recorded in the egress ledger.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the federation and take part in rounds until the run ends.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the egress ledger: every message that left this site.
    Egress {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
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
        Command::Egress { config } => {
            let cfg = ClientConfig::load(&config)?;
            let entries = EgressLedger::read(&cfg.state.egress_ledger)?;
            print!("{}", egress::render(&entries));
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
            match exit {
                ClientExit::Shutdown { reason } => eprintln!("run finished: {reason}"),
                ClientExit::Disconnected { reason } => eprintln!("disconnected: {reason}"),
                ClientExit::Stopped { reason } => eprintln!("stopped by {reason}; connection closed"),
            }
            Ok(())
        }
    }
}
