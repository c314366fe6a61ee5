//! The Hearth node as a library.
//!
//! [`Node::start`] opens (or creates) the vault in a HOME, opens the encrypted store,
//! and serves the local HTTP API; the returned [`NodeHandle`] says where, and shuts it
//! all down. The vault itself — keys, store, collections, blobs, devices, the audit
//! log — is the crate `hearth-core`, re-exported here under the same module names
//! (`hearth_node::collections` is `hearth_core::collections`). This crate adds how the
//! vault is reached, outermost first:
//!
//! - [`api`]: the local HTTP API (axum); the only module that knows HTTP and JSON bodies.
//! - [`dashboard`]: the web dashboard; [`dav`]: CardDAV/CalDAV; [`lan`]: TLS for phones.
//! - [`owner`]: the owner's operations; [`access`]: the door every service passes.
//! - [`pim`] and [`mail`]: vCard, iCalendar and mail in collections.
//! - [`mesh`]: libp2p — sync, pairing, blobs and views between devices.

pub mod access;
pub mod api;
pub mod backup;
pub mod dashboard;
pub mod dav;
pub mod download;
pub mod filemeta;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod keeper;
pub mod lan;
pub mod mail;
pub mod mesh;
pub mod owner;
pub mod phone;
pub mod pim;
pub mod search;
pub mod server;
pub mod sweeper;
pub mod throttle;
pub mod thumbnails;

#[cfg(test)]
pub(crate) use hearth_core::testutil;
pub use hearth_core::{
    blobs, clock, collections, commits, devices, epochs, home, index, keys, recordmerge, records,
    recovery, store, textmerge,
};

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::blobs::{BlobError, Blobs};
use crate::collections::Collections;
use crate::home::{Home, write_file_atomic};
use crate::keys::{KeysError, Passphrase, VaultKeys};
use crate::store::{Store, StoreError};

pub use libp2p::{Multiaddr, PeerId};

/// Where `hearth up --lan` serves the API over TLS unless told otherwise.
pub const DEFAULT_LAN_ADDR: &str = "0.0.0.0:7743";

/// The default address of the local API.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7780";

/// How long shutdown waits for requests in flight before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Size limits and bounds of the local API.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest record (or patch) body accepted, in bytes.
    pub max_record_bytes: usize,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Largest vCard or iCalendar file accepted for import, in bytes.
    pub max_import_bytes: usize,
    /// Requests served at once; more wait.
    pub max_concurrent_requests: usize,
    /// How much of the vault's documents stays in memory, counted by an estimate of
    /// their memory ([`Collections::set_cache_budget`]).
    pub cache_bytes: usize,
    /// How long bytes no record names any more (a removed file's) stay before they are
    /// removed: two findings this far apart must agree ([`sweeper`]). `None`: never
    /// removed by themselves (`hearth blob rm` still removes them).
    pub unnamed_blob_grace: Option<std::time::Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_blob_bytes: 64 * 1024 * 1024 * 1024,
            max_import_bytes: 256 * 1024 * 1024,
            max_concurrent_requests: 256,
            cache_bytes: collections::DEFAULT_CACHE_BYTES,
            unnamed_blob_grace: Some(std::time::Duration::from_secs(10 * 60)),
        }
    }
}

pub struct NodeConfig {
    pub home: PathBuf,
    pub api_addr: SocketAddr,
    /// Serve the API on a non-loopback address. Off by default: anyone who can reach
    /// the port could try tokens.
    pub allow_public_api: bool,
    /// Host names the API answers to besides loopback names and its own address (for
    /// an API served beyond loopback under a name).
    pub api_hosts: Vec<String>,
    /// Also serve the API (and DAV) on this address, over TLS only (`hearth up --lan`).
    pub lan_addr: Option<SocketAddr>,
    /// Whether the LAN listener serves the owner's routes too (the default, so the
    /// CLI of another computer can reach the node with the owner token), or only what
    /// apps use: DAV, the dashboard and the service views (`--lan-apps-only`).
    pub lan_owner_routes: bool,
    pub passphrase: Option<Passphrase>,
    /// Start even if the store went back in time (an older copy restored on purpose):
    /// see [`StoreError::RolledBack`].
    pub accept_rollback: bool,
    pub limits: Limits,
    /// The mesh to other devices; `None` runs the node alone.
    pub mesh: Option<mesh::MeshConfig>,
}

