//! How a collection's document is kept in the store: its sealed snapshot and changes
//! (in pieces when large), persisting a change with its record index entries, the
//! compaction into one snapshot on a thread of its own, and loading.

use super::*;
use crate::index::Entries;

/// What persisting changes writes, by tree, before any of it is written
/// ([`Collections::prepare`], [`Collections::write`]).
#[derive(Default)]
pub(super) struct Writes {
    pub(super) names: SealedBatch,
    pub(super) index: SealedBatch,
    pub(super) docs: SealedBatch,
    pub(super) log: SealedBatch,
}

/// A collection's change prepared for writing: its new index mark and its size.
pub(super) struct Prepared {
    mark: Mark,
    bytes: usize,
    /// Whether what was written is the part's snapshot (a part that arrived whole),
    /// not a change.
    snapshot: bool,
}

/// A document's values as stored ([`Collections::stored_values`]).
#[derive(Default)]
struct Stored {
    snapshot: Option<Zeroizing<Vec<u8>>>,
    /// The changes after the snapshot, one after the other.
    changes: Zeroizing<Vec<u8>>,
    change_count: u64,
    /// The changes ever persisted: those the snapshot covers, and one a change after.
    generation: u64,
}

/// A compaction of one collection, off its lock: saves a copy of its document as it
/// was after change `upto - 1`, then, in one atomic batch, writes that snapshot (keyed
/// by `upto`, the number of changes it covers, so the collection's generation survives)
/// and removes the snapshot and changes it replaces. Changes persisted meanwhile (keys
/// `upto` and on) stay, and a load reads them after the new snapshot. Failing loses
/// nothing: the old keys stay until the batch is applied.
pub(super) struct Compaction {
    docs: SealedTree,
    key: [u8; 32],
    upto: u64,
    doc: AutoCommit,
    layout: Arc<Mutex<()>>,
    compacting: Arc<Mutex<HashSet<[u8; 32]>>>,
}

impl Compaction {
    pub(super) fn run(mut self) {
        match self.write() {
            Ok(Some(bytes)) => tracing::debug!(bytes, "compacted a collection"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "compaction failed; will retry"),
        }
    }

    /// The snapshot's size, or `None` if the disk was already compacted this far.
    pub(super) fn write(&mut self) -> Result<Option<usize>, StoreError> {
        let snapshot = Zeroizing::new(self.doc.save());
        let _layout = self.layout.lock().expect("layout lock is never poisoned");
        let mut batch = SealedBatch::default();
        for key in self.docs.keys_with_prefix(&self.key) {
            let key = key?;
            match parse_doc_key(&self.key, &key) {
                Some((KIND_SNAPSHOT, seq)) if seq >= self.upto => return Ok(None),
                Some((_, seq)) if seq < self.upto => self.docs.batch_remove(&mut batch, &key),
                Some(_) => {}
                None => {
                    return Err(StoreError::Malformed(
                        "a document key of a collection is malformed".into(),
                    ));
                }
            }
        }
        insert_doc_value(
            &self.docs,
            &mut batch,
            &self.key,
            KIND_SNAPSHOT,
            self.upto,
            &snapshot,
        );
        self.docs.apply(batch)?;
        Ok(Some(snapshot.len()))
    }
}

/// However a compaction ends (done, failed, never started, or a panic in the save),
/// the collection may be compacted again.
impl Drop for Compaction {
    fn drop(&mut self) {
        if let Ok(mut compacting) = self.compacting.lock() {
            compacting.remove(&self.key);
        }
    }
}

