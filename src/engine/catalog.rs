//! Which variants a models directory offers: read from its `manifest.json`, or derived from the
//! ONNX graphs themselves when there is no manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::network::{Network, Precision};
use crate::error::{Error, Result};
use crate::pipeline::preprocess::Normalization;

/// File name of the manifest inside a models directory.
pub const MANIFEST: &str = "manifest.json";
/// File name of the class names (one per line, class 0 first) inside a models directory.
pub const CLASS_NAMES: &str = "imagenet_classes.txt";
/// File name of the expected ONNX digests (`sha256sum` output) inside a models directory.
pub const CHECKSUMS: &str = "SHA256SUMS";

/// Everything known about one servable variant before its weights are loaded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantSpec {
    /// `mobilenet_v1_<alpha>_<resolution>`.
    pub name: String,
    /// Width multiplier.
    pub alpha: f32,
    /// Input height and width.
    pub resolution: usize,
    /// The ONNX file, relative to the models directory.
    pub file: PathBuf,
    /// Number of model outputs (1001 for TF-slim models with a background class).
    pub num_classes: usize,
    /// Output index of ImageNet class 0 (1 when index 0 is "background").
    pub label_offset: usize,
    /// Input normalisation.
    #[serde(skip)]
    pub normalization: Normalization,
    /// Multiply-adds per image, when known.
    pub mult_adds: Option<u64>,
    /// Learned parameters, when known.
    pub params: Option<u64>,
    /// `float` or `dequantized-uint8-qat`, when known.
    pub weights: Option<String>,
    /// The number format it runs in.
    pub precision: Precision,
    /// Published ImageNet top-1 (%) of the corresponding TF-slim model.
    pub published_top1: Option<f32>,
    /// Published ImageNet top-5 (%).
    pub published_top5: Option<f32>,
    /// The expected sha256 of `file` (lowercase hex), when the manifest gives it.
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ManifestEntry {
    name: String,
    alpha: f32,
    resolution: usize,
    file: PathBuf,
    num_classes: usize,
    #[serde(default)]
    label_offset: usize,
    #[serde(default)]
    preprocessing: Option<ManifestPreprocessing>,
    #[serde(default)]
    mult_adds: Option<u64>,
    #[serde(default)]
    params: Option<u64>,
    #[serde(default)]
    weights: Option<String>,
    #[serde(default)]
    precision: Precision,
    #[serde(default)]
    published_top1: Option<f32>,
    #[serde(default)]
    published_top5: Option<f32>,
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ManifestPreprocessing {
    scale: f32,
    offset: f32,
    #[serde(default)]
    layout: Option<String>,
    #[serde(default)]
    color: Option<String>,
}

/// Reads `dir/manifest.json`; `Ok(None)` when there is none.
pub fn read_manifest(dir: &Path) -> Result<Option<Vec<VariantSpec>>> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let entries: Vec<ManifestEntry> = serde_json::from_str(&text)
        .map_err(|e| Error::Catalog(format!("{}: {e}", path.display())))?;
    let mut specs = Vec::with_capacity(entries.len());
    for e in entries {
        let pre = e.preprocessing;
        if let Some(p) = &pre {
            if p.color.as_deref().is_some_and(|c| c != "RGB") {
                return Err(Error::Catalog(format!(
                    "{}: only RGB input is supported",
                    e.name
                )));
            }
            if p.layout
                .as_deref()
                .is_some_and(|l| l != "NCHW" && l != "NHWC")
            {
                return Err(Error::Catalog(format!(
                    "{}: unknown layout {:?}",
                    e.name, p.layout
                )));
            }
        }
        if e.label_offset > 1 || e.num_classes < 1000 + e.label_offset {
            return Err(Error::Catalog(format!(
                "{}: {} classes with label_offset {} do not cover the 1000 ImageNet classes",
                e.name, e.num_classes, e.label_offset
            )));
        }
        let sha256 = e
            .sha256
            .as_deref()
            .map(parse_digest)
            .transpose()
            .map_err(|why| Error::Catalog(format!("{}: sha256: {why}", e.name)))?;
        specs.push(VariantSpec {
            name: e.name,
            alpha: e.alpha,
            resolution: e.resolution,
            file: e.file,
            num_classes: e.num_classes,
            label_offset: e.label_offset,
            normalization: pre
                .map(|p| Normalization {
                    scale: p.scale,
                    offset: p.offset,
                })
                .unwrap_or_default(),
            mult_adds: e.mult_adds,
            params: e.params,
            weights: e.weights,
            precision: e.precision,
            published_top1: e.published_top1,
            published_top5: e.published_top5,
            sha256,
        });
    }
    Ok(Some(specs))
}

/// The variants of the manifests one level down (`dir/*/manifest.json`, in name order), their
/// files relative to `dir`: how one models directory serves several zoos, such as the float
/// grid at the top and the 8-bit grid in `int8/`. Subdirectories without a manifest are left
/// alone.
pub fn read_sub_manifests(dir: &Path) -> Result<Vec<VariantSpec>> {
    let mut specs = Vec::new();
    for sub in subdirectories(dir)? {
        let Some(found) = read_manifest(&dir.join(&sub))? else {
            continue;
        };
        specs.extend(found.into_iter().map(|mut spec| {
            spec.file = sub.join(&spec.file);
            spec
        }));
    }
    Ok(specs)
}

