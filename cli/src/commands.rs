//! The commands. Each prints text for people, or with `--json` one JSON value.

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
    DeviceInfo, GrantCreated, GrantInfo, GrantRequest, InitReport, InviteResponse, JoinReport,
    PassphraseReport, PutResponse, Removed, RevokeResponse, StatusResponse, TokenResponse,
    UpReport, VerifyResponse,
};
use hearth_protocol::scope::{Fields, Narrowing, Scope};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::args::{
    BlobCommand, Cli, Command, DevicesCommand, PassphraseArgs, PimKind, TokenCommand,
};
use crate::client::{Client, read_data_arg};
use futures::StreamExt;
use hearth_node::pim::ImportReport;

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
            let mut text = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut text)
                .context("cannot render the manual page")?;
            write_stdout(&text)
        }
        Command::Passphrase {
            passphrase: old,
            new_passphrase_file,
            remove,
        } => change_passphrase(&home, json, old, new_passphrase_file, remove),
        command => client_command(&home, json, command).await,
    }
}

/// One record of `hearth conflicts`, for a person.
fn print_conflict(record: &Value) -> anyhow::Result<()> {
    out(format!(
        "{}/{}",
        record["collection"].as_str().unwrap_or_default(),
        record["id"].as_str().unwrap_or_default()
    ))?;
    if let Some(deleted) = record.get("deleted") {
        let edited: Vec<&str> = deleted["edited_on"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out(format!(
            "  deleted on {}, edited on {}: the edit was kept",
            deleted["deleted_on"].as_str().unwrap_or("a device"),
            edited.join(", ")
        ))?;
    }
    if let Some(versions) = record.get("versions").and_then(Value::as_array) {
        for (n, version) in versions.iter().enumerate() {
            let shown = if n == 0 { " (shown)" } else { "" };
            out(format!("  version {}{shown}: {version}", n + 1))?;
        }
    }
    if let Some(fields) = record["conflicts"].as_object() {
        for (field, values) in fields {
            let values: Vec<String> = values
                .as_array()
                .map(|v| v.iter().map(Value::to_string).collect())
                .unwrap_or_default();
            out(format!("  {field}: {}", values.join("  |  ")))?;
        }
    }
    Ok(())
}

fn resolve_home(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(home) => Ok(home),
        None => dirs::data_dir()
            .map(|d| d.join("hearth"))
            .context("no --home, no HEARTH_HOME and no platform data directory; give --home DIR"),
    }
}

/// When a passphrase is asked for on a terminal (with no file, no environment
/// variable and no systemd credential).
enum Ask<'a> {
    /// To open this HOME's key file, if it is wrapped.
    Unlock(&'a Home),
    /// For a new key file: may be left empty (no passphrase).
    Choose,
}

/// The passphrase: `--passphrase-file`, else `$HEARTH_PASSPHRASE`, else the systemd
/// credential `passphrase`, else asked on the terminal.
fn passphrase(args: PassphraseArgs, ask: Ask) -> anyhow::Result<Option<Passphrase>> {
    if let Some(file) = args.passphrase_file {
        return Ok(Some(Passphrase::from_file(&file)?));
    }
    if let Ok(text) = std::env::var("HEARTH_PASSPHRASE") {
        return Ok(Some(Passphrase::new(text).context("HEARTH_PASSPHRASE")?));
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let file = PathBuf::from(dir).join("passphrase");
        if file.exists() {
            return Ok(Some(Passphrase::from_file(&file)?));
        }
    }
    if !on_terminal() {
        return Ok(None);
    }
    match ask {
        Ask::Unlock(home) if hearth_node::keys::needs_passphrase(home) => {
            let text = prompt(&format!(
                "Passphrase of the vault in {}: ",
                home.root().display()
            ))?;
            Ok(Some(Passphrase::new(text)?))
        }
        Ask::Unlock(_) => Ok(None),
        Ask::Choose => new_passphrase("Passphrase for the new key file (empty for none): "),
    }
}

fn on_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn prompt(question: &str) -> anyhow::Result<String> {
    rpassword::prompt_password(question).context("cannot read the passphrase from the terminal")
}

/// Asks twice for a new passphrase; empty is none.
fn new_passphrase(question: &str) -> anyhow::Result<Option<Passphrase>> {
    let first = zeroize::Zeroizing::new(prompt(question)?);
    if first.is_empty() {
        return Ok(None);
    }
    let again = zeroize::Zeroizing::new(prompt("The same again: ")?);
    if *first != *again {
        bail!("the two passphrases differ; nothing was changed");
    }
    Ok(Some(Passphrase::new(first.to_string())?))
}

