//! The split of a collection kept in one document into parts, the same on every
//! device (docs/design/bounded-documents.md, decision 8). Built and tested, **not yet
//! run**: every collection of a running node is still kept in one part, and the start
//! that migrates old vaults is the design's step 4.
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

/// What a split found and made, for the migration's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Split {
    pub(super) records: usize,
    /// Changes made beyond one a record: versions and values in conflict.
    pub(super) variants: usize,
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
    use serde_json::json;

    const KEY: [u8; 32] = [9; 32];

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

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
                variants: 0
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
                variants: 2
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
