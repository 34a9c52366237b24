//! The Open Inference Protocol over two real variants: REST in-process (the axum app without a
//! socket) and gRPC over a real socket with the generated client. Health, metadata, inference
//! with images and with tensors in every encoding, the classification extension, and the error
//! codes and bodies. Third-party clients (tritonclient, KServe) are in tests/oip/run.sh.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::serving::{
    config, direct_top1, grpc_channel, jpegs, pool, service, stalled_service, start_grpc, SMALL,
};
use http_body_util::BodyExt;
use mobilenet_serve::api::auth::Auth;
use mobilenet_serve::api::grpc::oip::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use mobilenet_serve::api::grpc::oip::pb::{self, model_infer_request};
use mobilenet_serve::api::grpc::oip::SERVICE_NAME;
use mobilenet_serve::app;
use mobilenet_serve::oip::tensor::{bytes_to_raw, fp32_from_le, fp32_to_le};
use mobilenet_serve::pipeline::decode::{decode, DecodeLimits};
use mobilenet_serve::pipeline::preprocess::preprocess;
use mobilenet_serve::serving::Service;
use serde_json::{json, Value};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceExt;

const INFER: &str = "/v2/models/mobilenet_v1_0.25_128/infer";
const CLASSES: usize = 1001;

struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    /// The JSON part (all of the body without the binary extension's header).
    fn json(&self) -> Value {
        let n = match self.headers.get("inference-header-content-length") {
            Some(v) => v.to_str().unwrap().parse().unwrap(),
            None => self.body.len(),
        };
        serde_json::from_slice(&self.body[..n]).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    /// The binary part.
    fn binary(&self) -> &[u8] {
        let n: usize = self.headers["inference-header-content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        &self.body[n..]
    }
}

/// The requests counted under `protocol` with status `code`, over every variant.
fn counted(metrics: &str, protocol: &str, code: u16) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("mobilenet_requests_total")
                && l.contains(&format!("protocol=\"{protocol}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

async fn send(service: &Arc<Service>, request: Request<Body>) -> Reply {
    let response = app(service.clone(), Auth::default())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// A JSON-only inference request.
fn infer_json(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A request with the binary extension: the JSON part, then `binary`.
fn infer_binary(uri: &str, head: &Value, binary: &[u8]) -> Request<Body> {
    let head = head.to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(binary);
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("inference-header-content-length", head.len())
        .body(Body::from(body))
        .unwrap()
}

/// The NCHW tensor of `jpeg` as the ONNX model of `SMALL` takes it.
fn nchw(jpeg: &[u8]) -> Vec<f32> {
    let p = pool();
    let v = p.get(SMALL).unwrap();
    let r = v.spec.resolution;
    let rgb = decode(jpeg, &DecodeLimits::default()).unwrap();
    let nhwc = preprocess(&rgb, r, v.spec.normalization, v.model.kernels().tier).unwrap();
    let mut out = vec![0.0; nhwc.len()];
    for p in 0..r * r {
        for c in 0..3 {
            out[c * r * r + p] = nhwc[p * 3 + c];
        }
    }
    out
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    let scale = a.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * scale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata_describe_each_variant() {
    let s = service(config());
    let r = send(&s, get("/v2/health/live")).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"live": true}))
    );
    let r = send(&s, get("/v2/health/ready")).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
    );
    let ready = format!("/v2/models/{SMALL}/ready");
    assert_eq!(
        send(&s, get(&ready)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    s.warm_up().await.unwrap();
    assert_eq!(
        send(&s, get("/v2/health/ready")).await.status,
        StatusCode::OK
    );
    let r = send(&s, get(&ready)).await;
    assert_eq!(r.json(), json!({"name": SMALL, "ready": true}));

    let meta = send(&s, get("/v2")).await.json();
    assert_eq!(meta["name"], "mobilenet-serve");
    assert_eq!(
        meta["extensions"],
        json!(["classification", "binary_tensor_data", "model_repository"])
    );
    for uri in [
        format!("/v2/models/{SMALL}"),
        format!("/v2/models/{SMALL}/versions/1"),
    ] {
        let m = send(&s, get(&uri)).await.json();
        assert_eq!(m["name"], SMALL);
        assert_eq!(m["versions"], json!(["1"]));
        assert_eq!(
            m["inputs"],
            json!([
                {"name": "input", "datatype": "FP32", "shape": [-1, 3, 128, 128]},
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
            ])
        );
        assert_eq!(
            m["outputs"],
            json!([
                {"name": "logits", "datatype": "FP32", "shape": [-1, 1001]},
                {"name": "probs", "datatype": "FP32", "shape": [-1, 1001]},
            ])
        );
    }
    for uri in [
        "/v2/models/nope".to_string(),
        format!("/v2/models/{SMALL}/versions/2"),
        "/v2/models/nope/ready".to_string(),
        format!("/v2/models/{SMALL}/versions/2/ready"),
    ] {
        let r = send(&s, get(&uri)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(r.json()["error"].is_string(), "{uri}");
    }
    s.begin_drain();
    let r = send(&s, get("/v2/health/ready")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        send(&s, get("/v2/health/live")).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_tensors_in_every_encoding_give_the_engines_answer() {
    let s = service(config());
    let images = jpegs(2);
    let reference = pool();

    // Encoded images in binary, every output in binary.
    let head = json!({
        "id": "req-1",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                    "parameters": {"binary_data_size": bytes_to_raw(&images).len()}}],
        "parameters": {"binary_data_output": true},
    });
    let r = send(&s, infer_binary(INFER, &head, &bytes_to_raw(&images))).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let j = r.json();
    assert_eq!(
        (&j["model_name"], &j["model_version"], &j["id"]),
        (&json!(SMALL), &json!("1"), &json!("req-1"))
    );
    let outs = j["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 2);
    let size = CLASSES * 2 * 4;
    for (o, name) in outs.iter().zip(["logits", "probs"]) {
        assert_eq!(o["name"], name);
        assert_eq!(o["datatype"], "FP32");
        assert_eq!(o["shape"], json!([2, CLASSES]));
        assert_eq!(o["parameters"]["binary_data_size"], size);
    }
    let binary = fp32_from_le(r.binary()).unwrap();
    let (logits, probs) = binary.split_at(2 * CLASSES);
    for (i, img) in images.iter().enumerate() {
        let row = &logits[i * CLASSES..(i + 1) * CLASSES];
        let p = &probs[i * CLASSES..(i + 1) * CLASSES];
        // Output index = ImageNet class + 1 (TF-slim's background comes first).
        assert_eq!(argmax(row) as u64, direct_top1(&reference, SMALL, img) + 1);
        assert_eq!(argmax(p), argmax(row));
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    // The same images as preprocessed FP32 tensors: JSON data, nested, answered in JSON.
    let x: Vec<f32> = images.iter().flat_map(|i| nchw(i)).collect();
    let nested: Vec<Vec<f32>> = x.chunks(128 * 128).map(|c| c.to_vec()).collect();
    let body = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 128, 128], "data": nested}],
        "outputs": [{"name": "logits"}],
    });
    let r = send(&s, infer_json(INFER, &body)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key("inference-header-content-length"));
    let j = r.json();
    assert!(j.get("id").is_none());
    let json_logits: Vec<f32> = serde_json::from_value(j["outputs"][0]["data"].clone()).unwrap();
    assert!(close(&json_logits, logits));

    // FP32 in binary, and the classification extension in JSON next to a binary output.
    let head = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 128, 128],
                    "parameters": {"binary_data_size": x.len() * 4}}],
        "outputs": [{"name": "probs", "parameters": {"classification": 3, "binary_data": false}},
                    {"name": "logits", "parameters": {"binary_data": true}}],
    });
    let r = send(&s, infer_binary(INFER, &head, &fp32_to_le(&x))).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["outputs"][0]["datatype"], "BYTES");
    assert_eq!(j["outputs"][0]["shape"], json!([2, 3]));
    let strings: Vec<String> = serde_json::from_value(j["outputs"][0]["data"].clone()).unwrap();
    for (i, row) in strings.chunks(3).enumerate() {
        let p = &probs[i * CLASSES..(i + 1) * CLASSES];
        let parts: Vec<&str> = row[0].splitn(3, ':').collect();
        assert_eq!(parts[1].parse::<usize>().unwrap(), argmax(p));
        assert!((parts[0].parse::<f32>().unwrap() - p[argmax(p)]).abs() < 1e-5);
        assert!(!parts[2].is_empty() && parts[2] != "background");
    }
    assert!(close(&fp32_from_le(r.binary()).unwrap(), logits));

    // Shape [N, 1] images on the versioned route; classification strings in binary.
    let head = json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                    "parameters": {"binary_data_size": bytes_to_raw(&images[..1]).len()}}],
        "outputs": [{"name": "probs", "parameters": {"classification": 2, "binary_data": true}}],
    });
    let uri = "/v2/models/mobilenet_v1_0.25_128/versions/1/infer";
    let r = send(&s, infer_binary(uri, &head, &bytes_to_raw(&images[..1]))).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["outputs"][0]["shape"], json!([1, 2]));
    let raw = bytes::Bytes::copy_from_slice(r.binary());
    let strings = mobilenet_serve::oip::tensor::bytes_from_raw(&raw, 2).unwrap();
    let top: Vec<&str> = std::str::from_utf8(&strings[0])
        .unwrap()
        .splitn(3, ':')
        .collect();
    assert_eq!(top[1].parse::<usize>().unwrap(), argmax(&probs[..CLASSES]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_with_the_protocols_error_body() {
    let s = service(config());
    let img = jpegs(1).remove(0);
    let fp = |shape: Value, data: Value| json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}]});
    let zeros = |n: usize| json!(vec![0.0f32; n]);
    let image_x = |extra: Value| {
        let mut body = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };
    // Each case with a fragment of its message, so that it cannot pass on another check's error.
    let json_cases: Vec<(&str, Value, &str)> = vec![
        ("no inputs", json!({"inputs": []}), "exactly one input"),
        (
            "no inputs field",
            json!({"outputs": []}),
            "missing field `inputs`",
        ),
        (
            "two inputs",
            json!({"inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 3, 128, 128], "data": vec![0.0f32; 49152]},
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}),
            "exactly one input",
        ),
        (
            "unknown input",
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0]}]}),
            "unknown input `pixels`",
        ),
        (
            "wrong resolution",
            fp(json!([1, 3, 160, 160]), zeros(3 * 160 * 160)),
            "[N, 3, 128, 128]",
        ),
        (
            "batch of zero",
            fp(json!([0, 3, 128, 128]), json!([])),
            "N >= 1",
        ),
        (
            "negative dimension",
            fp(json!([-1, 3, 128, 128]), json!([])),
            "negative dimension",
        ),
        (
            "count mismatch",
            fp(json!([1, 3, 128, 128]), zeros(100)),
            "holds 100 elements but its shape says 49152",
        ),
        (
            "string in FP32",
            fp(json!([1, 3, 128, 128]), json!(["a"])),
            "invalid type: string",
        ),
        (
            "INT32 datatype",
            json!({"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 3, 128, 128], "data": [1]}]}),
            "datatype `INT32`",
        ),
        (
            "image as FP32",
            json!({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1]}]}),
            "has datatype FP32",
        ),
        (
            "no data",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}),
            "neither data nor binary_data_size",
        ),
        (
            "too many images",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [9], "data": vec!["x"; 9]}]}),
            "at most 8",
        ),
        (
            "unknown output",
            image_x(json!({"outputs": [{"name": "features"}]})),
            "unknown output `features`",
        ),
        (
            "classification 0",
            image_x(json!({"outputs": [{"name": "probs", "parameters": {"classification": 0}}]})),
            "between 1 and 1001, got 0",
        ),
        (
            "classification too large",
            image_x(
                json!({"outputs": [{"name": "probs", "parameters": {"classification": 5000}}]}),
            ),
            "got 5000",
        ),
        (
            "output twice",
            image_x(json!({"outputs": [{"name": "probs"}, {"name": "probs"}]})),
            "requested twice",
        ),
        (
            "negative timeout",
            image_x(json!({"parameters": {"timeout": -5}})),
            "positive microseconds",
        ),
        (
            "body names another model",
            image_x(json!({"model_name": "mobilenet_v1_0.5_160"})),
            "the body names model",
        ),
        (
            "body names another version",
            image_x(json!({"model_version": "2"})),
            "the body names version",
        ),
        ("not an image", image_x(json!({})), "cannot decode image"),
    ];
    for (what, body, fragment) in &json_cases {
        let uri = if *what == "body names another version" {
            "/v2/models/mobilenet_v1_0.25_128/versions/1/infer"
        } else {
            INFER
        };
        let r = send(&s, infer_json(uri, body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {:?}", r.json());
        let message = r.json()["error"].as_str().unwrap().to_string();
        assert!(message.contains(fragment), "{what}: {message}");
    }
    let raw = bytes_to_raw(std::slice::from_ref(&img));
    let head = |size: usize| {
        json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                           "parameters": {"binary_data_size": size}}]})
    };
    let mut nan = vec![0.0f32; 3 * 128 * 128];
    nan[77] = f32::NAN;
    let binary_cases: Vec<(&str, Request<Body>, &str)> = vec![
        (
            "size beyond the body",
            infer_binary(INFER, &head(raw.len() + 1), &raw),
            "beyond the",
        ),
        (
            "bytes left over",
            infer_binary(INFER, &head(raw.len()), &[raw.as_slice(), b"x"].concat()),
            "follow the inputs",
        ),
        (
            "length prefix past the end",
            infer_binary(INFER, &head(raw.len() - 1), &raw[..raw.len() - 1]),
            "declares",
        ),
        (
            "NaN input",
            infer_binary(
                INFER,
                &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 128, 128],
                                    "parameters": {"binary_data_size": nan.len() * 4}}]}),
                &fp32_to_le(&nan),
            ),
            "element 77 is NaN",
        ),
        (
            "header longer than the body",
            Request::post(INFER)
                .header("inference-header-content-length", 999)
                .body(Body::from("{}"))
                .unwrap(),
            "only 2 bytes",
        ),
        (
            "header not a number",
            Request::post(INFER)
                .header("inference-header-content-length", "ten")
                .body(Body::from("{}"))
                .unwrap(),
            "must be a byte count",
        ),
        (
            "invalid JSON",
            Request::post(INFER)
                .body(Body::from("{\"inputs\": ["))
                .unwrap(),
            "invalid inference request JSON",
        ),
    ];
    for (what, request, fragment) in binary_cases {
        let r = send(&s, request).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {:?}", r.json());
        let message = r.json()["error"].as_str().unwrap().to_string();
        assert!(message.contains(fragment), "{what}: {message}");
    }
    let version_2 = "/v2/models/mobilenet_v1_0.25_128/versions/2/infer";
    let r = send(&s, infer_json(version_2, &json_cases[0].1)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());
    let r = send(&s, get("/v2/models/nope/infer")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json()["error"].is_string(), "the protocol's error format");
    let r = send(&s, get("/v2/nothing-here")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string(), "the protocol's error format");
    let limit = DecodeLimits::default().max_bytes;
    let r = send(&s, infer_binary(INFER, &head(limit), &vec![0; limit])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["error"].is_string());
    let r = send(&s, infer_json("/v2/models/nope/infer", &json_cases[0].1)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());

    // Still healthy, and every refusal was counted under the protocol.
    let ok = send(&s, infer_binary(INFER, &head(raw.len()), &raw)).await;
    assert_eq!(ok.status, StatusCode::OK);
    let metrics = s.metrics().render();
    assert_eq!(
        counted(&metrics, "oip_http", 400) as usize,
        json_cases.len() + 7
    );
    assert_eq!(counted(&metrics, "oip_http", 404), 2);
    assert_eq!(counted(&metrics, "oip_http", 413), 1);
    assert_eq!(counted(&metrics, "oip_http", 200), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_with_retry_after_in_the_protocols_format() {
    let mut cfg = config();
    cfg.max_concurrent_requests = 1;
    let s = service(cfg);
    let held = s.admit("test").unwrap();
    let body =
        json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]});
    let r = send(&s, infer_json(INFER, &body)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert!(r.json()["error"].as_str().unwrap().contains("in flight"));
    drop(held);
    s.begin_drain();
    let r = send(&s, infer_json(INFER, &body)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_parameter_bounds_the_wait_with_504() {
    // No engine: the image can only wait in its queue.
    let s = stalled_service(config());
    let raw = bytes_to_raw(&jpegs(1));
    let head = json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"timeout": 50_000},
    });
    let started = std::time::Instant::now();
    let r = send(&s, infer_binary(INFER, &head, &raw)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", r.json());
    assert!(r.json()["error"].is_string());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(counted(&s.metrics().render(), "oip_http", 504), 1);
}

