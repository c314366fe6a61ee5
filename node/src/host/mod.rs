//! A backup host (`hearth host`): a node of its own kind, with its own HOME and PeerId
//! and no vault, that keeps other vaults' backups and can read none of them.
//!
//! It speaks one protocol, `/hearth/backup/1` ([`hearth_protocol::backup`]): a vault
//! enrolls with a one-time invite (`hearth host invite`), then its devices open it with
//! their upload token and append objects and manifests; nothing can be deleted through
//! it. What it keeps is in [`store`]. Its local API (`HOME/api.addr`, the owner token in
//! `HOME/owner.token`, as a vault's node) makes invites and lists the vaults by their
//! opaque names and sizes.

pub mod api;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hearth_protocol::backup::{
    BACKUP_PROTOCOL, Handle, MANIFESTS_PER_ANSWER, Request, Response, decode, encode,
    encode_host_invite, owner_open_message,
};
use hearth_protocol::invite::{Invite, pairing_proof};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, noise, ping, tcp, yamux};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::home::{Home, create_private_dir, write_file_atomic};
use crate::mesh::frames::{read_frame, write_frame};
use store::{HostStore, Refusal};

/// What a vault enrolled from now on may store, unless `--quota-mb` says otherwise.
pub const DEFAULT_QUOTA: u64 = 10 * 1024 * 1024 * 1024;
/// How long an invite holds.
pub const INVITE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Invites waiting at once, at most.
const MAX_INVITES: usize = 16;
/// Streams served at once.
const MAX_STREAMS: usize = 64;
/// A device that says nothing for this long is let go.
const IDLE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0} holds a vault, not a backup host; give `hearth host` a HOME of its own (--home)")]
    HoldsVault(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the host's key file {0} is damaged")]
    BadKey(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot set up the network: {0}")]
    Transport(String),
    #[error("cannot serve the API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostError {
    let path = path.display().to_string();
    move |source| HostError::Io { what, path, source }
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub home: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub api: SocketAddr,
    pub quota: u64,
}

/// Invites waiting to be used: their secrets, in memory only.
#[derive(Default)]
pub struct Invites {
    pending: Mutex<Vec<(Zeroizing<[u8; 32]>, u64)>>,
}

impl Invites {
    fn add(&self, secret: Zeroizing<[u8; 32]>, expires: u64) {
        let mut pending = self.pending.lock().expect("invites lock is never poisoned");
        let now = unix_now();
        pending.retain(|(_, e)| *e > now);
        if pending.len() >= MAX_INVITES {
            pending.remove(0);
        }
        pending.push((secret, expires));
    }

    /// Uses up the invite whose secret made `proof`, if one did and has not expired.
    fn take(&self, proof: &[u8; 32], host: &PeerId, device: &PeerId) -> bool {
        let mut pending = self.pending.lock().expect("invites lock is never poisoned");
        let now = unix_now();
        let mut found = None;
        // Every pending invite is compared, in constant time each.
        for (i, (secret, expires)) in pending.iter().enumerate() {
            let expected = pairing_proof(secret, &host.to_bytes(), &device.to_bytes());
            if bool::from(expected.ct_eq(proof)) && *expires > now {
                found = Some(i);
            }
        }
        found.map(|i| pending.remove(i)).is_some()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the host's API and its stream handlers share.
pub struct HostState {
    pub home: Home,
    pub peer_id: PeerId,
    pub store: HostStore,
    pub invites: Invites,
    pub owner_token_hash: [u8; 32],
    listen_addrs: Mutex<Vec<Multiaddr>>,
}

impl HostState {
    /// Where devices can reach this host (each with its `/p2p/` part).
    pub fn addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .lock()
            .expect("addrs lock is never poisoned")
            .iter()
            .map(|a| {
                a.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(self.peer_id))
            })
            .collect()
    }

    /// A new invite code, good for one enrollment until it expires.
    pub fn invite(&self) -> (Zeroizing<String>, u64) {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut *secret);
        let expires = unix_now() + INVITE_TTL.as_secs();
        let invite = Invite {
            expires_unix: expires,
            secret: secret.clone(),
            inviter_peer_id: self.peer_id.to_bytes(),
            addrs: self
                .listen_addrs
                .lock()
                .expect("addrs lock is never poisoned")
                .iter()
                .map(|a| a.to_string())
                .collect(),
        };
        self.invites.add(secret, expires);
        (encode_host_invite(&invite), expires)
    }
}

