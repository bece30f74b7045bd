//! The member's side of the protocol as a sans-IO state machine.
//!
//! The [`Participant`] is fed the aggregator's messages and the results of
//! local work (training, evaluation) and answers with [`Output`]s: messages
//! to send, work to run, events to log. It never trains itself: the driver
//! runs `Train` on its worker and calls [`Participant::training_done`]. The
//! participant is also the member's last line of defence: it refuses what a
//! misbehaving aggregator asks for (a replayed round, a cohort below its
//! threshold, both shares of one peer, a model with NaN) and records why.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use tessera_core::message::ModelPurpose;
use tessera_core::round::{RoundSettings, TrainSettings};
use tessera_core::stream::{ModelAssembler, StreamError};
use tessera_core::{AggregatorMsg, ClientMsg, EvalMetrics, ModelParams, PartyId, RunId};

/// What the member's policy allows, independent of what the aggregator says.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Accept rounds without secure aggregation. Only the simulator's
    /// research mode sets this; the daemon refuses plaintext rounds.
    pub allow_plaintext: bool,
    /// Largest model (values) the member agrees to receive.
    pub max_model_values: u64,
    /// Smallest cohort the member will mask its update in.
    pub min_cohort: u32,
    /// Values per streamed chunk.
    pub chunk_values: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self { allow_plaintext: false, max_model_values: 1 << 31, min_cohort: 2, chunk_values: 1 << 20 }
    }
}

/// The result of local training the driver hands back.
#[derive(Clone, Debug)]
pub struct TrainedUpdate {
    /// Trainable parameters after local training.
    pub params: ModelParams,
    pub num_examples: u64,
    pub mean_loss: f64,
}

#[derive(Clone, Debug)]
pub enum Output {
    Send(ClientMsg),
    /// Train on `model` with `settings` and call `training_done`.
    Train {
        round: u64,
        model: ModelParams,
        settings: TrainSettings,
    },
    /// Evaluate `model` on the held-out split and call `evaluation_done`.
    Evaluate {
        round: u64,
        model: ModelParams,
    },
    Event(Event),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Welcomed {
        run_id: RunId,
    },
    RoundJoined {
        round: u64,
        cohort_size: usize,
    },
    UpdateSent {
        round: u64,
        values: u64,
    },
    /// The member refused something the aggregator asked; see `Refusal`.
    Refused {
        round: Option<u64>,
        reason: String,
    },
    RoundEnded {
        round: u64,
        accepted: bool,
        reason: String,
    },
    Shutdown {
        reason: String,
    },
}

