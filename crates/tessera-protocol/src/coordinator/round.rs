//! One round's state: who is in it, which phase it is in, and the running
//! aggregate. Memory is O(model) for the secure path: masked chunks are added
//! into the secure-aggregation session's running sum as they arrive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use tessera_core::{
    AggregatorMsg, ClientMsg, EvalMetrics, ModelParams, ModelPurpose, PartyId, RoundMetrics, RoundSettings, SharedList,
};

use super::{CoordinatorConfig, Dropout, Output, ReportProblem, VectorProblem, Violation};
use crate::derive;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    AdvertiseKeys,
    GraphReveal,
    ShareKeys,
    Masked,
    Consistency,
    Unmask,
    Plain,
    Evaluate,
}

impl Phase {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Phase::AdvertiseKeys => "advertise_keys",
            Phase::GraphReveal => "graph_reveal",
            Phase::ShareKeys => "share_keys",
            Phase::Masked => "masked_input",
            Phase::Consistency => "consistency_check",
            Phase::Unmask => "unmasking",
            Phase::Plain => "plaintext_update",
            Phase::Evaluate => "evaluate",
        }
    }
}

/// What the coordinator should do next.
pub(super) enum Step {
    Wait,
    Continue,
    /// The mean weighted delta (or why it could not be formed), and the
    /// members whose revealed share failed its check.
    Aggregated(Result<ModelParams, String>, Vec<String>),
    Abort(String),
    Done(Vec<EvalMetrics>),
}

/// The record of a completed round.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundOutcome {
    /// The wire round number.
    pub round: u64,
    /// The cohort the round started with.
    pub cohort: Vec<String>,
    /// Members whose update is in the aggregate.
    pub contributors: Vec<String>,
    /// Cohort members that dropped out.
    pub dropped: Vec<String>,
    /// The evaluators' reports, weighted by their example counts, or the
    /// decoded private evaluation; what was not released is absent.
    pub metrics: RoundMetrics,
    /// Members whose evaluation report arrived.
    pub evaluators: u32,
    /// SHA-256 of the new global model, hex.
    pub model_digest: String,
    /// When the round started (driver's clock, ms).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: u64,
    /// Cumulative privacy spend after this round, when the run is private.
    pub epsilon: Option<f64>,
    /// The run's delta, when the run is private.
    pub delta: Option<f64>,
    /// Adaptive clipping: the update clip this round used.
    pub clip_norm: Option<f64>,
    /// Adaptive clipping: the noisy fraction of unclipped updates.
    pub unclipped_fraction: Option<f64>,
    /// Adaptive clipping: the clip of the next round.
    pub next_clip_norm: Option<f64>,
}

/// A plaintext upload being received (research mode only).
struct PlainUpload {
    weight: f64,
    values: Vec<f32>,
}

enum Aggregation {
    Secure(Box<tessera_secagg::ServerSession>),
    /// Research mode. Uploads are kept until the phase closes and summed in
    /// party order, so floating-point results do not depend on arrival order.
    Plain {
        uploads: BTreeMap<PartyId, PlainUpload>,
        done: BTreeMap<PartyId, PlainUpload>,
    },
}

/// Whether a message was consumed.
#[derive(Debug)]
pub enum Handled {
    /// Consumed.
    Done,
    /// Not consumed now (all masked-stream slots are busy): hand the same
    /// message in again later. Nothing changed.
    Busy(ClientMsg),
}

pub(super) struct RoundState {
    pub(super) round: u64,
    pub(super) cohort: Vec<String>,
    pub(super) phase: Phase,
    /// Fewest members that must complete each phase (`min_clients`, or a
    /// smaller Poisson draw's size).
    pub(super) minimum: u32,
    pub(super) phase_deadline_ms: u64,
    pub(super) deadline_passed: bool,
    started_ms: u64,
    settings: RoundSettings,
    layout: tessera_core::ParamLayout,
    agg: Aggregation,
    /// Members that answered the current phase.
    answered: BTreeSet<PartyId>,
    /// Signed advertisements as the members sent them (secure rounds),
    /// forwarded untouched in `CohortKeys`: the coordinator holds no key
    /// and every member checks the signatures itself.
    adverts: BTreeMap<PartyId, tessera_core::Shared<tessera_core::Advertisement>>,
    /// Members still taking part (not dropped, not disconnected).
    alive: BTreeSet<PartyId>,
    /// Members whose input is in the aggregate.
    contributors: BTreeSet<PartyId>,
    gone: BTreeSet<String>,
    /// Why each member that left the attempt left (first cause seen).
    causes: BTreeMap<String, String>,
    /// A member started handing in its update.
    update_received: bool,
    evaluators: BTreeSet<String>,
    reports: BTreeMap<String, EvalMetrics>,
    /// Staged masked streams and when each last made progress.
    streaming: BTreeMap<PartyId, u64>,
}

