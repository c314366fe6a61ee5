//! The audit log: every access of a service, append-only and hash-chained.
//!
//! One chain per device (`CHAIN-SEQ` ids, each entry hashing the one before), so
//! devices append without coordinating and any altered, removed or reordered entry
//! breaks its chain. Each entry is stored as one canonical-JSON string, in documents of
//! [`AUDIT_SHARD_ENTRIES`] entries per chain (`_audit`, `_audit-1`, …), so an append
//! costs the same after years as on the first day. The log syncs like any collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use hearth_protocol::api::{AuditEntry, SeenCollection, SeenReport};
use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Map, Value};

use crate::collections::{CollectionError, Collections};

pub const AUDIT: &str = "_audit";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries per chain in one audit document.
#[cfg(not(test))]
const AUDIT_SHARD_ENTRIES: u64 = 4096;
/// Small in unit tests, so they cross document boundaries.
#[cfg(test)]
const AUDIT_SHARD_ENTRIES: u64 = 8;

fn audit() -> CollectionName {
    CollectionName::parse(AUDIT).expect("valid system collection name")
}

fn audit_shard(seq: u64) -> CollectionName {
    match seq.saturating_sub(1) / AUDIT_SHARD_ENTRIES {
        0 => audit(),
        n => CollectionName::parse(&format!("{AUDIT}-{n}")).expect("valid system collection name"),
    }
}

pub fn is_audit_shard(name: &CollectionName) -> bool {
    let name = name.as_str();
    name == AUDIT
        || name
            .strip_prefix(AUDIT)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The field of an audit record holding one entry as canonical JSON text. Records
/// written before it (entries as plain maps) are read as they are.
const ENTRY_FIELD: &str = "entry";
/// The field of an audit record holding several consecutive entries of one chain (one
/// append of many, such as an event batch delivered to many streams) as a JSON array
/// of canonical entries. The record is stored under the first entry's id; each entry
/// keeps its own id, sequence number and hash.
const ENTRIES_FIELD: &str = "entries";

/// What a service did, as one audit entry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Records returned by a read.
    Read,
    /// A batch of events delivered to one stream.
    Subscribe,
    /// An existing record changed.
    Write,
    /// A new record.
    Create,
    /// A record removed.
    Remove,
    /// A request of this grant that was refused.
    Refused,
    /// A blob's bytes, read because a record the grant can read names it.
    ReadBlob,
    /// The owner extended the grant (`reason`: its new expiry, `expires_at=SECS` or
    /// `never`): not an access of the service.
    Extend,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Subscribe => "subscribe",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Remove => "remove",
            Operation::Refused => "refused",
            Operation::ReadBlob => "read_blob",
            Operation::Extend => "extend",
        }
    }
}

/// One access, as the audit log records it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub grant: String,
    pub service: String,
    pub operation: Operation,
    pub collection: String,
    pub records: usize,
    pub fields: Vec<String>,
    pub ids: Vec<String>,
    pub reason: Option<String>,
    pub count: Option<u64>,
    pub stream: Option<u64>,
}

impl AuditEvent {
    /// An access of the grant `grant` (its id) made for `service`.
    pub fn new(grant: &str, service: &str, operation: Operation, collection: &str) -> Self {
        Self {
            grant: grant.to_owned(),
            service: service.to_owned(),
            operation,
            collection: collection.to_owned(),
            records: 0,
            fields: Vec::new(),
            ids: Vec::new(),
            reason: None,
            count: None,
            stream: None,
        }
    }
}

/// Appends to one chain. One writer at a time per chain.
pub struct AuditLog {
    chain: String,
    state: Mutex<Option<(u64, String)>>,
}

impl AuditLog {
    /// `chain` names this device's chain: its PeerId (or, after an accepted rollback,
    /// the PeerId with the rollback's number, so no sequence number is reused).
    pub fn new(chain: String) -> Self {
        Self {
            chain,
            state: Mutex::new(None),
        }
    }

