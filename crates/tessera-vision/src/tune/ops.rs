//! The forward and backward operations of fine-tuning, channels-last, over a
//! whole batch. Activations are `[rows, c]` row-major, a row being one
//! pixel of one image. Each operation is parallel on rayon's pool: matrix
//! products over panels of rows, reductions over row chunks with one
//! partial sum per chunk (added in a fixed order, so results do not depend
//! on scheduling).

use rayon::prelude::*;

use crate::nhwc::{Geometry, Shape, gemm};
use crate::simd::{dispatch, madd};

/// Rows per matrix-product panel: a panel's product is still in L2 when the
/// next pass reads it.
const PANEL: usize = 256;

/// Per-channel batch norm in inference mode, as fine-tuning sees it:
/// `y = gamma * (z - mean) * inv_std + beta = scale * z + shift`.
#[derive(Clone, Debug)]
pub(crate) struct Affine {
    pub(crate) mean: Vec<f32>,
    pub(crate) inv_std: Vec<f32>,
    pub(crate) scale: Vec<f32>,
    pub(crate) shift: Vec<f32>,
}

impl Affine {
    pub(crate) fn new(gamma: &[f32], beta: &[f32], mean: Vec<f32>, var: &[f32], eps: f64) -> Self {
        let inv_std: Vec<f32> = var.iter().map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32).collect();
        let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
        let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        Self { mean, inv_std, scale, shift }
    }

    pub(crate) fn channels(&self) -> usize {
        self.scale.len()
    }
}

/// `z = x × w`: `x` is `[rows, k]`, `w` is `[k, n]`, `z` is `[rows, n]`.
pub(crate) fn matmul(x: &[f32], k: usize, w: &[f32], n: usize, z: &mut [f32]) {
    z.par_chunks_mut(PANEL * n)
        .zip(x.par_chunks(PANEL * k))
        .for_each(|(d, s)| gemm(d.len() / n, n, k, s, (1, k), w, (1, n), d));
}

/// `dx = dz × wᵀ`: `dz` is `[rows, n]`, `w` is `[k, n]`, `dx` is `[rows, k]`.
pub(crate) fn matmul_transposed(dz: &[f32], n: usize, w: &[f32], k: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(PANEL * k)
        .zip(dz.par_chunks(PANEL * n))
        .for_each(|(d, g)| gemm(d.len() / k, k, n, g, (1, n), w, (n, 1), d));
}

/// Row chunks for a reduction over `rows`: about two per thread, at least a panel each.
fn reduction_chunk(rows: usize) -> usize {
    rows.div_ceil(2 * rayon::current_num_threads()).max(PANEL)
}

