//! The file share: WebDAV (RFC 4918, classes 1 and 2) under `/files/`, for file managers,
//! phones' file apps, rclone and davfs2. Files and folders are the records of the
//! `files` collection (docs/SCHEMA.md, "Files"); a file's bytes are a blob, streamed in
//! on PUT and out on GET (with ranges).
//!
//! Like the CardDAV/CalDAV side, this module only speaks HTTP and XML: the caller is
//! admitted by the access door, what its grant makes of the files (its folder, whether
//! it may change them) is the door's [`crate::access::files::Share`], and every read
//! and change goes through the door and is audited there. A grant limited to a folder
//! sees that folder as the share's root.
//!
//! Locks (class 2, for Finder and Windows) are this node's, in memory
//! ([`super::locks`]); they are not data, so taking one is not audited, but a LOCK of a
//! path where nothing is makes an empty file, and that is.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{percent_decode_str, utf8_percent_encode};
use quick_xml::escape::escape;

use super::locks::{self, Change, Condition, Lock, LockRefused};
use super::{
    AppState, DAV, DavError, Multistatus, Prop, SEGMENT, Wanted, credentials, parse_xml,
    plain_text, property_updates, wanted_of,
};
use crate::access::files::Share;
use crate::access::{AccessError, Caller};
use crate::files::{self, Entry, FileError, FilePath};

/// Where the share is served.
pub const ROOT: &str = "/files";
const DAV_HEADER: &str = "1, 2";
const ALLOW: &str =
    "OPTIONS, GET, HEAD, PUT, DELETE, PROPFIND, PROPPATCH, MKCOL, COPY, MOVE, LOCK, UNLOCK";

pub(super) async fn handle(State(vault): State<AppState>, request: Request) -> Response {
    let method = request.method().clone();
    match serve(vault, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(%method, error = ?e, "file share request refused");
            e.into_response()
        }
    }
}

impl From<FileError> for DavError {
    fn from(e: FileError) -> Self {
        AccessError::from(e).into()
    }
}

/// A refusal of the file tree, as WebDAV answers it (RFC 4918 §9).
fn file_refusal(e: AccessError, exists: StatusCode) -> DavError {
    match e {
        AccessError::File(FileError::Exists(m)) => {
            DavError::Status(exists, format!("{m} already exists"))
        }
        AccessError::File(
            e @ (FileError::NoParent(_)
            | FileError::NotAFolder(_)
            | FileError::IsAFolder(_)
            | FileError::Changed(_)),
        ) => DavError::Status(StatusCode::CONFLICT, e.to_string()),
        AccessError::File(FileError::Refused(m)) => DavError::Forbidden(m),
        other => other.into(),
    }
}

/// The share path a request's URL (or a Destination) names, decoded.
fn share_path(url_path: &str) -> Result<FilePath, DavError> {
    let Some(rest) = url_path.strip_prefix(ROOT) else {
        return Err(DavError::NotFound);
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(DavError::NotFound);
    }
    let mut names = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| DavError::BadRequest("a path segment is not UTF-8".into()))?;
        names.push(decoded.into_owned());
    }
    let path = FilePath::parse(&format!("/{}", names.join("/")))
        .map_err(|e| DavError::BadRequest(e.to_string()))?;
    Ok(path)
}

/// The URL of a share path: each name percent-encoded, a folder's with a `/`.
fn href_of(path: &str, folder: bool) -> String {
    let mut out = String::from(ROOT);
    for name in path.split('/').filter(|n| !n.is_empty()) {
        out.push('/');
        out.extend(utf8_percent_encode(name, SEGMENT));
    }
    if folder || out == ROOT {
        out.push('/');
    }
    out
}

fn http_date(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// A file's strong ETag: its bytes' id (a file changes only by getting other bytes).
fn etag(entry: &Entry) -> Option<String> {
    entry
        .blob
        .as_ref()
        .map(|b| crate::download::etag_of(&b.to_string()))
}

/// Entries of a folder a PROPFIND answers in one piece; a longer folder's answer is
/// sent this many entries at a time, as they are read.
const LISTED_WHOLE: usize = 256;

struct Files<'a> {
    vault: &'a AppState,
    caller: &'a Caller,
    share: Share,
    /// The lock tokens the request's `If` header names.
    submitted: Vec<String>,
}