fn grpc_input(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
) -> model_infer_request::InferInputTensor {
    model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_like_rest_and_maps_errors_to_codes() {
    let s = service(config());
    let (addr, _stop) = start_grpc(s.clone()).await;
    let ch = grpc_channel(addr).await;
    let mut c = GrpcInferenceServiceClient::new(ch.clone());
    let mut health = HealthClient::new(ch);
    let check = HealthCheckRequest {
        service: SERVICE_NAME.into(),
    };
    assert_eq!(
        health
            .check(check.clone())
            .await
            .unwrap()
            .into_inner()
            .status,
        ServingStatus::NotServing as i32
    );
    assert!(
        !c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    s.warm_up().await.unwrap();
    // Health follows readiness through a watch channel: give it a moment.
    let mut status = ServingStatus::NotServing as i32;
    for _ in 0..100 {
        status = health
            .check(check.clone())
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, ServingStatus::Serving as i32);
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: SMALL.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, [-1, 3, 128, 128]);
    assert_eq!(meta.outputs.len(), 2);
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready(SMALL, "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    for bad in [ready("nope", ""), ready(SMALL, "7")] {
        assert_eq!(c.model_ready(bad).await.unwrap_err().code(), Code::NotFound);
    }

    // Images as raw contents; logits and top-5 classification back as raw contents.
    let images = jpegs(2);
    let classify = |k: i64| model_infer_request::InferRequestedOutputTensor {
        name: "probs".into(),
        parameters: [(
            "classification".to_string(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(k)),
            },
        )]
        .into(),
    };
    let request = pb::ModelInferRequest {
        model_name: SMALL.into(),
        id: "g-1".into(),
        inputs: vec![grpc_input("image", "BYTES", vec![2])],
        outputs: vec![
            model_infer_request::InferRequestedOutputTensor {
                name: "logits".into(),
                ..Default::default()
            },
            classify(5),
        ],
        raw_input_contents: vec![bytes_to_raw(&images)],
        ..Default::default()
    };
    let answer = c.model_infer(request.clone()).await.unwrap().into_inner();
    assert_eq!(
        (answer.model_name.as_str(), answer.id.as_str()),
        (SMALL, "g-1")
    );
    assert_eq!(answer.outputs.len(), 2);
    assert_eq!(answer.raw_output_contents.len(), 2);
    assert_eq!(answer.outputs[0].shape, [2, CLASSES as i64]);
    assert_eq!(
        (
            answer.outputs[1].datatype.as_str(),
            answer.outputs[1].shape.as_slice()
        ),
        ("BYTES", [2i64, 5].as_slice())
    );
    let logits = fp32_from_le(&answer.raw_output_contents[0]).unwrap();
    let reference = pool();
    for (i, img) in images.iter().enumerate() {
        let row = &logits[i * CLASSES..(i + 1) * CLASSES];
        assert_eq!(argmax(row) as u64, direct_top1(&reference, SMALL, img) + 1);
    }

    // The same images as FP32 typed contents.
    let x: Vec<f32> = images.iter().flat_map(|i| nchw(i)).collect();
    let mut input = grpc_input("input", "FP32", vec![2, 3, 128, 128]);
    input.contents = Some(pb::InferTensorContents {
        fp32_contents: x,
        ..Default::default()
    });
    let tensors = pb::ModelInferRequest {
        model_name: SMALL.into(),
        inputs: vec![input],
        outputs: vec![model_infer_request::InferRequestedOutputTensor {
            name: "logits".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let answer = c.model_infer(tensors).await.unwrap().into_inner();
    assert!(close(
        &fp32_from_le(&answer.raw_output_contents[0]).unwrap(),
        &logits
    ));

    // Client mistakes and their codes.
    let mut unknown = request.clone();
    unknown.model_name = "nope".into();
    let mut wrong_shape = request.clone();
    wrong_shape.inputs[0].shape = vec![3];
    let mut both = request.clone();
    both.inputs[0].contents = Some(pb::InferTensorContents::default());
    let mut ragged = request.clone();
    ragged.raw_input_contents[0].truncate(10);
    let mut extra = request.clone();
    extra.raw_input_contents.push(vec![1]);
    let mut big_k = request.clone();
    big_k.outputs = vec![classify(0)];
    // A deadline that passes while the images are decoded (1 us). Not a zero grpc-timeout:
    // tonic's own timer may answer that one (CANCELLED) while the message is still arriving.
    let mut short = request.clone();
    short.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(1)),
        },
    );
    let expired = tonic::Request::new(short);
    for (what, req, code) in [
        (
            "unknown model",
            tonic::Request::new(unknown),
            Code::NotFound,
        ),
        (
            "wrong shape",
            tonic::Request::new(wrong_shape),
            Code::InvalidArgument,
        ),
        (
            "contents and raw",
            tonic::Request::new(both),
            Code::InvalidArgument,
        ),
        (
            "truncated raw",
            tonic::Request::new(ragged),
            Code::InvalidArgument,
        ),
        (
            "raw without input",
            tonic::Request::new(extra),
            Code::InvalidArgument,
        ),
        (
            "classification 0",
            tonic::Request::new(big_k),
            Code::InvalidArgument,
        ),
        ("expired", expired, Code::DeadlineExceeded),
    ] {
        assert_eq!(c.model_infer(req).await.unwrap_err().code(), code, "{what}");
    }
    let metrics = s.metrics().render();
    assert_eq!(counted(&metrics, "oip_grpc", 200), 2);
    assert_eq!(counted(&metrics, "oip_grpc", 400), 5);
    assert_eq!(counted(&metrics, "oip_grpc", 404), 1);
    assert_eq!(counted(&metrics, "oip_grpc", 504), 1);
}

