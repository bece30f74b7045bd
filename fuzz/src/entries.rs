//! Fuzz entry points, one `fn(&[u8])` per target. The cargo-fuzz targets in
//! `fuzz/fuzz_targets/` call them under libFuzzer; `tests/tests/fuzz_corpus.rs`
//! compiles this same file into the workspace's test suite and replays every
//! saved corpus file and crash artifact through them with a plain
//! `cargo test`, so regressions are caught without nightly flags.
//!
//! Besides "never panics", the protocol targets assert security properties
//! that must hold whatever the peer sends: a member never sends a plaintext
//! update under its default policy, never reveals two secrets of one peer,
//! never advertises two key sets, sends two updates or two unmask answers
//! for one round; the
//! aggregator never asks anyone to reveal both secrets of a party and never
//! lets a round make the global model non-finite.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::codec::{FrameDecoder, HEADER_LEN, Limits, decode_payload, encode_frame};
use tessera_core::message::{EncryptedShare, ModelPurpose, PublicKeys, ShareReveal};
use tessera_core::params::{ModelParams, ParamLayout, ParamTensor};
use tessera_core::round::{RoundSettings, SecAggSettings, TrainSettings};
use tessera_core::stream::model_messages;
use tessera_core::{AggregatorMsg, ClientMsg, EvalMetrics, PartyId, RunId};

/// A fuzz entry point: feeds arbitrary bytes to one decoder or machine.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("frame_decoder", frame_decoder),
    ("client_msg", client_msg),
    ("aggregator_msg", aggregator_msg),
    ("participant", participant),
    ("coordinator", coordinator),
    ("csv_loader", csv_loader),
    ("idx_loader", idx_loader),
    ("image_loader", image_loader),
    ("config", config),
];

// ---------------------------------------------------------------- codec

/// The frame decoder fed the input in pieces whose size the first byte picks;
/// every complete frame is decoded as both message families.
pub fn frame_decoder(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else { return };
    let limits = Limits { max_frame_bytes: 1 << 12, chunk_values: 64 };
    let mut d = FrameDecoder::new(limits);
    let step = 1 + usize::from(head % 23);
    for piece in rest.chunks(step) {
        d.push(piece);
        assert!(d.wanted() >= 1);
        loop {
            match d.next_payload() {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= limits.max_frame_bytes);
                    check_client_msg(&payload);
                    check_aggregator_msg(&payload);
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(d.next_payload().is_err(), "a failed decoder stays failed");
                    return;
                }
            }
        }
    }
    let _ = d.finish();
}

pub fn client_msg(data: &[u8]) {
    check_client_msg(data);
}

pub fn aggregator_msg(data: &[u8]) {
    check_aggregator_msg(data);
}

/// A payload that decodes must re-encode to the very same bytes: the wire
/// encoding is canonical, so the egress ledger's digests name one message.
fn check_client_msg(payload: &[u8]) {
    if let Ok(m) = decode_payload::<ClientMsg>(payload) {
        let _ = (m.kind(), m.round());
        assert_canonical(&m, payload);
    }
}

fn check_aggregator_msg(payload: &[u8]) {
    if let Ok(m) = decode_payload::<AggregatorMsg>(payload) {
        let _ = m.kind();
        assert_canonical(&m, payload);
    }
}

fn assert_canonical<T: serde::Serialize>(m: &T, payload: &[u8]) {
    let limits = Limits { max_frame_bytes: payload.len().max(1), chunk_values: 1 };
    let frame = encode_frame(m, &limits).expect("a decoded message re-encodes within its own size");
    assert_eq!(&frame[HEADER_LEN..], payload, "non-canonical encoding accepted");
}

// ---------------------------------------------------------------- shared protocol pieces

const RUN: RunId = RunId([5; 16]);

/// A model small enough to stream in a few chunks of [`CHUNK`] values.
fn tiny_model(bias: f32) -> ModelParams {
    ModelParams::new(vec![
        ParamTensor::new("w", vec![2, 3], vec![0.1 + bias, -0.2, 0.3, 0.0, 0.5, -0.6]).unwrap(),
        ParamTensor::new("b", vec![3], vec![0.0, bias, -bias]).unwrap(),
    ])
}

const CHUNK: usize = 4;

fn member_name(i: usize) -> String {
    format!("m{i}")
}

