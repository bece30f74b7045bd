//! Shared helpers for Tessera's cross-crate end-to-end tests.
