//! Depthwise convolution on vectors of channels.

use super::conv::{interior_columns, interior_row, visit_taps};
use super::register::{load_n, store_n, Simd};
use crate::kernels::shapes::{Clamp, ConvGeometry};

/// Depthwise convolution, vectorised along channels. Returns `false` (doing nothing) for kernels
/// larger than 3x3, which the caller then runs on the scalar reference.
///
/// # Safety
/// `S`'s CPU features must be enabled (see [`Simd`]). The slices' lengths are checked here.
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
    // SAFETY: the features are enabled (the caller's contract), the lengths depthwise_small
    // needs are asserted above, and there are at most 9 taps.
    unsafe { depthwise_small::<S>(g, input, weights, bias, act, out) };
    true
}

/// Depthwise convolution with at most 9 taps, one output pixel at a time over all its channel
/// vectors, so that memory is read and written in order. The interior of each row of a 3x3
/// kernel goes through [`Row3x3`]; other pixels sum the taps that land inside the input.
///
/// # Safety
/// `S`'s CPU features must be enabled, `g.in_c == g.out_c`, and `input`, `out`, `weights` and
/// `bias` must hold `g.input_len()`, `g.output_len()`, `kh * kw * c` and `c` values (as
/// [`depthwise`] asserts). More than 9 taps panic.
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
    // SAFETY: the features are enabled (the caller's contract).
    let (lo, hi) = unsafe { (S::splat(act.lo), S::splat(act.hi)) };
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
                    // SAFETY: input rows y..y + 3 lie in image b (interior_row: y + kh <= in_h)
                    // and column x0, the first interior pixel's first tap, in the row; output
                    // pixel (oy, ox_lo) lies in image b's output, as ox_lo < ox_hi <= out_w.
                    let job = unsafe {
                        let row = |ky: usize| inp.add(((b * g.in_h + y + ky) * g.in_w + x0) * c);
                        Row3x3 {
                            rows: [row(0), row(1), row(2)],
                            c,
                            count: ox_hi - ox_lo,
                            out: outp.add(((b * g.out_h + oy) * g.out_w + ox_lo) * c),
                            weights: weights.as_ptr(),
                            bias: bias.as_ptr(),
                        }
                    };
                    // SAFETY: the features are enabled (the caller's contract). [ox_lo, ox_hi)
                    // are interior pixels of an inside row at stride SW = stride_w (1 to 3, as
                    // matched): every tap of them is inside the input, and their outputs are
                    // in this output row. The 3x3 weights are 9 * c values and the bias c.
                    unsafe {
                        match g.stride_w {
                            1 => job.run::<S, 1>(lo, hi),
                            2 => job.run::<S, 2>(lo, hi),
                            _ => job.run::<S, 3>(lo, hi),
                        }
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
                // SAFETY: (b, oy, ox) is an output pixel: b < batch, oy < out_h, ox < out_w.
                let o = unsafe { outp.add(((b * g.out_h + oy) * g.out_w + ox) * c) };
                let mut c0 = 0;
                while c0 < c {
                    let n = (c - c0).min(l);
                    // SAFETY: the features are enabled (the caller's contract), and channels
                    // c0..c0 + n are below c: in the bias (c values), in tap t's weights (c
                    // from t * c, t < kh * kw), in input pixel px (inside_taps only returns
                    // pixels inside the input) and in the output pixel at `o` (all lengths
                    // guaranteed by the caller).
                    unsafe {
                        let mut acc = load_n::<S>(bias.as_ptr().add(c0), n);
                        for &(px, t) in &taps[..k] {
                            let w = load_n::<S>(weights.as_ptr().add(t * c + c0), n);
                            acc = S::fmadd(load_n::<S>(inp.add(px * c + c0), n), w, acc);
                        }
                        store_n::<S>(o.add(c0), S::clamp(acc, lo, hi), n);
                    }
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
    /// `S`'s CPU features must be enabled, and for each output pixel `o < count` of the run:
    /// every tap (ky, kx) of it, the `c` values at `rows[ky] + (o * SW + kx) * c`, must be
    /// readable (inside the input), and the `c` values at `out + o * c` writable; `weights` and
    /// `bias` must be readable for `9 * c` and `c` values. `SW` must be at most 3: a block reads
    /// every input column from its first tap to its last, which are all taps only up to 3.
    #[inline(always)]
    unsafe fn run<S: Simd, const SW: usize>(&self, lo: S::V, hi: S::V) {
        let mut ox = 0;
        while ox + DW_BLOCK <= self.count {
            // SAFETY: pixels ox..ox + DW_BLOCK are in the run (the loop's bound), for which the
            // caller guarantees block's contract.
            unsafe { self.block::<S, SW, DW_BLOCK>(ox, lo, hi) };
            ox += DW_BLOCK;
        }
        while ox < self.count {
            // SAFETY: pixel ox < count is in the run, as above.
            unsafe { self.block::<S, SW, 1>(ox, lo, hi) };
            ox += 1;
        }
    }

    /// `P` output pixels from `ox` on, every channel.
    ///
    /// # Safety
    /// As for [`Row3x3::run`], and the pixels must be in the run: `ox + P <= count`.
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
            // SAFETY: the features are enabled (the caller's contract), and channels c0..c0 + n
            // are below c. Column i < cols from `base` is j * SW + kx for some j < P and kx < 3
            // (SW <= 3): tap (ky, kx) of pixel ox + j, which the caller guarantees readable. Tap
            // ky * 3 + kx < 9 has c weights from (ky * 3 + kx) * c, the bias c values, and
            // output pixels ox + j < count c channels each.
            unsafe {
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
