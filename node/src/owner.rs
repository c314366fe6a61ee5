//! The owner's operations: what the owner API (`api`) and the dashboard both call, so
//! that neither calls the other and no operation is written twice.
//!
//! In: the vault and already-parsed requests (a record, a grant request, a device's
//! PeerId as text). Out: the answer types of `hearth_protocol::api`, or an [`Error`]
//! with its code (which fixes an HTTP status where there is one) and a message for
//! people. Knows no HTTP: bodies are parsed and answers rendered by the front ends.
//! Document work runs on the blocking pool ([`blocking`]); every write is committed
//! before it returns.

use std::sync::Arc;

use hearth_protocol::api::{
    AuditEntry, ConflictsResponse, DeletedWhileEdited, DeviceInfo, ErrorCode, GrantCreated,
    GrantInfo, GrantRequest, InviteResponse, RevokeResponse, StatusResponse, VerifyResponse,
};
use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Map, Value};

use crate::Vault;
use crate::access::{self, AccessError};
use crate::blobs::BlobError;
use crate::collections::CollectionError;
use crate::pim;
use crate::store::StoreError;

/// Why an owner operation failed: a code (which fixes the HTTP status where there is
/// one) and a message for people.
#[derive(Debug)]
pub struct Error {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Error {
    /// What went wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What kind of failure it is (the API answers with the status it fixes).
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::new(e.code(), e.to_string())
    }
}

impl From<CollectionError> for Error {
    fn from(e: CollectionError) -> Self {
        Error::new(e.code(), e.to_string())
    }
}

impl From<AccessError> for Error {
    /// What a service is told: the refusal, or for a failure inside the node only its
    /// kind (the message, which may name internals, goes to the log).
    fn from(e: AccessError) -> Self {
        let code = e.code();
        let message = match code {
            ErrorCode::Internal | ErrorCode::Storage | ErrorCode::Corrupt => {
                tracing::error!(code = code.as_str(), error = %e, "a service's request failed");
                "the node could not complete the request; its log says why".to_owned()
            }
            ErrorCode::InsufficientStorage => {
                tracing::warn!(error = %e, "a request failed: the disk is full");
                "the node's disk is full; nothing was written".to_owned()
            }
            _ => e.to_string(),
        };
        Error::new(code, message)
    }
}

impl From<BlobError> for Error {
    fn from(e: BlobError) -> Self {
        Error::new(e.code(), e.to_string())
    }
}

/// Active grants that expire within [`access::EXPIRY_WARNING`], soonest first.
pub fn expiring_grants(grants: &[access::Grant]) -> Vec<hearth_protocol::api::ExpiringGrant> {
    let now = crate::clock::now_unix();
    let horizon = now + access::EXPIRY_WARNING.as_secs();
    let mut out: Vec<_> = grants
        .iter()
        .filter(|g| g.status(now) == hearth_protocol::api::GrantStatus::Active)
        .filter_map(|g| {
            let at = g.expires_at.filter(|at| *at <= horizon)?;
            Some(hearth_protocol::api::ExpiringGrant {
                id: g.id.clone(),
                service: g.service.clone(),
                expires_at: at,
            })
        })
        .collect();
    out.sort_by_key(|g| g.expires_at);
    out
}

/// What `GET /v1/status` answers (also the dashboard's overview).
pub async fn status_of(vault: &Arc<Vault>) -> Result<StatusResponse, Error> {
    let (collections, blobs, arriving, kit, expiring_grants, to_decide) = blocking(vault, |v| {
        Ok((
            v.collections.list()?,
            v.blobs.count() as u64,
            v.blobs.arriving(&v.collections)?,
            crate::recovery::current(&v.collections, &v.keys.vault_id)?.map(|(kit, _)| kit.id),
            expiring_grants(&access::list_grants(&v.collections)?),
            v.collections
                .conflict_counts()?
                .into_iter()
                .map(|(name, n)| hearth_protocol::api::ToDecide {
                    collection: name.to_string(),
                    records: n as u64,
                })
                .collect(),
        ))
    })
    .await?;
    let keys = vault.keys.epochs.summary();
    let devices = devices_view(vault).await?;
    let listen_addrs = match vault.mesh() {
        Some(mesh) => mesh
            .handle
            .listen_addrs()
            .await
            .unwrap_or_default()
            .iter()
            .map(|a| a.to_string())
            .collect(),
        None => Vec::new(),
    };
    Ok(StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        vault_id: vault.keys.vault_id_hex(),
        peer_id: vault.keys.peer_id().to_string(),
        home: vault.home.root().display().to_string(),
        api_addr: vault.api_addr.to_string(),
        collections,
        blobs,
        listen_addrs,
        removed_at: vault.removed_at(),
        key_epoch: keys.epoch,
        key_held: keys.held,
        recovery_kit: kit,
        expiring_grants,
        to_decide,
        devices,
        arriving,
        lan: vault
            .lan
            .as_ref()
            .map(|lan| hearth_protocol::api::LanStatus {
                url: format!("https://{}/", lan.addr),
                fingerprint: lan.fingerprint.clone(),
                names: lan.names.clone(),
            }),
    })
}

