//! JSON types of the local HTTP API (see docs/API.md). The node serves them; the CLI
//! and services read them.

use serde::{Deserialize, Serialize};

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    BadHost,
    Reserved,
    Revoked,
    Expired,
    OutOfScope,
    RateLimited,
    TooManyStreams,
    NotFound,
    MethodNotAllowed,
    Conflict,
    /// An `If-Match` / `If-None-Match` condition did not hold (HTTP 412).
    PreconditionFailed,
    TooLarge,
    HeadTooLarge,
    /// Bytes that are not an image this node reads (a thumbnail of a PDF).
    NotAnImage,
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
            Self::BadHost => "bad_host",
            Self::Reserved => "reserved",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::OutOfScope => "out_of_scope",
            Self::RateLimited => "rate_limited",
            Self::TooManyStreams => "too_many_streams",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PreconditionFailed => "precondition_failed",
            Self::TooLarge => "too_large",
            Self::HeadTooLarge => "head_too_large",
            Self::NotAnImage => "not_an_image",
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
            Self::BadHost => 421,
            Self::Conflict => 409,
            Self::PreconditionFailed => 412,
            Self::RateLimited | Self::TooManyStreams => 429,
            Self::TooLarge => 413,
            Self::HeadTooLarge => 431,
            Self::NotAnImage => 415,
            Self::Unavailable => 503,
            Self::Corrupt | Self::Storage | Self::Internal => 500,
            Self::InsufficientStorage => 507,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PutResponse {
    pub id: String,
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    pub records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobInfo {
    pub id: String,
    pub size: u64,
    /// The name it was uploaded with (a file name), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its content type (`image/jpeg`), if the upload said.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// When it was added (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<u64>,
    /// Whether the whole blob is on this device (else it is still arriving).
    pub here: bool,
}

/// A file or folder of the `files` collection (docs/SCHEMA.md, "Files").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileInfo {
    /// `/Documents/report.pdf`; `/` is the root folder.
    pub path: String,
    /// Its record's id in `files`.
    pub id: String,
    pub folder: bool,
    /// A file's size in bytes (0 for a folder).
    pub size: u64,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// When its content last changed (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<i64>,
    /// A file's bytes (`GET /v1/blobs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// What its bytes say: a photo's size, date and camera, a song's tags and length
    /// (docs/SCHEMA.md, "Files").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
}

/// One record a search found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub collection: String,
    pub id: String,
    /// What the record is called (its name, title, summary, subject or path), else
    /// its id.
    pub title: String,
    /// The fields the words were found in (`emails.value`).
    pub fields: Vec<String>,
    /// Higher is better: a word in a name, title, summary, subject or path counts 3,
    /// elsewhere 1.
    pub score: u32,
    /// Through a grant (`GET /v1/view/_search`): the record as the grant sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub record: Option<serde_json::Value>,
}

/// `GET /v1/search`: the records holding every word, best first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
}

/// `GET /v1/files/{path}` of a folder: what is in it, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileInfo>,
}

/// `PATCH /v1/files/{path}`: move (or copy) a file or folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileMove {
    /// The new path; its folder must be there.
    pub to: String,
    /// Replace what is at `to` (else 409 if something is there).
    #[serde(default)]
    pub overwrite: bool,
    /// Copy instead of moving (a copy of a file names the same stored bytes).
    #[serde(default)]
    pub copy: bool,
}

/// `DELETE /v1/files/{path}`: what was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileRemoved {
    pub path: String,
    pub files: usize,
    pub folders: usize,
}

