//! Our engine against tract on the same model files (ONNX or TFLite): the comparison, its
//! tolerance, and the inputs it runs (deterministic random tensors, or real images).

use std::path::PathBuf;

use super::pool::Variant;
use super::reference::{ModelFile, Reference};
use crate::error::{Error, Result};
use crate::pipeline::decode::{decode, DecodeLimits};
use crate::pipeline::postprocess::argmax;
use crate::pipeline::preprocess::preprocess;

/// Largest accepted `max |ours - tract|`, relative to the reference's output range per input
/// (float variants).
pub const REL_TOLERANCE: f32 = 1e-4;

/// How close, in output quanta, tract's logit of our top-1 class must be to tract's best where
/// the two top-1 answers differ on an 8-bit variant. Two correct integer implementations may
/// round a tie differently at one layer and the difference spreads, so they agree on 95-99 % of
/// top-1 answers, not all; but each logit is then at most a quantum off, so a differing answer
/// is a near tie (two quanta at most) in both. A disagreement beyond that is an error.
pub const INT8_TIE_QUANTA: f32 = 2.0;

/// Least share of logits within one output quantum of tract's on an 8-bit variant. Measured on
/// 100 val1300 images per zoo variant: 99.6-99.99 %, but 99.4 % on 1.0_160 and 97.6 % on 1.0_128
/// (max 4 quanta), the 224-trained file run on 5x5 and 4x4 final maps. Its pool has equal input
/// and output scales, so a mean over 16 positions is an exact tie whenever the sum is an odd
/// multiple of 8: we round those half to even, as `QuantizeLinear` defines, and tract does
/// otherwise. A wrong zero point, scale, bias or layout moves most logits by many quanta.
pub const INT8_WITHIN_ONE_QUANTUM: f64 = 0.95;

/// The largest difference of any one logit, in output quanta, on an 8-bit variant. Rounding
/// differences travel a few quanta at most (4 at worst in the measurements above); a wrong
/// weight moves its own channel's logits by tens or hundreds while the share within one quantum
/// stays high (1 KB of one file's classifier weights changed: 175 quanta, 99.5 % within one).
pub const INT8_MAX_QUANTA: f32 = 8.0;

/// Our engine against tract on one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantCheck {
    /// Variant name.
    pub name: String,
    /// Inputs compared.
    pub inputs: usize,
    /// Largest absolute output difference.
    pub max_abs_diff: f32,
    /// Largest `|diff| / (max - min of the reference output)` over the inputs.
    pub max_rel_diff: f32,
    /// Inputs whose top-1 class agrees.
    pub top1_agree: usize,
    /// For an 8-bit variant, how its logits compare in output quanta.
    pub quanta: Option<QuantaCheck>,
}

/// An 8-bit variant's logits against tract's, counted in quanta of the output quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantaCheck {
    /// The real value of one output step.
    pub quantum: f32,
    /// Logits compared.
    pub logits: usize,
    /// Logits equal to tract's.
    pub identical: usize,
    /// Logits at most one quantum from tract's.
    pub within_one: usize,
    /// The largest difference, in quanta.
    pub max_quanta: f32,
    /// Inputs whose top-1 answers differ by more than a near tie ([`INT8_TIE_QUANTA`]).
    pub top1_beyond_tie: usize,
}

impl VariantCheck {
    /// A float variant: within tolerance and every top-1 equal. An 8-bit variant: every top-1
    /// answer equal up to a near tie, at least [`INT8_WITHIN_ONE_QUANTUM`] of the logits within
    /// one quantum, and none beyond [`INT8_MAX_QUANTA`].
    pub fn passed(&self) -> bool {
        match &self.quanta {
            None => self.max_rel_diff <= REL_TOLERANCE && self.top1_agree == self.inputs,
            Some(q) => {
                q.top1_beyond_tie == 0
                    && q.within_one as f64 >= INT8_WITHIN_ONE_QUANTUM * q.logits as f64
                    && q.max_quanta <= INT8_MAX_QUANTA
            }
        }
    }
}

