//! `hearth grant`, `grants`, `revoke` and `audit`: grants and what they did.

use super::*;

pub(super) async fn grant(
    home: &Home,
    json: bool,
    client: &Client,
    request: GrantRequest,
    mobileconfig: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let created: GrantCreated = client
        .json(
            home,
            client.request(Method::POST, "/v1/grants").json(&request),
        )
        .await?;
    for warning in &created.warnings {
        note(format!("warning: {warning}"));
    }
    if let Some(path) = &mobileconfig {
        match created.phone.as_ref().and_then(|p| p.mobileconfig.as_ref()) {
            Some(profile) => {
                let bytes = data_encoding::BASE64
                    .decode(profile.as_bytes())
                    .context("the node sent a profile that is not base64")?;
                hearth_node::home::write_file_atomic(path, &bytes, 0o600)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                note(format!(
                    "wrote {}: open it on the iPhone, iPad or Mac (it holds the password: delete it afterwards)",
                    path.display()
                ));
            }
            None => note(
                "warning: no configuration profile was made: the node does not serve the LAN (`hearth up --lan`)",
            ),
        }
    }
    if json {
        out_json(&created)?;
    } else {
        // The token first: it is shown once, and a reader that stops early
        // (`| head -1`) must still get it.
        out(format!("token: {}", created.token))?;
        if let Some(password) = &created.password {
            out(format!("app password: {password}"))?;
        }
        if let Some(phone) = &created.phone {
            say_phone(phone)?;
        }
        let expires = match created.expires_at {
            Some(t) => format!("expires {}", when(t)),
            None => "never expires".to_owned(),
        };
        out(format!("grant {} ({expires})", created.id))?;
        note(
            "Give the token to the service; it reads with `Authorization: Bearer <token>` at /v1/view.",
        );
    }
    Ok(())
}

/// How a phone connects: the address, the certificate, a QR code DAVx⁵ reads.
fn say_phone(phone: &hearth_protocol::api::PhoneSetup) -> anyhow::Result<()> {
    match &phone.url {
        Some(url) => {
            out(format!(
                "phone address: {url} (user name {}, any works)",
                phone.user
            ))?;
            if let Some(fp) = &phone.fingerprint {
                out(format!(
                    "certificate sha-256: {fp} (accept it only if the phone shows this)"
                ))?;
            }
            if let Some(link) = &phone.link
                && let Ok(qr) = qrcode::QrCode::new(link.as_bytes())
            {
                note(
                    "On Android, scan this with DAVx⁵ (or the camera) to add the account; on an iPhone, use --mobileconfig FILE:",
                );
                note(
                    qr.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build(),
                );
            }
        }
        None => {
            if let Some(text) = &phone.note {
                note(format!("phone: {text}"));
            }
        }
    }
    Ok(())
}

pub(super) async fn list(home: &Home, json: bool, client: &Client) -> anyhow::Result<()> {
    let grants: Vec<GrantInfo> = client
        .json(home, client.request(Method::GET, "/v1/grants"))
        .await?;
    if json {
        out_json(&grants)?;
    } else {
        for g in &grants {
            print_grant(g)?;
        }
    }
    Ok(())
}

pub(super) async fn revoke(
    home: &Home,
    json: bool,
    client: &Client,
    grant_id: String,
) -> anyhow::Result<()> {
    let path = format!("/v1/grants/{}/revoke", seg(&grant_id));
    let answer: RevokeResponse = client
        .json(home, client.request(Method::POST, &path))
        .await?;
    if json {
        out_json(&answer)?;
    } else {
        print_revoked(&grant_id, &answer)?;
    }
    Ok(())
}

