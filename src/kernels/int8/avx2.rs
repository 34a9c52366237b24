//! AVX2 integer kernels, bit-exact with [`super::generic`].
//!
//! AVX2 has no 8-bit dot product that cannot saturate: `vpmaddubsw` adds two u8 x s8 products
//! into an i16, and 255 x 127 x 2 overflows it. These kernels widen both operands to 16 bits
//! first (activations minus their zero point, weights minus theirs, both within -255..=255) and
//! multiply-add pairs with `vpmaddwd` into i32, which is exact: a pair of products is at most
//! 2 x 255^2. That is 16 multiply-adds per instruction, as many as an FP32 FMA's 8 lanes times
//! two; what int8 saves on this tier is memory traffic, not arithmetic.
//!
//! Weights are packed at load so that one 256-bit load holds the pairs of 8 output channels:
//! the GEMM's as `[panel of 16 columns][k pair][16][2]`, the depthwise's as `[group of 8
//! channels][tap pair][8][2]`, both zero-padded.

use std::arch::x86_64::*;
use std::cell::Cell;

use super::operands::QuantLayer;
use super::requant::Requant;
use crate::kernels::generic::tap;
use crate::kernels::shapes::{ConvGeometry, GemmShape};

/// Output columns per GEMM panel (two vectors of 8 accumulators).
const NR: usize = 16;
/// Rows per GEMM tile.
pub const MR: usize = 4;
/// Channels per depthwise group.
const GROUP: usize = 8;
/// Pairs of taps the depthwise holds on the stack: up to 8x8 kernels (the importer refuses
/// larger ones, see [`MAX_DEPTHWISE_TAPS`](super::operands::MAX_DEPTHWISE_TAPS)).
const MAX_TAP_PAIRS: usize = super::operands::MAX_DEPTHWISE_TAPS.div_ceil(2);

/// Whether this CPU runs these kernels.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Packs centred GEMM weights `[k][n]` into panels of 16 columns, `[panel][k / 2][16][2]`, with
/// `k` rounded up to even and `n` to 16 by zeros.
pub fn pack_gemm(k: usize, n: usize, w: &[i16]) -> Vec<i16> {
    assert_eq!(w.len(), k * n, "gemm weights length");
    let pairs = k.div_ceil(2);
    let mut out = vec![0i16; n.div_ceil(NR) * pairs * NR * 2];
    for p in 0..k {
        for j in 0..n {
            let (panel, col) = (j / NR, j % NR);
            out[((panel * pairs + p / 2) * NR + col) * 2 + p % 2] = w[p * n + j];
        }
    }
    out
}

/// Packs centred depthwise weights `[taps][c]` into groups of 8 channels, `[c / 8][taps /
/// 2][8][2]`, with the taps rounded up to even and the channels to 8 by zeros.
pub fn pack_depthwise(taps: usize, c: usize, w: &[i16]) -> Vec<i16> {
    assert_eq!(w.len(), taps * c, "depthwise weights length");
    let pairs = taps.div_ceil(2);
    let mut out = vec![0i16; c.div_ceil(GROUP) * pairs * GROUP * 2];
    for t in 0..taps {
        for ch in 0..c {
            let (group, lane) = (ch / GROUP, ch % GROUP);
            out[((group * pairs + t / 2) * GROUP + lane) * 2 + t % 2] = w[t * c + ch];
        }
    }
    out
}

/// The GEMM `c = requant(bias + (a - zero) x b)` on weights packed by [`pack_gemm`].
pub fn gemm(s: &GemmShape, a: &[u8], layer: &QuantLayer, c: &mut [u8]) {
    let pairs = s.k.div_ceil(2);
    let panels = s.n.div_ceil(NR);
    assert_eq!(a.len(), s.m * s.k, "gemm a length");
    assert_eq!(
        layer.weights.len(),
        panels * pairs * NR * 2,
        "packed weights"
    );
    assert_eq!(layer.bias.len(), s.n, "gemm bias length");
    assert_eq!(layer.requant.scale.len(), s.n, "gemm scales");
    assert_eq!(c.len(), s.m * s.n, "gemm c length");
    assert!(supported(), "the AVX2 int8 GEMM needs AVX2");
    // SAFETY: AVX2 is present (checked above).
    unsafe { gemm_avx2(s, a, layer, c) }
}

