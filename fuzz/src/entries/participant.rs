//! The member's state machine fed an arbitrary aggregator.

use super::*;

#[derive(Arbitrary, Debug)]
pub(super) enum ModelFault {
    None,
    Nan,
    BadDigest,
    Reorder,
    DropChunk,
    ExtraValues,
    HugeLayout(Vec<u64>),
    OtherRound,
}

#[derive(Arbitrary, Debug)]
pub(super) enum TrainResult {
    Ok(u16),
    Err,
    NonFinite,
    OtherLayout,
}

#[derive(Arbitrary, Debug)]
pub(super) enum ToMember {
    Welcome,
    RoundStart {
        round: u8,
        cohort: u8,
        party: u8,
        threshold: u8,
        bits: u8,
        clip: f32,
        neighbours: Option<u8>,
        secure: bool,
        unsorted: bool,
    },
    Model {
        round: u8,
        evaluate: bool,
        fault: ModelFault,
    },
    Roster {
        round: u8,
        honest: bool,
        junk: Vec<(u8, [u8; 32])>,
    },
    CohortKeys {
        round: u8,
        honest: bool,
        junk: Vec<(u8, [u8; 32], [u8; 32])>,
    },
    ForwardShares {
        round: u8,
        honest: bool,
        flip: Option<(u8, u8)>,
        junk: Vec<(u8, u8, Vec<u8>)>,
    },
    SurvivorSet {
        round: u8,
        survivors: Vec<u8>,
        everyone: bool,
    },
    Unmask {
        round: u8,
        signers: Vec<u8>,
        everyone: bool,
    },
    Trained {
        round: u8,
        result: TrainResult,
    },
    Evaluated {
        round: u8,
        ok: bool,
    },
    RoundEnd {
        round: u8,
        accepted: bool,
    },
    Shutdown,
    Raw(Vec<u8>),
    /// A well-formed secure round (cohort of 3, this member party 1) carried
    /// out step by step, stopping before step `upto % 10`, so that deep
    /// states are one input away.
    HonestRound {
        round: u8,
        upto: u8,
    },
}

/// The steps of [`ToMember::HonestRound`], in order.
pub(super) fn honest_round(round: u8, upto: u8) -> Vec<ToMember> {
    let steps = vec![
        ToMember::Welcome,
        ToMember::RoundStart {
            round,
            cohort: 2,
            party: 1,
            threshold: 3,
            bits: 32,
            clip: 1.0,
            neighbours: None,
            secure: true,
            unsorted: false,
        },
        ToMember::Model { round, evaluate: false, fault: ModelFault::None },
        ToMember::Roster { round, honest: true, junk: vec![] },
        ToMember::CohortKeys { round, honest: true, junk: vec![] },
        ToMember::ForwardShares { round, honest: true, flip: None, junk: vec![] },
        ToMember::Trained { round, result: TrainResult::Ok(50) },
        ToMember::SurvivorSet { round, survivors: vec![], everyone: true },
        ToMember::Unmask { round, signers: vec![], everyone: true },
    ];
    steps.into_iter().take(usize::from(upto % 10)).collect()
}

/// What the fake aggregator remembers of the round it started last.
pub(super) struct Script {
    round: u64,
    cohort: Vec<String>,
    party: PartyId,
    peers: Option<HonestPeers>,
    member_advert: Option<Advertisement>,
    member_reveal: Option<[u8; 32]>,
    /// Every reveal, once the honest roster went out and the member revealed.
    reveals: Vec<(PartyId, [u8; 32])>,
    survivors: Vec<PartyId>,
}

