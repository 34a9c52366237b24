//! GEMM: the driver, its cache blocking, weight and activation packing, and the microkernel.
//!
//! The driver owns blocking and edges, the microkernel owns the hot loop. Weights are prepacked
//! into panels of `NV * LANES` columns (`[panel][k][NV * LANES]`, zero-padded), so the
//! microkernel reads them contiguously; activations are broadcast one value per row, read in
//! place or from blocks repacked into tiles, as the tier chose (`Simd::REPACK_A`).

use super::register::{assert_fits, load_n, panel_width, store_n, Simd};
use crate::kernels::aligned::AlignedVec;
use crate::kernels::cache::CacheSizes;
use crate::kernels::shapes::{Clamp, GemmShape};

/// Rows of the microkernel's tile for a panel with `cols` columns: a panel whose last vectors
/// are all padding leaves their accumulators free for more rows, so every tile keeps
/// `MR * NV` accumulators (6 x 4, 8 x 3, 12 x 2 or 24 x 1 vectors on AVX-512).
#[inline(always)]
pub(super) fn tile_rows<S: Simd>(cols: usize) -> usize {
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
///
/// # Safety
/// `S`'s CPU features must be enabled (see [`Simd`]). The slices' lengths are checked here.
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
    // SAFETY: the features are enabled (the caller's contract).
    let ctx = unsafe {
        Epilogue {
            lo: S::splat(act.lo),
            hi: S::splat(act.hi),
        }
    };
    let panels = n.div_ceil(nr);
    let cols_of = |j: usize| nr.min(n - j * nr);
    // Weight panels a tile of A meets before the next tile: as many as fit in L1 together, so
    // the A block is swept once per group rather than once per panel.
    let group = (l1_panel_bytes(caches) / (k.max(1) * nr * 4)).clamp(1, panels.max(1));
    // A repacked block pays for its copy once a few weight panels reuse it.
    let repack = S::REPACK_A && panels >= 3;
    // Tiles are `MR` rows on repacked A; read in place, a partial last panel's are taller (see
    // `tile_rows`), and it then runs in a group of its own.
    let rows_of = |j: usize| {
        if repack {
            S::MR
        } else {
            tile_rows::<S>(cols_of(j))
        }
    };
    // Taken out of the thread-local rather than used in a closure: a closure would not inherit
    // the caller's target features, and the SIMD code inside it would not be inlined.
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
                // SAFETY: rows i..i + rows lie in the block (rows <= m1 - i). Repacked, their
                // tile starts at (i - m0) * k in the scratch, which holds the block's
                // (m1 - m0) * k values (i - m0 is a multiple of MR, where pack_a_tiles starts its
                // tiles); in place, at i * k in `a`, whose m * k values are asserted.
                let tile_a = unsafe {
                    if repack {
                        ATile::single(scratch.as_ptr().add((i - m0) * k), k, 1, rows)
                    } else {
                        ATile::single(a.as_ptr().add(i * k), k, k, 1)
                    }
                };
                for j in j0..j1 {
                    // SAFETY: the features are enabled (the caller's contract). `tile_a` reaches
                    // k values of each of its `rows` rows (above); j < panels, so panel j is the
                    // k * nr values from j * k * nr of `packed`, and its cols_of(j) columns from
                    // j * nr are in `bias` and, for rows i..i + rows <= m at stride n, in `c`
                    // (all lengths asserted above). rows <= rows_of(j): the panels of a group
                    // share their tile rows (j1 was cut back otherwise).
                    unsafe {
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
                        )
                    };
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
pub(super) struct ATile {
    pub(super) ptrs: [*const f32; MAX_SEGMENTS],
    pub(super) segment_len: usize,
    pub(super) row_stride: usize,
    pub(super) k_stride: usize,
}

/// The row stride of A in the direct stem of an RGB image at stride 2 (MobileNet's): the
/// microkernel is specialised for it (see `micro`).
pub(super) const STEM_ROW_STRIDE: usize = 6;

/// K segments of an [`ATile`] read in place by the direct stem: its kernel rows. Other kernel
/// heights go through im2col.
pub(super) const MAX_SEGMENTS: usize = 3;

impl ATile {
    /// A tile whose K is one run of `k` values.
    pub(super) fn single(ptr: *const f32, k: usize, row_stride: usize, k_stride: usize) -> Self {
        ATile {
            ptrs: [ptr; MAX_SEGMENTS],
            segment_len: k,
            row_stride,
            k_stride,
        }
    }
}

/// What the microkernel applies before its store: the clamp's bounds, splatted once per call.
pub(super) struct Epilogue<V> {
    pub(super) lo: V,
    pub(super) hi: V,
}

/// Dispatches a tile to the microkernel specialised for its row count and the vectors of
/// columns in use in its panel (`rows <= tile_rows(cols)`).
///
/// # Safety
/// As for [`micro`], with `R = rows` and `V = cols.div_ceil(LANES)`: `S`'s CPU features enabled,
/// and `a`, `panel`, `bias` and `c` reaching the tile's values. Shapes outside the microkernel's
/// dispatch (`rows` or `cols` of 0, `cols` above `NV * LANES`, `rows` above `tile_rows(cols)`)
/// panic.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile<S: Simd, const SEGMENTS: usize, const RS: usize>(
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
    // SAFETY: each arm calls the microkernel with R = rows and V = cols.div_ceil(LANES), for
    // which the caller guarantees micro's contract.
    unsafe {
        match cols.div_ceil(S::LANES) {
            1 => rows!(1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24),
            2 => rows!(2: 1 2 3 4 5 6 7 8 9 10 11 12),
            3 => rows!(3: 1 2 3 4 5 6 7 8),
            4 => rows!(4: 1 2 3 4 5 6),
            v => unreachable!("a panel of {v} vectors"),
        }
    }
}

