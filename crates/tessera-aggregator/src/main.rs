//! `tessera-aggregator`: the consortium operator's daemon and tools. A thin
//! shell over the library; see `docs/operator-guide.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use tessera_aggregator::{
    AggregatorConfig, REVOKED_FILE, RevocationList, StateStore, StatusSnapshot, daemon, export_safetensors, now_ms,
    process_alive, utc,
};
use tessera_cli::{LogArgs, rfc3339_ms};
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
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the federated run described by the config until it finishes.
    Serve {
        /// The aggregator's configuration (`aggregator.toml`); relative
        /// paths in it are relative to the file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run only the `[statistics]` release (DP label histogram, missing
    /// rates, per-feature histograms) with the members that connect, write
    /// it to the run directory and exit; `serve` then trains.
    Statistics {
        /// The aggregator's configuration (`aggregator.toml`) with a
        /// `[statistics]` section.
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the consortium's certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Where the run stands: whether the aggregator runs, members online,
    /// round and phase, epsilon, accuracy.
    Status {
        /// The state database (`[state] path`).
        #[arg(long)]
        state: PathBuf,
        /// Print the snapshot as JSON (docs/operator-guide.md, section 6).
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
        /// The file format to write.
        #[arg(long, value_enum, default_value_t = ExportFormat::Safetensors)]
        format: ExportFormat,
        /// The state database (`[state] path`) holding the run.
        #[arg(long)]
        state: PathBuf,
        /// The file to write (refused if it exists).
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
    /// Who adds the noise: `local` (each DP-SGD step at the member),
    /// `distributed` (shares inside the secure sum; record unit: one step a
    /// round) or `central` (client unit only).
    #[arg(long, value_enum, default_value_t = NoiseArg::Local)]
    noise: NoiseArg,
    /// Record unit: local epochs per round (steps per round = epochs ·
    /// ceil(1/q) under local noise; exactly 1 under distributed noise).
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum NoiseArg {
    Local,
    Distributed,
    Central,
}

impl PrivacyArgs {
    fn query(&self) -> Result<tessera_privacy::CalculatorQuery, tessera_privacy::CalculatorError> {
        let unit = match self.unit {
            UnitArg::Record => tessera_core::PrivacyUnit::Record,
            UnitArg::Client => tessera_core::PrivacyUnit::Client,
        };
        let noise = match self.noise {
            NoiseArg::Local => tessera_core::NoisePlacement::Local,
            NoiseArg::Distributed => tessera_core::NoisePlacement::Distributed,
            NoiseArg::Central => tessera_core::NoisePlacement::Central,
        };
        let steps_per_round = match self.steps_per_round {
            Some(steps) => steps,
            None => tessera_privacy::releases_per_round(unit, noise, self.sampling_rate, self.local_epochs)?,
        };
        Ok(tessera_privacy::CalculatorQuery {
            unit,
            sampling_rate: self.sampling_rate,
            steps_per_round,
            noise_multiplier: self.noise_multiplier,
            target_epsilon: self.epsilon,
            rounds: self.rounds,
            delta: self.delta,
        })
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain; names the first broken entry and exits non-zero.
    Verify {
        /// The state database (`[state] path`).
        #[arg(long)]
        state: PathBuf,
        /// Print the verdict as JSON: `{"intact", "entries"}` or
        /// `{"intact": false, "broken_at", "problem"}`.
        #[arg(long)]
        json: bool,
    },
    /// Print the audit log, one entry per line, each with its hash.
    Show {
        /// The state database (`[state] path`).
        #[arg(long)]
        state: PathBuf,
        /// Print a JSON array of entries: `seq`, `at` (RFC 3339), `at_ms`,
        /// `kind`, `body` (a JSON object), `prev_hash`, `hash`.
        #[arg(long)]
        json: bool,
    },
    /// Print the head hash of the audit chain, to keep where the aggregator
    /// cannot write: `audit verify` then proves nothing before it changed.
    Head {
        /// The state database (`[state] path`).
        #[arg(long)]
        state: PathBuf,
        /// Print `{"seq", "hash"}` as JSON.
        #[arg(long)]
        json: bool,
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
        /// The PKI directory to create (`[server] pki_dir`).
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
        /// Print a JSON array of `{"path", "fingerprint"}`.
        #[arg(long)]
        json: bool,
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
        /// Print `{"members": [{"name", "fingerprint", "admitted", "revoked_by"}],
        /// "revoked_names": [..], "revoked_certificates": [{"fingerprint", "member"}]}`.
        #[arg(long)]
        json: bool,
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
        Command::Serve { config } => serve(&config, false),
        Command::Statistics { config } => serve(&config, true),
        Command::Pki { command } => pki(command),
        Command::Privacy(args) => {
            print!("{}", tessera_privacy::privacy_calculator(&args.query()?)?);
            Ok(())
        }
        Command::Status { state, json } => status(&state, json),
        Command::Audit { command } => audit(command),
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

fn serve(config: &std::path::Path, only_statistics: bool) -> anyhow::Result<()> {
    let cfg = AggregatorConfig::load(config)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // Before binding: a second serve names the holder, not a busy port.
        daemon::check_single_instance(&cfg)?;
        let listener = daemon::listen(&cfg)?;
        tracing::info!(
            listen = %cfg.server.listen,
            run_dir = %cfg.server.run_dir.display(),
            state = %cfg.state_path().display(),
            "aggregator started"
        );
        // The driver logs how the run ended; one that cannot make progress
        // is an error, so `Restart=on-failure` and schedulers see it.
        let end = if only_statistics {
            daemon::run_statistics(cfg, listener).await?
        } else {
            daemon::run(cfg, listener).await?
        };
        match end.failed {
            Some(reason) => Err(anyhow::anyhow!(
                "the run cannot make progress after {} completed rounds: {reason}",
                end.completed_rounds
            )),
            None => Ok(()),
        }
    })
}

/// `status`: the row the daemon keeps current, judged from outside: a
/// daemon whose heartbeat is stale or whose process is gone is shown as not
/// running, with nobody online.
fn status(state: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let store = StateStore::open_existing(state)?;
    let Some((_, text)) = store.read_status()? else {
        anyhow::bail!("{}: no status recorded yet (the aggregator has not started)", state.display());
    };
    let snapshot: StatusSnapshot = serde_json::from_str(&text)?;
    let now = now_ms();
    let running = snapshot.daemon_running(now, process_alive(snapshot.pid));
    let snapshot = snapshot.as_seen(running);
    if json {
        let mut v = serde_json::to_value(&snapshot)?;
        v["aggregator_running"] = running.into();
        v["updated"] = rfc3339_ms(snapshot.updated_ms).into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", snapshot.render_text(now, running));
    }
    Ok(())
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { state, json } => {
            let verdict = StateStore::open_existing(&state)?.verify_audit()?;
            match (verdict, json) {
                (Ok(n), false) => println!("audit log intact: {n} entries, hash chain and head verified"),
                (Ok(n), true) => println!("{}", json!({ "intact": true, "entries": n })),
                (Err(broken), false) => anyhow::bail!("audit log BROKEN at entry {}: {broken}", broken.seq()),
                (Err(broken), true) => {
                    let v = json!({ "intact": false, "broken_at": broken.seq(), "problem": broken.to_string() });
                    println!("{v}");
                    anyhow::bail!("audit log BROKEN at entry {}: {broken}", broken.seq());
                }
            }
        }
        AuditCommand::Show { state, json: false } => {
            for e in StateStore::open_existing(&state)?.audit_entries()? {
                println!("{:>6}  {}  {}  {:<18} {}", e.seq, utc(e.at_ms), e.hash, e.kind, e.body);
            }
        }
        AuditCommand::Show { state, json: true } => {
            let entries: Vec<serde_json::Value> = StateStore::open_existing(&state)?
                .audit_entries()?
                .into_iter()
                .map(|e| {
                    let body: serde_json::Value = serde_json::from_str(&e.body).unwrap_or(e.body.into());
                    json!({ "seq": e.seq, "at": rfc3339_ms(e.at_ms), "at_ms": e.at_ms, "kind": e.kind,
                            "body": body, "prev_hash": e.prev_hash, "hash": e.hash })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&entries)?);
        }
        AuditCommand::Head { state, json } => {
            let Some((seq, hash)) = StateStore::open_existing(&state)?.audit_head()? else {
                anyhow::bail!("{}: the audit log is empty", state.display());
            };
            if json {
                println!("{}", json!({ "seq": seq, "hash": hash }));
            } else {
                println!("{hash}");
            }
        }
    }
    Ok(())
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
        PkiCommand::Fingerprint { certs, json } => {
            let mut rows = Vec::new();
            for path in certs {
                let fp = CertFingerprint::of_pem_file(&path)?;
                match json {
                    true => rows.push(json!({ "path": path, "fingerprint": fp.to_string() })),
                    false => println!("{fp}  {}", path.display()),
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
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
        PkiCommand::List { dir, json } => pki_list(&dir, json)?,
    }
    Ok(())
}

/// `pki list`: the member certificates in `dir` and the revocation list.
fn pki_list(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let list = RevocationList::read(&dir.join(REVOKED_FILE))?;
    let members = member_certificates(dir);
    if json {
        let members: Vec<_> = members
            .iter()
            .map(|(name, fp)| {
                let by = list.refuses(name, Some(fp)).map(|b| b.to_string());
                let expires = expiry(dir, name);
                json!({ "name": name, "fingerprint": fp.to_string(), "admitted": by.is_none(), "revoked_by": by,
                        "expires": expires })
            })
            .collect();
        let certs: Vec<_> =
            list.certificates().map(|(fp, m)| json!({ "fingerprint": fp.to_string(), "member": m })).collect();
        let v = json!({ "members": members, "revoked_names": list.names().collect::<Vec<_>>(), "revoked_certificates": certs });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("member certificates in {}:", dir.display());
    for (name, fp) in members {
        let state = match list.refuses(&name, Some(&fp)) {
            Some(by) => by.to_string(),
            None => "admitted".into(),
        };
        let expires = expiry(dir, &name).unwrap_or_else(|| "unknown".into());
        println!("  {name:<24} {fp}  {state}  expires {expires}");
    }
    println!("revoked names: {}", list.names().collect::<Vec<_>>().join(", "));
    println!("revoked certificates:");
    for (fp, m) in list.certificates() {
        println!("  {fp}  {}", m.unwrap_or("(owner not recorded)"));
    }
    Ok(())
}

/// When `<dir>/<name>.pem` expires, in RFC 3339; `None` if unreadable.
fn expiry(dir: &std::path::Path, name: &str) -> Option<String> {
    let secs = tessera_transport::pki::expiry_of_pem_file(&dir.join(format!("{name}.pem"))).ok()?;
    Some(tessera_cli::rfc3339_ms(secs.saturating_mul(1000)))
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_subcommand_has_a_help_line() {
        tessera_cli::assert_complete_help(&super::Cli::command());
    }
}
