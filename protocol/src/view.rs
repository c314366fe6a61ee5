//! The remote view protocol `/hearth/view/1`: a service on another machine reads its
//! view over the mesh, where the node knows its PeerId from the Noise handshake (a
//! grant made with `--to PEER_ID` works only from that PeerId).
//!
//! Frames as in [`crate::sync`], each body one JSON object. Request:
//! `{"method": "GET"|"POST", "path": "/v1/view...", "token": "...", "body"?: {...}}`;
//! answer: `{"status": 200, "body": ...}` — the same status and body as the HTTP API.

use serde::{Deserialize, Serialize};

pub const VIEW_PROTOCOL: &str = "/hearth/view/1";
/// Largest request accepted on the view protocol.
pub const MAX_VIEW_REQUEST: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewRequest {
    pub method: String,
    pub path: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewResponse {
    pub status: u16,
    pub body: serde_json::Value,
}
