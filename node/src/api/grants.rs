//! `/v1/grants` and `/v1/audit`: grants and the audit log, for the owner.

use super::*;

#[utoipa::path(
    post,
    path = "/v1/grants",
    tag = "owner",
    summary = "Grant a service a view",
    request_body = GrantRequest,
    responses((status = 201, description = "ok", body = GrantCreated), (status = "default", response = Failure))
)]
pub(super) async fn create_grant(
    State(vault): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
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
pub(super) async fn list_grants(
    State(vault): State<AppState>,
) -> Result<Json<Vec<GrantInfo>>, ApiError> {
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
pub(super) async fn revoke_grant(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RevokeResponse>, ApiError> {
    grant_revoke(&vault, path_param(path)?).await.map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/grants/{id}/extend",
    tag = "owner",
    summary = "Extend a grant: same token, same app password, audited",
    params(("id" = String, Path, description = "a grant id")),
    request_body = ExtendRequest,
    responses((status = 200, description = "ok", body = GrantInfo), (status = "default", response = Failure))
)]
pub(super) async fn extend_grant(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<GrantInfo>, ApiError> {
    let id = path_param(path)?;
    let request: ExtendRequest = read_typed_body(&vault, body).await?;
    grant_extend(&vault, id, request).await.map(Json)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
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
pub(super) async fn list_audit(
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
pub(super) async fn verify_audit(
    State(vault): State<AppState>,
) -> Result<Json<VerifyResponse>, ApiError> {
    audit_verify(&vault).await.map(Json)
}
