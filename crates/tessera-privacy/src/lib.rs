//! `tessera-privacy` owns the differential-privacy mathematics of Tessera:
//! L2 clipping ([`clip`]), exact discrete Gaussian noise ([`noise`]), the
//! Gaussian mechanism on f32 values ([`mechanism`]), the noise's
//! sizing for distributed noise under secure aggregation ([`distributed`]),
//! Rényi-DP accounting of the subsampled Gaussian mechanism ([`accountant`],
//! with an OpenDP zCDP cross-check in [`zcdp`]) and budgets enforced by a
//! write-ahead ledger ([`budget`]).
//!
//! It must NOT do I/O beyond the ledger's own file store, run async code,
//! train models, or sample noise from floating-point Gaussians. Errors are
//! typed and never carry a record or a per-example value.

pub mod accountant;
pub mod budget;
mod cdt;
pub mod clip;
pub mod distributed;
mod exact;
pub mod mechanism;
pub mod noise;
pub mod plan;
pub mod zcdp;

pub use accountant::{RdpAccountant, calibrate_noise_multiplier, default_orders};
pub use budget::{
    FileLedgerStore, GaussianSpend, LedgerEntry, LedgerError, LedgerStore, MemoryLedgerStore, PrivacyBudget,
    PrivacyLedger, Reservation,
};
pub use clip::{
    AdaptiveClip, adaptive_release, clip_factors, clip_l2, clip_params_l2, noisy_unclipped_count,
    split_noise_multiplier,
};
pub use distributed::{distributed_share_sigma, quantized_l2_sensitivity};
pub use mechanism::{GaussianMechanism, MechanismCache};
pub use noise::{DiscreteGaussian, MAX_TABLE_SIGMA, add_gaussian_noise_f32, fill_discrete_gaussian};
pub use plan::{DistributedPlan, member_spend, round_spend};
pub use zcdp::{ZcdpAccountant, zcdp_to_epsilon};

/// Errors of the privacy mathematics. Messages name the parameter at fault,
/// never a data value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    #[error("input holds a non-finite value")]
    NonFinite,
    #[error("target cannot be met: {0}")]
    Unreachable(&'static str),
    #[error("OpenDP rejected the request: {0}")]
    OpenDp(String),
}
