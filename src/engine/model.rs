//! Runs a [`Plan`] on a batch of NHWC images with one [`KernelSet`].

use std::time::{Duration, Instant};

use super::plan::{ConvKind, ConvLayer, Layer, Plan};
use super::schedule::{split_gemm, split_rows};
use super::team::{split_pair, Crew, Team};
use super::workspace::Workspace;
use crate::error::{Error, Result};
use crate::kernels::{AlignedVec, ConvGeometry, GemmShape, KernelSet};

/// Called after each layer of a probed run with the layer's index, its output and the time it
/// took.
type LayerProbe<'p> = &'p mut dyn FnMut(usize, &[f32], Duration);

/// A network bound to the kernels that run it. Immutable and shareable between threads; each
/// thread brings its own [`Workspace`].
#[derive(Debug)]
pub struct Model {
    plan: Plan,
    kernels: KernelSet,
    /// Per layer, its weights as the kernels read them, starting on a cache line: GEMM-shaped
    /// ones (pointwise, dense and FC layers) in the tier's packed layout, depthwise ones as they
    /// are; empty for the other layers.
    packed: Vec<AlignedVec>,
}

/// A batch of NHWC images as a run reads them: the model's input, or the activations between
/// two layers. One value, so that the methods of a run pass what they read as one argument and
/// the buffer they write as another; the channels are not in it, being the model's or the
/// layer's to know.
#[derive(Debug, Clone, Copy)]
pub struct Nhwc<'a> {
    /// The values, image after image, row after row, each pixel's channels together.
    pub data: &'a [f32],
    /// How many images `data` holds.
    pub batch: usize,
    /// Rows per image.
    pub h: usize,
    /// Columns per image.
    pub w: usize,
}

impl<'a> Nhwc<'a> {
    /// `batch` images of `h x w` in `data`. Not checked here: only a run knows the channels, and
    /// it checks its input before reading it.
    pub fn new(data: &'a [f32], batch: usize, h: usize, w: usize) -> Self {
        Nhwc { data, batch, h, w }
    }
}

