//! The local HTTP API (axum), as documented in docs/API.md.
//!
//! In: HTTP requests with a bearer token. Out: JSON answers (types of
//! `hearth_protocol::api`), or JSON errors whose status follows from their code. This
//! is the only module that knows HTTP and parses request bodies. Owner routes work on
//! the vault directly; service routes (`/v1/view…`) only hand the service's
//! credentials to the access door ([`crate::access::Door`]) and render its answer — no
//! access rule lives here. A write is answered only after it is committed to disk.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use hearth_protocol::api::{
    AuditEntry, BlobInfo, BlobRemoved, CheckReport, CollectionInfo, ConflictsResponse, DeviceInfo,
    ErrorBody, ErrorCode, ErrorDetail, GrantCreated, GrantInfo, GrantRequest, HelloRequest,
    HelloResponse, InviteResponse, PutResponse, ResolveRequest, RevokeResponse, StatusResponse,
    StreamReady, TextEditRequest, VaultExport, VerifyResponse, ViewAll,
};
use hearth_protocol::{BlobId, CollectionName, RecordId};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::Vault;
use crate::access::events::{StreamItem, ViewEvent};
use crate::access::{self, Credentials};
use crate::blobs::BlobError;
use crate::devices;
use crate::pim;

pub(crate) type AppState = Arc<Vault>;

use crate::download::{Disposition, blob_response};
pub use crate::owner::Error as ApiError;
use crate::owner::{
    self, audit, audit_verify, blocking, conflicts_response, device_remove, device_rename,
    devices_view, grant_info, grant_new, grant_revoke, grants, import_error, invite, keep_version,
    owner_write, record_not_found, resolve, resolve_with, status_of, write_error,
};
use crate::server::is_length_limit;

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

pub fn router(vault: Arc<Vault>) -> Router {
    let limit = vault.limits.max_concurrent_requests;
    let owner = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/collections", get(list_collections))
        .route(
            "/v1/collections/{collection}",
            axum::routing::delete(drop_collection),
        )
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
            "/v1/collections/{collection}/records/{id}/resolve",
            post(resolve_record),
        )
        .route(
            "/v1/collections/{collection}/conflicts",
            get(collection_conflicts),
        )
        .route(
            "/v1/collections/{collection}/records/{id}/text",
            post(edit_text),
        )
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/invite", post(create_invite))
        .route(
            "/v1/devices/{peer}",
            axum::routing::delete(remove_device).patch(rename_device),
        )
        .route("/v1/blobs", get(list_blobs).post(put_blob))
        .route("/v1/blobs/{id}", get(get_blob).delete(remove_blob))
        .route("/v1/grants", get(list_grants).post(create_grant))
        .route("/v1/grants/{id}/revoke", post(revoke_grant))
        .route("/v1/import/{collection}", post(import))
        .route(
            "/v1/import/{collection}/state/{id}",
            get(import_state).put(set_import_state),
        )
        .route("/v1/export", get(export_all))
        .route("/v1/export/{collection}", get(export))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/check", get(check))
        .route("/v1/dashboard/login", post(crate::dashboard::login_link))
        .route_layer(middleware::from_fn_with_state(vault.clone(), require_owner));
    let service = Router::new()
        .route("/v1/view", get(view_all))
        .route("/v1/view/events", get(view_events))
        .route(
            "/v1/view/{collection}",
            get(view_collection).post(view_write),
        )
        .route(
            "/v1/view/{collection}/{id}",
            get(view_record).delete(view_remove),
        )
        // A static segment: it wins over `{collection}` (and `_blobs` is no user's).
        .route("/v1/view/_blobs/{id}", get(view_blob));
    owner
        .merge(service)
        .merge(crate::dav::routes())
        .merge(crate::dashboard::routes())
        .route("/v1/hello", post(hello))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower::limit::ConcurrencyLimitLayer::new(limit))
        .layer(middleware::from_fn_with_state(
            vault.clone(),
            crate::throttle::throttle_passwords,
        ))
        .layer(middleware::from_fn_with_state(vault.clone(), allowed_host))
        .with_state(vault)
}

/// The OpenAPI document of the local API, made from the handlers' annotations and the
/// protocol crate's types (`GET /v1/openapi.json`; a copy is docs/openapi.json). CardDAV,
/// CalDAV and the dashboard's pages are not in it (docs/API.md).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Hearth local API",
        description = "Owner routes (tag owner) take `Authorization: Bearer` with HOME/owner.token; service routes (tag service) a grant's token (or its app password with HTTP Basic). Errors are `{\"error\": {\"code\", \"message\"}}`; docs/API.md says more."
    ),
    paths(
        hello,
        status,
        list_collections,
        drop_collection,
        list_records,
        create_record,
        get_record,
        put_record,
        patch_record,
        delete_record,
        record_conflicts,
        resolve_record,
        collection_conflicts,
        edit_text,
        list_devices,
        create_invite,
        remove_device,
        rename_device,
        list_blobs,
        put_blob,
        get_blob,
        remove_blob,
        list_grants,
        create_grant,
        revoke_grant,
        import,
        import_state,
        set_import_state,
        export_all,
        export,
        list_audit,
        verify_audit,
        check,
        view_all,
        view_events,
        view_collection,
        view_write,
        view_record,
        view_remove,
        view_blob,
        openapi,
        crate::dashboard::login_link
    ),
    components(responses(Failure)),
    tags(
        (name = "owner", description = "the vault's owner: the CLI, the dashboard, scripts"),
        (name = "service", description = "a service reading and writing through its grant"),
        (name = "cli", description = "the CLI's check that it talks to this HOME's node")
    )
)]
pub struct ApiDoc;