/// The member's state machine fed an arbitrary sequence of aggregator
/// messages and local-work results, mostly well-formed so that it reaches
/// every step of a round, with faults where the input says.
pub fn participant(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let me = "m1";
    let policy = tessera_protocol::Policy { chunk_values: CHUNK, max_model_values: 1 << 16, ..Default::default() };
    let mut p =
        tessera_protocol::Participant::new(me, policy, ChaCha20Rng::seed_from_u64(7)).with_identity(identity(me));
    let mut audit = MemberAudit::default();
    let mut script: Option<Script> = None;
    p.hello();
    drain_member(&mut p, &mut audit, &mut script);
    let mut pending: std::collections::VecDeque<ToMember> = Default::default();
    for _ in 0..96 {
        let op = match pending.pop_front() {
            Some(op) => op,
            None => match ToMember::arbitrary(&mut u) {
                Ok(ToMember::HonestRound { round, upto }) => {
                    pending.extend(honest_round(round, upto));
                    continue;
                }
                Ok(op) => op,
                Err(_) => break,
            },
        };
        let msgs: Vec<AggregatorMsg> = match op {
            ToMember::HonestRound { .. } => unreachable!("expanded above"),
            // One run only: round numbers restart in a new run, which would
            // make the per-round assertions ambiguous.
            ToMember::Welcome => vec![AggregatorMsg::Welcome { run_id: RUN, member: me.into() }],
            ToMember::RoundStart { round, cohort, party, threshold, bits, clip, neighbours, secure, unsorted } => {
                let n = usize::from(cohort % 6) + 1;
                let mut names: Vec<String> = (0..n).map(member_name).collect();
                if unsorted {
                    names.reverse();
                }
                let settings = RoundSettings {
                    train: train_settings(),
                    secagg: secure.then(|| SecAggSettings {
                        threshold: u32::from(threshold % 8),
                        modulus_bits: u32::from(bits % 40),
                        clip_range: clip,
                        neighbours: neighbours.map(|k| u32::from(k % 6)),
                    }),
                    dp: None,
                    eval: None,
                    stats: None,
                };
                let party = PartyId::from(party % 7);
                let round = u64::from(round);
                let len = tessera_secagg::vector_len(&tiny_model(0.0).layout());
                let peers = settings.secagg.as_ref().and_then(|s| HonestPeers::new(round, &names, s, len, party));
                let msg = AggregatorMsg::RoundStart { round, settings, cohort: names.clone().into(), party };
                script = Some(Script {
                    round,
                    cohort: names,
                    party,
                    peers,
                    member_advert: None,
                    member_reveal: None,
                    reveals: Vec::new(),
                    survivors: Vec::new(),
                });
                vec![msg]
            }
            ToMember::Model { round, evaluate, fault } => model_stream(u64::from(round), evaluate, fault),
            ToMember::Roster { round, honest, junk } => {
                let commitments = match (&script, honest) {
                    (Some(s), true) => match (&s.peers, &s.member_advert) {
                        (Some(peers), Some(a)) => peers.roster(s.party, a),
                        _ => Vec::new(),
                    },
                    _ => junk.into_iter().map(|(p, c)| (PartyId::from(p % 8), c)).collect(),
                };
                vec![AggregatorMsg::GraphRoster { round: u64::from(round), commitments: commitments.into() }]
            }
            ToMember::CohortKeys { round, honest, junk } => {
                let (adverts, reveals) = match (&mut script, honest) {
                    (Some(s), true) => {
                        if let (Some(peers), Some(a), Some(r)) = (&mut s.peers, &s.member_advert, s.member_reveal) {
                            s.reveals = peers.reveals(&peers.roster(s.party, a), s.party, r);
                        }
                        (s.peers.as_ref().map(|p| p.keys.clone()).unwrap_or_default(), s.reveals.clone())
                    }
                    _ => (
                        junk.iter()
                            .map(|(p, a, b)| {
                                (PartyId::from(p % 8), junk_advert(PublicKeys { cipher_pk: *a, mask_pk: *b }))
                            })
                            .collect(),
                        junk.iter().map(|(p, a, _)| (PartyId::from(p % 8), *a)).collect(),
                    ),
                };
                let adverts = adverts.into_iter().map(|(p, a): (PartyId, Advertisement)| (p, a.into())).collect();
                vec![AggregatorMsg::CohortKeys { round: u64::from(round), adverts, reveals: reveals.into() }]
            }
            ToMember::ForwardShares { round, honest, flip, junk } => {
                let mut shares = match (&mut script, honest) {
                    (Some(s), true) => match (&mut s.peers, &s.member_advert) {
                        (Some(peers), Some(a)) => peers.shares_for(s.party, a, &s.reveals),
                        _ => Vec::new(),
                    },
                    _ => junk
                        .into_iter()
                        .map(|(f, t, c)| EncryptedShare {
                            from: PartyId::from(f % 8),
                            to: PartyId::from(t % 8),
                            ciphertext: c,
                        })
                        .collect(),
                };
                if let Some((i, bit)) = flip
                    && !shares.is_empty()
                {
                    let n = shares.len();
                    let s = &mut shares[usize::from(i) % n];
                    if !s.ciphertext.is_empty() {
                        let at = usize::from(bit) % s.ciphertext.len();
                        s.ciphertext[at] ^= 1 << (bit % 8);
                    }
                }
                vec![AggregatorMsg::ForwardShares { round: u64::from(round), shares }]
            }
            ToMember::SurvivorSet { round, survivors, everyone } => {
                let survivors: Vec<PartyId> = match (&script, everyone) {
                    (Some(s), true) => (0..s.cohort.len() as PartyId).collect(),
                    _ => survivors.into_iter().map(|p| PartyId::from(p % 8)).collect(),
                };
                if let Some(s) = script.as_mut() {
                    s.survivors = survivors.clone();
                }
                vec![AggregatorMsg::SurvivorSet { round: u64::from(round), survivors: survivors.into() }]
            }
            ToMember::Unmask { round, signers, everyone } => {
                let signatures = match &mut script {
                    Some(s) => {
                        let signers: Vec<PartyId> = if everyone {
                            (0..s.cohort.len() as PartyId).filter(|p| *p != s.party).collect()
                        } else {
                            signers.into_iter().map(|p| PartyId::from(p % 8)).collect()
                        };
                        let survivors = s.survivors.clone();
                        match &mut s.peers {
                            Some(peers) => signers.into_iter().filter_map(|p| peers.sign(p, &survivors)).collect(),
                            None => Vec::new(),
                        }
                    }
                    None => Vec::new(),
                };
                vec![AggregatorMsg::UnmaskRequest { round: u64::from(round), signatures }]
            }
            ToMember::Trained { round, result } => {
                let base = tiny_model(0.0);
                let update = match result {
                    TrainResult::Ok(n) => Ok(trained(&base, 0.05, u64::from(n))),
                    TrainResult::Err => Err(tessera_protocol::member::LocalFailure::new("training failed")),
                    TrainResult::NonFinite => Ok(trained(&base, f32::NAN, 10)),
                    TrainResult::OtherLayout => Ok(tessera_protocol::TrainedUpdate {
                        params: ModelParams::new(vec![ParamTensor::new("x", vec![1], vec![1.0]).unwrap()]),
                        num_examples: 3,
                        mean_loss: 0.5,
                    }),
                };
                p.training_done(u64::from(round), update);
                vec![]
            }
            ToMember::Evaluated { round, ok } => {
                let m = if ok {
                    Ok(metrics(20))
                } else {
                    Err(tessera_protocol::member::LocalFailure::new("evaluation failed"))
                };
                p.evaluation_done(u64::from(round), m);
                vec![]
            }
            ToMember::RoundEnd { round, accepted } => {
                vec![AggregatorMsg::RoundEnd { round: u64::from(round), accepted, reason: String::new() }]
            }
            ToMember::Shutdown => vec![AggregatorMsg::Shutdown { reason: String::new() }],
            ToMember::Raw(bytes) => decode_payload::<AggregatorMsg>(&bytes)
                .into_iter()
                .map(|m| match m {
                    AggregatorMsg::Welcome { member, .. } => AggregatorMsg::Welcome { run_id: RUN, member },
                    m => m,
                })
                .collect(),
        };
        for m in msgs {
            let _ = p.handle(m);
            drain_member(&mut p, &mut audit, &mut script);
        }
        drain_member(&mut p, &mut audit, &mut script);
    }
}

