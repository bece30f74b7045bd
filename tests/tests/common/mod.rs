//! A consortium on loopback for the daemons' process-level tests: a PKI,
//! three members with a share of the shipped WDBC data each (run in this
//! process through the real client library, seeded test mode), and the real
//! `tessera-aggregator` binary started and SIGKILLed as a child process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tessera_client::{ClientConfig, ClientExit, ClientOptions, EgressLedger, LocalModel};
use tessera_core::{DpSettings, EvalMetrics, ModelParams, TrainSettings};
use tessera_protocol::TrainedUpdate;
use tessera_transport::{BackoffPolicy, Dialer, QuicDialConfig, pki};

pub const NAMES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
/// The real `tessera-aggregator` binary (see [`daemon_binary`]).
pub static BIN: LazyLock<PathBuf> = LazyLock::new(|| daemon_binary("tessera-aggregator"));

/// A daemon binary from this test's target directory. `cargo test
/// --workspace` builds both: each daemon package has integration tests of
/// its own binary, which makes cargo build it. A missing binary fails the
/// test rather than skipping it. `TESSERA_DAEMON_DIR` points elsewhere, for
/// worktrees that share one target directory (and so one uplifted binary).
pub fn daemon_binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TESSERA_DAEMON_DIR") {
        let p = PathBuf::from(dir).join(name);
        assert!(p.is_file(), "{} is not there (TESSERA_DAEMON_DIR)", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let p = exe.parent().and_then(Path::parent).expect("target directory").join(name);
    assert!(p.is_file(), "{} is not built; run `cargo test --workspace`", p.display());
    p
}

/// The directory every test consortium lives in.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub csvs: Vec<PathBuf>,
}

impl Site {
    pub fn new() -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        // Keep the logs, databases and configs of a failing run for a look.
        if std::env::var_os("TESSERA_KEEP_TEST_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("test directory kept: {}", dir.path().display());
        }
        let pki = dir.path().join("pki");
        pki::init(&pki, &Default::default()).unwrap();
        for n in NAMES {
            pki::issue(&pki, n).unwrap();
        }
        let csvs = write_member_csvs(dir.path());
        Self { dir, pki, csvs }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Split the shipped WDBC file into one CSV per member (row i to member i mod 3).
fn write_member_csvs(dir: &Path) -> Vec<PathBuf> {
    tessera_e2e::write_member_csvs(dir, &NAMES)
}

/// A free loopback port (UDP for QUIC, TCP for HTTP); released before use,
/// which is good enough on a test machine.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Options of one run's `aggregator.toml`.
pub struct RunOptions {
    pub rounds: u64,
    pub quic_port: u16,
    pub http_port: Option<u16>,
    pub dp: bool,
}

/// Write `<site>/<name>/aggregator.toml` (paths relative to it) and return it.
pub fn aggregator_toml(site: &Site, name: &str, o: &RunOptions) -> PathBuf {
    let dir = site.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let status = o.http_port.map(|p| format!("[status]\nlisten = \"127.0.0.1:{p}\"\n")).unwrap_or_default();
    // Client-level DP with a fixed noise multiplier: every started round
    // charges the same spend, so the ledger is easy to check by hand. Its
    // evaluation is private (inside the noised secure sum, issue #18).
    let privacy = if o.dp {
        "[privacy]\nunit = \"client\"\nepsilon = 1000.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = 0.3\n\n\
         [privacy.evaluation]\nmax_examples = 200\n"
    } else {
        ""
    };
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
pki_dir = "../pki"
members = ["hospital-a", "hospital-b", "hospital-c"]
run_dir = "out"

[run]
rounds = {rounds}
min_clients = 3
seed = 11
round_deadline_secs = 60
phase_timeout_secs = 20
max_round_retries = 3

[model]
num_features = 30
num_classes = 2
hidden = [8]
init_seed = 3

[train]
local_epochs = 1
batch_size = 16
learning_rate = 0.1
example_weight_cap = 200

[state]
path = "state/tessera.db"
keep_checkpoints = 2

{status}
{privacy}"#,
        port = o.quic_port,
        rounds = o.rounds,
    );
    let p = dir.join("aggregator.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn state_db(config: &Path) -> PathBuf {
    config.parent().unwrap().join("state/tessera.db")
}

/// Start `tessera-aggregator serve`; its log goes to `<config dir>/serve-N.log`.
pub fn spawn_aggregator(config: &Path, stall_after: Option<u64>) -> Child {
    spawn_aggregator_stalled(config, stall_after.map(|k| (tessera_aggregator::STALL_ENV, k)))
}

/// [`spawn_aggregator`] with any test-only stall knob (`STALL_ENV`,
/// `STALL_BEFORE_COMMIT_ENV` or `STALL_AFTER_RELEASE_ENV`) set to a logical
/// round; the others are cleared.
pub fn spawn_aggregator_stalled(config: &Path, stall: Option<(&str, u64)>) -> Child {
    let dir = config.parent().unwrap();
    let n = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("serve-"))
        .count();
    let log = std::fs::File::create(dir.join(format!("serve-{n}.log"))).unwrap();
    let mut cmd = Command::new(&*BIN);
    cmd.arg("serve").arg("--config").arg(config).stdout(Stdio::null()).stderr(log);
    cmd.env("RUST_LOG", "info,quinn=warn,rustls=warn");
    cmd.env_remove(tessera_aggregator::STALL_ENV)
        .env_remove(tessera_aggregator::STALL_BEFORE_COMMIT_ENV)
        .env_remove(tessera_aggregator::STALL_AFTER_RELEASE_ENV);
    if let Some((knob, k)) = stall {
        cmd.env(knob, k.to_string());
    }
    cmd.spawn().expect("start tessera-aggregator")
}

