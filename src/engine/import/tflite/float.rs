//! The steps of a float32 TFLite model as a float [`Plan`].

use super::schema::{ElementType, Model, Tensor};
use super::walk::{activation_bounds, pack, refused, weight_len, Step, Steps};
use crate::engine::plan::{ConvLayer, FcLayer, InputLayout, Layer, Plan};
use crate::error::Result;
use crate::kernels::Clamp;

/// Lowers the checked chain of a float model.
pub(super) fn lower(model: &Model<'_>, s: &Steps<'_>) -> Result<Plan> {
    let mut layers = Vec::with_capacity(s.steps.len());
    let mut softmax = false;
    for step in &s.steps {
        match step {
            Step::Conv {
                shape,
                activation,
                weights,
                bias,
                output,
                classifier,
                ..
            } => {
                let (lo, hi) = activation_bounds(*activation, &output.name, "CONV_2D")?;
                let raw = floats(model, weights, weight_len(shape))?;
                let bias = match bias {
                    Some(b) => floats(model, b, shape.out_c)?,
                    None => vec![0.0; shape.out_c],
                };
                let weights = pack(shape, &raw);
                let act = Clamp { lo, hi };
                layers.push(if *classifier {
                    Layer::Fc(FcLayer {
                        name: output.name.clone(),
                        in_c: shape.in_c,
                        out_c: shape.out_c,
                        weights,
                        bias,
                        act,
                    })
                } else {
                    Layer::Conv(ConvLayer {
                        name: output.name.clone(),
                        kind: shape.kind,
                        in_c: shape.in_c,
                        out_c: shape.out_c,
                        kh: shape.kh,
                        kw: shape.kw,
                        stride_h: shape.stride_h,
                        stride_w: shape.stride_w,
                        padding: shape.padding,
                        weights,
                        bias,
                        act,
                    })
                });
            }
            Step::Pool { window, .. } => layers.push(Layer::GlobalAvgPool {
                window: Some(*window),
            }),
            Step::Flatten { .. } => {}
            Step::Softmax => {
                softmax = true;
            }
        }
    }
    let input = model.tensor(s.input)?;
    let output = model.tensor(*model.outputs.first().unwrap_or(&-1))?;
    Ok(Plan {
        input_name: input.name.clone(),
        input_layout: InputLayout::Nhwc,
        in_c: s.channels,
        height: Some(s.height),
        width: Some(s.width),
        layers,
        output_name: output.name.clone(),
        classes: s.classes,
        softmax,
    })
}

/// The `len` float32 values of a constant tensor.
fn floats(model: &Model<'_>, t: &Tensor, len: usize) -> Result<Vec<f32>> {
    if t.element != ElementType::F32 {
        return Err(refused(
            &t.name,
            "CONV_2D",
            format!("{:?} weights in a float model", t.element),
        ));
    }
    Ok(model
        .data(t, len, 4)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