    /// Appends one entry. Durable only after the store commits.
    pub fn append(
        &self,
        collections: &Collections,
        event: AuditEvent,
    ) -> Result<(), CollectionError> {
        self.append_many(collections, vec![event])
    }

    /// Appends entries in order, each document touched changed once. Durable only after
    /// the store commits.
    pub fn append_many(
        &self,
        collections: &Collections,
        events: Vec<AuditEvent>,
    ) -> Result<(), CollectionError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().expect("audit lock is never poisoned");
        if state.is_none() {
            *state = Some(last_of_chain(collections, &self.chain)?);
        }
        let (mut seq, mut prev) = state.clone().expect("set above");
        // Entries grouped by the document their first one belongs in; each group is
        // one record, so an append of many costs one Automerge record, not one each.
        let mut groups: BTreeMap<CollectionName, (u64, Vec<Value>)> = BTreeMap::new();
        let at = crate::clock::now_unix();
        for event in events {
            seq += 1;
            let entry = self.entry(event, at, seq, &prev);
            let hash = entry_hash(&entry);
            let mut entry = entry;
            entry.insert("hash".into(), Value::String(hash.clone()));
            groups
                .entry(audit_shard(seq))
                .or_insert_with(|| (seq, Vec::new()))
                .1
                .push(Value::Object(entry));
            prev = hash;
        }
        for (shard, (first, mut entries)) in groups {
            let id = RecordId::parse(&format!("{}-{first:012}", self.chain))
                .expect("a chain name and digits make a valid id");
            // Stored as one string: a dozen map fields would cost a dozen Automerge
            // operations per access, and entries are never edited field by field.
            let mut record = Map::new();
            if entries.len() == 1 {
                let entry = entries.pop().expect("one entry");
                record.insert(ENTRY_FIELD.into(), Value::String(entry.to_string()));
            } else {
                record.insert(
                    ENTRIES_FIELD.into(),
                    Value::String(Value::Array(entries).to_string()),
                );
            }
            collections.put(&shard, &id, &record)?;
        }
        *state = Some((seq, prev));
        Ok(())
    }

    /// Holds the chain's lock, so no append can finish while the guard lives.
    #[cfg(any(test, feature = "testutil"))]
    pub fn hold(&self) -> std::sync::MutexGuard<'_, Option<(u64, String)>> {
        self.state.lock().expect("audit lock is never poisoned")
    }

    fn entry(&self, event: AuditEvent, at: u64, seq: u64, prev: &str) -> Map<String, Value> {
        let mut fields = event.fields;
        fields.sort();
        fields.dedup();
        let mut entry = Map::new();
        entry.insert("at".into(), at.into());
        entry.insert("grant".into(), event.grant.into());
        entry.insert("service".into(), event.service.into());
        entry.insert("operation".into(), event.operation.as_str().into());
        entry.insert("collection".into(), event.collection.into());
        entry.insert("records".into(), (event.records as u64).into());
        entry.insert("fields".into(), fields.into());
        // Optional fields only when present: entries written before them hash as before.
        if !event.ids.is_empty() {
            let mut ids = event.ids;
            ids.sort();
            ids.dedup();
            entry.insert("ids".into(), ids.into());
        }
        if let Some(reason) = event.reason {
            entry.insert("reason".into(), reason.into());
        }
        if let Some(count) = event.count {
            entry.insert("count".into(), count.into());
        }
        if let Some(stream) = event.stream {
            entry.insert("stream".into(), stream.into());
        }
        entry.insert("device".into(), self.chain.clone().into());
        entry.insert("seq".into(), seq.into());
        entry.insert("prev".into(), prev.into());
        entry
    }
}

