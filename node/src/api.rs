//! The local HTTP API (axum), as documented in docs/API.md.
//!
//! In: HTTP requests with a bearer token. Out: JSON answers, or JSON errors whose
//! status follows from their code. This is the only module that parses request bodies;
//! everything below it gets validated names and JSON objects. Store work runs on the
//! blocking pool; a write is answered only after it is committed to disk.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use hearth_protocol::api::{ErrorBody, ErrorCode, ErrorDetail, PutResponse, StatusResponse};
use hearth_protocol::{BlobId, CollectionName, RecordId};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::Vault;
use crate::access::{self, AccessError, AccessRecord, Authorized, Grant};
use crate::blobs::BlobError;
use crate::collections::CollectionError;
use crate::store::StoreError;
use hearth_protocol::scope::{CollectionScope, FieldPath, Fields};

type AppState = Arc<Vault>;

pub fn router(vault: Arc<Vault>) -> Router {
    let limit = vault.limits.max_concurrent_requests;
    let owner = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/collections", get(list_collections))
        .route(
            "/v1/collections/{collection}/records",
            get(list_records).post(create_record),
        )
        .route(
            "/v1/collections/{collection}/records/{id}",
            get(get_record)
                .put(put_record)
                .patch(patch_record)
                .delete(delete_record),
        )
        .route(
            "/v1/collections/{collection}/records/{id}/conflicts",
            get(record_conflicts),
        )
        .route(
            "/v1/collections/{collection}/records/{id}/text",
            axum::routing::post(edit_text),
        )
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/invite", axum::routing::post(create_invite))
        .route("/v1/devices/{peer}", axum::routing::delete(remove_device))
        .route("/v1/blobs", get(list_blobs).post(put_blob))
        .route("/v1/blobs/{id}", get(get_blob))
        .route("/v1/grants", get(list_grants).post(create_grant))
        .route("/v1/grants/{id}/revoke", axum::routing::post(revoke_grant))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route_layer(middleware::from_fn_with_state(vault.clone(), require_owner));
    let service = Router::new()
        .route("/v1/view", get(view_all))
        .route("/v1/view/events", get(view_events))
        .route(
            "/v1/view/{collection}",
            get(view_collection).post(view_write),
        )
        .route("/v1/view/{collection}/{id}", get(view_record));
    owner
        .merge(service)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower::limit::ConcurrencyLimitLayer::new(limit))
        .with_state(vault)
}

/// An error answer: a code (which fixes the status) and a message for people.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = self.code.as_str(), message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::Corrupt { .. } | StoreError::Malformed(_) | StoreError::Version { .. } => {
                ErrorCode::Corrupt
            }
            StoreError::Closed => ErrorCode::Unavailable,
            StoreError::DiskFull => ErrorCode::InsufficientStorage,
            _ => ErrorCode::Storage,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<CollectionError> for ApiError {
    fn from(e: CollectionError) -> Self {
        match e {
            CollectionError::Store(e) => e.into(),
            CollectionError::Document { .. } => ApiError::new(ErrorCode::Corrupt, e.to_string()),
            CollectionError::BadEdit(reason) => ApiError::new(ErrorCode::BadRequest, reason),
            other => ApiError::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let code = match &e {
            AccessError::InvalidToken => ErrorCode::InvalidToken,
            AccessError::Revoked => ErrorCode::Revoked,
            AccessError::Expired => ErrorCode::Expired,
            AccessError::OutOfScope(_) => ErrorCode::OutOfScope,
            AccessError::BadRequest(_) => ErrorCode::BadRequest,
            AccessError::NotFound(_) => ErrorCode::NotFound,
            AccessError::Collection(_) | AccessError::Token(_) => ErrorCode::Internal,
        };
        if let AccessError::Collection(inner) = e {
            return inner.into();
        }
        ApiError::new(code, e.to_string())
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Store(e) => e.into(),
            BlobError::NotFound(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
            BlobError::TooLarge { .. } => ApiError::new(ErrorCode::TooLarge, e.to_string()),
            BlobError::Body(_) => ApiError::new(ErrorCode::BadRequest, e.to_string()),
            BlobError::Corrupt { .. } => ApiError::new(ErrorCode::Corrupt, e.to_string()),
            BlobError::Io { ref source, .. } if crate::store::is_disk_full(source) => {
                ApiError::new(ErrorCode::InsufficientStorage, e.to_string())
            }
            other => ApiError::new(ErrorCode::Storage, other.to_string()),
        }
    }
}

async fn require_owner(
    State(vault): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingToken,
                "no Authorization header; send `Authorization: Bearer <token>`",
            )
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingToken,
                "the Authorization header is not `Bearer <token>`",
            )
        })?;
    if !vault.keys.is_owner_token(token.as_bytes()) {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "the token is not this vault's owner token",
        ));
    }
    Ok(next.run(request).await)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see docs/API.md")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

