//! The same model file run by tract: an independent implementation that our engine's outputs
//! are checked against. tract-onnx runs ONNX files ([`TractReference`]), tract-tflite TFLite
//! ones ([`tflite::TfliteReference`]); [`Reference`] is either.

pub mod tflite;

use std::collections::HashMap;
use std::path::PathBuf;

use tract_onnx::prelude::*;

use self::tflite::TfliteReference;
use super::embedded;
use super::import::is_tflite;
use super::network::Precision;
use super::onnx::{self, pb};
use super::plan::InputLayout;
use super::pool::{ModelPool, ModelSource, Variant};
use crate::error::{Error, Result};

/// A model file as the reference engines read it.
#[derive(Debug, Clone)]
pub enum ModelFile {
    /// A decoded ONNX model (boxed: the protobuf struct is large beside a byte vector).
    Onnx(Box<pb::ModelProto>),
    /// A TFLite file's bytes.
    Tflite(Vec<u8>),
}

impl ModelFile {
    /// A TFLite file, or else an ONNX model to decode.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        if is_tflite(&bytes) {
            Ok(ModelFile::Tflite(bytes))
        } else {
            onnx::decode_model(&bytes).map(|m| ModelFile::Onnx(Box::new(m)))
        }
    }
}

/// The independent engine for one variant's file.
#[derive(Debug)]
pub enum Reference {
    /// tract-onnx.
    Onnx(TractReference),
    /// tract-tflite.
    Tflite(TfliteReference),
}

impl Reference {
    /// The reference for `variant` at its own resolution, from its model file.
    pub fn for_variant(file: &ModelFile, variant: &Variant) -> Result<Self> {
        match file {
            ModelFile::Onnx(proto) => {
                TractReference::for_variant(proto, variant).map(Reference::Onnx)
            }
            ModelFile::Tflite(bytes) => {
                // An 8-bit network stops at the logits, where the file goes on to its softmax.
                let output = (variant.model.precision() == Precision::Int8)
                    .then(|| variant.model.output_name());
                TfliteReference::new(bytes, output).map(Reference::Tflite)
            }
        }
    }

    /// Runs one NHWC image and returns the output row.
    pub fn run_nhwc(&self, image: &[f32]) -> Result<Vec<f32>> {
        match self {
            Reference::Onnx(r) => r.run_nhwc(image),
            Reference::Tflite(r) => r.run_nhwc(image),
        }
    }
}

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

/// The model files of a pool, each read once however many variants share it (the engine keeps
/// only its own plan, so the reference has to read the file again).
#[derive(Default)]
pub struct ModelFiles(HashMap<PathBuf, ModelFile>);

impl ModelFiles {
    /// The model file of `variant` (the binary's own bytes for the embedded model).
    pub fn get(&mut self, pool: &ModelPool, variant: &Variant) -> Result<&ModelFile> {
        let file = &variant.spec.file;
        if !self.0.contains_key(file) {
            let bytes = match variant.source {
                ModelSource::Embedded => embedded::MODEL.to_vec(),
                ModelSource::File => {
                    let path = pool.dir().join(file);
                    std::fs::read(&path).map_err(|e| Error::io(&path, e))?
                }
            };
            self.0.insert(file.clone(), ModelFile::from_bytes(bytes)?);
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
