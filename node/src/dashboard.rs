//! The web dashboard at `/` of the API listener: server-rendered pages (askama
//! templates in `node/templates/`, compiled into the binary), plain HTML forms, no
//! script at all — so the Content-Security-Policy forbids every script.
//!
//! Security: `hearth dashboard` asks the owner API (`POST /v1/dashboard/login`) for a
//! one-time login link (`/login/CODE`, valid 10 minutes, useless after first use). It
//! sets a session cookie (HttpOnly, SameSite=Strict, 12 hours) naming a session held in
//! memory; the owner token never reaches a page. Every state-changing request is a POST
//! that carries the session's CSRF token (a hidden field) and is refused without it.
//! Logout ends the session on the server. The `Host` allowlist of the API (DNS
//! rebinding) applies here as everywhere. Pages read and change the vault through the
//! same functions as the owner API.

// An error here is the page to answer with, made once per request: boxing it gains nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hearth_protocol::api::{AuditEntry, DeviceInfo, GrantInfo, GrantRequest, GrantStatus};
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use rand::RngCore;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::Vault;
use crate::owner::{self, Error as ApiError};

type AppState = Arc<Vault>;

/// How long a login link works.
const LINK_TTL_SECS: u64 = 600;
/// How long a session lasts.
const SESSION_TTL_SECS: u64 = 12 * 3600;
/// At most this many live sessions and unused links; the oldest go first.
const MAX_SESSIONS: usize = 64;
const COOKIE: &str = "hearth_session";
/// The largest .vcf or .ics file the import form takes.
const MAX_UPLOAD: usize = 64 * 1024 * 1024;
/// A device not seen for this long is worth a warning.
const QUIET_DEVICE_SECS: u64 = 14 * 24 * 3600;
/// A grant expiring this soon is worth a warning.
const EXPIRING_SECS: u64 = 3 * 24 * 3600;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const STYLE: &str = include_str!("../templates/hearth.css");

/// Login links and sessions, in memory only: a restart logs everyone out.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<SessionsInner>,
    /// The last verification of the audit log: when, and what it found. The overview
    /// shows a failure without walking the whole log on every page view.
    verified: Mutex<Option<(u64, Verified)>>,
}

#[derive(Default)]
struct SessionsInner {
    /// BLAKE3 of a link code → when it stops working.
    links: HashMap<[u8; 32], u64>,
    /// BLAKE3 of a session id → the session.
    sessions: HashMap<[u8; 32], Session>,
}

#[derive(Clone)]
struct Session {
    csrf: String,
    expires: u64,
}

fn random_code() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase()
}

fn hash(code: &str) -> [u8; 32] {
    *blake3::hash(code.as_bytes()).as_bytes()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionsInner> {
        // A panic while holding this lock leaves maps that are still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new one-time login code.
    pub fn new_link(&self) -> String {
        let code = random_code();
        let now = crate::clock::now_unix();
        let mut inner = self.lock();
        inner.links.retain(|_, expires| *expires > now);
        if inner.links.len() >= MAX_SESSIONS
            && let Some(oldest) = inner.links.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            inner.links.remove(&oldest);
        }
        inner.links.insert(hash(&code), now + LINK_TTL_SECS);
        code
    }

    /// Trades a login code (once) for a new session id.
    fn redeem(&self, code: &str) -> Option<String> {
        let now = crate::clock::now_unix();
        let mut inner = self.lock();
        let expires = inner.links.remove(&hash(code))?;
        if expires <= now {
            return None;
        }
        inner.sessions.retain(|_, s| s.expires > now);
        if inner.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            inner.sessions.remove(&oldest);
        }
        let id = random_code();
        inner.sessions.insert(
            hash(&id),
            Session {
                csrf: random_code(),
                expires: now + SESSION_TTL_SECS,
            },
        );
        Some(id)
    }

    fn session(&self, id: &str) -> Option<Session> {
        let now = crate::clock::now_unix();
        let inner = self.lock();
        inner
            .sessions
            .get(&hash(id))
            .filter(|s| s.expires > now)
            .cloned()
    }

    fn end(&self, id: &str) {
        self.lock().sessions.remove(&hash(id));
    }
}

