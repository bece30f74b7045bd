//! QUIC with mutual TLS. Both sides pin the consortium CA as the only root;
//! the server requires a client certificate, then asks [`Admission`] about
//! the name in it. A tiny stream setup (client preamble, server ack) lets
//! `connect` return only once the member is admitted, so a refusal surfaces
//! as [`TransportError::Refused`] right at the dial site.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, IdleTimeout, MtuDiscoveryConfig, TransportConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tessera_core::Limits;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::connection::{Connection, Listener};
use crate::error::{TransportError, close_code, from_quinn};
use crate::peer::Peer;
use crate::pki;
use crate::udp::GsoCappedSocket;

mod stream;
pub(crate) use stream::{QuicReceiver, finish, write_frame, write_parts};
use stream::{read_exact_err, write_err};

/// ALPN protocol id; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"tessera/1";
/// First bytes on the client's stream; makes the stream visible to the server.
const PREAMBLE: &[u8; 4] = b"TSR1";
/// The server's one-byte answer once the member is admitted.
const ADMITTED: u8 = 0xA5;
/// Admitted connections waiting for `accept`.
const ACCEPT_QUEUE: usize = 64;
/// Handshakes under way at once unless configured otherwise
/// ([`QuicListenerConfig::max_handshakes`]).
pub const DEFAULT_MAX_HANDSHAKES: usize = 128;

/// QUIC transport parameters. Defaults favour bulk transfer of multi-MiB
/// frames (measured in `docs/benchmarks.md`, "Transport"):
///
/// - MTU discovery may go up to 65,000-byte datagrams. Larger packets cut
///   the per-packet cost (AEAD call, packet assembly, syscall) that bounds
///   a QUIC connection: on loopback 1.0-1.7 GB/s at 65,000 against
///   0.7-1.1 GB/s at 6,000 and ~0.2 GB/s at 1,452. Paths with a smaller MTU
///   just stay lower: a probe the kernel or the path refuses counts as lost.
///   quinn 0.11 does not keep a GSO batch under the 64 KiB UDP limit, so
///   the socket under it splits such batches (`udp::GsoCappedSocket`).
/// - Flow-control windows stay below the UDP receive buffer we ask for: a
///   window larger than the buffer lets a burst overflow it whenever the
///   receiver is descheduled, and the loss collapses the congestion window.
///   6 MiB per round trip is ~1 Gbit/s at 50 ms; raise the windows together
///   with `socket_buffer` (and the kernel's `net.core.rmem_max`) for longer,
///   fatter paths.
#[derive(Clone, Debug)]
pub struct QuicTuning {
    /// Bytes the peer may send on the one stream ahead of our reads (4 MiB).
    pub stream_receive_window: u32,
    /// Bytes the peer may send on the whole connection ahead of our reads (6 MiB).
    pub receive_window: u32,
    /// Bytes we keep unacknowledged in flight (6 MiB).
    pub send_window: u64,
    /// A connection silent this long is dropped (30 s).
    pub idle_timeout: Duration,
    /// Ping interval that keeps an idle but healthy connection alive (5 s);
    /// must stay below `idle_timeout`.
    pub keep_alive: Duration,
    /// UDP payload size used before MTU discovery (1,200 bytes, QUIC's minimum).
    pub initial_mtu: u16,
    /// Largest UDP payload MTU discovery may probe for; paths that drop
    /// large datagrams simply stay at the lower size. At most 65,507.
    pub mtu_upper_bound: u16,
    /// Requested UDP socket send and receive buffers. Bursts of a large
    /// window overflow the kernel's small default and read as loss, which
    /// collapses the congestion window. The kernel caps this (rmem_max).
    pub socket_buffer: usize,
}

impl Default for QuicTuning {
    fn default() -> Self {
        Self {
            stream_receive_window: 4 << 20,
            receive_window: 6 << 20,
            send_window: 6 << 20,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            initial_mtu: 1200,
            mtu_upper_bound: 65_000,
            socket_buffer: 8 << 20,
        }
    }
}

