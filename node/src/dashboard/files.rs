//! Files, photos and search for people: a folder's files with thumbnails, upload (a
//! plain form, no script), new folder and remove; every photo as a gallery by month;
//! one search box for everything.

use super::*;
use crate::files::{Entry, FilePath};

/// The largest upload through the dashboard's form (the file share and the API take
/// larger files).
pub(super) const MAX_FILE_UPLOAD: usize = 1 << 30;

pub(super) struct FileRow {
    name: String,
    path: String,
    folder: bool,
    size: String,
    modified: String,
    /// A picture's blob, for its thumbnail.
    thumbnail: Option<String>,
    /// What its bytes said, in words ("Canon EOS R5, 2026-07-01").
    about: String,
}

#[derive(Template)]
#[template(path = "files.html")]
pub(super) struct FilesPage {
    csrf: String,
    path: String,
    /// The folders from the root down, each (name, path).
    crumbs: Vec<(String, String)>,
    rows: Vec<FileRow>,
}

#[derive(serde::Deserialize, Default)]
pub(super) struct AtPath {
    #[serde(default)]
    path: String,
}

/// A picture the thumbnailer reads, by its content type.
fn is_picture(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| crate::thumbnails::PICTURES.contains(&t))
}

fn about(entry: &Entry) -> String {
    let Some(meta) = entry.record.get("meta") else {
        return String::new();
    };
    let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_owned);
    let parts: Vec<String> = match meta.get("kind").and_then(Value::as_str) {
        Some("photo") => [
            text("camera"),
            text("taken").map(|t| t.chars().take(10).collect()),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Some("music") => [text("artist"), text("title"), text("album")]
            .into_iter()
            .flatten()
            .collect(),
        _ => Vec::new(),
    };
    parts.join(", ")
}

fn row(entry: &Entry) -> FileRow {
    FileRow {
        name: entry.path.name().to_owned(),
        path: entry.path.to_string(),
        folder: entry.folder,
        size: if entry.folder {
            String::new()
        } else {
            bytes(entry.size)
        },
        modified: entry
            .modified
            .map(|m| local_time(m.max(0) as u64))
            .unwrap_or_default(),
        thumbnail: is_picture(entry.content_type.as_deref())
            .then(|| entry.blob.clone())
            .flatten(),
        about: about(entry),
    }
}

fn file_path(text: &str) -> Result<FilePath, Response> {
    let text = if text.is_empty() { "/" } else { text };
    FilePath::parse(text).map_err(|e| {
        message(
            StatusCode::BAD_REQUEST,
            "No such folder",
            &format!("{text:?} is not a path of your files: {e}"),
        )
    })
}

/// `GET /data/files?path=/Photos`: a folder.
pub(super) async fn files_page(
    State(vault): State<AppState>,
    Query(at): Query<AtPath>,
    visit: Visit,
) -> Response {
    let path = match file_path(&at.path) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let listed = owner::blocking(&vault, move |v| {
        let Some(folder) = crate::files::stat(&v.collections, &path)? else {
            // The root before anything was stored: empty.
            if path.is_root() {
                return Ok(None);
            }
            return Err(ApiError::new(
                hearth_protocol::api::ErrorCode::NotFound,
                format!("there is no folder {path}"),
            ));
        };
        if !folder.folder {
            return Err(ApiError::new(
                hearth_protocol::api::ErrorCode::BadRequest,
                format!("{path} is a file, not a folder"),
            ));
        }
        Ok(Some(crate::files::list(&v.collections, &folder)?))
    })
    .await;
    let entries = match listed {
        Ok(entries) => entries.unwrap_or_default(),
        Err(e) => return failed(e),
    };
    let mut rows: Vec<FileRow> = entries.iter().map(row).collect();
    // Folders first, then by name.
    rows.sort_by(|a, b| b.folder.cmp(&a.folder).then_with(|| a.name.cmp(&b.name)));
    let path = if at.path.is_empty() {
        "/".to_owned()
    } else {
        at.path
    };
    let mut crumbs = vec![("Files".to_owned(), "/".to_owned())];
    let mut so_far = String::new();
    for name in path.split('/').filter(|n| !n.is_empty()) {
        so_far.push('/');
        so_far.push_str(name);
        crumbs.push((name.to_owned(), so_far.clone()));
    }
    page(&FilesPage {
        csrf: visit.csrf,
        path,
        crumbs,
        rows,
    })
}