/// An error: `{"error": {"code", "message"}}` (docs/API.md lists the codes).
#[derive(utoipa::ToResponse)]
#[allow(dead_code)] // Describes the answer `ApiError` renders; never built.
struct Failure(ErrorBody);

/// The path parameters of the OpenAPI document, named once.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct InCollection {
    /// A collection name.
    collection: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct AtRecord {
    /// A collection name.
    collection: String,
    /// A record id.
    id: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct AtBlob {
    /// A blob id (64 hex digits).
    id: String,
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "cli",
    summary = "This document",
    responses((status = 200, description = "the OpenAPI document", body = serde_json::Value))
)]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
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

/// Checks every request's head before anything else: at most
/// [`crate::server::MAX_HEAD_BYTES`] (the server's read buffer alone lets a head that
/// arrives in one piece through), and a `Host` that is this node's — a web page that
/// made its own name resolve to 127.0.0.1 (DNS rebinding) gets nothing.
async fn allowed_host(
    State(vault): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if head_size(&request) > crate::server::MAX_HEAD_BYTES {
        return Err(ApiError::new(
            ErrorCode::HeadTooLarge,
            format!(
                "the request's head is larger than {} bytes",
                crate::server::MAX_HEAD_BYTES
            ),
        ));
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| ApiError::new(ErrorCode::BadHost, "the request has no Host header"))?;
    if !vault.hosts.allows(host) {
        return Err(ApiError::new(
            ErrorCode::BadHost,
            "this node does not answer to that host name (allowed: loopback names and its configured addresses)",
        ));
    }
    Ok(next.run(request).await)
}

/// The size of a request's head as it came on the wire (request line and header
/// lines, each with its CRLF).
fn head_size(request: &Request) -> usize {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    request
        .headers()
        .iter()
        .fold(line + 2, |size, (name, value)| {
            size + name.as_str().len() + value.len() + 4
        })
}

/// The host names the API answers to: loopback names, the address it is bound to,
/// and any configured name (for an API served beyond loopback).
#[derive(Debug, Clone)]
pub struct HostAllowlist(Vec<String>);

impl HostAllowlist {
    pub fn new(bound: std::net::SocketAddr, extra: &[String]) -> Self {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        names.push(bound.ip().to_string());
        names.extend(extra.iter().map(|n| n.to_ascii_lowercase()));
        Self(names)
    }

    /// Whether `host` (a Host header: a name or address, with an optional port) is one
    /// of this node's names.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = if let Some(rest) = host.strip_prefix('[') {
            rest.split_once(']').map_or(rest, |(ip, _)| ip)
        } else {
            match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host.as_str(),
            }
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        self.0.iter().any(|allowed| allowed == name)
    }
}

async fn require_owner(
    State(vault): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(request.headers())?;
    if !vault.keys.is_owner_token(token.as_bytes()) {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "the token is not this vault's owner token",
        ));
    }
    Ok(next.run(request).await)
}

fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let header = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingToken,
            "no Authorization header; send `Authorization: Bearer <token>`",
        )
    })?;
    header
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
        })
}

/// On a listener that serves only what apps use (`hearth up --lan-apps-only`): the
/// owner's routes answer as routes that do not exist there.
pub async fn apps_only(request: axum::extract::Request, next: middleware::Next) -> Response {
    let path = request.uri().path();
    let owners = path.starts_with("/v1/")
        && !(path == "/v1/view" || path.starts_with("/v1/view/") || path == "/v1/openapi.json");
    if owners {
        return ApiError::new(
            ErrorCode::NotFound,
            "the owner's routes are not served on this address (hearth up --lan-apps-only); use the node's loopback API",
        )
        .into_response();
    }
    next.run(request).await
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

/// `POST /v1/hello`: proves this node holds the hash of this HOME's owner token,
/// before the CLI sends the token itself (a process that took over the port after a
/// crash cannot answer).
#[utoipa::path(
    post,
    path = "/v1/hello",
    tag = "cli",
    summary = "The node proves it holds this HOME's owner token (the CLI asks before sending it)",
    request_body = HelloRequest,
    responses((status = 200, description = "ok", body = HelloResponse), (status = "default", response = Failure))
)]
async fn hello(State(vault): State<AppState>, body: Body) -> Result<Json<HelloResponse>, ApiError> {
    let request: HelloRequest = read_typed_body(&vault, body).await?;
    let challenge = data_encoding::HEXLOWER_PERMISSIVE
        .decode(request.challenge.as_bytes())
        .ok()
        .filter(|c| c.len() == 32)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                "the challenge must be 32 bytes in hex",
            )
        })?;
    let proof = vault.keys.identity_proof(&challenge);
    Ok(Json(HelloResponse {
        proof: data_encoding::HEXLOWER.encode(&proof),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "owner",
    summary = "This device, its vault, collections, devices, blobs arriving",
    responses((status = 200, description = "ok", body = StatusResponse), (status = "default", response = Failure))
)]
async fn status(State(vault): State<AppState>) -> Result<Json<StatusResponse>, ApiError> {
    status_of(&vault).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "owner",
    summary = "The vault's devices",
    responses((status = 200, description = "ok", body = Vec<DeviceInfo>), (status = "default", response = Failure))
)]
async fn list_devices(State(vault): State<AppState>) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    Ok(Json(devices_view(&vault).await?))
}

