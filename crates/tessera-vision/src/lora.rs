//! Low-rank adapters (LoRA, Hu et al. 2021) on EfficientNet-Lite0's 1x1
//! convolutions: the expand and project convolutions of the adapted blocks
//! and the head convolution. Each adapted weight `W` (`[out, in, 1, 1]`)
//! acts as `W + s B A` with `A` `[rank, in]`, `B` `[out, rank]` and
//! `s = alpha / rank`; `W` stays frozen, and only `A`, `B` and the linear
//! head train and travel. `B` starts at zero, so the adapted network starts
//! exactly where the frozen one is.
//!
//! The adapter runs as two 1x1 convolutions beside `W` (`x -> A -> B`),
//! never materialising `B A`: for a rank-4 adapter on the 1152 -> 320
//! project convolution that is 5,888 multiplies per pixel instead of
//! 368,640. Inference and export merge it ([`merge_adapters`]), which gives
//! a plain EfficientNet-Lite0 that every fast kernel of this crate runs.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_core::LoraConfig;

use crate::efficientnet::EfficientNetLite0;
use crate::error::{Result, VisionError};

/// Separates the adapters' seed stream from the head's (both come from `init_seed`).
const LORA_STREAM: u64 = 0x6c6f_7261_0000_0001;

/// One adapter: `x -> s * B(A(x))`, added to the frozen convolution's output.
#[derive(Module, Debug)]
pub(crate) struct LoraAdapter {
    /// `A`, a 1x1 convolution from the layer's input channels down to `rank`.
    pub(crate) lora_a: Conv2d,
    /// `B`, a 1x1 convolution from `rank` up to the layer's output channels; zero at the start.
    pub(crate) lora_b: Conv2d,
    /// `alpha / rank`.
    #[module(skip)]
    pub(crate) scale: f32,
}

fn pointwise(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [1, 1]).with_padding(PaddingConfig2d::Valid).with_bias(false).init(device)
}

impl LoraAdapter {
    /// An adapter for `conv` (`[out, in, 1, 1]`): `A` uniform in
    /// `+-1/sqrt(in)` from `rng` (Kaiming-uniform, as the LoRA reference
    /// code does), `B` zero.
    fn new(conv: &Conv2d, cfg: &LoraConfig, rng: &mut ChaCha8Rng) -> Result<Self> {
        let [c_out, c_in, kh, kw] = conv.weight.val().dims();
        if (kh, kw) != (1, 1) || conv.groups != 1 {
            return Err(VisionError::InvalidConfig("LoRA adapts 1x1, ungrouped convolutions only".into()));
        }
        let device = conv.weight.val().device();
        let bound = 1.0 / (c_in as f32).sqrt();
        let a: Vec<f32> = (0..cfg.rank * c_in).map(|_| rng.gen_range(-bound..bound)).collect();
        let mut lora_a = pointwise(c_in, cfg.rank, &device);
        lora_a.weight = Param::from_tensor(Tensor::from_data(TensorData::new(a, [cfg.rank, c_in, 1, 1]), &device));
        let mut lora_b = pointwise(cfg.rank, c_out, &device);
        lora_b.weight = Param::from_tensor(Tensor::zeros([c_out, cfg.rank, 1, 1], &device));
        Ok(Self { lora_a, lora_b, scale: cfg.scale() })
    }

    /// `conv(x)`, plus the adapter's correction when there is one.
    pub(crate) fn apply(conv: &Conv2d, adapter: Option<&Self>, x: Tensor<4>) -> Tensor<4> {
        match adapter {
            None => conv.forward(x),
            Some(l) => conv.forward(x.clone()) + l.lora_b.forward(l.lora_a.forward(x)).mul_scalar(l.scale),
        }
    }

    /// `W + s B A`, as `W`'s `[out, in, 1, 1]`.
    fn merged(&self, conv: &Conv2d) -> Tensor<4> {
        let w = conv.weight.val();
        let [c_out, c_in, _, _] = w.dims();
        let a = self.lora_a.weight.val();
        let rank = a.dims()[0];
        let b = self.lora_b.weight.val().reshape([c_out, rank]);
        let delta = b.matmul(a.reshape([rank, c_in])).mul_scalar(self.scale);
        w + delta.reshape([c_out, c_in, 1, 1])
    }
}

/// Adds adapters to the last `blocks` blocks' 1x1 convolutions and to the
/// head convolution of `net` (whose weights stay as they are, frozen or not).
pub(crate) fn attach_adapters(
    mut net: EfficientNetLite0,
    blocks: usize,
    cfg: &LoraConfig,
    seed: u64,
) -> Result<EfficientNetLite0> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ LORA_STREAM);
    let first = net.blocks.len().saturating_sub(blocks);
    for block in &mut net.blocks[first..] {
        if let Some(conv) = &block.expand_conv {
            block.expand_lora = Some(LoraAdapter::new(conv, cfg, &mut rng)?);
        }
        block.project_lora = Some(LoraAdapter::new(&block.project_conv, cfg, &mut rng)?);
    }
    net.head_lora = Some(LoraAdapter::new(&net.conv_head, cfg, &mut rng)?);
    Ok(net)
}

/// The network with every adapter folded into its convolution (`W <- W + s
/// B A`) and removed: a plain EfficientNet-Lite0 with the same forward,
/// up to float rounding. The merged weights keep `W`'s trainability.
pub(crate) fn merge_adapters(mut net: EfficientNetLite0) -> EfficientNetLite0 {
    fn fold(conv: &mut Conv2d, adapter: Option<LoraAdapter>) {
        if let Some(l) = adapter {
            let merged = l.merged(conv);
            conv.weight = conv.weight.clone().map(|w| merged.set_require_grad(w.is_require_grad()));
        }
    }
    for block in &mut net.blocks {
        if let Some(conv) = &mut block.expand_conv {
            fold(conv, block.expand_lora.take());
        }
        fold(&mut block.project_conv, block.project_lora.take());
    }
    fold(&mut net.conv_head, net.head_lora.take());
    net
}

/// The module paths of the convolutions that carry an adapter in `net`,
/// each with its adapter's path prefix (`backbone.blocks.15.project_conv`,
/// `backbone.blocks.15.project_lora`).
pub(crate) fn adapted_convs(net: &EfficientNetLite0) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, block) in net.blocks.iter().enumerate() {
        if block.expand_lora.is_some() {
            out.push((format!("backbone.blocks.{i}.expand_conv"), format!("backbone.blocks.{i}.expand_lora")));
        }
        if block.project_lora.is_some() {
            out.push((format!("backbone.blocks.{i}.project_conv"), format!("backbone.blocks.{i}.project_lora")));
        }
    }
    if net.head_lora.is_some() {
        out.push(("backbone.conv_head".into(), "backbone.head_lora".into()));
    }
    out
}
