//! The door itself: authorize → scope → read or change → audit → commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use automerge::ChangeHash;
use hearth_protocol::api::{PutResponse, ViewAll};
use hearth_protocol::scope::{CollectionScope, Scope, WriteRefusal, diff_patch, leaf_paths};

use super::dav::Refusal;
use hearth_protocol::{CollectionName, RecordId};
use libp2p::PeerId;
use rand::RngCore;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::audit::{AuditEvent, AuditLog, Operation};
use super::blobrefs;
use super::events::{Hub, Subscription};
use super::grants::{self, Grant};
use super::group::AuditGroups;
use super::tokens::{self, TokenCache, Verified};

use super::{AccessError, RateLimiter};
use crate::clock::now_unix;
use crate::collections::{Collections, RecordWrite};
use crate::keys::VaultKeys;
use crate::store::Store;

/// The service an audit entry names when no grant is known (a wrong app password).
pub const UNKNOWN_SERVICE: &str = "unknown";

/// Event streams one grant may have open at once (on one device).
pub const MAX_STREAMS_PER_GRANT: usize = 128;

/// How a service proved itself: its token, and for a request that came over the mesh,
/// the PeerId its connection's Noise handshake authenticated.
pub struct Credentials {
    secret: Zeroizing<String>,
    peer: Option<PeerId>,
}

impl Credentials {
    /// A request on the local HTTP API (no authenticated peer) with a grant's token.
    pub fn local(token: &str) -> Self {
        Self {
            secret: Zeroizing::new(token.trim().to_owned()),
            peer: None,
        }
    }

    /// A request from `peer` over the mesh.
    pub fn remote(token: &str, peer: PeerId) -> Self {
        Self {
            secret: Zeroizing::new(token.trim().to_owned()),
            peer: Some(peer),
        }
    }

    /// The password of HTTP Basic auth (a DAV client): a grant's app password, or its
    /// token.
    pub fn basic(password: &str) -> Self {
        Self::local(password)
    }
}

/// How a caller proved its grant: a token (whose own expiry and narrowings count), or
/// the grant's app password.
#[derive(Clone)]
pub(super) enum Proof {
    Token(Arc<Verified>),
    Password,
}

impl Proof {
    pub(super) fn check_time(&self, now: u64) -> Result<(), AccessError> {
        match self {
            Proof::Token(verified) => verified.check_time(now),
            Proof::Password => Ok(()),
        }
    }
}

/// A request that passed authorization: its grant, and what it may do — the grant's
/// scope narrowed by the token's attenuations.
#[derive(Clone)]
pub struct Caller {
    pub grant: Grant,
    pub scope: Scope,
    pub(super) proof: Proof,
}

/// This device's record of the grants it has admitted at least once (local, not
/// synced): the log says when a grant is used for the first time.
const GRANTS_USED_TREE: &str = "grants_used";