#[utoipa::path(
    post,
    path = "/v1/devices/invite",
    tag = "owner",
    summary = "A one-time invite code for a new device",
    responses((status = 201, description = "ok", body = InviteResponse), (status = "default", response = Failure))
)]
async fn create_invite(State(vault): State<AppState>) -> Result<Response, ApiError> {
    let body = invite(&vault).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/devices/{peer}",
    tag = "owner",
    summary = "Remove a device from the vault",
    params(("peer" = String, Path, description = "a device's PeerId")),
    responses((status = 204, description = "removed"), (status = "default", response = Failure))
)]
async fn remove_device(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    device_remove(&vault, &path_param(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameRequest {
    name: String,
}

#[utoipa::path(
    patch,
    path = "/v1/devices/{peer}",
    tag = "owner",
    summary = "Name a device: {\"name\"}",
    params(("peer" = String, Path, description = "a device's PeerId")),
    request_body = serde_json::Value,
    responses((status = 204, description = "renamed"), (status = "default", response = Failure))
)]
async fn rename_device(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let raw = path_param(path)?;
    let request: RenameRequest = read_typed_body(&vault, body).await?;
    device_rename(&vault, &raw, &request.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "owner",
    summary = "Collections with their record counts",
    responses((status = 200, description = "ok", body = Vec<CollectionInfo>), (status = "default", response = Failure))
)]
async fn list_collections(
    State(vault): State<AppState>,
) -> Result<Json<Vec<CollectionInfo>>, ApiError> {
    Ok(Json(blocking(&vault, |v| Ok(v.collections.list()?)).await?))
}

/// `DELETE /v1/collections/{c}`: an empty collection leaves the listings (on every
/// device); one that holds records is refused (`409`).
#[utoipa::path(
    delete,
    path = "/v1/collections/{collection}",
    tag = "owner",
    summary = "Remove an empty collection from every device's list",
    params(InCollection),
    responses((status = 204, description = "removed"), (status = 409, description = "it still holds records"), (status = "default", response = Failure))
)]
async fn drop_collection(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    if collection.is_system() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("{collection} is the vault's own collection"),
        ));
    }
    let shown = collection.clone();
    let dropped = blocking(&vault, move |v| {
        if !v.collections.names()?.contains(&collection) {
            return Ok(None);
        }
        Ok(Some(v.collections.drop_empty(&collection)?))
    })
    .await?;
    match dropped {
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no collection is called {shown}"),
        )),
        Some(false) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("collection {shown} still holds records: remove them first"),
        )),
        Some(true) => {
            vault.store.commit().await?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// `?limit=N&after=ID` on the list routes: a page of records in the record index's order (a keyed hash of each id).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// At most this many records (1 to 10,000; 1,000 when only `after` is given).
    /// Without `limit` and `after`, every record. When the page is full, the answer's
    /// `Link` header (`rel="next"`) gives the next page's address.
    limit: Option<usize>,
    /// Start after this record id.
    after: Option<String>,
}

const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 1_000;

/// The page asked for, or `None` for every record.
fn page_of(
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Option<(Option<RecordId>, usize)>, ApiError> {
    let query = query
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?
        .0;
    if query.limit.is_none() && query.after.is_none() {
        return Ok(None);
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit must be between 1 and {MAX_PAGE}, not {limit}"),
        ));
    }
    let after = query
        .after
        .map(|after| {
            RecordId::parse(&after)
                .map_err(|e| ApiError::new(ErrorCode::InvalidId, format!("after: {e}")))
        })
        .transpose()?;
    Ok(Some((after, limit)))
}

/// A page as the answer: the records, and a `Link` to the next page when it is full.
fn page_answer(path: &str, records: Vec<Value>, next: Option<String>, limit: usize) -> Response {
    let mut answer = Json(records).into_response();
    if let Some(next) = next {
        // Collection names and record ids are URL-safe by construction.
        let link = format!("<{path}?after={next}&limit={limit}>; rel=\"next\"");
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            answer.headers_mut().insert(header::LINK, value);
        }
    }
    answer
}

#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/records",
    tag = "owner",
    summary = "The records of a collection, sorted by id: all, or a page (`limit`, `after`)",
    params(InCollection, PageQuery),
    responses((status = 200, description = "ok; when a page is full, a `Link` header with rel=\"next\"", body = Vec<serde_json::Value>), (status = "default", response = Failure))
)]
async fn list_records(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let Some((after, limit)) = page_of(query)? else {
        return Ok(
            Json(blocking(&vault, move |v| Ok(v.collections.records(&collection)?)).await?)
                .into_response(),
        );
    };
    let path = format!("/v1/collections/{collection}/records");
    let (records, next) = blocking(&vault, move |v| {
        Ok(v.collections
            .page(&collection, after.as_ref(), limit, Some)?)
    })
    .await?;
    Ok(page_answer(&path, records, next, limit))
}

#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "owner",
    summary = "One record",
    params(AtRecord),
    responses((status = 200, description = "ok", body = serde_json::Value), (status = 404, description = "no such record"), (status = "default", response = Failure))
)]
async fn get_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    vault
        .collections
        .get(&collection, &id)?
        .ok_or_else(|| record_not_found(&collection, &id))
        .map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/records",
    tag = "owner",
    summary = "Create a record (id from the body, else a new one)",
    params(InCollection),
    request_body = serde_json::Value,
    responses((status = 201, description = "ok", body = PutResponse), (status = "default", response = Failure))
)]
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

#[utoipa::path(
    put,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "owner",
    summary = "Create or replace a record",
    params(AtRecord),
    request_body = serde_json::Value,
    responses((status = 200, description = "replaced", body = PutResponse), (status = 201, description = "created", body = PutResponse), (status = "default", response = Failure))
)]
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
    // One record takes tens of microseconds: done on the request's task (or, while
    // another write to the collection is applied, with it: see `write_combined`).
    let (existed, _) = owner_write(&vault, &collection, &id, pim::Change::Replace(record)).await?;
    Ok(put_response(PutResponse {
        id: id.to_string(),
        created: !existed,
    }))
}

