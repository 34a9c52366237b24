//! The `serve` command: load, start the engine threads, listen, warm up, and drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::http::app;
use crate::error::{Error, Result};
use crate::service::Service;

/// Serves HTTP on `listener` until `stop` resolves, then drains: readiness fails at once, new
/// requests get 503, admitted ones are answered (for at most `drain_timeout`), the engine
/// threads finish their queues and stop.
pub async fn serve_until(
    service: Arc<Service>,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> Result<()> {
    let addr = listener
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
    let mut graceful = stopping.clone();
    let server = axum::serve(listener, app(service.clone())).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|s| *s).await;
    });
    let mut timer = stopping;
    let deadline = async move {
        let _ = timer.wait_for(|s| *s).await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| Error::Internal(format!("HTTP server: {e}")))?,
        _ = deadline => tracing::warn!(?drain_timeout, "drain timeout: closing with requests in flight"),
    }
    let engine = service.clone();
    tokio::task::spawn_blocking(move || engine.stop_engine())
        .await
        .map_err(|e| Error::Internal(format!("stopping the engine: {e}")))?;
    tracing::info!("drained: bye");
    Ok(())
}

/// Binds `addr` and serves until SIGTERM or ctrl-c.
pub async fn run(service: Arc<Service>, addr: SocketAddr, drain_timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen on {addr}: {e}")))?;
    serve_until(service, listener, crate::shutdown::signal(), drain_timeout).await
}
