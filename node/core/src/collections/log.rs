//! A collection's change log: one entry for every change persisted to one of its
//! parts, local or from sync — the part, its heads before and its heads after —
//! appended in the store transaction that writes the change (tree `log`, key
//! `name_key || seq u64be`). A place in the log ([`LogPosition`]) is what a DAV sync
//! token and the event pump keep: what changed since is read from the entries after
//! it, and only the parts they name are opened (docs/design/bounded-documents.md,
//! step 2). Heads would not do once a collection is kept in parts: a token would
//! hold every part's heads.
//!
//! Entries are numbered from 1, in the order they reach the disk: a collection's
//! writers hold its [`LogHead`] from the number's choice until the write is done
//! (after their part locks, never before one, so it cannot deadlock). A write that
//! fails leaves its number unused. The last [`LOG_KEEP`] entries are kept (each
//! append removes the one that many before it); a position older than that, or from
//! another log (another vault's store, a store made again: the `epoch` differs), is
//! refused, and a DAV client then syncs again from the start (RFC 6578's
//! `valid-sync-token`).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::*;

/// Entries kept per collection.
pub const LOG_KEEP: u64 = 65_536;
/// The part an entry names when its collection was split into parts: the entries
/// before it name the document split, so a position before it is refused.
const SPLIT: u16 = u16::MAX;
const EPOCH_KEY: &[u8] = b"epoch";

/// A place in a collection's change log: after entry `seq` (0: before the first) of
/// the log of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub epoch: u64,
    pub seq: u64,
}

/// The next number of a collection's log (`None` until read from the disk), held
/// while a change is prepared and written.
#[derive(Default)]
pub(super) struct LogHead {
    next: Option<u64>,
}

fn entry_key(collection: &[u8; 32], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(40);
    key.extend_from_slice(collection);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.get(32..40)
        .filter(|_| key.len() == 40)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Malformed("a change log key is malformed".into()))
}

/// An entry: part u16be, then the heads before and after, each as a u16be count and
/// 32 bytes a head.
fn encode_entry(part: u16, before: &[ChangeHash], after: &[ChangeHash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + 32 * (before.len() + after.len()));
    out.extend_from_slice(&part.to_be_bytes());
    for heads in [before, after] {
        let count = u16::try_from(heads.len()).expect("a document has far fewer than 65,536 heads");
        out.extend_from_slice(&count.to_be_bytes());
        for head in heads {
            out.extend_from_slice(&head.0);
        }
    }
    out
}

type Entry = (u16, Vec<ChangeHash>, Vec<ChangeHash>);

fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    let malformed = || StoreError::Malformed("a change log entry is malformed".into());
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        let (taken, left) = rest.split_at_checked(n).ok_or_else(malformed)?;
        rest = left;
        Ok(taken)
    };
    let part = u16::from_be_bytes(take(2)?.try_into().map_err(|_| malformed())?);
    let mut heads = || -> Result<Vec<ChangeHash>, StoreError> {
        let count = u16::from_be_bytes(take(2)?.try_into().map_err(|_| malformed())?);
        (0..count)
            .map(|_| Ok(ChangeHash(take(32)?.try_into().map_err(|_| malformed())?)))
            .collect()
    };
    let before = heads()?;
    let after = heads()?;
    if !rest.is_empty() {
        return Err(malformed());
    }
    Ok((part, before, after))
}

/// The log's epoch in `log`, made (at random) the first time.
pub(super) fn epoch(log: &SealedTree) -> Result<u64, StoreError> {
    if let Some(bytes) = log.get(EPOCH_KEY)? {
        let bytes: [u8; 8] = bytes[..]
            .try_into()
            .map_err(|_| StoreError::Malformed("the change log's epoch is malformed".into()))?;
        return Ok(u64::from_be_bytes(bytes));
    }
    let epoch: u64 = rand::random();
    log.insert(EPOCH_KEY, &epoch.to_be_bytes())?;
    Ok(epoch)
}

