//! The chain of a TFLite model, checked: one input, operators each taking the previous one's
//! output, in the order features -> pool -> classifier -> reshape -> softmax, with every tensor
//! shape equal to the engine's geometry. Also the helpers both lowerings share: weight layouts
//! and activation bounds.

use super::schema::{op, Activation, Model, Operator, PaddingKind, Tensor, WindowOptions};
use crate::engine::import::weights::to_hwio;
use crate::engine::plan::{ConvKind, ConvShape, Padding};
use crate::error::{Error, Result};

/// A refusal naming the tensor an operator writes and the operator.
pub(super) fn refused(tensor: &str, op: &str, reason: String) -> Error {
    Error::Unsupported {
        node: tensor.to_string(),
        op: op.to_string(),
        reason,
    }
}

/// One step of the chain, with its tensors resolved.
pub(super) enum Step<'m> {
    /// A convolution; `weights` in TFLite's layout, `[out][kh][kw][in]` (dense) or
    /// `[1][kh][kw][out]` (depthwise).
    Conv {
        shape: ConvShape,
        activation: Activation,
        input: &'m Tensor,
        weights: &'m Tensor,
        bias: Option<&'m Tensor>,
        output: &'m Tensor,
        /// After the pool: the classifier.
        classifier: bool,
    },
    /// The average over the whole `rows x cols` map.
    Pool {
        window: (usize, usize),
        input: &'m Tensor,
        output: &'m Tensor,
    },
    /// `RESHAPE`/`SQUEEZE` of the classifier's output to `[1, classes]`: no computation.
    Flatten {
        input: &'m Tensor,
        output: &'m Tensor,
    },
    /// The final softmax (beta 1).
    Softmax,
}

/// The checked chain of a model.
pub(super) struct Steps<'m> {
    /// The graph input's tensor index.
    pub input: i32,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Input channels.
    pub channels: usize,
    /// The operators, resolved.
    pub steps: Vec<Step<'m>>,
    /// The tensor holding the logits.
    pub logits: &'m Tensor,
    /// Outputs of the classifier.
    pub classes: usize,
}

/// Where the walk is: each kind of operator is allowed at one stage only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
enum Stage {
    Features,
    Pooled,
    Classified,
    Flat,
    Done,
}

/// Positive dimensions, or an error naming the tensor.
fn dims(t: &Tensor, rank: usize) -> Result<Vec<usize>> {
    let d: Option<Vec<usize>> = t
        .shape
        .iter()
        .map(|&v| usize::try_from(v).ok().filter(|&v| v > 0))
        .collect();
    match d {
        Some(d) if d.len() == rank => Ok(d),
        _ => Err(Error::MalformedModel(format!(
            "TFLite: tensor `{}` has shape {:?} where a fixed rank-{rank} shape is needed",
            t.name, t.shape
        ))),
    }
}

