//! Records as Automerge values: the mapping between JSON objects and the maps of a
//! collection document.
//!
//! A collection document's root is a map from record id to record; a record is an
//! Automerge map. JSON objects map to maps, arrays to lists, strings to string scalars,
//! integers to `Int`/`Uint`, other numbers to `F64`, booleans and null to themselves.
//! Writes change only what differs, so two devices that edit different fields of one
//! record both keep their edit when they merge.

use automerge::transaction::Transactable;
use automerge::{
    AutoCommit, AutomergeError, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue,
    Value, ValueRef,
};
use serde_json::{Map, Number, Value as Json};

use crate::index::Stored;

/// A record as JSON, without its id.
pub type Record = Map<String, Json>;

/// Reads the record `id`, or `None` if there is none.
pub fn read_record(
    doc: &AutoCommit,
    id: &str,
) -> Result<Option<Map<String, Json>>, AutomergeError> {
    match doc.get(ROOT, id)? {
        Some((Value::Object(ObjType::Map), obj)) => Ok(Some(read_map(doc, &obj, At::Now)?)),
        // Anything else at a record's key was not written by Hearth; show nothing
        // rather than guess.
        _ => Ok(None),
    }
}

/// Record `id` without its top-level fields `skipped` (`None` if there is no record):
/// what a reader that never looks at them needs, at the cost of the rest.
pub fn read_record_except(
    doc: &AutoCommit,
    id: &str,
    skipped: &[&str],
) -> Result<Option<Map<String, Json>>, AutomergeError> {
    let Some((Value::Object(ObjType::Map), obj)) = doc.get(ROOT, id)? else {
        return Ok(None);
    };
    let mut out = Map::new();
    for item in doc.map_range(&obj, ..) {
        if skipped.contains(&item.key.as_ref()) {
            continue;
        }
        let json = item_json(doc, item.value.clone(), || item.id(), At::Now)?;
        out.insert(item.key.into_owned(), json);
    }
    Ok(Some(out))
}

/// Only the top-level fields `keys` of record `id` (`None` if there is no record): what
/// a filter looks at, read without the rest of a long record.
pub fn read_record_fields(
    doc: &AutoCommit,
    id: &str,
    keys: &[&str],
) -> Result<Option<Map<String, Json>>, AutomergeError> {
    let Some((Value::Object(ObjType::Map), obj)) = doc.get(ROOT, id)? else {
        return Ok(None);
    };
    let mut out = Map::new();
    for key in keys {
        if let Some((value, value_id)) = doc.get(&obj, *key)? {
            out.insert(
                (*key).to_owned(),
                read_value(doc, value, &value_id, At::Now)?,
            );
        }
    }
    Ok(Some(out))
}

/// A text (in characters), list (in items) or map (in keys) longer than this keeps its
/// record out of the record index ([`read_for_index`]): a small edit to it would
/// otherwise re-read and re-write the whole record, making each edit cost what the
/// record does.
pub const LONG: usize = 16_384;

/// A map (in keys) longer than this keeps its record out of the record index too: a
/// folder's entries (one key a file) grow with every file put into it, and each put
/// re-wrote the whole map into the index (10,000 files into one folder over WebDAV:
/// 300 KB sealed and written again per file at the end).
pub const LONG_MAP: usize = 1_024;

/// Reads record `id` as the record index keeps it (`None` if there is none): whole,
/// or, if it is or holds a text or list longer than [`LONG`] or a map longer than
/// [`LONG_MAP`], only found
/// [`Stored::InDocument`] (which costs what the record's structure does, not what its
/// long texts hold: Automerge keeps a text's length).
pub fn read_for_index(doc: &AutoCommit, id: &str) -> Result<Option<Stored>, AutomergeError> {
    match doc.get(ROOT, id)? {
        Some((Value::Object(ObjType::Map), obj)) => {
            Ok(Some(match read_bounded(doc, ObjType::Map, &obj)? {
                Some(Json::Object(record)) => Stored::Record(record),
                _ => Stored::InDocument,
            }))
        }
        _ => Ok(None),
    }
}

/// Object `obj` (of `kind`) as JSON, or `None` if it is, or holds, a text, list or map
/// longer than [`LONG`]: one pass, which stops at the first long one without reading
/// it.
fn read_bounded(
    doc: &AutoCommit,
    kind: ObjType,
    obj: &ObjId,
) -> Result<Option<Json>, AutomergeError> {
    let limit = match kind {
        ObjType::Map | ObjType::Table => LONG_MAP,
        ObjType::List | ObjType::Text => LONG,
    };
    if doc.length(obj) > limit {
        return Ok(None);
    }
    // An item's value: an object read bounded in turn (its id made only then).
    let read = |value: ValueRef<'_>, id: &dyn Fn() -> ObjId| match value {
        ValueRef::Object(kind) => read_bounded(doc, kind, &id()),
        scalar @ ValueRef::Scalar(_) => {
            read_value(doc, scalar.into_value(), &ROOT, At::Now).map(Some)
        }
    };
    Ok(Some(match kind {
        ObjType::Map | ObjType::Table => {
            let mut out = Map::new();
            for item in doc.map_range(obj, ..) {
                let Some(json) = read(item.value.clone(), &|| item.id())? else {
                    return Ok(None);
                };
                out.insert(item.key.into_owned(), json);
            }
            Json::Object(out)
        }
        ObjType::List => {
            let mut out = Vec::new();
            for item in doc.list_range(obj, ..) {
                let Some(json) = read(item.value.clone(), &|| item.id())? else {
                    return Ok(None);
                };
                out.push(json);
            }
            Json::Array(out)
        }
        ObjType::Text => Json::String(doc.text(obj)?),
    }))
}