impl Collections {
    /// Keeps `entries` entries in each log from now on, not [`LOG_KEEP`]: for tests of
    /// positions older than the log keeps.
    #[cfg(test)]
    pub(crate) fn set_log_keep(&self, entries: u64) {
        self.log_keep.store(entries, Ordering::Relaxed);
    }

    /// The log heads of the collections whose name keys are `collections`, in the
    /// order given (the order their parts were locked in, so always the same).
    pub(super) fn log_heads(&self, collections: &[[u8; 32]]) -> Vec<Arc<Mutex<LogHead>>> {
        let mut heads = self.logs.lock().expect("log lock is never poisoned");
        collections
            .iter()
            .map(|key| heads.entry(*key).or_default().clone())
            .collect()
    }

    /// Adds to `batch` the entry for a change of part `part` from heads `before` to
    /// `after`, and the removal of the entry [`LOG_KEEP`] before it.
    pub(super) fn append_log(
        &self,
        head: &mut LogHead,
        collection: &[u8; 32],
        part: u16,
        before: &[ChangeHash],
        after: &[ChangeHash],
        batch: &mut SealedBatch,
    ) -> Result<(), StoreError> {
        let seq = match head.next {
            Some(next) => next,
            None => match self.log.last_key_with_prefix(collection)? {
                Some(key) => seq_of(&key)? + 1,
                None => 1,
            },
        };
        self.log.batch_insert(
            batch,
            &entry_key(collection, seq),
            &encode_entry(part, before, after),
        );
        let keep = self.log_keep.load(Ordering::Relaxed);
        if seq > keep {
            self.log
                .batch_remove(batch, &entry_key(collection, seq - keep));
        }
        head.next = Some(seq + 1);
        Ok(())
    }

    /// Adds to `batch` what a split of the collection whose name key is `collection`
    /// does to its log: its entries removed, and, if it had any, an entry that marks
    /// the split, numbered after them (positions stay unique, and every one before
    /// the split is refused).
    pub(super) fn log_split(
        &self,
        collection: &[u8; 32],
        batch: &mut SealedBatch,
    ) -> Result<(), StoreError> {
        let last = self.last_logged(collection)?;
        if last == 0 {
            return Ok(());
        }
        for key in self.log.keys_with_prefix(collection) {
            self.log.batch_remove(batch, &key?);
        }
        self.log.batch_insert(
            batch,
            &entry_key(collection, last + 1),
            &encode_entry(SPLIT, &[], &[]),
        );
        // Numbered from the disk again.
        self.logs
            .lock()
            .expect("log lock is never poisoned")
            .remove(collection);
        Ok(())
    }

    /// Where the log of collection `name` ends now.
    pub fn log_position(&self, name: &CollectionName) -> Result<LogPosition, CollectionError> {
        let collection = self.collection_key(name);
        Ok(LogPosition {
            epoch: self.epoch,
            seq: self.last_logged(&collection)?,
        })
    }

    fn last_logged(&self, collection: &[u8; 32]) -> Result<u64, StoreError> {
        match self.log.last_key_with_prefix(collection)? {
            Some(key) => seq_of(&key),
            None => Ok(0),
        }
    }