/// The one door to vault data for services. Cheap to clone.
#[derive(Clone)]
pub struct Door(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub collections: Arc<Collections>,
    pub keys: Arc<VaultKeys>,
    pub store: Arc<Store>,
    pub audit: Arc<AuditLog>,
    /// Appends the entries of requests waiting together as one group (see `group`).
    pub(super) groups: Arc<AuditGroups>,
    rates: RateLimiter,
    refusals: Refusals,
    tokens: TokenCache,
    grants: GrantCache,
    index: GrantIndex,
    pub hub: Hub,
    /// Grants admitted since the node started (to log a grant's first use once).
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Door {
    /// The door of a vault; `chain` names this device's audit chain.
    pub fn new(
        collections: Arc<Collections>,
        keys: Arc<VaultKeys>,
        store: Arc<Store>,
        chain: String,
    ) -> Self {
        let audit = Arc::new(AuditLog::new(chain));
        let groups = Arc::new(AuditGroups::new(
            audit.clone(),
            collections.clone(),
            store.clone(),
        ));
        Door(Arc::new(Inner {
            collections,
            keys,
            store,
            audit,
            groups,
            rates: RateLimiter::default(),
            refusals: Refusals::default(),
            tokens: TokenCache::default(),
            grants: GrantCache::default(),
            index: GrantIndex::default(),
            hub: Hub::default(),
            seen: Default::default(),
        }))
    }

    /// Starts the task that feeds event streams (and ends them on revocation). Must
    /// run inside a tokio runtime; stopped by [`Door::shutdown`].
    pub fn start(&self) {
        self.0.hub.start(self.clone());
    }

    /// Ends every event stream and stops the door's tasks, waiting for them.
    pub async fn shutdown(&self) {
        self.0.hub.shutdown().await;
        self.flush_refusals();
    }

    /// Authorizes a request: see the module documentation for the steps and their
    /// order. Refusals of a known grant are audited.
    pub async fn admit(&self, credentials: &Credentials) -> Result<Caller, AccessError> {
        let (grant, proof, charged) = if grants::looks_like_password(&credentials.secret) {
            let (grant, proof) = self.by_password(&credentials.secret).inspect_err(|e| {
                if matches!(e, AccessError::InvalidToken(_)) {
                    self.wrong_password();
                }
            })?;
            (grant, proof, false)
        } else {
            self.by_token(credentials).await?
        };
        self.in_force(&grant, &proof, credentials)?;
        if !charged {
            self.charge(&grant)?;
        }
        self.note_first_use(&grant);
        let scope = match &proof {
            Proof::Token(verified) => verified
                .narrowings
                .iter()
                .fold(grant.scope.clone(), |scope, n| scope.narrowed(n)),
            Proof::Password => grant.scope.clone(),
        };
        Ok(Caller {
            grant,
            scope,
            proof,
        })
    }

    /// Logs a grant's first use ever (once a run, its audit entries are looked at).
    fn note_first_use(&self, grant: &Grant) {
        let first_this_run = self
            .0
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(grant.id.clone());
        if !first_this_run {
            return;
        }
        // Once a run per grant, one key in a local tree (durable with the request's
        // own commit): not a read of the audit log on the request's path.
        let used = || -> Result<bool, crate::store::StoreError> {
            let tree = self.0.store.tree(GRANTS_USED_TREE)?;
            let key = self.0.store.name_key(GRANTS_USED_TREE, &grant.id);
            if tree.contains_key(&key)? {
                return Ok(true);
            }
            tree.insert(&key, &crate::clock::now_unix().to_be_bytes())?;
            Ok(false)
        };
        match used() {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(grant = %grant.id, service = %grant.service, "a grant was used for the first time on this device")
            }
            Err(e) => tracing::debug!(error = %e, "cannot note a grant's first use"),
        }
    }

    /// Whether `grant` may be used now by this caller: in force (not revoked or
    /// expired, the token's own expiry not passed) and, for a grant bound to a peer,
    /// from that peer. Checked before the rate: a stolen bound token must not spend
    /// the real service's budget.
    fn in_force(
        &self,
        grant: &Grant,
        proof: &Proof,
        credentials: &Credentials,
    ) -> Result<(), AccessError> {
        let refuse = |e: AccessError| self.refused(grant, "", e);
        self.check_standing(grant, proof).map_err(refuse)?;
        if let Some(audience) = &grant.to
            && credentials.peer.map(|p| p.to_string()).as_deref() != Some(audience.as_str())
        {
            return Err(refuse(AccessError::WrongPeer(audience.clone())));
        }
        Ok(())
    }

    /// Charges one request to the grant's rate.
    fn charge(&self, grant: &Grant) -> Result<(), AccessError> {
        if !self.0.rates.admit(grant) {
            return Err(self.refused(
                grant,
                "",
                AccessError::RateLimited(grant.rate_per_minute.unwrap_or(0)),
            ));
        }
        Ok(())
    }

    /// The grant a token was issued for: signature, vault, binding. A token not seen
    /// before is charged to its grant's rate before its signatures and Datalog are
    /// checked (on the blocking pool): a service that mints tokens offline pays for
    /// each with its own rate. Returns whether the rate was charged.
    async fn by_token(
        &self,
        credentials: &Credentials,
    ) -> Result<(Grant, Proof, bool), AccessError> {
        let inner = &self.0;
        let token: &str = &credentials.secret;
        let (verified, charged) = match inner.tokens.cached(token) {
            Some(verified) => (verified, false),
            None => {
                let binding = tokens::claimed_binding(token)?;
                let claimed = match inner.index.grant_of_binding(&inner.collections, &binding)? {
                    Some(id) => inner.grants.get(&inner.collections, &id)?,
                    None => None,
                };
                // A token that claims no issued token's binding is a forgery (its first
                // signature fails at once) or a grant's from before bindings (refused
                // below): nothing to charge.
                let charged = match &claimed {
                    Some(grant) => {
                        if let Some(audience) = &grant.to
                            && credentials.peer.map(|p| p.to_string()).as_deref()
                                != Some(audience.as_str())
                        {
                            return Err(self.refused(
                                grant,
                                "",
                                AccessError::WrongPeer(audience.clone()),
                            ));
                        }
                        self.charge(grant)?;
                        true
                    }
                    None => false,
                };
                let (keys, text) = (inner.keys.clone(), Zeroizing::new(token.to_owned()));
                let verified = tokio::task::spawn_blocking(move || tokens::verify(&keys, &text))
                    .await
                    .map_err(|e| AccessError::Internal(e.to_string()))??;
                let verified = Arc::new(verified);
                inner.tokens.insert(token, verified.clone());
                (verified, charged)
            }
        };
        let grant = inner
            .grants
            .get(&inner.collections, &verified.grant_id)?
            .ok_or_else(|| {
                AccessError::InvalidToken("the token names no grant of this vault".into())
            })?;
        match &grant.token_id {
            None => Err(self.refused(
                &grant,
                "",
                AccessError::InvalidToken(format!(
                    "grant {} was made by an earlier Hearth whose tokens a removed device could forge; it is refused: grant it again",
                    grant.id
                )),
            )),
            Some(bound) if *bound != verified.binding => Err(self.refused(
                &grant,
                "",
                AccessError::InvalidToken("this token was not issued for its grant".into()),
            )),
            Some(_) => Ok((grant, Proof::Token(verified), charged)),
        }
    }

    /// The grant an app password belongs to.
    fn by_password(&self, password: &str) -> Result<(Grant, Proof), AccessError> {
        let inner = &self.0;
        let id = inner
            .index
            .grant_of_password(&inner.collections, &grants::password_hash(password))?
            .ok_or_else(|| AccessError::InvalidToken("wrong password".into()))?;
        let grant = inner
            .grants
            .get(&inner.collections, &id)?
            .ok_or_else(|| AccessError::InvalidToken("wrong password".into()))?;
        Ok((grant, Proof::Password))
    }

    /// Whether a grant and token are still in force: not revoked, not expired, and the
    /// token's own expiry not passed.
    fn check_standing(&self, grant: &Grant, proof: &Proof) -> Result<(), AccessError> {
        if grant.revoked_at.is_some() {
            return Err(AccessError::Revoked);
        }
        let now = now_unix();
        if grant.expires_at.is_some_and(|e| e <= now) {
            return Err(AccessError::Expired);
        }
        proof.check_time(now)
    }

    /// Checks again that an admitted caller (an open event stream) is still in force.
    pub(super) fn recheck(&self, caller: &Caller) -> Result<(), AccessError> {
        let inner = &self.0;
        let grant = inner
            .grants
            .get(&inner.collections, &caller.grant.id)?
            .ok_or(AccessError::Revoked)?;
        self.check_standing(&grant, &caller.proof)
    }

    /// Records a refusal of `grant` (at most one entry a second per grant and reason,
    /// with a count) and returns the error.
    pub(super) fn refused(
        &self,
        grant: &Grant,
        collection: &str,
        error: AccessError,
    ) -> AccessError {
        let id = match &error {
            AccessError::NotFound { id, .. } if !id.is_empty() => Some(id.clone()),
            _ => None,
        };
        self.note(
            grant,
            collection,
            Operation::Refused,
            &error.audit_reason(),
            id.as_deref(),
        );
        error
    }

    /// Audits a wrong app password: no grant is known, so the entry names none
    /// (service `unknown`); grouped like refusals, at most one entry a second.
    fn wrong_password(&self) {
        if let Some(event) = self.0.refusals.record(
            "",
            UNKNOWN_SERVICE,
            "",
            Operation::Refused,
            "wrong_password",
            None,
        ) && let Err(e) = self.0.audit.append(&self.0.collections, event)
        {
            tracing::warn!(error = %e, "cannot audit a wrong app password");
        }
    }

    /// Records a read of `collection` that found nothing (`id`: what it asked for; a
    /// hidden record and a missing one alike), grouped like refusals: every read is
    /// in the log, found or not.
    pub(super) fn missed(&self, caller: &Caller, operation: Operation, collection: &str, id: &str) {
        self.note(&caller.grant, collection, operation, "not_found", Some(id));
    }

    /// Audits one refusal or miss (at most one entry a second per grant, collection,
    /// operation and reason; the rest counted).
    pub(super) fn note(
        &self,
        grant: &Grant,
        collection: &str,
        operation: Operation,
        reason: &str,
        id: Option<&str>,
    ) {
        if let Some(event) =
            self.0
                .refusals
                .record(&grant.id, &grant.service, collection, operation, reason, id)
        {
            // Not awaited: a refusal discloses nothing, so it need not be durable before
            // the answer; it rides the next commit (or sled's own flush within a second).
            if let Err(e) = self.0.audit.append(&self.0.collections, event) {
                tracing::warn!(error = %e, "cannot audit a refused request");
            }
        }
    }

    /// Appends an entry the owner's action makes about a grant (an extension) to this
    /// device's chain. Durable with the next commit.
    pub fn audit_owner(&self, event: AuditEvent) -> Result<(), AccessError> {
        self.0.audit.append(&self.0.collections, event)?;
        Ok(())
    }

    /// Audits refusals that were counted but not yet written.
    pub(super) fn flush_refusals(&self) {
        let events = self.0.refusals.flush();
        if let Err(e) = self.0.audit.append_many(&self.0.collections, events) {
            tracing::warn!(error = %e, "cannot audit refused requests");
        }
    }

    pub(super) fn readable(
        &self,
        caller: &Caller,
        collection: &str,
    ) -> Result<CollectionScope, AccessError> {
        caller
            .scope
            .collection(collection)
            .filter(|c| c.read.is_some())
            .ok_or_else(|| {
                self.refused(
                    &caller.grant,
                    collection,
                    AccessError::OutOfScope(format!(
                        "the grant does not include reading {collection}"
                    )),
                )
            })
    }

    /// `GET /v1/view`: every collection the caller may read, projected.
    pub async fn read_all(&self, credentials: &Credentials) -> Result<ViewAll, AccessError> {
        let caller = self.admit(credentials).await?;
        let view = self
            .blocking(move |inner| {
                let mut collections = std::collections::BTreeMap::new();
                let mut events = Vec::new();
                let existing = inner.collections.names()?;
                for (name, scope) in caller
                    .scope
                    .readable(existing.iter().map(CollectionName::as_str))
                {
                    let name = CollectionName::parse(&name)
                        .map_err(|e| AccessError::BadRequest(e.to_string()))?;
                    let records = inner.collections.records(&name)?;
                    let (view, event) = project(&caller.grant, &scope, name.as_str(), records);
                    events.push(event);
                    collections.insert(name.to_string(), view);
                }
                let view = ViewAll {
                    grant: caller.grant.id.clone(),
                    service: caller.grant.service.clone(),
                    collections,
                };
                Ok((view, events))
            })
            .await?;
        let (view, events) = view;
        self.audited(events).await?;
        Ok(view)
    }

    /// `GET /v1/view/blobs/{id}`: may this grant read blob `id`? Only if a record it can
    /// read names the blob (its id is the value of a granted field, at any depth, as
    /// a photo's `{"blob": ID}` is): a photo app granted `photos` gets those photos and
    /// no other blob. Audited (`read_blob`, with the record that names it) before the
    /// caller sends a byte. A blob no visible record names answers like a missing one.
    pub async fn read_blob(
        &self,
        credentials: &Credentials,
        blob: &hearth_protocol::BlobId,
    ) -> Result<(), AccessError> {
        let caller = self.admit(credentials).await?;
        let wanted = blob.to_string();
        let scope = caller.scope.clone();
        let looked_for = wanted.clone();
        let grant = caller.grant.id.clone();
        let found = self
            .blocking(move |inner| {
                let wanted = looked_for;
                let existing = inner.collections.names()?;
                for (name, c) in scope.readable(existing.iter().map(CollectionName::as_str)) {
                    let Ok(collection) = CollectionName::parse(&name) else {
                        continue;
                    };
                    for record in inner.collections.records(&collection)? {
                        let Value::Object(record) = record else {
                            continue;
                        };
                        let Some(projected) = c.project(&record) else {
                            continue;
                        };
                        // The record's own id is not a reference to a blob.
                        let mut fields = projected;
                        fields.remove("id");
                        if !names_blob(&Value::Object(fields), &wanted) {
                            continue;
                        }
                        let id = record
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        // A naming the grant wrote itself does not count: else naming
                        // a blob would be the way to read it.
                        if blobrefs::is_own(&inner.collections, &grant, &name, &id, &wanted)? {
                            continue;
                        }
                        return Ok(Some((name.clone(), id)));
                    }
                }
                Ok(None)
            })
            .await?;
        let Some((collection, record)) = found else {
            self.missed(
                &caller,
                Operation::ReadBlob,
                crate::blobs::BLOB_LIST,
                &wanted,
            );
            return Err(AccessError::NoBlob(wanted));
        };
        let event = AuditEvent {
            records: 1,
            ids: vec![record],
            fields: vec![wanted],
            ..caller.grant.event(Operation::ReadBlob, &collection)
        };
        self.audited(vec![event]).await?;
        Ok(())
    }

    /// `GET /v1/view/{c}`: the matching records of a collection, projected.
    pub async fn read_collection(
        &self,
        credentials: &Credentials,
        collection: &CollectionName,
    ) -> Result<Vec<Value>, AccessError> {
        // The whole view is its one page without a limit.
        let (view, _) = self
            .read_page(credentials, collection, None, usize::MAX)
            .await?;
        Ok(view)
    }

    /// `GET /v1/view/{c}?limit=N&after=ID`: a page of the view, in the record index's order: the first
    /// `limit` matching records after `after`. Returns the page and, when it is full,
    /// the id the next page starts after. Audited as a read of the page's records.
    pub async fn read_page(
        &self,
        credentials: &Credentials,
        collection: &CollectionName,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>), AccessError> {
        let caller = self.admit(credentials).await?;
        let scope = self.readable(&caller, collection.as_str())?.clone();
        let name = collection.clone();
        let page = self
            .blocking(move |inner| {
                let mut fields = Vec::new();
                let (view, next) =
                    inner
                        .collections
                        .page(&name, after.as_ref(), limit, |record| {
                            project_one(&scope, record, &mut fields)
                        })?;
                let event = AuditEvent {
                    records: view.len(),
                    fields,
                    ..caller.grant.event(Operation::Read, name.as_str())
                };
                Ok((view, next, event))
            })
            .await?;
        let (view, next, event) = page;
        self.audited(vec![event]).await?;
        Ok((view, next))
    }

    /// `GET /v1/view/{c}/{id}`: one record, projected. A record the filter hides is
    /// answered exactly as one that does not exist.
    pub async fn read_record(
        &self,
        credentials: &Credentials,
        collection: &CollectionName,
        id: &RecordId,
    ) -> Result<Value, AccessError> {
        let caller = self.admit(credentials).await?;
        let scope = self.readable(&caller, collection.as_str())?;
        let inner = &self.0;
        // A filter decides on its fields alone: a hidden record is answered like a
        // missing one without reading the rest of it (its size shows in no timing).
        if !scope.filter.is_empty() {
            let keys: Vec<&str> = scope
                .filter
                .iter()
                .filter_map(|f| f.field.parts().first().map(String::as_str))
                .collect();
            let visible = inner
                .collections
                .get_fields(collection, id, &keys)?
                .is_some_and(|fields| scope.visible(&fields));
            if !visible {
                self.missed(&caller, Operation::Read, collection.as_str(), id.as_str());
                return Err(not_found(collection, id));
            }
        }
        // One record takes microseconds: done on the request's task.
        let records: Vec<Value> = inner.collections.get(collection, id)?.into_iter().collect();
        let (mut view, mut event) = project(&caller.grant, &scope, collection.as_str(), records);
        let Some(record) = view.pop() else {
            self.missed(&caller, Operation::Read, collection.as_str(), id.as_str());
            return Err(not_found(collection, id));
        };
        event.ids = vec![id.to_string()];
        self.audited(vec![event]).await?;
        Ok(record)
    }

    /// `POST /v1/view/{c}`: a service creates or changes a record inside its scope.
    ///
    /// Without `"id"` the record is new (a fresh id). With an `"id"`: for a grant
    /// without a filter, the record is changed if it exists and created if not; for a
    /// grant with a filter, only a visible existing record is changed, and an id that
    /// does not exist and one the filter hides both get `404` with no record made (so
    /// the service cannot learn which ids it cannot see). An existing record is merged
    /// into (RFC 7396), never replaced, so fields outside the grant stay as they are.
    pub async fn write(
        &self,
        credentials: &Credentials,
        collection: &CollectionName,
        mut body: Map<String, Value>,
    ) -> Result<PutResponse, AccessError> {
        let caller = self.admit(credentials).await?;
        let scope = self.writable(&caller, collection.as_str())?.clone();
        super::files::writable_by_views(collection)?;
        let (id, create) = match body.remove("id") {
            Some(Value::String(id)) => (
                RecordId::parse(&id).map_err(|e| AccessError::InvalidId(e.to_string()))?,
                scope.filter.is_empty(),
            ),
            Some(_) => {
                return Err(AccessError::InvalidId(
                    "the record's \"id\" field must be a string".into(),
                ));
            }
            None => {
                let mut bytes = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                (RecordId::from_random(bytes), true)
            }
        };
        let mut fields = Vec::new();
        leaf_paths(&body, &mut Vec::new(), &mut fields);
        let kind = crate::pim::Kind::of(collection.as_str());
        if let Some(kind) = kind
            && let Some(Value::String(text)) = body.get(kind.text_field())
        {
            // Untrusted text is read once here, before the collection's lock is taken:
            // what cannot be read is refused without holding up anyone else.
            super::dav::fields_of(kind, text)
                .map_err(|e| AccessError::BadRequest(e.to_string()))?;
        }
        let name = collection.clone();
        let noted = self
            .note_blob_names(&caller, collection, &id, blobrefs::named_blobs(&body))
            .await?;
        // Persisted together with the writes to the collection waiting beside it.
        let decide = move |before: Option<&Map<String, Value>>| {
            let mut after = scope.check_write(name.as_str(), before, &body, create)?;
            blobrefs::check_noted(before, &after, noted.as_ref())?;
            let Some(kind) = kind else {
                // An existing record takes the patch (only what it names changes, so a
                // concurrent edit of another field on another device still merges).
                return Ok(match before {
                    Some(_) => (RecordWrite::Patch(body.clone()), ()),
                    None => (RecordWrite::Put(after), ()),
                });
            };
            // Contacts and calendars keep their text and fields in step.
            crate::pim::prepare(kind, before, &mut after).map_err(Refusal::Unreadable)?;
            let change = diff_patch(&before.cloned().unwrap_or_default(), &after);
            if body.contains_key(kind.text_field()) {
                // A new text changes the fields it says: those must be writable too.
                let mut leaves = Vec::new();
                leaf_paths(&change, &mut Vec::new(), &mut leaves);
                let write = scope.write.as_ref().expect("checked writable");
                if let Some(outside) = leaves.into_iter().find(|p| !write.covers(p)) {
                    return Err(Refusal::Scope(WriteRefusal::FieldOutside(outside)));
                }
            }
            if !scope.visible(&after) {
                let filters: Vec<String> = scope.filter.iter().map(ToString::to_string).collect();
                return Err(Refusal::Scope(WriteRefusal::NoMatchAfter(
                    filters.join(", "),
                )));
            }
            Ok(match before {
                Some(_) => (RecordWrite::Patch(change), ()),
                None => (RecordWrite::Put(after), ()),
            })
        };
        let outcome = self.0.collections.write_combined(collection, &id, decide);
        let outcome = outcome.await?.map(|(existed, ())| existed);
        let existed = match outcome {
            Ok(existed) => existed,
            Err(Refusal::Scope(refusal)) => {
                return Err(self.write_refused(&caller, collection, &id, refusal));
            }
            Err(Refusal::Unreadable(e)) => return Err(AccessError::BadRequest(e.to_string())),
            Err(Refusal::Precondition) => return Err(AccessError::PreconditionFailed),
            Err(Refusal::Access(e)) => return Err(e),
        };
        let operation = if existed {
            Operation::Write
        } else {
            Operation::Create
        };
        let event = AuditEvent {
            records: 1,
            fields: fields.iter().map(ToString::to_string).collect(),
            ids: vec![id.to_string()],
            ..caller.grant.event(operation, collection.as_str())
        };
        self.audited(vec![event]).await?;
        Ok(PutResponse {
            id: id.to_string(),
            created: !existed,
        })
    }

    /// Notes (durably, before the record is written) the blobs a write through
    /// `caller`'s grant may add to record `id`: those `offered` that the record does
    /// not name yet. Returns them (`None` when the write names no blob); the write's
    /// `decide` refuses any other new naming (the record changed in between: the
    /// service tries again). See `blobrefs`.
    pub(super) async fn note_blob_names(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        id: &RecordId,
        offered: std::collections::BTreeSet<String>,
    ) -> Result<Option<std::collections::BTreeSet<String>>, AccessError> {
        if offered.is_empty() {
            return Ok(None);
        }
        let (grant, name, id) = (caller.grant.id.clone(), collection.clone(), id.clone());
        self.blocking(move |inner| {
            let already = match inner.collections.get(&name, &id)? {
                Some(Value::Object(before)) => blobrefs::named_blobs(&before),
                _ => Default::default(),
            };
            let new: std::collections::BTreeSet<String> =
                offered.difference(&already).cloned().collect();
            blobrefs::note(&inner.collections, &grant, name.as_str(), id.as_str(), &new)?;
            Ok(Some(new))
        })
        .await
    }

    /// A service removes a record: it needs write access to every field of the
    /// collection, and the record must be visible to it.
    pub async fn remove(
        &self,
        credentials: &Credentials,
        collection: &CollectionName,
        id: &RecordId,
    ) -> Result<(), AccessError> {
        let caller = self.admit(credentials).await?;
        let scope = self.writable(&caller, collection.as_str())?.clone();
        super::files::writable_by_views(collection)?;
        let decide = move |before: Option<&Map<String, Value>>| {
            scope
                .check_delete(before)
                .map(|()| (RecordWrite::Remove, ()))
        };
        let outcome = self.0.collections.write_combined(collection, id, decide);
        if let Err(refusal) = outcome.await? {
            return Err(self.write_refused(&caller, collection, id, refusal));
        }
        let event = AuditEvent {
            records: 1,
            ids: vec![id.to_string()],
            ..caller.grant.event(Operation::Remove, collection.as_str())
        };
        self.audited(vec![event]).await?;
        Ok(())
    }

    /// `GET /v1/view/events`: a stream of the changes inside the caller's scope made
    /// from now on.
    pub async fn subscribe(&self, credentials: &Credentials) -> Result<Subscription, AccessError> {
        let caller = self.admit(credentials).await?;
        let grant = caller.grant.clone();
        self.0.hub.subscribe(caller).await.map_err(|e| match e {
            AccessError::TooManyStreams(_) | AccessError::StreamsFull(_) => {
                self.refused(&grant, "", e)
            }
            other => other,
        })
    }

    pub(super) fn writable(
        &self,
        caller: &Caller,
        collection: &str,
    ) -> Result<CollectionScope, AccessError> {
        caller
            .scope
            .collection(collection)
            .filter(|c| c.write.is_some())
            .ok_or_else(|| {
                self.refused(
                    &caller.grant,
                    collection,
                    AccessError::OutOfScope(format!(
                        "the grant (or this token) does not allow writing {collection}"
                    )),
                )
            })
    }

    pub(super) fn write_refused(
        &self,
        caller: &Caller,
        collection: &CollectionName,
        id: &RecordId,
        refusal: WriteRefusal,
    ) -> AccessError {
        let error = if refusal.is_not_found() {
            not_found(collection, id)
        } else {
            AccessError::OutOfScope(refusal.to_string())
        };
        self.refused(&caller.grant, collection.as_str(), error)
    }

    /// Appends `events` to the audit log and returns once they are durable, with every
    /// write made before: the last step before an access is answered. Requests
    /// waiting at the same time share one append and one commit.
    pub(super) async fn audited(&self, events: Vec<AuditEvent>) -> Result<(), AccessError> {
        self.0.groups.durable(events).await
    }

    /// Runs whole-collection work on the blocking pool.
    pub(super) async fn blocking<R, F>(&self, f: F) -> Result<R, AccessError>
    where
        R: Send + 'static,
        F: FnOnce(&Inner) -> Result<R, AccessError> + Send + 'static,
    {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| AccessError::Internal(e.to_string()))?
    }
}