async fn status(State(vault): State<AppState>) -> Result<Json<StatusResponse>, ApiError> {
    let (collections, blobs) = blocking(&vault, |v| {
        Ok((v.collections.list()?, v.blobs.count() as u64))
    })
    .await?;
    let devices = devices_view(&vault).await?;
    let listen_addrs = match vault.mesh() {
        Some(mesh) => mesh
            .handle
            .listen_addrs()
            .await
            .unwrap_or_default()
            .iter()
            .map(|a| a.to_string())
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        vault_id: vault.keys.vault_id_hex(),
        peer_id: vault.keys.peer_id().to_string(),
        home: vault.home.root().display().to_string(),
        api_addr: vault.api_addr.to_string(),
        collections,
        blobs,
        listen_addrs,
        devices,
    }))
}

/// The device list with what this node knows of each: online, last sync.
async fn devices_view(vault: &AppState) -> Result<Vec<Value>, ApiError> {
    let mut list = blocking(vault, |v| Ok(crate::mesh::devices::list(&v.collections)?)).await?;
    let (online, last_sync) = match vault.mesh() {
        Some(mesh) => (
            mesh.handle.connected_peers().await.unwrap_or_default(),
            mesh.sync.last_sync(),
        ),
        None => (Vec::new(), Default::default()),
    };
    let me = vault.keys.peer_id().to_string();
    for device in &mut list {
        let Some(obj) = device.as_object_mut() else {
            continue;
        };
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let peer: Option<libp2p::PeerId> = id.parse().ok();
        let this = id == me;
        let is_online = this || peer.is_some_and(|p| online.contains(&p));
        let synced = peer
            .and_then(|p| last_sync.get(&p).copied())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        obj.insert("online".into(), Value::Bool(is_online));
        obj.insert("last_sync".into(), synced.map_or(Value::Null, Value::from));
        obj.insert("this_device".into(), Value::Bool(this));
    }
    Ok(list)
}

async fn list_devices(State(vault): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(devices_view(&vault).await?))
}

async fn create_invite(State(vault): State<AppState>) -> Result<Response, ApiError> {
    let mesh = vault.mesh().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "this node runs without the mesh, so no device can join it",
        )
    })?;
    let (code, expires_at) = mesh
        .pairing
        .invite(crate::mesh::pairing::DEFAULT_INVITE_TTL)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
    let body = hearth_protocol::api::InviteResponse {
        code: code.to_string(),
        expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn remove_device(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let raw = path_param(path)?;
    let peer: libp2p::PeerId = raw
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidId, format!("{raw:?} is not a PeerId")))?;
    if peer == vault.keys.peer_id() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "a device cannot remove itself; remove it from another device",
        ));
    }
    blocking(&vault, move |v| {
        if crate::mesh::devices::remove(&v.collections, &peer)? {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no device {peer} in this vault"),
            ))
        }
    })
    .await?;
    vault.store.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_collections(State(vault): State<AppState>) -> Result<Response, ApiError> {
    let list = blocking(&vault, |v| Ok(v.collections.list()?)).await?;
    Ok(Json(list).into_response())
}

