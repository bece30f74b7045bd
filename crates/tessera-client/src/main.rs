//! `tessera-client`: the member daemon. A thin shell over the library; it
//! dials out only, and everything it sends is recorded in the egress ledger.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use rand::SeedableRng;
use tessera_client::config::ClientConfig;
use tessera_client::tabular::TabularModel;
use tessera_client::{ClientExit, ClientOptions, EgressLedger, Participant, Policy, egress};
use tessera_learn::TabularData;
use tessera_transport::{Dialer, QuicDialConfig};

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
            let data = TabularData::load(&cfg.data.path, &cfg.data.spec(), &cfg.data.split())?;
            tracing::info!(
                member = %cfg.member,
                train = data.train.len(),
                test = data.test.len(),
                "local data loaded (it never leaves this site)"
            );
            let model = TabularModel::new(data, &cfg.model, cfg.backend.into())?;
            let mut dial = QuicDialConfig::new(
                &cfg.aggregator.address,
                &cfg.aggregator.ca,
                &cfg.aggregator.cert,
                &cfg.aggregator.key,
            )?;
            dial.server_name = cfg.aggregator.server_name.clone();
            let dialer = Dialer::Quic(Arc::new(dial));
            let mut egress = EgressLedger::open(&cfg.state.egress_ledger)?;
            let mut participant =
                Participant::new(cfg.member.clone(), Policy::default(), rand_chacha::ChaCha20Rng::from_entropy());
            let rt = tokio::runtime::Runtime::new()?;
            let exit = rt.block_on(tessera_client::run(
                dialer,
                &mut participant,
                Arc::new(Mutex::new(model)),
                &mut egress,
                ClientOptions::default(),
            ))?;
            match exit {
                ClientExit::Shutdown { reason } => eprintln!("run finished: {reason}"),
                ClientExit::Disconnected { reason } => eprintln!("disconnected: {reason}"),
            }
            Ok(())
        }
    }
}
