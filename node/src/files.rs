//! Files: documents, photos, music and books as records of the `files` collection
//! (docs/SCHEMA.md, "Files"), so they sync, merge, are audited and are granted like
//! every record. A file record names its bytes (a blob); two files with the same
//! bytes are two records naming one stored copy, and removing one leaves the other.
//!
//! A file or folder is the record whose id is derived from its path
//! ([`FilePath::id`]), so finding one is one read, and the same path made on two
//! devices is one record whose versions meet as any record's do. A folder's record
//! lists its entries by name (`"entries": {"a.pdf": "file"}`), so listing a folder
//! costs what it holds, not what the vault holds; the entries are an index of the
//! records' own paths, and a listing shows only an entry whose record is there and
//! says it is in that folder. Every change (a file and its folder, a folder and all it
//! holds) is one write: on disk together or not at all.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::collections::{CollectionError, Collections, FieldsIn, LookupIn, RecordWrite, WritesIn};
use hearth_protocol::{CollectionName, RecordId};

/// The collection that holds files.
pub const COLLECTION: &str = "files";

/// The longest path, in bytes.
pub const MAX_PATH: usize = 4096;
/// The longest name of one file or folder, in bytes.
pub const MAX_NAME: usize = 255;

pub fn collection() -> CollectionName {
    CollectionName::parse(COLLECTION).expect("a valid collection name")
}

/// Why a file operation did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{0}")]
    BadPath(String),
    #[error("no file or folder {0}")]
    NotFound(String),
    #[error("folder {0} does not exist: make it first (or ask for its parents to be made)")]
    NoParent(String),
    #[error("{0} is a file, not a folder")]
    NotAFolder(String),
    #[error("{0} is a folder: give a file's path")]
    IsAFolder(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0} changed while it was being moved or removed: try again")]
    Changed(String),
    #[error(transparent)]
    Collection(#[from] CollectionError),
}

impl FileError {
    pub fn code(&self) -> hearth_protocol::api::ErrorCode {
        use hearth_protocol::api::ErrorCode;
        match self {
            Self::BadPath(_) | Self::Refused(_) => ErrorCode::BadRequest,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NoParent(_)
            | Self::NotAFolder(_)
            | Self::IsAFolder(_)
            | Self::Exists(_)
            | Self::Changed(_) => ErrorCode::Conflict,
            Self::Collection(e) => e.code(),
        }
    }
}

/// A file's or folder's path: `/`, or `/` followed by names joined by `/` — no empty
/// name, no `.` or `..`, no control character, no `\`, each name at most
/// [`MAX_NAME`] bytes, the whole at most [`MAX_PATH`], in Unicode NFC (so a name
/// typed on a Mac and on Linux is one name). Case is kept and counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilePath(String);

impl FilePath {
    pub fn root() -> Self {
        Self("/".into())
    }

