//! Fine-tuning EfficientNet-Lite0's last blocks on the CPU, channels-last.
//!
//! Training unfrozen backbone blocks through burn's autodiff runs every
//! convolution channels-first, forward and backward; on a CPU that was 0.3×
//! PyTorch's speed, nearly all of it in burn-flex's depthwise convolutions
//! and their transposes (docs/benchmarks.md). [`HostFineTuner`] computes the
//! trunk's part of a training step itself, channels-last, with the kernels
//! of [`crate::frozen`]: the frozen prefix (stem and frozen blocks, batch
//! norms folded) runs forward only; the trainable blocks and the head
//! convolution run forward keeping what their backward pass needs (a
//! [`Tape`]), then backward by hand — every 1×1 convolution and its two
//! gradients are matrix products, the depthwise ones direct loops over
//! contiguous channels.
//!
//! burn still owns the model and everything else: the classification head,
//! the loss and its gradient, and the optimizer. [`TrunkGrads::register`]
//! puts the trunk's gradients into burn's `GradientsParams` under the
//! parameters' own ids, so the optimizer step is burn's and cannot tell the
//! difference. Batch norm stays in inference mode, as in
//! [`TransferModel`]: its `gamma` and `beta` train, its statistics do not.
//! The gradients agree with burn autodiff's (tested in `tests.rs`).

mod example;
mod ghost;
mod ops;
mod sink;
#[cfg(test)]
mod tests;

pub(crate) use example::ExampleGradients;
pub(crate) use sink::TrunkGrads;
use sink::{GradSink, LayerSink, Summed};

use burn::module::ParamId;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;

use crate::efficientnet::{FEATURE_DIM, MbConvBlock, NUM_BLOCKS};
use crate::error::{Result, VisionError};
use crate::frozen::FrozenEfficientNet;
use crate::nhwc::{Geometry, Shape, tensor_values, weights_of};
use crate::transfer::TransferModel;
use ops::Affine;

/// The trunk of a [`TransferModel`] prepared for fine-tuning on a CPU.
#[derive(Debug)]
pub(crate) struct HostFineTuner {
    /// Folded stem and blocks; runs the frozen prefix.
    prefix: FrozenEfficientNet,
    frozen_blocks: usize,
    blocks: Vec<TuneBlock>,
    /// The head convolution; `None` when the whole trunk is frozen.
    head: Option<TunePointwise>,
}

/// Parameter ids of a convolution and the batch norm after it.
#[derive(Clone, Copy, Debug)]
struct Ids {
    weight: ParamId,
    gamma: ParamId,
    beta: ParamId,
}

/// A 1×1 convolution and its batch norm: weight `[c_in, c_out]`.
#[derive(Debug)]
struct TunePointwise {
    weight: Vec<f32>,
    c_in: usize,
    c_out: usize,
    bn: Affine,
    ids: Ids,
}

/// A depthwise k×k convolution and its batch norm: weight `[k*k, c]`.
#[derive(Debug)]
struct TuneDepthwise {
    weight: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
    bn: Affine,
    ids: Ids,
}

#[derive(Debug)]
struct TuneBlock {
    expand: Option<TunePointwise>,
    depthwise: TuneDepthwise,
    project: TunePointwise,
    residual: bool,
}

/// What one forward pass keeps for its backward pass. Reused across steps
/// (its buffers only grow), so a training loop allocates once.
#[derive(Debug, Default)]
pub(crate) struct Tape {
    images: usize,
    blocks: Vec<BlockTape>,
    /// Input of the head convolution (the last block's output) and its shape.
    head_x: Vec<f32>,
    head_shape: Option<Shape>,
    /// Head convolution output before its batch norm.
    head_z: Vec<f32>,
    head_a: Vec<f32>,
}

#[derive(Debug, Default)]
struct BlockTape {
    /// Block input, `x_shape`.
    x: Vec<f32>,
    x_shape: Option<Shape>,
    /// Expand convolution output before its batch norm, and after its ReLU6.
    expand_z: Vec<f32>,
    expand_a: Vec<f32>,
    /// Depthwise output before its batch norm, and after its ReLU6.
    dw_z: Vec<f32>,
    dw_a: Vec<f32>,
    /// Project convolution output before its batch norm.
    project_z: Vec<f32>,
}

