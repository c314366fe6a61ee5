//! The record index: every record of every collection as it reads now, sealed one by
//! one in tree `records`, so reads, pages and views cost what they return and never
//! load (or wait for) a collection's Automerge document.
//!
//! Under a collection's 32-byte name key (the same as in tree `docs`):
//! - `name_key || 0` holds the collection's **mark**: the generation (changes ever
//!   persisted) and heads of the document the index was built from, and its record
//!   count;
//! - `name_key || 1 || id_key` holds record `id`: its id and the record as JSON
//!   (without its `"id"`), as [`crate::records::read_record`] reads it, or, for a
//!   record holding a text, list or map longer than [`crate::records::LONG`], nothing but
//!   its id: that record is read from the document, so that an edit to a long text
//!   costs what the edit does, not what the text does. `id_key` is a
//!   keyed hash of the collection's name and the id ([`Store::name_key`]), so no id
//!   is readable on disk; records are therefore kept in the order of those hashes, a
//!   fixed order that tells nothing about the ids (pages follow it; whole lists are
//!   sorted by id).
//!
//! The index is derived data, written just before the document's change and under the
//! collection's lock, by [`crate::collections::Collections`]. It is trusted only while
//! its mark names the generation the document has on disk and the commit record
//! accepts that generation and those heads; otherwise the collection is indexed again
//! from its document (that is also how a vault made before the index is migrated:
//! docs/FORMATS.md). A change whose document write failed after its index write, a
//! vault written by an older Hearth, a rebuild cut short, a damaged mark: each makes
//! the mark disagree, never makes a stale index look current.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::RwLock;

use automerge::ChangeHash;
use serde_json::{Map, Value as Json};

use crate::commits::{Ledger, MarkCheck};
use crate::store::{SealedBatch, SealedTree, Store, StoreError};

const MARK: u8 = 0;
const RECORD: u8 = 1;
/// `name_key || 2 || id_key`: a record in conflict (fields edited apart, several
/// versions), its id as a record entry without a record.
const CONFLICT: u8 = 2;
/// `name_key || 3 [|| part u16be]`: the part's conflicts are in the index (written
/// when it is indexed whole; a part indexed before conflicts were is indexed again).
const CONFLICTS_INDEXED: u8 = 3;
/// Index entries written per batch when a whole collection is indexed again.
const REBUILD_BATCH: usize = 4096;
/// Keys read ahead at a time when going through a collection's records.
const CHUNK: usize = 256;

/// A record as the index holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Record(Map<String, Json>),
    /// A long record ([`crate::records::LONG`]): read it from the document.
    InDocument,
}

/// A record's id and what the index holds of it.
pub type Entry = (String, Stored);

/// Which document of a collection an index mark describes: a collection is kept in
/// one document or in several parts (docs/design/bounded-documents.md). Record
/// entries stay under the collection's key whatever part holds them; each part has
/// a mark of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Part {
    /// The collection's name key: where its record entries are.
    pub collection: [u8; 32],
    /// The part's own key (its document's, and its commit record entry's); a
    /// collection of one part uses the collection's key.
    pub key: [u8; 32],
    /// `None` for a collection of one part (its mark is `name_key || 0`, as it was
    /// before parts); the part's number otherwise (`name_key || 0 || part u16be`).
    pub number: Option<u16>,
}

impl Part {
    /// The only part of a collection kept in one document.
    pub fn whole(collection: [u8; 32]) -> Self {
        Self {
            collection,
            key: collection,
            number: None,
        }
    }

    fn mark_key(&self) -> Vec<u8> {
        self.key_of(MARK)
    }

    fn conflicts_indexed_key(&self) -> Vec<u8> {
        self.key_of(CONFLICTS_INDEXED)
    }

    fn key_of(&self, kind: u8) -> Vec<u8> {
        let mut key = Vec::with_capacity(35);
        key.extend_from_slice(&self.collection);
        key.push(kind);
        if let Some(number) = self.number {
            key.extend_from_slice(&number.to_be_bytes());
        }
        key
    }
}

/// What an index was built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mark {
    /// The document's generation (its changes ever persisted).
    pub generation: u64,
    pub count: u64,
    pub heads: Vec<ChangeHash>,
}

impl Mark {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * self.heads.len());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        for head in &self.heads {
            out.extend_from_slice(&head.0);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 16 || !(bytes.len() - 16).is_multiple_of(32) {
            return None;
        }
        let generation = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let count = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
        let heads = bytes[16..]
            .chunks_exact(32)
            .map(|h| ChangeHash(h.try_into().expect("chunks of 32 bytes")))
            .collect();
        Some(Self {
            generation,
            count,
            heads,
        })
    }
}

