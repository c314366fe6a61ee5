//! Blobs: large or binary content, chunked, each chunk sealed in its own file.
//!
//! In: a stream of bytes. Out: a [`BlobId`] (keyed BLAKE3 of the content, so equal
//! content has one id in a vault and an outsider learns nothing from it), and later a
//! stream of verified chunks. Chunks live in `HOME/blobs/xx/yyyy…`, named by the keyed
//! hash of their plaintext (equal chunks are stored once), sealed with binding
//! `("blob-chunk", hash)`; manifests (`hearth_protocol::blob`) live sealed in tree
//! `blobs` under the blob id.
//!
//! An upload hashes, seals and writes [`CHUNKS_IN_FLIGHT`] chunks at once on the
//! blocking pool (both cores) while the next one is read, so a transfer holds at most
//! `CHUNKS_IN_FLIGHT + 1` chunks in memory. Chunk files are written without an fsync
//! each; every chunk a manifest names is fsynced once, with its directory, just before
//! the manifest is stored and committed ([`Blobs::put`], [`Blobs::store_manifest`]):
//! a manifest is never durable before its chunks, and what an interrupted transfer
//! wrote is named by no manifest, so the start-up sweep removes it.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blake3::hazmat::{ChainingValue, HasherExt, Mode};
use bytes::Bytes;
use data_encoding::HEXLOWER;
use futures::{Stream, StreamExt};
use hearth_protocol::api::BlobInfo;
use hearth_protocol::blob::{CHUNK_RESPONSE, CHUNK_SIZE, Manifest};
use hearth_protocol::seal::{Binding, PLAINTEXT_AT, SEAL_OVERHEAD, TAG_LEN};
use hearth_protocol::{BlobId, CollectionName, RecordId};

use crate::collections::{CollectionError, Collections, LookupIn, WritesIn};
use crate::home::sync_dir;
use crate::keys::VaultKeys;
use crate::store::{SealedTree, Store, StoreError};

/// The binding domain of a sealed chunk file (its key: the chunk's hash, its file name).
pub const CHUNK_DOMAIN: &[u8] = b"blob-chunk";

/// Chunks of one transfer being hashed, sealed and written at once (besides the one
/// being read): enough to keep two cores busy while the next chunk arrives.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// Files fsynced at once when a blob is made durable: the file system can then join
/// their journal commits.
const FSYNCS_AT_ONCE: usize = 8;

/// An empty buffer for a chunk of `len` bytes: room for the seal's header (the chunk's
/// plaintext is appended after it), and capacity for its tag, so that it is sealed
/// where it lies ([`hearth_protocol::seal::SealKey::seal_in_place`]).
pub fn chunk_buffer(len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(SEAL_OVERHEAD + len);
    buf.resize(PLAINTEXT_AT, 0);
    buf
}

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

/// This device's thumbnails of its blobs (the node's `thumbnails`): sealed like every
/// value, never synced, and dropped with their blob.
pub const THUMBNAILS_TREE: &str = "thumbnails";
/// The sizes thumbnails are made in: the longest side, in pixels.
pub const THUMBNAIL_SIZES: [u32; 4] = [128, 256, 512, 1024];

/// Where the thumbnail of `id` in `size` is kept: a keyed hash, so the tree does not
/// show which blobs are pictures.
pub fn thumbnail_key(store: &Store, id: &BlobId, size: u32) -> [u8; 32] {
    store.name_key(THUMBNAILS_TREE, &format!("{id}/{size}"))
}

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
    /// Listed for the records that name it (a file's bytes, a mail, a contact's
    /// photo), not stored by the person as a blob of its own: when no record names it
    /// any more, [`unnamed`] finds it and it is removed ([`unlist_unnamed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub for_records: bool,
    /// When a record naming it was last written on any device (seconds): a removal
    /// decided from a reading of the records before then is not made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_at: Option<u64>,
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
    announce_many(collections, &[(*id, size, described.clone())])
}

/// The listing of a blob announced with `size` and `described`, given how it was
/// listed before (if it was); `for_records`: by a write of records that name it (else
/// the person stored it as a blob of its own, and it stays until they remove it).
fn announced(
    before: Option<Listing>,
    size: u64,
    described: &Described,
    for_records: bool,
) -> Listing {
    let mut listing = before.unwrap_or(Listing {
        size,
        name: None,
        content_type: None,
        added: None,
        removed: false,
        for_records,
        named_at: None,
    });
    let now = crate::clock::now_unix();
    if listing.removed || listing.added.is_none() {
        listing.added = Some(now);
        listing.for_records = for_records;
    }
    if for_records {
        // Always a new value, also twice in a second: that it changed is what
        // [`unlist_unnamed`] looks at.
        listing.named_at = Some(now.max(listing.named_at.map_or(0, |at| at + 1)));
    } else {
        listing.for_records = false;
    }
    listing.removed = false;
    listing.size = size;
    if described.name.is_some() {
        listing.name.clone_from(&described.name);
    }
    if described.content_type.is_some() {
        listing.content_type.clone_from(&described.content_type);
    }
    listing
}

/// [`announce`] for several blobs, written as one change of `_blobs`. Returns whether
/// anything changed.
pub fn announce_many(
    collections: &Collections,
    blobs: &[(BlobId, u64, Described)],
) -> Result<bool, CollectionError> {
    collections
        .write_across(&listings_of(blobs), |lookup| {
            let writes = writes_of(lookup, blobs, None)?;
            let changed = !writes.is_empty();
            Ok::<_, CollectionError>((writes, changed))
        })
        .and_then(|r| r)
}

/// Every string in `record` (at any depth, not its own `"id"`) that is a blob id.
pub fn named_blobs(
    record: &serde_json::Map<String, serde_json::Value>,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (key, value) in record.iter().filter(|(key, _)| *key != "id") {
        each_string(value, Some(key), &mut |_, s| {
            if BlobId::parse(s).is_ok() {
                out.insert(s.to_owned());
            }
        });
    }
    out
}

/// Calls `f` with every string in `value`, at any depth, and the key it is the value
/// of (`None` for an item of an array).
fn each_string(
    value: &serde_json::Value,
    key: Option<&str>,
    f: &mut impl FnMut(Option<&str>, &str),
) {
    use serde_json::Value;
    match value {
        Value::String(s) => f(key, s),
        Value::Array(items) => items.iter().for_each(|v| each_string(v, None, f)),
        Value::Object(map) => map.iter().for_each(|(k, v)| each_string(v, Some(k), f)),
        _ => {}
    }
}

/// The records of `_blobs` that list `blobs`: what a [`Collections::write_across`]
/// that writes [`listing_writes`] must name among the records it touches.
pub fn listings_of(blobs: &[(BlobId, u64, Described)]) -> Vec<(CollectionName, RecordId)> {
    blobs
        .iter()
        .map(|(id, _, _)| (blob_list(), listing_id(id)))
        .collect()
}

/// The writes of `_blobs` that list `blobs` as [`announce_many`] does, for a request
/// that writes them with records of its own in one [`Collections::write_across`]
/// (which must name [`listings_of`] them): the records naming the blobs and their listing are
/// then on disk together or not at all.
///
/// Such a listing is [`Listing::for_records`] (unless the person stored the blob as
/// one of its own). The listing of a blob that one of `records` (the request's writes
/// of records) names gets a new [`Listing::named_at`], so a removal of the blob decided
/// from an older reading of the records is not made ([`unlist_unnamed`]); one named by
/// none of them (a message imported again, already there) is written only if it
/// changed.
pub fn listing_writes(
    lookup: &mut LookupIn<'_>,
    blobs: &[(BlobId, u64, Described)],
    records: &WritesIn,
) -> Result<WritesIn, CollectionError> {
    let mut named = std::collections::BTreeSet::new();
    for (_, _, write) in records {
        use crate::collections::RecordWrite;
        if let RecordWrite::Put(fields)
        | RecordWrite::Patch(fields)
        | RecordWrite::Replace(fields) = write
        {
            named.extend(named_blobs(fields));
        }
    }
    writes_of(lookup, blobs, Some(&named))
}

