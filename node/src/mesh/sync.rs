//! Sync sessions: the `/hearth/sync/4` protocol with one member device.
//!
//! In: a stream to a peer that is on the device list; local change notifications.
//! Out: the peer's changes applied and committed locally, and ours sent to it.
//! A session first compares the two devices' fingerprints (`Summary`: every
//! collection's digest, read from the record index's marks), then the digests of
//! each collection's parts if those differ, and runs Automerge sync only for the parts
//! that differ: two devices that hold the same changes exchange two small frames each
//! way and read no document. A part the peer has nothing of (a new device) is sent
//! whole, as it is stored, without loading it. A device that speaks version 1, 2 or
//! 3 is told this one's version and logged as needing an upgrade; nothing is merged
//! with it.
//! One session per peer: the device with the smaller PeerId opens the stream when a
//! connection is established, the other accepts it; a newer session to the same peer
//! replaces the older one. Every received frame is checked before it is used, and any
//! bad frame ends only this session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use automerge::sync::State;
use futures::AsyncReadExt;

use hearth_protocol::CollectionName;
use hearth_protocol::sync::{
    PartDigests, SYNC_PROTOCOL, SYNC_VERSION, SyncFrame, collection_digests, fingerprint,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinSet};

use super::MeshHandle;
use super::frames::{FrameReadError, read_frame, write_frame};
use crate::Vault;
use crate::collections::{Changed, CollectionError};
use crate::devices;

/// Frames waiting to be written to one peer, or read from it and not yet handled.
const OUTBOX: usize = 16;
const INBOX: usize = 4;
/// Sync sessions at once (one per device; a bound against a large device list).
const MAX_SESSIONS: usize = 64;
/// Messages that brought changes applied before a commit, at most: a session commits
/// once the frames waiting are applied, so a new device catching up on many parts
/// does not fsync after each one.
const COMMIT_EVERY: usize = 32;
/// A session that ends after running this long, its peer still connected, is opened
/// again at once; one that ends sooner waits for the next redial.
const SESSION_LASTED: Duration = Duration::from_secs(2);