/// `GET /v1/export`: the whole vault at one moment, for `hearth export --all`. Blob
/// contents are not in it: they are fetched by id (`GET /v1/blobs/{id}`) afterwards,
/// and cannot have changed (a blob's id is its content).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VaultExport {
    /// The moment of the snapshot (Unix seconds).
    pub at: u64,
    pub vault_id: String,
    /// The device it was taken on.
    pub device: String,
    /// Every collection's records (the system's own `_` collections apart), by name.
    pub collections: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    /// Contacts collections as vCard, calendar collections as iCalendar, by name.
    pub pim: std::collections::BTreeMap<String, String>,
    /// The vault's devices (their records).
    pub devices: Vec<serde_json::Value>,
    pub blobs: Vec<BlobInfo>,
    pub grants: Vec<GrantInfo>,
    pub audit: Vec<AuditEntry>,
}

/// `GET /v1/check` (`hearth check`): everything on this device read back and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckReport {
    /// Nothing is wrong.
    pub ok: bool,
    /// Sealed values in the store, each opened and authenticated.
    pub values: u64,
    /// Collection documents loaded.
    pub collections: u64,
    /// Blobs read whole, every chunk verified.
    pub blobs: u64,
    /// Audit entries whose hash chains verify.
    pub audit_entries: u64,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// `DELETE /v1/blobs/{id}`: the blob is removed on every device; this one freed
/// `chunks` files (`bytes` on disk) no other blob uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobRemoved {
    pub id: String,
    pub removed: bool,
    pub chunks: usize,
    pub bytes: u64,
}

/// A blob another device listed that this device does not hold whole yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArrivingBlob {
    pub id: String,
    pub size: u64,
    /// Bytes already here (0 until a device that has it is connected).
    pub received: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The vault's devices, with what this node knows of each.
    pub devices: Vec<DeviceInfo>,
    /// Blobs listed by other devices and still arriving here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arriving: Vec<ArrivingBlob>,
    /// The API on the LAN over TLS (`hearth up --lan`), if served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<LanStatus>,
    /// When this device was removed from the vault (Unix seconds), if it was: it no
    /// longer syncs with the other devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
    /// The vault's current key epoch (0: its first keys; `GET /v1/keys` says more).
    #[serde(default)]
    pub key_epoch: u32,
    /// Whether this device holds that epoch's key (it cannot make grants until it does).
    #[serde(default)]
    pub key_held: bool,
    /// The vault's recovery kit (its id), if one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_kit: Option<String>,
    /// Active grants that expire within two weeks, soonest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expiring_grants: Vec<ExpiringGrant>,
    /// Collections with records edited on two devices at once, for the person to
    /// decide (`hearth conflicts`), and how many records each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_decide: Vec<ToDecide>,
}

/// Records of a collection with something for the person to decide: fields edited
/// differently on two devices, versions of one record, a delete that met an edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToDecide {
    pub collection: String,
    pub records: u64,
}

/// Where the API and DAV are served on the LAN, and how to check the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanStatus {
    /// `https://ADDR/`.
    pub url: String,
    /// SHA-256 of the TLS certificate (`AB:CD:…`): compare it with what a phone shows.
    pub fingerprint: String,
    /// Names and addresses the certificate is valid for.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InviteResponse {
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// `POST /v1/grants`: what the owner grants. Scopes are parsed by the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantRequest {
    pub service: String,
    #[serde(default)]
    pub read: Option<String>,
    #[serde(default)]
    pub write: Option<String>,
    /// Calendars (or families: `calendar*`) whose busy times the service may ask for
    /// (CalDAV free-busy-query) and nothing else of them.
    #[serde(default)]
    pub free_busy: Option<String>,
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
    /// Also issue a short password for HTTP Basic auth (DAV clients).
    #[serde(default)]
    pub app_password: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantCreated {
    pub id: String,
    pub token: String,
    pub expires_at: Option<u64>,
    /// The app password, when asked for: shown once, never stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// What looks mistaken (a collection or field no record has, e.g. `tag` where the
    /// records have `tags`): the grant is made anyway, since data may come later.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With an app password: how a phone or another computer connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<PhoneSetup>,
}

