//! The door's side of CardDAV/CalDAV: the records of contacts and calendar collections
//! as named resources with strong ETags and sync tokens, for a caller the door
//! admitted. The DAV front end (`crate::dav`) only speaks HTTP and XML; every rule is
//! here and in the scope.
//!
//! What a client sees of a record is its text as the grant reads it: the stored text if
//! the grant reads the text field, else a text written from the fields it may read (with
//! a UID made from the record id if it may not read the UID). Its ETag is a hash of
//! exactly that text. A PUT is turned into a patch: the fields of the new text are
//! compared with the fields of the text the client was served, and only what differs is
//! written, through the same scope check as any service write. A name the client picks
//! becomes the record id when it is a free, valid id; otherwise (an invalid id, or the
//! id of a record the grant's filter hides) the record gets a fresh id and the name is
//! remembered in `_dav`, so a hidden record is never touched or revealed.

use std::collections::HashMap;

use hearth_protocol::scope::{CollectionScope, FieldPath, WriteRefusal, diff_patch};
use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Map, Value, json};

use super::AccessError;
use super::audit::{AuditEvent, Operation};
use super::door::{Caller, Door};
use crate::collections::{CollectionError, Collections, LogPosition, RecordWrite};
use crate::pim::{self, Kind, PimError};

/// The collection that keeps DAV metadata: per collection, its display name, colour,
/// description, and the names clients gave records that are not their ids.
pub const META: &str = "_dav";

const SYNC_PREFIX: &str = "urn:hearth:sync:";

/// A contacts or calendar collection as a DAV client sees it.
#[derive(Debug, Clone)]
pub struct Book {
    pub collection: CollectionName,
    pub kind: Kind,
    /// Whether the grant may write in it at all.
    pub writable: bool,
    pub display_name: Option<String>,
    pub color: Option<String>,
    pub description: Option<String>,
    /// Apple's `calendar-order`: where a client lists the calendar.
    pub order: Option<String>,
    /// The components a calendar takes (`VEVENT,VTODO`), when its client said so at
    /// MKCALENDAR; `None`: every kind.
    pub components: Option<String>,
    /// The sync token (and CTag): the collection's heads. `None` for a grant that may
    /// only ask for free/busy: how often a calendar changes is not its to know.
    pub token: Option<String>,
    /// The grant may only ask this calendar's busy times (free-busy-query): it is
    /// listed, so the service finds it, but shows none of its events.
    pub busy_only: bool,
}

/// One record as a resource.
#[derive(Debug, Clone)]
pub struct Object {
    /// The last segment of its URL.
    pub name: String,
    /// A strong ETag, quoted.
    pub etag: String,
    /// Its vCard or iCalendar text, as the grant reads it.
    pub text: String,
}

/// `If-Match` / `If-None-Match: *` of a request.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    pub if_match: Option<String>,
    pub if_none_match_any: bool,
}

/// What changed since a sync token.
#[derive(Debug, Clone)]
pub struct Changes {
    pub token: String,
    pub changed: Vec<Object>,
    /// Names of resources the client saw that are gone (removed, or no longer matching
    /// the filter).
    pub removed: Vec<String>,
}

/// Properties a client may set on a collection (`None`: leave as is).
#[derive(Debug, Clone, Default)]
pub struct BookProps {
    pub display_name: Option<Option<String>>,
    pub color: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub order: Option<Option<String>>,
    pub components: Option<Option<String>>,
}

/// Whether `scope` lets its grant ask a `kind` collection's busy times.
fn busy(kind: Kind, scope: &CollectionScope) -> bool {
    kind == Kind::Calendar && scope.free_busy
}

fn meta() -> CollectionName {
    CollectionName::parse(META).expect("valid system collection name")
}

fn meta_id(collection: &CollectionName) -> RecordId {
    RecordId::parse(collection.as_str()).expect("a collection name is a valid record id")
}

/// The `_dav` record listing the books clients made, `{"calendar-3f2a…": true}` (`~`
/// is in no collection name): an empty calendar a phone made has no record to make
/// it a collection yet, and must still be listed.
fn uid_record(book: &CollectionName, uid: &str) -> RecordId {
    name_record(book, 'u', uid)
}

fn made_id() -> RecordId {
    RecordId::parse("~made").expect("a valid record id")
}

/// The sync token (and CTag) of a place in a collection's change log:
/// `urn:hearth:sync:2-EPOCH-SEQ`, the epoch in 16 hex digits, the entry's number in
/// decimal. (Tokens of Hearth before the change log named the collection's heads.)
pub fn sync_token(at: LogPosition) -> String {
    format!("{SYNC_PREFIX}2-{:016x}-{}", at.epoch, at.seq)
}

pub(crate) fn parse_token(token: &str) -> Result<LogPosition, AccessError> {
    let bad =
        || AccessError::InvalidSyncToken(format!("{token:.80} is not a sync token of Hearth"));
    let body = token.trim().strip_prefix(SYNC_PREFIX).ok_or_else(bad)?;
    let Some(body) = body.strip_prefix("2-") else {
        // A token of Hearth before the change log (heads): the client syncs anew.
        return Err(AccessError::InvalidSyncToken(
            "the sync token is from an older Hearth; sync again".into(),
        ));
    };
    let (epoch, seq) = body.split_once('-').ok_or_else(bad)?;
    // One way to write each: 16 lowercase hex digits, decimal without leading zeros.
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if epoch.len() != 16 || !epoch.chars().all(hex) {
        return Err(bad());
    }
    if seq.is_empty()
        || !seq.chars().all(|c| c.is_ascii_digit())
        || (seq.len() > 1 && seq.starts_with('0'))
    {
        return Err(bad());
    }
    Ok(LogPosition {
        epoch: u64::from_str_radix(epoch, 16).map_err(|_| bad())?,
        seq: seq.parse().map_err(|_| bad())?,
    })
}

fn etag_of(text: &str) -> String {
    let hash = blake3::hash(text.as_bytes());
    format!("\"{}\"", &hash.to_hex()[..32])
}

/// The DAV metadata of a collection.
#[derive(Debug, Clone)]
struct Meta {
    display_name: Option<String>,
    color: Option<String>,
    order: Option<String>,
    components: Option<String>,
    description: Option<String>,
    made: bool,
    names: Names,
}

impl Meta {
    fn from_record(book: &CollectionName, record: Option<Value>) -> Meta {
        let r = match record {
            Some(Value::Object(r)) => r,
            _ => Map::new(),
        };
        let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
        let legacy: HashMap<String, String> = r
            .get("names")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Meta {
            display_name: text("display_name"),
            color: text("color"),
            order: text("order"),
            components: text("components"),
            description: text("description"),
            made: r.get("made").and_then(Value::as_bool).unwrap_or(false),
            names: Names {
                book: book.clone(),
                any: r.get("named").and_then(Value::as_bool).unwrap_or(false),
                legacy_reverse: legacy
                    .iter()
                    .map(|(n, id)| (id.clone(), n.clone()))
                    .collect(),
                legacy,
            },
        }
    }
}

/// The names clients gave records of one book that are not their ids.
///
/// Each name is two small records in `_dav`, both `{"book", "name", "id"}`: one found
/// from the name (`<book>.n.<hash>`), one from the id (`<book>.i.<hash>`). A PUT or a
/// lookup reads and writes those, never a list of all the book's names (which made
/// each upload of a client-named card cost as much as the names before it). The one
/// found from the name decides: a record is shown under a name only while that name
/// still stands for it, so a pair left half-changed by a conflict or a crash shows the
/// record under its id instead of under two names.
#[derive(Debug, Clone)]
struct Names {
    book: CollectionName,
    /// Whether the book has ever had such a name (`named` in its metadata): a book
    /// without one is listed without a lookup per record.
    any: bool,
    /// The single map of names (`names` in the metadata) that versions before per-name
    /// records wrote. Moved to per-name records when the node starts, and still read:
    /// a device of such a version may sync more in.
    legacy: HashMap<String, String>,
    legacy_reverse: HashMap<String, String>,
}