#[target_feature(enable = "avx2")]
fn gemm_avx2(s: &GemmShape, a: &[u8], layer: &QuantLayer, c: &mut [u8]) {
    let pairs = s.k.div_ceil(2);
    // Each row's centred activations as 16-bit pairs in one i32, ready to broadcast.
    let mut rows = ROWS.take();
    // Grown, never cleared: every value the tiles read is written just below.
    if rows.len() < s.m * pairs {
        rows.resize(s.m * pairs, 0);
    }
    for (row, dst) in a.chunks_exact(s.k).zip(rows.chunks_exact_mut(pairs)) {
        centre_row(row, layer.input_zero, dst);
    }
    let params = Epilogue::new(layer.bias, layer.requant);
    tiles(s, &rows, layer, &params, c);
    ROWS.set(rows);
}

/// The GEMM of `s` on rows already centred into 16-bit pairs (`s.k.div_ceil(2)` per row), tile
/// by tile, into `c`.
#[target_feature(enable = "avx2")]
fn tiles(s: &GemmShape, rows: &[i32], layer: &QuantLayer, params: &Epilogue, c: &mut [u8]) {
    let pairs = s.k.div_ceil(2);
    for (panel, w) in layer.weights.chunks_exact(pairs * NR * 2).enumerate() {
        let col = panel * NR;
        let width = NR.min(s.n - col);
        let mut i = 0;
        while i < s.m {
            let tile = Tile {
                rows: &rows[i * pairs..],
                pairs,
                weights: w,
                out_row: i,
                col,
                width,
            };
            // A last panel of at most 8 columns (the stem of a narrow model) computes and
            // stores only its first half.
            i += match (s.m - i, width <= 8) {
                (1, false) => tile.run::<1>(params, s.n, c),
                (2, false) => tile.run::<2>(params, s.n, c),
                (3, false) => tile.run::<3>(params, s.n, c),
                (_, false) => tile.run::<MR>(params, s.n, c),
                (1, true) => tile.run_half::<1>(params, s.n, c),
                (2, true) => tile.run_half::<2>(params, s.n, c),
                (3, true) => tile.run_half::<3>(params, s.n, c),
                (_, true) => tile.run_half::<MR>(params, s.n, c),
            };
        }
    }
}

/// A dense convolution (the stem) on weights packed by [`pack_gemm`] from `[kh][kw][in_c]
/// [out_c]`: each output row's patches are centred straight into the GEMM's 16-bit pairs
/// (padded taps are 0 once centred), without the byte patches of
/// [`im2col`](super::generic::im2col) and the GEMM's own centring pass, then run through the
/// GEMM's tiles.
pub fn dense(g: &ConvGeometry, input: &[u8], layer: &QuantLayer, out: &mut [u8]) {
    let k = g.kh * g.kw * g.in_c;
    assert_eq!(input.len(), g.input_len(), "dense input length");
    assert_eq!(out.len(), g.output_len(), "dense output length");
    assert_eq!(
        layer.weights.len(),
        g.out_c.div_ceil(NR) * k.div_ceil(2) * NR * 2,
        "packed dense weights"
    );
    assert_eq!(layer.bias.len(), g.out_c, "dense bias length");
    assert_eq!(layer.requant.scale.len(), g.out_c, "dense scales");
    assert!(supported(), "the AVX2 int8 dense convolution needs AVX2");
    // SAFETY: AVX2 is present (checked above).
    unsafe { dense_avx2(g, input, layer, out) }
}

