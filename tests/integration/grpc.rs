//! The gRPC API over a real socket with tonic's generated client: classification (unary and
//! streaming), models, error codes, health following readiness, and reflection.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::serving::{
    config, direct_top1, grpc_channel, jpegs, pool, predicted_fastest, service, stalled_service,
    start_grpc, until_queued, MID, SMALL,
};
use mobilenet_serve::api::auth::Auth;
use mobilenet_serve::api::grpc::pb::classifier_client::ClassifierClient;
use mobilenet_serve::api::grpc::pb::{ClassifyRequest, GetModelRequest, ListModelsRequest};
use mobilenet_serve::api::grpc::{self, SERVICE_NAME};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

async fn client(addr: SocketAddr) -> ClassifierClient<Channel> {
    ClassifierClient::new(grpc_channel(addr).await)
}

fn request(images: Vec<Vec<u8>>) -> ClassifyRequest {
    ClassifyRequest {
        images,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_answers_as_the_engine_computes_and_lists_models() {
    let s = service(config());
    let (addr, _stop) = start_grpc(s.clone()).await;
    let mut c = client(addr).await;
    let images = jpegs(2);
    let reference = pool();
    let mut req = request(images.clone());
    req.model = Some(MID.into());
    req.top_k = 3;
    let answer = c.classify(req).await.unwrap().into_inner();
    assert_eq!(answer.model, MID);
    assert_eq!(answer.images.len(), 2);
    for (img, preds) in images.iter().zip(&answer.images) {
        assert_eq!(preds.predictions.len(), 3);
        assert_eq!(
            u64::from(preds.predictions[0].index),
            direct_top1(&reference, MID, img)
        );
        assert!(!preds.predictions[0].label.is_empty());
    }
    let t = answer.timings_ms.unwrap();
    assert!(t.total >= t.inference && t.inference > 0.0, "{t:?}");
    assert_eq!(answer.target_met, None);

    // By grid cell, and by target once warmed up.
    let mut req = request(vec![images[0].clone()]);
    req.alpha = Some(0.25);
    req.resolution = Some(128);
    assert_eq!(c.classify(req).await.unwrap().into_inner().model, SMALL);
    s.warm_up().await.unwrap();
    let mut req = request(vec![images[0].clone()]);
    req.min_top1 = Some(1.0);
    let fastest = predicted_fastest(&s);
    let answer = c.classify(req).await.unwrap().into_inner();
    assert_eq!((answer.model, answer.target_met), (fastest, Some(true)));

    let models = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 2);
    assert!(models
        .iter()
        .any(|m| m.name == SMALL && m.mult_adds == 13_570_304 && m.precision == "fp32"));
    let mid = c
        .get_model(GetModelRequest { name: MID.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (mid.resolution, mid.accuracy_source.as_str()),
        (160, "published")
    );
    let missing = c
        .get_model(GetModelRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains(SMALL), "{}", missing.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_invalid_argument_or_not_found() {
    let s = service(config());
    let (addr, _stop) = start_grpc(s).await;
    let mut c = client(addr).await;
    let img = jpegs(1).remove(0);
    let cases: Vec<(ClassifyRequest, Code)> = vec![
        (request(vec![]), Code::InvalidArgument),
        (
            request(vec![b"not an image".to_vec()]),
            Code::InvalidArgument,
        ),
        (
            request(vec![img[..img.len() / 2].to_vec()]),
            Code::InvalidArgument,
        ),
        (
            ClassifyRequest {
                alpha: Some(0.5),
                ..request(vec![img.clone()])
            },
            Code::InvalidArgument,
        ),
        (
            ClassifyRequest {
                precision: Some("int4".into()),
                ..request(vec![img.clone()])
            },
            Code::InvalidArgument,
        ),
        (
            ClassifyRequest {
                model: Some(SMALL.into()),
                precision: Some("int8".into()),
                ..request(vec![img.clone()])
            },
            Code::InvalidArgument,
        ),
        (
            // This pool has no int8 twin of the cell.
            ClassifyRequest {
                alpha: Some(0.25),
                resolution: Some(128),
                precision: Some("int8".into()),
                ..request(vec![img.clone()])
            },
            Code::NotFound,
        ),
        (
            ClassifyRequest {
                top_k: 1001,
                ..request(vec![img.clone()])
            },
            Code::InvalidArgument,
        ),
        (
            ClassifyRequest {
                model: Some("nope".into()),
                ..request(vec![img.clone()])
            },
            Code::NotFound,
        ),
        (
            ClassifyRequest {
                min_top1: Some(99.0),
                ..request(vec![img.clone()])
            },
            // Before warm-up a target cannot be routed yet.
            Code::Unavailable,
        ),
    ];
    for (req, code) in cases {
        let err = c.classify(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(!err.message().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_deadlines_have_their_codes() {
    let mut cfg = config();
    cfg.max_queue = 1;
    cfg.max_images_per_request = 1;
    let s = stalled_service(cfg);
    let (addr, _stop) = start_grpc(s.clone()).await;
    let img = jpegs(1).remove(0);
    let waiting = {
        let mut c = client(addr).await;
        let mut req = request(vec![img.clone()]);
        req.model = Some(SMALL.into());
        tokio::spawn(async move { c.classify(req).await })
    };
    until_queued(&s, SMALL, 1).await;
    let mut c = client(addr).await;
    let mut req = request(vec![img.clone()]);
    req.model = Some(SMALL.into());
    let full = c.classify(req).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(full.get_details_retry_info().is_some());
    assert!(full.metadata().get("retry-after").is_some());
    // The client's grpc-timeout is our deadline.
    let mut req = tonic::Request::new(ClassifyRequest {
        model: Some(MID.into()),
        ..request(vec![img.clone()])
    });
    req.set_timeout(Duration::from_millis(200));
    let late = c.classify(req).await.unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{}", late.message());
    s.start_engine().unwrap();
    let answer = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(answer.model, SMALL);
    let metrics = s.metrics().render();
    assert!(metrics.contains(&format!(
        "mobilenet_requests_total{{code=\"429\",protocol=\"grpc\",variant=\"{SMALL}\"}} 1"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_one_answer_per_request_in_order() {
    let s = service(config());
    let (addr, _stop) = start_grpc(s).await;
    let mut c = client(addr).await;
    let img = jpegs(1).remove(0);
    let models = [SMALL, MID, SMALL, MID];
    let requests: Vec<ClassifyRequest> = models
        .iter()
        .map(|m| ClassifyRequest {
            model: Some(m.to_string()),
            ..request(vec![img.clone()])
        })
        .collect();
    let mut answers = c
        .classify_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        got.push(answer.model);
    }
    assert_eq!(got, models);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_and_reflection_lists_the_services() {
    let s = service(config());
    let (addr, _stop) = start_grpc(s.clone()).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |name: &str| HealthCheckRequest {
        service: name.into(),
    };
    async fn wait_for(
        health: &mut HealthClient<Channel>,
        req: impl Fn() -> HealthCheckRequest,
        want: ServingStatus,
    ) {
        for _ in 0..200 {
            let got = health.check(req()).await.unwrap().into_inner().status;
            if got == want as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("health never became {want:?}");
    }
    wait_for(
        &mut health,
        || status(SERVICE_NAME),
        ServingStatus::NotServing,
    )
    .await;
    s.warm_up().await.unwrap();
    wait_for(&mut health, || status(SERVICE_NAME), ServingStatus::Serving).await;
    wait_for(&mut health, || status(""), ServingStatus::Serving).await;
    s.begin_drain();
    wait_for(
        &mut health,
        || status(SERVICE_NAME),
        ServingStatus::NotServing,
    )
    .await;

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&SERVICE_NAME.to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_ends_open_streams_and_the_server() {
    let s = service(config());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopping) = watch::channel(false);
    let server = tokio::spawn(grpc::serve(s.clone(), Auth::default(), listener, stopping));
    let mut c = client(addr).await;
    // A stream that stays open: one request, then nothing more from the client.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ClassifyRequest {
        model: Some(SMALL.into()),
        ..request(jpegs(1))
    })
    .await
    .unwrap();
    let mut answers = c
        .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().model, SMALL);
    stop.send(true).unwrap();
    let end = answers.message().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{}", end.message());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the gRPC server kept waiting for the open stream")
        .unwrap()
        .unwrap();
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeouts_are_capped_or_refused_as_deadlines() {
    let mut cfg = config();
    cfg.max_request_timeout = Duration::from_secs(30);
    let s = service(cfg);
    let (addr, _stop) = start_grpc(s).await;
    let mut c = client(addr).await;
    let img = jpegs(1);
    // Longer than the server allows: capped, and answered.
    let mut req = tonic::Request::new(request(img.clone()));
    req.set_timeout(Duration::from_secs(3600));
    assert!(c.classify(req).await.is_ok());
    // Run out already: DEADLINE_EXCEEDED, not INVALID_ARGUMENT. Tonic's own timer may answer
    // first (CANCELLED) while the message is still arriving: either is the client's deadline.
    let mut req = tonic::Request::new(request(img));
    req.metadata_mut()
        .insert("grpc-timeout", "0m".parse().unwrap());
    let err = c.classify(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{:?}: {}",
        err.code(),
        err.message()
    );
}

/// Metadata over the header limit (`api::head::MAX_HEAD_BYTES`) is refused by h2 before the
/// call reaches a service; a call with ordinary metadata still works on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_metadata_is_refused() {
    use mobilenet_serve::api::head::MAX_HEAD_BYTES;
    let s = service(config());
    let (addr, _stop) = start_grpc(s.clone()).await;
    let mut client = ClassifierClient::new(grpc_channel(addr).await);
    let mut big = tonic::Request::new(ListModelsRequest {});
    big.metadata_mut()
        .insert("x-pad", "a".repeat(MAX_HEAD_BYTES + 1).parse().unwrap());
    let err = client.list_models(big).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok, "{err:?}");
    let fine = client.list_models(ListModelsRequest {}).await;
    assert!(fine.is_ok(), "{fine:?}");
}

/// A peer that opens an HTTP/2 header block and never ends it is closed after the head deadline
/// (10 s), as on the HTTP port; tonic's own limits would hold it until the connection's maximum
/// age (5 min).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_head_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _stop) = start_grpc(stalled_service(config())).await;
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(common::serving::H2_HALF_HEAD).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "still open after {took:?}");
    assert!(
        took >= Duration::from_secs(9),
        "closed too early ({took:?})"
    );
}

/// A gRPC client that cancels its call while the image is queued (RST_STREAM) costs no
/// inference: hyper drops the handler, and the engine skips the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_costs_no_inference() {
    let s = stalled_service(config());
    let (addr, _stop) = start_grpc(s.clone()).await;
    let mut c = client(addr).await;
    let mut req = request(jpegs(1));
    req.model = Some(SMALL.into());
    let call = tokio::spawn(async move { c.classify(req).await });
    until_queued(&s, SMALL, 1).await;
    assert_eq!(s.metrics().in_flight.get(), 1);
    call.abort();
    let started = std::time::Instant::now();
    while s.metrics().in_flight.get() != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the handler outlived the call"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.start_engine().unwrap();
    until_queued(&s, SMALL, 0).await;
    // Had the image been computed, nothing would count it as cancelled.
    let dropped =
        format!("mobilenet_dropped_images_total{{reason=\"cancelled\",variant=\"{SMALL}\"}} 1");
    let started = std::time::Instant::now();
    while !s.metrics().render().contains(&dropped) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            s.metrics().render()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `resize` chooses the decode per request, as over HTTP; anything but fast or exact is
/// INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_is_chosen_per_request() {
    let s = service(config());
    s.warm_up().await.unwrap();
    let (addr, _stop) = start_grpc(s.clone()).await;
    let mut c = client(addr).await;
    let jpeg = common::serving::upscaled_jpeg();
    let mut tops = Vec::new();
    for resize in ["exact", "fast"] {
        let answer = c
            .classify(ClassifyRequest {
                model: Some(SMALL.into()),
                resize: Some(resize.into()),
                top_k: 1,
                ..request(vec![jpeg.clone()])
            })
            .await
            .unwrap()
            .into_inner();
        tops.push(answer.images[0].predictions[0].index);
    }
    assert_eq!(tops[0], tops[1]);
    let refused = c
        .classify(ClassifyRequest {
            resize: Some("nearest".into()),
            ..request(vec![jpeg])
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("`fast` or `exact`"),
        "{refused:?}"
    );
}
