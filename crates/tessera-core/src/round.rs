//! What travels with a round: the settings a client needs to train, mask and
//! privatize its update. The aggregator fills these in from its config; the
//! client checks them against its own policy before acting on them.

use serde::{Deserialize, Serialize};

/// Identifies one federated run. Bound into every secure-aggregation key
/// derivation so that nothing from one run can be replayed into another.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunId(pub [u8; 16]);

impl RunId {
    /// Lower-case hex of the 16 bytes (also its `Display`).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Local training settings for one round.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Passes over the member's training split.
    pub local_epochs: u32,
    /// Examples per local step. Under record-level DP-SGD (Poisson sampling
    /// at `DpSettings::sampling_rate`) the public expected batch size B:
    /// each step's noised sum is divided by it, never by the member's own
    /// row count, so the release's scale is the same for every member and
    /// a function of no one's data.
    pub batch_size: u32,
    /// Step size of the member's local SGD.
    pub learning_rate: f64,
    /// FedProx proximal term; 0 disables it.
    pub proximal_mu: f64,
    /// Seed for shuffling and any sampling on the client; derived per round
    /// and per member by the aggregator so simulations are reproducible.
    pub seed: u64,
    /// FedAvg example weighting: a member weighs its update by
    /// `min(examples, cap) / cap`, and that weight travels inside the masked
    /// vector so the aggregator learns only the sum of weights. 0 = every
    /// member weighs 1 (the choice under client-level DP).
    pub example_weight_cap: u64,
}

/// Which unit a differential-privacy guarantee protects.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyUnit {
    /// Example-level DP: one record's presence is hidden (DP-SGD on the member).
    Record,
    /// Member-level DP: a whole member's data is hidden (clipped updates).
    Client,
}

/// Where the Gaussian noise is added.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoisePlacement {
    /// Each member adds the full noise itself, before anything leaves it.
    Local,
    /// Each member adds a share, so the secure sum carries the full noise.
    Distributed,
    /// The aggregator adds the noise to the sum (trusts the aggregator).
    Central,
}

/// The privacy mechanism a client must apply before its update leaves.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpSettings {
    /// What the guarantee protects: a record or a whole member.
    pub unit: PrivacyUnit,
    /// Who adds the Gaussian noise.
    pub noise: NoisePlacement,
    /// L2 clip: per example (record unit) or per update (client unit).
    pub clip_norm: f64,
    /// Noise standard deviation as a multiple of the clip norm, for the
    /// whole release (the client derives its own share from it).
    pub noise_multiplier: f64,
    /// Poisson sampling rate of examples per DP-SGD step (record unit).
    pub sampling_rate: f64,
    /// Minimum number of contributions the distributed noise is sized for.
    pub min_contributors: u32,
    /// The delta of the run's (epsilon, delta) guarantee. Each side's
    /// accountant reports epsilon at this delta; the client checks its own
    /// budget with its own accountant rather than trusting the aggregator's.
    pub delta: f64,
    /// Adaptive clipping (client unit only): the member clips its update to
    /// `update_clip` and appends its scaled unclipped bit as one more
    /// coordinate, [`UNCLIPPED_TENSOR`]; `clip_norm` then bounds the whole
    /// vector, so noise and accounting stay those of one Gaussian release.
    pub adaptive: Option<AdaptiveClipSettings>,
}

/// One round of adaptive clipping (Andrew et al. 2021), as members apply it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveClipSettings {
    /// L2 clip of the model update this round (the adapted C_t).
    pub update_clip: f64,
    /// The bit travels as `bit_scale · (b - 1/2)`, b = 1 when the update
    /// needed no clipping; the scale makes the vector's noise carry the
    /// count noise sigma_b of the paper.
    pub bit_scale: f64,
}

/// Name of the extra update coordinate that carries a member's scaled
/// unclipped bit under adaptive clipping.
pub const UNCLIPPED_TENSOR: &str = "tessera.adaptive_clip.unclipped";

