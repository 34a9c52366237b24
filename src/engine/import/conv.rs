//! Lowering of the convolution family: Conv (dense, depthwise, pointwise, or the classifier as
//! a 1x1 Conv on the pooled vector), a Pad folded into the next Conv, BatchNormalization folded
//! into the previous layer's weights, and Relu/Clip fused into its store.

use super::attrs::{conv_padding, conv_strides, pads_nothing_1x1, unsupported, MAX_PAD};
use super::weights::{pack_conv, transpose_oi};
use super::{Importer, Stage};
use crate::engine::onnx::{node_label, pb, Attrs};
use crate::engine::plan::{ConvLayer, FcLayer, InputLayout, Layer, Padding};
use crate::error::Result;
use crate::kernels::Clamp;

impl Importer<'_> {
    pub(super) fn conv(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let w = self.constant(node, 1, "weight")?.clone();
        let [m, cg, kh, kw] = w.dims[..] else {
            return Err(unsupported(
                node,
                format!("weight shape {:?} is not 4-D", w.dims),
            ));
        };
        let group = a.int("group").unwrap_or(1).max(1) as usize;
        let in_c = cg * group;
        let bias = match self.optional_constant(node, 2)? {
            Some(b) if b.values.len() == m => b.to_f32(),
            Some(b) => {
                return Err(unsupported(
                    node,
                    format!("bias has {} values for {m} channels", b.values.len()),
                ))
            }
            None => vec![0.0; m],
        };
        let (sh, sw) = conv_strides(node)?;
        if let Some(k) = a.ints("kernel_shape") {
            if k != [kh as i64, kw as i64] {
                return Err(unsupported(
                    node,
                    format!("kernel_shape {k:?} disagrees with the weights"),
                ));
            }
        }
        let mut padding = conv_padding(node)?;
        if let Some([t, l, b, r]) = self.pending_pad.take() {
            padding = match padding {
                Padding::Explicit {
                    top,
                    left,
                    bottom,
                    right,
                } => Padding::Explicit {
                    top: top + t,
                    left: left + l,
                    bottom: bottom + b,
                    right: right + r,
                },
                _ => return Err(unsupported(node, "a Pad before a SAME-padded Conv".into())),
            };
        }
        let channels = match self.stage {
            Stage::Map {
                layout: InputLayout::Nchw,
                channels,
            } => channels,
            Stage::Pooled { channels }
                if kh == 1 && kw == 1 && group == 1 && pads_nothing_1x1(padding) =>
            {
                // A 1x1 conv on the pooled vector is the classifier: a fully connected layer.
                if channels != in_c {
                    return Err(unsupported(
                        node,
                        format!("expects {in_c} channels, gets {channels}"),
                    ));
                }
                let weights = transpose_oi(&w.to_f32(), m, in_c);
                self.layers.push(Layer::Fc(FcLayer {
                    name: node_label(node),
                    in_c,
                    out_c: m,
                    weights,
                    bias,
                    act: Clamp::NONE,
                }));
                self.stage = Stage::Pooled { channels: m };
                return Ok(());
            }
            _ => {
                return Err(unsupported(
                    node,
                    format!(
                        "a Conv needs an NCHW feature map here, found {:?}",
                        self.stage
                    ),
                ))
            }
        };
        // The first conv fixes the channel count when the input shape left it symbolic.
        if channels != in_c && !(self.layers.is_empty() && channels == 0) {
            return Err(unsupported(
                node,
                format!("expects {in_c} input channels, gets {channels}"),
            ));
        }
        let pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pads_nothing_1x1(padding);
        let (kind, weights) = pack_conv(node, &w.to_f32(), [m, cg, kh, kw], group, pointwise)?;
        self.layers.push(Layer::Conv(ConvLayer {
            name: node_label(node),
            kind,
            in_c,
            out_c: m,
            kh,
            kw,
            stride_h: sh,
            stride_w: sw,
            padding,
            weights,
            bias,
            act: Clamp::NONE,
        }));
        self.stage = Stage::Map {
            layout: InputLayout::Nchw,
            channels: m,
        };
        Ok(())
    }

    /// The last layer's output-channel-fastest weights, bias and activation, if it may still
    /// absorb a per-channel affine map or an activation.
    pub(super) fn open_layer(
        &mut self,
        node: &pb::NodeProto,
    ) -> Result<(&mut Vec<f32>, &mut Vec<f32>, &mut Clamp)> {
        let last = match self.layers.last_mut() {
            Some(Layer::Conv(c)) => (&mut c.weights, &mut c.bias, &mut c.act),
            Some(Layer::Fc(f)) => (&mut f.weights, &mut f.bias, &mut f.act),
            _ => {
                return Err(unsupported(
                    node,
                    "must follow a Conv or a fully connected layer".into(),
                ))
            }
        };
        if !last.2.is_identity() {
            return Err(unsupported(
                node,
                "the previous layer already has an activation".into(),
            ));
        }
        Ok(last)
    }

    pub(super) fn batch_norm(&mut self, node: &pb::NodeProto) -> Result<()> {
        let eps = Attrs(node).float("epsilon").unwrap_or(1e-5) as f64;
        let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|i| {
            self.constant(node, i, "batch-norm parameter")
                .map(|c| c.values.clone())
        });
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let (weights, bias, _) = self.open_layer(node)?;
        let c = bias.len();
        if [&gamma, &beta, &mean, &var].iter().any(|v| v.len() != c) {
            return Err(unsupported(
                node,
                format!("parameters do not have {c} channels"),
            ));
        }
        let scale: Vec<f64> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
        for (i, w) in weights.iter_mut().enumerate() {
            *w = (*w as f64 * scale[i % c]) as f32;
        }
        for i in 0..c {
            bias[i] = ((bias[i] as f64 - mean[i]) * scale[i] + beta[i]) as f32;
        }
        Ok(())
    }

    pub(super) fn clip_bounds(&self, node: &pb::NodeProto) -> Result<Clamp> {
        let a = Attrs(node);
        if self.opset < 11 {
            return Ok(Clamp {
                lo: a.float("min").unwrap_or(f32::NEG_INFINITY),
                hi: a.float("max").unwrap_or(f32::INFINITY),
            });
        }
        let bound = |i: usize, default: f32| -> Result<f32> {
            match self.optional_constant(node, i)? {
                None => Ok(default),
                Some(c) => c
                    .scalar()
                    .map(|v| v as f32)
                    .ok_or_else(|| unsupported(node, "clip bounds must be scalars".into())),
            }
        };
        Ok(Clamp {
            lo: bound(1, f32::NEG_INFINITY)?,
            hi: bound(2, f32::INFINITY)?,
        })
    }

    pub(super) fn activation(&mut self, node: &pb::NodeProto, clamp: Clamp) -> Result<()> {
        if clamp.lo > clamp.hi {
            return Err(unsupported(
                node,
                format!("empty range [{}, {}]", clamp.lo, clamp.hi),
            ));
        }
        let (_, _, act) = self.open_layer(node)?;
        *act = clamp;
        Ok(())
    }

    pub(super) fn pad(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let mode = a.string("mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(unsupported(
                node,
                format!("pad mode `{mode}` (only constant zero padding)"),
            ));
        }
        let (pads, value) = if self.opset < 11 {
            (
                a.ints("pads").unwrap_or_default(),
                a.float("value").unwrap_or(0.0) as f64,
            )
        } else {
            let pads = self.constant(node, 1, "pads")?.to_i64();
            let value = self
                .optional_constant(node, 2)?
                .and_then(|c| c.scalar())
                .unwrap_or(0.0);
            (pads, value)
        };
        if value != 0.0 {
            return Err(unsupported(node, format!("pad value {value} (only zero)")));
        }
        let Stage::Map { layout, .. } = self.stage else {
            return Err(unsupported(
                node,
                "Pad is only supported on a feature map".into(),
            ));
        };
        let [n0, a1, a2, a3, n1, b1, b2, b3] = pads[..] else {
            return Err(unsupported(node, format!("pads {pads:?} are not 4-D")));
        };
        let (ch, [t, l, b, r]) = match layout {
            InputLayout::Nchw => ([a1, b1], [a2, a3, b2, b3]),
            InputLayout::Nhwc => ([a3, b3], [a1, a2, b1, b2]),
        };
        if n0 != 0
            || n1 != 0
            || ch != [0, 0]
            || [t, l, b, r].iter().any(|p| !(0..=MAX_PAD).contains(p))
        {
            return Err(unsupported(
                node,
                format!("pads {pads:?}: only spatial padding of 0..={MAX_PAD}"),
            ));
        }
        self.pending_pad = Some([t, l, b, r].map(|p| p as usize));
        Ok(())
    }
}