/// The dashboard's routes (merged into the API router, behind its Host check).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/assets/hearth.css", get(style))
        .route("/login/{code}", get(login))
        .route("/logout", post(logout))
        .route("/devices", get(devices_page))
        .route("/devices/pair", post(pair))
        .route("/devices/{peer}/remove", post(remove_device))
        .route("/devices/{peer}/rename", post(rename_device))
        .route("/grants", get(grants_page).post(create_grant))
        .route("/grants/preview", post(preview_grant))
        .route("/grants/{id}/revoke", post(revoke_grant))
        .route("/audit", get(audit_page))
        .route("/audit/verify", post(verify_audit))
        .route("/data", get(data_page))
        .route(
            "/data/import",
            post(import).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/data/blobs/{id}", get(download_blob))
        .route("/data/{collection}", get(collection_page))
        .route(
            "/data/{collection}/{id}",
            get(record_page).post(save_record),
        )
        .route("/data/{collection}/{id}/delete", post(delete_record))
        .route("/data/{collection}/{id}/resolve", post(resolve_conflict))
        .layer(middleware::from_fn(headers))
}

/// `POST /v1/dashboard/login` (owner): a one-time login link.
#[utoipa::path(
    post,
    path = "/v1/dashboard/login",
    tag = "owner",
    summary = "A one-time login link to the web dashboard (10 minutes, works once)",
    responses((status = 200, description = "{\"url\"}", body = serde_json::Value))
)]
pub async fn login_link(State(vault): State<AppState>) -> axum::Json<Value> {
    let code = vault.dashboard.new_link();
    // An API bound to every address (`--api-public`) is reached on loopback here.
    let mut addr = vault.api_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    axum::Json(serde_json::json!({
        "url": format!("http://{addr}/login/{code}"),
    }))
}

/// Security headers on every dashboard answer.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

// ---- Sessions and CSRF ----

/// A logged-in request: its session id and CSRF token.
struct Visit {
    id: String,
    csrf: String,
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The request's session, or the "log in first" page.
fn visit(vault: &Vault, headers: &HeaderMap) -> Result<Visit, Response> {
    let id = cookie(headers).ok_or_else(login_needed)?;
    let session = vault.dashboard.session(&id).ok_or_else(login_needed)?;
    Ok(Visit {
        id,
        csrf: session.csrf,
    })
}

/// The session of a state-changing request whose form carries the session's CSRF
/// token; anything else is refused and changes nothing.
fn posted(
    vault: &Vault,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Visit, Response> {
    csrf_checked(visit(vault, headers)?, form)
}

/// `visit`, if `form` carries its session's CSRF token.
fn csrf_checked(visit: Visit, form: &HashMap<String, String>) -> Result<Visit, Response> {
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    if !bool::from(sent.as_bytes().ct_eq(visit.csrf.as_bytes())) {
        return Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form did not come from this dashboard (its CSRF token is missing or wrong). Nothing was changed. Reload the page and try again.",
        ));
    }
    Ok(visit)
}

/// A page request with a live session (else the "log in first" page).
impl axum::extract::FromRequestParts<AppState> for Visit {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        vault: &AppState,
    ) -> Result<Self, Response> {
        visit(vault, &parts.headers)
    }
}

/// A form POST with a live session and the session's CSRF token, and its fields.
struct Posted {
    visit: Visit,
    form: HashMap<String, String>,
}

impl axum::extract::FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, vault: &AppState) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let Form(form) = Form::<HashMap<String, String>>::from_request(request, vault)
            .await
            .map_err(IntoResponse::into_response)?;
        let visit = posted(vault, &headers, &form)?;
        Ok(Posted { visit, form })
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    text: &'a str,
    id: &'a str,
}

fn page(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let mut response = page(&MessagePage {
        title,
        text,
        id: "message",
    });
    *response.status_mut() = status;
    response
}

fn login_needed() -> Response {
    let mut response = page(&MessagePage {
        title: "Log in",
        text: "Run `hearth dashboard` on this device and open the link it prints. Each link works once.",
        id: "login-needed",
    });
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

/// An error from the vault, as a page with the error's own status (a request the
/// vault refused is `4xx`, a failure of the node or its disk `5xx`).
fn failed(e: ApiError) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(
            status = status.as_u16(),
            message = e.message(),
            "a dashboard request failed"
        );
    }
    message(status, "That did not work", e.message())
}

