//! EfficientNet-Lite0 feature extraction on the CPU, channels-last.
//!
//! Head-only transfer learning spends nearly all of its time pushing images
//! through the frozen backbone, so that forward pass is what a member's
//! round costs. burn's CPU backends run convolutions channels-first (NCHW):
//! a depthwise convolution there walks each channel's plane on its own, and
//! at 96 px the late planes are 6×6 and 3×3, rows too short for SIMD
//! (burn-flex's depthwise kernel was 37 % of the forward pass, its ReLU6
//! another 11 %). Channels-last (NHWC) turns that around: the depthwise
//! inner loop runs over 96 to 1152 contiguous channels, and every 1×1
//! convolution is one matrix product over a group of images' pixels.
//!
//! [`FrozenEfficientNet`] holds the folded backbone's weights in those
//! layouts and runs Lite0's fixed graph: matrix products with `gemm` (the
//! kernels burn-flex itself calls), bias, ReLU6 and the residual fused into
//! one pass over each product's output while it is still in cache, and a
//! depthwise kernel compiled for AVX2+FMA, chosen at run time when the CPU
//! has them. Groups of images run in parallel on rayon's pool. It has no
//! trainable state and no autodiff; fine-tuning the last blocks runs their
//! forward and backward in [`crate::tune`], which uses this for the frozen
//! prefix. A GPU device keeps burn's modules.
//! Features agree with [`FoldedEfficientNet::features`] to float rounding
//! (tested below).

use std::sync::Mutex;

use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::efficientnet::{EfficientNetLite0, FEATURE_DIM};
use crate::error::{Result, VisionError};
use crate::folded::FoldedEfficientNet;
use crate::nhwc::{Geometry, Shape, gemm, grow, same, tensor_values, weights_of};

/// Largest activation (in f32 values) one image group may produce: the
/// group's working set then stays within a core's L2 and the shared L3.
const GROUP_BUDGET: usize = 1 << 20;

/// `true` when `device` is one of burn's CPU backends, where this module's
/// kernels beat burn's own; a GPU device keeps the burn path.
pub(crate) fn is_host_device(device: &Device) -> bool {
    let device = device.clone().inner();
    // ndarray is deprecated in burn 0.22 but still a configurable backend here.
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    device == Device::flex() || device == ndarray
}

/// The frozen backbone prepared for feature extraction on a device:
/// [`FrozenEfficientNet`] on a CPU device, burn's folded modules elsewhere.
#[derive(Debug)]
pub enum FeatureExtractor {
    /// A CPU device: the channels-last kernels of this module.
    Host(FrozenEfficientNet),
    /// Any other device (a GPU): burn's modules, batch norms folded.
    Burn(Box<FoldedEfficientNet>),
}

impl FeatureExtractor {
    /// Folds `net`'s batch norms and picks the variant for `device`.
    pub fn new(net: &EfficientNetLite0, device: &Device) -> Result<Self> {
        let folded = FoldedEfficientNet::new(net);
        Ok(if is_host_device(device) {
            FeatureExtractor::Host(FrozenEfficientNet::from_folded(&folded)?)
        } else {
            FeatureExtractor::Burn(Box::new(folded))
        })
    }

    /// Pooled features `[n, 1280]`, row-major, of images `[n, 3, h, w]`.
    pub fn features(&self, images: Tensor<4>) -> Result<Vec<f32>> {
        match self {
            FeatureExtractor::Host(net) => net.features(images),
            FeatureExtractor::Burn(net) => tensor_values(net.features(images)),
        }
    }
}

/// The frozen, batch-norm-folded EfficientNet-Lite0 trunk, channels-last.
#[derive(Debug)]
pub struct FrozenEfficientNet {
    stem: Conv,
    blocks: Vec<Block>,
    head: Pointwise,
    /// Reused activation buffers, one set per concurrently running group.
    scratch: Mutex<Vec<Scratch>>,
}

/// A dense k×k convolution (the stem): weight `[k*k*c_in, c_out]`.
#[derive(Debug)]
struct Conv {
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
}