/// How a phone reaches the node with a grant's app password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhoneSetup {
    /// The address to give a phone: `https://192.168.1.5:7743/` when the node serves
    /// the LAN (`hearth up --lan`); absent when it does not (see `note`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// SHA-256 of the LAN certificate: accept it only if the phone shows this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The user name to give (any name works): the service's.
    pub user: String,
    /// `caldavs://USER:PASSWORD@HOST:PORT/`: what the QR code holds. DAVx⁵ (Android)
    /// opens it with the account filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// An Apple configuration profile (`.mobileconfig`: the CardDAV and CalDAV accounts
    /// and the LAN certificate), base64: iPhone, iPad and macOS install it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobileconfig: Option<String>,
    /// What to do when a phone cannot reach the node yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The vault's key epochs as this device sees them: `GET /v1/keys` and
/// `POST /v1/keys/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeysInfo {
    /// The current epoch: 0 is the vault's first keys, which every device ever paired
    /// holds; each later one was made when a device was removed or on demand.
    pub epoch: u32,
    /// The current epoch's id (empty for epoch 0).
    pub id: String,
    /// The device that made it, and when (Unix seconds); absent for epoch 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_at: Option<u64>,
    /// The devices its key is sealed to (PeerIds); for epoch 0, every device listed.
    pub sealed_to: Vec<String>,
    /// Whether this device holds the current epoch's key (it signs new grants' tokens
    /// with it). `false` until another device seals it to this one.
    pub held: bool,
    /// Epochs after 0, and how many of them this device holds the keys of.
    pub epochs: usize,
    pub epochs_held: usize,
    /// Whether this request made a new epoch.
    #[serde(default)]
    pub rotated: bool,
}

/// `POST /v1/recovery`: what the devices keep of a new recovery kit (the CLI made its
/// secret and keeps it off the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KitRequest {
    /// The kit's id: 16 hex digits, BLAKE3 of `exchange`.
    pub kit: String,
    /// Base64 of the kit's X25519 public key (epoch keys are sealed to it).
    pub exchange: String,
    /// Base64 of the kit's Ed25519 public key.
    pub owner: String,
    /// 32 hex digits: the vault's name on a backup host.
    pub handle: String,
}

/// `GET /v1/recovery` and `POST /v1/recovery`: the vault's recovery kit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KitInfo {
    /// The kit's id; absent if no kit was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_at: Option<u64>,
    /// The current epoch, and how many epochs (after 0) the kit's key is sealed to,
    /// of how many.
    pub epoch: u32,
    pub epochs_sealed: usize,
    pub epochs: usize,
}

/// One device of the vault, as `GET /v1/devices` and `GET /v1/status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    /// The device's PeerId.
    pub id: String,
    pub name: String,
    /// Unix seconds.
    pub added_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
    /// Where the device last said it listens for the other devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
    pub online: bool,
    /// Online, but only through a relay (a device of the vault that relays, such as a
    /// home server): no direct connection.
    #[serde(default)]
    pub relayed: bool,
    /// When this node last exchanged sync messages with it (Unix seconds).
    pub last_sync: Option<u64>,
    /// Whether it holds the same changes as this device: their last comparison found
    /// equal fingerprints, and nothing changed on either side since. Always `true` for
    /// this device itself.
    #[serde(default)]
    pub in_step: bool,
    pub this_device: bool,
}

/// `DELETE` answers of the CLI's `--json` output (`rm`, `devices remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    pub id: String,
    pub removed: bool,
}

/// `POST /v1/collections/{c}/records/{id}/text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextEditRequest {
    pub field: String,
    pub edits: Vec<TextEditBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextEditBody {
    pub at: usize,
    #[serde(default)]
    pub delete: usize,
    #[serde(default)]
    pub insert: String,
}

