//! What every importer reads off a node the same way: the refusal that names it, and a
//! convolution's padding. A leaf of the import module, so that the float and the QDQ walks share
//! it without naming each other.

use crate::engine::onnx::{node_label, pb, Attrs};
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
