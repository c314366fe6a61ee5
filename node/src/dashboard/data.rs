//! The data pages: blobs, imports, collections, records, their editor and conflicts.

use super::*;

pub(super) struct BlobRow {
    id: String,
    name: String,
    content_type: String,
    size: String,
    here: bool,
}

#[derive(Template)]
#[template(path = "data.html")]
pub(super) struct DataPage {
    csrf: String,
    collections: Vec<(String, u64)>,
    /// Where a .vcf or .ics file can go: `contacts`, `calendar`, and the `contacts-…`
    /// and `calendar-…` collections there are.
    pim_collections: Vec<String>,
    blobs: Vec<BlobRow>,
}

pub(super) async fn data_page(State(vault): State<AppState>, visit: Visit) -> Response {
    let collections = match vault.collections.list() {
        Ok(c) => c,
        Err(e) => return failed(e.into()),
    };
    let blobs = vault.blobs.list(&vault.collections).unwrap_or_default();
    let mut pim_collections: Vec<String> = vec!["contacts".into(), "calendar".into()];
    for c in &collections {
        if crate::pim::Kind::of(&c.name).is_some() && !pim_collections.contains(&c.name) {
            pim_collections.push(c.name.clone());
        }
    }
    page(&DataPage {
        csrf: visit.csrf,
        pim_collections,
        collections: collections
            .into_iter()
            .filter(|c| !c.name.starts_with('_'))
            .map(|c| (c.name, c.records))
            .collect(),
        blobs: blobs
            .into_iter()
            .map(|b| BlobRow {
                name: b.name.unwrap_or_else(|| b.id.clone()),
                content_type: b.content_type.unwrap_or_default(),
                id: b.id,
                size: bytes(b.size),
                here: b.here,
            })
            .collect(),
    })
}

/// A blob, as a download.
pub(super) async fn download_blob(
    State(vault): State<AppState>,
    Path(id): Path<String>,
    _visit: Visit,
    headers: axum::http::HeaderMap,
) -> Response {
    // A download, never shown as a page of the dashboard's origin (resumable: Range).
    match crate::download::blob_response(
        &vault,
        &id,
        crate::download::Disposition::Attachment,
        &headers,
    )
    .await
    {
        Ok(response) => response,
        Err(e) => failed(e),
    }
}

#[derive(Template)]
#[template(path = "imported.html")]
pub(super) struct ImportedPage {
    csrf: String,
    collection: String,
    report: crate::pim::ImportReport,
}

/// A .vcf or .ics file from the import form (multipart: `csrf`, `collection`, `file`).
pub(super) async fn import(
    State(vault): State<AppState>,
    headers: HeaderMap,
    mut multipart: axum::extract::Multipart,
) -> Response {
    // The session first: no byte of the upload is read for a request without one.
    let visit = match visit(&vault, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                // The file may be an old vCard in its own character set.
                let text = field
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        if name == "file" {
                            crate::pim::decode_file(&b)
                        } else {
                            String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
                        }
                    });
                match text {
                    Ok(text) => {
                        fields.insert(name, text);
                    }
                    Err(e) => {
                        return message(
                            StatusCode::BAD_REQUEST,
                            "Not imported",
                            &format!(
                                "The upload broke off or could not be read as text: {e}. Nothing was changed."
                            ),
                        );
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "Not imported",
                    &format!(
                        "The upload could not be read ({e}); files up to {} MiB. Nothing was changed.",
                        MAX_UPLOAD >> 20
                    ),
                );
            }
        }
    }
    let visit = match csrf_checked(visit, &fields) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = fields
        .get("collection")
        .map(|c| c.trim())
        .unwrap_or_default();
    let collection = match CollectionName::parse(name) {
        Ok(c) => c,
        Err(e) => return message(StatusCode::BAD_REQUEST, "Not imported", &e.to_string()),
    };
    let Some(kind) = crate::pim::Kind::of(collection.as_str()) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Not imported",
            "Contacts go into a collection named contacts (or contacts-…), calendars into calendar (or calendar-…).",
        );
    };
    let text = fields.get("file").map(String::as_str).unwrap_or_default();
    if text.trim().is_empty() {
        return message(
            StatusCode::BAD_REQUEST,
            "Not imported",
            "Choose a .vcf or .ics file.",
        );
    }
    match crate::pim::import(&vault, &collection, kind, text).await {
        Ok(report) => page(&ImportedPage {
            csrf: visit.csrf,
            collection: collection.to_string(),
            report,
        }),
        Err(e) => {
            let e = owner::import_error(e);
            let status = e.status();
            if status.is_server_error() {
                tracing::error!(
                    status = status.as_u16(),
                    message = e.message(),
                    "a dashboard import failed"
                );
            }
            message(
                status,
                "Not imported",
                &format!("{}. Nothing was changed.", e.message()),
            )
        }
    }
}

