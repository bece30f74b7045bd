//! `tessera-privacy` owns the differential-privacy mathematics of Tessera:
//!
//! - Settings: [`validate`] checks a run's `DpSettings`; [`round_spend`] and
//!   [`member_spend`] turn them into the [`GaussianSpend`] the aggregator and
//!   each member charge; [`DistributedPlan`] sizes distributed noise under
//!   secure aggregation from public parameters only, with each share wide
//!   enough that the sum is a Gaussian for the accountant ([`kls21_tau`],
//!   [`KLS21_MAX_EXCESS`]).
//! - Clipping: [`clip_params_l2`] bounds an update's L2 norm; [`AdaptiveClip`],
//!   [`adaptive_release`] and [`split_noise_multiplier`] let the clip norm
//!   follow a quantile of update norms inside one accounted release.
//! - Noise: [`DiscreteGaussian`] samples N_Z(0, sigma^2) exactly (a certified
//!   table up to [`MAX_TABLE_SIGMA`]), [`ConvolvedGaussian`] from two table
//!   draws up to [`MAX_CONVOLVED_SIGMA`]; [`GaussianMechanism`] (kept per run
//!   by [`MechanismCache`]) adds it to f32 values on a grid;
//!   [`rounded_sensitivity`] is the sensitivity of values rounded on the way;
//!   [`NoiseStream`] (AES-256-CTR) feeds the samplers of large releases.
//! - Accounting: [`RdpAccountant`] composes subsampled Gaussian releases in
//!   Rényi DP (an OpenDP zCDP cross-check runs in the tests);
//!   [`calibrate_noise_multiplier`] inverts it; [`ZcdpAccountant`] converts
//!   zCDP through OpenDP. [`privacy_calculator`] answers an operator's
//!   [`CalculatorQuery`] with both accountants' figures side by side.
//!   A DP statistics release's privacy map is OpenDP's measurements and
//!   composition ([`statistics_privacy`]); its ledger charge is
//!   [`statistics_spend`].
//! - Budgets: [`PrivacyLedger`] enforces a [`PrivacyBudget`] with a
//!   write-ahead log kept by a [`LedgerStore`] ([`FileLedgerStore`] on
//!   disk): a [`Reservation`] is durable before a release leaves.
//!
//! It must NOT do I/O beyond the ledger's own file store, run async code,
//! train models, or sample noise from floating-point Gaussians. Errors are
//! typed and never carry a record or a per-example value.

#![warn(missing_docs)]

mod accountant;
mod budget;
mod calculator;
mod cdt;
mod clip;
mod convolved;
mod distributed;
mod exact;
mod mechanism;
mod noise;
mod plan;
mod statistics;
mod stream;
mod zcdp;

pub use accountant::{RdpAccountant, calibrate_noise_multiplier, dominated_multiplier};
pub use budget::{
    FileLedgerStore, GaussianSpend, LedgerEntry, LedgerError, LedgerStore, PrivacyBudget, PrivacyLedger, Reservation,
};
pub use calculator::{CalculatorError, CalculatorQuery, CalculatorReport, privacy_calculator, releases_per_round};
pub use clip::{
    AdaptiveClip, CLIP_SAFETY, adaptive_release, clip_factor, clip_factors, clip_l2, clip_params_l2,
    noisy_unclipped_count, split_noise_multiplier,
};
pub use convolved::{ConvolvedGaussian, MAX_CONVOLVED_SIGMA};
pub use distributed::{KLS21_MAX_EXCESS, kls21_rdp_excess, kls21_tau, quantized_l2_sensitivity};
pub use mechanism::{GaussianMechanism, MechanismCache, rounded_sensitivity};
pub use noise::{DiscreteGaussian, MAX_TABLE_SIGMA, add_gaussian_noise_f32, fill_discrete_gaussian};
pub use plan::{DistributedPlan, dpsgd_steps, member_spend, record_step_sensitivity, round_spend, validate};
pub use statistics::{StatisticsPart, StatisticsPrivacy, statistics_privacy, statistics_spend};
pub use stream::NoiseStream;
pub use zcdp::{ZcdpAccountant, zcdp_to_epsilon};

/// Errors of the privacy mathematics. Messages name the parameter at fault,
/// never a data value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    /// A parameter is out of its domain; the text names the rule.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// An input vector holds NaN or an infinity; nothing was modified, and
    /// the input must not be released.
    #[error("input holds a non-finite value")]
    NonFinite,
    /// No parameter meets the target, e.g. an epsilon no noise multiplier
    /// in the search range reaches.
    #[error("target cannot be met: {0}")]
    Unreachable(&'static str),
    /// OpenDP refused a conversion (the zCDP cross-check).
    #[error("OpenDP rejected the request: {0}")]
    OpenDp(String),
}
