//! CardDAV and CalDAV (RFC 6352, 4791, 6578, 4918) on the API listener, under `/dav/`.
//!
//! In: WebDAV requests with HTTP Basic auth (any user name; the password is a grant's
//! app password or token). Out: multistatus XML, vCard and iCalendar text. This module
//! only speaks HTTP and XML: every request is admitted by the access door and every
//! read or change goes through it ([`crate::access::dav`]), so a DAV client sees and
//! changes exactly what its grant allows, and all it does is audited.
//!
//! Layout: `/dav/` is the principal; `/dav/contacts/` and `/dav/calendars/` are the
//! homes; `/dav/contacts/{collection}/` is one address book per contacts collection the
//! grant reads, `/dav/calendars/{collection}/` one calendar per calendar collection;
//! a resource is `/dav/{home}/{collection}/{name}`. The file share (`/files/`, plain
//! WebDAV) is [`files`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hearth_protocol::CollectionName;
use hearth_protocol::api::ErrorCode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

use crate::Vault;
use crate::access::dav::{Book, BookProps, Condition, Object};
use crate::access::{AccessError, Caller, Credentials};
use crate::pim::Kind;

const DAV: &str = "DAV:";
const CARD: &str = "urn:ietf:params:xml:ns:carddav";
const CAL: &str = "urn:ietf:params:xml:ns:caldav";
const CS: &str = "http://calendarserver.org/ns/";
const ICAL: &str = "http://apple.com/ns/ical/";

const ROOT: &str = "/dav/";
/// Resources one multiget REPORT may name (clients ask in batches of tens to
/// hundreds; a larger one is refused with 413 before anything is read).
pub const MAX_MULTIGET_HREFS: usize = 1000;
const DAV_HEADER: &str = "1, 3, addressbook, calendar-access, extended-mkcol";
const ALLOW: &str =
    "OPTIONS, GET, HEAD, PUT, DELETE, PROPFIND, PROPPATCH, REPORT, MKCOL, MKCALENDAR";

/// Characters of a name written into a URL path as they are.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@')
    .remove(b'+');

/// Deepest XML nesting a request body may have.
const MAX_XML_DEPTH: usize = 32;

type AppState = Arc<Vault>;

/// The DAV routes, to be merged into the API router (whose Host check and request
/// limits apply to them).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/carddav", any(well_known))
        .route("/.well-known/caldav", any(well_known))
        .route("/dav", any(handle))
        .route("/dav/", any(handle))
        .route("/dav/{*path}", any(handle))
        .route("/files", any(files::handle))
        .route("/files/", any(files::handle))
        .route("/files/{*path}", any(files::handle))
}

async fn well_known() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, HeaderValue::from_static(ROOT))],
    )
        .into_response()
}

/// Where a request points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `/`, the server's bare address: what people type into a DAV client.
    Site,
    Root,
    Home(Kind),
    Book(Kind, CollectionName),
    Object(Kind, CollectionName, String),
}

fn home_segment(kind: Kind) -> &'static str {
    match kind {
        Kind::Contacts => "contacts",
        Kind::Calendar => "calendars",
    }
}

fn href_of(target: &Target) -> String {
    match target {
        Target::Site => "/".to_owned(),
        Target::Root => ROOT.to_owned(),
        Target::Home(kind) => format!("{ROOT}{}/", home_segment(*kind)),
        Target::Book(kind, c) => format!("{ROOT}{}/{c}/", home_segment(*kind)),
        Target::Object(kind, c, name) => format!(
            "{ROOT}{}/{c}/{}",
            home_segment(*kind),
            utf8_percent_encode(name, SEGMENT)
        ),
    }
}

/// Reads a path or a full URL (as hrefs in a REPORT may be) into a target.
fn parse_target(href: &str) -> Result<Target, DavError> {
    let path = match href.find("://") {
        Some(i) => {
            let rest = &href[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => href,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path == "/" || path.is_empty() {
        return Ok(Target::Site);
    }
    let Some(rest) = path.strip_prefix("/dav") else {
        return Err(DavError::NotFound);
    };
    let mut segments = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| DavError::BadRequest("a path segment is not UTF-8".into()))?;
        segments.push(decoded.into_owned());
    }
    let kind = |s: &str| match s {
        "contacts" => Some(Kind::Contacts),
        "calendars" => Some(Kind::Calendar),
        _ => None,
    };
    let collection = |kind: Kind, name: &str| book_of(kind, name).ok_or(DavError::NotFound);
    match segments.as_slice() {
        [] => Ok(Target::Root),
        [home] => kind(home).map(Target::Home).ok_or(DavError::NotFound),
        [home, c] => {
            let kind = kind(home).ok_or(DavError::NotFound)?;
            Ok(Target::Book(kind, collection(kind, c)?))
        }
        [home, c, name] => {
            let kind = kind(home).ok_or(DavError::NotFound)?;
            Ok(Target::Object(kind, collection(kind, c)?, name.clone()))
        }
        _ => Err(DavError::NotFound),
    }
}

/// The collection a book's path segment names: the collection of that name if it is
/// one of `kind` (`calendar`, `calendar-work`), else the client's own name under the
/// kind's family (DAVx⁵ and Apple's apps make calendars at a UUID: `/dav/calendars/
/// 3F2A…/` is `calendar-3f2a…`), lowercased, every other character a `-`. A name too
/// long for a collection is shortened to its first letters and a hash of the whole.
fn book_of(kind: Kind, segment: &str) -> Option<CollectionName> {
    if let Ok(name) = CollectionName::parse(segment)
        && !name.is_system()
        && Kind::of(name.as_str()) == Some(kind)
    {
        return Some(name);
    }
    let base = match kind {
        Kind::Contacts => "contacts",
        Kind::Calendar => "calendar",
    };
    let mut slug = String::with_capacity(segment.len());
    for c in segment.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        return None;
    }
    let room = hearth_protocol::names::MAX_COLLECTION_NAME_LEN - base.len() - 1;
    let name = if slug.len() <= room {
        format!("{base}-{slug}")
    } else {
        let hash = blake3::hash(segment.as_bytes()).to_hex();
        let keep = room - 17;
        format!(
            "{base}-{}-{}",
            slug[..keep].trim_end_matches('-'),
            &hash.as_str()[..16]
        )
    };
    CollectionName::parse(&name).ok()
}

/// Why a DAV request failed.
#[derive(Debug)]
enum DavError {
    Unauthorized(String),
    Forbidden(String),
    NotFound,
    BadRequest(String),
    Precondition,
    InvalidSyncToken(String),
    /// A precondition of RFC 4791 / 6352 (`supported-filter`, `no-uid-conflict`, …):
    /// the status, the element's XML inside `DAV:error`, and a message for the log.
    Condition(StatusCode, String, String),
    NotAllowed(String),
    TooLarge,
    /// A multiget naming more resources than one request may.
    TooManyHrefs(usize),
    TooMany(String),
    /// The node cannot take more now (every event stream slot is taken and the like).
    Unavailable(String),
    /// The disk is full (RFC 4918 §11.5).
    InsufficientStorage,
    /// A status of its own with a message (the file share's 409, 412, 415, 502).
    Status(StatusCode, String),
    /// Anything else: the message goes to the log, never to the client.
    Internal(String),
}