pub(super) fn doc_key(collection: &[u8; 32], kind: u8, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(41);
    key.extend_from_slice(collection);
    key.push(kind);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Kind and sequence number of a document key, whole or a piece of a value.
pub(super) fn parse_doc_key(collection: &[u8; 32], key: &[u8]) -> Option<(u8, u64)> {
    if !matches!(key.len(), 41 | 49) || &key[..32] != collection || key[32] > KIND_CHANGE {
        return None;
    }
    Some((key[32], u64::from_be_bytes(key[33..41].try_into().ok()?)))
}

/// A piece's key: the value's key, then the piece's index and the number of pieces
/// (u32be each), so pieces sort in order and a missing last piece is noticed.
pub(super) fn piece_key(
    collection: &[u8; 32],
    kind: u8,
    seq: u64,
    index: u32,
    pieces: u32,
) -> Vec<u8> {
    let mut key = doc_key(collection, kind, seq);
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(&pieces.to_be_bytes());
    key
}

/// Adds a document value to `batch`: under its key if it is at most [`DOC_PIECE`]
/// bytes, else in pieces of that size.
pub(super) fn insert_doc_value(
    docs: &SealedTree,
    batch: &mut SealedBatch,
    collection: &[u8; 32],
    kind: u8,
    seq: u64,
    bytes: &[u8],
) {
    insert_in_pieces(docs, batch, (collection, kind, seq), bytes, DOC_PIECE);
}

/// [`insert_doc_value`] with pieces of `piece` bytes (tests write the 64 KiB pieces of
/// versions before, which every version reads).
pub(super) fn insert_in_pieces(
    docs: &SealedTree,
    batch: &mut SealedBatch,
    (collection, kind, seq): (&[u8; 32], u8, u64),
    bytes: &[u8],
    piece: usize,
) {
    if bytes.len() <= piece {
        docs.batch_insert(batch, &doc_key(collection, kind, seq), bytes);
        return;
    }
    let pieces =
        u32::try_from(bytes.len().div_ceil(piece)).expect("a document value is far below 256 TiB");
    for (index, piece) in (0..pieces).zip(bytes.chunks(piece)) {
        docs.batch_insert(
            batch,
            &piece_key(collection, kind, seq, index, pieces),
            piece,
        );
    }
}

/// A document value read back whole: its kind, sequence number and bytes.
pub(super) type DocValue = (u8, u64, Zeroizing<Vec<u8>>);

/// A collection's document values in key order, each whole (its pieces joined).
pub(super) struct DocValues<'a, I> {
    collection: &'a [u8; 32],
    entries: I,
}

impl<'a, I> DocValues<'a, I>
where
    I: Iterator<Item = Result<(Vec<u8>, Zeroizing<Vec<u8>>), StoreError>>,
{
    pub(super) fn new(collection: &'a [u8; 32], entries: I) -> Self {
        Self {
            collection,
            entries,
        }
    }

    pub(super) fn malformed(what: &str) -> StoreError {
        StoreError::Malformed(format!("a document {what}"))
    }

    pub(super) fn next_value(&mut self) -> Option<Result<DocValue, StoreError>> {
        let (key, bytes) = match self.entries.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        let Some((kind, seq)) = parse_doc_key(self.collection, &key) else {
            return Some(Err(Self::malformed("key is malformed")));
        };
        if key.len() == 41 {
            return Some(Ok((kind, seq, bytes)));
        }
        let piece = |key: &[u8]| {
            let index = u32::from_be_bytes(key[41..45].try_into().expect("4 bytes"));
            let pieces = u32::from_be_bytes(key[45..49].try_into().expect("4 bytes"));
            (index, pieces)
        };
        let (first, pieces) = piece(&key);
        if first != 0 || pieces < 2 {
            return Some(Err(Self::malformed("value lacks its first piece")));
        }
        // `pieces` is part of the key every piece is sealed to: a value that opened
        // vouches for it. Reserved whole, so no plaintext copy is left by growing: every
        // piece but the last is as long as the first, whatever size its version wrote.
        let mut value = Zeroizing::new(Vec::with_capacity(pieces as usize * bytes.len()));
        value.extend_from_slice(&bytes);
        for index in 1..pieces {
            let (key, bytes) = match self.entries.next() {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Some(Err(e)),
                None => return Some(Err(Self::malformed("value lacks its last pieces"))),
            };
            if key.len() != 49
                || key[..41] != doc_key(self.collection, kind, seq)[..]
                || piece(&key) != (index, pieces)
            {
                return Some(Err(Self::malformed("value lacks a piece")));
            }
            value.extend_from_slice(&bytes);
        }
        Some(Ok((kind, seq, value)))
    }
}

impl<I> Iterator for DocValues<'_, I>
where
    I: Iterator<Item = Result<(Vec<u8>, Zeroizing<Vec<u8>>), StoreError>>,
{
    type Item = Result<DocValue, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_value()
    }
}