/// A 1×1 convolution as a matrix: weight `[c_in, c_out]` row-major.
#[derive(Debug)]
struct Pointwise {
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

/// A depthwise k×k convolution: weight `[k*k, c]`, one row per tap.
#[derive(Debug)]
struct Depthwise {
    weight: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
}

#[derive(Debug)]
struct Block {
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    project: Pointwise,
    residual: bool,
}

#[derive(Debug, Default)]
struct Scratch {
    /// Block input (also the residual), then the next block's input.
    x: Vec<f32>,
    /// Expanded activations, then the block's output.
    e: Vec<f32>,
    /// Depthwise output.
    d: Vec<f32>,
}

impl Conv {
    fn new(conv: &Conv2d) -> Result<Self> {
        let (w, bias, [c_out, c_in, k, _]) = weights_of(conv)?;
        // [co][ci][ky][kx] -> [(ky*k + kx)*c_in + ci][co]
        let mut weight = vec![0.0; w.len()];
        for co in 0..c_out {
            for ci in 0..c_in {
                for tap in 0..k * k {
                    weight[(tap * c_in + ci) * c_out + co] = w[(co * c_in + ci) * k * k + tap];
                }
            }
        }
        Ok(Self { weight, bias, c_in, c_out, kernel: k, stride: conv.stride[0] })
    }
}

impl Pointwise {
    fn new(conv: &Conv2d) -> Result<Self> {
        let (w, bias, [c_out, c_in, ..]) = weights_of(conv)?;
        let mut weight = vec![0.0; w.len()];
        for co in 0..c_out {
            for ci in 0..c_in {
                weight[ci * c_out + co] = w[co * c_in + ci];
            }
        }
        Ok(Self { weight, bias, c_in, c_out })
    }
}

impl Depthwise {
    fn new(conv: &Conv2d) -> Result<Self> {
        let (w, bias, [c, _, k, _]) = weights_of(conv)?;
        let mut weight = vec![0.0; w.len()];
        for ch in 0..c {
            for tap in 0..k * k {
                weight[tap * c + ch] = w[ch * k * k + tap];
            }
        }
        Ok(Self { weight, bias, channels: c, kernel: k, stride: conv.stride[0] })
    }
}

impl FrozenEfficientNet {
    /// Folds `net`'s batch norms (inference mode) and lays the weights out channels-last.
    pub fn new(net: &EfficientNetLite0) -> Result<Self> {
        Self::from_folded(&FoldedEfficientNet::new(net))
    }

    /// Lays an already folded network out channels-last (what [`Self::new`] does
    /// after folding).
    pub fn from_folded(net: &FoldedEfficientNet) -> Result<Self> {
        let blocks = net
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    expand: b.expand.as_ref().map(Pointwise::new).transpose()?,
                    depthwise: Depthwise::new(&b.depthwise)?,
                    project: Pointwise::new(&b.project)?,
                    residual: b.residual,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { stem: Conv::new(&net.stem)?, blocks, head: Pointwise::new(&net.head)?, scratch: Mutex::default() })
    }

    /// Pooled features `[n, 1280]` (row-major) of a batch of images `[n, 3, h, w]`.
    pub fn features(&self, images: Tensor<4>) -> Result<Vec<f32>> {
        let [n, c, h, w] = images.dims();
        self.features_nchw(&tensor_values(images)?, [n, c, h, w])
    }

    /// As [`features`](Self::features), from channels-first values.
    pub(crate) fn features_nchw(&self, images: &[f32], dims: [usize; 4]) -> Result<Vec<f32>> {
        self.check_input(images, dims)?;
        let [n, _, h, w] = dims;
        let mut out = vec![0.0; n * FEATURE_DIM];
        self.for_groups(images, dims, &mut out, FEATURE_DIM, |pixels, group, s, features| {
            let x = self.run_trunk(pixels, group, h, w, self.blocks.len(), s);
            self.pool_head(x, s, features);
        });
        Ok(out)
    }

    /// The stem and the first `blocks` blocks only: their output, channels-last
    /// `[n, h', w', c']` and contiguous, with its shape. What fine-tuning the
    /// remaining blocks starts from.
    pub(crate) fn prefix_nhwc(&self, images: &[f32], dims: [usize; 4], blocks: usize) -> Result<(Vec<f32>, Shape)> {
        self.check_input(images, dims)?;
        let [n, _, h, w] = dims;
        let blocks = blocks.min(self.blocks.len());
        let (mut oh, mut ow) =
            (same(h, self.stem.kernel, self.stem.stride).0, same(w, self.stem.kernel, self.stem.stride).0);
        let mut c = self.stem.c_out;
        for b in &self.blocks[..blocks] {
            oh = same(oh, b.depthwise.kernel, b.depthwise.stride).0;
            ow = same(ow, b.depthwise.kernel, b.depthwise.stride).0;
            c = b.project.c_out;
        }
        let shape = Shape { n, h: oh, w: ow, c };
        let mut out = vec![0.0; shape.len()];
        self.for_groups(images, dims, &mut out, oh * ow * c, |pixels, group, s, dst| {
            let x = self.run_trunk(pixels, group, h, w, blocks, s);
            dst.copy_from_slice(&s.x[..x.len()]);
        });
        Ok((out, shape))
    }