async fn list_records(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    Ok(Json(
        blocking(&vault, move |v| Ok(v.collections.records(&collection)?)).await?,
    ))
}

async fn get_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    inline(&vault, move |v| {
        v.collections
            .get(&collection, &id)?
            .ok_or_else(|| record_not_found(&collection, &id))
    })
    .await
    .map(Json)
}

async fn create_record(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let collection = writable(collection_name(&path_param(path)?)?)?;
    let mut record = read_record_body(&vault, body).await?;
    let id = id_from_body(&mut record)?;
    write_record(vault, collection, id, record).await
}

async fn put_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let mut record = read_record_body(&vault, body).await?;
    check_body_id(&mut record, &id)?;
    write_record(vault, collection, id, record).await
}

async fn write_record(
    vault: AppState,
    collection: CollectionName,
    id: RecordId,
    record: Map<String, Value>,
) -> Result<Response, ApiError> {
    let (created, id) = inline(&vault, move |v| {
        Ok((v.collections.put(&collection, &id, &record)?, id))
    })
    .await?;
    vault.store.commit().await?;
    Ok(put_response(created, &id))
}

async fn patch_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let mut patch = read_record_body(&vault, body).await?;
    check_body_id(&mut patch, &id)?;
    let record = inline(&vault, move |v| {
        v.collections
            .patch(&collection, &id, &patch)?
            .ok_or_else(|| record_not_found(&collection, &id))
    })
    .await?;
    vault.store.commit().await?;
    Ok(Json(record))
}

async fn delete_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    inline(&vault, move |v| {
        if v.collections.remove(&collection, &id)? {
            Ok(())
        } else {
            Err(record_not_found(&collection, &id))
        }
    })
    .await?;
    vault.store.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"field": NAME, "edits": [{"at": N, "delete"?: N, "insert"?: TEXT}, ...]}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TextEditRequest {
    field: String,
    edits: Vec<TextEditBody>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TextEditBody {
    at: usize,
    #[serde(default)]
    delete: usize,
    #[serde(default)]
    insert: String,
}

/// Applies character edits to a text field as one change, so that devices editing
/// the same text apart merge character by character instead of one replacing the other.
async fn edit_text(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let body = read_record_body(&vault, body).await?;
    let request: TextEditRequest = serde_json::from_value(Value::Object(body)).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "expected {{\"field\": NAME, \"edits\": [{{\"at\", \"delete\", \"insert\"}}]}}: {e}"
            ),
        )
    })?;
    if request.field.is_empty() || request.field == "id" {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "field must name a text field of the record (not \"id\")",
        ));
    }
    let edits: Vec<crate::records::TextEdit> = request
        .edits
        .into_iter()
        .map(|e| crate::records::TextEdit {
            position: e.at,
            delete: e.delete,
            insert: e.insert,
        })
        .collect();
    let record = inline(&vault, move |v| {
        if !v
            .collections
            .edit_text(&collection, &id, &request.field, &edits)?
        {
            return Err(record_not_found(&collection, &id));
        }
        v.collections
            .get(&collection, &id)?
            .ok_or_else(|| record_not_found(&collection, &id))
    })
    .await?;
    vault.store.commit().await?;
    Ok(Json(record))
}

async fn record_conflicts(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    inline(&vault, move |v| {
        v.collections
            .conflicts(&collection, &id)?
            .ok_or_else(|| record_not_found(&collection, &id))
    })
    .await
    .map(Json)
}

async fn list_blobs(State(vault): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(blocking(&vault, |v| Ok(v.blobs.list()?)).await?).into_response())
}

