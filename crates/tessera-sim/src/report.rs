//! `report.md` in the run directory: the scenario at a glance, the final
//! round, PNG plots and the per-round table. Only aggregates appear here:
//! metrics the members reported and counts per member and class.

use std::fmt::Write as _;
use std::path::Path;

use tessera_aggregator::value_or_dash;

use crate::plots::{Series, label_distribution, lines};
use crate::run::SimResult;
use crate::scenario::Scenario;

/// The plots a report holds; written next to `report.md`.
pub const PLOTS: [&str; 5] = ["accuracy.png", "loss.png", "epsilon.png", "participants.png", "label_distribution.png"];

/// Draw the plots and write `report.md` into `dir`. `extra` (e.g. the
/// `compare` table) is appended as is.
pub(crate) fn write_report(dir: &Path, s: &Scenario, r: &SimResult, extra: Option<&str>) -> anyhow::Result<()> {
    let accepted: Vec<_> = r.records.iter().filter(|x| x.accepted).collect();
    // A value a round did not release is no point (not a 0 or a 0.5).
    let released = |f: fn(&tessera_core::RoundRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        accepted.iter().filter_map(|x| f(x).map(|v| (x.round as f64, v))).collect()
    };
    lines(
        &dir.join("accuracy.png"),
        "accuracy by round",
        &[
            Series { name: "accuracy", points: released(|x| x.accuracy) },
            Series { name: "balanced accuracy", points: released(|x| x.balanced_accuracy) },
            Series { name: "AUC", points: released(|x| x.auc) },
        ],
        Some(0.0..1.0),
    )?;
    lines(&dir.join("loss.png"), "loss by round", &[Series { name: "loss", points: released(|x| x.loss) }], None)?;
    let eps: Vec<(f64, f64)> = accepted.iter().filter_map(|x| x.epsilon.map(|e| (x.round as f64, e))).collect();
    lines(&dir.join("epsilon.png"), "epsilon spent by round", &[Series { name: "epsilon", points: eps }], None)?;
    let all = |f: fn(&tessera_core::RoundRecord) -> f64| -> Vec<(f64, f64)> {
        r.records.iter().map(|x| (x.round as f64, f(x))).collect()
    };
    lines(
        &dir.join("participants.png"),
        "participants and dropouts by round",
        &[
            Series { name: "participants", points: all(|x| x.participants as f64) },
            Series { name: "dropped", points: all(|x| x.dropped as f64) },
        ],
        Some(0.0..(cohort_bound(s, r) as f64 * 1.05).max(1.0)),
    )?;
    label_distribution(&dir.join("label_distribution.png"), &r.label_counts, &r.class_names)?;
    std::fs::write(dir.join("report.md"), markdown(s, r, extra))?;
    Ok(())
}

/// The most members a round can hold: the population's largest draw, or every member.
fn cohort_bound(s: &Scenario, r: &SimResult) -> usize {
    match s.population {
        Some(_) => r.cohorts.iter().map(Vec::len).max().unwrap_or(0),
        None => s.clients,
    }
}

