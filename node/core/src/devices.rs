//! Membership: the vault's device list, the system collection `_devices`.
//!
//! One record per device, keyed by its PeerId: `{"name", "added_at", "removed_at"?,
//! "addrs"?, "exchange"?}` (`exchange`: the public half of its exchange key, to which
//! the vault's epoch keys are sealed; see [`crate::epochs`]).
//! A device is a member while its record exists without `removed_at`. Removal is a
//! tombstone rather than a delete, so a concurrent edit cannot bring a removed device
//! back. The list syncs like any collection, so what one device decides holds on all.

use crate::clock::now_unix;

use hearth_protocol::{CollectionName, RecordId};
use libp2p_identity::PeerId;
use serde_json::{Map, Value, json};

use crate::collections::{CollectionError, Collections};

pub const DEVICES: &str = "_devices";

pub fn collection() -> CollectionName {
    CollectionName::parse(DEVICES).expect("_devices is a valid system collection name")
}

fn record_id(peer: &PeerId) -> RecordId {
    RecordId::parse(&peer.to_string()).expect("a PeerId in base58 is a valid record id")
}

pub fn is_member(collections: &Collections, peer: &PeerId) -> bool {
    match collections.get(&collection(), &record_id(peer)) {
        Ok(Some(record)) => record.get("removed_at").is_none_or(Value::is_null),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the device list; refusing the peer");
            false
        }
    }
}

/// Every device record, each with its `"id"` (the PeerId).
pub fn list(collections: &Collections) -> Result<Vec<Value>, CollectionError> {
    collections.records(&collection())
}

/// A device's record in `_devices`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Device {
    /// The PeerId.
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub added_at: u64,
    #[serde(default)]
    pub removed_at: Option<u64>,
    #[serde(default)]
    pub addrs: Vec<String>,
    /// The public half of its exchange key, base64 (see [`crate::epochs`]).
    #[serde(default)]
    pub exchange: Option<String>,
    /// The device's own signature over it (base64): no other device can publish an
    /// exchange key in its name.
    #[serde(default)]
    pub exchange_sig: Option<String>,
}

const EXCHANGE_DOMAIN: &[u8] = b"hearth 2026-12 exchange key v1\0";

/// What a device signs to publish its exchange key.
pub(crate) fn exchange_message(vault_id: &[u8; 16], peer: &str, public: &[u8; 32]) -> Vec<u8> {
    let mut out = EXCHANGE_DOMAIN.to_vec();
    out.extend_from_slice(vault_id);
    out.extend_from_slice(peer.as_bytes());
    out.push(0);
    out.extend_from_slice(public);
    out
}

/// The public key a PeerId holds (an Ed25519 PeerId is its key, inlined).
pub fn public_key_of(peer: &PeerId) -> Option<libp2p_identity::PublicKey> {
    let bytes = peer.to_bytes();
    // An identity multihash: code 0, then the length, then the protobuf-encoded key.
    if bytes.len() < 2 || bytes[0] != 0 || usize::from(bytes[1]) != bytes.len() - 2 {
        return None;
    }
    libp2p_identity::PublicKey::try_decode_protobuf(&bytes[2..]).ok()
}

impl Device {
    /// Its exchange key's public half, if it published a well-formed one signed by its
    /// own device key for this vault.
    pub fn exchange_key(&self, vault_id: &[u8; 16]) -> Option<[u8; 32]> {
        let public: [u8; 32] = data_encoding::BASE64
            .decode(self.exchange.as_deref()?.as_bytes())
            .ok()?
            .try_into()
            .ok()?;
        let signature = data_encoding::BASE64
            .decode(self.exchange_sig.as_deref()?.as_bytes())
            .ok()?;
        let key = public_key_of(&self.id.parse().ok()?)?;
        key.verify(&exchange_message(vault_id, &self.id, &public), &signature)
            .then_some(public)
    }
}

/// Publishes this device's exchange key in its record, signed by its device key,
/// unless it is there already. Returns whether anything changed (then the store must
/// commit).
pub fn set_exchange(
    collections: &Collections,
    keys: &crate::keys::VaultKeys,
) -> Result<bool, CollectionError> {
    let me = keys.peer_id();
    let id = record_id(&me);
    let public = keys.exchange_public();
    let Some(mut record) = collections.get(&collection(), &id)? else {
        return Ok(false);
    };
    if let Some(fields) = record.as_object_mut() {
        fields.insert("id".into(), Value::String(me.to_string()));
    }
    let published: Option<Device> = serde_json::from_value(record).ok();
    if published.is_some_and(|d| d.exchange_key(&keys.vault_id) == Some(public)) {
        return Ok(false);
    }
    let signature = keys
        .device
        .sign(&exchange_message(&keys.vault_id, &me.to_string(), &public))
        .expect("an Ed25519 key signs anything");
    let mut patch = Map::new();
    patch.insert(
        "exchange".into(),
        Value::String(data_encoding::BASE64.encode(&public)),
    );
    patch.insert(
        "exchange_sig".into(),
        Value::String(data_encoding::BASE64.encode(&signature)),
    );
    collections.patch(&collection(), &id, &patch)?;
    Ok(true)
}

/// Each device's name by its tag (hex of [`crate::collections::device_tag`]), which
/// changes carry as their author: how a conflict names the devices involved. A device
/// without a name is named by its PeerId; a removed one says so.
pub fn names_by_tag(
    collections: &Collections,
) -> Result<std::collections::HashMap<String, String>, CollectionError> {
    let mut out = std::collections::HashMap::new();
    for device in devices(collections)? {
        let Ok(peer) = device.id.parse::<PeerId>() else {
            continue;
        };
        let tag = data_encoding::HEXLOWER.encode(&crate::collections::device_tag(&peer));
        let mut name = if device.name.is_empty() {
            device.id.clone()
        } else {
            device.name.clone()
        };
        if device.removed_at.is_some() {
            name.push_str(" (removed)");
        }
        out.insert(tag, name);
    }
    Ok(out)
}