/// `named`: `None` for the person's own blobs (not for records), else the blobs that
/// the request's records name.
fn writes_of(
    lookup: &mut LookupIn<'_>,
    blobs: &[(BlobId, u64, Described)],
    named: Option<&std::collections::BTreeSet<String>>,
) -> Result<WritesIn, CollectionError> {
    let mut writes = Vec::new();
    let mut seen = HashSet::new();
    for (id, size, described) in blobs {
        if !seen.insert(id.0) {
            continue;
        }
        let before: Option<Listing> = lookup(&blob_list(), &listing_id(id))?
            .and_then(|record| serde_json::from_value(serde_json::Value::Object(record)).ok());
        let listing = match named {
            None => announced(before.clone(), *size, described, false),
            Some(named) => {
                let mut listing = announced(before.clone(), *size, described, true);
                if !named.contains(&id.to_string()) {
                    // Not named by this write: its time of naming stays.
                    listing.named_at = before
                        .as_ref()
                        .and_then(|b| b.named_at)
                        .or(listing.named_at);
                }
                listing
            }
        };
        if before.as_ref() != Some(&listing) {
            writes.push((
                blob_list(),
                listing_id(id),
                crate::collections::RecordWrite::Put(listing_record(&listing)),
            ));
        }
    }
    Ok(writes)
}

/// A listing as the record of `_blobs` that holds it.
fn listing_record(listing: &Listing) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(record) =
        serde_json::to_value(listing).expect("a listing serializes")
    else {
        unreachable!("a struct serializes to an object")
    };
    record
}

fn put_listing(
    collections: &Collections,
    id: &BlobId,
    listing: &Listing,
) -> Result<(), CollectionError> {
    collections.put(&blob_list(), &listing_id(id), &listing_record(listing))?;
    Ok(())
}

/// Marks a blob removed on every device, as the person asked (no longer
/// [`Listing::for_records`]: no record naming it brings it back); `false` if it is not
/// listed (or already removed). Then the store must commit, and
/// [`Blobs::collect_garbage`] frees its chunks here (the other devices do it when the
/// listing reaches them).
pub fn unlist(collections: &Collections, id: &BlobId) -> Result<bool, CollectionError> {
    match listing(collections, id)? {
        Some(mut listing) if !listing.removed => {
            listing.removed = true;
            listing.for_records = false;
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

/// The listings `keep` takes, read page by page from the record index: only those
/// are held (all 100,000 listings of a vault read at once took 240 MB: see
/// [`Blobs::survey`]).
fn listings_where(
    collections: &Collections,
    keep: impl Fn(&Listing) -> bool,
) -> Result<Vec<(BlobId, Listing)>, CollectionError> {
    let mut out = Vec::new();
    collections.page(&blob_list(), None, usize::MAX, |record| {
        let id = BlobId::parse(record.get("id")?.as_str()?).ok()?;
        let listing: Listing = serde_json::from_value(record).ok()?;
        if keep(&listing) {
            out.push((id, listing));
        }
        None
    })?;
    Ok(out)
}

/// Which of `wanted` some record of a user collection names (as [`named_blobs`] counts
/// a naming: any string equal to the id, at any depth, so nothing a record may mean is
/// taken for unnamed). Reads the files first, and stops once every one is found.
pub fn named_among(
    collections: &Collections,
    wanted: &HashSet<BlobId>,
) -> Result<HashSet<BlobId>, CollectionError> {
    let mut left: HashSet<String> = wanted.iter().map(BlobId::to_string).collect();
    let mut named = HashSet::new();
    let mut note = |record: &serde_json::Map<String, serde_json::Value>,
                    left: &mut HashSet<String>| {
        for blob in named_blobs(record) {
            if left.remove(&blob) {
                named.insert(BlobId::parse(&blob).expect("a blob id parses"));
            }
        }
    };
    let mut names: Vec<CollectionName> = collections
        .names()?
        .into_iter()
        .filter(|n| !n.is_system())
        .collect();
    // What a person may still choose names its blobs too: every version and every
    // competing value of a record in conflict (the record index knows which), and the
    // versions a delete notice keeps.
    for name in &names {
        for id in collections.conflicted(name)? {
            let Ok(record) = RecordId::parse(&id) else {
                continue;
            };
            let Some(conflict) = collections.conflicts(name, &record)? else {
                continue;
            };
            for version in &conflict.versions {
                note(version, &mut left);
            }
            let mut values = serde_json::Map::new();
            values.insert("values".into(), serde_json::Value::Object(conflict.fields));
            note(&values, &mut left);
        }
    }
    let notices = crate::collections::conflicts_list();
    for notice in collections.records(&notices)? {
        if let serde_json::Value::Object(notice) = notice {
            note(&notice, &mut left);
        }
    }
    // The files first: they name most of what is listed for records.
    names.sort_by_key(|n| n.as_str() != "files");
    for name in names {
        if left.is_empty() {
            break;
        }
        // A page of one record, kept once nothing is left to find: the reading stops.
        collections.page(&name, None, 1, |record| {
            let serde_json::Value::Object(record) = record else {
                return None;
            };
            note(&record, &mut left);
            left.is_empty().then_some(serde_json::Value::Null)
        })?;
    }
    Ok(named)
}

/// A blob listed for records that no record names: found by [`unnamed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unnamed {
    pub id: BlobId,
    /// Its listing's [`Listing::named_at`] when it was found.
    pub named_at: Option<u64>,
}

/// The blobs listed for records ([`Listing::for_records`], not removed) that no record
/// of a user collection names. Reads every listing, and the records until each of them
/// is found named (all of them when one is not). Blocking.
pub fn unnamed(collections: &Collections) -> Result<Vec<Unnamed>, CollectionError> {
    let candidates: Vec<Unnamed> = listings_where(collections, |l| l.for_records && !l.removed)?
        .into_iter()
        .map(|(id, l)| Unnamed {
            id,
            named_at: l.named_at,
        })
        .collect();
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let wanted = candidates.iter().map(|c| c.id).collect();
    let named = named_among(collections, &wanted)?;
    Ok(candidates
        .into_iter()
        .filter(|c| !named.contains(&c.id))
        .collect())
}

/// Marks removed, in one write, each of `blobs` ([`unnamed`] found them) whose listing
/// is still for records, not removed, and not named since it was found (its
/// `named_at` unchanged): a record written meanwhile naming one keeps it. Returns the
/// ones removed; then the store must commit.
pub fn unlist_unnamed(
    collections: &Collections,
    blobs: &[Unnamed],
) -> Result<Vec<BlobId>, CollectionError> {
    let touched: Vec<(CollectionName, RecordId)> = blobs
        .iter()
        .map(|b| (blob_list(), listing_id(&b.id)))
        .collect();
    collections
        .write_across(&touched, |lookup| {
            let mut writes = Vec::new();
            let mut removed = Vec::new();
            for blob in blobs {
                let Some(mut listing) =
                    lookup(&blob_list(), &listing_id(&blob.id))?.and_then(|record| {
                        serde_json::from_value::<Listing>(serde_json::Value::Object(record)).ok()
                    })
                else {
                    continue;
                };
                if !listing.for_records || listing.removed || listing.named_at != blob.named_at {
                    continue;
                }
                listing.removed = true;
                writes.push((
                    blob_list(),
                    listing_id(&blob.id),
                    crate::collections::RecordWrite::Put(listing_record(&listing)),
                ));
                removed.push(blob.id);
            }
            Ok::<_, CollectionError>((writes, removed))
        })
        .and_then(|r| r)
}

/// Lists again, in one write, each of `blobs` that is listed for records and removed
/// (a record still names it: [`Blobs::drop_removed`]). Returns how many.
fn relist(collections: &Collections, blobs: &HashSet<BlobId>) -> Result<usize, CollectionError> {
    let touched: Vec<(CollectionName, RecordId)> = blobs
        .iter()
        .map(|id| (blob_list(), listing_id(id)))
        .collect();
    collections
        .write_across(&touched, |lookup| {
            let mut writes = Vec::new();
            for id in blobs {
                let Some(before) = lookup(&blob_list(), &listing_id(id))?.and_then(|record| {
                    serde_json::from_value::<Listing>(serde_json::Value::Object(record)).ok()
                }) else {
                    continue;
                };
                if !(before.removed && before.for_records) {
                    continue;
                }
                let (size, described) = (before.size, Described::default());
                let listing = announced(Some(before), size, &described, true);
                tracing::info!(blob = %id, "a removed blob is still named by a record: listed again");
                writes.push((
                    blob_list(),
                    listing_id(id),
                    crate::collections::RecordWrite::Put(listing_record(&listing)),
                ));
            }
            let relisted = writes.len();
            Ok::<_, CollectionError>((writes, relisted))
        })
        .and_then(|r| r)
}

/// What [`Blobs::drop_removed`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Removed blobs whose manifest this device dropped.
    pub dropped: usize,
    /// Removed blobs a record still names, listed again.
    pub relisted: usize,
}

impl Dropped {
    /// Whether the store must commit.
    pub fn changed(&self) -> bool {
        self.dropped > 0 || self.relisted > 0
    }
}

/// A record that names a blob the vault does not list (never stored in this vault, or
/// removed): found by [`dangling`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dangling {
    pub collection: CollectionName,
    pub record: String,
    pub blob: String,
}

