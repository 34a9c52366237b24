//! The optional API key over HTTP (every route of the OpenAPI document, answered as described)
//! and gRPC (our service, the Open Inference Protocol, health).

use crate::common;

use common::openapi::{conforms, document, operations, send_as};
use common::serving::{config, grpc_channel, jpegs, pool, serve_http_with, start_grpc_with, SMALL};

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use mobilenet_serve::api::auth::{ApiKey, Auth};
use mobilenet_serve::api::grpc::oip::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use mobilenet_serve::api::grpc::oip::pb::ModelMetadataRequest;
use mobilenet_serve::api::grpc::pb::classifier_client::ClassifierClient;
use mobilenet_serve::api::grpc::pb::ClassifyRequest;
use mobilenet_serve::serving::Service;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const KEY: &str = "s3cret-key-for-the-tests";

/// A service, and the key asked of its clients.
fn secured(protect_health: bool) -> (Arc<Service>, Auth) {
    let auth = Auth {
        key: Some(ApiKey::new(KEY).unwrap()),
        protect_health,
    };
    (Service::new(pool(), config()).unwrap(), auth)
}

/// `message` with the key in its metadata.
fn with_key<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    r
}

fn fill(path: &str) -> String {
    path.replace("{name}", SMALL).replace("{version}", "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_asks_for_the_key_as_its_class_says() {
    for protect_health in [false, true] {
        let (s, auth) = secured(protect_health);
        s.warm_up().await.unwrap();
        let doc = document();
        for (path, method, op) in operations(&doc) {
            let what = format!("{method} {path} (health protected: {protect_health})");
            let request = |authorization: Option<&str>| {
                let mut r = Request::builder().method(method.clone()).uri(fill(&path));
                if let Some(a) = authorization {
                    r = r.header(header::AUTHORIZATION, a);
                }
                r.body(Body::empty()).unwrap()
            };
            // Written out here rather than asked of `access`, the function under test.
            let public = [
                "/",
                "/docs",
                "/openapi.json",
                "/static/app.js",
                "/static/docs.js",
                "/static/style.css",
            ];
            let health = [
                "/healthz",
                "/readyz",
                "/metrics",
                "/v2",
                "/v2/health/live",
                "/v2/health/ready",
            ];
            let needed = if public.contains(&path.as_str()) {
                false
            } else if health.contains(&path.as_str()) {
                protect_health
            } else {
                true
            };
            let anonymous = send_as(&s, &auth, request(None)).await;
            let wrong = send_as(&s, &auth, request(Some("Bearer not-the-key-at-all"))).await;
            let right = send_as(&s, &auth, request(Some(&format!("Bearer {KEY}")))).await;
            if needed {
                for reply in [&anonymous, &wrong] {
                    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
                    assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer", "{what}");
                    conforms(&doc, &op, reply, &what);
                }
            } else {
                assert_ne!(anonymous.status, StatusCode::UNAUTHORIZED, "{what}");
            }
            assert_ne!(right.status, StatusCode::UNAUTHORIZED, "{what}");
            let text = String::from_utf8_lossy(&right.body);
            assert!(!text.contains(KEY), "{what}: the key is never echoed");
        }
    }
}

/// Spellings of protected routes that the router does not serve as such still need the key
/// (they must never reach a handler without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_variants_do_not_get_around_the_key() {
    let (s, auth) = secured(false);
    for (method, path) in [
        ("POST", "/classify/"),
        ("POST", "//classify"),
        ("POST", "/%63lassify"),
        ("HEAD", "/v1/models"),
        ("GET", "/v1/models/"),
        ("GET", "/v2/models/x/../../v1/models"),
        ("GET", "/static/../v1/models"),
        ("GET", "/healthz/../v1/models"),
        ("GET", "/v2/models"),
        ("OPTIONS", "/classify"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let reply = send_as(&s, &auth, request).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    for path in ["/", "/healthz", "/static/app.js", "/openapi.json"] {
        let reply = send_as(&s, &auth, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_key_classifies_and_errors_keep_their_protocol_format() {
    let (s, auth) = secured(false);
    let jpeg = jpegs(1).remove(0);
    let classify = |authorization: &str| {
        Request::post(format!("/classify?model={SMALL}"))
            .header(header::CONTENT_TYPE, "image/jpeg")
            .header(header::AUTHORIZATION, authorization)
            .body(Body::from(jpeg.clone()))
            .unwrap()
    };
    let ok = send_as(&s, &auth, classify(&format!("Bearer {KEY}"))).await;
    assert_eq!(ok.status, StatusCode::OK);
    let refused = send_as(&s, &auth, classify(&format!("Basic {KEY}"))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["error"]["code"], "unauthorized");
    let oip = Request::post(format!("/v2/models/{SMALL}/infer"))
        .body(Body::from("{}"))
        .unwrap();
    let refused = send_as(&s, &auth, oip).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("API key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_services_ask_for_the_key_in_metadata() {
    for protect_health in [false, true] {
        let (s, auth) = secured(protect_health);
        s.warm_up().await.unwrap();
        let (addr, _stop) = start_grpc_with(s.clone(), auth.clone()).await;
        let channel = grpc_channel(addr).await;

        let mut classifier = ClassifierClient::new(channel.clone());
        let request = || ClassifyRequest {
            images: vec![jpegs(1).remove(0)],
            model: Some(SMALL.into()),
            ..Default::default()
        };
        let e = classifier
            .classify(tonic::Request::new(request()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(!e.message().contains(KEY));
        classifier.classify(with_key(request())).await.unwrap();

        let mut oip = GrpcInferenceServiceClient::new(channel.clone());
        let metadata = || ModelMetadataRequest {
            name: SMALL.into(),
            version: String::new(),
        };
        let e = oip
            .model_metadata(tonic::Request::new(metadata()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        oip.model_metadata(with_key(metadata())).await.unwrap();

        let mut health = HealthClient::new(channel);
        let anonymous = health
            .check(tonic::Request::new(HealthCheckRequest::default()))
            .await;
        match protect_health {
            false => assert!(anonymous.is_ok()),
            true => assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated),
        }
        health
            .check(with_key(HealthCheckRequest::default()))
            .await
            .unwrap();
    }
}

/// The command line's client sends the key: `healthcheck` (a container's HEALTHCHECK with
/// `--auth-health`) and `classify --url`, both reading API_KEY as the server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_key_from_the_environment() {
    let (s, auth) = secured(true);
    s.warm_up().await.unwrap();
    let (addr, _stop) = serve_http_with(s, auth).await;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.jpg");
    std::fs::write(&image, jpegs(1).remove(0)).unwrap();
    let run = |args: Vec<String>, key: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"));
        command.args(&args).env_remove("API_KEY");
        if let Some(k) = key {
            command.env("API_KEY", k);
        }
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let url = format!("http://{addr}");
    let health = || {
        vec![
            "healthcheck".into(),
            "--url".into(),
            format!("{url}/readyz"),
        ]
    };
    assert!(!run(health(), None).await.unwrap().status.success());
    assert!(run(health(), Some(KEY)).await.unwrap().status.success());
    let classify = || {
        vec![
            "classify".into(),
            "--url".into(),
            url.clone(),
            "--model".into(),
            SMALL.into(),
            image.display().to_string(),
        ]
    };
    let refused = run(classify(), None).await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("API key"));
    let out = run(classify(), Some(KEY)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
