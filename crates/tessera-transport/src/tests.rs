//! Functional tests. Each behaviour is one body run over real QUIC on
//! loopback (certificates generated into a tempdir) and over the memory
//! transport, so the two cannot drift apart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tessera_core::codec::{Limits, PROTOCOL_VERSION, decode_payload, encode_frame};
use tessera_core::{CodecError, message::ClientMsg};

use crate::pki::{self, InitOptions};
use crate::*;

const SMALL: Limits = Limits { max_frame_bytes: 1 << 16, chunk_values: 1 << 12 };

fn members() -> Arc<MemberList> {
    let list = MemberList::new(["alice", "bob", "dave"]);
    list.revoke("dave");
    Arc::new(list)
}

/// A consortium directory: CA, aggregator, and certificates for alice, bob,
/// carol (not a member) and dave (revoked).
fn consortium() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &InitOptions::default()).unwrap();
    for m in ["alice", "bob", "carol", "dave"] {
        pki::issue(dir.path(), m).unwrap();
    }
    dir
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn listener_config(dir: &Path, bind: SocketAddr) -> QuicListenerConfig {
    let mut cfg = QuicListenerConfig::from_pki_dir(dir, bind).unwrap();
    cfg.limits = SMALL;
    cfg.handshake_timeout = Duration::from_secs(5);
    cfg
}

