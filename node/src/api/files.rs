//! `/v1/files…`: the owner's files (docs/SCHEMA.md, "Files"): put, get (a file's bytes
//! with ranges, a folder's listing), move or copy, remove.

use super::*;
use crate::files::{self, Entry, FileError, FilePath};
use hearth_protocol::api::{FileInfo, FileList, FileMove, FileRemoved};

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

fn info(entry: &Entry) -> FileInfo {
    FileInfo {
        path: entry.path.to_string(),
        id: entry.path.id().to_string(),
        folder: entry.folder,
        size: entry.size,
        content_type: entry.content_type.clone(),
        modified: entry.modified,
        blob: entry.blob.clone(),
        meta: entry.record.get("meta").filter(|m| m.is_object()).cloned(),
    }
}

fn file_path(path: Option<Result<Path<String>, PathRejection>>) -> Result<FilePath, ApiError> {
    match path {
        None => Ok(FilePath::root()),
        Some(path) => Ok(FilePath::parse(&path_param(path)?)?),
    }
}

/// `PUT /v1/files/{path}`: `?parents=true` makes the folders it needs; `?folder=true`
/// makes a folder (no body); `?modified=UNIX_SECONDS` keeps a file's own time.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct FilePut {
    /// Make the folders the path needs (else a missing folder is 409).
    #[serde(default)]
    parents: bool,
    /// Make a folder at the path (the body must be empty).
    #[serde(default)]
    folder: bool,
    /// When the file last changed (Unix seconds; default: now).
    modified: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/files",
    tag = "owner",
    summary = "The root folder's entries",
    params(FileGet),
    responses((status = 200, description = "ok", body = FileList), (status = "default", response = Failure))
)]
pub(super) async fn list_root(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<FileGet>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    answer_get(&vault, FilePath::root(), &headers, query).await
}

#[utoipa::path(
    get,
    path = "/v1/files/{path}",
    tag = "owner",
    summary = "A file's bytes (ranges as for blobs), or a folder's entries",
    params(AtFile, FileGet),
    responses((status = 200, description = "a file's bytes, or a folder's entries (JSON), or with info=true the entry (FileInfo)", body = FileList), (status = 206, description = "the part a Range asks for"), (status = "default", response = Failure))
)]
pub(super) async fn get_file(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<FileGet>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    answer_get(&vault, file_path(Some(path))?, &headers, query).await
}

async fn answer_get(
    vault: &AppState,
    path: FilePath,
    headers: &axum::http::HeaderMap,
    query: Result<axum::extract::Query<FileGet>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    if query.info {
        let at = path.clone();
        let entry = blocking(vault, move |v| {
            Ok(files::stat(&v.collections, &at)?
                .ok_or_else(|| FileError::NotFound(at.to_string()))?)
        })
        .await?;
        return Ok(Json(info(&entry)).into_response());
    }
    get_entry(vault, path, headers).await
}

/// `GET /v1/files/{path}?info=true`: what the file or folder is, not its content.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct FileGet {
    /// Answer the entry's description (`FileInfo`), not its bytes or entries.
    #[serde(default)]
    info: bool,
}

async fn get_entry(
    vault: &AppState,
    path: FilePath,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let at = path.clone();
    let (entry, entries) = blocking(vault, move |v| {
        let entry =
            files::stat(&v.collections, &at)?.ok_or_else(|| FileError::NotFound(at.to_string()))?;
        let entries = if entry.folder {
            Some(files::list(&v.collections, &entry)?)
        } else {
            None
        };
        Ok((entry, entries))
    })
    .await?;
    if let Some(entries) = entries {
        return Ok(Json(FileList {
            path: path.to_string(),
            entries: entries.iter().map(info).collect(),
        })
        .into_response());
    }
    let blob = entry
        .blob
        .clone()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, format!("file {path} names no bytes")))?;
    crate::download::bytes_response(
        vault,
        &blob,
        Disposition::Inline,
        headers,
        Some(crate::download::Shown {
            name: Some(path.name().to_owned()),
            content_type: entry.content_type.clone(),
        }),
    )
    .await
}

#[utoipa::path(
    put,
    path = "/v1/files/{path}",
    tag = "owner",
    summary = "Store a file (the body; its Content-Type is kept) or make a folder",
    params(AtFile, FilePut),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "made", body = FileInfo), (status = 200, description = "a file's content replaced", body = FileInfo), (status = 409, description = "its folder is missing, or a folder is at the path"), (status = "default", response = Failure))
)]
pub(super) async fn put_file(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<FilePut>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = file_path(Some(path))?;
    let query = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    if query.folder {
        let entry = crate::owner::make_folder(&vault, path, query.parents).await?;
        return Ok((StatusCode::CREATED, Json(info(&entry))).into_response());
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::new(ErrorCode::BadRequest, "the Content-Type header is not text")
        })?),
        None => None,
    };
    let (entry, created) = crate::owner::store_file(
        &vault,
        path,
        body.into_data_stream(),
        content_type,
        query.modified,
        query.parents,
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info(&entry))).into_response())
}

#[utoipa::path(
    patch,
    path = "/v1/files/{path}",
    tag = "owner",
    summary = "Move or copy a file or folder",
    params(AtFile),
    request_body = FileMove,
    responses((status = 200, description = "moved; where it is now", body = FileInfo), (status = 409, description = "something is at the new path, or its folder is missing"), (status = "default", response = Failure))
)]
pub(super) async fn move_file(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<FileInfo>, ApiError> {
    let from = file_path(Some(path))?;
    let request: FileMove = read_typed_body(&vault, body).await?;
    let to = FilePath::parse(&request.to)?;
    let at = to.clone();
    blocking(&vault, move |v| {
        Ok(files::relocate(
            &v.collections,
            &from,
            &at,
            request.overwrite,
            request.copy,
        )?)
    })
    .await?;
    vault.store.commit().await?;
    let entry = blocking(&vault, move |v| Ok(files::stat(&v.collections, &to)?))
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "a file just moved is not there"))?;
    Ok(Json(info(&entry)))
}

#[utoipa::path(
    delete,
    path = "/v1/files/{path}",
    tag = "owner",
    summary = "Remove a file, or a folder with everything in it",
    params(AtFile),
    responses((status = 200, description = "removed", body = FileRemoved), (status = "default", response = Failure))
)]
pub(super) async fn remove_file(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<FileRemoved>, ApiError> {
    let path = file_path(Some(path))?;
    let removed = crate::owner::remove_file(&vault, path.clone()).await?;
    Ok(Json(FileRemoved {
        path: path.to_string(),
        files: removed.files,
        folders: removed.folders,
    }))
}
