//! `hearth backup add|status` (a vault's device) and `hearth host [invite|vaults]` (a
//! backup host).

use anyhow::{Context, bail};
use hearth_node::home::Home;
use hearth_node::host::api::{HostInfo, HostInvite};
use hearth_node::host::{DEFAULT_QUOTA, HostConfig, HostNode};
use hearth_protocol::api::{
    BackupAddRequest, BackupPruneRequest, BackupPruned, BackupStatus, BackupVerified, HostStatus,
};
use reqwest::Method;

use super::{note, out, out_json};
use crate::args::{BackupCommand, HostCommand};
use crate::client::{Client, read_secret_arg};

/// Where a host listens unless told: a fixed port, so the vaults it keeps find it
/// again after a restart.
pub(super) const DEFAULT_HOST_LISTEN: [&str; 2] =
    ["/ip4/0.0.0.0/tcp/7475", "/ip4/0.0.0.0/udp/7475/quic-v1"];

fn when(unix: Option<u64>) -> String {
    unix.and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0))
        .map_or_else(
            || "never".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

fn size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn say_host(host: &HostStatus) -> anyhow::Result<()> {
    out(format!("host {}", host.peer))?;
    out(format!(
        "  {}",
        match (&host.error, host.up_to_date) {
            (Some(e), _) => format!("NOT up to date: {e}"),
            (None, true) => "up to date".to_owned(),
            (None, false) => "uploading (not up to date yet)".to_owned(),
        }
    ))?;
    out(format!(
        "  uses {} of {}; manifest {}; last upload {}",
        size(host.bytes),
        size(host.quota),
        host.seq,
        when(host.last_upload)
    ))
}

pub(super) async fn backup(
    home: &Home,
    json: bool,
    client: &Client,
    command: Option<BackupCommand>,
) -> anyhow::Result<()> {
    match command {
        Some(BackupCommand::Add { code }) => {
            let code = read_secret_arg(&code, "host's code")?;
            let added: HostStatus = client
                .json(
                    home,
                    client
                        .request(Method::POST, "/v1/backup/hosts")
                        .json(&BackupAddRequest {
                            code: code.to_string(),
                        }),
                )
                .await?;
            if json {
                return out_json(&added);
            }
            out(format!(
                "added the backup host {}: it may keep {} of this vault; the first upload starts now (see `hearth backup status`)",
                added.peer,
                size(added.quota)
            ))?;
            note(
                "Write it into the recovery kit file you keep, so a restore finds it without --host: `hearth recovery-kit --hosts FILE`.",
            );
            Ok(())
        }
        Some(BackupCommand::Prune {
            kit,
            kit_passphrase_file,
        }) => prune(home, json, client, &kit, kit_passphrase_file).await,
        Some(BackupCommand::Verify {
            restore,
            kit,
            kit_passphrase_file,
        }) => {
            let report: BackupVerified = client
                .json(home, client.request(Method::POST, "/v1/backup/verify"))
                .await?;
            if !json {
                if report.hosts.is_empty() {
                    anyhow::bail!(
                        "no backup host to verify: add one with `hearth backup add CODE`"
                    );
                }
                for host in &report.hosts {
                    match &host.error {
                        Some(e) => out(format!("host {}: NOT verified: {e}", host.peer))?,
                        None => out(format!(
                            "host {}: chain of {} manifests checked; {} of {} sampled objects (of {} a restore reads) proven held",
                            host.peer, host.seq, host.proven, host.sampled, host.objects
                        ))?,
                    }
                    for failure in &host.failures {
                        out(format!("  {failure}"))?;
                    }
                }
            }
            // The drill only over hosts that hold up.
            let drilled = match (restore, kit) {
                (true, Some(kit)) if report.ok => {
                    Some(drill(home, json, client, &kit, kit_passphrase_file).await?)
                }
                _ => None,
            };
            if json {
                let mut value = serde_json::to_value(&report).expect("serializes");
                if let Some((drill, _)) = &drilled {
                    value["restore"] = drill.clone();
                }
                out_json(&value)?;
            }
            if !report.ok {
                anyhow::bail!(
                    "a backup host does not hold up (see above); its copy may not restore"
                );
            }
            if let Some((_, differences)) = drilled
                && differences > 0
            {
                anyhow::bail!("the restore differs from this vault in {differences} places");
            }
            Ok(())
        }
        None | Some(BackupCommand::Status) => {
            let status: BackupStatus = client
                .json(home, client.request(Method::GET, "/v1/backup"))
                .await?;
            if json {
                return out_json(&status);
            }
            if status.hosts.is_empty() {
                return out(
                    "no backup host: add one with `hearth backup add CODE` (the code comes from `hearth host invite` on the host)",
                );
            }
            for host in &status.hosts {
                say_host(host)?;
            }
            Ok(())
        }
    }
}

/// `hearth host invite|vaults`, asked of the running host.
pub(super) async fn host_command(
    home: &Home,
    json: bool,
    command: HostCommand,
) -> anyhow::Result<()> {
    let client = Client::connect_host(home).await?;
    match command {
        HostCommand::Invite => {
            let invite: HostInvite = client
                .json(home, client.request(Method::POST, "/v1/host/invites"))
                .await?;
            if json {
                return out_json(&serde_json::json!({
                    "code": invite.code,
                    "expires_at": invite.expires_at,
                }));
            }
            out("On a device of the vault to back up, run:")?;
            out(format!("  hearth backup add {}", invite.code))?;
            out(format!(
                "The code works once, until {}.",
                when(Some(invite.expires_at))
            ))
        }
        HostCommand::Vaults => {
            let info: HostInfo = client
                .json(home, client.request(Method::GET, "/v1/host"))
                .await?;
            if json {
                return out_json(&info);
            }
            out(format!("backup host {}", info.peer_id))?;
            for addr in &info.addrs {
                out(format!("  reachable at {addr}"))?;
            }
            if info.vaults.is_empty() {
                return out("no vault enrolled yet (`hearth host invite` makes a code for one)");
            }
            for v in &info.vaults {
                out(format!(
                    "vault {}: {} of {}, {} objects, {} manifests, last upload {}",
                    v.name,
                    size(v.bytes),
                    size(v.quota),
                    v.objects,
                    v.manifests,
                    when(v.last_upload)
                ))?;
            }
            Ok(())
        }
    }
}

/// `hearth host`: runs the host until SIGINT or SIGTERM.
pub(super) async fn run_host(
    home: &Home,
    json: bool,
    listen: Vec<hearth_node::Multiaddr>,
    api: Option<std::net::SocketAddr>,
    quota_mb: Option<u64>,
) -> anyhow::Result<()> {
    let signals = super::node::Signals::listen()?;
    let _reload = super::node::init_tracing(None);
    let listen = if listen.is_empty() {
        DEFAULT_HOST_LISTEN
            .iter()
            .map(|a| a.parse().expect("valid multiaddr"))
            .collect()
    } else {
        listen
    };
    let config = HostConfig {
        home: home.root().to_path_buf(),
        listen,
        api: api.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        quota: quota_mb.map_or(DEFAULT_QUOTA, |mib| mib.saturating_mul(1024 * 1024)),
    };
    let host = HostNode::start(config)
        .await
        .context("cannot start the backup host")?;
    let addrs: Vec<String> = host.state.addrs().iter().map(|a| a.to_string()).collect();
    let printed = if json {
        out_json(&serde_json::json!({
            "home": home.root().display().to_string(),
            "api_addr": host.api_addr().to_string(),
            "peer_id": host.peer_id().to_string(),
            "addrs": addrs,
        }))
    } else {
        (|| {
            out("Hearth backup host running")?;
            out(format!("  data:    {}", home.root().display()))?;
            out(format!("  api:     http://{}", host.api_addr()))?;
            out(format!("  peer id: {}", host.peer_id()))?;
            for addr in &addrs {
                out(format!("  mesh:    {addr}"))?;
            }
            out(
                "Enroll a vault: `hearth host invite`, then `hearth backup add CODE` on one of its devices.",
            )?;
            out("Stop with Ctrl-C.")
        })()
    };
    if let Err(e) = printed {
        tracing::debug!(error = %e, "cannot print the start banner");
    }
    signals.wait(|| async {}).await;
    host.shutdown().await;
    Ok(())
}

/// `hearth backup prune --kit FILE|-`: the kit's owner key (derived here; the kit's
/// secret never leaves this process) lets the node free space on each host.
async fn prune(
    home: &Home,
    json: bool,
    client: &Client,
    kit: &std::path::Path,
    kit_passphrase_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let secret = super::kit::read_kit(kit, kit_passphrase_file.as_deref())?;
    let owner = secret.owner_keypair();
    let request = BackupPruneRequest {
        owner_key: data_encoding::BASE64.encode(owner.secret().as_ref()),
    };
    let report: BackupPruned = client
        .json(
            home,
            client
                .request(Method::POST, "/v1/backup/prune")
                .json(&request),
        )
        .await?;
    drop(request);
    if json {
        out_json(&report)?;
    } else {
        if report.hosts.is_empty() {
            bail!("no backup host to prune: add one with `hearth backup add CODE`");
        }
        for host in &report.hosts {
            match (&host.error, &host.replaced_kit) {
                (Some(e), _) => out(format!("host {}: NOT pruned: {e}", host.peer))?,
                (None, Some(kit)) => out(format!(
                    "host {}: the copy kept under the replaced kit {kit} is deleted ({} freed, {} objects)",
                    host.peer,
                    size(host.bytes_before.saturating_sub(host.bytes)),
                    host.objects_dropped
                ))?,
                (None, None) => out(format!(
                    "host {}: {} freed ({} objects deleted); it keeps {} from manifest {} on",
                    host.peer,
                    size(host.bytes_before.saturating_sub(host.bytes)),
                    host.objects_dropped,
                    size(host.bytes),
                    host.base
                ))?,
            }
        }
    }
    if !report.ok {
        bail!("a backup host was not pruned (see above)");
    }
    Ok(())
}

/// Where the host of `--host` is: a code it printed, or its address with `/p2p/`.
fn host_of(arg: &str) -> anyhow::Result<(hearth_node::PeerId, Vec<hearth_node::Multiaddr>)> {
    let arg = arg.trim();
    if arg.starts_with(hearth_protocol::backup::HOST_INVITE_PREFIX) {
        let invite = hearth_protocol::backup::decode_host_invite(arg)?;
        let peer = hearth_node::PeerId::from_bytes(&invite.inviter_peer_id)
            .map_err(|_| anyhow::anyhow!("the host's code is damaged (its id); copy it again"))?;
        let addrs = invite.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        return Ok((peer, addrs));
    }
    let addr: hearth_node::Multiaddr = arg.parse().with_context(|| {
        format!("--host {arg:?} is neither a host's code (hearthhost1…) nor an address")
    })?;
    let peer = arg
        .rsplit_once("/p2p/")
        .and_then(|(_, peer)| peer.parse::<hearth_node::PeerId>().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--host {arg} names no host: give its address with /p2p/PEER_ID, as `hearth host vaults` prints it"
            )
        })?;
    Ok((peer, vec![addr]))
}

