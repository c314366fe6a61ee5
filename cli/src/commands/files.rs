//! `hearth import`, `export`, `blob` and `check`: data in and out of the vault, and
//! reading everything back.

use super::*;

pub(super) async fn check(
    home: &Home,
    json: bool,
    client: &Client,
    repair: bool,
) -> anyhow::Result<()> {
    if repair {
        let made: serde_json::Value = client
            .json(home, client.request(Method::POST, "/v1/check/repair"))
            .await?;
        if !json {
            note(format!(
                "made the search index again: {} record{}",
                made["indexed"],
                if made["indexed"] == 1 { "" } else { "s" }
            ));
        }
    }
    let report: CheckReport = client
        .json(home, client.request(Method::GET, "/v1/check"))
        .await?;
    if json {
        out_json(&report)?;
    } else {
        for problem in &report.problems {
            out(problem)?;
        }
        out(format!(
            "checked {}, {}, {} (every chunk), {}",
            count(report.values, "sealed value"),
            count(report.collections, "collection"),
            count(report.blobs, "blob"),
            count(report.audit_entries, "audit entry")
        ))?;
    }
    if !report.ok {
        return Err(Reported(format!(
            "the check found {} problem(s); the first: {}",
            report.problems.len(),
            report.problems.first().map_or("?", String::as_str)
        ))
        .into());
    }
    Ok(())
}

pub(super) async fn find(
    home: &Home,
    json: bool,
    client: &Client,
    args: Vec<String>,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let (collection, query) = match args.as_slice() {
        [query] => (None, query.clone()),
        [collection, query] => (Some(collection.clone()), query.clone()),
        _ => bail!("give the words to find, after a collection if you want one"),
    };
    let mut url = format!("/v1/search?q={}", seg(&query));
    if let Some(collection) = &collection {
        url.push_str(&format!("&collection={}", seg(collection)));
    }
    if let Some(limit) = limit {
        url.push_str(&format!("&limit={limit}"));
    }
    let results: hearth_protocol::api::SearchResults =
        client.json(home, client.request(Method::GET, &url)).await?;
    if json {
        return out_json(&results);
    }
    if results.hits.is_empty() {
        note(format!("nothing holds {query:?}"));
        if let Some(collection) = &collection {
            let all: Vec<CollectionInfo> = client
                .json(home, client.request(Method::GET, "/v1/collections"))
                .await?;
            if !all.iter().any(|c| &c.name == collection) {
                // `hearth find orrery friday` reads `orrery` as a collection.
                note(format!(
                    "warning: no collection is called {collection:?}{}; to find several \
                     words, give them as one: hearth find \"{collection} {query}\"",
                    hearth_node::owner::did_you_mean(
                        collection,
                        all.iter().map(|c| c.name.as_str())
                    )
                ));
            }
        }
    }
    for hit in &results.hits {
        out(format!(
            "{}/{}  {}  ({})",
            hit.collection,
            hit.id,
            hit.title,
            hit.fields.join(", ")
        ))?;
    }
    Ok(())
}

