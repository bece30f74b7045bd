//! Who is at the other end of a connection: a leaf type that the
//! connection, the QUIC and the in-memory transports all name, so none of
//! them imports another for it.

use crate::pki::CertFingerprint;

/// The authenticated identity at the other end of a connection. On the
/// aggregator side this is the member name from the client's certificate;
/// on the member side it is always [`Peer::AGGREGATOR`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The member name the certificate proves (validated), or
    /// [`Peer::AGGREGATOR`] for the aggregator.
    pub member: String,
    /// SHA-256 of the certificate the peer presented (QUIC, aggregator
    /// side), so the aggregator can cut the connection when that one
    /// certificate is revoked. `None` on the member side and on the
    /// in-memory transport, which has no certificates.
    pub certificate: Option<CertFingerprint>,
}

impl Peer {
    /// The name members give the aggregator; no member may take it, since
    /// `aggregator` is a reserved member name.
    pub const AGGREGATOR: &'static str = "aggregator";

    /// A peer known by name only (no certificate): the in-memory transport,
    /// and the aggregator as members see it.
    pub fn named(member: impl Into<String>) -> Self {
        Self { member: member.into(), certificate: None }
    }
}