/// Runs `inputs` (NHWC images at the variant's resolution) through both engines; ours takes
/// them as one batch, tract one at a time.
pub fn check_variant(
    variant: &Variant,
    file: &ModelFile,
    inputs: &[Vec<f32>],
) -> Result<VariantCheck> {
    compare(variant, inputs, &reference_outputs(variant, file, inputs)?)
}

/// tract's outputs for `inputs` on the model file of `variant`, one image at a time. They
/// depend on the graph only, not on our kernel tier: a test of every tier computes them once.
pub fn reference_outputs(
    variant: &Variant,
    file: &ModelFile,
    inputs: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>> {
    let reference = Reference::for_variant(file, variant)?;
    inputs.iter().map(|i| reference.run_nhwc(i)).collect()
}

/// Our engine's outputs for `inputs`, as one batch, against `expected` (tract's, from
/// [`reference_outputs`]).
pub fn compare(
    variant: &Variant,
    inputs: &[Vec<f32>],
    expected: &[Vec<f32>],
) -> Result<VariantCheck> {
    let r = variant.spec.resolution;
    let batch: Vec<f32> = inputs.concat();
    let ours = variant.model.run(&batch, inputs.len(), r, r)?;
    let classes = variant.model.classes();
    let mut check = VariantCheck {
        name: variant.spec.name.clone(),
        inputs: inputs.len(),
        max_abs_diff: 0.0,
        max_rel_diff: 0.0,
        top1_agree: 0,
        quanta: variant.model.output_quantum().map(|quantum| QuantaCheck {
            quantum,
            logits: 0,
            identical: 0,
            within_one: 0,
            max_quanta: 0.0,
            top1_beyond_tie: 0,
        }),
    };
    if expected.len() != inputs.len() {
        return Err(Error::Reference(format!(
            "{} reference outputs for {} inputs",
            expected.len(),
            inputs.len()
        )));
    }
    for (i, theirs) in expected.iter().enumerate() {
        let mine = &ours[i * classes..(i + 1) * classes];
        if theirs.len() != classes {
            return Err(Error::Reference(format!(
                "tract returned {} outputs, expected {classes}",
                theirs.len()
            )));
        }
        let diff = mine
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let lo = theirs.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = theirs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let rel = if diff.is_nan() {
            f32::INFINITY
        } else {
            diff / (hi - lo).max(f32::MIN_POSITIVE)
        };
        check.max_abs_diff = check.max_abs_diff.max(diff);
        check.max_rel_diff = check.max_rel_diff.max(rel);
        let (ours_top, their_top) = (argmax(mine), argmax(theirs));
        check.top1_agree += usize::from(ours_top == their_top);
        if let Some(q) = &mut check.quanta {
            let gap = (theirs[their_top] - theirs[ours_top]) / q.quantum;
            q.top1_beyond_tie += usize::from(gap.round() > INT8_TIE_QUANTA);
            for (a, b) in mine.iter().zip(theirs) {
                // Both are whole multiples of the quantum: round away the float noise.
                let steps = ((a - b).abs() / q.quantum).round();
                q.logits += 1;
                q.identical += usize::from(steps == 0.0);
                q.within_one += usize::from(steps <= 1.0);
                q.max_quanta = q.max_quanta.max(steps);
            }
        }
    }
    Ok(check)
}

/// Deterministic pseudo-random input images in [-1, 1] (SplitMix64), the same on every machine.
pub fn random_inputs(count: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        })
        .collect()
}

/// Decoded and preprocessed images for `variant`.
pub fn image_inputs(files: &[PathBuf], variant: &Variant) -> Result<Vec<Vec<f32>>> {
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
            let img = decode(&bytes, &DecodeLimits::default())?;
            preprocess(
                &img,
                variant.spec.resolution,
                variant.spec.normalization,
                variant.model.kernels().tier,
            )
        })
        .collect()
}
