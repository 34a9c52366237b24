//! The `serve` command: load, start the engine threads, listen, warm up, and drain on shutdown.

use std::future::Future;
use std::future::IntoFuture;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::grpc;
use crate::api::http::app;
use crate::error::{Error, Result};
use crate::service::Service;

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
    // Responses are written whole: Nagle's algorithm would only hold their last segment back
    // until the client's delayed ACK (tens of milliseconds).
    let http_listener = listeners.http.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let http = axum::serve(http_listener, app(service.clone()))
        .with_graceful_shutdown(signalled(stopping.clone()))
        .into_future();
    let grpc = grpc::serve(service.clone(), listeners.grpc, stopping.clone());
    // The first server to fail stops the other: a half-up service must not look healthy.
    let both = async {
        tokio::try_join!(
            async {
                http.await
                    .map_err(|e| Error::Internal(format!("HTTP server: {e}")))
            },
            grpc
        )
        .map(|_| ())
    };
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
    tracing::info!("drained: bye");
    Ok(())
}

/// Binds the ports and serves until SIGTERM or ctrl-c.
pub async fn run(
    service: Arc<Service>,
    host: IpAddr,
    http_port: u16,
    grpc_port: u16,
    drain_timeout: Duration,
) -> Result<()> {
    let listeners = Listeners::bind(host, http_port, grpc_port).await?;
    serve_until(service, listeners, crate::shutdown::signal(), drain_timeout).await
}
