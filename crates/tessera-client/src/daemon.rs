//! How the daemon assembles a member from its configuration, shared with
//! the end-to-end tests so they run exactly what `tessera-client run` runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore};
use tessera_core::SettingsDigest;
use tessera_privacy::PrivacyBudget;
use tessera_protocol::member::{MemberRng, Participant};
use tessera_tabular::{StatisticsSource, TabularData};
use tessera_transport::{Dialer, QuicDialConfig};

use crate::config::{ClientConfig, DataConfig, ModelSection};
use crate::driver::{ClientExit, ClientOptions};
use crate::egress::EgressLedger;
use crate::images::load_member_images;
use crate::privacy::LedgerGuard;
use tessera_learn::LocalModel;
use tessera_tabular::TabularModel;
use tessera_vision::VisionModel;

/// The member's protocol state machine with its policy (`[policy]`), its own
/// privacy budget (when configured, which also makes it require DP) and its
/// randomness. Refuses a configuration that [`ClientConfig::validate`]
/// refuses, and a `member` that is not the name its certificate was issued
/// to.
pub fn participant(cfg: &ClientConfig) -> anyhow::Result<Participant<MemberRandomness>> {
    cfg.validate()?;
    crate::identity::check_member_name(&cfg.member, &cfg.aggregator.cert)?;
    let rng = if cfg.testing.seeded_randomness {
        tracing::warn!(member = %cfg.member, "TEST MODE: seeded randomness; masks and noise are predictable");
        MemberRandomness::Seeded(ChaCha20Rng::seed_from_u64(crate::driver::member_seed(SEEDED, &cfg.member)))
    } else {
        MemberRandomness::Os(ChaCha20Rng::from_entropy())
    };
    let policy = &cfg.policy;
    tracing::info!(
        member = %cfg.member,
        min_cohort = policy.min_cohort,
        min_threshold_fraction = policy.min_threshold_fraction,
        max_model_values = policy.max_model_values,
        require_dp = policy.require_dp || cfg.privacy.is_some(),
        "member policy"
    );
    let identity = crate::identity::load_member_identity(&cfg.aggregator.cert, &cfg.aggregator.key, &cfg.aggregator.ca)
        .map_err(|e| anyhow::anyhow!("member identity for signed key advertisements: {e}"))?;
    let settings = settings_digest(cfg)?;
    tracing::info!(member = %cfg.member, %settings, "announcing these settings at admission");
    let mut member_policy = policy.policy();
    member_policy.statistics = statistics_shape(cfg)?;
    let mut p =
        Participant::new(cfg.member.clone(), member_policy, rng).with_identity(identity).with_settings(settings);
    if let Some(privacy) = &cfg.privacy {
        let budget = PrivacyBudget { epsilon: privacy.epsilon, delta: privacy.delta };
        let guard = LedgerGuard::open(&privacy.ledger, budget)
            .map_err(|e| anyhow::anyhow!("privacy ledger {}: {e}", privacy.ledger.display()))?;
        let spent = guard.ledger().spent().map(|b| b.epsilon).unwrap_or(f64::NAN);
        tracing::info!(member = %cfg.member, budget = privacy.epsilon, spent, "own privacy budget enforced");
        p = p.with_privacy_guard(Box::new(guard));
    }
    Ok(p)
}

/// What this member counts DP statistics over: its declared schema and the
/// model's classes (a tabular member with a schema); `None` refuses them.
fn statistics_shape(cfg: &ClientConfig) -> anyhow::Result<Option<tessera_protocol::member::StatisticsShape>> {
    let (DataConfig::Csv(section), ModelSection::Tabular(m)) = (&cfg.data, &cfg.model) else { return Ok(None) };
    let shape = |schema| tessera_protocol::member::StatisticsShape { schema, classes: m.num_classes as u32 };
    Ok(section.spec().declared_schema()?.map(shape))
}

/// Where the member's exact statistics report goes: beside its data, in
/// `statistics/<member>.json`. It never leaves the member.
pub fn statistics_report_path(cfg: &ClientConfig, data: &Path) -> PathBuf {
    data.parent().unwrap_or(Path::new(".")).join("statistics").join(format!("{}.json", cfg.member))
}

/// The digest of this member's `[model]` and declared schema, announced
/// at admission (the schema file is read here; the data is not).
pub fn settings_digest(cfg: &ClientConfig) -> anyhow::Result<SettingsDigest> {
    let schema = match &cfg.data {
        DataConfig::Csv(section) => section.spec().declared_schema()?,
        DataConfig::Images(_) => None,
    };
    Ok(tessera_protocol::settings_digest(&cfg.model, schema.as_ref()))
}