/// The blob ids a record holds in a field named `blob`, at any depth: how Hearth's own
/// records name a blob (a mail's bytes, a contact's photo: docs/SCHEMA.md). Unlike
/// [`named_blobs`], a string elsewhere that looks like a blob id (a hash in a note) is
/// not taken for one.
pub fn blob_fields(
    record: &serde_json::Map<String, serde_json::Value>,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (key, value) in record {
        each_string(value, Some(key), &mut |key, s| {
            if key == Some("blob") && BlobId::parse(s).is_ok() {
                out.insert(s.to_owned());
            }
        });
    }
    out
}

/// What [`dangling`] found.
#[derive(Debug, Default)]
pub struct DanglingReport {
    /// The first records found naming a blob the vault does not have.
    pub found: Vec<Dangling>,
    /// How many such namings there are in all.
    pub all: usize,
    /// Collections that could not be read through, and why (the others are checked).
    pub unreadable: Vec<(CollectionName, CollectionError)>,
}

/// The records of the user collections whose `blob` fields ([`blob_fields`]) name a
/// blob the vault does not list (or lists as removed), the first `limit` of them, and
/// how many there are in all. Reads every record once, from the record index; a
/// collection that cannot be read is named in the report and the others are still
/// checked. An error only if the blob listing itself cannot be read.
pub fn dangling(
    collections: &Collections,
    limit: usize,
) -> Result<DanglingReport, CollectionError> {
    let listed: HashSet<String> = listings(collections)?
        .into_iter()
        .filter(|(_, listing)| !listing.removed)
        .map(|(id, _)| id.to_string())
        .collect();
    let mut report = DanglingReport::default();
    for name in collections.names()? {
        if name.is_system() {
            continue;
        }
        let (found, all) = (&mut report.found, &mut report.all);
        let read = collections.page(&name, None, usize::MAX, |record| {
            let serde_json::Value::Object(record) = record else {
                return None;
            };
            for blob in blob_fields(&record) {
                if !listed.contains(&blob) {
                    *all += 1;
                    if found.len() < limit {
                        let id = record.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                        found.push(Dangling {
                            collection: name.clone(),
                            record: id.to_owned(),
                            blob,
                        });
                    }
                }
            }
            None
        });
        if let Err(e) = read {
            report.unreadable.push((name, e));
        }
    }
    Ok(report)
}

/// The records of the user collections that name `blob` (as a grant's view counts a
/// naming: any string equal to its id, at any depth: [`named_blobs`]), the first
/// `limit` as (collection, record id), and how many there are in all: what a removal
/// of the blob would leave without its bytes. Reads every record once, from the
/// record index.
pub fn naming(
    collections: &Collections,
    blob: &BlobId,
    limit: usize,
) -> Result<(Vec<(CollectionName, String)>, usize), CollectionError> {
    let wanted = blob.to_string();
    let mut found = Vec::new();
    let mut all = 0;
    for name in collections.names()? {
        if name.is_system() {
            continue;
        }
        collections.page(&name, None, usize::MAX, |record| {
            let serde_json::Value::Object(record) = record else {
                return None;
            };
            if named_blobs(&record).contains(&wanted) {
                all += 1;
                if found.len() < limit {
                    let id = record.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                    found.push((name.clone(), id.to_owned()));
                }
            }
            None
        })?;
    }
    Ok((found, all))
}

/// What [`Blobs::survey`] found.
#[derive(Debug, Default)]
pub struct Survey {
    /// Listed, not removed, and not stored here (to fetch), with their listed size.
    pub missing: Vec<(BlobId, u64)>,
    /// Some blob stored here is listed as removed: its chunks can be freed.
    pub removed_here: bool,
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
    /// One garbage collection at a time ([`Blobs::one_collection`]).
    collecting: tokio::sync::Mutex<()>,
    /// Blobs being fetched from another device: bytes here so far, of how many.
    fetching: std::sync::Mutex<std::collections::HashMap<BlobId, (u64, u64)>>,
    dir: PathBuf,
    manifests: SealedTree,
    keys: Arc<VaultKeys>,
    store: Arc<Store>,
    /// Run by [`Blobs::drop_removed`] between its drop and its reading of what
    /// records name (a test's record arriving there).
    #[cfg(test)]
    between_checks: std::sync::Mutex<Option<BetweenChecks>>,
}

#[cfg(test)]
type BetweenChecks = Box<dyn FnOnce(&Collections) + Send>;

