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
use tessera_core::{
    AggregatorMsg, ClientMsg, EvalMetrics, ModelAssembler, ModelParams, ModelPurpose, NoisePlacement, PartyId,
    PrivacyUnit, RoundSettings, RunId, SharedList,
};
use tessera_privacy::{DiscreteGaussian, GaussianSpend};
use tessera_secagg::ValueCoding;

use crate::derive;

mod identity;
mod output;
mod privatize;
mod refusal;
mod secure;
mod statistics;

#[cfg(test)]
pub(crate) use identity::test_pki;
pub use identity::{
    AdvertProblem, AdvertSigner, CERTIFICATE_CACHE_SECS, CertificateCache, MemberIdentity, MemberNameOf, SignError,
    VerifiedKey,
};
pub use output::{Event, Output};
pub use refusal::{BudgetRefusal, CohortProblem, LocalFailure, PrivacyRefusal, Refusal, UpdateError};
pub use statistics::StatisticsShape;

use privatize::{RecordEvalNoise, append_record_evaluation, clamp_to_range, privatize_update};

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
    /// Refuse a Shamir threshold at or below this fraction of the
    /// neighbourhood. Values under 2/3 do not lower the floor: a threshold at
    /// or below two thirds is always refused (`tessera_secagg::min_threshold`).
    pub min_threshold_fraction: f64,
    /// Values per streamed chunk.
    pub chunk_values: usize,
    /// Refuse rounds whose release is not differentially private.
    pub require_dp: bool,
    /// Threads that mask one chunk under secure aggregation (bit-identical
    /// output for any count). The daemon uses every core; the simulator,
    /// with many members in one process, sets 1.
    pub mask_threads: std::num::NonZeroUsize,
    /// What this member counts DP statistics over (its declared schema and
    /// classes); `None` refuses every statistics round.
    pub statistics: Option<StatisticsShape>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_plaintext: false,
            max_model_values: 1 << 31,
            min_cohort: 2,
            min_threshold_fraction: 2.0 / 3.0,
            chunk_values: 1 << 20,
            require_dp: false,
            mask_threads: tessera_secagg::default_mask_threads(),
            statistics: None,
        }
    }
}

/// The member's randomness: a CSPRNG that is told when a round starts,
/// before anything of the round is drawn. A daemon's CSPRNG, seeded from the
/// OS, ignores the notice. A bit-reproducible run may reseed from the
/// member and the round's seed, so a retried or resumed round draws exactly
/// what an uninterrupted run drew; that choice is the driver's, made by the
/// type it picks, and the participant has no switch for it.
pub trait MemberRng: RngCore + CryptoRng {
    /// A round with training seed `round_seed` was joined by `member`.
    fn round_started(&mut self, member: &str, round_seed: u64) {
        let _ = (member, round_seed);
    }
}

impl MemberRng for rand_chacha::ChaCha20Rng {}

/// The member's own privacy budget, whatever the aggregator says. `charge`
/// must make the spend durable before returning `Ok` (write-ahead): the
/// participant produces nothing trained from private data until it has.
/// A charge counts as spent from then on, a crash included, unless
/// `refund` takes it back.
pub trait PrivacyGuard: Send {
    /// Charge `spend` for `round`, or say why the budget refuses it.
    fn charge(&mut self, round: u64, spend: &GaussianSpend) -> Result<(), BudgetRefusal>;
    /// The round's update is about to leave: its charge can no longer be
    /// taken back. Called before the first byte of the update is sent.
    fn released(&mut self, _round: u64) -> Result<(), BudgetRefusal> {
        Ok(())
    }
    /// The round ended before anything trained on private data left this
    /// member (its update was never sent): take the charge back. Returns
    /// the epsilon given back, if any.
    fn refund(&mut self, _round: u64) -> Result<Option<f64>, BudgetRefusal> {
        Ok(None)
    }
}

/// The result of local training the driver hands back (defined in
/// `tessera-core`, so that the learning crates can return it without
/// depending on the protocol).
pub use tessera_core::TrainedUpdate;