/// A running host.
pub struct HostNode {
    pub state: Arc<HostState>,
    api_addr: SocketAddr,
    stop: watch::Sender<bool>,
    api_stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The host's identity: `HOME/host.key` (made on first start), a libp2p Ed25519 key.
fn identity(home: &Home) -> Result<libp2p::identity::Keypair, HostError> {
    let path = home.host_key();
    match std::fs::read(&path) {
        Ok(bytes) => libp2p::identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|_| HostError::BadKey(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let bytes = Zeroizing::new(key.to_protobuf_encoding().expect("an Ed25519 key encodes"));
            write_file_atomic(&path, &bytes, 0o600).map_err(io("write", &path))?;
            Ok(key)
        }
        Err(e) => Err(io("read", &path)(e)),
    }
}

impl HostNode {
    pub async fn start(config: HostConfig) -> Result<Self, HostError> {
        let home = Home::new(&config.home);
        if home.has_vault() {
            return Err(HostError::HoldsVault(home.root().display().to_string()));
        }
        create_private_dir(home.root()).map_err(io("create", home.root()))?;
        let keypair = identity(&home)?;
        let peer_id = keypair.public().to_peer_id();
        let owner_token_hash = crate::keys::owner_token_hash_or_new(&home)
            .map_err(io("write", &home.owner_token()))?;
        let vaults = home.root().join("vaults");
        let store = HostStore::open(&vaults, config.quota).map_err(io("open", &vaults))?;

        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| HostError::Transport(e.to_string()))?
            .with_quic()
            .with_behaviour(|key| HostBehaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/hearth/id/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                streams: libp2p_stream::Behaviour::new(),
            })
            .map_err(|e| HostError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
            .build();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| HostError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let incoming = swarm
            .behaviour()
            .streams
            .new_control()
            .accept(StreamProtocol::new(BACKUP_PROTOCOL))
            .expect("the backup protocol is accepted once");

        // The addresses are known once the listeners are up.
        let mut listening = Vec::new();
        while listening.len() < config.listen.len() {
            match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => listening.push(address),
                Ok(SwarmEvent::ListenerError { error, .. }) => {
                    return Err(HostError::Transport(error.to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let state = Arc::new(HostState {
            home: home.clone(),
            peer_id,
            store,
            invites: Invites::default(),
            owner_token_hash,
            listen_addrs: Mutex::new(listening),
        });

        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(run_swarm(
            swarm,
            state.clone(),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(accept(incoming, state.clone(), stopped)));

        let listener = tokio::net::TcpListener::bind(config.api)
            .await
            .map_err(|source| HostError::Api {
                addr: config.api,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| HostError::Api {
            addr: config.api,
            source,
        })?;
        let (api_stop, api_stopped) = oneshot::channel();
        let app = api::router(state.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::server::serve(listener, app, api_stopped).await {
                tracing::warn!(error = %e, "the host's API server ended with an error");
            }
        }));
        write_file_atomic(&home.api_addr(), format!("{api_addr}\n").as_bytes(), 0o644)
            .map_err(io("write", &home.api_addr()))?;
        tracing::info!(%peer_id, %api_addr, "backup host running");
        Ok(Self {
            state,
            api_addr,
            stop,
            api_stop: Some(api_stop),
            tasks,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn peer_id(&self) -> PeerId {
        self.state.peer_id
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let addr_file = self.state.home.api_addr();
        if std::fs::read_to_string(&addr_file).is_ok_and(|a| a.trim() == self.api_addr.to_string())
        {
            let _ = std::fs::remove_file(&addr_file);
        }
        tracing::info!("backup host stopped");
    }
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct HostBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    streams: libp2p_stream::Behaviour,
}

async fn run_swarm(
    mut swarm: libp2p::Swarm<HostBehaviour>,
    state: Arc<HostState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "listening");
                    let mut addrs = state.listen_addrs.lock().expect("addrs lock is never poisoned");
                    if !addrs.contains(&address) {
                        addrs.push(address);
                    }
                }
                SwarmEvent::ExpiredListenAddr { address, .. } => {
                    state.listen_addrs.lock().expect("addrs lock is never poisoned").retain(|a| a != &address);
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    tracing::debug!(%peer_id, "connected");
                }
                _ => {}
            }
        }
    }
}

async fn accept(
    mut incoming: libp2p_stream::IncomingStreams,
    state: Arc<HostState>,
    mut stop: watch::Receiver<bool>,
) {
    let room = Arc::new(Semaphore::new(MAX_STREAMS));
    loop {
        let Some((peer, stream)) = crate::mesh::next_stream(&mut incoming, &mut stop).await else {
            return;
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many backup streams at once; refusing one");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&state, peer, stream).await {
                tracing::debug!(%peer, error = %e, "backup stream ended");
            }
            drop(permit);
        });
    }
}

