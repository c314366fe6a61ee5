//! The commit record (`hearth_protocol::commit`): what this device last committed,
//! kept outside the store so that a store that went back in time is noticed.
//!
//! In: after every group commit's fsync, the commit number and where every collection
//! stood (its generation and heads, noted by `collections` as it persists). Out, at
//! start: the record to check the store against — a store whose commit number is
//! below the record's went back (an older copy of `store/`, a truncated or damaged
//! log) and is refused; each collection is checked against its mark when it is first
//! loaded, so one that lost changes is refused too, without loading every collection
//! at start. A whole HOME restored together (store and record) cannot be told from
//! the real thing on this device alone: only another device still has what came after.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hearth_protocol::commit::{
    COMMIT_RECORD_DOMAIN, CollectionMark, CommitRecord, MAX_RECORD, heads_digest,
};
use hearth_protocol::seal::{Binding, NONCE_LEN};
use hearth_protocol::sync::parts_digest;
use rand::RngCore;

use crate::keys::VaultKeys;

/// What the record at start says, and what this run has noted since.
pub struct Ledger {
    /// The marks of the record read at start (empty for a new record or an accepted
    /// rollback): every collection loaded is checked against its mark.
    baseline: BTreeMap<[u8; 32], CollectionMark>,
    /// The marks to write at the next commit: the baseline, updated as collections
    /// persist changes.
    marks: Mutex<BTreeMap<[u8; 32], CollectionMark>>,
    /// Collections kept in parts, by name key: where each part stands (seeded from the
    /// store when the collection is first used, after [`Ledger::check_parts`]). Such a
    /// collection has one entry in the record, under its name key: the sum of its
    /// parts' generations and [`parts_digest`] of their heads digests, so a record
    /// grows with the collections, not with their parts.
    parts: Mutex<HashMap<[u8; 32], BTreeMap<u16, CollectionMark>>>,
}

/// A collection kept in parts, as one mark: the sum of its parts' generations, and
/// the digest of each part's number and heads digest, in part order.
fn aggregate(parts: &BTreeMap<u16, CollectionMark>) -> CollectionMark {
    let digests: Vec<(u16, [u8; 32])> = parts.iter().map(|(p, m)| (*p, m.heads)).collect();
    CollectionMark {
        generation: parts.values().map(|m| m.generation).sum(),
        heads: parts_digest(&digests),
    }
}

/// How `found` compares with `committed`.
fn compare(committed: &CollectionMark, found: &CollectionMark) -> MarkCheck {
    if found.generation < committed.generation {
        return MarkCheck::Behind {
            committed: committed.generation,
            found: found.generation,
        };
    }
    if found.generation == committed.generation && found.heads != committed.heads {
        return MarkCheck::Differs;
    }
    MarkCheck::Ok
}

/// How a collection compares with its mark.
#[derive(Debug, PartialEq, Eq)]
pub enum MarkCheck {
    Ok,
    /// It has fewer changes than were committed.
    Behind {
        committed: u64,
        found: u64,
    },
    /// It has as many changes as were committed, but not the same ones.
    Differs,
}

impl Ledger {
    pub fn new(baseline: BTreeMap<[u8; 32], CollectionMark>) -> Self {
        Self {
            marks: Mutex::new(baseline.clone()),
            baseline,
            parts: Mutex::default(),
        }
    }

    /// Notes where a collection stands after persisting a change.
    pub fn note(&self, key: [u8; 32], generation: u64, heads: &[automerge::ChangeHash]) {
        let mark = CollectionMark {
            generation,
            heads: heads_digest(heads.iter().map(|h| &h.0)),
        };
        self.marks
            .lock()
            .expect("ledger lock is never poisoned")
            .insert(key, mark);
    }

    /// Compares a collection just loaded with the mark it had when the record was
    /// written.
    pub fn check(
        &self,
        key: &[u8; 32],
        generation: u64,
        heads: &[automerge::ChangeHash],
    ) -> MarkCheck {
        let Some(mark) = self.baseline.get(key) else {
            return MarkCheck::Ok;
        };
        let found = CollectionMark {
            generation,
            heads: heads_digest(heads.iter().map(|h| &h.0)),
        };
        compare(mark, &found)
    }

    /// Compares a collection kept in parts, as its parts stand in the store, with its
    /// entry when the record was written; if they agree (or this run already seeded
    /// it), notes where its parts stand, for [`Ledger::note_part`] and
    /// [`Ledger::check_part`].
    pub fn check_parts(
        &self,
        collection: [u8; 32],
        found: BTreeMap<u16, CollectionMark>,
    ) -> MarkCheck {
        let mut parts = self.parts.lock().expect("ledger lock is never poisoned");
        if parts.contains_key(&collection) {
            return MarkCheck::Ok;
        }
        if let Some(committed) = self.baseline.get(&collection) {
            let check = compare(committed, &aggregate(&found));
            if check != MarkCheck::Ok {
                return check;
            }
        }
        parts.insert(collection, found);
        MarkCheck::Ok
    }