/// Reads the record `id` as it was at `heads` (a point in the document's history), or
/// `None` if there was none then.
pub fn read_record_at(
    doc: &AutoCommit,
    id: &str,
    heads: &[ChangeHash],
) -> Result<Option<Map<String, Json>>, AutomergeError> {
    match doc.get_at(ROOT, id, heads)? {
        Some((Value::Object(ObjType::Map), obj)) => {
            Ok(Some(read_map(doc, &obj, At::Heads(heads))?))
        }
        _ => Ok(None),
    }
}

/// A record object (a map at the root, perhaps not the one shown now) as it was at
/// `heads`.
pub fn read_object_at(
    doc: &AutoCommit,
    obj: &ObjId,
    heads: &[ChangeHash],
) -> Result<Map<String, Json>, AutomergeError> {
    read_map(doc, obj, At::Heads(heads))
}

/// The ids of the records a diff's patches touch, each once. (Patches come grouped by
/// object, not in the order the changes were made: so do the ids.)
pub fn touched_records(patches: &[automerge::Patch]) -> Vec<String> {
    use automerge::PatchAction;
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for patch in patches {
        let id = match patch.path.first() {
            Some((_, Prop::Map(id))) => Some(id),
            Some(_) => None,
            None => match &patch.action {
                PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key),
                PatchAction::Conflict {
                    prop: Prop::Map(key),
                } => Some(key),
                _ => None,
            },
        };
        if let Some(id) = id.filter(|id| seen.insert((*id).clone())) {
            ids.push(id.clone());
        }
    }
    ids
}

/// The records the changes after `since` touched, found from those changes' operations
/// (so the cost follows the changes, not the document), or `None` if an operation's
/// object cannot be placed (then a caller falls back to a diff).
pub fn records_touched_since(
    doc: &mut AutoCommit,
    since: &[automerge::ChangeHash],
) -> Option<Vec<String>> {
    let changes = doc.get_changes(since);
    records_touched_by(doc, &changes, |_| true)
}

/// The records that operations of `changes` chosen by `keep` touch (as
/// [`records_touched_since`]).
pub fn records_touched_by(
    doc: &mut AutoCommit,
    changes: &[automerge::Change],
    keep: impl Fn(&automerge::legacy::Op) -> bool,
) -> Option<Vec<String>> {
    use automerge::legacy::{Key, ObjectId};
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    let mut placed: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    // Decoded one at a time: a device catching up receives the whole history at once,
    // and every change expanded together would hold all of its operations in memory.
    for change in changes {
        let change = change.decode();
        for (index, op) in change.operations.iter().enumerate() {
            // An object made in these changes is placed from the op that made it:
            // asking the document where an object lives costs a scan of it.
            let made = matches!(op.action, automerge::legacy::OpType::Make(_)).then(|| {
                automerge::legacy::OpId::new(change.start_op.get() + index as u64, &change.actor_id)
                    .to_string()
            });
            if made.is_none() && !keep(op) {
                continue;
            }
            let id = match (&op.obj, &op.key) {
                (ObjectId::Root, Key::Map(key)) => key.to_string(),
                (ObjectId::Root, Key::Seq(_)) => return None,
                (ObjectId::Id(opid), _) => {
                    let name = opid.to_string();
                    if let Some(id) = placed.get(&name) {
                        id.clone()
                    } else {
                        let obj = doc.import_obj(&name).ok()?;
                        let parents = doc.parents(&obj).ok()?;
                        let top = parents.last()?;
                        let Prop::Map(id) = top.prop else {
                            return None;
                        };
                        placed.insert(name, id.clone());
                        id
                    }
                }
            };
            if let Some(made) = made {
                placed.insert(made, id.clone());
            }
            if keep(op) && seen.insert(id.clone()) {
                ids.push(id);
            }
        }
    }
    Some(ids)
}

