//! Zero-concentrated DP (Bun & Steinke 2016) accounting through OpenDP.
//!
//! Where it applies: releases without subsampling amplification, i.e. every
//! client-level round with full participation and every distributed discrete
//! Gaussian release. The (discrete) Gaussian with L2 sensitivity Delta and
//! standard deviation sigma is rho = Delta^2 / (2 sigma^2)-zCDP (CKS20 Thm. 4
//! for the discrete one), and zCDP composes by adding rho. The conversion to
//! (epsilon, delta) is OpenDP's `make_zCDP_to_approxDP` (the optimal
//! conversion of CKS20 Prop. 12/Cor. 13) followed by `make_fix_delta`; both
//! are behind OpenDP's `contrib` feature, which this crate enables (it adds
//! code, not dependencies; see docs/privacy.md). Subsampled rounds must use
//! [`crate::RdpAccountant`] instead: zCDP does not amplify.

use opendp::combinators::{make_fix_delta, make_zCDP_to_approxDP};
use opendp::core::{Function, Measurement, PrivacyMap};
use opendp::domains::AtomDomain;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::DiscreteDistance;

use crate::PrivacyError;

/// Accumulated rho of composed Gaussian releases.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ZcdpAccountant {
    rho: f64,
}

impl ZcdpAccountant {
    /// The rho composed so far (zero-concentrated DP).
    pub fn rho(&self) -> f64 {
        self.rho
    }

    /// Compose `count` Gaussian releases with noise multiplier
    /// sigma / Delta = `noise_multiplier`: rho += count / (2 noise_multiplier^2).
    pub fn compose_gaussian(&mut self, noise_multiplier: f64, count: u64) -> Result<(), PrivacyError> {
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(PrivacyError::InvalidParameter("noise multiplier must be finite and > 0"));
        }
        self.rho += count as f64 / (2.0 * noise_multiplier * noise_multiplier);
        Ok(())
    }

    /// Smallest epsilon at `delta` for the accumulated rho, by OpenDP.
    pub fn epsilon(&self, delta: f64) -> Result<f64, PrivacyError> {
        zcdp_to_epsilon(self.rho, delta)
    }
}

fn opendp_err(e: opendp::error::Error) -> PrivacyError {
    PrivacyError::OpenDp(e.variant.to_string())
}

/// (epsilon, delta) from rho-zCDP via OpenDP. A measurement whose privacy map
/// is the constant `rho` stands for the composed releases; OpenDP's measure
/// cast and delta fixing then do the conversion.
pub fn zcdp_to_epsilon(rho: f64, delta: f64) -> Result<f64, PrivacyError> {
    if !(rho.is_finite() && rho >= 0.0) {
        return Err(PrivacyError::InvalidParameter("rho must be finite and >= 0"));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::InvalidParameter("delta must lie in (0, 1)"));
    }
    let composed = Measurement::new(
        AtomDomain::<bool>::default(),
        DiscreteDistance,
        ZeroConcentratedDivergence,
        Function::new(|v: &bool| *v),
        PrivacyMap::new(move |_d_in: &u32| rho),
    )
    .map_err(opendp_err)?;
    let approx = make_zCDP_to_approxDP(composed).map_err(opendp_err)?;
    let fixed = make_fix_delta(&approx, delta).map_err(opendp_err)?;
    let (epsilon, _) = fixed.map(&1).map_err(opendp_err)?;
    Ok(epsilon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accountant::{RdpAccountant, epsilon_from_rdp};

    #[test]
    fn matches_opendp_published_value() {
        // opendp rust/src/combinators/measure_cast/zCDP_to_approxDP/test.rs,
        // test_zCDP_to_approxDP_nontrivial (opendp-0.16.0 crate, lines 10-33): Gaussian scale 4,
        // d_in 1, so rho = 1/32, has epsilon 0.6880024554878085 at delta 1e-3.
        let mut acc = ZcdpAccountant::default();
        acc.compose_gaussian(4.0, 1).unwrap();
        assert_eq!(acc.rho(), 1.0 / 32.0);
        let eps = acc.epsilon(1e-3).unwrap();
        assert!((eps - 0.6880024554878085).abs() < 1e-3 * 0.688, "{eps}");
    }

    #[test]
    fn agrees_with_rdp_for_unsampled_gaussian() {
        // A Gaussian's RDP curve is alpha * rho: converting it over a dense order grid with the
        // same CKS bound must land near OpenDP's (which optimises over all alpha exactly).
        let mut z = ZcdpAccountant::default();
        z.compose_gaussian(2.0, 50).unwrap();
        let eps_z = z.epsilon(1e-6).unwrap();
        let orders: Vec<f64> = (101..20000).map(|i| i as f64 * 0.01).collect();
        let mut r = RdpAccountant::new(orders.clone()).unwrap();
        r.compose_poisson_gaussian(2.0, 1.0, 50).unwrap();
        let eps_r = epsilon_from_rdp(&orders, r.rdp(), 1e-6).unwrap().0;
        assert!((eps_z - eps_r).abs() < 1e-2 * eps_r, "{eps_z} vs {eps_r}");
        // More composition, more epsilon.
        z.compose_gaussian(2.0, 1).unwrap();
        assert!(z.epsilon(1e-6).unwrap() > eps_z);
        assert!(zcdp_to_epsilon(-1.0, 1e-6).is_err());
    }
}