pub(super) async fn export(
    home: &Home,
    json: bool,
    client: &Client,
    kind: Option<PimKind>,
    output: Option<PathBuf>,
    from: Option<String>,
    maildir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let kind = kind.context("say what to export: contacts, calendar, mail, or --all")?;
    if maildir.is_some() {
        bail!("--maildir is for mail");
    }
    let collection = kind.collection_or(from)?;
    let path = format!("/v1/export/{}", seg(&collection));
    let response = client
        .send(home, client.request(Method::GET, &path))
        .await?;
    // A bar while a large export arrives into a file (not when it goes to stdout).
    let bar = match (&output, response.content_length()) {
        (Some(_), Some(total)) => progress(json, total, "receiving"),
        _ => None,
    };
    let text: Vec<u8> = counted(response.bytes_stream(), &bar)
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .context("the export broke off")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let text = String::from_utf8(text).context("the export is not UTF-8 text")?;
    match output {
        Some(file) => {
            hearth_node::home::write_file_atomic(&file, text.as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", file.display()))?;
            if json {
                out_json(&Exported {
                    collection,
                    path: file.display().to_string(),
                    bytes: text.len() as u64,
                })?;
            } else {
                note(format!("wrote {} bytes to {}", text.len(), file.display()));
            }
        }
        None if json => bail!("with --json, give -o FILE (the export is not JSON)"),
        None => write_stdout(text.as_bytes())?,
    }
    Ok(())
}

/// `hearth export --json`.
#[derive(serde::Serialize)]
pub(super) struct Exported {
    collection: String,
    path: String,
    bytes: u64,
}

/// Sends a file to `POST /v1/import/{c}`, with a progress bar on a terminal.
pub(super) async fn import(
    home: &Home,
    json: bool,
    client: &Client,
    collection: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let bytes = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("cannot read stdin")?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let bar = progress(json, bytes.len() as u64, "sending");
    let chunks: Vec<bytes::Bytes> = bytes::Bytes::from(bytes)
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let counted = bar.clone();
    let body = futures::stream::iter(chunks).map(move |chunk| {
        if let Some(bar) = &counted {
            bar.inc(chunk.len() as u64);
        }
        Ok::<_, std::convert::Infallible>(chunk)
    });
    let path = format!("/v1/import/{}", seg(collection));
    if let Some(bar) = &bar {
        bar.set_message("sending");
    }
    let request = client
        .request(Method::POST, &path)
        .header("content-type", "text/plain; charset=utf-8")
        .body(reqwest::Body::wrap_stream(body));
    let report: ImportReport = client.json(home, request).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if json {
        return out_json(&report);
    }
    out(format!(
        "{} new, {} updated, {} unchanged in {collection}",
        report.imported, report.updated, report.unchanged
    ))?;
    for skipped in &report.skipped {
        note(format!(
            "skipped entry {} (line {}): {}",
            skipped.entry, skipped.line, skipped.reason
        ));
    }
    Ok(())
}

/// A blob's id from what a person typed: the id, or a unique start of it (at least 4
/// hex digits) among the vault's blobs.
async fn blob_id(client: &Client, home: &Home, given: &str) -> anyhow::Result<String> {
    let given = given.trim().to_ascii_lowercase();
    if hearth_protocol::BlobId::parse(&given).is_ok() {
        return Ok(given);
    }
    if given.len() < 4 || given.len() > 64 || !given.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(crate::client::coded(
            "invalid_blob_id",
            format!(
                "{given:?} is not a blob id: give the 64 hex digits `hearth blob ls` shows, or a unique start of them (at least 4)"
            ),
        ));
    }
    let blobs: Vec<BlobInfo> = client
        .json(home, client.request(Method::GET, "/v1/blobs"))
        .await?;
    let matching: Vec<&BlobInfo> = blobs.iter().filter(|b| b.id.starts_with(&given)).collect();
    match matching.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(crate::client::coded(
            "not_found",
            format!("no blob of the vault starts with {given} (see `hearth blob ls`)"),
        )),
        many => Err(crate::client::coded(
            "ambiguous",
            format!(
                "{} blobs start with {given}: give more of the id",
                many.len()
            ),
        )),
    }
}

pub(super) async fn blob(
    home: &Home,
    json: bool,
    client: &Client,
    command: BlobCommand,
) -> anyhow::Result<()> {
    match command {
        BlobCommand::Put {
            file,
            name,
            content_type,
        } => {
            let name = name.or_else(|| {
                (file.as_os_str() != "-")
                    .then(|| file.file_name())
                    .flatten()
                    .map(|n| n.to_string_lossy().into_owned())
            });
            let content_type = content_type.or_else(|| {
                let name = name.as_deref()?;
                mime_guess::from_path(name)
                    .first()
                    .map(|m| m.essence_str().to_owned())
            });
            let mut bar = None;
            let body = if file.as_os_str() == "-" {
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tokio::io::stdin()))
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("cannot open {}", file.display()))?;
                let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                bar = progress(json, size, "sending");
                reqwest::Body::wrap_stream(counted(tokio_util::io::ReaderStream::new(f), &bar))
            };
            let mut request = client.request(Method::POST, "/v1/blobs").body(body);
            if let Some(name) = &name {
                request = request.query(&[("name", name)]);
            }
            if let Some(content_type) = &content_type {
                request = request.header("content-type", content_type);
            }
            let info: BlobInfo = client.json(home, request).await?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if json {
                out_json(&info)?;
            } else {
                out(info.id)?;
            }
        }
        BlobCommand::Ls => {
            let blobs: Vec<BlobInfo> = client
                .json(home, client.request(Method::GET, "/v1/blobs"))
                .await?;
            if json {
                out_json(&blobs)?;
            } else {
                for b in &blobs {
                    let mut line = format!(
                        "{}\t{}\t{}\t{}",
                        b.id,
                        b.size,
                        b.content_type.as_deref().unwrap_or("-"),
                        b.name.as_deref().unwrap_or("-")
                    );
                    if !b.here {
                        line.push_str("\t(still arriving)");
                    }
                    out(line)?;
                }
            }
        }
        BlobCommand::Rm { id, force } => {
            let id = blob_id(client, home, &id).await?;
            let path = if force {
                format!("/v1/blobs/{id}?force=true")
            } else {
                format!("/v1/blobs/{id}")
            };
            let removed: BlobRemoved = client
                .json(home, client.request(Method::DELETE, &path))
                .await?;
            if json {
                out_json(&removed)?;
            } else {
                out(format!(
                    "removed blob {id} from every device; freed {} bytes here",
                    removed.bytes
                ))?;
            }
        }
        BlobCommand::Get {
            id,
            output,
            force,
            thumbnail,
        } => {
            let id = blob_id(client, home, &id).await?;
            let url = match thumbnail {
                None => format!("/v1/blobs/{}", seg(&id)),
                Some(size) => format!("/v1/blobs/{}/thumbnail?size={size}", seg(&id)),
            };
            if let Some((size, path)) = fetch(
                home,
                json,
                client,
                &url,
                &format!("blob {id}"),
                output,
                force,
            )
            .await?
            {
                if json {
                    out_json(&BlobWritten {
                        id,
                        size,
                        path: path.display().to_string(),
                    })?;
                } else {
                    note(format!("wrote {size} bytes to {}", path.display()));
                }
            }
        }
    }
    Ok(())
}

