//! The aggregator's side of the protocol as a sans-IO state machine.
//!
//! The [`Coordinator`] is told who connected, what each member sent and what
//! time it is; it answers with [`Output`]s (messages to send, models to
//! stream, members to disconnect, events to record). It owns no socket,
//! clock or thread, so the QUIC daemon, the in-memory simulator and the unit
//! tests drive exactly the same code, and a run is a pure function of its
//! inputs and seed.
//!
//! A round moves through phases. Under secure aggregation (the default and
//! the only mode the daemon accepts):
//!
//! ```text
//! RoundStart+model → AdvertiseKeys → CohortKeys → ShareKeys → ForwardShares
//!   → Masked* → UnmaskRequest → UnmaskShares → (sum) → server step → Evaluate
//! ```
//!
//! Members that miss a phase deadline are dropped from the round; the round
//! completes if enough survive, otherwise it is aborted and retried.

mod cohort;
mod config;
mod output;
mod privacy;
mod robust;
mod round;
mod statistics;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use tessera_core::{
    AggregatorMsg, ClientMsg, EVAL_TENSOR, EvalMetrics, ModelParams, NoisePlacement, PrivacyUnit, RoundMetrics,
    RoundSettings, SecAggSettings, UNCLIPPED_TENSOR,
};

use crate::derive::{self, derive_seed};
use crate::strategy::ServerOptimizer;
pub use cohort::CohortSelection;
use cohort::select_cohort;
pub use config::{CoordinatorConfig, Resume, SecureConfig};
pub use output::{ConfigError, Dropout, Event, Output, ReportProblem, VectorProblem, Violation};
use privacy::PrivacyState;
pub use privacy::{
    AdaptiveClipConfig, CentralNoise, ClipStep, PrivacyConfig, PrivacyConfigError, PrivacyPlan, PrivacyStatus,
    PrivateEvaluationConfig,
};
pub use robust::{RobustError, RobustRule};
use round::RoundState;
pub use round::{Handled, RoundOutcome};
pub use statistics::{StatisticsConfig, StatisticsOutcome};

#[derive(Debug, Default, Clone)]
struct MemberHealth {
    consecutive_failures: u32,
}

/// The aggregator's protocol state machine.
pub struct Coordinator {
    cfg: CoordinatorConfig,
    global: Arc<ModelParams>,
    optimizer: ServerOptimizer,
    /// Connected, waiting for their `Hello` to be checked
    /// ([`CoordinatorConfig::admission`]).
    pending: BTreeSet<String>,
    online: BTreeSet<String>,
    health: BTreeMap<String, MemberHealth>,
    /// Next round number to run (rounds are numbered from 1). Aborted
    /// attempts use up a number too, so this can run ahead of `completed`.
    next_round: u64,
    completed: u64,
    retries: u32,
    current: Option<RoundState>,
    out: VecDeque<Output>,
    finished: bool,
    /// Caller-imposed stop before the next round (e.g. privacy budget).
    stop_reason: Option<String>,
    /// Why the run could not go on, once it has ended so.
    failure: Option<String>,
    /// No attempt starts before this time (backoff after aborts); 0: none.
    retry_not_before: u64,
    privacy: Option<PrivacyState>,
    /// Whether this instance has started a round yet (the start quorum
    /// applies to the first round of each process).
    started_any: bool,
    /// What adaptive clipping learned in the round being finished.
    clip_step: Option<ClipStep>,
    /// The round's private evaluation, decoded from the noised secure sum.
    private_metrics: Option<RoundMetrics>,
    noise: CentralNoise,
    /// A DP statistics release still to run before the next round.
    statistics: Option<statistics::PendingStatistics>,
}