impl Blobs {
    /// Held through one garbage collection (the node's `collect_blob_garbage`), so
    /// another's deletions never run between its manifest drop and its commit.
    pub async fn one_collection(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.collecting.lock().await
    }

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
            #[cfg(test)]
            between_checks: Default::default(),
        })
    }

    /// Stores the content of `body` (at most `max` bytes) and returns its id once it
    /// is durable, pinned until the caller has listed it ([`announce`]).
    ///
    /// The body is cut into chunks as it arrives; each chunk is hashed, sealed and
    /// written on the blocking pool, [`CHUNKS_IN_FLIGHT`] at once, while the next is
    /// read. Then its chunks are fsynced and the manifest stored and committed.
    pub async fn put<S, E>(&self, body: S, max: u64) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (stored, manifest) = self.write_chunks(body, max).await?;
        self.store_manifest(stored.id, &manifest).await?;
        tracing::debug!(size = stored.size, "stored a blob");
        Ok(stored)
    }

    /// Stores several small blobs (each already in memory) as one: their chunks are
    /// written, then fsynced together, their manifests stored and one commit made —
    /// what an import of many messages pays once rather than per message. Each stays
    /// pinned until the caller has listed it.
    pub async fn put_many(&self, contents: Vec<Bytes>, max: u64) -> Result<Vec<Stored>, BlobError> {
        let mut stored = Vec::with_capacity(contents.len());
        let mut manifests = Vec::with_capacity(contents.len());
        for content in contents {
            let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(content)]);
            let (one, manifest) = self.write_chunks(body, max).await?;
            manifests.push((one.id, manifest));
            stored.push(one);
        }
        self.store_manifests(&manifests).await?;
        Ok(stored)
    }

    /// Writes a blob's chunks (not yet durable) and returns it, pinned, with the
    /// manifest to store once they are.
    async fn write_chunks<S, E>(
        &self,
        mut body: S,
        max: u64,
    ) -> Result<(Stored, Manifest), BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut pinned = self.pinned();
        let mut upload = Upload::default();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut size = 0u64;
        let read: Result<(), BlobError> = async {
            let mut buffer = chunk_buffer(CHUNK_SIZE);
            let mut index = 0u64;
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| BlobError::Body(e.to_string()))?;
                size += piece.len() as u64;
                if size > max {
                    return Err(BlobError::TooLarge { max });
                }
                let mut rest = &piece[..];
                while !rest.is_empty() {
                    let take = (PLAINTEXT_AT + CHUNK_SIZE - buffer.len()).min(rest.len());
                    buffer.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buffer.len() == PLAINTEXT_AT + CHUNK_SIZE {
                        if in_flight.len() >= CHUNKS_IN_FLIGHT
                            && let Some(done) = in_flight.next().await
                        {
                            upload.add(done, &mut pinned)?;
                        }
                        let full = std::mem::replace(&mut buffer, chunk_buffer(CHUNK_SIZE));
                        in_flight.push_back(self.seal_chunk(index, full));
                        index += 1;
                    }
                }
            }
            if buffer.len() > PLAINTEXT_AT {
                in_flight.push_back(self.seal_chunk(index, buffer));
            }
            Ok(())
        }
        .await;
        // Every chunk task is waited for, also after an error: once this returns, no
        // write of this upload is still under way.
        let mut result = read;
        while let Some(done) = in_flight.next().await {
            if result.is_ok() {
                result = upload.add(done, &mut pinned);
            }
        }
        result?;
        let id = upload.blob_id(&self.keys.derived.blob_ids);
        pinned.add(id.0);
        let manifest = Manifest {
            size,
            chunk_size: CHUNK_SIZE as u32,
            chunks: upload.chunks,
        };
        Ok((Stored { id, size, pinned }, manifest))
    }

    /// Hashes chunk `index` of an upload (its name, and its part of the blob id), pins
    /// it, and seals it into its file unless it is there already. `buf` is a
    /// [`chunk_buffer`] holding the chunk.
    fn seal_chunk(&self, index: u64, buf: Vec<u8>) -> tokio::task::JoinHandle<Sealed> {
        let keys = self.keys.clone();
        let base = self.dir.clone();
        let mut pin = self.pinned();
        let check = self.store.check_write();
        tokio::task::spawn_blocking(move || {
            check?;
            let plain = &buf[PLAINTEXT_AT..];
            let hash = *blake3::keyed_hash(&keys.derived.chunk_ids, plain).as_bytes();
            // Pinned before looking for it: a collection cannot delete it between the
            // look and the manifest that will name it. The pin travels in the task's
            // result, so a caller that stops waiting drops it with that result.
            pin.add(hash);
            let (subtree, whole) = id_part(&keys.derived.blob_ids, index, plain);
            write_sealed(&keys, &base, hash, buf)?;
            Ok(SealedChunk {
                hash,
                subtree,
                whole,
                pin,
            })
        })
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
        let remaining = manifest.size;
        Ok(BlobReader {
            id,
            manifest,
            next: 0,
            skip: 0,
            remaining,
            dir: self.dir.clone(),
            keys: self.keys.clone(),
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
        Ok(self
            .survey(collections)?
            .missing
            .into_iter()
            .map(|(id, size)| self.arrival(id, size))
            .collect())
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
        Ok(listing
            .filter(|l| !l.removed)
            .map(|l| self.arrival(id, l.size)))
    }

    /// A listed blob's size and how much of it is here.
    fn arrival(&self, id: BlobId, listed_size: u64) -> hearth_protocol::api::ArrivingBlob {
        let (received, size) = self
            .fetching()
            .get(&id)
            .copied()
            .unwrap_or((0, listed_size));
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

    /// A reader of blobs' first bytes, for work off the request path (an index).
    pub fn heads(&self) -> BlobHeads {
        BlobHeads {
            dir: self.dir.clone(),
            manifests: self.manifests.clone(),
            keys: self.keys.clone(),
        }
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

    /// A chunk, verified, as the answer to a peer's `GetChunk` (`0x12 ‖ plaintext`),
    /// built in the buffer the chunk was read and opened in; `None` if it is not here.
    pub async fn chunk_answer(&self, hash: [u8; 32]) -> Result<Option<Bytes>, BlobError> {
        Ok(self.open_chunk(hash).await?.map(|mut buf| {
            // The last byte of the nonce, no longer needed, becomes the answer's tag.
            buf[PLAINTEXT_AT - 1] = CHUNK_RESPONSE;
            Bytes::from(buf).slice(PLAINTEXT_AT - 1..)
        }))
    }

    /// Reads and verifies a lone chunk: its buffer, the plaintext from [`PLAINTEXT_AT`].
    async fn open_chunk(&self, hash: [u8; 32]) -> Result<Option<Vec<u8>>, BlobError> {
        if !self.has_chunk(&hash) {
            return Ok(None);
        }
        let keys = self.keys.clone();
        let path = chunk_path(&self.dir, &hash);
        tokio::task::spawn_blocking(move || {
            let corrupt = |what: String| BlobError::Corrupt {
                blob: BlobId(hash),
                what,
            };
            open_chunk_file(&keys, &path, hash, None, 0, corrupt).map(Some)
        })
        .await
        .unwrap_or_else(|e| Err(BlobError::Internal(format!("read task failed: {e}"))))
    }

    /// Stores a chunk received from another device, after checking it against `hash`.
    /// `buf` is a [`chunk_buffer`] holding the chunk; it is sealed where it lies. The
    /// file is not fsynced here: [`Blobs::store_manifest`] does that for every chunk
    /// of the blob. The caller pinned the chunk already ([`Blobs::pin_fetch`]).
    pub async fn store_chunk(&self, hash: [u8; 32], buf: Vec<u8>) -> Result<(), BlobError> {
        self.store.check_write()?;
        if buf.len() < PLAINTEXT_AT {
            return Err(BlobError::Internal("a chunk buffer without room".into()));
        }
        let keys = self.keys.clone();
        let base = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let actual = blake3::keyed_hash(&keys.derived.chunk_ids, &buf[PLAINTEXT_AT..]);
            if actual.as_bytes() != &hash {
                return Err(BlobError::Body(
                    "a chunk from a peer does not match its hash".into(),
                ));
            }
            write_sealed(&keys, &base, hash, buf)
        })
        .await
        .map_err(|e| BlobError::Internal(format!("chunk task failed: {e}")))?
    }

    /// Stores and commits a blob's manifest once all its chunks are here: first every
    /// chunk file it names is fsynced (chunk files are written without), then their
    /// directories, so the manifest is never durable before its chunks. A manifest
    /// stored already (the same content uploaded or fetched before) is only committed.
    pub async fn store_manifest(&self, id: BlobId, manifest: &Manifest) -> Result<(), BlobError> {
        self.store_manifests(&[(id, manifest.clone())]).await
    }

    /// [`Blobs::store_manifest`] for several blobs, with one round of fsyncs and one
    /// commit.
    async fn store_manifests(&self, manifests: &[(BlobId, Manifest)]) -> Result<(), BlobError> {
        let mut files: Vec<(BlobId, usize, PathBuf)> = Vec::new();
        let mut new = Vec::new();
        let (mut seen, mut ids) = (HashSet::new(), HashSet::new());
        for (id, manifest) in manifests {
            if self.manifests.contains_key(&id.0)? || !ids.insert(id.0) {
                continue;
            }
            files.extend(
                manifest
                    .chunks
                    .iter()
                    .enumerate()
                    .filter(|(_, hash)| seen.insert(**hash))
                    .map(|(index, hash)| (*id, index, chunk_path(&self.dir, hash))),
            );
            new.push((*id, manifest));
        }
        if !new.is_empty() {
            self.store.check_flush()?;
            make_durable(self.dir.clone(), files).await?;
            for (id, manifest) in new {
                self.manifests.insert(&id.0, &manifest.encode())?;
            }
        }
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
    ///
    /// A blob listed for records ([`Listing::for_records`]) that a record here still
    /// names is not dropped but listed again, so the devices that dropped it fetch it
    /// back: a record written on one device while another found the blob unnamed
    /// (before the record reached it) keeps its bytes.
    pub fn drop_removed(&self, collections: &Collections) -> Result<Dropped, BlobError> {
        let internal = |e: CollectionError| BlobError::Internal(e.to_string());
        let removed = listings_where(collections, |listing| listing.removed).map_err(internal)?;
        let mut out = Dropped::default();
        let for_records: HashSet<BlobId> = removed
            .iter()
            .filter(|(_, listing)| listing.for_records)
            .map(|(id, _)| *id)
            .collect();
        let removed: Vec<BlobId> = removed.into_iter().map(|(id, _)| id).collect();
        let pins = lock_pins(&self.pins);
        // The manifests dropped, kept until the naming is read below.
        let mut dropped: Vec<(BlobId, zeroize::Zeroizing<Vec<u8>>)> = Vec::new();
        let drop_all = || -> Result<(), BlobError> {
            for id in removed {
                // Read again under the lock: an upload of the same content may have
                // listed it again (and dropped its pin) since the list above was read.
                let still_removed = listing(collections, &id)
                    .map_err(|e| BlobError::Internal(e.to_string()))?
                    .is_some_and(|l| l.removed);
                if still_removed
                    && !pins.contains_key(&id.0)
                    && let Some(manifest) = self.manifests.get(&id.0)?
                {
                    self.manifests.remove(&id.0)?;
                    dropped.push((id, manifest));
                }
            }
            Ok(())
        };
        let first = drop_all();
        drop(pins);
        #[cfg(test)]
        if let Some(between) = self.between_checks.lock().expect("not poisoned").take() {
            between(collections);
        }
        // Read once the manifests are gone, so a record that arrived (or was written
        // naming the blob without listing it) at any time before counts: its blob's
        // manifest goes back before any chunk of it is deleted (the caller deletes
        // chunks only after this returns, one collection at a time), and it is listed
        // again. (An upload of the same bytes meanwhile stored the same manifest.)
        // The blobs looked for: those dropped, and those kept here (a pinned one is
        // listed again now too, not once its upload lets it go).
        let named = first.and_then(|()| {
            let gone: HashSet<BlobId> = dropped.iter().map(|(id, _)| *id).collect();
            let here: HashSet<BlobId> = for_records
                .into_iter()
                .filter(|id| {
                    gone.contains(id) || self.manifests.contains_key(&id.0).unwrap_or(true)
                })
                .collect();
            if here.is_empty() {
                return Ok(HashSet::new());
            }
            named_among(collections, &here).map_err(internal)
        });
        let named = match named {
            Ok(named) => named,
            Err(e) => {
                // Nothing is dropped unless its naming was read after the drop: every
                // manifest goes back (the next collection tries again).
                for (id, manifest) in &dropped {
                    self.manifests.insert(&id.0, manifest)?;
                }
                return Err(e);
            }
        };
        if !named.is_empty() {
            for (id, manifest) in dropped.iter().filter(|(id, _)| named.contains(id)) {
                self.manifests.insert(&id.0, manifest)?;
            }
            dropped.retain(|(id, _)| !named.contains(id));
            out.relisted = relist(collections, &named).map_err(internal)?;
        }
        let thumbnails = self.store.tree(THUMBNAILS_TREE)?;
        for (id, _) in &dropped {
            // A picture removed takes its thumbnails with it.
            for size in THUMBNAIL_SIZES {
                thumbnails.remove(&thumbnail_key(&self.store, id, size))?;
            }
        }
        out.dropped = dropped.len();
        Ok(out)
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
        Ok(self.survey(collections)?.removed_here)
    }

    /// One pass over `_blobs`, page by page from the record index and never held
    /// whole (100,000 listings read at once took a device's memory from 164 to 400 MB
    /// at every start): the listed blobs this device lacks, and whether it still holds
    /// one removed elsewhere.
    pub fn survey(&self, collections: &Collections) -> Result<Survey, BlobError> {
        let mut survey = Survey::default();
        let mut failed = None;
        collections
            .page(&blob_list(), None, usize::MAX, |record| {
                if failed.is_some() {
                    return None;
                }
                let id = record
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|id| BlobId::parse(id).ok())?;
                // A listing that does not read as one is skipped, as `listings` skips it.
                let listing: Listing = serde_json::from_value(record).ok()?;
                let (removed, size) = (listing.removed, listing.size);
                match self.has_blob(id) {
                    Ok(true) if removed => survey.removed_here = true,
                    Ok(false) if !removed => survey.missing.push((id, size)),
                    Ok(_) => {}
                    Err(e) => failed = Some(e),
                }
                None
            })
            .map_err(|e| BlobError::Internal(e.to_string()))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(survey),
        }
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
        read_manifest(&self.manifests, id)
    }
}

