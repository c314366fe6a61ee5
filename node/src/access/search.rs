//! Search through a grant (`GET /v1/view/search`): the owner's index (`crate::search`),
//! kept to what the grant's view shows. A record counts only if the grant reads its
//! collection, its filter shows it, and a word was found in a field the grant reads;
//! it is answered projected, as `GET /v1/view/{c}/{id}` would, and audited as a read
//! of those records (ids and fields), one entry a collection.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use hearth_protocol::CollectionName;
use hearth_protocol::scope::FieldPath;
use serde_json::Value;

use super::AccessError;
use super::audit::{AuditEvent, Operation};
use super::door::{Credentials, Door, project_one};
use crate::search::{BODY, Index, SearchError, best_first, weight};

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
                let mut hits: Vec<ViewHit> = Vec::new();
                let mut read_fields: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
                // The best `limit` scores kept so far, the least on top.
                let mut best: BinaryHeap<Reverse<u32>> = BinaryHeap::new();
                for hit in found {
                    // The index ranks by every field; a grant's hit scores only what it
                    // reads, never more. Once `limit` are kept and the index's next
                    // score is no better than the least kept, none after can enter.
                    if best.len() >= limit && best.peek().is_some_and(|l| l.0 >= hit.score) {
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
                    let Some((shown, score)) = readable_words(&projected, &hit.by_word) else {
                        continue;
                    };
                    read_fields.insert((hit.collection.clone(), hit.id.clone()), fields);
                    best.push(Reverse(score));
                    if best.len() > limit {
                        best.pop();
                    }
                    hits.push(ViewHit {
                        collection: hit.collection,
                        id: hit.id,
                        record: projected,
                        fields: shown,
                        score,
                    });
                }
                hits.sort_by(|a, b| {
                    best_first(
                        (a.score, &a.collection, &a.id),
                        (b.score, &b.collection, &b.id),
                    )
                });
                hits.truncate(limit);
                // Audited: the records answered, with the fields each showed.
                let mut read: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
                for hit in &hits {
                    let entry = read.entry(hit.collection.clone()).or_default();
                    entry.0.push(hit.id.clone());
                    let key = (hit.collection.clone(), hit.id.clone());
                    for f in read_fields.remove(&key).unwrap_or_default() {
                        if !entry.1.contains(&f) {
                            entry.1.push(f);
                        }
                    }
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

/// The fields of a hit (`by_word`: each query word's fields) that `projected` (the
/// record as the grant reads it) shows, and the hit's score from those alone; `None`
/// if a word is only in fields it does not show (the hit would tell what they hold).
fn readable_words(projected: &Value, by_word: &[Vec<String>]) -> Option<(Vec<String>, u32)> {
    let Value::Object(projected) = projected else {
        return None;
    };
    // A mail's body is read from its message: the grant reads it if it reads `blob`.
    let shows = |f: &String| {
        (f == BODY && projected.contains_key("blob"))
            || FieldPath::parse(f)
                .is_some_and(|path| hearth_protocol::scope::lookup(projected, &path).is_some())
    };
    let mut shown: Vec<String> = Vec::new();
    let mut score = 0;
    for fields in by_word {
        let readable: Vec<&String> = fields.iter().filter(|f| shows(f)).collect();
        score += readable.iter().map(|f| weight(f)).max()?;
        for f in readable {
            if !shown.contains(f) {
                shown.push(f.clone());
            }
        }
    }
    if shown.is_empty() {
        return None;
    }
    // The fields that weigh most first, as the owner's hits list them.
    shown.sort_by(|a, b| weight(b).cmp(&weight(a)).then_with(|| a.cmp(b)));
    Some((shown, score))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::readable_words;

    fn words(by_word: &[&[&str]]) -> Vec<Vec<String>> {
        by_word
            .iter()
            .map(|fields| fields.iter().map(|f| (*f).to_owned()).collect())
            .collect()
    }

    #[test]
    fn a_hit_counts_only_the_fields_the_grant_reads() {
        let by_word = words(&[&["notes", "name"], &["city"]]);
        let all = json!({"name": "Ada", "city": "London", "notes": "x"});
        // A name counts three times, a city once: 3 + 1, the notes adding nothing.
        assert_eq!(
            readable_words(&all, &by_word),
            Some((vec!["name".into(), "city".into(), "notes".into()], 4))
        );
        let no_name = json!({"city": "London", "notes": "x"});
        assert_eq!(
            readable_words(&no_name, &by_word),
            Some((vec!["city".into(), "notes".into()], 2)),
            "a word in a hidden name scores as its readable field does"
        );
        let body = words(&[&["body"], &["subject"]]);
        let subject = json!({"subject": "Engines"});
        assert_eq!(
            readable_words(&subject, &body),
            None,
            "the body of a message it cannot read"
        );
        let message = json!({"subject": "Engines", "blob": "ab"});
        assert_eq!(
            readable_words(&message, &body),
            Some((vec!["subject".into(), "body".into()], 4))
        );
        let city_only = json!({"city": "London"});
        assert_eq!(
            readable_words(&city_only, &by_word),
            None,
            "the first word is only in fields it does not read"
        );
    }
}
