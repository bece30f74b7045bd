//! QUIC-only behaviour: certificate trust, server names, connection limits,
//! handshake deadlines, bulk transfer, reconnect, and a throughput probe.

use super::*;

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
    // The member's message puts the fault on its own certificate, not on the
    // aggregator's.
    match connect(&cfg).await {
        Err(e @ TransportError::CertificateRefusedByPeer { peer: "aggregator", .. }) => {
            assert!(e.to_string().starts_with("the aggregator refused your certificate"), "{e}");
        }
        other => panic!("expected the aggregator to refuse the certificate, got {:?}", other.map(|c| c.peer().clone())),
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
    // The member's message puts the fault on the aggregator's certificate.
    match connect(&dial_config(dir.path(), "alice", addr)).await {
        Err(e @ TransportError::PeerCertificateRejected { peer: "aggregator", .. }) => {
            assert!(e.to_string().starts_with("the aggregator's certificate is not signed by your ca.pem"), "{e}");
        }
        other => {
            panic!("expected the aggregator's certificate to be rejected, got {:?}", other.map(|c| c.peer().clone()))
        }
    }
    assert!(tokio::time::timeout(Duration::from_millis(200), rogue_listener.accept()).await.is_err());
}

/// Certificates only work in their role: the aggregator's certificate is no
/// member credential, and a member's certificate cannot serve as aggregator.
#[tokio::test]
async fn certificates_are_bound_to_their_role() {
    let dir = consortium();
    let listener = listener_config(dir.path(), loopback()).listen(Arc::new(AdmitAll)).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = QuicDialConfig::new(
        format!("localhost:{}", addr.port()),
        &dir.path().join(pki::CA_CERT),
        &dir.path().join(pki::AGGREGATOR_CERT),
        &dir.path().join(pki::AGGREGATOR_KEY),
    )
    .unwrap();
    cfg.connect_timeout = Duration::from_secs(5);
    assert!(
        matches!(connect(&cfg).await, Err(TransportError::CertificateRefusedByPeer { .. })),
        "server cert used as client cert"
    );

    let alice = pki::member_files(dir.path(), "alice");
    let rogue = QuicListenerConfig::new(loopback(), &dir.path().join(pki::CA_CERT), &alice.cert, &alice.key)
        .unwrap()
        .listen(Arc::new(AdmitAll))
        .unwrap();
    let rogue_addr = rogue.local_addr().unwrap();
    for server_name in ["localhost", "alice"] {
        let mut cfg = dial_config(dir.path(), "bob", rogue_addr);
        cfg.server_name = Some(server_name.into());
        assert!(
            matches!(connect(&cfg).await, Err(TransportError::PeerCertificateRejected { .. })),
            "member cert accepted as aggregator for {server_name}"
        );
    }
}