fn change_passphrase(
    home: &Home,
    json: bool,
    old: PassphraseArgs,
    new_file: Option<PathBuf>,
    remove: bool,
) -> anyhow::Result<()> {
    let old = passphrase(old, Ask::Unlock(home))?;
    let new = match (new_file, remove) {
        (_, true) => None,
        (Some(file), false) => Some(Passphrase::from_file(&file)?),
        (None, false) => match std::env::var("HEARTH_NEW_PASSPHRASE") {
            Ok(text) => Some(Passphrase::new(text).context("HEARTH_NEW_PASSPHRASE")?),
            Err(_) if on_terminal() => match new_passphrase("New passphrase: ")? {
                Some(new) => Some(new),
                None => bail!("an empty passphrase is none: to remove it, use --remove"),
            },
            Err(_) => anyhow::bail!(
                "give the new passphrase with --new-passphrase-file F or HEARTH_NEW_PASSPHRASE, or --remove"
            ),
        },
    };
    hearth_node::keys::change_passphrase(home, old.as_ref(), new.as_ref())?;
    let keys = home.keys().display().to_string();
    if json {
        out_json(&PassphraseReport {
            keys,
            passphrase: new.is_some(),
        })
    } else if new.is_some() {
        out(format!(
            "The key file {keys} is now wrapped by the new passphrase."
        ))
    } else {
        out(format!(
            "The key file {keys} has no passphrase now: anyone who can read it can open the vault."
        ))
    }
}

async fn init(home: &Home, json: bool, args: PassphraseArgs) -> anyhow::Result<()> {
    if home.has_vault() {
        bail!(
            "{} already holds a vault; refusing to overwrite it",
            home.root().display()
        );
    }
    let passphrase = passphrase(args, Ask::Choose)?;
    let made = hearth_node::init_vault(home, passphrase.as_ref()).await?;
    let root = home.root().display().to_string();
    if json {
        return out_json(&InitReport {
            home: root,
            peer_id: made.peer_id.to_string(),
            vault_id: made.vault_id,
            passphrase: made.passphrase,
        });
    }
    out(format!("Created a vault in {root}"))?;
    out(format!("  device (peer id): {}", made.peer_id))?;
    out(format!(
        "  owner token:      {}",
        home.owner_token().display()
    ))?;
    if made.passphrase {
        out(format!(
            "  secrets:          {} (wrapped by your passphrase)",
            home.keys().display()
        ))?;
    } else {
        out(format!(
            "  secrets:          {} (no passphrase: anyone who can read this file can open the vault;\n                    set one with --passphrase-file or HEARTH_PASSPHRASE at init)",
            home.keys().display()
        ))?;
    }
    out(format!("Run the node with: hearth --home {root} up"))
}

/// What SIGHUP reloads from hearth.toml: what no flag (or `RUST_LOG`) fixed at start.
#[derive(Clone, Copy)]
struct Reloads {
    peers: bool,
    log: bool,
}

/// What `up` takes besides the mesh and the passphrase.
struct UpOptions {
    api: std::net::SocketAddr,
    api_public: bool,
    lan: Option<std::net::SocketAddr>,
    lan_apps_only: bool,
    accept_rollback: bool,
    cache_mb: Option<u32>,
    /// What a SIGHUP may change.
    reloads: Reloads,
    /// This device's name, from hearth.toml.
    name: Option<String>,
    /// The log filter, from hearth.toml (`RUST_LOG` wins).
    log: Option<String>,
}

async fn up(
    home: Home,
    json: bool,
    options: UpOptions,
    mesh: Option<hearth_node::mesh::MeshConfig>,
    args: PassphraseArgs,
) -> anyhow::Result<()> {
    let signals = Signals::listen()?;
    let log_reload = init_tracing(options.log.as_deref());
    let mut config = NodeConfig::new(home.root());
    config.api_addr = options.api;
    config.allow_public_api = options.api_public;
    config.lan_addr = options.lan;
    config.lan_owner_routes = !options.lan_apps_only;
    config.accept_rollback = options.accept_rollback;
    if let Some(mib) = options.cache_mb {
        config.limits.cache_bytes = mib as usize * 1024 * 1024;
    }
    config.mesh = mesh;
    config.passphrase = passphrase(args, Ask::Unlock(&home))?;
    let had_passphrase = config.passphrase.is_some();
    let node = Node::start(config).await?;
    if let Some(name) = &options.name {
        name_this_device(&node, name).await?;
    }
    let root = home.root().display().to_string();
    // The node keeps running even if whoever started it stops reading its output.
    let printed = if json {
        out_json(&UpReport {
            home: root.clone(),
            api_addr: node.api_addr().to_string(),
            peer_id: node.peer_id().to_string(),
            vault_id: node.vault_id(),
            created: node.created_vault(),
        })
    } else {
        print_started(&node, &home, &root, had_passphrase).await
    };
    if let Err(e) = printed {
        tracing::debug!(error = %e, "cannot print the start banner");
    }
    // Under systemd (Type=notify): ready once the API answers.
    let api_line = format!("serving the API on {}", node.api_addr());
    let ready = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&api_line),
    ];
    if let Err(e) = sd_notify::notify(&ready) {
        tracing::warn!(error = %e, "cannot tell the service manager that the node is ready");
    }
    signals
        .wait(|| reload_config(&home, options.reloads, &node, &log_reload))
        .await;
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::debug!(error = %e, "cannot tell the service manager that the node stops");
    }
    node.shutdown()
        .await
        .context("flushing the store on shutdown")?;
    Ok(())
}

