//! The same ONNX graph run by tract-onnx: an independent implementation that our engine's outputs
//! are checked against.

use std::collections::HashMap;
use std::path::PathBuf;

use tract_onnx::prelude::*;

use super::onnx::{self, pb};
use super::plan::InputLayout;
use super::pool::{ModelPool, Variant};
use crate::error::{Error, Result};

/// A tract model optimised for one input size, fed one image at a time (tract is much slower per
/// image at larger batches).
pub struct TractReference {
    plan: Arc<TypedRunnableModel>,
    layout: InputLayout,
    h: usize,
    w: usize,
    c: usize,
}

impl std::fmt::Debug for TractReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TractReference({}x{}x{}, {:?})",
            self.h, self.w, self.c, self.layout
        )
    }
}

fn tract_err(e: impl std::fmt::Display) -> Error {
    Error::Reference(format!("{e:#}"))
}

impl TractReference {
    /// Builds the reference for `model` with a fixed `1 x h x w x c` input in `layout`.
    pub fn new(
        model: &pb::ModelProto,
        layout: InputLayout,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<Self> {
        let shape: TVec<usize> = match layout {
            InputLayout::Nchw => tvec![1, c, h, w],
            InputLayout::Nhwc => tvec![1, h, w, c],
        };
        let plan = tract_onnx::onnx()
            .model_for_proto_model(model)
            .and_then(|m| m.with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape)))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(tract_err)?;
        Ok(TractReference {
            plan,
            layout,
            h,
            w,
            c,
        })
    }

    /// The reference for `variant` at its own resolution, from its decoded ONNX file.
    pub fn for_variant(proto: &pb::ModelProto, variant: &Variant) -> Result<Self> {
        let network = &variant.model;
        let r = variant.spec.resolution;
        Self::new(proto, network.input_layout(), r, r, network.in_c())
    }

    /// Runs one NHWC image and returns the graph's output row.
    pub fn run_nhwc(&self, image: &[f32]) -> Result<Vec<f32>> {
        let (h, w, c) = (self.h, self.w, self.c);
        if image.len() != h * w * c {
            return Err(Error::BadInput(format!(
                "expected {} values, got {}",
                h * w * c,
                image.len()
            )));
        }
        let tensor = match self.layout {
            InputLayout::Nhwc => Tensor::from_shape(&[1, h, w, c], image),
            InputLayout::Nchw => Tensor::from_shape(&[1, c, h, w], &nhwc_to_nchw(image, h, w, c)),
        }
        .map_err(tract_err)?;
        let out = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(tract_err)?;
        let view = out[0].to_plain_array_view::<f32>().map_err(tract_err)?;
        Ok(view.iter().copied().collect())
    }
}

/// The decoded ONNX files of a pool, each read once however many variants share it (the engine
/// keeps only its own plan, so the reference has to read the file again).
#[derive(Default)]
pub struct ProtoCache(HashMap<PathBuf, pb::ModelProto>);

impl ProtoCache {
    /// The decoded ONNX file of `variant`.
    pub fn get(&mut self, pool: &ModelPool, variant: &Variant) -> Result<&pb::ModelProto> {
        let file = &variant.spec.file;
        if !self.0.contains_key(file) {
            let path = pool.dir().join(file);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            self.0.insert(file.clone(), onnx::decode_model(&bytes)?);
        }
        Ok(&self.0[file])
    }
}

/// `[h][w][c]` -> `[c][h][w]`.
pub fn nhwc_to_nchw(image: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; image.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                out[(ch * h + y) * w + x] = image[(y * w + x) * c + ch];
            }
        }
    }
    out
}
