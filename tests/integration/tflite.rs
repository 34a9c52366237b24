//! The TFLite importer on Google's release files (`tflite/` of the zoo, byte for byte as
//! published): every file imports; the uint8 files hold the same integers as the zoo's QDQ
//! renderings of them, so the engine gives identical logits on both; the float file matches the
//! ONNX rendering of the same weights; a refused operator is named; a truncated or corrupted
//! file is an error, never a panic; one directory may mix ONNX and TFLite files.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::common::{imagenet_dir, zoo_dir};
use mobilenet_serve::commands::dataset::image_files;
use mobilenet_serve::engine::crosscheck::{check_variant, image_inputs};
use mobilenet_serve::engine::import::{import_any, Imported};
use mobilenet_serve::engine::network::{Network, Precision};
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::engine::reference::ModelFile;
use mobilenet_serve::kernels::{KernelSet, Tier, TierChoice};
use mobilenet_serve::pipeline::decode::{decode, DecodeLimits};
use mobilenet_serve::pipeline::preprocess::{preprocess, Normalization};

fn best() -> KernelSet {
    KernelSet::select(TierChoice::Auto).unwrap()
}

fn tflite_dir() -> PathBuf {
    zoo_dir().join("tflite")
}

/// The release files, sorted; there are 13.
fn tflite_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(tflite_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tflite"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 13, "the zoo's tflite/ holds 13 release files");
    files
}

/// The first `n` sample images, preprocessed to `rho` with `norm`, concatenated (NHWC).
fn images(n: usize, rho: usize, norm: Normalization) -> Vec<f32> {
    let dir = imagenet_dir();
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    labels
        .lines()
        .filter(|l| !l.starts_with('#'))
        .take(n)
        .flat_map(|l| {
            let file = l.split('\t').next().unwrap();
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let rgb = decode(&bytes, &DecodeLimits::default()).unwrap();
            preprocess(&rgb, rho, norm, Tier::Scalar).unwrap()
        })
        .collect()
}

fn load(path: &Path) -> Network {
    let bytes = std::fs::read(path).unwrap();
    Network::import(&bytes, best()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn quantized_files_give_the_logits_of_their_qdq_renderings() {
    let pixels = Normalization {
        scale: 1.0 / 128.0,
        offset: -1.0,
    };
    let n = 3;
    for file in tflite_files() {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        if !stem.ends_with("_quant") {
            continue;
        }
        let tflite = load(&file);
        assert_eq!(tflite.precision(), Precision::Int8, "{stem}");
        assert_eq!(tflite.classes(), 1001, "{stem}");
        assert_eq!(tflite.pixel_normalization(), Some(pixels), "{stem}");
        let [Some(rho), Some(_)] = tflite.fixed_size() else {
            panic!("{stem}: the file fixes its input size")
        };
        let onnx = load(&zoo_dir().join("int8").join(format!("{stem}.onnx")));
        let input = images(n, rho, pixels);
        let ours = tflite.run(&input, n, rho, rho).unwrap();
        let twin = onnx.run(&input, n, rho, rho).unwrap();
        assert_eq!(ours.len(), n * 1001);
        let differ = ours.iter().zip(&twin).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "{stem}: {differ} logits differ from the QDQ rendering's"
        );
    }
}

#[test]
fn the_float_file_matches_the_onnx_rendering_of_its_weights() {
    let file = tflite_dir().join("mobilenet_v1_0.25_224.tflite");
    let tflite = load(&file);
    assert_eq!(tflite.precision(), Precision::Fp32);
    assert!(tflite.softmax(), "the float file ends with its softmax");
    let onnx = load(&zoo_dir().join("mobilenet_v1_0.25_224.onnx"));
    let n = 3;
    let input = images(n, 224, Normalization::default());
    let probs = tflite.run(&input, n, 224, 224).unwrap();
    let logits = onnx.run(&input, n, 224, 224).unwrap();
    for (p, l) in probs.chunks(1001).zip(logits.chunks(1001)) {
        let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = l.iter().map(|v| (v - max).exp()).sum();
        for (a, v) in p.iter().zip(l) {
            let b = (v - max).exp() / sum;
            assert!(
                (a - b).abs() < 1e-5,
                "probability {a} against softmax(onnx) {b}"
            );
        }
    }
}

/// The offset of field `id` of the table at `table`, if present (FlatBuffers layout).
fn field(buf: &[u8], table: usize, id: usize) -> Option<usize> {
    let vtable = (table as i64
        - i32::from_le_bytes(buf[table..table + 4].try_into().unwrap()) as i64)
        as usize;
    let len = u16::from_le_bytes([buf[vtable], buf[vtable + 1]]) as usize;
    let slot = 4 + 2 * id;
    (slot + 2 <= len)
        .then(|| u16::from_le_bytes([buf[vtable + slot], buf[vtable + slot + 1]]) as usize)
        .filter(|&o| o != 0)
        .map(|o| table + o)
}

#[test]
fn an_operator_outside_the_set_is_refused_by_name() {
    let mut bytes = std::fs::read(tflite_dir().join("mobilenet_v1_0.25_128_quant.tflite")).unwrap();
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    // Model.operator_codes (field 1) -> every OperatorCode's builtin code (field 0) -> MAX_POOL_2D.
    let root = u32_at(&bytes, 0);
    let codes_at = field(&bytes, root, 1).unwrap();
    let codes = codes_at + u32_at(&bytes, codes_at);
    let mut patched = 0;
    for i in 0..u32_at(&bytes, codes) {
        let elem = codes + 4 + 4 * i;
        let table = elem + u32_at(&bytes, elem);
        if let Some(at) = field(&bytes, table, 0) {
            if bytes[at] == 3 {
                bytes[at] = 17; // CONV_2D -> MAX_POOL_2D
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 1, "the file has one CONV_2D operator code");
    let err = import_any(&bytes).unwrap_err().to_string();
    assert!(err.contains("MAX_POOL_2D"), "{err}");
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn truncated_or_corrupted_files_are_errors_not_panics() {
    let bytes = std::fs::read(tflite_dir().join("mobilenet_v1_0.25_128_quant.tflite")).unwrap();
    let step = bytes.len() / 61;
    for len in (0..bytes.len()).step_by(step) {
        let result = catch_unwind(AssertUnwindSafe(|| import_any(&bytes[..len])));
        let result = result.unwrap_or_else(|_| panic!("a file cut at {len} bytes panicked"));
        assert!(result.is_err(), "a file cut at {len} bytes imported");
    }
    // Bytes flipped one at a time across the structure (the first 4 KB and the last 2 KB hold
    // the tables; the middle is weights): any outcome but a panic.
    let mut seed = 0x9E37_79B9_u64;
    let tail = bytes.len() - 2048;
    for i in 0..400 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = if i % 2 == 0 {
            (seed >> 33) as usize % 4096
        } else {
            tail + (seed >> 33) as usize % 2048
        };
        let mut copy = bytes.clone();
        copy[at] ^= 1 << ((seed >> 20) % 8);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            import_any(&copy).map(|i| match i {
                Imported::Float(p) => p.classes,
                Imported::Quantized(p) => p.classes,
            })
        }));
        assert!(
            outcome.is_ok(),
            "flipping a bit of byte {at} panicked the importer"
        );
    }
}