    /// Compares a part just loaded with where this run knows it stands (after
    /// [`Ledger::check_parts`]).
    pub fn check_part(
        &self,
        collection: &[u8; 32],
        part: u16,
        generation: u64,
        heads: &[automerge::ChangeHash],
    ) -> MarkCheck {
        let parts = self.parts.lock().expect("ledger lock is never poisoned");
        let Some(mark) = parts.get(collection).and_then(|p| p.get(&part)) else {
            return MarkCheck::Ok;
        };
        let found = CollectionMark {
            generation,
            heads: heads_digest(heads.iter().map(|h| &h.0)),
        };
        compare(mark, &found)
    }

    /// Notes where a part of a collection kept in parts stands after persisting a
    /// change, and the collection's entry with it.
    pub fn note_part(
        &self,
        collection: [u8; 32],
        part: u16,
        generation: u64,
        heads: &[automerge::ChangeHash],
    ) {
        let mark = CollectionMark {
            generation,
            heads: heads_digest(heads.iter().map(|h| &h.0)),
        };
        let mut parts = self.parts.lock().expect("ledger lock is never poisoned");
        let collection_parts = parts.entry(collection).or_default();
        collection_parts.insert(part, mark);
        let entry = aggregate(collection_parts);
        self.marks
            .lock()
            .expect("ledger lock is never poisoned")
            .insert(collection, entry);
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<[u8; 32], CollectionMark> {
        self.marks
            .lock()
            .expect("ledger lock is never poisoned")
            .clone()
    }
}

/// The two record files of a HOME.
pub struct RecordFiles {
    paths: [PathBuf; 2],
    files: [Option<File>; 2],
    keys: Arc<VaultKeys>,
}

/// What was found on disk at start.
pub enum Found {
    /// No record file: a new vault, or one made before records.
    Nothing,
    /// The newest record that opens.
    Record(CommitRecord),
    /// Files exist but none opens: damaged or tampered with.
    Damaged(String),
}

impl RecordFiles {
    /// The record files beside the store directory (`HOME/commit.0`, `HOME/commit.1`).
    pub fn beside(store_dir: &Path, keys: Arc<VaultKeys>) -> Self {
        let home = store_dir.parent().unwrap_or(Path::new("."));
        Self {
            paths: [home.join("commit.0"), home.join("commit.1")],
            files: [None, None],
            keys,
        }
    }

    pub fn read(&self) -> Found {
        let mut best: Option<CommitRecord> = None;
        let mut problems = Vec::new();
        let mut any = false;
        for path in &self.paths {
            let bytes = match read_bounded(path) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    any = true;
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            any = true;
            let opened = self
                .keys
                .derived
                .seal
                .open(Binding::new(COMMIT_RECORD_DOMAIN, b""), &bytes)
                .map_err(|e| e.to_string())
                .and_then(|plain| CommitRecord::decode(&plain).map_err(|e| e.to_string()));
            match opened {
                Ok(record) if best.as_ref().is_none_or(|b| record.commit > b.commit) => {
                    best = Some(record);
                }
                Ok(_) => {}
                // A file torn by a crash while it was written: the other one holds the
                // commit before.
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        match (best, any) {
            (Some(record), _) => Found::Record(record),
            (None, false) => Found::Nothing,
            (None, true) => Found::Damaged(problems.join("; ")),
        }
    }

    /// Writes commit `commit` with `marks` durably, to the file for its parity.
    pub fn write(
        &mut self,
        commit: u64,
        marks: BTreeMap<[u8; 32], CollectionMark>,
    ) -> io::Result<()> {
        let record = CommitRecord {
            commit,
            collections: marks,
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self.keys.derived.seal.seal(
            Binding::new(COMMIT_RECORD_DOMAIN, b""),
            &record.encode(),
            nonce,
        );
        let slot = (commit % 2) as usize;
        if self.files[slot].is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&self.paths[slot])?;
            self.files[slot] = Some(file);
        }
        let file = self.files[slot].as_ref().expect("opened above");
        file.write_all_at(&sealed, 0)?;
        file.set_len(sealed.len() as u64)?;
        file.sync_data()
    }

    /// Makes a newly created record file's directory entry durable.
    pub fn sync_home(&self) -> io::Result<()> {
        match self.paths[0].parent() {
            Some(home) => crate::home::sync_dir(home),
            None => Ok(()),
        }
    }
}

fn read_bounded(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() > MAX_RECORD as u64 {
        return Err(io::Error::other("larger than any commit record"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD as u64).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Removes the record files (tests that start a store over from a copy).
pub fn remove_beside(store_dir: &Path) -> io::Result<()> {
    let home = store_dir.parent().unwrap_or(Path::new("."));
    for name in ["commit.0", "commit.1"] {
        match fs::remove_file(home.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
