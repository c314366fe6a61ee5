//! Access for services: grants, their tokens, views, and the audit log.
//!
//! In: grant requests from the owner; bearer tokens from services. Out: a signed token
//! per grant, a checked [`Grant`] per request (or the reason it is refused), and an
//! audit entry per access. Grants live in the system collection `_access` (one record
//! per grant), audit entries in `_audit`; both sync to every device like any
//! collection, so a grant or revocation made on one device holds on all.
//!
//! Tokens are biscuits signed with the vault's signing key. The authority block names
//! the grant and the vault, and carries the expiry as a check; the scope itself is read
//! from `_access` at every request, so a token the vault does not know is no grant, and
//! revocation takes effect at the next request.
//!
//! The audit log is one hash chain per device (`DEVICE-SEQ` ids, each entry hashing the
//! one before), so devices append without coordinating and any altered, removed or
//! reordered entry breaks its chain.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::Algorithm;
use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::builder_ext::BuilderExt;
use biscuit_auth::{AuthorizerBuilder, Biscuit, KeyPair, PrivateKey, UnverifiedBiscuit};
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::collections::{CollectionError, Collections};
use crate::keys::VaultKeys;

pub const ACCESS: &str = "_access";
pub const AUDIT: &str = "_audit";
/// Grants expire by default; `never` must be asked for.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("the token is not valid for this vault")]
    InvalidToken,
    #[error("this grant was revoked")]
    Revoked,
    #[error("this grant has expired")]
    Expired,
    #[error("{0}")]
    OutOfScope(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no grant {0}")]
    NotFound(String),
    #[error(transparent)]
    Collection(#[from] CollectionError),
    #[error("cannot make a token: {0}")]
    Token(String),
}

/// A grant as stored in `_access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub service: String,
    pub scope: Scope,
    #[serde(default)]
    pub purpose: String,
    pub issued_at: u64,
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// Requests a minute this grant may make, if limited.
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
}

impl Grant {
    pub fn status(&self, now: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a rate like `60/min`.
pub fn parse_rate(text: &str) -> Result<u32, AccessError> {
    let bad =
        || AccessError::BadRequest(format!("rate {text:?} is invalid: use N/min, e.g. 60/min"));
    let n = text.trim().strip_suffix("/min").ok_or_else(bad)?;
    n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad)
}

/// Counts requests per grant per minute on this device.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<std::collections::HashMap<String, (u64, u32)>>,
}

impl RateLimiter {
    /// Whether one more request of `grant` fits in its rate now.
    pub fn admit(&self, grant: &Grant) -> bool {
        let Some(limit) = grant.rate_per_minute else {
            return true;
        };
        let minute = now_unix() / 60;
        let mut windows = self.windows.lock().expect("rate lock is never poisoned");
        // Bound memory: forget windows from earlier minutes.
        windows.retain(|_, (m, _)| *m == minute);
        let slot = windows.entry(grant.id.clone()).or_insert((minute, 0));
        if slot.1 >= limit {
            return false;
        }
        slot.1 += 1;
        true
    }
}

