//! `hearth backup add|status` (a vault's device) and `hearth host [invite|vaults]` (a
//! backup host).

use anyhow::Context;
use hearth_node::home::Home;
use hearth_node::host::api::{HostInfo, HostInvite};
use hearth_node::host::{DEFAULT_QUOTA, HostConfig, HostNode};
use hearth_protocol::api::{BackupAddRequest, BackupStatus, BackupVerified, HostStatus};
use reqwest::Method;

use super::{out, out_json};
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
            ))
        }
        Some(BackupCommand::Verify) => {
            let report: BackupVerified = client
                .json(home, client.request(Method::POST, "/v1/backup/verify"))
                .await?;
            if json {
                out_json(&report)?;
            } else {
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
            if !report.ok {
                anyhow::bail!(
                    "a backup host does not hold up (see above); its copy may not restore"
                );
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

/// `hearth recover --kit FILE --host ADDR|CODE`.
pub(super) async fn recover(
    home: &Home,
    json: bool,
    kit: &std::path::Path,
    host: &str,
    kit_passphrase_file: Option<std::path::PathBuf>,
    args: crate::args::PassphraseArgs,
) -> anyhow::Result<()> {
    let kit_passphrase = kit_passphrase_file
        .as_deref()
        .map(hearth_node::keys::Passphrase::from_file)
        .transpose()?;
    let secret = super::kit::read_kit(kit, kit_passphrase.as_ref())?;
    let (peer, addrs) = host_of(host)?;
    let passphrase = super::node::passphrase(args, super::node::Ask::Choose)?;
    let recovered =
        hearth_node::backup::recover(home, &secret, peer, &addrs, passphrase.as_ref()).await?;
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