impl RoundState {
    pub(super) fn start(
        now_ms: u64,
        round: u64,
        cohort: Vec<String>,
        settings: RoundSettings,
        cfg: &CoordinatorConfig,
        global: &Arc<ModelParams>,
        out: &mut VecDeque<Output>,
    ) -> Result<Self, String> {
        // What members upload: the trainable parameters, plus the adaptive
        // clip's bit when the round adapts its clip.
        let layout = settings.update_layout(&global.layout());
        let (agg, phase) = match &settings.secagg {
            Some(s) => {
                let ctx = derive::round_context(cfg.run_id, round, &cohort, s, &layout)
                    .map_err(|e| format!("secure aggregation cannot start: {e}"))?;
                let session = tessera_secagg::ServerSession::new(ctx).with_stream_slots(cfg.stream_slots);
                (Aggregation::Secure(Box::new(session)), Phase::AdvertiseKeys)
            }
            None => (Aggregation::Plain { uploads: BTreeMap::new(), done: BTreeMap::new() }, Phase::Plain),
        };
        // One list for every member's RoundStart: a clone is a reference.
        let shared: SharedList<String> = cohort.clone().into();
        for (party, member) in cohort.iter().enumerate() {
            out.push_back(Output::Send {
                to: member.clone(),
                msg: AggregatorMsg::RoundStart {
                    round,
                    settings: settings.clone(),
                    cohort: shared.clone(),
                    party: party as PartyId,
                },
            });
            // A statistics round uploads counts, not an update of the model:
            // the member needs no model, so none is streamed.
            if settings.stats.is_none() {
                out.push_back(Output::SendModel {
                    to: member.clone(),
                    round,
                    purpose: ModelPurpose::Train,
                    model: global.clone(),
                });
            }
        }
        let deadline = if phase == Phase::Plain { cfg.round_deadline_ms } else { cfg.phase_timeout_ms };
        let alive = (0..cohort.len() as PartyId).collect();
        Ok(Self {
            round,
            cohort,
            phase,
            minimum: cfg.min_clients,
            phase_deadline_ms: now_ms + deadline,
            deadline_passed: false,
            started_ms: now_ms,
            settings,
            layout,
            agg,
            answered: BTreeSet::new(),
            adverts: BTreeMap::new(),
            alive,
            contributors: BTreeSet::new(),
            gone: BTreeSet::new(),
            causes: BTreeMap::new(),
            update_received: false,
            evaluators: BTreeSet::new(),
            reports: BTreeMap::new(),
            streaming: BTreeMap::new(),
        })
    }

    fn party_of(&self, member: &str) -> Option<PartyId> {
        self.cohort.binary_search_by(|m| m.as_str().cmp(member)).ok().map(|i| i as PartyId)
    }

    pub(super) fn mark_gone(&mut self, member: &str, cause: &str) {
        self.gone.insert(member.to_string());
        self.causes.entry(member.to_string()).or_insert_with(|| cause.to_string());
        if let Some(p) = self.party_of(member) {
            self.alive.remove(&p);
            self.streaming.remove(&p);
            if let Aggregation::Secure(s) = &mut self.agg {
                s.abandon_stream(p);
            }
        }
        self.evaluators.remove(member);
    }

    pub(super) fn dropped_members(&self) -> Vec<String> {
        self.cohort
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.contributors.contains(&(*i as PartyId)))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The members that did not complete the attempt, each with the first
    /// cause the coordinator saw.
    pub(super) fn dropouts(&self) -> Vec<Dropout> {
        let still = |m: &String| self.party_of(m).is_some_and(|p| self.alive.contains(&p));
        self.dropped_members()
            .into_iter()
            .map(|member| {
                let cause = match self.causes.get(&member) {
                    Some(c) => c.clone(),
                    None if still(&member) => {
                        format!("was still taking part (phase {}) when the attempt ended", self.phase.name())
                    }
                    None => "left the round".to_string(),
                };
                Dropout { member, cause }
            })
            .collect()
    }