/// The device list with what this node knows of each: online, last sync.
pub async fn devices_view(vault: &Arc<Vault>) -> Result<Vec<DeviceInfo>, Error> {
    let list = blocking(vault, |v| Ok(crate::devices::devices(&v.collections)?)).await?;
    let (online, relayed, last_sync) = match vault.mesh() {
        Some(mesh) => (
            mesh.handle.connected_peers().await.unwrap_or_default(),
            mesh.handle.relayed_peers().await.unwrap_or_default(),
            mesh.sync.last_sync(),
        ),
        None => (Vec::new(), Default::default(), Default::default()),
    };
    let in_step = |peer: &libp2p::PeerId| vault.mesh().is_some_and(|m| m.sync.in_step(peer));
    let recorded = blocking(vault, |v| Ok(crate::devices::recorded_syncs(&v.store))).await?;
    let me = vault.keys.peer_id().to_string();
    Ok(list
        .into_iter()
        .map(|device| {
            let peer: Option<libp2p::PeerId> = device.id.parse().ok();
            let this_device = device.id == me;
            let online = this_device || peer.is_some_and(|p| online.contains(&p));
            let now_known = peer
                .and_then(|p| last_sync.get(&p).copied())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            // Since this run, or as recorded before it.
            let last_sync = now_known.or_else(|| peer.and_then(|p| recorded.get(&p).copied()));
            DeviceInfo {
                id: device.id,
                name: device.name,
                added_at: device.added_at,
                removed_at: device.removed_at,
                addrs: device.addrs,
                online,
                relayed: !this_device && peer.is_some_and(|p| relayed.contains(&p)),
                last_sync,
                in_step: this_device || peer.is_some_and(|p| online && in_step(&p)),
                this_device,
            }
        })
        .collect())
}

/// A new one-time invite code for a device to join.
pub async fn invite(vault: &Arc<Vault>) -> Result<InviteResponse, Error> {
    let mesh = vault.mesh().ok_or_else(|| {
        Error::new(
            ErrorCode::Unavailable,
            "this node runs without the mesh, so no device can join it",
        )
    })?;
    let (code, expires_at) = mesh
        .pairing
        .invite(crate::mesh::pairing::DEFAULT_INVITE_TTL)
        .await
        .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))?;
    Ok(InviteResponse {
        code: code.to_string(),
        expires_at,
    })
}

/// Removes a device (by its PeerId) from the vault.
pub async fn device_remove(vault: &Arc<Vault>, raw: &str) -> Result<(), Error> {
    let peer = peer_of(raw)?;
    if peer == vault.keys.peer_id() {
        return Err(Error::new(
            ErrorCode::Conflict,
            "a device cannot remove itself; remove it from another device",
        ));
    }
    change_device(vault, peer, crate::devices::remove).await?;
    // Nothing made from now on may open with a key the removed device holds.
    let kept = crate::keeper::keep(vault, crate::epochs::Rotation::IfNeeded).await?;
    if let Some(n) = kept.rotated_to {
        tracing::info!(%peer, epoch = n, "device removed; the vault's keys rotated");
    }
    Ok(())
}

fn peer_of(raw: &str) -> Result<libp2p::PeerId, Error> {
    raw.parse()
        .map_err(|_| Error::new(ErrorCode::InvalidId, format!("{raw:?} is not a PeerId")))
}