/// Protobuf expands as it decodes (an empty `bytes_contents` element: 2 bytes on the wire, a
/// 24-byte Vec in memory); the inference service checks the wire bytes first (api::grpc::budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_requests_that_would_expand_when_decoded() {
    let s = service(config());
    s.warm_up().await.unwrap();
    let (addr, _stop) = start_grpc(s.clone()).await;
    let mut c = GrpcInferenceServiceClient::new(grpc_channel(addr).await);
    let mut empty_images = grpc_input("image", "BYTES", vec![1]);
    empty_images.contents = Some(pb::InferTensorContents {
        bytes_contents: vec![Vec::new(); 300_000],
        ..Default::default()
    });
    let flood_of_elements = pb::ModelInferRequest {
        model_name: SMALL.into(),
        inputs: vec![empty_images],
        ..Default::default()
    };
    let flood_of_tensors = pb::ModelInferRequest {
        model_name: SMALL.into(),
        inputs: vec![Default::default(); 100_000],
        ..Default::default()
    };
    for (what, request) in [
        ("elements", flood_of_elements),
        ("tensors", flood_of_tensors),
    ] {
        let refused = c.model_infer(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
        assert!(
            refused.message().contains("once decoded"),
            "{what}: {refused:?}"
        );
    }
    let index = pb::RepositoryIndexRequest {
        repository_name: "r".repeat(100_000),
        ready: false,
    };
    let refused = c.repository_index(index).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("at most"), "{refused:?}");

    // A real request of many images passes: the budget counts their bytes one to one.
    let images = jpegs(8);
    let mut input = grpc_input("image", "BYTES", vec![8]);
    input.contents = Some(pb::InferTensorContents {
        bytes_contents: images,
        ..Default::default()
    });
    let answer = c
        .model_infer(pb::ModelInferRequest {
            model_name: SMALL.into(),
            inputs: vec![input],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outputs[0].shape[0], 8);
}

