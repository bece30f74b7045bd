//! A member connection below the frame API, for attacks that the
//! transport's own sender refuses to produce (a frame header announcing more
//! than follows, then silence). It does the same TLS handshake and stream
//! setup as `tessera_transport::connect` (ALPN, client certificate, the
//! 4-byte preamble and the one-byte admission answer) and then hands out the
//! raw QUIC stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use tessera_transport::pki;

/// The stream-setup bytes of `tessera-transport` (client preamble, admission ack).
const PREAMBLE: &[u8; 4] = b"TSR1";
const ADMITTED: u8 = 0xA5;

pub struct RawConnection {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// Keeps the client socket alive.
    _endpoint: quinn::Endpoint,
}

/// Dial `addr` as `member` of the consortium in `pki_dir` and set up the
/// stream; returns once admitted.
pub async fn raw_connect(pki_dir: &Path, member: &str, addr: SocketAddr) -> anyhow::Result<RawConnection> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::load_certs(&pki_dir.join(pki::CA_CERT))? {
        roots.add(c)?;
    }
    let files = pki::member_files(pki_dir, member);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(pki::load_certs(&files.cert)?, pki::load_key(&files.key)?)?;
    tls.alpn_protocols = vec![tessera_transport::ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client);
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(PREAMBLE).await?;
    let mut ack = [0u8; 1];
    recv.read_exact(&mut ack).await?;
    anyhow::ensure!(ack[0] == ADMITTED, "not admitted");
    Ok(RawConnection { conn, send, recv, _endpoint: endpoint })
}