/// Applies `change` to a device of the list and commits; `404` if it is not listed.
async fn change_device(
    vault: &Arc<Vault>,
    peer: libp2p::PeerId,
    change: impl FnOnce(
        &crate::collections::Collections,
        &libp2p::PeerId,
    ) -> Result<bool, CollectionError>
    + Send
    + 'static,
) -> Result<(), Error> {
    blocking(vault, move |v| {
        if change(&v.collections, &peer)? {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::NotFound,
                format!("no device {peer} in this vault"),
            ))
        }
    })
    .await?;
    vault.store.commit().await?;
    Ok(())
}

/// Gives a device (by its PeerId) a new name.
pub async fn device_rename(vault: &Arc<Vault>, raw: &str, name: &str) -> Result<(), Error> {
    let peer = peer_of(raw)?;
    let name = crate::devices::valid_name(name)
        .map_err(|e| Error::new(ErrorCode::BadRequest, e))?
        .to_owned();
    change_device(vault, peer, move |c, p| crate::devices::rename(c, p, &name)).await
}

/// An owner's write, with contacts and calendar records kept in step with their text;
/// durable when it returns. Returns whether the record existed and the record now.
pub async fn owner_write(
    vault: &Vault,
    collection: &CollectionName,
    id: &RecordId,
    change: pim::Change,
) -> Result<(bool, Map<String, Value>), Error> {
    let written = pim::owner_write(&vault.collections, collection, id, change)
        .await
        .map_err(|e| write_error(collection, id, e))?;
    vault.store.commit().await?;
    Ok(written)
}

/// The answer to an owner's write a contact's or event's rules refused.
pub fn write_error(collection: &CollectionName, id: &RecordId, e: pim::WriteError) -> Error {
    match e {
        pim::WriteError::Missing => record_not_found(collection, id),
        pim::WriteError::Pim(e) => Error::new(ErrorCode::BadRequest, e.to_string()),
        pim::WriteError::BadEdit(e) => Error::new(ErrorCode::BadRequest, e),
        pim::WriteError::Collection(e) => e.into(),
    }
}

/// Removes a record; durable when it returns. `Ok(false)` if there was none.
pub async fn remove(
    vault: &Arc<Vault>,
    collection: &CollectionName,
    id: &RecordId,
) -> Result<bool, Error> {
    let (c, i) = (collection.clone(), id.clone());
    let removed = blocking(vault, move |v| Ok(v.collections.remove(&c, &i)?)).await?;
    if removed {
        vault.store.commit().await?;
    }
    Ok(removed)
}

/// A record's conflicts, devices named; `None` if there is no such record.
pub async fn conflicts(
    vault: &Arc<Vault>,
    collection: &CollectionName,
    id: &RecordId,
) -> Result<Option<ConflictsResponse>, Error> {
    let (c, i) = (collection.clone(), id.clone());
    blocking(vault, move |v| {
        let Some(conflict) = v.collections.conflicts(&c, &i)? else {
            return Ok(None);
        };
        let names = crate::devices::names_by_tag(&v.collections)?;
        Ok(Some(conflicts_response(i.to_string(), conflict, &names)))
    })
    .await
}

/// A record's conflicts as the API shows them, devices named.
pub fn conflicts_response(
    id: String,
    conflict: crate::collections::RecordConflict,
    names: &std::collections::HashMap<String, String>,
) -> ConflictsResponse {
    let name = |tag: &String| {
        names
            .get(tag)
            .cloned()
            .unwrap_or_else(|| "a device no longer in the vault".to_owned())
    };
    ConflictsResponse {
        id,
        conflicts: conflict.fields,
        versions: conflict.versions,
        deleted: conflict.removed.map(|r| DeletedWhileEdited {
            deleted_on: name(&r.deleted_by),
            edited_on: r.edited_by.iter().map(name).collect(),
            at: r.at,
        }),
    }
}

