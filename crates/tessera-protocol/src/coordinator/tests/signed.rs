//! Signed key advertisements against a malicious aggregator, on the real
//! `Participant`: the aggregator substitutes key pairs it made for the
//! target's neighbours (the attack of issue #17, item 1) and the member must
//! refuse before it deals a single share, naming the party and the reason.

use super::*;
use crate::member::test_pki::{KeySigner, TestPki};
use crate::member::{AdvertProblem, AdvertSigner, Output, Refusal};
use tessera_core::{Advertisement, PartyId, PublicKeys, RoundSettings, SecAggSettings};

const RUN: RunId = RunId([7; 16]);

fn settings() -> RoundSettings {
    RoundSettings {
        train: cfg(2, true).train,
        secagg: Some(SecAggSettings { threshold: 3, modulus_bits: 32, clip_range: 1.0, neighbours: None }),
        dp: None,
        eval: None,
        stats: None,
    }
}

fn cohort() -> Vec<String> {
    ["m0", "m1", "m2"].map(String::from).to_vec()
}

/// A cohort member's session for `round` as the aggregator (or an honest
/// peer) would run it, with the binding the target computes.
fn session(round: u64, party: PartyId, seed: u64) -> (tessera_secagg::ClientSession, PublicKeys) {
    let s = settings();
    let layout = s.update_layout(&initial().layout());
    let ctx = crate::derive::round_context(RUN, round, &cohort(), s.secagg.as_ref().unwrap(), &layout).unwrap();
    tessera_secagg::ClientSession::new(ctx, party, &mut ChaCha20Rng::seed_from_u64(seed)).unwrap()
}

fn advert(
    session: &tessera_secagg::ClientSession,
    keys: PublicKeys,
    cert: Vec<u8>,
    signer: &mut dyn AdvertSigner,
) -> Advertisement {
    let signature = signer.sign(&session.advert_message()).unwrap();
    Advertisement {
        keys,
        seed_commitment: session.seed_commitment(),
        graph_commitment: session.graph_commitment(),
        certificate: cert,
        signature,
    }
}

/// The honest graph draw: m0 (which advertised `own`) and the two peers get
/// the roster and reveal; returns every reveal, as `CohortKeys` carries them.
fn draw_graph(
    p: &mut Participant<ChaCha20Rng>,
    round: u64,
    own: &Advertisement,
    peers: [&mut tessera_secagg::ClientSession; 2],
) -> Vec<(PartyId, [u8; 32])> {
    let [s1, s2] = peers;
    let roster = vec![(0, own.graph_commitment), (1, s1.graph_commitment()), (2, s2.graph_commitment())];
    p.handle(AggregatorMsg::GraphRoster { round, commitments: roster.clone().into() }).unwrap();
    let reveal = std::iter::from_fn(|| p.poll_output())
        .find_map(|o| match o {
            Output::Send(ClientMsg::RevealGraphSeed { reveal, .. }) => Some(reveal),
            _ => None,
        })
        .expect("m0 reveals after the roster");
    vec![(0, reveal), (1, s1.on_roster(&roster).unwrap()), (2, s2.on_roster(&roster).unwrap())]
}

/// Member m0 with `identity`, welcomed into the test run.
fn welcomed(identity: crate::member::MemberIdentity) -> Participant<ChaCha20Rng> {
    let mut p = Participant::new("m0", Policy { chunk_values: 5, ..Policy::default() }, ChaCha20Rng::seed_from_u64(1))
        .with_identity(identity);
    p.handle(AggregatorMsg::Welcome { run_id: RUN, member: "m0".into() }).unwrap();
    p
}

/// Start `round` for m0 (party 0) and return the advertisement it sends.
fn start(p: &mut Participant<ChaCha20Rng>, round: u64) -> Advertisement {
    p.handle(AggregatorMsg::RoundStart { round, settings: settings(), cohort: cohort().into(), party: 0 }).unwrap();
    for m in model_messages(round, ModelPurpose::Train, &initial(), 5) {
        p.handle(m).unwrap();
    }
    let mut advert = None;
    while let Some(o) = p.poll_output() {
        if let Output::Send(ClientMsg::AdvertiseKeys { round: r, advert: a }) = o {
            assert_eq!(r, round);
            advert = Some(a);
        }
    }
    advert.expect("the member advertises its keys")
}

fn shares_sent(p: &mut Participant<ChaCha20Rng>) -> bool {
    std::iter::from_fn(|| p.poll_output()).any(|o| matches!(o, Output::Send(ClientMsg::ShareKeys { .. })))
}

