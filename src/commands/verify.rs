//! The `verify` command: our engine against tract on the same model files (tract-onnx for ONNX
//! files, tract-tflite for TFLite ones).

use std::path::Path;

use crate::commands::dataset::image_files;
use crate::engine::crosscheck::{check_variant, image_inputs, random_inputs};
use crate::engine::pool::ModelPool;
use crate::engine::reference::ModelFiles;
use crate::error::{Error, Result};

/// The `verify` command: prints one line per variant and the summary; returns whether all passed.
pub fn run(pool: &ModelPool, images: Option<&Path>, count: usize) -> Result<bool> {
    let files = match images {
        Some(dir) => {
            let mut f = image_files(dir)?;
            f.truncate(count);
            if f.is_empty() {
                return Err(Error::Catalog(format!("no images in {}", dir.display())));
            }
            Some(f)
        }
        None => None,
    };
    let mut files_read = ModelFiles::default();
    let (mut worst, mut agree, mut total, mut all_ok) = (0.0f32, 0, 0, true);
    let (mut logits, mut within_one, mut worst_quanta) = (0, 0, 0.0f32);
    for v in pool.variants() {
        let inputs = match &files {
            Some(f) => image_inputs(f, v)?,
            None => random_inputs(count, v.input_len(), 0x5EED),
        };
        let c = check_variant(v, files_read.get(pool, v)?, &inputs)?;
        let verdict = if c.passed() { "ok" } else { "FAILED" };
        match &c.quanta {
            None => {
                println!(
                    "{:<28} inputs {:>3}  max|diff| {:.3e}  rel {:.3e}  top-1 {}/{}  {verdict}",
                    c.name, c.inputs, c.max_abs_diff, c.max_rel_diff, c.top1_agree, c.inputs,
                );
                worst = worst.max(c.max_rel_diff);
            }
            Some(q) => {
                println!(
                    "{:<28} inputs {:>3}  logits identical {:.1}%  within 1 quantum {:.2}%  \
                     max {} quanta  top-1 {}/{} (beyond a tie: {})  {verdict}",
                    c.name,
                    c.inputs,
                    100.0 * q.identical as f64 / q.logits.max(1) as f64,
                    100.0 * q.within_one as f64 / q.logits.max(1) as f64,
                    q.max_quanta,
                    c.top1_agree,
                    c.inputs,
                    q.top1_beyond_tie,
                );
                logits += q.logits;
                within_one += q.within_one;
                worst_quanta = worst_quanta.max(q.max_quanta);
            }
        }
        agree += c.top1_agree;
        total += c.inputs;
        all_ok &= c.passed();
    }
    let int8 = if logits > 0 {
        format!(
            ", int8 logits within 1 quantum {:.2}% (max {worst_quanta})",
            100.0 * within_one as f64 / logits as f64
        )
    } else {
        String::new()
    };
    println!(
        "verified {} variants: max rel diff {worst:.3e}, top-1 agreement {agree}/{total}{int8}",
        pool.variants().len()
    );
    Ok(all_ok)
}