/// Keeps one whole version of a record (0: the one shown), which ends its conflict
/// between versions and its delete notice.
pub async fn keep_version(
    vault: &Arc<Vault>,
    collection: &CollectionName,
    id: &RecordId,
    version: usize,
) -> Result<(), Error> {
    let (collection, id) = (collection.clone(), id.clone());
    blocking(vault, move |v| {
        if v.collections.keep_version(&collection, &id, version)? {
            return Ok(());
        }
        Err(match v.collections.get(&collection, &id)? {
            None => record_not_found(&collection, &id),
            Some(_) => Error::new(
                ErrorCode::NotFound,
                format!("{collection}/{id} has no version {version} (see its conflicts)"),
            ),
        })
    })
    .await?;
    vault.store.commit().await?;
    Ok(())
}

/// Writes a person's merge of a record's versions as its only version, with a
/// contact's or event's text in step, and ends its delete notice, in one write;
/// durable when it returns.
pub async fn resolve_with(
    vault: &Arc<Vault>,
    collection: &CollectionName,
    id: &RecordId,
    mut record: Map<String, Value>,
) -> Result<(), Error> {
    record.remove("id");
    pim::owner_merge_versions(&vault.collections, collection, id, record)
        .await
        .map_err(|e| write_error(collection, id, e))?;
    vault.store.commit().await?;
    Ok(())
}

/// Writes the value a person chose for a field in conflict, which ends the conflict
/// (also when it is the value that wins already). A contact's or event's text follows.
pub async fn resolve(
    vault: &Arc<Vault>,
    collection: &CollectionName,
    id: &RecordId,
    field: &str,
    value: Value,
) -> Result<(), Error> {
    if field.is_empty() || field == "id" {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "field must name a field of the record (not \"id\")",
        ));
    }
    // A choice among what is there: a field no version of the record has is refused
    // (resolving a typo would add it silently).
    let (c, i, f) = (collection.clone(), id.clone(), field.to_owned());
    let known = blocking(vault, move |v| {
        let Some(Value::Object(record)) = v.collections.get(&c, &i)? else {
            return Ok(None);
        };
        let conflict = v.collections.conflicts(&c, &i)?;
        Ok(Some(
            record.contains_key(&f)
                || conflict.as_ref().is_some_and(|x| {
                    x.fields.contains_key(&f) || x.versions.iter().any(|v| v.contains_key(&f))
                }),
        ))
    })
    .await?;
    match known {
        None => return Err(record_not_found(collection, id)),
        Some(false) => {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "{collection}/{id} has no field {field:?}: `hearth conflicts {collection} {id}` shows what is in conflict (to add a field, use `hearth patch`)"
                ),
            ));
        }
        Some(true) => {}
    }
    let mut patch = Map::new();
    patch.insert(field.to_owned(), value.clone());
    // The owner's write keeps a contact's or event's text in step; like every ordinary
    // write it leaves an equal value alone, so the choice is then written as such.
    owner_write(vault, collection, id, pim::Change::Merge(patch)).await?;
    let (c, i, f) = (collection.clone(), id.clone(), field.to_owned());
    if !blocking(vault, move |v| {
        Ok(v.collections.choose(&c, &i, &f, &value)?)
    })
    .await?
    {
        return Err(record_not_found(collection, id));
    }
    vault.store.commit().await?;
    Ok(())
}

/// A file's bytes as they arrived: what its record will say of them, the listing of
/// its blob, and the pin that keeps the bytes until the record naming them is durable.
pub struct Received {
    pub content: crate::files::Content,
    pub listing: Vec<(hearth_protocol::BlobId, u64, crate::blobs::Described)>,
    pub pinned: crate::blobs::Pinned,
}

/// Streams a file named `name` into the blob store and reads what its bytes say
/// (`crate::filemeta`): its content (type as given, else guessed from the name) and
/// listing, for the record a caller writes next (the owner's `store_file`, the file
/// share through the door).
pub async fn receive_file<S, E>(
    vault: &Arc<Vault>,
    name: &str,
    body: S,
    content_type: Option<&str>,
    modified: Option<i64>,
) -> Result<Received, Error>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let described = crate::blobs::Described::new(Some(name), content_type)
        .map_err(|e| Error::new(ErrorCode::BadRequest, e))?;
    let stored = vault.blobs.put(body, vault.limits.max_blob_bytes).await?;
    let content_type = crate::files::content_type(name, described.content_type.as_deref());
    let meta = crate::filemeta::read(vault, stored.id, stored.size, content_type.as_deref()).await;
    Ok(Received {
        content: crate::files::Content {
            blob: stored.id,
            size: stored.size,
            content_type,
            modified,
            meta,
        },
        listing: vec![(stored.id, stored.size, described)],
        pinned: stored.pinned,
    })
}