impl RoundSettings {
    /// Layout of what a member uploads this round: the trainable parameters,
    /// plus [`UNCLIPPED_TENSOR`] under adaptive clipping, plus
    /// [`EVAL_TENSOR`] under private evaluation (in this order).
    ///
    /// A statistics round ([`RoundSettings::stats`]) uploads only the counts,
    /// [`crate::STATS_TENSOR`].
    pub fn update_layout(&self, model: &crate::ParamLayout) -> crate::ParamLayout {
        if let Some(s) = &self.stats {
            return crate::ParamLayout { entries: vec![(crate::STATS_TENSOR.to_string(), vec![s.len()])] };
        }
        let mut layout = model.clone();
        if self.dp.as_ref().is_some_and(|d| d.adaptive.is_some()) {
            layout.entries.push((UNCLIPPED_TENSOR.to_string(), vec![1]));
        }
        if let Some(e) = &self.eval {
            layout.entries.push((EVAL_TENSOR.to_string(), vec![e.len()]));
        }
        layout
    }
}

/// Name of the extra update tensor that carries a member's encoded
/// evaluation under private evaluation ([`EvalRelease`]).
pub const EVAL_TENSOR: &str = "tessera.evaluation";

/// How a member's evaluation travels inside its update (issue #18). The
/// member evaluates the model the round started from on its held-out split.
/// Under the record unit the counts form a block with its own noise
/// ([`Self::encode_records`]). Under the client unit the member encodes the k×k confusion counts and the loss sum as
/// `k² + 1` values of L2 norm at most `norm`; the round's `clip_norm` then
/// bounds update and evaluation together, so both get the same noise and
/// secure aggregation, and the round stays one Gaussian release. Bounds make
/// the sensitivity known: a member's counts are scaled down to total at
/// most `max_examples` (M), and its mean loss is clipped to `[0,
/// loss_bound]` (L), so counts weigh `norm/(M·sqrt 2)` and the loss sum
/// `norm/(L·M·sqrt 2)`. The aggregator decodes only the noised sum.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRelease {
    /// Classes k of the confusion matrix.
    pub classes: u32,
    /// M: the most examples one member's evaluation counts.
    pub max_examples: u64,
    /// L: per-member mean loss is clipped to `[0, L]`.
    pub loss_bound: f64,
    /// L2 bound of the encoded evaluation, inside the round's `clip_norm`.
    pub norm: f64,
}

impl EvalRelease {
    /// Values of [`EVAL_TENSOR`]: `k²` counts, then the loss sum.
    pub fn len(&self) -> usize {
        (self.classes as usize).pow(2) + 1
    }

    /// Whether the tensor is empty (never: the loss sum is always there).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Weights of one count and of one unit of loss sum. The factor below 1
    /// keeps f32 rounding from pushing the encoded norm over `norm`.
    fn weights(&self) -> (f64, f64) {
        let m = self.max_examples.max(1) as f64;
        let count = self.norm * (1.0 - 1.0 / f64::from(1u32 << 20)) / (m * std::f64::consts::SQRT_2);
        (count, count / self.loss_bound.max(f64::MIN_POSITIVE))
    }

    /// A member's evaluation as the tensor's values, norm at most `norm`.
    pub fn encode(&self, m: &crate::EvalMetrics) -> Vec<f32> {
        let k = self.classes as usize;
        let total: u64 = m.confusion.iter().flatten().sum();
        let scale = if total == 0 { 0.0 } else { (self.max_examples as f64 / total as f64).min(1.0) };
        let (wc, wl) = self.weights();
        let mut out = vec![0f32; self.len()];
        for (i, row) in m.confusion.iter().take(k).enumerate() {
            for (j, c) in row.iter().take(k).enumerate() {
                out[i * k + j] = (*c as f64 * scale * wc) as f32;
            }
        }
        let loss = if m.loss.is_finite() { m.loss.clamp(0.0, self.loss_bound) } else { self.loss_bound };
        out[k * k] = (loss * total as f64 * scale * wl) as f32;
        out
    }

    /// Metrics from the noised sum of members' tensors, by
    /// [`crate::metrics_from_noised_counts`]: the signed noised counts (not
    /// rounded, not clamped: that biases accuracy down) and the loss as the
    /// noised loss sum over the noised example count. AUC needs per-example
    /// scores and is not part of the release: it is absent.
    pub fn decode(&self, sum: &[f32]) -> crate::RoundMetrics {
        let (wc, wl) = self.weights();
        let loss_sum = sum.get(self.counts()).map_or(0.0, |v| f64::from(*v) / wl);
        crate::metrics_from_noised_counts(&self.noised_counts(sum, wc), Some(loss_sum))
    }