impl NodeConfig {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            api_addr: DEFAULT_API_ADDR
                .parse()
                .expect("the default API address parses"),
            allow_public_api: false,
            api_hosts: Vec::new(),
            lan_addr: None,
            lan_owner_routes: true,
            passphrase: None,
            accept_rollback: false,
            limits: Limits::default(),
            mesh: Some(mesh::MeshConfig::default()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(
        "{0} is a backup host's HOME (`hearth host`), not a vault's; give the node a HOME of its own (--home)"
    )]
    HostHome(String),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blobs(#[from] BlobError),
    #[error("cannot listen for the API on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "refusing to serve the API on {0}, which is not a loopback address (allow it explicitly to do so)"
    )]
    PublicApi(SocketAddr),
    #[error("cannot write {path}: {source}")]
    WriteAddr { path: String, source: io::Error },
    #[error(transparent)]
    Mesh(#[from] mesh::MeshError),
    #[error(transparent)]
    Lan(#[from] lan::LanError),
    #[error("cannot keep the vault's collections in parts (a vault of an older Hearth): {0}")]
    Split(collections::CollectionError),
    #[error("cannot move the names DAV clients gave to records into their new records: {0}")]
    DavNames(collections::CollectionError),
    #[error("cannot register this device in the device list: {0}")]
    Devices(#[from] collections::CollectionError),
}

/// Where the API is served on the LAN, and the certificate's fingerprint.
#[derive(Debug, Clone)]
pub struct LanInfo {
    pub addr: SocketAddr,
    /// SHA-256 of the TLS certificate, `AB:CD:…`.
    pub fingerprint: String,
    /// Names and addresses the certificate covers.
    pub names: Vec<String>,
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
}

/// What a running node shares between its parts.
pub struct Vault {
    pub(crate) home: Home,
    pub(crate) keys: Arc<VaultKeys>,
    pub(crate) store: Arc<Store>,
    pub(crate) collections: Arc<Collections>,
    pub(crate) blobs: Blobs,
    pub(crate) limits: Limits,
    pub(crate) api_addr: SocketAddr,
    /// The host names the API answers to.
    pub(crate) hosts: api::HostAllowlist,
    /// The one door to vault data for services (every view front end goes through it).
    pub(crate) door: access::Door,
    /// The TLS listener on the LAN, if one runs: its address and certificate.
    pub(crate) lan: Option<LanInfo>,
    /// The web dashboard's login links and sessions.
    pub(crate) dashboard: dashboard::Sessions,
    /// Wrong app passwords per client address (see `throttle`).
    pub(crate) password_throttle: throttle::PasswordThrottle,
    /// The file share's WebDAV locks (in memory: see `dav::locks`).
    pub(crate) file_locks: dav::locks::Locks,
    /// Thumbnails being made (two at a time).
    pub(crate) thumbnailer: thumbnails::Thumbnailer,
    /// The search index (this device's, sealed; see [`search`]).
    pub(crate) search: search::Index,
    /// When a member told this device it was removed (see `mesh::removal`).
    removed: std::sync::Mutex<Option<u64>>,
    /// Set while the mesh runs (never, for a node started without one). Cleared at
    /// shutdown: the mesh holds the vault, so this would otherwise be a cycle.
    mesh: std::sync::RwLock<Option<mesh::MeshState>>,
    /// Uploads to the vault's backup hosts (see [`backup`]).
    pub(crate) backups: backup::Backups,
}

impl Vault {
    /// Where the vault lives on this device.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The vault's keys and this device's identity.
    pub fn keys(&self) -> &Arc<VaultKeys> {
        &self.keys
    }

    /// The store: sealed trees, and the commit that makes writes durable.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The collections (the owner's access: no grant is checked).
    pub fn collections(&self) -> &Arc<Collections> {
        &self.collections
    }

    /// The blob store.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// The door every service's request passes.
    pub fn door(&self) -> &access::Door {
        &self.door
    }

    /// The limits this node runs with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The TLS listener on the LAN, if one runs.
    pub fn lan(&self) -> Option<&LanInfo> {
        self.lan.as_ref()
    }

    /// Where the API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// When another device last told this one it was removed from the vault (in
    /// memory; see `mesh::removal`). `Some(at)` sets it, `None` clears it (a sync with
    /// a member showed it is not). Returns whether it changed.
    pub fn removal_notice(&self, at: Option<u64>) -> bool {
        let mut notice = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        let changed = notice.is_some() != at.is_some();
        *notice = at;
        changed
    }

    /// See [`Vault::removal_notice`].
    pub fn removed_at(&self) -> Option<u64> {
        *self.removed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees the space of removed blobs on this device: drops their manifests, makes
    /// that durable, then deletes every chunk no blob here uses (see
    /// [`blobs::Blobs::delete_unused_chunks`] for why this is safe while uploads and
    /// fetches run).
    pub async fn collect_blob_garbage(
        self: &Arc<Self>,
    ) -> Result<blobs::Collected, blobs::BlobError> {
        let task = |e: tokio::task::JoinError| blobs::BlobError::Internal(e.to_string());
        // One at a time: another's deletions must not run between this one's manifest
        // drop and its commit.
        let _one = self.blobs.one_collection().await;
        let vault = self.clone();
        let outcome =
            tokio::task::spawn_blocking(move || vault.blobs.drop_removed(&vault.collections))
                .await
                .map_err(task)??;
        if outcome.changed() {
            self.store.commit().await?;
        }
        let dropped = outcome.dropped;
        let vault = self.clone();
        let mut collected =
            tokio::task::spawn_blocking(move || vault.blobs.delete_unused_chunks(false))
                .await
                .map_err(task)??;
        collected.blobs = dropped;
        if dropped > 0 || collected.chunks > 0 {
            tracing::info!(
                blobs = dropped,
                chunks = collected.chunks,
                bytes = collected.bytes,
                "freed the space of removed blobs"
            );
        }
        Ok(collected)
    }

    /// The running mesh, if any.
    pub fn mesh(&self) -> Option<mesh::MeshState> {
        self.mesh
            .read()
            .expect("mesh lock is never poisoned")
            .clone()
    }

    fn set_mesh(&self, state: Option<mesh::MeshState>) {
        *self.mesh.write().expect("mesh lock is never poisoned") = state;
    }
}

pub struct Node;

/// Creates a vault in `home` — keys, owner token, the store with this device in its
/// device list, the blob directory — without running a node. Refuses, changing
/// nothing, if `home` holds one. Must run inside a tokio runtime.
pub async fn init_vault(
    home: &Home,
    passphrase: Option<&Passphrase>,
) -> Result<InitReport, StartError> {
    let made = keys::init(home, passphrase)?;
    let report = InitReport {
        peer_id: made.keys.peer_id(),
        vault_id: made.keys.vault_id_hex(),
        passphrase: made.passphrase,
    };
    let keys = Arc::new(made.keys);
    let store = Arc::new(Store::open(&home.store_dir(), keys.clone())?);
    let collections = Collections::open(store.clone(), collections::actor_for(&keys.peer_id()))?;
    devices::add(
        &collections,
        &keys.peer_id(),
        &devices::default_device_name(),
    )?;
    Blobs::open(home.blobs_dir(), store.clone(), keys.clone())?;
    store.commit().await?;
    drop(collections);
    store.shutdown().await?;
    Ok(report)
}

/// What [`init_vault`] made.
pub struct InitReport {
    pub peer_id: PeerId,
    pub vault_id: String,
    /// Whether the secrets are wrapped by a passphrase.
    pub passphrase: bool,
}

impl Node {
    /// Opens the vault in `config.home` (creating it if HOME has none) and serves the
    /// API. Must run inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<NodeHandle, StartError> {
        let home = Home::new(config.home);
        if home.is_host() {
            return Err(StartError::HostHome(home.root().display().to_string()));
        }
        let created = !home.has_vault();
        if !created {
            // Narrows a HOME that an earlier version made readable by others.
            home::create_private_dir(home.root()).map_err(|source| StartError::WriteAddr {
                path: home.root().display().to_string(),
                source,
            })?;
        }
        let keys = if created {
            keys::init(&home, config.passphrase.as_ref())?.keys
        } else {
            keys::open(&home, config.passphrase.as_ref())?
        };
        drop(config.passphrase);
        let keys = Arc::new(keys);
        let peer_id = keys.peer_id();

        if !config.api_addr.ip().is_loopback() && !config.allow_public_api {
            return Err(StartError::PublicApi(config.api_addr));
        }
        let store = Arc::new(Store::open_with(
            &home.store_dir(),
            keys.clone(),
            config.accept_rollback,
        )?);
        let collections = Arc::new(Collections::open(
            store.clone(),
            collections::actor_for(&peer_id),
        )?);
        collections.set_cache_budget(config.limits.cache_bytes);
        // What is written from here on is sealed under the newest epoch key held.
        epochs::hold_known(&collections, &store, &keys)?;
        // A vault of a Hearth from before parts: its collections split, once.
        if !collections
            .split_old()
            .map_err(StartError::Split)?
            .is_empty()
        {
            store.commit().await?;
        }
        if devices::add(&collections, &peer_id, &devices::default_device_name())?
            | devices::set_exchange(&collections, &keys)?
        {
            store.commit().await?;
        }
        // The epoch keys, before any token is minted or checked.
        if epochs::keep(&collections, &store, &keys, epochs::Rotation::IfNeeded)?.wrote() {
            store.commit().await?;
        }
        if access::dav::move_legacy_names(&collections).map_err(StartError::DavNames)? {
            store.commit().await?;
        }
        let blobs = Blobs::open(home.blobs_dir(), store.clone(), keys.clone())?;
        // Removed blobs whose removal arrived while the node was stopping go first.
        if blobs.drop_removed(&collections)?.changed() {
            store.commit().await?;
        }
        blobs.sweep_orphans()?;

        let listener = tokio::net::TcpListener::bind(config.api_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.api_addr,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.api_addr,
            source,
        })?;
        // This device's audit chain; after an accepted rollback it continues under a
        // new name, so no entry number it may already have given out is used again.
        let chain = match store.chain_epoch()? {
            0 => peer_id.to_string(),
            epoch => format!("{peer_id}-r{epoch}"),
        };
        let door = access::Door::new(collections.clone(), keys.clone(), store.clone(), chain);
        door.start();
        // The LAN listener: TLS only, with this device's certificate.
        let lan = match config.lan_addr {
            Some(addr) => {
                let tls = lan::load_or_make(&home, &store, &lan::names_for(addr.ip()))?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some((listener, tls, bound))
            }
            None => None,
        };
        let mut hosts = config.api_hosts.clone();
        if let Some((_, tls, bound)) = &lan {
            hosts.extend(tls.names.iter().cloned());
            hosts.push(bound.ip().to_string());
        }
        let search = search::Index::open(store.clone())?.with_bodies(blobs.heads());
        let vault = Arc::new(Vault {
            home: home.clone(),
            keys,
            store,
            collections,
            blobs,
            limits: config.limits,
            api_addr,
            hosts: api::HostAllowlist::new(api_addr, &hosts),
            door,
            lan: lan.as_ref().map(|(_, tls, bound)| LanInfo {
                addr: *bound,
                fingerprint: tls.fingerprint.clone(),
                names: tls.names.clone(),
                cert_der: tls.cert_der.clone(),
            }),
            dashboard: dashboard::Sessions::default(),
            password_throttle: throttle::PasswordThrottle::default(),
            file_locks: dav::locks::Locks::default(),
            thumbnailer: thumbnails::Thumbnailer::default(),
            search,
            removed: std::sync::Mutex::new(None),
            mesh: std::sync::RwLock::new(None),
            backups: backup::Backups::default(),
        });
        let keeper = keeper::spawn(vault.clone());
        let indexer = search::spawn(vault.clone());
        let sweeper = vault
            .limits
            .unnamed_blob_grace
            .map(|grace| sweeper::spawn(vault.clone(), grace));
        let mesh = match config.mesh {
            Some(mesh_config) => {
                let mesh = mesh::Mesh::start(vault.clone(), mesh_config).await?;
                vault.set_mesh(Some(mesh.state().clone()));
                Some(mesh)
            }
            None => None,
        };
        // Uploads need the mesh (hosts are reached through it).
        let uploader = mesh.is_some().then(|| backup::spawn(vault.clone()));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = api::router(vault.clone());
        let lan_server = lan.map(|(listener, tls, bound)| {
            let (stop, stop_rx) = oneshot::channel::<()>();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
            let app = if config.lan_owner_routes {
                app.clone()
            } else {
                app.clone().layer(axum::middleware::from_fn(api::apps_only))
            };
            tracing::info!(lan_addr = %bound, fingerprint = %tls.fingerprint, "serving the API on the LAN over TLS");
            let task =
                tokio::spawn(async move { server::serve_tls(listener, app, stop_rx, acceptor).await });
            (stop, task)
        });
        let server = tokio::spawn(async move { server::serve(listener, app, stop_rx).await });
        // Written only once the API accepts connections, so a client that finds the
        // file can use it.
        write_file_atomic(&home.api_addr(), format!("{api_addr}\n").as_bytes(), 0o644).map_err(
            |source| StartError::WriteAddr {
                path: home.api_addr().display().to_string(),
                source,
            },
        )?;
        tracing::info!(%api_addr, %peer_id, home = %home.root().display(), created, "node started");
        Ok(NodeHandle {
            vault,
            peer_id,
            created,
            stop_tx: Some(stop_tx),
            server: Some(server),
            lan_server,
            mesh,
            keeper: Some(keeper),
            indexer: Some(indexer),
            sweeper,
            uploader,
        })
    }
}

/// A running node. Dropping it without [`NodeHandle::shutdown`] leaves the server
/// task running until the runtime ends; call `shutdown` to flush and stop.
pub struct NodeHandle {
    vault: Arc<Vault>,
    peer_id: PeerId,
    created: bool,
    stop_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<io::Result<()>>>,
    lan_server: Option<(oneshot::Sender<()>, JoinHandle<io::Result<()>>)>,
    mesh: Option<mesh::Mesh>,
    /// The task that keeps the epoch keys in step (see [`keeper`]).
    keeper: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// The task that follows the change log into the search index.
    indexer: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// The task that frees bytes no record names (see [`sweeper`]).
    sweeper: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// The task that uploads to backup hosts (see [`backup`]).
    uploader: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl NodeHandle {
    pub fn api_addr(&self) -> SocketAddr {
        self.vault.api_addr
    }
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }
    pub fn vault_id(&self) -> String {
        self.vault.keys.vault_id_hex()
    }
    pub fn home(&self) -> &std::path::Path {
        self.vault.home.root()
    }
    /// Whether this start created the vault.
    pub fn created_vault(&self) -> bool {
        self.created
    }
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Stops serving (requests in flight get a grace period), flushes the store and
    /// removes `HOME/api.addr`.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        if let Some((stop, task)) = self.uploader.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        self.vault.set_mesh(None);
        // Event streams end first, so the server's drain does not wait on them.
        self.vault.door.shutdown().await;
        if let Some(mesh) = self.mesh.take() {
            mesh.shutdown().await;
        }
        if let Some((stop, task)) = self.keeper.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some((stop, task)) = self.sweeper.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some((stop, task)) = self.indexer.take() {
            self.vault.search.stop();
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some(stop) = self.stop_tx.take() {
            let _ = stop.send(());
        }
        if let Some((stop, server)) = self.lan_server.take() {
            let _ = stop.send(());
            if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
                tracing::warn!("LAN connections still open after the grace period");
            }
        }
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "API server task failed"),
                Err(_) => {
                    tracing::warn!(
                        "requests still in flight after the grace period; cutting them off"
                    );
                    server.abort();
                }
            }
        }
        let flushed = self.vault.store.shutdown().await;
        let addr_file = self.vault.home.api_addr();
        if std::fs::read_to_string(&addr_file)
            .is_ok_and(|a| a.trim() == self.vault.api_addr.to_string())
        {
            let _ = std::fs::remove_file(&addr_file);
        }
        tracing::info!("node stopped");
        flushed
    }
}
