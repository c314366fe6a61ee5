//! The grants pages: the list, the form and its preview, a new grant, revoking.

use super::*;

pub(super) struct GrantRow {
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
    /// Active or expired (not revoked, not unbound): it can be given more time.
    extendable: bool,
    app_password: bool,
}

pub(super) fn scope_words(scope: &Scope) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut read = Vec::new();
    let mut write = Vec::new();
    let mut filter = Vec::new();
    for (key, c) in &scope.collections {
        let name = hearth_protocol::scope::Key::of(key).describe();
        if let Some(fields) = &c.read {
            read.push(format!("{name}: {fields}"));
        }
        if let Some(fields) = &c.write {
            write.push(format!("{name}: {fields}"));
        }
        if c.free_busy && c.read.is_none() {
            read.push(format!("{name}: when it is busy, nothing else"));
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

pub(super) fn grant_row(g: &GrantInfo, now: u64) -> GrantRow {
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
        extendable: matches!(g.status, GrantStatus::Active | GrantStatus::Expired),
        app_password: g.app_password,
    }
}

#[derive(Template)]
#[template(path = "grants.html")]
pub(super) struct GrantsPage {
    csrf: String,
    grants: Vec<GrantRow>,
    /// What the form offers to read or write: collections, families and fields that
    /// exist (`contacts`, `calendar*`, `contacts.email`).
    scopes: Vec<String>,
    /// What it offers to filter by: the folders of the files (`path^=/Photos`).
    filters: Vec<String>,
}

/// Records of each collection looked at for the form's field names.
const FIELD_SAMPLE: usize = 50;
/// Folders offered as filters.
const FOLDERS_OFFERED: usize = 200;

/// What exists to grant: each user collection, the family of every `NAME-…` one, the
/// fields of a sample of its records; the folders of the files.
fn grantable(v: &Vault) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let mut scopes: Vec<String> = Vec::new();
    let mut filters: Vec<String> = Vec::new();
    for name in v
        .collections
        .names()?
        .into_iter()
        .filter(|n| !n.is_system())
    {
        if let Some((family, _)) = name.as_str().split_once('-') {
            let family = format!("{family}*");
            if !scopes.contains(&family) {
                scopes.push(family);
            }
        }
        scopes.push(name.to_string());
        let mut fields: Vec<String> = Vec::new();
        v.collections.page(&name, None, FIELD_SAMPLE, |record| {
            let Value::Object(record) = record else {
                return None;
            };
            for key in record.keys().filter(|k| *k != "id") {
                if fields.len() < 64 && !fields.contains(key) {
                    fields.push(key.clone());
                }
            }
            Some(Value::Null)
        })?;
        fields.sort();
        scopes.extend(fields.into_iter().map(|f| format!("{name}.{f}")));
    }
    // The folders, from the root down (each folder's record lists its folders).
    let mut queue = std::collections::VecDeque::from([crate::files::FilePath::root()]);
    while let Some(folder) = queue.pop_front() {
        if filters.len() >= FOLDERS_OFFERED {
            break;
        }
        let Some(entry) = crate::files::stat(&v.collections, &folder)? else {
            continue;
        };
        for (child, is_folder) in entry.entries() {
            if is_folder && let Ok(path) = folder.join(&child) {
                filters.push(format!("path^={path}"));
                queue.push_back(path);
            }
        }
    }
    filters.truncate(FOLDERS_OFFERED);
    filters.sort();
    Ok((scopes, filters))
}

