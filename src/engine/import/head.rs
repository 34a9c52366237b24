//! Lowering of the classifier head: layout transposes, global or whole-map average pooling,
//! flattening (Flatten, Reshape, Squeeze), the fully connected layer (Gemm, or MatMul and Add),
//! and the final Softmax.

use super::attrs::unsupported;
use super::weights::transpose_oi;
use super::{Importer, Stage};
use crate::engine::onnx::{node_label, pb, Attrs, Constant};
use crate::engine::plan::{FcLayer, InputLayout, Layer};
use crate::error::Result;
use crate::kernels::Clamp;

impl Importer<'_> {
    pub(super) fn transpose(&mut self, node: &pb::NodeProto) -> Result<()> {
        let perm = Attrs(node).ints("perm").unwrap_or_default();
        self.stage = match (self.stage, perm.as_slice()) {
            (
                Stage::Map {
                    layout: InputLayout::Nhwc,
                    channels,
                },
                [0, 3, 1, 2],
            ) => Stage::Map {
                layout: InputLayout::Nchw,
                channels,
            },
            (
                Stage::Map {
                    layout: InputLayout::Nchw,
                    channels,
                },
                [0, 2, 3, 1],
            ) => Stage::Map {
                layout: InputLayout::Nhwc,
                channels,
            },
            // With both spatial dims of size 1, any permutation that keeps the batch first leaves
            // the data in the same order.
            (Stage::Pooled { channels }, [0, ..]) if perm.len() == 4 => Stage::Pooled { channels },
            (stage, _) => return Err(unsupported(node, format!("perm {perm:?} on {stage:?}"))),
        };
        Ok(())
    }

    pub(super) fn pool(
        &mut self,
        node: &pb::NodeProto,
        window: Option<(usize, usize)>,
    ) -> Result<()> {
        let Stage::Map {
            layout: InputLayout::Nchw,
            channels,
        } = self.stage
        else {
            return Err(unsupported(
                node,
                format!("pooling needs an NCHW feature map, found {:?}", self.stage),
            ));
        };
        self.layers.push(Layer::GlobalAvgPool { window });
        self.stage = Stage::Pooled { channels };
        Ok(())
    }

    pub(super) fn average_pool(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let k = a.ints("kernel_shape").unwrap_or_default();
        let [kh, kw] = k[..] else {
            return Err(unsupported(node, format!("kernel_shape {k:?}")));
        };
        let pads = a.ints("pads").unwrap_or_default();
        let auto_pad = a.string("auto_pad").unwrap_or_default();
        if pads.iter().any(|&p| p != 0)
            || !matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID")
            || a.int("ceil_mode").unwrap_or(0) != 0
        {
            return Err(unsupported(
                node,
                "only an unpadded AveragePool over the whole map is supported".into(),
            ));
        }
        self.pool(node, Some((kh.max(0) as usize, kw.max(0) as usize)))
    }

    /// The `axes` of a reduction or squeeze on a 4-D tensor (an attribute before opset 13/18,
    /// an input after), made non-negative and sorted.
    pub(super) fn axes(&self, node: &pb::NodeProto) -> Result<Vec<i64>> {
        let axes = match Attrs(node).ints("axes") {
            Some(axes) => axes,
            None => self
                .optional_constant(node, 1)?
                .map(|c| c.to_i64())
                .unwrap_or_default(),
        };
        let mut axes: Vec<i64> = axes
            .iter()
            .map(|&x| if x < 0 { x + 4 } else { x })
            .collect();
        axes.sort_unstable();
        Ok(axes)
    }

    pub(super) fn reduce_mean(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let axes = self.axes(node)?;
        let Stage::Map { layout, channels } = self.stage else {
            return Err(unsupported(
                node,
                "ReduceMean must reduce a feature map".into(),
            ));
        };
        let spatial: &[i64] = match layout {
            InputLayout::Nchw => &[2, 3],
            InputLayout::Nhwc => &[1, 2],
        };
        if axes != spatial {
            return Err(unsupported(
                node,
                format!("reduces axes {axes:?}; only the spatial axes {spatial:?}"),
            ));
        }
        self.layers.push(Layer::GlobalAvgPool { window: None });
        // keepdims=0 gives [N, C] directly.
        self.stage = if a.int("keepdims").unwrap_or(1) == 0 {
            Stage::Flat { channels }
        } else {
            Stage::Pooled { channels }
        };
        Ok(())
    }

    pub(super) fn flatten_pooled(&mut self, node: &pb::NodeProto) -> Result<()> {
        self.stage = match self.stage {
            Stage::Pooled { channels } | Stage::Flat { channels } => Stage::Flat { channels },
            stage => {
                return Err(unsupported(
                    node,
                    format!("flattening {stage:?} is not supported (only after global pooling)"),
                ))
            }
        };
        Ok(())
    }

    pub(super) fn flatten(&mut self, node: &pb::NodeProto) -> Result<()> {
        let axis = Attrs(node).int("axis").unwrap_or(1);
        if axis != 1 {
            return Err(unsupported(node, format!("axis {axis} (only 1)")));
        }
        self.flatten_pooled(node)
    }

    pub(super) fn reshape(&mut self, node: &pb::NodeProto) -> Result<()> {
        let shape = self.constant(node, 1, "shape")?.to_i64();
        let channels = match self.stage {
            Stage::Pooled { channels } | Stage::Flat { channels } => channels as i64,
            _ => -2,
        };
        let ok = matches!(shape[..], [n, c] if (n == -1 || n == 0) && (c == channels || c == -1) && !(n == -1 && c == -1));
        if !ok {
            return Err(unsupported(
                node,
                format!("reshape to {shape:?}; only [N, C] after global pooling"),
            ));
        }
        self.flatten_pooled(node)
    }

    pub(super) fn squeeze(&mut self, node: &pb::NodeProto) -> Result<()> {
        let axes = self.axes(node)?;
        if !(axes == [2, 3] || axes == [1, 2]) {
            return Err(unsupported(
                node,
                format!("squeeze axes {axes:?}; only the two spatial axes"),
            ));
        }
        self.flatten_pooled(node)
    }

    pub(super) fn fc_input(&self, node: &pb::NodeProto) -> Result<usize> {
        match self.stage {
            Stage::Flat { channels } => Ok(channels),
            stage => Err(unsupported(
                node,
                format!("needs a [N, C] input, found {stage:?}"),
            )),
        }
    }

    pub(super) fn gemm(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let in_c = self.fc_input(node)?;
        if a.int("transA").unwrap_or(0) != 0 {
            return Err(unsupported(node, "transA=1".into()));
        }
        let trans_b = a.int("transB").unwrap_or(0) != 0;
        let alpha = a.float("alpha").unwrap_or(1.0);
        let beta = a.float("beta").unwrap_or(1.0);
        let b = self.constant(node, 1, "B")?;
        let [r, c] = b.dims[..] else {
            return Err(unsupported(node, format!("B shape {:?}", b.dims)));
        };
        let (k, n) = if trans_b { (c, r) } else { (r, c) };
        if k != in_c {
            return Err(unsupported(
                node,
                format!("B expects {k} features, gets {in_c}"),
            ));
        }
        let raw = b.to_f32();
        let mut weights = if trans_b {
            transpose_oi(&raw, n, k)
        } else {
            raw
        };
        weights.iter_mut().for_each(|w| *w *= alpha);
        let bias = match self.optional_constant(node, 2)? {
            None => vec![0.0; n],
            Some(c) => broadcast_bias(node, c, n)?
                .into_iter()
                .map(|v| v * beta)
                .collect(),
        };
        self.push_fc(node, in_c, n, weights, bias);
        Ok(())
    }

    pub(super) fn matmul(&mut self, node: &pb::NodeProto) -> Result<()> {
        let in_c = self.fc_input(node)?;
        let b = self.constant(node, 1, "B")?;
        let [k, n] = b.dims[..] else {
            return Err(unsupported(node, format!("B shape {:?}", b.dims)));
        };
        if k != in_c {
            return Err(unsupported(
                node,
                format!("B expects {k} features, gets {in_c}"),
            ));
        }
        let weights = b.to_f32();
        self.push_fc(node, in_c, n, weights, vec![0.0; n]);
        Ok(())
    }

    pub(super) fn push_fc(
        &mut self,
        node: &pb::NodeProto,
        in_c: usize,
        out_c: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) {
        self.layers.push(Layer::Fc(FcLayer {
            name: node_label(node),
            in_c,
            out_c,
            weights,
            bias,
            act: Clamp::NONE,
        }));
        self.stage = Stage::Flat { channels: out_c };
    }

    pub(super) fn add_bias(&mut self, node: &pb::NodeProto) -> Result<()> {
        let addend = self.constant(node, 1, "addend")?.clone();
        let (_, bias, _) = self.open_layer(node)?;
        let c = bias.len();
        let per_channel = broadcast_bias(node, &addend, c)?;
        for (b, v) in bias.iter_mut().zip(per_channel) {
            *b += v;
        }
        Ok(())
    }

    pub(super) fn softmax(&mut self, node: &pb::NodeProto) -> Result<()> {
        let default_axis = if self.opset < 13 { 1 } else { -1 };
        let axis = Attrs(node).int("axis").unwrap_or(default_axis);
        if !matches!(self.stage, Stage::Flat { .. }) || !(axis == 1 || axis == -1) {
            return Err(unsupported(
                node,
                format!(
                    "softmax over axis {axis} of {:?}; only over the classes of [N, C]",
                    self.stage
                ),
            ));
        }
        self.stage = Stage::Softmaxed;
        Ok(())
    }
}

/// A per-channel bias from a constant of `c` values (any shape whose non-unit dims are `[c]`) or
/// a scalar.
fn broadcast_bias(node: &pb::NodeProto, k: &Constant, c: usize) -> Result<Vec<f32>> {
    let non_unit: Vec<usize> = k.dims.iter().copied().filter(|&d| d != 1).collect();
    if k.values.len() == 1 {
        return Ok(vec![k.values[0] as f32; c]);
    }
    // A 4-D addend on a feature map must sit on the channel axis (NCHW: [1, C, 1, 1]).
    let on_channel_axis = k.dims.len() != 4 || k.dims[1] == c;
    if non_unit == [c] && on_channel_axis {
        return Ok(k.to_f32());
    }
    Err(unsupported(
        node,
        format!(
            "addend of shape {:?} is not a per-channel bias of {c}",
            k.dims
        ),
    ))
}
