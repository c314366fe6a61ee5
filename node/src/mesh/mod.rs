//! The mesh: the libp2p swarm that connects the devices of one vault.
//!
//! In: listen addresses, known peer addresses, the vault (for membership and data).
//! Out: sync sessions with every member device that is reachable, a [`MeshHandle`] to
//! ask the swarm things. One task owns the `Swarm`; everything else talks to it through
//! bounded commands with `oneshot` replies. Protocol work (sync, pairing) runs as plain
//! async code on `libp2p-stream` streams, outside the swarm task.
//!
//! Transports: TCP and QUIC, Noise, Yamux. Behaviours: identify, ping, mDNS (optional),
//! Kademlia, circuit-relay client, DCUtR, AutoNAT, and streams.

pub mod blobsync;
pub mod frames;
pub mod pairing;
mod relaying;
mod removal;
pub mod sync;
pub mod view;

pub use libp2p::multiaddr::Protocol;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, identify, kad, mdns, noise, ping,
    relay, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Vault;
use crate::devices;

/// Commands waiting for the swarm task; senders beyond this wait.
const COMMAND_QUEUE: usize = 64;
/// How often known but unconnected devices are redialled.
pub(super) const REDIAL_EVERY: Duration = Duration::from_secs(15);
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often each connection is pinged, and how long an answer may take.
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// When one of several connections to a device closes, its sync session is started
/// again on the others this long after (once the old session has seen its stream end).
pub(super) const SESSION_AGAIN_AFTER: Duration = Duration::from_millis(200);
/// A connection that answered no ping for this long is closed (see
/// `SwarmTask::close_silent`).
const SILENT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub listen: Vec<Multiaddr>,
    /// Addresses dialled at start and whenever the connection is lost.
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    /// Relay connections between this vault's own devices (for a home server with a
    /// public address). Peers that are not devices are disconnected when they try.
    pub relay_server: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            peers: Vec::new(),
            mdns: true,
            relay_server: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the mesh has stopped")]
    Stopped,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    relay: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    streams: libp2p_stream::Behaviour,
}

enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    Relayed(oneshot::Sender<HashSet<PeerId>>),
    Dial(Multiaddr),
    SetPeers(Vec<Multiaddr>),
    Stop(oneshot::Sender<()>),
}

/// A clonable handle to the swarm task.
#[derive(Clone)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    local_peer_id: PeerId,
}

impl MeshHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, MeshError> {
        self.ask(Command::ListenAddrs).await
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, MeshError> {
        self.ask(Command::Connected).await
    }

