//! Helpers shared by the integration tests: where the zoo is, and a small ONNX graph builder.
#![allow(dead_code)]

pub mod images;
pub mod onnx_builder;
pub mod openapi;
pub mod process;
pub mod serving;

use std::path::PathBuf;

/// The model zoo: `MODELS_DIR` when set, else `../shared/models` beside the repository. Fails
/// (never skips) with a clear message when it is missing.
pub fn zoo_dir() -> PathBuf {
    let dir = std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    assert!(
        dir.join("manifest.json").is_file(),
        "the MobileNet zoo is missing at {} (set MODELS_DIR, or see models/README.md)",
        dir.display()
    );
    dir
}

/// The labelled ImageNet sample: `DATASET_DIR` when set, else `../shared/imagenet/val1300`.
pub fn imagenet_dir() -> PathBuf {
    let dir = std::env::var_os("DATASET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/imagenet/val1300")
        });
    assert!(
        dir.join("labels.tsv").is_file(),
        "the ImageNet sample is missing at {} (set DATASET_DIR)",
        dir.display()
    );
    dir
}

/// Deterministic pseudo-random floats in [-scale, scale].
pub fn random_vec(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    mobilenet_serve::engine::crosscheck::random_inputs(1, len, seed)
        .remove(0)
        .into_iter()
        .map(|v| v * scale)
        .collect()
}

/// The CPU's feature flags as the kernel reports them in `/proc/cpuinfo` (which Linux clears
/// when the OS does not save a feature's registers): a second source of truth for run-time
/// detection.
#[cfg(target_os = "linux")]
pub fn cpu_flags() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .expect("a flags line in /proc/cpuinfo")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}
