//! `tessera-aggregator`: the consortium operator's daemon and tools. A thin
//! shell over the library; see `docs/operator-guide.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_aggregator::{AggregatorConfig, StateStore, StatusSnapshot, daemon, export_safetensors, now_ms, utc};

/// mimalloc instead of glibc's allocator: large frames and datagram buffers
/// are allocated and freed continuously, and glibc trims and regrows its
/// heap under that pattern, paying a page fault and a page clear for every
/// 4 KiB it hands back out (a fifth of the QUIC receive path's time, see
/// docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tessera-aggregator", version, about = "Tessera aggregator: rounds, secure aggregation, PKI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the federated run described by the config until it finishes.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the consortium's certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Where the run stands: members online, round and phase, epsilon, accuracy.
    Status {
        /// The state database (`[state] path`).
        #[arg(long)]
        state: PathBuf,
        /// Print the snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the final global model for use outside Tessera.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Safetensors)]
        format: ExportFormat,
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain; names the first broken entry and exits non-zero.
    Verify {
        #[arg(long)]
        state: PathBuf,
    },
    /// Print the audit log, one entry per line.
    Show {
        #[arg(long)]
        state: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// safetensors, as the state dict of a torch.nn.Sequential MLP.
    Safetensors,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the consortium CA and the aggregator's certificate.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// DNS names or IP addresses the aggregator is reached by.
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
    },
    /// Issue a member certificate and key.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Refuse a member at its next connection.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
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
        Command::Serve { config } => {
            let cfg = AggregatorConfig::load(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let listener = daemon::listen(&cfg)?;
                eprintln!(
                    "listening on {} (run directory {}, state {})",
                    cfg.server.listen,
                    cfg.server.run_dir.display(),
                    cfg.state_path().display()
                );
                let end = daemon::run(cfg, listener).await?;
                eprintln!("run finished after {} rounds: {}", end.completed_rounds, end.reason);
                anyhow::Ok(())
            })
        }
        Command::Pki { command } => pki(command),
        Command::Status { state, json } => {
            let store = StateStore::open_existing(&state)?;
            let Some((_, text)) = store.read_status()? else {
                anyhow::bail!("{}: no status recorded yet (the aggregator has not started)", state.display());
            };
            let snapshot: StatusSnapshot = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                print!("{}", snapshot.render_text(now_ms()));
            }
            Ok(())
        }
        Command::Audit { command: AuditCommand::Verify { state } } => {
            let store = StateStore::open_existing(&state)?;
            match store.verify_audit()? {
                Ok(n) => {
                    println!("audit log intact: {n} entries, hash chain and head verified");
                    Ok(())
                }
                Err(broken) => anyhow::bail!("audit log BROKEN at entry {}: {broken}", broken.seq()),
            }
        }
        Command::Audit { command: AuditCommand::Show { state } } => {
            let store = StateStore::open_existing(&state)?;
            for e in store.audit_entries()? {
                println!("{:>6}  {}  {:<18} {}", e.seq, utc(e.at_ms), e.kind, e.body);
            }
            Ok(())
        }
        Command::Export { format: ExportFormat::Safetensors, state, out } => {
            let store = StateStore::open_existing(&state)?;
            let report = export_safetensors(&store, &out)?;
            println!(
                "wrote {} ({}; {} tensors) after {} completed rounds, trained part sha256 {}",
                out.display(),
                report.architecture,
                report.tensors.len(),
                report.completed_rounds,
                report.model_sha256
            );
            Ok(())
        }
    }
}

fn pki(cmd: PkiCommand) -> anyhow::Result<()> {
    use tessera_transport::pki;
    match cmd {
        PkiCommand::Init { dir, names } => {
            let opts = pki::InitOptions { aggregator_names: names, ..Default::default() };
            let files = pki::init(&dir, &opts)?;
            println!("consortium CA and aggregator certificate written to {}", dir.display());
            println!("aggregator certificate: {}", files.cert.display());
        }
        PkiCommand::Issue { dir, name } => {
            let files = pki::issue(&dir, &name)?;
            println!("issued {name}: {} and {} (key mode 0600)", files.cert.display(), files.key.display());
            println!("give the member these two files and {}", dir.join(pki::CA_CERT).display());
        }
        PkiCommand::Revoke { dir, name } => {
            pki::validate_member_name(&name)?;
            let path = dir.join(daemon::REVOKED_FILE);
            let mut revoked = daemon::read_revoked(&path)?;
            if revoked.contains(&name) {
                println!("{name} was already revoked");
                return Ok(());
            }
            revoked.push(name.clone());
            std::fs::write(&path, revoked.join("\n") + "\n")?;
            println!("revoked {name}: refused at its next connection");
        }
    }
    Ok(())
}
