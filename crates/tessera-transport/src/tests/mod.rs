//! Functional tests. Each behaviour is one body run over real QUIC on
//! loopback (certificates generated into a tempdir) and over the memory
//! transport, so the two cannot drift apart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tessera_core::{ClientMsg, CodecError, Limits, PROTOCOL_VERSION, encode_frame};

use crate::admission::MemberList;
use crate::pki::{self, InitOptions};
use crate::*;

mod handshakes;
mod pki_files;
mod quic_only;
mod values;

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
        assert_eq!(payload.decode::<ClientMsg>().unwrap(), msg(i, 100 * i as usize));
    }
    let reply = encode_frame(&msg(9, 3), &SMALL).unwrap();
    let down = reply.len() as u64;
    server.send(reply).await.unwrap();
    assert_eq!(client.recv().await.unwrap().unwrap().decode::<ClientMsg>().unwrap(), msg(9, 3));

    let (ct, st) = (client.traffic(), server.traffic());
    assert_eq!((ct.bytes_sent(), ct.bytes_received()), (up, down));
    assert_eq!((st.bytes_sent(), st.bytes_received()), (down, up));

    // Split halves work concurrently; finishing ends the peer's stream cleanly.
    let (mut ctx, mut crx) = client.split();
    let echo = tokio::spawn(async move {
        while let Some(p) = server.recv().await.unwrap() {
            let m: ClientMsg = p.decode().unwrap();
            server.send(encode_frame(&m, &SMALL).unwrap()).await.unwrap();
        }
        server.finish().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while let Some(p) = crx.recv().await.unwrap() {
            assert_eq!(p.decode::<ClientMsg>().unwrap(), msg(got, 50));
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
    assert_eq!(server.recv().await.unwrap().unwrap().decode::<ClientMsg>().unwrap(), msg(2, 2));
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
    assert_eq!(server.recv().await.unwrap().unwrap().decode::<ClientMsg>().unwrap(), msg(3, 3));
}

/// Racing `recv` against a short deadline must never lose or split a frame.
async fn recv_is_cancel_safe(mut h: Harness, limits: Limits, expect_race: bool) {
    let (client, mut server) = connect_pair(&mut h, "alice").await;
    let (mut tx, _rx) = client.split();
    let sender = tokio::spawn(async move {
        for i in 0..6 {
            let n = [3, 40_000, 1, 300_000, 17, 1_000_000][i as usize];
            tx.send(encode_frame(&msg(i, n), &limits).unwrap()).await.unwrap();
        }
        tx.finish().await.unwrap();
        tx
    });
    let (mut got, mut timeouts) = (0, 0);
    loop {
        match tokio::time::timeout(Duration::from_micros(200), server.recv()).await {
            Err(_) => timeouts += 1,
            Ok(r) => match r.unwrap() {
                Some(p) => {
                    let n = [3, 40_000, 1, 300_000, 17, 1_000_000][got as usize];
                    assert_eq!(p.decode::<ClientMsg>().unwrap(), msg(got, n));
                    got += 1;
                }
                None => break,
            },
        }
    }
    assert_eq!(got, 6);
    // Memory frames arrive whole, so only QUIC reliably cuts a frame in half.
    assert!(!expect_race || timeouts > 0, "the race was exercised");
    drop(sender.await.unwrap());
}

#[tokio::test]
async fn quic_recv_is_cancel_safe() {
    let dir = consortium();
    let limits = Limits::default();
    let mut cfg = listener_config(dir.path(), loopback());
    cfg.limits = limits;
    let listener = cfg.listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.path().to_path_buf();
    let dial = Box::new(move |m: &str| {
        let mut c = dial_config(&path, m, addr);
        c.limits = limits;
        Dialer::Quic(Arc::new(c))
    });
    recv_is_cancel_safe(Harness { listener, dial, _dir: Some(dir) }, limits, true).await;
}

#[tokio::test]
async fn memory_recv_is_cancel_safe() {
    let net = MemoryNetwork::new();
    let limits = Limits::default();
    let listener = net.listen(members(), limits).unwrap();
    let dial = Box::new(move |m: &str| Dialer::Memory { network: net.clone(), member: m.to_owned() });
    recv_is_cancel_safe(Harness { listener, dial, _dir: None }, limits, false).await;
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
async fn memory_reconnect_with_backoff() {
    let net = MemoryNetwork::new();
    let policy =
        BackoffPolicy { initial: Duration::from_millis(20), max: Duration::from_millis(80), ..Default::default() };
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
async fn backoff_stops_on_permanent_errors_and_after_max_attempts() {
    let net = MemoryNetwork::new();
    let _listener = net.listen(members(), SMALL).unwrap();
    let policy =
        BackoffPolicy { initial: Duration::from_millis(1), max: Duration::from_millis(2), ..Default::default() };
    let carol = Dialer::Memory { network: net.clone(), member: "carol".into() };
    assert!(matches!(connect_with_backoff(&carol, &policy).await, Err(TransportError::Refused { .. })));
    net.shutdown();
    let limited = BackoffPolicy { max_attempts: Some(3), ..policy };
    let alice = Dialer::Memory { network: net.clone(), member: "alice".into() };
    assert!(matches!(connect_with_backoff(&alice, &limited).await, Err(TransportError::NoListener)));
}

#[tokio::test]
async fn memory_flow_control_bounds_bytes_in_flight() {
    let net = MemoryNetwork::new();
    let limits = Limits::default();
    let mut listener = net.listen(members(), limits).unwrap();
    let mut client = net.connect("alice").await.unwrap();
    let (_, mut server) = listener.accept().await.unwrap();
    let frame = || encode_frame(&vec![1u8; 4 << 20], &limits).unwrap();
    let mut sent = 0;
    while tokio::time::timeout(Duration::from_millis(100), client.send(frame())).await.is_ok() {
        sent += 1;
        assert!(sent < 10, "the window never filled");
    }
    // 16 MiB of window holds three 4 MiB frames plus headers, not four.
    assert_eq!(sent, 3);
    server.recv().await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(1), client.send(frame())).await.unwrap().unwrap();
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

#[test]
fn listening_outside_a_runtime_is_an_error_not_a_panic() {
    let dir = consortium();
    let cfg = listener_config(dir.path(), loopback());
    assert!(matches!(cfg.listen(members()), Err(TransportError::Config(_))));
}