impl From<AccessError> for DavError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::InvalidToken(m) => DavError::Unauthorized(m),
            AccessError::Revoked | AccessError::Expired => DavError::Unauthorized(e.to_string()),
            AccessError::OutOfScope(_) | AccessError::WrongPeer(_) => {
                DavError::Forbidden(e.to_string())
            }
            AccessError::NotFound { .. } | AccessError::NoGrant(_) => DavError::NotFound,
            AccessError::PreconditionFailed => DavError::Precondition,
            AccessError::InvalidSyncToken(m) => DavError::InvalidSyncToken(m),
            AccessError::Conflict(m) => DavError::NotAllowed(m),
            AccessError::RateLimited(_) | AccessError::TooManyStreams(_) => {
                DavError::TooMany(e.to_string())
            }
            AccessError::InvalidId(m) | AccessError::BadRequest(m) => DavError::BadRequest(m),
            other => match other.code() {
                ErrorCode::InsufficientStorage => {
                    tracing::warn!(error = %other, "a DAV write failed: the disk is full");
                    DavError::InsufficientStorage
                }
                ErrorCode::Unavailable => DavError::Unavailable(other.to_string()),
                ErrorCode::TooManyStreams | ErrorCode::RateLimited => {
                    DavError::TooMany(other.to_string())
                }
                _ => DavError::Internal(other.to_string()),
            },
        }
    }
}

impl IntoResponse for DavError {
    fn into_response(self) -> Response {
        let text = |status: StatusCode, message: String| {
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                message + "\n",
            )
                .into_response()
        };
        match self {
            DavError::Unauthorized(m) => {
                let mut r = text(StatusCode::UNAUTHORIZED, m);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Hearth\", charset=\"UTF-8\""),
                );
                r
            }
            DavError::Forbidden(m) => text(StatusCode::FORBIDDEN, m),
            DavError::Status(status, m) => text(status, m),
            DavError::NotFound => text(StatusCode::NOT_FOUND, "no such resource".into()),
            DavError::BadRequest(m) => text(StatusCode::BAD_REQUEST, m),
            DavError::Precondition => text(
                StatusCode::PRECONDITION_FAILED,
                "the resource is not in the state the request's condition names".into(),
            ),
            DavError::Condition(status, element, m) => {
                tracing::debug!(reason = %m, "a DAV precondition failed");
                (
                    status,
                    [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
                    format!(
                        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:error xmlns:d=\"DAV:\" xmlns:card=\"{CARD}\" xmlns:cal=\"{CAL}\">{element}<d:responsedescription>{}</d:responsedescription></d:error>\n",
                        escape(m.as_str())
                    ),
                )
                    .into_response()
            }
            DavError::InvalidSyncToken(m) => {
                tracing::debug!(reason = %m, "sync token refused");
                (
                    StatusCode::FORBIDDEN,
                    [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:error xmlns:d=\"DAV:\"><d:valid-sync-token/></d:error>\n".to_string(),
                )
                    .into_response()
            }
            DavError::NotAllowed(m) => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, m);
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
                r
            }
            DavError::TooLarge => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large".into(),
            ),
            DavError::TooManyHrefs(n) => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a multiget names at most {MAX_MULTIGET_HREFS} resources; this one names {n}: ask in parts"
                ),
            ),
            DavError::TooMany(m) => text(StatusCode::TOO_MANY_REQUESTS, m),
            DavError::Unavailable(m) => text(StatusCode::SERVICE_UNAVAILABLE, m),
            DavError::InsufficientStorage => text(
                StatusCode::INSUFFICIENT_STORAGE,
                "the node's disk is full; nothing was written".into(),
            ),
            DavError::Internal(m) => {
                tracing::error!(message = %m, "DAV request failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the node could not complete the request; its log says why".into(),
                )
            }
        }
    }
}

/// The credentials of a request: HTTP Basic (the password; the user name is not
/// checked) or a bearer token.
fn credentials(headers: &HeaderMap) -> Result<Credentials, DavError> {
    let missing = || DavError::Unauthorized("this needs the grant's app password".into());
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Ok(Credentials::local(token));
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(missing)?;
    let decoded = data_encoding::BASE64
        .decode(encoded.trim().as_bytes())
        .map_err(|_| DavError::Unauthorized("the Basic credentials are not base64".into()))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| DavError::Unauthorized("the Basic credentials are not UTF-8".into()))?;
    let (_, password) = decoded
        .split_once(':')
        .ok_or_else(|| DavError::Unauthorized("the Basic credentials have no password".into()))?;
    if password.is_empty() {
        return Err(missing());
    }
    Ok(Credentials::basic(password))
}

async fn handle(State(vault): State<AppState>, request: Request) -> Response {
    let method = request.method().clone();
    match serve(vault, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(%method, error = ?e, "DAV request refused");
            e.into_response()
        }
    }
}

/// PROPFIND, OPTIONS and REPORT at `/` (whose GET is the dashboard): a DAV client
/// given the server's bare address discovers (and searches principals) from there, as
/// at `/dav/`, pointing on to the principal. A layer over the whole router, since `/`
/// is the dashboard's route.
pub(crate) async fn at_site(
    State(vault): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == "/"
        && matches!(request.method().as_str(), "PROPFIND" | "OPTIONS" | "REPORT")
    {
        return handle(State(vault), request).await;
    }
    next.run(request).await
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
            ],
        )
            .into_response());
    }
    // The body is read before anything is refused: a refusal with the body unread
    // closes the connection under a client still sending it (a broken pipe where a
    // 401 or 404 was meant).
    let limit = vault.limits.max_record_bytes;
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::server::is_length_limit(&e) {
            DavError::TooLarge
        } else {
            DavError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    let target = parse_target(parts.uri.path())?;
    let door = &vault.door;
    let caller = door.admit(&credentials(&parts.headers)?).await?;
    let depth = match parts.headers.get("depth").and_then(|v| v.to_str().ok()) {
        Some("0") => 0,
        _ => 1,
    };
    let aliases = vault
        .door
        .dav_made()?
        .into_iter()
        .filter_map(|(c, segment)| Some((c, segment?)))
        .collect();
    let dav = Dav {
        vault: &vault,
        caller: &caller,
        aliases,
        expand: std::sync::Mutex::new(None),
    };
    match method.as_str() {
        "PROPFIND" => dav.propfind(&target, depth, &body).await,
        "REPORT" => dav.report(&target, &body).await,
        "GET" | "HEAD" => dav.get(&target, method == Method::HEAD).await,
        "PUT" => dav.put(&target, &parts.headers, &body).await,
        "DELETE" => dav.delete(&target, &parts.headers).await,
        "PROPPATCH" => dav.proppatch(&target, &body).await,
        "MKCOL" | "MKCALENDAR" => dav.mkcol(&target, parts.uri.path(), &body).await,
        _ => Err(DavError::NotAllowed(format!(
            "{method} is not a method of this server"
        ))),
    }
}

/// A property name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prop {
    ns: String,
    name: String,
}

impl Prop {
    fn new(ns: &str, name: &str) -> Prop {
        Prop {
            ns: ns.to_owned(),
            name: name.to_owned(),
        }
    }

    fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The element's opening name (with a namespace declaration for unknown ones).
    fn open(&self) -> String {
        match prefix(&self.ns) {
            Some(p) => format!("{p}:{}", self.name),
            // A prefix cannot be bound to no namespace (Namespaces in XML 1.0).
            None if self.ns.is_empty() => format!("{} xmlns=\"\"", self.name),
            None => format!("x:{} xmlns:x=\"{}\"", self.name, escape(self.ns.as_str())),
        }
    }

    fn close(&self) -> String {
        match prefix(&self.ns) {
            Some(p) => format!("{p}:{}", self.name),
            None if self.ns.is_empty() => self.name.clone(),
            None => format!("x:{}", self.name),
        }
    }

