//! Fuzz harnesses for Tessera's hostile-input surfaces; see `entries` and
//! `fuzz/README.md`. Not a workspace member: built by `cargo fuzz`.

pub mod entries;
