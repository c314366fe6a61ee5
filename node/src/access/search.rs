//! Search through a grant (`GET /v1/view/search`): the owner's index (`crate::search`),
//! kept to what the grant's view shows. A record counts only if the grant reads its
//! collection, its filter shows it, and a word was found in a field the grant reads;
//! it is answered projected, as `GET /v1/view/{c}/{id}` would, and audited as a read
//! of those records (ids and fields), one entry a collection.

use std::collections::BTreeMap;

use hearth_protocol::CollectionName;
use hearth_protocol::scope::FieldPath;
use serde_json::Value;

use super::AccessError;
use super::audit::{AuditEvent, Operation};
use super::door::{Credentials, Door, project_one};
use crate::search::{Index, SearchError};

/// A record a grant's search found: projected, with the readable fields the words
/// were in.
#[derive(Debug, Clone)]
pub struct ViewHit {
    pub collection: String,
    pub id: String,
    pub record: Value,
    pub fields: Vec<String>,
    pub score: u32,
}

impl From<SearchError> for AccessError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::BadQuery(m) => AccessError::BadRequest(m),
            SearchError::Store(e) => AccessError::Internal(e.to_string()),
            SearchError::Collection(e) => e.into(),
            SearchError::Stopped => AccessError::Internal("the node is stopping".into()),
        }
    }
}

/// How many of the index's best a grant's search looks through for `limit` of its
/// own (records its filter hides or whose words are in fields it cannot read are
/// passed over).
const LOOKED_THROUGH: usize = 2000;

impl Door {
    pub async fn search(
        &self,
        credentials: &Credentials,
        index: &Index,
        query: &str,
        limit: usize,
    ) -> Result<Vec<ViewHit>, AccessError> {
        let caller = self.admit(credentials).await?;
        let index = index.clone();
        let query = query.to_owned();
        let (hits, events) = self
            .blocking(move |inner| {
                let existing = inner.collections.names()?;
                let scopes: BTreeMap<String, _> = caller
                    .scope
                    .readable(existing.iter().map(CollectionName::as_str))
                    .into_iter()
                    .collect();
                let keep = |c: &str| scopes.contains_key(c);
                let found = index.find(&inner.collections, &query, &keep, LOOKED_THROUGH)?;
                let mut hits = Vec::new();
                let mut read: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
                for hit in found {
                    if hits.len() == limit {
                        break;
                    }
                    let (Some(scope), Ok(name), Ok(id)) = (
                        scopes.get(&hit.collection),
                        CollectionName::parse(&hit.collection),
                        hearth_protocol::RecordId::parse(&hit.id),
                    ) else {
                        continue;
                    };
                    let Some(record) = inner.collections.get(&name, &id)? else {
                        continue;
                    };
                    let mut fields = Vec::new();
                    let Some(projected) = project_one(scope, record, &mut fields) else {
                        continue;
                    };
                    // Only words the grant could have read itself.
                    let shown: Vec<String> = hit
                        .fields
                        .iter()
                        .filter(|f| {
                            let Value::Object(p) = &projected else {
                                return false;
                            };
                            FieldPath::parse(f).is_some_and(|path| {
                                hearth_protocol::scope::lookup(p, &path).is_some()
                            })
                        })
                        .cloned()
                        .collect();
                    if shown.is_empty() {
                        continue;
                    }
                    let entry = read.entry(hit.collection.clone()).or_default();
                    entry.0.push(hit.id.clone());
                    for f in fields {
                        if !entry.1.contains(&f) {
                            entry.1.push(f);
                        }
                    }
                    hits.push(ViewHit {
                        collection: hit.collection,
                        id: hit.id,
                        record: projected,
                        fields: shown,
                        score: hit.score,
                    });
                }
                let events: Vec<AuditEvent> = read
                    .into_iter()
                    .map(|(collection, (ids, fields))| AuditEvent {
                        records: ids.len(),
                        ids,
                        fields,
                        ..caller.grant.event(Operation::Read, &collection)
                    })
                    .collect();
                Ok((hits, events))
            })
            .await?;
        if !events.is_empty() {
            self.audited(events).await?;
        }
        Ok(hits)
    }
}