#[target_feature(enable = "avx2")]
fn dense_avx2(g: &ConvGeometry, input: &[u8], layer: &QuantLayer, out: &mut [u8]) {
    let k = g.kh * g.kw * g.in_c;
    let pairs = k.div_ceil(2);
    let run = g.kw * g.in_c;
    let zero = i16::from(layer.input_zero);
    let mut rows = ROWS.take();
    if rows.len() < g.out_w * pairs {
        rows.resize(g.out_w * pairs, 0);
    }
    let params = Epilogue::new(layer.bias, layer.requant);
    let s = GemmShape {
        m: g.out_w,
        k,
        n: g.out_c,
    };
    let out_row = g.out_w * g.out_c;
    for (r, c) in out.chunks_exact_mut(out_row).enumerate() {
        let (b, oy) = (r / g.out_h, r % g.out_h);
        for (ox, dst) in rows.chunks_exact_mut(pairs).take(g.out_w).enumerate() {
            // SAFETY: an i32 slice seen as twice as many i16: same memory, alignment 2 <= 4.
            let words = unsafe {
                std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<i16>(), 2 * pairs)
            };
            words[k..].fill(0);
            let left = (ox * g.stride_w).checked_sub(g.pad_left);
            for (ky, taps) in words[..k].chunks_exact_mut(run).enumerate() {
                let Some(iy) = tap(oy, g.stride_h, ky, g.pad_top, g.in_h) else {
                    taps.fill(0);
                    continue;
                };
                let row = &input[((b * g.in_h + iy) * g.in_w) * g.in_c..][..g.in_w * g.in_c];
                match left.filter(|&x0| x0 + g.kw <= g.in_w) {
                    // Inside the row: one run of `kw * in_c` bytes.
                    Some(x0) => centre_run(taps, &row[x0 * g.in_c..][..run], zero),
                    None => {
                        for (kx, t) in taps.chunks_exact_mut(g.in_c).enumerate() {
                            match tap(ox, g.stride_w, kx, g.pad_left, g.in_w) {
                                Some(ix) => centre_run(t, &row[ix * g.in_c..][..g.in_c], zero),
                                None => t.fill(0),
                            }
                        }
                    }
                }
            }
        }
        tiles(&s, &rows, layer, &params, c);
    }
    ROWS.set(rows);
}

/// `dst = src - zero`, widened; the stem's runs of 9 bytes with a constant length, which the
/// compiler vectorises.
#[inline(always)]
fn centre_run(dst: &mut [i16], src: &[u8], zero: i16) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [i16], src: &[u8], zero: i16) {
        for (d, &v) in dst[..N].iter_mut().zip(&src[..N]) {
            *d = i16::from(v) - zero;
        }
    }
    match dst.len() {
        9 => fixed::<9>(dst, src, zero),
        3 => fixed::<3>(dst, src, zero),
        _ => {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = i16::from(v) - zero;
            }
        }
    }
}

/// `row - zero` as i16, two to an i32 (little-endian: the even element in the low half), the
/// last pair padded with 0 when the row is odd: `pairs` holds `row.len().div_ceil(2)` values.
#[target_feature(enable = "avx2")]
fn centre_row(row: &[u8], zero: u8, pairs: &mut [i32]) {
    assert_eq!(pairs.len(), row.len().div_ceil(2), "centred pairs length");
    let words = pairs.as_mut_ptr().cast::<i16>();
    let zeros = _mm256_set1_epi16(i16::from(zero));
    let mut chunks = row.chunks_exact(16);
    for (i, chunk) in (&mut chunks).enumerate() {
        // SAFETY: `chunk` holds 16 bytes; `pairs` holds at least `row.len()` i16, of which these
        // are 16 at `16 * i`.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            let centred = _mm256_sub_epi16(_mm256_cvtepu8_epi16(v), zeros);
            _mm256_storeu_si256(words.add(16 * i).cast(), centred);
        }
    }
    let done = row.len() - chunks.remainder().len();
    for (j, &v) in chunks.remainder().iter().enumerate() {
        // SAFETY: `done + j < row.len()`, within `pairs`' i16.
        unsafe { *words.add(done + j) = i16::from(v) - i16::from(zero) };
    }
    if row.len() % 2 == 1 {
        // SAFETY: the odd row's padding half, the last of `pairs`' i16.
        unsafe { *words.add(row.len()) = 0 };
    }
}

