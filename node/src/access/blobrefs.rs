//! Which blob names a service wrote itself.
//!
//! A grant reads a blob when a record it can read names the blob's id
//! (`Door::read_blob`). A service that may also write could otherwise name any blob
//! it has learned the id of (from an earlier grant, another service, a shared link)
//! in a record of its own and then read it. So every naming a write through a grant
//! *adds* to a record is noted here first — one small record in the system collection
//! `_blobrefs` per (grant, collection, record, blob), synced like any collection — and
//! `read_blob` does not count a naming the grant made itself. A naming that was in
//! the record before the write (the owner's, another service's) still counts.
//!
//! The note is written (and persisted) before the record that holds the naming, so no
//! device ever has the naming without the note beside it on the same device; across
//! devices the two travel in separate collections, which sync independently.

use std::collections::BTreeSet;

use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Map, Value, json};

use super::dav::Refusal;
use crate::collections::{CollectionError, Collections, RecordWrite};

/// The system collection of notes.
pub const BLOB_REFS: &str = "_blobrefs";

fn refs() -> CollectionName {
    CollectionName::parse(BLOB_REFS).expect("a valid system collection name")
}

pub(super) use crate::blobs::named_blobs;

/// The note's record id: a hash of what it is about (the collection's
/// records are sealed like any other; the id only has to be unique and stable).
fn note_id(grant: &str, collection: &str, record: &str, blob: &str) -> RecordId {
    let mut hasher = blake3::Hasher::new();
    for part in [grant, collection, record, blob] {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    RecordId::from_random(bytes)
}

/// Notes that the grant names `blobs` in `record` of `collection`. Durable with the
/// next commit, which the write's own audit entry asks for.
pub(super) fn note(
    collections: &Collections,
    grant: &str,
    collection: &str,
    record: &str,
    blobs: &BTreeSet<String>,
) -> Result<(), CollectionError> {
    if blobs.is_empty() {
        return Ok(());
    }
    let at = crate::clock::now_unix();
    let writes: Vec<(RecordId, RecordWrite)> = blobs
        .iter()
        .map(|blob| {
            let note = json!({
                "grant": grant,
                "collection": collection,
                "record": record,
                "blob": blob,
                "at": at,
            });
            let Value::Object(note) = note else {
                unreachable!("a JSON object literal")
            };
            (
                note_id(grant, collection, record, blob),
                RecordWrite::Put(note),
            )
        })
        .collect();
    collections.write_many(&refs(), &writes)
}

/// Whether the grant itself wrote the naming of `blob` in `record`.
pub(super) fn is_own(
    collections: &Collections,
    grant: &str,
    collection: &str,
    record: &str,
    blob: &str,
) -> Result<bool, CollectionError> {
    let id = note_id(grant, collection, record, blob);
    Ok(collections.get(&refs(), &id)?.is_some())
}

/// Refuses a write whose result names a blob that neither the record named before
/// nor [`note`] noted for it (`noted`; `None`: the write offered no blob id, so it
/// cannot add one). Only a change between noting and writing gets here.
pub(super) fn check_noted(
    before: Option<&Map<String, Value>>,
    after: &Map<String, Value>,
    noted: Option<&BTreeSet<String>>,
) -> Result<(), Refusal> {
    let Some(noted) = noted else {
        return Ok(());
    };
    let had = before.map(named_blobs).unwrap_or_default();
    if named_blobs(after)
        .iter()
        .any(|blob| !had.contains(blob) && !noted.contains(blob))
    {
        return Err(Refusal::Precondition);
    }
    Ok(())
}
