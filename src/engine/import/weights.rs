//! Weight layouts: ONNX's `[out][in][kh][kw]` reordered into the layouts our kernels read, for
//! float and integer weights alike.

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
    let mut packed = vec![T::default(); w.len()];
    for o in 0..out_c {
        for i in 0..in_c {
            for y in 0..kh {
                for x in 0..kw {
                    packed[((y * kw + x) * in_c + i) * out_c + o] =
                        w[((o * in_c + i) * kh + y) * kw + x];
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
