//! Grant scopes: what a service may read and change, how a record is projected into
//! its view, and which writes it may make. Pure functions, so the rules are the same
//! wherever they are checked (the node's access door calls them for every front end).
//!
//! A scope lists collections; for each: the fields it may **read** (all, or a set of
//! dotted paths such as `address.city`), the fields it may **write** (separately: a
//! grant may read `name` and change only `note`), and an optional record filter (every
//! `FIELD=VALUE` must match). From the command line:
//! `--read contacts.name,contacts.email,calendar --write contacts.note --where tag=work`.
//!
//! A scope may also name a **family** of collections, `NAME*`: `NAME` and every
//! `NAME-…` collection, present and future (`--read 'calendar*'`): a phone granted
//! `calendar*` may make calendars of its own. Where several keys cover a collection
//! (`calendar*` and `calendar-work`), what it may do there is what any of them allows.
//!
//! The filter bounds writes as it bounds reads: a service changes only records that
//! match before and after its change, creates only records that match, and cannot
//! tell a record the filter hides from one that does not exist
//! ([`WriteRefusal::Hidden`] is answered exactly like a missing record).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::CollectionName;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    #[error(
        "scope {0:?} is invalid: use COLLECTION or COLLECTION.FIELD[.FIELD...], comma-separated"
    )]
    Malformed(String),
    #[error("scope names {0:?}: {1}")]
    Collection(String, String),
    #[error("collection {0} belongs to the system and cannot be granted")]
    System(String),
    #[error(
        "filter {0:?} is invalid: use FIELD=VALUE (VALUE as text, a number, true/false, or a \"quoted string\"), or FIELD^=/FOLDER for a path at or under a folder"
    )]
    Filter(String),
    #[error("the scope grants nothing: give --read, --write or --free-busy")]
    Empty,
    #[error("a token's narrowing is not readable: {0}")]
    Narrowing(String),
}

/// What marks a scope key as a family of collections (`calendar*`).
pub const FAMILY: char = '*';

/// One key of a scope: a collection, or a family of collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    One(&'a str),
    /// The base name: `calendar` for `calendar*`.
    Family(&'a str),
}

impl<'a> Key<'a> {
    pub fn of(key: &'a str) -> Self {
        match key.strip_suffix(FAMILY) {
            Some(base) => Key::Family(base),
            None => Key::One(key),
        }
    }

    /// Whether collection `name` falls under this key.
    pub fn covers(self, name: &str) -> bool {
        match self {
            Key::One(one) => one == name,
            Key::Family(base) => in_family(base, name),
        }
    }

    /// The key that covers exactly what both cover, if anything: families nest or lie
    /// apart, so it is always one of the two.
    fn meet(self, other: Key<'_>) -> Option<String> {
        match (self, other) {
            (Key::One(a), Key::One(b)) => (a == b).then(|| a.to_owned()),
            (Key::Family(base), Key::One(one)) | (Key::One(one), Key::Family(base)) => {
                in_family(base, one).then(|| one.to_owned())
            }
            (Key::Family(a), Key::Family(b)) => {
                if in_family(a, b) {
                    Some(format!("{b}{FAMILY}"))
                } else if in_family(b, a) {
                    Some(format!("{a}{FAMILY}"))
                } else {
                    None
                }
            }
        }
    }

    /// In plain words, for grant lists and consent: `calendar, and every calendar-…
    /// collection (also ones made later)`.
    pub fn describe(self) -> String {
        match self {
            Key::One(one) => one.to_owned(),
            Key::Family(base) => {
                format!("{base} and every {base}-… collection (also ones made later)")
            }
        }
    }
}

/// Whether `name` is `base` or a `base-…` collection.
pub fn in_family(base: &str, name: &str) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| !rest.is_empty())
}

/// Checks a scope key as a grant or a narrowing may name it: a collection that is not
/// the system's, or such a name followed by `*`.
fn check_key(key: &str) -> Result<(), String> {
    let base = key.strip_suffix(FAMILY).unwrap_or(key);
    let name = CollectionName::parse(base).map_err(|e| e.to_string())?;
    if name.is_system() {
        return Err(format!(
            "collection {name} belongs to the system and cannot be granted"
        ));
    }
    Ok(())
}

/// A dotted path to a field, e.g. `address.city`. Never empty, never `id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FieldPath(Vec<String>);

/// In JSON a field path is its text: `address.city`.
impl utoipa::PartialSchema for FieldPath {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <String as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for FieldPath {}

impl FieldPath {
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        let valid = parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 128
                && p.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        });
        (valid && parts.len() <= 16 && path != "id").then_some(Self(parts))
    }

    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn within(&self, other: &FieldPath) -> bool {
        self.0.starts_with(&other.0)
    }

    fn from_parts(parts: &[String]) -> Self {
        Self(parts.to_vec())
    }
}

impl TryFrom<String> for FieldPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        FieldPath::parse(&s).ok_or_else(|| format!("invalid field path {s:?}"))
    }
}

