//! The transport-neutral interface both drivers use: a [`Listener`] on the
//! aggregator side, a [`Dialer`] on the member side, and a [`Connection`]
//! that sends and receives whole frames. Each type dispatches to QUIC or to
//! the in-memory transport; callers never see which.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tessera_core::{FrameParts, Limits, Payload};

use crate::error::TransportError;
use crate::frame::{check_frame, check_frame_parts};
use crate::memory::{self, MemoryListener, MemoryNetwork};
use crate::peer::Peer;
use crate::quic::{self, QuicDialConfig};

/// Frame bytes (headers included) sent and received on one connection. A
/// cheap clone that stays readable after the connection is gone.
#[derive(Clone, Debug, Default)]
pub struct Traffic(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Traffic {
    /// Frame bytes sent so far, headers included.
    pub fn bytes_sent(&self) -> u64 {
        self.0.sent.load(Ordering::Relaxed)
    }

    /// Frame bytes received so far, headers included.
    pub fn bytes_received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }

    pub(crate) fn add_sent(&self, n: usize) {
        self.0.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_received(&self, n: usize) {
        self.0.received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Closes the whole connection from either half. A dialled QUIC
/// connection also holds its own endpoint (one per dial), so that a
/// graceful close can wait until the close has actually left.
#[derive(Clone)]
pub(crate) enum Control {
    Quic(quinn::Connection, Option<quinn::Endpoint>),
    Memory(memory::LinkEnd),
}

impl Control {
    pub(crate) fn close(&self, code: u32, reason: &str) {
        match self {
            Control::Quic(c, _) => c.close(code.into(), reason.as_bytes()),
            Control::Memory(l) => l.close(code, reason),
        }
    }

    /// Close, then wait (at most `within`) until the dialled endpoint is
    /// idle: the close has been sent and its draining period is over.
    async fn close_and_flush(&self, code: u32, reason: &str, within: std::time::Duration) {
        self.close(code, reason);
        if let Control::Quic(_, Some(endpoint)) = self {
            let _ = tokio::time::timeout(within, endpoint.wait_idle()).await;
        }
    }
}

enum SenderInner {
    Quic(quinn::SendStream),
    Memory(memory::MemorySender),
}

/// Sending half of a connection.
pub struct FrameSender {
    inner: SenderInner,
    control: Control,
    traffic: Traffic,
    limits: Limits,
}

impl FrameSender {
    /// Send one complete frame as produced by `tessera_core::encode_frame`.
    /// The frame is checked against the limits first, so a local bug cannot
    /// get this member disconnected. The buffer is handed over without a copy.
    ///
    /// Not cancel-safe on QUIC: a send dropped mid-frame leaves half a frame
    /// on the stream, so abandon the connection (close it) if you abandon a
    /// send. Run sends in their own task rather than racing them.
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        check_frame(&frame, &self.limits).map_err(TransportError::InvalidOutgoing)?;
        self.send_unchecked(frame).await
    }

    /// Send one complete frame given in pieces, as
    /// [`AggregatorMsg::encode_frame_parts`](tessera_core::AggregatorMsg::encode_frame_parts)
    /// builds it: on QUIC the pieces are queued as they are, so a piece
    /// shared by many connections (a list every member is sent) is held
    /// once, however many connections have it in flight. Checked against
    /// the limits first, as [`Self::send`] checks a frame. Not cancel-safe,
    /// as `send`.
    pub async fn send_parts(&mut self, frame: FrameParts) -> Result<(), TransportError> {
        check_frame_parts(&frame, &self.limits).map_err(TransportError::InvalidOutgoing)?;
        let n = frame.len();
        match &mut self.inner {
            SenderInner::Quic(s) => quic::write_parts(s, frame.into_parts()).await?,
            SenderInner::Memory(s) => s.send(frame.to_vec()).await?,
        }
        self.traffic.add_sent(n);
        Ok(())
    }

    /// Whether [`Self::send_value`] is available: on the in-memory
    /// transport only, where both ends live in one process.
    pub fn carries_values(&self) -> bool {
        matches!(self.inner, SenderInner::Memory(_))
    }

    /// Hand `value` (a message) to the peer as it is, in place of its frame
    /// of `frame_len` bytes (header included), which the byte counters and
    /// the flow-control window count as if it had been sent; the peer's
    /// [`Payload::decode`] returns a clone of it. Only the in-memory
    /// transport carries values ([`Self::carries_values`]); QUIC refuses
    /// with [`TransportError::Config`]. A frame length over the limits is
    /// refused here, as [`Self::send`] refuses such a frame.
    pub async fn send_value(
        &mut self,
        value: Arc<dyn std::any::Any + Send + Sync>,
        frame_len: usize,
    ) -> Result<(), TransportError> {
        let payload = frame_len.saturating_sub(tessera_core::HEADER_LEN);
        if payload > self.limits.max_frame_bytes {
            let e = tessera_core::CodecError::Oversize { len: payload, limit: self.limits.max_frame_bytes };
            return Err(TransportError::InvalidOutgoing(e));
        }
        match &mut self.inner {
            SenderInner::Quic(_) => return Err(TransportError::Config("QUIC carries frames, not values".into())),
            SenderInner::Memory(s) => s.send_value(value, frame_len).await?,
        }
        self.traffic.add_sent(frame_len);
        Ok(())
    }

    pub(crate) async fn send_unchecked(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        let n = frame.len();
        match &mut self.inner {
            SenderInner::Quic(s) => quic::write_frame(s, frame).await?,
            SenderInner::Memory(s) => s.send(frame).await?,
        }
        self.traffic.add_sent(n);
        Ok(())
    }

    /// Signal that no more frames follow and wait until the peer has
    /// received everything sent so far. The peer's `recv` then yields `None`.
    pub async fn finish(&mut self) -> Result<(), TransportError> {
        match &mut self.inner {
            SenderInner::Quic(s) => quic::finish(s).await,
            SenderInner::Memory(s) => s.finish().await,
        }
    }

    /// Close the whole connection at once; unsent data is discarded.
    pub fn close(&self, code: u32, reason: &str) {
        self.control.close(code, reason);
    }

    /// Close the whole connection and wait, at most `within`, until the
    /// close has left this host: on a dialled QUIC connection, until its
    /// endpoint is idle (quinn's `Endpoint::wait_idle`). A process that
    /// exits right after a plain [`FrameSender::close`] may never send the
    /// close, and the peer then notices only at its idle timeout; after
    /// this it hears of the close within a round trip. Unsent data is
    /// discarded, as with `close`.
    pub async fn close_gracefully(&self, code: u32, reason: &str, within: std::time::Duration) {
        self.control.close_and_flush(code, reason, within).await;
    }

    /// This connection's byte counters (shared with the receiving half).
    pub fn traffic(&self) -> Traffic {
        self.traffic.clone()
    }
}

enum ReceiverInner {
    Quic(quic::QuicReceiver),
    Memory(memory::MemoryReceiver),
}

/// Receiving half of a connection.
pub struct FrameReceiver {
    inner: ReceiverInner,
    control: Control,
    traffic: Traffic,
}

impl FrameReceiver {
    /// The next frame's payload (header stripped), in the buffers it arrived
    /// in; [`Payload::decode`] reads the message. `Ok(None)` means the peer
    /// finished cleanly. A malformed, oversize or truncated frame closes the
    /// connection and returns [`TransportError::Frame`], now and on every
    /// later call. Cancel-safe: it may be raced against a deadline in
    /// `tokio::select!` without losing or splitting frames.
    pub async fn recv(&mut self) -> Result<Option<Payload>, TransportError> {
        let payload = match &mut self.inner {
            ReceiverInner::Quic(r) => r.recv().await?,
            ReceiverInner::Memory(r) => r.recv().await?,
        };
        if let Some(p) = &payload {
            self.traffic.add_received(p.len() + tessera_core::HEADER_LEN);
        }
        Ok(payload)
    }

    /// Close the whole connection at once.
    pub fn close(&self, code: u32, reason: &str) {
        self.control.close(code, reason);
    }

    /// This connection's byte counters (shared with the sending half).
    pub fn traffic(&self) -> Traffic {
        self.traffic.clone()
    }
}

/// One member's connection: a frame stream in each direction.
pub struct Connection {
    peer: Peer,
    remote_addr: Option<SocketAddr>,
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl Connection {
    /// `endpoint`: the connection's own endpoint when it was dialled (the
    /// listener's endpoint is shared by every member and is not passed).
    pub(crate) fn new_quic(
        peer: Peer,
        conn: quinn::Connection,
        endpoint: Option<quinn::Endpoint>,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        limits: Limits,
    ) -> Self {
        let traffic = Traffic::default();
        let control = Control::Quic(conn.clone(), endpoint);
        let remote_addr = Some(conn.remote_address());
        Connection {
            peer,
            remote_addr,
            sender: FrameSender {
                inner: SenderInner::Quic(send),
                control: control.clone(),
                traffic: traffic.clone(),
                limits,
            },
            receiver: FrameReceiver {
                inner: ReceiverInner::Quic(quic::QuicReceiver::new(recv, conn, limits)),
                control,
                traffic,
            },
        }
    }

    pub(crate) fn new_memory(
        peer: Peer,
        sender: memory::MemorySender,
        receiver: memory::MemoryReceiver,
        link: memory::LinkEnd,
        limits: Limits,
    ) -> Self {
        let traffic = Traffic::default();
        let control = Control::Memory(link);
        Connection {
            peer,
            remote_addr: None,
            sender: FrameSender {
                inner: SenderInner::Memory(sender),
                control: control.clone(),
                traffic: traffic.clone(),
                limits,
            },
            receiver: FrameReceiver { inner: ReceiverInner::Memory(receiver), control, traffic },
        }
    }

    /// Who is at the other end, as authenticated by the handshake.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The peer's network address (QUIC only).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// QUIC path statistics (RTT, congestion window, lost packets) for
    /// diagnostics; `None` on the memory transport.
    pub fn quic_stats(&self) -> Option<quinn::ConnectionStats> {
        match &self.sender.control {
            Control::Quic(c, _) => Some(c.stats()),
            Control::Memory(_) => None,
        }
    }

    /// Byte counters shared by both halves, valid after `split`.
    pub fn traffic(&self) -> Traffic {
        self.sender.traffic.clone()
    }

    /// See [`FrameSender::send`].
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        self.sender.send(frame).await
    }

    /// See [`FrameReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Payload>, TransportError> {
        self.receiver.recv().await
    }

    /// See [`FrameSender::finish`].
    pub async fn finish(&mut self) -> Result<(), TransportError> {
        self.sender.finish().await
    }

    /// Close at once with an application code from [`crate::close_code`].
    pub fn close(&self, code: u32, reason: &str) {
        self.sender.close(code, reason);
    }

    /// Separate halves, so one task can send while another receives.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (self.sender, self.receiver)
    }

    #[cfg(test)]
    pub(crate) fn sender_mut(&mut self) -> &mut FrameSender {
        &mut self.sender
    }
}

