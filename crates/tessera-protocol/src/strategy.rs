//! Server optimizers applied to the aggregated update (Reddi et al. 2021,
//! "Adaptive Federated Optimization", Algorithm 2).
//!
//! Each round the aggregator learns only the (weighted) mean client delta
//! `Δ_t = mean(x_client - x_t)`. FedAvg steps along it; the others treat
//! `-Δ_t` as a pseudo-gradient with server-side momentum or adaptivity. The
//! optimizer's state (momentum, second moments) is part of the checkpoint so
//! that a restarted aggregator continues the same trajectory.
//!
//! Any of them can release an iterate average as the final model
//! (`average_last = k`): the mean of the global models after each of the
//! last k rounds (Polyak and Juditsky 1992; the tail averaging of Jain et al.
//! 2018). Training runs on the raw iterates; only the model released after
//! the last round is the average. Under DP every global model is already a
//! released aggregate, so their mean is post-processing: it costs no epsilon,
//! and it averages out part of the noise each round's model carries.

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
        /// Release the mean of the last k global models as the final model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        average_last: Option<u32>,
    },
    /// m ← β m + Δ; x ← x + η m.
    FedAvgM {
        /// Server learning rate η.
        #[serde(default = "one")]
        server_lr: f32,
        /// Momentum β.
        #[serde(default = "default_momentum")]
        momentum: f32,
        /// Release the mean of the last k global models as the final model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        average_last: Option<u32>,
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
    /// Release the mean of the last k global models as the final model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_last: Option<u32>,
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
        StrategyConfig::FedAvg { server_lr: 1.0, average_last: None }
    }
}

impl StrategyConfig {
    /// `average_last`: how many of the last rounds' global models the final
    /// model averages (0 or 1, or unset: the last model as it is).
    pub fn average_last(&self) -> u32 {
        let k = match self {
            StrategyConfig::FedAvg { average_last, .. } | StrategyConfig::FedAvgM { average_last, .. } => average_last,
            StrategyConfig::FedAdagrad(c) | StrategyConfig::FedAdam(c) | StrategyConfig::FedYogi(c) => &c.average_last,
        };
        k.unwrap_or(0)
    }
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            server_lr: default_adaptive_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            tau: default_tau(),
            average_last: None,
        }
    }
}

/// Optimizer state carried across rounds: first and second moments, lazily
/// sized on the first step, and the running sum of the tail's iterates when
/// the final model is an average.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerOptimizer {
    /// Which optimizer, with its hyper-parameters.
    pub config: StrategyConfig,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Sum of the global models of the tail's rounds so far (f64: k f32
    /// models summed lose no precision), and how many.
    #[serde(skip)]
    tail: Vec<f64>,
    #[serde(skip)]
    tail_len: u32,
}

impl ServerOptimizer {
    /// A fresh optimizer (no moments yet).
    pub fn new(config: StrategyConfig) -> Self {
        Self { config, ..Self::default() }
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
        Ok(Self { config, m, v, ..Self::default() })
    }