#[test]
fn one_directory_mixes_onnx_and_tflite_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tflite_dir().join("mobilenet_v1_0.25_128_quant.tflite"),
        dir.path().join("mobilenet_v1_0.25_128_quant.tflite"),
    )
    .unwrap();
    std::fs::copy(
        zoo_dir().join("mobilenet_v1_0.25_128.onnx"),
        dir.path().join("mobilenet_v1_0.25_128.onnx"),
    )
    .unwrap();
    let opts = LoadOptions {
        variants: None,
        // For the ONNX file, whose input size is symbolic; the TFLite file fixes its own.
        resolution: Some(128),
        kernels: best(),
    };
    let pool = ModelPool::load(dir.path(), &opts).unwrap();
    let mut names = pool.names();
    names.sort();
    assert_eq!(
        names,
        ["mobilenet_v1_0.25_128", "mobilenet_v1_0.25_128_quant"]
    );
    let quant = pool.get("mobilenet_v1_0.25_128_quant").unwrap();
    assert_eq!(quant.spec.precision, Precision::Int8);
    assert_eq!(quant.spec.resolution, 128);
    assert_eq!(
        quant.spec.normalization,
        Normalization {
            scale: 1.0 / 128.0,
            offset: -1.0
        },
        "a uint8 TFLite file takes its pixels as they are"
    );
    let float = pool.get("mobilenet_v1_0.25_128").unwrap();
    assert_eq!(float.spec.normalization, Normalization::default());
}

#[test]
fn tract_tflite_agrees_on_every_file_and_catches_a_changed_weight() {
    let opts = LoadOptions {
        variants: None,
        resolution: None,
        kernels: best(),
    };
    let pool = ModelPool::load(&tflite_dir(), &opts).unwrap();
    assert_eq!(pool.variants().len(), 13);
    let images = image_files(&imagenet_dir()).unwrap();
    for v in pool.variants() {
        let bytes = std::fs::read(tflite_dir().join(&v.spec.file)).unwrap();
        let inputs = image_inputs(&images[..2], v).unwrap();
        let check = check_variant(v, &ModelFile::from_bytes(bytes).unwrap(), &inputs).unwrap();
        assert!(check.passed(), "{}: {check:?}", v.spec.name);
    }
    // The reference given the same file with 1 KB of weights changed (the middle of the file is
    // weight data): the check must see it.
    let v = pool.get("mobilenet_v1_0.25_128_quant").unwrap();
    let mut bytes = std::fs::read(tflite_dir().join(&v.spec.file)).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 1024] {
        *b ^= 0x55;
    }
    let inputs = image_inputs(&images[..2], v).unwrap();
    let check = check_variant(v, &ModelFile::from_bytes(bytes).unwrap(), &inputs).unwrap();
    assert!(!check.passed(), "a changed weight went unseen: {check:?}");
}
