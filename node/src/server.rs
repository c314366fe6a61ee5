//! The HTTP server loop of the local API, bounded against hostile clients.
//!
//! In: a bound listener, the router, a stop signal. Out: served connections.
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (more wait in the kernel's
//! accept queue, so a flood of idle connections delays others but costs the node no
//! memory); a client must send a request's whole head within [`HEADER_TIMEOUT`],
//! including between keep-alive requests, so a slow or idle client (slowloris) is
//! disconnected; request heads are capped at [`MAX_HEAD_BYTES`] (431 beyond) and
//! [`MAX_HEADERS`] headers. Bodies are capped per route (see `api`). Garbage that is
//! not HTTP gets a 400 and the connection is closed. On stop, no new connection is
//! accepted and open ones finish their request (at most [`DRAIN`]).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

pub const MAX_CONNECTIONS: usize = 512;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;
/// How long open connections get to finish when the node stops.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop` fires, then drains.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    serve_with(listener, app, stop, None).await
}

/// Serves `app` over TLS only: a connection whose TLS handshake does not finish
/// within [`HEADER_TIMEOUT`] is dropped (plain HTTP gets no answer).
pub async fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    stop: oneshot::Receiver<()>,
    tls: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    serve_with(listener, app, stop, Some(tls)).await
}

async fn serve_with(
    listener: TcpListener,
    app: axum::Router,
    stop: oneshot::Receiver<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_headers(MAX_HEADERS);
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            _ = &mut stop => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Every request knows the address it came from (see `throttle`).
        let client = crate::throttle::ClientAddr(peer.ip());
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            app.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(client);
                request
            },
        ));
        let Some(tls) = &tls else {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "API connection ended");
                }
                drop(slot);
            });
            continue;
        };
        let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after {DRAIN:?}; closing them");
    }
    Ok(())
}

/// Whether reading a body failed because it is longer than its limit (not because
/// the client went away or sent a broken body).
pub(crate) fn is_length_limit(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        || e.to_string().contains("length limit")
}