thread_local! {
    /// The calling thread's scratch for the GEMM's centred activation pairs: it grows to the
    /// largest GEMM the thread meets and stays, so that steady-state runs do not allocate.
    static ROWS: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    /// The calling thread's row of zero points, which the depthwise's padded taps read.
    static PADDING: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The per-column data of the requantization. Columns come 8 at a time from a multiple of 8;
/// the last, incomplete 8 and the padding after them (up to a whole 16-column panel) read a
/// zero-padded copy, so that nothing is allocated per call.
pub(super) struct Epilogue<'a> {
    bias: &'a [i32],
    scale: &'a [f32],
    /// The first column whose 8 are not all real: `n` rounded down to 8.
    tail: usize,
    tail_bias: [i32; 2 * NR],
    tail_scale: [f32; 2 * NR],
    zero: i32,
    lo: f32,
    hi: f32,
}

impl<'a> Epilogue<'a> {
    pub(super) fn new(bias: &'a [i32], requant: &'a Requant) -> Self {
        let n = bias.len();
        let tail = n / 8 * 8;
        let mut tail_bias = [0; 2 * NR];
        let mut tail_scale = [0.0; 2 * NR];
        tail_bias[..n - tail].copy_from_slice(&bias[tail..]);
        tail_scale[..n - tail].copy_from_slice(&requant.scale[tail..n]);
        let zero = i32::from(requant.zero);
        Epilogue {
            bias,
            scale: &requant.scale,
            tail,
            tail_bias,
            tail_scale,
            zero,
            lo: (i32::from(requant.lo) - zero) as f32,
            hi: (i32::from(requant.hi) - zero) as f32,
        }
    }

    /// Requantizes the 8 accumulators of columns `col..col + 8` (`col` a multiple of 8), as
    /// [`Requant::apply`] does one: `round_half_even(clamp(f32(acc + bias) * scale)) + zero`
    /// (the conversion rounds half to even under the default MXCSR, which nothing in this
    /// process changes).
    #[target_feature(enable = "avx2")]
    pub(super) fn apply(&self, acc: __m256i, col: usize) -> __m256i {
        let (bias, scale) = if col < self.tail {
            (&self.bias[col..col + 8], &self.scale[col..col + 8])
        } else {
            let at = col - self.tail;
            (&self.tail_bias[at..at + 8], &self.tail_scale[at..at + 8])
        };
        // SAFETY: both slices hold exactly 8 elements (sliced above).
        let (bias, scale) = unsafe {
            (
                _mm256_loadu_si256(bias.as_ptr().cast()),
                _mm256_loadu_ps(scale.as_ptr()),
            )
        };
        let x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, bias)), scale);
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(self.lo)),
            _mm256_set1_ps(self.hi),
        );
        _mm256_add_epi32(_mm256_cvtps_epi32(x), _mm256_set1_epi32(self.zero))
    }
}

/// Up to `R` rows of one 16-column panel.
struct Tile<'a> {
    /// The first row's activation pairs; the next rows follow every `pairs`.
    rows: &'a [i32],
    pairs: usize,
    /// The panel's packed weights.
    weights: &'a [i16],
    out_row: usize,
    col: usize,
    /// Valid columns of the panel (16 but in the last).
    width: usize,
}

impl Tile<'_> {
    /// Computes `R` rows and returns `R`.
    #[target_feature(enable = "avx2")]
    fn run<const R: usize>(&self, params: &Epilogue, n: usize, c: &mut [u8]) -> usize {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        let rows = &self.rows[..R * self.pairs];
        for (p, w) in self.weights.chunks_exact(NR * 2).enumerate() {
            // SAFETY: `w` holds 32 i16, two 256-bit vectors.
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().cast()),
                    _mm256_loadu_si256(w.as_ptr().add(16).cast()),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_epi32(rows[r * self.pairs + p]);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(a, b0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(a, b1));
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let lo = params.apply(acc[0], self.col);
            let hi = params.apply(acc[1], self.col + 8);
            let bytes = pack_16(lo, hi);
            let at = (self.out_row + r) * n + self.col;
            store_bytes(bytes, &mut c[at..at + self.width]);
        }
        R
    }

    /// [`Tile::run`] for a panel of at most 8 valid columns (the last panel of a layer as
    /// narrow as the stem of alpha 0.25): only its first half is computed and stored.
    #[target_feature(enable = "avx2")]
    fn run_half<const R: usize>(&self, params: &Epilogue, n: usize, c: &mut [u8]) -> usize {
        let mut acc = [_mm256_setzero_si256(); R];
        let rows = &self.rows[..R * self.pairs];
        for (p, w) in self.weights.chunks_exact(NR * 2).enumerate() {
            // SAFETY: `w` holds 32 i16; the first 16 are the panel's first 8 columns.
            let b0 = unsafe { _mm256_loadu_si256(w.as_ptr().cast()) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_epi32(rows[r * self.pairs + p]);
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, b0));
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let bytes = pack_16(params.apply(*acc, self.col), _mm256_setzero_si256());
            let at = (self.out_row + r) * n + self.col;
            store_bytes(bytes, &mut c[at..at + self.width]);
        }
        R
    }
}

