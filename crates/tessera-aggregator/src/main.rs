//! `tessera-aggregator`: the consortium operator's daemon and tools. A thin
//! shell over the library; see `docs/operator-guide.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_aggregator::{
    AggregatorConfig, REVOKED_FILE, RevocationList, StateStore, StatusSnapshot, daemon, export_safetensors, now_ms, utc,
};
use tessera_transport::pki::CertFingerprint;

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
    /// The privacy calculator: epsilon, sigma and affordable rounds for a
    /// planned run, by the RDP accountant and OpenDP's zCDP side by side.
    Privacy(PrivacyArgs),
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

/// `privacy`: the calculator's options (the logic is `tessera_privacy::privacy_calculator`).
#[derive(clap::Args)]
struct PrivacyArgs {
    /// Whom the guarantee protects.
    #[arg(long, value_enum)]
    unit: UnitArg,
    /// Poisson sampling rate q per step (record: batch / local examples; client: cohort rate).
    #[arg(long)]
    sampling_rate: f64,
    /// The noise multiplier sigma; without it, sigma is calibrated to --epsilon over --rounds.
    #[arg(long)]
    noise_multiplier: Option<f64>,
    /// Target epsilon; with --noise-multiplier, the rounds it affords are printed.
    #[arg(long)]
    epsilon: Option<f64>,
    /// Rounds the run will take.
    #[arg(long)]
    rounds: Option<u64>,
    /// Record unit: local epochs per round (steps per round = epochs · ceil(1/q)).
    #[arg(long, default_value_t = 1)]
    local_epochs: u64,
    /// Gaussian releases per round, overriding the unit's default.
    #[arg(long)]
    steps_per_round: Option<u64>,
    /// The delta every epsilon is stated at.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UnitArg {
    Record,
    Client,
}

