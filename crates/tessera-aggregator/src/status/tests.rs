use super::prometheus::prom_label;
use super::*;

fn sample() -> StatusSnapshot {
    StatusSnapshot {
        run_id: "00ff".into(),
        pid: 42,
        updated_ms: 1_000_000,
        state: RunState::Running,
        stop_reason: None,
        rounds_planned: 5,
        completed_rounds: 2,
        aborted_rounds: 1,
        current_round: Some(4),
        phase: Some("masked_input".into()),
        members: vec![
            MemberStatus { name: "hospital-a".into(), online: true, revoked: false },
            MemberStatus { name: "hospital-b".into(), online: true, revoked: false },
            MemberStatus { name: "hospital-c".into(), online: false, revoked: false },
            MemberStatus { name: "mallory".into(), online: false, revoked: true },
        ],
        epsilon_spent: Some(1.5),
        epsilon_budget: Some(4.0),
        delta: Some(1e-5),
        history: vec![
            RoundPoint {
                logical: 1,
                round: 1,
                accuracy: Some(0.8),
                loss: Some(0.5),
                participants: 3,
                dropped: 0,
                epsilon: Some(0.9),
            },
            RoundPoint {
                logical: 2,
                round: 3,
                accuracy: Some(0.9),
                loss: Some(0.3),
                participants: 3,
                dropped: 0,
                epsilon: Some(1.2),
            },
        ],
    }
}

#[test]
fn text_answers_the_operator_questions() {
    let t = sample().render_text(1_005_000, true);
    assert!(t.contains("round 4 in progress (completed 2 of 5), phase masked_input"), "{t}");
    assert!(
        t.contains("members online: 2 of 3 (hospital-a, hospital-b); offline: hospital-c; revoked: mallory"),
        "{t}"
    );
    assert!(t.contains("epsilon spent 1.5000 of 4.0000") && t.contains("left 2.5000"), "{t}");
    assert!(t.contains("last accuracy: 0.9000 (completed round 2, wire round 3)"), "{t}");
    assert!(t.contains("aggregator running: pid 42"), "{t}");
}

#[test]
fn a_stopped_daemon_counts_nobody_online() {
    let s = sample();
    assert!(s.daemon_running(1_000_000 + HEARTBEAT_STALE_MS, None));
    assert!(!s.daemon_running(1_000_000 + HEARTBEAT_STALE_MS + 1, None), "stale heartbeat");
    assert!(!s.daemon_running(1_001_000, Some(false)), "its process is gone");
    let t = s.as_seen(false).render_text(1_060_000, false);
    assert!(t.contains("aggregator not running since 1970-01-01T00:16:40Z (60 s ago; last pid 42)"), "{t}");
    assert!(t.contains("members online: 0 of 3 (none)"), "{t}");
    assert!(t.contains("running - no round in progress (completed 2 of 5 rounds)"), "{t}");
}

#[test]
fn a_revoked_member_still_connected_is_not_counted() {
    let mut s = sample();
    s.members[3].online = true; // mallory: revoked, connection not yet closed
    let t = s.render_text(1_005_000, true);
    assert!(t.contains("members online: 2 of 3 (hospital-a, hospital-b)"), "{t}");
}

#[test]
fn prometheus_text_is_well_formed() {
    let text = sample().prometheus();
    let mut described = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            described.insert(it.next().unwrap().to_string());
            assert!(matches!(it.next(), Some("gauge" | "counter")), "{line}");
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            let (name_labels, value) = line.rsplit_once(' ').unwrap();
            let name = name_labels.split('{').next().unwrap();
            assert!(described.contains(name), "sample before its TYPE: {line}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            samples.insert(name_labels.to_string(), value.parse::<f64>().unwrap());
        }
    }
    assert_eq!(samples["tessera_rounds_completed"], 2.0);
    assert_eq!(samples["tessera_round_current"], 4.0);
    assert_eq!(samples["tessera_members_online"], 2.0);
    assert_eq!(samples["tessera_member_online{member=\"hospital-c\"}"], 0.0);
    assert_eq!(samples["tessera_round_phase{phase=\"masked_input\"}"], 1.0);
    assert_eq!(samples["tessera_run_state{state=\"running\"}"], 1.0);
    assert_eq!(samples["tessera_privacy_epsilon_spent"], 1.5);
    assert_eq!(samples["tessera_last_accuracy"], 0.9);
    assert_eq!(prom_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn page_shows_round_and_charts_and_escapes_text() {
    let mut s = sample();
    s.stop_reason = Some("<script>alert(1)</script>".into());
    let html = s.html();
    assert!(html.contains("<strong id=\"current-round\">4</strong>"), "{html}");
    assert!(html.contains("<svg id=\"accuracy-chart\"") && html.contains("<svg id=\"epsilon-chart\""));
    assert_eq!(html.matches("<polyline class=\"series\"").count(), 2);
    assert_eq!(html.matches("<circle class=\"point\"").count(), 4);
    assert!(html.contains("class=\"limit\""), "the epsilon budget is drawn");
    assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"));
    assert!(!html.contains("http://") || !html.contains("src="), "no external resources");
    let empty = StatusSnapshot::default().html();
    assert!(empty.contains("no data yet") && !empty.contains("<polyline"));
}

/// A loss the last round did not release reads as a dash on the text and
/// HTML pages and is no Prometheus sample, rather than a measured 0.
#[test]
fn a_loss_not_released_is_shown_absent() {
    let mut s = sample();
    assert!(s.prometheus().contains("tessera_last_loss 0.3"), "{}", s.prometheus());
    s.history[1].loss = None;
    let t = s.render_text(1_005_000, true);
    assert!(t.contains("(completed round 2, wire round 3), loss \u{2013}"), "{t}");
    assert!(s.html().contains("<td>0.9000</td><td>\u{2013}</td>"), "{}", s.html());
    assert!(!s.prometheus().contains("tessera_last_loss"), "{}", s.prometheus());
}

/// A round that evaluated nothing (a private run without
/// `[privacy.evaluation]`) shows no accuracy: a dash on the text and HTML
/// pages, no point in the chart, no Prometheus sample, never a measured 0.
#[test]
fn an_accuracy_not_measured_is_shown_absent() {
    let mut s = sample();
    assert!(s.prometheus().contains("tessera_last_accuracy 0.9"), "{}", s.prometheus());
    s.history[1].accuracy = None;
    s.history[1].loss = None;
    let t = s.render_text(1_005_000, true);
    assert!(t.contains("last accuracy: \u{2013} (completed round 2, wire round 3), loss \u{2013}"), "{t}");
    let html = s.html();
    assert!(html.contains("<td>2</td><td>3</td><td>\u{2013}</td><td>\u{2013}</td>"), "{html}");
    assert_eq!(html.matches("<circle class=\"point\"").count(), 3, "one accuracy point fewer: {html}");
    assert!(!s.prometheus().contains("tessera_last_accuracy"), "{}", s.prometheus());
}