fn markdown(s: &Scenario, r: &SimResult, extra: Option<&str>) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Simulation report: {}\n", s.name);
    if !s.description.is_empty() {
        let _ = writeln!(m, "{}\n", s.description);
    }
    let _ = writeln!(m, "| setting | value |\n|---|---|");
    match &s.population {
        Some(p) => {
            let _ = writeln!(
                m,
                "| members | {} (population; cohort drawn by {p:?}, {} built) |",
                s.clients, r.members_built
            );
        }
        None => {
            let _ = writeln!(m, "| members | {} (cohort: {:?}) |", s.clients, s.cohort);
        }
    }
    let _ = writeln!(m, "| rounds | {} completed, {} aborted ({}) |", r.end.completed_rounds, r.aborted, r.end.reason);
    let _ = writeln!(m, "| partition | {:?} |", s.partition);
    match (&s.model, &s.vision_model) {
        (Some(t), _) => {
            let _ = writeln!(m, "| model | MLP, hidden {:?}, {} classes |", t.hidden, t.num_classes);
        }
        (None, Some(v)) => {
            let _ = writeln!(
                m,
                "| model | {:?}, {} classes, {} px, {} trainable blocks |",
                v.kind, v.num_classes, v.image_size, v.trainable_blocks
            );
        }
        (None, None) => {}
    }
    let secure = if s.insecure_plaintext {
        "none (research plaintext mode)".to_string()
    } else {
        format!("SecAgg (SecAgg+ above {} members)", s.secure.secagg_plus_above)
    };
    let _ = writeln!(m, "| aggregation | {secure} |");
    match &s.privacy {
        Some(p) => {
            let _ = writeln!(
                m,
                "| privacy | {:?}-level DP, target epsilon {} at delta {:e}; noise multiplier {:.4} |",
                p.unit,
                p.epsilon,
                p.delta,
                r.noise_multiplier.unwrap_or(0.0)
            );
        }
        None => {
            let _ = writeln!(m, "| privacy | none |");
        }
    }
    if let Some(d) = &s.dropout {
        let _ = writeln!(
            m,
            "| dropout | before keys {}, shares {}, masked input {}, unmask {}, eval {} |",
            d.before_keys, d.before_shares, d.before_masked_input, d.before_unmask, d.before_eval
        );
    }
    if let Some(l) = &s.latency {
        let _ = writeln!(
            m,
            "| latency | {} ms/example, speed sigma {}, network {} + U(0, {}) ms, deadline {} |",
            l.compute_ms_per_example,
            l.speed_sigma,
            l.network_ms,
            l.network_jitter_ms,
            l.deadline_ms.map_or("none".into(), |d| format!("{d} ms"))
        );
    }
    let f = &r.faults;
    if s.dropout.is_some() || s.latency.is_some() {
        let _ = writeln!(
            m,
            "| injected | dropped {:?} of reached {:?} per phase; {} stragglers |",
            f.dropped, f.reached, f.stragglers
        );
    }
    let _ = writeln!(m, "| seed | {} |", s.seed);
    let _ = writeln!(m, "| wall time | {:.1} s (not in metrics.jsonl) |\n", r.wall_seconds);

    if let Some(x) = r.records.iter().rev().find(|x| x.accepted) {
        let _ = writeln!(m, "## Final round\n");
        let _ = writeln!(m, "| round | accuracy | balanced acc. | AUC | loss | epsilon | participants |");
        let _ = writeln!(m, "|---|---|---|---|---|---|---|");
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            x.round,
            value_or_dash(x.accuracy),
            value_or_dash(x.balanced_accuracy),
            value_or_dash(x.auc),
            value_or_dash(x.loss),
            x.epsilon.map_or("-".into(), |e| format!("{e:.3}")),
            x.participants
        );
    }
    if let Some(h) = &r.harness {
        let _ = writeln!(m, "## The harness's evaluation of the final model\n");
        let _ = writeln!(
            m,
            "The simulator, which holds every member's data, evaluates the final model on each member's \
             held-out split itself (outside the protocol; nothing leaves a member): accuracy {:.4}, \
             balanced accuracy {:.4}, AUC {:.4}, loss {:.4} ({} examples). Under DP the rounds above \
             carry only the private (noised) evaluation, or none.\n",
            h.accuracy, h.balanced_accuracy, h.auc, h.loss, h.num_examples
        );
    }
    let _ = writeln!(m, "## Plots\n");
    let _ = writeln!(m, "Accuracy, balanced accuracy and AUC of the global model (members' held-out splits):\n");
    let _ = writeln!(m, "![accuracy by round](accuracy.png)\n");
    let _ = writeln!(m, "![loss by round](loss.png)\n");
    let _ = writeln!(m, "Privacy spent so far (empty without DP):\n");
    let _ = writeln!(m, "![epsilon by round](epsilon.png)\n");
    let _ = writeln!(
        m,
        "Contributions in the aggregate and cohort members that dropped (aborted rounds: 0 participants):\n"
    );
    let _ = writeln!(m, "![participants and dropouts by round](participants.png)\n");
    let _ = writeln!(m, "Examples per class held by each member (the partition's skew):\n");
    let _ = writeln!(m, "![label distribution](label_distribution.png)\n");
    if let Some(extra) = extra {
        let _ = writeln!(m, "{extra}\n");
    }
    let _ = writeln!(m, "## Rounds\n");
    let _ = writeln!(
        m,
        "{} marks a value the round did not release: private evaluation releases confusion counts (and, \
         under the client unit, a loss sum), never the per-example scores AUC needs; aborted rounds and \
         rounds without evaluation (a private run without `[privacy.evaluation]`) release no accuracy, \
         loss or AUC. Plots leave such rounds out.\n",
        tessera_aggregator::ABSENT
    );
    let _ =
        writeln!(m, "| round | accepted | participants | dropped | accuracy | AUC | loss | epsilon | sim. seconds |");
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|");
    for x in &r.records {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} |",
            x.round,
            if x.accepted { "yes" } else { "aborted" },
            x.participants,
            x.dropped,
            value_or_dash(x.accuracy),
            value_or_dash(x.auc),
            value_or_dash(x.loss),
            x.epsilon.map_or("-".into(), |e| format!("{e:.3}")),
            x.seconds
        );
    }
    m
}