/// A commit of the store under way in a session.
type Commit = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), hearth_core::store::StoreError>> + Send>,
>;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("stream: {0}")]
    Read(#[from] FrameReadError),
    #[error("stream: {0}")]
    Write(std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] hearth_protocol::sync::FrameError),
    #[error("the peer did not start with Hello")]
    NoHello,
    #[error("the peer belongs to another vault")]
    OtherVault,
    #[error(
        "the device speaks sync version {0}, this one {SYNC_VERSION}: upgrade the one with the older Hearth"
    )]
    Version(u8),
    #[error("the peer sent a second Hello")]
    SecondHello,
    #[error("the peer is no longer a device of this vault")]
    Removed,
    #[error("{0}")]
    Collection(#[from] CollectionError),
    #[error("the store refused the change: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// How long a session waits, after the last change sent or received, before it sends
/// its fingerprint again (so both sides learn they are in step).
const SETTLE: Duration = Duration::from_millis(500);

/// How often the time of the last sync with a device is written to disk.
const RECORD_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// What a sync session has exchanged so far (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames and their bytes (each with its 4-byte length), each way.
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Parts of collections whose Automerge sync this session ran (each reads its
    /// document).
    pub collections_synced: u64,
    /// Whether the two devices' fingerprints were equal at their last comparison, with
    /// no change sent or received since.
    pub in_step: bool,
}

pub struct SyncService {
    vault: Arc<Vault>,
    mesh: MeshHandle,
    sessions: Mutex<HashMap<PeerId, AbortHandle>>,
    /// The latest session opening asked for, per peer: a stream whose opening was
    /// overtaken by a newer one (a restart while it was on its way) is dropped, never
    /// put in place of the newer session.
    openings: Mutex<HashMap<PeerId, u64>>,
    opening_turn: std::sync::atomic::AtomicU64,
    /// How many sessions with each peer in a row ended as soon as they began: the next
    /// is opened after a wait that doubles with each (up to the redial interval).
    quick_ends: Mutex<HashMap<PeerId, u32>>,
    /// What each peer's latest session has exchanged.
    stats: Mutex<HashMap<PeerId, SessionStats>>,
    /// Devices found running an older Hearth, said once each (not at every redial).
    outdated: Mutex<std::collections::HashSet<PeerId>>,
    /// Every task this service started, so shutdown can stop and await them all.
    tasks: Mutex<JoinSet<()>>,
    last_sync: Mutex<HashMap<PeerId, SystemTime>>,
    /// The last recording of this device's addresses asked for, and the lock that
    /// makes recordings run one at a time ([`SyncService::record_addresses`]).
    address_turn: Arc<std::sync::atomic::AtomicU64>,
    recording: Arc<tokio::sync::Mutex<()>>,
}

impl SyncService {
    pub(super) fn new(vault: Arc<Vault>, mesh: MeshHandle) -> Self {
        Self {
            vault,
            mesh,
            sessions: Mutex::new(HashMap::new()),
            openings: Mutex::new(HashMap::new()),
            opening_turn: std::sync::atomic::AtomicU64::new(0),
            quick_ends: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            outdated: Mutex::new(std::collections::HashSet::new()),
            tasks: Mutex::new(JoinSet::new()),
            last_sync: Mutex::new(HashMap::new()),
            address_turn: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            recording: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn is_member(&self, peer: &PeerId) -> bool {
        devices::is_member(&self.vault.collections, peer)
    }

    pub fn member_addresses(&self, me: &PeerId) -> Vec<(PeerId, Vec<libp2p::Multiaddr>)> {
        devices::member_addresses(&self.vault.collections, me)
    }

    /// The vault's changes from now on.
    pub(super) fn subscribe_changes(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::collections::Changed> {
        self.vault.collections.subscribe()
    }

    /// Records, off the swarm task, where this device listens now (an address through
    /// a relay comes and goes while the node runs), so the other devices find it.
    /// Recordings run one at a time, in the order asked, and one overtaken by a newer
    /// set is skipped, so the last set asked for is the one that stays. The handle ends
    /// when this recording is done (or skipped).
    pub(super) fn record_addresses(
        &self,
        me: PeerId,
        addrs: Vec<libp2p::Multiaddr>,
    ) -> tokio::task::JoinHandle<()> {
        let vault = self.vault.clone();
        let turn = self
            .address_turn
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let (latest, one_at_a_time) = (self.address_turn.clone(), self.recording.clone());
        tokio::spawn(async move {
            let _alone = one_at_a_time.lock().await;
            if latest.load(std::sync::atomic::Ordering::SeqCst) != turn {
                return;
            }
            let written = tokio::task::spawn_blocking(move || {
                devices::set_addresses(&vault.collections, &me, &addrs)
                    .map(|changed| (vault, changed))
            })
            .await;
            match written {
                Ok(Ok((vault, true))) => {
                    if let Err(e) = vault.store.commit().await {
                        tracing::warn!(error = %e, "cannot record this device's addresses");
                    }
                }
                Ok(Ok((_, false))) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot record this device's addresses"),
                Err(e) => tracing::warn!(error = %e, "recording this device's addresses failed"),
            }
        })
    }

    /// Says (once a run for each device) that `peer` runs an older Hearth, which
    /// this one does not sync with.
    fn outdated(&self, peer: PeerId, why: &str) {
        let first = self
            .outdated
            .lock()
            .expect("outdated lock is never poisoned")
            .insert(peer);
        if first {
            tracing::warn!(%peer, "the device {why}: it runs an older Hearth. Upgrade it; nothing is synced with it until then");
        } else {
            tracing::debug!(%peer, "the device {why}: it runs an older Hearth");
        }
    }

    /// Answers a device that opened the sync protocol of an older version: reads its
    /// Hello (within 5 s), says this device's version, and ends the stream. Nothing of
    /// the vault moves.
    async fn answer_legacy(&self, peer: PeerId, stream: Stream) {
        let (mut reader, mut writer) = stream.split();
        let hello = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut reader)).await;
        if let Ok(Ok(Some(frame))) = hello
            && let Ok(SyncFrame::Hello { version, .. }) = SyncFrame::decode(&frame)
        {
            self.outdated(peer, &format!("speaks sync version {version}"));
            let ours = SyncFrame::Hello {
                version: SYNC_VERSION,
                vault_id: self.vault.keys.vault_id,
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                write_frame(&mut writer, &ours.encode()),
            )
            .await;
        }
    }

    /// What the latest session with `peer` has exchanged so far.
    pub fn session_stats(&self, peer: &PeerId) -> Option<SessionStats> {
        self.stats
            .lock()
            .expect("stats lock is never poisoned")
            .get(peer)
            .copied()
    }

    /// Whether this device and `peer` hold the same changes, as their last comparison
    /// of fingerprints found (and nothing changed since); `false` without a session.
    pub fn in_step(&self, peer: &PeerId) -> bool {
        self.session_stats(peer).is_some_and(|s| s.in_step)
    }

    fn count(&self, peer: PeerId, change: impl FnOnce(&mut SessionStats)) {
        change(
            self.stats
                .lock()
                .expect("stats lock is never poisoned")
                .entry(peer)
                .or_default(),
        );
    }

    /// A frame (its body) received from `peer`.
    fn count_received(&self, peer: PeerId, frame: &[u8]) {
        self.count(peer, |s| {
            s.frames_received += 1;
            s.bytes_received += 4 + frame.len() as u64;
        });
    }

    /// When each peer last exchanged sync messages with this device.
    pub fn last_sync(&self) -> HashMap<PeerId, SystemTime> {
        self.last_sync
            .lock()
            .expect("last-sync lock is never poisoned")
            .clone()
    }

    /// Notes a sync message from `peer`: in memory every time, on disk at most every
    /// [`RECORD_SYNC_EVERY`] (so "last sync" survives a restart without a write per
    /// message).
    fn note_sync(&self, peer: PeerId) {
        // A member syncs with this device: whoever said it was removed was wrong.
        if self.vault.removal_notice(None) {
            tracing::warn!(%peer, "a device said this one was removed from the vault, but the vault's devices still sync with it: ignored");
        }
        let now = crate::clock::now();
        let previous = self
            .last_sync
            .lock()
            .expect("last-sync lock is never poisoned")
            .insert(peer, now);
        // The first message since start, or the first after the interval.
        let due = previous
            .and_then(|p| now.duration_since(p).ok())
            .is_none_or(|age| age >= RECORD_SYNC_EVERY);
        if due {
            let at = now
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if let Err(e) = devices::record_sync(&self.vault.store, &peer, at) {
                tracing::debug!(%peer, error = %e, "cannot record the time of a sync");
            }
        }
    }

    pub(super) fn on_connected(self: &Arc<Self>, peer: PeerId) {
        if !self.is_member(&peer) {
            super::removal::tell_if_removed(&self.vault, &self.mesh, peer);
            return;
        }
        if self.mesh.local_peer_id() >= peer {
            return;
        }
        let turn = 1 + self
            .opening_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.openings
            .lock()
            .expect("openings lock is never poisoned")
            .insert(peer, turn);
        let this = self.clone();
        self.spawn(async move {
            let mut control = this.mesh.streams();
            match control
                .open_stream(peer, StreamProtocol::new(SYNC_PROTOCOL))
                .await
            {
                Ok(stream) => {
                    let latest = this
                        .openings
                        .lock()
                        .expect("openings lock is never poisoned")
                        .get(&peer)
                        == Some(&turn);
                    if latest {
                        this.start_session(peer, stream);
                    } else {
                        // Its connection may be the relayed one that was closing.
                        tracing::debug!(%peer, "a newer sync stream was asked for; dropping this one");
                    }
                }
                Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
                    this.outdated(peer, &format!("does not speak sync version {SYNC_VERSION}"));
                }
                Err(e) => tracing::debug!(%peer, error = %e, "cannot open a sync stream"),
            }
        });
    }

    /// Moves the session with `peer` onto another connection (the relayed one it ran on
    /// is closing: a direct one is up): the side that opens sessions ends the old one
    /// and opens a new stream, which the other side takes in place of its old one.
    pub(super) fn restart_session(self: &Arc<Self>, peer: PeerId) {
        if self.mesh.local_peer_id() >= peer {
            return;
        }
        if let Some(old) = self
            .sessions
            .lock()
            .expect("sessions lock is never poisoned")
            .remove(&peer)
        {
            old.abort();
        }
        self.on_connected(peer);
    }

    /// Opens a session to each connected member that should have one and has none
    /// (a session can end while its connection stays up, e.g. after a bad frame).
    pub(super) fn ensure_sessions(self: &Arc<Self>, connected: &[PeerId]) {
        let missing: Vec<PeerId> = {
            let sessions = self
                .sessions
                .lock()
                .expect("sessions lock is never poisoned");
            connected
                .iter()
                .filter(|p| sessions.get(p).is_none_or(AbortHandle::is_finished))
                .filter(|p| self.is_member(p))
                .copied()
                .collect()
        };
        for peer in missing {
            self.on_connected(peer);
        }
    }

    /// Takes the sync streams members open: on `/hearth/sync/3` (a session), or, with
    /// `legacy`, on an old protocol (told to upgrade).
    pub(super) async fn accept_loop(
        self: Arc<Self>,
        mut incoming: libp2p_stream::IncomingStreams,
        mut stop: tokio::sync::watch::Receiver<bool>,
        legacy: bool,
    ) {
        loop {
            let Some((peer, stream)) = super::next_stream(&mut incoming, &mut stop).await else {
                return;
            };
            if !self.is_member(&peer) {
                // Refused before any vault data moves: dropping the stream resets it.
                tracing::info!(%peer, "refused sync from a peer that is not a device of this vault");
            } else if legacy {
                self.answer_legacy(peer, stream).await;
            } else {
                self.start_session(peer, stream);
            }
        }
    }

    fn start_session(self: &Arc<Self>, peer: PeerId, stream: Stream) {
        let mut sessions = self
            .sessions
            .lock()
            .expect("sessions lock is never poisoned");
        if sessions.len() >= MAX_SESSIONS && !sessions.contains_key(&peer) {
            tracing::warn!(%peer, "too many sync sessions; refusing one more");
            return;
        }
        let this = self.clone();
        let task = self.spawn(async move {
            let started = tokio::time::Instant::now();
            match this.run_session(peer, stream).await {
                Ok(()) => tracing::debug!(%peer, "sync session ended"),
                Err(SessionError::Removed) => {
                    tracing::info!(%peer, "stopped syncing with a device removed from the vault");
                    super::removal::tell_if_removed(&this.vault, &this.mesh, peer);
                    return;
                }
                Err(e) => tracing::info!(%peer, error = %e, "sync session closed"),
            }
            // A stream can end under a connection that stays (a relayed stream when
            // its relay goes, with the direct link up; a stream the other side took
            // in place of this one's and then lost): the session is opened again on
            // what is left, soon. One that ended as soon as it began waits longer
            // each time in a row, so a failing peer is not asked in a loop.
            if this.mesh.local_peer_id() < peer {
                let wait = this.wait_before_again(peer, started.elapsed() < SESSION_LASTED);
                tokio::time::sleep(wait).await;
                let connected = this
                    .mesh
                    .connected_peers()
                    .await
                    .is_ok_and(|peers| peers.contains(&peer));
                // Unless a newer session took this one's place meanwhile.
                let ours = {
                    let mut sessions = this
                        .sessions
                        .lock()
                        .expect("sessions lock is never poisoned");
                    let ours = sessions.get(&peer).map(AbortHandle::id) == Some(tokio::task::id());
                    if ours {
                        sessions.remove(&peer);
                    }
                    ours
                };
                if connected && ours {
                    tracing::debug!(%peer, "opening the sync session again");
                    this.on_connected(peer);
                }
            }
        });
        if let Some(old) = sessions.insert(peer, task) {
            old.abort();
        }
    }

    /// How long to wait before a session with `peer` that ended (`quick`: as soon as
    /// it began) is opened again: [`super::SESSION_AGAIN_AFTER`], doubled for each
    /// quick end in a row, at most [`super::REDIAL_EVERY`].
    fn wait_before_again(&self, peer: PeerId, quick: bool) -> Duration {
        let mut ends = self
            .quick_ends
            .lock()
            .expect("quick ends lock is never poisoned");
        if !quick {
            ends.remove(&peer);
            return super::SESSION_AGAIN_AFTER;
        }
        let n = ends.entry(peer).or_insert(0);
        *n = (*n + 1).min(16);
        again_after_quick_ends(*n)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) -> AbortHandle {
        let mut tasks = self.tasks.lock().expect("tasks lock is never poisoned");
        // Reap finished tasks so the set stays as small as what runs.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task)
    }

    /// Stops every session and waits until they are gone.
    pub(super) async fn shutdown(&self) {
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().expect("tasks lock is never poisoned"));
        tasks.shutdown().await;
        self.sessions
            .lock()
            .expect("sessions lock is never poisoned")
            .clear();
    }

    async fn run_session(&self, peer: PeerId, stream: Stream) -> Result<(), SessionError> {
        self.stats
            .lock()
            .expect("stats lock is never poisoned")
            .insert(peer, SessionStats::default());
        let (mut reader, mut writer) = stream.split();
        let (outbox, mut outgoing) = mpsc::channel::<Vec<u8>>(OUTBOX);
        let writer_task = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                write_frame(&mut writer, &frame).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        // Reading has its own task: a frame read must never be dropped half-way, which
        // a `select!` against local changes would do.
        let (inbox_tx, mut inbox) = mpsc::channel(INBOX);
        let reader_task = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut reader).await;
                let last = !matches!(frame, Ok(Some(_)));
                if inbox_tx.send(frame).await.is_err() || last {
                    return;
                }
            }
        });
        let mut uncommitted = 0;
        let result = self
            .converse(peer, &mut inbox, &outbox, &mut uncommitted)
            .await;
        if uncommitted > 0
            && let Err(e) = self.vault.store.commit().await
        {
            tracing::warn!(%peer, error = %e, "cannot commit what a sync session brought");
        }
        reader_task.abort();
        drop(outbox);
        // Let queued frames go out, but do not wait on a peer that stopped reading.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
        result
    }

    /// The session after both streams are up. `uncommitted` counts the messages that
    /// brought changes not yet known committed (the caller commits them if the
    /// session ends first, a commit under way included).
    async fn converse(
        &self,
        peer: PeerId,
        inbox: &mut mpsc::Receiver<Result<Option<Vec<u8>>, FrameReadError>>,
        outbox: &mpsc::Sender<Vec<u8>>,
        uncommitted: &mut usize,
    ) -> Result<(), SessionError> {
        self.send(
            peer,
            outbox,
            SyncFrame::Hello {
                version: SYNC_VERSION,
                vault_id: self.vault.keys.vault_id,
            },
        )
        .await?;
        let mut sent_summary = self.send_summary(peer, outbox).await?;
        let first = inbox
            .recv()
            .await
            .transpose()?
            .flatten()
            .ok_or(SessionError::NoHello)?;
        self.count_received(peer, &first);
        match SyncFrame::decode(&first)? {
            SyncFrame::Hello { version, vault_id } => {
                if vault_id != self.vault.keys.vault_id {
                    return Err(SessionError::OtherVault);
                }
                if version != SYNC_VERSION {
                    self.outdated(peer, &format!("speaks sync version {version}"));
                    return Err(SessionError::Version(version));
                }
            }
            _ => return Err(SessionError::NoHello),
        }
        tracing::debug!(%peer, "sync session started");

        let mut changes = self.vault.collections.subscribe();
        let mut states: States = HashMap::new();
        // The collections and digests of the peer's last Summary: what its Digests
        // leaves out, it found equal to this side's (or lacks, if its Summary lacks
        // it too).
        let mut their_summary: HashMap<CollectionName, [u8; 32]> = HashMap::new();
        let mut wholes = Wholes::default();
        // Set when a change was sent or received since the last fingerprint went out:
        // once the session has been quiet for SETTLE, the fingerprint goes out again.
        let mut unsettled: Option<tokio::time::Instant> = None;
        // The commit under way, and how many of the messages in `uncommitted` it
        // covers: frames go on being applied while it runs (a new device's first sync
        // would otherwise wait on a commit between most of its parts).
        let mut committing: Option<(Commit, usize)> = None;
        let mut jobs = Jobs::default();
        loop {
            let settle = async {
                match unsettled {
                    Some(at) => tokio::time::sleep_until(at + SETTLE).await,
                    None => std::future::pending().await,
                }
            };
            let committed = async {
                match committing.as_mut() {
                    Some((commit, _)) => commit.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = jobs.running.join_next(), if !jobs.running.is_empty() => {
                    let done = done.expect("a job was running").map_err(joined)?;
                    // The job ran after its frame was checked: the peer may have been
                    // removed meanwhile, and its answer must not go out then.
                    if !self.is_member(&peer) {
                        return Err(SessionError::Removed);
                    }
                    jobs.busy.remove(&done.key);
                    let (collection, part) = done.key.clone();
                    states.insert(done.key, done.state);
                    let received = done.received?;
                    if received > 0 {
                        *uncommitted += 1;
                        unsettled = Some(tokio::time::Instant::now());
                        if collection.is_system() {
                            tracing::debug!(%peer, %collection, received, "synced changes");
                        } else {
                            tracing::info!(%peer, %collection, "synced {received} change(s) from a device");
                        }
                    }
                    if done.applied {
                        self.note_sync(peer);
                    }
                    match done.reply? {
                        Some(Reply::Whole(document)) => {
                            self.send(peer, outbox, SyncFrame::Whole { collection, part, document: document.to_vec() }).await?;
                        }
                        reply => {
                            // Asked to go whole, but synced the usual way: its place
                            // among the parts on their way is free.
                            if done.whole_asked {
                                wholes.answered(&(collection.clone(), part));
                                wholes.feed(&mut jobs);
                            }
                            if let Some(Reply::Sync(message)) = reply {
                                self.send(peer, outbox, SyncFrame::Doc { collection, part, message }).await?;
                            }
                        }
                    }
                    // Committed once the frames waiting are applied (the peer
                    // sends again whatever a crash before it loses), while the
                    // next frames are applied; one commit at a time, the next
                    // covering what arrived meanwhile.
                    if committing.is_none()
                        && *uncommitted > 0
                        && ((inbox.is_empty() && jobs.idle()) || *uncommitted >= COMMIT_EVERY)
                    {
                        committing = Some((self.commit(), *uncommitted));
                    }
                    self.start_jobs(peer, &mut jobs, &mut states);
                }
                result = committed => {
                    let (_, covered) = committing.take().expect("a commit was under way");
                    result?;
                    *uncommitted -= covered;
                    if *uncommitted > 0 {
                        committing = Some((self.commit(), *uncommitted));
                    }
                }
                () = settle => {
                    unsettled = None;
                    sent_summary = self.send_summary(peer, outbox).await?;
                }
                frame = inbox.recv(), if jobs.queued.len() < MAX_QUEUED => {
                    let Some(frame) = frame.transpose()?.flatten() else { return Ok(()) };
                    self.count_received(peer, &frame);
                    if !self.is_member(&peer) {
                        return Err(SessionError::Removed);
                    }
                    // A part's sync message or the part whole, applied by a job.
                    let arrived = match SyncFrame::decode(&frame)? {
                        SyncFrame::Hello { .. } => return Err(SessionError::SecondHello),
                        SyncFrame::Summary(theirs) => {
                            let their_fingerprint = fingerprint(&theirs);
                            their_summary = theirs.into_iter().collect();
                            // One pass over the marks: the fingerprint, and the
                            // Digests frame if it differs.
                            let parts = self.part_digests().await?;
                            let ours = collection_digests(&parts);
                            let (frame, mine) = summary(&ours);
                            if mine == their_fingerprint {
                                self.count(peer, |s| s.in_step = true);
                                tracing::debug!(%peer, collections = ours.len(), "in step with the device: nothing to sync");
                                self.note_sync(peer);
                                // The other side learns it too, unless it has this one's
                                // fingerprint already (which ends the exchange).
                                if sent_summary != mine {
                                    self.send(peer, outbox, frame).await?;
                                    sent_summary = mine;
                                }
                            } else {
                                self.count(peer, |s| s.in_step = false);
                                // Only the collections that differ from the peer's.
                                let differ = parts
                                    .into_iter()
                                    .zip(&ours)
                                    .filter(|(_, (name, digest))| their_summary.get(name) != Some(digest))
                                    .map(|(parts, _)| parts)
                                    .collect();
                                self.send(peer, outbox, SyncFrame::Digests(differ)).await?;
                            }
                            None
                        }
                        SyncFrame::Digests(theirs) => {
                            let theirs: HashMap<CollectionName, PartDigests> = theirs.into_iter().collect();
                            // Each side starts the parts of its own that differ; one only
                            // the other has, the other starts. A part the peer has
                            // nothing of goes whole. A collection its Digests leaves
                            // out it found equal, unless its Summary lacks it too.
                            for (name, parts) in self.part_digests().await? {
                                let their_parts = theirs.get(&name);
                                if their_parts.is_none() && their_summary.contains_key(&name) {
                                    continue;
                                }
                                for (part, digest) in parts {
                                    let theirs = their_parts
                                        .and_then(|t| t.binary_search_by_key(&part, |(p, _)| *p).ok().map(|at| t[at].1));
                                    match theirs {
                                        Some(same) if same == digest => {}
                                        Some(_) => jobs.add((name.clone(), part), Work::Offer),
                                        None => wholes.want((name.clone(), part)),
                                    }
                                }
                            }
                            wholes.feed(&mut jobs);
                            self.start_jobs(peer, &mut jobs, &mut states);
                            None
                        }
                        SyncFrame::Doc { collection, part, message } => {
                            Some(((collection, part), Work::Message(message)))
                        }
                        SyncFrame::Whole { collection, part, document } => {
                            Some(((collection, part), Work::Whole(document)))
                        }
                    };
                    if let Some((key, work)) = arrived {
                        self.count(peer, |s| s.in_step = false);
                        unsettled = Some(tokio::time::Instant::now());
                        // Whatever the peer sends for a part it was sent whole says it
                        // has it.
                        wholes.answered(&key);
                        wholes.feed(&mut jobs);
                        jobs.add(key, work);
                        self.start_jobs(peer, &mut jobs, &mut states);
                    }
                }
                changed = changes.recv() => {
                    if !self.is_member(&peer) {
                        return Err(SessionError::Removed);
                    }
                    self.count(peer, |s| s.in_step = false);
                    unsettled = Some(tokio::time::Instant::now());
                    match changed {
                        Ok(Changed { collection, part, .. }) => {
                            jobs.add((collection, part), Work::Offer);
                            self.start_jobs(peer, &mut jobs, &mut states);
                        }
                        // Changes were missed: the fingerprints find what differs.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            sent_summary = self.send_summary(peer, outbox).await?;
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
        }
    }

    /// Starts the queued jobs that can start: at most [`MAX_JOBS`] at once, one at a
    /// time for each part, in the order they came for each part.
    fn start_jobs(&self, peer: PeerId, jobs: &mut Jobs, states: &mut States) {
        while jobs.running.len() < MAX_JOBS {
            let Some((key, work)) = jobs.next_ready() else {
                return;
            };
            if !states.contains_key(&key) {
                self.count(peer, |s| s.collections_synced += 1);
            }
            let mut state = states.remove(&key).unwrap_or_default();
            let vault = self.vault.clone();
            jobs.running.spawn_blocking(move || {
                let (name, part) = (&key.0, key.1);
                let collections = &vault.collections;
                let applied = matches!(work, Work::Message(_) | Work::Whole(_));
                let whole_asked = work == Work::SendWhole;
                let received = match &work {
                    Work::Message(message) => {
                        collections.receive_sync(name, part, &mut state, message)
                    }
                    Work::Whole(document) => collections.receive_whole(name, part, document),
                    Work::Offer | Work::SendWhole => Ok(0),
                };
                // Nothing to answer with after a message that could not be applied. A
                // part sent whole that is too large for a frame, or that cannot be
                // vouched for as stored, is synced the usual way.
                let whole = match (&received, work) {
                    (Ok(_), Work::SendWhole) => collections
                        .stored_part(name, part)
                        .map(|stored| stored.filter(|d| d.len() <= MAX_WHOLE)),
                    _ => Ok(None),
                };
                let reply = match (&received, whole) {
                    (Err(_), _) => Ok(None),
                    (Ok(_), Ok(Some(document))) => Ok(Some(Reply::Whole(document))),
                    (Ok(_), Ok(None)) => collections
                        .generate_sync(name, part, &mut state)
                        .map(|m| m.map(Reply::Sync)),
                    (Ok(_), Err(e)) => Err(e),
                };
                Done {
                    key,
                    state,
                    received,
                    reply,
                    applied,
                    whole_asked,
                }
            });
        }
    }

    /// A commit of the store, started when first polled.
    fn commit(&self) -> Commit {
        let store = self.vault.store.clone();
        Box::pin(async move { store.commit().await })
    }

    /// Every collection's digest, read on the blocking pool.
    async fn digests(&self) -> Result<Vec<(CollectionName, [u8; 32])>, SessionError> {
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || vault.collections.digests())
            .await
            .map_err(joined)?
            .map_err(SessionError::from)
    }

    /// Every collection's parts' heads digests, read on the blocking pool.
    async fn part_digests(&self) -> Result<Vec<(CollectionName, PartDigests)>, SessionError> {
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || vault.collections.part_digests())
            .await
            .map_err(joined)?
            .map_err(SessionError::from)
    }

    /// Sends this device's fingerprint; returns it.
    async fn send_summary(
        &self,
        peer: PeerId,
        outbox: &mpsc::Sender<Vec<u8>>,
    ) -> Result<[u8; 32], SessionError> {
        let (frame, mine) = summary(&self.digests().await?);
        self.send(peer, outbox, frame).await?;
        Ok(mine)
    }

    async fn send(
        &self,
        peer: PeerId,
        outbox: &mpsc::Sender<Vec<u8>>,
        frame: SyncFrame,
    ) -> Result<(), SessionError> {
        let bytes = frame.encode();
        self.count(peer, |s| {
            s.frames_sent += 1;
            s.bytes_sent += 4 + bytes.len() as u64;
        });
        outbox.send(bytes).await.map_err(|_| closed())
    }
}

/// The Summary frame of these collection digests, and its fingerprint.
fn summary(digests: &[(CollectionName, [u8; 32])]) -> (SyncFrame, [u8; 32]) {
    (SyncFrame::Summary(digests.to_vec()), fingerprint(digests))
}

/// A part of a collection, as a session names it.
type Key = (CollectionName, u16);

/// Each part's Automerge sync state with the peer, by collection and part.
type States = HashMap<Key, State>;

/// Parts a session works on at once (applying the peer's messages and answering, on
/// the blocking pool): a device catching up receives hundreds of parts.
const MAX_JOBS: usize = 2;
/// Jobs waiting for their part or a free place before the session reads no more
/// frames (so that a fast peer meets backpressure).
const MAX_QUEUED: usize = 16;

/// The largest part sent whole: what fits in a frame with its header.
const MAX_WHOLE: usize = hearth_protocol::sync::MAX_FRAME - 1024;

/// What a job does for its part, before it makes the part's next message to the peer.
#[derive(Debug, PartialEq, Eq)]
enum Work {
    /// Nothing: the part changed here, or differs from the peer's.
    Offer,
    /// Sends the part whole instead of a sync message: the peer has nothing of it.
    SendWhole,
    /// Applies the peer's Automerge sync message.
    Message(Vec<u8>),
    /// Applies the part the peer sent whole.
    Whole(Vec<u8>),
}

/// A job's message to the peer.
enum Reply {
    Sync(Vec<u8>),
    Whole(zeroize::Zeroizing<Vec<u8>>),
}

/// A session's work on its parts: each job applies what the peer sent for a part, if
/// anything, then makes the part's next message to the peer. One job at a time for
/// a part (its sync state goes with it), in the order they came.
#[derive(Default)]
struct Jobs {
    running: JoinSet<Done>,
    /// The parts of the running jobs.
    busy: std::collections::HashSet<Key>,
    queued: std::collections::VecDeque<(Key, Work)>,
}

impl Jobs {
    /// Queues a job; an offer is dropped if a job for the part is queued already,
    /// since every job answers.
    fn add(&mut self, key: Key, work: Work) {
        if work == Work::Offer && self.queued.iter().any(|(k, _)| *k == key) {
            return;
        }
        self.queued.push_back((key, work));
    }

    /// Takes the first queued job whose part has no job running, and notes its part
    /// busy (until [`Done`] comes back for it). A part to send whole goes first: it
    /// only reads the part, and the peer is waiting for it.
    fn next_ready(&mut self) -> Option<(Key, Work)> {
        let ready = |(key, _): &(Key, Work)| !self.busy.contains(key);
        let at = (self.queued.iter())
            .position(|job| job.1 == Work::SendWhole && ready(job))
            .or_else(|| self.queued.iter().position(ready))?;
        let job = self.queued.remove(at).expect("found above");
        self.busy.insert(job.0.clone());
        Some(job)
    }

    fn idle(&self) -> bool {
        self.running.is_empty() && self.queued.is_empty()
    }
}

/// What a job did.
struct Done {
    key: Key,
    state: State,
    /// Changes the peer's message or part brought (0 without one).
    received: Result<usize, CollectionError>,
    /// The next message to the peer, if there is anything to say.
    reply: Result<Option<Reply>, CollectionError>,
    /// Whether the job applied a message or part from the peer.
    applied: bool,
    /// Whether the job was asked to send its part whole.
    whole_asked: bool,
}

/// Parts sent whole to a peer at most at once, until it answers for each.
const WHOLE_WINDOW: usize = 16;

/// The parts to send whole to a peer that has nothing of them, a few at a time: one
/// waits until fewer than [`WHOLE_WINDOW`] are on their way (being read, sent, or not
/// yet answered for by the peer). Each arriving part makes the peer answer, so
/// hundreds of large frames pushed at once would leave both sides blocked on
/// writing while neither reads. A part on its way is not wanted again (the peer's
/// Digests may still lack it).
#[derive(Default)]
struct Wholes {
    waiting: std::collections::VecDeque<Key>,
    out: std::collections::HashSet<Key>,
}

impl Wholes {
    fn want(&mut self, key: Key) {
        if !self.out.contains(&key) && !self.waiting.contains(&key) {
            self.waiting.push_back(key);
        }
    }

    /// The peer sent something for `key`, after the part went whole: it has it.
    fn answered(&mut self, key: &Key) {
        self.out.remove(key);
    }

    /// Queues the parts that may go now.
    fn feed(&mut self, jobs: &mut Jobs) {
        while self.out.len() < WHOLE_WINDOW {
            let Some(key) = self.waiting.pop_front() else {
                return;
            };
            self.out.insert(key.clone());
            jobs.add(key, Work::SendWhole);
        }
    }
}

/// A job of the session on the blocking pool that did not finish (it panicked).
fn joined(e: tokio::task::JoinError) -> SessionError {
    SessionError::Write(std::io::Error::other(e.to_string()))
}

fn closed() -> SessionError {
    SessionError::Write(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the stream's writer stopped",
    ))
}

