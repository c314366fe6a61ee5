//! Grants: the system collection `_access`, one record per grant.
//!
//! A grant names the service, its scope (read fields, write fields, filter per
//! collection), purpose, expiry, the PeerId a remote service must call from, a rate,
//! and the binding of its token (`token_id`). Revocation sets `revoked_at`; the record
//! syncs to every device, so a revocation made on one holds on all.

use std::time::Duration;

use hearth_protocol::api::GrantStatus;
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AccessError, tokens};
use crate::access::audit::{AuditEvent, Operation};
use crate::collections::Collections;
use crate::keys::VaultKeys;

pub const ACCESS: &str = "_access";
/// Grants expire by default; `never` must be asked for.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default for a grant with an app password: a phone or a desktop app set up once
/// and left alone, which a month would silently cut off. `hearth status` and the
/// dashboard warn two weeks before any grant expires.
pub const APP_PASSWORD_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long before a grant expires the owner is warned.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

pub(crate) fn access() -> CollectionName {
    CollectionName::parse(ACCESS).expect("valid system collection name")
}

/// A grant as stored in `_access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(default, skip_serializing)]
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
    /// The revocation id (hex) of the authority block of the token issued for this
    /// grant: only tokens descending from it are accepted. Absent in grants made before
    /// tokens were bound, which are refused.
    #[serde(default)]
    pub token_id: Option<String>,
    /// BLAKE3 (hex) of the grant's app password, if it has one (for HTTP Basic auth
    /// from DAV clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// The token carries no date of its own: the grant's `expires_at` is its only
    /// expiry, so extending the grant extends the token (grants made since `hearth
    /// extend` exists). Tokens of older grants check the expiry they were made with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_undated: bool,
    /// The date an older grant's token carries, once the grant was extended past it
    /// (before, it is `expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<u64>,
}

impl Grant {
    /// An access of this grant, as the audit log records it.
    pub fn event(&self, operation: Operation, collection: &str) -> AuditEvent {
        AuditEvent::new(&self.id, &self.service, operation, collection)
    }

    /// When the token itself stops, whatever the grant says: for grants made before
    /// tokens were undated, the expiry they were made with.
    pub fn token_dated(&self) -> Option<u64> {
        if self.token_undated {
            None
        } else {
            self.token_expires_at.or(self.expires_at)
        }
    }

    pub fn status(&self, now: u64) -> GrantStatus {
        if self.revoked_at.is_some() {
            GrantStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            GrantStatus::Expired
        } else if self.token_id.is_none() {
            GrantStatus::Unbound
        } else {
            GrantStatus::Active
        }
    }

    fn from_record(record: Value) -> Option<Grant> {
        let id = record.get("id")?.as_str()?.to_owned();
        let mut grant: Grant = serde_json::from_value(record).ok()?;
        grant.id = id;
        Some(grant)
    }
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
    /// Also issue a short password bound to the grant.
    pub app_password: bool,
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
            app_password: false,
        }
    }
}

/// What creating a grant hands out once: the token, and the app password if asked.
pub struct Issued {
    pub token: String,
    pub password: Option<zeroize::Zeroizing<String>>,
}

/// A new app password: 100 random bits as five groups of four letters and digits
/// (`k3vd-9q2w-…`), easy to type into a phone.
fn new_password() -> zeroize::Zeroizing<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = zeroize::Zeroizing::new([0u8; 20]);
    rand::rngs::OsRng.fill_bytes(&mut *bytes);
    let mut out = zeroize::Zeroizing::new(String::with_capacity(24));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(ALPHABET[(*b as usize) % ALPHABET.len()] as char);
    }
    out
}