/// Serves one device's stream: `Enroll`, or `Open` then any requests for that vault.
async fn serve(
    state: &Arc<HostState>,
    peer: PeerId,
    mut stream: libp2p::Stream,
) -> std::io::Result<()> {
    let mut opened: Option<Opened> = None;
    loop {
        let frame = match tokio::time::timeout(IDLE, read_frame(&mut stream)).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
        };
        let answer = match decode::<Request>(&frame) {
            Err(e) => Response::Refused {
                reason: format!("not a backup request: {e}"),
            },
            Ok(request) => {
                let state = state.clone();
                let handle = opened;
                let (answer, now_open) =
                    tokio::task::spawn_blocking(move || answer(&state, peer, handle, request))
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                if now_open.is_some() {
                    opened = now_open;
                }
                answer
            }
        };
        write_frame(&mut stream, &encode(&answer)).await?;
    }
}

/// A vault a stream opened: with its upload token (`writes`), or its owner key.
#[derive(Debug, Clone, Copy)]
struct Opened {
    handle: Handle,
    /// Opened with the upload token: it may add.
    writes: bool,
    /// Opened with the owner key: it may read, rebase and delete, never add.
    owner: bool,
}

fn opened_answer(
    result: Result<store::Opened, Refusal>,
    handle: Handle,
    writes: bool,
) -> (Response, Option<Opened>) {
    let owner = !writes;
    match result {
        Ok(o) => (
            Response::Opened {
                seq: o.seq,
                last: o.last,
                bytes: o.bytes,
                quota: o.quota,
            },
            Some(Opened {
                handle,
                writes,
                owner,
            }),
        ),
        Err(e) => (
            Response::Refused {
                reason: e.to_string(),
            },
            None,
        ),
    }
}