/// Refuses collection `name` unless it agrees with the commit record (`check`): one
/// that lost committed changes, or holds others, is never served.
pub(super) fn committed(name: &CollectionName, check: MarkCheck) -> Result<(), CollectionError> {
    match check {
        MarkCheck::Ok => Ok(()),
        MarkCheck::Behind { committed, found } => Err(StoreError::Diverged(format!(
            "collection {name} has {found} changes on disk, but {committed} were committed"
        ))
        .into()),
        MarkCheck::Differs => Err(StoreError::Diverged(format!(
            "collection {name} on disk is not the one committed"
        ))
        .into()),
    }
}

impl Collections {
    /// The generation of a collection on disk (its changes ever persisted), from the
    /// keys of its document alone.
    pub(super) fn generation_on_disk(&self, key: &[u8; 32]) -> Result<u64, StoreError> {
        let Some(last) = self.docs.last_key_with_prefix(key)? else {
            return Ok(0);
        };
        match parse_doc_key(key, &last) {
            Some((KIND_SNAPSHOT, seq)) => Ok(seq),
            Some((_, seq)) => Ok(seq + 1),
            None => Err(StoreError::Malformed(
                "a document key of a collection is malformed".into(),
            )),
        }
    }

    /// Writes the changes made since the last persist; returns whether there were any.
    pub(super) fn persist(
        &self,
        c: &mut Collection,
        known: Option<&[&str]>,
    ) -> Result<bool, CollectionError> {
        let mut writes = Writes::default();
        let head = self.log_heads(&[c.at.collection]).remove(0);
        let mut head = head.lock().expect("log head lock is never poisoned");
        let Some(prepared) = self.prepare(c, known, &mut writes, &mut head)? else {
            return Ok(false);
        };
        self.write(writes)?;
        drop(head);
        self.finish(c, prepared);
        Ok(true)
    }

    /// Adds to `writes` what persisting the changes made to `c` since its last persist
    /// writes — the change, the record index entries it touched and the index mark,
    /// the collection's name if it is new, the change log's entry (numbered from
    /// `log`, the collection's log head, held until the write is done) — and returns
    /// what [`Collections::finish`] notes once they are written; `None` if there is
    /// no change.
    pub(super) fn prepare(
        &self,
        c: &mut Collection,
        known: Option<&[&str]>,
        writes: &mut Writes,
        log: &mut super::log::LogHead,
    ) -> Result<Option<Prepared>, CollectionError> {
        // A part that arrived whole onto nothing is stored as it came, as its snapshot
        // covering generation 1; anything else, as the change since the last persist.
        let (kind, seq, bytes) = match c.whole.take() {
            Some(whole) if c.next_seq == 0 => (KIND_SNAPSHOT, 1, whole),
            _ => {
                let bytes = Zeroizing::new(c.doc.save_after(&c.persisted_heads));
                if bytes.is_empty() {
                    return Ok(None);
                }
                (KIND_CHANGE, c.next_seq, bytes)
            }
        };
        // A part with nothing on disk has no index entry either (entries are written
        // with their part's changes): its first change needs no lookups.
        let nothing_indexed = c.next_seq == 0 && c.indexed == Some(0);
        // The records this change touched: as the writer says, or from the change's
        // own operations (so the cost follows the change); a device catching up
        // indexes everything instead.
        let touched = match (c.indexed, known) {
            (Some(_), Some(known)) => Some(known.iter().map(|id| (*id).to_owned()).collect()),
            (Some(_), None) if !c.persisted_heads.is_empty() => {
                let since = c.persisted_heads.clone();
                Some(
                    records::records_touched_since(&mut c.doc, &since).unwrap_or_else(|| {
                        let heads = c.doc.get_heads();
                        records::touched_records(&c.doc.diff(&since, &heads))
                    }),
                )
            }
            // A part with nothing on disk yet (a device catching up on it): every
            // record it holds now is new to the index. Indexing it again instead would
            // read the whole collection's entries to find the part's (none), once a
            // part: a new device's first sync of 256 parts spent 15 ms a part there.
            (Some(0), None) if c.at.number.is_some() => Some(records::record_ids(&c.doc)),
            _ => None,
        };
        if !c.listed {
            // The collection's name, and the part's beside it if it is kept in parts
            // (`Collections::parts` finds them there).
            let name = c.name.as_str().as_bytes();
            self.names
                .batch_insert(&mut writes.names, &c.at.collection, name);
            if c.at.number.is_some() {
                self.names
                    .batch_insert(&mut writes.names, &parts::listing_key(&c.at), name);
            }
        }
        let mut mark = Mark {
            generation: c.next_seq + 1,
            count: 0,
            heads: c.doc.get_heads(),
        };
        match (c.indexed.take(), touched) {
            (Some(count), Some(touched)) => {
                let mut read = Vec::with_capacity(touched.len());
                let mut conflicts = Vec::with_capacity(touched.len());
                for id in &touched {
                    let record = records::read_for_index(&c.doc, id).map_err(|e| c.automerge(e))?;
                    // Only what arrives from another device can leave a conflict, and
                    // a write here can end one: both come through here.
                    let conflicted = record.is_some()
                        && !c.name.is_system()
                        && records::in_conflict(&c.doc, id).map_err(|e| c.automerge(e))?;
                    read.push((id.as_str(), record));
                    conflicts.push((id.as_str(), conflicted));
                }
                mark.count = count;
                let entries = match nothing_indexed {
                    true => Entries::None,
                    false => Entries::Looked,
                };
                if c.next_seq == 0 {
                    // The part's first change: its conflicts are all in this batch.
                    self.index.set_conflicts_indexed(&mut writes.index, &c.at);
                }
                if !c.name.is_system() {
                    self.index.note_conflicts(
                        &mut writes.index,
                        &c.at,
                        c.name.as_str(),
                        conflicts,
                        entries,
                    )?;
                }
                mark = (self.index).update_with(
                    &mut writes.index,
                    &c.at,
                    c.name.as_str(),
                    mark,
                    read,
                    entries,
                )?;
            }
            _ => {
                mark.count =
                    self.reindex(c, &mut writes.index, mark.generation, mark.heads.clone())?;
            }
        }
        insert_doc_value(&self.docs, &mut writes.docs, &c.at.key, kind, seq, &bytes);
        self.append_log(
            log,
            &c.at.collection,
            c.part,
            &c.persisted_heads,
            &mark.heads,
            &mut writes.log,
        )?;
        Ok(Some(Prepared {
            mark,
            bytes: bytes.len(),
            snapshot: kind == KIND_SNAPSHOT,
        }))
    }

