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
    /// A round is in progress.
    Running,
    /// The run ended; `stop_reason` says why.
    Finished,
}

impl RunState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RunState::Waiting => "waiting",
            RunState::Running => "running",
            RunState::Finished => "finished",
        }
    }
}

/// One consortium member as the status shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's certificate name.
    pub name: String,
    /// Connected now.
    pub online: bool,
    /// Its name, or the certificate `pki/<name>.pem` holds, is on the
    /// revocation list (its live connection was closed; refused at every
    /// connection).
    pub revoked: bool,
}

/// One completed round, for the charts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundPoint {
    /// 1-based index among completed rounds.
    pub logical: u64,
    /// Wire round number (attempt id).
    pub round: u64,
    /// The cohort's example-weighted evaluation accuracy, in [0, 1]; `None`
    /// when the round evaluated nothing (no evaluation due, or a private run
    /// without `[privacy.evaluation]`).
    pub accuracy: Option<f64>,
    /// The cohort's example-weighted evaluation loss; `None` when the round
    /// did not release one (record-level private evaluation, no evaluation).
    pub loss: Option<f64>,
    /// Members whose update is in the sum.
    pub participants: u32,
    /// Cohort members that dropped out of the round.
    pub dropped: u32,
    /// Cumulative epsilon after the round, under DP.
    pub epsilon: Option<f64>,
}

/// Everything the status displays show.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// The run id, hex.
    pub run_id: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Last refresh, milliseconds since the Unix epoch; the daemon's
    /// heartbeat moves it every 2 s, so an old value means a dead daemon.
    pub updated_ms: i64,
    /// Where the run stands.
    pub state: RunState,
    /// Why the run stopped, once it has.
    pub stop_reason: Option<String>,
    /// `[run] rounds`.
    pub rounds_planned: u64,
    /// Rounds completed and counted toward the run.
    pub completed_rounds: u64,
    /// Round attempts abandoned or cut short by a restart.
    pub aborted_rounds: u64,
    /// Wire number of the round in progress.
    pub current_round: Option<u64>,
    /// The round's protocol phase, e.g. `masked_input`.
    pub phase: Option<String>,
    /// Every configured member, plus any other seen online.
    pub members: Vec<MemberStatus>,
    /// Cumulative epsilon spent, under DP.
    pub epsilon_spent: Option<f64>,
    /// The run's epsilon budget, under DP.
    pub epsilon_budget: Option<f64>,
    /// The delta both epsilons are stated at.
    pub delta: Option<f64>,
    /// Completed rounds, oldest first, for the charts.
    pub history: Vec<RoundPoint>,
}

/// A snapshot whose heartbeat (`updated_ms`) is older than this belongs to
/// an aggregator that is not running: the daemon moves it every 2 s.
pub const HEARTBEAT_STALE_MS: i64 = 15_000;

impl StatusSnapshot {
    /// Members connected now and admitted: a revoked member's connection is
    /// being closed and no longer counts.
    pub(crate) fn members_online(&self) -> usize {
        self.members.iter().filter(|m| m.online && !m.revoked).count()
    }

    /// Whether the daemon that wrote this snapshot still runs, judged from
    /// outside it at `now_ms`: its heartbeat is at most
    /// [`HEARTBEAT_STALE_MS`] old, and its process is alive where that can
    /// be checked (`pid_alive`: `Some` on the machine that runs it, from
    /// [`process_alive`]).
    pub fn daemon_running(&self, now_ms: i64, pid_alive: Option<bool>) -> bool {
        now_ms - self.updated_ms <= HEARTBEAT_STALE_MS && pid_alive != Some(false)
    }

    /// The snapshot as an outside reader must present it: when the daemon
    /// is not running, no member is online and no round is in progress,
    /// whatever the last row written says.
    pub fn as_seen(mut self, running: bool) -> Self {
        if !running {
            for m in &mut self.members {
                m.online = false;
            }
            self.current_round = None;
            self.phase = None;
        }
        self
    }

    pub(crate) fn epsilon_left(&self) -> Option<f64> {
        Some((self.epsilon_budget? - self.epsilon_spent.unwrap_or(0.0)).max(0.0))
    }

    pub(crate) fn last(&self) -> Option<&RoundPoint> {
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
            (RunState::Waiting, None) => {
                format!("waiting for members (completed {} of {} rounds)", self.completed_rounds, self.rounds_planned)
            }
            (RunState::Running, None) => {
                format!("no round in progress (completed {} of {} rounds)", self.completed_rounds, self.rounds_planned)
            }
        }
    }
}

/// Whether process `pid` exists on this machine: `Some` where `/proc`
/// answers (Linux), `None` elsewhere (then only the heartbeat decides).
pub fn process_alive(pid: u32) -> Option<bool> {
    let proc_root = std::path::Path::new("/proc/self");
    proc_root.exists().then(|| std::path::Path::new("/proc").join(pid.to_string()).exists())
}

mod html;
mod prometheus;
mod text;

#[cfg(test)]
mod tests;
