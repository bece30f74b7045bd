//! Floods against the aggregator daemon's code over real QUIC on loopback,
//! while three honest members (the real member daemon code) are in the
//! middle of a securely aggregated round: frames announced at the size
//! limit and then left hanging, handshakes from outsiders and from another
//! consortium, a hundred connections from one member, oversize frames.
//! Every attempt is refused with a typed error, the run's rounds complete,
//! and the aggregator's memory and file descriptors stay bounded.
//!
//! The attacker runs in a child process (this test binary again, running
//! the ignored `flood_attacker` test), so that this process's memory and
//! descriptors are the aggregator's and the honest members' alone.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tessera_aggregator::daemon;
use tessera_core::{ClientMsg, HEADER_LEN, Limits, PROTOCOL_VERSION, PROTOCOL_VERSION as V, encode_frame};
use tessera_e2e::proc_stats::{MIB, open_fds, peak_growth_since, reset_peak_rss, rss_bytes};
use tessera_e2e::raw_quic::raw_connect;
use tessera_e2e::*;
use tessera_transport::{Connection, QuicDialConfig, TransportError, close_code, connect, pki};

const HONEST: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
/// A member with a valid certificate who floods.
const MALLORY: &str = "mallory";
/// Signed by the consortium CA but not in the member list.
const OUTSIDER: &str = "outsider";

/// Tells the child process where to attack: `addr|pki_dir|rogue_pki_dir`.
const ATTACK_ENV: &str = "TESSERA_FLOOD_ATTACK";

/// Connections each flood opens.
const HANDSHAKE_FLOOD: usize = 150;
const MEMBER_FLOOD: usize = 100;
const OVERSIZE_FLOOD: usize = 40;
/// Connections that announce a maximum-size frame and send most of it.
const HANGING_FRAMES: usize = 48;
const HANGING_BYTES: usize = 7 << 20;

fn dial(pki_dir: &Path, name: &str, addr: &str) -> QuicDialConfig {
    let mut c = QuicDialConfig::from_pki_dir(pki_dir, name, addr.to_string()).unwrap();
    c.server_name = Some("localhost".into());
    c.connect_timeout = Duration::from_secs(20);
    c
}

