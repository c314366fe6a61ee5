//! `hearth put`, `get`, `patch`, `ls`, `rm`, `collections`, `conflicts` and `resolve`:
//! records and collections through the owner API.

use super::*;

pub(super) async fn put(
    home: &Home,
    json: bool,
    client: &Client,
    collection: String,
    rest: Vec<String>,
) -> anyhow::Result<()> {
    let (id, data) = match rest.as_slice() {
        [data] => (None, data),
        [id, data] => (Some(id), data),
        _ => bail!("put takes COLLECTION [ID] JSON|@FILE|-"),
    };
    let body = read_data_arg(data)?;
    let request = match id {
        Some(id) => client.request(Method::PUT, &record_path(&collection, id)?),
        None => client.request(
            Method::POST,
            &format!("/v1/collections/{}/records", seg(&collection)),
        ),
    };
    let answer: PutResponse = client
        .json(
            home,
            request
                .header("content-type", "application/json")
                .body(body),
        )
        .await?;
    if json {
        out_json(&answer)?;
    } else {
        out(answer.id)?;
    }
    Ok(())
}

pub(super) async fn get(
    home: &Home,
    json: bool,
    client: &Client,
    collection: String,
    id: String,
) -> anyhow::Result<()> {
    let record: Value = client
        .json(
            home,
            client.request(Method::GET, &record_path(&collection, &id)?),
        )
        .await?;
    print_value(json, &record)?;
    if !json {
        let path = format!("{}/conflicts", record_path(&collection, &id)?);
        let conflicts: ConflictsResponse = client
            .json(home, client.request(Method::GET, &path))
            .await?;
        if !conflicts.conflicts.is_empty() {
            let fields: Vec<&str> = conflicts.conflicts.keys().map(String::as_str).collect();
            note(format!(
                "edited on two devices at once: {} (see `hearth conflicts {collection}`)",
                fields.join(", ")
            ));
        }
        if !conflicts.versions.is_empty() {
            note(format!(
                "this record has {} versions from different devices; this is the first (see `hearth conflicts {collection}`)",
                conflicts.versions.len()
            ));
        }
        if let Some(deleted) = &conflicts.deleted {
            note(format!(
                "deleted on {} while edited on {}: the edit was kept (see `hearth conflicts {collection}`)",
                deleted.deleted_on,
                deleted.edited_on.join(", ")
            ));
        }
    }
    Ok(())
}

pub(super) async fn conflicts(
    home: &Home,
    json: bool,
    client: &Client,
    collection: Option<String>,
) -> anyhow::Result<()> {
    let names: Vec<String> = match collection {
        Some(name) => vec![name],
        None => {
            let all: Vec<CollectionInfo> = client
                .json(home, client.request(Method::GET, "/v1/collections"))
                .await?;
            all.into_iter()
                .map(|c| c.name)
                .filter(|n| !n.starts_with('_'))
                .collect()
        }
    };
    let mut found = Vec::new();
    for name in names {
        let path = format!("/v1/collections/{}/conflicts", seg(&name));
        let records: Vec<ConflictsResponse> = client
            .json(home, client.request(Method::GET, &path))
            .await?;
        for record in records {
            let mut entry = serde_json::json!({
                "collection": name,
                "id": record.id,
                "conflicts": record.conflicts,
            });
            if !record.versions.is_empty() {
                entry["versions"] = serde_json::json!(record.versions);
            }
            if let Some(deleted) = &record.deleted {
                entry["deleted"] = serde_json::json!(deleted);
            }
            found.push(entry);
        }
    }
    if json {
        out_json(&found)?;
    } else if found.is_empty() {
        note("no record is in conflict");
    } else {
        for record in &found {
            print_conflict(record)?;
        }
        note(
            "choose a field's value with `hearth resolve COLLECTION ID FIELD VALUE` (the first value is the one shown now), \
             keep a version with `hearth resolve COLLECTION ID --version N`, \
             or write a merge with `hearth resolve COLLECTION ID --record JSON`",
        );
    }
    Ok(())
}

/// The body of `POST …/resolve` from `hearth resolve`'s arguments: one field's value,
/// a version (numbered from 1 for people, from 0 for the API) or a whole record.
pub(super) fn what_to_keep(
    field: Option<String>,
    value: Option<String>,
    version: Option<usize>,
    record: Option<String>,
) -> anyhow::Result<Value> {
    Ok(match (field, value, version, record) {
        (Some(field), Some(value), None, None) => {
            let value: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            serde_json::json!({ "field": field, "value": value })
        }
        (None, None, Some(n), None) => {
            let Some(index) = n.checked_sub(1) else {
                anyhow::bail!("versions are numbered from 1 (1: the one shown)");
            };
            serde_json::json!({ "version": index })
        }
        (None, None, None, Some(data)) => {
            let record: Value = serde_json::from_slice(&read_data_arg(&data)?)
                .map_err(|e| anyhow::anyhow!("--record is not JSON: {e}"))?;
            serde_json::json!({ "record": record })
        }
        _ => anyhow::bail!("say what to keep: FIELD VALUE, --version N, or --record JSON|@FILE|-"),
    })
}