fn entry_hash(entry: &Map<String, Value>) -> String {
    let mut body = entry.clone();
    body.remove("hash");
    body.remove("id");
    // serde_json's maps are sorted: the encoding is canonical.
    blake3::hash(Value::Object(body).to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// Every audit entry of every device, from all of the log's documents, as stored.
fn audit_records(
    collections: &impl crate::collections::RecordSource,
) -> Result<Vec<Value>, CollectionError> {
    let mut entries = Vec::new();
    for name in collections.collection_names()? {
        if is_audit_shard(&name) {
            for record in collections.collection_records(&name)? {
                unpack_record(record, &mut entries);
            }
        }
    }
    Ok(entries)
}

/// The entries a record holds, each with its own id (`CHAIN-SEQ`). What cannot be read
/// as entries is passed on as it is: verification then names it as altered.
fn unpack_record(record: Value, out: &mut Vec<Value>) {
    if let Some(Value::String(text)) = record.get(ENTRIES_FIELD) {
        let entries = match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(entries)) if entries.iter().all(Value::is_object) => entries,
            _ => {
                out.push(record);
                return;
            }
        };
        for entry in entries {
            let Value::Object(mut entry) = entry else {
                continue;
            };
            let device = entry.get("device").and_then(Value::as_str);
            let seq = entry.get("seq").and_then(Value::as_u64);
            let id = match (device, seq) {
                (Some(device), Some(seq)) => format!("{device}-{seq:012}"),
                _ => "?".to_owned(),
            };
            entry.insert("id".into(), Value::String(id));
            out.push(Value::Object(entry));
        }
        return;
    }
    let Some(Value::String(text)) = record.get(ENTRY_FIELD) else {
        out.push(record);
        return;
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut entry)) => {
            if let Some(id) = record.get("id") {
                entry.insert("id".into(), id.clone());
            }
            out.push(Value::Object(entry));
        }
        _ => out.push(record),
    }
}