/// Downloads `url` (a blob's or a file's bytes; `what` names it in messages) to
/// `output`, written beside it and renamed (so a broken transfer leaves no partial
/// file under the name), or to stdout; `Some((size, path))` when a file was written.
async fn fetch(
    home: &Home,
    json: bool,
    client: &Client,
    url: &str,
    what: &str,
    output: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<Option<(u64, PathBuf)>> {
    if json && output.is_none() {
        bail!("with --json, give -o FILE (the bytes are not JSON)");
    }
    if output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("the bytes would go to the terminal: give -o FILE, or redirect stdout");
    }
    if let Some(path) = &output
        && let Ok(meta) = std::fs::symlink_metadata(path)
    {
        // The bytes are written beside FILE and renamed onto it: only a regular
        // file may be replaced that way.
        if !meta.is_file() {
            bail!(
                "{} exists and is not a regular file: give a file name",
                path.display()
            );
        }
        if !force {
            bail!(
                "{} exists: give --force to replace it, or another name",
                path.display()
            );
        }
    }
    let response = client.send(home, client.request(Method::GET, url)).await?;
    let bar = match (&output, response.content_length()) {
        (Some(_), Some(total)) => progress(json, total, "receiving"),
        _ => None,
    };
    let mut stream = counted(response.bytes_stream(), &bar);
    let mut size = 0u64;
    match &output {
        Some(path) => {
            // Written beside the target and renamed, so a failed transfer leaves
            // no partial file under the name asked for.
            let tmp = path.with_extension("hearth-partial");
            let result: anyhow::Result<()> = async {
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                while let Some(chunk) = stream
                    .try_next()
                    .await
                    .context("the transfer broke off (the bytes may be corrupt)")?
                {
                    size += chunk.len() as u64;
                    file.write_all(&chunk).await?;
                }
                file.flush().await?;
                file.sync_all().await?;
                tokio::fs::rename(&tmp, path).await?;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.context(format!("{what} is corrupt or unreadable")));
            }
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(Some((size, path.clone())));
        }
        None => {
            let mut stdout = tokio::io::stdout();
            while let Some(chunk) = stream.try_next().await.with_context(|| {
                format!("{what} is corrupt or unreadable: the transfer broke off")
            })? {
                match stdout.write_all(&chunk).await {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return Err(StdoutClosed.into());
                    }
                    other => other?,
                }
            }
            stdout.flush().await?;
        }
    }
    Ok(None)
}

/// The API's URL of a file or folder: each name percent-encoded. A path the vault
/// cannot hold is refused here, with the reason (`..` would otherwise be folded away
/// by URL rules before the node sees it).
fn file_url(path: &str) -> anyhow::Result<String> {
    let path = hearth_node::files::FilePath::parse(path)
        .map_err(|e| crate::client::coded("bad_request", e.to_string()))?;
    let names: Vec<String> = path
        .as_str()
        .split('/')
        .filter(|n| !n.is_empty())
        .map(seg)
        .collect();
    Ok(if names.is_empty() {
        "/v1/files".to_owned()
    } else {
        format!("/v1/files/{}", names.join("/"))
    })
}