/// Whether `blob` (an id) is a string value somewhere in `value`.
fn names_blob(value: &Value, blob: &str) -> bool {
    match value {
        Value::String(s) => s == blob,
        Value::Array(items) => items.iter().any(|v| names_blob(v, blob)),
        Value::Object(map) => map.values().any(|v| names_blob(v, blob)),
        _ => false,
    }
}

fn not_found(collection: &CollectionName, id: &RecordId) -> AccessError {
    AccessError::NotFound {
        collection: collection.to_string(),
        id: id.to_string(),
    }
}

/// Projects records through a scope; returns the view and the audit event of reading it.
fn project(
    grant: &Grant,
    scope: &CollectionScope,
    collection: &str,
    records: Vec<Value>,
) -> (Vec<Value>, AuditEvent) {
    let mut fields = Vec::new();
    let view: Vec<Value> = records
        .into_iter()
        .filter_map(|r| project_one(scope, r, &mut fields))
        .collect();
    let event = AuditEvent {
        records: view.len(),
        fields,
        ..grant.event(Operation::Read, collection)
    };
    (view, event)
}

/// One record as the scope shows it (`None`: the filter hides it), noting the fields
/// shown for the audit.
pub(super) fn project_one(
    scope: &CollectionScope,
    record: Value,
    fields: &mut Vec<String>,
) -> Option<Value> {
    let Value::Object(record) = record else {
        return None;
    };
    let projected = scope.project(&record)?;
    fields.extend(scope.field_names(&record));
    Some(Value::Object(projected))
}

