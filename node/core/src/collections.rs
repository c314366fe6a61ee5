//! Collections: one Automerge document per collection, persisted sealed in the store.
//!
//! In: validated collection names, record ids and JSON objects. Out: JSON records.
//! On disk (tree `docs`), a collection is a snapshot plus the incremental changes made
//! since, under keys `name_key || kind || seq` (kind 0 = snapshot, 1 = change), so
//! neither the collection's name nor any record is visible. Tree `collections` maps
//! `name_key` to the sealed name, to list collections. After [`COMPACT_AFTER`] changes
//! (or [`COMPACT_BYTES`] of them), once they add up to half the last snapshot's size,
//! the document is saved whole and the changes it covers dropped, in one atomic batch
//! — so saving a large document is paid for by as many bytes of changes, not every
//! 256 small ones. That save runs on a thread of its own, from a copy of the document
//! (`storage::Compaction`): the collection's writers and sync wait only for the copy.
//! Values over [`DOC_PIECE`] bytes are stored in pieces (docs/FORMATS.md).
//!
//! This file holds the cache, reads and writes; beside it: `storage` (how a document
//! is kept on disk and loaded), `history` (heads, changes since, sync, snapshots),
//! `conflicts` (the merge step and what it leaves for a person) and `combined` (writes
//! queued together and persisted once).
//!
//! Calls here are synchronous and may take milliseconds on large collections; async
//! callers run them on the blocking pool and then await [`Store::commit`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, AutoCommit, AutomergeError, ChangeHash, ReadDoc};
use hearth_protocol::api::CollectionInfo;
use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Map, Value as Json};
use tokio::sync::broadcast;

use crate::recordmerge;
use zeroize::Zeroizing;

use crate::commits::MarkCheck;
use crate::index::{Entries, Mark, Part, RecordIndex, Stored};
use crate::records;
use crate::store::{SealedBatch, SealedTree, Store, StoreError};

mod combined;
mod conflicts;
mod history;
mod log;
mod migrate;
pub use migrate::Split;
mod parts;
mod storage;
pub use combined::EditRefused;
pub(crate) use conflicts::conflicts_list;
pub use conflicts::{RecordConflict, RecordConflicts, Removal};
use conflicts::{merged, notice_id};
pub use history::Snapshot;
pub use log::{LOG_KEEP, LogPosition};
pub(crate) use parts::PartName;
use parts::part_number;
pub use parts::{IN_PARTS, PARTS};

/// Changes kept beside a snapshot before the collection is compacted.
pub const COMPACT_AFTER: u64 = 256;
/// Or bytes of changes: a few large changes (imports, a device catching up) are
/// compacted too, since loading a document from its snapshot is much faster than
/// applying its changes one by one (a 500,000-message mailbox in 250 changes of
/// 2,000 messages took 41 s to load).
const COMPACT_BYTES: usize = 16 << 20;
const KIND_SNAPSHOT: u8 = 0;
const KIND_CHANGE: u8 = 1;
/// The largest document value (a snapshot or a change) stored under one key; larger
/// ones are cut into pieces of this size, each under its own key.
/// - sled keeps values inside its tree nodes and writes a node whole every few changes
///   to it: one large value in the node that new changes are appended to made every
///   few of them rewrite it (a 30 MiB value: two writes of ~100 ms in the next 16; in
///   64 KiB pieces: none over 1 ms — docs/BENCHMARKS.md).
/// - sled never drops from memory a node it keeps apart from its log, which a node
///   holding values of 16 KB and more becomes: every such value read stayed in memory
///   until the store closed, whatever its cache capacity, and a node's memory grew
///   with everything it read (`store::tests::measure_what_sled_keeps_of_what_it_read`).
///   Values of 4 KiB (sealed: 4,136 bytes) are let go once sled's cache has counted
///   them. Values written before in larger pieces are read as they are, and written
///   in these by the next compaction.
const DOC_PIECE: usize = 4 * 1024;
const NAME_DOMAIN: &str = "collection";
/// For [`Collections::try_mutate`]: the records touched are found from the change.
const FROM_CHANGES: Option<&[&str]> = None;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("collection {collection} is corrupt: {reason}")]
    Document { collection: String, reason: String },
    #[error("record operation failed in collection {collection}: {reason}")]
    Automerge { collection: String, reason: String },
    #[error("a sync message for collection {collection} is malformed: {reason}")]
    BadSyncMessage { collection: String, reason: String },
    #[error("{0}")]
    BadEdit(String),
    /// A write to a collection its request did not name ([`Collections::write_across`]).
    #[error("a write to collection {0}, which its request did not lock")]
    NotLocked(String),
    /// What reads a collection as one document, asked of one kept in parts (its
    /// history and sync work per part only once docs/design/bounded-documents.md's
    /// steps 2 and 3 land; until then every collection of a running node is kept in
    /// one part).
    #[error("collection {collection} is kept in parts, and {what} is not built for parts yet")]
    InParts {
        collection: String,
        what: &'static str,
    },
    /// A failure shared by writes persisted together ([`combined`]): each is answered
    /// with the one failure's code and message.
    #[error("{message}")]
    Shared {
        code: hearth_protocol::api::ErrorCode,
        message: String,
    },
}

impl CollectionError {
    /// The API error code this failure is answered with.
    pub fn code(&self) -> hearth_protocol::api::ErrorCode {
        use hearth_protocol::api::ErrorCode;
        match self {
            CollectionError::Store(e) => e.code(),
            CollectionError::Document { .. } => ErrorCode::Corrupt,
            CollectionError::BadEdit(_) => ErrorCode::BadRequest,
            CollectionError::Automerge { .. }
            | CollectionError::BadSyncMessage { .. }
            | CollectionError::NotLocked(_)
            | CollectionError::InParts { .. } => ErrorCode::Internal,
            CollectionError::Shared { code, .. } => *code,
        }
    }

    /// This failure, for each of the writes it failed together.
    fn shared(&self) -> CollectionError {
        CollectionError::Shared {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// Collections changed (locally or by sync) are announced here, so sync sessions can
/// push them to other devices. A receiver that lags should resync every collection.
const CHANGE_CHANNEL: usize = 1024;

/// A part of a collection that changed (locally or by sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub collection: CollectionName,
    pub part: u16,
    /// Whether the change arrived from another device (sync, a part sent whole, a
    /// restore), not written here.
    pub arrived: bool,
}

pub struct Collections {
    store: Arc<Store>,
    names: SealedTree,
    docs: SealedTree,
    /// Every collection's change log ([`log`]), its epoch, and the heads its writers
    /// hold, by name key.
    log: SealedTree,
    epoch: u64,
    logs: Mutex<HashMap<[u8; 32], Arc<Mutex<log::LogHead>>>>,
    /// Collections kept in parts (by name key) found to agree with the commit record
    /// this run ([`Collections::verify_parts`]).
    verified: Mutex<HashSet<[u8; 32]>>,
    /// Entries kept in each log: [`LOG_KEEP`] (tests set fewer).
    log_keep: std::sync::atomic::AtomicU64,
    /// Every record as it reads now, for reads that need no document ([`crate::index`]).
    index: RecordIndex,
    actor: ActorId,
    /// How many parts the collections of the classes kept in parts have: [`PARTS`]
    /// (tests set others).
    user_fan_out: std::sync::atomic::AtomicU16,
    open: Mutex<HashMap<PartName, Slot>>,
    /// One gate per part being loaded: loads of one part wait for each other there,
    /// and nothing else waits for a load (`open` is not held meanwhile).
    loading: Mutex<HashMap<PartName, Arc<Mutex<()>>>>,
    /// Counts uses, to find the least recently used collection.
    uses: AtomicU64,
    /// The documents kept in memory, counted by an estimate of their memory (see
    /// [`Collections::set_cache_budget`]).
    budget: AtomicUsize,
    changes: broadcast::Sender<Changed>,
    /// Collections (by name key) being compacted: one compaction at a time each.
    compacting: Arc<Mutex<HashSet<[u8; 32]>>>,
    /// Held while a collection's document keys are read whole (a load) and while a
    /// compaction replaces some of them, so a load never sees half of that.
    layout: Arc<Mutex<()>>,
    /// Record writes waiting to be persisted together, by collection ([`combined`]).
    writes: Mutex<HashMap<CollectionName, combined::Queue>>,
}

/// A collection in memory, with what the cache needs to choose which to drop.
struct Slot {
    collection: Arc<Mutex<Collection>>,
    /// Its memory when last used, as [`Collection::in_memory`] estimates it.
    bytes: usize,
    /// When it was last used, on the `uses` counter.
    used: u64,
}

/// The default cache budget: documents taking about 64 MiB of memory.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// What a document takes in memory for each of its operations, beside its saved
/// bytes (see [`Collection::in_memory`]).
const BYTES_AN_OP: usize = 26;

/// A part of a collection in memory (the whole collection, when it is kept in one).
struct Collection {
    name: CollectionName,
    part: u16,
    /// Where it is kept: its own key and the collection's.
    at: Part,
    doc: AutoCommit,
    /// Heads covered by what is on disk; the next change saved is everything after.
    persisted_heads: Vec<ChangeHash>,
    /// Whether the part is listed in the `collections` tree (a part only read is not).
    listed: bool,
    /// The record count if the record index is current with `persisted_heads`; `None`
    /// if it must be built again from the document.
    indexed: Option<u64>,
    next_seq: u64,
    changes_since_snapshot: u64,
    /// Bytes of those changes, and of the snapshot they follow.
    change_bytes: usize,
    snapshot_bytes: usize,
    /// Set when persisting a change failed: memory is ahead of the disk, so this copy
    /// must not be used again (a writer waiting on its lock reloads from disk instead).
    stale: bool,
    /// The saved document `doc` was loaded from, when a peer sent the part whole onto
    /// nothing ([`Collections::receive_whole`]): the next persist stores it as the
    /// part's snapshot, as it came, instead of saving every change again.
    whole: Option<Zeroizing<Vec<u8>>>,
}

/// How [`Collections::write_many_with`]'s `decide` reads a record: as the collection
/// holds it under the lock, without its `"id"`; `None` if there is none.
pub type Lookup<'a> =
    dyn FnMut(&RecordId) -> Result<Option<Map<String, Json>>, CollectionError> + 'a;

/// How [`Collections::write_across`]'s `decide` reads a record of one of its
/// collections: as that collection holds it under its lock, without its `"id"`.
pub type LookupIn<'a> = dyn FnMut(&CollectionName, &RecordId) -> Result<Option<Map<String, Json>>, CollectionError>
    + 'a;

/// How [`Collections::write_across_fields`]'s `decide` reads only some top-level
/// fields of a record (`None` if there is no record; a field it lacks is left out).
pub type FieldsIn<'a> = dyn FnMut(&CollectionName, &RecordId, &[&str]) -> Result<Option<Map<String, Json>>, CollectionError>
    + 'a;

/// How [`Collections::write_across_docs`]'s `decide` reads a locked document: the one
/// that holds a record.
pub(crate) type DocsIn<'a> =
    dyn Fn(&CollectionName, &RecordId) -> Result<&'a AutoCommit, CollectionError> + 'a;

/// What [`Collections::write_across`] writes: records of several collections.
pub type WritesIn = Vec<(CollectionName, RecordId, RecordWrite)>;

/// A record before and after some changes, each with its `"id"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordChange {
    pub id: String,
    pub before: Option<Map<String, Json>>,
    pub after: Option<Map<String, Json>>,
}

/// What a checked write does to a record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordWrite {
    /// Merge a patch (RFC 7396) into the existing record.
    Patch(Map<String, Json>),
    /// Create the record with these fields.
    Put(Map<String, Json>),
    /// Remove the record.
    Remove,
    /// Write these fields as the record's only version, in place of every version it
    /// holds (a person's merge of versions in conflict).
    Replace(Map<String, Json>),
}

/// Why a change to a document was abandoned: Automerge failed, or the caller refused.
enum Abandon<E> {
    Automerge(AutomergeError),
    Refused(E),
}

impl<E> From<AutomergeError> for Abandon<E> {
    fn from(e: AutomergeError) -> Self {
        Abandon::Automerge(e)
    }
}

