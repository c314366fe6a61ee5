//! Access for services: the one door to vault data for anything that is not the
//! owner.
//!
//! Every front end — the HTTP view routes, their event stream, the mesh's view
//! protocol, and later DAV and the dashboard's previews — hands a service's
//! [`Credentials`] to the [`Door`] and renders what it answers; none of them decides
//! who may see or change what. The door runs every request through the same steps:
//!
//! 1. **authorize** — the token's signatures and vault, its binding to the grant's
//!    issued token, the grant in `_access` (exists, not revoked, not expired), the
//!    token's own expiry, the caller's PeerId for grants bound with `--to`, then the
//!    grant's rate (in that order, so a stolen bound token cannot spend the real
//!    service's budget);
//! 2. **scope** — the grant's scope narrowed by the token's attenuations: read fields,
//!    write fields, and the filter, which bounds writes as it bounds reads;
//! 3. **read or change** the data, under the collection's lock for a write, so the
//!    checks and the change see the same record;
//! 4. **audit** — an entry per access (refusals of a known grant too, at most one a
//!    second per grant and reason) appended before the answer;
//! 5. **commit** — the audit entry (and a write) durable before anything is answered.
//!    Steps 4 and 5 are one call, `Door::audited`: requests waiting together share
//!    one append and one commit (`group`).
//!
//! Grants live in `_access` ([`grants`]), the audit log in `_audit*` ([`audit`]),
//! tokens are biscuits ([`tokens`]), event streams are fed by one hub ([`events`]).

pub use hearth_core::audit;
mod blobrefs;
pub mod dav;
mod door;
pub mod events;
pub mod files;
pub mod grants;
mod group;
pub mod search;
pub mod tokens;

use crate::clock::now_unix;
use std::collections::HashMap;
use std::sync::Mutex;

use hearth_protocol::api::ErrorCode;

pub use audit::{AuditEvent, AuditLog, Operation, audit_entries, seen_by, verify_audit};
pub use door::{Caller, Credentials, Door, MAX_STREAMS_PER_GRANT};
pub use grants::{
    ACCESS, APP_PASSWORD_EXPIRY, DEFAULT_EXPIRY, EXPIRY_WARNING, Grant, NewGrant, create_grant,
    extend, get_grant, list_grants, parse_duration, parse_rate, revoke,
};
pub use tokens::attenuate;

use crate::collections::CollectionError;
use crate::store::StoreError;

/// Why a service's request is refused (or failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("{0}")]
    InvalidToken(String),
    #[error("this grant was revoked")]
    Revoked,
    #[error("this grant has expired")]
    Expired,
    #[error("{0}")]
    OutOfScope(String),
    #[error(
        "this grant is bound to the remote service {0}; it works only over the mesh, from that peer"
    )]
    WrongPeer(String),
    #[error("this grant allows {0} requests a minute")]
    RateLimited(u32),
    #[error("this grant has {0} event streams open, the most one grant may have; close one first")]
    TooManyStreams(usize),
    /// Every service together holds the most event streams the node keeps open (the
    /// rest of its connections stay free for the owner and other requests).
    #[error(
        "the node has {0} event streams open for services, the most it keeps at once; try again later"
    )]
    StreamsFull(usize),
    /// A record that does not exist, or that the grant's filter hides: the same answer.
    #[error("no record {id} in collection {collection}")]
    NotFound { collection: String, id: String },
    /// A blob no record the grant can read names, or no blob at all: the same answer.
    #[error("no blob {0} in this view")]
    NoBlob(String),
    #[error("no grant {0}")]
    NoGrant(String),
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    BadRequest(String),
    /// The thing to make exists already.
    #[error("{0}")]
    Conflict(String),
    /// A DAV PUT into an address book or calendar that is not there (one a family
    /// reaches, not made yet).
    #[error("there is no {0} yet: make it first (MKCALENDAR or MKCOL)")]
    NoBook(String),
    /// A calendar object of a kind the calendar was made without
    /// (`supported-calendar-component`).
    #[error("{0}")]
    UnsupportedComponent(String),
    /// A DAV object's UID is another resource's of the collection (`no-uid-conflict`):
    /// the name of that resource.
    #[error("another resource of this collection, {0}, has that UID")]
    UidConflict(String),
    /// An `If-Match` / `If-None-Match` condition did not hold.
    #[error("the resource is not in the state the request's condition names")]
    PreconditionFailed,
    /// A DAV sync token that is not from this collection's history.
    #[error("{0}")]
    InvalidSyncToken(String),
    /// A file operation the tree refused (its folder is missing, something is there).
    #[error(transparent)]
    File(crate::files::FileError),
    #[error(transparent)]
    Collection(#[from] CollectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make a token: {0}")]
    Token(String),
    #[error("an internal task failed: {0}")]
    Internal(String),
    /// The failure of the audit group a request was in (its append or its commit),
    /// told to each of the group's requests.
    #[error("{message}")]
    Shared { code: ErrorCode, message: String },
}

