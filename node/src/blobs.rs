//! Blobs: large or binary content, chunked, each chunk sealed in its own file.
//!
//! In: a stream of bytes. Out: a [`BlobId`] (keyed BLAKE3 of the content, so equal
//! content has one id in a vault and an outsider learns nothing from it), and later a
//! stream of verified chunks. Chunks live in `HOME/blobs/xx/yyyy…`, named by the keyed
//! hash of their plaintext (equal chunks are stored once), sealed with binding
//! `("blob-chunk", hash)`; manifests (`hearth_protocol::blob`) live sealed in tree
//! `blobs` under the blob id. Neither direction holds more than one chunk in memory.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use data_encoding::HEXLOWER;
use futures::{Stream, StreamExt};
use hearth_protocol::api::BlobInfo;
use hearth_protocol::blob::{CHUNK_SIZE, Manifest};
use hearth_protocol::seal::{Binding, NONCE_LEN};
use hearth_protocol::{BlobId, CollectionName, RecordId};
use rand::RngCore;

use crate::collections::{CollectionError, Collections};
use crate::home::sync_dir;
use crate::keys::VaultKeys;
use crate::store::{SealedTree, Store, StoreError};

const CHUNK_DOMAIN: &[u8] = b"blob-chunk";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("no blob with id {0}")]
    NotFound(BlobId),
    #[error("blob is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("reading the uploaded content failed: {0}")]
    Body(String),
    #[error("blob {blob} is corrupt: {what}")]
    Corrupt { blob: BlobId, what: String },
    #[error("blob storage error at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("an internal task failed: {0}")]
    Internal(String),
}

/// The system collection listing the vault's blobs (`{"size"}` under each blob id). It
/// syncs like any collection, so every device learns of every blob and fetches what
/// it lacks (`mesh::blobsync`).
pub const BLOB_LIST: &str = "_blobs";

pub fn blob_list() -> CollectionName {
    CollectionName::parse(BLOB_LIST).expect("_blobs is a valid system collection name")
}

/// A blob's entry in [`BLOB_LIST`]: its size, the name and content type it was
/// uploaded with, when, and whether it was removed (a removed blob stays listed, so
/// that every device drops its copy and none fetches it again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl Listing {
    /// The blob as the API shows it; `here`: whole on this device.
    pub fn info(self, id: BlobId, here: bool) -> BlobInfo {
        BlobInfo {
            id: id.to_string(),
            size: self.size,
            name: self.name,
            content_type: self.content_type,
            added: self.added,
            here,
        }
    }
}

/// What a person says of a blob when uploading it: a name and a content type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Described {
    pub name: Option<String>,
    pub content_type: Option<String>,
}