/// The microkernel: `R` rows x `V` vectors of columns of `c` (the panel's vectors in use; its
/// all-padding vectors are not read), accumulated over all of `k` in registers, then bias,
/// clamp and a (partial) store.
///
/// # Safety
/// `S`'s CPU features must be enabled, and:
/// - A: `SEGMENTS * a.segment_len == k`; for every segment `s < SEGMENTS`, row `r < R` and
///   `q < a.segment_len`, the value at `a.ptrs[s] + r * a.row_stride + q * a.k_stride` is
///   readable, and `a.ptrs[s] + a.segment_len * a.k_stride` (one step past row 0's last value)
///   is in, or one past the end of, the same allocation; `RS` is 0 or `a.row_stride`;
/// - packed B: `panel` is readable for `k * PANEL` values (one packed panel);
/// - columns: `V == cols.div_ceil(LANES)`, `cols <= PANEL`, and `bias` is readable for `cols`
///   values;
/// - C: `c + r * ldc` is writable for `cols` values, for every `r < R`.
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
    // SAFETY: the features are enabled (the caller's contract).
    let mut acc = unsafe { [[S::zero(); V]; R] };
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
        // SAFETY: the features are enabled (the caller's contract). Row p < k of the panel's k
        // rows of PANEL values is read in vectors v < V, which end at V * LANES <= PANEL (cols <=
        // PANEL, a multiple of LANES by Simd's contract). `ap` is value `segment_len - left` of
        // row 0 of segment `seg` (the steps below keep it so), so `ap + r * rs` is that value of
        // row r < R, readable by the caller's contract (rs is a.row_stride: RS is 0 or equal to
        // it); its step lands on the segment's next value or one past its last, which the
        // caller's contract keeps in the allocation.
        unsafe {
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
        }
        left -= 1;
        if SEGMENTS > 1 && left == 0 && seg + 1 < SEGMENTS {
            seg += 1;
            (ap, left) = (a.ptrs[seg], a.segment_len);
        }
    }
    // Every vector below V holds at least one column (V = cols / LANES rounded up).
    for v in 0..V {
        let n = (cols - v * l).min(l);
        // SAFETY: the features are enabled (the caller's contract). Columns v * l..v * l + n are
        // below cols, which `bias` holds and each row r < R of `c` (at stride ldc) can take.
        unsafe {
            let bias_v = load_n::<S>(bias.add(v * l), n);
            for (r, acc_r) in acc.iter().enumerate() {
                let x = S::clamp(S::add(acc_r[v], bias_v), e.lo, e.hi);
                store_n::<S>(c.add(r * ldc + v * l), x, n);
            }
        }
    }
}