async fn put_blob(State(vault): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let max = vault.limits.max_blob_bytes;
    let info = vault.blobs.put(body.into_data_stream(), max).await?;
    // Listed in `_blobs`, so the vault's other devices fetch it.
    let (id, size) = (info.id.clone(), info.size);
    if blocking(&vault, move |v| {
        Ok(crate::mesh::blobsync::announce(&v.collections, &id, size)?)
    })
    .await?
    {
        vault.store.commit().await?;
    }
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn get_blob(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = BlobId::parse(&path_param(path)?)
        .map_err(|e| ApiError::new(ErrorCode::InvalidBlobId, e.to_string()))?;
    let mut reader = vault.blobs.open_blob(id)?;
    let size = reader.size();
    // The first chunk is read before answering, so a corrupt blob gets an error
    // status, not a 200 that breaks off. A later bad chunk aborts the transfer.
    let first = match reader.next_chunk().await {
        Some(chunk) => Some(chunk?),
        None => None,
    };
    let rest = reader.into_stream().map(|chunk| {
        chunk.map_err(|e| {
            tracing::error!(error = %e, "blob read failed mid-transfer; aborting it");
            std::io::Error::other(e.to_string())
        })
    });
    let stream = futures::stream::iter(first.map(Ok::<Bytes, std::io::Error>)).chain(rest);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// `201` for a new record, `200` for a changed one, with `{"id", "created"}`.
fn put_response(created: bool, id: &RecordId) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(PutResponse {
            id: id.to_string(),
            created,
        }),
    )
        .into_response()
}

/// The record id a create names in its body (`"id"`), or a new random one.
fn id_from_body(record: &mut Map<String, Value>) -> Result<RecordId, ApiError> {
    match record.remove("id") {
        Some(Value::String(id)) => {
            RecordId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidId, e.to_string()))
        }
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidId,
            "the record's \"id\" field must be a string",
        )),
        None => {
            let mut bytes = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            Ok(RecordId::from_random(bytes))
        }
    }
}

/// Runs store work on the blocking pool.
async fn blocking<R, F>(vault: &AppState, f: F) -> Result<R, ApiError>
where
    R: Send + 'static,
    F: FnOnce(&Vault) -> Result<R, ApiError> + Send + 'static,
{
    let vault = vault.clone();
    tokio::task::spawn_blocking(move || f(&vault))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("store task failed: {e}")))?
}

/// Runs a single-record operation on the request's own task: it takes tens of
/// microseconds, less than a hop to the blocking pool and back would cost.
async fn inline<R, F>(vault: &AppState, f: F) -> Result<R, ApiError>
where
    F: FnOnce(&Vault) -> Result<R, ApiError>,
{
    f(vault)
}

async fn read_record_body(vault: &AppState, body: Body) -> Result<Map<String, Value>, ApiError> {
    let limit = vault.limits.max_record_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("the body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(ErrorCode::BadRequest, format!("cannot read the body: {e}"))
        }
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::new(
            ErrorCode::NotAnObject,
            format!("a record must be a JSON object, not {}", json_kind(&other)),
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::BadJson,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// A body may carry the record's id as `"id"`; it must then match the path.
fn check_body_id(record: &mut Map<String, Value>, id: &RecordId) -> Result<(), ApiError> {
    match record.remove("id") {
        None => Ok(()),
        Some(Value::String(body_id)) if body_id == id.as_str() => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidId,
            format!("the body's \"id\" field does not match the record id {id:?} in the path"),
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn path_param<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad path: {}", e.body_text()),
        )
    })
}

fn collection_name(name: &str) -> Result<CollectionName, ApiError> {
    CollectionName::parse(name)
        .map_err(|e| ApiError::new(ErrorCode::InvalidCollection, e.to_string()))
}

fn record_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(CollectionName, RecordId), ApiError> {
    let (collection, id) = path_param(path)?;
    let collection = collection_name(&collection)?;
    let id =
        RecordId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidId, e.to_string()))?;
    Ok((collection, id))
}

