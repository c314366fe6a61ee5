//! `/v1/view…`: the service routes. Each parses, calls `access::Door` and renders;
//! no access rule lives here.

use super::*;

pub(super) fn credentials(headers: &axum::http::HeaderMap) -> Result<Credentials, ApiError> {
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
pub(super) async fn view_all(
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
pub(super) async fn view_collection(
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
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "the part a Range asks for", content_type = "application/octet-stream", body = Vec<u8>), (status = "default", response = Failure))
)]
pub(super) async fn view_blob(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let blob = readable_blob(&vault, &headers, path).await?;
    blob_response(&vault, &blob.to_string(), Disposition::Inline, &headers).await
}

/// The blob a view's route names, once the door has found that a record the caller
/// may read names it (audited as `read_blob`).
async fn readable_blob(
    vault: &AppState,
    headers: &axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<BlobId, ApiError> {
    let id = path_param(path)?;
    let credentials = credentials(headers)?;
    let blob =
        BlobId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidBlobId, e.to_string()))?;
    vault.door.read_blob(&credentials, &blob).await?;
    Ok(blob)
}

/// `GET /v1/view/_blobs/{id}/thumbnail`: a picture that a record the grant can read
/// names, made small (audited as a read of the blob).
#[utoipa::path(
    get,
    path = "/v1/view/_blobs/{id}/thumbnail",
    tag = "service",
    summary = "A picture that a record the grant can read names, made small",
    params(AtBlob, super::blobs::ThumbnailSize),
    responses((status = 200, description = "the thumbnail", content_type = "image/jpeg", body = Vec<u8>), (status = 304, description = "If-None-Match names it"), (status = 415, description = "not a JPEG, PNG or WebP picture"), (status = "default", response = Failure))
)]
pub(super) async fn view_thumbnail(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<
        axum::extract::Query<super::blobs::ThumbnailSize>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response, ApiError> {
    let blob = readable_blob(&vault, &headers, path).await?;
    super::blobs::thumbnail_response(&vault, blob, query, &headers).await
}

#[utoipa::path(
    get,
    path = "/v1/view/{collection}/{id}",
    tag = "service",
    summary = "One record, projected (hidden ones are 404)",
    params(AtRecord),
    responses((status = 200, description = "ok", body = serde_json::Value), (status = "default", response = Failure))
)]
pub(super) async fn view_record(
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
pub(super) async fn view_write(
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
pub(super) async fn view_remove(
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
pub(super) async fn view_events(
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
pub(super) fn sse_event(event: &ViewEvent) -> Event {
    Event::default().event(event.kind()).data(&*event.json)
}
