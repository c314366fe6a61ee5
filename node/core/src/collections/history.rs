//! A collection's history: its heads, Automerge sync with another device, whole
//! documents for pairing, and a snapshot of every collection at one moment. (What
//! changed since a DAV sync token or the event pump's last turn: `log`.)

use super::*;

/// Every collection as it was at one moment: the heads of each document, taken while
/// no collection could change. Reads go to the live documents' history at those
/// heads, so the snapshot costs no copy.
pub struct Snapshot<'a> {
    collections: &'a Collections,
    /// The heads of every part of every collection.
    heads: std::collections::BTreeMap<PartName, Vec<ChangeHash>>,
}

impl RecordSource for Snapshot<'_> {
    fn collection_names(&self) -> Result<Vec<CollectionName>, CollectionError> {
        let mut names: Vec<CollectionName> = self.heads.keys().map(|p| p.name.clone()).collect();
        names.dedup();
        Ok(names)
    }

    fn collection_records(&self, name: &CollectionName) -> Result<Vec<Json>, CollectionError> {
        let mut out = Vec::new();
        for (part, heads) in self.heads.iter().filter(|(p, _)| p.name == *name) {
            self.collections.with(part, |c| {
                for id in automerge::ReadDoc::keys_at(&c.doc, automerge::ROOT, heads) {
                    if let Some(record) =
                        records::read_record_at(&c.doc, &id, heads).map_err(|e| c.automerge(e))?
                    {
                        out.push((id, record));
                    }
                }
                Ok(())
            })?;
        }
        out.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(out.into_iter().map(|(id, r)| with_id(&id, r)).collect())
    }
}

impl Collections {
    /// Every collection's name and digest (`hearth_protocol::sync::parts_digest` of
    /// its [`Collections::part_digests`]), in name order: what sync compares first.
    pub fn digests(&self) -> Result<Vec<(CollectionName, [u8; 32])>, CollectionError> {
        Ok(hearth_protocol::sync::collection_digests(
            &self.part_digests()?,
        ))
    }

    /// Every collection's parts, each with its heads digest
    /// (`hearth_protocol::commit::heads_digest`), in name and part order, from the
    /// record index's marks (each written in the same transaction as its part's
    /// changes): no document is read unless its index must be built again. A
    /// collection of one part has part 0 (written or not).
    pub fn part_digests(
        &self,
    ) -> Result<Vec<(CollectionName, hearth_protocol::sync::PartDigests)>, CollectionError> {
        let heads_digest =
            |mark: &Mark| hearth_protocol::commit::heads_digest(mark.heads.iter().map(|h| &h.0));
        let mut out = Vec::new();
        for name in self.names()? {
            let key = self.indexed(&name)?;
            let parts = match self.fan_out(&name) {
                1 => vec![(0, heads_digest(&self.index.mark(&Part::whole(key))?))],
                _ => self
                    .index
                    .part_marks(&key)?
                    .iter()
                    .map(|(number, mark)| (*number, heads_digest(mark)))
                    .collect(),
            };
            if !parts.is_empty() {
                out.push((name, parts));
            }
        }
        Ok(out)
    }

