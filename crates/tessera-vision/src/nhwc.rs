//! Channels-last (NHWC) layout shared by the frozen trunk ([`crate::frozen`])
//! and fine-tuning ([`crate::tune`]): activation shapes, TensorFlow's "same"
//! padding and the window geometry of a strided convolution, the one
//! wrapper around `gemm`'s strided matrix product, and reading burn tensors
//! back to the host.

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use crate::error::{Result, VisionError};

/// A group's activation: `n` images of `h × w` pixels with `c` channels, NHWC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) n: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) c: usize,
}

impl Shape {
    pub(crate) fn len(self) -> usize {
        self.n * self.h * self.w * self.c
    }
}

/// TensorFlow/burn "same" padding: output `ceil(size / stride)`, the extra
/// pad (if odd) at the end. Returns (output size, pad before).
pub(crate) fn same(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (out, total / 2)
}

pub(crate) fn tensor_values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().map_err(|e| VisionError::Tensor(format!("{e:?}")))
}

/// Weight and bias (zeros when it has none) of a burn convolution, as
/// `[c_out, c_in/g * k * k]` and `[c_out]`.
pub(crate) fn weights_of(conv: &Conv2d) -> Result<(Vec<f32>, Vec<f32>, [usize; 4])> {
    let dims = conv.weight.dims();
    let weight = tensor_values(conv.weight.val())?;
    let bias = match &conv.bias {
        Some(b) => tensor_values(b.val())?,
        None => vec![0.0; dims[0]],
    };
    Ok((weight, bias, dims))
}

/// `buf` grown to at least `len` values.
pub(crate) fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// Where a windowed convolution reads from: input and output shapes and
/// the "same" padding before the first row and column.
pub(crate) struct Geometry {
    pub(crate) x: Shape,
    pub(crate) out: Shape,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) pad_t: usize,
    pub(crate) pad_l: usize,
}

impl Geometry {
    /// A "same"-padded k×k window with `stride` over `x`, with `c_out` output channels.
    pub(crate) fn new(x: Shape, c_out: usize, kernel: usize, stride: usize) -> Self {
        let (oh, pad_t) = same(x.h, kernel, stride);
        let (ow, pad_l) = same(x.w, kernel, stride);
        Self { x, out: Shape { n: x.n, h: oh, w: ow, c: c_out }, kernel, stride, pad_t, pad_l }
    }

    /// Input pixel index (image-major) under tap `(ky, kx)` of output `(img, oy, ox)`, if inside the image.
    #[inline(always)]
    pub(crate) fn input_pixel(&self, img: usize, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky).checked_sub(self.pad_t).filter(|&y| y < self.x.h)?;
        let ix = (ox * self.stride + kx).checked_sub(self.pad_l).filter(|&x| x < self.x.w)?;
        Some((img * self.x.h + iy) * self.x.w + ix)
    }
}

/// `dst = lhs × rhs`, `m × n` row-major, where `lhs` is `m × k` and `rhs`
/// `k × n`, each given with its (column, row) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[f32],
    (rhs_cs, rhs_rs): (usize, usize),
    dst: &mut [f32],
) {
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
    assert!(
        dst.len() == m * n
            && (m * k == 0 || (last(m, lhs_rs, k, lhs_cs) < lhs.len() && last(k, rhs_rs, n, rhs_cs) < rhs.len())),
        "gemm operand sizes"
    );
    if m * n == 0 {
        return;
    }
    // SAFETY: every element the strides address lies inside its slice
    // (asserted above: the largest offset of each operand is in bounds),
    // and `dst` is borrowed mutably, so it aliases neither operand.
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
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