/// `buf` resized to `len` (grown when needed, never shrunk in capacity),
/// without clearing: callers overwrite every value.
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

fn affine_of(bn: &BatchNorm) -> Result<Affine> {
    Ok(Affine::new(
        &tensor_values(bn.gamma.val())?,
        &tensor_values(bn.beta.val())?,
        tensor_values(bn.running_mean.value())?,
        &tensor_values(bn.running_var.value())?,
        bn.epsilon,
    ))
}

fn ids_of(conv: &Conv2d, bn: &BatchNorm) -> Ids {
    Ids { weight: conv.weight.id, gamma: bn.gamma.id, beta: bn.beta.id }
}

impl TunePointwise {
    fn new(conv: &Conv2d, bn: &BatchNorm) -> Result<Self> {
        let (w, _, [c_out, c_in, ..]) = weights_of(conv)?;
        // [co][ci] -> [ci][co]
        let mut weight = vec![0.0; w.len()];
        for co in 0..c_out {
            for ci in 0..c_in {
                weight[ci * c_out + co] = w[co * c_in + ci];
            }
        }
        Ok(Self { weight, c_in, c_out, bn: affine_of(bn)?, ids: ids_of(conv, bn) })
    }

    /// `z = x × W`, `a = act(bn(z) [+ residual])`; returns the output shape.
    fn forward(
        &self,
        x: &[f32],
        shape: Shape,
        residual: Option<&[f32]>,
        relu6: bool,
        z: &mut Vec<f32>,
        a: &mut Vec<f32>,
    ) -> Shape {
        let out = Shape { c: self.c_out, ..shape };
        let z = sized(z, out.len());
        ops::matmul(x, self.c_in, &self.weight, self.c_out, z);
        ops::affine_forward(z, &self.bn, residual, relu6, sized(a, out.len()));
        out
    }

    /// From `g` (the gradient at the output, consumed) to the gradient at
    /// the input when `want_input`; the parameters' gradients go to `out`.
    fn backward(
        &self,
        x: &[f32],
        z: &[f32],
        mut g: Vec<f32>,
        relu6: bool,
        want_input: bool,
        out: &mut dyn LayerSink,
    ) -> Option<Vec<f32>> {
        out.affine(&self.ids, &mut g, z, &self.bn, relu6);
        out.pointwise(self.ids.weight, x, self.c_in, &g, self.c_out);
        want_input.then(|| {
            let mut dx = vec![0.0; x.len()];
            ops::matmul_transposed(&g, self.c_out, &self.weight, self.c_in, &mut dx);
            dx
        })
    }
}

impl TuneDepthwise {
    fn new(conv: &Conv2d, bn: &BatchNorm) -> Result<Self> {
        let (w, _, [c, _, k, _]) = weights_of(conv)?;
        let mut weight = vec![0.0; w.len()];
        for ch in 0..c {
            for tap in 0..k * k {
                weight[tap * c + ch] = w[ch * k * k + tap];
            }
        }
        Ok(Self { weight, channels: c, kernel: k, stride: conv.stride[0], bn: affine_of(bn)?, ids: ids_of(conv, bn) })
    }

    fn geometry(&self, x: Shape) -> Geometry {
        Geometry::new(x, self.channels, self.kernel, self.stride)
    }

    fn backward(
        &self,
        x: &[f32],
        shape: Shape,
        z: &[f32],
        mut g: Vec<f32>,
        want_input: bool,
        out: &mut dyn LayerSink,
    ) -> Option<Vec<f32>> {
        let geometry = self.geometry(shape);
        out.affine(&self.ids, &mut g, z, &self.bn, true);
        out.depthwise(self.ids.weight, &geometry, x, &g);
        want_input.then(|| {
            let mut dx = vec![0.0; shape.len()];
            ops::depthwise_input_grad(&g, &geometry, &self.weight, &mut dx);
            dx
        })
    }
}