/// 16 i32 values within 0..=255 (columns 0-7 in `lo`, 8-15 in `hi`) as 16 bytes in order.
#[target_feature(enable = "avx2")]
pub(super) fn pack_16(lo: __m256i, hi: __m256i) -> __m128i {
    // packs works within 128-bit lanes: reorder the quadwords after each step.
    let words = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(lo, hi));
    let bytes = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(words, words));
    _mm256_castsi256_si128(bytes)
}

/// Stores the first `out.len()` (at most 16) bytes of `v`.
#[target_feature(enable = "avx2")]
pub(super) fn store_bytes(v: __m128i, out: &mut [u8]) {
    if out.len() == 16 {
        // SAFETY: `out` holds 16 bytes.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), v) };
    } else if out.len() == 8 {
        // SAFETY: `out` holds 8 bytes, what storel writes.
        unsafe { _mm_storel_epi64(out.as_mut_ptr().cast(), v) };
    } else {
        let mut tmp = [0u8; 16];
        // SAFETY: `tmp` holds 16 bytes.
        unsafe { _mm_storeu_si128(tmp.as_mut_ptr().cast(), v) };
        out.copy_from_slice(&tmp[..out.len()]);
    }
}

/// Depthwise convolution on weights packed by [`pack_depthwise`].
pub fn depthwise(g: &ConvGeometry, input: &[u8], layer: &QuantLayer, out: &mut [u8]) {
    let taps = g.kh * g.kw;
    assert_eq!(g.in_c, g.out_c, "depthwise channels");
    assert_eq!(input.len(), g.input_len(), "depthwise input length");
    assert_eq!(out.len(), g.output_len(), "depthwise output length");
    assert_eq!(
        layer.weights.len(),
        g.in_c.div_ceil(GROUP) * taps.div_ceil(2) * GROUP * 2,
        "packed depthwise weights"
    );
    assert_eq!(layer.bias.len(), g.out_c, "depthwise bias length");
    assert_eq!(layer.requant.scale.len(), g.out_c, "depthwise scales");
    assert!(
        taps <= super::operands::MAX_DEPTHWISE_TAPS,
        "depthwise taps"
    );
    assert!(supported(), "the AVX2 int8 depthwise needs AVX2");
    // SAFETY: AVX2 is present (checked above).
    unsafe { depthwise_avx2(g, input, layer, out) }
}