/// `1.2 MB`, `512 B`.
fn size_words(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn file_line(f: &FileInfo) -> String {
    let name = f.path.rsplit('/').next().unwrap_or_default();
    let when = f
        .modified
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default();
    if f.folder {
        format!("{:>9}  {when:16}  {name}/", "")
    } else {
        format!("{:>9}  {when:16}  {name}", size_words(f.size))
    }
}

pub(super) async fn file(
    home: &Home,
    json: bool,
    client: &Client,
    command: FileCommand,
) -> anyhow::Result<()> {
    match command {
        FileCommand::Put {
            file,
            path,
            content_type,
        } => {
            let local_name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("give a file to store")?;
            let path = match path {
                None => format!("/{local_name}"),
                Some(p) if p.ends_with('/') => format!("{p}{local_name}"),
                Some(p) => p,
            };
            let content_type = content_type.or_else(|| {
                mime_guess::from_path(&path)
                    .first()
                    .map(|m| m.essence_str().to_owned())
            });
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let meta = f
                .metadata()
                .await
                .with_context(|| format!("cannot read {}", file.display()))?;
            if !meta.is_file() {
                bail!("{} is not a file", file.display());
            }
            // The file keeps its own time, as a copy with rsync or a file manager does.
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            let bar = progress(json, meta.len(), "sending");
            let body =
                reqwest::Body::wrap_stream(counted(tokio_util::io::ReaderStream::new(f), &bar));
            let mut request = client
                .request(Method::PUT, &file_url(&path)?)
                .query(&[("parents", "true")])
                .body(body);
            if let Some(at) = modified {
                request = request.query(&[("modified", at)]);
            }
            if let Some(content_type) = &content_type {
                request = request.header("content-type", content_type);
            }
            let info: FileInfo = client.json(home, request).await?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if json {
                out_json(&info)?;
            } else {
                out(format!("stored {} ({})", info.path, size_words(info.size)))?;
            }
        }
        FileCommand::Ls { path } => {
            let path = path.unwrap_or_else(|| "/".into());
            let url = file_url(&path)?;
            let info: FileInfo = client
                .json(
                    home,
                    client.request(Method::GET, &url).query(&[("info", "true")]),
                )
                .await?;
            if !info.folder {
                if json {
                    out_json(&info)?;
                } else {
                    out(file_line(&info))?;
                }
                return Ok(());
            }
            let list: FileList = client.json(home, client.request(Method::GET, &url)).await?;
            if json {
                out_json(&list)?;
            } else if list.entries.is_empty() {
                note(format!("{} is empty", list.path));
            } else {
                for f in &list.entries {
                    out(file_line(f))?;
                }
            }
        }
        FileCommand::Get {
            path,
            output,
            force,
        } => {
            if let Some((size, written)) = fetch(
                home,
                json,
                client,
                &file_url(&path)?,
                &format!("file {path}"),
                output,
                force,
            )
            .await?
            {
                if json {
                    out_json(&serde_json::json!({
                        "path": path,
                        "size": size,
                        "written": written.display().to_string(),
                    }))?;
                } else {
                    note(format!("wrote {size} bytes to {}", written.display()));
                }
            }
        }
        FileCommand::Mkdir { path } => {
            let info: FileInfo = client
                .json(
                    home,
                    client
                        .request(Method::PUT, &file_url(&path)?)
                        .query(&[("folder", "true"), ("parents", "true")]),
                )
                .await?;
            if json {
                out_json(&info)?;
            } else {
                out(format!("made folder {}", info.path))?;
            }
        }
        FileCommand::Mv { from, to, force } => {
            relocate(home, json, client, &from, &to, force, false).await?;
        }
        FileCommand::Cp { from, to, force } => {
            relocate(home, json, client, &from, &to, force, true).await?;
        }
        FileCommand::Rm { path } => {
            let removed: FileRemoved = client
                .json(home, client.request(Method::DELETE, &file_url(&path)?))
                .await?;
            if json {
                out_json(&removed)?;
            } else {
                out(format!(
                    "removed {} ({}, {})",
                    removed.path,
                    count(removed.files as u64, "file"),
                    count(removed.folders as u64, "folder")
                ))?;
            }
        }
    }
    Ok(())
}

/// `hearth file mv` and `cp`: a TO ending in `/` is the folder to put FROM in.
async fn relocate(
    home: &Home,
    json: bool,
    client: &Client,
    from: &str,
    to: &str,
    overwrite: bool,
    copy: bool,
) -> anyhow::Result<()> {
    let to = match to.strip_suffix('/') {
        Some(folder) => format!(
            "{folder}/{}",
            from.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
        ),
        None => to.to_owned(),
    };
    let info: FileInfo = client
        .json(
            home,
            client
                .request(Method::PATCH, &file_url(from)?)
                .json(&FileMove {
                    to: to.clone(),
                    overwrite,
                    copy,
                }),
        )
        .await?;
    if json {
        out_json(&info)?;
    } else {
        let done = if copy { "copied" } else { "moved" };
        out(format!("{done} {from} to {}", info.path))?;
    }
    Ok(())
}
