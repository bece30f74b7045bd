//! Members across processes (#20), through the real `tessera-sim` binary:
//! `run --processes 3` trains the same model, bit for bit, as one process;
//! a worker killed mid-run leaves its members as dropouts the report names;
//! a worker that cannot reach its coordinator says where and why; an image
//! scenario across two workers trains the same model as one process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

const SIM: &str = env!("CARGO_BIN_EXE_tessera-sim");

/// A small WDBC scenario file; `extra` is appended.
fn scenario(dir: &Path, clients: usize, rounds: u64, extra: &str) -> PathBuf {
    let path = dir.join("procs.toml");
    std::fs::write(&path, common::wdbc_scenario("procs", 23, clients, rounds, 3, extra)).unwrap();
    path
}

fn sim(args: &[&str]) -> Output {
    let out = Command::new(SIM).args(args).env("NO_COLOR", "1").output().unwrap();
    if !out.status.success() {
        panic!(
            "tessera-sim {args:?} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The model, and every round's record (loss, accuracy, the metrics, simulated
/// time, participants and dropouts), are the same with the members in this
/// process or in three workers over QUIC, with the fault plan withdrawing
/// members. Not the traffic counts: each member's certificate travels in
/// its signed key advertisement, and the in-memory PKI of a one-process run
/// and the run's PKI on disk make certificates of different lengths.
#[test]
fn three_worker_processes_train_the_same_model_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(
        dir.path(),
        7,
        4,
        "[dropout]\nbefore_keys = 0.1\nbefore_masked_input = 0.15\n\n\
         [latency]\ncompute_ms_per_example = 2.0\nnetwork_ms = 40.0\nnetwork_jitter_ms = 30.0\n",
    );
    let (one, three) = (dir.path().join("one"), dir.path().join("three"));
    let s = s.to_str().unwrap();
    sim(&["run", s, "--out", one.to_str().unwrap(), "--workers", "2"]);
    let out = sim(&["run", s, "--processes", "3", "--out", three.to_str().unwrap(), "--workers", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);

    let (a, b) = (summary(&one), summary(&three));
    assert_eq!(a["completed_rounds"], 4);
    assert_eq!(a["final_model_sha256"], b["final_model_sha256"], "the model differs with 3 worker processes");
    assert_eq!(b["config"]["transport"], "quic");
    assert_eq!(b["config"]["lost_members"], serde_json::json!([]), "{stdout}");
    let without_traffic = |run: &Path| {
        let mut records = metrics(run);
        for r in &mut records {
            let r = r.as_object_mut().unwrap();
            assert!(r.remove("bytes_up").is_some() && r.remove("bytes_down").is_some());
        }
        records
    };
    let (ma, mb) = (without_traffic(&one), without_traffic(&three));
    assert!(ma.iter().any(|r| r["dropped"].as_u64() > Some(0)), "the fault plan withdrew nobody: {ma:?}");
    assert_eq!(ma, mb, "round records differ with 3 worker processes");
    assert!(stdout.contains("worker 0..2: 2 members finished"), "{stdout}");
    assert!(stdout.contains("worker 4..7: 3 members finished"), "{stdout}");
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Reaped(Vec<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `coordinator` and three `worker`s started by hand; one worker is killed
/// (SIGKILL) after the first round. Its members drop out, the run goes on
/// with the others to its last round, and the report names exactly them.
#[test]
fn a_killed_worker_is_a_dropout_and_the_report_names_its_members() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), 6, 60, "");
    let (s, run) = (s.to_str().unwrap(), dir.path().join("run"));
    let coordinator = Command::new(SIM)
        .args(["coordinator", s, "--listen", "127.0.0.1:0", "--out", run.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed with the workers if the test fails before they end.
    let mut procs = Reaped(vec![coordinator]);
    let mut stdout = BufReader::new(procs.0[0].stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("coordinator listening on ")
        .and_then(|l| l.split(';').next())
        .unwrap_or_else(|| panic!("no address announced: {line:?}"))
        .to_owned();
    let pki = run.join("pki");
    for m in ["0..2", "2..4", "4..6"] {
        procs.0.push(
            Command::new(SIM)
                .args(["worker", s, "--connect", &addr, "--members", m, "--pki", pki.to_str().unwrap()])
                .args(["--workers", "1"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    wait_for("first round", Duration::from_secs(300), || !metrics(&run).is_empty());
    procs.0[3].kill().unwrap();
    procs.0[3].wait().unwrap();

    let start = Instant::now();
    let status = loop {
        if let Some(s) = procs.0[0].try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "the coordinator did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "coordinator failed: {rest}");
    for w in &mut procs.0[1..3] {
        assert!(w.wait().unwrap().success(), "a surviving worker failed");
    }
    let sum = summary(&run);
    assert_eq!(sum["completed_rounds"], 60, "{rest}");
    // In the order the coordinator noticed (each connection times out on its own).
    let mut lost: Vec<&str> =
        sum["config"]["lost_members"].as_array().unwrap().iter().map(|l| l["member"].as_str().unwrap()).collect();
    lost.sort();
    assert_eq!(lost, ["client-4", "client-5"], "{rest}");
    assert!(rest.contains("lost 2 members whose connection ended (dropouts): client-"), "{rest}");
    let records = metrics(&run);
    assert_eq!(records[0]["participants"], 6);
    let last = records.last().unwrap();
    assert_eq!((last["participants"].as_u64(), last["accepted"].as_bool()), (Some(4), Some(true)), "{records:?}");
}

/// A worker with nobody to connect to fails, naming the address and the
/// cause, and `pki` makes the certificates a worker reads.
#[test]
fn a_worker_that_cannot_connect_names_the_address_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), 3, 1, "");
    let (s, pki) = (s.to_str().unwrap(), dir.path().join("pki"));
    let made = sim(&["pki", s, "--dir", pki.to_str().unwrap(), "--host", "sim.example.org"]);
    assert!(String::from_utf8_lossy(&made.stdout).contains("3 member certificates"));
    for f in ["ca.pem", "client-0.pem", "client-2.key"] {
        assert!(pki.join(f).exists(), "{f}");
    }
    let again = Command::new(SIM).args(["pki", s, "--dir", pki.to_str().unwrap()]).output().unwrap();
    assert!(!again.status.success(), "a second pki over the first must be refused");

    let out = Command::new(SIM)
        .args(["worker", s, "--connect", "127.0.0.1:9", "--members", "1..3", "--pki", pki.to_str().unwrap()])
        .args(["--connect-attempts", "1"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // The transport's cause follows the address (a timeout, or the port refusing).
    let (_, cause) = stderr
        .split_once("error: member client-1 cannot connect to the coordinator at 127.0.0.1:9: ")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(!cause.trim().is_empty(), "no cause given:\n{stderr}");

    let bad = Command::new(SIM)
        .args(["worker", s, "--connect", "127.0.0.1:9", "--members", "2..4", "--pki", pki.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--members 2..4: scenario procs has 3 members"));
}

/// An image scenario (EfficientNet-Lite0 transfer on the shipped
/// Fashion-MNIST images) across two worker processes trains the same head,
/// bit for bit, as in one process: each worker builds its members' images,
/// splits and models as the single process does.
#[test]
fn an_image_scenario_across_two_workers_trains_the_same_model_as_one_process() {
    let weights = tessera_vision::default_weights_path();
    if !weights.is_file() {
        eprintln!("SKIPPED: {} not found; run scripts/fetch-weights.sh", weights.display());
        return;
    }
    let images =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/fashion-mnist").canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("images.toml");
    let text = format!(
        r#"
name = "procs-images"
seed = 10
clients = 4
rounds = 2
min_clients = 4

[data]
kind = "fashion_mnist_images"
path = "{images}"
test = 0.2

[partition]
kind = "dirichlet"
alpha = 3.0

[vision_model]
kind = "efficientnet_lite0"
num_classes = 10
image_size = 32
weights = "{weights}"

[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.05

[secure]
threshold_fraction = 0.67
"#,
        images = images.display(),
        weights = weights.canonicalize().unwrap().display(),
    );
    std::fs::write(&s, text).unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let s = s.to_str().unwrap();
    sim(&["run", s, "--out", one.to_str().unwrap(), "--workers", "2"]);
    let out = sim(&["run", s, "--processes", "2", "--out", two.to_str().unwrap(), "--workers", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (a, b) = (summary(&one), summary(&two));
    assert_eq!(a["completed_rounds"], 2);
    assert_eq!(a["final_model_sha256"], b["final_model_sha256"], "the model differs with 2 worker processes");
    assert!(stdout.contains("worker 0..2: 2 members finished"), "{stdout}");
    // The harness evaluates image runs too, in both: ten classes, chance is 0.1.
    let accuracy = |v: &serde_json::Value| v["config"]["harness_evaluation"]["accuracy"].as_f64().unwrap();
    assert!(accuracy(&a) > 0.3, "{a}");
    assert_eq!(accuracy(&a), accuracy(&b));
}