    fn element(&self, inner: &str) -> String {
        if inner.is_empty() {
            format!("<{}/>", self.open())
        } else {
            format!("<{}>{inner}</{}>", self.open(), self.close())
        }
    }
}

fn prefix(ns: &str) -> Option<&'static str> {
    Some(match ns {
        DAV => "d",
        CARD => "card",
        CAL => "cal",
        CS => "cs",
        ICAL => "ical",
        _ => return None,
    })
}

/// A parsed XML element: name, attributes, text and children.
#[derive(Debug, Default)]
pub(crate) struct Element {
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) attributes: Vec<(String, String)>,
    pub(crate) text: String,
    pub(crate) children: Vec<Element>,
}

impl Element {
    pub(crate) fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    pub(crate) fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    pub(crate) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn find(&self, ns: &str, name: &str) -> Option<&Element> {
        if self.is(ns, name) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(ns, name))
    }
}

/// Reads an XML document (not a request: an EPUB's container or package) into its
/// root element, with the same care (depth, characters, declared prefixes).
pub(crate) fn read_document(text: &[u8]) -> Option<Element> {
    parse_xml(text).ok().flatten()
}

/// Reads a request body into its root element; `None` for an empty body.
fn parse_xml(body: &[u8]) -> Result<Option<Element>, DavError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| DavError::BadRequest("the XML body is not UTF-8".into()))?;
    // Not characters of XML: taken in, they would be written back in names and hrefs.
    if text.contains(|c: char| c < ' ' && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(DavError::BadRequest(
            "the XML body holds a control character".into(),
        ));
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    let bad = |e: String| DavError::BadRequest(format!("the XML body is malformed: {e}"));
    let mut reader = quick_xml::NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| bad(e.to_string()))?;
        let ns = match resolved {
            ResolveResult::Bound(ns) => ns.into_inner().to_owned(),
            // A prefix no declaration binds (Namespaces in XML 1.0 §5).
            ResolveResult::Unknown(prefix) => {
                return Err(bad(format!("the prefix {prefix:?} is not declared")));
            }
            ResolveResult::Unbound => String::new(),
        };
        match event {
            Event::Start(e) | Event::Empty(e) if stack.len() >= MAX_XML_DEPTH => {
                let _ = e;
                return Err(bad("nested too deeply".into()));
            }
            Event::Start(e) => stack.push(element_of(&e, ns).map_err(bad)?),
            Event::Empty(e) => {
                stack.push(element_of(&e, ns).map_err(bad)?);
                close(&mut stack, &mut root);
            }
            Event::End(_) => close(&mut stack, &mut root),
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(top) = stack.last_mut() {
                    if let Ok(Some(c)) = r.resolve_char_ref() {
                        if c < ' ' && !matches!(c, '\t' | '\n' | '\r') {
                            return Err(bad(format!("&{}; is not a character of XML", &*r)));
                        }
                        top.text.push(c);
                    } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(&r) {
                        top.text.push_str(s);
                    } else {
                        return Err(bad(format!("unknown entity &{};", &*r)));
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(bad("an element is not closed".into()));
    }
    root.map(Some).ok_or_else(|| bad("no root element".into()))
}

fn element_of(e: &quick_xml::events::BytesStart, ns: String) -> Result<Element, String> {
    let mut element = Element {
        ns,
        name: e.local_name().as_ref().to_owned(),
        ..Element::default()
    };
    // A property named in a request is written back in the answer: a name or
    // namespace that cannot be written back as XML is refused here (found by the
    // `dav_xml` fuzz target).
    let mut chars = element.name.chars();
    let is_name = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '\u{b7}'));
    if !is_name
        || element.ns == "http://www.w3.org/2000/xmlns/"
        || element.ns == "http://www.w3.org/XML/1998/namespace"
    {
        return Err(format!("{:?} is not an element name here", element.name));
    }
    for attribute in e.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        // `xmlns:p=""` binds a prefix to nothing, which XML 1.0 namespaces forbid.
        if attribute.key.as_ref().starts_with("xmlns:") && attribute.value.is_empty() {
            return Err("a namespace prefix is bound to nothing (xmlns:p=\"\")".into());
        }
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?
            .into_owned();
        element
            .attributes
            .push((attribute.key.local_name().as_ref().to_owned(), value));
    }
    Ok(element)
}

fn close(stack: &mut Vec<Element>, root: &mut Option<Element>) {
    if let Some(done) = stack.pop() {
        match stack.last_mut() {
            Some(parent) => parent.children.push(done),
            None => *root = Some(done),
        }
    }
}

/// A PROPPATCH body's changes, in order: each property element, and whether it is
/// set (else removed).
fn property_updates(body: &[u8]) -> Result<Vec<(bool, Element)>, DavError> {
    let root = parse_xml(body)?
        .filter(|r| r.is(DAV, "propertyupdate"))
        .ok_or_else(|| DavError::BadRequest("a PROPPATCH body is a DAV:propertyupdate".into()))?;
    let mut out = Vec::new();
    for action in root.children {
        let set = action.is(DAV, "set");
        if !set && !action.is(DAV, "remove") {
            continue;
        }
        for prop in action
            .children
            .into_iter()
            .filter(|c| c.is(DAV, "prop"))
            .flat_map(|p| p.children)
        {
            out.push((set, prop));
        }
    }
    Ok(out)
}

/// Which properties a PROPFIND or REPORT asks for.
enum Wanted {
    All,
    Names,
    These(Vec<Prop>),
}

fn wanted_of(root: Option<&Element>) -> Wanted {
    let Some(root) = root else {
        return Wanted::All;
    };
    if root.child(DAV, "propname").is_some() {
        return Wanted::Names;
    }
    match root.child(DAV, "prop") {
        Some(prop) => Wanted::These(
            prop.children
                .iter()
                .map(|c| Prop::new(&c.ns, &c.name))
                .collect(),
        ),
        None => Wanted::All,
    }
}

/// The multistatus body being written.
struct Multistatus(String);

impl Multistatus {
    fn new() -> Self {
        Multistatus(format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:multistatus xmlns:d=\"{DAV}\" xmlns:card=\"{CARD}\" xmlns:cal=\"{CAL}\" xmlns:cs=\"{CS}\" xmlns:ical=\"{ICAL}\">\n"
        ))
    }

    /// A piece of a multistatus sent as it is made: responses only.
    fn part() -> Self {
        Multistatus(String::new())
    }

    /// What was written so far, to send.
    fn into_part(self) -> String {
        self.0
    }

    /// The end of a multistatus sent in pieces.
    fn end() -> &'static str {
        "</d:multistatus>\n"
    }

    /// One resource with the properties found and those not.
    fn response(&mut self, href: &str, found: &[(Prop, String)], missing: &[Prop]) {
        self.0.push_str("<d:response><d:href>");
        self.0.push_str(&escape(href));
        self.0.push_str("</d:href>");
        if !found.is_empty() {
            self.0.push_str("<d:propstat><d:prop>");
            for (prop, value) in found {
                self.0.push_str(&prop.element(value));
            }
            self.0
                .push_str("</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>");
        }
        if !missing.is_empty() {
            self.0.push_str("<d:propstat><d:prop>");
            for prop in missing {
                self.0.push_str(&prop.element(""));
            }
            self.0
                .push_str("</d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat>");
        }
        self.0.push_str("</d:response>\n");
    }

    /// One resource whose properties named get a status each group (a PROPPATCH's
    /// answer); an empty group is left out.
    fn statuses(&mut self, href: &str, groups: &[(&[Prop], &str)]) {
        self.0.push_str("<d:response><d:href>");
        self.0.push_str(&escape(href));
        self.0.push_str("</d:href>");
        for (props, status) in groups.iter().filter(|(p, _)| !p.is_empty()) {
            self.0.push_str("<d:propstat><d:prop>");
            for prop in *props {
                self.0.push_str(&prop.element(""));
            }
            self.0.push_str("</d:prop><d:status>HTTP/1.1 ");
            self.0.push_str(status);
            self.0.push_str("</d:status></d:propstat>");
        }
        self.0.push_str("</d:response>\n");
    }

    fn status(&mut self, href: &str, status: &str) {
        self.0.push_str("<d:response><d:href>");
        self.0.push_str(&escape(href));
        self.0.push_str("</d:href><d:status>HTTP/1.1 ");
        self.0.push_str(status);
        self.0.push_str("</d:status></d:response>\n");
    }

    fn finish(mut self, sync_token: Option<&str>) -> Response {
        if let Some(token) = sync_token {
            self.0.push_str("<d:sync-token>");
            self.0.push_str(&escape(token));
            self.0.push_str("</d:sync-token>\n");
        }
        self.0.push_str("</d:multistatus>\n");
        (
            StatusCode::MULTI_STATUS,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            self.0,
        )
            .into_response()
    }
}

