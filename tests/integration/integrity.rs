//! Model integrity: files whose sha256 is not the expected one (manifest or SHA256SUMS), corrupt,
//! truncated or missing files fail only their variants; the service starts with the rest and
//! says what is missing, unless every model is required.

use crate::common;

use common::serving::config;

use std::process::Command;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use mobilenet_serve::api::auth::Auth;
use mobilenet_serve::app;
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::kernels::KernelSet;
use mobilenet_serve::serving::Service;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const GOOD: &str = "mobilenet_v1_0.25_128";
const TAMPERED: &str = "mobilenet_v1_0.25_160";
const TRUNCATED: &str = "mobilenet_v1_0.5_128";
const MISSING: &str = "mobilenet_v1_0.5_160";

fn options() -> LoadOptions {
    LoadOptions {
        variants: None,
        resolution: None,
        kernels: KernelSet::scalar(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn zoo_file(name: &str) -> Vec<u8> {
    std::fs::read(common::zoo_dir().join(format!("{name}.onnx"))).unwrap()
}

/// The zoo's manifest entries of `names`, as a JSON array.
fn manifest(names: &[&str]) -> Vec<Value> {
    let text = std::fs::read_to_string(common::zoo_dir().join("manifest.json")).unwrap();
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    names
        .iter()
        .map(|n| all.iter().find(|e| e["name"] == *n).unwrap().clone())
        .collect()
}

/// A models directory with four variants: one intact, one whose weights were altered after its
/// digest was recorded (it still imports), one truncated, one missing.
fn damaged_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.path().join(format!("{name}.onnx")), bytes).unwrap()
    };
    let good = zoo_file(GOOD);
    write(GOOD, &good);
    let original = zoo_file(TAMPERED);
    let mut tampered = original.clone();
    // One byte in the middle of the weights: the file still imports (checked below), so only
    // its digest can tell.
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    write(TAMPERED, &tampered);
    let truncated = zoo_file(TRUNCATED);
    write(TRUNCATED, &truncated[..truncated.len() / 2]);
    let sums = format!(
        "{}  {GOOD}.onnx\n{} *{TAMPERED}.onnx\n",
        sha256(&good),
        sha256(&original)
    );
    std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    let entries = manifest(&[GOOD, TAMPERED, TRUNCATED, MISSING]);
    std::fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_string(&entries).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn a_damaged_file_fails_only_its_variants() {
    let dir = damaged_dir();
    let pool = ModelPool::load_available(dir.path(), &options()).unwrap();
    let served: Vec<&str> = pool
        .variants()
        .iter()
        .map(|v| v.spec.name.as_str())
        .collect();
    assert_eq!(served, [GOOD]);
    assert!(pool.variants()[0].verified);
    assert_eq!(pool.variants()[0].sha256, sha256(&zoo_file(GOOD)));
    let why = |name: &str| {
        pool.unavailable()
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("{name} is listed as unavailable"))
            .error
            .clone()
    };
    assert_eq!(pool.unavailable().len(), 3);
    assert!(why(TAMPERED).contains("sha256 is"), "{}", why(TAMPERED));
    assert!(why(TAMPERED).contains(&sha256(&zoo_file(TAMPERED))));
    assert!(!why(TRUNCATED).is_empty(), "the importer says why");
    assert!(why(MISSING).contains("No such file"), "{}", why(MISSING));

    // Strict loading refuses the directory, naming the first problem.
    let e = ModelPool::load(dir.path(), &options()).unwrap_err();
    assert!(e.to_string().contains(TAMPERED), "{e}");

    // Without the expected digests, the altered file loads: only the digest caught it.
    std::fs::remove_file(dir.path().join("SHA256SUMS")).unwrap();
    let pool = ModelPool::load_available(dir.path(), &options()).unwrap();
    let tampered = pool.get(TAMPERED).unwrap();
    assert!(!tampered.verified);
}

