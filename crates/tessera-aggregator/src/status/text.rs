//! The plain-text status `tessera-aggregator status` prints.

use std::fmt::Write as _;

use super::{MemberStatus, StatusSnapshot};
use crate::store::utc;

impl StatusSnapshot {
    /// Plain text for `tessera-aggregator status`. `now_ms` (milliseconds
    /// since the Unix epoch) ages the snapshot; `running` is
    /// [`StatusSnapshot::daemon_running`]'s verdict. A snapshot of a daemon
    /// that is not running says so, with the time of its last heartbeat,
    /// and counts nobody online (pass it through [`StatusSnapshot::as_seen`]).
    pub fn render_text(&self, now_ms: i64, running: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "run {}", self.run_id);
        let _ = writeln!(s, "state: {} - {}", self.state.name(), self.round_line());
        if let Some(r) = &self.stop_reason {
            let _ = writeln!(s, "stop reason: {r}");
        }
        let age = (now_ms - self.updated_ms).max(0) / 1000;
        if running {
            let _ =
                writeln!(s, "aggregator running: pid {}, heartbeat {} ({age} s ago)", self.pid, utc(self.updated_ms));
        } else {
            let _ = writeln!(
                s,
                "aggregator not running since {} ({age} s ago; last pid {})",
                utc(self.updated_ms),
                self.pid
            );
        }
        let names = |f: &dyn Fn(&MemberStatus) -> bool| {
            let v: Vec<&str> = self.members.iter().filter(|m| f(m)).map(|m| m.name.as_str()).collect();
            if v.is_empty() { "none".to_string() } else { v.join(", ") }
        };
        let _ = writeln!(
            s,
            "members online: {} of {} ({}); offline: {}; revoked: {}",
            self.members_online(),
            self.members.iter().filter(|m| !m.revoked).count(),
            names(&|m| m.online && !m.revoked),
            names(&|m| !m.online && !m.revoked),
            names(&|m| m.revoked)
        );
        match (self.epsilon_spent, self.epsilon_budget) {
            (spent, Some(budget)) => {
                let _ = writeln!(
                    s,
                    "privacy: epsilon spent {:.4} of {budget:.4} (delta {:e}); left {:.4}",
                    spent.unwrap_or(0.0),
                    self.delta.unwrap_or(0.0),
                    self.epsilon_left().unwrap_or(0.0)
                );
            }
            (Some(spent), None) => {
                let _ = writeln!(s, "privacy: epsilon spent {spent:.4} (delta {:e})", self.delta.unwrap_or(0.0));
            }
            (None, None) => {
                let _ = writeln!(s, "privacy: no differential privacy configured");
            }
        }
        match self.last() {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "last accuracy: {} (completed round {}, wire round {}), loss {}",
                    crate::value_or_dash(p.accuracy),
                    p.logical,
                    p.round,
                    crate::value_or_dash(p.loss)
                );
            }
            None => {
                let _ = writeln!(s, "last accuracy: no round completed yet");
            }
        }
        let _ = writeln!(s, "aborted or interrupted attempts: {}", self.aborted_rounds);
        s
    }
}
