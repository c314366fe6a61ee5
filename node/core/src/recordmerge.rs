//! The record-level merge rule: an edit never vanishes under a concurrent delete.
//!
//! Automerge deletes a record by removing its key from the document's root; edits that
//! another device made to the record's fields meanwhile land in an object nobody can
//! reach any more, and the record is gone with them. Syncthing lets a modification win
//! over a deletion; so does Hearth. After changes from another device arrive, every
//! record that is gone now, but that one side edited without having seen the other
//! side's delete, is written again as the editing side had it, and the caller lists it
//! as a conflict ("deleted on X, edited on Y") until a person keeps or deletes it.
//!
//! Two devices that each find the same loss write the same record twice; the copies
//! read the same, are not listed as versions, and the next write makes them one
//! ([`crate::records`]' `collapse_copies`).

use std::collections::{BTreeMap, HashMap};

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{AutoCommit, AutomergeError, Change, ChangeHash, ObjId, Prop, ROOT, ReadDoc};
use serde_json::{Map, Value as Json};

use crate::records;

/// How many bytes of an Automerge actor id name the device that made a change (see
/// [`crate::collections::actor_for`]).
pub const DEVICE_TAG_LEN: usize = 8;

/// A record one side edited while the other side removed (deleted, or replaced with a
/// new object) what it was editing.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub id: String,
    /// The device tag (hex) of whoever removed it.
    pub deleted_by: String,
    /// The device tags (hex) of whoever edited it, each once, sorted.
    pub edited_by: Vec<String>,
    /// Whether the edited record was written back into the document (it was gone).
    pub written: bool,
    /// Edited versions that could not be written back because another version of the
    /// record stands (the caller keeps them for a person to choose).
    pub kept: Vec<Map<String, Json>>,
}

/// After `received` (changes from another device) were applied to a document whose
/// heads were `before`: every record object that one side edited while the other side
/// removed it without having seen the edits is not lost. If the record is gone, the
/// edited object is written back as the editing side had it; if another version of
/// the record stands, the edited one is returned in [`Restored::kept`]. Returns what it
/// found (the caller persists what was written with the changes, and lists each as a
/// conflict).
///
/// Decided per record object, not per id: a removal removes the objects it saw, so
/// what is kept is the object that was edited without the remover knowing, as the
/// editing side had it. The cost follows the changes that arrived: this side's own
/// changes are looked at only when the arriving ones remove a record or edit one that
/// is gone.
pub fn restore_edited(
    doc: &mut AutoCommit,
    before: &[ChangeHash],
    received: &[Change],
) -> Result<Vec<Restored>, AutomergeError> {
    if before.is_empty() || received.is_empty() {
        return Ok(Vec::new());
    }
    let after = doc.get_heads();
    // When none of this side's heads is a head still, the other side had seen all of
    // it: nothing here was done apart from what arrived.
    if !before.iter().any(|h| after.contains(h)) {
        return Ok(Vec::new());
    }
    let arrived: Vec<ChangeHash> = after
        .iter()
        .filter(|h| !before.contains(h))
        .copied()
        .collect();
    let (received_removals, received_edits) = removals_and_edits(doc, received);
    let mut lost_there = false;
    for (id, objects) in &received_edits {
        let now = doc.get_all(ROOT, id.as_str())?;
        if objects
            .iter()
            .any(|(obj, _)| !now.iter().any(|(_, o)| o == obj))
        {
            lost_there = true;
            break;
        }
    }
    if received_removals.is_empty() && !lost_there {
        return Ok(Vec::new());
    }
    // This side's changes the other side had not seen.
    let own = doc.get_changes(&arrived);
    let (own_removals, own_edits) = removals_and_edits(doc, &own);

    let mut ids: Vec<&String> = received_removals.keys().collect();
    ids.extend(
        own_removals
            .keys()
            .filter(|id| received_edits.contains_key(*id)),
    );
    ids.sort();
    ids.dedup();
    let mut found = Vec::new();
    for id in ids {
        // Removed there, edited here: the objects as this side had them; removed
        // here, edited there: as the other side had them.
        let mut lost = Vec::new();
        let mut deleted_by = None;
        if let (Some(by), Some(objects)) = (received_removals.get(id), own_edits.get(id)) {
            let then = lost_objects(doc, id, objects, before)?;
            if !then.is_empty() {
                deleted_by = Some(by.clone());
                lost.extend(then);
            }
        }
        if let (Some(by), Some(objects)) = (own_removals.get(id), received_edits.get(id)) {
            let then = lost_objects(doc, id, objects, &arrived)?;
            if !then.is_empty() {
                deleted_by.get_or_insert_with(|| by.clone());
                lost.extend(then);
            }
        }
        let Some(deleted_by) = deleted_by else {
            continue;
        };
        let mut edited_by: Vec<String> = lost.iter().flat_map(|(_, by)| by.clone()).collect();
        edited_by.sort();
        edited_by.dedup();
        let mut versions: Vec<Map<String, Json>> = Vec::new();
        for (record, _) in lost {
            if !versions.contains(&record) {
                versions.push(record);
            }
        }
        let written = doc.get(ROOT, id.as_str())?.is_none();
        if written {
            records::replace_record(doc, id, &versions.remove(0))?;
        }
        found.push(Restored {
            id: id.clone(),
            deleted_by,
            edited_by,
            written,
            kept: versions,
        });
    }
    Ok(found)
}