/// What hashing and sealing one chunk of an upload gave.
struct SealedChunk {
    hash: [u8; 32],
    /// The chunk's subtree of the blob id's BLAKE3 tree.
    subtree: ChainingValue,
    /// For the first chunk: the blob id if the blob is this one chunk.
    whole: Option<blake3::Hash>,
    pin: Pinned,
}

type Sealed = Result<SealedChunk, BlobError>;

/// An upload's chunks so far, in order.
#[derive(Default)]
struct Upload {
    chunks: Vec<[u8; 32]>,
    subtrees: Vec<ChainingValue>,
    whole: Option<blake3::Hash>,
}

impl Upload {
    fn add(
        &mut self,
        done: Result<Sealed, tokio::task::JoinError>,
        pinned: &mut Pinned,
    ) -> Result<(), BlobError> {
        let mut done =
            done.map_err(|e| BlobError::Internal(format!("chunk task failed: {e}")))??;
        pinned.held.append(&mut done.pin.held);
        self.chunks.push(done.hash);
        self.subtrees.push(done.subtree);
        if self.whole.is_none() {
            self.whole = done.whole;
        }
        Ok(())
    }

    /// The keyed BLAKE3 hash of the whole content, from its chunks' subtrees.
    fn blob_id(&self, key: &[u8; 32]) -> BlobId {
        BlobId(match self.subtrees.len() {
            0 => *blake3::keyed_hash(key, &[]).as_bytes(),
            1 => *self
                .whole
                .expect("the first chunk carries the one-chunk id")
                .as_bytes(),
            _ => *merge_root(key, &self.subtrees).as_bytes(),
        })
    }
}

/// Chunk `index`'s part of the blob id (keyed BLAKE3 of the whole content). A chunk is
/// 1 MiB, a power of two of BLAKE3's 1 KiB chunks, so each of ours is a whole subtree
/// of BLAKE3's tree: its chaining value is computed apart (in parallel with the other
/// chunks) and the values are merged at the end ([`merge_root`]), giving the same id as
/// one pass over the content (see the test `blob_ids_are_blake3_of_the_content`).
/// The first chunk also gives the id of a blob that is that one chunk.
fn id_part(key: &[u8; 32], index: u64, plain: &[u8]) -> (ChainingValue, Option<blake3::Hash>) {
    const _: () = assert!(CHUNK_SIZE.is_power_of_two() && CHUNK_SIZE >= blake3::CHUNK_LEN);
    let subtree = blake3::Hasher::new_keyed(key)
        .set_input_offset(index * CHUNK_SIZE as u64)
        .update(plain)
        .finalize_non_root();
    let whole = (index == 0).then(|| blake3::keyed_hash(key, plain));
    (subtree, whole)
}

/// BLAKE3's tree over chunk subtrees: the left part holds the largest power of two of
/// them that is less than all (every left subtree is full; the last chunk may be short).
fn split(count: usize) -> usize {
    debug_assert!(count >= 2);
    1 << (usize::BITS - 1 - (count - 1).leading_zeros())
}

fn merge_inner(key: &[u8; 32], subtrees: &[ChainingValue]) -> ChainingValue {
    if let [one] = subtrees {
        return *one;
    }
    let (left, right) = subtrees.split_at(split(subtrees.len()));
    blake3::hazmat::merge_subtrees_non_root(
        &merge_inner(key, left),
        &merge_inner(key, right),
        Mode::KeyedHash(key),
    )
}

/// The root of at least two chunk subtrees.
fn merge_root(key: &[u8; 32], subtrees: &[ChainingValue]) -> blake3::Hash {
    let (left, right) = subtrees.split_at(split(subtrees.len()));
    blake3::hazmat::merge_subtrees_root(
        &merge_inner(key, left),
        &merge_inner(key, right),
        Mode::KeyedHash(key),
    )
}

