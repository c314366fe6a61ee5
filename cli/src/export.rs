//! `hearth export --all -o DIR`: the whole vault, at one moment, in open formats that
//! need no Hearth to read. The node takes the snapshot (`GET /v1/export`: records,
//! vCard/iCalendar texts, devices, grants, audit log, the blob list); the blobs'
//! bytes follow by id, and cannot differ from the snapshot's (an id is its content).
//!
//! ```text
//! DIR/export.json            when, which vault and device, what is where
//! DIR/records/NAME.json      each collection's records (a JSON array)
//! DIR/vcard/NAME.vcf         contacts collections
//! DIR/icalendar/NAME.ics     calendar collections
//! DIR/blobs/FILE             each blob under its name (made unique), bytes as stored
//! DIR/blobs.json             each blob: id, name, type, size, file
//! DIR/devices.json, DIR/grants.json, DIR/audit.json
//! ```
//!
//! Written into `DIR.partial` first and renamed at the end: an interrupted export
//! leaves no directory that looks complete.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::TryStreamExt;
use hearth_node::home::Home;
use hearth_protocol::api::VaultExport;
use reqwest::Method;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::commands::{counted, note, out, out_json, progress};

/// `hearth export --all --json`.
#[derive(Serialize)]
struct Summary {
    dir: String,
    at: u64,
    collections: usize,
    records: usize,
    blobs: usize,
    bytes: u64,
    /// Blobs listed but not on this device (still arriving): not in DIR/blobs.
    missing_blobs: Vec<String>,
}

/// What `export.json` says the directory is (`hearth import --all` reads this one).
pub(crate) const EXPORT_FORMAT: &str = "hearth-export-1";

/// One line of `blobs.json`.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct BlobFile {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    #[serde(rename = "type")]
    pub(crate) content_type: Option<String>,
    pub(crate) size: u64,
    /// Under `blobs/`, or null if the blob is not on this device.
    pub(crate) file: Option<String>,
}

pub async fn everything(
    home: &Home,
    json: bool,
    client: &Client,
    dir: &Path,
) -> anyhow::Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            bail!(
                "{} is not empty: export into a new or empty directory",
                dir.display()
            );
        }
    } else if dir.exists() {
        bail!("{} exists and is not a directory", dir.display());
    }
    let snapshot: VaultExport = client
        .json(home, client.request(Method::GET, "/v1/export"))
        .await?;
    let partial = with_suffix(dir, ".partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove the unfinished {}", partial.display()))?;
    }
    let result = write_all(home, json, client, &snapshot, &partial).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    // An empty DIR that was there is replaced.
    if dir.exists() {
        std::fs::remove_dir(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    std::fs::rename(&partial, dir)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dir.display()))?;
    let summary = Summary {
        dir: dir.display().to_string(),
        ..summary
    };
    if json {
        out_json(&summary)
    } else {
        if !summary.missing_blobs.is_empty() {
            note(format!(
                "{} blob(s) are still arriving on this device and are not in the export: {}",
                summary.missing_blobs.len(),
                summary.missing_blobs.join(", ")
            ));
        }
        out(format!(
            "exported {} in {} and {} ({}) to {}",
            crate::commands::count(summary.records as u64, "record"),
            crate::commands::count(summary.collections as u64, "collection"),
            crate::commands::count(summary.blobs as u64, "blob"),
            crate::commands::count(summary.bytes, "byte"),
            summary.dir
        ))
    }
}