/// Grants as last read, each with the heads of `_access` it was read at: equal heads
/// mean an identical history, so the same grant; a revocation changes the heads and
/// applies to the very next request.
#[derive(Default)]
struct GrantCache(Mutex<HashMap<String, (Vec<ChangeHash>, Grant)>>);

const MAX_CACHED_GRANTS: usize = 4096;

impl GrantCache {
    fn get(&self, collections: &Collections, id: &str) -> Result<Option<Grant>, AccessError> {
        let heads = collections.heads(&grants::access())?;
        let cached = self
            .0
            .lock()
            .expect("grant cache lock is never poisoned")
            .get(id)
            .filter(|(at, _)| *at == heads)
            .map(|(_, grant)| grant.clone());
        if let Some(grant) = cached {
            return Ok(Some(grant));
        }
        let Some(grant) = grants::get_grant(collections, id)? else {
            return Ok(None);
        };
        let mut cache = self.0.lock().expect("grant cache lock is never poisoned");
        if cache.len() >= MAX_CACHED_GRANTS {
            cache.clear();
        }
        cache.insert(id.to_owned(), (heads, grant.clone()));
        Ok(Some(grant))
    }
}

/// App passwords' hashes and issued tokens' bindings → their grants, rebuilt
/// whenever `_access` changes.
#[derive(Default)]
struct GrantIndex(Mutex<Option<GrantTable>>);

