//! Vector kernels written once over a small [`Simd`] abstraction and instantiated per instruction
//! set (see `x86_64/`). Every function here is `#[inline(always)]`: it is compiled inside the
//! tier's `#[target_feature]` entry point, so it gets that tier's instructions.
//!
//! GEMM: the driver owns blocking and edges, the microkernel owns the hot loop. Weights are
//! prepacked into panels of `NV * LANES` columns (`[panel][k][NV * LANES]`, zero-padded), so the
//! microkernel reads them contiguously; activations are broadcast one value per row, read in
//! place or from blocks repacked into tiles, as the tier chose (`Simd::REPACK_A`).

use super::aligned::AlignedVec;
use super::cache::CacheSizes;
use super::generic::tap;
use super::{Clamp, ConvGeometry, GemmShape};

/// One SIMD register type and the few operations the kernels need.
///
/// # Safety
/// Implementations are only called from functions compiled with (and dispatched after detecting)
/// the matching target features; pointers must be valid for the lanes they touch.
pub(crate) trait Simd {
    /// The register type.
    type V: Copy;
    /// f32 lanes per register.
    const LANES: usize;
    /// Rows of the GEMM microkernel's full-width tile.
    const MR: usize;
    /// Vectors per weight panel (1 to 4): the full-width tile keeps `MR * NV` accumulators,
    /// which with `NV` weight vectors and a broadcast must fit in the register file.
    const NV: usize;
    /// Columns per packed weight panel, the row stride of the packed layout: `NV * LANES`, or a
    /// wider tier's panel width for narrow vectors that run on that tier's packed weights (then
    /// only on layers of at most `NV * LANES` columns, one partial panel).
    const PANEL: usize;
    /// Whether the GEMM copies each block of A into tiles of `MR` rows (`[k][MR]`) before the
    /// microkernel runs on it, rather than reading A in place (see the tiers for what measured).
    const REPACK_A: bool;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Loads the first `n < LANES` lanes, zeroing the rest.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::V;
    /// Stores the first `n < LANES` lanes.
    unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize);
    /// `a * b + c` with one rounding.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `min(max(v, lo), hi)`, NaN-compatible with [`Clamp::apply`].
    unsafe fn clamp(v: Self::V, lo: Self::V, hi: Self::V) -> Self::V;
}

/// Loads `n` lanes (all when `n >= LANES`).
#[inline(always)]
unsafe fn load_n<S: Simd>(p: *const f32, n: usize) -> S::V {
    if n >= S::LANES {
        S::load(p)
    } else {
        S::load_partial(p, n)
    }
}

/// Stores `n` lanes (all when `n >= LANES`).
#[inline(always)]
unsafe fn store_n<S: Simd>(p: *mut f32, v: S::V, n: usize) {
    if n >= S::LANES {
        S::store(p, v)
    } else {
        S::store_partial(p, v, n)
    }
}

/// Columns per packed weight panel.
#[inline(always)]
pub(crate) const fn panel_width<S: Simd>() -> usize {
    S::PANEL
}

/// Checks that a layer of `n` columns fits the vectors of `S`: every panel of it has at most
/// `NV` vectors of columns in use (always true but for narrow vectors on a wider layout).
#[inline(always)]
fn assert_fits<S: Simd>(n: usize) {
    assert!(
        S::PANEL <= S::NV * S::LANES || n <= S::NV * S::LANES,
        "{n} columns on vectors of {} lanes in panels of {}",
        S::LANES,
        S::PANEL
    );
}

/// Rows of the microkernel's tile for a panel with `cols` columns: a panel whose last vectors
/// are all padding leaves their accumulators free for more rows, so every tile keeps
/// `MR * NV` accumulators (6 x 4, 8 x 3, 12 x 2 or 24 x 1 vectors on AVX-512).
#[inline(always)]
fn tile_rows<S: Simd>(cols: usize) -> usize {
    S::MR * S::NV / cols.div_ceil(S::LANES).clamp(1, S::NV)
}

/// Packs row-major `b` (`k x n`) into panels of `nr` columns: `[panel][k][nr]`, zero-padded.
pub(crate) fn pack_panels(k: usize, n: usize, b: &[f32], nr: usize) -> AlignedVec {
    assert_eq!(b.len(), k * n, "gemm b length");
    let panels = n.div_ceil(nr);
    let mut packed = AlignedVec::new();
    packed.resize(panels * k * nr);
    for j in 0..panels {
        let cols = nr.min(n - j * nr);
        for p in 0..k {
            let dst = &mut packed[(j * k + p) * nr..][..cols];
            dst.copy_from_slice(&b[p * n + j * nr..][..cols]);
        }
    }
    packed
}