impl QuicTuning {
    fn transport(&self, peer_may_open_streams: u32) -> Result<TransportConfig, TransportError> {
        let mut t = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.idle_timeout).map_err(|e| TransportError::Config(e.to_string()))?;
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(self.mtu_upper_bound.max(self.initial_mtu));
        // RFC 9002's initial window, min(10, max(2, 14720 / size)) datagrams,
        // taken at the largest datagram discovery may reach. quinn fixes it at
        // 14,720 bytes whatever the MTU becomes: one large MTU probe in flight
        // then fills the window, and a connection closed meanwhile may never
        // get its CONNECTION_CLOSE out (its peer later sees a stateless reset).
        let size = u64::from(self.mtu_upper_bound.max(self.initial_mtu));
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window((2 * size).clamp(14_720, 10 * size));
        t.max_concurrent_bidi_streams(peer_may_open_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.receive_window.into())
            .send_window(self.send_window)
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .initial_mtu(self.initial_mtu)
            .mtu_discovery_config(Some(mtu))
            .congestion_controller_factory(Arc::new(cubic));
        Ok(t)
    }
}

/// Bind a UDP socket with the tuned buffer sizes and wrap it in an endpoint.
fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    tuning: &QuicTuning,
) -> Result<Endpoint, TransportError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|detail| TransportError::Bind { addr, detail })?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: an unprivileged process may get less than it asked for.
    for (what, r) in [
        ("receive", state.set_recv_buffer_size((&socket).into(), tuning.socket_buffer)),
        ("send", state.set_send_buffer_size((&socket).into(), tuning.socket_buffer)),
    ] {
        if let Err(e) = r {
            debug!(%e, what, "could not size the UDP socket buffer");
        }
    }
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransportError::Config("QUIC needs a tokio runtime".into()))?;
    // Accept datagrams as large as discovery may settle on (64 KiB loopback, jumbo frames).
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(tuning.mtu_upper_bound.clamp(1200, 65_527))
        .map_err(|e| TransportError::Config(format!("max UDP payload: {e}")))?;
    let mut socket = GsoCappedSocket::new(runtime.wrap_udp_socket(socket)?);
    if server.is_some() {
        // One buffer per connection, as large as its largest batch: keep
        // it small on the side that holds thousands of them (`udp`).
        socket = socket.with_batch_limit(usize::from(tuning.mtu_upper_bound.max(tuning.initial_mtu)));
    } else {
        // A member's endpoint serves one connection: one datagram per
        // receive call keeps all but one of quinn's 32 receive slots
        // untouched (`udp`), which matters where one process hosts many.
        socket = socket.with_recv_batch_limit(1);
    }
    let socket = Arc::new(socket);
    Ok(Endpoint::new_with_abstract_socket(config, server, socket, runtime)?)
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, so feature unification elsewhere in the workspace cannot
    // change which provider (or whether a process default) is used.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(|e| TransportError::Config(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn tls_err(e: rustls::Error) -> TransportError {
    TransportError::Config(format!("TLS: {e}"))
}

/// Aggregator-side settings.
#[derive(Clone)]
pub struct QuicListenerConfig {
    /// UDP address to listen on.
    pub bind: SocketAddr,
    /// Connections (handshaking or established) beyond this are refused.
    pub max_connections: usize,
    /// Handshake, admission and stream setup must finish within this.
    pub handshake_timeout: Duration,
    /// Handshakes (TLS, admission, stream setup) under way at once; a dial
    /// beyond them waits its turn, in arrival order, for at most half of
    /// `handshake_timeout`, and is then refused (members retry with
    /// backoff). Without a cap a burst of dials (every member reconnecting
    /// after a restart) starts every handshake at once, the CPU is shared
    /// among all of them, and most run past `handshake_timeout` with their
    /// work wasted: 15,498 timeouts for 10,000 members in
    /// docs/benchmarks.md, "Load: the aggregator daemon at 10,000
    /// members". Capped, the excess queues, or is refused before any TLS
    /// work is spent on it (1,445 timeouts for 10,000 with the default,
    /// same document). At least 1.
    pub max_handshakes: usize,
    /// Frame size limits; a larger frame closes the connection.
    pub limits: Limits,
    /// QUIC transport parameters.
    pub tuning: QuicTuning,
    crypto: Arc<QuicServerConfig>,
}