/// Of the edited `objects` of record `id`, those there at `heads` and not now (last
/// first: the one Automerge would show first), each read as it was at `heads`, with
/// who edited it.
fn lost_objects(
    doc: &AutoCommit,
    id: &str,
    objects: &[(ObjId, Vec<String>)],
    heads: &[ChangeHash],
) -> Result<Vec<Edited>, AutomergeError> {
    let now = doc.get_all(ROOT, id)?;
    let then = doc.get_all_at(ROOT, id, heads)?;
    let mut out = Vec::new();
    for (_, obj) in then.iter().rev() {
        if now.iter().any(|(_, o)| o == obj) {
            continue;
        }
        if let Some((_, authors)) = objects.iter().find(|(edited, _)| edited == obj) {
            out.push((records::read_object_at(doc, obj, heads)?, authors.clone()));
        }
    }
    Ok(out)
}

/// The device tags (hex) of those who edited an object, sorted.
type Authors = Vec<String>;

/// Record id → who removed it.
type Removals = BTreeMap<String, String>;

/// Record id → each edited record object, with who edited it.
type Edits = BTreeMap<String, Vec<(ObjId, Authors)>>;

/// A record object as it was, and who edited it.
type Edited = (Map<String, Json>, Authors);

/// The device tag of a change's author.
fn tag(change: &Change) -> String {
    let actor = change.actor_id().to_bytes();
    data_encoding::HEXLOWER.encode(&actor[..actor.len().min(DEVICE_TAG_LEN)])
}

/// What `changes` did to records, each change decoded once: the records they remove —
/// delete, or replace with a new object (which removes the one it replaces just as
/// well) — with who did it; and the record objects whose fields they change (an
/// operation inside a record, not on the root), by record id, each with who changed it
/// (sorted). An operation whose object cannot be placed counts for nothing (it was not
/// made by Hearth).
fn removals_and_edits(doc: &AutoCommit, changes: &[Change]) -> (Removals, Edits) {
    let mut removals = Removals::new();
    let mut out = Edits::new();
    // Where each object lives (record id and record object), asked once: asking the
    // document costs a walk up from the object.
    let mut placed: HashMap<String, Option<(String, ObjId)>> = HashMap::new();
    for change in changes {
        let author = tag(change);
        let change = change.decode();
        for (index, op) in change.operations.iter().enumerate() {
            if let (ObjectId::Root, Key::Map(id)) = (&op.obj, &op.key)
                && !op.pred.is_empty()
            {
                removals.insert(id.to_string(), author.clone());
            }
            // An object made in these changes is placed from the op that made it, not
            // by asking the document (a device catching up makes thousands).
            if matches!(op.action, OpType::Make(_)) {
                let made = automerge::legacy::OpId::new(
                    change.start_op.get() + index as u64,
                    &change.actor_id,
                )
                .to_string();
                let place = match (&op.obj, &op.key) {
                    (ObjectId::Root, Key::Map(id)) => doc
                        .import_obj(&made)
                        .ok()
                        .map(|record| (id.to_string(), record)),
                    (ObjectId::Id(parent), _) => placed
                        .entry(parent.to_string())
                        .or_insert_with_key(|name| place(doc, name))
                        .clone(),
                    _ => None,
                };
                placed.insert(made, place);
            }
            let ObjectId::Id(opid) = &op.obj else {
                continue;
            };
            let name = opid.to_string();
            let place = placed
                .entry(name)
                .or_insert_with_key(|name| place(doc, name))
                .clone();
            let Some((id, record)) = place else {
                continue;
            };
            let objects = out.entry(id).or_default();
            match objects.iter_mut().find(|(obj, _)| *obj == record) {
                Some((_, authors)) => {
                    if !authors.contains(&author) {
                        authors.push(author.clone());
                        authors.sort();
                    }
                }
                None => objects.push((record, vec![author.clone()])),
            }
        }
    }
    (removals, out)
}