impl AccessError {
    /// The API error code (and so the HTTP status) of this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            AccessError::InvalidToken(_) => ErrorCode::InvalidToken,
            AccessError::Revoked => ErrorCode::Revoked,
            AccessError::Expired => ErrorCode::Expired,
            AccessError::OutOfScope(_) | AccessError::WrongPeer(_) => ErrorCode::OutOfScope,
            AccessError::RateLimited(_) => ErrorCode::RateLimited,
            AccessError::TooManyStreams(_) => ErrorCode::TooManyStreams,
            AccessError::StreamsFull(_) => ErrorCode::Unavailable,
            AccessError::NotFound { .. } | AccessError::NoBlob(_) | AccessError::NoGrant(_) => {
                ErrorCode::NotFound
            }
            AccessError::InvalidId(_) => ErrorCode::InvalidId,
            AccessError::BadRequest(_) | AccessError::InvalidSyncToken(_) => ErrorCode::BadRequest,
            AccessError::PreconditionFailed => ErrorCode::PreconditionFailed,
            AccessError::Conflict(_) | AccessError::UidConflict(_) => ErrorCode::Conflict,
            AccessError::UnsupportedComponent(_) => ErrorCode::BadRequest,
            AccessError::NoBook(_) => ErrorCode::Conflict,
            AccessError::File(e) => e.code(),
            AccessError::Collection(e) => e.code(),
            AccessError::Store(e) => e.code(),
            AccessError::Token(_) | AccessError::Internal(_) => ErrorCode::Internal,
            AccessError::Shared { code, .. } => *code,
        }
    }

    /// The reason recorded in the audit log for a refusal.
    fn audit_reason(&self) -> String {
        match self {
            AccessError::WrongPeer(_) => "wrong_peer".to_owned(),
            AccessError::InvalidToken(_) => "invalid_token".to_owned(),
            other => other.code().as_str().to_owned(),
        }
    }
}

/// Counts requests per grant per minute on this device.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (u64, u32)>>,
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

/// For the door's tests: a door over `collections` (a test vault's) and a grant of
/// `scope` (as `Scope::parse` reads it: reads, writes), with its token.
#[cfg(test)]
pub(crate) fn door_with_grant(
    vault: &crate::testutil::TestVault,
    collections: &std::sync::Arc<crate::collections::Collections>,
    read: &str,
    write: Option<&str>,
) -> (Door, Grant, String) {
    let door = Door::new(
        collections.clone(),
        vault.keys.clone(),
        vault.store.clone(),
        "devA".into(),
    );
    let scope = hearth_protocol::scope::Scope::parse(Some(read), write, &[]).unwrap();
    let (grant, issued) =
        create_grant(collections, &vault.keys, NewGrant::new("app", scope)).unwrap();
    (door, grant, issued.token)
}
