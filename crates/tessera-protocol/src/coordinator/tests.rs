//! The coordinator and real `Participant`s wired together in memory, with
//! no async and no network: whole rounds, dropouts at each phase, and hostile
//! messages, all deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::member::{self as participant, CohortProblem, Participant, Policy, TrainedUpdate};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::{
    AggregatorMsg, ClientMsg, EvalMetrics, ModelParams, ModelPurpose, ParamTensor, RunId, TrainSettings, model_messages,
};

use super::*;
use crate::strategy::StrategyConfig;

fn cfg(n_min: u32, secure: bool) -> CoordinatorConfig {
    CoordinatorConfig {
        run_id: RunId([7; 16]),
        rounds: 2,
        min_clients: n_min,
        start_quorum: 0,
        cohort: CohortSelection::All,
        train: TrainSettings {
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 0,
            example_weight_cap: 100,
        },
        secure: secure.then(SecureConfig::default),
        dp: None,
        strategy: StrategyConfig::FedAvg { server_lr: 1.0, average_last: None },
        round_deadline_ms: 10_000,
        phase_timeout_ms: 1_000,
        max_round_retries: 2,
        retry_backoff_ms: 0,
        retry_backoff_max_ms: 0,
        seed: 99,
        chunk_values: 5,
        stream_slots: 2,
        stream_idle_ms: 2_000,
        unhealthy_after: 2,
        admission: None,
        robust: None,
        evaluate_every: 1,
    }
}

/// A client- or record-level privacy config with a generous budget and
/// noise multiplier `z`; every DP test module starts from it.
fn dp_config(unit: tessera_core::PrivacyUnit, noise: Option<tessera_core::NoisePlacement>, z: f64) -> PrivacyConfig {
    PrivacyConfig {
        unit,
        noise,
        epsilon: 1e6,
        delta: 1e-5,
        clip_norm: 0.5,
        noise_multiplier: Some(z),
        sampling_rate: (unit == tessera_core::PrivacyUnit::Record).then_some(0.25),
        adaptive_clipping: None,
        evaluation: None,
    }
}

fn initial() -> ModelParams {
    ModelParams::new(vec![
        ParamTensor::new("w", vec![3, 3], vec![0.0; 9]).unwrap(),
        ParamTensor::new("b", vec![3], vec![0.0; 3]).unwrap(),
    ])
}

/// Member i moves every coordinate by (i+1)/10 and has 10·(i+1) examples.
fn member_delta(i: usize) -> f32 {
    (i as f32 + 1.0) / 10.0
}

struct Harness {
    /// The consortium PKI every member's identity comes from.
    pki: participant::test_pki::TestPki,
    now: u64,
    coord: Coordinator,
    members: BTreeMap<String, Participant<ChaCha20Rng>>,
    /// Members that no longer send or receive anything.
    dead: BTreeSet<String>,
    /// Kill a member right before it would send a message of this kind.
    kill_before: BTreeMap<String, &'static str>,
    /// Go silent (still connected) right before sending this kind.
    stall_before: BTreeMap<String, &'static str>,
    finished: Vec<RoundOutcome>,
    aborted: Vec<(u64, String)>,
    violations: Vec<(String, String)>,
    /// Messages each member sent, by kind.
    sent: BTreeMap<String, Vec<ClientMsg>>,
    /// Coordinator outputs in order, as short labels ("event:..." or "send:kind").
    trace: Vec<String>,
    /// The DP settings each Train request carried.
    train_dp: Vec<Option<tessera_core::DpSettings>>,
    /// Messages the coordinator answered `Busy` (no free stream slot), and
    /// everything that member sent after them: a driver holds the member's
    /// connection until the slot frees, so order is kept.
    held: BTreeMap<String, std::collections::VecDeque<ClientMsg>>,
    /// When each round finished, in harness time.
    finished_at: Vec<u64>,
    /// Members report zero training examples, so the round's total weight
    /// is zero and its aggregate cannot be turned into a mean.
    zero_examples: bool,
    /// Members that reveal wrong (well-formed) shares when unmasking.
    saboteurs: BTreeSet<String>,
    /// The members each `Event::BadShares` named.
    bad_shares: Vec<Vec<String>>,
    /// Every `Event::RoundAborted`, with the harness time it came out.
    abort_events: Vec<(u64, Event)>,
    /// A malicious aggregator's edit of every `RoundStart` on its way to the members.
    tamper_round_start: Option<fn(&mut tessera_core::RoundSettings)>,
    /// Each `RoundStarted` event: the cohort and the seed it was drawn with.
    started: Vec<(Vec<String>, u64)>,
    /// Each DP statistics release.
    released: Vec<StatisticsOutcome>,
}