fn train_settings() -> TrainSettings {
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
struct HonestPeers {
    sessions: Vec<(PartyId, tessera_secagg::ClientSession)>,
    keys: Vec<(PartyId, PublicKeys)>,
    rng: ChaCha20Rng,
}

impl HonestPeers {
    fn new(round: u64, cohort: &[String], s: &SecAggSettings, len: u64, except: PartyId) -> Option<Self> {
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

    fn shares_for(&mut self, target: PartyId, target_keys: PublicKeys) -> Vec<EncryptedShare> {
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
struct MemberAudit {
    advertised: BTreeSet<u64>,
    masked_started: BTreeSet<u64>,
    unmasked: BTreeSet<u64>,
}

impl MemberAudit {
    fn check(&mut self, msg: &ClientMsg) {
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

// ---------------------------------------------------------------- participant

#[derive(Arbitrary, Debug)]
enum ModelFault {
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
enum TrainResult {
    Ok(u16),
    Err,
    NonFinite,
    OtherLayout,
}

#[derive(Arbitrary, Debug)]
enum ToMember {
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
    Unmask {
        round: u8,
        survivors: Vec<u8>,
        dropped: Vec<u8>,
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
    /// out step by step, stopping before step `upto % 7`, so that deep
    /// states are one input away.
    HonestRound {
        round: u8,
        upto: u8,
    },
}

/// The steps of [`ToMember::HonestRound`], in order.
fn honest_round(round: u8, upto: u8) -> Vec<ToMember> {
    let steps = vec![
        ToMember::Welcome,
        ToMember::RoundStart {
            round,
            cohort: 2,
            party: 1,
            threshold: 2,
            bits: 32,
            clip: 1.0,
            neighbours: None,
            secure: true,
            unsorted: false,
        },
        ToMember::Model { round, evaluate: false, fault: ModelFault::None },
        ToMember::CohortKeys { round, honest: true, junk: vec![] },
        ToMember::ForwardShares { round, honest: true, flip: None, junk: vec![] },
        ToMember::Trained { round, result: TrainResult::Ok(50) },
        ToMember::Unmask { round, survivors: vec![], dropped: vec![], everyone: true },
    ];
    steps.into_iter().take(usize::from(upto % 8)).collect()
}

/// What the fake aggregator remembers of the round it started last.
struct Script {
    round: u64,
    cohort: Vec<String>,
    party: PartyId,
    peers: Option<HonestPeers>,
    member_keys: Option<PublicKeys>,
}

/// The member's state machine fed an arbitrary sequence of aggregator
/// messages and local-work results, mostly well-formed so that it reaches
/// every step of a round, with faults where the input says.
pub fn participant(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let me = "m1";
    let policy = tessera_protocol::Policy { chunk_values: CHUNK, max_model_values: 1 << 16, ..Default::default() };
    let mut p = tessera_protocol::Participant::new(me, policy, ChaCha20Rng::seed_from_u64(7));
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
                        graph_seed: [round; 32],
                    }),
                    dp: None,
                };
                let party = PartyId::from(party % 7);
                let round = u64::from(round);
                let len = tessera_secagg::update::vector_len(&tiny_model(0.0).layout());
                let peers = settings.secagg.as_ref().and_then(|s| HonestPeers::new(round, &names, s, len, party));
                let msg = AggregatorMsg::RoundStart { round, settings, cohort: names.clone(), party };
                script = Some(Script { round, cohort: names, party, peers, member_keys: None });
                vec![msg]
            }
            ToMember::Model { round, evaluate, fault } => model_stream(u64::from(round), evaluate, fault),
            ToMember::CohortKeys { round, honest, junk } => {
                let keys = match (&script, honest) {
                    (Some(s), true) => s.peers.as_ref().map(|p| p.keys.clone()).unwrap_or_default(),
                    _ => junk
                        .into_iter()
                        .map(|(p, a, b)| (PartyId::from(p % 8), PublicKeys { cipher_pk: a, mask_pk: b }))
                        .collect(),
                };
                vec![AggregatorMsg::CohortKeys { round: u64::from(round), keys }]
            }
            ToMember::ForwardShares { round, honest, flip, junk } => {
                let mut shares = match (&mut script, honest) {
                    (Some(s), true) => match (&mut s.peers, s.member_keys) {
                        (Some(peers), Some(k)) => peers.shares_for(s.party, k),
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
            ToMember::Unmask { round, survivors, dropped, everyone } => {
                let (survivors, dropped) = match (&script, everyone) {
                    (Some(s), true) => ((0..s.cohort.len() as PartyId).collect(), Vec::new()),
                    _ => (
                        survivors.into_iter().map(|p| PartyId::from(p % 8)).collect(),
                        dropped.into_iter().map(|p| PartyId::from(p % 8)).collect(),
                    ),
                };
                vec![AggregatorMsg::UnmaskRequest { round: u64::from(round), survivors, dropped }]
            }
            ToMember::Trained { round, result } => {
                let base = tiny_model(0.0);
                let update = match result {
                    TrainResult::Ok(n) => Ok(trained(&base, 0.05, u64::from(n))),
                    TrainResult::Err => Err("training failed".to_string()),
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
                let m = if ok { Ok(metrics(20)) } else { Err("evaluation failed".to_string()) };
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

fn drain_member(
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
                if let (ClientMsg::AdvertiseKeys { round, keys }, Some(s)) = (&msg, script.as_mut())
                    && *round == s.round
                {
                    s.member_keys = Some(*keys);
                }
            }
            Some(_) => {}
        }
    }
    panic!("the member produced outputs without end");
}

fn trained(base: &ModelParams, step: f32, examples: u64) -> tessera_protocol::TrainedUpdate {
    let mut params = base.clone();
    params.values_mut().for_each(|v| *v += step);
    tessera_protocol::TrainedUpdate { params, num_examples: examples, mean_loss: 0.3 }
}

fn metrics(n: u64) -> EvalMetrics {
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
fn model_stream(round: u64, evaluate: bool, fault: ModelFault) -> Vec<AggregatorMsg> {
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

// ---------------------------------------------------------------- coordinator

#[derive(Arbitrary, Debug)]
enum FromHostile {
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
enum ToCoordinator {
    /// Deliver up to this many queued messages between the coordinator
    /// and the honest members.
    Pump(u8),
    Tick(u16),
    Connect(u8),
    Disconnect(u8),
    Hostile(FromHostile),
}

/// Honest members of the coordinator target; the last member is hostile.
const MEMBERS: usize = 4;

/// The aggregator's state machine with three honest members (the real
/// `Participant`) and one hostile member whose messages come from the input.
pub fn coordinator(data: &[u8]) {
    use tessera_protocol::coordinator::{Coordinator, Event, Output, Resume};
    use tessera_protocol::member::Output as MemberOut;

    let mut u = Unstructured::new(data);
    let cfg = coordinator_config();
    let min_clients = cfg.min_clients as usize;
    let Ok(mut coord) = Coordinator::new(cfg, tiny_model(0.0), None, Resume::default()) else {
        panic!("the fixed coordinator config is valid")
    };
    let names: Vec<String> = (0..MEMBERS).map(member_name).collect();
    let hostile = names[MEMBERS - 1].clone();
    let mut members: BTreeMap<String, tessera_protocol::Participant<ChaCha20Rng>> = names[..MEMBERS - 1]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let policy = tessera_protocol::Policy { chunk_values: CHUNK, ..Default::default() };
            (n.clone(), tessera_protocol::Participant::new(n.clone(), policy, ChaCha20Rng::seed_from_u64(i as u64)))
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
                let len = tessera_secagg::update::vector_len(&tiny_model(0.0).layout());
                let msg = match h {
                    FromHostile::Hello => Some(ClientMsg::Hello { member: hostile.clone(), protocol_version: 1 }),
                    FromHostile::AdvertiseKeys { round, a, b } => Some(ClientMsg::AdvertiseKeys {
                        round: at(round),
                        keys: PublicKeys { cipher_pk: a, mask_pk: b },
                    }),
                    FromHostile::CopyKeys { round, of } => honest_sent
                        .iter()
                        .filter_map(|m| match m {
                            ClientMsg::AdvertiseKeys { keys, .. } => Some(*keys),
                            _ => None,
                        })
                        .nth(usize::from(of) % 4)
                        .map(|keys| ClientMsg::AdvertiseKeys { round: at(round), keys }),
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
                            let mut bytes = tessera_core::codec::to_bytes(m).ok()?;
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
                        if let AggregatorMsg::UnmaskRequest { survivors, dropped, .. } = &msg {
                            let s: BTreeSet<_> = survivors.iter().collect();
                            assert!(dropped.iter().all(|d| !s.contains(d)), "asked for both secrets of one party");
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
                    Output::Disconnect { member, .. } => {
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
fn coordinator_config() -> tessera_protocol::coordinator::CoordinatorConfig {
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
    let cfg: tessera_aggregator::config::AggregatorConfig = toml::from_str(TOML).expect("valid config");
    cfg.validate().expect("valid config");
    tessera_aggregator::daemon::coordinator_config(&cfg, RUN, 7)
}

// ---------------------------------------------------------------- data loaders

/// The tabular CSV loader and the preprocessing that follows it. The first
/// byte picks the table spec.
pub fn csv_loader(data: &[u8]) {
    use tessera_learn::data::{SplitConfig, TabularSpec, load_csv};
    let Some((&head, body)) = data.split_first() else { return };
    let spec = TabularSpec {
        label: if head & 1 == 0 { "label".into() } else { "y".into() },
        features: None,
        ignore: if head & 2 == 0 { vec![] } else { vec!["id".into()] },
        categorical: if head & 4 == 0 { vec![] } else { vec!["c".into()] },
        classes: if head & 8 == 0 { None } else { Some(vec!["a".into(), "b".into()]) },
        missing_indicators: head & 16 == 0,
    };
    let file = scratch_file("data.csv", body);
    if let Ok(table) = load_csv(file.path(), &spec) {
        let split = SplitConfig { validation: 0.2, test: 0.2, seed: u64::from(head) };
        let _ = tessera_learn::TabularData::from_table(&table, &spec, &split);
    }
}

/// The IDX decoder (MNIST / Fashion-MNIST files), plain and gzip-wrapped.
pub fn idx_loader(data: &[u8]) {
    let Some((&head, body)) = data.split_first() else { return };
    let _ = tessera_vision::idx::parse_idx(body, Path::new("fuzz.idx"));
    if head & 1 == 1 {
        let f = scratch_file("fuzz-idx.gz", body);
        let _ = tessera_vision::idx::read_idx(f.path());
    }
}

/// The image-folder decoder for one file (PNG or JPEG by extension, the
/// content decides), at a size and channel count the first byte picks.
pub fn image_loader(data: &[u8]) {
    let Some((&head, body)) = data.split_first() else { return };
    let name = if head & 1 == 0 { "image.png" } else { "image.jpg" };
    let opts = tessera_vision::folder::FolderOptions {
        size: (usize::from(head >> 4) + 1, usize::from(head >> 4) + 2),
        channels: if head & 2 == 0 { 1 } else { 3 },
        require_exact_size: head & 4 != 0,
    };
    let f = scratch_file(name, body);
    let _ = tessera_vision::folder::load_image(f.path(), &opts);
}

// ---------------------------------------------------------------- configs

/// The three TOML loaders (`aggregator.toml`, `client.toml`, simulator
/// scenarios) on arbitrary text; an aggregator config that validates must
/// also give a coordinator that can start a round.
pub fn config(data: &[u8]) {
    let Some((&head, body)) = data.split_first() else { return };
    let f = scratch_file("config.toml", body);
    match head % 3 {
        0 => {
            if let Ok(cfg) = tessera_aggregator::config::AggregatorConfig::load(f.path()) {
                start_a_round(&cfg);
            }
        }
        1 => {
            let _ = tessera_client::config::ClientConfig::load(f.path());
        }
        _ => {
            let _ = tessera_sim::scenario::Scenario::load(f.path());
        }
    }
}

fn start_a_round(cfg: &tessera_aggregator::config::AggregatorConfig) {
    use tessera_protocol::coordinator::{Coordinator, Resume};
    let cc = tessera_aggregator::daemon::coordinator_config(cfg, RUN, 1);
    let Ok(mut c) = Coordinator::new(cc, tiny_model(0.0), None, Resume::default()) else { return };
    for (i, m) in cfg.server.members.iter().take(64).enumerate() {
        c.member_connected(i as u64, m);
    }
    c.tick(1 << 40);
    while c.poll_output().is_some() {}
}

/// A file holding `bytes` in a fresh temporary directory.
struct Scratch {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Scratch {
    fn path(&self) -> &Path {
        &self.path
    }
}

fn scratch_file(name: &str, bytes: &[u8]) -> Scratch {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    Scratch { _dir: dir, path }
}
