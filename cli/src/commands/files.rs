//! `hearth import`, `export`, `blob` and `check`: data in and out of the vault, and
//! reading everything back.

use super::*;

pub(super) async fn check(home: &Home, json: bool, client: &Client) -> anyhow::Result<()> {
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
        BlobCommand::Get { id, output, force } => {
            let id = blob_id(client, home, &id).await?;
            if json && output.is_none() {
                bail!("with --json, give -o FILE (the blob's bytes are not JSON)");
            }
            if output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("a blob's bytes would go to the terminal: give -o FILE, or redirect stdout");
            }
            if let Some(path) = &output
                && let Ok(meta) = std::fs::symlink_metadata(path)
            {
                // The blob is written beside FILE and renamed onto it: only a regular
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
            let response = client
                .send(
                    home,
                    client.request(Method::GET, &format!("/v1/blobs/{}", seg(&id))),
                )
                .await?;
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
                            .context("the transfer broke off (the blob may be corrupt)")?
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
                        return Err(e.context(format!("blob {id} is corrupt or unreadable")));
                    }
                    if let Some(bar) = &bar {
                        bar.finish_and_clear();
                    }
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
                None => {
                    let mut stdout = tokio::io::stdout();
                    while let Some(chunk) = stream.try_next().await.with_context(|| {
                        format!("blob {id} is corrupt or unreadable: the transfer broke off")
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
        }
    }
    Ok(())
}