/// Walks the operators from the graph input to its output, checking that they form one chain
/// of the accepted operators in the accepted order, with shapes the engine computes the same.
pub(super) fn walk<'m>(model: &'m Model<'_>) -> Result<Steps<'m>> {
    let ([input], [output]) = (&model.inputs[..], &model.outputs[..]) else {
        return Err(Error::MalformedModel(format!(
            "TFLite: {} inputs and {} outputs where one of each is needed",
            model.inputs.len(),
            model.outputs.len()
        )));
    };
    let image = model.tensor(*input)?;
    let [n, height, width, channels] = dims(image, 4)?[..] else {
        unreachable!("rank checked")
    };
    if n != 1 {
        return Err(refused(
            &image.name,
            "input",
            format!("batch {n} in the file: single-image files only"),
        ));
    }
    let (mut h, mut w, mut c) = (height, width, channels);
    let mut current = *input;
    let mut stage = Stage::Features;
    let mut steps = Vec::with_capacity(model.operators.len());
    let mut logits = None;
    let mut classes = 0;
    for o in &model.operators {
        let name = op::name(o.code);
        let (&first, [out]) = (o.inputs.first().unwrap_or(&-1), &o.outputs[..]) else {
            return Err(Error::MalformedModel(format!(
                "TFLite: {name} with {} outputs",
                o.outputs.len()
            )));
        };
        let output = model.tensor(*out)?;
        let refuse = |why: String| refused(&output.name, &name, why);
        if first != current {
            return Err(refuse(
                "its input is not the previous operator's output: only a single chain of \
                 operators is supported"
                    .into(),
            ));
        }
        let input = model.tensor(first)?;
        let step = match o.code {
            op::CONV_2D | op::DEPTHWISE_CONV_2D => {
                let classifier = match stage {
                    Stage::Features => false,
                    Stage::Pooled => true,
                    _ => return Err(refuse("a convolution after the classifier".into())),
                };
                let step = conv_step(model, o, c, input, output, classifier)?;
                let Step::Conv { shape, .. } = &step else {
                    unreachable!("conv_step makes convolutions")
                };
                let g = shape.geometry(&output.name, 1, h, w)?;
                expect_shape(output, &[1, g.out_h, g.out_w, g.out_c])?;
                (h, w, c) = (g.out_h, g.out_w, g.out_c);
                if classifier {
                    stage = Stage::Classified;
                    logits = Some(output);
                    classes = c;
                }
                step
            }
            op::AVERAGE_POOL_2D => {
                if stage != Stage::Features {
                    return Err(refuse("a second pool".into()));
                }
                let opts = o.window_options()?;
                if opts.filter != (w, h) || opts.activation != Activation::None {
                    return Err(refuse(format!(
                        "a {}x{} pool on a {h}x{w} map: only a pool over the whole map, without \
                         activation, is supported",
                        opts.filter.1, opts.filter.0
                    )));
                }
                expect_shape(output, &[1, 1, 1, c])?;
                stage = Stage::Pooled;
                let window = (h, w);
                (h, w) = (1, 1);
                Step::Pool {
                    window,
                    input,
                    output,
                }
            }
            op::RESHAPE | op::SQUEEZE => {
                if stage != Stage::Classified {
                    return Err(refuse(
                        "only the classifier's output may be reshaped".into(),
                    ));
                }
                let d = output.shape.iter().map(|&v| v as i64).collect::<Vec<_>>();
                if d != [1, c as i64] && d != [c as i64] {
                    return Err(refuse(format!(
                        "reshapes to {:?} where [1, {c}] is needed",
                        output.shape
                    )));
                }
                stage = Stage::Flat;
                Step::Flatten { input, output }
            }
            op::SOFTMAX => {
                if !matches!(stage, Stage::Classified | Stage::Flat) {
                    return Err(refuse("a softmax before the classifier".into()));
                }
                let beta = o.softmax_beta()?;
                if beta != 1.0 {
                    return Err(refuse(format!("beta {beta}: only 1 is supported")));
                }
                stage = Stage::Done;
                Step::Softmax
            }
            _ => {
                return Err(refuse(
                    "operator not supported: the importer takes CONV_2D, DEPTHWISE_CONV_2D, \
                     AVERAGE_POOL_2D, RESHAPE, SQUEEZE and SOFTMAX"
                        .into(),
                ))
            }
        };
        steps.push(step);
        current = *out;
    }
    let logits =
        match (logits, stage) {
            (Some(l), Stage::Classified | Stage::Flat | Stage::Done) if current == *output => l,
            _ => return Err(Error::MalformedModel(
                "TFLite: the graph does not end with a classifier after a pool (and an optional \
                 reshape and softmax) whose output is the graph's output"
                    .into(),
            )),
        };
    Ok(Steps {
        input: *input,
        height,
        width,
        channels,
        steps,
        logits,
        classes,
    })
}

/// The step of a `CONV_2D` or `DEPTHWISE_CONV_2D` on `in_c` channels.
fn conv_step<'m>(
    model: &'m Model<'_>,
    o: &Operator<'_>,
    in_c: usize,
    input: &'m Tensor,
    output: &'m Tensor,
    classifier: bool,
) -> Result<Step<'m>> {
    let name = op::name(o.code);
    let refuse = |why: String| refused(&output.name, &name, why);
    let opts: WindowOptions = o.window_options()?;
    if opts.dilation != (1, 1) {
        return Err(refuse(format!("dilation {:?}", opts.dilation)));
    }
    let weights = model.tensor(*o.inputs.get(1).unwrap_or(&-1))?;
    let bias = match o.inputs.get(2) {
        None | Some(-1) => None,
        Some(&b) => Some(model.tensor(b)?),
    };
    let [d0, kh, kw, d3] = dims(weights, 4)?[..] else {
        unreachable!("rank checked")
    };
    let depthwise = o.code == op::DEPTHWISE_CONV_2D;
    let (out_c, w_in) = if depthwise { (d3, d0) } else { (d0, d3) };
    if depthwise && (w_in != 1 || out_c != in_c || opts.depth_multiplier > 1) {
        return Err(refuse(format!(
            "a depthwise convolution from {in_c} to {out_c} channels (multiplier {}): only \
             multiplier 1 is supported",
            opts.depth_multiplier
        )));
    }
    if !depthwise && w_in != in_c {
        return Err(refuse(format!(
            "weights for {w_in} input channels on a {in_c}-channel input"
        )));
    }
    let pointwise = !depthwise && kh == 1 && kw == 1 && opts.stride_h == 1 && opts.stride_w == 1;
    if classifier && !pointwise {
        return Err(refuse("only a 1x1 classifier may follow the pool".into()));
    }
    let kind = match (depthwise, pointwise) {
        (true, _) => ConvKind::Depthwise,
        (false, true) => ConvKind::Pointwise,
        (false, false) => ConvKind::Dense,
    };
    let padding = match opts.padding {
        // A 1x1 stride-1 window needs no padding either way; the pointwise kernel takes none.
        _ if pointwise => Padding::NONE,
        PaddingKind::Same => Padding::SameUpper,
        PaddingKind::Valid => Padding::NONE,
    };
    Ok(Step::Conv {
        shape: ConvShape {
            kind,
            in_c,
            out_c,
            kh,
            kw,
            stride_h: opts.stride_h,
            stride_w: opts.stride_w,
            padding,
        },
        activation: opts.activation,
        input,
        weights,
        bias,
        output,
        classifier,
    })
}