/// Bytes of activations kept hot in L2 per block of GEMM rows: a quarter of the L2 (512 KiB of
/// 2 MiB measured best on Emerald Rapids); the weight panels and C need the rest.
fn l2_block_bytes(caches: CacheSizes) -> usize {
    caches.l2 / 4
}

/// Bytes of weight panels kept hot in L1 while a tile of A runs against them: two thirds of the
/// L1d (32 KiB of 48 KiB measured best on Emerald Rapids); the tile of A and the stack need the
/// rest.
fn l1_panel_bytes(caches: CacheSizes) -> usize {
    caches.l1d * 2 / 3
}

/// GEMM on packed weights: `c = clamp(a . b + bias)`.
#[inline(always)]
pub(crate) unsafe fn gemm<S: Simd>(
    s: &GemmShape,
    a: &[f32],
    packed: &[f32],
    bias: &[f32],
    act: Clamp,
    c: &mut [f32],
) {
    let nr = panel_width::<S>();
    let (m, k, n) = (s.m, s.k, s.n);
    assert_eq!(a.len(), m * k, "gemm a length");
    assert_eq!(
        packed.len(),
        n.div_ceil(nr) * k * nr,
        "gemm packed b length"
    );
    assert_eq!(bias.len(), n, "gemm bias length");
    assert_fits::<S>(n);
    assert_eq!(c.len(), m * n, "gemm c length");
    // A multiple of every tile's rows, so that only a block's last tile is short.
    let all_tiles = S::MR * S::NV;
    let caches = CacheSizes::detected();
    let rows_per_block =
        (l2_block_bytes(caches) / (k.max(1) * 4)).max(all_tiles) / all_tiles * all_tiles;
    let ctx = Epilogue {
        lo: S::splat(act.lo),
        hi: S::splat(act.hi),
    };
    let panels = n.div_ceil(nr);
    let cols_of = |j: usize| nr.min(n - j * nr);
    // Weight panels a tile of A meets before the next tile: as many as fit in L1 together, so
    // the A block is swept once per group rather than once per panel.
    let group = (l1_panel_bytes(caches) / (k.max(1) * nr * 4)).clamp(1, panels.max(1));
    // A repacked block pays for its copy once a few weight panels reuse it.
    let repack = S::REPACK_A && panels >= 3;
    // Taken out of the thread-local rather than used in a closure: a closure would not inherit
    // the caller's target features, and the SIMD code inside it would not be inlined.
    // Tiles are `MR` rows on repacked A; read in place, a partial last panel's are taller (see
    // `tile_rows`), and it then runs in a group of its own.
    let rows_of = |j: usize| {
        if repack {
            S::MR
        } else {
            tile_rows::<S>(cols_of(j))
        }
    };
    let mut scratch = A_TILES.take();
    for m0 in (0..m).step_by(rows_per_block) {
        let m1 = (m0 + rows_per_block).min(m);
        if repack {
            pack_a_tiles(&a[m0 * k..m1 * k], k, S::MR, &mut scratch);
        }
        let mut j0 = 0;
        while j0 < panels {
            let mut j1 = (j0 + group).min(panels);
            if j1 - j0 > 1 && rows_of(j1 - 1) != rows_of(j0) {
                j1 -= 1;
            }
            let mut i = m0;
            while i < m1 {
                let rows = rows_of(j0).min(m1 - i);
                // SAFETY: the asserts above bound every row, panel and column touched below;
                // the scratch holds (m1 - m0) * k values when repacked.
                let tile_a = if repack {
                    ATile::single(scratch.as_ptr().add((i - m0) * k), k, 1, rows)
                } else {
                    ATile::single(a.as_ptr().add(i * k), k, k, 1)
                };
                for j in j0..j1 {
                    tile::<S, 1, 0>(
                        rows,
                        k,
                        &tile_a,
                        packed.as_ptr().add(j * k * nr),
                        bias.as_ptr().add(j * nr),
                        cols_of(j),
                        &ctx,
                        c.as_mut_ptr().add(i * n + j * nr),
                        n,
                    );
                }
                i += rows;
            }
            j0 = j1;
        }
    }
    A_TILES.set(scratch);
}

thread_local! {
    /// Per-thread scratch for repacked A blocks; it grows to the largest block and stays.
    static A_TILES: std::cell::Cell<AlignedVec> = const { std::cell::Cell::new(AlignedVec::new()) };
}

/// Copies row-major `a` (`rows x k`) into tiles of `mr` rows, each `[k][tile rows]`.
fn pack_a_tiles(a: &[f32], k: usize, mr: usize, out: &mut AlignedVec) {
    // Every value is written below.
    out.resize_for_overwrite(a.len());
    let rows = a.len() / k.max(1);
    let mut i = 0;
    while i < rows {
        let r = mr.min(rows - i);
        let tile = &mut out[i * k..(i + r) * k];
        for (row, src) in a[i * k..(i + r) * k].chunks_exact(k).enumerate() {
            for (p, &v) in src.iter().enumerate() {
                tile[p * r + row] = v;
            }
        }
        i += r;
    }
}

