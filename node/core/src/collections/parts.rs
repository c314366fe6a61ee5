//! A collection's parts: each record lives in one of its collection's documents, the
//! part its id hashes to, so a write loads and locks only that part
//! (docs/design/bounded-documents.md). A collection kept in one part (every
//! collection of a running node, until the steps of that design land) is kept as
//! before parts: under its name key, with its index mark at `name_key || 0`.
//!
//! A collection kept in parts keeps each part's document under a key derived from the
//! name key and the part's number, its mark at `name_key || 0 || part`, and lists the
//! part in tree `collections` under `name_key || part` (beside the name key, which
//! lists the collection), written with the part's first change.

use super::*;

/// How many parts a collection kept in parts has: at 100,000 records about 200 a
/// part, at 1,000,000 about 2,000 (a write that loads such a part takes ~50 ms:
/// BENCHMARKS.md, "Parts switched on"; parts that split when they grow are the next
/// step, docs/design/bounded-documents.md).
pub const PARTS: u16 = 256;

/// The system collections kept in parts: blobs' listings, the blobs a grant's writes
/// named, DAV's names for records.
pub const IN_PARTS: [&str; 3] = [crate::blobs::BLOB_LIST, "_blobrefs", "_dav"];

/// One document of a collection: a collection is kept in one or in several parts, and
/// each record lives in the part its id hashes to ([`Collections::part_of`]). Parts
/// sort by collection name, then number: whoever locks several locks them in this
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PartName {
    pub(super) name: CollectionName,
    pub(super) part: u16,
}

#[cfg(test)]
impl PartName {
    /// The one part of a collection kept in one.
    pub(crate) fn only(name: CollectionName) -> Self {
        Self { name, part: 0 }
    }
}

impl Collections {
    /// Keeps the collections kept in parts (see [`Collections::fan_out`]) in `parts`
    /// parts (1 to 256) instead of [`PARTS`]. For tests only, before any of them is
    /// written: a collection's number of parts is fixed for its life.
    #[cfg(any(test, feature = "testutil"))]
    pub fn set_user_fan_out(&self, parts: u16) {
        assert!(
            (1..=256).contains(&parts),
            "a collection has 1 to 256 parts"
        );
        self.user_fan_out.store(parts, Ordering::Relaxed);
    }

    /// How many parts collection `name` is kept in: for every user collection and the
    /// system collections that grow with them ([`IN_PARTS`]), the fan-out set
    /// ([`PARTS`]; tests set others); one for the others, which are small or split
    /// already (the audit log).
    pub(super) fn fan_out(&self, name: &CollectionName) -> u16 {
        if !name.is_system() || IN_PARTS.contains(&name.as_str()) {
            self.user_fan_out.load(Ordering::Relaxed)
        } else {
            1
        }
    }

    /// A collection's name key: where its record entries, and (kept in one part) its
    /// document, are.
    pub(super) fn collection_key(&self, name: &CollectionName) -> [u8; 32] {
        self.store.name_key(NAME_DOMAIN, name.as_str())
    }

    /// The part that holds record `id` of collection `name`.
    pub(crate) fn part_of(&self, name: &CollectionName, id: &str) -> PartName {
        let fan_out = self.fan_out(name);
        let part = match fan_out {
            1 => 0,
            _ => part_number(&self.collection_key(name), fan_out, id),
        };
        PartName {
            name: name.clone(),
            part,
        }
    }

    /// Where part `part` of the collection whose name key is `collection` is kept.
    pub(super) fn place_in(&self, collection: [u8; 32], part: &PartName) -> Part {
        if self.fan_out(&part.name) == 1 {
            return Part::whole(collection);
        }
        let mut key = blake3::Hasher::new_keyed(&collection);
        key.update(b"hearth collection part v1");
        key.update(&part.part.to_be_bytes());
        Part {
            collection,
            key: *key.finalize().as_bytes(),
            number: Some(part.part),
        }
    }

    pub(super) fn place(&self, part: &PartName) -> Part {
        self.place_in(self.collection_key(&part.name), part)
    }