/// `GET /data/files/get?path=…`: a file's bytes, as a download under its own name.
pub(super) async fn download_file(
    State(vault): State<AppState>,
    Query(at): Query<AtPath>,
    _visit: Visit,
    headers: HeaderMap,
) -> Response {
    let path = match file_path(&at.path) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let entry = match owner::blocking(&vault, move |v| {
        Ok(crate::files::stat(&v.collections, &path)?)
    })
    .await
    {
        Ok(Some(entry)) if !entry.folder => entry,
        Ok(_) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such file",
                "It is not there (any more).",
            );
        }
        Err(e) => return failed(e),
    };
    let Some(blob) = entry.blob.clone() else {
        return message(StatusCode::NOT_FOUND, "No such file", "It has no bytes.");
    };
    match crate::download::bytes_response(
        &vault,
        &blob,
        crate::download::Disposition::Attachment,
        &headers,
        Some(crate::download::Shown {
            name: Some(entry.path.name().to_owned()),
            content_type: entry.content_type.clone(),
        }),
    )
    .await
    {
        Ok(response) => response,
        Err(e) => failed(e),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ThumbnailAsk {
    size: Option<u32>,
}

/// `GET /data/thumbnail/{blob}?size=N`: a picture made small, for the pages' `<img>`.
pub(super) async fn thumbnail(
    State(vault): State<AppState>,
    Path(id): Path<String>,
    Query(ask): Query<ThumbnailAsk>,
    _visit: Visit,
) -> Response {
    let blob = match hearth_protocol::BlobId::parse(&id) {
        Ok(b) => b,
        Err(e) => return message(StatusCode::BAD_REQUEST, "No such picture", &e.to_string()),
    };
    let size = match crate::thumbnails::size_for(ask.size) {
        Ok(s) => s,
        Err(m) => return message(StatusCode::BAD_REQUEST, "No such size", &m),
    };
    match crate::thumbnails::thumbnail(&vault, blob, size).await {
        Ok(jpeg) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                // A thumbnail changes only with its picture, whose id is in the URL.
                (header::CACHE_CONTROL, "private, max-age=86400"),
            ],
            jpeg,
        )
            .into_response(),
        Err(e) => failed(e.into()),
    }
}

/// `POST /data/files/upload` (multipart: `csrf`, `path`, then one or more `file`s):
/// each file streamed into the vault in the folder. The CSRF token is checked before
/// a byte of a file is read.
pub(super) async fn upload(
    State(vault): State<AppState>,
    headers: HeaderMap,
    mut multipart: axum::extract::Multipart,
) -> Response {
    let visit = match super::visit(&vault, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let refused = |text: String| message(StatusCode::BAD_REQUEST, "Not stored", &text);
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut checked = None;
    let mut stored = 0;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                return refused(format!(
                    "The upload broke off or could not be read ({e}); {stored} file(s) were stored before it."
                ));
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name != "file" {
            match field.text().await {
                Ok(text) => {
                    fields.insert(name, text);
                }
                Err(e) => return refused(format!("A form field could not be read: {e}")),
            }
            continue;
        }
        // The form's fields come before its files: the token and the folder first.
        let folder = match &checked {
            Some(folder) => FilePath::clone(folder),
            None => {
                if let Err(r) = csrf_checked(visit.clone(), &fields) {
                    return r;
                }
                let folder = match file_path(fields.get("path").map_or("/", String::as_str)) {
                    Ok(f) => f,
                    Err(r) => return r,
                };
                checked = Some(folder.clone());
                folder
            }
        };
        let file_name = field.file_name().unwrap_or_default().to_owned();
        if file_name.is_empty() {
            // A form sent with no file chosen.
            continue;
        }
        let at = match folder.join(&file_name) {
            Ok(at) => at,
            Err(e) => return refused(format!("{file_name:?} cannot be a file's name here: {e}")),
        };
        let content_type = field.content_type().map(str::to_owned);
        if let Err(e) = owner::store_file(
            &vault,
            at,
            Box::pin(field),
            content_type
                .as_deref()
                .filter(|t| *t != "application/octet-stream"),
            None,
            false,
        )
        .await
        {
            return failed(e);
        }
        stored += 1;
    }
    if checked.is_none() {
        // No file: still a form of this dashboard or nothing.
        if let Err(r) = csrf_checked(visit, &fields) {
            return r;
        }
        return refused("Choose a file to upload first.".into());
    }
    let folder = checked.map(|f| f.to_string()).unwrap_or_default();
    Redirect::to(&format!("/data/files?path={}", query_value(&folder))).into_response()
}

/// `POST /data/files/mkdir` (`path`: the folder it goes in, `name`).
pub(super) async fn make_folder(
    State(vault): State<AppState>,
    Posted { form, .. }: Posted,
) -> Response {
    let folder = match file_path(form.get("path").map_or("/", String::as_str)) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let name = form.get("name").map(|n| n.trim()).unwrap_or_default();
    let at = match folder.join(name) {
        Ok(at) => at,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                "No folder made",
                &format!("{name:?} cannot be a folder's name: {e}"),
            );
        }
    };
    match owner::make_folder(&vault, at, false).await {
        Ok(_) => Redirect::to(&format!(
            "/data/files?path={}",
            query_value(folder.as_str())
        ))
        .into_response(),
        Err(e) => failed(e),
    }
}

