//! The split of a collection kept in one document into parts, the same on every
//! device (docs/design/bounded-documents.md, decision 8): what a node does at start to
//! every collection a Hearth from before parts kept whole ([`Collections::split_old`]).
//!
//! Each device splits its own copy, so the parts must not depend on the history that
//! made it: two devices that hold the same records must make byte-identical parts, or
//! sync would find every record "created on two devices". So each record becomes one
//! change of its own, in a fresh document, by an actor derived from the collection's
//! name key, the record's id and its content, at time 0; each part applies its
//! records' changes and, if that leaves it more than one head, one empty change that
//! merges them, by an actor derived from those heads, at time 0. A record that differs
//! between two devices gets two actors, and the two versions meet as the same id
//! created on two devices (listed in `hearth conflicts`; nothing is lost).
//!
//! Nothing the document holds is dropped: a record's whole versions (the same id made
//! on two devices) become a change each, and a field whose values are in conflict
//! gives one variant of the record for each value beyond the one shown, so the split
//! record lists them as versions. Collaborative text fields are written as strings:
//! the next `edit_text` makes them text again (and two devices doing that apart are
//! merged by `textmerge`).

use std::collections::BTreeMap;

use automerge::transaction::CommitOptions;
use automerge::{ObjType, ReadDoc, ValueRef};

use super::*;

/// What a split found and made, for the start's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub records: usize,
    /// Changes made beyond one a record: versions and values in conflict.
    pub variants: usize,
    /// Parts made.
    pub parts: usize,
}

impl Collections {
    /// Splits into parts every collection of the classes kept in parts that is still
    /// kept in one document (a vault of a Hearth from before parts); returns what each
    /// split made. Run at start, before anything else reads the collections.
    ///
    /// One collection at a time, one part at a time, so that it costs the old document
    /// and one part in memory: the document is read (and checked against the commit
    /// record); the collection's index entries are removed; then each part is made,
    /// written (its snapshot, its listing, its records' index entries and its mark, in
    /// one store transaction) and dropped; a last transaction removes the document.
    /// A crash before that last transaction finds the document at the next start and
    /// splits it again, writing the same parts over those already written (the split
    /// is deterministic); after it, finds the parts. The parts' snapshots are numbered
    /// one above the document's generation, so the commit record's entry for the
    /// collection (the old document's, until the next commit) is never ahead of them.
    pub fn split_old(&self) -> Result<Vec<(CollectionName, Split)>, CollectionError> {
        let mut done = Vec::new();
        for name in self.names()? {
            let fan_out = self.fan_out(&name);
            let collection = self.collection_key(&name);
            if fan_out == 1 || self.docs.last_key_with_prefix(&collection)?.is_none() {
                continue;
            }
            tracing::info!(collection = %name, "splitting a collection into parts (once, after an upgrade; a large one takes a while)");
            let started = std::time::Instant::now();
            let split = self.split_one(&name, collection, fan_out)?;
            tracing::info!(collection = %name, records = split.records, parts = split.parts, ms = started.elapsed().as_millis() as u64, "kept a collection in parts from now on (once, after an upgrade)");
            done.push((name, split));
        }
        Ok(done)
    }

