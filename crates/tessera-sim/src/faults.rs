//! Dropout and latency models. Every decision is a pure function of the
//! scenario seed, the member and the round, so a run with dropouts and
//! stragglers is as reproducible as one without.
//!
//! Members leave a round through [`Faulty`], a wrapper around the member's
//! state machine that the client driver drives like any member
//! ([`Fault::Withdraw`]): instead of the message
//! that opens a protocol phase they send `Decline`, and the aggregator
//! drops them from the round at once, exactly as when a member disconnects
//! (its masks are recovered from the others' shares). Withdrawing in-band
//! rather than closing the connection keeps the next round's cohort
//! independent of how fast a reconnect happens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use tessera_core::{AggregatorMsg, ClientMsg, ClientMsgKind, EvalMetrics};
use tessera_protocol::derive_seed;
use tessera_protocol::member::{LocalFailure, MemberMachine, Output, Refusal, TrainedUpdate};

/// What the fault plan does to a member's outgoing message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Send it.
    Pass,
    /// Leave the round in-band: send `Decline` instead and nothing further
    /// of that round except evaluation reports. The aggregator drops the
    /// member at once, so the outcome does not depend on timing.
    Withdraw,
}

/// A member whose outgoing round messages pass through the run's
/// [`FaultPlan`] before the driver sends them.
pub(crate) struct Faulty<P> {
    inner: P,
    plan: Option<Arc<FaultPlan>>,
    /// The member's index in the scenario.
    index: usize,
    /// The round the plan withdrew this member from.
    withdrawn: Option<u64>,
}

impl<P> Faulty<P> {
    /// Member `index` of the scenario; without a plan every message passes.
    pub fn new(inner: P, plan: Option<Arc<FaultPlan>>, index: usize) -> Self {
        Self { inner, plan, index, withdrawn: None }
    }

    /// What the plan makes of an outgoing message; `None` drops it.
    fn apply(&mut self, msg: ClientMsg) -> Option<ClientMsg> {
        let (Some(plan), Some(round)) = (&self.plan, msg.round()) else { return Some(msg) };
        if self.withdrawn == Some(round) && !matches!(msg, ClientMsg::EvalReport { .. }) {
            return None;
        }
        if plan.decide(self.index, round, msg.kind()) == Fault::Withdraw {
            self.withdrawn = Some(round);
            return Some(ClientMsg::Decline { round, reason: "simulated dropout".into() });
        }
        Some(msg)
    }
}

impl<P: MemberMachine> MemberMachine for Faulty<P> {
    fn member(&self) -> &str {
        self.inner.member()
    }
    fn hello(&mut self) {
        self.inner.hello()
    }
    fn handle(&mut self, msg: AggregatorMsg) -> Result<(), Refusal> {
        self.inner.handle(msg)
    }
    fn poll_output(&mut self) -> Option<Output> {
        loop {
            match self.inner.poll_output()? {
                Output::Send(msg) => match self.apply(msg) {
                    Some(msg) => return Some(Output::Send(msg)),
                    None => continue,
                },
                other => return Some(other),
            }
        }
    }
    fn training_done(&mut self, round: u64, result: Result<TrainedUpdate, LocalFailure>) {
        self.inner.training_done(round, result)
    }
    fn evaluation_done(&mut self, round: u64, metrics: Result<EvalMetrics, LocalFailure>) {
        self.inner.evaluation_done(round, metrics)
    }
    fn statistics_done(&mut self, round: u64, result: Result<tessera_core::LocalStatistics, LocalFailure>) {
        self.inner.statistics_done(round, result)
    }
}

/// The protocol phases a member can drop out before, in round order.
pub(crate) const PHASES: [&str; 5] =
    ["before_keys", "before_shares", "before_masked_input", "before_unmask", "before_eval"];

/// Probability that a member still in the round drops right before each
/// phase (conditional on having reached it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropoutSection {
    /// Leaves before advertising its keys.
    pub before_keys: f64,
    /// Leaves before sending its encrypted key shares.
    pub before_shares: f64,
    /// Leaves before sending its masked update (the aggregator recovers its
    /// pairwise masks from the others' shares).
    pub before_masked_input: f64,
    /// Leaves before sending its unmasking shares (its update is in the sum).
    pub before_unmask: f64,
    /// Leaves before reporting its evaluation of the new model (its update
    /// is already in the aggregate; the round's metrics lack its report).
    pub before_eval: f64,
}

