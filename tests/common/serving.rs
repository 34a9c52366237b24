//! Helpers for the serving tests: a service over two small real variants, sample JPEGs, and what
//! the engine computes without the service.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;

use mobilenet_serve::api::auth::Auth;
use mobilenet_serve::api::grpc;
use mobilenet_serve::commands::serve::{serve_until, Listeners};
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::kernels::{KernelSet, TierChoice};
use mobilenet_serve::pipeline::decode::{decode, DecodeLimits};
use mobilenet_serve::pipeline::postprocess::argmax;
use mobilenet_serve::pipeline::preprocess::preprocess;
use mobilenet_serve::serving::batcher::BatchPolicy;
use mobilenet_serve::serving::{ControlMode, Service, ServiceConfig};

/// The cheapest variant.
pub const SMALL: &str = "mobilenet_v1_0.25_128";
/// A more accurate one, still quick.
pub const MID: &str = "mobilenet_v1_0.5_160";

/// The zoo's `SMALL` and `MID` variants, loaded once for the whole test binary (a clone shares
/// the models).
pub fn pool() -> ModelPool {
    static POOL: OnceLock<ModelPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let opts = LoadOptions {
            variants: Some(vec![SMALL.into(), MID.into()]),
            resolution: None,
            kernels: KernelSet::select(TierChoice::Auto).unwrap(),
        };
        ModelPool::load(&super::zoo_dir(), &opts).unwrap()
    })
    .clone()
}

/// Small limits, quick batches; the manifest's published accuracy.
pub fn config() -> ServiceConfig {
    ServiceConfig {
        batch: BatchPolicy {
            max_batch: 8,
            max_delay: Duration::from_millis(1),
        },
        max_queue: 16,
        max_concurrent_requests: 64,
        request_timeout: Duration::from_secs(20),
        max_request_timeout: Duration::from_secs(60),
        max_images_per_request: 8,
        decode_limits: DecodeLimits::default(),
        default_model: None,
        engine_threads: 2,
        engine_nice: mobilenet_serve::serving::workers::DEFAULT_ENGINE_NICE,
        eval_results: None,
        model_control: ControlMode::None,
        repository_poll: Duration::from_secs(15),
        resize: Default::default(),
        throughput_mode: true,
    }
}

/// The first sample image (227 px) upscaled 4x with Lanczos to 908x908 and re-encoded as JPEG:
/// four times 0.25_128's resize target of 146, so `resize=fast` decodes it at a reduced scale.
pub fn upscaled_jpeg() -> Vec<u8> {
    let small = image::load_from_memory(&jpegs(1).remove(0)).unwrap();
    let big = small.resize_exact(908, 908, image::imageops::FilterType::Lanczos3);
    let mut jpeg = std::io::Cursor::new(Vec::new());
    big.to_rgb8()
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    jpeg.into_inner()
}

/// A running service over [`pool`].
pub fn service(config: ServiceConfig) -> Arc<Service> {
    Service::new(pool(), config).unwrap()
}

/// A service over [`pool`] whose images wait in the queues until [`Service::start_engine`].
pub fn stalled_service(config: ServiceConfig) -> Arc<Service> {
    Service::without_engine(pool(), config).unwrap()
}

/// The first `n` JPEGs of the labelled sample.
pub fn jpegs(n: usize) -> Vec<Vec<u8>> {
    let dir = super::imagenet_dir();
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    labels
        .lines()
        .filter(|l| !l.starts_with('#'))
        .take(n)
        .map(|l| std::fs::read(dir.join(l.split('\t').next().unwrap())).unwrap())
        .collect()
}

/// The ImageNet class our engine gives `jpeg` on `variant`, computed without the service.
pub fn direct_top1(pool: &ModelPool, variant: &str, jpeg: &[u8]) -> u64 {
    let v = pool.get(variant).unwrap();
    let rgb = decode(jpeg, &DecodeLimits::default()).unwrap();
    let r = v.spec.resolution;
    let input = preprocess(&rgb, r, v.spec.normalization, v.model.kernels().tier).unwrap();
    let out = v.model.run(&input, 1, r, r).unwrap();
    (argmax(&out[v.spec.label_offset..])) as u64
}

/// Waits (briefly) until `variant` has `n` images queued.
pub async fn until_queued(s: &Arc<Service>, variant: &str, n: usize) {
    let started = Instant::now();
    loop {
        let depth = s.model(variant).unwrap().queue_depth;
        if depth == n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{depth} queued, waiting for {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The variant the router currently predicts to be fastest (what an accuracy floor everybody
/// meets, or `fallback=fastest`, must choose). Asked for rather than assumed: on a loaded machine
/// a warm-up stall can make the small variant look slower for a while.
pub fn predicted_fastest(s: &Service) -> String {
    s.models()
        .into_iter()
        .min_by(|a, b| {
            let p = |m: &mobilenet_serve::serving::ModelInfo| m.latency_ms.predicted.unwrap();
            p(a).total_cmp(&p(b))
        })
        .unwrap()
        .name
}

/// The whole server (HTTP and gRPC, as `serve` runs them) over `service` on free ports; the
/// HTTP address, and the sender that starts its drain (when sent or dropped).
pub async fn serve_http(service: Arc<Service>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    serve_http_with(service, Auth::default()).await
}

/// [`serve_http`] asking for the API key as `auth` says.
pub async fn serve_http_with(
    service: Arc<Service>,
    auth: Auth,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listeners.http.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_until(
        service,
        auth,
        listeners,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    (addr, stop)
}

/// A gRPC server over `service` on a free port; it drains when the returned sender sends true
/// (or is dropped).
pub async fn start_grpc(service: Arc<Service>) -> (SocketAddr, watch::Sender<bool>) {
    start_grpc_with(service, Auth::default()).await
}

/// [`start_grpc`] asking for the API key as `auth` says.
pub async fn start_grpc_with(
    service: Arc<Service>,
    auth: Auth,
) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(grpc::serve(service, auth, listener, stopping));
    (addr, stop)
}

/// A channel to the gRPC server at `addr`, retried while it starts.
pub async fn grpc_channel(addr: SocketAddr) -> Channel {
    for _ in 0..100 {
        let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

/// The HTTP/2 preface, an empty SETTINGS frame, and a HEADERS frame on stream 1 (END_STREAM,
/// not END_HEADERS) whose block never gets its CONTINUATION. Without the head deadline
/// (api::h2_heads), the HTTP port's pings would close it after 30 s, the gRPC port's connection
/// age after 5 min.
pub const H2_HALF_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
    \x00\x00\x00\x04\x00\x00\x00\x00\x00\
    \x00\x00\x03\x01\x01\x00\x00\x00\x01\x82\x86\x84";