/// The request parameter `resize` (`fast` or `exact`) chooses the decode over both bindings:
/// a JPEG four times the model's size gives other logits each way, the same over REST and gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resize_parameter_chooses_the_decode_over_rest_and_grpc() {
    let s = service(config());
    s.warm_up().await.unwrap();
    let images = vec![common::serving::upscaled_jpeg()];
    let raw = bytes_to_raw(&images);
    let rest = |resize: Value| {
        json!({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": raw.len()}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
            "parameters": {"resize": resize},
        })
    };
    let mut logits = Vec::new();
    for mode in ["exact", "fast"] {
        let r = send(&s, infer_binary(INFER, &rest(json!(mode)), &raw)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        logits.push(fp32_from_le(r.binary()).unwrap());
    }
    assert_ne!(logits[0], logits[1], "the two decodes gave the same logits");
    assert_eq!(argmax(&logits[0]), argmax(&logits[1]));
    for bad in [json!("nope"), json!(3)] {
        let r = send(&s, infer_binary(INFER, &rest(bad.clone()), &raw)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    let (addr, _stop) = start_grpc(s.clone()).await;
    let mut c = GrpcInferenceServiceClient::new(grpc_channel(addr).await);
    let request = |mode: &str| pb::ModelInferRequest {
        model_name: SMALL.into(),
        inputs: vec![grpc_input("image", "BYTES", vec![1])],
        outputs: vec![model_infer_request::InferRequestedOutputTensor {
            name: "logits".into(),
            ..Default::default()
        }],
        raw_input_contents: vec![raw.clone()],
        parameters: [(
            "resize".to_string(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(
                    mode.into(),
                )),
            },
        )]
        .into(),
        ..Default::default()
    };
    for (mode, rest_logits) in ["exact", "fast"].into_iter().zip(&logits) {
        let answer = c.model_infer(request(mode)).await.unwrap().into_inner();
        let got = fp32_from_le(&answer.raw_output_contents[0]).unwrap();
        assert_eq!(&got, rest_logits, "{mode}");
    }
    let refused = c.model_infer(request("nope")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}
