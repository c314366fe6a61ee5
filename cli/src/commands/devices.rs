//! `hearth status`, `pair`, `devices`, `keys` and `dashboard`: this node, its devices,
//! the vault's key epochs and the way into the dashboard.

use super::*;

pub(super) async fn dashboard(
    home: &Home,
    json: bool,
    client: &Client,
    lan: bool,
) -> anyhow::Result<()> {
    let path = if lan {
        "/v1/dashboard/login?lan=true"
    } else {
        "/v1/dashboard/login"
    };
    let link: Value = client
        .json(home, client.request(Method::POST, path))
        .await?;
    if json {
        out_json(&link)?;
    } else {
        let url = link["url"].as_str().unwrap_or_default();
        out(url.to_owned())?;
        match link["fingerprint"].as_str() {
            Some(fp) => note(format!(
                "Open it in a browser on a machine of your LAN; it works once, for 10 minutes. The browser warns about the certificate: go on only if it shows SHA-256 {fp}."
            )),
            None => note("Open it in a browser on this device; it works once, for 10 minutes."),
        }
    }
    Ok(())
}

pub(super) async fn status(home: &Home, json: bool, client: &Client) -> anyhow::Result<()> {
    let status: StatusResponse = client
        .json(home, client.request(Method::GET, "/v1/status"))
        .await?;
    if json {
        out_json(&status)?;
    } else {
        print_status(&status)?;
    }
    Ok(())
}

pub(super) async fn pair(home: &Home, json: bool, client: &Client) -> anyhow::Result<()> {
    let invite: InviteResponse = client
        .json(home, client.request(Method::POST, "/v1/devices/invite"))
        .await?;
    if json {
        out_json(&invite)?;
    } else {
        out(&invite.code)?;
        note("");
        note(format!(
            "On the new device, with an empty HOME:  hearth join {}",
            invite.code
        ));
        note("The code works once, within 10 minutes. Treat it like a password.");
        print_qr(&invite.code);
    }
    Ok(())
}

pub(super) async fn list(home: &Home, json: bool, client: &Client) -> anyhow::Result<()> {
    let devices: Vec<DeviceInfo> = client
        .json(home, client.request(Method::GET, "/v1/devices"))
        .await?;
    if json {
        out_json(&devices)?;
    } else {
        print_devices(&devices)?;
    }
    Ok(())
}

pub(super) async fn rename(
    home: &Home,
    json: bool,
    client: &Client,
    device: String,
    name: String,
) -> anyhow::Result<()> {
    let peer_id = device_id(home, client, &device).await?;
    client
        .send(
            home,
            client
                .request(Method::PATCH, &format!("/v1/devices/{}", seg(&peer_id)))
                .json(&serde_json::json!({ "name": name })),
        )
        .await?;
    if json {
        out_json(&serde_json::json!({ "id": peer_id, "name": name.trim() }))?;
    } else {
        out(format!("device {peer_id} is now called {:?}", name.trim()))?;
    }
    Ok(())
}

pub(super) async fn remove(
    home: &Home,
    json: bool,
    client: &Client,
    device: String,
) -> anyhow::Result<()> {
    let peer_id = device_id(home, client, &device).await?;
    let kit_before: hearth_protocol::api::KitInfo = client
        .json(home, client.request(Method::GET, "/v1/recovery"))
        .await?;
    client
        .send(
            home,
            client.request(Method::DELETE, &format!("/v1/devices/{}", seg(&peer_id))),
        )
        .await?;
    let keys: KeysInfo = client
        .json(home, client.request(Method::GET, "/v1/keys"))
        .await?;
    // A kit made on the removed device no longer counts (it could have kept the
    // secret): the vault needs a new one.
    let kit_after: hearth_protocol::api::KitInfo = client
        .json(home, client.request(Method::GET, "/v1/recovery"))
        .await?;
    let kit_dropped = kit_before
        .kit
        .filter(|before| kit_after.kit.as_ref() != Some(before));
    if json {
        out_json(&serde_json::json!({
            "id": peer_id,
            "removed": true,
            "epoch": keys.epoch,
            "recovery_kit_dropped": kit_dropped,
        }))?;
    } else {
        if let Some(kit) = &kit_dropped {
            note(format!(
                "The recovery kit {kit} was made on the removed device and no longer counts: make a new one with `hearth recovery-kit`."
            ));
        }
        out(format!(
            "removed device {peer_id}; it receives nothing written from now on"
        ))?;
        if keys.sealed_to.contains(&peer_id) {
            note("The vault's keys have not rotated yet: `hearth keys` says why.");
        } else {
            note(format!(
                "The vault's keys rotated (epoch {}): grants made from now on are signed with a key it never held.",
                keys.epoch
            ));
        }
    }
    Ok(())
}

