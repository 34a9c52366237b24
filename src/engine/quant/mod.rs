//! 8-bit quantized networks: their plan (imported from ONNX QDQ graphs by
//! `engine::import::qdq`) and how it runs on one tier's integer kernels. Float images go in and float
//! logits come out, as for a float model: the input is quantized by the graph's own
//! `QuantizeLinear`, and the last layer's uint8 output is dequantized.

pub mod plan;

use std::time::{Duration, Instant};

use self::plan::{QuantLayer, QuantPlan};
use super::model::Nhwc;
use super::plan::ConvKind;
use super::schedule::split_rows;
use super::team::{split, Crew, Team};
use super::workspace::{Footprint, Workspace};
use crate::error::{Error, Result};
use crate::kernels::int8::{generic, Int8Kernels, QuantLayer as Operands, Requant};
use crate::kernels::{GemmShape, KernelSet};

/// A quantized network bound to one tier's integer kernels, its weights packed for them.
#[derive(Debug, Clone)]
pub struct QuantModel {
    plan: QuantPlan,
    kernels: KernelSet,
    /// Each layer's weights in the tier's layout (empty for a pool).
    packed: Vec<Vec<i16>>,
}

impl QuantModel {
    /// Binds `plan` to `kernels`, packing every layer's weights for them.
    pub fn new(plan: QuantPlan, kernels: KernelSet) -> Self {
        let k = kernels.int8;
        let packed = plan
            .layers
            .iter()
            .map(|layer| match layer {
                QuantLayer::Conv(conv) => {
                    let s = conv.shape;
                    match s.kind {
                        ConvKind::Dense => {
                            (k.pack_gemm)(s.kh * s.kw * s.in_c, s.out_c, &conv.weights)
                        }
                        ConvKind::Pointwise => (k.pack_gemm)(s.in_c, s.out_c, &conv.weights),
                        ConvKind::Depthwise => {
                            (k.pack_depthwise)(s.kh * s.kw, s.out_c, &conv.weights)
                        }
                    }
                }
                QuantLayer::GlobalAvgPool { .. } => Vec::new(),
            })
            .collect();
        QuantModel {
            plan,
            kernels,
            packed,
        }
    }

    /// The kernels it runs on.
    pub fn kernels(&self) -> &KernelSet {
        &self.kernels
    }