#[target_feature(enable = "avx2")]
fn depthwise_avx2(g: &ConvGeometry, input: &[u8], layer: &QuantLayer, out: &mut [u8]) {
    let c = g.in_c;
    let taps = g.kh * g.kw;
    // A padded tap reads the zero point: a real 0, which adds nothing.
    let mut padding = PADDING.take();
    padding.clear();
    padding.resize(c, layer.input_zero);
    // Where each tap of the current pixel reads its `c` bytes. The pairs' last slot past the
    // real taps points at the padding (its weight is 0).
    let mut sources: [*const u8; 2 * MAX_TAP_PAIRS] = [padding.as_ptr(); 2 * MAX_TAP_PAIRS];
    // For a pixel whose taps all land inside the input, tap `t` reads at the pixel's first tap
    // plus `offsets[t]`: no per-tap bounds to work out.
    let mut offsets = [0usize; 2 * MAX_TAP_PAIRS];
    for (t, o) in offsets.iter_mut().enumerate().take(taps) {
        *o = ((t / g.kw) * g.in_w + t % g.kw) * c;
    }
    let inside = |o: usize, stride: usize, k: usize, pad: usize, size: usize| {
        o * stride >= pad && o * stride - pad + k <= size
    };
    let pixel = Pixel {
        c,
        pairs: taps.div_ceil(2),
        weights: layer.weights,
        params: Epilogue::new(layer.bias, layer.requant),
        zero: _mm256_set1_epi16(i16::from(layer.input_zero)),
        layer,
    };
    for b in 0..g.batch {
        for oy in 0..g.out_h {
            let row_inside = inside(oy, g.stride_h, g.kh, g.pad_top, g.in_h);
            for ox in 0..g.out_w {
                if row_inside && inside(ox, g.stride_w, g.kw, g.pad_left, g.in_w) {
                    let (iy, ix) = (oy * g.stride_h - g.pad_top, ox * g.stride_w - g.pad_left);
                    let first = ((b * g.in_h + iy) * g.in_w + ix) * c;
                    // The last tap ends inside the input: every tap's `c` bytes are in it.
                    let last = first + offsets[taps - 1] + c;
                    let first = &input[first..last];
                    for (s, &o) in sources.iter_mut().zip(&offsets).take(taps) {
                        // SAFETY: `o + c <= first.len()` (the last tap's end bounds them all).
                        *s = unsafe { first.as_ptr().add(o) };
                    }
                } else {
                    for ky in 0..g.kh {
                        let iy = tap(oy, g.stride_h, ky, g.pad_top, g.in_h);
                        for kx in 0..g.kw {
                            let ix = tap(ox, g.stride_w, kx, g.pad_left, g.in_w);
                            sources[ky * g.kw + kx] = match (iy, ix) {
                                (Some(iy), Some(ix)) => {
                                    let at = ((b * g.in_h + iy) * g.in_w + ix) * c;
                                    input[at..at + c].as_ptr()
                                }
                                _ => padding.as_ptr(),
                            };
                        }
                    }
                }
                let o_at = ((b * g.out_h + oy) * g.out_w + ox) * c;
                // SAFETY: every source holds `c` readable bytes: input pixels checked above,
                // the padding row has `c`.
                unsafe { pixel.run(&sources, &mut out[o_at..o_at + c]) };
            }
        }
    }
    PADDING.set(padding);
}

/// What every output pixel of one depthwise layer shares.
struct Pixel<'a> {
    c: usize,
    pairs: usize,
    weights: &'a [i16],
    params: Epilogue<'a>,
    /// The input zero point in each 16-bit lane.
    zero: __m256i,
    layer: &'a QuantLayer<'a>,
}