pub(super) struct RecordRow {
    id: String,
    summary: String,
    /// Something in it is for the person to decide (edited apart on two devices).
    conflicted: bool,
}

#[derive(Template)]
#[template(path = "collection.html")]
pub(super) struct CollectionPage {
    csrf: String,
    name: String,
    records: Vec<RecordRow>,
    /// How many of them are for the person to decide.
    to_decide: usize,
    /// A form for a new contact or event (contacts and calendar collections), with
    /// the id the record will get and what it is called.
    new_record: Option<NewRecord>,
}

pub(super) struct NewRecord {
    id: String,
    what: &'static str,
    form: Vec<FormField>,
}

pub(super) fn summary(record: &Map<String, Value>) -> String {
    for key in ["name", "summary", "title", "subject", "text", "body"] {
        if let Some(Value::String(s)) = record.get(key) {
            let mut s: String = s.chars().take(80).collect();
            if s.len() < record[key].as_str().map_or(0, str::len) {
                s.push('…');
            }
            return s;
        }
    }
    let keys: Vec<&str> = record
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "id")
        .take(6)
        .collect();
    keys.join(", ")
}

pub(super) fn collection_of(collection: &str) -> Result<CollectionName, Response> {
    CollectionName::parse(collection).map_err(|e| {
        message(
            StatusCode::BAD_REQUEST,
            "No such collection",
            &e.to_string(),
        )
    })
}

pub(super) fn record_of(
    collection: &str,
    id: &str,
) -> Result<(CollectionName, RecordId), Response> {
    let id = RecordId::parse(id)
        .map_err(|e| message(StatusCode::BAD_REQUEST, "No such record", &e.to_string()))?;
    Ok((collection_of(collection)?, id))
}

/// The collection and record a form changes: valid names, not a system collection.
pub(super) fn writable_record(
    collection: &str,
    id: &str,
) -> Result<(CollectionName, RecordId), Response> {
    let (name, id) = record_of(collection, id)?;
    if name.is_system() {
        return Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "Collections whose name starts with _ belong to the system.",
        ));
    }
    Ok((name, id))
}

pub(super) async fn collection_page(
    State(vault): State<AppState>,
    Path(collection): Path<String>,
    visit: Visit,
) -> Response {
    let name = match collection_of(&collection) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let records = match vault.collections.records(&name) {
        Ok(r) => r,
        Err(e) => return failed(e.into()),
    };
    let conflicted: std::collections::HashSet<String> = {
        let (v, n) = (vault.clone(), name.clone());
        tokio::task::spawn_blocking(move || v.collections.conflicted(&n))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    let new_record = new_form(&name, None).map(|form| NewRecord {
        id: crate::pim::new_uid(),
        what: match crate::pim::Kind::of(name.as_str()) {
            Some(crate::pim::Kind::Contacts) => "contact",
            _ => "event",
        },
        form,
    });
    page(&CollectionPage {
        csrf: visit.csrf,
        to_decide: conflicted.len(),
        new_record,
        name: name.to_string(),
        records: records
            .iter()
            .filter_map(Value::as_object)
            .map(|r| {
                let id = r
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                RecordRow {
                    conflicted: conflicted.contains(&id),
                    id,
                    summary: summary(r),
                }
            })
            .collect(),
    })
}

pub(super) struct ConflictRow {
    field: String,
    values: Vec<String>,
}

#[derive(Template)]
#[template(path = "record.html")]
pub(super) struct RecordPage {
    csrf: String,
    collection: String,
    id: String,
    json: String,
    editable: bool,
    /// The record's fields as a form (contacts and calendar objects); empty: JSON only.
    form: Vec<FormField>,
    /// What the page is called: the contact's name, the event's summary (else the id).
    title: String,
    conflicts: Vec<ConflictRow>,
    versions: Vec<String>,
    deleted: Option<hearth_protocol::api::DeletedWhileEdited>,
}

pub(super) async fn record_page(
    State(vault): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    visit: Visit,
) -> Response {
    let (name, id) = match record_of(&collection, &id) {
        Ok(names) => names,
        Err(r) => return r,
    };
    render_record(&vault, visit, &name, &id).await
}

pub(super) async fn render_record(
    vault: &Arc<Vault>,
    visit: Visit,
    name: &CollectionName,
    id: &RecordId,
) -> Response {
    let record = match vault.collections.get(name, id) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such record",
                &format!("{name} has no record {id}."),
            );
        }
        Err(e) => return failed(e.into()),
    };
    let conflict = match owner::conflicts(vault, name, id).await {
        Ok(Some(conflict)) => conflict,
        _ => owner::conflicts_response(id.to_string(), Default::default(), &Default::default()),
    };
    let versions = conflict
        .versions
        .iter()
        .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
        .collect();
    let conflicts = conflict
        .conflicts
        .into_iter()
        .map(|(field, values)| ConflictRow {
            field,
            values: match values {
                Value::Array(values) => values
                    .iter()
                    .map(|v| serde_json::to_string(v).unwrap_or_default())
                    .collect(),
                other => vec![serde_json::to_string(&other).unwrap_or_default()],
            },
        })
        .collect();
    let mut shown = match record {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    shown.remove("id");
    let form = form(name, &shown).unwrap_or_default();
    let title = match ["name", "summary"]
        .iter()
        .find_map(|k| shown.get(*k).and_then(Value::as_str))
    {
        Some(title) if !title.trim().is_empty() => title.to_owned(),
        _ => id.to_string(),
    };
    page(&RecordPage {
        form,
        title,
        csrf: visit.csrf,
        collection: name.to_string(),
        id: id.to_string(),
        json: serde_json::to_string_pretty(&Value::Object(shown)).unwrap_or_default(),
        editable: !name.is_system(),
        conflicts,
        versions,
        deleted: conflict.deleted,
    })
}

