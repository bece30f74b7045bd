//! In-memory transport: a [`MemoryNetwork`] hub where one aggregator listens
//! and members connect by name, frames flowing over bounded tokio channels.
//! It keeps QUIC's contract: admission at connect, frame checks on receive,
//! close codes and reasons, byte counters. The member name is trusted as
//! given, standing in for a verified certificate; use it only in-process.
//!
//! Besides frames it carries values ([`FrameSender::send_value`](crate::FrameSender::send_value)):
//! a message the sender built, handed to the receiver as it is with the
//! length its frame would have. The aggregator sends the messages that carry
//! a round-wide `SharedList` this way, so that every member in the process
//! holds one list instead of decoding its own copy (issue #20).

use std::any::Any;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tessera_core::{CodecError, HEADER_LEN, Limits, Payload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{info, warn};

use crate::admission::Admission;
use crate::connection::{Connection, Listener};
use crate::error::{TransportError, close_code};
use crate::frame::check_frame;
use crate::peer::Peer;
use crate::pki;

/// Bytes in flight per direction before `send` waits: the memory analogue
/// of QUIC's stream flow-control window.
const WINDOW_BYTES: usize = 16 << 20;
/// Connections waiting for `accept`.
const ACCEPT_QUEUE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Aggregator,
    Member,
}

#[derive(Clone, Debug)]
struct CloseInfo {
    by: Side,
    code: u32,
    reason: String,
}

/// Close state shared by both ends of one memory connection.
#[derive(Clone)]
pub(crate) struct LinkEnd {
    closed: Arc<watch::Sender<Option<CloseInfo>>>,
    side: Side,
}

impl LinkEnd {
    fn pair() -> (LinkEnd, LinkEnd) {
        let closed = Arc::new(watch::Sender::new(None));
        (LinkEnd { closed: closed.clone(), side: Side::Aggregator }, LinkEnd { closed, side: Side::Member })
    }

    /// First close wins, as with QUIC.
    pub(crate) fn close(&self, code: u32, reason: &str) {
        self.closed.send_if_modified(|c| {
            if c.is_some() {
                return false;
            }
            *c = Some(CloseInfo { by: self.side, code, reason: reason.to_owned() });
            true
        });
    }

    fn error_for(&self, c: &CloseInfo) -> TransportError {
        if c.by == self.side {
            return TransportError::Closed;
        }
        match c.code {
            close_code::NOT_MEMBER | close_code::REVOKED | close_code::REFUSED => {
                TransportError::Refused { code: c.code, reason: c.reason.clone() }
            }
            code => TransportError::ClosedByPeer { code: code.into(), reason: c.reason.clone() },
        }
    }

    fn closed_error(&self) -> Option<TransportError> {
        self.closed.borrow().as_ref().map(|c| self.error_for(c))
    }

    async fn wait_closed(&self) -> TransportError {
        let mut rx = self.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(c) => match c.as_ref() {
                Some(c) => self.error_for(c),
                None => TransportError::Closed,
            },
            // The sender lives in `self`; this arm cannot be reached.
            Err(_) => TransportError::Closed,
        }
    }
}

/// What one send puts on the link: a frame, or a value with its frame's length.
enum Sent {
    Frame(Vec<u8>),
    Value(Arc<dyn Any + Send + Sync>, usize),
}

/// A send travels with its share of the window, returned when received.
type Carried = (Sent, OwnedSemaphorePermit);

pub(crate) struct MemorySender {
    tx: Option<mpsc::UnboundedSender<Carried>>,
    window: Arc<Semaphore>,
    end: LinkEnd,
}

impl MemorySender {
    pub(crate) async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        let len = frame.len();
        self.carry(Sent::Frame(frame), len).await
    }

    /// `value` in place of a frame of `frame_len` bytes (header included).
    pub(crate) async fn send_value(
        &mut self,
        value: Arc<dyn Any + Send + Sync>,
        frame_len: usize,
    ) -> Result<(), TransportError> {
        self.carry(Sent::Value(value, frame_len), frame_len).await
    }

    async fn carry(&mut self, sent: Sent, len: usize) -> Result<(), TransportError> {
        if let Some(e) = self.end.closed_error() {
            return Err(e);
        }
        let Some(tx) = &self.tx else { return Err(TransportError::Closed) };
        // A frame larger than the whole window takes all of it.
        let want = len.min(WINDOW_BYTES) as u32;
        let permit = tokio::select! {
            biased;
            e = self.end.wait_closed() => return Err(e),
            p = self.window.clone().acquire_many_owned(want) => p,
        };
        let gone = || TransportError::Lost("peer went away".into());
        let permit = permit.map_err(|_| gone())?;
        tx.send((sent, permit)).map_err(|_| gone())
    }

    pub(crate) async fn finish(&mut self) -> Result<(), TransportError> {
        if let Some(e) = self.end.closed_error() {
            return Err(e);
        }
        // Dropping the channel's sender ends the peer's stream after the
        // frames already queued.
        self.tx = None;
        Ok(())
    }
}

