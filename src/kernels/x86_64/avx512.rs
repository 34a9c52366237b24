//! The AVX-512 (F + VL) tier: 16 lanes, a 6 x 64 GEMM microkernel (24 of the 32 registers
//! accumulate; four weight vectors and six broadcasts feed 24 FMAs per step, where 12 x 32 needed
//! 14 loads), and 8-lane vectors for layers only a few lanes wide.

use std::arch::x86_64::*;

use crate::kernels::simd::Simd;

#[derive(Clone, Copy)]
struct Avx512;

// SAFETY: `__m512` holds 16 f32 lanes (LANES); the loads and stores below access exactly 16
// values, or the first `n` through a mask register; PANEL (64) is a multiple of 16. The methods
// use AVX-512F instructions only, which the entry points below enable after `has_avx512`.
unsafe impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    const MR: usize = 6;
    const NV: usize = 4;
    const PANEL: usize = 64;
    // A read in place ran whole networks in 0.70-1.0x the time of A repacked into 6-row tiles
    // (A/B, noisy; the copy is a pass over A). With it, the 6 x 64 kernel took 0.90x the time
    // of the former 12 x 32 one on repacked A over MobileNet 1.0_224's pointwise GEMMs.
    const REPACK_A: bool = false;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: AVX-512F is enabled (the caller's contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: AVX-512F is enabled (the caller's contract).
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: AVX-512F is enabled and `p` is readable for 16 values (the caller's contract);
        // the load takes any alignment.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: AVX-512F is enabled and `p` is writable for 16 values (the caller's contract);
        // the store takes any alignment.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
        // SAFETY: AVX-512F is enabled and `p` is readable for `n` values (the caller's
        // contract); the mask enables the first `n` lanes only, and masked-off lanes are not
        // accessed.
        unsafe { _mm512_maskz_loadu_ps(mask(n), p) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m512, n: usize) {
        // SAFETY: AVX-512F is enabled and `p` is writable for `n` values (the caller's
        // contract); the mask enables the first `n` lanes only, and masked-off lanes are not
        // accessed.
        unsafe { _mm512_mask_storeu_ps(p, mask(n), v) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled (the caller's contract).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled (the caller's contract).
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn clamp(v: __m512, lo: __m512, hi: __m512) -> __m512 {
        // max/min return their second operand when one is NaN, as f32::max/min return the
        // non-NaN one: a NaN input becomes `lo`, as in the scalar reference.
        // SAFETY: AVX-512F is enabled (the caller's contract).
        unsafe { _mm512_min_ps(_mm512_max_ps(v, lo), hi) }
    }
}

#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// The tier's narrow vectors: 8 lanes in 256-bit registers, of which AVX-512VL gives all 32, so
/// that the microkernel keeps 24 accumulators as the wide one does (6 x 32, 8 x 24, 12 x 16 or
/// 24 x 8 columns). For layers of 8 or 17 to 24 columns or channels (the stems and first
/// depthwise layers of alpha 0.25 and 0.75), where 16-lane vectors leave a quarter to a half of
/// their lanes idle; see `narrow` in `entry_points!` for when they run. They read the wide
/// type's packed weights (a layer that narrow is a single partial panel).
#[derive(Clone, Copy)]
struct Avx512Narrow;

// SAFETY: `__m256` holds 8 f32 lanes (LANES); the loads and stores below and in `ymm_ops!`
// access exactly 8 values, or the first `n` through a mask register; PANEL (64) is a multiple
// of 8. The methods use AVX, FMA and AVX-512F+VL instructions only, which the entry points
// below enable after `has_avx512`.
unsafe impl Simd for Avx512Narrow {
    type V = __m256;
    const LANES: usize = 8;
    const MR: usize = 6;
    const NV: usize = 4;
    // The wide type's packed weights: which vectors run a layer is decided per call (a panel
    // split hands the kernel a single panel of a wide layer), so the layout cannot depend on it.
    const PANEL: usize = Avx512::PANEL;
    const REPACK_A: bool = false;

    ymm_ops!();

    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
        // SAFETY: AVX-512F+VL are enabled and `p` is readable for `n` values (the caller's
        // contract); the mask enables the first `n` lanes only, and masked-off lanes are not
        // accessed.
        unsafe { _mm256_maskz_loadu_ps(mask(n.min(8)) as __mmask8, p) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m256, n: usize) {
        // SAFETY: AVX-512F+VL are enabled and `p` is writable for `n` values (the caller's
        // contract); the mask enables the first `n` lanes only, and masked-off lanes are not
        // accessed.
        unsafe { _mm256_mask_storeu_ps(p, mask(n.min(8)) as __mmask8, v) }
    }
}

entry_points!(
    Avx512,
    narrow: Avx512Narrow,
    "avx512f,avx512vl,avx2,fma",
    super::detect::has_avx512,
    "AVX-512F+VL"
);