enum ListenerInner {
    Quic(quic::QuicListener),
    Memory(MemoryListener),
}

/// The aggregator's side: yields admitted members' connections.
pub struct Listener {
    inner: ListenerInner,
}

impl Listener {
    pub(crate) fn from_quic(l: quic::QuicListener) -> Self {
        Listener { inner: ListenerInner::Quic(l) }
    }

    pub(crate) fn from_memory(l: MemoryListener) -> Self {
        Listener { inner: ListenerInner::Memory(l) }
    }

    /// Next admitted connection. Handshakes, admission and refusals happen
    /// in the background, so a slow or hostile client never blocks others.
    /// `None` once the listener can accept no more.
    pub async fn accept(&mut self) -> Option<(Peer, Connection)> {
        let conn = match &mut self.inner {
            ListenerInner::Quic(l) => l.accept().await,
            ListenerInner::Memory(l) => l.accept().await,
        }?;
        Some((conn.peer().clone(), conn))
    }

    /// The bound UDP address (QUIC only).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            ListenerInner::Quic(l) => l.local_addr(),
            ListenerInner::Memory(_) => None,
        }
    }
}

/// How a member reaches the aggregator; cloned into reconnect loops.
#[derive(Clone)]
pub enum Dialer {
    /// QUIC with mutual TLS to the configured aggregator.
    Quic(Arc<QuicDialConfig>),
    /// The in-process network of the simulator and tests.
    Memory {
        /// The network the aggregator listens on.
        network: MemoryNetwork,
        /// The member name to connect as (a certificate's stand-in).
        member: String,
    },
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dialer::Quic(cfg) => f.debug_tuple("Quic").field(cfg).finish(),
            Dialer::Memory { member, .. } => f.debug_struct("Memory").field("member", member).finish_non_exhaustive(),
        }
    }
}

impl Dialer {
    /// One attempt; see [`crate::connect_with_backoff`] for retries.
    pub async fn dial(&self) -> Result<Connection, TransportError> {
        match self {
            Dialer::Quic(cfg) => quic::connect(cfg).await,
            Dialer::Memory { network, member } => network.connect(member).await,
        }
    }
}
