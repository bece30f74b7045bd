//! Where a backward pass through the trainable trunk hands over what it
//! computed, layer by layer.
//!
//! The walk itself ([`super::HostFineTuner::backward_into`]) only carries
//! the loss gradient from layer to layer. At each trainable layer it gives
//! a [`LayerSink`] the layer's input and the gradient at its output, and
//! the sink turns them into parameter gradients: summed over the batch
//! ([`Summed`], for the optimizer or one example's DP-SGD gradient), or per
//! image with their norms (`super::ghost`, DP-SGD's clipping without a
//! backward pass per example).

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::Ids;
use super::ops::{self, Affine};
use crate::nhwc::Geometry;

/// What the backward walk hands over at each trainable layer.
pub(super) trait LayerSink {
    /// The batch norm `ids` (its `gamma` and `beta`) after a convolution:
    /// on entry `g` holds the loss gradient at the norm's output (after the
    /// ReLU6 when `relu6`), on exit the one at the convolution's output `z`.
    fn affine(&mut self, ids: &Ids, g: &mut [f32], z: &[f32], bn: &Affine, relu6: bool);
    /// The weight `id` of a 1×1 convolution: `x` its input `[rows, c_in]`,
    /// `g` the loss gradient at its output `[rows, c_out]`.
    fn pointwise(&mut self, id: ParamId, x: &[f32], c_in: usize, g: &[f32], c_out: usize);
    /// The weight `id` of a depthwise convolution over `geometry`: `x` its
    /// input, `g` the loss gradient at its output.
    fn depthwise(&mut self, id: ParamId, geometry: &Geometry, x: &[f32], g: &[f32]);
}

/// Where summed gradients go: burn's optimizer tensors for a batch
/// ([`TrunkGrads`]), or one example's flat gradient under DP-SGD (written
/// in place, no copy or reordering).
pub(super) trait GradSink {
    /// The buffer for the gradient of weight `id` of shape `dims` (burn's
    /// layout); the caller overwrites every value.
    fn weight(&mut self, id: ParamId, dims: &[usize]) -> &mut [f32];
    /// The gradient of the vector `id` (a batch norm's gamma or beta).
    fn vector(&mut self, id: ParamId, values: Vec<f32>);
}

/// Every layer's gradients summed over the batch, into a [`GradSink`].
pub(super) struct Summed<'a>(pub(super) &'a mut dyn GradSink);

impl LayerSink for Summed<'_> {
    fn affine(&mut self, ids: &Ids, g: &mut [f32], z: &[f32], bn: &Affine, relu6: bool) {
        let c = bn.channels();
        let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
        ops::affine_backward(g, z, bn, relu6, &mut dgamma, &mut dbeta);
        self.0.vector(ids.gamma, dgamma);
        self.0.vector(ids.beta, dbeta);
    }

    fn pointwise(&mut self, id: ParamId, x: &[f32], c_in: usize, g: &[f32], c_out: usize) {
        // Straight into burn's [co][ci][1][1].
        ops::weight_grad_out_in(x, c_in, g, c_out, self.0.weight(id, &[c_out, c_in, 1, 1]));
    }

    fn depthwise(&mut self, id: ParamId, geometry: &Geometry, x: &[f32], g: &[f32]) {
        let (c, k) = (geometry.out.c, geometry.kernel);
        let mut dw = vec![0.0; k * k * c];
        ops::depthwise_weight_grad(g, geometry, x, &mut dw);
        depthwise_to_burn(&dw, c, self.0.weight(id, &[c, 1, k, k]));
    }
}

/// A depthwise weight (gradient) from the kernels' `[tap][c]` to burn's
/// `[c][1][k][k]` (k*k*c values: small).
pub(super) fn depthwise_to_burn(dw: &[f32], c: usize, out: &mut [f32]) {
    let taps = dw.len() / c.max(1);
    for tap in 0..taps {
        for ch in 0..c {
            out[ch * taps + tap] = dw[tap * c + ch];
        }
    }
}

/// Gradients of the trainable trunk tensors, in burn's layouts.
#[derive(Debug, Default)]
pub(crate) struct TrunkGrads {
    grads: Vec<ParamGrad>,
}

#[derive(Debug)]
struct ParamGrad {
    id: ParamId,
    dims: Vec<usize>,
    values: Vec<f32>,
}

impl GradSink for TrunkGrads {
    fn weight(&mut self, id: ParamId, dims: &[usize]) -> &mut [f32] {
        let len = dims.iter().product();
        self.grads.push(ParamGrad { id, dims: dims.to_vec(), values: vec![0.0; len] });
        &mut self.grads.last_mut().expect("pushed above").values
    }

    fn vector(&mut self, id: ParamId, values: Vec<f32>) {
        self.grads.push(ParamGrad { id, dims: vec![values.len()], values });
    }
}

impl TrunkGrads {
    /// Number of parameter tensors with a gradient.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.grads.len()
    }

    /// No trainable trunk tensor (a head-only model).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// The gradient of the parameter `id`, as burn-layout values.
    #[cfg(test)]
    pub fn get(&self, id: ParamId) -> Option<&[f32]> {
        self.grads.iter().find(|g| g.id == id).map(|g| g.values.as_slice())
    }

    /// Adds every gradient to `grads` (as tensors on `device`, burn's
    /// non-autodiff device of the model), for the optimizer to apply.
    pub fn register(self, grads: &mut GradientsParams, device: &Device) {
        for g in self.grads {
            match g.dims.len() {
                4 => grads.register::<4>(g.id, Tensor::from_data(TensorData::new(g.values, g.dims), device)),
                _ => grads.register::<1>(g.id, Tensor::from_data(TensorData::new(g.values, g.dims), device)),
            }
        }
    }
}