fn writable(collection: CollectionName) -> Result<CollectionName, ApiError> {
    if collection.is_system() {
        return Err(ApiError::new(
            ErrorCode::Reserved,
            format!(
                "collection {collection} belongs to the system and cannot be written through this route"
            ),
        ));
    }
    Ok(collection)
}

fn record_not_found(collection: &CollectionName, id: &RecordId) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no record {id} in collection {collection}"),
    )
}

// ---- Grants (owner) ----

async fn create_grant(State(vault): State<AppState>, body: Body) -> Result<Response, ApiError> {
    // Same limits and errors as a record body (413 too_large, 400 bad_json, ...).
    let body = read_record_body(&vault, body).await?;
    let request: hearth_protocol::api::GrantRequest = serde_json::from_value(Value::Object(body))
        .map_err(|e| {
        ApiError::new(ErrorCode::BadRequest, format!("not a grant request: {e}"))
    })?;
    let scope = hearth_protocol::scope::Scope::parse(
        request.read.as_deref(),
        request.write.as_deref(),
        &request.filters,
    )
    .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let expires = match request.expires.as_deref() {
        Some(text) => access::parse_duration(text)?,
        None => Some(access::DEFAULT_EXPIRY),
    };
    let rate = request
        .rate
        .as_deref()
        .map(access::parse_rate)
        .transpose()?;
    if let Some(to) = &request.to {
        to.parse::<libp2p::PeerId>().map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("--to {to:?} is not a PeerId"),
            )
        })?;
    }
    let (grant, token) = blocking(&vault, move |v| {
        Ok(access::create_grant(
            &v.collections,
            &v.keys,
            access::NewGrant {
                service: request.service.clone(),
                scope,
                purpose: request.purpose.clone().unwrap_or_default(),
                expires,
                to: request.to.clone(),
                rate_per_minute: rate,
            },
        )?)
    })
    .await?;
    vault.store.commit().await?;
    let body = hearth_protocol::api::GrantCreated {
        id: grant.id,
        token,
        expires_at: grant.expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_grants(State(vault): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    blocking(&vault, |v| {
        let grants = access::list_grants(&v.collections)?;
        // One pass over the log, not one per grant.
        let mut last_used: std::collections::HashMap<String, u64> =
            std::collections::HashMap::new();
        for entry in access::audit_entries(&v.collections, None)? {
            if let (Some(grant), Some(at)) = (entry["grant"].as_str(), entry["at"].as_u64()) {
                let slot = last_used.entry(grant.to_owned()).or_default();
                *slot = (*slot).max(at);
            }
        }
        let now = access::now_unix();
        Ok(grants
            .into_iter()
            .map(|g| {
                let last_used = last_used.get(&g.id).copied();
                let status = g.status(now);
                let mut value = serde_json::to_value(&g).expect("a grant serializes");
                value["status"] = Value::from(status);
                value["last_used"] = last_used.map_or(Value::Null, Value::from);
                value
            })
            .collect())
    })
    .await
    .map(Json)
}

async fn revoke_grant(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(path)?;
    let (grant, seen) = blocking(&vault, move |v| {
        let grant = access::revoke(&v.collections, &id)?;
        let seen = access::seen_by(&v.collections, &id)?;
        Ok((grant, seen))
    })
    .await?;
    vault.store.commit().await?;
    Ok(Json(serde_json::json!({"grant": grant, "seen": seen})))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    grant: Option<String>,
}

async fn list_audit(
    State(vault): State<AppState>,
    query: axum::extract::Query<AuditQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let grant = query.0.grant;
    blocking(&vault, move |v| {
        Ok(access::audit_entries(&v.collections, grant.as_deref())?)
    })
    .await
    .map(Json)
}

async fn verify_audit(State(vault): State<AppState>) -> Result<Json<Value>, ApiError> {
    blocking(&vault, |v| {
        Ok(match access::verify_audit(&v.collections) {
            Ok(entries) => serde_json::json!({"ok": true, "entries": entries}),
            Err((entry, reason)) => {
                serde_json::json!({"ok": false, "entry": entry, "reason": reason})
            }
        })
    })
    .await
    .map(Json)
}

// ---- Views (services) ----

/// The grant behind a service's request, checked now.
async fn service_grant(
    vault: &AppState,
    headers: &axum::http::HeaderMap,
    remote: &Remote,
) -> Result<Authorized, ApiError> {
    authorize_token(vault, bearer_token(headers)?, remote).await
}

/// The Noise-authenticated PeerId of a request that came over `/hearth/view/1`;
/// `None` for the local HTTP API. Set only by the mesh, in the request's extensions,
/// which no HTTP client can reach.
#[derive(Debug, Clone, Copy)]
pub struct Remote(pub Option<libp2p::PeerId>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Remote {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Remote>()
            .copied()
            .unwrap_or(Remote(None)))
    }
}

