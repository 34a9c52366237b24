//! The live model repository: explicit load and unload over REST and gRPC, poll-mode rescans
//! that replace, refuse and remove files, and a swap under load in the real binary (zero failed
//! requests to the variants that stay, only the documented error for the unloaded one, RSS
//! back where it was).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::process::{free_port, http, ServerProcess};
use crate::common::serving::{config, grpc_channel, jpegs, serve_http, MID, SMALL};
use mobilenet_serve::api::grpc::oip::pb;
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::kernels::{KernelSet, TierChoice};
use mobilenet_serve::serving::router::Selection;
use mobilenet_serve::serving::{ClassifyRequest, ControlMode, ModelState, Service};

/// A third small variant, for the swap under load.
const OTHER: &str = "mobilenet_v1_0.25_160";

/// A models directory holding copies of the zoo's `names` (manifest entries and files) and the
/// class names: files the test may replace.
fn models_dir(names: &[&str]) -> tempfile::TempDir {
    let zoo = common::zoo_dir();
    let dir = tempfile::tempdir().unwrap();
    let manifest: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("manifest.json")).unwrap()).unwrap();
    let entries: Vec<Value> = manifest
        .into_iter()
        .filter(|e| names.contains(&e["name"].as_str().unwrap()))
        .map(|mut e| {
            // Replacements carry new digests: the test's files are checked by their loads.
            e.as_object_mut().unwrap().remove("sha256");
            e
        })
        .collect();
    assert_eq!(entries.len(), names.len());
    for e in &entries {
        let file = e["file"].as_str().unwrap();
        std::fs::copy(zoo.join(file), dir.path().join(file)).unwrap();
    }
    write_manifest(dir.path(), &entries);
    std::fs::copy(
        zoo.join("imagenet_classes.txt"),
        dir.path().join("imagenet_classes.txt"),
    )
    .unwrap();
    dir
}

fn write_manifest(dir: &Path, entries: &[Value]) {
    let text = serde_json::to_string_pretty(entries).unwrap();
    std::fs::write(dir.join("tmp-manifest"), text).unwrap();
    std::fs::rename(dir.join("tmp-manifest"), dir.join("manifest.json")).unwrap();
}

/// Replaces `name`'s file, atomically, by the same model with other bytes: an unknown field
/// appended to the ONNX protobuf (field 1000, varint `tag`), which every reader skips.
fn replace_file(dir: &Path, name: &str, tag: u8) {
    let path = dir.join(format!("{name}.onnx"));
    let mut bytes = std::fs::read(common::zoo_dir().join(format!("{name}.onnx"))).unwrap();
    bytes.extend_from_slice(&[0xc0, 0x3e, tag]);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn options() -> LoadOptions {
    LoadOptions {
        variants: None,
        resolution: None,
        kernels: KernelSet::select(TierChoice::Auto).unwrap(),
    }
}

fn sha_of(service: &Service, name: &str) -> String {
    service.model(name).unwrap().sha256
}

fn index_state(service: &Service, name: &str) -> (ModelState, String) {
    let entry = service
        .repository_index(false)
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not in the index"));
    (entry.state, entry.reason)
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, body.as_bytes()).await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json)
}