impl From<FieldPath> for String {
    fn from(p: FieldPath) -> String {
        p.0.join(".")
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Which fields of a record are granted (for reading, or for writing).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fields {
    All,
    Only(BTreeSet<FieldPath>),
}

impl Fields {
    /// Whether the field at `path` (or all of it) is granted.
    pub fn covers(&self, path: &FieldPath) -> bool {
        match self {
            Fields::All => true,
            Fields::Only(set) => set.iter().any(|granted| path.within(granted)),
        }
    }

    /// The fields both grant: a path is in the result exactly when both cover it.
    pub fn intersect(&self, other: &Fields) -> Fields {
        match (self, other) {
            (Fields::All, x) | (x, Fields::All) => x.clone(),
            (Fields::Only(a), Fields::Only(b)) => Fields::Only(
                a.iter()
                    .filter(|p| other.covers(p))
                    .chain(b.iter().filter(|p| self.covers(p)))
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Whether nothing at all is granted.
    pub fn is_empty(&self) -> bool {
        matches!(self, Fields::Only(set) if set.is_empty())
    }

    fn union(&mut self, other: Fields) {
        match (&mut *self, other) {
            (Fields::All, _) => {}
            (_, Fields::All) => *self = Fields::All,
            (Fields::Only(a), Fields::Only(b)) => a.extend(b),
        }
    }

    /// The shortest granted path that `path` lies within (`None` for all fields).
    fn grant_of(&self, path: &FieldPath) -> Option<&FieldPath> {
        match self {
            Fields::All => None,
            Fields::Only(set) => set
                .iter()
                .filter(|g| path.within(g))
                .min_by_key(|g| g.parts().len()),
        }
    }
}

impl std::fmt::Display for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fields::All => f.write_str("*"),
            Fields::Only(set) => {
                let names: Vec<String> = set.iter().map(FieldPath::to_string).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// `FIELD=VALUE`: the record's field equals VALUE (or, for a list, contains it).
/// `FIELD^=PATH`: the field is a path at or under PATH (`path^=/Photos` matches
/// `/Photos` and `/Photos/2026/a.jpg`, not `/Photosx`): a grant limited to a folder.
///
/// VALUE is typed as the command line suggests: `n=3` and `done=true` compare as a
/// number and a boolean *and* as the text `"3"` / `"true"` (so `tag=3` matches both
/// `3` and `"3"`); `tag="3"` (a JSON string) matches only the text; anything else is
/// text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Filter {
    pub field: FieldPath,
    pub value: Value,
    /// Also match the value's text (`tag=3` matches `"3"`). Absent in filters stored
    /// before typed matching, which compared the JSON value only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub or_text: bool,
    /// `^=`: the field is a path at or under `value` (a text). A node from before
    /// it reads such a filter as `=`, which matches less, never more.
    #[serde(default, skip_serializing_if = "is_false")]
    pub under: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let (field, value) = text
            .split_once('=')
            .ok_or_else(|| ScopeError::Filter(text.to_owned()))?;
        if let Some(field) = field.strip_suffix('^') {
            let field = FieldPath::parse(field.trim())
                .ok_or_else(|| ScopeError::Filter(text.to_owned()))?;
            let path = value.trim();
            if !path.starts_with('/') {
                return Err(ScopeError::Filter(format!(
                    "{text}: ^= takes a path that starts with /"
                )));
            }
            // `/Photos/` and `/Photos` are one folder; `/` is every path.
            let path = match path.trim_end_matches('/') {
                "" => "/",
                trimmed => trimmed,
            };
            return Ok(Self {
                field,
                value: Value::String(path.to_owned()),
                or_text: false,
                under: true,
            });
        }
        let field =
            FieldPath::parse(field.trim()).ok_or_else(|| ScopeError::Filter(text.to_owned()))?;
        let (value, or_text) = match serde_json::from_str::<Value>(value) {
            Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => (v, true),
            Ok(v @ Value::String(_)) => (v, false),
            _ => (Value::String(value.to_owned()), false),
        };
        Ok(Self {
            field,
            value,
            or_text,
            under: false,
        })
    }

    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        if self.under {
            return match (lookup(record, &self.field), &self.value) {
                (Some(Value::String(path)), Value::String(folder)) => path_under(path, folder),
                _ => false,
            };
        }
        match lookup(record, &self.field) {
            Some(Value::Array(items)) => items.iter().any(|item| self.equals(item)),
            Some(found) => self.equals(found),
            None => false,
        }
    }

    fn equals(&self, found: &Value) -> bool {
        if *found == self.value {
            return true;
        }
        match found {
            // `3` and `true` also match their text (`"3"`, `"true"`).
            Value::String(text) if self.or_text => self.value.to_string().as_str() == text,
            _ => false,
        }
    }
}

/// Whether `path` is `folder` or inside it (`/` holds every path).
pub fn path_under(path: &str, folder: &str) -> bool {
    folder == "/"
        || path == folder
        || path
            .strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.under {
            return write!(
                f,
                "{}^={}",
                self.field,
                self.value.as_str().unwrap_or_default()
            );
        }
        match &self.value {
            Value::String(text) if !self.or_text => {
                // Text that would read back as a number or a boolean is quoted.
                let ambiguous = serde_json::from_str::<Value>(text)
                    .is_ok_and(|v| !matches!(v, Value::String(_)));
                if ambiguous {
                    write!(f, "{}={}", self.field, self.value)
                } else {
                    write!(f, "{}={text}", self.field)
                }
            }
            other => write!(f, "{}={other}", self.field),
        }
    }
}

/// What a grant allows in one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CollectionScope {
    /// Fields the service may read (and receive in events); `None`: no reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Fields>,
    /// Fields the service may create or change; `None`: no writing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<Fields>,
    /// Only records matching every filter are seen or changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Filter>,
    /// The service may ask when the collection's events make their owner busy (CalDAV
    /// free-busy-query) and learns nothing else of them: a grant may be this alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub free_busy: bool,
}

/// The stored shapes of a collection scope: today's, and the one written before read
/// and write fields were separate (one field set with read/write flags, which granted
/// the union of both lists for both operations).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredCollectionScope {
    Current {
        #[serde(default)]
        read: Option<Fields>,
        #[serde(default)]
        write: Option<Fields>,
        #[serde(default)]
        filter: Vec<Filter>,
        #[serde(default)]
        free_busy: bool,
    },
    Merged {
        fields: Fields,
        #[serde(default)]
        filter: Vec<Filter>,
        read: bool,
        write: bool,
    },
}

impl<'de> Deserialize<'de> for CollectionScope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match StoredCollectionScope::deserialize(deserializer)? {
            StoredCollectionScope::Current {
                read,
                write,
                filter,
                free_busy,
            } => CollectionScope {
                read,
                write,
                filter,
                free_busy,
            },
            StoredCollectionScope::Merged {
                fields,
                filter,
                read,
                write,
            } => CollectionScope {
                read: read.then(|| fields.clone()),
                write: write.then_some(fields),
                filter,
                free_busy: false,
            },
        })
    }
}

/// Why a service's write is refused. [`WriteRefusal::Hidden`] and
/// [`WriteRefusal::Missing`] must be answered identically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteRefusal {
    #[error("the grant does not allow writing collection {0}")]
    NotWritable(String),
    #[error("field {0} is outside what the grant may write")]
    FieldOutside(FieldPath),
    #[error(
        "field {0} holds a value that is not an object, and writing inside it would replace it; the grant does not cover {0} itself"
    )]
    ParentNotObject(FieldPath),
    #[error("the record does not exist")]
    Missing,
    /// The record exists but the grant's filter hides it: answered as [`Self::Missing`].
    #[error("the record does not exist")]
    Hidden,
    #[error("after this change the record would not match the grant's filter ({0})")]
    NoMatchAfter(String),
    #[error("removing a record needs a grant that may write all of its fields")]
    DeleteNeedsAllFields,
}

impl WriteRefusal {
    /// Whether this refusal must look like "no such record" to the service.
    pub fn is_not_found(&self) -> bool {
        matches!(self, WriteRefusal::Missing | WriteRefusal::Hidden)
    }
}

impl CollectionScope {
    /// Whether the filter lets this record be seen or changed at all.
    pub fn visible(&self, record: &Map<String, Value>) -> bool {
        self.filter.iter().all(|f| f.matches(record))
    }