/// Whether `text` has the shape of an app password.
pub fn looks_like_password(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().all(|g| {
            g.len() == 4
                && g.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// The stored form of an app password.
pub fn password_hash(password: &str) -> String {
    blake3::hash(password.as_bytes()).to_hex().to_string()
}

/// Creates a grant and its token. Durable only after the store commits.
pub fn create_grant(
    collections: &Collections,
    keys: &VaultKeys,
    new: NewGrant,
) -> Result<(Grant, Issued), AccessError> {
    let NewGrant {
        service,
        scope,
        purpose,
        expires,
        to,
        rate_per_minute,
        app_password,
    } = new;
    let service = service.trim();
    if service.is_empty() || service.len() > 200 {
        return Err(AccessError::BadRequest(
            "the service name must be 1 to 200 characters".into(),
        ));
    }
    if purpose.len() > 2000 {
        return Err(AccessError::BadRequest(
            "the purpose must be at most 2000 characters".into(),
        ));
    }
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let id = RecordId::from_random(bytes);
    let issued_at = crate::clock::now_unix();
    let expires_at = expires.map(|d| issued_at + d.as_secs());
    // The expiry lives in the grant (checked at every request), not in the token, so
    // that `hearth extend` keeps the token a service already holds.
    let (token, token_id) = tokens::mint(keys, id.as_str(), None)?;
    let password = app_password.then(new_password);
    let grant = Grant {
        id: id.to_string(),
        service: service.to_owned(),
        scope,
        purpose,
        issued_at,
        expires_at,
        to,
        revoked_at: None,
        rate_per_minute,
        token_id: Some(token_id),
        password_hash: password.as_ref().map(|p| password_hash(p)),
        token_undated: true,
        token_expires_at: None,
    };
    collections.put(&access(), &id, &record_of(&grant))?;
    Ok((grant, Issued { token, password }))
}

fn record_of(grant: &Grant) -> Map<String, Value> {
    match serde_json::to_value(grant).expect("a grant serializes") {
        Value::Object(map) => map,
        _ => unreachable!("a struct serializes to an object"),
    }
}

/// Every grant, newest first.
pub fn list_grants(
    collections: &impl crate::collections::RecordSource,
) -> Result<Vec<Grant>, AccessError> {
    let mut grants: Vec<Grant> = collections
        .collection_records(&access())?
        .into_iter()
        .filter_map(Grant::from_record)
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
        .and_then(Grant::from_record))
}

/// Marks a grant revoked. Durable only after the store commits.
pub fn revoke(collections: &Collections, id: &str) -> Result<Grant, AccessError> {
    let grant = get_grant(collections, id)?.ok_or_else(|| AccessError::NoGrant(id.to_owned()))?;
    if grant.revoked_at.is_none() {
        let mut patch = Map::new();
        patch.insert("revoked_at".into(), Value::from(crate::clock::now_unix()));
        let record_id = RecordId::parse(id).map_err(|_| AccessError::NoGrant(id.to_owned()))?;
        collections.patch(&access(), &record_id, &patch)?;
        tracing::info!(grant = %id, service = %grant.service, "grant revoked");
    }
    get_grant(collections, id)?.ok_or_else(|| AccessError::NoGrant(id.to_owned()))
}

/// Extends (or shortens) a grant to `expires` from now (`None`: never), keeping its
/// token and app password. A revoked grant stays revoked. Durable only after the
/// store commits; the caller audits it.
pub fn extend(
    collections: &Collections,
    id: &str,
    expires: Option<Duration>,
) -> Result<Grant, AccessError> {
    let grant = get_grant(collections, id)?.ok_or_else(|| AccessError::NoGrant(id.to_owned()))?;
    if grant.revoked_at.is_some() {
        return Err(AccessError::Conflict(format!(
            "grant {id} ({}) was revoked, and a revoked grant stays revoked: make a new one with `hearth grant`",
            grant.service
        )));
    }
    if grant.token_id.is_none() {
        return Err(AccessError::Conflict(format!(
            "grant {id} ({}) was made before tokens were bound to their grants and is refused at every request: make a new one with `hearth grant`",
            grant.service
        )));
    }
    let now = crate::clock::now_unix();
    let mut patch = Map::new();
    patch.insert(
        "expires_at".into(),
        expires.map_or(Value::Null, |d| Value::from(now + d.as_secs())),
    );
    if !grant.token_undated && grant.token_expires_at.is_none() {
        patch.insert(
            "token_expires_at".into(),
            grant.expires_at.map_or(Value::Null, Value::from),
        );
    }
    let record_id = RecordId::parse(id).map_err(|_| AccessError::NoGrant(id.to_owned()))?;
    collections.patch(&access(), &record_id, &patch)?;
    let grant = get_grant(collections, id)?.ok_or_else(|| AccessError::NoGrant(id.to_owned()))?;
    tracing::info!(grant = %id, service = %grant.service, expires_at = ?grant.expires_at, "grant extended");
    Ok(grant)
}

/// Parses `30d`, `12h`, `90m`, `45s`, `2w`, `1y` (365 days), or `never` (`None`).
pub fn parse_duration(text: &str) -> Result<Option<Duration>, AccessError> {
    let text = text.trim();
    if text == "never" {
        return Ok(None);
    }
    let bad = || {
        AccessError::BadRequest(format!(
            "duration {text:?} is invalid: use e.g. 30d, 12h, 90m, 45s, 2w, 1y or never"
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
        "y" => 365 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n
        .checked_mul(unit_secs)
        .filter(|s| *s > 0 && *s < 100 * 365 * 86_400)
        .ok_or_else(bad)?;
    Ok(Some(Duration::from_secs(secs)))
}

/// Parses a rate like `60/min`.
pub fn parse_rate(text: &str) -> Result<u32, AccessError> {
    let bad =
        || AccessError::BadRequest(format!("rate {text:?} is invalid: use N/min, e.g. 60/min"));
    let n = text.trim().strip_suffix("/min").ok_or_else(bad)?;
    n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad)
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
        assert_eq!(
            parse_duration("1y").unwrap(),
            Some(Duration::from_secs(365 * 86_400))
        );
        for bad in ["", "d", "10", "10x", "-1d", "0h", "101y", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
