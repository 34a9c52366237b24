//! Dense convolution (the stem): interior pixels read in place, edges through im2col, and the
//! geometry helpers (interior rows and columns, taps) the depthwise kernel shares.

use super::gemm::{tile, tile_rows, ATile, Epilogue, MAX_SEGMENTS, STEM_ROW_STRIDE};
use super::register::{assert_fits, panel_width, Simd};
use crate::kernels::aligned::AlignedVec;
use crate::kernels::generic::tap;
use crate::kernels::shapes::{Clamp, ConvGeometry};

/// Dense convolution (the stem) as a GEMM over receptive fields: each output pixel's
/// `kh x kw x in_c` input values form one row of A, multiplied by the weights, which were packed at
/// load like any GEMM's (`[kh][kw][in_c]` rows, `out_c` columns). With 3 input channels a kernel
/// vectorised over them cannot fill the lanes; over the output channels, as a GEMM, it can.
///
/// Interior pixels are read in place: in the image, a pixel's kernel row is `kw * in_c`
/// consecutive values and the next pixel's starts `stride_w * in_c` later, so the microkernel
/// walks A with one segment per kernel row. Only pixels whose taps reach the padding (and
/// kernels of another height than [`MAX_SEGMENTS`]) are copied into an im2col matrix first, with
/// zeros for the padding; copying every pixel cost about a third of the stem's time.
///
/// # Safety
/// `S`'s CPU features must be enabled (see [`Simd`]). The slices' lengths are checked here.
#[inline(always)]
pub(crate) unsafe fn dense_conv<S: Simd>(
    g: &ConvGeometry,
    input: &[f32],
    packed: &[f32],
    bias: &[f32],
    act: Clamp,
    out: &mut [f32],
) {
    assert_eq!(input.len(), g.input_len(), "dense_conv input length");
    assert_eq!(out.len(), g.output_len(), "dense_conv output length");
    let (c, field, n) = (g.in_c, g.kh * g.kw * g.in_c, g.out_c);
    let nr = panel_width::<S>();
    assert_eq!(
        packed.len(),
        n.div_ceil(nr) * field * nr,
        "dense_conv packed length"
    );
    assert_eq!(bias.len(), n, "dense_conv bias length");
    assert_fits::<S>(n);
    // SAFETY: the features are enabled (the caller's contract).
    let e = unsafe {
        Epilogue {
            lo: S::splat(act.lo),
            hi: S::splat(act.hi),
        }
    };
    let direct = g.kh == MAX_SEGMENTS;
    let (ox_lo, ox_hi) = interior_columns(g);
    let in_row = g.in_w * c;
    // Taken out of the thread-local, not used inside a closure (see `gemm`).
    let mut cols = IM2COL.take();
    for b in 0..g.batch {
        for oy in 0..g.out_h {
            // SAFETY: output row (b, oy) is out_w * n values of `out`'s asserted output_len(), as
            // b < batch and oy < out_h.
            let out_row = unsafe { out.as_mut_ptr().add((b * g.out_h + oy) * g.out_w * n) };
            let interior = interior_row(g, oy).filter(|_| direct && ox_hi > ox_lo);
            if let Some(y) = interior {
                // SAFETY: input rows y..y + kh lie in image b (interior_row: y + kh <= in_h),
                // and ox_lo * stride_w - pad_left, the first interior pixel's first tap, is a
                // column of them; `input` has the asserted input_len().
                let first = unsafe {
                    input
                        .as_ptr()
                        .add((b * g.in_h + y) * in_row + (ox_lo * g.stride_w - g.pad_left) * c)
                };
                let mut ptrs = [first; MAX_SEGMENTS];
                for (ky, ptr) in ptrs.iter_mut().enumerate().take(g.kh) {
                    // SAFETY: row y + ky < y + kh of image b, as above.
                    *ptr = unsafe { first.add(ky * in_row) };
                }
                let a = ATile {
                    ptrs,
                    segment_len: g.kw * c,
                    row_stride: g.stride_w * c,
                    k_stride: 1,
                };
                let count = ox_hi - ox_lo;
                // SAFETY: the features are enabled (the caller's contract). Row r < count of A is
                // interior pixel ox_lo + r: segment ky is its kernel row ky, kw * c values from
                // ptrs[ky] + r * stride_w * c, all inside the input, and one past its end is
                // still in it; kh = MAX_SEGMENTS such rows make the field of k = field values.
                // RS is 0 or the row stride. `packed` and `bias` have the asserted lengths, and
                // this output row holds the count pixels from ox_lo < ox_hi <= out_w.
                unsafe {
                    let c_first = out_row.add(ox_lo * n);
                    if a.row_stride == STEM_ROW_STRIDE {
                        run_tiles::<S, MAX_SEGMENTS, STEM_ROW_STRIDE>(
                            &a, count, field, packed, bias, n, &e, c_first,
                        );
                    } else {
                        run_tiles::<S, MAX_SEGMENTS, 0>(
                            &a, count, field, packed, bias, n, &e, c_first,
                        );
                    }
                }
            }
            // The rest of the row (all of it when the kernel rows reach the padding) via im2col.
            let edges = match interior {
                Some(_) => [0..ox_lo, ox_hi..g.out_w],
                None => [0..g.out_w, 0..0],
            };
            for pixels in edges.into_iter().filter(|p| !p.is_empty()) {
                cols.resize_for_overwrite(pixels.len() * field);
                for (ox, row) in pixels.clone().zip(cols.chunks_exact_mut(field)) {
                    im2col_pixel(g, (ox_lo, ox_hi), input, b, oy, ox, row);
                }
                let a = ATile::single(cols.as_ptr(), field, field, 1);
                // SAFETY: the features are enabled (the caller's contract). The im2col matrix
                // holds pixels.len() rows of `field` values, one segment each; `packed` and
                // `bias` have the asserted lengths, and this output row holds the pixels from
                // pixels.start < pixels.end <= out_w.
                unsafe {
                    let c_first = out_row.add(pixels.start * n);
                    run_tiles::<S, 1, 0>(&a, pixels.len(), field, packed, bias, n, &e, c_first);
                }
            }
        }
    }
    IM2COL.set(cols);
}

