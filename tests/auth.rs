//! The optional API key over HTTP (every route of the OpenAPI document, answered as described)
//! and gRPC (our service, the Open Inference Protocol, health).

mod common;

use common::openapi::{conforms, document, operations, send};
use common::serving::{config, grpc_channel, jpegs, pool, start_grpc, SMALL};

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use mobilenet_serve::api::auth::{access, Access, ApiKey, Auth};
use mobilenet_serve::api::grpc::pb::classifier_client::ClassifierClient;
use mobilenet_serve::api::grpc::pb::ClassifyRequest;
use mobilenet_serve::api::oip_grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use mobilenet_serve::api::oip_grpc::pb::ModelMetadataRequest;
use mobilenet_serve::service::Service;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const KEY: &str = "s3cret-key-for-the-tests";

fn secured(protect_health: bool) -> Arc<Service> {
    let mut c = config();
    c.auth = Auth {
        key: Some(ApiKey::new(KEY).unwrap()),
        protect_health,
    };
    Service::new(pool(), c, true).unwrap()
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
        let s = secured(protect_health);
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
            let needed = match access(&path) {
                Access::Public => false,
                Access::Health => protect_health,
                Access::Protected => true,
            };
            let anonymous = send(&s, request(None)).await;
            let wrong = send(&s, request(Some("Bearer not-the-key-at-all"))).await;
            let right = send(&s, request(Some(&format!("Bearer {KEY}")))).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_key_classifies_and_errors_keep_their_protocol_format() {
    let s = secured(false);
    let jpeg = jpegs(1).remove(0);
    let classify = |authorization: &str| {
        Request::post(format!("/classify?model={SMALL}"))
            .header(header::CONTENT_TYPE, "image/jpeg")
            .header(header::AUTHORIZATION, authorization)
            .body(Body::from(jpeg.clone()))
            .unwrap()
    };
    let ok = send(&s, classify(&format!("Bearer {KEY}"))).await;
    assert_eq!(ok.status, StatusCode::OK);
    let refused = send(&s, classify(&format!("Basic {KEY}"))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["error"]["code"], "unauthorized");
    let oip = Request::post(format!("/v2/models/{SMALL}/infer"))
        .body(Body::from("{}"))
        .unwrap();
    let refused = send(&s, oip).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("API key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_services_ask_for_the_key_in_metadata() {
    for protect_health in [false, true] {
        let s = secured(protect_health);
        s.warm_up().await.unwrap();
        let (addr, _stop) = start_grpc(s.clone()).await;
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
