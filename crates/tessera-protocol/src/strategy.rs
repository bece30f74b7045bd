//! Server optimizers applied to the aggregated update (Reddi et al. 2021,
//! "Adaptive Federated Optimization", Algorithm 2).
//!
//! Each round the aggregator learns only the (weighted) mean client delta
//! `Δ_t = mean(x_client - x_t)`. FedAvg steps along it; the others treat
//! `-Δ_t` as a pseudo-gradient with server-side momentum or adaptivity. The
//! optimizer's state (momentum, second moments) is part of the checkpoint so
//! that a restarted aggregator continues the same trajectory.

use serde::{Deserialize, Serialize};
use tessera_core::{ModelParams, ParamsError};

/// Which server optimizer to run, as written in `aggregator.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StrategyConfig {
    /// x ← x + η Δ.
    FedAvg {
        /// Server learning rate η.
        #[serde(default = "one")]
        server_lr: f32,
    },
    /// m ← β m + Δ; x ← x + η m.
    FedAvgM {
        /// Server learning rate η.
        #[serde(default = "one")]
        server_lr: f32,
        /// Momentum β.
        #[serde(default = "default_momentum")]
        momentum: f32,
    },
    /// Adagrad on the pseudo-gradient: v ← v + Δ².
    FedAdagrad(AdaptiveConfig),
    /// Adam on the pseudo-gradient: v ← β2 v + (1 − β2) Δ².
    FedAdam(AdaptiveConfig),
    /// Yogi on the pseudo-gradient: v ← v − (1 − β2) Δ² sign(v − Δ²).
    FedYogi(AdaptiveConfig),
}

/// Hyper-parameters shared by the adaptive optimizers; defaults follow the
/// paper's recommended grid centre (η = 1e-2, β1 = 0.9, β2 = 0.99, τ = 1e-3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveConfig {
    /// Server learning rate η.
    #[serde(default = "default_adaptive_lr")]
    pub server_lr: f32,
    /// First-moment decay β1.
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    /// Second-moment decay β2.
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    /// Adaptivity τ, added to √v.
    #[serde(default = "default_tau")]
    pub tau: f32,
}

fn one() -> f32 {
    1.0
}
fn default_momentum() -> f32 {
    0.9
}
fn default_adaptive_lr() -> f32 {
    1e-2
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.99
}
fn default_tau() -> f32 {
    1e-3
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig::FedAvg { server_lr: 1.0 }
    }
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self { server_lr: default_adaptive_lr(), beta1: default_beta1(), beta2: default_beta2(), tau: default_tau() }
    }
}

