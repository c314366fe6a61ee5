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
    /// One collection at a time: its document is read (and checked against the commit
    /// record), split, and its parts written as snapshots in one store transaction
    /// that also removes the document and its index mark. A crash before that
    /// transaction finds the document and splits it again; after it, finds the parts.
    /// The parts' snapshots are numbered one above the document's generation, so the
    /// commit record's entry for the collection (the old document's, until the next
    /// commit) is never ahead of them. The record index is then written again from the
    /// parts, and each part's mark last: a crash before the marks are written leaves
    /// parts that index themselves again when first used.
    pub fn split_old(&self) -> Result<Vec<(CollectionName, Split)>, CollectionError> {
        let mut done = Vec::new();
        for name in self.names()? {
            let fan_out = self.fan_out(&name);
            let collection = self.collection_key(&name);
            if fan_out == 1 || self.docs.last_key_with_prefix(&collection)?.is_none() {
                continue;
            }
            let split = self.split_one(&name, collection, fan_out)?;
            tracing::info!(collection = %name, records = split.records, parts = split.parts, "kept a collection in parts from now on (once, after an upgrade)");
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
        let (old, _) = self.read_at(&as_part, whole)?;
        let (mut parts, mut found) =
            split(&old.doc, &collection, fan_out).map_err(|e| old.automerge(e))?;
        if parts.is_empty() {
            // An empty collection keeps one empty part, which carries its generation.
            parts.insert(0, AutoCommit::new());
        }
        found.parts = parts.len();
        let generation = old.next_seq + 1;
        let mut writes = storage::Writes::default();
        for key in self.docs.keys_with_prefix(&collection) {
            self.docs.batch_remove(&mut writes.docs, &key?);
        }
        let mut placed = Vec::with_capacity(parts.len());
        for (number, doc) in &mut parts {
            let part = PartName {
                name: name.clone(),
                part: *number,
            };
            let at = self.place_in(collection, &part);
            let snapshot = Zeroizing::new(doc.save());
            storage::insert_doc_value(
                &self.docs,
                &mut writes.docs,
                &at.key,
                KIND_SNAPSHOT,
                generation,
                &snapshot,
            );
            let mut listing = collection.to_vec();
            listing.extend_from_slice(&number.to_be_bytes());
            self.names
                .batch_insert(&mut writes.names, &listing, name.as_str().as_bytes());
            placed.push((at, doc.get_heads()));
        }
        self.index.remove_mark(&mut writes.index, &whole);
        self.log_split(&collection, &mut writes.log)?;
        self.write(writes)?;

        // The index from the parts: every entry again, then the marks.
        let mut counts = vec![0u64; placed.len()];
        let entries = parts
            .values()
            .zip(counts.iter_mut())
            .flat_map(|(doc, count)| {
                records::record_ids(doc).into_iter().map(move |id| {
                    let record = records::read_for_index(doc, &id).map_err(|e| {
                        StoreError::Malformed(format!(
                            "a part of collection {name} could not be read to index it: {e}"
                        ))
                    })?;
                    *count += u64::from(record.is_some());
                    Ok((id, record))
                })
            });
        self.index
            .rebuild(&whole, name.as_str(), |_| true, entries)?;
        let mut marks = SealedBatch::default();
        for ((at, heads), count) in placed.iter().zip(&counts) {
            let mark = Mark {
                generation,
                count: *count,
                heads: heads.clone(),
            };
            self.index.set_mark(&mut marks, at, &mark);
        }
        self.index.tree().apply(marks)?;
        let ledger = self.store.ledger();
        for (at, heads) in &placed {
            let number = at.number.expect("a collection split has numbered parts");
            ledger.note_part(collection, number, generation, heads);
        }
        self.verified
            .lock()
            .expect("verified lock is never poisoned")
            .insert(collection);
        Ok(found)
    }
}

/// Splits `doc`, the one document of the collection whose name key is `collection`,
/// into the parts of `fan_out` that hold records, by part number.
pub(super) fn split(
    doc: &AutoCommit,
    collection: &[u8; 32],
    fan_out: u16,
) -> Result<(BTreeMap<u16, AutoCommit>, Split), AutomergeError> {
    let mut changes: BTreeMap<u16, Vec<automerge::Change>> = BTreeMap::new();
    let mut found = Split::default();
    for id in records::record_ids(doc) {
        let variants = variants(doc, &id)?;
        if variants.is_empty() {
            continue;
        }
        found.records += 1;
        found.variants += variants.len() - 1;
        let part = part_number(collection, fan_out, &id);
        for record in variants {
            changes
                .entry(part)
                .or_default()
                .push(record_change(collection, &id, &record)?);
        }
    }
    let mut parts = BTreeMap::new();
    for (part, changes) in changes {
        let mut doc = AutoCommit::new();
        doc.apply_changes(changes)?;
        let mut heads = doc.get_heads();
        if heads.len() > 1 {
            heads.sort();
            let mut actor = blake3::Hasher::new_derive_key("hearth split merge v1");
            for head in &heads {
                actor.update(&head.0);
            }
            let actor: [u8; 16] = actor.finalize().as_bytes()[..16]
                .try_into()
                .expect("16 bytes");
            doc.set_actor(ActorId::from(actor));
            doc.empty_change(CommitOptions::default().with_time(0));
        }
        parts.insert(part, doc);
    }
    Ok((parts, found))
}

/// Every distinct form of record `id` the document holds: its versions (or the
/// record), then, for each field in conflict, the shown record with each other value.
fn variants(doc: &AutoCommit, id: &str) -> Result<Vec<Map<String, Json>>, AutomergeError> {
    let mut out = records::record_versions(doc, id)?;
    if out.is_empty() {
        match records::read_record(doc, id)? {
            Some(record) => out.push(record),
            None => return Ok(Vec::new()),
        }
    }
    let shown = out[0].clone();
    for (field, values) in records::record_conflicts(doc, id)? {
        let Json::Array(values) = values else {
            continue;
        };
        for value in values.into_iter().skip(1) {
            let mut variant = shown.clone();
            variant.insert(field.clone(), value);
            if !out.contains(&variant) {
                out.push(variant);
            }
        }
    }
    Ok(out)
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
    use crate::collections::tests::{doc_kinds, id, name, obj, one_part, put_numbered};
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
}
