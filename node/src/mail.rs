//! Mail: each message a record (the fields docs/SCHEMA.md lists, read with
//! `mail-parser`) and its bytes a blob, exactly as they came in, so nothing of it is
//! lost and an export gives every message back byte for byte.
//!
//! A message's record id comes from its key — its Message-ID, else a digest of its
//! bytes — so importing the same mailbox again (after a crash, or to pick up what is
//! new) adds nothing twice. A second message under a Message-ID already taken by other
//! bytes is kept under an id of its own: a sender that reuses Message-IDs loses nothing.
//! A batch is stored as one piece: its messages' blobs (one round of fsyncs), then
//! their records and the blobs' listing in `_blobs` as one write
//! (`Collections::write_across`), then one commit.

use std::collections::HashMap;

use hearth_protocol::api::{MailFailure, MailImportReport};
use hearth_protocol::mail::MailItem;
use hearth_protocol::{CollectionName, RecordId};
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders};
use serde_json::{Map, Value as Json, json};

use crate::collections::RecordWrite;
use crate::pim::ImportError;

/// Whether `name` is a mail collection (`mail` or `mail-…`).
pub fn is_mail(name: &CollectionName) -> bool {
    let name = name.as_str();
    name == "mail"
        || name
            .strip_prefix("mail-")
            .is_some_and(|rest| !rest.is_empty())
}

/// The text a person reads in a message (`bytes`, perhaps cut short): its text
/// bodies in order, an HTML one as its text, each separated by a blank line; `None` if
/// it has none, or is not a message.
pub fn body_text(bytes: &[u8]) -> Option<String> {
    let message = MessageParser::default().parse(bytes)?;
    let parts: Vec<String> = (0..message.text_body_count())
        .filter_map(|i| message.body_text(i))
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// What a message is known by across imports: its Message-ID, else its bytes.
fn key_of(message_id: Option<&str>, bytes: &[u8]) -> String {
    match message_id.map(str::trim).filter(|m| !m.is_empty()) {
        Some(id) => format!("mid:{id}"),
        None => format!("digest:{}", blake3::hash(bytes).to_hex()),
    }
}

/// The record id of a key (the same on every device and every import).
fn id_of(key: &str) -> RecordId {
    let hash = blake3::derive_key("hearth mail record id v1", key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    RecordId::from_random(bytes)
}

/// The id of a message whose Message-ID (`key`) another message of the vault holds:
/// kept beside it, keyed by its blob too.
fn id_beside(key: &str, blob: &str) -> RecordId {
    id_of(&format!("{key}\u{0}{blob}"))
}

/// The fields of a message (without `blob`, `folders`, `flags`, which the import sets).
/// A message `mail-parser` cannot read at all still gets its size.
pub fn fields_of(bytes: &[u8]) -> (Option<String>, Map<String, Json>) {
    let mut fields = Map::new();
    fields.insert("size".into(), json!(bytes.len()));
    let Some(message) = MessageParser::default().parse(bytes) else {
        return (None, fields);
    };
    let message_id = message.message_id().map(str::to_owned);
    if let Some(id) = &message_id {
        fields.insert("message_id".into(), json!(id));
    }
    if let Some(subject) = message.subject() {
        fields.insert("subject".into(), json!(subject));
    }
    if let Some(first) = message.from().and_then(Address::first) {
        if let Some(address) = first.address() {
            fields.insert("from".into(), json!(address));
        }
        if let Some(name) = first.name() {
            fields.insert("from_name".into(), json!(name));
        }
    }
    for (field, list) in [("to", message.to()), ("cc", message.cc())] {
        let addresses: Vec<&str> = list
            .map(|l| l.iter().filter_map(|a| a.address()).collect())
            .unwrap_or_default();
        if !addresses.is_empty() {
            fields.insert(field.into(), json!(addresses));
        }
    }
    if let Some(date) = message.date() {
        fields.insert("date".into(), json!(date.to_rfc3339()));
    }
    for (field, value) in [
        ("in_reply_to", message.in_reply_to()),
        ("references", message.references()),
    ] {
        let ids = ids_in(value);
        if !ids.is_empty() {
            fields.insert(field.into(), json!(ids));
        }
    }
    let attachments: Vec<Json> = message
        .attachments()
        .map(|part| {
            let mut a = Map::new();
            if let Some(name) = part.attachment_name() {
                a.insert("name".into(), json!(name));
            }
            if let Some(ct) = part.content_type() {
                let kind = match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                };
                a.insert("type".into(), json!(kind.to_ascii_lowercase()));
            }
            a.insert("size".into(), json!(part.len()));
            Json::Object(a)
        })
        .collect();
    if !attachments.is_empty() {
        fields.insert("attachments".into(), Json::Array(attachments));
    }
    (message_id, fields)
}

fn ids_in(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => vec![id.to_string()],
        HeaderValue::TextList(ids) => ids.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    }
}

