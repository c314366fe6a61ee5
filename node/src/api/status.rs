//! `/v1/hello`, `/v1/status`, `/v1/devices`, `/v1/keys` and `/v1/backup`: the CLI's
//! check of the node, this device, its vault's devices, the vault's key epochs and its
//! backup hosts.

use super::*;

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
pub(super) async fn hello(
    State(vault): State<AppState>,
    body: Body,
) -> Result<Json<HelloResponse>, ApiError> {
    let request: HelloRequest = read_typed_body(&vault, body).await?;
    Ok(Json(hello_answer(&request, |c| {
        vault.keys.identity_proof(c)
    })?))
}

/// The answer to a hello: `prove` applied to its challenge (32 bytes in hex). A backup
/// host answers with its own owner token's proof.
pub fn hello_answer(
    request: &HelloRequest,
    prove: impl FnOnce(&[u8]) -> [u8; 32],
) -> Result<HelloResponse, ApiError> {
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
    Ok(HelloResponse {
        proof: data_encoding::HEXLOWER.encode(&prove(&challenge)),
    })
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "owner",
    summary = "This device, its vault, collections, devices, blobs arriving",
    responses((status = 200, description = "ok", body = StatusResponse), (status = "default", response = Failure))
)]
pub(super) async fn status(
    State(vault): State<AppState>,
) -> Result<Json<StatusResponse>, ApiError> {
    status_of(&vault).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "owner",
    summary = "The vault's devices",
    responses((status = 200, description = "ok", body = Vec<DeviceInfo>), (status = "default", response = Failure))
)]
pub(super) async fn list_devices(
    State(vault): State<AppState>,
) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    Ok(Json(devices_view(&vault).await?))
}

#[utoipa::path(
    post,
    path = "/v1/devices/invite",
    tag = "owner",
    summary = "A one-time invite code for a new device",
    responses((status = 201, description = "ok", body = InviteResponse), (status = "default", response = Failure))
)]
pub(super) async fn create_invite(State(vault): State<AppState>) -> Result<Response, ApiError> {
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
pub(super) async fn remove_device(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    device_remove(&vault, &path_param(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "owner",
    summary = "The vault's key epochs as this device sees them",
    responses((status = 200, description = "ok", body = KeysInfo), (status = "default", response = Failure))
)]
pub(super) async fn keys(State(vault): State<AppState>) -> Result<Json<KeysInfo>, ApiError> {
    Ok(Json(crate::keeper::keys_info(&vault, false).await?))
}

#[utoipa::path(
    post,
    path = "/v1/keys/rotate",
    tag = "owner",
    summary = "Make a new epoch key, sealed to every device of the vault",
    responses((status = 200, description = "rotated", body = KeysInfo), (status = "default", response = Failure))
)]
pub(super) async fn rotate_keys(State(vault): State<AppState>) -> Result<Json<KeysInfo>, ApiError> {
    Ok(Json(crate::keeper::keys_info(&vault, true).await?))
}

#[utoipa::path(
    get,
    path = "/v1/recovery",
    tag = "owner",
    summary = "The vault's recovery kit (its id) and the epochs sealed to it",
    responses((status = 200, description = "ok", body = KitInfo), (status = "default", response = Failure))
)]
pub(super) async fn recovery_kit(State(vault): State<AppState>) -> Result<Json<KitInfo>, ApiError> {
    Ok(Json(crate::keeper::kit_info(&vault).await?))
}