#[utoipa::path(
    patch,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "owner",
    summary = "Merge fields into a record (RFC 7396)",
    params(AtRecord),
    request_body = serde_json::Value,
    responses((status = 200, description = "ok", body = serde_json::Value), (status = 404, description = "no such record"), (status = "default", response = Failure))
)]
async fn patch_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let mut patch = read_record_body(&vault, body).await?;
    check_body_id(&mut patch, &id)?;
    owner_write(&vault, &collection, &id, pim::Change::Merge(patch)).await?;
    let record = vault
        .collections
        .get(&collection, &id)?
        .ok_or_else(|| record_not_found(&collection, &id))?;
    Ok(Json(record))
}

#[utoipa::path(
    delete,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "owner",
    summary = "Remove a record",
    params(AtRecord),
    responses((status = 204, description = "removed"), (status = 404, description = "no such record"), (status = "default", response = Failure))
)]
async fn delete_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    if !owner::remove(&vault, &collection, &id).await? {
        return Err(record_not_found(&collection, &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Applies character edits to a text field as one change, so that devices editing
/// the same text apart merge character by character instead of one replacing the other.
#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/records/{id}/text",
    tag = "owner",
    summary = "Character edits of a collaborative text field, as one change",
    params(AtRecord),
    request_body = TextEditRequest,
    responses((status = 200, description = "ok", body = serde_json::Value), (status = "default", response = Failure))
)]
async fn edit_text(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let request: TextEditRequest = read_typed_body(&vault, body).await.map_err(|e| {
        ApiError::new(
            e.code,
            format!(
                "expected {{\"field\": NAME, \"edits\": [{{\"at\", \"delete\", \"insert\"}}]}}: {}",
                e.message
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
    if let Some(kind) = pim::Kind::of(collection.as_str()) {
        // The edit and the step that keeps text and fields in step are one write: an
        // edit that leaves a card unreadable is refused whole.
        let written = pim::owner_edit_text(
            &vault.collections,
            &collection,
            &id,
            kind,
            request.field,
            edits,
        )
        .await;
        written.map_err(|e| write_error(&collection, &id, e))?;
    } else {
        let (c, i, field) = (collection.clone(), id.clone(), request.field.clone());
        let edited = blocking(&vault, move |v| {
            Ok(v.collections.edit_text(&c, &i, &field, &edits)?)
        });
        if !edited.await? {
            return Err(record_not_found(&collection, &id));
        }
    }
    let record = vault
        .collections
        .get(&collection, &id)?
        .ok_or_else(|| record_not_found(&collection, &id))?;
    vault.store.commit().await?;
    Ok(Json(record))
}

#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/records/{id}/conflicts",
    tag = "owner",
    summary = "Fields of a record changed concurrently on two devices",
    params(AtRecord),
    responses((status = 200, description = "ok", body = ConflictsResponse), (status = "default", response = Failure))
)]
async fn record_conflicts(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ConflictsResponse>, ApiError> {
    let (collection, id) = record_path(path)?;
    owner::conflicts(&vault, &collection, &id)
        .await?
        .ok_or_else(|| record_not_found(&collection, &id))
        .map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/conflicts",
    tag = "owner",
    summary = "Every record of a collection with something in conflict",
    params(InCollection),
    responses((status = 200, description = "ok", body = Vec<ConflictsResponse>), (status = "default", response = Failure))
)]
async fn collection_conflicts(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<ConflictsResponse>>, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let (all, names) = blocking(&vault, move |v| {
        Ok((
            v.collections.all_conflicts(&collection)?,
            devices::names_by_tag(&v.collections)?,
        ))
    })
    .await?;
    Ok(Json(
        all.into_iter()
            .map(|(id, conflict)| conflicts_response(id, conflict, &names))
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/records/{id}/resolve",
    tag = "owner",
    summary = "End a conflict: {\"field\", \"value\"} chooses a field's value, {\"version\": N} keeps one whole version, {\"record\": {...}} writes a merge",
    params(AtRecord),
    request_body = ResolveRequest,
    responses((status = 200, description = "ok", body = serde_json::Value), (status = "default", response = Failure))
)]
async fn resolve_record(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let request: Value = read_typed_body(&vault, body).await?;
    let request =
        ResolveRequest::from_json(request).map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
    match request {
        ResolveRequest::Field { field, value } => {
            resolve(&vault, &collection, &id, &field, value).await?;
        }
        ResolveRequest::Version { version } => {
            keep_version(&vault, &collection, &id, version).await?;
        }
        ResolveRequest::Record { record } => {
            resolve_with(&vault, &collection, &id, record).await?;
        }
    }
    vault
        .collections
        .get(&collection, &id)?
        .ok_or_else(|| record_not_found(&collection, &id))
        .map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/blobs",
    tag = "owner",
    summary = "The vault's blobs",
    responses((status = 200, description = "ok", body = Vec<BlobInfo>), (status = "default", response = Failure))
)]
async fn list_blobs(State(vault): State<AppState>) -> Result<Json<Vec<BlobInfo>>, ApiError> {
    Ok(Json(
        blocking(&vault, |v| Ok(v.blobs.list(&v.collections)?)).await?,
    ))
}

/// `POST /v1/blobs[?name=FILE_NAME]`: the body is the content; its `Content-Type`
/// is kept as the blob's type.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct BlobUpload {
    /// The blob's file name.
    name: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/blobs",
    tag = "owner",
    summary = "Store a blob (the body's Content-Type is kept as its type)",
    params(BlobUpload),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "ok", body = BlobInfo), (status = "default", response = Failure))
)]
async fn put_blob(
    State(vault): State<AppState>,
    query: Result<axum::extract::Query<BlobUpload>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let query = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::new(ErrorCode::BadRequest, "the Content-Type header is not text")
        })?),
        None => None,
    };
    let described = crate::blobs::Described::new(query.name.as_deref(), content_type)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
    let max = vault.limits.max_blob_bytes;
    let stored = vault.blobs.put(body.into_data_stream(), max).await?;
    // Listed in `_blobs`, so the vault's other devices fetch it.
    let (id, size) = (stored.id, stored.size);
    let (changed, listing) = blocking(&vault, move |v| {
        let changed = crate::blobs::announce(&v.collections, &id, size, &described)?;
        Ok((changed, crate::blobs::listing(&v.collections, &id)?))
    })
    .await?;
    if changed {
        vault.store.commit().await?;
    }
    drop(stored.pinned);
    let listing = listing
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "a blob just listed is not listed"))?;
    Ok((StatusCode::CREATED, Json(listing.info(id, true))).into_response())
}