/// Imports a batch of messages into mail collection `collection` (see the module's
/// doc). Durable when it returns.
pub async fn import_batch(
    vault: &crate::Vault,
    collection: &CollectionName,
    items: Vec<MailItem>,
) -> Result<MailImportReport, ImportError> {
    let mut report = MailImportReport::default();
    let max = vault.limits.max_blob_bytes;
    // Read every message's fields off the async threads.
    let (items, parsed) = tokio::task::spawn_blocking(move || {
        let parsed: Vec<_> = items
            .iter()
            .map(|i| {
                let (message_id, fields) = fields_of(&i.bytes);
                (key_of(message_id.as_deref(), &i.bytes), fields)
            })
            .collect();
        (items, parsed)
    })
    .await
    .map_err(|e| ImportError::Internal(e.to_string()))?;
    let mut keep = Vec::new();
    for (index, (item, parsed)) in items.into_iter().zip(parsed).enumerate() {
        if item.bytes.is_empty() {
            report.failed.push(MailFailure {
                index,
                reason: "the message is empty".into(),
            });
        } else if item.bytes.len() as u64 > max {
            report.failed.push(MailFailure {
                index,
                reason: format!("the message is larger than {max} bytes"),
            });
        } else {
            keep.push((item, parsed));
        }
    }
    // Moved, not copied: the record needs only the key and fields read above.
    let contents = keep
        .iter_mut()
        .map(|(item, _)| bytes::Bytes::from(std::mem::take(&mut item.bytes)))
        .collect();
    // Stored (durable) first, listed only once the records naming them are written.
    let stored = vault.blobs.put_many(contents, max).await?;

    let message = crate::blobs::Described::new(None, Some("message/rfc822")).unwrap_or_default();
    let to_list: Vec<_> = stored
        .iter()
        .map(|s| (s.id, s.size, message.clone()))
        .collect();
    let entries: Vec<Entry> = keep
        .into_iter()
        .zip(&stored)
        .map(|((item, (key, fields)), stored)| Entry {
            item,
            key,
            fields,
            blob: stored.id.to_string(),
        })
        .collect();
    let collections = vault.collections.clone();
    let name = collection.clone();
    // Decided and written under the collection's lock: what the batch reads is what
    // its writes land on, whatever else writes to the collection meanwhile (another
    // batch of the same import, the owner's edit of a message).
    // The records and the listing of their blobs are one write: on disk together, or
    // (a refused batch, a crash) neither, so no device fetches a blob no record names.
    let (imported, duplicates) = tokio::task::spawn_blocking(move || {
        // Every record the batch may read or write: each message's id, and the id it
        // takes beside another message of the same Message-ID; the blobs' listings.
        let mut touching = crate::blobs::listings_of(&to_list);
        for entry in &entries {
            for id in [id_of(&entry.key), id_beside(&entry.key, &entry.blob)] {
                touching.push((name.clone(), id));
            }
        }
        collections.write_across(&touching, |lookup| {
            let (writes, counts) = decide(entries, &mut |id| lookup(&name, id))?;
            let mut writes: crate::collections::WritesIn = writes
                .into_iter()
                .map(|(id, write)| (name.clone(), id, write))
                .collect();
            let listings = crate::blobs::listing_writes(lookup, &to_list, &writes)?;
            writes.extend(listings);
            Ok::<_, ImportError>((writes, counts))
        })?
    })
    .await
    .map_err(|e| ImportError::Internal(e.to_string()))??;
    report.imported += imported;
    report.duplicates += duplicates;
    vault.store.commit().await?;
    drop(stored);
    Ok(report)
}

