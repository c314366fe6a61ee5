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
//!
//! This file holds the routes, sessions, CSRF, the page helpers and formatting; the
//! pages are beside it: `devices` (overview, devices, pairing), `grants`, `audit` and
//! `data` (blobs, imports, collections, records, conflicts).

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

mod audit;
mod data;
mod devices;
mod files;
mod forms;
mod grants;

use audit::*;
use data::*;
use devices::*;
use files::*;
use forms::*;
use grants::*;

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
        .route("/grants/{id}/extend", post(extend_grant))
        .route("/audit", get(audit_page))
        .route("/audit/verify", post(verify_audit))
        .route("/data", get(data_page))
        .route(
            "/data/import",
            post(import).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/data/blobs/{id}", get(download_blob))
        .route("/data/files", get(files_page))
        .route("/data/files/get", get(download_file))
        .route(
            "/data/files/upload",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(MAX_FILE_UPLOAD)),
        )
        .route("/data/files/mkdir", post(make_folder))
        .route("/data/files/remove", post(remove))
        .route("/data/photos", get(photos_page))
        .route("/data/search", get(search_page))
        .route("/data/thumbnail/{id}", get(thumbnail))
        .route("/data/{collection}", get(collection_page))
        .route(
            "/data/{collection}/{id}",
            get(record_page).post(save_record),
        )
        .route("/data/{collection}/{id}/fields", post(save_fields))
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
pub async fn login_link(
    State(vault): State<AppState>,
    Query(query): Query<LoginQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    // `?lan=true`: a link for another machine on the LAN (a headless home server), at
    // the LAN listener's address, over its TLS.
    if query.lan {
        let Some(lan) = vault.lan.as_ref() else {
            return Err(ApiError::new(
                hearth_protocol::api::ErrorCode::Conflict,
                "this node does not serve the LAN: start it with `hearth up --lan` (or `lan = true` in hearth.toml)",
            ));
        };
        let Some(addr) = crate::phone::phone_addr(lan) else {
            return Err(ApiError::new(
                hearth_protocol::api::ErrorCode::Conflict,
                format!(
                    "this node serves the LAN on {} but no address of this host on the network was found",
                    lan.addr
                ),
            ));
        };
        let code = vault.dashboard.new_link();
        return Ok(axum::Json(serde_json::json!({
            "url": format!("https://{addr}/login/{code}"),
            "fingerprint": lan.fingerprint,
        })));
    }
    let code = vault.dashboard.new_link();
    // An API bound to every address (`--api-public`) is reached on loopback here.
    let mut addr = vault.api_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(axum::Json(serde_json::json!({
        "url": format!("http://{addr}/login/{code}"),
    })))
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    lan: bool,
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
#[derive(Clone)]
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
