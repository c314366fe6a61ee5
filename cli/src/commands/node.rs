//! The commands that run without a node to talk to: `init`, `up` (which is the
//! node: its signals, reloads and logs), `join` and `passphrase`.

use super::*;

/// When a passphrase is asked for on a terminal (with no file, no environment
/// variable and no systemd credential).
pub(super) enum Ask<'a> {
    /// To open this HOME's key file, if it is wrapped.
    Unlock(&'a Home),
    /// For a new key file: may be left empty (no passphrase).
    Choose,
}

/// The passphrase: `--passphrase-file`, else `$HEARTH_PASSPHRASE`, else the systemd
/// credential `passphrase`, else asked on the terminal.
pub(super) fn passphrase(args: PassphraseArgs, ask: Ask) -> anyhow::Result<Option<Passphrase>> {
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

pub(super) fn on_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

pub(super) fn prompt(question: &str) -> anyhow::Result<String> {
    rpassword::prompt_password(question).context("cannot read the passphrase from the terminal")
}

/// Asks twice for a new passphrase; empty is none.
pub(super) fn new_passphrase(question: &str) -> anyhow::Result<Option<Passphrase>> {
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

pub(super) fn change_passphrase(
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

pub(super) async fn init(home: &Home, json: bool, args: PassphraseArgs) -> anyhow::Result<()> {
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
pub(super) struct Reloads {
    pub(super) peers: bool,
    pub(super) log: bool,
}

/// What `up` takes besides the mesh and the passphrase.
pub(super) struct UpOptions {
    pub(super) api: std::net::SocketAddr,
    pub(super) api_public: bool,
    pub(super) lan: Option<std::net::SocketAddr>,
    pub(super) lan_apps_only: bool,
    pub(super) accept_rollback: bool,
    pub(super) cache_mb: Option<u32>,
    /// hearth.toml's `free_unnamed_after`, if it says.
    pub(super) free_unnamed_after: Option<crate::config::FreeAfter>,
    /// What a SIGHUP may change.
    pub(super) reloads: Reloads,
    /// This device's name, from hearth.toml.
    pub(super) name: Option<String>,
    /// The log filter, from hearth.toml (`RUST_LOG` wins).
    pub(super) log: Option<String>,
}

pub(super) async fn up(
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
    if let Some(after) = options.free_unnamed_after {
        config.limits.unnamed_blob_grace = after.0;
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

pub(super) async fn print_started(
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

pub(super) async fn join(
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
pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for SIGINT or SIGTERM; a SIGHUP (a closed terminal, `systemctl reload`)
    /// never stops the vault: it runs `on_hangup`, which reloads what can be reloaded.
    pub(super) async fn wait<F, R>(mut self, mut on_hangup: F)
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
pub(super) async fn reload_config(
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
pub(super) async fn name_this_device(
    node: &hearth_node::NodeHandle,
    name: &str,
) -> anyhow::Result<()> {
    let vault = node.vault();
    let name = hearth_node::devices::valid_name(name)
        .map_err(|e| anyhow::anyhow!("{}: name: {e}", crate::config::FILE))?;
    hearth_node::devices::rename(vault.collections(), &node.peer_id(), name)?;
    vault.store().commit().await?;
    Ok(())
}

/// `RUST_LOG`, unless it is unset or empty.
pub(super) fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

pub(super) fn init_tracing(configured: Option<&str>) -> LogReload {
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
