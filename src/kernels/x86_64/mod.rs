//! x86-64 tiers: AVX2+FMA and AVX-512F, detected at run time.

/// The public, safe entry points of one tier: each checks the CPU once more (cheap, and it keeps
/// a mis-dispatch from being undefined behaviour), then runs the generic kernel compiled with the
/// tier's target features.
///
/// `$narrow` is the tier's narrow vector type for layers only a few lanes wide (see `narrow`);
/// a tier without one names its own type there.
macro_rules! entry_points {
    ($simd:ty, narrow: $narrow:ty, $features:literal, $detect:path, $what:literal) => {
        /// Rows of this tier's GEMM microkernel.
        pub const GEMM_ROWS: usize = <$simd as $crate::kernels::simd::Simd>::MR;

        // The microkernel's dispatch has tiles of up to 24 rows of one vector, 12 of two, 8 of
        // three and 6 of four: a tier fits them when it keeps at most 24 accumulators.
        const _: () = {
            let (mr, nv) = (
                <$simd as $crate::kernels::simd::Simd>::MR,
                <$simd as $crate::kernels::simd::Simd>::NV,
            );
            assert!(
                nv >= 1 && nv <= 4 && mr * nv <= 24,
                "tile shape outside the dispatch"
            );
            // The layout constants `Simd`'s safety contract asks of both vector types.
            let (lanes, panel) = (
                <$simd as $crate::kernels::simd::Simd>::LANES,
                <$simd as $crate::kernels::simd::Simd>::PANEL,
            );
            let (narrow_lanes, narrow_panel) = (
                <$narrow as $crate::kernels::simd::Simd>::LANES,
                <$narrow as $crate::kernels::simd::Simd>::PANEL,
            );
            assert!(
                lanes <= 64
                    && panel % lanes == 0
                    && narrow_lanes <= 64
                    && narrow_panel % narrow_lanes == 0,
                "lanes or panel width outside Simd's contract"
            );
        };

        /// Columns per panel of this tier's packed GEMM weights.
        pub const GEMM_PANEL_COLS: usize = $crate::kernels::simd::panel_width::<$simd>();

        /// Measures this tier's FMA peak on one core: `(flops, seconds)` of a register-only loop.
        pub fn fma_peak(iters: usize) -> (usize, f64) {
            assert!(
                $detect(),
                concat!($what, " kernels called on a CPU without ", $what)
            );
            let started = std::time::Instant::now();
            // SAFETY: the CPU has the features (checked above); the loop touches only registers
            // and a local array.
            let sink = unsafe { fma_peak_impl(iters) };
            let seconds = started.elapsed().as_secs_f64();
            std::hint::black_box(sink);
            (
                $crate::kernels::simd::fma_loop_flops::<$simd>(iters),
                seconds,
            )
        }

        /// The FMA peak loop on the tier's vectors.
        ///
        /// # Safety
        /// The CPU must have the tier's target features (as `$detect` checks).
        #[target_feature(enable = $features)]
        unsafe fn fma_peak_impl(iters: usize) -> f32 {
            // SAFETY: compiled with the tier's features, which the caller guarantees the CPU has.
            unsafe { $crate::kernels::simd::fma_loop::<$simd>(std::hint::black_box(iters)) }
        }

        /// The FMA peak loop on the tier's narrow vectors.
        ///
        /// # Safety
        /// The CPU must have the tier's target features (as `$detect` checks).
        #[target_feature(enable = $features)]
        unsafe fn narrow_fma_peak_impl(iters: usize) -> f32 {
            // SAFETY: compiled with the tier's features, which the caller guarantees the CPU has.
            unsafe { $crate::kernels::simd::fma_loop::<$narrow>(std::hint::black_box(iters)) }
        }

        /// Whether a layer `n` values wide (GEMM columns, output or depthwise channels) runs on
        /// the narrow vectors: when their lanes, rounded up, are fewer than the wide ones' (8 or
        /// 17 to 24 values, against 16 or 32 lanes of AVX-512) and this CPU issues narrow FMAs
        /// fast enough to win (see `narrow_fmas_pay`). Results are the same bit for bit
        /// either way: each value is the same sum in the same order.
        fn narrow(n: usize) -> bool {
            use $crate::kernels::simd::Simd;
            let (wide, narrow) = (<$simd as Simd>::LANES, <$narrow as Simd>::LANES);
            narrow < wide
                && n <= 3 * narrow
                && n.div_ceil(narrow) * narrow < n.div_ceil(wide) * wide
                && narrow_fmas_pay()
        }

        /// Whether narrow FMAs do at least 3/4 of the wide ones' work per second, measured once
        /// per process: on AMD Zen 4, which runs a 512-bit FMA as two 256-bit halves, they do
        /// as much (so 8 columns on 8 lanes take half the time of 8 on 16); on CPUs with full
        /// 512-bit units, half as much.
        fn narrow_fmas_pay() -> bool {
            static PAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *PAYS.get_or_init(|| {
                assert!(
                    $detect(),
                    concat!($what, " kernels called on a CPU without ", $what)
                );
                let flops_per_s = |f: unsafe fn(usize) -> f32, flops: fn(usize) -> usize| {
                    // SAFETY: the CPU has the features (checked above); the loops touch only
                    // registers and a local array.
                    unsafe { f(1000) };
                    (0..3)
                        .map(|_| {
                            let started = std::time::Instant::now();
                            // SAFETY: as above.
                            std::hint::black_box(unsafe { f(200_000) });
                            flops(200_000) as f64 / started.elapsed().as_secs_f64()
                        })
                        .fold(0.0, f64::max)
                };
                let wide = flops_per_s(
                    fma_peak_impl,
                    $crate::kernels::simd::fma_loop_flops::<$simd>,
                );
                let narrow = flops_per_s(
                    narrow_fma_peak_impl,
                    $crate::kernels::simd::fma_loop_flops::<$narrow>,
                );
                narrow >= 0.75 * wide
            })
        }

        /// Packs GEMM weights into this tier's panels (which the narrow vectors read too).
        pub fn pack_gemm_b(k: usize, n: usize, b: &[f32]) -> $crate::kernels::aligned::AlignedVec {
            const {
                assert!(
                    $crate::kernels::simd::panel_width::<$simd>()
                        == $crate::kernels::simd::panel_width::<$narrow>(),
                    "narrow vectors read the wide layout"
                )
            };
            $crate::kernels::simd::pack_panels(
                k,
                n,
                b,
                $crate::kernels::simd::panel_width::<$simd>(),
            )
        }

        /// GEMM on weights packed by [`pack_gemm_b`].
        pub fn gemm(
            s: &$crate::kernels::shapes::GemmShape,
            a: &[f32],
            packed: &[f32],
            bias: &[f32],
            act: $crate::kernels::shapes::Clamp,
            c: &mut [f32],
        ) {
            assert!(
                $detect(),
                concat!($what, " kernels called on a CPU without ", $what)
            );
            // SAFETY: the CPU has the features (checked above); the kernel checks every length.
            unsafe { gemm_impl(s, a, packed, bias, act, c) }
        }

        /// [`gemm`] compiled with the tier's features.
        ///
        /// # Safety
        /// The CPU must have the tier's target features (as `$detect` checks).
        #[target_feature(enable = $features)]
        unsafe fn gemm_impl(
            s: &$crate::kernels::shapes::GemmShape,
            a: &[f32],
            packed: &[f32],
            bias: &[f32],
            act: $crate::kernels::shapes::Clamp,
            c: &mut [f32],
        ) {
            // SAFETY: compiled with the tier's features, which the caller guarantees the CPU has;
            // the kernel checks every length.
            unsafe {
                if narrow(s.n) {
                    $crate::kernels::simd::gemm::<$narrow>(s, a, packed, bias, act, c)
                } else {
                    $crate::kernels::simd::gemm::<$simd>(s, a, packed, bias, act, c)
                }
            }
        }

        /// Dense convolution as a GEMM over receptive fields (read in place for 3-row kernels,
        /// through im2col at the padding), on weights packed by [`pack_gemm_b`]
        /// (`kh * kw * in_c` rows, `out_c` columns).
        pub fn dense_conv(
            g: &$crate::kernels::shapes::ConvGeometry,
            input: &[f32],
            packed: &[f32],
            bias: &[f32],
            act: $crate::kernels::shapes::Clamp,
            out: &mut [f32],
        ) {
            assert!(
                $detect(),
                concat!($what, " kernels called on a CPU without ", $what)
            );
            // SAFETY: the CPU has the features (checked above); the kernel checks every length.
            unsafe { dense_conv_impl(g, input, packed, bias, act, out) }
        }

        /// [`dense_conv`] compiled with the tier's features.
        ///
        /// # Safety
        /// The CPU must have the tier's target features (as `$detect` checks).
        #[target_feature(enable = $features)]
        unsafe fn dense_conv_impl(
            g: &$crate::kernels::shapes::ConvGeometry,
            input: &[f32],
            packed: &[f32],
            bias: &[f32],
            act: $crate::kernels::shapes::Clamp,
            out: &mut [f32],
        ) {
            // SAFETY: compiled with the tier's features, which the caller guarantees the CPU has;
            // the kernel checks every length.
            unsafe {
                if narrow(g.out_c) {
                    $crate::kernels::simd::dense_conv::<$narrow>(g, input, packed, bias, act, out)
                } else {
                    $crate::kernels::simd::dense_conv::<$simd>(g, input, packed, bias, act, out)
                }
            }
        }

        /// Depthwise convolution vectorised along channels (kernels above 3x3 fall back to the
        /// scalar reference).
        pub fn depthwise(
            g: &$crate::kernels::shapes::ConvGeometry,
            input: &[f32],
            weights: &[f32],
            bias: &[f32],
            act: $crate::kernels::shapes::Clamp,
            out: &mut [f32],
        ) {
            assert!(
                $detect(),
                concat!($what, " kernels called on a CPU without ", $what)
            );
            // SAFETY: the CPU has the features (checked above); the kernel checks every length.
            if !unsafe { depthwise_impl(g, input, weights, bias, act, out) } {
                $crate::kernels::generic::depthwise(g, input, weights, bias, act, out)
            }
        }

        /// [`depthwise`] compiled with the tier's features; `false` when it left the layer to
        /// the scalar reference.
        ///
        /// # Safety
        /// The CPU must have the tier's target features (as `$detect` checks).
        #[target_feature(enable = $features)]
        unsafe fn depthwise_impl(
            g: &$crate::kernels::shapes::ConvGeometry,
            input: &[f32],
            weights: &[f32],
            bias: &[f32],
            act: $crate::kernels::shapes::Clamp,
            out: &mut [f32],
        ) -> bool {
            // SAFETY: compiled with the tier's features, which the caller guarantees the CPU has;
            // the kernel checks every length.
            unsafe {
                if narrow(g.in_c) {
                    $crate::kernels::simd::depthwise::<$narrow>(g, input, weights, bias, act, out)
                } else {
                    $crate::kernels::simd::depthwise::<$simd>(g, input, weights, bias, act, out)
                }
            }
        }
    };
}

/// The [`Simd`](crate::kernels::simd::Simd) operations on 256-bit registers that the AVX2 tier
/// and AVX-512's narrow vectors share (all but the partial loads and stores, which AVX-512VL does
/// with mask registers).
macro_rules! ymm_ops {
    () => {
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            // SAFETY: AVX and FMA are enabled (the caller's contract).
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            // SAFETY: AVX and FMA are enabled (the caller's contract).
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: AVX is enabled and `p` is readable for 8 values (the caller's contract);
            // the load takes any alignment.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: AVX is enabled and `p` is writable for 8 values (the caller's contract);
            // the store takes any alignment.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: AVX and FMA are enabled (the caller's contract).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX and FMA are enabled (the caller's contract).
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn clamp(v: __m256, lo: __m256, hi: __m256) -> __m256 {
            // max/min return their second operand when one is NaN, as f32::max/min return
            // the non-NaN one: a NaN input becomes `lo`, as in the scalar reference.
            // SAFETY: AVX and FMA are enabled (the caller's contract).
            unsafe { _mm256_min_ps(_mm256_max_ps(v, lo), hi) }
        }
    };
}

pub mod avx2;
pub mod avx512;
pub mod detect;

pub use detect::{has_avx2_fma, has_avx512};