/// Runs `rows` rows of A (starting at `a`) against every weight panel into `c` (row stride `n`),
/// in tiles of the microkernel's rows.
///
/// # Safety
/// `S`'s CPU features must be enabled; `a` must meet the microkernel's contract on A (see
/// `gemm::micro`) for `rows` rows and `k`: every segment of every row readable,
/// `SEGMENTS * a.segment_len == k`, `RS` 0 or `a.row_stride`. `packed` must hold
/// `n.div_ceil(PANEL)` panels of `k * PANEL` values and `bias` `n` values, and `c` must be
/// writable for `rows` rows of `n` values at row stride `n`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_tiles<S: Simd, const SEGMENTS: usize, const RS: usize>(
    a: &ATile,
    rows: usize,
    k: usize,
    packed: &[f32],
    bias: &[f32],
    n: usize,
    e: &Epilogue<S::V>,
    c: *mut f32,
) {
    let nr = panel_width::<S>();
    for j in 0..n.div_ceil(nr) {
        let cols = nr.min(n - j * nr);
        let mut i = 0;
        while i < rows {
            let r = tile_rows::<S>(cols).min(rows - i);
            let mut t = *a;
            // SAFETY: the features are enabled (the caller's contract). Rows i..i + r are among
            // the caller's `rows` (r <= rows - i), so each segment moved to row i meets micro's
            // contract for the tile's r rows; panel j < n.div_ceil(nr) is the k * nr values from
            // j * k * nr of `packed`, and its cols columns from j * nr are in `bias` and in rows
            // i..i + r of `c`; r <= tile_rows(cols), cols <= nr.
            unsafe {
                for ptr in &mut t.ptrs[..SEGMENTS] {
                    *ptr = ptr.add(i * t.row_stride);
                }
                tile::<S, SEGMENTS, RS>(
                    r,
                    k,
                    &t,
                    packed.as_ptr().add(j * k * nr),
                    bias.as_ptr().add(j * nr),
                    cols,
                    e,
                    c.add(i * n + j * nr),
                    n,
                );
            }
            i += r;
        }
    }
}