impl TuneBlock {
    fn new(b: &MbConvBlock) -> Result<Self> {
        let expand = match (&b.expand_conv, &b.bn0) {
            (Some(conv), Some(bn)) => Some(TunePointwise::new(conv, bn)?),
            _ => None,
        };
        Ok(Self {
            expand,
            depthwise: TuneDepthwise::new(&b.depthwise_conv, &b.bn1)?,
            project: TunePointwise::new(&b.project_conv, &b.bn2)?,
            residual: b.residual,
        })
    }

    /// Runs the block on `t.x` (already filled, `x` its shape); returns the
    /// output shape, the output itself in `out`.
    fn forward(&self, t: &mut BlockTape, x: Shape, out: &mut Vec<f32>) -> Shape {
        t.x_shape = Some(x);
        let x_len = x.len();
        let hidden = match &self.expand {
            Some(pw) => pw.forward(&t.x[..x_len], x, None, true, &mut t.expand_z, &mut t.expand_a),
            None => x,
        };
        let dw_in: &[f32] = if self.expand.is_some() { &t.expand_a[..hidden.len()] } else { &t.x[..x_len] };
        let geometry = self.depthwise.geometry(hidden);
        let d = geometry.out;
        ops::depthwise_forward(&self.depthwise.weight, &geometry, dw_in, sized(&mut t.dw_z, d.len()));
        ops::affine_forward(&t.dw_z[..d.len()], &self.depthwise.bn, None, true, sized(&mut t.dw_a, d.len()));
        let residual = self.residual.then_some(&t.x[..x_len]);
        self.project.forward(&t.dw_a[..d.len()], d, residual, false, &mut t.project_z, out)
    }

    /// From the gradient at the block's output to the one at its input (when `want_input`).
    fn backward(&self, t: &BlockTape, g: Vec<f32>, want_input: bool, out: &mut dyn LayerSink) -> Option<Vec<f32>> {
        let x = t.x_shape.expect("the tape holds this block's forward pass");
        let hidden = Shape { c: self.depthwise.channels, ..x };
        let d = self.depthwise.geometry(hidden).out;
        let skip = (self.residual && want_input).then(|| g.clone());
        let g = self.project.backward(
            &t.dw_a[..d.len()],
            &t.project_z[..Shape { c: self.project.c_out, ..d }.len()],
            g,
            false,
            true,
            out,
        )?;
        let dx = match &self.expand {
            Some(pw) => {
                let (e, z) = (&t.expand_a[..hidden.len()], &t.dw_z[..d.len()]);
                let g = self.depthwise.backward(e, hidden, z, g, true, out)?;
                pw.backward(&t.x[..x.len()], &t.expand_z[..hidden.len()], g, true, want_input, out)
            }
            None => self.depthwise.backward(&t.x[..x.len()], hidden, &t.dw_z[..d.len()], g, want_input, out),
        };
        match (dx, skip) {
            (Some(mut dx), Some(skip)) => {
                ops::add_into(&mut dx, &skip);
                Some(dx)
            }
            (dx, _) => dx,
        }
    }
}

impl HostFineTuner {
    /// Prepares `model`'s trunk: the frozen prefix folded, the trainable
    /// blocks (the last `model.trainable_blocks`) and head convolution as
    /// they are now.
    pub fn new(model: &TransferModel) -> Result<Self> {
        let frozen_blocks = NUM_BLOCKS - model.trainable_blocks.min(NUM_BLOCKS);
        let mut tuner =
            Self { prefix: FrozenEfficientNet::new(&model.backbone)?, frozen_blocks, blocks: Vec::new(), head: None };
        tuner.refresh(model)?;
        Ok(tuner)
    }

    /// Reloads the trainable tensors from `model` (after an optimizer step).
    pub fn refresh(&mut self, model: &TransferModel) -> Result<()> {
        if model.trainable_blocks.min(NUM_BLOCKS) != NUM_BLOCKS - self.frozen_blocks {
            return Err(VisionError::InvalidConfig("the model's trainable blocks changed under the fine-tuner".into()));
        }
        if self.frozen_blocks == NUM_BLOCKS {
            return Ok(());
        }
        let bb = &model.backbone;
        self.blocks = bb.blocks[self.frozen_blocks..].iter().map(TuneBlock::new).collect::<Result<_>>()?;
        self.head = Some(TunePointwise::new(&bb.conv_head, &bb.bn1)?);
        Ok(())
    }