/// Checks that `t` has shape `want` (the engine's geometry), when the file gives it.
fn expect_shape(t: &Tensor, want: &[usize]) -> Result<()> {
    let got: Vec<i64> = t.shape.iter().map(|&v| i64::from(v)).collect();
    let want: Vec<i64> = want.iter().map(|&v| v as i64).collect();
    if got == want {
        Ok(())
    } else {
        Err(Error::MalformedModel(format!(
            "TFLite: tensor `{}` has shape {got:?} where the layers before it make {want:?}",
            t.name
        )))
    }
}

/// A fused activation's real bounds.
pub(super) fn activation_bounds(a: Activation, tensor: &str, op: &str) -> Result<(f32, f32)> {
    match a {
        Activation::None => Ok((f32::NEG_INFINITY, f32::INFINITY)),
        Activation::Relu => Ok((0.0, f32::INFINITY)),
        Activation::ReluN1To1 => Ok((-1.0, 1.0)),
        Activation::Relu6 => Ok((0.0, 6.0)),
        Activation::Other(code) => Err(refused(
            tensor,
            op,
            format!("fused activation {code}: only RELU, RELU_N1_TO_1 and RELU6 are supported"),
        )),
    }
}

/// TFLite's `[out][kh][kw][in]` -> the engine's `[kh][kw][in][out]` (for a 1x1 kernel, the
/// pointwise `[in][out]`). Depthwise weights, `[1][kh][kw][c]`, are already in the engine's
/// `[kh][kw][c]`.
fn pack_ohwi<T: Copy + Default>(
    w: &[T],
    out_c: usize,
    kh: usize,
    kw: usize,
    in_c: usize,
) -> Vec<T> {
    to_hwio(w, [out_c, in_c, kh, kw], |o, i, y, x| {
        ((o * kh + y) * kw + x) * in_c + i
    })
}

/// The weights of a convolution step, in the engine's layout for its kind.
pub(super) fn pack<T: Copy + Default>(shape: &ConvShape, raw: &[T]) -> Vec<T> {
    match shape.kind {
        ConvKind::Depthwise => raw.to_vec(),
        ConvKind::Dense | ConvKind::Pointwise => {
            pack_ohwi(raw, shape.out_c, shape.kh, shape.kw, shape.in_c)
        }
    }
}

/// Values in a convolution's weights: `[out][kh][kw][in]`, or `[1][kh][kw][c]` for depthwise.
pub(super) fn weight_len(shape: &ConvShape) -> usize {
    match shape.kind {
        ConvKind::Depthwise => shape.kh * shape.kw * shape.out_c,
        ConvKind::Dense | ConvKind::Pointwise => shape.out_c * shape.kh * shape.kw * shape.in_c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ohwi_packs_to_hwio() {
        // 2 outputs, 1x2 kernel, 3 inputs: value = o*100 + x*10 + i.
        let (o_n, kh, kw, i_n) = (2, 1, 2, 3);
        let mut w = Vec::new();
        for o in 0..o_n {
            for x in 0..kw {
                for i in 0..i_n {
                    w.push(o * 100 + x * 10 + i);
                }
            }
        }
        let p = pack_ohwi(&w, o_n, kh, kw, i_n);
        for x in 0..kw {
            for i in 0..i_n {
                for o in 0..o_n {
                    assert_eq!(p[(x * i_n + i) * o_n + o], o * 100 + x * 10 + i);
                }
            }
        }
    }
}
