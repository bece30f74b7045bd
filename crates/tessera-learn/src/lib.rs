//! `tessera-learn` is the learning contract every local model of Tessera
//! follows, and the parts all of them share. The member's driver calls a
//! model only through [`LocalModel`]; `tessera-tabular` (tables) and
//! `tessera-vision` (images) implement it on top of what is here:
//!
//! - the compute backend, chosen at run time ([`ComputeBackend`]);
//! - the validation of a round's training settings and of DP-SGD's
//!   ([`validate_train_settings`], [`DpSgdConfig::validate`]);
//! - the Poisson sampler of DP-SGD's steps ([`PoissonSampler`]);
//! - the SGD step with FedProx's proximal pull ([`fedprox_step`]);
//! - DP-SGD's noise, from tessera-privacy's exact sampler, with its random
//!   streams for one round ([`DpNoise`], [`DpRound`]);
//! - the DP-SGD loop for models whose per-example gradients need a
//!   backward pass ([`dp_sgd`] over [`PerExampleGradients`], which may
//!   clip a whole group at once).
//!
//! Metrics come from `tessera_core::evaluate`, the one implementation every
//! model reports through.
//!
//! It must NOT touch the network, masks or privacy accounting, and must
//! never log, return or put into an error a record or a per-example value.

#![warn(missing_docs)]

mod backend;
mod dp;
mod local;
mod sgd;

pub use backend::{BackendUnavailable, ComputeBackend, DEFAULT_BACKEND, WGPU_BUILT, WGPU_FEATURE};
pub use dp::{
    DpNoise, DpRound, DpSgdConfig, NOISE_CHUNK, PREPARE_GROUP, PerExampleGradients, add_clipped_each, dp_sgd,
};
pub use local::{LocalError, LocalModel};
pub use sgd::{PoissonSampler, fedprox_step, fedprox_tensor_step, validate_train_settings};
/// The f32 margin every clip keeps below C (`tessera_privacy`'s), for
/// models that clip per example on their own (ghost clipping, the head's
/// closed form).
pub use tessera_privacy::CLIP_SAFETY;
