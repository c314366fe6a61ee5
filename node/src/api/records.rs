//! `/v1/collections…`: collections, records (pages, writes, text edits) and their
//! conflicts, for the owner.

use super::*;

#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "owner",
    summary = "Collections with their record counts",
    responses((status = 200, description = "ok", body = Vec<CollectionInfo>), (status = "default", response = Failure))
)]
pub(super) async fn list_collections(
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
pub(super) async fn drop_collection(
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
pub(super) struct PageQuery {
    /// At most this many records (1 to 10,000; 1,000 when only `after` is given).
    /// Without `limit` and `after`, every record. When the page is full, the answer's
    /// `Link` header (`rel="next"`) gives the next page's address.
    limit: Option<usize>,
    /// Start after this record id.
    after: Option<String>,
}

/// The page asked for, or `None` for every record.
pub(super) fn page_of(
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
pub(super) fn page_answer(
    path: &str,
    records: Vec<Value>,
    next: Option<String>,
    limit: usize,
) -> Response {
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
pub(super) async fn list_records(
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
pub(super) async fn get_record(
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
pub(super) async fn create_record(
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
pub(super) async fn put_record(
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

pub(super) async fn write_record(
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
pub(super) async fn patch_record(
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
pub(super) async fn delete_record(
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
pub(super) async fn edit_text(
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
pub(super) async fn record_conflicts(
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
pub(super) async fn collection_conflicts(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<ConflictsResponse>>, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let (all, names) = blocking(&vault, move |v| {
        // The record index says which records to look at: no whole collection loads.
        let mut all = Vec::new();
        for id in v.collections.conflicted(&collection)? {
            let Ok(record) = RecordId::parse(&id) else {
                continue;
            };
            if let Some(conflict) = v.collections.conflicts(&collection, &record)?
                && !conflict.is_empty()
            {
                all.push((id, conflict));
            }
        }
        Ok((all, devices::names_by_tag(&v.collections)?))
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
pub(super) async fn resolve_record(
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
