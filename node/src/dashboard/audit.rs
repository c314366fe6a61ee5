//! The audit log page and its check.

use super::*;

pub(super) struct AuditRow {
    at: String,
    service: String,
    grant: String,
    operation: String,
    refused: bool,
    collection: String,
    records: u64,
    fields: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub(super) struct AuditPage {
    csrf: String,
    rows: Vec<AuditRow>,
    total: usize,
    grant: String,
    collection: String,
    grants: Vec<(String, String)>,
    collections: Vec<String>,
    verified: Option<Verified>,
}

#[derive(Clone)]
pub(super) struct Verified {
    pub(super) ok: bool,
    pub(super) text: String,
}

#[derive(serde::Deserialize, Default)]
pub(super) struct AuditQuery {
    #[serde(default)]
    grant: String,
    #[serde(default)]
    collection: String,
}

/// At most this many entries on the audit page (the newest).
pub(super) const AUDIT_ROWS: usize = 500;

pub(super) async fn audit_page(
    State(vault): State<AppState>,
    Query(query): Query<AuditQuery>,
    visit: Visit,
) -> Response {
    render_audit(&vault, visit, query, None).await
}

pub(super) async fn render_audit(
    vault: &AppState,
    visit: Visit,
    query: AuditQuery,
    verified: Option<Verified>,
) -> Response {
    let entries = match owner::audit(vault, None).await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let mut grants: Vec<(String, String)> = Vec::new();
    let mut collections: Vec<String> = Vec::new();
    for e in &entries {
        if !grants.iter().any(|(id, _)| *id == e.grant) {
            grants.push((e.grant.clone(), e.service.clone()));
        }
        if !e.collection.is_empty() && !collections.contains(&e.collection) {
            collections.push(e.collection.clone());
        }
    }
    collections.sort();
    let matching: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| query.grant.is_empty() || e.grant == query.grant)
        .filter(|e| query.collection.is_empty() || e.collection == query.collection)
        .collect();
    let total = matching.len();
    let mut rows: Vec<AuditRow> = matching
        .into_iter()
        .map(|e| AuditRow {
            at: local_time(e.at),
            service: e.service.clone(),
            grant: e.grant.clone(),
            operation: e.operation.clone(),
            refused: e.operation == "refused",
            collection: e.collection.clone(),
            records: e.records,
            fields: e.fields.join(", "),
            detail: match (&e.reason, e.count) {
                (Some(reason), Some(n)) if n > 1 => format!("{reason} (×{n})"),
                (Some(reason), _) => reason.clone(),
                _ if !e.ids.is_empty() => format!("ids {}", e.ids.join(", ")),
                _ => String::new(),
            },
        })
        .collect();
    rows.reverse();
    rows.truncate(AUDIT_ROWS);
    page(&AuditPage {
        csrf: visit.csrf,
        rows,
        total,
        grant: query.grant,
        collection: query.collection,
        grants,
        collections,
        verified,
    })
}

/// How long the overview trusts the last verification of the audit log.
pub(super) const VERIFIED_FOR_SECS: u64 = 300;

impl Sessions {
    /// The last verification of the audit log, if it is recent.
    pub(super) fn last_verified(&self) -> Option<Verified> {
        let now = crate::clock::now_unix();
        let last = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| now.saturating_sub(*at) < VERIFIED_FOR_SECS)
            .map(|(_, v)| v.clone())
    }
}

/// Verifies the audit log's hash chains, and remembers the result for the overview.
pub(super) async fn verify(vault: &AppState) -> Verified {
    let (ok, text) = match owner::audit_verify(vault).await {
        Ok(v) if v.ok => (
            true,
            format!(
                "The audit log is intact: {} entries, every hash chain checked.",
                v.entries.unwrap_or_default()
            ),
        ),
        Ok(v) => (
            false,
            format!(
                "The audit log was altered: entry {} — {}",
                v.entry.unwrap_or_default(),
                v.reason.unwrap_or_default()
            ),
        ),
        Err(e) => (
            false,
            format!("The audit log could not be read: {}", e.message()),
        ),
    };
    let verified = Verified { ok, text };
    *vault
        .dashboard
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some((crate::clock::now_unix(), verified.clone()));
    verified
}

pub(super) async fn verify_audit(
    State(vault): State<AppState>,
    Posted { visit, .. }: Posted,
) -> Response {
    let verified = verify(&vault).await;
    render_audit(&vault, visit, AuditQuery::default(), Some(verified)).await
}