    fn check_input(&self, images: &[f32], [n, c, h, w]: [usize; 4]) -> Result<()> {
        if c != self.stem.c_in || images.len() != n * c * h * w || h == 0 || w == 0 {
            return Err(VisionError::InvalidConfig(format!(
                "backbone input must be [n, {}, h, w] with h, w > 0, got [{n}, {c}, {h}, {w}] holding {} values",
                self.stem.c_in,
                images.len()
            )));
        }
        Ok(())
    }

    /// Splits the batch into groups of images that fit [`GROUP_BUDGET`] and
    /// runs `run(pixels, images in group, scratch, out)` on each in parallel,
    /// `out` being the group's `per_image`-sized rows of `out`.
    fn for_groups(
        &self,
        images: &[f32],
        [n, c, h, w]: [usize; 4],
        out: &mut [f32],
        per_image: usize,
        run: impl Fn(&[f32], usize, &mut Scratch, &mut [f32]) + Sync,
    ) {
        if n == 0 {
            return;
        }
        let largest = self.largest_activation(h, w);
        let group = (GROUP_BUDGET / largest).clamp(1, n.div_ceil(rayon::current_num_threads()));
        let image_len = c * h * w;
        out.par_chunks_mut(group * per_image).zip(images.par_chunks(group * image_len)).for_each(|(dst, pixels)| {
            let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
            run(pixels, dst.len() / per_image, &mut scratch, dst);
            self.scratch.lock().unwrap_or_else(|p| p.into_inner()).push(scratch);
        });
    }

    /// Values of the largest activation one image produces at `h × w`.
    fn largest_activation(&self, h: usize, w: usize) -> usize {
        let (mut h, mut w) =
            (same(h, self.stem.kernel, self.stem.stride).0, same(w, self.stem.kernel, self.stem.stride).0);
        let mut largest = h * w * self.stem.c_out;
        for b in &self.blocks {
            let hidden = b.depthwise.channels;
            largest = largest.max(h * w * hidden);
            h = same(h, b.depthwise.kernel, b.depthwise.stride).0;
            w = same(w, b.depthwise.kernel, b.depthwise.stride).0;
        }
        largest.max(h * w * self.head.c_out)
    }

    /// One group of `n` images through the stem and the first `blocks`
    /// blocks; the output is left in `s.x`.
    fn run_trunk(&self, nchw: &[f32], n: usize, h: usize, w: usize, blocks: usize, s: &mut Scratch) -> Shape {
        let c = self.stem.c_in;
        // Channels-last input, in `d` (free until the first depthwise).
        let input = Shape { n, h, w, c };
        grow(&mut s.d, input.len());
        for img in 0..n {
            for ch in 0..c {
                let plane = &nchw[(img * c + ch) * h * w..][..h * w];
                for (px, &v) in plane.iter().enumerate() {
                    s.d[(img * h * w + px) * c + ch] = v;
                }
            }
        }
        let mut x = stem(&self.stem, &s.d[..input.len()], input, &mut s.x);
        for b in &self.blocks[..blocks] {
            let expanded = match &b.expand {
                Some(pw) => {
                    pointwise(pw, &s.x[..x.len()], x, &mut s.e, None, true);
                    Some(Shape { c: pw.c_out, ..x })
                }
                None => None,
            };
            let dw_in: &[f32] = match expanded {
                Some(e) => &s.e[..e.len()],
                None => &s.x[..x.len()],
            };
            let d = depthwise(&b.depthwise, dw_in, expanded.unwrap_or(x), &mut s.d);
            let residual = b.residual.then_some(&s.x[..x.len()]);
            pointwise(&b.project, &s.d[..d.len()], d, &mut s.e, residual, false);
            x = Shape { c: b.project.c_out, ..d };
            std::mem::swap(&mut s.x, &mut s.e);
        }
        x
    }

