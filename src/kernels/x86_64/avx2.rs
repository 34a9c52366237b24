//! The AVX2 + FMA tier: 8 lanes, a 6 x 16 GEMM microkernel (12 of the 16 registers accumulate).

use std::arch::x86_64::*;

use crate::kernels::simd::Simd;

#[derive(Clone, Copy)]
struct Avx2;

// SAFETY: `__m256` holds 8 f32 lanes (LANES); the loads and stores below access exactly 8
// values, or the first `n` through a lane mask; PANEL (16) is a multiple of 8. The methods use
// AVX, AVX2 and FMA instructions only, which the entry points below enable ("avx2,fma") after
// `has_avx2_fma`.
unsafe impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    const MR: usize = 6;
    const NV: usize = 2;
    const PANEL: usize = 16;
    // With A read in place instead, whole networks ran 0.96-1.28x the time (A/B, 3 rounds).
    const REPACK_A: bool = true;

    ymm_ops!();

    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
        // SAFETY: AVX2 is enabled and `p` is readable for `n` values (the caller's contract);
        // the mask enables the first `n` lanes only, and masked-off lanes are not accessed.
        unsafe { _mm256_maskload_ps(p, mask(n)) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m256, n: usize) {
        // SAFETY: AVX2 is enabled and `p` is writable for `n` values (the caller's contract);
        // the mask enables the first `n` lanes only, and masked-off lanes are not accessed.
        unsafe { _mm256_maskstore_ps(p, mask(n), v) }
    }
}

/// Lane mask for `_mm256_maskload_ps` / `_mm256_maskstore_ps`: the first `n` lanes set.
///
/// # Safety
/// AVX2 must be enabled.
#[inline(always)]
unsafe fn mask(n: usize) -> __m256i {
    // SAFETY: AVX2 is enabled (the caller's contract); no memory is touched.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

entry_points!(Avx2, narrow: Avx2, "avx2,fma", super::detect::has_avx2_fma, "AVX2+FMA");