/// How many times a record's name moves aside (see [`Names::name_of`]).
const MAX_ASIDE: usize = 8;

/// The id of the `_dav` record that finds a name (`n`) or an id (`i`) of a book.
fn name_record(book: &CollectionName, side: char, key: &str) -> RecordId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(book.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    let hash = hasher.finalize().to_hex();
    RecordId::parse(&format!("{book}.{side}.{}", &hash[..32]))
        .expect("a collection name, a letter and hex are a valid record id")
}

/// The writes of both records of a name, each holding `{"book", "name", "id"}`.
fn pair_writes(book: &CollectionName, name: &str, id: &str) -> [(RecordId, RecordWrite); 2] {
    let mut record = Map::new();
    record.insert("book".into(), Value::String(book.to_string()));
    record.insert("name".into(), Value::String(name.to_owned()));
    record.insert("id".into(), Value::String(id.to_owned()));
    [
        (
            name_record(book, 'n', name),
            RecordWrite::Put(record.clone()),
        ),
        (name_record(book, 'i', id), RecordWrite::Put(record)),
    ]
}

/// The `(name, id)` a name record holds, if it is one of `book`.
fn name_pair(book: &CollectionName, record: Option<Value>) -> Option<(String, String)> {
    let Some(Value::Object(r)) = record else {
        return None;
    };
    if r.get("book").and_then(Value::as_str) != Some(book.as_str()) {
        return None;
    }
    let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
    Some((text("name")?, text("id")?))
}

impl Names {
    /// The id a client's name stands for, if it stands for one.
    fn id_of(&self, collections: &Collections, name: &str) -> Result<Option<String>, AccessError> {
        if self.any {
            let record = collections.get(&meta(), &name_record(&self.book, 'n', name))?;
            if let Some((n, id)) = name_pair(&self.book, record)
                && n == name
            {
                return Ok(Some(id));
            }
        }
        Ok(self.legacy.get(name).cloned())
    }

    /// The name a client gave record `id`, if one still stands for it.
    fn given(&self, collections: &Collections, id: &str) -> Result<Option<String>, AccessError> {
        if self.any {
            let record = collections.get(&meta(), &name_record(&self.book, 'i', id))?;
            if let Some((name, i)) = name_pair(&self.book, record)
                && i == id
                && self.id_of(collections, &name)?.as_deref() == Some(id)
            {
                return Ok(Some(name));
            }
        }
        Ok(self
            .legacy_reverse
            .get(id)
            .filter(|name| self.legacy.get(*name).map(String::as_str) == Some(id))
            .cloned())
    }

    /// The name record `id` is shown under: the one a client gave it, else `{id}.vcf`
    /// (`{id}.ics`), else — when a client gave that name to another record, which
    /// happens when the client could not see this one — `{id}!.vcf`, `{id}!!.vcf`, …:
    /// no record id has a `!`, and [`Door::resolve`] finds the record from such a name.
    fn name_of(
        &self,
        collections: &Collections,
        kind: Kind,
        id: &str,
    ) -> Result<String, AccessError> {
        if let Some(name) = self.given(collections, id)? {
            return Ok(name);
        }
        let ext = kind.extension();
        let mut name = if id.ends_with(&format!(".{ext}")) {
            id.to_owned()
        } else {
            format!("{id}.{ext}")
        };
        if !self.any && self.legacy.is_empty() {
            return Ok(name);
        }
        // Bounded: each step is a name some client claimed; past the bound two records
        // share a name rather than a listing taking a lookup per claim.
        for aside in 1..=MAX_ASIDE {
            match self.id_of(collections, &name)? {
                Some(other) if other != id => {
                    name = format!("{id}{}.{ext}", "!".repeat(aside));
                }
                _ => break,
            }
        }
        Ok(name)
    }

    /// The writes to `_dav` that make `name` stand for `id`: its two records, the
    /// removal of the id record of what it stood for before, the `named` mark, and the
    /// removal of the name's entry in the old single map.
    fn writes(
        &self,
        collections: &Collections,
        name: &str,
        id: &str,
    ) -> Result<Vec<(RecordId, RecordWrite)>, AccessError> {
        let mut writes = Vec::new();
        let forward = name_record(&self.book, 'n', name);
        let before = name_pair(&self.book, collections.get(&meta(), &forward)?);
        if let Some((_, old)) = &before
            && old != id
        {
            let reverse = name_record(&self.book, 'i', old);
            if name_pair(&self.book, collections.get(&meta(), &reverse)?)
                .is_some_and(|(n, _)| n == name)
            {
                writes.push((reverse, RecordWrite::Remove));
            }
        }
        writes.extend(pair_writes(&self.book, name, id));
        let mut patch = Map::new();
        if !self.any {
            patch.insert("named".into(), Value::Bool(true));
        }
        if self.legacy.contains_key(name) {
            patch.insert("names".into(), json!({ name: null }));
        }
        if !patch.is_empty() {
            let id = meta_id(&self.book);
            let existing = collections.get(&meta(), &id)?;
            let existing = existing.as_ref().and_then(Value::as_object);
            writes.push((id, meta_write(existing, patch)));
        }
        Ok(writes)
    }
}

/// Moves the names that versions before per-name records kept in one map per book
/// into per-name records (see [`Names`]), one change per book. Returns whether it
/// changed anything (then the caller commits).
pub fn move_legacy_names(collections: &Collections) -> Result<bool, CollectionError> {
    let mut moved = false;
    for book in collections.names()? {
        if Kind::of(book.as_str()).is_none() {
            continue;
        }
        let id = meta_id(&book);
        let record = collections.get(&meta(), &id)?;
        if record.as_ref().and_then(|r| r.get("names")).is_none() {
            continue;
        }
        let names = Meta::from_record(&book, record).names;
        let mut writes = Vec::new();
        let mut legacy: Vec<_> = names.legacy.iter().collect();
        legacy.sort();
        for (name, target) in legacy {
            // A name given since (by this version) is newer than the old map's.
            if collections
                .get(&meta(), &name_record(&book, 'n', name))?
                .is_some()
            {
                continue;
            }
            writes.extend(pair_writes(&book, name, target));
        }
        let mut patch = Map::new();
        patch.insert("names".into(), Value::Null);
        if !names.legacy.is_empty() {
            patch.insert("named".into(), Value::Bool(true));
        }
        writes.push((id, RecordWrite::Patch(patch)));
        collections.write_many(&meta(), &writes)?;
        tracing::info!(
            collection = %book,
            names = names.legacy.len(),
            "moved the names DAV clients gave to records into one record each"
        );
        moved = true;
    }
    Ok(moved)
}

/// A change of a collection's DAV metadata (made if it has none yet).
fn meta_write(before: Option<&Map<String, Value>>, patch: Map<String, Value>) -> RecordWrite {
    match before {
        Some(_) => RecordWrite::Patch(patch),
        None => {
            let mut record = Map::new();
            hearth_protocol::scope::merge_patch(&mut record, &patch);
            RecordWrite::Put(record)
        }
    }
}

/// The fields a text says (as this node reads it), for comparing two texts.
pub(super) fn fields_of(kind: Kind, text: &str) -> Result<Map<String, Value>, PimError> {
    Ok(match kind {
        Kind::Contacts => pim::contacts::fields(&pim::contacts::parse(text)?).0,
        Kind::Calendar => pim::calendar::fields(&pim::calendar::parse(text)?),
    })
}

