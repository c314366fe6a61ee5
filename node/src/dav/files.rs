//! The file share: WebDAV (RFC 4918, class 1) under `/files/`, for file managers,
//! phones' file apps, rclone and davfs2. Files and folders are the records of the
//! `files` collection (docs/SCHEMA.md, "Files"); a file's bytes are a blob, streamed in
//! on PUT and out on GET (with ranges).
//!
//! Like the CardDAV/CalDAV side, this module only speaks HTTP and XML: the caller is
//! admitted by the access door, what its grant makes of the files (its folder, whether
//! it may change them) is the door's [`crate::access::files::Share`], and every read
//! and change goes through the door and is audited there. A grant limited to a folder
//! sees that folder as the share's root.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{percent_decode_str, utf8_percent_encode};
use quick_xml::escape::escape;

use super::{
    AppState, DAV, DavError, Multistatus, Prop, SEGMENT, Wanted, credentials, parse_xml,
    plain_text, property_updates, wanted_of,
};
use crate::access::files::Share;
use crate::access::{AccessError, Caller};
use crate::files::{self, Content, Entry, FileError, FilePath};

/// Where the share is served.
pub const ROOT: &str = "/files";
const DAV_HEADER: &str = "1";
const ALLOW: &str = "OPTIONS, GET, HEAD, PUT, DELETE, PROPFIND, PROPPATCH, MKCOL, COPY, MOVE";

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
    entry.blob.as_ref().map(|b| format!("\"{b}\""))
}

struct Files<'a> {
    vault: &'a AppState,
    caller: &'a Caller,
    share: Share,
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
    let files = Files {
        vault: &vault,
        caller: &caller,
        share,
    };
    let at = files.share.inside(&path)?;
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
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.trim().is_empty());
        let described = crate::blobs::Described::new(Some(at.name()), content_type)
            .map_err(DavError::BadRequest)?;
        let max = self.vault.limits.max_blob_bytes;
        let stored = self
            .vault
            .blobs
            .put(body.into_data_stream(), max)
            .await
            .map_err(|e| match e.code() {
                hearth_protocol::api::ErrorCode::TooLarge => DavError::TooLarge,
                hearth_protocol::api::ErrorCode::InsufficientStorage => {
                    DavError::InsufficientStorage
                }
                _ => DavError::BadRequest(e.to_string()),
            })?;
        let content = Content {
            blob: stored.id,
            size: stored.size,
            content_type: files::content_type(at.name(), described.content_type.as_deref()),
            modified: None,
        };
        let listing = vec![(stored.id, stored.size, described)];
        let created = self
            .door()
            .file_put(self.caller, &self.share, at, content, listing)
            .await
            .map_err(|e| file_refusal(e, StatusCode::CONFLICT))?;
        // Durable: the door answers once the commit covering its audit entry (and
        // so the file's record) is done; the bytes were pinned until then.
        drop(stored.pinned);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        let mut response = status.into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", stored.id)) {
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
        let (entry, inside) = self
            .door()
            .file_list(self.caller, &self.share, at, depth)
            .await?;
        let mut out = Multistatus::new();
        for e in std::iter::once(&entry).chain(&inside) {
            self.describe(&mut out, e, &wanted);
        }
        Ok(out.finish(None))
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
            match value(entry, &prop) {
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
        self.door()
            .file_mkdir(self.caller, &self.share, at)
            .await
            .map_err(|e| file_refusal(e, StatusCode::METHOD_NOT_ALLOWED))?;
        Ok(StatusCode::CREATED.into_response())
    }

    async fn delete(&self, at: &FilePath) -> Result<Response, DavError> {
        self.door()
            .file_remove(self.caller, &self.share, at)
            .await
            .map_err(|e| file_refusal(e, StatusCode::CONFLICT))?;
        Ok(StatusCode::NO_CONTENT.into_response())
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
        // An absolute URL or a path; its host is not checked (a proxy may rename it),
        // its path must be in the share.
        let path = match destination.find("://") {
            Some(i) => {
                let rest = &destination[i + 3..];
                rest.find('/').map_or("/", |j| &rest[j..])
            }
            None => destination,
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let to = self.share.inside(&share_path(path).map_err(|_| {
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
        Ok(if replaced {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::CREATED
        }
        .into_response())
    }
}

/// The live properties (RFC 4918 §15) the share answers; a client cannot set them.
const LIVE: [&str; 6] = [
    "resourcetype",
    "displayname",
    "getcontentlength",
    "getcontenttype",
    "getlastmodified",
    "getetag",
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