    /// The parts of a collection that have been written, in order; a collection kept
    /// in one part has that part, written or not.
    pub(crate) fn parts(&self, name: &CollectionName) -> Result<Vec<PartName>, CollectionError> {
        let part = |part| PartName {
            name: name.clone(),
            part,
        };
        if self.fan_out(name) == 1 {
            return Ok(vec![part(0)]);
        }
        let mut out = Vec::new();
        for key in self.names.keys_with_prefix(&self.collection_key(name)) {
            let key = key?;
            match key.len() {
                32 => {}
                34 => out.push(part(u16::from_be_bytes([key[32], key[33]]))),
                _ => {
                    return Err(StoreError::Malformed(format!(
                        "collection {name} lists a part under a malformed key"
                    ))
                    .into());
                }
            }
        }
        Ok(out)
    }

    /// Checks a collection kept in parts against the commit record, once a run, before
    /// any of it is read or written: the sum of its parts' generations and the digest
    /// of their heads, as the store has them, against the record's entry (a store that
    /// went back in time, whole or one part with its mark, is refused). Each part's
    /// generation comes from its document's keys and its heads from its index mark,
    /// or, where the mark does not match, from the document itself.
    pub(super) fn verify_parts(&self, name: &CollectionName) -> Result<(), CollectionError> {
        if self.fan_out(name) == 1 {
            return Ok(());
        }
        let collection = self.collection_key(name);
        let mut verified = self
            .verified
            .lock()
            .expect("verified lock is never poisoned");
        if verified.contains(&collection) {
            return Ok(());
        }
        let mut found = std::collections::BTreeMap::new();
        for part in self.parts(name)? {
            let at = self.place_in(collection, &part);
            let generation = self.generation_on_disk(&at.key)?;
            let mark = self.index.mark(&at)?;
            let heads = if mark.generation == generation {
                mark.heads
            } else {
                self.read_part(&part)?.persisted_heads
            };
            let heads = hearth_protocol::commit::heads_digest(heads.iter().map(|h| &h.0));
            found.insert(
                part.part,
                hearth_protocol::commit::CollectionMark { generation, heads },
            );
        }
        storage::committed(name, self.store.ledger().check_parts(collection, found))?;
        verified.insert(collection);
        Ok(())
    }

    /// Part `part` of a collection, as a peer names it in sync: refused if the
    /// collection has no such part (the two devices keep it in different numbers of
    /// parts, or the peer is wrong).
    pub(super) fn synced_part(
        &self,
        name: &CollectionName,
        part: u16,
    ) -> Result<PartName, CollectionError> {
        if part >= self.fan_out(name) {
            return Err(CollectionError::BadSyncMessage {
                collection: name.to_string(),
                reason: format!("it has no part {part}"),
            });
        }
        Ok(PartName {
            name: name.clone(),
            part,
        })
    }

    /// The one part of a collection kept in one, for what reads or syncs a collection
    /// as one document (`what`); refused for a collection kept in parts.
    pub(super) fn whole(
        &self,
        name: &CollectionName,
        what: &'static str,
    ) -> Result<PartName, CollectionError> {
        if self.fan_out(name) != 1 {
            return Err(CollectionError::InParts {
                collection: name.to_string(),
                what,
            });
        }
        Ok(PartName {
            name: name.clone(),
            part: 0,
        })
    }
}

/// The key under which tree `collections` lists the document kept at `at`: the
/// collection's name key, and for a part of a collection kept in parts its number
/// after it (what [`Collections::parts`] reads back).
pub(super) fn listing_key(at: &Part) -> Vec<u8> {
    let mut key = at.collection.to_vec();
    if let Some(number) = at.number {
        key.extend_from_slice(&number.to_be_bytes());
    }
    key
}