/// The Automerge actor id of a device for one run of the node: the device's tag
/// ([`device_tag`]) followed by a random value drawn at each start. Never the same
/// across runs, because a crash can lose a change this device had already sent to
/// another one; reusing the actor would then give its next change the same (actor,
/// seq) as the lost one, and the other device would refuse it — that document would
/// stop syncing between them for good. The tag says which device made a change (a
/// conflict names the devices that deleted and edited a record).
pub fn actor_for(peer: &libp2p_identity::PeerId) -> [u8; 16] {
    let mut actor = [0u8; 16];
    actor[..recordmerge::DEVICE_TAG_LEN].copy_from_slice(&device_tag(peer));
    actor[recordmerge::DEVICE_TAG_LEN..].copy_from_slice(&rand::random::<[u8; 8]>());
    actor
}

/// The first bytes of every Automerge actor id a device uses: a hash of its PeerId
/// (enough to tell the vault's devices apart in a change's author).
pub fn device_tag(peer: &libp2p_identity::PeerId) -> [u8; recordmerge::DEVICE_TAG_LEN] {
    let hash = blake3::derive_key("hearth device tag v1", &peer.to_bytes());
    hash[..recordmerge::DEVICE_TAG_LEN]
        .try_into()
        .expect("a BLAKE3 hash has 32 bytes")
}

/// Empty collections a person removed (`hearth rm COLLECTION`), by name.
fn dropped_list() -> CollectionName {
    CollectionName::parse("_dropped").expect("_dropped is a valid system collection name")
}

/// Where records can be read from: the live collections, or a [`Snapshot`] of them.
pub trait RecordSource {
    /// Every collection's name, sorted.
    fn collection_names(&self) -> Result<Vec<CollectionName>, CollectionError>;
    /// All records of a collection, each with its `"id"`, sorted by id.
    fn collection_records(&self, name: &CollectionName) -> Result<Vec<Json>, CollectionError>;
}

impl RecordSource for Collections {
    fn collection_names(&self) -> Result<Vec<CollectionName>, CollectionError> {
        self.names()
    }

    fn collection_records(&self, name: &CollectionName) -> Result<Vec<Json>, CollectionError> {
        self.records(name)
    }
}

impl<T: RecordSource> RecordSource for Arc<T> {
    fn collection_names(&self) -> Result<Vec<CollectionName>, CollectionError> {
        (**self).collection_names()
    }

    fn collection_records(&self, name: &CollectionName) -> Result<Vec<Json>, CollectionError> {
        (**self).collection_records(name)
    }
}

impl Collections {
    /// `actor` identifies this device's edits in every document.
    pub fn open(store: Arc<Store>, actor: [u8; 16]) -> Result<Self, StoreError> {
        let log = store.tree("log")?;
        Ok(Self {
            names: store.tree("collections")?,
            docs: store.tree("docs")?,
            epoch: log::epoch(&log)?,
            log,
            logs: Mutex::default(),
            log_keep: std::sync::atomic::AtomicU64::new(LOG_KEEP),
            verified: Mutex::default(),
            index: RecordIndex::open(store.clone())?,
            store,
            actor: ActorId::from(actor),
            user_fan_out: std::sync::atomic::AtomicU16::new(PARTS),
            open: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
            budget: AtomicUsize::new(DEFAULT_CACHE_BYTES),
            changes: broadcast::channel(CHANGE_CHANNEL).0,
            compacting: Arc::default(),
            layout: Arc::default(),
            writes: Mutex::default(),
        })
    }

    /// How much of the vault's documents stays in memory, counted by an estimate of
    /// the memory each takes ([`Collection::in_memory`]). After each use, the least
    /// recently used collections nobody is using are dropped until the rest fit; the
    /// one just used always stays. Dropping loses nothing: memory never runs ahead of
    /// the disk, and the next use loads it.
    pub fn set_cache_budget(&self, bytes: usize) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    /// How many collections are in memory now, and the memory they take (estimated).
    pub fn cached(&self) -> (usize, usize) {
        let open = self.open_slots();
        (open.len(), open.values().map(|s| s.bytes).sum())
    }