impl DropoutSection {
    fn probabilities(&self) -> [f64; 5] {
        [self.before_keys, self.before_shares, self.before_masked_input, self.before_unmask, self.before_eval]
    }

    /// Every probability lies in [0, 1]; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in PHASES.iter().zip(self.probabilities()) {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("dropout.{name} must lie in [0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// Simulated time: how long each member takes for a round, and the round
/// deadline after which it counts as a straggler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencySection {
    /// Compute time per training example per local epoch at speed 1.
    pub compute_ms_per_example: f64,
    /// Members' speed factors are log-normal with median 1 and this sigma
    /// (0: all equally fast). Drawn once per member.
    pub speed_sigma: f64,
    /// Network time per round (model down and update up), fixed part.
    pub network_ms: f64,
    /// Plus a uniform draw in [0, network_jitter_ms) per member and round.
    pub network_jitter_ms: f64,
    /// Members whose simulated round time exceeds this are stragglers: they
    /// drop before their masked input. `None`: no deadline.
    pub deadline_ms: Option<f64>,
}

impl Default for LatencySection {
    fn default() -> Self {
        Self {
            compute_ms_per_example: 0.0,
            speed_sigma: 0.0,
            network_ms: 0.0,
            network_jitter_ms: 0.0,
            deadline_ms: None,
        }
    }
}

impl LatencySection {
    /// Every value is finite and non-negative, and a deadline is positive.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !(ok(self.compute_ms_per_example)
            && ok(self.speed_sigma)
            && ok(self.network_ms)
            && ok(self.network_jitter_ms)
            && self.deadline_ms.is_none_or(|d| ok(d) && d > 0.0))
        {
            return Err("latency values must be finite and non-negative (deadline_ms positive)".into());
        }
        Ok(())
    }
}

/// Observed counts, for the summary and the dropout test.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultStats {
    /// Per phase, in `[dropout]` key order (`before_keys`, `before_shares`,
    /// `before_masked_input`, `before_unmask`, `before_eval`): members that
    /// reached it.
    pub reached: [u64; 5],
    /// Per phase, in the same order: members that dropped there.
    pub dropped: [u64; 5],
    /// Members dropped for missing the deadline.
    pub stragglers: u64,
    /// Per round: members that left before their masked input (dropouts
    /// and stragglers), i.e. those the aggregate lacks because of faults.
    pub left_before_input: BTreeMap<u64, u32>,
}

/// The run's fault plan, shared by every member's hook.
pub(crate) struct FaultPlan {
    seed: u64,
    dropout: Option<DropoutSection>,
    latency: Option<LatencySection>,
    /// Per member: local training examples and speed factor.
    examples: Vec<u64>,
    speed: Vec<f64>,
    epochs: u32,
    stats: Mutex<FaultStats>,
}