    /// [`Self::step`] in a run with `rounds_left` rounds after this one. In
    /// the last `average_last` rounds each new global model is added to the
    /// tail's sum; after the last round (`rounds_left == 0`) `global` becomes
    /// the tail's mean, the model the run releases. Without `average_last`
    /// this is [`Self::step`].
    ///
    /// The tail's sum is not part of a checkpoint: a run restarted inside
    /// its last `average_last` rounds averages the rounds after the restart.
    pub fn step_in_run(
        &mut self,
        global: &mut ModelParams,
        delta: &ModelParams,
        rounds_left: u64,
    ) -> Result<(), ParamsError> {
        self.step(global, delta)?;
        let k = self.config.average_last();
        if k <= 1 || rounds_left >= u64::from(k) {
            return Ok(());
        }
        if self.tail.len() != global.numel() {
            (self.tail, self.tail_len) = (vec![0.0; global.numel()], 0);
        }
        for (s, x) in self.tail.iter_mut().zip(global.values()) {
            *s += f64::from(*x);
        }
        self.tail_len += 1;
        if rounds_left == 0 {
            let n = f64::from(self.tail_len);
            for (x, s) in global.values_mut().zip(&self.tail) {
                *x = (s / n) as f32;
            }
            (self.tail, self.tail_len) = (Vec::new(), 0);
        }
        Ok(())
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
            StrategyConfig::FedAvg { server_lr, .. } => {
                for (x, d) in xs.zip(ds) {
                    *x += server_lr * d;
                }
            }
            StrategyConfig::FedAvgM { server_lr, momentum, .. } => {
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
        let mut opt = ServerOptimizer::new(StrategyConfig::FedAvg { server_lr: 0.5, average_last: None });
        let mut x = p(&[1.0, 2.0]);
        opt.step(&mut x, &p(&[0.2, -0.4])).unwrap();
        close(&x, &[1.1, 1.8]);
    }

    #[test]
    fn fedavgm_by_hand() {
        let mut opt =
            ServerOptimizer::new(StrategyConfig::FedAvgM { server_lr: 1.0, momentum: 0.9, average_last: None });
        let mut x = p(&[0.0, 0.0]);
        opt.step(&mut x, &p(&[1.0, -1.0])).unwrap(); // m = Δ
        close(&x, &[1.0, -1.0]);
        opt.step(&mut x, &p(&[1.0, 0.0])).unwrap(); // m = 0.9*[1,-1] + [1,0] = [1.9, -0.9]
        close(&x, &[2.9, -1.9]);
    }

    // Hand computation for Δ = [0.5, -0.2], β1 = 0.9, β2 = 0.99, τ = 0.1, η = 1,
    // v_{-1} = τ² = 0.01, m_{-1} = 0: m = 0.1 Δ = [0.05, -0.02].
    fn adaptive() -> AdaptiveConfig {
        AdaptiveConfig { server_lr: 1.0, beta1: 0.9, beta2: 0.99, tau: 0.1, average_last: None }
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

    /// `average_last = 3`: training runs on the raw iterates, and only the
    /// model after the last round is the mean of the last three rounds'
    /// global models; earlier rounds, and a run without the key, are plain
    /// steps.
    #[test]
    fn the_final_model_is_the_mean_of_the_last_k_global_models() {
        let deltas = [1.0f32, 2.0, 4.0, 8.0, 16.0];
        let run = |average_last| {
            let mut opt = ServerOptimizer::new(StrategyConfig::FedAvg { server_lr: 1.0, average_last });
            let mut x = p(&[0.0]);
            let mut seen = Vec::new();
            for (i, d) in deltas.iter().enumerate() {
                opt.step_in_run(&mut x, &p(&[*d]), (deltas.len() - 1 - i) as u64).unwrap();
                seen.push(x.values().next().copied().unwrap());
            }
            seen
        };
        // Raw iterates: 1, 3, 7, 15, 31.
        assert_eq!(run(None), [1.0, 3.0, 7.0, 15.0, 31.0]);
        assert_eq!(run(Some(1)), [1.0, 3.0, 7.0, 15.0, 31.0], "the last one model is the last model");
        let avg = run(Some(3));
        assert_eq!(&avg[..4], &[1.0, 3.0, 7.0, 15.0], "training runs on the raw iterates");
        assert!((avg[4] - (7.0 + 15.0 + 31.0) / 3.0).abs() < 1e-6, "{avg:?}");
        assert!((run(Some(9))[4] - 57.0 / 5.0).abs() < 1e-6, "k beyond the run averages every round");
        let c: StrategyConfig = serde_json::from_str(r#"{"kind":"fedavgm","average_last":4}"#).unwrap();
        assert_eq!(c.average_last(), 4);
        assert_eq!(StrategyConfig::default().average_last(), 0);
    }

    #[test]
    fn config_parses_from_toml_shape() {
        let c: StrategyConfig = serde_json::from_str(r#"{"kind":"fedyogi","tau":0.01}"#).unwrap();
        assert_eq!(c, StrategyConfig::FedYogi(AdaptiveConfig { tau: 0.01, ..AdaptiveConfig::default() }));
    }
}