/// `DELETE /v1/blobs/{id}`: removed on every device (they drop it when the removal
/// reaches them); here its chunks are freed at once.
#[utoipa::path(
    delete,
    path = "/v1/blobs/{id}",
    tag = "owner",
    summary = "Remove a blob from every device and free its space",
    params(AtBlob),
    responses((status = 200, description = "ok", body = BlobRemoved), (status = "default", response = Failure))
)]
async fn remove_blob(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<BlobRemoved>, ApiError> {
    let id = path_param(path)?;
    let id =
        BlobId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidBlobId, e.to_string()))?;
    let (unlisted, freed) = blocking(&vault, move |v| {
        let freed = v.blobs.own_chunks(id)?;
        Ok((crate::blobs::unlist(&v.collections, &id)?, freed))
    })
    .await?;
    if !unlisted {
        return Err(BlobError::NotFound(id).into());
    }
    vault.store.commit().await?;
    // The mesh's blob service may collect first (it sees the removal too).
    vault.collect_blob_garbage().await?;
    Ok(Json(BlobRemoved {
        id: id.to_string(),
        removed: true,
        chunks: freed.chunks,
        bytes: freed.bytes,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/blobs/{id}",
    tag = "owner",
    summary = "A blob's bytes, verified chunk by chunk",
    params(AtBlob),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 503, description = "still arriving from another device"), (status = "default", response = Failure))
)]
async fn get_blob(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    blob_response(&vault, &path_param(path)?, Disposition::Inline).await
}

/// `201` for a new record, `200` for a changed one, with `{"id", "created"}`.
fn put_response(answer: PutResponse) -> Response {
    let status = if answer.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(answer)).into_response()
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

async fn read_body(vault: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = vault.limits.max_record_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("the body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(ErrorCode::BadRequest, format!("cannot read the body: {e}"))
        }
    })
}

async fn read_record_body(vault: &AppState, body: Body) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(vault, body).await?;
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

/// A request body of a typed request, with the record body's limits and errors
/// (413 too_large, 400 bad_json, ...).
async fn read_typed_body<T: serde::de::DeserializeOwned>(
    vault: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    let body = read_record_body(vault, body).await?;
    serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("not a valid request: {e}")))
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

// ---- Import and export (owner) ----

/// The kind of a collection that holds contacts or calendar objects.
fn pim_kind(collection: &CollectionName) -> Result<pim::Kind, ApiError> {
    pim::Kind::of(collection.as_str()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidCollection,
            format!(
                "collection {collection} holds neither contacts nor a calendar: name it contacts (or contacts-…) or calendar (or calendar-…)"
            ),
        )
    })
}

/// `POST /v1/import/{c}`: a vCard or iCalendar file, all or nothing; or, into a mail
/// collection, a batch of messages (`hearth_protocol::mail`).
#[utoipa::path(
    post,
    path = "/v1/import/{collection}",
    tag = "owner",
    summary = "Import a vCard or iCalendar file (all or nothing), or a batch of mail messages into a mail collection",
    params(InCollection),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, description = "contacts, calendar: {\"imported\", \"updated\", \"unchanged\", \"skipped\"}; mail: MailImportReport", body = serde_json::Value), (status = "default", response = Failure))
)]
async fn import(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let collection = writable(collection_name(&path_param(path)?)?)?;
    let mail = crate::mail::is_mail(&collection);
    let kind = if mail {
        None
    } else {
        Some(pim_kind(&collection).map_err(|mut e| {
            e.message.push_str(", or mail (or mail-…) for messages");
            e
        })?)
    };
    let limit = vault.limits.max_import_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("the file is larger than the limit of {limit} bytes (or broke off)"),
        )
    })?;
    let Some(kind) = kind else {
        let items = hearth_protocol::mail::decode_batch(&bytes)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        drop(bytes);
        let report = crate::mail::import_batch(&vault, &collection, items)
            .await
            .map_err(import_error)?;
        return Ok(Json(report).into_response());
    };
    let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "the file is not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let report = pim::import(&vault, &collection, kind, &text)
        .await
        .map_err(import_error)?;
    Ok(Json(report).into_response())
}

/// Where an incremental import into a collection stands (for IMAP: a folder's
/// UIDVALIDITY and the next UID to fetch), kept in the system collection `_imports`
/// under an id the importer makes (a hash: the source's address is not kept).
fn import_state_id(collection: &CollectionName, id: &RecordId) -> RecordId {
    let hash = blake3::derive_key(
        "hearth import state v1",
        format!("{collection}\u{0}{id}").as_bytes(),
    );
    RecordId::parse(&data_encoding::HEXLOWER.encode(&hash[..16])).expect("hex is a valid record id")
}

fn imports() -> CollectionName {
    CollectionName::parse("_imports").expect("_imports is a valid system collection name")
}