    fn split_one(
        &self,
        name: &CollectionName,
        collection: [u8; 32],
        fan_out: u16,
    ) -> Result<Split, CollectionError> {
        let whole = Part::whole(collection);
        let as_part = PartName {
            name: name.clone(),
            part: 0,
        };
        let old = self.read_at(&as_part, whole)?;
        let generation = old.next_seq + 1;
        let mut by_part = by_part(&old.doc, &collection, fan_out);
        if by_part.is_empty() {
            // An empty collection keeps one empty part, which carries its generation.
            by_part.insert(0, Vec::new());
        }
        // The whole mark and every entry go first: the parts write theirs.
        self.index
            .rebuild(&whole, name.as_str(), |_| true, std::iter::empty())?;
        let mut found = Split {
            parts: by_part.len(),
            ..Split::default()
        };
        let by_part: Vec<(u16, Vec<Found>)> = by_part.into_iter().collect();
        let mut placed = Vec::with_capacity(by_part.len());
        // Parts are made on as many threads as there are cores (the document is only
        // read), and written here as they come, each in its own transaction.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| -> Result<(), CollectionError> {
            let (made_tx, made_rx) = std::sync::mpsc::sync_channel(workers);
            for _ in 0..workers {
                let made_tx = made_tx.clone();
                let (by_part, next, doc) = (&by_part, &next, &old.doc);
                scope.spawn(move || {
                    while let Some((number, records)) =
                        by_part.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let made = Made::new(doc, &collection, *number, records);
                        if made_tx.send(made).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(made_tx);
            for made in made_rx {
                let made = made.map_err(|e| match e {
                    MakeError::Automerge(e) => old.automerge(e),
                    MakeError::Index(e) => StoreError::Malformed(format!(
                        "a part of collection {name} could not be read to index it: {e}"
                    ))
                    .into(),
                })?;
                found.records += made.records;
                found.variants += made.variants;
                placed.push(self.write_part(name, collection, generation, made)?);
            }
            Ok(())
        })?;
        let mut writes = storage::Writes::default();
        for key in self.docs.keys_with_prefix(&collection) {
            self.docs.batch_remove(&mut writes.docs, &key?);
        }
        self.log_split(&collection, &mut writes.log)?;
        self.write(writes)?;

        let ledger = self.store.ledger();
        for (at, heads) in &placed {
            let number = at.number.expect("a collection split has numbered parts");
            ledger.note_part(collection, number, generation, heads);
        }
        self.verified
            .lock()
            .expect("verified lock is never poisoned")
            .insert(collection);
        // The old document, loaded whole, is the start's largest allocation: what it
        // freed goes back to the system before the node serves anyone.
        drop(old);
        crate::memory::trim();
        Ok(found)
    }

    /// Writes a part the split made in one store transaction: its snapshot (numbered
    /// `generation`), its listing, its records' index entries and its mark. Returns
    /// where it is and its heads.
    fn write_part(
        &self,
        name: &CollectionName,
        collection: [u8; 32],
        generation: u64,
        made: Made,
    ) -> Result<(Part, Vec<ChangeHash>), CollectionError> {
        let part = PartName {
            name: name.clone(),
            part: made.number,
        };
        let at = self.place_in(collection, &part);
        let mut writes = storage::Writes::default();
        storage::insert_doc_value(
            &self.docs,
            &mut writes.docs,
            &at.key,
            KIND_SNAPSHOT,
            generation,
            &made.snapshot,
        );
        self.names.batch_insert(
            &mut writes.names,
            &parts::listing_key(&at),
            name.as_str().as_bytes(),
        );
        let mark = Mark {
            generation,
            count: 0,
            heads: made.heads.clone(),
        };
        let (ids, stored): (Vec<String>, Vec<Option<Stored>>) = made.entries.into_iter().unzip();
        let entries = ids.iter().map(String::as_str).zip(stored);
        self.index
            .update(&mut writes.index, &at, name.as_str(), mark, entries)?;
        let conflicted = made.conflicted.iter().map(|id| (id.as_str(), true));
        (self.index).note_conflicts(
            &mut writes.index,
            &at,
            name.as_str(),
            conflicted,
            crate::index::Entries::None,
        )?;
        self.index.set_conflicts_indexed(&mut writes.index, &at);
        self.write(writes)?;
        Ok((at, made.heads))
    }
}

/// A part made from the document split, ready to write.
struct Made {
    number: u16,
    snapshot: Zeroizing<Vec<u8>>,
    heads: Vec<ChangeHash>,
    /// Its records as the index keeps them.
    entries: Vec<(String, Option<Stored>)>,
    /// The ids of those in conflict.
    conflicted: Vec<String>,
    records: usize,
    variants: usize,
}

enum MakeError {
    Automerge(AutomergeError),
    Index(AutomergeError),
}

impl Made {
    fn new(
        doc: &AutoCommit,
        collection: &[u8; 32],
        number: u16,
        records: &[Found],
    ) -> Result<Self, MakeError> {
        let (mut part, made, variants) =
            make_part(doc, collection, records).map_err(MakeError::Automerge)?;
        let mut entries = Vec::with_capacity(records.len());
        let mut conflicted = Vec::new();
        for record in records {
            let stored = records::read_for_index(&part, &record.id).map_err(MakeError::Index)?;
            if records::in_conflict(&part, &record.id).map_err(MakeError::Index)? {
                conflicted.push(record.id.clone());
            }
            entries.push((record.id.clone(), stored));
        }
        Ok(Self {
            number,
            snapshot: Zeroizing::new(part.save()),
            heads: part.get_heads(),
            entries,
            conflicted,
            records: made,
            variants,
        })
    }
}

/// A record of the document split, as [`by_part`] finds it.
pub(super) struct Found {
    id: String,
    /// The record's object (the one shown, if it has several versions).
    obj: automerge::ObjId,
    /// Whether the id holds several values (versions, or copies of one).
    several: bool,
}

/// The records of `doc`, the one document of the collection whose name key is
/// `collection`, by the number of the part (of `fan_out`) that holds them: one pass
/// over the document's records.
pub(super) fn by_part(
    doc: &AutoCommit,
    collection: &[u8; 32],
    fan_out: u16,
) -> BTreeMap<u16, Vec<Found>> {
    let mut by_part: BTreeMap<u16, Vec<Found>> = BTreeMap::new();
    for item in doc.map_range(automerge::ROOT, ..) {
        // Anything but a map at a record's key was not written by Hearth and reads as
        // no record; several values are sorted out with the versions.
        if !item.conflict && !matches!(item.value, ValueRef::Object(ObjType::Map)) {
            continue;
        }
        let id = item.key.to_string();
        by_part
            .entry(part_number(collection, fan_out, &id))
            .or_default()
            .push(Found {
                obj: item.id(),
                several: item.conflict,
                id,
            });
    }
    by_part
}

/// Makes the part that holds `records` of `doc` (what [`by_part`] found for it); returns
/// it, the number of records it holds and the number of changes made beyond one a
/// record (versions and values in conflict).
pub(super) fn make_part(
    doc: &AutoCommit,
    collection: &[u8; 32],
    records: &[Found],
) -> Result<(AutoCommit, usize, usize), AutomergeError> {
    let mut changes = Vec::with_capacity(records.len());
    let (mut made, mut variants) = (0, 0);
    for record in records {
        let forms = if record.several {
            variants_of(doc, &record.id)?
        } else {
            let (shown, conflicts) = records::read_object_and_conflicts(doc, &record.obj)?;
            let mut forms = vec![shown];
            add_conflicts(&mut forms, conflicts);
            forms
        };
        if forms.is_empty() {
            continue;
        }
        made += 1;
        variants += forms.len() - 1;
        for form in forms {
            changes.push(record_change(collection, &record.id, &form)?);
        }
    }
    let mut part = AutoCommit::new();
    part.apply_changes(changes)?;
    let mut heads = part.get_heads();
    if heads.len() > 1 {
        heads.sort();
        let mut actor = blake3::Hasher::new_derive_key("hearth split merge v1");
        for head in &heads {
            actor.update(&head.0);
        }
        let actor: [u8; 16] = actor.finalize().as_bytes()[..16]
            .try_into()
            .expect("16 bytes");
        part.set_actor(ActorId::from(actor));
        part.empty_change(CommitOptions::default().with_time(0));
    }
    Ok((part, made, variants))
}

/// Splits `doc` into the parts of `fan_out` that hold records, by part number, all
/// at once (what the node does a part at a time).
#[cfg(test)]
fn split(
    doc: &AutoCommit,
    collection: &[u8; 32],
    fan_out: u16,
) -> Result<(BTreeMap<u16, AutoCommit>, Split), AutomergeError> {
    let mut found = Split::default();
    let mut parts = BTreeMap::new();
    for (number, records) in by_part(doc, collection, fan_out) {
        let (part, made, variants) = make_part(doc, collection, &records)?;
        found.records += made;
        found.variants += variants;
        parts.insert(number, part);
    }
    Ok((parts, found))
}

/// Every distinct form of record `id`, which holds several values: its versions (or
/// the record, if they are copies of one), then the values its fields hold in conflict.
fn variants_of(doc: &AutoCommit, id: &str) -> Result<Vec<Map<String, Json>>, AutomergeError> {
    let mut out = records::record_versions(doc, id)?;
    if out.is_empty() {
        match records::read_record(doc, id)? {
            Some(record) => out.push(record),
            None => return Ok(Vec::new()),
        }
    }
    add_conflicts(&mut out, records::record_conflicts(doc, id)?);
    Ok(out)
}

/// Adds to `out` (the record shown first) the record shown with each other value of
/// each field in conflict, each distinct one once.
fn add_conflicts(out: &mut Vec<Map<String, Json>>, conflicts: Map<String, Json>) {
    for (field, values) in conflicts {
        let Json::Array(values) = values else {
            continue;
        };
        for value in values.into_iter().skip(1) {
            let mut variant = out[0].clone();
            variant.insert(field.clone(), value);
            if !out.contains(&variant) {
                out.push(variant);
            }
        }
    }
}

/// Record `id` as `record`, made as one change of a fresh document by an actor derived
/// from the collection, the id and the content, at time 0: the same bytes on every
/// device.
fn record_change(
    collection: &[u8; 32],
    id: &str,
    record: &Map<String, Json>,
) -> Result<automerge::Change, AutomergeError> {
    let content = serde_json::to_vec(record).expect("a JSON map always encodes");
    let mut actor = blake3::Hasher::new_keyed(collection);
    actor.update(b"hearth split record v1");
    actor.update(&(id.len() as u64).to_be_bytes());
    actor.update(id.as_bytes());
    actor.update(&content);
    let actor: [u8; 16] = actor.finalize().as_bytes()[..16]
        .try_into()
        .expect("16 bytes");
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor));
    records::put_record(&mut doc, id, record)?;
    doc.commit_with(CommitOptions::default().with_time(0));
    Ok(doc
        .get_last_local_change()
        .expect("a record put is a change")
        .clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collections::tests::{
        doc_kinds, id, measured_size, name, obj, one_part, put_numbered,
    };
    use crate::testutil::TestVault;
    use serde_json::json;

    /// A collection an older Hearth kept whole is split at start: it reads as before,
    /// its document is gone, a position in its log from before is refused, and it
    /// takes writes; after a restart (the commit record now holds its parts' entry)
    /// nothing is split again. An empty one keeps one empty part.
    #[tokio::test]
    async fn an_old_collection_is_split_at_start_and_reads_as_before() {
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let (notes, empty) = (name("notes"), name("empty"));
        for i in 0..100 {
            put_numbered(&c, &notes, i);
        }
        assert!(c.remove(&notes, &id("r5")).unwrap());
        put_numbered(&c, &empty, 1);
        assert!(c.remove(&empty, &id("r1")).unwrap());
        let before = c.records(&notes).unwrap();
        let logged = c.log_position(&notes).unwrap();
        vault.store.commit().await.unwrap();
        drop(c);

        let vault = vault.reopen().await;
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(8);
        let done = c.split_old().unwrap();
        let found: Vec<(&str, usize, usize)> = done
            .iter()
            .map(|(n, s)| (n.as_str(), s.records, s.parts))
            .collect();
        assert_eq!(found, [("empty", 0, 1), ("notes", 99, 8)]);
        assert_eq!(c.records(&notes).unwrap(), before);
        assert_eq!(c.count(&notes).unwrap(), 99);
        assert_eq!(c.count(&empty).unwrap(), 0);
        assert_eq!(c.parts(&notes).unwrap().len(), 8);
        assert!(doc_kinds(&vault.store, &c.collection_key(&notes)).is_empty());
        assert!(
            c.changes_after(&notes, logged).unwrap().is_none(),
            "a position from before the split is refused"
        );
        let since = c.log_position(&notes).unwrap();
        put_numbered(&c, &notes, 500);
        let (_, changes) = c.changes_after(&notes, since).unwrap().unwrap();
        assert_eq!(changes.len(), 1);
        vault.store.commit().await.unwrap();
        drop(c);

        let vault = vault.reopen().await;
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(8);
        assert!(c.split_old().unwrap().is_empty(), "split once");
        assert_eq!(c.count(&notes).unwrap(), 100);
        assert_eq!(c.count(&empty).unwrap(), 0);
        assert!(c.get(&notes, &id("r500")).unwrap().is_some());
    }

    /// A split cut short by a failing disk at any of its writes (the index cleared,
    /// each part, the removal of the document) leaves the old document, which the next
    /// start splits again, over the parts already written: the collection reads as
    /// before and takes writes.
    #[tokio::test]
    async fn a_split_cut_short_is_done_again_at_the_next_start() {
        // The index cleared, 8 parts, the document removed: 10 writes.
        for fail_after in [0, 1, 4, 9] {
            let vault = TestVault::new();
            let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
            let notes = name("notes");
            for i in 0..100 {
                put_numbered(&c, &notes, i);
            }
            let before = c.records(&notes).unwrap();
            vault.store.commit().await.unwrap();
            drop(c);

            let vault = vault.reopen().await;
            let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
            c.set_user_fan_out(8);
            vault
                .store
                .faults()
                .inject(crate::store::Fault::WriteErrorAfter(fail_after));
            assert!(
                c.split_old().is_err(),
                "cut short after {fail_after} writes"
            );
            vault.store.faults().clear();
            drop(c);

            let vault = vault.reopen().await;
            let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
            c.set_user_fan_out(8);
            let done = c.split_old().unwrap();
            assert_eq!(done.len(), 1, "split again after {fail_after} writes");
            assert_eq!(c.records(&notes).unwrap(), before);
            assert_eq!(c.count(&notes).unwrap(), 100);
            assert!(doc_kinds(&vault.store, &c.collection_key(&notes)).is_empty());
            put_numbered(&c, &notes, 500);
            vault.store.commit().await.unwrap();
            drop(c);

            let vault = vault.reopen().await;
            let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
            c.set_user_fan_out(8);
            assert!(c.split_old().unwrap().is_empty());
            assert_eq!(c.count(&notes).unwrap(), 101);
            assert_eq!(c.records(&notes).unwrap().len(), 101);
        }
    }

    const KEY: [u8; 32] = [9; 32];

    /// Two devices whose documents hold the same records, made by other actors in
    /// other orders with other edits on the way, split into byte-identical parts.
    #[test]
    fn the_same_records_split_into_the_same_parts_whatever_their_history() {
        let mut a = AutoCommit::new();
        let mut b = AutoCommit::new();
        for i in 0..200 {
            let record = obj(json!({ "n": i, "name": format!("N{i}"), "tags": ["x", i] }));
            records::put_record(&mut a, &format!("r{i}"), &record).unwrap();
            a.commit();
        }
        for i in (0..200).rev() {
            records::put_record(&mut b, &format!("r{i}"), &obj(json!({ "n": -1 }))).unwrap();
            let record = obj(json!({ "n": i, "name": format!("N{i}"), "tags": ["x", i] }));
            records::put_record(&mut b, &format!("r{i}"), &record).unwrap();
            b.commit();
        }
        records::put_record(&mut b, "gone", &obj(json!({}))).unwrap();
        records::remove_record(&mut b, "gone").unwrap();
        let (mut pa, sa) = split(&a, &KEY, 16).unwrap();
        let (mut pb, sb) = split(&b, &KEY, 16).unwrap();
        assert_eq!(
            sa,
            Split {
                records: 200,
                variants: 0,
                parts: 0
            }
        );
        assert_eq!(sa, sb);
        assert_eq!(pa.len(), 16);
        for ((na, da), (nb, db)) in pa.iter_mut().zip(pb.iter_mut()) {
            assert_eq!(na, nb);
            assert_eq!(da.get_heads(), db.get_heads(), "part {na}");
            assert_eq!(da.save(), db.save(), "part {na}");
            assert_eq!(da.get_heads().len(), 1, "one head a part");
        }
        // Every record is in its own part, as it reads in the document split.
        for i in 0..200 {
            let id = format!("r{i}");
            let part = &pa[&part_number(&KEY, 16, &id)];
            assert_eq!(
                records::read_record(part, &id).unwrap(),
                records::read_record(&a, &id).unwrap()
            );
        }
    }

    /// A record that differs between two devices meets, after their parts merge, as
    /// the same id created on two devices: both versions kept.
    #[test]
    fn a_record_that_differs_meets_as_two_versions() {
        let mut a = AutoCommit::new();
        let mut b = AutoCommit::new();
        for doc in [&mut a, &mut b] {
            records::put_record(doc, "same", &obj(json!({ "n": 1 }))).unwrap();
        }
        records::put_record(&mut a, "r", &obj(json!({ "n": 1 }))).unwrap();
        records::put_record(&mut b, "r", &obj(json!({ "n": 2 }))).unwrap();
        let (pa, _) = split(&a, &KEY, 1).unwrap();
        let (pb, _) = split(&b, &KEY, 1).unwrap();
        let mut merged = pa[&0].clone();
        merged.merge(&mut pb[&0].clone()).unwrap();
        let versions = records::record_versions(&merged, "r").unwrap();
        let mut ns: Vec<i64> = versions.iter().map(|v| v["n"].as_i64().unwrap()).collect();
        ns.sort();
        assert_eq!(ns, [1, 2]);
        assert!(
            records::record_versions(&merged, "same")
                .unwrap()
                .is_empty()
        );
    }

    /// Versions and values in conflict in the document split are kept as versions.
    #[test]
    fn versions_and_conflicting_values_are_kept() {
        let mut base = AutoCommit::new();
        records::put_record(&mut base, "c", &obj(json!({ "name": "Ann", "n": 1 }))).unwrap();
        base.commit();
        let mut other = base.fork().with_actor(ActorId::from([2; 16]));
        records::patch_record(&mut base, "c", &obj(json!({ "name": "Anne" }))).unwrap();
        records::patch_record(&mut other, "c", &obj(json!({ "name": "Annie" }))).unwrap();
        base.merge(&mut other).unwrap();
        let mut twice = AutoCommit::new().with_actor(ActorId::from([3; 16]));
        records::put_record(&mut twice, "v", &obj(json!({ "k": 1 }))).unwrap();
        let mut apart = AutoCommit::new().with_actor(ActorId::from([4; 16]));
        records::put_record(&mut apart, "v", &obj(json!({ "k": 2 }))).unwrap();
        base.merge(&mut twice).unwrap();
        base.merge(&mut apart).unwrap();

        let (parts, found) = split(&base, &KEY, 1).unwrap();
        assert_eq!(
            found,
            Split {
                records: 2,
                variants: 2,
                parts: 0
            }
        );
        let part = &parts[&0];
        let mut names: Vec<String> = records::record_versions(part, "c")
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["Anne", "Annie"]);
        assert_eq!(records::record_versions(part, "v").unwrap().len(), 2);
    }

    /// A mail-like record, `i`.
    fn mail(i: usize) -> Map<String, Json> {
        obj(json!({
            "from": format!("sender{}@example.org", i % 97),
            "to": ["me@example.org"],
            "subject": format!("Message number {i} about things"),
            "date": "2026-01-02T03:04:05Z",
            "message_id": format!("<{i}@example.org>"),
            "folder": "INBOX",
            "flags": ["seen"],
            "size": 2048 + i,
            "blob": format!("{:064x}", i),
        }))
    }

    /// Writes messages `m0` to `m{n-1}` into `mail_name`, 5,000 a write, each with a
    /// text of 1,824 bytes if `with_body`.
    fn write_mail(c: &Collections, mail_name: &CollectionName, n: usize, with_body: bool) {
        for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
            let writes: Vec<(RecordId, RecordWrite)> = chunk
                .iter()
                .map(|&i| {
                    let mut m = mail(i);
                    if with_body {
                        // hearth-bench's life messages carry such a text.
                        let body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
                        m.insert("body".into(), Json::from(body.repeat(32)));
                    }
                    (id(&format!("m{i}")), RecordWrite::Put(m))
                })
                .collect();
            c.write_many(mail_name, &writes).unwrap();
        }
    }

    /// How long the split of a mailbox takes at start, in the store
    /// (`HEARTH_SPLIT_N` messages, 20,000 unless set): run by hand with
    /// `--ignored --nocapture`, in a release build.
    #[tokio::test]
    #[ignore = "a measurement, run by hand"]
    async fn time_a_split() {
        let n = measured_size("HEARTH_SPLIT_N", 20_000);
        let vault = TestVault::new();
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let mail_name = name("mail");
        let started = std::time::Instant::now();
        write_mail(&c, &mail_name, n, false);
        vault.store.commit().await.unwrap();
        drop(c);
        eprintln!("made {n} in {:?}", started.elapsed());
        let vault = vault.reopen().await;
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(PARTS);
        // The peak resident set from here (Linux: "5" resets it).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let started = std::time::Instant::now();
        let done = c.split_old().unwrap();
        let peak = crate::memory::measure::status("VmHWM");
        eprintln!(
            "split {done:?} in {:?}, peak resident {peak}",
            started.elapsed()
        );
        assert_eq!(c.count(&mail_name).unwrap(), n);
    }

    /// What parts in memory cost beside their saved size and the cache's estimate:
    /// `HEARTH_MEM_N` messages (100,000 unless set) in 256 parts, every part loaded (a
    /// conflicts listing), with a text each if `HEARTH_MEM_BODY` is set. Run by hand
    /// with `--ignored --nocapture`, in a release build: the figures are the heap's
    /// bytes in use (glibc's `mallinfo2`), then what the store (sled) held of what was
    /// read, the part of it freed when the store closes.
    #[tokio::test]
    #[ignore = "a measurement, run by hand"]
    async fn measure_parts_in_memory() {
        use crate::memory::measure::{heap_in_use as in_use, mib, status};
        let n = measured_size("HEARTH_MEM_N", 100_000);
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(PARTS);
        let mail_name = name("mail");
        write_mail(
            &c,
            &mail_name,
            n,
            std::env::var_os("HEARTH_MEM_BODY").is_some(),
        );
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(PARTS);
        c.set_cache_budget(usize::MAX);
        let before = in_use();
        let started = std::time::Instant::now();
        c.all_conflicts(&mail_name).unwrap();
        let took = started.elapsed();
        let after = in_use();
        let (parts, estimated) = c.cached();
        let (mut saved, mut ops) = (0, 0);
        for slot in c.open_slots().values() {
            let part = slot.collection.lock().unwrap();
            saved += part.snapshot_bytes + part.change_bytes;
            ops += part.doc.stats().num_ops;
        }
        drop(c);
        let dropped = in_use();
        let resident = status("VmRSS");
        vault.store.shutdown().await.unwrap();
        drop(vault);
        let closed = in_use();
        eprintln!(
            "{n} messages: {parts} parts loaded in {took:?}; saved {:.1} MiB, {ops} ops, \
             the cache's estimate {:.1} MiB; \
             heap in use {:.1} -> {:.1} MiB (+{:.1} MiB, {:.1}x saved, {:.0} B an op); \
             after the drop {:.1} MiB (resident: {resident}), once the store closed {:.1} MiB",
            mib(saved),
            mib(estimated),
            mib(before),
            mib(after),
            mib(after.saturating_sub(before)),
            after.saturating_sub(before) as f64 / saved as f64,
            after.saturating_sub(before) as f64 / ops as f64,
            mib(dropped),
            mib(closed),
        );
    }
}
