//! The read-only status page, with inline SVG charts.

use std::fmt::Write as _;

use super::StatusSnapshot;
use crate::store::utc;

impl StatusSnapshot {
    /// The read-only status page: no script, no external resource; it
    /// reloads itself every 5 seconds.
    pub(crate) fn html(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"5\">\
             <title>Tessera aggregator - round {}</title><style>{CSS}</style></head><body>\
             <h1>Tessera aggregator</h1><p class=\"run\">run <code>{}</code></p>",
            self.current_round.unwrap_or(0),
            esc(&self.run_id)
        );
        let pct = if self.rounds_planned == 0 {
            0.0
        } else {
            100.0 * self.completed_rounds as f64 / self.rounds_planned as f64
        };
        let _ = write!(
            s,
            "<section><p id=\"run-state\">{}</p>\
             <p>Current round: <strong id=\"current-round\">{}</strong>; completed \
             <strong id=\"completed-rounds\">{}</strong> of {} rounds.</p>\
             <div class=\"bar\" role=\"progressbar\" aria-valuenow=\"{}\" aria-valuemax=\"{}\">\
             <div id=\"progress\" style=\"width:{pct:.1}%\"></div></div>",
            esc(&self.round_line()),
            self.current_round.map(|r| r.to_string()).unwrap_or_else(|| "none".into()),
            self.completed_rounds,
            self.rounds_planned,
            self.completed_rounds,
            self.rounds_planned
        );
        if let Some(r) = &self.stop_reason {
            let _ = write!(s, "<p>Stop reason: {}</p>", esc(r));
        }
        let _ = write!(s, "<p>Updated {} (pid {}).</p></section>", utc(self.updated_ms), self.pid);

        let _ = write!(s, "<section><h2>Members ({} online)</h2><ul id=\"members\">", self.members_online());
        for m in &self.members {
            let state = if m.revoked {
                "revoked"
            } else if m.online {
                "online"
            } else {
                "offline"
            };
            let _ = write!(s, "<li class=\"{state}\">{} - {state}</li>", esc(&m.name));
        }
        s.push_str("</ul></section>");

        let _ = write!(s, "<section><h2>Privacy</h2><p id=\"epsilon\">");
        match (self.epsilon_spent, self.epsilon_budget) {
            (spent, Some(b)) => {
                let _ = write!(
                    s,
                    "epsilon spent {:.4} of {b:.4} (delta {:e}), left {:.4}",
                    spent.unwrap_or(0.0),
                    self.delta.unwrap_or(0.0),
                    self.epsilon_left().unwrap_or(0.0)
                );
            }
            (Some(spent), None) => {
                let _ = write!(s, "epsilon spent {spent:.4}");
            }
            (None, None) => s.push_str("no differential privacy configured"),
        }
        s.push_str("</p></section>");

        let xmax = self.rounds_planned.max(self.history.len() as u64).max(1) as f64;
        // A round that evaluated nothing is no point, not a 0.
        let acc: Vec<(f64, f64)> =
            self.history.iter().filter_map(|p| p.accuracy.map(|a| (p.logical as f64, a))).collect();
        let eps: Vec<(f64, f64)> =
            self.history.iter().filter_map(|p| p.epsilon.map(|e| (p.logical as f64, e))).collect();
        let eps_top = self.epsilon_budget.into_iter().chain(eps.iter().map(|p| p.1)).fold(0.0f64, f64::max);
        s.push_str("<section><h2>Accuracy by round</h2>");
        s.push_str(&line_chart("accuracy-chart", "accuracy", &acc, xmax, (0.0, 1.0), "#1f77b4", None));
        s.push_str("</section><section><h2>Epsilon spent by round</h2>");
        s.push_str(&line_chart(
            "epsilon-chart",
            "epsilon",
            &eps,
            xmax,
            (0.0, if eps_top > 0.0 { eps_top * 1.05 } else { 1.0 }),
            "#d62728",
            self.epsilon_budget,
        ));
        s.push_str(
            "</section><section><h2>Completed rounds</h2><table id=\"rounds\"><tr><th>#</th><th>wire round</th>\
                    <th>accuracy</th><th>loss</th><th>participants</th><th>dropped</th><th>epsilon</th></tr>",
        );
        for p in self.history.iter().rev() {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                p.logical,
                p.round,
                crate::value_or_dash(p.accuracy),
                crate::value_or_dash(p.loss),
                p.participants,
                p.dropped,
                p.epsilon.map(|e| format!("{e:.4}")).unwrap_or_else(|| "-".into())
            );
        }
        s.push_str("</table></section></body></html>\n");
        s
    }
}

const CSS: &str = "body{font-family:sans-serif;margin:2em;color:#222}h2{font-size:1.1em;margin-top:1.5em}\
.bar{width:480px;height:12px;background:#eee;border:1px solid #ccc}#progress{height:100%;background:#2ca02c}\
li.online{color:#2a7a2a}li.revoked{color:#a00;text-decoration:line-through}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
svg text{font-size:11px;fill:#555}";

/// An inline SVG line chart of `points` (x from 1 to `xmax`) with an
/// optional dashed horizontal `limit` line.
fn line_chart(
    id: &str,
    label: &str,
    points: &[(f64, f64)],
    xmax: f64,
    (ylo, yhi): (f64, f64),
    color: &str,
    limit: Option<f64>,
) -> String {
    const W: f64 = 480.0;
    const H: f64 = 200.0;
    const L: f64 = 48.0;
    const B: f64 = 24.0;
    const T: f64 = 10.0;
    const R: f64 = 12.0;
    let span = if yhi > ylo { yhi - ylo } else { 1.0 };
    let x = |v: f64| L + (v - 1.0).max(0.0) / (xmax - 1.0).max(1.0) * (W - L - R);
    let y = |v: f64| T + (1.0 - ((v - ylo) / span).clamp(0.0, 1.0)) * (H - T - B);
    let mut s = format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{label} by round\">\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>\
         <line class=\"axis\" x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>\
         <line class=\"axis\" x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"#888\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3}</text>\
         <text x=\"{L}\" y=\"{}\" text-anchor=\"middle\">1</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        H - B,
        W - R,
        H - B,
        H - B,
        L - 4.0,
        T + 8.0,
        yhi,
        L - 4.0,
        H - B,
        ylo,
        H - 8.0,
        W - R,
        H - 8.0,
        xmax as u64
    );
    if let Some(l) = limit {
        let _ = write!(
            s,
            "<line class=\"limit\" x1=\"{L}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"{color}\" \
             stroke-dasharray=\"4 3\" opacity=\"0.6\"/>",
            y(l),
            W - R,
            y(l)
        );
    }
    if !points.is_empty() {
        let pts: Vec<String> = points.iter().map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py))).collect();
        let _ = write!(
            s,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2.5\" points=\"{}\"/>",
            pts.join(" ")
        );
        for &(px, py) in points {
            let _ = write!(
                s,
                "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\">\
                 <title>round {px}: {py:.4}</title></circle>",
                x(px),
                y(py)
            );
        }
    } else {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data yet</text>", W / 2.0, H / 2.0);
    }
    s.push_str("</svg>");
    s
}

/// HTML-escape text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
