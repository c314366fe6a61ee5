//! The commands. Each prints text for people, or with `--json` one JSON value. `run`
//! dispatches: the commands without a node are in `node`, the others (HTTP clients
//! of the node's API) in `records`, `grants`, `devices` and `files`.

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use hearth_node::home::Home;
use hearth_node::keys::Passphrase;
use hearth_node::{Node, NodeConfig};
use hearth_protocol::api::{
    AuditEntry, BlobInfo, BlobRemoved, BlobWritten, CheckReport, CollectionInfo, ConflictsResponse,
    DeviceInfo, ExtendRequest, FileInfo, FileList, FileMove, FileRemoved, GrantCreated, GrantInfo,
    GrantRequest, InitReport, InviteResponse, JoinReport, KeysInfo, PassphraseReport, PutResponse,
    Removed, RevokeResponse, StatusResponse, TokenResponse, UpReport, VerifyResponse,
};
use hearth_protocol::scope::{Fields, Narrowing, Scope};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::args::{
    BlobCommand, Cli, Command, DevicesCommand, FileCommand, KeysCommand, PassphraseArgs, PimKind,
    TokenCommand,
};
use crate::client::{Client, read_data_arg};
use futures::StreamExt;
use hearth_node::pim::ImportReport;

mod backup;
mod devices;
mod files;
mod grants;
mod kit;
mod node;
mod records;

use node::{Reloads, UpOptions, change_passphrase, init, join, rust_log, up};

/// Standard output was closed by its reader (`hearth audit | head`): not a failure.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// A failure whose details are already on stdout (with `--json`, as the one JSON
/// value): only its line on stderr remains to be printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// Prints one line on stdout; a closed stdout ends the command quietly.
pub(crate) fn out(line: impl Display) -> anyhow::Result<()> {
    write_stdout(format!("{line}\n").as_bytes())
}

/// Writes bytes to stdout as they are; a closed stdout ends the command quietly.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other?),
    }
}

/// Prints one JSON value on stdout.
pub(crate) fn out_json(value: &impl Serialize) -> anyhow::Result<()> {
    out(serde_json::to_string(value).context("cannot encode the answer as JSON")?)
}

/// Prints a line for people on stderr (a closed stderr is ignored).
pub(crate) fn note(line: impl Display) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::new(resolve_home(cli.global.home)?);
    let json = cli.global.json;
    match cli.command {
        Command::Init { passphrase } => init(&home, json, passphrase).await,
        Command::Up {
            api,
            api_public,
            lan,
            lan_apps_only,
            listen,
            peer,
            no_mdns,
            relay,
            no_mesh,
            accept_rollback,
            cache_mb,
            verbose,
            quiet,
            passphrase,
        } => {
            // HOME/hearth.toml first; a flag given on the command line wins.
            let file = crate::config::Config::load(home.root())?;
            let listen = if listen.is_empty() {
                file.listen()
            } else {
                listen
            };
            // On SIGHUP, peers and log level are read again unless a flag set them.
            let reloads = Reloads {
                peers: peer.is_empty(),
                log: verbose == 0 && !quiet && rust_log().is_none(),
            };
            let peer = if peer.is_empty() { file.peers() } else { peer };
            let mesh = (!no_mesh && file.mesh != Some(false)).then(|| {
                let mut mesh = hearth_node::mesh::MeshConfig::default();
                if !listen.is_empty() {
                    mesh.listen = listen;
                }
                mesh.peers = peer;
                mesh.mdns = !no_mdns && file.mdns != Some(false);
                mesh.relay_server = relay || file.relay == Some(true);
                mesh
            });
            let default_api: std::net::SocketAddr = hearth_node::DEFAULT_API_ADDR
                .parse()
                .expect("the default API address parses");
            let default_lan: std::net::SocketAddr = hearth_node::DEFAULT_LAN_ADDR
                .parse()
                .expect("the default LAN address parses");
            let options = UpOptions {
                api: api.or(file.api).unwrap_or(default_api),
                api_public: api_public || file.api_public == Some(true),
                lan: lan.or(match file.lan {
                    Some(crate::config::Lan::At(addr)) => Some(addr),
                    Some(crate::config::Lan::On(true)) => Some(default_lan),
                    Some(crate::config::Lan::On(false)) | None => None,
                }),
                lan_apps_only: lan_apps_only || file.lan_apps_only == Some(true),
                accept_rollback,
                cache_mb: cache_mb.or(file.cache_mb),
                free_unnamed_after: file.free_unnamed_after,
                reloads,
                name: file.name,
                log: match (verbose, quiet) {
                    (0, false) => file.log,
                    (_, true) => Some("error".into()),
                    (1, _) => Some(format!("{DEFAULT_LOG},hearth_node=debug,hearth=debug")),
                    _ => Some("debug".into()),
                },
            };
            let passphrase = PassphraseArgs {
                passphrase_file: passphrase.passphrase_file.or(file.passphrase_file),
            };
            up(home, json, options, mesh, passphrase).await
        }
        Command::Token {
            command:
                TokenCommand::Attenuate {
                    token,
                    read,
                    write,
                    expires,
                },
        } => {
            let expires = match expires.as_deref() {
                Some(text) => hearth_node::access::parse_duration(text)?,
                None => None,
            };
            let narrowing = Narrowing::parse(Some(&read), write.as_deref())?;
            let token = crate::client::read_secret_arg(&token, "token")?;
            let token = hearth_node::access::attenuate(&token, &narrowing, expires)?;
            if json {
                out_json(&TokenResponse { token })
            } else {
                out(token)
            }
        }
        Command::Join {
            code,
            name,
            passphrase,
        } => {
            let code = crate::client::read_secret_arg(&code, "invite code")?;
            join(&home, json, &code, name, passphrase).await
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut command, "hearth", &mut text);
            write_stdout(&text)
        }
        Command::Man => {
            let text = crate::man::page(<Cli as clap::CommandFactory>::command())
                .context("cannot render the manual page")?;
            write_stdout(&text)
        }
        Command::Passphrase {
            passphrase: old,
            new_passphrase_file,
            remove,
        } => change_passphrase(&home, json, old, new_passphrase_file, remove),
        Command::Recover {
            kit,
            host,
            kit_passphrase_file,
            passphrase,
        } => {
            backup::recover(
                &home,
                json,
                &kit,
                host.as_deref(),
                kit_passphrase_file,
                passphrase,
            )
            .await
        }
        Command::Host {
            command: Some(command),
            ..
        } => backup::host_command(&home, json, command).await,
        Command::Host {
            command: None,
            listen,
            api,
            quota_mb,
        } => backup::run_host(&home, json, listen, api, quota_mb).await,
        command => client_command(&home, json, command).await,
    }
}