/// `hearth keys [rotate]`.
pub(super) async fn keys(
    home: &Home,
    json: bool,
    client: &Client,
    rotate: bool,
) -> anyhow::Result<()> {
    let keys: KeysInfo = if rotate {
        client
            .json(home, client.request(Method::POST, "/v1/keys/rotate"))
            .await?
    } else {
        client
            .json(home, client.request(Method::GET, "/v1/keys"))
            .await?
    };
    if json {
        return out_json(&keys);
    }
    let devices: Vec<DeviceInfo> = client
        .json(home, client.request(Method::GET, "/v1/devices"))
        .await?;
    let name = |peer: &str| {
        devices
            .iter()
            .find(|d| d.id == peer)
            .map(|d| {
                let mut name = if d.name.is_empty() {
                    d.id.clone()
                } else {
                    d.name.clone()
                };
                if d.removed_at.is_some() {
                    name.push_str(" (removed)");
                }
                name
            })
            .unwrap_or_else(|| peer.to_owned())
    };
    if rotate {
        out(format!(
            "made epoch {}: new grants are signed with its key",
            keys.epoch
        ))?;
    }
    match (&keys.made_by, keys.made_at) {
        (Some(by), Some(at)) => out(format!(
            "epoch {} (made by {}, {})",
            keys.epoch,
            name(by),
            when(at)
        ))?,
        _ => out(format!("epoch {} (the vault's first keys)", keys.epoch))?,
    }
    let holders: Vec<String> = keys.sealed_to.iter().map(|p| name(p)).collect();
    out(format!("held by: {}", holders.join(", ")))?;
    if !keys.held {
        note(
            "This device has not received this epoch's key yet: it gets it when it syncs with a device that has it, and cannot make grants until then.",
        );
    }
    let removed: Vec<&String> = holders
        .iter()
        .filter(|h| h.ends_with(" (removed)"))
        .collect();
    if !removed.is_empty() {
        note(
            "A removed device holds this key: it rotates as soon as a device of the vault sees that.",
        );
    }
    Ok(())
}

