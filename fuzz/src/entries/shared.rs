//! What the protocol targets share: a tiny model, honest peers, and the member audit.

use super::*;

pub(super) const RUN: RunId = RunId([5; 16]);

/// A model small enough to stream in a few chunks of [`CHUNK`] values.
pub(super) fn tiny_model(bias: f32) -> ModelParams {
    ModelParams::new(vec![
        ParamTensor::new("w", vec![2, 3], vec![0.1 + bias, -0.2, 0.3, 0.0, 0.5, -0.6]).unwrap(),
        ParamTensor::new("b", vec![3], vec![0.0, bias, -bias]).unwrap(),
    ])
}

pub(super) const CHUNK: usize = 4;

pub(super) fn member_name(i: usize) -> String {
    format!("m{i}")
}

pub(super) fn train_settings() -> TrainSettings {
    TrainSettings {
        local_epochs: 1,
        batch_size: 8,
        learning_rate: 0.1,
        proximal_mu: 0.0,
        seed: 1,
        example_weight_cap: 100,
    }
}

/// Honest secure-aggregation sessions for every cohort member but one.
pub(super) struct HonestPeers {
    pub(super) sessions: Vec<(PartyId, tessera_secagg::ClientSession)>,
    pub(super) keys: Vec<(PartyId, PublicKeys)>,
    pub(super) rng: ChaCha20Rng,
}

impl HonestPeers {
    pub(super) fn new(round: u64, cohort: &[String], s: &SecAggSettings, len: u64, except: PartyId) -> Option<Self> {
        let mut rng = ChaCha20Rng::seed_from_u64(round);
        let mut sessions = Vec::new();
        let mut keys = Vec::new();
        for p in (0..cohort.len() as PartyId).filter(|p| *p != except) {
            let ctx = tessera_secagg::RoundContext::new(RUN, round, cohort, s.clone(), len).ok()?;
            let (session, k) = tessera_secagg::ClientSession::new(ctx, p, &mut rng).ok()?;
            sessions.push((p, session));
            keys.push((p, k));
        }
        Some(Self { sessions, keys, rng })
    }

    pub(super) fn shares_for(&mut self, target: PartyId, target_keys: PublicKeys) -> Vec<EncryptedShare> {
        let mut all = self.keys.clone();
        all.push((target, target_keys));
        let mut out = Vec::new();
        for (p, s) in &mut self.sessions {
            let theirs: Vec<_> = all.iter().filter(|(q, _)| q != p).copied().collect();
            if let Ok(shares) = s.on_cohort_keys(&theirs, &mut self.rng) {
                out.extend(shares.into_iter().filter(|sh| sh.to == target));
            }
        }
        out
    }
}

/// Security properties of what one member sends, checked message by message.
#[derive(Default)]
pub(super) struct MemberAudit {
    pub(super) advertised: BTreeSet<u64>,
    pub(super) masked_started: BTreeSet<u64>,
    pub(super) unmasked: BTreeSet<u64>,
}

impl MemberAudit {
    pub(super) fn check(&mut self, msg: &ClientMsg) {
        match msg {
            ClientMsg::PlainStart { .. } | ClientMsg::PlainChunk { .. } | ClientMsg::PlainEnd { .. } => {
                panic!("a member sent a plaintext update under the default policy")
            }
            ClientMsg::AdvertiseKeys { round, .. } => {
                assert!(self.advertised.insert(*round), "two key sets for round {round}")
            }
            ClientMsg::MaskedStart { round, .. } => {
                assert!(self.advertised.contains(round), "an update for round {round} without keys");
                assert!(self.masked_started.insert(*round), "two updates for round {round}");
            }
            ClientMsg::UnmaskShares { round, reveals } => {
                assert!(self.unmasked.insert(*round), "two unmask answers for round {round}");
                let mut peers = BTreeSet::new();
                for r in reveals {
                    let peer = match r {
                        ShareReveal::SelfMask { peer, .. } | ShareReveal::MaskKey { peer, .. } => *peer,
                    };
                    assert!(peers.insert(peer), "two secrets of party {peer} revealed");
                }
            }
            _ => {}
        }
    }
}

/// A file holding `bytes` in a fresh temporary directory.
pub(super) struct Scratch {
    _dir: tempfile::TempDir,
    pub(super) path: std::path::PathBuf,
}

impl Scratch {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

pub(super) fn scratch_file(name: &str, bytes: &[u8]) -> Scratch {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    Scratch { _dir: dir, path }
}
