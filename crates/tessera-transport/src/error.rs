//! Typed transport errors and the application close codes both sides agree on.

use std::time::Duration;

use tessera_core::CodecError;

use crate::pki::PkiError;

/// QUIC application close codes (and the memory transport's equivalents).
pub mod close_code {
    /// Orderly close.
    pub const NORMAL: u32 = 0;
    /// The certificate is valid but its name is not in the member list.
    pub const NOT_MEMBER: u32 = 0x10;
    /// The member's access was revoked.
    pub const REVOKED: u32 = 0x11;
    /// Admission refused for another reason.
    pub const REFUSED: u32 = 0x12;
    /// The listener is at its connection limit.
    pub const BUSY: u32 = 0x13;
    /// The peer sent bytes that are not a valid frame.
    pub const MALFORMED_FRAME: u32 = 0x20;
    /// The peer did not follow the transport's stream setup.
    pub const PROTOCOL: u32 = 0x21;
}

/// Why a transport operation failed. [`TransportError::is_retryable`] tells
/// a reconnect loop whether dialling again can help.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer sent a bad frame; the connection has been closed.
    #[error("malformed frame: {0}")]
    Frame(#[from] CodecError),
    /// A frame handed to `send` is not a well-formed frame within limits.
    #[error("refusing to send an invalid frame: {0}")]
    InvalidOutgoing(CodecError),
    /// The aggregator's admission check refused this member.
    #[error("refused by the aggregator: {reason}")]
    Refused {
        /// The [`close_code`] the aggregator closed with.
        code: u32,
        /// Its short, human-readable reason.
        reason: String,
    },
    /// The peer closed the connection with an application code.
    #[error("connection closed by peer (code {code}): {reason}")]
    ClosedByPeer {
        /// The application close (or stream reset) code; 64 bits as QUIC carries it.
        code: u64,
        /// The peer's reason, lossily decoded as UTF-8.
        reason: String,
    },
    /// This side already closed the connection.
    #[error("connection closed locally")]
    Closed,
    /// The TLS handshake failed (unknown CA, wrong name, bad certificate).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The connection broke (timeout, reset, transport error).
    #[error("connection lost: {0}")]
    Lost(String),
    /// An operation did not finish within its configured limit.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// The operation, e.g. "connecting to the aggregator".
        what: &'static str,
        /// The limit that ran out.
        after: Duration,
    },
    /// The aggregator's `host:port` did not resolve to an address.
    #[error("cannot resolve {addr:?}: {detail}")]
    Resolve {
        /// The address as configured.
        addr: String,
        /// The resolver's answer.
        detail: String,
    },
    /// The memory network has no live listener (the aggregator is down).
    #[error("no listener on the memory network")]
    NoListener,
    /// The settings cannot work: bad certificate set, server name, timeout, or no runtime.
    #[error("transport configuration: {0}")]
    Config(String),
    /// A certificate or key file could not be read, or a name is invalid.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The UDP socket could not be bound or wrapped.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// Whether dialling again later may succeed. Admission refusals and
    /// certificate failures are permanent: retrying would only hammer the
    /// aggregator.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Lost(_) | Self::Timeout { .. } | Self::NoListener | Self::Resolve { .. } | Self::Io(_) => true,
            Self::ClosedByPeer { code, .. } => {
                *code == u64::from(close_code::NORMAL) || *code == close_code::BUSY as u64
            }
            Self::Frame(_)
            | Self::InvalidOutgoing(_)
            | Self::Refused { .. }
            | Self::Closed
            | Self::Handshake(_)
            | Self::Config(_)
            | Self::Pki(_) => false,
        }
    }
}

/// Map a quinn connection error, recognising admission refusals and TLS failures.
pub(crate) fn from_quinn(e: quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as C;
    match e {
        C::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            match u32::try_from(code) {
                Ok(c @ (close_code::NOT_MEMBER | close_code::REVOKED | close_code::REFUSED)) => {
                    TransportError::Refused { code: c, reason }
                }
                _ => TransportError::ClosedByPeer { code, reason },
            }
        }
        C::ConnectionClosed(close) if is_crypto(close.error_code) => TransportError::Handshake(close.to_string()),
        C::TransportError(te) if is_crypto(te.code) => TransportError::Handshake(te.to_string()),
        C::LocallyClosed => TransportError::Closed,
        other => TransportError::Lost(other.to_string()),
    }
}

/// QUIC reserves 0x100..=0x1ff for TLS alerts.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}