    /// The records of collection `name` that changed after log position `since`, each
    /// as it was there and as it is at the position returned (the log's end when it
    /// was read), sorted by id; `None` if `since` is not a position of this log (from
    /// another epoch, beyond its end, or older than the entries it keeps).
    pub fn changes_after(
        &self,
        name: &CollectionName,
        since: LogPosition,
    ) -> Result<Option<(LogPosition, Vec<RecordChange>)>, CollectionError> {
        let Some((now, parts)) = self.parts_after(name, since)? else {
            return Ok(None);
        };
        let mut changes = Vec::new();
        for (part, (before, after)) in parts {
            self.with(&part, |c| {
                changes.extend(changes_in(c, &before, &after)?);
                Ok(())
            })?;
        }
        changes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Some((now, changes)))
    }

    /// What a follower that keeps only the present needs of [`Collections::changes_after`]:
    /// the records that may have changed after `since` (some perhaps unchanged), each
    /// as it reads now (`None`: gone) without its top-level fields `skipped`, sorted by
    /// id; `None` as there. Nothing is read as it was, and a skipped field (a folder's
    /// entries, a card's text) is not read at all: a file put into a folder of 10,000
    /// costs the search index what a file put into an empty one does.
    pub fn touched_after(
        &self,
        name: &CollectionName,
        since: LogPosition,
        skipped: &[&str],
    ) -> Result<Option<(LogPosition, Touched)>, CollectionError> {
        let Some((now, parts)) = self.parts_after(name, since)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (part, (before, after)) in parts {
            self.with(&part, |c| {
                if before == after {
                    return Ok(());
                }
                let touched = match records::records_touched_since(&mut c.doc, &before) {
                    Some(ids) => ids,
                    None => records::touched_records(&c.doc.diff(&before, &after)),
                };
                for id in touched {
                    let record = records::read_record_except(&c.doc, &id, skipped)
                        .map_err(|e| c.automerge(e))?
                        .map(|r| with_id_map(&id, r));
                    out.push((id, record));
                }
                Ok(())
            })?;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some((now, out)))
    }

    /// The position of the log's end, and each part of `name` changed after `since`
    /// with its heads there (before its first entry after it) and at the end (after
    /// its last entry); `None` if `since` is not a position of this log.
    #[allow(clippy::type_complexity)]
    fn parts_after(
        &self,
        name: &CollectionName,
        since: LogPosition,
    ) -> Result<
        Option<(
            LogPosition,
            BTreeMap<PartName, (Vec<ChangeHash>, Vec<ChangeHash>)>,
        )>,
        CollectionError,
    > {
        if since.epoch != self.epoch {
            return Ok(None);
        }
        let collection = self.collection_key(name);
        let last = self.last_logged(&collection)?;
        if since.seq > last {
            return Ok(None);
        }
        let first = self
            .log
            .keys_in(
                (
                    Bound::Included(entry_key(&collection, 0)),
                    Bound::Included(entry_key(&collection, u64::MAX)),
                ),
                1,
            )?
            .first()
            .map(|key| seq_of(key))
            .transpose()?;
        if first.is_some_and(|first| since.seq + 1 < first) {
            return Ok(None);
        }
        let mut parts: BTreeMap<PartName, (Vec<ChangeHash>, Vec<ChangeHash>)> = BTreeMap::new();
        let range = (
            Bound::Excluded(entry_key(&collection, since.seq)),
            Bound::Included(entry_key(&collection, last)),
        );
        for entry in self.log.scan_range(range) {
            let (_, bytes) = entry?;
            let (part, before, after) = decode_entry(&bytes)?;
            if part == SPLIT {
                return Ok(None);
            }
            let part = PartName {
                name: name.clone(),
                part,
            };
            parts.entry(part).or_insert((before, Vec::new())).1 = after;
        }
        let now = LogPosition {
            epoch: self.epoch,
            seq: last,
        };
        Ok(Some((now, parts)))
    }
}

/// What [`Collections::touched_after`] finds: each record touched, by id, as it reads
/// now (`None`: gone).
pub type Touched = Vec<(String, Option<Map<String, Json>>)>;