/// The configured compute backend, its device created now: a missing GPU
/// stops the member at start-up, before it joins a round.
fn backend(cfg: &ClientConfig) -> anyhow::Result<tessera_learn::ComputeBackend> {
    let backend = cfg.backend.compute()?.check()?;
    tracing::info!(backend = backend.name(), "local training backend");
    Ok(backend)
}

/// Load the member's data and build its model (data stays in this process).
pub fn tabular_model(cfg: &ClientConfig) -> anyhow::Result<TabularModel> {
    cfg.validate()?;
    let (section, model) = (cfg.data.csv()?, cfg.model.tabular()?);
    let table = tessera_tabular::load_csv(&section.path, &section.spec())?;
    let data = TabularData::from_table(&table, &section.spec(), &section.split())?;
    tracing::info!(
        member = %cfg.member,
        train = data.train.len(),
        test = data.test.len(),
        "local data loaded (it never leaves this site)"
    );
    let mut local = TabularModel::new(data, model, backend(cfg)?)?.with_seeded_noise(cfg.testing.seeded_randomness);
    if let Some(schema) = section.spec().declared_schema()? {
        // DP statistics count every record the member holds.
        let report = statistics_report_path(cfg, &section.path);
        if let Some(dir) = report.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let rows = (0..table.len()).collect();
        let source = StatisticsSource { table: Arc::new(table), rows, schema, report: Some(report) };
        local = local.with_statistics_source(source);
    }
    Ok(local)
}

/// Load the member's images and build its image model (the checkpoint is
/// read here; data stays in this process), on the configured backend.
pub(crate) fn vision_model(cfg: &ClientConfig) -> anyhow::Result<VisionModel> {
    cfg.validate()?;
    let (DataConfig::Images(section), ModelSection::Vision(model)) = (&cfg.data, &cfg.model) else {
        anyhow::bail!("an image model needs image data and an image [model] (`kind` in both sections)");
    };
    let (train, test) = load_member_images(section)?;
    tracing::info!(
        member = %cfg.member,
        train = train.len(),
        test = test.len(),
        "local images loaded (they never leave this site)"
    );
    Ok(VisionModel::from_config_on(model, train, test, backend(cfg)?)?.with_seeded_noise(cfg.testing.seeded_randomness))
}

/// Everything `tessera-client run` does: load the data, open the ledgers,
/// dial the aggregator over QUIC + mTLS and take part until the run ends.
pub async fn run_daemon(cfg: &ClientConfig, opts: ClientOptions) -> anyhow::Result<ClientExit> {
    match &cfg.model {
        ModelSection::Tabular(_) => {
            let mut model = tabular_model(cfg)?;
            model.task_mut().set_progress(crate::progress::terminal_training_bar());
            drive(cfg, model, opts).await
        }
        ModelSection::Vision(_) => drive(cfg, vision_model(cfg)?, opts).await,
    }
}

async fn drive<M: LocalModel>(cfg: &ClientConfig, model: M, opts: ClientOptions) -> anyhow::Result<ClientExit> {
    let mut dial =
        QuicDialConfig::new(&cfg.aggregator.address, &cfg.aggregator.ca, &cfg.aggregator.cert, &cfg.aggregator.key)?;
    dial.server_name = cfg.aggregator.server_name.clone();
    let mut egress = EgressLedger::open(&cfg.state.egress_ledger)?;
    let mut p = participant(cfg)?;
    let model = Arc::new(Mutex::new(model));
    Ok(crate::driver::run(Dialer::Quic(Arc::new(dial)), &mut p, model, &mut egress, opts).await?)
}

/// Salt of the seeded test mode's per-member streams.
const SEEDED: u64 = 0x7e55_e7a0;

/// The daemon's randomness: a CSPRNG seeded from the OS, or, in the seeded
/// test mode (`[testing] seeded_randomness`, accepted only by builds with the
/// test-only `test-seeded-randomness` feature), streams derived from the
/// member's name and each round's seed, so that a retried or resumed round
/// draws exactly what an uninterrupted run drew.
pub enum MemberRandomness {
    /// Production: seeded once from the OS.
    Os(ChaCha20Rng),
    /// Test mode: predictable masks and noise.
    Seeded(ChaCha20Rng),
}

impl MemberRandomness {
    fn inner(&mut self) -> &mut ChaCha20Rng {
        match self {
            MemberRandomness::Os(r) | MemberRandomness::Seeded(r) => r,
        }
    }
}

impl RngCore for MemberRandomness {
    fn next_u32(&mut self) -> u32 {
        self.inner().next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.inner().next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner().fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.inner().try_fill_bytes(dest)
    }
}

impl CryptoRng for MemberRandomness {}

impl MemberRng for MemberRandomness {
    fn round_started(&mut self, member: &str, round_seed: u64) {
        if let MemberRandomness::Seeded(r) = self {
            *r = ChaCha20Rng::seed_from_u64(crate::driver::member_seed(round_seed ^ SEEDED, member));
        }
    }
}