    /// Pooled features `[n, 1280]` of images `[n, c, h, w]` (channels-first
    /// values), keeping in `tape` what [`backward`](Self::backward) needs.
    pub fn forward(&self, images: &[f32], dims: [usize; 4], tape: &mut Tape) -> Result<Vec<f32>> {
        if self.head.is_none() {
            tape.images = dims[0];
            return self.prefix.features_nchw(images, dims);
        }
        let (x0, x) = self.frozen_prefix(images, dims)?;
        self.forward_trainable(x0, x, tape)
    }

    /// The frozen prefix's output for images `[n, c, h, w]`: channels-last,
    /// image after image, with its shape. It does not depend on the
    /// trainable tensors, so it can be computed once for many steps or examples.
    pub(crate) fn frozen_prefix(&self, images: &[f32], dims: [usize; 4]) -> Result<(Vec<f32>, Shape)> {
        self.prefix.prefix_nhwc(images, dims, self.frozen_blocks)
    }

    /// The trainable part's forward pass from the frozen prefix's output `x0`
    /// (of shape `x`); pooled features, keeping the tape.
    pub(crate) fn forward_trainable(&self, x0: Vec<f32>, mut x: Shape, tape: &mut Tape) -> Result<Vec<f32>> {
        let Some(head) = &self.head else {
            return Err(VisionError::InvalidConfig(
                "the whole trunk is frozen: nothing to run after the prefix".into(),
            ));
        };
        if x0.len() != x.len() {
            return Err(VisionError::InvalidConfig("prefix output and shape disagree".into()));
        }
        tape.images = x.n;
        tape.blocks.resize_with(self.blocks.len(), BlockTape::default);
        let mut input = x0;
        for (b, t) in self.blocks.iter().zip(tape.blocks.iter_mut()) {
            std::mem::swap(&mut t.x, &mut input);
            x = b.forward(t, x, &mut input);
        }
        std::mem::swap(&mut tape.head_x, &mut input);
        tape.head_shape = Some(x);
        let h = head.forward(&tape.head_x[..x.len()], x, None, true, &mut tape.head_z, &mut tape.head_a);
        let mut features = vec![0.0; x.n * FEATURE_DIM];
        ops::pool(&tape.head_a[..h.len()], h, &mut features);
        Ok(features)
    }

    /// Gradients of the trainable trunk tensors, from `dfeatures`, the
    /// loss gradient at the pooled features of the `tape`'s forward pass.
    pub fn backward(&self, tape: &Tape, dfeatures: &[f32]) -> Result<TrunkGrads> {
        let mut out = TrunkGrads::default();
        self.backward_into(tape, dfeatures, &mut Summed(&mut out))?;
        Ok(out)
    }

    /// [`backward`](Self::backward) into any [`LayerSink`]: summed over the
    /// batch ([`Summed`]) or per image (`ghost::PerImageGrads`); nothing is handed over
    /// when the whole trunk is frozen.
    fn backward_into(&self, tape: &Tape, dfeatures: &[f32], out: &mut dyn LayerSink) -> Result<()> {
        let Some(head) = &self.head else { return Ok(()) };
        let (Some(x), true) = (tape.head_shape, tape.blocks.len() == self.blocks.len()) else {
            return Err(VisionError::InvalidConfig("backward without a matching forward pass".into()));
        };
        if dfeatures.len() != tape.images * FEATURE_DIM {
            return Err(VisionError::InvalidConfig(format!(
                "feature gradient holds {} values, the forward pass had {} images",
                dfeatures.len(),
                tape.images
            )));
        }
        let h = Shape { c: FEATURE_DIM, ..x };
        let mut g = vec![0.0; h.len()];
        ops::spread_pooled(dfeatures, h, &mut g);
        let mut g = head.backward(&tape.head_x[..x.len()], &tape.head_z[..h.len()], g, true, true, out);
        for (i, (b, t)) in self.blocks.iter().zip(&tape.blocks).enumerate().rev() {
            let want_input = i > 0;
            g = b.backward(t, g.expect("a later layer asked for this gradient"), want_input, out);
        }
        Ok(())
    }
}