impl Harness {
    fn new(n: usize, mut cfg: CoordinatorConfig) -> Self {
        cfg.start_quorum = n as u32;
        let allow_plaintext = cfg.secure.is_none();
        let pki = participant::test_pki::TestPki::new("joint harness consortium");
        let mut members = BTreeMap::new();
        for i in 0..n {
            let name = format!("m{i}");
            let p = Participant::new(
                name.clone(),
                Policy { allow_plaintext, chunk_values: 5, ..Policy::default() },
                ChaCha20Rng::seed_from_u64(i as u64),
            )
            .with_identity(pki.identity(&name));
            members.insert(name, p);
        }
        Self {
            pki,
            now: 0,
            coord: Coordinator::new(cfg, initial(), None, Resume::default(), CentralNoise::reproducible(7)).unwrap(),
            members,
            dead: BTreeSet::new(),
            kill_before: BTreeMap::new(),
            stall_before: BTreeMap::new(),
            finished: vec![],
            aborted: vec![],
            violations: vec![],
            sent: BTreeMap::new(),
            trace: vec![],
            train_dp: vec![],
            held: BTreeMap::new(),
            finished_at: vec![],
            zero_examples: false,
            saboteurs: BTreeSet::new(),
            bad_shares: vec![],
            abort_events: vec![],
            tamper_round_start: None,
            started: vec![],
            released: vec![],
        }
    }

    /// Hand `msg` to the coordinator as a driver would: behind anything of
    /// the same member still held, and held itself when the answer is Busy.
    fn deliver_to_coordinator(&mut self, name: &str, msg: ClientMsg) {
        let queue = self.held.entry(name.to_string()).or_default();
        if !queue.is_empty() {
            queue.push_back(msg);
            return;
        }
        if let Ok(Handled::Busy(msg)) = self.coord.handle(self.now, name, msg) {
            self.held.entry(name.to_string()).or_default().push_back(msg);
        }
    }

    /// Retry held messages in order; true if any went through.
    fn release_held(&mut self) -> bool {
        let mut moved = false;
        let names: Vec<String> = self.held.keys().cloned().collect();
        for name in names {
            while let Some(msg) = self.held.get_mut(&name).and_then(|q| q.pop_front()) {
                if let Ok(Handled::Busy(msg)) = self.coord.handle(self.now, &name, msg) {
                    self.held.get_mut(&name).unwrap().push_front(msg);
                    break;
                }
                moved = true;
            }
        }
        moved
    }

    fn with_initial(self, initial: ModelParams) -> Self {
        self.with_start(initial, CentralNoise::reproducible(7))
    }

    /// The coordinator restarted from `initial` with the key `noise`.
    fn with_start(mut self, initial: ModelParams, noise: CentralNoise) -> Self {
        let cfg = self.coord.config().clone();
        self.coord = Coordinator::new(cfg, initial, None, Resume::default(), noise).unwrap();
        self
    }

    fn member_mut(&mut self, name: &str) -> &mut Participant<ChaCha20Rng> {
        self.members.get_mut(name).unwrap()
    }

    fn connect_all(&mut self) {
        let names: Vec<String> = self.members.keys().cloned().collect();
        for n in names {
            self.members.get_mut(&n).unwrap().hello();
            self.coord.member_connected(self.now, &n);
        }
    }

