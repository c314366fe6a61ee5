//! The local HTTP API (axum), as documented in docs/API.md.
//!
//! In: HTTP requests with a bearer token. Out: JSON answers (types of
//! `hearth_protocol::api`), or JSON errors whose status follows from their code. This
//! is the only module that knows HTTP and parses request bodies. Owner routes work on
//! the vault directly; service routes (`/v1/view…`) only hand the service's
//! credentials to the access door ([`crate::access::Door`]) and render its answer — no
//! access rule lives here. A write is answered only after it is committed to disk.
//!
//! This file holds the router, the OpenAPI document, the middleware (hosts, owner
//! auth) and the body and path helpers; the handlers are beside it by route: `status`
//! (hello, status, devices), `records`, `blobs`, `transfer` (import, export, check),
//! `grants` (with the audit log) and `views` (the service routes).

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
    AuditEntry, BackupAddRequest, BackupPruneRequest, BackupPruned, BackupStatus, BackupVerified,
    BlobInfo, BlobRemoved, CheckReport, CollectionInfo, ConflictsResponse, DeviceInfo, ErrorBody,
    ErrorCode, ErrorDetail, ExtendRequest, GrantCreated, GrantInfo, GrantRequest, HelloRequest,
    HelloResponse, HostStatus, InviteResponse, KeysInfo, KitInfo, KitRequest, PutResponse,
    ResolveRequest, RestoreReport, RevokeResponse, StatusResponse, StreamReady, TextEditRequest,
    VaultExport, VerifyResponse, ViewAll,
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

mod blobs;
mod files;
mod grants;
mod records;
mod search;
mod status;
pub use status::hello_answer;
mod transfer;
mod views;

use blobs::*;
use files::*;
use grants::*;
use records::*;
use search::*;
use status::*;
use transfer::*;
use views::*;

pub(crate) type AppState = Arc<Vault>;

use crate::download::{Disposition, blob_response};
pub use crate::owner::Error as ApiError;
use crate::owner::{
    self, audit, audit_verify, blocking, conflicts_response, device_remove, device_rename,
    devices_view, grant_extend, grant_info, grant_new, grant_revoke, grants, import_error, invite,
    keep_version, owner_write, record_not_found, resolve, resolve_with, status_of, write_error,
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
        .route("/v1/keys", get(keys))
        .route("/v1/keys/rotate", post(rotate_keys))
        .route("/v1/recovery", get(recovery_kit).post(set_recovery_kit))
        .route("/v1/backup", get(backup_status))
        .route("/v1/backup/hosts", post(add_backup_host))
        .route("/v1/backup/verify", post(verify_backup))
        .route("/v1/backup/prune", post(prune_backup))
        .route(
            "/v1/devices/{peer}",
            axum::routing::delete(remove_device).patch(rename_device),
        )
        .route("/v1/blobs", get(list_blobs).post(put_blob))
        .route("/v1/blobs/{id}", get(get_blob).delete(remove_blob))
        .route("/v1/blobs/{id}/thumbnail", get(blob_thumbnail))
        .route("/v1/files", get(list_root))
        .route(
            "/v1/files/{*path}",
            get(get_file)
                .put(put_file)
                .patch(move_file)
                .delete(remove_file),
        )
        .route("/v1/grants", get(list_grants).post(create_grant))
        .route("/v1/grants/{id}/revoke", post(revoke_grant))
        .route("/v1/grants/{id}/extend", post(extend_grant))
        .route("/v1/import/{collection}", post(import))
        .route(
            "/v1/import/{collection}/state/{id}",
            get(import_state).put(set_import_state),
        )
        .route("/v1/restore/{collection}", post(restore))
        .route("/v1/export", get(export_all))
        .route("/v1/export/{collection}", get(export))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/check", get(check))
        .route("/v1/check/repair", post(repair))
        .route("/v1/search", get(search))
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
        .route("/v1/view/_blobs/{id}", get(view_blob))
        .route("/v1/view/_search", get(view_search))
        .route("/v1/view/_blobs/{id}/thumbnail", get(view_thumbnail));
    owner
        .merge(service)
        .merge(crate::dav::routes())
        .merge(crate::dashboard::routes())
        .route("/v1/hello", post(hello))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            vault.clone(),
            crate::dav::at_site,
        ))
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
        keys,
        rotate_keys,
        recovery_kit,
        set_recovery_kit,
        backup_status,
        add_backup_host,
        verify_backup,
        prune_backup,
        list_blobs,
        put_blob,
        get_blob,
        blob_thumbnail,
        remove_blob,
        list_root,
        get_file,
        put_file,
        move_file,
        remove_file,
        list_grants,
        create_grant,
        revoke_grant,
        extend_grant,
        import,
        restore,
        import_state,
        set_import_state,
        export_all,
        export,
        list_audit,
        verify_audit,
        check,
        repair,
        search,
        view_search,
        view_all,
        view_events,
        view_collection,
        view_write,
        view_record,
        view_remove,
        view_blob,
        view_thumbnail,
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

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct AtFile {
    /// A file's or folder's path (`Documents/report.pdf`), each name percent-encoded.
    path: String,
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

const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 1_000;

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
    body_within(body, vault.limits.max_record_bytes, "body").await
}

/// A request body, whole, within `limit` bytes (`what` names it in the error: the
/// body, the file): `413` over the limit, `400` when it breaks off.
async fn body_within(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("the {what} is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("cannot read the {what}: {e}"),
            )
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
            // A catch-all (`{*path}`) is an ordinary parameter in OpenAPI.
            let item = doc.paths.paths.get(&path.replace("{*", "{"));
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