pub(super) async fn extend(
    home: &Home,
    json: bool,
    client: &Client,
    grant_id: String,
    expires: String,
) -> anyhow::Result<()> {
    let path = format!("/v1/grants/{}/extend", seg(&grant_id));
    let grant: GrantInfo = client
        .json(
            home,
            client
                .request(Method::POST, &path)
                .json(&ExtendRequest { expires }),
        )
        .await?;
    if json {
        return out_json(&grant);
    }
    let until = match grant.expires_at {
        Some(t) => format!("expires {} ({})", local_time(t), when(t)),
        None => "never expires".to_owned(),
    };
    out(format!(
        "grant {} ({}) now {until}; {} the same.",
        grant.id,
        grant.service,
        if grant.app_password {
            "its token and app password stay"
        } else {
            "its token stays"
        }
    ))?;
    if let Some(t) = grant.token_expires_at
        && grant.expires_at.is_none_or(|e| e > t)
    {
        note(format!(
            "note: this grant's token was made before grants could be extended and still stops {} ({}){}; for longer, make a new grant.",
            local_time(t),
            when(t),
            if grant.app_password {
                "; its app password follows the new date"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

pub(super) async fn audit(
    home: &Home,
    json: bool,
    client: &Client,
    grant: Option<String>,
    verify: bool,
) -> anyhow::Result<()> {
    if verify {
        let answer: VerifyResponse = client
            .json(home, client.request(Method::GET, "/v1/audit/verify"))
            .await?;
        if !answer.ok {
            bail!(
                "the audit log does not verify at entry {}: {}",
                answer.entry.as_deref().unwrap_or("?"),
                answer.reason.as_deref().unwrap_or("?")
            );
        }
        if json {
            out_json(&answer)?;
        } else {
            out(format!(
                "the audit log verifies: {} entries",
                answer.entries.unwrap_or(0)
            ))?;
        }
    } else {
        let path = match &grant {
            Some(g) => format!("/v1/audit?grant={}", seg(g)),
            None => "/v1/audit".to_owned(),
        };
        let entries: Vec<AuditEntry> = client
            .json(home, client.request(Method::GET, &path))
            .await?;
        if json {
            out_json(&entries)?;
        } else {
            for e in &entries {
                print_audit_entry(e)?;
            }
        }
    }
    Ok(())
}

/// `contacts.name, contacts.email` or `notes` (all fields); a family in words
/// (`summary of calendar and every calendar-… collection (also ones made later)`).
pub(super) fn describe_fields(scope: &Scope, write: bool) -> String {
    let mut parts = Vec::new();
    for (key, c) in &scope.collections {
        let fields = if write { &c.write } else { &c.read };
        let name = hearth_protocol::scope::Key::of(key).describe();
        match fields {
            None => {}
            Some(Fields::All) => parts.push(name),
            Some(Fields::Only(paths)) => {
                let fields: Vec<String> = paths.iter().map(ToString::to_string).collect();
                parts.push(match hearth_protocol::scope::Key::of(key) {
                    hearth_protocol::scope::Key::One(_) => fields
                        .iter()
                        .map(|f| format!("{key}.{f}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    hearth_protocol::scope::Key::Family(_) => {
                        format!("{} of {name}", fields.join(", "))
                    }
                });
            }
        }
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

pub(super) fn print_grant(g: &GrantInfo) -> anyhow::Result<()> {
    let expires = match (g.revoked_at, g.expires_at) {
        (Some(t), _) => format!("revoked {} ({})", local_time(t), when(t)),
        (None, e) => match e {
            Some(t) if t <= hearth_node::clock::now_unix() => {
                format!("expired {} ({})", local_time(t), when(t))
            }
            Some(t) => format!("expires {} ({})", local_time(t), when(t)),
            None => "never expires".to_owned(),
        },
    };
    let used = g.last_used.map_or("never used".to_owned(), |t| {
        format!("last used {} ({})", local_time(t), when(t))
    });
    out(format!(
        "{}\t{}\t{}\t{expires}\t{used}",
        g.id,
        g.service,
        g.status.as_str()
    ))?;
    out(format!("    read:  {}", describe_fields(&g.scope, false)))?;
    out(format!("    write: {}", describe_fields(&g.scope, true)))?;
    let busy: Vec<String> = g
        .scope
        .collections
        .iter()
        .filter(|(_, c)| c.free_busy)
        .map(|(k, _)| hearth_protocol::scope::Key::of(k).describe())
        .collect();
    if !busy.is_empty() {
        out(format!("    free/busy only: {}", busy.join(", ")))?;
    }
    let filters: std::collections::BTreeSet<String> = g
        .scope
        .collections
        .values()
        .flat_map(|c| c.filter.iter().map(ToString::to_string))
        .collect();
    if !filters.is_empty() {
        out(format!(
            "    where: {}",
            filters.into_iter().collect::<Vec<_>>().join(" and ")
        ))?;
    }
    if let Some(to) = &g.to {
        out(format!("    only from: {to}"))?;
    }
    if !g.purpose.is_empty() {
        out(format!("    purpose: {}", g.purpose))?;
    }
    Ok(())
}

pub(super) fn print_revoked(grant_id: &str, answer: &RevokeResponse) -> anyhow::Result<()> {
    let seen = &answer.seen;
    out(format!(
        "revoked grant {grant_id}: its next request is refused here, and on your other devices once they sync."
    ))?;
    out(format!(
        "What {} already saw and did ({}):",
        answer.grant.service,
        count(seen.accesses, "audited access")
    ))?;
    for c in &seen.collections {
        out(format!(
            "  {}: {} read, {} pushed by events, fields {:?}",
            c.collection,
            count(c.record_reads, "record"),
            count(c.deliveries, "record"),
            c.fields
        ))?;
        if c.writes > 0 {
            out(format!(
                "  {}: {}, fields {:?}, records {:?}",
                c.collection,
                count(c.writes, "write"),
                c.written_fields,
                c.written_ids
            ))?;
        }
    }
    if seen.refused > 0 {
        out(format!("  {} refused", count(seen.refused, "request")))?;
    }
    out("Revocation cannot take back what was already sent.")
}

pub(super) fn print_audit_entry(e: &AuditEntry) -> anyhow::Result<()> {
    // A read that found nothing (a missing id, or one the grant cannot see) is a
    // probe: say so rather than "0 records".
    let what = if e.reason.as_deref() == Some("not_found") && e.records == 0 {
        "found nothing".to_owned()
    } else {
        format!("{}\tfields {:?}", count(e.records, "record"), e.fields)
    };
    let mut line = format!(
        "{}\t{}\t{}\t{} {}\t{what}",
        local_time(e.at),
        e.grant,
        e.service,
        e.operation,
        e.collection,
    );
    if !e.ids.is_empty() {
        line.push_str(&format!("\tids {:?}", e.ids));
    }
    if let Some(reason) = &e.reason {
        line.push_str(&format!("\treason {reason}"));
    }
    if let Some(count) = e.count {
        line.push_str(&format!(" ×{count}"));
    }
    out(line)
}