/// Parses `30d`, `12h`, `90m`, `45s`, `2w`, or `never` (`None`).
pub fn parse_duration(text: &str) -> Result<Option<Duration>, AccessError> {
    let text = text.trim();
    if text == "never" {
        return Ok(None);
    }
    let bad = || {
        AccessError::BadRequest(format!(
            "duration {text:?} is invalid: use e.g. 30d, 12h, 90m, 45s, 2w or never"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n
        .checked_mul(unit_secs)
        .filter(|s| *s > 0 && *s < 100 * 365 * 86_400)
        .ok_or_else(bad)?;
    Ok(Some(Duration::from_secs(secs)))
}

fn access() -> CollectionName {
    CollectionName::parse(ACCESS).expect("valid system collection name")
}

fn audit() -> CollectionName {
    CollectionName::parse(AUDIT).expect("valid system collection name")
}

/// Entries per device in one audit document. The log is split so that appending costs
/// the same after years of accesses as on the first day: entry `seq` of any device
/// lives in `_audit` (the first 4096) or `_audit-N`.
#[cfg(not(test))]
const AUDIT_SHARD_ENTRIES: u64 = 4096;
/// Small in unit tests, so they cross document boundaries.
#[cfg(test)]
const AUDIT_SHARD_ENTRIES: u64 = 8;

fn audit_shard(seq: u64) -> CollectionName {
    match seq.saturating_sub(1) / AUDIT_SHARD_ENTRIES {
        0 => audit(),
        n => CollectionName::parse(&format!("{AUDIT}-{n}")).expect("valid system collection name"),
    }
}

fn is_audit_shard(name: &CollectionName) -> bool {
    let name = name.as_str();
    name == AUDIT
        || name
            .strip_prefix(AUDIT)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The field of an audit record holding the entry as canonical JSON text. Records
/// written before it (entries as plain maps) are read as they are.
const ENTRY_FIELD: &str = "entry";

/// Every audit entry of every device, from all of the log's documents.
fn audit_records(collections: &Collections) -> Result<Vec<Value>, CollectionError> {
    let mut entries = Vec::new();
    for name in collections.names()? {
        if is_audit_shard(&name) {
            entries.extend(collections.records(&name)?.into_iter().map(unpack_entry));
        }
    }
    Ok(entries)
}

fn unpack_entry(record: Value) -> Value {
    let Some(Value::String(text)) = record.get(ENTRY_FIELD) else {
        return record;
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut entry)) => {
            if let Some(id) = record.get("id") {
                entry.insert("id".into(), id.clone());
            }
            Value::Object(entry)
        }
        // Left as it is: verification then names it as altered.
        _ => record,
    }
}

fn root_key(keys: &VaultKeys) -> KeyPair {
    let private = PrivateKey::from_bytes(keys.signing_seed(), Algorithm::Ed25519)
        .expect("a 32-byte seed is a valid Ed25519 private key");
    KeyPair::from(&private)
}

/// What the owner grants.
pub struct NewGrant {
    pub service: String,
    pub scope: Scope,
    pub purpose: String,
    /// `None`: never expires.
    pub expires: Option<Duration>,
    pub to: Option<String>,
    pub rate_per_minute: Option<u32>,
}

impl NewGrant {
    /// A grant of `scope` to `service` with the defaults (30 days, no purpose).
    pub fn new(service: &str, scope: Scope) -> Self {
        Self {
            service: service.to_owned(),
            scope,
            purpose: String::new(),
            expires: Some(DEFAULT_EXPIRY),
            to: None,
            rate_per_minute: None,
        }
    }
}

/// Creates a grant and its token. Durable only after the store commits.
pub fn create_grant(
    collections: &Collections,
    keys: &VaultKeys,
    new: NewGrant,
) -> Result<(Grant, String), AccessError> {
    let NewGrant {
        service,
        scope,
        purpose,
        expires,
        to,
        rate_per_minute,
    } = new;
    let service = service.trim();
    if service.is_empty() || service.len() > 200 {
        return Err(AccessError::BadRequest(
            "the service name must be 1 to 200 characters".into(),
        ));
    }
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let id = RecordId::from_random(bytes);
    let issued_at = now_unix();
    let grant = Grant {
        id: id.to_string(),
        service: service.to_owned(),
        scope,
        purpose,
        issued_at,
        expires_at: expires.map(|d| issued_at + d.as_secs()),
        to,
        revoked_at: None,
        rate_per_minute,
    };
    let mut builder = Biscuit::builder()
        .fact(format!("grant(\"{}\")", grant.id).as_str())
        .and_then(|b| b.fact(format!("vault(\"{}\")", keys.vault_id_hex()).as_str()))
        .map_err(|e| AccessError::Token(e.to_string()))?;
    if let Some(expires_at) = grant.expires_at {
        builder = builder.check_expiration_date(UNIX_EPOCH + Duration::from_secs(expires_at));
    }
    let token = builder
        .build(&root_key(keys))
        .and_then(|t| t.to_base64())
        .map_err(|e| AccessError::Token(e.to_string()))?;
    let mut record = serde_json::to_value(&grant).expect("a grant serializes");
    record.as_object_mut().expect("an object").remove("id");
    collections.put(&access(), &id, record.as_object().expect("an object"))?;
    Ok((grant, token))
}

/// Every grant, newest first.
pub fn list_grants(collections: &Collections) -> Result<Vec<Grant>, AccessError> {
    let mut grants: Vec<Grant> = collections
        .records(&access())?
        .into_iter()
        .filter_map(|r| serde_json::from_value(r).ok())
        .collect();
    grants.sort_by(|a, b| b.issued_at.cmp(&a.issued_at).then(a.id.cmp(&b.id)));
    Ok(grants)
}

pub fn get_grant(collections: &Collections, id: &str) -> Result<Option<Grant>, AccessError> {
    let Ok(record_id) = RecordId::parse(id) else {
        return Ok(None);
    };
    Ok(collections
        .get(&access(), &record_id)?
        .and_then(|r| serde_json::from_value(r).ok()))
}

/// Marks a grant revoked. Durable only after the store commits.
pub fn revoke(collections: &Collections, id: &str) -> Result<Grant, AccessError> {
    let grant = get_grant(collections, id)?.ok_or_else(|| AccessError::NotFound(id.to_owned()))?;
    if grant.revoked_at.is_none() {
        let mut patch = Map::new();
        patch.insert("revoked_at".into(), json!(now_unix()));
        let record_id = RecordId::parse(id).map_err(|_| AccessError::NotFound(id.to_owned()))?;
        collections.patch(&access(), &record_id, &patch)?;
    }
    get_grant(collections, id)?.ok_or_else(|| AccessError::NotFound(id.to_owned()))
}

/// Narrows a token offline (a service can do it without the vault): the new token may
/// only read `read` (COLLECTION or COLLECTION.FIELD, comma-separated), and only until
/// `expires` if given. Appended blocks only ever add checks, so nothing can widen it.
pub fn attenuate(
    token: &str,
    read: &str,
    expires: Option<Duration>,
) -> Result<String, AccessError> {
    let scope =
        Scope::parse(Some(read), None, &[]).map_err(|e| AccessError::BadRequest(e.to_string()))?;
    let mut collections = Vec::new();
    let mut resources = Vec::new();
    for (name, c) in &scope.collections {
        match &c.fields {
            hearth_protocol::scope::Fields::All => collections.push(format!("{name:?}")),
            hearth_protocol::scope::Fields::Only(paths) => {
                resources.extend(paths.iter().map(|p| format!("\"{name}.{p}\"")));
            }
        }
    }
    let mut alternatives = Vec::new();
    if !collections.is_empty() {
        alternatives.push(format!(
            "collection($c), [{}].contains($c)",
            collections.join(", ")
        ));
    }
    if !resources.is_empty() {
        alternatives.push(format!(
            "resource($r), [{}].contains($r)",
            resources.join(", ")
        ));
    }
    let mut block = BlockBuilder::new()
        .check("check if operation(\"read\")")
        .and_then(|b| b.check(format!("check if {}", alternatives.join(" or ")).as_str()))
        .map_err(|e| AccessError::Token(e.to_string()))?;
    if let Some(expires) = expires {
        block = block.check_expiration_date(SystemTime::now() + expires);
    }
    UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|_| AccessError::BadRequest("that is not a Hearth token".into()))?
        .append(block)
        .and_then(|t| t.to_base64())
        .map_err(|e| AccessError::Token(e.to_string()))
}

/// A request's checked grant, with the token, whose appended blocks may narrow it.
pub struct Authorized {
    pub grant: Grant,
    token: Arc<Biscuit>,
}

impl Authorized {
    /// Whether the token has been narrowed since the vault issued it.
    pub fn is_attenuated(&self) -> bool {
        self.token.block_count() > 1
    }

    /// Whether the token's checks allow `operation` on `collection` (and `field`, a
    /// dotted path, if given). The grant's own scope is checked separately.
    pub fn allows(&self, operation: &str, collection: &str, field: Option<&str>) -> bool {
        if !self.is_attenuated() {
            return true;
        }
        let resource = match field {
            Some(f) => format!("{collection}.{f}"),
            None => collection.to_owned(),
        };
        let built = AuthorizerBuilder::new()
            .time()
            .fact(format!("operation({operation:?})").as_str())
            .and_then(|b| b.fact(format!("collection({collection:?})").as_str()))
            .and_then(|b| b.fact(format!("resource({resource:?})").as_str()))
            .and_then(|b| b.policy("allow if true"))
            .and_then(|b| b.build(&self.token));
        built.and_then(|mut a| a.authorize()).is_ok()
    }
}

/// Checks a service's token: signature, vault, expiry, and the grant in `_access`
/// (exists, not revoked, not expired). Returns the grant with the token, whose
/// narrowing (if any) is checked per request with [`Authorized::allows`].
///
/// A token's signature is verified once and remembered (by a hash of the token and
/// the vault); its time checks are re-run at most once a second, since they only
/// change from one second to the next. The grant is re-read whenever `_access`
/// changed, so a revocation applies to the very next request.
pub fn authorize(
    collections: &Collections,
    keys: &VaultKeys,
    token: &str,
) -> Result<Authorized, AccessError> {
    let token = token.trim();
    let verified = VERIFIED.get_or_verify(keys, token)?;
    let grant = GRANTS.get(collections, &verified.grant_id)?;
    if grant.revoked_at.is_some() {
        return Err(AccessError::Revoked);
    }
    let now = now_unix();
    if grant.expires_at.is_some_and(|e| e <= now) {
        return Err(AccessError::Expired);
    }
    // The token's own expiry. Narrowing checks need the request, see `Authorized::allows`.
    if verified.time_checked.load(Ordering::Relaxed) != now {
        let expired = AuthorizerBuilder::new()
            .time()
            .policy("allow if true")
            .and_then(|b| b.build(&verified.token))
            .and_then(|mut a| a.authorize())
            .is_err();
        if expired && verified.token.block_count() == 1 {
            return Err(AccessError::Expired);
        }
        verified.time_checked.store(now, Ordering::Relaxed);
    }
    Ok(Authorized {
        grant,
        token: verified.token.clone(),
    })
}

/// A token whose signature and vault were checked.
struct Verified {
    grant_id: String,
    token: Arc<Biscuit>,
    /// The second (UNIX time) in which the token's time checks last passed.
    time_checked: AtomicU64,
}

/// Verified tokens, bounded: when full it starts over (a miss only costs a check).
struct VerifiedTokens(Mutex<HashMap<[u8; 32], Arc<Verified>>>);

const MAX_CACHED: usize = 4096;

static VERIFIED: LazyLock<VerifiedTokens> =
    LazyLock::new(|| VerifiedTokens(Mutex::new(HashMap::new())));

impl VerifiedTokens {
    fn get_or_verify(&self, keys: &VaultKeys, token: &str) -> Result<Arc<Verified>, AccessError> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(keys.vault_id_hex().as_bytes());
        hasher.update(&[0]);
        hasher.update(token.as_bytes());
        let key = *hasher.finalize().as_bytes();
        if let Some(v) = self
            .0
            .lock()
            .expect("token cache lock is never poisoned")
            .get(&key)
        {
            return Ok(v.clone());
        }
        let verified = Arc::new(verify(keys, token)?);
        let mut cache = self.0.lock().expect("token cache lock is never poisoned");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }
}