/// Every device of the device list (records that are not readable are skipped).
pub fn devices(collections: &Collections) -> Result<Vec<Device>, CollectionError> {
    Ok(list(collections)?
        .into_iter()
        .filter_map(|d| serde_json::from_value(d).ok())
        .collect())
}

pub fn members(collections: &Collections) -> Vec<PeerId> {
    list(collections)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.get("removed_at").is_none_or(Value::is_null))
        .filter_map(|d| {
            d.get("id")
                .and_then(Value::as_str)
                .and_then(|id| id.parse().ok())
        })
        .collect()
}

/// Where each other member device last said it listens.
pub fn member_addresses(
    collections: &Collections,
    me: &PeerId,
) -> Vec<(PeerId, Vec<multiaddr::Multiaddr>)> {
    list(collections)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.get("removed_at").is_none_or(Value::is_null))
        .filter_map(|d| {
            let peer: PeerId = d.get("id")?.as_str()?.parse().ok()?;
            let addrs = d
                .get("addrs")?
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect();
            (peer != *me).then_some((peer, addrs))
        })
        .collect()
}

/// Records where this device listens, so the others can find it after a restart, in
/// order (the same addresses in another order are no change). Returns whether
/// anything changed (then the store must commit).
pub fn set_addresses(
    collections: &Collections,
    me: &PeerId,
    addrs: &[multiaddr::Multiaddr],
) -> Result<bool, CollectionError> {
    let id = record_id(me);
    let mut wanted: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    wanted.sort();
    wanted.dedup();
    let wanted: Vec<Value> = wanted.into_iter().map(Value::String).collect();
    match collections.get(&collection(), &id)? {
        Some(record) if record.get("addrs") == Some(&Value::Array(wanted.clone())) => Ok(false),
        Some(_) => {
            let mut patch = Map::new();
            patch.insert("addrs".into(), Value::Array(wanted));
            collections.patch(&collection(), &id, &patch)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Adds a device, unless it is already listed (a removed device stays removed).
/// Durable only after the store commits.
pub fn add(collections: &Collections, peer: &PeerId, name: &str) -> Result<bool, CollectionError> {
    let id = record_id(peer);
    if collections.get(&collection(), &id)?.is_some() {
        return Ok(false);
    }
    let record = json!({"name": name, "added_at": now_unix()});
    collections.put(
        &collection(),
        &id,
        record.as_object().expect("a JSON object"),
    )?;
    Ok(true)
}

/// The longest device name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Checks a device name a person chose: 1 to 64 characters, no control characters,
/// not only spaces. Returns it trimmed.
pub fn valid_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("a device name cannot be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "a device name has at most {MAX_NAME_CHARS} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a device name cannot hold control characters".into());
    }
    Ok(name)
}

/// Renames a device; `false` if it is not listed. Durable only after the store commits.
pub fn rename(
    collections: &Collections,
    peer: &PeerId,
    name: &str,
) -> Result<bool, CollectionError> {
    let mut patch = Map::new();
    patch.insert("name".into(), json!(name));
    Ok(collections
        .patch(&collection(), &record_id(peer), &patch)?
        .is_some())
}

/// Marks a device removed; `false` if it is not listed.
pub fn remove(collections: &Collections, peer: &PeerId) -> Result<bool, CollectionError> {
    mark_removed(collections, peer, now_unix())
}

/// Marks a device removed as of `at`; `false` if it is not listed.
pub fn mark_removed(
    collections: &Collections,
    peer: &PeerId,
    at: u64,
) -> Result<bool, CollectionError> {
    let mut patch = Map::new();
    patch.insert("removed_at".into(), json!(at));
    Ok(collections
        .patch(&collection(), &record_id(peer), &patch)?
        .is_some())
}

/// When a device was removed, if it was.
pub fn removed_at(collections: &Collections, peer: &PeerId) -> Option<u64> {
    collections
        .get(&collection(), &record_id(peer))
        .ok()
        .flatten()?
        .get("removed_at")?
        .as_u64()
}

/// Where this device keeps when it last synced with each other device: its own
/// knowledge, not vault data, so it is not synced. Keys are keyed hashes of the PeerId;
/// each value (sealed) holds the PeerId and the time.
const LAST_SYNC_TREE: &str = "last_sync";

/// Records that this device synced with `peer` at `at` (Unix seconds); durable with the
/// store's next commit.
pub fn record_sync(
    store: &crate::store::Store,
    peer: &PeerId,
    at: u64,
) -> Result<(), crate::store::StoreError> {
    let peer = peer.to_string();
    let key = store.name_key(LAST_SYNC_TREE, &peer);
    let value =
        serde_json::to_vec(&json!({ "peer": peer, "at": at })).expect("a JSON object serializes");
    store.tree(LAST_SYNC_TREE)?.insert(&key, &value)
}

/// When this device last synced with each device, as recorded (across restarts).
pub fn recorded_syncs(store: &crate::store::Store) -> std::collections::HashMap<PeerId, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(tree) = store.tree(LAST_SYNC_TREE) else {
        return out;
    };
    for entry in tree.scan_prefix(&[]) {
        let Ok((_, value)) = entry else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<Value>(&value) else {
            continue;
        };
        if let (Some(peer), Some(at)) = (
            record["peer"].as_str().and_then(|p| p.parse().ok()),
            record["at"].as_u64(),
        ) {
            out.insert(peer, at);
        }
    }
    out
}

/// This machine's name, for the device list.
pub fn default_device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".to_owned())
}