/// The real `tessera-client` binary next to the aggregator's.
pub fn client_binary() -> PathBuf {
    daemon_binary("tessera-client")
}

/// Start `tessera-client run --config <config>`, its log in `<config dir>/<log>`.
pub fn spawn_client(bin: &Path, config: &Path, log: &str) -> Child {
    let log = std::fs::File::create(config.with_file_name(log)).unwrap();
    Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,quinn=warn,rustls=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tessera-client")
}

/// SIGKILL (no chance to clean up) and reap.
pub fn sigkill(mut child: Child) {
    child.kill().expect("SIGKILL the aggregator");
    child.wait().unwrap();
}

/// Wait for the aggregator to exit on its own and return whether it succeeded.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    wait_child(child, timeout, "the aggregator")
}

/// Wait for a child process (`what`, for the failure message) to exit on its
/// own and return whether it succeeded.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> bool {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.success();
        }
        assert!(t0.elapsed() < timeout, "{what} did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll the state database (read-only, beside the live daemon) until `f`
/// answers `Some`.
pub async fn wait_db<T>(db: &Path, timeout: Duration, what: &str, f: impl Fn(&Connection) -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if db.exists()
            && let Ok(c) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            && let Some(v) = f(&c)
        {
            return v;
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn count(c: &Connection, sql: &str) -> Option<i64> {
    c.query_row(sql, [], |r| r.get(0)).ok()
}

/// Where a test holds members: inside local training or inside an
/// evaluation (of the new global model without DP; of the round's starting
/// model under private evaluation).
#[derive(Default)]
pub struct Gates {
    pub train: AtomicBool,
    pub evaluate: AtomicBool,
    /// Members currently held at a gate.
    pub held: AtomicUsize,
    /// Every exact evaluation a member computed, in order (they stay in
    /// the test process: what leaves is the private release).
    pub evaluations: Mutex<Vec<EvalMetrics>>,
}

impl Gates {
    fn pass(&self, gate: &AtomicBool) {
        if gate.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            while gate.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Open `gate` and wait until every member held there has moved on.
    pub async fn release(&self, gate: &AtomicBool) {
        gate.store(false, Ordering::SeqCst);
        let t0 = Instant::now();
        while self.held.load(Ordering::SeqCst) > 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "held members did not move on");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many exact evaluations members have computed so far.
    pub fn evaluated(&self) -> usize {
        self.evaluations.lock().unwrap().len()
    }

    /// Wait until members have computed `n` exact evaluations in all.
    pub async fn wait_evaluated(&self, n: usize) {
        let t0 = Instant::now();
        while self.evaluated() < n {
            assert!(t0.elapsed() < Duration::from_secs(60), "members never finished evaluating");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wait until `n` members are held at a gate.
    pub async fn wait_held(&self, n: usize) {
        let t0 = Instant::now();
        while self.held.load(Ordering::SeqCst) < n {
            assert!(t0.elapsed() < Duration::from_secs(60), "members never reached the gate");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A member's local model that stops at the test's gates: lets a test keep
/// a round open at a known phase deterministically.
pub struct Held<M> {
    pub inner: M,
    pub gates: Arc<Gates>,
}

impl<M: LocalModel> LocalModel for Held<M> {
    fn train(
        &mut self,
        model: &ModelParams,
        settings: &TrainSettings,
        dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, tessera_learn::LocalError> {
        self.gates.pass(&self.gates.train);
        self.inner.train(model, settings, dp)
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, tessera_learn::LocalError> {
        self.gates.pass(&self.gates.evaluate);
        let m = self.inner.evaluate(model)?;
        self.gates.evaluations.lock().unwrap().push(m.clone());
        Ok(m)
    }
}

/// The member's `client.toml`, in the seeded test mode.
pub fn member_config(site: &Site, run: &str, i: usize, quic_port: u16) -> ClientConfig {
    let name = NAMES[i];
    let p = site.path().join(run).join(format!("{name}.toml"));
    let text = format!(
        r#"member = "{name}"
[aggregator]
address = "127.0.0.1:{quic_port}"
server_name = "localhost"
ca = "../pki/ca.pem"
cert = "../pki/{name}.pem"
key = "../pki/{name}.key"
[data]
path = "{csv}"
label = "diagnosis"
classes = ["benign", "malignant"]
test = 0.25
schema = "{schema}"
[model]
num_features = 30
num_classes = 2
hidden = [8]
init_seed = 3
[state]
egress_ledger = "{name}-egress.jsonl"
[testing]
seeded_randomness = true
"#,
        csv = site.csvs[i].display(),
        schema = tessera_e2e::wdbc_schema().display(),
    );
    std::fs::write(&p, text).unwrap();
    ClientConfig::load(&p).unwrap()
}

/// Run one member until the aggregator shuts the run down, reconnecting
/// through aggregator restarts.
pub async fn run_member(cfg: ClientConfig, gates: Arc<Gates>) -> anyhow::Result<ClientExit> {
    let model = Held { inner: tessera_client::tabular_model(&cfg)?, gates };
    run_member_with(&cfg, model).await
}

/// [`run_member`] with any local model (a test's wrapper that holds or
/// counts training, for example).
pub async fn run_member_with<M: tessera_client::LocalModel + 'static>(
    cfg: &ClientConfig,
    model: M,
) -> anyhow::Result<ClientExit> {
    let mut dial =
        QuicDialConfig::new(&cfg.aggregator.address, &cfg.aggregator.ca, &cfg.aggregator.cert, &cfg.aggregator.key)?;
    dial.server_name = cfg.aggregator.server_name.clone();
    dial.connect_timeout = Duration::from_secs(2);
    // A SIGKILLed aggregator sends no close: members notice by the idle
    // timeout (30 s by default); shorten it so restarts are quick to rejoin.
    dial.tuning.idle_timeout = Duration::from_secs(2);
    dial.tuning.keep_alive = Duration::from_millis(500);
    let mut egress = EgressLedger::open(&cfg.state.egress_ledger)?;
    let mut p = tessera_client::participant(cfg)?;
    let opts = ClientOptions {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(300),
            multiplier: 2.0,
            max_attempts: Some(600),
        },
        ..ClientOptions::default()
    };
    Ok(tessera_client::run(Dialer::Quic(Arc::new(dial)), &mut p, Arc::new(Mutex::new(model)), &mut egress, opts)
        .await?)
}

/// Start all members of a run.
pub fn start_members(
    site: &Site,
    run: &str,
    quic_port: u16,
    gates: &Arc<Gates>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<ClientExit>>> {
    (0..NAMES.len()).map(|i| tokio::spawn(run_member(member_config(site, run, i, quic_port), gates.clone()))).collect()
}

/// Members must all end with the aggregator's Shutdown.
pub async fn join_members(members: Vec<tokio::task::JoinHandle<anyhow::Result<ClientExit>>>) {
    for m in members {
        let exit = tokio::time::timeout(Duration::from_secs(30), m).await.expect("member exits").unwrap().unwrap();
        assert!(matches!(exit, ClientExit::Shutdown { .. }), "{exit:?}");
    }
}

/// `GET path` over plain HTTP/1.1.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Run the aggregator binary with arguments; returns (success, stdout + stderr).
pub fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(&*BIN).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