/// Verifies a token's signature chain against the vault's key and reads its grant.
fn verify(keys: &VaultKeys, token: &str) -> Result<Verified, AccessError> {
    let biscuit = Biscuit::from_base64(token, root_key(keys).public())
        .map_err(|_| AccessError::InvalidToken)?;
    let mut authorizer = AuthorizerBuilder::new()
        .policy("allow if true")
        .and_then(|b| b.build(&biscuit))
        .map_err(|_| AccessError::InvalidToken)?;
    let ids: Vec<(String,)> = authorizer
        .query("data($id) <- grant($id)")
        .map_err(|_| AccessError::InvalidToken)?;
    let vaults: Vec<(String,)> = authorizer
        .query("data($v) <- vault($v)")
        .map_err(|_| AccessError::InvalidToken)?;
    let ([(id,)], [(vault,)]) = (ids.as_slice(), vaults.as_slice()) else {
        return Err(AccessError::InvalidToken);
    };
    if *vault != keys.vault_id_hex() {
        return Err(AccessError::InvalidToken);
    }
    Ok(Verified {
        grant_id: id.clone(),
        token: Arc::new(biscuit),
        time_checked: AtomicU64::new(0),
    })
}

/// Grants as last read, each with the heads of `_access` it was read at.
struct GrantCache(Mutex<HashMap<String, (Vec<automerge::ChangeHash>, Grant)>>);

