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
        secagg: Some(SecAggSettings {
            threshold,
            modulus_bits: 32,
            clip_range: 1.0,
            neighbours: None,
            graph_seed: [9; 32],
        }),
        dp: None,
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
    Advertisement { keys, seed_commitment: session.seed_commitment(), certificate, signature }
}

/// Honest secure-aggregation sessions for the cohort members the fake
/// aggregator plays itself (every party but `target`).
pub struct FakePeers {
    sessions: Vec<(PartyId, tessera_secagg::ClientSession)>,
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
        let mut sessions = Vec::new();
        let mut keys = Vec::new();
        for p in (0..cohort.len() as PartyId).filter(|p| *p != target) {
            let ctx = tessera_secagg::RoundContext::new(run_id, round, cohort, s.clone(), len).unwrap();
            let (session, k) = tessera_secagg::ClientSession::new(ctx, p, &mut rng).unwrap();
            // Each fake peer signs with its own consortium certificate, as a real member does.
            let (cert, mut signer) = member_signer(pki_dir, &cohort[p as usize]);
            keys.push((p, sign_advert(&session, k, cert, &mut signer)));
            sessions.push((p, session));
        }
        (Self { sessions, rng }, keys)
    }

    /// Feed everyone's keys to the fake peers; returns the share ciphertexts
    /// they address to `target`.
    pub fn shares_for(&mut self, target: PartyId, all_keys: &[(PartyId, Advertisement)]) -> Vec<EncryptedShare> {
        let mut out = Vec::new();
        for (p, s) in &mut self.sessions {
            let theirs: Vec<_> = all_keys.iter().filter(|(q, _)| q != p).map(|(q, a)| (*q, a.keys)).collect();
            let shares = s.on_cohort_keys(&theirs, &mut self.rng).unwrap();
            out.extend(shares.into_iter().filter(|sh| sh.to == target));
        }
        out
    }
}
