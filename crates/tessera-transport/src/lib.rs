//! QUIC with mutual TLS, the consortium PKI, and an in-memory transport with the same interface.
