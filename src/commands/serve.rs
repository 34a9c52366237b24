//! The `serve` command: load, start the engine threads, listen, warm up, and drain on shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::auth::{ApiKey, Auth};
use crate::api::grpc;
use crate::api::h2_heads::{self, HeadDeadline};
use crate::api::head;
use crate::api::http::app;
use crate::commands::cli::ServeArgs;
use crate::engine::pool::ModelPool;
use crate::error::{Error, Result};
use crate::pipeline::decode::DecodeLimits;
use crate::serving::batcher::BatchPolicy;
use crate::serving::config::MAX_REQUEST_TIMEOUT;
use crate::serving::{ControlMode, Rescan, Service, ServiceConfig};

/// The sockets the service answers on.
#[derive(Debug)]
pub struct Listeners {
    /// HTTP (the JSON API, health, metrics).
    pub http: TcpListener,
    /// gRPC (`mobilenet.v1.Classifier`, health, reflection).
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds both ports on `host`.
    pub async fn bind(host: IpAddr, http_port: u16, grpc_port: u16) -> Result<Self> {
        let bind = |port| async move {
            let addr = SocketAddr::new(host, port);
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Internal(format!("cannot listen on {addr}: {e}")))
        };
        Ok(Listeners {
            http: bind(http_port).await?,
            grpc: bind(grpc_port).await?,
        })
    }
}

/// Serves HTTP and gRPC until `stop` resolves, then drains: readiness (and gRPC health) fails at
/// once, new requests get 503/UNAVAILABLE or a refused connection, admitted ones are answered
/// (for at most `drain_timeout`), the engine threads finish their queues and stop.
pub async fn serve_until(
    service: Arc<Service>,
    auth: Auth,
    listeners: Listeners,
    stop: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> Result<()> {
    let addr = listeners
        .http
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
    tracing::info!(%addr, "HTTP listening");
    let warming = service.clone();
    tokio::spawn(async move {
        match warming.warm_up().await {
            Ok(()) => tracing::info!("every variant warmed up: ready"),
            Err(e) => tracing::error!(error = %e, "warm-up failed: not ready"),
        }
        if warming.model_control() == ControlMode::Poll {
            poll_models(warming).await;
        }
    });
    // A watch channel, not a Notify: a waiter that starts after the signal still sees it.
    let (stopped, stopping) = watch::channel(false);
    let draining = service.clone();
    tokio::spawn(async move {
        stop.await;
        draining.begin_drain();
        let _ = stopped.send(true);
    });
    let signalled = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http = serve_http(
        listeners.http,
        app(service.clone(), auth.clone()),
        stopping.clone(),
    );
    let grpc = grpc::serve(service.clone(), auth, listeners.grpc, stopping.clone());
    // The first server to fail stops the other: a half-up service must not look healthy.
    let both = async { tokio::try_join!(http, grpc).map(|_| ()) };
    let deadline = async move {
        signalled(stopping).await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        served = both => served?,
        _ = deadline => tracing::warn!(?drain_timeout, "drain timeout: closing with requests in flight"),
    }
    let engine = service.clone();
    tokio::task::spawn_blocking(move || engine.stop_engine())
        .await
        .map_err(|e| Error::Internal(format!("stopping the engine: {e}")))?;
    // What a drain test compares with the answers its clients received; requests still in
    // flight here (after a drain timeout) are the ones lost.
    let metrics = service.metrics();
    tracing::info!(
        admitted = metrics.admitted_total(),
        in_flight = metrics.in_flight.get(),
        "drained: bye"
    );
    Ok(())
}

/// `--model-control-mode poll`: rescans the models directory every `repository_poll` and at
/// each SIGHUP, until the service drains.
async fn poll_models(service: Arc<Service>) {
    let every = service.config().repository_poll;
    #[cfg(unix)]
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: polling only");
            None
        }
    };
    tracing::info!(every_s = every.as_secs(), "polling the models directory");
    while !service.is_draining() {
        #[cfg(unix)]
        let forced = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            Some(()) = async { hangups.as_mut()?.recv().await } => true,
        };
        #[cfg(not(unix))]
        let forced = {
            tokio::time::sleep(every).await;
            false
        };
        if service.is_draining() {
            break;
        }
        if forced {
            tracing::info!("SIGHUP: rescanning the models directory");
        }
        match service.rescan_models(forced).await {
            Ok(r) if r != Rescan::default() => tracing::info!(loaded = ?r.loaded,
                unloaded = ?r.unloaded, failed = r.failed.len(), "models directory rescanned"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot rescan the models directory: serving as before")
            }
        }
    }
}

/// Longest a client may take to send a request's head, on HTTP/1 and HTTP/2; the body then has
/// the request timeout. Without it, connections that never finish their headers (slowloris)
/// are held forever.
const HEADER_READ_TIMEOUT: Duration = h2_heads::HEAD_DEADLINE;

