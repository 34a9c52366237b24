//! The OpenAPI document as a test oracle: a small JSON Schema validator for the keywords the
//! document uses, and a check that an answer is one its operation describes.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use mobilenet_serve::api::auth::Auth;
use mobilenet_serve::api::openapi;
use mobilenet_serve::app;
use mobilenet_serve::serving::Service;
use serde_json::{json, Value};
use tower::ServiceExt;

/// An answer of the application.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `request` to the application over `service`, without an API key.
pub async fn send(service: &Arc<Service>, request: Request<Body>) -> Reply {
    send_as(service, &Auth::default(), request).await
}

/// Sends `request` to the application over `service` asking for the API key as `auth` says.
pub async fn send_as(service: &Arc<Service>, auth: &Auth, request: Request<Body>) -> Reply {
    let response = app(service.clone(), auth.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        content_type,
        headers,
        body: body.to_vec(),
    }
}

/// The served document, parsed.
pub fn document() -> Value {
    serde_json::from_str(openapi::document()).expect("the document is JSON")
}

/// The schema a `$ref` names.
pub fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("external reference {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("dangling reference {reference}"))
}

/// The JSON Schema keywords the document uses, checked strictly; returns the first violation.
pub fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return validate(doc, resolve(doc, r), value, at);
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|s| validate(doc, s, value, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!("{at}: {matching} of oneOf match {value}"));
        }
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        if !options.iter().any(|s| validate(doc, s, value, at).is_ok()) {
            return Err(format!("{at}: no anyOf matches {value}"));
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, value, at)?;
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => return Err(format!("{at}: bad type keyword {other}")),
        };
        let fits = |t: &str| match t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    if let Some(x) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if x < min {
                return Err(format!("{at}: {x} < minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if x > max {
                return Err(format!("{at}: {x} > maximum {max}"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(doc, item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: required `{name}` is missing"));
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => validate(doc, s, v, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&json!(false)) => {
                    return Err(format!("{at}: `{name}` is not described"))
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// Checks `reply` against what `operation` documents for its status: the status is listed, and
/// a JSON body fits the listed schema.
pub fn conforms(doc: &Value, operation: &Value, reply: &Reply, what: &str) {
    let status = reply.status.as_u16().to_string();
    let response = operation["responses"].get(&status).unwrap_or_else(|| {
        panic!(
            "{what}: status {status} is not described ({})",
            String::from_utf8_lossy(&reply.body)
        )
    });
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return;
    };
    let media = reply.content_type.split(';').next().unwrap_or("").trim();
    let described = content
        .iter()
        .find(|(t, _)| t.split(';').next().unwrap_or("").trim() == media)
        .unwrap_or_else(|| panic!("{what}: content type `{media}` for {status} is not described"));
    if media == "application/json" {
        let schema = &described.1["schema"];
        if let Err(e) = validate(doc, schema, &reply.json(), "body") {
            panic!("{what} ({status}): {e}");
        }
    }
}

/// Every operation of the document: (path, method, operation).
pub fn operations(doc: &Value) -> Vec<(String, Method, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            out.push((path.clone(), method, op.clone()));
        }
    }
    out
}

/// Every `$ref` in `value`.
pub fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}
