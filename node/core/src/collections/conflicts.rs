//! What a merge of devices apart leaves for a person to decide: records kept against
//! a delete and versions of one record (`_conflicts` notices), listing them and
//! resolving them; and the merge step run after another device's changes arrive.

use super::*;
use automerge::{ObjType, ROOT, ReadDoc, ValueRef};

/// A record's id and what of it is in conflict.
pub type RecordConflicts = (String, RecordConflict);

/// What a merge does after another device's changes arrive: records one side edited
/// while the other deleted them are kept ([`recordmerge`], user collections only: a
/// system collection's deletes, a revocation among them, always stand), then text
/// fields made apart are merged.
pub(super) fn merged(
    doc: &mut AutoCommit,
    before: &[ChangeHash],
    received: &[automerge::Change],
    user: bool,
) -> Result<Vec<recordmerge::Restored>, AutomergeError> {
    // First: it tells this side's changes from what arrived by the heads, which a
    // text merge (a change of this side's) would move.
    let restored = if user {
        recordmerge::restore_edited(doc, before, received)?
    } else {
        Vec::new()
    };
    merge_texts_in(doc, before, received)?;
    Ok(restored)
}

/// Merges the text fields two devices made apart ([`crate::textmerge`]) in the
/// records where `received` makes a text object: only such a change can leave a
/// field with two texts, so other changes cost nothing here.
pub(super) fn merge_texts_in(
    doc: &mut AutoCommit,
    before: &[ChangeHash],
    received: &[automerge::Change],
) -> Result<(), AutomergeError> {
    if before.is_empty() {
        // Nothing of this device's could compete with what arrived (a device catching
        // up): two texts in what arrived were made by other devices, which merge them
        // when they meet.
        return Ok(());
    }
    let makes_text = |op: &automerge::legacy::Op| {
        matches!(
            op.action,
            automerge::legacy::OpType::Make(automerge::ObjType::Text)
        )
    };
    let touched = match records::records_touched_by(doc, received, makes_text) {
        Some(ids) => ids,
        // A change that cannot be placed (not this schema's shape): look at all of
        // what it touched, as the event pump does.
        None => {
            let heads = doc.get_heads();
            records::touched_records(&doc.diff(before, &heads))
        }
    };
    for id in touched {
        if crate::textmerge::merge_record(doc, &id)? {
            tracing::info!(
                record = id,
                "merged a text field edited apart on two devices"
            );
        }
    }
    Ok(())
}

/// Conflicts that live beside a record rather than in it: records deleted on one
/// device while edited on another ([`recordmerge`]), one notice per record.
pub(crate) fn conflicts_list() -> CollectionName {
    CollectionName::parse("_conflicts").expect("_conflicts is a valid system collection name")
}

/// The id of the notice in `_conflicts` for record `id` of `collection`: the same on
/// every device, so two devices noting the same loss write one notice.
pub(super) fn notice_id(collection: &CollectionName, id: &str) -> RecordId {
    let mut hasher = blake3::Hasher::new_derive_key("hearth conflict notice v1");
    hasher.update(collection.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(id.as_bytes());
    RecordId::parse(&hasher.finalize().to_hex()[..32]).expect("hex is a valid record id")
}

/// A record deleted (or replaced) on one device while another edited it: it was kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    /// The tag of the device that deleted it ([`device_tag`], hex).
    pub deleted_by: String,
    /// The tags of the devices that edited it.
    pub edited_by: Vec<String>,
    /// When this device found it (Unix seconds).
    pub at: u64,
    /// Edited versions that another version stood beside (not written back).
    kept: Vec<Map<String, Json>>,
}

impl Removal {
    pub(super) fn from_notice(notice: &Json) -> Option<Self> {
        let tags = |v: &Json| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Self {
            deleted_by: notice.get("deleted_by")?.as_str()?.to_owned(),
            edited_by: tags(notice.get("edited_by")?),
            at: notice.get("at").and_then(Json::as_u64).unwrap_or(0),
            kept: notice
                .get("kept")
                .and_then(Json::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_object().cloned()).collect())
                .unwrap_or_default(),
        })
    }
}

