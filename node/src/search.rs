//! Search: every word of every text field of every user collection's records (files'
//! names and paths, their metadata, contacts, events, notes, mail headers), and of
//! each mail's body (read from its message: [`BODY`]), found by `GET /v1/search?q=`
//! and `hearth find`.
//!
//! The index is this device's, derived from the records and never synced: a sealed
//! tree ([`TREE`]) like every other, so nothing of it is readable at rest, and its keys
//! are keyed hashes (a word's key tells nothing of the word). It holds, per word and
//! record, a key alone (`p` + word + collection + record + the word's weight there:
//! a search ranks from keys, opening nothing); per record, its words with the fields
//! they are in, and its title (`d` + collection + record: what a change removes and a
//! hit shows); per collection, where in its change log the index stands (`l` +
//! collection). What the keys do show: how many records share a word, and whether it
//! is in a name-like field; never the word. A task ([`spawn`]) follows the
//! change log: each write (the owner's, a service's, a sync) is in the index a moment
//! later; a collection whose log cannot say what changed since (a new index, a log
//! that moved on) is indexed again whole, and `hearth check --repair` does that for
//! all.
//!
//! Words are what a person types: lower case, accents off (`Zoë` is `zoe`), split at
//! anything that is not a letter or a digit, two to 40 characters. A query finds the
//! records holding all its words (in any fields), best first: a word in a name, title,
//! summary, subject or path counts three times one elsewhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hearth_core::blobs::BlobHeads;
use hearth_core::collections::{CollectionError, Collections, LogPosition};
use hearth_core::store::{SealedBatch, SealedTree, Store, StoreError};
use hearth_protocol::{BlobId, CollectionName, RecordId};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use unicode_normalization::UnicodeNormalization;

use crate::Vault;

/// The sealed tree of the index.
pub const TREE: &str = "search";
/// The longest text of one value that is indexed (a long note's first 64 KiB).
const MAX_TEXT: usize = 64 << 10;
/// Words kept of one record.
const MAX_WORDS: usize = 4096;
/// Records written to the index in one batch while a collection is indexed whole.
const BATCH: usize = 1000;
/// Fields never indexed: ids, a card's or event's whole text (its fields are
/// indexed), blob ids, WebDAV properties, a folder's list of names (each entry is a
/// record of its own).
const SKIPPED: [&str; 7] = ["id", "uid", "vcard", "ical", "blob", "props", "entries"];
/// The fields a change's records are read without: the [`SKIPPED`] ones but `blob`
/// (a mail's body is read from it).
const NOT_READ: [&str; 6] = ["id", "uid", "vcard", "ical", "props", "entries"];
/// The field a mail's body is found in: the text of its message ([`crate::mail::body_text`]).
pub const BODY: &str = "body";
/// The most of a message read for its body.
const MAX_MESSAGE: usize = 1 << 20;
/// How often the follower looks whether the messages whose bodies were not here have
/// arrived (from another device).
const BODIES_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a search waits for the index to be free before it answers from the index
/// as it stands.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Fields whose words count three times, and that name a record ([`title`]).
const TITLES: [&str; 6] = [
    "name",
    "title",
    "summary",
    "subject",
    "path",
    "display_name",
];

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Collection(#[from] CollectionError),
    #[error("the node is stopping")]
    Stopped,
}

/// A record found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub collection: String,
    pub id: String,
    /// What the record is called, as it was indexed ([`title`]).
    pub title: Option<String>,
    /// The fields the words were found in (`emails.value`).
    pub fields: Vec<String>,
    /// Each word of the query (as [`query_words`] orders them) with the fields it was
    /// found in: a grant's search keeps a record only if every word is in a field it
    /// reads ([`weight`] scores them).
    pub by_word: Vec<Vec<String>>,
    pub score: u32,
}

/// The words of `text`, as they are indexed and looked for.
pub fn words(text: &str) -> Vec<String> {
    let plain: String = text
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    plain
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| (2..=40).contains(&w.chars().count()))
        .map(str::to_owned)
        .collect()
}