/// A resource being described.
enum Resource<'a> {
    Site,
    Root,
    Home(Kind),
    Book(&'a Book),
    Object(Kind, &'a Object),
}

/// A plain-text answer to a GET (an empty body for a HEAD).
fn plain_text(text: String, head: bool) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(text)
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn href(inner: &str) -> String {
    format!("<d:href>{}</d:href>", escape(inner))
}

/// One request's work, for an admitted caller.
struct Dav<'a> {
    vault: &'a Vault,
    caller: &'a Caller,
    /// Books made at a path segment that is not their collection's name (a client's
    /// UUID): collection → segment.
    aliases: HashMap<String, String>,
    /// How a report's `calendar-data` shapes recurrences, if it asks.
    expand: std::sync::Mutex<Option<Recurrences>>,
}

/// What a report's `calendar-data` asks of recurring events (RFC 4791 §9.6.5–6).
#[derive(Debug, Clone, Copy)]
enum Recurrences {
    /// `expand`: each occurrence in the range, on its own.
    Expand(i64, i64),
    /// `limit-recurrence-set`: the master, and the overrides in the range.
    Limit(i64, i64),
}

impl Dav<'_> {
    /// A target's href, a book made at a segment of its own at that segment.
    fn href_of(&self, target: &Target) -> String {
        let segment = |c: &CollectionName| {
            utf8_percent_encode(
                self.aliases
                    .get(c.as_str())
                    .map_or(c.as_str(), String::as_str),
                SEGMENT,
            )
            .to_string()
        };
        match target {
            Target::Book(kind, c) => format!("{ROOT}{}/{}/", home_segment(*kind), segment(c)),
            Target::Object(kind, c, name) => format!(
                "{ROOT}{}/{}/{}",
                home_segment(*kind),
                segment(c),
                utf8_percent_encode(name, SEGMENT)
            ),
            other => href_of(other),
        }
    }

    fn privileges(&self, writable: bool) -> String {
        let mut out = String::from(
            "<d:privilege><d:read/></d:privilege><d:privilege><d:read-current-user-privilege-set/></d:privilege>",
        );
        if writable {
            out.push_str("<d:privilege><d:write/></d:privilege><d:privilege><d:write-content/></d:privilege><d:privilege><d:write-properties/></d:privilege><d:privilege><d:bind/></d:privilege><d:privilege><d:unbind/></d:privilege>");
        }
        out
    }

    /// A property's value (inner XML), or `None` if the resource has no such property.
    fn value(&self, resource: &Resource, prop: &Prop) -> Option<String> {
        let principal = || Some(href(ROOT));
        match (prop.ns.as_str(), prop.name.as_str()) {
            (DAV, "current-user-principal") | (DAV, "principal-URL") | (DAV, "owner") => {
                return principal();
            }
            (CARD, "addressbook-home-set") => {
                return Some(href(&href_of(&Target::Home(Kind::Contacts))));
            }
            (CAL, "calendar-home-set") => {
                return Some(href(&href_of(&Target::Home(Kind::Calendar))));
            }
            _ => {}
        }
        match resource {
            Resource::Site => match (prop.ns.as_str(), prop.name.as_str()) {
                (DAV, "resourcetype") => Some("<d:collection/>".into()),
                (DAV, "displayname") => Some("Hearth".into()),
                (DAV, "current-user-privilege-set") => Some(self.privileges(false)),
                (DAV, "principal-collection-set") => principal(),
                _ => None,
            },
            Resource::Root => match (prop.ns.as_str(), prop.name.as_str()) {
                (DAV, "resourcetype") => Some("<d:collection/><d:principal/>".into()),
                (DAV, "displayname") => Some(escape(self.caller.grant.service.as_str()).into()),
                (DAV, "current-user-privilege-set") => Some(self.privileges(false)),
                (DAV, "principal-collection-set") => principal(),
                _ => None,
            },
            Resource::Home(kind) => match (prop.ns.as_str(), prop.name.as_str()) {
                (DAV, "resourcetype") => Some("<d:collection/>".into()),
                (DAV, "displayname") => Some(
                    match kind {
                        Kind::Contacts => "Address books",
                        Kind::Calendar => "Calendars",
                    }
                    .into(),
                ),
                (DAV, "current-user-privilege-set") => Some(self.privileges(false)),
                _ => None,
            },
            Resource::Book(book) => self.book_value(book, prop),
            Resource::Object(kind, object) => match (prop.ns.as_str(), prop.name.as_str()) {
                (DAV, "resourcetype") => Some(String::new()),
                (DAV, "getetag") => Some(escape(object.etag.as_str()).into()),
                (DAV, "getcontenttype") => Some(kind.media_type().into()),
                (DAV, "getcontentlength") => Some(object.text.len().to_string()),
                (CARD, "address-data") if *kind == Kind::Contacts => {
                    Some(escape(object.text.as_str()).into())
                }
                (CAL, "calendar-data") if *kind == Kind::Calendar => {
                    let shape = *self.expand.lock().expect("never poisoned");
                    let expanded = shape.and_then(|shape| match shape {
                        Recurrences::Expand(start, end) => {
                            crate::pim::calendar::expand_text(&object.text, start, end)
                        }
                        Recurrences::Limit(start, end) => {
                            crate::pim::calendar::limit_recurrence_text(&object.text, start, end)
                        }
                    });
                    Some(escape(expanded.as_deref().unwrap_or(object.text.as_str())).into())
                }
                _ => None,
            },
        }
    }

    fn book_value(&self, book: &Book, prop: &Prop) -> Option<String> {
        let is_contacts = book.kind == Kind::Contacts;
        Some(match (prop.ns.as_str(), prop.name.as_str()) {
            (DAV, "resourcetype") => {
                if is_contacts {
                    "<d:collection/><card:addressbook/>".into()
                } else {
                    "<d:collection/><cal:calendar/>".into()
                }
            }
            (DAV, "displayname") => {
                escape(book.display_name.as_deref().unwrap_or(book.collection.as_str())).into()
            }
            (CS, "getctag") | (DAV, "sync-token") => escape(book.token.as_deref()?).into(),
            // RFC 4791 §6.1.1: a free/busy-only grant holds read-free-busy, not read.
            (DAV, "current-user-privilege-set") if book.busy_only => {
                "<d:privilege><cal:read-free-busy/></d:privilege>".into()
            }
            (DAV, "current-user-privilege-set") => self.privileges(book.writable),
            (DAV, "supported-report-set") => {
                let reports: &[&str] = if is_contacts {
                    &["card:addressbook-multiget", "card:addressbook-query", "d:sync-collection"]
                } else if book.busy_only {
                    &["cal:free-busy-query"]
                } else {
                    &["cal:calendar-multiget", "cal:calendar-query", "cal:free-busy-query", "d:sync-collection"]
                };
                reports
                    .iter()
                    .map(|r| format!("<d:supported-report><d:report><{r}/></d:report></d:supported-report>"))
                    .collect()
            }
            (CARD, "addressbook-description") if is_contacts => {
                escape(book.description.as_deref()?).into()
            }
            (CAL, "calendar-description") if !is_contacts => {
                escape(book.description.as_deref()?).into()
            }
            (ICAL, "calendar-color") if !is_contacts => escape(book.color.as_deref()?).into(),
            (ICAL, "calendar-order") if !is_contacts => escape(book.order.as_deref()?).into(),
            (CARD, "supported-address-data") if is_contacts => {
                "<card:address-data-type content-type=\"text/vcard\" version=\"3.0\"/><card:address-data-type content-type=\"text/vcard\" version=\"4.0\"/>".into()
            }
            (CAL, "supported-calendar-component-set") if !is_contacts => {
                book.components
                    .as_deref()
                    .unwrap_or("VEVENT,VTODO,VJOURNAL")
                    .split(',')
                    .map(|c| format!("<cal:comp name=\"{}\"/>", escape(c)))
                    .collect()
            }
            (CAL, "supported-calendar-data") if !is_contacts => {
                "<cal:calendar-data content-type=\"text/calendar\" version=\"2.0\"/>".into()
            }
            (CARD, "max-resource-size") | (CAL, "max-resource-size") => {
                self.vault.limits.max_record_bytes.to_string()
            }
            _ => return None,
        })
    }

    /// The properties `allprop` shows for a resource.
    fn all_props(resource: &Resource) -> Vec<Prop> {
        let mut props = vec![
            Prop::new(DAV, "resourcetype"),
            Prop::new(DAV, "displayname"),
        ];
        match resource {
            Resource::Object(..) => {
                props = vec![
                    Prop::new(DAV, "resourcetype"),
                    Prop::new(DAV, "getetag"),
                    Prop::new(DAV, "getcontenttype"),
                    Prop::new(DAV, "getcontentlength"),
                ];
            }
            Resource::Book(book) => {
                if book.token.is_some() {
                    props.push(Prop::new(CS, "getctag"));
                    props.push(Prop::new(DAV, "sync-token"));
                }
                if book.kind == Kind::Calendar {
                    props.push(Prop::new(ICAL, "calendar-color"));
                }
            }
            _ => props.push(Prop::new(DAV, "current-user-principal")),
        }
        props
    }

    fn describe(&self, out: &mut Multistatus, href: &str, resource: &Resource, wanted: &Wanted) {
        let props = match wanted {
            Wanted::These(props) => props.clone(),
            Wanted::All | Wanted::Names => Self::all_props(resource),
        };
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for prop in props {
            match self.value(resource, &prop) {
                Some(_) if matches!(wanted, Wanted::Names) => found.push((prop, String::new())),
                Some(value) => found.push((prop, value)),
                None if matches!(wanted, Wanted::These(_)) => missing.push(prop),
                None => {}
            }
        }
        out.response(href, &found, &missing);
    }

    async fn propfind(
        &self,
        target: &Target,
        depth: u8,
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
        let wanted = wanted_of(root.as_ref());
        let door = &self.vault.door;
        let mut out = Multistatus::new();
        match target {
            Target::Site => {
                out_describe(self, &mut out, target, &Resource::Site, &wanted);
                if depth > 0 {
                    out_describe(self, &mut out, &Target::Root, &Resource::Root, &wanted);
                }
            }
            Target::Root => {
                out_describe(self, &mut out, target, &Resource::Root, &wanted);
                if depth > 0 {
                    for kind in [Kind::Contacts, Kind::Calendar] {
                        let home = Target::Home(kind);
                        out_describe(self, &mut out, &home, &Resource::Home(kind), &wanted);
                    }
                }
            }
            Target::Home(kind) => {
                out_describe(self, &mut out, target, &Resource::Home(*kind), &wanted);
                if depth > 0 {
                    for book in door.dav_books(self.caller, *kind)? {
                        let t = Target::Book(*kind, book.collection.clone());
                        out_describe(self, &mut out, &t, &Resource::Book(&book), &wanted);
                    }
                }
            }
            Target::Book(kind, collection) => {
                let book = door.dav_book(self.caller, collection)?;
                out_describe(self, &mut out, target, &Resource::Book(&book), &wanted);
                // A free/busy-only grant sees the calendar, never what is in it.
                if depth > 0 && !book.busy_only {
                    let (_, objects) = door.dav_list(self.caller, collection, |_| true).await?;
                    for object in &objects {
                        let t = Target::Object(*kind, collection.clone(), object.name.clone());
                        out_describe(
                            self,
                            &mut out,
                            &t,
                            &Resource::Object(*kind, object),
                            &wanted,
                        );
                    }
                }
            }
            Target::Object(kind, collection, name) => {
                let object = self.one(collection, name).await?;
                out_describe(
                    self,
                    &mut out,
                    target,
                    &Resource::Object(*kind, &object),
                    &wanted,
                );
            }
        }
        Ok(out.finish(None))
    }

    async fn one(&self, collection: &CollectionName, name: &str) -> Result<Object, DavError> {
        let mut found = self
            .vault
            .door
            .dav_get(self.caller, collection, &[name.to_owned()])
            .await?;
        found.pop().and_then(|(_, o)| o).ok_or(DavError::NotFound)
    }

    async fn get(&self, target: &Target, head: bool) -> Result<Response, DavError> {
        let Target::Object(kind, collection, name) = target else {
            // A person who opens the address in a browser learns what it is for.
            let text = format!(
                "Hearth CardDAV/CalDAV for {}. Point a contacts or calendar app at this address (see the README).\n",
                self.caller.grant.service
            );
            return Ok(plain_text(text, head));
        };
        let object = self.one(collection, name).await?;
        let etag =
            HeaderValue::from_str(&object.etag).map_err(|e| DavError::Internal(e.to_string()))?;
        let body = if head {
            Body::empty()
        } else {
            Body::from(object.text)
        };
        Ok((
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(kind.media_type()),
                ),
                (header::ETAG, etag),
            ],
            body,
        )
            .into_response())
    }

    async fn put(
        &self,
        target: &Target,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, DavError> {
        let Target::Object(kind, collection, name) = target else {
            return Err(DavError::NotAllowed(
                "PUT writes one contact or event".into(),
            ));
        };
        let text = std::str::from_utf8(body)
            .map_err(|_| DavError::BadRequest("the body is not UTF-8 text".into()))?;
        let condition = condition(headers);
        let (created, etag) = match self
            .vault
            .door
            .dav_put(self.caller, collection, name, text, &condition)
            .await
        {
            Ok(done) => done,
            Err(e @ AccessError::NoBook(_)) => {
                return Err(DavError::Condition(
                    StatusCode::CONFLICT,
                    String::new(),
                    e.to_string(),
                ));
            }
            Err(AccessError::UnsupportedComponent(m)) => {
                return Err(DavError::Condition(
                    StatusCode::FORBIDDEN,
                    "<cal:supported-calendar-component/>".into(),
                    m,
                ));
            }
            Err(AccessError::UidConflict(holder)) => {
                let ns = match kind {
                    Kind::Contacts => "card",
                    Kind::Calendar => "cal",
                };
                let href = self.href_of(&Target::Object(*kind, collection.clone(), holder.clone()));
                return Err(DavError::Condition(
                    StatusCode::CONFLICT,
                    format!(
                        "<{ns}:no-uid-conflict><d:href>{}</d:href></{ns}:no-uid-conflict>",
                        escape(href.as_str())
                    ),
                    format!("{holder} already has that UID"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        let mut response = status.into_response();
        if let Ok(etag) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, etag);
        }
        Ok(response)
    }

    async fn delete(&self, target: &Target, headers: &HeaderMap) -> Result<Response, DavError> {
        let (collection, name) = match target {
            Target::Object(_, collection, name) => (collection, name),
            Target::Book(_, collection) => {
                self.vault
                    .door
                    .dav_remove_book(self.caller, collection)
                    .await?;
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            _ => {
                return Err(DavError::Forbidden(
                    "only address books, calendars and their objects are deleted over DAV".into(),
                ));
            }
        };
        self.vault
            .door
            .dav_delete(self.caller, collection, name, &condition(headers))
            .await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn report(&self, target: &Target, body: &[u8]) -> Result<Response, DavError> {
        let root =
            parse_xml(body)?.ok_or_else(|| DavError::BadRequest("a REPORT needs a body".into()))?;
        // Principal searches (RFC 3744 §9.4, §9.5; clients use them to find people to
        // share calendars with): a vault has one person, the caller's principal, found
        // by its display name (the grant's service).
        if root.is(DAV, "principal-search-property-set") {
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:principal-search-property-set xmlns:d=\"DAV:\"><d:principal-search-property><d:prop><d:displayname/></d:prop><d:description xml:lang=\"en\">Name</d:description></d:principal-search-property></d:principal-search-property-set>\n",
            )
                .into_response());
        }
        if root.is(DAV, "principal-property-search") {
            let name = self.caller.grant.service.to_lowercase();
            let mut tests = root
                .children
                .iter()
                .filter(|c| c.is(DAV, "property-search"))
                .map(|search| {
                    let by_name = search
                        .child(DAV, "prop")
                        .is_some_and(|p| p.child(DAV, "displayname").is_some());
                    let wanted = search
                        .child(DAV, "match")
                        .map(|m| m.text.trim().to_lowercase())
                        .unwrap_or_default();
                    by_name && name.contains(&wanted)
                })
                .collect::<Vec<bool>>();
            let all_of = root.attribute("test") == Some("allof");
            let found = tests.is_empty()
                || if all_of {
                    tests.iter().all(|t| *t)
                } else {
                    tests.drain(..).any(|t| t)
                };
            let mut out = Multistatus::new();
            if found {
                out_describe(
                    self,
                    &mut out,
                    &Target::Root,
                    &Resource::Root,
                    &wanted_of(Some(&root)),
                );
            }
            return Ok(out.finish(None));
        }
        let Target::Book(kind, collection) = target else {
            return Err(DavError::Forbidden(
                "reports are answered on an address book or a calendar".into(),
            ));
        };
        let kind = *kind;
        let wanted = wanted_of(Some(&root));
        // calendar-data with expand or limit-recurrence-set (RFC 4791 §9.6.5–6).
        // limit-freebusy-set (§9.6.7) bounds the FREEBUSY of VFREEBUSY components,
        // which no calendar here holds (a calendar takes events, to-dos and journal
        // entries): there is nothing for it to cut.
        let data = root
            .child(DAV, "prop")
            .and_then(|p| p.child(CAL, "calendar-data"));
        if let Some(expand) = data.and_then(|d| d.child(CAL, "expand")) {
            let (start, end) = utc_range(expand, "expand")?;
            *self.expand.lock().expect("never poisoned") = Some(Recurrences::Expand(start, end));
        } else if let Some(limit) = data.and_then(|d| d.child(CAL, "limit-recurrence-set")) {
            let (start, end) = utc_range(limit, "limit-recurrence-set")?;
            *self.expand.lock().expect("never poisoned") = Some(Recurrences::Limit(start, end));
        }
        let door = &self.vault.door;
        let mut out = Multistatus::new();
        let object_href =
            |name: &str| self.href_of(&Target::Object(kind, collection.clone(), name.to_owned()));
        let multiget = root.is(CARD, "addressbook-multiget") || root.is(CAL, "calendar-multiget");
        if multiget {
            let hrefs = root.children.iter().filter(|c| c.is(DAV, "href")).count();
            if hrefs > MAX_MULTIGET_HREFS {
                return Err(DavError::TooManyHrefs(hrefs));
            }
            let mut names = Vec::new();
            let mut elsewhere = Vec::new();
            for h in root.children.iter().filter(|c| c.is(DAV, "href")) {
                match parse_target(h.text.trim()) {
                    Ok(Target::Object(k, c, name)) if k == kind && c == *collection => {
                        names.push(name)
                    }
                    _ => elsewhere.push(h.text.trim().to_owned()),
                }
            }
            for (name, object) in door.dav_get(self.caller, collection, &names).await? {
                match object {
                    Some(object) => out_describe(
                        self,
                        &mut out,
                        &Target::Object(kind, collection.clone(), name),
                        &Resource::Object(kind, &object),
                        &wanted,
                    ),
                    None => out.status(&object_href(&name), "404 Not Found"),
                }
            }
            for h in elsewhere {
                out.status(&h, "404 Not Found");
            }
            return Ok(out.finish(None));
        }
        if root.is(DAV, "sync-collection") {
            let token = root
                .child(DAV, "sync-token")
                .map(|t| t.text.trim().to_owned());
            let changes = door
                .dav_changes(self.caller, collection, token.as_deref())
                .await?;
            // RFC 6578 §3.7: a result over the client's limit that the server cannot
            // cut (a token names a place in the whole log, not part-way) is refused.
            if let Some(limit) = limit_of(&root, DAV)?
                && changes.changed.len() + changes.removed.len() > limit
            {
                return Err(DavError::Condition(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "<d:number-of-matches-within-limits/>".into(),
                    format!(
                        "{} changes, over the limit of {limit}: sync again without a limit",
                        changes.changed.len() + changes.removed.len()
                    ),
                ));
            }
            for object in &changes.changed {
                out_describe(
                    self,
                    &mut out,
                    &Target::Object(kind, collection.clone(), object.name.clone()),
                    &Resource::Object(kind, object),
                    &wanted,
                );
            }
            for name in &changes.removed {
                out.status(&object_href(name), "404 Not Found");
            }
            return Ok(out.finish(Some(&changes.token)));
        }
        if root.is(CAL, "free-busy-query") {
            return self.free_busy(kind, collection, &root).await;
        }
        if root.is(CARD, "addressbook-query") || root.is(CAL, "calendar-query") {
            let filter = query::Query::of(kind, &root).map_err(|e| {
                let ns = match kind {
                    Kind::Contacts => "card",
                    Kind::Calendar => "cal",
                };
                DavError::Condition(
                    StatusCode::FORBIDDEN,
                    format!("<{ns}:{}/>", e.condition),
                    e.message,
                )
            })?;
            // Filtered before the door audits: the log names what was sent.
            let admits = move |o: &Object| filter.admits(&o.text);
            let (_, mut objects) = door.dav_list(self.caller, collection, admits).await?;
            // RFC 6352 §8.6.1: at most `nresults`, and a 507 for the request-URI
            // saying the answer was cut.
            let limit = match kind {
                Kind::Contacts => limit_of(&root, CARD)?,
                Kind::Calendar => None,
            };
            let cut = limit.is_some_and(|n| objects.len() > n);
            if let Some(n) = limit {
                objects.truncate(n);
            }
            if cut {
                out.status(&self.href_of(target), "507 Insufficient Storage");
            }
            for object in &objects {
                out_describe(
                    self,
                    &mut out,
                    &Target::Object(kind, collection.clone(), object.name.clone()),
                    &Resource::Object(kind, object),
                    &wanted,
                );
            }
            return Ok(out.finish(None));
        }
        Err(DavError::Forbidden(format!(
            "the report {}:{} is not supported here",
            root.ns, root.name
        )))
    }

    /// free-busy-query (RFC 4791 §7.10): one VFREEBUSY with the busy periods of the
    /// calendar's events in the range, merged (busy wins over tentative where they
    /// overlap), nothing else of them.
    async fn free_busy(
        &self,
        kind: Kind,
        collection: &CollectionName,
        root: &Element,
    ) -> Result<Response, DavError> {
        if kind != Kind::Calendar {
            return Err(DavError::Forbidden(
                "free-busy-query is answered on a calendar".into(),
            ));
        }
        let range = root
            .child(CAL, "time-range")
            .ok_or_else(|| DavError::BadRequest("a free-busy-query needs a time-range".into()))?;
        let (start, end) = utc_range(range, "a free-busy-query's time-range")?;
        let mut periods = self
            .vault
            .door
            .dav_free_busy(self.caller, collection, start, end)
            .await?;
        periods.sort();
        let stamp = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .map(|d| d.format("%Y%m%dT%H%M%SZ").to_string())
                .unwrap_or_default()
        };
        let mut lines = Vec::new();
        for tentative in [false, true] {
            // Merged per kind; a tentative time that is also busy is said busy.
            let mut merged: Vec<(i64, i64)> = Vec::new();
            for (s, e, t) in &periods {
                if *t != tentative {
                    continue;
                }
                match merged.last_mut() {
                    Some((_, last_end)) if *s <= *last_end => *last_end = (*last_end).max(*e),
                    _ => merged.push((*s, *e)),
                }
            }
            for (s, e) in merged {
                let covered = tentative
                    && periods
                        .iter()
                        .any(|(bs, be, bt)| !bt && *bs <= s && *be >= e);
                if covered {
                    continue;
                }
                lines.push(format!(
                    "FREEBUSY;FBTYPE={}:{}/{}\r\n",
                    if tentative { "BUSY-TENTATIVE" } else { "BUSY" },
                    stamp(s),
                    stamp(e)
                ));
            }
        }
        let body = format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Hearth//Hearth//EN\r\nBEGIN:VFREEBUSY\r\nDTSTAMP:{}\r\nDTSTART:{}\r\nDTEND:{}\r\n{}END:VFREEBUSY\r\nEND:VCALENDAR\r\n",
            stamp(crate::clock::now_unix() as i64),
            stamp(start),
            stamp(end),
            lines.concat()
        );
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/calendar; charset=utf-8")],
            body,
        )
            .into_response())
    }

    async fn proppatch(&self, target: &Target, body: &[u8]) -> Result<Response, DavError> {
        let Target::Book(_, collection) = target else {
            return Err(DavError::Forbidden(
                "only an address book's or calendar's properties can be changed".into(),
            ));
        };
        let mut props = BookProps::default();
        let mut touched = Vec::new();
        let mut refused = Vec::new();
        for (set, prop) in property_updates(body)? {
            let value = set.then(|| prop.text.trim().to_owned());
            let name = Prop::new(&prop.ns, &prop.name);
            if !apply_prop(&mut props, &name, value) {
                refused.push(name);
            } else {
                touched.push(name);
            }
        }
        let mut out = Multistatus::new();
        let href = self.href_of(target);
        if refused.is_empty() {
            self.vault
                .door
                .dav_set_props(self.caller, collection, &props, None)
                .await?;
            let found: Vec<(Prop, String)> =
                touched.into_iter().map(|p| (p, String::new())).collect();
            out.response(&href, &found, &[]);
        } else {
            // All or nothing (RFC 4918 9.2): the others fail because these do.
            out.statuses(
                &href,
                &[
                    (&refused, "403 Forbidden"),
                    (&touched, "424 Failed Dependency"),
                ],
            );
        }
        Ok(out.finish(None))
    }

    async fn mkcol(&self, target: &Target, path: &str, body: &[u8]) -> Result<Response, DavError> {
        let Target::Book(kind, collection) = target else {
            return Err(DavError::Forbidden(
                "address books are made under /dav/contacts/, calendars under /dav/calendars/"
                    .into(),
            ));
        };
        // The segment the client asked for, as it asked (percent-decoded).
        let segment = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .and_then(|s| percent_decode_str(s).decode_utf8().ok())
            .map(|s| s.into_owned())
            .unwrap_or_else(|| collection.to_string());
        let mut props = BookProps::default();
        if let Some(root) = parse_xml(body)? {
            if let Some(types) = root.find(DAV, "resourcetype") {
                let wanted = match kind {
                    Kind::Contacts => types.child(CARD, "addressbook").is_some(),
                    Kind::Calendar => types.child(CAL, "calendar").is_some(),
                };
                if !wanted {
                    return Err(DavError::Forbidden(
                        "only address books (under contacts) and calendars (under calendars) can be made".into(),
                    ));
                }
            }
            for set in root.children.iter().filter(|c| c.is(DAV, "set")) {
                for prop in set
                    .children
                    .iter()
                    .filter(|c| c.is(DAV, "prop"))
                    .flat_map(|p| &p.children)
                {
                    if prop.is(DAV, "resourcetype") {
                        continue;
                    }
                    if prop.is(CAL, "supported-calendar-component-set") {
                        let comps: Vec<String> = prop
                            .children
                            .iter()
                            .filter(|c| c.is(CAL, "comp"))
                            .filter_map(|c| c.attribute("name"))
                            .map(str::to_ascii_uppercase)
                            .filter(|n| matches!(n.as_str(), "VEVENT" | "VTODO" | "VJOURNAL"))
                            .collect();
                        if !comps.is_empty() {
                            props.components = Some(Some(comps.join(",")));
                        }
                        continue;
                    }
                    // Other properties (a time zone, components) are not kept.
                    apply_prop(
                        &mut props,
                        &Prop::new(&prop.ns, &prop.name),
                        Some(prop.text.trim().to_owned()),
                    );
                }
            }
        }
        self.vault
            .door
            .dav_set_props(self.caller, collection, &props, Some(&segment))
            .await?;
        Ok(StatusCode::CREATED.into_response())
    }
}

