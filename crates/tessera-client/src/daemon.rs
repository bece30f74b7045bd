//! How the daemon assembles a member from its configuration, shared with
//! the end-to-end tests so they run exactly what `tessera-client run` runs.

use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_learn::TabularData;
use tessera_privacy::PrivacyBudget;
use tessera_transport::{Dialer, QuicDialConfig};

use crate::config::ClientConfig;
use crate::driver::{ClientExit, ClientOptions};
use crate::egress::EgressLedger;
use crate::participant::{Participant, Policy};
use crate::privacy::LedgerGuard;
use crate::tabular::TabularModel;

/// The member's protocol state machine with its policy, its own privacy
/// budget (when configured) and its randomness.
pub fn participant(cfg: &ClientConfig) -> anyhow::Result<Participant<ChaCha20Rng>> {
    let rng = if cfg.testing.seeded_randomness {
        tracing::warn!(member = %cfg.member, "TEST MODE: seeded randomness; masks and noise are predictable");
        ChaCha20Rng::seed_from_u64(crate::driver::member_seed(0x7e55_e7a0, &cfg.member))
    } else {
        ChaCha20Rng::from_entropy()
    };
    let mut p = Participant::new(cfg.member.clone(), Policy::default(), rng);
    if cfg.testing.seeded_randomness {
        p = p.with_round_reseed(|member, seed| {
            ChaCha20Rng::seed_from_u64(crate::driver::member_seed(seed ^ 0x7e55_e7a0, member))
        });
    }
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

/// Load the member's data and build its model (data stays in this process).
pub fn tabular_model(cfg: &ClientConfig) -> anyhow::Result<TabularModel> {
    let data = TabularData::load(&cfg.data.path, &cfg.data.spec(), &cfg.data.split())?;
    tracing::info!(
        member = %cfg.member,
        train = data.train.len(),
        test = data.test.len(),
        "local data loaded (it never leaves this site)"
    );
    Ok(TabularModel::new(data, &cfg.model, cfg.backend.into())?.with_seeded_noise(cfg.testing.seeded_randomness))
}

/// Everything `tessera-client run` does: load the data, open the ledgers,
/// dial the aggregator over QUIC + mTLS and take part until the run ends.
pub async fn run_daemon(cfg: &ClientConfig, opts: ClientOptions) -> anyhow::Result<ClientExit> {
    let model = tabular_model(cfg)?;
    let mut dial =
        QuicDialConfig::new(&cfg.aggregator.address, &cfg.aggregator.ca, &cfg.aggregator.cert, &cfg.aggregator.key)?;
    dial.server_name = cfg.aggregator.server_name.clone();
    let mut egress = EgressLedger::open(&cfg.state.egress_ledger)?;
    let mut p = participant(cfg)?;
    let model = Arc::new(Mutex::new(model));
    Ok(crate::driver::run(Dialer::Quic(Arc::new(dial)), &mut p, model, &mut egress, opts).await?)
}
