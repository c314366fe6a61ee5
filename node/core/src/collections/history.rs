//! A collection's history: its heads, the changes since some heads (for event streams
//! and DAV sync tokens), Automerge sync with another device, whole documents for
//! pairing, and a snapshot of every collection at one moment.

use super::*;

/// Every collection as it was at one moment: the heads of each document, taken while
/// no collection could change. Reads go to the live documents' history at those
/// heads, so the snapshot costs no copy.
pub struct Snapshot<'a> {
    collections: &'a Collections,
    heads: std::collections::BTreeMap<CollectionName, Vec<ChangeHash>>,
}

impl RecordSource for Snapshot<'_> {
    fn collection_names(&self) -> Result<Vec<CollectionName>, CollectionError> {
        Ok(self.heads.keys().cloned().collect())
    }

    fn collection_records(&self, name: &CollectionName) -> Result<Vec<Json>, CollectionError> {
        let Some(heads) = self.heads.get(name) else {
            return Ok(Vec::new());
        };
        self.collections.with(name, |c| {
            let mut out = Vec::new();
            for id in automerge::ReadDoc::keys_at(&c.doc, automerge::ROOT, heads) {
                if let Some(record) =
                    records::read_record_at(&c.doc, &id, heads).map_err(|e| c.automerge(e))?
                {
                    out.push(with_id(&id, record));
                }
            }
            Ok(out)
        })
    }
}

impl Collections {
    /// Every collection's name and heads digest (`hearth_protocol::commit::
    /// heads_digest`), in name order, from the record index's marks: no document is
    /// read unless its index must be built again. What sync compares before it reads
    /// any document.
    pub fn digests(&self) -> Result<Vec<(CollectionName, [u8; 32])>, CollectionError> {
        let mut out = Vec::new();
        for name in self.names()? {
            let heads = self.persisted_heads(&name)?;
            out.push((
                name,
                hearth_protocol::commit::heads_digest(heads.iter().map(|h| &h.0)),
            ));
        }
        Ok(out)
    }

    /// The heads of a collection as they are on disk, from its record index's mark
    /// (the mark is written in the same transaction as every change).
    pub fn persisted_heads(
        &self,
        name: &CollectionName,
    ) -> Result<Vec<ChangeHash>, CollectionError> {
        let key = self.indexed(name)?;
        Ok(self.index.mark(&key)?.heads)
    }

