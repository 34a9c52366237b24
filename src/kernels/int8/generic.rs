//! Scalar reference integer kernels: exact int32 accumulation of `(x - input_zero) * w` over
//! the taps that land inside the input (a padded tap holds a real 0, which contributes
//! nothing), plus the bias, then [`Requant`]. They are the specification of the faster tiers.

use super::operands::QuantLayer;
use super::requant::Requant;
use crate::kernels::generic::tap;
use crate::kernels::shapes::{ConvGeometry, GemmShape};

/// Accumulators the reference kernels hold at once, on the stack: they never allocate, so that a
/// model served on this tier (a CPU without AVX2, or `--kernels scalar`) does not either.
const CHUNK: usize = 64;

/// Dense NHWC convolution (the stem); weights `[kh][kw][in_c][out_c]`.
pub fn dense_conv(g: &ConvGeometry, input: &[u8], layer: &QuantLayer, out: &mut [u8]) {
    assert_eq!(
        layer.weights.len(),
        g.kh * g.kw * g.in_c * g.out_c,
        "dense_conv weights length"
    );
    let zero = i32::from(layer.input_zero);
    convolve(g, input, layer, out, |acc, px, t, first| {
        let w_tap = &layer.weights[t * g.in_c * g.out_c..(t + 1) * g.in_c * g.out_c];
        for (&v, w_row) in px.iter().zip(w_tap.chunks_exact(g.out_c)) {
            let x = i32::from(v) - zero;
            for (a, &w) in acc.iter_mut().zip(&w_row[first..]) {
                *a += x * i32::from(w);
            }
        }
    });
}

/// Depthwise NHWC convolution (`in_c == out_c`); weights `[kh][kw][c]`.
pub fn depthwise(g: &ConvGeometry, input: &[u8], layer: &QuantLayer, out: &mut [u8]) {
    assert_eq!(g.in_c, g.out_c, "depthwise channels");
    assert_eq!(
        layer.weights.len(),
        g.kh * g.kw * g.in_c,
        "depthwise weights length"
    );
    let zero = i32::from(layer.input_zero);
    convolve(g, input, layer, out, |acc, px, t, first| {
        let w = &layer.weights[t * g.in_c + first..(t + 1) * g.in_c];
        for ((a, &v), &wv) in acc.iter_mut().zip(&px[first..]).zip(w) {
            *a += (i32::from(v) - zero) * i32::from(wv);
        }
    });
}

/// The loop both convolutions share: each output pixel's accumulators, [`CHUNK`] output
/// channels at a time from channel `first`, start at the bias, get `accumulate(accumulators,
/// input pixel, tap index, first)` for every tap inside the input, and are requantized into
/// `out`.
fn convolve(
    g: &ConvGeometry,
    input: &[u8],
    layer: &QuantLayer,
    out: &mut [u8],
    mut accumulate: impl FnMut(&mut [i32], &[u8], usize, usize),
) {
    assert_eq!(input.len(), g.input_len(), "conv input length");
    assert_eq!(out.len(), g.output_len(), "conv output length");
    assert_eq!(layer.bias.len(), g.out_c, "conv bias length");
    let mut chunk = [0i32; CHUNK];
    for b in 0..g.batch {
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let o_at = ((b * g.out_h + oy) * g.out_w + ox) * g.out_c;
                for first in (0..g.out_c).step_by(CHUNK) {
                    let acc = &mut chunk[..CHUNK.min(g.out_c - first)];
                    acc.copy_from_slice(&layer.bias[first..first + acc.len()]);
                    for ky in 0..g.kh {
                        let Some(iy) = tap(oy, g.stride_h, ky, g.pad_top, g.in_h) else {
                            continue;
                        };
                        for kx in 0..g.kw {
                            let Some(ix) = tap(ox, g.stride_w, kx, g.pad_left, g.in_w) else {
                                continue;
                            };
                            let at = ((b * g.in_h + iy) * g.in_w + ix) * g.in_c;
                            accumulate(acc, &input[at..at + g.in_c], ky * g.kw + kx, first);
                        }
                    }
                    let o = &mut out[o_at + first..o_at + first + acc.len()];
                    store(acc, layer.requant, first, o);
                }
            }
        }
    }
}