impl QuicListenerConfig {
    /// Build from PEM files: the consortium CA, the aggregator's chain and key.
    pub fn new(bind: SocketAddr, ca: &Path, cert: &Path, key: &Path) -> Result<Self, TransportError> {
        Self::from_der(bind, &pki::load_certs(ca)?, pki::load_certs(cert)?, pki::load_key(key)?)
    }

    /// Build from a directory laid out by [`pki::init`].
    pub fn from_pki_dir(dir: &Path, bind: SocketAddr) -> Result<Self, TransportError> {
        Self::new(bind, &dir.join(pki::CA_CERT), &dir.join(pki::AGGREGATOR_CERT), &dir.join(pki::AGGREGATOR_KEY))
    }

    /// Build from certificates already in memory (DER): the CA(s) clients
    /// must chain to, the aggregator's chain and its key. TLS 1.3 only.
    pub fn from_der(
        bind: SocketAddr,
        ca: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TransportError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
            .build()
            .map_err(|e| TransportError::Config(format!("client verifier: {e}")))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
        Ok(Self {
            bind,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            limits: Limits::default(),
            tuning: QuicTuning::default(),
            crypto: Arc::new(crypto),
        })
    }

    /// Bind and start accepting in the background (needs a tokio runtime).
    pub fn listen(&self, admission: Arc<dyn Admission>) -> Result<Listener, TransportError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| TransportError::Config("listening needs a tokio runtime".into()))?;
        let mut server = quinn::ServerConfig::with_crypto(self.crypto.clone());
        server.transport_config(Arc::new(self.tuning.transport(1)?));
        let endpoint = endpoint(self.bind, Some(server), &self.tuning)?;
        let local = endpoint.local_addr().ok();
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let settings = Arc::new(AcceptSettings {
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            handshakes: Arc::new(Semaphore::new(self.max_handshakes.max(1))),
            limits: self.limits,
            admission,
        });
        runtime.spawn(accept_loop(endpoint.clone(), settings, tx));
        match local {
            Some(addr) => info!(%addr, "listening for members"),
            None => info!("listening for members"),
        }
        Ok(Listener::from_quic(QuicListener { endpoint, rx }))
    }
}

impl std::fmt::Debug for QuicListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicListenerConfig")
            .field("bind", &self.bind)
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("limits", &self.limits)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

pub(crate) struct QuicListener {
    endpoint: Endpoint,
    rx: mpsc::Receiver<Connection>,
}

impl QuicListener {
    pub(crate) async fn accept(&mut self) -> Option<Connection> {
        self.rx.recv().await
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }
}

struct AcceptSettings {
    max_connections: usize,
    handshake_timeout: Duration,
    /// One permit per handshake under way (`max_handshakes`).
    handshakes: Arc<Semaphore>,
    limits: Limits,
    admission: Arc<dyn Admission>,
}