/// The aggregator hands m0 key pairs it made itself for both neighbours, in
/// each way it could try to make them pass; m0 refuses every one with the
/// party and the reason, deals no share, and still accepts honest keys.
#[test]
fn member_refuses_substituted_neighbour_keys() {
    let pki = TestPki::new("consortium");
    let rogue = TestPki::new("consortium"); // same name, another key: a forged CA
    let (m1_cert, m1_key) = pki.issue("m1");
    let (m2_cert, m2_key) = pki.issue("m2");
    let (mut m1, mut m2) = (KeySigner(m1_key), KeySigner(m2_key));
    let mut p = welcomed(pki.identity("m0"));

    let refuse = |p: &mut Participant<ChaCha20Rng>, round, adverts: Vec<(u32, Advertisement)>| {
        let adverts = adverts.into_iter().map(|(party, a)| (party, a.into())).collect();
        let r = p.handle(AggregatorMsg::CohortKeys { round, adverts, reveals: Default::default() });
        assert!(!shares_sent(p), "round {round}: no share may be dealt after a refused advertisement");
        r.unwrap_err()
    };

    // 1. Keys the aggregator made, under a certificate for "m1" from another CA.
    let round = 1;
    start(&mut p, round);
    let (fake, fake_keys) = session(round, 1, 100);
    let (forged_cert, forged_key) = rogue.issue("m1");
    let (s2, k2) = session(round, 2, 2);
    let adverts = vec![
        (1, advert(&fake, fake_keys, forged_cert, &mut KeySigner(forged_key))),
        (2, advert(&s2, k2, m2_cert.clone(), &mut m2)),
    ];
    let err = refuse(&mut p, round, adverts);
    assert!(
        matches!(&err, Refusal::Advertisement { party: 1, problem: AdvertProblem::UntrustedCertificate(_) }),
        "{err:?}"
    );

    // 2. m2's genuine, validly signed advertisement placed at m1's index.
    let round = 2;
    start(&mut p, round);
    let (s2, k2) = session(round, 2, 2);
    let genuine_m2 = advert(&s2, k2, m2_cert.clone(), &mut m2);
    let err = refuse(&mut p, round, vec![(1, genuine_m2.clone()), (2, genuine_m2)]);
    assert_eq!(
        err,
        Refusal::Advertisement {
            party: 1,
            problem: AdvertProblem::WrongMember { expected: "m1".into(), found: "m2".into() }
        }
    );

    // 3. The aggregator's keys with m1's real certificate: it cannot sign for m1.
    let round = 3;
    start(&mut p, round);
    let (fake, fake_keys) = session(round, 1, 100);
    let (_, rogue_key) = rogue.issue("m1");
    let (s2, k2) = session(round, 2, 2);
    let adverts = vec![
        (1, advert(&fake, fake_keys, m1_cert.clone(), &mut KeySigner(rogue_key))),
        (2, advert(&s2, k2, m2_cert.clone(), &mut m2)),
    ];
    let err = refuse(&mut p, round, adverts);
    assert_eq!(err, Refusal::Advertisement { party: 1, problem: AdvertProblem::BadSignature });

    // 4. m1's genuine advertisement with its keys swapped for the aggregator's.
    let round = 4;
    start(&mut p, round);
    let (s1, k1) = session(round, 1, 1);
    let (_, fake_keys) = session(round, 1, 100);
    let (s2, k2) = session(round, 2, 2);
    let mut swapped = advert(&s1, k1, m1_cert.clone(), &mut m1);
    swapped.keys = fake_keys;
    let err = refuse(&mut p, round, vec![(1, swapped), (2, advert(&s2, k2, m2_cert.clone(), &mut m2))]);
    assert_eq!(err, Refusal::Advertisement { party: 1, problem: AdvertProblem::BadSignature });

    // 5. A signature replayed from another round does not verify in this one.
    let round = 5;
    start(&mut p, round);
    let (s2, k2) = session(round, 2, 2);
    let (old, old_keys) = session(4, 1, 1);
    let replayed = advert(&old, old_keys, m1_cert.clone(), &mut m1);
    let err = refuse(&mut p, round, vec![(1, replayed), (2, advert(&s2, k2, m2_cert.clone(), &mut m2))]);
    assert_eq!(err, Refusal::Advertisement { party: 1, problem: AdvertProblem::BadSignature });

    // The same member accepts the honest advertisements and deals its shares.
    let round = 6;
    let own = start(&mut p, round);
    let (mut s1, k1) = session(round, 1, 1);
    let (mut s2, k2) = session(round, 2, 2);
    let adverts = vec![(1, advert(&s1, k1, m1_cert, &mut m1).into()), (2, advert(&s2, k2, m2_cert, &mut m2).into())];
    let reveals = draw_graph(&mut p, round, &own, [&mut s1, &mut s2]);
    p.handle(AggregatorMsg::CohortKeys { round, adverts, reveals: reveals.into() }).unwrap();
    assert!(shares_sent(&mut p), "honest advertisements are accepted");
}

