//! JSON types of the local HTTP API (see docs/API.md). The node serves them; the CLI
//! and services read them.

use serde::{Deserialize, Serialize};

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Machine-readable error codes; the HTTP status follows from the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    BadJson,
    NotAnObject,
    InvalidCollection,
    InvalidId,
    InvalidBlobId,
    BadRequest,
    MissingToken,
    InvalidToken,
    Reserved,
    Revoked,
    Expired,
    OutOfScope,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    Conflict,
    TooLarge,
    Corrupt,
    Storage,
    InsufficientStorage,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::NotAnObject => "not_an_object",
            Self::InvalidCollection => "invalid_collection",
            Self::InvalidId => "invalid_id",
            Self::InvalidBlobId => "invalid_blob_id",
            Self::BadRequest => "bad_request",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::Reserved => "reserved",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::OutOfScope => "out_of_scope",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::Corrupt => "corrupt",
            Self::Storage => "storage",
            Self::InsufficientStorage => "insufficient_storage",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::BadJson
            | Self::NotAnObject
            | Self::InvalidCollection
            | Self::InvalidId
            | Self::InvalidBlobId
            | Self::BadRequest => 400,
            Self::MissingToken | Self::InvalidToken => 401,
            Self::Reserved | Self::Revoked | Self::Expired | Self::OutOfScope => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::RateLimited => 429,
            Self::TooLarge => 413,
            Self::Unavailable => 503,
            Self::Corrupt | Self::Storage | Self::Internal => 500,
            Self::InsufficientStorage => 507,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub id: String,
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub name: String,
    pub records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub id: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Version of the node software.
    pub version: String,
    pub vault_id: String,
    pub peer_id: String,
    pub home: String,
    pub api_addr: String,
    pub collections: Vec<CollectionInfo>,
    pub blobs: u64,
    /// Where this device listens for the other devices of the vault.
    pub listen_addrs: Vec<String>,
    /// The vault's devices: `{"id" (PeerId), "name", "added_at", "removed_at"?, "online",
    /// "last_sync" (Unix seconds or null), "this_device"}`.
    pub devices: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteResponse {
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// `POST /v1/grants`: what the owner grants. Scopes are parsed by the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    pub service: String,
    #[serde(default)]
    pub read: Option<String>,
    #[serde(default)]
    pub write: Option<String>,
    #[serde(default, rename = "where")]
    pub filters: Vec<String>,
    /// A duration like `30d`, `12h`, `90m`, or `never`; default 30 days.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    /// For a remote service: the PeerId its requests must come from.
    #[serde(default)]
    pub to: Option<String>,
    /// At most this many requests a minute, as `N/min`.
    #[serde(default)]
    pub rate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantCreated {
    pub id: String,
    pub token: String,
    pub expires_at: Option<u64>,
}
