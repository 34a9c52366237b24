//! The destination's `manifest.json`: one entry per fetched `.tflite`, in the format the
//! catalogue reads (`engine::catalog::read_manifest`), merged into what is already there.

use std::path::Path;

use serde_json::{json, Value};

use super::grid::ZooFile;
use super::published::published;
use crate::engine::catalog;
use crate::engine::network::Precision;
use crate::error::{Error, Result};

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

/// The entries of `dir/manifest.json`; none when there is no manifest. Fails on one that is not
/// a JSON array, before anything is downloaded.
pub fn read(dir: &Path) -> Result<Vec<Value>> {
    let path = dir.join(catalog::MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::Catalog(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `old` with `new` in: an old entry of the same name or the same file as a new one is replaced
/// (in its place; a second such old entry is dropped), the other old ones are kept, and the rest
/// of `new` is appended.
pub fn merge(old: Vec<Value>, new: Vec<Value>) -> Vec<Value> {
    let same = |a: &Value, b: &Value| {
        ["name", "file"]
            .iter()
            .any(|k| a.get(k).is_some() && a.get(k) == b.get(k))
    };
    let mut placed = vec![false; new.len()];
    let mut merged = Vec::with_capacity(old.len() + new.len());
    for entry in old {
        match new.iter().position(|n| same(n, &entry)) {
            Some(i) if !placed[i] => {
                merged.push(new[i].clone());
                placed[i] = true;
            }
            Some(_) => {}
            None => merged.push(entry),
        }
    }
    merged.extend(
        new.into_iter()
            .zip(placed)
            .filter(|(_, placed)| !placed)
            .map(|(n, _)| n),
    );
    merged
}

/// Writes `entries` as `dir/manifest.json`, through a temporary file renamed over it, so that a
/// reader never sees half a manifest.
pub fn write(dir: &Path, entries: &[Value]) -> Result<()> {
    let path = dir.join(catalog::MANIFEST);
    let tmp = dir.join(format!(
        ".{}.{}.part",
        catalog::MANIFEST,
        std::process::id()
    ));
    let text = serde_json::to_string_pretty(entries).map_err(|e| Error::Catalog(e.to_string()))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_by_name_or_file_and_keeps_the_rest() {
        let f = ZooFile {
            alpha: 0.5,
            resolution: 160,
            precision: Precision::Int8,
        };
        let old = vec![
            json!({"name": "other", "file": "other.onnx"}),
            json!({"name": "renamed", "file": "mobilenet_v1_0.5_160_quant.tflite"}),
            json!({"name": "mobilenet_v1_0.5_160_quant", "file": "old.tflite"}),
        ];
        let new = entry(&f, &"a".repeat(64), "http://x/y.tgz");
        let merged = merge(old, vec![new.clone()]);
        assert_eq!(merged.len(), 2, "{merged:#?}");
        assert_eq!(merged[0]["name"], "other");
        assert_eq!(merged[1], new);
        assert_eq!(new["published_top1"], 57.7);
        assert_eq!(new["preprocessing"]["scale"], 0.0078125);
    }
}