impl PrivacyArgs {
    fn query(&self) -> tessera_privacy::CalculatorQuery {
        let (unit, default_steps) = match self.unit {
            UnitArg::Record => {
                let per_epoch = if self.sampling_rate > 0.0 { (1.0 / self.sampling_rate).ceil() as u64 } else { 1 };
                (tessera_core::PrivacyUnit::Record, self.local_epochs.saturating_mul(per_epoch))
            }
            UnitArg::Client => (tessera_core::PrivacyUnit::Client, 1),
        };
        tessera_privacy::CalculatorQuery {
            unit,
            sampling_rate: self.sampling_rate,
            steps_per_round: self.steps_per_round.unwrap_or(default_steps),
            noise_multiplier: self.noise_multiplier,
            target_epsilon: self.epsilon,
            rounds: self.rounds,
            delta: self.delta,
        }
    }
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
    /// Issue a member certificate and key; prints the certificate's fingerprint.
    Issue {
        /// The PKI directory (`pki init`'s).
        #[arg(long)]
        dir: PathBuf,
        /// The member's name, as in `[server] members`.
        #[arg(long)]
        name: String,
    },
    /// Print the SHA-256 fingerprint of certificates (the identity `revoke --fingerprint` takes).
    Fingerprint {
        /// PEM certificate files; the first certificate of each is fingerprinted.
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
    /// Withdraw a certificate or a member: a running aggregator closes the
    /// live connections it refuses within about 250 ms, and refuses them at
    /// every later connection.
    Revoke {
        /// The PKI directory; the list is `<dir>/revoked.txt`.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Undo a revocation. Reinstating a name leaves the certificates revoked
    /// with it revoked (a stolen key stays out after re-keying).
    Reinstate {
        /// The PKI directory; the list is `<dir>/revoked.txt`.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// List the member certificates in the PKI directory and the revocation list.
    List {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// What `revoke` and `reinstate` act on: exactly one of the two.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// A member name: `revoke` refuses every certificate naming it (and also
    /// revokes the fingerprint of `<dir>/<name>.pem`); `reinstate` lifts the
    /// name only.
    #[arg(long)]
    name: Option<String>,
    /// One certificate, by the SHA-256 fingerprint `pki fingerprint` prints
    /// (64 hex digits; colons and a `sha256:` prefix are accepted).
    #[arg(long)]
    fingerprint: Option<String>,
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
        Command::Privacy(args) => {
            print!("{}", tessera_privacy::privacy_calculator(&args.query())?);
            Ok(())
        }
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
            let fp = CertFingerprint::of_pem_file(&files.cert)?;
            println!("issued {name}: {} and {} (key mode 0600)", files.cert.display(), files.key.display());
            println!("certificate fingerprint (sha256): {fp}");
            println!("give the member these two files and {}", dir.join(pki::CA_CERT).display());
        }
        PkiCommand::Fingerprint { certs } => {
            for path in certs {
                let fp = CertFingerprint::of_pem_file(&path)?;
                println!("{fp}  {}", path.display());
            }
        }
        PkiCommand::Revoke { dir, target } => {
            let path = dir.join(REVOKED_FILE);
            let mut list = RevocationList::read(&path)?;
            match target.resolve()? {
                Resolved::Name(name) => {
                    let cert = pki::member_files(&dir, &name).cert;
                    let fp = match CertFingerprint::of_pem_file(&cert) {
                        Ok(fp) => fp,
                        Err(pki::PkiError::Missing(_)) => anyhow::bail!(
                            "no certificate was issued to {name} in {} ({} is missing); to revoke a \
                             certificate held elsewhere, use --fingerprint",
                            dir.display(),
                            cert.display()
                        ),
                        Err(e) => return Err(e.into()),
                    };
                    let named = list.revoke_name(&name);
                    let certified = list.revoke_certificate(fp, Some(name.clone()));
                    if !named && !certified {
                        println!("{name} and its certificate {fp} were already revoked");
                        return Ok(());
                    }
                    list.write(&path)?;
                    println!("revoked member {name} (every certificate naming it) and its certificate {fp}");
                }
                Resolved::Certificate(fp) => {
                    let owner = issued_to(&dir, &fp);
                    if !list.revoke_certificate(fp, owner.clone()) {
                        println!("certificate {fp} was already revoked");
                        return Ok(());
                    }
                    list.write(&path)?;
                    match owner {
                        Some(m) => println!("revoked certificate {fp} (issued to {m})"),
                        None => println!("revoked certificate {fp} (not among the certificates in {})", dir.display()),
                    }
                }
            }
            println!(
                "a running aggregator closes its live connections within a second; {} refuses it from now on",
                path.display()
            );
        }
        PkiCommand::Reinstate { dir, target } => {
            let path = dir.join(REVOKED_FILE);
            let mut list = RevocationList::read(&path)?;
            match target.resolve()? {
                Resolved::Name(name) => {
                    if !list.reinstate_name(&name) {
                        anyhow::bail!("{name} is not revoked by name (see `pki list`)");
                    }
                    list.write(&path)?;
                    println!("reinstated member {name}");
                    let still: Vec<String> = list
                        .certificates()
                        .filter(|(_, m)| *m == Some(name.as_str()))
                        .map(|(fp, _)| fp.to_string())
                        .collect();
                    if !still.is_empty() {
                        println!("still revoked, issued to {name}: {}", still.join(", "));
                    }
                }
                Resolved::Certificate(fp) => {
                    if !list.reinstate_certificate(&fp) {
                        anyhow::bail!("certificate {fp} is not revoked (see `pki list`)");
                    }
                    list.write(&path)?;
                    println!("reinstated certificate {fp}");
                }
            }
        }
        PkiCommand::List { dir } => {
            let list = RevocationList::read(&dir.join(REVOKED_FILE))?;
            println!("member certificates in {}:", dir.display());
            for (name, fp) in member_certificates(&dir) {
                let state = match list.refuses(&name, Some(&fp)) {
                    Some(by) => by.to_string(),
                    None => "admitted".into(),
                };
                println!("  {name:<24} {fp}  {state}");
            }
            println!("revoked names: {}", list.names().collect::<Vec<_>>().join(", "));
            println!("revoked certificates:");
            for (fp, m) in list.certificates() {
                println!("  {fp}  {}", m.unwrap_or("(owner not recorded)"));
            }
        }
    }
    Ok(())
}

/// A [`Target`] checked: a valid member name or a well-formed fingerprint.
enum Resolved {
    Name(String),
    Certificate(CertFingerprint),
}

impl Target {
    fn resolve(self) -> anyhow::Result<Resolved> {
        match (self.name, self.fingerprint) {
            (Some(name), None) => {
                tessera_transport::pki::validate_member_name(&name)?;
                Ok(Resolved::Name(name))
            }
            (None, Some(fp)) => Ok(Resolved::Certificate(fp.parse()?)),
            _ => anyhow::bail!("give exactly one of --name and --fingerprint"),
        }
    }
}

/// The member certificates `pki issue` left in `dir` (`<name>.pem`, CA and
/// aggregator excluded), with their fingerprints.
fn member_certificates(dir: &std::path::Path) -> Vec<(String, CertFingerprint)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, CertFingerprint)> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.strip_suffix(".pem")?.to_owned();
            tessera_transport::pki::validate_member_name(&name).ok()?;
            Some((name, CertFingerprint::of_pem_file(&path).ok()?))
        })
        .collect();
    out.sort();
    out
}

/// The member a certificate in `dir` with this fingerprint was issued to.
fn issued_to(dir: &std::path::Path, fp: &CertFingerprint) -> Option<String> {
    member_certificates(dir).into_iter().find(|(_, f)| f == fp).map(|(n, _)| n)
}