/// How many of a batch's messages were new, and how many there already.
type Counts = (u64, u64);

/// A message of a batch, its blob stored.
struct Entry {
    item: MailItem,
    key: String,
    fields: Map<String, Json>,
    blob: String,
}

/// The writes a batch makes (a record that reads as before is not written: a mailbox
/// imported again), and how many of its messages were new and how many there already.
fn decide(
    entries: Vec<Entry>,
    lookup: &mut crate::collections::Lookup<'_>,
) -> Result<(Vec<(RecordId, RecordWrite)>, Counts), ImportError> {
    let (mut imported, mut duplicates) = (0u64, 0u64);
    // The records this batch writes, whole, by id: a message twice in one batch (in
    // two folders) is one record.
    let mut batch: Vec<(RecordId, Map<String, Json>)> = Vec::new();
    let mut at: HashMap<RecordId, usize> = HashMap::new();
    // Each record as the collection held it before this batch, read once.
    let mut before_batch: HashMap<RecordId, Option<Map<String, Json>>> = HashMap::new();
    for Entry {
        item,
        key,
        mut fields,
        blob,
    } in entries
    {
        let mut id = id_of(&key);
        let mut before = current(lookup, &id, &batch, &at, &mut before_batch)?;
        if before
            .as_ref()
            .is_some_and(|b| b.get("blob").and_then(Json::as_str) != Some(blob.as_str()))
        {
            // Another message holds this Message-ID: this one is kept beside it.
            id = id_beside(&key, &blob);
            before = current(lookup, &id, &batch, &at, &mut before_batch)?;
        }
        let record = match before {
            // A view of the mailbox (Gmail's "All Mail") adds nothing to a message the
            // vault holds: it is where it is already.
            Some(record) if item.view => {
                duplicates += 1;
                record
            }
            Some(mut record) => {
                duplicates += 1;
                let mut folders: Vec<Json> = record
                    .get("folders")
                    .and_then(Json::as_array)
                    .cloned()
                    .unwrap_or_default();
                let folder = json!(item.folder);
                if folders.contains(&folder) {
                    // The same folder again: its flags are the newer ones.
                    record.insert("flags".into(), json!(item.flags));
                } else {
                    folders.push(folder);
                    record.insert("folders".into(), Json::Array(folders));
                }
                record
            }
            None => {
                imported += 1;
                fields.insert("blob".into(), json!(blob));
                fields.insert("folders".into(), json!([item.folder]));
                fields.insert("flags".into(), json!(item.flags));
                if let Some(line) = item.mbox_from {
                    fields.insert("mbox_from".into(), json!(line));
                }
                fields
            }
        };
        match at.get(&id) {
            Some(&i) => batch[i].1 = record,
            None => {
                at.insert(id.clone(), batch.len());
                batch.push((id, record));
            }
        }
    }
    let writes = batch
        .into_iter()
        .filter(|(id, record)| before_batch.get(id).and_then(Option::as_ref) != Some(record))
        .map(|(id, record)| (id, RecordWrite::Put(record)))
        .collect();
    Ok((writes, (imported, duplicates)))
}

/// Record `id` as this batch has made it so far, else as the collection holds it
/// (without its `"id"`).
fn current(
    lookup: &mut crate::collections::Lookup<'_>,
    id: &RecordId,
    batch: &[(RecordId, Map<String, Json>)],
    at: &HashMap<RecordId, usize>,
    before_batch: &mut HashMap<RecordId, Option<Map<String, Json>>>,
) -> Result<Option<Map<String, Json>>, ImportError> {
    if let Some(&i) = at.get(id) {
        return Ok(Some(batch[i].1.clone()));
    }
    if let Some(stored) = before_batch.get(id) {
        return Ok(stored.clone());
    }
    let stored = lookup(id)?;
    before_batch.insert(id.clone(), stored.clone());
    Ok(stored)
}