fn out_describe(
    dav: &Dav,
    out: &mut Multistatus,
    target: &Target,
    resource: &Resource,
    wanted: &Wanted,
) {
    dav.describe(out, &dav.href_of(target), resource, wanted);
}

/// Puts a property into a collection's changes; false if it cannot be set.
fn apply_prop(props: &mut BookProps, prop: &Prop, value: Option<String>) -> bool {
    let value = value.filter(|v| !v.is_empty());
    if prop.is(DAV, "displayname") {
        props.display_name = Some(value);
    } else if prop.is(ICAL, "calendar-color") {
        props.color = Some(value);
    } else if prop.is(ICAL, "calendar-order") {
        // A number; anything else would be shown back as it came.
        if value
            .as_deref()
            .is_some_and(|v| v.trim().parse::<i64>().is_err())
        {
            return false;
        }
        props.order = Some(value.map(|v| v.trim().to_owned()));
    } else if prop.is(CARD, "addressbook-description") || prop.is(CAL, "calendar-description") {
        props.description = Some(value);
    } else {
        return false;
    }
    true
}

fn condition(headers: &HeaderMap) -> Condition {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    Condition {
        if_match: text(header::IF_MATCH),
        if_none_match_any: text(header::IF_NONE_MATCH).as_deref() == Some("*"),
    }
}