#[utoipa::path(
    get,
    path = "/v1/import/{collection}/state/{id}",
    tag = "owner",
    summary = "Where an incremental import into a collection stands (set by the importer)",
    params(AtRecord),
    responses((status = 200, description = "the state the importer stored", body = serde_json::Value), (status = "default", response = Failure))
)]
async fn import_state(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let mut state = vault
        .collections
        .get(&imports(), &import_state_id(&collection, &id))?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no import into {collection} has stored state {id}"),
            )
        })?;
    if let Some(state) = state.as_object_mut() {
        state.remove("id");
    }
    Ok(Json(state))
}

#[utoipa::path(
    put,
    path = "/v1/import/{collection}/state/{id}",
    tag = "owner",
    summary = "Store where an incremental import into a collection stands (a JSON object of at most 4 KiB)",
    params(AtRecord),
    request_body = serde_json::Value,
    responses((status = 204, description = "stored"), (status = "default", response = Failure))
)]
async fn set_import_state(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let bytes = axum::body::to_bytes(body, 4096)
        .await
        .map_err(|_| ApiError::new(ErrorCode::TooLarge, "an import state is at most 4096 bytes"))?;
    let state: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("an import state is a JSON object: {e}"),
        )
    })?;
    let state_id = import_state_id(&collection, &id);
    blocking(&vault, move |v| {
        Ok(v.collections.put(&imports(), &state_id, &state)?)
    })
    .await?;
    vault.store.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/export/{c}`: every record as one vCard or iCalendar file.
#[utoipa::path(
    get,
    path = "/v1/export/{collection}",
    tag = "owner",
    summary = "A contacts or calendar collection as one vCard or iCalendar file",
    params(InCollection),
    responses((status = 200, description = "text/vcard or text/calendar", content_type = "text/plain", body = String), (status = "default", response = Failure))
)]
async fn export(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let kind = pim_kind(&collection)?;
    let text = blocking(&vault, move |v| {
        let records: Vec<(String, Map<String, Value>)> = v
            .collections
            .records(&collection)?
            .into_iter()
            .filter_map(|r| match r {
                Value::Object(mut r) => {
                    let id = r.remove("id")?.as_str()?.to_owned();
                    Some((id, r))
                }
                _ => None,
            })
            .collect();
        pim::export(kind, &records).map_err(|e| ApiError::new(ErrorCode::Corrupt, e.to_string()))
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(kind.media_type()),
        )],
        text,
    )
        .into_response())
}

// ---- Grants (owner) ----

#[utoipa::path(
    post,
    path = "/v1/grants",
    tag = "owner",
    summary = "Grant a service a view",
    request_body = GrantRequest,
    responses((status = 201, description = "ok", body = GrantCreated), (status = "default", response = Failure))
)]
async fn create_grant(State(vault): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let request: GrantRequest = read_typed_body(&vault, body).await?;
    let body = grant_new(&vault, request).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/grants",
    tag = "owner",
    summary = "Grants, with their scope, status and last use",
    responses((status = 200, description = "ok", body = Vec<GrantInfo>), (status = "default", response = Failure))
)]
async fn list_grants(State(vault): State<AppState>) -> Result<Json<Vec<GrantInfo>>, ApiError> {
    grants(&vault).await.map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/grants/{id}/revoke",
    tag = "owner",
    summary = "Revoke a grant, and report what the service saw",
    params(("id" = String, Path, description = "a grant id")),
    responses((status = 200, description = "ok", body = RevokeResponse), (status = "default", response = Failure))
)]
async fn revoke_grant(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RevokeResponse>, ApiError> {
    grant_revoke(&vault, path_param(path)?).await.map(Json)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only this grant's entries.
    grant: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "owner",
    summary = "The audit log of service accesses",
    params(AuditQuery),
    responses((status = 200, description = "ok", body = Vec<AuditEntry>), (status = "default", response = Failure))
)]
async fn list_audit(
    State(vault): State<AppState>,
    query: axum::extract::Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    audit(&vault, query.0.grant).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "owner",
    summary = "Verify the audit log's hash chains",
    responses((status = 200, description = "ok", body = VerifyResponse), (status = "default", response = Failure))
)]
async fn verify_audit(State(vault): State<AppState>) -> Result<Json<VerifyResponse>, ApiError> {
    audit_verify(&vault).await.map(Json)
}

/// The whole vault at one moment (see [`VaultExport`]).
#[utoipa::path(
    get,
    path = "/v1/export",
    tag = "owner",
    summary = "The whole vault at one moment",
    responses((status = 200, description = "ok", body = VaultExport), (status = "default", response = Failure))
)]
async fn export_all(State(vault): State<AppState>) -> Result<Json<VaultExport>, ApiError> {
    blocking(&vault, |v| {
        use crate::collections::RecordSource;
        let snapshot = v.collections.snapshot()?;
        let at = crate::clock::now_unix();
        let mut collections = std::collections::BTreeMap::new();
        let mut texts = std::collections::BTreeMap::new();
        for name in snapshot.collection_names()? {
            if name.as_str().starts_with('_') {
                continue;
            }
            let records = snapshot.collection_records(&name)?;
            if let Some(kind) = pim::Kind::of(name.as_str()) {
                let pairs: Vec<(String, Map<String, Value>)> = records
                    .iter()
                    .filter_map(|r| {
                        let mut r = r.as_object()?.clone();
                        let id = r.remove("id")?.as_str()?.to_owned();
                        Some((id, r))
                    })
                    .collect();
                let text = pim::export(kind, &pairs).map_err(|e| {
                    ApiError::new(ErrorCode::Corrupt, format!("collection {name}: {e}"))
                })?;
                texts.insert(name.to_string(), text);
            }
            collections.insert(name.to_string(), records);
        }
        let devices = snapshot.collection_records(&crate::devices::collection())?;
        let blobs = v.blobs.list(&snapshot)?;
        let audit = access::audit_entries(&snapshot, None)?;
        let mut last_used: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for entry in &audit {
            let slot = last_used.entry(entry.grant.as_str()).or_default();
            *slot = (*slot).max(entry.at);
        }
        let grants = access::list_grants(&snapshot)?
            .into_iter()
            .map(|g| {
                let used = last_used.get(g.id.as_str()).copied();
                grant_info(g, used)
            })
            .collect();
        Ok(VaultExport {
            at,
            vault_id: v.keys.vault_id_hex(),
            device: v.keys.peer_id().to_string(),
            collections,
            pim: texts,
            devices,
            blobs,
            grants,
            audit,
        })
    })
    .await
    .map(Json)
}

/// Reads back and verifies everything on this device: every sealed value of the
/// store, every collection document, every chunk of every blob, the audit chains.
#[utoipa::path(
    get,
    path = "/v1/check",
    tag = "owner",
    summary = "Read back and verify everything on this device",
    responses((status = 200, description = "ok", body = CheckReport), (status = "default", response = Failure))
)]
async fn check(State(vault): State<AppState>) -> Result<Json<CheckReport>, ApiError> {
    let (values, collections, mut problems) = blocking(&vault, |v| {
        let (values, mut problems) = v.store.verify_all()?;
        let mut loaded = 0;
        for name in v.collections.names()? {
            match v.collections.count(&name) {
                Ok(_) => loaded += 1,
                Err(e) => problems.push(format!("collection {name}: {e}")),
            }
        }
        Ok((values, loaded, problems))
    })
    .await?;
    let manifests = blocking(&vault, |v| Ok(v.blobs.stored()?)).await;
    let mut blobs = 0;
    match manifests {
        Ok(ids) => {
            for id in ids {
                match read_whole(&vault, id).await {
                    Ok(()) => blobs += 1,
                    Err(e) => problems.push(format!("blob {id}: {e}")),
                }
            }
        }
        Err(e) => problems.push(format!("blobs: {}", e.message)),
    }
    let audit = audit_verify(&vault).await?;
    if !audit.ok {
        problems.push(format!(
            "audit log: entry {} does not verify: {}",
            audit.entry.as_deref().unwrap_or("?"),
            audit.reason.as_deref().unwrap_or("?")
        ));
    }
    Ok(Json(CheckReport {
        ok: problems.is_empty(),
        values,
        collections,
        blobs,
        audit_entries: audit.entries.unwrap_or(0),
        problems,
    }))
}

/// Reads a blob through, verifying every chunk.
async fn read_whole(vault: &AppState, id: BlobId) -> Result<(), BlobError> {
    let mut reader = vault.blobs.open_blob(id)?;
    while let Some(chunk) = reader.next_chunk().await {
        chunk?;
    }
    Ok(())
}

// ---- Views (services): parse, call the door, render ----

fn credentials(headers: &axum::http::HeaderMap) -> Result<Credentials, ApiError> {
    bearer_token(headers).map(Credentials::local).map_err(|_| {
        ApiError::new(
            ErrorCode::MissingToken,
            "send the grant's token as `Authorization: Bearer <token>`",
        )
    })
}

#[utoipa::path(
    get,
    path = "/v1/view",
    tag = "service",
    summary = "Every readable collection of the grant, projected",
    responses((status = 200, description = "ok", body = ViewAll), (status = "default", response = Failure))
)]
async fn view_all(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<ViewAll>, ApiError> {
    Ok(Json(vault.door.read_all(&credentials(&headers)?).await?))
}

#[utoipa::path(
    get,
    path = "/v1/view/{collection}",
    tag = "service",
    summary = "The readable fields of the matching records: all, or a page (`limit`, `after`)",
    params(InCollection, PageQuery),
    responses((status = 200, description = "ok; when a page is full, a `Link` header with rel=\"next\"", body = Vec<serde_json::Value>), (status = "default", response = Failure))
)]
async fn view_collection(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let credentials = credentials(&headers)?;
    let Some((after, limit)) = page_of(query)? else {
        return Ok(Json(
            vault
                .door
                .read_collection(&credentials, &collection)
                .await?,
        )
        .into_response());
    };
    let (records, next) = vault
        .door
        .read_page(&credentials, &collection, after, limit)
        .await?;
    Ok(page_answer(
        &format!("/v1/view/{collection}"),
        records,
        next,
        limit,
    ))
}

/// `GET /v1/view/_blobs/{id}`: a blob that a record the grant can read names.
#[utoipa::path(
    get,
    path = "/v1/view/_blobs/{id}",
    tag = "service",
    summary = "A blob that a record the grant can read names",
    params(AtBlob),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = "default", response = Failure))
)]
async fn view_blob(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_param(path)?;
    let credentials = credentials(&headers)?;
    let blob =
        BlobId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidBlobId, e.to_string()))?;
    vault.door.read_blob(&credentials, &blob).await?;
    blob_response(&vault, &id, Disposition::Inline).await
}

#[utoipa::path(
    get,
    path = "/v1/view/{collection}/{id}",
    tag = "service",
    summary = "One record, projected (hidden ones are 404)",
    params(AtRecord),
    responses((status = 200, description = "ok", body = serde_json::Value), (status = "default", response = Failure))
)]
async fn view_record(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let credentials = credentials(&headers)?;
    Ok(Json(
        vault
            .door
            .read_record(&credentials, &collection, &id)
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/view/{collection}",
    tag = "service",
    summary = "Create or change a record within the write scope",
    params(InCollection),
    request_body = serde_json::Value,
    responses((status = 200, description = "changed", body = PutResponse), (status = 201, description = "created", body = PutResponse), (status = "default", response = Failure))
)]
async fn view_write(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let credentials = credentials(&headers)?;
    let record = read_record_body(&vault, body).await?;
    let answer = vault.door.write(&credentials, &collection, record).await?;
    Ok(put_response(answer))
}

#[utoipa::path(
    delete,
    path = "/v1/view/{collection}/{id}",
    tag = "service",
    summary = "Remove a record (needs every field writable)",
    params(AtRecord),
    responses((status = 204, description = "removed"), (status = "default", response = Failure))
)]
async fn view_remove(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (collection, id) = record_path(path)?;
    let credentials = credentials(&headers)?;
    vault.door.remove(&credentials, &collection, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/view/events`: server-sent events of changes inside the scope, projected:
