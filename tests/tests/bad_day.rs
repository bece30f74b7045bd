//! The daemons on an operator's bad day (issue #21), through the real
//! binaries: a second `serve` on the same state, a quorum that cannot be
//! reached, a member stopped with SIGTERM mid-run, and a member whose
//! configuration is wrong at start-up.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Lines of `log` (re-read until found) that satisfy `pred`; the first one.
fn wait_log(log: &Path, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| pred(l)) {
            return line.to_string();
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what} in {}:\n{text}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child when dropped, so a failing assertion leaves no daemon behind.
struct Reaper(Option<Child>);

impl Reaper {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn serve_log(config: &Path) -> PathBuf {
    config.with_file_name("serve-0.log")
}

#[test]
fn a_second_serve_on_the_same_state_exits_naming_the_holders_pid() {
    let site = Site::new();
    let config = aggregator_toml(
        &site,
        "twice",
        &RunOptions { rounds: 1, quic_port: free_udp_port(), http_port: None, dp: false },
    );
    let mut first = Reaper(Some(spawn_aggregator(&config, None)));
    wait_log(&serve_log(&config), Duration::from_secs(60), "the first daemon ready", |l| {
        l.contains("aggregator ready")
    });

    // The very same command line again: same state, same port.
    let second = Command::new(&*BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(config.with_file_name("second.log")).unwrap())
        .spawn()
        .unwrap();
    let mut second = Reaper(Some(second));
    let ok = wait_child(second.child(), Duration::from_secs(30), "the second tessera-aggregator serve");
    let text = std::fs::read_to_string(config.with_file_name("second.log")).unwrap();
    assert!(!ok, "the second instance must exit non-zero:\n{text}");
    let pid = first.child().id();
    assert!(text.contains("already serving") && text.contains(&format!("pid {pid}")), "{text}");
    let db = std::fs::canonicalize(state_db(&config)).unwrap();
    assert!(text.contains(&db.display().to_string()), "names the state database:\n{text}");
    // The first one is untouched and still running.
    assert!(first.child().try_wait().unwrap().is_none(), "the first daemon must keep running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_quorum_and_a_missing_member_are_reported_by_name() {
    let site = Site::new();
    let port = free_udp_port();
    let config =
        aggregator_toml(&site, "quorum", &RunOptions { rounds: 1, quic_port: port, http_port: None, dp: false });
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        toml.replace("max_round_retries = 3\n", "max_round_retries = 3\nquorum_warning_secs = 1\n"),
    )
    .unwrap();
    // min_clients = 3, but hospital-c has no certificate (yet).
    let c_cert = site.pki.join("hospital-c.pem");
    let c_aside = site.path().join("hospital-c.pem.aside");
    std::fs::rename(&c_cert, &c_aside).unwrap();
    let _agg = Reaper(Some(spawn_aggregator(&config, None)));
    let gates = Arc::new(Gates::default());
    let members: Vec<_> =
        (0..2).map(|i| tokio::spawn(run_member(member_config(&site, "quorum", i, port), gates.clone()))).collect();
    let log = serve_log(&config);

    let line =
        wait_log(&log, Duration::from_secs(60), "the unreachable-quorum warning", |l| l.contains("quorum unreachable"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("min_clients is 3 but only 2 members are admitted (hospital-a, hospital-b)"), "{line}");
    assert!(line.contains("not admitted: hospital-c (no certificate issued)"), "{line}");

    // The certificate is issued after all: now the quorum waits for
    // hospital-c to connect, and says so by name once a and b are in.
    std::fs::rename(&c_aside, &c_cert).unwrap();
    let line = wait_log(&log, Duration::from_secs(90), "the waiting-for-quorum warning naming hospital-c", |l| {
        l.contains("waiting for quorum: 2 of run.min_clients = 3 members connected (hospital-a, hospital-b)")
    });
    assert!(line.contains("missing: hospital-c"), "{line}");
    for m in members {
        m.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_the_members_connection_at_once() {
    let client_bin = client_binary();
    let site = Site::new();
    let port = free_udp_port();
    let config =
        aggregator_toml(&site, "sigterm", &RunOptions { rounds: 1000, quic_port: port, http_port: None, dp: false });
    let _agg = Reaper(Some(spawn_aggregator(&config, None)));
    let gates = Arc::new(Gates::default());
    let members: Vec<_> =
        (0..2).map(|i| tokio::spawn(run_member(member_config(&site, "sigterm", i, port), gates.clone()))).collect();
    member_config(&site, "sigterm", 2, port);
    let member_toml = site.path().join("sigterm/hospital-c.toml");
    let mut c = Reaper(Some(spawn_client(&client_bin, &member_toml, "hospital-c.log")));

    // Mid-run: a round completed with hospital-c, more to come.
    let db = state_db(&config);
    wait_db(&db, Duration::from_secs(120), "a completed round", |c| {
        count(c, "SELECT COUNT(*) FROM rounds WHERE status = 'completed'").filter(|n| *n >= 1)
    })
    .await;
    let log = serve_log(&config);
    let disconnected = |l: &str| l.contains("member disconnected") && l.contains("hospital-c");
    assert!(!std::fs::read_to_string(&log).unwrap().lines().any(disconnected), "hospital-c dropped before SIGTERM");

    let status = Command::new("kill").args(["-TERM", &c.child().id().to_string()]).status().unwrap();
    assert!(status.success());
    let t0 = Instant::now();
    // The QUIC idle timeout is 30 s: only a graceful close is seen sooner.
    wait_log(&log, Duration::from_secs(10), "the aggregator logging hospital-c's disconnect", disconnected);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(wait_child(c.child(), Duration::from_secs(10), "hospital-c after SIGTERM"), "exits 0 after a clean stop");
    let text = std::fs::read_to_string(member_toml.with_file_name("hospital-c.log")).unwrap();
    assert!(text.contains("stopped by SIGTERM"), "{text}");
    for m in members {
        m.abort();
    }
}

/// Run `tessera-client run --config <config>` in `cwd`; it must exit (on
/// its own) within a minute. Returns (success, its stderr).
fn client_start(cwd: &Path, config: &str) -> (bool, String) {
    let log = cwd.join("start.log");
    let child = Command::new(client_binary())
        .current_dir(cwd)
        .args(["run", "--config", config])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Reaper(Some(child));
    let ok = wait_child(child.child(), Duration::from_secs(60), "tessera-client with a bad configuration");
    (ok, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn the_client_refuses_a_bad_address_a_foreign_certificate_and_names_absolute_paths() {
    let site = Site::new();
    let dir = site.path().join("checks");
    std::fs::create_dir_all(&dir).unwrap();
    member_config(&site, "checks", 0, free_udp_port());
    let good = std::fs::read_to_string(dir.join("hospital-a.toml")).unwrap();
    let real = std::fs::canonicalize(&dir).unwrap();

    // An address without a port: a configuration error at the value.
    let text = good.lines().map(|l| if l.starts_with("address") { "address = \"localhost\"" } else { l });
    std::fs::write(dir.join("no-port.toml"), text.collect::<Vec<_>>().join("\n")).unwrap();
    let (ok, err) = client_start(&dir, "no-port.toml");
    assert!(!ok && err.contains("has no port") && err.contains("localhost:4433") && err.contains('^'), "{err}");

    // member = hospital-a with hospital-b's certificate and key.
    let foreign = good.replace("../pki/hospital-a.", "../pki/hospital-b.");
    std::fs::write(dir.join("foreign.toml"), foreign).unwrap();
    let (ok, err) = client_start(&dir, "foreign.toml");
    assert!(!ok, "{err}");
    assert!(err.contains("member = \"hospital-a\"") && err.contains("issued to \"hospital-b\""), "{err}");
    let cert = real.join("../pki/hospital-b.pem");
    assert!(err.contains(&cert.display().to_string()), "names the certificate by its absolute path: {err}");

    // A relative data path that does not exist, the config named relative
    // to the working directory: the error names the absolute path.
    let missing = good
        .lines()
        .map(|l| if l.starts_with("path =") { "path = \"data/missing.csv\"".to_string() } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("missing.toml"), missing).unwrap();
    let (ok, err) = client_start(&dir, "missing.toml");
    assert!(!ok && err.contains(&real.join("data/missing.csv").display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_member_is_refused_at_admission_by_name_and_costs_no_budget() {
    let client_bin = client_binary();
    let site = Site::new();
    let port = free_udp_port();
    let config =
        aggregator_toml(&site, "mismatch", &RunOptions { rounds: 2, quic_port: port, http_port: None, dp: true });
    // Two members suffice, and the aggregator declares the consortium's schema.
    let toml = std::fs::read_to_string(&config).unwrap().replace("min_clients = 3", "min_clients = 2");
    let schema = tessera_e2e::wdbc_schema();
    std::fs::write(&config, format!("{toml}\n[data]\nschema = \"{}\"\n", schema.display())).unwrap();
    let _agg = Reaper(Some(spawn_aggregator(&config, None)));

    // hospital-c's [model] has another hidden layer: its update would not fit.
    member_config(&site, "mismatch", 2, port);
    let c_toml = site.path().join("mismatch/hospital-c.toml");
    let text = std::fs::read_to_string(&c_toml).unwrap().replace("hidden = [8]", "hidden = [16]");
    std::fs::write(&c_toml, text).unwrap();
    let mut c = Reaper(Some(spawn_client(&client_bin, &c_toml, "hospital-c.log")));
    assert!(!wait_child(c.child(), Duration::from_secs(60), "the mismatched hospital-c"), "must exit non-zero");
    let c_log = std::fs::read_to_string(c_toml.with_file_name("hospital-c.log")).unwrap();
    assert!(c_log.contains("member hospital-c's [model] section differs from the aggregator's"), "{c_log}");
    let serve = std::fs::read_to_string(serve_log(&config)).unwrap();
    let refused = serve.lines().find(|l| l.contains("member refused at admission")).expect("the operator's log");
    assert!(
        refused.contains("hospital-c") && refused.contains("member: model ") && refused.contains("aggregator: model ")
    );

    // The others run the whole run without it; not one attempt aborts.
    let gates = Arc::new(Gates::default());
    let members: Vec<_> =
        (0..2).map(|i| tokio::spawn(run_member(member_config(&site, "mismatch", i, port), gates.clone()))).collect();
    join_members(members).await;
    let db = rusqlite::Connection::open(state_db(&config)).unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM rounds WHERE status = 'completed'"), Some(2));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM rounds WHERE status != 'completed'"), Some(0));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM rounds WHERE cohort LIKE '%hospital-c%'"), Some(0));
    // Budget: one reservation per completed round, nothing for hospital-c.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM ledger WHERE entry LIKE '%reserved%'"), Some(2));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM ledger WHERE entry LIKE '%aborted%'"), Some(0));
    let body: String = db
        .query_row("SELECT body FROM audit WHERE kind = 'admission_refused'", [], |r| r.get(0))
        .expect("an admission_refused audit entry");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["member"], "hospital-c");
    assert_eq!(body["differs"], "[model] section");
    assert_ne!(body["member_model"], body["expected_model"]);
    assert_eq!(body["member_schema"], body["expected_schema"]);
}