    /// Reads a path as a person or a client gives it: a leading `/` may be left out,
    /// and a trailing one (a folder's URL) is dropped.
    pub fn parse(text: &str) -> Result<Self, FileError> {
        use unicode_normalization::UnicodeNormalization;
        let bad = |why: &str| FileError::BadPath(format!("{:?} is not a path: {why}", short(text)));
        let text: String = text.nfc().collect();
        if text.len() > MAX_PATH {
            return Err(bad(&format!("longer than {MAX_PATH} bytes")));
        }
        let mut names = Vec::new();
        for name in text.split('/').filter(|n| !n.is_empty()) {
            if name == "." || name == ".." {
                return Err(bad("no name may be . or .."));
            }
            if name.len() > MAX_NAME {
                return Err(bad(&format!("a name is longer than {MAX_NAME} bytes")));
            }
            if name.chars().any(|c| c.is_control() || c == '\\') {
                return Err(bad("a name holds a control character or a backslash"));
            }
            names.push(name);
        }
        let inner = text.trim_matches('/');
        if !inner.is_empty() && inner.split('/').any(str::is_empty) {
            return Err(bad("it holds an empty name (//)"));
        }
        Ok(Self(format!("/{}", names.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The last name (`""` for the root).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// The folder it is in; `None` for the root.
    pub fn parent(&self) -> Option<FilePath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').unwrap_or(0);
        Some(if cut == 0 {
            Self::root()
        } else {
            Self(self.0[..cut].to_owned())
        })
    }

    /// `name` in this folder.
    pub fn join(&self, name: &str) -> Result<FilePath, FileError> {
        Self::parse(&format!("{}/{name}", self.0.trim_end_matches('/')))
    }

    /// Whether this is `other` or inside it.
    pub fn within(&self, other: &FilePath) -> bool {
        other.is_root()
            || self.0 == other.0
            || self
                .0
                .strip_prefix(&other.0)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// This path moved from under `from` to under `to` (`self` is within `from`).
    fn rebased(&self, from: &FilePath, to: &FilePath) -> Result<FilePath, FileError> {
        let rest = self.0.strip_prefix(&from.0).unwrap_or_default();
        Self::parse(&format!("{}{rest}", to.0.trim_end_matches('/')))
    }

    /// The record id of this path: `f` and 32 hex digits of its BLAKE3 hash (a path
    /// may be longer and hold any character an id may not).
    pub fn id(&self) -> RecordId {
        let mut hasher = blake3::Hasher::new_derive_key("hearth files path 2026-12 v1");
        hasher.update(self.0.as_bytes());
        let hex = hasher.finalize().to_hex();
        RecordId::parse(&format!("f{}", &hex[..32])).expect("hex digits make a valid id")
    }
}

impl std::fmt::Display for FilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn short(text: &str) -> String {
    text.chars().take(80).collect()
}

/// A file or a folder, as its record says.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: FilePath,
    pub folder: bool,
    /// A file's size in bytes (0 for a folder).
    pub size: u64,
    pub content_type: Option<String>,
    /// Seconds since 1970 (UTC) of the last change of its content.
    pub modified: Option<i64>,
    /// A file's bytes.
    pub blob: Option<String>,
    /// The record, whole (its `"id"` included): metadata, conflicts.
    pub record: Map<String, Value>,
}

impl Entry {
    fn of(path: &FilePath, record: Map<String, Value>) -> Option<Self> {
        // A record whose path is not the one asked for is not this entry (an id made
        // by hand in the collection, or a hash collision).
        if record.get("path").and_then(Value::as_str) != Some(path.as_str()) {
            return None;
        }
        Some(Self {
            path: path.clone(),
            folder: record.get("kind").and_then(Value::as_str) == Some("folder"),
            size: record.get("size").and_then(Value::as_u64).unwrap_or(0),
            content_type: record
                .get("type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            modified: record
                .get("modified")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp()),
            blob: record
                .get("blob")
                .and_then(Value::as_str)
                .map(str::to_owned),
            record,
        })
    }

    /// The names in a folder's `entries`, with whether each is a folder.
    pub fn entries(&self) -> BTreeMap<String, bool> {
        self.record
            .get("entries")
            .and_then(Value::as_object)
            .map(|e| {
                e.iter()
                    .map(|(name, kind)| (name.clone(), kind.as_str() == Some("folder")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What a file holds when it is written.
#[derive(Debug, Clone)]
pub struct Content {
    pub blob: hearth_protocol::BlobId,
    pub size: u64,
    pub content_type: Option<String>,
    /// Seconds since 1970; `None`: now.
    pub modified: Option<i64>,
    /// What the bytes say about themselves (`crate::filemeta`), if anything.
    pub meta: Option<Map<String, Value>>,
}

/// A file's content type: the one given, else guessed from its name (as a file
/// manager would show it).
pub fn content_type(name: &str, given: Option<&str>) -> Option<String> {
    given.map(str::to_owned).or_else(|| {
        mime_guess::from_path(name)
            .first()
            .map(|m| m.essence_str().to_owned())
    })
}

fn rfc3339(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn now() -> i64 {
    crate::clock::now_unix() as i64
}

/// The entry at `path`, if there is one.
pub fn stat(collections: &Collections, path: &FilePath) -> Result<Option<Entry>, FileError> {
    if path.is_root() {
        // The root is always there, made or not.
        let record = read(collections, path)?.unwrap_or_else(|| folder_record(path, now()));
        return Ok(Entry::of(path, record));
    }
    Ok(read(collections, path)?.and_then(|record| Entry::of(path, record)))
}

/// A folder that is not made yet, as a listing shows it (empty).
pub fn unmade_folder(path: &FilePath) -> Entry {
    Entry::of(path, folder_record(path, now())).expect("a folder record has its path")
}

fn read(
    collections: &Collections,
    path: &FilePath,
) -> Result<Option<Map<String, Value>>, FileError> {
    Ok(match collections.get(&collection(), &path.id())? {
        Some(Value::Object(record)) => Some(record),
        _ => None,
    })
}

/// What is in `folder` (an entry [`stat`] read), by name: each entry it lists whose
/// record is there and in it. Reads one record per entry; a file holds nothing.
pub fn list(collections: &Collections, folder: &Entry) -> Result<Vec<Entry>, FileError> {
    let mut out = Vec::new();
    for name in folder.entries().into_keys() {
        let Ok(child) = folder.path.join(&name) else {
            continue;
        };
        if let Some(entry) = stat(collections, &child)? {
            out.push(entry);
        }
    }
    Ok(out)
}

fn folder_record(path: &FilePath, at: i64) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("path".into(), json!(path.as_str()));
    record.insert("name".into(), json!(path.name()));
    if let Some(parent) = path.parent() {
        record.insert("folder".into(), json!(parent.as_str()));
    }
    record.insert("kind".into(), json!("folder"));
    record.insert("modified".into(), json!(rfc3339(at)));
    record.insert("entries".into(), json!({}));
    record
}

fn file_record(path: &FilePath, content: &Content) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("path".into(), json!(path.as_str()));
    record.insert("name".into(), json!(path.name()));
    if let Some(parent) = path.parent() {
        record.insert("folder".into(), json!(parent.as_str()));
    }
    record.insert("kind".into(), json!("file"));
    record.insert("size".into(), json!(content.size));
    if let Some(t) = &content.content_type {
        record.insert("type".into(), json!(t));
    }
    record.insert(
        "modified".into(),
        json!(rfc3339(content.modified.unwrap_or_else(now))),
    );
    record.insert("blob".into(), json!(content.blob.to_string()));
    if let Some(meta) = &content.meta {
        record.insert("meta".into(), Value::Object(meta.clone()));
    }
    record
}

/// The patch that adds (or, with `None`, removes) `name` in a folder's entries.
fn entry_patch(name: &str, kind: Option<&str>) -> RecordWrite {
    let mut entries = Map::new();
    entries.insert(name.to_owned(), kind.map_or(Value::Null, |k| json!(k)));
    let mut patch = Map::new();
    patch.insert("entries".into(), Value::Object(entries));
    patch.insert("modified".into(), json!(rfc3339(now())));
    RecordWrite::Patch(patch)
}

fn looked_up(lookup: &mut LookupIn<'_>, path: &FilePath) -> Result<Option<Entry>, CollectionError> {
    Ok(lookup(&collection(), &path.id())?.and_then(|record| Entry::of(path, record)))
}

/// What is at `path`, read only as far as whether it is a file or a folder: the
/// entry's record holds its `path` and `kind` alone. A folder's entries (one a file
/// it holds) are not read: a file put into a folder of 10,000 costs what a file put
/// into an empty one does.
fn kind_of(fields: &mut FieldsIn<'_>, path: &FilePath) -> Result<Option<Entry>, CollectionError> {
    Ok(fields(&collection(), &path.id(), &["path", "kind"])?
        .and_then(|record| Entry::of(path, record)))
}

/// The folders from the root down to `path`'s folder, each to be made if it is not
/// there (with `parents`; else the first missing one refuses the write), and the
/// entry of `path` (a `kind`: `file` or `folder`) in its folder.
fn parent_writes(
    fields: &mut FieldsIn<'_>,
    path: &FilePath,
    parents: bool,
    kind: &str,
    writes: &mut WritesIn,
) -> Result<(), FileError> {
    let Some(parent) = path.parent() else {
        return Err(FileError::Refused("the root folder is always there".into()));
    };
    let mut chain = vec![parent.clone()];
    while let Some(up) = chain.last().and_then(FilePath::parent) {
        chain.push(up);
    }
    chain.reverse();
    // From the root down, each one missing is made (the root always; the others
    // when asked).
    for folder in &chain {
        match kind_of(fields, folder)? {
            Some(entry) if entry.folder => continue,
            Some(_) => return Err(FileError::NotAFolder(folder.to_string())),
            None if folder.is_root() || parents => {}
            None => return Err(FileError::NoParent(folder.to_string())),
        }
        writes.push((
            collection(),
            folder.id(),
            RecordWrite::Put(folder_record(folder, now())),
        ));
        if let Some(up) = folder.parent() {
            writes.push((
                collection(),
                up.id(),
                entry_patch(folder.name(), Some("folder")),
            ));
        }
    }
    writes.push((
        collection(),
        parent.id(),
        entry_patch(path.name(), Some(kind)),
    ));
    Ok(())
}

/// The records a write at `path` may touch: its own, and its folders up to the root.
fn touching(path: &FilePath) -> Vec<(CollectionName, RecordId)> {
    let mut out = vec![(collection(), path.id())];
    let mut at = path.parent();
    while let Some(folder) = at {
        out.push((collection(), folder.id()));
        at = folder.parent();
    }
    out
}

/// Writes a file at `path` (made, or its content replaced), with the listing of its
/// blob (`listing`: what [`crate::blobs::listing_writes`] adds for it), in one write.
/// Returns whether the file is new.
pub fn put_file(
    collections: &Collections,
    path: &FilePath,
    content: &Content,
    parents: bool,
    listing: &[(hearth_protocol::BlobId, u64, crate::blobs::Described)],
) -> Result<bool, FileError> {
    if path.is_root() {
        return Err(FileError::IsAFolder(path.to_string()));
    }
    let mut all = touching(path);
    all.extend(crate::blobs::listings_of(listing));
    let created = collections.write_across_fields(&all, |lookup, fields| {
        let mut writes: WritesIn = Vec::new();
        // Whole only when it is a file (a folder is refused, whatever it holds).
        let before = match kind_of(fields, path)? {
            Some(entry) if !entry.folder => looked_up(lookup, path)?,
            kind => kind,
        };
        let created = match &before {
            Some(entry) if entry.folder => return Err(FileError::IsAFolder(path.to_string())),
            Some(entry) => {
                let after = file_record(path, content);
                let patch = hearth_protocol::scope::diff_patch(&without_id(&entry.record), &after);
                // `meta` follows the bytes: read from these (or absent), the old
                // bytes' fields are removed by the patch.
                if !patch.is_empty() {
                    writes.push((collection(), path.id(), RecordWrite::Patch(patch)));
                }
                false
            }
            None => {
                writes.push((
                    collection(),
                    path.id(),
                    RecordWrite::Put(file_record(path, content)),
                ));
                parent_writes(fields, path, parents, "file", &mut writes)?;
                true
            }
        };
        let listings = crate::blobs::listing_writes(lookup, listing, &writes)?;
        writes.extend(listings);
        Ok::<_, FileError>((writes, created))
    })??;
    Ok(created)
}

fn without_id(record: &Map<String, Value>) -> Map<String, Value> {
    let mut record = record.clone();
    record.remove("id");
    record
}

/// Makes folder `path`; [`FileError::Exists`] if something is there.
pub fn make_folder(
    collections: &Collections,
    path: &FilePath,
    parents: bool,
) -> Result<(), FileError> {
    if path.is_root() {
        return Err(FileError::Exists(path.to_string()));
    }
    collections.write_across_fields(&touching(path), |_, fields| {
        if kind_of(fields, path)?.is_some() {
            return Err(FileError::Exists(path.to_string()));
        }
        let mut writes: WritesIn = vec![(
            collection(),
            path.id(),
            RecordWrite::Put(folder_record(path, now())),
        )];
        parent_writes(fields, path, parents, "folder", &mut writes)?;
        Ok((writes, ()))
    })??;
    Ok(())
}

/// Properties a client may set on one file or folder (WebDAV dead properties).
pub const MAX_PROPS: usize = 64;
/// The longest value of one such property, in bytes.
pub const MAX_PROP_BYTES: usize = 8 * 1024;

/// The properties a client set on an entry (WebDAV dead properties), by their name in
/// Clark notation (`{namespace}name`), each with its value as XML.
pub fn props(entry: &Entry) -> Vec<(String, String)> {
    entry
        .record
        .get("props")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets (`Some`) and removes (`None`) properties of the entry at `path`, in order and
/// all at once (RFC 4918 §9.2), within [`MAX_PROPS`] and [`MAX_PROP_BYTES`].
pub fn set_props(
    collections: &Collections,
    path: &FilePath,
    changes: &[(String, Option<String>)],
) -> Result<(), FileError> {
    collections.write_across(&[(collection(), path.id())], |lookup| {
        let mut writes: WritesIn = Vec::new();
        let entry = match looked_up(lookup, path)? {
            Some(entry) => entry,
            None if path.is_root() => {
                writes.push((
                    collection(),
                    path.id(),
                    RecordWrite::Put(folder_record(path, now())),
                ));
                unmade_folder(path)
            }
            None => return Err(FileError::NotFound(path.to_string())),
        };
        let mut now: BTreeMap<String, String> = props(&entry).into_iter().collect();
        let mut patch = Map::new();
        for (name, value) in changes {
            match value {
                Some(value) if value.len() > MAX_PROP_BYTES => {
                    return Err(FileError::Refused(format!(
                        "the value of property {name} is longer than {MAX_PROP_BYTES} bytes"
                    )));
                }
                Some(value) => {
                    now.insert(name.clone(), value.clone());
                    patch.insert(name.clone(), json!(value));
                }
                None => {
                    now.remove(name);
                    patch.insert(name.clone(), Value::Null);
                }
            }
        }
        if now.len() > MAX_PROPS {
            return Err(FileError::Refused(format!(
                "a file or folder keeps at most {MAX_PROPS} properties"
            )));
        }
        let mut record = Map::new();
        record.insert("props".into(), Value::Object(patch));
        writes.push((collection(), path.id(), RecordWrite::Patch(record)));
        Ok::<_, FileError>((writes, ()))
    })??;
    Ok(())
}

/// `path` and, for a folder, everything in it, outermost first.
fn subtree(collections: &Collections, path: &FilePath) -> Result<Vec<Entry>, FileError> {
    let top = stat(collections, path)?.ok_or_else(|| FileError::NotFound(path.to_string()))?;
    let mut out = vec![top];
    let mut i = 0;
    while i < out.len() {
        if out[i].folder {
            let inside = list(collections, &out[i])?;
            out.extend(inside);
        }
        i += 1;
    }
    Ok(out)
}

/// Checks under the lock that the folders of `all` hold what they held when `all` was
/// read: else something was added to or taken from them meanwhile, and a write made
/// from `all` would leave it behind.
fn unchanged(lookup: &mut LookupIn<'_>, all: &[Entry]) -> Result<(), FileError> {
    for entry in all.iter().filter(|e| e.folder) {
        let now = looked_up(lookup, &entry.path)?;
        if now.as_ref().map(Entry::entries) != Some(entry.entries()) {
            return Err(FileError::Changed(entry.path.to_string()));
        }
    }
    Ok(())
}

/// What a removal took away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub files: usize,
    pub folders: usize,
    /// The blobs the removed files named (another record may still name them).
    pub blobs: Vec<String>,
}

/// Removes `path` (a folder with everything in it), in one write.
pub fn remove(collections: &Collections, path: &FilePath) -> Result<Removed, FileError> {
    if path.is_root() {
        return Err(FileError::Refused(
            "the root folder cannot be removed".into(),
        ));
    }
    let all = subtree(collections, path)?;
    let mut touched = touching(path);
    touched.extend(all.iter().map(|e| (collection(), e.path.id())));
    let removed = collections.write_across(&touched, |lookup| {
        // Checked again under the lock: what is removed is what is there.
        if looked_up(lookup, path)?.is_none() {
            return Err(FileError::NotFound(path.to_string()));
        }
        unchanged(lookup, &all)?;
        let mut writes: WritesIn = Vec::new();
        let mut removed = Removed::default();
        for entry in &all {
            if looked_up(lookup, &entry.path)?.is_none() {
                continue;
            }
            writes.push((collection(), entry.path.id(), RecordWrite::Remove));
            if entry.folder {
                removed.folders += 1;
            } else {
                removed.files += 1;
                removed.blobs.extend(entry.blob.clone());
            }
        }
        let parent = path.parent().expect("not the root");
        writes.push((collection(), parent.id(), entry_patch(path.name(), None)));
        Ok::<_, FileError>((writes, removed))
    })??;
    Ok(removed)
}

/// Moves (or, with `keep`, copies) `from` to `to`, a folder with everything in it, in
/// one write. Something at `to` is replaced only with `overwrite`. `to`'s folder must
/// be there.
pub fn relocate(
    collections: &Collections,
    from: &FilePath,
    to: &FilePath,
    overwrite: bool,
    keep: bool,
) -> Result<bool, FileError> {
    if from.is_root() || to.is_root() {
        return Err(FileError::Refused(
            "the root folder cannot be moved or replaced".into(),
        ));
    }
    if to.within(from) {
        return Err(FileError::Refused(format!("{to} is inside {from}")));
    }
    let moving = subtree(collections, from)?;
    let replaced = match stat(collections, to)? {
        Some(_) if !overwrite => return Err(FileError::Exists(to.to_string())),
        Some(_) => subtree(collections, to)?,
        None => Vec::new(),
    };
    let mut touched = touching(from);
    touched.extend(touching(to));
    touched.extend(moving.iter().map(|e| (collection(), e.path.id())));
    touched.extend(replaced.iter().map(|e| (collection(), e.path.id())));
    let mut new_paths = Vec::new();
    for entry in &moving {
        let path = entry.path.rebased(from, to)?;
        touched.push((collection(), path.id()));
        new_paths.push(path);
    }
    let existed = !replaced.is_empty();
    collections.write_across_fields(&touched, |lookup, fields| {
        if kind_of(fields, from)?.is_none() {
            return Err(FileError::NotFound(from.to_string()));
        }
        unchanged(lookup, &moving)?;
        unchanged(lookup, &replaced)?;
        let mut writes: WritesIn = Vec::new();
        for entry in &replaced {
            writes.push((collection(), entry.path.id(), RecordWrite::Remove));
        }
        let at = now();
        for (entry, path) in moving.iter().zip(&new_paths) {
            let mut record = without_id(&entry.record);
            record.insert("path".into(), json!(path.as_str()));
            record.insert("name".into(), json!(path.name()));
            if let Some(parent) = path.parent() {
                record.insert("folder".into(), json!(parent.as_str()));
            }
            if keep && entry.folder {
                record.insert("modified".into(), json!(rfc3339(at)));
            }
            // The new records replace any removed above under the same id.
            writes.retain(|(_, id, _)| *id != path.id());
            writes.push((collection(), path.id(), RecordWrite::Put(record)));
            if !keep {
                writes.push((collection(), entry.path.id(), RecordWrite::Remove));
            }
        }
        // The new top's folder must be there; the old one's loses the entry.
        let to_parent = to.parent().expect("not the root");
        match kind_of(fields, &to_parent)? {
            Some(e) if e.folder => {}
            None if to_parent.is_root() => writes.push((
                collection(),
                to_parent.id(),
                RecordWrite::Put(folder_record(&to_parent, at)),
            )),
            Some(_) => return Err(FileError::NotAFolder(to_parent.to_string())),
            None => return Err(FileError::NoParent(to_parent.to_string())),
        }
        if !keep {
            let from_parent = from.parent().expect("not the root");
            writes.push((
                collection(),
                from_parent.id(),
                entry_patch(from.name(), None),
            ));
        }
        let kind = if moving[0].folder { "folder" } else { "file" };
        writes.push((
            collection(),
            to_parent.id(),
            entry_patch(to.name(), Some(kind)),
        ));
        Ok::<_, FileError>((writes, ()))
    })??;
    Ok(existed)
}

/// What is wrong with the tree of files, the first `limit` problems and how many there
/// are: a record not at the id of its path, a file or folder its folder does not list
/// (or whose folder is missing), an entry with no record. Reads every record of
/// `files` once. A sync still under way can show an entry and its record apart for a
/// moment (they may travel in different parts).
pub fn check(collections: &Collections, limit: usize) -> Result<(Vec<String>, usize), FileError> {
    let mut by_path: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut all = 0;
    let mut note = |problem: String, problems: &mut Vec<String>| {
        all += 1;
        if problems.len() < limit {
            problems.push(problem);
        }
    };
    for record in collections.records(&collection())? {
        let Value::Object(record) = record else {
            continue;
        };
        let id = record
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let path = record
            .get("path")
            .and_then(Value::as_str)
            .and_then(|p| FilePath::parse(p).ok());
        match path {
            Some(path) if path.id().as_str() == id && path.as_str() == record["path"] => {
                by_path.insert(path.to_string(), record);
            }
            _ => note(
                format!("record {id} of files is not a file or folder at the id of its path"),
                &mut problems,
            ),
        }
    }
    for (path, record) in &by_path {
        let at = FilePath::parse(path)?;
        if let Some(parent) = at.parent() {
            let kind = record.get("kind").and_then(Value::as_str).unwrap_or("file");
            let listed = by_path
                .get(parent.as_str())
                .and_then(|p| p.get("entries"))
                .and_then(|e| e.get(at.name()))
                .and_then(Value::as_str);
            match (by_path.get(parent.as_str()), listed) {
                (None, _) if !parent.is_root() => note(
                    format!("{path} is in folder {parent}, which has no record"),
                    &mut problems,
                ),
                (_, Some(listed)) if listed == kind => {}
                _ => note(
                    format!("{path} is not listed in its folder's entries (as a {kind})"),
                    &mut problems,
                ),
            }
        }
        let entries = record.get("entries").and_then(Value::as_object);
        for name in entries.into_iter().flat_map(|e| e.keys()) {
            let child = at.join(name).map(|c| c.to_string()).unwrap_or_default();
            if !by_path.contains_key(&child) {
                note(
                    format!("folder {path} lists {name:?}, which has no record"),
                    &mut problems,
                );
            }
        }
    }
    Ok((problems, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_one_way() {
        for (given, read) in [
            ("/", "/"),
            ("", "/"),
            ("a", "/a"),
            ("/a/b/", "/a/b"),
            ("/Photos/2026/été.jpg", "/Photos/2026/été.jpg"),
            // NFD (as macOS writes it) becomes NFC.
            ("/e\u{301}te\u{301}", "/\u{e9}t\u{e9}"),
        ] {
            assert_eq!(FilePath::parse(given).unwrap().as_str(), read, "{given:?}");
        }
        for bad in [
            "/a//b",
            "/a/../b",
            "/./a",
            "/a\u{0}b",
            "/a\\b",
            &format!("/{}", "x".repeat(256)),
        ] {
            assert!(FilePath::parse(bad).is_err(), "{bad:?}");
        }
        let p = FilePath::parse("/a/b/c.txt").unwrap();
        assert_eq!(p.name(), "c.txt");
        assert_eq!(p.parent().unwrap().as_str(), "/a/b");
        assert_eq!(
            FilePath::parse("/a").unwrap().parent().unwrap(),
            FilePath::root()
        );
        assert!(p.within(&FilePath::parse("/a").unwrap()));
        assert!(
            !FilePath::parse("/ab")
                .unwrap()
                .within(&FilePath::parse("/a").unwrap())
        );
        assert_ne!(p.id(), FilePath::parse("/a/b/C.txt").unwrap().id());
        assert_eq!(p.id(), FilePath::parse("a/b/c.txt/").unwrap().id());
    }
}
