//! The backup host's local API: the hello every Hearth CLI asks first, then, with the
//! host's owner token, what it is and holds (`GET /v1/host`) and a new invite
//! (`POST /v1/host/invites`). Loopback names only, as a vault's API.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use hearth_protocol::api::{ErrorCode, HelloRequest, HelloResponse, identity_proof};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::HostState;
use super::store::VaultSummary;
use crate::api::{ApiError, HostAllowlist, hello_answer};

type HostApp = Arc<HostState>;

/// `GET /v1/host`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostInfo {
    pub peer_id: String,
    /// Where devices reach this host.
    pub addrs: Vec<String>,
    /// Each enrolled vault, by an opaque name: its sizes only.
    pub vaults: Vec<VaultSummary>,
}

/// `POST /v1/host/invites`, and `hearth host invite --json`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostInvite {
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
}

pub fn router(state: HostApp) -> axum::Router {
    let allow = HostAllowlist::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), &[]);
    let owner = axum::Router::new()
        .route("/v1/host", get(info))
        .route("/v1/host/invites", post(invite))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_owner));
    axum::Router::new()
        .route("/v1/hello", post(hello))
        .merge(owner)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let allow = allow.clone();
            async move {
                let host = request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if !allow.allows(host) {
                    return Err(ApiError::new(
                        ErrorCode::BadHost,
                        "the host's API answers to loopback names only",
                    ));
                }
                Ok::<Response, ApiError>(next.run(request).await)
            }
        }))
        .with_state(state)
}

async fn require_owner(
    State(state): State<HostApp>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingToken,
                "the host's owner token is needed (HOME/owner.token)",
            )
        })?;
    let hash = crate::keys::token_hash(presented.as_bytes());
    if !bool::from(hash.ct_eq(&state.owner_token_hash)) {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "that is not this host's owner token",
        ));
    }
    Ok(next.run(request).await)
}

async fn hello(
    State(state): State<HostApp>,
    Json(request): Json<HelloRequest>,
) -> Result<Json<HelloResponse>, ApiError> {
    Ok(Json(hello_answer(&request, |c| {
        identity_proof(&state.owner_token_hash, c)
    })?))
}

async fn info(State(state): State<HostApp>) -> Json<HostInfo> {
    Json(HostInfo {
        peer_id: state.peer_id.to_string(),
        addrs: state.addrs().iter().map(|a| a.to_string()).collect(),
        vaults: state.store.summaries(),
    })
}

async fn invite(State(state): State<HostApp>) -> Json<HostInvite> {
    let (code, expires_at) = state.invite();
    Json(HostInvite {
        code: code.to_string(),
        expires_at,
    })
}