/// The `limit/nresults` of a report (in namespace `ns`), if it has one.
fn limit_of(root: &Element, ns: &str) -> Result<Option<usize>, DavError> {
    let Some(limit) = root.child(ns, "limit") else {
        return Ok(None);
    };
    let text = limit
        .child(ns, "nresults")
        .map(|n| n.text.trim())
        .unwrap_or_default();
    text.parse::<usize>()
        .map(Some)
        .map_err(|_| DavError::BadRequest(format!("limit nresults {text:?} is not a number")))
}

/// The `start` and `end` of an element (an `expand`, a free-busy time-range), both
/// required, as UTC seconds.
fn utc_range(element: &Element, what: &str) -> Result<(i64, i64), DavError> {
    let at = |name: &str| {
        element.attribute(name).and_then(parse_utc).ok_or_else(|| {
            DavError::BadRequest(format!(
                "{what} needs a {name} as a UTC date-time (20260101T000000Z)"
            ))
        })
    };
    Ok((at("start")?, at("end")?))
}

/// `20240101T000000Z` as seconds since 1970.
fn parse_utc(text: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

pub mod files;
#[doc(hidden)]
pub(crate) mod fuzzing;
pub(crate) mod locks;
mod query;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_from_paths_and_urls() {
        let c = CollectionName::parse("contacts").unwrap();
        assert_eq!(parse_target("/dav/").unwrap(), Target::Root);
        assert_eq!(parse_target("/dav").unwrap(), Target::Root);
        assert_eq!(
            parse_target("/dav/contacts/contacts/a%20b.vcf").unwrap(),
            Target::Object(Kind::Contacts, c.clone(), "a b.vcf".into())
        );
        assert_eq!(
            parse_target("http://127.0.0.1:7000/dav/contacts/contacts/").unwrap(),
            Target::Book(Kind::Contacts, c)
        );
        // Another kind's or the system's name, or a client's own (a UUID), names a
        // collection of this kind's family, never that one.
        let book = |path: &str| match parse_target(path).unwrap() {
            Target::Book(_, c) => c.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(book("/dav/contacts/calendar/"), "contacts-calendar");
        assert_eq!(book("/dav/calendars/_access/"), "calendar-access");
        assert_eq!(
            book("/dav/calendars/3F2A9C1E-77B0-4D3A-9E52-0C1D2E3F4A5B/"),
            "calendar-3f2a9c1e-77b0-4d3a-9e52-0c1d2e3f4a5b"
        );
        assert_eq!(
            book("/dav/calendars/Work%20%26%20Play/"),
            "calendar-work-play"
        );
        assert_eq!(book("/dav/calendars/calendar-home/"), "calendar-home");
        let long = book(&format!("/dav/calendars/{}/", "x".repeat(200)));
        assert!(
            long.len() <= 63 && long.starts_with("calendar-xxx"),
            "{long}"
        );
        assert_ne!(long, book(&format!("/dav/calendars/{}/", "x".repeat(201))));
        assert!(parse_target("/dav/calendars/%20%2F/").is_err());
        assert!(parse_target("/dav/contacts/contacts/x/y").is_err());
        let name = "odd name/@é.vcf";
        let href = href_of(&Target::Object(
            Kind::Contacts,
            CollectionName::parse("contacts").unwrap(),
            name.into(),
        ));
        assert_eq!(
            parse_target(&href).unwrap(),
            Target::Object(
                Kind::Contacts,
                CollectionName::parse("contacts").unwrap(),
                name.into()
            )
        );
    }

    /// What a DAV client is told of a failure inside the node: a full disk is `507`
    /// (RFC 4918), anything else `500` without the internal message; a throttle or a
    /// full stream budget keeps its status.
    #[tokio::test]
    async fn failures_inside_the_node_keep_their_status_and_hide_their_message() {
        use crate::collections::CollectionError;
        use crate::store::StoreError;
        let body = |e: DavError| async move {
            let answer = e.into_response();
            let status = answer.status().as_u16();
            let bytes = axum::body::to_bytes(answer.into_body(), 4096)
                .await
                .unwrap();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        };
        let full = DavError::from(AccessError::Store(StoreError::DiskFull));
        assert_eq!(body(full).await.0, 507);
        let secret = "sled failed at /home/someone/.local/share/hearth/store/blobs";
        let internal = DavError::from(AccessError::Collection(CollectionError::Document {
            collection: "contacts".into(),
            reason: secret.into(),
        }));
        let (status, text) = body(internal).await;
        assert_eq!(status, 500);
        assert!(
            !text.contains("someone") && !text.contains("sled"),
            "{text}"
        );
        let streams = DavError::from(AccessError::StreamsFull(256));
        assert_eq!(body(streams).await.0, 503);
        assert_eq!(body(DavError::TooManyHrefs(5000)).await.0, 413);
    }

    #[test]
    fn xml_bodies_are_read_with_namespaces_and_refused_when_broken() {
        let body = br#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav"><D:prop><D:getetag/><C:address-data/></D:prop></D:propfind>"#;
        let root = parse_xml(body).unwrap().unwrap();
        assert!(root.is(DAV, "propfind"));
        let Wanted::These(props) = wanted_of(Some(&root)) else {
            panic!("props expected")
        };
        assert_eq!(
            props,
            vec![Prop::new(DAV, "getetag"), Prop::new(CARD, "address-data")]
        );
        assert!(parse_xml(b"<D:propfind xmlns:D=\"DAV:\"><D:prop>").is_err());
        assert!(parse_xml(b"<a><b></a>").is_err());
        // Names the answer could not write back (found by the `dav_xml` fuzz target).
        for body in [
            "<d:propfind xmlns:d=\"DAV:\"><d:prop><xmlns:a:getctag/></d:prop></d:propfind>",
            "<d:propfind xmlns:d=\"DAV:\"><d:prop><xml:lang/></d:prop></d:propfind>",
            "<d:propfind xmlns:d=\"DAV:\"><d:prop><d:a:b/></d:prop></d:propfind>",
            "<d:propfind xmlns:d=\"DAV:\"><d:prop><d:get\u{12}etag/></d:prop></d:propfind>",
            "<d:propfind xmlns:d=\"DAV:\" xmlns:x=\"urn:\0\"><d:prop><x:a/></d:prop></d:propfind>",
            "<d:href xmlns:d=\"DAV:\">/dav/&#20;</d:href>",
            "<d:propfind xmlns:d=\"DAV:\"><d:prop></getetag/></d:prop></d:propfind>",
        ] {
            assert!(parse_xml(body.as_bytes()).is_err(), "{body}");
        }
        // A property in no namespace is written back without a prefix.
        assert_eq!(Prop::new("", "a").element(""), "<a xmlns=\"\"/>");
        assert_eq!(Prop::new("", "a").element("b"), "<a xmlns=\"\">b</a>");
        assert!(parse_xml(b"").unwrap().is_none());
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse_xml(deep.as_bytes()).is_err());
        let text = parse_xml(b"<d:href xmlns:d=\"DAV:\">/a&amp;b&#33;</d:href>")
            .unwrap()
            .unwrap();
        assert_eq!(text.text, "/a&b!");
    }

    #[test]
    fn time_ranges_are_utc() {
        assert_eq!(parse_utc("19700101T000100Z"), Some(60));
        assert_eq!(parse_utc("2024-01-01"), None);
    }
}