/// One request's answer, and the vault it opened if it opened one.
fn answer(
    state: &HostState,
    peer: PeerId,
    opened: Option<Opened>,
    request: Request,
) -> (Response, Option<Opened>) {
    let refused = |r: Refusal| Response::Refused {
        reason: r.to_string(),
    };
    match (request, opened) {
        (
            Request::Enroll {
                proof,
                handle,
                token_hash,
                owner,
            },
            _,
        ) => {
            if !state.invites.take(&proof, &state.peer_id, &peer) {
                tracing::info!(%peer, "refused an enrollment: no such invite, or it expired or was used");
                return (
                    Response::Refused {
                        reason: "the invite code is not valid here: it expired, was used already, or is another host's; ask the host for a new one (`hearth host invite`)".into(),
                    },
                    None,
                );
            }
            match state.store.enroll(handle, token_hash, owner) {
                Ok(quota) => {
                    tracing::info!("a vault enrolled");
                    (Response::Enrolled { quota }, None)
                }
                Err(e) => (refused(e), None),
            }
        }
        (Request::Open { handle, token }, _) => {
            opened_answer(state.store.open_vault(&handle, &token), handle, true)
        }
        (Request::OpenOwner { handle, signature }, _) => {
            let message = owner_open_message(&state.peer_id.to_bytes(), &peer.to_bytes(), &handle);
            opened_answer(
                state.store.open_owner(&handle, &message, &signature),
                handle,
                false,
            )
        }
        (_, None) => (
            Response::Refused {
                reason: "open the vault first".into(),
            },
            None,
        ),
        (
            Request::Reenroll {
                handle,
                token_hash,
                owner,
            },
            Some(Opened { writes: true, .. }),
        ) => match state.store.enroll(handle, token_hash, owner) {
            Ok(quota) => {
                tracing::info!("a vault enrolled again, under a new kit");
                (Response::Enrolled { quota }, None)
            }
            Err(e) => (refused(e), None),
        },
        (
            Request::Put { .. }
            | Request::Append { .. }
            | Request::Reenroll { .. }
            | Request::SetToken { .. },
            Some(Opened { writes: false, .. }),
        ) => (refused(Refusal::ReadOnly), None),
        (
            Request::Rebase { .. }
            | Request::Objects { .. }
            | Request::Drop { .. }
            | Request::Forget,
            Some(Opened { owner: false, .. }),
        ) => (refused(Refusal::OwnerOnly), None),
        (Request::Forget, Some(Opened { handle: h, .. })) => match state.store.forget(&h) {
            Ok((bytes, objects)) => {
                tracing::info!(bytes, "a vault was deleted by its owner");
                (Response::Forgotten { bytes, objects }, None)
            }
            Err(e) => (refused(e), None),
        },
        (Request::Base, Some(Opened { handle: h, .. })) => match state.store.base(&h) {
            Ok((seq, signature)) => (Response::Base { seq, signature }, None),
            Err(e) => (refused(e), None),
        },
        (Request::Rebase { seq, signature }, Some(Opened { handle: h, .. })) => {
            match state.store.rebase(&h, seq, &signature) {
                Ok(bytes) => {
                    tracing::info!(seq, "a vault's chain was rebased by its owner");
                    (Response::Rebased { bytes }, None)
                }
                Err(e) => (refused(e), None),
            }
        }
        (Request::Objects { after, limit }, Some(Opened { handle: h, .. })) => {
            match state.store.objects(&h, after, limit) {
                Ok(ids) => (Response::ObjectIds { ids }, None),
                Err(e) => (refused(e), None),
            }
        }
        (Request::Drop { ids }, Some(Opened { handle: h, .. })) => {
            match state.store.drop_objects(&h, &ids) {
                Ok(bytes) => {
                    tracing::info!(count = ids.len(), "objects of a vault dropped by its owner");
                    (Response::Dropped { bytes }, None)
                }
                Err(e) => (refused(e), None),
            }
        }
        (Request::SetToken { token_hash }, Some(Opened { handle: h, .. })) => {
            match state.store.set_token(&h, token_hash) {
                Ok(()) => {
                    tracing::info!("a vault's upload token was replaced");
                    (Response::TokenSet, None)
                }
                Err(e) => (refused(e), None),
            }
        }
        (Request::Put { object }, Some(Opened { handle: h, .. })) => {
            match state.store.put(&h, &object) {
                Ok(bytes) => (Response::Stored { bytes }, None),
                Err(e) => (refused(e), None),
            }
        }
        (Request::Append { manifest }, Some(Opened { handle: h, .. })) => {
            match state.store.append(&h, &manifest) {
                Ok(seq) => (Response::Appended { seq }, None),
                Err(e) => (refused(e), None),
            }
        }
        (Request::Manifests { after, limit }, Some(Opened { handle: h, .. })) => {
            match state
                .store
                .manifests(&h, after, limit.min(MANIFESTS_PER_ANSWER))
            {
                Ok(manifests) => (
                    Response::Manifests {
                        manifests: manifests
                            .into_iter()
                            .map(serde_bytes::ByteBuf::from)
                            .collect(),
                    },
                    None,
                ),
                Err(e) => (refused(e), None),
            }
        }
        (Request::Prove { id, offset, len }, Some(Opened { handle: h, .. })) => {
            match state.store.prove(&h, &id, offset, len) {
                Ok(slice) => (Response::Proof { slice }, None),
                Err(e) => (refused(e), None),
            }
        }
        (Request::Get { id }, Some(Opened { handle: h, .. })) => match state.store.get(&h, &id) {
            Ok(object) => (Response::Object { object }, None),
            Err(e) => (refused(e), None),
        },
    }
}

#[cfg(test)]
mod tests;
