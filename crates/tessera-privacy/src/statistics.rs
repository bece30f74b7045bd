//! The privacy map of a DP statistics release (issue #18), built from
//! OpenDP's measurements.
//!
//! A release is a vector of counts in parts (the label histogram, the
//! feature block; or, under the client unit, one member's projected vector),
//! each part with its own L2 sensitivity per protected unit, all noised with
//! the same discrete Gaussian of standard deviation sigma. Each part is an
//! OpenDP chain: a transformation from a data set (distance: units added or
//! removed, `SymmetricDistance`) to the part's count vector whose stability
//! map is the part's sensitivity, followed by `make_gaussian` on that
//! vector (zCDP). `make_composition` composes the parts; `make_zCDP_to_approxDP`
//! and `make_fix_delta` give (epsilon, delta). OpenDP supplies the privacy
//! map only: the counts are computed by each member and the noise is added
//! by Tessera's own exact sampler, as shares under secure aggregation, so the
//! transformation's function is a placeholder that is never invoked.
//!
//! The ledgers stay in RDP: a Gaussian with rho-zCDP has RDP `alpha · rho` at
//! every order, which is exactly what [`crate::RdpAccountant`] composes for
//! one unsampled Gaussian at multiplier `sigma / Delta`
//! ([`statistics_spend`]). The two epsilons differ only in the conversion
//! (see the cross-check test).

use opendp::combinators::{make_chain_mt, make_composition, make_fix_delta, make_zCDP_to_approxDP};
use opendp::core::{Function, Measurement, StabilityMap, Transformation};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::{L2Distance, SymmetricDistance};

use crate::PrivacyError;
use crate::budget::GaussianSpend;

/// One part of a release: its name, its number of counts and the L2
/// sensitivity of one protected unit (record or member) on it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatisticsPart {
    /// What the part counts ("labels", "features", "member").
    pub name: &'static str,
    /// Counts in the part.
    pub len: usize,
    /// L2 distance one unit moves the part by.
    pub sensitivity: f64,
}

/// What a release costs, by OpenDP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatisticsPrivacy {
    /// rho of the composed parts (zero-concentrated DP).
    pub rho: f64,
    /// epsilon at `delta`, by OpenDP's zCDP conversion.
    pub epsilon: f64,
    /// The delta it was fixed at.
    pub delta: f64,
}

fn opendp_err(e: opendp::error::Error) -> PrivacyError {
    PrivacyError::OpenDp(e.variant.to_string())
}

type Records = VectorDomain<AtomDomain<u32>>;
type PartMeasurement = Measurement<Records, SymmetricDistance, ZeroConcentratedDivergence, Vec<f64>>;

/// One part as an OpenDP measurement: counts with stability `sensitivity`
/// per unit, then a Gaussian of standard deviation `sigma` on them.
fn part_measurement(part: StatisticsPart, sigma: f64) -> Result<PartMeasurement, PrivacyError> {
    let counts = VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(part.len);
    let (len, sensitivity) = (part.len, part.sensitivity);
    let count = Transformation::new(
        VectorDomain::new(AtomDomain::<u32>::default()),
        SymmetricDistance,
        counts.clone(),
        L2Distance::<f64>::default(),
        // Placeholder: members count, Tessera's sampler adds the noise.
        Function::new(move |_: &Vec<u32>| vec![0.0; len]),
        StabilityMap::new(move |units: &u32| f64::from(*units) * sensitivity),
    )
    .map_err(opendp_err)?;
    let noise = make_gaussian::<_, _, ZeroConcentratedDivergence>(counts, L2Distance::<f64>::default(), sigma, None)
        .map_err(opendp_err)?;
    make_chain_mt(&noise, &count).map_err(opendp_err)
}