impl Coordinator {
    /// Start a run (or resume one from a checkpoint) with the given global
    /// model and optimizer state. `noise` keys the central DP noise, the
    /// coordinator's only randomness. Fails on a configuration no run can use.
    pub fn new(
        cfg: CoordinatorConfig,
        global: ModelParams,
        optimizer: Option<ServerOptimizer>,
        resume: Resume,
        noise: CentralNoise,
    ) -> Result<Self, ConfigError> {
        cfg.cohort.validate()?;
        if let Some(rule) = &cfg.robust {
            rule.validate()?;
            if cfg.secure.is_some() {
                return Err(ConfigError::RobustUnderSecureAggregation { rule: rule.name() });
            }
            if cfg.dp.is_some() {
                return Err(ConfigError::RobustUnderPrivacy { rule: rule.name() });
            }
        }
        if cfg.dp.is_some() && cfg.cohort.poisson_rate().is_some() && cfg.cohort.fixed_denominator().is_none() {
            // Without N the mean would divide by the realized cohort size,
            // which the noise scale and the model would then reveal.
            return Err(ConfigError::Cohort {
                key: "population",
                rule: "be set with [privacy] (the fixed denominator q·N of Poisson cohorts)",
            });
        }
        let optimizer = optimizer.unwrap_or_else(|| ServerOptimizer::new(cfg.strategy.clone()));
        let privacy = match &cfg.dp {
            None => None,
            Some(p) => {
                let plan = p
                    .plan(cfg.rounds, &cfg.train, cfg.secure.is_some(), cfg.cohort.poisson_rate())
                    .map_err(ConfigError::Privacy)?;
                Some(PrivacyState::new(plan, &resume.spent, resume.clip_norm).map_err(ConfigError::Privacy)?)
            }
        };
        Ok(Self {
            cfg,
            global: Arc::new(global),
            optimizer,
            pending: BTreeSet::new(),
            online: BTreeSet::new(),
            health: BTreeMap::new(),
            next_round: resume.next_round.max(1),
            completed: resume.completed_rounds,
            retries: 0,
            current: None,
            out: VecDeque::new(),
            finished: false,
            stop_reason: None,
            failure: None,
            retry_not_before: 0,
            privacy,
            started_any: false,
            clip_step: None,
            private_metrics: None,
            noise,
            statistics: None,
        })
    }

    /// Under DP: how many of the rounds still to run the remaining budget
    /// affords. Fewer than remain after a crash charged an interrupted
    /// round (its spend stays counted): the run then ends that much short,
    /// which drivers tell the operator at start-up.
    pub fn affordable_rounds(&self) -> Option<u64> {
        let remaining = self.cfg.rounds.saturating_sub(self.completed);
        self.privacy.as_ref().map(|p| p.affordable_rounds(remaining))
    }

    /// Epsilon spent against the budget, when the run is private.
    pub fn privacy_status(&self) -> Option<PrivacyStatus> {
        self.privacy.as_ref().map(|p| p.status())
    }

    /// The resolved privacy plan (noise multiplier, per-round spend).
    pub fn privacy_plan(&self) -> Option<&PrivacyPlan> {
        self.privacy.as_ref().map(|p| &p.plan)
    }