/// Checks that a text is one object of the collection's kind (for a calendar: the
/// components of one UID).
pub(crate) fn check_object(kind: Kind, text: &str) -> Result<(), AccessError> {
    let bad = |why: String| AccessError::BadRequest(why);
    let wanted = match kind {
        Kind::Contacts => "VCARD",
        Kind::Calendar => "VCALENDAR",
    };
    let objects = pim::lines::objects(text, wanted).map_err(|e| bad(e.to_string()))?;
    let [object] = objects.as_slice() else {
        return Err(bad(format!(
            "one resource is one {wanted} object; the body holds {}",
            objects.len()
        )));
    };
    if kind == Kind::Calendar {
        let uids = pim::split_calendar(object).map_err(|e| bad(e.to_string()))?;
        if uids.len() != 1 {
            return Err(bad(format!(
                "one calendar resource holds the components of one UID; this one holds {}",
                uids.len()
            )));
        }
    }
    Ok(())
}

/// What the caller is served of a record (with its `"id"`), or `None` if it may not
/// see it; `name_of` names it from its id.
fn serve(
    kind: Kind,
    scope: &CollectionScope,
    record: &Map<String, Value>,
    name_of: impl FnOnce(&str) -> Result<String, AccessError>,
) -> Result<Option<Object>, AccessError> {
    let Some((id, text)) = served_text(kind, scope, record)? else {
        return Ok(None);
    };
    Ok(Some(Object {
        name: name_of(&id)?,
        etag: etag_of(&text),
        text,
    }))
}

/// The id of a record (with its `"id"`) and the text the caller is served of it, or
/// `None` if it may not see it.
fn served_text(
    kind: Kind,
    scope: &CollectionScope,
    record: &Map<String, Value>,
) -> Result<Option<(String, String)>, AccessError> {
    let Some(mut projected) = scope.project(record) else {
        return Ok(None);
    };
    let id = match projected.remove("id") {
        Some(Value::String(id)) => id,
        _ => return Ok(None),
    };
    let mut text = pim::text_of(kind, &id, &projected).map_err(|e| {
        AccessError::Internal(format!("record {id} cannot be written as text: {e}"))
    })?;
    if kind == Kind::Contacts {
        // A card imported without a UID is given the record's: clients tell cards
        // apart by UID, and one without would change identity with every edit.
        let uid = projected
            .get("uid")
            .and_then(Value::as_str)
            .map_or_else(|| format!("hearth-{id}"), str::to_owned);
        text = pim::contacts::with_uid(text, &uid);
    }
    Ok(Some((id, text)))
}

/// Why a write of a contacts or calendar record did nothing.
pub(super) enum Refusal {
    Precondition,
    Scope(WriteRefusal),
    Unreadable(PimError),
    Access(AccessError),
}

impl From<WriteRefusal> for Refusal {
    fn from(e: WriteRefusal) -> Self {
        Refusal::Scope(e)
    }
}

impl Door {
    fn kind_of(&self, collection: &CollectionName) -> Result<Kind, AccessError> {
        Kind::of(collection.as_str()).ok_or_else(|| AccessError::NotFound {
            collection: collection.to_string(),
            id: String::new(),
        })
    }

    fn meta_of(&self, collection: &CollectionName) -> Result<Meta, AccessError> {
        let record = self.0.collections.get(&meta(), &meta_id(collection))?;
        Ok(Meta::from_record(collection, record))
    }

    /// The contacts (or calendar) collections the caller may read, and the calendars
    /// it may only ask the free/busy of.
    pub fn dav_books(&self, caller: &Caller, kind: Kind) -> Result<Vec<Book>, AccessError> {
        let mut books = Vec::new();
        let mut existing: Vec<String> = self
            .0
            .collections
            .names()?
            .into_iter()
            .map(|n| n.to_string())
            .collect();
        let made = self.made_books()?;
        existing.extend(made.iter().cloned());
        existing.push(pim::default_collection(kind).to_string());
        for (name, scope) in caller.scope.reach(existing.iter().map(String::as_str)) {
            if Kind::of(&name) != Some(kind) || !(scope.read.is_some() || busy(kind, &scope)) {
                continue;
            }
            let collection =
                CollectionName::parse(&name).map_err(|e| AccessError::BadRequest(e.to_string()))?;
            if !self.listed(caller, &collection, Some(&made))? {
                continue;
            }
            books.push(self.book(&collection, kind, &scope)?);
        }
        Ok(books)
    }

    /// One collection the caller may read.
    pub fn dav_book(
        &self,
        caller: &Caller,
        collection: &CollectionName,
    ) -> Result<Book, AccessError> {
        let kind = self.kind_of(collection)?;
        let scope = match caller.scope.collection(collection.as_str()) {
            Some(scope) if busy(kind, &scope) && scope.read.is_none() => scope,
            _ => self.readable(caller, collection.as_str())?,
        };
        self.present(caller, collection)?;
        self.book(collection, kind, &scope)
    }

    /// Refuses a book that is not there for the caller (see [`Door::listed`]) as one
    /// that does not exist.
    fn present(&self, caller: &Caller, collection: &CollectionName) -> Result<(), AccessError> {
        if self.listed(caller, collection, None)? {
            Ok(())
        } else {
            Err(AccessError::NotFound {
                collection: collection.to_string(),
                id: String::new(),
            })
        }
    }

    /// Whether a book the caller reaches is there for it: one its grant names (it may
    /// be filled), the kind's own (`contacts`, `calendar`), or, through a family, one
    /// that holds records or a client made — one removed, or never made, is not.
    /// `made`: the books clients made, if the caller has read them (else read here, and
    /// only when the cheaper answers do not settle it).
    fn listed(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        made: Option<&[String]>,
    ) -> Result<bool, AccessError> {
        let name = collection.as_str();
        if caller.scope.collections.contains_key(name)
            || Kind::of(name).is_some_and(|k| pim::default_collection(k) == *collection)
            || self.0.collections.count(collection)? > 0
        {
            return Ok(true);
        }
        Ok(match made {
            Some(made) => made.iter().any(|m| m == name),
            None => self.made_books()?.iter().any(|m| m == name),
        })
    }

    fn book(
        &self,
        collection: &CollectionName,
        kind: Kind,
        scope: &CollectionScope,
    ) -> Result<Book, AccessError> {
        let meta = self.meta_of(collection)?;
        let busy_only = scope.read.is_none();
        let token = if busy_only {
            None
        } else {
            Some(sync_token(self.0.collections.log_position(collection)?))
        };
        Ok(Book {
            collection: collection.clone(),
            kind,
            writable: scope.write.is_some(),
            display_name: meta.display_name,
            color: meta.color,
            order: meta.order,
            components: meta.components,
            description: meta.description,
            token,
            busy_only,
        })
    }

    /// Every resource of a collection the caller may see and `keep` keeps (PROPFIND:
    /// all; a calendar-query: those its filter admits), with the collection's sync
    /// token. Audited as one read of what is sent.
    pub async fn dav_list(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        keep: impl Fn(&Object) -> bool + Send + 'static,
    ) -> Result<(String, Vec<Object>), AccessError> {
        let kind = self.kind_of(collection)?;
        let scope = self.readable(caller, collection.as_str())?.clone();
        self.present(caller, collection)?;
        let name = collection.clone();
        let grant = caller.grant.clone();
        let (token, objects, event) = self
            .blocking(move |inner| {
                // Read before the records: a change between is sent again, never lost.
                let at = inner.collections.log_position(&name)?;
                let records = inner.collections.records(&name)?;
                let meta =
                    Meta::from_record(&name, inner.collections.get(&meta(), &meta_id(&name))?);
                let name_of = |id: &str| meta.names.name_of(&inner.collections, kind, id);
                let mut objects = Vec::new();
                let mut fields = Vec::new();
                for record in records {
                    let Value::Object(record) = record else {
                        continue;
                    };
                    if let Some(object) = serve(kind, &scope, &record, name_of)?
                        && keep(&object)
                    {
                        fields.extend(scope.field_names(&record));
                        objects.push(object);
                    }
                }
                fields.sort();
                fields.dedup();
                let event = AuditEvent {
                    records: objects.len(),
                    fields,
                    ..grant.event(Operation::Read, name.as_str())
                };
                Ok((sync_token(at), objects, event))
            })
            .await?;
        self.audited(vec![event]).await?;
        Ok((token, objects))
    }

