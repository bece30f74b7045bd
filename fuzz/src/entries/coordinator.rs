//! The coordinator fed arbitrary members.

use super::*;

#[derive(Arbitrary, Debug)]
pub(super) enum FromHostile {
    Hello,
    AdvertiseKeys {
        round: i8,
        a: [u8; 32],
        b: [u8; 32],
    },
    CopyKeys {
        round: i8,
        of: u8,
    },
    ShareKeys {
        round: i8,
        shares: Vec<(u8, u8, u8)>,
    },
    MaskedStart {
        round: i8,
        len: i8,
    },
    MaskedChunk {
        round: i8,
        offset: u16,
        values: Vec<u32>,
    },
    MaskedEnd {
        round: i8,
    },
    Reveal {
        round: i8,
        reveal: [u8; 32],
    },
    Sign {
        round: i8,
        signature: Vec<u8>,
    },
    Unmask {
        round: i8,
        reveals: Vec<(bool, u8, Vec<u8>)>,
    },
    PlainStart {
        round: i8,
        len: u16,
        weight: f64,
    },
    PlainChunk {
        round: i8,
        offset: u16,
        values: Vec<f32>,
    },
    PlainEnd {
        round: i8,
    },
    Eval {
        round: i8,
        loss: f64,
        accuracy: f64,
        n: u64,
        confusion: Vec<Vec<u64>>,
    },
    Decline {
        round: i8,
    },
    /// Replay a message an honest member sent, with one byte changed.
    Replay {
        index: u16,
        flip: Option<(u16, u8)>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
pub(super) enum ToCoordinator {
    /// Deliver up to this many queued messages between the coordinator
    /// and the honest members.
    Pump(u8),
    Tick(u16),
    Connect(u8),
    Disconnect(u8),
    Hostile(FromHostile),
}

/// Honest members of the coordinator target; the last member is hostile.
pub(super) const MEMBERS: usize = 4;

/// The aggregator's state machine with three honest members (the real
/// `Participant`) and one hostile member whose messages come from the input.
pub fn coordinator(data: &[u8]) {
    use tessera_protocol::coordinator::{Coordinator, Event, Output, Resume};
    use tessera_protocol::member::Output as MemberOut;

    let mut u = Unstructured::new(data);
    let cfg = coordinator_config();
    let min_clients = cfg.min_clients as usize;
    let Ok(mut coord) = Coordinator::new(
        cfg,
        tiny_model(0.0),
        None,
        Resume::default(),
        tessera_protocol::coordinator::CentralNoise::reproducible(0),
    ) else {
        panic!("the fixed coordinator config is valid")
    };
    let names: Vec<String> = (0..MEMBERS).map(member_name).collect();
    let hostile = names[MEMBERS - 1].clone();
    let mut members: BTreeMap<String, tessera_protocol::Participant<ChaCha20Rng>> = names[..MEMBERS - 1]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let policy = tessera_protocol::Policy { chunk_values: CHUNK, ..Default::default() };
            let p = tessera_protocol::Participant::new(n.clone(), policy, ChaCha20Rng::seed_from_u64(i as u64))
                .with_identity(identity(n));
            (n.clone(), p)
        })
        .collect();
    let mut online: BTreeSet<String> = BTreeSet::new();
    let mut now = 0u64;
    let mut to_members: std::collections::VecDeque<(String, AggregatorMsg)> = Default::default();
    let mut to_coord: std::collections::VecDeque<(String, ClientMsg)> = Default::default();
    let mut honest_sent: Vec<ClientMsg> = Vec::new();
    let mut current_round = 0u64;
    for n in names.iter().take(MEMBERS - 1) {
        members.get_mut(n).unwrap().hello();
        online.insert(n.clone());
        coord.member_connected(now, n);
    }

