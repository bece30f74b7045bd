//! The operator's tools against a real run of the `tessera-aggregator`
//! binary: the status page in headless Chromium, `/metrics`, the `status`,
//! `export` and `audit verify` subcommands, and tampering with the audit
//! log. The run is stalled after round 2 of 3 (test-only knob) so the live
//! endpoints can be inspected, then killed and resumed to completion.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tessera_aggregator::{StateStore, full_model, read_safetensors};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_metrics_cli_export_and_audit() {
    let site = Site::new();
    let gates = Arc::new(Gates::default());
    let (port, http) = (free_udp_port(), free_tcp_port());
    let config =
        aggregator_toml(&site, "ops", &RunOptions { rounds: 3, quic_port: port, http_port: Some(http), dp: true });
    // DP stays on (the tools show its spend), with noise small enough that
    // the private evaluation reads as the real accuracy: at z = 0.005 one
    // count carries noise of std about 0.16·M (docs/privacy.md).
    let text = std::fs::read_to_string(&config).unwrap();
    let quiet = text
        .replace("epsilon = 1000.0", "epsilon = 1e7")
        .replace("noise_multiplier = 0.3", "noise_multiplier = 0.005")
        .replace("max_examples = 200", "max_examples = 60");
    assert_ne!(quiet, text);
    std::fs::write(&config, quiet).unwrap();
    let db = state_db(&config);
    let members = start_members(&site, "ops", port, &gates);
    let agg = spawn_aggregator(&config, Some(2));
    wait_db(&db, MINUTE, "two completed rounds", |c| {
        (count(c, "SELECT COUNT(*) FROM rounds WHERE status = 'completed'")? == 2).then_some(())
    })
    .await;
    let db_s = db.to_str().unwrap();

    // Prometheus text from the live daemon.
    let metrics = http_get(http, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for line in ["tessera_rounds_completed 2", "tessera_rounds_planned 3", "tessera_members_online 3"] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    assert!(metrics.contains("tessera_privacy_epsilon_spent "));

    // `status` reads the row the daemon keeps current.
    let (ok, text) = cli(&["status", "--state", db_s]);
    assert!(ok, "{text}");
    assert!(text.contains("completed 2 of 3"), "{text}");
    assert!(text.contains("members online: 3 of 3"), "{text}");
    assert!(text.contains("privacy: epsilon spent"), "{text}");
    // The private evaluation of round 2 (of the model it started from)
    // against the members' exact evaluations of that model, which never
    // left them: the three reports of round 2 are the last three.
    let shown: f64 = text
        .split("last accuracy: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {text}"));
    let exact = {
        let all = gates.evaluations.lock().unwrap();
        assert!(all.len() >= 6, "one evaluation per member and round attempt: {}", all.len());
        let cells = |f: fn(usize, usize) -> bool| -> u64 {
            all[all.len() - 3..]
                .iter()
                .flat_map(|m| m.confusion.iter().enumerate())
                .map(|(i, row)| row.iter().enumerate().filter(|(j, _)| f(i, *j)).map(|(_, c)| c).sum::<u64>())
                .sum()
        };
        cells(|i, j| i == j) as f64 / cells(|_, _| true) as f64
    };
    assert!(exact > 0.8, "the model has learned: exact accuracy {exact}");
    assert!((shown - exact).abs() <= 0.05, "private accuracy {shown} vs exact {exact}\n{text}");

    match chromium() {
        Some(browser) => check_page_in_chromium(&browser, http, site.path()),
        None => eprintln!(
            "SKIPPED the headless-browser check: no `chromium` found (CI installs Debian's chromium; \
             set CHROMIUM=/path/to/chromium to run it locally)"
        ),
    }

    sigkill(agg);
    let mut agg = spawn_aggregator(&config, None);
    assert!(wait_exit(&mut agg, MINUTE), "resumed run failed: see {}", config.parent().unwrap().display());
    join_members(members).await;

    let (ok, text) = cli(&["status", "--state", db_s]);
    assert!(ok && text.contains("finished after 3 of 3 rounds"), "{text}");

    // Export: read the file back and compare with the model rebuilt here.
    let out = site.path().join("model.safetensors");
    let (ok, text) = cli(&["export", "--format", "safetensors", "--state", db_s, "--out", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    let store = StateStore::open_existing(&db).unwrap();
    let cp = store.latest_checkpoint().unwrap().unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&store.latest_config().unwrap().unwrap()).unwrap();
    let model_cfg = serde_json::from_value(cfg["model"].clone()).unwrap();
    let (mut want, arch) = full_model(&model_cfg, &cp.model).unwrap();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(read_safetensors(&bytes).unwrap(), want);
    assert_eq!(arch, "Sequential(Linear(30, 8), ReLU(), Linear(8, 2))");
    let head = cp.model.get("head.weight").unwrap(); // [8, 2] as trained
    let exported = want.iter().find(|t| t.name == "2.weight").unwrap(); // [2, 8]
    assert_eq!(exported.data[8 + 3], head.data[3 * 2 + 1]);
    python_check(&out, site.path());

    // Audit: intact, then tampered copies are caught and the entry named.
    let (ok, text) = cli(&["audit", "verify", "--state", db_s]);
    assert!(ok && text.contains("audit log intact"), "{text}");
    drop(store);
    let entries = StateStore::open_existing(&db).unwrap().audit_entries().unwrap();
    let victim = entries.iter().find(|e| e.kind == "round_finished").unwrap().seq;
    let altered = tampered_copy(
        &db,
        site.path(),
        "altered",
        &format!(
            "UPDATE audit SET body = replace(body, '\"dropped\":[]', '\"dropped\":[\"hospital-b\"]') WHERE seq = {victim}"
        ),
    );
    let (ok, text) = cli(&["audit", "verify", "--state", altered.to_str().unwrap()]);
    assert!(!ok && text.contains(&format!("entry {victim} (round_finished) was altered")), "{text}");
    let deleted = tampered_copy(&db, site.path(), "deleted", &format!("DELETE FROM audit WHERE seq = {victim}"));
    let (ok, text) = cli(&["audit", "verify", "--state", deleted.to_str().unwrap()]);
    assert!(!ok && text.contains(&format!("entry {victim} is missing")), "{text}");
    let last = entries.last().unwrap().seq;
    let tail = tampered_copy(&db, site.path(), "tail", &format!("DELETE FROM audit WHERE seq = {last}"));
    let (ok, text) = cli(&["audit", "verify", "--state", tail.to_str().unwrap()]);
    assert!(!ok && text.contains(&format!("entry {last} is missing")), "{text}");
}