/// Serves `app` over HTTP/1.1 and HTTP/2 (prior knowledge) until `stopping`, then stops
/// accepting (new connections are refused) and lets each connection finish its requests.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    mut stopping: watch::Receiver<bool>,
) -> Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A head over the buffer gets hyper's own 431 (api::http::head).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(head::MAX_HEAD_BUFFER);
    // HTTP/2 has no head timeout: pings find peers that stopped answering (and would
    // otherwise also hold up a graceful shutdown, which waits for a ping's ack).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(head::MAX_HEAD_BUFFER as u32);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine; a pause keeps a persistent error from spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Responses are written whole: Nagle's algorithm would only hold their last segment
        // back until the client's delayed ACK (tens of milliseconds).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let builder = builder.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match opening(&tcp).await {
                Opening::Http1 => serve_connection(&builder, tcp, app, watcher).await,
                // h2 has no deadline on request heads of its own.
                Opening::Http2 => {
                    let io = HeadDeadline::new(tcp, HEADER_READ_TIMEOUT);
                    serve_connection(&builder, io, app, watcher).await
                }
                Opening::Silent => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serves one connection's requests with `app` until it ends or the server shuts down.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    app: axum::Router,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// What a connection's first bytes say.
enum Opening {
    Http1,
    /// The HTTP/2 client preface (prior knowledge).
    Http2,
    /// Nothing that tells in time, or a hang-up.
    Silent,
}

/// Waits (at most [`HEADER_READ_TIMEOUT`]) until the client has sent enough to tell HTTP/1 from
/// HTTP/2's preface, which hyper's version detection would otherwise wait for forever.
async fn opening(tcp: &tokio::net::TcpStream) -> Opening {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return Opening::Silent,
                Ok(n) if buf[..n] != PREFACE[..n] => return Opening::Http1,
                Ok(n) if n == PREFACE.len() => return Opening::Http2,
                // A prefix of the preface so far: wait for more.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(HEADER_READ_TIMEOUT, wait)
        .await
        .unwrap_or(Opening::Silent)
}

/// Threads that decode and preprocess at most, by default: twice the cores, at least 4. On 2
/// cores, one thread starved the server at c=16, and 2, 4 and 8 measured alike (README, "How a
/// request flows").
pub fn default_decode_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(4)
}

/// Binds the ports and serves until SIGTERM or ctrl-c.
pub async fn run(
    service: Arc<Service>,
    auth: Auth,
    host: IpAddr,
    http_port: u16,
    grpc_port: u16,
    drain_timeout: Duration,
) -> Result<()> {
    let listeners = Listeners::bind(host, http_port, grpc_port).await?;
    serve_until(
        service,
        auth,
        listeners,
        crate::serving::shutdown::signal(),
        drain_timeout,
    )
    .await
}

/// The `serve` command: serves `pool` (what loaded, or everything with
/// `--require-all-models`) until SIGTERM or ctrl-c.
pub fn command(pool: ModelPool, args: ServeArgs) -> Result<()> {
    // Validated here, not by clap, whose errors would print the rejected value: the secret.
    let key = args.api_key.as_deref().map(ApiKey::new).transpose()?;
    for u in pool.unavailable() {
        tracing::error!(variant = %u.name, file = %u.file.display(), error = %u.error,
            "variant not served: it failed to load");
    }
    let unverified: Vec<&str> = pool
        .variants()
        .iter()
        .filter(|v| !v.verified)
        .map(|v| v.spec.name.as_str())
        .collect();
    if !unverified.is_empty() {
        tracing::warn!(variants = %unverified.join(","),
            "no expected sha256 (manifest or SHA256SUMS): model files not verified");
    }
    let config = service_config(&args);
    let auth = Auth {
        key,
        protect_health: args.auth_health,
    };
    let engine_threads = config.engine_threads;
    tracing::info!(variants = pool.variants().len(), engine_threads, "starting");
    let service = Service::new(pool, config)?;
    // Decoding runs on the blocking pool. Tokio would grow it to 512 threads under overload,
    // each decoding into its own buffers on the same cores; a few threads keep the work and
    // the memory bounded (requests beyond them wait as encoded bytes, already bounded by the
    // in-flight limit).
    let decode_threads = match args.decode_threads {
        0 => default_decode_threads(),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(decode_threads)
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run(
        service,
        auth,
        args.host,
        args.http_port,
        args.grpc_port,
        Duration::from_secs(args.drain_timeout_s),
    ))
}

/// `--model-control-mode` (clap has checked the spelling).
pub fn control_mode(args: &ServeArgs) -> ControlMode {
    args.model_control_mode.parse().unwrap_or_default()
}

/// The service settings of `serve`'s arguments.
pub fn service_config(args: &ServeArgs) -> ServiceConfig {
    ServiceConfig {
        batch: BatchPolicy {
            max_batch: args.max_batch_size as usize,
            max_delay: Duration::from_micros(args.max_batch_delay_us),
        },
        max_queue: args.max_queue as usize,
        max_concurrent_requests: args.max_concurrent_requests as usize,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        max_request_timeout: MAX_REQUEST_TIMEOUT,
        max_images_per_request: args.max_images_per_request as usize,
        decode_limits: DecodeLimits {
            max_bytes: args.max_body_bytes as usize,
            max_pixels: args.max_pixels,
        },
        default_model: args.default_model.clone(),
        engine_threads: match args.engine_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        engine_nice: args.engine_nice,
        eval_results: args.eval_results.clone(),
        model_control: control_mode(args),
        repository_poll: Duration::from_secs(args.repository_poll_secs),
        resize: args.resize,
        throughput_mode: args.throughput_mode == "on",
    }
}