/// Read until the aggregator closes the connection; `None` if it stays open for `wait`.
async fn closed_within(conn: &mut Connection, wait: Duration) -> Option<Result<(), TransportError>> {
    tokio::time::timeout(wait, async {
        loop {
            match conn.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_refused_and_memory_stays_bounded() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, &Default::default()).unwrap();
    for n in HONEST.iter().chain(&[MALLORY, OUTSIDER]) {
        pki::issue(&pki_dir, n).unwrap();
    }
    let rogue = dir.path().join("rogue-pki");
    pki::init(&rogue, &Default::default()).unwrap();
    pki::issue(&rogue, HONEST[0]).unwrap();

    let csvs = write_member_csvs(dir.path(), &HONEST);
    let run_dir = dir.path().join("run");
    let members = [HONEST[0], HONEST[1], HONEST[2], MALLORY];
    let mut cfg = aggregator_config(&pki_dir, &run_dir, &members, 2, 3);
    // Mallory may be online when a round starts and then never answer.
    cfg.run.phase_timeout_secs = 5.0;
    cfg.run.round_deadline_secs = 180.0;
    let listener = daemon::listen(&cfg).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let aggregator = tokio::spawn(daemon::run(cfg, listener));
    // hospital-c trains only when the gate opens, after the floods: the
    // run stays in round 1 while they last.
    let (gate, gate_rx) = std::sync::mpsc::channel::<()>();
    let mut honest = Vec::new();
    for (n, csv) in HONEST[..2].iter().zip(&csvs) {
        honest.push(tokio::spawn(run_member(client_config(dir.path(), &pki_dir, n, csv, &addr))));
    }
    let gated = client_config(dir.path(), &pki_dir, HONEST[2], &csvs[2], &addr);
    honest.push(tokio::spawn(run_member_with(gated, move |m| GatedModel { inner: m, gate: gate_rx })));
    let ledger = dir.path().join("hospital-c-egress.jsonl");
    tessera_e2e::adversary::wait_until("round 1 to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&ledger).is_ok_and(|s| s.contains("\"advertise_keys\""))
    })
    .await;
    // Warm up the refusal path before the baseline.
    let warm = connect(&dial(&pki_dir, OUTSIDER, &addr)).await;
    assert!(matches!(warm, Err(TransportError::Refused { .. })), "{:?}", warm.err());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fds0 = open_fds();
    let measured = reset_peak_rss();
    let base = rss_bytes();
    let max_fds = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let max_fds = max_fds.clone();
        tokio::spawn(async move {
            loop {
                max_fds.fetch_max(open_fds().unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let attacker = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["flood_attacker", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ATTACK_ENV, format!("{addr}|{}|{}", pki_dir.display(), rogue.display()))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), attacker).await.expect("the attack ends").unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.contains("1 passed"), "the attacker process failed:\n{report}");
    for line in report.lines().filter_map(|l| l.find("attack:").map(|i| &l[i..])) {
        eprintln!("{line}");
    }
    let grown = peak_growth_since(base);
    sampler.abort();

    for _ in 0..8 {
        gate.send(()).unwrap();
    }
    let end = tokio::time::timeout(Duration::from_secs(240), aggregator).await.expect("run finishes").unwrap().unwrap();
    assert_eq!(end.completed_rounds, 2, "{}", end.reason);
    for m in honest {
        m.await.unwrap().unwrap();
    }
    let records = read_metrics(&run_dir);
    assert!(records.iter().all(|r| r.participants >= 3), "{records:?}");

    let pinned_if_unbounded = (HANGING_FRAMES * HANGING_BYTES) as u64;
    let max_fds = max_fds.load(Ordering::Relaxed);
    match (measured, grown, fds0) {
        (true, Some(grown), Some(fds0)) => {
            eprintln!(
                "aggregator process: peak memory +{} MiB during the floods (hanging frames alone would pin {} MiB \
                 if unbounded); descriptors {fds0}, at most {max_fds}",
                grown / MIB,
                pinned_if_unbounded / MIB
            );
            assert!(grown < pinned_if_unbounded / 3, "the floods pinned {} MiB of aggregator memory", grown / MIB);
            // One UDP socket serves every connection.
            assert!(max_fds <= fds0 + 16, "descriptors grew with the flood: {fds0} -> {max_fds}");
        }
        _ => eprintln!("note: /proc/self is unavailable; memory and descriptor bounds not checked"),
    }
}

