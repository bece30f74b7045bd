//! A malicious aggregator against the real member daemon code. The test
//! plays the aggregator over real QUIC with the consortium's aggregator
//! certificate and the real codec (`fake_aggregator`), and the member runs
//! exactly as `tessera-client run` does, on its share of the WDBC data. For
//! each request a member must refuse (a split survivor view, an unmask
//! request with too few signatures, substituted keys, a cohort below a safe
//! threshold, a replayed round, a model with NaN or an impossible size) the
//! member sends nothing the request asked for,
//! declines the round where it had joined one, keeps serving later rounds,
//! and records the refusal both in its log and in its egress ledger.

use std::path::PathBuf;
use std::time::Duration;

use tessera_client::{ClientExit, EgressEntry, EgressLedger};
use tessera_core::{AggregatorMsg, ClientMsg, ModelParams, ModelPurpose, ParamLayout, RunId};
use tessera_e2e::fake_aggregator::{FakeAggregator, FakePeers, MemberLink, honest_setup, secure_settings};
use tessera_e2e::log_capture::{capture_logs, captured_logs};
use tessera_e2e::*;
use tessera_transport::pki;

const RUN: RunId = RunId([3; 16]);

struct Member {
    _dir: tempfile::TempDir,
    /// The consortium PKI (the fake aggregator issues its fake peers' certificates here).
    pki_dir: PathBuf,
    ledger: PathBuf,
    task: tokio::task::JoinHandle<anyhow::Result<ClientExit>>,
    link: MemberLink,
    fake: FakeAggregator,
}

/// Start the member `name` against a fresh fake aggregator and welcome it.
async fn member(name: &str) -> Member {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    pki::issue(&pki_dir, name).unwrap();
    let csv = write_member_csvs(dir.path(), &[name, "unused-1", "unused-2"]).remove(0);
    let mut fake = FakeAggregator::listen(&pki_dir);
    let cfg = client_config(dir.path(), &pki_dir, name, &csv, &fake.addr);
    let ledger = cfg.state.egress_ledger.clone();
    let task = tokio::spawn(run_member(cfg));
    let mut link = fake.accept().await;
    assert_eq!(link.member, name, "identity comes from the certificate");
    link.send(AggregatorMsg::Welcome { run_id: RUN, member: name.into() }).await;
    Member { _dir: dir, pki_dir, ledger, task, link, fake }
}

impl Member {
    /// Shut the run down; the member exits normally. Returns its ledger.
    async fn finish(self) -> Vec<EgressEntry> {
        self.link.shutdown().await;
        let exit = tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("member exits").unwrap();
        assert!(matches!(exit, Ok(ClientExit::Shutdown { .. })), "{exit:?}");
        drop(self.fake);
        EgressLedger::read(&self.ledger).unwrap()
    }
}

fn initial_model() -> ModelParams {
    tessera_tabular::initial_trainable_params(&wdbc_model()).unwrap()
}

fn cohort(names: &[&str]) -> Vec<String> {
    let mut c: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    c.sort();
    c
}

/// Start a well-formed secure round for `target` (party 0 of `cohort`).
async fn start_round(link: &mut MemberLink, round: u64, cohort: &[String], threshold: u32, model: &ModelParams) {
    let party = cohort.iter().position(|m| *m == link.member).unwrap() as u32;
    link.send(AggregatorMsg::RoundStart {
        round,
        settings: secure_settings(threshold),
        cohort: cohort.to_vec().into(),
        party,
    })
    .await;
    link.send_model(round, ModelPurpose::Train, model).await;
}

/// The refusals the member recorded for `round`, with their notes.
fn refusals(ledger: &[EgressEntry], round: Option<u64>) -> Vec<String> {
    ledger.iter().filter(|e| e.kind == "refusal" && e.round == round).filter_map(|e| e.note.clone()).collect()
}

/// The member's log holds a refusal line naming it and `reason`.
fn assert_logged(member: &str, reason: &str) {
    let logs = captured_logs();
    assert!(
        logs.lines().any(|l| l.contains("refused an aggregator request") && l.contains(member) && l.contains(reason)),
        "no refusal of {member} mentioning {reason:?} in the log"
    );
}

