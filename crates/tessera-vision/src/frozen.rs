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
//! trainable state and no autodiff: training through backbone layers
//! (unfrozen blocks, LoRA) keeps the burn modules, and so does a GPU device.
//! Features agree with [`FoldedEfficientNet::features`] to float rounding
//! (tested below).

use std::sync::Mutex;

use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::efficientnet::{EfficientNetLite0, FEATURE_DIM};
use crate::error::{Result, VisionError};
use crate::folded::FoldedEfficientNet;

/// Largest activation (in f32 values) one image group may produce: the
/// group's working set then stays within a core's L2 and the shared L3.
const GROUP_BUDGET: usize = 1 << 20;

/// `true` when `device` is one of burn's CPU backends, where this module's
/// kernels beat burn's own; a GPU device keeps the burn path.
pub fn is_host_device(device: &Device) -> bool {
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
    Host(FrozenEfficientNet),
    Burn(Box<FoldedEfficientNet>),
}

impl FeatureExtractor {
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

/// A group's activation: `n` images of `h × w` pixels with `c` channels, NHWC.
#[derive(Clone, Copy, Debug)]
struct Shape {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl Shape {
    fn len(self) -> usize {
        self.n * self.h * self.w * self.c
    }
}

/// TensorFlow/burn "same" padding: output `ceil(size / stride)`, the extra
/// pad (if odd) at the end. Returns (output size, pad before).
fn same(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (out, total / 2)
}

fn tensor_values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().map_err(|e| VisionError::Tensor(format!("{e:?}")))
}

/// Folded weight and bias of a burn convolution, as `[c_out, c_in/g * k * k]` and `[c_out]`.
fn weights_of(conv: &Conv2d) -> Result<(Vec<f32>, Vec<f32>, [usize; 4])> {
    let dims = conv.weight.dims();
    let weight = tensor_values(conv.weight.val())?;
    let bias = match &conv.bias {
        Some(b) => tensor_values(b.val())?,
        None => vec![0.0; dims[0]],
    };
    Ok((weight, bias, dims))
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
    pub fn features_nchw(&self, images: &[f32], [n, c, h, w]: [usize; 4]) -> Result<Vec<f32>> {
        if c != self.stem.c_in || images.len() != n * c * h * w || h == 0 || w == 0 {
            return Err(VisionError::InvalidConfig(format!(
                "backbone input must be [n, {}, h, w] with h, w > 0, got [{n}, {c}, {h}, {w}] holding {} values",
                self.stem.c_in,
                images.len()
            )));
        }
        let mut out = vec![0.0; n * FEATURE_DIM];
        if n == 0 {
            return Ok(out);
        }
        let per_image = self.largest_activation(h, w);
        let group = (GROUP_BUDGET / per_image).clamp(1, n.div_ceil(rayon::current_num_threads()));
        let image_len = c * h * w;
        out.par_chunks_mut(group * FEATURE_DIM).zip(images.par_chunks(group * image_len)).for_each(
            |(features, pixels)| {
                let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
                self.run_group(pixels, features.len() / FEATURE_DIM, h, w, &mut scratch, features);
                self.scratch.lock().unwrap_or_else(|p| p.into_inner()).push(scratch);
            },
        );
        Ok(out)
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

    /// One group of `n` images through the whole trunk into `features`.
    fn run_group(&self, nchw: &[f32], n: usize, h: usize, w: usize, s: &mut Scratch, features: &mut [f32]) {
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
        for b in &self.blocks {
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

fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
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
    let (oh, pad_t) = same(x.h, kernel, stride);
    let (ow, pad_l) = same(x.w, kernel, stride);
    let out = Shape { n: x.n, h: oh, w: ow, c: c_out };
    grow(dst, out.len());
    let geometry = Geometry { x, out, kernel, stride, pad_t, pad_l };
    for (row, out_row) in dst[..out.len()].chunks_exact_mut(ow * c_out).enumerate() {
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
        matmul(m, pw.c_out, pw.c_in, s, &pw.weight, d);
        let r = residual.map(|r| &r[panel * PANEL * pw.c_out..][..d.len()]);
        kernels::epilogue(d, &pw.bias, r, relu6);
    }
}

/// `dst[m×n] = lhs[m×k] × rhs[k×n]`, all row-major and contiguous.
fn matmul(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) {
    assert!(lhs.len() == m * k && rhs.len() == k * n && dst.len() == m * n, "matmul operand sizes");
    // SAFETY: the three slices hold exactly the m×k, k×n and m×n row-major
    // matrices the pointers and strides describe (asserted above), and `dst`
    // is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Where a windowed convolution reads from: input and output shapes and
/// the "same" padding before the first row and column.
struct Geometry {
    x: Shape,
    out: Shape,
    kernel: usize,
    stride: usize,
    pad_t: usize,
    pad_l: usize,
}

impl Geometry {
    /// Input pixel index (image-major) under tap `(ky, kx)` of output `(img, oy, ox)`, if inside the image.
    #[inline(always)]
    fn input_pixel(&self, img: usize, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky).checked_sub(self.pad_t).filter(|&y| y < self.x.h)?;
        let ix = (ox * self.stride + kx).checked_sub(self.pad_l).filter(|&x| x < self.x.w)?;
        Some((img * self.x.h + iy) * self.x.w + ix)
    }
}

/// The inner loops, compiled twice: for AVX2+FMA (used when the CPU has
/// them) and for the baseline target. Both are safe Rust; the only unsafe
/// step is calling the AVX2 build after checking the CPU supports it.
mod kernels {
    use super::{Conv, Depthwise, Geometry};

    macro_rules! dispatch {
        ($name:ident => $generic:ident ( $($arg:ident : $ty:ty),* )) => {
            pub(super) fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn fast($($arg: $ty),*) {
                        $generic::<true>($($arg),*)
                    }
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { fast($($arg),*) };
                }
                $generic::<false>($($arg),*)
            }
        };
    }

    dispatch!(epilogue => epilogue_impl(d: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool));
    dispatch!(depthwise_row => depthwise_row_impl(dw: &Depthwise, src: &[f32], g: &Geometry, row: usize, out: &mut [f32]));
    dispatch!(conv_row => conv_row_impl(conv: &Conv, src: &[f32], g: &Geometry, row: usize, out: &mut [f32]));

    /// `acc + a * b`, fused when the build has FMA.
    #[inline(always)]
    fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
        if FMA { a.mul_add(b, acc) } else { acc + a * b }
    }

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