/// `POST /data/files/remove` (`path`): a file, or a folder with all it holds.
pub(super) async fn remove(State(vault): State<AppState>, Posted { form, .. }: Posted) -> Response {
    let path = match file_path(form.get("path").map_or("", String::as_str)) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let folder = path.parent().unwrap_or_else(FilePath::root);
    match owner::remove_file(&vault, path).await {
        Ok(_) => Redirect::to(&format!(
            "/data/files?path={}",
            query_value(folder.as_str())
        ))
        .into_response(),
        Err(e) => failed(e),
    }
}

fn query_value(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(super) struct Photo {
    name: String,
    path: String,
    blob: String,
    about: String,
}

#[derive(Template)]
#[template(path = "photos.html")]
pub(super) struct PhotosPage {
    csrf: String,
    /// By month, newest first: ("2026-07", photos).
    months: Vec<(String, Vec<Photo>)>,
    total: usize,
    shown: usize,
}

/// At most this many photos on the gallery page (the newest).
const PHOTOS_SHOWN: usize = 600;

/// `GET /data/photos`: every picture among the files, by the month it was taken (else
/// last changed), newest first.
pub(super) async fn photos_page(State(vault): State<AppState>, visit: Visit) -> Response {
    let found = owner::blocking(&vault, |v| {
        let name = crate::files::collection();
        let mut photos: Vec<(String, Photo)> = Vec::new();
        v.collections.page(&name, None, usize::MAX, |record| {
            let Value::Object(record) = record else {
                return None;
            };
            let text = |k: &str| record.get(k).and_then(Value::as_str);
            if text("kind") != Some("file") || !is_picture(text("type")) {
                return None;
            }
            let (Some(path), Some(blob)) = (text("path"), text("blob")) else {
                return None;
            };
            let when = record
                .get("meta")
                .and_then(|m| m.get("taken"))
                .and_then(Value::as_str)
                .or(text("modified"))
                .unwrap_or_default()
                .to_owned();
            let meta = record.get("meta");
            let camera = meta
                .and_then(|m| m.get("camera"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            photos.push((
                when.clone(),
                Photo {
                    name: path.rsplit('/').next().unwrap_or(path).to_owned(),
                    path: path.to_owned(),
                    blob: blob.to_owned(),
                    about: [when.chars().take(10).collect::<String>(), camera.to_owned()]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            ));
            None
        })?;
        Ok(photos)
    })
    .await;
    let mut photos = match found {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let total = photos.len();
    photos.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.path.cmp(&b.1.path)));
    photos.truncate(PHOTOS_SHOWN);
    let shown = photos.len();
    let mut months: Vec<(String, Vec<Photo>)> = Vec::new();
    for (when, photo) in photos {
        let month: String = when.chars().take(7).collect();
        let month = if month.is_empty() {
            "undated".to_owned()
        } else {
            month
        };
        match months.last_mut() {
            Some((m, list)) if *m == month => list.push(photo),
            _ => months.push((month, vec![photo])),
        }
    }
    page(&PhotosPage {
        csrf: visit.csrf,
        months,
        total,
        shown,
    })
}

pub(super) struct Found {
    title: String,
    /// Where it is shown: a record's page, or a file's folder.
    link: String,
    place: String,
    fields: String,
}

#[derive(Template)]
#[template(path = "search.html")]
pub(super) struct SearchPage {
    csrf: String,
    q: String,
    found: Vec<Found>,
    error: String,
}

#[derive(serde::Deserialize, Default)]
pub(super) struct SearchAsk {
    #[serde(default)]
    q: String,
}

/// `GET /data/search?q=…`: everything holding the words.
pub(super) async fn search_page(
    State(vault): State<AppState>,
    Query(ask): Query<SearchAsk>,
    visit: Visit,
) -> Response {
    let q = ask.q.clone();
    let result = owner::blocking(&vault, move |v| {
        if q.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(v.search.find(&v.collections, &q, &|_| true, 100)?)
    })
    .await;
    let (hits, error) = match result {
        Ok(hits) => (hits, String::new()),
        Err(e) if e.status() == StatusCode::BAD_REQUEST => (Vec::new(), e.message().to_owned()),
        Err(e) => return failed(e),
    };
    let files = crate::files::collection();
    let found = hits
        .into_iter()
        .map(|h| {
            let title = h.title.clone().unwrap_or_else(|| h.id.clone());
            let (link, place) = if h.collection == files.as_str() {
                let folder = title
                    .rsplit_once('/')
                    .map(|(f, _)| if f.is_empty() { "/" } else { f })
                    .unwrap_or("/")
                    .to_owned();
                (
                    format!("/data/files?path={}", query_value(&folder)),
                    format!("files, in {folder}"),
                )
            } else {
                (
                    format!("/data/{}/{}", h.collection, query_value(&h.id)),
                    h.collection.clone(),
                )
            };
            Found {
                title,
                link,
                place,
                fields: h.fields.join(", "),
            }
        })
        .collect();
    page(&SearchPage {
        csrf: visit.csrf,
        q: ask.q,
        found,
        error,
    })
}
