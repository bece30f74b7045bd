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
///
/// Every variant (and [`PkiError`]) says its cause in its own message and
/// has no `source()`:
/// transport errors are logged where they happen (`error = %e`), and a
/// message that also returned its cause as a source would be printed twice
/// by a printer that walks the chain.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer sent a bad frame; the connection has been closed.
    #[error("malformed frame: {0}")]
    Frame(CodecError),
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
    /// This side's TLS verifier rejected the peer's certificate: on a
    /// member, the aggregator's certificate is not signed by the member's
    /// `ca.pem`, does not carry the name it is dialled by, or is outside its
    /// validity period. The misconfiguration is on the side this names.
    #[error("the {peer}'s certificate {problem} (TLS: {detail})")]
    PeerCertificateRejected {
        /// Who presented it: `aggregator` on a member, `member` on the aggregator.
        peer: &'static str,
        /// What is wrong with it, e.g. "is not signed by your ca.pem".
        problem: &'static str,
        /// The TLS stack's words.
        detail: String,
    },
    /// The peer's TLS stack rejected this side's certificate (it sent a TLS
    /// alert): on a member, the aggregator refused the member's certificate
    /// (issued by another CA, expired, or not a client certificate).
    #[error(
        "the {peer} refused your certificate (TLS alert: {detail}); is it issued by the consortium CA the {peer} uses?"
    )]
    CertificateRefusedByPeer {
        /// Who refused it: `aggregator` on a member, `member` on the aggregator.
        peer: &'static str,
        /// The alert as received.
        detail: String,
    },
    /// The TLS handshake failed otherwise (no certificate presented, a
    /// protocol mismatch).
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
    /// The UDP socket could not be bound to this address (in use, not a
    /// local address, no permission).
    #[error("cannot bind UDP {addr}: {detail}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's answer, e.g. "Address already in use (os error 98)".
        detail: std::io::Error,
    },
    /// The UDP socket could not be set up for QUIC.
    #[error("I/O: {0}")]
    Io(std::io::Error),
}

impl From<CodecError> for TransportError {
    fn from(e: CodecError) -> Self {
        Self::Frame(e)
    }
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl TransportError {
    /// Whether dialling again later may succeed. Admission refusals and
    /// certificate failures are permanent: retrying would only hammer the
    /// aggregator.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Lost(_)
            | Self::Timeout { .. }
            | Self::NoListener
            | Self::Resolve { .. }
            | Self::Io(_)
            | Self::Bind { .. } => true,
            Self::ClosedByPeer { code, .. } => {
                *code == u64::from(close_code::NORMAL) || *code == close_code::BUSY as u64
            }
            Self::Frame(_)
            | Self::InvalidOutgoing(_)
            | Self::Refused { .. }
            | Self::Closed
            | Self::Handshake(_)
            | Self::PeerCertificateRejected { .. }
            | Self::CertificateRefusedByPeer { .. }
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
        // The peer sent a TLS alert: it refused our certificate.
        C::ConnectionClosed(close) if is_crypto(close.error_code) => TransportError::CertificateRefusedByPeer {
            peer: "peer",
            detail: alert_text(&close.reason, close.error_code),
        },
        // Our own TLS stack failed the handshake: usually its verifier
        // rejected the peer's certificate.
        C::TransportError(te) if is_crypto(te.code) => match certificate_problem(&te.reason) {
            Some(problem) => TransportError::PeerCertificateRejected { peer: "peer", problem, detail: te.reason },
            None => TransportError::Handshake(te.to_string()),
        },
        C::LocallyClosed => TransportError::Closed,
        other => TransportError::Lost(other.to_string()),
    }
}

impl TransportError {
    /// Name the other side in handshake errors (`aggregator` when a member
    /// dials, `member` when the aggregator accepts), so the message says
    /// whose configuration to look at.
    pub(crate) fn naming_peer(self, who: &'static str) -> Self {
        match self {
            Self::PeerCertificateRejected { problem, detail, .. } => {
                Self::PeerCertificateRejected { peer: who, problem, detail }
            }
            Self::CertificateRefusedByPeer { detail, .. } => Self::CertificateRefusedByPeer { peer: who, detail },
            other => other,
        }
    }
}

/// What a rustls certificate error (as quinn words it) says is wrong with
/// the peer's certificate; `None` for handshake failures of another kind.
fn certificate_problem(reason: &str) -> Option<&'static str> {
    if !reason.contains("invalid peer certificate") {
        return None;
    }
    Some(if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        "is not signed by your ca.pem"
    } else if reason.contains("NotValidForName") || reason.contains("not valid for name") {
        "does not carry the name it was dialled by (`server_name`)"
    } else if ["Expired", "expired", "NotValidYet", "not valid yet"].iter().any(|w| reason.contains(w)) {
        "is outside its validity period"
    } else if reason.contains("Revoked") {
        "is revoked"
    } else {
        "was rejected"
    })
}

/// The alert the peer closed the handshake with, e.g. "bad certificate".
fn alert_text(reason: &[u8], code: quinn::TransportErrorCode) -> String {
    let reason = String::from_utf8_lossy(reason);
    if reason.is_empty() { code.to_string() } else { reason.into_owned() }
}

/// QUIC reserves 0x100..=0x1ff for TLS alerts.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}