impl Pixel<'_> {
    /// One output pixel's `c` channels into `o`, tap `t` reading `sources[t]`.
    ///
    /// # Safety
    /// Each of the first `2 * pairs` sources points at `c` readable bytes.
    #[target_feature(enable = "avx2")]
    unsafe fn run(&self, sources: &[*const u8; 2 * MAX_TAP_PAIRS], o: &mut [u8]) {
        let (c, pairs, zero) = (self.c, self.pairs, self.zero);
        let full = c / GROUP * GROUP;
        let group_len = pairs * GROUP * 2;
        let mut group = 0;
        // Two groups at a time where there are two: 16 channels, one 16-byte load per tap.
        while group + 2 <= full / GROUP {
            let ch = group * GROUP;
            let w = &self.weights[group * group_len..][..2 * group_len];
            let (w_lo, w_hi) = w.split_at(group_len);
            let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for p in 0..pairs {
                let (wl, wh) = (&w_lo[p * 16..p * 16 + 16], &w_hi[p * 16..p * 16 + 16]);
                // SAFETY: channels `ch..ch + 16` are within each source's `c`; `wl`, `wh`
                // hold 16 i16 each.
                let (x0, x1, wl, wh) = unsafe {
                    (
                        _mm_loadu_si128(sources[2 * p].add(ch).cast()),
                        _mm_loadu_si128(sources[2 * p + 1].add(ch).cast()),
                        _mm256_loadu_si256(wl.as_ptr().cast()),
                        _mm256_loadu_si256(wh.as_ptr().cast()),
                    )
                };
                // Each channel's two taps side by side, widened and centred.
                let xl = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x0, x1)), zero);
                let xh = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x0, x1)), zero);
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(xl, wl));
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(xh, wh));
            }
            let bytes = pack_16(self.params.apply(lo, ch), self.params.apply(hi, ch + 8));
            let dst = &mut o[ch..ch + 16];
            // SAFETY: `dst` holds 16 bytes.
            unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes) };
            group += 2;
        }
        if group < full / GROUP {
            let ch = group * GROUP;
            let w = &self.weights[group * group_len..][..group_len];
            let mut acc = _mm256_setzero_si256();
            for (p, w) in w.chunks_exact(GROUP * 2).enumerate() {
                // SAFETY: channels `ch..ch + 8` are within each source's `c`; `w` holds 16 i16.
                let (x0, x1, w) = unsafe {
                    (
                        _mm_loadl_epi64(sources[2 * p].add(ch).cast()),
                        _mm_loadl_epi64(sources[2 * p + 1].add(ch).cast()),
                        _mm256_loadu_si256(w.as_ptr().cast()),
                    )
                };
                let x = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x0, x1));
                let x = _mm256_sub_epi16(x, zero);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, w));
            }
            let bytes = pack_16(self.params.apply(acc, ch), _mm256_setzero_si256());
            let dst = &mut o[ch..ch + GROUP];
            // SAFETY: `dst` holds 8 bytes, what storel writes.
            unsafe { _mm_storel_epi64(dst.as_mut_ptr().cast(), bytes) };
        }
        // Channels past the last whole group, one at a time.
        let layer = self.layer;
        for (ch, o) in o.iter_mut().enumerate().skip(full) {
            let (group, lane) = (ch / GROUP, ch % GROUP);
            let mut acc = layer.bias[ch];
            for (t, src) in sources.iter().enumerate().take(2 * pairs) {
                let w = self.weights[((group * pairs + t / 2) * GROUP + lane) * 2 + t % 2];
                // SAFETY: `ch < c`, within the source's bytes.
                let x = unsafe { *src.add(ch) };
                acc += (i32::from(x) - i32::from(layer.input_zero)) * i32::from(w);
            }
            *o = layer.requant.apply(acc, ch);
        }
    }
}

/// ONNX `QuantizeLinear` of a slice into uint8, as [`super::requant::quantize`] does each value:
/// `saturate(round_half_even(x / scale) + zero)`.
pub fn quantize(input: &[f32], scale: f32, zero: u8, out: &mut [u8]) {
    assert_eq!(input.len(), out.len(), "quantize lengths");
    assert!(supported(), "the AVX2 quantize needs AVX2");
    // SAFETY: AVX2 is present (checked above).
    unsafe { quantize_avx2(input, scale, zero, out) }
}

#[target_feature(enable = "avx2")]
fn quantize_avx2(input: &[f32], scale: f32, zero: u8, out: &mut [u8]) {
    let (s, z) = (_mm256_set1_ps(scale), _mm256_set1_ps(f32::from(zero)));
    let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    let mut chunks = input.chunks_exact(16);
    let mut outs = out.chunks_exact_mut(16);
    for (x, o) in (&mut chunks).zip(&mut outs) {
        // SAFETY: `x` holds 16 floats.
        let (a, b) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(x.as_ptr().add(8)),
            )
        };
        // Round first (half to even, the default MXCSR), then add the zero point and saturate,
        // in the scalar order: every step is exact but the division.
        let q = |v: __m256| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_div_ps(v, s),
            );
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, z), lo), hi))
        };
        let bytes = pack_16(q(a), q(b));
        // SAFETY: `o` holds 16 bytes.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), bytes) };
    }
    for (x, o) in chunks.remainder().iter().zip(outs.into_remainder()) {
        *o = super::requant::quantize(*x, scale, zero);
    }
}
