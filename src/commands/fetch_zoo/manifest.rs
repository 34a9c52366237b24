//! The destination's `manifest.json`: one entry per fetched `.tflite`, in the format the
//! catalogue reads (`engine::catalog::read_manifest`), merged into what is already there by
//! `commands::manifest_file`.

use serde_json::{json, Value};

use super::grid::ZooFile;
use super::published::published;
use crate::engine::network::Precision;

/// What `provenance.origin` says of every file.
pub const ORIGIN: &str = "Google mobilenet_v1_2018_08_02 release";

/// The entry of `file`, fetched from `url`, whose bytes have digest `sha256`.
pub fn entry(file: &ZooFile, sha256: &str, url: &str) -> Value {
    // The float files take x / 127.5 - 1; the quant files' uint8 input has scale 1/128 and zero
    // point 128, so (x - 128) / 128 gives the same value they quantize back to the pixel.
    let (scale, weights) = match file.precision {
        Precision::Fp32 => (1.0 / 127.5, "float"),
        Precision::Int8 => (1.0 / 128.0, "uint8-qat"),
    };
    let mut entry = json!({
        "name": file.name(),
        "alpha": file.alpha,
        "resolution": file.resolution,
        "file": file.tflite_name(),
        "num_classes": 1001,
        "label_offset": 1,
        "preprocessing": {
            "scale": scale,
            "offset": -1.0,
            "layout": "NHWC",
            "color": "RGB",
        },
        "weights": weights,
        "precision": file.precision.as_str(),
        "sha256": sha256,
        // The catalogue ignores fields it does not know (no deny_unknown_fields).
        "provenance": {
            "source": url,
            "origin": ORIGIN,
        },
    });
    if let (Some(p), Some(map)) = (
        published(file.alpha, file.resolution, file.precision),
        entry.as_object_mut(),
    ) {
        map.insert("params".into(), p.params.into());
        map.insert("mult_adds".into(), p.mult_adds.into());
        map.insert("published_top1".into(), p.top1.into());
        map.insert("published_top5".into(), p.top5.into());
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_carries_the_published_figures_and_the_preprocessing() {
        let f = ZooFile {
            alpha: 0.5,
            resolution: 160,
            precision: Precision::Int8,
        };
        let new = entry(&f, &"a".repeat(64), "http://x/y.tgz");
        assert_eq!(new["file"], "mobilenet_v1_0.5_160_quant.tflite");
        assert_eq!(new["published_top1"], 57.7);
        assert_eq!(new["preprocessing"]["scale"], 0.0078125);
    }
}