async fn print_started(
    node: &hearth_node::NodeHandle,
    home: &Home,
    root: &str,
    had_passphrase: bool,
) -> anyhow::Result<()> {
    if node.created_vault() {
        out(format!("Created a new vault in {root}"))?;
        if !had_passphrase {
            out(format!(
                "  (no passphrase: its secrets are in {}, mode 0600)",
                home.keys().display()
            ))?;
        }
    }
    out("Hearth node running")?;
    out(format!("  data:    {root}"))?;
    out(format!("  api:     http://{}", node.api_addr()))?;
    out(format!("  peer id: {}", node.peer_id()))?;
    if let Some(lan) = &node.vault().lan() {
        out(format!("  lan:     https://{} (TLS only)", lan.addr))?;
        out(format!("  tls sha-256 fingerprint: {}", lan.fingerprint))?;
    }
    if let Some(mesh) = node.vault().mesh() {
        for addr in mesh.handle.listen_addrs().await.unwrap_or_default() {
            out(format!("  mesh:    {addr}/p2p/{}", node.peer_id()))?;
        }
    }
    out("Web dashboard: run `hearth dashboard` for a one-time login link.")?;
    out("Stop with Ctrl-C.")
}

/// The PeerId of the device a person named: a whole PeerId, a start of one that only
/// one device has, or a name that only one device has.
async fn device_id(home: &Home, client: &Client, given: &str) -> anyhow::Result<String> {
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

async fn join(
    home: &Home,
    json: bool,
    code: &str,
    name: Option<String>,
    args: PassphraseArgs,
) -> anyhow::Result<()> {
    let passphrase = passphrase(args, Ask::Choose)?;
    let name = name.unwrap_or_else(hearth_node::devices::default_device_name);
    let joined = hearth_node::mesh::pairing::join(home, code, passphrase.as_ref(), &name).await?;
    let root = home.root().display().to_string();
    if json {
        return out_json(&JoinReport {
            home: root,
            peer_id: joined.peer_id.to_string(),
            vault_id: joined.vault_id,
            inviter: joined.inviter.to_string(),
        });
    }
    out(format!(
        "This device ({}) joined the vault {}",
        joined.peer_id, joined.vault_id
    ))?;
    out(format!(
        "Start it with: hearth --home {root} up   (it will sync with {})",
        joined.inviter
    ))
}

/// The signals `up` answers, listened for from its first moment: until a handler is
/// installed, SIGHUP and SIGTERM would kill the process (a closed terminal, or a
/// service manager stopping it, just as it starts) without a clean stop.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for SIGINT or SIGTERM; a SIGHUP (a closed terminal, `systemctl reload`)
    /// never stops the vault: it runs `on_hangup`, which reloads what can be reloaded.
    async fn wait<F, R>(mut self, mut on_hangup: F)
    where
        F: FnMut() -> R,
        R: std::future::Future<Output = ()>,
    {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => break,
                _ = self.terminate.recv() => break,
                _ = self.hangup.recv() => on_hangup().await,
            }
        }
        tracing::info!("stopping");
    }
}

/// SIGHUP: reads hearth.toml again and applies the log level and the peers (unless a
/// flag fixed them at start). A file that cannot be read changes nothing.
async fn reload_config(
    home: &Home,
    reloads: Reloads,
    node: &hearth_node::NodeHandle,
    log_reload: &LogReload,
) {
    let file = match crate::config::Config::load(home.root()) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!("SIGHUP: {e:#}; the node keeps its settings");
            return;
        }
    };
    let mut applied = Vec::new();
    if reloads.log {
        let filter = file.log.as_deref().unwrap_or(DEFAULT_LOG);
        match log_reload(filter) {
            Ok(()) => applied.push(format!("log = {filter:?}")),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot change the log level"),
        }
    }
    if reloads.peers
        && let Some(mesh) = node.vault().mesh()
    {
        let peers = file.peers();
        let count = peers.len();
        match mesh.handle.set_peers(peers).await {
            Ok(()) => applied.push(format!("{count} peer(s)")),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot change the peers"),
        }
    }
    tracing::info!(
        "SIGHUP: reloaded {} from {} (the other settings apply at the next start)",
        if applied.is_empty() {
            "nothing".to_owned()
        } else {
            applied.join(", ")
        },
        crate::config::FILE
    );
}