async fn accept_loop(endpoint: Endpoint, settings: Arc<AcceptSettings>, tx: mpsc::Sender<Connection>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            // The Listener was dropped: stop accepting; live connections keep going.
            _ = tx.closed() => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        if endpoint.open_connections() >= settings.max_connections {
            warn!(%remote, limit = settings.max_connections, "connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        let settings = settings.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            // Tokio's semaphore is fair: dials take their turns in arrival order.
            let wait = settings.handshake_timeout / 2;
            let Ok(Ok(permit)) = tokio::time::timeout(wait, settings.handshakes.clone().acquire_owned()).await else {
                warn!(%remote, waited = ?wait, "too many handshakes under way; refusing");
                incoming.refuse();
                return;
            };
            let admitted = tokio::time::timeout(settings.handshake_timeout, admit(incoming, &settings)).await;
            // The handshake is over: the next dial may start its own.
            drop(permit);
            match admitted {
                Ok(Ok(conn)) => {
                    if let Err(mpsc::error::SendError(conn)) = tx.send(conn).await {
                        conn.close(close_code::NORMAL, "aggregator shutting down");
                    }
                }
                // Admission refusals were logged with the member's name already.
                Ok(Err(TransportError::Refused { .. })) => {}
                Ok(Err(e)) => warn!(%remote, error = %e, "connection not admitted"),
                // Dropping the half-open connection closes it.
                Err(_) => warn!(%remote, after = ?settings.handshake_timeout, "handshake timed out"),
            }
        });
    }
    // Nobody will accept any more: turn new handshakes away at once.
    endpoint.set_server_config(None);
    debug!("accept loop ended");
}

/// Handshake, identify, admit, set up the stream.
async fn admit(incoming: quinn::Incoming, settings: &AcceptSettings) -> Result<Connection, TransportError> {
    let member_side = |e| from_quinn(e).naming_peer("member");
    let conn = incoming.accept().map_err(member_side)?.await.map_err(member_side)?;
    let (member, fingerprint) = match peer_member(&conn) {
        Ok(m) => m,
        Err(e) => {
            conn.close(close_code::REFUSED.into(), b"unusable certificate identity");
            return Err(e);
        }
    };
    // The caller may consult a database: keep it off the async workers.
    let admission = settings.admission.clone();
    let name = member.clone();
    let verdict = tokio::task::spawn_blocking(move || admission.admit_certificate(&name, &fingerprint))
        .await
        .unwrap_or_else(|_| Err(Refusal::Other("admission check failed".into())));
    if let Err(refusal) = verdict {
        info!(%member, reason = %refusal.reason(), "member refused");
        conn.close(refusal.code().into(), refusal.reason().as_bytes());
        return Err(TransportError::Refused { code: refusal.code(), reason: refusal.reason().to_owned() });
    }
    let (mut send, mut recv) = conn.accept_bi().await.map_err(from_quinn)?;
    let mut preamble = [0u8; PREAMBLE.len()];
    recv.read_exact(&mut preamble).await.map_err(read_exact_err)?;
    if &preamble != PREAMBLE {
        conn.close(close_code::PROTOCOL.into(), b"bad stream preamble");
        return Err(TransportError::Lost("bad stream preamble".into()));
    }
    send.write_all(&[ADMITTED]).await.map_err(write_err)?;
    info!(%member, remote = %conn.remote_address(), "member connected");
    let peer = Peer { member, certificate: Some(fingerprint) };
    Ok(Connection::new_quic(peer, conn.clone(), None, send, recv, settings.limits))
}

/// The member name the client's leaf certificate proves, and that
/// certificate's fingerprint.
fn peer_member(conn: &quinn::Connection) -> Result<(String, pki::CertFingerprint), TransportError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| TransportError::Handshake("no client certificate".into()))?;
    let leaf = certs.first().ok_or_else(|| TransportError::Handshake("empty client certificate chain".into()))?;
    Ok((pki::member_name(leaf)?, pki::CertFingerprint::of_der(leaf.as_ref())))
}

/// Member-side settings.
#[derive(Clone)]
pub struct QuicDialConfig {
    /// `host:port` of the aggregator.
    pub server: String,
    /// Name the aggregator's certificate must carry; defaults to the host
    /// part of `server`.
    pub server_name: Option<String>,
    /// Resolution, handshake, admission and stream setup must finish within this.
    pub connect_timeout: Duration,
    /// Frame size limits; a larger frame closes the connection.
    pub limits: Limits,
    /// QUIC transport parameters.
    pub tuning: QuicTuning,
    crypto: Arc<QuicClientConfig>,
}