pub struct RecordIndex {
    tree: SealedTree,
    store: std::sync::Arc<Store>,
    /// Collections (by name key) whose index was found current since this store was
    /// opened: read without looking at the mark again. Only the collection's writer,
    /// under its lock, removes one (when its change reached the document but not the
    /// index).
    current: RwLock<HashSet<[u8; 32]>>,
    /// Collections (by name key) all of whose parts were found current, so that a read
    /// checks one entry, not every part; and how many parts were forgotten so far, so
    /// that a check that raced with a forget notes nothing. A forget removes the
    /// part's collection.
    whole: RwLock<(u64, HashSet<[u8; 32]>)>,
}

impl RecordIndex {
    pub fn open(store: std::sync::Arc<Store>) -> Result<Self, StoreError> {
        Ok(Self {
            tree: store.tree("records")?,
            store,
            current: RwLock::new(HashSet::new()),
            whole: RwLock::new((0, HashSet::new())),
        })
    }

    /// `Ok` if every part of collection `collection` is known current; else the count
    /// of forgets to pass to [`RecordIndex::set_collection_current`] once each part
    /// has been checked.
    pub fn collection_current(&self, collection: &[u8; 32]) -> Result<(), u64> {
        let whole = self.whole.read().expect("index lock is never poisoned");
        if whole.1.contains(collection) {
            Ok(())
        } else {
            Err(whole.0)
        }
    }

    /// Notes that every part of collection `collection` is current, unless a part was
    /// forgotten since `forgets` was read ([`RecordIndex::collection_current`]).
    pub fn set_collection_current(&self, collection: &[u8; 32], forgets: u64) {
        let mut whole = self.whole.write().expect("index lock is never poisoned");
        if whole.0 == forgets {
            whole.1.insert(*collection);
        }
    }

    /// The mark of a collection's index; an empty mark (generation 0) if it has none.
    pub fn mark(&self, part: &Part) -> Result<Mark, StoreError> {
        match self.tree.get(&part.mark_key())? {
            None => Ok(Mark::default()),
            Some(bytes) => Mark::decode(&bytes)
                .ok_or_else(|| StoreError::Malformed("a record index mark is malformed".into())),
        }
    }

