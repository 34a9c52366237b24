//! Compute kernels and the dispatch table that picks one implementation tier at start-up.
//!
//! Every kernel has a scalar reference in [`generic`]: it is the specification that faster tiers
//! are tested against. Activations are NHWC (`[batch][row][col][channel]`); weights are prepacked
//! by the importer with the output channel fastest, so every inner loop is contiguous.
//!
//! The lowest layer: it uses nothing else of this crate. This file holds the dispatch ([`Tier`],
//! [`KernelSet`]) over its parts (shapes, generic, simd, x86_64), which never name it.

// Inside `unsafe fn`s too, unsafe operations go in `unsafe` blocks that say why they hold: the
// caller's contract alone does not say which operation relies on which part of it.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod aligned;
pub mod cache;
pub mod generic;
pub mod int8;
pub mod shapes;
pub(crate) mod simd;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use aligned::AlignedVec;
pub use shapes::{Clamp, ConvGeometry, GemmShape};

use std::fmt;
use std::str::FromStr;

/// Dense convolution (groups = 1). Weights `[kh][kw][in_c][out_c]` packed by the tier's [`PackFn`]
/// as a `(kh * kw * in_c) x out_c` matrix.
pub type DenseConvFn = fn(&ConvGeometry, &[f32], &[f32], &[f32], Clamp, &mut [f32]);
/// Depthwise convolution (one filter per channel, `in_c == out_c`). Weights `[kh][kw][c]`.
pub type DepthwiseFn = fn(&ConvGeometry, &[f32], &[f32], &[f32], Clamp, &mut [f32]);
/// `c[m][n] = clamp(bias[n] + sum_k a[m][k] * b[k][n])`: pointwise convs and fully connected layers.
/// `b` is in the layout made by the same tier's [`PackFn`].
pub type GemmFn = fn(&GemmShape, &[f32], &[f32], &[f32], Clamp, &mut [f32]);
/// Prepacks row-major GEMM weights `b` (`k x n`) into the tier's layout, once, at load.
pub type PackFn = fn(usize, usize, &[f32]) -> AlignedVec;
/// Mean over the spatial positions: `[batch][positions][c] -> [batch][c]`.
pub type GlobalAvgPoolFn = fn(usize, usize, usize, &[f32], &mut [f32]);

/// An implementation tier of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Portable scalar code; the specification of every other tier.
    Scalar,
    /// x86-64 AVX2 + FMA (8 lanes).
    Avx2,
    /// x86-64 AVX-512F (16 lanes).
    Avx512,
}

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; 3] = [Tier::Scalar, Tier::Avx2, Tier::Avx512];

    /// Whether this CPU can run the tier.
    pub fn is_supported(self) -> bool {
        match self {
            Tier::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => x86_64::has_avx2_fma(),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => x86_64::has_avx512(),
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx2 | Tier::Avx512 => false,
        }
    }

    /// The tiers this CPU can run, slowest first.
    pub fn supported() -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| t.is_supported()).collect()
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        })
    }
}

/// What the user asked for with `--kernels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TierChoice {
    /// The fastest tier this CPU supports.
    #[default]
    Auto,
    /// Force one tier (refused at start when the CPU lacks it).
    Force(Tier),
}

impl FromStr for TierChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(TierChoice::Auto),
            "scalar" | "generic" => Ok(TierChoice::Force(Tier::Scalar)),
            "avx2" => Ok(TierChoice::Force(Tier::Avx2)),
            "avx512" => Ok(TierChoice::Force(Tier::Avx512)),
            other => Err(format!(
                "unknown kernel tier `{other}` (expected auto, scalar, avx2 or avx512)"
            )),
        }
    }
}