/// first `ready` (`StreamReady`), then `upsert` (`ViewUpsert`), `remove` (`ViewRemove`),
/// and `error` (`ErrorDetail`) just before the stream ends (revoked, expired, fallen
/// behind, the node stopping).
#[utoipa::path(
    get,
    path = "/v1/view/events",
    tag = "service",
    summary = "Server-sent events: ready, upsert, remove, error",
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String), (status = "default", response = Failure))
)]
async fn view_events(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let subscription = vault.door.subscribe(&credentials(&headers)?).await?;
    // The first event says the stream is live (changes from now on will arrive) and
    // which stream it is in the audit log.
    let ready = Event::default()
        .event("ready")
        .json_data(StreamReady {
            stream: subscription.id(),
        })
        .expect("a ready event serializes");
    let events = futures::stream::unfold(Some(subscription), |state| async move {
        let mut subscription = state?;
        let item = subscription.next().await?;
        Some(match item {
            StreamItem::Events { batch, from } => (
                batch[from..].iter().map(sse_event).collect(),
                Some(subscription),
            ),
            StreamItem::End { code, message } => {
                let detail = ErrorDetail {
                    code: code.as_str().to_owned(),
                    message,
                };
                let event = Event::default()
                    .event("error")
                    .json_data(&detail)
                    .expect("an error detail serializes");
                (vec![event], None)
            }
        })
    });
    let stream = futures::stream::once(async { vec![ready] })
        .chain(events)
        .flat_map(|events: Vec<Event>| {
            futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// An event's SSE frame; its JSON was encoded once for every stream.
fn sse_event(event: &ViewEvent) -> Event {
    Event::default().event(event.kind()).data(&*event.json)
}

#[cfg(test)]
mod tests {
    use super::HostAllowlist;

    #[test]
    fn a_service_is_told_the_kind_of_an_internal_failure_not_its_message() {
        use super::{ApiError, StatusCode};
        use crate::access::AccessError;
        let secret = "the store at /home/someone/.local/share/hearth failed";
        let e = ApiError::from(AccessError::Internal(secret.into()));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message().contains("someone"), "{}", e.message());
        let full = ApiError::from(AccessError::Store(crate::store::StoreError::DiskFull));
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
        // A refusal keeps its words: they are about the request.
        let refused = ApiError::from(AccessError::OutOfScope("not yours".into()));
        assert_eq!(refused.message(), "not yours");
    }

    #[test]
    fn only_this_nodes_names_are_allowed_hosts() {
        let hosts = HostAllowlist::new("127.0.0.1:7780".parse().unwrap(), &["vault.lan".into()]);
        for good in [
            "127.0.0.1:7780",
            "localhost:7780",
            "LOCALHOST",
            "localhost.",
            "[::1]:7780",
            "vault.lan:7780",
            "127.0.0.1",
        ] {
            assert!(hosts.allows(good), "{good}");
        }
        for bad in [
            "evil.example:7780",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "",
            "[::2]:7780",
            "192.168.1.10:7780",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod openapi_tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    /// Every route the router declares (its source, read here) with every method it
    /// takes, as `(path, method)`; DAV and the dashboard's pages live in other modules.
    fn declared_routes() -> Vec<(String, String)> {
        let source = include_str!("api.rs");
        let start = source.find("pub fn router(").expect("the router");
        let end = start + source[start..].find("\n}\n").expect("the router's end");
        let body = &source[start..end];
        let mut routes = Vec::new();
        for piece in body.split(".route(").skip(1) {
            let path = piece.split('"').nth(1).expect("a path").to_owned();
            let handlers = piece.split(".route(").next().unwrap_or_default();
            let handlers = handlers.split(".route_layer").next().unwrap_or_default();
            for method in ["get", "post", "put", "patch", "delete"] {
                let found = handlers.contains(&format!("{method}("));
                if found {
                    routes.push((path.clone(), method.to_owned()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc = ApiDoc::openapi();
        let routes = declared_routes();
        assert!(
            routes.len() > 35,
            "the parse found too few routes: {routes:?}"
        );
        let mut missing = Vec::new();
        for (path, method) in &routes {
            let item = doc.paths.paths.get(path);
            let has = item.is_some_and(|item| match method.as_str() {
                "get" => item.get.is_some(),
                "post" => item.post.is_some(),
                "put" => item.put.is_some(),
                "patch" => item.patch.is_some(),
                "delete" => item.delete.is_some(),
                _ => false,
            });
            if !has {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document: {missing:?}"
        );
    }

    /// docs/openapi.json is the document the node serves. To write it again:
    /// `HEARTH_WRITE_OPENAPI=1 cargo test -p hearth-node openapi`.
    #[test]
    fn the_document_in_docs_is_current() {
        let made = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serializes")
            + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        if std::env::var_os("HEARTH_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &made).expect("write docs/openapi.json");
        }
        let saved = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            saved == made,
            "docs/openapi.json is not the current document: run HEARTH_WRITE_OPENAPI=1 cargo test -p hearth-node openapi"
        );
    }
}