    /// Every collection at one moment (see [`Snapshot`]): each collection is locked,
    /// in the order of their names (as every holder of several locks takes them:
    /// `with_all`), until the heads of all are taken.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, CollectionError> {
        let names = self.names()?;
        let heads = self.with_all(&names, |guards| {
            Ok(guards
                .iter_mut()
                .map(|c| (c.name.clone(), c.doc.get_heads()))
                .collect())
        })?;
        Ok(Snapshot {
            collections: self,
            heads,
        })
    }

    /// The whole document of a collection, as Automerge saves it.
    pub fn save_document(&self, name: &CollectionName) -> Result<Vec<u8>, CollectionError> {
        self.with(name, |c| Ok(c.doc.save()))
    }

    /// Merges a whole saved document (from another device) into a collection.
    /// Durable only after [`Store::commit`].
    pub fn merge_document(
        &self,
        name: &CollectionName,
        bytes: &[u8],
    ) -> Result<(), CollectionError> {
        let user = !name.is_system();
        let restored = self.mutate(name, FROM_CHANGES, |doc| {
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

    /// The next Automerge sync message for a peer whose sync state is `state`, if
    /// there is anything to say.
    pub fn generate_sync(
        &self,
        name: &CollectionName,
        state: &mut sync::State,
    ) -> Result<Option<Vec<u8>>, CollectionError> {
        self.with(name, |c| {
            Ok(c.doc
                .sync()
                .generate_sync_message(state)
                .map(sync::Message::encode))
        })
    }

    /// Applies a sync message from a peer and persists what it brought. Returns
    /// how many changes it brought. Durable only after [`Store::commit`].
    pub fn receive_sync(
        &self,
        name: &CollectionName,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<usize, CollectionError> {
        let message =
            sync::Message::decode(message).map_err(|e| CollectionError::BadSyncMessage {
                collection: name.to_string(),
                reason: e.to_string(),
            })?;
        let user = !name.is_system();
        let (count, restored) = self.mutate(name, FROM_CHANGES, |doc| {
            let before = doc.get_heads();
            doc.sync().receive_sync_message(state, message)?;
            if doc.get_heads() == before {
                return Ok((0, Vec::new()));
            }
            if before.is_empty() {
                // A device catching up: nothing here competes with what arrived
                // (merge_texts_in). Counted from the changes' metadata: copying the
                // whole history out of the document would double its memory.
                return Ok((doc.get_changes_meta(&before).len(), Vec::new()));
            }
            let received = doc.get_changes(&before);
            let restored = merged(doc, &before, &received, user)?;
            Ok((received.len(), restored))
        })?;
        self.note_restored(name, restored)?;
        Ok(count)
    }

    /// The heads of a collection's document: equal heads, equal content.
    pub fn heads(
        &self,
        name: &CollectionName,
    ) -> Result<Vec<automerge::ChangeHash>, CollectionError> {
        self.with(name, |c| Ok(c.doc.get_heads()))
    }

    /// Starts indexing a collection's changes so that [`Collections::changes_since`]
    /// its current heads costs what the changes cost, not what the collection does.
    /// Returns those heads.
    pub fn track_changes(&self, name: &CollectionName) -> Result<Vec<ChangeHash>, CollectionError> {
        self.with(name, |c| {
            c.doc.update_diff_cursor();
            Ok(c.doc.get_heads())
        })
    }

    /// The records that changed since `since` (heads of this document), each as it
    /// was then and as it is now, and the heads now.
    pub fn changes_since(
        &self,
        name: &CollectionName,
        since: &[ChangeHash],
    ) -> Result<(Vec<ChangeHash>, Vec<RecordChange>), CollectionError> {
        self.with(name, |c| {
            let heads = c.doc.get_heads();
            if heads == since {
                return Ok((heads, Vec::new()));
            }
            // Indexed (cheap) when `since` is where the diff cursor stands; a document
            // reloaded since then is diffed by a scan.
            let patches = c.doc.diff(since, &heads);
            c.doc.update_diff_cursor();
            let mut changes = Vec::new();
            for id in records::touched_records(&patches) {
                let before = records::read_record_at(&c.doc, &id, since)
                    .map_err(|e| c.automerge(e))?
                    .map(|r| with_id_map(&id, r));
                let after = records::read_record(&c.doc, &id)
                    .map_err(|e| c.automerge(e))?
                    .map(|r| with_id_map(&id, r));
                if before != after {
                    changes.push(RecordChange { id, before, after });
                }
            }
            Ok((heads, changes))
        })
    }

    /// Like [`Collections::changes_since`] but leaves the diff cursor where it is (for
    /// readers with their own old heads, such as a DAV sync token, which must not make
    /// the event pump's next diff a scan). Costs a scan of the document.
    pub fn changes_between(
        &self,
        name: &CollectionName,
        since: &[ChangeHash],
    ) -> Result<(Vec<ChangeHash>, Vec<RecordChange>), CollectionError> {
        self.with(name, |c| {
            let heads = c.doc.get_heads();
            if heads == since {
                return Ok((heads, Vec::new()));
            }
            // From the changes' own operations when each can be placed; else a diff.
            let touched = match records::records_touched_since(&mut c.doc, since) {
                Some(ids) => ids,
                None => records::touched_records(&c.doc.diff(since, &heads)),
            };
            let mut changes = Vec::new();
            for id in touched {
                let before = records::read_record_at(&c.doc, &id, since)
                    .map_err(|e| c.automerge(e))?
                    .map(|r| with_id_map(&id, r));
                let after = records::read_record(&c.doc, &id)
                    .map_err(|e| c.automerge(e))?
                    .map(|r| with_id_map(&id, r));
                if before != after {
                    changes.push(RecordChange { id, before, after });
                }
            }
            Ok((heads, changes))
        })
    }

    /// Whether every one of `heads` is a change this collection has (a sync token
    /// from this collection's history, not a made-up or foreign one).
    pub fn knows(
        &self,
        name: &CollectionName,
        heads: &[ChangeHash],
    ) -> Result<bool, CollectionError> {
        self.with(name, |c| {
            // The change graph answers this; fetching the changes would rebuild them.
            let missing = c.doc.get_missing_deps(heads);
            Ok(!missing.iter().any(|h| heads.contains(h)))
        })
    }
}