/// The path of a URL or of an absolute path (`Destination`, a tagged `If` list):
/// its host is not checked (a proxy may rename it).
fn url_path(url: &str) -> &str {
    let path = match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => url,
    };
    path.split(['?', '#']).next().unwrap_or_default()
}

async fn serve(vault: AppState, request: Request) -> Result<Response, DavError> {
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    if method == Method::OPTIONS {
        return Ok((
            StatusCode::OK,
            [
                (header::HeaderName::from_static("dav"), DAV_HEADER),
                (header::ALLOW, ALLOW),
                (header::HeaderName::from_static("ms-author-via"), "DAV"),
            ],
        )
            .into_response());
    }
    let admitted = async {
        let path = share_path(parts.uri.path())?;
        let caller = vault.door.admit(&credentials(&parts.headers)?).await?;
        let share = vault.door.file_share(&caller)?;
        Ok::<_, DavError>((path, caller, share))
    }
    .await;
    let (path, caller, share) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            // A client that sends its first PUT before it is asked for a password
            // gets the 401 on a connection that still works: a body up to 1 MiB is
            // read (and dropped) first; a larger one closes the connection.
            let _ = axum::body::to_bytes(body, 1 << 20).await;
            return Err(e);
        }
    };
    let mut files = Files {
        vault: &vault,
        caller: &caller,
        share,
        submitted: Vec::new(),
    };
    let at = files.share.inside(&path)?;
    // RFC 4918 §10.4: the `If` header holds or the request fails; the lock tokens
    // it names are the ones this request submits.
    if let Some(header) = parts.headers.get("if") {
        let text = header
            .to_str()
            .map_err(|_| DavError::BadRequest("the If header is not text".into()))?;
        let lists = locks::parse_if(text).map_err(DavError::BadRequest)?;
        if !files.if_holds(&at, &lists).await? {
            return Err(DavError::Precondition);
        }
        files.submitted = locks::submitted(&lists);
    }
    match method.as_str() {
        // A file's bytes stream in as they arrive; nothing else takes a large body.
        "PUT" => files.put(&at, &parts.headers, body).await,
        "GET" | "HEAD" => files.get(&at, &parts.headers, method == Method::HEAD).await,
        _ => {
            let limit = 1 << 20;
            let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
                if crate::server::is_length_limit(&e) {
                    DavError::TooLarge
                } else {
                    DavError::BadRequest(format!("cannot read the request body: {e}"))
                }
            })?;
            match method.as_str() {
                "PROPFIND" => files.propfind(&at, &parts.headers, &body).await,
                "PROPPATCH" => files.proppatch(&at, &body).await,
                "MKCOL" => files.mkcol(&at, &body).await,
                "LOCK" => files.lock(&at, &parts.headers, &body).await,
                "UNLOCK" => files.unlock(&at, &parts.headers),
                "DELETE" => files.delete(&at).await,
                "COPY" | "MOVE" => {
                    files
                        .relocate(&at, &parts.headers, method.as_str() == "COPY")
                        .await
                }
                _ => Err(DavError::NotAllowed(format!(
                    "{method} is not a method of the file share"
                ))),
            }
        }
    }
}