    /// The connected peers reached only through a relay (no direct connection).
    pub async fn relayed_peers(&self) -> Result<HashSet<PeerId>, MeshError> {
        self.ask(Command::Relayed).await
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), MeshError> {
        self.commands
            .send(Command::Dial(addr))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Replaces the configured peers (`--peer`, `peers` in hearth.toml): they are
    /// dialled now and whenever they are not connected.
    pub async fn set_peers(&self, peers: Vec<Multiaddr>) -> Result<(), MeshError> {
        self.commands
            .send(Command::SetPeers(peers))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// A control to open and accept protocol streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }
}

/// The next change to the vault's collections; never, once there are none to come.
async fn next_change(
    changes: &mut Option<tokio::sync::broadcast::Receiver<crate::collections::Changed>>,
) -> Result<crate::collections::Changed, tokio::sync::broadcast::error::RecvError> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// The IP address an address runs to, if it names one.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// Whether an address is a wildcard (`0.0.0.0`, `::`), which no one can dial.
fn is_unspecified(addr: &Multiaddr) -> bool {
    ip_of(addr).is_some_and(|ip| ip.is_unspecified())
}

/// Whether an address runs through a relay (`/p2p-circuit`).
fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// A swarm of its own for one exchange with one peer, before this HOME runs a node
/// (joining a vault, restoring one): TCP and QUIC, Noise, and streams only.
pub(crate) fn lone_swarm(
    device: libp2p::identity::Keypair,
    idle: Duration,
) -> Result<libp2p::Swarm<libp2p_stream::Behaviour>, String> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(device)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}

/// The next stream a peer opened on one protocol; `None` once the mesh is told to stop
/// or the protocol's streams end. Every accept loop of the mesh waits here.
pub(crate) async fn next_stream(
    incoming: &mut libp2p_stream::IncomingStreams,
    stop: &mut watch::Receiver<bool>,
) -> Option<(PeerId, libp2p::Stream)> {
    tokio::select! {
        _ = stop.changed() => None,
        next = incoming.next() => next,
    }
}

/// What the rest of the node may ask of a running mesh.
#[derive(Clone)]
pub struct MeshState {
    pub handle: MeshHandle,
    pub sync: Arc<sync::SyncService>,
    pub pairing: Arc<pairing::Pairing>,
}

/// The running mesh: the swarm task and the tasks accepting sync and pairing streams.
pub struct Mesh {
    state: MeshState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long shutdown waits for a mesh task to stop by itself before aborting it.
const TASK_STOP_GRACE: Duration = Duration::from_secs(5);

impl Mesh {
    pub async fn start(vault: Arc<Vault>, config: MeshConfig) -> Result<Self, MeshError> {
        let keypair = vault.keys.device.clone();
        let local_peer_id = keypair.public().to_peer_id();
        let mdns_enabled = config.mdns;
        let relay_server = config.relay_server;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| MeshError::Transport(e.to_string()))?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| MeshError::Transport(e.to_string()))?
            .with_behaviour(|key, relay| {
                let peer_id = key.public().to_peer_id();
                let mdns = if mdns_enabled {
                    match mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::warn!(error = %e, "mDNS is unavailable; devices on the LAN must be given with --peer");
                            None
                        }
                    }
                } else {
                    None
                };
                // Only device addresses live in this DHT, and they are added as learnt: no
                // periodic bootstrap (with no public bootstrap peers it only logs failures).
                let mut kad_config = kad::Config::new(StreamProtocol::new("/hearth/kad/1"));
                kad_config.set_periodic_bootstrap_interval(None);
                let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
                kad.set_mode(Some(kad::Mode::Server));
                Behaviour {
                    identify: identify::Behaviour::new(identify::Config::new("/hearth/id/1".into(), key.public())),
                    // Frequent pings: a connection that stops answering them is
                    // closed (`SwarmTask::close_silent`).
                    ping: ping::Behaviour::new(
                        ping::Config::new()
                            .with_interval(PING_INTERVAL)
                            .with_timeout(PING_TIMEOUT),
                    ),
                    mdns: Toggle::from(mdns),
                    kad,
                    relay,
                    relay_server: Toggle::from(relay_server.then(|| {
                        let vault = vault.clone();
                        relay::Behaviour::new(
                            peer_id,
                            relaying::server_config(Arc::new(move |peer| {
                                devices::is_member(&vault.collections, peer)
                            })),
                        )
                    })),
                    dcutr: dcutr::Behaviour::new(peer_id),
                    autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
                    streams: libp2p_stream::Behaviour::new(),
                }
            })
            .map_err(|e| MeshError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();

        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| MeshError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let mut streams = swarm.behaviour().streams.new_control();
        let incoming = streams
            .accept(StreamProtocol::new(hearth_protocol::sync::SYNC_PROTOCOL))
            .expect("the sync protocol is registered once");
        let incoming_legacy = hearth_protocol::sync::LEGACY_SYNC_PROTOCOLS.map(|protocol| {
            streams
                .accept(StreamProtocol::new(protocol))
                .expect("each old sync protocol is registered once")
        });
        let incoming_blobs = streams
            .accept(StreamProtocol::new(hearth_protocol::blob::BLOB_PROTOCOL))
            .expect("the blob protocol is registered once");
        let incoming_views = streams
            .accept(StreamProtocol::new(hearth_protocol::view::VIEW_PROTOCOL))
            .expect("the view protocol is registered once");
        let incoming_notices = streams
            .accept(StreamProtocol::new(hearth_protocol::sync::REMOVED_PROTOCOL))
            .expect("the removal notice protocol is registered once");
        let incoming_pairs = streams
            .accept(StreamProtocol::new(hearth_protocol::invite::PAIR_PROTOCOL))
            .expect("the pairing protocol is registered once");
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = MeshHandle {
            commands: commands_tx,
            streams,
            local_peer_id,
        };

        // Every loop below stops when told, stopping and awaiting what it started.
        let (stop, stopped) = watch::channel(false);
        let sync = Arc::new(sync::SyncService::new(vault.clone(), handle.clone()));
        let accept_task = tokio::spawn(sync.clone().accept_loop(incoming, stopped.clone(), false));
        let legacy_tasks = incoming_legacy.map(|incoming| {
            tokio::spawn(sync.clone().accept_loop(incoming, stopped.clone(), true))
        });
        let notice_task = tokio::spawn(removal::accept_loop(
            vault.clone(),
            incoming_notices,
            stopped.clone(),
        ));
        let pairing = Arc::new(pairing::Pairing::new(vault.clone(), handle.clone()));
        let pair_task = tokio::spawn(pairing.clone().accept_loop(incoming_pairs, stopped.clone()));
        let blob_sync = Arc::new(blobsync::BlobSync::new(vault.clone(), handle.clone()));
        let blob_serve_task = tokio::spawn(
            blob_sync
                .clone()
                .serve_loop(incoming_blobs, stopped.clone()),
        );
        let blob_fetch_task = tokio::spawn(blob_sync.fetch_loop(stopped.clone()));
        let view_task = tokio::spawn(view::serve_loop(
            vault.door.clone(),
            incoming_views,
            stopped.clone(),
        ));
        let swarm_task = tokio::spawn(
            SwarmTask {
                swarm,
                commands: commands_rx,
                sync: sync.clone(),
                known: config.peers,
                listen_addrs: HashSet::new(),
                last_pong: HashMap::new(),
                connections: HashMap::new(),
                relay_server,
                relay_external: HashSet::new(),
                listening_via: HashMap::new(),
                punch_again: HashMap::new(),
                punch_connections: HashMap::new(),
            }
            .run(),
        );
        // Wait until the swarm listens, so the addresses can be reported.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while handle.listen_addrs().await?.len() < config.listen.len()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let addrs: Vec<Multiaddr> = handle
            .listen_addrs()
            .await?
            .into_iter()
            .filter(|a| !is_unspecified(a))
            .collect();
        // Through the one path later recordings take, so none overtakes this one.
        let _ = sync.record_addresses(local_peer_id, addrs).await;
        let state = MeshState {
            handle,
            sync,
            pairing,
        };
        Ok(Self {
            state,
            stop,
            tasks: [
                swarm_task,
                accept_task,
                notice_task,
                pair_task,
                blob_serve_task,
                blob_fetch_task,
                view_task,
            ]
            .into_iter()
            .chain(legacy_tasks)
            .collect(),
        })
    }

    pub fn state(&self) -> &MeshState {
        &self.state
    }

    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self
            .state
            .handle
            .commands
            .send(Command::Stop(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(TASK_STOP_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a mesh task did not stop in time; aborting it");
                task.abort();
                let _ = task.await;
            }
        }
        // After the swarm and accept loops, so nothing starts a new session meanwhile.
        self.state.sync.shutdown().await;
    }
}