/// Whether record `id` holds something a person must decide: fields edited apart
/// ([`record_conflicts`]) or several versions ([`record_versions`]). Looks further
/// than one pass over the record's fields only where Automerge holds several values.
pub fn in_conflict(doc: &AutoCommit, id: &str) -> Result<bool, AutomergeError> {
    let values = doc.get_all(ROOT, id)?;
    if values.len() > 1 {
        return Ok(!record_versions(doc, id)?.is_empty() || !record_conflicts(doc, id)?.is_empty());
    }
    let Some((Value::Object(ObjType::Map), obj)) = values.into_iter().next() else {
        return Ok(false);
    };
    let several: Vec<String> = doc
        .map_range(&obj, ..)
        .filter(|item| item.conflict)
        .map(|item| item.key.into_owned())
        .collect();
    for key in several {
        if field_conflict(doc, &obj, &key)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fields of record `id` that concurrent edits left in conflict: for each, every
/// competing value (the first is the one `read_record` shows, Automerge's
/// deterministic winner). Empty when there is no conflict or no record.
pub fn record_conflicts(doc: &AutoCommit, id: &str) -> Result<Map<String, Json>, AutomergeError> {
    match doc.get(ROOT, id)? {
        Some((Value::Object(ObjType::Map), obj)) => object_conflicts(doc, &obj),
        _ => Ok(Map::new()),
    }
}

/// The fields in conflict of record object `obj`, as [`record_conflicts`] lists them:
/// one pass over the object, a lookup only for a field that holds several values.
pub fn object_conflicts(
    doc: &AutoCommit,
    obj: &ObjId,
) -> Result<Map<String, Json>, AutomergeError> {
    let several: Vec<String> = doc
        .map_range(obj, ..)
        .filter(|item| item.conflict)
        .map(|item| item.key.into_owned())
        .collect();
    let mut out = Map::new();
    for key in several {
        if let Some(values) = field_conflict(doc, obj, &key)? {
            out.insert(key, values);
        }
    }
    Ok(out)
}

/// Every competing value of field `key` of record object `obj`, the shown one first, if
/// concurrent edits left it in conflict.
fn field_conflict(
    doc: &AutoCommit,
    obj: &ObjId,
    key: &str,
) -> Result<Option<Json>, AutomergeError> {
    let values = doc.get_all(obj, key)?;
    // Equal texts left by two devices merging at once (`textmerge`) are no
    // conflict; texts that differ still are a person's to see.
    let equal_texts = values
        .iter()
        .all(|(v, _)| matches!(v, Value::Object(ObjType::Text)))
        && values
            .iter()
            .map(|(_, obj)| doc.text(obj).unwrap_or_default())
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 1;
    if values.len() < 2 || equal_texts {
        return Ok(None);
    }
    let mut all = Vec::with_capacity(values.len());
    for (value, child) in values.into_iter().rev() {
        all.push(read_value(doc, value, &child, At::Now)?);
    }
    Ok(Some(Json::Array(all)))
}

/// Record object `obj` as [`read_record`] reads it and its fields in conflict as
/// [`record_conflicts`] lists them, in one pass over the record: a lookup only for a
/// field in conflict (what reading every record of a large document needs).
pub fn read_object_and_conflicts(
    doc: &AutoCommit,
    obj: &ObjId,
) -> Result<(Record, Map<String, Json>), AutomergeError> {
    let mut record = Map::new();
    let mut in_conflict = Vec::new();
    for item in doc.map_range(obj, ..) {
        let json = item_json(doc, item.value.clone(), || item.id(), At::Now)?;
        if item.conflict {
            in_conflict.push(item.key.to_string());
        }
        record.insert(item.key.into_owned(), json);
    }
    let mut conflicts = Map::new();
    for key in in_conflict {
        if let Some(values) = field_conflict(doc, obj, &key)? {
            conflicts.insert(key, values);
        }
    }
    Ok((record, conflicts))
}

/// The whole versions of record `id` when devices apart each created it (the same id
/// made twice): every distinct version, the one `read_record` shows first. Empty when
/// the id holds one version (or copies of one, which two devices restoring the same
/// record at once leave: see [`collapse_copies`]).
pub fn record_versions(
    doc: &AutoCommit,
    id: &str,
) -> Result<Vec<Map<String, Json>>, AutomergeError> {
    let values = doc.get_all(ROOT, id)?;
    if values.len() < 2 {
        return Ok(Vec::new());
    }
    let mut versions: Vec<Map<String, Json>> = Vec::with_capacity(values.len());
    // `get_all` lists the winner last.
    for (value, obj) in values.into_iter().rev() {
        if matches!(value, Value::Object(ObjType::Map)) {
            let version = read_map(doc, &obj, At::Now)?;
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
    }
    if versions.len() < 2 {
        versions.clear();
    }
    Ok(versions)
}

/// If record `id` holds several versions that read the same (two devices restored the
/// same record at once), makes it one object holding them, so a write that follows
/// lands in the only version rather than in one of several: otherwise the copies would
/// differ after it and show as versions a person must choose between. Versions that
/// differ are left alone (a person chooses, [`keep_version`]).
fn collapse_copies(doc: &mut AutoCommit, id: &str) -> Result<(), AutomergeError> {
    let values = doc.get_all(ROOT, id)?;
    if values.len() < 2
        || !values
            .iter()
            .all(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
    {
        return Ok(());
    }
    let mut first = None;
    for (_, obj) in &values {
        let version = read_map(doc, obj, At::Now)?;
        match &first {
            None => first = Some(version),
            Some(seen) if *seen == version => {}
            Some(_) => return Ok(()),
        }
    }
    let version = first.expect("two values or more");
    put_map(doc, &ROOT, id.into(), &version).map(drop)
}

/// The map of record `id` a write lands in, or `None` if the id holds none — with
/// copies that read the same made one first ([`collapse_copies`]). One lookup in the
/// usual case (a new record, or one version): a write into a large collection is a few
/// seeks, and each counts.
fn record_for_write(doc: &mut AutoCommit, id: &str) -> Result<Option<ObjId>, AutomergeError> {
    let (versions, only_map) = {
        let values = doc.get_all(ROOT, id)?;
        let only_map = match values.as_slice() {
            [(Value::Object(ObjType::Map), obj)] => Some(obj.clone()),
            _ => None,
        };
        (values.len(), only_map)
    };
    if versions < 2 {
        return Ok(only_map);
    }
    collapse_copies(doc, id)?;
    Ok(match doc.get(ROOT, id)? {
        Some((Value::Object(ObjType::Map), obj)) => Some(obj),
        _ => None,
    })
}

/// Makes version `index` (as [`record_versions`] lists them) the one version of record
/// `id`: how a person ends a conflict between versions. `Ok(false)` if there is no
/// such version.
pub fn keep_version(doc: &mut AutoCommit, id: &str, index: usize) -> Result<bool, AutomergeError> {
    let versions = record_versions(doc, id)?;
    let Some(version) = versions.get(index) else {
        return Ok(false);
    };
    replace_record(doc, id, version)?;
    Ok(true)
}

/// Writes `record` as the one version of record `id`, in place of every version it
/// holds (a merge a person made of versions in conflict).
pub fn replace_record(
    doc: &mut AutoCommit,
    id: &str,
    record: &Map<String, Json>,
) -> Result<(), AutomergeError> {
    put_map(doc, &ROOT, id.into(), record).map(drop)
}

/// The ids of all records, sorted.
pub fn record_ids(doc: &AutoCommit) -> Vec<String> {
    doc.keys(ROOT).collect()
}

/// Makes record `id` equal to `record`. Returns whether it was created.
pub fn put_record(
    doc: &mut AutoCommit,
    id: &str,
    record: &Map<String, Json>,
) -> Result<bool, AutomergeError> {
    match record_for_write(doc, id)? {
        Some(obj) => {
            reconcile_map(doc, &obj, record)?;
            Ok(false)
        }
        None => {
            put_map(doc, &ROOT, id.into(), record)?;
            Ok(true)
        }
    }
}

/// One splice of a text field: at character `position`, delete `delete` characters,
/// then insert `insert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEdit {
    pub position: usize,
    pub delete: usize,
    pub insert: String,
}

/// Why a text edit could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TextEditError {
    #[error("field {0} holds a {1}, not text")]
    NotText(String, &'static str),
    #[error(
        "edit {index} is out of range: position {position} + delete {delete} > length {length}"
    )]
    OutOfRange {
        index: usize,
        position: usize,
        delete: usize,
        length: usize,
    },
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
}

/// Applies `edits` in order to text field `field` of record `id`, as collaborative
/// text (concurrent edits from other devices merge character by character). A string
/// field becomes text holding the same characters; a missing field starts empty.
/// Returns `false` if there is no such record.
pub fn edit_text(
    doc: &mut AutoCommit,
    id: &str,
    field: &str,
    edits: &[TextEdit],
) -> Result<bool, TextEditError> {
    let Some(record) = record_for_write(doc, id)? else {
        return Ok(false);
    };
    let text = match doc.get(&record, field)?.map(|(v, id)| (v.into_owned(), id)) {
        Some((Value::Object(ObjType::Text), text)) => text,
        Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Str(_)) => {
            let ScalarValue::Str(current) = s.as_ref() else {
                unreachable!("matched a string just above")
            };
            let current = current.to_string();
            // Tried first on a scratch text: a refused edit must leave the field as it
            // was, and the conversion below is committed before the edits.
            try_edits(&current, edits)?;
            let text = doc.put_object(&record, field, ObjType::Text)?;
            doc.splice_text(&text, 0, 0, &current)?;
            // The conversion is a change of its own: if another device converts the
            // same string while apart, the merge (`textmerge`) finds what both
            // started from in it.
            doc.commit();
            text
        }
        None => {
            try_edits("", edits)?;
            let text = doc.put_object(&record, field, ObjType::Text)?;
            doc.commit();
            text
        }
        Some((other, _)) => {
            let kind = match other {
                Value::Object(ObjType::Map | ObjType::Table) => "object",
                Value::Object(ObjType::List) => "list",
                _ => "value that is not a string",
            };
            return Err(TextEditError::NotText(field.to_owned(), kind));
        }
    };
    apply_edits(doc, &text, edits)?;
    Ok(true)
}