/// `GET /v1/collections/{c}/records/{id}/conflicts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConflictsResponse {
    pub id: String,
    /// Field name → every competing value, the one the record shows first.
    pub conflicts: serde_json::Map<String, serde_json::Value>,
    /// Whole versions of the record, the one shown first, when there are several: the
    /// same id made on two devices apart, or an edited version a delete met while
    /// another version stood. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Set when one device deleted the record while another edited it: the edit won
    /// and the record was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<DeletedWhileEdited>,
}

/// A record deleted on one device while edited on another (it was kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeletedWhileEdited {
    /// The name of the device that deleted it (`"a device no longer in the vault"`
    /// when it is not a member now).
    pub deleted_on: String,
    /// The names of the devices that edited it.
    pub edited_on: Vec<String>,
    /// When a device found it (Unix seconds).
    pub at: u64,
}

/// `POST /v1/collections/{c}/records/{id}/resolve`: how a person ends a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ResolveRequest {
    /// Choose the value of a field in conflict (`null` removes the field).
    Field {
        field: String,
        value: serde_json::Value,
    },
    /// Keep version `version` of `versions` (0: the one shown; also how a record a
    /// delete met is kept as it is) as the record's only version.
    Version { version: usize },
    /// Write `record` as the record's only version (a merge of its versions).
    Record {
        record: serde_json::Map<String, serde_json::Value>,
    },
}

impl ResolveRequest {
    /// Reads a request, saying which of its shapes a wrong one missed.
    pub fn from_json(value: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(mut body) = value else {
            return Err("the body must be a JSON object".into());
        };
        let keys: Vec<&str> = body.keys().map(String::as_str).collect();
        let shape = match keys.as_slice() {
            ["field", "value"] | ["value", "field"] => "field",
            ["version"] => "version",
            ["record"] => "record",
            _ => {
                return Err(format!(
                    "expected {{\"field\", \"value\"}}, {{\"version\": N}} or {{\"record\": {{...}}}}, got the keys {keys:?}"
                ));
            }
        };
        match shape {
            "field" => {
                let Some(serde_json::Value::String(field)) = body.remove("field") else {
                    return Err("\"field\" must be a string".into());
                };
                let value = body.remove("value").unwrap_or_default();
                Ok(Self::Field { field, value })
            }
            "version" => match body.remove("version").and_then(|v| v.as_u64()) {
                Some(version) => Ok(Self::Version {
                    version: usize::try_from(version).map_err(|_| "\"version\" is too large")?,
                }),
                None => Err("\"version\" must be a whole number, 0 or more".into()),
            },
            _ => match body.remove("record") {
                Some(serde_json::Value::Object(record)) => Ok(Self::Record { record }),
                _ => Err("\"record\" must be a JSON object".into()),
            },
        }
    }
}

/// `POST /v1/restore/{c}`: what a batch of records restored from an export did. A
/// record the collection lacks is created; one it holds as the export has it is left;
/// one it holds otherwise is left as it is (the vault's version is kept) and named.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreReport {
    /// Records created.
    pub created: u64,
    /// Records that were there, the same.
    pub unchanged: u64,
    /// Records that were there and differ from the export: kept as they are, by id.
    #[serde(default)]
    pub differing: Vec<String>,
}

/// `POST /v1/collections/{c}/mail`: what an import of a batch of messages did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MailImportReport {
    /// New messages.
    pub imported: u64,
    /// Messages that were there already (the same bytes under the same key): their
    /// folder is added to the record's folders, nothing else changes.
    pub duplicates: u64,
    /// Messages that could not be stored, by their place in the batch, and why.
    #[serde(default)]
    pub failed: Vec<MailFailure>,
}

/// A message of a batch that could not be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MailFailure {
    pub index: usize,
    pub reason: String,
}

/// Whether a grant is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Active,
    Expired,
    Revoked,
    /// Issued by a Hearth that did not bind grants to their tokens: refused, because a
    /// removed device could forge its token. Grant it again.
    Unbound,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Unbound => "unbound",
        }
    }
}