    fn deliver_to_member(&mut self, to: &str, mut msg: AggregatorMsg) {
        if self.dead.contains(to) {
            return;
        }
        if let (Some(tamper), AggregatorMsg::RoundStart { settings, .. }) = (self.tamper_round_start, &mut msg) {
            tamper(settings);
        }
        let _ = self.members.get_mut(to).unwrap().handle(msg);
    }

    /// Run until nothing moves; then advance time past deadlines until the
    /// run is finished or `max_ticks` pass.
    fn run(&mut self, max_ticks: u32) {
        for _ in 0..max_ticks {
            while self.pump() {}
            if self.coord.is_finished() {
                return;
            }
            self.now = self.coord.next_deadline().unwrap_or(self.now) + 1;
            self.coord.tick(self.now);
        }
    }

    fn pump(&mut self) -> bool {
        let mut moved = self.release_held();
        while let Some(out) = self.coord.poll_output() {
            moved = true;
            match out {
                Output::Send { to, msg } => {
                    self.trace.push(format!("send:{}", msg.kind()));
                    self.deliver_to_member(&to, msg)
                }
                Output::SendModel { to, round, purpose, model } => {
                    self.trace.push(format!("model:{round}:{purpose:?}"));
                    for m in model_messages(round, purpose, &model, 5).collect::<Vec<_>>() {
                        self.deliver_to_member(&to, m);
                    }
                }
                Output::Disconnect { member, reason } => self.violations.push((member, reason)),
                Output::RefuseAdmission { member, refusal } => self.violations.push((member, refusal.to_string())),
                Output::Event(Event::RoundFinished(o)) => {
                    self.finished.push(*o);
                    self.finished_at.push(self.now);
                }
                Output::Event(e @ Event::RoundAborted { .. }) => {
                    if let Event::RoundAborted { round, reason, .. } = &e {
                        self.aborted.push((*round, reason.clone()));
                    }
                    self.abort_events.push((self.now, e));
                }
                Output::Event(Event::BadShares { members, .. }) => self.bad_shares.push(members),
                Output::Event(Event::StatisticsReleased(o)) => self.released.push(*o),
                Output::Event(e) => {
                    if let Event::RoundStarted { cohort, cohort_seed, .. } = &e {
                        self.started.push((cohort.clone(), *cohort_seed));
                    }
                    let label = match &e {
                        Event::RoundStarted { .. } => "round_started".to_string(),
                        Event::PrivacyReserved { round, .. } => format!("privacy_reserved:{round}"),
                        Event::RunFinished { reason } => format!("run_finished:{reason}"),
                        other => format!("{other:?}").split([' ', '{', '(']).next().unwrap_or_default().to_string(),
                    };
                    self.trace.push(format!("event:{label}"));
                    if std::env::var("HARNESS_DEBUG").is_ok() {
                        eprintln!("coordinator: {e:?}");
                    }
                }
            }
        }
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            if self.dead.contains(&name) {
                continue;
            }
            let i: usize = name[1..].parse().unwrap();
            while let Some(out) = self.members.get_mut(&name).unwrap().poll_output() {
                moved = true;
                match out {
                    participant::Output::Send(msg) => {
                        if self.kill_before.get(&name) == Some(&msg.kind().as_str()) {
                            self.dead.insert(name.clone());
                            self.coord.member_disconnected(self.now, &name);
                            break;
                        }
                        if self.stall_before.get(&name) == Some(&msg.kind().as_str()) {
                            self.dead.insert(name.clone());
                            break;
                        }
                        let msg = if self.saboteurs.contains(&name) { secure::sabotage(msg) } else { msg };
                        self.sent.entry(name.clone()).or_default().push(msg.clone());
                        self.deliver_to_coordinator(&name, msg);
                    }
                    participant::Output::Train { round, model, dp, .. } => {
                        self.train_dp.push(dp);
                        let mut params = model.clone();
                        params.values_mut().for_each(|v| *v += member_delta(i));
                        let num_examples = if self.zero_examples { 0 } else { 10 * (i as u64 + 1) };
                        let up = TrainedUpdate { params, num_examples, mean_loss: 0.5 };
                        self.members.get_mut(&name).unwrap().training_done(round, Ok(up));
                    }
                    participant::Output::Evaluate { round, .. } => {
                        let m = EvalMetrics {
                            num_examples: 10,
                            loss: 0.1 * (i as f64 + 1.0),
                            accuracy: 0.9,
                            confusion: vec![vec![5, 0], vec![1, 4]],
                            ..Default::default()
                        };
                        self.members.get_mut(&name).unwrap().evaluation_done(round, Ok(m));
                    }
                    participant::Output::Statistics { round, release } => {
                        let counts = statistics::counts(i, &release);
                        self.members.get_mut(&name).unwrap().statistics_done(round, Ok(counts));
                    }
                    participant::Output::Event(e) => {
                        if std::env::var("HARNESS_DEBUG").is_ok() {
                            eprintln!("{name}: {e:?}");
                        }
                    }
                }
            }
        }
        moved
    }
}