/// Why the member refused a message. Each is logged and recorded; the
/// member does not take part in the affected round.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Refusal {
    #[error("round {got} is not newer than round {last} already seen (replay?)")]
    Replay { got: u64, last: u64 },
    #[error("message `{kind}` is not expected now")]
    Unexpected { kind: &'static str },
    #[error("round is not securely aggregated and this member requires it")]
    PlaintextRefused,
    #[error("cohort is unusable: {0}")]
    BadCohort(String),
    #[error("model stream: {0}")]
    Model(#[from] StreamError),
    #[error("secure aggregation: {0}")]
    SecAgg(String),
    #[error("local update: {0}")]
    Update(String),
    #[error("message before Welcome")]
    NotWelcomed,
}

/// State of the round the member is part of.
struct ActiveRound {
    round: u64,
    settings: RoundSettings,
    cohort: Vec<String>,
    party: PartyId,
    base: Option<ModelParams>,
    secagg: Option<tessera_secagg::ClientSession>,
    shares_received: bool,
    trained: Option<TrainedUpdate>,
    sent: bool,
}

/// An update being streamed out. Chunks are quantized, masked and handed
/// out one at a time from `poll_output`, so the masked vector never exists
/// in full next to the update.
struct Upload {
    round: u64,
    len: u64,
    next: u64,
    started: bool,
    body: UploadBody,
}

enum UploadBody {
    Masked(tessera_secagg::update::UpdateEncoder),
    /// Research mode: `weight · Δ` in plaintext.
    Plain {
        delta: ModelParams,
        weight: f64,
    },
}

pub struct Participant<R> {
    member: String,
    upload: Option<Upload>,
    /// Outputs queued before the upload began; they go out first.
    before_upload: usize,
    policy: Policy,
    rng: R,
    run_id: Option<RunId>,
    last_round: u64,
    round: Option<ActiveRound>,
    assembler: Option<ModelAssembler>,
    out: VecDeque<Output>,
}

impl<R: RngCore + CryptoRng> Participant<R> {
    /// `rng` must be a CSPRNG: it draws key pairs, self-mask seeds and the
    /// stochastic rounding of the update.
    pub fn new(member: impl Into<String>, policy: Policy, rng: R) -> Self {
        Self {
            member: member.into(),
            upload: None,
            before_upload: 0,
            policy,
            rng,
            run_id: None,
            last_round: 0,
            round: None,
            assembler: None,
            out: VecDeque::new(),
        }
    }

    /// The first message on every connection.
    pub fn hello(&mut self) {
        let msg = ClientMsg::Hello { member: self.member.clone(), protocol_version: tessera_core::PROTOCOL_VERSION };
        self.out.push_back(Output::Send(msg));
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        if self.before_upload > 0 {
            self.before_upload -= 1;
            return self.out.pop_front();
        }
        if self.upload.is_some() {
            match self.next_upload_message() {
                Ok(Some(msg)) => return Some(Output::Send(msg)),
                Ok(None) => {}
                Err(e) => {
                    self.upload = None;
                    let round = self.round.as_ref().map(|r| r.round);
                    self.out.push_back(Output::Event(Event::Refused { round, reason: e.to_string() }));
                    if let Some(r) = self.round.take() {
                        self.out.push_back(Output::Send(ClientMsg::Decline { round: r.round, reason: e.to_string() }));
                    }
                }
            }
        }
        self.out.pop_front()
    }

    /// The next message of the upload in progress, `None` when it is done.
    fn next_upload_message(&mut self) -> Result<Option<ClientMsg>, Refusal> {
        let Some(up) = self.upload.as_mut() else { return Ok(None) };
        let round = up.round;
        let masked = matches!(up.body, UploadBody::Masked(_));
        if !up.started {
            up.started = true;
            return Ok(Some(match &up.body {
                UploadBody::Masked(_) => ClientMsg::MaskedStart { round, len: up.len },
                UploadBody::Plain { weight, .. } => ClientMsg::PlainStart { round, len: up.len, weight: *weight },
            }));
        }
        if up.next >= up.len {
            let values = up.len;
            self.upload = None;
            self.out.push_front(Output::Event(Event::UpdateSent { round, values }));
            return Ok(Some(if masked { ClientMsg::MaskedEnd { round } } else { ClientMsg::PlainEnd { round } }));
        }
        let offset = up.next;
        let n = (self.policy.chunk_values as u64).min(up.len - offset) as usize;
        up.next += n as u64;
        match &up.body {
            UploadBody::Masked(encoder) => {
                // The round may have ended under us; then the upload is void.
                let session = match self.round.as_ref() {
                    Some(r) if r.round == round => r.secagg.as_ref().ok_or(Refusal::Unexpected { kind: "update" })?,
                    _ => {
                        self.upload = None;
                        return Ok(None);
                    }
                };
                let mut values = vec![0u32; n];
                encoder.encode(offset, &mut values, &mut self.rng).map_err(|e| Refusal::Update(e.to_string()))?;
                session.mask_chunk(offset, &mut values).map_err(|e| Refusal::SecAgg(e.to_string()))?;
                Ok(Some(ClientMsg::MaskedChunk { round, offset, values }))
            }
            UploadBody::Plain { delta, weight } => {
                let mut values = vec![0f32; n];
                delta.read_flat(offset as usize, &mut values).map_err(|e| Refusal::Update(e.to_string()))?;
                values.iter_mut().for_each(|v| *v *= *weight as f32);
                Ok(Some(ClientMsg::PlainChunk { round, offset, values }))
            }
        }
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    /// Handle one aggregator message. A refusal abandons the current round
    /// (the member declines it) but keeps the connection.
    pub fn handle(&mut self, msg: AggregatorMsg) -> Result<(), Refusal> {
        let round_hint = round_of(&msg);
        let res = self.dispatch(msg);
        if let Err(e) = &res {
            self.out.push_back(Output::Event(Event::Refused { round: round_hint, reason: e.to_string() }));
            if let Some(r) = self.round.take() {
                self.out.push_back(Output::Send(ClientMsg::Decline { round: r.round, reason: e.to_string() }));
            }
            self.assembler = None;
            self.upload = None;
        }
        res
    }

    fn dispatch(&mut self, msg: AggregatorMsg) -> Result<(), Refusal> {
        let kind = msg.kind();
        match msg {
            AggregatorMsg::Welcome { run_id, .. } => {
                if self.run_id.is_some_and(|r| r != run_id) {
                    // A new run (e.g. the operator started over): rounds restart.
                    self.last_round = 0;
                }
                self.run_id = Some(run_id);
                self.out.push_back(Output::Event(Event::Welcomed { run_id }));
                Ok(())
            }
            AggregatorMsg::RoundStart { round, settings, cohort, party } => {
                self.run_id.ok_or(Refusal::NotWelcomed)?;
                if round <= self.last_round {
                    return Err(Refusal::Replay { got: round, last: self.last_round });
                }
                self.last_round = round;
                self.round = None;
                self.check_cohort(&settings, &cohort, party)?;
                self.out.push_back(Output::Event(Event::RoundJoined { round, cohort_size: cohort.len() }));
                self.round = Some(ActiveRound {
                    round,
                    settings,
                    cohort,
                    party,
                    base: None,
                    secagg: None,
                    shares_received: false,
                    trained: None,
                    sent: false,
                });
                Ok(())
            }
            AggregatorMsg::ModelStart { round, purpose, layout } => {
                if purpose == ModelPurpose::Train && self.round.as_ref().is_none_or(|r| r.round != round) {
                    return Err(Refusal::Unexpected { kind });
                }
                self.assembler = Some(ModelAssembler::start(round, purpose, &layout, self.policy.max_model_values)?);
                Ok(())
            }
            AggregatorMsg::ModelChunk { round, offset, values } => {
                let asm = self.assembler.as_mut().ok_or(Refusal::Unexpected { kind })?;
                asm.chunk(round, offset, &values)?;
                Ok(())
            }
            AggregatorMsg::ModelEnd { round, digest } => {
                let asm = self.assembler.take().ok_or(Refusal::Unexpected { kind })?;
                let purpose = asm.purpose();
                let model = asm.finish(round, &digest)?;
                match purpose {
                    ModelPurpose::Evaluate => self.out.push_back(Output::Evaluate { round, model }),
                    ModelPurpose::Train => self.model_ready(round, model)?,
                }
                Ok(())
            }
            AggregatorMsg::CohortKeys { round, keys } => {
                let r = active(&mut self.round, round, kind)?;
                let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
                let shares =
                    session.on_cohort_keys(&keys, &mut self.rng).map_err(|e| Refusal::SecAgg(e.to_string()))?;
                self.out.push_back(Output::Send(ClientMsg::ShareKeys { round, shares }));
                Ok(())
            }
            AggregatorMsg::ForwardShares { round, shares } => {
                let r = active(&mut self.round, round, kind)?;
                let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
                session.on_forwarded_shares(&shares).map_err(|e| Refusal::SecAgg(e.to_string()))?;
                r.shares_received = true;
                self.maybe_send_update()
            }
            AggregatorMsg::UnmaskRequest { round, survivors, dropped } => {
                let r = active(&mut self.round, round, kind)?;
                if !r.sent {
                    return Err(Refusal::Unexpected { kind });
                }
                let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
                let reveals =
                    session.on_unmask_request(&survivors, &dropped).map_err(|e| Refusal::SecAgg(e.to_string()))?;
                self.out.push_back(Output::Send(ClientMsg::UnmaskShares { round, reveals }));
                Ok(())
            }
            AggregatorMsg::RoundEnd { round, accepted, reason } => {
                if self.round.as_ref().is_some_and(|r| r.round == round) {
                    self.round = None;
                }
                self.out.push_back(Output::Event(Event::RoundEnded { round, accepted, reason }));
                Ok(())
            }
            AggregatorMsg::Shutdown { reason } => {
                self.round = None;
                self.out.push_back(Output::Event(Event::Shutdown { reason }));
                Ok(())
            }
        }
    }

    fn check_cohort(&self, settings: &RoundSettings, cohort: &[String], party: PartyId) -> Result<(), Refusal> {
        if cohort.get(party as usize).is_none_or(|m| m != &self.member) {
            return Err(Refusal::BadCohort("this member is not at its announced position".into()));
        }
        if cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Refusal::BadCohort("member list is not sorted and unique".into()));
        }
        match &settings.secagg {
            None if !self.policy.allow_plaintext => Err(Refusal::PlaintextRefused),
            None => Ok(()),
            Some(s) => {
                let n = cohort.len() as u32;
                if n < self.policy.min_cohort {
                    return Err(Refusal::BadCohort(format!("{n} members, policy minimum {}", self.policy.min_cohort)));
                }
                let neighbourhood = s.neighbours.map_or(n, |k| (k + 1).min(n));
                if s.threshold > neighbourhood || s.threshold < tessera_secagg::min_threshold(neighbourhood) {
                    return Err(Refusal::BadCohort(format!(
                        "threshold {} is unsafe for a neighbourhood of {neighbourhood}",
                        s.threshold
                    )));
                }
                Ok(())
            }
        }
    }

    fn model_ready(&mut self, round: u64, model: ModelParams) -> Result<(), Refusal> {
        let run_id = self.run_id.ok_or(Refusal::NotWelcomed)?;
        let r = active(&mut self.round, round, "model_end")?;
        if let Some(s) = &r.settings.secagg {
            let len = tessera_secagg::update::vector_len(&model.layout());
            let ctx = tessera_secagg::RoundContext::new(run_id, round, &r.cohort, s.clone(), len)
                .map_err(|e| Refusal::SecAgg(e.to_string()))?;
            let (session, keys) = tessera_secagg::ClientSession::new(ctx, r.party, &mut self.rng)
                .map_err(|e| Refusal::SecAgg(e.to_string()))?;
            r.secagg = Some(session);
            self.out.push_back(Output::Send(ClientMsg::AdvertiseKeys { round, keys }));
        }
        let r = active(&mut self.round, round, "model_end")?;
        r.base = Some(model.clone());
        let settings = r.settings.train.clone();
        self.out.push_back(Output::Train { round, model, settings });
        Ok(())
    }

    /// The driver finished local training for `round`.
    pub fn training_done(&mut self, round: u64, result: Result<TrainedUpdate, String>) {
        let outcome = match result {
            Err(e) => Err(Refusal::Update(e)),
            Ok(update) => match self.round.as_mut() {
                Some(r) if r.round == round => {
                    r.trained = Some(update);
                    self.maybe_send_update()
                }
                // The round ended (or was abandoned) while we trained.
                _ => Ok(()),
            },
        };
        if let Err(e) = outcome {
            self.out.push_back(Output::Event(Event::Refused { round: Some(round), reason: e.to_string() }));
            if let Some(r) = self.round.take() {
                self.out.push_back(Output::Send(ClientMsg::Decline { round: r.round, reason: e.to_string() }));
            }
        }
    }

    /// The driver finished evaluating the model sent for `round`.
    pub fn evaluation_done(&mut self, round: u64, metrics: Result<EvalMetrics, String>) {
        match metrics {
            Ok(metrics) => self.out.push_back(Output::Send(ClientMsg::EvalReport { round, metrics })),
            Err(e) => self.out.push_back(Output::Event(Event::Refused { round: Some(round), reason: e })),
        }
    }

    /// Send the update once it is trained and, under secure aggregation,
    /// once the shares are in place.
    fn maybe_send_update(&mut self) -> Result<(), Refusal> {
        let Some(r) = self.round.as_mut() else { return Ok(()) };
        if r.sent || r.trained.is_none() || (r.secagg.is_some() && !r.shares_received) {
            return Ok(());
        }
        let trained = r.trained.take().expect("checked above");
        let base = r.base.as_ref().ok_or(Refusal::Unexpected { kind: "update" })?;
        let delta = trained.params.delta_from(base).map_err(|e| Refusal::Update(e.to_string()))?;
        delta.check_finite().map_err(|e| Refusal::Update(e.to_string()))?;
        let weight = tessera_secagg::update::example_weight(trained.num_examples, r.settings.train.example_weight_cap);
        let round = r.round;
        let body = match (&r.settings.secagg, &r.secagg) {
            (Some(s), Some(_)) => UploadBody::Masked(
                tessera_secagg::update::UpdateEncoder::new(s, r.cohort.len() as u32, &delta, weight)
                    .map_err(|e| Refusal::Update(e.to_string()))?,
            ),
            (None, _) => UploadBody::Plain { delta, weight },
            (Some(_), None) => return Err(Refusal::Unexpected { kind: "update" }),
        };
        let len = match &body {
            UploadBody::Masked(e) => e.len(),
            UploadBody::Plain { delta, .. } => delta.numel() as u64,
        };
        r.base = None;
        self.before_upload = self.out.len();
        self.upload = Some(Upload { round, len, next: 0, started: false, body });
        if let Some(r) = self.round.as_mut() {
            r.sent = true;
        }
        Ok(())
    }
}

fn active<'a>(
    slot: &'a mut Option<ActiveRound>,
    round: u64,
    kind: &'static str,
) -> Result<&'a mut ActiveRound, Refusal> {
    match slot.as_mut() {
        Some(r) if r.round == round => Ok(r),
        _ => Err(Refusal::Unexpected { kind }),
    }
}

fn round_of(msg: &AggregatorMsg) -> Option<u64> {
    match msg {
        AggregatorMsg::Welcome { .. } | AggregatorMsg::Shutdown { .. } => None,
        AggregatorMsg::RoundStart { round, .. }
        | AggregatorMsg::ModelStart { round, .. }
        | AggregatorMsg::ModelChunk { round, .. }
        | AggregatorMsg::ModelEnd { round, .. }
        | AggregatorMsg::CohortKeys { round, .. }
        | AggregatorMsg::ForwardShares { round, .. }
        | AggregatorMsg::UnmaskRequest { round, .. }
        | AggregatorMsg::RoundEnd { round, .. } => Some(*round),
    }
}