#[utoipa::path(
    post,
    path = "/v1/recovery",
    tag = "owner",
    summary = "Make a new recovery kit the vault's (its public keys; the secret stays with the person)",
    request_body = KitRequest,
    responses((status = 200, description = "ok", body = KitInfo), (status = "default", response = Failure))
)]
pub(super) async fn set_recovery_kit(
    State(vault): State<AppState>,
    body: Body,
) -> Result<Json<KitInfo>, ApiError> {
    let request: KitRequest = read_typed_body(&vault, body).await?;
    Ok(Json(crate::keeper::set_kit(&vault, request).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenameRequest {
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
pub(super) async fn rename_device(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let raw = path_param(path)?;
    let request: RenameRequest = read_typed_body(&vault, body).await?;
    device_rename(&vault, &raw, &request.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl From<crate::backup::BackupError> for ApiError {
    fn from(e: crate::backup::BackupError) -> Self {
        use crate::backup::BackupError as B;
        let code = match &e {
            B::Code(_) => ErrorCode::BadRequest,
            B::NoKit | B::NoEpochKey | B::AlreadyAdded(_) | B::NoMesh => ErrorCode::Conflict,
            B::Unreachable { .. } => ErrorCode::Unavailable,
            B::Refused { .. }
            | B::Protocol { .. }
            | B::RolledBack { .. }
            | B::Altered { .. }
            | B::BadChain { .. }
            | B::Damaged { .. }
            | B::NotEmpty(_) => ErrorCode::Conflict,
            B::Vault(_) => ErrorCode::Storage,
            B::WrongKit(_) => ErrorCode::BadRequest,
            B::BlobsArriving(_) => ErrorCode::Conflict,
        };
        ApiError::new(code, e.to_string())
    }
}

#[utoipa::path(
    get,
    path = "/v1/backup",
    tag = "owner",
    summary = "The vault's backup hosts: what each holds, and whether it is up to date",
    responses((status = 200, description = "ok", body = BackupStatus), (status = "default", response = Failure))
)]
pub(super) async fn backup_status(
    State(vault): State<AppState>,
) -> Result<Json<BackupStatus>, ApiError> {
    crate::backup::refresh(&vault).await;
    Ok(Json(
        blocking(&vault, |v| Ok(crate::backup::status(v)?)).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/backup/verify",
    tag = "owner",
    summary = "Each backup host's chain read and checked whole, and a sample of what a restore reads proven held",
    responses((status = 200, description = "verified (see ok)", body = BackupVerified), (status = "default", response = Failure))
)]
pub(super) async fn verify_backup(
    State(vault): State<AppState>,
) -> Result<Json<BackupVerified>, ApiError> {
    Ok(Json(crate::backup::verify(&vault).await?))
}

#[utoipa::path(
    post,
    path = "/v1/backup/prune",
    tag = "owner",
    summary = "Free space on the backup hosts with the recovery kit's owner key: the whole vault uploaded again, the chain started there, what it no longer names deleted",
    request_body = BackupPruneRequest,
    responses((status = 200, description = "pruned (see ok)", body = BackupPruned), (status = "default", response = Failure))
)]
pub(super) async fn prune_backup(
    State(vault): State<AppState>,
    body: Body,
) -> Result<Json<BackupPruned>, ApiError> {
    let request: BackupPruneRequest = read_typed_body(&vault, body).await?;
    let mut seed = zeroize::Zeroizing::new(
        data_encoding::BASE64
            .decode(request.owner_key.as_bytes())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    "owner_key is not 32 bytes of base64 (the kit's owner key)".to_owned(),
                )
            })?,
    );
    drop(request);
    let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(&mut *seed)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("owner_key: {e}")))?;
    let owner = libp2p::identity::ed25519::Keypair::from(secret);
    Ok(Json(crate::backup::prune(&vault, &owner).await?))
}

#[utoipa::path(
    post,
    path = "/v1/backup/hosts",
    tag = "owner",
    summary = "Enroll a backup host with the code it printed (`hearth host invite`)",
    request_body = BackupAddRequest,
    responses((status = 200, description = "enrolled", body = HostStatus), (status = "default", response = Failure))
)]
pub(super) async fn add_backup_host(
    State(vault): State<AppState>,
    body: Body,
) -> Result<Json<HostStatus>, ApiError> {
    let request: BackupAddRequest = read_typed_body(&vault, body).await?;
    Ok(Json(crate::backup::add(&vault, &request.code).await?))
}
