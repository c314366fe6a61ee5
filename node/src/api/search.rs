//! `GET /v1/search`: the owner's search over every user collection (`crate::search`).

use super::*;
use hearth_protocol::api::{SearchHit, SearchResults};

/// `POST /v1/check/repair`: what this device derives from the records, made again from
/// them: the search index (values that no longer open included).
#[utoipa::path(
    post,
    path = "/v1/check/repair",
    tag = "owner",
    summary = "Make the search index again from the records",
    responses((status = 200, description = "{\"indexed\": N}: the records indexed", body = serde_json::Value), (status = "default", response = Failure))
)]
pub(super) async fn repair(State(vault): State<AppState>) -> Result<Json<Value>, ApiError> {
    let indexed = blocking(&vault, |v| Ok(v.search.rebuild_all(&v.collections)?)).await?;
    Ok(Json(serde_json::json!({ "indexed": indexed })))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ViewSearchQuery {
    /// The words to find: a record must hold all of them, in fields the grant reads.
    q: String,
    /// At most this many (20 if not given; at most 200).
    limit: Option<usize>,
}

/// `GET /v1/view/_search`: a grant's search, within its view.
#[utoipa::path(
    get,
    path = "/v1/view/_search",
    tag = "service",
    summary = "The records of the grant's view holding every word, in fields it reads, projected",
    params(ViewSearchQuery),
    responses((status = 200, description = "ok", body = SearchResults), (status = "default", response = Failure))
)]
pub(super) async fn view_search(
    State(vault): State<AppState>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<ViewSearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SearchResults>, ApiError> {
    let credentials = credentials(&headers)?;
    let query = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let limit = query.limit.unwrap_or(20).clamp(1, 200);
    let hits = vault
        .door
        .search(&credentials, &vault.search, &query.q, limit)
        .await?;
    Ok(Json(SearchResults {
        hits: hits
            .into_iter()
            .map(|h| SearchHit {
                title: h
                    .record
                    .as_object()
                    .and_then(crate::search::title)
                    .unwrap_or_else(|| h.id.clone()),
                collection: h.collection,
                id: h.id,
                fields: h.fields,
                score: h.score,
                record: Some(h.record),
            })
            .collect(),
    }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// The words to find: a record must hold all of them, in any of its fields.
    q: String,
    /// Only in this collection.
    collection: Option<String>,
    /// At most this many (20 if not given; at most 200).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "owner",
    summary = "The records holding every word asked for, best first",
    params(SearchQuery),
    responses((status = 200, description = "ok", body = SearchResults), (status = "default", response = Failure))
)]
pub(super) async fn search(
    State(vault): State<AppState>,
    query: Result<axum::extract::Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SearchResults>, ApiError> {
    let query = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let only = query
        .collection
        .as_deref()
        .map(CollectionName::parse)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidCollection, e.to_string()))?;
    let limit = query.limit.unwrap_or(20).clamp(1, 200);
    let hits = blocking(&vault, move |v| {
        // What was written a moment ago is found (the follower may not have got to it).
        let keep = |c: &str| only.as_ref().is_none_or(|o| o.as_str() == c);
        let hits = v.search.find(&v.collections, &query.q, &keep, limit)?;
        let out: Vec<SearchHit> = hits
            .into_iter()
            .map(|hit| SearchHit {
                title: hit.title.unwrap_or_else(|| hit.id.clone()),
                collection: hit.collection,
                id: hit.id,
                fields: hit.fields,
                score: hit.score,
                record: None,
            })
            .collect();
        Ok(out)
    })
    .await?;
    Ok(Json(SearchResults { hits }))
}
