//! Scalar reference kernels: the specification every faster tier must match.
//!
//! They favour obviousness over speed, but keep the output channel as the innermost loop so that
//! the compiler can vectorise them and the whole zoo stays usable on the reference tier.

use super::aligned::AlignedVec;
use super::shapes::{Clamp, ConvGeometry, GemmShape};

/// Dense NHWC convolution; weights `[kh][kw][in_c][out_c]` (the scalar tier's packing is the
/// identity), bias `[out_c]`.
pub fn dense_conv(
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Clamp,
    out: &mut [f32],
) {
    assert_eq!(
        weights.len(),
        g.kh * g.kw * g.in_c * g.out_c,
        "dense_conv weights length"
    );
    convolve(g, input, bias, act, out, |o, px, tap| {
        let w_tap = &weights[tap * g.in_c * g.out_c..(tap + 1) * g.in_c * g.out_c];
        for (&v, w_row) in px.iter().zip(w_tap.chunks_exact(g.out_c)) {
            for (acc, &w) in o.iter_mut().zip(w_row) {
                *acc += v * w;
            }
        }
    });
}

/// Depthwise NHWC convolution (`in_c == out_c`); weights `[kh][kw][c]`, bias `[c]`.
pub fn depthwise(
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Clamp,
    out: &mut [f32],
) {
    assert_eq!(g.in_c, g.out_c, "depthwise channels");
    assert_eq!(
        weights.len(),
        g.kh * g.kw * g.in_c,
        "depthwise weights length"
    );
    convolve(g, input, bias, act, out, |o, px, tap| {
        let w = &weights[tap * g.in_c..(tap + 1) * g.in_c];
        for ((acc, &v), &wv) in o.iter_mut().zip(px).zip(w) {
            *acc += v * wv;
        }
    });
}

/// The loop both convolutions share: seeds each output pixel with `bias`, calls
/// `accumulate(output pixel, input pixel, tap index)` for every kernel tap that lands inside the
/// input (taps in the zero padding contribute nothing), then applies `act`.
fn convolve(
    g: &ConvGeometry,
    input: &[f32],
    bias: &[f32],
    act: Clamp,
    out: &mut [f32],
    mut accumulate: impl FnMut(&mut [f32], &[f32], usize),
) {
    assert_eq!(input.len(), g.input_len(), "conv input length");
    assert_eq!(out.len(), g.output_len(), "conv output length");
    assert_eq!(bias.len(), g.out_c, "conv bias length");
    for b in 0..g.batch {
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let o_at = ((b * g.out_h + oy) * g.out_w + ox) * g.out_c;
                let o = &mut out[o_at..o_at + g.out_c];
                o.copy_from_slice(bias);
                for ky in 0..g.kh {
                    let Some(iy) = tap(oy, g.stride_h, ky, g.pad_top, g.in_h) else {
                        continue;
                    };
                    for kx in 0..g.kw {
                        let Some(ix) = tap(ox, g.stride_w, kx, g.pad_left, g.in_w) else {
                            continue;
                        };
                        let px_at = ((b * g.in_h + iy) * g.in_w + ix) * g.in_c;
                        accumulate(o, &input[px_at..px_at + g.in_c], ky * g.kw + kx);
                    }
                }
                for acc in o.iter_mut() {
                    *acc = act.apply(*acc);
                }
            }
        }
    }
}

/// The scalar tier's GEMM weight layout is plain row-major `[k][n]`.
pub fn pack_gemm_b(k: usize, n: usize, b: &[f32]) -> AlignedVec {
    assert_eq!(b.len(), k * n, "gemm b length");
    AlignedVec::from_slice(b)
}

/// Row-major GEMM with bias and clamp fused into the store.
pub fn gemm(s: &GemmShape, a: &[f32], b: &[f32], bias: &[f32], act: Clamp, c: &mut [f32]) {
    assert_eq!(a.len(), s.m * s.k, "gemm a length");
    assert_eq!(b.len(), s.k * s.n, "gemm b length");
    assert_eq!(bias.len(), s.n, "gemm bias length");
    assert_eq!(c.len(), s.m * s.n, "gemm c length");
    for i in 0..s.m {
        let c_row = &mut c[i * s.n..(i + 1) * s.n];
        c_row.copy_from_slice(bias);
        let a_row = &a[i * s.k..(i + 1) * s.k];
        for (p, &v) in a_row.iter().enumerate() {
            let b_row = &b[p * s.n..(p + 1) * s.n];
            for (acc, &w) in c_row.iter_mut().zip(b_row) {
                *acc += v * w;
            }
        }
        for acc in c_row.iter_mut() {
            *acc = act.apply(*acc);
        }
    }
}

/// Mean over `positions` for each image and channel: `[batch][positions][c] -> [batch][c]`.
pub fn global_avg_pool(batch: usize, positions: usize, c: usize, input: &[f32], out: &mut [f32]) {
    assert_eq!(input.len(), batch * positions * c, "pool input length");
    assert_eq!(out.len(), batch * c, "pool output length");
    let scale = 1.0 / positions as f32;
    for b in 0..batch {
        let o = &mut out[b * c..(b + 1) * c];
        o.fill(0.0);
        for p in 0..positions {
            let px = &input[(b * positions + p) * c..(b * positions + p + 1) * c];
            for (acc, &v) in o.iter_mut().zip(px) {
                *acc += v;
            }
        }
        for acc in o.iter_mut() {
            *acc *= scale;
        }
    }
}

/// The input coordinate that output `o` reads through kernel tap `k`, or `None` in the padding.
#[inline(always)]
pub(crate) fn tap(o: usize, stride: usize, k: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}
