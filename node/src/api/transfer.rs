//! `/v1/import`, `/v1/export` and `/v1/check`: vCard, iCalendar and mail in and out,
//! the whole vault as one snapshot, and reading everything back.

use super::*;

/// The kind of a collection that holds contacts or calendar objects.
pub(super) fn pim_kind(collection: &CollectionName) -> Result<pim::Kind, ApiError> {
    pim::Kind::of(collection.as_str()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidCollection,
            format!(
                "collection {collection} holds neither contacts nor a calendar: name it contacts (or contacts-…) or calendar (or calendar-…)"
            ),
        )
    })
}

/// `POST /v1/import/{c}`: a vCard or iCalendar file, all or nothing; or, into a mail
/// collection, a batch of messages (`hearth_protocol::mail`).
#[utoipa::path(
    post,
    path = "/v1/import/{collection}",
    tag = "owner",
    summary = "Import a vCard or iCalendar file (all or nothing), or a batch of mail messages into a mail collection",
    params(InCollection),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, description = "contacts, calendar: {\"imported\", \"updated\", \"unchanged\", \"skipped\"}; mail: MailImportReport", body = serde_json::Value), (status = "default", response = Failure))
)]
pub(super) async fn import(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let collection = writable(collection_name(&path_param(path)?)?)?;
    let mail = crate::mail::is_mail(&collection);
    let kind = if mail {
        None
    } else {
        Some(pim_kind(&collection).map_err(|mut e| {
            e.message.push_str(", or mail (or mail-…) for messages");
            e
        })?)
    };
    let bytes = body_within(body, vault.limits.max_import_bytes, "file").await?;
    let Some(kind) = kind else {
        let items = hearth_protocol::mail::decode_batch(&bytes)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        drop(bytes);
        let report = crate::mail::import_batch(&vault, &collection, items)
            .await
            .map_err(import_error)?;
        return Ok(Json(report).into_response());
    };
    let text = pim::decode_file(&bytes).map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
    let report = pim::import(&vault, &collection, kind, &text)
        .await
        .map_err(import_error)?;
    Ok(Json(report).into_response())
}

/// The most records one restore request carries (`hearth import --all` sends fewer).
pub(super) const RESTORE_BATCH: usize = 5_000;
/// The largest restore request (`hearth import --all` sends about 8 MiB at most).
const RESTORE_BODY: usize = 32 * 1024 * 1024;
/// A restored record may be this many times the record limit: a record the vault
/// holds can be larger than the body that made it (a vCard's text kept beside the
/// fields read from it, JSON-escaped), and its own export must restore.
const RESTORE_RECORD_FACTOR: usize = 4;

/// `POST /v1/restore/{c}`: records of an export (`hearth export --all`), each with its
/// `"id"`, written as one change: created where the collection lacks them, left where
/// it holds them, the same or not (see [`RestoreReport`]).
#[utoipa::path(
    post,
    path = "/v1/restore/{collection}",
    tag = "owner",
    summary = "Restore records from an export: create the missing ones, never overwrite (all or nothing)",
    params(InCollection),
    request_body(content = Vec<serde_json::Value>, description = "records, each a JSON object with its \"id\""),
    responses((status = 200, description = "ok", body = RestoreReport), (status = "default", response = Failure))
)]
pub(super) async fn restore(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<RestoreReport>, ApiError> {
    let collection = writable(collection_name(&path_param(path)?)?)?;
    let limit = RESTORE_BODY.min(vault.limits.max_import_bytes);
    let bytes = body_within(body, limit, "body").await?;
    let max_record = vault
        .limits
        .max_record_bytes
        .saturating_mul(RESTORE_RECORD_FACTOR);
    let records = tokio::task::spawn_blocking(move || restore_records(&bytes, max_record))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the request failed: {e}")))??;
    let report = pim::owner_restore(&vault.collections, &collection, records)
        .await
        .map_err(|e| match e {
            pim::WriteError::BadEdit(message) => ApiError::new(ErrorCode::BadRequest, message),
            pim::WriteError::Pim(e) => ApiError::new(ErrorCode::BadRequest, e.to_string()),
            pim::WriteError::Collection(e) => e.into(),
            pim::WriteError::Missing => ApiError::new(ErrorCode::Internal, "no such record"),
        })?;
    vault.store.commit().await?;
    Ok(Json(report))
}

/// A record to restore, by id.
type Restored = (RecordId, Map<String, Value>);

/// A restore request's records: a JSON array of at most [`RESTORE_BATCH`] objects,
/// each with a valid `"id"` and at most `max_record_bytes` as JSON.
fn restore_records(bytes: &[u8], max_record_bytes: usize) -> Result<Vec<Restored>, ApiError> {
    let bad = |message: String| ApiError::new(ErrorCode::BadRequest, message);
    let items: Vec<Value> = match serde_json::from_slice(bytes) {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            return Err(bad(format!(
                "a restore takes a JSON array of records, not {}",
                json_kind(&other)
            )));
        }
        Err(e) => {
            return Err(ApiError::new(
                ErrorCode::BadJson,
                format!("the body is not valid JSON: {e}"),
            ));
        }
    };
    if items.len() > RESTORE_BATCH {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "{} records in one request; at most {RESTORE_BATCH}",
                items.len()
            ),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(at, item)| {
            let Value::Object(record) = item else {
                return Err(bad(format!(
                    "record {at} of the array is {}, not an object",
                    json_kind(&item)
                )));
            };
            let id = match record.get("id") {
                Some(Value::String(id)) => RecordId::parse(id).map_err(|e| {
                    ApiError::new(ErrorCode::InvalidId, format!("record {at} of the array: {e}"))
                })?,
                _ => return Err(bad(format!("record {at} of the array has no \"id\" string"))),
            };
            let size = serde_json::to_vec(&record).map_or(usize::MAX, |v| v.len());
            if size > max_record_bytes {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "record {id} is {size} bytes, over the limit of {max_record_bytes} bytes a record"
                    ),
                ));
            }
            Ok((id, record))
        })
        .collect()
}