/// One grant as `GET /v1/grants` lists it: also the consent record (who, what, why,
/// until when).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantInfo {
    pub id: String,
    pub service: String,
    pub scope: crate::scope::Scope,
    pub purpose: String,
    pub issued_at: u64,
    pub expires_at: Option<u64>,
    /// For a remote service: the PeerId its requests must come from.
    pub to: Option<String>,
    pub revoked_at: Option<u64>,
    pub rate_per_minute: Option<u32>,
    /// Whether the grant has an app password.
    #[serde(default)]
    pub app_password: bool,
    pub status: GrantStatus,
    /// The last audited access (Unix seconds).
    pub last_used: Option<u64>,
    /// When the token itself stops, if it carries a date of its own (grants made
    /// before grants could be extended): extending such a grant extends its app
    /// password, not this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<u64>,
}

/// `POST /v1/grants/{id}/extend`: the grant's new expiry, from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// `30d`, `12h`, `2w`, `1y`, … or `never`.
    pub expires: String,
}

/// A grant about to expire (within two weeks), as `hearth status` warns of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExpiringGrant {
    pub id: String,
    pub service: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// `POST /v1/grants/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevokeResponse {
    pub grant: GrantInfo,
    /// What the service already saw and did, from the audit log.
    pub seen: SeenReport,
}

/// What a grant's service saw and did, from the audit log: the "what it already saw"
/// report of a revocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeenReport {
    /// Audit entries of this grant (reads, deliveries, writes and refusals).
    pub accesses: u64,
    pub first_access: Option<u64>,
    pub last_access: Option<u64>,
    pub collections: Vec<SeenCollection>,
    /// Requests of this grant that were refused.
    pub refused: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeenCollection {
    pub collection: String,
    /// Records returned by reads.
    pub record_reads: u64,
    /// Records pushed by event streams.
    pub deliveries: u64,
    /// Fields the service received (by reads or events).
    pub fields: Vec<String>,
    /// Records the service created, changed or removed.
    pub writes: u64,
    pub written_fields: Vec<String>,
    pub written_ids: Vec<String>,
}

/// One entry of the audit log. Entries are hash-chained per device: `prev` is the
/// `hash` of the entry before in the same chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    /// Unix seconds.
    pub at: u64,
    pub grant: String,
    pub service: String,
    /// `read`, `subscribe` (an event batch delivered), `write`, `create`, `remove`,
    /// `refused`, `read_blob`, or `extend` (the owner extended the grant).
    pub operation: String,
    /// Empty when the access was not about one collection (a refused token).
    #[serde(default)]
    pub collection: String,
    pub records: u64,
    pub fields: Vec<String>,
    /// The records touched by a write (and read by a single-record read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Why a refused request was refused (an error code); for `extend`, the grant's
    /// new expiry (`expires_at=SECS` or `never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `refused`: how many requests this entry stands for (refusals of one grant
    /// are recorded at most once a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Which event stream of the grant received a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
    /// The chain: the device that wrote it, its number in that chain.
    pub device: String,
    pub seq: u64,
    pub prev: String,
    pub hash: String,
}

/// `GET /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyResponse {
    pub ok: bool,
    /// Entries verified (when ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// The first entry that does not verify, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/view`: every readable collection of the grant, projected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewAll {
    pub grant: String,
    pub service: String,
    pub collections: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
}

/// An `upsert` event of `GET /v1/view/events`: a record entered the view or changed
/// inside it (projected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewUpsert {
    pub collection: String,
    pub record: serde_json::Value,
}

/// The first event of `GET /v1/view/events`: the stream is live, and its number in the
/// audit log (each delivered batch is an entry with this `stream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamReady {
    pub stream: u64,
}

/// A `remove` event: a record left the view (removed, or no longer matching).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewRemove {
    pub collection: String,
    pub id: String,
}

