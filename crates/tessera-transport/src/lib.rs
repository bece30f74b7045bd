//! `tessera-transport` moves frames between members and the aggregator. It
//! owns QUIC with mutual TLS (quinn + rustls), the consortium PKI ([`pki`]),
//! admission of members by certificate, reconnect with backoff, and an
//! in-memory transport with the same interface for the simulator and tests.
//!
//! It must NOT interpret frames: payloads are opaque bytes produced by
//! `tessera_core::codec`; only the frame header (version, length) is checked
//! here, to enforce the size cap before buffering. It holds no protocol
//! state, never trusts a name carried in a message (a [`Peer`] comes from the
//! certificate), and never logs payload bytes.
//!
//! One connection carries one member: the client opens a single
//! bidirectional stream, and frames flow over it in both directions.

mod admission;
mod backoff;
mod connection;
mod error;
mod frame;
mod memory;
mod peer;
pub mod pki;
mod quic;
mod udp;

pub use admission::{Admission, AdmitAll, MemberList, Refusal};
pub use backoff::{BackoffPolicy, connect_with_backoff};
pub use connection::{Connection, Dialer, FrameReceiver, FrameSender, Listener, Traffic};
pub use error::{TransportError, close_code};
pub use memory::MemoryNetwork;
pub use peer::Peer;
pub use quic::{ALPN, QuicDialConfig, QuicListenerConfig, QuicTuning, connect};

#[cfg(test)]
mod tests;