    /// The record as this scope reads it, or `None` if the scope does not read or the
    /// filter hides it. `"id"` is kept; every other field only if readable (nested
    /// paths keep their subtree).
    pub fn project(&self, record: &Map<String, Value>) -> Option<Map<String, Value>> {
        let read = self.read.as_ref()?;
        if !self.visible(record) {
            return None;
        }
        let mut out = Map::new();
        if let Some(id) = record.get("id") {
            out.insert("id".into(), id.clone());
        }
        match read {
            Fields::All => out.extend(
                record
                    .iter()
                    .filter(|(k, _)| *k != "id")
                    .map(|(k, v)| (k.clone(), v.clone())),
            ),
            Fields::Only(paths) => {
                for path in paths {
                    if let Some(value) = lookup(record, path) {
                        insert_at(&mut out, path.parts(), value.clone());
                    }
                }
            }
        }
        Some(out)
    }

    /// The readable fields a projection of `record` shows (dotted paths; top-level
    /// names where all fields are readable).
    pub fn field_names(&self, record: &Map<String, Value>) -> Vec<String> {
        match &self.read {
            None => Vec::new(),
            Some(Fields::All) => record.keys().filter(|k| *k != "id").cloned().collect(),
            Some(Fields::Only(paths)) => paths
                .iter()
                .filter(|p| lookup(record, p).is_some())
                .map(|p| p.to_string())
                .collect(),
        }
    }

    /// Checks a service's write and computes the record it leaves: `patch` (a JSON
    /// merge patch, RFC 7396: `null` removes a field) applied to `before` (`None` for a
    /// record that does not exist). Refused unless the scope may write every field the
    /// patch touches, the record is visible before (when it exists), no ungranted
    /// parent of a granted path would be replaced, and the result is visible.
    ///
    /// Checks that depend only on the patch come first, so a refusal for a hidden
    /// record is the same as for a missing one. `create` says whether a missing
    /// record may be created; else a missing record is [`WriteRefusal::Missing`].
    pub fn check_write(
        &self,
        collection: &str,
        before: Option<&Map<String, Value>>,
        patch: &Map<String, Value>,
        create: bool,
    ) -> Result<Map<String, Value>, WriteRefusal> {
        let write = self
            .write
            .as_ref()
            .ok_or_else(|| WriteRefusal::NotWritable(collection.to_owned()))?;
        let mut leaves = Vec::new();
        leaf_paths(patch, &mut Vec::new(), &mut leaves);
        let leaves: Vec<FieldPath> = leaves.into_iter().filter(|p| p.parts() != ["id"]).collect();
        if let Some(outside) = leaves.iter().find(|p| !write.covers(p)) {
            return Err(WriteRefusal::FieldOutside(outside.clone()));
        }
        match before {
            None if !create => return Err(WriteRefusal::Missing),
            Some(record) if !self.visible(record) => return Err(WriteRefusal::Hidden),
            _ => {}
        }
        if let Some(record) = before {
            for leaf in &leaves {
                let Some(granted) = write.grant_of(leaf) else {
                    continue;
                };
                // Every parent above the granted path must be an object or absent:
                // writing inside a scalar would replace what the grant does not cover.
                for depth in 1..granted.parts().len() {
                    let parent = FieldPath::from_parts(&granted.parts()[..depth]);
                    if lookup(record, &parent).is_some_and(|v| !v.is_object()) {
                        return Err(WriteRefusal::ParentNotObject(parent));
                    }
                }
            }
        }
        let mut after = before.cloned().unwrap_or_default();
        after.remove("id");
        let mut body = patch.clone();
        body.remove("id");
        merge_patch(&mut after, &body);
        if !self.visible(&after) {
            let filters: Vec<String> = self.filter.iter().map(Filter::to_string).collect();
            return Err(WriteRefusal::NoMatchAfter(filters.join(", ")));
        }
        Ok(after)
    }

    /// Checks that a service may remove `before` (a record that exists or not).
    pub fn check_delete(&self, before: Option<&Map<String, Value>>) -> Result<(), WriteRefusal> {
        if self.write != Some(Fields::All) {
            return Err(WriteRefusal::DeleteNeedsAllFields);
        }
        match before {
            None => Err(WriteRefusal::Missing),
            Some(record) if !self.visible(record) => Err(WriteRefusal::Hidden),
            Some(_) => Ok(()),
        }
    }

    /// Adds what `other` allows (same filter) to what this allows.
    fn absorb(&mut self, other: &CollectionScope) {
        self.free_busy |= other.free_busy;
        for (mine, theirs) in [
            (&mut self.read, &other.read),
            (&mut self.write, &other.write),
        ] {
            match (mine.as_mut(), theirs) {
                (_, None) => {}
                (None, Some(t)) => *mine = Some(t.clone()),
                (Some(m), Some(t)) => m.union(t.clone()),
            }
        }
    }