/// rho and (epsilon, delta) of releasing every part with Gaussian noise of
/// standard deviation `sigma`, for one unit (a record or a member) added or
/// removed, by OpenDP's measurements and composition.
pub fn statistics_privacy(parts: &[StatisticsPart], sigma: f64, delta: f64) -> Result<StatisticsPrivacy, PrivacyError> {
    if parts.is_empty() || parts.iter().any(|p| p.len == 0 || !(p.sensitivity.is_finite() && p.sensitivity > 0.0)) {
        return Err(PrivacyError::InvalidParameter("a statistics release needs parts with values and sensitivity > 0"));
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(PrivacyError::InvalidParameter("sigma must be finite and > 0"));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::InvalidParameter("delta must lie in (0, 1)"));
    }
    let measurements = parts.iter().map(|p| part_measurement(*p, sigma)).collect::<Result<Vec<_>, _>>()?;
    let composed = make_composition(measurements).map_err(opendp_err)?;
    let rho = composed.map(&1).map_err(opendp_err)?;
    let fixed = make_fix_delta(&make_zCDP_to_approxDP(composed).map_err(opendp_err)?, delta).map_err(opendp_err)?;
    let (epsilon, _) = fixed.map(&1).map_err(opendp_err)?;
    Ok(StatisticsPrivacy { rho, epsilon, delta })
}

/// What the ledgers charge for the release: one unsampled Gaussian at the
/// multiplier `sigma / Delta`, Delta the parts' joint L2 sensitivity
/// (`sqrt(Σ Delta_i²)`). Its RDP, `alpha / (2 (sigma/Delta)²)`, is the
/// composed rho times alpha.
pub fn statistics_spend(parts: &[StatisticsPart], sigma: f64) -> GaussianSpend {
    let sensitivity = parts.iter().map(|p| p.sensitivity * p.sensitivity).sum::<f64>().sqrt();
    GaussianSpend { noise_multiplier: sigma / sensitivity, sampling_rate: 1.0, steps: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RdpAccountant;

    fn record_parts(features: usize) -> Vec<StatisticsPart> {
        vec![
            StatisticsPart { name: "labels", len: 2, sensitivity: 1.0 },
            StatisticsPart { name: "features", len: features * 11, sensitivity: (features as f64).sqrt() },
        ]
    }

    /// The composed rho is the sum of the parts' Delta_i² / (2 sigma²): the
    /// record unit's two parts cost exactly one Gaussian at the joint
    /// sensitivity sqrt(1 + F), no more (OpenDP's float rounding slack is
    /// below 1e-9 relative here).
    #[test]
    fn opendp_composes_the_parts_to_the_joint_sensitivity() {
        let (f, sigma) = (30, 20.0);
        let p = statistics_privacy(&record_parts(f), sigma, 1e-6).unwrap();
        let expected = (1.0 + f as f64) / (2.0 * sigma * sigma);
        assert!(p.rho >= expected && p.rho < expected * (1.0 + 1e-9), "{} vs {expected}", p.rho);
        // Halving the noise quadruples rho; no parts is an error.
        let q = statistics_privacy(&record_parts(f), sigma / 2.0, 1e-6).unwrap();
        assert!((q.rho / p.rho - 4.0).abs() < 1e-6);
        assert!(statistics_privacy(&[], sigma, 1e-6).is_err());
    }

    /// OpenDP's epsilon against the RDP accountant's for the same release.
    /// Both start from the same curve (RDP alpha·rho); OpenDP converts zCDP
    /// to (epsilon, delta) optimising over every order, the accountant over
    /// its fixed grid of orders with CKS20's Prop. 12, so the accountant's
    /// epsilon is never below OpenDP's and at most 3 % above it (the grid's
    /// coarseness; measured below 1 % at these settings).
    #[test]
    fn opendp_epsilon_agrees_with_the_rdp_accountant() {
        for (f, sigma, delta) in [(30usize, 20.0, 1e-5), (10, 3.0, 1e-6), (3, 1.5, 1e-5), (100, 200.0, 1e-8)] {
            let parts = record_parts(f);
            let opendp = statistics_privacy(&parts, sigma, delta).unwrap().epsilon;
            let spend = statistics_spend(&parts, sigma);
            let mut acc = RdpAccountant::default();
            acc.compose_poisson_gaussian(spend.noise_multiplier, spend.sampling_rate, spend.steps).unwrap();
            let rdp = acc.epsilon(delta).unwrap().0;
            assert!(rdp >= opendp * (1.0 - 1e-9), "RDP {rdp} below OpenDP {opendp} (F {f}, sigma {sigma})");
            assert!(rdp <= opendp * 1.03, "RDP {rdp} more than 3 % above OpenDP {opendp} (F {f}, sigma {sigma})");
        }
    }
}