/// Where an incremental import into a collection stands (for IMAP: a folder's
/// UIDVALIDITY and the next UID to fetch), kept in the system collection `_imports`
/// under an id the importer makes (a hash: the source's address is not kept).
pub(super) fn import_state_id(collection: &CollectionName, id: &RecordId) -> RecordId {
    let hash = blake3::derive_key(
        "hearth import state v1",
        format!("{collection}\u{0}{id}").as_bytes(),
    );
    RecordId::parse(&data_encoding::HEXLOWER.encode(&hash[..16])).expect("hex is a valid record id")
}

pub(super) fn imports() -> CollectionName {
    CollectionName::parse("_imports").expect("_imports is a valid system collection name")
}

#[utoipa::path(
    get,
    path = "/v1/import/{collection}/state/{id}",
    tag = "owner",
    summary = "Where an incremental import into a collection stands (set by the importer)",
    params(AtRecord),
    responses((status = 200, description = "the state the importer stored", body = serde_json::Value), (status = "default", response = Failure))
)]
pub(super) async fn import_state(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let mut state = vault
        .collections
        .get(&imports(), &import_state_id(&collection, &id))?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no import into {collection} has stored state {id}"),
            )
        })?;
    if let Some(state) = state.as_object_mut() {
        state.remove("id");
    }
    Ok(Json(state))
}