async fn login(State(vault): State<AppState>, Path(code): Path<String>) -> Response {
    let Some(id) = vault.dashboard.redeem(&code) else {
        let mut response = page(&MessagePage {
            title: "This link does not work",
            text: "A login link works once and for 10 minutes. Run `hearth dashboard` again for a new one.",
            id: "login-failed",
        });
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    };
    let cookie =
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_TTL_SECS}");
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(vault): State<AppState>, Posted { visit, .. }: Posted) -> Response {
    vault.dashboard.end(&visit.id);
    let mut response = message(
        StatusCode::OK,
        "Logged out",
        "The session is over. Run `hearth dashboard` for a new login link.",
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("hearth_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

// ---- Formatting ----

fn local_time(unix: u64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(unix as i64, 0) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%Y-%m-%d %H:%M").to_string()
        }
        chrono::LocalResult::None => unix.to_string(),
    }
}

fn ago(unix: Option<u64>, now: u64) -> String {
    let Some(unix) = unix else {
        return "never".into();
    };
    let secs = now.saturating_sub(unix);
    match secs {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

// ---- Overview and devices ----

struct DeviceRow {
    id: String,
    name: String,
    state: &'static str,
    last_sync: String,
    this_device: bool,
    removed: bool,
}

fn device_rows(devices: &[DeviceInfo], now: u64) -> Vec<DeviceRow> {
    devices
        .iter()
        .map(|d| DeviceRow {
            id: d.id.clone(),
            name: d.name.clone(),
            state: if d.removed_at.is_some() {
                "removed"
            } else if d.this_device || d.online {
                "online"
            } else {
                "offline"
            },
            last_sync: if d.this_device {
                "this device".into()
            } else {
                ago(d.last_sync, now)
            },
            this_device: d.this_device,
            removed: d.removed_at.is_some(),
        })
        .collect()
}

struct Lan {
    url: String,
    fingerprint: String,
}

struct Invite {
    code: String,
    qr: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    csrf: String,
    peer_id: String,
    version: String,
    api_addr: String,
    lan: Option<Lan>,
    devices: Vec<DeviceRow>,
    collections: usize,
    records: u64,
    blobs: usize,
    blob_bytes: String,
    arriving: Vec<ArrivingRow>,
    warnings: Vec<String>,
}

struct ArrivingRow {
    id: String,
    received: u64,
    size: u64,
    words: String,
}

async fn overview(State(vault): State<AppState>, visit: Visit) -> Response {
    let status = match owner::status_of(&vault).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let now = crate::clock::now_unix();
    let mut warnings = Vec::new();
    if let Some(at) = status.removed_at {
        warnings.push(format!(
            "This device was removed from the vault on {}: it no longer syncs with the other devices. Its data stays here.",
            local_time(at)
        ));
    }
    for d in &status.devices {
        if d.this_device || d.removed_at.is_some() || d.online {
            continue;
        }
        let seen = d.last_sync.unwrap_or(d.added_at);
        if now.saturating_sub(seen) > QUIET_DEVICE_SECS {
            warnings.push(format!(
                "Device {} has not synced for {}.",
                d.name,
                ago(Some(seen), now)
            ));
        }
    }
    if let Ok(grants) = owner::grants(&vault).await {
        for g in grants.iter().filter(|g| g.status == GrantStatus::Active) {
            if let Some(at) = g.expires_at
                && at.saturating_sub(now) < EXPIRING_SECS
            {
                warnings.push(format!(
                    "The grant for {} expires {}.",
                    g.service,
                    local_time(at)
                ));
            }
        }
    }
    let verified = match vault.dashboard.last_verified() {
        Some(recent) => recent,
        None => verify(&vault).await,
    };
    if !verified.ok {
        warnings.push(verified.text);
    }
    let (blobs, blob_bytes) = match vault.blobs.list(&vault.collections) {
        Ok(list) => (list.len(), list.iter().map(|b| b.size).sum::<u64>()),
        Err(_) => (status.blobs as usize, 0),
    };
    page(&OverviewPage {
        csrf: visit.csrf,
        peer_id: status.peer_id,
        version: status.version,
        api_addr: status.api_addr,
        lan: status.lan.map(|l| Lan {
            url: l.url,
            fingerprint: l.fingerprint,
        }),
        devices: device_rows(&status.devices, now),
        collections: status.collections.len(),
        records: status.collections.iter().map(|c| c.records).sum(),
        blobs,
        blob_bytes: bytes(blob_bytes),
        arriving: status
            .arriving
            .iter()
            .map(|a| ArrivingRow {
                id: a.id.clone(),
                received: a.received,
                size: a.size.max(1),
                words: format!("{} of {}", bytes(a.received), bytes(a.size)),
            })
            .collect(),
        warnings,
    })
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    csrf: String,
    devices: Vec<DeviceRow>,
    invite: Option<Invite>,
    mesh: bool,
}

async fn devices_page(State(vault): State<AppState>, visit: Visit) -> Response {
    render_devices(&vault, visit, None).await
}

async fn render_devices(vault: &AppState, visit: Visit, invite: Option<Invite>) -> Response {
    let devices = match owner::devices_view(vault).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    page(&DevicesPage {
        csrf: visit.csrf,
        devices: device_rows(&devices, crate::clock::now_unix()),
        invite,
        mesh: vault.mesh().is_some(),
    })
}

async fn pair(State(vault): State<AppState>, Posted { visit, .. }: Posted) -> Response {
    let invite = match owner::invite(&vault).await {
        Ok(i) => i,
        Err(e) => return failed(e),
    };
    let qr = qrcode::QrCode::new(invite.code.to_ascii_uppercase().as_bytes())
        .map(|q| {
            q.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(220, 220)
                .build()
        })
        .unwrap_or_default();
    let expires = local_time(invite.expires_at);
    let invite = Invite {
        code: invite.code,
        qr,
        expires,
    };
    render_devices(&vault, visit, Some(invite)).await
}

async fn remove_device(
    State(vault): State<AppState>,
    Path(peer): Path<String>,
    _: Posted,
) -> Response {
    match owner::device_remove(&vault, &peer).await {
        Ok(()) => Redirect::to("/devices").into_response(),
        Err(e) => failed(e),
    }
}

async fn rename_device(
    State(vault): State<AppState>,
    Path(peer): Path<String>,
    Posted { form, .. }: Posted,
) -> Response {
    let name = form.get("name").map(String::as_str).unwrap_or_default();
    match owner::device_rename(&vault, &peer, name).await {
        Ok(()) => Redirect::to("/devices").into_response(),
        Err(e) => failed(e),
    }
}

// ---- Grants ----

struct GrantRow {
    id: String,
    service: String,
    purpose: String,
    read: Vec<String>,
    write: Vec<String>,
    filter: Vec<String>,
    expires: String,
    last_used: String,
    status: String,
    active: bool,
    app_password: bool,
}

fn scope_words(scope: &Scope) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut read = Vec::new();
    let mut write = Vec::new();
    let mut filter = Vec::new();
    for (name, c) in &scope.collections {
        if let Some(fields) = &c.read {
            read.push(format!("{name}: {fields}"));
        }
        if let Some(fields) = &c.write {
            write.push(format!("{name}: {fields}"));
        }
        for f in &c.filter {
            let text = format!("{name}: {f}");
            if !filter.contains(&text) {
                filter.push(text);
            }
        }
    }
    (read, write, filter)
}

fn grant_row(g: &GrantInfo, now: u64) -> GrantRow {
    let (read, write, filter) = scope_words(&g.scope);
    GrantRow {
        id: g.id.clone(),
        service: g.service.clone(),
        purpose: g.purpose.clone(),
        read,
        write,
        filter,
        expires: g.expires_at.map_or("never".into(), local_time),
        last_used: ago(g.last_used, now),
        status: serde_json::to_value(g.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        active: g.status == GrantStatus::Active,
        app_password: g.app_password,
    }
}

#[derive(Template)]
#[template(path = "grants.html")]
struct GrantsPage {
    csrf: String,
    grants: Vec<GrantRow>,
}

async fn grants_page(State(vault): State<AppState>, visit: Visit) -> Response {
    let grants = match owner::grants(&vault).await {
        Ok(g) => g,
        Err(e) => return failed(e),
    };
    let now = crate::clock::now_unix();
    page(&GrantsPage {
        csrf: visit.csrf,
        grants: grants.iter().rev().map(|g| grant_row(g, now)).collect(),
    })
}

/// The grant form's fields, as a request to the API.
struct GrantForm {
    service: String,
    purpose: String,
    read: String,
    write: String,
    filters: String,
    expires: String,
    app_password: bool,
}

impl GrantForm {
    fn of(form: &HashMap<String, String>) -> Self {
        let field = |name: &str| {
            form.get(name)
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            service: field("service"),
            purpose: field("purpose"),
            read: field("read"),
            write: field("write"),
            filters: field("where"),
            expires: field("expires"),
            app_password: form.contains_key("app_password"),
        }
    }

    fn filters(&self) -> Vec<String> {
        self.filters
            .split([',', '\n'])
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn request(&self) -> GrantRequest {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        GrantRequest {
            service: self.service.clone(),
            read: some(&self.read),
            write: some(&self.write),
            filters: self.filters(),
            expires: some(&self.expires),
            purpose: some(&self.purpose),
            to: None,
            rate: None,
            app_password: self.app_password,
        }
    }
}

/// The grant form's fields; a grant needs a service.
fn grant_form(form: &HashMap<String, String>) -> Result<GrantForm, Response> {
    let form = GrantForm::of(form);
    if form.service.is_empty() {
        return Err(message(
            StatusCode::BAD_REQUEST,
            "A grant needs a service",
            "Name the service or app the grant is for.",
        ));
    }
    Ok(form)
}

struct PreviewCollection {
    name: String,
    shown: usize,
    hidden: usize,
    records: Vec<String>,
}

#[derive(Template)]
#[template(path = "grant_preview.html")]
struct GrantPreviewPage {
    csrf: String,
    form: GrantForm,
    words: Vec<String>,
    collections: Vec<PreviewCollection>,
}

/// "every field", or "the fields a, b" / "the field a".
fn field_words(fields: &hearth_protocol::scope::Fields) -> String {
    match fields {
        hearth_protocol::scope::Fields::All => "every field".to_owned(),
        hearth_protocol::scope::Fields::Only(set) => {
            let names: Vec<String> = set.iter().map(ToString::to_string).collect();
            match names.as_slice() {
                [one] => format!("the field {one}"),
                _ => format!("the fields {}", names.join(", ")),
            }
        }
    }
}

/// At most this many projected records per collection in a preview.
const PREVIEW_RECORDS: usize = 20;

async fn preview_grant(State(vault): State<AppState>, Posted { visit, form }: Posted) -> Response {
    let form = match grant_form(&form) {
        Ok(form) => form,
        Err(r) => return r,
    };
    let scope = match Scope::parse(
        (!form.read.is_empty()).then_some(form.read.as_str()),
        (!form.write.is_empty()).then_some(form.write.as_str()),
        &form.filters(),
    ) {
        Ok(s) => s,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                "That scope does not work",
                &e.to_string(),
            );
        }
    };
    let expiry = if form.expires.is_empty() {
        "30d"
    } else {
        form.expires.as_str()
    };
    let expires_words = match crate::access::parse_duration(expiry) {
        Ok(None) => "never expires (it lasts until you revoke it)".to_owned(),
        Ok(Some(d)) => format!(
            "expires {}",
            local_time(crate::clock::now_unix() + d.as_secs())
        ),
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                "That expiry does not work",
                &e.to_string(),
            );
        }
    };
    let mut words = Vec::new();
    let mut collections = Vec::new();
    for (name, c) in &scope.collections {
        let filter = if c.filter.is_empty() {
            "every record".to_owned()
        } else {
            format!(
                "only records where {}",
                c.filter
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        };
        if let Some(read) = &c.read {
            words.push(format!(
                "{} will see {} of {filter} in {name}.",
                form.service,
                field_words(read)
            ));
        }
        if let Some(write) = &c.write {
            words.push(format!(
                "{} may change {} of {filter} in {name}, and create records there.",
                form.service,
                field_words(write)
            ));
        }
        if c.read.is_some() {
            let Ok(collection) = CollectionName::parse(name) else {
                continue;
            };
            let records = vault.collections.records(&collection).unwrap_or_default();
            let mut shown = Vec::new();
            let mut hidden = 0;
            for r in &records {
                match r.as_object().and_then(|r| c.project(r)) {
                    Some(p) => {
                        shown.push(serde_json::to_string(&Value::Object(p)).unwrap_or_default())
                    }
                    None => hidden += 1,
                }
            }
            collections.push(PreviewCollection {
                name: name.clone(),
                shown: shown.len(),
                hidden,
                records: shown.into_iter().take(PREVIEW_RECORDS).collect(),
            });
        }
    }
    words.push(format!("The grant {expires_words}."));
    if form.app_password {
        words.push(
            "It gets an app password, for contacts and calendar apps (CardDAV, CalDAV).".into(),
        );
    }
    words.push("Every access it makes is written to the audit log.".into());
    page(&GrantPreviewPage {
        csrf: visit.csrf,
        form,
        words,
        collections,
    })
}

#[derive(Template)]
#[template(path = "grant_created.html")]
struct GrantCreatedPage {
    csrf: String,
    id: String,
    service: String,
    token: String,
    password: Option<String>,
    api_addr: String,
}

async fn create_grant(State(vault): State<AppState>, Posted { visit, form }: Posted) -> Response {
    let form = match grant_form(&form) {
        Ok(form) => form,
        Err(r) => return r,
    };
    match owner::grant_new(&vault, form.request()).await {
        Ok(created) => page(&GrantCreatedPage {
            csrf: visit.csrf,
            id: created.id,
            service: form.service,
            token: created.token,
            password: created.password,
            api_addr: vault.api_addr.to_string(),
        }),
        Err(e) => failed(e),
    }
}

#[derive(Template)]
#[template(path = "revoked.html")]
struct RevokedPage {
    csrf: String,
    service: String,
    accesses: u64,
    refused: u64,
    first: String,
    last: String,
    collections: Vec<hearth_protocol::api::SeenCollection>,
}

async fn revoke_grant(
    State(vault): State<AppState>,
    Path(id): Path<String>,
    Posted { visit, .. }: Posted,
) -> Response {
    match owner::grant_revoke(&vault, id).await {
        Ok(answer) => page(&RevokedPage {
            csrf: visit.csrf,
            service: answer.grant.service,
            accesses: answer.seen.accesses,
            refused: answer.seen.refused,
            first: answer.seen.first_access.map_or("—".into(), local_time),
            last: answer.seen.last_access.map_or("—".into(), local_time),
            collections: answer.seen.collections,
        }),
        Err(e) => failed(e),
    }
}

// ---- Audit ----

struct AuditRow {
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
struct AuditPage {
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
struct Verified {
    ok: bool,
    text: String,
}

#[derive(serde::Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    grant: String,
    #[serde(default)]
    collection: String,
}

/// At most this many entries on the audit page (the newest).
const AUDIT_ROWS: usize = 500;

async fn audit_page(
    State(vault): State<AppState>,
    Query(query): Query<AuditQuery>,
    visit: Visit,
) -> Response {
    render_audit(&vault, visit, query, None).await
}

async fn render_audit(
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
const VERIFIED_FOR_SECS: u64 = 300;

impl Sessions {
    /// The last verification of the audit log, if it is recent.
    fn last_verified(&self) -> Option<Verified> {
        let now = crate::clock::now_unix();
        let last = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| now.saturating_sub(*at) < VERIFIED_FOR_SECS)
            .map(|(_, v)| v.clone())
    }
}

/// Verifies the audit log's hash chains, and remembers the result for the overview.
async fn verify(vault: &AppState) -> Verified {
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

async fn verify_audit(State(vault): State<AppState>, Posted { visit, .. }: Posted) -> Response {
    let verified = verify(&vault).await;
    render_audit(&vault, visit, AuditQuery::default(), Some(verified)).await
}

// ---- Data ----

struct BlobRow {
    id: String,
    name: String,
    content_type: String,
    size: String,
    here: bool,
}

#[derive(Template)]
#[template(path = "data.html")]
struct DataPage {
    csrf: String,
    collections: Vec<(String, u64)>,
    /// Where a .vcf or .ics file can go: `contacts`, `calendar`, and the `contacts-…`
    /// and `calendar-…` collections there are.
    pim_collections: Vec<String>,
    blobs: Vec<BlobRow>,
}

async fn data_page(State(vault): State<AppState>, visit: Visit) -> Response {
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
async fn download_blob(
    State(vault): State<AppState>,
    Path(id): Path<String>,
    _visit: Visit,
) -> Response {
    // A download, never shown as a page of the dashboard's origin.
    match crate::download::blob_response(&vault, &id, crate::download::Disposition::Attachment)
        .await
    {
        Ok(response) => response,
        Err(e) => failed(e),
    }
}

#[derive(Template)]
#[template(path = "imported.html")]
struct ImportedPage {
    csrf: String,
    collection: String,
    report: crate::pim::ImportReport,
}

/// A .vcf or .ics file from the import form (multipart: `csrf`, `collection`, `file`).
async fn import(
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
                match field.text().await {
                    Ok(text) => {
                        fields.insert(name, text);
                    }
                    Err(e) => {
                        return message(
                            StatusCode::BAD_REQUEST,
                            "Not imported",
                            &format!(
                                "The upload broke off or is not UTF-8 text ({e}). Nothing was changed."
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

struct RecordRow {
    id: String,
    summary: String,
}

#[derive(Template)]
#[template(path = "collection.html")]
struct CollectionPage {
    csrf: String,
    name: String,
    records: Vec<RecordRow>,
}

fn summary(record: &Map<String, Value>) -> String {
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

fn collection_of(collection: &str) -> Result<CollectionName, Response> {
    CollectionName::parse(collection).map_err(|e| {
        message(
            StatusCode::BAD_REQUEST,
            "No such collection",
            &e.to_string(),
        )
    })
}

fn record_of(collection: &str, id: &str) -> Result<(CollectionName, RecordId), Response> {
    let id = RecordId::parse(id)
        .map_err(|e| message(StatusCode::BAD_REQUEST, "No such record", &e.to_string()))?;
    Ok((collection_of(collection)?, id))
}

/// The collection and record a form changes: valid names, not a system collection.
fn writable_record(collection: &str, id: &str) -> Result<(CollectionName, RecordId), Response> {
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

async fn collection_page(
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
    page(&CollectionPage {
        csrf: visit.csrf,
        name: name.to_string(),
        records: records
            .iter()
            .filter_map(Value::as_object)
            .map(|r| RecordRow {
                id: r
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                summary: summary(r),
            })
            .collect(),
    })
}

struct ConflictRow {
    field: String,
    values: Vec<String>,
}

#[derive(Template)]
#[template(path = "record.html")]
struct RecordPage {
    csrf: String,
    collection: String,
    id: String,
    json: String,
    editable: bool,
    conflicts: Vec<ConflictRow>,
    versions: Vec<String>,
    deleted: Option<hearth_protocol::api::DeletedWhileEdited>,
}

async fn record_page(
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

async fn render_record(
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
    page(&RecordPage {
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

async fn save_record(
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

async fn delete_record(
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
async fn resolve_conflict(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_works_once_and_a_session_ends_at_logout() {
        let sessions = Sessions::default();
        let code = sessions.new_link();
        let id = sessions.redeem(&code).expect("a fresh link works");
        assert!(sessions.redeem(&code).is_none(), "a link works once");
        assert!(sessions.redeem("made-up").is_none());
        let session = sessions.session(&id).expect("the session is live");
        assert_eq!(session.csrf.len(), 52);
        assert_ne!(session.csrf, id);
        sessions.end(&id);
        assert!(sessions.session(&id).is_none());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hearth_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("hearth_sessionx=1"),
        );
        assert_eq!(cookie(&headers), None);
    }
}