/// The number of the part (of `fan_out`) that holds record `id` of the collection
/// whose name key is `collection`: the first two bytes of a keyed hash of the id, so
/// neither the id nor its part tell anything of the other.
pub(super) fn part_number(collection: &[u8; 32], fan_out: u16, id: &str) -> u16 {
    if fan_out <= 1 {
        return 0;
    }
    let mut hash = blake3::Hasher::new_keyed(collection);
    hash.update(b"hearth record part v1");
    hash.update(id.as_bytes());
    let hash = hash.finalize();
    u16::from_be_bytes([hash.as_bytes()[0], hash.as_bytes()[1]]) % fan_out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collections::tests::{
        doc_kinds, id, lose_last_change, measured_size, name, obj, put_numbered,
    };
    use crate::testutil::TestVault;
    use serde_json::json;

    const FAN_OUT: u16 = 8;

    fn in_parts(vault: &TestVault) -> Collections {
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        c.set_user_fan_out(FAN_OUT);
        c
    }

    /// Two devices of one vault, collections in parts on both, and 100 notes on A.
    fn two_devices_with_notes() -> (
        TestVault,
        TestVault,
        Collections,
        Collections,
        CollectionName,
    ) {
        let va = TestVault::new();
        let vb = va.other_device();
        let a = in_parts(&va);
        let b = Collections::open(vb.store.clone(), [2; 16]).unwrap();
        b.set_user_fan_out(FAN_OUT);
        let notes = name("notes");
        for i in 0..100 {
            put_numbered(&a, &notes, i);
        }
        (va, vb, a, b, notes)
    }

    fn ids(records: &[Json]) -> Vec<String> {
        records
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Records spread over a collection's parts read, page, count and change as in a
    /// collection of one part, each part's document holds only its own records, and
    /// all of it reads back after a restart.
    #[tokio::test]
    async fn a_collection_in_parts_reads_and_writes_as_one() {
        let vault = TestVault::new();
        let c = in_parts(&vault);
        let notes = name("notes");
        let mut expected: Vec<String> = (0..200).map(|i| format!("n{i:03}")).collect();
        for (i, record) in expected.iter().enumerate() {
            c.put(&notes, &id(record), &obj(json!({ "n": i }))).unwrap();
        }
        c.patch(&notes, &id("n007"), &obj(json!({ "seen": true })))
            .unwrap()
            .unwrap();
        assert!(c.remove(&notes, &id("n100")).unwrap());
        expected.retain(|r| r != "n100");
        vault.store.commit().await.unwrap();

        let parts = c.parts(&notes).unwrap();
        assert_eq!(
            parts.len(),
            usize::from(FAN_OUT),
            "200 records fill 8 parts"
        );
        for part in &parts {
            let held = c.with(part, |c| Ok(records::record_ids(&c.doc))).unwrap();
            assert!(!held.is_empty());
            for record in held {
                assert_eq!(
                    c.part_of(&notes, &record),
                    *part,
                    "{record} is in its own part"
                );
            }
            let at = c.place(part);
            assert_ne!(at.key, at.collection, "a part has a key of its own");
            assert!(!doc_kinds(&vault.store, &at.key).is_empty());
        }
        assert!(
            doc_kinds(&vault.store, &c.collection_key(&notes)).is_empty(),
            "nothing is kept under the collection's own key"
        );
        drop(c);

        let vault = vault.reopen().await;
        let c = in_parts(&vault);
        assert_eq!(c.count(&notes).unwrap(), 199);
        assert_eq!(ids(&c.records(&notes).unwrap()), expected, "sorted by id");
        assert_eq!(c.get(&notes, &id("n007")).unwrap().unwrap()["seen"], true);
        assert!(c.get(&notes, &id("n100")).unwrap().is_none());
        let mut paged = Vec::new();
        let mut after: Option<RecordId> = None;
        loop {
            let (page, next) = c.page(&notes, after.as_ref(), 30, Some).unwrap();
            paged.extend(ids(&page));
            match next {
                Some(next) => after = Some(id(&next)),
                None => break,
            }
        }
        paged.sort();
        assert_eq!(paged, expected, "pages go over every part once");
        assert_eq!(
            c.names().unwrap(),
            std::slice::from_ref(&notes),
            "parts are not collections"
        );
        let info = c.list().unwrap();
        assert_eq!((info[0].name.as_str(), info[0].records), ("notes", 199));
        let snapshot = c.snapshot().unwrap();
        assert_eq!(ids(&snapshot.collection_records(&notes).unwrap()), expected);
        assert!(c.all_conflicts(&notes).unwrap().is_empty());
    }

    /// A write reads and locks only the part that holds its record: after a restart,
    /// one write to a collection of eight parts loads one of them.
    #[tokio::test]
    async fn a_write_loads_only_its_part() {
        let vault = TestVault::new();
        let c = in_parts(&vault);
        let notes = name("notes");
        for i in 0..64 {
            put_numbered(&c, &notes, i);
        }
        vault.store.commit().await.unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = in_parts(&vault);
        assert_eq!(c.count(&notes).unwrap(), 64, "counted from the marks");
        assert_eq!(c.cached().0, 0, "the count loaded no document");
        c.patch(&notes, &id("r5"), &obj(json!({ "n": -5 })))
            .unwrap()
            .unwrap();
        assert_eq!(c.cached().0, 1, "one part loaded");
        let open: Vec<PartName> = c.open_slots().keys().cloned().collect();
        assert_eq!(open, [c.part_of(&notes, "r5")]);
    }

    /// Writes to records in several parts are one write: a store failure leaves none
    /// of them in any part, in memory or in the index, and a write to a record the
    /// request did not name is refused.
    #[tokio::test]
    async fn writes_over_several_parts_are_all_or_nothing() {
        let vault = TestVault::new();
        let c = in_parts(&vault);
        let notes = name("notes");
        let writes: Vec<(RecordId, RecordWrite)> = (0..40)
            .map(|i| {
                (
                    id(&format!("w{i}")),
                    RecordWrite::Put(obj(json!({ "n": i }))),
                )
            })
            .collect();
        let touched: std::collections::BTreeSet<PartName> = writes
            .iter()
            .map(|(record, _)| c.part_of(&notes, record.as_str()))
            .collect();
        assert!(touched.len() > 1, "the writes span parts");
        vault.store.faults().inject(crate::store::Fault::WriteError);
        assert!(c.write_many(&notes, &writes).is_err());
        vault.store.faults().clear();
        assert_eq!(c.count(&notes).unwrap(), 0);
        for (record, _) in &writes {
            assert!(c.get(&notes, record).unwrap().is_none());
        }
        c.write_many(&notes, &writes).unwrap();
        assert_eq!(c.count(&notes).unwrap(), 40);

        let other = (0..40)
            .map(|i| id(&format!("w{i}")))
            .find(|record| c.part_of(&notes, record.as_str()) != c.part_of(&notes, "w0"))
            .unwrap();
        let stray = c.write_across(&[(notes.clone(), id("w0"))], |_| {
            Ok::<_, CollectionError>((
                vec![(notes.clone(), other.clone(), RecordWrite::Remove)],
                (),
            ))
        });
        assert!(
            matches!(stray, Err(CollectionError::NotLocked(_))),
            "{stray:?}"
        );
        assert!(c.get(&notes, &other).unwrap().is_some());
    }

    /// A part whose index mark is lost is indexed again from its own document alone:
    /// the other parts' entries stay as they are, and every record reads.
    #[tokio::test]
    async fn a_part_is_indexed_again_on_its_own() {
        let vault = TestVault::new();
        let c = in_parts(&vault);
        let notes = name("notes");
        for i in 0..100 {
            put_numbered(&c, &notes, i);
        }
        vault.store.commit().await.unwrap();
        let lost = c.part_of(&notes, "r1");
        let at = c.place(&lost);
        c.index
            .tree()
            .remove(&{
                let mut key = at.collection.to_vec();
                key.push(0);
                key.extend_from_slice(&lost.part.to_be_bytes());
                key
            })
            .unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = in_parts(&vault);
        assert_eq!(c.count(&notes).unwrap(), 100);
        assert_eq!(c.cached().0, 1, "only the part that lost its mark was read");
        for i in 0..100 {
            let record = format!("r{i}");
            assert_eq!(
                c.get(&notes, &id(&record)).unwrap().unwrap()["n"],
                i,
                "{record}"
            );
        }
    }

    /// What reads a collection as one document (its heads) is refused for a
    /// collection kept in parts, with a reason, rather than reading one part of it.
    #[test]
    fn whole_document_reads_are_refused_for_a_collection_in_parts() {
        let vault = TestVault::new();
        let c = in_parts(&vault);
        let notes = name("notes");
        c.put(&notes, &id("a"), &obj(json!({}))).unwrap();
        let refused = c.heads(&notes).unwrap_err();
        assert!(
            matches!(refused, CollectionError::InParts { .. }),
            "{refused}"
        );
        assert!(
            c.heads(&name("_devices")).is_ok(),
            "system collections are whole"
        );
    }

    /// Runs Automerge sync for one part between two devices until neither has
    /// anything to say.
    fn sync_part(a: &Collections, b: &Collections, name: &CollectionName, part: u16) {
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        loop {
            let to_b = a.generate_sync(name, part, &mut sa).unwrap();
            if let Some(m) = &to_b {
                b.receive_sync(name, part, &mut sb, m).unwrap();
            }
            let to_a = b.generate_sync(name, part, &mut sb).unwrap();
            if let Some(m) = &to_a {
                a.receive_sync(name, part, &mut sa, m).unwrap();
            }
            if to_b.is_none() && to_a.is_none() {
                return;
            }
        }
    }

    /// A part sent whole (`stored_part` there, `receive_whole` here) onto a device
    /// that has none of it is stored as it came, as one snapshot, and reads back from
    /// the disk; onto a part with a record of this device's own, it merges and both
    /// sides' records are kept. Bytes that do not load are refused, and the part stays
    /// as it was.
    #[tokio::test]
    async fn parts_sent_whole_are_stored_as_they_came_or_merged() {
        let (_va, vb, a, b, notes) = two_devices_with_notes();
        a.patch(&notes, &id("r3"), &obj(json!({ "seen": true })))
            .unwrap()
            .unwrap();
        b.put(&notes, &id("mine"), &obj(json!({ "n": -1 })))
            .unwrap();
        let own = b.part_of(&notes, "mine").part;

        for (name, parts) in a.part_digests().unwrap() {
            for (part, _) in parts {
                let whole = a.stored_part(&name, part).unwrap().expect("a part on disk");
                let before = b.get(&notes, &id("mine")).unwrap();
                let received = b.receive_whole(&name, part, &whole).unwrap();
                assert!(received > 0, "part {part} brought its changes");
                assert_eq!(b.get(&notes, &id("mine")).unwrap(), before);
                let at = b.place(&PartName {
                    name: name.clone(),
                    part,
                });
                if part != own {
                    assert_eq!(
                        doc_kinds(&vb.store, &at.key),
                        [(KIND_SNAPSHOT, 1)],
                        "part {part} is one snapshot, as it came"
                    );
                }
            }
        }
        let refused = b.receive_whole(&notes, own, b"not a document").unwrap_err();
        assert!(
            matches!(refused, CollectionError::BadSyncMessage { .. }),
            "{refused}"
        );
        assert!(
            b.receive_whole(&notes, FAN_OUT, &[]).is_err(),
            "no such part"
        );
        assert_eq!(b.count(&notes).unwrap(), 101);
        let theirs = b.part_digests().unwrap();
        let ours = a.part_digests().unwrap();
        for ((part, mine), (_, other)) in ours[0].1.iter().zip(&theirs[0].1) {
            assert_eq!(
                mine == other,
                *part != own,
                "part {part}: equal unless merged"
            );
        }

        vb.store.commit().await.unwrap();
        // Read again from the disk, by a core with nothing in memory.
        drop(b);
        let b = Collections::open(vb.store.clone(), [2; 16]).unwrap();
        b.set_user_fan_out(FAN_OUT);
        assert_eq!(b.count(&notes).unwrap(), 101);
        for i in 0..100 {
            assert_eq!(
                b.get(&notes, &id(&format!("r{i}"))).unwrap().unwrap()["n"],
                i
            );
        }
        assert_eq!(b.get(&notes, &id("r3")).unwrap().unwrap()["seen"], true);
        assert_eq!(b.get(&notes, &id("mine")).unwrap().unwrap()["n"], -1);
        // What was stored whole takes changes as any part does.
        b.patch(&notes, &id("r5"), &obj(json!({ "n": 50 })))
            .unwrap()
            .unwrap();
        sync_part(&a, &b, &notes, b.part_of(&notes, "r5").part);
        assert_eq!(a.get(&notes, &id("r5")).unwrap().unwrap()["n"], 50);
    }

    /// How long a new device takes to receive a collection of `HEARTH_SYNC_N` small
    /// records (10,000 unless set) in 256 parts, each part synced whole, on this side
    /// and the other: run by hand with `--ignored --nocapture`, in a release build.
    #[tokio::test]
    #[ignore = "a measurement, run by hand"]
    async fn time_a_new_device() {
        let n = measured_size("HEARTH_SYNC_N", 10_000);
        let va = TestVault::new();
        let vb = va.other_device();
        let a = Collections::open(va.store.clone(), [1; 16]).unwrap();
        let b = Collections::open(vb.store.clone(), [2; 16]).unwrap();
        let contacts = name("contacts");
        for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
            let writes: Vec<(RecordId, RecordWrite)> = chunk
                .iter()
                .map(|&i| {
                    let record = obj(json!({ "name": format!("Person {i}"), "email": format!("p{i}@example.org"), "n": i }));
                    (id(&format!("r{i}")), RecordWrite::Put(record))
                })
                .collect();
            a.write_many(&contacts, &writes).unwrap();
        }
        // HEARTH_SYNC_WHOLE=1: each part sent whole (as a session does for a part the
        // new device lacks), else by Automerge sync.
        let whole = std::env::var_os("HEARTH_SYNC_WHOLE").is_some();
        let started = std::time::Instant::now();
        for (name, parts) in a.part_digests().unwrap() {
            for (part, _) in parts {
                if whole {
                    let bytes = a.stored_part(&name, part).unwrap().unwrap();
                    b.receive_whole(&name, part, &bytes).unwrap();
                } else {
                    sync_part(&a, &b, &name, part);
                }
            }
        }
        vb.store.commit().await.unwrap();
        eprintln!(
            "{n} records on the new device in {:?} (whole parts: {whole})",
            started.elapsed()
        );
        assert_eq!(b.count(&contacts).unwrap(), n);
    }

    /// Two devices sync a collection kept in parts part by part, syncing only the
    /// parts whose digests differ; afterwards their digests are equal. A part a
    /// collection does not have is refused.
    #[tokio::test]
    async fn two_devices_sync_a_collection_part_by_part() {
        let (_va, _vb, a, b, notes) = two_devices_with_notes();
        for (name, parts) in a.part_digests().unwrap() {
            for (part, _) in parts {
                sync_part(&a, &b, &name, part);
            }
        }
        assert_eq!(b.count(&notes).unwrap(), 100);
        for i in 0..100 {
            assert!(b.get(&notes, &id(&format!("r{i}"))).unwrap().is_some());
        }
        assert_eq!(b.part_digests().unwrap(), a.part_digests().unwrap());
        assert_eq!(b.digests().unwrap(), a.digests().unwrap());

        // One record edited on B: one part differs, and syncing it is enough.
        b.patch(&notes, &id("r7"), &obj(json!({ "n": 70 })))
            .unwrap()
            .unwrap();
        let theirs = b.part_digests().unwrap();
        let ours = a.part_digests().unwrap();
        let differ: Vec<u16> = ours[0]
            .1
            .iter()
            .zip(&theirs[0].1)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0)
            .collect();
        assert_eq!(differ, [b.part_of(&notes, "r7").part]);
        assert_ne!(a.digests().unwrap(), b.digests().unwrap());
        sync_part(&a, &b, &notes, differ[0]);
        assert_eq!(a.get(&notes, &id("r7")).unwrap().unwrap()["n"], 70);
        assert_eq!(a.digests().unwrap(), b.digests().unwrap());

        let refused = a
            .generate_sync(&notes, FAN_OUT, &mut sync::State::new())
            .unwrap_err();
        assert!(
            matches!(refused, CollectionError::BadSyncMessage { .. }),
            "{refused}"
        );
    }

    /// A collection kept in parts has one entry in the commit record; a part that lost
    /// its last committed change, with its index mark put back to match, makes the
    /// whole collection refused (its parts' generations add up to less than the
    /// record's), also to a device asking for its parts whole, while other
    /// collections are served.
    #[tokio::test]
    async fn a_part_behind_the_commit_record_is_refused() {
        let vault = TestVault::new();
        let c = in_parts(&vault);
        let grants = name("grants");
        for i in 0..16 {
            put_numbered(&c, &grants, i);
        }
        vault.store.commit().await.unwrap();
        let record = vault.store.ledger().snapshot();
        assert!(
            record.contains_key(&c.collection_key(&grants)),
            "one entry for the collection"
        );
        assert_eq!(record.len(), 1, "none for its parts");
        let index = vault.store.tree("records").unwrap();
        let old_index: Vec<_> = index.raw().iter().map(|e| e.unwrap()).collect();
        drop(index);
        c.patch(&grants, &id("r1"), &obj(json!({ "revoked": true })))
            .unwrap()
            .unwrap();
        vault.store.commit().await.unwrap();
        c.put(&name("other"), &id("x"), &obj(json!({ "a": 1 })))
            .unwrap();
        vault.store.commit().await.unwrap();
        let part = c.place(&c.part_of(&grants, "r1"));
        drop(c);
        lose_last_change(&vault, &part.key, old_index);
        let vault = vault.reopen().await;
        let c = in_parts(&vault);
        for record in ["r1", "r2"] {
            let e = c.get(&grants, &id(record)).unwrap_err();
            assert!(e.to_string().contains("were committed"), "{record}: {e}");
        }
        // Nor is any of its parts sent whole to a new device.
        let e = c.stored_part(&grants, part.number.unwrap()).unwrap_err();
        assert!(e.to_string().contains("were committed"), "{e}");
        assert_eq!(c.get(&name("other"), &id("x")).unwrap().unwrap()["a"], 1);
    }

    /// A part whose heads differ from the ones committed, at the same generation, makes
    /// the collection refused too, also whole.
    #[tokio::test]
    async fn a_part_with_other_heads_than_committed_is_refused() {
        let vault = TestVault::new();
        let c = in_parts(&vault);
        let notes = name("notes");
        for i in 0..16 {
            put_numbered(&c, &notes, i);
        }
        vault.store.commit().await.unwrap();
        let at = c.place(&c.part_of(&notes, "r3"));
        let mut mark = c.index.mark(&at).unwrap();
        mark.heads = vec![ChangeHash([7; 32])];
        let mut batch = SealedBatch::default();
        c.index.set_mark(&mut batch, &at, &mark);
        c.index.tree().apply(batch).unwrap();
        drop(c);
        let vault = vault.reopen().await;
        let c = in_parts(&vault);
        let e = c.count(&notes).unwrap_err();
        assert!(e.to_string().contains("not the one committed"), "{e}");
        let e = c.stored_part(&notes, at.number.unwrap()).unwrap_err();
        assert!(e.to_string().contains("not the one committed"), "{e}");
    }

    #[test]
    fn a_record_part_is_fixed_keyed_and_spread() {
        let key = [7; 32];
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            let record = format!("r{i}");
            let part = part_number(&key, 16, &record);
            assert_eq!(part, part_number(&key, 16, &record));
            counts[usize::from(part)] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        let moved = (0..1000)
            .filter(|i| {
                let record = format!("r{i}");
                part_number(&key, 16, &record) != part_number(&[8; 32], 16, &record)
            })
            .count();
        assert!(moved > 800, "another vault's key places records elsewhere");
        assert_eq!(part_number(&key, 1, "r1"), 0);
    }
}