impl FaultPlan {
    /// The plan for a run: `examples` training examples per member (the
    /// latency model's compute time), `epochs` local epochs per round.
    pub fn new(
        seed: u64,
        dropout: Option<DropoutSection>,
        latency: Option<LatencySection>,
        examples: Vec<u64>,
        epochs: u32,
    ) -> Self {
        let sigma = latency.as_ref().map_or(0.0, |l| l.speed_sigma);
        let speed = (0..examples.len())
            .map(|k| {
                let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(seed, k as u64, b"speed"));
                (sigma * crate::partition::standard_normal(&mut rng)).exp()
            })
            .collect();
        Self { seed, dropout, latency, examples, speed, epochs, stats: Mutex::default() }
    }

    /// Whether the hook is needed at all.
    pub fn active(&self) -> bool {
        self.dropout.is_some() || self.latency.as_ref().is_some_and(|l| l.deadline_ms.is_some())
    }

    /// Member `k`'s draws for `round`: a uniform per phase, then jitter
    /// (the evaluation phase's draw comes last, so adding it left the
    /// other draws, and earlier runs' metrics, unchanged).
    fn draws(&self, member: usize, round: u64) -> ([f64; 5], f64) {
        let mut label = b"faults/".to_vec();
        label.extend_from_slice(&(member as u64).to_le_bytes());
        let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(self.seed, round, &label));
        let u: [f64; 4] = [rng.r#gen(), rng.r#gen(), rng.r#gen(), rng.r#gen()];
        let jitter = rng.r#gen();
        ([u[0], u[1], u[2], u[3], rng.r#gen()], jitter)
    }

    /// Simulated milliseconds member `k` needs for `round` (0 without a latency model).
    pub fn member_ms(&self, member: usize, round: u64) -> f64 {
        let Some(l) = &self.latency else { return 0.0 };
        let (_, jitter) = self.draws(member, round);
        let compute = self.epochs as f64 * self.examples[member] as f64 * l.compute_ms_per_example / self.speed[member];
        compute + l.network_ms + jitter * l.network_jitter_ms
    }

    /// Simulated length of a round: the slowest contributor, capped at the deadline.
    pub fn round_seconds(&self, contributors: &[usize], round: u64) -> f64 {
        let slowest = contributors.iter().map(|k| self.member_ms(*k, round)).fold(0.0, f64::max);
        let capped = self.latency.as_ref().and_then(|l| l.deadline_ms).map_or(slowest, |d| slowest.min(d));
        capped / 1000.0
    }

    /// The hook's decision for member `k` about to send `kind` in `round`.
    pub fn decide(&self, member: usize, round: u64, kind: ClientMsgKind) -> Fault {
        let phase = match kind {
            ClientMsgKind::AdvertiseKeys => 0,
            ClientMsgKind::ShareKeys => 1,
            ClientMsgKind::MaskedStart | ClientMsgKind::PlainStart => 2,
            ClientMsgKind::UnmaskShares => 3,
            ClientMsgKind::EvalReport => 4,
            _ => return Fault::Pass,
        };
        let (u, _) = self.draws(member, round);
        let mut stats = self.stats.lock().expect("fault stats");
        stats.reached[phase] += 1;
        if let Some(d) = &self.dropout
            && u[phase] < d.probabilities()[phase]
        {
            stats.dropped[phase] += 1;
            if phase <= 2 {
                *stats.left_before_input.entry(round).or_default() += 1;
            }
            return Fault::Withdraw;
        }
        if phase == 2
            && let Some(deadline) = self.latency.as_ref().and_then(|l| l.deadline_ms)
            && self.member_ms(member, round) > deadline
        {
            stats.stragglers += 1;
            *stats.left_before_input.entry(round).or_default() += 1;
            return Fault::Withdraw;
        }
        Fault::Pass
    }

    /// The counts so far.
    pub fn stats(&self) -> FaultStats {
        self.stats.lock().expect("fault stats").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_a_function_of_seed_member_and_round() {
        let d = DropoutSection { before_keys: 0.3, before_masked_input: 0.3, ..Default::default() };
        let a = FaultPlan::new(5, Some(d.clone()), None, vec![10; 20], 1);
        let b = FaultPlan::new(5, Some(d), None, vec![10; 20], 1);
        for k in 0..20 {
            for r in 1..30 {
                for kind in [ClientMsgKind::AdvertiseKeys, ClientMsgKind::MaskedStart, ClientMsgKind::MaskedChunk] {
                    assert_eq!(a.decide(k, r, kind), b.decide(k, r, kind));
                }
            }
        }
        assert_eq!(a.stats(), b.stats());
        assert_eq!(a.decide(0, 1, ClientMsgKind::MaskedChunk), Fault::Pass);
    }

    #[test]
    fn stragglers_miss_the_deadline_and_set_the_round_time() {
        let l = LatencySection {
            compute_ms_per_example: 1.0,
            network_ms: 10.0,
            deadline_ms: Some(500.0),
            ..Default::default()
        };
        // 100 examples: 110 ms; 1000 examples: 1010 ms > deadline.
        let p = FaultPlan::new(1, None, Some(l), vec![100, 1000], 1);
        assert_eq!(p.decide(0, 1, ClientMsgKind::MaskedStart), Fault::Pass);
        assert_eq!(p.decide(1, 1, ClientMsgKind::MaskedStart), Fault::Withdraw);
        assert_eq!(p.stats().stragglers, 1);
        assert!((p.round_seconds(&[0], 1) - 0.110).abs() < 1e-12);
        assert!((p.round_seconds(&[0, 1], 1) - 0.5).abs() < 1e-12, "capped at the deadline");
    }
}