/// Where the microkernel reads A: K is cut into runs of `segment_len` values (as many as the
/// microkernel's `SEGMENTS`); element (row, q) of segment `s` is at
/// `ptrs[s] + row * row_stride + q * k_stride`. A GEMM has one segment; the direct stem has one
/// per kernel row, read in place from the image.
#[derive(Clone, Copy)]
struct ATile {
    ptrs: [*const f32; MAX_SEGMENTS],
    segment_len: usize,
    row_stride: usize,
    k_stride: usize,
}

/// The row stride of A in the direct stem of an RGB image at stride 2 (MobileNet's): the
/// microkernel is specialised for it (see `micro`).
const STEM_ROW_STRIDE: usize = 6;

/// K segments of an [`ATile`] read in place by the direct stem: its kernel rows. Other kernel
/// heights go through im2col.
const MAX_SEGMENTS: usize = 3;

impl ATile {
    /// A tile whose K is one run of `k` values.
    fn single(ptr: *const f32, k: usize, row_stride: usize, k_stride: usize) -> Self {
        ATile {
            ptrs: [ptr; MAX_SEGMENTS],
            segment_len: k,
            row_stride,
            k_stride,
        }
    }
}

struct Epilogue<V> {
    lo: V,
    hi: V,
}

/// Dispatches a tile to the microkernel specialised for its row count and the vectors of
/// columns in use in its panel (`rows <= tile_rows(cols)`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: Simd, const SEGMENTS: usize, const RS: usize>(
    rows: usize,
    k: usize,
    a: &ATile,
    panel: *const f32,
    bias: *const f32,
    cols: usize,
    e: &Epilogue<S::V>,
    c: *mut f32,
    ldc: usize,
) {
    debug_assert!(rows <= tile_rows::<S>(cols));
    macro_rules! rows {
        ($vectors:literal: $($r:literal)*) => {
            match rows {
                $($r => micro::<S, $r, $vectors, SEGMENTS, RS>(k, a, panel, bias, cols, e, c, ldc),)*
                _ => unreachable!("{rows} rows of {} vectors", $vectors),
            }
        };
    }
    match cols.div_ceil(S::LANES) {
        1 => rows!(1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24),
        2 => rows!(2: 1 2 3 4 5 6 7 8 9 10 11 12),
        3 => rows!(3: 1 2 3 4 5 6 7 8),
        4 => rows!(4: 1 2 3 4 5 6),
        v => unreachable!("a panel of {v} vectors"),
    }
}

