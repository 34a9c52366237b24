//! Writing a models directory's `manifest.json`, for the commands that add variants to one
//! (`quantize`, `fetch-zoo`): its entries read as JSON, new ones merged in, the file replaced
//! whole. The catalogue reads it typed (`engine::catalog::read_manifest`).

use std::path::Path;

use serde_json::Value;

use crate::engine::catalog;
use crate::error::{Error, Result};

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
    use serde_json::json;

    #[test]
    fn merge_replaces_by_name_or_file_and_keeps_the_rest() {
        let old = vec![
            json!({"name": "other", "file": "other.onnx"}),
            json!({"name": "renamed", "file": "mobilenet_v1_0.5_160_quant.tflite"}),
            json!({"name": "mobilenet_v1_0.5_160_quant", "file": "old.tflite"}),
        ];
        let new = json!({"name": "mobilenet_v1_0.5_160_quant",
                         "file": "mobilenet_v1_0.5_160_quant.tflite"});
        let merged = merge(old, vec![new.clone()]);
        assert_eq!(merged.len(), 2, "{merged:#?}");
        assert_eq!(merged[0]["name"], "other");
        assert_eq!(merged[1], new);
    }
}