/// Writes output pixel `(oy, ox)` of image `b`'s receptive field into `row`, zeros for the taps in
/// the padding; `(ox_lo, ox_hi)` are `g`'s [`interior_columns`].
#[inline(always)]
fn im2col_pixel(
    g: &ConvGeometry,
    (ox_lo, ox_hi): (usize, usize),
    input: &[f32],
    b: usize,
    oy: usize,
    ox: usize,
    row: &mut [f32],
) {
    let c = g.in_c;
    match interior_row(g, oy) {
        Some(y) if (ox_lo..ox_hi).contains(&ox) => {
            // Every tap inside: each kernel row is one run of kw pixels.
            let (span, in_row) = (g.kw * c, g.in_w * c);
            let x = ox * g.stride_w - g.pad_left;
            for (ky, dst) in row.chunks_exact_mut(span).enumerate() {
                let from = (b * g.in_h + y + ky) * in_row + x * c;
                copy_short(&input[from..from + span], dst);
            }
        }
        _ => {
            row.fill(0.0);
            visit_taps(g, b, oy, ox, |px, tap| {
                copy_short(
                    &input[px * c..(px + 1) * c],
                    &mut row[tap * c..(tap + 1) * c],
                )
            });
        }
    }
}

/// Copies a few values (a pixel's channels, or a kernel row of an RGB input); for so few an inline
/// loop beats a call to `memcpy`.
#[inline(always)]
fn copy_short(src: &[f32], dst: &mut [f32]) {
    if src.len() <= 16 {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v;
        }
    } else {
        dst.copy_from_slice(src);
    }
}

/// The first input row under output row `oy` when all its kernel rows land inside the input.
#[inline(always)]
pub(super) fn interior_row(g: &ConvGeometry, oy: usize) -> Option<usize> {
    (oy * g.stride_h)
        .checked_sub(g.pad_top)
        .filter(|y| y + g.kh <= g.in_h)
}

/// Output columns whose taps all land inside the input row: `[lo, hi)`.
#[inline(always)]
pub(super) fn interior_columns(g: &ConvGeometry) -> (usize, usize) {
    let hi = if g.in_w + g.pad_left >= g.kw {
        ((g.in_w + g.pad_left - g.kw) / g.stride_w + 1).min(g.out_w)
    } else {
        0
    };
    (g.pad_left.div_ceil(g.stride_w).min(hi), hi)
}

thread_local! {
    /// Per-thread scratch for the im2col matrix of the dense convolution.
    static IM2COL: std::cell::Cell<AlignedVec> = const { std::cell::Cell::new(AlignedVec::new()) };
}

/// Calls `f(input pixel index, tap index)` for each kernel tap of output pixel `(oy, ox)` of
/// image `b` that lands inside the input (taps in the zero padding are skipped).
#[inline(always)]
pub(super) fn visit_taps(
    g: &ConvGeometry,
    b: usize,
    oy: usize,
    ox: usize,
    mut f: impl FnMut(usize, usize),
) {
    for ky in 0..g.kh {
        let Some(iy) = tap(oy, g.stride_h, ky, g.pad_top, g.in_h) else {
            continue;
        };
        for kx in 0..g.kw {
            if let Some(ix) = tap(ox, g.stride_w, kx, g.pad_left, g.in_w) {
                f((b * g.in_h + iy) * g.in_w + ix, ky * g.kw + kx);
            }
        }
    }
}
