//! Run-time detection of the CPU features each x86-64 tier needs.

/// Whether this CPU (and OS) supports the AVX2 + FMA tier.
pub fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether this CPU (and OS) supports the AVX-512 tier (F and VL: the VL extension gives 256-bit
/// code all 32 registers, which the narrow kernels need).
pub fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && has_avx2_fma()
}
