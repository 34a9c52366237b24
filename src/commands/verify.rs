//! The `verify` command: our engine against tract-onnx on the same ONNX files.

use std::path::Path;

use crate::commands::dataset::image_files;
use crate::engine::crosscheck::{check_variant, image_inputs, random_inputs};
use crate::engine::pool::ModelPool;
use crate::engine::reference::ProtoCache;
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
    let mut protos = ProtoCache::default();
    let (mut worst, mut agree, mut total, mut all_ok) = (0.0f32, 0, 0, true);
    for v in pool.variants() {
        let inputs = match &files {
            Some(f) => image_inputs(f, v)?,
            None => random_inputs(count, v.input_len(), 0x5EED),
        };
        let c = check_variant(v, protos.get(pool, v)?, &inputs)?;
        println!(
            "{:<24} inputs {:>3}  max|diff| {:.3e}  rel {:.3e}  top-1 {}/{}  {}",
            c.name,
            c.inputs,
            c.max_abs_diff,
            c.max_rel_diff,
            c.top1_agree,
            c.inputs,
            if c.passed() { "ok" } else { "FAILED" }
        );
        worst = worst.max(c.max_rel_diff);
        agree += c.top1_agree;
        total += c.inputs;
        all_ok &= c.passed();
    }
    println!(
        "verified {} variants: max rel diff {worst:.3e}, top-1 agreement {agree}/{total}",
        pool.variants().len()
    );
    Ok(all_ok)
}