pub(super) async fn save_record(
    State(vault): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    Posted { form, .. }: Posted,
) -> Response {
    let (name, id) = match writable_record(&collection, &id) {
        Ok(names) => names,
        Err(r) => return r,
    };
    let text = form.get("json").map(String::as_str).unwrap_or("");
    let mut record = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Not saved",
                "A record must be a JSON object ({ … }). Nothing was changed.",
            );
        }
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Not saved",
                &format!("That is not valid JSON ({e}). Nothing was changed."),
            );
        }
    };
    if record
        .get("id")
        .is_some_and(|v| v.as_str() != Some(id.as_str()))
    {
        return message(
            StatusCode::BAD_REQUEST,
            "Not saved",
            "The id inside the record differs from the record's id. Nothing was changed.",
        );
    }
    record.remove("id");
    let written = owner::owner_write(&vault, &name, &id, crate::pim::Change::Replace(record)).await;
    if let Err(e) = written {
        return failed(e);
    }
    Redirect::to(&format!("/data/{name}/{id}")).into_response()
}

pub(super) async fn delete_record(
    State(vault): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    _: Posted,
) -> Response {
    let (name, id) = match writable_record(&collection, &id) {
        Ok(names) => names,
        Err(r) => return r,
    };
    match owner::remove(&vault, &name, &id).await {
        Ok(true) => {}
        Ok(false) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such record",
                "It was already gone.",
            );
        }
        Err(e) => return failed(e),
    }
    Redirect::to(&format!("/data/{name}")).into_response()
}

/// Chooses one of a field's competing values: writing it ends the conflict.
pub(super) async fn resolve_conflict(
    State(vault): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    Posted { form, .. }: Posted,
) -> Response {
    let (name, id) = match writable_record(&collection, &id) {
        Ok(names) => names,
        Err(r) => return r,
    };
    if let Some(version) = form.get("version") {
        let Ok(version) = version.parse::<usize>() else {
            return message(StatusCode::BAD_REQUEST, "Not resolved", "Choose a version.");
        };
        if let Err(e) = owner::keep_version(&vault, &name, &id, version).await {
            return failed(e);
        }
        return Redirect::to(&format!("/data/{name}/{id}")).into_response();
    }
    let (Some(field), Some(value)) = (form.get("field"), form.get("value")) else {
        return message(StatusCode::BAD_REQUEST, "Not resolved", "Choose a value.");
    };
    let Ok(value) = serde_json::from_str::<Value>(value) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Not resolved",
            "That value is not JSON.",
        );
    };
    if let Err(e) = owner::resolve(&vault, &name, &id, field, value).await {
        return failed(e);
    }
    Redirect::to(&format!("/data/{name}/{id}")).into_response()
}