/// Gives this device the name hearth.toml asks for (an equal name writes nothing).
async fn name_this_device(node: &hearth_node::NodeHandle, name: &str) -> anyhow::Result<()> {
    let vault = node.vault();
    let name = hearth_node::devices::valid_name(name)
        .map_err(|e| anyhow::anyhow!("{}: name: {e}", crate::config::FILE))?;
    hearth_node::devices::rename(vault.collections(), &node.peer_id(), name)?;
    vault.store().commit().await?;
    Ok(())
}

/// What a person wants to read by default: Hearth's own events (devices connecting,
/// blobs arriving, grants revoked…), and only the libraries' warnings.
/// (Kademlia warns at every start that it has no bootstrap peers: Hearth uses none.)
const DEFAULT_LOG: &str = "warn,libp2p_kad=error,hearth_node=info,hearth=info";

/// Changes the log filter of the running node (SIGHUP with a new `log` in hearth.toml).
type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// `RUST_LOG`, unless it is unset or empty.
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

fn init_tracing(configured: Option<&str>) -> LogReload {
    let filter = rust_log()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| configured.and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok()))
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter_reloading();
    let handle = builder.reload_handle();
    let _ = builder.try_init();
    Box::new(move |text: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

async fn client_command(home: &Home, json: bool, command: Command) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
    match command {
        Command::Dashboard => {
            let link: Value = client
                .json(home, client.request(Method::POST, "/v1/dashboard/login"))
                .await?;
            if json {
                out_json(&link)?;
            } else {
                let url = link["url"].as_str().unwrap_or_default();
                out(url.to_owned())?;
                note("Open it in a browser on this device; it works once, for 10 minutes.");
            }
        }
        Command::Status {
            watch: true,
            until_synced,
        } => watch_status(home, json, &client, until_synced).await?,
        Command::Status { .. } => {
            let status: StatusResponse = client
                .json(home, client.request(Method::GET, "/v1/status"))
                .await?;
            if json {
                out_json(&status)?;
            } else {
                print_status(&status)?;
            }
        }
        Command::Put { collection, rest } => {
            let (id, data) = match rest.as_slice() {
                [data] => (None, data),
                [id, data] => (Some(id), data),
                _ => bail!("put takes COLLECTION [ID] JSON|@FILE|-"),
            };
            let body = read_data_arg(data)?;
            let request = match id {
                Some(id) => client.request(Method::PUT, &record_path(&collection, id)?),
                None => client.request(
                    Method::POST,
                    &format!("/v1/collections/{}/records", seg(&collection)),
                ),
            };
            let answer: PutResponse = client
                .json(
                    home,
                    request
                        .header("content-type", "application/json")
                        .body(body),
                )
                .await?;
            if json {
                out_json(&answer)?;
            } else {
                out(answer.id)?;
            }
        }
        Command::Get { collection, id } => {
            let record: Value = client
                .json(
                    home,
                    client.request(Method::GET, &record_path(&collection, &id)?),
                )
                .await?;
            print_value(json, &record)?;
            if !json {
                let path = format!("{}/conflicts", record_path(&collection, &id)?);
                let conflicts: ConflictsResponse = client
                    .json(home, client.request(Method::GET, &path))
                    .await?;
                if !conflicts.conflicts.is_empty() {
                    let fields: Vec<&str> =
                        conflicts.conflicts.keys().map(String::as_str).collect();
                    note(format!(
                        "edited on two devices at once: {} (see `hearth conflicts {collection}`)",
                        fields.join(", ")
                    ));
                }
                if !conflicts.versions.is_empty() {
                    note(format!(
                        "this record has {} versions from different devices; this is the first (see `hearth conflicts {collection}`)",
                        conflicts.versions.len()
                    ));
                }
                if let Some(deleted) = &conflicts.deleted {
                    note(format!(
                        "deleted on {} while edited on {}: the edit was kept (see `hearth conflicts {collection}`)",
                        deleted.deleted_on,
                        deleted.edited_on.join(", ")
                    ));
                }
            }
        }
        Command::Conflicts { collection } => {
            let names: Vec<String> = match collection {
                Some(name) => vec![name],
                None => {
                    let all: Vec<CollectionInfo> = client
                        .json(home, client.request(Method::GET, "/v1/collections"))
                        .await?;
                    all.into_iter()
                        .map(|c| c.name)
                        .filter(|n| !n.starts_with('_'))
                        .collect()
                }
            };
            let mut found = Vec::new();
            for name in names {
                let path = format!("/v1/collections/{}/conflicts", seg(&name));
                let records: Vec<ConflictsResponse> = client
                    .json(home, client.request(Method::GET, &path))
                    .await?;
                for record in records {
                    let mut entry = serde_json::json!({
                        "collection": name,
                        "id": record.id,
                        "conflicts": record.conflicts,
                    });
                    if !record.versions.is_empty() {
                        entry["versions"] = serde_json::json!(record.versions);
                    }
                    if let Some(deleted) = &record.deleted {
                        entry["deleted"] = serde_json::json!(deleted);
                    }
                    found.push(entry);
                }
            }
            if json {
                out_json(&found)?;
            } else if found.is_empty() {
                note("no record is in conflict");
            } else {
                for record in &found {
                    print_conflict(record)?;
                }
                note(
                    "choose a field's value with `hearth resolve COLLECTION ID FIELD VALUE` (the first value is the one shown now), \
                     keep a version with `hearth resolve COLLECTION ID --version N`, \
                     or write a merge with `hearth resolve COLLECTION ID --record JSON`",
                );
            }
        }
        Command::Resolve {
            collection,
            id,
            field,
            value,
            version,
            record,
        } => {
            let body = match (field, value, version, record) {
                (Some(field), Some(value), None, None) => {
                    let value: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
                    serde_json::json!({ "field": field, "value": value })
                }
                (None, None, Some(n), None) => {
                    let Some(index) = n.checked_sub(1) else {
                        anyhow::bail!("versions are numbered from 1 (1: the one shown)");
                    };
                    serde_json::json!({ "version": index })
                }
                (None, None, None, Some(data)) => {
                    let record: Value = serde_json::from_slice(&read_data_arg(&data)?)
                        .map_err(|e| anyhow::anyhow!("--record is not JSON: {e}"))?;
                    serde_json::json!({ "record": record })
                }
                _ => anyhow::bail!(
                    "say what to keep: FIELD VALUE, --version N, or --record JSON|@FILE|-"
                ),
            };
            let path = format!("{}/resolve", record_path(&collection, &id)?);
            let record: Value = client
                .json(home, client.request(Method::POST, &path).json(&body))
                .await?;
            print_value(json, &record)?;
        }
        Command::Patch {
            collection,
            id,
            data,
        } => {
            let body = read_data_arg(&data)?;
            let request = client
                .request(Method::PATCH, &record_path(&collection, &id)?)
                .header("content-type", "application/merge-patch+json")
                .body(body);
            let record: Value = client.json(home, request).await?;
            print_value(json, &record)?;
        }
        Command::Ls { collection } => {
            let path = format!("/v1/collections/{}/records", seg(&collection));
            let records: Vec<Value> = client
                .json(home, client.request(Method::GET, &path))
                .await?;
            if records.is_empty() {
                let all: Vec<CollectionInfo> = client
                    .json(home, client.request(Method::GET, "/v1/collections"))
                    .await?;
                if !all.iter().any(|c| c.name == collection) {
                    note(format!(
                        "warning: no collection is called {collection:?}{}",
                        hearth_node::owner::did_you_mean(
                            &collection,
                            all.iter().map(|c| c.name.as_str())
                        )
                    ));
                }
            }
            if json {
                out_json(&records)?;
            } else {
                for record in records {
                    out(record)?;
                }
            }
        }
        Command::Rm {
            collection,
            id: None,
        } => {
            client
                .send(
                    home,
                    client.request(
                        Method::DELETE,
                        &format!("/v1/collections/{}", seg(&collection)),
                    ),
                )
                .await?;
            if json {
                out_json(&serde_json::json!({ "collection": collection, "removed": true }))?;
            } else {
                out(format!("removed the empty collection {collection}"))?;
            }
        }
        Command::Rm {
            collection,
            id: Some(id),
        } => {
            client
                .send(
                    home,
                    client.request(Method::DELETE, &record_path(&collection, &id)?),
                )
                .await?;
            if json {
                out_json(&Removed { id, removed: true })?;
            } else {
                out(format!("removed {collection}/{id}"))?;
            }
        }
        Command::Collections => {
            let list: Vec<CollectionInfo> = client
                .json(home, client.request(Method::GET, "/v1/collections"))
                .await?;
            if json {
                out_json(&list)?;
            } else {
                for c in list {
                    out(format!("{}\t{}", c.name, c.records))?;
                }
            }
        }
        Command::Pair => {
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
        }
        Command::Devices { command: None } => {
            let devices: Vec<DeviceInfo> = client
                .json(home, client.request(Method::GET, "/v1/devices"))
                .await?;
            if json {
                out_json(&devices)?;
            } else {
                print_devices(&devices)?;
            }
        }
        Command::Devices {
            command: Some(DevicesCommand::Rename { device, name }),
        } => {
            let peer_id = device_id(home, &client, &device).await?;
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
        }
        Command::Devices {
            command: Some(DevicesCommand::Remove { device }),
        } => {
            let peer_id = device_id(home, &client, &device).await?;
            client
                .send(
                    home,
                    client.request(Method::DELETE, &format!("/v1/devices/{}", seg(&peer_id))),
                )
                .await?;
            if json {
                out_json(&Removed {
                    id: peer_id,
                    removed: true,
                })?;
            } else {
                out(format!(
                    "removed device {peer_id}; it receives nothing written from now on"
                ))?;
            }
        }
        Command::Grant {
            service,
            read,
            write,
            filters,
            expires,
            purpose,
            to,
            rate,
            app_password,
        } => {
            let request = GrantRequest {
                service,
                read,
                write,
                filters,
                expires,
                purpose,
                to,
                rate,
                app_password,
            };
            let created: GrantCreated = client
                .json(
                    home,
                    client.request(Method::POST, "/v1/grants").json(&request),
                )
                .await?;
            for warning in &created.warnings {
                note(format!("warning: {warning}"));
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
                let expires = match created.expires_at {
                    Some(t) => format!("expires {}", when(t)),
                    None => "never expires".to_owned(),
                };
                out(format!("grant {} ({expires})", created.id))?;
                note(
                    "Give the token to the service; it reads with `Authorization: Bearer <token>` at /v1/view.",
                );
            }
        }
        Command::Grants => {
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
        }
        Command::Revoke { grant_id } => {
            let path = format!("/v1/grants/{}/revoke", seg(&grant_id));
            let answer: RevokeResponse = client
                .json(home, client.request(Method::POST, &path))
                .await?;
            if json {
                out_json(&answer)?;
            } else {
                print_revoked(&grant_id, &answer)?;
            }
        }
        Command::Audit { grant, verify } => {
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
        }
        Command::Import {
            kind,
            file,
            into,
            folder,
            password_file,
            full,
        } => {
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
                import(home, json, &client, &collection, &file).await?;
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
        } => {
            let kind = kind.context("say what to export: contacts, calendar, mail, or --all")?;
            if maildir.is_some() {
                bail!("--maildir is for mail");
            }
            let collection = kind.collection_or(from)?;
            let path = format!("/v1/export/{}", seg(&collection));
            let response = client
                .send(home, client.request(Method::GET, &path))
                .await?;
            // A bar while a large export arrives into a file (not when it goes to stdout).
            let bar = match (&output, response.content_length()) {
                (Some(_), Some(total)) => progress(json, total, "receiving"),
                _ => None,
            };
            let text: Vec<u8> = counted(response.bytes_stream(), &bar)
                .try_fold(Vec::new(), |mut all, chunk| async move {
                    all.extend_from_slice(&chunk);
                    Ok(all)
                })
                .await
                .context("the export broke off")?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let text = String::from_utf8(text).context("the export is not UTF-8 text")?;
            match output {
                Some(file) => {
                    hearth_node::home::write_file_atomic(&file, text.as_bytes(), 0o600)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    if json {
                        out_json(&Exported {
                            collection,
                            path: file.display().to_string(),
                            bytes: text.len() as u64,
                        })?;
                    } else {
                        note(format!("wrote {} bytes to {}", text.len(), file.display()));
                    }
                }
                None if json => bail!("with --json, give -o FILE (the export is not JSON)"),
                None => write_stdout(text.as_bytes())?,
            }
        }
        Command::Blob { command } => blob(home, json, &client, command).await?,
        Command::Check => {
            let report: CheckReport = client
                .json(home, client.request(Method::GET, "/v1/check"))
                .await?;
            if json {
                out_json(&report)?;
            } else {
                for problem in &report.problems {
                    out(problem)?;
                }
                out(format!(
                    "checked {} sealed values, {} collections, {} blobs (every chunk), {} audit entries",
                    report.values, report.collections, report.blobs, report.audit_entries
                ))?;
            }
            if !report.ok {
                return Err(Reported(format!(
                    "the check found {} problem(s); the first: {}",
                    report.problems.len(),
                    report.problems.first().map_or("?", String::as_str)
                ))
                .into());
            }
        }
        Command::Init { .. }
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

/// `hearth export --json`.
#[derive(serde::Serialize)]
struct Exported {
    collection: String,
    path: String,
    bytes: u64,
}

/// Sends a file to `POST /v1/import/{c}`, with a progress bar on a terminal.
async fn import(
    home: &Home,
    json: bool,
    client: &Client,
    collection: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let bytes = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("cannot read stdin")?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let bar = progress(json, bytes.len() as u64, "sending");
    let chunks: Vec<bytes::Bytes> = bytes::Bytes::from(bytes)
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let counted = bar.clone();
    let body = futures::stream::iter(chunks).map(move |chunk| {
        if let Some(bar) = &counted {
            bar.inc(chunk.len() as u64);
        }
        Ok::<_, std::convert::Infallible>(chunk)
    });
    let path = format!("/v1/import/{}", seg(collection));
    if let Some(bar) = &bar {
        bar.set_message("sending");
    }
    let request = client
        .request(Method::POST, &path)
        .header("content-type", "text/plain; charset=utf-8")
        .body(reqwest::Body::wrap_stream(body));
    let report: ImportReport = client.json(home, request).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if json {
        return out_json(&report);
    }
    out(format!(
        "{} new, {} updated, {} unchanged in {collection}",
        report.imported, report.updated, report.unchanged
    ))?;
    for skipped in &report.skipped {
        note(format!(
            "skipped entry {} (line {}): {}",
            skipped.entry, skipped.line, skipped.reason
        ));
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

async fn blob(
    home: &Home,
    json: bool,
    client: &Client,
    command: BlobCommand,
) -> anyhow::Result<()> {
    match command {
        BlobCommand::Put {
            file,
            name,
            content_type,
        } => {
            let name = name.or_else(|| {
                (file.as_os_str() != "-")
                    .then(|| file.file_name())
                    .flatten()
                    .map(|n| n.to_string_lossy().into_owned())
            });
            let content_type = content_type.or_else(|| {
                let name = name.as_deref()?;
                mime_guess::from_path(name)
                    .first()
                    .map(|m| m.essence_str().to_owned())
            });
            let mut bar = None;
            let body = if file.as_os_str() == "-" {
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tokio::io::stdin()))
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("cannot open {}", file.display()))?;
                let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                bar = progress(json, size, "sending");
                reqwest::Body::wrap_stream(counted(tokio_util::io::ReaderStream::new(f), &bar))
            };
            let mut request = client.request(Method::POST, "/v1/blobs").body(body);
            if let Some(name) = &name {
                request = request.query(&[("name", name)]);
            }
            if let Some(content_type) = &content_type {
                request = request.header("content-type", content_type);
            }
            let info: BlobInfo = client.json(home, request).await?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if json {
                out_json(&info)?;
            } else {
                out(info.id)?;
            }
        }
        BlobCommand::Ls => {
            let blobs: Vec<BlobInfo> = client
                .json(home, client.request(Method::GET, "/v1/blobs"))
                .await?;
            if json {
                out_json(&blobs)?;
            } else {
                for b in &blobs {
                    let mut line = format!(
                        "{}\t{}\t{}\t{}",
                        b.id,
                        b.size,
                        b.content_type.as_deref().unwrap_or("-"),
                        b.name.as_deref().unwrap_or("-")
                    );
                    if !b.here {
                        line.push_str("\t(still arriving)");
                    }
                    out(line)?;
                }
            }
        }
        BlobCommand::Rm { id } => {
            hearth_protocol::BlobId::parse(&id)?;
            let removed: BlobRemoved = client
                .json(
                    home,
                    client.request(Method::DELETE, &format!("/v1/blobs/{}", seg(&id))),
                )
                .await?;
            if json {
                out_json(&removed)?;
            } else {
                out(format!(
                    "removed blob {id} from every device; freed {} bytes here",
                    removed.bytes
                ))?;
            }
        }
        BlobCommand::Get { id, output, force } => {
            hearth_protocol::BlobId::parse(&id)?;
            if json && output.is_none() {
                bail!("with --json, give -o FILE (the blob's bytes are not JSON)");
            }
            if output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("a blob's bytes would go to the terminal: give -o FILE, or redirect stdout");
            }
            if let Some(path) = &output
                && let Ok(meta) = std::fs::symlink_metadata(path)
            {
                // The blob is written beside FILE and renamed onto it: only a regular
                // file may be replaced that way.
                if !meta.is_file() {
                    bail!(
                        "{} exists and is not a regular file: give a file name",
                        path.display()
                    );
                }
                if !force {
                    bail!(
                        "{} exists: give --force to replace it, or another name",
                        path.display()
                    );
                }
            }
            let response = client
                .send(
                    home,
                    client.request(Method::GET, &format!("/v1/blobs/{}", seg(&id))),
                )
                .await?;
            let bar = match (&output, response.content_length()) {
                (Some(_), Some(total)) => progress(json, total, "receiving"),
                _ => None,
            };
            let mut stream = counted(response.bytes_stream(), &bar);
            let mut size = 0u64;
            match &output {
                Some(path) => {
                    // Written beside the target and renamed, so a failed transfer leaves
                    // no partial file under the name asked for.
                    let tmp = path.with_extension("hearth-partial");
                    let result: anyhow::Result<()> = async {
                        let mut file = tokio::fs::File::create(&tmp)
                            .await
                            .with_context(|| format!("cannot create {}", tmp.display()))?;
                        while let Some(chunk) = stream
                            .try_next()
                            .await
                            .context("the transfer broke off (the blob may be corrupt)")?
                        {
                            size += chunk.len() as u64;
                            file.write_all(&chunk).await?;
                        }
                        file.flush().await?;
                        file.sync_all().await?;
                        tokio::fs::rename(&tmp, path).await?;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = result {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(e.context(format!("blob {id} is corrupt or unreadable")));
                    }
                    if let Some(bar) = &bar {
                        bar.finish_and_clear();
                    }
                    if json {
                        out_json(&BlobWritten {
                            id,
                            size,
                            path: path.display().to_string(),
                        })?;
                    } else {
                        note(format!("wrote {size} bytes to {}", path.display()));
                    }
                }
                None => {
                    let mut stdout = tokio::io::stdout();
                    while let Some(chunk) = stream.try_next().await.with_context(|| {
                        format!("blob {id} is corrupt or unreadable: the transfer broke off")
                    })? {
                        match stdout.write_all(&chunk).await {
                            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                                return Err(StdoutClosed.into());
                            }
                            other => other?,
                        }
                    }
                    stdout.flush().await?;
                }
            }
        }
    }
    Ok(())
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
    if unix >= now {
        format!("in {}", human_duration(unix - now))
    } else {
        format!("{} ago", human_duration(now - unix))
    }
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// `contacts.name, contacts.email` or `notes` (all fields).
fn describe_fields(scope: &Scope, write: bool) -> String {
    let mut parts = Vec::new();
    for (name, c) in &scope.collections {
        let fields = if write { &c.write } else { &c.read };
        match fields {
            None => {}
            Some(Fields::All) => parts.push(name.clone()),
            Some(Fields::Only(paths)) => {
                parts.extend(paths.iter().map(|p| format!("{name}.{p}")));
            }
        }
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

fn print_grant(g: &GrantInfo) -> anyhow::Result<()> {
    let expires = match g.expires_at {
        Some(t) if t <= hearth_node::clock::now_unix() => {
            format!("expired {} ({})", local_time(t), when(t))
        }
        Some(t) => format!("expires {} ({})", local_time(t), when(t)),
        None => "never expires".to_owned(),
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

fn print_revoked(grant_id: &str, answer: &RevokeResponse) -> anyhow::Result<()> {
    let seen = &answer.seen;
    out(format!(
        "revoked grant {grant_id}: its next request is refused here, and on your other devices once they sync."
    ))?;
    out(format!(
        "What {} already saw and did ({} audited accesses):",
        answer.grant.service, seen.accesses
    ))?;
    for c in &seen.collections {
        out(format!(
            "  {}: {} record reads, {} records pushed by events, fields {:?}",
            c.collection, c.record_reads, c.deliveries, c.fields
        ))?;
        if c.writes > 0 {
            out(format!(
                "  {}: {} writes, fields {:?}, records {:?}",
                c.collection, c.writes, c.written_fields, c.written_ids
            ))?;
        }
    }
    if seen.refused > 0 {
        out(format!("  {} requests refused", seen.refused))?;
    }
    out("Revocation cannot take back what was already sent.")
}

fn print_audit_entry(e: &AuditEntry) -> anyhow::Result<()> {
    // A read that found nothing (a missing id, or one the grant cannot see) is a
    // probe: say so rather than "0 records".
    let what = if e.reason.as_deref() == Some("not_found") && e.records == 0 {
        "found nothing".to_owned()
    } else {
        format!("{} records\tfields {:?}", e.records, e.fields)
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

fn print_devices(devices: &[DeviceInfo]) -> anyhow::Result<()> {
    for d in devices {
        let state = if d.removed_at.is_some() {
            "removed"
        } else if d.this_device {
            "this device"
        } else if d.online {
            "online"
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
fn print_qr(code: &str) {
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
async fn watch_status(
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
        // Caught up: another device is connected now, this one has synced, and no blob
        // is still on its way (a sync starts as soon as a device connects).
        let caught_up = online > 0 && last.is_some() && status.arriving.is_empty();
        line.set_message(format!(
            "{online} of {} other device(s) online · last sync {} · {records} records in {} collections{}",
            others.len(),
            last.map_or("never".to_owned(), when),
            status.collections.len(),
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
                    "caught up: {records} records, last sync {}",
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

fn print_status(status: &StatusResponse) -> anyhow::Result<()> {
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
    for addr in &status.listen_addrs {
        out(format!("listen   {addr}"))?;
    }
    out("devices")?;
    print_devices(&status.devices)
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