async fn write_all(
    home: &Home,
    json: bool,
    client: &Client,
    snapshot: &VaultExport,
    dir: &Path,
) -> anyhow::Result<Summary> {
    for sub in ["records", "vcard", "icalendar", "blobs"] {
        hearth_node::home::create_private_dir(&dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let mut records = 0;
    for (name, list) in &snapshot.collections {
        records += list.len();
        write_json(&dir.join("records").join(format!("{name}.json")), list)?;
    }
    for (name, text) in &snapshot.pim {
        let path = match hearth_node::pim::Kind::of(name) {
            Some(hearth_node::pim::Kind::Contacts) => dir.join("vcard").join(format!("{name}.vcf")),
            _ => dir.join("icalendar").join(format!("{name}.ics")),
        };
        write_file(&path, text.as_bytes())?;
    }
    write_json(&dir.join("devices.json"), &snapshot.devices)?;
    write_json(&dir.join("grants.json"), &snapshot.grants)?;
    write_json(&dir.join("audit.json"), &snapshot.audit)?;

    let total: u64 = snapshot
        .blobs
        .iter()
        .filter(|b| b.here)
        .map(|b| b.size)
        .sum();
    let bar = progress(json, total, "blobs");
    let mut taken = HashSet::new();
    let mut files = Vec::new();
    let mut missing = Vec::new();
    let mut bytes = 0;
    for blob in &snapshot.blobs {
        let file = if blob.here {
            let file = unique_name(blob.name.as_deref().unwrap_or(&blob.id), &mut taken);
            let path = dir.join("blobs").join(&file);
            match fetch_blob(home, client, &blob.id, &path, &bar).await? {
                Some(size) => {
                    bytes += size;
                    Some(file)
                }
                // Removed since the snapshot.
                None => {
                    missing.push(blob.id.clone());
                    None
                }
            }
        } else {
            missing.push(blob.id.clone());
            None
        };
        files.push(BlobFile {
            id: blob.id.clone(),
            name: blob.name.clone(),
            content_type: blob.content_type.clone(),
            size: blob.size,
            file,
        });
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    write_json(&dir.join("blobs.json"), &files)?;
    let blobs = files.iter().filter(|f| f.file.is_some()).count();
    write_json(
        &dir.join("export.json"),
        &serde_json::json!({
            "format": EXPORT_FORMAT,
            "at": snapshot.at,
            "vault_id": snapshot.vault_id,
            "device": snapshot.device,
            "collections": snapshot.collections.keys().collect::<Vec<_>>(),
            "records": records,
            "blobs": blobs,
            "missing_blobs": missing,
            "layout": {
                "records/NAME.json": "each collection's records, a JSON array of objects with \"id\"",
                "vcard/NAME.vcf": "contacts collections as vCard",
                "icalendar/NAME.ics": "calendar collections as iCalendar",
                "blobs/FILE": "each blob's bytes under its name; blobs.json maps ids to files",
                "devices.json": "the vault's devices",
                "grants.json": "grants given to services (no tokens)",
                "audit.json": "every access by a service",
            },
        }),
    )?;
    Ok(Summary {
        dir: String::new(),
        at: snapshot.at,
        collections: snapshot.collections.len(),
        records,
        blobs,
        bytes,
        missing_blobs: missing,
    })
}

/// Streams a blob into `path`; `None` if the node no longer has it.
async fn fetch_blob(
    home: &Home,
    client: &Client,
    id: &str,
    path: &Path,
    bar: &Option<indicatif::ProgressBar>,
) -> anyhow::Result<Option<u64>> {
    let request = client.request(Method::GET, &format!("/v1/blobs/{id}"));
    let response = match client.send(home, request).await {
        Ok(response) => response,
        Err(e)
            if e.downcast_ref::<crate::client::NodeAnswered>()
                .is_some_and(|a| a.code == "not_found") =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut stream = counted(response.bytes_stream(), bar);
    // Never over another blob's file (a file system that folds names could make two
    // names one).
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut size = 0;
    while let Some(chunk) = stream
        .try_next()
        .await
        .with_context(|| format!("blob {id} broke off (it may be corrupt: see `hearth check`)"))?
    {
        size += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    file.sync_all().await?;
    Ok(Some(size))
}

/// A file name for a blob: its own name made safe for any file system (no path
/// separators, no control characters, not hidden), unique in the directory.
fn unique_name(name: &str, taken: &mut HashSet<String>) -> String {
    let mut safe: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\') {
                '_'
            } else {
                c
            }
        })
        .collect();
    safe = safe.trim_start_matches('.').trim().to_owned();
    if safe.is_empty() {
        safe = "blob".into();
    }
    let (stem, ext) = match safe.rfind('.') {
        Some(dot) if dot > 0 => (safe[..dot].to_owned(), safe[dot..].to_owned()),
        _ => (safe.clone(), String::new()),
    };
    let mut candidate = safe;
    let mut n = 2;
    while !taken.insert(candidate.to_lowercase()) {
        candidate = format!("{stem} ({n}){ext}");
        n += 1;
    }
    candidate
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value).context("cannot encode the export")?;
    text.push(b'\n');
    write_file(path, &text)
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    hearth_node::home::write_file_atomic(path, bytes, 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_file_names_are_safe_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(unique_name("photo.jpg", &mut taken), "photo.jpg");
        assert_eq!(unique_name("photo.jpg", &mut taken), "photo (2).jpg");
        assert_eq!(unique_name("PHOTO.JPG", &mut taken), "PHOTO (3).JPG");
        assert_eq!(
            unique_name("../../etc/passwd", &mut taken),
            "_.._etc_passwd"
        );
        assert_eq!(unique_name(".hidden", &mut taken), "hidden");
        assert_eq!(unique_name("...", &mut taken), "blob");
        assert_eq!(unique_name("a\nb", &mut taken), "a_b");
    }
}
