//! The steps of a uint8 quantized TFLite model as a [`QuantPlan`]: the same integers, with
//! TFLite's fixed-point requantization replaced by the engine's (see `kernels::int8::requant`;
//! the two round differently only where a value lies on a half-quantum tie).

use super::schema::{ElementType, Model, Quantization, Tensor};
use super::walk::{activation_bounds, pack, refused, weight_len, Step, Steps};
use crate::engine::plan::{ConvKind, ConvShape, InputLayout};
use crate::engine::quant::plan::{
    overflowing_channel, QuantConv, QuantLayer, QuantParams, QuantPlan,
};
use crate::error::{Error, Result};
use crate::kernels::int8::{Requant, MAX_DEPTHWISE_TAPS};

/// Lowers the checked chain of a uint8 model.
pub(super) fn lower(model: &Model<'_>, s: &Steps<'_>) -> Result<QuantPlan> {
    let image = model.tensor(s.input)?;
    let mut layers = Vec::with_capacity(s.steps.len());
    for step in &s.steps {
        match step {
            Step::Conv {
                shape,
                activation,
                input,
                weights,
                bias,
                output,
                ..
            } => layers.push(QuantLayer::Conv(conv(
                model,
                shape,
                *activation,
                [input, weights, output],
                *bias,
            )?)),
            Step::Pool { input, output, .. } => layers.push(QuantLayer::GlobalAvgPool {
                name: output.name.clone(),
                input: activation_params(input)?,
                output: activation_params(output)?,
            }),
            Step::Flatten { input, output } => {
                if activation_params(input)? != activation_params(output)? {
                    return Err(refused(
                        &output.name,
                        "RESHAPE",
                        "a reshape that requantizes".into(),
                    ));
                }
            }
            // Left out: see the module documentation.
            Step::Softmax => {}
        }
    }
    Ok(QuantPlan {
        input_name: image.name.clone(),
        input_layout: InputLayout::Nhwc,
        in_c: s.channels,
        height: Some(s.height),
        width: Some(s.width),
        input: activation_params(image)?,
        layers,
        output_name: s.logits.name.clone(),
        classes: s.classes,
        pixel_input: true,
    })
}

/// A uint8 activation's per-tensor quantization.
fn activation_params(t: &Tensor) -> Result<QuantParams> {
    let q = quantization(t, ElementType::U8)?;
    let (&scale, &zero) = (
        q.scale.first().unwrap_or(&0.0),
        q.zero.first().unwrap_or(&0),
    );
    let uniform = q.scale.iter().all(|&s| s == scale) && q.zero.iter().all(|&z| z == zero);
    match u8::try_from(zero) {
        Ok(zero) if uniform && scale.is_finite() && scale > 0.0 => Ok(QuantParams { scale, zero }),
        _ => Err(malformed(
            t,
            "per-tensor activations with a positive scale and a uint8 zero point",
        )),
    }
}

fn malformed(t: &Tensor, want: &str) -> Error {
    Error::MalformedModel(format!("TFLite: tensor `{}`: expected {want}", t.name))
}

/// `t`'s quantization, checked to be of type `element`.
fn quantization(t: &Tensor, element: ElementType) -> Result<&Quantization> {
    if t.element != element {
        return Err(malformed(
            t,
            &format!("{element:?} values, not {:?}", t.element),
        ));
    }
    t.quantization
        .as_ref()
        .ok_or_else(|| malformed(t, "quantization parameters"))
}

/// Per output channel values of a parameter given per tensor or per channel along `axis`.
fn per_channel<T: Copy>(values: &[T], m: usize, axis: usize, q: &Quantization) -> Option<Vec<T>> {
    match values.len() {
        1 => Some(vec![values[0]; m]),
        n if n == m && q.dimension == axis => Some(values.to_vec()),
        _ => None,
    }
}