impl QuicDialConfig {
    /// Build from PEM files: the consortium CA, the member's chain and key.
    pub fn new(server: impl Into<String>, ca: &Path, cert: &Path, key: &Path) -> Result<Self, TransportError> {
        Self::from_der(server, &pki::load_certs(ca)?, pki::load_certs(cert)?, pki::load_key(key)?)
    }

    /// Build from a directory holding `ca.pem`, `<member>.pem`, `<member>.key`.
    pub fn from_pki_dir(dir: &Path, member: &str, server: impl Into<String>) -> Result<Self, TransportError> {
        let files = pki::member_files(dir, member);
        Self::new(server, &dir.join(pki::CA_CERT), &files.cert, &files.key)
    }

    /// Build from certificates already in memory (DER): the consortium CA
    /// (the only trusted root), the member's chain and its key. TLS 1.3 only.
    pub fn from_der(
        server: impl Into<String>,
        ca: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TransportError> {
        // Only the consortium CA is trusted: no system roots, no platform verifier.
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
        Ok(Self {
            server: server.into(),
            server_name: None,
            connect_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            tuning: QuicTuning::default(),
            crypto: Arc::new(crypto),
        })
    }
}

impl std::fmt::Debug for QuicDialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicDialConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("limits", &self.limits)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl QuicDialConfig {
    pub(crate) fn crypto_for_tests(&self) -> Arc<QuicClientConfig> {
        self.crypto.clone()
    }
}

/// Host part of `host:port`, without IPv6 brackets.
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Dial the aggregator once: returns after the member has been admitted.
pub async fn connect(cfg: &QuicDialConfig) -> Result<Connection, TransportError> {
    tokio::time::timeout(cfg.connect_timeout, connect_inner(cfg))
        .await
        .map_err(|_| TransportError::Timeout { what: "connecting to the aggregator", after: cfg.connect_timeout })?
        .map_err(|e| e.naming_peer("aggregator"))
}

async fn connect_inner(cfg: &QuicDialConfig) -> Result<Connection, TransportError> {
    let addr = tokio::net::lookup_host(&cfg.server)
        .await
        .map_err(|e| TransportError::Resolve { addr: cfg.server.clone(), detail: e.to_string() })?
        .next()
        .ok_or_else(|| TransportError::Resolve { addr: cfg.server.clone(), detail: "no addresses".into() })?;
    let name = cfg.server_name.clone().unwrap_or_else(|| host_of(&cfg.server).to_owned());
    ServerName::try_from(name.as_str()).map_err(|_| TransportError::Config(format!("invalid server name {name:?}")))?;
    let bind = if addr.is_ipv6() {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let endpoint = endpoint(bind, None, &cfg.tuning)?;
    let mut client = quinn::ClientConfig::new(cfg.crypto.clone());
    client.transport_config(Arc::new(cfg.tuning.transport(0)?));
    let conn = endpoint
        .connect_with(client, addr, &name)
        .map_err(|e| TransportError::Config(e.to_string()))?
        .await
        .map_err(from_quinn)?;
    // In TLS 1.3 the server judges our certificate after we consider the
    // handshake done, so a rejection arrives while setting up the stream.
    let (mut send, mut recv) = conn.open_bi().await.map_err(from_quinn)?;
    send.write_all(PREAMBLE).await.map_err(write_err)?;
    let mut ack = [0u8; 1];
    recv.read_exact(&mut ack).await.map_err(read_exact_err)?;
    if ack[0] != ADMITTED {
        conn.close(close_code::PROTOCOL.into(), b"bad admission ack");
        return Err(TransportError::Lost("bad admission ack".into()));
    }
    debug!(server = %cfg.server, "connected to the aggregator");
    Ok(Connection::new_quic(Peer::named(Peer::AGGREGATOR), conn, Some(endpoint), send, recv, cfg.limits))
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_part() {
        assert_eq!(host_of("localhost:4433"), "localhost");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4433"), "::1");
        assert_eq!(host_of("agg.example"), "agg.example");
    }
}
