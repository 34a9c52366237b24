//! A loaded network of either precision, behind one interface: what the pool serves and the
//! engine threads run. A float graph runs on the float kernels ([`Model`]), a QDQ graph on the
//! integer kernels ([`QuantModel`]); callers need not know which.

use super::model::{Model, Nhwc};
use super::quant::QuantModel;
use super::team::Team;
use super::workspace::{Footprint, Workspace};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::import::{self, Imported};
use super::plan::{InputLayout, Plan};
use crate::error::{Error, Result};
use crate::kernels::KernelSet;
use crate::pipeline::preprocess::Normalization;

/// The number format of a network's weights and activations: the third knob beside alpha and
/// the resolution.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float.
    #[default]
    Fp32,
    /// 8-bit integers (uint8 activations, 8-bit weights, int32 accumulators).
    Int8,
}

impl Precision {
    /// Both, float first.
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Int8];

    /// `fp32` or `int8`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            // Exact, as the HTTP query's serde names are: one spelling everywhere.
            .find(|p| p.as_str() == s)
            .ok_or_else(|| Error::BadRequest(format!("unknown precision `{s}`: use fp32 or int8")))
    }
}

/// A network bound to one tier's kernels. Immutable and shareable between threads; each thread
/// brings its own [`Workspace`].
#[derive(Debug)]
pub enum Network {
    /// Float weights and activations.
    Float(Model),
    /// 8-bit weights and activations.
    Int8(QuantModel),
}

impl Network {
    /// Imports an ONNX file: a graph with `QuantizeLinear`/`DequantizeLinear` nodes becomes an
    /// 8-bit network, any other a float one.
    pub fn import(bytes: &[u8], kernels: KernelSet) -> Result<Network> {
        Ok(Network::new(import::import_any(bytes)?, kernels))
    }

    /// Binds an imported graph to `kernels`.
    pub fn new(imported: Imported, kernels: KernelSet) -> Network {
        match imported {
            Imported::Float(plan) => Network::Float(Model::new(plan, kernels)),
            Imported::Quantized(plan) => Network::Int8(QuantModel::new(plan, kernels)),
        }
    }

    /// A float network from its plan.
    pub fn float(plan: Plan, kernels: KernelSet) -> Network {
        Network::Float(Model::new(plan, kernels))
    }

    /// The float model, when it is one.
    pub fn as_float(&self) -> Option<&Model> {
        match self {
            Network::Float(m) => Some(m),
            Network::Int8(_) => None,
        }
    }

    /// Its number format.
    pub fn precision(&self) -> Precision {
        match self {
            Network::Float(_) => Precision::Fp32,
            Network::Int8(_) => Precision::Int8,
        }
    }

    /// The kernels it runs on.
    pub fn kernels(&self) -> &KernelSet {
        match self {
            Network::Float(m) => m.kernels(),
            Network::Int8(m) => m.kernels(),
        }
    }

    /// Input channels (3 for RGB).
    pub fn in_c(&self) -> usize {
        match self {
            Network::Float(m) => m.plan().in_c,
            Network::Int8(m) => m.plan().in_c,
        }
    }

    /// The layout the graph's input has (the engine takes NHWC regardless; tract needs it).
    pub fn input_layout(&self) -> InputLayout {
        match self {
            Network::Float(m) => m.plan().input_layout,
            Network::Int8(m) => m.plan().input_layout,
        }
    }

    /// The real value of one step of the output, for an 8-bit network (its logits are whole
    /// multiples of it).
    pub fn output_quantum(&self) -> Option<f32> {
        match self {
            Network::Float(_) => None,
            Network::Int8(m) => m.plan().layers.last().map(|l| l.output().scale),
        }
    }

    /// The input normalisation that hands a pixel-input model (a uint8 TFLite file) exactly
    /// its pixels: `(p - zero) x scale` of its input quantization. `None` for other models.
    pub fn pixel_normalization(&self) -> Option<Normalization> {
        match self {
            Network::Int8(m) if m.plan().pixel_input => {
                let q = m.plan().input;
                Some(Normalization {
                    scale: q.scale,
                    offset: -f32::from(q.zero) * q.scale,
                })
            }
            _ => None,
        }
    }

    /// The name of the graph tensor its outputs are: the logits for an 8-bit network (whose
    /// file may go on to a quantized softmax), the graph's output for a float one.
    pub fn output_name(&self) -> &str {
        match self {
            Network::Float(m) => &m.plan().output_name,
            Network::Int8(m) => &m.plan().output_name,
        }
    }

    /// Outputs per image.
    pub fn classes(&self) -> usize {
        match self {
            Network::Float(m) => m.plan().classes,
            Network::Int8(m) => m.plan().classes,
        }
    }

    /// Whether its outputs are probabilities (the graph ends with a softmax) rather than logits.
    pub fn softmax(&self) -> bool {
        match self {
            Network::Float(m) => m.plan().softmax,
            // The QDQ importer takes graphs that end on logits only.
            Network::Int8(_) => false,
        }
    }

    /// The input height and width the graph fixes, if it does.
    pub fn fixed_size(&self) -> [Option<usize>; 2] {
        match self {
            Network::Float(m) => [m.plan().height, m.plan().width],
            Network::Int8(m) => [m.plan().height, m.plan().width],
        }
    }

    /// Output channels of the first convolution (32 x alpha for a MobileNet).
    pub fn stem_width(&self) -> Option<usize> {
        match self {
            Network::Float(m) => m.plan().stem_width(),
            Network::Int8(m) => m.plan().stem_width(),
        }
    }

    /// Learned parameters.
    pub fn params(&self) -> usize {
        match self {
            Network::Float(m) => m.plan().params(),
            Network::Int8(m) => m.plan().params(),
        }
    }

    /// Multiply-adds for one image of `h x w`.
    pub fn mult_adds(&self, h: usize, w: usize) -> Result<u64> {
        match self {
            Network::Float(m) => m.plan().mult_adds(h, w),
            Network::Int8(m) => m.plan().mult_adds(h, w),
        }
    }

    /// The buffers a run on `batch` images of `h x w` needs.
    pub fn footprint(&self, batch: usize, h: usize, w: usize) -> Result<Footprint> {
        match self {
            Network::Float(m) => Ok(Footprint {
                values: m.activation_len(batch, h, w)?,
                ..Footprint::default()
            }),
            Network::Int8(m) => m.footprint(batch, h, w),
        }
    }

    /// Classifies `batch` NHWC images of `h x w` on the calling thread: `[batch][classes]`
    /// outputs.
    pub fn run(&self, input: &[f32], batch: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        match self {
            Network::Float(m) => m.run(input, batch, h, w),
            Network::Int8(m) => m.run(Nhwc::new(input, batch, h, w)),
        }
    }

    /// Like [`Network::run`], split across the threads of `team`, reusing `ws` and writing into
    /// `out`: runs that fit in `ws` do not allocate.
    pub fn run_on(
        &self,
        team: &Team,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        match self {
            Network::Float(m) => m.run_on(team, ws, images, out),
            Network::Int8(m) => m.run_on(team, ws, images, out),
        }
    }

    /// Like [`Network::run_on`] on the calling thread alone.
    pub fn run_with(&self, ws: &mut Workspace, images: Nhwc<'_>, out: &mut Vec<f32>) -> Result<()> {
        match self {
            Network::Float(m) => m.run_with(ws, images, out),
            Network::Int8(m) => m.run_with(ws, images, out),
        }
    }
}