static GRANTS: LazyLock<GrantCache> = LazyLock::new(|| GrantCache(Mutex::new(HashMap::new())));

impl GrantCache {
    fn get(&self, collections: &Collections, id: &str) -> Result<Grant, AccessError> {
        let heads = collections.heads(&access())?;
        // Equal heads mean an identical history, so the same grant, whichever vault.
        let key = id.to_owned();
        let cached = self
            .0
            .lock()
            .expect("grant cache lock is never poisoned")
            .get(&key)
            .filter(|(at, _)| *at == heads)
            .map(|(_, grant)| grant.clone());
        if let Some(grant) = cached {
            return Ok(grant);
        }
        let grant = get_grant(collections, id)?.ok_or(AccessError::InvalidToken)?;
        let mut cache = self.0.lock().expect("grant cache lock is never poisoned");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (heads, grant.clone()));
        Ok(grant)
    }
}

/// One access, as the audit log records it.
pub struct AccessRecord<'a> {
    pub grant: &'a Grant,
    pub operation: &'a str,
    pub collection: &'a str,
    pub records: usize,
    pub fields: Vec<String>,
}

/// Appends to this device's audit chain. One writer at a time per device.
pub struct AuditLog {
    device: String,
    state: Mutex<Option<(u64, String)>>,
}

