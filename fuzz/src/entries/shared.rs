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

/// One in-memory consortium PKI for every fuzz input (issuing certificates
/// per input would dominate the run time): members m0..m7 and a CA.
fn fuzz_pki() -> &'static (Vec<u8>, BTreeMap<String, tessera_transport::pki::MemberCredentials>) {
    static PKI: std::sync::OnceLock<(Vec<u8>, BTreeMap<String, tessera_transport::pki::MemberCredentials>)> =
        std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let pki = tessera_transport::pki::MemoryPki::new("fuzz consortium").unwrap();
        let creds = (0..8).map(member_name).map(|n| (n.clone(), pki.issue(&n).unwrap())).collect();
        (pki.ca_cert().to_vec(), creds)
    })
}

/// The identity member `name` signs and checks advertisements with.
pub(super) fn identity(name: &str) -> tessera_protocol::member::MemberIdentity {
    let (ca, creds) = fuzz_pki();
    let c = &creds[name];
    tessera_client::member_identity(c.cert.clone(), &c.key, ca.clone()).unwrap()
}

/// `session`'s advertisement, signed as member `name` does.
pub(super) fn signed_advert(session: &tessera_secagg::ClientSession, keys: PublicKeys, name: &str) -> Advertisement {
    use tessera_protocol::member::AdvertSigner;
    let (_, creds) = fuzz_pki();
    let c = &creds[name];
    let mut signer = tessera_client::EcdsaSigner::from_pkcs8(&c.key).unwrap();
    let signature = signer.sign(&session.advert_message()).unwrap();
    Advertisement {
        keys,
        seed_commitment: session.seed_commitment(),
        graph_commitment: session.graph_commitment(),
        certificate: c.cert.clone(),
        signature,
    }
}

/// An advertisement with the given keys and no valid certificate or signature.
pub(super) fn junk_advert(keys: PublicKeys) -> Advertisement {
    Advertisement {
        keys,
        seed_commitment: [0; 32],
        graph_commitment: [0; 32],
        certificate: Vec::new(),
        signature: Vec::new(),
    }
}

/// Honest secure-aggregation sessions for every cohort member but one.
pub(super) struct HonestPeers {
    pub(super) sessions: Vec<(PartyId, tessera_secagg::ClientSession)>,
    pub(super) keys: Vec<(PartyId, Advertisement)>,
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
            keys.push((p, signed_advert(&session, k, &cohort[p as usize])));
            sessions.push((p, session));
        }
        Some(Self { sessions, keys, rng })
    }

    /// The honest roster: every peer's graph commitment and the target's.
    pub(super) fn roster(&self, target: PartyId, target_advert: &Advertisement) -> Vec<(PartyId, [u8; 32])> {
        let mut roster: Vec<_> = self.keys.iter().map(|(p, a)| (*p, a.graph_commitment)).collect();
        roster.push((target, target_advert.graph_commitment));
        roster.sort();
        roster
    }

    /// Every reveal for `roster` (the peers' and the target's); a peer that
    /// refuses the roster reveals nothing.
    pub(super) fn reveals(
        &mut self,
        roster: &[(PartyId, [u8; 32])],
        target: PartyId,
        target_reveal: [u8; 32],
    ) -> Vec<(PartyId, [u8; 32])> {
        let mut out: Vec<_> =
            self.sessions.iter_mut().filter_map(|(p, s)| s.on_roster(roster).ok().map(|r| (*p, r))).collect();
        out.push((target, target_reveal));
        out.sort();
        out
    }

    pub(super) fn shares_for(
        &mut self,
        target: PartyId,
        target_advert: &Advertisement,
        reveals: &[(PartyId, [u8; 32])],
    ) -> Vec<EncryptedShare> {
        let mut all: Vec<(PartyId, PublicKeys, [u8; 32])> =
            self.keys.iter().map(|(p, a)| (*p, a.keys, a.graph_commitment)).collect();
        all.push((target, target_advert.keys, target_advert.graph_commitment));
        let mut out = Vec::new();
        for (p, s) in &mut self.sessions {
            let theirs: Vec<_> = all.iter().filter(|(q, _, _)| q != p).copied().collect();
            if let Ok(shares) = s.on_cohort_keys(&theirs, reveals, &mut self.rng) {
                out.extend(shares.into_iter().filter(|sh| sh.to == target));
            }
        }
        out
    }

    /// Peer `party`'s genuine signature on `survivors`, if it is a peer.
    pub(super) fn sign(&mut self, party: PartyId, survivors: &[PartyId]) -> Option<(PartyId, Vec<u8>)> {
        use tessera_protocol::member::AdvertSigner;
        let (_, s) = self.sessions.iter().find(|(p, _)| *p == party)?;
        let message = tessera_secagg::survivor_message(s.context().binding(), survivors);
        let (_, creds) = fuzz_pki();
        let name = member_name(party as usize);
        let mut signer = tessera_client::EcdsaSigner::from_pkcs8(&creds.get(&name)?.key).ok()?;
        Some((party, signer.sign(&message).ok()?))
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