/// Seals a chunk into its file (without an fsync: see [`Blobs::store_manifest`]),
/// unless a file of its sealed length is there. `buf` is a [`chunk_buffer`] holding the
/// chunk; it is sealed where it lies. The file is written under a temporary name and
/// renamed, so a chunk's name never shows a partial file while the node runs.
fn write_sealed(
    keys: &VaultKeys,
    base: &Path,
    hash: [u8; 32],
    mut buf: Vec<u8>,
) -> Result<(), BlobError> {
    let path = chunk_path(base, &hash);
    let sealed_len = (buf.len() + TAG_LEN) as u64;
    if fs::metadata(&path).is_ok_and(|m| m.len() == sealed_len) {
        // Its content may not be durable yet (an upload that wrote it may still run):
        // the fsync before our manifest covers it too.
        return Ok(());
    }
    let dir = path.parent().expect("chunk paths have a shard directory");
    crate::home::create_private_dir(dir).map_err(|e| io_error(dir, e))?;
    keys.seal_in_place_at_rest(Binding::new(CHUNK_DOMAIN, &hash), &mut buf);
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&buf)?;
        start_writeback(&file);
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(&path, e));
    }
    Ok(())
}

/// Starts writing a file's pages to disk without waiting, so the fsync before the
/// manifest finds little left to write (Linux: `sync_file_range`; a hint, so a
/// failure is ignored: the fsync still makes the file durable).
fn start_writeback(file: &fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only starts writeback of its pages.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Fsyncs chunk files (`(index in the blob, path)`), [`FSYNCS_AT_ONCE`] at a time, then
/// their shard directories and the blobs directory: after this, a manifest naming them
/// may be stored. A missing file is a corrupt blob.
async fn make_durable(
    base: PathBuf,
    files: Vec<(BlobId, usize, PathBuf)>,
) -> Result<(), BlobError> {
    let mut dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|(_, _, path)| path.parent().map(Path::to_path_buf))
        .collect();
    dirs.insert(base);
    let files = Arc::new(files);
    // The first missing chunk, in the manifest's order, is the one named (the fsyncs
    // below run in parallel, so the one they trip over first is chance).
    let listed = files.clone();
    tokio::task::spawn_blocking(
        move || match listed.iter().find(|(_, _, path)| !path.is_file()) {
            Some((blob, index, _)) => Err(BlobError::Corrupt {
                blob: *blob,
                what: format!("chunk {index} is missing"),
            }),
            None => Ok(()),
        },
    )
    .await
    .map_err(|e| BlobError::Internal(format!("sync task failed: {e}")))??;
    let mut syncs = tokio::task::JoinSet::new();
    for lane in 0..FSYNCS_AT_ONCE.min(files.len()) {
        let files = files.clone();
        syncs.spawn_blocking(move || {
            files
                .iter()
                .skip(lane)
                .step_by(FSYNCS_AT_ONCE)
                .try_for_each(|(blob, index, path)| match fs::File::open(path) {
                    // Any descriptor of the file makes its data durable (Linux, POSIX).
                    Ok(file) => file.sync_all().map_err(|e| io_error(path, e)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::Corrupt {
                        blob: *blob,
                        what: format!("chunk {index} is missing"),
                    }),
                    Err(e) => Err(io_error(path, e)),
                })
        });
    }
    while let Some(synced) = syncs.join_next().await {
        synced.map_err(|e| BlobError::Internal(format!("sync task failed: {e}")))??;
    }
    tokio::task::spawn_blocking(move || {
        dirs.iter()
            .try_for_each(|d| sync_dir(d).map_err(|e| io_error(d, e)))
    })
    .await
    .map_err(|e| BlobError::Internal(format!("sync task failed: {e}")))?
}

/// Reads chunk file `path` and opens it in place, checking it against `hash` (and its
/// length, if given). Returns the buffer: the plaintext from [`PLAINTEXT_AT`] to its
/// end. Blocking.
fn open_chunk_file(
    keys: &VaultKeys,
    path: &Path,
    hash: [u8; 32],
    expected_len: Option<usize>,
    index: usize,
    corrupt: impl Fn(String) -> BlobError,
) -> Result<Vec<u8>, BlobError> {
    let mut buf = match fs::read(path) {
        Ok(sealed) => sealed,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(corrupt(format!("chunk {index} is missing")));
        }
        Err(e) => return Err(io_error(path, e)),
    };
    let plain = keys
        .open_in_place_at_rest(Binding::new(CHUNK_DOMAIN, &hash), &mut buf)
        .map_err(|e| corrupt(format!("chunk {index}: {e}")))?;
    let actual = blake3::keyed_hash(&keys.derived.chunk_ids, plain);
    if expected_len.is_some_and(|len| plain.len() != len) || actual.as_bytes() != &hash {
        return Err(corrupt(format!("chunk {index} does not match its hash")));
    }
    buf.truncate(buf.len() - TAG_LEN);
    Ok(buf)
}

/// Blob `id`'s manifest in `manifests`, if it is there.
fn read_manifest(manifests: &SealedTree, id: BlobId) -> Result<Option<Manifest>, BlobError> {
    match manifests.get(&id.0)? {
        Some(bytes) => Manifest::decode(&bytes)
            .map(Some)
            .map_err(|e| BlobError::Corrupt {
                blob: id,
                what: e.to_string(),
            }),
        None => Ok(None),
    }
}

/// Reads the first bytes of blobs whole on this device ([`Blobs::heads`]; cheap to
/// clone).
#[derive(Clone)]
pub struct BlobHeads {
    dir: PathBuf,
    manifests: SealedTree,
    keys: Arc<VaultKeys>,
}

impl BlobHeads {
    /// Whether blob `id` is whole on this device.
    pub fn has(&self, id: BlobId) -> Result<bool, StoreError> {
        self.manifests.contains_key(&id.0)
    }

    /// The first `max` bytes of blob `id` (all of it if shorter), each chunk read
    /// verified, on the calling thread (blocking); `None` if the blob is not whole on
    /// this device.
    pub fn read_head(&self, id: BlobId, max: usize) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(manifest) = read_manifest(&self.manifests, id)? else {
            return Ok(None);
        };
        let corrupt = |what: String| BlobError::Corrupt { blob: id, what };
        let mut out = Vec::new();
        for (index, hash) in manifest.chunks.iter().enumerate() {
            if out.len() >= max {
                break;
            }
            let path = chunk_path(&self.dir, hash);
            let expected_len = Some(manifest.chunk_len(index));
            let buf = open_chunk_file(&self.keys, &path, *hash, expected_len, index, corrupt)?;
            out.extend_from_slice(&buf[PLAINTEXT_AT..]);
        }
        out.truncate(max);
        Ok(Some(out))
    }
}

/// Reads a blob chunk by chunk, verifying each against its name and the manifest.
pub struct BlobReader {
    id: BlobId,
    manifest: Manifest,
    next: usize,
    /// Bytes of the next chunk before the part being read ([`BlobReader::seek`]).
    skip: usize,
    /// Bytes still to serve.
    remaining: u64,
    dir: PathBuf,
    keys: Arc<VaultKeys>,
}

impl BlobReader {
    /// The whole blob's size.
    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    /// Reads only `len` bytes from `start` on (an HTTP range): the chunks before it are
    /// not read, and every chunk read is still verified whole. Must be called before
    /// the first chunk is read; a range past the end is cut at the end.
    pub fn seek(&mut self, start: u64, len: u64) {
        let chunk = u64::from(self.manifest.chunk_size.max(1));
        let start = start.min(self.manifest.size);
        self.next = usize::try_from(start / chunk).unwrap_or(usize::MAX);
        self.skip = (start % chunk) as usize;
        self.remaining = len.min(self.manifest.size - start);
    }

    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, BlobError>> {
        if self.remaining == 0 {
            return None;
        }
        let index = self.next;
        let hash = *self.manifest.chunks.get(index)?;
        self.next += 1;
        let expected_len = Some(self.manifest.chunk_len(index));
        let keys = self.keys.clone();
        let path = chunk_path(&self.dir, &hash);
        let id = self.id;
        let result = tokio::task::spawn_blocking(move || -> Result<Bytes, BlobError> {
            let corrupt = |what: String| BlobError::Corrupt { blob: id, what };
            let buf = open_chunk_file(&keys, &path, hash, expected_len, index, corrupt)?;
            Ok(Bytes::from(buf).slice(PLAINTEXT_AT..))
        })
        .await
        .unwrap_or_else(|e| Err(BlobError::Internal(format!("read task failed: {e}"))));
        if result.is_err() {
            // Nothing after a bad chunk is served.
            self.next = self.manifest.chunks.len();
        }
        let skip = std::mem::take(&mut self.skip);
        Some(result.map(|bytes| {
            let end = (skip as u64 + self.remaining).min(bytes.len() as u64) as usize;
            let part = bytes.slice(skip.min(end)..end);
            self.remaining -= part.len() as u64;
            part
        }))
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, BlobError>> + Send {
        futures::stream::unfold(self, |mut reader| async move {
            let chunk = reader.next_chunk().await?;
            Some((chunk, reader))
        })
    }
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
    use hearth_protocol::blob::BlobResponse;
    use rand::RngCore;

    /// `hearth check`'s view of a reference: a `blob` field at any depth, not any string
    /// that looks like a blob id (a hash kept in a note), not a `blob` that is no id.
    #[test]
    fn blob_fields_are_fields_named_blob_at_any_depth() {
        let (a, b, c, d) = (
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64),
            "d".repeat(64),
        );
        let record = serde_json::json!({
            "blob": a,
            "photo": {"blob": b, "media_type": "image/jpeg"},
            "parts": [{"blob": c}, {"blob": "not an id"}],
            "sha256": d,
            "notes": [d],
        });
        let serde_json::Value::Object(record) = record else {
            unreachable!()
        };
        let found: Vec<String> = blob_fields(&record).into_iter().collect();
        assert_eq!(found, [a, b, c]);
        assert!(named_blobs(&record).contains(&d));
    }

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