/// `text`'s first [`MAX_TEXT`] bytes, cut on a character.
fn cut(text: &str) -> &str {
    let end = (0..=text.len().min(MAX_TEXT))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// Each text of `record` with the path of its field (`emails.value`; list positions
/// are not part of it), leaving out [`SKIPPED`] fields and values that are blob ids.
fn texts(record: &Map<String, Value>) -> Vec<(String, &str)> {
    fn walk<'a>(value: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::String(s) => {
                let looks_like_blob = s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
                if !looks_like_blob {
                    out.push((path.to_owned(), cut(s)));
                }
            }
            Value::Number(n) if n.is_i64() || n.is_u64() => {}
            Value::Array(items) => items.iter().for_each(|v| walk(v, path, out)),
            Value::Object(map) => {
                for (key, value) in map {
                    if SKIPPED.contains(&key.as_str()) {
                        continue;
                    }
                    let inner = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(value, &inner, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (key, value) in record {
        if SKIPPED.contains(&key.as_str()) {
            continue;
        }
        walk(value, key, &mut out);
    }
    out
}

/// A record's words, each with the fields it is in.
/// The words of `record` (and of its mail's `body`, if it has one), each with the
/// fields it is in.
fn record_words(record: &Map<String, Value>, body: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut texts = texts(record);
    texts.extend(body.map(|b| (BODY.to_owned(), cut(b))));
    for (field, text) in texts {
        for word in words(text) {
            if out.len() >= MAX_WORDS && !out.contains_key(&word) {
                continue;
            }
            let fields = out.entry(word).or_default();
            if !fields.contains(&field) {
                fields.push(field.clone());
            }
        }
    }
    out
}

/// What a word found in `field` counts for.
pub fn weight(field: &str) -> u32 {
    let last = field.rsplit('.').next().unwrap_or(field);
    if TITLES.contains(&last) { 3 } else { 1 }
}

/// The index (cheap to clone).
#[derive(Clone)]
pub struct Index {
    store: Arc<Store>,
    tree: SealedTree,
    /// Held while the index changes: the follower and a search that catches up first
    /// never write it at once.
    updating: Arc<std::sync::Mutex<()>>,
    /// Set when the node stops: a collection being indexed whole stops between two
    /// records (it is indexed whole again next time: its place in the log is written
    /// last), so stopping never waits for a large vault's first indexing.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Reads mails' messages for their bodies (none: bodies are not indexed).
    bodies: Option<BlobHeads>,
    /// The last waiting mail [`Index::bodies_arrived`] looked at: the next call goes on
    /// after it (empty: from the first), so mails whose messages never come do not
    /// keep it from the others.
    bodies_after: Arc<std::sync::Mutex<Vec<u8>>>,
}

/// A mail record's body, as the index finds it.
enum Body {
    /// Not a mail, or one without a body or a message.
    None,
    Text(String),
    /// Its message is not on this device yet.
    Pending,
}

impl Index {
    pub fn open(store: Arc<Store>) -> Result<Self, StoreError> {
        let tree = store.tree(TREE)?;
        Ok(Index {
            store,
            tree,
            updating: Arc::default(),
            stopping: Arc::default(),
            bodies: None,
            bodies_after: Arc::default(),
        })
    }

    /// The index with mails' bodies: each mail's message is read (its first
    /// [`MAX_MESSAGE`] bytes) for the text a person reads in it.
    pub fn with_bodies(mut self, heads: BlobHeads) -> Self {
        self.bodies = Some(heads);
        self
    }

    /// The body of `record` of `name`, if it is a mail and this index reads bodies.
    fn body(&self, name: &CollectionName, record: &Map<String, Value>) -> Body {
        let (Some(heads), true) = (&self.bodies, crate::mail::is_mail(name)) else {
            return Body::None;
        };
        let Some(blob) = record
            .get("blob")
            .and_then(Value::as_str)
            .and_then(|b| BlobId::parse(b).ok())
        else {
            return Body::None;
        };
        match heads.read_head(blob, MAX_MESSAGE) {
            Ok(Some(bytes)) => crate::mail::body_text(&bytes).map_or(Body::None, Body::Text),
            Ok(None) => Body::Pending,
            Err(e) => {
                // `hearth check` tells of a damaged blob; the record's other words are
                // still found.
                tracing::warn!(collection = %name, error = %e, "a message could not be read for its body");
                Body::None
            }
        }
    }

    /// Stops any indexing under way, and all later ones (the node is stopping).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn key(&self, domain: &str, name: &str) -> [u8; 16] {
        let full = self.store.name_key(domain, name);
        let mut key = [0u8; 16];
        key.copy_from_slice(&full[..16]);
        key
    }

    fn word_key(&self, word: &str) -> [u8; 16] {
        self.key("search word", word)
    }

    fn collection_key(&self, name: &CollectionName) -> [u8; 16] {
        self.key("search collection", name.as_str())
    }

    fn record_key(&self, name: &CollectionName, id: &str) -> [u8; 16] {
        self.key("search record", &format!("{name}\0{id}"))
    }

    /// Where collection `name`'s index stands in its change log, if it is indexed.
    pub fn position(&self, name: &CollectionName) -> Result<Option<LogPosition>, StoreError> {
        let mut key = vec![b'l'];
        key.extend(self.collection_key(name));
        Ok(self.tree.get(&key)?.and_then(|value| {
            let value: Value = serde_json::from_slice(&value).ok()?;
            Some(LogPosition {
                epoch: value["epoch"].as_u64()?,
                seq: value["seq"].as_u64()?,
            })
        }))
    }

    /// The collections indexed, by name.
    pub fn indexed(&self) -> Result<Vec<CollectionName>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(b"l") {
            let (_, value) = entry?;
            if let Some(name) = serde_json::from_slice::<Value>(&value)
                .ok()
                .and_then(|v| CollectionName::parse(v["name"].as_str()?).ok())
            {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Puts into `batch` what makes record `id` of `name` indexed as `record` (or
    /// not at all, with `None`).
    fn record_into(
        &self,
        batch: &mut SealedBatch,
        name: &CollectionName,
        id: &str,
        record: Option<&Map<String, Value>>,
    ) -> Result<(), StoreError> {
        let mut at = [0u8; 32];
        at[..16].copy_from_slice(&self.collection_key(name));
        at[16..].copy_from_slice(&self.record_key(name, id));
        let listed = [&b"d"[..], &at].concat();
        if let Some(old) = self.tree.get(&listed)? {
            for (word_key, weight) in listed_words(&old) {
                self.tree
                    .batch_remove(batch, &posting_key(&word_key, &at, weight));
            }
        }
        let body = record.map_or(Body::None, |r| self.body(name, r));
        // A mail whose message is not here yet is noted, to be indexed again when it
        // is ([`Index::bodies_arrived`]).
        let pending = [&b"b"[..], &at].concat();
        match (&body, crate::mail::is_mail(name) && self.bodies.is_some()) {
            (Body::Pending, _) => {
                let value = json!({"c": name.as_str(), "i": id});
                self.tree
                    .batch_insert(batch, &pending, value.to_string().as_bytes());
            }
            (_, true) => self.tree.batch_remove(batch, &pending),
            (_, false) => {}
        }
        let text = match &body {
            Body::Text(text) => Some(text.as_str()),
            Body::None | Body::Pending => None,
        };
        let words = match record {
            Some(record) => record_words(record, text),
            None => BTreeMap::new(),
        };
        if words.is_empty() {
            self.tree.batch_remove(batch, &listed);
            return Ok(());
        }
        let mut entry = Map::new();
        for (word, fields) in words {
            let word_key = self.word_key(&word);
            let weight = fields.iter().map(|f| weight(f)).max().unwrap_or(1) as u8;
            self.tree
                .batch_insert(batch, &posting_key(&word_key, &at, weight), b"");
            entry.insert(hex(&word_key), json!({"s": weight, "f": fields}));
        }
        let title = record.and_then(title);
        let value = json!({"c": name.as_str(), "i": id, "t": title, "w": entry});
        self.tree
            .batch_insert(batch, &listed, value.to_string().as_bytes());
        Ok(())
    }

    fn position_into(&self, batch: &mut SealedBatch, name: &CollectionName, at: LogPosition) {
        let mut key = vec![b'l'];
        key.extend(self.collection_key(name));
        let value = json!({"name": name.as_str(), "epoch": at.epoch, "seq": at.seq});
        self.tree
            .batch_insert(batch, &key, value.to_string().as_bytes());
    }

    /// Takes the changes of `name` up to `at` into the index (each record as it is
    /// now, or gone), with the position, in one batch.
    pub fn apply(
        &self,
        name: &CollectionName,
        changes: &[(String, Option<Map<String, Value>>)],
        at: LogPosition,
    ) -> Result<(), StoreError> {
        let mut batch = SealedBatch::default();
        for (id, record) in changes {
            self.record_into(&mut batch, name, id, record.as_ref())?;
        }
        self.position_into(&mut batch, name, at);
        self.tree.apply(batch)
    }

    /// Removes collection `name` from the index.
    pub fn forget(&self, name: &CollectionName) -> Result<(), StoreError> {
        let mut prefix = vec![b'd'];
        prefix.extend(self.collection_key(name));
        let mut batch = SealedBatch::default();
        let mut pending = 0;
        for entry in self.tree.scan_prefix(&prefix) {
            let (key, listed) = entry?;
            let mut at = [0u8; 32];
            at.copy_from_slice(&key[1..]);
            for (word_key, weight) in listed_words(&listed) {
                self.tree
                    .batch_remove(&mut batch, &posting_key(&word_key, &at, weight));
            }
            self.tree.batch_remove(&mut batch, &key);
            pending += 1;
            if pending == BATCH {
                self.tree.apply(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        let mut key = vec![b'l'];
        key.extend(self.collection_key(name));
        self.tree.batch_remove(&mut batch, &key);
        self.tree.apply(batch)
    }

    /// Indexes collection `name` whole, as it is at its log's end now; returns how
    /// many records.
    pub fn rebuild(
        &self,
        collections: &Collections,
        name: &CollectionName,
    ) -> Result<usize, SearchError> {
        self.forget(name)?;
        // The position first: a change made while the records are read is in the log
        // after it, and taken in again by the next catch-up.
        let at = collections.log_position(name)?;
        let mut batch = SealedBatch::default();
        let mut pending = 0;
        let mut count = 0;
        let mut failed = None;
        let mut stopped = false;
        collections.page(name, None, usize::MAX, |record| {
            if failed.is_some() || stopped {
                return None;
            }
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                stopped = true;
                return None;
            }
            if let Value::Object(record) = &record
                && let Some(id) = record.get("id").and_then(Value::as_str)
            {
                if let Err(e) = self.record_into(&mut batch, name, id, Some(record)) {
                    failed = Some(e);
                    return None;
                }
                pending += 1;
                count += 1;
                if pending == BATCH {
                    if let Err(e) = self.tree.apply(std::mem::take(&mut batch)) {
                        failed = Some(e);
                    }
                    pending = 0;
                }
            }
            None
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        if stopped {
            // What was taken in stays; without its place in the log, the collection
            // is indexed whole again next time.
            self.tree.apply(batch)?;
            return Err(SearchError::Stopped);
        }
        self.position_into(&mut batch, name, at);
        self.tree.apply(batch)?;
        Ok(count)
    }

    /// Brings collection `name`'s index up to its log's end: the records changed since
    /// its position, or the whole collection when the log cannot say.
    pub fn catch_up(
        &self,
        collections: &Collections,
        name: &CollectionName,
    ) -> Result<(), SearchError> {
        let _one = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        self.catch_up_held(collections, name)
    }

    fn catch_up_held(
        &self,
        collections: &Collections,
        name: &CollectionName,
    ) -> Result<(), SearchError> {
        let position = self.position(name)?;
        let changes = match position {
            Some(at) => collections.touched_after(name, at, &NOT_READ)?,
            None => None,
        };
        match changes {
            Some((at, changes)) => {
                if !changes.is_empty() || position != Some(at) {
                    self.apply(name, &changes, at)?;
                }
            }
            None => {
                let count = self.rebuild(collections, name)?;
                tracing::debug!(collection = %name, records = count, "indexed for search");
            }
        }
        Ok(())
    }

    /// Indexes again the mails whose messages were not on this device when they were
    /// indexed and are now (a sync brings records before their blobs), looking at
    /// [`BATCH`] waiting mails a call, each call after the last; returns how many.
    pub fn bodies_arrived(&self, collections: &Collections) -> Result<usize, SearchError> {
        self.bodies_arrived_among(collections, BATCH)
    }

    fn bodies_arrived_among(
        &self,
        collections: &Collections,
        among: usize,
    ) -> Result<usize, SearchError> {
        use std::ops::Bound;
        let Some(heads) = &self.bodies else {
            return Ok(0);
        };
        let _one = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let mut after = self.bodies_after.lock().unwrap_or_else(|e| e.into_inner());
        let from = match after.is_empty() {
            true => b"b".to_vec(),
            false => after.clone(),
        };
        let waiting = (Bound::Excluded(from), Bound::Excluded(b"c".to_vec()));
        let mut batch = SealedBatch::default();
        let mut count = 0;
        let mut looked = 0;
        let mut last = Vec::new();
        for entry in self.tree.scan_range(waiting).take(among) {
            let (key, value) = entry?;
            looked += 1;
            last.clone_from(&key);
            let noted: Value = serde_json::from_slice(&value).unwrap_or(Value::Null);
            let (Some(name), Some(id)) = (
                noted["c"]
                    .as_str()
                    .and_then(|c| CollectionName::parse(c).ok()),
                noted["i"].as_str().and_then(|i| RecordId::parse(i).ok()),
            ) else {
                self.tree.batch_remove(&mut batch, &key);
                continue;
            };
            let record = collections.get(&name, &id)?;
            let record = record.as_ref().and_then(Value::as_object);
            let here = match record.and_then(|r| r.get("blob")?.as_str()) {
                Some(blob) => BlobId::parse(blob).map_or(Ok(true), |b| heads.has(b))?,
                // Gone, or it names no message now: indexed as it is.
                None => true,
            };
            if here {
                self.record_into(&mut batch, &name, id.as_str(), record)?;
                count += 1;
            }
        }
        self.tree.apply(batch)?;
        // At the end, the next call starts from the first again.
        *after = if looked < among { Vec::new() } else { last };
        Ok(count)
    }

    /// Brings every user collection's index up to date and forgets the collections
    /// that are gone. (A search does this first, so it sees its own writes; when
    /// nothing changed it costs a read of each collection's log position.)
    pub fn catch_up_all(&self, collections: &Collections) -> Result<(), SearchError> {
        let _one = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        self.catch_up_all_held(collections)
    }

    /// What a search does first: [`Index::catch_up_all`], unless the index is being
    /// written (the follower taking in a large import, a first indexing of a large
    /// vault) for longer than `patience`; then the search answers from the index as it
    /// stands rather than wait minutes. Returns whether it caught up.
    pub fn catch_up_before_search(
        &self,
        collections: &Collections,
        patience: std::time::Duration,
    ) -> Result<bool, SearchError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.updating.try_lock() {
                Ok(_one) => {
                    self.catch_up_all_held(collections)?;
                    return Ok(true);
                }
                Err(std::sync::TryLockError::Poisoned(e)) => {
                    let _one = e.into_inner();
                    self.catch_up_all_held(collections)?;
                    return Ok(true);
                }
                Err(std::sync::TryLockError::WouldBlock)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
            }
        }
    }

    fn catch_up_all_held(&self, collections: &Collections) -> Result<(), SearchError> {
        let names: Vec<CollectionName> = collections
            .names()?
            .into_iter()
            .filter(|n| !n.is_system())
            .collect();
        for name in &names {
            self.catch_up_held(collections, name)?;
        }
        for gone in self.indexed()? {
            if !names.contains(&gone) {
                self.forget(&gone)?;
            }
        }
        Ok(())
    }

    /// Throws the whole index away (even values that no longer open) and makes it again
    /// from the records: `hearth check --repair`. Returns how many records.
    pub fn rebuild_all(&self, collections: &Collections) -> Result<usize, SearchError> {
        let _one = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        self.tree.clear()?;
        let mut count = 0;
        for name in collections.names()?.into_iter().filter(|n| !n.is_system()) {
            count += self.rebuild(collections, &name)?;
        }
        Ok(count)
    }

    /// What a person's search runs: the query read ([`SearchError::BadQuery`] before
    /// anything else is done), the index caught up ([`Index::catch_up_before_search`],
    /// waiting at most [`PATIENCE`]), then [`Index::search`].
    pub fn find(
        &self,
        collections: &Collections,
        query: &str,
        keep: &dyn Fn(&str) -> bool,
        limit: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        query_words(query)?;
        self.catch_up_before_search(collections, PATIENCE)?;
        self.search(query, keep, limit)
    }

    /// The records holding every word of `query`, in the collections `keep` keeps,
    /// best first, at most `limit`. The ranking reads only the index's keys (a word's
    /// records and whether it is in a name-like field); only the records shown are
    /// opened.
    pub fn search(
        &self,
        query: &str,
        keep: &dyn Fn(&str) -> bool,
        limit: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        let wanted = query_words(query)?;
        let kept: HashSet<[u8; 16]> = self
            .indexed()?
            .iter()
            .filter(|name| keep(name.as_str()))
            .map(|name| self.collection_key(name))
            .collect();
        // Each word's records (collection and record keys) with its weight there.
        let mut per_word: Vec<HashMap<[u8; 32], u32>> = Vec::new();
        for word in &wanted {
            let word_key = self.word_key(word);
            let prefix = [&b"p"[..], &word_key].concat();
            let mut records = HashMap::new();
            for key in self.tree.keys_with_prefix(&prefix) {
                let key = key?;
                if key.len() != 1 + 16 + 32 + 1 || !kept.contains(&key[17..33]) {
                    continue;
                }
                let mut at = [0u8; 32];
                at.copy_from_slice(&key[17..49]);
                records.insert(at, u32::from(key[49]));
            }
            per_word.push(records);
        }
        per_word.sort_by_key(HashMap::len);
        let mut scored: Vec<([u8; 32], u32)> = Vec::new();
        if let Some((first, rest)) = per_word.split_first() {
            for (at, weight) in first {
                let mut score = *weight;
                if rest.iter().all(|other| match other.get(at) {
                    Some(w) => {
                        score += w;
                        true
                    }
                    None => false,
                }) {
                    scored.push((*at, score));
                }
            }
        }
        scored.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scored.truncate(limit);
        let wanted_keys: Vec<String> = wanted.iter().map(|w| hex(&self.word_key(w))).collect();
        let mut hits = Vec::with_capacity(scored.len());
        for (at, score) in scored {
            let Some(listed) = self.tree.get(&[&b"d"[..], &at].concat())? else {
                continue;
            };
            let Ok(listed) = serde_json::from_slice::<Value>(&listed) else {
                continue;
            };
            let (Some(c), Some(i)) = (listed["c"].as_str(), listed["i"].as_str()) else {
                continue;
            };
            let by_word: Vec<Vec<String>> = wanted_keys
                .iter()
                .map(|key| {
                    let found = listed["w"][key]["f"].as_array().into_iter().flatten();
                    found
                        .filter_map(|f| f.as_str().map(str::to_owned))
                        .collect()
                })
                .collect();
            let mut fields: Vec<String> = Vec::new();
            for f in by_word.iter().flatten() {
                if !fields.contains(f) {
                    fields.push(f.clone());
                }
            }
            // The fields that weigh most first (a name before an email).
            fields.sort_by(|a, b| weight(b).cmp(&weight(a)).then_with(|| a.cmp(b)));
            hits.push(Hit {
                collection: c.to_owned(),
                id: i.to_owned(),
                title: listed["t"].as_str().map(str::to_owned),
                fields,
                by_word,
                score,
            });
        }
        hits.sort_by(|a, b| {
            best_first(
                (a.score, &a.collection, &a.id),
                (b.score, &b.collection, &b.id),
            )
        });
        Ok(hits)
    }
}

/// The order hits are answered in: the higher score first, then by collection and id
/// (each given as `(score, collection, id)`).
pub fn best_first(a: (u32, &str, &str), b: (u32, &str, &str)) -> std::cmp::Ordering {
    b.0.cmp(&a.0)
        .then_with(|| a.1.cmp(b.1))
        .then_with(|| a.2.cmp(b.2))
}

/// The distinct words of a query, or why it has none to look for.
fn query_words(query: &str) -> Result<Vec<String>, SearchError> {
    let mut wanted: Vec<String> = words(query);
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Err(SearchError::BadQuery(
            "nothing to look for: give a word of two letters or digits or more".into(),
        ));
    }
    if wanted.len() > 16 {
        return Err(SearchError::BadQuery("at most 16 words a search".into()));
    }
    Ok(wanted)
}

/// A posting's key: `p`, the word, the collection and record, the word's weight there.
fn posting_key(word_key: &[u8; 16], at: &[u8; 32], weight: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 16 + 32 + 1);
    key.push(b'p');
    key.extend_from_slice(word_key);
    key.extend_from_slice(at);
    key.push(weight);
    key
}

/// The words (keys and weights) a record's `d` entry lists.
fn listed_words(listed: &[u8]) -> Vec<([u8; 16], u8)> {
    let Ok(value) = serde_json::from_slice::<Value>(listed) else {
        return Vec::new();
    };
    value["w"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(word, entry)| {
            let bytes = unhex(word)?;
            let weight = u8::try_from(entry["s"].as_u64()?).ok()?;
            Some((bytes, weight))
        })
        .collect()
}

fn hex(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl From<SearchError> for crate::api::ApiError {
    fn from(e: SearchError) -> Self {
        use hearth_protocol::api::ErrorCode;
        match e {
            SearchError::BadQuery(m) => crate::api::ApiError::new(ErrorCode::BadRequest, m),
            SearchError::Store(e) => e.into(),
            SearchError::Collection(e) => e.into(),
            SearchError::Stopped => {
                crate::api::ApiError::new(ErrorCode::Unavailable, "the node is stopping")
            }
        }
    }
}

/// What a record is called: a file's path, else its name, title, summary or subject
/// (the first it has), at most 120 characters; else `None`.
pub fn title(record: &Map<String, Value>) -> Option<String> {
    // A file record (it has a `kind` and a `path`) is called by its path; the path
    // of anything else names no one.
    let file_path = record.get("kind").and(record.get("path"));
    file_path
        .into_iter()
        .chain(
            TITLES
                .iter()
                .filter(|f| **f != "path")
                .filter_map(|f| record.get(*f)),
        )
        .find_map(|v| v.as_str().filter(|t| !t.trim().is_empty()))
        .map(|t| t.chars().take(120).collect())
}

/// A thread of its own for the index's work, at the lowest CPU priority the system
/// gives a thread (nice 19, on Linux): taking in an import's records must not slow the
/// import, nor a request, on a small machine; the index catches up when the machine
/// is free (a search waits for it at most [`PATIENCE`]). It ends when this is dropped.
struct Background {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Background {
    fn start() -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("hearth-search".into())
            .spawn(move || {
                lowest_priority();
                for job in queue {
                    // A job that panics answers nothing (its caller hears so); the
                    // next one still runs.
                    drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
                }
            })?;
        Ok(Background { jobs })
    }

    /// Runs `work` on the thread and waits for its answer: `None` if it panicked.
    async fn run<R: Send + 'static>(&self, work: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Box::new(move || drop(answer.send(work()))))
            .ok()?;
        answered.await.ok()
    }
}

/// Lowers the calling thread's CPU priority to the least (its nice value to 19).
#[cfg(target_os = "linux")]
fn lowest_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; the thread
    // names itself, so the id is alive.
    let set = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if set != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "the search thread keeps its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lowest_priority() {}

/// How long the follower gathers changes before it indexes them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// Follows the change log into the index until `stop`: everything at start, then each
/// collection a change names (and everything again when changes came too fast to
/// follow one by one).
pub fn spawn(vault: Arc<Vault>) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let mut changes = vault.collections.subscribe();
    let task = tokio::spawn(async move {
        let background = match Background::start() {
            Ok(background) => background,
            Err(e) => {
                tracing::warn!(error = %e, "the search index cannot follow changes (no thread)");
                return;
            }
        };
        let mut all = true;
        let mut named: HashSet<CollectionName> = HashSet::new();
        let mut bodies = false;
        let mut next_bodies = tokio::time::Instant::now() + BODIES_RETRY;
        loop {
            let work_vault = vault.clone();
            let work_named: Vec<CollectionName> = named.drain().collect();
            let work_all = std::mem::take(&mut all);
            let work_bodies = std::mem::take(&mut bodies);
            let done = background
                .run(move || {
                    let index = &work_vault.search;
                    if work_all {
                        index.catch_up_all(&work_vault.collections)?;
                    } else {
                        work_named
                            .iter()
                            .filter(|n| !n.is_system())
                            .try_for_each(|n| index.catch_up(&work_vault.collections, n))?;
                    }
                    if work_bodies {
                        index.bodies_arrived(&work_vault.collections)?;
                    }
                    Ok(())
                })
                .await;
            match done {
                Some(Ok(())) => {}
                Some(Err(SearchError::Stopped)) => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the search index could not follow a change")
                }
                None => tracing::warn!("the search index's work failed"),
            }
            // The system's collections are not indexed: their changes wake nothing.
            while named.is_empty() && !all && !bodies {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep_until(next_bodies) => {
                        bodies = true;
                        next_bodies = tokio::time::Instant::now() + BODIES_RETRY;
                    }
                    changed = changes.recv() => match changed {
                        Ok(changed) if changed.collection.is_system() => {}
                        Ok(changed) => { named.insert(changed.collection); }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => all = true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
            // Changes come in runs (an upload of many files, an import): gathered a
            // moment, a run is indexed in a few rounds rather than one a change. A
            // search catches up first, so it still finds what was just written.
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(GATHER) => {}
            }
            // Whatever else arrived meanwhile goes in the same round.
            loop {
                match changes.try_recv() {
                    Ok(changed) if changed.collection.is_system() => {}
                    Ok(changed) => {
                        named.insert(changed.collection);
                    }
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => all = true,
                    Err(_) => break,
                }
            }
        }
    });
    (stop_tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::TestVault;
    use hearth_protocol::RecordId;

    fn obj(v: Value) -> Map<String, Value> {
        let Value::Object(m) = v else { unreachable!() };
        m
    }

    /// A vault's store, its collections and an index of them; `put` writes a record.
    struct Indexed {
        c: Collections,
        index: Index,
        _vault: TestVault,
    }

    impl Indexed {
        fn new() -> Self {
            let vault = TestVault::new();
            Indexed {
                c: Collections::open(vault.store.clone(), [1; 16]).unwrap(),
                index: Index::open(vault.store.clone()).unwrap(),
                _vault: vault,
            }
        }

        fn put(&self, collection: &str, id: &str, record: Value) {
            let name = CollectionName::parse(collection).unwrap();
            self.c
                .put(&name, &RecordId::parse(id).unwrap(), &obj(record))
                .unwrap();
        }
    }

    fn found(index: &Index, q: &str, only: Option<&str>) -> Vec<String> {
        index
            .search(q, &|c| only.is_none_or(|o| o == c), 50)
            .unwrap()
            .into_iter()
            .map(|h| format!("{}/{}", h.collection, h.id))
            .collect()
    }

    fn message(subject: &str, text: &str) -> bytes::Bytes {
        format!(
            "From: Ada <ada@example.org>\r\nSubject: {subject}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        )
        .into_bytes()
        .into()
    }

    /// A mail's body is found (as field `body`) through its message; a mail whose
    /// message is not on this device yet is found by its headers, and by its body once
    /// the message is here; a record of another collection naming a message has no body.
    #[tokio::test]
    async fn a_mails_body_is_found_once_its_message_is_here() {
        use hearth_core::blobs::Blobs;
        let vault = TestVault::new();
        let dir = vault.home().blobs_dir();
        let blobs = Blobs::open(dir, vault.store.clone(), vault.keys.clone()).unwrap();
        let t = Indexed {
            c: Collections::open(vault.store.clone(), [1; 16]).unwrap(),
            index: Index::open(vault.store.clone())
                .unwrap()
                .with_bodies(blobs.heads()),
            _vault: vault,
        };
        let here = message(
            "Engines",
            "The analytical engine weaves algebraic patterns.",
        );
        let late = message("Looms", "Jacquard cards, punched for brocade.");
        let other = t._vault.other_device();
        let other_blobs = Blobs::open(
            other.home().blobs_dir(),
            other.store.clone(),
            other.keys.clone(),
        )
        .unwrap();
        let late_id = other_blobs
            .put_many(vec![late.clone()], 1 << 20)
            .await
            .unwrap()[0]
            .id;
        let here_id = blobs.put_many(vec![here.clone()], 1 << 20).await.unwrap()[0].id;
        t.put(
            "mail",
            "m1",
            json!({"subject": "Engines", "blob": here_id.to_string()}),
        );
        t.put(
            "mail",
            "m2",
            json!({"subject": "Looms", "blob": late_id.to_string()}),
        );
        t.put(
            "notes",
            "n1",
            json!({"title": "A note", "blob": here_id.to_string()}),
        );
        t.index.catch_up_all(&t.c).unwrap();
        assert_eq!(found(&t.index, "algebraic patterns", None), ["mail/m1"]);
        let hit = &t.index.search("engine weaves", &|_| true, 5).unwrap()[0];
        assert_eq!(
            (hit.fields.clone(), hit.by_word.clone()),
            (vec!["body".to_owned()], vec![vec!["body".to_owned()]; 2])
        );
        assert_eq!(found(&t.index, "looms", None), ["mail/m2"]);
        assert!(found(&t.index, "brocade", None).is_empty());
        assert_eq!(t.index.bodies_arrived(&t.c).unwrap(), 0, "still not here");
        blobs.put_many(vec![late], 1 << 20).await.unwrap();
        assert_eq!(t.index.bodies_arrived(&t.c).unwrap(), 1);
        assert_eq!(found(&t.index, "jacquard brocade", None), ["mail/m2"]);
        assert_eq!(
            t.index.bodies_arrived(&t.c).unwrap(),
            0,
            "nothing waits any more"
        );
        // Mails whose messages never come do not keep the others waiting: each look
        // goes on after the last.
        let more = message("Cards", "Punched cards for the mill.");
        let more_id = other_blobs
            .put_many(vec![more.clone()], 1 << 20)
            .await
            .unwrap()[0]
            .id;
        for i in 0..5 {
            let never = BlobId(*blake3::hash(format!("never {i}").as_bytes()).as_bytes());
            let record = json!({"subject": "Gone", "blob": never.to_string()});
            t.put("mail", &format!("n{i}"), record);
        }
        t.put(
            "mail",
            "m3",
            json!({"subject": "Cards", "blob": more_id.to_string()}),
        );
        t.index.catch_up_all(&t.c).unwrap();
        blobs.put_many(vec![more], 1 << 20).await.unwrap();
        let found_within: usize = (0..6)
            .map(|_| t.index.bodies_arrived_among(&t.c, 1).unwrap())
            .sum();
        assert_eq!(
            found_within, 1,
            "six waiting, one looked at a call: m3 among them"
        );
        assert_eq!(found(&t.index, "mill", None), ["mail/m3"]);
        // Indexed whole again, the same.
        let again = Index::open(t._vault.store.clone())
            .unwrap()
            .with_bodies(blobs.heads());
        again.rebuild_all(&t.c).unwrap();
        assert_eq!(found(&again, "brocade", None), ["mail/m2"]);
        assert_eq!(found(&again, "algebraic", None), ["mail/m1"]);
    }

    /// The follower's work runs on a thread at the lowest priority; a job that panics
    /// answers nothing, and the next one still runs.
    #[tokio::test]
    async fn the_index_works_on_a_thread_of_the_lowest_priority() {
        let background = Background::start().unwrap();
        #[cfg(target_os = "linux")]
        {
            // SAFETY: plain integers in and out, of the calling thread.
            let nice = background
                .run(|| unsafe {
                    libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
                })
                .await;
            assert_eq!(nice, Some(19));
        }
        assert_eq!(background.run(|| -> u8 { panic!("a bad job") }).await, None);
        assert_eq!(background.run(|| 7).await, Some(7));
    }

    /// The index follows every kind of change through the change log, finds records
    /// holding all the words, names first, and is made again whole when it has no
    /// place in the log (a new index) with the same answers.
    #[test]
    fn the_index_follows_changes_and_ranks_names_first() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let index = Index::open(vault.store.clone()).unwrap();
        let contacts = CollectionName::parse("contacts").unwrap();
        let notes = CollectionName::parse("notes").unwrap();
        let put = |name: &CollectionName, id: &str, v: Value| {
            c.put(name, &RecordId::parse(id).unwrap(), &obj(v)).unwrap();
        };
        put(
            &contacts,
            "ada",
            json!({"name": "Ada Lovelace", "city": "London"}),
        );
        put(
            &contacts,
            "bob",
            json!({"name": "Bob", "notes": "met Ada in London"}),
        );
        put(
            &notes,
            "n1",
            json!({"title": "Groceries", "body": "apples, Lovelace biscuits"}),
        );
        index.catch_up_all(&c).unwrap();
        assert_eq!(found(&index, "ada", None), ["contacts/ada", "contacts/bob"]);
        assert_eq!(
            found(&index, "London ADA", None),
            ["contacts/ada", "contacts/bob"]
        );
        assert_eq!(
            found(&index, "lovelace", None),
            ["contacts/ada", "notes/n1"]
        );
        assert_eq!(found(&index, "lovelace", Some("notes")), ["notes/n1"]);
        assert!(found(&index, "ada paris", None).is_empty());
        let hit = &index.search("biscuits", &|_| true, 5).unwrap()[0];
        assert_eq!(
            (hit.fields.as_slice(), hit.score),
            (&["body".to_owned()][..], 1)
        );
        assert!(matches!(
            index.search(" - ", &|_| true, 5),
            Err(SearchError::BadQuery(_))
        ));

        // A change, a removal, a new record: followed from the log.
        c.patch(
            &contacts,
            &RecordId::parse("ada").unwrap(),
            &obj(json!({"city": "Paris"})),
        )
        .unwrap();
        c.remove(&contacts, &RecordId::parse("bob").unwrap())
            .unwrap();
        put(&notes, "n2", json!({"title": "Trip to Paris"}));
        index.catch_up_all(&c).unwrap();
        assert_eq!(found(&index, "paris", None), ["notes/n2", "contacts/ada"]);
        assert!(found(&index, "london", None).is_empty(), "old words go");
        assert_eq!(found(&index, "ada", None), ["contacts/ada"]);

        // A new index (no place in the log): made whole, same answers.
        index.forget(&contacts).unwrap();
        index.forget(&notes).unwrap();
        assert!(found(&index, "paris", None).is_empty());
        index.catch_up_all(&c).unwrap();
        assert_eq!(found(&index, "paris", None), ["notes/n2", "contacts/ada"]);

        // A collection removed leaves the index.
        c.remove(&notes, &RecordId::parse("n1").unwrap()).unwrap();
        c.remove(&notes, &RecordId::parse("n2").unwrap()).unwrap();
        index.catch_up_all(&c).unwrap();
        assert_eq!(found(&index, "paris", None), ["contacts/ada"]);
    }

    /// A search waits a moment for the index, then answers from it as it stands: a
    /// long indexing never keeps a person waiting for minutes.
    #[test]
    fn a_search_does_not_wait_for_a_long_indexing() {
        let ix = Indexed::new();
        let (c, index) = (&ix.c, &ix.index);
        ix.put("notes", "a", json!({"title": "kept"}));
        assert!(
            index
                .catch_up_before_search(c, std::time::Duration::from_millis(50))
                .unwrap()
        );
        ix.put("notes", "b", json!({"title": "later"}));
        let busy = index.updating.clone();
        let held = busy.lock().unwrap();
        let started = std::time::Instant::now();
        assert!(
            !index
                .catch_up_before_search(c, std::time::Duration::from_millis(100))
                .unwrap()
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(
            found(index, "kept", None),
            ["notes/a"],
            "the index as it stands"
        );
        assert!(found(index, "later", None).is_empty());
        drop(held);
        assert!(
            index
                .catch_up_before_search(c, std::time::Duration::from_millis(100))
                .unwrap()
        );
        assert_eq!(found(index, "later", None), ["notes/b"]);
    }

    /// `hearth check --repair`'s promise: an index whose values no longer open (a
    /// damaged disk, an altered file) is made again from the records.
    #[test]
    fn a_damaged_index_is_made_again_from_the_records() {
        let ix = Indexed::new();
        let (c, index) = (&ix.c, &ix.index);
        ix.put("notes", "a", json!({"title": "kumquat"}));
        index.catch_up_all(c).unwrap();
        assert_eq!(found(index, "kumquat", None), ["notes/a"]);
        // Every record entry overwritten with bytes that are no sealed value.
        let raw = index.tree.raw();
        let keys: Vec<_> = raw.scan_prefix(b"d").keys().map(Result::unwrap).collect();
        assert!(!keys.is_empty());
        for key in keys {
            raw.insert(key, &b"not sealed"[..]).unwrap();
        }
        assert!(
            index.search("kumquat", &|_| true, 5).is_err(),
            "the damage is seen"
        );
        assert_eq!(index.rebuild_all(c).unwrap(), 1);
        assert_eq!(found(index, "kumquat", None), ["notes/a"]);
    }

    /// A node that stops does not wait for a collection being indexed whole: the
    /// indexing stops between two records and is done again whole next time.
    #[test]
    fn indexing_stops_when_the_node_does() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let notes = CollectionName::parse("notes").unwrap();
        for i in 0..20 {
            c.put(
                &notes,
                &RecordId::parse(&format!("n{i}")).unwrap(),
                &obj(json!({"title": format!("note {i}")})),
            )
            .unwrap();
        }
        let index = Index::open(vault.store.clone()).unwrap();
        index.stop();
        assert!(matches!(index.catch_up_all(&c), Err(SearchError::Stopped)));
        assert_eq!(
            index.position(&notes).unwrap(),
            None,
            "to be done whole again"
        );
        let again = Index::open(vault.store.clone()).unwrap();
        again.catch_up_all(&c).unwrap();
        assert_eq!(again.search("note", &|_| true, 50).unwrap().len(), 20);
    }

    #[test]
    fn words_are_what_a_person_types() {
        assert_eq!(
            words("Zoë O'Brien <zoe.obrien@example.org>, +44 20"),
            [
                "zoe", "brien", "zoe", "obrien", "example", "org", "44", "20"
            ]
        );
        assert_eq!(words("ÉCOLE Straße"), ["ecole", "straße"]);
        assert!(words("a - b").is_empty());
    }

    #[test]
    fn a_record_gives_its_texts_not_its_ids_or_raw_text() {
        let record = json!({
            "id": "ada",
            "name": "Ada Lovelace",
            "emails": [{"value": "ada@example.org", "type": "work"}],
            "vcard": "BEGIN:VCARD\nFN:Hidden Twice\nEND:VCARD",
            "photo": {"blob": "a".repeat(64)},
            "n": 3,
        });
        let Value::Object(record) = record else {
            unreachable!()
        };
        let found = record_words(&record, None);
        assert_eq!(found["ada"], ["emails.value", "name"]);
        assert_eq!(found["work"], ["emails.type"]);
        assert!(!found.contains_key("hidden"), "{found:?}");
        assert!(!found.keys().any(|w| w.starts_with("aaaa")), "{found:?}");
        assert_eq!(weight("name"), 3);
        assert_eq!(weight("emails.value"), 1);
        assert_eq!(weight("meta.title"), 3);
    }
}