/// The dispatch table: one function per operation, chosen once at start.
#[derive(Clone, Copy)]
pub struct KernelSet {
    /// Which tier these functions belong to.
    pub tier: Tier,
    /// Dense convolution (the stem).
    pub dense_conv: DenseConvFn,
    /// Depthwise convolution.
    pub depthwise: DepthwiseFn,
    /// GEMM with fused bias and clamp, on weights packed by `pack_gemm_b`.
    pub gemm: GemmFn,
    /// The GEMM weight packing of this tier.
    pub pack_gemm_b: PackFn,
    /// Rows of the GEMM microkernel's full-width tile: a GEMM split between threads by rows is
    /// split at multiples of it, so that no thread gets a partial tile it could have shared.
    pub gemm_rows: usize,
    /// Columns per panel of the packed GEMM weights, whose panels lie one after the other: a GEMM
    /// can then be split between threads by panels. `None` for a layout that is not in panels.
    pub gemm_panel_cols: Option<usize>,
    /// Global average pooling.
    pub global_avg_pool: GlobalAvgPoolFn,
    /// The integer kernels of the same tier, for quantized models.
    pub int8: int8::Int8Kernels,
}

impl fmt::Debug for KernelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelSet")
            .field("tier", &self.tier)
            .finish()
    }
}

impl KernelSet {
    /// The scalar reference tier.
    pub fn scalar() -> Self {
        KernelSet {
            tier: Tier::Scalar,
            dense_conv: generic::dense_conv,
            depthwise: generic::depthwise,
            gemm: generic::gemm,
            pack_gemm_b: generic::pack_gemm_b,
            gemm_rows: 1,
            gemm_panel_cols: None,
            global_avg_pool: generic::global_avg_pool,
            int8: int8::Int8Kernels::scalar(),
        }
    }

    /// The kernels of `tier`, or an error naming what this CPU lacks.
    pub fn for_tier(tier: Tier) -> Result<Self, String> {
        if !tier.is_supported() {
            return Err(format!(
                "kernel tier {tier} is not supported by this CPU (supported: {})",
                Tier::supported()
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let scalar = Self::scalar();
        Ok(match tier {
            Tier::Scalar => scalar,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => KernelSet {
                tier,
                dense_conv: x86_64::avx2::dense_conv,
                depthwise: x86_64::avx2::depthwise,
                gemm: x86_64::avx2::gemm,
                pack_gemm_b: x86_64::avx2::pack_gemm_b,
                gemm_rows: x86_64::avx2::GEMM_ROWS,
                gemm_panel_cols: Some(x86_64::avx2::GEMM_PANEL_COLS),
                int8: int8::Int8Kernels::best_with_avx2(false),
                ..scalar
            },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => KernelSet {
                tier,
                dense_conv: x86_64::avx512::dense_conv,
                depthwise: x86_64::avx512::depthwise,
                gemm: x86_64::avx512::gemm,
                pack_gemm_b: x86_64::avx512::pack_gemm_b,
                gemm_rows: x86_64::avx512::GEMM_ROWS,
                gemm_panel_cols: Some(x86_64::avx512::GEMM_PANEL_COLS),
                int8: int8::Int8Kernels::best_with_avx2(true),
                ..scalar
            },
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx2 | Tier::Avx512 => unreachable!("not supported off x86-64"),
        })
    }

    /// This machine's single-core FMA peak in GFLOP/s, measured with the widest supported tier
    /// (`None` without a SIMD tier).
    pub fn fma_peak_gflops() -> Option<f64> {
        #[cfg(target_arch = "x86_64")]
        {
            let measure: fn(usize) -> (usize, f64) = if x86_64::has_avx512() {
                x86_64::avx512::fma_peak
            } else if x86_64::has_avx2_fma() {
                x86_64::avx2::fma_peak
            } else {
                return None;
            };
            measure(1000);
            // Best of a few runs: the machine is shared and frequency ramps up.
            (0..5)
                .map(|_| {
                    let (flops, secs) = measure(20_000_000);
                    flops as f64 / secs / 1e9
                })
                .reduce(f64::max)
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// Resolves `choice` against what this CPU supports: `auto` takes the fastest tier.
    pub fn select(choice: TierChoice) -> Result<Self, String> {
        match choice {
            TierChoice::Auto => {
                let best = Tier::supported().pop().unwrap_or(Tier::Scalar);
                Self::for_tier(best)
            }
            TierChoice::Force(tier) => Self::for_tier(tier),
        }
    }
}