#[utoipa::path(
    put,
    path = "/v1/import/{collection}/state/{id}",
    tag = "owner",
    summary = "Store where an incremental import into a collection stands (a JSON object of at most 4 KiB)",
    params(AtRecord),
    request_body = serde_json::Value,
    responses((status = 204, description = "stored"), (status = "default", response = Failure))
)]
pub(super) async fn set_import_state(
    State(vault): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (collection, id) = record_path(path)?;
    let collection = writable(collection)?;
    let bytes = axum::body::to_bytes(body, 4096)
        .await
        .map_err(|_| ApiError::new(ErrorCode::TooLarge, "an import state is at most 4096 bytes"))?;
    let state: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("an import state is a JSON object: {e}"),
        )
    })?;
    let state_id = import_state_id(&collection, &id);
    blocking(&vault, move |v| {
        Ok(v.collections.put(&imports(), &state_id, &state)?)
    })
    .await?;
    vault.store.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/export/{c}`: every record as one vCard or iCalendar file.
#[utoipa::path(
    get,
    path = "/v1/export/{collection}",
    tag = "owner",
    summary = "A contacts or calendar collection as one vCard or iCalendar file",
    params(InCollection),
    responses((status = 200, description = "text/vcard or text/calendar", content_type = "text/plain", body = String), (status = "default", response = Failure))
)]
pub(super) async fn export(
    State(vault): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let collection = collection_name(&path_param(path)?)?;
    let kind = pim_kind(&collection)?;
    let text = blocking(&vault, move |v| {
        let records: Vec<(String, Map<String, Value>)> = v
            .collections
            .records(&collection)?
            .into_iter()
            .filter_map(|r| match r {
                Value::Object(mut r) => {
                    let id = r.remove("id")?.as_str()?.to_owned();
                    Some((id, r))
                }
                _ => None,
            })
            .collect();
        pim::export(kind, &records).map_err(|e| ApiError::new(ErrorCode::Corrupt, e.to_string()))
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(kind.media_type()),
        )],
        text,
    )
        .into_response())
}

/// The whole vault at one moment (see [`VaultExport`]).
#[utoipa::path(
    get,
    path = "/v1/export",
    tag = "owner",
    summary = "The whole vault at one moment",
    responses((status = 200, description = "ok", body = VaultExport), (status = "default", response = Failure))
)]
pub(super) async fn export_all(
    State(vault): State<AppState>,
) -> Result<Json<VaultExport>, ApiError> {
    blocking(&vault, |v| {
        use crate::collections::RecordSource;
        let snapshot = v.collections.snapshot()?;
        let at = crate::clock::now_unix();
        let mut collections = std::collections::BTreeMap::new();
        let mut texts = std::collections::BTreeMap::new();
        for name in snapshot.collection_names()? {
            if name.as_str().starts_with('_') {
                continue;
            }
            let records = snapshot.collection_records(&name)?;
            if let Some(kind) = pim::Kind::of(name.as_str()) {
                let pairs: Vec<(String, Map<String, Value>)> = records
                    .iter()
                    .filter_map(|r| {
                        let mut r = r.as_object()?.clone();
                        let id = r.remove("id")?.as_str()?.to_owned();
                        Some((id, r))
                    })
                    .collect();
                let text = pim::export(kind, &pairs).map_err(|e| {
                    ApiError::new(ErrorCode::Corrupt, format!("collection {name}: {e}"))
                })?;
                texts.insert(name.to_string(), text);
            }
            collections.insert(name.to_string(), records);
        }
        let devices = snapshot.collection_records(&crate::devices::collection())?;
        let blobs = v.blobs.list(&snapshot)?;
        let audit = access::audit_entries(&snapshot, None)?;
        let mut last_used: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for entry in &audit {
            let slot = last_used.entry(entry.grant.as_str()).or_default();
            *slot = (*slot).max(entry.at);
        }
        let grants = access::list_grants(&snapshot)?
            .into_iter()
            .map(|g| {
                let used = last_used.get(g.id.as_str()).copied();
                grant_info(g, used)
            })
            .collect();
        Ok(VaultExport {
            at,
            vault_id: v.keys.vault_id_hex(),
            device: v.keys.peer_id().to_string(),
            collections,
            pim: texts,
            devices,
            blobs,
            grants,
            audit,
        })
    })
    .await
    .map(Json)
}

/// How many records naming a missing blob `hearth check` lists one by one.
const DANGLING_SHOWN: usize = 100;

/// Reads back and verifies everything on this device: every sealed value of the
/// store, every collection document, every chunk of every blob, the audit chains.
#[utoipa::path(
    get,
    path = "/v1/check",
    tag = "owner",
    summary = "Read back and verify everything on this device",
    responses((status = 200, description = "ok", body = CheckReport), (status = "default", response = Failure))
)]
pub(super) async fn check(State(vault): State<AppState>) -> Result<Json<CheckReport>, ApiError> {
    let (values, collections, mut problems) = blocking(&vault, |v| {
        let (values, mut problems) = v.store.verify_all()?;
        let mut loaded = 0;
        for name in v.collections.names()? {
            match v.collections.count(&name) {
                Ok(_) => loaded += 1,
                Err(e) => problems.push(format!("collection {name}: {e}")),
            }
        }
        // Records naming a blob the vault does not have: a photo or a message whose
        // bytes are gone (an import that lost them, a blob removed under a record).
        match crate::blobs::dangling(&v.collections, DANGLING_SHOWN) {
            Ok(report) => {
                for d in &report.found {
                    problems.push(format!(
                        "record {} of collection {} names blob {}, which this vault does not have",
                        d.record, d.collection, d.blob
                    ));
                }
                if report.all > report.found.len() {
                    problems.push(format!(
                        "and {} more names of blobs this vault does not have",
                        report.all - report.found.len()
                    ));
                }
                for (name, e) in report.unreadable {
                    problems.push(format!(
                        "collection {name}: its records cannot be read for their blobs: {e}"
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "the vault's list of blobs cannot be read, so records naming blobs were not checked: {e}"
            )),
        }
        // The tree of files: every file and folder listed by its folder, every entry
        // a record.
        match crate::files::check(&v.collections, DANGLING_SHOWN) {
            Ok((found, all)) => {
                let shown = found.len();
                problems.extend(found);
                if all > shown {
                    problems.push(format!("and {} more problems of the files' tree", all - shown));
                }
            }
            Err(e) => problems.push(format!("the files cannot be read to check their tree: {e}")),
        }
        Ok((values, loaded, problems))
    })
    .await?;
    let manifests = blocking(&vault, |v| Ok(v.blobs.stored()?)).await;
    let mut blobs = 0;
    match manifests {
        Ok(ids) => {
            for id in ids {
                match read_whole(&vault, id).await {
                    Ok(()) => blobs += 1,
                    Err(e) => problems.push(format!("blob {id}: {e}")),
                }
            }
        }
        Err(e) => problems.push(format!("blobs: {}", e.message)),
    }
    let audit = audit_verify(&vault).await?;
    if !audit.ok {
        problems.push(format!(
            "audit log: entry {} does not verify: {}",
            audit.entry.as_deref().unwrap_or("?"),
            audit.reason.as_deref().unwrap_or("?")
        ));
    }
    Ok(Json(CheckReport {
        ok: problems.is_empty(),
        values,
        collections,
        blobs,
        audit_entries: audit.entries.unwrap_or(0),
        problems,
    }))
}

/// Reads a blob through, verifying every chunk.
pub(super) async fn read_whole(vault: &AppState, id: BlobId) -> Result<(), BlobError> {
    let mut reader = vault.blobs.open_blob(id)?;
    while let Some(chunk) = reader.next_chunk().await {
        chunk?;
    }
    Ok(())
}