/// The PeerId of the device a person named: a whole PeerId, a start of one that only
/// one device has, or a name that only one device has.
pub(super) async fn device_id(home: &Home, client: &Client, given: &str) -> anyhow::Result<String> {
    let devices: Vec<DeviceInfo> = client
        .json(home, client.request(Method::GET, "/v1/devices"))
        .await?;
    if devices.iter().any(|d| d.id == given) {
        return Ok(given.to_owned());
    }
    let by_prefix: Vec<&DeviceInfo> = devices.iter().filter(|d| d.id.starts_with(given)).collect();
    let by_name: Vec<&DeviceInfo> = devices.iter().filter(|d| d.name == given).collect();
    let found = if given.len() >= 4 && !by_prefix.is_empty() {
        by_prefix
    } else {
        by_name
    };
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => anyhow::bail!(
            "no device of this vault is called {given:?} or has a PeerId starting with it (see `hearth devices`)"
        ),
        many => anyhow::bail!(
            "{given:?} could be any of {} devices: {}; give more of the PeerId",
            many.len(),
            many.iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(super) fn print_devices(devices: &[DeviceInfo]) -> anyhow::Result<()> {
    for d in devices {
        let state = if d.removed_at.is_some() {
            "removed"
        } else if d.this_device {
            "this device"
        } else if d.online && d.in_step {
            if d.relayed {
                "online (relayed), in step"
            } else {
                "online, in step"
            }
        } else if d.online {
            if d.relayed {
                "online (relayed)"
            } else {
                "online"
            }
        } else {
            "offline"
        };
        let synced = d
            .last_sync
            .map_or(String::new(), |t| format!("last sync {}", when(t)));
        out(format!("{}\t{}\t{state}\t{synced}", d.id, d.name))?;
    }
    Ok(())
}

/// The invite as a QR code on stderr, for a phone's camera.
pub(super) fn print_qr(code: &str) {
    if let Ok(qr) = qrcode::QrCode::new(code.to_ascii_uppercase().as_bytes()) {
        let text = qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        note(text);
    }
}

/// `hearth status --watch`: a line of what this device knows and a progress bar of
/// the blobs still arriving, redrawn every second (nothing drawn without a terminal or
/// with --json).
pub(super) async fn watch_status(
    home: &Home,
    json: bool,
    client: &Client,
    until_synced: bool,
) -> anyhow::Result<()> {
    let draw = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !draw && !until_synced {
        bail!(
            "--watch draws on a terminal: without one (or with --json), add --until-synced to wait for the first sync"
        );
    }
    let bars = indicatif::MultiProgress::new();
    let line = bars.add(indicatif::ProgressBar::new_spinner());
    let bar = bars.add(indicatif::ProgressBar::new(0));
    if draw {
        line.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg}")?);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "  blobs arriving [{bar:40}] {bytes}/{total_bytes} {eta}",
            )?
            .progress_chars("=> "),
        );
    } else {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // Caught up for two looks in a row: a first sync may name blobs a moment later.
    let mut settled = 0;
    loop {
        let status: StatusResponse = client
            .json(home, client.request(Method::GET, "/v1/status"))
            .await?;
        let others: Vec<&DeviceInfo> = status
            .devices
            .iter()
            .filter(|d| !d.this_device && d.removed_at.is_none())
            .collect();
        let online = others.iter().filter(|d| d.online).count();
        let last = others.iter().filter_map(|d| d.last_sync).max();
        let records: u64 = status.collections.iter().map(|c| c.records).sum();
        let (received, size) = status
            .arriving
            .iter()
            .fold((0, 0), |(r, s), a| (r + a.received, s + a.size));
        if until_synced && others.is_empty() {
            bail!("this vault has no other device to catch up with (add one with `hearth pair`)");
        }
        // Caught up: another device is connected now, every connected one holds the
        // same changes as this one (their fingerprints were compared equal, with nothing
        // changed since), and no blob is still on its way.
        let caught_up = online > 0
            && others.iter().filter(|d| d.online).all(|d| d.in_step)
            && status.arriving.is_empty();
        line.set_message(format!(
            "{online} of {} online · last sync {} · {} in {}{}",
            count(others.len() as u64, "other device"),
            last.map_or("never".to_owned(), when),
            count(records, "record"),
            count(status.collections.len() as u64, "collection"),
            if caught_up { " · caught up" } else { "" }
        ));
        line.tick();
        bar.set_length(size);
        bar.set_position(received);
        if status.arriving.is_empty() {
            bar.set_length(0);
        }
        settled = if caught_up { settled + 1 } else { 0 };
        if until_synced && settled >= 2 {
            line.finish();
            bar.finish_and_clear();
            if json {
                out_json(&status)?;
            } else if !draw {
                out(format!(
                    "caught up: {}, last sync {}",
                    count(records, "record"),
                    last.map_or("never".to_owned(), when)
                ))?;
            }
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                line.finish();
                bar.finish_and_clear();
                return Ok(());
            }
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

pub(super) fn print_status(status: &StatusResponse) -> anyhow::Result<()> {
    if let Some(at) = status.removed_at {
        out(format!(
            "REMOVED  this device was removed from the vault {} ({}): it no longer syncs; its data stays here (`hearth export --all`)",
            when(at),
            local_time(at)
        ))?;
    }
    out(format!("vault    {}", status.vault_id))?;
    out(format!("device   {}", status.peer_id))?;
    out(format!("home     {}", status.home))?;
    out(format!("api      http://{}", status.api_addr))?;
    if let Some(lan) = &status.lan {
        out(format!(
            "lan      {} (TLS; certificate in HOME/tls.pem)",
            lan.url
        ))?;
        out(format!("         sha-256 fingerprint {}", lan.fingerprint))?;
    }
    let collections: Vec<String> = status
        .collections
        .iter()
        .map(|c| format!("{} ({})", c.name, c.records))
        .collect();
    if collections.is_empty() {
        out("collections  none yet")?;
    } else {
        out(format!("collections  {}", collections.join(", ")))?;
    }
    out(format!("blobs    {}", status.blobs))?;
    out(format!(
        "keys     epoch {}{}; {}",
        status.key_epoch,
        if status.key_held {
            ""
        } else {
            " (not received here yet: no grants from this device until it syncs)"
        },
        match &status.recovery_kit {
            Some(kit) => format!("recovery kit {kit}"),
            None => "no recovery kit (`hearth recovery-kit`)".to_owned(),
        }
    ))?;
    if !status.arriving.is_empty() {
        let size: u64 = status.arriving.iter().map(|a| a.size).sum();
        let received: u64 = status.arriving.iter().map(|a| a.received).sum();
        out(format!(
            "arriving {} blobs from other devices: {} of {} bytes here",
            status.arriving.len(),
            received,
            size
        ))?;
    }
    for g in &status.expiring_grants {
        out(format!(
            "warning  grant {} ({}) expires {}: `hearth extend {} --expires 1y` keeps it (same token and password)",
            g.id,
            g.service,
            when(g.expires_at),
            g.id
        ))?;
    }
    for d in &status.to_decide {
        let records = match d.records {
            1 => "1 record".to_owned(),
            n => format!("{n} records"),
        };
        out(format!(
            "decide   {records} of {} edited on two devices at once: `hearth conflicts {}`",
            d.collection, d.collection
        ))?;
    }
    for addr in &status.listen_addrs {
        out(format!("listen   {addr}"))?;
    }
    out("devices")?;
    print_devices(&status.devices)
}