/// An open connection: its peer, the address it runs to, whether it is relayed and
/// whether this node dialled it.
struct Reached {
    peer: PeerId,
    addr: Multiaddr,
    relayed: bool,
    dialled: bool,
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    sync: Arc<sync::SyncService>,
    known: Vec<Multiaddr>,
    listen_addrs: HashSet<Multiaddr>,
    /// When each connection last answered a ping (connections to peers without ping,
    /// like the joining side of pairing, are not in it).
    last_pong: HashMap<libp2p::swarm::ConnectionId, tokio::time::Instant>,
    /// Every open connection.
    connections: HashMap<libp2p::swarm::ConnectionId, Reached>,
    /// This node relays for the vault's devices (`--relay`).
    relay_server: bool,
    /// The addresses this relay gave itself as external ([`SwarmTask::relay_addresses`]).
    relay_external: HashSet<Multiaddr>,
    /// The relays (member devices that relay) this node listens through, by listener.
    listening_via: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    /// Devices reached only through a relay whose hole punch failed: when to try
    /// again, and how many times it failed in a row (see [`SwarmTask::retry_punches`]).
    punch_again: HashMap<PeerId, (tokio::time::Instant, u32)>,
    /// The relayed connections this node dialled for another punch, by device: the
    /// next try closes the one before (the first relayed connection, which carries the
    /// sync session, stays until the link goes direct).
    punch_connections: HashMap<PeerId, libp2p::swarm::ConnectionId>,
}

