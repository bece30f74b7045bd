//! What an operator sees of a running aggregator: one [`StatusSnapshot`],
//! kept current by the daemon, stored in the state database (for
//! `tessera-aggregator status`) and served over HTTP (see [`crate::http`]) as
//! a status page with inline SVG charts, Prometheus text and JSON.
//!
//! The data model is here; each rendering has its own file (`text` for
//! the CLI, `prometheus`, `html` for the page).
//!
//! Only aggregate figures appear here: round numbers, phases, member names,
//! the privacy spend and the cohort's weighted evaluation metrics.

use serde::{Deserialize, Serialize};

/// Where the run stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Waiting for enough members to start a round.
    #[default]
    Waiting,
    Running,
    Finished,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Waiting => "waiting",
            RunState::Running => "running",
            RunState::Finished => "finished",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub online: bool,
    pub revoked: bool,
}

/// One completed round, for the charts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundPoint {
    /// 1-based index among completed rounds.
    pub logical: u64,
    /// Wire round number (attempt id).
    pub round: u64,
    pub accuracy: f64,
    pub loss: f64,
    pub participants: u32,
    pub dropped: u32,
    pub epsilon: Option<f64>,
}

/// Everything the status displays show.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub run_id: String,
    pub pid: u32,
    pub updated_ms: i64,
    pub state: RunState,
    pub stop_reason: Option<String>,
    pub rounds_planned: u64,
    pub completed_rounds: u64,
    pub aborted_rounds: u64,
    /// Wire number of the round in progress.
    pub current_round: Option<u64>,
    pub phase: Option<String>,
    pub members: Vec<MemberStatus>,
    pub epsilon_spent: Option<f64>,
    pub epsilon_budget: Option<f64>,
    pub delta: Option<f64>,
    pub history: Vec<RoundPoint>,
}

impl StatusSnapshot {
    pub fn members_online(&self) -> usize {
        self.members.iter().filter(|m| m.online).count()
    }

    pub fn epsilon_left(&self) -> Option<f64> {
        Some((self.epsilon_budget? - self.epsilon_spent.unwrap_or(0.0)).max(0.0))
    }

    pub fn last(&self) -> Option<&RoundPoint> {
        self.history.last()
    }

    /// The round being run, as "round N (the K-th of M)".
    fn round_line(&self) -> String {
        match (self.state, self.current_round) {
            (RunState::Finished, _) => {
                format!("finished after {} of {} rounds", self.completed_rounds, self.rounds_planned)
            }
            (_, Some(r)) => format!(
                "round {r} in progress (completed {} of {}), phase {}",
                self.completed_rounds,
                self.rounds_planned,
                self.phase.as_deref().unwrap_or("?")
            ),
            _ => format!("waiting for members (completed {} of {} rounds)", self.completed_rounds, self.rounds_planned),
        }
    }
}

mod html;
mod prometheus;
mod text;

#[cfg(test)]
mod tests;