    /// Its plan.
    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }

    /// The buffers a run on `batch` images of `h x w` needs (see [`Workspace::with_capacity`]).
    pub fn footprint(&self, batch: usize, h: usize, w: usize) -> Result<Footprint> {
        let overflow = || Error::BadInput(format!("{batch} images of {h}x{w} are too large"));
        let mut bytes = [batch, h, w, self.plan.in_c]
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(overflow)?;
        let mut patches = 0;
        let (mut h, mut w) = (h, w);
        for layer in &self.plan.layers {
            match layer {
                QuantLayer::Conv(conv) => {
                    let g = conv.shape.geometry(&conv.name, batch, h, w)?;
                    // Patches only where the stem runs as im2col and a GEMM.
                    if conv.shape.kind == ConvKind::Dense && self.kernels.int8.dense.is_none() {
                        let pixels = batch * g.out_h * g.out_w;
                        let patch = g.kh * g.kw * g.in_c;
                        patches = patches.max(pixels.checked_mul(patch).ok_or_else(overflow)?);
                    }
                    bytes = bytes.max(g.output_len());
                    (h, w) = (g.out_h, g.out_w);
                }
                QuantLayer::GlobalAvgPool { .. } => (h, w) = (1, 1),
            }
        }
        Ok(Footprint {
            values: 0,
            bytes,
            patches,
        })
    }

    /// Runs a batch of NHWC float images (as preprocessed for the float model) on the calling
    /// thread and returns `batch x classes` logits.
    pub fn run(&self, images: Nhwc) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.run_on_crew(&mut Workspace::new(), images, &mut out, None, &Crew::ALONE)?;
        Ok(out)
    }

    /// Like [`QuantModel::run`], reusing `ws` and writing the logits into `out`: runs that fit in
    /// `ws` do not allocate.
    pub fn run_with(&self, ws: &mut Workspace, images: Nhwc<'_>, out: &mut Vec<f32>) -> Result<()> {
        self.run_on_crew(ws, images, out, None, &Crew::ALONE)
    }

    /// Like [`QuantModel::run_with`], with every layer split across the threads of `team`.
    pub fn run_on(
        &self,
        team: &Team,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        team.install(|crew| self.run_on_crew(ws, images, out, None, crew))
    }

    /// Like [`QuantModel::run_on`], also returning the time each layer took (for `bench
    /// --layers`); the input's quantization counts in the first layer's.
    pub fn run_profiled(
        &self,
        team: &Team,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
    ) -> Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(self.plan.layers.len());
        team.install(|crew| self.run_on_crew(ws, images, out, Some(&mut times), crew))?;
        Ok(times)
    }

    fn run_on_crew(
        &self,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
        mut times: Option<&mut Vec<Duration>>,
        crew: &Crew<'_>,
    ) -> Result<()> {
        let mut started = times.as_ref().map(|_| Instant::now());
        let Nhwc { data, batch, h, w } = images;
        let plan = &self.plan;
        if data.len() != batch * h * w * plan.in_c || batch == 0 {
            return Err(Error::BadInput(format!(
                "expected {batch} images of {h}x{w}x{} values, got {} values",
                plan.in_c,
                data.len()
            )));
        }
        let k = self.kernels.int8;
        let Workspace {
            bytes,
            patches,
            pool,
            ..
        } = ws;
        // Borrowed, not taken out: a panicking kernel leaves the buffers in place.
        let (mut src, mut dst) = (&mut bytes.front, &mut bytes.back);
        src.resize(data.len(), 0);
        let pixel = w * plan.in_c;
        split(crew, batch * h, 1, pixel, src, &|rows, out| {
            let x = &data[rows.start * pixel..rows.end * pixel];
            (k.quantize)(x, plan.input.scale, plan.input.zero, out)
        });
        let (mut h, mut w, mut c) = (h, w, plan.in_c);
        for (layer, weights) in plan.layers.iter().zip(&self.packed) {
            match layer {
                QuantLayer::Conv(conv) => {
                    let g = conv.shape.geometry(&conv.name, batch, h, w)?;
                    if g.in_c != c {
                        return Err(Error::Internal(format!(
                            "layer `{}` expects {} channels, gets {c}",
                            conv.name, g.in_c
                        )));
                    }
                    let operands = Operands {
                        weights,
                        bias: &conv.bias,
                        input_zero: conv.input.zero,
                        requant: &conv.requant,
                    };
                    dst.resize(g.output_len(), 0);
                    let pixels = batch * g.out_h * g.out_w;
                    match conv.shape.kind {
                        ConvKind::Dense => {
                            let row_len = g.output_row_len();
                            if let Some(dense) = k.dense {
                                split_rows(
                                    crew,
                                    &g,
                                    src,
                                    dst,
                                    row_len,
                                    usize::MAX,
                                    &|g, x, out| dense(g, x, &operands, out),
                                );
                            } else {
                                // The stem as a GEMM on its patches.
                                let patch = g.kh * g.kw * g.in_c;
                                patches.resize(pixels * patch, 0);
                                let row_len = g.out_w * patch;
                                split_rows(
                                    crew,
                                    &g,
                                    src,
                                    patches,
                                    row_len,
                                    usize::MAX,
                                    &|g, x, out| generic::im2col(g, x, conv.input.zero, out),
                                );
                                split_gemm(crew, &k, pixels, patch, patches, &operands, dst);
                            }
                        }
                        ConvKind::Depthwise => {
                            let row_len = g.output_row_len();
                            split_rows(crew, &g, src, dst, row_len, usize::MAX, &|g, x, out| {
                                (k.depthwise)(g, x, &operands, out)
                            });
                        }
                        ConvKind::Pointwise => {
                            split_gemm(crew, &k, pixels, g.in_c, src, &operands, dst)
                        }
                    }
                    (h, w, c) = (g.out_h, g.out_w, g.out_c);
                }
                QuantLayer::GlobalAvgPool { input, output, .. } => {
                    let positions = h * w;
                    let multiplier = Requant::pool_multiplier(input.scale, output.scale, positions);
                    pool.scale.clear();
                    pool.scale.resize(c, multiplier);
                    (pool.zero, pool.lo, pool.hi) = (output.zero, 0, 255);
                    dst.resize(batch * c, 0);
                    generic::global_avg_pool(batch, positions, c, src, input.zero, pool, dst);
                    (h, w) = (1, 1);
                }
            }
            if let (Some(times), Some(started)) = (times.as_mut(), started.as_mut()) {
                let now = Instant::now();
                times.push(now - *started);
                *started = now;
            }
            std::mem::swap(&mut src, &mut dst);
        }
        let last = plan
            .layers
            .last()
            .ok_or_else(|| Error::Internal("a quantized plan without layers".into()))?
            .output();
        if h * w * c != plan.classes {
            return Err(Error::Internal(format!(
                "the network ends on {h}x{w}x{c} values, not {} classes",
                plan.classes
            )));
        }
        out.clear();
        out.extend(src.iter().map(|&q| last.dequantize(q)));
        Ok(())
    }
}

/// The GEMM `[m][k] x weights` of `operands` into `c`, split between the crew by bands of rows.
fn split_gemm(
    crew: &Crew<'_>,
    k: &Int8Kernels,
    m: usize,
    depth: usize,
    a: &[u8],
    operands: &Operands<'_>,
    c: &mut [u8],
) {
    let n = operands.bias.len();
    split(crew, m, k.gemm_rows, n, c, &|rows, out| {
        let shape = GemmShape {
            m: rows.len(),
            k: depth,
            n,
        };
        (k.gemm)(
            &shape,
            &a[rows.start * depth..rows.end * depth],
            operands,
            out,
        )
    });
}