pub(super) fn drain_member(
    p: &mut tessera_protocol::Participant<ChaCha20Rng>,
    audit: &mut MemberAudit,
    script: &mut Option<Script>,
) {
    use tessera_protocol::member::Output;
    for _ in 0..10_000 {
        match p.poll_output() {
            None => return,
            Some(Output::Send(msg)) => {
                audit.check(&msg);
                match (&msg, script.as_mut()) {
                    (ClientMsg::AdvertiseKeys { round, advert }, Some(s)) if *round == s.round => {
                        s.member_advert = Some(advert.clone());
                    }
                    (ClientMsg::RevealGraphSeed { round, reveal }, Some(s)) if *round == s.round => {
                        s.member_reveal = Some(*reveal);
                    }
                    _ => {}
                }
            }
            Some(_) => {}
        }
    }
    panic!("the member produced outputs without end");
}

pub(super) fn trained(base: &ModelParams, step: f32, examples: u64) -> tessera_protocol::TrainedUpdate {
    let mut params = base.clone();
    params.values_mut().for_each(|v| *v += step);
    tessera_protocol::TrainedUpdate { params, num_examples: examples, mean_loss: 0.3 }
}

pub(super) fn metrics(n: u64) -> EvalMetrics {
    EvalMetrics {
        loss: 0.4,
        accuracy: 0.8,
        balanced_accuracy: 0.8,
        auc: 0.85,
        f1: 0.8,
        num_examples: n,
        confusion: vec![vec![n / 2, 0], vec![0, n - n / 2]],
    }
}

/// The tiny model for `round`, streamed with the requested fault.
pub(super) fn model_stream(round: u64, evaluate: bool, fault: ModelFault) -> Vec<AggregatorMsg> {
    let purpose = if evaluate { ModelPurpose::Evaluate } else { ModelPurpose::Train };
    let mut model = tiny_model(0.0);
    if let ModelFault::Nan = fault {
        model.tensors[1].data[1] = f32::NAN;
    }
    let mut msgs: Vec<AggregatorMsg> = model_messages(round, purpose, &model, CHUNK).collect();
    match fault {
        ModelFault::None | ModelFault::Nan => {}
        ModelFault::BadDigest => {
            if let Some(AggregatorMsg::ModelEnd { digest, .. }) = msgs.last_mut() {
                digest[0] ^= 1;
            }
        }
        ModelFault::Reorder => msgs.swap(1, 2),
        ModelFault::DropChunk => {
            msgs.remove(1);
        }
        ModelFault::ExtraValues => {
            if let AggregatorMsg::ModelChunk { values, .. } = &mut msgs[1] {
                values.push(1.0);
            }
        }
        ModelFault::HugeLayout(dims) => {
            let shape = dims.into_iter().take(4).map(|d| d as usize).collect();
            msgs = vec![AggregatorMsg::ModelStart {
                round,
                purpose,
                layout: ParamLayout { entries: vec![("w".into(), shape)] },
            }];
        }
        ModelFault::OtherRound => {
            if let AggregatorMsg::ModelChunk { round, .. } = &mut msgs[1] {
                *round += 1;
            }
        }
    }
    msgs
}
