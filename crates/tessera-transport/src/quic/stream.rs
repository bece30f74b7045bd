//! A QUIC stream as a frame channel: frames written whole (or as shared
//! pieces) without copies, read back in bounded chunks, and quinn's stream
//! errors mapped to [`TransportError`].

use std::collections::VecDeque;

use bytes::Bytes;
use tessera_core::{CodecError, HEADER_LEN, Limits, Payload};
use tracing::warn;

use crate::error::{TransportError, close_code, from_quinn};
use crate::frame::{check_version, payload_len};

pub(crate) async fn write_frame(send: &mut quinn::SendStream, frame: Vec<u8>) -> Result<(), TransportError> {
    // write_chunk takes ownership of the buffer: no copy into quinn's queue.
    send.write_chunk(Bytes::from(frame)).await.map_err(write_err)
}

/// Queue a frame's pieces in order. quinn keeps each `Bytes` until the
/// peer acknowledges it, by reference: a piece shared with other
/// connections is not copied.
pub(crate) async fn write_parts(send: &mut quinn::SendStream, mut parts: Vec<Bytes>) -> Result<(), TransportError> {
    send.write_all_chunks(&mut parts).await.map_err(write_err)
}

pub(crate) async fn finish(send: &mut quinn::SendStream) -> Result<(), TransportError> {
    send.finish().map_err(|_| TransportError::Closed)?;
    match send.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(code)) => {
            Err(TransportError::ClosedByPeer { code: code.into_inner(), reason: "stream stopped by peer".into() })
        }
        Err(quinn::StoppedError::ConnectionLost(e)) => Err(from_quinn(e)),
        Err(e) => Err(TransportError::Lost(e.to_string())),
    }
}

pub(super) fn write_err(e: quinn::WriteError) -> TransportError {
    match e {
        quinn::WriteError::ConnectionLost(c) => from_quinn(c),
        quinn::WriteError::Stopped(code) => {
            TransportError::ClosedByPeer { code: code.into_inner(), reason: "stream stopped by peer".into() }
        }
        quinn::WriteError::ClosedStream => TransportError::Closed,
        other => TransportError::Lost(other.to_string()),
    }
}

fn read_err(e: quinn::ReadError) -> TransportError {
    match e {
        quinn::ReadError::ConnectionLost(c) => from_quinn(c),
        quinn::ReadError::Reset(code) => {
            TransportError::ClosedByPeer { code: code.into_inner(), reason: "stream reset by peer".into() }
        }
        quinn::ReadError::ClosedStream => TransportError::Closed,
        other => TransportError::Lost(other.to_string()),
    }
}

pub(super) fn read_exact_err(e: quinn::ReadExactError) -> TransportError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => TransportError::Lost("stream ended during setup".into()),
        quinn::ReadExactError::ReadError(e) => read_err(e),
    }
}

/// Stream chunks taken from quinn per call: one lock of the connection
/// state for up to this many packets' worth of data.
const CHUNKS_PER_READ: usize = 32;

/// Reads header then exactly the announced payload, so an oversize frame is
/// refused before a byte of its payload is kept. Chunks come from quinn in
/// batches (`read_chunks`) and are kept as they arrived until the frame is
/// complete: memory held is what the peer actually sent, however large the
/// frame it announced. The frame is handed over in those chunks (a
/// [`Payload`]), never gathered into one buffer. All progress
/// lives in `self` and quinn's `read_chunks` consumes nothing unless it
/// completes, so `recv` is cancel-safe: a driver may race it against a deadline.
pub(crate) struct QuicReceiver {
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    limits: Limits,
    failed: Option<CodecError>,
    /// Received from quinn, not yet consumed; may run into the next frame.
    pending: VecDeque<Bytes>,
    /// The peer finished the stream: nothing follows `pending`.
    ended: bool,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// The frame being received: announced length, its chunks so far and their total length.
    partial: Option<(usize, Vec<Bytes>, usize)>,
}

impl QuicReceiver {
    pub(crate) fn new(recv: quinn::RecvStream, conn: quinn::Connection, limits: Limits) -> Self {
        Self {
            recv,
            conn,
            limits,
            failed: None,
            pending: VecDeque::new(),
            ended: false,
            header: [0; HEADER_LEN],
            header_filled: 0,
            partial: None,
        }
    }

    /// Waits for more of the stream (or its end).
    async fn fill(&mut self) -> Result<(), TransportError> {
        let mut chunks: [Bytes; CHUNKS_PER_READ] = Default::default();
        match self.recv.read_chunks(&mut chunks).await.map_err(read_err)? {
            Some(n) => self.pending.extend(chunks.into_iter().take(n).filter(|c| !c.is_empty())),
            None => self.ended = true,
        }
        Ok(())
    }

    /// At most `max` (> 0) bytes from the front of what has been received.
    fn take(&mut self, max: usize) -> Option<Bytes> {
        let front = self.pending.front_mut()?;
        if front.len() > max { Some(front.split_to(max)) } else { self.pending.pop_front() }
    }

    pub(crate) async fn recv(&mut self) -> Result<Option<Payload>, TransportError> {
        if let Some(e) = &self.failed {
            return Err(TransportError::Frame(e.clone()));
        }
        while self.header_filled < HEADER_LEN {
            let Some(chunk) = self.take(HEADER_LEN - self.header_filled) else {
                if !self.ended {
                    self.fill().await?;
                    continue;
                }
                if self.header_filled == 0 {
                    return Ok(None);
                }
                return Err(self.fail(CodecError::Truncated { buffered: self.header_filled }));
            };
            self.header[self.header_filled..self.header_filled + chunk.len()].copy_from_slice(&chunk);
            self.header_filled += chunk.len();
            // Judge the version as soon as it is known, as the codec does.
            if let Err(e) = check_version(self.header[0]) {
                return Err(self.fail(e));
            }
        }
        let (len, mut chunks, mut got) = match self.partial.take() {
            Some(partial) => partial,
            None => match payload_len(&self.header, &self.limits) {
                Ok(len) => (len, Vec::new(), 0),
                Err(e) => return Err(self.fail(e)),
            },
        };
        while got < len {
            match self.take(len - got) {
                Some(chunk) => {
                    got += chunk.len();
                    chunks.push(chunk);
                }
                None if !self.ended => {
                    // Park progress in `self` across the await (cancel safety).
                    self.partial = Some((len, std::mem::take(&mut chunks), got));
                    self.fill().await?;
                    (_, chunks, got) = self.partial.take().expect("parked above");
                }
                None => return Err(self.fail(CodecError::Truncated { buffered: HEADER_LEN + got })),
            }
        }
        self.header_filled = 0;
        Ok(Some(Payload::from_chunks(chunks)))
    }

    fn fail(&mut self, e: CodecError) -> TransportError {
        self.partial = None;
        warn!(remote = %self.conn.remote_address(), error = %e, "malformed frame; closing connection");
        self.conn.close(close_code::MALFORMED_FRAME.into(), b"malformed frame");
        self.failed = Some(e.clone());
        TransportError::Frame(e)
    }
}