    /// A part of a blob (an HTTP range) is exactly those bytes, from any start to any
    /// length, across chunk edges; a range past the end is cut there.
    #[tokio::test]
    async fn a_part_is_exactly_its_bytes() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let data = pattern(CHUNK_SIZE * 2 + 777, 3);
        let id = blobs.put(body(&data, 1 << 20), u64::MAX).await.unwrap().id;
        let c = CHUNK_SIZE as u64;
        let size = data.len() as u64;
        for (start, len) in [
            (0, 1),
            (0, size),
            (5, 10),
            (c - 3, 6),
            (c, c),
            (c - 1, c + 2),
            (size - 1, 1),
            (size - 10, 100),
            (size, 5),
            (123, 0),
        ] {
            let mut reader = blobs.open_blob(id).unwrap();
            reader.seek(start, len);
            let mut out = Vec::new();
            while let Some(chunk) = reader.next_chunk().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            let from = start.min(size) as usize;
            let to = (start + len).min(size) as usize;
            assert_eq!(out, data[from..to], "{start}+{len}");
        }
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

    /// The blob id from chunk subtrees merged is BLAKE3 (keyed) of the whole content,
    /// for every shape of tree: one chunk, full and short last chunks, counts that are
    /// and are not powers of two.
    #[test]
    fn blob_ids_are_blake3_of_the_content() {
        let key = [0x5a; 32];
        let mut data = vec![0u8; 9 * CHUNK_SIZE];
        rand::thread_rng().fill_bytes(&mut data);
        for full in 0..=8 {
            for tail in [0, 1, 1000, CHUNK_SIZE - 1] {
                let content = &data[..full * CHUNK_SIZE + tail];
                let mut upload = Upload::default();
                for (index, chunk) in content.chunks(CHUNK_SIZE).enumerate() {
                    let (subtree, whole) = id_part(&key, index as u64, chunk);
                    upload.subtrees.push(subtree);
                    upload.whole = upload.whole.or(whole);
                }
                assert_eq!(
                    upload.blob_id(&key).0,
                    *blake3::keyed_hash(&key, content).as_bytes(),
                    "{full} full chunks and {tail} bytes"
                );
            }
        }
    }