    /// The resources of these names (GET, multiget); `None` for a name that does not
    /// exist or that the caller may not see. Audited with the ids served.
    pub async fn dav_get(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        names: &[String],
    ) -> Result<Vec<(String, Option<Object>)>, AccessError> {
        let kind = self.kind_of(collection)?;
        let scope = self.readable(caller, collection.as_str())?;
        self.present(caller, collection)?;
        let names_of = self.meta_of(collection)?.names;
        let mut out = Vec::with_capacity(names.len());
        let mut ids = Vec::new();
        let mut fields = Vec::new();
        for name in names {
            let mut found = None;
            if let Some(record) = self.resolve(collection, kind, &scope, &names_of, name)?
                && let Some(object) = serve(kind, &scope, &record, |_| Ok(name.clone()))?
            {
                fields.extend(scope.field_names(&record));
                if let Some(Value::String(id)) = record.get("id") {
                    ids.push(id.clone());
                }
                found = Some(object);
            } else {
                self.missed(caller, Operation::Read, collection.as_str(), name);
            }
            out.push((name.clone(), found));
        }
        if !ids.is_empty() {
            fields.sort();
            fields.dedup();
            let event = AuditEvent {
                records: ids.len(),
                fields,
                ids,
                ..caller.grant.event(Operation::Read, collection.as_str())
            };
            self.audited(vec![event]).await?;
        }
        Ok(out)
    }

    /// The record a name stands for, if it exists and the caller may see it (with its
    /// `"id"`).
    fn resolve(
        &self,
        collection: &CollectionName,
        kind: Kind,
        scope: &CollectionScope,
        names: &Names,
        name: &str,
    ) -> Result<Option<Map<String, Value>>, AccessError> {
        let collections = &self.0.collections;
        let mut candidates = Vec::new();
        let given = names.id_of(collections, name)?;
        if let Some(id) = &given {
            candidates.push(id.clone());
        } else {
            candidates.push(name.to_owned());
            let ext = format!(".{}", kind.extension());
            if let Some(stem) = name.strip_suffix(&ext) {
                candidates.push(stem.to_owned());
                // A name moved aside (`{id}!.vcf`): see `Names::name_of`.
                let aside = stem.trim_end_matches('!');
                if aside != stem {
                    candidates.push(aside.to_owned());
                }
            }
        }
        for candidate in candidates {
            let Ok(id) = RecordId::parse(&candidate) else {
                continue;
            };
            if let Some(Value::Object(record)) = collections.get(collection, &id)?
                && scope.project(&record).is_some()
            {
                // A record shown under another name is not this one.
                if given.as_deref() == Some(id.as_str())
                    || names.name_of(collections, kind, id.as_str())? == name
                {
                    return Ok(Some(record));
                }
            }
        }
        Ok(None)
    }