impl AuditLog {
    pub fn new(device: String) -> Self {
        Self {
            device,
            state: Mutex::new(None),
        }
    }

    /// Appends an entry. Durable only after the store commits.
    pub fn append(
        &self,
        collections: &Collections,
        access: AccessRecord<'_>,
    ) -> Result<(), AccessError> {
        let mut state = self.state.lock().expect("audit lock is never poisoned");
        if state.is_none() {
            *state = Some(last_of_chain(collections, &self.device)?);
        }
        let (seq, prev) = state.as_ref().expect("set above").clone();
        let seq = seq + 1;
        let mut fields = access.fields;
        fields.sort();
        fields.dedup();
        let mut entry = json!({
            "at": now_unix(),
            "grant": access.grant.id,
            "service": access.grant.service,
            "operation": access.operation,
            "collection": access.collection,
            "records": access.records,
            "fields": fields,
            "device": self.device,
            "seq": seq,
            "prev": prev,
        });
        let hash = entry_hash(&entry);
        entry["hash"] = json!(hash);
        let id = RecordId::parse(&format!("{}-{seq:012}", self.device))
            .expect("PeerId and digits make a valid id");
        // Stored as one string: a dozen map fields would cost a dozen Automerge
        // operations per access, and entries are never edited field by field.
        let mut record = Map::new();
        record.insert(ENTRY_FIELD.into(), Value::String(entry.to_string()));
        collections.put(&audit_shard(seq), &id, &record)?;
        *state = Some((seq, hash));
        Ok(())
    }
}