/// The `_access` heads the table was built at; password hash → grant id; token
/// binding → grant id.
struct GrantTable {
    heads: Vec<ChangeHash>,
    passwords: HashMap<String, String>,
    bindings: HashMap<String, String>,
}

impl GrantIndex {
    fn lookup(
        &self,
        collections: &Collections,
        find: impl FnOnce(&GrantTable) -> Option<String>,
    ) -> Result<Option<String>, AccessError> {
        let heads = collections.heads(&grants::access())?;
        let mut index = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if index.as_ref().is_none_or(|t| t.heads != heads) {
            let grants = grants::list_grants(collections)?;
            *index = Some(GrantTable {
                heads,
                passwords: grants
                    .iter()
                    .filter_map(|g| Some((g.password_hash.clone()?, g.id.clone())))
                    .collect(),
                bindings: grants
                    .iter()
                    .filter_map(|g| Some((g.token_id.clone()?, g.id.clone())))
                    .collect(),
            });
        }
        Ok(index.as_ref().and_then(find))
    }

    fn grant_of_password(
        &self,
        collections: &Collections,
        hash: &str,
    ) -> Result<Option<String>, AccessError> {
        self.lookup(collections, |t| t.passwords.get(hash).cloned())
    }

    fn grant_of_binding(
        &self,
        collections: &Collections,
        binding: &str,
    ) -> Result<Option<String>, AccessError> {
        self.lookup(collections, |t| t.bindings.get(binding).cloned())
    }
}

