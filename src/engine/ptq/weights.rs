//! Per-output-channel int8 weights and int32 biases of a float layer, in ONNX's `[out][in /
//! group][kh][kw]` layout: what a QDQ `Conv` dequantizes.

use crate::engine::plan::{ConvKind, ConvLayer, FcLayer};

/// Largest bias magnitude in accumulator units. The int8 importer refuses a channel whose
/// `255 * sum |w| + |bias|` could pass `i32::MAX`; the weights of a 3x3x1024 convolution add at
/// most `255 * 127 * 9216`, about 2^28.2, so a bias under 2^30 always leaves room.
const BIAS_LIMIT: f64 = (1u32 << 30) as f64;

/// A layer's weights and bias quantized for one input scale.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// `[out_c, in_c / group, kh, kw]`.
    pub dims: [usize; 4],
    /// The ONNX `group` attribute (the channels for a depthwise layer, else 1).
    pub group: usize,
    /// int8 values in `[-127, 127]`, in `dims` order.
    pub values: Vec<i8>,
    /// One scale per output channel (zero points are all 0: symmetric).
    pub scales: Vec<f32>,
    /// One bias per output channel, in units of `input scale * scales[o]`.
    pub bias: Vec<i32>,
    /// Those units: the bias's dequantization scales.
    pub bias_scales: Vec<f32>,
}

/// The weights of `conv` in ONNX layout, as floats.
pub fn conv_weights_oihw(conv: &ConvLayer) -> ([usize; 4], usize, Vec<f32>) {
    let (m, c, kh, kw) = (conv.out_c, conv.in_c, conv.kh, conv.kw);
    match conv.kind {
        // Plan `[kh][kw][c]`, ONNX `[c][1][kh][kw]`.
        ConvKind::Depthwise => {
            let mut w = vec![0.0; m * kh * kw];
            for (t, taps) in conv.weights.chunks_exact(m).enumerate() {
                for (o, &v) in taps.iter().enumerate() {
                    w[o * kh * kw + t] = v;
                }
            }
            ([m, 1, kh, kw], m, w)
        }
        // Plan `[kh][kw][in_c][out_c]` (a pointwise layer is its 1x1 case), ONNX `[out][in][kh][kw]`.
        ConvKind::Dense | ConvKind::Pointwise => {
            let mut w = vec![0.0; m * c * kh * kw];
            for (row, outs) in conv.weights.chunks_exact(m).enumerate() {
                let (tap, i) = (row / c, row % c);
                for (o, &v) in outs.iter().enumerate() {
                    w[(o * c + i) * kh * kw + tap] = v;
                }
            }
            ([m, c, kh, kw], 1, w)
        }
    }
}

/// The weights of a fully connected layer as a 1x1 convolution's, in ONNX layout.
pub fn fc_weights_oihw(fc: &FcLayer) -> ([usize; 4], usize, Vec<f32>) {
    let (k, n) = (fc.in_c, fc.out_c);
    let mut w = vec![0.0; n * k];
    for (i, outs) in fc.weights.chunks_exact(n).enumerate() {
        for (o, &v) in outs.iter().enumerate() {
            w[o * k + i] = v;
        }
    }
    ([n, k, 1, 1], 1, w)
}

