//! Depthwise convolution on vectors of channels.

use super::conv::{interior_columns, interior_row, visit_taps};
use super::{load_n, store_n, Simd};
use crate::kernels::{Clamp, ConvGeometry};

/// Depthwise convolution, vectorised along channels. Returns `false` (doing nothing) for kernels
/// larger than 3x3, which the caller then runs on the scalar reference.
#[inline(always)]
pub(crate) unsafe fn depthwise<S: Simd>(
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Clamp,
    out: &mut [f32],
) -> bool {
    let c = g.in_c;
    assert_eq!(g.in_c, g.out_c, "depthwise channels");
    assert_eq!(input.len(), g.input_len(), "depthwise input length");
    assert_eq!(out.len(), g.output_len(), "depthwise output length");
    assert_eq!(weights.len(), g.kh * g.kw * c, "depthwise weights length");
    assert_eq!(bias.len(), c, "depthwise bias length");
    if g.kh * g.kw > 9 {
        return false;
    }
    depthwise_small::<S>(g, input, weights, bias, act, out);
    true
}

/// Depthwise convolution with at most 9 taps, one output pixel at a time over all its channel
/// vectors, so that memory is read and written in order. The interior of each row of a 3x3
/// kernel goes through [`Row3x3`]; other pixels sum the taps that land inside the input.
#[inline(always)]
unsafe fn depthwise_small<S: Simd>(
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Clamp,
    out: &mut [f32],
) {
    let (c, l) = (g.in_c, S::LANES);
    let (lo, hi) = (S::splat(act.lo), S::splat(act.hi));
    let (ox_lo, ox_hi) = interior_columns(g);
    let mut taps = [(0usize, 0usize); 9];
    let (inp, outp) = (input.as_ptr(), out.as_mut_ptr());
    for b in 0..g.batch {
        for oy in 0..g.out_h {
            // 3x3 kernels (all of MobileNet's) take the interior of a row in blocks of output
            // pixels that share their input columns, all channels of a block at a time.
            let blocked = match interior_row(g, oy) {
                Some(y) if g.kh == 3 && g.kw == 3 && g.stride_w <= 3 && ox_lo < ox_hi => {
                    // In usize first: the first interior pixel's taps start at or after column 0.
                    let x0 = ox_lo * g.stride_w - g.pad_left;
                    let row = |ky: usize| inp.add(((b * g.in_h + y + ky) * g.in_w + x0) * c);
                    let job = Row3x3 {
                        rows: [row(0), row(1), row(2)],
                        c,
                        count: ox_hi - ox_lo,
                        out: outp.add(((b * g.out_h + oy) * g.out_w + ox_lo) * c),
                        weights: weights.as_ptr(),
                        bias: bias.as_ptr(),
                    };
                    // SAFETY: [ox_lo, ox_hi) are interior pixels of an inside row: every tap
                    // of them is inside the input, and the outputs are in this row.
                    match g.stride_w {
                        1 => job.run::<S, 1>(lo, hi),
                        2 => job.run::<S, 2>(lo, hi),
                        _ => job.run::<S, 3>(lo, hi),
                    }
                    true
                }
                _ => false,
            };
            for ox in 0..g.out_w {
                if blocked && (ox_lo..ox_hi).contains(&ox) {
                    continue;
                }
                // The taps inside the input, found once for all the pixel's channels.
                let k = inside_taps(g, b, oy, ox, &mut taps);
                let o = outp.add(((b * g.out_h + oy) * g.out_w + ox) * c);
                let mut c0 = 0;
                while c0 < c {
                    let n = (c - c0).min(l);
                    let mut acc = load_n::<S>(bias.as_ptr().add(c0), n);
                    for &(px, t) in &taps[..k] {
                        // SAFETY: inside_taps only returns pixels inside the input; tap t has
                        // c weights (length asserted by the caller).
                        let w = load_n::<S>(weights.as_ptr().add(t * c + c0), n);
                        acc = S::fmadd(load_n::<S>(inp.add(px * c + c0), n), w, acc);
                    }
                    // SAFETY: (b, oy, ox) is an output pixel with c channels (length asserted).
                    store_n::<S>(o.add(c0), S::clamp(acc, lo, hi), n);
                    c0 += l;
                }
            }
        }
    }
}