fn dial_config(dir: &Path, member: &str, addr: SocketAddr) -> QuicDialConfig {
    let mut cfg = QuicDialConfig::from_pki_dir(dir, member, format!("localhost:{}", addr.port())).unwrap();
    cfg.limits = SMALL;
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

/// One aggregator and a way to dial it as any member, over either transport.
struct Harness {
    listener: Listener,
    dial: Box<dyn Fn(&str) -> Dialer>,
    _dir: Option<TempDir>,
}

fn quic_harness() -> Harness {
    let dir = consortium();
    let listener = listener_config(dir.path(), loopback()).listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.path().to_path_buf();
    let dial = Box::new(move |m: &str| Dialer::Quic(Arc::new(dial_config(&path, m, addr))));
    Harness { listener, dial, _dir: Some(dir) }
}

fn memory_harness() -> Harness {
    let net = MemoryNetwork::new();
    let listener = net.listen(members(), SMALL).unwrap();
    let dial = Box::new(move |m: &str| Dialer::Memory { network: net.clone(), member: m.to_owned() });
    Harness { listener, dial, _dir: None }
}

async fn connect_pair(h: &mut Harness, member: &str) -> (Connection, Connection) {
    let client = (h.dial)(member).dial().await.unwrap();
    let (peer, server) = tokio::time::timeout(Duration::from_secs(5), h.listener.accept()).await.unwrap().unwrap();
    assert_eq!(peer.member, member, "identity comes from the certificate");
    assert_eq!(client.peer().member, Peer::AGGREGATOR);
    (client, server)
}

fn msg(i: u64, n: usize) -> ClientMsg {
    ClientMsg::MaskedChunk { round: 1, offset: i, values: (0..n as u32).map(|v| v ^ i as u32).collect() }
}

async fn round_trip(mut h: Harness) {
    let (mut client, mut server) = connect_pair(&mut h, "alice").await;
    let mut up = 0;
    for i in 0..5 {
        let f = encode_frame(&msg(i, 100 * i as usize), &SMALL).unwrap();
        up += f.len() as u64;
        client.send(f).await.unwrap();
    }
    for i in 0..5 {
        let payload = server.recv().await.unwrap().unwrap();
        assert_eq!(decode_payload::<ClientMsg>(&payload).unwrap(), msg(i, 100 * i as usize));
    }
    let reply = encode_frame(&msg(9, 3), &SMALL).unwrap();
    let down = reply.len() as u64;
    server.send(reply).await.unwrap();
    assert_eq!(decode_payload::<ClientMsg>(&client.recv().await.unwrap().unwrap()).unwrap(), msg(9, 3));

    let (ct, st) = (client.traffic(), server.traffic());
    assert_eq!((ct.bytes_sent(), ct.bytes_received()), (up, down));
    assert_eq!((st.bytes_sent(), st.bytes_received()), (down, up));

    // Split halves work concurrently; finishing ends the peer's stream cleanly.
    let (mut ctx, mut crx) = client.split();
    let echo = tokio::spawn(async move {
        while let Some(p) = server.recv().await.unwrap() {
            let m: ClientMsg = decode_payload(&p).unwrap();
            server.send(encode_frame(&m, &SMALL).unwrap()).await.unwrap();
        }
        server.finish().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while let Some(p) = crx.recv().await.unwrap() {
            assert_eq!(decode_payload::<ClientMsg>(&p).unwrap(), msg(got, 50));
            got += 1;
        }
        got
    });
    for i in 0..20 {
        ctx.send(encode_frame(&msg(i, 50), &SMALL).unwrap()).await.unwrap();
    }
    ctx.finish().await.unwrap();
    assert_eq!(reader.await.unwrap(), 20);
    echo.await.unwrap();
    assert_eq!(ct.bytes_sent(), st.bytes_received());
    assert_eq!(ct.bytes_received(), st.bytes_sent());
}

#[tokio::test]
async fn quic_round_trip() {
    round_trip(quic_harness()).await;
}

#[tokio::test]
async fn memory_round_trip() {
    round_trip(memory_harness()).await;
}

async fn admission_refusals(mut h: Harness) {
    match (h.dial)("carol").dial().await {
        Err(TransportError::Refused { code, reason }) => {
            assert_eq!((code, reason.as_str()), (close_code::NOT_MEMBER, "not a member"));
        }
        other => panic!("carol must be refused, got {:?}", other.map(|c| c.peer().clone())),
    }
    match (h.dial)("dave").dial().await {
        Err(TransportError::Refused { code, reason }) => {
            assert_eq!((code, reason.as_str()), (close_code::REVOKED, "revoked"));
        }
        other => panic!("dave must be refused, got {:?}", other.map(|c| c.peer().clone())),
    }
    // The refused never reach `accept`; a good member is served afterwards.
    let (mut client, mut server) = connect_pair(&mut h, "bob").await;
    client.send(encode_frame(&msg(1, 1), &SMALL).unwrap()).await.unwrap();
    assert!(server.recv().await.unwrap().is_some());
}

#[tokio::test]
async fn quic_admission_refusals() {
    admission_refusals(quic_harness()).await;
}

#[tokio::test]
async fn memory_admission_refusals() {
    admission_refusals(memory_harness()).await;
}

fn malformed_cases() -> Vec<(&'static str, Vec<u8>)> {
    let good = encode_frame(&msg(0, 100), &SMALL).unwrap();
    let mut wrong_version = good.clone();
    wrong_version[0] = PROTOCOL_VERSION.wrapping_add(1);
    let mut oversize = vec![PROTOCOL_VERSION];
    oversize.extend_from_slice(&(SMALL.max_frame_bytes as u32 + 1).to_le_bytes());
    oversize.extend_from_slice(&[0; 64]);
    let truncated = good[..good.len() / 2].to_vec();
    vec![("wrong version", wrong_version), ("oversize", oversize), ("truncated", truncated)]
}

async fn malformed_frames(mut h: Harness) {
    for (case, bytes) in malformed_cases() {
        let (mut client, mut server) = connect_pair(&mut h, "alice").await;
        client.sender_mut().send_unchecked(bytes).await.unwrap();
        // A truncated frame is only known to be truncated at end of stream.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.finish()).await;
        let err = server.recv().await.unwrap_err();
        let ok = match (case, &err) {
            ("wrong version", TransportError::Frame(CodecError::UnknownVersion { .. })) => true,
            ("oversize", TransportError::Frame(CodecError::Oversize { len, limit })) => *len == limit + 1,
            ("truncated", TransportError::Frame(CodecError::Truncated { .. })) => true,
            _ => false,
        };
        assert!(ok, "{case}: unexpected {err:?}");
        assert!(matches!(server.recv().await, Err(TransportError::Frame(_))), "{case}: stays failed");
        // The connection is closed for the sender too, with the reason.
        match tokio::time::timeout(Duration::from_secs(5), client.recv()).await.unwrap() {
            Err(TransportError::ClosedByPeer { code, .. }) => {
                assert_eq!(code, u64::from(close_code::MALFORMED_FRAME), "{case}")
            }
            other => panic!("{case}: client should see the close, got {other:?}"),
        }
    }
    // The listener keeps serving.
    let (mut client, mut server) = connect_pair(&mut h, "bob").await;
    client.send(encode_frame(&msg(2, 2), &SMALL).unwrap()).await.unwrap();
    assert_eq!(decode_payload::<ClientMsg>(&server.recv().await.unwrap().unwrap()).unwrap(), msg(2, 2));
}

#[tokio::test]
async fn quic_malformed_frames() {
    malformed_frames(quic_harness()).await;
}

#[tokio::test]
async fn memory_malformed_frames() {
    malformed_frames(memory_harness()).await;
}

async fn invalid_outgoing_is_not_sent(mut h: Harness) {
    let (mut client, mut server) = connect_pair(&mut h, "alice").await;
    let big = encode_frame(&msg(0, 20_000), &Limits::default()).unwrap();
    assert!(matches!(client.send(big).await, Err(TransportError::InvalidOutgoing(CodecError::Oversize { .. }))));
    assert!(matches!(client.send(vec![PROTOCOL_VERSION, 1]).await, Err(TransportError::InvalidOutgoing(_))));
    assert_eq!(client.traffic().bytes_sent(), 0);
    client.send(encode_frame(&msg(3, 3), &SMALL).unwrap()).await.unwrap();
    assert_eq!(decode_payload::<ClientMsg>(&server.recv().await.unwrap().unwrap()).unwrap(), msg(3, 3));
}

#[tokio::test]
async fn quic_invalid_outgoing() {
    invalid_outgoing_is_not_sent(quic_harness()).await;
}

#[tokio::test]
async fn memory_invalid_outgoing() {
    invalid_outgoing_is_not_sent(memory_harness()).await;
}

async fn close_with_reason(mut h: Harness) {
    let (mut client, server) = connect_pair(&mut h, "alice").await;
    server.close(close_code::NORMAL, "round over");
    match tokio::time::timeout(Duration::from_secs(5), client.recv()).await.unwrap() {
        Err(TransportError::ClosedByPeer { code: 0, reason }) => assert_eq!(reason, "round over"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(server.close_then_send().await, Err(TransportError::Closed)));
}

impl Connection {
    async fn close_then_send(mut self) -> Result<(), TransportError> {
        self.close(close_code::NORMAL, "again");
        self.send(encode_frame(&msg(0, 1), &SMALL).unwrap()).await
    }
}

#[tokio::test]
async fn quic_close_with_reason() {
    close_with_reason(quic_harness()).await;
}

#[tokio::test]
async fn memory_close_with_reason() {
    close_with_reason(memory_harness()).await;
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let dir = consortium();
    let rogue = tempfile::tempdir().unwrap();
    pki::init(rogue.path(), &InitOptions::default()).unwrap();
    pki::issue(rogue.path(), "alice").unwrap();
    let mut listener = listener_config(dir.path(), loopback()).listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();

    // Rogue alice trusts the real CA for the server, but her certificate is from another CA.
    let files = pki::member_files(rogue.path(), "alice");
    let mut cfg = QuicDialConfig::new(
        format!("localhost:{}", addr.port()),
        &dir.path().join(pki::CA_CERT),
        &files.cert,
        &files.key,
    )
    .unwrap();
    cfg.connect_timeout = Duration::from_secs(5);
    match connect(&cfg).await {
        Err(TransportError::Handshake(_)) => {}
        other => panic!("expected a handshake failure, got {:?}", other.map(|c| c.peer().clone())),
    }
    let (mut client, mut server) = {
        let c = connect(&dial_config(dir.path(), "alice", addr)).await.unwrap();
        (c, listener.accept().await.unwrap().1)
    };
    client.send(encode_frame(&msg(1, 1), &SMALL).unwrap()).await.unwrap();
    assert!(server.recv().await.unwrap().is_some());
}

#[tokio::test]
async fn client_refuses_aggregator_from_another_ca() {
    let dir = consortium();
    let rogue = tempfile::tempdir().unwrap();
    pki::init(rogue.path(), &InitOptions::default()).unwrap();
    let mut rogue_listener = listener_config(rogue.path(), loopback()).listen(Arc::new(AdmitAll)).unwrap();
    let addr = rogue_listener.local_addr().unwrap();
    match connect(&dial_config(dir.path(), "alice", addr)).await {
        Err(TransportError::Handshake(_)) => {}
        other => panic!("expected a handshake failure, got {:?}", other.map(|c| c.peer().clone())),
    }
    assert!(tokio::time::timeout(Duration::from_millis(200), rogue_listener.accept()).await.is_err());
}

#[tokio::test]
async fn aggregator_name_must_match() {
    let dir = consortium();
    let listener = listener_config(dir.path(), loopback()).listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = dial_config(dir.path(), "alice", addr);
    cfg.server_name = Some("elsewhere.example".into());
    assert!(matches!(connect(&cfg).await, Err(TransportError::Handshake(_))));
    // The IP SAN from `init` lets members dial by address too.
    let mut cfg = dial_config(dir.path(), "alice", addr);
    cfg.server = addr.to_string();
    connect(&cfg).await.unwrap();
}

#[tokio::test]
async fn connection_limit_refuses_extra_clients() {
    let dir = consortium();
    let mut cfg = listener_config(dir.path(), loopback());
    cfg.max_connections = 1;
    let mut listener = cfg.listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();
    let _first = connect(&dial_config(dir.path(), "alice", addr)).await.unwrap();
    let _accepted = listener.accept().await.unwrap();
    let err = connect(&dial_config(dir.path(), "bob", addr)).await.err().expect("second client refused");
    assert!(err.is_retryable(), "a busy aggregator is worth retrying: {err}");
}

#[tokio::test]
async fn stalled_handshake_times_out_without_blocking_others() {
    let dir = consortium();
    let mut cfg = listener_config(dir.path(), loopback());
    cfg.handshake_timeout = Duration::from_millis(300);
    let mut listener = cfg.listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();

    // A raw client that completes TLS but never opens its stream.
    let dial = dial_config(dir.path(), "alice", addr);
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let stalled = endpoint
        .connect_with(quinn::ClientConfig::new(dial.crypto_for_tests()), addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut client, mut server) = {
        let c = connect(&dial_config(dir.path(), "bob", addr)).await.unwrap();
        (c, listener.accept().await.unwrap().1)
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.closed()).await.unwrap();
    assert!(!matches!(closed, quinn::ConnectionError::LocallyClosed), "server dropped the stalled client");
    client.send(encode_frame(&msg(1, 1), &SMALL).unwrap()).await.unwrap();
    assert!(server.recv().await.unwrap().is_some());
}

/// Frames of up to 4 MiB, 64 MiB in all, intact and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_bulk_transfer() {
    let dir = consortium();
    let limits = Limits::default();
    let mut lcfg = listener_config(dir.path(), loopback());
    lcfg.limits = limits;
    let mut listener = lcfg.listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut dcfg = dial_config(dir.path(), "alice", addr);
    dcfg.limits = limits;
    let client = connect(&dcfg).await.unwrap();
    let (_, mut server) = listener.accept().await.unwrap();
    let (total, frame) = (64usize << 20, 4usize << 20);
    let (mut tx, _rx) = client.split();
    let traffic = tx.traffic();
    let sender = tokio::spawn(async move {
        for (i, (off, len)) in tessera_core::codec::chunk_ranges(total / 4, frame / 4).enumerate() {
            let values = (off as u32..(off + len) as u32).collect();
            tx.send(encode_frame(&ClientMsg::MaskedChunk { round: i as u64, offset: off as u64, values }, &limits).unwrap())
                .await
                .unwrap();
        }
        tx.finish().await.unwrap();
    });
    let mut values = 0usize;
    while let Some(p) = server.recv().await.unwrap() {
        let ClientMsg::MaskedChunk { offset, values: v, .. } = decode_payload(&p).unwrap() else { panic!("kind") };
        assert_eq!(offset as usize, values);
        assert!(v.iter().enumerate().all(|(i, x)| *x as usize == values + i));
        values += v.len();
    }
    sender.await.unwrap();
    assert_eq!(values * 4, total);
    assert_eq!(traffic.bytes_sent(), server.traffic().bytes_received());
    assert!(server.traffic().bytes_received() > total as u64);
}

#[tokio::test]
async fn memory_reconnect_with_backoff() {
    let net = MemoryNetwork::new();
    let policy = BackoffPolicy { initial: Duration::from_millis(20), max: Duration::from_millis(80), ..Default::default() };
    let dialer = Dialer::Memory { network: net.clone(), member: "alice".into() };
    let client = tokio::spawn(async move { connect_with_backoff(&dialer, &policy).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!client.is_finished(), "still retrying while nobody listens");
    let mut listener = net.listen(members(), SMALL).unwrap();
    let (peer, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.unwrap().unwrap();
    assert_eq!(peer.member, "alice");
    client.await.unwrap().unwrap();
}

#[tokio::test]
async fn quic_reconnect_with_backoff() {
    let dir = consortium();
    // Reserve a port, free it, and dial it before anything listens there.
    let addr = std::net::UdpSocket::bind(loopback()).unwrap().local_addr().unwrap();
    let mut dcfg = dial_config(dir.path(), "alice", addr);
    dcfg.connect_timeout = Duration::from_millis(300);
    let dialer = Dialer::Quic(Arc::new(dcfg));
    let policy = BackoffPolicy { initial: Duration::from_millis(50), max: Duration::from_millis(200), ..Default::default() };
    let t0 = Instant::now();
    let client = tokio::spawn(async move { connect_with_backoff(&dialer, &policy).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!client.is_finished(), "still retrying while nobody listens");
    let mut listener = listener_config(dir.path(), addr).listen(members()).unwrap();
    let (peer, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    assert_eq!(peer.member, "alice");
    client.await.unwrap().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn backoff_stops_on_permanent_errors_and_after_max_attempts() {
    let net = MemoryNetwork::new();
    let _listener = net.listen(members(), SMALL).unwrap();
    let policy = BackoffPolicy { initial: Duration::from_millis(1), max: Duration::from_millis(2), ..Default::default() };
    let carol = Dialer::Memory { network: net.clone(), member: "carol".into() };
    assert!(matches!(connect_with_backoff(&carol, &policy).await, Err(TransportError::Refused { .. })));
    net.shutdown();
    let limited = BackoffPolicy { max_attempts: Some(3), ..policy };
    let alice = Dialer::Memory { network: net.clone(), member: "alice".into() };
    assert!(matches!(connect_with_backoff(&alice, &limited).await, Err(TransportError::NoListener)));
}

#[tokio::test]
async fn memory_listener_restart() {
    let net = MemoryNetwork::new();
    let first = net.listen(members(), SMALL).unwrap();
    assert!(net.listen(members(), SMALL).is_err(), "one aggregator at a time");
    drop(first);
    let mut second = net.listen(members(), SMALL).unwrap();
    let _c = net.connect("alice").await.unwrap();
    assert_eq!(second.accept().await.unwrap().0.member, "alice");
    assert!(matches!(net.connect("Not Valid").await, Err(TransportError::Pki(_))));
}

mod pki_files {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let agg = pki::init(dir.path(), &InitOptions::default()).unwrap();
        assert_eq!(mode(&dir.path().join(pki::CA_KEY)), 0o600);
        assert_eq!(mode(&agg.key), 0o600);
        let alice = pki::issue(dir.path(), "alice").unwrap();
        assert_eq!(mode(&alice.key), 0o600);
        assert_eq!(pki::member_name(&pki::load_certs(&alice.cert).unwrap()[0]).unwrap(), "alice");

        let ca_before = std::fs::read(dir.path().join(pki::CA_CERT)).unwrap();
        assert!(matches!(pki::init(dir.path(), &InitOptions::default()), Err(pki::PkiError::CaExists(_))));
        assert_eq!(std::fs::read(dir.path().join(pki::CA_CERT)).unwrap(), ca_before);
        assert!(matches!(pki::issue(dir.path(), "alice"), Err(pki::PkiError::AlreadyExists(_))));
    }

    #[test]
    fn member_names_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        pki::init(dir.path(), &InitOptions::default()).unwrap();
        for bad in ["", "Alice", "a b", "../x", "-x", ".x", "ca", "aggregator", &"x".repeat(65), "é"] {
            assert!(matches!(pki::issue(dir.path(), bad), Err(pki::PkiError::InvalidName { .. })), "{bad:?}");
        }
        for good in ["hospital-7", "bank_2.eu", &"x".repeat(64)] {
            pki::issue(dir.path(), good).unwrap();
        }
    }

    #[test]
    fn issue_needs_a_ca_and_loaders_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(pki::issue(dir.path(), "alice"), Err(pki::PkiError::Missing(_))));
        pki::init(dir.path(), &InitOptions::default()).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        assert!(matches!(pki::load_certs(&junk), Err(pki::PkiError::NotPem { .. })));
        assert!(matches!(pki::load_key(&junk), Err(pki::PkiError::NotPem { .. })));
        // A certificate is not a key, and a key is not a certificate.
        assert!(matches!(pki::load_key(&dir.path().join(pki::CA_CERT)), Err(pki::PkiError::NotPem { .. })));
        assert!(matches!(pki::load_certs(&dir.path().join(pki::CA_KEY)), Err(pki::PkiError::NotPem { .. })));
        assert!(matches!(pki::load_certs(&dir.path().join("nope.pem")), Err(pki::PkiError::Missing(_))));
        let err = QuicDialConfig::from_pki_dir(dir.path(), "zed", "localhost:1").err().unwrap();
        assert!(err.to_string().contains("zed.pem"), "{err}");
    }

    #[test]
    fn aggregator_names_are_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions { aggregator_names: vec!["agg.consortium.example".into(), "10.1.2.3".into()], ..Default::default() };
        pki::init(dir.path(), &opts).unwrap();
        let bad = tempfile::tempdir().unwrap();
        let opts = InitOptions { aggregator_names: vec!["not a host".into()], ..Default::default() };
        assert!(matches!(pki::init(bad.path(), &opts), Err(pki::PkiError::InvalidHostname(_))));
    }
}

/// Throughput of QUIC against plain TCP on loopback; run with
/// `cargo test -p tessera-transport --release -- --ignored throughput --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_quic_vs_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (total, frame) = (256usize << 20, 4usize << 20);
    let limits = Limits::default();
    let payload = encode_frame(&vec![7u8; frame - 64], &limits).unwrap();

    let dir = consortium();
    let mut lcfg = listener_config(dir.path(), loopback());
    lcfg.limits = limits;
    let mut listener = lcfg.listen(members()).unwrap();
    let mut dcfg = dial_config(dir.path(), "alice", listener.local_addr().unwrap());
    dcfg.limits = limits;
    let mut client = connect(&dcfg).await.unwrap();
    let (_, mut server) = listener.accept().await.unwrap();
    let t = Instant::now();
    let p = payload.clone();
    let send = tokio::spawn(async move {
        for _ in 0..total / frame {
            client.send(p.clone()).await.unwrap();
        }
        client.finish().await.unwrap();
    });
    while server.recv().await.unwrap().is_some() {}
    send.await.unwrap();
    let quic = total as f64 / t.elapsed().as_secs_f64() / 1e6;

    let tcp = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let t = Instant::now();
    let p = payload.clone();
    let send = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..total / frame {
            s.write_all(&p).await.unwrap();
        }
    });
    let (mut s, _) = tcp.accept().await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while s.read(&mut buf).await.unwrap() > 0 {}
    send.await.unwrap();
    let tcp = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("QUIC {quic:.0} MB/s, TCP {tcp:.0} MB/s, ratio {:.2}", quic / tcp);
}
