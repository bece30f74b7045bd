//! The Prometheus text exposition of the status.

use std::fmt::Write as _;

use super::{RunState, StatusSnapshot};

impl StatusSnapshot {
    /// Prometheus text exposition format (version 0.0.4).
    pub(crate) fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(s, "{name}{labels} {}", prom_value(*v));
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        metric(
            "tessera_rounds_planned",
            "gauge",
            "Rounds the run is configured for.",
            &one(self.rounds_planned as f64),
        );
        metric(
            "tessera_rounds_completed",
            "gauge",
            "Rounds completed and counted toward the run.",
            &one(self.completed_rounds as f64),
        );
        metric(
            "tessera_rounds_aborted",
            "gauge",
            "Round attempts aborted or interrupted.",
            &one(self.aborted_rounds as f64),
        );
        metric(
            "tessera_round_current",
            "gauge",
            "Wire number of the round in progress (0 when none).",
            &one(self.current_round.unwrap_or(0) as f64),
        );
        let phase: Vec<(String, f64)> =
            self.phase.iter().map(|p| (format!("{{phase=\"{}\"}}", prom_label(p)), 1.0)).collect();
        metric("tessera_round_phase", "gauge", "1 for the phase of the round in progress.", &phase);
        let states: Vec<(String, f64)> = [RunState::Waiting, RunState::Running, RunState::Finished]
            .iter()
            .map(|st| (format!("{{state=\"{}\"}}", st.name()), f64::from(u8::from(*st == self.state))))
            .collect();
        metric("tessera_run_state", "gauge", "1 for the run's current state.", &states);
        metric("tessera_members_online", "gauge", "Members connected now.", &one(self.members_online() as f64));
        let members: Vec<(String, f64)> = self
            .members
            .iter()
            .map(|m| (format!("{{member=\"{}\"}}", prom_label(&m.name)), f64::from(u8::from(m.online))))
            .collect();
        metric("tessera_member_online", "gauge", "1 when the member is connected.", &members);
        let revoked: Vec<(String, f64)> = self
            .members
            .iter()
            .map(|m| (format!("{{member=\"{}\"}}", prom_label(&m.name)), f64::from(u8::from(m.revoked))))
            .collect();
        metric("tessera_member_revoked", "gauge", "1 when the member's certificate is revoked.", &revoked);
        if let Some(e) = self.epsilon_spent {
            metric("tessera_privacy_epsilon_spent", "gauge", "Epsilon charged so far (pending included).", &one(e));
        }
        if let Some(b) = self.epsilon_budget {
            metric("tessera_privacy_epsilon_budget", "gauge", "The run's epsilon budget.", &one(b));
        }
        if let Some(d) = self.delta {
            metric("tessera_privacy_delta", "gauge", "The run's delta.", &one(d));
        }
        if let Some(p) = self.last() {
            // Absent (not released, not measured) is no sample, not a 0.
            if let Some(accuracy) = p.accuracy {
                metric(
                    "tessera_last_accuracy",
                    "gauge",
                    "Cohort-weighted accuracy after the last round.",
                    &one(accuracy),
                );
            }
            if let Some(loss) = p.loss {
                metric("tessera_last_loss", "gauge", "Cohort-weighted loss after the last round.", &one(loss));
            }
        }
        metric(
            "tessera_status_updated_seconds",
            "gauge",
            "Unix time of this snapshot.",
            &one(self.updated_ms as f64 / 1000.0),
        );
        s
    }
}

pub(super) fn prom_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn prom_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}