/// An expired or not-yet-valid certificate is refused: the member's clock
/// (an input, never read by the protocol crate) decides.
#[test]
fn member_checks_certificate_validity_at_its_clock() {
    let pki = TestPki::new("consortium");
    let (m1_cert, m1_key) = pki.issue("m1");
    let mut identity = pki.identity("m0");
    identity.clock = Box::new(|| 100 * 365 * 24 * 3600); // 2070: long after the certificates expired (2045)
    let mut p = welcomed(identity);
    start(&mut p, 1);
    let (s1, k1) = session(1, 1, 11);
    let (s2, k2) = session(1, 2, 12);
    let (m2_cert, m2_key) = pki.issue("m2");
    let adverts = vec![
        (1, advert(&s1, k1, m1_cert, &mut KeySigner(m1_key)).into()),
        (2, advert(&s2, k2, m2_cert, &mut KeySigner(m2_key)).into()),
    ];
    let err = p.handle(AggregatorMsg::CohortKeys { round: 1, adverts, reveals: Default::default() }).unwrap_err();
    assert!(
        matches!(&err, Refusal::Advertisement { party: 1, problem: AdvertProblem::UntrustedCertificate(e) } if e.contains("Expired")),
        "{err:?}"
    );
}

/// A member without a consortium identity refuses a secure round up front.
#[test]
fn member_without_identity_refuses_secure_rounds() {
    let mut p = Participant::new("m0", Policy::default(), ChaCha20Rng::seed_from_u64(1));
    p.handle(AggregatorMsg::Welcome { run_id: RUN, member: "m0".into() }).unwrap();
    let r = p.handle(AggregatorMsg::RoundStart { round: 1, settings: settings(), cohort: cohort().into(), party: 0 });
    assert_eq!(r, Err(Refusal::NoIdentity));
}

/// A ground graph seed (issue #17, item 7): an aggregator that wants
/// colluders next to m0 must fix the seed. It cannot leave m0's commitment
/// out of the roster or swap it, and it cannot replace a reveal after the
/// roster fixed the commitments (it would grind the seed that way): the
/// real `Participant` refuses each, names the party, and deals no share.
#[test]
fn member_refuses_a_ground_graph_seed() {
    let pki = TestPki::new("consortium");
    let (m1_cert, m1_key) = pki.issue("m1");
    let (m2_cert, m2_key) = pki.issue("m2");
    let (mut m1, mut m2) = (KeySigner(m1_key), KeySigner(m2_key));
    let mut p = welcomed(pki.identity("m0"));

    // A roster without m0, and one with m0's commitment swapped.
    for (round, swap) in [(1, false), (2, true)] {
        let own = start(&mut p, round);
        let (s1, _) = session(round, 1, 1);
        let (s2, _) = session(round, 2, 2);
        let mut roster = vec![(1, s1.graph_commitment()), (2, s2.graph_commitment())];
        if swap {
            roster.insert(0, (0, s1.graph_commitment()));
        }
        let err = p.handle(AggregatorMsg::GraphRoster { round, commitments: roster.into() }).unwrap_err();
        assert!(matches!(err, Refusal::SecAgg(tessera_secagg::SecAggError::BadRoster(_))), "{err:?}");
        assert!(
            std::iter::from_fn(|| p.poll_output())
                .all(|o| !matches!(o, Output::Send(ClientMsg::RevealGraphSeed { .. })))
        );
        assert_ne!(own.graph_commitment, [0; 32]);
    }

    // An honest roster, then a reveal replaced after it.
    let round = 3;
    let own = start(&mut p, round);
    let (mut s1, k1) = session(round, 1, 1);
    let (mut s2, k2) = session(round, 2, 2);
    let adverts = vec![(1, advert(&s1, k1, m1_cert, &mut m1).into()), (2, advert(&s2, k2, m2_cert, &mut m2).into())];
    let mut reveals = draw_graph(&mut p, round, &own, [&mut s1, &mut s2]);
    reveals[2].1[0] ^= 1;
    let err = p.handle(AggregatorMsg::CohortKeys { round, adverts, reveals: reveals.into() }).unwrap_err();
    assert_eq!(err, Refusal::SecAgg(tessera_secagg::SecAggError::GraphRevealMismatch(2)));
    assert!(!shares_sent(&mut p), "no share may be dealt on a ground seed");
}