/// Adds the chunks' partial sums into `acc`, in chunk order.
fn add_partials(acc: &mut [f32], partials: Vec<Vec<f32>>) {
    for p in partials {
        acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
}

/// `dw = dzᵀ × x` (overwritten), summed over all rows: `x` is `[rows, k]`,
/// `dz` is `[rows, n]`, `dw` is `[n, k]`, burn's `[c_out, c_in]` layout of a
/// 1×1 convolution's weight, so no reordering follows. A single row chunk
/// (one example's rows under DP-SGD) goes straight into `dw`, with no
/// partial buffer.
pub(crate) fn weight_grad_out_in(x: &[f32], k: usize, dz: &[f32], n: usize, dw: &mut [f32]) {
    let rows = x.len() / k.max(1);
    let chunk = reduction_chunk(rows);
    let product = |x: &[f32], g: &[f32], out: &mut [f32]| gemm(n, k, x.len() / k, g, (n, 1), x, (1, k), out);
    if rows <= chunk {
        product(x, dz, dw);
        return;
    }
    let partials: Vec<Vec<f32>> = x
        .par_chunks(chunk * k)
        .zip(dz.par_chunks(chunk * n))
        .map(|(x, g)| {
            let mut part = vec![0.0; k * n];
            product(x, g, &mut part);
            part
        })
        .collect();
    dw.iter_mut().for_each(|v| *v = 0.0);
    add_partials(dw, partials);
}

/// `out = act(scale * z + shift [+ residual])`, ReLU6 when `relu6`.
pub(crate) fn affine_forward(z: &[f32], bn: &Affine, residual: Option<&[f32]>, relu6: bool, out: &mut [f32]) {
    let c = bn.channels();
    let chunk = 64 * c;
    match residual {
        Some(r) => out
            .par_chunks_mut(chunk)
            .zip(z.par_chunks(chunk))
            .zip(r.par_chunks(chunk))
            .for_each(|((o, z), r)| kernels::affine_rows(o, z, Some(r), &bn.scale, &bn.shift, relu6)),
        None => out
            .par_chunks_mut(chunk)
            .zip(z.par_chunks(chunk))
            .for_each(|(o, z)| kernels::affine_rows(o, z, None, &bn.scale, &bn.shift, relu6)),
    }
}

/// Backward of [`affine_forward`] (without the residual, whose gradient is
/// the output's): on entry `g` holds the loss gradient with respect to the
/// output, on exit with respect to `z`. Adds the batch norm's gradients to
/// `dgamma` and `dbeta`. ReLU6 passes the gradient where `0 < y < 6`, `y`
/// recomputed from `z` exactly as the forward pass computed it.
pub(crate) fn affine_backward(
    g: &mut [f32],
    z: &[f32],
    bn: &Affine,
    relu6: bool,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let c = bn.channels();
    let chunk = reduction_chunk(z.len() / c) * c;
    let partials: Vec<Vec<f32>> = g
        .par_chunks_mut(chunk)
        .zip(z.par_chunks(chunk))
        .map(|(g, z)| {
            // [dgamma | dbeta]
            let mut part = vec![0.0; 2 * c];
            kernels::affine_backward_rows(g, z, bn, relu6, &mut part);
            part
        })
        .collect();
    for p in partials {
        dgamma.iter_mut().zip(&p[..c]).for_each(|(a, v)| *a += v);
        dbeta.iter_mut().zip(&p[c..]).for_each(|(a, v)| *a += v);
    }
}

/// Depthwise "same" convolution without bias: `z` gets `g.out`.
pub(crate) fn depthwise_forward(w: &[f32], g: &Geometry, x: &[f32], z: &mut [f32]) {
    let row = g.out.w * g.out.c;
    z.par_chunks_mut(row).enumerate().for_each(|(r, out)| kernels::depthwise_row(w, g, x, r, out));
}

/// `dw += ∂L/∂w` of a depthwise convolution: `dz` is the gradient at its
/// output, `x` its input, `dw` is `[k*k, c]`.
pub(crate) fn depthwise_weight_grad(dz: &[f32], g: &Geometry, x: &[f32], dw: &mut [f32]) {
    let row = g.out.w * g.out.c;
    let rows = g.out.n * g.out.h;
    let chunk = rows.div_ceil(2 * rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = dz
        .par_chunks(chunk * row)
        .enumerate()
        .map(|(i, dz)| {
            let mut part = vec![0.0; dw.len()];
            for (j, dz_row) in dz.chunks_exact(row).enumerate() {
                kernels::depthwise_weight_row(dz_row, g, x, i * chunk + j, &mut part);
            }
            part
        })
        .collect();
    add_partials(dw, partials);
}

/// `dx = ∂L/∂x` of a depthwise convolution (overwritten), gathered per input
/// row so that rows can run in parallel without write conflicts.
pub(crate) fn depthwise_input_grad(dz: &[f32], g: &Geometry, w: &[f32], dx: &mut [f32]) {
    let row = g.x.w * g.x.c;
    dx.par_chunks_mut(row).enumerate().for_each(|(r, out)| kernels::depthwise_input_row(dz, g, w, r, out));
}

/// Pooling backward: every pixel of image `i` gets `df[i] / pixels`.
pub(crate) fn spread_pooled(df: &[f32], x: Shape, g: &mut [f32]) {
    let pixels = x.h * x.w;
    let scale = 1.0 / pixels as f32;
    g.par_chunks_mut(pixels * x.c).zip(df.par_chunks(x.c)).for_each(|(g, df)| {
        for px in g.chunks_exact_mut(x.c) {
            px.iter_mut().zip(df).for_each(|(a, d)| *a = d * scale);
        }
    });
}

/// Global average pool `[n, h*w, c] -> [n, c]`.
pub(crate) fn pool(a: &[f32], x: Shape, out: &mut [f32]) {
    let pixels = x.h * x.w;
    let scale = 1.0 / pixels as f32;
    out.par_chunks_mut(x.c).zip(a.par_chunks(pixels * x.c)).for_each(|(f, img)| {
        f.fill(0.0);
        for px in img.chunks_exact(x.c) {
            f.iter_mut().zip(px).for_each(|(s, v)| *s += v);
        }
        f.iter_mut().for_each(|s| *s *= scale);
    });
}

/// `acc += add`, elementwise.
pub(crate) fn add_into(acc: &mut [f32], add: &[f32]) {
    acc.par_chunks_mut(1 << 14).zip(add.par_chunks(1 << 14)).for_each(|(a, b)| {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    });
}

/// Per image, for DP-SGD's clipping: [`affine_backward`]'s update of `g`,
/// with each image's own batch-norm gradients `[dgamma | dbeta]` (`2c`
/// values an image, image after image) written over `parts`.
pub(crate) fn affine_backward_per_image(g: &mut [f32], z: &[f32], bn: &Affine, relu6: bool, parts: &mut [f32]) {
    let c = bn.channels();
    let per_image = z.len() / (parts.len() / (2 * c)).max(1);
    parts.fill(0.0);
    g.par_chunks_mut(per_image)
        .zip(z.par_chunks(per_image))
        .zip(parts.par_chunks_mut(2 * c))
        .for_each(|((g, z), part)| kernels::affine_backward_rows(g, z, bn, relu6, part));
}

/// Per image: a depthwise convolution's weight gradient `[k*k, c]`, image
/// after image in `dw` (overwritten); the sum over images is
/// [`depthwise_weight_grad`].
pub(crate) fn depthwise_weight_grad_per_image(dz: &[f32], g: &Geometry, x: &[f32], dw: &mut [f32]) {
    let row = g.out.w * g.out.c;
    dw.par_chunks_mut(g.kernel * g.kernel * g.out.c).enumerate().for_each(|(img, part)| {
        part.fill(0.0);
        for oy in 0..g.out.h {
            let r = img * g.out.h + oy;
            kernels::depthwise_weight_row(&dz[r * row..][..row], g, x, r, part);
        }
    });
}

/// Adds to `norms[i]` the squared L2 norm of image `i`'s share of a 1×1
/// convolution's weight gradient, `X_iᵀ G_i` (`x` is `[rows, k]`, `dz` is
/// `[rows, n]`, the same number of rows per image), in f64. Where it is
/// cheaper (`t (k + n) <= k n`, `t` the image's pixels: always in the last
/// blocks) the gradient is never formed: its squared norm is
/// `Σ_{s,t} (x_s·x_t)(g_s·g_t)` over pairs of the image's pixels ("ghost
/// norm", Li et al. 2021; `‖x‖²‖g‖²` for one pixel). Else it is formed one
/// image at a time, `k n` values.
pub(crate) fn pointwise_norms(x: &[f32], k: usize, dz: &[f32], n: usize, norms: &mut [f64]) {
    let rows = x.len() / (k * norms.len()).max(1);
    let ghost = rows * (k + n) <= k * n;
    norms.par_iter_mut().enumerate().for_each_init(Vec::new, |formed, (i, norm)| {
        let (x, g) = (&x[i * rows * k..][..rows * k], &dz[i * rows * n..][..rows * n]);
        *norm += if ghost {
            let mut total = 0.0;
            for (s, (xs, gs)) in x.chunks_exact(k).zip(g.chunks_exact(n)).enumerate() {
                total += dot64(xs, xs) * dot64(gs, gs);
                for (xt, gt) in x.chunks_exact(k).zip(g.chunks_exact(n)).take(s) {
                    total += 2.0 * dot64(xs, xt) * dot64(gs, gt);
                }
            }
            total.max(0.0)
        } else {
            formed.resize(k * n, 0.0);
            gemm(n, k, rows, g, (n, 1), x, (1, k), formed);
            dot64(formed, formed)
        };
    });
}

/// `a · b` accumulated in f64 over four lanes (so that it vectorizes).
pub(crate) fn dot64(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let rest: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *acc += f64::from(*x) * f64::from(*y);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// Inner loops, compiled for AVX2+FMA and for the baseline (see [`crate::simd`]).
mod kernels {
    use super::{Affine, Geometry, dispatch, madd};

    dispatch!(pub(super) affine_rows => affine_rows_impl(out: &mut [f32], z: &[f32], residual: Option<&[f32]>, scale: &[f32], shift: &[f32], relu6: bool));
    dispatch!(pub(super) affine_backward_rows => affine_backward_rows_impl(g: &mut [f32], z: &[f32], bn: &Affine, relu6: bool, part: &mut [f32]));
    dispatch!(pub(super) depthwise_row => depthwise_row_impl(w: &[f32], g: &Geometry, x: &[f32], row: usize, out: &mut [f32]));
    dispatch!(pub(super) depthwise_weight_row => depthwise_weight_row_impl(dz: &[f32], g: &Geometry, x: &[f32], row: usize, dw: &mut [f32]));
    dispatch!(pub(super) depthwise_input_row => depthwise_input_row_impl(dz: &[f32], g: &Geometry, w: &[f32], row: usize, dx: &mut [f32]));

    /// The batch norm's output before the activation; shared by both passes
    /// so that the ReLU6 mask of the backward pass is the forward's exactly.
    #[inline(always)]
    fn affine<const FMA: bool>(z: f32, scale: f32, shift: f32) -> f32 {
        madd::<FMA>(z, scale, shift)
    }

    #[inline(always)]
    fn affine_rows_impl<const FMA: bool>(
        out: &mut [f32],
        z: &[f32],
        residual: Option<&[f32]>,
        scale: &[f32],
        shift: &[f32],
        relu6: bool,
    ) {
        let c = scale.len();
        for (i, (o, z)) in out.chunks_exact_mut(c).zip(z.chunks_exact(c)).enumerate() {
            o.iter_mut()
                .zip(z)
                .zip(scale.iter().zip(shift))
                .for_each(|((o, &z), (&s, &t))| *o = affine::<FMA>(z, s, t));
            if let Some(r) = residual {
                o.iter_mut().zip(&r[i * c..][..c]).for_each(|(o, r)| *o += r);
            }
            if relu6 {
                o.iter_mut().for_each(|o| *o = o.clamp(0.0, 6.0));
            }
        }
    }

    #[inline(always)]
    fn affine_backward_rows_impl<const FMA: bool>(
        g: &mut [f32],
        z: &[f32],
        bn: &Affine,
        relu6: bool,
        part: &mut [f32],
    ) {
        let c = bn.channels();
        let (dgamma, dbeta) = part.split_at_mut(c);
        for (g, z) in g.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
            for ch in 0..c {
                let mut dy = g[ch];
                if relu6 {
                    let y = affine::<FMA>(z[ch], bn.scale[ch], bn.shift[ch]);
                    if !(y > 0.0 && y < 6.0) {
                        dy = 0.0;
                    }
                }
                dbeta[ch] += dy;
                dgamma[ch] = madd::<FMA>(dy, (z[ch] - bn.mean[ch]) * bn.inv_std[ch], dgamma[ch]);
                g[ch] = dy * bn.scale[ch];
            }
        }
    }

    #[inline(always)]
    fn depthwise_row_impl<const FMA: bool>(w: &[f32], g: &Geometry, x: &[f32], row: usize, out: &mut [f32]) {
        let c = g.out.c;
        let (img, oy) = (row / g.out.h, row % g.out.h);
        for (ox, acc) in out.chunks_exact_mut(c).enumerate() {
            acc.fill(0.0);
            for ky in 0..g.kernel {
                for kx in 0..g.kernel {
                    let Some(px) = g.input_pixel(img, oy, ox, ky, kx) else { continue };
                    let input = &x[px * c..][..c];
                    let weight = &w[(ky * g.kernel + kx) * c..][..c];
                    acc.iter_mut().zip(input).zip(weight).for_each(|((a, &x), &w)| *a = madd::<FMA>(x, w, *a));
                }
            }
        }
    }

    #[inline(always)]
    fn depthwise_weight_row_impl<const FMA: bool>(dz: &[f32], g: &Geometry, x: &[f32], row: usize, dw: &mut [f32]) {
        let c = g.out.c;
        let (img, oy) = (row / g.out.h, row % g.out.h);
        for (ox, d) in dz.chunks_exact(c).enumerate() {
            for ky in 0..g.kernel {
                for kx in 0..g.kernel {
                    let Some(px) = g.input_pixel(img, oy, ox, ky, kx) else { continue };
                    let input = &x[px * c..][..c];
                    let acc = &mut dw[(ky * g.kernel + kx) * c..][..c];
                    acc.iter_mut().zip(input).zip(d).for_each(|((a, &x), &d)| *a = madd::<FMA>(x, d, *a));
                }
            }
        }
    }

    /// Output coordinate that tap `k` of a window with `stride` and `pad`
    /// maps input coordinate `i` to, if any: `o * stride + k - pad == i`.
    #[inline(always)]
    fn source(i: usize, k: usize, pad: usize, stride: usize, size: usize) -> Option<usize> {
        let t = (i + pad).checked_sub(k)?;
        (t % stride == 0 && t / stride < size).then_some(t / stride)
    }

    #[inline(always)]
    fn depthwise_input_row_impl<const FMA: bool>(dz: &[f32], g: &Geometry, w: &[f32], row: usize, dx: &mut [f32]) {
        let c = g.x.c;
        let (img, iy) = (row / g.x.h, row % g.x.h);
        for (ix, acc) in dx.chunks_exact_mut(c).enumerate() {
            acc.fill(0.0);
            for ky in 0..g.kernel {
                let Some(oy) = source(iy, ky, g.pad_t, g.stride, g.out.h) else { continue };
                for kx in 0..g.kernel {
                    let Some(ox) = source(ix, kx, g.pad_l, g.stride, g.out.w) else { continue };
                    let d = &dz[((img * g.out.h + oy) * g.out.w + ox) * c..][..c];
                    let weight = &w[(ky * g.kernel + kx) * c..][..c];
                    acc.iter_mut().zip(d).zip(weight).for_each(|((a, &d), &w)| *a = madd::<FMA>(d, w, *a));
                }
            }
        }
    }
}