/// What of a record is in conflict: fields edited apart, whole versions (the same id
/// made on two devices, or an edited version kept beside another), a delete that met
/// an edit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordConflict {
    /// Field → every competing value, the one shown first.
    pub fields: Map<String, Json>,
    /// Every distinct whole version, the one shown first; empty when there is one.
    pub versions: Vec<Map<String, Json>>,
    /// Set when the record was deleted on one device while edited on another.
    pub removed: Option<Removal>,
}

impl RecordConflict {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.versions.is_empty() && self.removed.is_none()
    }

    /// Reads a record's conflicts from its document and its notice.
    pub(super) fn read(
        doc: &AutoCommit,
        id: &str,
        notice: Option<&Json>,
    ) -> Result<Self, AutomergeError> {
        let removed = notice.and_then(Removal::from_notice);
        let mut versions = records::record_versions(doc, id)?;
        if let Some(removed) = &removed
            && !removed.kept.is_empty()
        {
            if versions.is_empty()
                && let Some(shown) = records::read_record(doc, id)?
            {
                versions.push(shown);
            }
            for kept in &removed.kept {
                if !versions.contains(kept) {
                    versions.push(kept.clone());
                }
            }
            if versions.len() < 2 {
                versions.clear();
            }
        }
        Ok(Self {
            fields: records::record_conflicts(doc, id)?,
            versions,
            removed,
        })
    }
}

impl Collections {
    /// Notes in `_conflicts` each record a merge kept from a delete that had not seen
    /// its edits (merged with a notice already there). A notice is written after the
    /// records it speaks of: a crash between keeps the record, unlisted.
    pub(super) fn note_restored(
        &self,
        name: &CollectionName,
        restored: Vec<recordmerge::Restored>,
    ) -> Result<(), CollectionError> {
        for found in restored {
            tracing::info!(
                collection = %name,
                record = found.id,
                written_back = found.written,
                "kept a record that one device deleted while another edited it"
            );
            let nid = notice_id(name, &found.id);
            let mut notice = self
                .get(&conflicts_list(), &nid)?
                .and_then(|n| n.as_object().cloned())
                .unwrap_or_default();
            notice.remove("id");
            let mut edited_by: Vec<Json> = notice
                .get("edited_by")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            let mut kept: Vec<Json> = notice
                .get("kept")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            for tag in found.edited_by {
                if !edited_by.contains(&Json::from(tag.as_str())) {
                    edited_by.push(Json::from(tag));
                }
            }
            for version in found.kept {
                let version = Json::Object(version);
                if !kept.contains(&version) {
                    kept.push(version);
                }
            }
            notice.insert("collection".into(), Json::from(name.as_str()));
            notice.insert("record".into(), Json::from(found.id));
            notice.insert("deleted_by".into(), Json::from(found.deleted_by));
            notice.insert("edited_by".into(), Json::Array(edited_by));
            notice.insert("kept".into(), Json::Array(kept));
            notice.insert("at".into(), Json::from(crate::clock::now_unix()));
            self.put(&conflicts_list(), &nid, &notice)?;
        }
        Ok(())
    }

    /// The notice of record `id`'s deletion while edited, if there is one.
    pub(super) fn notice(
        &self,
        name: &CollectionName,
        id: &str,
    ) -> Result<Option<Json>, CollectionError> {
        if name.is_system() {
            return Ok(None);
        }
        self.get(&conflicts_list(), &notice_id(name, id))
    }

    /// What of a record is in conflict (fields edited apart, whole versions, a delete
    /// that met an edit); `None` if there is no such record.
    pub fn conflicts(
        &self,
        name: &CollectionName,
        id: &RecordId,
    ) -> Result<Option<RecordConflict>, CollectionError> {
        let notice = self.notice(name, id.as_str())?;
        self.with(&self.part_of(name, id.as_str()), |c| {
            if records::read_record(&c.doc, id.as_str())
                .map_err(|e| c.automerge(e))?
                .is_none()
            {
                return Ok(None);
            }
            RecordConflict::read(&c.doc, id.as_str(), notice.as_ref())
                .map(Some)
                .map_err(|e| c.automerge(e))
        })
    }