    /// Every collection at one moment (see [`Snapshot`]): every part of every
    /// collection is locked, in part order (as every holder of several locks takes
    /// them: `with_all`), until the heads of all are taken.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, CollectionError> {
        let mut parts = Vec::new();
        for name in self.names()? {
            parts.extend(self.parts(&name)?);
        }
        let heads = self.with_all(&parts, |guards| {
            Ok(guards
                .iter_mut()
                .map(|c| (c.id(), c.doc.get_heads()))
                .collect())
        })?;
        Ok(Snapshot {
            collections: self,
            heads,
        })
    }

    /// The whole document of a collection, as Automerge saves it.
    pub fn save_document(&self, name: &CollectionName) -> Result<Vec<u8>, CollectionError> {
        self.with(&self.whole(name, "pairing")?, |c| Ok(c.doc.save()))
    }

    /// Merges a whole saved document (from another device) into a collection.
    /// Durable only after [`Store::commit`].
    pub fn merge_document(
        &self,
        name: &CollectionName,
        bytes: &[u8],
    ) -> Result<(), CollectionError> {
        let user = !name.is_system();
        let restored = self.mutate(&self.whole(name, "pairing")?, FROM_CHANGES, |doc| {
            let before = doc.get_heads();
            doc.load_incremental(bytes)?;
            if before.is_empty() {
                // All of it is new, and nothing here competes with it (merge_texts_in).
                return Ok(Vec::new());
            }
            let received = doc.get_changes(&before);
            merged(doc, &before, &received, user)
        })?;
        self.note_restored(name, restored)
    }

    /// The next Automerge sync message of part `part` of a collection for a peer
    /// whose sync state (for that part) is `state`, if there is anything to say.
    pub fn generate_sync(
        &self,
        name: &CollectionName,
        part: u16,
        state: &mut sync::State,
    ) -> Result<Option<Vec<u8>>, CollectionError> {
        self.with(&self.synced_part(name, part)?, |c| {
            Ok(c.doc
                .sync()
                .generate_sync_message(state)
                .map(sync::Message::encode))
        })
    }

    /// Applies a sync message from a peer to part `part` of a collection and persists
    /// what it brought. Returns how many changes it brought. Durable only after
    /// [`Store::commit`].
    pub fn receive_sync(
        &self,
        name: &CollectionName,
        part: u16,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<usize, CollectionError> {
        let part = self.synced_part(name, part)?;
        let message =
            sync::Message::decode(message).map_err(|e| CollectionError::BadSyncMessage {
                collection: name.to_string(),
                reason: e.to_string(),
            })?;
        self.apply_received(name, &part, |doc| {
            doc.sync().receive_sync_message(state, message)
        })
    }

    /// Applies what a peer sent to part `part` (`apply` changes the document), merges
    /// it by the merge rules and persists it: how a sync message and a part sent whole
    /// both land. Returns how many changes it brought. Durable only after
    /// [`Store::commit`].
    fn apply_received(
        &self,
        name: &CollectionName,
        part: &PartName,
        apply: impl FnOnce(&mut AutoCommit) -> Result<(), AutomergeError>,
    ) -> Result<usize, CollectionError> {
        let user = !name.is_system();
        let (count, restored) = self.mutate(part, FROM_CHANGES, |doc| {
            let before = doc.get_heads();
            apply(doc)?;
            if doc.get_heads() == before {
                return Ok((0, Vec::new()));
            }
            if before.is_empty() {
                // A device catching up: nothing here competes with what arrived
                // (merge_texts_in). Counted from the changes' metadata: copying the
                // whole history out of the document would double its memory.
                return Ok((doc.get_changes_meta(&before).len(), Vec::new()));
            }
            merge_received(doc, &before, user)
        })?;
        self.note_restored(name, restored)?;
        Ok(count)
    }

    /// Applies part `part` of a collection as a peer sent it whole (its
    /// [`Collections::stored_part`]). Onto a part this device has nothing of, the
    /// document is loaded as a load from the disk loads it, then stored as it came, as
    /// the part's snapshot, not saved again change by change (it keeps the sender's
    /// layout: changes the sender had not compacted are applied at every load until
    /// this side compacts them). Onto a part with changes of its own, it is merged as
    /// sync merges. Returns how many changes it brought. Durable only after
    /// [`Store::commit`].
    pub fn receive_whole(
        &self,
        name: &CollectionName,
        part: u16,
        bytes: &[u8],
    ) -> Result<usize, CollectionError> {
        let part = self.synced_part(name, part)?;
        let refused = |e: AutomergeError| CollectionError::BadSyncMessage {
            collection: name.to_string(),
            reason: format!("the part it sent whole does not load: {e}"),
        };
        let mut arrived = AutoCommit::load(bytes).map_err(refused)?;
        crate::memory::note_loaded(bytes.len());
        // Kept as it came onto nothing; else given back, to be merged.
        let kept = self.with(&part, |c| {
            if c.next_seq != 0 || !c.doc.get_heads().is_empty() {
                return Ok(Err(arrived));
            }
            let count = arrived.get_changes_meta(&[]).len();
            c.doc = arrived;
            c.doc.set_actor(self.actor.clone());
            c.whole = Some(Zeroizing::new(bytes.to_vec()));
            self.persist_or_forget(c, FROM_CHANGES)?;
            Ok(Ok(count))
        })?;
        let mut arrived = match kept {
            Ok(count) => return Ok(count),
            Err(arrived) => arrived,
        };
        self.apply_received(name, &part, |doc| doc.merge(&mut arrived).map(drop))
    }

    /// Part `part` of a collection for a backup: its heads, and either the Automerge
    /// changes after `after` (`false`), or the whole part as Automerge saves it
    /// (`true`) when `after` is empty or names a change the part does not have (the
    /// backup's chain of that part then starts again).
    pub fn part_for_backup(
        &self,
        name: &CollectionName,
        part: u16,
        after: &[automerge::ChangeHash],
    ) -> Result<(Vec<automerge::ChangeHash>, Vec<u8>, bool), CollectionError> {
        let part = self.synced_part(name, part)?;
        self.with(&part, |c| {
            let heads = c.doc.get_heads();
            let known = !after.is_empty()
                && after
                    .iter()
                    .all(|h| c.doc.get_change_meta_by_hash(h).is_some());
            Ok(if known {
                (heads, c.doc.save_after(after), false)
            } else {
                (heads, c.doc.save(), true)
            })
        })
    }

    /// Applies Automerge changes (as `save_after` writes them) to part `part` of a
    /// collection, merged by the merge rules and persisted, as sync's are: how a
    /// restore from a backup host replays a part's later changes. Returns how many
    /// changes they brought. Durable only after [`Store::commit`].
    pub fn receive_changes(
        &self,
        name: &CollectionName,
        part: u16,
        bytes: &[u8],
    ) -> Result<usize, CollectionError> {
        let part = self.synced_part(name, part)?;
        self.apply_received(name, &part, |doc| doc.load_incremental(bytes).map(drop))
    }

    /// The heads of a collection's document: equal heads, equal content.
    pub fn heads(
        &self,
        name: &CollectionName,
    ) -> Result<Vec<automerge::ChangeHash>, CollectionError> {
        self.with(&self.whole(name, "history")?, |c| Ok(c.doc.get_heads()))
    }
}

/// Merges what arrived since `before` with this side's changes (`merged`); returns how
/// many changes arrived and the records it kept.
fn merge_received(
    doc: &mut AutoCommit,
    before: &[ChangeHash],
    user: bool,
) -> Result<(usize, Vec<recordmerge::Restored>), AutomergeError> {
    let received = doc.get_changes(before);
    let restored = merged(doc, before, &received, user)?;
    Ok((received.len(), restored))
}