    /// Writes what [`Collections::prepare`] added, for one collection or several, as
    /// one store transaction: the changes, their index entries and marks, and new
    /// names are all on disk after a crash, or none of them is (an index never runs
    /// ahead of its document, and a request's changes to several collections are
    /// all or nothing).
    pub(super) fn write(&self, writes: Writes) -> Result<(), CollectionError> {
        let batches: Vec<(&SealedTree, SealedBatch)> = [
            (&self.names, writes.names),
            (self.index.tree(), writes.index),
            (&self.docs, writes.docs),
            (&self.log, writes.log),
        ]
        .into_iter()
        .filter(|(_, batch)| !batch.is_empty())
        .collect();
        SealedTree::apply_together(&batches)?;
        Ok(())
    }

    /// Notes in memory (and in the store's ledger) that `c`'s prepared change is
    /// written, and starts a compaction if its changes have grown enough.
    pub(super) fn finish(&self, c: &mut Collection, prepared: Prepared) {
        let Prepared {
            mark,
            bytes,
            snapshot,
        } = prepared;
        c.listed = true;
        c.next_seq = mark.generation;
        if snapshot {
            c.snapshot_bytes += bytes;
        } else {
            c.changes_since_snapshot += 1;
            c.change_bytes += bytes;
        }
        c.persisted_heads = mark.heads;
        c.indexed = Some(mark.count);
        let ledger = self.store.ledger();
        match c.at.number {
            None => ledger.note(c.at.key, c.next_seq, &c.persisted_heads),
            Some(part) => ledger.note_part(c.at.collection, part, c.next_seq, &c.persisted_heads),
        }
        if (c.changes_since_snapshot >= COMPACT_AFTER || c.change_bytes >= COMPACT_BYTES)
            && c.change_bytes >= c.snapshot_bytes / 2
        {
            self.compact(c);
        }
    }