    /// The head convolution over the trunk's output in `s.x`, then global
    /// average pooling into `features` (one row per image).
    fn pool_head(&self, x: Shape, s: &mut Scratch, features: &mut [f32]) {
        pointwise(&self.head, &s.x[..x.len()], x, &mut s.e, None, true);
        // Global average pool per image.
        let pixels = x.h * x.w;
        let scale = 1.0 / pixels as f32;
        for (img, f) in features.chunks_exact_mut(FEATURE_DIM).enumerate() {
            f.fill(0.0);
            for px in s.e[img * pixels * FEATURE_DIM..][..pixels * FEATURE_DIM].chunks_exact(FEATURE_DIM) {
                f.iter_mut().zip(px).for_each(|(a, v)| *a += v);
            }
            f.iter_mut().for_each(|a| *a *= scale);
        }
    }
}

/// A "same"-padded k×k convolution of `x` with `c_out` output channels into
/// `dst`, one output row (of all images' rows) at a time by `row_kernel`.
fn windowed(
    x: Shape,
    c_out: usize,
    kernel: usize,
    stride: usize,
    dst: &mut Vec<f32>,
    row_kernel: impl Fn(&Geometry, usize, &mut [f32]),
) -> Shape {
    let geometry = Geometry::new(x, c_out, kernel, stride);
    let out = geometry.out;
    grow(dst, out.len());
    for (row, out_row) in dst[..out.len()].chunks_exact_mut(out.w * c_out).enumerate() {
        row_kernel(&geometry, row, out_row);
    }
    out
}

fn stem(conv: &Conv, src: &[f32], x: Shape, dst: &mut Vec<f32>) -> Shape {
    windowed(x, conv.c_out, conv.kernel, conv.stride, dst, |g, row, out| kernels::conv_row(conv, src, g, row, out))
}

fn depthwise(dw: &Depthwise, src: &[f32], x: Shape, dst: &mut Vec<f32>) -> Shape {
    windowed(x, dw.channels, dw.kernel, dw.stride, dst, |g, row, out| kernels::depthwise_row(dw, src, g, row, out))
}

/// `dst = act(src × W + bias [+ residual])` over all of the group's pixels.
fn pointwise(pw: &Pointwise, src: &[f32], x: Shape, dst: &mut Vec<f32>, residual: Option<&[f32]>, relu6: bool) {
    let rows = x.n * x.h * x.w;
    debug_assert_eq!(x.c, pw.c_in);
    grow(dst, rows * pw.c_out);
    // Row panels small enough that the bias/ReLU6 pass reads the product
    // from L2 right after the matrix kernel wrote it.
    const PANEL: usize = 256;
    for (panel, (d, s)) in dst[..rows * pw.c_out]
        .chunks_mut(PANEL * pw.c_out)
        .zip(src[..rows * pw.c_in].chunks(PANEL * pw.c_in))
        .enumerate()
    {
        let m = d.len() / pw.c_out;
        gemm(m, pw.c_out, pw.c_in, s, (1, pw.c_in), &pw.weight, (1, pw.c_out), d);
        let r = residual.map(|r| &r[panel * PANEL * pw.c_out..][..d.len()]);
        kernels::epilogue(d, &pw.bias, r, relu6);
    }
}

/// The inner loops, compiled twice (see [`crate::simd`]).
mod kernels {
    use super::{Conv, Depthwise, Geometry};
    use crate::simd::{dispatch, madd};

    dispatch!(pub(super) epilogue => epilogue_impl(d: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool));
    dispatch!(pub(super) depthwise_row => depthwise_row_impl(dw: &Depthwise, src: &[f32], g: &Geometry, row: usize, out: &mut [f32]));
    dispatch!(pub(super) conv_row => conv_row_impl(conv: &Conv, src: &[f32], g: &Geometry, row: usize, out: &mut [f32]));

    #[inline(always)]
    fn clamp6(v: &mut [f32]) {
        v.iter_mut().for_each(|a| *a = a.clamp(0.0, 6.0));
    }