fn resolve_home(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(home) => Ok(home),
        None => dirs::data_dir()
            .map(|d| d.join("hearth"))
            .context("no --home, no HEARTH_HOME and no platform data directory; give --home DIR"),
    }
}

/// What a person wants to read by default: Hearth's own events (devices connecting,
/// blobs arriving, grants revoked…), and only the libraries' warnings.
/// (Kademlia warns at every start that it has no bootstrap peers: Hearth uses none.)
const DEFAULT_LOG: &str = "warn,libp2p_kad=error,hearth_node=info,hearth=info";

/// Changes the log filter of the running node (SIGHUP with a new `log` in hearth.toml).
type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

async fn client_command(home: &Home, json: bool, command: Command) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
    match command {
        Command::Dashboard { lan } => devices::dashboard(home, json, &client, lan).await?,
        Command::Status {
            watch: true,
            until_synced,
        } => devices::watch_status(home, json, &client, until_synced).await?,
        Command::Status { .. } => devices::status(home, json, &client).await?,
        Command::Put { collection, rest } => {
            records::put(home, json, &client, collection, rest).await?
        }
        Command::Get { collection, id } => {
            records::get(home, json, &client, collection, id).await?
        }
        Command::Conflicts { collection } => {
            records::conflicts(home, json, &client, collection).await?
        }
        Command::Resolve {
            collection,
            id,
            field,
            value,
            version,
            record,
        } => {
            let body = records::what_to_keep(field, value, version, record)?;
            records::resolve(home, json, &client, collection, id, body).await?
        }
        Command::Patch {
            collection,
            id,
            data,
        } => records::patch(home, json, &client, collection, id, data).await?,
        Command::Ls { collection } => records::ls(home, json, &client, collection).await?,
        Command::Rm {
            collection,
            id: None,
        } => records::rm_collection(home, json, &client, collection).await?,
        Command::Rm {
            collection,
            id: Some(id),
        } => records::rm(home, json, &client, collection, id).await?,
        Command::Collections => records::collections(home, json, &client).await?,
        Command::Pair => devices::pair(home, json, &client).await?,
        Command::Devices { command: None } => devices::list(home, json, &client).await?,
        Command::Devices {
            command: Some(DevicesCommand::Rename { device, name }),
        } => devices::rename(home, json, &client, device, name).await?,
        Command::Devices {
            command: Some(DevicesCommand::Remove { device }),
        } => devices::remove(home, json, &client, device).await?,
        Command::RecoveryKit {
            check: Some(file),
            passphrase_file,
            ..
        } => kit::check(home, json, &client, file, passphrase_file).await?,
        Command::RecoveryKit {
            hosts: Some(file), ..
        } => kit::write_hosts(home, json, &client, &file).await?,
        Command::RecoveryKit {
            output,
            force,
            shares,
            passphrase_file,
            check: None,
            hosts: None,
        } => kit::make(home, json, &client, output, force, shares, passphrase_file).await?,
        Command::Keys { command } => {
            devices::keys(
                home,
                json,
                &client,
                matches!(command, Some(KeysCommand::Rotate)),
            )
            .await?
        }
        Command::Grant {
            service,
            read,
            write,
            free_busy,
            filters,
            expires,
            purpose,
            to,
            rate,
            app_password,
            mobileconfig,
        } => {
            let request = GrantRequest {
                service,
                read,
                write,
                free_busy,
                filters,
                expires,
                purpose,
                to,
                rate,
                app_password,
            };
            grants::grant(home, json, &client, request, mobileconfig).await?
        }
        Command::Grants => grants::list(home, json, &client).await?,
        Command::Revoke { grant_id } => grants::revoke(home, json, &client, grant_id).await?,
        Command::Extend { grant_id, expires } => {
            grants::extend(home, json, &client, grant_id, expires).await?
        }
        Command::Audit { grant, verify } => {
            grants::audit(home, json, &client, grant, verify).await?
        }
        Command::Import { all: Some(dir), .. } => {
            crate::restore::everything(home, json, &client, &dir).await?;
        }
        Command::Import {
            kind,
            file,
            into,
            folder,
            password_file,
            full,
            ..
        } => {
            let (kind, file) = kind.zip(file).context(
                "say what to import: contacts, calendar or mail and a file, or --all DIR",
            )?;
            let collection = kind.collection_or(into)?;
            if kind == PimKind::Mail {
                let source = crate::mail::Source {
                    source: file.to_string_lossy().into_owned(),
                    folder,
                    password_file,
                    full,
                };
                crate::mail::import(home, json, &client, &collection, source).await?;
            } else {
                if folder.is_some() || password_file.is_some() || full {
                    bail!("--folder, --password-file and --full are for mail");
                }
                files::import(home, json, &client, &collection, &file).await?;
            }
        }
        Command::Export {
            all: true, output, ..
        } => {
            let dir = output.context("--all needs -o DIR")?;
            crate::export::everything(home, json, &client, &dir).await?;
        }
        Command::Export {
            kind: Some(PimKind::Mail),
            output,
            from,
            maildir,
            ..
        } => {
            let collection = PimKind::Mail.collection_or(from)?;
            crate::mail::export(home, json, &client, &collection, output, maildir).await?;
        }
        Command::Export {
            kind,
            output,
            from,
            maildir,
            ..
        } => files::export(home, json, &client, kind, output, from, maildir).await?,
        Command::Blob { command } => files::blob(home, json, &client, command).await?,
        Command::File { command } => files::file(home, json, &client, command).await?,
        Command::Check { repair } => files::check(home, json, &client, repair).await?,
        Command::Find { args, limit } => files::find(home, json, &client, args, limit).await?,
        Command::Backup { command } => backup::backup(home, json, &client, command).await?,
        Command::Init { .. }
        | Command::Host { .. }
        | Command::Recover { .. }
        | Command::Up { .. }
        | Command::Join { .. }
        | Command::Passphrase { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Token { .. } => {
            unreachable!("handled in run")
        }
    }
    Ok(())
}