/// Stores a file at `path` from `body` (streamed into the blob store), with its type
/// (`content_type`, else guessed from its name), its own time if given, and what its
/// bytes say (`crate::filemeta`); with `parents`, the folders it needs are made. The
/// owner API's `PUT /v1/files/{path}` and the dashboard's upload. Returns the entry
/// and whether it is new.
pub async fn store_file<S, E>(
    vault: &Arc<Vault>,
    path: crate::files::FilePath,
    body: S,
    content_type: Option<&str>,
    modified: Option<i64>,
    parents: bool,
) -> Result<(crate::files::Entry, bool), Error>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use crate::files;
    let Received {
        content,
        listing,
        pinned,
    } = receive_file(vault, path.name(), body, content_type, modified).await?;
    let at = path.clone();
    let created = blocking(vault, move |v| {
        Ok(files::put_file(
            &v.collections,
            &at,
            &content,
            parents,
            &listing,
        )?)
    })
    .await?;
    vault.store.commit().await?;
    // The bytes stay pinned until the record naming them is durable.
    drop(pinned);
    let entry = blocking(vault, move |v| Ok(files::stat(&v.collections, &path)?))
        .await?
        .ok_or_else(|| Error::new(ErrorCode::Internal, "a file just stored is not there"))?;
    Ok((entry, created))
}

/// Makes the folder `path` (and, with `parents`, those it needs); its entry.
pub async fn make_folder(
    vault: &Arc<Vault>,
    path: crate::files::FilePath,
    parents: bool,
) -> Result<crate::files::Entry, Error> {
    let at = path.clone();
    blocking(vault, move |v| {
        Ok(crate::files::make_folder(&v.collections, &at, parents)?)
    })
    .await?;
    vault.store.commit().await?;
    blocking(vault, move |v| {
        Ok(crate::files::stat(&v.collections, &path)?)
    })
    .await?
    .ok_or_else(|| Error::new(ErrorCode::Internal, "a folder just made is not there"))
}

/// Removes the file or folder `path` (a folder with all it holds).
pub async fn remove_file(
    vault: &Arc<Vault>,
    path: crate::files::FilePath,
) -> Result<crate::files::Removed, Error> {
    let removed = blocking(vault, move |v| {
        Ok(crate::files::remove(&v.collections, &path)?)
    })
    .await?;
    vault.store.commit().await?;
    Ok(removed)
}

/// Runs whole-collection store work on the blocking pool.
pub async fn blocking<R, F>(vault: &Arc<Vault>, f: F) -> Result<R, Error>
where
    R: Send + 'static,
    F: FnOnce(&Vault) -> Result<R, Error> + Send + 'static,
{
    let vault = vault.clone();
    tokio::task::spawn_blocking(move || f(&vault))
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("store task failed: {e}")))?
}

/// Why an import wrote nothing, as an API error (the dashboard shows the same).
pub fn import_error(e: pim::ImportError) -> Error {
    match e {
        pim::ImportError::Read(e) => Error::new(ErrorCode::BadRequest, e.to_string()),
        pim::ImportError::Collection(e) => e.into(),
        pim::ImportError::Store(e) => e.into(),
        pim::ImportError::Blob(e) => e.into(),
        pim::ImportError::Internal(e) => Error::new(ErrorCode::Internal, e),
    }
}

/// The scope a grant request asks for (the preview shows it, `grant_new` makes it).
pub fn grant_scope(request: &GrantRequest) -> Result<hearth_protocol::scope::Scope, Error> {
    let scope = hearth_protocol::scope::Scope::parse_grant(
        request.read.as_deref(),
        request.write.as_deref(),
        request.free_busy.as_deref(),
        &request.filters,
    )
    .map_err(|e| Error::new(ErrorCode::BadRequest, e.to_string()))?;
    for (key, c) in &scope.collections {
        let base = key.trim_end_matches(hearth_protocol::scope::FAMILY);
        if c.free_busy && pim::Kind::of(base) != Some(pim::Kind::Calendar) {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "free/busy is about calendars: {key} is not calendar, calendar-… or calendar*"
                ),
            ));
        }
    }
    Ok(scope)
}