    #[inline(always)]
    fn epilogue_impl<const FMA: bool>(d: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool) {
        match residual {
            Some(r) => {
                for (row, res) in d.chunks_exact_mut(bias.len()).zip(r.chunks_exact(bias.len())) {
                    row.iter_mut().zip(bias).zip(res).for_each(|((v, b), x)| *v = *v + b + x);
                }
            }
            None => {
                for row in d.chunks_exact_mut(bias.len()) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                    if relu6 {
                        clamp6(row);
                    }
                }
            }
        }
    }

    /// One output row (`row` counts rows of all images) of a depthwise
    /// convolution with bias and ReLU6.
    #[inline(always)]
    fn depthwise_row_impl<const FMA: bool>(dw: &Depthwise, src: &[f32], g: &Geometry, row: usize, out: &mut [f32]) {
        let c = dw.channels;
        let (img, oy) = (row / g.out.h, row % g.out.h);
        for (ox, acc) in out.chunks_exact_mut(c).enumerate() {
            acc.copy_from_slice(&dw.bias);
            for ky in 0..g.kernel {
                for kx in 0..g.kernel {
                    let Some(px) = g.input_pixel(img, oy, ox, ky, kx) else { continue };
                    let input = &src[px * c..][..c];
                    let weight = &dw.weight[(ky * g.kernel + kx) * c..][..c];
                    acc.iter_mut().zip(input).zip(weight).for_each(|((a, &x), &w)| *a = madd::<FMA>(x, w, *a));
                }
            }
            clamp6(acc);
        }
    }

    /// One output row of the dense stem convolution with bias and ReLU6.
    #[inline(always)]
    fn conv_row_impl<const FMA: bool>(conv: &Conv, src: &[f32], g: &Geometry, row: usize, out: &mut [f32]) {
        let (c_in, c_out) = (conv.c_in, conv.c_out);
        let (img, oy) = (row / g.out.h, row % g.out.h);
        for (ox, acc) in out.chunks_exact_mut(c_out).enumerate() {
            acc.copy_from_slice(&conv.bias);
            for ky in 0..g.kernel {
                for kx in 0..g.kernel {
                    let Some(px) = g.input_pixel(img, oy, ox, ky, kx) else { continue };
                    let tap = (ky * g.kernel + kx) * c_in;
                    for ci in 0..c_in {
                        let x = src[px * c_in + ci];
                        let weight = &conv.weight[(tap + ci) * c_out..][..c_out];
                        acc.iter_mut().zip(weight).for_each(|(a, &w)| *a = madd::<FMA>(x, w, *a));
                    }
                }
            }
            clamp6(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::Distribution;

    use super::*;

    fn close(want: &[f32], got: &[f32]) {
        assert_eq!(want.len(), got.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(scale > 1e-2, "features should not vanish: max {scale}");
        assert!(worst <= 1e-4 * scale, "max |channels-last - burn| {worst} at feature scale {scale}");
    }

    /// Odd sizes exercise the asymmetric "same" padding of every stride-2
    /// layer; 5 images split into uneven groups.
    #[test]
    fn matches_burn_on_odd_sizes_and_uneven_groups() {
        let device = Device::flex();
        let net = EfficientNetLite0::random(&device, 11).valid();
        let folded = FoldedEfficientNet::new(&net);
        let frozen = FrozenEfficientNet::from_folded(&folded).unwrap();
        for [h, w] in [[37, 45], [32, 32]] {
            let x = Tensor::<4>::random([5, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
            let want = tensor_values(net.features(x.clone())).unwrap();
            close(&want, &frozen.features(x).unwrap());
        }
    }

    #[test]
    fn refuses_a_wrong_input_shape() {
        let device = Device::flex();
        let frozen = FrozenEfficientNet::new(&EfficientNetLite0::random(&device, 1)).unwrap();
        assert!(frozen.features_nchw(&[0.0; 4 * 8 * 8], [1, 4, 8, 8]).is_err());
        assert!(frozen.features_nchw(&[0.0; 10], [1, 3, 8, 8]).is_err());
        assert_eq!(frozen.features_nchw(&[], [0, 3, 8, 8]).unwrap().len(), 0);
    }

    #[test]
    fn same_padding_matches_burn_rule() {
        assert_eq!(same(96, 3, 2), (48, 0));
        assert_eq!(same(97, 3, 2), (49, 1));
        assert_eq!(same(7, 5, 1), (7, 2));
        assert_eq!(same(3, 5, 2), (2, 2));
    }
}