#[tokio::test]
async fn aggregator_name_must_match() {
    let dir = consortium();
    let listener = listener_config(dir.path(), loopback()).listen(members()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = dial_config(dir.path(), "alice", addr);
    cfg.server_name = Some("elsewhere.example".into());
    let err = connect(&cfg).await.err().expect("a wrong server name is refused");
    assert!(err.to_string().contains("does not carry the name it was dialled by"), "{err}");
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
        for (i, (off, len)) in tessera_core::chunk_ranges(total / 4, frame / 4).enumerate() {
            let values = (off as u32..(off + len) as u32).collect();
            tx.send(
                encode_frame(&ClientMsg::MaskedChunk { round: i as u64, offset: off as u64, values }, &limits).unwrap(),
            )
            .await
            .unwrap();
        }
        tx.finish().await.unwrap();
    });
    let mut values = 0usize;
    while let Some(p) = server.recv().await.unwrap() {
        let ClientMsg::MaskedChunk { offset, values: v, .. } = p.decode().unwrap() else { panic!("kind") };
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
async fn quic_reconnect_with_backoff() {
    let dir = consortium();
    // Reserve a port, free it, and dial it before anything listens there.
    let addr = std::net::UdpSocket::bind(loopback()).unwrap().local_addr().unwrap();
    let mut dcfg = dial_config(dir.path(), "alice", addr);
    dcfg.connect_timeout = Duration::from_millis(300);
    let dialer = Dialer::Quic(Arc::new(dcfg));
    let policy =
        BackoffPolicy { initial: Duration::from_millis(50), max: Duration::from_millis(200), ..Default::default() };
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
    // Experiments: TESSERA_MTU overrides the discovery ceiling on both sides.
    let mut tuning = QuicTuning::default();
    if let Some(mtu) = std::env::var("TESSERA_MTU").ok().and_then(|v| v.parse().ok()) {
        tuning.mtu_upper_bound = mtu;
    }
    if let Some(mtu) = std::env::var("TESSERA_INITIAL_MTU").ok().and_then(|v| v.parse().ok()) {
        tuning.initial_mtu = mtu;
    }
    lcfg.tuning = tuning.clone();
    let mut listener = lcfg.listen(members()).unwrap();
    let mut dcfg = dial_config(dir.path(), "alice", listener.local_addr().unwrap());
    dcfg.limits = limits;
    dcfg.tuning = tuning;
    let mut client = connect(&dcfg).await.unwrap();
    let (_, mut server) = listener.accept().await.unwrap();
    let t = Instant::now();
    let p = payload.clone();
    let send = tokio::spawn(async move {
        for _ in 0..total / frame {
            client.send(p.clone()).await.unwrap();
        }
        client.finish().await.unwrap();
        client
    });
    while server.recv().await.unwrap().is_some() {}
    let client = send.await.unwrap();
    let path = client.quic_stats().unwrap().path;
    println!(
        "lost packets {}, congestion events {}, mtu {}, cwnd {}",
        path.lost_packets, path.congestion_events, path.current_mtu, path.cwnd
    );
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

/// Admission by certificate: the listener hands `admit_certificate` the
/// SHA-256 of the leaf the member presented, refuses that one certificate,
/// and admits the same name presenting another (a re-keyed member); the
/// admitted peer carries the fingerprint for later revocation.
#[tokio::test]
async fn one_certificate_is_refused_and_the_reissued_one_admitted() {
    struct RefuseCertificate(pki::CertFingerprint);
    impl Admission for RefuseCertificate {
        fn admit(&self, _member: &str) -> Result<(), Refusal> {
            panic!("the QUIC listener must judge the certificate, not only the name")
        }
        fn admit_certificate(&self, _member: &str, fp: &pki::CertFingerprint) -> Result<(), Refusal> {
            if *fp == self.0 { Err(Refusal::Revoked) } else { Ok(()) }
        }
    }
    let dir = consortium();
    let files = pki::member_files(dir.path(), "alice");
    let stolen = pki::CertFingerprint::of_pem_file(&files.cert).unwrap();
    let old = tempfile::tempdir().unwrap();
    for (from, to) in [(&files.cert, "alice.pem"), (&files.key, "alice.key")] {
        std::fs::rename(from, old.path().join(to)).unwrap();
    }
    pki::issue(dir.path(), "alice").unwrap();
    let reissued = pki::CertFingerprint::of_pem_file(&files.cert).unwrap();
    assert_ne!(stolen, reissued);

    let mut listener = listener_config(dir.path(), loopback()).listen(Arc::new(RefuseCertificate(stolen))).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut thief = QuicDialConfig::new(
        format!("localhost:{}", addr.port()),
        &dir.path().join(pki::CA_CERT),
        &old.path().join("alice.pem"),
        &old.path().join("alice.key"),
    )
    .unwrap();
    thief.connect_timeout = Duration::from_secs(5);
    match connect(&thief).await {
        Err(TransportError::Refused { code, .. }) => assert_eq!(code, close_code::REVOKED),
        other => panic!("the stolen certificate must be refused, got {:?}", other.map(|c| c.peer().clone())),
    }
    let _client = connect(&dial_config(dir.path(), "alice", addr)).await.unwrap();
    let (peer, _server) = listener.accept().await.unwrap();
    assert_eq!(peer, Peer { member: "alice".into(), certificate: Some(reissued) });
}
