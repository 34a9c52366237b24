//! Weight layouts: ONNX's `[out][in][kh][kw]` reordered into the layouts our kernels read, for
//! float and integer weights alike.

use super::attrs::unsupported;
use crate::engine::onnx::pb;
use crate::engine::plan::ConvKind;
use crate::error::Result;

/// The kernel of a Conv with ONNX weights `raw` of `[m, cg, kh, kw]` in `group` groups, and its
/// weights packed for that kernel: pointwise (`pointwise` says the kernel, strides and padding
/// allow it), dense, or depthwise; other groupings are refused.
pub(super) fn pack_conv<T: Copy + Default>(
    node: &pb::NodeProto,
    raw: &[T],
    [m, cg, kh, kw]: [usize; 4],
    group: usize,
    pointwise: bool,
) -> Result<(ConvKind, Vec<T>)> {
    let in_c = cg * group;
    Ok(if group == 1 && pointwise {
        (ConvKind::Pointwise, transpose_oi(raw, m, in_c))
    } else if group == 1 {
        (ConvKind::Dense, pack_dense(raw, m, in_c, kh, kw))
    } else if group == in_c && m == in_c && cg == 1 {
        (ConvKind::Depthwise, pack_depthwise(raw, m, kh, kw))
    } else {
        return Err(unsupported(
            node,
            format!("grouped conv with group={group}, {in_c} -> {m} channels (only group=1 or depthwise)"),
        ));
    })
}

/// `[out][in]` (ONNX OI, trailing 1x1 ignored) -> `[in][out]`.
pub(super) fn transpose_oi<T: Copy + Default>(w: &[T], out_c: usize, in_c: usize) -> Vec<T> {
    let mut packed = vec![T::default(); w.len()];
    for o in 0..out_c {
        for i in 0..in_c {
            packed[i * out_c + o] = w[o * in_c + i];
        }
    }
    packed
}

/// ONNX `[out][in][kh][kw]` -> `[kh][kw][in][out]`.
pub(super) fn pack_dense<T: Copy + Default>(
    w: &[T],
    out_c: usize,
    in_c: usize,
    kh: usize,
    kw: usize,
) -> Vec<T> {
    to_hwio(w, [out_c, in_c, kh, kw], |o, i, y, x| {
        ((o * in_c + i) * kh + y) * kw + x
    })
}

/// Weights of `[out_c, in_c, kh, kw]` in any source layout (`source(o, i, y, x)` is the index
/// of a weight there) -> the dense kernels' `[kh][kw][in][out]`.
pub(super) fn to_hwio<T: Copy + Default>(
    w: &[T],
    [out_c, in_c, kh, kw]: [usize; 4],
    source: impl Fn(usize, usize, usize, usize) -> usize,
) -> Vec<T> {
    let mut packed = vec![T::default(); w.len()];
    for o in 0..out_c {
        for i in 0..in_c {
            for y in 0..kh {
                for x in 0..kw {
                    packed[((y * kw + x) * in_c + i) * out_c + o] = w[source(o, i, y, x)];
                }
            }
        }
    }
    packed
}

/// ONNX `[c][1][kh][kw]` -> `[kh][kw][c]`.
pub(super) fn pack_depthwise<T: Copy + Default>(w: &[T], c: usize, kh: usize, kw: usize) -> Vec<T> {
    let mut packed = vec![T::default(); w.len()];
    for ch in 0..c {
        for y in 0..kh {
            for x in 0..kw {
                packed[(y * kw + x) * c + ch] = w[(ch * kh + y) * kw + x];
            }
        }
    }
    packed
}