    /// Starts compacting `c` as it is on disk now, on a thread of its own
    /// ([`Compaction`]), unless a compaction of it is already running (the next change
    /// tries again).
    pub(super) fn compact(&self, c: &mut Collection) {
        if !self
            .compacting
            .lock()
            .expect("compaction lock is never poisoned")
            .insert(c.at.key)
        {
            return;
        }
        let job = Compaction {
            docs: self.docs.clone(),
            key: c.at.key,
            upto: c.next_seq,
            // A copy costs about an eighth of a save (ARCHITECTURE.md has the
            // figures), and the save is what the collection no longer waits for.
            doc: c.doc.clone(),
            layout: self.layout.clone(),
            compacting: self.compacting.clone(),
        };
        // Counted as done now, so the next changes do not start it again; if it fails,
        // the changes stay on disk (the next load counts them) and nothing is lost.
        c.snapshot_bytes += c.change_bytes;
        c.changes_since_snapshot = 0;
        c.change_bytes = 0;
        // A job not started is dropped, and its drop frees the collection for the next.
        if let Err(e) = self.store.spawn_background("compact", move || job.run()) {
            tracing::warn!(error = %e, "cannot start a compaction; will retry");
        }
    }

    /// A part in memory, loaded from the disk first if it is not. A load (which for a
    /// large part reads and decrypts its whole document) holds only its own part's
    /// gate: requests to other parts and collections go on meanwhile.
    pub(super) fn load(&self, name: &PartName) -> Result<Arc<Mutex<Collection>>, CollectionError> {
        let gate = {
            let open = self.open_slots();
            if let Some(slot) = open.get(name) {
                return Ok(slot.collection.clone());
            }
            self.loading
                .lock()
                .expect("loading lock is never poisoned")
                .entry(name.clone())
                .or_default()
                .clone()
        };
        let loaded = {
            let _only_loader = gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Loaded by the request this one waited for.
            let cached = self
                .open_slots()
                .get(name)
                .map(|slot| slot.collection.clone());
            match cached {
                Some(collection) => Ok(collection),
                None => self.read_collection(name).map(|collection| {
                    let bytes = collection.in_memory();
                    let collection = Arc::new(Mutex::new(collection));
                    self.open_slots().insert(
                        name.clone(),
                        Slot {
                            collection: collection.clone(),
                            bytes,
                            used: self.uses.fetch_add(1, Ordering::Relaxed),
                        },
                    );
                    collection
                }),
            }
        };
        // The last request through the gate takes it away (also one that found the
        // collection loaded by the request it waited for).
        let mut loading = self.loading.lock().expect("loading lock is never poisoned");
        if loading.get(name).is_some_and(|g| Arc::ptr_eq(g, &gate)) && Arc::strong_count(&gate) == 2
        {
            loading.remove(name);
        }
        loaded
    }

    /// Reads a part from the disk (checked against the commit record).
    pub(super) fn read_collection(&self, part: &PartName) -> Result<Collection, CollectionError> {
        self.verify_parts(&part.name)?;
        self.read_part(part)
    }

    /// [`Collections::read_collection`] without first checking a collection kept in
    /// parts as a whole (what that check itself reads).
    pub(super) fn read_part(&self, part: &PartName) -> Result<Collection, CollectionError> {
        self.read_at(part, self.place(part))
    }