/// Example-weighted mean delta of the given members (weights capped at 100).
fn expected_mean(members: &[usize]) -> f32 {
    let w: Vec<f32> = members.iter().map(|i| (10.0 * (*i as f32 + 1.0)).min(100.0) / 100.0).collect();
    members.iter().zip(&w).map(|(i, w)| member_delta(*i) * w).sum::<f32>() / w.iter().sum::<f32>()
}

fn assert_global(h: &Harness, rounds: u32, members: &[usize], tol: f32) {
    let e = expected_mean(members) * rounds as f32;
    for v in h.coord.global().values() {
        assert!((v - e).abs() < tol, "global {v} vs expected {e}");
    }
}

#[test]
fn secure_rounds_complete_and_average_exactly_enough() {
    let mut h = Harness::new(5, cfg(3, true));
    h.connect_all();
    h.run(10);
    assert!(h.coord.is_finished());
    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    assert_eq!(h.finished[0].contributors.len(), 5);
    assert_eq!(h.finished[0].evaluators, 5);
    assert!(h.finished[0].metrics.accuracy.is_some_and(|a| (a - 0.9).abs() < 1e-12));
    let m = &h.finished[0].metrics;
    assert!(m.loss.is_some() && m.auc.is_some(), "reports in the clear release loss and AUC: {m:?}");
    // Quantization error per round is below cohort·step ≈ 5·2/2^29.
    assert_global(&h, 2, &[0, 1, 2, 3, 4], 1e-5);
    // Nothing any member sent was a plaintext update.
    assert!(h.sent.values().flatten().all(|m| !matches!(m, ClientMsg::PlainChunk { .. })));
}

#[test]
fn plaintext_mode_matches_secure_mode() {
    let mut h = Harness::new(4, cfg(2, false));
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 2);
    assert_global(&h, 2, &[0, 1, 2, 3], 1e-6);
}

#[test]
fn dropouts_at_every_phase_leave_the_sum_of_survivors() {
    for kind in ["advertise_keys", "share_keys", "masked_start", "sign_survivors", "unmask_shares"] {
        let mut c = cfg(3, true);
        c.rounds = 1;
        let mut h = Harness::new(6, c);
        h.kill_before.insert("m1".into(), kind);
        h.connect_all();
        h.run(20);
        assert_eq!(h.finished.len(), 1, "dropout before {kind}: aborted {:?}", h.aborted);
        let contributors = &h.finished[0].contributors;
        // Dying after the masked input still leaves it in the sum.
        let late = ["sign_survivors", "unmask_shares"].contains(&kind);
        let expected: Vec<usize> = if late { vec![0, 1, 2, 3, 4, 5] } else { vec![0, 2, 3, 4, 5] };
        assert_eq!(contributors.len(), expected.len(), "dropout before {kind}");
        assert_global(&h, 1, &expected, 1e-5);
    }
}

