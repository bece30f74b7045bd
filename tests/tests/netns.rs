//! Network faults on real network stacks: the aggregator daemon and four
//! member daemons (the real binaries) each run in their own Linux network
//! namespace, joined by veth pairs. Mid-run one member's link is cut (`ip
//! link set down`), the other links get loss and delay (`tc netem`; where
//! the kernel lacks netem, a `tbf` rate limit with a small queue, which
//! delays packets and drops bursts), then everything is restored. The run must complete all its rounds, rounds
//! during the cut complete without the cut member, and the cut member takes
//! part again in a later round.
//!
//! Needs root (network namespaces) and the two daemon binaries. `cargo test
//! --workspace` builds both (each daemon's package has integration tests of
//! its binary); run alone, the test builds them with the same cargo if they
//! are missing. Where namespaces are not available (not root, no `ip`, a
//! container without CAP_SYS_ADMIN) it prints why and passes without
//! running. It takes about 20 s; CI (root) runs it as part of the suite.
//!
//! ```sh
//! cargo test --workspace --test netns -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_e2e::write_member_csvs;
use tessera_transport::pki;

// Four: a safe threshold (more than two thirds of the cohort) lets a cohort
// of four finish without one member; a cohort of three needs all three.
const MEMBERS: [&str; 4] = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];
/// The member whose link is cut.
const CUT: usize = 2;
/// Enough rounds that the cut member, whose QUIC connection resumes only
/// after its retransmission backoff, is back before the run ends.
const ROUNDS: u64 = 60;
const PORT: u16 = 47433;

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(args: &[&str]) {
    sh(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Namespaces and links of one test run; removed on drop, even on panic.
struct Topology {
    agg: String,
    members: Vec<String>,
    children: Vec<Child>,
}

impl Topology {
    /// `agg` namespace with one veth pair to each member namespace:
    /// member i is 10.77.i.2, the aggregator 10.77.i.1 on that link.
    fn create(tag: &str) -> Result<Self, String> {
        let agg = format!("tsr-{tag}-agg");
        sh(&["ip", "netns", "add", &agg])?;
        let mut t = Topology { agg, members: Vec::new(), children: Vec::new() };
        must(&["ip", "-n", &t.agg, "link", "set", "lo", "up"]);
        for i in 0..MEMBERS.len() {
            let ns = format!("tsr-{tag}-m{i}");
            must(&["ip", "netns", "add", &ns]);
            t.members.push(ns.clone());
            let (a, m) = (format!("tsr{tag}a{i}"), format!("tsr{tag}m{i}"));
            must(&["ip", "link", "add", &a, "netns", &t.agg, "type", "veth", "peer", "name", &m, "netns", &ns]);
            must(&["ip", "-n", &t.agg, "addr", "add", &format!("10.77.{i}.1/24"), "dev", &a]);
            must(&["ip", "-n", &ns, "addr", "add", &format!("10.77.{i}.2/24"), "dev", &m]);
            for (n, dev) in [(&t.agg, &a), (&ns, &m)] {
                must(&["ip", "-n", n, "link", "set", dev, "up"]);
            }
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        Ok(t)
    }

    fn tag(&self) -> String {
        self.agg.trim_start_matches("tsr-").trim_end_matches("-agg").to_string()
    }

    /// Member `i`'s end of its link: (namespace, device).
    fn member_dev(&self, i: usize) -> (String, String) {
        (self.members[i].clone(), format!("tsr{}m{i}", self.tag()))
    }

    /// The aggregator's end of member `i`'s link.
    fn agg_dev(&self, i: usize) -> (String, String) {
        (self.agg.clone(), format!("tsr{}a{i}", self.tag()))
    }

    fn spawn(&mut self, ns: &str, bin: &Path, args: &[&str], log: &Path) {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(args)
            .env("RUST_LOG", "info,quinn=warn,rustls=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn a daemon");
        self.children.push(child);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.members.iter().chain(std::iter::once(&self.agg)) {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// The daemon binaries next to this test's target directory, built if missing.
fn daemon_binaries() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf();
    let (agg, client) = (dir.join("tessera-aggregator"), dir.join("tessera-client"));
    if !agg.is_file() || !client.is_file() {
        let profile = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut cmd = Command::new(env!("CARGO"));
        // The whole workspace, so features unify as in the test build.
        cmd.args(["build", "--workspace", "--bins"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        cmd.env("CARGO_TARGET_DIR", dir.parent().unwrap());
        assert!(cmd.status().unwrap().success(), "building the daemons failed");
    }
    (agg, client)
}

fn write_configs(dir: &Path, pki_dir: &Path, csvs: &[PathBuf]) {
    let members = MEMBERS.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ");
    let model = "[model]\nnum_features = 30\nnum_classes = 2\nhidden = [16]\ninit_seed = 3\n";
    std::fs::write(
        dir.join("aggregator.toml"),
        format!(
            "[server]\nlisten = \"0.0.0.0:{PORT}\"\npki_dir = \"{}\"\nmembers = [{members}]\nrun_dir = \"{}\"\n\n\
             [run]\nrounds = {ROUNDS}\nmin_clients = 2\nstart_quorum = 4\nseed = 5\n\
             round_deadline_secs = 4\nphase_timeout_secs = 2\nmax_round_retries = 10\n\n{model}\n\
             [train]\nlocal_epochs = 20\nbatch_size = 16\nlearning_rate = 0.05\nexample_weight_cap = 200\n",
            pki_dir.display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    for (i, (m, csv)) in MEMBERS.iter().zip(csvs).enumerate() {
        std::fs::write(
            dir.join(format!("{m}.toml")),
            format!(
                "member = \"{m}\"\n\n[aggregator]\naddress = \"10.77.{i}.1:{PORT}\"\nserver_name = \"localhost\"\n\
                 ca = \"{p}/ca.pem\"\ncert = \"{p}/{m}.pem\"\nkey = \"{p}/{m}.key\"\n\n\
                 [data]\npath = \"{}\"\nlabel = \"diagnosis\"\nclasses = [\"benign\", \"malignant\"]\ntest = 0.25\n\
                 schema = \"{}\"\n\n{model}\n[state]\negress_ledger = \"{}\"\n",
                csv.display(),
                tessera_e2e::wdbc_schema().display(),
                dir.join(format!("{m}-egress.jsonl")).display(),
                p = pki_dir.display(),
            ),
        )
        .unwrap();
    }
}

/// The number of the last completed round in `metrics.jsonl`.
fn last_round(metrics: &Path) -> u64 {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    text.lines().last().map_or(0, |l| serde_json::from_str::<tessera_core::RoundRecord>(l).unwrap().round)
}

/// Rounds in which `member`'s egress ledger shows a complete masked update.
fn rounds_contributed(ledger: &Path) -> Vec<u64> {
    let entries = tessera_client::EgressLedger::read(ledger).unwrap_or_default();
    let mut r: Vec<u64> = entries.iter().filter(|e| e.kind == "masked_end").filter_map(|e| e.round).collect();
    r.dedup();
    r
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn link_cut_and_netem_across_namespaces() {
    let tag = format!("{}", std::process::id() % 10_000);
    let mut topo = match Topology::create(&tag) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED: network namespaces are not available here ({e}); run as root on Linux");
            return;
        }
    };
    // Loss and delay: netem where the kernel has it; otherwise a token
    // bucket with a tiny queue, which delays packets and drops bursts.
    let netem = sh(&[
        "ip",
        "netns",
        "exec",
        &topo.members[0],
        "tc",
        "qdisc",
        "add",
        "dev",
        "lo",
        "root",
        "netem",
        "delay",
        "1ms",
    ])
    .and_then(|()| sh(&["ip", "netns", "exec", &topo.members[0], "tc", "qdisc", "del", "dev", "lo", "root"]));
    let degrade: &[&str] = match &netem {
        Ok(()) => &["netem", "delay", "40ms", "10ms", "loss", "3%"],
        Err(e) => {
            eprintln!(
                "note: tc netem is unavailable ({e}); degrading links with tbf (rate limit, small queue) instead"
            );
            &["tbf", "rate", "128kbit", "burst", "2kb", "limit", "3kb"]
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    for m in MEMBERS {
        pki::issue(&pki_dir, m).unwrap();
    }
    let csvs = write_member_csvs(dir.path(), &MEMBERS);
    write_configs(dir.path(), &pki_dir, &csvs);
    let (agg_bin, client_bin) = daemon_binaries();
    let started = Instant::now();
    let agg_ns = topo.agg.clone();
    let agg_cfg = dir.path().join("aggregator.toml");
    topo.spawn(
        &agg_ns,
        &agg_bin,
        &["serve", "--config", agg_cfg.to_str().unwrap()],
        &dir.path().join("aggregator.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    for (i, m) in MEMBERS.iter().enumerate() {
        let ns = topo.members[i].clone();
        let cfg = dir.path().join(format!("{m}.toml"));
        topo.spawn(&ns, &client_bin, &["run", "--config", cfg.to_str().unwrap()], &dir.path().join(format!("{m}.log")));
    }
    let ledger = |i: usize| dir.path().join(format!("{}-egress.jsonl", MEMBERS[i]));
    let metrics = dir.path().join("run").join("metrics.jsonl");
    let completed = || std::fs::read_to_string(&metrics).map(|s| s.lines().count()).unwrap_or(0);

    // Cut hospital-c's link as soon as it has sent its shares in round 2 (mid-round).
    wait_for("round 2 to reach hospital-c's shares", Duration::from_secs(120), || {
        std::fs::read_to_string(ledger(CUT))
            .map(|s| s.lines().any(|l| l.contains("\"share_keys\"") && l.contains("\"round\":2")))
            .unwrap_or(false)
    });
    let (cut_ns, cut_dev) = topo.member_dev(CUT);
    must(&["ip", "-n", &cut_ns, "link", "set", &cut_dev, "down"]);
    let cut_at = completed();
    eprintln!("{:>5.1}s: cut {} after {cut_at} rounds", started.elapsed().as_secs_f64(), MEMBERS[CUT]);

    // Loss and delay on the other members' links while the cut lasts.
    let degraded: Vec<(String, String)> =
        (0..MEMBERS.len()).filter(|i| *i != CUT).flat_map(|i| [topo.member_dev(i), topo.agg_dev(i)]).collect();
    for (ns, dev) in &degraded {
        let mut cmd = vec!["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root"];
        cmd.extend_from_slice(degrade);
        must(&cmd);
    }
    // Rounds complete without hospital-c (the one under way may still
    // have its update, if it left just before the cut).
    wait_for("two rounds without the cut member", Duration::from_secs(180), || completed() >= cut_at + 3);
    let restored_at = completed();
    let last_round_during_cut = last_round(&metrics);
    // Reconnect hospital-c while the others are still slowed down (so the
    // run cannot race to its end), and wait until it contributes again;
    // its QUIC connection resumes after its retransmission backoff.
    must(&["ip", "-n", &cut_ns, "link", "set", &cut_dev, "up"]);
    eprintln!("{:>5.1}s: link restored after {restored_at} rounds", started.elapsed().as_secs_f64());
    wait_for("the cut member to contribute again", Duration::from_secs(120), || {
        rounds_contributed(&ledger(CUT)).iter().any(|r| *r > last_round_during_cut)
    });
    eprintln!("{:>5.1}s: {} is back", started.elapsed().as_secs_f64(), MEMBERS[CUT]);
    for (ns, dev) in &degraded {
        let stats = Command::new("ip").args(["netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev]).output();
        if let Ok(out) = stats {
            let text = String::from_utf8_lossy(&out.stdout);
            eprintln!("{dev}: {}", text.lines().nth(1).unwrap_or("").trim());
        }
        must(&["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"]);
    }

    // The run finishes: the aggregator exits by itself.
    let agg = &mut topo.children[0];
    let end = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = agg.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the run did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{:>5.1}s: run finished", started.elapsed().as_secs_f64());
    let log = std::fs::read_to_string(dir.path().join("aggregator.log")).unwrap_or_default();
    assert!(status.success(), "aggregator failed:\n{log}");

    let records: Vec<tessera_core::RoundRecord> =
        std::fs::read_to_string(&metrics).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len() as u64, ROUNDS, "{records:?}");
    assert!(records.iter().all(|r| r.participants >= 2), "{records:?}");
    let during = &records[cut_at..restored_at];
    assert!(during.iter().skip(1).all(|r| r.participants == 3), "rounds during the cut: {during:?}");
    assert!(records[restored_at..].iter().any(|r| r.participants == 4), "{records:?}");
}