fn last_of_chain(collections: &Collections, chain: &str) -> Result<(u64, String), CollectionError> {
    let mut last = (0, GENESIS.to_owned());
    for entry in audit_records(collections)? {
        if entry["device"] == chain {
            let seq = entry["seq"].as_u64().unwrap_or(0);
            if seq > last.0 {
                last = (seq, entry["hash"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Ok(last)
}

/// Audit entries, oldest first, optionally of one grant. Entries that are not
/// readable as entries are left out here (`verify_audit` names them).
pub fn audit_entries(
    collections: &impl crate::collections::RecordSource,
    grant: Option<&str>,
) -> Result<Vec<AuditEntry>, CollectionError> {
    let mut entries: Vec<AuditEntry> = audit_records(collections)?
        .into_iter()
        .filter(|e| grant.is_none_or(|g| e["grant"] == g))
        .filter_map(|e| serde_json::from_value(e).ok())
        .collect();
    entries.sort_by(|a, b| (a.at, &a.device, a.seq).cmp(&(b.at, &b.device, b.seq)));
    Ok(entries)
}

/// Verifies every chain; `Err` names the first entry that does not verify.
pub fn verify_audit(collections: &Collections) -> Result<usize, (String, String)> {
    let entries = audit_records(collections).map_err(|e| ("(log)".to_owned(), e.to_string()))?;
    let mut chains: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in entries {
        chains
            .entry(entry["device"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(entry);
    }
    let mut count = 0;
    for (device, mut chain) in chains {
        chain.sort_by_key(|e| e["seq"].as_u64().unwrap_or(0));
        let mut prev = GENESIS.to_owned();
        for (index, entry) in chain.iter().enumerate() {
            let id = entry["id"].as_str().unwrap_or("?").to_owned();
            let expected_seq = index as u64 + 1;
            if entry["seq"].as_u64() != Some(expected_seq) {
                return Err((
                    id,
                    format!("entry {expected_seq} of device {device}'s chain is missing"),
                ));
            }
            if id != format!("{device}-{expected_seq:012}") {
                return Err((id, "the entry is stored under the wrong id".into()));
            }
            if entry["prev"].as_str() != Some(prev.as_str()) {
                return Err((id, "it does not follow the entry before it".into()));
            }
            let hash = entry.as_object().map(entry_hash).unwrap_or_default();
            if entry["hash"].as_str() != Some(hash.as_str()) {
                return Err((id, "its content does not match its hash (altered)".into()));
            }
            prev = hash;
            count += 1;
        }
    }
    Ok(count)
}

/// What a grant's service saw and did, from the audit log.
pub fn seen_by(collections: &Collections, grant: &str) -> Result<SeenReport, CollectionError> {
    let entries = audit_entries(collections, Some(grant))?;
    #[derive(Default)]
    struct Tally {
        reads: u64,
        deliveries: u64,
        fields: BTreeSet<String>,
        writes: u64,
        written_fields: BTreeSet<String>,
        written_ids: BTreeSet<String>,
    }
    let mut per_collection: BTreeMap<String, Tally> = BTreeMap::new();
    let mut refused = 0;
    // The owner's entries about the grant are not accesses of its service.
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| e.operation != Operation::Extend.as_str())
        .collect();
    for e in &entries {
        if e.operation == Operation::Refused.as_str() {
            refused += e.count.unwrap_or(1);
            continue;
        }
        let tally = per_collection.entry(e.collection.clone()).or_default();
        match e.operation.as_str() {
            "read" => {
                tally.reads += e.records;
                tally.fields.extend(e.fields.iter().cloned());
            }
            "subscribe" => {
                tally.deliveries += e.records;
                tally.fields.extend(e.fields.iter().cloned());
            }
            "write" | "create" | "remove" => {
                tally.writes += e.records;
                tally.written_fields.extend(e.fields.iter().cloned());
                tally.written_ids.extend(e.ids.iter().cloned());
            }
            _ => {}
        }
    }
    Ok(SeenReport {
        accesses: entries.len() as u64,
        first_access: entries.first().map(|e| e.at),
        last_access: entries.last().map(|e| e.at),
        collections: per_collection
            .into_iter()
            .map(|(collection, t)| SeenCollection {
                collection,
                record_reads: t.reads,
                deliveries: t.deliveries,
                fields: t.fields.into_iter().collect(),
                writes: t.writes,
                written_fields: t.written_fields.into_iter().collect(),
                written_ids: t.written_ids.into_iter().collect(),
            })
            .collect(),
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestVault;

    /// A grant as the audit log knows it: its id and its service.
    struct Grant {
        id: &'static str,
        service: &'static str,
    }

    impl Grant {
        fn event(&self, operation: Operation, collection: &str) -> AuditEvent {
            AuditEvent::new(self.id, self.service, operation, collection)
        }
    }

    fn grant_for_tests() -> Grant {
        Grant {
            id: "g1",
            service: "svc",
        }
    }

    fn read(grant: &Grant, records: usize) -> AuditEvent {
        AuditEvent {
            records,
            fields: vec!["name".into()],
            ..grant.event(Operation::Read, "contacts")
        }
    }

    #[tokio::test]
    async fn the_audit_chain_detects_altered_and_removed_entries() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let grant = grant_for_tests();
        let log = AuditLog::new("devA".into());
        // More entries than one audit document holds in tests (8): the chain spans three.
        for i in 0..15 {
            log.append(&c, read(&grant, i)).unwrap();
        }
        log.append_many(&c, (0..5).map(|i| read(&grant, i)).collect())
            .unwrap();
        // A second device's chain interleaves without coordination.
        AuditLog::new("devB".into())
            .append(&c, read(&grant, 1))
            .unwrap();
        assert_eq!(verify_audit(&c), Ok(21));
        let shards: Vec<String> = c
            .names()
            .unwrap()
            .into_iter()
            .filter(is_audit_shard)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shards, ["_audit", "_audit-1", "_audit-2"]);
        // A restarted node finds the end of its chain in the last document.
        AuditLog::new("devA".into())
            .append(&c, read(&grant, 1))
            .unwrap();
        assert_eq!(verify_audit(&c), Ok(22));
        assert_eq!(audit_entries(&c, None).unwrap().len(), 22);

        // Alter one entry's record count.
        let id = RecordId::parse("devA-000000000003").unwrap();
        let stored = c.get(&audit(), &id).unwrap().unwrap();
        let mut entry: Value = serde_json::from_str(stored["entry"].as_str().unwrap()).unwrap();
        entry["records"] = Value::from(999);
        let mut patch = Map::new();
        patch.insert("entry".into(), Value::String(entry.to_string()));
        c.patch(&audit(), &id, &patch).unwrap();
        let (entry, reason) = verify_audit(&c).unwrap_err();
        assert_eq!(entry, "devA-000000000003");
        assert!(reason.contains("altered"), "{reason}");

        // Remove an entry instead.
        let vault2 = TestVault::new();
        let c2 = Collections::open(vault2.store.clone(), [1; 16]).unwrap();
        let log2 = AuditLog::new("devA".into());
        for _ in 0..3 {
            log2.append(&c2, read(&grant, 1)).unwrap();
        }
        assert!(
            c2.remove(&audit(), &RecordId::parse("devA-000000000002").unwrap())
                .unwrap()
        );
        let (entry, reason) = verify_audit(&c2).unwrap_err();
        assert_eq!(entry, "devA-000000000003");
        assert!(reason.contains("missing"), "{reason}");

        // Several entries appended at once share a record; each is still checked.
        let vault3 = TestVault::new();
        let c3 = Collections::open(vault3.store.clone(), [1; 16]).unwrap();
        let log3 = AuditLog::new("devC".into());
        log3.append_many(&c3, (1..=4).map(|i| read(&grant, i)).collect())
            .unwrap();
        assert_eq!(verify_audit(&c3), Ok(4));
        let first = RecordId::parse("devC-000000000001").unwrap();
        let stored = c3.get(&audit(), &first).unwrap().unwrap();
        let mut entries: Value = serde_json::from_str(stored["entries"].as_str().unwrap()).unwrap();
        entries[2]["records"] = Value::from(999);
        let mut patch = Map::new();
        patch.insert("entries".into(), Value::String(entries.to_string()));
        c3.patch(&audit(), &first, &patch).unwrap();
        let (entry, reason) = verify_audit(&c3).unwrap_err();
        assert_eq!(entry, "devC-000000000003");
        assert!(reason.contains("altered"), "{reason}");
    }

    #[tokio::test]
    async fn the_report_counts_reads_deliveries_writes_and_refusals() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let grant = grant_for_tests();
        let log = AuditLog::new("devA".into());
        log.append(&c, read(&grant, 2)).unwrap();
        let delivery = AuditEvent {
            records: 3,
            fields: vec!["email".into()],
            stream: Some(1),
            ..grant.event(Operation::Subscribe, "contacts")
        };
        let write = AuditEvent {
            records: 1,
            fields: vec!["note".into()],
            ids: vec!["ada".into()],
            ..grant.event(Operation::Write, "contacts")
        };
        let refused = AuditEvent {
            reason: Some("rate_limited".into()),
            count: Some(5),
            ..grant.event(Operation::Refused, "")
        };
        log.append_many(&c, vec![delivery, write, refused]).unwrap();
        let seen = seen_by(&c, "g1").unwrap();
        assert_eq!((seen.accesses, seen.refused), (4, 5));
        let contacts = &seen.collections[0];
        assert_eq!(
            (contacts.record_reads, contacts.deliveries, contacts.writes),
            (2, 3, 1)
        );
        assert_eq!(contacts.fields, ["email", "name"]);
        assert_eq!(contacts.written_ids, ["ada"]);
        assert_eq!(verify_audit(&c), Ok(4));
    }
}