fn bearer_token(headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    Ok(headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingToken,
                "send the grant's token as `Authorization: Bearer <token>`",
            )
        })?
        .to_owned())
}

async fn authorize_token(
    vault: &AppState,
    token: String,
    remote: &Remote,
) -> Result<Authorized, ApiError> {
    let auth = inline(vault, move |v| {
        Ok(access::authorize(&v.collections, &v.keys, &token)?)
    })
    .await?;
    if !vault.rates.admit(&auth.grant) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this grant allows {} requests a minute",
                auth.grant.rate_per_minute.unwrap_or(0)
            ),
        ));
    }
    if let Some(audience) = &auth.grant.to {
        // A grant bound to a service's PeerId works only from that PeerId, as the
        // Noise handshake of its connection proved it.
        let caller = remote.0.map(|p| p.to_string());
        if caller.as_deref() != Some(audience.as_str()) {
            return Err(ApiError::new(
                ErrorCode::OutOfScope,
                format!(
                    "this grant is bound to the remote service {audience}; use it over the mesh from that peer"
                ),
            ));
        }
    }
    Ok(auth)
}

fn readable<'a>(
    grant: &'a Grant,
    collection: &str,
) -> Result<&'a hearth_protocol::scope::CollectionScope, ApiError> {
    grant
        .scope
        .collection(collection)
        .filter(|c| c.read)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::OutOfScope,
                format!("the grant does not include reading {collection}"),
            )
        })
}

/// The scope a request actually has on `collection`: the grant's, narrowed by any
/// checks appended to the token. `None` if the token allows nothing there.
fn effective_scope(
    auth: &Authorized,
    collection: &str,
    records: &[Value],
) -> Result<Option<CollectionScope>, ApiError> {
    let scope = readable(&auth.grant, collection)?.clone();
    if !auth.is_attenuated() || auth.allows("read", collection, None) {
        return Ok(Some(scope));
    }
    let candidates: std::collections::BTreeSet<FieldPath> = match &scope.fields {
        Fields::Only(paths) => paths.clone(),
        Fields::All => records
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|r| r.keys())
            .filter(|k| *k != "id")
            .filter_map(|k| FieldPath::parse(k))
            .collect(),
    };
    let allowed: std::collections::BTreeSet<FieldPath> = candidates
        .into_iter()
        .filter(|p| auth.allows("read", collection, Some(&p.to_string())))
        .collect();
    if allowed.is_empty() {
        return Ok(None);
    }
    Ok(Some(CollectionScope {
        fields: Fields::Only(allowed),
        ..scope
    }))
}

/// Projects records through the request's scope and records the access.
fn project_and_audit(
    v: &crate::Vault,
    auth: &Authorized,
    collection: &str,
    records: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let scope = effective_scope(auth, collection, &records)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::OutOfScope,
            format!("the token does not include reading {collection}"),
        )
    })?;
    let grant = &auth.grant;
    let mut fields = Vec::new();
    let view: Vec<Value> = records
        .into_iter()
        .filter_map(|r| r.as_object().cloned())
        .filter_map(|r| {
            let projected = scope.project(&r)?;
            fields.extend(scope.field_names(&r));
            Some(Value::Object(projected))
        })
        .collect();
    v.audit.append(
        &v.collections,
        AccessRecord {
            grant,
            operation: "read",
            collection,
            records: view.len(),
            fields,
        },
    )?;
    Ok(view)
}