    /// The configuration the run started with.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.cfg
    }

    /// The current global model (its trainable tensors).
    pub fn global(&self) -> &Arc<ModelParams> {
        &self.global
    }

    /// The server optimizer and its state, for checkpoints.
    pub fn optimizer(&self) -> &ServerOptimizer {
        &self.optimizer
    }

    /// The next wire round number this coordinator will use.
    pub fn next_round(&self) -> u64 {
        self.next_round
    }

    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The members connected now.
    pub fn online(&self) -> impl Iterator<Item = &String> {
        self.online.iter()
    }

    /// Current round number and phase name, for status displays.
    pub fn progress(&self) -> Option<(u64, &'static str)> {
        self.current.as_ref().map(|r| (r.round, r.phase.name()))
    }

    /// Ask the run to stop before starting another round (used when the
    /// privacy budget cannot afford one more release).
    pub fn stop_before_next_round(&mut self, reason: impl Into<String>) {
        self.stop_reason = Some(reason.into());
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A member finished its handshake (its certificate admitted it). With
    /// [`CoordinatorConfig::admission`] set, it joins only once its `Hello`
    /// announces the consortium's settings; otherwise at once.
    pub fn member_connected(&mut self, now_ms: u64, member: &str) {
        if self.cfg.admission.is_some() {
            self.online.remove(member);
            self.pending.insert(member.to_string());
            return;
        }
        self.admit(now_ms, member);
    }

    fn admit(&mut self, now_ms: u64, member: &str) {
        self.pending.remove(member);
        self.online.insert(member.to_string());
        self.health.entry(member.to_string()).or_default();
        self.out.push_back(Output::Send {
            to: member.to_string(),
            msg: AggregatorMsg::Welcome { run_id: self.cfg.run_id, member: member.to_string() },
        });
        self.maybe_start_round(now_ms);
    }

    /// A pending member's `Hello`: admit it, or refuse it by name before
    /// any round (and any privacy reservation) can include it.
    fn hello(&mut self, now_ms: u64, member: &str, msg: &ClientMsg) {
        let (Some(policy), ClientMsg::Hello { protocol_version, settings, .. }) = (&self.cfg.admission, msg) else {
            return;
        };
        if !self.pending.contains(member) {
            return; // Admitted already; a repeated Hello changes nothing.
        }
        match policy.check(member, *protocol_version, *settings) {
            Ok(()) => self.admit(now_ms, member),
            Err(refusal) => {
                self.pending.remove(member);
                self.out.push_back(Output::RefuseAdmission { member: member.to_string(), refusal: *refusal });
            }
        }
    }

    /// A member's connection closed. Its round membership stays until the
    /// current phase's deadline decides, so a brief blip is not fatal.
    pub fn member_disconnected(&mut self, now_ms: u64, member: &str) {
        self.pending.remove(member);
        self.online.remove(member);
        if let Some(r) = self.current.as_mut() {
            r.mark_gone(member, "disconnected");
        }
        self.advance(now_ms);
    }

    /// A message from an admitted member. A violation is also emitted as a
    /// `Disconnect` output; it is returned so drivers and tests can see it.
    pub fn handle(&mut self, now_ms: u64, member: &str, msg: ClientMsg) -> Result<Handled, Violation> {
        let res = self.dispatch(now_ms, member, msg);
        if let Ok(Handled::Busy(_)) = &res {
            return res;
        }
        if let Err(v) = &res {
            self.out.push_back(Output::Event(Event::Rejected { member: member.to_string(), error: v.to_string() }));
            self.out.push_back(Output::Disconnect { member: member.to_string(), reason: v.to_string() });
            if let Some(r) = self.current.as_mut() {
                r.mark_gone(member, &format!("protocol violation: {v}"));
            }
        }
        self.advance(now_ms);
        res
    }

    /// Time passed; phase deadlines and idle masked streams are checked.
    pub fn tick(&mut self, now_ms: u64) {
        if let Some(r) = self.current.as_mut() {
            if now_ms >= r.phase_deadline_ms {
                r.deadline_passed = true;
            }
            let idle_ms = self.cfg.stream_idle_ms;
            for member in r.idle_streams(now_ms, idle_ms) {
                let reason = format!("its masked stream made no progress for {idle_ms} ms");
                r.mark_gone(&member, &reason);
                self.out.push_back(Output::Event(Event::Rejected { member: member.clone(), error: reason.clone() }));
                self.out.push_back(Output::Disconnect { member, reason });
            }
        }
        self.advance(now_ms);
    }

    /// The earliest time at which `tick` has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let Some(r) = self.current.as_ref() else {
            return (self.retry_not_before > 0 && !self.finished).then_some(self.retry_not_before);
        };
        let idle = r.next_idle_deadline(self.cfg.stream_idle_ms);
        Some(idle.map_or(r.phase_deadline_ms, |i| i.min(r.phase_deadline_ms)))
    }

    fn dispatch(&mut self, now_ms: u64, member: &str, msg: ClientMsg) -> Result<Handled, Violation> {
        let kind = msg.kind();
        if matches!(msg, ClientMsg::Hello { .. }) {
            self.hello(now_ms, member, &msg);
            return Ok(Handled::Done);
        }
        if self.pending.contains(member) {
            return Err(Violation::BeforeHello { kind });
        }
        let Some(r) = self.current.as_mut() else {
            // Nothing is running; late messages from a finished round land
            // here and are rejected without penalty to the round.
            return Err(Violation::WrongRound { kind, got: msg.round().unwrap_or(0), expected: None });
        };
        let got = msg.round().unwrap_or(0);
        if got != r.round {
            return Err(Violation::WrongRound { kind, got, expected: Some(r.round) });
        }
        r.on_message(now_ms, member, msg, &self.cfg, &mut self.out)
    }

    /// Drive the state machine as far as it can go without new input.
    fn advance(&mut self, now_ms: u64) {
        loop {
            let Some(r) = self.current.as_mut() else {
                self.maybe_start_round(now_ms);
                return;
            };
            match r.try_advance(now_ms, &self.cfg, &self.online, &mut self.out) {
                round::Step::Wait => return,
                round::Step::Continue => continue,
                round::Step::Aggregated(mean_delta, bad_shares) => {
                    let round = r.round;
                    if !bad_shares.is_empty() {
                        self.out.push_back(Output::Event(Event::BadShares { round, members: bad_shares }));
                    }
                    if r.settings().stats.is_some() {
                        self.statistics_aggregated(now_ms, mean_delta);
                        continue;
                    }
                    let contributors = r.contributor_count();
                    let (settings, cohort) = (r.settings().clone(), r.cohort.len() as u32);
                    let ok = mean_delta.and_then(|d| self.server_step(d, contributors, &settings, cohort));
                    match ok {
                        Ok(g) => {
                            self.global = Arc::new(g);
                            let r = self.current.as_mut().expect("round in progress");
                            // Evaluation reports are exact counts of a member's
                            // data: under DP none is asked for in the clear.
                            let every = self.cfg.evaluate_every;
                            let due = every > 0 && (self.completed + 1).is_multiple_of(every);
                            let evaluators =
                                if due && self.privacy.is_none() { &self.online } else { &BTreeSet::new() };
                            r.start_eval(now_ms, &self.cfg, evaluators, &self.global, &mut self.out);
                        }
                        Err(reason) => {
                            // The sum exists now. A retry would train the same
                            // model again with another cohort, and two sums over
                            // cohorts one member apart reveal that member's
                            // update (issue #17), so the run stops instead.
                            let stop = format!(
                                "round {round}'s aggregate was produced but cannot be applied ({reason}); \
                                 the run stops rather than re-run the round on the same model, \
                                 where two sums over different cohorts would reveal one member's update"
                            );
                            self.failure = Some(stop.clone());
                            self.stop_before_next_round(stop);
                            self.abort_round(now_ms, reason);
                        }
                    }
                }
                round::Step::Abort(reason) => self.abort_round(now_ms, reason),
                round::Step::Done(reports) => self.finish_round(now_ms, reports),
            }
        }
    }

    /// From the round's mean update to the next global model: under DP with
    /// Poisson cohorts the fixed denominator `q·N` instead of the realized
    /// size, central noise (trusted operator only), the adaptive clip's bit
    /// taken out and folded in, then the server optimizer's step.
    fn server_step(
        &mut self,
        mut delta: ModelParams,
        contributors: usize,
        settings: &RoundSettings,
        cohort: u32,
    ) -> Result<ModelParams, String> {
        if let (Some(p), Some(dp)) = (self.privacy.as_mut(), settings.dp.as_ref()) {
            // Every weight is 1 under DP, so the decoded mean is sum / n;
            // with Poisson cohorts it becomes sum / (q·N), whose scale and
            // noise do not depend on how many members were drawn.
            let denominator = match self.cfg.cohort.fixed_denominator() {
                Some(qn) => {
                    let scale = (contributors as f64 / qn) as f32;
                    delta.values_mut().for_each(|v| *v *= scale);
                    qn
                }
                None => contributors.max(1) as f64,
            };
            if dp.noise == NoisePlacement::Central {
                // The members' values were rounded into the ring: the
                // sensitivity of the decoded sum counts the rounding step.
                let step =
                    derive::update_rounding_step(settings, delta.numel() as u64, cohort).map_err(|e| e.to_string())?;
                let stream = derive_seed(self.cfg.seed, self.completed + 1, b"central-noise");
                p.add_central_noise(&mut delta, denominator, step, &self.noise, stream, dp)?;
            }
            if dp.adaptive.is_some() {
                let at = delta.tensors.iter().position(|t| t.name == UNCLIPPED_TENSOR);
                let bit = at.map(|i| delta.tensors.remove(i)).ok_or("the adaptive clip's bit is missing")?;
                // The contributors' mean bit, whatever the denominator.
                let mean_bit = f64::from(bit.data[0]) * denominator / contributors.max(1) as f64;
                self.clip_step = p.observe_unclipped(mean_bit, dp, contributors)?;
            }
            if let Some(release) = &settings.eval {
                // Back from the mean to the noised sum, then to counts.
                let at = delta.tensors.iter().position(|t| t.name == EVAL_TENSOR);
                let eval = at.map(|i| delta.tensors.remove(i)).ok_or("the evaluation tensor is missing")?;
                let sum: Vec<f32> = eval.data.iter().map(|v| (f64::from(*v) * denominator) as f32).collect();
                self.private_metrics = Some(match dp.unit {
                    PrivacyUnit::Client => release.decode(&sum),
                    PrivacyUnit::Record => release.decode_records(&sum),
                });
            }
        }
        let mut g = (*self.global).clone();
        // After the last round the optimizer may release an iterate average.
        let rounds_left = self.cfg.rounds.saturating_sub(self.completed + 1);
        self.optimizer.step_in_run(&mut g, &delta, rounds_left).map_err(|e| e.to_string())?;
        Ok(g)
    }

    fn finish_round(&mut self, now_ms: u64, reports: Vec<EvalMetrics>) {
        let r = self.current.take().expect("round in progress");
        let mut outcome = r.outcome(now_ms, RoundMetrics::from_reports(&reports), &self.global);
        if let Some(m) = self.private_metrics.take() {
            // Private evaluation: the noised sum over the contributors, of
            // the model this round started from.
            outcome.metrics = m;
            outcome.evaluators = outcome.contributors.len() as u32;
        }
        if let Some(step) = self.clip_step.take() {
            outcome.clip_norm = Some(step.clip_norm);
            outcome.unclipped_fraction = Some(step.unclipped_fraction);
            outcome.next_clip_norm = Some(step.next_clip_norm);
        }
        if let Some(p) = &self.privacy {
            let st = p.status();
            outcome.epsilon = Some(st.epsilon_spent);
            outcome.delta = Some(st.delta);
        }
        self.update_health(&r.cohort, &outcome.contributors);
        for m in &r.cohort {
            self.out.push_back(Output::Send {
                to: m.clone(),
                msg: AggregatorMsg::RoundEnd { round: r.round, accepted: true, reason: String::new() },
            });
        }
        self.out.push_back(Output::Event(Event::RoundFinished(Box::new(outcome))));
        self.retries = 0;
        self.completed += 1;
        self.next_round += 1;
        self.maybe_start_round(now_ms);
    }

    fn abort_round(&mut self, now_ms: u64, reason: String) {
        let r = self.current.take().expect("round in progress");
        self.clip_step = None;
        self.private_metrics = None;
        let dropped = r.dropouts();
        self.update_health(&r.cohort, &[]);
        for m in &r.cohort {
            self.out.push_back(Output::Send {
                to: m.clone(),
                msg: AggregatorMsg::RoundEnd { round: r.round, accepted: false, reason: reason.clone() },
            });
        }
        // Nothing of an attempt without a single update can be released.
        let refunded = if r.any_update_received() { None } else { self.refund() };
        self.attempt_failed(now_ms, r.round, reason, dropped, refunded);
    }

    /// Count a failed attempt, say so, and schedule the next one after the
    /// backoff (or give up after `max_round_retries`).
    fn attempt_failed(
        &mut self,
        now_ms: u64,
        round: u64,
        reason: String,
        dropped: Vec<Dropout>,
        refunded: Option<f64>,
    ) {
        self.retries += 1;
        let wait = self.retry_wait_ms();
        self.retry_not_before = now_ms.saturating_add(wait);
        self.out.push_back(Output::Event(Event::RoundAborted {
            round,
            reason: reason.clone(),
            dropped,
            refunded,
            retry_in_ms: wait,
        }));
        // Aborted attempts consume a round number so that nothing from the
        // failed attempt can be replayed into the retry.
        self.next_round += 1;
        if self.retries > self.cfg.max_round_retries {
            self.finish_run_failed(format!("{} consecutive round attempts aborted; last: {reason}", self.retries));
        } else {
            self.maybe_start_round(now_ms);
        }
    }

    /// Take back the running attempt's reservation; the epsilon after it.
    fn refund(&mut self) -> Option<f64> {
        let p = self.privacy.as_mut()?;
        p.refund_last().then(|| p.status().epsilon_spent)
    }

    /// The wait before the next attempt after `self.retries` consecutive aborts.
    fn retry_wait_ms(&self) -> u64 {
        let doublings = self.retries.saturating_sub(1).min(32);
        self.cfg.retry_backoff_ms.saturating_mul(1u64 << doublings).min(self.cfg.retry_backoff_max_ms)
    }

    fn update_health(&mut self, cohort: &[String], contributors: &[String]) {
        for m in cohort {
            let h = self.health.entry(m.clone()).or_default();
            if contributors.contains(m) {
                h.consecutive_failures = 0;
            } else {
                h.consecutive_failures += 1;
                if h.consecutive_failures == self.cfg.unhealthy_after {
                    self.out.push_back(Output::Event(Event::MemberUnhealthy {
                        member: m.clone(),
                        failed_rounds: h.consecutive_failures,
                    }));
                }
            }
        }
    }

    /// End the run because it cannot make progress; drivers report
    /// [`Coordinator::failure`] (the daemon exits non-zero).
    fn finish_run_failed(&mut self, reason: String) {
        if !self.finished {
            self.failure = Some(reason.clone());
        }
        self.finish_run(reason);
    }

    /// Why the run ended without completing, when it could not make
    /// progress (consecutive aborted attempts, a round that cannot start,
    /// an aggregate that cannot be applied); `None` while it runs and after
    /// a normal end (rounds done, budget spent, an operator's stop).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    fn finish_run(&mut self, reason: String) {
        if self.finished {
            return;
        }
        self.finished = true;
        for m in &self.online {
            self.out.push_back(Output::Send { to: m.clone(), msg: AggregatorMsg::Shutdown { reason: reason.clone() } });
        }
        self.out.push_back(Output::Event(Event::RunFinished { reason }));
    }

    /// Rounds completed so far (those counted toward `rounds`).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    fn maybe_start_round(&mut self, now_ms: u64) {
        if self.finished || self.current.is_some() {
            return;
        }
        if now_ms < self.retry_not_before {
            return; // Backing off after an aborted attempt.
        }
        self.retry_not_before = 0;
        if let Some(reason) = self.stop_reason.take() {
            self.finish_run(reason);
            return;
        }
        if self.statistics.is_some() {
            // The DP statistics release runs before the first round.
            self.start_statistics(now_ms);
            return;
        }
        if self.completed() >= self.cfg.rounds {
            self.finish_run(format!("completed {} rounds", self.cfg.rounds));
            return;
        }
        // The start quorum holds for the first round each process starts,
        // so a restarted aggregator waits for the consortium to reconnect.
        let needed =
            if self.started_any { self.cfg.min_clients } else { self.cfg.min_clients.max(self.cfg.start_quorum) };
        if (self.online.len() as u32) < needed {
            return;
        }
        let round = self.next_round;
        let logical = self.completed + 1;
        // Every attempt draws from the secret key, never from `run.seed`:
        // a cohort cannot be predicted, and the seed is recorded (in
        // `RoundStarted`) once drawn, so the record replays the run.
        let cohort_seed = self.noise.cohort_seed(round);
        let cohort = select_cohort(&self.online, &self.cfg.cohort, self.cfg.min_clients, cohort_seed);
        let minimum = self.round_minimum(cohort.len());
        let settings = match self.round_settings(logical, cohort.len() as u32, minimum) {
            Ok(s) => s,
            Err(reason) => {
                self.finish_run_failed(reason);
                return;
            }
        };
        // Charge the budget first: a round it cannot afford never starts.
        let charged = match self.privacy.as_mut().map(|p| p.charge().map(|e| (e, p.plan.spend, p.plan.budget.delta))) {
            Some(Err(reason)) => {
                self.finish_run(reason);
                return;
            }
            Some(Ok(c)) => Some(c),
            None => None,
        };
        self.started_any = true;
        self.out.push_back(Output::Event(Event::RoundStarted { round, cohort: cohort.clone(), cohort_seed }));
        if let Some((epsilon, spend, delta)) = charged {
            self.out.push_back(Output::Event(Event::PrivacyReserved { round, spend, epsilon, delta }));
        }
        if self.cfg.cohort.poisson_rate().is_some() && (cohort.len() as u32) < self.secure_floor() {
            // Too few for a secure sum. Redrawing would condition the
            // Poisson draw on its size, which the accountant does not model:
            // the round is skipped instead, counted and charged.
            self.skip_round(now_ms, round, cohort);
            return;
        }
        let start = if cohort.len() < minimum as usize {
            Err(format!("the cohort draw selected {} members, fewer than min_clients {minimum}", cohort.len()))
        } else {
            RoundState::start(now_ms, round, cohort, settings, &self.cfg, &self.global, &mut self.out)
        };
        match start {
            Ok(mut state) => {
                state.minimum = minimum;
                self.current = Some(state);
            }
            Err(reason) => {
                // Nothing was sent: the round never began for any member,
                // and its reservation goes back.
                let refunded = self.refund();
                self.attempt_failed(now_ms, round, format!("cannot start the round: {reason}"), vec![], refunded);
            }
        }
    }

    /// The fewest members a secure sum can run with (one member's "sum" is
    /// its update); a plaintext research round runs with one.
    fn secure_floor(&self) -> u32 {
        if self.cfg.secure.is_some() { 2 } else { 1 }
    }

    /// The fewest contributions a round of `cohort` members accepts:
    /// `min_clients`, except that a Poisson draw runs with the members it
    /// drew (a size-conditioned redraw would break the accounting).
    fn round_minimum(&self, cohort: usize) -> u32 {
        let min = self.cfg.min_clients.max(1);
        if self.cfg.cohort.poisson_rate().is_some() { min.min(cohort as u32).max(1) } else { min }
    }

    /// A Poisson draw too small for a secure sum: the round counts (the
    /// accountant composes `rounds` unconditioned draws and has charged
    /// this one), the model stays as it was, and the record shows a round
    /// without contributors.
    fn skip_round(&mut self, now_ms: u64, round: u64, cohort: Vec<String>) {
        let mut outcome = RoundOutcome {
            round,
            dropped: cohort.clone(),
            cohort,
            contributors: Vec::new(),
            metrics: RoundMetrics::default(),
            evaluators: 0,
            model_digest: self.global.digest_hex(),
            started_ms: now_ms,
            finished_ms: now_ms,
            epsilon: None,
            delta: None,
            clip_norm: None,
            unclipped_fraction: None,
            next_clip_norm: None,
        };
        if let Some(p) = &self.privacy {
            let st = p.status();
            outcome.epsilon = Some(st.epsilon_spent);
            outcome.delta = Some(st.delta);
        }
        self.out.push_back(Output::Event(Event::RoundFinished(Box::new(outcome))));
        self.retries = 0;
        self.completed += 1;
        self.next_round += 1;
        self.maybe_start_round(now_ms);
    }

    /// Settings of the `logical`-th round (seeds derive from it, not from
    /// the wire round number, so retries and resumed runs are reproducible).
    fn round_settings(&self, logical: u64, cohort_size: u32, minimum: u32) -> Result<RoundSettings, String> {
        let secagg = self.cfg.secure.as_ref().map(|s| {
            let (neighbours, threshold) = secagg_shape(s, cohort_size, minimum);
            SecAggSettings { threshold, modulus_bits: s.modulus_bits, clip_range: s.clip_range, neighbours }
        });
        let mut train = self.cfg.train.clone();
        train.seed = derive_seed(self.cfg.seed, logical, b"train");
        let mut dp = self.privacy.as_ref().map(|p| p.round_settings(cohort_size)).transpose()?.map(|mut dp| {
            // Under DP every member weighs 1: an example count is itself an
            // unprivatized statistic of the member's data.
            train.example_weight_cap = 0;
            // Distributed noise is sized for the fewest survivors a round accepts.
            // Under the complete graph the secure sum needs t survivors; under
            // SecAgg+ t is per neighbourhood, so only min_clients is global.
            dp.min_contributors = match &secagg {
                Some(s) if s.neighbours.is_none() => s.threshold.max(minimum),
                _ => minimum,
            }
            .max(1);
            dp
        });
        // Private evaluation rides in the rounds it is due in, under secure
        // aggregation only (the plan checked both).
        let every = self.cfg.evaluate_every;
        let due = every > 0 && logical.is_multiple_of(every) && secagg.is_some();
        let eval = match (&self.privacy, dp.as_mut()) {
            (Some(p), Some(dp)) if due => secagg.as_ref().and_then(|s| p.evaluation(dp, f64::from(s.clip_range))),
            _ => None,
        };
        Ok(RoundSettings { train, secagg, dp, eval, stats: None })
    }
}

/// Threshold and neighbour count for a cohort: the complete graph with
/// t = ⌈f·n⌉ for small cohorts; SecAgg+ with k = 4·⌈log2 n⌉ neighbours
/// (`default_neighbours`: twice the floor members accept) above the
/// configured size. The threshold is never at
/// or below two thirds of the neighbourhood (`min_threshold`: members refuse
/// it) nor below `min_clients`.
fn secagg_shape(s: &SecureConfig, n: u32, min_clients: u32) -> (Option<u32>, u32) {
    if n > s.secagg_plus_above && n > 3 {
        let k = tessera_secagg::default_neighbours(n);
        let m = k + 1;
        let t = ((s.threshold_fraction * f64::from(m)).ceil() as u32).max(tessera_secagg::min_threshold(m)).min(m);
        (Some(k), t)
    } else {
        let t = ((s.threshold_fraction * n as f64).ceil() as u32)
            .max(tessera_secagg::min_threshold(n))
            .max(min_clients)
            .min(n);
        (None, t)
    }
}

#[cfg(test)]
mod tests;