/// The records of a part that differ between heads `before` and `after`.
fn changes_in(
    c: &mut Collection,
    before: &[ChangeHash],
    after: &[ChangeHash],
) -> Result<Vec<RecordChange>, CollectionError> {
    if before == after {
        return Ok(Vec::new());
    }
    // From the changes' own operations when each can be placed (a superset: changes
    // after `after` too); else a diff.
    let touched = match records::records_touched_since(&mut c.doc, before) {
        Some(ids) => ids,
        None => records::touched_records(&c.doc.diff(before, after)),
    };
    let now = c.doc.get_heads();
    let mut changes = Vec::new();
    for id in touched {
        let read = |heads: &[ChangeHash]| match heads {
            [] => Ok(None),
            heads if heads == now.as_slice() => records::read_record(&c.doc, &id),
            heads => records::read_record_at(&c.doc, &id, heads),
        };
        let was = read(before)
            .map_err(|e| c.automerge(e))?
            .map(|r| with_id_map(&id, r));
        let is = read(after)
            .map_err(|e| c.automerge(e))?
            .map(|r| with_id_map(&id, r));
        if was != is {
            changes.push(RecordChange {
                id,
                before: was,
                after: is,
            });
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collections::tests::{id, name, obj, put_numbered};
    use crate::testutil::TestVault;
    use serde_json::json;

    /// Positions survive a restart (the same epoch, the same entries); a position
    /// older than the entries kept is refused, one just inside is answered; another
    /// store's log has another epoch.
    #[tokio::test]
    async fn positions_outlive_a_restart_and_too_old_ones_are_refused() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let notes = name("notes");
        let start = c.log_position(&notes).unwrap();
        assert_eq!(start.seq, 0);
        put_numbered(&c, &notes, 1);
        let one = c.log_position(&notes).unwrap();
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        assert_eq!(
            c.log_position(&notes).unwrap(),
            one,
            "the same log after a restart"
        );
        let (_, changes) = c.changes_after(&notes, start).unwrap().unwrap();
        assert_eq!(changes.len(), 1);
        assert!(changes[0].before.is_none(), "created after the start");

        c.set_log_keep(4);
        for i in 2..=7 {
            put_numbered(&c, &notes, i);
        }
        let end = c.log_position(&notes).unwrap();
        assert_eq!(end.seq, 7);
        // Entries 4 to 7 are kept: after 3, all is known; after 2, entry 3 is gone.
        let after_three = LogPosition { seq: 3, ..end };
        let (_, changes) = c.changes_after(&notes, after_three).unwrap().unwrap();
        let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["r4", "r5", "r6", "r7"]);
        assert!(
            c.changes_after(&notes, LogPosition { seq: 2, ..end })
                .unwrap()
                .is_none()
        );

        let other = TestVault::new();
        let o = Collections::open(other.store.clone(), [1; 16]).unwrap();
        assert_ne!(o.log_position(&notes).unwrap().epoch, end.epoch);
    }

    /// In a collection kept in parts, the log names the parts each change touched, and
    /// what changed since a position is read from those parts alone.
    #[tokio::test]
    async fn a_collection_in_parts_reads_its_changes_from_the_parts_named() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(8);
        let notes = name("notes");
        for i in 0..64 {
            put_numbered(&c, &notes, i);
        }
        let since = c.log_position(&notes).unwrap();
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(8);
        c.patch(&notes, &id("r5"), &obj(json!({ "n": -5 })))
            .unwrap()
            .unwrap();
        let other = (0..64)
            .map(|i| format!("r{i}"))
            .find(|r| c.part_of(&notes, r) != c.part_of(&notes, "r5"))
            .unwrap();
        assert!(c.remove(&notes, &id(&other)).unwrap());
        let (at, changes) = c.changes_after(&notes, since).unwrap().unwrap();
        let loaded = c.open_slots().keys().filter(|p| p.name == notes).count();
        assert_eq!(loaded, 2, "only the two parts the log names were read");
        assert_eq!(at.seq, since.seq + 2);
        let mut expected = vec!["r5".to_owned(), other.clone()];
        expected.sort();
        let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, expected);
        let r5 = changes.iter().find(|c| c.id == "r5").unwrap();
        assert_eq!(r5.before.as_ref().unwrap()["n"], 5);
        assert_eq!(r5.after.as_ref().unwrap()["n"], -5);
    }

    #[test]
    fn an_entry_reads_back_and_a_malformed_one_is_refused() {
        let (a, b) = (ChangeHash([1; 32]), ChangeHash([2; 32]));
        let bytes = encode_entry(7, &[a], &[a, b]);
        assert_eq!(decode_entry(&bytes).unwrap(), (7, vec![a], vec![a, b]));
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_entry(&longer).is_err());
        assert!(decode_entry(&[]).is_err());
        assert_eq!(
            decode_entry(&encode_entry(0, &[], &[])).unwrap(),
            (0, vec![], vec![])
        );
    }
}