/// Creates a grant and issues its token (and app password, if asked for).
pub async fn grant_new(vault: &Arc<Vault>, request: GrantRequest) -> Result<GrantCreated, Error> {
    let scope = grant_scope(&request)?;
    let expires = match request.expires.as_deref() {
        Some(text) => access::parse_duration(text)?,
        None if request.app_password => Some(access::APP_PASSWORD_EXPIRY),
        None => Some(access::DEFAULT_EXPIRY),
    };
    refuse_command_words(&request.service)?;
    let rate = request
        .rate
        .as_deref()
        .map(access::parse_rate)
        .transpose()?;
    if let Some(to) = &request.to {
        to.parse::<libp2p::PeerId>().map_err(|_| {
            Error::new(
                ErrorCode::BadRequest,
                format!("--to {to:?} is not a PeerId"),
            )
        })?;
    }
    let checked = scope.clone();
    let warnings = blocking(vault, move |v| Ok(scope_warnings(&v.collections, &checked)))
        .await
        .unwrap_or_default();
    let (grant, issued) = blocking(vault, move |v| {
        Ok(access::create_grant(
            &v.collections,
            &v.keys,
            access::NewGrant {
                service: request.service,
                scope,
                purpose: request.purpose.unwrap_or_default(),
                expires,
                to: request.to,
                rate_per_minute: rate,
                app_password: request.app_password,
            },
        )?)
    })
    .await?;
    vault.store.commit().await?;
    let phone = issued
        .password
        .as_ref()
        .map(|p| crate::phone::setup(vault.lan.as_ref(), &grant.service, p));
    Ok(GrantCreated {
        id: grant.id,
        token: issued.token,
        expires_at: grant.expires_at,
        password: issued.password.map(|p| p.to_string()),
        warnings,
        phone,
    })
}

/// What in a scope names nothing there is: a collection no device has written, a
/// field or filter field no record has (with a near name when there is one).
pub fn scope_warnings(
    collections: &crate::collections::Collections,
    scope: &hearth_protocol::scope::Scope,
) -> Vec<String> {
    use hearth_protocol::scope::Fields;
    let mut warnings = Vec::new();
    let names: Vec<String> = collections
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    for (name, c) in &scope.collections {
        // A family names collections to come as much as those there are.
        if name.ends_with(hearth_protocol::scope::FAMILY) {
            continue;
        }
        if !names.contains(name) {
            warnings.push(format!(
                "no collection is called {name:?} yet{}",
                did_you_mean(name, names.iter().map(String::as_str))
            ));
            continue;
        }
        let Ok(parsed) = CollectionName::parse(name) else {
            continue;
        };
        let records = collections.records(&parsed).unwrap_or_default();
        let fields: std::collections::BTreeSet<&str> = records
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|r| r.keys().map(String::as_str))
            .filter(|k| *k != "id")
            .collect();
        let mut named: Vec<&str> = Vec::new();
        for f in [&c.read, &c.write].into_iter().flatten() {
            if let Fields::Only(paths) = f {
                named.extend(
                    paths
                        .iter()
                        .filter_map(|p| p.parts().first().map(String::as_str)),
                );
            }
        }
        named.extend(
            c.filter
                .iter()
                .filter_map(|f| f.field.parts().first().map(String::as_str)),
        );
        named.sort_unstable();
        named.dedup();
        for field in named {
            if !records.is_empty() && !fields.contains(field) {
                warnings.push(format!(
                    "no record of {name} has a field {field:?}{}",
                    did_you_mean(field, fields.iter().copied())
                ));
            }
        }
    }
    warnings
}

/// `" (did you mean contacts?)"` for the nearest of `known` within two edits, else "".
pub fn did_you_mean<'a>(given: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(given, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map_or(String::new(), |(_, k)| format!(" (did you mean {k}?)"))
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub fn grant_info(grant: access::Grant, last_used: Option<u64>) -> GrantInfo {
    GrantInfo {
        status: grant.status(crate::clock::now_unix()),
        token_expires_at: grant.token_dated(),
        id: grant.id,
        service: grant.service,
        scope: grant.scope,
        purpose: grant.purpose,
        issued_at: grant.issued_at,
        expires_at: grant.expires_at,
        to: grant.to,
        revoked_at: grant.revoked_at,
        rate_per_minute: grant.rate_per_minute,
        app_password: grant.password_hash.is_some(),
        last_used,
    }
}