pub(super) async fn resolve(
    home: &Home,
    json: bool,
    client: &Client,
    collection: String,
    id: String,
    body: Value,
) -> anyhow::Result<()> {
    let path = format!("{}/resolve", record_path(&collection, &id)?);
    let record: Value = client
        .json(home, client.request(Method::POST, &path).json(&body))
        .await?;
    print_value(json, &record)?;
    Ok(())
}

pub(super) async fn patch(
    home: &Home,
    json: bool,
    client: &Client,
    collection: String,
    id: String,
    data: String,
) -> anyhow::Result<()> {
    let body = read_data_arg(&data)?;
    let request = client
        .request(Method::PATCH, &record_path(&collection, &id)?)
        .header("content-type", "application/merge-patch+json")
        .body(body);
    let record: Value = client.json(home, request).await?;
    print_value(json, &record)?;
    Ok(())
}

pub(super) async fn ls(
    home: &Home,
    json: bool,
    client: &Client,
    collection: String,
) -> anyhow::Result<()> {
    let path = format!("/v1/collections/{}/records", seg(&collection));
    let records: Vec<Value> = client
        .json(home, client.request(Method::GET, &path))
        .await?;
    if records.is_empty() {
        let all: Vec<CollectionInfo> = client
            .json(home, client.request(Method::GET, "/v1/collections"))
            .await?;
        if !all.iter().any(|c| c.name == collection) {
            note(format!(
                "warning: no collection is called {collection:?}{}",
                hearth_node::owner::did_you_mean(&collection, all.iter().map(|c| c.name.as_str()))
            ));
        }
    }
    if json {
        out_json(&records)?;
    } else {
        for record in records {
            out(record)?;
        }
    }
    Ok(())
}

pub(super) async fn rm_collection(
    home: &Home,
    json: bool,
    client: &Client,
    collection: String,
) -> anyhow::Result<()> {
    client
        .send(
            home,
            client.request(
                Method::DELETE,
                &format!("/v1/collections/{}", seg(&collection)),
            ),
        )
        .await?;
    if json {
        out_json(&serde_json::json!({ "collection": collection, "removed": true }))?;
    } else {
        out(format!("removed the empty collection {collection}"))?;
    }
    Ok(())
}

pub(super) async fn rm(
    home: &Home,
    json: bool,
    client: &Client,
    collection: String,
    id: String,
) -> anyhow::Result<()> {
    client
        .send(
            home,
            client.request(Method::DELETE, &record_path(&collection, &id)?),
        )
        .await?;
    if json {
        out_json(&Removed { id, removed: true })?;
    } else {
        out(format!("removed {collection}/{id}"))?;
    }
    Ok(())
}

pub(super) async fn collections(home: &Home, json: bool, client: &Client) -> anyhow::Result<()> {
    let list: Vec<CollectionInfo> = client
        .json(home, client.request(Method::GET, "/v1/collections"))
        .await?;
    if json {
        out_json(&list)?;
    } else {
        for c in list {
            out(format!("{}\t{}", c.name, c.records))?;
        }
    }
    Ok(())
}

/// One record of `hearth conflicts`, for a person.
pub(super) fn print_conflict(record: &Value) -> anyhow::Result<()> {
    out(format!(
        "{}/{}",
        record["collection"].as_str().unwrap_or_default(),
        record["id"].as_str().unwrap_or_default()
    ))?;
    if let Some(deleted) = record.get("deleted") {
        let edited: Vec<&str> = deleted["edited_on"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out(format!(
            "  deleted on {}, edited on {}: the edit was kept",
            deleted["deleted_on"].as_str().unwrap_or("a device"),
            edited.join(", ")
        ))?;
    }
    if let Some(versions) = record.get("versions").and_then(Value::as_array) {
        for (n, version) in versions.iter().enumerate() {
            let shown = if n == 0 { " (shown)" } else { "" };
            out(format!("  version {}{shown}: {version}", n + 1))?;
        }
    }
    if let Some(fields) = record["conflicts"].as_object() {
        for (field, values) in fields {
            let values: Vec<String> = values
                .as_array()
                .map(|v| v.iter().map(Value::to_string).collect())
                .unwrap_or_default();
            out(format!("  {field}: {}", values.join("  |  ")))?;
        }
    }
    Ok(())
}