impl Model {
    /// Binds `plan` to `kernels`, prepacking the GEMM weights into the tier's layout and copying
    /// the depthwise weights into a buffer that starts on a cache line.
    pub fn new(plan: Plan, kernels: KernelSet) -> Self {
        let packed = plan
            .layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv(c) if c.kind == ConvKind::Pointwise => {
                    (kernels.pack_gemm_b)(c.in_c, c.out_c, &c.weights)
                }
                Layer::Conv(c) if c.kind == ConvKind::Dense => {
                    (kernels.pack_gemm_b)(c.kh * c.kw * c.in_c, c.out_c, &c.weights)
                }
                Layer::Conv(c) if c.kind == ConvKind::Depthwise => {
                    AlignedVec::from_slice(&c.weights)
                }
                Layer::Fc(f) => (kernels.pack_gemm_b)(f.in_c, f.out_c, &f.weights),
                _ => AlignedVec::new(),
            })
            .collect();
        Model {
            plan,
            kernels,
            packed,
        }
    }

    /// The network description.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The kernels in use.
    pub fn kernels(&self) -> &KernelSet {
        &self.kernels
    }

    /// The largest activation (input included), in values, of a run on `batch` images of `h x w`:
    /// the size each [`Workspace`] buffer needs.
    pub fn activation_len(&self, batch: usize, h: usize, w: usize) -> Result<usize> {
        let overflow = || Error::BadInput(format!("{batch} images of {h}x{w} are too large"));
        let mut largest = [batch, h, w, self.plan.in_c]
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(overflow)?;
        let (mut h, mut w, mut c) = (h, w, self.plan.in_c);
        for layer in &self.plan.layers {
            let len = match layer {
                Layer::Conv(conv) => {
                    let g = conv.geometry(batch, h, w)?;
                    (h, w, c) = (g.out_h, g.out_w, g.out_c);
                    g.output_len()
                }
                Layer::GlobalAvgPool { .. } => {
                    (h, w) = (1, 1);
                    batch * c
                }
                Layer::Fc(fc) => {
                    c = fc.out_c;
                    batch * h * w * c
                }
            };
            largest = largest.max(len);
        }
        Ok(largest)
    }

    /// Classifies `batch` NHWC images of `h x w` and returns `[batch][classes]` outputs
    /// (probabilities when the graph ends with a softmax, else logits).
    pub fn run(&self, input: &[f32], batch: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        let images = Nhwc::new(input, batch, h, w);
        self.run_with(&mut Workspace::new(), images, &mut out)?;
        Ok(out)
    }

    /// Like [`Model::run`], reusing `ws` and writing into `out` (resized to `batch * classes`).
    pub fn run_with(&self, ws: &mut Workspace, images: Nhwc<'_>, out: &mut Vec<f32>) -> Result<()> {
        self.run_timed(ws, images, out, None, &Crew::ALONE)
    }

    /// Like [`Model::run_with`], with every layer split across the threads of `team`.
    pub fn run_on(
        &self,
        team: &Team,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        team.install(|crew| self.run_timed(ws, images, out, None, crew))
    }

    /// Like [`Model::run_on`], also returning the time each layer took (for `bench --layers`).
    pub fn run_profiled(
        &self,
        team: &Team,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
    ) -> Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(self.plan.layers.len());
        let mut probe = |_: usize, _: &[f32], took: Duration| times.push(took);
        team.install(|crew| self.run_timed(ws, images, out, Some(&mut probe), crew))?;
        Ok(times)
    }

    /// Like [`Model::run_with`], one layer at a time (no fusion), handing `observe` each layer's
    /// index and output (the whole batch, NHWC, after the fused activation): what post-training
    /// quantization calibrates its ranges on.
    pub fn run_observed(
        &self,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
        observe: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        let mut probe = |layer: usize, output: &[f32], _: Duration| observe(layer, output);
        self.run_timed(ws, images, out, Some(&mut probe), &Crew::ALONE)
    }

    fn run_timed(
        &self,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
        probe: Option<LayerProbe<'_>>,
        crew: &Crew<'_>,
    ) -> Result<()> {
        self.check_input(images)?;
        let result = self.run_steps(ws, images, out, probe, crew);
        // Layers alternate between the two buffers, so the next run may need the larger one's
        // size in the other: grow both now, once, and steady-state runs never allocate.
        let capacity = ws.floats.front.capacity().max(ws.floats.back.capacity());
        ws.floats.front.reserve_total(capacity);
        ws.floats.back.reserve_total(capacity);
        result
    }

    fn run_steps(
        &self,
        ws: &mut Workspace,
        images: Nhwc<'_>,
        out: &mut Vec<f32>,
        mut probe: Option<LayerProbe<'_>>,
        crew: &Crew<'_>,
    ) -> Result<()> {
        let Nhwc {
            data: input,
            batch,
            h,
            w,
        } = images;
        // Borrowed, not taken out: a panicking kernel leaves the workspace (and the memory it
        // made resident) in place for the next run.
        let (mut src, mut dst) = (&mut ws.floats.front, &mut ws.floats.back);
        let mut shape = (h, w, self.plan.in_c);
        let mut i = 0;
        // Probed runs see each layer alone over the whole batch: no fusion, no prefix.
        let profiled = probe.is_some();
        // Image by image only where each part gets as many images, and its two scratch images
        // fit in the workspace's share of one buffer (`activation_len` holds `batch` images).
        let parts = crew.parts();
        if !profiled && batch > 1 && batch.is_multiple_of(parts) && batch >= 2 * parts {
            if let Some(prefix) = self.per_image_prefix(h, w)? {
                self.run_prefix(&prefix, images, crew, src, dst)?;
                (i, shape) = (prefix.end, prefix.out);
                std::mem::swap(&mut src, &mut dst);
            }
        }
        while i < self.plan.layers.len() {
            let started = probe.as_ref().map(|_| Instant::now());
            let step = self.plan_step(i, shape, !profiled)?;
            resize(dst, step.out_len(batch));
            // The first layer reads the caller's input in place: no copy into the workspace.
            let x: &[f32] = if i == 0 { input } else { src };
            let x = Nhwc::new(x, batch, shape.0, shape.1);
            self.run_step(i, &step, crew, x, shape.2, dst)?;
            if let (Some(probe), Some(started)) = (probe.as_mut(), started) {
                probe(i, dst, started.elapsed());
            }
            (i, shape) = (i + step.layers, step.out);
            std::mem::swap(&mut src, &mut dst);
        }
        out.clear();
        out.extend_from_slice(if i == 0 { input } else { src });
        if self.plan.softmax {
            for row in out.chunks_exact_mut(shape.2) {
                crate::pipeline::postprocess::softmax_in_place(row);
            }
        }
        Ok(())
    }

    /// The step that starts at layer `i` on inputs of `(h, w, c)`, fusing a depthwise with the
    /// pointwise after it where `fuse` allows and [`fuses`] says so.
    fn plan_step(&self, i: usize, (h, w, c): (usize, usize, usize), fuse: bool) -> Result<Step> {
        let layers = &self.plan.layers;
        let one = |out| Ok(Step { layers: 1, out });
        match &layers[i] {
            Layer::Conv(conv) => {
                let g = conv.geometry(1, h, w)?;
                if let (true, Some(Layer::Conv(pw))) = (fuse, layers.get(i + 1)) {
                    if fuses(&g, conv.kind, pw) {
                        return Ok(Step {
                            layers: 2,
                            out: (g.out_h, g.out_w, pw.out_c),
                        });
                    }
                }
                one((g.out_h, g.out_w, g.out_c))
            }
            Layer::GlobalAvgPool { window } => match *window {
                Some((wh, ww)) if (wh, ww) != (h, w) => Err(Error::BadInput(format!(
                    "the graph averages a fixed {wh}x{ww} window but the feature map is \
                     {h}x{w}: use the input size the model was exported for"
                ))),
                _ => one((1, 1, c)),
            },
            Layer::Fc(fc) => one((h, w, fc.out_c)),
        }
    }

    /// Runs `step`, which starts at layer `i`, on the images `x` of `c` channels, split across
    /// `crew`, into `out` (of [`Step::out_len`] values).
    fn run_step(
        &self,
        i: usize,
        step: &Step,
        crew: &Crew<'_>,
        x: Nhwc<'_>,
        c: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let Nhwc {
            data: x,
            batch,
            h,
            w,
        } = x;
        let k = &self.kernels;
        let packed = &self.packed[i];
        match &self.plan.layers[i] {
            Layer::Conv(conv) => {
                let g = conv.geometry(batch, h, w)?;
                let next = self.plan.layers.get(i + 1).zip(self.packed.get(i + 1));
                if let (2, Some((Layer::Conv(pw), pw_packed))) = (step.layers, next) {
                    // Rows of the depthwise output per band: about FUSED_BAND_VALUES.
                    let band = (FUSED_BAND_VALUES / g.output_row_len().max(1)).max(1);
                    let row_len = g.out_w * pw.out_c;
                    split_rows(crew, &g, x, out, row_len, band, &|g, x, out| {
                        fused_band(k, g, x, (conv, packed), (pw, pw_packed), out)
                    });
                    return Ok(());
                }
                let row_len = g.output_row_len();
                match conv.kind {
                    ConvKind::Dense => {
                        split_rows(crew, &g, x, out, row_len, usize::MAX, &|g, x, out| {
                            (k.dense_conv)(g, x, packed, &conv.bias, conv.act, out)
                        })
                    }
                    ConvKind::Depthwise => {
                        split_rows(crew, &g, x, out, row_len, usize::MAX, &|g, x, out| {
                            (k.depthwise)(g, x, packed, &conv.bias, conv.act, out)
                        })
                    }
                    ConvKind::Pointwise => {
                        let s = GemmShape {
                            m: batch * h * w,
                            k: conv.in_c,
                            n: conv.out_c,
                        };
                        split_gemm(crew, k, &s, x, (packed, &conv.bias, conv.act), out)
                    }
                }
            }
            Layer::GlobalAvgPool { .. } => (k.global_avg_pool)(batch, h * w, c, x, out),
            Layer::Fc(fc) => {
                let s = GemmShape {
                    m: batch * h * w,
                    k: fc.in_c,
                    n: fc.out_c,
                };
                split_gemm(crew, k, &s, x, (packed, &fc.bias, fc.act), out);
            }
        }
        Ok(())
    }

    /// The layers a batch runs image by image on `h x w` inputs, if any: see [`PerImagePrefix`].
    fn per_image_prefix(&self, h: usize, w: usize) -> Result<Option<PerImagePrefix>> {
        let layers = &self.plan.layers;
        let first = (h, w, self.plan.in_c);
        // The map size of the last convolution's output: where the batched tail starts.
        let (mut i, mut shape, mut last_map) = (0, first, None);
        while i < layers.len() {
            let step = self.plan_step(i, shape, true)?;
            if matches!(layers[i], Layer::Conv(_)) {
                last_map = Some((step.out.0, step.out.1));
            }
            (i, shape) = (i + step.layers, step.out);
        }
        let Some(last_map) = last_map else {
            return Ok(None);
        };
        let (mut end, mut shape, mut scratch_len) = (0, first, 0);
        while end < layers.len() {
            let step = self.plan_step(end, shape, true)?;
            if !matches!(layers[end], Layer::Conv(_)) || (step.out.0, step.out.1) == last_map {
                break;
            }
            if end > 0 {
                scratch_len = scratch_len.max(shape.0 * shape.1 * shape.2);
            }
            (end, shape) = (end + step.layers, step.out);
        }
        Ok(
            (end > 0 && shape.0 * shape.1 * shape.2 > 0).then_some(PerImagePrefix {
                end,
                scratch_len,
                out: shape,
            }),
        )
    }

    /// Runs the layers of `prefix` on the `images`, each part of the crew on as many whole
    /// images (their batch is a multiple of the parts), one image and one layer at a time on its
    /// own thread: the images' outputs into `out`, the activations in between in the part's
    /// share of `scratch`.
    fn run_prefix(
        &self,
        prefix: &PerImagePrefix,
        images: Nhwc<'_>,
        crew: &Crew<'_>,
        scratch: &mut AlignedVec,
        out: &mut AlignedVec,
    ) -> Result<()> {
        let Nhwc {
            data: input,
            batch,
            h,
            w,
        } = images;
        let first = (h, w, self.plan.in_c);
        let in_len = first.0 * first.1 * first.2;
        let out_len = prefix.out.0 * prefix.out.1 * prefix.out.2;
        let (parts, part_scratch) = (crew.parts(), 2 * prefix.scratch_len);
        let per_part = batch / parts;
        resize(out, batch * out_len);
        resize(scratch, parts * part_scratch);
        let failed = std::sync::Mutex::new(Ok(()));
        split_pair(
            crew,
            parts,
            1,
            (out, per_part * out_len),
            (scratch, part_scratch),
            &|part, out, scratch| {
                let (a, b) = scratch.split_at_mut(prefix.scratch_len);
                let images = part.start * per_part..part.end * per_part;
                for (image, image_out) in images.zip(out.chunks_exact_mut(out_len)) {
                    let image_in = &input[image * in_len..][..in_len];
                    let (mut held, mut free) = (&mut *a, &mut *b);
                    let (mut i, mut shape, mut held_len) = (0, first, 0);
                    while i < prefix.end {
                        let step = match self.plan_step(i, shape, true) {
                            Ok(step) => step,
                            Err(e) => {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Err(e);
                                return;
                            }
                        };
                        let x: &[f32] = if i == 0 { image_in } else { &held[..held_len] };
                        let x = Nhwc::new(x, 1, shape.0, shape.1);
                        let len = step.out_len(1);
                        let target: &mut [f32] = if i + step.layers < prefix.end {
                            &mut free[..len]
                        } else {
                            &mut *image_out
                        };
                        if let Err(e) = self.run_step(i, &step, &Crew::ALONE, x, shape.2, target) {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Err(e);
                            return;
                        }
                        std::mem::swap(&mut held, &mut free);
                        (i, shape, held_len) = (i + step.layers, step.out, len);
                    }
                }
            },
        );
        failed.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn check_input(&self, images: Nhwc<'_>) -> Result<()> {
        let Nhwc {
            data: input,
            batch,
            h,
            w,
        } = images;
        let p = &self.plan;
        if batch == 0 {
            return Err(Error::BadInput("empty batch".into()));
        }
        for (fixed, actual, what) in [(p.height, h, "height"), (p.width, w, "width")] {
            if fixed.is_some_and(|f| f != actual) {
                return Err(Error::BadInput(format!(
                    "input {what} {actual} but the model is fixed at {}",
                    fixed.unwrap_or_default()
                )));
            }
        }
        let expected = [h, w, p.in_c]
            .iter()
            .try_fold(batch, |n, &d| n.checked_mul(d));
        if expected != Some(input.len()) {
            return Err(Error::BadInput(format!(
                "expected {batch}x{h}x{w}x{} values, got {}",
                p.in_c,
                input.len()
            )));
        }
        Ok(())
    }
}