    /// An upload whose chunk files are all written but whose fsync fails (injected)
    /// stores no manifest: the manifest comes only after its chunks are durable. What
    /// it wrote is swept; a blob stored before is untouched. The same upload then
    /// succeeds, with the id BLAKE3 gives its content.
    #[tokio::test]
    async fn a_manifest_is_stored_only_after_its_chunks_are_durable() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let kept = blobs
            .put(body(&pattern(5000, 5), 1000), u64::MAX)
            .await
            .unwrap();
        // Three whole chunks, two of them equal (written once).
        let mut data = pattern(CHUNK_SIZE, 6);
        data.extend(pattern(CHUNK_SIZE, 7));
        data.extend(pattern(CHUNK_SIZE, 6));
        let id = BlobId(*blake3::keyed_hash(&vault.keys.derived.blob_ids, &data).as_bytes());
        // The fault is injected when the body ends: every chunk has been handed to its
        // writer by then (each is full), the fsyncs and the manifest are still to come.
        let faults = vault.store.faults().clone();
        let pieces: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let then_fail = futures::stream::iter(pieces).chain(futures::stream::poll_fn(|_| {
            faults.inject(crate::store::Fault::FlushError);
            std::task::Poll::Ready(None)
        }));
        let err = blobs.put(then_fail, u64::MAX).await.unwrap_err();
        assert!(err.to_string().contains("injected fsync failure"), "{err}");
        assert!(
            !blobs.has_blob(id).unwrap(),
            "no manifest without durable chunks"
        );
        assert_eq!(blobs.count(), 1);
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 3);
        vault.store.faults().clear();
        assert_eq!(blobs.sweep_orphans().unwrap(), 2);
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 1);
        assert_eq!(read_all(&blobs, &kept.id).await.unwrap(), pattern(5000, 5));

        let stored = blobs.put(body(&data, 70_000), u64::MAX).await.unwrap();
        assert_eq!(stored.id, id);
        assert_eq!(chunk_files(&vault.home().blobs_dir()).len(), 3);
        assert_eq!(read_all(&blobs, &id).await.unwrap(), data);
    }

    /// A device storing a blob from another: a manifest whose chunks are not all here is
    /// refused (nothing stored); a chunk that does not match its name is refused; with
    /// every chunk stored, the manifest is, and the blob reads back whole.
    #[tokio::test]
    async fn fetched_chunks_are_checked_and_their_manifest_comes_last() {
        let vault = TestVault::new();
        let a = blobs(&vault);
        let other = vault.other_device();
        let b = Blobs::open(
            other.home().blobs_dir(),
            other.store.clone(),
            vault.keys.clone(),
        )
        .unwrap();

        let data = pattern(CHUNK_SIZE * 2 + 777, 8);
        let stored = a.put(body(&data, 65_536), u64::MAX).await.unwrap();
        let manifest = Manifest::decode(&a.manifest_bytes(stored.id).unwrap().unwrap()).unwrap();
        let _pinned = b.pin_fetch(stored.id, &manifest);
        let mut chunks = Vec::new();
        for hash in &manifest.chunks {
            // What a peer is sent: the answer's tag, then the verified plaintext.
            let answer = a.chunk_answer(*hash).await.unwrap().unwrap();
            let BlobResponse::Chunk(plain) = BlobResponse::decode(&answer).unwrap() else {
                panic!("not a chunk answer");
            };
            let mut buf = chunk_buffer(plain.len());
            buf.extend_from_slice(&plain);
            chunks.push(buf);
        }
        assert!(a.chunk_answer([3; 32]).await.unwrap().is_none());

        let err = b
            .store_chunk(manifest.chunks[0], chunks[1].clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
        b.store_chunk(manifest.chunks[0], chunks[0].clone())
            .await
            .unwrap();
        let err = b.store_manifest(stored.id, &manifest).await.unwrap_err();
        assert!(err.to_string().contains("chunk 1 is missing"), "{err}");
        assert!(!b.has_blob(stored.id).unwrap());
        for (hash, buf) in manifest.chunks.iter().zip(chunks).skip(1) {
            b.store_chunk(*hash, buf).await.unwrap();
        }
        b.store_manifest(stored.id, &manifest).await.unwrap();
        assert_eq!(read_all(&b, &stored.id).await.unwrap(), data);
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
            // Thumbnails were made of both; the removed one's go with it.
            let thumbnails = blobs.store.tree(THUMBNAILS_TREE).unwrap();
            for id in [&kept, &doomed] {
                thumbnails
                    .insert(&thumbnail_key(&blobs.store, id, 256), b"a small picture")
                    .unwrap();
            }
            assert!(unlist(&collections, &doomed).unwrap());
            assert!(!unlist(&collections, &doomed).unwrap(), "once");
            assert!(blobs.holds_removed(&collections).unwrap());
            assert_eq!(blobs.drop_removed(&collections).unwrap().dropped, 1);
            assert!(
                thumbnails
                    .get(&thumbnail_key(&blobs.store, &doomed, 256))
                    .unwrap()
                    .is_none()
            );
            assert!(
                thumbnails
                    .get(&thumbnail_key(&blobs.store, &kept, 256))
                    .unwrap()
                    .is_some()
            );
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

    /// A blob stored for the records naming it is removed once none does, and only
    /// then: not while a record names it, not when a record came to name it after it
    /// was found unnamed, never one the person stored as a blob; a removed one that a
    /// record still names (a write that crossed the removal) is listed again, not
    /// dropped.
    #[tokio::test]
    async fn blobs_stored_for_records_go_when_no_record_names_them() {
        let vault = TestVault::new();
        let blobs = blobs(&vault);
        let collections = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let files = CollectionName::parse("files").unwrap();
        let stored = |seed: u8| {
            let blobs = &blobs;
            async move {
                let data = pattern(1000, seed);
                blobs.put(body(&data, 4096), u64::MAX).await.unwrap()
            }
        };
        // A record `record` naming `blob`, written with the blob's listing (as a file
        // upload writes it).
        let name_in = |record: &str, blob: &Stored| {
            let rid = RecordId::parse(record).unwrap();
            let listing = vec![(blob.id, blob.size, Described::default())];
            let mut touched = listings_of(&listing);
            touched.push((files.clone(), rid.clone()));
            collections
                .write_across(&touched, |lookup| {
                    let mut fields = serde_json::Map::new();
                    fields.insert("blob".into(), serde_json::json!(blob.id.to_string()));
                    let mut writes = vec![(
                        files.clone(),
                        rid.clone(),
                        crate::collections::RecordWrite::Put(fields),
                    )];
                    writes.extend(listing_writes(lookup, &listing, &writes)?);
                    Ok::<_, CollectionError>((writes, ()))
                })
                .unwrap()
                .unwrap();
        };
        let named = stored(1).await;
        let dropped_file = stored(2).await;
        let persons = stored(3).await;
        name_in("kept", &named);
        name_in("gone", &dropped_file);
        announce(
            &collections,
            &persons.id,
            persons.size,
            &Described::default(),
        )
        .unwrap();
        assert!(
            listing(&collections, &named.id)
                .unwrap()
                .unwrap()
                .for_records
        );
        assert!(
            !listing(&collections, &persons.id)
                .unwrap()
                .unwrap()
                .for_records
        );
        assert_eq!(
            unnamed(&collections).unwrap(),
            vec![],
            "all named or the person's"
        );

        collections
            .remove(&files, &RecordId::parse("gone").unwrap())
            .unwrap();
        let found = unnamed(&collections).unwrap();
        assert_eq!(
            found.iter().map(|u| u.id).collect::<Vec<_>>(),
            vec![dropped_file.id]
        );

        // Named again after it was found (the same second too): it stays.
        name_in("again", &dropped_file);
        assert_eq!(unlist_unnamed(&collections, &found).unwrap(), vec![]);
        assert!(
            !listing(&collections, &dropped_file.id)
                .unwrap()
                .unwrap()
                .removed
        );
        assert_eq!(unnamed(&collections).unwrap(), vec![]);

        collections
            .remove(&files, &RecordId::parse("again").unwrap())
            .unwrap();
        let found = unnamed(&collections).unwrap();
        assert_eq!(
            unlist_unnamed(&collections, &found).unwrap(),
            vec![dropped_file.id]
        );
        assert!(
            listing(&collections, &dropped_file.id)
                .unwrap()
                .unwrap()
                .removed
        );

        // A record naming it arrives (by sync: no listing written with it) before the
        // bytes are dropped: they stay, and the blob is listed again.
        let mut fields = serde_json::Map::new();
        fields.insert(
            "blob".into(),
            serde_json::json!(dropped_file.id.to_string()),
        );
        collections
            .put(&files, &RecordId::parse("synced").unwrap(), &fields)
            .unwrap();
        let outcome = blobs.drop_removed(&collections).unwrap();
        assert_eq!((outcome.dropped, outcome.relisted), (0, 1));
        assert!(
            !listing(&collections, &dropped_file.id)
                .unwrap()
                .unwrap()
                .removed
        );
        assert!(blobs.has_blob(dropped_file.id).unwrap());

        // Named by none again: removed, then dropped.
        collections
            .remove(&files, &RecordId::parse("synced").unwrap())
            .unwrap();
        let found = unnamed(&collections).unwrap();
        assert_eq!(
            unlist_unnamed(&collections, &found).unwrap(),
            vec![dropped_file.id]
        );
        let id = dropped_file.id;
        // The upload's pin is gone once it is listed (here: once the test lets it go).
        drop(dropped_file.pinned);

        // A record naming it arrives while the bytes are being dropped (after the
        // naming was read): the manifest goes back, the chunks stay, listed again.
        let late = RecordId::parse("late").unwrap();
        let late_fields = fields.clone();
        let (late_files, late_id) = (files.clone(), late.clone());
        *blobs.between_checks.lock().unwrap() = Some(Box::new(move |collections| {
            collections
                .put(&late_files, &late_id, &late_fields)
                .unwrap();
        }));
        let outcome = blobs.drop_removed(&collections).unwrap();
        assert_eq!((outcome.dropped, outcome.relisted), (0, 1));
        assert!(!listing(&collections, &id).unwrap().unwrap().removed);
        blobs.delete_unused_chunks(false).unwrap();
        assert!(blobs.has_blob(id).unwrap());
        assert_eq!(
            read_all(&blobs, &id).await.unwrap().len(),
            1000,
            "its bytes are all there"
        );

        collections.remove(&files, &late).unwrap();
        let found = unnamed(&collections).unwrap();
        assert_eq!(unlist_unnamed(&collections, &found).unwrap(), vec![id]);
        let outcome = blobs.drop_removed(&collections).unwrap();
        assert_eq!((outcome.dropped, outcome.relisted), (1, 0));
        assert!(!blobs.has_blob(id).unwrap());
        assert!(blobs.has_blob(named.id).unwrap());
        assert!(blobs.has_blob(persons.id).unwrap());
    }

    /// A blob a person may still choose counts as named: the value a field edited on
    /// two devices did not show, and a version of a record made on two devices.
    #[tokio::test]
    async fn what_a_person_may_still_choose_names_its_blobs() {
        let (va, vb) = (TestVault::new(), TestVault::new());
        let a = Collections::open(va.store.clone(), [1; 16]).unwrap();
        let b = Collections::open(vb.store.clone(), [2; 16]).unwrap();
        // One document each, to merge whole.
        a.set_user_fan_out(1);
        b.set_user_fan_out(1);
        let files = CollectionName::parse("files").unwrap();
        let blob = |n: u8| BlobId([n; 32]);
        let named = |n: u8| {
            let mut record = serde_json::Map::new();
            record.insert("blob".into(), serde_json::json!(blob(n).to_string()));
            record
        };
        let (edited, made) = (
            RecordId::parse("edited").unwrap(),
            RecordId::parse("made").unwrap(),
        );
        a.put(&files, &edited, &named(1)).unwrap();
        b.merge_document(&files, &a.save_document(&files).unwrap())
            .unwrap();
        a.put(&files, &edited, &named(2)).unwrap();
        b.put(&files, &edited, &named(3)).unwrap();
        a.put(&files, &made, &named(4)).unwrap();
        b.put(&files, &made, &named(5)).unwrap();
        a.merge_document(&files, &b.save_document(&files).unwrap())
            .unwrap();
        let wanted: HashSet<BlobId> = (1..=6).map(blob).collect();
        let found = named_among(&a, &wanted).unwrap();
        let expected: HashSet<BlobId> = [2, 3, 4, 5].into_iter().map(blob).collect();
        assert_eq!(found, expected, "both sides of each conflict, nothing else");
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