/// A copy of the database with the append-only triggers dropped and `sql`
/// applied: what someone with write access to the file could do.
fn tampered_copy(db: &Path, dir: &Path, name: &str, sql: &str) -> PathBuf {
    let copy = dir.join(format!("{name}.db"));
    let src = rusqlite::Connection::open(db).unwrap();
    src.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;").unwrap();
    assert_eq!(c.execute(sql, []).unwrap(), 1, "{sql}");
    copy
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n))).find(|p| p.is_file())
}

/// Run headless Chromium with a fresh profile; kill it after 60 s.
fn run_chromium(browser: &Path, profile: &Path, args: &[String]) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > MINUTE {
            let _ = child.kill();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    out
}

/// The page loads in a real browser, shows the round, and draws both charts.
fn check_page_in_chromium(browser: &Path, http: u16, dir: &Path) {
    let url = format!("http://127.0.0.1:{http}/");
    let dom = run_chromium(browser, &dir.join("chromium-dom"), &["--dump-dom".into(), url.clone()]);
    assert!(dom.contains("<strong id=\"completed-rounds\">2</strong>"), "{dom}");
    assert!(dom.contains("id=\"current-round\""), "{dom}");
    for chart in ["accuracy-chart", "epsilon-chart"] {
        let start = dom.find(&format!("<svg id=\"{chart}\"")).unwrap_or_else(|| panic!("no {chart} in {dom}"));
        let svg = &dom[start..start + dom[start..].find("</svg>").unwrap()];
        assert!(svg.contains("<polyline class=\"series\""), "{chart} has no line");
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 2, "{chart}: one point per completed round");
    }
    // Rendered pixels: the chart lines really are drawn in their colours.
    let png = dir.join("page.png");
    run_chromium(
        browser,
        &dir.join("chromium-shot"),
        &[format!("--screenshot={}", png.display()), "--window-size=900,1600".into(), "--hide-scrollbars".into(), url],
    );
    let img = image::open(&png).expect("a screenshot").to_rgb8();
    let has = |rgb: [u8; 3]| img.pixels().filter(|p| p.0.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 12)).count();
    assert!(has([0x1f, 0x77, 0xb4]) > 50, "the accuracy line is not drawn");
    assert!(has([0xd6, 0x27, 0x28]) > 50, "the epsilon line is not drawn");
}

/// Optional: load the export with Python's `safetensors` + numpy, as a
/// PyTorch user's tooling would, when both are importable.
fn python_check(file: &Path, dir: &Path) {
    let script = dir.join("check.py");
    std::fs::write(
        &script,
        "import sys\nfrom safetensors.numpy import load_file\nt = load_file(sys.argv[1])\n\
         assert t['0.weight'].shape == (8, 30) and t['2.weight'].shape == (2, 8), {k: v.shape for k, v in t.items()}\n\
         print('python ok', sorted(t))\n",
    )
    .unwrap();
    let probe = Command::new("python3").args(["-c", "import numpy, safetensors"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED the Python load check: python3 with numpy and safetensors is not installed");
        return;
    }
    let out = Command::new("python3").arg(&script).arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