fn entry_hash(entry: &Value) -> String {
    let mut body = entry.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("hash");
        map.remove("id");
    }
    // serde_json's maps are sorted: the encoding is canonical.
    blake3::hash(body.to_string().as_bytes())
        .to_hex()
        .to_string()
}

fn last_of_chain(collections: &Collections, device: &str) -> Result<(u64, String), AccessError> {
    let mut last = (0, GENESIS.to_owned());
    for entry in audit_records(collections)? {
        if entry["device"] == device {
            let seq = entry["seq"].as_u64().unwrap_or(0);
            if seq > last.0 {
                last = (seq, entry["hash"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Ok(last)
}

/// Audit entries, oldest first, optionally of one grant.
pub fn audit_entries(
    collections: &Collections,
    grant: Option<&str>,
) -> Result<Vec<Value>, AccessError> {
    let mut entries: Vec<Value> = audit_records(collections)?
        .into_iter()
        .filter(|e| grant.is_none_or(|g| e["grant"] == g))
        .collect();
    entries.sort_by(|a, b| {
        (a["at"].as_u64(), a["device"].as_str(), a["seq"].as_u64()).cmp(&(
            b["at"].as_u64(),
            b["device"].as_str(),
            b["seq"].as_u64(),
        ))
    });
    Ok(entries)
}

/// Verifies every device's chain; `Err` names the first entry that does not verify.
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
            let hash = entry_hash(entry);
            if entry["hash"].as_str() != Some(hash.as_str()) {
                return Err((id, "its content does not match its hash (altered)".into()));
            }
            prev = hash;
            count += 1;
        }
    }
    Ok(count)
}

/// What a grant's service already saw, from the audit log.
pub fn seen_by(collections: &Collections, grant: &str) -> Result<Value, AccessError> {
    let entries = audit_entries(collections, Some(grant))?;
    let mut per_collection: BTreeMap<String, (u64, std::collections::BTreeSet<String>)> =
        BTreeMap::new();
    for e in entries.iter().filter(|e| e["operation"] == "read") {
        let slot = per_collection
            .entry(e["collection"].as_str().unwrap_or_default().to_owned())
            .or_default();
        slot.0 += e["records"].as_u64().unwrap_or(0);
        slot.1.extend(
            e["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned)),
        );
    }
    let collections: Vec<Value> = per_collection
        .into_iter()
        .map(|(name, (records, fields))| json!({"collection": name, "record_reads": records, "fields": fields}))
        .collect();
    Ok(json!({
        "accesses": entries.len(),
        "first_access": entries.first().map(|e| e["at"].clone()),
        "last_access": entries.last().map(|e| e["at"].clone()),
        "collections": collections,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            parse_duration("90m").unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("never").unwrap(), None);
        for bad in ["", "d", "10", "10y", "-1d", "0h", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::testutil::TestVault;

    fn grant_for_tests(collections: &Collections, keys: &VaultKeys) -> Grant {
        let scope = Scope::parse(Some("contacts"), None, &[]).unwrap();
        create_grant(collections, keys, NewGrant::new("svc", scope))
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn the_audit_chain_detects_altered_and_removed_entries() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let grant = grant_for_tests(&c, &vault.keys);
        let log = AuditLog::new("devA".into());
        // More entries than one audit document holds in tests (8): the chain spans three.
        for i in 0..20 {
            let record = AccessRecord {
                grant: &grant,
                operation: "read",
                collection: "contacts",
                records: i,
                fields: vec!["name".into()],
            };
            log.append(&c, record).unwrap();
        }
        // A second device's chain interleaves without coordination.
        let other = AuditLog::new("devB".into());
        other
            .append(
                &c,
                AccessRecord {
                    grant: &grant,
                    operation: "read",
                    collection: "contacts",
                    records: 1,
                    fields: vec![],
                },
            )
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
        let restarted = AuditLog::new("devA".into());
        restarted
            .append(
                &c,
                AccessRecord {
                    grant: &grant,
                    operation: "read",
                    collection: "contacts",
                    records: 1,
                    fields: vec![],
                },
            )
            .unwrap();
        assert_eq!(verify_audit(&c), Ok(22));
        assert_eq!(audit_entries(&c, None).unwrap().len(), 22);

        // Alter one entry's record count.
        let id = RecordId::parse("devA-000000000003").unwrap();
        let stored = c.get(&audit(), &id).unwrap().unwrap();
        let mut entry: Value = serde_json::from_str(stored["entry"].as_str().unwrap()).unwrap();
        entry["records"] = json!(999);
        let mut patch = Map::new();
        patch.insert("entry".into(), json!(entry.to_string()));
        c.patch(&audit(), &id, &patch).unwrap();
        let (entry, reason) = verify_audit(&c).unwrap_err();
        assert_eq!(entry, "devA-000000000003");
        assert!(reason.contains("altered"), "{reason}");

        // Remove an entry instead.
        let vault2 = TestVault::new();
        let c2 = Collections::open(vault2.store.clone(), [1; 16]).unwrap();
        let grant2 = grant_for_tests(&c2, &vault2.keys);
        let log2 = AuditLog::new("devA".into());
        for _ in 0..3 {
            log2.append(
                &c2,
                AccessRecord {
                    grant: &grant2,
                    operation: "read",
                    collection: "contacts",
                    records: 1,
                    fields: vec![],
                },
            )
            .unwrap();
        }
        assert!(
            c2.remove(&audit(), &RecordId::parse("devA-000000000002").unwrap())
                .unwrap()
        );
        let (entry, reason) = verify_audit(&c2).unwrap_err();
        assert_eq!(entry, "devA-000000000003");
        assert!(reason.contains("missing"), "{reason}");
    }

    #[tokio::test]
    async fn tokens_are_checked_against_the_registry() {
        let vault = TestVault::new();
        let c = Collections::open(vault.store.clone(), [1; 16]).unwrap();
        let scope = Scope::parse(Some("contacts"), None, &[]).unwrap();
        let (grant, token) =
            create_grant(&c, &vault.keys, NewGrant::new("svc", scope.clone())).unwrap();
        assert_eq!(
            authorize(&c, &vault.keys, &token).unwrap().grant.id,
            grant.id
        );

        // Tampered: flip a character in the middle.
        let mut bytes = token.clone().into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            authorize(&c, &vault.keys, &tampered),
            Err(AccessError::InvalidToken)
        ));
        assert!(matches!(
            authorize(&c, &vault.keys, "garbage"),
            Err(AccessError::InvalidToken)
        ));

        // Foreign: a token of another vault.
        let other = TestVault::new();
        let oc = Collections::open(other.store.clone(), [2; 16]).unwrap();
        let (_, foreign) = create_grant(
            &oc,
            &other.keys,
            NewGrant {
                expires: None,
                ..NewGrant::new("svc", scope.clone())
            },
        )
        .unwrap();
        assert!(matches!(
            authorize(&c, &vault.keys, &foreign),
            Err(AccessError::InvalidToken)
        ));

        // Revoked.
        revoke(&c, &grant.id).unwrap();
        assert!(matches!(
            authorize(&c, &vault.keys, &token),
            Err(AccessError::Revoked)
        ));

        // Expired: the registry's expiry and the token's own check.
        let short_lived = NewGrant {
            expires: Some(Duration::from_secs(1)),
            ..NewGrant::new("svc", scope)
        };
        let (short, short_token) = create_grant(&c, &vault.keys, short_lived).unwrap();
        assert!(authorize(&c, &vault.keys, &short_token).is_ok());
        let mut patch = Map::new();
        patch.insert("expires_at".into(), json!(now_unix() - 1));
        c.patch(&access(), &RecordId::parse(&short.id).unwrap(), &patch)
            .unwrap();
        assert!(matches!(
            authorize(&c, &vault.keys, &short_token),
            Err(AccessError::Expired)
        ));
    }
}