pub(crate) struct MemoryReceiver {
    rx: mpsc::UnboundedReceiver<Carried>,
    end: LinkEnd,
    limits: Limits,
    failed: Option<CodecError>,
}

impl MemoryReceiver {
    pub(crate) async fn recv(&mut self) -> Result<Option<Payload>, TransportError> {
        if let Some(e) = &self.failed {
            return Err(TransportError::Frame(e.clone()));
        }
        if let Some(e @ TransportError::Closed) = self.end.closed_error() {
            return Err(e);
        }
        // Frames queued before a close are still delivered.
        let msg = tokio::select! {
            biased;
            m = self.rx.recv() => m,
            e = self.end.wait_closed() => return Err(e),
        };
        let Some((sent, _window)) = msg else {
            return match self.end.closed_error() {
                Some(e) => Err(e),
                None => Ok(None),
            };
        };
        let frame = match sent {
            Sent::Frame(frame) => frame,
            // The sender's own value: only its size is left to check.
            Sent::Value(value, len) => match len.checked_sub(HEADER_LEN) {
                Some(payload) if payload <= self.limits.max_frame_bytes => {
                    return Ok(Some(Payload::from_value(value, payload)));
                }
                _ => {
                    let e = CodecError::Oversize { len, limit: self.limits.max_frame_bytes };
                    return Err(self.fail(e));
                }
            },
        };
        if let Err(e) = check_frame(&frame, &self.limits) {
            return Err(self.fail(e));
        }
        // A view past the header: no shift of the payload.
        Ok(Some(Payload::from(Bytes::from(frame).slice(HEADER_LEN..))))
    }

    fn fail(&mut self, e: CodecError) -> TransportError {
        warn!(error = %e, "malformed frame; closing memory connection");
        self.end.close(close_code::MALFORMED_FRAME, "malformed frame");
        self.failed = Some(e.clone());
        TransportError::Frame(e)
    }
}

pub(crate) struct MemoryListener {
    rx: mpsc::Receiver<Connection>,
}

impl MemoryListener {
    pub(crate) async fn accept(&mut self) -> Option<Connection> {
        self.rx.recv().await
    }
}

struct Hub {
    tx: mpsc::Sender<Connection>,
    admission: Arc<dyn Admission>,
    limits: Limits,
}

/// An in-process network with at most one listening aggregator. Clones
/// share the same network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    hub: Arc<Mutex<Option<Hub>>>,
}

impl MemoryNetwork {
    /// An empty network, with no listener yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start listening. Fails while another listener is alive; after it is
    /// dropped or [`shutdown`](Self::shutdown), a new one may take its place
    /// (an aggregator restart).
    pub fn listen(&self, admission: Arc<dyn Admission>, limits: Limits) -> Result<Listener, TransportError> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if hub.as_ref().is_some_and(|h| !h.tx.is_closed()) {
            return Err(TransportError::Config("the memory network already has a listener".into()));
        }
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        *hub = Some(Hub { tx, admission, limits });
        Ok(Listener::from_memory(MemoryListener { rx }))
    }

    /// Stop accepting: the listener's `accept` yields `None` once drained,
    /// and new connects fail with [`TransportError::NoListener`].
    pub fn shutdown(&self) {
        self.hub.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Connect as `member`, subject to the listener's admission.
    pub async fn connect(&self, member: &str) -> Result<Connection, TransportError> {
        pki::validate_member_name(member)?;
        let (tx, admission, limits) = {
            let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
            let h = hub.as_ref().filter(|h| !h.tx.is_closed()).ok_or(TransportError::NoListener)?;
            (h.tx.clone(), h.admission.clone(), h.limits)
        };
        if let Err(refusal) = admission.admit(member) {
            info!(%member, reason = %refusal.reason(), "member refused");
            return Err(TransportError::Refused { code: refusal.code(), reason: refusal.reason().to_owned() });
        }
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let (up_window, down_window) = (Arc::new(Semaphore::new(WINDOW_BYTES)), Arc::new(Semaphore::new(WINDOW_BYTES)));
        let (agg_end, member_end) = LinkEnd::pair();
        let agg = Connection::new_memory(
            Peer::named(member),
            MemorySender { tx: Some(down_tx), window: down_window, end: agg_end.clone() },
            MemoryReceiver { rx: up_rx, end: agg_end.clone(), limits, failed: None },
            agg_end,
            limits,
        );
        let mine = Connection::new_memory(
            Peer::named(Peer::AGGREGATOR),
            MemorySender { tx: Some(up_tx), window: up_window, end: member_end.clone() },
            MemoryReceiver { rx: down_rx, end: member_end.clone(), limits, failed: None },
            member_end,
            limits,
        );
        tx.send(agg).await.map_err(|_| TransportError::NoListener)?;
        info!(%member, "member connected (memory)");
        Ok(mine)
    }
}