/// Drives `round` honestly up to the end of the member's masked stream and
/// the survivor set `[0, 1, 2]`; returns the fake peers.
async fn up_to_signed_set(m: &mut Member, round: u64, cohort: &[String], model: &ModelParams) -> FakePeers {
    let settings = secure_settings(3);
    start_round(&mut m.link, round, cohort, 3, model).await;
    let ClientMsg::AdvertiseKeys { advert, .. } = m.link.recv().await else { panic!("expected AdvertiseKeys") };
    let (mut peers, peer_adverts) = FakePeers::new(RUN, round, cohort, &settings, model, 0, &m.pki_dir);
    honest_setup(&mut m.link, &mut peers, round, 0, advert, peer_adverts).await;
    assert!(matches!(m.link.recv().await, ClientMsg::MaskedStart { .. }));
    loop {
        match m.link.recv().await {
            ClientMsg::MaskedChunk { .. } => continue,
            ClientMsg::MaskedEnd { .. } => break,
            other => panic!("unexpected {}", other.kind()),
        }
    }
    m.link.send(AggregatorMsg::SurvivorSet { round, survivors: vec![0, 1, 2].into() }).await;
    match m.link.recv().await {
        ClientMsg::SignSurvivors { round: r, .. } => assert_eq!(r, round),
        other => panic!("expected the member's signature, got {}", other.kind()),
    }
    peers
}

/// Split dropout views (issue #17, item 2): the aggregator shows the member
/// (and peer-1) a survivor set in which peer-2 survived, and shows peer-2's
/// other share holders a set in which it dropped, hoping to collect both of
/// peer-2's secrets. The member reveals only once `t` members of its
/// neighbourhood signed the very set it signed: peer-2's signature on the
/// other view does not verify, and withholding it leaves too few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refuses_a_split_survivor_view() {
    let name = "member-split";
    let mut m = member(name).await;
    let model = initial_model();
    let cohort = cohort(&[name, "peer-1", "peer-2"]);

    // Round 1: peer-2's genuine signature, but on the view where it dropped.
    let mut peers = up_to_signed_set(&mut m, 1, &cohort, &model).await;
    let signatures = vec![(1, peers.sign_survivors(1, &[0, 1, 2])), (2, peers.sign_survivors(2, &[0, 1]))];
    m.link.send(AggregatorMsg::UnmaskRequest { round: 1, signatures }).await;
    match m.link.recv().await {
        ClientMsg::Decline { round: 1, reason } => assert!(reason.contains("signature of party 2"), "{reason}"),
        other => panic!("expected a Decline, got {}", other.kind()),
    }
    assert!(m.link.recv_within(Duration::from_millis(500)).await.is_none(), "nothing may follow the refusal");

    // Round 2: the other view's signature withheld: 2 of t = 3 signed.
    let mut peers = up_to_signed_set(&mut m, 2, &cohort, &model).await;
    let signatures = vec![(1, peers.sign_survivors(1, &[0, 1, 2]))];
    m.link.send(AggregatorMsg::UnmaskRequest { round: 2, signatures }).await;
    match m.link.recv().await {
        ClientMsg::Decline { round: 2, reason } => assert!(reason.contains("only 2 members"), "{reason}"),
        other => panic!("expected a Decline, got {}", other.kind()),
    }

    // Round 3: every neighbour signed the member's set: it reveals.
    let mut peers = up_to_signed_set(&mut m, 3, &cohort, &model).await;
    let signatures = vec![(1, peers.sign_survivors(1, &[0, 1, 2])), (2, peers.sign_survivors(2, &[0, 1, 2]))];
    m.link.send(AggregatorMsg::UnmaskRequest { round: 3, signatures }).await;
    assert!(matches!(m.link.recv().await, ClientMsg::UnmaskShares { round: 3, .. }));

    let ledger = m.finish().await;
    let notes = refusals(&ledger, Some(1));
    assert!(notes.iter().any(|n| n.contains("survivor-set signature of party 2 does not verify")), "{notes:?}");
    let notes = refusals(&ledger, Some(2));
    assert!(notes.iter().any(|n| n.contains("only 2 members of this neighbourhood signed")), "{notes:?}");
    for round in [1, 2] {
        assert!(
            ledger.iter().filter(|e| e.round == Some(round)).all(|e| e.kind != "unmask_shares"),
            "round {round}: no share was revealed"
        );
    }
    assert!(ledger.iter().any(|e| e.kind == "unmask_shares" && e.round == Some(3)));
    assert_logged(name, "signature of party 2");
}

