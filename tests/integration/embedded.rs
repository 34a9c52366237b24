//! The default model compiled into the binary: a fresh directory, with no models and no
//! `--models`, serves and classifies with it; a named directory is never replaced by it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::process::{free_port, http, ServerProcess};
use crate::common::{imagenet_dir, zoo_dir};
use mobilenet_serve::engine::catalog::read_checksums;
use mobilenet_serve::engine::embedded;
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool, ModelSource};
use mobilenet_serve::kernels::{KernelSet, TierChoice};

/// The binary, run in `dir` as a new user would: no `MODELS_DIR` in its environment.
fn binary_in(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"));
    c.current_dir(dir).env_remove("MODELS_DIR");
    c
}

/// The first sample image and its class name.
fn first_image() -> (Vec<u8>, String) {
    let dir = imagenet_dir();
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    let line = labels.lines().find(|l| !l.starts_with('#')).unwrap();
    let fields: Vec<&str> = line.split('\t').collect();
    (
        std::fs::read(dir.join(fields[0])).unwrap(),
        fields[3].to_string(),
    )
}

#[test]
fn the_embedded_model_is_googles_file_and_loads_verified() {
    let zoo = read_checksums(&zoo_dir().join("tflite")).unwrap();
    assert_eq!(
        zoo.get(std::path::Path::new(embedded::FILE))
            .map(String::as_str),
        Some(embedded::SHA256),
        "the embedded file is the zoo's copy of Google's release file"
    );
    let opts = LoadOptions {
        variants: None,
        resolution: None,
        kernels: KernelSet::select(TierChoice::Auto).unwrap(),
    };
    let pool = ModelPool::embedded(std::path::Path::new("models"), &opts).unwrap();
    let [v] = pool.variants() else {
        panic!("one variant")
    };
    assert_eq!(v.spec.name, "mobilenet_v1_0.25_128_quant");
    assert_eq!((v.source, v.verified), (ModelSource::Embedded, true));
    assert_eq!(
        pool.label(v, 1),
        "tench",
        "output 1 is class 0 (0 is background)"
    );
    let wrong = LoadOptions {
        variants: Some(vec!["mobilenet_v1_1.0_224".into()]),
        ..opts
    };
    let err = ModelPool::embedded(std::path::Path::new("models"), &wrong).unwrap_err();
    assert!(
        err.to_string().contains("mobilenet_v1_0.25_128_quant"),
        "{err}"
    );
}

#[test]
fn a_named_directory_is_never_replaced_by_the_embedded_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = binary_in(dir.path())
        .args(["--models", "no-such-dir", "models"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-dir") && err.contains("does not exist"),
        "{err}"
    );
    let out = binary_in(dir.path()).arg("models").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("mobilenet_v1_0.25_128_quant"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_directory_serves_and_classifies_with_the_embedded_model() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = ServerProcess(
        binary_in(dir.path())
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--http-port",
                &port.to_string(),
            ])
            .args([
                "--grpc-port",
                &free_port().to_string(),
                "--engine-threads",
                "1",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    while !matches!(http(addr, "GET", "/readyz", b"").await, Ok((200, _))) {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, models) = http(addr, "GET", "/v1/models", b"").await.unwrap();
    assert_eq!(status, 200);
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let listed = &models["models"][0];
    assert_eq!(listed["name"], "mobilenet_v1_0.25_128_quant");
    assert_eq!(listed["source"], "embedded");
    assert_eq!(listed["verified"], true);
    let (image, class) = first_image();
    let (status, answer) = http(addr, "POST", "/classify?top_k=1", &image)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer["predictions"][0]["label"],
        class.as_str(),
        "{answer}"
    );
}
