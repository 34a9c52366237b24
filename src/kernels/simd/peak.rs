//! The FMA peak loop that GFLOP/s are compared against.

use super::register::Simd;

/// Independent FMA chains in the peak loop: enough to cover FMA latency x throughput.
const PEAK_CHAINS: usize = 12;

/// Runs `iters x PEAK_CHAINS` vector FMAs with no memory traffic: the machine's FMA peak, used to
/// express measured GFLOP/s as a fraction of it. Returns a value derived from the result so that
/// the loop cannot be optimised away.
///
/// # Safety
/// `S`'s CPU features must be enabled (see [`Simd`]).
#[inline(always)]
pub(crate) unsafe fn fma_loop<S: Simd>(iters: usize) -> f32 {
    // SAFETY: the features are enabled (the caller's contract). The only memory touched is
    // `out`, whose 64 values take the store of LANES <= 64 (Simd's contract).
    unsafe {
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
}

/// Floating-point operations done by [`fma_loop`] (2 per lane per FMA).
pub(crate) const fn fma_loop_flops<S: Simd>(iters: usize) -> usize {
    iters * PEAK_CHAINS * S::LANES * 2
}