async fn until_ready(addr: SocketAddr) {
    let started = Instant::now();
    while !matches!(http(addr, "GET", "/readyz", b"").await, Ok((200, _))) {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_loads_and_unloads_through_the_rest_api() {
    let dir = models_dir(&[SMALL, MID]);
    // MID's file is broken: its load fails and says why.
    std::fs::write(dir.path().join(format!("{MID}.onnx")), b"not a model").unwrap();
    let mut cfg = config();
    cfg.model_control = ControlMode::Explicit;
    let service = Service::new(ModelPool::empty(dir.path(), &options()).unwrap(), cfg).unwrap();
    let (addr, _stop) = serve_http(service.clone()).await;
    until_ready(addr).await;

    let (status, index) = post(addr, "/v2/repository/index", "").await;
    assert_eq!(status, 200, "{index}");
    let names: Vec<&str> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [SMALL, MID]);
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    assert_eq!(index[0]["reason"], "unloaded");
    assert_eq!(index[0]["version"], "1");
    // Nothing loaded: a clear 503, not a 500.
    let image = &jpegs(1)[0];
    let (status, _) = http(addr, "POST", "/classify", image).await.unwrap();
    assert_eq!(status, 503);

    let (status, body) = post(addr, &format!("/v2/repository/models/{SMALL}/load"), "").await;
    assert_eq!(status, 200, "{body}");
    let (status, ready) = post(addr, "/v2/repository/index", r#"{"ready": true}"#).await;
    assert_eq!(status, 200);
    assert_eq!(ready.as_array().unwrap().len(), 1);
    assert_eq!(ready[0]["state"], "READY");
    // The body is an object or null; serde alone would take an array for the struct.
    let (status, body) = post(addr, "/v2/repository/index", "[]").await;
    assert_eq!(status, 400, "{body}");
    let (status, all) = post(addr, "/v2/repository/index", "null").await;
    assert_eq!((status, all.as_array().unwrap().len()), (200, 2));
    let (status, text) = http(addr, "POST", "/classify", image).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(SMALL), "{text}");

    let (status, body) = post(addr, &format!("/v2/repository/models/{MID}/load"), "").await;
    assert_eq!(status, 400, "{body}");
    let why = body["error"].as_str().unwrap();
    assert!(why.contains("failed to load") && why.contains(MID), "{why}");
    let (state, reason) = index_state(&service, MID);
    assert_eq!(state, ModelState::Unavailable);
    assert!(reason.contains(".onnx"), "{reason}");
    let (status, body) = post(addr, "/v2/repository/models/nope/load", "").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        addr,
        &format!("/v2/repository/models/{SMALL}/load"),
        r#"{"parameters": {"config": "{}"}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("config"));

    let (status, body) = post(
        addr,
        &format!("/v2/repository/models/{SMALL}/unload"),
        r#"{"parameters": {"unload_dependents": false}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = http(addr, "POST", &format!("/classify?model={SMALL}"), image)
        .await
        .unwrap();
    assert_eq!(status, 404, "{text}");
    assert!(
        text.contains("model_unavailable") && text.contains("it was unloaded"),
        "{text}"
    );
    let (status, _) = http(addr, "GET", &format!("/v2/models/{SMALL}/ready"), b"")
        .await
        .unwrap();
    assert_eq!(status, 404);

    let (_, metrics) = http(addr, "GET", "/metrics", b"").await.unwrap();
    for line in [
        format!(r#"mobilenet_model_loads_total{{outcome="loaded",variant="{SMALL}"}} 1"#),
        format!(r#"mobilenet_model_loads_total{{outcome="unloaded",variant="{SMALL}"}} 1"#),
        format!(r#"mobilenet_model_loads_total{{outcome="failed",variant="{MID}"}} 1"#),
        format!(r#"mobilenet_model_ready{{variant="{SMALL}"}} 0"#),
        format!(r#"mobilenet_model_load_duration_seconds_count{{variant="{SMALL}"}} 1"#),
    ] {
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
    // The unloaded variant's cost and accuracy series are gone with it.
    assert!(!metrics.contains(&format!(r#"mobilenet_mult_adds{{variant="{SMALL}"}}"#)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_without_control_refuses_loads_over_grpc_and_lists_the_index() {
    let dir = models_dir(&[SMALL]);
    let pool = ModelPool::load(dir.path(), &options()).unwrap();
    let service = Service::new(pool, config()).unwrap();
    service.warm_up().await.unwrap();
    let (addr, _stop) = common::serving::start_grpc(service.clone()).await;
    let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(
        grpc_channel(addr).await,
    );
    let index = client
        .repository_index(pb::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models.len(), 1);
    assert_eq!(
        (
            index.models[0].name.as_str(),
            index.models[0].state.as_str()
        ),
        (SMALL, "READY")
    );
    let refused = client
        .repository_model_unload(pb::RepositoryModelUnloadRequest {
            model_name: SMALL.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("model control mode is `none`"));
    let other_repository = client
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: "elsewhere".into(),
            ready: false,
        })
        .await
        .unwrap_err();
    assert_eq!(other_repository.code(), tonic::Code::NotFound);
    assert!(service.is_ready(), "{SMALL} still served");
}

/// A request for `name`'s top class of `image`.
fn named(name: &str, image: Vec<u8>) -> ClassifyRequest {
    ClassifyRequest {
        images: vec![image.into()],
        selection: Selection::Name(name.into()),
        top_k: 1,
        timeout: None,
        resize: None,
    }
}

/// Classifies with `name` until `stop`, counting answers and failures.
fn drive(
    service: Arc<Service>,
    name: &'static str,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let image = jpegs(1).remove(0);
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let admission = service.admit("test").unwrap();
            let request = named(name, image.clone());
            match service.classify(admission, request).await {
                Ok(r) if r.model == name => ok.fetch_add(1, Ordering::Relaxed),
                Ok(r) => panic!("asked for {name}, answered by {}", r.model),
                Err(e) => {
                    eprintln!("{name}: {e}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_rescans_swap_changed_files_under_traffic_keep_the_old_on_failure_and_unload_removed_ones(
) {
    let dir = models_dir(&[SMALL, MID]);
    let mut cfg = config();
    cfg.model_control = ControlMode::Poll;
    let pool = ModelPool::load(dir.path(), &options()).unwrap();
    let service = Service::new(pool, cfg).unwrap();
    service.warm_up().await.unwrap();
    // Nothing changed: nothing to do.
    let first = service.rescan_models(false).await.unwrap();
    assert_eq!(first, Default::default());
    assert_eq!(
        service.rescan_models(false).await.unwrap(),
        Default::default()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let drivers: Vec<_> = [SMALL, MID, MID]
        .into_iter()
        .map(|name| {
            drive(
                service.clone(),
                name,
                stop.clone(),
                ok.clone(),
                failed.clone(),
            )
        })
        .collect();
    let mut shas = vec![sha_of(&service, MID)];
    for tag in [1, 2] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        replace_file(dir.path(), MID, tag);
        let done = service.rescan_models(false).await.unwrap();
        assert_eq!(done.loaded, [MID], "{done:?}");
        let sha = sha_of(&service, MID);
        assert!(!shas.contains(&sha), "the new file is served");
        shas.push(sha);
    }
    // A broken file: the old load stays, and the index and metrics say why.
    std::fs::write(dir.path().join(format!("{MID}.onnx")), b"truncated").unwrap();
    let done = service.rescan_models(false).await.unwrap();
    assert_eq!(done.failed.len(), 1, "{done:?}");
    assert_eq!(&sha_of(&service, MID), shas.last().unwrap());
    let (state, reason) = index_state(&service, MID);
    assert_eq!(state, ModelState::Ready);
    assert!(reason.contains("the new one failed"), "{reason}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for d in drivers {
        d.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    assert!(
        ok.load(Ordering::Relaxed) > 10,
        "too little traffic to prove anything"
    );

    // Removed from the manifest: unloaded, and then a not-found error.
    let manifest: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    let kept: Vec<Value> = manifest
        .into_iter()
        .filter(|e| e["name"] == SMALL)
        .collect();
    write_manifest(dir.path(), &kept);
    let done = service.rescan_models(false).await.unwrap();
    assert_eq!(done.unloaded, [MID], "{done:?}");
    let admission = service.admit("test").unwrap();
    let request = named(MID, jpegs(1).remove(0));
    let err = service.classify(admission, request).await.unwrap_err();
    assert_eq!(err.kind().status, 404, "{err}");
    assert_eq!(service.models().len(), 1);
    let metrics = service.metrics().render();
    for line in [
        format!(r#"mobilenet_model_loads_total{{outcome="loaded",variant="{MID}"}} 2"#),
        format!(r#"mobilenet_model_loads_total{{outcome="failed",variant="{MID}"}} 1"#),
        format!(r#"mobilenet_model_loads_total{{outcome="unloaded",variant="{MID}"}} 1"#),
        format!(r#"mobilenet_model_ready{{variant="{SMALL}"}} 1"#),
    ] {
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One client's answers, by status code.
#[derive(Default)]
struct Answers {
    codes: std::collections::BTreeMap<u16, usize>,
    other_errors: Vec<String>,
}

/// Unloads and reloads one variant 10 times (`SWAP_CYCLES` to change, which also prints RSS
/// per cycle) and replaces another's file twice while clients drive all three.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_swaps_under_load_without_failing_a_request_or_keeping_memory() {
    let dir = models_dir(&[SMALL, OTHER, MID]);
    let port = free_port();
    let server = ServerProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"))
            .args(["--models", dir.path().to_str().unwrap(), "serve"])
            .args(["--host", "127.0.0.1", "--http-port", &port.to_string()])
            .args(["--grpc-port", &free_port().to_string()])
            .args(["--model-control-mode", "explicit", "--engine-threads", "1"])
            .args([
                "--load-model",
                SMALL,
                "--load-model",
                OTHER,
                "--load-model",
                MID,
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    until_ready(addr).await;
    let image = Arc::new(jpegs(1).remove(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = |name: &'static str| {
        let (image, stop) = (image.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Answers::default();
            let path = format!("/classify?model={name}");
            while !stop.load(Ordering::Relaxed) {
                match http(addr, "POST", &path, &image).await {
                    Ok((200, _)) => *answers.codes.entry(200).or_default() += 1,
                    Ok((404, body)) if body.contains("model_unavailable") => {
                        *answers.codes.entry(404).or_default() += 1
                    }
                    Ok((code, body)) => answers.other_errors.push(format!("{code}: {body}")),
                    Err(e) => answers.other_errors.push(e.to_string()),
                }
            }
            answers
        })
    };
    // Traffic first, so that the baseline holds what serving itself needs.
    let warm_stop = stop.clone();
    let warm = [client(SMALL), client(OTHER), client(MID)];
    tokio::time::sleep(Duration::from_secs(2)).await;
    warm_stop.store(true, Ordering::Relaxed);
    for w in warm {
        assert!(w.await.unwrap().other_errors.is_empty());
    }
    stop.store(false, Ordering::Relaxed);
    let before = rss_kib(pid);

    let clients = [client(SMALL), client(OTHER), client(MID)];
    let cycles: usize = std::env::var("SWAP_CYCLES").map_or(10, |v| v.parse().unwrap());
    for i in 0..cycles {
        if std::env::var_os("SWAP_CYCLES").is_some() {
            eprintln!("cycle {i}: RSS {} KiB", rss_kib(pid));
        }
        let (status, body) = post(addr, &format!("/v2/repository/models/{SMALL}/unload"), "").await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = post(addr, &format!("/v2/repository/models/{SMALL}/load"), "").await;
        assert_eq!(status, 200, "{body}");
        if i % 5 == 4 {
            replace_file(dir.path(), MID, i as u8);
            let (status, body) = post(addr, &format!("/v2/repository/models/{MID}/load"), "").await;
            assert_eq!(status, 200, "{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let [small, other, mid] = clients;
    let (small, other, mid) = (
        small.await.unwrap(),
        other.await.unwrap(),
        mid.await.unwrap(),
    );
    let after = rss_kib(pid);
    let (_, metrics) = http(addr, "GET", "/metrics", b"").await.unwrap();
    eprintln!(
        "swap under load: {SMALL} {:?}, {OTHER} {:?}, {MID} {:?}; RSS {before} -> {after} KiB",
        small.codes, other.codes, mid.codes
    );
    for (name, answers) in [(SMALL, &small), (OTHER, &other), (MID, &mid)] {
        assert!(
            answers.other_errors.is_empty(),
            "{name}: {:?}",
            answers.other_errors
        );
    }
    assert_eq!(
        other.codes.keys().collect::<Vec<_>>(),
        [&200],
        "{OTHER} stayed"
    );
    assert_eq!(
        mid.codes.keys().collect::<Vec<_>>(),
        [&200],
        "{MID} was swapped, never gone"
    );
    assert!(small.codes.get(&200).copied().unwrap_or(0) > 0);
    assert!(
        metrics.contains(&format!(
            r#"mobilenet_model_loads_total{{outcome="loaded",variant="{MID}"}} {}"#,
            cycles / 5
        )),
        "{metrics}"
    );
    assert!(
        (after as f64) < before as f64 * 1.10,
        "RSS grew from {before} to {after} KiB over 10 reloads and 2 swaps"
    );
}