    fn open_slots(&self) -> std::sync::MutexGuard<'_, HashMap<PartName, Slot>> {
        self.open
            .lock()
            .expect("open-collections lock is never poisoned")
    }

    /// Notes that `c` was just used (by a caller holding its lock) and drops the least
    /// recently used collections until the cache fits its budget. A collection whose
    /// `Arc` only the cache holds is in no one's hands, and no one can take it without
    /// the cache's lock, held here: dropping it cannot race with a use.
    fn used(&self, c: &Collection) {
        let mut open = self.open_slots();
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let this = c.id();
        if let Some(slot) = open.get_mut(&this) {
            slot.bytes = c.in_memory();
            slot.used = tick;
        }
        let budget = self.budget.load(Ordering::Relaxed);
        let mut total: usize = open.values().map(|s| s.bytes).sum();
        while total > budget {
            let Some((name, bytes)) = open
                .iter()
                .filter(|(part, slot)| **part != this && Arc::strong_count(&slot.collection) == 1)
                .min_by_key(|(_, slot)| slot.used)
                .map(|(name, slot)| (name.clone(), slot.bytes))
            else {
                break;
            };
            open.remove(&name);
            total -= bytes;
            tracing::debug!(collection = %name.name, part = name.part, bytes, "dropped a collection from memory");
        }
    }

    /// The parts of collections that change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Changed> {
        self.changes.subscribe()
    }

    /// Every collection that has ever been written, the system's included, sorted.
    pub fn names(&self) -> Result<Vec<CollectionName>, CollectionError> {
        let mut names = Vec::new();
        for entry in self.names.scan_prefix(&[]) {
            let (key, name) = entry?;
            if key.len() != 32 {
                // A part's listing, beside its collection's.
                continue;
            }
            let name = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| CollectionName::parse(n).ok())
                .ok_or_else(|| {
                    StoreError::Malformed("a stored collection name is not valid".into())
                })?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Every user collection that has ever been written, sorted by name, with record
    /// counts. System collections (`_devices`, ...) have their own routes.
    pub fn list(&self) -> Result<Vec<CollectionInfo>, CollectionError> {
        let mut out = Vec::new();
        for name in self.names()? {
            if name.is_system() {
                continue;
            }
            let records = self.count(&name)? as u64;
            // An empty collection a person removed is not shown (it shows again once
            // it holds a record).
            if records == 0 && self.dropped(&name)? {
                continue;
            }
            out.push(CollectionInfo {
                name: name.to_string(),
                records,
            });
        }
        Ok(out)
    }

    /// Removes an empty collection from the listings, on every device (the system
    /// collection `_dropped` records it). `Ok(false)`: it still holds records.
    pub fn drop_empty(&self, name: &CollectionName) -> Result<bool, CollectionError> {
        if self.count(name)? > 0 {
            return Ok(false);
        }
        let Ok(id) = RecordId::parse(name.as_str()) else {
            return Ok(false);
        };
        let mut record = Map::new();
        record.insert("dropped_at".into(), Json::from(crate::clock::now_unix()));
        self.put(&dropped_list(), &id, &record)?;
        Ok(true)
    }

    fn dropped(&self, name: &CollectionName) -> Result<bool, CollectionError> {
        let Ok(id) = RecordId::parse(name.as_str()) else {
            return Ok(false);
        };
        Ok(self.get(&dropped_list(), &id)?.is_some())
    }

    /// How many records a collection holds (0 for one never written).
    pub fn count(&self, name: &CollectionName) -> Result<usize, CollectionError> {
        let key = self.indexed(name)?;
        let count: u64 = match self.fan_out(name) {
            1 => self.index.mark(&Part::whole(key))?.count,
            _ => self
                .index
                .part_marks(&key)?
                .iter()
                .map(|(_, m)| m.count)
                .sum(),
        };
        Ok(count as usize)
    }

    /// All records of a collection, each with its `"id"`, sorted by id.
    pub fn records(&self, name: &CollectionName) -> Result<Vec<Json>, CollectionError> {
        Ok(self.page(name, None, usize::MAX, Some)?.0)
    }

    /// A page of a collection: the records after record `after` (from the first
    /// without it) in the record index's order (a keyed hash of each id: fixed, but
    /// telling nothing about the ids), that `keep` keeps (and as it returns them),
    /// until `limit` are kept. Only the records looked at are read. Returns the page
    /// and, when the page is full, the id to continue after (the next page may then be
    /// empty: whether records `keep` refuses follow is not told). The whole collection
    /// (no `after`, no limit) comes sorted by id.
    pub fn page(
        &self,
        name: &CollectionName,
        after: Option<&RecordId>,
        limit: usize,
        mut keep: impl FnMut(Json) -> Option<Json>,
    ) -> Result<(Vec<Json>, Option<String>), CollectionError> {
        let mut out: Vec<(String, Json)> = Vec::new();
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        let key = self.indexed(name)?;
        for entry in self
            .index
            .after(&key, name.as_str(), after.map(RecordId::as_str))?
        {
            let (id, stored) = entry?;
            let Some(record) = self.stored(name, &id, stored)? else {
                // Removed from the document since its entry was read.
                continue;
            };
            if let Some(kept) = keep(with_id(&id, record)) {
                out.push((id, kept));
                if out.len() == limit {
                    let last = out.last().map(|(id, _)| id.clone());
                    return Ok((out.into_iter().map(|(_, r)| r).collect(), last));
                }
            }
        }
        if after.is_none() && limit == usize::MAX {
            out.sort_by(|(a, _), (b, _)| a.cmp(b));
        }
        Ok((out.into_iter().map(|(_, r)| r).collect(), None))
    }

    /// Record `id`, with its `"id"`; `None` if there is none. Read from the record
    /// index: it neither loads the document nor waits for its writers, unless the
    /// record is long ([`records::LONG`]).
    pub fn get(
        &self,
        name: &CollectionName,
        id: &RecordId,
    ) -> Result<Option<Json>, CollectionError> {
        let key = self.indexed(name)?;
        let Some(stored) = self.index.get(&key, name.as_str(), id.as_str())? else {
            return Ok(None);
        };
        Ok(self
            .stored(name, id.as_str(), stored)?
            .map(|record| with_id(id.as_str(), record)))
    }

    /// Only the top-level fields `keys` of record `id` (no `"id"`); `None` if there is
    /// no record. A long record's other fields are not read: a filter decides on these
    /// in the time a short record takes.
    pub fn get_fields(
        &self,
        name: &CollectionName,
        id: &RecordId,
        keys: &[&str],
    ) -> Result<Option<Map<String, Json>>, CollectionError> {
        let key = self.indexed(name)?;
        let Some(stored) = self.index.get(&key, name.as_str(), id.as_str())? else {
            return Ok(None);
        };
        match stored {
            Stored::Record(mut record) => {
                record.retain(|k, _| keys.contains(&k.as_str()));
                Ok(Some(record))
            }
            Stored::InDocument => self.with(&self.part_of(name, id.as_str()), |c| {
                records::read_record_fields(&c.doc, id.as_str(), keys).map_err(|e| c.automerge(e))
            }),
        }
    }

    /// A record as the index holds it, or as its document reads now if the index holds
    /// only its id (a long record; `None` if it was removed meanwhile).
    fn stored(
        &self,
        name: &CollectionName,
        id: &str,
        stored: Stored,
    ) -> Result<Option<Map<String, Json>>, CollectionError> {
        match stored {
            Stored::Record(record) => Ok(Some(record)),
            Stored::InDocument => self.with(&self.part_of(name, id), |c| {
                records::read_record(&c.doc, id).map_err(|e| c.automerge(e))
            }),
        }
    }

    /// The key of a collection whose record index is current: known so, found so
    /// from its mark without the document, or (a vault from before the index, a
    /// document write that failed after its index write) indexed again from the
    /// document.
    fn indexed(&self, name: &CollectionName) -> Result<[u8; 32], CollectionError> {
        let key = self.collection_key(name);
        // Every part found current already (each read would otherwise list the parts
        // and look each up).
        let Err(forgets) = self.index.collection_current(&key) else {
            return Ok(key);
        };
        self.verify_parts(name)?;
        for part in self.parts(name)? {
            let at = self.place_in(key, &part);
            if self.index.is_current(&at)
                || self.index.check(&at, self.store.ledger(), || {
                    self.generation_on_disk(&at.key)
                })?
            {
                // A part indexed before conflicts were noted (a vault of an earlier
                // version): its conflicts are found once from its document; its
                // record entries stand.
                if !name.is_system()
                    && !self.index.conflicts_indexed(&at)?
                    && self.generation_on_disk(&at.key)? > 0
                {
                    self.with(&part, |c| {
                        let mut batch = SealedBatch::default();
                        self.note_every_conflict(c, &mut batch)?;
                        self.index.tree().apply(batch)?;
                        Ok(())
                    })?;
                }
                continue;
            }
            self.with(&part, |c| {
                if c.indexed.is_none() {
                    let mut batch = SealedBatch::default();
                    let heads = c.persisted_heads.clone();
                    let count = self.reindex(c, &mut batch, c.next_seq, heads)?;
                    self.index.tree().apply(batch)?;
                    c.indexed = Some(count);
                }
                self.index.set_current(&c.at);
                Ok(())
            })?;
        }
        self.index.set_collection_current(&key, forgets);
        Ok(key)
    }

    /// Indexes a collection again from its document, all but the mark, which goes
    /// into `batch` for the caller to apply once the document it describes (of
    /// `generation` and `heads`) is on disk ([`RecordIndex::rebuild`]). Returns the
    /// record count.
    fn reindex(
        &self,
        c: &Collection,
        batch: &mut SealedBatch,
        generation: u64,
        heads: Vec<ChangeHash>,
    ) -> Result<u64, CollectionError> {
        let doc = &c.doc;
        let all = records::record_ids(doc).into_iter().map(|id| {
            match records::read_for_index(doc, &id) {
                Ok(record) => Ok((id, record)),
                Err(e) => Err(StoreError::Malformed(format!(
                    "collection {} could not be read to index it: {e}",
                    c.name
                ))),
            }
        });
        let fan_out = self.fan_out(&c.name);
        let ours = |id: &str| part_number(&c.at.collection, fan_out, id) == c.part;
        let count = self.index.rebuild(&c.at, c.name.as_str(), ours, all)?;
        self.note_every_conflict(c, batch)?;
        let mark = Mark {
            generation,
            count,
            heads,
        };
        self.index.set_mark(batch, &c.at, &mark);
        Ok(count)
    }

    /// Adds to `batch` every record of part `c` in conflict (none in a system
    /// collection), and that the part's conflicts are indexed. The part's conflict
    /// entries must be gone already (a rebuild removes them) or be a subset of these
    /// (a part indexed before conflicts were noted has none).
    fn note_every_conflict(
        &self,
        c: &Collection,
        batch: &mut SealedBatch,
    ) -> Result<(), CollectionError> {
        let mut conflicted = Vec::new();
        if !c.name.is_system() {
            for id in records::record_ids(&c.doc) {
                if records::in_conflict(&c.doc, &id).map_err(|e| c.automerge(e))? {
                    conflicted.push(id);
                }
            }
        }
        let conflicted = conflicted.iter().map(|id| (id.as_str(), true));
        (self.index).note_conflicts(batch, &c.at, c.name.as_str(), conflicted, Entries::None)?;
        self.index.set_conflicts_indexed(batch, &c.at);
        Ok(())
    }

    /// Creates or replaces a record; returns whether it was created. Durable only
    /// after [`Store::commit`].
    pub fn put(
        &self,
        name: &CollectionName,
        id: &RecordId,
        record: &Map<String, Json>,
    ) -> Result<bool, CollectionError> {
        self.mutate(
            &self.part_of(name, id.as_str()),
            Some(&[id.as_str()]),
            |doc| records::put_record(doc, id.as_str(), record),
        )
    }

    /// Merges `patch` into a record (RFC 7396); `None` if there is no such record.
    pub fn patch(
        &self,
        name: &CollectionName,
        id: &RecordId,
        patch: &Map<String, Json>,
    ) -> Result<Option<Json>, CollectionError> {
        let found = self.mutate(
            &self.part_of(name, id.as_str()),
            Some(&[id.as_str()]),
            |doc| records::patch_record(doc, id.as_str(), patch),
        )?;
        if found { self.get(name, id) } else { Ok(None) }
    }

    /// Applies text edits to one field of a record, as one change; `false` if there
    /// is no such record. Durable only after [`Store::commit`].
    pub fn edit_text(
        &self,
        name: &CollectionName,
        id: &RecordId,
        field: &str,
        edits: &[records::TextEdit],
    ) -> Result<bool, CollectionError> {
        // All or nothing: a bad edit rolls back the ones applied before it.
        self.try_mutate(
            &self.part_of(name, id.as_str()),
            Some(&[id.as_str()]),
            |doc| {
                records::edit_text(doc, id.as_str(), field, edits).map_err(|e| match e {
                    records::TextEditError::Automerge(e) => Abandon::Automerge(e),
                    other => Abandon::Refused(other.to_string()),
                })
            },
        )?
        .map_err(CollectionError::BadEdit)
    }

    /// Applies writes to several records as one change: all of them are persisted
    /// together, or none. Durable only after [`Store::commit`].
    pub fn write_many(
        &self,
        name: &CollectionName,
        writes: &[(RecordId, RecordWrite)],
    ) -> Result<(), CollectionError> {
        let touching: Vec<_> = writes
            .iter()
            .map(|(id, _)| (name.clone(), id.clone()))
            .collect();
        let all: WritesIn = writes
            .iter()
            .map(|(id, write)| (name.clone(), id.clone(), write.clone()))
            .collect();
        self.write_across(&touching, |_| Ok::<_, std::convert::Infallible>((all, ())))?
            .unwrap_or_else(|never| match never {});
        Ok(())
    }

    /// One request's writes to several collections, as one job: `decide` looks
    /// records up (as their collections hold them under their locks) and says what to
    /// write where. Every record it reads or writes must be in `touching`, so that the
    /// parts holding them are locked (a record elsewhere is refused as
    /// [`CollectionError::NotLocked`]). Each part's writes become one change, and all
    /// the changes are written in one store transaction, so after a crash all of them
    /// are on disk or none is. If `decide` refuses or anything fails, nothing is
    /// written and every document is as it was. The locks are taken in part order, as
    /// [`Collections::snapshot`] takes them, so this cannot deadlock. Durable only
    /// after [`Store::commit`].
    pub fn write_across<T, E>(
        &self,
        touching: &[(CollectionName, RecordId)],
        decide: impl FnOnce(&mut LookupIn<'_>) -> Result<(WritesIn, T), E>,
    ) -> Result<Result<T, E>, CollectionError> {
        self.write_across_fields(touching, |lookup, _| decide(lookup))
    }

    /// [`Collections::write_across`] whose `decide` may also read only some top-level
    /// fields of a record ([`FieldsIn`]): what it needs of a record that may be long
    /// (a folder's kind, not the entries it lists), at the cost of those fields.
    pub fn write_across_fields<T, E>(
        &self,
        touching: &[(CollectionName, RecordId)],
        decide: impl FnOnce(&mut LookupIn<'_>, &mut FieldsIn<'_>) -> Result<(WritesIn, T), E>,
    ) -> Result<Result<T, E>, CollectionError> {
        self.write_across_docs(touching, |docs| {
            let mut lookup = |name: &CollectionName, id: &RecordId| {
                let doc = docs(name, id)?;
                records::read_record(doc, id.as_str()).map_err(|e| automerge_error(name, e))
            };
            let mut fields = |name: &CollectionName, id: &RecordId, keys: &[&str]| {
                let doc = docs(name, id)?;
                records::read_record_fields(doc, id.as_str(), keys)
                    .map_err(|e| automerge_error(name, e))
            };
            decide(&mut lookup, &mut fields)
        })
    }

    /// [`Collections::write_across`] whose `decide` reads the locked documents
    /// themselves (a record's versions, not only the record).
    pub(crate) fn write_across_docs<T, E>(
        &self,
        touching: &[(CollectionName, RecordId)],
        decide: impl FnOnce(&DocsIn<'_>) -> Result<(WritesIn, T), E>,
    ) -> Result<Result<T, E>, CollectionError> {
        let mut parts: Vec<PartName> = touching
            .iter()
            .map(|(name, id)| self.part_of(name, id.as_str()))
            .collect();
        parts.sort();
        parts.dedup();
        self.with_all(&parts, |guards| {
            Ok(self.write_locked(&parts, guards, decide))
        })?
    }

    /// Runs `f` with every part of `parts` (sorted, no repeats) loaded and locked, the
    /// locks taken in that order. Whoever holds several locks takes them this way (a
    /// snapshot, a write across collections), so none can deadlock with another.
    fn with_all<R>(
        &self,
        parts: &[PartName],
        f: impl FnOnce(&mut [std::sync::MutexGuard<'_, Collection>]) -> Result<R, CollectionError>,
    ) -> Result<R, CollectionError> {
        'again: loop {
            let loaded = parts
                .iter()
                .map(|part| self.load(part))
                .collect::<Result<Vec<_>, _>>()?;
            let mut guards = Vec::with_capacity(loaded.len());
            for collection in &loaded {
                let guard = self.lock(collection);
                if guard.stale {
                    // Dropped from memory after a failed write: load it again.
                    continue 'again;
                }
                guards.push(guard);
            }
            return f(&mut guards);
        }
    }

    /// [`Collections::write_across`] once every part is locked (`guards`, in the
    /// order of `parts`).
    fn write_locked<T, E>(
        &self,
        parts: &[PartName],
        guards: &mut [std::sync::MutexGuard<'_, Collection>],
        decide: impl FnOnce(&DocsIn<'_>) -> Result<(WritesIn, T), E>,
    ) -> Result<Result<T, E>, CollectionError> {
        let locked = |name: &CollectionName, id: &RecordId| {
            parts
                .binary_search(&self.part_of(name, id.as_str()))
                .map_err(|_| CollectionError::NotLocked(name.to_string()))
        };
        let decided = {
            let guards = &*guards;
            let docs = |name: &CollectionName, id: &RecordId| Ok(&guards[locked(name, id)?].doc);
            decide(&docs)
        };
        let (writes, value) = match decided {
            Ok(decided) => decided,
            Err(e) => return Ok(Err(e)),
        };
        let mut by_part: Vec<Vec<(RecordId, RecordWrite)>> = vec![Vec::new(); parts.len()];
        for (name, id, write) in writes {
            by_part[locked(&name, &id)?].push((id, write));
        }
        // Every document changed, then every change prepared, then one write: a
        // failure anywhere before the write rolls every document back.
        let mut failed = None;
        for (c, writes) in guards.iter_mut().zip(&by_part) {
            if let Err(e) = apply_writes(&mut c.doc, writes) {
                failed = Some(c.automerge(e));
                break;
            }
        }
        if let Some(e) = failed {
            for c in guards.iter_mut() {
                c.doc.rollback();
            }
            return Err(e);
        }
        let touched: Vec<Vec<&str>> = by_part
            .iter()
            .map(|writes| writes.iter().map(|(id, _)| id.as_str()).collect())
            .collect();
        self.persist_together(guards, &touched)?;
        Ok(Ok(value))
    }

    /// Persists what was done to the locked parts `guards` since their last persist,
    /// in one store transaction: each part's change with the records it touched
    /// (`touched`, by part), then each is announced. If anything fails, every part is
    /// forgotten (memory may be ahead of the disk) and read again on its next use.
    fn persist_together(
        &self,
        guards: &mut [std::sync::MutexGuard<'_, Collection>],
        touched: &[Vec<&str>],
    ) -> Result<(), CollectionError> {
        let mut store_writes = storage::Writes::default();
        let mut prepared = Vec::with_capacity(guards.len());
        let mut result = Ok(());
        // Each collection's log head, held until the write is done (parts sort by
        // collection, so these are taken in name order).
        let mut collections: Vec<[u8; 32]> = guards.iter().map(|c| c.at.collection).collect();
        collections.dedup();
        let heads = self.log_heads(&collections);
        let mut heads: Vec<_> = heads
            .iter()
            .map(|h| h.lock().expect("log head lock is never poisoned"))
            .collect();
        for (c, ids) in guards.iter_mut().zip(touched) {
            let at = collections
                .iter()
                .position(|k| *k == c.at.collection)
                .expect("every part's collection has its head");
            match self.prepare(c, Some(ids), &mut store_writes, &mut heads[at]) {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.write(store_writes);
        }
        drop(heads);
        if let Err(e) = result {
            // Memory is ahead of the disk in every part changed: each is forgotten,
            // and read again from the disk on its next use.
            for c in guards.iter_mut() {
                self.forget(c);
            }
            return Err(e);
        }
        let mut changed = Vec::new();
        for (c, p) in guards.iter_mut().zip(prepared) {
            if let Some(p) = p {
                self.finish(c, p);
                changed.push(c.changed(false));
            }
        }
        for changed in changed {
            // Nobody listening is fine: nothing is syncing.
            drop(self.changes.send(changed));
        }
        for c in guards.iter() {
            self.used(c);
        }
        Ok(())
    }

    /// As [`Collections::write_many`], only if record `watched` reads as `expected`
    /// (as [`Collections::get`] gives it; `None`: absent) when the writes are applied,
    /// checked under the locks of the writes: a compare-and-set. Otherwise nothing is
    /// written and the record as it reads now is returned. Durable only after
    /// [`Store::commit`].
    pub fn write_many_unless_changed(
        &self,
        name: &CollectionName,
        watched: &RecordId,
        expected: Option<&Json>,
        writes: &[(RecordId, RecordWrite)],
    ) -> Result<Result<(), Option<Json>>, CollectionError> {
        let mut touching = vec![(name.clone(), watched.clone())];
        touching.extend(writes.iter().map(|(id, _)| (name.clone(), id.clone())));
        let written = self.write_across(&touching, |lookup| {
            let now = lookup(name, watched)
                .map_err(Refused::Failed)?
                .map(|r| with_id(watched.as_str(), r));
            if now.as_ref() != expected {
                return Err(Refused::By(now));
            }
            let writes = writes
                .iter()
                .map(|(id, write)| (name.clone(), id.clone(), write.clone()))
                .collect();
            Ok((writes, ()))
        })?;
        Refused::sort(written)
    }

    /// Removes record `id`, and with it (in the same write) its delete notice in
    /// `_conflicts` if it has one; `false` if there was no such record. Durable only
    /// after [`Store::commit`].
    pub fn remove(&self, name: &CollectionName, id: &RecordId) -> Result<bool, CollectionError> {
        if name.is_system() {
            // System collections have no notices (and `_conflicts` is one of them).
            return self.mutate(
                &self.part_of(name, id.as_str()),
                Some(&[id.as_str()]),
                |doc| records::remove_record(doc, id.as_str()),
            );
        }
        let (notices, notice) = (conflicts_list(), notice_id(name, id.as_str()));
        let touching = [
            (name.clone(), id.clone()),
            (notices.clone(), notice.clone()),
        ];
        self.write_across(&touching, |lookup| {
            if lookup(name, id)?.is_none() {
                return Ok((Vec::new(), false));
            }
            let mut writes = vec![(name.clone(), id.clone(), RecordWrite::Remove)];
            if lookup(&notices, &notice)?.is_some() {
                writes.push((notices.clone(), notice.clone(), RecordWrite::Remove));
            }
            Ok::<_, CollectionError>((writes, true))
        })?
    }

    fn with<R>(
        &self,
        part: &PartName,
        f: impl FnOnce(&mut Collection) -> Result<R, CollectionError>,
    ) -> Result<R, CollectionError> {
        loop {
            let collection = self.load(part)?;
            let mut collection = self.lock(&collection);
            // A copy whose change failed to persist (or whose holder panicked) was
            // dropped from `open` while we waited for its lock: the next `load` reads
            // the disk again.
            if collection.stale {
                continue;
            }
            let result = f(&mut collection);
            if !collection.stale {
                self.used(&collection);
            }
            return result;
        }
    }

    /// Locks a loaded part. A lock poisoned by a panic while it was held (the
    /// document may hold half a change, or changes never persisted) gives up that
    /// copy: it is marked stale and dropped from the cache, so the caller loads the
    /// part again from the disk, where nothing of the failed request is. One
    /// panicking request never leaves a collection dead until a restart.
    fn lock<'a>(&self, collection: &'a Mutex<Collection>) -> std::sync::MutexGuard<'a, Collection> {
        match collection.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                if !guard.stale {
                    guard.stale = true;
                    self.index.forget(&guard.at);
                    self.open_slots().remove(&guard.id());
                    tracing::warn!(collection = %guard.name, "a request panicked while it held a collection; it is read again from the disk");
                }
                collection.clear_poison();
                guard
            }
        }
    }

    fn mutate<R>(
        &self,
        part: &PartName,
        touched: Option<&[&str]>,
        change: impl FnOnce(&mut AutoCommit) -> Result<R, AutomergeError>,
    ) -> Result<R, CollectionError> {
        self.try_mutate(part, touched, |doc| {
            change(doc).map_err(Abandon::<std::convert::Infallible>::Automerge)
        })?
        .map_err(|never| match never {})
    }

    /// Runs `change` on a part's document and persists what it did; if it refuses (or
    /// Automerge fails), everything it did is rolled back and nothing is persisted.
    /// `touched`: the only records `change` can touch (a local write knows them; all
    /// of them in `part`), or [`FROM_CHANGES`] to find them from the change's
    /// operations (what sync brings).
    fn try_mutate<R, E>(
        &self,
        part: &PartName,
        touched: Option<&[&str]>,
        change: impl FnOnce(&mut AutoCommit) -> Result<R, Abandon<E>>,
    ) -> Result<Result<R, E>, CollectionError> {
        self.with(part, |c| {
            let result = match change(&mut c.doc) {
                Ok(result) => result,
                Err(Abandon::Refused(e)) => {
                    c.doc.rollback();
                    return Ok(Err(e));
                }
                Err(Abandon::Automerge(e)) => {
                    c.doc.rollback();
                    return Err(c.automerge(e));
                }
            };
            self.persist_or_forget(c, touched)?;
            Ok(Ok(result))
        })
    }

    /// Persists what was done to `c` since its last persist and announces it; if that
    /// fails, memory (and perhaps the document on disk) is ahead of the index: both are
    /// forgotten, and the next use reloads and indexes again.
    fn persist_or_forget(
        &self,
        c: &mut Collection,
        touched: Option<&[&str]>,
    ) -> Result<(), CollectionError> {
        match self.persist(c, touched) {
            // Nobody listening is fine: nothing is syncing.
            Ok(true) => drop(self.changes.send(c.changed(touched == FROM_CHANGES))),
            Ok(false) => {}
            Err(e) => {
                self.forget(c);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Gives up this copy of `c` (memory is ahead of the disk, or may be): it is marked
    /// stale and dropped with its index mark, so the next use reads the disk again.
    fn forget(&self, c: &mut Collection) {
        c.stale = true;
        self.index.forget(&c.at);
        self.open_slots().remove(&c.id());
    }
}

impl Collection {
    /// The memory this document takes, estimated: its saved bytes and [`BYTES_AN_OP`]
    /// an operation. Measured (`migrate::tests::measure_parts_in_memory`, 100,000
    /// messages in 256 parts): the parts freed 60 MiB when dropped, for 28.7 MiB saved
    /// and 1.2 million operations (this says 58.5); with a 1,824-byte text each, 236
    /// MiB, for 203.5 MiB and 1.3 million (this says 235.7). The saved size alone was
    /// half of the first.
    fn in_memory(&self) -> usize {
        let ops = usize::try_from(self.doc.stats().num_ops).unwrap_or(usize::MAX);
        (self.snapshot_bytes + self.change_bytes).saturating_add(ops.saturating_mul(BYTES_AN_OP))
    }

    fn changed(&self, arrived: bool) -> Changed {
        Changed {
            collection: self.name.clone(),
            part: self.part,
            arrived,
        }
    }

    fn id(&self) -> PartName {
        PartName {
            name: self.name.clone(),
            part: self.part,
        }
    }

    fn automerge(&self, e: AutomergeError) -> CollectionError {
        automerge_error(&self.name, e)
    }
}

/// Why a `decide` that also reads records wrote nothing: it refused (`By`), or a read
/// failed.
enum Refused<E> {
    By(E),
    Failed(CollectionError),
}

impl<E> Refused<E> {
    /// A [`Collections::write_across`] outcome with such a `decide`, as the callers
    /// answer it: a refusal inside, a failure outside.
    fn sort<T>(written: Result<T, Refused<E>>) -> Result<Result<T, E>, CollectionError> {
        match written {
            Ok(value) => Ok(Ok(value)),
            Err(Refused::By(e)) => Ok(Err(e)),
            Err(Refused::Failed(e)) => Err(e),
        }
    }
}

/// Automerge failing on collection `name`.
fn automerge_error(name: &CollectionName, e: AutomergeError) -> CollectionError {
    CollectionError::Automerge {
        collection: name.to_string(),
        reason: e.to_string(),
    }
}

/// Reads record `id` (without its `"id"`), lets `decide` say what to write, and writes
/// it: a check and the change it allows see the same record. Returns whether the
/// record existed and what `decide` gave back.
fn apply_checked<T, E>(
    doc: &mut AutoCommit,
    id: &str,
    decide: impl FnOnce(Option<&Map<String, Json>>) -> Result<(RecordWrite, T), E>,
) -> Result<(bool, T), Abandon<E>> {
    let before = records::read_record(doc, id)?;
    let (write, out) = decide(before.as_ref()).map_err(Abandon::Refused)?;
    match write {
        RecordWrite::Patch(patch) => records::patch_record(doc, id, &patch)?,
        RecordWrite::Put(record) => records::put_record(doc, id, &record)?,
        RecordWrite::Remove => records::remove_record(doc, id)?,
        RecordWrite::Replace(record) => {
            records::replace_record(doc, id, &record)?;
            true
        }
    };
    Ok((before.is_some(), out))
}

/// Applies each write to its record.
fn apply_writes(
    doc: &mut AutoCommit,
    writes: &[(RecordId, RecordWrite)],
) -> Result<(), AutomergeError> {
    for (id, write) in writes {
        match write {
            RecordWrite::Patch(patch) => {
                records::patch_record(doc, id.as_str(), patch)?;
            }
            RecordWrite::Put(record) => {
                records::put_record(doc, id.as_str(), record)?;
            }
            RecordWrite::Remove => {
                records::remove_record(doc, id.as_str())?;
            }
            RecordWrite::Replace(record) => {
                records::replace_record(doc, id.as_str(), record)?;
            }
        }
    }
    Ok(())
}

fn with_id(id: &str, record: Map<String, Json>) -> Json {
    Json::Object(with_id_map(id, record))
}

fn with_id_map(id: &str, record: Map<String, Json>) -> Map<String, Json> {
    let mut out = Map::with_capacity(record.len() + 1);
    out.insert("id".to_owned(), Json::String(id.to_owned()));
    out.extend(record);
    out
}

#[cfg(test)]
mod tests {
    use super::storage::*;
    use super::*;
    use crate::testutil::TestVault;
    use serde_json::json;

    /// These tests are of one document's mechanics (storage, compaction, the cache,
    /// merges, history): their collections are kept in one part each, as every part
    /// is one such document. `parts.rs` tests collections kept in parts.
    pub(crate) fn one_part(c: Collections) -> Collections {
        c.set_user_fan_out(1);
        c
    }

    /// For the measurements run by hand: the size environment variable `var` gives,
    /// else `default`.
    pub(super) fn measured_size(var: &str, default: usize) -> usize {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    pub(super) fn name(n: &str) -> CollectionName {
        CollectionName::parse(n).unwrap()
    }
    pub(super) fn id(i: &str) -> RecordId {
        RecordId::parse(i).unwrap()
    }
    pub(super) fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }
    /// Puts record `r{i}`, `{"n": i}`, into `collection`.
    pub(super) fn put_numbered(c: &Collections, collection: &CollectionName, i: u64) {
        c.put(collection, &id(&format!("r{i}")), &obj(json!({"n": i})))
            .unwrap();
    }
    /// The kind and number of each document value of the collection named by `key`.
    pub(super) fn doc_kinds(store: &Store, key: &[u8; 32]) -> Vec<(u8, u64)> {
        let mut kinds: Vec<(u8, u64)> = store
            .tree("docs")
            .unwrap()
            .keys_with_prefix(key)
            .map(|k| parse_doc_key(key, &k.unwrap()).unwrap())
            .collect();
        // A value's pieces, one after the other, are one value.
        kinds.dedup();
        kinds
    }

    /// A writer adds record k to `a`, then record k to `b`, again and again: a
    /// snapshot taken meanwhile never shows more in `b` than in `a`, nor `a` more than
    /// one ahead — every collection at one moment. Reads after the snapshot do not
    /// see later writes.
    #[test]
    fn a_snapshot_is_one_moment_across_collections() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let (a, b) = (name("a"), name("b"));
        c.put(&a, &id("start"), &obj(json!({}))).unwrap();
        c.put(&b, &id("start"), &obj(json!({}))).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (c, a, b, stop) = (c.clone(), a.clone(), b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0;
                // Bounded: reads no longer wait for writes, and each snapshot read
                // costs what the collection holds.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && k < 400 {
                    let rid = id(&format!("r{k}"));
                    c.put(&a, &rid, &obj(json!({"k": k}))).unwrap();
                    c.put(&b, &rid, &obj(json!({"k": k}))).unwrap();
                    k += 1;
                }
                k
            })
        };
        let mut seen_moving = 0;
        for _ in 0..200 {
            let snapshot = c.snapshot().unwrap();
            let in_a = snapshot.collection_records(&a).unwrap().len();
            std::thread::sleep(std::time::Duration::from_micros(200));
            let in_b = snapshot.collection_records(&b).unwrap().len();
            assert!(in_b <= in_a && in_a <= in_b + 1, "a {in_a}, b {in_b}");
            let again = snapshot.collection_records(&a).unwrap().len();
            assert_eq!(again, in_a, "the snapshot moved");
            if c.records(&a).unwrap().len() > in_a {
                seen_moving += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(
            written > 10 && seen_moving > 0,
            "the writer barely ran: {written}"
        );
    }

    #[tokio::test]
    async fn the_change_log_names_exactly_the_records_changed_since_a_position() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let contacts = name("contacts");
        for i in 0..50 {
            c.put(
                &contacts,
                &id(&format!("r{i}")),
                &obj(json!({"name": format!("P{i}"), "address": {"city": "Lyon", "lines": ["a", "b"]}})),
            )
            .unwrap();
        }
        let since = c.log_position(&contacts).unwrap();
        // A nested change, a top-level one, a removal, a new record, and one changed
        // and changed back.
        c.patch(
            &contacts,
            &id("r3"),
            &obj(json!({"address": {"city": "Paris"}})),
        )
        .unwrap();
        c.patch(&contacts, &id("r7"), &obj(json!({"name": "Seven"})))
            .unwrap();
        c.remove(&contacts, &id("r9")).unwrap();
        c.put(&contacts, &id("new"), &obj(json!({"name": "New"})))
            .unwrap();
        c.patch(&contacts, &id("r11"), &obj(json!({"name": "x"})))
            .unwrap();
        c.patch(&contacts, &id("r11"), &obj(json!({"name": "P11"})))
            .unwrap();
        let (at, changes) = c.changes_after(&contacts, since).unwrap().unwrap();
        assert_eq!(at, c.log_position(&contacts).unwrap());
        assert_eq!(at.seq, since.seq + 6, "one entry a write");
        let ids: Vec<&str> = changes.iter().map(|ch| ch.id.as_str()).collect();
        assert_eq!(ids, ["new", "r3", "r7", "r9"], "sorted by id");
        let r9 = changes.iter().find(|ch| ch.id == "r9").unwrap();
        assert!(r9.before.is_some() && r9.after.is_none());
        let r3 = changes.iter().find(|ch| ch.id == "r3").unwrap();
        assert_eq!(r3.before.as_ref().unwrap()["address"]["city"], "Lyon");
        assert_eq!(r3.after.as_ref().unwrap()["address"]["city"], "Paris");
        assert!(
            c.changes_after(&contacts, at)
                .unwrap()
                .unwrap()
                .1
                .is_empty()
        );
        // What only follows the present: every record touched (r11 too, changed
        // back), as it reads now, without the fields skipped; the same end.
        let (now, touched) = c
            .touched_after(&contacts, since, &["address"])
            .unwrap()
            .unwrap();
        assert_eq!(now, at);
        let ids: Vec<&str> = touched.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["new", "r11", "r3", "r7", "r9"], "sorted by id");
        let read = |wanted: &str| {
            touched
                .iter()
                .find(|(id, _)| id == wanted)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(read("r9"), None);
        assert_eq!(read("r3"), Some(obj(json!({"id": "r3", "name": "P3"}))));
        assert_eq!(read("r7"), Some(obj(json!({"id": "r7", "name": "Seven"}))));
        assert!(
            c.touched_after(&contacts, at, &[])
                .unwrap()
                .unwrap()
                .1
                .is_empty()
        );
        // Positions that are not this log's are refused.
        let beyond = LogPosition {
            seq: at.seq + 1,
            ..at
        };
        assert!(c.changes_after(&contacts, beyond).unwrap().is_none());
        assert!(c.touched_after(&contacts, beyond, &[]).unwrap().is_none());
        let other = LogPosition {
            epoch: at.epoch ^ 1,
            ..since
        };
        assert!(c.changes_after(&contacts, other).unwrap().is_none());
    }

    #[tokio::test]
    async fn text_edits_apply_all_or_nothing_and_survive_a_restart() {
        use crate::records::TextEdit;
        let edit = |position, delete, insert: &str| TextEdit {
            position,
            delete,
            insert: insert.into(),
        };
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let notes = name("notes");
        c.put(&notes, &id("n1"), &obj(json!({"body": "Hello", "n": 1})))
            .unwrap();
        // A string field becomes collaborative text holding the same characters.
        let edits = [edit(5, 0, " world"), edit(0, 1, "J")];
        assert!(c.edit_text(&notes, &id("n1"), "body", &edits).unwrap());
        assert_eq!(
            c.get(&notes, &id("n1")).unwrap().unwrap()["body"],
            "Jello world"
        );
        // One bad edit refuses the whole call and changes nothing.
        let bad = [edit(0, 0, "X"), edit(100, 1, "")];
        let e = c.edit_text(&notes, &id("n1"), "body", &bad).unwrap_err();
        assert!(matches!(e, CollectionError::BadEdit(_)), "{e}");
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = c.edit_text(&notes, &id("n1"), "n", &edits).unwrap_err();
        assert!(e.to_string().contains("not text"), "{e}");
        assert!(!c.edit_text(&notes, &id("nope"), "body", &edits).unwrap());
        // A put with a new string edits the text rather than replacing it.
        c.put(
            &notes,
            &id("n1"),
            &obj(json!({"body": "Jello, world", "n": 1})),
        )
        .unwrap();
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let record = c.get(&notes, &id("n1")).unwrap().unwrap();
        assert_eq!(record, json!({"id": "n1", "body": "Jello, world", "n": 1}));
        assert!(
            c.edit_text(&notes, &id("n1"), "body", &[edit(12, 0, "!")])
                .unwrap()
        );
        assert_eq!(
            c.get(&notes, &id("n1")).unwrap().unwrap()["body"],
            "Jello, world!"
        );
    }

    #[tokio::test]
    async fn the_cache_drops_the_least_recently_used_collection_and_loses_nothing() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        c.set_cache_budget(1);
        let (a, b) = (name("a"), name("b"));
        c.put(&a, &id("r1"), &obj(json!({"n": 1}))).unwrap();
        assert_eq!(c.cached().0, 1, "the collection just used always stays");
        c.put(&b, &id("r1"), &obj(json!({"n": 2}))).unwrap();
        assert_eq!(c.cached().0, 1, "a was dropped when b was used");
        // Read again from disk, written again, and its history kept.
        let since = c.log_position(&a).unwrap();
        c.patch(&a, &id("r1"), &obj(json!({"m": true}))).unwrap();
        assert_eq!(
            c.get(&a, &id("r1")).unwrap().unwrap(),
            json!({"id": "r1", "n": 1, "m": true})
        );
        assert_eq!(c.changes_after(&a, since).unwrap().unwrap().1.len(), 1);
        assert_eq!(
            c.get(&b, &id("r1")).unwrap().unwrap(),
            json!({"id": "r1", "n": 2})
        );
        // A snapshot reads its moment even when its collections were dropped since.
        let snapshot = c.snapshot().unwrap();
        c.put(&a, &id("r9"), &obj(json!({"n": 9}))).unwrap();
        c.put(&b, &id("r2"), &obj(json!({"n": 3}))).unwrap();
        assert_eq!(c.cached().0, 1);
        assert_eq!(snapshot.collection_records(&a).unwrap().len(), 1);
        drop(snapshot);
        // A collection in someone's hands is never dropped.
        let held = c.load(&PartName::only(a.clone())).unwrap();
        c.heads(&b).unwrap();
        assert_eq!(c.cached().0, 2);
        drop(held);
        c.heads(&b).unwrap();
        assert_eq!(c.cached().0, 1);
        // A budget that holds both keeps both.
        c.set_cache_budget(DEFAULT_CACHE_BYTES);
        c.heads(&a).unwrap();
        c.heads(&b).unwrap();
        assert_eq!(c.cached().0, 2);
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.count(&a).unwrap() + c.count(&b).unwrap(), 4);
    }

    #[tokio::test]
    async fn records_survive_a_restart_and_compaction() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let contacts = name("contacts");
        let total = COMPACT_AFTER + 10;
        for i in 0..total {
            c.put(
                &contacts,
                &id(&format!("r{i}")),
                &obj(json!({"n": i, "s": "x"})),
            )
            .unwrap();
        }
        c.patch(&contacts, &id("r0"), &obj(json!({"s": null, "t": true})))
            .unwrap();
        assert!(c.remove(&contacts, &id("r1")).unwrap());
        vault.store.commit().await.unwrap();
        vault.store.settle();

        // One snapshot and the changes made after it.
        let docs = vault.store.tree("docs").unwrap();
        let keys: Vec<_> = docs.keys_with_prefix(&[]).map(|k| k.unwrap()).collect();
        assert_eq!(keys.iter().filter(|k| k[32] == KIND_SNAPSHOT).count(), 1);
        assert_eq!(
            keys.iter().filter(|k| k[32] == KIND_CHANGE).count() as u64,
            total + 2 - COMPACT_AFTER
        );
        drop((c, docs));

        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let records = c.records(&contacts).unwrap();
        assert_eq!(records.len() as u64, total - 1);
        assert_eq!(
            c.get(&contacts, &id("r0")).unwrap().unwrap(),
            json!({"id": "r0", "n": 0, "t": true})
        );
        assert_eq!(c.get(&contacts, &id("r1")).unwrap(), None);
        assert_eq!(
            c.get(&contacts, &id("r5")).unwrap().unwrap(),
            json!({"id": "r5", "n": 5, "s": "x"})
        );
        let list = c.list().unwrap();
        assert_eq!(
            list,
            vec![CollectionInfo {
                name: "contacts".into(),
                records: total - 1
            }]
        );
        // Writing after a reload continues the sequence instead of overwriting it.
        c.put(&contacts, &id("late"), &obj(json!({"a": 1})))
            .unwrap();
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.records(&contacts).unwrap().len() as u64, total);
    }

    /// A compaction runs beside the collection's writers: they go on while it saves
    /// and while it waits to replace the keys, and what they wrote meanwhile stays
    /// after the new snapshot, through a restart.
    #[tokio::test]
    async fn a_compaction_never_holds_up_writers_and_loses_nothing_written_meanwhile() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let contacts = name("contacts");
        put_numbered(&c, &contacts, 0);
        // With the key layout held, a compaction can save but not replace keys.
        let layout = c.layout.clone();
        let held = layout.lock().unwrap();
        let total = COMPACT_AFTER + 50;
        let (done, finished) = std::sync::mpsc::channel();
        let writer = {
            let (c, contacts) = (c.clone(), contacts.clone());
            std::thread::spawn(move || {
                for i in 1..total {
                    put_numbered(&c, &contacts, i);
                }
                done.send(()).unwrap();
            })
        };
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("writes went on while a compaction was waiting");
        writer.join().unwrap();
        let key = vault.store.name_key(NAME_DOMAIN, "contacts");
        assert!(c.compacting.lock().unwrap().contains(&key));
        drop(held);
        vault.store.settle();
        assert!(c.compacting.lock().unwrap().is_empty());

        let kinds = doc_kinds(&vault.store, &key);
        assert_eq!(kinds[0], (KIND_SNAPSHOT, COMPACT_AFTER));
        assert_eq!(kinds.len() as u64, 1 + total - COMPACT_AFTER);
        assert!(
            kinds[1..]
                .iter()
                .zip(COMPACT_AFTER..)
                .all(|(&(kind, seq), want)| kind == KIND_CHANGE && seq == want)
        );
        vault.store.commit().await.unwrap();
        drop(c);

        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.heads(&contacts).unwrap().len(), 1, "the document loads");
        assert_eq!(c.records(&contacts).unwrap().len() as u64, total);
        put_numbered(&c, &contacts, total);
        assert_eq!(c.count(&contacts).unwrap() as u64, total + 1);
    }

    /// A compaction whose write fails (a write error as it replaces the keys) changes
    /// nothing on disk: every change stays, the collection is free to compact again,
    /// the next compaction succeeds, and a restart loads every record.
    #[tokio::test]
    async fn a_compaction_that_cannot_write_loses_nothing_and_the_next_one_succeeds() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let contacts = name("contacts");
        let key = vault.store.name_key(NAME_DOMAIN, "contacts");
        let snapshots = || {
            doc_kinds(&vault.store, &key)
                .iter()
                .filter(|&&(kind, _)| kind == KIND_SNAPSHOT)
                .count()
        };
        put_numbered(&c, &contacts, 0);
        // The compaction waits on the key layout until the disk fails.
        let held = c.layout.lock().unwrap();
        for i in 1..COMPACT_AFTER + 10 {
            put_numbered(&c, &contacts, i);
        }
        assert!(c.compacting.lock().unwrap().contains(&key));
        vault.store.faults().inject(crate::store::Fault::WriteError);
        drop(held);
        vault.store.settle();
        vault.store.faults().clear();
        assert!(
            c.compacting.lock().unwrap().is_empty(),
            "free to compact again"
        );
        assert_eq!(snapshots(), 0, "the failed compaction wrote nothing");
        let changes = doc_kinds(&vault.store, &key).len() as u64;
        assert_eq!(changes, COMPACT_AFTER + 10, "every change is still there");

        // The next compaction (counted from the failed one's start) writes its snapshot.
        let total = 3 * COMPACT_AFTER;
        for i in COMPACT_AFTER + 10..total {
            put_numbered(&c, &contacts, i);
        }
        vault.store.settle();
        assert_eq!(snapshots(), 1, "the next compaction succeeded");
        vault.store.commit().await.unwrap();
        drop(c);

        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.records(&contacts).unwrap().len() as u64, total);
        assert_eq!(
            c.get(&contacts, &id(&format!("r{}", total - 1))).unwrap(),
            Some(json!({"id": format!("r{}", total - 1), "n": total - 1}))
        );
    }

    /// A value in the 64 KiB pieces versions before 4 KiB wrote reads back whole, into
    /// a buffer reserved once for it (grown instead, it would leave copies of the
    /// plaintext behind in freed memory).
    #[test]
    fn pieces_of_an_earlier_size_read_back_whole_into_one_reservation() {
        let vault = TestVault::new();
        let docs = vault.store.tree("docs").unwrap();
        let key = [7u8; 32];
        let old_piece = 64 * 1024;
        let value: Vec<u8> = (0..5 * old_piece + 100).map(|i| (i % 251) as u8).collect();
        let mut batch = SealedBatch::default();
        storage::insert_in_pieces(&docs, &mut batch, (&key, KIND_CHANGE, 3), &value, old_piece);
        docs.apply(batch).unwrap();
        let read: Vec<_> = storage::DocValues::new(&key, docs.scan_prefix(&key))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read.len(), 1);
        let (kind, seq, bytes) = &read[0];
        assert_eq!((*kind, *seq), (KIND_CHANGE, 3));
        assert_eq!(bytes.as_slice(), value.as_slice());
        assert!(
            bytes.capacity() <= 6 * old_piece,
            "reserved for its six pieces, not grown: {}",
            bytes.capacity()
        );
    }

    /// A document value larger than [`DOC_PIECE`] (a change bringing a large record, a
    /// snapshot) is stored in pieces and reads back whole; a piece missing or moved
    /// makes the collection refuse to load, never load something else.
    #[tokio::test]
    async fn a_large_document_value_is_stored_in_pieces_and_a_missing_piece_is_refused() {
        use rand::RngCore;
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let notes = name("notes");
        let mut noise = vec![0u8; 3 * DOC_PIECE];
        rand::thread_rng().fill_bytes(&mut noise);
        let text: String = noise.iter().map(|b| format!("{b:02x}")).collect();
        c.put(&notes, &id("big"), &obj(json!({"text": text})))
            .unwrap();
        c.put(&notes, &id("small"), &obj(json!({"n": 1}))).unwrap();
        vault.store.commit().await.unwrap();
        let key = vault.store.name_key(NAME_DOMAIN, "notes");
        let docs = vault.store.tree("docs").unwrap();
        let keys: Vec<Vec<u8>> = docs.keys_with_prefix(&key).map(|k| k.unwrap()).collect();
        let pieces: Vec<&Vec<u8>> = keys.iter().filter(|k| k.len() == 49).collect();
        assert!(pieces.len() >= 3, "the large change is in pieces");
        assert_eq!(keys.len(), pieces.len() + 1, "the small change is whole");
        let expected = json!({"id": "big", "text": text});
        let pieces: Vec<Vec<u8>> = pieces.into_iter().cloned().collect();
        drop((c, docs));

        // Read back from the document itself: the index is built again from it.
        let reindexed = |store: &Arc<Store>| {
            store.tree("records").unwrap().raw().clear().unwrap();
            let c = one_part(Collections::open(store.clone(), [1; 16]).unwrap());
            let read = c.get(&notes, &id("big"));
            (c, read)
        };
        let vault = vault.reopen().await;
        let (c, read) = reindexed(&vault.store);
        assert_eq!(read.unwrap().unwrap(), expected);
        drop(c);

        // A piece removed, or put in another's place: refused, with the reason.
        let docs = vault.store.tree("docs").unwrap();
        let (first, second) = (pieces[0].clone(), pieces[1].clone());
        let second_value = docs.raw().get(&second).unwrap().unwrap();
        docs.raw().remove(&second).unwrap();
        let (c, read) = reindexed(&vault.store);
        let err = read.unwrap_err().to_string();
        assert!(err.contains("lacks a piece"), "{err}");
        drop(c);
        let first_value = docs.raw().get(&first).unwrap().unwrap();
        docs.raw().insert(&second, first_value).unwrap();
        let (c, read) = reindexed(&vault.store);
        assert!(
            read.is_err(),
            "a piece sealed for another key does not open"
        );
        drop(c);
        docs.raw().insert(&second, second_value).unwrap();
        let (c, read) = reindexed(&vault.store);
        assert_eq!(read.unwrap().unwrap(), expected);

        // Compacted, the snapshot is in pieces too, and loads.
        for i in 0..COMPACT_AFTER {
            c.put(&notes, &id(&format!("n{i}")), &obj(json!({"n": i})))
                .unwrap();
        }
        vault.store.settle();
        let snapshot_pieces = docs
            .keys_with_prefix(&key)
            .map(|k| k.unwrap())
            .filter(|k| k.len() == 49 && k[32] == KIND_SNAPSHOT)
            .count();
        assert!(snapshot_pieces >= 3, "{snapshot_pieces} snapshot pieces");
        vault.store.commit().await.unwrap();
        drop((c, docs));
        let vault = vault.reopen().await;
        let (c, read) = reindexed(&vault.store);
        assert_eq!(read.unwrap().unwrap(), expected);
        assert_eq!(c.count(&notes).unwrap() as u64, COMPACT_AFTER + 2);
    }

    /// Shutting down waits for a compaction in progress (it would otherwise write
    /// after the last flush, or hold the store open), and what it wrote is there after
    /// the restart.
    #[tokio::test]
    async fn shutdown_waits_for_a_compaction_in_progress() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let contacts = name("contacts");
        put_numbered(&c, &contacts, 0);
        // The key layout held by another thread: the compaction saves, then waits.
        let (locked, is_locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = {
            let layout = c.layout.clone();
            std::thread::spawn(move || {
                let _held = layout.lock().unwrap();
                locked.send(()).unwrap();
                let _ = released.recv();
            })
        };
        is_locked.recv().unwrap();
        for i in 1..COMPACT_AFTER {
            put_numbered(&c, &contacts, i);
        }
        vault.store.commit().await.unwrap();
        let key = vault.store.name_key(NAME_DOMAIN, "contacts");
        assert!(c.compacting.lock().unwrap().contains(&key));

        let store = vault.store.clone();
        let shutdown = tokio::spawn(async move { store.shutdown().await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !shutdown.is_finished(),
            "shutdown returned while a compaction was still to write"
        );
        release.send(()).unwrap();
        holder.join().unwrap();
        shutdown.await.unwrap().unwrap();
        assert!(c.compacting.lock().unwrap().is_empty());
        drop(c);

        let vault = vault.reopen().await;
        assert_eq!(
            doc_kinds(&vault.store, &key),
            vec![(KIND_SNAPSHOT, COMPACT_AFTER)]
        );
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.heads(&contacts).unwrap().len(), 1, "the snapshot loads");
        assert_eq!(c.count(&contacts).unwrap() as u64, COMPACT_AFTER);
    }

    /// An edit that meets a delete it was not seen by is kept in a person's collection,
    /// and listed; in a system collection (`_access`, where a grant's removal is its
    /// end) the delete stands.
    #[tokio::test]
    async fn a_delete_against_an_edit_keeps_the_edit_except_in_a_system_collection() {
        let (va, vb) = (TestVault::new(), TestVault::new());
        let a = one_part(Collections::open(va.store.clone(), [1; 16]).unwrap());
        let b = one_part(Collections::open(vb.store.clone(), [2; 16]).unwrap());
        for collection in [name("notes"), name("_access")] {
            a.put(&collection, &id("r"), &obj(json!({"n": 1}))).unwrap();
            b.merge_document(&collection, &a.save_document(&collection).unwrap())
                .unwrap();
            b.patch(&collection, &id("r"), &obj(json!({"n": 2})))
                .unwrap();
            assert!(a.remove(&collection, &id("r")).unwrap());
            a.merge_document(&collection, &b.save_document(&collection).unwrap())
                .unwrap();
            let kept = a.get(&collection, &id("r")).unwrap();
            if collection.is_system() {
                assert_eq!(kept, None, "the delete stands in {collection}");
            } else {
                assert_eq!(kept, Some(json!({"id": "r", "n": 2})));
                let conflict = a.conflicts(&collection, &id("r")).unwrap().unwrap();
                assert!(conflict.removed.is_some(), "{conflict:?}");
            }
        }
    }

    /// The record index knows which records hold something for a person to decide —
    /// a field edited apart, a record made on two devices, a delete that met an edit —
    /// without loading a document; a choice ends it; it holds after a restart and
    /// after the index is built again from the document.
    #[tokio::test]
    async fn the_index_knows_which_records_are_in_conflict() {
        let (va, vb) = (TestVault::new(), TestVault::new());
        let a = one_part(Collections::open(va.store.clone(), [1; 16]).unwrap());
        let b = one_part(Collections::open(vb.store.clone(), [2; 16]).unwrap());
        let notes = name("notes");
        a.put(&notes, &id("edited"), &obj(json!({"n": 1}))).unwrap();
        a.put(&notes, &id("quiet"), &obj(json!({"n": 1}))).unwrap();
        a.put(&notes, &id("deleted"), &obj(json!({"n": 1})))
            .unwrap();
        b.merge_document(&notes, &a.save_document(&notes).unwrap())
            .unwrap();
        a.patch(&notes, &id("edited"), &obj(json!({"n": 2})))
            .unwrap();
        b.patch(&notes, &id("edited"), &obj(json!({"n": 3})))
            .unwrap();
        a.put(&notes, &id("twice"), &obj(json!({"by": "a"})))
            .unwrap();
        b.put(&notes, &id("twice"), &obj(json!({"by": "b"})))
            .unwrap();
        a.remove(&notes, &id("deleted")).unwrap();
        b.patch(&notes, &id("deleted"), &obj(json!({"n": 5})))
            .unwrap();
        assert!(a.conflicted(&notes).unwrap().is_empty());
        a.merge_document(&notes, &b.save_document(&notes).unwrap())
            .unwrap();
        let expected = vec!["deleted".to_owned(), "edited".into(), "twice".into()];
        assert_eq!(a.conflicted(&notes).unwrap(), expected);
        let found: Vec<String> = a
            .all_conflicts(&notes)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(found, expected, "what reading every record finds");
        assert_eq!(a.conflict_counts().unwrap(), vec![(notes.clone(), 3)]);

        // A choice ends it.
        assert!(a.choose(&notes, &id("edited"), "n", &json!(3)).unwrap());
        assert_eq!(a.conflicted(&notes).unwrap(), ["deleted", "twice"]);

        // After a restart, and after the index is built again from the document.
        va.store.commit().await.unwrap();
        drop(a);
        let a = one_part(Collections::open(va.store.clone(), [1; 16]).unwrap());
        assert_eq!(a.conflicted(&notes).unwrap(), ["deleted", "twice"]);
        let part = a.place_in(a.collection_key(&notes), &a.part_of(&notes, "twice"));
        // A vault indexed by a version before conflicts were noted: found once, from
        // the document, its record entries kept.
        a.index.forget_conflicts(&part).unwrap();
        drop(a);
        let a = one_part(Collections::open(va.store.clone(), [1; 16]).unwrap());
        let mark = a.index.mark(&part).unwrap();
        assert_eq!(a.conflicted(&notes).unwrap(), ["deleted", "twice"]);
        assert_eq!(a.index.mark(&part).unwrap(), mark, "not indexed again");
        assert!(a.index.conflicts_indexed(&part).unwrap());
        let mut batch = SealedBatch::default();
        a.index.remove_mark(&mut batch, &part);
        a.index.tree().apply(batch).unwrap();
        drop(a);
        let a = one_part(Collections::open(va.store.clone(), [1; 16]).unwrap());
        assert_eq!(a.conflicted(&notes).unwrap(), ["deleted", "twice"]);
    }

    /// A load reading a collection from the disk holds up requests to that collection
    /// only: a write to another one goes on meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_in_progress_holds_up_no_other_collection() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        c.set_cache_budget(1);
        let (big, small) = (name("big"), name("small"));
        c.put(&big, &id("a"), &obj(json!({"n": 1}))).unwrap();
        c.put(&small, &id("a"), &obj(json!({"n": 1}))).unwrap();
        assert_eq!(c.cached().0, 1, "big was dropped from memory");
        // Held, the layout lock stops a load of `big` half-way (while it reads the disk).
        let layout = c.layout.clone();
        let held = layout.lock().unwrap();
        let loader = {
            let (c, big) = (c.clone(), big.clone());
            std::thread::spawn(move || c.heads(&big).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!loader.is_finished(), "the load of big is held");
        let (answer, answered) = std::sync::mpsc::channel();
        let writer = {
            let (c, small) = (c.clone(), small.clone());
            std::thread::spawn(move || {
                answer
                    .send(c.put(&small, &id("b"), &obj(json!({"n": 2}))).unwrap())
                    .unwrap();
            })
        };
        answered
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a write to another collection waited for a load");
        // More requests for `big` wait at its gate, and find it loaded.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (c, big) = (c.clone(), big.clone());
                std::thread::spawn(move || c.heads(&big).unwrap())
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
        let heads = loader.join().unwrap();
        assert!(!heads.is_empty());
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), heads);
        }
        writer.join().unwrap();
        assert_eq!(c.count(&small).unwrap(), 2);
        assert!(
            c.loading.lock().unwrap().is_empty(),
            "no gate is left behind"
        );
    }

    /// A read is answered from the record index while the collection's lock is held
    /// (by a writer, a sync, a load): it never waits for the document.
    #[tokio::test]
    async fn a_read_never_waits_for_the_collections_lock() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let contacts = name("contacts");
        c.put(&contacts, &id("a"), &obj(json!({"n": 1}))).unwrap();
        let (locked, is_locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = {
            let (c, contacts) = (c.clone(), contacts.clone());
            std::thread::spawn(move || {
                c.with(&PartName::only(contacts.clone()), |_| {
                    locked.send(()).unwrap();
                    released.recv().unwrap();
                    Ok(())
                })
                .unwrap();
            })
        };
        is_locked.recv().unwrap();
        let (answer, answered) = std::sync::mpsc::channel();
        let reader = {
            let (c, contacts) = (c.clone(), contacts.clone());
            std::thread::spawn(move || {
                let read = (
                    c.get(&contacts, &id("a")).unwrap(),
                    c.page(&contacts, None, 10, Some).unwrap().0.len(),
                    c.count(&contacts).unwrap(),
                );
                answer.send(read).unwrap();
            })
        };
        let read = answered
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a read waited for the collection's lock");
        assert_eq!(read, (Some(json!({"id": "a", "n": 1})), 1, 1));
        release.send(()).unwrap();
        holder.join().unwrap();
        reader.join().unwrap();
    }

    /// A store whose counter is intact but one collection lost its last committed
    /// change (a key removed, say) refuses that collection instead of serving it.
    #[tokio::test]
    async fn a_collection_behind_its_commit_record_is_refused() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let access = name("grants");
        c.put(&access, &id("g"), &obj(json!({"revoked": false})))
            .unwrap();
        vault.store.commit().await.unwrap();
        // The record index as it was then: put back below with the document's
        // rollback, so the index agrees with the document but not with the record.
        let index = vault.store.tree("records").unwrap();
        let old_index: Vec<_> = index.raw().iter().map(|e| e.unwrap()).collect();
        drop(index);
        c.patch(&access, &id("g"), &obj(json!({"revoked": true})))
            .unwrap();
        vault.store.commit().await.unwrap();
        c.put(&name("other"), &id("x"), &obj(json!({"a": 1})))
            .unwrap();
        vault.store.commit().await.unwrap();
        drop(c);
        let key = vault.store.name_key(NAME_DOMAIN, "grants");
        lose_last_change(&vault, &key, old_index);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let e = c.get(&access, &id("g")).unwrap_err();
        assert!(e.to_string().contains("were committed"), "{e}");
        assert_eq!(c.get(&name("other"), &id("x")).unwrap().unwrap()["a"], 1);
    }

    /// A person's merge of a record's versions and the end of its delete notice are
    /// one write: a store that fails it leaves both as they were.
    #[tokio::test]
    async fn a_merge_of_versions_ends_the_notice_in_the_same_write() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let notes = name("notes");
        c.put(&notes, &id("n1"), &obj(json!({"text": "mine"})))
            .unwrap();
        let notice = notice_id(&notes, "n1");
        let said = obj(json!({"collection": "notes", "record": "n1", "deleted_by": "x"}));
        c.put(&conflicts_list(), &notice, &said).unwrap();
        let merge = |before: &Map<String, Json>| {
            let mut merged = before.clone();
            merged.insert("text".into(), json!("merged"));
            Ok::<_, ()>(merged)
        };
        vault.store.faults().inject(crate::store::Fault::WriteError);
        assert!(c.merge_versions(&notes, &id("n1"), merge).is_err());
        vault.store.faults().clear();
        assert_eq!(c.get(&notes, &id("n1")).unwrap().unwrap()["text"], "mine");
        assert!(c.get(&conflicts_list(), &notice).unwrap().is_some());

        assert_eq!(
            c.merge_versions(&notes, &id("n1"), merge).unwrap(),
            Ok(true)
        );
        assert_eq!(c.get(&notes, &id("n1")).unwrap().unwrap()["text"], "merged");
        assert!(c.get(&conflicts_list(), &notice).unwrap().is_none());
        assert_eq!(
            c.merge_versions(&notes, &id("gone"), merge).unwrap(),
            Ok(false)
        );
        let refused = c.merge_versions(&notes, &id("n1"), |_| Err("no")).unwrap();
        assert_eq!(refused, Err("no"));
    }

    /// Removes the last change stored under document key `key` and puts back the
    /// record index as it was (`old_index`), but for collection `other`'s entries:
    /// a store that lost a committed change, its index agreeing with it.
    pub(super) fn lose_last_change(
        vault: &TestVault,
        key: &[u8; 32],
        old_index: Vec<(sled::IVec, sled::IVec)>,
    ) {
        let docs = vault.store.tree("docs").unwrap();
        let last = docs
            .keys_with_prefix(key)
            .map(|k| k.unwrap())
            .max()
            .unwrap();
        docs.raw().remove(&last).unwrap();
        let index = vault.store.tree("records").unwrap();
        let other = vault.store.name_key(NAME_DOMAIN, "other");
        for (k, v) in old_index
            .into_iter()
            .filter(|(k, _)| !k.starts_with(&other))
        {
            index.raw().insert(k, v).unwrap();
        }
    }

    /// A change refused because persisting it failed never reaches the disk, even
    /// when another writer was already waiting for the same collection (it must not
    /// persist the refused change along with its own).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_change_never_rides_along_with_a_waiting_writer() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let faults = vault.store.faults().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let toggler = {
            let (faults, stop) = (faults.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut on = false;
                while !stop.load(Ordering::Relaxed) {
                    on = !on;
                    if on {
                        faults.inject(crate::store::Fault::WriteError);
                    } else {
                        faults.clear();
                    }
                    std::thread::sleep(std::time::Duration::from_micros(150));
                }
                faults.clear();
            })
        };
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .map(|i| {
                            let key = format!("w{w}-{i}");
                            let ok = c
                                .put(&name("race"), &id(&key), &obj(json!({"n": i})))
                                .is_ok();
                            (key, ok)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let outcomes: Vec<(String, bool)> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        stop.store(true, Ordering::Relaxed);
        toggler.join().unwrap();
        vault.store.commit().await.unwrap();
        let refused = outcomes.iter().filter(|(_, ok)| !ok).count();
        assert!(
            refused > 0 && refused < outcomes.len(),
            "faults hit some writes: {refused}"
        );
        drop(c);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        for (key, ok) in &outcomes {
            let found = c.get(&name("race"), &id(key)).unwrap().is_some();
            assert_eq!(
                found, *ok,
                "record {key}: acknowledged {ok}, on disk {found}"
            );
        }
    }

    #[tokio::test]
    async fn reading_an_unknown_collection_creates_nothing() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert!(c.records(&name("nothing")).unwrap().is_empty());
        assert_eq!(c.get(&name("nothing"), &id("x")).unwrap(), None);
        assert!(c.list().unwrap().is_empty());
    }

    /// Reads, pages and counts come from the record index: after a restart they load
    /// no document. An index missing (a vault from before it) or behind its document
    /// (an older Hearth wrote the change) is built again, and reads what the document
    /// holds.
    #[tokio::test]
    async fn reads_need_no_document_and_a_missing_or_stale_index_is_built_again() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let mail = name("mail");
        for i in 0..20 {
            c.put(
                &mail,
                &id(&format!("m{i:02}")),
                &obj(json!({"n": i, "tags": ["a"]})),
            )
            .unwrap();
        }
        c.remove(&mail, &id("m03")).unwrap();
        c.patch(&mail, &id("m04"), &obj(json!({"n": null, "seen": true})))
            .unwrap();
        vault.store.commit().await.unwrap();
        drop(c);

        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(
            c.get(&mail, &id("m04")).unwrap().unwrap(),
            json!({"id": "m04", "tags": ["a"], "seen": true})
        );
        assert_eq!(c.get(&mail, &id("m03")).unwrap(), None);
        assert_eq!(c.count(&mail).unwrap(), 19);
        let ids = |page: &[Json]| -> Vec<String> {
            page.iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect()
        };
        // Pages follow the index's order (a keyed hash of each id).
        let order = ids(&c.page(&mail, None, 100, Some).unwrap().0);
        assert_eq!(order.len(), 19);
        let (page, next) = c.page(&mail, Some(&id(&order[2])), 2, Some).unwrap();
        assert_eq!(ids(&page), order[3..5]);
        assert_eq!(next.as_deref(), Some(order[4].as_str()));
        assert_eq!(c.list().unwrap()[0].records, 19);
        assert_eq!(c.cached().0, 0, "no document was loaded to read");
        let expected = c.records(&mail).unwrap();
        assert_eq!(expected.len(), 19);
        drop(c);

        // The index lost (a vault made before it): built again on first read.
        let index = vault.store.tree("records").unwrap();
        index.raw().clear().unwrap();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.records(&mail).unwrap(), expected);
        assert_eq!(c.count(&mail).unwrap(), 19);
        drop(c);

        // The index one change behind its document (an older Hearth wrote it).
        let before: Vec<_> = index.raw().iter().map(|e| e.unwrap()).collect();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        c.put(&mail, &id("m05"), &obj(json!({"n": 55}))).unwrap();
        vault.store.commit().await.unwrap();
        drop(c);
        index.raw().clear().unwrap();
        for (key, value) in before {
            index.raw().insert(key, value).unwrap();
        }
        drop(index);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.get(&mail, &id("m05")).unwrap().unwrap()["n"], 55);
        assert_eq!(c.count(&mail).unwrap(), 19);
    }

    /// `get_fields` reads only the fields asked for, from the index for a short
    /// record and from the document for a long one (a filter decides on them without
    /// the long text); a missing record is `None`.
    #[test]
    fn only_the_fields_asked_for_are_read() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let notes = name("notes");
        let long = "x".repeat(crate::records::LONG + 1);
        c.put(
            &notes,
            &id("long"),
            &obj(json!({"team": "a", "body": long, "tags": ["t"]})),
        )
        .unwrap();
        c.put(
            &notes,
            &id("short"),
            &obj(json!({"team": "b", "body": "hi"})),
        )
        .unwrap();
        let fields = |i: &str| {
            c.get_fields(&notes, &id(i), &["team", "tags", "none"])
                .unwrap()
        };
        assert_eq!(
            fields("long"),
            Some(obj(json!({"team": "a", "tags": ["t"]})))
        );
        assert_eq!(fields("short"), Some(obj(json!({"team": "b"}))));
        assert_eq!(fields("missing"), None);
    }

    /// A record holding a text longer than `records::LONG` keeps only its id in the
    /// index, so an edit to that text writes what the edit does, not the whole text
    /// again; every read still returns the whole record, read from the document,
    /// and the record comes back into the index once its text is short again.
    #[tokio::test]
    async fn a_long_text_is_read_from_its_document_and_its_index_entry_stays_small() {
        use crate::records::{LONG, TextEdit};
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let notes = name("notes");
        let key = vault.store.name_key(NAME_DOMAIN, "notes");
        let index = vault.store.tree("records").unwrap();
        let entry_len = |i: &str| {
            let mut k = key.to_vec();
            k.push(1);
            k.extend_from_slice(&vault.store.name_key("record", &format!("notes/{i}")));
            index.raw().get(k).unwrap().map(|v| v.len())
        };
        c.put(&notes, &id("short"), &obj(json!({"body": "hi"})))
            .unwrap();
        c.put(&notes, &id("paper"), &obj(json!({"title": "paper"})))
            .unwrap();
        let type_in = |at: usize, text: &str| {
            let edit = TextEdit {
                position: at,
                delete: 0,
                insert: text.into(),
            };
            assert!(c.edit_text(&notes, &id("paper"), "text", &[edit]).unwrap());
        };
        let line = "All work and no play makes Jack a dull boy. ";
        let mut body = String::new();
        while body.chars().count() <= LONG {
            type_in(body.chars().count(), line);
            body.push_str(line);
        }
        // Only the id is indexed (sealed: nonce and tag around it)...
        let small = entry_len("paper").unwrap();
        assert!(small < 100, "{small} bytes");
        // ...and each edit from now on writes those same few bytes.
        type_in(0, "Title. ");
        body.insert_str(0, "Title. ");
        assert_eq!(entry_len("paper"), Some(small));
        let whole = json!({"id": "paper", "title": "paper", "text": body});
        assert_eq!(c.get(&notes, &id("paper")).unwrap().unwrap(), whole);
        assert_eq!(c.records(&notes).unwrap()[0], whole);
        assert_eq!(c.page(&notes, None, 5, Some).unwrap().0.len(), 2);
        assert_eq!(c.count(&notes).unwrap(), 2);
        vault.store.commit().await.unwrap();
        drop(c);

        // A reader with nothing loaded reads the long record from its document, and
        // only that one: the short record needs no document.
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.get(&notes, &id("short")).unwrap().unwrap()["body"], "hi");
        assert_eq!(c.cached().0, 0);
        assert_eq!(c.get(&notes, &id("paper")).unwrap().unwrap(), whole);
        assert_eq!(c.cached().0, 1);
        drop(c);

        // Indexed again from the document (a lost index): the same entries.
        index.raw().clear().unwrap();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(c.records(&notes).unwrap()[0], whole);
        assert_eq!(entry_len("paper"), Some(small));
        assert!(entry_len("short").is_some());

        // Short again: the whole record is back in the index.
        let cut = TextEdit {
            position: 0,
            delete: body.chars().count() - 5,
            insert: String::new(),
        };
        assert!(c.edit_text(&notes, &id("paper"), "text", &[cut]).unwrap());
        let tail: String = body.chars().skip(body.chars().count() - 5).collect();
        let json = format!(r#"{{"text":"{tail}","title":"paper"}}"#);
        assert_eq!(entry_len("paper"), Some(small + json.len()));
        vault.store.commit().await.unwrap();
        drop(c);
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert_eq!(
            c.get(&notes, &id("paper")).unwrap().unwrap(),
            json!({"id": "paper", "title": "paper", "text": tail})
        );
        assert_eq!(c.cached().0, 0, "read from the index");
        c.remove(&notes, &id("paper")).unwrap();
        assert_eq!(c.get(&notes, &id("paper")).unwrap(), None);
        assert_eq!(c.count(&notes).unwrap(), 1);
    }

    /// The index is sealed like the documents: a flipped byte, or a record moved to
    /// another record's key, is an error, never a record.
    #[tokio::test]
    async fn a_tampered_or_moved_index_entry_is_corruption_not_data() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let notes = name("notes");
        c.put(&notes, &id("a"), &obj(json!({"text": "first"})))
            .unwrap();
        c.put(&notes, &id("b"), &obj(json!({"text": "second"})))
            .unwrap();
        vault.store.commit().await.unwrap();
        let index = vault.store.tree("records").unwrap();
        let key = vault.store.name_key(NAME_DOMAIN, "notes");
        let at = |i: &str| {
            let mut k = key.to_vec();
            k.push(1);
            k.extend_from_slice(&vault.store.name_key("record", &format!("notes/{i}")));
            k
        };
        let (a, b) = (
            index.raw().get(at("a")).unwrap().unwrap(),
            index.raw().get(at("b")).unwrap().unwrap(),
        );
        index.raw().insert(at("a"), b.clone()).unwrap();
        let e = c.get(&notes, &id("a")).unwrap_err();
        assert!(
            matches!(e, CollectionError::Store(StoreError::Corrupt { .. })),
            "{e}"
        );
        let mut flipped = a.to_vec();
        flipped[20] ^= 1;
        index.raw().insert(at("a"), flipped).unwrap();
        assert!(c.records(&notes).is_err());
        index.raw().insert(at("a"), a).unwrap();
        assert_eq!(c.get(&notes, &id("a")).unwrap().unwrap()["text"], "first");
    }

    #[tokio::test]
    async fn a_tampered_or_moved_value_is_corruption_not_data() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        c.put(&name("notes"), &id("a"), &obj(json!({"text": "first"})))
            .unwrap();
        c.put(&name("diary"), &id("b"), &obj(json!({"text": "second"})))
            .unwrap();
        vault.store.commit().await.unwrap();
        drop(c);

        let docs = vault.store.tree("docs").unwrap();
        let entries: Vec<_> = docs.raw().iter().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 2);

        // Flip one byte of the first value.
        let (key, value) = &entries[0];
        let mut flipped = value.to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x01;
        docs.raw().insert(key, flipped).unwrap();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let results = [c.heads(&name("notes")), c.heads(&name("diary"))];
        let corrupt = results
            .iter()
            .filter(|r| matches!(r, Err(CollectionError::Store(StoreError::Corrupt { .. }))))
            .count();
        assert_eq!(
            corrupt, 1,
            "exactly the tampered collection is reported corrupt"
        );
        let message = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .unwrap()
            .to_string();
        assert!(message.contains("failed authentication"), "{message}");

        // Swap the two (authentic) values between their keys.
        docs.raw()
            .insert(&entries[0].0, entries[1].1.clone())
            .unwrap();
        docs.raw()
            .insert(&entries[1].0, entries[0].1.clone())
            .unwrap();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert!(c.heads(&name("notes")).is_err());
        assert!(c.heads(&name("diary")).is_err());

        // Truncation too.
        docs.raw()
            .insert(&entries[0].0, &entries[0].1[..10])
            .unwrap();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let err = [c.heads(&name("notes")), c.heads(&name("diary"))]
            .into_iter()
            .filter_map(Result::err)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(err.contains("truncated"), "{err}");
    }

    fn at(collection: &str, record: &str) -> (CollectionName, RecordId) {
        (name(collection), id(record))
    }

    fn put_in(collection: &str, record: &str, n: u64) -> (CollectionName, RecordId, RecordWrite) {
        (
            name(collection),
            id(record),
            RecordWrite::Put(obj(json!({ "n": n }))),
        )
    }

    /// A write across collections lands in all of them, in memory and after a restart.
    #[tokio::test]
    async fn a_write_across_collections_lands_in_every_one() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        c.put(&name("b"), &id("old"), &obj(json!({"n": 0})))
            .unwrap();
        let seen = c
            .write_across(&[at("b", "old"), at("a", "x"), at("b", "y")], |lookup| {
                let old = lookup(&name("b"), &id("old"))?;
                let writes = vec![put_in("a", "x", 1), put_in("b", "y", 2)];
                Ok::<_, CollectionError>((writes, old))
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            seen,
            Some(obj(json!({"n": 0}))),
            "decide reads under the locks"
        );
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        assert!(c.get(&name("a"), &id("x")).unwrap().is_some());
        assert!(c.get(&name("b"), &id("y")).unwrap().is_some());
        assert!(c.get(&name("b"), &id("old")).unwrap().is_some());
    }

    /// A store that fails the write leaves none of the collections changed: not in
    /// memory, not in the record index, not after a restart; the next write works.
    #[tokio::test]
    async fn a_failed_write_across_collections_changes_none_of_them() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        c.put(&name("a"), &id("kept"), &obj(json!({"n": 0})))
            .unwrap();
        c.put(&name("b"), &id("kept"), &obj(json!({"n": 0})))
            .unwrap();
        vault.store.commit().await.unwrap();
        vault.store.faults().inject(crate::store::Fault::WriteError);
        let failed = c.write_across(&[at("a", "x"), at("b", "y")], |_| {
            Ok::<_, CollectionError>((vec![put_in("a", "x", 1), put_in("b", "y", 2)], ()))
        });
        assert!(failed.is_err(), "the store refused the write");
        vault.store.faults().clear();
        for (collection, record) in [("a", "x"), ("b", "y")] {
            assert!(
                c.get(&name(collection), &id(record)).unwrap().is_none(),
                "{collection}/{record} is not there"
            );
            assert_eq!(c.count(&name(collection)).unwrap(), 1);
        }
        c.write_across(&[at("a", "z"), at("b", "z")], |_| {
            Ok::<_, CollectionError>((vec![put_in("a", "z", 3), put_in("b", "z", 3)], ()))
        })
        .unwrap()
        .unwrap();
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        for collection in ["a", "b"] {
            let ids: Vec<String> = c
                .records(&name(collection))
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(ids, ["kept", "z"], "collection {collection}");
        }
    }

    /// A refusal, or a write to a collection the request did not name, writes nothing.
    #[tokio::test]
    async fn a_refused_write_across_collections_writes_nothing() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let refused = c
            .write_across(&[at("a", "x"), at("b", "x")], |_| {
                Err::<(WritesIn, ()), _>("no")
            })
            .unwrap();
        assert_eq!(refused, Err("no"));
        let stray = c.write_across(&[at("a", "x")], |_| {
            Ok::<_, CollectionError>((vec![put_in("a", "x", 1), put_in("c", "y", 2)], ()))
        });
        assert!(matches!(stray, Err(CollectionError::NotLocked(n)) if n == "c"));
        for collection in ["a", "b", "c"] {
            assert_eq!(c.count(&name(collection)).unwrap(), 0, "{collection}");
        }
    }

    /// Writers locking the same collections named in opposite orders never deadlock,
    /// and every write lands.
    #[test]
    fn writes_across_the_same_collections_in_any_order_all_land() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let record = format!("w{w}-{i}");
                        let names = if w % 2 == 0 {
                            [at("a", &record), at("b", &record)]
                        } else {
                            [at("b", &record), at("a", &record)]
                        };
                        c.write_across(&names, |_| {
                            Ok::<_, CollectionError>((
                                vec![put_in("a", &record, i), put_in("b", &record, i)],
                                (),
                            ))
                        })
                        .unwrap()
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(c.count(&name("a")).unwrap(), 200);
        assert_eq!(c.count(&name("b")).unwrap(), 200);
    }
}