/// Quantizes weights `w` (ONNX layout `dims`) symmetrically per output channel, and `bias`
/// to int32 for an input of scale `input_scale`.
///
/// Each channel's scale is its largest weight magnitude over 127 (weights then fill
/// `[-127, 127]`; -128 is left out so that the range is symmetric), raised where needed so that
/// the bias fits [`BIAS_LIMIT`]; an all-zero channel gets the scale its bias needs, or 1.
pub fn quantize_weights(
    dims: [usize; 4],
    group: usize,
    w: &[f32],
    bias: &[f32],
    input_scale: f32,
) -> QuantizedWeights {
    let per_out = dims[1] * dims[2] * dims[3];
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(dims[0]);
    let mut bias_q = Vec::with_capacity(dims[0]);
    let mut bias_scales = Vec::with_capacity(dims[0]);
    for (channel, &b) in w.chunks_exact(per_out).zip(bias) {
        let largest = channel
            .iter()
            .fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
        let for_bias = f64::from(b).abs() / (f64::from(input_scale) * BIAS_LIMIT);
        let mut scale = (largest / 127.0).max(for_bias) as f32;
        if !(scale > 0.0 && scale.is_finite()) {
            scale = 1.0;
        }
        values.extend(channel.iter().map(|&v| {
            (f64::from(v) / f64::from(scale))
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        }));
        // The bias scale as the importer checks it: the product taken in f64, rounded to f32.
        let bias_scale = (f64::from(input_scale) * f64::from(scale)) as f32;
        let q = (f64::from(b) / f64::from(bias_scale)).round_ties_even();
        bias_q.push(q.clamp(-BIAS_LIMIT, BIAS_LIMIT) as i32);
        scales.push(scale);
        bias_scales.push(bias_scale);
    }
    QuantizedWeights {
        dims,
        group,
        values,
        scales,
        bias: bias_q,
        bias_scales,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::Padding;
    use crate::kernels::Clamp;

    fn conv(kind: ConvKind, in_c: usize, out_c: usize, k: usize) -> ConvLayer {
        let taps = if kind == ConvKind::Depthwise { 1 } else { in_c };
        ConvLayer {
            name: "c".into(),
            kind,
            in_c,
            out_c,
            kh: k,
            kw: k,
            stride_h: 1,
            stride_w: 1,
            padding: Padding::SameUpper,
            weights: (0..k * k * taps * out_c).map(|i| i as f32).collect(),
            bias: vec![0.0; out_c],
            act: Clamp::RELU6,
        }
    }

    #[test]
    fn layouts_follow_onnx() {
        // Dense plan index ((ky * kw + kx) * in_c + i) * out_c + o.
        let (dims, group, w) = conv_weights_oihw(&conv(ConvKind::Dense, 2, 3, 2));
        assert_eq!((dims, group), ([3, 2, 2, 2], 1));
        let (o, i, ky, kx) = (2, 1, 1, 0);
        assert_eq!(
            w[((o * 2 + i) * 2 + ky) * 2 + kx],
            (((ky * 2 + kx) * 2 + i) * 3 + o) as f32
        );
        // Depthwise plan index (ky * kw + kx) * c + o.
        let (dims, group, w) = conv_weights_oihw(&conv(ConvKind::Depthwise, 4, 4, 3));
        assert_eq!((dims, group), ([4, 1, 3, 3], 4));
        assert_eq!(w[3 * 9 + 5], (5 * 4 + 3) as f32);
        // Pointwise plan index i * out_c + o.
        let (dims, _, w) = conv_weights_oihw(&conv(ConvKind::Pointwise, 3, 2, 1));
        assert_eq!(dims, [2, 3, 1, 1]);
        assert_eq!(w[3 + 2], (2 * 2 + 1) as f32);
    }

    #[test]
    fn channels_fill_the_int8_range_and_biases_are_in_accumulator_units() {
        let w = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 2.0, 1.0, -0.5];
        let q = quantize_weights([3, 3, 1, 1], 1, &w, &[0.1, 0.3, -4.0], 0.02);
        assert_eq!(q.values[..3], [64, -127, 32]); // 0.5 * 127 = 63.5 rounds to even
        assert_eq!(q.scales[0], 1.0 / 127.0);
        // An all-zero channel: the scale its bias needs (over 2^30 steps), and the bias exact.
        assert_eq!(q.values[3..6], [0, 0, 0]);
        let back = f64::from(q.bias[1]) * f64::from(q.bias_scales[1]);
        assert!((back - 0.3).abs() < 1e-6, "{back}");
        assert_eq!(q.values[6..], [127, 64, -32]);
        let back = f64::from(q.bias[2]) * f64::from(q.bias_scales[2]);
        assert!((back + 4.0).abs() <= f64::from(q.bias_scales[2]));
        for (&s, &bs) in q.scales.iter().zip(&q.bias_scales) {
            assert_eq!(bs, (0.02f64 * f64::from(s)) as f32);
        }
        assert!(q.bias.iter().all(|b| f64::from(b.abs()) <= BIAS_LIMIT));
    }

    #[test]
    fn a_large_bias_raises_the_weight_scale_instead_of_overflowing() {
        let q = quantize_weights([1, 1, 1, 1], 1, &[1e-9], &[1e6], 1e-3);
        assert!(f64::from(q.bias[0].abs()) <= BIAS_LIMIT);
        let back = f64::from(q.bias[0]) * f64::from(q.bias_scales[0]);
        assert!((back - 1e6).abs() / 1e6 < 1e-6, "{back}");
    }
}
