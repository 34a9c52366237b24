//! Integer kernels for 8-bit quantized models: uint8 activations, weights already centred on
//! their zero point, int32 accumulators, and one requantization back to uint8 per output.
//!
//! [`generic`] is the scalar reference, the specification of every faster tier; [`requant`]
//! defines the arithmetic that turns an accumulator into an activation, and how far it may be
//! from the real-number definition. [`Int8Kernels`] is one tier's table of them; the kernel set
//! of `kernels` carries the one of its tier.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod generic;
pub mod operands;
pub mod requant;
#[cfg(target_arch = "x86_64")]
pub mod vnni;

pub use operands::{QuantLayer, MAX_DEPTHWISE_TAPS};
pub use requant::Requant;

use crate::kernels::shapes::{ConvGeometry, GemmShape};

/// `c = requant(bias + (a - zero) x b)` for `a` `[m][k]` and weights packed by the same tier's
/// [`PackFn`] from `[k][n]`: pointwise convolutions, the classifier, and the stem after
/// [`generic::im2col`].
pub type GemmFn = fn(&GemmShape, &[u8], &QuantLayer, &mut [u8]);
/// Depthwise convolution on weights packed by the same tier's [`PackFn`] from `[taps][c]`.
pub type DepthwiseFn = fn(&ConvGeometry, &[u8], &QuantLayer, &mut [u8]);
/// Dense convolution (the stem) on weights packed by the same tier's GEMM [`PackFn`] from
/// `[kh][kw][in_c][out_c]`.
pub type DenseFn = fn(&ConvGeometry, &[u8], &QuantLayer, &mut [u8]);
/// Packs centred weights, once at load: `(rows, columns, weights)` for a row-major matrix.
pub type PackFn = fn(usize, usize, &[i16]) -> Vec<i16>;
/// ONNX `QuantizeLinear` into uint8 with `(scale, zero)`: the model's input.
pub type QuantizeFn = fn(&[f32], f32, u8, &mut [u8]);

/// One tier's integer kernels.
#[derive(Clone, Copy)]
pub struct Int8Kernels {
    /// What they run on: `scalar`, `avx2`, `avx2+vnni-emulated`, `avx-vnni` or `avx512-vnni`.
    pub name: &'static str,
    /// The GEMM.
    pub gemm: GemmFn,
    /// Rows of the GEMM's tile: a split of its rows between threads keeps to multiples of it.
    pub gemm_rows: usize,
    /// Its weight packing.
    pub pack_gemm: PackFn,
    /// A direct dense convolution on the GEMM's packing, where the tier has one; without it
    /// the model runs [`generic::im2col`] and the GEMM.
    pub dense: Option<DenseFn>,
    /// The depthwise convolution.
    pub depthwise: DepthwiseFn,
    /// Its weight packing.
    pub pack_depthwise: PackFn,
    /// Quantization of the float input.
    pub quantize: QuantizeFn,
}

impl std::fmt::Debug for Int8Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Int8Kernels {
    /// The scalar reference: weights stay in their row-major layouts.
    pub fn scalar() -> Self {
        Int8Kernels {
            name: "scalar",
            gemm: generic::gemm,
            gemm_rows: 1,
            pack_gemm: generic::keep_layout,
            dense: None,
            depthwise: generic::depthwise,
            pack_depthwise: generic::keep_layout,
            quantize: requant::quantize_slice,
        }
    }

    /// The AVX2 kernels: 16-bit multiply-adds.
    #[cfg(target_arch = "x86_64")]
    pub fn avx2() -> Self {
        Int8Kernels {
            name: "avx2",
            gemm: avx2::gemm,
            gemm_rows: avx2::MR,
            pack_gemm: avx2::pack_gemm,
            dense: Some(avx2::dense),
            depthwise: avx2::depthwise,
            pack_depthwise: avx2::pack_depthwise,
            quantize: avx2::quantize,
        }
    }

    /// The AVX2 kernels with the GEMM of `vnni::gemm_emulated`: the 8-bit dot-product GEMM's
    /// packing and tiles on an exact emulation of its instruction, for the tests of machines
    /// without VNNI (it is slower than [`Int8Kernels::avx2`]).
    #[cfg(target_arch = "x86_64")]
    pub fn vnni_emulated() -> Self {
        Int8Kernels {
            name: "avx2+vnni-emulated",
            gemm: vnni::gemm_emulated,
            gemm_rows: vnni::MR,
            pack_gemm: vnni::pack_gemm,
            // The AVX2 dense convolution reads the AVX2 packing: the stem runs as im2col and
            // this GEMM.
            dense: None,
            ..Self::avx2()
        }
    }

    /// The AVX2 kernels with the GEMM on AVX-VNNI.
    #[cfg(target_arch = "x86_64")]
    pub fn avxvnni() -> Self {
        Int8Kernels {
            name: "avx-vnni",
            gemm: vnni::gemm_avxvnni,
            ..Self::vnni_emulated()
        }
    }

    /// The AVX2 kernels with the GEMM on AVX-512 VNNI.
    #[cfg(target_arch = "x86_64")]
    pub fn avx512vnni() -> Self {
        Int8Kernels {
            name: "avx512-vnni",
            gemm: vnni::gemm_avx512vnni,
            ..Self::vnni_emulated()
        }
    }

    /// The fastest integer kernels for a float tier that has AVX2 (with AVX-512 or not): the
    /// GEMM on 8-bit dot products where the CPU has them.
    #[cfg(target_arch = "x86_64")]
    pub fn best_with_avx2(avx512: bool) -> Self {
        if avx512 && vnni::has_avx512vnni() {
            Self::avx512vnni()
        } else if vnni::has_avxvnni() {
            Self::avxvnni()
        } else {
            Self::avx2()
        }
    }

    /// Every set of integer kernels this CPU runs, the scalar reference first: what the tests
    /// compare with it.
    pub fn supported() -> Vec<Self> {
        let mut all = vec![Self::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::supported() {
                all.extend([Self::avx2(), Self::vnni_emulated()]);
            }
            if vnni::has_avxvnni() {
                all.push(Self::avxvnni());
            }
            if vnni::has_avx512vnni() {
                all.push(Self::avx512vnni());
            }
        }
        all
    }
}