#[test]
fn the_manifest_digest_is_checked_and_must_agree_with_sha256sums() {
    let dir = tempfile::tempdir().unwrap();
    let good = zoo_file(GOOD);
    std::fs::write(dir.path().join(format!("{GOOD}.onnx")), &good).unwrap();
    let mut entry = manifest(&[GOOD]).remove(0);
    let write_manifest = |entry: &Value| {
        std::fs::write(
            dir.path().join("manifest.json"),
            serde_json::to_string(&[entry]).unwrap(),
        )
        .unwrap()
    };
    // The right digest, in upper case: verified.
    entry["sha256"] = json!(sha256(&good).to_uppercase());
    write_manifest(&entry);
    let pool = ModelPool::load(dir.path(), &options()).unwrap();
    assert!(pool.variants()[0].verified);
    // Another file's digest: refused.
    entry["sha256"] = json!(sha256(b"another file"));
    write_manifest(&entry);
    let e = ModelPool::load(dir.path(), &options()).unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");
    // Not a digest at all: the manifest is refused.
    entry["sha256"] = json!("abc");
    write_manifest(&entry);
    let e = ModelPool::load_available(dir.path(), &options()).unwrap_err();
    assert!(e.to_string().contains("64 hex digits"), "{e}");
    // Manifest and SHA256SUMS disagreeing is refused, whichever is right.
    entry["sha256"] = json!(sha256(&good));
    write_manifest(&entry);
    std::fs::write(
        dir.path().join("SHA256SUMS"),
        format!("{}  {GOOD}.onnx\n", sha256(b"x")),
    )
    .unwrap();
    let e = ModelPool::load(dir.path(), &options()).unwrap_err();
    assert!(e.to_string().contains("disagree"), "{e}");
    // No expected digest at all: loaded, not verified.
    std::fs::remove_file(dir.path().join("SHA256SUMS")).unwrap();
    entry.as_object_mut().unwrap().remove("sha256");
    write_manifest(&entry);
    let pool = ModelPool::load(dir.path(), &options()).unwrap();
    assert!(!pool.variants()[0].verified);
}

#[test]
fn without_a_manifest_a_broken_file_is_listed_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.onnx"), zoo_file(GOOD)).unwrap();
    std::fs::write(dir.path().join("broken.onnx"), b"not a protobuf at all").unwrap();
    let options = LoadOptions {
        resolution: Some(128),
        ..options()
    };
    let pool = ModelPool::load_available(dir.path(), &options).unwrap();
    assert_eq!(pool.variants().len(), 1);
    assert_eq!(pool.unavailable()[0].name, "broken");
    assert!(ModelPool::load(dir.path(), &options).is_err());
    // Asking for the broken one by name lists it as unavailable, as without the filter.
    let named = LoadOptions {
        variants: Some(vec!["broken".into(), pool.variants()[0].spec.name.clone()]),
        ..options.clone()
    };
    let pool = ModelPool::load_available(dir.path(), &named).unwrap();
    assert_eq!(pool.variants().len(), 1);
    assert_eq!(pool.unavailable()[0].name, "broken");
    // Nothing loadable at all is an error, not an empty service.
    std::fs::remove_file(dir.path().join("good.onnx")).unwrap();
    let e = ModelPool::load_available(dir.path(), &options).unwrap_err();
    assert!(e.to_string().contains("could be loaded"), "{e}");
}

async fn get(service: &std::sync::Arc<Service>, uri: &str) -> (StatusCode, Value) {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = app(service.clone(), Auth::default())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_starts_with_the_rest_and_says_what_is_missing() {
    let dir = damaged_dir();
    let pool = ModelPool::load_available(dir.path(), &options()).unwrap();
    let s = Service::new(pool, config()).unwrap();
    s.warm_up().await.unwrap();

    let (status, ready) = get(&s, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = ready["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(listed, [TAMPERED, TRUNCATED, MISSING]);
    assert!(
        !ready.to_string().contains("sha256"),
        "/readyz gives names only"
    );

    let (_, models) = get(&s, "/v1/models").await;
    assert_eq!(models["models"].as_array().unwrap().len(), 1);
    assert_eq!(models["models"][0]["verified"], true);
    assert_eq!(models["unavailable"].as_array().unwrap().len(), 3);

    let (status, e) = get(&s, &format!("/v1/models/{TAMPERED}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "model_unavailable");
    assert!(e["error"]["message"].as_str().unwrap().contains("sha256"));
    let (status, e) = get(&s, &format!("/v2/models/{TRUNCATED}/ready")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(e["error"].as_str().unwrap().contains("failed to load"));

    let jpeg = common::serving::jpegs(1).remove(0);
    for (model, expected) in [(GOOD, StatusCode::OK), (MISSING, StatusCode::NOT_FOUND)] {
        let request = Request::post(format!("/classify?model={model}"))
            .header(header::CONTENT_TYPE, "image/jpeg")
            .body(Body::from(jpeg.clone()))
            .unwrap();
        let response = app(s.clone(), Auth::default())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{model}");
    }
}

#[test]
fn require_all_models_refuses_to_start() {
    let dir = damaged_dir();
    // A port already taken, so that a server that gets past loading stops at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let serve = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"))
            .args(["--models", &dir.path().display().to_string(), "serve"])
            .args([
                "--host",
                "127.0.0.1",
                "--http-port",
                &port,
                "--grpc-port",
                &port,
            ])
            .args(extra)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let out = serve(&["--require-all-models"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(TAMPERED) && stderr.contains("sha256"),
        "{stderr}"
    );
    // Without the flag the same directory gets past loading, logging each unavailable
    // variant, and stops only at the taken port.
    let out = serve(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to load") && stderr.contains(MISSING),
        "{stderr}"
    );
    assert!(!out.status.success());
    drop(taken);
}
