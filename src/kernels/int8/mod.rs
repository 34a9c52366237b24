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

pub use operands::{QuantLayer, MAX_DEPTHWISE_TAPS};
pub use requant::Requant;

use crate::kernels::shapes::{ConvGeometry, GemmShape};

/// `c = requant(bias + (a - zero) x b)` for `a` `[m][k]` and weights packed by the same tier's
/// [`PackFn`] from `[k][n]`: pointwise convolutions, the classifier, and the stem after
/// [`generic::im2col`].
pub type GemmFn = fn(&GemmShape, &[u8], &QuantLayer, &mut [u8]);
/// Depthwise convolution on weights packed by the same tier's [`PackFn`] from `[taps][c]`.
pub type DepthwiseFn = fn(&ConvGeometry, &[u8], &QuantLayer, &mut [u8]);
/// Packs centred weights, once at load: `(rows, columns, weights)` for a row-major matrix.
pub type PackFn = fn(usize, usize, &[i16]) -> Vec<i16>;
/// ONNX `QuantizeLinear` into uint8 with `(scale, zero)`: the model's input.
pub type QuantizeFn = fn(&[f32], f32, u8, &mut [u8]);

/// One tier's integer kernels.
#[derive(Clone, Copy)]
pub struct Int8Kernels {
    /// The GEMM.
    pub gemm: GemmFn,
    /// Rows of the GEMM's tile: a split of its rows between threads keeps to multiples of it.
    pub gemm_rows: usize,
    /// Its weight packing.
    pub pack_gemm: PackFn,
    /// The depthwise convolution.
    pub depthwise: DepthwiseFn,
    /// Its weight packing.
    pub pack_depthwise: PackFn,
    /// Quantization of the float input.
    pub quantize: QuantizeFn,
}

impl std::fmt::Debug for Int8Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Int8Kernels")
    }
}

impl Int8Kernels {
    /// The scalar reference: weights stay in their row-major layouts.
    pub fn scalar() -> Self {
        Int8Kernels {
            gemm: generic::gemm,
            gemm_rows: 1,
            pack_gemm: generic::keep_layout,
            depthwise: generic::depthwise,
            pack_depthwise: generic::keep_layout,
            quantize: requant::quantize_slice,
        }
    }

    /// The AVX2 kernels (the AVX-512 tier runs them too until it has its own).
    #[cfg(target_arch = "x86_64")]
    pub fn avx2() -> Self {
        Int8Kernels {
            gemm: avx2::gemm,
            gemm_rows: avx2::MR,
            pack_gemm: avx2::pack_gemm,
            depthwise: avx2::depthwise,
            pack_depthwise: avx2::pack_depthwise,
            quantize: avx2::quantize,
        }
    }
}
