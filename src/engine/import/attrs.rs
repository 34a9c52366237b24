//! What every importer reads the same way: the graph's image input and output, the refusal
//! that names a node, constant inputs, and a convolution's strides and padding. A leaf of the
//! import module, so that the float and the QDQ walks share it without naming each other.

use std::collections::HashMap;

use crate::engine::onnx::{self, node_label, pb, Attrs, Constant};
use crate::engine::plan::Padding;
use crate::error::{Error, Result};

/// The error for a node the engine cannot run: names the node, its op and why.
pub(super) fn unsupported(node: &pb::NodeProto, reason: String) -> Error {
    Error::Unsupported {
        node: node_label(node),
        op: node.op_type.clone(),
        reason,
    }
}

/// Largest padding accepted on one side; real networks pad by a few pixels, and the bound keeps
/// size arithmetic far from overflow on hostile files.
pub(super) const MAX_PAD: i64 = 1024;

/// Whether a 1x1 kernel with this padding reads exactly its own pixel (SAME pads a 1x1 kernel by
/// nothing).
pub(super) fn pads_nothing_1x1(padding: Padding) -> bool {
    matches!(
        padding,
        Padding::SameUpper
            | Padding::SameLower
            | Padding::Explicit {
                top: 0,
                left: 0,
                bottom: 0,
                right: 0
            }
    )
}

/// ONNX conv padding: `auto_pad` or explicit `pads` `[top, left, bottom, right]`.
pub(super) fn conv_padding(node: &pb::NodeProto) -> Result<Padding> {
    let a = Attrs(node);
    match a.string("auto_pad").unwrap_or_default().as_str() {
        "SAME_UPPER" => return Ok(Padding::SameUpper),
        "SAME_LOWER" => return Ok(Padding::SameLower),
        "" | "NOTSET" | "VALID" => {}
        other => return Err(unsupported(node, format!("auto_pad `{other}`"))),
    }
    let pads = a.ints("pads").unwrap_or_else(|| vec![0; 4]);
    match pads[..] {
        [t, l, b, r] if pads.iter().all(|p| (0..=MAX_PAD).contains(p)) => Ok(Padding::Explicit {
            top: t as usize,
            left: l as usize,
            bottom: b as usize,
            right: r as usize,
        }),
        _ => Err(unsupported(node, format!("pads {pads:?}"))),
    }
}

/// Input `index` of `node` (its `what`), which must be one of `consts`.
pub(super) fn constant<'c>(
    consts: &'c HashMap<String, Constant>,
    node: &pb::NodeProto,
    index: usize,
    what: &str,
) -> Result<&'c Constant> {
    let name = node
        .input
        .get(index)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| unsupported(node, format!("missing {what} input")))?;
    consts.get(name).ok_or_else(|| {
        unsupported(
            node,
            format!("{what} `{name}` must be a constant (initializer)"),
        )
    })
}

/// Input `index` of `node` if it has one, which must then be one of `consts`.
pub(super) fn optional_constant<'c>(
    consts: &'c HashMap<String, Constant>,
    node: &pb::NodeProto,
    index: usize,
) -> Result<Option<&'c Constant>> {
    match node.input.get(index).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(name) => consts
            .get(name)
            .map(Some)
            .ok_or_else(|| unsupported(node, format!("input `{name}` must be a constant"))),
    }
}

/// A Conv's strides `(rows, columns)`; refuses dilation.
pub(super) fn conv_strides(node: &pb::NodeProto) -> Result<(usize, usize)> {
    let a = Attrs(node);
    if a.ints("dilations")
        .is_some_and(|d| d.iter().any(|&x| x != 1))
    {
        return Err(unsupported(
            node,
            "dilated convolutions are not supported".into(),
        ));
    }
    let strides = a.ints("strides").unwrap_or_else(|| vec![1, 1]);
    match strides[..] {
        [sh, sw] if sh >= 1 && sw >= 1 => Ok((sh as usize, sw as usize)),
        _ => Err(unsupported(node, format!("strides {strides:?}"))),
    }
}

/// The graph's one non-constant input (the image batch) and its 4 dimensions (unknown ones
/// `None`).
pub(super) fn image_input<'g>(
    graph: &'g pb::GraphProto,
    consts: &HashMap<String, Constant>,
) -> Result<(&'g pb::ValueInfoProto, Vec<Option<usize>>)> {
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !consts.contains_key(&i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(Error::MalformedModel(format!(
            "expected exactly one graph input (the image), found {}",
            inputs.len()
        )));
    };
    let dims = onnx::value_dims(input).unwrap_or_else(|| vec![None; 4]);
    if dims.len() != 4 {
        return Err(Error::MalformedModel(format!(
            "input `{}` has rank {}, expected a 4-D image batch",
            input.name,
            dims.len()
        )));
    }
    Ok((input, dims))
}

/// The graph's output, which must be `current`, the end of the chain of layers just walked.
pub(super) fn chain_output<'g>(
    graph: &'g pb::GraphProto,
    current: &str,
) -> Result<&'g pb::ValueInfoProto> {
    let output = graph
        .output
        .first()
        .ok_or_else(|| Error::MalformedModel("the graph has no output".into()))?;
    if output.name != current {
        return Err(Error::MalformedModel(format!(
            "the graph output `{}` is not the end of the layer chain (`{current}`)",
            output.name
        )));
    }
    Ok(output)
}