/// Applies `edits` in order to a text object, each checked against the length it meets.
fn apply_edits(
    doc: &mut AutoCommit,
    text: &ObjId,
    edits: &[TextEdit],
) -> Result<(), TextEditError> {
    let mut length = doc.length(text);
    for (index, edit) in edits.iter().enumerate() {
        if edit
            .position
            .checked_add(edit.delete)
            .is_none_or(|end| end > length)
        {
            return Err(TextEditError::OutOfRange {
                index,
                position: edit.position,
                delete: edit.delete,
                length,
            });
        }
        let delete = isize::try_from(edit.delete).expect("checked against the text's length");
        doc.splice_text(text, edit.position, delete, &edit.insert)?;
        length = doc.length(text);
    }
    Ok(())
}

/// Checks `edits` against the lengths a text holding `current` would have as they
/// apply, as [`apply_edits`] does: an error says what a real application would refuse,
/// before anything is written. Lengths are counted in Unicode code points, as
/// Automerge counts text (its default `TextEncoding::UnicodeCodePoint`; a test holds
/// the two in step). Arithmetic only: applying the edits twice doubled the cost of a
/// first edit of a long trace.
fn try_edits(current: &str, edits: &[TextEdit]) -> Result<(), TextEditError> {
    let mut length = current.chars().count();
    for (index, edit) in edits.iter().enumerate() {
        match edit.position.checked_add(edit.delete) {
            Some(end) if end <= length => {
                length = length - edit.delete + edit.insert.chars().count();
            }
            _ => {
                return Err(TextEditError::OutOfRange {
                    index,
                    position: edit.position,
                    delete: edit.delete,
                    length,
                });
            }
        }
    }
    Ok(())
}