/// `stream`, moving `bar` (if there is one) by the bytes that pass.
pub(crate) fn counted<S, E>(
    stream: S,
    bar: &Option<indicatif::ProgressBar>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, E>> + use<S, E>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    let bar = bar.clone();
    stream.inspect_ok(move |chunk| {
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    })
}

/// A progress bar on stderr when it is a terminal and the output is for people.
pub(crate) fn progress(json: bool, total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:10} [{bar:40}] {bytes}/{total_bytes} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    Some(bar)
}

fn print_value(json: bool, value: &Value) -> anyhow::Result<()> {
    if json {
        out(value)
    } else {
        out(serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
    }
}

/// A moment in local time, for people: `2026-12-02 14:05:09`.
fn local_time(unix: u64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(unix as i64, 0) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        }
        chrono::LocalResult::None => unix.to_string(),
    }
}

/// A moment relative to now, for people: "in 29 days", "3 minutes ago".
fn when(unix: u64) -> String {
    let now = hearth_node::clock::now_unix();
    if unix == now {
        "now".to_owned()
    } else if unix > now {
        format!("in {}", human_duration(unix - now))
    } else {
        format!("{} ago", human_duration(now - unix))
    }
}

/// `1 record`, `2 records`: a count and its noun, singular or plural (`noun` is
/// the singular, an English noun with a regular plural: entry → entries, access →
/// accesses).
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        return format!("1 {noun}");
    }
    let plural = if let Some(stem) = noun.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else if noun.ends_with(['s', 'x']) || noun.ends_with("ch") || noun.ends_with("sh") {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    };
    format!("{n} {plural}")
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        1 => "1 second".to_owned(),
        s => format!("{s} seconds"),
    }
}

fn record_path(collection: &str, id: &str) -> anyhow::Result<String> {
    // URL normalisation would turn the ids "." and ".." into another route: refuse
    // them here, in the node's words (no valid id starts with '.').
    if id.starts_with('.') {
        hearth_protocol::RecordId::parse(id)?;
    }
    Ok(format!(
        "/v1/collections/{}/records/{}",
        seg(collection),
        seg(id)
    ))
}

/// Percent-encodes a path segment, so a bad name reaches the node (which explains
/// what is wrong) instead of changing the route.
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_singular_and_plural() {
        assert_eq!(count(1u64, "record"), "1 record");
        assert_eq!(count(0u64, "record"), "0 records");
        assert_eq!(count(2u64, "audit entry"), "2 audit entries");
        assert_eq!(count(3u64, "audited access"), "3 audited accesses");
        assert_eq!(count(2u64, "day"), "2 days");
    }
}