/// State of the round the member is part of.
struct ActiveRound {
    round: u64,
    settings: RoundSettings,
    /// Shared, not copied: in one process every member holds the same list.
    cohort: SharedList<String>,
    party: PartyId,
    base: Option<ModelParams>,
    secagg: Option<tessera_secagg::ClientSession>,
    /// Neighbours' certificate keys from their checked advertisements.
    neighbour_keys: std::collections::BTreeMap<PartyId, VerifiedKey>,
    shares_received: bool,
    trained: Option<TrainedUpdate>,
    /// Private evaluation: the member's evaluation of the round's starting
    /// model, which rides inside its update.
    evaluated: Option<EvalMetrics>,
    sent: bool,
    /// The round's training model arrived; a second one is refused, since
    /// re-keying mid-round would open a second secure-aggregation session
    /// whose reveals are not checked against the first one's.
    model_received: bool,
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
    /// The encoder, and the member's discrete Gaussian share under
    /// distributed DP (added to every value element before masking).
    Masked(Box<tessera_secagg::UpdateEncoder>, Option<DiscreteGaussian>),
    /// Research mode: `weight · Δ` in plaintext.
    Plain { delta: ModelParams, weight: f64 },
}

/// The member's side of the protocol: see the module documentation.
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
    guard: Option<Box<dyn PrivacyGuard>>,
    identity: Option<MemberIdentity>,
    /// Neighbours' certificates validated in earlier rounds (or by other
    /// members of the process, when the cache is shared).
    certificates: CertificateCache,
    /// Announced in `Hello`, checked at admission.
    settings: tessera_core::SettingsDigest,
    /// The round whose charge can still be taken back: charged, and its
    /// update has not begun to leave.
    charged: Option<u64>,
    /// Record-level private evaluation's noise, kept while the round's spend
    /// and the block stay the same (a whole run): the multiplier and the
    /// sampler's table are computed once.
    record_eval_noise: Option<RecordEvalNoise>,
}