/// Output pixels per block of [`Row3x3::run`]: 4 accumulators, and for stride 1 each input
/// column loaded once serves up to 3 of them.
const DW_BLOCK: usize = 4;
// The column registers of a block are an array of 12: enough for strides up to 3.
const _: () = assert!((DW_BLOCK - 1) * 3 + 3 <= 12);

/// A run of interior output pixels of one row of a 3x3 depthwise convolution: `rows[ky]` points
/// at channel 0 of the input pixel under tap (ky, 0) of the first output pixel.
struct Row3x3 {
    rows: [*const f32; 3],
    /// Channels per pixel (the stride between two columns).
    c: usize,
    /// Output pixels in the run.
    count: usize,
    /// Channel 0 of the first output pixel.
    out: *mut f32,
    /// `[tap][c]`.
    weights: *const f32,
    bias: *const f32,
}

impl Row3x3 {
    /// Computes the run with horizontal stride `SW`: blocks of [`DW_BLOCK`] pixels, then single
    /// pixels, each over all channel vectors in turn, so that memory is read and written in
    /// order. A block loads each input column once. Each pixel's taps are summed in the same
    /// order as the per-pixel path (bias, then taps row by row), so the results are identical.
    ///
    /// # Safety
    /// Every tap of the `count` pixels must be inside the input, the outputs writable, and
    /// `weights` and `bias` hold `9 * c` and `c` values.
    #[inline(always)]
    unsafe fn run<S: Simd, const SW: usize>(&self, lo: S::V, hi: S::V) {
        let mut ox = 0;
        while ox + DW_BLOCK <= self.count {
            self.block::<S, SW, DW_BLOCK>(ox, lo, hi);
            ox += DW_BLOCK;
        }
        while ox < self.count {
            self.block::<S, SW, 1>(ox, lo, hi);
            ox += 1;
        }
    }

    /// `P` output pixels from `ox` on, every channel.
    #[inline(always)]
    unsafe fn block<S: Simd, const SW: usize, const P: usize>(
        &self,
        ox: usize,
        lo: S::V,
        hi: S::V,
    ) {
        let c = self.c;
        // Input columns the block reads: (P - 1) * SW + 3, at most 12.
        let cols = (P - 1) * SW + 3;
        let mut c0 = 0;
        while c0 < c {
            let n = (c - c0).min(S::LANES);
            let mut acc = [load_n::<S>(self.bias.add(c0), n); P];
            for (ky, row) in self.rows.iter().enumerate() {
                let base = row.add(ox * SW * c + c0);
                let mut x = [S::zero(); 12];
                for (i, xi) in x.iter_mut().enumerate().take(cols) {
                    *xi = load_n::<S>(base.add(i * c), n);
                }
                for kx in 0..3 {
                    let w = load_n::<S>(self.weights.add((ky * 3 + kx) * c + c0), n);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = S::fmadd(x[j * SW + kx], w, *a);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                store_n::<S>(self.out.add((ox + j) * c + c0), S::clamp(*a, lo, hi), n);
            }
            c0 += S::LANES;
        }
    }
}

/// Fills `taps` with the kernel taps of output pixel `(oy, ox)` of image `b` that land inside the
/// input, as (input pixel index, tap index); returns how many there are.
#[inline(always)]
fn inside_taps(
    g: &ConvGeometry,
    b: usize,
    oy: usize,
    ox: usize,
    taps: &mut [(usize, usize)],
) -> usize {
    let mut n = 0;
    visit_taps(g, b, oy, ox, |px, tap| {
        taps[n] = (px, tap);
        n += 1;
    });
    n
}