pub(super) async fn grants_page(State(vault): State<AppState>, visit: Visit) -> Response {
    let grants = match owner::grants(&vault).await {
        Ok(g) => g,
        Err(e) => return failed(e),
    };
    let (scopes, filters) = match owner::blocking(&vault, grantable).await {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    let now = crate::clock::now_unix();
    page(&GrantsPage {
        csrf: visit.csrf,
        grants: grants.iter().rev().map(|g| grant_row(g, now)).collect(),
        scopes,
        filters,
    })
}

/// The grant form's fields, as a request to the API.
pub(super) struct GrantForm {
    service: String,
    purpose: String,
    read: String,
    write: String,
    /// Calendars (or families) the service may only ask the busy times of.
    free_busy: String,
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
            free_busy: field("free_busy"),
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
            free_busy: some(&self.free_busy),
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
pub(super) fn grant_form(form: &HashMap<String, String>) -> Result<GrantForm, Response> {
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

pub(super) struct PreviewCollection {
    name: String,
    shown: usize,
    hidden: usize,
    records: Vec<String>,
}

#[derive(Template)]
#[template(path = "grant_preview.html")]
pub(super) struct GrantPreviewPage {
    csrf: String,
    form: GrantForm,
    words: Vec<String>,
    collections: Vec<PreviewCollection>,
}

/// "every field", or "the fields a, b" / "the field a".
pub(super) fn field_words(fields: &hearth_protocol::scope::Fields) -> String {
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
pub(super) const PREVIEW_RECORDS: usize = 20;

pub(super) async fn preview_grant(
    State(vault): State<AppState>,
    Posted { visit, form }: Posted,
) -> Response {
    let form = match grant_form(&form) {
        Ok(form) => form,
        Err(r) => return r,
    };
    let scope = match owner::grant_scope(&form.request()) {
        Ok(s) => s,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                "That scope does not work",
                e.message(),
            );
        }
    };
    // Empty: the default, which is a year for an app password (a phone set up once).
    let expiry = match (form.expires.is_empty(), form.app_password) {
        (true, true) => "365d",
        (true, false) => "30d",
        (false, _) => form.expires.as_str(),
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
    let existing = vault.collections.names().unwrap_or_default();
    for (key, c) in &scope.collections {
        let name = hearth_protocol::scope::Key::of(key).describe();
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
        if c.free_busy && c.read.is_none() {
            words.push(format!(
                "{} may ask when you are busy in {name}: busy and free times only, never \
                 what an event is, where, or with whom.",
                form.service
            ));
        }
        if let Some(write) = &c.write {
            words.push(format!(
                "{} may change {} of {filter} in {name}, and create records there.",
                form.service,
                field_words(write)
            ));
        }
        // A family previews every collection it reaches now.
        let members: Vec<&CollectionName> = existing
            .iter()
            .filter(|n| !n.is_system() && hearth_protocol::scope::Key::of(key).covers(n.as_str()))
            .collect();
        let named = CollectionName::parse(key).ok();
        let previewed: Vec<&CollectionName> = match &named {
            Some(one) => vec![one],
            None => members,
        };
        for collection in previewed.into_iter().filter(|_| c.read.is_some()) {
            let name = collection.to_string();
            let records = vault.collections.records(collection).unwrap_or_default();
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
                name,
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
pub(super) struct GrantCreatedPage {
    csrf: String,
    id: String,
    service: String,
    token: String,
    password: Option<String>,
    api_addr: String,
    phone: Option<PhoneView>,
}

/// How a phone connects, as the page shows it.
pub(super) struct PhoneView {
    url: Option<String>,
    fingerprint: Option<String>,
    user: String,
    /// The QR code (SVG) of the DAVx⁵ link.
    qr: String,
    /// `data:` URL of the configuration profile, to download.
    mobileconfig: Option<String>,
    note: Option<String>,
}

fn phone_view(phone: hearth_protocol::api::PhoneSetup) -> PhoneView {
    let qr = phone
        .link
        .as_deref()
        .and_then(|link| qrcode::QrCode::new(link.as_bytes()).ok())
        .map(|q| {
            q.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(220, 220)
                .build()
        })
        .unwrap_or_default();
    PhoneView {
        url: phone.url,
        fingerprint: phone.fingerprint,
        user: phone.user,
        qr,
        mobileconfig: phone
            .mobileconfig
            .map(|b64| format!("data:application/x-apple-aspen-config;base64,{b64}")),
        note: phone.note,
    }
}

pub(super) async fn create_grant(
    State(vault): State<AppState>,
    Posted { visit, form }: Posted,
) -> Response {
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
            phone: created.phone.map(phone_view),
        }),
        Err(e) => failed(e),
    }
}

#[derive(Template)]
#[template(path = "revoked.html")]
pub(super) struct RevokedPage {
    csrf: String,
    service: String,
    accesses: u64,
    refused: u64,
    first: String,
    last: String,
    collections: Vec<hearth_protocol::api::SeenCollection>,
}

/// The extend form of a grant's row: a new expiry from now, same token and password.
pub(super) async fn extend_grant(
    State(vault): State<AppState>,
    Path(id): Path<String>,
    Posted { form, .. }: Posted,
) -> Response {
    let expires = form.get("expires").cloned().unwrap_or_default();
    match owner::grant_extend(&vault, id, hearth_protocol::api::ExtendRequest { expires }).await {
        Ok(_) => Redirect::to("/grants").into_response(),
        Err(e) => failed(e),
    }
}

pub(super) async fn revoke_grant(
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
