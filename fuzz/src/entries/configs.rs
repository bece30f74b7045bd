//! The daemons' and the simulator's configuration files.

use super::*;

/// The three TOML loaders (`aggregator.toml`, `client.toml`, simulator
/// scenarios) on arbitrary text; an aggregator config that validates must
/// also give a coordinator that can start a round.
pub fn config(data: &[u8]) {
    let Some((&head, body)) = data.split_first() else { return };
    let f = scratch_file("config.toml", body);
    match head % 3 {
        0 => {
            if let Ok(cfg) = tessera_aggregator::AggregatorConfig::load(f.path()) {
                start_a_round(&cfg);
            }
        }
        1 => {
            let _ = tessera_client::ClientConfig::load(f.path());
        }
        _ => {
            let _ = tessera_sim::Scenario::load(f.path());
        }
    }
}

pub(super) fn start_a_round(cfg: &tessera_aggregator::AggregatorConfig) {
    use tessera_protocol::coordinator::{Coordinator, Resume};
    let Ok(policy) = cfg.admission_policy() else { return };
    let mut cc = tessera_aggregator::daemon::coordinator_config(cfg, RUN, 1, policy);
    // This entry checks that a round starts from a fuzzed config; the
    // members it connects send no Hello, so admission is not in the way.
    cc.admission = None;
    let Ok(mut c) = Coordinator::new(
        cc,
        tiny_model(0.0),
        None,
        Resume::default(),
        tessera_protocol::coordinator::CentralNoise::reproducible(0),
    ) else {
        return;
    };
    for (i, m) in cfg.server.members.iter().take(64).enumerate() {
        c.member_connected(i as u64, m);
    }
    c.tick(1 << 40);
    while c.poll_output().is_some() {}
}