/// The expected digests of `dir/SHA256SUMS` and of each `dir/*/SHA256SUMS`, keyed by the file's
/// path relative to `dir`.
pub fn read_all_checksums(dir: &Path) -> Result<HashMap<PathBuf, String>> {
    let mut sums = read_checksums(dir)?;
    for sub in subdirectories(dir)? {
        for (file, digest) in read_checksums(&dir.join(&sub))? {
            sums.insert(sub.join(file), digest);
        }
    }
    Ok(sums)
}

/// The names of the directories directly inside `dir` (symlinks followed), sorted.
fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut subs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| PathBuf::from(e.file_name()))
        .collect();
    subs.sort();
    Ok(subs)
}

/// A sha256 in hex, lowercased.
fn parse_digest(hex: &str) -> std::result::Result<String, String> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!("`{hex}` is not 64 hex digits"))
    }
}

/// Reads `dir/SHA256SUMS` (lines of `<hex>  <file>`, as `sha256sum` writes them): the expected
/// digest of each file named. Empty when there is none.
pub fn read_checksums(dir: &Path) -> Result<HashMap<PathBuf, String>> {
    let path = dir.join(CHECKSUMS);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut sums = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| Error::Catalog(format!("{}:{}: {why}", path.display(), i + 1));
        let (hex, file) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `<sha256>  <file>`".into()))?;
        // `sha256sum` marks binary mode with `*` before the name.
        let file = file.trim_start().trim_start_matches('*');
        sums.insert(PathBuf::from(file), parse_digest(hex).map_err(bad)?);
    }
    Ok(sums)
}

/// What TF-slim appends to the name of a quantized variant: `mobilenet_v1_1.0_224_quant`.
pub const INT8_SUFFIX: &str = "_quant";

/// The TF-slim name of a variant: `mobilenet_v1_1.0_224`, `mobilenet_v1_0.25_128`, ...
pub fn variant_name(alpha: f32, resolution: usize) -> String {
    format!("mobilenet_v1_{}_{resolution}", format_alpha(alpha))
}

/// `1.0`, `0.75`, `0.5`, `0.25`: the alpha spelling of TF-slim names.
pub fn format_alpha(alpha: f32) -> String {
    if alpha.fract() == 0.0 {
        format!("{alpha:.1}")
    } else {
        format!("{alpha}")
    }
}

/// Describes a manifest-less model file from its graph: alpha from the stem width / 32, the
/// resolution from a fixed input shape (else `resolution`), the class count from the output, the
/// standard [-1, 1] normalisation (or the one that gives a pixel-input model its pixels), and
/// `label_offset` 1 when there are 1001 classes.
pub fn derive_spec(
    file: &Path,
    network: &Network,
    resolution: Option<usize>,
) -> Result<VariantSpec> {
    let stem = network
        .stem_width()
        .ok_or_else(|| Error::Catalog(format!("{}: no convolution", file.display())))?;
    let alpha = stem as f32 / 32.0;
    let resolution = match (network.fixed_size(), resolution) {
        ([Some(h), Some(w)], _) if h == w => h,
        ([Some(h), Some(w)], _) => {
            return Err(Error::Catalog(format!(
                "{}: non-square input {h}x{w}",
                file.display()
            )))
        }
        (_, Some(r)) => r,
        _ => {
            return Err(Error::Catalog(format!(
                "{}: the input size is symbolic and there is no manifest; pass --resolution",
                file.display()
            )))
        }
    };
    let classes = network.classes();
    let label_offset = usize::from(classes == 1001);
    if classes < 1000 + label_offset {
        return Err(Error::Catalog(format!(
            "{}: {classes} outputs cannot be ImageNet classes",
            file.display(),
        )));
    }
    let precision = network.precision();
    let name = match precision {
        Precision::Fp32 => variant_name(alpha, resolution),
        Precision::Int8 => format!("{}{INT8_SUFFIX}", variant_name(alpha, resolution)),
    };
    Ok(VariantSpec {
        name,
        alpha,
        resolution,
        file: file.file_name().map(PathBuf::from).unwrap_or_default(),
        num_classes: classes,
        label_offset,
        normalization: network.pixel_normalization().unwrap_or_default(),
        mult_adds: network.mult_adds(resolution, resolution).ok(),
        params: Some(network.params() as u64),
        weights: None,
        precision,
        published_top1: None,
        published_top5: None,
        sha256: None,
    })
}

/// Whether `dir` offers any model: a manifest, a model file, or a subfolder with a manifest. A
/// missing directory offers none.
pub fn holds_models(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    Ok(dir.join(MANIFEST).is_file()
        || !model_files(dir)?.is_empty()
        || subdirectories(dir)?
            .iter()
            .any(|sub| dir.join(sub).join(MANIFEST).is_file()))
}

/// The model files (ONNX and TFLite) directly inside `dir`, sorted by name.
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_with_extensions(dir, &["onnx", "tflite"])
}

/// Files directly inside `dir` whose extension is one of `extensions` (lower case; matched
/// case-insensitively), sorted by name.
pub fn files_with_extensions(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| {
                extensions.contains(&x.to_string_lossy().to_ascii_lowercase().as_str())
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The class names of `dir/imagenet_classes.txt` (one per line, class 0 first); `None` when
/// there is no such file.
pub fn class_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join(CLASS_NAMES);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            text.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_tf_slim() {
        assert_eq!(variant_name(1.0, 224), "mobilenet_v1_1.0_224");
        assert_eq!(variant_name(0.75, 192), "mobilenet_v1_0.75_192");
        assert_eq!(variant_name(0.5, 160), "mobilenet_v1_0.5_160");
        assert_eq!(variant_name(0.25, 128), "mobilenet_v1_0.25_128");
    }
}
