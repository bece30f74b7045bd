//! DP-SGD's per-example clipping through the trainable trunk without a
//! backward pass per example: ghost clipping (Li et al. 2021) in its
//! "book-keeping" form (Bu et al. 2022).
//!
//! Batch norm runs in inference mode, so the images of a batch never mix:
//! one backward pass of the whole batch already holds, at every trainable
//! layer, each image's own input and output gradient, and that is all its
//! gradient's norm needs.
//!
//! - A 1×1 convolution's weight gradient for image `i` is `X_iᵀ G_i`; its
//!   norm comes from products of pixel pairs ([`ops::pointwise_norms`]) and
//!   is never formed in the last blocks, whose weights hold nearly all of
//!   the trainable values.
//! - A depthwise convolution's weight (k·k·c values) and a batch norm's
//!   gamma and beta (c each) are small: their gradients are formed per image.
//!
//! Once every image's norm is known (the head's part added by the caller),
//! its clip factor scales its rows of each kept output gradient, and one
//! product per 1×1 convolution, `Xᵀ (c ⊙ G)`, gives the clipped sum; the
//! small tensors are summed with their factors. Since each image's share of
//! every gradient is linear in its output gradient, this is exactly
//! `Σ c_i g_i`, up to f32 rounding. The walk, its matrix products and the
//! model's layout are the non-private step's; per image, only norms.

use burn::module::ParamId;

use super::Ids;
use super::ops::{self, Affine};
use super::sink::{GradSink, LayerSink, depthwise_to_burn};
use crate::nhwc::Geometry;

/// Every image's share of the trunk's gradients, kept for the clipped sum,
/// and each image's squared gradient norm so far.
pub(super) struct PerImageGrads {
    norms: Vec<f64>,
    layers: Vec<Layer>,
}

enum Layer {
    /// A 1×1 convolution's weight: its input and the gradient at its
    /// output, every image's rows.
    Pointwise { id: ParamId, x: Vec<f32>, c_in: usize, g: Vec<f32>, c_out: usize },
    /// A small tensor's gradient formed per image: `values` holds one
    /// gradient of shape `dims` (burn's layout) per image, image after image.
    Formed { id: ParamId, dims: Vec<usize>, values: Vec<f32> },
}

impl PerImageGrads {
    /// For a backward pass over `images` images.
    pub(super) fn new(images: usize) -> Self {
        Self { norms: vec![0.0; images], layers: Vec::new() }
    }

    /// Adds `squared[i]` to image `i`'s squared norm (a part the caller
    /// computed, such as the head's).
    pub(super) fn add_squared_norms(&mut self, squared: &[f64]) {
        self.norms.iter_mut().zip(squared).for_each(|(n, s)| *n += s);
    }

    /// Each image's gradient norm over every tensor handed over so far.
    pub(super) fn norms(&self) -> impl Iterator<Item = f64> + '_ {
        self.norms.iter().map(|s| s.sqrt())
    }

    fn add_formed(&mut self, id: ParamId, dims: Vec<usize>, values: Vec<f32>) {
        let len: usize = dims.iter().product();
        for (norm, v) in self.norms.iter_mut().zip(values.chunks_exact(len)) {
            *norm += ops::dot64(v, v);
        }
        self.layers.push(Layer::Formed { id, dims, values });
    }

    /// The clipped sum into `out`: image `i`'s gradient times `factors[i]`,
    /// nothing of an image whose factor is `None` (a non-finite gradient:
    /// its rows are zeroed, not scaled, since 0 · NaN is NaN).
    pub(super) fn finish(self, factors: &[Option<f32>], out: &mut dyn GradSink) {
        let images = factors.len().max(1);
        for layer in self.layers {
            match layer {
                Layer::Pointwise { id, mut x, c_in, mut g, c_out } => {
                    let (xs, gs) = (x.len() / images, g.len() / images);
                    for ((x, g), f) in x.chunks_exact_mut(xs).zip(g.chunks_exact_mut(gs)).zip(factors) {
                        match f {
                            Some(c) => g.iter_mut().for_each(|v| *v *= c),
                            None => {
                                x.fill(0.0);
                                g.fill(0.0);
                            }
                        }
                    }
                    ops::weight_grad_out_in(&x, c_in, &g, c_out, out.weight(id, &[c_out, c_in, 1, 1]));
                }
                Layer::Formed { id, dims, values } => {
                    let len = dims.iter().product();
                    let mut sum = vec![0.0f32; len];
                    for (v, f) in values.chunks_exact(len).zip(factors) {
                        if let Some(c) = f {
                            sum.iter_mut().zip(v).for_each(|(a, v)| *a += c * v);
                        }
                    }
                    match dims.len() {
                        1 => out.vector(id, sum),
                        _ => out.weight(id, &dims).copy_from_slice(&sum),
                    }
                }
            }
        }
    }
}

impl LayerSink for PerImageGrads {
    fn affine(&mut self, ids: &Ids, g: &mut [f32], z: &[f32], bn: &Affine, relu6: bool) {
        let c = bn.channels();
        let mut parts = vec![0.0; self.norms.len() * 2 * c];
        ops::affine_backward_per_image(g, z, bn, relu6, &mut parts);
        let (mut gamma, mut beta) = (Vec::with_capacity(parts.len() / 2), Vec::with_capacity(parts.len() / 2));
        for part in parts.chunks_exact(2 * c) {
            gamma.extend_from_slice(&part[..c]);
            beta.extend_from_slice(&part[c..]);
        }
        self.add_formed(ids.gamma, vec![c], gamma);
        self.add_formed(ids.beta, vec![c], beta);
    }

    fn pointwise(&mut self, id: ParamId, x: &[f32], c_in: usize, g: &[f32], c_out: usize) {
        ops::pointwise_norms(x, c_in, g, c_out, &mut self.norms);
        self.layers.push(Layer::Pointwise { id, x: x.to_vec(), c_in, g: g.to_vec(), c_out });
    }

    fn depthwise(&mut self, id: ParamId, geometry: &Geometry, x: &[f32], g: &[f32]) {
        let (c, k) = (geometry.out.c, geometry.kernel);
        let mut per_image = vec![0.0; self.norms.len() * k * k * c];
        ops::depthwise_weight_grad_per_image(g, geometry, x, &mut per_image);
        let mut burn = vec![0.0; per_image.len()];
        for (from, to) in per_image.chunks_exact(k * k * c).zip(burn.chunks_exact_mut(k * k * c)) {
            depthwise_to_burn(from, c, to);
        }
        self.add_formed(id, vec![c, 1, k, k], burn);
    }
}