    /// Whether any member handed in (started streaming) its update: from
    /// then on something of this attempt may be released, so its privacy
    /// reservation stays charged even if it aborts.
    pub(super) fn any_update_received(&self) -> bool {
        self.update_received
    }

    /// Members whose staged stream has made no progress for `idle_ms`.
    pub(super) fn idle_streams(&self, now_ms: u64, idle_ms: u64) -> Vec<String> {
        let idle = self.streaming.iter().filter(|(_, last)| now_ms.saturating_sub(**last) >= idle_ms);
        idle.map(|(p, _)| self.cohort[*p as usize].clone()).collect()
    }

    /// When the first staged stream goes idle, if one is staged.
    pub(super) fn next_idle_deadline(&self, idle_ms: u64) -> Option<u64> {
        self.streaming.values().min().map(|last| last.saturating_add(idle_ms))
    }

    pub(super) fn on_message(
        &mut self,
        now_ms: u64,
        member: &str,
        msg: ClientMsg,
        cfg: &CoordinatorConfig,
        _out: &mut VecDeque<Output>,
    ) -> Result<Handled, Violation> {
        let kind = msg.kind();
        if let ClientMsg::EvalReport { metrics, .. } = msg {
            if self.phase != Phase::Evaluate || !self.evaluators.contains(member) {
                return Err(Violation::UnexpectedMessage { kind, phase: self.phase.name() });
            }
            if self.reports.contains_key(member) {
                return Err(Violation::Duplicate { kind });
            }
            check_report(&metrics)?;
            self.reports.insert(member.to_string(), metrics);
            return Ok(Handled::Done);
        }
        if let ClientMsg::Decline { .. } = msg
            && self.phase == Phase::Evaluate
            && self.evaluators.remove(member)
        {
            // An evaluator that cannot evaluate: the round stops waiting for it.
            return Ok(Handled::Done);
        }
        let party = self.party_of(member).ok_or(Violation::NotInCohort)?;
        if !self.alive.contains(&party) {
            // Dropped earlier in this round (deadline or violation): late.
            return Err(Violation::UnexpectedMessage { kind, phase: "dropped" });
        }
        if let ClientMsg::Decline { reason, .. } = &msg {
            self.alive.remove(&party);
            self.causes.entry(member.to_string()).or_insert_with(|| format!("declined: {reason}"));
            return Ok(Handled::Done);
        }
        if matches!(msg, ClientMsg::MaskedStart { .. } | ClientMsg::PlainStart { .. }) {
            self.update_received = true;
        }
        let phase = self.phase;
        let wrong = || Violation::UnexpectedMessage { kind, phase: phase.name() };
        match (&mut self.agg, msg) {
            (Aggregation::Secure(s), ClientMsg::AdvertiseKeys { advert, .. }) if phase == Phase::AdvertiseKeys => {
                s.on_advertise(party, advert.keys, advert.seed_commitment, advert.graph_commitment)
                    .map_err(Violation::SecAgg)?;
                self.adverts.insert(party, advert.into());
                self.answered.insert(party);
            }
            (Aggregation::Secure(s), ClientMsg::RevealGraphSeed { reveal, .. }) if phase == Phase::GraphReveal => {
                s.on_graph_reveal(party, reveal).map_err(Violation::SecAgg)?;
                self.answered.insert(party);
            }
            (Aggregation::Secure(s), ClientMsg::SignSurvivors { signature, .. }) if phase == Phase::Consistency => {
                s.on_survivor_signature(party, signature).map_err(Violation::SecAgg)?;
                self.answered.insert(party);
            }
            (Aggregation::Secure(s), ClientMsg::ShareKeys { shares, .. }) if phase == Phase::ShareKeys => {
                s.on_shares(party, shares).map_err(Violation::SecAgg)?;
                self.answered.insert(party);
            }
            (Aggregation::Secure(s), msg @ ClientMsg::MaskedStart { .. }) if phase == Phase::Masked => {
                let ClientMsg::MaskedStart { len, .. } = msg else { unreachable!("matched above") };
                let expected = derive::update_vector_len(&self.layout);
                if len != expected {
                    return Err(VectorProblem::Length { announced: len, expected }.into());
                }
                match s.on_masked_start(party, len) {
                    Err(tessera_secagg::SecAggError::StreamSlotsBusy(_)) => return Ok(Handled::Busy(msg)),
                    r => r.map_err(Violation::SecAgg)?,
                }
                self.streaming.insert(party, now_ms);
            }
            (Aggregation::Secure(s), ClientMsg::MaskedChunk { offset, values, .. }) if phase == Phase::Masked => {
                s.on_masked_chunk(party, offset, &values).map_err(Violation::SecAgg)?;
                self.streaming.insert(party, now_ms);
            }
            (Aggregation::Secure(s), ClientMsg::MaskedEnd { .. }) if phase == Phase::Masked => {
                s.on_masked_end(party).map_err(Violation::SecAgg)?;
                self.streaming.remove(&party);
                self.answered.insert(party);
            }
            (Aggregation::Secure(s), ClientMsg::UnmaskShares { reveals, .. }) if phase == Phase::Unmask => {
                s.on_unmask(party, reveals).map_err(Violation::SecAgg)?;
                self.answered.insert(party);
            }
            (
                Aggregation::Secure(_),
                ClientMsg::PlainStart { .. } | ClientMsg::PlainChunk { .. } | ClientMsg::PlainEnd { .. },
            ) => {
                return Err(Violation::PlaintextRefused);
            }
            (Aggregation::Plain { uploads, .. }, ClientMsg::PlainStart { len, weight, .. })
                if phase == Phase::Plain =>
            {
                let expected = self.layout.numel() as u64;
                if len != expected {
                    return Err(VectorProblem::Length { announced: len, expected }.into());
                }
                if !weight.is_finite() || weight < 0.0 {
                    return Err(VectorProblem::Weight.into());
                }
                if uploads.contains_key(&party) || self.answered.contains(&party) {
                    return Err(Violation::Duplicate { kind });
                }
                if weight > 1.0 {
                    return Err(VectorProblem::Weight.into());
                }
                uploads.insert(party, PlainUpload { weight, values: Vec::new() });
            }
            (Aggregation::Plain { uploads, .. }, ClientMsg::PlainChunk { offset, values, .. })
                if phase == Phase::Plain =>
            {
                let up = uploads.get_mut(&party).ok_or_else(wrong)?;
                if offset != up.values.len() as u64 || up.values.len() + values.len() > self.layout.numel() {
                    return Err(VectorProblem::Chunk { offset }.into());
                }
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(VectorProblem::NonFinite.into());
                }
                up.values.extend_from_slice(&values);
            }
            (Aggregation::Plain { uploads, done }, ClientMsg::PlainEnd { .. }) if phase == Phase::Plain => {
                let up = uploads.remove(&party).ok_or_else(wrong)?;
                let numel = self.layout.numel();
                if up.values.len() != numel {
                    return Err(
                        VectorProblem::Incomplete { received: up.values.len() as u64, expected: numel as u64 }.into()
                    );
                }
                done.insert(party, up);
                self.answered.insert(party);
            }
            _ => return Err(wrong()),
        }
        let _ = cfg;
        Ok(Handled::Done)
    }

    /// Asked after every message: fewer answers than live members cannot
    /// cover them, and that O(1) test keeps the scan (O(cohort)) for the
    /// phase's last answers, not every answer (issue #20).
    fn phase_complete(&self) -> bool {
        self.deadline_passed
            || (self.answered.len() >= self.alive.len() && self.alive.iter().all(|p| self.answered.contains(p)))
    }

    fn next_phase(&mut self, now_ms: u64, phase: Phase, timeout_ms: u64) {
        // Whoever did not answer is out of the round from here on.
        self.note_silent();
        self.alive.retain(|p| self.answered.contains(p));
        self.answered.clear();
        self.phase = phase;
        self.phase_deadline_ms = now_ms + timeout_ms;
        self.deadline_passed = false;
    }

    /// Record why the members still owing this phase an answer drop out.
    fn note_silent(&mut self) {
        let phase = self.phase.name();
        for p in self.alive.iter().filter(|p| !self.answered.contains(p)) {
            let member = self.cohort[*p as usize].clone();
            self.causes.entry(member).or_insert_with(|| format!("no answer in phase {phase} before its deadline"));
        }
    }

    pub(super) fn try_advance(
        &mut self,
        now_ms: u64,
        cfg: &CoordinatorConfig,
        _online: &BTreeSet<String>,
        out: &mut VecDeque<Output>,
    ) -> Step {
        if self.phase == Phase::Evaluate {
            let all_in = self.reports.len() >= self.evaluators.len()
                && self.evaluators.iter().all(|m| self.reports.contains_key(m));
            if all_in || self.deadline_passed {
                return Step::Done(self.reports.values().cloned().collect());
            }
            return Step::Wait;
        }
        if !self.phase_complete() {
            return Step::Wait;
        }
        let min = self.minimum.max(1) as usize;
        let answered = self.alive.iter().filter(|p| self.answered.contains(p)).count();
        if answered < min {
            self.note_silent();
            return Step::Abort(format!(
                "only {answered} of {} members completed phase {} (minimum {min})",
                self.cohort.len(),
                self.phase.name()
            ));
        }
        match self.phase {
            Phase::Plain => {
                self.next_phase(now_ms, Phase::Evaluate, cfg.phase_timeout_ms);
                let Aggregation::Plain { done, .. } = &mut self.agg else { unreachable!("plain phase") };
                if let Some(rule) = &cfg.robust {
                    // Research mode: unweighted individual updates, party order.
                    let mut updates = Vec::new();
                    for (party, up) in std::mem::take(done) {
                        if !self.alive.contains(&party) || up.weight <= 0.0 {
                            continue;
                        }
                        let w = up.weight as f32;
                        updates.push(up.values.into_iter().map(|v| v / w).collect::<Vec<f32>>());
                        self.contributors.insert(party);
                    }
                    let mean = rule
                        .aggregate(&updates)
                        .map_err(|e| e.to_string())
                        .and_then(|v| ModelParams::from_flat(&self.layout, &v).map_err(|e| e.to_string()));
                    return Step::Aggregated(mean, Vec::new());
                }
                let mut sums = vec![0f64; self.layout.numel()];
                let mut weight = 0f64;
                // Party order, whatever the arrival order.
                for (party, up) in std::mem::take(done) {
                    if !self.alive.contains(&party) {
                        continue;
                    }
                    for (s, v) in sums.iter_mut().zip(&up.values) {
                        *s += *v as f64;
                    }
                    weight += up.weight;
                    self.contributors.insert(party);
                }
                let mean = derive::mean_from_plain(&self.layout, &sums, weight).map_err(|e| e.to_string());
                Step::Aggregated(mean, Vec::new())
            }
            Phase::AdvertiseKeys | Phase::GraphReveal | Phase::ShareKeys | Phase::Masked | Phase::Consistency => {
                self.secure_step(now_ms, cfg, out)
            }
            Phase::Unmask => self.secure_step(now_ms, cfg, out),
            Phase::Evaluate => unreachable!("handled above"),
        }
    }

    fn secure_step(&mut self, now_ms: u64, cfg: &CoordinatorConfig, out: &mut VecDeque<Output>) -> Step {
        let Aggregation::Secure(s) = &mut self.agg else { unreachable!("secure phase") };
        let round = self.round;
        let name = |p: PartyId| self.cohort[p as usize].clone();
        let res: Result<Phase, tessera_secagg::SecAggError> = (|| match self.phase {
            Phase::AdvertiseKeys => {
                // Every commitment is fixed here, before anyone reveals.
                let roster: SharedList<_> = s.close_advertise()?.into();
                for (p, _) in roster.iter() {
                    let msg = AggregatorMsg::GraphRoster { round, commitments: roster.clone() };
                    out.push_back(Output::Send { to: name(*p), msg });
                }
                Ok(Phase::GraphReveal)
            }
            Phase::GraphReveal => {
                let (reveals, neighbours) = s.close_reveal()?;
                let reveals: SharedList<_> = reveals.into();
                let adverts = &self.adverts;
                for (p, nb) in neighbours {
                    // Forward the neighbours' signed adverts untouched.
                    let adverts = nb.iter().filter_map(|v| adverts.get(v).map(|a| (*v, a.clone()))).collect();
                    let msg = AggregatorMsg::CohortKeys { round, adverts, reveals: reveals.clone() };
                    out.push_back(Output::Send { to: name(p), msg });
                }
                Ok(Phase::ShareKeys)
            }
            Phase::ShareKeys => {
                for (p, shares) in s.close_shares()? {
                    out.push_back(Output::Send { to: name(p), msg: AggregatorMsg::ForwardShares { round, shares } });
                }
                Ok(Phase::Masked)
            }
            Phase::Masked => {
                let survivors: SharedList<_> = s.close_masked()?.into();
                for p in survivors.iter() {
                    let msg = AggregatorMsg::SurvivorSet { round, survivors: survivors.clone() };
                    out.push_back(Output::Send { to: name(*p), msg });
                }
                Ok(Phase::Consistency)
            }
            Phase::Consistency => {
                for (p, signatures) in s.close_consistency()? {
                    out.push_back(Output::Send {
                        to: name(p),
                        msg: AggregatorMsg::UnmaskRequest { round, signatures },
                    });
                }
                Ok(Phase::Unmask)
            }
            _ => Ok(Phase::Evaluate),
        })();
        match res {
            Err(e) => Step::Abort(format!("secure aggregation: {e}")),
            Ok(Phase::Evaluate) => {
                let session = match std::mem::replace(
                    &mut self.agg,
                    Aggregation::Plain { uploads: BTreeMap::new(), done: BTreeMap::new() },
                ) {
                    Aggregation::Secure(s) => s,
                    Aggregation::Plain { .. } => unreachable!("secure phase"),
                };
                match session.finish() {
                    Err(e) => Step::Abort(format!("secure aggregation: {e}")),
                    Ok(sum) => {
                        self.contributors = sum.survivors.iter().copied().collect();
                        self.next_phase(now_ms, Phase::Evaluate, cfg.phase_timeout_ms);
                        let n = self.cohort.len() as u32;
                        let bad = sum.bad_shares.iter().map(|p| self.cohort[*p as usize].clone()).collect();
                        let mean =
                            derive::mean_from_secure(&self.layout, &self.settings, n, &sum).map_err(|e| e.to_string());
                        Step::Aggregated(mean, bad)
                    }
                }
            }
            Ok(next) => {
                let timeout = if next == Phase::Masked { cfg.round_deadline_ms } else { cfg.phase_timeout_ms };
                self.next_phase(now_ms, next, timeout);
                Step::Continue
            }
        }
    }

    pub(super) fn start_eval(
        &mut self,
        now_ms: u64,
        cfg: &CoordinatorConfig,
        online: &BTreeSet<String>,
        global: &Arc<ModelParams>,
        out: &mut VecDeque<Output>,
    ) {
        self.phase = Phase::Evaluate;
        self.phase_deadline_ms = now_ms + cfg.phase_timeout_ms;
        self.deadline_passed = false;
        self.evaluators = online.iter().filter(|m| !self.gone.contains(*m)).cloned().collect();
        for m in &self.evaluators {
            out.push_back(Output::SendModel {
                to: m.clone(),
                round: self.round,
                purpose: ModelPurpose::Evaluate,
                model: global.clone(),
            });
        }
    }

    pub(super) fn outcome(&self, now_ms: u64, metrics: RoundMetrics, global: &ModelParams) -> RoundOutcome {
        RoundOutcome {
            round: self.round,
            cohort: self.cohort.clone(),
            contributors: self.contributors.iter().map(|p| self.cohort[*p as usize].clone()).collect(),
            dropped: self.dropped_members(),
            metrics,
            evaluators: self.reports.len() as u32,
            model_digest: global.digest_hex(),
            started_ms: self.started_ms,
            finished_ms: now_ms,
            epsilon: None,
            delta: None,
            clip_norm: None,
            unclipped_fraction: None,
            next_clip_norm: None,
        }
    }

    pub(super) fn settings(&self) -> &RoundSettings {
        &self.settings
    }

    /// Members whose update is in the aggregate (known once aggregated).
    pub(super) fn contributor_count(&self) -> usize {
        self.contributors.len()
    }
}

/// Reject reports that cannot be true; they are aggregates only, but a
/// broken or hostile client must not poison the round's metrics.
fn check_report(m: &EvalMetrics) -> Result<(), Violation> {
    let unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
    if !(m.loss.is_finite() && m.loss >= 0.0) {
        return Err(ReportProblem::Loss.into());
    }
    if !(unit(m.accuracy) && unit(m.balanced_accuracy) && unit(m.auc) && unit(m.f1)) {
        return Err(ReportProblem::Rate.into());
    }
    let classes = m.confusion.len();
    if classes > 4096 || m.confusion.iter().any(|r| r.len() != classes) {
        return Err(ReportProblem::ConfusionShape.into());
    }
    let total: u64 = m.confusion.iter().flatten().fold(0u64, |a, b| a.saturating_add(*b));
    if classes > 0 && total != m.num_examples {
        return Err(ReportProblem::ConfusionTotal.into());
    }
    Ok(())
}