/// The first wait before a failed hole punch is tried again; it doubles with each
/// failure in a row, up to [`PUNCH_AGAIN_MAX`].
const PUNCH_AGAIN_AFTER: Duration = Duration::from_secs(3);
const PUNCH_AGAIN_MAX: Duration = Duration::from_secs(300);
/// A device still reached only through a relay this long after the relayed
/// connection came up, with no hole punch reported either way, is tried again too.
const PUNCH_CHECK_AFTER: Duration = Duration::from_secs(5);

impl SwarmTask {
    async fn run(mut self) {
        for addr in self.known.clone() {
            self.dial(addr);
        }
        self.dial_members();
        let mut redial = tokio::time::interval(REDIAL_EVERY);
        redial.tick().await;
        let mut silence = tokio::time::interval(PING_INTERVAL / 2);
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = tokio::time::Instant::now();
        // A device's new address (through a relay, say) is dialled as soon as it
        // arrives in the device list, not at the next redial.
        let mut changes = Some(self.sync.subscribe_changes());
        loop {
            // Swarm events (ping answers among them) before the silence check, so a
            // check never runs ahead of answers already waiting.
            tokio::select! {
                biased;
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = silence.tick() => {
                    let now = tokio::time::Instant::now();
                    // This task itself stalled (a busy machine): the peers were not
                    // silent, it was not listening. Start counting again.
                    if now.duration_since(last_check) > PING_INTERVAL {
                        for at in self.last_pong.values_mut() {
                            *at = now;
                        }
                    } else {
                        self.close_silent();
                    }
                    last_check = now;
                    self.retry_punches();
                }
                command = self.commands.recv() => match command {
                    Some(Command::ListenAddrs(reply)) => {
                        let _ = reply.send(self.listen_addrs.iter().cloned().collect());
                    }
                    Some(Command::Connected(reply)) => {
                        let _ = reply.send(self.swarm.connected_peers().copied().collect());
                    }
                    Some(Command::Relayed(reply)) => {
                        let _ = reply.send(self.relayed_only());
                    }
                    Some(Command::Dial(addr)) => {
                        self.known.push(addr.clone());
                        self.dial(addr);
                    }
                    Some(Command::SetPeers(peers)) => {
                        let new: Vec<Multiaddr> = peers
                            .iter()
                            .filter(|p| !self.known.contains(p))
                            .cloned()
                            .collect();
                        self.known = peers;
                        for addr in new {
                            self.dial(addr);
                        }
                    }
                    Some(Command::Stop(reply)) => {
                        let _ = reply.send(());
                        break;
                    }
                    None => break,
                },
                _ = redial.tick() => self.redial(),
                changed = next_change(&mut changes) => match changed {
                    Ok(changed) if changed.collection == devices::collection() => {
                        self.dial_members();
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.dial_members(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => changes = None,
                },
            }
        }
        tracing::debug!("swarm task stopped");
    }

    fn dial(&mut self, addr: Multiaddr) {
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::debug!(%addr, error = %e, "dial failed");
        }
    }

    /// Redials known addresses whose device is not connected (with backoff given by the
    /// interval); device addresses learnt from identify are in Kademlia.
    fn redial(&mut self) {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        self.sync
            .ensure_sessions(&connected.iter().copied().collect::<Vec<_>>());
        for addr in self.known.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
                _ => None,
            });
            if peer.is_none_or(|p| !connected.contains(&p)) {
                self.dial(addr);
            }
        }
        self.dial_members();
    }

    /// Dials every member device that is not connected, at the addresses it recorded
    /// and those learnt from identify and mDNS.
    fn dial_members(&mut self) {
        let me = *self.swarm.local_peer_id();
        for (peer, addrs) in self.sync.member_addresses(&me) {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial a device");
            }
        }
    }

    /// Notes a failed hole punch to `peer`: libp2p's DCUtR tries three times on a
    /// relayed connection, then never again on it, and a link left relayed stays so
    /// for as long as it lasts. A new relayed connection gets three new tries.
    fn punch_failed(&mut self, peer: PeerId) {
        if !self.sync.is_member(&peer) {
            return;
        }
        let failures = self.punch_again.get(&peer).map_or(0, |(_, n)| *n) + 1;
        let wait = PUNCH_AGAIN_AFTER
            .saturating_mul(1 << failures.min(10).saturating_sub(1))
            .min(PUNCH_AGAIN_MAX);
        tracing::debug!(%peer, failures, ?wait, "hole punch failed; trying again later");
        self.punch_again
            .insert(peer, (tokio::time::Instant::now() + wait, failures));
    }

    /// Dials, through a relay, each device whose hole punch is due again and that is
    /// still reached only through a relay: the new relayed connection makes the
    /// device at its other end try the punch again (DCUtR starts on the listening
    /// side). The connection an earlier try made is closed first.
    fn retry_punches(&mut self) {
        let now = tokio::time::Instant::now();
        let relayed = self.relayed_only();
        self.punch_again.retain(|peer, _| relayed.contains(peer));
        let due: Vec<PeerId> = self
            .punch_again
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        if due.is_empty() {
            return;
        }
        let me = *self.swarm.local_peer_id();
        let addresses: HashMap<PeerId, Vec<Multiaddr>> =
            self.sync.member_addresses(&me).into_iter().collect();
        for peer in due {
            // Not again until this try failed too (or the link went direct).
            if let Some((at, _)) = self.punch_again.get_mut(&peer) {
                *at = now + PUNCH_AGAIN_MAX;
            }
            let circuits: Vec<Multiaddr> = addresses
                .get(&peer)
                .map(|addrs| addrs.iter().filter(|a| is_relayed(a)).cloned().collect())
                .unwrap_or_default();
            if circuits.is_empty() {
                continue;
            }
            if let Some(earlier) = self.punch_connections.remove(&peer) {
                self.swarm.close_connection(earlier);
            }
            tracing::debug!(%peer, "dialing a device through the relay again, for a new hole punch");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(circuits)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .build();
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.punch_connections.insert(peer, connection);
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot dial a device through the relay");
                }
            }
        }
    }

    /// Closes every connection whose peer has answered no ping for [`SILENT_AFTER`]:
    /// a device that stopped without closing its connections (power cut, suspended,
    /// network gone) shows offline within seconds. (libp2p's ping reports only its
    /// second failure, and a stalled negotiation takes 10 s to fail: too slow.)
    fn close_silent(&mut self) {
        let now = tokio::time::Instant::now();
        let silent: Vec<libp2p::swarm::ConnectionId> = self
            .last_pong
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > SILENT_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for connection in silent {
            self.last_pong.remove(&connection);
            tracing::debug!(?connection, "no answer to pings; closing the connection");
            self.swarm.close_connection(connection);
        }
    }

    /// Listens through `relay`, a device of the vault that relays (a home server), once,
    /// at the address this node reached it on directly: the other devices, recording
    /// that address, can then reach this one through it wherever they are.
    fn listen_via(
        &mut self,
        relay: PeerId,
        connection: libp2p::swarm::ConnectionId,
        relay_listens: &[Multiaddr],
    ) {
        let already = self.listening_via.values().any(|r| *r == relay)
            || self
                .listen_addrs
                .iter()
                .any(|a| is_relayed(a) && a.iter().any(|p| p == Protocol::P2p(relay)));
        if self.relay_server || already || !self.sync.is_member(&relay) {
            return;
        }
        let Some(Reached {
            addr,
            relayed: false,
            dialled,
            ..
        }) = self.connections.get(&connection)
        else {
            return;
        };
        // Where this node reached the relay: the address it dialled, or (the relay
        // dialled it) the relay's own listen address on the host it came from.
        let at = if *dialled {
            Some(addr.clone())
        } else {
            let usable: Vec<&Multiaddr> = relay_listens
                .iter()
                .filter(|a| !is_relayed(a) && !is_unspecified(a))
                .collect();
            usable
                .iter()
                .find(|a| ip_of(a) == ip_of(addr))
                .or(usable.first())
                .map(|a| (*a).clone())
        };
        let Some(mut at) = at else {
            return;
        };
        if matches!(at.iter().last(), Some(Protocol::P2p(_))) {
            at.pop();
        }
        let circuit = at.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => {
                tracing::debug!(%circuit, "listening through a relaying device");
                self.listening_via.insert(listener, relay);
            }
            Err(e) => tracing::debug!(%circuit, error = %e, "cannot listen through the relay"),
        }
    }

    /// A relay hands its own addresses out in each reservation, and has none to give
    /// until it knows some: its direct listen addresses, loopback ones only when it
    /// has no other (a relay on one machine, as in tests), so that devices elsewhere
    /// are not given addresses that lead back to themselves.
    fn relay_addresses(&mut self) {
        if !self.relay_server {
            return;
        }
        let direct: Vec<&Multiaddr> = self
            .listen_addrs
            .iter()
            .filter(|a| !is_relayed(a) && !is_unspecified(a))
            .collect();
        let loopback = |a: &Multiaddr| ip_of(a).is_some_and(|ip| ip.is_loopback());
        let wanted: HashSet<Multiaddr> = if direct.iter().all(|a| loopback(a)) {
            direct.into_iter().cloned().collect()
        } else {
            direct
                .into_iter()
                .filter(|a| !loopback(a))
                .cloned()
                .collect()
        };
        for addr in self.relay_external.difference(&wanted) {
            self.swarm.remove_external_address(addr);
        }
        for addr in wanted.difference(&self.relay_external) {
            self.swarm.add_external_address(addr.clone());
        }
        self.relay_external = wanted;
    }

    /// Records where this device listens now (see [`sync::SyncService::record_addresses`]):
    /// an address through a relay appears once the relay has taken the reservation.
    fn record_addresses(&self) {
        let addrs = self
            .listen_addrs
            .iter()
            .filter(|a| !is_unspecified(a))
            .cloned()
            .collect();
        // Not awaited: the swarm task goes on; the recordings keep their order.
        drop(
            self.sync
                .record_addresses(*self.swarm.local_peer_id(), addrs),
        );
    }

    /// Closes the relayed connections to `peer` now that a direct one is up (a hole
    /// punched, or an address learnt): the relay's bandwidth is not this device's to
    /// use, and the direct path is the faster one.
    fn leave_relay(&mut self, peer: PeerId) {
        let relayed: Vec<libp2p::swarm::ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, c)| c.peer == peer && c.relayed)
            .map(|(id, _)| *id)
            .collect();
        // Their closing moves the sync session (see `ConnectionClosed`).
        for connection in relayed {
            tracing::debug!(%peer, "a direct connection is up; closing the relayed one");
            self.swarm.close_connection(connection);
        }
    }

    /// The connected peers whose every connection is relayed.
    fn relayed_only(&self) -> HashSet<PeerId> {
        let mut direct = HashSet::new();
        let mut relayed = HashSet::new();
        for reached in self.connections.values() {
            if reached.relayed {
                relayed.insert(reached.peer);
            } else {
                direct.insert(reached.peer);
            }
        }
        relayed.retain(|p| !direct.contains(p));
        relayed
    }

    /// The relay serves the vault's devices only: anyone else who uses it is cut off.
    fn relay_only_for_members(&mut self, peers: &[PeerId]) {
        for peer in peers {
            if !self.sync.is_member(peer) {
                tracing::info!(%peer, "disconnecting a peer that is not a device of this vault from the relay");
                let _ = self.swarm.disconnect_peer_id(*peer);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                let through_relay = is_relayed(&address);
                self.listen_addrs.insert(address);
                self.relay_addresses();
                if through_relay {
                    self.record_addresses();
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.remove(&address);
                self.relay_addresses();
                if is_relayed(&address) {
                    self.record_addresses();
                }
            }
            // A listener through a relay closes when the connection to the relay
            // drops; its addresses are then gone (libp2p tells the behaviours, not
            // this loop, that they expired), and the next meeting listens again.
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                ..
            } => {
                if let Some(relay) = self.listening_via.remove(&listener_id) {
                    tracing::debug!(%relay, "no longer listening through the relay");
                }
                let mut through_relay = false;
                for address in &addresses {
                    through_relay |= is_relayed(address);
                    self.listen_addrs.remove(address);
                }
                self.relay_addresses();
                if through_relay {
                    self.record_addresses();
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                self.last_pong
                    .insert(connection_id, tokio::time::Instant::now());
                self.connections.insert(
                    connection_id,
                    Reached {
                        peer: peer_id,
                        addr: endpoint.get_remote_address().clone(),
                        relayed: endpoint.is_relayed(),
                        dialled: endpoint.is_dialer(),
                    },
                );
                tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
                let direct_too = self
                    .connections
                    .iter()
                    .any(|(id, c)| *id != connection_id && c.peer == peer_id && !c.relayed);
                if !endpoint.is_relayed() {
                    self.leave_relay(peer_id);
                    self.punch_again.remove(&peer_id);
                    self.punch_connections.remove(&peer_id);
                } else if direct_too {
                    // A relayed connection that came after the direct one (both sides
                    // dialled at once): the direct path is kept, as in `leave_relay`.
                    tracing::debug!(%peer_id, "a direct connection is up; closing the new relayed one");
                    self.swarm.close_connection(connection_id);
                } else if self.sync.is_member(&peer_id) {
                    self.punch_again
                        .entry(peer_id)
                        .or_insert((tokio::time::Instant::now() + PUNCH_CHECK_AFTER, 0));
                }
                if num_established.get() == 1 {
                    if self.sync.is_member(&peer_id) {
                        tracing::info!(%peer_id, addr = %endpoint.get_remote_address(), "device connected");
                    }
                    self.sync.on_connected(peer_id);
                }
            }
            // A session ends by itself when its stream does.
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } if num_established > 0 => {
                self.last_pong.remove(&connection_id);
                let closed = self.connections.remove(&connection_id);
                // Its sync session may have run on the connection that closed. A
                // relayed one (closed once a hole was punched, or when the relay went)
                // can leave its stream lingering until the relay drops it: the session
                // moves onto the connections left. Otherwise a session that ended is
                // started again there.
                let sync = self.sync.clone();
                let relayed = closed.is_some_and(|c| c.relayed);
                tokio::spawn(async move {
                    tokio::time::sleep(SESSION_AGAIN_AFTER).await;
                    if relayed {
                        sync.restart_session(peer_id);
                    } else {
                        sync.ensure_sessions(&[peer_id]);
                    }
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established: 0,
                ..
            } => {
                self.last_pong.remove(&connection_id);
                self.connections.remove(&connection_id);
                if self.sync.is_member(&peer_id) {
                    tracing::info!(%peer_id, "device disconnected");
                } else {
                    tracing::debug!(%peer_id, "disconnected");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    tracing::debug!(peer = %remote_peer_id, "hole punched");
                    self.punch_again.remove(&remote_peer_id);
                }
                Err(e) => {
                    tracing::debug!(peer = %remote_peer_id, error = %e, "hole punch failed");
                    self.punch_failed(remote_peer_id);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                connection, result, ..
            })) => match result {
                Ok(_) => {
                    self.last_pong
                        .insert(connection, tokio::time::Instant::now());
                }
                // A peer without ping (the joining side of pairing) is not watched.
                Err(ping::Failure::Unsupported) => {
                    self.last_pong.remove(&connection);
                }
                Err(_) => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut seen = HashMap::new();
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    seen.entry(peer).or_insert(addr);
                }
                for (peer, _) in seen {
                    if !self.swarm.is_connected(&peer) && self.sync.is_member(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(
                relay::Event::ReservationReqAccepted { src_peer_id, .. },
            )) => self.relay_only_for_members(&[src_peer_id]),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(
                relay::Event::CircuitReqAccepted {
                    src_peer_id,
                    dst_peer_id,
                },
            )) => self.relay_only_for_members(&[src_peer_id, dst_peer_id]),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    self.listen_via(peer_id, connection_id, &info.listen_addrs);
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            _ => {}
        }
    }
}
