//! Remote views: `/hearth/view/1` serves the view routes of the local API to services
//! on other machines, with the caller's Noise-authenticated PeerId attached so grants
//! bound with `--to` hold. Any peer may ask (services are not devices); what it gets
//! is decided by its token exactly as over HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt;
use hearth_protocol::view::{MAX_VIEW_REQUEST, ViewRequest, ViewResponse};
use libp2p::PeerId;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::frames::{read_frame, write_frame};
use crate::Vault;
use crate::api::Remote;

/// Remote view streams served at once.
const MAX_STREAMS: usize = 32;
const IDLE: Duration = Duration::from_secs(60);

pub(super) async fn serve_loop(vault: Arc<Vault>, mut incoming: libp2p_stream::IncomingStreams) {
    let permits = Arc::new(Semaphore::new(MAX_STREAMS));
    // Dropping the set (when this loop is stopped) stops every stream in it.
    let mut streams = JoinSet::new();
    let router = crate::api::router(vault);
    while let Some((peer, stream)) = incoming.next().await {
        while streams.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many remote view streams; refusing one more");
            continue;
        };
        let router = router.clone();
        streams.spawn(async move {
            if let Err(e) = serve(peer, stream, router).await {
                tracing::debug!(%peer, error = %e, "remote view stream closed");
            }
            drop(permit);
        });
    }
}

async fn serve(
    peer: PeerId,
    mut stream: libp2p::Stream,
    router: axum::Router,
) -> Result<(), String> {
    loop {
        let frame = match tokio::time::timeout(IDLE, read_frame(&mut stream)).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e.to_string()),
        };
        let response = match parse(&frame) {
            Ok(request) => answer(peer, request, router.clone()).await,
            Err(message) => ViewResponse {
                status: 400,
                body: error("bad_request", &message),
            },
        };
        let bytes = serde_json::to_vec(&response).map_err(|e| e.to_string())?;
        write_frame(&mut stream, &bytes)
            .await
            .map_err(|e| e.to_string())?;
    }
}

fn parse(frame: &[u8]) -> Result<ViewRequest, String> {
    if frame.len() > MAX_VIEW_REQUEST {
        return Err(format!("the request is over {MAX_VIEW_REQUEST} bytes"));
    }
    let request: ViewRequest =
        serde_json::from_slice(frame).map_err(|e| format!("not a view request: {e}"))?;
    let view_route = request.path == "/v1/view" || request.path.starts_with("/v1/view/");
    if !view_route || request.path.contains("..") || request.path.contains('?') {
        return Err("only the /v1/view routes are served over the mesh".into());
    }
    if request.path == "/v1/view/events" {
        return Err("event streams are not served over the mesh yet".into());
    }
    if request.method != "GET" && request.method != "POST" {
        return Err("the method must be GET or POST".into());
    }
    Ok(request)
}

async fn answer(peer: PeerId, request: ViewRequest, router: axum::Router) -> ViewResponse {
    let body = match &request.body {
        Some(value) => Body::from(value.to_string()),
        None => Body::empty(),
    };
    let built = axum::http::Request::builder()
        .method(request.method.as_str())
        .uri(request.path.as_str())
        .header("authorization", format!("Bearer {}", request.token))
        .header("content-type", "application/json")
        .extension(Remote(Some(peer)))
        .body(body);
    let http_request = match built {
        Ok(r) => r,
        Err(e) => {
            return ViewResponse {
                status: 400,
                body: error("bad_request", &e.to_string()),
            };
        }
    };
    let response = match router.oneshot(http_request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    ViewResponse {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}