/// The record id and record object that object `name` is, or lies inside; `None`
/// when it is not inside a record (or not in the document).
fn place(doc: &AutoCommit, name: &str) -> Option<(String, ObjId)> {
    let obj = doc.import_obj(name).ok()?;
    let mut child = obj.clone();
    for parent in doc.parents(&obj).ok()? {
        if parent.obj == ROOT {
            return match parent.prop {
                Prop::Map(id) => Some((id, child)),
                Prop::Seq(_) => None,
            };
        }
        child = parent.obj;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    fn device(tag: u8) -> AutoCommit {
        let mut actor = [0u8; 16];
        actor[..DEVICE_TAG_LEN].fill(tag);
        actor[DEVICE_TAG_LEN..].copy_from_slice(&rand::random::<[u8; 8]>());
        AutoCommit::new().with_actor(automerge::ActorId::from(actor))
    }

    fn hex(tag: u8) -> String {
        data_encoding::HEXLOWER.encode(&[tag; DEVICE_TAG_LEN])
    }

    /// `into` receives everything `from` has that it lacks, as sync would bring it.
    fn receive(into: &mut AutoCommit, from: &mut AutoCommit) -> Vec<Restored> {
        let before = into.get_heads();
        let changes = from.get_changes(&before);
        into.apply_changes(changes).unwrap();
        let received = into.get_changes(&before);
        restore_edited(into, &before, &received).unwrap()
    }

    /// Two devices sharing record `r`, each then changed apart.
    fn apart(
        on_a: impl FnOnce(&mut AutoCommit),
        on_b: impl FnOnce(&mut AutoCommit),
    ) -> (AutoCommit, AutoCommit) {
        let mut a = device(1);
        records::put_record(&mut a, "r", &obj(json!({"title": "plan", "n": 1}))).unwrap();
        a.commit();
        let mut b = device(2);
        b.merge(&mut a).unwrap();
        on_a(&mut a);
        a.commit();
        on_b(&mut b);
        b.commit();
        (a, b)
    }

    #[test]
    fn an_edit_survives_a_delete_on_either_side_and_both_agree() {
        let (mut a, mut b) = apart(
            |a| {
                records::patch_record(a, "r", &obj(json!({"title": "plan A"}))).unwrap();
            },
            |b| {
                records::remove_record(b, "r").unwrap();
            },
        );
        // What A had before any of B's changes arrived.
        let mut a_edit_only = a.clone();
        // A (the editor) receives the delete: it writes its record again.
        let on_a = receive(&mut a, &mut b);
        assert_eq!(
            on_a,
            vec![Restored {
                id: "r".into(),
                deleted_by: hex(2),
                edited_by: vec![hex(1)],
                written: true,
                kept: Vec::new(),
            }]
        );
        let kept = records::read_record(&a, "r").unwrap().unwrap();
        assert_eq!(kept, obj(json!({"title": "plan A", "n": 1})));
        // B (the deleter) receives A's edit before A's repair: it finds the same loss.
        let on_b = receive(&mut b, &mut a_edit_only);
        assert_eq!(on_b, on_a);
        assert_eq!(records::read_record(&b, "r").unwrap().unwrap(), kept);
        // Both repairs meet: one record, no versions to choose between, and nothing
        // more to restore.
        assert!(receive(&mut a, &mut b).is_empty());
        assert!(receive(&mut b, &mut a).is_empty());
        assert_eq!(a.get_heads(), b.get_heads());
        assert!(records::record_versions(&a, "r").unwrap().is_empty());
        assert_eq!(a.get_all(ROOT, "r").unwrap().len(), 2);
        // The next write makes the copies one, and the record stays one version.
        records::patch_record(&mut a, "r", &obj(json!({"n": 2}))).unwrap();
        a.commit();
        assert_eq!(a.get_all(ROOT, "r").unwrap().len(), 1);
        receive(&mut b, &mut a);
        assert!(records::record_versions(&b, "r").unwrap().is_empty());
        assert_eq!(
            records::read_record(&b, "r").unwrap().unwrap(),
            obj(json!({"title": "plan A", "n": 2}))
        );
    }

    #[test]
    fn a_delete_that_saw_every_edit_stays_a_delete() {
        let mut a = device(1);
        records::put_record(&mut a, "r", &obj(json!({"n": 1}))).unwrap();
        a.commit();
        let mut b = device(2);
        b.merge(&mut a).unwrap();
        records::patch_record(&mut b, "r", &obj(json!({"n": 2}))).unwrap();
        b.commit();
        a.merge(&mut b).unwrap();
        // A deletes after seeing B's edit; B meanwhile changed another record.
        records::remove_record(&mut a, "r").unwrap();
        a.commit();
        records::put_record(&mut b, "s", &obj(json!({"x": 1}))).unwrap();
        b.commit();
        assert!(receive(&mut b, &mut a).is_empty());
        assert!(records::read_record(&b, "r").unwrap().is_none());
        assert!(receive(&mut a, &mut b).is_empty());
        assert!(records::read_record(&a, "r").unwrap().is_none());
    }

    #[test]
    fn deletes_on_both_sides_and_edits_of_other_records_restore_nothing() {
        let (mut a, mut b) = apart(
            |a| {
                records::remove_record(a, "r").unwrap();
                records::put_record(a, "s", &obj(json!({"x": 1}))).unwrap();
            },
            |b| {
                records::remove_record(b, "r").unwrap();
                records::put_record(b, "t", &obj(json!({"y": 1}))).unwrap();
            },
        );
        assert!(receive(&mut a, &mut b).is_empty());
        assert!(records::read_record(&a, "r").unwrap().is_none());
    }

    #[test]
    fn the_same_id_made_on_two_devices_keeps_both_versions_until_one_is_kept() {
        let mut a = device(1);
        let mut b = device(2);
        records::put_record(&mut a, "r", &obj(json!({"from": "a"}))).unwrap();
        a.commit();
        records::put_record(&mut b, "r", &obj(json!({"from": "b", "extra": true}))).unwrap();
        b.commit();
        assert!(receive(&mut a, &mut b).is_empty());
        let versions = records::record_versions(&a, "r").unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[0], records::read_record(&a, "r").unwrap().unwrap());
        assert!(versions.contains(&obj(json!({"from": "a"}))));
        assert!(versions.contains(&obj(json!({"from": "b", "extra": true}))));
        // An ordinary write lands in the version shown and chooses nothing.
        records::patch_record(&mut a, "r", &obj(json!({"seen": 1}))).unwrap();
        a.commit();
        assert_eq!(records::record_versions(&a, "r").unwrap().len(), 2);
        // Keeping the other one ends it.
        let other = records::record_versions(&a, "r").unwrap()[1].clone();
        assert!(records::keep_version(&mut a, "r", 1).unwrap());
        assert!(!records::keep_version(&mut a, "r", 5).unwrap());
        a.commit();
        assert!(records::record_versions(&a, "r").unwrap().is_empty());
        assert_eq!(records::read_record(&a, "r").unwrap().unwrap(), other);
    }

    /// One step of the model run: a device writes, edits or deletes a record, or one
    /// device receives what another has.
    #[derive(Debug, Clone)]
    enum Step {
        Put { device: usize, id: usize, n: u8 },
        Patch { device: usize, id: usize, n: u8 },
        Delete { device: usize, id: usize },
        Sync { from: usize, to: usize },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..3usize, 0..2usize, any::<u8>()).prop_map(|(device, id, n)| Step::Put {
                device,
                id,
                n
            }),
            (0..3usize, 0..2usize, any::<u8>()).prop_map(|(device, id, n)| Step::Patch {
                device,
                id,
                n
            }),
            (0..3usize, 0..2usize).prop_map(|(device, id)| Step::Delete { device, id }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Three devices create, edit and delete two records and sync in any order;
        /// then all of them meet. The model: a record is there at the end when some
        /// write of it (a create or an edit) was not seen by any delete of it — an
        /// edit never vanishes under a delete that did not know of it; it is gone
        /// when every delete of it saw every write — a delete in a quiet moment stays
        /// a delete. (In between the order decides: a device that met a delete which
        /// had not seen an edit writes the record again, and a second delete that had
        /// seen the edit, arriving later, does not undo that — the record is back, and
        /// listed, rather than lost.) Every device reads the same.
        #[test]
        fn concurrent_create_edit_delete_against_a_model(steps in proptest::collection::vec(step(), 1..40)) {
            use std::collections::HashSet;
            let mut docs: Vec<AutoCommit> = (1..=3).map(device).collect();
            // The writes each device knows (by number), the writes of each record, and
            // what each delete of a record had seen.
            let mut known: Vec<HashSet<usize>> = vec![HashSet::new(); 3];
            let mut writes: Vec<Vec<usize>> = vec![Vec::new(); 2];
            let mut deletes_saw: Vec<Vec<HashSet<usize>>> = vec![Vec::new(); 2];
            let mut next = 0;
            let ids = ["x", "y"];
            // Edited versions set aside because another version stood.
            let mut kept = [false; 2];
            let mut note = |found: Vec<Restored>| {
                for found in found {
                    let id = ids.iter().position(|i| *i == found.id).unwrap();
                    kept[id] |= !found.kept.is_empty();
                }
            };
            for step in steps {
                match step {
                    // A write that changes nothing (the same values again) is none.
                    Step::Put { device, id, n } => {
                        records::put_record(&mut docs[device], ids[id], &obj(json!({"v": n, "by": device}))).unwrap();
                        if docs[device].commit().is_some() {
                            known[device].insert(next);
                            writes[id].push(next);
                            next += 1;
                        }
                    }
                    Step::Patch { device, id, n } => {
                        records::patch_record(&mut docs[device], ids[id], &obj(json!({"p": n}))).unwrap();
                        if docs[device].commit().is_some() {
                            known[device].insert(next);
                            writes[id].push(next);
                            next += 1;
                        }
                    }
                    Step::Delete { device, id } => {
                        if records::remove_record(&mut docs[device], ids[id]).unwrap() {
                            docs[device].commit();
                            let saw = writes[id].iter().copied().filter(|w| known[device].contains(w)).collect();
                            deletes_saw[id].push(saw);
                        }
                    }
                    Step::Sync { from, to } if from != to => {
                        let mut source = docs[from].clone();
                        note(receive(&mut docs[to], &mut source));
                        docs[to].commit();
                        let theirs = known[from].clone();
                        known[to].extend(theirs);
                    }
                    Step::Sync { .. } => {}
                }
            }
            // Everyone meets, until nothing changes.
            for _ in 0..4 {
                for from in 0..3 {
                    for to in 0..3 {
                        if from != to {
                            let mut source = docs[from].clone();
                            note(receive(&mut docs[to], &mut source));
                            docs[to].commit();
                        }
                    }
                }
            }
            for (id, name) in ids.iter().enumerate() {
                let unseen = writes[id].iter().any(|w| deletes_saw[id].iter().all(|saw| !saw.contains(w)));
                let quiet = !deletes_saw[id].is_empty()
                    && deletes_saw[id].iter().all(|saw| writes[id].iter().all(|w| saw.contains(w)));
                let shown: Vec<Option<Map<String, Json>>> = docs.iter().map(|d| records::read_record(d, name).unwrap()).collect();
                if unseen {
                    proptest::prop_assert!(shown[0].is_some() || kept[id], "record {} lost: {:?}", name, shown);
                }
                if quiet {
                    proptest::prop_assert!(shown[0].is_none(), "record {} came back: {:?}", name, shown);
                }
                proptest::prop_assert!(shown.iter().all(|s| *s == shown[0]), "record {}: {:?}", name, shown);
            }
        }
    }
}
