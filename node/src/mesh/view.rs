//! Remote views: `/hearth/view/1` serves the view routes to services on other
//! machines. Any peer may ask (services are not devices); what it gets is decided by
//! the access door from its token and the PeerId the Noise handshake authenticated (a
//! grant made with `--to PEER_ID` works only from that PeerId), exactly as for the
//! local API's view routes — this module only parses frames and renders answers.
//!
//! Bounds: at most [`MAX_STREAMS`] streams at once and [`MAX_STREAMS_PER_PEER`] per
//! peer (one slow or hostile peer cannot shut the others out); a stream must send its
//! first request within [`FIRST_FRAME`] and each later one within [`IDLE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::api::{ErrorBody, ErrorCode, ErrorDetail};
use hearth_protocol::view::{MAX_VIEW_REQUEST, ViewRequest, ViewResponse, ViewRoute};
use libp2p::PeerId;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::frames::{read_frame, write_frame};
use crate::access::{AccessError, Credentials, Door};

/// Remote view streams served at once, all peers together.
pub const MAX_STREAMS: usize = 256;
/// Remote view streams one peer may have open.
pub const MAX_STREAMS_PER_PEER: usize = 4;
/// A new stream must send its first request within this time.
pub const FIRST_FRAME: Duration = Duration::from_secs(5);
/// An open stream may wait this long between requests.
pub const IDLE: Duration = Duration::from_secs(60);

pub(super) async fn serve_loop(
    door: Door,
    mut incoming: libp2p_stream::IncomingStreams,
    mut stop: watch::Receiver<bool>,
) {
    let mut streams = JoinSet::new();
    let per_peer: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    loop {
        let Some((peer, stream)) = super::next_stream(&mut incoming, &mut stop).await else {
            break;
        };
        while streams.try_join_next().is_some() {}
        if streams.len() >= MAX_STREAMS {
            tracing::warn!(%peer, "too many remote view streams; refusing one more");
            continue;
        }
        {
            let mut counts = per_peer.lock().expect("per-peer lock is never poisoned");
            let count = counts.entry(peer).or_default();
            if *count >= MAX_STREAMS_PER_PEER {
                tracing::info!(%peer, "this peer has too many remote view streams; refusing one more");
                continue;
            }
            *count += 1;
        }
        let door = door.clone();
        let per_peer = per_peer.clone();
        streams.spawn(async move {
            if let Err(e) = serve(peer, stream, door).await {
                tracing::debug!(%peer, error = %e, "remote view stream closed");
            }
            let mut counts = per_peer.lock().expect("per-peer lock is never poisoned");
            if let Some(count) = counts.get_mut(&peer) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&peer);
                }
            }
        });
    }
    streams.shutdown().await;
}

async fn serve(peer: PeerId, mut stream: libp2p::Stream, door: Door) -> Result<(), String> {
    let mut wait = FIRST_FRAME;
    loop {
        let frame = match tokio::time::timeout(wait, read_frame(&mut stream)).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e.to_string()),
        };
        wait = IDLE;
        let response = match parse(&frame) {
            Ok((request, route)) => answer(&door, peer, request, route).await,
            Err(message) => error_response(ErrorCode::BadRequest, message),
        };
        let bytes = serde_json::to_vec(&response).map_err(|e| e.to_string())?;
        write_frame(&mut stream, &bytes)
            .await
            .map_err(|e| e.to_string())?;
    }
}

fn parse(frame: &[u8]) -> Result<(ViewRequest, ViewRoute), String> {
    if frame.len() > MAX_VIEW_REQUEST {
        return Err(format!("the request is over {MAX_VIEW_REQUEST} bytes"));
    }
    let request: ViewRequest =
        serde_json::from_slice(frame).map_err(|e| format!("not a view request: {e}"))?;
    let route = ViewRoute::parse(&request.method, &request.path).map_err(|e| e.to_string())?;
    Ok((request, route))
}

async fn answer(door: &Door, peer: PeerId, request: ViewRequest, route: ViewRoute) -> ViewResponse {
    let credentials = Credentials::remote(&request.token, peer);
    match route {
        ViewRoute::All => render(200, door.read_all(&credentials).await),
        ViewRoute::Collection(c) => render(200, door.read_collection(&credentials, &c).await),
        ViewRoute::Record(c, id) => render(200, door.read_record(&credentials, &c, &id).await),
        ViewRoute::Remove(c, id) => render(204, door.remove(&credentials, &c, &id).await),
        ViewRoute::Write(c) => {
            let body = match request.body {
                Some(Value::Object(map)) => map,
                Some(_) => {
                    return error_response(
                        ErrorCode::NotAnObject,
                        "a record must be a JSON object".into(),
                    );
                }
                None => {
                    return error_response(ErrorCode::BadRequest, "a write needs a body".into());
                }
            };
            match door.write(&credentials, &c, body).await {
                Ok(put) => render(if put.created { 201 } else { 200 }, Ok(put)),
                Err(e) => render::<()>(0, Err(e)),
            }
        }
    }
}

/// The same status and body the HTTP API answers.
fn render<T: Serialize>(status: u16, result: Result<T, AccessError>) -> ViewResponse {
    match result {
        Ok(body) => ViewResponse {
            status,
            body: serde_json::to_value(body).unwrap_or(Value::Null),
        },
        Err(e) => error_response(e.code(), e.to_string()),
    }
}

fn error_response(code: ErrorCode, message: String) -> ViewResponse {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str().to_owned(),
            message,
        },
    };
    ViewResponse {
        status: code.http_status(),
        body: serde_json::to_value(body).expect("an error body serializes"),
    }
}
