//! Structure-aware fuzzing hooks (feature `arbitrary`): one input to either
//! state machine as an [`Arbitrary`] value. A fuzz target draws a sequence of
//! them and applies each; every message the wire could carry is reachable,
//! since the messages' `Arbitrary` and their serde derive cover the same
//! values. Nothing here is compiled into a daemon.

use arbitrary::Arbitrary;
use tessera_core::{AggregatorMsg, ClientMsg, EvalMetrics};

use crate::coordinator::{self, Coordinator};
use crate::member::{self, LocalFailure, MemberMachine, TrainedUpdate};

/// One thing that can happen to a member.
#[derive(Arbitrary, Debug)]
pub enum MemberInput {
    /// A message from the aggregator.
    Message(AggregatorMsg),
    /// Local training for `round` finished.
    Trained {
        /// The round the driver trained for.
        round: u64,
        /// What training produced.
        result: Result<TrainedUpdate, LocalFailure>,
    },
    /// Local evaluation for `round` finished.
    Evaluated {
        /// The round the driver evaluated for.
        round: u64,
        /// What evaluation produced.
        metrics: Result<EvalMetrics, LocalFailure>,
    },
}

impl MemberInput {
    /// Feed the input to `member`, then drain its outputs as a driver
    /// would, and return them for the target's invariants.
    pub fn apply<M: MemberMachine>(self, member: &mut M) -> Vec<member::Output> {
        match self {
            Self::Message(msg) => {
                // A refusal is a correct answer to a hostile message.
                let _ = member.handle(msg);
            }
            Self::Trained { round, result } => member.training_done(round, result),
            Self::Evaluated { round, metrics } => member.evaluation_done(round, metrics),
        }
        std::iter::from_fn(|| member.poll_output()).collect()
    }
}

/// One thing that can happen to the coordinator; `at_ms` only moves forward
/// as the fuzz target adds it to its clock.
#[derive(Arbitrary, Debug)]
pub enum CoordinatorInput {
    /// A member (by index into the target's member names) connected.
    Connected(u8),
    /// A member disconnected.
    Disconnected(u8),
    /// A message from a member.
    Message {
        /// Index into the target's member names.
        from: u8,
        /// The message.
        msg: ClientMsg,
    },
    /// Time passed.
    Tick {
        /// Milliseconds added to the clock.
        after_ms: u16,
    },
}

impl CoordinatorInput {
    /// Feed the input to `coordinator` at `*now_ms` (advanced by `Tick`),
    /// naming members from `members` (an empty list names no one), then
    /// drain its outputs and return them for the target's invariants.
    pub fn apply(
        self,
        coordinator: &mut Coordinator,
        members: &[String],
        now_ms: &mut u64,
    ) -> Vec<coordinator::Output> {
        let name = |i: u8| members.get(usize::from(i) % members.len().max(1)).map(String::as_str);
        match self {
            Self::Connected(i) => {
                if let Some(m) = name(i) {
                    coordinator.member_connected(*now_ms, m);
                }
            }
            Self::Disconnected(i) => {
                if let Some(m) = name(i) {
                    coordinator.member_disconnected(*now_ms, m);
                }
            }
            Self::Message { from, msg } => {
                if let Some(m) = name(from) {
                    // A violation disconnects the sender; that is the point.
                    let _ = coordinator.handle(*now_ms, m, msg);
                }
            }
            Self::Tick { after_ms } => {
                *now_ms += u64::from(after_ms);
                coordinator.tick(*now_ms);
            }
        }
        std::iter::from_fn(|| coordinator.poll_output()).collect()
    }
}
