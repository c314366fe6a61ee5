//! `hearth import --all DIR`: a `hearth export --all` directory back into a vault (this
//! one, or a new one after a loss). The blobs go first (`POST /v1/blobs`): a blob id is
//! keyed per vault, so in another vault each blob gets a new id, and every record's
//! reference to it (any string equal to an exported blob id) is rewritten to the new one
//! before the record is sent. Then each collection's records go in batches
//! (`POST /v1/restore/{c}`): a record the vault lacks is created, one it has is never
//! overwritten (those that differ are named). So the restore can be run again, after an
//! interruption or onto a vault that lived on: it adds what the vault lacks (records
//! and blobs deleted since the export included) and changes nothing it has.
//!
//! Devices, grants and the audit log of the export are not restored: they are the old
//! vault's (its devices' keys, tokens it gave) and are kept in the export to be read.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;
use hearth_node::home::Home;
use hearth_protocol::api::{BlobInfo, RestoreReport};
use hearth_protocol::{BlobId, CollectionName};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::commands::{Reported, counted, note, out, out_json, progress, seg};
use crate::export::{BlobFile, EXPORT_FORMAT};

/// Records in one restore request, and the bytes they may take (the node refuses more
/// than `RESTORE_BATCH` records, and bodies over its import limit).
const BATCH_RECORDS: usize = 1_000;
/// Blobs on their way to the node at once: each costs the node a round of fsyncs, which
/// overlap.
const BLOB_UPLOADS: usize = 4;
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// `hearth import --all --json`.
#[derive(Serialize, Default)]
struct Summary {
    dir: String,
    collections: usize,
    created: u64,
    unchanged: u64,
    /// Records the vault has and the export has otherwise: left as the vault has them.
    differing: Vec<Differing>,
    blobs: usize,
    /// Blobs the export lists but does not hold (they were not on the exporting device,
    /// or their file is gone): records naming them name nothing (`hearth check`).
    missing_blobs: Vec<String>,
    /// Record files left alone: a system collection's, or a name that is no collection.
    skipped: Vec<String>,
    /// Records the node would not take, and why (the others were restored).
    refused: Vec<Refused>,
}

#[derive(Serialize)]
struct Refused {
    collection: String,
    id: String,
    reason: String,
}

#[derive(Serialize)]
struct Differing {
    collection: String,
    id: String,
}

pub async fn everything(
    home: &Home,
    json: bool,
    client: &Client,
    dir: &Path,
) -> anyhow::Result<()> {
    let format = read_json::<Value>(&dir.join("export.json"))
        .with_context(|| format!("{} is not a `hearth export --all` directory", dir.display()))?;
    match format.get("format").and_then(Value::as_str) {
        Some(EXPORT_FORMAT) => {}
        Some(other) => bail!(
            "{} is an export of format {other:?}, which this Hearth cannot read (it reads {EXPORT_FORMAT:?})",
            dir.display()
        ),
        None => bail!(
            "{} has no \"format\" in export.json: it is not a `hearth export --all` directory",
            dir.display()
        ),
    }
    let listed: Vec<BlobFile> = read_json(&dir.join("blobs.json"))?;
    let mut summary = Summary {
        dir: dir.display().to_string(),
        ..Summary::default()
    };
    // Shared with each collection's reader thread, not copied for each.
    let renamed = Arc::new(restore_blobs(home, json, client, dir, &listed, &mut summary).await?);
    for (name, path) in record_files(dir)? {
        let collection = match CollectionName::parse(&name) {
            Ok(c) if !c.is_system() => c,
            _ => {
                summary.skipped.push(format!("records/{name}.json"));
                continue;
            }
        };
        restore_records(home, client, &collection, &path, &renamed, &mut summary)
            .await
            .with_context(|| format!("cannot restore {}", path.display()))?;
        summary.collections += 1;
    }
    report(json, summary)
}