/// Applies a JSON Merge Patch (RFC 7396) to record `id`. Returns `false` if there is
/// no such record.
pub fn patch_record(
    doc: &mut AutoCommit,
    id: &str,
    patch: &Map<String, Json>,
) -> Result<bool, AutomergeError> {
    match record_for_write(doc, id)? {
        Some(obj) => {
            merge_patch(doc, &obj, patch)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Writes `value` (`null`: removes it) into field `field` of record `id` even when it
/// equals what is shown, which ends a conflict on that field: how a person chooses
/// between competing values. (Ordinary writes leave equal values alone, so that a
/// field they did not change cannot win a merge it took no part in.) Returns `false`
/// if there is no such record.
pub fn choose(
    doc: &mut AutoCommit,
    id: &str,
    field: &str,
    value: &Json,
) -> Result<bool, AutomergeError> {
    let Some(obj) = record_for_write(doc, id)? else {
        return Ok(false);
    };
    match value {
        Json::Null => {
            if doc.get(&obj, field)?.is_some() {
                doc.delete(&obj, field)?;
            }
        }
        value => put_new(doc, &obj, field.into(), value)?,
    }
    Ok(true)
}

/// Deletes record `id`. Returns whether it existed.
pub fn remove_record(doc: &mut AutoCommit, id: &str) -> Result<bool, AutomergeError> {
    if doc.get(ROOT, id)?.is_none() {
        return Ok(false);
    }
    doc.delete(ROOT, id)?;
    Ok(true)
}

/// Where a read looks: the document as it is, or as it was at some heads.
#[derive(Clone, Copy)]
enum At<'h> {
    Now,
    Heads(&'h [ChangeHash]),
}

/// One pass over the map's keys and winning values: a lookup per key (`keys`, then
/// `get` each) costs a seek into the document per field, and was most of a write's
/// time in a large collection (the record is read before every write).
fn read_map(
    doc: &AutoCommit,
    obj: &ObjId,
    at: At<'_>,
) -> Result<Map<String, Json>, AutomergeError> {
    let items = match at {
        At::Now => doc.map_range(obj, ..),
        At::Heads(heads) => doc.map_range_at(obj, .., heads),
    };
    let mut out = Map::new();
    for item in items {
        let json = item_json(doc, item.value.clone(), || item.id(), at)?;
        out.insert(item.key.into_owned(), json);
    }
    Ok(out)
}

/// A map's or list's item as JSON: an object read whole (its id is made only then:
/// a scalar's is not needed).
fn item_json(
    doc: &AutoCommit,
    value: ValueRef<'_>,
    id: impl FnOnce() -> ObjId,
    at: At<'_>,
) -> Result<Json, AutomergeError> {
    match value {
        ValueRef::Object(kind) => read_object(doc, kind, &id(), at),
        scalar @ ValueRef::Scalar(_) => read_value(doc, scalar.into_value(), &ROOT, at),
    }
}

/// A value as JSON; `obj` is the value's own id when it is an object (unused for a
/// scalar).
fn read_value(
    doc: &AutoCommit,
    value: Value<'_>,
    obj: &ObjId,
    at: At<'_>,
) -> Result<Json, AutomergeError> {
    match value {
        Value::Object(kind) => read_object(doc, kind, obj, at),
        Value::Scalar(scalar) => Ok(scalar_to_json(&scalar)),
    }
}

fn read_object(
    doc: &AutoCommit,
    kind: ObjType,
    obj: &ObjId,
    at: At<'_>,
) -> Result<Json, AutomergeError> {
    Ok(match kind {
        ObjType::Map | ObjType::Table => Json::Object(read_map(doc, obj, at)?),
        ObjType::List => {
            let items = match at {
                At::Now => doc.list_range(obj, ..),
                At::Heads(heads) => doc.list_range_at(obj, .., heads),
            };
            let mut out = Vec::new();
            for item in items {
                out.push(item_json(doc, item.value.clone(), || item.id(), at)?);
            }
            Json::Array(out)
        }
        ObjType::Text => Json::String(match at {
            At::Now => doc.text(obj)?,
            At::Heads(heads) => doc.text_at(obj, heads)?,
        }),
    })
}

fn scalar_to_json(scalar: &ScalarValue) -> Json {
    match scalar {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::Number((*i).into()),
        ScalarValue::Uint(u) => Json::Number((*u).into()),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::Number(i64::from(c).into()),
        ScalarValue::Timestamp(t) => Json::Number((*t).into()),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Null => Json::Null,
        ScalarValue::Bytes(bytes) => Json::String(data_encoding::BASE64.encode(bytes)),
        ScalarValue::Unknown { .. } => Json::Null,
    }
}

/// The scalar for a JSON value that is not an object or array.
fn json_to_scalar(value: &Json) -> ScalarValue {
    match value {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Array(_) | Json::Object(_) => unreachable!("callers pass only scalars"),
    }
}

/// Puts `map` at `prop` of `obj` as a new map, nested values included, in one batch:
/// two splices of the document's op set however many fields it holds, where a put per
/// field seeks the op set once each (a new message of ~20 values spent most of an
/// import's time there).
fn put_map(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    map: &Map<String, Json>,
) -> Result<ObjId, AutomergeError> {
    doc.batch_create_object(obj, prop, &hydrate_map(map), false)
}

/// Puts `value` at `prop` of `obj` as a fresh value (nested values in one batch, as
/// [`put_map`]).
fn put_new(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    value: &Json,
) -> Result<(), AutomergeError> {
    match value {
        Json::Object(_) | Json::Array(_) => doc
            .batch_create_object(obj, prop, &json_to_hydrate(value), false)
            .map(drop),
        scalar => doc.put(obj, prop, json_to_scalar(scalar)),
    }
}

fn hydrate_map(map: &Map<String, Json>) -> automerge::hydrate::Value {
    automerge::hydrate::Value::Map(automerge::hydrate::Map::from(
        map.iter()
            .map(|(k, v)| (k.clone(), json_to_hydrate(v)))
            .collect::<std::collections::HashMap<_, _>>(),
    ))
}

/// A JSON value as Automerge's plain (hydrated) value, to insert in one go.
fn json_to_hydrate(value: &Json) -> automerge::hydrate::Value {
    use automerge::hydrate;
    match value {
        Json::Object(map) => hydrate_map(map),
        Json::Array(items) => hydrate::Value::List(hydrate::List::from(
            items.iter().map(json_to_hydrate).collect::<Vec<_>>(),
        )),
        scalar => hydrate::Value::Scalar(json_to_scalar(scalar)),
    }
}

/// Makes the map `obj` equal to `map`, touching only what differs.
fn reconcile_map(
    doc: &mut AutoCommit,
    obj: &ObjId,
    map: &Map<String, Json>,
) -> Result<(), AutomergeError> {
    let stale: Vec<String> = doc.keys(obj).filter(|k| !map.contains_key(k)).collect();
    for key in stale {
        doc.delete(obj, key.as_str())?;
    }
    for (key, value) in map {
        set_value(doc, obj, key, value)?;
    }
    Ok(())
}

/// Sets field `key` of map `obj` to `value`, recursing into maps and leaving equal
/// scalars alone (an unchanged field must not win a merge it did not take part in).
fn set_value(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: &Json,
) -> Result<(), AutomergeError> {
    let existing = doc.get(obj, key)?.map(|(v, id)| (v.into_owned(), id));
    match (value, existing) {
        (Json::Object(map), Some((Value::Object(ObjType::Map), child))) => {
            reconcile_map(doc, &child, map)
        }
        (Json::Array(_) | Json::Object(_), _) => put_new(doc, obj, key.into(), value),
        // Collaborative text stays text: only the characters that differ change.
        (Json::String(s), Some((Value::Object(ObjType::Text), text))) => doc.update_text(&text, s),
        (scalar, Some((Value::Scalar(current), _))) if same_scalar(&current, scalar) => Ok(()),
        (scalar, _) => doc.put(obj, key, json_to_scalar(scalar)),
    }
}

fn same_scalar(current: &ScalarValue, value: &Json) -> bool {
    let wanted = json_to_scalar(value);
    match (current, &wanted) {
        // NaN never comes from JSON; equality on the bits is what "unchanged" means.
        (ScalarValue::F64(a), ScalarValue::F64(b)) => a.to_bits() == b.to_bits(),
        _ => *current == wanted,
    }
}

fn merge_patch(
    doc: &mut AutoCommit,
    obj: &ObjId,
    patch: &Map<String, Json>,
) -> Result<(), AutomergeError> {
    for (key, value) in patch {
        match value {
            Json::Null => {
                if doc.get(obj, key.as_str())?.is_some() {
                    doc.delete(obj, key.as_str())?;
                }
            }
            Json::Object(inner) => match doc
                .get(obj, key.as_str())?
                .map(|(v, id)| (v.into_owned(), id))
            {
                Some((Value::Object(ObjType::Map), child)) => merge_patch(doc, &child, inner)?,
                _ => {
                    let child = doc.put_object(obj, key.as_str(), ObjType::Map)?;
                    merge_patch(doc, &child, inner)?;
                }
            },
            other => set_value(doc, obj, key, other)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    /// A record is long when it, or a text, list or map anywhere in it, is longer than
    /// `LONG`, counted as Automerge counts (characters, items, keys); a long string
    /// scalar is not (a write replacing it carries it whole anyway).
    #[test]
    fn a_record_is_long_when_a_text_list_or_map_in_it_is() {
        let mut doc = AutoCommit::new();
        let long_string = "é".repeat(LONG + 1);
        put_record(&mut doc, "scalar", &obj(json!({"s": long_string}))).unwrap();
        let items: Vec<u32> = (0..=LONG as u32).collect();
        put_record(
            &mut doc,
            "list",
            &obj(json!({"a": {"b": [1, {"c": items}]}})),
        )
        .unwrap();
        let edit = |insert: String| TextEdit {
            position: 0,
            delete: 0,
            insert,
        };
        put_record(&mut doc, "text", &obj(json!({}))).unwrap();
        edit_text(&mut doc, "text", "t", &[edit("é".repeat(LONG))]).unwrap();
        assert!(matches!(
            read_for_index(&doc, "scalar").unwrap(),
            Some(Stored::Record(_))
        ));
        assert_eq!(
            read_for_index(&doc, "list").unwrap(),
            Some(Stored::InDocument)
        );
        let keys = |n: usize| -> Map<String, Json> {
            (0..n).map(|i| (format!("k{i}"), json!(i))).collect()
        };
        put_record(&mut doc, "map", &obj(json!({"names": keys(LONG_MAP)}))).unwrap();
        assert!(matches!(
            read_for_index(&doc, "map").unwrap(),
            Some(Stored::Record(_))
        ));
        put_record(&mut doc, "map", &obj(json!({"names": keys(LONG_MAP + 1)}))).unwrap();
        assert_eq!(
            read_for_index(&doc, "map").unwrap(),
            Some(Stored::InDocument)
        );
        put_record(&mut doc, "wide", &keys(LONG_MAP + 1)).unwrap();
        assert_eq!(
            read_for_index(&doc, "wide").unwrap(),
            Some(Stored::InDocument)
        );
        let mixed = json!({"m": [1, 2, {"x": [3, "s", [4]]}, null, 5.5, [], "t"]});
        put_record(&mut doc, "mixed", &obj(mixed.clone())).unwrap();
        assert_eq!(
            read_for_index(&doc, "mixed").unwrap(),
            Some(Stored::Record(obj(mixed)))
        );
        let Some(list) = read_record(&doc, "list").unwrap() else {
            panic!("the list record reads back");
        };
        assert_eq!(list["a"]["b"][1]["c"], json!(items));
        assert_eq!(read_for_index(&doc, "nope").unwrap(), None);
        // Exactly LONG characters (2 bytes each) stays in the index; one more does not.
        let Some(Stored::Record(record)) = read_for_index(&doc, "text").unwrap() else {
            panic!("a text of LONG characters is indexed");
        };
        assert_eq!(record["t"].as_str().unwrap().chars().count(), LONG);
        edit_text(&mut doc, "text", "t", &[edit("x".into())]).unwrap();
        assert_eq!(
            read_for_index(&doc, "text").unwrap(),
            Some(Stored::InDocument)
        );
    }

    proptest! {
        /// The arithmetic check refuses exactly the edits Automerge's own application
        /// refuses, at the same edit, with the same length (multi-byte text included).
        #[test]
        fn checking_edits_agrees_with_applying_them(
            current in "[a-zé😀]{0,12}",
            edits in proptest::collection::vec((0usize..16, 0usize..6, "[xü🙂]{0,3}"), 0..8),
        ) {
            let edits: Vec<TextEdit> = edits
                .into_iter()
                .map(|(position, delete, insert)| TextEdit { position, delete, insert })
                .collect();
            let mut doc = AutoCommit::new();
            let text = doc.put_object(ROOT, "t", ObjType::Text).unwrap();
            doc.splice_text(&text, 0, 0, &current).unwrap();
            let applied = apply_edits(&mut doc, &text, &edits);
            let checked = try_edits(&current, &edits);
            prop_assert_eq!(format!("{:?}", applied.err()), format!("{:?}", checked.err()));
        }
    }

    #[test]
    fn writing_the_winning_value_of_a_conflict_ends_it() {
        let mut a = AutoCommit::new();
        put_record(&mut a, "r", &obj(json!({"email": "x"}))).unwrap();
        let mut b = a.fork();
        patch_record(&mut a, "r", &obj(json!({"email": "from a"}))).unwrap();
        patch_record(&mut b, "r", &obj(json!({"email": "from b"}))).unwrap();
        a.merge(&mut b).unwrap();
        let Some((_, record)) = a.get(ROOT, "r").unwrap() else {
            panic!("no record")
        };
        assert_eq!(a.get_all(&record, "email").unwrap().len(), 2);
        let winner = read_record(&a, "r").unwrap().unwrap()["email"].clone();
        let mut choice = Map::new();
        choice.insert("email".into(), winner.clone());
        // An ordinary write of the equal value writes nothing, and the conflict stays.
        let heads = a.get_heads();
        patch_record(&mut a, "r", &choice).unwrap();
        assert_eq!(a.get_heads(), heads);
        assert_eq!(a.get_all(&record, "email").unwrap().len(), 2);
        // Choosing it ends the conflict.
        assert!(choose(&mut a, "r", "email", &winner).unwrap());
        assert_eq!(a.get_all(&record, "email").unwrap().len(), 1);
        assert_eq!(read_record(&a, "r").unwrap().unwrap()["email"], winner);
        assert!(!choose(&mut a, "nobody", "email", &winner).unwrap());
    }

    #[test]
    fn put_get_patch_remove() {
        let mut doc = AutoCommit::new();
        let rec = obj(
            json!({"name": "Ada", "age": 36, "tags": ["math", {"x": 1.5}], "addr": {"city": "London"}, "ok": true, "none": null, "neg": -4, "big": u64::MAX}),
        );
        assert!(put_record(&mut doc, "ada", &rec).unwrap());
        assert_eq!(read_record(&doc, "ada").unwrap().unwrap(), rec);
        assert!(!put_record(&mut doc, "ada", &obj(json!({"name": "Ada L."}))).unwrap());
        assert_eq!(
            read_record(&doc, "ada").unwrap().unwrap(),
            obj(json!({"name": "Ada L."}))
        );
        assert!(
            patch_record(
                &mut doc,
                "ada",
                &obj(json!({"addr": {"city": "Paris"}, "name": null, "n": 1}))
            )
            .unwrap()
        );
        assert_eq!(
            read_record(&doc, "ada").unwrap().unwrap(),
            obj(json!({"addr": {"city": "Paris"}, "n": 1}))
        );
        assert!(!patch_record(&mut doc, "nobody", &obj(json!({"a": 1}))).unwrap());
        assert_eq!(record_ids(&doc), vec!["ada".to_string()]);
        assert!(remove_record(&mut doc, "ada").unwrap());
        assert!(!remove_record(&mut doc, "ada").unwrap());
        assert_eq!(read_record(&doc, "ada").unwrap(), None);
    }

    #[test]
    fn unchanged_fields_write_nothing() {
        let mut doc = AutoCommit::new();
        let rec = obj(json!({"a": 1, "b": {"c": "d"}}));
        put_record(&mut doc, "r", &rec).unwrap();
        doc.commit();
        let heads = doc.get_heads();
        put_record(&mut doc, "r", &rec).unwrap();
        doc.commit();
        assert_eq!(doc.get_heads(), heads);
    }

    #[test]
    fn concurrent_edits_of_one_field_keep_a_winner_and_show_the_conflict() {
        let mut a = AutoCommit::new();
        put_record(&mut a, "r", &obj(json!({"city": "London", "n": 1}))).unwrap();
        let mut b = a.fork();
        patch_record(&mut a, "r", &obj(json!({"city": "Paris"}))).unwrap();
        patch_record(&mut b, "r", &obj(json!({"city": "Rome"}))).unwrap();
        a.merge(&mut b).unwrap();
        b.merge(&mut a).unwrap();
        let winner = read_record(&a, "r").unwrap().unwrap()["city"].clone();
        assert_eq!(
            read_record(&b, "r").unwrap().unwrap()["city"],
            winner,
            "deterministic"
        );
        let conflicts = record_conflicts(&a, "r").unwrap();
        let values = conflicts["city"].as_array().unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0], winner, "the first is the one shown");
        assert!(values.contains(&json!("Paris")) && values.contains(&json!("Rome")));
        assert!(!conflicts.contains_key("n"));
        // Writing the field again resolves it.
        patch_record(&mut a, "r", &obj(json!({"city": "Oslo"}))).unwrap();
        assert!(record_conflicts(&a, "r").unwrap().is_empty());
    }

    #[test]
    fn concurrent_edits_to_different_fields_merge() {
        let mut a = AutoCommit::new();
        put_record(&mut a, "r", &obj(json!({"x": 1, "y": 1}))).unwrap();
        let mut b = a.fork();
        put_record(&mut a, "r", &obj(json!({"x": 2, "y": 1}))).unwrap();
        patch_record(&mut b, "r", &obj(json!({"y": 3}))).unwrap();
        a.merge(&mut b).unwrap();
        assert_eq!(
            read_record(&a, "r").unwrap().unwrap(),
            obj(json!({"x": 2, "y": 3}))
        );
    }

    fn json_leaf() -> impl Strategy<Value = Json> {
        prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1e12f64..1e12).prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Json::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Json> {
        json_leaf().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_record() -> impl Strategy<Value = Map<String, Json>> {
        proptest::collection::btree_map("[a-zA-Z0-9_ ]{1,10}", json_value(), 0..8)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn records_round_trip_through_save_and_load(first in json_record(), second in json_record()) {
            let mut doc = AutoCommit::new();
            put_record(&mut doc, "r", &first).unwrap();
            prop_assert_eq!(read_record(&doc, "r").unwrap().unwrap(), first);
            put_record(&mut doc, "r", &second).unwrap();
            let loaded = AutoCommit::load(&doc.save()).unwrap();
            prop_assert_eq!(read_record(&loaded, "r").unwrap().unwrap(), second);
        }

        /// A record read as it was at earlier heads is what it was then, nested maps
        /// and lists included; none before it was written.
        #[test]
        fn a_record_reads_at_earlier_heads_as_it_was(first in json_record(), second in json_record()) {
            let mut doc = AutoCommit::new();
            let empty = doc.get_heads();
            put_record(&mut doc, "r", &first).unwrap();
            let then = doc.get_heads();
            patch_record(&mut doc, "r", &second).unwrap();
            put_record(&mut doc, "other", &second).unwrap();
            prop_assert_eq!(read_record_at(&doc, "r", &then).unwrap().unwrap(), first);
            prop_assert_eq!(read_record_at(&doc, "r", &empty).unwrap(), None);
            let now = doc.get_heads();
            prop_assert_eq!(read_record_at(&doc, "r", &now).unwrap(), read_record(&doc, "r").unwrap());
        }

        #[test]
        fn merge_patch_matches_rfc7396(base in json_record(), patch in json_record()) {
            let mut doc = AutoCommit::new();
            put_record(&mut doc, "r", &base).unwrap();
            patch_record(&mut doc, "r", &patch).unwrap();
            let mut expected = Json::Object(base);
            json_merge_patch(&mut expected, &Json::Object(patch));
            prop_assert_eq!(Json::Object(read_record(&doc, "r").unwrap().unwrap()), expected);
        }
    }

    /// RFC 7396, section 2, as written.
    fn json_merge_patch(target: &mut Json, patch: &Json) {
        if let Json::Object(patch) = patch {
            if !target.is_object() {
                *target = Json::Object(Map::new());
            }
            let map = target.as_object_mut().unwrap();
            for (key, value) in patch {
                if value.is_null() {
                    map.remove(key);
                } else {
                    json_merge_patch(map.entry(key.clone()).or_insert(Json::Null), value);
                }
            }
        } else {
            *target = patch.clone();
        }
    }
}
