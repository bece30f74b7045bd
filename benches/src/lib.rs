//! Helpers shared by Tessera's criterion benchmarks: a QUIC pair over
//! loopback with fresh certificates, and a TCP pair for the side-by-side
//! baseline. Figures and the commands that produced them are recorded in
//! `docs/benchmarks.md`.

use std::sync::Arc;

use tessera_transport::{AdmitAll, Connection, QuicDialConfig, QuicListenerConfig, connect, pki};

/// A connected (member, aggregator) QUIC pair on 127.0.0.1, plus the
/// temporary directory holding their certificates.
pub async fn quic_pair() -> (Connection, Connection, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    pki::init(dir.path(), &Default::default()).expect("pki init");
    pki::issue(dir.path(), "bench-member").expect("pki issue");
    let mut listener = QuicListenerConfig::from_pki_dir(dir.path(), "127.0.0.1:0".parse().expect("addr"))
        .expect("listener config")
        .listen(Arc::new(AdmitAll))
        .expect("listen");
    let addr = listener.local_addr().expect("bound").to_string();
    let mut dial = QuicDialConfig::from_pki_dir(dir.path(), "bench-member", addr).expect("dial config");
    dial.server_name = Some("localhost".into());
    let (client, accepted) = tokio::join!(connect(&dial), listener.accept());
    let (_, server) = accepted.expect("accepted");
    tokio::spawn(async move { while listener.accept().await.is_some() {} });
    (client.expect("connected"), server, dir)
}