    /// Part `part` of a collection as it is stored, its snapshot and then its changes
    /// (which Automerge loads as one document), for a device that has none of it: sent
    /// whole, it is neither loaded nor saved again here. Checked against the commit
    /// record as a load is, through the part's index mark, which must be current with
    /// what was read; `None` if it is not (a change landed meanwhile, or the mark must
    /// be built again) or the part has nothing stored: the caller syncs it the usual
    /// way, which loads and checks the document itself.
    pub fn stored_part(
        &self,
        name: &CollectionName,
        part: u16,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, CollectionError> {
        let part = self.synced_part(name, part)?;
        self.verify_parts(name)?;
        let at = self.place(&part);
        let before = self.index.mark(&at)?;
        let stored = self.stored_values(name, &at.key)?;
        let after = self.index.mark(&at)?;
        let generation = stored.generation;
        if generation == 0 || before != after || after.generation != generation {
            return Ok(None);
        }
        self.check_committed(name, &at, generation, &after.heads)?;
        let snapshot = stored.snapshot.as_deref().map_or(&[][..], |s| s.as_slice());
        // One reservation, so that no plaintext copy is left behind by growing.
        let mut whole = Zeroizing::new(Vec::with_capacity(snapshot.len() + stored.changes.len()));
        whole.extend_from_slice(snapshot);
        whole.extend_from_slice(&stored.changes);
        Ok(Some(whole))
    }

    /// Refuses the document kept at `at` unless its generation and heads are the ones
    /// the commit record holds for it (as a whole collection, or as a part).
    fn check_committed(
        &self,
        name: &CollectionName,
        at: &Part,
        generation: u64,
        heads: &[ChangeHash],
    ) -> Result<(), CollectionError> {
        let ledger = self.store.ledger();
        let checked = match at.number {
            None => ledger.check(&at.key, generation, heads),
            Some(number) => ledger.check_part(&at.collection, number, generation, heads),
        };
        committed(name, checked)
    }

    /// The values of the document kept under `key` (of collection `name`), read in one
    /// scan while no compaction can replace them.
    fn stored_values(
        &self,
        name: &CollectionName,
        key: &[u8; 32],
    ) -> Result<Stored, CollectionError> {
        let mut stored = Stored::default();
        // A compaction replacing keys meanwhile would show this scan half of it. Held
        // for the scan only: the document is made from what was read after it.
        let _layout = self.layout.lock().expect("layout lock is never poisoned");
        for value in DocValues::new(key, self.docs.scan_prefix(key)) {
            let (kind, seq, bytes) = value.map_err(|e| match e {
                StoreError::Malformed(reason) => {
                    StoreError::Malformed(format!("collection {name}: {reason}"))
                }
                e => e,
            })?;
            if kind == KIND_SNAPSHOT {
                if stored.snapshot.is_some() {
                    return Err(StoreError::Malformed(format!(
                        "collection {name} has two snapshots"
                    ))
                    .into());
                }
                stored.generation = seq;
                stored.snapshot = Some(bytes);
            } else {
                // Kept together: Automerge applies them in one call much faster than
                // one call per change on a large document.
                stored.changes.extend_from_slice(&bytes);
                stored.generation = seq + 1;
                stored.change_count += 1;
            }
        }
        Ok(stored)
    }

    /// Reads the document kept at `at` as part `part` (checked against the commit
    /// record as what it is: a whole collection, or a part).
    pub(super) fn read_at(&self, part: &PartName, at: Part) -> Result<Collection, CollectionError> {
        let (name, key) = (&part.name, at.key);
        let listed = self.names.contains_key(&parts::listing_key(&at))?;
        let corrupt = |e: AutomergeError| CollectionError::Document {
            collection: name.to_string(),
            reason: e.to_string(),
        };
        let stored = self.stored_values(name, &key)?;
        let next_seq = stored.generation;
        let changes_since_snapshot = stored.change_count;
        let snapshot_bytes = stored.snapshot.as_ref().map_or(0, |s| s.len());
        let change_bytes = stored.changes.len();
        let mut doc = match &stored.snapshot {
            Some(snapshot) => AutoCommit::load(snapshot).map_err(corrupt)?,
            None => AutoCommit::new(),
        };
        if !stored.changes.is_empty() {
            doc.load_incremental(&stored.changes).map_err(corrupt)?;
        }
        drop(stored);
        // Most of what the load allocated is free again, and the rest will be once the
        // cache drops the part: counted towards giving it back to the system.
        crate::memory::note_loaded(snapshot_bytes + change_bytes);
        doc.set_actor(self.actor.clone());
        let persisted_heads = doc.get_heads();
        let mark = self.index.mark(&at)?;
        // (A part indexed before conflicts were noted has its conflicts found by the
        // next read of its collection: `Collections::indexed`.)
        let indexed =
            (mark.generation == next_seq && mark.heads == persisted_heads).then_some(mark.count);
        // Checked against the commit record: a collection that lost committed changes
        // (or holds others) is refused, never served.
        self.check_committed(name, &at, next_seq, &persisted_heads)?;
        let collection = Collection {
            name: name.clone(),
            part: part.part,
            at,
            doc,
            persisted_heads,
            listed,
            indexed,
            next_seq,
            changes_since_snapshot,
            change_bytes,
            snapshot_bytes,
            stale: false,
            whole: None,
        };
        Ok(collection)
    }
}