#[test]
fn too_few_survivors_abort_and_retry() {
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.max_round_retries = 0;
    let mut h = Harness::new(4, c);
    h.kill_before.insert("m0".into(), "share_keys");
    h.kill_before.insert("m1".into(), "share_keys");
    h.connect_all();
    h.run(20);
    assert!(h.finished.is_empty());
    assert_eq!(h.aborted.len(), 1);
    assert!(h.coord.is_finished());
    // The global model never moved.
    assert!(h.coord.global().values().all(|v| *v == 0.0));
}

#[test]
fn hostile_messages_are_rejected_and_the_round_goes_on() {
    let mut c = cfg(3, true);
    c.rounds = 1;
    let mut h = Harness::new(4, c);
    h.stall_before.insert("m3".into(), "masked_start");
    h.connect_all();
    // Round 1 waits in the masked phase for m3; inject bad messages from it.
    while h.pump() {}
    let round = h.coord.progress().unwrap().0;
    // A plaintext update under secure aggregation, then a vector for another round.
    let err = h.coord.handle(h.now, "m3", ClientMsg::PlainStart { round, len: 13, weight: 1.0 }).unwrap_err();
    assert_eq!(err, Violation::PlaintextRefused);
    let err = h.coord.handle(h.now, "m3", ClientMsg::MaskedChunk { round: round + 5, offset: 0, values: vec![1] });
    assert!(matches!(err, Err(Violation::WrongRound { .. })), "{err:?}");
    // Once rejected, m3 stays out of the round.
    let err = h.coord.handle(h.now, "m3", ClientMsg::MaskedStart { round, len: 13 }).unwrap_err();
    assert!(matches!(err, Violation::UnexpectedMessage { phase: "dropped", .. }), "{err}");
    // An outsider is not in the cohort.
    assert!(h.coord.handle(h.now, "intruder", ClientMsg::MaskedEnd { round }).is_err());
    // m3 was disconnected by the violations; the others finish.
    h.coord.member_disconnected(h.now, "m3");
    h.run(20);
    assert_eq!(h.finished.len(), 1, "{:?}", h.aborted);
    assert_eq!(h.finished[0].contributors, vec!["m0", "m1", "m2"]);
    assert!(h.violations.iter().any(|(m, _)| m == "m3"));
}

/// A straggler past the round deadline is excluded and the round completes
/// without it; its late message for that round is rejected (no effect on the
/// next round); failing rounds in a row marks it unhealthy, yet it keeps its
/// place in later cohorts.
#[test]
fn stragglers_are_excluded_late_messages_rejected_and_unhealthy_members_kept() {
    let mut c = cfg(3, true);
    c.rounds = 3;
    let mut h = Harness::new(4, c);
    h.stall_before.insert("m3".into(), "masked_start");
    h.connect_all();
    for _ in 0..20 {
        while h.pump() {}
        if !h.finished.is_empty() {
            break;
        }
        h.now = h.coord.next_deadline().unwrap_or(h.now) + 1;
        h.coord.tick(h.now);
    }
    let first = h.finished[0].clone();
    assert_eq!(first.contributors, vec!["m0", "m1", "m2"], "the straggler is not in the aggregate");
    assert!(first.dropped.contains(&"m3".to_string()));
    let late = h.coord.handle(h.now, "m3", ClientMsg::MaskedStart { round: first.round, len: 13 });
    assert!(matches!(late, Err(Violation::WrongRound { got, .. }) if got == first.round), "{late:?}");
    h.run(50);
    assert_eq!(h.finished.len(), 3, "{:?}", h.aborted);
    for o in &h.finished {
        assert!(o.cohort.contains(&"m3".to_string()), "an unhealthy member keeps its place");
        assert!(!o.contributors.contains(&"m3".to_string()));
    }
    assert!(h.trace.iter().any(|t| t == "event:MemberUnhealthy"), "{:?}", h.trace);
    assert_global(&h, 3, &[0, 1, 2], 1e-4);
}

