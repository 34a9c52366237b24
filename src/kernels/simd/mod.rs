//! Vector kernels written once over a small [`Simd`] abstraction and instantiated per instruction
//! set (see `x86_64/`). Every function here is `#[inline(always)]`: it is compiled inside the
//! tier's `#[target_feature]` entry point, so it gets that tier's instructions.
//!
//! The abstraction and the helpers every kernel shares are in `register`; the kernels are in
//! `gemm`, `conv` (the stem), `depthwise` and `peak` (the FMA peak loop).

mod conv;
mod depthwise;
mod gemm;
mod peak;
mod register;

pub(crate) use conv::dense_conv;
pub(crate) use depthwise::depthwise;
pub(crate) use gemm::{gemm, pack_panels};
pub(crate) use peak::{fma_loop, fma_loop_flops};
pub(crate) use register::{panel_width, Simd};