/// A quantized convolution from its tensors.
fn conv(
    model: &Model<'_>,
    shape: &ConvShape,
    activation: super::schema::Activation,
    [input, weights, output]: [&Tensor; 3],
    bias: Option<&Tensor>,
) -> Result<QuantConv> {
    let op = if shape.kind == ConvKind::Depthwise {
        "DEPTHWISE_CONV_2D"
    } else {
        "CONV_2D"
    };
    let refuse = |why: String| refused(&output.name, op, why);
    let (in_p, out_p) = (activation_params(input)?, activation_params(output)?);
    let m = shape.out_c;
    let q = quantization(weights, ElementType::U8)?;
    // The output channel is TFLite's axis 0 for dense weights, 3 for depthwise ones.
    let axis = if shape.kind == ConvKind::Depthwise {
        3
    } else {
        0
    };
    let scales = per_channel(&q.scale, m, axis, q)
        .filter(|s| s.iter().all(|&s| s.is_finite() && s > 0.0))
        .ok_or_else(|| {
            malformed(
                weights,
                "one positive scale per tensor or per output channel",
            )
        })?;
    let zeros = per_channel(&q.zero, m, axis, q)
        .filter(|z| z.iter().all(|&z| (0..=255).contains(&z)))
        .ok_or_else(|| {
            malformed(
                weights,
                "uint8 zero points per tensor or per output channel",
            )
        })?;
    let raw = model.data(weights, weight_len(shape), 1)?;
    let per_out = raw.len() / m;
    let centred: Vec<i16> = raw
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let o = match shape.kind {
                ConvKind::Depthwise => i % m,
                ConvKind::Dense | ConvKind::Pointwise => i / per_out,
            };
            i16::from(v) - zeros[o] as i16
        })
        .collect();
    if shape.kind == ConvKind::Depthwise && shape.kh * shape.kw > MAX_DEPTHWISE_TAPS {
        return Err(refuse(format!(
            "a {}x{} depthwise kernel: the integer kernels take up to {MAX_DEPTHWISE_TAPS} taps",
            shape.kh, shape.kw
        )));
    }
    let bias = match bias {
        None => vec![0; m],
        Some(b) => bias_values(model, b, in_p.scale, &scales)?,
    };
    let weights = pack(shape, &centred);
    if let Some(o) = overflowing_channel(&weights, &bias) {
        return Err(refuse(format!(
            "output channel {o} could overflow a 32-bit accumulator"
        )));
    }
    let (lo, hi) = activation_bounds(activation, &output.name, op)?;
    let (lo, hi) = out_p
        .stored_range(lo, hi)
        .ok_or_else(|| refuse("the activation's range is empty once quantized".into()))?;
    Ok(QuantConv {
        name: output.name.clone(),
        shape: *shape,
        weights,
        bias,
        input: in_p,
        requant: Requant {
            scale: scales
                .iter()
                .map(|&ws| Requant::multiplier(in_p.scale, ws, out_p.scale))
                .collect(),
            zero: out_p.zero,
            lo,
            hi,
        },
        output: out_p,
    })
}

/// The int32 bias, checked to be in accumulator units: zero point 0 and scale the input scale
/// times the weight scale (up to the float32 rounding of that product, which TFLite stores).
fn bias_values(
    model: &Model<'_>,
    b: &Tensor,
    input_scale: f32,
    weight_scales: &[f32],
) -> Result<Vec<i32>> {
    let m = weight_scales.len();
    let q = quantization(b, ElementType::I32)?;
    let want = "int32 values with zero point 0 and scale = input scale x weight scale";
    let scales = per_channel(&q.scale, m, 0, q).ok_or_else(|| malformed(b, want))?;
    let zeros = per_channel(&q.zero, m, 0, q).ok_or_else(|| malformed(b, want))?;
    for o in 0..m {
        let product = f64::from(input_scale) * f64::from(weight_scales[o]);
        if zeros[o] != 0 || ((f64::from(scales[o]) - product) / product).abs() > 1e-5 {
            return Err(malformed(b, want));
        }
    }
    Ok(model
        .data(b, m, 4)?
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
