//! A scripted, possibly malicious aggregator for testing the member's side
//! end to end: it listens with the consortium's real aggregator certificate,
//! speaks through the real codec and QUIC transport, and lets a test send any
//! `AggregatorMsg` sequence to a real member daemon. It can also play other
//! cohort members' secure-aggregation sessions, so that the member under
//! test gets far enough into a round to be asked for something it must refuse.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::{
    Advertisement, AggregatorMsg, ClientMsg, EncryptedShare, Limits, ModelParams, ModelPurpose, PartyId, PublicKeys,
    RoundSettings, RunId, SecAggSettings, TrainSettings, encode_frame, model_messages,
};
use tessera_protocol::member::AdvertSigner;
use tessera_transport::{AdmitAll, FrameReceiver, FrameSender, Listener, QuicListenerConfig};

/// The listening side; accept one member at a time.
pub struct FakeAggregator {
    listener: Listener,
    pub addr: String,
}

impl FakeAggregator {
    /// Listen on loopback with the aggregator certificate in `pki_dir`.
    /// Admission is open: the member under test is who the script says.
    pub fn listen(pki_dir: &Path) -> Self {
        let cfg = QuicListenerConfig::from_pki_dir(pki_dir, "127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = cfg.listen(Arc::new(AdmitAll)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        Self { listener, addr }
    }

    /// Wait for the member's connection and its `Hello`.
    pub async fn accept(&mut self) -> MemberLink {
        let (peer, conn) = tokio::time::timeout(Duration::from_secs(60), self.listener.accept())
            .await
            .expect("the member connects")
            .expect("listener open");
        let (tx, rx) = conn.split();
        let mut link = MemberLink { member: peer.member, tx, rx, limits: Limits::default() };
        match link.recv().await {
            ClientMsg::Hello { .. } => {}
            other => panic!("expected Hello, got {}", other.kind()),
        }
        link
    }
}

/// One member's connection, seen from the (fake) aggregator.
pub struct MemberLink {
    pub member: String,
    tx: FrameSender,
    rx: FrameReceiver,
    limits: Limits,
}

impl MemberLink {
    pub async fn send(&mut self, msg: AggregatorMsg) {
        let frame = encode_frame(&msg, &self.limits).unwrap();
        self.tx.send(frame).await.expect("member connection open");
    }

    pub async fn send_model(&mut self, round: u64, purpose: ModelPurpose, model: &ModelParams) {
        for m in model_messages(round, purpose, model, self.limits.chunk_values) {
            self.send(m).await;
        }
    }

    /// Next message from the member (panics after 60 s or on close).
    pub async fn recv(&mut self) -> ClientMsg {
        let frame = tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
            .await
            .expect("the member answers within 60 s")
            .expect("connection open")
            .expect("member did not close");
        frame.decode().expect("member sends decodable frames")
    }

    /// Next message, or `None` if nothing arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<ClientMsg> {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Ok(Some(frame))) => Some(frame.decode().expect("decodable")),
            _ => None,
        }
    }

    /// End the run for the member and wait until it has read everything.
    pub async fn shutdown(mut self) {
        self.send(AggregatorMsg::Shutdown { reason: "test over".into() }).await;
        let _ = self.tx.finish().await;
    }
}

/// Settings of a securely aggregated round over `cohort_size` members with
/// the given threshold (complete graph).
pub fn secure_settings(threshold: u32) -> RoundSettings {
    RoundSettings {
        train: TrainSettings {
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 0.05,
            proximal_mu: 0.0,
            seed: 5,
            example_weight_cap: 200,
        },
        secagg: Some(SecAggSettings { threshold, modulus_bits: 32, clip_range: 1.0, neighbours: None }),
        dp: None,
        eval: None,
        stats: None,
    }
}

/// A member's certificate (DER) and signer from the PKI in `pki_dir`,
/// issuing the certificate first if the member has none yet.
pub fn member_signer(pki_dir: &Path, name: &str) -> (Vec<u8>, tessera_client::EcdsaSigner) {
    let files = tessera_transport::pki::member_files(pki_dir, name);
    if !files.cert.exists() {
        tessera_transport::pki::issue(pki_dir, name).unwrap();
    }
    let cert = tessera_transport::pki::load_certs(&files.cert).unwrap().remove(0).to_vec();
    let key = match tessera_transport::pki::load_key(&files.key).unwrap() {
        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => panic!("pki issue writes PKCS#8 keys"),
    };
    (cert, tessera_client::EcdsaSigner::from_pkcs8(&key).unwrap())
}

/// The advertisement `session` sends, signed by `signer` with `certificate`.
pub fn sign_advert(
    session: &tessera_secagg::ClientSession,
    keys: PublicKeys,
    certificate: Vec<u8>,
    signer: &mut dyn AdvertSigner,
) -> Advertisement {
    let signature = signer.sign(&session.advert_message()).unwrap();
    Advertisement {
        keys,
        seed_commitment: session.seed_commitment(),
        graph_commitment: session.graph_commitment(),
        certificate,
        signature,
    }
}