    /// This scope, further limited by a token's narrowing of one collection.
    fn narrowed(&self, read: Option<&Fields>, write: Option<&Fields>) -> CollectionScope {
        let limit = |mine: &Option<Fields>, theirs: Option<&Fields>| match (mine, theirs) {
            (Some(a), Some(b)) => Some(a.intersect(b)).filter(|f| !f.is_empty()),
            _ => None,
        };
        CollectionScope {
            read: limit(&self.read, read),
            write: limit(&self.write, write),
            filter: self.filter.clone(),
            // A narrowing that names the collection at all keeps it (busy times are
            // less than any field).
            free_busy: self.free_busy && (read.is_some() || write.is_some()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scope {
    pub collections: BTreeMap<String, CollectionScope>,
}

impl Scope {
    /// Builds a scope from `--read`, `--write` and `--where` arguments. Filters apply to
    /// every granted collection. Collections may be named before they hold any data.
    pub fn parse(
        read: Option<&str>,
        write: Option<&str>,
        filters: &[String],
    ) -> Result<Self, ScopeError> {
        Self::parse_grant(read, write, None, filters)
    }

    /// [`Scope::parse`] with `--free-busy`: collections (or families, no fields) whose
    /// busy times the service may ask for, and nothing else of them.
    pub fn parse_grant(
        read: Option<&str>,
        write: Option<&str>,
        free_busy: Option<&str>,
        filters: &[String],
    ) -> Result<Self, ScopeError> {
        let filter: Vec<Filter> = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<_, _>>()?;
        let mut scope = Scope::default();
        let nothing = || CollectionScope {
            read: None,
            write: None,
            filter: filter.clone(),
            free_busy: false,
        };
        for (list, is_write) in [(read, false), (write, true)] {
            for item in items(list) {
                let (name, fields) = parse_item(item)?;
                let entry = scope.collections.entry(name).or_insert_with(nothing);
                let slot = if is_write {
                    &mut entry.write
                } else {
                    &mut entry.read
                };
                match slot {
                    Some(existing) => existing.union(fields),
                    None => *slot = Some(fields),
                }
            }
        }
        for item in items(free_busy) {
            let (name, fields) = parse_item(item)?;
            if fields != Fields::All {
                return Err(ScopeError::Malformed(format!(
                    "{item} (free/busy names collections, not fields)"
                )));
            }
            scope
                .collections
                .entry(name)
                .or_insert_with(nothing)
                .free_busy = true;
        }
        if scope.collections.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(scope)
    }

    /// What this scope allows in collection `name`: the union of every key that covers
    /// it (the collection itself and the families it belongs to). Keys with different
    /// filters are not merged (one grant's keys share one filter); the first in name
    /// order counts.
    pub fn collection(&self, name: &str) -> Option<CollectionScope> {
        let mut found: Option<CollectionScope> = None;
        for (key, c) in &self.collections {
            if !Key::of(key).covers(name) {
                continue;
            }
            match &mut found {
                None => found = Some(c.clone()),
                Some(f) if f.filter == c.filter => f.absorb(c),
                Some(_) => {}
            }
        }
        found
    }

    /// Whether any key of this scope is a family.
    pub fn has_family(&self) -> bool {
        self.collections
            .keys()
            .any(|k| matches!(Key::of(k), Key::Family(_)))
    }

    /// The collections this scope reaches, in name order, each with what it allows
    /// there: the collections it names (whether they exist or not) and those of
    /// `existing` that a family covers.
    pub fn reach<'a>(
        &self,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, CollectionScope)> {
        let mut names: BTreeSet<String> = self
            .collections
            .keys()
            .filter(|k| matches!(Key::of(k), Key::One(_)))
            .cloned()
            .collect();
        for name in existing {
            if !names.contains(name) && self.collections.keys().any(|k| Key::of(k).covers(name)) {
                names.insert(name.to_owned());
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let c = self.collection(&name)?;
                Some((name, c))
            })
            .collect()
    }

    /// The collections this scope may read (see [`Scope::reach`]), in name order.
    pub fn readable<'a>(
        &self,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, CollectionScope)> {
        let mut reach = self.reach(existing);
        reach.retain(|(_, c)| c.read.is_some());
        reach
    }

    /// This scope limited by a token's narrowing: what both allow. A collection the
    /// narrowing does not name is neither read nor written. Keys meet as sets of
    /// collections do: a grant of `calendar*` narrowed to `calendar-work` keeps
    /// `calendar-work`.
    pub fn narrowed(&self, narrowing: &Narrowing) -> Scope {
        let mut collections: BTreeMap<String, CollectionScope> = BTreeMap::new();
        let keys: BTreeSet<&String> = narrowing
            .read
            .keys()
            .chain(narrowing.write.keys())
            .collect();
        for (granted, c) in &self.collections {
            for key in &keys {
                let Some(meet) = Key::of(granted).meet(Key::of(key)) else {
                    continue;
                };
                let part = c.narrowed(narrowing.read.get(*key), narrowing.write.get(*key));
                if part.read.is_none() && part.write.is_none() && !part.free_busy {
                    continue;
                }
                match collections.get_mut(&meet) {
                    Some(existing) if existing.filter == part.filter => existing.absorb(&part),
                    Some(_) => {}
                    None => {
                        collections.insert(meet, part);
                    }
                }
            }
        }
        Scope { collections }
    }
}

/// The items of a comma-separated list, trimmed, empty ones dropped.
fn items(list: Option<&str>) -> Vec<&str> {
    list.into_iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_item(item: &str) -> Result<(String, Fields), ScopeError> {
    let (collection, field) = match item.split_once('.') {
        Some((c, f)) => (
            c,
            Some(FieldPath::parse(f).ok_or_else(|| ScopeError::Malformed(item.to_owned()))?),
        ),
        None => (item, None),
    };
    let base = collection.strip_suffix(FAMILY).unwrap_or(collection);
    let name = CollectionName::parse(base)
        .map_err(|e| ScopeError::Collection(item.to_owned(), e.to_string()))?;
    if name.is_system() {
        return Err(ScopeError::System(name.to_string()));
    }
    let fields = match field {
        Some(path) => Fields::Only(BTreeSet::from([path])),
        None => Fields::All,
    };
    Ok((collection.to_owned(), fields))
}

/// Version of [`Narrowing`]'s encoding in a token block.
pub const NARROWING_VERSION: u8 = 1;

/// What one attenuation of a token allows, carried (signed) in the block it appends:
/// per collection, the fields that may still be read and written. A token's scope is
/// its grant's scope limited by every narrowing in it; a narrowing can only take away.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrowing {
    pub v: u8,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub read: BTreeMap<String, Fields>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub write: BTreeMap<String, Fields>,
}

/// Marks a token block's context as a Hearth narrowing.
const NARROWING_PREFIX: &str = "hearth-narrowing:";

impl Narrowing {
    /// From `--read` / `--write` lists, as `hearth token attenuate` takes them.
    pub fn parse(read: Option<&str>, write: Option<&str>) -> Result<Self, ScopeError> {
        let scope = Scope::parse(read, write, &[])?;
        let mut narrowing = Narrowing {
            v: NARROWING_VERSION,
            ..Narrowing::default()
        };
        for (name, c) in scope.collections {
            if let Some(read) = c.read {
                narrowing.read.insert(name.clone(), read);
            }
            if let Some(write) = c.write {
                narrowing.write.insert(name, write);
            }
        }
        Ok(narrowing)
    }

    /// The text stored in the token block's context.
    pub fn encode(&self) -> String {
        format!(
            "{NARROWING_PREFIX}{}",
            serde_json::to_string(self).expect("a narrowing serializes")
        )
    }

    pub fn decode(text: &str) -> Result<Self, ScopeError> {
        let json = text
            .strip_prefix(NARROWING_PREFIX)
            .ok_or_else(|| ScopeError::Narrowing("the block is not a Hearth narrowing".into()))?;
        let narrowing: Narrowing =
            serde_json::from_str(json).map_err(|e| ScopeError::Narrowing(e.to_string()))?;
        if narrowing.v != NARROWING_VERSION {
            return Err(ScopeError::Narrowing(format!(
                "version {} (this Hearth reads {NARROWING_VERSION})",
                narrowing.v
            )));
        }
        for name in narrowing.read.keys().chain(narrowing.write.keys()) {
            check_key(name).map_err(|e| ScopeError::Narrowing(format!("{name:?}: {e}")))?;
        }
        Ok(narrowing)
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`: `null` removes a field, an
/// object merges into an object (replacing anything else), any other value replaces.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(map) = slot {
                    merge_patch(map, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The merge patch (RFC 7396) that turns `before` into `after`: changed and new
/// fields, `null` for removed ones, objects recursed into. Empty when they are equal.
pub fn diff_patch(before: &Map<String, Value>, after: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, new) in after {
        match (before.get(key), new) {
            (Some(old), new) if old == new => {}
            (Some(Value::Object(old)), Value::Object(new)) => {
                let inner = diff_patch(old, new);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Value::Object(inner));
                }
            }
            _ => {
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    patch
}

/// The value at `path` in `record`, if any.
pub fn lookup<'a>(record: &'a Map<String, Value>, path: &FieldPath) -> Option<&'a Value> {
    let (first, rest) = path.parts().split_first()?;
    let mut value = record.get(first)?;
    for part in rest {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn insert_at(out: &mut Map<String, Value>, parts: &[String], value: Value) {
    match parts {
        [] => {}
        [last] => {
            out.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let child = out
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = child {
                insert_at(map, rest, value);
            }
        }
    }
}

/// Paths of the leaves of a JSON object (an empty object, a list, `null` and every
/// scalar are leaves).
pub fn leaf_paths(map: &Map<String, Value>, prefix: &mut Vec<String>, out: &mut Vec<FieldPath>) {
    for (key, value) in map {
        prefix.push(key.clone());
        match value {
            Value::Object(inner) if !inner.is_empty() => leaf_paths(inner, prefix, out),
            _ => out.push(FieldPath(prefix.clone())),
        }
        prefix.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn only(paths: &[&str]) -> Fields {
        Fields::Only(paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect())
    }

    #[test]
    fn parses_scopes_with_separate_read_and_write() {
        let s = Scope::parse(
            Some("contacts.name,contacts.address.city,calendar"),
            Some("notes,contacts.note"),
            &["tag=work".into()],
        )
        .unwrap();
        let contacts = s.collection("contacts").unwrap();
        assert_eq!(contacts.read, Some(only(&["name", "address.city"])));
        assert_eq!(contacts.write, Some(only(&["note"])));
        assert_eq!(s.collection("calendar").unwrap().read, Some(Fields::All));
        assert_eq!(s.collection("calendar").unwrap().write, None);
        let notes = s.collection("notes").unwrap();
        assert_eq!(
            (notes.read.clone(), notes.write.clone()),
            (None, Some(Fields::All))
        );
        assert_eq!(notes.filter, vec![Filter::parse("tag=work").unwrap()]);
        assert_eq!(
            Scope::parse(Some("contacts,contacts.name"), None, &[])
                .unwrap()
                .collection("contacts")
                .unwrap()
                .read,
            Some(Fields::All)
        );

        assert!(matches!(
            Scope::parse(None, None, &[]),
            Err(ScopeError::Empty)
        ));
        assert!(matches!(
            Scope::parse(Some("Bad"), None, &[]),
            Err(ScopeError::Collection(..))
        ));
        assert!(matches!(
            Scope::parse(Some("_access"), None, &[]),
            Err(ScopeError::System(_))
        ));
        assert!(matches!(
            Scope::parse(Some("contacts..x"), None, &[]),
            Err(ScopeError::Malformed(_))
        ));
        assert!(matches!(
            Scope::parse(Some("contacts"), None, &["nofilter".into()]),
            Err(ScopeError::Filter(_))
        ));
    }

    /// The finding that started the separation: `--read contacts.name --write
    /// contacts.note` must neither read `note` nor write `name`, and `--read
    /// contacts.name --write contacts` must not read every field.
    #[test]
    fn reading_and_writing_do_not_lend_each_other_fields() {
        let s = Scope::parse(Some("contacts.name"), Some("contacts.note"), &[]).unwrap();
        let c = s.collection("contacts").unwrap();
        let rec = obj(json!({"id": "a", "name": "Ada", "note": "secret", "email": "e"}));
        assert_eq!(
            c.project(&rec).unwrap(),
            obj(json!({"id": "a", "name": "Ada"}))
        );
        assert_eq!(
            c.check_write("contacts", Some(&rec), &obj(json!({"name": "X"})), false),
            Err(WriteRefusal::FieldOutside(
                FieldPath::parse("name").unwrap()
            ))
        );
        assert!(
            c.check_write("contacts", Some(&rec), &obj(json!({"note": "n"})), false)
                .is_ok()
        );
        let w = Scope::parse(Some("contacts.name"), Some("contacts"), &[]).unwrap();
        let c = w.collection("contacts").unwrap();
        assert_eq!(
            c.project(&rec).unwrap(),
            obj(json!({"id": "a", "name": "Ada"}))
        );
        assert!(
            c.check_write("contacts", Some(&rec), &obj(json!({"email": "x"})), false)
                .is_ok()
        );
        let r = Scope::parse(Some("tasks"), None, &[]).unwrap();
        assert_eq!(
            r.collection("tasks").unwrap().check_write(
                "tasks",
                None,
                &obj(json!({"title": "x"})),
                true
            ),
            Err(WriteRefusal::NotWritable("tasks".into()))
        );
    }

    #[test]
    fn filters_are_typed_and_quoted_text_stays_text() {
        let three = Filter::parse("tag=3").unwrap();
        assert!(three.matches(&obj(json!({"tag": 3}))));
        assert!(three.matches(&obj(json!({"tag": "3"}))));
        assert!(three.matches(&obj(json!({"tag": ["x", "3"]}))));
        assert!(!three.matches(&obj(json!({"tag": "4"}))));
        let text = Filter::parse("tag=\"3\"").unwrap();
        assert!(text.matches(&obj(json!({"tag": "3"}))));
        assert!(!text.matches(&obj(json!({"tag": 3}))));
        let yes = Filter::parse("done=true").unwrap();
        assert!(yes.matches(&obj(json!({"done": true}))));
        assert!(yes.matches(&obj(json!({"done": "true"}))));
        assert_eq!(Filter::parse("tag=work").unwrap().to_string(), "tag=work");
        // A folder: the path itself and what is under it, never a name that only
        // starts alike; a trailing / is the same folder; `/` is everything.
        let photos = Filter::parse("path^=/Photos/").unwrap();
        assert_eq!(photos.to_string(), "path^=/Photos");
        assert_eq!(Filter::parse(&photos.to_string()).unwrap(), photos);
        for (path, inside) in [
            ("/Photos", true),
            ("/Photos/2026/a.jpg", true),
            ("/Photosx", false),
            ("/Photosx/a.jpg", false),
            ("/", false),
            ("/Docs/Photos/a", false),
        ] {
            assert_eq!(
                photos.matches(&obj(json!({"path": path}))),
                inside,
                "{path}"
            );
        }
        assert!(!photos.matches(&obj(json!({"path": 3}))));
        assert!(!photos.matches(&obj(json!({}))));
        assert!(
            Filter::parse("path^=/")
                .unwrap()
                .matches(&obj(json!({"path": "/a"})))
        );
        assert!(Filter::parse("path^=Photos").is_err());
        // Stored by a node from before `^=`: read as `=`, which matches less.
        let old: Filter =
            serde_json::from_value(json!({"field": "path", "value": "/Photos"})).unwrap();
        assert!(!old.under);
        assert_eq!(text.to_string(), "tag=\"3\"");
        assert_eq!(three.to_string(), "tag=3");
        // A filter stored before typed matching compares the JSON value only.
        let old: Filter = serde_json::from_value(json!({"field": "n", "value": 3})).unwrap();
        assert!(!old.matches(&obj(json!({"n": "3"}))));
    }

    #[test]
    fn projects_and_filters() {
        let s = Scope::parse(
            Some("contacts.name,contacts.address.city"),
            None,
            &["tag=work".into()],
        )
        .unwrap();
        let c = s.collection("contacts").unwrap();
        let rec = obj(
            json!({"id": "a", "name": "Ada", "email": "x", "tag": ["work", "math"], "address": {"city": "London", "street": "1 Main"}}),
        );
        assert_eq!(
            c.project(&rec).unwrap(),
            obj(json!({"id": "a", "name": "Ada", "address": {"city": "London"}}))
        );
        let other = obj(json!({"id": "b", "name": "Bob", "tag": "home"}));
        assert_eq!(c.project(&other), None);
        let missing = obj(json!({"id": "c", "name": "Cy"}));
        assert_eq!(
            c.project(&missing),
            None,
            "a filter on a missing field matches nothing"
        );
    }

    /// The case proptest found: a grant of `b.b` may fill an empty object `b`, and the
    /// oracle of `accepted_writes_stay_inside` must call that inside the grant, while
    /// anything else put into `b` is refused and would be caught by that oracle.
    #[test]
    fn a_granted_field_may_fill_an_empty_object_and_nothing_else_may() {
        let s = Scope::parse(None, Some("col.b.b"), &[]).unwrap();
        let c = s.collection("col").unwrap();
        let fields = c.write.clone().unwrap();
        let before = obj(json!({"id": "r", "b": {}}));
        let after = c
            .check_write(
                "col",
                Some(&before),
                &obj(json!({"b": {"b": false}})),
                false,
            )
            .unwrap();
        assert_eq!(after, obj(json!({"b": {"b": false}})));
        assert_eq!(ungranted(&after, &fields, &[]), Map::new());
        assert_eq!(
            c.check_write("col", Some(&before), &obj(json!({"b": {"c": 1}})), false),
            Err(WriteRefusal::FieldOutside(FieldPath::parse("b.c").unwrap()))
        );
        assert_eq!(
            c.check_write("col", Some(&before), &obj(json!({"b": null})), false),
            Err(WriteRefusal::FieldOutside(FieldPath::parse("b").unwrap()))
        );
        let leaked = obj(json!({"b": {"b": false, "c": 1}}));
        assert_ne!(
            ungranted(&leaked, &fields, &[]),
            ungranted(&obj(json!({"b": {}})), &fields, &[])
        );
        assert_ne!(
            ungranted(&Map::new(), &fields, &[]),
            ungranted(&obj(json!({"b": {}, "a": 1})), &fields, &[])
        );
    }

    #[test]
    fn writes_respect_the_filter_before_and_after() {
        let s = Scope::parse(Some("notes"), Some("notes"), &["tag=work".into()]).unwrap();
        let c = s.collection("notes").unwrap();
        let work = obj(json!({"tag": "work", "t": 1}));
        let home = obj(json!({"tag": "home", "t": 1}));
        assert!(
            c.check_write("notes", Some(&work), &obj(json!({"t": 2})), false)
                .is_ok()
        );
        assert_eq!(
            c.check_write("notes", Some(&home), &obj(json!({"t": 2})), false),
            Err(WriteRefusal::Hidden)
        );
        assert_eq!(
            c.check_write("notes", Some(&home), &obj(json!({"tag": "work"})), false),
            Err(WriteRefusal::Hidden),
            "a hidden record cannot be pulled into the view"
        );
        assert!(matches!(
            c.check_write("notes", Some(&work), &obj(json!({"tag": "home"})), false),
            Err(WriteRefusal::NoMatchAfter(_))
        ));
        assert!(matches!(
            c.check_write("notes", None, &obj(json!({"t": 1})), true),
            Err(WriteRefusal::NoMatchAfter(_))
        ));
        assert!(
            c.check_write("notes", None, &obj(json!({"tag": "work"})), true)
                .is_ok()
        );
        assert_eq!(
            c.check_write("notes", None, &obj(json!({"t": 1})), false),
            Err(WriteRefusal::Missing)
        );
        assert!(WriteRefusal::Hidden.is_not_found() && WriteRefusal::Missing.is_not_found());
        assert_eq!(c.check_delete(Some(&home)), Err(WriteRefusal::Hidden));
        assert_eq!(c.check_delete(Some(&work)), Ok(()));
        let narrow = Scope::parse(None, Some("notes.t"), &[]).unwrap();
        assert_eq!(
            narrow
                .collection("notes")
                .unwrap()
                .check_delete(Some(&work)),
            Err(WriteRefusal::DeleteNeedsAllFields)
        );
    }

    #[test]
    fn a_nested_write_grant_never_replaces_an_ungranted_parent() {
        let s = Scope::parse(None, Some("notes.title,notes.meta.color"), &[]).unwrap();
        let c = s.collection("notes").unwrap();
        let patch = obj(json!({"meta": {"color": "x"}}));
        let scalar = obj(json!({"meta": "keep me"}));
        assert_eq!(
            c.check_write("notes", Some(&scalar), &patch, false),
            Err(WriteRefusal::ParentNotObject(
                FieldPath::parse("meta").unwrap()
            ))
        );
        let list = obj(json!({"meta": [1, 2]}));
        assert!(c.check_write("notes", Some(&list), &patch, false).is_err());
        let object = obj(json!({"meta": {"size": 1}}));
        assert_eq!(
            c.check_write("notes", Some(&object), &patch, false)
                .unwrap(),
            obj(json!({"meta": {"size": 1, "color": "x"}}))
        );
        let absent = obj(json!({"title": "t"}));
        assert!(c.check_write("notes", Some(&absent), &patch, false).is_ok());
        assert_eq!(
            c.check_write(
                "notes",
                Some(&object),
                &obj(json!({"meta": {"size": 2}})),
                false
            ),
            Err(WriteRefusal::FieldOutside(
                FieldPath::parse("meta.size").unwrap()
            ))
        );
        assert_eq!(
            c.check_write("notes", Some(&object), &obj(json!({"meta": null})), false),
            Err(WriteRefusal::FieldOutside(
                FieldPath::parse("meta").unwrap()
            ))
        );
    }

    #[test]
    fn narrowing_only_takes_away() {
        let grant = Scope::parse(
            Some("contacts.name,contacts.address,notes"),
            Some("notes.title"),
            &["tag=work".into()],
        )
        .unwrap();
        let n =
            Narrowing::parse(Some("contacts.address.city,contacts.email,calendar"), None).unwrap();
        let narrowed = grant.narrowed(&Narrowing::decode(&n.encode()).unwrap());
        let c = narrowed.collection("contacts").unwrap();
        assert_eq!(c.read, Some(only(&["address.city"])));
        assert_eq!(c.write, None);
        assert_eq!(c.filter, grant.collection("contacts").unwrap().filter);
        assert!(narrowed.collection("notes").is_none(), "not named: gone");
        assert!(
            narrowed.collection("calendar").is_none(),
            "never granted: not added"
        );
        let write = Narrowing::parse(Some("notes"), Some("notes")).unwrap();
        let notes = grant.narrowed(&write);
        assert_eq!(
            notes.collection("notes").unwrap().write,
            Some(only(&["title"]))
        );
        for bad in [
            "",
            "hearth-narrowing:{}",
            "hearth-narrowing:{\"v\":2}",
            "hearth-narrowing:{\"v\":1,\"read\":{\"Bad\":\"all\"}}",
            "hearth-narrowing:{\"v\":1,\"extra\":1}",
            "something else",
        ] {
            assert!(Narrowing::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_family_covers_its_base_and_every_dashed_name_now_and_later() {
        let scope = Scope::parse(Some("calendar*"), Some("calendar*.summary"), &[]).unwrap();
        for name in ["calendar", "calendar-work", "calendar-3f2a-11"] {
            let c = scope.collection(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(c.read, Some(Fields::All), "{name}");
            assert_eq!(c.write, Some(only(&["summary"])), "{name}");
        }
        for name in ["calendars", "calendar-", "calendarwork", "contacts", "cal"] {
            assert!(scope.collection(name).is_none(), "{name}");
        }
        let reach: Vec<String> = scope
            .readable(["calendar-b", "contacts", "calendar-a", "calendarx"])
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(reach, ["calendar-a", "calendar-b"]);
        assert!(scope.has_family());
        assert_eq!(
            Key::of("calendar*").describe(),
            "calendar and every calendar-… collection (also ones made later)"
        );
        for bad in ["_access*", "*", "Cal*", "calendar**"] {
            assert!(Scope::parse(Some(bad), None, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_busy_alone_reads_and_writes_nothing() {
        let scope = Scope::parse_grant(None, None, Some("calendar*"), &[]).unwrap();
        let c = scope.collection("calendar-work").unwrap();
        assert!(c.free_busy && c.read.is_none() && c.write.is_none());
        assert!(scope.readable(["calendar-work"]).is_empty());
        assert!(Scope::parse_grant(None, None, Some("calendar.summary"), &[]).is_err());
        assert_eq!(
            Scope::parse_grant(None, None, None, &[]),
            Err(ScopeError::Empty)
        );
        // Stored and read back; a narrowing that does not name it takes it away.
        let round: Scope = serde_json::from_value(serde_json::to_value(&scope).unwrap()).unwrap();
        assert_eq!(round, scope);
        let kept = scope.narrowed(&Narrowing::parse(Some("calendar-work"), None).unwrap());
        assert!(kept.collection("calendar-work").unwrap().free_busy);
        let gone = scope.narrowed(&Narrowing::parse(Some("notes"), None).unwrap());
        assert!(gone.collection("calendar-work").is_none());
    }

    #[test]
    fn keys_that_cover_one_collection_add_up() {
        let scope = Scope::parse(Some("calendar*.summary"), Some("calendar-work"), &[]).unwrap();
        let work = scope.collection("calendar-work").unwrap();
        assert_eq!(work.read, Some(only(&["summary"])));
        assert_eq!(work.write, Some(Fields::All));
        let home = scope.collection("calendar-home").unwrap();
        assert_eq!(home.write, None);
        // Named collections are reached even before they exist; families only
        // through what exists.
        let names: Vec<String> = scope.reach([]).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["calendar-work"]);
    }

    #[test]
    fn narrowings_meet_families_as_sets_of_collections() {
        let scope = Scope::parse(Some("calendar*,contacts"), Some("calendar*"), &[]).unwrap();
        // A member of the family.
        let one = scope.narrowed(&Narrowing::parse(Some("calendar-work"), None).unwrap());
        assert_eq!(
            one.collections.keys().collect::<Vec<_>>(),
            ["calendar-work"]
        );
        assert!(one.collection("calendar-home").is_none());
        assert_eq!(one.collection("calendar-work").unwrap().write, None);
        // A family within the family.
        let sub = scope.narrowed(&Narrowing::parse(None, Some("calendar-work*")).unwrap());
        assert!(sub.collection("calendar-work-2").unwrap().write.is_some());
        assert!(sub.collection("calendar-home").is_none());
        assert!(sub.collection("calendar-work").unwrap().read.is_none());
        // A family wider than the grant's reaches no more than the grant.
        let wide = Scope::parse(Some("calendar-work"), None, &[])
            .unwrap()
            .narrowed(&Narrowing::parse(Some("calendar*"), None).unwrap());
        assert_eq!(
            wide.collections.keys().collect::<Vec<_>>(),
            ["calendar-work"]
        );
        // Families apart meet nowhere.
        let apart = scope.narrowed(&Narrowing::parse(Some("notes*"), None).unwrap());
        assert!(apart.collections.is_empty());
        // A narrowing naming a family decodes; one naming the system does not.
        let text = Narrowing::parse(Some("calendar*"), None).unwrap().encode();
        assert!(Narrowing::decode(&text).is_ok());
        assert!(
            Narrowing::decode("hearth-narrowing:{\"v\":1,\"read\":{\"_access*\":\"all\"}}")
                .is_err()
        );
    }

    proptest! {
        /// Narrowing by families and names allows, in every collection, exactly what
        /// the grant and the narrowing both allow there.
        #[test]
        fn narrowing_is_the_meet_in_every_collection(
            granted in proptest::collection::vec(key_strategy(), 1..4),
            narrowed in proptest::collection::vec(key_strategy(), 1..4),
            name in name_strategy(),
        ) {
            let scope = Scope::parse(Some(&granted.join(",")), None, &[]).unwrap();
            let narrowing = Narrowing::parse(Some(&narrowed.join(",")), None).unwrap();
            let both = scope.narrowed(&narrowing);
            let want = scope.collection(&name).is_some()
                && narrowed.iter().any(|k| Key::of(k).covers(&name));
            prop_assert_eq!(both.collection(&name).is_some(), want);
        }
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        (name_strategy(), any::<bool>())
            .prop_map(|(n, family)| if family { format!("{n}*") } else { n })
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("a-b".to_owned()),
            Just("a-b-c".to_owned()),
            Just("a-c".to_owned()),
            Just("ab".to_owned()),
            Just("b".to_owned()),
        ]
    }

    #[test]
    fn scopes_stored_before_the_separation_still_read() {
        let old = json!({"collections": {"contacts": {"fields": {"only": ["name"]}, "filter": [{"field": "tag", "value": "work"}], "read": true, "write": false}}});
        let scope: Scope = serde_json::from_value(old).unwrap();
        let c = scope.collection("contacts").unwrap();
        assert_eq!(
            (c.read.clone(), c.write.clone()),
            (Some(only(&["name"])), None)
        );
        assert_eq!(c.filter.len(), 1);
        let round: Scope = serde_json::from_value(serde_json::to_value(&scope).unwrap()).unwrap();
        assert_eq!(round, scope);
    }

    #[test]
    fn diff_patch_turns_before_into_after() {
        let before = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": true, "e": {"x": 1}}));
        let after = obj(json!({"a": 1, "b": {"c": 5, "d": 3}, "new": [1], "e": {}}));
        let patch = diff_patch(&before, &after);
        assert_eq!(
            patch,
            obj(json!({"b": {"c": 5}, "new": [1], "gone": null, "e": {"x": null}}))
        );
        let mut applied = before.clone();
        merge_patch(&mut applied, &patch);
        assert_eq!(applied, after);
        assert!(diff_patch(&after, &after).is_empty());
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = obj(json!({"a": "b", "c": {"d": "e", "f": "g"}, "s": 1}));
        merge_patch(
            &mut target,
            &obj(json!({"a": "z", "c": {"f": null}, "s": {"x": 1}})),
        );
        assert_eq!(
            target,
            obj(json!({"a": "z", "c": {"d": "e"}, "s": {"x": 1}}))
        );
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned()),
            Just("tag".to_owned())
        ]
    }

    fn record() -> impl Strategy<Value = Map<String, Value>> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            prop_oneof![Just("work"), Just("home")].prop_map(Value::from)
        ];
        let value = leaf.prop_recursive(2, 8, 3, move |inner| {
            proptest::collection::btree_map(field(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        proptest::collection::btree_map(field(), value, 0..4).prop_map(|m| {
            let mut map: Map<String, Value> = m.into_iter().collect();
            map.insert("id".into(), json!("r"));
            map
        })
    }

    fn paths() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            (field(), proptest::option::of(field())).prop_map(|(a, b)| match b {
                Some(b) => format!("{a}.{b}"),
                None => a,
            }),
            0..3,
        )
    }

    /// What of `map` a write under `fields` must leave as it was: every field the grant does
    /// not cover. An object that holds granted fields is only their container, so it counts
    /// only for the ungranted fields in it: a write may create it, or fill an empty one.
    fn ungranted(
        map: &Map<String, Value>,
        fields: &Fields,
        prefix: &[String],
    ) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, value) in map {
            let path = FieldPath([prefix, std::slice::from_ref(key)].concat());
            if fields.covers(&path) {
                continue;
            }
            let value = match value {
                Value::Object(inner) => {
                    let rest = ungranted(inner, fields, path.parts());
                    let container = match fields {
                        Fields::All => true,
                        Fields::Only(set) => set.iter().any(|g| g.within(&path)),
                    };
                    if rest.is_empty() && container {
                        continue;
                    }
                    Value::Object(rest)
                }
                other => other.clone(),
            };
            out.insert(key.clone(), value);
        }
        out
    }

    fn fields_of(whole: bool, paths: &[String]) -> Fields {
        if whole || paths.is_empty() {
            Fields::All
        } else {
            Fields::Only(paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect())
        }
    }

    proptest! {
        /// A view never shows a field outside the grant or a record the filter rejects,
        /// and always shows every granted field of every matching record.
        #[test]
        fn views_show_exactly_the_scope(rec in record(), granted in paths(), whole in any::<bool>(), filter in proptest::option::of(prop_oneof![Just("tag=work"), Just("a=1"), Just("b.c=home")])) {
            let read = if whole || granted.is_empty() { "col".to_owned() } else { granted.iter().map(|p| format!("col.{p}")).collect::<Vec<_>>().join(",") };
            let filters: Vec<String> = filter.iter().map(|f| f.to_string()).collect();
            let scope = Scope::parse(Some(&read), None, &filters).unwrap();
            let c = scope.collection("col").unwrap();
            let fields = c.read.clone().unwrap();
            let matches = filters.iter().all(|f| Filter::parse(f).unwrap().matches(&rec));
            match c.project(&rec) {
                None => prop_assert!(!matches),
                Some(view) => {
                    prop_assert!(matches);
                    let mut leaves = Vec::new();
                    leaf_paths(&view, &mut Vec::new(), &mut leaves);
                    for leaf in &leaves {
                        if leaf.parts() == ["id"] { continue; }
                        prop_assert!(fields.covers(leaf), "{leaf} leaked");
                        prop_assert_eq!(lookup(&view, leaf), lookup(&rec, leaf));
                    }
                    if let Fields::Only(set) = &fields {
                        for path in set {
                            if let Some(v) = lookup(&rec, path) {
                                prop_assert_eq!(lookup(&view, path), Some(v));
                            }
                        }
                    } else {
                        prop_assert_eq!(&view, &rec);
                    }
                }
            }
        }

        /// Intersection covers exactly what both sides cover.
        #[test]
        fn intersection_is_exact(a in paths(), wa in any::<bool>(), b in paths(), wb in any::<bool>(), probe in paths()) {
            let (fa, fb) = (fields_of(wa, &a), fields_of(wb, &b));
            let both = fa.intersect(&fb);
            for p in probe.iter().chain(a.iter()).chain(b.iter()) {
                let p = FieldPath::parse(p).unwrap();
                prop_assert_eq!(both.covers(&p), fa.covers(&p) && fb.covers(&p), "{}", p);
            }
        }

        /// An accepted write changes nothing outside the write fields, and leaves a
        /// record the filter shows.
        #[test]
        fn accepted_writes_stay_inside(before in record(), patch in record(), granted in paths(), whole in any::<bool>(), filter in proptest::option::of(prop_oneof![Just("tag=work"), Just("a=1")])) {
            let write = if whole || granted.is_empty() { "col".to_owned() } else { granted.iter().map(|p| format!("col.{p}")).collect::<Vec<_>>().join(",") };
            let filters: Vec<String> = filter.iter().map(|f| f.to_string()).collect();
            let scope = Scope::parse(None, Some(&write), &filters).unwrap();
            let c = scope.collection("col").unwrap();
            let fields = c.write.clone().unwrap();
            if let Ok(after) = c.check_write("col", Some(&before), &patch, false) {
                prop_assert!(c.visible(&before) && c.visible(&after));
                let (mut old, mut new) = (before.clone(), after.clone());
                old.remove("id");
                new.remove("id");
                prop_assert_eq!(ungranted(&new, &fields, &[]), ungranted(&old, &fields, &[]));
            }
        }

        #[test]
        fn parsing_never_panics(read in ".{0,40}", filter in ".{0,20}") {
            let _ = Scope::parse(Some(&read), Some(&read), &[filter]);
            let _ = Narrowing::decode(&read);
        }
    }
}