/// The aggregator substitutes key pairs it made for the target's
/// neighbours (issue #17, item 1): under a certificate from another CA, with
/// a valid certificate of another member at the wrong party index, and with
/// a neighbour's real certificate it cannot sign for. The real member daemon
/// refuses each before dealing a share, names the party and the reason, and
/// still takes part in an honest round afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refuses_substituted_neighbour_keys() {
    use tessera_e2e::fake_aggregator::sign_advert;
    let name = "member-keys";
    let mut m = member(name).await;
    let model = initial_model();
    let three = cohort(&[name, "peer-1", "peer-2"]);
    let settings = secure_settings(3);
    // A rogue CA with the same subject as the consortium's, and the key pair
    // the aggregator made for "peer-1" under it.
    let rogue = pki::MemoryPki::new("Tessera consortium").unwrap();
    let forged = rogue.issue("peer-1").unwrap();
    let mut forged_signer = tessera_client::EcdsaSigner::from_pkcs8(&forged.key).unwrap();

    for round in 1..=3u64 {
        start_round(&mut m.link, round, &three, 3, &model).await;
        assert!(matches!(m.link.recv().await, ClientMsg::AdvertiseKeys { .. }));
        let (_, mut adverts) = FakePeers::new(RUN, round, &three, &settings, &model, 0, &m.pki_dir);
        // The aggregator's own session for party 1 (fresh keys it controls).
        let ctx = tessera_protocol::round_context(
            RUN,
            round,
            &three,
            settings.secagg.as_ref().unwrap(),
            &settings.update_layout(&model.layout()),
        )
        .unwrap();
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(round + 100);
        let (session, keys) = tessera_secagg::ClientSession::new(ctx, 1, &mut rng).unwrap();
        adverts[0].1 = match round {
            // 1. Keys it made, under a certificate for "peer-1" from the rogue CA.
            1 => sign_advert(&session, keys, forged.cert.clone(), &mut forged_signer),
            // 2. peer-2's genuine, validly signed advertisement at peer-1's index.
            2 => adverts[1].1.clone(),
            // 3. Keys it made with peer-1's real certificate, signed by a key it holds.
            _ => sign_advert(&session, keys, adverts[0].1.certificate.clone(), &mut forged_signer),
        };
        let adverts = adverts.into_iter().map(|(p, a)| (p, a.into())).collect();
        m.link.send(AggregatorMsg::CohortKeys { round, adverts, reveals: Default::default() }).await;
        match m.link.recv().await {
            ClientMsg::Decline { round: r, reason } => {
                assert_eq!(r, round);
                assert!(reason.contains("advertisement of party 1"), "{reason}");
            }
            other => panic!("round {round}: expected a Decline, got {}", other.kind()),
        }
    }
    // An honest round afterwards: the member deals its shares.
    start_round(&mut m.link, 4, &three, 3, &model).await;
    let ClientMsg::AdvertiseKeys { round: 4, advert } = m.link.recv().await else { panic!("expected AdvertiseKeys") };
    let (mut peers, adverts) = FakePeers::new(RUN, 4, &three, &settings, &model, 0, &m.pki_dir);
    // honest_setup checks that the member deals its shares.
    honest_setup(&mut m.link, &mut peers, 4, 0, advert, adverts).await;

    let ledger = m.finish().await;
    let expect = [
        (1, "certificate is not issued by the consortium CA"),
        (2, "certificate is \"peer-2\"'s, but the cohort entry is \"peer-1\""),
        (3, "signature does not verify under the certificate's key"),
    ];
    for (round, reason) in expect {
        let notes = refusals(&ledger, Some(round));
        assert!(
            notes.iter().any(|n| n.contains("advertisement of party 1") && n.contains(reason)),
            "{round}: {notes:?}"
        );
        assert!(
            ledger.iter().filter(|e| e.round == Some(round)).all(|e| e.kind != "share_keys"),
            "round {round}: no share may leave after a refused advertisement"
        );
    }
    assert_logged(name, "advertisement of party 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refuses_cohorts_below_a_safe_threshold() {
    let name = "member-cohort";
    let mut m = member(name).await;
    let model = initial_model();
    let three = cohort(&[name, "peer-1", "peer-2"]);
    // A threshold above the cohort, a threshold of exactly two thirds (a
    // strict majority, yet an aggregator showing two dropout views to two
    // groups that each reach it with one colluder learns both secrets of a
    // member), and a cohort of one: each would let the aggregator unmask one
    // update.
    start_round(&mut m.link, 1, &three, 4, &model).await;
    start_round(&mut m.link, 2, &three, 2, &model).await;
    start_round(&mut m.link, 3, &cohort(&[name]), 1, &model).await;
    // A sound round afterwards. Before its keys the member may only have
    // declined the refused rounds.
    start_round(&mut m.link, 4, &three, 3, &model).await;
    loop {
        match m.link.recv().await {
            ClientMsg::Decline { round: 1..=3, .. } => continue,
            ClientMsg::AdvertiseKeys { round: 4, .. } => break,
            other => panic!("the member answered a refused round: {} {:?}", other.kind(), other.round()),
        }
    }
    let ledger = m.finish().await;
    assert!(refusals(&ledger, Some(1)).iter().any(|n| n.contains("threshold 4 is unsafe for a neighbourhood of 3")));
    assert!(refusals(&ledger, Some(2)).iter().any(|n| n.contains("threshold 2 is unsafe for a neighbourhood of 3")));
    assert!(refusals(&ledger, Some(3)).iter().any(|n| n.contains("1 members, policy minimum 2")));
    for r in 1..=3 {
        assert!(
            ledger.iter().filter(|e| e.round == Some(r)).all(|e| e.kind == "refusal" || e.kind == "decline"),
            "round {r}: only refusals and declines may be recorded"
        );
    }
    assert_logged(name, "threshold 4 is unsafe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refuses_replayed_rounds_even_after_reconnecting() {
    let name = "member-replay";
    let mut m = member(name).await;
    let model = initial_model();
    let three = cohort(&[name, "peer-1", "peer-2"]);
    start_round(&mut m.link, 5, &three, 3, &model).await;
    assert!(matches!(m.link.recv().await, ClientMsg::AdvertiseKeys { round: 5, .. }));
    // The same RoundStart again: the member abandons round 5 rather than
    // run it twice (a second set of keys for one round).
    start_round(&mut m.link, 5, &three, 3, &model).await;
    match m.link.recv().await {
        ClientMsg::Decline { round: 5, reason } => assert!(reason.contains("not newer than round 5"), "{reason}"),
        other => panic!("expected a Decline, got {}", other.kind()),
    }
    // An older round, on a new connection of the same run.
    drop(m.link);
    m.link = m.fake.accept().await;
    m.link.send(AggregatorMsg::Welcome { run_id: RUN, member: name.into() }).await;
    start_round(&mut m.link, 4, &three, 3, &model).await;
    start_round(&mut m.link, 6, &three, 3, &model).await;
    match m.link.recv().await {
        ClientMsg::AdvertiseKeys { round: 6, .. } => {}
        other => panic!("the member answered a replayed round: {} {:?}", other.kind(), other.round()),
    }
    // Round 6's training model a second time would re-key the member (a
    // second secure-aggregation session for one round): refused.
    m.link.send_model(6, ModelPurpose::Train, &model).await;
    if let Some(msg) = m.link.recv_within(Duration::from_millis(500)).await {
        assert!(!matches!(msg, ClientMsg::AdvertiseKeys { .. }), "a second key set for round 6");
    }
    let ledger = m.finish().await;
    assert_eq!(ledger.iter().filter(|e| e.kind == "advertise_keys" && e.round == Some(6)).count(), 1);
    assert!(refusals(&ledger, Some(6)).iter().any(|n| n.contains("second training model")), "{ledger:?}");
    assert!(refusals(&ledger, Some(5)).iter().any(|n| n.contains("round 5 is not newer than round 5")));
    assert!(refusals(&ledger, Some(4)).iter().any(|n| n.contains("round 4 is not newer than round 5")));
    assert_eq!(ledger.iter().filter(|e| e.kind == "advertise_keys" && e.round == Some(5)).count(), 1);
    assert!(ledger.iter().all(|e| e.round != Some(4) || e.kind == "refusal"));
    assert_logged(name, "not newer than round 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refuses_models_with_nan_or_an_impossible_size() {
    let name = "member-nan";
    let mut m = member(name).await;
    let model = initial_model();
    let three = cohort(&[name, "peer-1", "peer-2"]);
    let mut nan = model.clone();
    nan.tensors[0].data[3] = f32::NAN;
    let mut inf = model.clone();
    inf.tensors[1].data[0] = f32::INFINITY;
    // NaN in a model to train, with a digest that matches it.
    start_round(&mut m.link, 1, &three, 3, &nan).await;
    match m.link.recv().await {
        ClientMsg::Decline { round: 1, reason } => assert!(reason.contains("non-finite"), "{reason}"),
        other => panic!("expected a Decline, got {}", other.kind()),
    }
    // Infinity in a model to evaluate: no report.
    m.link.send_model(1, ModelPurpose::Evaluate, &inf).await;
    // A layout whose size does not fit in memory (or in a usize).
    for shape in [vec![1usize << 32, 1 << 32], vec![usize::MAX, 2], vec![1 << 40]] {
        m.link
            .send(AggregatorMsg::ModelStart {
                round: 1,
                purpose: ModelPurpose::Evaluate,
                layout: ParamLayout { entries: vec![("w".into(), shape)] },
            })
            .await;
    }
    start_round(&mut m.link, 2, &three, 3, &model).await;
    match m.link.recv().await {
        ClientMsg::AdvertiseKeys { round: 2, .. } => {}
        other => panic!("the member answered a refused model: {} {:?}", other.kind(), other.round()),
    }
    let ledger = m.finish().await;
    let notes = refusals(&ledger, Some(1));
    assert!(notes.iter().filter(|n| n.contains("non-finite value")).count() >= 2, "{notes:?}");
    assert!(notes.iter().filter(|n| n.contains("layout too large")).count() >= 3, "{notes:?}");
    assert!(ledger.iter().filter(|e| e.round == Some(1)).all(|e| e.kind == "refusal" || e.kind == "decline"));
    assert!(ledger.iter().all(|e| e.kind != "eval_report"));
    assert_logged(name, "non-finite value");
}
