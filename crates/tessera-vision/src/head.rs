//! A linear softmax head `z = x W + b` on feature vectors, with the
//! gradients written out in closed form instead of taped by autodiff.
//!
//! For cross-entropy the gradient of example `i` with respect to its logits
//! is `g_i = softmax(z_i) - onehot(y_i)`, so its weight gradient is
//! `x_i g_i^T` and its bias gradient `g_i`: the per-example L2 norm is
//! `sqrt((||x_i||^2 + 1) ||g_i||^2)` without ever materializing a
//! per-example gradient, and the sum of gradients clipped to norm `C` is
//! `X^T (c ⊙ G)` with `c_i = min(1, C / norm_i)`. This is what record-level
//! DP-SGD on a frozen backbone needs; adding the noise is the caller's job
//! (this crate adds none).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Result, VisionError};

/// Head parameters on the host: `weight` is `dim x classes` row-major
/// (burn's `Linear` layout, `[d_in, d_out]`), `bias` has `classes` values.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadWeights {
    /// Input width: [`crate::FEATURE_DIM`] behind EfficientNet-Lite0.
    pub dim: usize,
    /// Number of classes (outputs), at least 2.
    pub classes: usize,
    /// `dim x classes` values, row-major.
    pub weight: Vec<f32>,
    /// `classes` values.
    pub bias: Vec<f32>,
}

/// The sum over a batch of per-example gradients (clipped when asked) and
/// the batch's summed loss (an aggregate, for the non-private path only).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGradSum {
    /// Summed weight gradient, laid out as [`HeadWeights::weight`].
    pub weight: Vec<f32>,
    /// Summed bias gradient, laid out as [`HeadWeights::bias`].
    pub bias: Vec<f32>,
    /// Clipped sums only: examples left out (contributing zero) because
    /// their gradient was not finite. For the member's own report.
    pub zeroed: u64,
    /// Summed cross-entropy (nats) over the batch; divide by its size for the mean.
    pub loss_sum: f64,
}

impl HeadWeights {
    /// Checks that `weight` holds `dim x classes` values and `bias` `classes`.
    pub fn new(dim: usize, classes: usize, weight: Vec<f32>, bias: Vec<f32>) -> Result<Self> {
        if dim == 0 || classes < 2 || weight.len() != dim * classes || bias.len() != classes {
            return Err(VisionError::InvalidConfig(format!(
                "head of {dim} inputs and {classes} classes cannot hold {} weights and {} biases",
                weight.len(),
                bias.len()
            )));
        }
        Ok(Self { dim, classes, weight, bias })
    }

    fn check_batch(&self, features: &[f32], n: usize) -> Result<()> {
        if n == 0 || features.len() != n * self.dim {
            return Err(VisionError::InvalidConfig(format!(
                "{} feature values for {n} examples of width {}",
                features.len(),
                self.dim
            )));
        }
        Ok(())
    }

    fn logits(&self, features: &[f32], n: usize, device: &Device) -> Tensor<2> {
        let x = Tensor::<2>::from_data(TensorData::new(features.to_vec(), [n, self.dim]), device);
        let w = Tensor::<2>::from_data(TensorData::new(self.weight.clone(), [self.dim, self.classes]), device);
        let b = Tensor::<2>::from_data(TensorData::new(self.bias.clone(), [1, self.classes]), device);
        x.matmul(w) + b
    }

    /// Class probabilities, `n x classes` row-major.
    pub(crate) fn probabilities(&self, features: &[f32], device: &Device) -> Result<Vec<f32>> {
        let n = features.len() / self.dim.max(1);
        self.check_batch(features, n)?;
        to_vec(log_softmax(self.logits(features, n, device), 1).exp())
    }

