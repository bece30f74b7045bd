//! What an operator reads, through the real binaries (#21): log files hold
//! plain text (no ANSI escape codes) and `--log-format json` writes one JSON
//! object per line; an error is printed once, with its causes, and says
//! which side is misconfigured and which address is taken; log fields are
//! plain values with the logical round and the attempt; after the daemon
//! exits, `status` says it is not running and counts nobody online;
//! `audit head` is the last hash `audit show` prints; `egress` prints
//! RFC 3339 times.
//!
//! The aggregator and every member here are the real `tessera-aggregator`
//! and `tessera-client` binaries, stderr redirected to files (as systemd or
//! a shell redirect would), with `NO_COLOR` removed from their environment
//! so nothing but the terminal check keeps colour out.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

/// Kills the child if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `bin [args…]` with stderr to `log` and no `NO_COLOR`.
fn spawn_logged(bin: &Path, args: &[&str], log: &Path) -> Guard {
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info,quinn=warn,rustls=warn")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    Guard(child)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every line of a `--log-format json` log, parsed; panics on one that is not JSON.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}\n{log}")))
        .collect()
}

fn assert_plain(what: &str, log: &str) {
    assert!(!log.is_empty(), "{what}: empty log");
    assert!(!log.contains("\x1b["), "{what}: ANSI escape codes in a log file:\n{log}");
    assert!(!log.contains("=Some("), "{what}: an Option's Debug form in a field:\n{log}");
    assert!(!log.contains("member=\""), "{what}: a quoted name in a field:\n{log}");
}

/// No line says the same thing twice in a row (`A: A`), the symptom of an
/// error whose message embeds its source while the printer walks the chain.
fn assert_no_repeats(what: &str, log: &str, phrase: &str) {
    for line in log.lines() {
        assert!(line.matches(phrase).count() <= 1, "{what}: `{phrase}` repeated in one line:\n{line}");
    }
}