/// `POST /v1/hello`: the CLI's challenge, so it learns it talks to this HOME's node
/// before it presents the owner token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HelloRequest {
    /// 32 random bytes, hex.
    pub challenge: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HelloResponse {
    /// `keyed_hash(derive_key(IDENTITY_CONTEXT, blake3(owner token)), challenge)`, hex.
    pub proof: String,
}

/// The key-derivation context of [`HelloResponse::proof`].
pub const IDENTITY_CONTEXT: &str = "hearth 2026-11 api identity v1";

/// The proof a node answers to a hello `challenge`, from the hash of its owner token.
pub fn identity_proof(owner_token_hash: &[u8; 32], challenge: &[u8]) -> [u8; 32] {
    let key = blake3::derive_key(IDENTITY_CONTEXT, owner_token_hash);
    *blake3::keyed_hash(&key, challenge).as_bytes()
}

/// `hearth token attenuate --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: String,
}

/// `hearth init --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InitReport {
    pub home: String,
    pub peer_id: String,
    pub vault_id: String,
    pub passphrase: bool,
}

/// `hearth up --json` (printed once the node serves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpReport {
    pub home: String,
    pub api_addr: String,
    pub peer_id: String,
    pub vault_id: String,
    pub created: bool,
}

/// `hearth join --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinReport {
    pub home: String,
    pub peer_id: String,
    pub vault_id: String,
    pub inviter: String,
}

/// `hearth passphrase --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassphraseReport {
    pub keys: String,
    pub passphrase: bool,
}

/// `hearth blob get -o FILE --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobWritten {
    pub id: String,
    pub size: u64,
    pub path: String,
}

/// What `hearth backup status` says of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostStatus {
    pub peer: String,
    pub addrs: Vec<String>,
    /// Whether everything this device holds is on the host, as of its last upload.
    pub up_to_date: bool,
    /// What the vault uses on the host, and may.
    pub bytes: u64,
    pub quota: u64,
    /// Unix seconds of the last upload this device made or saw.
    pub last_upload: Option<u64>,
    /// The host's newest manifest, as this device saw it.
    pub seq: u64,
    pub added_at: u64,
    /// Why the last upload failed, if it did.
    pub error: Option<String>,
}

/// `GET /v1/backup`, `hearth backup status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupStatus {
    pub hosts: Vec<HostStatus>,
}

/// `POST /v1/backup/hosts`: enroll the host whose invite code this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupAddRequest {
    pub code: String,
}

/// What `hearth backup verify` found on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostVerified {
    pub peer: String,
    /// The host's newest manifest: the chain up to it was read and checked whole.
    pub seq: u64,
    /// Objects a restore would read, how many were sampled, how many the host proved.
    pub objects: u64,
    pub sampled: u64,
    pub proven: u64,
    /// Each object the host could not prove, and why.
    pub failures: Vec<String>,
    /// Why the host could not be verified at all.
    pub error: Option<String>,
}

/// `POST /v1/backup/prune`: what frees space on the backup hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupPruneRequest {
    /// The recovery kit's owner key: its Ed25519 seed, base64 (`hearth backup prune`
    /// derives it from the kit; only it lets a host delete).
    pub owner_key: String,
}

/// One host, pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostPruned {
    pub peer: String,
    /// The manifest the chain starts at now.
    pub base: u64,
    pub objects_dropped: u64,
    pub bytes_before: u64,
    /// What the vault uses on the host now.
    pub bytes: u64,
    /// Given a replaced kit: its id, and the copy kept under it on the host was
    /// deleted whole (`objects_dropped` and `bytes_before` count it; `base` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_kit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/backup/prune`, `hearth backup prune --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupPruned {
    /// Whether every host was pruned.
    pub ok: bool,
    pub hosts: Vec<HostPruned>,
}

/// `POST /v1/backup/verify`, `hearth backup verify --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupVerified {
    /// Whether every host proved everything sampled.
    pub ok: bool,
    pub hosts: Vec<HostVerified>,
}