    /// Sum over the batch of each example's cross-entropy gradient; with
    /// `clip = Some(C)` each example's (weight, bias) gradient is first
    /// scaled to L2 norm at most `C`. Labels must lie in `0..classes`.
    pub fn gradient_sum(
        &self,
        features: &[f32],
        labels: &[usize],
        clip: Option<f64>,
        device: &Device,
    ) -> Result<HeadGradSum> {
        let n = labels.len();
        self.check_batch(features, n)?;
        if let Some(&label) = labels.iter().find(|&&l| l >= self.classes) {
            return Err(VisionError::LabelOutOfRange { label, num_classes: self.classes });
        }
        if clip.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(VisionError::InvalidConfig("clip norm must be positive and finite".into()));
        }
        let mut onehot = vec![0.0f32; n * self.classes];
        for (i, &l) in labels.iter().enumerate() {
            onehot[i * self.classes + l] = 1.0;
        }
        let target = Tensor::<2>::from_data(TensorData::new(onehot, [n, self.classes]), device);
        let logp = log_softmax(self.logits(features, n, device), 1);
        let mut g = logp.clone().exp() - target.clone();
        let x = Tensor::<2>::from_data(TensorData::new(features.to_vec(), [n, self.dim]), device);
        if let Some(c) = clip {
            let norm_sq = (x.clone().powi_scalar(2).sum_dim(1).add_scalar(1.0)) * g.clone().powi_scalar(2).sum_dim(1);
            let norms = to_vec(norm_sq.clone())?;
            if norms.iter().any(|v| !v.is_finite()) {
                return self.without_non_finite(features, labels, &norms, c, device);
            }
            // min(1, C' / norm) with C' = C (1 - 2^-20): the f32 margin every clip keeps.
            let scale = norm_sq
                .sqrt()
                .clamp_min(1e-12)
                .recip()
                .mul_scalar((c * tessera_learn::CLIP_SAFETY) as f32)
                .clamp_max(1.0);
            g = g * scale;
        }
        let loss_sum = f64::from(to_vec((logp * target).sum().neg())?[0]);
        let weight = to_vec(x.transpose().matmul(g.clone()))?;
        let bias = to_vec(g.sum_dim(0))?;
        if weight.iter().chain(&bias).any(|v| !v.is_finite()) || (clip.is_none() && !loss_sum.is_finite()) {
            return Err(VisionError::Tensor("non-finite head gradient".into()));
        }
        Ok(HeadGradSum { weight, bias, loss_sum, zeroed: 0 })
    }

    /// The clipped sum over the examples whose gradient norm is finite; the
    /// others contribute zero and are counted (DP-SGD must not decline a
    /// round over one record). Rows are independent, so the finite rows'
    /// gradients do not change.
    fn without_non_finite(
        &self,
        features: &[f32],
        labels: &[usize],
        norms: &[f32],
        clip: f64,
        device: &Device,
    ) -> Result<HeadGradSum> {
        let keep: Vec<usize> = (0..labels.len()).filter(|&i| norms[i].is_finite()).collect();
        let zeroed = (labels.len() - keep.len()) as u64;
        if keep.is_empty() {
            let (weight, bias) = (vec![0.0; self.dim * self.classes], vec![0.0; self.classes]);
            return Ok(HeadGradSum { weight, bias, loss_sum: 0.0, zeroed });
        }
        let d = self.dim;
        let xs: Vec<f32> = keep.iter().flat_map(|&i| features[i * d..(i + 1) * d].iter().copied()).collect();
        let ys: Vec<usize> = keep.iter().map(|&i| labels[i]).collect();
        let sum = self.gradient_sum(&xs, &ys, Some(clip), device)?;
        if sum.zeroed > 0 {
            return Err(VisionError::Tensor("non-finite head gradient".into()));
        }
        Ok(HeadGradSum { zeroed, ..sum })
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().map_err(|e| VisionError::Tensor(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// One example's gradient the slow way, in f64 on the host.
    fn naive(h: &HeadWeights, x: &[f32], y: usize) -> (Vec<f64>, Vec<f64>) {
        let z: Vec<f64> = (0..h.classes)
            .map(|k| {
                f64::from(h.bias[k])
                    + (0..h.dim).map(|j| f64::from(x[j]) * f64::from(h.weight[j * h.classes + k])).sum::<f64>()
            })
            .collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let g: Vec<f64> = (0..h.classes).map(|k| e[k] / s - if k == y { 1.0 } else { 0.0 }).collect();
        let gw = (0..h.dim * h.classes).map(|i| f64::from(x[i / h.classes]) * g[i % h.classes]).collect();
        (gw, g)
    }

    #[test]
    fn clipped_sum_equals_per_example_clipping() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (dim, classes, n) = (7, 3, 12);
        let h = HeadWeights::new(
            dim,
            classes,
            (0..dim * classes).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            (0..classes).map(|_| rng.gen_range(-0.5..0.5)).collect(),
        )
        .unwrap();
        // Features of very different sizes, so that some examples are clipped and some not.
        let x: Vec<f32> = (0..n * dim).map(|i| rng.gen_range(-1.0..1.0) * (1 + i / dim) as f32 * 0.3).collect();
        let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let per: Vec<(Vec<f64>, Vec<f64>)> = (0..n).map(|i| naive(&h, &x[i * dim..(i + 1) * dim], y[i])).collect();
        let norms: Vec<f64> = per.iter().map(|(w, b)| w.iter().chain(b).map(|v| v * v).sum::<f64>().sqrt()).collect();
        let mut sorted = norms.clone();
        sorted.sort_by(f64::total_cmp);
        let clip = sorted[n / 2];
        assert!(sorted[0] < clip && clip < sorted[n - 1], "some clipped, some not");
        let device = Device::flex();
        for c in [None, Some(clip)] {
            let fast = h.gradient_sum(&x, &y, c, &device).unwrap();
            let mut want_w = vec![0.0f64; dim * classes];
            let mut want_b = vec![0.0f64; classes];
            for ((w, b), norm) in per.iter().zip(&norms) {
                let s = c.map_or(1.0, |c| (c / norm).min(1.0));
                want_w.iter_mut().zip(w).for_each(|(a, v)| *a += s * v);
                want_b.iter_mut().zip(b).for_each(|(a, v)| *a += s * v);
            }
            let err = fast
                .weight
                .iter()
                .chain(&fast.bias)
                .zip(want_w.iter().chain(&want_b))
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4, "clip {c:?}: max abs error {err}");
        }
        // Every clipped example contributes at most C: the clipped sum is bounded by n C.
        let clipped = h.gradient_sum(&x, &y, Some(clip), &device).unwrap();
        let total: f64 = clipped.weight.iter().chain(&clipped.bias).map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!(total <= n as f64 * clip * (1.0 + 1e-5));

        // An example whose features overflow contributes zero and is counted:
        // the sum is the sum over the others, not an error.
        let mut bad = x.clone();
        bad[..dim].iter_mut().for_each(|v| *v = 1e30);
        let with_bad = h.gradient_sum(&bad, &y, Some(clip), &device).unwrap();
        let rest = h.gradient_sum(&x[dim..], &y[1..], Some(clip), &device).unwrap();
        assert_eq!((with_bad.zeroed, rest.zeroed), (1, 0));
        assert_eq!((with_bad.weight, with_bad.bias), (rest.weight, rest.bias));
    }

    #[test]
    fn probabilities_sum_to_one_and_bad_shapes_are_errors() {
        let h = HeadWeights::new(2, 2, vec![1.0, -1.0, 0.5, 0.5], vec![0.0, 0.1]).unwrap();
        let p = h.probabilities(&[1.0, 2.0, -1.0, 0.0], &Device::flex()).unwrap();
        assert_eq!(p.len(), 4);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6 && (p[2] + p[3] - 1.0).abs() < 1e-6);
        assert!(h.gradient_sum(&[1.0, 2.0], &[2], None, &Device::flex()).is_err());
        assert!(h.gradient_sum(&[1.0], &[0], None, &Device::flex()).is_err());
        assert!(h.gradient_sum(&[1.0, 2.0], &[0], Some(0.0), &Device::flex()).is_err());
        assert!(HeadWeights::new(2, 2, vec![0.0; 3], vec![0.0; 2]).is_err());
    }
}