/// Member `i`'s config in the seeded test mode, edited, written to
/// `<run>/<file>.toml` with its egress ledger at `<file>-egress.jsonl`.
fn member_toml(site: &Site, run: &str, i: usize, port: u16, file: &str, edit: impl Fn(String) -> String) -> PathBuf {
    member_config(site, run, i, port);
    let text = std::fs::read_to_string(site.path().join(run).join(format!("{}.toml", NAMES[i]))).unwrap();
    let text = edit(text).replace(&format!("{}-egress.jsonl", NAMES[i]), &format!("{file}-egress.jsonl"));
    let p = site.path().join(run).join(format!("{file}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_errors_status_audit_head_and_egress_times() {
    let site = Site::new();
    let client = client_binary();
    let port = free_udp_port();
    let config = aggregator_toml(&site, "ops", &RunOptions { rounds: 2, quic_port: port, http_port: None, dp: false });
    let dir = config.parent().unwrap().to_path_buf();
    let cfg = config.to_str().unwrap();

    // 1. The port is taken: the JSON log says so, naming the address, on
    //    lines that all parse.
    let holder = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let mut agg = spawn_logged(&BIN, &["--log-format", "json", "serve", "--config", cfg], &dir.join("in-use.log"));
    assert!(!wait_child(&mut agg.0, MINUTE, "the aggregator on a taken port"), "it must fail");
    drop(holder);
    let log = read(&dir.join("in-use.log"));
    let lines = json_lines(&log);
    let err = lines.iter().find(|l| l["level"] == "ERROR").unwrap_or_else(|| panic!("no ERROR line:\n{log}"));
    let text = err["error"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("cannot bind UDP 127.0.0.1:{port}")) && text.contains("in use"), "{log}");

    // 2. The aggregator for the run, its log in a file.
    let serve_log = dir.join("serve.log");
    let mut agg = spawn_logged(&BIN, &["serve", "--config", cfg], &serve_log);

    //    A member whose ca.pem is another consortium's: its message blames
    //    the aggregator's certificate. One whose certificate is another
    //    consortium's: the aggregator refused it. Neither retries.
    let rogue = site.path().join("rogue");
    tessera_transport::pki::init(&rogue, &Default::default()).unwrap();
    tessera_transport::pki::issue(&rogue, "hospital-a").unwrap();
    let wrong_ca = member_toml(&site, "ops", 0, port, "wrong-ca", |t| t.replace("../pki/ca.pem", "../rogue/ca.pem"));
    let wrong_cert =
        member_toml(&site, "ops", 0, port, "wrong-cert", |t| t.replace("../pki/hospital-a.", "../rogue/hospital-a."));
    for (toml, log, want) in [
        (&wrong_ca, "wrong-ca.log", "the aggregator's certificate is not signed by your ca.pem"),
        (&wrong_cert, "wrong-cert.log", "the aggregator refused your certificate"),
    ] {
        let mut c = spawn_logged(&client, &["run", "--config", toml.to_str().unwrap()], &dir.join(log));
        assert!(!wait_child(&mut c.0, MINUTE, log), "{log}: the member must stop with an error");
        let text = read(&dir.join(log));
        assert_plain(log, &text);
        let report: Vec<&str> = text.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(report.len(), 1, "{log}: one error report:\n{text}");
        assert!(report[0].contains(want), "{log}: {want:?} missing:\n{text}");
        assert_no_repeats(log, &text, want);
    }

    //    A certificate that is not a member's: refused at admission; the
    //    member's JSON log says so once per line.
    tessera_transport::pki::issue(&site.pki, "outsider").unwrap();
    let outsider = member_toml(&site, "ops", 2, port, "outsider", |t| {
        t.replace("member = \"hospital-c\"", "member = \"outsider\"").replace("../pki/hospital-c.", "../pki/outsider.")
    });
    let args = ["--log-format", "json", "run", "--config", outsider.to_str().unwrap()];
    let mut c = spawn_logged(&client, &args, &dir.join("outsider.log"));
    assert!(!wait_child(&mut c.0, MINUTE, "the outsider"), "an outsider must be refused");
    let log = read(&dir.join("outsider.log"));
    let lines = json_lines(&log);
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{log}");
    assert!(log.contains("refused by the aggregator"), "{log}");
    assert_no_repeats("outsider", &log, "refused by the aggregator");

    // 3. The three real members, text logs in files; the run completes.
    let members: Vec<Guard> = (0..3)
        .map(|i| {
            let toml = member_toml(&site, "ops", i, port, NAMES[i], |t| t);
            let log = dir.join(format!("{}.log", NAMES[i]));
            spawn_logged(&client, &["run", "--config", toml.to_str().unwrap()], &log)
        })
        .collect();
    assert!(wait_child(&mut agg.0, 3 * MINUTE, "the aggregator"), "the run failed:\n{}", read(&serve_log));
    for (i, mut m) in members.into_iter().enumerate() {
        assert!(wait_child(&mut m.0, MINUTE, NAMES[i]), "{} failed", NAMES[i]);
        let log = read(&dir.join(format!("{}.log", NAMES[i])));
        assert_plain(NAMES[i], &log);
        assert!(!log.contains("reason= ") && !log.contains("reason=\n"), "an empty field:\n{log}");
    }
    let log = read(&serve_log);
    assert_plain("serve", &log);
    assert!(log.contains(&format!("addr=127.0.0.1:{port}")), "the listening address, plain:\n{log}");
    for round in [1, 2] {
        let line = log
            .lines()
            .find(|l| l.contains("round completed") && l.contains(&format!(" round={round} ")))
            .unwrap_or_else(|| panic!("no `round completed` line for round {round}:\n{log}"));
        assert!(line.contains("attempt=1") && line.contains("wire_round="), "{line}");
    }

    // 4. The daemon has exited: status says so and counts nobody online.
    let db = state_db(&config);
    let db_s = db.to_str().unwrap();
    let (ok, text) = cli(&["status", "--state", db_s]);
    assert!(ok, "{text}");
    assert!(text.contains("aggregator not running since "), "{text}");
    assert!(text.contains("members online: 0 of 3"), "{text}");
    let (ok, text) = cli(&["status", "--state", db_s, "--json"]);
    assert!(ok, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["aggregator_running"], false, "{text}");
    assert!(v["members"].as_array().unwrap().iter().all(|m| m["online"] == false), "{text}");

    // 5. `audit head` is the hash of the last entry `audit show` prints.
    let shown = json_out(&["audit", "show", "--state", db_s, "--json"]);
    let last = shown.as_array().unwrap().last().unwrap();
    let (ok, head) = cli(&["audit", "head", "--state", db_s]);
    assert!(ok, "{head}");
    assert_eq!(head.trim(), last["hash"].as_str().unwrap());
    assert_eq!(json_out(&["audit", "head", "--state", db_s, "--json"])["seq"], last["seq"]);
    let (_, text) = cli(&["audit", "show", "--state", db_s]);
    assert!(text.lines().last().unwrap().contains(head.trim()), "`audit show` prints each hash:\n{text}");
    assert_eq!(json_out(&["audit", "verify", "--state", db_s, "--json"])["intact"], true);

    // 6. Egress times are RFC 3339, in the table and in JSON, and say the
    //    same instant as the ledger's milliseconds.
    let a = site.path().join("ops/hospital-a.toml");
    let out = Command::new(&client).args(["egress", "--config"]).arg(&a).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert!(entries.len() > 10, "{entries:?}");
    for e in entries {
        let t = e["time"].as_str().unwrap();
        assert_eq!(rfc3339_to_ms(t), Some(e["time_ms"].as_i64().unwrap()), "{t}");
    }
    let out = Command::new(&client).args(["egress", "--config"]).arg(&a).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).filter(|l| !l.contains("messages,")).collect();
    assert_eq!(rows.len(), entries.len(), "{table}");
    for (row, e) in rows.iter().zip(entries) {
        assert_eq!(row.split_whitespace().next(), e["time"].as_str(), "{table}");
    }
}

/// `tessera-aggregator <args>` printed JSON on stdout.
fn json_out(args: &[&str]) -> Value {
    let out = Command::new(&*BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})"))
}

/// Parse `YYYY-MM-DDTHH:MM:SS(.fff)?Z` strictly (RFC 3339 in UTC) into
/// milliseconds since the Unix epoch; independent of the code under test
/// (days from civil date, the inverse of what it computes).
fn rfc3339_to_ms(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = match &t[19..] {
        "Z" => 0,
        frac if frac.len() == 5 && frac.starts_with('.') && frac.ends_with('Z') => num(20..23)?,
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let (y2, m2) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

#[test]
fn the_test_parser_knows_rfc3339() {
    assert_eq!(rfc3339_to_ms("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(rfc3339_to_ms("2000-02-29T00:00:01Z"), Some(951_782_401_000));
    assert_eq!(rfc3339_to_ms("1764756000000"), None, "epoch milliseconds are not RFC 3339");
    assert_eq!(rfc3339_to_ms("2000-02-29 00:00:01Z"), None);
}
