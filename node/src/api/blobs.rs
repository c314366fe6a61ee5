//! `/v1/blobs…`: the owner's blobs (upload, list, download, remove).

use super::*;

#[utoipa::path(
    get,
    path = "/v1/blobs",
    tag = "owner",
    summary = "The vault's blobs",
    responses((status = 200, description = "ok", body = Vec<BlobInfo>), (status = "default", response = Failure))
)]
pub(super) async fn list_blobs(
    State(vault): State<AppState>,
) -> Result<Json<Vec<BlobInfo>>, ApiError> {
    Ok(Json(
        blocking(&vault, |v| Ok(v.blobs.list(&v.collections)?)).await?,
    ))
}

/// `POST /v1/blobs[?name=FILE_NAME]`: the body is the content; its `Content-Type`
/// is kept as the blob's type.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BlobUpload {
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
pub(super) async fn put_blob(
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

/// How many of the records naming a blob a refused removal names.
const NAMINGS_SHOWN: usize = 10;

/// `DELETE /v1/blobs/{id}[?force=true]`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BlobRemoval {
    /// Remove it even though records name it (they keep the id, and `hearth check`
    /// reports them).
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/blobs/{id}`: removed on every device (they drop it when the removal
/// reaches them); here its chunks are freed at once.
#[utoipa::path(
    delete,
    path = "/v1/blobs/{id}",
    tag = "owner",
    summary = "Remove a blob from every device and free its space",
    params(AtBlob, BlobRemoval),
    responses((status = 200, description = "ok", body = BlobRemoved), (status = 409, description = "records name the blob (the message names them): nothing removed"), (status = "default", response = Failure))
)]
pub(super) async fn remove_blob(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<BlobRemoval>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BlobRemoved>, ApiError> {
    let id = path_param(path)?;
    let id =
        BlobId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidBlobId, e.to_string()))?;
    let force = query
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?
        .force;
    let outcome = blocking(&vault, move |v| {
        // A blob records still name would leave them without their bytes (a contact
        // without its photo, a file without its content): refused unless forced.
        if !force {
            let (named, all) = crate::blobs::naming(&v.collections, &id, NAMINGS_SHOWN)?;
            if all > 0 {
                return Ok(Err((named, all)));
            }
        }
        let freed = v.blobs.own_chunks(id)?;
        Ok(Ok((crate::blobs::unlist(&v.collections, &id)?, freed)))
    })
    .await?;
    let (unlisted, freed) = outcome.map_err(|(named, all)| {
        let mut names: Vec<String> = named.iter().map(|(c, r)| format!("{c}/{r}")).collect();
        if all > named.len() {
            names.push(format!("and {} more", all - named.len()));
        }
        ApiError::new(
            ErrorCode::Conflict,
            format!(
                "blob {id} is named by {all} record{}: {}; remove or change {} first, or remove it anyway (force: `hearth blob rm --force`)",
                if all == 1 { "" } else { "s" },
                names.join(", "),
                if all == 1 { "it" } else { "them" }
            ),
        )
    })?;
    if !unlisted {
        return Err(BlobError::NotFound(id).into());
    }
    vault.store.commit().await?;
    // Freed now (the mesh's blob service, which reads the list again at its next
    // tick after a change made here, finds nothing left to free).
    vault.collect_blob_garbage().await?;
    Ok(Json(BlobRemoved {
        id: id.to_string(),
        removed: true,
        chunks: freed.chunks,
        bytes: freed.bytes,
    }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ThumbnailSize {
    /// The longest side in pixels, rounded up to 128, 256, 512 or 1024 (256 if not
    /// given; at most 1024).
    size: Option<u32>,
}

/// A thumbnail's answer: the JPEG, its ETag (the blob's and the size: a thumbnail
/// changes only with its picture), 304 when the client has it.
pub(super) async fn thumbnail_response(
    vault: &AppState,
    blob: BlobId,
    query: Result<axum::extract::Query<ThumbnailSize>, axum::extract::rejection::QueryRejection>,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let asked = query
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?
        .size;
    let size =
        crate::thumbnails::size_for(asked).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
    let etag = format!("\"{}-{size}\"", &blob.to_string()[..32]);
    let cached = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let etag_header = [(axum::http::header::ETAG, etag.clone())];
    if cached {
        return Ok((StatusCode::NOT_MODIFIED, etag_header).into_response());
    }
    let jpeg = crate::thumbnails::thumbnail(vault, blob, size).await?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "image/jpeg".to_owned())],
        etag_header,
        jpeg,
    )
        .into_response())
}

/// `GET /v1/blobs/{id}/thumbnail`: a photo made small.
#[utoipa::path(
    get,
    path = "/v1/blobs/{id}/thumbnail",
    tag = "owner",
    summary = "A picture made small: JPEG, upright, kept sealed after the first time",
    params(AtBlob, ThumbnailSize),
    responses((status = 200, description = "the thumbnail", content_type = "image/jpeg", body = Vec<u8>), (status = 304, description = "If-None-Match names it"), (status = 415, description = "not a JPEG, PNG or WebP picture (`not_an_image`)"), (status = "default", response = Failure))
)]
pub(super) async fn blob_thumbnail(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<ThumbnailSize>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = path_param(path)?;
    let blob =
        BlobId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidBlobId, e.to_string()))?;
    thumbnail_response(&vault, blob, query, &headers).await
}

#[utoipa::path(
    get,
    path = "/v1/blobs/{id}",
    tag = "owner",
    summary = "A blob's bytes, verified chunk by chunk",
    params(AtBlob),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "the part a Range asks for (one range; If-Range honoured)", content_type = "application/octet-stream", body = Vec<u8>), (status = 304, description = "If-None-Match names the blob (its ETag is 128 bits of its id)"), (status = 416, description = "the Range starts past the end"), (status = 503, description = "still arriving from another device"), (status = "default", response = Failure))
)]
pub(super) async fn get_blob(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    blob_response(&vault, &path_param(path)?, Disposition::Inline, &headers).await
}
