//! `tessera-transport` moves frames between members and the aggregator. It
//! owns QUIC with mutual TLS (quinn + rustls), the consortium PKI ([`pki`]),
//! admission of members by certificate, reconnect with backoff, and an
//! in-memory transport with the same interface for the simulator and tests.
//!
//! - Both sides: a [`Connection`] (or its [`FrameSender`] and
//!   [`FrameReceiver`] halves) carries whole frames; [`Traffic`] counts their
//!   bytes; [`TransportError`] and the [`close_code`]s say how it ended.
//! - Aggregator: [`QuicListenerConfig::listen`] or [`MemoryNetwork::listen`]
//!   gives a [`Listener`] that yields admitted members as a [`Peer`] and
//!   its connection; [`Admission`] (or [`AdmitAll`]) decides, turning members
//!   away with a [`Refusal`].
//! - Member: a [`Dialer`] ([`QuicDialConfig`] or the memory network) dials
//!   once, [`connect_with_backoff`] retries per [`BackoffPolicy`]; [`connect`]
//!   is the bare QUIC dial. [`QuicTuning`] and [`ALPN`] are the QUIC settings.
//! - Operators: [`pki`] creates the CA and issues member certificates.
//!
//! It must NOT interpret frames: payloads are opaque bytes produced by
//! `tessera_core::codec`; only the frame header (version, length) is checked
//! here, to enforce the size cap before buffering. It holds no protocol
//! state, never trusts a name carried in a message (a [`Peer`] comes from the
//! certificate), and never logs payload bytes.
//!
//! One connection carries one member: the client opens a single
//! bidirectional stream, and frames flow over it in both directions.

#![warn(missing_docs)]

mod admission;
mod backoff;
mod connection;
mod error;
mod frame;
mod memory;
mod peer;
// Kept public as a namespace: `pki::init` and `pki::issue` are unclear verbs at the crate root.
pub mod pki;
mod quic;
mod udp;

pub use admission::{Admission, AdmitAll, Refusal};
pub use backoff::{BackoffPolicy, connect_with_backoff};
pub use connection::{Connection, Dialer, FrameReceiver, FrameSender, Listener, Traffic};
pub use error::{TransportError, close_code};
pub use memory::MemoryNetwork;
pub use peer::Peer;
pub use quic::{ALPN, DEFAULT_MAX_HANDSHAKES, QuicDialConfig, QuicListenerConfig, QuicTuning, connect};

#[cfg(test)]
mod tests;