impl Described {
    /// Checks a name (a file name, no directories: at most 255 bytes, no control
    /// characters, not `.` or `..`) and a content type (`type/subtype`; parameters
    /// are dropped).
    pub fn new(name: Option<&str>, content_type: Option<&str>) -> Result<Self, String> {
        let name = match name.map(str::trim) {
            None | Some("") => None,
            Some(name) => {
                if name.len() > 255 {
                    return Err("a blob name has at most 255 bytes".into());
                }
                if name
                    .chars()
                    .any(|c| c.is_control() || c == '/' || c == '\\')
                {
                    return Err(format!(
                        "blob name {name:?}: a file name has no '/', '\\' or control characters"
                    ));
                }
                if name == "." || name == ".." {
                    return Err(format!("{name:?} is not a file name"));
                }
                Some(name.to_owned())
            }
        };
        let content_type = match content_type {
            None => None,
            Some(text) => {
                let essence = text.split(';').next().unwrap_or_default().trim();
                let token = |part: &str| {
                    !part.is_empty()
                        && part.len() <= 127
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                match essence.split_once('/') {
                    Some((kind, sub)) if token(kind) && token(sub) => {
                        Some(essence.to_ascii_lowercase())
                    }
                    _ if essence.is_empty() => None,
                    _ => return Err(format!("{text:?} is not a content type (type/subtype)")),
                }
            }
        };
        Ok(Self { name, content_type })
    }
}

fn listing_id(id: &BlobId) -> RecordId {
    RecordId::parse(&id.to_string()).expect("a blob id in hex is a valid record id")
}

/// A blob's listing, if it is listed (removed or not).
pub fn listing(collections: &Collections, id: &BlobId) -> Result<Option<Listing>, CollectionError> {
    Ok(collections
        .get(&blob_list(), &listing_id(id))?
        .and_then(|record| serde_json::from_value(record).ok()))
}

/// Lists a blob in `_blobs` so the other devices fetch it, with the name and type it
/// was uploaded with (an upload of the same content again renames it, and brings a
/// removed blob back). Returns whether anything changed (then the store must commit).
pub fn announce(
    collections: &Collections,
    id: &BlobId,
    size: u64,
    described: &Described,
) -> Result<bool, CollectionError> {
    let before = listing(collections, id)?;
    let mut listing = before.clone().unwrap_or(Listing {
        size,
        name: None,
        content_type: None,
        added: None,
        removed: false,
    });
    if listing.removed || listing.added.is_none() {
        listing.added = Some(crate::access::now_unix());
    }
    listing.removed = false;
    listing.size = size;
    if described.name.is_some() {
        listing.name.clone_from(&described.name);
    }
    if described.content_type.is_some() {
        listing.content_type.clone_from(&described.content_type);
    }
    if before.as_ref() == Some(&listing) {
        return Ok(false);
    }
    put_listing(collections, id, &listing)?;
    Ok(true)
}

fn put_listing(
    collections: &Collections,
    id: &BlobId,
    listing: &Listing,
) -> Result<(), CollectionError> {
    let serde_json::Value::Object(record) =
        serde_json::to_value(listing).expect("a listing serializes")
    else {
        unreachable!("a struct serializes to an object")
    };
    collections.put(&blob_list(), &listing_id(id), &record)?;
    Ok(())
}

/// Marks a blob removed on every device; `false` if it is not listed (or already
/// removed). Then the store must commit, and [`Blobs::collect_garbage`] frees its
/// chunks here (the other devices do it when the listing reaches them).
pub fn unlist(collections: &Collections, id: &BlobId) -> Result<bool, CollectionError> {
    match listing(collections, id)? {
        Some(mut listing) if !listing.removed => {
            listing.removed = true;
            put_listing(collections, id, &listing)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Every listed blob (removed ones included), by id.
pub fn listings(
    collections: &impl crate::collections::RecordSource,
) -> Result<Vec<(BlobId, Listing)>, CollectionError> {
    Ok(collections
        .collection_records(&blob_list())?
        .into_iter()
        .filter_map(|record| {
            let id = BlobId::parse(record.get("id")?.as_str()?).ok()?;
            let listing = serde_json::from_value(record).ok()?;
            Some((id, listing))
        })
        .collect())
}

/// The ids of every blob listed in `_blobs` and not removed: what every device keeps.
pub fn listed(collections: &Collections) -> Result<Vec<BlobId>, CollectionError> {
    Ok(listings(collections)?
        .into_iter()
        .filter(|(_, listing)| !listing.removed)
        .map(|(id, _)| id)
        .collect())
}

impl BlobError {
    /// The API error code this failure is answered with.
    pub fn code(&self) -> hearth_protocol::api::ErrorCode {
        use hearth_protocol::api::ErrorCode;
        match self {
            BlobError::Store(e) => e.code(),
            BlobError::NotFound(_) => ErrorCode::NotFound,
            BlobError::TooLarge { .. } => ErrorCode::TooLarge,
            BlobError::Body(_) => ErrorCode::BadRequest,
            BlobError::Corrupt { .. } => ErrorCode::Corrupt,
            BlobError::Io { source, .. } if crate::store::is_disk_full(source) => {
                ErrorCode::InsufficientStorage
            }
            BlobError::Io { .. } => ErrorCode::Storage,
            BlobError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Chunk hashes and blob ids in use by uploads and fetches that have not finished:
/// garbage collection keeps them even though no manifest names them yet.
type Pins = Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], usize>>>;

fn lock_pins(pins: &Pins) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], usize>> {
    // Plain counters: a panic elsewhere cannot leave them inconsistent.
    pins.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps chunks (and a blob's manifest) from garbage collection until dropped.
#[derive(Debug)]
pub struct Pinned {
    pins: Pins,
    held: Vec<[u8; 32]>,
}

impl Pinned {
    fn add(&mut self, key: [u8; 32]) {
        *lock_pins(&self.pins).entry(key).or_default() += 1;
        self.held.push(key);
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut pins = lock_pins(&self.pins);
        for key in self.held.drain(..) {
            if let Some(count) = pins.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(&key);
                }
            }
        }
    }
}

/// A stored upload: its id and size, and the pin that keeps it from garbage
/// collection until it is listed.
#[derive(Debug)]
pub struct Stored {
    pub id: BlobId,
    pub size: u64,
    pub pinned: Pinned,
}

/// What a garbage collection freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Removed blobs whose copy here was dropped.
    pub blobs: usize,
    /// Chunk files deleted.
    pub chunks: usize,
    /// Their size on disk.
    pub bytes: u64,
}

pub struct Blobs {
    pins: Pins,
    /// One garbage collection at a time (`Vault::collect_blob_garbage`).
    pub(crate) collecting: tokio::sync::Mutex<()>,
    /// Blobs being fetched from another device: bytes here so far, of how many.
    fetching: std::sync::Mutex<std::collections::HashMap<BlobId, (u64, u64)>>,
    dir: PathBuf,
    manifests: SealedTree,
    keys: Arc<VaultKeys>,
    store: Arc<Store>,
}

impl Blobs {
    pub fn open(dir: PathBuf, store: Arc<Store>, keys: Arc<VaultKeys>) -> Result<Self, BlobError> {
        crate::home::create_private_dir(&dir).map_err(|source| io_error(&dir, source))?;
        Ok(Self {
            pins: Default::default(),
            collecting: tokio::sync::Mutex::new(()),
            fetching: Default::default(),
            manifests: store.tree("blobs")?,
            dir,
            keys,
            store,
        })
    }

    /// Stores the content of `body` (at most `max` bytes) and returns its id once it
    /// is durable, pinned until the caller has listed it ([`announce`]).
    pub async fn put<S, E>(&self, mut body: S, max: u64) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut id_hasher = blake3::Hasher::new_keyed(&self.keys.derived.blob_ids);
        let mut buffer = BytesMut::with_capacity(CHUNK_SIZE);
        let mut chunks = Vec::new();
        let mut dirs = HashSet::new();
        let mut pinned = self.pinned();
        let mut size = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| BlobError::Body(e.to_string()))?;
            size += piece.len() as u64;
            if size > max {
                return Err(BlobError::TooLarge { max });
            }
            id_hasher.update(&piece);
            buffer.extend_from_slice(&piece);
            while buffer.len() >= CHUNK_SIZE {
                let chunk = buffer.split_to(CHUNK_SIZE).freeze();
                chunks.push(self.write_chunk(chunk, &mut dirs, &mut pinned).await?);
            }
        }
        if !buffer.is_empty() {
            chunks.push(
                self.write_chunk(buffer.freeze(), &mut dirs, &mut pinned)
                    .await?,
            );
        }
        let id = BlobId(*id_hasher.finalize().as_bytes());
        pinned.add(id.0);

        sync_dirs(dirs).await?;

        if !self.manifests.contains_key(&id.0)? {
            let manifest = Manifest {
                size,
                chunk_size: CHUNK_SIZE as u32,
                chunks,
            };
            self.manifests.insert(&id.0, &manifest.encode())?;
        }
        self.store.commit().await?;
        tracing::debug!(size, "stored a blob");
        Ok(Stored { id, size, pinned })
    }

    /// A new, empty pin.
    pub fn pinned(&self) -> Pinned {
        Pinned {
            pins: self.pins.clone(),
            held: Vec::new(),
        }
    }

    /// Pins the chunks of a blob being fetched, before any of them is written.
    pub fn pin_fetch(&self, id: BlobId, manifest: &Manifest) -> Pinned {
        let mut pinned = self.pinned();
        pinned.add(id.0);
        for hash in &manifest.chunks {
            pinned.add(*hash);
        }
        pinned
    }

    /// Opens a blob for reading; chunks are verified as they are read.
    pub fn open_blob(&self, id: BlobId) -> Result<BlobReader, BlobError> {
        let manifest = self.manifest(id)?.ok_or(BlobError::NotFound(id))?;
        Ok(BlobReader {
            id,
            manifest,
            next: 0,
            dir: self.dir.clone(),
            keys: self.keys.clone(),
            verify_len: true,
        })
    }

    /// The vault's blobs (not the removed ones), with name, type and whether the
    /// whole blob is on this device.
    pub fn list(
        &self,
        collections: &impl crate::collections::RecordSource,
    ) -> Result<Vec<BlobInfo>, BlobError> {
        let mut out = Vec::new();
        for (id, listing) in
            listings(collections).map_err(|e| BlobError::Internal(e.to_string()))?
        {
            if !listing.removed {
                let here = self.has_blob(id)?;
                out.push(listing.info(id, here));
            }
        }
        Ok(out)
    }

    fn fetching(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<BlobId, (u64, u64)>> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.fetching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `received` of a blob's `size` bytes are here (a fetch in progress).
    pub fn note_fetching(&self, id: BlobId, received: u64, size: u64) {
        self.fetching().insert(id, (received.min(size), size));
    }

    /// Adds `bytes` to a fetch in progress.
    pub fn note_received(&self, id: BlobId, bytes: u64) {
        if let Some((received, size)) = self.fetching().get_mut(&id) {
            *received = (*received + bytes).min(*size);
        }
    }

    /// The fetch of `id` ended (whole, or broken off: then it starts again later).
    pub fn fetch_ended(&self, id: BlobId) {
        self.fetching().remove(&id);
    }

    /// Blobs listed in `_blobs` (by any device) that are not here whole, with how much
    /// of each has arrived.
    pub fn arriving(
        &self,
        collections: &Collections,
    ) -> Result<Vec<hearth_protocol::api::ArrivingBlob>, BlobError> {
        let mut out = Vec::new();
        for (id, listing) in
            listings(collections).map_err(|e| BlobError::Internal(e.to_string()))?
        {
            if !listing.removed && !self.has_blob(id)? {
                out.push(self.arrival(id, &listing));
            }
        }
        Ok(out)
    }

    /// Blob `id` if another device listed it and it is not here whole yet.
    pub fn arriving_one(
        &self,
        collections: &Collections,
        id: BlobId,
    ) -> Result<Option<hearth_protocol::api::ArrivingBlob>, BlobError> {
        if self.has_blob(id)? {
            return Ok(None);
        }
        let listing = listing(collections, &id).map_err(|e| BlobError::Internal(e.to_string()))?;
        Ok(listing.filter(|l| !l.removed).map(|l| self.arrival(id, &l)))
    }

    /// A listed blob's size and how much of it is here.
    fn arrival(&self, id: BlobId, listing: &Listing) -> hearth_protocol::api::ArrivingBlob {
        let (received, size) = self
            .fetching()
            .get(&id)
            .copied()
            .unwrap_or((0, listing.size));
        hearth_protocol::api::ArrivingBlob {
            id: id.to_string(),
            size,
            received,
        }
    }

    /// The ids of every blob whole on this device.
    pub fn stored(&self) -> Result<Vec<BlobId>, BlobError> {
        self.manifests
            .keys_with_prefix(&[])
            .map(|key| {
                let key = key?;
                Ok(BlobId(key.as_slice().try_into().map_err(|_| {
                    StoreError::Malformed("a blob key is malformed".into())
                })?))
            })
            .collect()
    }

    pub fn has_blob(&self, id: BlobId) -> Result<bool, BlobError> {
        Ok(self.manifests.contains_key(&id.0)?)
    }

    /// The encoded manifest of a blob, to hand to another device of the vault.
    pub fn manifest_bytes(&self, id: BlobId) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(self.manifest(id)?.map(|m| m.encode()))
    }

    pub fn has_chunk(&self, hash: &[u8; 32]) -> bool {
        chunk_path(&self.dir, hash).exists()
    }

    /// A chunk's plaintext, verified, or `None` if this device does not have it.
    pub async fn read_chunk(&self, hash: [u8; 32]) -> Result<Option<Bytes>, BlobError> {
        if !self.has_chunk(&hash) {
            return Ok(None);
        }
        // A one-chunk manifest reuses the reader's verification.
        let manifest = Manifest {
            size: u64::MAX,
            chunk_size: u32::MAX,
            chunks: vec![hash],
        };
        let mut reader = BlobReader {
            id: BlobId(hash),
            manifest,
            next: 0,
            dir: self.dir.clone(),
            keys: self.keys.clone(),
            verify_len: false,
        };
        reader.next_chunk().await.transpose()
    }

    /// Stores a chunk received from another device, after checking it against `hash`.
    pub async fn store_chunk(&self, hash: [u8; 32], plaintext: Bytes) -> Result<(), BlobError> {
        let mut dirs = HashSet::new();
        // The fetch pinned its chunks already ([`Blobs::pin_fetch`]).
        let mut pinned = self.pinned();
        let actual = self.write_chunk(plaintext, &mut dirs, &mut pinned).await?;
        if actual != hash {
            // Written under its true name, it harms nothing; the sweep removes it.
            return Err(BlobError::Body(
                "a chunk from a peer does not match its hash".into(),
            ));
        }
        sync_dirs(dirs).await?;
        Ok(())
    }

    /// Records a blob received from another device once all its chunks are here.
    pub async fn store_manifest(&self, id: BlobId, manifest: &Manifest) -> Result<(), BlobError> {
        if let Some(missing) = manifest.chunks.iter().position(|c| !self.has_chunk(c)) {
            return Err(BlobError::Corrupt {
                blob: id,
                what: format!("chunk {missing} is missing"),
            });
        }
        self.manifests.insert(&id.0, &manifest.encode())?;
        self.store.commit().await?;
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.manifests.len()
    }

    /// Removes chunk files no manifest refers to: what an upload interrupted by a crash
    /// or a broken connection left behind. Runs before the API serves, so no upload is
    /// in progress. If any manifest cannot be read, removes nothing.
    pub fn sweep_orphans(&self) -> Result<usize, BlobError> {
        let removed = self.delete_unused_chunks(true)?;
        if removed.chunks > 0 {
            tracing::info!(
                removed = removed.chunks,
                "removed blob chunks left by interrupted uploads"
            );
        }
        Ok(removed.chunks)
    }

    /// Drops this device's manifest of every removed blob (not of one being uploaded
    /// again right now); returns how many. Commit the store before deleting chunks
    /// ([`Blobs::delete_unused_chunks`]), so no manifest naming a deleted chunk can
    /// come back after a crash. Blocking.
    pub fn drop_removed(&self, collections: &Collections) -> Result<usize, BlobError> {
        let removed: Vec<BlobId> = listings(collections)
            .map_err(|e| BlobError::Internal(e.to_string()))?
            .into_iter()
            .filter(|(_, listing)| listing.removed)
            .map(|(id, _)| id)
            .collect();
        let pins = lock_pins(&self.pins);
        let mut dropped = 0;
        for id in removed {
            // Read again under the lock: an upload of the same content may have listed
            // it again (and dropped its pin) since the list above was read.
            let still_removed = listing(collections, &id)
                .map_err(|e| BlobError::Internal(e.to_string()))?
                .is_some_and(|l| l.removed);
            if still_removed && !pins.contains_key(&id.0) && self.manifests.contains_key(&id.0)? {
                self.manifests.remove(&id.0)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// The chunks of blob `id` that no other blob here uses (what removing it frees),
    /// and their size on disk. Blocking.
    pub fn own_chunks(&self, id: BlobId) -> Result<Collected, BlobError> {
        let Some(manifest) = self.manifest(id)? else {
            return Ok(Collected::default());
        };
        let mut own: HashSet<[u8; 32]> = manifest.chunks.into_iter().collect();
        for entry in self.manifests.scan_prefix(&[]) {
            let (key, value) = entry?;
            if key.as_slice() == id.0.as_slice() {
                continue;
            }
            let other = BlobId(key.as_slice().try_into().unwrap_or([0; 32]));
            let manifest = Manifest::decode(&value).map_err(|e| BlobError::Corrupt {
                blob: other,
                what: e.to_string(),
            })?;
            for chunk in &manifest.chunks {
                own.remove(chunk);
            }
        }
        Ok(Collected {
            blobs: 1,
            chunks: own.len(),
            bytes: own
                .iter()
                .map(|hash| fs::metadata(chunk_path(&self.dir, hash)).map_or(0, |m| m.len()))
                .sum(),
        })
    }

    /// Whether a removed blob still has its manifest here (garbage to collect).
    pub fn holds_removed(&self, collections: &Collections) -> Result<bool, BlobError> {
        for (id, listing) in
            listings(collections).map_err(|e| BlobError::Internal(e.to_string()))?
        {
            if listing.removed && self.has_blob(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes chunk files that no manifest names and no pin holds, safe while uploads
    /// and fetches run: their chunks are pinned before they are written (or found
    /// already written), and the pins are read under the lock the deletions hold. With
    /// `leftovers`, also half-written files (`*.tmp*`: only at start, when no write
    /// runs). Blocking.
    pub fn delete_unused_chunks(&self, leftovers: bool) -> Result<Collected, BlobError> {
        let pins = lock_pins(&self.pins);
        let mut live: HashSet<String> = pins.keys().map(|k| HEXLOWER.encode(k)).collect();
        for entry in self.manifests.scan_prefix(&[]) {
            let (key, value) = entry?;
            let id = BlobId(key.as_slice().try_into().unwrap_or([0; 32]));
            let manifest = Manifest::decode(&value).map_err(|e| BlobError::Corrupt {
                blob: id,
                what: e.to_string(),
            })?;
            live.extend(manifest.chunks.iter().map(|c| HEXLOWER.encode(c)));
        }
        let mut collected = Collected::default();
        for shard in read_dir(&self.dir)? {
            if !shard.is_dir() {
                continue;
            }
            let prefix = shard
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for file in read_dir(&shard)? {
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.contains(".tmp") && !leftovers {
                    continue;
                }
                if !live.contains(&format!("{prefix}{name}")) {
                    let len = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                    match fs::remove_file(&file) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(io_error(&file, e));
                        }
                        _ => {}
                    }
                    collected.chunks += 1;
                    collected.bytes += len;
                }
            }
        }
        drop(pins);
        Ok(collected)
    }

    fn manifest(&self, id: BlobId) -> Result<Option<Manifest>, BlobError> {
        match self.manifests.get(&id.0)? {
            Some(bytes) => Manifest::decode(&bytes)
                .map(Some)
                .map_err(|e| BlobError::Corrupt {
                    blob: id,
                    what: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// Seals and writes one chunk, unless an equal chunk is already stored.
    async fn write_chunk(
        &self,
        chunk: Bytes,
        dirs: &mut HashSet<PathBuf>,
        pinned: &mut Pinned,
    ) -> Result<[u8; 32], BlobError> {
        self.store.check_write()?;
        let keys = self.keys.clone();
        let base = self.dir.clone();
        let mut pin = self.pinned();
        let (hash, mut pin, written) = tokio::task::spawn_blocking(move || {
            let hash = *blake3::keyed_hash(&keys.derived.chunk_ids, &chunk).as_bytes();
            // Pinned before looking for it: a collection cannot delete it between the
            // look and the manifest that will name it. The pin travels in the task's
            // result, so a caller that stops waiting drops it with that result.
            pin.add(hash);
            let written = write_sealed(&keys, &base, hash, &chunk);
            (hash, pin, written)
        })
        .await
        .map_err(|e| BlobError::Internal(format!("chunk task failed: {e}")))?;
        pinned.held.append(&mut pin.held);
        dirs.insert(written?);
        Ok(hash)
    }
}

/// Seals a chunk into its file, unless the file is there; returns its directory.
fn write_sealed(
    keys: &VaultKeys,
    base: &Path,
    hash: [u8; 32],
    chunk: &[u8],
) -> Result<PathBuf, BlobError> {
    let path = chunk_path(base, &hash);
    let dir = path
        .parent()
        .expect("chunk paths have a shard directory")
        .to_path_buf();
    if path.exists() {
        // Its directory entry may not be durable yet (an upload that wrote it may have
        // stopped before its directory fsync): sync it with ours, or a crash could
        // lose a chunk a committed manifest names.
        return Ok(dir);
    }
    crate::home::create_private_dir(&dir).map_err(|e| io_error(&dir, e))?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = keys
        .derived
        .seal
        .seal(Binding::new(CHUNK_DOMAIN, &hash), chunk, nonce);
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&sealed)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(&path, e));
    }
    Ok(dir)
}

/// Reads a blob chunk by chunk, verifying each against its name and the manifest.
pub struct BlobReader {
    id: BlobId,
    manifest: Manifest,
    next: usize,
    dir: PathBuf,
    keys: Arc<VaultKeys>,
    /// Off only for a lone chunk read without its manifest.
    verify_len: bool,
}

impl BlobReader {
    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, BlobError>> {
        let index = self.next;
        let hash = *self.manifest.chunks.get(index)?;
        self.next += 1;
        let expected_len = self.verify_len.then(|| self.manifest.chunk_len(index));
        let keys = self.keys.clone();
        let path = chunk_path(&self.dir, &hash);
        let id = self.id;
        let result = tokio::task::spawn_blocking(move || -> Result<Bytes, BlobError> {
            let corrupt = |what: String| BlobError::Corrupt { blob: id, what };
            let sealed = match fs::read(&path) {
                Ok(sealed) => sealed,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(corrupt(format!("chunk {index} is missing")));
                }
                Err(e) => return Err(io_error(&path, e)),
            };
            let plain = keys
                .derived
                .seal
                .open(Binding::new(CHUNK_DOMAIN, &hash), &sealed)
                .map_err(|e| corrupt(format!("chunk {index}: {e}")))?;
            let actual = blake3::keyed_hash(&keys.derived.chunk_ids, &plain);
            if expected_len.is_some_and(|len| plain.len() != len) || actual.as_bytes() != &hash {
                return Err(corrupt(format!("chunk {index} does not match its hash")));
            }
            Ok(Bytes::copy_from_slice(&plain))
        })
        .await
        .unwrap_or_else(|e| Err(BlobError::Internal(format!("read task failed: {e}"))));
        if result.is_err() {
            // Nothing after a bad chunk is served.
            self.next = self.manifest.chunks.len();
        }
        Some(result)
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, BlobError>> + Send {
        futures::stream::unfold(self, |mut reader| async move {
            let chunk = reader.next_chunk().await?;
            Some((chunk, reader))
        })
    }
}

/// Makes new chunk files' directory entries durable (the files are fsynced already).
async fn sync_dirs(dirs: HashSet<PathBuf>) -> Result<(), BlobError> {
    tokio::task::spawn_blocking(move || {
        dirs.iter()
            .try_for_each(|d| sync_dir(d).map_err(|e| io_error(d, e)))
    })
    .await
    .map_err(|e| BlobError::Internal(format!("sync task failed: {e}")))?
}

fn chunk_path(base: &Path, hash: &[u8; 32]) -> PathBuf {
    let hex = HEXLOWER.encode(hash);
    base.join(&hex[..2]).join(&hex[2..])
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, BlobError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, source: io::Error) -> BlobError {
    BlobError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestVault;

    fn body(
        data: &[u8],
        piece: usize,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let pieces: Vec<_> = data
            .chunks(piece.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(pieces)
    }

    fn blobs(vault: &TestVault) -> Blobs {
        Blobs::open(
            vault.home().blobs_dir(),
            vault.store.clone(),
            vault.keys.clone(),
        )
        .unwrap()
    }

    async fn read_all(blobs: &Blobs, id: &BlobId) -> Result<Vec<u8>, BlobError> {
        let mut reader = blobs.open_blob(*id)?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// A blob another device listed is "arriving" until it is here whole, with the
    /// progress of its fetch; a blob that is here is not.
    #[tokio::test]
    async fn blobs_listed_elsewhere_arrive_with_their_progress() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let collections = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let here = blobs
            .put(body(&pattern(5000, 1), 1000), u64::MAX)
            .await
            .unwrap();
        let here_id = here.id;
        announce(&collections, &here_id, here.size, &Described::default()).unwrap();
        let away = BlobId([7; 32]);
        announce(&collections, &away, 3 << 20, &Described::default()).unwrap();
        let arriving = blobs.arriving(&collections).unwrap();
        assert_eq!(arriving.len(), 1, "{arriving:?}");
        assert_eq!(arriving[0].id, away.to_string());
        assert_eq!((arriving[0].received, arriving[0].size), (0, 3 << 20));
        blobs.note_fetching(away, 1 << 20, 3 << 20);
        blobs.note_received(away, 1 << 20);
        let arriving = blobs.arriving(&collections).unwrap();
        assert_eq!(arriving[0].received, 2 << 20);
        blobs.note_received(away, 5 << 20);
        assert_eq!(
            blobs.arriving(&collections).unwrap()[0].received,
            3 << 20,
            "never past the size"
        );
        blobs.fetch_ended(away);
        assert_eq!(blobs.arriving(&collections).unwrap()[0].received, 0);
        // One blob, asked for by id.
        assert_eq!(
            blobs
                .arriving_one(&collections, away)
                .unwrap()
                .map(|a| a.size),
            Some(3 << 20)
        );
        assert!(blobs.arriving_one(&collections, here_id).unwrap().is_none());
        assert!(
            blobs
                .arriving_one(&collections, BlobId([9; 32]))
                .unwrap()
                .is_none()
        );
    }

    fn chunk_files(dir: &Path) -> Vec<PathBuf> {
        read_dir(dir)
            .unwrap()
            .into_iter()
            .filter(|d| d.is_dir())
            .flat_map(|d| read_dir(&d).unwrap())
            .collect()
    }

    /// Bytes that never repeat a chunk (xorshift).
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn round_trip_dedup_and_empty() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let data = pattern(CHUNK_SIZE * 3 + 12345, 1);
        let info = blobs.put(body(&data, 70_000), u64::MAX).await.unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(read_all(&blobs, &info.id).await.unwrap(), data);
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 4);

        // Same content in different pieces: same id, nothing new on disk.
        let again = blobs.put(body(&data, 1 << 20), u64::MAX).await.unwrap();
        assert_eq!((again.id, again.size), (info.id, info.size));
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 4);
        assert_eq!(blobs.count(), 1);

        let empty = blobs.put(body(&[], 1), u64::MAX).await.unwrap();
        assert_eq!(empty.size, 0);
        assert!(read_all(&blobs, &empty.id).await.unwrap().is_empty());
        assert_ne!(empty.id, info.id);
    }

    #[tokio::test]
    async fn ids_depend_on_the_vault_key() {
        let (a, b) = (TestVault::new(), TestVault::new());
        let data = b"same content in two vaults";
        let ia = blobs(&a).put(body(data, 5), u64::MAX).await.unwrap();
        let ib = blobs(&b).put(body(data, 5), u64::MAX).await.unwrap();
        assert_ne!(ia.id, ib.id);
        assert_ne!(ia.id.to_string(), blake3::hash(data).to_hex().to_string());
    }

    #[tokio::test]
    async fn tampered_missing_and_oversized() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let data = pattern(CHUNK_SIZE + 10, 2);
        let info = blobs.put(body(&data, 4096), u64::MAX).await.unwrap();
        let files = chunk_files(&vault.home().blobs_dir());
        let mut sealed = fs::read(&files[0]).unwrap();
        let middle = sealed.len() / 2;
        sealed[middle] ^= 0x80;
        fs::write(&files[0], &sealed).unwrap();
        let err = read_all(&blobs, &info.id).await.unwrap_err();
        assert!(matches!(err, BlobError::Corrupt { .. }), "{err}");
        fs::remove_file(&files[0]).unwrap();
        let err = read_all(&blobs, &info.id).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        let missing = BlobId([9; 32]);
        assert!(matches!(
            blobs.open_blob(missing),
            Err(BlobError::NotFound(_))
        ));
        let err = blobs.put(body(&data, 1000), 1000).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { max: 1000 }));
    }

    #[tokio::test]
    async fn interrupted_uploads_leave_nothing_after_a_sweep() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let kept = blobs
            .put(body(&pattern(5000, 3), 1000), u64::MAX)
            .await
            .unwrap();
        let data = pattern(CHUNK_SIZE * 2 + 1, 4);
        let mut pieces: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(CHUNK_SIZE)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        pieces.truncate(2);
        pieces.push(Err(std::io::Error::other("connection reset")));
        let err = blobs
            .put(futures::stream::iter(pieces), u64::MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Body(_)));
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 3);
        assert_eq!(blobs.sweep_orphans().unwrap(), 2);
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 1);
        assert_eq!(read_all(&blobs, &kept.id).await.unwrap(), pattern(5000, 3));
    }

    /// A removed blob's chunks are freed, a kept blob's never, and chunks an upload
    /// has written but no manifest names yet survive a collection running meanwhile
    /// (also a chunk the upload shares with the removed blob).
    #[tokio::test]
    async fn garbage_collection_frees_removed_blobs_and_spares_uploads_in_progress() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let collections = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let put = |data: Vec<u8>| {
            let blobs = &blobs;
            let collections = &collections;
            async move {
                let stored = blobs.put(body(&data, 4096), u64::MAX).await.unwrap();
                let described = Described::new(Some("a.bin"), Some("application/x-test")).unwrap();
                announce(collections, &stored.id, stored.size, &described).unwrap();
                stored.id
            }
        };
        let kept = put(pattern(CHUNK_SIZE + 100, 10)).await;
        let shared = pattern(CHUNK_SIZE, 11);
        let mut doomed_data = shared.clone();
        doomed_data.extend(pattern(CHUNK_SIZE, 12));
        let doomed = put(doomed_data).await;
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 4);
        assert_eq!(blobs.list(&collections).unwrap().len(), 2);

        // An upload that starts with the doomed blob's first chunk, then waits.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
        tx.unbounded_send(Ok(Bytes::from(shared.clone()))).unwrap();
        tx.unbounded_send(Ok(Bytes::from(pattern(CHUNK_SIZE, 13))))
            .unwrap();
        let upload = {
            let blobs = &blobs;
            async move { blobs.put(rx, u64::MAX).await }
        };
        let collect = async {
            // Let the upload write both chunks it has.
            while chunk_files(&vault.home().blobs_dir()).len() < 5 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert!(unlist(&collections, &doomed).unwrap());
            assert!(!unlist(&collections, &doomed).unwrap(), "once");
            assert!(blobs.holds_removed(&collections).unwrap());
            assert_eq!(blobs.drop_removed(&collections).unwrap(), 1);
            let freed = blobs.delete_unused_chunks(false).unwrap();
            // Only the doomed blob's own second chunk: the shared one is pinned.
            assert_eq!(freed.chunks, 1, "{freed:?}");
            tx.unbounded_send(Ok(Bytes::from_static(b"tail"))).unwrap();
            drop(tx);
        };
        let (uploaded, ()) = tokio::join!(upload, collect);
        let uploaded = uploaded.unwrap();
        let mut expected = shared;
        expected.extend(pattern(CHUNK_SIZE, 13));
        expected.extend_from_slice(b"tail");
        assert_eq!(read_all(&blobs, &uploaded.id).await.unwrap(), expected);
        assert!(blobs.open_blob(doomed).is_err());
        let listed: Vec<String> = blobs
            .list(&collections)
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(
            listed,
            vec![kept.to_string()],
            "the removed blob is not listed"
        );
        // Unlisted and unpinned, the upload's chunks would go; announced, they stay.
        announce(
            &collections,
            &uploaded.id,
            uploaded.size,
            &Described::default(),
        )
        .unwrap();
        drop(uploaded.pinned);
        assert_eq!(blobs.delete_unused_chunks(false).unwrap().chunks, 0);
        assert_eq!(
            read_all(&blobs, &kept).await.unwrap(),
            pattern(CHUNK_SIZE + 100, 10)
        );
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 5);
    }

    #[test]
    fn names_and_types_are_checked() {
        let ok = Described::new(Some(" photo 1.JPG "), Some("Image/JPEG; q=1")).unwrap();
        assert_eq!(ok.name.as_deref(), Some("photo 1.JPG"));
        assert_eq!(ok.content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(
            Described::new(Some(""), Some("")).unwrap(),
            Described::default()
        );
        for bad in ["../x", "a/b", "a\\b", "..", "x\u{7}", &"n".repeat(256)] {
            assert!(Described::new(Some(bad), None).is_err(), "{bad:?}");
        }
        for bad in ["image", "image/", "/jpeg", "text/html <script>", "a b/c"] {
            assert!(Described::new(None, Some(bad)).is_err(), "{bad:?}");
        }
    }
}