    for _ in 0..96 {
        let Ok(op) = ToCoordinator::arbitrary(&mut u) else { break };
        match op {
            ToCoordinator::Pump(k) => {
                for _ in 0..=k {
                    if let Some((to, msg)) = to_members.pop_front() {
                        if let Some(p) = members.get_mut(&to) {
                            let _ = p.handle(msg);
                        }
                    } else if let Some((from, msg)) = to_coord.pop_front() {
                        if online.contains(&from) {
                            let _ = coord.handle(now, &from, msg);
                        }
                    } else {
                        break;
                    }
                }
            }
            ToCoordinator::Tick(ms) => {
                now += u64::from(ms) * 4;
                coord.tick(now);
            }
            ToCoordinator::Connect(i) => {
                let n = &names[usize::from(i) % MEMBERS];
                if online.insert(n.clone()) {
                    if let Some(p) = members.get_mut(n) {
                        p.hello();
                    }
                    coord.member_connected(now, n);
                }
            }
            ToCoordinator::Disconnect(i) => {
                let n = &names[usize::from(i) % MEMBERS];
                if online.remove(n) {
                    coord.member_disconnected(now, n);
                }
            }
            ToCoordinator::Hostile(h) => {
                if !online.contains(&hostile) {
                    online.insert(hostile.clone());
                    coord.member_connected(now, &hostile);
                }
                let at = |off: i8| current_round.saturating_add_signed(i64::from(off % 3));
                let len = tessera_secagg::vector_len(&tiny_model(0.0).layout());
                let msg = match h {
                    FromHostile::Hello => Some(ClientMsg::Hello {
                        member: hostile.clone(),
                        protocol_version: 1,
                        settings: Default::default(),
                    }),
                    FromHostile::AdvertiseKeys { round, a, b } => Some(ClientMsg::AdvertiseKeys {
                        round: at(round),
                        advert: junk_advert(PublicKeys { cipher_pk: a, mask_pk: b }),
                    }),
                    FromHostile::CopyKeys { round, of } => honest_sent
                        .iter()
                        .filter_map(|m| match m {
                            ClientMsg::AdvertiseKeys { advert, .. } => Some(advert.clone()),
                            _ => None,
                        })
                        .nth(usize::from(of) % 4)
                        .map(|advert| ClientMsg::AdvertiseKeys { round: at(round), advert }),
                    FromHostile::ShareKeys { round, shares } => Some(ClientMsg::ShareKeys {
                        round: at(round),
                        shares: shares
                            .into_iter()
                            .map(|(f, t, n)| EncryptedShare {
                                from: PartyId::from(f % 5),
                                to: PartyId::from(t % 5),
                                ciphertext: vec![0xAB; usize::from(n)],
                            })
                            .collect(),
                    }),
                    FromHostile::MaskedStart { round, len: off } => Some(ClientMsg::MaskedStart {
                        round: at(round),
                        len: len.saturating_add_signed(i64::from(off % 4)),
                    }),
                    FromHostile::MaskedChunk { round, offset, values } => Some(ClientMsg::MaskedChunk {
                        round: at(round),
                        offset: u64::from(offset % 16),
                        values: values.into_iter().take(32).collect(),
                    }),
                    FromHostile::MaskedEnd { round } => Some(ClientMsg::MaskedEnd { round: at(round) }),
                    FromHostile::Reveal { round, reveal } => {
                        Some(ClientMsg::RevealGraphSeed { round: at(round), reveal })
                    }
                    FromHostile::Sign { round, signature } => {
                        Some(ClientMsg::SignSurvivors { round: at(round), signature })
                    }
                    FromHostile::Unmask { round, reveals } => Some(ClientMsg::UnmaskShares {
                        round: at(round),
                        reveals: reveals
                            .into_iter()
                            .map(|(own, p, share)| {
                                let peer = PartyId::from(p % 5);
                                if own {
                                    ShareReveal::SelfMask { peer, share }
                                } else {
                                    ShareReveal::MaskKey { peer, share }
                                }
                            })
                            .collect(),
                    }),
                    FromHostile::PlainStart { round, len, weight } => {
                        Some(ClientMsg::PlainStart { round: at(round), len: u64::from(len % 16), weight })
                    }
                    FromHostile::PlainChunk { round, offset, values } => Some(ClientMsg::PlainChunk {
                        round: at(round),
                        offset: u64::from(offset % 16),
                        values: values.into_iter().take(32).collect(),
                    }),
                    FromHostile::PlainEnd { round } => Some(ClientMsg::PlainEnd { round: at(round) }),
                    FromHostile::Eval { round, loss, accuracy, n, confusion } => Some(ClientMsg::EvalReport {
                        round: at(round),
                        metrics: EvalMetrics {
                            loss,
                            accuracy,
                            balanced_accuracy: accuracy,
                            auc: accuracy,
                            f1: accuracy,
                            num_examples: n,
                            confusion: confusion.into_iter().take(8).map(|r| r.into_iter().take(8).collect()).collect(),
                        },
                    }),
                    FromHostile::Decline { round } => {
                        Some(ClientMsg::Decline { round: at(round), reason: String::new() })
                    }
                    FromHostile::Replay { index, flip } => {
                        honest_sent.get(usize::from(index) % honest_sent.len().max(1)).and_then(|m| {
                            let mut bytes = tessera_core::to_bytes(m).ok()?;
                            if let Some((at, bit)) = flip
                                && !bytes.is_empty()
                            {
                                let i = usize::from(at) % bytes.len();
                                bytes[i] ^= 1 << (bit % 8);
                            }
                            decode_payload::<ClientMsg>(&bytes).ok()
                        })
                    }
                    FromHostile::Raw(bytes) => decode_payload::<ClientMsg>(&bytes).ok(),
                };
                if let Some(m) = msg {
                    let _ = coord.handle(now, &hostile, m);
                }
            }
        }
        // Collect what everyone wants to send.
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(out) = coord.poll_output() {
                moved = true;
                match out {
                    Output::Send { to, msg } => {
                        if let AggregatorMsg::SurvivorSet { survivors, .. } = &msg {
                            // Which secret each holder reveals follows from this one set.
                            assert!(survivors.windows(2).all(|w| w[0] < w[1]), "a survivor set out of order");
                        }
                        if let AggregatorMsg::RoundStart { round, .. } = &msg {
                            current_round = *round;
                        }
                        if online.contains(&to) {
                            to_members.push_back((to, msg));
                        }
                    }
                    Output::SendModel { to, round, purpose, model } => {
                        if online.contains(&to) {
                            for m in model_messages(round, purpose, &model, CHUNK) {
                                to_members.push_back((to.clone(), m));
                            }
                        }
                    }
                    Output::Disconnect { member, .. } | Output::RefuseAdmission { member, .. } => {
                        if online.remove(&member) {
                            coord.member_disconnected(now, &member);
                        }
                    }
                    Output::Event(Event::RoundFinished(outcome)) => {
                        assert!(coord.global().check_finite().is_ok(), "a round made the global model non-finite");
                        assert!(outcome.contributors.len() >= min_clients, "a round accepted too few updates");
                        assert!(outcome.contributors.iter().all(|c| outcome.cohort.contains(c)));
                    }
                    Output::Event(_) => {}
                }
            }
            for (name, p) in members.iter_mut() {
                while let Some(out) = p.poll_output() {
                    moved = true;
                    match out {
                        MemberOut::Send(msg) => {
                            honest_sent.push(msg.clone());
                            if honest_sent.len() > 256 {
                                honest_sent.remove(0);
                            }
                            to_coord.push_back((name.clone(), msg));
                        }
                        MemberOut::Train { round, model, .. } => {
                            let i = names.iter().position(|n| n == name).unwrap_or(0);
                            p.training_done(round, Ok(trained(&model, 0.01 * (i as f32 + 1.0), 10 + i as u64)));
                        }
                        MemberOut::Evaluate { round, .. } => p.evaluation_done(round, Ok(metrics(10))),
                        // The fuzzed coordinator runs no statistics release.
                        MemberOut::Statistics { round, .. } => {
                            p.statistics_done(round, Err(tessera_protocol::member::LocalFailure::new("no data")))
                        }
                        MemberOut::Event(_) => {}
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }
}

/// The coordinator settings of the daemon, from an `aggregator.toml`.
pub(super) fn coordinator_config() -> tessera_protocol::coordinator::CoordinatorConfig {
    const TOML: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        pki_dir = "pki"
        members = ["m0", "m1", "m2", "m3"]
        [run]
        rounds = 3
        min_clients = 2
        seed = 7
        round_deadline_secs = 20.0
        phase_timeout_secs = 2.0
        max_round_retries = 2
        [model]
        num_features = 2
        num_classes = 3
        [train]
        example_weight_cap = 100
    "#;
    let cfg: tessera_aggregator::AggregatorConfig = toml::from_str(TOML).expect("valid config");
    cfg.validate().expect("valid config");
    let policy = cfg.admission_policy().expect("valid config");
    let mut c = tessera_aggregator::daemon::coordinator_config(&cfg, RUN, 7, policy);
    // A fuzzed Hello cannot carry the digest, so with admission on no input
    // would reach a round; admission's check is covered by its unit tests.
    c.admission = None;
    c
}