/// Honest secure-aggregation sessions for the cohort members the fake
/// aggregator plays itself (every party but `target`), with their
/// consortium signers.
pub struct FakePeers {
    sessions: Vec<(PartyId, tessera_secagg::ClientSession)>,
    signers: Vec<(PartyId, tessera_client::EcdsaSigner)>,
    binding: [u8; 32],
    rng: ChaCha20Rng,
}

impl FakePeers {
    pub fn new(
        run_id: RunId,
        round: u64,
        cohort: &[String],
        settings: &RoundSettings,
        model: &ModelParams,
        target: PartyId,
        pki_dir: &Path,
    ) -> (Self, Vec<(PartyId, Advertisement)>) {
        let mut rng = ChaCha20Rng::seed_from_u64(round);
        let s = settings.secagg.clone().expect("secure round");
        let len = tessera_secagg::vector_len(&model.layout());
        let ctx = tessera_secagg::RoundContext::new(run_id, round, cohort, s, len).unwrap();
        let binding = *ctx.binding();
        let mut sessions = Vec::new();
        let mut signers = Vec::new();
        let mut keys = Vec::new();
        for p in (0..cohort.len() as PartyId).filter(|p| *p != target) {
            let (session, k) = tessera_secagg::ClientSession::new(ctx.clone(), p, &mut rng).unwrap();
            // Each fake peer signs with its own consortium certificate, as a real member does.
            let (cert, mut signer) = member_signer(pki_dir, &cohort[p as usize]);
            keys.push((p, sign_advert(&session, k, cert, &mut signer)));
            sessions.push((p, session));
            signers.push((p, signer));
        }
        (Self { sessions, signers, binding, rng }, keys)
    }

    /// The honest `GraphRoster`: every advertised graph commitment, sorted.
    pub fn roster(&self, target: PartyId, target_advert: &Advertisement) -> Vec<(PartyId, [u8; 32])> {
        let mut roster: Vec<_> = self.sessions.iter().map(|(p, s)| (*p, s.graph_commitment())).collect();
        roster.push((target, target_advert.graph_commitment));
        roster.sort();
        roster
    }

    /// Every reveal for `roster`: the peers' own and the target's.
    pub fn reveals(
        &mut self,
        roster: &[(PartyId, [u8; 32])],
        target: PartyId,
        target_reveal: [u8; 32],
    ) -> Vec<(PartyId, [u8; 32])> {
        let mut out: Vec<_> = self.sessions.iter_mut().map(|(p, s)| (*p, s.on_roster(roster).unwrap())).collect();
        out.push((target, target_reveal));
        out.sort();
        out
    }

    /// Feed everyone's keys and the reveals to the fake peers; returns the
    /// share ciphertexts they address to `target`.
    pub fn shares_for(
        &mut self,
        target: PartyId,
        all_keys: &[(PartyId, Advertisement)],
        reveals: &[(PartyId, [u8; 32])],
    ) -> Vec<EncryptedShare> {
        let mut out = Vec::new();
        for (p, s) in &mut self.sessions {
            let theirs: Vec<_> =
                all_keys.iter().filter(|(q, _)| q != p).map(|(q, a)| (*q, a.keys, a.graph_commitment)).collect();
            let shares = s.on_cohort_keys(&theirs, reveals, &mut self.rng).unwrap();
            out.extend(shares.into_iter().filter(|sh| sh.to == target));
        }
        out
    }

    /// Peer `party`'s genuine signature on `survivors`.
    pub fn sign_survivors(&mut self, party: PartyId, survivors: &[PartyId]) -> Vec<u8> {
        let message = tessera_secagg::survivor_message(&self.binding, survivors);
        let (_, signer) = self.signers.iter_mut().find(|(p, _)| *p == party).expect("a fake peer");
        signer.sign(&message).unwrap()
    }
}

/// Plays an honest aggregator and the fake peers through the setup of a
/// secure round (roster, reveals, keys, shares) for the member behind
/// `link`, which advertised `advert` as party `target`. Afterwards the
/// member streams its masked input.
pub async fn honest_setup(
    link: &mut MemberLink,
    peers: &mut FakePeers,
    round: u64,
    target: PartyId,
    advert: Advertisement,
    peer_adverts: Vec<(PartyId, Advertisement)>,
) {
    let roster = peers.roster(target, &advert);
    link.send(AggregatorMsg::GraphRoster { round, commitments: roster.clone().into() }).await;
    let ClientMsg::RevealGraphSeed { round: r, reveal } = link.recv().await else { panic!("expected a reveal") };
    assert_eq!(r, round);
    let reveals = peers.reveals(&roster, target, reveal);
    let adverts = peer_adverts.iter().map(|(p, a)| (*p, a.clone().into())).collect();
    link.send(AggregatorMsg::CohortKeys { round, adverts, reveals: reveals.clone().into() }).await;
    let ClientMsg::ShareKeys { round: r, .. } = link.recv().await else { panic!("expected ShareKeys") };
    assert_eq!(r, round);
    let mut all = vec![(target, advert)];
    all.extend(peer_adverts);
    let forwarded = peers.shares_for(target, &all, &reveals);
    link.send(AggregatorMsg::ForwardShares { round, shares: forwarded }).await;
}