/// Uploads every blob file of the export; returns the blob ids that changed (an export
/// of another vault), old to new.
async fn restore_blobs(
    home: &Home,
    json: bool,
    client: &Client,
    dir: &Path,
    listed: &[BlobFile],
    summary: &mut Summary,
) -> anyhow::Result<HashMap<String, String>> {
    let mut renamed = HashMap::new();
    let files: Vec<(&BlobFile, PathBuf)> = listed
        .iter()
        .filter_map(|blob| match &blob.file {
            Some(file) => Some(blob_path(dir, file).map(|path| (blob, path))),
            None => {
                summary.missing_blobs.push(blob.id.clone());
                None
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let total = files.iter().map(|(blob, _)| blob.size).sum();
    let bar = progress(json, total, "blobs");
    let mut uploads = futures::stream::iter(
        files
            .into_iter()
            .map(|(blob, path)| upload(home, client, blob, path, &bar)),
    )
    .buffer_unordered(BLOB_UPLOADS);
    while let Some(uploaded) = uploads.next().await {
        match uploaded? {
            Uploaded::Stored { old, new } => {
                if new != old {
                    renamed.insert(old, new);
                }
                summary.blobs += 1;
            }
            Uploaded::Missing(id) => summary.missing_blobs.push(id),
        }
    }
    drop(uploads);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(renamed)
}

/// What became of one blob file of the export.
enum Uploaded {
    /// Stored, under this vault's id for it.
    Stored { old: String, new: String },
    /// Listed, but its file is not in the export.
    Missing(String),
}

/// Uploads one blob file, checked against what `blobs.json` says of it.
async fn upload(
    home: &Home,
    client: &Client,
    blob: &BlobFile,
    path: PathBuf,
    bar: &Option<indicatif::ProgressBar>,
) -> anyhow::Result<Uploaded> {
    BlobId::parse(&blob.id).map_err(|e| anyhow::anyhow!("blobs.json lists {:?}: {e}", blob.id))?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Uploaded::Missing(blob.id.clone()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let size = file.metadata().await?.len();
    if size != blob.size {
        bail!(
            "{} has {size} bytes; blobs.json says blob {} has {}: the export is damaged",
            path.display(),
            blob.id,
            blob.size
        );
    }
    let body = reqwest::Body::wrap_stream(counted(tokio_util::io::ReaderStream::new(file), bar));
    let mut request = client.request(Method::POST, "/v1/blobs").body(body);
    if let Some(name) = &blob.name {
        request = request.query(&[("name", name)]);
    }
    if let Some(content_type) = &blob.content_type {
        request = request.header("content-type", content_type);
    }
    let stored: BlobInfo = client
        .json(home, request)
        .await
        .with_context(|| format!("cannot store {}", path.display()))?;
    if stored.size != blob.size {
        bail!(
            "the node stored {} bytes of {}, which has {}",
            stored.size,
            path.display(),
            blob.size
        );
    }
    Ok(Uploaded::Stored {
        old: blob.id.clone(),
        new: stored.id,
    })
}

/// A blob's file under `DIR/blobs/`: a plain name only, never a path out of it.
fn blob_path(dir: &Path, file: &str) -> anyhow::Result<PathBuf> {
    let plain = !file.is_empty()
        && file != "."
        && file != ".."
        && !file.contains(['/', '\\'])
        && !file.chars().any(char::is_control);
    if !plain {
        bail!("blobs.json names the file {file:?}, which is not a plain file name under blobs/");
    }
    Ok(dir.join("blobs").join(file))
}

/// `DIR/records/NAME.json` files, by name.
fn record_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let records = dir.join("records");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&records)
        .with_context(|| format!("cannot read {}", records.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
        {
            out.push((name.to_owned(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// Streams one collection's records file to the node in batches, each record's blob
/// references rewritten: the file is read a record at a time, never whole. A batch the
/// node refuses for what is in it is sent again a record at a time, so one record it
/// cannot take is named and the others are restored.
async fn restore_records(
    home: &Home,
    client: &Client,
    collection: &CollectionName,
    path: &Path,
    renamed: &Arc<HashMap<String, String>>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)?;
    let (batches, mut arriving) = mpsc::channel::<Batch>(2);
    let renamed = Arc::clone(renamed);
    let reader = tokio::task::spawn_blocking(move || read_batches(file, &renamed, &batches));
    let route = format!("/v1/restore/{}", seg(collection.as_str()));
    let send = |body: Vec<u8>| {
        let request = client
            .request(Method::POST, &route)
            .header("content-type", "application/json")
            .body(body);
        client.json::<RestoreReport>(home, request)
    };
    let add = |done: RestoreReport, summary: &mut Summary| {
        summary.created += done.created;
        summary.unchanged += done.unchanged;
        summary
            .differing
            .extend(done.differing.into_iter().map(|id| Differing {
                collection: collection.to_string(),
                id,
            }));
    };
    while let Some(batch) = arriving.recv().await {
        match send(batch.body).await {
            Ok(done) => add(done, summary),
            Err(e) if refused_for_its_content(&e) => {
                for record in batch.records {
                    let id = record
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned();
                    let body = serde_json::to_vec(&[&record]).context("cannot encode a record")?;
                    match send(body).await {
                        Ok(done) => add(done, summary),
                        Err(e) if refused_for_its_content(&e) => summary.refused.push(Refused {
                            collection: collection.to_string(),
                            id,
                            reason: e.to_string(),
                        }),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    reader
        .await
        .context("the reader of the records file stopped")??;
    Ok(())
}

/// Whether the node refused a restore request for the records in it (not for its
/// token, its state or its disk): then each record is tried alone.
fn refused_for_its_content(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::client::NodeAnswered>()
        .is_some_and(|a| {
            matches!(
                a.code.as_str(),
                "bad_request" | "too_large" | "invalid_id" | "bad_json" | "not_an_object"
            )
        })
}

/// Records on their way to the node: as values (to be sent one by one if the node
/// refuses the batch) and as the batch's body.
struct Batch {
    records: Vec<Value>,
    body: Vec<u8>,
}

/// Reads a JSON array of records and sends them on as bodies of at most
/// [`BATCH_RECORDS`] records and about [`BATCH_BYTES`] bytes.
fn read_batches(
    file: std::fs::File,
    renamed: &HashMap<String, String>,
    batches: &mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    struct Batcher<'a> {
        renamed: &'a HashMap<String, String>,
        batches: &'a mpsc::Sender<Batch>,
        records: Vec<Value>,
        body: Vec<u8>,
        at: usize,
    }
    impl Batcher<'_> {
        fn add(&mut self, mut record: Value) -> Result<(), String> {
            if !record.is_object() {
                return Err(format!("record {} is not a JSON object", self.at));
            }
            if let Value::Object(fields) = &mut record {
                for (_, value) in fields.iter_mut().filter(|(key, _)| key.as_str() != "id") {
                    rename_blobs(value, self.renamed);
                }
            }
            self.body
                .push(if self.records.is_empty() { b'[' } else { b',' });
            serde_json::to_writer(&mut self.body, &record).map_err(|e| e.to_string())?;
            self.records.push(record);
            self.at += 1;
            if self.records.len() == BATCH_RECORDS || self.body.len() >= BATCH_BYTES {
                self.send()?;
            }
            Ok(())
        }
        fn send(&mut self) -> Result<(), String> {
            if self.records.is_empty() {
                return Ok(());
            }
            self.body.push(b']');
            let batch = Batch {
                records: std::mem::take(&mut self.records),
                body: std::mem::take(&mut self.body),
            };
            self.batches
                .blocking_send(batch)
                .map_err(|_| "the restore stopped".to_owned())
        }
    }
    struct Each<'a, 'b>(&'a mut Batcher<'b>);
    impl<'de> serde::de::Visitor<'de> for Each<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of records")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(record) = seq.next_element::<Value>()? {
                self.0.add(record).map_err(serde::de::Error::custom)?;
            }
            Ok(())
        }
    }
    let mut batcher = Batcher {
        renamed,
        batches,
        records: Vec::new(),
        body: Vec::new(),
        at: 0,
    };
    let mut json = serde_json::Deserializer::from_reader(BufReader::new(file));
    serde::Deserializer::deserialize_seq(&mut json, Each(&mut batcher))
        .map_err(|e| anyhow::anyhow!("not a JSON array of records: {e}"))?;
    json.end()
        .map_err(|e| anyhow::anyhow!("something follows the array of records: {e}"))?;
    batcher.send().map_err(anyhow::Error::msg)
}

/// Every string of `value` that is the id of a blob restored under a new id becomes
/// that new id (a record's own `"id"` is left: the caller skips it).
fn rename_blobs(value: &mut Value, renamed: &HashMap<String, String>) {
    if renamed.is_empty() {
        return;
    }
    match value {
        Value::String(s) => {
            if let Some(new) = renamed.get(s.as_str()) {
                s.clone_from(new);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_blobs(v, renamed)),
        Value::Object(map) => map.values_mut().for_each(|v| rename_blobs(v, renamed)),
        _ => {}
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    serde_json::from_reader(BufReader::new(file))
        .with_context(|| format!("{} is not what an export writes there", path.display()))
}

fn report(json: bool, summary: Summary) -> anyhow::Result<()> {
    let missing = summary.missing_blobs.len();
    if json {
        out_json(&summary)?;
    } else {
        for skipped in &summary.skipped {
            note(format!(
                "left alone: {skipped} (not a collection this restore writes)"
            ));
        }
        for d in &summary.differing {
            note(format!(
                "kept as the vault has it: record {} of {} (the export has it otherwise)",
                d.id, d.collection
            ));
        }
        out(format!(
            "restored {} ({} there already, {} differing and kept as they are) in {}, and {}, from {}",
            crate::commands::count(summary.created, "record"),
            summary.unchanged,
            summary.differing.len(),
            crate::commands::count(summary.collections as u64, "collection"),
            crate::commands::count(summary.blobs as u64, "blob"),
            summary.dir
        ))?;
    }
    let mut failed = Vec::new();
    if !summary.refused.is_empty() {
        if !json {
            for r in &summary.refused {
                note(format!(
                    "not restored: record {} of {}: {}",
                    r.id, r.collection, r.reason
                ));
            }
        }
        failed.push(format!(
            "{} record(s) were refused by the node (the first: {} of {})",
            summary.refused.len(),
            summary.refused[0].id,
            summary.refused[0].collection
        ));
    }
    if missing > 0 {
        failed.push(format!(
            "{missing} blob(s) the export lists are not in it ({}): records that name them name nothing; `hearth check` lists them",
            summary.missing_blobs.join(", ")
        ));
    }
    if !failed.is_empty() {
        return Err(Reported(format!(
            "not everything was restored (the rest is): {}",
            failed.join("; ")
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_references_are_renamed_at_any_depth_and_nothing_else() {
        let old = "a".repeat(64);
        let new = "b".repeat(64);
        let renamed = HashMap::from([(old.clone(), new.clone())]);
        let mut record = serde_json::json!({
            "id": "m1",
            "blob": old,
            "photo": {"blob": old, "media_type": "image/jpeg"},
            "attachments": [old, "c".repeat(64)],
            "subject": format!("about {old}"),
        });
        rename_blobs(&mut record, &renamed);
        assert_eq!(record["blob"], new);
        assert_eq!(record["photo"]["blob"], new);
        assert_eq!(record["attachments"][0], new);
        assert_eq!(record["attachments"][1], "c".repeat(64));
        assert_eq!(record["subject"], format!("about {old}"));
        assert_eq!(record["id"], "m1");
    }

    #[test]
    fn a_blob_file_outside_blobs_is_refused() {
        let dir = Path::new("/x");
        assert!(blob_path(dir, "photo (2).jpg").is_ok());
        for bad in ["../keys", "a/b", "..", ".", "", "a\\b", "a\nb"] {
            assert!(blob_path(dir, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_go_in_batches_and_a_broken_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.json");
        let records: Vec<Value> = (0..2_500)
            .map(|i| serde_json::json!({"id": format!("n{i}"), "text": "x"}))
            .collect();
        std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        read_batches(std::fs::File::open(&path).unwrap(), &HashMap::new(), &tx).unwrap();
        drop(tx);
        let mut sizes = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            let body: Vec<Value> = serde_json::from_slice(&batch.body).unwrap();
            assert_eq!(body, batch.records);
            sizes.push(body.len());
        }
        assert_eq!(sizes, [1_000, 1_000, 500]);

        for (broken, says) in [
            (&b"{\"id\": \"n1\"}"[..], "not a JSON array"),
            (b"[{\"id\": \"n1\"}, 7]", "not a JSON object"),
            (b"[{\"id\": \"n1\"}", "not a JSON array"),
            (b"[] []", "follows"),
        ] {
            std::fs::write(&path, broken).unwrap();
            let (tx, _rx) = mpsc::channel(16);
            let e = read_batches(std::fs::File::open(&path).unwrap(), &HashMap::new(), &tx)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