impl<R: MemberRng> Participant<R> {
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
            guard: None,
            identity: None,
            certificates: CertificateCache::default(),
            settings: tessera_core::SettingsDigest::default(),
            charged: None,
            record_eval_noise: None,
        }
    }

    /// Take back `round`'s charge, if the guard holds one for it.
    fn refund(&mut self, round: u64) {
        let Some(g) = self.guard.as_mut() else { return };
        match g.refund(round) {
            Ok(Some(epsilon)) => self.out.push_back(Output::Event(Event::PrivacyRefunded { round, epsilon })),
            Ok(None) => {}
            // The charge stays counted: conservative, and said.
            Err(e) => self.out.push_back(Output::Event(Event::Refused { round: Some(round), reason: e.to_string() })),
        }
    }

    /// The digest of this member's `[model]` and schema
    /// ([`settings_digest`](crate::settings_digest)), announced in `Hello`.
    /// An aggregator that checks settings refuses a member without one.
    pub fn with_settings(mut self, settings: tessera_core::SettingsDigest) -> Self {
        self.settings = settings;
        self
    }

    /// The member's consortium identity: signs its key advertisements and
    /// checks its neighbours'. Without one, the member refuses every
    /// securely aggregated round ([`Refusal::NoIdentity`]).
    pub fn with_identity(mut self, identity: MemberIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Share `cache` of validated certificates with other members of this
    /// process (the simulator): a certificate is then validated once per
    /// process, not once per member that neighbours it. Only the chain
    /// validation is shared; each member still checks the name and the
    /// signature of every advertisement itself.
    pub fn with_certificate_cache(mut self, cache: CertificateCache) -> Self {
        self.certificates = cache;
        self
    }

    /// Enforce the member's own privacy budget (and require DP in every round).
    pub fn with_privacy_guard(mut self, guard: Box<dyn PrivacyGuard>) -> Self {
        self.guard = Some(guard);
        self.policy.require_dp = true;
        self
    }

    /// The first message on every connection.
    pub fn hello(&mut self) {
        let msg = ClientMsg::Hello {
            member: self.member.clone(),
            protocol_version: tessera_core::PROTOCOL_VERSION,
            settings: self.settings,
        };
        self.out.push_back(Output::Send(msg));
    }

    /// The next thing for the driver to do. Masked chunks are produced
    /// here, one at a time, so the masked vector never exists in full.
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
        let masked = matches!(up.body, UploadBody::Masked(..));
        if !up.started {
            // Past this point the charge is final: commit it first.
            if let Some(g) = self.guard.as_mut() {
                g.released(round).map_err(PrivacyRefusal::Budget)?;
            }
            if self.charged == Some(round) {
                self.charged = None;
            }
            up.started = true;
            return Ok(Some(match &up.body {
                UploadBody::Masked(..) => ClientMsg::MaskedStart { round, len: up.len },
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
            UploadBody::Masked(encoder, noise) => {
                // The round may have ended under us; then the upload is void.
                let session = match self.round.as_ref() {
                    Some(r) if r.round == round => r.secagg.as_ref().ok_or(Refusal::Unexpected { kind: "update" })?,
                    _ => {
                        self.upload = None;
                        return Ok(None);
                    }
                };
                let mut values = vec![0u32; n];
                encoder.encode(offset, &mut values, &mut self.rng).map_err(UpdateError::Encoding)?;
                if let Some(dg) = noise {
                    // Noise goes on the update values only, not on the weight.
                    let k = (encoder.value_len().saturating_sub(offset) as usize).min(n);
                    let mut z = vec![0i64; k];
                    dg.fill(&mut z, &mut self.rng);
                    let bits = session.context().settings().modulus_bits;
                    tessera_secagg::add_ring_noise(&mut values[..k], &z, bits).map_err(UpdateError::Encoding)?;
                }
                session.mask_chunk(offset, &mut values)?;
                Ok(Some(ClientMsg::MaskedChunk { round, offset, values }))
            }
            UploadBody::Plain { delta, weight } => {
                let mut values = vec![0f32; n];
                delta.read_flat(offset as usize, &mut values).map_err(UpdateError::Params)?;
                values.iter_mut().for_each(|v| *v *= *weight as f32);
                Ok(Some(ClientMsg::PlainChunk { round, offset, values }))
            }
        }
    }

    /// The member's name.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Handle one aggregator message. A refusal abandons the current round
    /// (the member declines it) but keeps the connection.
    pub fn handle(&mut self, msg: AggregatorMsg) -> Result<(), Refusal> {
        let round_hint = msg.round();
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
        let kind = msg.kind().as_str();
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
                // A refused round is declined at once, so the aggregator
                // need not wait for this member's deadline.
                if let Err(e) = self
                    .check_cohort(&settings, &cohort, party)
                    .and_then(|()| {
                        if settings.secagg.is_some() && self.identity.is_none() {
                            Err(Refusal::NoIdentity)
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|()| self.check_statistics_request(&settings, cohort.len() as u32))
                    .and_then(|()| self.check_privacy(round, &settings))
                {
                    self.out.push_back(Output::Send(ClientMsg::Decline { round, reason: e.to_string() }));
                    return Err(e);
                }
                self.rng.round_started(&self.member, settings.train.seed);
                self.out.push_back(Output::Event(Event::RoundJoined { round, cohort_size: cohort.len() }));
                self.round = Some(ActiveRound {
                    round,
                    settings,
                    cohort,
                    party,
                    base: None,
                    model_received: false,
                    secagg: None,
                    neighbour_keys: Default::default(),
                    shares_received: false,
                    trained: None,
                    evaluated: None,
                    sent: false,
                });
                if self.round.as_ref().is_some_and(|r| r.settings.stats.is_some()) {
                    return self.statistics_round_started(round);
                }
                Ok(())
            }
            AggregatorMsg::ModelStart { round, purpose, layout } => {
                if purpose == ModelPurpose::Train && self.round.as_ref().is_none_or(|r| r.round != round) {
                    return Err(Refusal::Unexpected { kind });
                }
                let private = self.policy.require_dp || self.round.as_ref().is_some_and(|r| r.settings.dp.is_some());
                // An evaluation report in the clear is an exact statistic of
                // the member's data: never under DP (issue #18).
                if purpose == ModelPurpose::Evaluate && private {
                    return Err(PrivacyRefusal::EvaluationInTheClear.into());
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
            AggregatorMsg::GraphRoster { round, commitments } => self.on_graph_roster(round, &commitments),
            AggregatorMsg::CohortKeys { round, adverts, reveals } => self.on_cohort_keys(round, &adverts, &reveals),
            AggregatorMsg::ForwardShares { round, shares } => {
                let r = active(&mut self.round, round, kind)?;
                let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
                session.on_forwarded_shares(&shares)?;
                r.shares_received = true;
                self.maybe_send_update()
            }
            AggregatorMsg::SurvivorSet { round, survivors } => self.on_survivor_set(round, &survivors),
            AggregatorMsg::UnmaskRequest { round, signatures } => self.on_unmask_request(round, &signatures),
            AggregatorMsg::RoundEnd { round, accepted, reason } => {
                if self.round.as_ref().is_some_and(|r| r.round == round) {
                    self.round = None;
                }
                // Nothing trained on this member's data left it (its upload
                // never began, whether it declined or the round stopped
                // first): the round's charge goes back.
                if self.charged == Some(round) {
                    self.charged = None;
                    self.refund(round);
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

    fn check_cohort(
        &self,
        settings: &RoundSettings,
        cohort: &SharedList<String>,
        party: PartyId,
    ) -> Result<(), Refusal> {
        if cohort.get(party as usize).is_none_or(|m| m != &self.member) {
            return Err(CohortProblem::Misplaced.into());
        }
        // Checked once per list: members in one process share the cohort.
        if tessera_secagg::shared_cohort_digest(cohort).is_err() {
            return Err(CohortProblem::NotSortedUnique.into());
        }
        match &settings.secagg {
            None if !self.policy.allow_plaintext => Err(Refusal::PlaintextRefused),
            None => Ok(()),
            Some(s) => {
                let n = cohort.len() as u32;
                if n < self.policy.min_cohort {
                    return Err(CohortProblem::TooSmall { members: n, minimum: self.policy.min_cohort }.into());
                }
                if let Some(k) = s.neighbours {
                    let minimum = tessera_secagg::min_neighbours(n);
                    if k < minimum {
                        return Err(CohortProblem::DegreeTooLow { neighbours: k, minimum }.into());
                    }
                }
                let neighbourhood = s.neighbours.map_or(n, |k| (k + 1).min(n));
                let at_or_below_policy =
                    f64::from(s.threshold) <= self.policy.min_threshold_fraction * f64::from(neighbourhood);
                if s.threshold > neighbourhood
                    || s.threshold < tessera_secagg::min_threshold(neighbourhood)
                    || at_or_below_policy
                {
                    return Err(CohortProblem::UnsafeThreshold { threshold: s.threshold, neighbourhood }.into());
                }
                Ok(())
            }
        }
    }

    /// What the member's own policy says about the round's privacy: refuse
    /// a release that is not DP when DP is required, refuse settings it
    /// cannot account for, and charge its own budget before any training.
    fn check_privacy(&mut self, round: u64, settings: &RoundSettings) -> Result<(), Refusal> {
        let Some(dp) = &settings.dp else {
            if settings.eval.is_some() {
                return Err(PrivacyRefusal::EvaluationOutsideTheRelease.into());
            }
            return if self.policy.require_dp { Err(PrivacyRefusal::NotPrivate.into()) } else { Ok(()) };
        };
        tessera_privacy::validate(dp).map_err(PrivacyRefusal::Settings)?;
        if dp.noise == NoisePlacement::Central && self.policy.require_dp {
            // Central noise trusts the operator with the exact sum; a member
            // enforcing its own budget does not accept that.
            return Err(PrivacyRefusal::CentralNoise.into());
        }
        if dp.noise == NoisePlacement::Distributed && settings.secagg.is_none() {
            return Err(PrivacyRefusal::DistributedWithoutSecAgg.into());
        }
        if dp.unit == PrivacyUnit::Record && dp.noise == NoisePlacement::Distributed {
            // The shares are sized for one step's sensitivity, lr·C/B.
            tessera_privacy::record_step_sensitivity(dp, &settings.train).map_err(PrivacyRefusal::Settings)?;
        }
        if let Some(e) = &settings.eval {
            let bounded = e.max_examples >= 1
                && e.loss_bound.is_finite()
                && e.loss_bound > 0.0
                && e.norm.is_finite()
                && e.norm > 0.0
                && e.classes <= 1024;
            let fits = match (dp.unit, &settings.secagg) {
                (_, None) => false,
                // Client unit: inside the noised, securely summed vector,
                // with the update and the adaptive bit, within clip_norm.
                (PrivacyUnit::Client, Some(_)) => {
                    let bit = dp.adaptive.as_ref().map_or(0.0, |a| a.update_clip.hypot(a.bit_scale / 2.0));
                    bit.hypot(e.norm) <= dp.clip_norm
                }
                // Record unit: the member's own noise, and counts up to M
                // within the secure sum's value range.
                (PrivacyUnit::Record, Some(s)) => {
                    matches!(dp.noise, NoisePlacement::Local | NoisePlacement::Distributed)
                        && e.norm <= f64::from(s.clip_range)
                }
            };
            if !bounded || !fits {
                return Err(PrivacyRefusal::EvaluationOutsideTheRelease.into());
            }
        }
        if let Some(g) = self.guard.as_mut() {
            let spend = match &settings.stats {
                Some(release) => crate::statistics::statistics_spend(release),
                None => tessera_privacy::member_spend(dp, &settings.train),
            };
            g.charge(round, &spend).map_err(PrivacyRefusal::Budget)?;
            self.charged = Some(round);
        }
        Ok(())
    }

    fn model_ready(&mut self, round: u64, model: ModelParams) -> Result<(), Refusal> {
        let run_id = self.run_id.ok_or(Refusal::NotWelcomed)?;
        let r = active(&mut self.round, round, "model_end")?;
        if std::mem::replace(&mut r.model_received, true) {
            return Err(Refusal::Unexpected { kind: "second training model" });
        }
        if let Some(s) = &r.settings.secagg {
            let layout = r.settings.update_layout(&model.layout());
            let ctx = derive::shared_round_context(run_id, round, &r.cohort, s, &layout)?;
            let identity = self.identity.as_mut().ok_or(Refusal::NoIdentity)?;
            let (mut session, keys) = tessera_secagg::ClientSession::new(ctx, r.party, &mut self.rng)?;
            session.set_mask_threads(self.policy.mask_threads);
            let signature = identity.sign(&session.advert_message())?;
            let advert = tessera_core::Advertisement {
                keys,
                seed_commitment: session.seed_commitment(),
                graph_commitment: session.graph_commitment(),
                certificate: identity.certificate.clone(),
                signature,
            };
            r.secagg = Some(session);
            self.out.push_back(Output::Send(ClientMsg::AdvertiseKeys { round, advert }));
        }
        let r = active(&mut self.round, round, "model_end")?;
        if let Some(release) = r.settings.stats.clone() {
            // A statistics round: count instead of training.
            self.out.push_back(Output::Statistics { round, release: *release });
            return Ok(());
        }
        r.base = Some(model.clone());
        let settings = r.settings.train.clone();
        let dp = r.settings.dp.clone().filter(|d| d.unit == PrivacyUnit::Record);
        if r.settings.eval.is_some() {
            // Private evaluation: the model the round starts from, evaluated
            // while it trains; the result waits for the update.
            self.out.push_back(Output::Evaluate { round, model: model.clone() });
        }
        self.out.push_back(Output::Train { round, model, settings, dp });
        Ok(())
    }

    /// The driver finished local training for `round`.
    pub fn training_done(&mut self, round: u64, result: Result<TrainedUpdate, LocalFailure>) {
        let outcome = match result {
            Err(e) => Err(UpdateError::Training(e).into()),
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

    /// The driver finished evaluating the model sent for `round`. Under
    /// private evaluation the result waits to ride inside the update; a
    /// failed evaluation rides as zeros (declining would tell the aggregator,
    /// unnoised, that this member's evaluation failed).
    pub fn evaluation_done(&mut self, round: u64, metrics: Result<EvalMetrics, LocalFailure>) {
        if let Some(r) = self.round.as_mut().filter(|r| r.round == round && r.settings.eval.is_some() && !r.sent) {
            if let Err(e) = &metrics {
                self.out.push_back(Output::Event(Event::Refused { round: Some(round), reason: e.to_string() }));
            }
            r.evaluated = Some(metrics.unwrap_or_default());
            if let Err(e) = self.maybe_send_update() {
                self.out.push_back(Output::Event(Event::Refused { round: Some(round), reason: e.to_string() }));
                if let Some(r) = self.round.take() {
                    self.out.push_back(Output::Send(ClientMsg::Decline { round: r.round, reason: e.to_string() }));
                }
            }
            return;
        }
        match metrics {
            Ok(metrics) => self.out.push_back(Output::Send(ClientMsg::EvalReport { round, metrics })),
            Err(e) => self.out.push_back(Output::Event(Event::Refused { round: Some(round), reason: e.to_string() })),
        }
    }

    /// Send the update once it is trained and, under secure aggregation,
    /// once the shares are in place.
    fn maybe_send_update(&mut self) -> Result<(), Refusal> {
        let Some(r) = self.round.as_mut() else { return Ok(()) };
        let evaluating = r.settings.eval.is_some() && r.evaluated.is_none();
        if r.sent || r.trained.is_none() || evaluating || (r.secagg.is_some() && !r.shares_received) {
            return Ok(());
        }
        let trained = r.trained.take().expect("checked above");
        let base = r.base.as_ref().ok_or(Refusal::Unexpected { kind: "update" })?;
        let mut delta = trained.params.delta_from(base).map_err(UpdateError::Params)?;
        delta.check_finite().map_err(UpdateError::Params)?;
        let mut weight = tessera_secagg::example_weight(trained.num_examples, r.settings.train.example_weight_cap);
        let round = r.round;
        let cohort = r.cohort.len() as u32;
        let mut coding = ValueCoding::Offset;
        let mut share = None;
        if let Some(dp) = &r.settings.dp {
            // Under DP every member weighs 1 (an example count is itself a
            // statistic of the data).
            weight = 1.0;
            if let (PrivacyUnit::Record, Some(e), Some(m)) = (dp.unit, &r.settings.eval, &r.evaluated) {
                let noise = &mut self.record_eval_noise;
                append_record_evaluation(&mut delta, dp, &r.settings.train, e, m, noise, &mut self.rng)?;
            }
            match (dp.unit, &r.settings.secagg) {
                (PrivacyUnit::Client, _) => {
                    let eval = r.settings.eval.as_ref().zip(r.evaluated.as_ref());
                    privatize_update(&mut delta, dp, eval, &mut self.rng)?;
                }
                // Record unit, distributed noise: the one unnoised DP-SGD
                // step, each coordinate clamped to the ring's public range
                // (1-Lipschitz, so the sensitivity stays lr·C/B); the noise
                // is the share below.
                (PrivacyUnit::Record, Some(s)) if dp.noise == NoisePlacement::Distributed => {
                    clamp_to_range(&mut delta, s.clip_range);
                }
                (PrivacyUnit::Record, _) => {}
            }
            let agreed =
                derive::update_coding(&r.settings, delta.numel() as u64, cohort).map_err(PrivacyRefusal::Settings)?;
            coding = agreed.coding;
            if let Some(plan) = agreed.plan {
                share = Some(DiscreteGaussian::new(plan.share_sigma).map_err(PrivacyRefusal::Settings)?);
            }
        }
        let body = match (&r.settings.secagg, &r.secagg) {
            (Some(s), Some(_)) => UploadBody::Masked(
                Box::new(
                    tessera_secagg::UpdateEncoder::with_coding(s, cohort, &delta, weight, coding)
                        .map_err(UpdateError::Encoding)?,
                ),
                share,
            ),
            (None, _) => UploadBody::Plain { delta, weight },
            (Some(_), None) => return Err(Refusal::Unexpected { kind: "update" }),
        };
        let len = match &body {
            UploadBody::Masked(e, _) => e.len(),
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

/// What a member driver drives: the member's state machine as seen from
/// outside. [`Participant`] implements it; so may a wrapper around one (the
/// simulator's dropout model withdraws members by wrapping their outputs),
/// which keeps fault injection out of the participant and the driver.
pub trait MemberMachine {
    /// The member's name, as in its certificate.
    fn member(&self) -> &str;
    /// A connection to the aggregator opened: say hello.
    fn hello(&mut self);
    /// A message from the aggregator; `Err` says why it was refused.
    fn handle(&mut self, msg: AggregatorMsg) -> Result<(), Refusal>;
    /// The next thing to send, run or record.
    fn poll_output(&mut self) -> Option<Output>;
    /// Local training for `round` finished.
    fn training_done(&mut self, round: u64, result: Result<TrainedUpdate, LocalFailure>);
    /// Local evaluation for `round` finished.
    fn evaluation_done(&mut self, round: u64, metrics: Result<EvalMetrics, LocalFailure>);
    /// Counting the member's records for `round`'s statistics finished.
    fn statistics_done(&mut self, round: u64, result: Result<tessera_core::LocalStatistics, LocalFailure>);
}

impl<R: MemberRng> MemberMachine for Participant<R> {
    fn member(&self) -> &str {
        Participant::member(self)
    }
    fn hello(&mut self) {
        Participant::hello(self)
    }
    fn handle(&mut self, msg: AggregatorMsg) -> Result<(), Refusal> {
        Participant::handle(self, msg)
    }
    fn poll_output(&mut self) -> Option<Output> {
        Participant::poll_output(self)
    }
    fn training_done(&mut self, round: u64, result: Result<TrainedUpdate, LocalFailure>) {
        Participant::training_done(self, round, result)
    }
    fn evaluation_done(&mut self, round: u64, metrics: Result<EvalMetrics, LocalFailure>) {
        Participant::evaluation_done(self, round, metrics)
    }
    fn statistics_done(&mut self, round: u64, result: Result<tessera_core::LocalStatistics, LocalFailure>) {
        Participant::statistics_done(self, round, result)
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
