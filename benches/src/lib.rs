//! Helpers shared by Tessera's benchmarks: a QUIC pair over loopback with
//! fresh certificates, and ([`secagg_round`]) secure-aggregation rounds
//! driven in memory. Figures and the commands that produced them are
//! recorded in `docs/benchmarks.md`. Nothing here is used outside benches.

pub mod secagg_round;

use std::sync::Arc;

use tessera_transport::{AdmitAll, Connection, QuicDialConfig, QuicListenerConfig, QuicTuning, connect, pki};

/// A connected (member, aggregator) QUIC pair on 127.0.0.1, plus the
/// temporary directory holding their certificates.
pub async fn quic_pair() -> (Connection, Connection, tempfile::TempDir) {
    quic_pair_with(QuicTuning::default()).await
}

/// [`quic_pair`] with the given QUIC tuning on both ends.
pub async fn quic_pair_with(tuning: QuicTuning) -> (Connection, Connection, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    pki::init(dir.path(), &Default::default()).expect("pki init");
    pki::issue(dir.path(), "bench-member").expect("pki issue");
    let mut lcfg =
        QuicListenerConfig::from_pki_dir(dir.path(), "127.0.0.1:0".parse().expect("addr")).expect("listener config");
    lcfg.tuning = tuning.clone();
    let mut listener = lcfg.listen(Arc::new(AdmitAll)).expect("listen");
    let addr = listener.local_addr().expect("bound").to_string();
    let mut dial = QuicDialConfig::from_pki_dir(dir.path(), "bench-member", addr).expect("dial config");
    dial.server_name = Some("localhost".into());
    dial.tuning = tuning;
    let (client, accepted) = tokio::join!(connect(&dial), listener.accept());
    let (_, server) = accepted.expect("accepted");
    tokio::spawn(async move { while listener.accept().await.is_some() {} });
    (client.expect("connected"), server, dir)
}