async fn view_all(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    remote: Remote,
) -> Result<Json<Value>, ApiError> {
    let auth = service_grant(&vault, &headers, &remote).await?;
    let (view, grant) = blocking(&vault, move |v| {
        let mut out = Map::new();
        for (name, scope) in &auth.grant.scope.collections {
            if !scope.read {
                continue;
            }
            let collection = collection_name(name)?;
            let records = v.collections.records(&collection)?;
            // A collection the token was narrowed away from is left out, not an error.
            if effective_scope(&auth, name, &records)?.is_none() {
                continue;
            }
            out.insert(
                name.clone(),
                Value::Array(project_and_audit(v, &auth, name, records)?),
            );
        }
        Ok((out, auth.grant))
    })
    .await?;
    vault.store.commit().await?;
    Ok(Json(
        serde_json::json!({"grant": grant.id, "service": grant.service, "collections": view}),
    ))
}

async fn view_collection(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    remote: Remote,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let auth = service_grant(&vault, &headers, &remote).await?;
    readable(&auth.grant, collection.as_str())?;
    let view = blocking(&vault, move |v| {
        let records = v.collections.records(&collection)?;
        project_and_audit(v, &auth, collection.as_str(), records)
    })
    .await?;
    vault.store.commit().await?;
    Ok(Json(view))
}

async fn view_record(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    remote: Remote,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let auth = service_grant(&vault, &headers, &remote).await?;
    readable(&auth.grant, collection.as_str())?;
    let view = inline(&vault, move |v| {
        let records: Vec<Value> = v.collections.get(&collection, &id)?.into_iter().collect();
        // A record the filter hides is as absent as one that does not exist.
        project_and_audit(v, &auth, collection.as_str(), records)?
            .pop()
            .ok_or_else(|| record_not_found(&collection, &id))
    })
    .await?;
    vault.store.commit().await?;
    Ok(Json(view))
}

async fn view_write(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    remote: Remote,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let auth = service_grant(&vault, &headers, &remote).await?;
    if !auth.allows("write", collection.as_str(), None) {
        return Err(ApiError::new(
            ErrorCode::OutOfScope,
            "this token was narrowed to reading only",
        ));
    }
    let grant = auth.grant;
    let mut record = read_record_body(&vault, body).await?;
    let scope = grant.scope.collection(collection.as_str()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::OutOfScope,
            format!("the grant does not include {collection}"),
        )
    })?;
    scope
        .check_write(&record)
        .map_err(|e| ApiError::new(ErrorCode::OutOfScope, e))?;
    let id = id_from_body(&mut record)?;
    let (created, id) = inline(&vault, move |v| {
        // A service changes only what it was granted: an existing record is merged
        // into, never replaced, so fields outside the grant stay as they are.
        let created = match v.collections.patch(&collection, &id, &record)? {
            Some(_) => false,
            None => {
                v.collections.put(&collection, &id, &record)?;
                true
            }
        };
        let fields = record.keys().cloned().collect();
        v.audit.append(
            &v.collections,
            AccessRecord {
                grant: &grant,
                operation: "write",
                collection: collection.as_str(),
                records: 1,
                fields,
            },
        )?;
        Ok((created, id))
    })
    .await?;
    vault.store.commit().await?;
    Ok(put_response(created, &id))
}

/// Projected records of one collection, by id.
type Snapshot = std::collections::BTreeMap<String, Value>;