    /// Writes the value a person chose for a field in conflict, which ends the
    /// conflict (see [`records::choose`]); `false` if there is no such record. Durable
    /// only after [`Store::commit`].
    pub fn choose(
        &self,
        name: &CollectionName,
        id: &RecordId,
        field: &str,
        value: &Json,
    ) -> Result<bool, CollectionError> {
        self.mutate(
            &self.part_of(name, id.as_str()),
            Some(&[id.as_str()]),
            |doc| records::choose(doc, id.as_str(), field, value),
        )
    }

    /// The ids of a collection's records with something for a person to decide:
    /// fields edited apart or several versions (the record index keeps which), or a
    /// delete that met an edit (`_conflicts` notices); sorted. Loads no document.
    pub fn conflicted(&self, name: &CollectionName) -> Result<Vec<String>, CollectionError> {
        if name.is_system() {
            return Ok(Vec::new());
        }
        let key = self.indexed(name)?;
        let mut ids = self.index.conflicted(&key)?;
        ids.extend(self.noticed(Some(name))?.into_iter().map(|(_, id)| id));
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// How many records of each user collection have something for a person to
    /// decide ([`Collections::conflicted`]), for those that have any; from the index
    /// as it stands (a collection not read since it changed by sync may count what it
    /// held then).
    pub fn conflict_counts(&self) -> Result<Vec<(CollectionName, usize)>, CollectionError> {
        let noticed = self.noticed(None)?;
        let mut out = Vec::new();
        for name in self.names()? {
            if name.is_system() {
                continue;
            }
            let mut ids: HashSet<String> = self
                .index
                .conflicted(&self.collection_key(&name))?
                .into_iter()
                .collect();
            ids.extend(
                noticed
                    .iter()
                    .filter(|(c, _)| *c == name.as_str())
                    .map(|(_, id)| id.clone()),
            );
            if !ids.is_empty() {
                out.push((name, ids.len()));
            }
        }
        Ok(out)
    }

    /// The records with a delete notice (of collection `only`, or every one), as
    /// (collection, record id), from the `_conflicts` notices still there.
    fn noticed(
        &self,
        only: Option<&CollectionName>,
    ) -> Result<Vec<(String, String)>, CollectionError> {
        let mut out = Vec::new();
        for notice in self.records(&conflicts_list())? {
            let (Some(collection), Some(record)) = (
                notice.get("collection").and_then(Json::as_str),
                notice.get("record").and_then(Json::as_str),
            ) else {
                continue;
            };
            if only.is_none_or(|n| n.as_str() == collection) {
                out.push((collection.to_owned(), record.to_owned()));
            }
        }
        Ok(out)
    }

    /// Every record of a collection with something in conflict, by id (as
    /// [`Collections::conflicts`]).
    pub fn all_conflicts(
        &self,
        name: &CollectionName,
    ) -> Result<Vec<RecordConflicts>, CollectionError> {
        let mut notices: HashMap<String, Json> = HashMap::new();
        if !name.is_system() {
            for notice in self.records(&conflicts_list())? {
                if notice.get("collection").and_then(Json::as_str) == Some(name.as_str())
                    && let Some(record) = notice.get("record").and_then(Json::as_str)
                {
                    notices.insert(record.to_owned(), notice.clone());
                }
            }
        }
        let mut out = Vec::new();
        for part in self.parts(name)? {
            self.with(&part, |c| {
                // One pass over the part: a record that holds one version and has no
                // notice can only have fields in conflict, found in one pass over it.
                for item in c.doc.map_range(ROOT, ..) {
                    let id = item.key.as_ref();
                    let notice = notices.get(id);
                    let conflict = match item.value {
                        ValueRef::Object(ObjType::Map) if !item.conflict && notice.is_none() => {
                            RecordConflict {
                                fields: records::object_conflicts(&c.doc, &item.id())
                                    .map_err(|e| c.automerge(e))?,
                                ..RecordConflict::default()
                            }
                        }
                        _ => {
                            RecordConflict::read(&c.doc, id, notice).map_err(|e| c.automerge(e))?
                        }
                    };
                    if !conflict.is_empty() {
                        out.push((id.to_owned(), conflict));
                    }
                }
                Ok(())
            })?;
        }
        out.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(out)
    }

    /// Writes the record `decide` makes of record `id` (as it reads now, without its
    /// `"id"`) as its only version, and ends its delete notice, in one write: how a
    /// person's merge of its versions is kept. `Ok(Ok(false))` if there is no such
    /// record; `decide`'s refusal writes nothing. Durable only after
    /// [`Store::commit`].
    pub fn merge_versions<E>(
        &self,
        name: &CollectionName,
        id: &RecordId,
        decide: impl FnOnce(&Map<String, Json>) -> Result<Map<String, Json>, E>,
    ) -> Result<Result<bool, E>, CollectionError> {
        let (notices, nid) = (conflicts_list(), notice_id(name, id.as_str()));
        let mut touching = vec![(name.clone(), id.clone())];
        if !name.is_system() {
            touching.push((notices.clone(), nid.clone()));
        }
        let written = self.write_across(&touching, |lookup| {
            let Some(before) = lookup(name, id).map_err(Refused::Failed)? else {
                return Ok((Vec::new(), false));
            };
            let merged = decide(&before).map_err(Refused::By)?;
            let mut writes = vec![(name.clone(), id.clone(), RecordWrite::Replace(merged))];
            if !name.is_system() && lookup(&notices, &nid).map_err(Refused::Failed)?.is_some() {
                writes.push((notices.clone(), nid.clone(), RecordWrite::Remove));
            }
            Ok((writes, true))
        })?;
        Refused::sort(written)
    }

    /// Makes version `index` of record `id` (as [`RecordConflict::versions`] lists
    /// them; 0, the one shown, also when there is only one) its only version, and ends
    /// its delete notice: how a person keeps one of the versions, or keeps a record
    /// that a delete met. `Ok(false)` if there is no such record or version. Durable
    /// only after [`Store::commit`].
    pub fn keep_version(
        &self,
        name: &CollectionName,
        id: &RecordId,
        index: usize,
    ) -> Result<bool, CollectionError> {
        let (notices, nid) = (conflicts_list(), notice_id(name, id.as_str()));
        // The version kept and the notice ended are one write: a crash between can no
        // longer leave a notice for a conflict a person resolved. (A system collection
        // has no notices.)
        let mut touching = vec![(name.clone(), id.clone())];
        if !name.is_system() {
            touching.push((notices.clone(), nid.clone()));
        }
        self.write_across_docs(&touching, |docs| {
            let automerge = |e| automerge_error(name, e);
            let doc = docs(name, id)?;
            if records::read_record(doc, id.as_str())
                .map_err(automerge)?
                .is_none()
            {
                return Ok((Vec::new(), false));
            }
            let notice = match name.is_system() {
                true => None,
                false => records::read_record(docs(&notices, &nid)?, nid.as_str())
                    .map_err(automerge)?
                    .map(|record| with_id(nid.as_str(), record)),
            };
            let conflict =
                RecordConflict::read(doc, id.as_str(), notice.as_ref()).map_err(automerge)?;
            let mut writes: WritesIn = Vec::new();
            if conflict.versions.is_empty() {
                if index != 0 {
                    return Ok((Vec::new(), false));
                }
            } else {
                let Some(version) = conflict.versions.get(index) else {
                    return Ok((Vec::new(), false));
                };
                writes.push((
                    name.clone(),
                    id.clone(),
                    RecordWrite::Replace(version.clone()),
                ));
            }
            if notice.is_some() {
                writes.push((notices.clone(), nid.clone(), RecordWrite::Remove));
            }
            Ok::<_, CollectionError>((writes, true))
        })?
    }
}