/// Pointwise convolution as a GEMM: `a` is `[m][k]` activations, the weights `[k][n]`.
pub fn gemm(s: &GemmShape, a: &[u8], layer: &QuantLayer, c: &mut [u8]) {
    assert_eq!(a.len(), s.m * s.k, "gemm a length");
    assert_eq!(layer.weights.len(), s.k * s.n, "gemm weights length");
    assert_eq!(layer.bias.len(), s.n, "gemm bias length");
    assert_eq!(c.len(), s.m * s.n, "gemm c length");
    let zero = i32::from(layer.input_zero);
    let mut chunk = [0i32; CHUNK];
    for i in 0..s.m {
        for first in (0..s.n).step_by(CHUNK) {
            let acc = &mut chunk[..CHUNK.min(s.n - first)];
            acc.copy_from_slice(&layer.bias[first..first + acc.len()]);
            for (p, &v) in a[i * s.k..(i + 1) * s.k].iter().enumerate() {
                let x = i32::from(v) - zero;
                let w = &layer.weights[p * s.n + first..][..acc.len()];
                for (sum, &w) in acc.iter_mut().zip(w) {
                    *sum += x * i32::from(w);
                }
            }
            let o = &mut c[i * s.n + first..][..acc.len()];
            store(acc, layer.requant, first, o);
        }
    }
}

/// Mean over `positions` of each image's channels, requantized: `[batch][positions][c] ->
/// [batch][c]`. The accumulator is the sum of `x - input_zero`; `requant`'s scales carry the
/// division by `positions` (input scale / (output scale x positions)).
pub fn global_avg_pool(
    batch: usize,
    positions: usize,
    c: usize,
    input: &[u8],
    input_zero: u8,
    requant: &Requant,
    out: &mut [u8],
) {
    assert_eq!(input.len(), batch * positions * c, "pool input length");
    assert_eq!(out.len(), batch * c, "pool output length");
    let zero = i32::from(input_zero);
    let mut chunk = [0i32; CHUNK];
    for b in 0..batch {
        for first in (0..c).step_by(CHUNK) {
            let acc = &mut chunk[..CHUNK.min(c - first)];
            acc.fill(0);
            for p in 0..positions {
                let px = &input[(b * positions + p) * c + first..][..acc.len()];
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += i32::from(v) - zero;
                }
            }
            store(acc, requant, first, &mut out[b * c + first..][..acc.len()]);
        }
    }
}

/// Requantizes the accumulators of channels `first..first + acc.len()` into `out`.
fn store(acc: &[i32], requant: &Requant, first: usize, out: &mut [u8]) {
    for (ch, (o, &a)) in out.iter_mut().zip(acc).enumerate() {
        *o = requant.apply(a, first + ch);
    }
}

/// The scalar tier's packing: the row-major layout as it is.
pub fn keep_layout(rows: usize, columns: usize, w: &[i16]) -> Vec<i16> {
    assert_eq!(w.len(), rows * columns, "weights length");
    w.to_vec()
}

/// Lays out the patch every output pixel of `g` reads as one row of `[kh][kw][in_c]` bytes,
/// padded taps holding the zero point `zero`: a dense convolution becomes a GEMM on weights
/// `[kh][kw][in_c][out_c]`. `out` is `[batch * out_h * out_w][kh * kw * in_c]`.
pub fn im2col(g: &ConvGeometry, input: &[u8], zero: u8, out: &mut [u8]) {
    let patch = g.kh * g.kw * g.in_c;
    assert_eq!(input.len(), g.input_len(), "im2col input length");
    assert_eq!(
        out.len(),
        g.batch * g.out_h * g.out_w * patch,
        "im2col output length"
    );
    let mut rows = out.chunks_exact_mut(patch);
    for b in 0..g.batch {
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let Some(row) = rows.next() else { return };
                // Inside the input, each kernel row's taps are one run of the input row.
                let left = (ox * g.stride_w).checked_sub(g.pad_left);
                if let Some(x0) = left.filter(|&x0| x0 + g.kw <= g.in_w) {
                    let run = g.kw * g.in_c;
                    for (ky, dst) in row.chunks_exact_mut(run).enumerate() {
                        match tap(oy, g.stride_h, ky, g.pad_top, g.in_h) {
                            Some(iy) => {
                                let at = ((b * g.in_h + iy) * g.in_w + x0) * g.in_c;
                                for (d, &v) in dst.iter_mut().zip(&input[at..at + run]) {
                                    *d = v;
                                }
                            }
                            None => dst.fill(zero),
                        }
                    }
                    continue;
                }
                for (t, dst) in row.chunks_exact_mut(g.in_c).enumerate() {
                    let (ky, kx) = (t / g.kw, t % g.kw);
                    match (
                        tap(oy, g.stride_h, ky, g.pad_top, g.in_h),
                        tap(ox, g.stride_w, kx, g.pad_left, g.in_w),
                    ) {
                        (Some(iy), Some(ix)) => {
                            let at = ((b * g.in_h + iy) * g.in_w + ix) * g.in_c;
                            // A loop, not a memcpy call: the stem's pixels are 3 bytes.
                            for (d, &v) in dst.iter_mut().zip(&input[at..at + g.in_c]) {
                                *d = v;
                            }
                        }
                        _ => dst.fill(zero),
                    }
                }
            }
        }
    }
}