/// One step of a run: a layer, or a depthwise fused with the pointwise after it.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// The layers it runs: 1, or 2 when fused.
    layers: usize,
    /// Its output per image: (rows, columns, channels).
    out: (usize, usize, usize),
}

impl Step {
    /// Its output values for `batch` images.
    fn out_len(&self, batch: usize) -> usize {
        batch * self.out.0 * self.out.1 * self.out.2
    }
}

/// The first layers of the network, which a batch of several images runs one image at a time,
/// each layer still split across the crew, before the rest runs on the whole batch: every
/// layer before the first that outputs the last convolution's map size (MobileNet's 7x7 stage
/// at 224). Early on, activations outweigh weights, and a batch's (25 MB at 112x112x64 for 8
/// images) would spill from L2 and L3 between a layer and the next, while one image's stay; at
/// batch 8 on one Zen 3 core, the depthwise layers took 3.2 ms per image against 1.1 at batch
/// 1 (`bench --layers --batch 1,8`). The last stage has the smallest maps and the largest
/// weights (1024 x 1024 at 7x7): there a batch shares each pass over the weights between its
/// images, and its pointwise layers ran 0.75x as long per image as alone.
#[derive(Debug, Clone, Copy)]
struct PerImagePrefix {
    /// The first layer after it.
    end: usize,
    /// The largest activation inside it, per image.
    scratch_len: usize,
    /// Its output per image: (rows, columns, channels).
    out: (usize, usize, usize),
}

