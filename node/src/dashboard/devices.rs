//! The overview and the devices page: status, devices, pairing, renaming and removing.

use super::*;

pub(super) struct DeviceRow {
    id: String,
    name: String,
    state: &'static str,
    last_sync: String,
    this_device: bool,
    removed: bool,
}

pub(super) fn device_rows(devices: &[DeviceInfo], now: u64) -> Vec<DeviceRow> {
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

pub(super) struct Lan {
    url: String,
    fingerprint: String,
}

pub(super) struct Invite {
    code: String,
    qr: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub(super) struct OverviewPage {
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
    /// "epoch N", and the recovery kit's id or why there is none.
    keys: String,
    kit: String,
    /// Each backup host in a line, or how to add one.
    backups: Vec<String>,
    /// Collections with records for the person to decide (edited apart on two
    /// devices), and how many.
    conflicts: Vec<(String, String)>,
}

pub(super) struct ArrivingRow {
    id: String,
    received: u64,
    size: u64,
    words: String,
}

pub(super) async fn overview(State(vault): State<AppState>, visit: Visit) -> Response {
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
    if !status.key_held {
        warnings.push(format!(
            "This device has not received the vault's current keys (epoch {}) yet: it makes no grants until it syncs with a device that has them.",
            status.key_epoch
        ));
    }
    for g in &status.expiring_grants {
        warnings.push(format!(
            "The grant for {} expires {}: extend it on the Grants page (or `hearth extend {} --expires 1y`) and it keeps its token and app password.",
            g.service,
            local_time(g.expires_at),
            g.id
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
    let keys = match status.key_epoch {
        0 => "epoch 0 (the vault's first keys)".to_owned(),
        n => format!("epoch {n} (made when a device was removed, a kit made, or on demand)"),
    };
    let kit = match &status.recovery_kit {
        Some(kit) => format!("{kit} (every key of the vault is sealed to it)"),
        None => "none yet: make one with hearth recovery-kit".to_owned(),
    };
    // What this device last knew of each host (the page does not wait for them).
    let hosts = {
        let v = vault.clone();
        tokio::task::spawn_blocking(move || crate::backup::status(&v))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|s| s.hosts)
            .unwrap_or_default()
    };
    let mut backups: Vec<String> = Vec::new();
    for h in &hosts {
        // A PeerId is base58, ASCII: its last 8 characters are its last 8 bytes.
        let short = &h.peer[h.peer.len().saturating_sub(8)..];
        let state = match (&h.error, h.up_to_date) {
            (Some(e), _) => {
                warnings.push(format!("Backup host …{short}: {e}"));
                format!("not up to date: {e}")
            }
            (None, true) => "up to date".to_owned(),
            (None, false) => "not up to date yet (an upload is due)".to_owned(),
        };
        backups.push(format!(
            "…{short}: {state}; last upload {}; {} of {} used",
            ago(h.last_upload, now),
            bytes(h.bytes),
            bytes(h.quota)
        ));
    }
    if backups.is_empty() {
        backups.push(
            "no backup host: with a recovery kit, add one with hearth backup add CODE (README, \"Backups\")"
                .to_owned(),
        );
    }
    let conflicts = status
        .to_decide
        .iter()
        .map(|d| {
            let words = match d.records {
                1 => "1 record to decide".to_owned(),
                n => format!("{n} records to decide"),
            };
            (d.collection.clone(), words)
        })
        .collect();
    page(&OverviewPage {
        keys,
        kit,
        backups,
        conflicts,
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
pub(super) struct DevicesPage {
    csrf: String,
    devices: Vec<DeviceRow>,
    invite: Option<Invite>,
    mesh: bool,
}

pub(super) async fn devices_page(State(vault): State<AppState>, visit: Visit) -> Response {
    render_devices(&vault, visit, None).await
}

pub(super) async fn render_devices(
    vault: &AppState,
    visit: Visit,
    invite: Option<Invite>,
) -> Response {
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

pub(super) async fn pair(State(vault): State<AppState>, Posted { visit, .. }: Posted) -> Response {
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

pub(super) async fn remove_device(
    State(vault): State<AppState>,
    Path(peer): Path<String>,
    _: Posted,
) -> Response {
    match owner::device_remove(&vault, &peer).await {
        Ok(()) => Redirect::to("/devices").into_response(),
        Err(e) => failed(e),
    }
}

pub(super) async fn rename_device(
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