/// Optimizer state carried across rounds: first and second moments, lazily
/// sized on the first step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerOptimizer {
    /// Which optimizer, with its hyper-parameters.
    pub config: StrategyConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl ServerOptimizer {
    /// A fresh optimizer (no moments yet).
    pub fn new(config: StrategyConfig) -> Self {
        Self { config, m: Vec::new(), v: Vec::new() }
    }

    /// First and second moments, for checkpoints (empty before the first step).
    pub fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Rebuild from a checkpoint; both moments must have the same length.
    pub fn from_moments(config: StrategyConfig, m: Vec<f32>, v: Vec<f32>) -> Result<Self, ParamsError> {
        if m.len() != v.len() {
            return Err(ParamsError::FlatLength { expected: m.len(), actual: v.len() });
        }
        Ok(Self { config, m, v })
    }

    /// Apply one server step: `global` is updated in place from the mean
    /// client delta.
    pub fn step(&mut self, global: &mut ModelParams, delta: &ModelParams) -> Result<(), ParamsError> {
        if global.layout() != delta.layout() {
            return Err(ParamsError::LayoutMismatch);
        }
        delta.check_finite()?;
        let n = delta.numel();
        if self.m.len() != n {
            self.m = vec![0.0; n];
            // Algorithm 2 requires v_{-1} >= τ²; we start exactly there.
            let tau = match &self.config {
                StrategyConfig::FedAdagrad(c) | StrategyConfig::FedAdam(c) | StrategyConfig::FedYogi(c) => c.tau,
                _ => 0.0,
            };
            self.v = vec![tau * tau; n];
        }
        let (m, v) = (&mut self.m, &mut self.v);
        let xs = global.values_mut();
        let ds = delta.values();
        match &self.config {
            StrategyConfig::FedAvg { server_lr } => {
                for (x, d) in xs.zip(ds) {
                    *x += server_lr * d;
                }
            }
            StrategyConfig::FedAvgM { server_lr, momentum } => {
                for ((x, d), m) in xs.zip(ds).zip(m.iter_mut()) {
                    *m = momentum * *m + d;
                    *x += server_lr * *m;
                }
            }
            StrategyConfig::FedAdagrad(c) => adaptive_step(c, SecondMoment::Adagrad, xs, ds, m, v),
            StrategyConfig::FedAdam(c) => adaptive_step(c, SecondMoment::Adam, xs, ds, m, v),
            StrategyConfig::FedYogi(c) => adaptive_step(c, SecondMoment::Yogi, xs, ds, m, v),
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum SecondMoment {
    Adagrad,
    Adam,
    Yogi,
}

fn adaptive_step<'a>(
    c: &AdaptiveConfig,
    rule: SecondMoment,
    xs: impl Iterator<Item = &'a mut f32>,
    ds: impl Iterator<Item = &'a f32>,
    m: &mut [f32],
    v: &mut [f32],
) {
    for (((x, d), m), v) in xs.zip(ds).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = c.beta1 * *m + (1.0 - c.beta1) * d;
        let d2 = d * d;
        *v = match rule {
            SecondMoment::Adagrad => *v + d2,
            SecondMoment::Adam => c.beta2 * *v + (1.0 - c.beta2) * d2,
            SecondMoment::Yogi => *v - (1.0 - c.beta2) * d2 * (*v - d2).signum_or_zero(),
        };
        *x += c.server_lr * *m / (v.sqrt() + c.tau);
    }
}

trait SignumOrZero {
    fn signum_or_zero(self) -> Self;
}

impl SignumOrZero for f32 {
    /// `sign` as in the paper (sign(0) = 0), unlike `f32::signum`.
    fn signum_or_zero(self) -> f32 {
        if self > 0.0 {
            1.0
        } else if self < 0.0 {
            -1.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ParamTensor;

    fn p(v: &[f32]) -> ModelParams {
        ModelParams::new(vec![ParamTensor::new("w", vec![v.len()], v.to_vec()).unwrap()])
    }

    fn close(a: &ModelParams, b: &[f32]) {
        for (x, y) in a.values().zip(b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn fedavg_steps_along_delta() {
        let mut opt = ServerOptimizer::new(StrategyConfig::FedAvg { server_lr: 0.5 });
        let mut x = p(&[1.0, 2.0]);
        opt.step(&mut x, &p(&[0.2, -0.4])).unwrap();
        close(&x, &[1.1, 1.8]);
    }

    #[test]
    fn fedavgm_by_hand() {
        let mut opt = ServerOptimizer::new(StrategyConfig::FedAvgM { server_lr: 1.0, momentum: 0.9 });
        let mut x = p(&[0.0, 0.0]);
        opt.step(&mut x, &p(&[1.0, -1.0])).unwrap(); // m = Δ
        close(&x, &[1.0, -1.0]);
        opt.step(&mut x, &p(&[1.0, 0.0])).unwrap(); // m = 0.9*[1,-1] + [1,0] = [1.9, -0.9]
        close(&x, &[2.9, -1.9]);
    }

    // Hand computation for Δ = [0.5, -0.2], β1 = 0.9, β2 = 0.99, τ = 0.1, η = 1,
    // v_{-1} = τ² = 0.01, m_{-1} = 0: m = 0.1 Δ = [0.05, -0.02].
    fn adaptive() -> AdaptiveConfig {
        AdaptiveConfig { server_lr: 1.0, beta1: 0.9, beta2: 0.99, tau: 0.1 }
    }

    #[test]
    fn fedadagrad_by_hand() {
        let mut opt = ServerOptimizer::new(StrategyConfig::FedAdagrad(adaptive()));
        let mut x = p(&[0.0, 0.0]);
        opt.step(&mut x, &p(&[0.5, -0.2])).unwrap();
        // v = 0.01 + Δ² = [0.26, 0.05]
        close(&x, &[0.05 / (0.26f32.sqrt() + 0.1), -0.02 / (0.05f32.sqrt() + 0.1)]);
    }

    #[test]
    fn fedadam_by_hand() {
        let mut opt = ServerOptimizer::new(StrategyConfig::FedAdam(adaptive()));
        let mut x = p(&[0.0, 0.0]);
        opt.step(&mut x, &p(&[0.5, -0.2])).unwrap();
        // v = 0.99*0.01 + 0.01*Δ² = [0.0124, 0.0103]
        close(&x, &[0.05 / (0.0124f32.sqrt() + 0.1), -0.02 / (0.0103f32.sqrt() + 0.1)]);
    }

    #[test]
    fn fedyogi_by_hand() {
        let mut opt = ServerOptimizer::new(StrategyConfig::FedYogi(adaptive()));
        let mut x = p(&[0.0, 0.0]);
        opt.step(&mut x, &p(&[0.5, -0.2])).unwrap();
        // v = 0.01 - 0.01*Δ²*sign(0.01 - Δ²) = [0.01 + 0.0025, 0.01 + 0.0004]
        close(&x, &[0.05 / (0.0125f32.sqrt() + 0.1), -0.02 / (0.0104f32.sqrt() + 0.1)]);
        // Second step where v > Δ²: v shrinks toward Δ².
        opt.step(&mut x, &p(&[0.0, 0.0])).unwrap();
        // m = 0.9*[0.05,-0.02]; v unchanged since Δ² = 0 → sign(v) = 1 but Δ² = 0.
        let x1 = [0.05 / (0.0125f32.sqrt() + 0.1), -0.02 / (0.0104f32.sqrt() + 0.1)];
        close(&x, &[x1[0] + 0.045 / (0.0125f32.sqrt() + 0.1), x1[1] - 0.018 / (0.0104f32.sqrt() + 0.1)]);
    }

    #[test]
    fn rejects_mismatch_and_nan() {
        let mut opt = ServerOptimizer::new(StrategyConfig::default());
        let mut x = p(&[0.0, 0.0]);
        assert!(opt.step(&mut x, &p(&[0.0])).is_err());
        assert!(opt.step(&mut x, &p(&[f32::NAN, 0.0])).is_err());
    }

    #[test]
    fn state_round_trips_through_moments() {
        let cfg = StrategyConfig::FedAdam(adaptive());
        let mut a = ServerOptimizer::new(cfg.clone());
        let mut xa = p(&[0.0, 0.0]);
        a.step(&mut xa, &p(&[0.5, -0.2])).unwrap();
        let (m, v) = a.moments();
        let mut b = ServerOptimizer::from_moments(cfg.clone(), m.to_vec(), v.to_vec()).unwrap();
        let mut xb = xa.clone();
        a.step(&mut xa, &p(&[0.1, 0.3])).unwrap();
        b.step(&mut xb, &p(&[0.1, 0.3])).unwrap();
        assert_eq!(xa, xb, "a restored optimizer continues the same trajectory");
        assert!(ServerOptimizer::from_moments(cfg, vec![0.0], vec![]).is_err());
    }

    #[test]
    fn config_parses_from_toml_shape() {
        let c: StrategyConfig = serde_json::from_str(r#"{"kind":"fedyogi","tau":0.01}"#).unwrap();
        assert_eq!(c, StrategyConfig::FedYogi(AdaptiveConfig { tau: 0.01, ..AdaptiveConfig::default() }));
    }
}