    /// Creates or replaces the resource `name` with `text` (PUT). Returns whether it
    /// was created, and its new ETag.
    pub async fn dav_put(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        name: &str,
        text: &str,
        condition: &Condition,
    ) -> Result<(bool, String), AccessError> {
        let kind = self.kind_of(collection)?;
        let scope = self.writable(caller, collection.as_str())?.clone();
        // A book reached only through a family is there once made (MKCOL, MKCALENDAR)
        // or filled another way: a PUT into one that is not does not make it (RFC 4791
        // §5.3.2: 409), so a client's typo makes no calendar.
        if !self.listed(caller, collection, None)? {
            return Err(AccessError::NoBook(collection.to_string()));
        }
        check_object(kind, text)?;
        let book_meta = self.meta_of(collection)?;
        if kind == Kind::Calendar
            && let Some(allowed) = &book_meta.components
        {
            let main = pim::calendar::main_component_name(text);
            if !main
                .as_deref()
                .is_some_and(|m| allowed.split(',').any(|a| a.eq_ignore_ascii_case(m)))
            {
                return Err(AccessError::UnsupportedComponent(format!(
                    "this calendar takes {allowed}, not {}",
                    main.as_deref().unwrap_or("this object")
                )));
            }
        }
        let new_fields =
            fields_of(kind, text).map_err(|e| AccessError::BadRequest(e.to_string()))?;
        let names = book_meta.names;
        let visible = self.resolve(collection, kind, &scope, &names, name)?;
        // The record the name stands for; a new name becomes the id if it is a valid,
        // free one (taken by a record the caller cannot see counts as not free).
        let (id, remember) = match &visible {
            Some(record) => (
                RecordId::parse(record.get("id").and_then(Value::as_str).unwrap_or_default())
                    .map_err(|e| AccessError::Internal(e.to_string()))?,
                false,
            ),
            None => {
                // `name.vcf` becomes record `name`, shown again as `name.vcf`.
                let ext = format!(".{}", kind.extension());
                let stem = name
                    .strip_suffix(&ext)
                    .filter(|s| !s.ends_with(&ext))
                    .unwrap_or(name);
                let free = |id: &RecordId| -> Result<bool, AccessError> {
                    let collections = &self.0.collections;
                    Ok(collections.get(collection, id)?.is_none()
                        && names.given(collections, id.as_str())?.is_none())
                };
                // Only a grant without a filter may see every record, so only there
                // does "free" say nothing the caller cannot see: through a filter, a
                // new name always gets a fresh id, so that what the PUT answers (the
                // UID made from the id among it) is the same whether or not a hidden
                // record holds the name's id.
                match RecordId::parse(stem) {
                    Ok(id) if stem != name && scope.filter.is_empty() && free(&id)? => (id, false),
                    _ => {
                        let bytes: [u8; 16] = rand::random();
                        (RecordId::from_random(bytes), true)
                    }
                }
            }
        };
        let text_path = FieldPath::parse(kind.text_field()).expect("valid field name");
        let keeps_text = scope.read.as_ref().is_some_and(|r| r.covers(&text_path))
            && scope.write.as_ref().is_some_and(|w| w.covers(&text_path));
        let uid_path = FieldPath::parse("uid").expect("valid field name");
        let reads_uid = scope.read.as_ref().is_some_and(|r| r.covers(&uid_path));
        let writes_uid = scope.write.as_ref().is_some_and(|w| w.covers(&uid_path));
        let fields: Vec<String> = {
            let mut v: Vec<String> = new_fields.keys().cloned().collect();
            v.sort();
            v
        };
        // One UID, one resource (RFC 4791 §5.3.2.1, RFC 6352 §6.3.2.1): a UID another
        // resource the caller sees already has is refused with that resource's name.
        // Only where the grant reads and writes UIDs (elsewhere the UID it was served
        // was made from the id, and the one it sends is not kept).
        let kept_uid = (reads_uid && writes_uid)
            .then(|| new_fields.get("uid").and_then(Value::as_str))
            .flatten()
            .map(str::to_owned);
        if let Some(uid) = &kept_uid
            && let Some(holder) = self.uid_holder(collection, &scope, uid, &id)?
        {
            let name = names.name_of(&self.0.collections, kind, &holder)?;
            return Err(AccessError::UidConflict(name));
        }
        // A new name is claimed before its record is written (see `claim`).
        let (id, remember) = if remember {
            let collections = &self.0.collections;
            let seen = collections.get(&meta(), &name_record(&names.book, 'n', name))?;
            let target = name_pair(&names.book, seen.clone())
                .filter(|(n, _)| n == name)
                .and_then(|(_, target)| RecordId::parse(&target).ok());
            match target {
                // Another PUT of the name wrote its record since the name was looked
                // up: this PUT replaces that record (as if it had come second), and
                // the name stays its. Claiming the name for a new record instead
                // would leave that record without a name, and both PUTs answered
                // "created".
                Some(target) if collections.get(collection, &target)?.is_some() => (target, false),
                // The name stands for a record that does not exist: a PUT of it that
                // did not finish (or a record deleted since). Its id is taken over.
                Some(target) => (self.claim(&names, name, &target, seen).await?, true),
                None => (self.claim(&names, name, &id, seen).await?, true),
            }
        } else {
            (id, false)
        };
        let noted = match self
            .note_blob_names(
                caller,
                collection,
                &id,
                super::blobrefs::named_blobs(&new_fields),
            )
            .await
        {
            Ok(noted) => noted,
            Err(e) => {
                if remember {
                    self.unclaim(&names, collection, name, &id).await;
                }
                return Err(e);
            }
        };
        let (condition, text, name_of) = (condition.clone(), text.to_owned(), collection.clone());
        let written = id.clone();
        // Persisted together with the writes to the collection waiting beside it.
        let decide = move |before: Option<&Map<String, Value>>| {
            let (id, condition, text) = (&written, &condition, text.as_str());
            let with_id = |r: &Map<String, Value>| {
                let mut r = r.clone();
                r.insert("id".into(), Value::String(id.to_string()));
                r
            };
            // The text the client was served, if it could see the record.
            let seen = match before {
                Some(b) => served_text(kind, &scope, &with_id(b))
                    .map_err(Refusal::Access)?
                    .map(|(_, text)| text),
                None => None,
            };
            // A hidden record answers as a missing one: its id was not chosen above.
            if condition.if_none_match_any && seen.is_some() {
                return Err(Refusal::Precondition);
            }
            if let Some(tag) = &condition.if_match {
                let matches = seen
                    .as_ref()
                    .is_some_and(|s| tag == "*" || *tag == etag_of(s));
                if !matches {
                    return Err(Refusal::Precondition);
                }
            }
            if before.is_some() && seen.is_none() {
                // Only possible when the record became hidden since the name was
                // resolved (a concurrent change): answer as for a missing record.
                return Err(Refusal::Precondition);
            }
            let seen_fields = match &seen {
                Some(text) => fields_of(kind, text).map_err(Refusal::Unreadable)?,
                None => Map::new(),
            };
            let mut patch = diff_patch(&seen_fields, &new_fields);
            if (before.is_some() && !reads_uid) || (before.is_none() && !writes_uid) {
                // The UID the client saw was made from the id; the record keeps its own.
                patch.remove("uid");
            }
            if kind == Kind::Contacts {
                // A card served to a grant that reads only one side of a pair (`email`
                // or `emails`) was written from that side: its lines change that side,
                // and `prepare` brings the other into line.
                for (one, many) in pim::contacts::PAIRS {
                    for (unread, other) in [(one, many), (many, one)] {
                        let path = FieldPath::parse(unread).expect("valid field name");
                        if !scope.read.as_ref().is_some_and(|r| r.covers(&path))
                            && patch.contains_key(other)
                        {
                            patch.remove(unread);
                        }
                    }
                }
            }
            if keeps_text
                && before
                    .and_then(|b| b.get(kind.text_field()))
                    .and_then(Value::as_str)
                    != Some(text)
            {
                patch.insert(kind.text_field().to_owned(), Value::String(text.to_owned()));
            }
            let mut after = scope.check_write(name_of.as_str(), before, &patch, true)?;
            pim::prepare(kind, before, &mut after).map_err(Refusal::Unreadable)?;
            super::blobrefs::check_noted(before, &after, noted.as_ref())?;
            if !scope.visible(&after) {
                return Err(Refusal::Scope(WriteRefusal::NoMatchAfter(
                    scope
                        .filter
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                )));
            }
            let served = served_text(kind, &scope, &with_id(&after)).map_err(Refusal::Access)?;
            let etag = served.map(|(_, text)| etag_of(&text)).unwrap_or_default();
            Ok(match before {
                Some(before) => (RecordWrite::Patch(diff_patch(before, &after)), etag),
                None => (RecordWrite::Put(after), etag),
            })
        };
        let outcome = self
            .0
            .collections
            .write_combined(collection, &id, decide)
            .await;
        let (existed, etag) = match outcome {
            Ok(Ok(written)) => written,
            failed => {
                if remember {
                    self.unclaim(&names, collection, name, &id).await;
                }
                return Err(match failed {
                    Err(e) => e.into(),
                    Ok(Err(refusal)) => self.dav_refused(caller, collection, &id, refusal),
                    Ok(Ok(_)) => unreachable!("matched above"),
                });
            }
        };
        if let Some(uid) = kept_uid {
            // Where the UID's resource is, for the next PUT's check (durable with the
            // audit entry's commit; a crash before leaves only that check blind).
            let mut record = Map::new();
            record.insert("id".into(), Value::String(id.to_string()));
            self.write_meta_record(uid_record(collection, &uid), record)
                .await?;
        }
        let event = AuditEvent {
            records: 1,
            fields,
            ids: vec![id.to_string()],
            ..caller.grant.event(
                if existed {
                    Operation::Write
                } else {
                    Operation::Create
                },
                collection.as_str(),
            )
        };
        self.audited(vec![event]).await?;
        Ok((!existed, etag))
    }

    /// Removes the resource `name` (DELETE): the caller must see it and may write all
    /// of its fields.
    pub async fn dav_delete(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        name: &str,
        condition: &Condition,
    ) -> Result<(), AccessError> {
        let kind = self.kind_of(collection)?;
        let scope = self.writable(caller, collection.as_str())?.clone();
        let names = self.meta_of(collection)?.names;
        let Some(record) = self.resolve(collection, kind, &scope, &names, name)? else {
            self.note(
                &caller.grant,
                collection.as_str(),
                Operation::Remove,
                "not_found",
                Some(name),
            );
            return Err(AccessError::NotFound {
                collection: collection.to_string(),
                id: name.to_owned(),
            });
        };
        let id = RecordId::parse(record.get("id").and_then(Value::as_str).unwrap_or_default())
            .map_err(|e| AccessError::Internal(e.to_string()))?;
        let (condition, removed) = (condition.clone(), id.clone());
        // Persisted together with the writes to the collection waiting beside it.
        let decide = move |before: Option<&Map<String, Value>>| {
            let id = &removed;
            if let Some(tag) = &condition.if_match {
                let seen = match before {
                    Some(b) => {
                        let mut b = b.clone();
                        b.insert("id".into(), Value::String(id.to_string()));
                        served_text(kind, &scope, &b).map_err(Refusal::Access)?
                    }
                    None => None,
                };
                if !seen.is_some_and(|(_, text)| tag == "*" || *tag == etag_of(&text)) {
                    return Err(Refusal::Precondition);
                }
            }
            scope.check_delete(before)?;
            Ok((RecordWrite::Remove, ()))
        };
        let outcome = self.0.collections.write_combined(collection, &id, decide);
        if let Err(refusal) = outcome.await? {
            return Err(self.dav_refused(caller, collection, &id, refusal));
        }
        // A client-given name stays: another client's next sync report names the
        // removed resource as it knew it, and a PUT to the name makes a new record.
        let event = AuditEvent {
            records: 1,
            ids: vec![id.to_string()],
            ..caller.grant.event(Operation::Remove, collection.as_str())
        };
        self.audited(vec![event]).await?;
        Ok(())
    }