/// The attacking process of `floods_are_refused_and_memory_stays_bounded`;
/// does nothing when run on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by floods_are_refused_and_memory_stays_bounded in a child process"]
async fn flood_attacker() {
    let Ok(spec) = std::env::var(ATTACK_ENV) else {
        eprintln!("flood_attacker only runs as the child of floods_are_refused_and_memory_stays_bounded");
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (addr, pki_dir, rogue) = (parts[0], Path::new(parts[1]), Path::new(parts[2]));

    // 1. Frames announced at the limit, mostly sent, then left hanging. Each
    //    pins up to a frame of aggregator memory until the member's next
    //    connection replaces it; the attacker keeps them all open.
    let hanging = {
        let limit = Limits::default().max_frame_bytes;
        let mut f = vec![7u8; HEADER_LEN + HANGING_BYTES];
        f[0] = PROTOCOL_VERSION;
        f[1..HEADER_LEN].copy_from_slice(&(limit as u32).to_le_bytes());
        f
    };
    let agg_addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut stalled = Vec::new();
    for _ in 0..HANGING_FRAMES {
        // Raw stream: the frame API will not send an incomplete frame.
        let mut c = raw_connect(pki_dir, MALLORY, agg_addr).await.unwrap();
        c.send.write_all(&hanging).await.unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The aggregator closed every hanging connection but the newest.
    let open = stalled.iter().filter(|c| c.conn.close_reason().is_none()).count();
    assert!(open <= 1, "{open} of mallory's hanging connections are still open");
    println!("attack: {HANGING_FRAMES} hanging {} MiB frames; {open} connection left open", HANGING_BYTES >> 20);

    // 2. Handshake floods: outsiders are refused by name, foreigners by TLS.
    let outsider = dial(pki_dir, OUTSIDER, addr);
    let foreign = dial(rogue, HONEST[0], addr);
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for batch in 0..HANDSHAKE_FLOOD / 50 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let foreigner = (batch * 50 + i) % 3 == 0;
            let cfg = if foreigner { foreign.clone() } else { outsider.clone() };
            tasks.push(tokio::spawn(async move { (foreigner, connect(&cfg).await.err()) }));
        }
        for t in tasks {
            let (foreigner, err) = t.await.unwrap();
            let what = match err {
                None => panic!("a flooding outsider was admitted"),
                Some(TransportError::Refused { code, .. }) => {
                    assert_eq!(code, close_code::NOT_MEMBER);
                    "refused: not a member"
                }
                Some(TransportError::CertificateRefusedByPeer { .. }) => "certificate refused in the TLS handshake",
                // A foreigner trusting only its own CA rejects the aggregator first.
                Some(TransportError::PeerCertificateRejected { .. }) => {
                    "aggregator's certificate rejected in the TLS handshake"
                }
                Some(TransportError::ClosedByPeer { .. }) => "closed by the aggregator",
                // The refusal's close packet can be lost; the dialer then gives up.
                Some(TransportError::Timeout { .. }) => "timed out",
                Some(other) => panic!("unexpected outcome for an outsider: {other}"),
            };
            let who = if foreigner { "foreign CA" } else { "non-member" };
            *outcomes.entry(format!("{who}: {what}")).or_default() += 1;
        }
    }
    println!("attack: {HANDSHAKE_FLOOD} handshakes: {outcomes:?}");
    let typed: usize = outcomes.iter().filter(|(k, _)| !k.ends_with("timed out")).map(|(_, n)| n).sum();
    assert!(typed * 10 >= HANDSHAKE_FLOOD * 9, "most refusals must be typed: {outcomes:?}");

    // 3. One member, many connections: each new one replaces the last.
    let mallory = dial(pki_dir, MALLORY, addr);
    let hello = encode_frame(
        &ClientMsg::Hello { member: MALLORY.into(), protocol_version: V, settings: tessera_e2e::consortium_settings() },
        &Limits::default(),
    )
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..MEMBER_FLOOD {
        let mut c = connect(&mallory).await.expect("a member may connect");
        c.send(hello.clone()).await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let newest = held.pop().unwrap();
    let mut closed = 0;
    for mut c in held.drain(..) {
        if let Some(Err(TransportError::ClosedByPeer { code, reason })) =
            closed_within(&mut c, Duration::from_secs(5)).await
        {
            assert_eq!(code, u64::from(close_code::PROTOCOL));
            assert!(reason.contains("replaced by a newer connection"), "{reason}");
            closed += 1;
        }
    }
    assert_eq!(closed, MEMBER_FLOOD - 1, "older connections of one member must be closed");
    println!("attack: {MEMBER_FLOOD} connections of one member; {closed} closed as replaced");
    drop(newest);

    // 4. Oversize frames: refused at the header with a typed close.
    let mut big = mallory.clone();
    big.limits = Limits { max_frame_bytes: 16 << 20, ..Limits::default() };
    let oversize = {
        let limit = Limits::default().max_frame_bytes;
        let mut f = vec![0u8; HEADER_LEN + limit + 1];
        f[0] = PROTOCOL_VERSION;
        f[1..HEADER_LEN].copy_from_slice(&((limit + 1) as u32).to_le_bytes());
        f
    };
    for _ in 0..OVERSIZE_FLOOD {
        let mut c = connect(&big).await.unwrap();
        let _ = c.send(oversize.clone()).await;
        match closed_within(&mut c, Duration::from_secs(10)).await {
            Some(Err(TransportError::ClosedByPeer { code, .. })) => {
                assert_eq!(code, u64::from(close_code::MALFORMED_FRAME))
            }
            other => panic!("an oversize frame was not refused: {other:?}"),
        }
    }
    println!("attack: {OVERSIZE_FLOOD} oversize frames, each closed as malformed");
    drop(stalled);
}