    /// The marks of every part of a collection kept in parts, by part number (none
    /// for a collection of one part: read its mark with [`RecordIndex::mark`]).
    pub fn part_marks(&self, collection: &[u8; 32]) -> Result<Vec<(u16, Mark)>, StoreError> {
        let mut prefix = collection.to_vec();
        prefix.push(MARK);
        let malformed = || StoreError::Malformed("a record index mark is malformed".into());
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (key, bytes) = entry?;
            match key.len() {
                33 => continue,
                35 => {
                    let number = u16::from_be_bytes([key[33], key[34]]);
                    out.push((number, Mark::decode(&bytes).ok_or_else(malformed)?));
                }
                _ => return Err(malformed()),
            }
        }
        Ok(out)
    }

    /// Whether the index of a part is known current (no disk access).
    pub fn is_current(&self, part: &Part) -> bool {
        self.current
            .read()
            .expect("index lock is never poisoned")
            .contains(&part.key)
    }

    /// Finds the index of a part current without its document: its mark names the
    /// generation on disk (`on_disk`, read under the same lock as
    /// [`RecordIndex::forget`] takes, so a writer's failure cannot be missed) and the
    /// commit record accepts the mark.
    pub fn check(
        &self,
        part: &Part,
        ledger: &Ledger,
        on_disk: impl FnOnce() -> Result<u64, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut current = self.current.write().expect("index lock is never poisoned");
        if current.contains(&part.key) {
            return Ok(true);
        }
        let mark = self.mark(part)?;
        if mark.generation != on_disk()?
            || ledger.check(&part.key, mark.generation, &mark.heads) != MarkCheck::Ok
        {
            return Ok(false);
        }
        current.insert(part.key);
        Ok(true)
    }

    /// Notes that the index of a part is current (the caller holds the part's lock and
    /// has just checked it against the document).
    pub fn set_current(&self, part: &Part) {
        self.current
            .write()
            .expect("index lock is never poisoned")
            .insert(part.key);
    }

    /// Notes that the index of a part may be behind its document.
    pub fn forget(&self, part: &Part) {
        let mut whole = self.whole.write().expect("index lock is never poisoned");
        whole.0 += 1;
        whole.1.remove(&part.collection);
        self.current
            .write()
            .expect("index lock is never poisoned")
            .remove(&part.key);
    }

    /// Record `id` as indexed.
    pub fn get(
        &self,
        collection: &[u8; 32],
        name: &str,
        id: &str,
    ) -> Result<Option<Stored>, StoreError> {
        match self.tree.get(&self.record_key(collection, name, id))? {
            None => Ok(None),
            Some(bytes) => {
                let (found, record) = decode_entry(&bytes)?;
                // Sealed with its key, so only a hash collision could make this differ.
                if found != id {
                    return Err(StoreError::Malformed(
                        "a record index entry holds another record".into(),
                    ));
                }
                Ok(Some(record))
            }
        }
    }

    /// Where record `id` of collection `name` (whose name key is `collection`) is.
    fn record_key(&self, collection: &[u8; 32], name: &str, id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(65);
        key.extend_from_slice(collection);
        key.push(RECORD);
        key.extend_from_slice(&self.store.name_key("record", &format!("{name}/{id}")));
        key
    }

    fn conflict_key(&self, collection: &[u8; 32], name: &str, id: &str) -> Vec<u8> {
        let mut key = self.record_key(collection, name, id);
        key[32] = CONFLICT;
        key
    }

    /// Adds to `batch` whether each record a change touched is in conflict now
    /// ([`crate::records::in_conflict`]); with [`Entries::None`], none was before.
    pub fn note_conflicts<'a>(
        &self,
        batch: &mut SealedBatch,
        part: &Part,
        name: &str,
        touched: impl IntoIterator<Item = (&'a str, bool)>,
        entries: Entries,
    ) -> Result<(), StoreError> {
        for (id, conflicted) in touched {
            let key = self.conflict_key(&part.collection, name, id);
            if conflicted {
                self.tree
                    .batch_insert(batch, &key, &encode_entry(id, &Stored::InDocument));
            } else if matches!(entries, Entries::Looked) && self.tree.contains_key(&key)? {
                self.tree.batch_remove(batch, &key);
            }
        }
        Ok(())
    }

    /// Adds to `batch` that a part's conflicts are in the index (it was indexed whole).
    pub fn set_conflicts_indexed(&self, batch: &mut SealedBatch, part: &Part) {
        self.tree
            .batch_insert(batch, &part.conflicts_indexed_key(), &[1]);
    }

    /// Whether a part's conflicts are in the index.
    pub fn conflicts_indexed(&self, part: &Part) -> Result<bool, StoreError> {
        self.tree.contains_key(&part.conflicts_indexed_key())
    }

    /// Makes the index of a part's collection as a version before conflicts left it:
    /// no conflict entries, no marker.
    #[cfg(test)]
    pub fn forget_conflicts(&self, part: &Part) -> Result<(), StoreError> {
        self.tree.remove(&part.conflicts_indexed_key())?;
        let mut prefix = part.collection.to_vec();
        prefix.push(CONFLICT);
        for key in self.tree.keys_with_prefix(&prefix) {
            self.tree.remove(&key?)?;
        }
        Ok(())
    }

    /// The ids of a collection's records in conflict, sorted. Reads only those.
    pub fn conflicted(&self, collection: &[u8; 32]) -> Result<Vec<String>, StoreError> {
        let mut prefix = collection.to_vec();
        prefix.push(CONFLICT);
        let mut ids = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (_, bytes) = entry?;
            ids.push(decode_entry(&bytes)?.0);
        }
        ids.sort();
        Ok(ids)
    }

    /// The records after id `after` (from the first without it), in the index's order, up to
    /// the last record there is now. Keys are read ahead in chunks, then each value:
    /// records written meanwhile may or may not be seen, but a writer cannot keep a
    /// reader going for long (a chunk of keys costs far less to read than to write).
    pub fn after<'a>(
        &'a self,
        collection: &[u8; 32],
        name: &str,
        after: Option<&str>,
    ) -> Result<impl Iterator<Item = Result<Entry, StoreError>> + 'a, StoreError> {
        let mut prefix = collection.to_vec();
        prefix.push(RECORD);
        let last = self.tree.last_key_with_prefix(&prefix)?;
        let mut from = match after {
            Some(id) => Bound::Excluded(self.record_key(collection, name, id)),
            None => Bound::Included(prefix),
        };
        let mut chunk: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
        Ok(std::iter::from_fn(move || {
            loop {
                if let Some(key) = chunk.pop_front() {
                    match self.tree.get(&key) {
                        Ok(Some(bytes)) => return Some(decode_entry(&bytes)),
                        // Removed since its key was read.
                        Ok(None) => continue,
                        Err(e) => return Some(Err(e)),
                    }
                }
                let last = last.as_ref()?;
                let beyond = match &from {
                    Bound::Included(k) => k > last,
                    Bound::Excluded(k) => k >= last,
                    Bound::Unbounded => false,
                };
                if beyond {
                    return None;
                }
                let keys = self
                    .tree
                    .keys_in((from.clone(), Bound::Included(last.clone())), CHUNK);
                match keys {
                    Ok(keys) if keys.is_empty() => return None,
                    Ok(keys) => {
                        from = Bound::Excluded(keys.last().expect("not empty").clone());
                        chunk.extend(keys);
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
        }))
    }

    /// The tree, to apply a batch of [`RecordIndex::update`].
    pub fn tree(&self) -> &SealedTree {
        &self.tree
    }

    /// Adds to `batch` the records a change touched, each as it reads now (`None`:
    /// removed), and the new mark. `mark.count` is the count before the change; it is
    /// set to the count after.
    pub fn update<'a>(
        &self,
        batch: &mut SealedBatch,
        part: &Part,
        name: &str,
        mark: Mark,
        touched: impl IntoIterator<Item = (&'a str, Option<Stored>)>,
    ) -> Result<Mark, StoreError> {
        self.update_with(batch, part, name, mark, touched, Entries::Looked)
    }

    /// [`RecordIndex::update`], told whether the records may have entries already:
    /// for a part that has none yet (one with nothing on disk, whose first change
    /// arrived from another device), nothing is looked up.
    pub fn update_with<'a>(
        &self,
        batch: &mut SealedBatch,
        part: &Part,
        name: &str,
        mut mark: Mark,
        touched: impl IntoIterator<Item = (&'a str, Option<Stored>)>,
        entries: Entries,
    ) -> Result<Mark, StoreError> {
        let mut seen = HashSet::new();
        for (id, record) in touched {
            if !seen.insert(id) {
                continue;
            }
            let key = self.record_key(&part.collection, name, id);
            let existed = match entries {
                Entries::Looked => self.tree.contains_key(&key)?,
                Entries::None => false,
            };
            match record {
                Some(stored) => {
                    self.tree
                        .batch_insert(batch, &key, &encode_entry(id, &stored));
                    mark.count += u64::from(!existed);
                }
                None if existed => {
                    self.tree.batch_remove(batch, &key);
                    // Saturating: a count is only bookkeeping, never worth a panic.
                    mark.count = mark.count.saturating_sub(1);
                }
                None => {}
            }
        }
        self.tree
            .batch_insert(batch, &part.mark_key(), &mark.encode());
        Ok(mark)
    }

    /// Indexes a part again from `records` (every record of its document, each with
    /// its id; `None`, a missing record, is skipped), replacing what was there, all but
    /// the mark: the old mark goes first, and the caller adds the new one
    /// ([`RecordIndex::set_mark`]) once the document it describes is on disk, so an
    /// index half written is never trusted. The entries replaced are the collection's
    /// all, for a collection of one part; else those whose id `ours` says are the
    /// part's (all of the collection's entries are read to find them: this is rare,
    /// after a failure or a migration). Its conflicts' entries go too, and the note
    /// that they are indexed: the caller adds them ([`RecordIndex::note_conflicts`],
    /// [`RecordIndex::set_conflicts_indexed`]) with the mark. Returns the count.
    pub fn rebuild(
        &self,
        part: &Part,
        name: &str,
        ours: impl Fn(&str) -> bool,
        records: impl IntoIterator<Item = Result<(String, Option<Stored>), StoreError>>,
    ) -> Result<u64, StoreError> {
        self.forget(part);
        self.tree.remove(&part.mark_key())?;
        self.tree.remove(&part.conflicts_indexed_key())?;
        let mut batch = SealedBatch::default();
        let mut pending = 0;
        let ours = &ours;
        let mut replaced: Vec<Box<dyn Iterator<Item = Result<Vec<u8>, StoreError>> + '_>> =
            Vec::new();
        // The records' entries and their conflicts' (the caller notes the new ones).
        for kind in [RECORD, CONFLICT] {
            let mut entries = part.collection.to_vec();
            entries.push(kind);
            replaced.push(match part.number {
                None => Box::new(self.tree.keys_with_prefix(&entries)),
                Some(_) => Box::new(self.tree.scan_prefix(&entries).filter_map(|entry| {
                    entry
                        .and_then(|(key, bytes)| Ok(ours(&decode_entry(&bytes)?.0).then_some(key)))
                        .transpose()
                })),
            });
        }
        for key in replaced.into_iter().flatten() {
            self.tree.batch_remove(&mut batch, &key?);
            pending += 1;
            if pending == REBUILD_BATCH {
                self.tree.apply(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        let mut count = 0;
        for record in records {
            let (id, Some(record)) = record? else {
                continue;
            };
            self.tree.batch_insert(
                &mut batch,
                &self.record_key(&part.collection, name, &id),
                &encode_entry(&id, &record),
            );
            count += 1;
            pending += 1;
            if pending == REBUILD_BATCH {
                self.tree.apply(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.tree.apply(batch)?;
        tracing::debug!(records = count, "indexed a collection from its document");
        Ok(count)
    }

    /// Adds the removal of a part's mark to `batch`.
    pub fn remove_mark(&self, batch: &mut SealedBatch, part: &Part) {
        self.tree.batch_remove(batch, &part.mark_key());
    }

    /// Adds a part's mark to `batch`.
    pub fn set_mark(&self, batch: &mut SealedBatch, part: &Part, mark: &Mark) {
        self.tree
            .batch_insert(batch, &part.mark_key(), &mark.encode());
    }
}

/// An entry's value: u32be length of the id, the id, then the record as JSON, or
/// nothing for a record read from the document ([`Stored::InDocument`]; no JSON
/// text is empty).
fn encode_entry(id: &str, record: &Stored) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + id.len() + 64);
    let len = u32::try_from(id.len()).expect("an Automerge map key is shorter than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    if let Stored::Record(record) = record {
        serde_json::to_writer(&mut out, record).expect("a JSON map always encodes");
    }
    out
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    let malformed = || StoreError::Malformed("a record index entry is malformed".into());
    let len = bytes.get(..4).ok_or_else(malformed)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| malformed())?) as usize;
    let id = bytes.get(4..4 + len).ok_or_else(malformed)?;
    let id = String::from_utf8(id.to_vec()).map_err(|_| malformed())?;
    let stored = match &bytes[4 + len..] {
        [] => Stored::InDocument,
        json => Stored::Record(decode_record(json)?),
    };
    Ok((id, stored))
}

fn decode_record(bytes: &[u8]) -> Result<Map<String, Json>, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| {
        StoreError::Malformed("a record in the record index is not a JSON object".into())
    })
}

/// Whether [`RecordIndex::update_with`] must look up which records have an entry
/// already.
#[derive(Clone, Copy)]
pub enum Entries {
    Looked,
    /// None of them has one.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestVault;

    /// A collection noted current stays so until one of its parts is forgotten; a
    /// check that raced with a forget (of any part) notes nothing.
    #[test]
    fn a_collection_is_current_until_a_part_of_it_is_forgotten() {
        let vault = TestVault::new();
        let index = RecordIndex::open(vault.store.clone()).unwrap();
        let (c, other) = ([1; 32], [2; 32]);
        let part = Part {
            collection: c,
            key: [3; 32],
            number: Some(3),
        };
        let forgets = index.collection_current(&c).unwrap_err();
        index.set_collection_current(&c, forgets);
        assert_eq!(index.collection_current(&c), Ok(()));
        index.forget(&Part::whole(other));
        assert_eq!(index.collection_current(&c), Ok(()), "another's forget");
        index.forget(&part);
        let forgets = index.collection_current(&c).unwrap_err();
        index.forget(&Part::whole(other));
        index.set_collection_current(&c, forgets);
        assert!(
            index.collection_current(&c).is_err(),
            "a check that raced with a forget"
        );
    }

    #[test]
    fn a_mark_reads_back_and_a_malformed_one_is_refused() {
        let mark = Mark {
            generation: 7,
            count: 3,
            heads: vec![ChangeHash([9; 32]), ChangeHash([4; 32])],
        };
        assert_eq!(Mark::decode(&mark.encode()), Some(mark.clone()));
        let bytes = mark.encode();
        assert_eq!(Mark::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Mark::decode(&bytes[..15]), None);
    }
}