/// `hearth recover --kit FILE [--host ADDR|CODE]`: from the host given, else from
/// each host the kit file names in turn, until one restores the vault.
pub(super) async fn recover(
    home: &Home,
    json: bool,
    kit: &std::path::Path,
    host: Option<&str>,
    kit_passphrase_file: Option<std::path::PathBuf>,
    args: crate::args::PassphraseArgs,
) -> anyhow::Result<()> {
    let (secret, named) = super::kit::read_kit_and_hosts(kit, kit_passphrase_file.as_deref())?;
    let hosts = match host {
        Some(host) => vec![host_of(host)?],
        None => {
            if named.is_empty() {
                bail!(
                    "the kit names no backup host: give one with --host ADDR|CODE (`hearth host vaults` on the host prints its address)"
                );
            }
            named
                .iter()
                .map(|h| {
                    let peer = h.peer.parse::<hearth_node::PeerId>().map_err(|_| {
                        anyhow::anyhow!("the kit file names a host whose id is damaged: {}", h.peer)
                    })?;
                    let addrs = h.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    Ok((peer, addrs))
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        }
    };
    let passphrase = super::node::passphrase(args, super::node::Ask::Choose)?;
    let mut failures = Vec::new();
    let mut restored = None;
    let several = hosts.len() > 1;
    for (peer, addrs) in hosts {
        match hearth_node::backup::recover(home, &secret, peer, &addrs, passphrase.as_ref()).await {
            Ok(recovered) => {
                restored = Some((peer, recovered));
                break;
            }
            // A HOME that is not empty is not the host's doing: no other host helps.
            Err(e @ hearth_node::backup::BackupError::NotEmpty(_)) => return Err(e.into()),
            Err(e) if !several => return Err(e.into()),
            Err(e) => {
                if !json {
                    note(format!("the host {peer} did not restore the vault: {e}"));
                }
                failures.push(format!("{peer}: {e}"));
            }
        }
    }
    let Some((peer, recovered)) = restored else {
        bail!("no host restored the vault ({})", failures.join("; "));
    };
    if json {
        return out_json(&recovered);
    }
    let root = home.root().display();
    out(format!(
        "Restored the vault {} from the host {peer}: its manifest {} of {}, {} parts and {} blobs ({} read).",
        recovered.vault_id,
        recovered.seq,
        when(Some(recovered.made_at)),
        recovered.parts,
        recovered.blobs,
        size(recovered.bytes)
    ))?;
    out(format!(
        "This HOME is a new device of the vault ({}). Start it with: hearth --home {root} up",
        recovered.peer_id
    ))?;
    out(
        "The devices you lost are still listed (`hearth devices`): remove each (`hearth devices remove NAME`), which rotates the vault's keys so they open nothing made afterwards.",
    )
}

/// Every record of every collection, every blob's listing, the grants and the audit
/// log of a node, as `GET /v1/export` gives them at one moment.
async fn snapshot(home: &Home, client: &Client) -> anyhow::Result<serde_json::Value> {
    client
        .json(home, client.request(Method::GET, "/v1/export"))
        .await
}

/// The BLAKE3 hash of a blob's bytes as a node serves them.
async fn blob_hash(home: &Home, client: &Client, id: &str) -> anyhow::Result<blake3::Hash> {
    use futures::StreamExt;
    let response = client
        .send(
            home,
            client.request(Method::GET, &format!("/v1/blobs/{id}")),
        )
        .await?;
    let mut hasher = blake3::Hasher::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        hasher.update(&piece.context("reading a blob")?);
    }
    Ok(hasher.finalize())
}

/// Items of two lists (by their `id`) that one lacks or that differ, a line each.
fn compare_by_id(
    what: &str,
    live: &serde_json::Value,
    restored: &serde_json::Value,
) -> Vec<String> {
    let by_id =
        |list: &serde_json::Value| -> std::collections::BTreeMap<String, serde_json::Value> {
            list.as_array()
                .into_iter()
                .flatten()
                .map(|r| (r["id"].as_str().unwrap_or_default().to_owned(), r.clone()))
                .collect()
        };
    let (a, b) = (by_id(live), by_id(restored));
    let mut out = Vec::new();
    for (id, item) in &a {
        match b.get(id) {
            None => out.push(format!("{what}{id} is not in the restore")),
            Some(other) if other != item => out.push(format!("{what}{id} differs in the restore")),
            Some(_) => {}
        }
    }
    for id in b.keys().filter(|id| !a.contains_key(*id)) {
        out.push(format!("{what}{id} is in the restore only"));
    }
    out
}

/// What differs between the live vault and its restore, said in a line each.
fn differences(live: &serde_json::Value, restored: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let live_collections = live["collections"].as_object().unwrap_or(&empty);
    let restored_collections = restored["collections"].as_object().unwrap_or(&empty);
    let names: std::collections::BTreeSet<&String> = live_collections
        .keys()
        .chain(restored_collections.keys())
        .collect();
    let mut out = Vec::new();
    for name in names {
        out.extend(compare_by_id(
            &format!("{name}/"),
            live_collections
                .get(name)
                .unwrap_or(&serde_json::Value::Null),
            restored_collections
                .get(name)
                .unwrap_or(&serde_json::Value::Null),
        ));
    }
    out.extend(compare_by_id("blob ", &live["blobs"], &restored["blobs"]));
    out.extend(compare_by_id(
        "grant ",
        &live["grants"],
        &restored["grants"],
    ));
    // The audit log goes on growing here (this very drill reads the vault): every
    // entry of the restore must be here, not the other way round.
    let live_audit: Vec<&serde_json::Value> =
        live["audit"].as_array().into_iter().flatten().collect();
    let missing = restored["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| !live_audit.contains(entry))
        .count();
    if missing > 0 {
        out.push(format!(
            "{missing} audit entries of the restore are not in this vault's log"
        ));
    }
    out
}

/// `hearth backup verify --restore`: the restore drill. The vault is restored from a
/// backup host that is up to date, with the kit, into a scratch HOME (removed
/// afterwards), started without the mesh, and compared with this vault: every record,
/// every blob's listing and bytes, the grants, and the audit log. Returns what it
/// found (as JSON) and how many differences.
async fn drill(
    home: &Home,
    json: bool,
    client: &Client,
    kit: &std::path::Path,
    kit_passphrase_file: Option<std::path::PathBuf>,
) -> anyhow::Result<(serde_json::Value, usize)> {
    let secret = super::kit::read_kit(kit, kit_passphrase_file.as_deref())?;
    let status: BackupStatus = client
        .json(home, client.request(Method::GET, "/v1/backup"))
        .await?;
    let host = status.hosts.iter().find(|h| h.up_to_date).ok_or_else(|| {
        anyhow::anyhow!(
            "no backup host is up to date yet: a restore would differ from this vault; see `hearth backup status`"
        )
    })?;
    let peer: hearth_node::PeerId = host.peer.parse().context("the host's id")?;
    let addrs: Vec<hearth_node::Multiaddr> =
        host.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    let scratch = tempfile::Builder::new()
        .prefix("hearth-drill-")
        .tempdir()
        .context("cannot make a scratch directory")?;
    let scratch_home = Home::new(scratch.path().join("home"));
    let started = std::time::Instant::now();
    let recovered =
        hearth_node::backup::recover(&scratch_home, &secret, peer, &addrs, None).await?;
    let restored_in = started.elapsed();
    let mut config = hearth_node::NodeConfig::new(scratch_home.root());
    config.api_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.mesh = None;
    let node = hearth_node::Node::start(config)
        .await
        .context("cannot start the restored vault")?;
    let compared = async {
        let restored_client = Client::connect(&scratch_home).await?;
        let live = snapshot(home, client).await?;
        let restored = snapshot(&scratch_home, &restored_client).await?;
        let mut found = differences(&live, &restored);
        let mut blobs = 0;
        for blob in live["blobs"].as_array().into_iter().flatten() {
            let Some(id) = blob["id"].as_str() else {
                continue;
            };
            if blob["here"] != true {
                continue;
            }
            blobs += 1;
            if blob_hash(home, client, id).await?
                != blob_hash(&scratch_home, &restored_client, id).await?
            {
                found.push(format!("blob {id}'s bytes differ in the restore"));
            }
        }
        let records: usize = live["collections"].as_object().map_or(0, |c| {
            c.values().filter_map(|v| v.as_array()).map(Vec::len).sum()
        });
        anyhow::Ok((found, records, blobs))
    }
    .await;
    node.shutdown()
        .await
        .context("stopping the restored vault")?;
    let (found, records, blobs) = compared?;
    if !json {
        out(format!(
            "restore drill: the vault restored from {} (manifest {}) in {:.1?}; {records} records and {blobs} blobs compared",
            host.peer, recovered.seq, restored_in
        ))?;
        for difference in &found {
            out(format!("  {difference}"))?;
        }
    }
    let count = found.len();
    Ok((
        serde_json::json!({
            "host": host.peer,
            "seq": recovered.seq,
            "restored_in_ms": restored_in.as_millis() as u64,
            "records": records,
            "blobs": blobs,
            "differences": found,
        }),
        count,
    ))
}