    /// What changed since `token` (sync-collection, RFC 6578): resources changed or
    /// made, and those the caller saw then and cannot see now. No token: everything.
    pub async fn dav_changes(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        token: Option<&str>,
    ) -> Result<Changes, AccessError> {
        let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
            let (token, changed) = self.dav_list(caller, collection, |_| true).await?;
            return Ok(Changes {
                token,
                changed,
                removed: Vec::new(),
            });
        };
        let kind = self.kind_of(collection)?;
        let scope = self.readable(caller, collection.as_str())?.clone();
        self.present(caller, collection)?;
        let since = parse_token(token)?;
        let name = collection.clone();
        let grant = caller.grant.clone();
        let (changes, events) = self
            .blocking(move |inner| {
                let Some((at, changes)) = inner.collections.changes_after(&name, since)? else {
                    return Err(AccessError::InvalidSyncToken(
                        "the sync token is not from this collection's history, or too old; sync again"
                            .into(),
                    ));
                };
                let names =
                    Meta::from_record(&name, inner.collections.get(&meta(), &meta_id(&name))?)
                        .names;
                let name_of = |id: &str| names.name_of(&inner.collections, kind, id);
                let mut changed = Vec::new();
                let mut removed = Vec::new();
                let mut ids = Vec::new();
                let mut fields = Vec::new();
                for change in changes {
                    let now = match &change.after {
                        Some(after) => serve(kind, &scope, after, name_of)?,
                        None => None,
                    };
                    match now {
                        Some(object) => {
                            if let Some(after) = &change.after {
                                fields.extend(scope.field_names(after));
                            }
                            ids.push(change.id.clone());
                            changed.push(object);
                        }
                        None => {
                            let was_seen = change
                                .before
                                .as_ref()
                                .is_some_and(|b| scope.project(b).is_some());
                            if was_seen {
                                removed.push(name_of(&change.id)?);
                            }
                        }
                    }
                }
                let mut events = Vec::new();
                if !ids.is_empty() {
                    fields.sort();
                    fields.dedup();
                    events.push(AuditEvent {
                        records: ids.len(),
                        fields,
                        ids,
                        ..grant.event(Operation::Read, name.as_str())
                    });
                }
                let changes = Changes {
                    token: sync_token(at),
                    changed,
                    removed,
                };
                Ok((changes, events))
            })
            .await?;
        self.audited(events).await?;
        Ok(changes)
    }

    /// Sets a collection's display name, colour or description (PROPPATCH); with
    /// `make`, first checks that the collection is new (MKCOL, MKCALENDAR). Needs a
    /// grant that may write in the collection.
    pub async fn dav_set_props(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        props: &BookProps,
        // When making the book: the path segment the client made it at.
        make: Option<&str>,
    ) -> Result<(), AccessError> {
        self.kind_of(collection)?;
        // A book's name and colour are everyone's: only a grant that may write the
        // whole collection (every field, no filter) changes them.
        self.whole_writer(caller, collection, "changing the properties of")?;
        let inner = &self.0;
        if make.is_some() {
            let meta = self.meta_of(collection)?;
            if meta.made || inner.collections.count(collection)? > 0 {
                return Err(AccessError::Conflict(format!(
                    "collection {collection} already exists"
                )));
            }
        }
        let mut patch = Map::new();
        let mut fields = Vec::new();
        let mut set = |key: &str, value: &Option<Option<String>>| {
            if let Some(value) = value {
                patch.insert(
                    key.to_owned(),
                    value.clone().map_or(Value::Null, Value::String),
                );
                fields.push(format!("{META}.{key}"));
            }
        };
        set("display_name", &props.display_name);
        set("color", &props.color);
        set("order", &props.order);
        set("components", &props.components);
        set("description", &props.description);
        if make.is_some() {
            patch.insert("made".into(), Value::Bool(true));
        }
        self.write_meta(collection, patch).await?;
        if let Some(segment) = make {
            // The book stays at the address the client made it at (a UUID, upper case
            // and all): its hrefs use that segment, which names this collection again.
            let mut made = Map::new();
            made.insert(
                collection.to_string(),
                if segment == collection.as_str() {
                    Value::Bool(true)
                } else {
                    Value::String(segment.to_owned())
                },
            );
            self.write_meta_record(made_id(), made).await?;
        }
        let event = AuditEvent {
            fields,
            ..caller.grant.event(Operation::Write, collection.as_str())
        };
        self.audited(vec![event]).await?;
        Ok(())
    }

    /// Makes a client's name stand for `id` — unless, since `seen` (the name's record
    /// as it was read), another request made it stand for something else: then the
    /// name is left as it is and the id it stands for now is returned (two PUTs of one
    /// new name make one record). Written before the record it names and durable with
    /// it (with the commit of the request's audit entry): a failure between leaves a
    /// name whose record does not exist, which the next PUT of the name takes over.
    async fn claim(
        &self,
        names: &Names,
        name: &str,
        id: &RecordId,
        seen: Option<Value>,
    ) -> Result<RecordId, AccessError> {
        let (names, name, id) = (names.clone(), name.to_owned(), id.clone());
        self.blocking(move |inner| {
            let writes = names.writes(&inner.collections, &name, id.as_str())?;
            let forward = name_record(&names.book, 'n', &name);
            let claimed = inner.collections.write_many_unless_changed(
                &meta(),
                &forward,
                seen.as_ref(),
                &writes,
            )?;
            match claimed {
                Ok(()) => Ok(id),
                Err(now) => match name_pair(&names.book, now) {
                    Some((n, other)) if n == name => {
                        RecordId::parse(&other).map_err(|e| AccessError::Internal(e.to_string()))
                    }
                    // Taken away meanwhile (a DELETE of that name): the client tries again.
                    _ => Err(AccessError::Conflict(format!(
                        "{name} changed while it was written; nothing was written"
                    ))),
                },
            }
        })
        .await
    }

    /// Takes back a claim of `name` for `id` whose record was not written (its PUT was
    /// refused), if the name still stands for it and no record `id` exists.
    async fn unclaim(&self, names: &Names, collection: &CollectionName, name: &str, id: &RecordId) {
        let (names, collection, name, id) = (
            names.clone(),
            collection.clone(),
            name.to_owned(),
            id.clone(),
        );
        let undone = self
            .blocking(move |inner| {
                let collections = &inner.collections;
                if collections.get(&collection, &id)?.is_some() {
                    return Ok(());
                }
                let forward = name_record(&names.book, 'n', &name);
                let seen = collections.get(&meta(), &forward)?;
                if name_pair(&names.book, seen.clone())
                    .is_none_or(|(n, target)| n != name || target != id.as_str())
                {
                    return Ok(());
                }
                let writes = [
                    (forward.clone(), RecordWrite::Remove),
                    (
                        name_record(&names.book, 'i', id.as_str()),
                        RecordWrite::Remove,
                    ),
                ];
                // Changed meanwhile: the name is another request's now; it stays.
                let _ = collections.write_many_unless_changed(
                    &meta(),
                    &forward,
                    seen.as_ref(),
                    &writes,
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = undone {
            tracing::warn!(error = %e, "could not take back the name of a refused DAV write");
        }
    }

    /// Merges `patch` into what DAV keeps about `collection` (its names and properties).
    async fn write_meta(
        &self,
        collection: &CollectionName,
        patch: Map<String, Value>,
    ) -> Result<(), AccessError> {
        self.write_meta_record(meta_id(collection), patch).await
    }

    async fn write_meta_record(
        &self,
        id: RecordId,
        patch: Map<String, Value>,
    ) -> Result<(), AccessError> {
        let decide = move |before: Option<&Map<String, Value>>| {
            Ok::<_, std::convert::Infallible>((meta_write(before, patch), ()))
        };
        let name = meta();
        let written = self.0.collections.write_combined(&name, &id, decide);
        written.await?.unwrap_or_else(|never| match never {});
        Ok(())
    }

    /// Refuses (audited) a caller that may not write all of `collection`: every field,
    /// no filter. `doing` says what was asked ("changing the properties of").
    fn whole_writer(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        doing: &str,
    ) -> Result<(), AccessError> {
        let scope = self.writable(caller, collection.as_str())?;
        if scope.write != Some(hearth_protocol::scope::Fields::All) || !scope.filter.is_empty() {
            return Err(self.refused(
                &caller.grant,
                collection.as_str(),
                AccessError::OutOfScope(format!(
                    "{doing} {collection} needs a grant that writes all of it (every field, no filter)"
                )),
            ));
        }
        Ok(())
    }

    /// DELETE of a whole address book or calendar (a phone removing a calendar it
    /// made): every record in it, its DAV properties and names, and the collection
    /// from the listings, on every device. Only for a grant that writes all of it;
    /// audited as one removal naming every record.
    pub async fn dav_remove_book(
        &self,
        caller: &Caller,
        collection: &CollectionName,
    ) -> Result<(), AccessError> {
        self.kind_of(collection)?;
        self.whole_writer(caller, collection, "removing")?;
        let name = collection.clone();
        let removed = self
            .blocking(move |inner| {
                let collections = &inner.collections;
                let meta_record = collections.get(&meta(), &meta_id(&name))?;
                let ids: Vec<RecordId> = collections
                    .records(&name)?
                    .iter()
                    .filter_map(|r| r.get("id").and_then(Value::as_str))
                    .filter_map(|id| RecordId::parse(id).ok())
                    .collect();
                if ids.is_empty() && meta_record.is_none() {
                    return Ok(None);
                }
                let writes: Vec<(RecordId, RecordWrite)> = ids
                    .iter()
                    .map(|id| (id.clone(), RecordWrite::Remove))
                    .collect();
                for batch in writes.chunks(1000) {
                    collections.write_many(&name, batch)?;
                }
                if meta_record.is_some() {
                    collections.remove(&meta(), &meta_id(&name))?;
                }
                collections.drop_empty(&name)?;
                Ok(Some(ids))
            })
            .await?;
        let Some(ids) = removed else {
            return Err(AccessError::NotFound {
                collection: collection.to_string(),
                id: String::new(),
            });
        };
        let mut made = Map::new();
        made.insert(collection.to_string(), Value::Null);
        self.write_meta_record(made_id(), made).await?;
        tracing::info!(collection = %collection, records = ids.len(), grant = %caller.grant.id, "a DAV client removed a collection");
        let event = AuditEvent {
            records: ids.len(),
            ids: ids.iter().map(ToString::to_string).collect(),
            ..caller.grant.event(Operation::Remove, collection.as_str())
        };
        self.audited(vec![event]).await?;
        Ok(())
    }

    /// The id of a record of `collection` other than `except` whose UID is `uid`, among
    /// those `scope` lets the caller see (one it cannot see answers as if absent). The
    /// places a UID's record can be, each read once: where an import puts it (the id
    /// made from the UID), where a DAV client named it (`UID.ics` is record `UID`), and
    /// where a DAV PUT last wrote it (the `_dav` record of the UID). A record written
    /// otherwise under another id (the owner's API) is not looked for.
    fn uid_holder(
        &self,
        collection: &CollectionName,
        scope: &CollectionScope,
        uid: &str,
        except: &RecordId,
    ) -> Result<Option<String>, AccessError> {
        let collections = &self.0.collections;
        let mut candidates = vec![pim::id_for_uid(uid)];
        if let Some(Value::Object(r)) = collections.get(&meta(), &uid_record(collection, uid))?
            && let Some(id) = r.get("id").and_then(Value::as_str)
            && let Ok(id) = RecordId::parse(id)
        {
            candidates.push(id);
        }
        for id in candidates {
            if id == *except {
                continue;
            }
            if let Some(Value::Object(record)) = collections.get(collection, &id)?
                && record.get("uid").and_then(Value::as_str) == Some(uid)
                && scope.visible(&record)
            {
                return Ok(Some(id.to_string()));
            }
        }
        Ok(None)
    }

    /// The busy times of `collection` in `[start, end)` (free-busy-query): for a grant
    /// that reads it or may ask for its free/busy. Worked out from each event the
    /// grant's filter admits, whole (busy times are derived, nothing of the event is
    /// sent); audited as a read of those events with the pseudo-field `free-busy`.
    pub async fn dav_free_busy(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        start: i64,
        end: i64,
    ) -> Result<Vec<(i64, i64, bool)>, AccessError> {
        let kind = self.kind_of(collection)?;
        let scope = caller
            .scope
            .collection(collection.as_str())
            .filter(|c| kind == Kind::Calendar && (c.read.is_some() || busy(kind, c)))
            .ok_or_else(|| {
                self.refused(
                    &caller.grant,
                    collection.as_str(),
                    AccessError::OutOfScope(format!(
                        "the grant does not include the free/busy of {collection}"
                    )),
                )
            })?;
        self.present(caller, collection)?;
        let name = collection.clone();
        let (periods, events) = self
            .blocking(move |inner| {
                let mut periods = Vec::new();
                let mut events = 0;
                for record in inner.collections.records(&name)? {
                    let Value::Object(record) = record else {
                        continue;
                    };
                    if !scope.visible(&record) {
                        continue;
                    }
                    let id = record.get("id").and_then(Value::as_str).unwrap_or_default();
                    // The stored text, or one made from the fields of an event written
                    // without it.
                    let Ok(text) = pim::text_of(Kind::Calendar, id, &record) else {
                        continue;
                    };
                    let Ok(ical) = pim::calendar::parse(&text) else {
                        continue;
                    };
                    let busy = pim::calendar::busy(&ical, start, end);
                    if !busy.is_empty() {
                        events += 1;
                        periods.extend(busy);
                    }
                }
                Ok((periods, events))
            })
            .await?;
        let event = AuditEvent {
            records: events,
            fields: vec!["free-busy".into()],
            ..caller.grant.event(Operation::Read, collection.as_str())
        };
        self.audited(vec![event]).await?;
        Ok(periods)
    }

    /// The books DAV clients made (MKCOL / MKCALENDAR), present or not.
    fn made_books(&self) -> Result<Vec<String>, AccessError> {
        Ok(self.dav_made()?.into_iter().map(|(k, _)| k).collect())
    }

    /// The books DAV clients made, each with the path segment it was made at when that
    /// is not its collection's name.
    pub fn dav_made(&self) -> Result<Vec<(String, Option<String>)>, AccessError> {
        Ok(match self.0.collections.get(&meta(), &made_id())? {
            Some(Value::Object(made)) => made
                .into_iter()
                .filter(|(k, _)| k != "id")
                .filter_map(|(k, v)| match v {
                    Value::Bool(true) => Some((k, None)),
                    Value::String(segment) => Some((k, Some(segment))),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    fn dav_refused(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        id: &RecordId,
        refusal: Refusal,
    ) -> AccessError {
        match refusal {
            Refusal::Precondition => AccessError::PreconditionFailed,
            Refusal::Access(e) => e,
            Refusal::Unreadable(e) => AccessError::BadRequest(e.to_string()),
            Refusal::Scope(refusal) => self.write_refused(caller, collection, id, refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ChangeHash;

    #[test]
    fn sync_tokens_round_trip_and_refuse_junk() {
        for at in [
            LogPosition { epoch: 0, seq: 0 },
            LogPosition {
                epoch: u64::MAX,
                seq: u64::MAX,
            },
            LogPosition {
                epoch: 0xabc,
                seq: 42,
            },
        ] {
            assert_eq!(parse_token(&sync_token(at)).unwrap(), at);
        }
        assert_eq!(
            sync_token(LogPosition {
                epoch: 0xabc,
                seq: 42
            }),
            "urn:hearth:sync:2-0000000000000abc-42"
        );
        for junk in [
            "urn:hearth:sync:zz",
            "http://example.org/sync/1",
            "urn:hearth:sync:2-0000000000000abc-042",
            "urn:hearth:sync:2-0000000000000ABC-42",
            "urn:hearth:sync:2-abc-42",
            "urn:hearth:sync:2-0000000000000abc-",
            "urn:hearth:sync:2-0000000000000abc-18446744073709551616",
            "urn:hearth:sync:2-0000000000000abc",
        ] {
            assert!(parse_token(junk).is_err(), "{junk}");
        }
        // A token of an older Hearth (the heads it named) asks for a sync anew.
        let old = format!("urn:hearth:sync:{}", ChangeHash([1; 32]));
        let refused = parse_token(&old).unwrap_err().to_string();
        assert!(refused.contains("older Hearth"), "{refused}");
    }

    fn record(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn names_of(c: &Collections, book: &CollectionName) -> Names {
        Meta::from_record(book, c.get(&meta(), &meta_id(book)).unwrap()).names
    }

    /// A name that is not an id is two small records, each found in one lookup; the
    /// name record decides.
    #[test]
    fn client_names_are_a_record_each_and_the_name_decides() {
        let vault = crate::testutil::TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let book = CollectionName::parse("contacts").unwrap();
        let other = CollectionName::parse("contacts-work").unwrap();
        let apply = |names: &Names, name: &str, id: &str| {
            let writes = names.writes(&c, name, id).unwrap();
            c.write_many(&meta(), &writes).unwrap();
        };
        let names = names_of(&c, &book);
        assert!(!names.any);
        assert_eq!(names.name_of(&c, Kind::Contacts, "r1").unwrap(), "r1.vcf");

        apply(&names, "a@example.org.vcf", "r1");
        let names = names_of(&c, &book);
        assert!(names.any, "the book is marked as having client names");
        assert_eq!(
            names.id_of(&c, "a@example.org.vcf").unwrap().as_deref(),
            Some("r1")
        );
        assert_eq!(
            names.name_of(&c, Kind::Contacts, "r1").unwrap(),
            "a@example.org.vcf"
        );
        assert_eq!(names.name_of(&c, Kind::Contacts, "r2").unwrap(), "r2.vcf");
        // Another book with the same name and id shares nothing with this one.
        assert_eq!(
            names_of(&c, &other).id_of(&c, "a@example.org.vcf").unwrap(),
            None
        );
        // Two records per name, none holding a list of names.
        assert_eq!(c.count(&meta()).unwrap(), 3);
        assert!(
            c.get(&meta(), &meta_id(&book))
                .unwrap()
                .unwrap()
                .get("names")
                .is_none()
        );

        // The name moves to another record: the first one is shown under its id again.
        apply(&names, "a@example.org.vcf", "r2");
        let names = names_of(&c, &book);
        assert_eq!(names.name_of(&c, Kind::Contacts, "r1").unwrap(), "r1.vcf");
        assert_eq!(
            names.name_of(&c, Kind::Contacts, "r2").unwrap(),
            "a@example.org.vcf"
        );
        assert_eq!(
            c.count(&meta()).unwrap(),
            3,
            "r1's record went with the name"
        );

        // A record found from the id that the name no longer backs names nothing (a
        // pair left half-written by a conflict or a crash).
        let stale = record(json!({"book": "contacts", "name": "b@x.vcf", "id": "r3"}));
        c.put(&meta(), &name_record(&book, 'i', "r3"), &stale)
            .unwrap();
        assert_eq!(names.name_of(&c, Kind::Contacts, "r3").unwrap(), "r3.vcf");
        assert_eq!(names.id_of(&c, "b@x.vcf").unwrap(), None);

        // A name given to one record that is another's own name (given by a client that
        // cannot see the other) moves the other aside, once per claim.
        apply(&names, "r5.vcf", "r6");
        let names = names_of(&c, &book);
        assert_eq!(names.name_of(&c, Kind::Contacts, "r6").unwrap(), "r5.vcf");
        assert_eq!(names.name_of(&c, Kind::Contacts, "r5").unwrap(), "r5!.vcf");
        apply(&names, "r5!.vcf", "r7");
        assert_eq!(names.name_of(&c, Kind::Contacts, "r5").unwrap(), "r5!!.vcf");
    }

    /// The single map of names earlier versions kept is moved into per-name records
    /// once, keeping the book's other properties; a name given since wins over the map.
    #[test]
    fn names_in_the_old_single_map_are_moved_once() {
        let vault = crate::testutil::TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let book = CollectionName::parse("calendar").unwrap();
        c.put(
            &book,
            &RecordId::parse("e1").unwrap(),
            &record(json!({"summary": "x"})),
        )
        .unwrap();
        let old = record(json!({
            "display_name": "Home",
            "names": {"e1@google.com.ics": "e1", "e2@google.com.ics": "e2", "late.ics": "e3"}
        }));
        c.put(&meta(), &meta_id(&book), &old).unwrap();
        // Read as it is, before the move: an older device may still write the map.
        let names = names_of(&c, &book);
        assert_eq!(
            names.id_of(&c, "e1@google.com.ics").unwrap().as_deref(),
            Some("e1")
        );
        assert_eq!(
            names.name_of(&c, Kind::Calendar, "e2").unwrap(),
            "e2@google.com.ics"
        );
        // A name this version gave since, in the new form.
        let newer = record(json!({"book": "calendar", "name": "late.ics", "id": "e4"}));
        c.put(&meta(), &name_record(&book, 'n', "late.ics"), &newer)
            .unwrap();

        assert!(move_legacy_names(&c).unwrap());
        let after = c.get(&meta(), &meta_id(&book)).unwrap().unwrap();
        assert!(after.get("names").is_none(), "{after}");
        assert_eq!(after["display_name"], "Home");
        let names = names_of(&c, &book);
        assert!(names.any && names.legacy.is_empty());
        assert_eq!(
            names.id_of(&c, "e1@google.com.ics").unwrap().as_deref(),
            Some("e1")
        );
        assert_eq!(
            names.name_of(&c, Kind::Calendar, "e1").unwrap(),
            "e1@google.com.ics"
        );
        assert_eq!(
            names.name_of(&c, Kind::Calendar, "e2").unwrap(),
            "e2@google.com.ics"
        );
        assert_eq!(names.id_of(&c, "late.ics").unwrap().as_deref(), Some("e4"));
        assert!(!move_legacy_names(&c).unwrap(), "nothing left to move");
    }

    #[test]
    fn etags_are_strong_and_follow_the_text() {
        let a = etag_of("BEGIN:VCARD\r\nEND:VCARD\r\n");
        assert!(a.starts_with('"') && a.ends_with('"') && !a.starts_with("W/"));
        assert_ne!(a, etag_of("BEGIN:VCARD\r\nFN:x\r\nEND:VCARD\r\n"));
    }
}
