//! The default model compiled into the binary: Google's uint8 MobileNet v1 0.25 at 128 px, as
//! published (`models/embedded/`, licence and provenance in `models/NOTICE`). Served when no
//! models directory is configured and the default one holds no model, so that a fresh clone
//! classifies with no download.

use std::path::PathBuf;

use super::catalog::{variant_name, VariantSpec, INT8_SUFFIX};
use super::network::Precision;
use crate::pipeline::preprocess::Normalization;

/// The embedded file's name (as in Google's release archive).
pub const FILE: &str = "mobilenet_v1_0.25_128_quant.tflite";

/// Its sha256, as `models/NOTICE` and the zoo's `tflite/SHA256SUMS` give it.
pub const SHA256: &str = "3799e7cdb3ec44beacaf47ef5c884111c919e51bb50b34ac836244b08d4b953b";

/// The model file's bytes.
pub static MODEL: &[u8] =
    include_bytes!("../../models/embedded/mobilenet_v1_0.25_128_quant.tflite");

/// The 1000 class names, one per line, class 0 first.
static CLASS_NAMES: &str = include_str!("../../models/embedded/imagenet_classes.txt");

/// The class names as the pool keeps them.
pub fn class_names() -> Vec<String> {
    CLASS_NAMES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// What the embedded variant is: the release's facts, as a manifest entry would give them.
pub fn spec() -> VariantSpec {
    VariantSpec {
        name: format!("{}{INT8_SUFFIX}", variant_name(0.25, 128)),
        alpha: 0.25,
        resolution: 128,
        file: PathBuf::from(FILE),
        num_classes: 1001,
        label_offset: 1,
        // The uint8 input is the pixel itself: (p - 128) / 128 quantizes back to p.
        normalization: Normalization {
            scale: 1.0 / 128.0,
            offset: -1.0,
        },
        mult_adds: Some(13_570_304),
        params: Some(467_593),
        weights: Some("uint8-qat".into()),
        precision: Precision::Int8,
        // TF-slim research/slim/nets/mobilenet_v1.md, MobileNet_v1_0.25_128_quant.
        published_top1: Some(39.5),
        published_top5: Some(64.4),
        sha256: Some(SHA256.into()),
    }
}
