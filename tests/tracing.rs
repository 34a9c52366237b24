//! Request tracing, in a test binary of its own: tracing caches per call site whether anybody
//! listens, and tests running in parallel without a subscriber would race this one's.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::serving::{config, jpegs, service, SMALL};
use mobilenet_serve::api::auth::Auth;
use mobilenet_serve::app;
use tower::ServiceExt;

async fn status(
    s: &Arc<mobilenet_serve::serving::Service>,
    uri: &str,
    body: Vec<u8>,
) -> StatusCode {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "image/jpeg")
        .header("x-request-id", "trace-me-7")
        .body(Body::from(body))
        .unwrap();
    let response = app(s.clone(), Auth::default())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-7");
    response.status()
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// One thread: the subscriber is this thread's, and the request's span and events happen here.
#[tokio::test]
async fn each_request_is_traced_with_its_variant_batches_and_stage_times() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let s = service(config());
    let img = jpegs(1).remove(0);
    let uri = format!("/classify?model={SMALL}");
    assert_eq!(status(&s, &uri, img).await, StatusCode::OK);
    assert_eq!(
        status(&s, &uri, b"junk".to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let span = format!(
        "req{{request_id=\"trace-me-7\" protocol=\"http\" path=\"/classify\"}}:\
         request{{protocol=\"http\" variant=\"{SMALL}\" batches=["
    );
    let answered = text
        .lines()
        .find(|l| l.contains(&span) && l.contains("answered status=200"))
        .unwrap_or_else(|| panic!("no traced answer in:\n{text}"));
    for stage in ["decode_ms", "queue_ms", "inference_ms", "total_ms"] {
        assert!(answered.contains(stage), "{answered}");
    }
    assert!(
        text.lines().any(|l| l.contains("not answered status=400")
            && l.contains("cannot decode")
            && l.contains("request_id=\"trace-me-7\"")),
        "{text}"
    );
}