/// Values of depthwise output a fused band holds: it stays in L2 until the pointwise reads it.
const FUSED_BAND_VALUES: usize = 32 * 1024;

/// Whether a convolution of `kind` with geometry `g` runs fused with the pointwise `next`: a
/// depthwise feeding it, with more output pixels than the pointwise has output channels. There
/// its output (the activations) outweighs the pointwise's weights, and keeping it in L2 saves
/// memory traffic; where the weights dominate, bands would re-read them once per band instead.
fn fuses(g: &ConvGeometry, kind: ConvKind, next: &ConvLayer) -> bool {
    kind == ConvKind::Depthwise
        && next.kind == ConvKind::Pointwise
        && next.in_c == g.out_c
        && g.out_h * g.out_w > next.out_c
}

thread_local! {
    /// Per-thread scratch for a fused band's depthwise output; it grows to the largest band.
    static FUSED_BAND: std::cell::Cell<AlignedVec> = const { std::cell::Cell::new(AlignedVec::new()) };
}

/// One band of a fused depthwise + pointwise pair, each with the weights the kernels read: the
/// depthwise rows of `g` into the thread's scratch, then the pointwise from there into `out`.
fn fused_band(
    k: &KernelSet,
    g: &ConvGeometry,
    input: &[f32],
    (dw, dw_weights): (&ConvLayer, &[f32]),
    (pw, pw_packed): (&ConvLayer, &[f32]),
    out: &mut [f32],
) {
    let mut scratch = FUSED_BAND.take();
    resize(&mut scratch, g.output_len());
    (k.depthwise)(g, input, dw_weights, &dw.bias, dw.act, &mut scratch);
    let s = GemmShape {
        m: g.batch * g.out_h * g.out_w,
        k: g.out_c,
        n: pw.out_c,
    };
    (k.gemm)(&s, &scratch, pw_packed, &pw.bias, pw.act, out);
    FUSED_BAND.set(scratch);
}

/// Sets the length of an activation buffer that a kernel then overwrites whole; capacity is
/// kept, so this allocates only while the workspace is still growing.
fn resize(buf: &mut AlignedVec, len: usize) {
    buf.resize_for_overwrite(len);
}
