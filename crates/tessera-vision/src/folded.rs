//! EfficientNet-Lite0 for inference with every batch norm folded into the
//! convolution before it.
//!
//! A frozen backbone runs its batch norms in inference mode, where each is
//! an affine map per channel: `gamma * (y - mean) / sqrt(var + eps) + beta`.
//! Applied to a convolution's output it folds into that convolution's
//! weights (scaled per output channel) and a bias, so the network does the
//! same arithmetic with two fewer passes over every activation. Feature
//! extraction, the hot path of head-only transfer learning, uses this form;
//! training keeps the unfolded modules (their parameters are what trains).
//! Results agree with [`EfficientNetLite0::features`] to float rounding.

use burn::module::Param;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu6;

use crate::efficientnet::{EfficientNetLite0, MbConvBlock};

/// Convolutions with their batch norms folded in; no trainable state.
#[derive(Clone, Debug)]
pub struct FoldedEfficientNet {
    pub(crate) stem: Conv2d,
    pub(crate) blocks: Vec<FoldedBlock>,
    pub(crate) head: Conv2d,
}

#[derive(Clone, Debug)]
pub(crate) struct FoldedBlock {
    pub(crate) expand: Option<Conv2d>,
    pub(crate) depthwise: Conv2d,
    pub(crate) project: Conv2d,
    pub(crate) residual: bool,
}

/// `bn(conv(x))` as one convolution: weights scaled by `gamma / sqrt(var +
/// eps)` per output channel, bias `beta + (b - mean) * scale`.
fn fold(conv: &Conv2d, bn: &BatchNorm) -> Conv2d {
    let [c_out, ..] = conv.weight.dims();
    let scale = bn.gamma.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
    let shifted = match &conv.bias {
        Some(b) => b.val() - bn.running_mean.value(),
        None => -bn.running_mean.value(),
    };
    let bias = bn.beta.val() + shifted * scale.clone();
    let weight = conv.weight.val() * scale.reshape([c_out, 1, 1, 1]);
    Conv2d { weight: Param::from_tensor(weight), bias: Some(Param::from_tensor(bias)), ..conv.clone() }
}

impl FoldedBlock {
    fn new(b: &MbConvBlock) -> Self {
        let expand = match (&b.expand_conv, &b.bn0) {
            (Some(conv), Some(bn)) => Some(fold(conv, bn)),
            _ => None,
        };
        Self {
            expand,
            depthwise: fold(&b.depthwise_conv, &b.bn1),
            project: fold(&b.project_conv, &b.bn2),
            residual: b.residual,
        }
    }

    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let mut x = input.clone();
        if let Some(conv) = &self.expand {
            x = relu6(conv.forward(x));
        }
        x = relu6(self.depthwise.forward(x));
        x = self.project.forward(x);
        if self.residual { x + input } else { x }
    }
}

impl FoldedEfficientNet {
    /// Folds `net`'s batch norms (their running statistics, i.e. inference mode).
    pub fn new(net: &EfficientNetLite0) -> Self {
        // LoRA adapters are merged first: folding knows plain convolutions only.
        let merged;
        let net = if net.has_adapters() {
            merged = crate::lora::merge_adapters(net.clone());
            &merged
        } else {
            net
        };
        Self {
            stem: fold(&net.conv_stem, &net.bn0),
            blocks: net.blocks.iter().map(FoldedBlock::new).collect(),
            head: fold(&net.conv_head, &net.bn1),
        }
    }

    /// Global-average-pooled features: `[n, 1280]`, as
    /// [`EfficientNetLite0::features`] computes them in inference mode.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu6(self.stem.forward(images));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = relu6(self.head.forward(x));
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Distribution};

    use super::*;

    /// Random weights plus non-trivial running statistics (a fresh network's
    /// are 0 and 1, which would hide a mistake in the mean or the variance).
    #[test]
    fn folded_features_match_the_unfolded_network() {
        let device = Device::flex();
        let mut net = EfficientNetLite0::random(&device, 3);
        let stats = |bn: &mut BatchNorm, k: f64| {
            let [c] = bn.gamma.dims();
            bn.running_mean =
                burn::module::RunningState::new(Tensor::random([c], Distribution::Uniform(-0.5, 0.5), &device));
            bn.running_var =
                burn::module::RunningState::new(Tensor::random([c], Distribution::Uniform(0.5, 2.0), &device));
            bn.gamma = Param::from_tensor(Tensor::random([c], Distribution::Uniform(0.5, 1.5), &device));
            bn.beta = Param::from_tensor(Tensor::random([c], Distribution::Uniform(-k, k), &device));
        };
        stats(&mut net.bn0, 0.1);
        stats(&mut net.bn1, 0.1);
        for b in &mut net.blocks {
            stats(&mut b.bn1, 0.1);
            stats(&mut b.bn2, 0.1);
            if let Some(bn) = b.bn0.as_mut() {
                stats(bn, 0.1);
            }
        }
        let net = net.valid();
        let x = Tensor::<4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let want: Vec<f32> = net.features(x.clone()).into_data().try_into_vec::<f32>().unwrap();
        let got: Vec<f32> = FoldedEfficientNet::new(&net).features(x).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(want.len(), got.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(scale > 1e-2, "features should not vanish: max {scale}");
        assert!(worst <= 1e-4 * scale, "max |folded - unfolded| {worst} at feature scale {scale}");
    }
}