/// A service called like a command (`hearth grant renew …`) is almost always a
/// command that does not exist: refused, with the one meant.
fn refuse_command_words(service: &str) -> Result<(), Error> {
    let hint = match service.trim() {
        "renew" | "extend" => {
            "to give a grant more time, use `hearth extend GRANT_ID --expires 1y`"
        }
        "revoke" | "rm" | "remove" | "delete" => "to end a grant, use `hearth revoke GRANT_ID`",
        "list" | "ls" | "show" => "to list grants, use `hearth grants`",
        _ => return Ok(()),
    };
    Err(Error::new(
        ErrorCode::BadRequest,
        format!("{service:?} is a command word, not a service name: {hint}"),
    ))
}

/// Extends a grant (same token, same app password), audited.
pub async fn grant_extend(
    vault: &Arc<Vault>,
    id: String,
    request: hearth_protocol::api::ExtendRequest,
) -> Result<GrantInfo, Error> {
    let expires = access::parse_duration(&request.expires)?;
    let door = vault.door.clone();
    let info = blocking(vault, move |v| {
        let grant = access::extend(&v.collections, &id, expires)?;
        let reason = grant
            .expires_at
            .map_or("never".to_owned(), |at| format!("expires_at={at}"));
        door.audit_owner(access::AuditEvent {
            reason: Some(reason),
            ..grant.event(access::Operation::Extend, "")
        })?;
        let last_used = access::seen_by(&v.collections, &grant.id)?.last_access;
        Ok(grant_info(grant, last_used))
    })
    .await?;
    vault.store.commit().await?;
    Ok(info)
}

/// Every grant, with when it was last used.
pub async fn grants(vault: &Arc<Vault>) -> Result<Vec<GrantInfo>, Error> {
    blocking(vault, |v| {
        let grants = access::list_grants(&v.collections)?;
        // One pass over the log, not one per grant.
        let mut last_used: std::collections::HashMap<String, u64> =
            std::collections::HashMap::new();
        for entry in access::audit_entries(&v.collections, None)? {
            let slot = last_used.entry(entry.grant).or_default();
            *slot = (*slot).max(entry.at);
        }
        Ok(grants
            .into_iter()
            .map(|g| {
                let used = last_used.get(&g.id).copied();
                grant_info(g, used)
            })
            .collect())
    })
    .await
}

/// Revokes a grant; what its service already saw and did.
pub async fn grant_revoke(vault: &Arc<Vault>, id: String) -> Result<RevokeResponse, Error> {
    let answer = blocking(vault, move |v| {
        let grant = access::revoke(&v.collections, &id)?;
        let seen = access::seen_by(&v.collections, &id)?;
        let last_used = seen.last_access;
        Ok(RevokeResponse {
            grant: grant_info(grant, last_used),
            seen,
        })
    })
    .await?;
    vault.store.commit().await?;
    Ok(answer)
}

/// The audit log, or one grant's part of it.
pub async fn audit(vault: &Arc<Vault>, grant: Option<String>) -> Result<Vec<AuditEntry>, Error> {
    blocking(vault, move |v| {
        Ok(access::audit_entries(&v.collections, grant.as_deref())?)
    })
    .await
}

/// Checks the audit log's hash chains.
pub async fn audit_verify(vault: &Arc<Vault>) -> Result<VerifyResponse, Error> {
    blocking(vault, |v| {
        Ok(match access::verify_audit(&v.collections) {
            Ok(entries) => VerifyResponse {
                ok: true,
                entries: Some(entries as u64),
                entry: None,
                reason: None,
            },
            Err((entry, reason)) => VerifyResponse {
                ok: false,
                entries: None,
                entry: Some(entry),
                reason: Some(reason),
            },
        })
    })
    .await
}
pub fn record_not_found(collection: &CollectionName, id: &RecordId) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("no record {id} in collection {collection}"),
    )
}