/// The wait before a session is opened again after `n` in a row ended as soon as they
/// began: [`super::SESSION_AGAIN_AFTER`] doubled `n` times, at most
/// [`super::REDIAL_EVERY`].
fn again_after_quick_ends(n: u32) -> Duration {
    (super::SESSION_AGAIN_AFTER * 2u32.pow(n.min(16))).min(super::REDIAL_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session that keeps ending as soon as it begins is asked again later each
    /// time, never more often than every 0.4 s, never less than every redial.
    #[test]
    fn quick_ends_wait_longer_each_time_up_to_the_redial() {
        let waits: Vec<u128> = (1..=8)
            .map(|n| again_after_quick_ends(n).as_millis())
            .collect();
        assert_eq!(waits, [400, 800, 1600, 3200, 6400, 12800, 15000, 15000]);
        assert_eq!(again_after_quick_ends(u32::MAX), super::super::REDIAL_EVERY);
    }

    fn key(name: &str, part: u16) -> Key {
        (CollectionName::parse(name).unwrap(), part)
    }

    /// Parts to send whole go a window at a time: no more than WHOLE_WINDOW on their
    /// way until the peer answers for one; a part wanted again while waiting or on its
    /// way is not queued twice.
    #[test]
    fn parts_go_whole_a_window_at_a_time() {
        let (mut wholes, mut jobs) = (Wholes::default(), Jobs::default());
        let parts: Vec<Key> = (0..20).map(|p| key("mail", p)).collect();
        for part in parts.iter().chain(&parts[..3]) {
            wholes.want(part.clone());
        }
        wholes.feed(&mut jobs);
        assert_eq!(jobs.queued.len(), WHOLE_WINDOW);
        assert!(jobs.queued.iter().all(|(_, w)| *w == Work::SendWhole));
        wholes.want(parts[0].clone());
        wholes.feed(&mut jobs);
        assert_eq!(
            jobs.queued.len(),
            WHOLE_WINDOW,
            "nothing more until an answer"
        );

        wholes.answered(&parts[0]);
        wholes.answered(&parts[19]); // not on its way: changes nothing
        wholes.feed(&mut jobs);
        let queued: Vec<Key> = jobs.queued.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            queued,
            parts[..=WHOLE_WINDOW].to_vec(),
            "one more, in order"
        );
        while !wholes.waiting.is_empty() {
            for part in &parts {
                wholes.answered(part);
            }
            wholes.feed(&mut jobs);
        }
        assert_eq!(jobs.queued.len(), 20, "every part once");
    }

    /// Jobs for one part run one at a time and in the order they came, while another
    /// part's go past them; an offer for a part that has a job waiting adds nothing
    /// (that job answers), anything else always queues; a part to send whole goes
    /// first.
    #[test]
    fn a_part_runs_its_jobs_one_at_a_time_in_order_and_others_go_past() {
        let mut jobs = Jobs::default();
        let (a, b) = (key("notes", 1), key("notes", 2));
        jobs.add(a.clone(), Work::Message(b"1".to_vec()));
        jobs.add(a.clone(), Work::Whole(b"2".to_vec()));
        jobs.add(a.clone(), Work::Offer);
        jobs.add(b.clone(), Work::Offer);
        jobs.add(b.clone(), Work::Offer);
        assert_eq!(
            jobs.queued.len(),
            3,
            "an offer for a part with a job waiting adds nothing"
        );

        assert_eq!(
            jobs.next_ready(),
            Some((a.clone(), Work::Message(b"1".to_vec())))
        );
        // a is busy: b goes past a's waiting job, and then nothing is ready.
        assert_eq!(jobs.next_ready(), Some((b.clone(), Work::Offer)));
        assert_eq!(jobs.next_ready(), None);

        jobs.busy.remove(&a);
        assert_eq!(
            jobs.next_ready(),
            Some((a.clone(), Work::Whole(b"2".to_vec())))
        );
        // While a runs, an offer for it queues behind it.
        jobs.add(a.clone(), Work::Offer);
        assert_eq!(jobs.next_ready(), None);
        jobs.busy.remove(&a);
        assert_eq!(jobs.next_ready(), Some((a.clone(), Work::Offer)));
        jobs.busy.clear();
        assert_eq!(jobs.next_ready(), None);
        assert!(jobs.idle());

        // A part to send whole goes before what came earlier, unless its part is busy.
        let c = key("notes", 3);
        jobs.add(a.clone(), Work::Message(b"3".to_vec()));
        jobs.add(b.clone(), Work::SendWhole);
        jobs.add(c.clone(), Work::SendWhole);
        jobs.busy.insert(b.clone());
        assert_eq!(jobs.next_ready(), Some((c, Work::SendWhole)));
        assert_eq!(jobs.next_ready(), Some((a, Work::Message(b"3".to_vec()))));
    }
}