    /// Cells of the `k × k` block, `k²`.
    fn counts(&self) -> usize {
        (self.classes as usize).pow(2)
    }

    /// The summed block's count cells as signed counts, row = true class.
    fn noised_counts(&self, sum: &[f32], weight: f64) -> Vec<Vec<f64>> {
        let k = self.classes as usize;
        (0..k).map(|i| (0..k).map(|j| sum.get(i * k + j).map_or(0.0, |v| f64::from(*v) / weight)).collect()).collect()
    }

    /// Weight of one count in the record-level form: `norm / max_examples`,
    /// so a member's counts up to M per cell stay within `norm`.
    pub fn record_weight(&self) -> f64 {
        self.norm / self.max_examples.max(1) as f64
    }

    /// The record-level form (`unit = "record"`): the member's raw counts,
    /// each weighing [`Self::record_weight`]. Adding or removing one held-out
    /// record moves one count by 1, so the block's L2 sensitivity is one
    /// weight whatever the member's size (no scaling to M, which would let one
    /// record move every count). The loss sum is not released (it stays 0):
    /// the model reports a mean loss, and one record with an unbounded loss
    /// would move it without bound.
    pub fn encode_records(&self, m: &crate::EvalMetrics) -> Vec<f32> {
        let k = self.classes as usize;
        let w = self.record_weight();
        let mut out = vec![0f32; self.len()];
        for (i, row) in m.confusion.iter().take(k).enumerate() {
            for (j, c) in row.iter().take(k).enumerate() {
                out[i * k + j] = (*c as f64 * w) as f32;
            }
        }
        out
    }

    /// Metrics from the noised sum of record-level blocks, by
    /// [`crate::metrics_from_noised_counts`] on the signed noised counts;
    /// loss and AUC absent (neither is released).
    pub fn decode_records(&self, sum: &[f32]) -> crate::RoundMetrics {
        crate::metrics_from_noised_counts(&self.noised_counts(sum, self.record_weight()), None)
    }
}

/// Secure-aggregation parameters for one round.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecAggSettings {
    /// Shamir threshold t: at least this many survivors or the round aborts.
    pub threshold: u32,
    /// Bits k of the ring Z_{2^k} the masked vector lives in (k <= 32).
    pub modulus_bits: u32,
    /// Update values are clipped to [-clip_range, clip_range] before quantizing.
    pub clip_range: f32,
    /// Neighbours per member in SecAgg+; `None` means the complete graph.
    /// Which members neighbour which is not a setting: the graph's seed is
    /// drawn by the members themselves, by commit and reveal, during the
    /// round (`AggregatorMsg::GraphRoster`).
    pub neighbours: Option<u32>,
}

/// Everything a member is told when a round starts.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundSettings {
    /// How to train locally.
    pub train: TrainSettings,
    /// `None` only in the simulator's `insecure_plaintext` research mode.
    pub secagg: Option<SecAggSettings>,
    /// The privacy mechanism to apply before the update leaves; `None`: no DP.
    pub dp: Option<DpSettings>,
    /// Private evaluation: the member appends its evaluation of the round's
    /// starting model to the update ([`EVAL_TENSOR`]), inside the clipped,
    /// noised and securely summed vector. `None`: no evaluation rides along.
    pub eval: Option<EvalRelease>,
    /// A statistics round (issue #18): instead of training, each member
    /// uploads its bounded counts ([`crate::StatsRelease`]) through the same
    /// clipping, distributed noise and secure aggregation. `None`: training.
    pub stats: Option<Box<crate::StatsRelease>>,
}

/// Round settings with every option off: the fixture this crate's unit
/// tests build messages around.
#[cfg(test)]
pub(crate) fn plain_settings() -> RoundSettings {
    RoundSettings {
        train: TrainSettings {
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 3,
            example_weight_cap: 10,
        },
        secagg: None,
        dp: None,
        eval: None,
        stats: None,
    }
}
