//! The HTTP API in-process (the axum app driven without a socket) over two real variants of the
//! zoo: every input form, routing, errors, batching, overload, deadlines, readiness and metrics.

use crate::common;

use common::serving::{
    config, direct_top1, jpegs, pool, predicted_fastest, service, stalled_service, until_queued,
    MID, SMALL,
};

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use mobilenet_serve::api::auth::Auth;
use mobilenet_serve::app;
use mobilenet_serve::commands::eval::{EvalReport, VariantResult};
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::kernels::{KernelSet, TierChoice};
use mobilenet_serve::serving::Service;
use serde_json::Value;
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    json: Value,
}

async fn send(service: &Arc<Service>, request: Request<Body>) -> Reply {
    let response = app(service.clone(), Auth::default())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        json,
    }
}

fn post(uri: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn multipart(files: &[Vec<u8>]) -> (String, Vec<u8>) {
    let boundary = "mobilenet-test-boundary";
    let mut body = Vec::new();
    for (i, f) in files.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file{i}\"; \
                 filename=\"{i}.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(f);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn top1(predictions: &Value) -> u64 {
    predictions[0]["index"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_jpeg_is_answered_as_the_engine_computes_it() {
    let s = service(config());
    let images = jpegs(3);
    let reference = pool();
    for img in &images {
        let r = send(
            &s,
            post(&format!("/classify?model={MID}"), "image/jpeg", img.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(r.json["model"], MID);
        let preds = &r.json["predictions"];
        assert_eq!(preds.as_array().unwrap().len(), 5);
        assert_eq!(top1(preds), direct_top1(&reference, MID, img));
        let scores: Vec<f64> = preds
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!(scores.iter().all(|&p| (0.0..=1.0).contains(&p)));
        assert!(preds[0]["label"].as_str().is_some_and(|l| !l.is_empty()));
        for stage in [
            "decode",
            "preprocess",
            "queue",
            "inference",
            "postprocess",
            "total",
        ] {
            assert!(
                r.json["timings_ms"][stage].as_f64().unwrap() >= 0.0,
                "{stage}"
            );
            let timing = r.headers["server-timing"].to_str().unwrap();
            assert!(timing.contains(&format!("{stage};dur=")), "{timing}");
        }
        assert!(r.json.get("target_met").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_multipart_and_octet_stream_agree_and_several_images_give_several_lists() {
    let s = service(config());
    let images = jpegs(2);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let raw: Vec<u64> = {
        let mut v = Vec::new();
        for img in &images {
            let r = send(
                &s,
                post("/classify?top_k=1", "application/octet-stream", img.clone()),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.json);
            v.push(top1(&r.json["predictions"]));
        }
        v
    };

    let one = serde_json::json!({ "image": format!("data:image/jpeg;base64,{}", b64(&images[0])) });
    let r = send(
        &s,
        post("/classify?top_k=1", "application/json", one.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(top1(&r.json["predictions"]), raw[0]);

    let many = serde_json::json!({ "images": [b64(&images[0]), b64(&images[1])] });
    let r = send(
        &s,
        post("/classify?top_k=1", "application/json", many.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let lists = r.json["predictions"].as_array().unwrap();
    assert_eq!(lists.len(), 2);
    assert_eq!([top1(&lists[0]), top1(&lists[1])], [raw[0], raw[1]]);

    let (ct, body) = multipart(&images);
    let r = send(&s, post("/classify?top_k=1", &ct, body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let lists = r.json["predictions"].as_array().unwrap();
    assert_eq!([top1(&lists[0]), top1(&lists[1])], [raw[0], raw[1]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_variant_is_chosen_by_name_by_cell_or_by_target() {
    let s = service(config());
    s.warm_up().await.unwrap();
    let img = jpegs(1).remove(0);
    let model_of = |r: &Reply| r.json["model"].as_str().unwrap().to_string();
    let ask = |q: &str| post(&format!("/classify?{q}"), "image/jpeg", img.clone());

    // With no selection: the most accurate loaded variant.
    assert_eq!(model_of(&send(&s, ask("")).await), MID);
    assert_eq!(
        model_of(&send(&s, ask(&format!("model={SMALL}"))).await),
        SMALL
    );
    assert_eq!(
        model_of(&send(&s, ask("alpha=0.25&resolution=128")).await),
        SMALL
    );
    // A generous budget buys the most accurate; a low floor the fastest.
    let r = send(&s, ask("max_latency_ms=60000")).await;
    assert_eq!(
        (model_of(&r), r.json["target_met"].clone()),
        (MID.into(), Value::Bool(true))
    );
    let fastest = predicted_fastest(&s);
    let r = send(&s, ask("min_top1=1")).await;
    assert_eq!(
        (model_of(&r), r.json["target_met"].clone()),
        (fastest, Value::Bool(true))
    );
    // The published top-1 of 0.5_160 is 59.1%: a floor above the smaller one's picks it.
    assert_eq!(model_of(&send(&s, ask("min_top1=50")).await), MID);
    // Unreachable: 422, or the fastest with target_met false when asked.
    let r = send(&s, ask("min_top1=99")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "target_unreachable");
    let fastest = predicted_fastest(&s);
    let r = send(&s, ask("min_top1=99&fallback=fastest")).await;
    assert_eq!(
        (model_of(&r), r.json["target_met"].clone()),
        (fastest, Value::Bool(false))
    );
}

/// `SMALL` in both precisions, loaded once for the binary.
fn both_precisions() -> ModelPool {
    static POOL: OnceLock<ModelPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let opts = LoadOptions {
            variants: Some(vec![SMALL.into(), format!("{SMALL}_quant")]),
            resolution: None,
            kernels: KernelSet::select(TierChoice::Auto).unwrap(),
        };
        ModelPool::load(&common::zoo_dir(), &opts).unwrap()
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_int8_variant_of_a_cell_is_chosen_by_precision_and_computed_in_int8() {
    let pool = both_precisions();
    let s = Service::new(pool.clone(), config()).unwrap();
    s.warm_up().await.unwrap();
    let quant = format!("{SMALL}_quant");
    let img = jpegs(1).remove(0);
    let ask = |q: &str| post(&format!("/classify?{q}"), "image/jpeg", img.clone());
    let model_of = |r: &Reply| r.json["model"].as_str().unwrap_or("-").to_string();

    // The default and a bare cell stay in float; `precision` moves to the int8 twin.
    assert_eq!(model_of(&send(&s, ask("")).await), SMALL);
    assert_eq!(
        model_of(&send(&s, ask("alpha=0.25&resolution=128")).await),
        SMALL
    );
    let r = send(&s, ask("alpha=0.25&resolution=128&precision=int8")).await;
    assert_eq!(model_of(&r), quant, "{}", r.json);
    assert_eq!(
        top1(&r.json["predictions"]),
        direct_top1(&pool, &quant, &img)
    );
    assert_eq!(model_of(&send(&s, ask("precision=int8")).await), quant);
    assert_eq!(
        model_of(&send(&s, ask("precision=fp32&min_top1=1")).await),
        SMALL
    );
    // A name already says its precision; an unknown precision is a client mistake.
    for q in [
        format!("model={SMALL}&precision=int8"),
        "precision=int4".into(),
    ] {
        let r = send(&s, ask(&q)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.json);
        assert_eq!(r.json["error"]["code"], "bad_request", "{q}");
    }
    // The list says which is which.
    let r = send(&s, get("/v1/models")).await;
    let precisions: Vec<(String, String)> = r.json["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["precision"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        precisions.contains(&(SMALL.into(), "fp32".into())),
        "{precisions:?}"
    );
    assert!(
        precisions.contains(&(quant.clone(), "int8".into())),
        "{precisions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_the_right_4xx_with_a_json_error() {
    let s = service(config());
    let img = jpegs(1).remove(0);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "model=nope",
            "image/jpeg",
            img.clone(),
            404,
            "unknown_model",
        ),
        (
            "alpha=0.75&resolution=224",
            "image/jpeg",
            img.clone(),
            404,
            "unknown_model",
        ),
        ("alpha=0.5", "image/jpeg", img.clone(), 400, "bad_request"),
        (
            "model=x&alpha=0.5&resolution=160",
            "image/jpeg",
            img.clone(),
            400,
            "bad_request",
        ),
        ("top_k=0", "image/jpeg", img.clone(), 400, "bad_request"),
        ("top_k=1001", "image/jpeg", img.clone(), 400, "bad_request"),
        ("top_k=-3", "image/jpeg", img.clone(), 400, "bad_request"),
        ("top_k=NaN", "image/jpeg", img.clone(), 400, "bad_request"),
        (
            "max_latency_ms=-1",
            "image/jpeg",
            img.clone(),
            400,
            "bad_request",
        ),
        (
            "max_latency_ms=NaN",
            "image/jpeg",
            img.clone(),
            400,
            "bad_request",
        ),
        (
            "min_top1=101",
            "image/jpeg",
            img.clone(),
            400,
            "bad_request",
        ),
        (
            "fallback=fastest",
            "image/jpeg",
            img.clone(),
            400,
            "bad_request",
        ),
        (
            "timeout_ms=0",
            "image/jpeg",
            img.clone(),
            400,
            "bad_request",
        ),
        ("modle=x", "image/jpeg", img.clone(), 400, "bad_request"),
        (
            "",
            "image/jpeg",
            b"definitely not an image".to_vec(),
            400,
            "undecodable_image",
        ),
        ("", "image/jpeg", Vec::new(), 400, "undecodable_image"),
        (
            "",
            "image/jpeg",
            img[..img.len() / 3].to_vec(),
            400,
            "undecodable_image",
        ),
        ("", "text/plain", img.clone(), 415, "unsupported_media_type"),
        (
            "",
            "application/json",
            b"{\"image\": 3}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "",
            "application/json",
            b"{\"image\": \"%%%\"}".to_vec(),
            400,
            "bad_request",
        ),
        ("", "application/json", b"{}".to_vec(), 400, "bad_request"),
        (
            "",
            "application/json",
            b"{\"images\": []}".to_vec(),
            400,
            "bad_request",
        ),
        ("", "multipart/form-data", img.clone(), 400, "bad_request"),
    ];
    for (query, ct, body, status, code) in cases {
        let r = send(&s, post(&format!("/classify?{query}"), ct, body)).await;
        assert_eq!(r.status.as_u16(), status, "{query} {ct}: {}", r.json);
        assert_eq!(r.json["error"]["code"], code, "{query} {ct}: {}", r.json);
        assert!(r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let r = send(&s, get("/nowhere")).await;
    assert_eq!(
        (r.status.as_u16(), r.json["error"]["code"].clone()),
        (404, "not_found".into())
    );
    let r = send(&s, get("/classify")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json["error"]["code"], "method_not_allowed");
    let r = send(&s, get("/v1/models/nope")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json["error"]["message"].as_str().unwrap().contains(SMALL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let mut cfg = config();
    cfg.decode_limits.max_bytes = 4096;
    let s = service(cfg);
    let img = jpegs(1).remove(0);
    assert!(img.len() > 4096);
    let r = send(&s, post("/classify", "image/jpeg", img.clone())).await;
    assert_eq!(
        (r.status.as_u16(), r.json["error"]["code"].clone()),
        (413, "too_large".into())
    );
    // Without a declared length, the limit bites while reading.
    let stream = futures_body(img.clone());
    let r = send(&s, post("/classify", "image/jpeg", stream)).await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.json);
    let (ct, body) = multipart(&[img]);
    let r = send(&s, post("/classify", &ct, body)).await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.json);
}

/// A body of unknown length (chunked), so that only reading it can find it too large.
fn futures_body(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(tokio_stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_images_are_batched_together_and_answered_alike() {
    let s = stalled_service(config());
    let img = jpegs(1).remove(0);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (s, img) = (s.clone(), img.clone());
        tasks.push(tokio::spawn(async move {
            send(
                &s,
                post(&format!("/classify?model={SMALL}"), "image/jpeg", img),
            )
            .await
        }));
    }
    until_queued(&s, SMALL, 3).await;
    s.start_engine().unwrap();
    let mut answers = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        answers.push(r.json["predictions"].clone());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    let metrics = s.metrics().render();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(SMALL))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .to_string()
    };
    // One batch of three images.
    assert!(
        line("mobilenet_batch_size_count").ends_with(" 1"),
        "{metrics}"
    );
    assert!(
        line("mobilenet_batch_size_sum").ends_with(" 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_at_once_with_retry_after() {
    let mut cfg = config();
    cfg.max_queue = 2;
    cfg.max_images_per_request = 2;
    let s = stalled_service(cfg);
    let img = jpegs(1).remove(0);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let (s, img) = (s.clone(), img.clone());
        waiting.push(tokio::spawn(async move {
            send(
                &s,
                post(&format!("/classify?model={SMALL}"), "image/jpeg", img),
            )
            .await
        }));
    }
    until_queued(&s, SMALL, 2).await;
    let r = send(
        &s,
        post(
            &format!("/classify?model={SMALL}"),
            "image/jpeg",
            img.clone(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "queue_full");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // Another variant's queue is independent.
    let other = tokio::spawn({
        let (s, img) = (s.clone(), img.clone());
        async move {
            send(
                &s,
                post(&format!("/classify?model={MID}"), "image/jpeg", img),
            )
            .await
        }
    });
    until_queued(&s, MID, 1).await;
    s.start_engine().unwrap();
    for t in waiting {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(other.await.unwrap().status, StatusCode::OK);
    assert!(s.metrics().render().contains(&format!(
        "mobilenet_rejected_total{{reason=\"queue_full\",variant=\"{SMALL}\"}} 1"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_answers_429() {
    let mut cfg = config();
    cfg.max_concurrent_requests = 1;
    let s = stalled_service(cfg);
    let img = jpegs(1).remove(0);
    let first = tokio::spawn({
        let (s, img) = (s.clone(), img.clone());
        async move { send(&s, post("/classify", "image/jpeg", img)).await }
    });
    until_queued(&s, MID, 1).await;
    let r = send(&s, post("/classify", "image/jpeg", img)).await;
    assert_eq!(
        (r.status.as_u16(), r.json["error"]["code"].clone()),
        (429, "overloaded".into())
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    s.start_engine().unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_gets_504_and_is_never_computed() {
    let s = stalled_service(config());
    let img = jpegs(1).remove(0);
    let r = send(
        &s,
        post(
            &format!("/classify?model={SMALL}&timeout_ms=100"),
            "image/jpeg",
            img.clone(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "deadline_exceeded");
    s.start_engine().unwrap();
    // A live request after it is computed alone: the expired image was dropped unseen.
    let r = send(
        &s,
        post(&format!("/classify?model={SMALL}"), "image/jpeg", img),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let metrics = s.metrics().render();
    assert!(
        metrics.contains(&format!(
            "mobilenet_batch_size_sum{{variant=\"{SMALL}\"}} 1\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "mobilenet_dropped_images_total{{reason=\"deadline\",variant=\"{SMALL}\"}} 1"
    )));
}

#[test]
fn a_configuration_that_cannot_work_is_refused_at_start() {
    let mut cfg = config();
    cfg.max_images_per_request = cfg.max_queue + 1;
    let err = Service::without_engine(pool(), cfg).unwrap_err();
    assert!(err.to_string().contains("never fit"), "{err}");
    let mut cfg = config();
    cfg.batch.max_batch = 0;
    assert!(Service::without_engine(pool(), cfg).is_err());
    let mut cfg = config();
    cfg.engine_threads = 0;
    assert!(Service::without_engine(pool(), cfg).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_may_use_the_whole_body_limit() {
    // A noisy 1000x1000 PNG is about 3 MB: over axum's default 2 MB, under our 10 MB.
    let mut state = 0x1234_5678u32;
    let noise = image::RgbImage::from_fn(1000, 1000, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    assert!(png.len() > 2 << 20, "{} bytes", png.len());
    let mut cfg = config();
    cfg.decode_limits.max_bytes = 10 << 20;
    let s = service(cfg);
    let (ct, body) = multipart(&[png]);
    let r = send(&s, post("/classify", &ct, body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_warm_up_and_draining() {
    let s = service(config());
    assert_eq!(send(&s, get("/healthz")).await.status, StatusCode::OK);
    let r = send(&s, get("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // Before warm-up nothing is measured: a latency target cannot be routed yet.
    let img = jpegs(1).remove(0);
    let r = send(
        &s,
        post("/classify?max_latency_ms=100", "image/jpeg", img.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.json);
    // Explicit choices are served meanwhile.
    let r = send(
        &s,
        post(&format!("/classify?model={SMALL}"), "image/jpeg", img),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(s.metrics().render().contains("\nmobilenet_ready 0\n"));
    s.warm_up().await.unwrap();
    assert_eq!(send(&s, get("/readyz")).await.status, StatusCode::OK);
    assert!(s.metrics().render().contains("\nmobilenet_ready 1\n"));
    s.begin_drain();
    assert_eq!(
        send(&s, get("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(s.metrics().render().contains("\nmobilenet_ready 0\n"));
    let img = jpegs(1).remove(0);
    let r = send(&s, post("/classify", "image/jpeg", img)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(send(&s, get("/healthz")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_costs_accuracy_with_its_source_and_live_latency() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("eval.json");
    // Written the way `eval --json` writes it.
    let report = EvalReport {
        dataset: "test".into(),
        images: 10,
        batch: 1,
        kernels: "scalar".into(),
        decode_ms_per_image: 1.0,
        resize: Default::default(),
        variants: vec![VariantResult {
            name: SMALL.into(),
            alpha: 0.25,
            resolution: 128,
            images: 10,
            top1: 12.5,
            top5: 40.0,
            ms_per_image: 1.0,
            preprocess_ms_per_image: 0.1,
            mult_adds: None,
            published_top1: None,
            top1_classes: Vec::new(),
        }],
    };
    std::fs::write(&results, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let mut cfg = config();
    cfg.eval_results = Some(results);
    let s = service(cfg);
    s.warm_up().await.unwrap();
    let img = jpegs(1).remove(0);
    let r = send(
        &s,
        post(&format!("/classify?model={SMALL}"), "image/jpeg", img),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let r = send(&s, get("/v1/models")).await;
    assert_eq!(r.status, StatusCode::OK);
    let models = r.json["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let small = models.iter().find(|m| m["name"] == SMALL).unwrap();
    let mid = models.iter().find(|m| m["name"] == MID).unwrap();
    assert_eq!(small["accuracy"]["source"], "measured");
    assert_eq!(small["accuracy"]["top1"], 12.5);
    assert_eq!(mid["accuracy"]["source"], "published");
    assert_eq!(mid["accuracy"]["top1"], 59.1);
    assert_eq!(small["resolution"], 128);
    assert_eq!(small["mult_adds"], 13_570_304);
    assert!(mid["params"].as_u64().unwrap() > small["params"].as_u64().unwrap());
    assert_eq!(small["latency_ms"]["samples"], 1);
    assert!(small["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(mid["latency_ms"]["predicted"].as_f64().unwrap() > 0.0);
    // The default is the most accurate.
    assert_eq!(
        (mid["default"].clone(), small["default"].clone()),
        (true.into(), false.into())
    );
    // Dominated means another variant is both faster (predicted) and more accurate; which one is
    // depends on this run's timings, so check the definition rather than a fixed answer.
    let facts = |m: &Value| {
        (
            m["accuracy"]["top1"].as_f64().unwrap(),
            m["latency_ms"]["predicted"].as_f64().unwrap(),
        )
    };
    for (me, other) in [(small, mid), (mid, small)] {
        let (a, b) = (facts(me), facts(other));
        assert_eq!(me["dominated"], b.0 > a.0 && b.1 < a.1, "{me} {other}");
    }
    let r = send(&s, get(&format!("/v1/models/{MID}"))).await;
    assert_eq!(r.json["name"], MID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_the_traffic() {
    let s = service(config());
    let img = jpegs(1).remove(0);
    let r = send(
        &s,
        post(&format!("/classify?model={MID}"), "image/jpeg", img),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(
        &s,
        post("/classify?model=nope", "image/jpeg", b"x".to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let response = app(s.clone(), Auth::default())
        .oneshot(get("/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    for expected in [
        format!("mobilenet_requests_total{{code=\"200\",protocol=\"http\",variant=\"{MID}\"}} 1"),
        "mobilenet_requests_total{code=\"404\",protocol=\"http\",variant=\"none\"} 1".into(),
        format!(
            "mobilenet_request_duration_seconds_count{{stage=\"inference\",variant=\"{MID}\"}} 1"
        ),
        format!("mobilenet_request_duration_seconds_count{{stage=\"total\",variant=\"{MID}\"}} 1"),
        format!("mobilenet_batch_size_count{{variant=\"{MID}\"}} 1"),
        format!("mobilenet_queue_depth{{variant=\"{SMALL}\"}} 0"),
        format!("mobilenet_top1_accuracy{{source=\"published\",variant=\"{MID}\"}} 59.1"),
        format!("mobilenet_mult_adds{{variant=\"{SMALL}\"}} 13570304"),
        format!(
            "mobilenet_variant_info{{alpha=\"0.25\",precision=\"fp32\",resolution=\"128\",\
             variant=\"{SMALL}\"}} 1"
        ),
        "mobilenet_in_flight_requests 0".into(),
        "process_resident_memory_bytes".into(),
    ] {
        assert!(text.contains(&expected), "missing {expected}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408_and_frees_its_slot() {
    let mut cfg = config();
    cfg.request_timeout = std::time::Duration::from_millis(300);
    cfg.max_concurrent_requests = 1;
    let s = service(cfg);
    let first_bytes = tokio_stream::iter(vec![Ok::<_, std::io::Error>(vec![0xFF, 0xD8])]);
    let stalled = tokio_stream::StreamExt::chain(first_bytes, tokio_stream::pending());
    let r = send(
        &s,
        post("/classify", "image/jpeg", Body::from_stream(stalled)),
    )
    .await;
    assert_eq!(r.status.as_u16(), 408, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "request_timeout");
    // The one admission slot is free again.
    let img = jpegs(1).remove(0);
    let r = send(
        &s,
        post(&format!("/classify?model={SMALL}"), "image/jpeg", img),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_and_its_assets_are_served_from_the_binary() {
    let s = stalled_service(config());
    for (path, media, needle) in [
        ("/", "text/html", "/static/app.js"),
        ("/static/app.js", "text/javascript", "/v1/models"),
        ("/static/style.css", "text/css", "#chart"),
    ] {
        let response = app(s.clone(), Auth::default())
            .oneshot(get(path))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with(media), "{path}: {content_type}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains(needle), "{path} lacks {needle}");
        // Offline: nothing is fetched from another host.
        assert!(!text.contains("https://"), "{path} refers to another host");
    }
}

/// The engine threads run `--engine-nice` nicer than the rest of the process (by default
/// [`DEFAULT_ENGINE_NICE`]), and the threads that answer keep the process's priority.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_threads_run_as_nice_as_configured_and_the_others_do_not() {
    use mobilenet_serve::serving::workers::DEFAULT_ENGINE_NICE;
    use std::time::Duration;
    // Field 19 of /proc/.../stat, counted after the parenthesised name (which may hold spaces).
    let nice = |stat: &str| -> i32 {
        let after_name = stat.rsplit_once(')').unwrap().1;
        after_name
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap()
    };
    let base = nice(&std::fs::read_to_string("/proc/self/stat").unwrap());
    for engine_nice in [10, 3, DEFAULT_ENGINE_NICE] {
        let mut cfg = config();
        cfg.engine_nice = engine_nice;
        let engine_threads = cfg.engine_threads;
        let service = service(cfg);
        let expected = (base + engine_nice).min(19);
        let started = std::time::Instant::now();
        loop {
            let (mut engine, mut others) = (Vec::new(), Vec::new());
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let dir = task.unwrap().path();
                let (Ok(comm), Ok(stat)) = (
                    std::fs::read_to_string(dir.join("comm")),
                    std::fs::read_to_string(dir.join("stat")),
                ) else {
                    continue;
                };
                if comm.starts_with("engine-") {
                    engine.push(nice(&stat));
                } else {
                    others.push(nice(&stat));
                }
            }
            // Only the engine threads: the runtime's workers, which answer, keep the process's.
            assert!(
                others.iter().all(|n| *n == base),
                "other threads at {others:?}"
            );
            // Other tests' services (at the default) and the previous one's threads, still
            // finishing, run in this process too: wait until this service's are all there.
            if engine.iter().filter(|n| **n == expected).count() >= engine_threads {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "engine threads at nice {engine:?}, the process at {base}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(service);
    }
}

/// A client that hangs up while its image waits in the queue costs no inference: hyper reads
/// an HTTP/1 connection for EOF while its handler runs and drops the handler when it comes, and
/// the batcher skips a job nobody waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_hangs_up_while_queued_costs_no_inference() {
    use tokio::io::AsyncWriteExt;
    let s = stalled_service(config());
    let (addr, _stop) = common::serving::serve_http(s.clone()).await;
    // The server's warm-up image waits in the queue first.
    until_queued(&s, SMALL, 1).await;
    let img = jpegs(1).remove(0);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /classify?model={SMALL} HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n\
         Content-Length: {}\r\n\r\n",
        img.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&img).await.unwrap();
    until_queued(&s, SMALL, 2).await;
    assert_eq!(s.metrics().in_flight.get(), 1);
    drop(tcp);
    let started = std::time::Instant::now();
    while s.metrics().in_flight.get() != 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the handler outlived its client"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    s.start_engine().unwrap();
    while !s.is_ready() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no warm-up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Had the job been computed, nothing would count it as cancelled.
    let metrics = s.metrics().render();
    let dropped =
        format!("mobilenet_dropped_images_total{{reason=\"cancelled\",variant=\"{SMALL}\"}} 1");
    assert!(metrics.contains(&dropped), "{metrics}");
}

/// `resize=fast` (the default) decodes a large JPEG at a reduced scale, `resize=exact` in full;
/// both classify it alike, and anything else is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resize_parameter_chooses_between_the_scaled_and_the_full_decode() {
    let s = service(config());
    s.warm_up().await.unwrap();
    let jpeg = common::serving::upscaled_jpeg();
    let mut answers = Vec::new();
    for mode in ["exact", "fast", ""] {
        let uri = format!("/classify?model={SMALL}&top_k=1&resize={mode}");
        let uri = uri.trim_end_matches("&resize=");
        let r = send(&s, post(uri, "image/jpeg", jpeg.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{mode}: {}", r.json);
        answers.push((
            r.json["predictions"][0]["index"].clone(),
            r.json["timings_ms"]["preprocess"].as_f64().unwrap(),
        ));
    }
    assert_eq!(answers[0].0, answers[1].0, "{answers:?}");
    assert_eq!(answers[1].0, answers[2].0, "{answers:?}");
    let r = send(
        &s,
        post(
            &format!("/classify?model={SMALL}&resize=nope"),
            "image/jpeg",
            jpeg,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("`fast` or `exact`"), "{message}");
}

/// Two batches due at once (one per variant) run one per engine thread in throughput mode, and
/// split across both otherwise; the answers are the engine's either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_due_together_run_one_per_thread_in_throughput_mode() {
    let img = jpegs(1).remove(0);
    let reference = pool();
    for (throughput_mode, mode) in [(true, "solo"), (false, "team")] {
        let mut cfg = config();
        cfg.throughput_mode = throughput_mode;
        let s = stalled_service(cfg);
        let mut tasks = Vec::new();
        for variant in [SMALL, MID] {
            let (s, img) = (s.clone(), img.clone());
            tasks.push(tokio::spawn(async move {
                let uri = format!("/classify?model={variant}&top_k=1");
                send(&s, post(&uri, "image/jpeg", img)).await
            }));
        }
        until_queued(&s, SMALL, 1).await;
        until_queued(&s, MID, 1).await;
        s.start_engine().unwrap();
        for (task, variant) in tasks.into_iter().zip([SMALL, MID]) {
            let r = task.await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.json);
            assert_eq!(
                top1(&r.json["predictions"]),
                direct_top1(&reference, variant, &img),
                "{variant} in {mode} mode"
            );
        }
        let metrics = s.metrics().render();
        for variant in [SMALL, MID] {
            let line =
                format!("mobilenet_batches_total{{mode=\"{mode}\",variant=\"{variant}\"}} 1");
            assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
        }
    }
}