#[test]
fn second_update_in_a_round_is_a_violation() {
    let mut c = cfg(2, false);
    c.rounds = 1;
    let mut h = Harness::new(3, c);
    h.connect_all();
    while h.pump() {}
    // The round is in evaluation now; a replayed update is out of phase.
    let round = h.finished.first().map(|o| o.round).unwrap_or(1);
    let again = h.sent["m0"].iter().find(|m| matches!(m, ClientMsg::PlainStart { .. })).cloned().unwrap();
    let r = h.coord.handle(h.now, "m0", again);
    assert!(r.is_err(), "replayed update accepted in round {round}");
}

/// Issue #17, retry differencing: when the step after the secure sum
/// failed, the round was retried on the same model and training seed with a
/// new cohort, and two sums over cohorts one member apart give that member's
/// update. Any member could force the failure (here: a total weight of
/// zero). Now no second round trains on that model: the run stops, saying why.
#[test]
fn a_sum_that_cannot_be_applied_stops_the_run_instead_of_a_retry() {
    let mut h = Harness::new(3, cfg(2, true));
    h.zero_examples = true;
    h.connect_all();
    h.run(20);
    assert!(h.finished.is_empty());
    assert_eq!(h.aborted.len(), 1, "{:?}", h.aborted);
    assert!(h.aborted[0].1.contains("weight"), "{:?}", h.aborted);
    let starts = h.trace.iter().filter(|t| *t == "send:round_start").count();
    assert_eq!(starts, 3, "a second round started on the same model: {:?}", h.trace);
    assert!(h.coord.is_finished());
    let stop = h.trace.iter().find(|t| t.starts_with("event:run_finished")).expect("the run stops");
    assert!(stop.contains("cannot be applied") && stop.contains("same model"), "{stop}");
}

/// Issue #17: one member that sends `MaskedStart` and then goes silent
/// (connected, so no disconnect tells the coordinator) held the only stream
/// slot until the round's deadline, and every other upload with it. Its
/// stream is now abandoned after `stream_idle_ms`: it counts as dropped and
/// the others stream, well before the deadline.
#[test]
fn a_stalled_masked_stream_is_abandoned_and_the_others_upload() {
    let mut c = cfg(4, true);
    c.stream_slots = 1;
    c.rounds = 1;
    let mut h = Harness::new(5, c);
    // m0 streams first (members are pumped in name order), then stalls.
    h.stall_before.insert("m0".into(), "masked_chunk");
    h.connect_all();
    h.run(40);
    assert_eq!(h.finished.len(), 1, "aborted: {:?}", h.aborted);
    let round = &h.finished[0];
    assert_eq!(round.contributors, vec!["m1", "m2", "m3", "m4"]);
    assert!(round.dropped.contains(&"m0".to_string()), "{:?}", round.dropped);
    assert!(h.violations.iter().any(|(m, why)| m == "m0" && why.contains("no progress")), "{:?}", h.violations);
    // Finished by the idle timeout, not by the round's deadline.
    let idle = h.coord.config().stream_idle_ms;
    assert!(h.finished_at[0] < h.coord.config().round_deadline_ms, "finished at {} ms", h.finished_at[0]);
    assert!(h.finished_at[0] >= idle, "finished at {} ms, before the stall could be noticed", h.finished_at[0]);
}

