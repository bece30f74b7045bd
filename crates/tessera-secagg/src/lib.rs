//! Secure aggregation (SecAgg with dropout recovery, SecAgg+) as sans-IO
//! state machines.
//!
//! This crate owns the cryptographic protocol of Bonawitz et al. (CCS 2017,
//! double masking with Shamir-shared secrets) and its sparse-graph variant
//! SecAgg+ of Bell et al. (CCS 2020): a [`ClientSession`] per member and a
//! [`ServerSession`] for the aggregator, both fed with the `tessera-core`
//! message payloads and answering with the payloads to send. It also owns the
//! fixed-point [`Quantizer`] between f32 values and the ring Z_{2^k}, and the
//! layout of a model update in the masked vector ([`UpdateEncoder`] on the
//! member, [`mean_update`] on the aggregator).
//!
//! - Round setup: [`RoundContext`] binds run, round, cohort and settings;
//!   [`default_plan`] (a [`SecAggPlan`]), [`default_threshold`] and
//!   [`min_threshold`] size the [`NeighbourGraph`] and Shamir threshold.
//! - Signed advertisements: [`advert_message`] is what a member signs (keys,
//!   [`seed_commitment`] and [`graph_commitment`]); [`survivor_message`] is
//!   what every survivor signs in the consistency check; signing and
//!   checking happen in the caller. [`graph_seed`] is the neighbour graph's
//!   seed, drawn by the members by commit and reveal.
//! - Sessions: [`ClientSession`] and [`ServerSession`] step through the
//!   protocol ([`Step`], [`Phase`]); the server's only output is an
//!   [`AggregateSum`] (which also names members whose revealed share failed
//!   the check); everything fails with a [`SecAggError`].
//! - Updates: [`vector_len`], [`example_weight`], [`ValueCoding`],
//!   [`add_ring_noise`] and [`mean_update_with`] map model deltas to ring
//!   vectors and back.
//! - Masking: [`apply_prg`] with a [`MaskOp`] is the PRG the benches
//!   measure; [`default_mask_threads`] is what
//!   [`ClientSession::set_mask_threads`] starts from.
//!
//! It must NOT do I/O, read clocks, keep threads or pick its own
//! randomness: every random draw comes from the caller's
//! [`rand_core::CryptoRngCore`], so tests replay exactly. The one exception
//! to "no threads" is [`ClientSession::mask_chunk`], which masks a long chunk
//! on scoped threads that end before it returns (count set by
//! [`ClientSession::set_mask_threads`]; the output does not depend on it). No public API
//! returns one member's unmasked value; the aggregator only ever gets the sum
//! of at least `threshold` members. Primitives come from vetted crates
//! (x25519-dalek, curve25519-dalek scalars, HKDF-SHA256, AES-256-GCM,
//! AES-256-CTR, a ChaCha20 RNG); this crate only composes them. See
//! `docs/secure-aggregation.md`.

#![warn(missing_docs)]

mod advert;
mod client;
mod context;
mod crypto;
mod error;
mod field;
mod graph;
mod quantize;
mod reconstruct;
mod server;
mod shamir;
mod shared;
mod update;

pub use advert::{advert_message, graph_commitment, graph_seed, seed_commitment, survivor_message};
pub use client::{ClientSession, default_mask_threads};
pub use context::{
    RoundContext, SecAggPlan, default_neighbours, default_plan, default_threshold, min_neighbours, min_threshold,
    shared_cohort_digest,
};
pub use crypto::{MaskOp, apply_prg};
pub use error::{SecAggError, SecretKind, Step};
pub use graph::NeighbourGraph;
pub use quantize::Quantizer;
pub use server::{AggregateSum, DEFAULT_STREAM_SLOTS, Phase, ServerSession};
pub use update::{
    UpdateEncoder, ValueCoding, add_ring_noise, example_weight, mean_update, mean_update_with, vector_len,
};