fn snapshot(v: &crate::Vault, auth: &Authorized, collection: &str) -> Result<Snapshot, ApiError> {
    let name = collection_name(collection)?;
    let records = v.collections.records(&name)?;
    let Some(scope) = effective_scope(auth, collection, &records)? else {
        return Ok(Snapshot::new());
    };
    Ok(records
        .into_iter()
        .filter_map(|r| r.as_object().and_then(|r| scope.project(r)))
        .filter_map(|r| Some((r.get("id")?.as_str()?.to_owned(), Value::Object(r))))
        .collect())
}

/// `GET /v1/view/events`: server-sent events of changes inside the scope, projected.
/// `upsert` carries `{"collection", "record"}`, `remove` carries `{"collection", "id"}`;
/// a change outside the scope sends nothing. The grant is checked again at every
/// change: once revoked or expired, an `error` event is sent and the stream ends.
async fn view_events(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    remote: Remote,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let token = bearer_token(&headers)?;
    let auth = authorize_token(&vault, token.clone(), &remote).await?;
    let collections: Vec<String> = auth
        .grant
        .scope
        .collections
        .iter()
        .filter(|(_, c)| c.read)
        .map(|(name, _)| name.clone())
        .collect();
    let mut changes = vault.collections.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let state = vault.clone();
    tokio::spawn(async move {
        let vault = state;
        let mut stopping = vault.stopping.subscribe();
        let names = collections.clone();
        let auth_for_snap = std::sync::Arc::new(auth);
        let a = auth_for_snap.clone();
        let Ok(mut snapshots) = blocking(&vault, move |v| {
            names
                .iter()
                .map(|c| Ok((c.clone(), snapshot(v, &a, c)?)))
                .collect::<Result<std::collections::BTreeMap<_, _>, ApiError>>()
        })
        .await
        else {
            return;
        };
        loop {
            let changed: Vec<String> = tokio::select! {
                _ = tx.closed() => return,
                _ = stopping.changed() => return,
                change = changes.recv() => match change {
                    Ok(name) if collections.iter().any(|c| c == name.as_str()) => vec![name.to_string()],
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => collections.clone(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            // Checked again at every change: revocation ends the stream.
            let auth = match authorize_token(&vault, token.clone(), &remote).await {
                Ok(auth) => std::sync::Arc::new(auth),
                Err(e) => {
                    let body = serde_json::json!({"code": e.code.as_str(), "message": e.message});
                    let _ = tx
                        .send(Event::default().event("error").data(body.to_string()))
                        .await;
                    return;
                }
            };
            for collection in changed {
                let (a, c) = (auth.clone(), collection.clone());
                let Ok(now) = blocking(&vault, move |v| snapshot(v, &a, &c)).await else {
                    return;
                };
                let before = snapshots.remove(&collection).unwrap_or_default();
                let mut events = Vec::new();
                let mut fields = Vec::new();
                for (id, record) in &now {
                    if before.get(id) != Some(record) {
                        if let Some(obj) = record.as_object() {
                            fields.extend(obj.keys().filter(|k| *k != "id").cloned());
                        }
                        let body = serde_json::json!({"collection": collection, "record": record});
                        events.push(Event::default().event("upsert").data(body.to_string()));
                    }
                }
                for id in before.keys().filter(|id| !now.contains_key(*id)) {
                    let body = serde_json::json!({"collection": collection, "id": id});
                    events.push(Event::default().event("remove").data(body.to_string()));
                }
                snapshots.insert(collection.clone(), now);
                if events.is_empty() {
                    continue;
                }
                let count = events.len();
                let (a, c) = (auth.clone(), collection.clone());
                let audited = blocking(&vault, move |v| {
                    v.audit.append(
                        &v.collections,
                        AccessRecord {
                            grant: &a.grant,
                            operation: "subscribe",
                            collection: &c,
                            records: count,
                            fields,
                        },
                    )?;
                    Ok(())
                })
                .await;
                if audited.is_err() || vault.store.commit().await.is_err() {
                    // Nothing is sent that the audit log does not show.
                    return;
                }
                for event in events {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