#[test]
fn members_refuse_unsafe_rounds() {
    let pki = participant::test_pki::TestPki::new("c");
    let mut p =
        Participant::new("m0", Policy::default(), ChaCha20Rng::seed_from_u64(1)).with_identity(pki.identity("m0"));
    p.handle(AggregatorMsg::Welcome { run_id: RunId([1; 16]), member: "m0".into() }).unwrap();
    let mut settings = cfg(2, true);
    settings.secure = None;
    let plain =
        tessera_core::RoundSettings { train: settings.train.clone(), secagg: None, dp: None, eval: None, stats: None };
    let start = |round, s: tessera_core::RoundSettings, cohort: Vec<&str>| AggregatorMsg::RoundStart {
        round,
        settings: s,
        cohort: cohort.into_iter().map(String::from).collect(),
        party: 0,
    };
    // Plaintext is refused by a daemon policy.
    assert_eq!(p.handle(start(1, plain.clone(), vec!["m0", "m1"])), Err(participant::Refusal::PlaintextRefused));
    // A threshold below a strict majority is refused.
    let mut s = plain.clone();
    s.secagg = Some(tessera_core::SecAggSettings { threshold: 1, modulus_bits: 32, clip_range: 1.0, neighbours: None });
    assert!(matches!(p.handle(start(2, s.clone(), vec!["m0", "m1", "m2"])), Err(participant::Refusal::BadCohort(_))));
    // A replayed (old) round is refused.
    assert!(matches!(p.handle(start(1, s.clone(), vec!["m0", "m1", "m2"])), Err(participant::Refusal::Replay { .. })));
    // Exactly two thirds of the neighbourhood is a strict majority but not
    // safe against split dropout views: refused, with the typed reason.
    let mut two_thirds = s.clone();
    if let Some(sa) = two_thirds.secagg.as_mut() {
        sa.threshold = 2;
    }
    let mut p23 = Participant::new("m0", Policy::default(), ChaCha20Rng::seed_from_u64(4));
    p23.handle(AggregatorMsg::Welcome { run_id: RunId([1; 16]), member: "m0".into() }).unwrap();
    assert_eq!(
        p23.handle(start(1, two_thirds, vec!["m0", "m1", "m2"])),
        Err(CohortProblem::UnsafeThreshold { threshold: 2, neighbourhood: 3 }.into())
    );
    // A SecAgg+ degree a few colluders could fill: refused even with a
    // threshold that is safe for the announced neighbourhood.
    let forty: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
    let mut sparse = s.clone();
    if let Some(sa) = sparse.secagg.as_mut() {
        sa.neighbours = Some(2);
        sa.threshold = 3;
    }
    let mut p40 = Participant::new("m00", Policy::default(), ChaCha20Rng::seed_from_u64(2));
    p40.handle(AggregatorMsg::Welcome { run_id: RunId([1; 16]), member: "m00".into() }).unwrap();
    let forty_start =
        AggregatorMsg::RoundStart { round: 1, settings: sparse.clone(), cohort: forty.clone().into(), party: 0 };
    assert_eq!(p40.handle(forty_start), Err(CohortProblem::DegreeTooLow { neighbours: 2, minimum: 12 }.into()));
    // The member's own policy can ask for more than two thirds.
    let strict = Policy { min_threshold_fraction: 0.9, ..Policy::default() };
    let mut p_strict = Participant::new("m00", strict, ChaCha20Rng::seed_from_u64(3));
    p_strict.handle(AggregatorMsg::Welcome { run_id: RunId([1; 16]), member: "m00".into() }).unwrap();
    if let Some(sa) = sparse.secagg.as_mut() {
        sa.neighbours = Some(12);
        sa.threshold = 10; // > 2/3 of 13, but not > 0.9 of it
    }
    let strict_start = AggregatorMsg::RoundStart { round: 1, settings: sparse, cohort: forty.into(), party: 0 };
    assert_eq!(
        p_strict.handle(strict_start),
        Err(CohortProblem::UnsafeThreshold { threshold: 10, neighbourhood: 13 }.into())
    );
    // A model with NaN is refused.
    if let Some(sa) = s.secagg.as_mut() {
        sa.threshold = 3;
    }
    p.handle(start(3, s, vec!["m0", "m1", "m2"])).unwrap();
    let mut nan = initial();
    nan.tensors[0].data[4] = f32::NAN;
    let msgs: Vec<_> = model_messages(3, ModelPurpose::Train, &nan, 4).collect();
    let last = msgs.len() - 1;
    for (i, m) in msgs.into_iter().enumerate() {
        let r = p.handle(m);
        if i == last {
            assert!(matches!(r, Err(participant::Refusal::Model(_))), "{r:?}");
        }
    }
}

mod admission;
mod averaging;
mod cohort;
mod dp;
mod eval;
mod robust;
mod secure;
mod signed;
mod statistics;
