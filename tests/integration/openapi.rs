//! `GET /openapi.json` against the application that serves it: every described operation is
//! served and answers what its description says (checked by a small JSON Schema validator), the
//! examples work, and no route is registered without a description.

use crate::common;

use common::serving::{config, service, SMALL};

use common::openapi::{conforms, document, operations, references, resolve, send, validate};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_complete_and_consistent() {
    let s = service(config());
    let reply = send(
        &s,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type, "application/json");
    let doc = reply.json();
    assert_eq!(doc, document(), "the route serves the document");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let mut refs = Vec::new();
    references(&doc, &mut refs);
    assert!(refs.len() > 20, "schemas are shared by reference");
    for r in &refs {
        resolve(&doc, r);
    }
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for (path, method, op) in operations(&doc) {
        let what = format!("{method} {path}");
        assert!(op["summary"].is_string(), "{what} has a summary");
        let tag = op["tags"][0].as_str().unwrap_or_default();
        assert!(tags.contains(&tag), "{what}: tag `{tag}` is declared");
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key("200"), "{what} describes its 200");
        for (status, response) in responses {
            assert!(
                response["description"].is_string(),
                "{what} {status} has a description"
            );
        }
        for p in op["parameters"].as_array().into_iter().flatten() {
            assert!(
                p["description"].is_string(),
                "{what}: parameter {p} described"
            );
            if p["in"] == "path" {
                assert!(
                    path.contains(&format!("{{{}}}", p["name"].as_str().unwrap())),
                    "{what}: path parameter {p} is in the path"
                );
            }
        }
        // Each path parameter is described.
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(
                op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == name && p["in"] == "path"),
                "{what}: path parameter `{name}` is described"
            );
        }
    }
    // Every example in the components fits its own schema.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if let Some(example) = schema.get("example") {
            validate(&doc, schema, example, name)
                .unwrap_or_else(|e| panic!("the example of {name}: {e}"));
        }
    }
}

/// A real value for each path parameter.
fn fill(path: &str) -> String {
    path.replace("{name}", SMALL).replace("{version}", "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_described_operation_is_served_as_described() {
    let s = service(config());
    s.warm_up().await.unwrap();
    let doc = document();
    let ops = operations(&doc);
    assert_eq!(
        ops.len(),
        24,
        "the routes of the API, the OIP and the pages"
    );
    for (path, method, op) in &ops {
        let what = format!("{method} {path}");
        // A body that is no valid request: POSTs must refuse it the documented way, GETs
        // ignore it.
        let request = Request::builder()
            .method(method.clone())
            .uri(fill(path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let reply = send(&s, request).await;
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{what} is routed"
        );
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.contains("no such route"), "{what} is routed: {text}");
        // `{}` asks the repository index for every model; the other POSTs need more (or, for
        // repository loads, a model control mode that allows them).
        if *method == Method::POST && path != "/v2/repository/index" {
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}: {text}");
        } else {
            assert_eq!(reply.status, StatusCode::OK, "{what}: {text}");
        }
        conforms(&doc, op, &reply, &what);
    }
    // An unknown model: the documented 404 in each format.
    for (path, method, op) in &ops {
        if !path.contains("{name}") {
            continue;
        }
        let request = Request::builder()
            .method(method.clone())
            .uri(
                path.replace("{name}", "no_such_model")
                    .replace("{version}", "1"),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let reply = send(&s, request).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        conforms(
            &doc,
            op,
            &reply,
            &format!("{method} {path} (unknown model)"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_are_answered_as_described() {
    let s = service(config());
    let doc = document();
    let ops = operations(&doc);
    let op = |p: &str| &ops.iter().find(|(path, _, _)| path == p).unwrap().2;

    // The classify example (a 1x1 PNG in JSON) with a documented query.
    let example = resolve(&doc, "#/components/schemas/JsonImages")["example"].clone();
    let request = Request::post(format!("/classify?model={SMALL}&top_k=3"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(example.to_string()))
        .unwrap();
    let reply = send(&s, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    conforms(&doc, op("/classify"), &reply, "classify example");
    assert_eq!(reply.json()["predictions"].as_array().unwrap().len(), 3);
    // Several images answer one list each, which the schema also describes.
    let png = example["image"].clone();
    let request = Request::post(format!("/classify?model={SMALL}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "images": [png, png] }).to_string()))
        .unwrap();
    let reply = send(&s, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    conforms(&doc, op("/classify"), &reply, "classify, two images");
    let bad = Request::post("/classify?top_k=0")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "image": png }).to_string()))
        .unwrap();
    let reply = send(&s, bad).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    conforms(&doc, op("/classify"), &reply, "classify, top_k=0");

    // An FP32 inference in JSON, with classification strings and raw logits.
    let n = 3 * 128 * 128;
    let data: Vec<f32> = (0..n).map(|i| ((i % 255) as f32 / 127.5) - 1.0).collect();
    let body = json!({
        "id": "7",
        "inputs": [{"name": "input", "shape": [1, 3, 128, 128], "datatype": "FP32",
                    "data": data}],
        "outputs": [{"name": "probs", "parameters": {"classification": 2}},
                    {"name": "logits"}],
    });
    let path = format!("/v2/models/{SMALL}/infer");
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let reply = send(&s, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    conforms(&doc, op("/v2/models/{name}/infer"), &reply, "infer");
    let answer = reply.json();
    assert_eq!(answer["id"], "7");
    assert_eq!(answer["outputs"][1]["data"].as_array().unwrap().len(), 1001);
}

/// Routes are registered only through utoipa-axum's `routes!`, which takes each handler's path
/// and method from its description: a route added any other way would be served undescribed.
#[test]
fn no_route_is_registered_without_its_description() {
    let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 10, "the API's sources: {files:?}");
    let mut handlers = 0;
    for path in files {
        let source = std::fs::read_to_string(&path).unwrap();
        for forbidden in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            assert!(
                !source.contains(forbidden),
                "{}: `{forbidden}` registers a route without a description; use \
                 `.routes(routes!(handler))` with #[utoipa::path]",
                path.display()
            );
        }
        for call in source.split("routes!(").skip(1) {
            let inner = &call[..call.find(')').unwrap()];
            handlers += inner.split(',').filter(|h| !h.trim().is_empty()).count();
        }
    }
    let described = operations(&document()).len();
    assert_eq!(
        handlers, described,
        "each handler registered with routes! is one described operation"
    );
}