impl Files<'_> {
    fn door(&self) -> &crate::access::Door {
        &self.vault.door
    }

    fn locks(&self) -> &locks::Locks {
        &self.vault.file_locks
    }

    /// The href of a lock's root as this share shows it.
    fn lock_href(&self, lock: &Lock) -> String {
        let folder = lock.root.is_root() || lock.infinite;
        href_of(self.share.outside(&lock.root), folder)
    }

    /// Whether one of the `If` header's lists holds: each of its conditions does (or
    /// does not, with `Not`) for the resource it names (the request's if none).
    async fn if_holds(&self, at: &FilePath, lists: &[locks::List]) -> Result<bool, DavError> {
        let mut tags: Vec<(FilePath, Option<String>)> = Vec::new();
        for list in lists {
            let path = match &list.resource {
                None => at.clone(),
                Some(url) => {
                    match share_path(url_path(url)).and_then(|p| Ok(self.share.inside(&p)?)) {
                        Ok(path) => path,
                        // A resource outside the share: no condition about it holds.
                        Err(_) => continue,
                    }
                }
            };
            let mut holds = true;
            for (not, condition) in &list.conditions {
                let matches = match condition {
                    Condition::Token(token) => self
                        .locks()
                        .covering(&path)
                        .iter()
                        .any(|l| l.token == *token),
                    Condition::Etag(tag) => {
                        let known = match tags.iter().find(|(p, _)| *p == path) {
                            Some((_, known)) => known.clone(),
                            None => {
                                let known = self.entry(&path).await?.as_ref().and_then(etag);
                                tags.push((path.clone(), known.clone()));
                                known
                            }
                        };
                        known.as_deref() == Some(tag.as_str())
                    }
                };
                if matches == *not {
                    holds = false;
                    break;
                }
            }
            if holds {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Refuses a `change` at `path` that a lock guards, unless the request submits
    /// that lock's token (423, naming the lock's root: RFC 4918 §9.10.7, §16). A lock
    /// whose grant was revoked or expired since ends here (on any device's word: the
    /// revocation may have come by sync).
    async fn unlocked(&self, path: &FilePath, change: Change) -> Result<(), DavError> {
        let me = &self.caller.grant.id;
        while let Some(lock) = self
            .locks()
            .missing_token(path, change, &self.submitted, me)
        {
            if lock.holder != *me && !self.door().grant_active(&lock.holder).await? {
                self.locks().drop_holder(&lock.holder);
                continue;
            }
            let href = self.lock_href(&lock);
            return Err(DavError::Condition(
                StatusCode::LOCKED,
                format!(
                    "<d:lock-token-submitted><d:href>{}</d:href></d:lock-token-submitted>",
                    escape(href.as_str())
                ),
                format!(
                    "{} is locked: submit its lock token",
                    self.share.outside(&lock.root)
                ),
            ));
        }
        Ok(())
    }

    fn href(&self, entry: &Entry) -> String {
        href_of(self.share.outside(&entry.path), entry.folder)
    }

    async fn entry(&self, at: &FilePath) -> Result<Option<Entry>, DavError> {
        match self
            .door()
            .file_list(self.caller, &self.share, at, false)
            .await
        {
            Ok((entry, _)) => Ok(Some(entry)),
            Err(AccessError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(
        &self,
        at: &FilePath,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response, DavError> {
        // A file: one read of its entry, audited as the read of its bytes. A folder
        // (the door says so before it audits anything): its listing.
        let entry = match self.door().file_bytes(self.caller, &self.share, at).await {
            Ok(entry) => entry,
            Err(AccessError::File(FileError::IsAFolder(_))) => {
                let (entry, inside) = self
                    .door()
                    .file_list(self.caller, &self.share, at, true)
                    .await?;
                return Ok(self.folder_text(&entry, &inside, head));
            }
            Err(e) => return Err(e.into()),
        };
        let blob = entry.blob.clone().ok_or(DavError::NotFound)?;
        let mut response = crate::download::bytes_response(
            self.vault,
            &blob,
            crate::download::Disposition::Inline,
            headers,
            Some(crate::download::Shown {
                name: Some(entry.path.name().to_owned()),
                content_type: entry.content_type.clone(),
            }),
        )
        .await
        .map_err(|e| match e.code() {
            // Bytes another device stored, still on their way here.
            hearth_protocol::api::ErrorCode::Unavailable => {
                DavError::Unavailable(e.message().to_owned())
            }
            hearth_protocol::api::ErrorCode::NotFound => DavError::NotFound,
            _ => DavError::Internal(e.message().to_owned()),
        })?;
        if let Some(at) = entry.modified
            && let Ok(value) = HeaderValue::from_str(&http_date(at))
        {
            response.headers_mut().insert(header::LAST_MODIFIED, value);
        }
        if head {
            *response.body_mut() = Body::empty();
        }
        Ok(response)
    }

    /// A folder as a person who opens it in a browser sees it: what is in it.
    fn folder_text(&self, entry: &Entry, inside: &[Entry], head: bool) -> Response {
        let mut text = format!("{}\n\n", self.share.outside(&entry.path));
        for e in inside {
            text.push_str(e.path.name());
            if e.folder {
                text.push('/');
            }
            text.push('\n');
        }
        plain_text(text, head)
    }

    async fn put(
        &self,
        at: &FilePath,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, DavError> {
        if !self.share.write {
            // Refused before a byte is stored (the door says why and audits it).
            self.door().file_changing(self.caller, &self.share)?;
        }
        if *at == self.share.root {
            return Err(DavError::NotAllowed("the share's root is a folder".into()));
        }
        // A new file is a new member of its folder, which a depth-0 lock on the folder
        // guards; only then is it worth a read to know whether the file is new.
        let change = if self.locks().on_folder_of(at) && self.entry(at).await?.is_none() {
            Change::Member
        } else {
            Change::Resource
        };
        self.unlocked(at, change).await?;
        // Conditions (RFC 4918 §10.4, RFC 9110 §13): checked before the bytes are
        // stored, and again by nothing else (a race with another writer is last-wins,
        // as for any file system).
        let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
        let if_none = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        if if_match.is_some() || if_none.is_some() {
            let existing = self.entry(at).await?;
            let tag = existing.as_ref().and_then(etag);
            let fails_match = if_match.is_some_and(|m| {
                m.trim() != "*" && !m.split(',').any(|t| Some(t.trim()) == tag.as_deref())
                    || existing.is_none()
            });
            let fails_none = if_none.is_some_and(|m| {
                existing.is_some()
                    && (m.trim() == "*" || m.split(',').any(|t| Some(t.trim()) == tag.as_deref()))
            });
            if fails_match || fails_none {
                return Err(DavError::Precondition);
            }
        }
        self.store(at, headers, body).await
    }

    /// Stores a PUT's bytes as the file at `at` (its conditions and locks checked).
    async fn store(
        &self,
        at: &FilePath,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, DavError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.trim().is_empty());
        let received = crate::owner::receive_file(
            self.vault,
            at.name(),
            body.into_data_stream(),
            content_type,
            None,
        )
        .await
        .map_err(|e| match e.code() {
            hearth_protocol::api::ErrorCode::TooLarge => DavError::TooLarge,
            hearth_protocol::api::ErrorCode::InsufficientStorage => DavError::InsufficientStorage,
            _ => DavError::BadRequest(e.message().to_owned()),
        })?;
        let blob = received.content.blob;
        let created = self
            .door()
            .file_put(
                self.caller,
                &self.share,
                at,
                received.content,
                received.listing,
            )
            .await
            .map_err(|e| file_refusal(e, StatusCode::CONFLICT))?;
        // Durable: the door answers once the commit covering its audit entry (and
        // so the file's record) is done; the bytes were pinned until then.
        drop(received.pinned);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        let mut response = status.into_response();
        if let Ok(value) = HeaderValue::from_str(&crate::download::etag_of(&blob.to_string())) {
            response.headers_mut().insert(header::ETAG, value);
        }
        Ok(response)
    }

    async fn propfind(
        &self,
        at: &FilePath,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, DavError> {
        let root = parse_xml(body)?;
        if let Some(root) = &root
            && !root.is(DAV, "propfind")
        {
            return Err(DavError::BadRequest(
                "a PROPFIND body is a DAV:propfind".into(),
            ));
        }
        let depth = match headers
            .get("depth")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        {
            Some("0") => false,
            Some("1") => true,
            // RFC 4918 §9.1: a server may refuse infinite depth, and says so.
            _ => {
                return Err(DavError::Condition(
                    StatusCode::FORBIDDEN,
                    "<d:propfind-finite-depth/>".into(),
                    "PROPFIND of infinite depth: ask with Depth: 0 or 1".into(),
                ));
            }
        };
        let wanted = wanted_of(root.as_ref());
        let (entry, mut listing) = self
            .door()
            .file_listing(self.caller, &self.share, at, depth)
            .await?;
        let mut out = Multistatus::new();
        self.describe(&mut out, &entry, &wanted);
        if listing.left() <= LISTED_WHOLE {
            while let Some(page) = self
                .door()
                .next_entries(self.caller, &mut listing, LISTED_WHOLE)
                .await?
            {
                for e in &page {
                    self.describe(&mut out, e, &wanted);
                }
            }
            return Ok(out.finish(None));
        }
        // A long folder: the answer is sent a page of entries at a time as they are
        // read, so its memory is a page's, whatever the folder holds. A failure
        // part-way ends the answer short (the client sees a broken body).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let (vault, caller, share) = (self.vault.clone(), self.caller.clone(), self.share.clone());
        let head = out.into_part();
        tokio::spawn(async move {
            let files = Files {
                vault: &vault,
                caller: &caller,
                share,
                submitted: Vec::new(),
            };
            if tx.send(Ok(Bytes::from(head))).await.is_err() {
                return;
            }
            loop {
                match files
                    .door()
                    .next_entries(files.caller, &mut listing, LISTED_WHOLE)
                    .await
                {
                    Ok(Some(page)) => {
                        let mut part = Multistatus::part();
                        for e in &page {
                            files.describe(&mut part, e, &wanted);
                        }
                        if tx.send(Ok(Bytes::from(part.into_part()))).await.is_err() {
                            // The client went away.
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if matches!(e, AccessError::Revoked | AccessError::Expired) {
                            // The grant ended meanwhile: the answer stops short.
                            tracing::info!(error = %e, "a folder's listing stopped: its grant ended");
                        } else {
                            tracing::warn!(error = %e, "a folder's listing failed part-way");
                        }
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(Bytes::from(Multistatus::end()))).await;
        });
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok((
            StatusCode::MULTI_STATUS,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            Body::from_stream(body),
        )
            .into_response())
    }

    fn describe(&self, out: &mut Multistatus, entry: &Entry, wanted: &Wanted) {
        let props: Vec<Prop> = match wanted {
            Wanted::These(props) => props.clone(),
            // allprop and propname: the live properties and those a client set.
            Wanted::All | Wanted::Names => LIVE
                .iter()
                .map(|n| Prop::new(DAV, n))
                .chain(files::props(entry).iter().filter_map(|(k, _)| {
                    let (ns, name) = k.strip_prefix('{')?.split_once('}')?;
                    Some(Prop::new(ns, name))
                }))
                .collect(),
        };
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for prop in props {
            let value = if prop.ns == DAV && prop.name == "lockdiscovery" {
                let locks = self.locks().covering(&entry.path);
                Some(
                    locks
                        .iter()
                        .map(|l| locks::activelock(l, &self.lock_href(l)))
                        .collect(),
                )
            } else if prop.ns == DAV && prop.name == "supportedlock" {
                Some(locks::SUPPORTED.to_owned())
            } else {
                value(entry, &prop)
            };
            match value {
                Some(_) if matches!(wanted, Wanted::Names) => found.push((prop, String::new())),
                Some(v) => found.push((prop, v)),
                None if matches!(wanted, Wanted::These(_)) => missing.push(prop),
                None => {}
            }
        }
        out.response(&self.href(entry), &found, &missing);
    }

    /// Properties a client keeps on a file or folder (RFC 4918 §9.2, dead
    /// properties): set and removed in the order given, all or nothing. A live
    /// property cannot be set: it is refused (403) and the others fail with it (424).
    async fn proppatch(&self, at: &FilePath, body: &[u8]) -> Result<Response, DavError> {
        let mut changes = Vec::new();
        let mut named = Vec::new();
        for (set, prop) in property_updates(body)? {
            let value = set.then(|| inner_xml(&prop));
            changes.push((clark(&prop.ns, &prop.name), value));
            named.push(Prop::new(&prop.ns, &prop.name));
        }
        let (entry, _) = self
            .door()
            .file_list(self.caller, &self.share, at, false)
            .await?;
        self.unlocked(at, Change::Resource).await?;
        let href = self.href(&entry);
        let mut out = Multistatus::new();
        let live: Vec<Prop> = named
            .iter()
            .filter(|p| p.ns == DAV && LIVE.contains(&p.name.as_str()))
            .cloned()
            .collect();
        if !live.is_empty() {
            let others: Vec<Prop> = named.into_iter().filter(|p| !live.contains(p)).collect();
            out.statuses(
                &href,
                &[(&live, "403 Forbidden"), (&others, "424 Failed Dependency")],
            );
            return Ok(out.finish(None));
        }
        self.door()
            .file_set_props(self.caller, &self.share, at, changes)
            .await
            .map_err(|e| file_refusal(e, StatusCode::CONFLICT))?;
        out.statuses(&href, &[(&named, "200 OK")]);
        Ok(out.finish(None))
    }

    async fn mkcol(&self, at: &FilePath, body: &[u8]) -> Result<Response, DavError> {
        if !body.is_empty() {
            // RFC 4918 §9.3: a body this server does not understand.
            return Err(DavError::Status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "MKCOL takes no body here".into(),
            ));
        }
        self.unlocked(at, Change::Member).await?;
        self.door()
            .file_mkdir(self.caller, &self.share, at)
            .await
            .map_err(|e| file_refusal(e, StatusCode::METHOD_NOT_ALLOWED))?;
        Ok(StatusCode::CREATED.into_response())
    }

    async fn delete(&self, at: &FilePath) -> Result<Response, DavError> {
        self.unlocked(at, Change::Tree).await?;
        self.door()
            .file_remove(self.caller, &self.share, at)
            .await
            .map_err(|e| file_refusal(e, StatusCode::CONFLICT))?;
        // The locks on what is gone go with it (RFC 4918 §9.6.1).
        self.locks().forget(at);
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// LOCK (RFC 4918 §9.10): a new lock from a `DAV:lockinfo` body, or, with no
    /// body, a refresh of the lock the `If` header names. A path where nothing is gets
    /// an empty file (§7.3).
    async fn lock(
        &self,
        at: &FilePath,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, DavError> {
        if !self.share.write {
            // A lock is for changing: a read-only grant gets none (nor keeps a
            // writer out with one).
            self.door().file_changing(self.caller, &self.share)?;
        }
        let timeout = locks::timeout_of(headers.get("timeout").and_then(|v| v.to_str().ok()));
        let holder = &self.caller.grant.id;
        let Some(info) = parse_xml(body)? else {
            if self.submitted.is_empty() {
                return Err(DavError::BadRequest(
                    "a LOCK without a body refreshes a lock: name it in an If header".into(),
                ));
            }
            let lock = self
                .locks()
                .refresh(at, &self.submitted, holder, timeout)
                .ok_or_else(|| {
                    DavError::Condition(
                        StatusCode::PRECONDITION_FAILED,
                        "<d:lock-token-matches-request-uri/>".into(),
                        "no lock of this grant named in the If header applies here".into(),
                    )
                })?;
            return Ok(self.lock_answer(&lock, StatusCode::OK, false));
        };
        if !info.is(DAV, "lockinfo") {
            return Err(DavError::BadRequest("a LOCK body is a DAV:lockinfo".into()));
        }
        let shared = match info.child(DAV, "lockscope") {
            Some(scope) if scope.child(DAV, "exclusive").is_some() => false,
            Some(scope) if scope.child(DAV, "shared").is_some() => true,
            _ => {
                return Err(DavError::BadRequest(
                    "a lockinfo names its lockscope: exclusive or shared".into(),
                ));
            }
        };
        if info
            .child(DAV, "locktype")
            .is_none_or(|t| t.child(DAV, "write").is_none())
        {
            return Err(DavError::BadRequest(
                "only write locks are kept (DAV:locktype DAV:write)".into(),
            ));
        }
        let owner = info.child(DAV, "owner").map(inner_xml).unwrap_or_default();
        if owner.len() > locks::MAX_OWNER_BYTES {
            return Err(DavError::BadRequest(format!(
                "a lock's owner is at most {} bytes",
                locks::MAX_OWNER_BYTES
            )));
        }
        let infinite = match headers
            .get("depth")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        {
            None => true,
            Some(d) if d.eq_ignore_ascii_case("infinity") => true,
            Some("0") => false,
            Some(other) => {
                return Err(DavError::BadRequest(format!(
                    "a LOCK's Depth is 0 or infinity, not {other}"
                )));
            }
        };
        let exists = self.entry(at).await?.is_some();
        if !exists {
            self.unlocked(at, Change::Member).await?;
        }
        let lock = loop {
            match self
                .locks()
                .take(at, infinite, shared, owner.clone(), holder, timeout)
            {
                Ok(lock) => break lock,
                // In the way, but of a grant that has ended: it goes.
                Err(LockRefused::Conflict(other))
                    if other.holder != *holder
                        && !self.door().grant_active(&other.holder).await? =>
                {
                    self.locks().drop_holder(&other.holder);
                }
                Err(LockRefused::Conflict(other)) => {
                    return Err(DavError::Condition(
                        StatusCode::LOCKED,
                        format!(
                            "<d:no-conflicting-lock><d:href>{}</d:href></d:no-conflicting-lock>",
                            escape(self.lock_href(&other).as_str())
                        ),
                        format!(
                            "{} holds a lock in the way",
                            self.share.outside(&other.root)
                        ),
                    ));
                }
                Err(LockRefused::TooMany(m)) => return Err(DavError::TooMany(m)),
            }
        };
        if exists {
            return Ok(self.lock_answer(&lock, StatusCode::OK, true));
        }
        // Nothing here yet: an empty file, locked. If it cannot be made, no lock.
        let made = self.store(at, &HeaderMap::new(), Body::empty()).await;
        if let Err(e) = made {
            let _ = self.locks().release(at, &lock.token, holder);
            return Err(e);
        }
        Ok(self.lock_answer(&lock, StatusCode::CREATED, true))
    }

    /// A LOCK's answer: the lock in `DAV:lockdiscovery`, and its token in
    /// `Lock-Token` when it is new.
    fn lock_answer(&self, lock: &Lock, status: StatusCode, new: bool) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:prop xmlns:d=\"DAV:\"><d:lockdiscovery>{}</d:lockdiscovery></d:prop>\n",
            locks::activelock(lock, &self.lock_href(lock))
        );
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            body,
        )
            .into_response();
        if new && let Ok(value) = HeaderValue::from_str(&format!("<{}>", lock.token)) {
            response
                .headers_mut()
                .insert(header::HeaderName::from_static("lock-token"), value);
        }
        response
    }

    /// UNLOCK (RFC 4918 §9.11): the lock named in `Lock-Token`, if it applies here
    /// and this grant holds it.
    fn unlock(&self, at: &FilePath, headers: &HeaderMap) -> Result<Response, DavError> {
        let token = headers
            .get("lock-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .and_then(|t| t.strip_prefix('<')?.strip_suffix('>'))
            .ok_or_else(|| {
                DavError::BadRequest("UNLOCK names its lock: Lock-Token: <token>".into())
            })?;
        match self.locks().release(at, token, &self.caller.grant.id) {
            Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(true) => Err(DavError::Forbidden("that lock is another grant's".into())),
            Err(false) => Err(DavError::Condition(
                StatusCode::CONFLICT,
                "<d:lock-token-matches-request-uri/>".into(),
                "no lock with that token applies here".into(),
            )),
        }
    }

    async fn relocate(
        &self,
        from: &FilePath,
        headers: &HeaderMap,
        copy: bool,
    ) -> Result<Response, DavError> {
        let destination = headers
            .get("destination")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| DavError::BadRequest("COPY and MOVE need a Destination".into()))?;
        // An absolute URL or a path; its path must be in the share.
        let to = self
            .share
            .inside(&share_path(url_path(destination)).map_err(|_| {
                DavError::Status(
                    StatusCode::BAD_GATEWAY,
                    "the Destination is not in this file share".into(),
                )
            })?)?;
        if to == *from {
            return Err(DavError::Forbidden("the Destination is the source".into()));
        }
        let overwrite = !matches!(
            headers
                .get("overwrite")
                .and_then(|v| v.to_str().ok())
                .map(str::trim),
            Some("F" | "f")
        );
        let shallow = headers
            .get("depth")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|d| d.trim() == "0");
        if !copy && shallow {
            return Err(DavError::BadRequest(
                "a MOVE of a folder moves all it holds (Depth: infinity)".into(),
            ));
        }
        // What is moved away, and what a copy or move replaces, must be free of locks
        // the request does not submit. Locks do not follow a copy or a move.
        if !copy {
            self.unlocked(from, Change::Tree).await?;
        }
        self.unlocked(&to, Change::Tree).await?;
        let replaced = if copy && shallow && self.entry(from).await?.is_some_and(|e| e.folder) {
            // COPY Depth 0 of a folder: the folder alone (RFC 4918 §9.8.3).
            let there = self.entry(&to).await?;
            if there.is_some() {
                if !overwrite {
                    return Err(DavError::Precondition);
                }
                self.door()
                    .file_remove(self.caller, &self.share, &to)
                    .await
                    .map_err(|e| file_refusal(e, StatusCode::CONFLICT))?;
            }
            self.door()
                .file_mkdir(self.caller, &self.share, &to)
                .await
                .map_err(|e| file_refusal(e, StatusCode::CONFLICT))?;
            there.is_some()
        } else {
            self.door()
                .file_relocate(self.caller, &self.share, from, &to, overwrite, copy)
                .await
                .map_err(|e| file_refusal(e, StatusCode::PRECONDITION_FAILED))?
        };
        if !copy {
            self.locks().forget(from);
        }
        Ok(if replaced {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::CREATED
        }
        .into_response())
    }
}

/// The live properties (RFC 4918 §15) the share answers; a client cannot set them.
const LIVE: [&str; 8] = [
    "resourcetype",
    "displayname",
    "getcontentlength",
    "getcontenttype",
    "getlastmodified",
    "getetag",
    "lockdiscovery",
    "supportedlock",
];

/// A property's name in Clark notation: `{namespace}name`.
fn clark(ns: &str, name: &str) -> String {
    format!("{{{ns}}}{name}")
}

/// What an element holds, as XML: its text, then its children, each with its own
/// namespace declared (prefixes are the client's business, not kept).
fn inner_xml(element: &super::Element) -> String {
    let mut out = escape(element.text.as_str()).into_owned();
    for child in &element.children {
        out.push('<');
        out.push_str(&child.name);
        out.push_str(" xmlns=\"");
        out.push_str(&escape(child.ns.as_str()));
        out.push('"');
        for (name, value) in &child.attributes {
            if name == "xmlns" || name.starts_with("xmlns:") {
                continue;
            }
            out.push_str(&format!(" {name}=\"{}\"", escape(value.as_str())));
        }
        let inner = inner_xml(child);
        if inner.is_empty() {
            out.push_str("/>");
        } else {
            out.push('>');
            out.push_str(&inner);
            out.push_str("</");
            out.push_str(&child.name);
            out.push('>');
        }
    }
    out
}

/// A property's value (inner XML), or `None` if the entry has none: a live one, or
/// one a client set.
fn value(entry: &Entry, prop: &Prop) -> Option<String> {
    if prop.ns != DAV || !LIVE.contains(&prop.name.as_str()) {
        let key = clark(&prop.ns, &prop.name);
        return files::props(entry)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v);
    }
    Some(match prop.name.as_str() {
        "resourcetype" if entry.folder => "<d:collection/>".into(),
        "resourcetype" => String::new(),
        "displayname" => escape(entry.path.name()).into_owned(),
        "getcontentlength" if !entry.folder => entry.size.to_string(),
        "getcontenttype" if !entry.folder => escape(
            entry
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        )
        .into_owned(),
        "getlastmodified" => http_date(entry.modified?),
        "getetag" => escape(&etag(entry)?).into_owned(),
        _ => return None,
    })
}