/// The microkernel: `R` rows x `V` vectors of columns of `c` (the panel's vectors in use; its
/// all-padding vectors are not read), accumulated over all of `k` in registers, then bias,
/// clamp and a (partial) store.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<S: Simd, const R: usize, const V: usize, const SEGMENTS: usize, const RS: usize>(
    k: usize,
    a: &ATile,
    panel: *const f32,
    bias: *const f32,
    cols: usize,
    e: &Epilogue<S::V>,
    c: *mut f32,
    ldc: usize,
) {
    // Shapes that would not fit the tier's registers are never dispatched (`tile_rows`); the
    // constant test leaves their instances empty.
    if V > S::NV || R * V > S::MR * S::NV {
        unreachable!("a {R} x {V} tile on a tier of {} x {}", S::MR, S::NV);
    }
    let (l, nr) = (S::LANES, panel_width::<S>());
    let mut acc = [[S::zero(); V]; R];
    // A row stride known at compile time puts each row's offset in the instruction: with a
    // run-time stride the tall tiles kept their rows' offsets on the stack and reloaded one per
    // FMA. Specialised, the stems of 224 -> 32 and 128 -> 8 channels ran 1.15-1.35x and
    // 1.3-1.5x as fast on Zen 4 (`cargo bench --bench kernels -- stem`, two interleaved rounds).
    let rs = if RS > 0 { RS } else { a.row_stride };
    let ks = a.k_stride;
    debug_assert!(RS == 0 || RS == a.row_stride);
    debug_assert_eq!(SEGMENTS * a.segment_len, k);
    // One loop over K that steps to the next segment's pointer at the end of each run: with a
    // loop per segment LLVM stored the accumulators to the stack on every step.
    let (mut seg, mut ap, mut left) = (0, a.ptrs[0], a.segment_len);
    for p in 0..k {
        let mut b = [S::zero(); V];
        for (v, bv) in b.iter_mut().enumerate() {
            *bv = S::load(panel.add(p * nr + v * l));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = S::splat(*ap.add(r * rs));
            for (acc_rv, bv) in acc_r.iter_mut().zip(&b) {
                *acc_rv = S::fmadd(av, *bv, *acc_rv);
            }
        }
        ap = ap.add(ks);
        left -= 1;
        if SEGMENTS > 1 && left == 0 && seg + 1 < SEGMENTS {
            seg += 1;
            (ap, left) = (a.ptrs[seg], a.segment_len);
        }
    }
    // Every vector below V holds at least one column (V = cols / LANES rounded up).
    for v in 0..V {
        let n = (cols - v * l).min(l);
        let bias_v = load_n::<S>(bias.add(v * l), n);
        for (r, acc_r) in acc.iter().enumerate() {
            let x = S::clamp(S::add(acc_r[v], bias_v), e.lo, e.hi);
            store_n::<S>(c.add(r * ldc + v * l), x, n);
        }
    }
}

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
    let e = Epilogue {
        lo: S::splat(act.lo),
        hi: S::splat(act.hi),
    };
    let direct = g.kh == MAX_SEGMENTS;
    let (ox_lo, ox_hi) = interior_columns(g);
    let in_row = g.in_w * c;
    // Taken out of the thread-local, not used inside a closure (see `gemm`).
    let mut cols = IM2COL.take();
    for b in 0..g.batch {
        for oy in 0..g.out_h {
            // SAFETY: the asserts above bound the output row, the weights and the bias; the image
            // rows read are those of `interior_row`, which lie inside the input.
            let out_row = out.as_mut_ptr().add((b * g.out_h + oy) * g.out_w * n);
            let interior = interior_row(g, oy).filter(|_| direct && ox_hi > ox_lo);
            if let Some(y) = interior {
                let first = input
                    .as_ptr()
                    .add((b * g.in_h + y) * in_row + (ox_lo * g.stride_w - g.pad_left) * c);
                let mut ptrs = [first; MAX_SEGMENTS];
                for (ky, ptr) in ptrs.iter_mut().enumerate().take(g.kh) {
                    *ptr = first.add(ky * in_row);
                }
                let a = ATile {
                    ptrs,
                    segment_len: g.kw * c,
                    row_stride: g.stride_w * c,
                    k_stride: 1,
                };
                let (count, c_first) = (ox_hi - ox_lo, out_row.add(ox_lo * n));
                if a.row_stride == STEM_ROW_STRIDE {
                    run_tiles::<S, MAX_SEGMENTS, STEM_ROW_STRIDE>(
                        &a, count, field, packed, bias, n, &e, c_first,
                    );
                } else {
                    run_tiles::<S, MAX_SEGMENTS, 0>(&a, count, field, packed, bias, n, &e, c_first);
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
                let c_first = out_row.add(pixels.start * n);
                run_tiles::<S, 1, 0>(&a, pixels.len(), field, packed, bias, n, &e, c_first);
            }
        }
    }
    IM2COL.set(cols);
}

/// Runs `rows` rows of A (starting at `a`) against every weight panel into `c` (row stride `n`),
/// in tiles of the microkernel's rows.
///
/// # Safety
/// `a` must be readable for `rows` rows of `k` values, `packed`, `bias` and `c` must hold the
/// panels, `n` values and `rows x n` values.
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
fn interior_row(g: &ConvGeometry, oy: usize) -> Option<usize> {
    (oy * g.stride_h)
        .checked_sub(g.pad_top)
        .filter(|y| y + g.kh <= g.in_h)
}

/// Output columns whose taps all land inside the input row: `[lo, hi)`.
#[inline(always)]
fn interior_columns(g: &ConvGeometry) -> (usize, usize) {
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

/// Calls `f(input pixel index, tap index)` for each kernel tap of output pixel `(oy, ox)` of
/// image `b` that lands inside the input (taps in the zero padding are skipped).
#[inline(always)]
fn visit_taps(g: &ConvGeometry, b: usize, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
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

/// Independent FMA chains in the peak loop: enough to cover FMA latency x throughput.
const PEAK_CHAINS: usize = 12;

/// Runs `iters x PEAK_CHAINS` vector FMAs with no memory traffic: the machine's FMA peak, used to
/// express measured GFLOP/s as a fraction of it. Returns a value derived from the result so that
/// the loop cannot be optimised away.
#[inline(always)]
pub(crate) unsafe fn fma_loop<S: Simd>(iters: usize) -> f32 {
    let mut acc = [S::zero(); PEAK_CHAINS];
    let (x, y) = (S::splat(0.999_999), S::splat(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = S::fmadd(*a, x, y);
        }
    }
    let mut out = [0.0f32; 64];
    let mut sum = S::zero();
    for a in acc {
        sum = S::add(sum, a);
    }
    S::store(out.as_mut_ptr(), sum);
    out[0]
}

/// Floating-point operations done by [`fma_loop`] (2 per lane per FMA).
pub(crate) const fn fma_loop_flops<S: Simd>(iters: usize) -> usize {
    iters * PEAK_CHAINS * S::LANES * 2
}