/// Refusals of known grants and reads that found nothing, counted per grant,
/// collection, operation and reason: the first in a second is audited at once, the
/// rest of that second in one entry with their count and (up to [`MAX_GROUPED_IDS`])
/// the ids they asked for — each under its own collection.
#[derive(Default)]
struct Refusals(Mutex<HashMap<(String, String, Operation, String), Window>>);

/// Ids one grouped entry names at most (the count says how many there were).
const MAX_GROUPED_IDS: usize = 32;

/// Adds `id` to a grouped entry's ids, once, while there is room.
fn note_id(ids: &mut Vec<String>, id: Option<&str>) {
    if let Some(id) = id
        && ids.len() < MAX_GROUPED_IDS
        && !ids.iter().any(|i| i == id)
    {
        ids.push(id.to_owned());
    }
}

struct Window {
    second: u64,
    suppressed: u64,
    service: String,
    ids: Vec<String>,
}

impl Refusals {
    fn record(
        &self,
        grant: &str,
        service: &str,
        collection: &str,
        operation: Operation,
        reason: &str,
        id: Option<&str>,
    ) -> Option<AuditEvent> {
        let now = now_unix();
        let mut windows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (
            grant.to_owned(),
            collection.to_owned(),
            operation,
            reason.to_owned(),
        );
        if let Some(window) = windows.get_mut(&key).filter(|w| w.second == now) {
            window.suppressed += 1;
            note_id(&mut window.ids, id);
            return None;
        }
        let earlier = windows.insert(
            key,
            Window {
                second: now,
                suppressed: 0,
                service: service.to_owned(),
                ids: Vec::new(),
            },
        );
        // A second whose count was not flushed yet is folded into this entry.
        let (count, mut ids) = match earlier {
            Some(w) => (1 + w.suppressed, w.ids),
            None => (1, Vec::new()),
        };
        note_id(&mut ids, id);
        Some(refusal_event(
            grant, service, collection, operation, reason, count, ids,
        ))
    }

    /// Entries for counted refusals of seconds that are over.
    fn flush(&self) -> Vec<AuditEvent> {
        let now = now_unix();
        let mut windows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut events = Vec::new();
        windows.retain(|(grant, collection, operation, reason), w| {
            if w.second >= now {
                return true;
            }
            if w.suppressed > 0 {
                events.push(refusal_event(
                    grant,
                    &w.service,
                    collection,
                    *operation,
                    reason,
                    w.suppressed,
                    std::mem::take(&mut w.ids),
                ));
            }
            false
        });
        events
    }
}

fn refusal_event(
    grant: &str,
    service: &str,
    collection: &str,
    operation: Operation,
    reason: &str,
    count: u64,
    ids: Vec<String>,
) -> AuditEvent {
    AuditEvent {
        grant: grant.to_owned(),
        service: service.to_owned(),
        operation,
        collection: collection.to_owned(),
        records: 0,
        fields: Vec::new(),
        ids,
        reason: Some(reason.to_owned()),
        count: Some(count),
        stream: None,
    }
}
